"""Tool calling in the chat handlers: the parsers and their streaming state machine on known
texts, the prompts, and calls forced by constrained decoding on the tiny Qwen2 model."""

from __future__ import annotations

import json

import jsonschema
import pytest

from handlers.base import InvalidInput
from handlers.chat import TextChatModel
from handlers.chat.tool_parsers import TOOL_PARSERS, ParsedCall
from handlers.chat.tools import ToolCallStream, tool_prompt
from inferq.catalog import ModelEntry
from tests.tiny.chat import tiny_llama_chat_dir, tiny_qwen2_tools_dir

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome", "Oslo"]},
                "celsius": {"type": "boolean"},
            },
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def assembled(entries: list[dict]) -> list[dict]:
    """``delta.tool_calls`` entries merged by index, as clients assemble them."""
    calls: dict[int, dict] = {}
    for entry in entries:
        call = calls.setdefault(entry["index"], {"index": entry["index"], "function": {}})
        for key in ("id", "type"):
            if key in entry:
                assert key not in call  # id and type come once, in the first entry
                call[key] = entry[key]
        function = call["function"]
        for key, value in entry["function"].items():
            function[key] = function.get(key, "") + value
    return [calls[i] for i in sorted(calls)]


def stream(parser: str, pieces: list[str], entries: list | None = None):
    """Feed ``pieces`` as decoded deltas; returns (content deltas, the calls assembled from
    their deltas, final); ``entries`` gets the raw delta entries."""
    texts, calls = [], [] if entries is None else entries
    s = ToolCallStream(TOOL_PARSERS[parser], texts.append, calls.extend)
    for piece in pieces:
        s.feed(piece)
    final = s.finish()
    return texts, assembled(calls), final


def chars(text: str) -> list[str]:
    return list(text)


# -- parsers and the streaming state machine, on known texts ------------------------------------

HERMES_TWO = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "celsius": true}}\n'
    "</tool_call>\n<tool_call>\n"
    '{"name": "add", "arguments": {"a": true, "b": false}}\n</tool_call>'
)


@pytest.mark.parametrize(
    "split", [chars, lambda t: [t], lambda t: [t[i : i + 7] for i in range(0, len(t), 7)]]
)
def test_hermes_stream_gives_content_then_each_call_once(split):
    texts, calls, (content, final) = stream("hermes", split(HERMES_TWO))
    assert "".join(texts) == "Let me check.\n" == content
    assert [c["index"] for c in calls] == [0, 1]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "add"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "celsius": True}
    assert [c["id"] for c in calls] == [c["id"] for c in final]  # same ids streamed and final
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in final)
    assert len({c["id"] for c in final}) == 2


def test_hermes_first_call_is_reported_as_soon_as_it_closes():
    _, calls, _ = stream("hermes", [HERMES_TWO[: HERMES_TWO.index("</tool_call>") + 12]])
    assert [c["function"]["name"] for c in calls] == ["get_weather"]


