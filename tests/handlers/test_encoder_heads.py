"""First-token heads get contiguous inputs (handlers/encoder_heads.py): a BERT pooler and a
RoBERTa classification head, on tiny random models through the real handlers, with outputs
unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handlers.embedding import HFEmbeddingModel
from handlers.encoder_heads import contiguous_head_inputs
from handlers.rerank import HFRerankModel

TEXTS = ["a short one", "a somewhat longer text than the first, padded past it", "x"]


def _head_inputs(model: torch.nn.Module) -> dict[str, list[bool]]:
    """Whether each head Linear's input was contiguous, per call (a pre-hook registered after
    the handler's own, so it sees what the layer receives)."""
    seen: dict[str, list[bool]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ("pooler" in name or "classifier" in name):

            def record(_module, args, name=name):
                seen.setdefault(name, []).append(args[0].is_contiguous())

            module.register_forward_pre_hook(record)
    return seen


def _handlers(kind: str, path: str, **options):
    cls = HFEmbeddingModel if kind == "embedding" else HFRerankModel
    options = {"torchscript": False, "torch_dtype": "float32", **options}
    return cls(path, "cpu", **options)


def _inputs(handler) -> list:
    if isinstance(handler, HFEmbeddingModel):
        return TEXTS
    return [("query", text) for text in TEXTS]


def _run(handler) -> np.ndarray:
    if isinstance(handler, HFEmbeddingModel):
        return handler.embed(_inputs(handler))
    return handler.score(_inputs(handler))


@pytest.mark.parametrize(
    ("kind", "model", "heads"),
    [
        ("embedding", "bert", {"pooler.dense"}),
        ("rerank", "bert-cross", {"bert.pooler.dense", "classifier"}),
        ("rerank", "xlmr-cross", {"classifier.dense", "classifier.out_proj"}),
    ],
)
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_head_layers_get_contiguous_rows_and_the_same_outputs(tiny_embedders, kind, model, heads):
    from tests.tiny.embedding import tiny_cross_encoder_dir, tiny_xlmr_dir

    path = {
        "bert": tiny_embedders["bert"],
        "bert-cross": tiny_cross_encoder_dir(num_labels=1),
        "xlmr-cross": tiny_xlmr_dir(num_labels=1),
    }[model]
    handler = _handlers(kind, str(path))
    seen = _head_inputs(handler.model)
    hooked = _run(handler)
    assert set(seen) == heads
    assert all(all(calls) for calls in seen.values()), seen

    # the same model without the hooks: its first-token head reads a strided view
    plain = _handlers(kind, str(path))
    for module in plain.model.modules():
        module._forward_pre_hooks.clear()
    seen_plain = _head_inputs(plain.model)
    unhooked = _run(plain)
    assert not all(all(calls) for calls in seen_plain.values()), seen_plain
    np.testing.assert_allclose(hooked, unhooked, rtol=0, atol=1e-6)

    # the CPU's default forward is traced (handlers/traced.py): the trace records the copies
    def copies(model) -> int:
        inputs = dict(handler._rows.pad(handler.tokenize(_inputs(handler)), handler.device))
        with torch.inference_mode():
            traced = torch.jit.trace(model, example_kwarg_inputs=inputs, strict=False)
        return str(traced.inlined_graph).count("aten::contiguous")

    assert copies(handler.model) >= copies(plain.model) + len(heads)
    traced = _handlers(kind, str(path), torchscript=True)
    assert traced._traced is not None
    np.testing.assert_allclose(_run(traced), hooked, rtol=0, atol=1e-5)


def test_models_without_heads_are_left_alone(tiny_embedders):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_embedders["qwen2"], local_files_only=True)
    assert contiguous_head_inputs(model) == 0
