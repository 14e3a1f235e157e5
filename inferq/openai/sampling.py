"""What chat and text completions share: sampling parameters beyond temperature/top-p (OpenAI's
penalties, vLLM's ``top_k``/``min_p``/``repetition_penalty``), ``n`` with per-choice seeds,
and the one check that refuses request fields a local model would otherwise drop silently.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from inferq.errors import bad_request

# Fields clients send that change nothing for a local model and that OpenAI also accepts for
# models they do not apply to: taken and ignored (the README lists them).
ACCEPTED_IGNORED = frozenset(
    {
        "metadata",  # OpenAI keeps it with stored completions; nothing is stored here
        "store",  # nothing is stored (GET /v1/chat/completions is not served)
        "service_tier",  # one tier
        "prediction",  # predicted outputs are a latency hint; the output does not depend on it
        "prompt_cache_key",  # prefix caching is automatic or absent
        "safety_identifier",
        "user",
        "parallel_tool_calls",  # the tool-calling code reads it (or it is ignored without tools)
        "functions",  # the deprecated tool fields: the tool-calling code decides on them
        "function_call",
    }
)

# Fields OpenAI serves only for some models, refused here with the reason (a request that
# asks for audio output or reasoning effort must not get a plain text answer silently).
REFUSED = {
    "reasoning_effort": "reasoning_effort is for reasoning models; local models do not take it",
    "verbosity": "verbosity is not supported by local models",
    "audio": "audio output is not supported by local models",
    "web_search_options": "web search is not supported by local models",
}


def refuse_unknown_fields(extra: dict[str, Any] | None) -> None:
    """A 400 naming the first field that is neither served nor documented as accepted (as
    OpenAI answers an unknown argument); ``null`` values count as absent."""
    for name, value in (extra or {}).items():
        if value is None or name in ACCEPTED_IGNORED:
            continue
        if name == "modalities":
            if value == ["text"]:
                continue
            raise bad_request(
                "local models answer with text only: modalities must be ['text']",
                param="modalities",
                code="unsupported_parameter",
            )
        if name in REFUSED:
            raise bad_request(REFUSED[name], param=name, code="unsupported_parameter")
        raise bad_request(
            f"Unrecognized request argument supplied: {name}",
            param=name,
            code="unrecognized_argument",
        )


class SamplingExtensions(BaseModel):
    """Sampling fields beyond OpenAI's basics, on the request and on the job alike."""

    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # vLLM's extensions (documented in the README)
    top_k: int | None = Field(None, ge=-1, le=1 << 20)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)

    def sampling_extensions(self) -> dict[str, Any]:
        """The set fields, as a job's (or a handler request's) keyword arguments."""
        return {
            name: getattr(self, name)
            for name in SamplingExtensions.model_fields
            if getattr(self, name) is not None
        }


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` of ``n``: the request's seed for the first one (so ``n=1``
    reproduces a single request), a different, still deterministic one for the others."""
    if seed is None or index == 0:
        return seed
    return (seed + index * 0x9E3779B97F4A7C15) % (1 << 63)
