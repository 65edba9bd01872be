"""Probe: run146's three fastest settings of the UniMixing backward's per-block kernel (``H`` saved,
rankmixer-100m, bf16) against the default, side by side: four rounds, the settings alternating within
each, every one under one captured CUDA graph; then the op's training step at the default and at the
fastest (bf16 autocast, fp32 weights).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import importlib.util
import pathlib

import torch
from unimixer_kernels.triton_kernels import unimixing as kernels

import unimixer_kernels as uk
from bench.timing import graph_replay_us

spec = importlib.util.spec_from_file_location(
    "run146", pathlib.Path(__file__).parent.parent / "2026-11-30-h200-run146" / "probe.py")
run146 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run146)
BS, T, D, B = run146.BS, run146.T, run146.D, run146.B
SETTINGS = [(8, 64, 4, 3), (4, 32, 4, 3), (4, 64, 4, 2), (4, 64, 4, 4)]  # default first


def main() -> None:
    n = T * D // B
    x = torch.randn(BS, T, D, device="cuda").to(torch.bfloat16)
    g = torch.randn_like(x)
    wl = torch.randn(n, B, B, device="cuda") * B ** -0.5
    dx = torch.empty_like(x)
    times = {s: [] for s in SETTINGS}
    for _ in range(4):
        for s in SETTINGS:
            times[s].append(graph_replay_us(lambda: run146.local(x, g, wl, dx, *s)))  # noqa: B023
    for s, ts in times.items():
        print(f"per-block backward, H saved, (programs an SM, samples a step, warps, stages) = {s}: "
              + " / ".join(f"{t:.1f}" for t in ts) + f" us, median {sorted(ts)[1]:.1f}-{sorted(ts)[2]:.1f}",
              flush=True)
    xr = x.clone().requires_grad_()
    wlr = wl.clone().requires_grad_()
    wg = (torch.randn(n, n, device="cuda") * n ** -0.5).requires_grad_()
    gy = torch.randn_like(x)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = uk.unimixing(xr, wlr, wg, backend="triton")
        return torch.autograd.grad(y, (xr, wlr, wg), gy)

    default = (kernels.LOCAL_DOT_BWD_PER_SM,)
    for rnd in range(2):
        for per_sm in (8, 4):
            kernels.LOCAL_DOT_BWD_PER_SM = per_sm
            us = graph_replay_us(step)
            print(f"op step round {rnd}, LOCAL_DOT_BWD_PER_SM={per_sm} (64 samples a step): {us:.1f} us",
                  flush=True)
    kernels.LOCAL_DOT_BWD_PER_SM = default[0]


if __name__ == "__main__":
    main()
