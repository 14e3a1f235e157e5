"""Cutting a forward pass into calls over similar lengths (workers/pass_split.py), and the
batcher running a pass as those calls with every output back in its place."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from handlers.embedding import HFEmbeddingModel
from workers.batching import Batcher
from workers.pass_split import (
    CallSizes,
    auto_call_tokens,
    auto_shape_tokens,
    auto_warm_up_tokens,
    compiles_per_shape,
    find_failures,
    split_pass,
)


def _call_cost(size: int, call_tokens: int, known: set[int], shape_tokens: int) -> int:
    return call_tokens + size + (0 if size in known else shape_tokens)


def _cost(
    lengths: list[int],
    calls: list[np.ndarray],
    call_tokens: int,
    known: set[int] = frozenset(),
    shape_tokens: int = 0,
) -> int:
    sizes = [len(c) * max(lengths[i] for i in c) for c in calls]
    return sum(_call_cost(size, call_tokens, known, shape_tokens) for size in sizes)


def _best_cost(
    lengths: list[int], call_tokens: int, known: set[int] = frozenset(), shape_tokens: int = 0
) -> int:
    """Every cut of the sorted lengths, tried one by one."""
    ordered = sorted(lengths)
    best = None
    for mask in itertools.product([False, True], repeat=len(ordered) - 1):
        cuts = [0] + [i + 1 for i, cut in enumerate(mask) if cut] + [len(ordered)]
        cost = sum(
            _call_cost((b - a) * ordered[b - 1], call_tokens, known, shape_tokens)
            for a, b in itertools.pairwise(cuts)
        )
        best = cost if best is None else min(best, cost)
    return best


def _known(sizes: set[int], most: int = 2000) -> np.ndarray:
    known = np.zeros(most + 1, dtype=bool)
    known[list(sizes)] = True
    return known


@pytest.mark.parametrize("seed", range(6))
def test_the_cut_is_the_cheapest_of_all_cuts(seed):
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(3, 80, size=11)]
    for call_tokens in (1, 20, 60, 400):
        calls = split_pass(lengths, call_tokens)
        assert sorted(np.concatenate(calls).tolist()) == list(range(len(lengths)))
        for call in calls:  # each call in ascending length: its last input is its longest
            assert [lengths[i] for i in call] == sorted(lengths[i] for i in call)
        assert _cost(lengths, calls, call_tokens) == _best_cost(lengths, call_tokens)


@pytest.mark.parametrize("seed", range(6))
def test_with_shapes_met_before_the_cut_is_still_the_cheapest(seed):
    """A call of a size (rows x longest) not run before costs ``shape_tokens`` more."""
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(3, 40, size=10)]
    met = {int(n) for n in rng.integers(3, 400, size=60)}
    for call_tokens, shape_tokens in ((1, 16), (20, 64), (32, 500)):
        calls = split_pass(lengths, call_tokens, known=_known(met), shape_tokens=shape_tokens)
        assert sorted(np.concatenate(calls).tolist()) == list(range(len(lengths)))
        got = _cost(lengths, calls, call_tokens, met, shape_tokens)
        assert got == _best_cost(lengths, call_tokens, met, shape_tokens)


def test_a_size_met_before_wins_over_a_slightly_tighter_new_one():
    lengths = [10] * 4 + [12] * 4
    # alone: one call of 8 x 12 (96 tokens) beats two (40 + 48 + 32 for the second call)
    assert [len(c) for c in split_pass(lengths, 32)] == [8]
    # two calls whose sizes ran before (4 x 10 and 4 x 12) beat one of a new size
    known = _known({40, 48})
    assert [len(c) for c in split_pass(lengths, 32, known=known, shape_tokens=64)] == [4, 4]
    assert [len(c) for c in split_pass(lengths, 32, known=known, shape_tokens=0)] == [8]
    # a size past the end of ``known`` (3 x 900 > 2000) counts as new, not as the last size
    met = _known({898, 899, 900, 2000})
    assert len(split_pass([900, 899, 898], 32, known=met, shape_tokens=2000)) == 3
    assert len(split_pass([900, 899, 898], 32, known=met, shape_tokens=0)) == 1
    # equal lengths pad nothing, yet sizes met before can still beat one call of a new size
    five = split_pass([10] * 5, 32, known=_known({40, 10}), shape_tokens=64)
    assert sorted(len(c) for c in five) == [1, 4]
    assert len(split_pass([10] * 5, 32, known=_known({50}), shape_tokens=64)) == 1


def test_call_sizes_are_kept_by_thread_count_and_bounded():
    sizes = CallSizes(100)
    sizes.add(1, 40)
    sizes.add(2, 48)
    sizes.add(None, 101)  # past the end: not kept, counts as new
    assert sizes.known(1)[40] and not sizes.known(2)[40] and not sizes.known(None).any()
    assert sizes.sizes() == {40, 48}


def test_the_batcher_settles_on_fewer_call_shapes():
    """Random passes through a batcher (each pass one submit of mixed lengths): charging for
    shapes not run yet makes the calls reuse sizes (a CPU compiles a kernel per new one) at
    the price of a little padding."""
    rng = np.random.default_rng(7)
    passes = [[int(n) for n in rng.integers(5, 70, size=30)] for _ in range(60)]
    results = {}
    for shape_tokens in (0, 64):
        sizes: list[int] = []

        def forward(rows, sizes=sizes):
            sizes.append(len(rows) * max(len(row) for row in rows))
            return np.zeros((len(rows), 1))

        batcher = Batcher(
            forward,
            width=1,
            batch_tokens=100_000,
            max_batch_size=64,
            call_tokens=32,
            shape_tokens=shape_tokens,
        )
        try:
            for lengths in passes:
                rows = [["t"] * n for n in lengths]
                batcher.submit(rows, lengths).result(10)
        finally:
            batcher.stop()
        real = sum(map(sum, passes))
        results[shape_tokens] = (len(set(sizes)), batcher.stats.padded_tokens / real)
    (new_sizes, padding), (fewer_sizes, more_padding) = results[0], results[64]
    assert fewer_sizes < new_sizes / 2, results
    assert more_padding < padding * 1.05, results


def test_two_clusters_become_two_calls_and_sorted_batches_stay_one():
    lengths = [10, 52, 11, 50, 10, 51, 12, 49] * 4
    calls = split_pass(lengths, 32)
    assert len(calls) == 2
    assert {lengths[i] for i in calls[0]} == {10, 11, 12}
    nearly_sorted = [40] * 10 + [41] * 10 + [42] * 12  # a length-sorted batch's spread
    assert [len(c) for c in split_pass(nearly_sorted, 32)] == [32]
    assert [len(c) for c in split_pass([40] * 100, 32)] == [100]
    assert [len(c) for c in split_pass(lengths, 0)] == [len(lengths)]  # 0: never cut
    assert split_pass([7], 32)[0].tolist() == [0]


def test_auto_is_a_cpu_setting():
    assert auto_call_tokens(-1, "cpu") == 32
    assert auto_call_tokens(-1, "cuda") == 0
    assert auto_call_tokens(5, "cuda") == 5
    bf16 = frozenset({"avx512f", "avx512_bf16"})
    assert compiles_per_shape("cpu", "torch.bfloat16", bf16)
    assert compiles_per_shape("cpu", "float16", frozenset({"avx512_fp16"}))
    assert not compiles_per_shape("cpu", "float16", bf16)  # no fp16 units
    assert not compiles_per_shape("cpu", "torch.bfloat16", frozenset({"avx2"}))
    assert not compiles_per_shape("cpu", "torch.float32", bf16)  # MKL's products compile nothing
    assert not compiles_per_shape("cuda", "torch.bfloat16", bf16)
    assert not compiles_per_shape("cpu", None, bf16)
    assert auto_shape_tokens(-1, 32, per_shape=True, amx=True) == 64
    assert auto_shape_tokens(-1, 32, per_shape=True, amx=False) == 16
    assert auto_shape_tokens(-1, 32, per_shape=False, amx=True) == 0
    assert auto_shape_tokens(-1, 0, per_shape=True, amx=True) == 0  # passes not cut
    assert auto_shape_tokens(8, 32, per_shape=False, amx=False) == 8
    assert auto_warm_up_tokens(-1, per_shape=True) == 64
    assert auto_warm_up_tokens(-1, per_shape=False) == 0
    assert auto_warm_up_tokens(5, per_shape=False) == 5


@pytest.fixture(scope="module")
def handler(tiny_embedders):
    return HFEmbeddingModel(str(tiny_embedders["bert"]), "cpu")


def test_a_pass_of_two_length_clusters_runs_as_two_calls_each_output_in_place(handler):
    calls: list[list[str]] = []
    gate = threading.Event()

    def forward(rows):
        gate.wait(10)
        calls.append(rows)
        return handler.embed_batch(rows)

    short = [f"short {i}" for i in range(6)]
    long = [" ".join(["a long text of many words"] * 8) + f" {i}" for i in range(6)]
    texts = [t for pair in zip(short, long, strict=True) for t in pair]  # interleaved
    rows = handler.tokenize(texts)
    batcher = Batcher(
        forward, width=handler.dim, batch_tokens=100_000, max_batch_size=64, call_tokens=32
    )
    try:
        future = batcher.submit(rows, [len(r) for r in rows])
        gate.set()
        vectors = future.result(10)
    finally:
        batcher.stop()
    assert len(calls) == 2  # one pass (one submit, all pending), two calls
    assert {len(call) for call in calls} == {6}
    assert batcher.stats.batches == 1
    assert batcher.stats.padded_tokens < 1.1 * batcher.stats.real_tokens
    expected = np.concatenate([handler.embed_batch([t]) for t in texts])
    np.testing.assert_allclose(vectors, expected, atol=1e-4)  # each vector is its own text's


def test_a_failed_job_leaves_the_padding_of_the_calls_that_ran(handler):
    """A job failing in a pass of two calls: the padding counted for the other jobs is that of
    their calls (it was counted as one call padding every short text to the long ones)."""
    gate, entered = threading.Event(), threading.Event()

    def forward(rows):
        entered.set()
        gate.wait(10)
        if any(row == ["poison"] for row in rows):
            raise RuntimeError("boom")
        return handler.embed_batch(rows)

    short = [f"short {i}" for i in range(6)]
    long = [" ".join(["a long text of many words"] * 8) + f" {i}" for i in range(6)]
    rows = handler.tokenize(short + long)
    batcher = Batcher(
        forward, width=handler.dim, batch_tokens=100_000, max_batch_size=64, call_tokens=32
    )
    try:
        first = batcher.submit(handler.tokenize(["warm"]), [3])  # held at the gate
        assert entered.wait(10)
        bad = batcher.submit([["poison"]], [len(rows[0])])
        good = batcher.submit(rows, [len(r) for r in rows])
        gate.set()
        first.result(10)
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(10)
        assert good.result(10).shape == (12, handler.dim)
    finally:
        batcher.stop()
    assert batcher.stats.inputs == 13
    assert batcher.stats.padded_tokens < 1.1 * batcher.stats.real_tokens


def test_a_job_failing_in_two_calls_leaves_its_companion_in_the_second_alone():
    """Job a's bad inputs fail both calls of a pass (a short one alone, a long one beside job
    b's): b runs again without a and succeeds (it was failed with a's error, never rerun)."""
    gate, entered = threading.Event(), threading.Event()

    def forward(rows):
        entered.set()
        gate.wait(10)
        if any("poison" in row for row in rows):
            raise RuntimeError("boom")
        return np.array([[float(len(row))] for row in rows])

    batcher = Batcher(forward, width=1, batch_tokens=100_000, max_batch_size=64, call_tokens=32)
    try:
        first = batcher.submit([["warm"]], [1])  # held at the gate
        assert entered.wait(10)
        bad = batcher.submit([["poison"], ["poison"] + ["x"] * 59], [1, 60])
        good = batcher.submit([["y"] * 60], [60])
        gate.set()
        first.result(10)
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(10)
        np.testing.assert_array_equal(good.result(10), [[60.0]])
    finally:
        batcher.stop()


def test_find_failures_names_each_bad_job_with_its_own_error():
    bad = {2: ValueError("two"), 5: KeyError("five")}
    jobs = [[10 * j, 10 * j + 1] for j in range(8)]
    reruns: list[list[int]] = []

    def rerun(positions):
        reruns.append(positions)
        for j, error in bad.items():
            if jobs[j][0] in positions:
                return error
        return None

    assert find_failures(jobs, RuntimeError("call"), rerun) == bad
    assert all(len(p) % 2 == 0 for p in reruns)  # a job's inputs are never split
    reruns.clear()
    assert find_failures(jobs[:2], None, rerun) == {}  # no known failure: one rerun, it passes
    assert reruns == [[0, 1, 10, 11]]


@pytest.mark.parametrize("family", ["embeddings", "rerank"])
def test_load_runs_a_lone_call_of_every_length_up_to_the_setting(
    tiny_embedders, family, monkeypatch
):
    """A lone request's first call of its length compiles kernels for its shape (oneDNN):
    loading runs one lone call of each length up to ``EMBED_WARM_UP_TOKENS``, so a lone input
    of such a length meets a shape already run; 0 leaves one small call."""
    from prometheus_client import REGISTRY

    from inferq.catalog import ModelEntry
    from inferq.settings import Settings
    from workers import registry as registry_module
    from workers.batching import batch_inputs
    from workers.registry import ModelRegistry

    monkeypatch.setattr(registry_module, "WARM_UP_SECONDS", 600.0)  # not the machine's speed
    one_input = ("a query", "a document") if family == "rerank" else "a text"

    handler, weights = {
        "embeddings": ("handlers.embedding.HFEmbeddingModel", tiny_embedders["bert"]),
        "rerank": ("handlers.rerank.HFRerankModel", tiny_embedders["cross-encoder"]),
    }[family]
    sizes = {}
    for tokens in (0, 20):
        entry = ModelEntry(
            name=f"warm-{family}-{tokens}",
            handler=handler,
            hf_repo_id="t/t",
            local_dir=str(weights),
        )
        registry = ModelRegistry()
        registry.load([entry], Settings(embed_warm_up_tokens=tokens, torch_threads=0))
        batcher = registry.models[entry.name].batcher
        try:
            sizes[tokens] = sorted(batcher.call_sizes.sizes())  # one-row calls: lengths
            # the warm-up's passes are not traffic: no batches in the stats or the metrics
            assert batcher.stats.batches == 0
            assert not REGISTRY.get_sample_value(
                "inferq_worker_batch_size_count", {"model": entry.name}
            )
            batcher.submit(*batch_inputs(registry.models[entry.name].handler, [one_input])).result(
                10
            )
            assert batcher.stats.batches == 1
            assert (
                REGISTRY.get_sample_value("inferq_worker_batch_size_count", {"model": entry.name})
                == 1
            )
        finally:
            batcher.stop()
    assert len(sizes[0]) == 1
    shortest = sizes[20][0]
    assert sizes[20] == list(range(shortest, 21)), sizes
    assert shortest <= 8


def test_a_call_past_the_token_budget_runs_and_is_not_recorded():
    def forward(rows):
        return np.zeros((len(rows), 1))

    batcher = Batcher(
        forward, width=1, batch_tokens=50, max_batch_size=8, call_tokens=32, shape_tokens=16
    )
    try:
        assert batcher.submit([["x"] * 80], [80]).result(10).shape == (1, 1)
        assert batcher.submit([["x"] * 5] * 2, [5, 5]).result(10).shape == (2, 1)
    finally:
        batcher.stop()
    assert batcher.call_sizes.sizes() == {10}
