"""Choosing the next token of one request: penalties, logit bias, grammar mask, temperature,
top-k, min-p and top-p.

``presence_penalty`` and ``frequency_penalty`` follow OpenAI: the logit of every token already
generated drops by ``presence_penalty`` once and by ``frequency_penalty`` per occurrence.
``repetition_penalty`` follows vLLM/transformers (prompt and generated tokens: a positive
logit is divided by it, a negative one multiplied). They change greedy choices too; top-k and
min-p only matter when sampling.
"""

from __future__ import annotations

from typing import Any

import torch

from handlers.chat.request import ChatRequest


class Sampler:
    """One request's token choice. Greedy when ``temperature`` is 0, else seeded sampling.

    ``constraint`` is the request's structured-output grammar (see :mod:`.structured`), or None.
    """

    def __init__(
        self,
        request: ChatRequest,
        device: torch.device,
        constraint: Any = None,
        prompt_ids: list[int] | None = None,
    ):
        self.temperature = request.temperature
        self.top_p = request.top_p
        self.top_k = request.top_k if request.top_k > 0 else 0
        self.min_p = request.min_p
        self.constraint = constraint
        self.penalties = Penalties.of(request, device, prompt_ids or [])
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if request.logit_bias:
            ids, values = zip(*request.logit_bias.items(), strict=True)
            self.bias = (
                torch.tensor(ids, dtype=torch.long, device=device),
                torch.tensor(values, dtype=torch.float32, device=device),
            )
        self.generator: torch.Generator | None = None
        if request.temperature > 0:
            self.generator = torch.Generator(device=device)
            if request.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(request.seed)

    def pick(self, logits: torch.Tensor, greedy_token: int) -> int:
        """Next token from this row's last-position logits (float32, shape ``[vocab]``).

        ``greedy_token`` is the batch's argmax for this row, reused when nothing reshapes
        the logits.
        """
        if self.bias is not None or self.constraint is not None or self.penalties is not None:
            logits = logits.clone()
            if self.penalties is not None:
                self.penalties.apply_(logits)
            if self.bias is not None:
                logits.index_add_(0, *self.bias)
            if self.constraint is not None:
                self.constraint.mask_(logits)
            greedy_token = int(logits.argmax())
        if self.generator is None:
            return greedy_token
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.min_p > 0:
            probs = probs.masked_fill(probs < self.min_p * probs.max(), 0.0)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p
            outside[0] = False  # always keep the most likely token
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def observe(self, token: int) -> None:
        """Account for a generated token (the penalties count it)."""
        if self.penalties is not None:
            self.penalties.observe(token)


class Penalties:
    """One request's token counts and the penalties applied with them."""

    def __init__(self, request: ChatRequest, device: torch.device, prompt_ids: list[int]):
        self.presence = request.presence_penalty
        self.frequency = request.frequency_penalty
        self.repetition = request.repetition_penalty
        self.device = device
        self.prompt_ids = prompt_ids
        self.counts: torch.Tensor | None = None  # generated tokens, per id
        self.seen: torch.Tensor | None = None  # prompt and generated ids (repetition)

    @classmethod
    def of(cls, request: ChatRequest, device: torch.device, prompt_ids: list[int]):
        active = request.presence_penalty or request.frequency_penalty
        return (
            cls(request, device, prompt_ids) if active or request.repetition_penalty != 1 else None
        )

    def _init(self, vocab: int) -> None:
        self.counts = torch.zeros(vocab, dtype=torch.float32, device=self.device)
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        ids = [i for i in self.prompt_ids if 0 <= i < vocab]
        if ids:
            self.seen[torch.tensor(ids, device=self.device)] = True

    def observe(self, token: int) -> None:
        """Count a generated token (every token is picked, so ``apply_`` ran first)."""
        if self.counts is not None and 0 <= token < self.counts.shape[0]:
            self.counts[token] += 1
            self.seen[token] = True

    def apply_(self, logits: torch.Tensor) -> None:
        """Penalize ``logits`` (1-D, a clone) in place."""
        if self.counts is None:
            self._init(logits.shape[-1])
        if self.repetition != 1:
            penalized = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
            logits.copy_(torch.where(self.seen, penalized, logits))
        if self.frequency:
            logits.sub_(self.frequency * self.counts)
        if self.presence:
            logits.sub_(self.presence * (self.counts > 0).float())
