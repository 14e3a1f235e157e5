"""Reranking with a cross-encoder (``AutoModelForSequenceClassification``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.base import Family, RerankResult
from handlers.dtype import resolve_dtype
from handlers.embedding import run_in_length_batches
from handlers.encoder_heads import contiguous_head_inputs
from handlers.tokens import RowTokenizer, Tokenized, position_limit
from handlers.traced import trace_forward, wants_trace

# Cross-encoders are trained on short passages; longer limits only cost memory.
_DEFAULT_MAX_LENGTH = 512


class HFRerankModel:
    """Scores (query, document) pairs jointly encoded by a cross-encoder.

    The relevance score is in [0, 1]: the sigmoid of the logit for one-logit heads
    (bge-reranker, ms-marco cross-encoders), the probability of the last class for two-class
    heads. Pairs longer than ``max_length`` tokens are truncated from the document side (from
    the longer side, the query included, where the query alone leaves the document no token).
    """

    family: ClassVar[Family] = Family.RERANK
    capabilities: ClassVar[list[str]] = ["rerank"]
    thread_safe = False
    owned_by = "local"

    def __init__(
        self,
        hf_repo_id: str,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        max_length: int | None = None,
        torch_dtype: str | None = None,
        revision: str | None = None,
        batch_tokens: int = 16384,
        max_batch_size: int = 128,
        torchscript: bool | str | None = "auto",
        **_entry: Any,
    ):
        self.name = name or hf_repo_id
        self.device = torch.device(device)
        load = {"cache_dir": cache_dir, "local_files_only": True, "revision": revision}
        self.tokenizer = AutoTokenizer.from_pretrained(hf_repo_id, **load)
        self.dtype = resolve_dtype(torch_dtype, self.device)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            hf_repo_id, dtype=self.dtype, **load
        )
        self.model.to(self.device).eval()
        contiguous_head_inputs(self.model)  # one kernel per row count (handlers/encoder_heads.py)
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(f"{self.name}: a reranker needs 1 or 2 labels, not {self.num_labels}")
        limits = [
            max_length,
            position_limit(self.model),
            getattr(self.tokenizer, "model_max_length", None),
            _DEFAULT_MAX_LENGTH if max_length is None else None,
        ]
        self.max_length = min(int(v) for v in limits if v and v < 1_000_000)
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        # Fast tokenizers are not thread-safe: tokenising goes through a copy of its own, under
        # its lock (handlers/tokens.py).
        self._rows = RowTokenizer(self.tokenizer, self.max_length)
        self._traced = None  # the traced forward (handlers/traced.py), None: eager
        if wants_trace(torchscript, self.device):
            self._traced = trace_forward(
                self.model,
                lambda texts: self._rows.pad(self.tokenize([(t, t) for t in texts]), self.device),
                "logits",
            )

    def tokenize(self, pairs: Sequence[tuple[str, str]]) -> list[Tokenized]:
        """Each pair's token ids after truncation, for :meth:`score_batch` (which then only
        pads them)."""
        queries = [q for q, _ in pairs]
        documents = [d for _, d in pairs]
        try:
            return self._rows(queries, documents, truncation="only_second")
        except Exception:  # tokenizers' bare Exception: a query that leaves its document no token
            return [self._pair(query, document) for query, document in pairs]

    def _pair(self, query: str, document: str) -> Tokenized:
        """One pair cut from the document side where it can be, else from the longer side (a
        query past the limit is cut too, rather than failing the request)."""
        try:
            return self._rows([query], [document], truncation="only_second")[0]
        except Exception:
            return self._rows([query], [document], truncation="longest_first")[0]

    def token_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens each pair occupies after truncation (special tokens included)."""
        return [len(row) for row in self.tokenize(pairs)]

    def count_tokens(self, pairs: Sequence[tuple[str, str]]) -> int:
        return sum(self.token_lengths(pairs))

    @torch.inference_mode()
    def score_batch(self, pairs: Sequence[tuple[str, str]] | Sequence[Tokenized]) -> np.ndarray:
        """One forward pass over ``pairs`` (raw, or rows of :meth:`tokenize`; the caller sizes
        the batch): a score per pair."""
        rows = pairs if pairs and isinstance(pairs[0], Tokenized) else self.tokenize(pairs)
        inputs = self._rows.pad(rows, self.device)
        if self._traced is not None:
            logits = self._traced(inputs).float()
        else:
            logits = self.model(**inputs).logits.float()
        if self.num_labels == 1:
            scores = torch.sigmoid(logits[:, 0])
        else:
            scores = torch.softmax(logits, dim=-1)[:, -1]
        return scores.cpu().numpy()

    def score(
        self, pairs: Sequence[tuple[str, str]], cancel_event: threading.Event | None = None
    ) -> np.ndarray:
        """Scores for any number of pairs: sorted by length, cut into token-budgeted batches."""
        rows = self.tokenize(pairs) if pairs else []
        return run_in_length_batches(
            rows,
            [len(row) for row in rows],
            self.score_batch,
            out=np.empty((len(pairs),), dtype=np.float32),
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            cancel_event=cancel_event,
        )

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        cancel_event: threading.Event | None = None,
    ) -> list[RerankResult]:
        scores = self.score([(query, d) for d in documents], cancel_event)
        return rank(scores, top_k)


def rank(scores: np.ndarray, top_k: int | None = None) -> list[RerankResult]:
    """Results sorted by score, highest first (ties keep document order), cut to ``top_k``."""
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [RerankResult(index=int(i), relevance_score=float(scores[i])) for i in order]
