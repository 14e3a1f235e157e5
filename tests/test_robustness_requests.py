"""Hostile requests and clients that leave, through a stack of its own (issue 12): a multipart
upload cut short, a sync client that disconnects, chat text far past the model's context,
and error responses that must leave a keep-alive connection usable."""

from __future__ import annotations

import http.client
import io
import json
import math
import socket
import struct
import time
import wave
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from inferq import protocol as p
from tests.private_stack import (
    CRASH_BERT,
    SLOW_CHAT,
    WHISPER,
    slow_chat_no_eos,
    start_private_stack,
)


@pytest.fixture(scope="module")
def private(tmp_path_factory, tiny_embedders):
    stack = start_private_stack(
        tmp_path_factory.mktemp("robust-requests"),
        tiny_embedders["bert"],
        [[SLOW_CHAT, CRASH_BERT, WHISPER]],
    )
    yield stack
    stack.close()


def wav_bytes(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        frames = (int(8000 * math.sin(i / 8)) for i in range(int(16000 * seconds)))
        out.writeframes(b"".join(struct.pack("<h", f) for f in frames))
    return buffer.getvalue()


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A complete multipart body (fields first, then the file, as clients send them)."""
    boundary = "robust-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


UPLOADS = [
    ("/files", {"purpose": "batch"}, "in.jsonl", b'{"a": 1}\n' * 2000, 200),
    ("/audio/transcriptions", {"model": WHISPER}, "a.wav", wav_bytes(), 200),
    ("/jobs/audio/transcriptions", {"model": WHISPER}, "a.wav", wav_bytes(), 202),
]


@pytest.mark.parametrize(("path", "fields", "name", "content", "complete_status"), UPLOADS)
@pytest.mark.parametrize("cut", [4, 8, 20, 5000])  # "--\r\n", the last boundary, into the file
def test_an_upload_cut_short_is_a_400_and_leaves_no_blob(
    private, path, fields, name, content, complete_status, cut
):
    body, content_type = multipart(fields, name, content)
    headers = {"content-type": content_type}
    truncated = httpx.post(f"{private.v1}{path}", content=body[:-cut], headers=headers, timeout=60)
    assert truncated.status_code == 400, truncated.text
    assert truncated.json()["error"]["code"] == "truncated_body"
    assert not private.redis.keys("inferq:blob:*")  # the partial upload was deleted
    if cut == 4:  # the same body, complete, is served: only the cut made it a 400
        complete = httpx.post(f"{private.v1}{path}", content=body, headers=headers, timeout=120)
        assert complete.status_code == complete_status, complete.text
        for key in private.redis.keys("inferq:blob:*"):
            private.redis.delete(key)


def running_job(private, endpoint: str, timeout: float = 60) -> str:
    """The id of the one running job of ``endpoint`` in the private Redis."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in private.redis.scan_iter("inferq:job:*"):
            if key.count(b":") != 2:
                continue
            status, job_endpoint = private.redis.hmget(key, "status", "endpoint")
            if status == b"running" and job_endpoint == endpoint.encode():
                return key.decode().split(":")[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {endpoint} job started")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            # 16 prompt tokens + 490: within the tiny model's 512 (past it: a 400 at once)
            {"model": SLOW_CHAT, "max_tokens": 490, "messages": [{"role": "user", "content": "?"}]},
        ),
        ("/v1/embeddings", {"model": CRASH_BERT, "input": [f"t {i}" for i in range(2048)]}),
    ],
)
def test_a_sync_client_that_leaves_has_its_job_cancelled(private, path, body):
    if body["model"] == SLOW_CHAT:  # sampled: it must not end its answer before the test acts
        body = {**body, "logit_bias": slow_chat_no_eos()}
    address = urlsplit(private.base_url)
    payload = json.dumps(body).encode()
    conn = socket.create_connection((address.hostname, address.port), timeout=10)
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    job_id = running_job(private, path)
    conn.close()  # the client goes away without waiting for the answer
    deadline = time.monotonic() + 30
    while (status := private.redis.hget(p.job_key(job_id), "status")) == b"running":
        assert time.monotonic() < deadline, "the job ran on after its client left"
        time.sleep(0.05)
    assert status == b"cancelled"


