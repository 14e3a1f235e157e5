"""Generated tokens to streamed text: incremental detokenization and stop strings.

Text is streamed as it is decoded, holding back a possible partial stop string and incomplete
UTF-8, so the concatenated deltas equal the final text.
"""

from __future__ import annotations

from collections.abc import Callable

from handlers.chat.request import OnText


class TextStream:
    """One request's decoded text, the part of it already passed to ``on_text``, its stops."""

    def __init__(
        self, decode: Callable[[list[int]], str], stop: list[str] | None, on_text: OnText | None
    ):
        self.decode = decode
        self.on_text = on_text
        self.stops = [s for s in (stop or []) if s]
        self.token_ids: list[int] = []
        self.text = ""  # decoded so far (complete characters only)
        self.emitted = 0  # len(text) already passed to on_text
        self.prefix_offset = 0  # incremental detokenization window, as in vLLM
        self.read_offset = 0

    def add(self, token: int) -> bool:
        """Decode one more token; True when a stop string appeared (the text is cut before it)."""
        self.token_ids.append(token)
        self._decode_new_text()
        # A stop string never begins inside already emitted text (see emit_settled), so the
        # search can start there. The text ends before the earliest stop string, whichever
        # of them is listed first: one token can bring several (" Paris" has " Pa" and "ris").
        cuts = [cut for stop in self.stops if (cut := self.text.find(stop, self.emitted)) >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            return True
        return False

    def emit_settled(self) -> None:
        """Pass on the text that can no longer turn out to be the start of a stop string."""
        self._emit(len(self.text) - self._partial_stop_length())

    def finish(self, *, flush: bool = True) -> str:
        """Pass on the rest of the text (with ``flush``, also trailing incomplete characters)."""
        if flush and self.read_offset < len(self.token_ids):
            # Trailing tokens that never completed a character: emit them as decoded.
            prefix_text = self.decode(self.token_ids[self.prefix_offset : self.read_offset])
            self.text += self.decode(self.token_ids[self.prefix_offset :])[len(prefix_text) :]
            self.read_offset = len(self.token_ids)
        self._emit(len(self.text))
        return self.text

    def _decode_new_text(self) -> None:
        """Append newly completed characters to ``text`` (holds back partial UTF-8)."""
        prefix_text = self.decode(self.token_ids[self.prefix_offset : self.read_offset])
        new_text = self.decode(self.token_ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)

    def _partial_stop_length(self) -> int:
        """Length of the longest suffix of ``text`` that could start a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, upto: int) -> None:
        if upto > self.emitted and self.on_text is not None:
            delta = self.text[self.emitted : upto]
            self.emitted = upto
            self.on_text(delta)
        self.emitted = max(self.emitted, upto)
