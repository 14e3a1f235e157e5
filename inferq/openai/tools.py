"""Tool calling on the wire: ``tools``, ``tool_choice``, tool messages, checked once for local
models (a 400 naming the field, as OpenAI answers), reduced to what the worker needs."""

from __future__ import annotations

import re
from typing import Any

from inferq.errors import bad_request

FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
TOOL_CHOICES = ("none", "auto", "required")


def normalized_tools(
    tools: list[dict[str, Any]] | None, tool_choice: Any
) -> tuple[list[dict[str, Any]] | None, Any]:
    """``(tools, tool_choice)`` as the worker gets them: each tool ``{"type": "function",
    "function": {name, description?, parameters?}}``; ``tool_choice`` defaults to ``auto``
    with tools (``none`` without)."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise bad_request(
                "tool_choice is only allowed when tools are specified", param="tool_choice"
            )
        return None, None
    out, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise bad_request(
                f"{where}: only function tools are supported ({{'type': 'function', "
                f"'function': {{...}}}})",
                param="tools",
            )
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
            raise bad_request(
                f"{where}.function.name must be 1-64 letters, digits, '_' or '-' (got {name!r})",
                param="tools",
            )
        if name in names:
            raise bad_request(f"{where}: two tools are named '{name}'", param="tools")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise bad_request(
                f"{where}.function.parameters must be a JSON schema object", param="tools"
            )
        kept = {"name": name, "parameters": parameters or {"type": "object", "properties": {}}}
        if isinstance(function.get("description"), str):
            kept["description"] = function["description"]
        out.append({"type": "function", "function": kept})
    if tool_choice is None:
        return out, "auto"
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICES:
            raise bad_request(
                f"tool_choice must be none, auto, required or a function (got {tool_choice!r})",
                param="tool_choice",
            )
        return out, tool_choice
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str) or name not in names:
        raise bad_request(
            f"tool_choice must name one of the tools ({', '.join(sorted(names))})",
            param="tool_choice",
        )
    return out, {"type": "function", "function": {"name": name}}


def tool_history_message(where: str, message: dict[str, Any]) -> dict[str, Any]:
    """A ``tool`` result or an assistant message with ``tool_calls``, reduced to what chat
    templates read."""
    if message.get("role") == "tool":
        content = message.get("content")
        if isinstance(content, list):  # text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not isinstance(message.get("tool_call_id"), str):
            raise bad_request(
                f"{where}: a tool message needs string content and a tool_call_id",
                param="messages",
            )
        return {"role": "tool", "content": content, "tool_call_id": message["tool_call_id"]}
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not isinstance(calls, list):
        raise bad_request(f"{where}: only assistant messages carry tool_calls", param="messages")
    kept = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments", ""), str)
        ):
            raise bad_request(
                f"{where}: each tool call needs function.name and function.arguments (a JSON "
                "string)",
                param="messages",
            )
        kept.append(
            {
                "id": str(call.get("id", "")),
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": function.get("arguments") or "{}",
                },
            }
        )
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return {"role": "assistant", "content": content or "", "tool_calls": kept}


def check_tools_for_model(
    job: Any, *, model: str, tool_parser: str | None, constrained: bool
) -> None:
    """Tools the local model cannot serve: no parser for its calls, or a forced call
    (``required`` / named) without constrained decoding."""
    if not job.tools or job.tool_choice == "none":
        return
    if tool_parser is None:
        raise bad_request(
            f"model '{model}' has no tool_parser in its catalog entry: it cannot call tools "
            "(send tool_choice 'none' or set tool_parser)",
            param="tools",
            code="unsupported_parameter",
        )
    if job.tool_choice != "auto" and not constrained:
        raise bad_request(
            f"model '{model}' cannot force tool calls (no constrained decoding for its "
            "tokenizer): use tool_choice 'auto'",
            param="tool_choice",
            code="unsupported_parameter",
        )
