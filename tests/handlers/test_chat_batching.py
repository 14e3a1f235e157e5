"""Continuous batching (ChatBatch) and structured outputs, on the tiny random chat models."""

from __future__ import annotations

import json
import threading

import pytest

from handlers.base import Cancelled, InvalidInput
from handlers.chat import ChatRequest, QwenVLChat, TextChatModel
from tests.tiny.chat import tiny_llama_chat_dir, tiny_qwen3_vl_dir

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. Cats and dogs?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Paris?"}],
    [{"role": "user", "content": "What is the weather like today in the city of Berlin?"}],
]


@pytest.fixture(scope="module")
def llama() -> TextChatModel:
    return TextChatModel(
        str(tiny_llama_chat_dir()), "cpu", name="tiny-llama", supports_structured_outputs=True
    )


def solo(handler, messages, n, **kwargs):
    return handler.generate(messages, max_new_tokens=n, temperature=0.0, top_p=1.0, **kwargs)


def run_staggered(handler, requests, joins):
    """Requests join a running batch at the given step numbers; returns results by index."""
    batch = handler.new_batch()
    results, step = {}, 0
    pending = sorted(zip(joins, range(len(requests)), strict=True))
    while pending or len(batch):
        while pending and pending[0][0] <= step:
            _, index = pending.pop(0)
            assert batch.joinable
            results.update(batch.add([(index, requests[index])]))
        if len(batch):
            results.update(batch.step())
        step += 1
    return results


def test_requests_joining_a_running_batch_match_their_solo_greedy_runs(llama):
    lengths = [12, 30, 7, 20]
    requests = [
        ChatRequest(messages=m, max_new_tokens=n) for m, n in zip(PROMPTS, lengths, strict=True)
    ]
    results = run_staggered(llama, requests, joins=[0, 3, 5, 5])
    for i, (messages, n) in enumerate(zip(PROMPTS, lengths, strict=True)):
        expected = solo(llama, messages, n)
        assert results[i].text == expected.text, i
        assert results[i].completion_tokens == n
        assert results[i].finish_reason == "length"


def test_cancelling_one_running_request_leaves_the_others(llama):
    cancel = threading.Event()
    deltas: list[str] = []

    def on_text(delta):
        deltas.append(delta)
        if len(deltas) == 3:
            cancel.set()

    requests = [
        ChatRequest(messages=PROMPTS[0], max_new_tokens=20, cancel_event=cancel, on_text=on_text),
        ChatRequest(messages=PROMPTS[1], max_new_tokens=20),
    ]
    results = run_staggered(llama, requests, joins=[0, 2])
    assert isinstance(results[0], Cancelled)
    assert len(deltas) <= 4  # stopped within one step of the signal
    assert results[1].text == solo(llama, PROMPTS[1], 20).text


def test_trimmed_padding_does_not_change_outputs(llama):
    # A long prompt joins first and ends early; the short ones go on over a trimmed cache.
    requests = [
        ChatRequest(messages=PROMPTS[3], max_new_tokens=2),
        ChatRequest(messages=PROMPTS[0], max_new_tokens=16),
        ChatRequest(messages=PROMPTS[2], max_new_tokens=16),
    ]
    results = run_staggered(llama, requests, joins=[0, 0, 1])
    assert results[1].text == solo(llama, PROMPTS[0], 16).text
    assert results[2].text == solo(llama, PROMPTS[2], 16).text


def test_vl_requests_with_images_join_a_running_text_batch():
    from tests.handlers.chat_inputs import image_message, png_data_uri

    vl = QwenVLChat(str(tiny_qwen3_vl_dir()), "cpu", name="tiny-qwen3-vl")
    with_image = image_message(png_data_uri())
    requests = [
        ChatRequest(messages=PROMPTS[1], max_new_tokens=10),
        ChatRequest(messages=with_image, max_new_tokens=10),
    ]
    results = run_staggered(vl, requests, joins=[0, 4])
    assert results[0].text == solo(vl, PROMPTS[1], 10).text
    assert results[1].text == solo(vl, with_image, 10).text


def test_json_schema_output_parses_and_validates(llama):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 9}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    result = solo(
        llama,
        PROMPTS[0],
        40,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    )
    assert result.finish_reason == "stop"
    value = json.loads(result.text)
    assert set(value) == {"ok", "n"}
    assert isinstance(value["ok"], bool)
    assert isinstance(value["n"], int)
    assert value["n"] <= 9


def test_bad_response_formats_are_invalid_input(llama):
    with pytest.raises(InvalidInput) as caught:
        solo(llama, PROMPTS[0], 4, response_format={"type": "yaml"})
    assert caught.value.param == "response_format"
    plain = TextChatModel(
        str(tiny_llama_chat_dir()), "cpu", name="plain", supports_structured_outputs=False
    )
    with pytest.raises(InvalidInput) as caught:
        solo(plain, PROMPTS[0], 4, response_format={"type": "json_object"})
    assert caught.value.param == "response_format"
