"""Hostile but valid JSON through the real stack: each case is a 400 naming the field, never a
500, and a bad batch line is that line's 400 while the batch and its other lines go on.

Cases from a probe of a running stack (issue 12): lone UTF-16 surrogates (valid JSON that
``json.loads`` accepts and UTF-8 cannot hold), ``role`` as a list or dict (unhashable),
integers past 64 bits, ``logit_bias`` keys that ``str.isdigit`` takes for digits ("²").
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.batches_support import wait_batch
from tests.conftest import MINILM, SMOL, TINY_CHAT

LONE = "\\ud800"  # a JSON escape: the body text holds backslash-u-d-8-0-0


def post_raw(stack, path: str, body: str, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{stack.v1}{path}",
        content=body.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
        **kwargs,
    )


def chat_body(**fields) -> dict:
    return {"model": TINY_CHAT, "messages": [{"role": "user", "content": "hi"}], **fields}


def completion_body(**fields) -> dict:
    return {"model": TINY_CHAT, "prompt": "hi", "max_tokens": 3, **fields}


def assert_400(response: httpx.Response, param: str | None) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    ("path", "template", "param"),
    [
        (
            "/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "X"}]}',
            "messages",
        ),
        (
            "/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "user": "X"}',
            "user",
        ),
        (
            "/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stop": ["X"]}',
            "stop",
        ),
        (
            "/chat/completions",
            '{"model": "%s", "messages": [{"role": "user", "content": "hi"}],"metadata":{"k":"X"}}',
            "metadata",
        ),
        (
            "/chat/completions",
            '{"model": "X%s", "messages": [{"role": "user", "content": "hi"}]}',
            "model",
        ),
        ("/embeddings", '{"model": "%s", "input": ["ok", "X"]}', "input"),
        ("/jobs", '{"endpoint": "/v1/embeddings", "body": {"model": "%s", "input": "X"}}', "body"),
        (
            "/batches",
            '{"input_file_id": "file-X%s", "endpoint": "/v1/embeddings"}',
            "input_file_id",
        ),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field(chat_stack, path, template, param):
    model = MINILM if "embeddings" in template or path == "/embeddings" else TINY_CHAT
    body = template.replace("X", LONE) % ("" if path == "/batches" else model)
    error = assert_400(post_raw(chat_stack, path, body), param)
    assert "Unicode" in error["message"]


@pytest.mark.parametrize("role", [["user"], {"a": 1}, 7, None])
@pytest.mark.parametrize("route", ["sync", "stream", "job"])
def test_a_role_that_is_not_a_string_is_a_400(chat_stack, role, route):
    body = chat_body(messages=[{"role": role, "content": "hi"}], stream=route == "stream")
    if route == "job":
        body = {"endpoint": "/v1/chat/completions", "body": body}
    path = "/jobs" if route == "job" else "/chat/completions"
    error = assert_400(post_raw(chat_stack, path, json.dumps(body)), "messages")
    assert "role" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", chat_body(seed=2**70), "seed"),
        ("/chat/completions", chat_body(seed=-(2**70)), "seed"),
        ("/chat/completions", chat_body(max_tokens=2**64), "max_tokens"),
        ("/chat/completions", chat_body(max_completion_tokens=2**64), "max_completion_tokens"),
        ("/chat/completions", chat_body(n=2**64), "n"),
        ("/embeddings", {"model": MINILM, "input": "hi", "dimensions": 2**64}, "dimensions"),
        ("/chat/completions", chat_body(logit_bias={"\u00b2": 1}), "logit_bias"),
        ("/chat/completions", chat_body(logit_bias={"12a": 1}), "logit_bias"),
        ("/chat/completions", chat_body(logit_bias={"\u0661": 1}), "logit_bias"),  # Arabic one
        # NaN and infinity passed the text completion's checks and reached the queue as null
        # (JSON has no NaN): the worker failed the job with a 500
        ("/completions", completion_body(logit_bias={"42": float("nan")}), "logit_bias"),
        ("/completions", completion_body(logit_bias={"42": float("inf")}), "logit_bias"),
        ("/completions", completion_body(logit_bias={"42": -1e300}), "logit_bias"),
    ],
)
def test_out_of_range_numbers_and_odd_token_ids_are_400s(chat_stack, path, body, param):
    assert_400(post_raw(chat_stack, path, json.dumps(body, ensure_ascii=True)), param)


def nested_schema(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


DEEP = nested_schema(150)  # 300 JSON levels: past what pydantic serializes (255)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            chat_body(response_format={"type": "json_schema", "json_schema": {"schema": DEEP}}),
            "response_format",
        ),
        (  # SmolLM2 has a tool parser: its tools get past the model's checks
            chat_body(
                model=SMOL,
                tools=[{"type": "function", "function": {"name": "f", "parameters": DEEP}}],
            ),
            "tools",
        ),
    ],
)
def test_json_nested_past_the_bound_is_a_400_naming_the_field(chat_stack, body, param):
    # was a 500: the API could not serialize the job request ("Maximum serialization depth")
    error = assert_400(post_raw(chat_stack, "/chat/completions", json.dumps(body)), param)
    assert "nest" in error["message"]


def test_a_schema_nested_within_the_bound_is_served(chat_stack):
    schema = nested_schema(20)
    body = chat_body(
        max_tokens=2, response_format={"type": "json_schema", "json_schema": {"schema": schema}}
    )
    assert post_raw(chat_stack, "/chat/completions", json.dumps(body)).status_code == 200


def test_a_valid_logit_bias_and_a_64_bit_seed_are_served(chat_stack):
    response = post_raw(
        chat_stack,
        "/chat/completions",
        json.dumps(chat_body(seed=2**63 - 1, max_tokens=3, logit_bias={"42": -100})),
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_a_bad_batch_line_is_that_lines_400_and_the_batch_ends(chat_stack, openai_client):
    good = {"role": "user", "content": "Say yes."}
    lines = [
        {
            "custom_id": "list-role",
            "body": chat_body(model=SMOL, messages=[{"role": ["user"], "content": "x"}]),
        },
        {
            "custom_id": "dict-role",
            "body": chat_body(model=SMOL, messages=[{"role": {"r": 1}, "content": "x"}]),
        },
        {"custom_id": "huge-seed", "body": chat_body(model=SMOL, seed=2**70)},
        {"custom_id": "good", "body": chat_body(model=SMOL, messages=[good], max_tokens=5)},
    ]
    text = "".join(
        json.dumps({"method": "POST", "url": "/v1/chat/completions", **line}) + "\n"
        for line in lines
    )
    upload = openai_client.files.create(file=("hostile.jsonl", text.encode()), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 180
    while (batch := openai_client.batches.retrieve(batch.id)).status not in (
        "completed",
        "failed",
        "cancelled",
        "expired",
    ):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.2)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 3)
    errors = {
        row["custom_id"]: row["response"]
        for row in map(
            json.loads, openai_client.files.content(batch.error_file_id).text.splitlines()
        )
    }
    assert set(errors) == {"list-role", "dict-role", "huge-seed"}
    assert all(e["status_code"] == 400 for e in errors.values())
    assert errors["huge-seed"]["body"]["error"]["param"] == "seed"
    output = openai_client.files.content(batch.output_file_id).text.splitlines()
    assert [json.loads(row)["custom_id"] for row in output] == ["good"]


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
# A tool_choice whose function is a string: the body that made the contract code raise a
# TypeError (a 500 on the routes) before it was checked as tool_choice.
CRASHING_TOOL_CHOICE = {"tools": TOOLS, "tool_choice": {"type": "function", "function": "f"}}


def _tool_history(**message) -> list[dict]:
    return [{"role": "user", "content": "x"}, message]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (CRASHING_TOOL_CHOICE, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": ["f"]}}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": {}}}},
            "tool_choice",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": ["f"]}}},
            "tool_choice",
        ),
        (
            {
                "messages": _tool_history(
                    role="tool", content=[{"type": "text", "text": 5}], tool_call_id="a"
                )
            },
            "messages",
        ),
        (
            {
                "messages": _tool_history(
                    role="assistant",
                    content=[{"type": "text", "text": ["x"]}],
                    tool_calls=[{"function": {"name": "f", "arguments": "{}"}}],
                )
            },
            "messages",
        ),
        (
            {
                "messages": _tool_history(
                    role="assistant",
                    content=7,
                    tool_calls=[{"function": {"name": "f", "arguments": "{}"}}],
                )
            },
            "messages",
        ),
    ],
)
@pytest.mark.parametrize("route", ["sync", "job"])
def test_odd_tool_fields_are_400s_naming_them(chat_stack, fields, param, route):
    """Each of these raised in the checks (a string or a list has no .get, a dict is not
    hashable, an int cannot be joined): a 500 on the routes."""
    body = chat_body(max_tokens=3, **fields)
    if route == "job":
        body = {"endpoint": "/v1/chat/completions", "body": body}
    path = "/jobs" if route == "job" else "/chat/completions"
    assert_400(post_raw(chat_stack, path, json.dumps(body)), param)


def test_a_line_the_checks_trip_over_fails_alone_and_the_batch_ends(chat_stack, openai_client):
    """A line whose body raised something other than a 400 while it was checked used to take
    its whole part down: the runner task failed, the part was never settled, and the batch sat
    in_progress (its good lines lost) until the 24 h expiry."""
    url = "/v1/chat/completions"
    lines = [
        {"custom_id": "good-1", "body": chat_body(max_tokens=3)},
        {"custom_id": "odd", "body": chat_body(max_tokens=3, **CRASHING_TOOL_CHOICE)},
        {"custom_id": "good-2", "body": chat_body(max_tokens=3)},
    ]
    text = "".join(json.dumps({"method": "POST", "url": url, **line}) + "\n" for line in lines)
    upload = openai_client.files.create(file=("odd.jsonl", text.encode()), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint=url, completion_window="24h"
    )
    batch = wait_batch(openai_client, batch.id, timeout=120)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed) == (3, 2)
    assert batch.request_counts.failed == 1
    output = openai_client.files.content(batch.output_file_id).text.splitlines()
    assert sorted(json.loads(row)["custom_id"] for row in output) == ["good-1", "good-2"]
    (error,) = map(json.loads, openai_client.files.content(batch.error_file_id).text.splitlines())
    assert error["custom_id"] == "odd"
    assert error["response"]["status_code"] == 400, error
    assert error["response"]["body"]["error"]["param"] == "tool_choice"


def test_attachment_names_cannot_end_the_parameter_or_the_header():
    from api.responses import attachment

    for name in ["a\nb.txt", "nul\x00.txt", "x\"; filename*=UTF-8''evil.exe", "r\r\n: x", "\udcff"]:
        value = attachment(name)
        assert value.isascii() and value.isprintable(), value
        assert value.count("filename*=") == 1 and value.count('"') == 2, value
        fallback = value.split('"')[1]
        assert not set(fallback) & set(";=*'\\\"")


@pytest.mark.parametrize(
    "name", ["报告 2026.jsonl", "x\"; filename*=UTF-8''evil.exe", "naïve.jsonl", "plain.jsonl"]
)
def test_downloaded_names_round_trip_through_rfc_5987(stack, name):
    from urllib.parse import unquote

    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
    upload = httpx.post(
        f"{stack.v1}/files",
        data={"purpose": "batch"},
        files={"file": (name, line)},
        timeout=30,
    )
    assert upload.status_code == 200, upload.text
    stored = upload.json()["filename"]
    download = httpx.get(f"{stack.v1}/files/{upload.json()['id']}/content", timeout=30)
    assert download.status_code == 200 and download.content == line
    header = download.headers["content-disposition"]
    if stored == "plain.jsonl":
        assert header == 'attachment; filename="plain.jsonl"'
    else:
        fallback, encoded = header.split("; filename*=UTF-8''")
        assert fallback.startswith('attachment; filename="') and fallback.count('"') == 2
        assert ";" not in encoded and unquote(encoded) == stored


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k": "v" * 513},
        {"k" * 65: "v"},
    ],
)
def test_metadata_is_bounded_as_openai_bounds_it(chat_stack, metadata):
    job = {"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": "hi"}}
    response = post_raw(chat_stack, "/jobs", json.dumps({**job, "metadata": metadata}))
    assert_400(response, "metadata")
    batch = {"input_file_id": "file-x", "endpoint": "/v1/embeddings", "metadata": metadata}
    assert_400(post_raw(chat_stack, "/batches", json.dumps(batch)), "metadata")


@pytest.mark.parametrize(
    "cursor", ["18446744073709551616-0", "0-18446744073709551616", "1" * 30, "12a-0", "1-"]
)
def test_an_event_cursor_past_64_bits_is_a_400_before_the_stream(chat_stack, cursor):
    job = {"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": "hi"}}
    created = post_raw(chat_stack, "/jobs", json.dumps(job))
    assert created.status_code == 202, created.text
    events = f"{chat_stack.v1}/jobs/{created.json()['id']}/events"
    assert_400(httpx.get(events, headers={"Last-Event-ID": cursor}, timeout=30), "Last-Event-ID")
    assert_400(httpx.get(events, params={"after": cursor}, timeout=30), "Last-Event-ID")
    resumed = httpx.get(events, headers={"Last-Event-ID": "0-0"}, timeout=60)
    assert resumed.status_code == 200 and "succeeded" in resumed.text


def test_two_file_parts_are_a_400(stack):
    parts = [("file", ("a.jsonl", b"{}\n")), ("file", ("b.jsonl", b"{}\n"))]
    response = httpx.post(f"{stack.v1}/files", data={"purpose": "batch"}, files=parts, timeout=30)
    assert_400(response, "file")


def test_a_declared_size_past_the_limit_is_a_413_before_the_body_is_sent(stack):
    """Only the headers are sent: the answer must not wait for (or read) the body."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(stack.v1)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        conn.settimeout(10)
        head = b""
        while b"file_too_large" not in head:  # the body may come in a packet of its own
            piece = conn.recv(4096)
            if not piece:
                break
            head += piece
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"file_too_large" in head


def test_a_chunked_body_past_the_chat_limit_is_a_413(stack):
    """Without a Content-Length (chunked transfer encoding) the chat route's body limit was
    never applied: the API read and parsed a body of any size. The limit now counts the bytes
    as they arrive."""
    base = stack.start_api(MAX_CHAT_BODY_BYTES="100000")
    message = {"role": "user", "content": "x" * 200_000}
    body = json.dumps({"model": TINY_CHAT, "messages": [message]}).encode()

    def chunked(data: bytes):
        for start in range(0, len(data), 16384):
            yield data[start : start + 16384]

    headers = {"content-type": "application/json"}
    response = httpx.post(
        f"{base}/v1/chat/completions", content=chunked(body), headers=headers, timeout=30
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    small = json.dumps({"model": TINY_CHAT, "messages": [{"role": "user", "content": "hi"}]})
    response = httpx.post(
        f"{base}/v1/chat/completions", content=chunked(small.encode()), headers=headers, timeout=30
    )
    assert response.status_code != 413, response.text
