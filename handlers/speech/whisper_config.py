"""A transformers Whisper checkpoint's generation config, completed, and its special token ids.

Older or fine-tuned checkpoints lack parts of what ``generate`` needs for long-form,
timestamped, word-timed decoding; :func:`prepare_generation` fills them in from the
vocabulary and the model config, as OpenAI's reference implementation would.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from handlers.speech.language import whisper_language_codes


@dataclass
class WhisperSetup:
    generation: Any  # the completed transformers GenerationConfig (also the model's)
    multilingual: bool
    alignment_heads_source: str  # "model", or "upper-half-decoder-heads" (OpenAI's default)
    sot: int  # <|startoftranscript|>
    eot: int  # <|endoftext|>
    timestamp_begin: int  # <|0.00|>; every larger id is a timestamp
    no_speech_id: int | None
    language_ids: dict[str, int]  # language code -> token id (empty for English-only)
    max_prompt_tokens: int


def special_ids(tokenizer, tokens: Iterable[str]) -> dict[str, int]:
    """Ids of those ``tokens`` the vocabulary has (unknown ones map to unk: dropped)."""
    found = {}
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            found[token] = token_id
    return found


def prepare_generation(model, tokenizer) -> WhisperSetup:
    """Complete ``model``'s generation config (in place: ``generate`` reads both) and read
    the special token ids from it."""
    config = model.config
    generation = copy.deepcopy(model.generation_config)
    multilingual = getattr(generation, "is_multilingual", None)
    if multilingual is None:
        multilingual = config.vocab_size >= 51865
    if multilingual and not getattr(generation, "lang_to_id", None):
        # older fine-tuned checkpoints: rebuild the language/task maps from the vocabulary
        generation.lang_to_id = special_ids(
            tokenizer, (f"<|{code}|>" for code in whisper_language_codes())
        )
        generation.task_to_id = {
            task: token_id
            for task in ("translate", "transcribe")
            for token_id in special_ids(tokenizer, [f"<|{task}|>"]).values()
        }
    if getattr(generation, "no_timestamps_token_id", None) is None:
        generation.no_timestamps_token_id = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    if getattr(generation, "forced_decoder_ids", None) is not None:
        generation.forced_decoder_ids = None  # superseded by language= and task=
    multilingual = bool(multilingual) and bool(getattr(generation, "lang_to_id", None))
    if not multilingual:
        # transformers detects a language whenever lang_to_id exists, even for .en models
        for attribute in ("lang_to_id", "task_to_id", "language", "task"):
            if hasattr(generation, attribute):
                delattr(generation, attribute)
    if not getattr(generation, "alignment_heads", None):
        layers, heads = config.decoder_layers, config.decoder_attention_heads
        generation.alignment_heads = [
            [layer, head] for layer in range(layers // 2, layers) for head in range(heads)
        ]
        alignment_heads_source = "upper-half-decoder-heads"
    else:
        alignment_heads_source = "model"
    # OpenAI's sample_len; transformers adds the prompt and start tokens to it
    generation.max_length = config.max_target_positions // 2
    # generate() fills unset fields from model.generation_config: keep the two identical
    model.generation_config = generation

    eos = generation.eos_token_id
    no_speech = special_ids(tokenizer, ["<|nospeech|>", "<|nocaptions|>"])
    return WhisperSetup(
        generation=generation,
        multilingual=multilingual,
        alignment_heads_source=alignment_heads_source,
        sot=generation.decoder_start_token_id,
        eot=eos[0] if isinstance(eos, list) else eos,
        timestamp_begin=generation.no_timestamps_token_id + 1,
        no_speech_id=next(iter(no_speech.values()), None),
        language_ids=(
            {token[2:-2]: token_id for token, token_id in (generation.lang_to_id or {}).items()}
            if multilingual
            else {}
        ),
        max_prompt_tokens=config.max_target_positions // 2 - 1,
    )
