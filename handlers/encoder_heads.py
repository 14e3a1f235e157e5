"""First-token heads whose matrix products compile once per row count, not once per length.

On a CPU at bf16 (or fp16), oneDNN builds a kernel for every distinct matrix product it meets
and caches it under the operands' shapes *and strides*. A BERT-style pooler (``dense`` over
``hidden[:, 0]``) and a RoBERTa-style classification head (``features[:, 0, :]``) read each
row's first token as a strided view of the hidden states: its row stride is the pass's padded
length x the hidden size, so the head's ``dense`` met a new cache key for every (rows, padded
length) and compiled again. With MiniLM under the embeddings benchmark's load (Zen 4,
avx512_core_bf16) that was 230 of 808 matmul compilations. A copy of those few rows to
contiguous memory first (rows x hidden values) leaves one key per row count.

An embedding model's pooler is computed and not used (the handler pools the last hidden
state itself): one small product a pass, left in place rather than removed model by model.
"""

from __future__ import annotations

from typing import Any

import torch

HEAD_NAMES = ("pooler", "classifier")  # module names whose Linear layers may read hidden[:, 0]


def _contiguous_input(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A forward pre-hook: the layer's positional input, contiguous (a keyword input as is)."""
    if args and isinstance(args[0], torch.Tensor):
        return (args[0].contiguous(), *args[1:])
    return args


def contiguous_head_inputs(model: torch.nn.Module) -> int:
    """Give every ``Linear`` inside a pooler or classification head of ``model`` a contiguous
    input (a no-op where it already is); returns how many layers were hooked."""
    hooked = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(head in name for head in HEAD_NAMES):
            module.register_forward_pre_hook(_contiguous_input)
            hooked += 1
    return hooked
