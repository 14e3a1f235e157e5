"""One request's decoding state inside a batch: its sampler, its text, how it ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from handlers.base import ChatGeneration
from handlers.chat.logprobs import LogprobRecorder
from handlers.chat.request import ChatRequest
from handlers.chat.sampling import Sampler
from handlers.chat.text import TextStream


@dataclass(eq=False)  # rows are compared by identity
class Row:
    """A request being decoded; ``result`` is set (a generation or an error) when it ends."""

    request: ChatRequest
    prompt_tokens: int
    max_new_tokens: int
    sampler: Sampler
    stream: TextStream
    eos_token_ids: set[int]
    completion_tokens: int = 0
    result: ChatGeneration | Exception | None = None
    key: Any = None  # the caller's handle for this request (see ChatBatch)
    tools: Any = None  # a handlers.chat.tools.ToolCallStream when the output is parsed for calls
    logprobs: LogprobRecorder | None = None  # when the request asks for logprobs

    def __post_init__(self) -> None:
        on_text = self.stream.on_text
        if self.logprobs is not None and on_text is not None:
            # Each delta carries the logprobs of the tokens decoded since the last one.
            recorder = self.logprobs
            self.stream.on_text = lambda text: on_text(text, recorder.take())

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.logprobs is not None and self.request.prompt_logprobs

    @property
    def done(self) -> bool:
        return self.result is not None

    def pick(self, logits, greedy_token: int) -> int:
        token = self.sampler.pick(logits, greedy_token)
        if self.logprobs is not None:
            self.logprobs.record(logits, token)
        return token

    def cancel_requested(self) -> bool:
        event = self.request.cancel_event
        return event is not None and event.is_set()

    def fail(self, error: Exception) -> None:
        self.result = error

    def append(self, token: int) -> None:
        """Account for one generated token; may finish the row (stop, EOS or length)."""
        self.completion_tokens += 1
        self.sampler.observe(token)
        if token in self.eos_token_ids:
            if self.logprobs is not None:
                self.logprobs.discard_last()
            self._finish("stop")
            return
        constraint = self.sampler.constraint
        if constraint is not None:
            constraint.consume(token)
        if self.stream.add(token):
            self._finish("stop", flush=False)
            return
        if constraint is not None and constraint.finished:
            self._finish("stop")
            return
        if self.completion_tokens >= self.max_new_tokens:
            self._finish("length")
            return
        self.stream.emit_settled()

    def _finish(self, reason: Literal["stop", "length"], *, flush: bool = True) -> None:
        text = self.stream.finish(flush=flush)
        tool_calls = None
        if self.tools is not None:
            text, tool_calls = self.tools.finish()
        logprobs = None
        if self.logprobs is not None:
            logprobs = self.logprobs.entries
            rest = self.logprobs.take()
            if rest and self.request.on_text is not None:
                self.request.on_text("", rest)  # tokens whose text was cut or held back
        self.result = ChatGeneration(
            text=text,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason="tool_calls" if tool_calls else reason,
            tool_calls=tool_calls or None,
            logprobs=logprobs,
            prompt_logprobs=self.logprobs.prompt if self.logprobs is not None else None,
        )
