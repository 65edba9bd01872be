# ruff: noqa: B023  (each lambda is timed inside its own loop step)
"""Probe: the bandwidth-bound launches of the RankMixer block at rankmixer-100m (bs 2048, T 16,
D 768, h 3072, bf16) and of pSwiGLU's token passes at paper-100m (6 tokens, bs 2048, h 688), each
alone under one captured CUDA graph (median of 5 runs of 50 replays), beside a plain copy of the
same bytes:

- the bf16 -> fp32 cast of a weight gradient (autocast's backward cast): torch's ``.float()``
  against a one-pass Triton cast;
- the per-token FFN's activation pass (``_act_pass``), forward and backward, per tile and rows
  per program;
- the two post-norms (``tm_norm``, ``residual_norm``), forward and backward, per launch setting;
- a whole-sample form of ``Norm(TokenMixer(x) + x)``: one program per sample holds its
  ``[T, H, c]`` tile and permutes it in registers (no fp32 ``ds`` buffer, no gather launch).

    python probe_bandwidth.py   (on a GPU, from the repository root; prints one line per variant)
"""

import statistics
import sys

import torch
import triton
import triton.language as tl
from unimixer_kernels.triton_kernels import pswiglu as P
from unimixer_kernels.triton_kernels import token_mixer as TM

DEV = "cuda"


def timed(fn, reps=50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    runs = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / reps)
    return statistics.median(runs) * 1e3  # us


def report(name, us, mbytes):
    print(f"{name:70s} {us:8.1f} us  {mbytes / us:6.2f} TB/s ({mbytes:.0f} MB)", flush=True)


@triton.jit
def cast_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(Y + offs, tl.load(X + offs, mask=mask).to(Y.dtype.element_ty), mask=mask)


def probe_cast():
    x = torch.randn(16, 768, 3072, device=DEV).to(torch.bfloat16)
    y = torch.empty(x.shape, device=DEV)
    mb = x.numel() * 6 / 1e6
    report("copy bf16 (clone, 2 B + 2 B per element, ref)", timed(lambda: x.clone()), x.numel() * 4 / 1e6)
    report("copy fp32 (clone, ref)", timed(lambda: y.clone()), x.numel() * 8 / 1e6)
    report("cast bf16->fp32 torch .float()", timed(lambda: x.float()), mb)
    report("cast fp32->bf16 torch .to()", timed(lambda: y.to(torch.bfloat16)), mb)
    for block, warps in ((1024, 4), (2048, 4), (4096, 8), (8192, 8), (8192, 16)):
        n = x.numel()
        grid = (triton.cdiv(n, block),)
        report(f"cast bf16->fp32 triton BLOCK {block} warps {warps}",
               timed(lambda: cast_kernel[grid](x, y, n, BLOCK=block, num_warps=warps)), mb)
        yb = torch.empty(x.shape, device=DEV, dtype=torch.bfloat16)
        report(f"cast fp32->bf16 triton BLOCK {block} warps {warps}",
               timed(lambda: cast_kernel[grid](y, yb, n, BLOCK=block, num_warps=warps)), mb)


ACT_VARIANTS = [  # (BLOCK_S, BLOCK_H, warps, ROWS)
    (32, 128, 8, 256), (32, 128, 4, 256), (64, 128, 8, 256), (16, 256, 8, 256), (32, 256, 8, 256),
    (64, 256, 8, 256), (32, 128, 8, 128), (32, 128, 8, 64), (32, 128, 8, 32), (64, 128, 8, 64),
    (16, 128, 4, 64), (32, 64, 4, 64), (64, 64, 4, 64), (32, 256, 8, 64),
]


def probe_act(n, bs, h, gated, label):
    gen = torch.Generator(DEV).manual_seed(0)
    mk = lambda: torch.randn(n, bs, h, device=DEV, generator=gen).to(torch.bfloat16)  # noqa: E731
    g, v, da = mk(), (mk() if gated else None), mk()
    a, dg, dv = torch.empty_like(g), torch.empty_like(g), (torch.empty_like(g) if gated else None)
    el = g.numel() * 2 / 1e6
    fwd_mb = el * (3 if gated else 2)
    bwd_mb = el * (6 if gated else 4)
    base_tile, base_rows = P._ACT_TILE, P.ACT_ROWS
    for bsz, bh, w, rows in ACT_VARIANTS:
        P._ACT_TILE, P.ACT_ROWS = (bsz, bh, w), rows
        n_sb = triton.cdiv(bs, rows)
        pb1 = torch.empty(n_sb, n, h, device=DEV)
        pb3 = torch.empty(n_sb, n, h, device=DEV) if gated else None
        tag = f"{label} act {bsz}x{bh} w{w} rows{rows}"
        report(tag + " fwd", timed(lambda: P._act_pass(g, v, None, a)), fwd_mb)
        report(tag + " bwd", timed(lambda: P._act_pass(g, v, da, a, dg, dv, pb1, pb3)), bwd_mb)
    P._ACT_TILE, P.ACT_ROWS = base_tile, base_rows


