"""Test-only handlers that are slow or kill their worker, for crash-safety tests."""

from __future__ import annotations

import os
import time

from handlers.chat import TextChatModel
from handlers.embedding import HFEmbeddingModel
from handlers.tokens import Tokenized


class CrashingEmbedder(HFEmbeddingModel):
    """``HFEmbeddingModel`` that sleeps ``slow_seconds`` per forward pass and kills its whole
    process (as an OOM kill or segfault would) when it meets the text ``CRASH``."""

    def __init__(self, *args, slow_seconds: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.slow_seconds = slow_seconds

    def embed_batch(self, texts):
        if any(_says_crash(self.tokenizer, text) for text in texts):
            os._exit(137)
        time.sleep(self.slow_seconds)
        return super().embed_batch(texts)


def _says_crash(tokenizer, text) -> bool:
    """The input is the text ``CRASH`` (raw, or the handler's tokenised row of it)."""
    if isinstance(text, Tokenized):
        text = tokenizer.decode(text.input_ids, skip_special_tokens=True)
    return text.strip().upper() == "CRASH"


class SlowChat(TextChatModel):
    """``TextChatModel`` that sleeps ``step_seconds`` per forward pass, so a generation lasts
    long enough to kill its worker (or its Redis) in the middle of it."""

    def __init__(self, *args, step_seconds: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_seconds = step_seconds

    def _forward(self, inputs, cache):
        time.sleep(self.step_seconds)
        return super()._forward(inputs, cache)
