"""Probe: the Sinkhorn of one 1024 x 1024 matrix (K = 20, tau = 0.05, symmetric, fp32 logits), forward
and forward + backward, each under one captured CUDA graph: the Triton resident kernels against the
cuda backend (csrc/sinkhorn.cu) with 64-row tiles (8 warps, 16 clusters of 8 blocks) and 128-row tiles
(16 warps, 8 clusters), alternating three rounds; then the outputs and gradients against each other.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root, the extension built)
"""

import os

import torch

import unimixer_kernels as uk
from bench.timing import graph_replay_us

N, TAU, K = 1024, 0.05, 20
x = torch.randn(N, N, device="cuda").requires_grad_()
g = torch.randn(N, N, device="cuda")


def step(backend, bwd):
    def fn():
        p = uk.sinkhorn(x, TAU, K, True, backend=backend)
        if bwd:
            return torch.autograd.grad(p, x, g)[0]
        return p
    return fn


CONFIGS = [("triton", None), ("cuda", "8"), ("cuda", "16")]
for rnd in range(3):
    for bwd in (False, True):
        for backend, warps in CONFIGS:
            if warps:
                os.environ["UNIMIXER_SINKHORN_CUDA_WARPS"] = warps
            us = graph_replay_us(step(backend, bwd), reps=50, runs=5)
            mode = "fwd+bwd" if bwd else "fwd"
            print(f"round {rnd} {mode:7s} {backend:6s} warps={warps or '-':2s} {us:8.1f} us", flush=True)

os.environ["UNIMIXER_SINKHORN_CHECK"] = "1"
for sym in (True, False):
    outs = {}
    for backend, warps in CONFIGS:
        if warps:
            os.environ["UNIMIXER_SINKHORN_CUDA_WARPS"] = warps
        p = uk.sinkhorn(x, TAU, K, sym, backend=backend)
        outs[(backend, warps)] = (p.detach(), torch.autograd.grad(p, x, g)[0])
    ref_p, ref_dx = outs[("triton", None)]
    for key, (p, dx) in outs.items():
        dp_, ddx = (p - ref_p).abs().max().item(), (dx - ref_dx).abs().max().item()
        print(f"symmetric={sym} {key}: max|P - P_triton| {dp_:.3e} (max P {ref_p.abs().max().item():.3e}), "
              f"max|dX - dX_triton| {ddx:.3e} (max dX {ref_dx.abs().max().item():.3e})")
