"""Probe: run148's comparison at both B = 48 presets on the committed kernels: the UniMixing op's
training step (bf16 autocast, fp32 weights) with the backward's per-block kernel, ``H`` saved, at
(programs an SM, samples a step) = (4, 32) (the default since eb75e85), (8, 64) (before), (8, 32)
and (4, 64): three rounds, the settings alternating, every step under one captured CUDA graph.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
from unimixer_kernels.triton_kernels import unimixing as kernels

import unimixer_kernels as uk
from bench.timing import graph_replay_us

SETTINGS = [(4, 32), (8, 64), (8, 32), (4, 64)]


def probe(name: str, bs: int, t: int, d: int, b: int) -> None:
    n = t * d // b
    x = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16).requires_grad_()
    wl = (torch.randn(n, b, b, device="cuda") * b ** -0.5).requires_grad_()
    wg = (torch.randn(n, n, device="cuda") * n ** -0.5).requires_grad_()
    gy = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = uk.unimixing(x, wl, wg, backend="triton")
        return torch.autograd.grad(y, (x, wl, wg), gy)

    default = kernels.LOCAL_DOT_BWD[False]
    times = {s: [] for s in SETTINGS}
    for _ in range(3):
        for s in SETTINGS:
            kernels.LOCAL_DOT_BWD[False] = s
            times[s].append(graph_replay_us(step))
    kernels.LOCAL_DOT_BWD[False] = default
    for s, ts in times.items():
        print(f"{name} (programs an SM, samples a step) = {s}: " + " / ".join(f"{v:.1f}" for v in ts)
              + f" us, median {sorted(ts)[1]:.1f}", flush=True)


def main() -> None:
    probe("rankmixer-100m", 2048, 16, 768, 48)
    probe("rankmixer-1b", 512, 32, 1536, 48)


if __name__ == "__main__":
    main()
