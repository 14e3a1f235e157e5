"""The speech-to-text form (``POST /v1/audio/transcriptions`` and ``/translations``, and their
job variants): the multipart fields besides ``file``, validated, and the form's OpenAPI schema.

The upload itself is streamed into the blob store by the API (never held whole), so these
models describe the small fields only; :func:`parse_form` validates them once they are read
(``fields`` as the multipart parser collects them: every value of every name). Errors are
400s that name the field, as OpenAI's do.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inferq.audio import RESPONSE_FORMATS, TIMESTAMP_GRANULARITIES
from inferq.errors import ServiceError, bad_request
from inferq.openai.common import Metadata

ResponseFormat = Literal[RESPONSE_FORMATS]
Granularity = Literal[TIMESTAMP_GRANULARITIES]

# Form names that may repeat, and the other name some clients send them under.
_LIST_FIELDS = {"timestamp_granularities[]": "timestamp_granularities", "include[]": "include"}
# Object parameters, which clients flatten into bracketed names (``chunking_strategy[type]``).
_OBJECT_FIELDS = ("chunking_strategy",)
_BRACKETED = re.compile(r"^([a-z_]+)\[([a-z_]*|\d+)\]$")

# OpenAI's server_vad defaults, for the fields a server_vad object leaves out.
SERVER_VAD_DEFAULTS = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200}


class ServerVad(BaseModel):
    """``chunking_strategy: {"type": "server_vad", ...}``, mapped onto the speech pipeline's
    voice activity detection (Silero VAD): ``threshold`` (speech probability of a frame),
    ``silence_duration_ms`` (the pause that ends a speech region), ``prefix_padding_ms``
    (audio kept before and after each region)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"]
    threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)

    def vad(self) -> dict[str, float]:
        """The handlers' VAD parameters (``handlers.speech.vad.VadParameters``)."""
        given = {**SERVER_VAD_DEFAULTS, **self.model_dump(exclude_none=True)}
        return {
            "threshold": given["threshold"],
            "min_silence_ms": given["silence_duration_ms"],
            "speech_pad_ms": given["prefix_padding_ms"],
        }


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
    chunking_strategy: Literal["auto"] | ServerVad | None = Field(
        None,
        description="'auto' (the pipeline's VAD) or a server_vad object (as JSON, or as "
        "chunking_strategy[type], chunking_strategy[threshold], ... fields)",
    )
    # ``logprobs`` in the json response: each generated text token's {token, logprob, bytes}
    # where the handler has them (WhisperASR); see TranscriptionJob.logprobs.
    include: list[Literal["logprobs"]] = Field(default_factory=list, alias="include[]")
    user: str | None = None

    @field_validator("chunking_strategy", mode="before")
    @classmethod
    def _object_as_json(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return _json_value(value)
        return value

    def vad(self) -> dict[str, float] | None:
        """The VAD parameters the request asks for; None: the pipeline's own."""
        strategy = self.chunking_strategy
        return strategy.vad() if isinstance(strategy, ServerVad) else None

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
            return _json_value(value)
        return value

    @classmethod
    def multipart_schema(cls) -> dict[str, Any]:
        """The form as an OpenAPI ``multipart/form-data`` schema (with ``file``)."""
        schema = cls.model_json_schema(by_alias=True)
        schema["properties"] = {
            "file": {"type": "string", "format": "binary", "title": "File"},
            **schema["properties"],
        }
        for name in ("metadata", "chunking_strategy"):  # JSON objects, sent as strings
            schema["properties"][name] = {
                "type": "string",
                "title": name.replace("_", " ").capitalize(),
                "description": cls.model_fields[name].description,
            }
        schema.pop("$defs", None)
        schema["required"] = ["file", *schema.get("required", [])]
        return schema


def _json_value(text: str) -> Any:
    """A form field's JSON, or a ValueError (the field's 400) when it is not JSON or nests
    deeper than the parser goes (a RecursionError, which was a 500)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None


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
    "include[]": "include may only hold 'logprobs'",
    "chunking_strategy": "chunking_strategy must be 'auto' or an object {type: 'server_vad', "
    "threshold (0-1), prefix_padding_ms, silence_duration_ms}",
}
_PARAMS = {"timestamp_granularities[]": "timestamp_granularities", "include[]": "include"}


def parse_form(
    fields: dict[str, list[str]], form: type[TranslationForm]
) -> TranslationForm | TranscriptionForm:
    """Validate the form's fields: single values stripped (an empty one counts as absent),
    the repeatable ones collected under either of their names; checks across fields too."""
    names = _form_names(form)
    data: dict[str, Any] = {}
    for name, values in fields.items():
        key, member = _form_key(names, name)
        if key is None:
            what = "transcriptions" if issubclass(form, TranscriptionForm) else "translations"
            raise bad_request(f"unknown parameter '{name}' for {what}", param=name)
        if key in _LIST_FIELDS:
            data.setdefault(key, []).extend(v.strip() for v in values)
        elif len(values) > 1:
            raise bad_request(f"'{name}' was given more than once", param=name)
        elif member is not None:  # one member of an object parameter
            target = data.setdefault(key, {})
            if not isinstance(target, dict):
                raise bad_request(f"'{key}' was given more than once", param=key)
            target[member] = values[0].strip()
        elif value := values[0].strip():
            if key in data:
                raise bad_request(f"'{key}' was given more than once", param=key)
            data[key] = value
    try:
        parsed = form.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc) from None
    _check_across(parsed)
    return parsed


def _form_key(names: dict[str, str], name: str) -> tuple[str | None, str | None]:
    """(the key a form name's values go under, the object member it sets or None): also
    ``object[member]`` for object parameters and ``list[0]`` for repeatable ones, as
    clients flatten them."""
    if name in names:
        return names[name], None
    match = _BRACKETED.match(name)
    if match is None:
        return None, None
    base, inner = match.groups()
    if base in _OBJECT_FIELDS and base in names and inner and not inner.isdigit():
        return base, inner
    if inner.isdigit() and f"{base}[]" in names:
        return names[f"{base}[]"], None
    return None, None


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
    if "logprobs" in form.include and form.response_format != "json" and not form.stream:
        raise bad_request("include[]=logprobs works with response_format 'json'", param="include")
