"""Files and the OpenAI Batch API through the stack, with the official openai client."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import openai
import pytest

from inferq import batches as b
from inferq import protocol as p
from inferq.blobs import blob_key
from tests.batches_support import jsonl, submit_batch, wait_batch
from tests.conftest import MINILM, SMOL


def _embedding_line(i: int, texts: list[str], model: str = MINILM) -> dict:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": model, "input": texts, "encoding_format": "float"},
    }


def _readjsonl(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def test_files_roundtrip(openai_client):
    payload = b'{"hello": "world"}\n' * 1000
    created = openai_client.files.create(file=("data.jsonl", io.BytesIO(payload)), purpose="batch")
    assert created.object == "file"
    assert created.bytes == len(payload)
    assert created.filename == "data.jsonl"
    assert created.purpose == "batch"
    assert created.expires_at > created.created_at
    assert openai_client.files.retrieve(created.id).bytes == len(payload)
    assert openai_client.files.content(created.id).content == payload
    assert created.id in [f.id for f in openai_client.files.list().data]
    assert openai_client.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(created.id)


def test_upload_over_the_limit_is_413(stack):
    small = stack.start_api(MAX_FILE_BYTES="2000000")
    response = httpx.post(
        f"{small}/v1/files",
        files={"file": ("big.jsonl", b"x" * 3_000_000)},
        data={"purpose": "batch"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


def test_embeddings_batch_end_to_end(openai_client):
    lines = [_embedding_line(i, [f"batch text {i} {j}" for j in range(8)]) for i in range(150)]
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status in ("validating", "in_progress")
    assert batch.metadata == {"job": "nightly"}
    done = wait_batch(openai_client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 150
    assert done.request_counts.completed == 150
    assert done.request_counts.failed == 0
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.error_file_id is None
    output = _readjsonl(openai_client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(150))
    by_id = {o["custom_id"]: o for o in output}
    sync = openai_client.embeddings.create(
        model=MINILM, input=lines[7]["body"]["input"], encoding_format="float"
    )
    got = by_id["req-7"]["response"]
    assert got["status_code"] == 200
    np.testing.assert_allclose(
        [d["embedding"] for d in got["body"]["data"]],
        [d.embedding for d in sync.data],
        atol=1e-5,
    )
    assert got["body"]["usage"] == sync.usage.model_dump()


def test_bad_lines_go_to_the_error_file(openai_client):
    lines = [_embedding_line(i, [f"fine {i}"]) for i in range(5)]
    lines[1]["body"]["input"] = ""
    lines[3]["body"]["dimensions"] = 5000
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_batch(openai_client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 2)
    errors = _readjsonl(openai_client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == ["req-1", "req-3"]
    assert all(e["response"]["status_code"] == 400 for e in errors)
    assert {e["response"]["body"]["error"]["param"] for e in errors} == {"input", "dimensions"}
    assert len(_readjsonl(openai_client, done.output_file_id)) == 3


def test_batch_carries_model_usage_and_output_expiry(openai_client, stack):
    """OpenAI's batch object: ``model``, ``usage`` summed over the output lines, and the
    output files kept ``output_expires_after.seconds`` from their creation."""
    lines = [
        _embedding_line(i, [f"usage text {i}", "and a second one " * (i + 1)]) for i in range(6)
    ]
    lines[2]["body"]["input"] = ""  # a failed line counts no tokens
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    done = wait_batch(openai_client, batch.id)
    assert done.status == "completed", done
    assert done.model == MINILM
    output = _readjsonl(openai_client, done.output_file_id)
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in output)
    assert len(output) == 5 and prompt > 5 * 4
    assert (done.usage.input_tokens, done.usage.output_tokens) == (prompt, 0)
    assert done.usage.total_tokens == prompt
    for file_id in (done.output_file_id, done.error_file_id):
        kept = openai_client.files.retrieve(file_id)
        assert kept.expires_at - kept.created_at == 7200
    late = httpx.post(f"{stack.v1}/batches/{batch.id}/cancel")  # final: the SDKs must not retry
    assert late.status_code == 409 and late.headers["x-should-retry"] == "false"
    for bad in (
        {"anchor": "created_at", "seconds": 60},
        {"anchor": "last_active_at", "seconds": 7200},
    ):
        response = httpx.post(
            f"{stack.v1}/batches",
            json={
                "input_file_id": upload.id,
                "endpoint": "/v1/embeddings",
                "completion_window": "24h",
                "output_expires_after": bad,
            },
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"].startswith("output_expires_after")


def test_malformed_line_fails_validation_naming_the_line(openai_client):
    good = jsonl([_embedding_line(0, ["ok"]), _embedding_line(1, ["ok"])])
    upload = openai_client.files.create(
        file=("in.jsonl", good + b"{not json\n" + jsonl([_embedding_line(1, ["dup"])])),
        purpose="batch",
    )
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_batch(openai_client, batch.id)
    assert done.status == "failed"
    assert done.failed_at
    errors = {e.line: e.code for e in done.errors.data}
    assert errors == {3: "invalid_json", 4: "duplicate_custom_id"}
    assert done.output_file_id is None


def test_batch_creation_errors(openai_client):
    upload = openai_client.files.create(
        file=("in.jsonl", jsonl([_embedding_line(0, ["x"])])), purpose="user_data"
    )
    with pytest.raises(openai.BadRequestError):
        openai_client.batches.create(
            input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.create(
            input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError):
        openai_client.batches.create(
            input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h"
        )


def test_cancel_mid_way_keeps_finished_output(openai_client):
    lines = [
        _embedding_line(i, [f"long running text {i} {j} " * 6 for j in range(8)])
        for i in range(3000)
    ]
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = openai_client.batches.retrieve(batch.id)
        if current.request_counts.completed > 0:
            break
        time.sleep(0.1)
    cancelled = openai_client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_batch(openai_client, batch.id)
    assert done.status == "cancelled"
    assert done.cancelling_at and done.cancelled_at
    assert 0 < done.request_counts.completed < 3000
    output = _readjsonl(openai_client, done.output_file_id)
    assert len(output) == done.request_counts.completed
    # every line not run is in the error file, marked as OpenAI marks it
    errors = _readjsonl(openai_client, done.error_file_id)
    assert len(errors) == done.request_counts.failed == 3000 - len(output)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors)
    custom_ids = [line["custom_id"] for line in output + errors]
    assert sorted(custom_ids) == sorted(f"req-{i}" for i in range(3000))


def test_rerank_batch(stack, openai_client):
    stack.start_worker(["tiny-reranker"]) if "tiny-reranker" not in httpx.get(
        f"{stack.base_url}/ready"
    ).json()["models"] else None
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/rerank",
            "body": {"model": "tiny-reranker", "query": f"query {i}", "documents": ["a", "b c"]},
        }
        for i in range(10)
    ]
    upload = openai_client.files.create(file=("r.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/rerank", completion_window="24h"
    )
    done = wait_batch(openai_client, batch.id)
    assert done.status == "completed"
    output = {o["custom_id"]: o for o in _readjsonl(openai_client, done.output_file_id)}
    sync = httpx.post(f"{stack.v1}/rerank", json=lines[4]["body"]).json()
    assert [r["index"] for r in output["r4"]["response"]["body"]["results"]] == [
        r["index"] for r in sync["results"]
    ]


def test_a_rerank_line_with_an_over_long_query_fails_no_line(stack, openai_client):
    """A query too long for the model's limit (tiny-reranker: 64 tokens) made the tokenizer
    raise for the whole part: every line of it went to the error file as a 500."""
    if "tiny-reranker" not in httpx.get(f"{stack.base_url}/ready").json()["models"]:
        stack.start_worker(["tiny-reranker"])
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/rerank",
            "body": {
                "model": "tiny-reranker",
                "query": "what is the capital of france " * (20 if i == 3 else 1),
                "documents": ["Paris is the capital of France", "cats and dogs"],
            },
        }
        for i in range(6)
    ]
    batch = submit_batch(openai_client, lines, "/v1/rerank")
    done = wait_batch(openai_client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    output = {o["custom_id"]: o for o in _readjsonl(openai_client, done.output_file_id)}
    for line in (lines[0], lines[3]):
        sync = httpx.post(f"{stack.v1}/rerank", json=line["body"]).json()
        got = output[line["custom_id"]]["response"]["body"]
        assert [r["index"] for r in got["results"]] == [r["index"] for r in sync["results"]]
        assert got["usage"] == sync["usage"]


def _chat_line(custom_id: str, content: str, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": SMOL,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            **body,
        },
    }


def test_chat_batch_on_smollm2(smol_stack, openai_client):
    capital = "What is the capital of France?"
    lines = [
        _chat_line("capital", capital, max_tokens=20),
        _chat_line("short", "Count from one to twenty.", max_tokens=5),
        *(_chat_line(f"q{i}", f"Name a colour, number {i}.", max_tokens=12) for i in range(10)),
        _chat_line("two-choices", capital, n=2, max_tokens=12),
        _chat_line("unknown", capital, frobnicate=1),
        _chat_line("streamed", capital, stream=True),
        _chat_line(  # a tool_choice naming no tool
            "tools",
            capital,
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
    ]
    upload = openai_client.files.create(file=("chat.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(openai_client, batch.id, timeout=300)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed) == (16, 13)
    assert done.request_counts.failed == 3
    output = {o["custom_id"]: o["response"] for o in _readjsonl(openai_client, done.output_file_id)}
    assert set(output) == {"capital", "short", "two-choices", *(f"q{i}" for i in range(10))}
    two = output["two-choices"]["body"]["choices"]
    assert [c["index"] for c in two] == [0, 1]
    assert two[0]["message"]["content"] == two[1]["message"]["content"]  # temperature 0
    answer = output["capital"]["body"]
    assert output["capital"]["status_code"] == 200
    assert answer["object"] == "chat.completion"
    assert answer["model"] == SMOL
    assert "Paris" in answer["choices"][0]["message"]["content"]
    sync = openai_client.chat.completions.create(
        model=SMOL, messages=lines[0]["body"]["messages"], temperature=0, max_tokens=20
    )
    assert answer["usage"]["prompt_tokens"] == sync.usage.prompt_tokens
    short = output["short"]["body"]
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 5
    assert all(output[f"q{i}"]["body"]["choices"][0]["message"]["content"] for i in range(10))
    assert done.model == SMOL
    usages = [o["body"]["usage"] for o in output.values()]
    assert done.usage.input_tokens == sum(u["prompt_tokens"] for u in usages)
    assert done.usage.output_tokens == sum(u["completion_tokens"] for u in usages) > 12
    errors = {e["custom_id"]: e["response"] for e in _readjsonl(openai_client, done.error_file_id)}
    assert {cid: e["status_code"] for cid, e in errors.items()} == {
        "unknown": 400,
        "streamed": 400,
        "tools": 400,
    }
    assert {cid: e["body"]["error"]["param"] for cid, e in errors.items()} == {
        "unknown": "frobnicate",
        "streamed": "stream",
        "tools": "tool_choice",
    }


def test_cancelling_a_chat_batch_stops_running_generations(smol_stack, openai_client):
    story = "Write a very long story about a dragon and a knight."
    lines = [_chat_line(f"s{i}", story, max_tokens=1000) for i in range(8)]  # one part
    upload = openai_client.files.create(file=("story.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_batch(openai_client, batch.id, statuses=("in_progress",), timeout=60)
    time.sleep(2)  # the part is decoding: eight long generations, far from done
    openai_client.batches.cancel(batch.id)
    done = wait_batch(openai_client, batch.id, timeout=120)
    assert done.status == "cancelled"
    # the running lines were stopped, not finished: each is a batch_cancelled error
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 8)
    assert done.output_file_id is None
    errors = _readjsonl(openai_client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == [f"s{i}" for i in range(8)]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_list_and_paginate_batches(openai_client):
    upload = openai_client.files.create(
        file=("in.jsonl", jsonl([_embedding_line(0, ["x"])])), purpose="batch"
    )
    ids = [
        openai_client.batches.create(
            input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    page = openai_client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more
    rest = openai_client.batches.list(limit=2, after=page.data[-1].id)
    assert rest.data[0].id == ids[0]
    for batch_id in ids:
        wait_batch(openai_client, batch_id)


UNSERVED = "Qwen/Qwen3-Embedding-4B"  # in the catalog, no worker in the tests


@pytest.fixture
def unserved_queue(redis_client):
    """The runners such a batch sends wait on the model's queue for ever: drop them after."""
    yield UNSERVED
    redis_client.delete(*p.queue_lists(UNSERVED))


