"""``tool_choice: "auto"`` end to end with the official openai client, on a model that calls a
tool on its own: the tiny Qwen2 trained on Qwen 2.5's tool template (tests/tiny/tool_caller.py)
writes ``<tool_call>`` for the weather question and plain text for "Say hello."; the
``hermes`` parser turns its text into ``message.tool_calls`` / ``delta.tool_calls``."""

from __future__ import annotations

import json

import pytest

from tests.tiny.tool_caller import CALL_TEXT, HELLO_TEXT
from tests.tools_support import ASK, HELLO, WEATHER, WEATHER_PARAMS, check_call, streamed_calls

CALLER = "tiny-qwen-caller"
PARIS = {"city": "Paris"}


@pytest.fixture(scope="module")
def client(stack, openai_client):
    stack.start_worker([CALLER])
    return openai_client


def ask(client, messages, **kwargs):
    return client.chat.completions.create(
        model=CALLER, messages=messages, tools=[WEATHER], temperature=0, max_tokens=100, **kwargs
    )


def test_auto_parses_the_models_own_call(client):
    answer = ask(client, ASK, tool_choice="auto")
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert check_call(call, "get_weather", WEATHER_PARAMS) == PARIS
    # the whole call text is the completion: <tool_call> ... </tool_call> and <|im_end|>
    assert answer.usage.completion_tokens > 20


def test_tool_choice_defaults_to_auto_and_streams_the_same_call(client):
    whole = ask(client, ASK).choices[0].message.tool_calls[0]  # no tool_choice: auto
    content, calls, reasons = streamed_calls(ask(client, ASK, stream=True))
    assert content == "" and reasons == ["tool_calls"] and list(calls) == [0]
    streamed = calls[0]
    assert streamed["id"].startswith("call_") and streamed["type"] == "function"
    assert streamed["name"] == "get_weather"
    assert streamed["arguments"] == whole.function.arguments
    assert json.loads(streamed["arguments"]) == PARIS
    # as OpenAI streams a call: the name with arguments "", then the arguments in fragments
    assert streamed["pieces"][0] == "" and len(streamed["pieces"]) > 3
    assert all(streamed["pieces"][1:])


def test_a_forced_call_streams_its_arguments_in_fragments_too(client):
    whole = ask(client, ASK, tool_choice="required").choices[0].message.tool_calls[0]
    named = {"type": "function", "function": {"name": "get_weather"}}
    content, calls, reasons = streamed_calls(ask(client, ASK, tool_choice=named, stream=True))
    assert content == "" and reasons == ["tool_calls"] and list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["pieces"][0] == ""
    assert len(calls[0]["pieces"]) > 3
    assert calls[0]["arguments"] == whole.function.arguments == '{"city": "Paris"}'


def test_a_prompt_without_need_for_tools_is_plain_content(client):
    choice = ask(client, HELLO).choices[0]
    assert choice.message.content == HELLO_TEXT
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    content, calls, reasons = streamed_calls(ask(client, HELLO, stream=True))
    assert content == HELLO_TEXT and calls == {} and reasons == ["stop"]


def test_tool_choice_none_parses_nothing(client):
    """As vLLM: the tools are still in the prompt, the text is not read for calls."""
    choice = ask(client, ASK, tool_choice="none").choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert choice.message.content == CALL_TEXT
    content, calls, reasons = streamed_calls(ask(client, ASK, tool_choice="none", stream=True))
    assert content == CALL_TEXT and calls == {} and reasons == ["stop"]


def test_required_forces_the_call_the_model_makes_itself(client):
    choice = ask(client, ASK, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert check_call(call, "get_weather", WEATHER_PARAMS) == PARIS
