"""Cutting one forward pass into calls over similar lengths, and a failed call into reruns.

A pass the batcher builds from a shallow queue mixes lengths (32 clients' requests: ~1.34
padded tokens per real one), and on a CPU a padded token costs as much as a real one, while
one more call of a traced encoder costs only about as much as a few dozen tokens (MiniLM at
bf16 on one thread: ~2 ms a call, ~80 us a token). :func:`split_pass` sorts the pass by length
and cuts it where the padded tokens saved outweigh the calls added: random passes of 45 of
``bench.embeddings``' texts ran 261 -> 373 texts/s on one thread, while length-sorted
batches, which pad little, stay one call (docs/benchmarks.md, "One pass, several calls").

Sizes. At bf16 (or fp16) on a CPU, a linear layer is a oneDNN matrix product with a kernel
compiled per shape and thread count: the first call of a size (rows x tokens, the product's
rows) costs ~0.3 ms a product on AVX512-BF16, ~1.6 ms with AMX, three products (and a GELU)
per new size, and the passes of a shallow queue keep making new ones. (At fp32 the products
go through MKL, which compiles nothing.) Given the sizes already run (:class:`CallSizes`),
the cut also charges ``shape_tokens`` for a call of a size not met yet, so that calls settle
on a few dozen sizes instead of hundreds (docs/benchmarks.md, "Calls of shapes already met").
The attention products depend on rows and tokens apart, so a size met before can still
compile those; the linear layers' are the most.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from handlers.cpuinfo import BF16_CPU_FLAGS, FP16_CPU_FLAGS

# Above this many inputs the search looks only at cuts leaving calls of at most this many.
_LONGEST_CALL = 128


def split_pass(
    lengths: Sequence[int],
    call_tokens: int,
    *,
    known: np.ndarray | None = None,
    shape_tokens: int = 0,
) -> list[np.ndarray]:
    """Index arrays, one per call, covering ``range(len(lengths))``, each in ascending length:
    the cut of the length-sorted inputs that minimises padded tokens + ``call_tokens`` per
    call (by dynamic programming over the sorted lengths; exact for passes of up to 128
    inputs, past which no call holds more than 128). ``call_tokens`` <= 0: one call.
    ``known``: booleans by a call's padded size (rows x its longest input), true where a call
    of that size ran before (:meth:`CallSizes.known`); a call of any other size, or of one
    past the array's end, costs ``shape_tokens`` more."""
    count = len(lengths)
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    if call_tokens <= 0 or count < 2:
        return [order]
    sorted_lengths = np.asarray(lengths, dtype=np.int64)[order]
    charge = known is not None and shape_tokens > 0
    if sorted_lengths[0] == sorted_lengths[-1] and not charge:
        return [order]  # nothing pads
    best = np.zeros(count + 1, dtype=np.int64)  # best[j]: the cost of the first j inputs
    start = np.zeros(count + 1, dtype=np.int64)  # where the last call of that cut begins
    for end in range(1, count + 1):
        first = max(0, end - _LONGEST_CALL)
        begins = np.arange(first, end)
        # a call over sorted inputs [begin, end) pads every one to the longest, the last
        sizes = (end - begins) * sorted_lengths[end - 1]
        costs = best[first:end] + call_tokens + sizes
        if charge:
            met = np.zeros(sizes.shape, dtype=bool)
            inside = sizes < known.size
            met[inside] = known[sizes[inside]]
            costs += shape_tokens * ~met
        pick = int(np.argmin(costs))
        best[end], start[end] = costs[pick], first + pick
    calls, end = [], count
    while end > 0:
        calls.append(order[start[end] : end])
        end = int(start[end])
    return calls[::-1]


def auto_call_tokens(setting: int, device: str) -> int:
    """``EMBED_CALL_TOKENS`` (-1: auto): on CPU 32 (a call's fixed cost in tokens, measured
    with a traced MiniLM at bf16); elsewhere 0 (a GPU pads almost for free and pays for every
    call's launches)."""
    if setting >= 0:
        return setting
    return 32 if device == "cpu" else 0


