"""A batch of 30 s windows through transformers' ``generate``, with temperature fallback.

Returns the generated tokens (timestamps included), their DTW start times when word
timestamps are asked for, and the scores the fallback and the silence check need.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from handlers.base import check_cancelled
from handlers.speech.fallback import compression_ratio, more_likely, needs_retry
from handlers.speech.whisper_config import WhisperSetup


class _CancelStop:
    """Stopping criterion that ends ``generate`` as soon as the cancel event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@dataclass
class WindowDecode:
    tokens: list[int]  # generated tokens, timestamps included, end-of-text excluded
    token_times: list[float] | None  # DTW start time of each token, window-relative
    avg_logprob: float
    compression_ratio: float
    temperature: float
    # each token's log-probability under the distribution it was decoded from (greedy:
    # the processed logits; sampling: the same at the row's temperature); None with beams
    token_logprobs: list[float] | None = None


def decode_windows(
    model,
    setup: WhisperSetup,
    tokenizer,
    encoded,
    attention_mask,
    *,
    beam_size: int,
    language: str | None,
    task: str,
    prompt_ids,
    temperatures: Sequence[float],
    word_timestamps: bool,
    no_speech_probs: Sequence[float],
    cancel_event: threading.Event | None,
) -> list[WindowDecode]:
    """Decode a batch of windows (rows of ``encoded``) in one ``generate`` call per
    temperature: every row at the first temperature, then again, hotter, only the rows
    whose tokens were unlikely (:func:`~handlers.speech.fallback.needs_retry`); a row keeps
    its most likely result. Beam search (``beam_size``) at temperature 0 only."""
    from transformers import StoppingCriteriaList
    from transformers.modeling_outputs import BaseModelOutput

    stopping = StoppingCriteriaList([_CancelStop(cancel_event)] if cancel_event is not None else [])
    kwargs: dict[str, Any] = {}
    if setup.multilingual:
        kwargs.update(language=language, task=task)
    if prompt_ids is not None:
        kwargs["prompt_ids"] = prompt_ids
    attention_impl = model.config._attn_implementation
    results: list[WindowDecode | None] = [None] * encoded.shape[0]
    rows = list(range(encoded.shape[0]))
    try:
        for temperature in temperatures:
            check_cancelled(cancel_event)
            greedy = temperature == 0
            outputs = model.generate(
                # generate() expands encoder outputs in place for beam search: pass a fresh one
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded[rows]),
                attention_mask=attention_mask[rows],
                generation_config=copy.deepcopy(setup.generation),
                return_timestamps=True,
                return_token_timestamps=word_timestamps,
                force_unique_generate_call=True,
                return_dict_in_generate=True,
                output_scores=True,
                do_sample=not greedy,
                temperature=temperature,
                num_beams=beam_size if greedy else 1,
                stopping_criteria=stopping,
                **kwargs,
            )
            check_cancelled(cancel_event)
            for position, row in enumerate(rows):
                result = read_outputs(outputs, position, setup, tokenizer, temperature)
                previous = results[row]
                if previous is None or more_likely(result.avg_logprob, previous.avg_logprob):
                    results[row] = result
            rows = [
                row for row in rows if needs_retry(results[row].avg_logprob, no_speech_probs[row])
            ]
            if not rows:
                break
    finally:
        # token timestamps switch the model to eager attention; switch it back
        model.config._attn_implementation = attention_impl
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def read_outputs(
    outputs, row: int, setup: WhisperSetup, tokenizer, temperature: float
) -> WindowDecode:
    """Row ``row`` of a (batched) ``generate`` output."""
    import torch

    sequence = outputs["sequences"][row].tolist()
    start = generated_start(sequence, setup)
    end = start
    while end < len(sequence) and sequence[end] != setup.eot:
        end += 1
    tokens = sequence[start:end]
    token_times = None
    if "token_timestamps" in outputs:
        times = outputs["token_timestamps"][row].tolist()
        times += [times[-1] if times else 0.0] * (len(sequence) + 1 - len(times))
        # transformers stamps token k with the alignment row where k is the *input*, i.e.
        # the row predicting token k + 1: token k starts at the time stamped on k - 1.
        token_times = times[start - 1 : end]  # token i spans token_times[i : i + 2]
    token_logprobs = None
    if outputs.get("sequences_scores") is not None:
        avg_logprob = float(outputs["sequences_scores"][row])
    else:
        scores = outputs["scores"]
        first_generated = len(sequence) - len(scores)
        steps = max(0, min(len(scores), end - first_generated + 1))  # up to this row's EOT
        generated = torch.tensor(sequence[first_generated : first_generated + steps])
        avg_logprob = -np.inf
        token_logprobs = [0.0] * len(tokens)
        if steps:
            stacked = torch.stack([s[row] for s in scores[:steps]]).float()
            logprobs = torch.log_softmax(stacked * (temperature if temperature > 0 else 1), -1)
            picked = logprobs.gather(-1, generated.to(logprobs.device)[:, None]).squeeze(-1)
            # tokens[i] is sequence[start + i], decoded at step start + i - first_generated
            for i in range(len(tokens)):
                if 0 <= start + i - first_generated < len(picked):
                    token_logprobs[i] = float(picked[start + i - first_generated])
            picked = picked[torch.isfinite(picked)]
            if len(picked):
                avg_logprob = float(picked.sum() / (len(tokens) + 1))
    text = tokenizer.decode([t for t in tokens if t < setup.eot])
    return WindowDecode(
        tokens=tokens,
        token_times=token_times,
        avg_logprob=avg_logprob,
        compression_ratio=compression_ratio(text),
        temperature=temperature,
        token_logprobs=token_logprobs,
    )


def generated_start(sequence: list[int], setup: WhisperSetup) -> int:
    """Index of the first generated token: after SOT and the language/task tokens."""
    position = sequence.index(setup.sot) + 1 if setup.sot in sequence else 0
    while position < len(sequence) and setup.eot < sequence[position] < setup.timestamp_begin:
        position += 1
    return position
