"""An input file that expires (``FILE_TTL_SEC``) while its batch still runs, through the stack
with the official openai client: the batch keeps what it needs until it ends."""

from __future__ import annotations

import json
import time

import openai
import pytest

from inferq import batches as b
from inferq import protocol as p
from inferq.blobs import blob_key
from tests.batches_support import jsonl, wait_batch
from tests.conftest import MINILM
from tests.private_stack import wait_for

UNSERVED = "Qwen/Qwen3-Embedding-4B"  # in the catalog, no worker in the tests


@pytest.fixture
def unserved_queue(redis_client):
    """The runners such a batch sends wait on the model's queue for ever: drop them after."""
    yield UNSERVED
    redis_client.delete(*p.queue_lists(UNSERVED))


def _line(i: int, model: str) -> dict:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": model, "input": [f"text {i}"], "encoding_format": "float"},
    }


def _gone(client, file_id: str) -> bool:
    try:
        client.files.retrieve(file_id)
    except openai.NotFoundError:
        return True
    return False


def test_an_input_file_that_expires_while_its_batch_runs_loses_no_line(
    stack, redis_client, unserved_queue
):
    """The parts read their lines from the input file when they run (or, stopped, when they
    are settled). The file's record and bytes expired together, batch or no batch: every
    unsettled line was then left out of both files. And with ``FILE_TTL_SEC`` shorter than
    the completion window, the batch record itself (kept as long as a file) vanished mid-run.
    The bytes now stay until the batch ends, then the file's own expiry applies again."""
    short = openai.OpenAI(
        base_url=f"{stack.start_api(FILE_TTL_SEC='3')}/v1", api_key="unused", max_retries=0
    )
    lines = [_line(i, UNSERVED) for i in range(3)]
    upload = short.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert upload.expires_at - upload.created_at == 3
    batch = short.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    wait_batch(short, batch.id, statuses=("in_progress",), timeout=30)
    wait_for(lambda: _gone(short, upload.id), 15, "the input file to expire")
    time.sleep(1)  # past the expiry of anything kept as long as the file
    assert short.batches.retrieve(batch.id).status == "in_progress"
    assert short.batches.cancel(batch.id).status == "cancelling"
    done = wait_batch(short, batch.id, timeout=60)  # the sweep, after the grace period
    assert done.status == "cancelled"
    assert (done.request_counts.total, done.request_counts.failed) == (3, 3)
    errors = [json.loads(x) for x in short.files.content(done.error_file_id).text.splitlines()]
    assert sorted(e["custom_id"] for e in errors) == ["req-0", "req-1", "req-2"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert not redis_client.exists(blob_key(upload.id))  # the file's expiry, once unneeded

    # A file that outlives its batch expires when it would have: the batch's hold is undone.
    base = stack.start_api(FILE_TTL_SEC="600")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    kept = client.files.create(
        file=("in.jsonl", jsonl([_line(i, MINILM) for i in range(2)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=kept.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert wait_batch(client, batch.id, timeout=60).status == "completed"
    file_ttl = redis_client.pttl(b.file_key(kept.id))
    assert 500_000 < file_ttl <= 600_000
    assert abs(file_ttl - redis_client.pttl(blob_key(kept.id))) < 2000


def test_a_finalize_that_died_before_releasing_the_input_is_finished_by_the_sweep(
    stack, openai_client, redis_client, unserved_queue
):
    """A finalize re-dates the batch in the open set, reaches the final status, then lets go
    of the input (RELEASE_INPUT_SCRIPT). Should it die between the last two, the sweep takes
    the final batch out of the open set: it must let go of the input as well, or the bytes of a
    file deleted meanwhile stay held as long as the batch record (days), as if still read."""
    lines = [_line(i, UNSERVED) for i in range(2)]
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    wait_batch(openai_client, batch.id, statuses=("in_progress",), timeout=30)
    openai_client.files.delete(upload.id)
    assert redis_client.exists(blob_key(upload.id))  # the open batch still reads it
    # the state such a finalize leaves: final, still open (due now), the input still held
    redis_client.hset(b.batch_key(batch.id), mapping={"status": "cancelled"})
    redis_client.zadd(b.open_batches_key(), {batch.id: p.now()})
    wait_for(lambda: redis_client.zscore(b.open_batches_key(), batch.id) is None, 30, "the sweep")
    assert not redis_client.exists(blob_key(upload.id))  # deleted file: its bytes go now
