"""A handler written by a user from ``handlers/base.py`` alone is served.

The module below lives outside the project (a temporary folder on ``PYTHONPATH``), implements
only what each family's protocol lists (no base class, none of the project's helpers), and is
named by its own catalog. A real worker loads it, a real API serves it, the official client
drives it, and the answers are checked for what the handler computed.
"""

from __future__ import annotations

import hashlib
import io
import os
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from inferq.devstack import stop

USER_MODULE = '''
"""acme_models: one handler per family, written from inferq's handlers/base.py protocols."""
import hashlib
import wave

import numpy as np

from handlers.base import ChatGeneration, Family, RerankResult, SpeechResult, SpeechSegment


def _vector(text, dim):
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class HashEmbedder:
    family = Family.EMBEDDINGS

    def __init__(self, source, device, **options):
        self.capabilities = ["text-embedding"]
        self.dim = int(options.get("dim", 16))

    def token_lengths(self, texts):
        return [len(t.split()) for t in texts]

    def embed_batch(self, texts):
        return np.stack([_vector(t, self.dim) for t in texts])


class OverlapReranker:
    family = Family.RERANK

    def __init__(self, source, device, **options):
        self.capabilities = ["rerank"]

    def token_lengths(self, pairs):
        return [len(q.split()) + len(d.split()) for q, d in pairs]

    def score_batch(self, pairs):
        return np.array(
            [len(set(q.lower().split()) & set(d.lower().split())) for q, d in pairs],
            dtype=np.float32,
        )


class _Row:
    def __init__(self, key, request):
        self.key = key
        self.request = request
        last = [m for m in request.messages if m["role"] == "user"][-1]["content"]
        self.words = str(last).upper().split()[: request.max_new_tokens]
        self.sent = 0


class _ShoutBatch:
    """Answers each request with its last user message in capitals, one word per step."""

    def __init__(self):
        self.rows = []

    @property
    def joinable(self):
        return len(self.rows) < 4

    def __len__(self):
        return len(self.rows)

    def add(self, items):
        self.rows.extend(_Row(key, request) for key, request in items)
        return []

    def step(self):
        ended = []
        for row in list(self.rows):
            word = row.words[row.sent]
            if row.request.on_text is not None:
                row.request.on_text(word if row.sent == 0 else " " + word)
            row.sent += 1
            if row.sent == len(row.words):
                self.rows.remove(row)
                generation = ChatGeneration(
                    text=" ".join(row.words),
                    prompt_tokens=len(row.words),
                    completion_tokens=len(row.words),
                )
                ended.append((row.key, generation))
        return ended


class ShoutChat:
    family = Family.CHAT

    def __init__(self, source, device, **options):
        self.capabilities = ["chat-completion"]
        self.generation_defaults = {}

    def new_batch(self):
        return _ShoutBatch()


class LengthTranscriber:
    family = Family.SPEECH

    def __init__(self, source, device, **options):
        self.capabilities = ["audio-transcription"]

    def transcribe(
        self,
        audio_path,
        *,
        language,
        prompt,
        temperature,
        task,
        timestamp_granularity,
        cancel_event=None,
    ):
        with wave.open(audio_path) as f:
            seconds = f.getnframes() / f.getframerate()
        text = f"heard {seconds:.1f} seconds"
        segment = SpeechSegment(id=0, start=0.0, end=seconds, text=text)
        return SpeechResult(text=text, language="en", duration=seconds, segments=[segment])
'''

MODELS = {
    "acme-embed": ("acme_models.HashEmbedder", {"dim": 24}),
    "acme-rerank": ("acme_models.OverlapReranker", {}),
    "acme-chat": ("acme_models.ShoutChat", {}),
    "acme-asr": ("acme_models.LengthTranscriber", {}),
}


def expected_vector(text: str, dim: int) -> np.ndarray:
    """What the user's embedder returns for ``text`` (computed here independently)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def acme(stack, tmp_path_factory):
    """An API and a worker on a catalog holding only the user's models (stopped after)."""
    folder: Path = tmp_path_factory.mktemp("acme")
    (folder / "acme_models.py").write_text(USER_MODULE)
    catalog = {
        "models": [
            {
                "name": name,
                "hf_repo_id": f"acme/{name}",
                "handler": handler,
                "skip_download": True,
                "options": options,
            }
            for name, (handler, options) in MODELS.items()
        ]
    }
    (folder / "models.yaml").write_text(yaml.safe_dump(catalog))
    env = {
        "MODEL_CONFIG_PATH": str(folder / "models.yaml"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
    }
    worker = stack.start_worker(list(MODELS), **env)
    base = stack.start_api(**env)
    api = stack.procs[-1]
    import openai

    yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    # Its catalog holds only the user's models: left running, this worker would take the
    # shared control queue's batch tasks of later tests and judge their models unknown.
    for proc in (worker, api):
        stop(proc)
        stack.procs.remove(proc)


def test_the_users_embedder_is_served_with_its_own_vectors(acme):
    texts = ["the first text", "a second, longer text"]
    response = acme.embeddings.create(model="acme-embed", input=texts)
    assert [d.index for d in response.data] == [0, 1]
    for text, item in zip(texts, response.data, strict=True):
        got = np.array(item.embedding, dtype=np.float32)
        assert got.shape == (24,)
        assert float(got @ expected_vector(text, 24)) > 0.9999
    assert response.usage.prompt_tokens == 3 + 4  # the handler's token_lengths


def test_the_users_reranker_orders_by_its_scores(acme):
    import httpx

    response = httpx.post(
        f"{acme.base_url}rerank",
        json={
            "model": "acme-rerank",
            "query": "red apples in a basket",
            "documents": ["blue sky", "red apples", "a basket of red apples"],
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [2, 1, 0]
    assert [r["relevance_score"] for r in results] == pytest.approx([4.0, 2.0, 0.0], abs=1e-3)


def test_the_users_chat_model_answers_and_streams(acme):
    messages = [{"role": "user", "content": "please shout this back"}]
    reply = acme.chat.completions.create(model="acme-chat", messages=messages, max_tokens=16)
    assert reply.choices[0].message.content == "PLEASE SHOUT THIS BACK"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 4

    stream = acme.chat.completions.create(
        model="acme-chat", messages=messages, max_tokens=2, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "PLEASE SHOUT"


def test_the_users_transcriber_hears_the_upload(acme):
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.zeros(16000 * 3, dtype=np.int16).tobytes())
    result = acme.audio.transcriptions.create(
        model="acme-asr", file=("three.wav", buffer.getvalue(), "audio/wav")
    )
    assert result.text == "heard 3.0 seconds"
