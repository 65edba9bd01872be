"""Correctness of every op x every kernel backend against the reference, on small random inputs,
by SPEC §8's rule (``unimixer_kernels.testing.check_against_reference``: forward and every gradient).

Shapes are small and deliberately not powers of two (``N = 12``, ``D = 12``). A backend that cannot
run here is reported with the reason (on a CPU the Triton backend runs only in the interpreter,
``TRITON_INTERPRET=1``, which must be set before the process starts).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

import unimixer_kernels as uk
from unimixer_kernels.testing import check_against_reference

from .blocks import Unavailable
from .cases import case_of_op
from .presets import Preset

CHECK_PRESET = Preset("check", dict(bs=3, T=4, D=12, B=4, r=5, nb=3, h=20, ffn_mult=2, n=7, d=12, fm_k=5))


@dataclass
class CheckResult:
    op: str
    backend: str
    dtype: str
    status: str  # PASS, FAIL, ERROR, skipped
    detail: str = ""
    seconds: float = 0.0


def check_dtypes(device: torch.device) -> list[torch.dtype]:
    # the CPU interpreter truncates fp32 -> bf16, so bf16 is checked on a GPU only (tests/conftest.py)
    return [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]


def run_checks(device: torch.device, progress=None, ops: list[str] | None = None) -> list[CheckResult]:
    results: list[CheckResult] = []
    old = os.environ.get("UNIMIXER_POISON_OUTPUTS")
    os.environ["UNIMIXER_POISON_OUTPUTS"] = "1"  # an unwritten output element fails the check
    try:
        for name in sorted(uk.OPS):
            if ops and name not in ops:
                continue
            op = uk.OPS[name]
            for backend in (b for b in op.impls if b != "reference"):
                ok, why = op.status(backend)
                if ok and device.type == "cpu" and backend != "triton":
                    ok, why = False, f"the {backend} backend needs CUDA tensors"
                for dtype in check_dtypes(device):
                    label = str(dtype).replace("torch.", "")
                    if not ok:
                        results.append(CheckResult(name, backend, label, "skipped", why))
                    elif case_of_op(name) is None:
                        results.append(CheckResult(name, backend, label, "skipped",
                                                   "no check inputs for this op in bench/cases.py"))
                    else:
                        results.append(_check_one(case_of_op(name), name, backend, dtype, device))
                    if progress:
                        progress.update(f"check {name} {backend} {label}: {results[-1].status}")
    finally:
        if old is None:
            os.environ.pop("UNIMIXER_POISON_OUTPUTS", None)
        else:
            os.environ["UNIMIXER_POISON_OUTPUTS"] = old
    return results


def count_checks(ops: list[str] | None = None) -> int:
    return sum(len([b for b in op.impls if b != "reference"]) for name, op in uk.OPS.items()
               if not ops or name in ops)


def _check_one(case, name: str, backend: str, dtype: torch.dtype, device: torch.device) -> CheckResult:
    label = str(dtype).replace("torch.", "")
    t0 = time.perf_counter()
    try:
        setup = case.factory(CHECK_PRESET, device, dtype)
        inputs = _in_dtype(setup.make_inputs(), dtype)
        check_against_reference(setup.public, inputs, backend=backend, kwargs=setup.kwargs)
        return CheckResult(name, backend, label, "PASS", seconds=time.perf_counter() - t0)
    except Unavailable as exc:
        return CheckResult(name, backend, label, "skipped", str(exc))
    except AssertionError as exc:
        return CheckResult(name, backend, label, "FAIL", _failure_detail(str(exc)), time.perf_counter() - t0)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return CheckResult(name, backend, label, "ERROR", detail, time.perf_counter() - t0)


def _failure_detail(message: str) -> str:
    """A failed check's table cell: the rule's verdict (the message's first line) and, where the check
    measured it, how far torch itself moves when every input moves by one ulp."""
    lines = message.splitlines()
    spread = [line for line in lines[1:] if "moved by one ulp" in line]
    return "; ".join([lines[0][:300] if lines else "", *(line[:200] for line in spread[:1])])


def _in_dtype(inputs, dtype: torch.dtype) -> list:
    """Every floating input in the check's dtype, as the test suite runs each kernel: SPEC §8's rule
    holds a kernel to torch on the same inputs, and the cases' fp32 parameters beside 16-bit
    activations are a mixed-precision setup that some ops document as computed in the activations'
    precision (``unimixing``), where torch's reference upcasts to fp32."""
    out = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
            t = t.detach().to(dtype).requires_grad_(t.requires_grad)
        out.append(t)
    return out


def format_checks(results: list[CheckResult]) -> str:
    """One line per check; skips that share backend, dtype and reason are folded into one line."""
    lines = ["| op | backend | dtype | result | s |", "|---|---|---|---|---|"]
    skipped: dict[tuple, list[str]] = {}
    for r in results:
        if r.status == "skipped":
            skipped.setdefault((r.backend, r.dtype, r.detail), []).append(r.op)
            continue
        res = r.status if not r.detail else f"{r.status}: {r.detail}"
        lines.append(f"| {r.op} | {r.backend} | {r.dtype} | {res} | {r.seconds:.1f} |")
    for (backend, dtype, why), ops in skipped.items():
        names = ", ".join(ops) if len(ops) <= 3 else f"{len(ops)} ops ({', '.join(ops)})"
        lines.append(f"| {names} | {backend} | {dtype} | skipped: {why} | |")
    n = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "ERROR", "skipped")}
    lines.append("")
    lines.append(f"{n['PASS']} passed, {n['FAIL']} failed, {n['ERROR']} errors, {n['skipped']} skipped")
    return "\n".join(lines)
