"""The API's shape: no route imports another, the SSE relay imports no route, and the audio
form model drives the audio routes' validation and OpenAPI schema."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from inferq.errors import ServiceError
from inferq.openai.audio import TranscriptionForm, TranslationForm, parse_form

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_route_imports_another_and_the_relay_imports_none():
    routes = sorted((ROOT / "api" / "routes").glob("*.py"))
    for path in routes:
        if path.name == "__init__.py":
            continue
        imported = {n for n in _imports(path) if n.startswith("api.routes")}
        assert not imported, f"{path.name} imports {imported}"
    for module in (
        "sse",
        "endpoints",
        "prepare",
        "submit",
        "generation",
        "audio_form",
        "responses",
    ):
        imported = {n for n in _imports(ROOT / "api" / f"{module}.py") if "routes" in n}
        assert not imported, f"api/{module}.py imports {imported}"


def test_audio_form_validates_and_names_the_field():
    form = parse_form(
        {
            "model": [" m "],
            "timestamp_granularities[]": ["word"],
            "timestamp_granularities": ["word", "segment"],
            "response_format": ["verbose_json"],
            "stream": [""],
            "temperature": ["0.5"],
        },
        TranscriptionForm,
    )
    assert form.model == "m" and form.temperature == 0.5 and not form.stream
    assert form.timestamp_granularities == ["word", "word", "segment"]
    cases = [
        ({"model": ["m"], "temperature": ["3"]}, TranscriptionForm, "temperature"),
        ({"model": ["m"], "response_format": ["xml"]}, TranscriptionForm, "response_format"),
        ({"model": ["m"], "stream": ["yes"]}, TranscriptionForm, "stream"),
        ({"model": ["m"], "metadata": ['{"a": 1}']}, TranscriptionForm, "metadata"),
        ({"model": ["m"], "timestamp_granularities[]": ["word"]}, TranscriptionForm, None),
        ({"model": ["m"], "timestamp_granularities[]": ["char"]}, TranscriptionForm, None),
        ({"model": ["m"], "language": ["en"]}, TranslationForm, "language"),
        ({"model": ["a", "b"]}, TranscriptionForm, "model"),
        ({"prompt": ["p"]}, TranscriptionForm, "model"),
        ({"model": ["m"], "bogus": ["1"]}, TranscriptionForm, "bogus"),
    ]
    for fields, schema, param in cases:
        with pytest.raises(ServiceError) as error:
            parse_form(fields, schema)
        assert error.value.status == 400
        assert error.value.param == (param or "timestamp_granularities")


def test_openapi_shows_the_audio_form_fields():
    from api.app import create_app

    schema = create_app().openapi()
    for path in ("/v1/audio/transcriptions", "/v1/jobs/audio/transcriptions"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        properties = body["schema"]["properties"]
        assert {"file", "model", "language", "timestamp_granularities[]", "stream"} <= set(
            properties
        )
        assert properties["file"]["format"] == "binary"
        assert set(body["schema"]["required"]) == {"file", "model"}
    translation = schema["paths"]["/v1/audio/translations"]["post"]["requestBody"]
    properties = translation["content"]["multipart/form-data"]["schema"]["properties"]
    assert "language" not in properties and "response_format" in properties
