"""``python -m bench [embeddings] [batch] [batch_probe] [chat] [audio] [speech_dtypes]
[speech_batches] [rerank] [redis_kill]``: run benchmarks, print, save JSON results (without
arguments: all but the ``redis_kill`` outage measurement)."""

from __future__ import annotations

import json
import os
import platform
import sys

from bench import (
    audio,
    batch,
    batch_probe,
    chat,
    embeddings,
    redis_kill,
    rerank,
    speech_batches,
    speech_dtypes,
)
from bench.stack import run_on_the_workers_allocator
from workers.native_env import running_allocator

SUITES = {
    "embeddings": embeddings,
    "rerank": rerank,
    "batch": batch,
    "batch_probe": batch_probe,
    "chat": chat,
    "audio": audio,
    "redis_kill": redis_kill,
    "speech_dtypes": speech_dtypes,
    "speech_batches": speech_batches,
}


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "allocator": running_allocator()[0],
    }


def main(argv: list[str]) -> int:
    run_on_the_workers_allocator()
    names = argv or [name for name in SUITES if name != "redis_kill"]
    for name in names:
        suite = SUITES[name]
        result = {"machine": machine(), **suite.run()}
        print(f"== {name} ==\n{suite.report(result)}", flush=True)
        path = suite.results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"(saved {path.relative_to(path.parents[2])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
