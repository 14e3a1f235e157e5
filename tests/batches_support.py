"""What the Batch API tests share."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable


def jsonl(lines: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def submit_batch(client, lines: Iterable[dict], endpoint: str):
    """A batch of ``lines`` for ``endpoint``, its input uploaded as a JSONL file first."""
    upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint=endpoint, completion_window="24h"
    )


def wait_batch(
    client,
    batch_id: str,
    statuses=("completed", "failed", "cancelled", "expired"),
    timeout: float = 180,
):
    """The batch once its status is one of ``statuses`` (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status}")
