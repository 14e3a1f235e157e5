"""The one place a handler's weight dtype is chosen (``torch_dtype`` of a catalog entry).

``auto`` (the default) picks the fastest dtype the device computes in natively:

- CUDA: bfloat16 where the device supports it (Ampere and later), else float16;
- CPU: bfloat16 when the processor has bf16 matrix units (AMX-BF16 or AVX512-BF16, read
  from the ``/proc/cpuinfo`` flags ``amx_bf16`` / ``avx512_bf16``); without them bf16 is
  emulated and several times slower than float32 (all-MiniLM-L6-v2 on an AVX2 EPYC:
  15 vs 54 texts/s), so float32;
- anything else (MPS, unknown devices): float32.

An entry's ``torch_dtype`` names a dtype instead: ``float32``, ``bfloat16``, ``float16`` ...
A handler given none takes ``MODEL_DTYPE`` (the worker's setting, also read from the
environment here so that handlers built outside a worker follow it), else ``auto``. The test
suite sets ``MODEL_DTYPE=float32`` so that its exact references hold on any CPU; bf16 is
tested on its own (tests/handlers/test_dtype.py, tests/test_dtype_stack.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from handlers.cpuinfo import BF16_CPU_FLAGS, cpu_flags

AUTO = "auto"


def cpu_has_bf16_units(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX512-BF16)."""
    found = frozenset(flags) if flags is not None else cpu_flags()
    if found & BF16_CPU_FLAGS:
        return True
    if flags is None:  # no /proc (or a masked one): ask torch's own dispatch
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
        return "AMX" in capability or "BF16" in capability
    return False


def auto_dtype(device: str | torch.device, *, cpu_flags: Iterable[str] | None = None):
    """The dtype ``auto`` resolves to on ``device`` (see the module docstring)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu" and cpu_has_bf16_units(cpu_flags):
        return torch.bfloat16
    return torch.float32


def resolve_dtype(requested: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``torch_dtype`` of an entry (a name, ``auto``, or None: ``MODEL_DTYPE``, else
    ``auto``) as a ``torch.dtype``."""
    if isinstance(requested, torch.dtype):
        return requested
    if requested is None:
        requested = os.environ.get("MODEL_DTYPE") or AUTO
    if requested == AUTO:
        return auto_dtype(device)
    dtype = getattr(torch, str(requested), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch_dtype '{requested}' (auto, float32, bfloat16, float16)")
    return dtype
