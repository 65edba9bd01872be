"""The cuda Sinkhorn's errors over fresh draws at run178's failing hypothesis example (n = 373, 3
matrices, K = 19, tau = 0.05, symmetric, fp16 logits), against the fp64 reference, over torch-fp32's
own error (the test's rule: P within 2x, dX within 5x); the Triton resident kernels alongside, on the
same draws. Seeds 0 .. N-1.

    PYTHONPATH=<tree> python error_draws.py N    (on a GPU, that tree's extension built)
"""

import statistics
import sys

import torch

import unimixer_kernels as uk
from unimixer_kernels.testing import random_input

N, B, K, TAU = 373, 3, 19, 0.05
ratios = {(b, w): [] for b in ("cuda", "triton") for w in ("P", "dX")}
for seed in range(int(sys.argv[1])):
    torch.manual_seed(seed)
    x = random_input((B, N, N), torch.float16, "cuda", requires_grad=True)
    g = torch.randn(B, N, N, device="cuda")
    outs = {}
    for name, dtype, backend in (("ref", torch.float64, "reference"), ("pt", torch.float16, "reference"),
                                 ("cuda", torch.float16, "cuda"), ("triton", torch.float16, "triton")):
        xx = x.detach().to(dtype).requires_grad_()  # as check_against_reference: a leaf per run
        p = uk.sinkhorn(xx, TAU, K, True, backend=backend)
        (dx,) = torch.autograd.grad(p, xx, g.to(p.dtype))
        outs[name] = (p.detach().double(), dx.double())
    line = f"seed {seed:3d}:"
    for w, i in (("P", 0), ("dX", 1)):
        e_pt = (outs["pt"][i] - outs["ref"][i]).abs().max().item()
        for b in ("cuda", "triton"):
            r = (outs[b][i] - outs["ref"][i]).abs().max().item() / e_pt
            ratios[(b, w)].append(r)
            line += f" {w} {b} {r:5.2f}x"
    print(line, flush=True)
for (b, w), v in ratios.items():
    limit = 2 if w == "P" else 5
    print(f"{b:6s} {w:2s}: median {statistics.median(v):.2f}x, largest {max(v):.2f}x, above {limit}x: "
          f"{sum(r > limit for r in v)} of {len(v)}")
