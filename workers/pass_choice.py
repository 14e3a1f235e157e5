"""Which pending inputs make the batcher's next pass (workers/batching.py's docstring says why).

The pass is anchored on the oldest input of the most urgent priority and grows by the
neighbour in length (shorter or longer) that pads it least, until the padded size reaches the
token budget, or until a pass of more than ``min_batch_size`` inputs would carry more than
``max_padding`` padded tokens per real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Pending(Protocol):
    priority: int
    length: int


P = TypeVar("P", bound=Pending)


def choose_pass(
    candidates: Sequence[P],
    *,
    batch_tokens: int,
    max_batch_size: int,
    min_batch_size: int,
    max_padding: float,
) -> tuple[list[P], list[P]]:
    """(the pass, the rest) out of ``candidates``, oldest first; the first is the anchor."""
    anchor = candidates[0]
    # Urgent work rides in a pass of its own priority: an interactive text is not padded
    # out with a full batch of bulk texts (which would make its pass the slowest).
    others = [it for it in candidates if it.priority != anchor.priority]
    candidates = [it for it in candidates if it.priority == anchor.priority]
    by_length = sorted(candidates, key=lambda it: it.length)
    lo = hi = by_length.index(anchor)
    real = anchor.length
    while (count := hi - lo + 2) <= max_batch_size:  # the size after growing by one
        # Grow by the neighbour (shorter or longer) that pads the pass least. Each option:
        # (the pass's longest input after adding it, the tokens it adds, which side).
        options = []
        if lo > 0:
            options.append((by_length[hi].length, by_length[lo - 1].length, -1))
        if hi + 1 < len(by_length):
            longer = by_length[hi + 1].length
            options.append((longer, longer, +1))
        options = [
            (count * longest / (real + added), added, side)
            for longest, added, side in options
            if count * longest <= batch_tokens
        ]
        if not options:
            break
        padding, added, side = min(options)
        if count > min_batch_size and padding > max_padding:
            break  # big enough: leave the outliers to passes of their own lengths
        real += added
        if side < 0:
            lo -= 1
        else:
            hi += 1
    chosen = by_length[lo : hi + 1]
    rest = by_length[:lo] + by_length[hi + 1 :] + others
    return chosen, rest
