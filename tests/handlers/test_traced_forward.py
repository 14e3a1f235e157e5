"""The traced forward of encoder handlers (handlers/traced.py): the same vectors as the eager
model on the real MiniLM, and eager passes for a model the trace cannot follow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handlers.embedding import HFEmbeddingModel
from handlers.traced import trace_forward, wants_trace

TEXTS = [
    "hi",
    "",
    "the quick brown fox jumps over the lazy dog " * 3,
    "A longer paragraph about the weather, which was cloudy with rain in the afternoon.",
    "word " * 300,  # past the example's length, truncated at the model's limit
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_minilm_traced_gives_the_eager_vectors(minilm_dir, dtype):
    traced = HFEmbeddingModel(str(minilm_dir), "cpu", torch_dtype=dtype)
    eager = HFEmbeddingModel(str(minilm_dir), "cpu", torch_dtype=dtype, torchscript=False)
    assert traced._traced is not None and eager._traced is None
    texts = TEXTS * 7  # passes of several rows, padded
    cosines = (traced.embed(texts) * eager.embed(texts)).sum(axis=1)
    assert cosines.min() >= 0.99999, cosines
    one = (traced.embed(TEXTS[3:4]) * eager.embed(TEXTS[3:4])).sum()
    assert one >= 0.99999


class _CountsPadding(torch.nn.Module):
    """A forward whose Python branch depends on the values (whether any row is padded): a
    trace records one branch only."""

    def forward(self, input_ids, attention_mask):
        hidden = input_ids.unsqueeze(-1).float().expand(-1, -1, 4)
        if bool((attention_mask == 0).any()):
            hidden = hidden * 2
        return {"last_hidden_state": hidden}


def _pad(texts):
    lengths = [len(t.split()) + 1 for t in texts]
    width = max(lengths)
    ids = torch.tensor([[5] * n + [0] * (width - n) for n in lengths])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_a_forward_the_trace_cannot_follow_stays_eager():
    assert trace_forward(_CountsPadding(), _pad, "last_hidden_state") is None


def test_a_forward_without_value_branches_is_traced():
    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return {"last_hidden_state": (input_ids * attention_mask).unsqueeze(-1).float()}

    forward = trace_forward(Plain(), _pad, "last_hidden_state")
    assert forward is not None
    inputs = _pad(["a b c", "d"])
    assert np.array_equal(forward(inputs)[..., 0].numpy(), [[5, 5, 5, 5], [5, 5, 0, 0]])


def test_auto_traces_on_cpu_only():
    assert wants_trace("auto", torch.device("cpu")) and wants_trace(None, torch.device("cpu"))
    assert not wants_trace("auto", torch.device("cuda"))
    assert not wants_trace(False, torch.device("cpu")) and not wants_trace(
        "false", torch.device("cpu")
    )
    assert wants_trace(True, torch.device("cuda"))
