"""Structured outputs by constrained decoding: OpenAI ``response_format`` with llguidance.

``{"type": "json_object"}`` constrains generation to one JSON object; ``{"type": "json_schema",
"json_schema": {"schema": {...}}}`` to JSON valid against the schema. At every decoding step
the grammar matcher of the request computes the set of tokens that keep the output a valid
prefix; the others get ``-inf`` logits before greedy choice or sampling, so the answer always
parses (unless ``max_tokens`` cuts it, which ends with ``finish_reason: "length"``). When the
grammar is complete the generation ends (``finish_reason: "stop"``).

Output is compact JSON (no free whitespace between tokens): small models otherwise tend to
loop on newlines. llguidance (Rust, CPU) builds masks in tens of microseconds per step.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from handlers.base import InvalidInput
from inferq.openai.chat import STRUCTURED_OUTPUTS_UNSUPPORTED

_COMPILE_OPTIONS = {"whitespace_flexible": False}


class JsonConstraint:
    """One request's grammar state: masks logits, follows the chosen tokens."""

    def __init__(self, matcher, vocab_size: int):
        from llguidance.torch import allocate_token_bitmask

        self.matcher = matcher
        self.bitmask = allocate_token_bitmask(1, vocab_size)

    def mask_(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to ``-inf`` (in place, 1-D)."""
        from llguidance.torch import apply_token_bitmask_inplace, fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        apply_token_bitmask_inplace(logits.unsqueeze(0), self.bitmask.to(logits.device))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar rejected token {token}: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The output is complete: nothing but end-of-sequence may follow."""
        return self.matcher.is_stopped()


class StructuredOutputs:
    """Per-model factory of :class:`JsonConstraint` (the tokenizer index is built once)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int]):
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._tokenizer = None
        self._lock = threading.Lock()

    def _lltokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                try:
                    import llguidance.hf
                except ImportError as exc:  # pragma: no cover - llguidance is a worker dependency
                    raise InvalidInput(
                        "structured outputs need the llguidance package on the worker",
                        param="response_format",
                        code=STRUCTURED_OUTPUTS_UNSUPPORTED,
                    ) from exc
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos
                )
            return self._tokenizer

    def warm_up(self) -> None:
        self._lltokenizer()

    def constraint(self, response_format: dict[str, Any] | None) -> JsonConstraint | None:
        """The constraint for an OpenAI ``response_format`` (None for plain text)."""
        if not response_format:
            return None
        kind = response_format.get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            schema: Any = {"type": "object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            # Without a schema, any JSON object (as OpenAI's json_object).
            schema = spec.get("schema", {"type": "object"}) if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise InvalidInput(
                    "response_format.json_schema.schema must be a JSON schema object",
                    param="response_format",
                )
        else:
            raise InvalidInput(
                f"unsupported response_format type '{kind}' (text, json_object, json_schema)",
                param="response_format",
            )
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=_COMPILE_OPTIONS)
        except ValueError as exc:
            raise InvalidInput(f"invalid JSON schema: {exc}", param="response_format") from exc
        return self.grammar_constraint(grammar, param="response_format")

    def lark_constraint(self, lark: str, *, param: str) -> JsonConstraint:
        """The constraint of a llguidance Lark grammar (tool calls embed JSON schemas)."""
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_lark(lark)
        except ValueError as exc:
            raise InvalidInput(f"invalid JSON schema: {exc}", param=param) from exc
        return self.grammar_constraint(grammar, param=param)

    def grammar_constraint(self, grammar: str, *, param: str) -> JsonConstraint:
        from llguidance import LLMatcher

        matcher = LLMatcher(self._lltokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise InvalidInput(f"unsupported JSON schema: {matcher.get_error()}", param=param)
        return JsonConstraint(matcher, self.vocab_size)