def test_arguments_stream_as_fragments_after_a_first_entry_with_the_name():
    """OpenAI's shape: {index, id, type, function: {name, arguments: ""}}, then
    {index, function: {arguments: fragment}} entries; the fragments are the final text."""
    entries = []
    _, calls, (_, final) = stream("hermes", chars(HERMES_TWO), entries)
    first = [e for e in entries if e["index"] == 0]
    assert first[0] == {
        "index": 0,
        "id": final[0]["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(
        set(e) == {"index", "function"} and set(e["function"]) == {"arguments"} for e in first[1:]
    )
    assert len(first) > 10  # one per character fed here
    assert "".join(e["function"]["arguments"] for e in first) == final[0]["function"]["arguments"]
    assert final[0]["function"]["arguments"] == '{"city": "Paris", "celsius": true}'
    assert [c["function"] for c in calls] == [c["function"] for c in final]
    # the name is not announced before it is complete
    partial = []
    s = ToolCallStream(TOOL_PARSERS["hermes"], None, partial.extend)
    s.feed('<tool_call>\n{"name": "get_wea')
    assert partial == []
    s.feed('ther", "arguments": ')
    assert partial == []  # an object or a string: the next character tells
    s.feed('{"ci')
    assert [e["function"] for e in partial] == [
        {"name": "get_weather", "arguments": ""},
        {"arguments": '{"ci'},
    ]


def test_arguments_written_as_a_string_come_whole_once_the_call_closes():
    text = '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": true}"}\n</tool_call>'
    entries = []
    _, _, (_, final) = stream("hermes", chars(text), entries)
    assert len(entries) == 1 and entries[0]["function"] == {
        "name": "add",
        "arguments": '{"a": true}',
    }
    assert final[0]["function"] == entries[0]["function"]


def test_a_call_cut_by_max_tokens_is_left_out_of_the_final_message():
    text = HERMES_TWO + '\n<tool_call>\n{"name": "add", "arguments": {"a": tr'
    _, calls, (_, final) = stream("hermes", chars(text))
    assert [c["function"]["name"] for c in calls] == ["get_weather", "add", "add"]
    assert [c["function"]["name"] for c in final] == ["get_weather", "add"]


def test_a_partial_marker_is_held_back_and_released_when_it_is_not_a_call():
    texts = []
    s = ToolCallStream(TOOL_PARSERS["hermes"], texts.append)
    s.feed("a < b and <tool")
    assert "".join(texts) == "a < b and "  # "<tool" could start a call
    s.feed("s> are fine")
    assert "".join(texts) == "a < b and <tools> are fine"
    assert s.finish() == ("a < b and <tools> are fine", [])


def test_text_without_calls_is_content_and_a_broken_call_stays_text():
    texts, calls, final = stream("hermes", chars("Paris is sunny."))
    assert "".join(texts) == "Paris is sunny." and calls == [] and final == ("Paris is sunny.", [])
    broken = "<tool_call>\n{not json}\n</tool_call>"
    texts, calls, final = stream("hermes", chars(broken))
    assert "".join(texts) == broken and calls == [] and final == (broken, [])


def test_only_calls_have_no_content_and_blank_text_before_them_is_not_content():
    text = '\n\n<tool_call>\n{"name": "add", "arguments": {"a": true, "b": true}}\n</tool_call>'
    texts, _, (content, final) = stream("hermes", chars(text))
    assert texts == [] and content == "" and [c["function"]["name"] for c in final] == ["add"]


def test_an_unclosed_last_call_counts_when_it_is_complete_json():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": true, "b": true}}'
    _, calls, (_, final) = stream("hermes", chars(text))
    assert [c["function"]["name"] for c in final] == ["add"] and calls[0]["id"] == final[0]["id"]


def test_smollm2_list_of_calls():
    text = (
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Rome", "celsius": false}}, '
        '{"name": "add", "arguments": {"a": false, "b": false}}]</tool_call>'
    )
    texts, calls, (content, final) = stream("smollm2", chars(text))
    assert texts == [] and content == ""
    assert [c["function"]["name"] for c in final] == ["get_weather", "add"]
    assert [c["index"] for c in calls] == [0, 1]


def test_llama3_json_calls_and_plain_answers():
    text = '{"name": "get_weather", "parameters": {"city": "Oslo", "celsius": true}}'
    texts, calls, (content, final) = stream("llama3_json", chars(text))
    assert texts == [] and content == ""
    assert final[0]["function"] == {
        "name": "get_weather",
        "arguments": json.dumps({"city": "Oslo", "celsius": True}),
    }
    two = text + '; {"name": "add", "parameters": {"a": true, "b": true}}'
    assert [c["function"]["name"] for c in stream("llama3_json", [two])[2][1]] == [
        "get_weather",
        "add",
    ]
    texts, calls, final = stream("llama3_json", chars("  It is sunny in Oslo."))
    assert "".join(texts) == "  It is sunny in Oslo." and final == ("  It is sunny in Oslo.", [])
    texts, calls, final = stream("llama3_json", chars('{"no": "call"}'))
    assert "".join(texts) == '{"no": "call"}' and calls == [] and final[1] == []


def test_catalog_tool_parser_names_are_the_parsers():
    literal = ModelEntry.model_fields["tool_parser"].annotation.__args__[0]
    assert set(literal.__args__) == set(TOOL_PARSERS)
    with pytest.raises(ValueError):
        ModelEntry(hf_repo_id="x/y", handler="handlers.chat.TextChatModel", tool_parser="nope")


# -- prompts ---------------------------------------------------------------------------------

HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"},
]


def test_templates_without_tools_get_the_parsers_text():
    messages, tools = tool_prompt(HISTORY, [WEATHER], TOOL_PARSERS["smollm2"], "{{ messages }}")
    assert tools is None
    assert messages[0]["role"] == "system" and "get_weather" in messages[0]["content"]
    assert messages[2] == {
        "role": "assistant",
        "content": '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
        "</tool_call>",
    }
    assert messages[3]["role"] == "user"
    assert messages[3]["content"] == "<tool_response>\n22 degrees and sunny\n</tool_response>"


