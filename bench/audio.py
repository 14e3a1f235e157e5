"""Speech-to-text benchmark: a ~10-minute espeak-ng file, in process vs through the stack.

Model: the offline demo ``Systran/faster-whisper-tiny.en`` (faster-whisper, int8 on CPU,
beam 5). Speed is reported as audio seconds per wall second ("x real time"; the real-time
factor RTF is its inverse), next to the word error rate against the script (jiwer) and the
recall (the share of the script's words found: a check that no figure comes from dropping
speech).

(a) in process, the handler on the whole file (what a sync request runs: VAD windows decoded
    in batches of 8, :mod:`handlers.speech.pipeline`);
(b) in process, batched: faster-whisper's ``BatchedInferencePipeline`` (VAD-cut 30 s windows,
    ``batch_size`` 8): the fastest way to run the model in one process;
(c) through the stack as a job (``POST /v1/jobs/audio/transcriptions``, upload to result),
    1 worker using every core;
(c2) the same with the worker's model decoding one batch per core at once, one thread each
    (``decode_lanes`` = cores, ``cpu_threads`` 1: the catalog's default on CPU), and (f2) =
    (f) on that stack;
(d) the same with 1 worker pinned to one core (``taskset -c 0``), and
(e) with 2 workers pinned to a core each (``taskset -c 0`` / ``taskset -c 1``): the job's
    parts are shared by both. (e) / (d) is the scaling from a second worker;
(f) sixteen different 20-second files sent to the sync route of the 1-worker stack of (c),
    one after another, then all at once: at once, the worker's window batcher decodes the
    windows of all sixteen requests together (goal: all done in <= 0.5 x the sequential
    time, WER unchanged). Its ceiling on the machine is measured in process: the same
    windows decoded by the handler in batches of 8 vs one by one.

The issue names these (a) = our (b), (b) = our (c), (c) = our (f), (d) = our (e) / (d).

Each worker's CTranslate2 uses as many threads as it has cores (``cpu_threads`` through a
catalog override); the API and Redis are not pinned.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis
import yaml

from bench.audio_batching import batching_ceiling, sixteen_at_once
from bench.audio_common import MODEL, SENTENCES, build_audio, figures
from inferq import audio as a
from inferq.devstack import (
    ROOT,
    ensure_redis,
    free_port,
    spawn,
    stop,
    wait_http_ready,
    wait_workers,
)


def in_process(path: Path, duration: float, reference: list[str], threads: int) -> dict:
    from faster_whisper import BatchedInferencePipeline

    from handlers.speech import FasterWhisperASR
    from handlers.speech.audio import decode_audio

    handler = FasterWhisperASR(MODEL, "cpu", cpu_threads=threads)
    handler.transcribe(str(path), clip=(0.0, 5.0))  # warm-up
    started = time.perf_counter()
    whole = handler.transcribe(str(path))
    handler_wall = time.perf_counter() - started

    pipeline = BatchedInferencePipeline(handler.model)
    started = time.perf_counter()
    audio = decode_audio(path)
    segments, _ = pipeline.transcribe(audio, language="en", batch_size=8, beam_size=5)
    batched_text = "".join(s.text for s in segments)
    batched_wall = time.perf_counter() - started
    return {
        "threads": threads,
        "handler": figures(duration, handler_wall, reference, whole.text),
        "batched": figures(duration, batched_wall, reference, batched_text),
    }


def _spawn_worker(env: dict, cpus: str | None, log_path: Path) -> subprocess.Popen:
    if cpus is None:
        return spawn("workers", env, log_path=log_path)
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        ["taskset", "-c", cpus, sys.executable, "-m", "workers"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _catalog(folder: Path, threads: int, lanes: int = 1) -> Path:
    """models.yaml plus a local override giving CTranslate2 ``threads`` threads per batch
    and ``lanes`` batches at once (``decode_lanes``)."""
    target = folder / f"catalog-{threads}-{lanes}"
    target.mkdir(exist_ok=True)
    shutil.copy(ROOT / "models.yaml", target / "models.yaml")
    options = {"cpu_threads": threads, "decode_lanes": lanes}
    override = {"models": [{"hf_repo_id": MODEL, "options": options}]}
    (target / "models.local.yaml").write_text(yaml.safe_dump(override))
    return target / "models.yaml"


def _run_job(base: str, path: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    with open(path, "rb") as f:
        response = httpx.post(
            f"{base}/v1/jobs/audio/transcriptions",
            data={"model": MODEL},
            files={"file": (path.name, f, "audio/wav")},
            timeout=120,
        )
    response.raise_for_status()
    job_id = response.json()["id"]
    # Wait on the job's event stream (no polling load): it ends after the terminal status.
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=None) as events:
        for _ in events.iter_lines():
            pass
    wall = time.perf_counter() - started
    job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
    return wall, job


def through_stack(
    path: Path, duration: float, reference: list[str], folder: Path, cores: int
) -> dict:
    port = int(os.environ.get("BENCH_AUDIO_PORT", "8767"))
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    logs = ROOT / "bench" / "results"
    logs.mkdir(parents=True, exist_ok=True)
    redis_proc = ensure_redis(redis_url)
    base_env = {"REDIS_URL": redis_url, "PORT": str(port), "LOG_LEVEL": "WARNING"}
    api = spawn("api", base_env, log_path=logs / "audio-api.log")
    base = f"http://127.0.0.1:{port}"
    scenarios = [("c_1_worker_all_cores", [None], cores, 1)]
    if cores >= 2:  # one thread per batch, as many batches at once as cores
        scenarios += [("c2_1_worker_lanes", [None], 1, cores)]
    if cores >= 2 and shutil.which("taskset"):
        scenarios += [
            ("d_1_worker_1_core", ["0"], 1, 1),
            ("e_2_workers_1_core_each", ["0", "1"], 1, 1),
        ]
    results: dict = {}
    warm = folder / "warm.wav"
    subprocess.run(["espeak-ng", "-w", str(warm), SENTENCES[0]], check=True, capture_output=True)
    try:
        wait_http_ready(f"{base}/health", timeout=30, proc=api)
        for name, pins, threads, lanes in scenarios:
            env = {
                **base_env,
                "MODELS": MODEL,
                "MODEL_CONFIG_PATH": str(_catalog(folder, threads, lanes)),
                "OMP_NUM_THREADS": str(threads),
            }
            metrics_port = free_port()
            if len(pins) == 1:  # (f) reads the batches it made
                env["WORKER_METRICS_PORT"] = str(metrics_port)
            workers = []
            try:
                for i, cpus in enumerate(pins):
                    log = logs / f"audio-worker-{name}-{i}.log"
                    workers.append(_spawn_worker(env, cpus, log))
                    wait_workers(
                        f"{base}/ready",
                        [MODEL],
                        timeout=120,
                        proc=workers[-1],
                        at_least={MODEL: i + 1},
                    )
                with open(warm, "rb") as f:  # every worker's first call, off the clock
                    for _ in pins:
                        httpx.post(
                            f"{base}/v1/audio/transcriptions",
                            data={"model": MODEL},
                            files={"file": ("warm.wav", f.read())},
                            timeout=60,
                        ).raise_for_status()
                        f.seek(0)
                wall, job = _run_job(base, path)
                ran = redis.Redis.from_url(redis_url).hgetall(a.parts_key(job["id"]))
                by_worker = Counter(v.decode() for k, v in ran.items() if k.startswith(b"w:"))
                results[name] = {
                    "workers": len(pins),
                    "parts_per_worker": sorted(by_worker.values(), reverse=True),
                    "pinning": [f"taskset -c {c}" if c else "none" for c in pins],
                    "cpu_threads_per_worker": threads,
                    "decode_lanes": lanes,
                    "parts": job["progress"]["chunks_total"] if job["progress"] else 1,
                    **figures(duration, wall, reference, job["result"]["text"]),
                }
                print(f"  {name}: {results[name]}", flush=True)
                if name in ("c_1_worker_all_cores", "c2_1_worker_lanes"):
                    key = "f_16_sync_requests" + ("_lanes" if lanes > 1 else "")
                    results[key] = sixteen_at_once(
                        base, folder, metrics_url=f"http://127.0.0.1:{metrics_port}/metrics"
                    )
                    print(f"  {key}: {results[key]}", flush=True)
            finally:
                for proc in workers:
                    stop(proc)
    finally:
        stop(api)
        if redis_proc is not None:
            stop(redis_proc)
    return results


def run() -> dict:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("the audio benchmark needs espeak-ng (apt-get install espeak-ng)")
    cores = len(os.sched_getaffinity(0))
    load_at_start = os.getloadavg()  # other processes on the machine skew every figure
    with tempfile.TemporaryDirectory(prefix="inferq-bench-audio-") as tmp:
        folder = Path(tmp)
        path, duration, reference = build_audio(folder)
        print(f"  audio: {duration:.1f} s, {len(reference)} words", flush=True)
        local = in_process(path, duration, reference, threads=cores)
        print(f"  in process: {local}", flush=True)
        ceiling = batching_ceiling(folder, cores)
        print(f"  batching ceiling: {ceiling}", flush=True)
        stack = through_stack(path, duration, reference, folder, cores)
    result = {
        "audio": {"seconds": round(duration, 1), "words": len(reference), "model": MODEL},
        "cores": cores,
        "load_average_at_start_and_end": [round(x, 2) for x in (*load_at_start, *os.getloadavg())],
        "a_b_in_process": local,
        "f_batching_ceiling": ceiling,
        "stack": stack,
    }
    one = stack.get("c_1_worker_all_cores")
    if one:
        result["c_over_b"] = round(one["x_real_time"] / local["batched"]["x_real_time"], 3)
        result["c_over_a"] = round(one["x_real_time"] / local["handler"]["x_real_time"], 3)
    lanes = stack.get("c2_1_worker_lanes")
    if lanes:
        result["c2_over_b"] = round(lanes["x_real_time"] / local["batched"]["x_real_time"], 3)
    if "e_2_workers_1_core_each" in stack:
        result["e_over_d"] = round(
            stack["e_2_workers_1_core_each"]["x_real_time"]
            / stack["d_1_worker_1_core"]["x_real_time"],
            3,
        )
    return result


def report(result: dict) -> str:
    local, stack = result["a_b_in_process"], result["stack"]

    def line(label: str, f: dict) -> str:
        return (
            f"{label:<44} {f['x_real_time']:7.2f} x real time  (RTF {f['rtf']:.4f}, "
            f"{f['wall_s']:7.1f} s, word recall {f['word_recall']:.3f}, WER {f['wer']:.3f})"
        )

    lines = [
        f"audio: {result['audio']['seconds']} s of espeak-ng speech, {result['cores']} cores "
        f"(load averages at start and end: {result['load_average_at_start_and_end']})",
        line(f"(a) in process, the handler ({local['threads']} threads)", local["handler"]),
        line(f"(b) in process, batched ({local['threads']} threads)", local["batched"]),
    ]
    labels = {
        "c_1_worker_all_cores": "(c) stack job, 1 worker, all cores",
        "c2_1_worker_lanes": "(c2) stack job, 1 worker, a lane per core (default)",
        "d_1_worker_1_core": "(d) stack job, 1 worker, taskset -c 0",
        "e_2_workers_1_core_each": "(e) stack job, 2 workers, taskset -c 0 / -c 1",
    }
    for key, label in labels.items():
        if key in stack:
            split = "/".join(str(n) for n in stack[key].get("parts_per_worker", []))
            lines.append(line(label, stack[key]) + f"  [{stack[key]['parts']} parts: {split}]")
    if "c_over_b" in result:
        lines.append(f"(c) / (b) = {result['c_over_b']:.3f}  [goal >= 0.9]")
        lines.append(f"(c) / (a) = {result['c_over_a']:.3f}")
    if "c2_over_b" in result:
        lines.append(f"(c2) / (b) = {result['c2_over_b']:.3f}  [goal >= 0.9]")
    if "e_over_d" in result:
        lines.append(f"(e) / (d) = {result['e_over_d']:.3f}  [goal >= 1.7]")
    for key, tag in (("f_16_sync_requests", "(f)"), ("f_16_sync_requests_lanes", "(f2)")):
        if key not in stack:
            continue
        f = stack[key]
        lines.append(line(f"{tag} 16 x 20 s sync, one after another", f["sequential"]))
        lines.append(line(f"{tag} 16 x 20 s sync, all at once", f["at_once"]))
        lines.append(
            f"{tag} at once / one after another, wall time ="
            f" {f['at_once_over_sequential_time']:.3f}"
            f"  [goal <= 0.5]; {f['same_text']}/{f['files']} transcripts identical"
        )
        for way in ("sequential", "at_once"):
            batches = f.get(f"batches_{way}") or {}
            if batches.get("batches"):
                lines.append(
                    f"{tag} {way.replace('_', ' ')}: {batches['batches']} batches,"
                    f" {batches['windows_per_batch']} windows and"
                    f" {batches['requests_per_batch']} requests per batch"
                )
    if "f_batching_ceiling" in result:
        c = result["f_batching_ceiling"]
        lines.append(
            f"(f) ceiling, in process: their {c['windows']} windows in batches of 8 / one by one,"
            f" time = {c['batch_8_over_batch_1_time']:.3f}"
        )
    return "\n".join(lines)


def results_path() -> Path:
    return ROOT / "bench" / "results" / "audio.json"
