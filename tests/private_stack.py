"""A stack of its own for the robustness tests: its own ``redis-server`` (AOF, in a temporary
directory, on a free port: the tests may kill it), an API and workers whose processes the
tests may kill, and models slow enough to be caught in the middle of a job."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import yaml

from inferq import protocol as p
from inferq.devstack import ROOT, redis_server_binary, spawn, stop, wait_http_ready
from tests.conftest import free_port

SLOW_CHAT = "slow-chat"  # the tiny random Llama, 20 ms per forward pass
CRASH_BERT = "crash-bert"  # tiny BERT, 0.15 s per forward pass, dies on the text "CRASH"
WHISPER = "tiny-whisper-random"
FAST_PRESENCE = {
    "HEARTBEAT_INTERVAL_SEC": "0.5",
    "HEARTBEAT_TTL_SEC": "3",
    "WORKER_CONCURRENCY": "4",
    # the default: a dead worker's jobs must come back through its lapsed leases, not this
    "VISIBILITY_TIMEOUT_SEC": "300",
}


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first truthy value, polled every 50 ms for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def slow_chat_no_eos() -> dict[str, int]:
    """A ``logit_bias`` that keeps ``SLOW_CHAT`` from ending its answer: a sampled random
    model may otherwise stop after a few dozen tokens, before a test could act mid-answer."""
    from transformers import AutoTokenizer

    from tests.tiny.chat import tiny_llama_chat_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_chat_dir())
    return {str(tokenizer.convert_tokens_to_ids(t)): -100 for t in ("<|im_end|>", "<|endoftext|>")}


def private_catalog(folder: Path, bert_dir: Path) -> Path:
    from tests.tiny.chat import tiny_llama_chat_dir
    from tests.tiny.whisper import tiny_whisper_dir

    shutil.copy(ROOT / "models.yaml", folder / "models.yaml")
    local = [
        {
            "name": SLOW_CHAT,
            "hf_repo_id": "inferq-tests/slow-chat",
            "handler": "tests.crashing.SlowChat",
            "local_dir": str(tiny_llama_chat_dir()),
            "options": {"step_seconds": 0.02},
        },
        {
            "name": CRASH_BERT,
            "hf_repo_id": "inferq-tests/crash-bert",
            "handler": "tests.crashing.CrashingEmbedder",
            "local_dir": str(bert_dir),
            "options": {"slow_seconds": 0.15},
        },
        {
            "name": WHISPER,
            "hf_repo_id": "inferq-tests/tiny-whisper",
            "handler": "handlers.speech.WhisperASR",
            "local_dir": str(tiny_whisper_dir()),
            "options": {"beam_size": 1},
        },
    ]
    (folder / "models.local.yaml").write_text(yaml.safe_dump({"models": local}))
    return folder / "models.yaml"


@dataclass
class PrivateStack:
    folder: Path
    env: dict[str, str]
    redis_port: int
    redis_proc: subprocess.Popen | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    base_url: str = ""

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_connect_timeout=1)

    def start_redis(self) -> None:
        self.redis_proc = subprocess.Popen(
            [
                redis_server_binary(),
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--dir", str(self.folder), "--appendonly", "yes", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.redis.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def start_api(self, **env: str) -> str:
        port = free_port()
        log = self.folder / f"api-{port}.log"
        proc = spawn("api", {**self.env, "PORT": str(port), **env}, log_path=log)
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(f"{base}/health", timeout=120, proc=proc)
        return base

    def start_worker(self, models: list[str], **env: str) -> subprocess.Popen:
        log = self.folder / f"worker-{len(self.procs)}.log"
        proc = spawn("workers", {**self.env, "MODELS": ",".join(models), **env}, log_path=log)
        proc.log_path = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        member = f"worker@{socket.gethostname()}:{proc.pid}"
        deadline = time.monotonic() + 180
        while not all(self.redis.zscore(p.workers_key(m), member) for m in models):
            if proc.poll() is not None:
                raise RuntimeError(f"worker for {models} exited with {proc.returncode}")
            assert time.monotonic() < deadline, f"worker for {models} did not start"
            time.sleep(0.1)
        return proc

    def workers(self) -> list[subprocess.Popen]:
        return [w for w in self.procs if hasattr(w, "log_path") and w.poll() is None]

    def holder(self, job_id: str, timeout: float = 60) -> subprocess.Popen:
        """The live worker that started ``job_id`` (from its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in self.workers():
                if f"job {job_id} started" in worker.log_path.read_text(errors="replace"):
                    return worker
            time.sleep(0.1)
        raise AssertionError(f"no worker started {job_id}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:]
            for path in sorted(self.folder.glob("*.log"))
        )

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc, timeout=10)
        if self.redis_proc is not None:
            stop(self.redis_proc)


def start_private_stack(
    folder: Path, bert_dir: Path, workers: list[list[str]], catalog: Path | None = None
) -> PrivateStack:
    """Redis, an API and ``workers`` on ``catalog`` (default: :func:`private_catalog`)."""
    port = free_port()
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "MODEL_CONFIG_PATH": str(catalog or private_catalog(folder, bert_dir)),
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
        **FAST_PRESENCE,
    }
    stack = PrivateStack(folder, env, port)
    try:
        stack.start_redis()
        stack.base_url = stack.start_api()
        for models in workers:
            stack.start_worker(models)
    except BaseException:
        print(stack.logs())
        stack.close()
        raise
    return stack
