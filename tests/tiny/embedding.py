"""Tiny random encoders for the embedding handler: a BERT and a Qwen2 decoder."""

from __future__ import annotations

from pathlib import Path

from tests.tiny.common import cached_build, train_bpe_tokenizer, train_wordpiece_tokenizer


def _build_bert(path: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = train_wordpiece_tokenizer(model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
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


def tiny_bert_dir() -> Path:
    return cached_build("bert-encoder", _build_bert)


def tiny_qwen2_encoder_dir() -> Path:
    return cached_build("qwen2-encoder", _build_qwen2)
