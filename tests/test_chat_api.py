"""/v1/chat/completions through the whole stack (API + real worker processes + Redis), driven
by the official openai client: the real SmolLM2 and tiny random Llama / Qwen3-VL models (the
upstream proxies are in test_chat_upstream.py)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tests.chat_support import data_uri, error_of, sse_events
from tests.conftest import SMOL, TINY_CHAT, TINY_VL

TINY = TINY_CHAT
VL = TINY_VL
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]


@pytest.fixture(scope="module")
def client(chat_stack, openai_client):
    return openai_client


@pytest.fixture(scope="module")
def paris(client):
    """SmolLM2's greedy answer to the capital question (non-streamed)."""
    return client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=30
    )


# -- the real SmolLM2 ----------------------------------------------------------------------------


def test_smollm2_knows_the_capital_of_france(paris):
    assert paris.object == "chat.completion"
    assert paris.id.startswith("chatcmpl-")
    assert paris.model == SMOL
    choice = paris.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    usage = paris.usage
    assert usage.prompt_tokens > 5
    assert usage.completion_tokens >= 2
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_chunks_concatenate_to_the_greedy_answer_with_usage(client, paris):
    chunks = list(
        client.chat.completions.create(
            model=SMOL,
            messages=CAPITAL,
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == paris.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage == paris.usage


def test_stop_string_ends_the_text_before_it(client, paris):
    full = paris.choices[0].message.content
    stopped = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=30, stop=["Paris"]
    )
    assert stopped.choices[0].message.content == full[: full.index("Paris")]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=30, stop="Paris", stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == full[: full.index("Paris")]


def test_the_text_ends_before_the_earliest_stop_string_not_the_first_listed(client, paris):
    # " Paris" is one token: it brings " Pa" and "ris" at once; the text must hold neither.
    full = paris.choices[0].message.content
    assert " Paris" in full
    expected = full[: full.index(" Pa")]
    stop = ["ris", " Pa"]
    stopped = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=30, stop=stop
    )
    assert stopped.choices[0].message.content == expected
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=30, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_a_disconnected_stream_is_cancelled_and_frees_the_worker(chat_stack, client, redis_client):
    body = {"model": SMOL, "messages": STORY, "max_tokens": 2000, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{chat_stack.v1}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        job_id = r.headers["x-job-id"]
        contents = 0
        for line in r.iter_lines():
            if line.startswith("data:") and '"content":"' in line and '"role"' not in line:
                contents += 1
                if contents == 3:
                    break
    deadline = time.monotonic() + 10
    while httpx.get(f"{chat_stack.v1}/jobs/{job_id}").json()["status"] != "cancelled":
        assert time.monotonic() < deadline, "the job was not cancelled after the disconnect"
        time.sleep(0.05)

    def late_deltas() -> int:
        entries = redis_client.xrange(f"inferq:job:{job_id}:events")
        kinds = [(f[b"event"], json.loads(f[b"data"])) for _, f in entries]
        cancelled_at = kinds.index((b"status", {"status": "cancelled"}))
        return sum(1 for kind, _ in kinds[cancelled_at:] if kind == b"delta")

    # Deltas decoded before the worker heard the cancel may still land (later on a loaded
    # machine): wait until none has come for 3 s. A worker that went on decoding would pass
    # the bound below long before the 20 s are up.
    late, quiet_since, deadline = late_deltas(), time.monotonic(), time.monotonic() + 20
    while time.monotonic() - quiet_since < 3.0 and time.monotonic() < deadline and late <= 8:
        time.sleep(0.1)
        now = late_deltas()
        if now != late:
            late, quiet_since = now, time.monotonic()
    assert late <= 8, late  # it stopped within a few decoding steps of the cancel
    assert time.monotonic() - quiet_since >= 3.0  # and nothing more came
    started = time.monotonic()
    answer = client.chat.completions.create(
        model=SMOL, messages=CAPITAL, temperature=0, max_tokens=30
    )
    assert "Paris" in answer.choices[0].message.content
    assert time.monotonic() - started < 30


def test_structured_outputs_parse(client):
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string"}, "country": {"type": "string"}},
        "required": ["capital", "country"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": schema, "strict": True},
        },
    )
    assert answer.choices[0].finish_reason == "stop"
    value = json.loads(answer.choices[0].message.content)
    assert set(value) == {"capital", "country"}
    assert all(isinstance(v, str) for v in value.values())
    free = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Describe Paris as a JSON object."}],
        temperature=0,
        max_tokens=80,
        response_format={"type": "json_object"},
    )
    if free.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(free.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a valid prefix of a JSON object
        assert free.choices[0].message.content.startswith("{")


# -- the tiny models: limits, defaults, vision, concurrency --------------------------------------


def test_max_tokens_gives_length_and_model_defaults_apply(client):
    from transformers import AutoTokenizer

    from tests.tiny.chat import tiny_llama_chat_dir

    messages = [{"role": "user", "content": "The quick brown fox"}]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_chat_dir())
    # Sampled, so EOS is banned: a random model may otherwise end early by chance.
    five = client.chat.completions.create(
        model=TINY, messages=messages, max_tokens=5, logit_bias=no_eos(tokenizer)
    )
    assert five.choices[0].finish_reason == "length"
    assert five.usage.completion_tokens == 5
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert five.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    three = client.chat.completions.create(
        model=TINY, messages=messages, max_completion_tokens=3, temperature=0
    )
    assert three.usage.completion_tokens == 3
    default = client.chat.completions.create(model=TINY, messages=messages, temperature=0)
    assert default.usage.completion_tokens == 16  # the entry's defaults.max_tokens
    assert default.choices[0].message.content.startswith(three.choices[0].message.content)


