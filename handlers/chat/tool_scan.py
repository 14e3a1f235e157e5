"""Tool calls read out of generated text as it grows: each call object, its name once it is
complete and the raw JSON text of its arguments so far (what streams as argument fragments).

A call written as ``{"name": "f", "arguments": {...}}`` (``parameters`` for Llama 3) is
*streamable*: its arguments are an object literal after the name, so their text can be passed
on as it is generated and the final ``arguments`` are exactly that text. Any other form (the
arguments as a JSON string, keys in another order) is read whole once the object closes, and
its arguments are re-serialised. Pure text: no torch, no tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_BLANK = re.compile(r"\s*")
_SCALAR = re.compile(r'[^\s,\]}"]*')


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of the arguments object


@dataclass
class CallText:
    """One call object as far as it is written."""

    name: str | None = None  # once the name is complete
    arguments: str = ""  # the arguments' JSON text so far (whole once closed, if not streamable)
    streamable: bool = False  # arguments are an object literal after the name: streamed raw
    closed: bool = False  # the call's text is complete
    call: ParsedCall | None = None  # closed and a valid call


def call_of(value: Any, key: str) -> ParsedCall | None:
    """A ``{"name": ..., "arguments"|"parameters": {...}}`` object as a call (else None)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get(key, value.get("arguments", value.get("parameters", {})))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def value_end(text: str, start: int) -> int | None:
    """Where the JSON value starting at ``text[start]`` ends (None: not complete yet)."""
    first = text[start]
    if first == '"' or first in "{[":
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            char = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
                    if depth == 0:
                        return i + 1
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
        return None
    end = _SCALAR.match(text, start).end()
    return end if end < len(text) else None


def _whole(text: str, start: int, key: str, name: str | None) -> tuple[CallText, int | None]:
    """The call object at ``start`` read whole (None as the end: not closed yet)."""
    end = value_end(text, start)
    if end is None:
        return CallText(name), None
    try:
        call = call_of(json.loads(text[start:end]), key)
    except ValueError:
        call = None
    arguments = call.arguments if call else ""
    return CallText(call.name if call else name, arguments, closed=True, call=call), end


def scan_call(text: str, start: int, key: str) -> tuple[CallText, int | None]:
    """The call object beginning with ``{`` at ``start``, and where it ends (None: open)."""
    head = _HEAD.match(text, start)
    if head is None:
        return _whole(text, start, key, None)
    try:
        name = json.loads(f'"{head.group(1)}"')
    except ValueError:
        name = head.group(1)
    at = head.end()
    if at == len(text):  # whether the arguments are an object shows with their first character
        return CallText(name), None
    if text[at] != "{":  # arguments as a string (or not an object): read whole
        return _whole(text, start, key, name)
    end = value_end(text, at)
    arguments = text[at:end] if end is not None else text[at:]
    after = _BLANK.match(text, end).end() if end is not None else len(text)
    if after == len(text):
        return CallText(name, arguments, streamable=True), None
    if text[after] != "}":  # more keys after the arguments: the object read whole
        whole, closed_at = _whole(text, start, key, name)
        whole.arguments, whole.streamable = arguments, True
        if whole.call is not None:
            whole.call = ParsedCall(whole.call.name, arguments)
        return whole, closed_at
    try:
        valid = isinstance(json.loads(arguments), dict)
    except ValueError:
        valid = False
    call = ParsedCall(name, arguments) if valid else None
    return CallText(name, arguments, streamable=True, closed=True, call=call), after + 1


def scan_calls(text: str, start: int, key: str, separator: str | None) -> list[CallText]:
    """Call objects from ``start``: one, or a list of them joined by ``separator``."""
    calls: list[CallText] = []
    pos = start
    while True:
        pos = _BLANK.match(text, pos).end()
        if text[pos : pos + 1] != "{":
            return calls
        call, end = scan_call(text, pos, key)
        calls.append(call)
        if end is None or separator is None:
            return calls
        pos = _BLANK.match(text, end).end()
        if not text.startswith(separator, pos):
            return calls
        pos += len(separator)
