"""Test-only handlers that are slow or kill their worker, for crash-safety tests."""

from __future__ import annotations

import os
import time

from handlers.chat import TextChatModel
from handlers.embedding import HFEmbeddingModel
from handlers.tokens import Tokenized


class CrashingEmbedder(HFEmbeddingModel):
    """``HFEmbeddingModel`` that sleeps ``slow_seconds`` per forward pass, kills its whole
    process (as an OOM kill or segfault would) when it meets the text ``CRASH``, and hangs
    for ``hang_seconds`` (a pass that does not end) when it meets the text ``HANG``."""

    def __init__(self, *args, slow_seconds: float = 0.0, hang_seconds: float = 60.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.slow_seconds = slow_seconds
        self.hang_seconds = hang_seconds

    def embed_batch(self, texts):
        if any(_says(self.tokenizer, text, "CRASH") for text in texts):
            os._exit(137)
        if any(_says(self.tokenizer, text, "HANG") for text in texts):
            time.sleep(self.hang_seconds)
        time.sleep(self.slow_seconds)
        return super().embed_batch(texts)


def _says(tokenizer, text, word: str) -> bool:
    """The input is the text ``word`` (raw, or the handler's tokenised row of it)."""
    if isinstance(text, Tokenized):
        text = tokenizer.decode(text.input_ids, skip_special_tokens=True)
    return text.strip().upper() == word


class SlowChat(TextChatModel):
    """``TextChatModel`` that sleeps ``step_seconds`` per forward pass, so a generation lasts
    long enough to kill its worker (or its Redis) in the middle of it."""

    def __init__(self, *args, step_seconds: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_seconds = step_seconds

    def _forward(self, inputs, cache):
        time.sleep(self.step_seconds)
        return super()._forward(inputs, cache)
