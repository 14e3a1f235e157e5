"""Per-token log-probabilities (OpenAI's ``logprobs`` / ``top_logprobs``).

A logprob is the model's log-softmax of the raw logits at that step, before temperature,
penalties, ``logit_bias``, a grammar mask, top-k/top-p: what OpenAI reports and vLLM's default
(``logprobs_mode="raw_logprobs"``). So greedy logprobs of a text equal a plain forward pass's.

Entries are compact lists, the form that travels on the job's event stream and in results:
``[token, logprob, bytes_or_None, [[token, logprob, bytes_or_None], ...]]``; ``bytes`` is None
when it is the UTF-8 of ``token`` (the common case). A token that is not whole UTF-8 (a piece
of a multi-byte character) is written with ``\\x..`` escapes and carries its bytes.
:mod:`inferq.openai.logprobs` expands entries to OpenAI's objects.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

Entry = list[Any]


class TokenBytes:
    """Token id -> its bytes, read from the tokenizer through llguidance (which knows the raw
    bytes of byte-level BPE and SentencePiece byte-fallback tokens alike); built on first use."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int], shared=None):
        self._hf = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._shared = shared  # a StructuredOutputs whose llguidance tokenizer can be reused
        self._ll = None
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[str, bytes | None]] = {}

    def _lltokenizer(self):
        with self._lock:
            if self._ll is None:
                if self._shared is not None:
                    self._ll = self._shared._lltokenizer()
                else:
                    try:
                        import llguidance.hf

                        self._ll = llguidance.hf.from_tokenizer(
                            self._hf, n_vocab=self._vocab_size, eos_token=self._eos
                        )
                    except Exception:  # a tokenizer llguidance cannot read: decode instead
                        self._ll = False
            return self._ll

    def text(self, token: int) -> tuple[str, bytes | None]:
        """``(token text, its bytes when they are not the text's UTF-8)``."""
        found = self._cache.get(token)
        if found is not None:
            return found
        ll = self._lltokenizer()
        if ll:
            raw = ll.decode_bytes([token])
        else:
            raw = self._hf.decode([token], clean_up_tokenization_spaces=False).encode()
        try:
            found = (raw.decode("utf-8"), None)
        except UnicodeDecodeError:
            found = (raw.decode("utf-8", errors="backslashreplace"), raw)
        if len(self._cache) < 1 << 20:
            self._cache[token] = found
        return found


class LogprobRecorder:
    """One request's logprob entries: recorded per token, handed out with the text."""

    def __init__(self, token_bytes: TokenBytes, top: int):
        self.token_bytes = token_bytes
        self.top = top
        self.entries: list[Entry] = []
        self.prompt: list[Entry] | None = None
        self._taken = 0

    def record_prompt(self, logits: torch.Tensor, ids: torch.Tensor) -> None:
        """The prompt tokens' entries from the prefill's logits of every prompt position
        (``[len, vocab]``) and the prompt's ids; the first token's logprob is None."""
        ids_list = ids.tolist()
        entries: list[Entry] = [[*self._item(ids_list[0], None), []]]
        if len(ids_list) > 1:
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            chosen = logprobs.gather(-1, ids[1:].unsqueeze(-1)).squeeze(-1).tolist()
            tops = torch.topk(logprobs, self.top) if self.top else None
            for j, token in enumerate(ids_list[1:]):
                alternatives = []
                if tops is not None:
                    alternatives = [
                        self._item(i, v)
                        for i, v in zip(
                            tops.indices[j].tolist(), tops.values[j].tolist(), strict=True
                        )
                    ]
                entries.append([*self._item(token, chosen[j]), alternatives])
        self.prompt = entries

    def record(self, logits: torch.Tensor, token: int) -> None:
        """The entry of ``token`` chosen after raw ``logits`` (1-D float32)."""
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = float(logprobs[token])
        alternatives = []
        if self.top:
            values, ids = torch.topk(logprobs, self.top)
            alternatives = [
                self._item(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            ]
        self.entries.append([*self._item(token, chosen), alternatives])

    def _item(self, token: int, logprob: float) -> Entry:
        text, raw = self.token_bytes.text(token)
        return [text, logprob, list(raw) if raw is not None else None]

    def discard_last(self) -> None:
        """Forget the last entry (an end-of-sequence token is not part of the content)."""
        if len(self.entries) > self._taken:
            self.entries.pop()

    def take(self) -> list[Entry]:
        """The entries not handed out yet."""
        new = self.entries[self._taken :]
        self._taken = len(self.entries)
        return new
