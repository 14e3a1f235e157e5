"""Tool-calling test helpers shared by the client tests: the weather tool, the question that
asks for it, and the checks of a call (whole or assembled from streamed ``delta.tool_calls``).

The tiny tool-calling Qwen (tests/tiny/chat.py) is trained on prompts rendered with exactly
these tools and questions: change them and its cache entry (named by their digest) is rebuilt.
"""

from __future__ import annotations

import json

import jsonschema

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given city",
        "parameters": WEATHER_PARAMS,
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
HELLO = [{"role": "user", "content": "Say hello."}]


def check_call(call, name: str, schema: dict) -> dict:
    """An openai-client tool call: its id, type and name, and its arguments against ``schema``."""
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) > 10
    assert call.function.name == name
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


def streamed_calls(chunks) -> tuple[str, dict[int, dict], list[str]]:
    """Content, the calls assembled from delta.tool_calls by index (``pieces``: the
    arguments of each delta, OpenAI's first one being ""), and finish reasons."""
    content, calls, reasons = "", {}, []
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for piece in choice.delta.tool_calls or []:
            call = calls.setdefault(
                piece.index, {"id": None, "type": None, "name": "", "arguments": "", "pieces": []}
            )
            call["id"] = piece.id or call["id"]
            call["type"] = piece.type or call["type"]
            if piece.function:
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
                call["pieces"].append(piece.function.arguments)
        if choice.finish_reason:
            reasons.append(choice.finish_reason)
    return content, calls, reasons
