"""Choosing a kernel's tile by timing the candidates in rounds (``triton_kernels/_tuning.py``): every
candidate launched once before any timing, the rounds' order alternating, the least median taken."""

import pytest
from unimixer_kernels.triton_kernels import _tuning
from unimixer_kernels.triton_kernels._tuning import ROUNDS, fastest


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
    # an even number of alternating rounds moves every median alike
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
    # Triton's do_bench on the device (its signature on this Triton): a 64 MiB fill against a 4 KiB one
    import torch

    big, small = torch.empty(1 << 24, device="cuda"), torch.empty(1 << 10, device="cuda")
    best, times = fastest({"big": lambda: big.fill_(1.0), "small": lambda: small.fill_(1.0)})
    assert best == "small" and all(len(t) == ROUNDS for t in times.values())
    assert min(times["big"]) > max(times["small"])