def test_chat_text_past_the_context_is_refused_before_tokenising(private):
    client = openai.OpenAI(base_url=private.v1, api_key="x", max_retries=0, timeout=60)
    huge = "word " * (10 * 1024 * 1024 // 5)  # 10 MB of text: counted, never tokenised
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=SLOW_CHAT, messages=[{"role": "user", "content": huge}]
        )
    assert error.value.body["code"] == "context_length_exceeded"
    address = urlsplit(private.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(  # 50 MB declared, past MAX_CHAT_BODY_BYTES: refused before it is sent
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n"
            b"Content-Type: application/json\r\n\r\n"
        )
        head = b""
        while b"request_too_large" not in head and (piece := conn.recv(4096)):
            head += piece  # the body may come in a packet of its own
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"request_too_large" in head
    # 40 000 characters: the tiny model's context is 512 tokens (at most 32 768 characters)
    long = [{"role": "user", "content": "word " * 8000}]
    for route in ("sync", "job"):
        body = {"model": SLOW_CHAT, "messages": long}
        if route == "job":
            response = httpx.post(
                f"{private.v1}/jobs", json={"endpoint": "/v1/chat/completions", "body": body}
            )
        else:
            response = httpx.post(f"{private.v1}/chat/completions", json=body, timeout=60)
        assert response.status_code == 400, response.text
        error_body = response.json()["error"]
        assert error_body["code"] == "context_length_exceeded"
        assert "characters" in error_body["message"]  # the API's count, not the tokenizer's
    # an API that lets it through: the worker refuses it from its length, untokenised
    lenient = private.start_api(MAX_CHAT_CHARS="100000000")
    response = httpx.post(
        f"{lenient}/v1/chat/completions", json={"model": SLOW_CHAT, "messages": long}, timeout=60
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in response.json()["error"]["message"]
    fine = client.chat.completions.create(
        model=SLOW_CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert fine.choices[0].message.content


def test_every_error_response_leaves_the_keep_alive_connection_usable(private):
    created = httpx.post(
        f"{private.v1}/jobs",
        json={"endpoint": "/v1/embeddings", "body": {"model": CRASH_BERT, "input": "x"}},
    )
    assert created.status_code == 202
    corrupt = created.json()["id"]
    private.redis.hset(p.job_key(corrupt), "progress", "{not json")  # a damaged record
    address = urlsplit(private.base_url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    json_headers = {"content-type": "application/json"}
    cases = [
        ("POST", "/v1/embeddings", b"", json_headers, 400, "invalid_json"),
        ("POST", "/v1/embeddings", b"{nope", json_headers, 400, "invalid_json"),
        ("PUT", "/v1/embeddings", b"", {}, 405, "method_not_allowed"),
        ("DELETE", "/v1/models", b"", {}, 405, "method_not_allowed"),
        ("GET", "/v1/nowhere", None, {}, 404, "not_found"),
        ("GET", "/v1/jobs/job-unknown", None, {}, 404, "job_not_found"),
        ("POST", "/v1/embeddings", b'{"model": "nope", "input": "x"}', json_headers, 404, None),
        ("GET", f"/v1/jobs/{corrupt}", None, {}, 500, "internal_error"),
        ("POST", "/v1/embeddings", b'{"input": "x"}', json_headers, 400, "invalid_value"),
    ]
    conn.request("GET", "/health")
    conn.getresponse().read()
    sock = conn.sock
    for method, path, body, headers, status, code in cases:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        error = json.loads(response.read())["error"]
        assert response.status == status, (method, path, error)
        assert response.getheader("connection") != "close", (method, path)
        assert set(error) == {"message", "type", "param", "code"}
        if status < 500:
            assert error["type"] == "invalid_request_error", (method, path, error)
        if code:
            assert error["code"] == code, (method, path, error)
        conn.request("GET", "/v1/models")  # the next request on the same connection
        follow_up = conn.getresponse()
        assert follow_up.status == 200 and follow_up.read()
        assert conn.sock is sock, f"the connection was closed after {method} {path}"
    conn.close()
