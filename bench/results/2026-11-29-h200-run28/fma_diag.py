"""The Sinkhorn sweep's failing example (n = 2, batch 2, K = 1, tau = 0.1, seed 139), reproduced as
the test draws it, with each kernel path's gradient error against the fp64 reference; run from the
repo root on a GPU. It ran on 0f10b3a (the accurate exponentials of 1224a9e still in) plus a
module constant sinkhorn.FP_FUSION passed to the batched and resident launches as
enable_fp_fusion; since 2309577 that constant is in the code, since 1728ece as DENSE_FP_FUSION."""
import os
import sys

import torch

sys.path.insert(0, os.getcwd())
from unimixer_kernels.triton_kernels import sinkhorn as k  # noqa: E402

import unimixer_kernels as uk  # noqa: E402
from unimixer_kernels.testing import _full_precision_gemms, random_input  # noqa: E402


def grads(x, g, tau, iters, sym, be, dt=torch.float32, **patch):
    old = {a: getattr(k, a) for a in patch}
    for a, v in patch.items():
        setattr(k, a, v)
    try:
        xx = x.detach().to(dt).requires_grad_(True)
        with _full_precision_gemms():
            p = uk.sinkhorn(xx, tau, iters, sym, backend=be)
            gx = torch.autograd.grad(p, xx, g.to(dt))[0]
        return p.detach().double().cpu(), gx.double().cpu()
    finally:
        for a, v in old.items():
            setattr(k, a, v)


paths = {
    "small": dict(),
    "small-nofma": dict(FP_FUSION=False),
    "resident": dict(SMALL_MAX_N=1, TILE_OVERRIDE=(16, 16), RESIDENT_CHECK=True),
    "resident-nofma": dict(SMALL_MAX_N=1, TILE_OVERRIDE=(16, 16), RESIDENT_CHECK=True, FP_FUSION=False),
    "tiled": dict(SMALL_MAX_N=1, TILE_OVERRIDE=(16, 16), RESIDENT=False),
}
torch.manual_seed(139)
x = random_input((2, 2, 2), torch.float32, "cuda", requires_grad=True)
o = uk.sinkhorn(x, 0.1, 1, False, backend="triton")
g = torch.randn(o.shape, device="cuda")
ref = grads(x, g, 0.1, 1, False, "reference", torch.float64)
pt = grads(x, g, 0.1, 1, False, "reference")
print(f"seed 139: torch grad err {(pt[1] - ref[1]).abs().max().item():.3e}")
for name, kw in paths.items():
    out = grads(x, g, 0.1, 1, False, "triton", **kw)
    print(f"  {name:15s} P err {(out[0] - ref[0]).abs().max().item():.3e} "
          f"grad err {(out[1] - ref[1]).abs().max().item():.3e}")
