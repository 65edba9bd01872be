"""Probe: the UniMixing op's launches at ``rankmixer-100m`` (bs 2048, T 16, D 768, B 48, N 256; bf16),
each under one captured CUDA graph (``bench.timing.graph_replay_us``):

1. the per-block dot kernel (``unimixing_local_kernel``), forward (``H`` only) and backward (``H``, ``dX``
   and the ``dW_B`` partials), over its sample splits (programs per block), samples a loop step and
   warps; the op's setting (splits from ``_splits``, 64 samples, 4 warps) first;
2. the global GEMMs (``unimixing_global_kernel``, forward ``Y = W_G H`` and backward ``G = W_G^T dY``)
   against cuBLAS's batched GEMM on the same ``[bs, N, B]`` views (``torch.matmul`` with ``W_G``
   broadcast), outputs compared.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
import triton
from unimixer_kernels.triton_kernels import unimixing as um

from bench.timing import graph_replay_us


def local(x, wl, g, h, dx, splits, sb, warps, h_only):
    bs, t, d = x.shape
    n, b, _ = wl.shape
    per = triton.cdiv(bs, splits)
    splits = triton.cdiv(bs, per)
    part = x if h_only else torch.empty((splits, n, b, b), device=x.device, dtype=torch.float32)
    ptrs = (x, x, wl, x, x, h, part) if h_only else (g, x, wl, x, dx, h, part)
    um.unimixing_local_kernel[(n, splits)](
        *ptrs, bs, n, t * d, per, B=b, BP=triton.next_power_of_2(b), SB=sb, HAS_RESIDUAL=False,
        H_ONLY=h_only, DOT_DTYPE=um._DOT_DTYPES[x.dtype], PRECISION="tf32", num_warps=warps)
    return h if h_only else (h, dx, part)


def main() -> None:
    bs, t, d, b = 2048, 16, 768, 48
    n = t * d // b
    bf = torch.bfloat16
    x = torch.randn(bs, t, d, device="cuda").to(bf)
    g = torch.randn(bs, t, d, device="cuda").to(bf)
    wl = (torch.randn(n, b, b, device="cuda") / b).to(bf)
    wg = (torch.randn(n, n, device="cuda") / n).to(bf)
    h = torch.empty_like(x)
    dx = torch.empty_like(x)
    mb = x.numel() * 2 / 1e6
    default_splits, _ = um._splits(bs, n, x.device, n * b * b)
    print(f"op's splits: {default_splits}", flush=True)
    ref_h = local(x, wl, g, h, dx, default_splits, 64, 4, True).clone()
    ref_dx = local(x, wl, g, h, dx, default_splits, 64, 4, False)[1].clone()
    for h_only in (True, False):
        name = "forward (H)" if h_only else "backward (H, dX, dW_B)"
        moved = (2 if h_only else 4) * mb
        for splits in dict.fromkeys((default_splits, 2, 4, 8, 16)):
            for sb in (32, 64, 128):
                for warps in (4, 8):
                    def run():
                        return local(x, wl, g, h, dx, splits, sb, warps, h_only)  # noqa: B023
                    out = run()
                    ok = torch.equal(out if h_only else out[1], ref_h if h_only else ref_dx)
                    us = graph_replay_us(run)
                    print(f"local {name} splits {splits:2d} SB {sb:3d} warps {warps}  {us:6.1f} us "
                          f"({moved / us:.2f} TB/s at {moved:.0f} MB), equal to the op's setting {ok}",
                          flush=True)
    for transpose, label in ((True, "forward Y = W_G H"), (False, "backward G = W_G^T dY")):
        out = torch.empty_like(x)
        w = wg if transpose else wg.t()

        def ours():
            um._global_gemm(wg, x, out, transpose=transpose)  # noqa: B023
            return out  # noqa: B023

        def cublas():
            return torch.matmul(w, x.view(bs, n, b))  # noqa: B023
        ref = ours().clone()
        err = (cublas().view(bs, t, d).float() - ref.float()).abs().max().item()
        print(f"global {label}: Triton {graph_replay_us(ours):6.1f} us, cuBLAS batched "
              f"{graph_replay_us(cublas):6.1f} us (max diff {err:.1e})", flush=True)


if __name__ == "__main__":
    main()