NORM_VARIANTS = [  # (rows, warps, per_sm)
    (None, None, None), (2, 4, 8), (4, 4, 8), (4, 8, 8), (8, 8, 8), (2, 8, 8), (1, 4, 16), (2, 4, 16),
    (4, 8, 4), (8, 16, 4), (16, 16, 2),
]


@triton.jit
def tm_sample_fwd(X, W, B, Y, MEAN, RSTD, BS, T, C, D, eps,
                  TP: tl.constexpr, CP: tl.constexpr, RMS: tl.constexpr, HAS_BIAS: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    ti = tl.arange(0, TP)[:, None, None]
    hi = tl.arange(0, TP)[None, :, None]
    ji = tl.arange(0, CP)[None, None, :]
    mask = (ti < T) & (hi < T) & (ji < C)
    off = ti * D + hi * C + ji
    x = tl.load(X + s * T * D + off, mask=mask, other=0.0).to(tl.float32)
    z = x + tl.permute(x, (1, 0, 2))
    if RMS:
        mean = tl.zeros([TP], dtype=tl.float32)
        zc = z
    else:
        mean = tl.sum(tl.sum(z, axis=2), axis=1) / D
        zc = tl.where(mask, z - mean[:, None, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(zc * zc, axis=2), axis=1) / D + eps)
    wmask = (hi < T) & (ji < C)
    w = tl.load(W + hi * C + ji, mask=wmask, other=0.0).to(tl.float32)
    y = zc * rstd[:, None, None] * w
    if HAS_BIAS:
        y += tl.load(B + hi * C + ji, mask=wmask, other=0.0).to(tl.float32)
    rows = tl.arange(0, TP)
    tl.store(MEAN + s * T + rows, mean, mask=rows < T)
    tl.store(RSTD + s * T + rows, rstd, mask=rows < T)
    tl.store(Y + s * T * D + off, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def tm_sample_bwd(DY, X, W, MEAN, RSTD, DX, DWP, DBP, BS, T, C, D, per_prog,
                  TP: tl.constexpr, CP: tl.constexpr, RMS: tl.constexpr):
    pid = tl.program_id(0)
    ti = tl.arange(0, TP)[:, None, None]
    hi = tl.arange(0, TP)[None, :, None]
    ji = tl.arange(0, CP)[None, None, :]
    mask = (ti < T) & (hi < T) & (ji < C)
    off = ti * D + hi * C + ji
    wmask = (hi < T) & (ji < C)
    w = tl.load(W + hi * C + ji, mask=wmask, other=0.0).to(tl.float32)
    rows = tl.arange(0, TP)
    dw = tl.zeros([TP, CP], dtype=tl.float32)
    db = tl.zeros([TP, CP], dtype=tl.float32)
    for i in range(per_prog):
        s = (pid * per_prog + i).to(tl.int64)
        ok = s < BS
        m = mask & ok
        x = tl.load(X + s * T * D + off, mask=m, other=0.0).to(tl.float32)
        z = x + tl.permute(x, (1, 0, 2))
        mean = tl.load(MEAN + s * T + rows, mask=(rows < T) & ok, other=0.0)[:, None, None]
        rstd = tl.load(RSTD + s * T + rows, mask=(rows < T) & ok, other=0.0)[:, None, None]
        xhat = tl.where(m, (z - mean) * rstd, 0.0)
        dy = tl.load(DY + s * T * D + off, mask=m, other=0.0).to(tl.float32)
        g = dy * w
        ds = g - xhat * (tl.sum(tl.sum(g * xhat, axis=2), axis=1) / D)[:, None, None]
        if not RMS:
            ds -= (tl.sum(tl.sum(g, axis=2), axis=1) / D)[:, None, None]
        ds = ds * rstd
        dx = ds + tl.permute(ds, (1, 0, 2))
        tl.store(DX + s * T * D + off, dx.to(DX.dtype.element_ty), mask=m)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    cols = tl.arange(0, TP)[:, None] * C + tl.arange(0, CP)[None, :]
    cmask = (tl.arange(0, TP)[:, None] < T) & (tl.arange(0, CP)[None, :] < C)
    tl.store(DWP + pid * D + cols, dw, mask=cmask)
    tl.store(DBP + pid * D + cols, db, mask=cmask)


def sample_fwd(x, w, b, eps, warps):
    bs, t, d = x.shape
    c = d // t
    y = torch.empty_like(x)
    mean = torch.empty(bs * t, device=DEV)
    rstd = torch.empty(bs * t, device=DEV)
    tm_sample_fwd[(bs,)](x, w, b, y, mean, rstd, bs, t, c, d, eps, TP=triton.next_power_of_2(t),
                         CP=triton.next_power_of_2(c), RMS=False, HAS_BIAS=True, num_warps=warps)
    return y, mean, rstd


def sample_bwd(dy, x, w, mean, rstd, warps, programs):
    bs, t, d = x.shape
    c = d // t
    per = triton.cdiv(bs, programs)
    programs = triton.cdiv(bs, per)
    dx = torch.empty_like(x)
    dwp = torch.empty(programs, d, device=DEV)
    dbp = torch.empty(programs, d, device=DEV)
    tm_sample_bwd[(programs,)](dy, x, w, mean, rstd, dx, dwp, dbp, bs, t, c, d, per,
                               TP=triton.next_power_of_2(t), CP=triton.next_power_of_2(c), RMS=False,
                               num_warps=warps)
    return dx, dwp.sum(0), dbp.sum(0)


def probe_norms():
    bs, t, d = 2048, 16, 768
    gen = torch.Generator(DEV).manual_seed(0)
    x = torch.randn(bs, t, d, device=DEV, generator=gen).to(torch.bfloat16)
    r = torch.randn(bs, t, d, device=DEV, generator=gen).to(torch.bfloat16)
    dy = torch.randn(bs, t, d, device=DEV, generator=gen).to(torch.bfloat16)
    w = torch.randn(d, device=DEV, generator=gen)
    b = torch.randn(d, device=DEV, generator=gen)
    mb = x.numel() * 2 / 1e6
    _, mean, rstd = TM.tm_norm_fwd(x, t, w, b, 1e-5, False)
    for rows, warps, per_sm in NORM_VARIANTS:
        tag = f"rows {rows} warps {warps} per_sm {per_sm}"
        report("tm_norm fwd " + tag, timed(lambda: TM.tm_norm_fwd(x, t, w, b, 1e-5, False, rows=rows,
                                                                  num_warps=warps)), 2 * mb)
        report("tm_norm bwd (ds fp32 + gather) " + tag,
               timed(lambda: TM.tm_norm_bwd(dy, x, t, w, mean, rstd, False, rows=rows, num_warps=warps,
                                            per_sm=per_sm)), 3 * mb)
        report("residual_norm fwd " + tag, timed(lambda: TM.residual_norm_fwd(
            x, r, w, b, 1e-5, False, rows=rows, num_warps=warps)), 3 * mb)
        report("residual_norm bwd " + tag, timed(lambda: TM.residual_norm_bwd(
            dy, x, r, w, mean, rstd, False, rows=rows, num_warps=warps, per_sm=per_sm)), 4 * mb)
    y_ref, mean_ref, rstd_ref = TM.tm_norm_fwd(x, t, w, b, 1e-5, False)
    dx_ref, dw_ref, db_ref = TM.tm_norm_bwd(dy, x, t, w, mean_ref, rstd_ref, False)
    for warps in (4, 8, 16):
        try:
            y, m2, r2 = sample_fwd(x, w, b, 1e-5, warps)
            dx, dw, db = sample_bwd(dy, x, w, m2, r2, warps, 132 * 8)
            err = max((y.float() - y_ref.float()).abs().max().item(),
                      (dx.float() - dx_ref.float()).abs().max().item(),
                      (dw - dw_ref).abs().max().item() / dw_ref.abs().max().item())
            report(f"tm_norm fwd whole-sample warps {warps} (max err vs current {err:.2e})",
                   timed(lambda: sample_fwd(x, w, b, 1e-5, warps)), 2 * mb)
            for programs in (132 * 4, 132 * 8, 2048):
                report(f"tm_norm bwd whole-sample warps {warps} programs {programs}",
                       timed(lambda: sample_bwd(dy, x, w, m2, r2, warps, programs)), 3 * mb)
        except Exception as exc:  # a variant that does not compile is a finding, not a stop
            print(f"whole-sample warps {warps}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)


def main() -> None:
    parts = sys.argv[1:] or ["cast", "act", "norms"]
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    if "cast" in parts:
        probe_cast()
    if "act" in parts:
        probe_act(16, 2048, 3072, False, "rankmixer-100m plain")
        probe_act(6, 2048, 688, True, "paper-100m gated 6 tokens")
    if "norms" in parts:
        probe_norms()


if __name__ == "__main__":
    main()
