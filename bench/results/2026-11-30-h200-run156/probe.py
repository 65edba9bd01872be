"""Probe at the RankMixer block's shapes (bs 2048, T 16, D 768, k 4, bf16 autocast, fp32 parameters): the
GELU activation pass (``ffn_act_kernel``) with the normal CDF from the degree-5 tail polynomial (16-bit
outputs, the committed kernel) against libdevice's ``erf`` (the previous kernel: the same module with its
``POLY`` constant set to ``False``, written beside it as ``_probe_erf_pswiglu.py`` and imported, then
deleted), side by side:

1. the pass alone, forward (``A`` from ``G`` and ``b1``) and backward (``A``, ``dG`` and the bias
   partials from ``G``, ``b1``, ``dA``), bf16 ``[16, 2048, 3072]`` buffers, their outputs compared;
2. the whole block's training step (``recompute=True``, the default), the pass swapped in the module
   the launcher reads, alternating three times, the gradients compared.

Each under one captured CUDA graph (``bench.timing.graph_replay_us``).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import importlib
import os

import torch
from unimixer_kernels.triton_kernels import pswiglu

from bench.timing import graph_replay_us
from unimixer_kernels import nn as uknn

POLY_LINE = ("    POLY: tl.constexpr = (A_OUT.dtype.element_ty == tl.float16) or "
             "(A_OUT.dtype.element_ty == tl.bfloat16)")


def erf_kernel():
    src = open(pswiglu.__file__).read()
    assert src.count(POLY_LINE) == 1
    path = os.path.join(os.path.dirname(pswiglu.__file__), "_probe_erf_pswiglu.py")
    with open(path, "w") as f:
        f.write(src.replace(POLY_LINE, "    POLY: tl.constexpr = False"))
    try:
        mod = importlib.import_module(pswiglu.__name__.rsplit(".", 1)[0] + "._probe_erf_pswiglu")
    finally:
        os.remove(path)
    return mod.ffn_act_kernel


def act_alone(kernels: dict) -> None:
    t, bs, h = 16, 2048, 3072
    g = torch.randn(t, bs, h, device="cuda").to(torch.bfloat16)
    da = torch.randn_like(g)
    b1 = torch.randn(t, h, device="cuda") * 0.1
    a, dg = torch.empty_like(g), torch.empty_like(g)
    pb1 = torch.empty(-(-bs // pswiglu.ACT_ROWS), t, h, device="cuda")
    outs = {}
    for name, kern in kernels.items():
        pswiglu.ffn_act_kernel = kern
        fwd = graph_replay_us(lambda: pswiglu._act_pass(g, None, b1, None, None, a))
        a_fwd = a.clone()
        bwd = graph_replay_us(lambda: pswiglu._act_pass(g, None, b1, None, da, a, dg, None, pb1))
        outs[name] = (a_fwd, a.clone(), dg.clone(), pb1.clone())
        mb_f, mb_b = 2 * g.numel() * 2 / 1e6, 4 * g.numel() * 2 / 1e6
        print(f"act pass [{name}]: forward {fwd:6.1f} us ({mb_f / fwd:.2f} TB/s), backward {bwd:6.1f} us "
              f"({mb_b / bwd:.2f} TB/s)", flush=True)
    for label, p, e in zip(("A forward", "A backward", "dG", "bias partials"), outs["poly"], outs["erf"]):
        diff = (p.float() - e.float()).abs()
        print(f"{label}: poly against erf, max abs diff {diff.max().item():.2e}, elements differing "
              f"{(diff > 0).float().mean().item():.2e}", flush=True)


def block(kernels: dict) -> None:
    x = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16).requires_grad_()
    gy = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16)
    torch.manual_seed(0)
    m = uknn.RankMixerBlock(16, 768, backend="triton").cuda()
    leaves = [x, *m.parameters()]

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            y = m(x)
        return torch.autograd.grad(y, leaves, gy)

    grads = {}
    for name, kern in kernels.items():
        pswiglu.ffn_act_kernel = kern
        grads[name] = step()
    diffs = [(a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-30)
             for a, b in zip(grads["poly"], grads["erf"])]
    print("block gradients, poly against erf, max difference relative to each gradient's largest: "
          + " ".join(f"{d:.1e}" for d in diffs), flush=True)
    for rnd in range(3):
        for name, kern in kernels.items():
            pswiglu.ffn_act_kernel = kern
            us = graph_replay_us(step, reps=10)
            print(f"round {rnd} RankMixer block step [{name}]: {us / 1e3:.3f} ms", flush=True)


if __name__ == "__main__":
    variants = {"poly": pswiglu.ffn_act_kernel, "erf": erf_kernel()}
    act_alone(variants)
    block(variants)
    pswiglu.ffn_act_kernel = variants["poly"]
