"""Choosing the next token of one request: logit bias, grammar mask, temperature and top-p."""

from __future__ import annotations

from typing import Any

import torch

from handlers.chat.request import ChatRequest


class Sampler:
    """One request's token choice. Greedy when ``temperature`` is 0, else seeded sampling.

    ``constraint`` is the request's structured-output grammar (see :mod:`.structured`), or None.
    """

    def __init__(self, request: ChatRequest, device: torch.device, constraint: Any = None):
        self.temperature = request.temperature
        self.top_p = request.top_p
        self.constraint = constraint
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
        if self.bias is not None or self.constraint is not None:
            logits = logits.clone()
            if self.bias is not None:
                logits.index_add_(0, *self.bias)
            if self.constraint is not None:
                self.constraint.mask_(logits)
            greedy_token = int(logits.argmax())
        if self.generator is None:
            return greedy_token
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p
            outside[0] = False  # always keep the most likely token
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))
