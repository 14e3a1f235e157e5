"""Shared pieces for the tiny model builders: the cache and locally trained tokenizers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[2]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "Embeddings map sentences to vectors of numbers.",
    "What is the weather like today in the city?",
    "Cats and dogs are popular pets around the world.",
    "The meeting starts at nine o'clock in the morning.",
    "Machine learning models learn patterns from data.",
    "Please transcribe this audio file into text.",
    "Rerankers score how relevant a document is to a query.",
] * 20


def cache_dir() -> Path:
    import transformers

    return ROOT / ".cache" / "tiny-models" / transformers.__version__


def cached_build(name: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_dir()/name``, running ``build(tmp_dir)`` once to create it."""
    target = cache_dir() / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / ".complete").exists():
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def train_wordpiece_tokenizer(vocab_size: int = 400, model_max_length: int = 128):
    """A BERT-style WordPiece fast tokenizer trained on ``CORPUS``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS, WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def train_bpe_tokenizer(vocab_size: int = 500, special_tokens: list[str] | None = None):
    """A byte-level BPE fast tokenizer (GPT-2/Llama/Qwen style) trained on ``CORPUS``.

    Returns the bare ``PreTrainedTokenizerFast``; callers set the special tokens, chat
    template and padding side their model family needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    specials = special_tokens or ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok)