def no_eos(tokenizer) -> dict[str, int]:
    """A ``logit_bias`` that bans the tiny models' end-of-turn tokens."""
    ends = ["<|im_end|>", "<|endoftext|>"]
    return {str(tokenizer.convert_tokens_to_ids(t)): -100 for t in ends}


def test_logit_bias_bans_and_forces_tokens(client):
    from transformers import AutoTokenizer

    from tests.tiny.chat import tiny_llama_chat_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_chat_dir())
    messages = [{"role": "user", "content": "Cats and dogs"}]

    def one_token(**extra) -> str:
        answer = client.chat.completions.create(
            model=TINY, messages=messages, max_tokens=1, temperature=0, **extra
        )
        return answer.choices[0].message.content

    first = one_token()
    (first_id,) = tokenizer.encode(first, add_special_tokens=False)
    assert one_token(logit_bias={str(first_id): -100}) not in ("", first)
    word = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" dog")[-1])
    forced = client.chat.completions.create(
        model=TINY, messages=messages, max_tokens=6, temperature=1.0, logit_bias={str(word): 100}
    )
    assert forced.choices[0].finish_reason == "length"
    assert forced.choices[0].message.content == tokenizer.decode([word] * 6)


def test_concurrent_streams_each_get_their_own_answer_and_one_cancel_ends_only_itself(
    chat_stack, client
):
    prompts = [[{"role": "user", "content": f"Cats and dogs, part {i}."}] for i in range(4)]
    lengths = [24, 40, 12, 32]
    expected = [
        client.chat.completions.create(model=TINY, messages=m, max_tokens=n, temperature=0)
        .choices[0]
        .message.content
        for m, n in zip(prompts, lengths, strict=True)
    ]
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            stream = client.chat.completions.create(
                model=TINY, messages=prompts[i], max_tokens=lengths[i], temperature=0, stream=True
            )
            got[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except BaseException as exc:
            errors.append(exc)

    def abandon() -> None:
        body = {"model": TINY, "messages": prompts[0], "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{chat_stack.v1}/chat/completions", json=body) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 6:
                    break

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=abandon))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert [got[i] for i in range(4)] == expected


