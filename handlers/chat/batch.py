"""The step-level running batch that continuous batching is built on (:class:`ChatBatch`)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import torch

from handlers.base import Cancelled
from handlers.chat.kv_cache import append_rows, drop_front_columns, mergeable, select_rows
from handlers.chat.request import ChatRequest, EncodedPrompt
from handlers.chat.row import Row


class BatchModel(Protocol):
    """What a batch needs from its chat handler (see :class:`handlers.chat.handler.ChatHandler`)."""

    device: torch.device
    pad_token_id: int
    _lock: threading.Lock

    def _admit(self, request: ChatRequest) -> tuple[Row, EncodedPrompt]: ...

    def _collate_vision(self, encoded: list[EncodedPrompt]) -> dict[str, torch.Tensor]: ...

    def _prompt_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _step_positions(self, next_positions: torch.Tensor) -> torch.Tensor: ...

    def _forward(
        self, inputs: dict[str, Any], cache: Any, *, every_position: bool = False
    ) -> tuple[torch.Tensor, Any]: ...


class ChatBatch:
    """A running batch of chat requests, advanced one decoding step at a time.

    ``add`` prefills new requests (together, in one forward pass) and merges them into the
    running batch; ``step`` runs one forward pass for every running request. Both return the
    requests that ended, as ``(key, ChatGeneration | Exception)`` with the caller's key.
    Rows are left-padded; each keeps its own positions, so its greedy output does not depend
    on the batch it runs in. A cancelled request leaves before the next forward pass; a failed
    prefill fails only the requests it was prefilling.

    New requests can join a non-empty batch when its KV cache is a plain ``DynamicCache``
    (:attr:`joinable`); otherwise callers wait for the batch to drain (static batching).
    Not thread-safe: one thread drives a batch (the public methods take the handler's lock).
    """

    def __init__(self, handler: BatchModel):
        self.handler = handler
        self.rows: list[Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [batch, cached + 1]: includes the next token
        self._tokens: torch.Tensor | None = None  # [batch, 1]: the tokens to feed next
        self._positions: torch.Tensor | None = None  # [batch]: their positions

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def joinable(self) -> bool:
        return not self.rows or mergeable(self._cache)

    def add(self, items: list[tuple[Any, ChatRequest]]) -> list[tuple[Any, Any]]:
        with self.handler._lock, torch.inference_mode():
            return self._add(items)

    def step(self) -> list[tuple[Any, Any]]:
        with self.handler._lock, torch.inference_mode():
            return self._step()

    # -- internals (the handler's lock held, inference mode on) -------------------------------

    def _add(self, items: list[tuple[Any, ChatRequest]]) -> list[tuple[Any, Any]]:
        if not self.joinable:
            raise RuntimeError("this batch's KV cache cannot take new rows; let it drain first")
        ended: list[tuple[Any, Any]] = []
        rows: list[Row] = []
        encoded: list[EncodedPrompt] = []
        for key, request in items:
            try:
                row, prompt = self.handler._admit(request)
            except Exception as exc:  # per-request input problems; the others still run
                ended.append((key, exc))
                continue
            row.key = key
            if row.cancel_requested():
                ended.append((key, Cancelled()))
                continue
            rows.append(row)
            encoded.append(prompt)
        if not rows:
            return ended
        try:
            cache, mask, tokens, positions = self._prefill(rows, encoded)
        except Exception as exc:  # fails the requests being prefilled, not the running ones
            return ended + [(row.key, exc) for row in rows]
        self._merge(rows, cache, mask, tokens, positions)
        return ended + self._drop_done()

    def _prefill(self, rows: list[Row], encoded: list[EncodedPrompt]):
        handler = self.handler
        width = max(len(e.input_ids) for e in encoded)
        input_ids = torch.full((len(rows), width), handler.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, prompt in enumerate(encoded):
            input_ids[i, width - len(prompt.input_ids) :] = torch.tensor(prompt.input_ids)
            mask[i, width - len(prompt.input_ids) :] = 1
        input_ids = input_ids.to(handler.device)
        mask = mask.to(handler.device)
        vision = handler._collate_vision(encoded)
        position_ids, next_positions = handler._prompt_positions(input_ids, mask, vision)
        inputs = {
            "input_ids": input_ids,
            **vision,
            "attention_mask": mask,
            "position_ids": position_ids,
        }
        wanted = [row.wants_prompt_logprobs for row in rows]
        if any(wanted):  # echo with logprobs: every prompt position's logits
            every, cache = handler._forward(inputs, None, every_position=True)
            for i, row in enumerate(rows):
                if wanted[i]:
                    start = width - len(encoded[i].input_ids)
                    row.logprobs.record_prompt(every[i, start:], input_ids[i, start:])
            logits = every[:, -1, :]
            del every
        else:
            logits, cache = handler._forward(inputs, None)
        tokens = self._pick(rows, logits)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        return cache, mask, tokens, next_positions

    def _merge(self, rows, cache, mask, tokens, positions) -> None:
        if not self.rows:
            self.rows, self._cache, self._mask = rows, cache, mask
            self._tokens, self._positions = tokens, positions
            return
        old, new = self._mask.shape[1], mask.shape[1]
        width = max(old, new)
        append_rows(self._cache, cache, pad_mine=width - old, pad_theirs=width - new)
        pad = torch.nn.functional.pad
        self._mask = torch.cat([pad(self._mask, (width - old, 0)), pad(mask, (width - new, 0))])
        self._tokens = torch.cat([self._tokens, tokens])
        self._positions = torch.cat([self._positions, positions])
        self.rows = self.rows + rows

    def _step(self) -> list[tuple[Any, Any]]:
        for row in self.rows:
            if not row.done and row.cancel_requested():
                row.fail(Cancelled())
        ended = self._drop_done()
        if not self.rows:
            return ended
        handler = self.handler
        inputs = {
            "input_ids": self._tokens,
            "attention_mask": self._mask,
            "position_ids": handler._step_positions(self._positions),
        }
        try:
            logits, self._cache = handler._forward(inputs, self._cache)
        except Exception as exc:  # a failed shared pass ends every request in it
            for row in self.rows:
                if not row.done:
                    row.fail(exc)
            return ended + self._drop_done()
        self._tokens = self._pick(self.rows, logits)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=-1)
        self._positions = self._positions + 1
        return ended + self._drop_done()

    def _pick(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        greedy = logits.argmax(dim=-1).tolist()
        tokens = []
        for pos, row in enumerate(rows):
            try:
                token = row.pick(logits[pos], greedy[pos])
                row.append(token)
            except Exception as exc:  # on_text raised, or the grammar broke: this row ends
                token = greedy[pos]
                row.fail(exc)
            tokens.append(token)
        return torch.tensor(tokens, device=self.handler.device).unsqueeze(-1)

    def _drop_done(self) -> list[tuple[Any, Any]]:
        """Remove finished rows (from the KV cache too); returns them as (key, result)."""
        if all(not row.done for row in self.rows):
            return []
        ended = [(row.key, row.result) for row in self.rows if row.done]
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._tokens = self._positions = None
            return ended
        index = torch.tensor(keep, device=self.handler.device)
        select_rows(self._cache, index)
        self._mask = self._mask[index]
        self._tokens = self._tokens[index]
        self._positions = self._positions[index]
        self._trim()
        return ended

    def _trim(self) -> None:
        """Drop leading cache columns that are padding for every remaining row."""
        if not mergeable(self._cache):
            return
        used = self._mask.any(dim=0)
        first = int(used.int().argmax())
        if first > 0:
            self._mask = self._mask[:, first:]
            drop_front_columns(self._cache, first)
