"""The `cuda` paired Sinkhorn at n = 4096, K = 20, tau = 0.05, symmetric: forward and forward+backward, each
under one captured CUDA graph (median of 5 runs of 20 replays), for the build importable from the working
directory; with a second argument 1, also P and dX against the Triton backend at n = 4096, 1100 (a batch
of 2) and 2048. Usage: python time_paired.py <label> 0|1."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the build under test: the working directory's tree

import torch  # noqa: E402

import unimixer_kernels as uk  # noqa: E402
from bench.timing import graph_replay_us  # noqa: E402

name, check = sys.argv[1], sys.argv[2] == "1"
torch.manual_seed(0)
n = 4096
x = torch.randn(n, n, device="cuda", requires_grad=True)
g = torch.randn(n, n, device="cuda")

def step(bwd, backend="cuda", xx=x, gg=g):
    def fn():
        p = uk.sinkhorn(xx, 0.05, 20, True, backend=backend)
        return torch.autograd.grad(p, xx, gg)[0] if bwd else p
    return fn

fw = graph_replay_us(step(False), reps=20, runs=5)
fb = graph_replay_us(step(True), reps=20, runs=5)
print(f"{name:5s} fwd {fw:8.1f} us  fwd+bwd {fb:8.1f} us", flush=True)
if check:
    for nn, b in ((4096, 1), (1100, 2), (2048, 1)):
        xx = torch.randn(b, nn, nn, device="cuda", requires_grad=True)
        gg = torch.randn(b, nn, nn, device="cuda")
        outs = {}
        for be in ("triton", "cuda"):
            p = uk.sinkhorn(xx, 0.05, 20, True, backend=be)
            outs[be] = (p.detach(), torch.autograd.grad(p, xx, gg)[0])
        (pt, dt), (pc, dc) = outs["triton"], outs["cuda"]
        print(f"{name:5s} n={nn} b={b}: max|dP| {(pc - pt).abs().max().item():.3e} "
              f"max|ddX| {(dc - dt).abs().max().item():.3e} of {dt.abs().max().item():.3e}", flush=True)
