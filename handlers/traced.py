"""Encoder forward passes traced with TorchScript, for CPU serving.

An eager transformers forward is a few hundred Python-level torch calls per pass, and each
takes the GIL back after its kernel. In a worker the GIL is shared with the batcher's other
lanes, Celery's threads and the job threads, and every one of those hand-backs can wait for
it: MiniLM at bf16 on one thread, passes of 32 sorted texts, 53-55 ms per pass eager and
49-51 ms traced alone, but 278-384 ms eager against 73-110 ms traced beside one pure-Python
thread (docs/benchmarks.md, "A traced forward"). A traced module runs the whole pass in C++
without the GIL.

Tracing records one run's Python control flow, so :func:`trace_forward` checks the traced
module against the eager one on inputs unlike the example (one row without padding, rows of
other lengths with padding) and returns ``None`` (eager then) when tracing fails or any
output differs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

log = logging.getLogger(__name__)

Inputs = Mapping[str, torch.Tensor]

# The example row lengths (tokens, special ones included) the trace runs on, then the checks.
EXAMPLE_TEXTS = ["one two three four five six seven eight nine ten", "one"]
CHECK_TEXTS = [
    ["hello"],
    ["a much longer line of text than the example held, to check other lengths", "x", "y z"],
]


def _first(output, name: str) -> torch.Tensor:
    if isinstance(output, Mapping):
        return output[name]
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, name)


def trace_forward(
    model: torch.nn.Module,
    make_inputs: Callable[[Sequence[str]], Inputs],
    output: str,
    *,
    tolerance: float = 2e-2,
) -> Callable[[Inputs], torch.Tensor] | None:
    """``model`` traced on ``make_inputs(EXAMPLE_TEXTS)`` as a callable from padded inputs to
    its ``output`` (``last_hidden_state``, ``logits``), or ``None`` where the traced module
    cannot be trusted (see the module docstring). ``make_inputs`` pads texts the way the
    handler's passes do."""
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about the recorded control flow
            example = dict(make_inputs(EXAMPLE_TEXTS))
            traced = torch.jit.trace(model, example_kwarg_inputs=example, strict=False)
            for texts in [EXAMPLE_TEXTS, *CHECK_TEXTS]:
                inputs = dict(make_inputs(texts))
                want = _first(model(**inputs), output).float()
                got = _first(traced(**inputs), output).float()
                if got.shape != want.shape:
                    raise ValueError(f"shape {tuple(got.shape)} != {tuple(want.shape)}")
                if "attention_mask" in inputs and want.dim() == 3:  # padding rows are free
                    keep = inputs["attention_mask"].bool()
                    got, want = got[keep], want[keep]
                error = (got - want).abs().max().item() if got.numel() else 0.0
                if not error <= tolerance * (1.0 + want.abs().max().item()):
                    raise ValueError(f"outputs differ by {error:.3g}")
    except Exception as exc:  # any failure: eager passes
        reason = str(exc)  # a tracer error can quote a whole tensor: its first lines only
        reason = reason if len(reason) <= 300 else reason[:300] + " ..."
        log.warning("%s: no traced forward, eager passes (%s)", type(model).__name__, reason)
        return None

    def forward(inputs: Inputs) -> torch.Tensor:
        return _first(traced(**inputs), output)

    return forward


def wants_trace(setting: bool | str | None, device: torch.device) -> bool:
    """A catalog entry's ``torchscript`` (``auto``, the default: on CPU only; a GPU pass holds
    the GIL for a moment only)."""
    if setting is None or str(setting).lower() == "auto":
        return device.type == "cpu"
    if isinstance(setting, bool):
        return setting
    return str(setting).lower() in ("1", "true", "yes", "on")
