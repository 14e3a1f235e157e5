"""The speech-to-text form (``POST /v1/audio/transcriptions`` and ``/translations``, and their
job variants): the multipart fields besides ``file``, validated, and the form's OpenAPI schema.

The upload itself is streamed into the blob store by the API (never held whole), so these
models describe the small fields only; :func:`parse_form` validates them once they are read
(``fields`` as the multipart parser collects them: every value of every name). Errors are
400s that name the field, as OpenAI's do.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inferq.audio import RESPONSE_FORMATS, TIMESTAMP_GRANULARITIES
from inferq.errors import ServiceError, bad_request
from inferq.openai.common import Metadata

ResponseFormat = Literal[RESPONSE_FORMATS]
Granularity = Literal[TIMESTAMP_GRANULARITIES]

# Form names that may repeat, and the other name some clients send them under.
_LIST_FIELDS = {"timestamp_granularities[]": "timestamp_granularities", "include[]": "include"}


class TranslationForm(BaseModel):
    """The fields of ``POST /v1/audio/translations`` (the audio is ``file``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    stream: bool = Field(False, description="sync routes only")
    metadata: Metadata | None = Field(
        None, description="job routes only: a JSON object of string values"
    )
    # Sent by some OpenAI clients; nothing to do with Whisper models (accepted, ignored).
    chunking_strategy: str | None = None
    include: list[str] = Field(default_factory=list, alias="include[]")
    user: str | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _strict_boolean(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lower() in ("false", "0"):
                return False
            if value.lower() in ("true", "1"):
                return True
            raise ValueError("expected true or false")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("not JSON") from None
        return value

    @classmethod
    def multipart_schema(cls) -> dict[str, Any]:
        """The form as an OpenAPI ``multipart/form-data`` schema (with ``file``)."""
        schema = cls.model_json_schema(by_alias=True)
        schema["properties"] = {
            "file": {"type": "string", "format": "binary", "title": "File"},
            **schema["properties"],
        }
        schema["properties"]["metadata"] = {
            "type": "string",
            "title": "Metadata",
            "description": cls.model_fields["metadata"].description,
        }
        schema["required"] = ["file", *schema.get("required", [])]
        return schema


class TranscriptionForm(TranslationForm):
    """The fields of ``POST /v1/audio/transcriptions`` (the audio is ``file``)."""

    language: str | None = Field(None, description="ISO-639-1 code")
    timestamp_granularities: list[Granularity] = Field(
        default_factory=list, alias="timestamp_granularities[]"
    )


_MESSAGES = {
    "model": "missing required parameter 'model'",
    "response_format": f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
    "temperature": "temperature must be a number from 0 to 1",
    "timestamp_granularities[]": "timestamp_granularities must be 'segment' and/or 'word'",
    "stream": "invalid value for 'stream': expected true or false",
    "metadata": "metadata must be a JSON object of at most 16 string values (keys up to 64 "
    "characters, values up to 512)",
}
_PARAMS = {"timestamp_granularities[]": "timestamp_granularities"}


def parse_form(
    fields: dict[str, list[str]], form: type[TranslationForm]
) -> TranslationForm | TranscriptionForm:
    """Validate the form's fields: single values stripped (an empty one counts as absent),
    the repeatable ones collected under either of their names; checks across fields too."""
    names = _form_names(form)
    data: dict[str, Any] = {}
    for name, values in fields.items():
        key = names.get(name)
        if key is None:
            what = "transcriptions" if issubclass(form, TranscriptionForm) else "translations"
            raise bad_request(f"unknown parameter '{name}' for {what}", param=name)
        if key in _LIST_FIELDS:
            data.setdefault(key, []).extend(v.strip() for v in values)
        elif len(values) > 1:
            raise bad_request(f"'{name}' was given more than once", param=name)
        elif value := values[0].strip():
            data[key] = value
    try:
        parsed = form.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc) from None
    _check_across(parsed)
    return parsed


def _form_names(form: type[TranslationForm]) -> dict[str, str]:
    """Each name the form accepts -> the key its values go under."""
    names = {info.alias or name: info.alias or name for name, info in form.model_fields.items()}
    names.update({other: key for key, other in _LIST_FIELDS.items() if key in names})
    return names


def _field_error(exc: ValidationError) -> ServiceError:
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first.get("loc") else ""
    message = _MESSAGES.get(name) or f"invalid value for '{name}': {first.get('msg')}"
    return bad_request(message, param=_PARAMS.get(name, name) or None)


def _check_across(form: TranslationForm) -> None:
    if getattr(form, "timestamp_granularities", None) and form.response_format != "verbose_json":
        raise bad_request(
            "timestamp_granularities need response_format 'verbose_json'",
            param="timestamp_granularities",
        )
    if form.stream and form.response_format not in ("json", "text"):
        raise bad_request("stream=true works with response_format 'json' or 'text'", param="stream")
