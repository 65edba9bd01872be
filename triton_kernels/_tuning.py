"""Choosing a kernel's tile by timing the candidates against each other, in rounds.

Triton's autotuner compiles and times each candidate once, one after the other. The per-token FFN's act
kernel, tuned so in the first training step of a process, chose four different tiles in six fresh
processes on one H200 (run251), and the block's step followed the choice (0.680 to 0.714 ms): a
candidate's single timing there depends on where in the tuning it falls (right after its own compile,
with the GPU idle meanwhile; the clocks early in a process). :func:`fastest` compiles and runs every
candidate first, then times them all in several rounds, the order reversed each round, and compares each
candidate's fastest round: interference (another launch, a clock dip, the clocks rising early in a
process) only ever adds time, so a candidate's least round is the one nearest its own time. In run253 a
slow stretch covered three of the four rounds of one tuning: the least median there chose a tile that a
quiet process's rounds put at 30.0 against the fastest's 25.9 µs; the least round would have chosen the
fastest. :class:`TileTuner` applies it to a kernel's tiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable

from triton.testing import do_bench

ROUNDS = 4


def _bench(fn: Callable[[], object]) -> float:
    """Milliseconds of one call of ``fn`` (median), the L2 cache emptied before each call."""
    return do_bench(fn, warmup=5, rep=20, return_mode="median")


def fastest(launches: dict[Hashable, Callable[[], object]], rounds: int = ROUNDS,
            bench: Callable[[Callable[[], object]], float] | None = None) -> tuple[Hashable, dict]:
    """``(key, times)``: the key of ``launches`` (key -> a callable that launches the kernel once) whose
    fastest of ``rounds`` rounds is the least, and every key's times in milliseconds, round by round.
    Every launch runs once before any is timed (it compiles there); round ``r`` times the keys in their
    order when ``r`` is even and in reverse when odd, so that no key is always timed first or last after
    a pause. ``bench`` times one callable (default: Triton's ``do_bench``, the median of ~20 ms of
    calls)."""
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
    return min(keys, key=lambda key: min(times[key])), times


class TileTuner:
    """The tile of one ``@triton.jit`` kernel, chosen once per kind and then launched untuned.

    A kind is the values of the arguments named in ``key`` (as Triton's autotuner's ``key``), the dtypes
    of the tensor arguments and the device. On a kind's first launch the tiles of ``configs`` that
    ``prune(configs, named_args, **meta)`` keeps are timed against each other by :func:`fastest` on the
    arguments given to :meth:`tile` (one tile left: taken with no launch). No timed launch restores
    anything (Triton's autotuner's ``restore_value`` copies would run inside its timed calls), so a
    kernel that writes only outputs its launch writes again can be tuned on its real arguments; one that
    reads what it writes, or adds to earlier results, is given scratch tensors (:meth:`tile`). ``tiles``
    and ``times`` hold each kind's choice and every tile's milliseconds round by round. As any tuning, it
    cannot run inside a CUDA graph capture: warm up first."""

    def __init__(self, kernel, configs: list, key: list[str], prune: Callable[..., list]):
        self.kernel, self.configs, self.key, self.prune = kernel, configs, key, prune
        self.tiles: dict[tuple, object] = {}
        self.times: dict[tuple, dict] = {}

    def kind(self, args, meta: dict) -> tuple:
        named = dict(zip(self.kernel.arg_names, args), **meta)
        tensors = [a for a in args if hasattr(a, "dtype") and hasattr(a, "device")]
        return (*(str(named[k]) for k in self.key), *(str(a.dtype) for a in tensors),
                str(tensors[0].device) if tensors else "")

    def tile(self, grid, args, meta: dict, kind: tuple | None = None):
        """The tile (a ``triton.Config``) for ``args`` and ``meta``, tuned on these arguments the first
        time its kind (``kind``, default :meth:`kind` of them) is seen."""
        kind = self.kind(args, meta) if kind is None else kind
        if kind not in self.tiles:
            named = dict(zip(self.kernel.arg_names, args))
            tiles = self.prune(self.configs, named, **meta)
            if len(tiles) == 1:
                self.tiles[kind] = tiles[0]
            else:
                launch = self.kernel[grid]
                self.tiles[kind], self.times[kind] = fastest(
                    {c: functools.partial(launch, *args, **meta, **c.all_kwargs()) for c in tiles})
        return self.tiles[kind]

    def __getitem__(self, grid):
        """``tuner[grid](*args, **meta)``: the kernel launched with the tile of its kind (tuned on
        these arguments the first time); returns the compiled kernel."""
        def launch(*args, **meta):
            return self.kernel[grid](*args, **meta, **self.tile(grid, args, meta).all_kwargs())
        return launch
