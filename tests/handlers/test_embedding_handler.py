"""HFEmbeddingModel on tiny random models (real loading code) and on the real MiniLM."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from handlers.base import Cancelled
from handlers.embedding import HFEmbeddingModel, plan_batches

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "cats", "a b c d e f g"]


def _reference(folder, texts, pooling):
    """Pooling computed one text at a time (no padding involved), then L2-normalised."""
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    rows = []
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**inputs).last_hidden_state[0]
        row = {"mean": hidden.mean(0), "cls": hidden[0], "last_token": hidden[-1]}[pooling]
        rows.append(torch.nn.functional.normalize(row, dim=0).numpy())
    return np.stack(rows)


@pytest.mark.parametrize(
    ("model", "pooling"), [("bert", "mean"), ("bert", "cls"), ("qwen2", "last_token")]
)
def test_pooling_modes_match_a_per_text_reference(tiny_embedders, model, pooling):
    folder = tiny_embedders[model]
    handler = HFEmbeddingModel(str(folder), "cpu", pooling=pooling)
    assert handler.dim == 32
    vectors = handler.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, _reference(folder, TEXTS, pooling), atol=1e-4)


def test_last_token_pooling_is_the_same_with_right_padding(tiny_embedders):
    handler = HFEmbeddingModel(str(tiny_embedders["qwen2"]), "cpu", pooling="last_token")
    left = handler.embed_batch(TEXTS)
    handler.tokenizer.padding_side = "right"
    np.testing.assert_allclose(handler.embed_batch(TEXTS), left, atol=1e-4)


def test_pooling_modes_differ(tiny_embedders):
    mean = HFEmbeddingModel(str(tiny_embedders["bert"]), "cpu", pooling="mean").embed(TEXTS)
    cls = HFEmbeddingModel(str(tiny_embedders["bert"]), "cpu", pooling="cls").embed(TEXTS)
    assert not np.allclose(mean, cls, atol=1e-3)


def test_loading_is_offline_only(tmp_path):
    with pytest.raises(OSError):
        HFEmbeddingModel("inferq-tests/not-downloaded", "cpu", cache_dir=str(tmp_path))


def test_truncation_to_max_length_and_token_lengths(tiny_embedders):
    handler = HFEmbeddingModel(str(tiny_embedders["bert"]), "cpu", max_length=8)
    long_text = " ".join(["word"] * 50)
    assert handler.token_lengths(["hello world", long_text]) == [
        len(handler.tokenizer("hello world")["input_ids"]),
        8,
    ]
    assert handler.count_tokens(["hello world", long_text]) == sum(
        handler.token_lengths(["hello world", long_text])
    )
    assert handler.embed([long_text]).shape == (1, 32)


def test_embed_sorts_and_batches_but_keeps_input_order(tiny_embedders):
    texts = [("word " * (i % 13)) + f"item {i}" for i in range(40)]
    handler = HFEmbeddingModel(
        str(tiny_embedders["bert"]), "cpu", batch_tokens=64, max_batch_size=8
    )
    batched = handler.embed(texts)
    one_by_one = np.concatenate([handler.embed_batch([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_cancel_event_stops_between_batches(tiny_embedders):
    handler = HFEmbeddingModel(
        str(tiny_embedders["bert"]), "cpu", batch_tokens=16, max_batch_size=1
    )
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        handler.embed(TEXTS, cancel_event=event)


def test_plan_batches_respects_budget_and_size():
    lengths = sorted([3, 3, 4, 5, 8, 8, 9, 20, 30])
    batches = plan_batches(lengths, batch_tokens=24, max_batch_size=3)
    assert [lengths[b] for b in batches] == [[3, 3, 4], [5, 8, 8], [9], [20], [30]]
    assert plan_batches([], 10, 2) == []
    assert plan_batches([50], 10, 2) == [slice(0, 1)]  # an over-budget text still runs alone


def test_real_minilm_matches_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    handler = HFEmbeddingModel(str(minilm_dir), "cpu")
    assert (handler.dim, handler.max_length) == (384, 256)
    reference = SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)
    texts = ["A man is eating food.", "The weather is lovely today."]
    np.testing.assert_allclose(
        handler.embed(texts), reference.encode(texts, normalize_embeddings=True), atol=1e-5
    )


def test_xlm_roberta_inputs_at_the_limit_fit_its_position_table():
    """XLM-R numbers positions from padding_idx + 1: where nothing else bounds the length (no
    tokenizer limit, no sentence-transformers config), an input of max_position_embeddings
    tokens ran past its position table (IndexError: the pass failed, and every job in it)."""
    from tests.tiny.embedding import tiny_xlmr_dir

    folder = tiny_xlmr_dir()
    handler = HFEmbeddingModel(str(folder), "cpu", pooling="cls")
    assert handler.max_length == 63  # positions 1..63: from padding_idx (0) + 1
    texts = ["word " * 300, "hello world"]
    vectors = handler.embed(texts)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    for text, vector in zip(texts, vectors, strict=True):
        inputs = tokenizer(text, truncation=True, max_length=63, return_tensors="pt")
        with torch.inference_mode():
            cls = model(**inputs).last_hidden_state[0, 0]
        expected = torch.nn.functional.normalize(cls, dim=0).numpy()
        assert float(vector @ expected) >= 0.99999
