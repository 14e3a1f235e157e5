"""A request past the model's context through the whole stack, with the official openai client:
``max_tokens`` (or ``max_completion_tokens``) plus the prompt over the context is a 400
``context_length_exceeded`` in vLLM's words, on the sync route, streamed (before the stream
starts), in a job and in a batch line, and on ``/v1/completions``; a prompt alone over it too;
without ``max_tokens`` the answer runs up to the context. The tiny random Llama (context 512
tokens) never ends by itself: a generation runs to its limit."""

from __future__ import annotations

import json
import re
import time

import httpx
import openai
import pytest

from inferq import protocol as p
from tests.batches_support import submit_batch, wait_batch
from tests.conftest import TINY_CHAT

CONTEXT = 512  # tests/tiny/chat.py: the tiny Llama's max_position_embeddings
HI = [{"role": "user", "content": "hi"}]
# the tiny tokenizer's special tokens (<|im_end|> is EOS): their logit is 0, which can win after
# a long prompt; banned, the answer surely runs to its limit
NO_SPECIALS = {"0": -100, "1": -100, "2": -100}
OVER = re.compile(
    r"This model's maximum context length is (\d+) tokens\. However, you requested (\d+) "
    r"tokens \((\d+) in the (messages|prompt), (\d+) in the completion\)\. Please reduce the "
    r"length of the (messages|prompt) or completion\."
)


@pytest.fixture(scope="module")
def client(chat_stack, openai_client):
    return openai_client


@pytest.fixture(scope="module")
def prompt_tokens(client) -> int:
    """What the short chat prompt takes of the context."""
    answer = client.chat.completions.create(model=TINY_CHAT, messages=HI, max_tokens=1)
    return answer.usage.prompt_tokens


def check_over(error: dict, prompt: int, completion: int, what: str = "messages") -> None:
    assert error["code"] == "context_length_exceeded", error
    assert error["type"] == "invalid_request_error" and error["param"] == "max_tokens"
    match = OVER.fullmatch(error["message"])
    assert match, error["message"]
    assert match.groups() == (
        str(CONTEXT),
        str(prompt + completion),
        str(prompt),
        what,
        str(completion),
        what,
    )


def test_max_tokens_past_the_context_is_a_400_not_a_shorter_answer(client, prompt_tokens):
    room = CONTEXT - prompt_tokens
    fits = client.chat.completions.create(
        model=TINY_CHAT, messages=HI, max_tokens=room, logit_bias=NO_SPECIALS
    )  # exactly the context: allowed, and all of it used
    assert fits.choices[0].finish_reason == "length"
    assert fits.usage.completion_tokens == room
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=TINY_CHAT, messages=HI, **{field: room + 1})
        assert caught.value.status_code == 400
        check_over(caught.value.body, prompt_tokens, room + 1)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY_CHAT, messages=HI, max_tokens=100_000, n=2)
    check_over(caught.value.body, prompt_tokens, 100_000)


def test_a_streamed_request_past_the_context_is_a_400_before_the_stream(client, prompt_tokens):
    room = CONTEXT - prompt_tokens
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=TINY_CHAT, messages=HI, max_tokens=room + 7, stream=True
        )
    check_over(caught.value.body, prompt_tokens, room + 7)
    raw = client.completions.create(model=TINY_CHAT, prompt="hi", max_tokens=1).usage
    for stream in (False, True):  # legacy completions: the raw prompt
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(
                model=TINY_CHAT, prompt="hi", max_tokens=CONTEXT, stream=stream
            )
        check_over(caught.value.body, raw.prompt_tokens, CONTEXT, "prompt")
    chunks = list(  # what fits still streams, to the last token the context holds
        client.chat.completions.create(
            model=TINY_CHAT,
            messages=HI,
            max_tokens=room,
            logit_bias=NO_SPECIALS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == room


def test_without_max_tokens_the_answer_runs_up_to_the_context(client, prompt_tokens, chat_stack):
    """The entry's default (16 here) is cut to what the context leaves, never refused; a
    prompt alone over the context is refused, in vLLM's words."""
    words = 1
    while True:  # the longest prompt of repeated words with room for fewer than 16 tokens
        messages = [{"role": "user", "content": "hi " + "dog " * words}]
        answer = client.chat.completions.create(model=TINY_CHAT, messages=messages, max_tokens=1)
        if CONTEXT - answer.usage.prompt_tokens < 16:
            break
        words += max(1, (CONTEXT - 16 - answer.usage.prompt_tokens) // 2)
    if answer.usage.prompt_tokens < CONTEXT:
        short = client.chat.completions.create(
            model=TINY_CHAT, messages=messages, logit_bias=NO_SPECIALS
        )
        assert short.choices[0].finish_reason == "length"
        assert short.usage.completion_tokens == CONTEXT - answer.usage.prompt_tokens
    huge = [{"role": "user", "content": "dog " * 600}]  # 600+ tokens, under MAX_CHAT_CHARS
    for body in ({}, {"stream": True}):
        response = httpx.post(
            f"{chat_stack.v1}/chat/completions",
            json={"model": TINY_CHAT, "messages": huge, **body},
            timeout=60,
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
        assert re.fullmatch(
            r"This model's maximum context length is 512 tokens\. However, your messages "
            r"resulted in \d+ tokens\. Please reduce the length of the messages\.",
            error["message"],
        ), error


def test_a_job_and_a_batch_line_past_the_context_fail_with_the_400(
    client, prompt_tokens, chat_stack
):
    room = CONTEXT - prompt_tokens
    body = {"model": TINY_CHAT, "messages": HI, "max_tokens": room + 1}
    job = httpx.post(
        f"{chat_stack.v1}/jobs", json={"endpoint": "/v1/chat/completions", "body": body}
    )
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 60
    while (record := httpx.get(f"{chat_stack.v1}/jobs/{job.json()['id']}").json())[
        "status"
    ] not in p.TERMINAL_STATUSES:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert record["status"] == "failed", record
    check_over(record["error"], prompt_tokens, room + 1)

    lines = [
        {"custom_id": "over", "method": "POST", "url": "/v1/chat/completions", "body": body},
        {
            "custom_id": "fits",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**body, "max_tokens": 4},
        },
    ]
    batch = submit_batch(client, lines, "/v1/chat/completions")
    done = wait_batch(client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    (error,) = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert error["custom_id"] == "over" and error["response"]["status_code"] == 400
    check_over(error["response"]["body"]["error"], prompt_tokens, room + 1)
    (out,) = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert out["custom_id"] == "fits"
    assert out["response"]["body"]["usage"]["completion_tokens"] == 4
