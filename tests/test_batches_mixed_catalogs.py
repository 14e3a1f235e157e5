"""Workers that share one Redis but not one catalog (a rolling deploy adding a model).

Any worker plans any batch (the control queue). A worker whose catalog lacks a model that
another worker of the same Redis serves must still plan a batch naming it: the model is
judged by what the workers announced, not by the planner's own catalog alone.

Deterministic: the only live worker while the batch is planned is the one that lacks the
model; the worker serving it comes back afterwards and runs the lines.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import openai
import pytest
import yaml

from inferq.devstack import ROOT, stop
from tests.batches_support import jsonl, wait_batch
from tests.private_stack import start_private_stack

NEW_MODEL = "tiny-bert-mean"  # in the full catalog only
OLD_MODEL = "tiny-bert-cls"  # in both


def _lines(model: str, texts: list[str]) -> bytes:
    return jsonl(
        {
            "custom_id": f"{model}-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": model, "input": text},
        }
        for i, text in enumerate(texts)
    )


@pytest.fixture()
def mixed(tmp_path, stack_catalog, tiny_embedders):
    """A private Redis and API on the full catalog; ``narrow`` is a catalog without
    ``NEW_MODEL`` (what an old worker of a rolling deploy still reads)."""
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    shutil.copy(ROOT / "models.yaml", narrow / "models.yaml")
    entry = {
        "name": OLD_MODEL,
        "hf_repo_id": "inferq-tests/tiny-bert-cls",
        "handler": "handlers.embedding.HFEmbeddingModel",
        "pooling": "cls",
        "local_dir": str(tiny_embedders["bert"]),
    }
    (narrow / "models.local.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    stack = start_private_stack(tmp_path, tiny_embedders["bert"], [], catalog=stack_catalog)
    try:
        yield stack, narrow / "models.yaml"
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.close()


def test_a_worker_without_the_model_in_its_catalog_plans_a_batch_another_worker_serves(mixed):
    stack, narrow = mixed
    client = openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=60)
    texts = ["the new worker embeds this", "and this line too", "a third one"]

    new_worker = stack.start_worker([NEW_MODEL])  # announces the model, then goes away
    expected = [d.embedding for d in client.embeddings.create(model=NEW_MODEL, input=texts).data]
    stop(new_worker, timeout=20)
    old_worker = stack.start_worker([OLD_MODEL], MODEL_CONFIG_PATH=str(narrow))

    body = _lines(NEW_MODEL, texts) + _lines(OLD_MODEL, ["an old model's line"])
    upload = client.files.create(file=("in.jsonl", body), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    planned = wait_batch(client, batch.id, ("in_progress", "failed", "completed"), timeout=60)
    assert planned.status == "in_progress", planned.errors
    assert f"batch {batch.id}: 4 lines in 2 parts" in old_worker.log_path.read_text()

    stack.start_worker([NEW_MODEL])  # the new worker is back: it runs its lines
    done = wait_batch(client, batch.id, ("completed", "failed", "expired"), timeout=120)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 0)
    rows = {
        row["custom_id"]: row["response"]["body"]
        for row in map(json.loads, client.files.content(done.output_file_id).text.splitlines())
    }
    for i, vector in enumerate(expected):
        got = rows[f"{NEW_MODEL}-{i}"]
        assert got["model"] == NEW_MODEL
        np.testing.assert_allclose(got["data"][0]["embedding"], vector, atol=1e-5)
    assert rows[f"{OLD_MODEL}-0"]["model"] == OLD_MODEL


def test_a_model_no_worker_ever_announced_still_fails_the_line(mixed):
    stack, narrow = mixed
    client = openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=60)
    stack.start_worker([OLD_MODEL], MODEL_CONFIG_PATH=str(narrow))
    upload = client.files.create(file=("in.jsonl", _lines("no-such-model", ["x"])), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_batch(client, batch.id, ("failed", "completed", "in_progress"), timeout=60)
    assert done.status == "failed"
    assert [(e.code, e.line) for e in done.errors.data] == [("model_not_found", 1)]
    assert "not served" in done.errors.data[0].message
