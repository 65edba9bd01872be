"""Probe: the UniMixing backward's kernels at rankmixer-100m (bs 2048, T 16, D 768, B 48, bf16) now
that the forward's ``H`` is saved (run143): the per-block dot kernel without its ``H`` store at sample
splits of 4, 8 (the default) and 16 programs an SM, 32 / 64 samples a step, 4 / 8 warps, 2-4 stages,
``dX`` compared bit for bit with the default's; and the ``dW_G`` GEMM with its partial sums at 1, 2 (the
default) and 4 programs an SM. Each under one captured CUDA graph (``bench.timing.graph_replay_us``).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import itertools

import torch
import triton
import triton.language as tl
from unimixer_kernels.triton_kernels import unimixing as kernels
from unimixer_kernels.triton_kernels._partials import sum_partials

from bench.timing import graph_replay_us

BS, T, D, B = 2048, 16, 768, 48


def local(x, g, wl, dx, per_sm, sb, warps, stages):
    n = wl.shape[0]
    p1, per1 = kernels._splits(BS, n, x.device, n * B * B, per_sm=per_sm)
    part = torch.empty(p1, n, B, B, device=x.device)
    kernels.unimixing_local_kernel[(n, p1)](
        g, x, wl, x, dx, x, part, BS, n, T * D, per1, B=B, BP=64, SB=sb, HAS_RESIDUAL=False, H_ONLY=False,
        STORE_H=False, DOT_DTYPE=tl.bfloat16, PRECISION="tf32", num_warps=warps, num_stages=stages)
    return part


def main() -> None:
    n = T * D // B
    x = torch.randn(BS, T, D, device="cuda").to(torch.bfloat16)
    g = torch.randn_like(x)
    wl = torch.randn(n, B, B, device="cuda") * B ** -0.5
    dx = torch.empty_like(x)
    mb = 3 * x.numel() * 2 / 1e6
    local(x, g, wl, dx, 8, 64, 4, 3)
    ref = dx.clone()
    for per_sm, sb, warps, stages in itertools.product((4, 8, 16), (32, 64), (4, 8), (2, 3, 4)):
        try:
            local(x, g, wl, dx, per_sm, sb, warps, stages)  # noqa: B023
            same = torch.equal(dx, ref)
            us = graph_replay_us(lambda: local(x, g, wl, dx, per_sm, sb, warps, stages))  # noqa: B023
            print(f"local backward, H saved: {per_sm:2d} programs an SM, {sb} samples a step, {warps} warps, "
                  f"{stages} stages: {us:6.1f} us ({mb / us:.2f} TB/s), dX equal {same}", flush=True)
        except Exception as exc:  # a tile that does not compile or fit
            msg = f"local backward {per_sm}/{sb}/{warps}/{stages}: {type(exc).__name__}: {exc}"
            print(msg[:200], flush=True)
    dy = torch.randn_like(x)
    h = torch.randn_like(x)
    out = torch.empty(n, n, device="cuda")
    mb2 = 2 * x.numel() * 2 / 1e6
    kernel = kernels._tuned("unimixing_bwd_dwg_gemm_kernel", kernels._dwg_gemm_configs(True),
                            ("N", "BS_BUCKET", "B"))
    ref = None
    for per_sm in (1, 2, 4):
        p2, per2 = kernels._splits(BS, triton.cdiv(n, 128) ** 2, x.device, n * n, per_sm=per_sm)
        part = torch.empty(p2, n, n, device="cuda")

        def run():
            kernel[lambda meta: (triton.cdiv(n, meta["BM"]), triton.cdiv(n, meta["BN"]), p2)](  # noqa: B023
                dy, h, part, BS, n, T * D, per2, kernels.bucket(BS), B=B,  # noqa: B023
                DOT_DTYPE=tl.bfloat16, PRECISION="tf32")
            sum_partials((part, out))  # noqa: B023
        run()
        ref = out.clone() if ref is None else ref
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        us = graph_replay_us(run)
        print(f"dW_G GEMM + partial sums, {per_sm} programs an SM ({p2} splits): {us:6.1f} us "
              f"({mb2 / us:.2f} TB/s), max rel. diff to 1 an SM {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
