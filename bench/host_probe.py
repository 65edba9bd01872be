"""Probe: where an eager step's host time goes (``python -m bench.host_probe``, CUDA).

For each case it times the eager Triton step as it runs, then with the Triton launches stubbed out
(``JITFunction.run`` a no-op: the autotuner's and the project's Python still run), then with the
autotuner stubbed too; and it times the unit costs on this host: one launch of an empty kernel with
4 and with 40 arguments, through an autotuner of one config, a ``torch.library.custom_op`` forward and
backward pair around nothing, and ``torch.empty``.
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from . import ceilings
from .cases import CASES
from .presets import PRESETS
from .runner import CaseRunner
from .timing import wall_us


def _wall_us(fn, n: int = 30) -> float:
    return wall_us(fn, torch.device("cuda"), n, warmup=3)


@contextlib.contextmanager
def _patched(cls, attr: str, make):
    """``cls.<attr>`` replaced by ``make(original)`` inside the block."""
    original = getattr(cls, attr)
    setattr(cls, attr, make(original))
    try:
        yield
    finally:
        setattr(cls, attr, original)


def _stub(original):
    return lambda self, *a, **k: None


def _timer(per_name: dict, name_of):
    """A ``make`` for :func:`_patched`: each call's host time and argument count under ``name_of(self)``."""
    def make(original):
        def timed(self, *a, **k):
            t0 = time.perf_counter()
            out = original(self, *a, **k)
            entry = per_name.setdefault(name_of(self), [0, 0.0, len(a) + len(k)])
            entry[0] += 1
            entry[1] += time.perf_counter() - t0
            return out
        return timed
    return make


@triton.jit
def _empty4(a, b, n, m):
    pass


@triton.jit
def _empty40(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9):
    pass


@triton.autotune(configs=[triton.Config({"BLOCK": 64}, num_warps=4)], key=["n"])
@triton.jit
def _empty_tuned(a, b, n, m, BLOCK: tl.constexpr):
    pass


@torch.library.custom_op("unimixer_probe::noop", mutates_args=())
def _noop(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


_noop.register_fake(lambda x: torch.empty_like(x))
_noop.register_autograd(lambda ctx, g: g, setup_context=lambda ctx, inputs, output: None)


def units() -> list[str]:
    dev = torch.device("cuda")
    x = torch.empty(1024, device=dev)
    y = torch.empty(1024, device=dev)
    ptrs = [x, y] * 10
    ints = list(range(1, 21))
    rows = [
        ("launch, 4 arguments", lambda: _empty4[(1,)](x, y, 1024, 7)),
        ("launch, 40 arguments (20 tensors)", lambda: _empty40[(1,)](*ptrs, *ints)),
        ("launch through an autotuner of one config", lambda: _empty_tuned[(1,)](x, y, 1024, 7)),
        ("torch.empty", lambda: torch.empty(1024, device=dev)),
    ]
    xg = torch.empty(1024, device=dev, requires_grad=True)

    def pair():
        _noop(xg).sum().backward()

    def pair_plain():
        (xg * 1).sum().backward()
    rows += [("custom_op forward + backward (+ sum, its backward)", pair),
             ("a torch op forward + backward (+ sum, its backward)", pair_plain)]
    return [f"| {name} | {_wall_us(fn, 200):.1f} |" for name, fn in rows]


def _eager_step(case: str, preset: str, provider: str):
    dev = torch.device("cuda")
    runner = CaseRunner(dev, torch.bfloat16, ceilings.reference_h200(), 0, 0, autocast=True, rotate=False)
    setup = CASES[case].factory(PRESETS[preset], dev, torch.bfloat16)
    return runner.step(provider, setup, [setup.make_inputs()], "fwd+bwd", {})


def launch_rows(case: str, preset: str, provider: str, steps: int = 20) -> list[str]:
    from torch._library.custom_ops import CustomOpDef

    calls = _eager_step(case, preset, provider)
    for _ in range(3):
        calls()
    per_kernel: dict = {}
    per_op: dict = {}
    with _patched(JITFunction, "run", _timer(per_kernel, lambda f: f.__name__)):
        wall_us(calls, torch.device("cuda"), steps)
    with _patched(CustomOpDef, "__call__", _timer(per_op, lambda op: op._name)):
        wall_us(calls, torch.device("cuda"), steps)
    rows = [f"\n{case}@{preset}, {provider}: host time of each launch\n",
            "| kernel | launches/step | arguments | us/launch | us/step |", "|---|---:|---:|---:|---:|"]
    for name, (n, secs, nargs) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1]):
        rows.append(f"| {name} | {n / steps:g} | {nargs} | {secs * 1e6 / n:.1f} | {secs * 1e6 / steps:.0f} |")
    rows += ["\ncustom ops called from Python (a forward's whole host time, its launches included)\n",
             "| op | calls/step | us/call | us/step |", "|---|---:|---:|---:|"]
    for name, (n, secs, _) in sorted(per_op.items(), key=lambda kv: -kv[1][1]):
        rows.append(f"| {name} | {n / steps:g} | {secs * 1e6 / n:.1f} | {secs * 1e6 / steps:.0f} |")
    return rows


def case_rows(case: str, preset: str, provider: str) -> list[str]:
    calls = _eager_step(case, preset, provider)
    full = _wall_us(calls)
    with _patched(JITFunction, "run", _stub):
        no_launch = _wall_us(calls)
        with _patched(Autotuner, "run", _stub):
            no_tune = _wall_us(calls)
    return [f"| {case}@{preset} | {provider} | {full:.0f} | {no_launch:.0f} | {no_tune:.0f} |"]


LAUNCH_CASES = ("unimixer-block@paper-small", "rankmixer-block@rankmixer-100m")


def main() -> None:
    if sys.argv[1:] != ["launches"]:
        _stubs_and_units()
    for pair in LAUNCH_CASES:
        print("\n".join(launch_rows(*pair.split("@"), "triton")), flush=True)


def _stubs_and_units() -> None:
    print("| unit cost on this host | us |\n|---|---:|")
    print("\n".join(units()))
    print("\n| case | provider | eager us/step | Triton launches stubbed | and the autotuner |\n"
          "|---|---|---:|---:|---:|")
    for pair in ("unimixer-block@paper-small", "unimixing_rmsnorm_pswiglu@paper-small",
                 "rankmixer-block@rankmixer-100m", "unimixer-block@paper-100m"):
        print("\n".join(case_rows(*pair.split("@"), "triton")), flush=True)


if __name__ == "__main__":
    main()
