"""Tokenise once: inputs are tokenised (truncated, unpadded) in the caller's thread, and the
forward pass only pads what it was given (as Infinity's ``encode_pre`` / ``encode_core`` split).

Encoder handlers (embeddings, rerank) offer ``tokenize(inputs) -> list[Tokenized]``; the worker
counts tokens with ``len(row)``, hands the rows to the batcher, and the handler's batch method
accepts them in place of raw inputs. Tokenising a second time for the padded forward used to
cost the model thread about as much as the counting did in the job threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(slots=True)
class Tokenized:
    """One input's token ids (and segment ids where the model has them), truncated, unpadded."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


class RowTokenizer:
    """A thread-safe ``tokenizer(*texts) -> list[Tokenized]`` on a private copy of a fast
    tokenizer (fast tokenizers reconfigure themselves on each call, so calls take turns)."""

    def __init__(self, tokenizer: Any, max_length: int):
        import copy

        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_length = max_length
        self._lock = threading.Lock()

    def __call__(self, *texts: Sequence[str], **kwargs: Any) -> list[Tokenized]:
        with self._lock:
            encoded = self.tokenizer(
                *texts,
                truncation=kwargs.pop("truncation", True),
                max_length=self.max_length,
                return_attention_mask=False,
                **kwargs,
            )
        types = encoded.get("token_type_ids")
        ids = encoded["input_ids"]
        if types is None:
            return [Tokenized(row) for row in ids]
        return [Tokenized(row, kinds) for row, kinds in zip(ids, types, strict=True)]

    def pad(self, rows: Sequence[Tokenized], device: torch.device) -> dict[str, torch.Tensor]:
        """:func:`pad` with this tokenizer's pad token and padding side."""
        return pad(
            rows,
            pad_id=self.tokenizer.pad_token_id or 0,
            left=self.tokenizer.padding_side == "left",
            device=device,
        )


def pad(
    rows: Sequence[Tokenized], *, pad_id: int, left: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    """The model's keyword inputs for ``rows``: ids, attention mask (and segment ids), padded
    to the longest row on the tokenizer's padding side."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64) if rows[0].token_type_ids else None
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = row.input_ids
        mask[i, span] = 1
        if types is not None:
            types[i, span] = row.token_type_ids
    inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        inputs["token_type_ids"] = torch.from_numpy(types)
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def position_limit(model: Any) -> int | None:
    """The most tokens ``model``'s position table holds: ``max_position_embeddings``, less the
    offset of models that number positions from ``padding_idx + 1`` (RoBERTa, XLM-R: 514
    positions hold 512 tokens)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if positions and isinstance(padding_idx, int):
        return positions - padding_idx - 1
    return positions
