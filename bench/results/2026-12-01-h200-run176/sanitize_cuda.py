"""The cuda backend's Sinkhorn once forward and backward under compute-sanitizer (memcheck, racecheck),
every tile shape: n = 300 (clusters of 3 or 5 blocks, ragged last tiles), n = 1000 (vector reads, ragged
last tiles) and n = 1024 (8 clusters of 16
in 128 x 64 tiles where they fit, 8 of 8 in 128 x 128), symmetric and not, K = 3.

    compute-sanitizer --tool memcheck python sanitize_cuda.py   (repository root on PYTHONPATH)
"""

import os

import torch

import unimixer_kernels as uk
from unimixer_kernels.ops import sinkhorn_cuda

for n, tile in [(300, "64x128"), (300, "128x64"), (300, "128x128"), (1000, "128x128"), (1024, "128x64"),
                (1024, "128x128")]:
    os.environ["UNIMIXER_SINKHORN_CUDA_TILE"] = tile
    for sym in (True, False):
        x = torch.randn(n, n, device="cuda", requires_grad=True)
        if min(sinkhorn_cuda.cuda_ops().sinkhorn_plan(x, sym)) < 0:
            print(f"n={n} tile={tile}: does not fit at once, not run")
            break
        p = uk.sinkhorn(x, 0.05, 3, sym, backend="cuda")
        (dx,) = torch.autograd.grad(p, x, torch.randn_like(p))
        torch.cuda.synchronize()
        print(f"n={n} tile={tile} symmetric={sym}: ok, P sum {p.sum().item():.3f}, |dX| max "
              f"{dx.abs().max().item():.3e}", flush=True)
