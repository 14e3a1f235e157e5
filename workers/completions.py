"""Serving ``/v1/completions`` jobs: raw prompts decoded by the model's chat scheduler.

Each prompt times ``n`` becomes a row of the running batch (a :class:`ChatRequest` with a raw
``prompt`` instead of messages: no chat template); choice ``i * n + j`` is the ``j``-th
completion of prompt ``i``. Streamed text goes out as ``delta`` entries carrying the choice
index, like chat's. An upstream proxy model forwards the body (not streamed).
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from inferq import protocol as p
from inferq.errors import ServiceError
from inferq.openai.chat import ProxyChatJob
from inferq.openai.completions import CompletionJob, choice, completion_body
from inferq.settings import Settings
from workers.chat import gather, generation_params, submit_choices
from workers.jobs import JobContext

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel


def submit(
    job: CompletionJob,
    model: LoadedModel,
    settings: Settings,
    *,
    cancel_event,
    priority: int,
    on_text=None,
) -> Future:
    """Queue every prompt's ``n`` rows; the future gives the generations, by choice index."""
    if model.batcher is None:
        raise ServiceError(500, f"model '{model.name}' has no scheduler", code="internal_error")
    params = generation_params(job, model.handler.generation_defaults, settings)
    futures = []
    for number, prompt in enumerate(job.prompts):
        first = number * job.n
        futures.append(
            submit_choices(
                model.batcher,
                job.n,
                _offset(on_text, first) if on_text is not None else None,
                priority,
                messages=[],
                prompt=prompt,
                prompt_logprobs=job.echo and job.logprobs is not None,
                cancel_event=cancel_event,
                **params,
            )
        )
    return gather(futures)


def _offset(on_text, first: int):
    """``on_text`` for one prompt's choices: their indices start at ``first``."""

    def send(text: str, logprobs=None, *, index: int = 0) -> None:
        on_text(text, logprobs, index=first + index)

    return send


def completion(job: CompletionJob, model: LoadedModel, results, job_id: str) -> dict[str, Any]:
    """The ``text_completion`` body; usage counts each prompt once and every choice."""
    choices = []
    prompt_tokens = completion_tokens = 0
    for number, generations in enumerate(results):
        prompt = job.prompts[number]
        prompt_tokens += generations[0].prompt_tokens
        for j, generation in enumerate(generations):
            completion_tokens += generation.completion_tokens
            text = prompt + generation.text if job.echo else generation.text
            entries = generation.logprobs if job.logprobs is not None else None
            choices.append(
                choice(
                    number * job.n + j,
                    text,
                    generation.finish_reason,
                    entries,
                    prompt_entries=generation.prompt_logprobs if job.echo else None,
                )
            )
    return completion_body(
        job_id,
        model.name,
        job.created or int(time.time()),
        choices,
        prompt_tokens,
        completion_tokens,
    )


def serve_completions(ctx: JobContext, model: LoadedModel) -> bytes:
    """A ``text_completion`` for the job's request (validated by the API)."""
    if model.upstream:
        return model.handler.completions(ProxyChatJob.parse(ctx.request).upstream_body)
    job = CompletionJob.parse(ctx.request)
    future = submit(
        job,
        model,
        ctx.runtime.settings,
        cancel_event=ctx.cancel_event,
        priority=ctx.priority,
        on_text=ctx.events.delta,
    )
    return p.dumps(completion(job, model, ctx.wait(future), ctx.job_id))
