"""Probe (run175's, on the forward's columns formed again only past 8 bits, each column slot of a warp
behind its own uniform branch): the cuda backend's
Sinkhorn in its three tile shapes against the Triton resident kernels, each step under one captured
CUDA graph, two rounds alternating: n = 1024 at K = 20 and K = 2 (the difference over 18 is one
iteration's cost) with 'auto' (the plan it takes is printed) and 128 x 128; n = 512 with each tile.
Then outputs and gradients against Triton's.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root, the extension built)
"""

import os

import torch

import unimixer_kernels as uk
from bench.timing import graph_replay_us
from unimixer_kernels.ops import sinkhorn_cuda

TAU = 0.05
NAMES = ("128x64", "64x128", "128x128")  # csrc/sinkhorn.cu kTiles
inputs = {n: (torch.randn(n, n, device="cuda").requires_grad_(), torch.randn(n, n, device="cuda"))
          for n in (512, 1024)}
for n in (512, 1024):
    plan = sinkhorn_cuda.cuda_ops().sinkhorn_plan(inputs[n][0], True)
    print(f"n={n}: 'auto' takes forward {NAMES[plan[0]]}, backward {NAMES[plan[1]]}")


def step(x, g, backend, iters, bwd):
    def fn():
        p = uk.sinkhorn(x, TAU, iters, True, backend=backend)
        return torch.autograd.grad(p, x, g)[0] if bwd else p
    return fn


CASES = [(1024, 20, "triton", "auto"), (1024, 20, "cuda", "auto"), (1024, 20, "cuda", "128x128"),
         (1024, 2, "triton", "auto"), (1024, 2, "cuda", "auto"), (1024, 2, "cuda", "128x128"),
         (512, 20, "triton", "auto"), (512, 20, "cuda", "64x128"), (512, 20, "cuda", "128x64"),
         (512, 20, "cuda", "128x128")]
for rnd in range(2):
    for bwd in (False, True):
        for n, iters, backend, tile in CASES:
            os.environ["UNIMIXER_SINKHORN_CUDA_TILE"] = tile
            us = graph_replay_us(step(*inputs[n], backend, iters, bwd), reps=50, runs=5)
            mode = "fwd+bwd" if bwd else "fwd"
            print(f"round {rnd} n={n:4d} K={iters:2d} {mode:7s} {backend:6s} tile={tile:7s} {us:8.1f} us",
                  flush=True)
os.environ["UNIMIXER_SINKHORN_CUDA_TILE"] = "auto"

x, g = inputs[1024]
for sym in (True, False):
    outs = {}
    for backend in ("triton", "cuda"):
        p = uk.sinkhorn(x, TAU, 20, sym, backend=backend)
        outs[backend] = (p.detach(), torch.autograd.grad(p, x, g)[0])
    (pt, dt), (pc, dc) = outs["triton"], outs["cuda"]
    print(f"symmetric={sym}: max|P_cuda - P_triton| {(pc - pt).abs().max().item():.3e} of "
          f"{pt.abs().max().item():.3e}; max|dX_cuda - dX_triton| {(dc - dt).abs().max().item():.3e} of "
          f"{dt.abs().max().item():.3e}")
