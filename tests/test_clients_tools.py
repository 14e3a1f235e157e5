"""LangChain's tool calling, unchanged (``langchain-openai`` ``ChatOpenAI.bind_tools``), against
the real SmolLM2: the forced call parses into ``AIMessage.tool_calls``, streamed chunks merge
into the same call, and the tool's result sent back as a ``ToolMessage`` gets an answer."""

from __future__ import annotations

import jsonschema
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.conftest import SMOL


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a given city."""
    return f"It is 22 degrees and sunny in {city}."


@pytest.fixture(scope="module")
def llm(smol_stack):
    return ChatOpenAI(
        model=SMOL,
        base_url=smol_stack.v1,
        api_key="unused",
        temperature=0,
        max_tokens=60,
        max_retries=0,
        timeout=600,
    )


@pytest.fixture(scope="module")
def asked():
    return [HumanMessage("What is the weather like in Paris today?")]


@pytest.fixture(scope="module")
def called(llm, asked):
    return llm.bind_tools([get_weather], tool_choice="required").invoke(asked)


def test_bind_tools_gets_a_call_langchain_can_run(called):
    (call,) = called.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(call["args"], get_weather.args_schema.model_json_schema())
    assert "paris" in call["args"]["city"].lower()
    assert "Paris" in get_weather.invoke(call["args"])  # LangChain runs it as sent
    assert called.response_metadata["finish_reason"] == "tool_calls"


def test_streamed_chunks_merge_into_the_same_call(llm, asked, called):
    chunks = list(llm.bind_tools([get_weather], tool_choice="required").stream(asked))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    (call,) = merged.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"] == called.tool_calls[0]["args"]  # greedy: the same call


def test_tool_message_round_trip_answers(llm, asked, called):
    call = called.tool_calls[0]
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.bind_tools([get_weather]).invoke([*asked, called, result])
    assert answer.content and not answer.tool_calls
    assert answer.usage_metadata["input_tokens"] > called.usage_metadata["input_tokens"] + 10
