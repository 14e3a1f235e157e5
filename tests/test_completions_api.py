"""``POST /v1/completions`` (legacy text completion) through the whole stack with the official
openai client on the real SmolLM2: raw prompts (no chat template) checked against an
in-process transformers reference, echo, stop, streaming, lists of prompts with ``n``,
logprobs, the job API, the refusals, and forwarding to an upstream proxy."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import SMOL
from tests.smol_reference import greedy, log_softmax_rows, smollm2

FRANCE = "The capital of France is"
STORY = "Once upon a time, in a small village,"


@pytest.fixture(scope="module")
def client(smol_stack, openai_client):
    # several rows of a 135M model on a shared, loaded CPU can take minutes
    return openai_client.with_options(timeout=600)


@pytest.fixture(scope="module")
def france(client):
    return client.completions.create(model=SMOL, prompt=FRANCE, max_tokens=8, temperature=0)


def test_a_raw_prompt_continues_like_the_reference(france):
    assert france.object == "text_completion"
    assert france.id.startswith("cmpl-")
    assert france.model == SMOL
    choice = france.choices[0]
    assert "Paris" in choice.text
    tokenizer, _ = smollm2()
    ids = tokenizer(FRANCE).input_ids  # raw: no chat template
    assert france.usage.prompt_tokens == len(ids)
    reference = greedy(ids, france.usage.completion_tokens, {tokenizer.eos_token_id})
    assert choice.text == tokenizer.decode([t for t, _ in reference])
    assert choice.logprobs is None


def test_max_tokens_defaults_to_16(client):
    answer = client.completions.create(model=SMOL, prompt=STORY, temperature=0)
    assert answer.usage.completion_tokens == 16
    assert answer.choices[0].finish_reason == "length"


def test_echo_returns_the_prompt_then_the_completion(client, france):
    echoed = client.completions.create(
        model=SMOL, prompt=FRANCE, max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == FRANCE + france.choices[0].text


def test_logprobs_with_echo_score_the_prompt_like_the_reference(client):
    answer = client.completions.create(
        model=SMOL, prompt=FRANCE, max_tokens=1, temperature=0, echo=True, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    tokenizer, _ = smollm2()
    ids = tokenizer(FRANCE).input_ids
    assert len(logprobs.tokens) == len(ids) + 1
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    rows = log_softmax_rows(ids)
    for position in range(1, len(ids)):
        expected = float(rows[position - 1][ids[position]])
        assert logprobs.token_logprobs[position] == pytest.approx(expected, abs=2e-3)
    last = logprobs.token_logprobs[-1]
    assert last == pytest.approx(float(rows[-1].max()), abs=2e-3)  # the greedy next token
    assert logprobs.tokens[-1] in logprobs.top_logprobs[-1]
    assert all(len(top) >= 2 for top in logprobs.top_logprobs[1:])
    offsets = logprobs.text_offset
    assert offsets[0] == 0
    assert all(
        b - a == len(t) for a, b, t in zip(offsets, offsets[1:], logprobs.tokens, strict=False)
    )


def test_stop_ends_the_text_before_it(client, france):
    full = france.choices[0].text
    word = full.split()[1] if len(full.split()) > 1 else full.split()[0]
    stopped = client.completions.create(
        model=SMOL, prompt=FRANCE, max_tokens=8, temperature=0, stop=[word]
    )
    assert stopped.choices[0].text == full[: full.index(word)]
    assert stopped.choices[0].finish_reason == "stop"


def test_stream_chunks_concatenate_to_the_whole_text_with_logprobs(client):
    whole = client.completions.create(
        model=SMOL, prompt=STORY, max_tokens=12, temperature=0, logprobs=3
    )
    chunks = list(
        client.completions.create(
            model=SMOL,
            prompt=STORY,
            max_tokens=12,
            temperature=0,
            logprobs=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text

    def streamed(field: str) -> list:
        """One ``logprobs`` list of the stream: the chunks' lists joined in order."""
        return [
            v
            for c in chunks
            if c.choices and c.choices[0].logprobs
            for v in getattr(c.choices[0].logprobs, field)
        ]

    logprobs = whole.choices[0].logprobs
    assert streamed("tokens") == logprobs.tokens
    assert streamed("token_logprobs") == pytest.approx(logprobs.token_logprobs, abs=1e-4)
    assert streamed("text_offset") == logprobs.text_offset
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_list_of_prompts_gives_n_choices_each_in_order(client, france):
    story = client.completions.create(model=SMOL, prompt=STORY, max_tokens=8, temperature=0)
    answer = client.completions.create(
        model=SMOL, prompt=[FRANCE, STORY], max_tokens=8, temperature=0, n=2
    )
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    texts = [c.text for c in answer.choices]
    assert texts == [france.choices[0].text] * 2 + [story.choices[0].text] * 2
    assert answer.usage.prompt_tokens == france.usage.prompt_tokens + story.usage.prompt_tokens
    assert answer.usage.completion_tokens == 2 * (
        france.usage.completion_tokens + story.usage.completion_tokens
    )
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(
        model=SMOL, prompt=[FRANCE, STORY], max_tokens=8, temperature=0, n=2, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[i] for i in range(4)] == texts


