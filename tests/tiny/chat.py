"""Tiny random chat models: a Llama causal LM and a Qwen3-VL vision-language model.

Both use a locally trained byte-level BPE tokenizer with ChatML special tokens. Their
``lm_head`` rows for special tokens are zeroed, so greedy decoding never picks EOS and a
generation always runs to ``max_new_tokens`` (tests force EOS explicitly where they need it).
"""

from __future__ import annotations

import json
from pathlib import Path

from handlers.chat.prompts import CHATML_TEMPLATE, CHATML_VL_TEMPLATE
from tests.tiny.common import cached_build, train_bpe_tokenizer

CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VISION_SPECIAL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _chat_tokenizer(special_tokens: list[str]):
    tokenizer = train_bpe_tokenizer(vocab_size=500, special_tokens=special_tokens)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = 512
    return tokenizer


def _silence_special_tokens(lm_head, tokenizer, special_tokens: list[str]) -> None:
    import torch

    with torch.no_grad():
        for token in special_tokens:
            lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0


def _causal_chat(path: Path, family: str, template: str, *, silence: bool = True):
    """Save a tiny random causal LM of ``family`` (``llama`` or ``qwen2``) with the ChatML
    tokenizer and ``template`` at ``path``; returns ``(model, tokenizer)``. With ``silence``,
    its special tokens' ``lm_head`` rows are zeroed (greedy decoding never ends by itself)."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    config_class, model_class, extra = {
        "llama": (
            LlamaConfig,
            LlamaForCausalLM,
            {"max_position_embeddings": 512, "bos_token_id": None},
        ),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"max_position_embeddings": 1024}),
    }[family]
    tokenizer = _chat_tokenizer(CHAT_SPECIAL_TOKENS)
    tokenizer.chat_template = template
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    tokenizer.model_max_length = config.max_position_embeddings
    model = model_class(config)
    if silence:
        _silence_special_tokens(model.lm_head, tokenizer, CHAT_SPECIAL_TOKENS)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def _build_llama_chat(path: Path) -> None:
    _causal_chat(path, "llama", CHATML_TEMPLATE)


def _build_qwen3_vl(path: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    specials = CHAT_SPECIAL_TOKENS + VISION_SPECIAL_TOKENS
    tokenizer = _chat_tokenizer(specials)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    # 16-pixel patches merged 2x2: an image becomes (h/32)*(w/32) tokens, 1 to 16 of them here.
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    torch.manual_seed(0)
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen3VLForConditionalGeneration(config)
    _silence_special_tokens(model.lm_head, tokenizer, specials)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    # As Qwen's processors save it: the chat template beside the processor, not the tokenizer
    # (the handlers' own ChatML-VL fallback, so both are the same text).
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHATML_VL_TEMPLATE}))


def tiny_llama_chat_dir() -> Path:
    return cached_build("llama-chat", _build_llama_chat)


def tiny_qwen3_vl_dir() -> Path:
    return cached_build("qwen3-vl-chat", _build_qwen3_vl)


# Qwen 2.5's chat template (tools in the system turn, calls in <tool_call> tags, tool results
# as user turns in <tool_response> tags), with a short default system message.
QWEN25_TOOLS_TEMPLATE = (Path(__file__).parent / "qwen25_tools.jinja").read_text()


def _build_qwen2_tools(path: Path) -> None:
    """A tiny random Qwen2 causal LM whose tokenizer carries Qwen 2.5's tool-calling template."""
    _causal_chat(path, "qwen2", QWEN25_TOOLS_TEMPLATE)


def tiny_qwen2_tools_dir() -> Path:
    return cached_build("qwen2-tools-chat", _build_qwen2_tools)
