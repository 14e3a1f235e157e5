"""Text embeddings with a transformers encoder (``AutoModel``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from handlers.base import Family, check_cancelled
from handlers.dtype import resolve_dtype
from handlers.encoder_heads import contiguous_head_inputs
from handlers.tokens import RowTokenizer, Tokenized, position_limit
from handlers.traced import trace_forward, wants_trace

# Encoders whose tokenizer reports no real limit fall back to this.
_FALLBACK_MAX_LENGTH = 512


def _sentence_transformers_max_length(source: str) -> int | None:
    """``max_seq_length`` from a sentence-transformers export, when the source is a directory."""
    import json
    from pathlib import Path

    config = Path(source) / "sentence_bert_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("max_seq_length")
    return None


class HFEmbeddingModel:
    """Pooled, L2-normalised sentence embeddings.

    ``pooling`` (catalog entry): ``mean`` over non-padding tokens (default), ``cls`` (first
    token) or ``last_token`` (the last non-padding token, for decoder embedders such as
    Qwen3-Embedding; works with left or right padding).
    """

    family: ClassVar[Family] = Family.EMBEDDINGS
    capabilities: ClassVar[list[str]] = ["text-embedding"]
    thread_safe = False
    owned_by = "local"

    def __init__(
        self,
        hf_repo_id: str,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        pooling: str | None = None,
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
        self.pooling = pooling or "mean"
        if self.pooling not in ("mean", "cls", "last_token"):
            raise ValueError(f"unknown pooling '{self.pooling}'")
        load = {"cache_dir": cache_dir, "local_files_only": True, "revision": revision}
        self.tokenizer = AutoTokenizer.from_pretrained(hf_repo_id, **load)
        self.dtype = resolve_dtype(torch_dtype, self.device)
        self.model = AutoModel.from_pretrained(hf_repo_id, dtype=self.dtype, **load)
        self.model.to(self.device).eval()
        contiguous_head_inputs(self.model)  # one kernel per row count (handlers/encoder_heads.py)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = self._resolve_max_length(hf_repo_id, max_length)
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        # Fast tokenizers are not thread-safe (each call reconfigures padding and truncation):
        # tokenising goes through a copy of its own, under its lock (handlers/tokens.py).
        self._rows = RowTokenizer(self.tokenizer, self.max_length)
        self._traced = None  # the traced forward (handlers/traced.py), None: eager
        if wants_trace(torchscript, self.device):
            self._traced = trace_forward(
                self.model,
                lambda texts: self._rows.pad(self.tokenize(list(texts)), self.device),
                "last_hidden_state",
            )

    def _resolve_max_length(self, source: str, configured: int | None) -> int:
        if configured:
            return configured
        candidates = [
            _sentence_transformers_max_length(source),
            position_limit(self.model),
        ]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000:
            candidates.append(tok_max)
        known = [c for c in candidates if c]
        return min(known) if known else _FALLBACK_MAX_LENGTH

    def tokenize(self, texts: list[str]) -> list[Tokenized]:
        """Each text's token ids after truncation (special tokens included), for
        :meth:`embed_batch`: the forward pass then only pads them."""
        return self._rows(texts)

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens each text occupies after truncation (special tokens included)."""
        return [len(row) for row in self.tokenize(texts)]

    def count_tokens(self, texts: list[str]) -> int:
        return sum(self.token_lengths(texts))

    def embed(self, texts: list[str], cancel_event: threading.Event | None = None) -> np.ndarray:
        """Embed any number of texts: sorted by length, cut into token-budgeted batches."""
        rows = self.tokenize(texts) if texts else []
        return run_in_length_batches(
            rows,
            [len(row) for row in rows],
            self.embed_batch,
            out=np.empty((len(texts), self.dim), dtype=np.float32),
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            cancel_event=cancel_event,
        )

    @torch.inference_mode()
    def embed_batch(self, texts: Sequence[str] | Sequence[Tokenized]) -> np.ndarray:
        """One forward pass over ``texts`` (raw, or rows of :meth:`tokenize`; the caller sizes
        the batch)."""
        rows = texts if texts and isinstance(texts[0], Tokenized) else self.tokenize(list(texts))
        inputs = self._rows.pad(rows, self.device)
        if self._traced is not None:
            hidden = self._traced(inputs)
        else:
            hidden = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last_token":
            if bool((mask[:, -1] == 1).all()):  # left padding: the last column is real
                pooled = hidden[:, -1]
            else:
                last = mask.sum(dim=1) - 1
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            hidden = hidden.float()  # sums of many bf16/fp16 rows lose precision
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        # normalised in float32 whatever the model's dtype (float32 on the wire)
        pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled.cpu().numpy()


def plan_batches(sorted_lengths: list[int], batch_tokens: int, max_batch_size: int) -> list[slice]:
    """Cut length-sorted inputs into consecutive slices whose padded size fits the budget."""
    batches, start = [], 0
    for i, length in enumerate(sorted_lengths):
        size = i - start + 1
        if i > start and (size * length > batch_tokens or size > max_batch_size):
            batches.append(slice(start, i))
            start = i
    if start < len(sorted_lengths):
        batches.append(slice(start, len(sorted_lengths)))
    return batches


def run_in_length_batches(
    items: Sequence[Any],
    lengths: list[int],
    forward: Callable[[list[Any]], np.ndarray],
    *,
    out: np.ndarray,
    batch_tokens: int,
    max_batch_size: int,
    cancel_event: threading.Event | None = None,
) -> np.ndarray:
    """``forward`` over any number of items: sorted by token length, cut by ``plan_batches``,
    results written to ``out`` in the items' order (the cancel event is checked per batch)."""
    order = np.argsort(lengths, kind="stable")
    for batch in plan_batches([lengths[i] for i in order], batch_tokens, max_batch_size):
        check_cancelled(cancel_event)
        idx = order[batch.start : batch.stop]
        out[idx] = forward([items[i] for i in idx])
    return out