def test_a_batch_no_worker_runs_expires_with_every_line_in_the_error_file(stack, unserved_queue):
    """The completion window is enforced by the workers' sweep, not by a part that runs: a
    batch whose model has no worker still ends, as ``expired``."""
    base = stack.start_api(BATCH_EXPIRY_SEC="5")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    lines = [_embedding_line(i, ["never embedded"], model=UNSERVED) for i in range(5)]
    upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.expires_at - batch.created_at == 5
    done = wait_batch(client, batch.id, timeout=90)  # the sweep acts 10 s after the expiry
    assert done.status == "expired" and done.expired_at >= batch.expires_at
    assert done.output_file_id is None
    assert (done.request_counts.total, done.request_counts.failed) == (5, 5)
    errors = _readjsonl(client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == [f"req-{i}" for i in range(5)]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_cancelling_a_batch_no_worker_runs_ends_cancelled(openai_client, unserved_queue):
    lines = [_embedding_line(i, ["never embedded"], model=UNSERVED) for i in range(3)]
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    wait_batch(openai_client, batch.id, statuses=("in_progress",), timeout=30)
    assert openai_client.batches.cancel(batch.id).status == "cancelling"
    done = wait_batch(openai_client, batch.id, timeout=60)  # the sweep, after the grace period
    assert done.status == "cancelled" and done.cancelled_at
    errors = _readjsonl(openai_client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == ["req-0", "req-1", "req-2"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_a_finalize_that_died_is_finished_by_the_sweep(openai_client, redis_client, unserved_queue):
    """A worker that died inside finalize leaves the batch ``finalizing``; once it is due the
    sweep sends finalize again, which finishes the batch from there."""
    lines = [_embedding_line(i, ["never embedded"], model=UNSERVED) for i in range(4)]
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    wait_batch(openai_client, batch.id, statuses=("in_progress",), timeout=30)
    # what the dead finalize had done: moved the (expired) batch to finalizing, nothing more
    redis_client.hset(
        b.batch_key(batch.id),
        mapping={"status": "finalizing", "finalizing_at": batch.expires_at + 1},
    )
    redis_client.zadd(b.open_batches_key(), {batch.id: p.now()})  # its retry time has come
    done = wait_batch(openai_client, batch.id, timeout=60)
    assert done.status == "expired"
    errors = _readjsonl(openai_client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == [f"req-{i}" for i in range(4)]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert redis_client.zscore(b.open_batches_key(), batch.id) is None


def test_deleting_the_input_file_of_a_running_batch_loses_no_line(
    openai_client, redis_client, unserved_queue
):
    """The parts read their lines from the input file when they run (or, stopped, when they
    are settled): deleting the file meanwhile left every unsettled line out of both files, a
    batch counting 3 requests with none completed or failed. Its bytes now stay until the
    batch ends."""
    lines = [_embedding_line(i, ["never embedded"], model=UNSERVED) for i in range(3)]
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    wait_batch(openai_client, batch.id, statuses=("in_progress",), timeout=30)
    assert openai_client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(upload.id)
    assert openai_client.batches.cancel(batch.id).status == "cancelling"
    done = wait_batch(openai_client, batch.id, timeout=60)  # the sweep, after the grace period
    assert done.status == "cancelled"
    assert (done.request_counts.total, done.request_counts.failed) == (3, 3)
    errors = _readjsonl(openai_client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == ["req-0", "req-1", "req-2"]
    assert not redis_client.exists(blob_key(upload.id))  # gone once the batch no longer needs it


def test_a_line_for_a_model_that_does_not_serve_the_endpoint_is_the_routes_400(openai_client):
    """As ``POST /v1/rerank`` answers for an embedding model: 400 ``model_not_supported``,
    not a 404 saying the model is not in the catalog."""
    line = {
        "custom_id": "r",
        "method": "POST",
        "url": "/v1/rerank",
        "body": {"model": MINILM, "query": "q", "documents": ["a"]},
    }
    upload = openai_client.files.create(file=("in.jsonl", jsonl([line])), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/rerank", completion_window="24h"
    )
    done = wait_batch(openai_client, batch.id, timeout=60)
    assert done.status == "completed" and done.request_counts.failed == 1
    (error,) = _readjsonl(openai_client, done.error_file_id)
    assert error["response"]["status_code"] == 400, error
    assert error["response"]["body"]["error"]["code"] == "model_not_supported"
    sync = httpx.post(f"{openai_client.base_url}rerank", json=line["body"], timeout=30)
    assert sync.status_code == 400
    assert sync.json()["error"]["code"] == error["response"]["body"]["error"]["code"]
