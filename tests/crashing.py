"""A test-only embedding handler that can be slow or kill its worker, for crash-safety tests."""

from __future__ import annotations

import os
import time

from handlers.embedding import HFEmbeddingModel


class CrashingEmbedder(HFEmbeddingModel):
    """``HFEmbeddingModel`` that sleeps ``slow_seconds`` per forward pass and kills its whole
    process (as an OOM kill or segfault would) when it meets the text ``CRASH``."""

    def __init__(self, *args, slow_seconds: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.slow_seconds = slow_seconds

    def embed_batch(self, texts):
        if "CRASH" in texts:
            os._exit(137)
        time.sleep(self.slow_seconds)
        return super().embed_batch(texts)
