"""What a worker process's native libraries read once, at start: the memory allocator and the
size of oneDNN's primitive cache. Both must be in place before torch loads, so the worker sets
them first thing and, when the allocator has to be preloaded, executes itself again once.

Why (docs/benchmarks.md, "The allocator and oneDNN's primitive cache"): torch's CPU kernels
allocate and free large buffers on many threads, where glibc's malloc spends ~5 % of a worker's
time and faults pages in again; tcmalloc (what vLLM and Intel advise for torch on CPU) does
not. oneDNN compiles a kernel for every new matmul shape (rows x tokens of a pass) and keeps
1024 of them by default: under varied traffic that cache never warms and a worker on an AMX
CPU kept spending ~12 % of its time compiling kernels again (1.5 ms each).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping

# Kernels oneDNN keeps compiled (its default: 1024); ~20 KB each. ONEDNN_PRIMITIVE_CACHE_CAPACITY
# in the environment wins.
ONEDNN_CACHE_CAPACITY = 16384
# The allocators WORKER_MALLOC names, by the library names ``ctypes.util.find_library`` knows.
ALLOCATORS = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
# Marks a process that already executed itself again: never a second time.
_REEXEC_MARK = "INFERQ_MALLOC_APPLIED"

log = logging.getLogger("workers")


class AllocatorNotFound(RuntimeError):
    pass


def allocator_library(choice: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The shared library to preload for ``WORKER_MALLOC=choice``, or None for the system's.

    ``auto``: tcmalloc where it is installed and nothing is preloaded already; ``system``: none;
    ``tcmalloc`` / ``jemalloc``: that library (AllocatorNotFound where it is missing); anything
    with a ``/``: that file."""
    if choice == "system" or (choice == "auto" and environ.get("LD_PRELOAD")):
        return None
    if "/" in choice:
        if not os.path.isfile(choice):
            raise AllocatorNotFound(f"WORKER_MALLOC={choice}: no such file")
        return choice
    kind = "tcmalloc" if choice == "auto" else choice
    if kind not in ALLOCATORS:
        raise AllocatorNotFound(
            f"WORKER_MALLOC={choice}: not auto, system, {', '.join(ALLOCATORS)} or a path"
        )
    for name in ALLOCATORS[kind]:
        if found := ctypes.util.find_library(name):
            return found
    if choice == "auto":
        return None
    raise AllocatorNotFound(
        f"WORKER_MALLOC={choice}: lib{ALLOCATORS[kind][0]} is not installed "
        f"(Debian/Ubuntu: apt-get install {_DEBIAN_PACKAGES[kind]})"
    )


_DEBIAN_PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}


def configure_onednn() -> None:
    """oneDNN's cache size, unless the environment sets it. oneDNN reads it when it makes its
    first primitive, so this must run before a model's first forward pass (not before torch's
    import: tests/test_native_env.py)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def prepare_process(malloc: str) -> None:
    """:func:`configure_onednn` and, where ``malloc`` asks for an allocator this process was not
    started with, execute the same command again with it preloaded (the pid stays the same)."""
    configure_onednn()
    if os.environ.get(_REEXEC_MARK):
        return
    library = allocator_library(malloc)
    if library is None:
        if malloc == "auto" and not os.environ.get("LD_PRELOAD"):
            log.info(
                "allocator: the system's malloc (install libtcmalloc-minimal4 for a faster "
                "worker on CPU: docs/benchmarks.md)"
            )
        return
    preload = os.environ.get("LD_PRELOAD", "")
    os.environ[_REEXEC_MARK] = library
    os.environ["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    # tcmalloc reports every allocation over 1 GiB on stderr; a model's weights are such.
    os.environ.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def without_our_preload(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment overrides that take the allocator :func:`prepare_process` preloaded back out,
    for a child that should run as it does deployed (the benchmarks' API)."""
    ours = environ.get(_REEXEC_MARK)
    if not ours:
        return {}
    rest = [lib for lib in environ.get("LD_PRELOAD", "").split(":") if lib and lib != ours]
    return {"LD_PRELOAD": ":".join(rest), _REEXEC_MARK: ""}


def preloaded_allocator() -> str:
    """The allocator this process runs on, as the worker reports it: the library's short name,
    or ``system``."""
    maps = _mapped_libraries()
    for name, libraries in ALLOCATORS.items():
        if any(f"lib{lib}." in path for lib in libraries for path in maps):
            return name
    return "system"


def _mapped_libraries() -> set[str]:
    try:
        with open("/proc/self/maps") as maps:
            return {line.split()[-1] for line in maps if ".so" in line}
    except OSError:  # not Linux
        return set()
