"""What a worker process's native libraries read once, at start: the memory allocator
(``WORKER_MALLOC``) and the size of oneDNN's kernel cache. Both must be in place before torch
makes its first kernel; the allocator must be preloaded, so the worker executes itself again
once with it in ``LD_PRELOAD``. Why and by how much: docs/benchmarks.md, "The allocator and
oneDNN's primitive cache"."""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping

# Kernels oneDNN keeps compiled (its default: 1024; ~20 KB each). ONEDNN_PRIMITIVE_CACHE_CAPACITY
# in the environment wins.
ONEDNN_CACHE_CAPACITY = 16384
# The allocators WORKER_MALLOC names: the library names ``ctypes.util.find_library`` knows,
# and the Debian package that installs them.
ALLOCATORS = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
DEBIAN_PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}
# Set across the one execution again: the library it preloaded.
_APPLIED = "INFERQ_MALLOC_APPLIED"

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
        return os.path.abspath(choice)
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
        f"(Debian/Ubuntu: apt-get install {DEBIAN_PACKAGES[kind]})"
    )


def configure_onednn() -> None:
    """oneDNN's cache size, unless the environment sets it. oneDNN reads it when it makes its
    first kernel, so this must run before a model's first forward pass (not before torch's
    import: tests/test_native_env.py)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def prepare_process(malloc: str) -> None:
    """:func:`configure_onednn` and, where ``malloc`` asks for an allocator this process does
    not run on, execute the same command again with it preloaded (the pid stays the same).
    After that execution the preload leaves the environment again: the children this process
    starts choose their own allocator."""
    configure_onednn()
    if applied := os.environ.pop(_APPLIED, None):
        preload = os.environ.pop("LD_PRELOAD", "").split(":")
        if rest := [lib for lib in preload if lib and lib != applied]:
            os.environ["LD_PRELOAD"] = ":".join(rest)
        return
    library = allocator_library(malloc)
    if library is None:
        if malloc == "auto" and not os.environ.get("LD_PRELOAD"):
            log.info(
                "allocator: the system's malloc (install libtcmalloc-minimal4 for a faster "
                "worker on CPU: docs/benchmarks.md)"
            )
        return
    if _is_mapped(library):
        return
    preload = os.environ.get("LD_PRELOAD", "")
    os.environ[_APPLIED] = library
    os.environ["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    # tcmalloc reports every allocation over 1 GiB on stderr; a large model's weights are such.
    os.environ.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def check_process(malloc: str) -> str:
    """In a worker about to load its models: :func:`configure_onednn` (where Celery's own
    command started it, :func:`prepare_process` did not run), a warning where ``malloc`` names
    an allocator this process does not run on, and the allocator it runs on."""
    configure_onednn()
    allocator, _ = running_allocator()
    if malloc not in ("auto", "system"):
        try:
            library = allocator_library(malloc)
        except AllocatorNotFound:
            library = None
        if library is None or not _is_mapped(library):
            log.warning(
                "WORKER_MALLOC=%s applies to `python -m workers` and `inferq-worker` only "
                "(Celery's own command cannot preload it); this worker runs on %s",
                malloc,
                allocator,
            )
    log.info(
        "allocator: %s; oneDNN keeps %s compiled kernels",
        allocator,
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"],
    )
    return allocator


def running_allocator(pid: int | str = "self") -> tuple[str, str | None]:
    """The allocator this process (or process ``pid``) runs on: its short name and library
    path, or ``system``."""
    for path in _mapped_libraries(pid):
        for name, libraries in ALLOCATORS.items():
            if any(os.path.basename(path).startswith(f"lib{lib}.") for lib in libraries):
                return name, path
    return "system", None


def _is_mapped(library: str) -> bool:
    base, real = os.path.basename(library), os.path.realpath(library)
    return any(
        os.path.basename(path).startswith(base) or path == real for path in _mapped_libraries()
    )


def _mapped_libraries(pid: int | str = "self") -> list[str]:
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return sorted({line.split()[-1] for line in maps if ".so" in line})
    except OSError:  # not Linux
        return []