def test_seeded_sampling_differs_per_choice_and_repeats(client):
    def sample():
        answer = client.completions.create(
            model=SMOL, prompt=STORY, max_tokens=8, temperature=1.0, n=3, seed=11
        )
        return [c.text for c in answer.choices]

    first = sample()
    assert len(set(first)) >= 2
    assert sample() == first


def test_refusals_name_the_parameter(client):
    cases = [
        ({"prompt": FRANCE, "suffix": " and more"}, "suffix"),
        ({"prompt": FRANCE, "best_of": 3}, "best_of"),
        ({"prompt": [[1, 2, 3]]}, "prompt"),
        ({"prompt": FRANCE, "logprobs": 6}, "logprobs"),
        ({"prompt": FRANCE, "extra_body": {"frobnicate": True}}, "frobnicate"),
        ({"prompt": FRANCE, "echo": True, "stream": True}, "echo"),
    ]
    for arguments, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            result = client.completions.create(model=SMOL, max_tokens=2, **arguments)
            if arguments.get("stream"):
                list(result)
        assert err.value.body["param"] == param, arguments
    same = client.completions.create(model=SMOL, prompt=FRANCE, max_tokens=2, best_of=1, n=1)
    assert len(same.choices) == 1


def test_the_job_api_takes_completions(smol_stack, france):
    body = {"model": SMOL, "prompt": FRANCE, "max_tokens": 8, "temperature": 0}
    response = httpx.post(
        f"{smol_stack.v1}/jobs", json={"endpoint": "/v1/completions", "body": body}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while (job := httpx.get(f"{smol_stack.v1}/jobs/{job_id}").json())["status"] != "succeeded":
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["result"]["choices"][0]["text"] == france.choices[0].text


def test_a_batch_file_of_completions(client, france):
    def line(custom_id: str, **body) -> bytes:
        body = {"model": SMOL, "prompt": FRANCE, "max_tokens": 8, "temperature": 0, **body}
        entry = {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}
        return json.dumps(entry).encode() + b"\n"

    data = line("plain") + line("two", n=2) + line("bad", suffix="!")
    upload = client.files.create(file=("completions.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 600
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    lines = client.files.content(batch.output_file_id).text.splitlines()
    output = {o["custom_id"]: o["response"]["body"] for o in map(json.loads, lines)}
    assert output["plain"]["choices"][0]["text"] == france.choices[0].text
    assert [c["text"] for c in output["two"]["choices"]] == [france.choices[0].text] * 2
    errors = client.files.content(batch.error_file_id).text.splitlines()
    assert json.loads(errors[0])["response"]["body"]["error"]["param"] == "suffix"


def test_an_upstream_proxy_forwards_completions(chat_stack, upstream, client):
    answer = client.completions.create(model="proxy-chat", prompt="hi", max_tokens=3)
    assert answer.choices[0].text == "echo:upstream/chat-model"
    assert upstream.bodies[-1]["prompt"] == "hi"
    with pytest.raises(openai.BadRequestError) as err:
        list(client.completions.create(model="proxy-chat", prompt="hi", stream=True))
    assert err.value.body["param"] == "stream"
