"""This machine's first processor as ``/proc/cpuinfo`` describes it (flags, vendor), read once.

Torch-free, so a handler that runs without torch (faster-whisper) can ask it too.
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags of the matrix units for a reduced precision (AMX or AVX512 instructions for it).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
FP16_CPU_FLAGS = frozenset({"amx_fp16", "avx512_fp16"})


def first_processor(text: str) -> dict[str, str]:
    """The ``key: value`` fields of the first processor block of a ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@functools.cache
def this_processor() -> dict[str, str]:
    """:func:`first_processor` of this machine (empty where there is no /proc/cpuinfo)."""
    try:
        return first_processor(CPUINFO.read_text())
    except OSError:
        return {}


def cpu_flags() -> frozenset[str]:
    """The first processor's ``flags`` (empty where there is no /proc/cpuinfo)."""
    return frozenset(this_processor().get("flags", "").split())