class CallSizes:
    """The padded sizes (rows x longest input) of the calls a batcher ran, by the thread count
    they ran on (oneDNN keeps a kernel per shape and thread count). Sizes from 1 to ``most``
    are recorded; larger ones always count as new. Lanes write it without a lock: one byte
    stored under the GIL, and a stale read costs one charge too many."""

    def __init__(self, most: int):
        self._most = max(1, most)
        self._by_threads: dict[int | None, np.ndarray] = {}

    def known(self, threads: int | None) -> np.ndarray:
        """Booleans by size for calls on ``threads`` threads (None: torch's own count)."""
        known = self._by_threads.get(threads)
        if known is None:
            known = self._by_threads.setdefault(threads, np.zeros(self._most + 1, dtype=bool))
        return known

    def add(self, threads: int | None, size: int) -> None:
        known = self.known(threads)
        if size < known.size:
            known[size] = True

    def sizes(self) -> set[int]:
        """Every size recorded, whatever its thread count."""
        return {int(s) for known in list(self._by_threads.values()) for s in np.flatnonzero(known)}


# The CPU flags with which torch runs a dtype's products on oneDNN's compiled kernels.
_ONEDNN_FLAGS = {"bfloat16": BF16_CPU_FLAGS, "float16": FP16_CPU_FLAGS}


def compiles_per_shape(device: str, dtype: object, cpu_flags: frozenset[str]) -> bool:
    """Whether a model's forward compiles kernels per matrix shape: bf16 or fp16 on a CPU with
    the units for it (oneDNN; an approximation of torch's own routing); fp32 products run on
    MKL, GPUs' on cuBLAS."""
    units = _ONEDNN_FLAGS.get(str(dtype).removeprefix("torch."), frozenset())
    return device == "cpu" and bool(units & cpu_flags)


def auto_shape_tokens(setting: int, call_tokens: int, *, per_shape: bool, amx: bool) -> int:
    """``EMBED_SHAPE_TOKENS`` (-1: auto): where passes are cut into calls and the forward
    compiles kernels per shape (:func:`compiles_per_shape`), what a new size costs in tokens:
    64 with AMX (~1.6 ms a product), 16 without (~0.3 ms); otherwise 0."""
    if setting >= 0:
        return setting
    if call_tokens <= 0 or not per_shape:
        return 0
    return 64 if amx else 16


def auto_warm_up_tokens(setting: int, *, per_shape: bool) -> int:
    """``EMBED_WARM_UP_TOKENS`` (-1: auto): 64 where the forward compiles kernels per shape (a
    lone call of each length up to 64 tokens at load), otherwise 0 (one small call)."""
    if setting >= 0:
        return setting
    return 64 if per_shape else 0


def find_failures(
    jobs: list[list[int]],
    error: Exception | None,
    rerun: Callable[[list[int]], Exception | None],
) -> dict[int, Exception]:
    """Which of ``jobs`` (each a job's input positions in a failed call) fail on their own,
    with their own errors, by index into ``jobs``. ``rerun(positions)`` runs those inputs
    again, returning its error or None. ``error``: the call's error when all of ``jobs``
    were in it; None when the call also held a job already failed, so these run again first.
    A failing group runs again in halves, a failing half in halves again: about 2 log2(k)
    reruns find one bad job of k (one per job took k)."""
    failures: dict[int, Exception] = {}

    def positions(group: list[int]) -> list[int]:
        return [i for g in group for i in jobs[g]]

    def bisect(group: list[int], error: Exception) -> None:
        if len(group) == 1:
            failures[group[0]] = error
            return
        for half in (group[: len(group) // 2], group[len(group) // 2 :]):
            if (own := rerun(positions(half))) is not None:
                bisect(half, own)

    everyone = list(range(len(jobs)))
    if everyone and error is None:
        error = rerun(positions(everyone))
    if everyone and error is not None:
        bisect(everyone, error)
    return failures
