"""Tool calling through the whole stack with the official openai client: the real SmolLM2
(``smollm2`` parser, its template ignores tools: the parser's prompt) and a tiny random Qwen2
with Qwen 2.5's tool template (``hermes``); calls forced by ``tool_choice``, streamed and not,
tool results in the history, batch lines and ``/v1/jobs``."""

from __future__ import annotations

import io
import json
import time

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from inferq import protocol as p
from tests.chat_support import error_of
from tests.conftest import SMOL
from tests.tools_support import ASK, WEATHER, WEATHER_PARAMS, check_call, streamed_calls

QWEN = "tiny-qwen-tools"
FLAGS_PARAMS = {  # short forced arguments on random weights
    "type": "object",
    "properties": {"on": {"type": "boolean"}, "level": {"enum": ["low", "high"]}},
    "required": ["on", "level"],
    "additionalProperties": False,
}
FLAGS = {"type": "function", "function": {"name": "set_flags", "parameters": FLAGS_PARAMS}}
NAMED_FLAGS = {"type": "function", "function": {"name": "set_flags"}}


@pytest.fixture(scope="module")
def client(chat_stack, openai_client):
    chat_stack.start_worker([QWEN])
    return openai_client


# -- the real SmolLM2 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_call(client):
    return client.chat.completions.create(
        model=SMOL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )


def test_smollm2_required_tool_call_parses_and_validates(smol_call):
    choice = smol_call.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls[:1]
    arguments = check_call(call, "get_weather", WEATHER_PARAMS)
    assert "paris" in arguments["city"].lower()  # the model read the question
    assert smol_call.usage.completion_tokens > 5


def test_smollm2_named_tool_call_streams_as_delta_tool_calls(client):
    chunks = list(
        client.chat.completions.create(
            model=SMOL,
            messages=ASK,
            tools=[WEATHER, FLAGS],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=60,
            stream=True,
        )
    )
    content, calls, reasons = streamed_calls(chunks)
    assert content == "" and reasons == ["tool_calls"] and list(calls) == [0]
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER_PARAMS)


def test_tool_result_round_trip_answers(client, smol_call):
    """What LangChain does: run the tool, send its result as role tool, get the answer."""
    call = smol_call.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        smol_call.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "It is 22 degrees and sunny."},
    ]
    assert messages[1]["tool_calls"][0]["id"] == call.id
    answer = client.chat.completions.create(
        model=SMOL, messages=messages, tools=[WEATHER], temperature=0, max_tokens=40
    )
    choice = answer.choices[0]
    assert choice.message.content and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    # the history was rendered: the tool result is in the prompt
    assert answer.usage.prompt_tokens > smol_call.usage.prompt_tokens + 10


class Place(BaseModel):
    city: str = Field(max_length=40)
    country: str = Field(max_length=40)


class WeatherAt(BaseModel):
    """Get the current weather at a place"""

    place: Place


