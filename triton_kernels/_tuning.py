"""Choosing a kernel's tile by timing the candidates against each other, in rounds.

Triton's autotuner compiles and times each candidate once, one after the other. The per-token FFN's act
kernel, tuned so in the first training step of a process, chose four different tiles in six fresh
processes on one H200 (run251), and the block's step followed the choice (0.680 to 0.714 ms): a
candidate's single timing there depends on where in the tuning it falls (right after its own compile,
with the GPU idle meanwhile; the clocks early in a process). :func:`fastest` compiles and runs every
candidate first, then times them all in several rounds, the order reversed each round so that a steady
drift falls alike on all, and compares the median of each candidate's rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable

from triton.testing import do_bench

ROUNDS = 4  # even: a drift linear in time then moves every tile's median alike


def _bench(fn: Callable[[], object]) -> float:
    """Milliseconds of one call of ``fn`` (median), the L2 cache emptied before each call."""
    return do_bench(fn, warmup=5, rep=20, return_mode="median")


def fastest(launches: dict[Hashable, Callable[[], object]], rounds: int = ROUNDS,
            bench: Callable[[Callable[[], object]], float] | None = None) -> tuple[Hashable, dict]:
    """``(key, times)``: the key of ``launches`` (key -> a callable that launches the kernel once) whose
    median time over ``rounds`` rounds is the least, and every key's times in milliseconds, round by round.
    Every launch runs once before any is timed (it compiles there); round ``r`` times the keys in their
    order when ``r`` is even and in reverse when odd, so that with an even ``rounds`` a drift linear in
    time shifts every key's median by the same amount. ``bench`` times one callable (default: Triton's
    ``do_bench``, the median of ~20 ms of calls)."""
    bench = bench or _bench
    if not launches:
        raise ValueError("fastest: launches is empty; pass at least one candidate")
    if rounds < 1:
        raise ValueError(f"fastest: rounds must be >= 1, got {rounds}")
    keys = list(launches)
    for key in keys:
        launches[key]()
    times: dict[Hashable, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        for key in keys if r % 2 == 0 else reversed(keys):
            times[key].append(bench(launches[key]))
    return min(keys, key=lambda key: statistics.median(times[key])), times
