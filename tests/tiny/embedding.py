"""Tiny random encoders for the embedding handler: a BERT and a Qwen2 decoder."""

from __future__ import annotations

from pathlib import Path

from tests.tiny.common import cached_build, train_bpe_tokenizer, train_wordpiece_tokenizer

# The shape of the tiny encoders (BERT, XLM-R, Qwen2): 2 layers of width 32, 64 positions.
TINY_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _build_bert(path: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = train_wordpiece_tokenizer(model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        **TINY_ENCODER,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _build_qwen2(path: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2Model

    tokenizer = train_bpe_tokenizer(special_tokens=["<|endoftext|>"])
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = 128
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _build_xlmr(path: Path, *, num_labels: int | None) -> None:
    """XLM-R numbers positions from padding_idx + 1; its tokenizer names no length limit (as
    some exports do), so only the position table bounds the input."""
    import torch
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaModel,
    )

    tokenizer = train_wordpiece_tokenizer(model_max_length=int(1e30))
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # no segment ids, as XLM-R
    torch.manual_seed(3)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        **TINY_ENCODER,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels or 1,
    )
    model = XLMRobertaModel(config) if num_labels is None else None
    model = model or XLMRobertaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def tiny_xlmr_dir(num_labels: int | None = None) -> Path:
    """A tiny random XLM-R encoder (``num_labels``: a cross-encoder with that head)."""
    name = "xlmr-encoder" if num_labels is None else f"xlmr-cross-encoder-{num_labels}"
    return cached_build(name, lambda path: _build_xlmr(path, num_labels=num_labels))


def tiny_bert_dir() -> Path:
    return cached_build("bert-encoder", _build_bert)


def tiny_qwen2_encoder_dir() -> Path:
    return cached_build("qwen2-encoder", _build_qwen2)


def _build_bert_cross_encoder(path: Path, *, num_labels: int) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = train_wordpiece_tokenizer(model_max_length=64)
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=len(tokenizer),
        **TINY_ENCODER,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _build_minilm_cross_encoder(path: Path) -> None:
    """The real MiniLM encoder under a freshly initialised one-logit head."""
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    from inferq.catalog import load_catalog
    from tests.tiny.common import ROOT

    source = load_catalog(ROOT / "models.yaml").get("sentence-transformers/all-MiniLM-L6-v2")
    weights = source.weights_dir()
    torch.manual_seed(2)
    model = BertForSequenceClassification.from_pretrained(
        weights, num_labels=1, local_files_only=True
    )
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (weights / name).exists():
            shutil.copy(weights / name, path / name)


def tiny_cross_encoder_dir(num_labels: int = 1) -> Path:
    return cached_build(
        f"bert-cross-encoder-{num_labels}",
        lambda path: _build_bert_cross_encoder(path, num_labels=num_labels),
    )


def minilm_cross_encoder_dir() -> Path:
    return cached_build("minilm-cross-encoder", _build_minilm_cross_encoder)
