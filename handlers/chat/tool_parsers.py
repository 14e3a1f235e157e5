"""Tool-call formats per model family: finding, parsing and constraining the model's calls.

A catalog entry names its family's format with ``tool_parser``:

=================  ==========================================================================
``hermes``         Qwen 2.5/3, Hermes: one ``<tool_call>\\n{"name": ..., "arguments": {...}}
                   \\n</tool_call>`` block per call (what the Qwen chat templates ask for)
``smollm2``        SmolLM2-Instruct: ``<tool_call>[{"name": ..., "arguments": {...}}, ...]
                   </tool_call>``, one JSON list of calls (its function-calling training format)
``llama3_json``    Llama 3.1-3.3: the whole answer is ``{"name": ..., "parameters": {...}}``
                   (several joined by ``; ``), as the Llama 3 templates ask for
=================  ==========================================================================

Each parser says where a call starts in the generated text (:meth:`ToolParser.call_start`),
how much of a text's end could still become that start (:meth:`ToolParser.held_back`, for
streaming), where its call objects are (:meth:`ToolParser.scan`, read as they grow by
:mod:`handlers.chat.tool_scan`), parses the calls (:meth:`ToolParser.parse`, lenient: an object
that is not a JSON call is skipped), writes the llguidance grammar that forces calls
(``tool_choice`` required or a named function), and, for chat templates that ignore ``tools``,
the system prompt and the history text in its format. ``hermes`` and ``smollm2`` share the
``<tool_call>`` block scanning (:class:`TaggedParser`). Pure text: no torch, no tokenizer.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from handlers.chat.tool_scan import CallText, ParsedCall, scan_calls

__all__ = ["TOOL_PARSERS", "CallText", "ParsedCall", "ToolParser", "call_schema"]


def _call_json(call: ParsedCall, key: str = "arguments") -> str:
    return f'{{"name": {json.dumps(call.name)}, "{key}": {call.arguments}}}'


def _longest_partial(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


CALL_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def call_schema(functions: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """A JSON schema for one call of any of ``functions`` (``{name, <key>: parameters}``)."""
    options = []
    for i, function in enumerate(functions):
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if "properties" in parameters and "additionalProperties" not in parameters:
            # Only the declared arguments (as OpenAI's strict mode): small models otherwise
            # pad a forced call with made-up keys until max_tokens cuts it.
            parameters = {**parameters, "additionalProperties": False}
        # The parameters are no longer the schema's root: their local references
        # ("#/$defs/Place", as pydantic writes nested models) now start at their new place.
        where = f"/properties/{key}" if len(functions) == 1 else f"/anyOf/{i}/properties/{key}"
        parameters = _rebased(parameters, "#" + where)
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, key: parameters},
                "required": ["name", key],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    # The separators the model families write their calls with (Qwen/Hermes, SmolLM2 and
    # Llama 3 templates: ``{"name": "f", "arguments": {"a": 1}}``, as json.dumps): llguidance's
    # default compact ``{"name":"f",...}`` pushes a model off the text it was trained on.
    return {**schema, "x-guidance": CALL_JSON_OPTIONS}


# Keywords whose values are JSON data, not schemas: a "$ref" key in them is not a reference;
# and keywords whose values map names (of properties, of definitions) to schemas.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_NAMED_SCHEMAS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with its local ``$ref`` pointers (``#...``) prefixed by ``base``."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rebased = {}
    for name, value in schema.items():
        if name == "$ref" and isinstance(value, str) and value.startswith("#"):
            rebased[name] = base + value[1:]
        elif name in _DATA_KEYWORDS:
            rebased[name] = value
        elif name in _NAMED_SCHEMAS and isinstance(value, dict):
            rebased[name] = {key: _rebased(item, base) for key, item in value.items()}
        else:
            rebased[name] = _rebased(value, base)
    return rebased


class ToolParser:
    """What every format does; subclasses say where calls are (:meth:`call_start`,
    :meth:`held_back`, :meth:`scan`) and how they are written (grammar, prompt, history)."""

    name: ClassVar[str]
    arguments_key: ClassVar[str] = "arguments"

    def call_start(self, text: str) -> int | None:
        """Where the first call starts in ``text`` (None: no call so far)."""
        raise NotImplementedError

    def held_back(self, text: str) -> int:
        """How many characters at the end of ``text`` could still begin a call."""
        raise NotImplementedError

    def scan(self, text: str) -> list[CallText]:
        """Every call object in ``text`` as far as it is written, in order."""
        raise NotImplementedError

    def parse(self, text: str, *, final: bool = True) -> tuple[str | None, list[ParsedCall]]:
        """``(content before the calls or None, calls)``; without ``final``, only calls whose
        text is complete. No calls: ``(text, [])``. Lenient: an object that is not a call is
        skipped."""
        start = self.call_start(text)
        if start is None:
            return text, []
        calls = [found.call for found in self.scan(text) if found.call is not None]
        if not calls and final:
            return text, []
        content = text[:start]
        return (content if content.strip() else None), calls

    def grammar(self, functions: list[dict[str, Any]], *, parallel: bool) -> str:
        """A llguidance Lark grammar that admits only well-formed calls of ``functions``."""
        raise NotImplementedError

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        """Tool instructions for a chat template that ignores ``tools``."""
        raise NotImplementedError

    def format_calls(self, calls: list[ParsedCall]) -> str:
        """Calls in this format (assistant history for templates that ignore ``tool_calls``)."""
        raise NotImplementedError


class TaggedParser(ToolParser):
    """Calls inside ``<tool_call>...</tool_call>`` blocks, each holding one call object or a
    JSON list of them (the marker scanning ``hermes`` and ``smollm2`` share)."""

    open: ClassVar[str] = "<tool_call>"
    close: ClassVar[str] = "</tool_call>"

    def call_start(self, text: str) -> int | None:
        start = text.find(self.open)
        return None if start < 0 else start

    def held_back(self, text: str) -> int:
        return _longest_partial(text, self.open)

    def scan(self, text: str) -> list[CallText]:
        calls: list[CallText] = []
        begin = text.find(self.open)
        while begin >= 0:
            body = begin + len(self.open)
            end = text.find(self.close, body)
            block = text[:end] if end >= 0 else text
            lead = len(block) - len(block[body:].lstrip())
            if block[lead : lead + 1] == "[":
                found = scan_calls(block, lead + 1, self.arguments_key, ",")
            else:
                found = scan_calls(block, lead, self.arguments_key, None)
            if end >= 0:  # the block is closed: so is every call in it
                for call in found:
                    call.closed = True
            calls += found
            if end < 0:
                break
            begin = text.find(self.open, end + len(self.close))
        return calls


class HermesParser(TaggedParser):
    """Qwen 2.5/3, Hermes: one ``<tool_call>`` block per call."""

    name: ClassVar[str] = "hermes"

    def grammar(self, functions: list[dict[str, Any]], *, parallel: bool) -> str:
        """A llguidance Lark grammar that admits only well-formed calls of ``functions``."""
        rest = ' ("\\n" block)*' if parallel else ""
        return (
            f"start: block{rest}\n"
            f'block: "{self.open}\\n" call "\\n{self.close}"\n'
            f"call: %json {json.dumps(call_schema(functions, self.arguments_key))}\n"
        )

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        """Tool instructions for a chat template that ignores ``tools`` (Qwen 2.5's wording)."""
        listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def format_calls(self, calls: list[ParsedCall]) -> str:
        """Calls in this format (assistant history for templates that ignore ``tool_calls``)."""
        return "\n".join(f"{self.open}\n{_call_json(c)}\n{self.close}" for c in calls)


class SmolLM2Parser(TaggedParser):
    """SmolLM2-Instruct: one ``<tool_call>[...]</tool_call>`` list of calls."""

    name: ClassVar[str] = "smollm2"

    def grammar(self, functions: list[dict[str, Any]], *, parallel: bool) -> str:
        rest = ' ("," call)*' if parallel else ""
        return (
            f'start: "{self.open}[" call{rest} "]{self.close}"\n'
            f"call: %json {json.dumps(call_schema(functions, self.arguments_key))}\n"
        )

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        """SmolLM2's function-calling prompt (from its model card)."""
        listed = json.dumps([tool["function"] for tool in tools], ensure_ascii=False)
        return (
            "You are an expert in composing functions. You are given a question and a set of "
            "possible functions. Based on the question, you will need to make one or more "
            "function/tool calls to achieve the purpose.\n\n"
            f"You have access to the following tools:\n<tools>{listed}</tools>\n\n"
            "The output MUST strictly adhere to the following format, and NO other text MUST "
            "be included.\n<tool_call>[\n"
            '{"name": "func_name1", "arguments": {"argument1": "value1"}},\n'
            "... (more tool calls as required)\n]</tool_call>"
        )

    def format_calls(self, calls: list[ParsedCall]) -> str:
        items = ", ".join(_call_json(c) for c in calls)
        return f"{self.open}[{items}]{self.close}"


class Llama3JsonParser(ToolParser):
    """Llama 3.x: the answer is the JSON call(s) itself, ``; ``-separated."""

    name: ClassVar[str] = "llama3_json"
    arguments_key: ClassVar[str] = "parameters"
    _lead = re.compile(r"\s*(<\|python_tag\|>)?\s*")

    def call_start(self, text: str) -> int | None:
        lead = self._lead.match(text).end()
        return 0 if text[lead : lead + 1] == "{" else None

    def held_back(self, text: str) -> int:
        # Only the opening of the answer can start a call: hold it while it is blank.
        return len(text) if not text.strip() else 0

    def scan(self, text: str) -> list[CallText]:
        if self.call_start(text) is None:
            return []
        return scan_calls(text, self._lead.match(text).end(), self.arguments_key, ";")

    def grammar(self, functions: list[dict[str, Any]], *, parallel: bool) -> str:
        rest = ' ("; " call)*' if parallel else ""
        return (
            f"start: call{rest}\n"
            f"call: %json {json.dumps(call_schema(functions, self.arguments_key))}\n"
        )

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        listed = "\n\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        return (
            "Given the following functions, please respond with a JSON for a function call "
            "with its proper arguments that best answers the given prompt.\n\n"
            'Respond in the format {"name": function name, "parameters": dictionary of '
            f"argument name and its value}}. Do not use variables.\n\n{listed}"
        )

    def format_calls(self, calls: list[ParsedCall]) -> str:
        return "; ".join(_call_json(c, "parameters") for c in calls)


TOOL_PARSERS: dict[str, ToolParser] = {
    parser.name: parser for parser in (HermesParser(), SmolLM2Parser(), Llama3JsonParser())
}
