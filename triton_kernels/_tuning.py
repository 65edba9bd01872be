"""Choosing a kernel's tile by timing the candidates against each other, in rounds.

Triton's autotuner compiles and times each candidate once, one after the other, with ``do_bench``. The
per-token FFN's act kernel, tuned so in the first training step of a process, chose four different tiles
in six fresh processes on one H200 (run251), and the block's step followed the choice (0.680 to 0.714
ms). Two causes, found in run253 and run254:

- ``do_bench`` enqueues each timed launch right after the L2 flush before it, so the GPU waits for the
  host wherever the host's enqueueing (a Triton launch with some 35 arguments: tens of µs, more on a busy
  host) outlasts the flush: the wait falls between the start and end events. In some processes every
  tile of the act kernel then timed at 45-65 µs, the fastest included (25 µs quiet), for stretches of
  several rounds. :func:`_bench` queues a round behind a GPU sleep, so that the host is always ahead.
- A single timing falls wherever such a stretch does. :func:`fastest` compiles and runs every candidate
  first, then times them all in several rounds, the order reversed each round, and compares each
  candidate's fastest round: interference only ever adds time, so a candidate's least round is the one
  nearest its own time (run253: the least median chose a tile 16% slower where a stretch covered three
  of four rounds; the least round chose the fastest).

:class:`TileTuner` applies it to a kernel's tiles.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Hashable

import torch
from triton.runtime.errors import OutOfResources

ROUNDS = 4
REPS = 25  # timed launches a round, each after an L2 flush
# the GPU sleep queued ahead of a round: ~5 ms at 2 GHz, twice what the host takes to enqueue a round of
# REPS flushes and launches at 100 µs each
HEAD_START_CYCLES = 10_000_000
_FLUSH_BYTES = 256 << 20  # more than an H100/H200's 50/60 MiB L2, as Triton's do_bench


@functools.cache
def _flush_buffer(device: int) -> torch.Tensor:
    return torch.empty(_FLUSH_BYTES, dtype=torch.int8, device=torch.device("cuda", device))


def _bench(fn: Callable[[], object]) -> float:
    """Milliseconds of one call of ``fn`` on the current CUDA device (the median of ``REPS`` calls, the L2
    cache emptied before each), the calls queued behind a GPU sleep of ``HEAD_START_CYCLES`` so that the
    GPU never waits for the host between a call's start and end events."""
    device = torch.cuda.current_device()
    flush = _flush_buffer(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(REPS)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(REPS)]
    torch.cuda.synchronize(device)
    torch.cuda._sleep(HEAD_START_CYCLES)
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    ends[-1].synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in zip(starts, ends))


def fastest(launches: dict[Hashable, Callable[[], object]], rounds: int = ROUNDS,
            bench: Callable[[Callable[[], object]], float] | None = None) -> tuple[Hashable, dict]:
    """``(key, times)``: the key of ``launches`` (key -> a callable that launches the kernel once) whose
    fastest of ``rounds`` rounds is the least, and every key's times in milliseconds, round by round.
    Every launch runs once before any is timed (it compiles there); round ``r`` times the keys in their
    order when ``r`` is even and in reverse when odd, so that no key is always timed first or last after
    a pause. A candidate whose first launch raises ``OutOfResources`` (shared memory or registers beyond
    what the device offers, which a shared-memory estimate can miss) is left out, as Triton's autotuner
    leaves it out. ``bench`` times one callable (default: :func:`_bench`)."""
    bench = bench or _bench
    if not launches:
        raise ValueError("fastest: launches is empty; pass at least one candidate")
    if rounds < 1:
        raise ValueError(f"fastest: rounds must be >= 1, got {rounds}")
    keys = []
    for key, launch in launches.items():
        try:
            launch()
        except OutOfResources:
            continue
        keys.append(key)
    if not keys:
        raise RuntimeError(f"fastest: every candidate ran out of resources on this device "
                           f"({list(launches)}); give the kernel's tuner a smaller tile")
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
    reads what it writes, or adds to earlier results, is tuned on scratch tensors (:meth:`tile`). ``tiles``
    and ``times`` hold each kind's choice and every tile's milliseconds round by round. As any tuning, it
    cannot run inside a CUDA graph capture: warm up first."""

    def __init__(self, kernel, configs: list, key: list[str], prune: Callable[..., list]):
        self.kernel, self.configs, self.key, self.prune = kernel, configs, key, prune
        self.tiles: dict[tuple, object] = {}
        self.times: dict[tuple, dict] = {}
        # each key name's place among the kernel's parameters, found once: a launch passes the leading
        # ones positionally and the rest (the constexprs) in its meta
        self._key_at = [(kernel.arg_names.index(k), k) for k in key]

    def kind(self, args, meta: dict) -> tuple:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        return (*(args[i] if i < len(args) else meta[name] for i, name in self._key_at),
                *(a.dtype for a in tensors), tensors[0].device if tensors else None)

    def tile(self, grid, args, meta: dict, scratch: Callable[[list], list] | None = None):
        """The tile (a ``triton.Config``) for ``args`` and ``meta``, tuned the first time their kind is
        seen: on ``scratch(args)`` where given (the arguments with scratch tensors in place of those the
        kernel reads back or adds to; called only where there are tiles to time), else on ``args``."""
        kind = self.kind(args, meta)
        if kind not in self.tiles:
            tiles = self.prune(self.configs, dict(zip(self.kernel.arg_names, args)), **meta)
            if len(tiles) == 1:
                self.tiles[kind] = tiles[0]
            else:
                on = list(args) if scratch is None else scratch(list(args))
                launch = self.kernel[grid]
                self.tiles[kind], self.times[kind] = fastest(
                    {c: functools.partial(launch, *on, **meta, **c.all_kwargs()) for c in tiles})
        return self.tiles[kind]

    def run(self, grid, args, meta: dict, scratch: Callable[[list], list] | None = None):
        """The kernel launched on ``args`` with the tile of their kind (:meth:`tile`, which tunes it the
        first time); returns the compiled kernel."""
        return self.kernel[grid](*args, **meta, **self.tile(grid, args, meta, scratch).all_kwargs())

    def __getitem__(self, grid):
        """``tuner[grid](*args, **meta)``: :meth:`run` without scratch arguments."""
        return lambda *args, **meta: self.run(grid, args, meta)
