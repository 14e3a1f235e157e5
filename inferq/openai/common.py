"""What every endpoint family shares: the job request base, usage objects, and the one
mapping of a pydantic validation error to a 400 (HTTP bodies, job bodies, batch lines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inferq.errors import ServiceError, bad_request

# FastAPI puts where a value came from first; a job body's fields sit under "body".
_SOURCES = ("body", "query", "path", "header")

M = TypeVar("M", bound=BaseModel)

# Integer bounds of the wire: JSON allows any integer, the queue's JSON (orjson) and the
# workers take 64-bit ones; counts are bounded far below that.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
COUNT_MAX = 2**31 - 1

# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


# How deep a body's JSON may nest (objects and arrays): far past any real JSON schema (OpenAI's
# strict mode allows 10 levels of schema, 20 of JSON), well inside what pydantic serializes
# (255: a deeper job request could not be stored, a 500).
MAX_NESTING = 128


def body_problem(value: Any, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """What makes a parsed JSON body unusable, found in one walk, or None:

    * ``("deep", path)`` where it nests (objects and arrays) past :data:`MAX_NESTING` levels;
      the walk stops there, so a deep body cannot exhaust the stack;
    * ``("unicode", path)`` where a string is not Unicode text (a lone UTF-16 surrogate such
      as ``"\\ud800"``, which ``json.loads`` accepts and UTF-8 cannot hold).

    Paths read like ``messages[0].content``."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ("unicode", path)
        return None
    if isinstance(value, dict | list) and depth > MAX_NESTING:
        return ("deep", path)
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and body_problem(key) is not None:
                return ("unicode", path or "body")
            if (found := body_problem(item, where, depth + 1)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := body_problem(item, f"{path}[{index}]", depth + 1)) is not None:
                return found
    return None


class WireRequest(BaseModel):
    """Base of the bodies clients send: a string that is not Unicode text anywhere in the
    body (declared fields or extras), or JSON nested past :data:`MAX_NESTING`, is a 400
    naming where it is, before any field is read."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        if (problem := body_problem(data)) is not None:
            kind, where = problem
            field = where.split(".")[0].split("[")[0] or None
            if kind == "deep":
                raise bad_request(
                    f"invalid value for '{field}': JSON nested deeper than {MAX_NESTING} levels",
                    param=field,
                    code="invalid_value",
                )
            raise bad_request(
                f"invalid value for '{where}': the string is not valid Unicode "
                "(a lone UTF-16 surrogate)",
                param=field,
                code="invalid_value",
            )
        return data


class JobRequest(BaseModel):
    """The normalised request a worker receives (built by the API, parsed once by the worker).

    It travels as JSON in the job hash; ``model`` is the catalog name of the serving model.
    """

    model_config = ConfigDict(extra="ignore")

    model: str

    @classmethod
    def parse(cls, wire: dict[str, Any]) -> Self:
        return cls.model_validate(wire)

    def wire(self) -> dict[str, Any]:
        """The JSON-able form stored in the job hash."""
        return self.model_dump(mode="json")


def usage(prompt_tokens: int, completion_tokens: int | None = None) -> dict[str, int]:
    """OpenAI's ``usage``: prompt only (embeddings) or prompt + completion (chat)."""
    if completion_tokens is None:
        return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _location(loc: Sequence[Any]) -> list[str]:
    parts = [str(x) for x in (loc[1:] if loc and loc[0] in _SOURCES else loc)]
    # Drop pydantic's union branch names (e.g. "str", "list[str]", "RerankDocument").
    return [
        x
        for x in parts
        if not any(c in x for c in "[]") and not x[:1].isupper() and x not in ("str", "int")
    ]


def validation_error(errors: Sequence[dict[str, Any]], *, under: str = "") -> ServiceError:
    """The 400 for a failed validation, naming the first bad field as OpenAI does (the
    top-level field in ``param``). ``under`` prefixes the location (``"body"`` for the body
    of a ``POST /v1/jobs`` request)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    location = _location(tuple(first.get("loc", ())))
    if under:
        location = [under, *location]
    param = ".".join(location[:2]) if under else (location[0] if location else None)
    where = ".".join(location)
    code = "invalid_value"
    if first.get("type") == "json_invalid":
        param, message, code = None, "the request body is not valid JSON", "invalid_json"
    elif first.get("type") == "missing" and not location:  # no body at all
        param, message, code = None, "the request body is empty: send a JSON object", "invalid_json"
    elif first.get("type") == "missing":
        message = f"missing required parameter '{where}'"
    else:
        message = f"invalid value for '{where}': {first.get('msg')}" if where else first["msg"]
    return ServiceError(400, message, param=param, code=code)


def validated(schema: type[M], body: Any, *, under: str = "") -> M:
    """``body`` validated by ``schema``, or the 400 of :func:`validation_error`."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors(), under=under) from None
