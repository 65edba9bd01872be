"""Probe: the UniMixing backward's two global GEMMs at rankmixer-100m (bs 2048, T 16, D 768, B 48, N 256,
bf16) in one kernel. Today ``G = W_G^T dY`` is cuBLAS's batched GEMM (37 us) and ``dW_G = sum_s dY_s H_s^T``
the project's split GEMM plus its partial sums (48 us with the sums, run146): dY is read twice, and both
run near 2.5 TB/s. The prototype here gives each program a tile of ``BM`` output blocks ``t`` and a sample
split; per step of ``BK`` flat columns ``(s, c)`` it loads ``dY[:, cols]`` (all N rows) once and uses it
twice: ``G[t, cols] = W_G^T[t, :] dY[:, cols]`` (stored) and ``dW_G[:, t] += dY[:, cols] H[t, cols]^T``.
150 MB in place of 200 MB, the same 25.8 GFLOP. Timed under one captured CUDA graph per setting; ``G``
compared with cuBLAS's and ``dW_G`` with the split GEMM's.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import itertools
import os

import torch
import triton
import triton.language as tl
from unimixer_kernels.triton_kernels import unimixing as kernels
from unimixer_kernels.triton_kernels._partials import sum_partials

BS, T, D, B = (2048, 16, 768, 48) if torch.cuda.is_available() else (5, 4, 48, 12)


@triton.jit
def fused_kernel(WG, DY, H, G, DWG_PART, BS, N, L, samples_per_split,
                 B: tl.constexpr, NP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                 WITH_DW: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_p = tl.program_id(1)
    rt = pid_t * BM + tl.arange(0, BM)
    t_ok = rt < N
    rn = tl.arange(0, NP)
    n_ok = rn < N
    wgt = tl.load(WG + rn[None, :] * N + rt[:, None], mask=t_ok[:, None] & n_ok[None, :], other=0.0)
    wgt = wgt.to(DOT_DTYPE)
    s_begin = pid_p.to(tl.int64) * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    acc = tl.zeros([NP, BM], dtype=tl.float32)
    for k0 in range(s_begin * B, s_end * B, BK):
        kk = k0 + tl.arange(0, BK)
        samp = kk // B
        c = kk % B
        k_ok = samp < s_end
        dy = tl.load(DY + samp[None, :] * L + rn[:, None] * B + c[None, :],
                     mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(DOT_DTYPE)
        g = tl.dot(wgt, dy, input_precision=PRECISION)
        tl.store(G + samp[None, :] * L + rt[:, None] * B + c[None, :], g.to(G.dtype.element_ty),
                 mask=t_ok[:, None] & k_ok[None, :])
        if WITH_DW:
            h = tl.load(H + samp[:, None] * L + rt[None, :] * B + c[:, None],
                        mask=k_ok[:, None] & t_ok[None, :], other=0.0).to(DOT_DTYPE)
            acc = tl.dot(dy, h, acc, input_precision=PRECISION)
    if WITH_DW:
        part = DWG_PART + pid_p.to(tl.int64) * N * N + rn[:, None] * N + rt[None, :]
        tl.store(part, acc.to(DWG_PART.dtype.element_ty), mask=n_ok[:, None] & t_ok[None, :])


def fused(wg, dy, h, g, out, bm, bk, warps, stages, per_sm, with_dw=True):
    n = wg.shape[0]
    tiles = triton.cdiv(n, bm)
    p, per = kernels._splits(BS, tiles, dy.device, n * n, per_sm=per_sm)
    part = torch.empty(p, n, n, device=dy.device)
    kw = dict(num_warps=warps, num_stages=stages) if dy.is_cuda else {}
    half = dy.dtype != torch.float32
    fused_kernel[(tiles, p)](wg, dy, h, g, part, BS, n, T * D, per, B=B, NP=triton.next_power_of_2(n), BM=bm,
                             BK=bk, WITH_DW=with_dw, DOT_DTYPE=tl.bfloat16 if half else tl.float32,
                             PRECISION="tf32" if half else "ieee", **kw)
    if with_dw:
        sum_partials((part, out))
    return p


def main() -> None:
    from bench.timing import graph_replay_us

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n = T * D // B
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32  # the interpreter checks in fp32
    dy = torch.randn(BS, T, D, device=dev).to(dtype)
    h = torch.randn_like(dy)
    wg = torch.softmax(torch.randn(n, n, device=dev), 0).to(dtype)
    g_ref = torch.bmm(wg.t().expand(BS, n, n), dy.view(BS, n, B)).view_as(dy)
    dwg_ref = torch.einsum("sjb,smb->jm", dy.view(BS, n, B).float(), h.view(BS, n, B).float())
    g = torch.empty_like(dy)
    out = torch.empty(n, n, device=dev)
    if dev == "cpu":  # interpreter check of the prototype
        fused(wg, dy, h, g, out, 16, 16, 4, 2, 1)
        print("G max abs diff", (g.float() - g_ref.float()).abs().max().item(),
              "dW_G max rel diff", ((out - dwg_ref).abs().max() / dwg_ref.abs().max()).item())
        return
    mb_g, mb_w, mb_f = 2 * dy.numel() * 2 / 1e6, 2 * dy.numel() * 2 / 1e6, 3 * dy.numel() * 2 / 1e6
    us = graph_replay_us(lambda: torch.bmm(wg.t().expand(BS, n, n), dy.view(BS, n, B), out=g.view(BS, n, B)))
    print(f"cuBLAS G (bmm): {us:6.1f} us ({mb_g / us:.2f} TB/s)", flush=True)
    kernel = kernels._tuned("unimixing_bwd_dwg_gemm_kernel", kernels._dwg_gemm_configs(True),
                            ("N", "BS_BUCKET", "B"))
    p2, per2 = kernels._splits(BS, triton.cdiv(n, 128) ** 2, dy.device, n * n, per_sm=2)
    part2 = torch.empty(p2, n, n, device=dev)

    def split_dwg():
        kernel[lambda meta: (triton.cdiv(n, meta["BM"]), triton.cdiv(n, meta["BN"]), p2)](
            dy, h, part2, BS, n, T * D, per2, kernels.bucket(BS), B=B, DOT_DTYPE=tl.bfloat16,
            PRECISION="tf32")
        sum_partials((part2, out))
    us_w = graph_replay_us(split_dwg)
    err = ((out - dwg_ref).abs().max() / dwg_ref.abs().max()).item()
    print(f"split dW_G GEMM + sums: {us_w:6.1f} us ({mb_w / us_w:.2f} TB/s), rel err {err:.1e}", flush=True)

    def both():
        torch.bmm(wg.t().expand(BS, n, n), dy.view(BS, n, B), out=g.view(BS, n, B))
        split_dwg()
    us_b = graph_replay_us(both)
    print(f"today, both in one graph: {us_b:6.1f} us", flush=True)
    grid = [(128, 64, 8, 2, 1), (128, 32, 8, 3, 1), (128, 64, 8, 3, 1), (128, 32, 8, 2, 2), (64, 64, 4, 2, 1),
            (64, 64, 8, 2, 1), (64, 32, 4, 3, 2), (128, 128, 8, 2, 1), (64, 64, 4, 3, 2), (128, 32, 8, 4, 1),
            (64, 128, 8, 2, 1), (64, 32, 8, 3, 2)]
    if os.environ.get("PROBE_FULL"):
        grid = list(itertools.product((64, 128), (32, 64), (4, 8), (2, 3), (1, 2)))
    for bm, bk, warps, stages, per_sm in grid:
        for with_dw in (True, False):
            try:
                g.fill_(float("nan"))
                out.fill_(float("nan"))
                p = fused(wg, dy, h, g, out, bm, bk, warps, stages, per_sm, with_dw)
                gerr = (g.float() - g_ref.float()).abs().max().item()
                werr = ((out - dwg_ref).abs().max() / dwg_ref.abs().max()).item() if with_dw else float("nan")
                us = graph_replay_us(lambda: fused(wg, dy, h, g, out, bm, bk, warps, stages, per_sm,  # noqa: B023
                                                   with_dw))  # noqa: B023
                mb = mb_f if with_dw else mb_g
                what = "G + dW_G + sums" if with_dw else "G only        "
                print(f"fused {what} BM {bm:3d} BK {bk:3d} {warps} warps {stages} stages {per_sm}/SM "
                      f"({p} splits): {us:6.1f} us ({mb / us:.2f} TB/s), G max abs diff {gerr:.1e}, "
                      f"dW_G rel err {werr:.1e}", flush=True)
            except Exception as exc:  # a tile that does not compile or fit
                msg = f"fused {bm}/{bk}/{warps}/{stages}/{per_sm}/{with_dw}: {type(exc).__name__}: {exc}"
                print(msg[:240], flush=True)


if __name__ == "__main__":
    main()
