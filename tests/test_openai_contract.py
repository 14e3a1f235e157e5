"""The OpenAI wire contract (``inferq/openai``) on its own: no stack, no Redis."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from handlers.base import InvalidInput
from handlers.proxy import UpstreamError
from inferq.errors import ServiceError
from inferq.openai.chat import (
    STRUCTURED_OUTPUTS_UNSUPPORTED,
    ChatCompletionRequest,
    ChatJob,
    check_chat_for_model,
    completion_body,
)
from inferq.openai.common import validated, validation_error
from inferq.openai.embeddings import EmbeddingJob, EmbeddingRequest
from inferq.openai.rerank import RerankJob, RerankRequest, rerank_body
from inferq.openai.transcripts import TranscriptionJob, render, subtitles
from inferq.settings import Settings
from workers.jobs import as_service_error

ROOT = Path(__file__).resolve().parents[1]


def _errors(schema, body):
    with pytest.raises(ValidationError) as caught:
        schema.model_validate(body)
    return caught.value.errors()


def test_one_validation_mapper_names_the_field_everywhere():
    errors = _errors(EmbeddingRequest, {"model": "m", "input": "x", "dimensions": 0})
    http = validation_error([{**errors[0], "loc": ("body", *errors[0]["loc"])}])
    line = validation_error(errors)
    job = validation_error(errors, under="body")
    assert (http.status, http.param, http.code) == (400, "dimensions", "invalid_value")
    assert line.param == "dimensions" and line.message == http.message
    assert job.param == "body.dimensions" and "'body.dimensions'" in job.message
    missing = validation_error(_errors(EmbeddingRequest, {"model": "m"}), under="body")
    assert missing.param == "body.input" and missing.message.startswith("missing required")
    with pytest.raises(ServiceError) as caught:
        validated(RerankRequest, {"model": "m", "query": "q", "documents": [1.5]})
    assert caught.value.param == "documents"


def test_job_requests_travel_as_json_and_parse_back():
    job = EmbeddingRequest(model="m", input="hello", dimensions=8).normalized(
        max_inputs=4, max_chars=100
    )
    assert EmbeddingJob.parse(job.wire()) == job
    assert job.upstream_body() == {"input": ["hello"], "encoding_format": "float", "dimensions": 8}
    rerank = RerankRequest(model="m", query="q", documents=["a", {"text": "b"}]).normalized(
        max_documents=4, max_chars=100
    )
    assert RerankJob.parse(rerank.wire()).pairs() == [("q", "a"), ("q", "b")]
    chat = ChatCompletionRequest(
        model="m", messages=[{"role": "developer", "content": "hi"}], stop="x", logit_bias={"1": 2}
    ).normalized(max_stop=4)
    back = ChatJob.parse({**chat.wire(), "unknown": "ignored"})
    assert back.messages == [{"role": "system", "content": "hi"}]
    assert (back.stop, back.logit_bias, back.remote_images) == (["x"], {"1": 2.0}, False)


def test_structured_outputs_are_refused_with_one_code():
    job = ChatJob(
        model="m", messages=[{"role": "user", "content": "x"}], response_format={"type": "json"}
    )
    with pytest.raises(ServiceError) as caught:
        check_chat_for_model(
            job, model="m", structured_outputs=False, capabilities=[], settings=Settings()
        )
    assert caught.value.code == STRUCTURED_OUTPUTS_UNSUPPORTED == "unsupported_parameter"


def test_response_bodies():
    body = completion_body("job_abc", "m", 7, "hi", "stop", 3, 2)
    assert body["id"] == "chatcmpl-abc"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    job = RerankJob(model="m", query="q", documents=["a", "b"], return_documents=False)
    ranked = rerank_body(job, [(1, 0.9), (0, 0.1)], 5, "abc")
    assert ranked["id"] == "rerank-abc" and ranked["results"][0] == {
        "index": 1,
        "relevance_score": 0.9,
    }
    segments = [{"start": 0.0, "end": 1.5, "text": " Hello"}, {"start": 2, "end": 3, "text": " "}]
    assert subtitles(segments, "srt") == "1\n00:00:00,000 --> 00:00:01,500\nHello\n"
    assert subtitles(segments, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n")
    audio = TranscriptionJob(model="m", task="translate", blob="b", response_format="json")
    assert render(audio, language="german", duration=1.2, segments=segments, words=[]) == (
        b'{"text":"Hello"}'
    )


def test_handler_errors_map_once():
    assert as_service_error(InvalidInput("bad", param="x", code="c")).body()["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "x",
        "code": "c",
    }
    assert as_service_error(UpstreamError(502, "down")).code == "upstream_error"
    assert as_service_error(RuntimeError("boom")).status == 500


def test_workers_and_the_contract_never_import_api():
    for folder in ("workers", "inferq"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not any(n == "api" or n.startswith("api.") for n in names), path


def test_final_errors_tell_the_sdks_not_to_retry_even_after_a_job_record():
    """``final`` is a property of the error: it survives the failed job's record (the worker
    writes it, the API reads it back) and becomes ``x-should-retry: false``."""
    final = ServiceError(504, "ran past its limit", code="timeout", headers={"A": "1"}, final=True)
    assert final.headers == {"A": "1", "x-should-retry": "false"}
    back = ServiceError.from_record(final.to_record())
    assert back.final and back.headers["x-should-retry"] == "false"
    assert back.body() == final.body()  # the client's error object is unchanged
    plain = ServiceError.from_record(ServiceError(500, "boom").to_record())
    assert not plain.final and "x-should-retry" not in plain.headers
    assert "final" not in ServiceError(400, "x").to_record()


def test_a_cancelled_sync_request_is_a_final_409():
    from api.responses import sync_response
    from inferq import protocol as p

    record = {p.JobField.STATUS: b"cancelled", p.JobField.ID: b"job_1"}
    with pytest.raises(ServiceError) as caught:
        sync_response(record)
    assert caught.value.status == 409 and caught.value.headers["x-should-retry"] == "false"
