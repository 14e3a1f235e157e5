"""One 30 s window through transformers' ``generate``, with temperature fallback.

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
from handlers.speech.fallback import compression_ratio, needs_fallback
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


def decode_window(
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
    no_speech_prob: float,
    cancel_event: threading.Event | None,
) -> WindowDecode:
    """Decode at each of ``temperatures`` in turn until a result needs no fallback (the
    last one is kept either way). Beam search (``beam_size``) at temperature 0 only."""
    from transformers import StoppingCriteriaList
    from transformers.modeling_outputs import BaseModelOutput

    stopping = StoppingCriteriaList([_CancelStop(cancel_event)] if cancel_event is not None else [])
    kwargs: dict[str, Any] = {}
    if setup.multilingual:
        kwargs.update(language=language, task=task)
    if prompt_ids is not None:
        kwargs["prompt_ids"] = prompt_ids
    attention_impl = model.config._attn_implementation
    decoded: WindowDecode | None = None
    try:
        for temperature in temperatures:
            check_cancelled(cancel_event)
            greedy = temperature == 0
            outputs = model.generate(
                # generate() expands encoder outputs in place for beam search: pass a fresh one
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                attention_mask=attention_mask,
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
            decoded = read_outputs(outputs, setup, tokenizer, temperature)
            if not needs_fallback(decoded.compression_ratio, decoded.avg_logprob, no_speech_prob):
                break
    finally:
        # token timestamps switch the model to eager attention; switch it back
        model.config._attn_implementation = attention_impl
    assert decoded is not None
    return decoded


def read_outputs(outputs, setup: WhisperSetup, tokenizer, temperature: float) -> WindowDecode:
    import torch

    sequence = outputs["sequences"][0].tolist()
    start = generated_start(sequence, setup)
    end = start
    while end < len(sequence) and sequence[end] != setup.eot:
        end += 1
    tokens = sequence[start:end]
    token_times = None
    if "token_timestamps" in outputs:
        times = outputs["token_timestamps"][0].tolist()
        times += [times[-1] if times else 0.0] * (len(sequence) + 1 - len(times))
        # transformers stamps token k with the alignment row where k is the *input*, i.e.
        # the row predicting token k + 1: token k starts at the time stamped on k - 1.
        token_times = times[start - 1 : end]  # token i spans token_times[i : i + 2]
    if outputs.get("sequences_scores") is not None:
        avg_logprob = float(outputs["sequences_scores"][0])
    else:
        scores = outputs["scores"]
        generated = torch.tensor(sequence[len(sequence) - len(scores) :])
        stacked = torch.stack([s[0] for s in scores]).float()
        logprobs = torch.log_softmax(stacked * (temperature if temperature > 0 else 1), -1)
        picked = logprobs.gather(-1, generated.to(logprobs.device)[:, None]).squeeze(-1)
        picked = picked[torch.isfinite(picked)]
        avg_logprob = float(picked.sum() / (len(tokens) + 1)) if len(picked) else -np.inf
    text = tokenizer.decode([t for t in tokens if t < setup.eot])
    return WindowDecode(
        tokens=tokens,
        token_times=token_times,
        avg_logprob=avg_logprob,
        compression_ratio=compression_ratio(text),
        temperature=temperature,
    )


def generated_start(sequence: list[int], setup: WhisperSetup) -> int:
    """Index of the first generated token: after SOT and the language/task tokens."""
    position = sequence.index(setup.sot) + 1 if setup.sot in sequence else 0
    while position < len(sequence) and setup.eot < sequence[position] < setup.timestamp_begin:
        position += 1
    return position
