"""Chat against an OpenAI-compatible upstream (the fake server of tests/chat_support.py):
proxy models forwarding chat, streams, embeddings and batch lines, and remote images fetched
with their checks."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest

from tests.chat_support import UPSTREAM_CHAT_MODEL, UPSTREAM_EMBED_MODEL, png_bytes

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(chat_stack, openai_client):
    return openai_client


def test_remote_images_are_fetched_with_checks(upstream, upstream_port):
    from handlers.base import InvalidInput
    from inferq.settings import Settings
    from workers.images import fetch_image

    base = f"http://127.0.0.1:{upstream_port}/images"
    settings = Settings(allow_remote_images=True, remote_image_hosts="127.0.0.1")
    uri = fetch_image(f"{base}/red.png", settings, allow_private=True)
    assert base64.b64decode(uri.split(",", 1)[1]) == png_bytes()
    assert fetch_image(f"{base}/redirect", settings, allow_private=True) == uri
    for url, settings_, why in [
        (f"{base}/red.png", settings, "non-public"),  # private addresses are refused
        (f"{base}/page.html", settings, "not an image"),
        (f"{base}/loop", settings, "too many redirects"),
        (
            f"{base}/red.png",
            Settings(
                allow_remote_images=True, remote_image_hosts="127.0.0.1", remote_image_max_bytes=10
            ),
            "larger than",
        ),
        (
            f"{base}/red.png",
            Settings(allow_remote_images=True, remote_image_hosts="a.com"),
            "not in",
        ),
        (f"{base}/red.png", Settings(), "disabled"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            fetch_image(url, settings_, allow_private=why != "non-public")


# -- proxies ----------------------------------------------------------------------------------


def test_proxy_chat_forwards_the_body_and_passes_the_answer_through(client, upstream):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    answer = client.chat.completions.create(
        model="proxy-chat", messages=CAPITAL, tools=tools, temperature=0.3, n=1
    )
    assert answer.choices[0].message.content == f"echo:{UPSTREAM_CHAT_MODEL} tools done"
    sent = upstream.bodies[-1]
    assert sent["model"] == UPSTREAM_CHAT_MODEL
    assert sent["tools"] == tools
    assert sent["temperature"] == 0.3
    assert answer.usage.total_tokens == 6


def test_proxy_streaming_passes_chunks_through(client, upstream):
    chunks = list(
        client.chat.completions.create(
            model="proxy-chat",
            messages=CAPITAL,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert upstream.bodies[-1]["stream"] is True
    assert [c.id for c in chunks] == ["chatcmpl-upstream"] * len(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo:{UPSTREAM_CHAT_MODEL} done"
    assert chunks[-1].usage.total_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_proxy_upstream_errors_become_502_and_timeouts_504(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="proxy-chat", messages=[{"role": "user", "content": "FAIL please"}]
        )
    assert caught.value.status_code == 502
    assert "upstream exploded on purpose" in caught.value.message
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="proxy-chat", messages=[{"role": "user", "content": "FAIL"}], stream=True
        )
    assert caught.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="proxy-chat", messages=[{"role": "user", "content": "SLOW please"}]
        )
    assert caught.value.status_code == 504


def test_proxy_embeddings(client, upstream):
    response = client.embeddings.create(
        model="proxy-embed", input=["ab", "abcd"], encoding_format="float"
    )
    assert [d.embedding for d in response.data] == [[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]]
    assert upstream.bodies[-1]["model"] == UPSTREAM_EMBED_MODEL


def test_batches_of_proxy_models_forward_each_line(client, upstream):
    def line(custom_id, content, **body):
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "proxy-chat", "messages": [{"role": "user", "content": content}]}
            | body,
        }

    lines = [line(f"c{i}", f"question {i}", stream=True) for i in range(5)] + [
        line("broken", "FAIL please")
    ]
    payload = "".join(json.dumps(item) + "\n" for item in lines).encode()
    upload = client.files.create(file=("proxy.jsonl", payload), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while (batch := client.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 1), (
        client.files.content(batch.error_file_id).text
    )
    outputs = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == [f"c{i}" for i in range(5)]
    answer = outputs[0]["response"]["body"]
    assert answer["choices"][0]["message"]["content"] == f"echo:{UPSTREAM_CHAT_MODEL} done"
    forwarded = [b for b in upstream.bodies if "question" in str(b.get("messages"))]
    assert len(forwarded) == 5 and not any(b["stream"] for b in forwarded)  # plain answers
    (error,) = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert error["custom_id"] == "broken"
    assert error["response"]["status_code"] == 502
