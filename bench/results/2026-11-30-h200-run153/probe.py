"""Probe: the UniMixing op at ``rankmixer-100m`` (bs 2048, T 16, D 768, B 48, bf16 autocast, fp32 weights)
with the backward's ``G`` and ``dW_G`` formed in one kernel (``UNIMIXER_UNIMIXING_BWD_GLOBAL=auto``) against
cuBLAS's ``G`` and the split ``dW_G`` GEMM (``split``): the training step under one captured CUDA graph,
alternating the two settings, their peaks, and the gradients' largest difference relative to each
gradient's largest magnitude.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import os

import torch

import unimixer_kernels as uk
from bench.timing import graph_replay_us, peak_mib

SWITCH = "UNIMIXER_UNIMIXING_BWD_GLOBAL"


def main() -> None:
    bs, t, d, b = 2048, 16, 768, 48
    n = t * d // b
    x = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16).requires_grad_()
    wl = (torch.randn(n, b, b, device="cuda") * b ** -0.5).requires_grad_()
    wg = torch.softmax(torch.randn(n, n, device="cuda"), 0).requires_grad_()
    gy = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = uk.unimixing(x, wl, wg, backend="triton")
        return torch.autograd.grad(y, (x, wl, wg), gy)

    grads = {}
    for mode in ("auto", "split"):
        os.environ[SWITCH] = mode
        grads[mode] = step()
    for name, a, e in zip(("dx", "dW_B", "dW_G"), grads["auto"], grads["split"]):
        rel = ((a.float() - e.float()).abs().max() / e.float().abs().max()).item()
        print(f"{name}: largest difference between the settings {rel:.2e} of its largest magnitude, "
              f"bitwise equal {torch.equal(a, e)}", flush=True)
    for rnd in range(3):
        for mode in ("auto", "split"):
            os.environ[SWITCH] = mode
            us = graph_replay_us(step)
            mib = peak_mib(step, x.device)
            print(f"round {rnd} {SWITCH}={mode:5s}: step {us:7.1f} us, peak {mib:7.1f} MiB", flush=True)
    os.environ.pop(SWITCH)


if __name__ == "__main__":
    main()
