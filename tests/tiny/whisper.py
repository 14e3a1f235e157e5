"""A tiny random Whisper (model, processor, generation config) for handler tests.

The vocabulary follows the real Whisper layout: byte-level BPE text tokens first, then
``<|endoftext|>``, ``<|startoftranscript|>``, one token per language (in transformers'
``LANGUAGES`` order), ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``,
``<|startofprev|>``, ``<|nospeech|>``, ``<|notimestamps|>`` and the timestamp tokens
``<|0.00|>`` .. ``<|30.00|>``. The generation config carries ``lang_to_id``, ``task_to_id``,
``no_timestamps_token_id`` and ``alignment_heads`` so that ``generate(..., language=,
task=, return_timestamps=, return_token_timestamps=)`` works as with a real checkpoint.
The weights are random: transcripts are garbage, only their structure is meaningful.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny.common import CORPUS, cached_build

NAME = "whisper-tiny-random"
BPE_VOCAB_SIZE = 400
NUM_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in steps of 0.02 s


def _train_text_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab and merges trained on ``CORPUS`` (no special tokens in it)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        CORPUS,
        BpeTrainer(
            vocab_size=BPE_VOCAB_SIZE,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def special_token_names() -> list[str]:
    """Whisper's control tokens in vocabulary order (timestamps excluded)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


def build_whisper(out: Path) -> None:
    import torch
    from tokenizers import AddedToken
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    vocab, merges = _train_text_vocab()
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = special_token_names()
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in specials[1:]
            ]
        }
    )
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(NUM_TIMESTAMPS)]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    assert eot == len(vocab) and sot == eot + 1, (eot, sot, len(vocab))
    assert ids["<|notimestamps|>"] == sot + len(specials) - 2
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == ids["<|notimestamps|>"] + 1
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == ids["<|notimestamps|>"] + NUM_TIMESTAMPS
    vocab_size = len(tokenizer)
    space_id = tokenizer.convert_tokens_to_ids("Ġ")

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=48,
        encoder_layers=2,
        encoder_attention_heads=4,
        decoder_layers=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=96,
        decoder_ffn_dim=96,
        max_source_positions=1500,
        max_target_positions=128,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[space_id, eot],
        median_filter_width=7,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()

    generation = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        suppress_tokens=[],
        begin_suppress_tokens=[space_id, eot],
        alignment_heads=[[1, 0], [1, 1], [1, 2], [1, 3]],
    )
    model.generation_config = generation
    model.save_pretrained(out)

    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    )
    processor.save_pretrained(out)


def tiny_whisper_dir() -> Path:
    """Directory with the tiny random Whisper, built once per transformers version."""
    return cached_build(NAME, build_whisper)
