"""Probe at the RankMixer block's shapes (bs 2048, T 16, D 768, k 4, bf16 autocast, fp32 parameters):
the PFFN's weights lowered by the op itself (fp32 weight gradients straight from the GEMMs, the
``lowers`` of ``pgelu_ffn``'s Triton backend) against autocast's casts around the op (the registry's
``lower_cast`` on every weight and bias, their bf16 gradients widened back: the previous flow, got here
by clearing the backend's ``lowers``), side by side:

1. ``pgelu_ffn`` alone, forward and backward, ``recompute`` True and False;
2. the whole block's training step (forward, then ``autograd.grad`` of the input and every parameter),
   ``recompute`` True and False.

Each: the mean time of one replay of its captured CUDA graph (``bench.timing.graph_replay_us``), the
peak above what was allocated before one call, and the gradients of the two flows compared.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import contextlib

import torch

import unimixer_kernels as uk
from bench.timing import graph_replay_us, peak_mib
from unimixer_kernels import nn as uknn
from unimixer_kernels.ops.pgelu_ffn import PGELU_FFN


@contextlib.contextmanager
def flow(name: str):
    """``lowered``: the op lowers its own weights (the committed registration); ``autocast``: the
    registry casts them around the op, as before."""
    kept = PGELU_FFN.lowers["triton"]
    if name == "autocast":
        PGELU_FFN.lowers["triton"] = ()
    try:
        yield
    finally:
        PGELU_FFN.lowers["triton"] = kept


def measure(label: str, step, leaves_grads) -> None:
    results = {}
    for name in ("autocast", "lowered"):
        with flow(name):
            out = step()
            results[name] = out
            peak = peak_mib(step, torch.device("cuda"))
            us = graph_replay_us(step, reps=10)
        print(f"{label} [{name:8s}]: {us / 1e3:.3f} ms, peak {peak:.1f} MiB, grad dtypes "
              f"{sorted({str(g.dtype) for g in out})}", flush=True)
    diffs = [(a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-30)
             for a, b in zip(results["lowered"], results["autocast"])]
    print(f"{label}: max relative difference of each gradient, lowered vs autocast: "
          + " ".join(f"{d:.1e}" for d in diffs), flush=True)


def ffn_alone() -> None:
    bs, t, d, kd = 2048, 16, 768, 3072
    torch.manual_seed(0)
    u = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16).requires_grad_()
    w1 = (torch.randn(t, d, kd, device="cuda") / d**0.5).requires_grad_()
    b1 = torch.zeros(t, kd, device="cuda", requires_grad=True)
    w2 = (torch.randn(t, kd, d, device="cuda") / kd**0.5).requires_grad_()
    b2 = torch.zeros(t, d, device="cuda", requires_grad=True)
    g = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    leaves = [u, w1, b1, w2, b2]
    for recompute in (True, False):
        def step():
            with torch.autocast("cuda", torch.bfloat16):
                o = uk.pgelu_ffn(u, w1, b1, w2, b2, recompute=recompute, backend="triton")  # noqa: B023
            return torch.autograd.grad(o, leaves, g)

        measure(f"pgelu_ffn recompute={recompute}", step, leaves)


def block() -> None:
    x = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16).requires_grad_()
    g = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16)
    for recompute in (True, False):
        torch.manual_seed(0)
        m = uknn.RankMixerBlock(16, 768, recompute=recompute, backend="triton").cuda()
        leaves = [x, *m.parameters()]

        def step():
            with torch.autocast("cuda", torch.bfloat16):
                y = m(x)  # noqa: B023
            return torch.autograd.grad(y, leaves, g)  # noqa: B023

        measure(f"RankMixer block recompute={recompute}", step, leaves)


if __name__ == "__main__":
    ffn_alone()
    block()