def test_templates_with_tools_get_them_with_arguments_as_objects():
    messages, tools = tool_prompt(
        HISTORY, [WEATHER], TOOL_PARSERS["hermes"], "{{ tools }} {{ message.tool_calls }}"
    )
    assert tools == [WEATHER] and messages[2]["role"] == "tool"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


@pytest.fixture(scope="module")
def qwen() -> TextChatModel:
    return TextChatModel(str(tiny_qwen2_tools_dir()), "cpu", name="tiny-qwen", tool_parser="hermes")


def test_structured_outputs_are_decided_at_load(qwen):
    assert qwen.supports_structured_outputs is True and qwen.structured_outputs is not None
    off = TextChatModel(str(tiny_llama_chat_dir()), "cpu", supports_structured_outputs=False)
    assert off.structured_outputs is None


def test_the_models_own_template_renders_tools_and_history(qwen):
    prompt = qwen.tokenizer.decode(
        qwen._encode(
            *tool_prompt(HISTORY, [WEATHER], qwen.tool_parser, qwen.tokenizer.chat_template)[:1],
            add_generation_prompt=True,
            tools=[WEATHER],
        ).input_ids
    )
    assert "<tools>\n" + json.dumps(WEATHER) in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in (
        prompt
    )
    assert "<tool_response>\n22 degrees and sunny\n</tool_response>" in prompt


# -- calls forced by constrained decoding -----------------------------------------------------


def forced(handler, choice, **kwargs):
    texts, calls = [], []
    generation = handler.generate(
        ASK,
        max_new_tokens=120,
        temperature=0.0,
        tools=TOOLS,
        tool_choice=choice,
        on_text=texts.append,
        on_tool_calls=calls.extend,
        **kwargs,
    )
    return generation, texts, calls


def schema_of(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forced_calls_parse_and_validate_on_random_weights(qwen, choice):
    generation, texts, calls = forced(qwen, choice, parallel_tool_calls=False)
    assert generation.finish_reason == "tool_calls" and generation.text == "" and texts == []
    (call,) = generation.tool_calls
    if isinstance(choice, dict):
        assert call["function"]["name"] == "add"
    jsonschema.validate(
        json.loads(call["function"]["arguments"]), schema_of(call["function"]["name"])
    )
    (streamed,) = assembled(calls)  # announced once, with the final id, then fragments
    assert streamed["id"] == call["id"] and streamed["function"] == call["function"]
    assert calls[0]["function"]["arguments"] == "" and len(calls) > 2


def test_tool_choice_none_renders_but_never_parses(qwen):
    generation = qwen.generate(
        ASK, max_new_tokens=8, temperature=0.0, tools=TOOLS, tool_choice="none"
    )
    assert generation.tool_calls is None and generation.finish_reason == "length"


def test_a_model_without_a_parser_refuses_tools():
    plain = TextChatModel(str(tiny_llama_chat_dir()), "cpu")
    with pytest.raises(InvalidInput) as caught:
        plain.generate(ASK, max_new_tokens=4, tools=TOOLS, tool_choice="auto")
    assert caught.value.param == "tools"


def test_format_calls_round_trips_through_the_parser():
    calls = [ParsedCall("add", '{"a": true}'), ParsedCall("get_weather", '{"city": "Oslo"}')]
    for parser in TOOL_PARSERS.values():
        _, parsed = parser.parse(parser.format_calls(calls))
        assert parsed == calls, parser.name


def test_json_schema_without_a_schema_is_any_json_object(qwen):
    generation = qwen.generate(
        ASK,
        max_new_tokens=1,
        temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "any"}},
    )
    assert generation.text == "{"  # the grammar allows only an object's opening


def test_forced_arguments_are_only_the_declared_ones():
    from handlers.chat.tool_parsers import call_schema

    loose = {"type": "object", "properties": {"city": {"type": "string"}}}
    schema = call_schema([{"name": "f", "parameters": loose}], "arguments")
    assert schema["properties"]["arguments"]["additionalProperties"] is False
    open_ended = {**loose, "additionalProperties": True}
    schema = call_schema([{"name": "f", "parameters": open_ended}], "arguments")
    assert schema["properties"]["arguments"]["additionalProperties"] is True
