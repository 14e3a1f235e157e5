"""``torch_dtype: auto`` (handlers/dtype.py) and what bf16 does to real models' answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from handlers.dtype import auto_dtype, cpu_has_bf16_units, resolve_dtype
from handlers.embedding import HFEmbeddingModel
from handlers.rerank import HFRerankModel
from tests.dtype_support import DOCUMENTS, QUERY, SENTENCES
from tests.handlers.chat_inputs import CAPITAL, greedy

AVX2_EPYC = ["fpu", "sse", "sse2", "avx", "f16c", "fma", "avx2", "bmi2", "vaes", "vpclmulqdq"]
SAPPHIRE_RAPIDS = [*AVX2_EPYC, "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"]
COOPER_LAKE = [*AVX2_EPYC, "avx512f", "avx512_bf16"]
SKYLAKE_X = [*AVX2_EPYC, "avx512f", "avx512bw", "avx512vl"]  # AVX-512 but no bf16 units


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (AVX2_EPYC, torch.float32),
        (SKYLAKE_X, torch.float32),
        (COOPER_LAKE, torch.bfloat16),
        (SAPPHIRE_RAPIDS, torch.bfloat16),
        ([], torch.float32),
    ],
)
def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_units(flags, expected):
    assert cpu_has_bf16_units(flags) is (expected == torch.bfloat16)
    assert auto_dtype("cpu", cpu_flags=flags) == expected


def test_auto_on_this_machine_follows_its_cpuinfo_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this OS")
    flags = {
        flag
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }
    native = bool(flags & {"amx_bf16", "avx512_bf16"})
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_unset_dtype_is_model_dtype_else_auto(monkeypatch):
    monkeypatch.setenv("MODEL_DTYPE", "bfloat16")
    assert resolve_dtype(None, "cpu") == torch.bfloat16
    monkeypatch.setenv("MODEL_DTYPE", "float32")
    assert resolve_dtype(None, "cpu") == torch.float32
    monkeypatch.delenv("MODEL_DTYPE")
    assert resolve_dtype(None, "cpu") == resolve_dtype("auto", "cpu")


def test_named_dtypes_override_auto_and_unknown_names_fail():
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16", "cuda") == torch.float16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    assert resolve_dtype("auto", "mps") == torch.float32
    with pytest.raises(ValueError, match="unknown torch_dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="unknown torch_dtype 'Tensor'"):
        resolve_dtype("Tensor", "cpu")  # an attribute of torch, but no dtype


# ------------------------------------------------------------------- bf16 against fp32, real


def test_bf16_minilm_embeddings_match_fp32(minilm_dir):
    fp32 = HFEmbeddingModel(str(minilm_dir), "cpu", torch_dtype="float32")
    bf16 = HFEmbeddingModel(str(minilm_dir), "cpu", torch_dtype="bfloat16")
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    reference, vectors = fp32.embed(SENTENCES), bf16.embed(SENTENCES)
    assert vectors.dtype == np.float32  # float32 on the wire whatever the model computes in
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (reference * vectors).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert not np.array_equal(reference, vectors)  # it did compute in bf16
    # padding changes nothing either: a text alone and in a batch of longer ones
    alone = bf16.embed_batch([SENTENCES[3]])
    assert float((alone[0] * vectors[3]).sum()) >= 0.999


def test_bf16_rerank_keeps_the_order_of_fp32(tiny_embedders):
    """The real MiniLM encoder under a random one-logit head (no ms-marco weights offline):
    its scores lie within ~0.01 of 0.5, so documents closer than bf16's error (~1e-4 here)
    are ties. The fixed set: 128 documents; those whose fp32 scores are >= 8e-4 apart
    (6 x the error) must come out of bf16 in exactly fp32's order."""
    from bench.embeddings import corpus

    folder = str(tiny_embedders["minilm-cross-encoder"])
    fp32 = HFRerankModel(folder, "cpu", torch_dtype="float32")
    bf16 = HFRerankModel(folder, "cpu", torch_dtype="bfloat16")
    documents = DOCUMENTS + corpus(120, seed=3)
    reference = fp32.rerank(QUERY, documents)
    ranked = bf16.rerank(QUERY, documents)
    assert all(isinstance(r.relevance_score, float) for r in ranked)
    scores = {r.index: r.relevance_score for r in ranked}
    expected = {r.index: r.relevance_score for r in reference}
    assert max(abs(scores[i] - expected[i]) for i in expected) < 1e-3
    separated = [reference[0].index]
    for r in reference[1:]:
        if expected[separated[-1]] - r.relevance_score >= 8e-4:
            separated.append(r.index)
    assert len(separated) >= 8, separated
    assert sorted(separated, key=lambda i: -scores[i]) == separated
    # and on the whole list the order barely moves (only near-ties swap): Spearman's rho
    position = {r.index: n for n, r in enumerate(ranked)}
    rho = np.corrcoef([position[r.index] for r in reference], range(len(reference)))[0, 1]
    assert rho >= 0.99, rho


@pytest.mark.slow
def test_bf16_smollm2_greedy_answer_matches_fp32():
    """The GGUF is dequantized to the requested dtype; greedy text stays (nearly) the same."""
    pytest.importorskip("gguf", reason="transformers needs gguf to read GGUF files")
    from handlers.chat import TextChatModel
    from tests.handlers.test_chat_handler import SMOLLM2_GGUF, smollm2_dir

    folder = str(smollm2_dir())
    answers = {}
    for dtype in ("float32", "bfloat16"):
        handler = TextChatModel(folder, "cpu", gguf_file=SMOLLM2_GGUF, torch_dtype=dtype)
        assert handler.dtype == getattr(torch, dtype)
        answers[dtype] = greedy(handler, CAPITAL, 24).text
        del handler
    assert "Paris" in answers["bfloat16"], answers
    fp32_words, bf16_words = answers["float32"].split(), answers["bfloat16"].split()
    same = sum(a == b for a, b in zip(fp32_words, bf16_words, strict=False))
    assert same >= 0.8 * len(fp32_words), answers
