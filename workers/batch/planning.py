"""Planning a batch: every line of the input file validated (streaming), the file cut into
parts of consecutive lines of one model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from inferq import protocol as p
from inferq.blobs import Blobs
from inferq.catalog import Catalog
from inferq.settings import Settings

MAX_REPORTED_ERRORS = 100


class ModelNames:
    """Which model a batch line names: this worker's catalog first, then the models any
    worker sharing this Redis announced (``MODEL_INFO_KEY``, read once, on the first name the
    catalog lacks). Any worker plans any batch, and during a rolling deploy workers of one
    Redis need not share a catalog: a model only newer workers serve is still served."""

    def __init__(self, catalog: Catalog, read_announced: Callable[[], dict[str, dict]]):
        self.catalog = catalog
        self._read_announced = read_announced
        self._announced: dict[str, str] | None = None  # name or unique repo id -> name

    def resolve(self, name: str) -> str | None:
        entry = self.catalog.get(name)
        if entry is not None:
            return entry.name
        if self._announced is None:
            self._announced = _names_of(self._read_announced())
        return self._announced.get(name)


def _names_of(announced: dict[str, dict]) -> dict[str, str]:
    by_repo: dict[str, list[str]] = {}
    for model, info in announced.items():
        if repo := info.get("hf_repo_id"):
            by_repo.setdefault(repo, []).append(model)
    names = {repo: models[0] for repo, models in by_repo.items() if len(models) == 1}
    names.update({model: model for model in announced})
    return names


@dataclass
class Part:
    model: str
    start: int
    end: int = 0
    lines: int = 0
    inputs: int = 0
    first_line: int = 0


@dataclass
class Plan:
    parts: list[Part] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0


def _line_inputs(endpoint: str, body: dict[str, Any], settings: Settings) -> int:
    """A line's weight against ``BATCH_PART_INPUTS``: its texts, documents, or for chat a
    share that makes ``BATCH_PART_CHAT_LINES`` lines fill a part (each is a generation)."""
    if endpoint in (p.Endpoint.CHAT, p.Endpoint.COMPLETIONS):
        return max(1, settings.batch_part_inputs // max(1, settings.batch_part_chat_lines))
    if endpoint == p.Endpoint.EMBEDDINGS:
        value = body.get("input")
        return len(value) if isinstance(value, list) else 1
    documents = body.get("documents")
    return len(documents) if isinstance(documents, list) else 1


def _check_line(
    raw: bytes, number: int, endpoint: str, seen: set[str], names: ModelNames
) -> tuple[str, dict[str, Any]]:
    """(model name, body) of a valid line, else ValueError(code, message, param)."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("invalid_json", f"line {number} is not valid JSON", None) from None
    if not isinstance(line, dict):
        raise ValueError("invalid_request", f"line {number} is not a JSON object", None)
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("missing_custom_id", f"line {number} has no 'custom_id'", "custom_id")
    if custom_id in seen:
        raise ValueError(
            "duplicate_custom_id", f"line {number} repeats custom_id '{custom_id}'", "custom_id"
        )
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise ValueError("invalid_method", f"line {number}: 'method' must be POST", "method")
    if line.get("url") != endpoint:
        raise ValueError(
            "mismatched_url",
            f"line {number}: 'url' {line.get('url')!r} differs from the batch endpoint {endpoint}",
            "url",
        )
    body = line.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise ValueError("invalid_body", f"line {number}: 'body' needs a 'model'", "body")
    model = names.resolve(body["model"])
    if model is None:
        raise ValueError(
            "model_not_found", f"line {number}: model '{body['model']}' is not served", "body.model"
        )
    return model, body


def make_plan(blobs: Blobs, record: dict[str, str], names: ModelNames, settings: Settings) -> Plan:
    """Validate every line (streaming) and cut the file into parts of consecutive lines."""
    plan, seen = Plan(), set()
    endpoint = record["endpoint"]
    offset, number, current = 0, 0, None
    for raw in blobs.lines(record["input_file_id"]):
        start, offset = offset, offset + len(raw) + 1
        number += 1
        if not raw.strip():
            continue
        plan.lines += 1
        if plan.lines > settings.max_batch_lines:
            plan.errors.append(
                {
                    "code": "too_many_requests",
                    "message": f"the file has more than {settings.max_batch_lines} requests",
                    "param": None,
                    "line": number,
                }
            )
            break
        try:
            model, body = _check_line(raw, number, endpoint, seen, names)
        except ValueError as exc:
            code, message, param = exc.args
            if len(plan.errors) < MAX_REPORTED_ERRORS:
                plan.errors.append(
                    {"code": code, "message": message, "param": param, "line": number}
                )
            continue
        if plan.errors:
            continue  # still validating the rest, but no point cutting parts
        inputs = _line_inputs(endpoint, body, settings)
        if (
            current is None
            or current.model != model
            or current.lines >= settings.batch_part_lines
            or (current.lines and current.inputs + inputs > settings.batch_part_inputs)
        ):
            current = Part(model=model, start=start, first_line=number)
            plan.parts.append(current)
        current.end = offset
        current.lines += 1
        current.inputs += inputs
    if not plan.lines and not plan.errors:
        plan.errors.append(
            {
                "code": "empty_file",
                "message": "the input file has no requests",
                "param": None,
                "line": None,
            }
        )
    return plan
