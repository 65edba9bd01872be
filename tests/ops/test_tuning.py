"""Choosing a kernel's tile by timing the candidates in rounds (``triton_kernels/_tuning.py``): every
candidate launched once before any timing, the rounds' order alternating, each candidate's fastest round
compared; :class:`TileTuner` tunes once per kind and launches the tile chosen."""

import pytest
from unimixer_kernels.triton_kernels import _tuning
from unimixer_kernels.triton_kernels._tuning import ROUNDS, TileTuner, fastest


class Clock:
    """A fake GPU: each key's true time, plus a drift that moves every timing by ``drift`` ms from the
    previous one (clocks rising early in a process), plus outliers at chosen timings."""

    def __init__(self, true: dict, drift: float = 0.0, outliers: dict | None = None):
        self.true, self.drift, self.outliers = true, drift, outliers or {}
        self.calls: list[str] = []  # every launch, in order
        self.timed: list[str] = []  # the launch each timing measured

    def launches(self) -> dict:
        return {key: (lambda key=key: self.calls.append(key)) for key in self.true}

    def bench(self, fn) -> float:
        fn()
        key = self.calls[-1]
        i = len(self.timed)
        self.timed.append(key)
        return self.true[key] + self.drift * i + self.outliers.get(i, 0.0)


def test_every_candidate_runs_before_any_is_timed_and_the_rounds_alternate():
    clock = Clock({"a": 1.0, "b": 2.0, "c": 3.0})
    best, times = fastest(clock.launches(), rounds=4, bench=clock.bench)
    assert clock.calls[:3] == ["a", "b", "c"]  # compiled first
    assert clock.timed == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert best == "a" and times == {"a": [1.0, 1.0, 1.0, 1.0], "b": [2.0] * 4, "c": [3.0] * 4}


def test_a_drift_linear_in_time_does_not_pick_the_last_timed():
    # clocks rising through the tuning: each timing 0.8 ms less than the previous, more than the
    # 0.5 ms between the tiles. Timed once each in turn (Triton's autotuner) the last tile would win;
    # in alternating rounds every tile is also timed late
    true = {"fast": 10.0, "mid": 10.5, "slow": 11.0}
    once = Clock(true, drift=-0.8)
    _, single = fastest(once.launches(), rounds=1, bench=once.bench)
    assert min(single, key=lambda k: single[k][0]) == "slow"
    clock = Clock(true, drift=-0.8)
    best, _ = fastest(clock.launches(), rounds=ROUNDS, bench=clock.bench)
    assert ROUNDS % 2 == 0 and best == "fast"


def test_one_outlier_round_does_not_flip_the_choice():
    # the fastest tile's first timing hit by a 50 ms stall (another process, a clock dip)
    clock = Clock({"fast": 1.0, "slow": 1.2}, outliers={0: 50.0})
    best, times = fastest(clock.launches(), rounds=ROUNDS, bench=clock.bench)
    assert best == "fast" and max(times["fast"]) == 51.0


def test_a_slow_stretch_over_most_rounds_does_not_flip_the_choice():
    # run253: a slow stretch over three of the fastest tile's four rounds (and two of the other's); the
    # least median would take the slower tile, the least round takes the fastest
    stretch = {i: 18.0 for i in range(5)}  # the first five timings: fast, slow, slow, fast, fast
    clock = Clock({"fast": 25.9, "slow": 30.0}, outliers=stretch)
    best, times = fastest(clock.launches(), rounds=ROUNDS, bench=clock.bench)
    assert times["fast"] == [43.9, 43.9, 43.9, 25.9] and times["slow"] == [48.0, 48.0, 30.0, 30.0]
    assert best == "fast"


def test_a_candidate_out_of_resources_is_left_out():
    from triton.runtime.errors import OutOfResources

    clock = Clock({"a": 2.0, "big": 1.0, "b": 3.0})

    def too_big():
        raise OutOfResources(240 * 1024, 227 * 1024, "shared memory")

    launches = dict(clock.launches(), big=too_big)
    best, times = fastest(launches, rounds=2, bench=clock.bench)
    assert best == "a" and set(times) == {"a", "b"} and "big" not in clock.timed
    with pytest.raises(RuntimeError, match="every candidate ran out of resources"):
        fastest({"big": too_big}, bench=clock.bench)


def test_the_default_bench_is_read_when_called(monkeypatch):
    clock = Clock({"x": 1.0, "y": 0.5})
    monkeypatch.setattr(_tuning, "_bench", clock.bench)
    assert fastest(clock.launches())[0] == "y"
    assert len(clock.timed) == 2 * ROUNDS


