"""Tool calling for local chat models: the prompt, the forced call, the streamed calls.

* **Prompt**: ``tools`` go to the model's own chat template (``apply_chat_template(...,
  tools=)``). A template that ignores them (SmolLM2's, plain ChatML) gets the tool
  instructions of the entry's parser as (the start of) its system message, assistant
  ``tool_calls`` as text in the parser's format and ``tool`` results as user turns in
  ``<tool_response>`` tags, as Qwen 2.5's template writes them.
* **tool_choice**: ``none`` renders the tools but parses nothing (as vLLM); ``auto``
  generates freely and parses the text; ``required`` and a named function constrain decoding
  with the parser's grammar, so the output is always a call whose arguments validate.
* **Output**: :class:`ToolCallStream` sits between the decoded text and ``on_text``: it holds
  back text once it could be the start of a call, passes content before a call on, announces
  each call once its name is written and streams its arguments' text as it is generated
  (``on_tool_calls``, OpenAI's ``delta.tool_calls`` entries), and gives the final
  ``(content, calls)``, the same as the streamed pieces.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from typing import Any

from handlers.base import InvalidInput
from handlers.chat.tool_parsers import TOOL_PARSERS, CallText, ParsedCall, ToolParser

OnToolCalls = Callable[[list[dict[str, Any]]], None]
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def parser_named(name: str | None) -> ToolParser | None:
    if name is None:
        return None
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool_parser '{name}' (one of {sorted(TOOL_PARSERS)})") from None


def forced_functions(tools: list[dict[str, Any]], tool_choice: Any) -> list[dict[str, Any]] | None:
    """The functions a call must be of (``required``: any; named: that one), else None."""
    functions = [tool["function"] for tool in tools or []]
    if tool_choice == "required":
        return functions
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise InvalidInput(f"tool_choice names no tool in tools: {name!r}", param="tool_choice")
        return chosen
    return None


def template_text(tokenizer) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: transformers picks 'tool_use' for tools
        return template.get("tool_use") or template.get("default") or ""
    return template or ""


def _arguments_object(arguments: Any) -> Any:
    """Templates expect arguments as a mapping (OpenAI sends a JSON string)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def tool_prompt(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    parser: ToolParser | None,
    template: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``(messages, tools)`` to render: the template's own way when it knows tools and tool
    messages, else the parser's text in plain messages (see the module docstring)."""
    knows_tools = "tools" in template
    knows_history = "tool_calls" in template
    fallback = parser or TOOL_PARSERS["hermes"]
    out: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            if knows_history:
                out.append(
                    {
                        **message,
                        "content": message.get("content") or "",
                        "tool_calls": [
                            {
                                **call,
                                "function": {
                                    **call["function"],
                                    "arguments": _arguments_object(call["function"]["arguments"]),
                                },
                            }
                            for call in calls
                        ],
                    }
                )
            else:
                parsed = [
                    ParsedCall(c["function"]["name"], c["function"]["arguments"]) for c in calls
                ]
                pieces = (message.get("content"), fallback.format_calls(parsed))
                text = "\n".join(t for t in pieces if t)
                out.append({"role": "assistant", "content": text})
        elif message.get("role") == "tool" and not knows_history:
            body = message.get("content") or ""
            out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
        else:
            out.append(message)
    if not tools or knows_tools:
        return out, tools or None
    instructions = fallback.system_prompt(tools)
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instructions}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return out, None


class ToolCallStream:
    """One request's text split into content and tool calls, as it is generated.

    Calls stream as OpenAI streams them: a first ``delta.tool_calls`` entry with the call's
    ``index``, ``id``, ``type`` and ``function.name`` (``arguments`` ""), then entries with
    argument fragments, each in its own ``on_tool_calls`` (its own chunk). A call whose
    arguments are not an object literal after its name (see :mod:`handlers.chat.tool_scan`)
    comes in one entry once it closes. A call already announced that never completes (cut by
    ``max_tokens``) is left out of the final message; were there no call at all, the text is
    then the content.
    """

    def __init__(
        self,
        parser: ToolParser,
        on_text: Callable[..., None] | None = None,
        on_tool_calls: OnToolCalls | None = None,
    ):
        self.parser = parser
        self.on_text = on_text
        self.on_tool_calls = on_tool_calls
        self.text = ""
        self.emitted = 0  # characters of text passed to on_text
        self.start: int | None = None  # where the first call starts, once seen
        self.ids: list[str] = []  # ids of the calls announced so far, by OpenAI index
        self.index: dict[int, int] = {}  # call object (in scan order) -> its OpenAI index
        self.sent: dict[int, int] = {}  # call object -> characters of its arguments sent
        # With logprobs requested: the entries of tokens whose text is not passed on yet
        # (they go with the next content delta; a call's tokens are not content).
        self.logprobs: list | None = None

    def feed(self, delta: str, logprobs: list | None = None) -> None:
        if logprobs is not None:
            self.logprobs = (self.logprobs or []) + logprobs
        self.text += delta
        if self.start is None:
            self.start = self.parser.call_start(self.text)
            if self.start is None:
                self._content(len(self.text) - self.parser.held_back(self.text))
                return
            self._content(self.start)
        self._report(self.parser.scan(self.text))

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """``(content, tool_calls)`` of the whole text (content "" when there is none)."""
        content, calls = self.parser.parse(self.text, final=True)
        if not calls:
            self._content(len(self.text), force=True)
            return self.text, []
        return content or "", self._report(self.parser.scan(self.text))

    def _content(self, upto: int, *, force: bool = False) -> None:
        """Pass on ``text[emitted:upto]`` (blank text only when ``force``: it may be the
        whitespace before a call, which is not content)."""
        if upto <= self.emitted or not (force or self.text[:upto].strip()):
            return
        delta, self.emitted = self.text[self.emitted : upto], upto
        if self.on_text is None:
            return
        if self.logprobs is None:
            self.on_text(delta)
        else:
            entries, self.logprobs = self.logprobs, []
            self.on_text(delta, entries)

    def _report(self, found: list[CallText]) -> list[dict[str, Any]]:
        """Announce the calls whose name is known, pass on new argument text; returns the
        complete calls as OpenAI objects (same ids every time)."""
        objects = []
        for i, call in enumerate(found):
            if i not in self.index:
                if call.closed and call.call is None:
                    continue  # not a call: never announced
                if call.name is None or not (call.streamable or call.closed):
                    break  # later calls wait for this one
                self._announce(i, call)
            if call.streamable and len(call.arguments) > self.sent[i]:
                piece, self.sent[i] = call.arguments[self.sent[i] :], len(call.arguments)
                self._emit({"index": self.index[i], "function": {"arguments": piece}})
            if call.call is not None:
                function = {"name": call.call.name, "arguments": call.call.arguments}
                objects.append(
                    {"id": self.ids[self.index[i]], "type": "function", "function": function}
                )
        return objects

    def _announce(self, i: int, call: CallText) -> None:
        self.index[i] = len(self.ids)
        self.ids.append(new_call_id())
        whole = "" if call.streamable else call.call.arguments
        self.sent[i] = len(whole)
        self._emit(
            {
                "index": self.index[i],
                "id": self.ids[-1],
                "type": "function",
                "function": {"name": call.name, "arguments": whole},
            }
        )

    def _emit(self, entry: dict[str, Any]) -> None:
        if self.on_tool_calls is not None:
            self.on_tool_calls([entry])