def test_forced_calls_of_a_pydantic_tool_with_nested_models(client):
    """openai.pydantic_function_tool (as LangChain's tools) writes a nested model as a $ref
    into the parameters' own $defs: the grammar of a forced call must still resolve it."""
    tool = openai.pydantic_function_tool(WeatherAt)
    schema = tool["function"]["parameters"]
    assert schema["properties"]["place"] == {"$ref": "#/$defs/Place"}
    named = {"type": "function", "function": {"name": "WeatherAt"}}
    for tools, tool_choice in (([tool], named), ([WEATHER, tool], "required")):
        answer = client.chat.completions.create(
            model=SMOL,
            messages=ASK,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=60,
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        if call.function.name == "WeatherAt" or tool_choice is named:
            arguments = check_call(call, "WeatherAt", schema)
            assert arguments["place"]["city"]  # an object, as $defs/Place has it
        else:
            check_call(call, "get_weather", WEATHER_PARAMS)


# -- the tiny Qwen2 with Qwen 2.5's template -----------------------------------------------------


def test_named_call_on_qwen_template_non_streamed_and_streamed(client):
    kwargs = dict(
        model=QWEN,
        messages=ASK,
        tools=[WEATHER, FLAGS],
        tool_choice=NAMED_FLAGS,
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,  # the tiny BPE spends a token on 1-2 characters
    )
    whole = client.chat.completions.create(**kwargs)
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.content is None
    (call,) = whole.choices[0].message.tool_calls
    arguments = check_call(call, "set_flags", FLAGS_PARAMS)
    content, calls, reasons = streamed_calls(client.chat.completions.create(**kwargs, stream=True))
    assert content == "" and reasons == ["tool_calls"]
    assert calls[0]["name"] == "set_flags"
    assert json.loads(calls[0]["arguments"]) == arguments  # greedy: the same call


def test_a_named_function_is_called_exactly_once_with_parallel_calls_allowed(client):
    """vLLM and OpenAI: a named tool_choice gives one call of that function; parallel calls
    (allowed by default) are for tool_choice auto and required. Before, the grammar let the
    random model write block after block of set_flags until max_tokens."""
    kwargs = dict(
        model=QWEN,
        messages=ASK,
        tools=[WEATHER, FLAGS],
        tool_choice=NAMED_FLAGS,
        temperature=0,
        max_tokens=200,
    )
    for parallel in ({}, {"parallel_tool_calls": True}):
        whole = client.chat.completions.create(**kwargs, **parallel)
        choice = whole.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        arguments = check_call(call, "set_flags", FLAGS_PARAMS)
        content, calls, reasons = streamed_calls(
            client.chat.completions.create(**kwargs, **parallel, stream=True)
        )
        assert content == "" and reasons == ["tool_calls"] and list(calls) == [0]
        assert calls[0]["name"] == "set_flags"
        assert json.loads(calls[0]["arguments"]) == arguments


def test_auto_without_a_call_is_plain_content(client):
    answer = client.chat.completions.create(
        model=QWEN, messages=ASK, tools=[FLAGS], temperature=0, max_tokens=8
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "length"
    plain = client.chat.completions.create(
        model=QWEN, messages=ASK, tools=[FLAGS], tool_choice="none", temperature=0, max_tokens=8
    )
    assert plain.choices[0].message.content == choice.message.content
    without = client.chat.completions.create(model=QWEN, messages=ASK, temperature=0, max_tokens=8)
    # the tools are in the prompt (the template's system turn), also with tool_choice none
    assert plain.usage.prompt_tokens > without.usage.prompt_tokens + 20


def test_history_with_tool_calls_and_results_renders(client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "22 degrees"},
    ]
    answer = client.chat.completions.create(
        model=QWEN, messages=history, tools=[WEATHER], temperature=0, max_tokens=4
    )
    shorter = client.chat.completions.create(
        model=QWEN, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=4
    )
    assert answer.choices[0].message.content
    # the call and the result add their tokens to the prompt
    assert answer.usage.prompt_tokens > shorter.usage.prompt_tokens + 15


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        # a malformed named choice (was a 500): the function as a bare name, a name not a string
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": "get_weather"}},
            "tool_choice",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": ["x"]}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}, "tools"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "messages"),
    ],
)
def test_bad_tool_requests_are_400s(client, chat_stack, extra, param):  # client: QWEN's worker
    body = {"model": QWEN, "messages": ASK, **extra}
    response = httpx.post(f"{chat_stack.v1}/chat/completions", json=body)
    assert error_of(response, 400)["param"] == param


def test_tools_in_a_job_and_a_batch_line(client, chat_stack):
    body = {
        "model": QWEN,
        "messages": ASK,
        "tools": [FLAGS],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 200,
    }
    job = httpx.post(
        f"{chat_stack.v1}/jobs", json={"endpoint": "/v1/chat/completions", "body": body}
    )
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 120
    while (record := httpx.get(f"{chat_stack.v1}/jobs/{job.json()['id']}").json())[
        "status"
    ] not in p.TERMINAL_STATUSES:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert record["status"] == "succeeded", record
    from_job = record["result"]["choices"][0]
    assert from_job["finish_reason"] == "tool_calls"
    jsonschema.validate(
        json.loads(from_job["message"]["tool_calls"][0]["function"]["arguments"]), FLAGS_PARAMS
    )

    line = {"custom_id": "t", "method": "POST", "url": "/v1/chat/completions", "body": body}
    upload = client.files.create(
        file=("tools.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 180
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert batch.status == "completed" and batch.request_counts.completed == 1, batch
    (out,) = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    message = out["response"]["body"]["choices"][0]["message"]
    assert message["content"] is None
    # greedy, same prompt: the batch line makes the job's call
    assert message["tool_calls"][0]["function"] == from_job["message"]["tool_calls"][0]["function"]