def test_vision_request_with_a_data_uri_image(client, stack):
    question = [{"type": "text", "text": "What is in this picture?"}]
    with_image = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri()}}]}
    ]
    with_image[0]["content"] += question
    answer = client.chat.completions.create(
        model=VL, messages=with_image, max_tokens=6, temperature=0
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 6
    text_only = client.chat.completions.create(
        model=VL, messages=[{"role": "user", "content": question}], max_tokens=1
    )
    assert answer.usage.prompt_tokens > text_only.usage.prompt_tokens  # the image's tokens
    not_vision = httpx.post(
        f"{stack.v1}/chat/completions", json={"model": TINY, "messages": with_image}
    )
    assert error_of(not_vision, 400)["param"] == "messages"
    remote = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}
    ]
    disabled = httpx.post(f"{stack.v1}/chat/completions", json={"model": VL, "messages": remote})
    error = error_of(disabled, 400)
    assert error["param"] == "messages"
    assert error["code"] == "invalid_image_url"


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 129}, "n"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"verbosity": "low"}, "verbosity"),
        # tiny-llama-chat's entry names no tool_parser
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "1"}]}, "messages"),  # no tool_call_id
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": 1}}},
            "response_format",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"top_k": -2}, "top_k"),
        ({"logit_bias": {"eos": -100}}, "logit_bias"),
        ({"logit_bias": {"7": 101}}, "logit_bias"),
        ({"logit_bias": {"7": "much"}}, "logit_bias"),
        ({"logit_bias": {"500000": 5}}, "logit_bias"),  # no such token (the worker checks)
    ],
)
def test_bad_chat_requests_are_400s_naming_the_field(chat_stack, extra, param):
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], **extra}
    assert error_of(httpx.post(f"{chat_stack.v1}/chat/completions", json=body), 400)["param"] == (
        param
    )


def test_openai_client_sees_typed_errors_for_chat(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY, messages=CAPITAL, n=0)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no/such-model", messages=CAPITAL)
    with pytest.raises(openai.BadRequestError) as caught:  # embeddings model, chat route
        client.chat.completions.create(model="tiny-bert-cls", messages=CAPITAL)
    assert caught.value.body["param"] == "model"


# -- chat as a job, and job events ------------------------------------------------------------


def test_chat_job_and_its_events_resume_with_last_event_id(chat_stack, client):
    body = {"model": TINY, "messages": CAPITAL, "max_tokens": 12, "temperature": 0}
    job = httpx.post(
        f"{chat_stack.v1}/jobs", json={"endpoint": "/v1/chat/completions", "body": body}
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    url = f"{chat_stack.v1}/jobs/{job_id}/events"
    with httpx.stream("GET", url, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    statuses = [json.loads(e["data"])["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    deltas = [json.loads(e["data"])["content"] for e in events if e["event"] == "delta"]
    done = httpx.get(f"{chat_stack.v1}/jobs/{job_id}").json()
    assert done["status"] == "succeeded"
    content = done["result"]["choices"][0]["message"]["content"]
    assert "".join(deltas) == content
    sync = client.chat.completions.create(**body)
    assert sync.choices[0].message.content == content
    assert done["result"]["usage"] == sync.usage.model_dump(exclude_none=True)
    with httpx.stream("GET", url, headers={"Last-Event-ID": events[4]["id"]}) as r:
        resumed = sse_events(r)
    assert resumed == events[5:]
    with httpx.stream("GET", url, headers={"Last-Event-ID": events[-1]["id"]}) as r:
        assert sse_events(r) == []


def test_embedding_jobs_have_status_events(chat_stack):
    from tests.conftest import MINILM

    job = httpx.post(
        f"{chat_stack.v1}/jobs",
        json={"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": ["a", "b"]}},
    ).json()
    with httpx.stream("GET", f"{chat_stack.v1}/jobs/{job['id']}/events", timeout=60) as r:
        events = sse_events(r)
    assert [json.loads(e["data"])["status"] for e in events] == ["queued", "running", "succeeded"]
    missing = httpx.get(f"{chat_stack.v1}/jobs/job_nope/events")
    assert error_of(missing, 404)["code"] == "job_not_found"
