"""All configuration, read once from the environment (and a ``.env`` file)."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, protected_namespaces=()
    )

    # What to serve
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated model names (or repo ids) a worker loads (required there).",
    )
    model_config_path: Path = Field(
        Path("models.yaml"),
        description="The catalog; models.local.yaml/.yml beside it is merged over it.",
    )
    model_device: str = Field(
        "auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps."
    )
    model_dtype: str = Field(
        "auto",
        pattern=r"^(auto|float32|bfloat16|float16)$",
        description="Weight dtype of local models whose catalog entry sets no torch_dtype: auto "
        "(bf16 on CPUs with AMX/AVX512-BF16 and on CUDA that supports it, fp16 on older CUDA, "
        "else fp32), float32, bfloat16, float16.",
    )
    hf_home: Path = Field(
        default_factory=lambda: Path(
            os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")
        ),
        description="Hugging Face cache root; weights live in HF_HOME/hub.",
    )
    auto_download_models: bool = Field(
        True, description="Workers download missing weights before loading (0: fail with a hint)."
    )

    # Queue
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Broker, job store and pub/sub. With REDIS_SENTINELS, only its database "
        "and password are used.",
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host:port of Redis Sentinels; set, every client (broker, "
        "jobs, pub/sub, streams) connects to the master they name and follows its failover.",
    )
    redis_master_name: str = Field(
        "inferq", description="The Sentinel master name (sentinel monitor <name> ...)."
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must acknowledge a new job before the API accepts it (Redis "
        "WAIT): so an accepted job survives a failover. 0: asynchronous replication only.",
    )
    redis_wait_timeout_ms: int = Field(
        250, ge=0, description="Longest the API waits for REDIS_WAIT_REPLICAS (then accepts)."
    )
    worker_redis_retry_sec: float = Field(
        30.0,
        description="How long a worker's Redis command retries while Redis is unreachable "
        "(e.g. during a Sentinel failover) before the job gives up.",
    )
    result_ttl_sec: int = Field(86400, description="How long jobs and their results are kept.")
    visibility_timeout_sec: int = Field(
        300,
        description="A job whose worker stopped renewing its lease (died) is redelivered after "
        "this. Running jobs are renewed every heartbeat, so it bounds recovery time, not job time.",
    )
    worker_concurrency: int = Field(
        32, description="Jobs a worker holds at once (threads; they share the model's batches)."
    )
    task_events: bool = Field(
        False,
        description="Celery task events (sent, received, started, succeeded) from the start, for "
        "`celery events`; they cost four Redis publishes per job. Flower switches the workers' "
        "events on by itself (its enable_events option), so it needs no setting here.",
    )
    publish_coalesce_max: int = Field(
        8,
        ge=1,
        description="Most interactive embeddings/rerank jobs of one model carried by one Celery "
        "message: jobs submitted while the API is publishing the model's previous message go "
        "out together in the next (each keeps its own record, cancel and result; a job alone "
        "goes out at once). 1: one message per job.",
    )
    max_deliveries: int = Field(
        3, description="A job whose worker died this many times is failed (poison job)."
    )
    heartbeat_interval_sec: float = Field(
        2.0, description="How often a worker announces its models."
    )
    heartbeat_ttl_sec: float = Field(10.0, description="A worker missing this long counts as gone.")

    # Embedding batching inside a worker
    embed_batch_tokens: int = Field(
        16384, ge=1, description="Token budget of one forward pass (batch size x padded length)."
    )
    embed_max_batch_size: int = Field(128, description="Most texts in one forward pass.")
    embed_max_padding: float = Field(
        1.3,
        ge=1.0,
        description="A pass of more than EMBED_MIN_BATCH_SIZE texts stops growing before its "
        "padded tokens exceed this many times its real tokens (other lengths get passes of "
        "their own: on CPU padding costs as much as text; with bf16 matrix units a pass's "
        "fixed cost makes wider passes worth some padding).",
    )
    embed_min_batch_size: int = Field(
        48, ge=1, description="A pass grows to this many texts whatever their padding."
    )
    embed_call_tokens: int = Field(
        -1,
        ge=-1,
        description="A forward pass is cut into calls over similar lengths wherever that saves "
        "more padded tokens than this per extra call (a call's own cost, in tokens). -1: auto "
        "(32 on CPU; 0 on GPUs); 0: one call per pass.",
    )
    embed_shape_tokens: int = Field(
        -1,
        ge=-1,
        description="Cutting a pass into calls charges this many tokens for a call of a size "
        "(rows x tokens) the batcher has not run yet: at bf16/fp16 a CPU compiles kernels per "
        "new size. -1: auto (64 with AMX, 16 on other CPUs, 0 where nothing compiles per "
        "size: fp32, GPUs, passes not cut); 0: off.",
    )
    embed_warm_up_tokens: int = Field(
        -1,
        ge=-1,
        description="At load an embedding or rerank model runs one lone input of every length "
        "up to this many tokens (within 2 s), so that a lone request's first call of its length "
        "does not compile kernels for its shape (oneDNN, at bf16/fp16 on CPUs). -1: auto (64 "
        "where kernels compile per shape, else 0); 0: one small call.",
    )
    embed_lanes: int = Field(
        0,
        ge=0,
        description="Forward passes of one embedding/rerank model run at once in a worker "
        "(model threads). 0: one per core on CPU (adaptive: a pass alone runs on every core, "
        "passes side by side on one core each), one on CUDA. On CPU, with TORCH_THREADS=1, "
        "every pass runs on one core.",
    )
    embed_urgent_lane: bool = Field(
        True,
        description="Interactive inputs get a forward pass of their own while a bulk pass "
        "(batch file) runs, instead of waiting for it (a second model thread).",
    )
    embed_job_chunk: int = Field(
        1024,
        description="Texts a job hands the batcher at a time (progress and cancel granularity).",
    )

    # Chat
    chat_default_max_tokens: int = Field(
        1024,
        description="max_tokens of a chat request that sets none (nor its model's defaults).",
    )
    chat_max_stop_sequences: int = Field(4, description="Most stop strings in one chat request.")
    allow_remote_images: bool = Field(
        False,
        description="Vision requests may name http(s) image URLs (workers fetch them); "
        "data: URIs are always accepted.",
    )
    remote_image_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated hosts remote images may come from (exact names, or "
        "'.example.com' for subdomains); empty: none.",
    )
    remote_image_max_bytes: int = Field(
        10 * 1024 * 1024, description="Largest remote image fetched, in bytes."
    )
    remote_image_timeout_sec: float = Field(10.0, description="Timeout of one image fetch.")

    # Request limits
    max_inputs_per_request: int = Field(2048, description="Most texts in one embeddings request.")
    max_input_chars: int = Field(32768, description="Longest text accepted, in characters.")
    max_rerank_documents: int = Field(1000, description="Most documents in one rerank request.")
    max_chat_body_bytes: int = Field(
        32 * 1024 * 1024,
        description="Largest POST /v1/chat/completions body (images included): a declared "
        "Content-Length past it is a 413 before the body is read (a chunked body: once it "
        "crosses it).",
    )
    max_body_bytes: int = Field(
        128 * 1024 * 1024,
        description="Largest JSON body of POST /v1/jobs, /v1/embeddings, /v1/rerank, "
        "/v1/completions and /v1/batches (413 request_too_large, on the declared size before "
        "the body is read, or once a chunked body crosses it): the API parses a body whole, "
        "on its one event loop, before any other check.",
    )
    max_chat_chars: int = Field(
        0,
        description="Most characters of message text in one chat request (400 "
        "context_length_exceeded, before tokenising). 0: the model's context length times 64 "
        "(no token is longer), or 4 000 000 when its workers did not announce a context.",
    )
    max_job_inputs: int = Field(100_000, description="Most texts in one embeddings job (/v1/jobs).")
    # Files and batches
    max_file_bytes: int = Field(200 * 1024 * 1024, description="Largest file upload (413 past it).")
    file_ttl_sec: int = Field(7 * 86400, description="How long uploaded and output files are kept.")
    max_batch_lines: int = Field(50_000, description="Most requests (lines) in one batch file.")
    batch_expiry_sec: int = Field(
        24 * 3600,
        description="Seconds a batch has to finish (its completion_window, '24h'); lines not "
        "run by then go to the error file as batch_expired. Shorten only for tests.",
    )
    batch_part_lines: int = Field(
        256, description="Most batch lines a worker runs together as one unit (one broker message)."
    )
    batch_active_parts: int = Field(
        8,
        description="Batch parts a worker runs at once; more go back to the queue, keeping its "
        "job threads free for interactive requests.",
    )
    batch_part_inputs: int = Field(
        2048, description="Most texts or documents in one batch part (bounds its duration)."
    )
    batch_part_chat_lines: int = Field(
        8, description="Most chat lines in one batch part (each line is a whole generation)."
    )
    job_timeout_sec: float = Field(
        3600.0, description="A job running longer is stopped and failed with a timeout error."
    )
    job_timeouts: dict[str, float] = Field(
        default_factory=lambda: {
            "/v1/embeddings": 600.0,
            "/v1/rerank": 600.0,
            # hours of audio on a slow model; a fanned-out job's coordinator waits for it all
            "/v1/audio/transcriptions": 21600.0,
            "/v1/audio/translations": 21600.0,
        },
        description='Per-endpoint limits over JOB_TIMEOUT_SEC, JSON: {"/v1/embeddings": 600}.',
    )
    sync_timeout_sec: float = Field(600.0, description="A sync route gives up (504) after this.")
    # Audio (speech-to-text)
    max_audio_bytes: int = Field(
        1 << 30, description="Largest audio upload for a job (413 as soon as it is crossed)."
    )
    max_audio_sync_bytes: int = Field(
        100 * 1024 * 1024,
        description="Largest audio upload on the sync routes (also capped by MAX_AUDIO_BYTES).",
    )
    audio_chunk_sec: float = Field(
        30.0,
        description="A long audio job is cut into parts of at most this many seconds (groups "
        "of whole VAD windows; at pauses for a handler that plans none) "
        "that all workers of the model transcribe in parallel. Small parts share out evenly "
        "between workers; a worker's batches still fill, since it keeps up to a batch of a "
        "job's windows per decode lane, plus one, in flight, however many parts that takes.",
    )

    # Access and limits
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys accepted as 'Authorization: Bearer <key>' (none: open).",
    )
    api_keys_file: Path | None = Field(None, description="A file with one API key per line.")
    max_queue_depth: int = Field(
        10_000,
        description="Queued messages per model beyond which new requests get 429 (a message "
        "carries one job, or up to PUBLISH_COALESCE_MAX interactive embeddings/rerank jobs).",
    )

    # API process
    host: str = Field("127.0.0.1", description="API bind address.")
    api_shutdown_grace_sec: float = Field(
        8.0,
        ge=0,
        description="On SIGTERM, requests still waiting for a job this long are answered 503 "
        "(their job cancelled); open streams are closed 3 s later (compose allows 15 s).",
    )
    port: int = Field(8000, description="API port.")
    log_level: str = Field("INFO", description="Log level of API and workers.")
    log_format: str = Field("json", description="json (one object per line) or text.")
    torch_threads: int = Field(
        0, description="torch intra-op threads in a worker (0: torch's default, one per core)."
    )
    worker_malloc: str = Field(
        "auto",
        description="Memory allocator a worker runs on: auto (tcmalloc where installed, else "
        "the system's), system, tcmalloc, jemalloc, or a library's path (workers/native_env.py).",
    )
    worker_metrics_port: int = Field(
        0, description="Port of a worker's Prometheus /metrics (0: off; one port per worker)."
    )

    @field_validator("models", "remote_image_hosts", "api_keys", "redis_sentinels", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    def job_timeout(self, endpoint: str) -> float:
        return self.job_timeouts.get(endpoint, self.job_timeout_sec)

    def accepted_api_keys(self) -> list[str]:
        """API_KEYS plus the lines of API_KEYS_FILE."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return keys

    @property
    def hf_hub_cache(self) -> Path:
        return self.hf_home / "hub"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def instance_name(prefix: str) -> str:
    """A name unique to this process, e.g. ``api@host:1234``."""
    return f"{prefix}@{socket.gethostname()}:{os.getpid()}"