@pytest.mark.parametrize("kwargs, match", [(dict(launches={}), "launches is empty"),
                                           (dict(launches={"a": lambda: None}, rounds=0), "rounds must be")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastest(**kwargs)


@pytest.mark.gpu
def test_the_default_bench_ranks_real_launches():
    # on the device: a 64 MiB fill against a 4 KiB one
    import torch

    big, small = torch.empty(1 << 24, device="cuda"), torch.empty(1 << 10, device="cuda")
    best, times = fastest({"big": lambda: big.fill_(1.0), "small": lambda: small.fill_(1.0)})
    assert best == "small" and all(len(t) == ROUNDS for t in times.values())
    assert min(times["big"]) > max(times["small"])


@pytest.mark.gpu
def test_the_default_bench_leaves_the_hosts_enqueueing_out():
    # a launch whose host side takes 100 µs (a busy host, a launch with many arguments) around a GPU fill
    # of a few µs: each call was timed with the host's wait in it (Triton's do_bench: >= 0.1 ms); queued
    # behind the GPU sleep, the GPU never waits for the host between the events
    import time

    import torch

    small = torch.empty(1 << 10, device="cuda")

    def slow_host():
        until = time.perf_counter() + 100e-6
        while time.perf_counter() < until:
            pass
        small.fill_(1.0)

    slow_host()
    assert _tuning._bench(slow_host) < 0.05


class FakeKernel:
    """A stand-in ``@triton.jit`` kernel: its argument names, and ``kernel[grid](*args, **meta)`` recording
    each launch's tile."""

    arg_names = ["X", "N", "FLAG"]

    def __init__(self):
        self.launched: list[tuple] = []

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.launched.append((args[0].shape[0], meta["FLAG"], meta["BLOCK"]))
        return launch


def _tile(block):
    import triton

    return triton.Config({"BLOCK": block}, num_warps=4, num_stages=2)


def test_tile_tuner_tunes_once_per_kind_and_launches_the_tile_chosen(monkeypatch):
    import torch

    kernel = FakeKernel()
    pruned = []

    def prune(configs, named, **meta):
        pruned.append((named["N"], meta["FLAG"]))
        return configs if named["N"] > 1 else configs[:1]

    # the BLOCK 32 tile is the fast one
    monkeypatch.setattr(_tuning, "_bench", lambda fn: (fn(), 1.0 if kernel.launched[-1][2] == 32 else 2.0)[1])
    tuner = TileTuner(kernel, [_tile(16), _tile(32)], key=["N", "FLAG"], prune=prune)
    x = torch.zeros(8)
    tuner[(1,)](x, 8, FLAG=True)
    assert len(kernel.launched) == 2 * (1 + ROUNDS) + 1  # each tile once, ROUNDS timings each, then the run
    assert kernel.launched[-1] == (8, True, 32)
    tuner[(1,)](x, 8, FLAG=True)  # the same kind: no tuning
    assert len(kernel.launched) == 2 * (1 + ROUNDS) + 2 and len(pruned) == 1
    kernel.launched.clear()
    tuner[(1,)](x, 1, FLAG=True)  # another kind with one tile left: taken with no timing
    tuner[(1,)](x.double(), 8, FLAG=True)  # another dtype: another kind, tuned again
    assert kernel.launched[0] == (8, True, 16) and len(kernel.launched) == 1 + 2 * (1 + ROUNDS) + 1
    assert len(tuner.tiles) == 3 and len(tuner.times) == 2
    assert all(len(t) == ROUNDS for times in tuner.times.values() for t in times.values())


def test_tile_tuner_times_on_scratch_only_where_there_is_tuning(monkeypatch):
    import torch

    kernel, made = FakeKernel(), []

    def scratch(args):
        made.append(args[1])
        args[0] = torch.zeros(3)  # the tuning's own tensor: its launches are told apart by its length
        return args

    monkeypatch.setattr(_tuning, "_bench", lambda fn: (fn(), 1.0)[1])
    tuner = TileTuner(kernel, [_tile(16), _tile(32)], key=["N"],
                      prune=lambda configs, named, **meta: configs if named["N"] > 1 else configs[:1])
    x = torch.zeros(8)
    tuner.tile((1,), [x, 1], dict(FLAG=False), scratch=scratch)  # one tile: no scratch, no launch
    assert made == [] and kernel.launched == []
    tuner.tile((1,), [x, 8], dict(FLAG=False), scratch=scratch)
    assert made == [8] and {n for n, _, _ in kernel.launched} == {3}
    assert len(kernel.launched) == 2 * (1 + ROUNDS)
