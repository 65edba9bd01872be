"""A model, in fp32 torch on the CPU, of the cuda Sinkhorn forward's later iterates (csrc/sinkhorn.cu):
each the previous one over its column's sum, and a column formed again as exp2(T1 - v) once its
potential has fallen `bits` below its highest since it was last formed so. For each threshold: the
largest |P - fp64 reference| and how many (column, iteration) pairs were formed again. A threshold of
1e9 never forms a column again (the bare products, which lost underflowed entries on dominated rows).

    PYTHONPATH=$PWD python refresh_model.py   (no GPU needed)
"""

import torch

import unimixer_kernels as uk
from unimixer_kernels.testing import dominated_logits

LOG2E = 1.4426950408889634
K = 20


def model(x, tau, bits, symmetric):
    s0 = ((x + x.T) * (0.5 / tau) if symmetric else x / tau).float()
    t = s0 - torch.logsumexp(s0, 1, keepdim=True)
    t = ((t - torch.logsumexp(t, 0, keepdim=True)) * LOG2E).float()
    e = torch.exp2(t)
    vrel = torch.zeros(1, x.shape[1])
    vhigh = torch.zeros(1, x.shape[1])
    formed = 0
    for _ in range(1, K):
        r = e.sum(1, keepdim=True)
        rinv = 1.0 / torch.where(r > 0, r, torch.ones_like(r))
        c = (e * rinv).sum(0, keepdim=True)
        c = torch.where(c > 0, c, torch.ones_like(c))
        vrel = vrel + torch.log2(c)
        vhigh = torch.maximum(vhigh, vrel)
        again = (vhigh - vrel) > bits
        formed += int(again.sum())
        e = torch.where(again, torch.exp2(t - vrel), e * (1.0 / c))
        vhigh = torch.where(again, vrel, vhigh)
    return e * rinv, formed


torch.manual_seed(0)
CASES = [("random n=1024, symmetric", torch.randn(1024, 1024), True, 0.05),
         ("random n=1024", torch.randn(1024, 1024), False, 0.05),
         ("dominated rows [0]", dominated_logits((2, 300, 300))[0].detach(), False, 0.05),
         ("dominated rows [1]", dominated_logits((2, 300, 300))[1].detach(), False, 0.05),
         ("dominated rows [1], symmetric", dominated_logits((2, 300, 300))[1].detach(), True, 0.05),
         ("random n=300, tau=1", torch.randn(300, 300), False, 1.0)]
for name, x, symmetric, tau in CASES:
    ref = uk.sinkhorn(x.double(), tau, K, symmetric, backend="reference")
    print(f"{name} ({(K - 1) * x.shape[1]} columns x iterations):")
    for bits in (2, 4, 8, 16, 1e9):
        p, formed = model(x, tau, bits, symmetric)
        err = (p.double() - ref).abs().max().item()
        print(f"   {bits:>5g} bits: max|P - ref| {err:.2e}, formed again {formed}")
