"""How many CPU threads the calling thread's forward passes use, set per thread.

torch's CPU wheels run their intra-op work (and oneDNN's, and MKL's) on GNU OpenMP. Each
thread that starts a parallel region gets a team of its own (a pool of worker threads),
and every OpenMP wait in the process turns from spinning into sleeping once the process
holds more OpenMP-managed threads than it has CPUs: a lone pass on a second thread's
two-thread team then took 12 ms instead of 4.4 on this 2-core VM, as long as another
thread's team existed. So:

* :meth:`PassThreads.set` sets the calling thread's team size (``omp_set_num_threads`` and
  MKL's thread-local count; not ``torch.set_num_threads``, which also clears oneDNN's
  cached computations and changes the default of threads not yet started);
* :meth:`PassThreads.release` frees the calling thread's team (``omp_pause_resource_all``):
  the thread that loaded the models ran parallel regions on a team of its own.

A thread that only ever runs passes on one thread never gets a team, so the batcher's
adaptive lanes (workers/batching.py) keep one team in the process: lane 0's.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

log = logging.getLogger(__name__)

OMP_PAUSE_SOFT = 1


class PassThreads:
    """The calling thread's OpenMP (and MKL) thread count; see the module docstring."""

    def __init__(self, gomp: ctypes.CDLL, mkl_local=None):
        self._gomp = gomp
        self._mkl_local = mkl_local
        self._local = threading.local()

    @classmethod
    def find(cls) -> PassThreads | None:
        """The control of torch's own GNU OpenMP runtime, or None where torch has none."""
        try:
            import torch
        except ImportError:
            return None
        lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        path = os.path.join(lib, "libgomp.so.1")
        if "OpenMP" not in torch.__config__.parallel_info() or not os.path.exists(path):
            return None
        try:
            gomp = ctypes.CDLL(path)  # the copy torch loaded: same path, same handle
            gomp.omp_set_num_threads.argtypes = [ctypes.c_int]
            gomp.omp_pause_resource_all.argtypes = [ctypes.c_int]
        except (OSError, AttributeError) as exc:
            log.info("no per-thread pass threads: %s", exc)
            return None
        mkl_local = None
        try:
            # the C interface (by value); the lower-case name is the Fortran one (a pointer)
            torch_cpu = ctypes.CDLL(os.path.join(lib, "libtorch_cpu.so"))
            mkl_local = torch_cpu.MKL_Set_Num_Threads_Local
            mkl_local.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            pass  # a build without MKL: OpenMP's count is the only one
        return cls(gomp, mkl_local)

    def set(self, threads: int) -> None:
        """Passes started by the calling thread from now on use ``threads`` threads."""
        if getattr(self._local, "threads", None) == threads:
            return
        import torch

        torch.get_num_threads()  # torch's lazy per-thread setup first: it would undo ours
        self._gomp.omp_set_num_threads(threads)
        if self._mkl_local is not None:
            self._mkl_local(threads)
        self._local.threads = threads

    def release(self) -> None:
        """Free the calling thread's OpenMP team (its next parallel region makes another)."""
        self._gomp.omp_pause_resource_all(OMP_PAUSE_SOFT)


_found: list[PassThreads | None] = []


def shared() -> PassThreads | None:
    """The process's :class:`PassThreads` (found once), or None."""
    if not _found:
        _found.append(PassThreads.find())
    return _found[0]


def batcher_lanes(embed_lanes: int, device: str) -> dict:
    """The lanes of an embedding/rerank batcher (``Batcher`` keywords) for ``EMBED_LANES``
    (0: auto) on ``device``: on CPU with torch's OpenMP, adaptive lanes, one per core, whose
    lone pass runs on torch's threads (``TORCH_THREADS`` or torch's default); elsewhere the
    count given, or one."""
    control = shared() if device == "cpu" else None
    if control is None:
        return {"lanes": embed_lanes or 1}
    import torch

    cores = len(os.sched_getaffinity(0))
    return {
        "lanes": embed_lanes or cores,
        "pass_threads": control.set,
        "wide_threads": torch.get_num_threads(),
    }
