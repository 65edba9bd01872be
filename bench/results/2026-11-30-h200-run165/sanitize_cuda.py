"""The cuda backend's Sinkhorn once forward and backward under compute-sanitizer (memcheck, racecheck):
n = 300 (3 x 3 tiles of 128 or 5 x 3 of 64 rows: clusters of 3 blocks, ragged last tiles) and n = 1024
(8 clusters of 8), symmetric and not, both tile heights where they fit, K = 3.

    compute-sanitizer --tool memcheck python sanitize_cuda.py   (repository root on PYTHONPATH)
"""

import os

import torch

import unimixer_kernels as uk

for n, warps in [(300, "8"), (300, "16"), (1024, "16")]:
    os.environ["UNIMIXER_SINKHORN_CUDA_WARPS"] = warps
    for sym in (True, False):
        x = torch.randn(n, n, device="cuda", requires_grad=True)
        p = uk.sinkhorn(x, 0.05, 3, sym, backend="cuda")
        (dx,) = torch.autograd.grad(p, x, torch.randn_like(p))
        torch.cuda.synchronize()
        print(f"n={n} warps={warps} symmetric={sym}: ok, P sum {p.sum().item():.3f}, |dX| max "
              f"{dx.abs().max().item():.3e}", flush=True)
