"""KV-cache surgery for a running batch: take rows out, merge new rows in, trim padding.

Rows are left-padded, so merging pads the shorter cache with zero columns in front, and
columns that are padding for every remaining row can be dropped from the front.
"""

from __future__ import annotations

from typing import Any

import torch


def mergeable(cache: Any) -> bool:
    """Whether rows can be added to / trimmed from this cache (plain dynamic layers only)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - older transformers
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4
        for layer in layers
    )


def output_cache(output: Any):
    """The KV cache a forward pass returned (``cache`` in transformers 5)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def select_rows(cache: Any, index: torch.Tensor) -> None:
    """Keep only the batch rows ``index`` of a KV cache, in place."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
    else:
        cache.reorder_cache(index)


def _pad_left(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """Pad a ``[batch, heads, length, dim]`` cache tensor with ``count`` zero columns in front."""
    if count == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, count, 0))


def append_rows(cache: Any, other: Any, *, pad_mine: int, pad_theirs: int) -> None:
    """Append ``other``'s rows to ``cache`` in place, each first left-padded by its count."""
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        mine.keys = torch.cat([_pad_left(mine.keys, pad_mine), _pad_left(theirs.keys, pad_theirs)])
        mine.values = torch.cat(
            [_pad_left(mine.values, pad_mine), _pad_left(theirs.values, pad_theirs)]
        )


def drop_front_columns(cache: Any, count: int) -> None:
    """Remove the first ``count`` columns of every layer, in place."""
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, count:]
        layer.values = layer.values[:, :, count:]
