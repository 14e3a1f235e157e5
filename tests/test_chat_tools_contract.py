"""The tool-calling and structured-output wire contract for local models
(inferq/openai/tools.py, inferq/openai/chat.py): what the worker gets, and the 400s."""

from __future__ import annotations

import pytest

from inferq.errors import ServiceError
from inferq.openai.chat import ChatCompletionRequest, check_chat_for_model, completion_body
from inferq.settings import Settings

TOOL = {"type": "function", "function": {"name": "f", "description": "d", "x-extra": 1}}


def normalized(**body):
    body.setdefault("messages", [{"role": "user", "content": "x"}])
    request = ChatCompletionRequest(model="m", **body)
    return request.normalized(max_stop=4)


def test_tools_default_to_auto_and_parameters_to_an_empty_object():
    job = normalized(tools=[TOOL])
    assert job.tool_choice == "auto" and job.parallel_tool_calls is True
    assert job.tools == [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {"type": "object", "properties": {}},
                "description": "d",
            },
        }
    ]
    named = {"type": "function", "function": {"name": "f"}}
    assert (
        normalized(tools=[TOOL], tool_choice=named, parallel_tool_calls=False).tool_choice == named
    )
    assert normalized(tools=[TOOL], parallel_tool_calls=False).parallel_tool_calls is False


def test_history_keeps_tool_calls_and_results():
    job = normalized(
        messages=[
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "ok"}]},
        ]
    )
    assert job.messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert job.messages[2] == {"role": "tool", "content": "ok", "tool_call_id": "call_1"}


def test_json_schema_without_a_schema_is_accepted():
    job = normalized(response_format={"type": "json_schema", "json_schema": {"name": "any"}})
    assert job.response_format["json_schema"] == {"name": "any"}


@pytest.mark.parametrize(
    ("parser", "structured", "choice", "param"),
    [(None, True, "auto", "tools"), ("hermes", False, "required", "tool_choice")],
)
def test_models_that_cannot_serve_the_tools_are_400s(parser, structured, choice, param):
    job = normalized(tools=[TOOL], tool_choice=choice)
    with pytest.raises(ServiceError) as caught:
        check_chat_for_model(
            job,
            model="m",
            structured_outputs=structured,
            capabilities=[],
            settings=Settings(),
            tool_parser=parser,
        )
    assert caught.value.status == 400 and caught.value.body()["error"]["param"] == param
    # tool_choice none: rendered, never parsed, so no parser is needed
    check_chat_for_model(
        normalized(tools=[TOOL], tool_choice="none"),
        model="m",
        structured_outputs=False,
        capabilities=[],
        settings=Settings(),
    )


def test_a_completion_with_only_calls_has_null_content():
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = completion_body("job_1", "m", 1, "", "tool_calls", 3, 4, tool_calls=[call])
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == [call]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    with_text = completion_body("job_1", "m", 1, "Sure.", "tool_calls", 3, 4, tool_calls=[call])
    assert with_text["choices"][0]["message"]["content"] == "Sure."
