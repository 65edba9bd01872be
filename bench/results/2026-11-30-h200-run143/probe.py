"""Probe: the UniMixing op at B = 48 (``rankmixer-100m`` and ``rankmixer-1b``, bf16 autocast, fp32
weights) with the forward's ``H`` saved for the backward (``UNIMIXER_UNIMIXING_SAVE_H=auto``) against
``H`` formed and written again there (``recompute``): the training step under one captured CUDA graph,
alternating the two settings, their peaks, the gradients compared bit for bit; and the backward's
per-block kernel alone with and without the ``H`` store; the ``dW_G`` GEMM alone at each of its tiles.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import os

import torch
import triton
import triton.language as tl
from unimixer_kernels.triton_kernels import unimixing as kernels

import unimixer_kernels as uk
from bench.timing import graph_replay_us, peak_mib

SWITCH = "UNIMIXER_UNIMIXING_SAVE_H"


def probe(name: str, bs: int, t: int, d: int, b: int) -> None:
    n = t * d // b
    x = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16).requires_grad_()
    wl = (torch.randn(n, b, b, device="cuda") * b ** -0.5).requires_grad_()
    wg = (torch.randn(n, n, device="cuda") * n ** -0.5).requires_grad_()
    gy = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = uk.unimixing(x, wl, wg, backend="triton")
        return torch.autograd.grad(y, (x, wl, wg), gy)

    grads = {}
    for mode in ("auto", "recompute"):
        os.environ[SWITCH] = mode
        grads[mode] = step()
    same = all(torch.equal(a, e) for a, e in zip(grads["auto"], grads["recompute"]))
    print(f"{name}: gradients bitwise equal across the two settings: {same}", flush=True)
    for rnd in range(2):
        for mode in ("auto", "recompute"):
            os.environ[SWITCH] = mode
            us = graph_replay_us(step)
            mib = peak_mib(step, x.device)
            print(f"{name} round {rnd} {SWITCH}={mode:9s}: step {us:7.1f} us, peak {mib:7.1f} MiB",
                  flush=True)
    os.environ.pop(SWITCH)
    # the backward's per-block kernel alone: dX, dW_B partials, with and without H written
    xc = x.detach()
    g = torch.randn_like(xc)
    dx = torch.empty_like(xc)
    h = torch.empty_like(xc)
    mb_store, mb_read = 4 * xc.numel() * 2 / 1e6, 3 * xc.numel() * 2 / 1e6
    for label, hb, mb in (("writes H", h, mb_store), ("H saved", None, mb_read)):
        us = graph_replay_us(lambda: kernels._local_products(xc, wl.detach(), hb, g, xc, dx))  # noqa: B023
        print(f"{name} local backward kernel, {label:8s}: {us:6.1f} us ({mb / us:.2f} TB/s at "
              f"{mb:.0f} MB)", flush=True)


def dwg_tiles(name: str, bs: int, t: int, d: int, b: int) -> None:
    """The dW_G GEMM alone at every tile of its autotune list (flat K and one sample a K step), with
    the launcher's sample splits, each result against the first tile's (fp32 partials, summed)."""
    n = t * d // b
    dy = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    h = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    p2, per2 = kernels._splits(bs, triton.cdiv(n, 128) ** 2, dy.device, n * n, per_sm=2)
    part = torch.empty(p2, n, n, device="cuda")
    mb = 2 * dy.numel() * 2 / 1e6
    ref = None
    for kw, warps, stages in kernels._dwg_gemm_configs(True):
        meta = dict(kw)
        grid = (triton.cdiv(n, meta["BM"]), triton.cdiv(n, meta["BN"]), p2)

        def run():
            kernels.unimixing_bwd_dwg_gemm_kernel[grid](  # noqa: B023
                dy, h, part, bs, n, t * d, per2, kernels.bucket(bs), B=b, BP=triton.next_power_of_2(b),
                DOT_DTYPE=tl.bfloat16, PRECISION="tf32", num_warps=warps, num_stages=stages, **meta)  # noqa: B023
        run()
        got = part.sum(0)
        ref = got if ref is None else ref
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        us = graph_replay_us(run)
        print(f"{name} dW_G GEMM {meta} warps {warps} stages {stages}: {us:6.1f} us ({mb / us:.2f} TB/s "
              f"at {mb:.0f} MB), max rel. diff to the first {err:.1e}", flush=True)


def main() -> None:
    probe("rankmixer-100m", 2048, 16, 768, 48)
    probe("rankmixer-1b", 512, 32, 1536, 48)
    dwg_tiles("rankmixer-100m", 2048, 16, 768, 48)
    dwg_tiles("rankmixer-1b", 512, 32, 1536, 48)


if __name__ == "__main__":
    main()
