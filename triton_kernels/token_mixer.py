"""TokenMixer (a permutation) and ``Norm(TokenMixer(x) + x)``: Triton kernels and launchers.

TokenMixer (SPEC §1) cuts token ``t`` into ``H`` heads of width ``c = D/H``; output row ``h`` is
head ``h`` of every token: ``out[h, t*c + j] = x[t, h*c + j]``. Its backward is the inverse
permutation, ``dx[t, h*c + j] = dout[h, t*c + j]``. Both directions are the same gather::

    out[s, r, l] = src[s, l // c, r*c + l % c]

(forward: ``src = x``, rows ``r = h``; backward: ``src = dout``, rows ``r = t``), which is what
``token_mix_gather_kernel`` does, one output row per program, ``src`` read through its strides.
With ``ADD_SELF`` it adds ``src[s, r, l]`` (shapes equal, i.e. ``H == T``): that is the
backward of the residual form ``TokenMixer(x) + x``, whose permutation is then symmetric.

``Norm(TokenMixer(x) + x)`` with ``H == T`` (RankMixer's first sub-block, post-norm):

- forward (``tm_norm_fwd_kernel``, one row ``(s, t)`` per program): gathers the mixed row,
  adds the residual row in fp32, normalises (LayerNorm with optional bias, or RMSNorm), writes
  ``y`` and saves only ``mean`` and ``rstd`` (fp32, one each per row). The sum is never stored.
- backward (``tm_norm_bwd_kernel``, persistent grid): recomputes the sum row from ``x``, forms
  ``ds = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * w`` (no ``mean(g)``
  term for RMSNorm) into an fp32 ``[bs, T, D]`` buffer, and reduces ``dw`` / ``db`` through
  per-program fp32 partials (deterministic). Then ``dx = ds + TokenMixer^T(ds)`` is the gather
  kernel with ``ADD_SELF``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output, num_programs_for


@triton.jit
def token_mix_gather_kernel(
    SRC, OUT,
    R, W, C,
    stride_ss, stride_sr, stride_sl,
    ADD_SELF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s = row // R
    r = row % R
    offs = tl.arange(0, BLOCK)
    mask = offs < W
    src_row = offs // C
    src_col = r * C + offs % C
    val = tl.load(SRC + s * stride_ss + src_row * stride_sr + src_col * stride_sl, mask=mask, other=0.0)
    val = val.to(tl.float32)
    if ADD_SELF:
        val += tl.load(SRC + s * stride_ss + r * stride_sr + offs * stride_sl, mask=mask,
                       other=0.0).to(tl.float32)
    tl.store(OUT + row * W + offs, val.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _mixed_sum_row(X, s, t, offs, mask, C, stride_xs, stride_xt, stride_xd):
    """``TokenMixer(x)[s, t, :] + x[s, t, :]`` in fp32 (``H == T``)."""
    base = X + s * stride_xs
    mixed = tl.load(base + (offs // C) * stride_xt + (t * C + offs % C) * stride_xd, mask=mask, other=0.0)
    own = tl.load(base + t * stride_xt + offs * stride_xd, mask=mask, other=0.0)
    return mixed.to(tl.float32) + own.to(tl.float32)


@triton.jit
def tm_norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD,
    T, D, C,
    stride_xs, stride_xt, stride_xd,
    eps,
    RMS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s = row // T
    t = row % T
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    z = _mixed_sum_row(X, s, t, offs, mask, C, stride_xs, stride_xt, stride_xd)
    if RMS:
        mean = 0.0
        zc = z
    else:
        mean = tl.sum(z, axis=0) / D
        zc = tl.where(mask, z - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=0) / D + eps)
    y = zc * rstd * tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * D + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def tm_norm_bwd_kernel(
    DY, X, W, MEAN, RSTD, DS, DW_PARTIAL, DB_PARTIAL,
    M, T, D, C,
    stride_dys, stride_dyt, stride_dyd,
    stride_xs, stride_xt, stride_xd,
    rows_per_program,
    RMS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_D], dtype=tl.float32)
    first = pid.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program):
        row = first + i
        if row < M:
            s = row // T
            t = row % T
            z = _mixed_sum_row(X, s, t, offs, mask, C, stride_xs, stride_xt, stride_xd)
            mean = tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            xhat = tl.where(mask, (z - mean) * rstd, 0.0)
            dy = tl.load(DY + s * stride_dys + t * stride_dyt + offs * stride_dyd, mask=mask,
                         other=0.0).to(tl.float32)
            g = dy * w
            ds = g - xhat * (tl.sum(g * xhat, axis=0) / D)
            if not RMS:
                ds -= tl.sum(g, axis=0) / D
            tl.store(DS + row * D + offs, ds * rstd, mask=mask)
            dw += dy * xhat
            db += dy
    tl.store(DW_PARTIAL + pid * D + offs, dw, mask=mask)
    tl.store(DB_PARTIAL + pid * D + offs, db, mask=mask)


def _block(n: int) -> tuple[int, int]:
    block = triton.next_power_of_2(max(n, 1))
    return block, min(max(block // 256, 1), 8)


def token_mix(src: torch.Tensor, rows: int, c: int, add_self: bool = False, out_dtype=None) -> torch.Tensor:
    """``out[s, r, l] = src[s, l // c, r*c + l % c]`` (+ ``src[s, r, l]`` with ``add_self``).

    ``src [bs, R_src, W_src]`` with any strides; ``out [bs, rows, R_src * c]``, contiguous.
    Forward TokenMixer: ``token_mix(x, H, D/H)``; its backward: ``token_mix(dout, T, D/H)``."""
    bs, r_src, _ = src.shape
    width = r_src * c
    out = new_output((bs, rows, width), like=src, dtype=out_dtype)
    if out.numel() > 0:
        block, num_warps = _block(width)
        token_mix_gather_kernel[(bs * rows,)](
            src, out, rows, width, c,
            src.stride(0), src.stride(1), src.stride(2),
            ADD_SELF=add_self, BLOCK=block, num_warps=num_warps,
        )
    return out


def tm_norm_fwd(
    x: torch.Tensor, heads: int, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Norm(TokenMixer(x) + x)`` for ``x [bs, T, D]`` (any strides), ``heads == T``.
    Returns ``(y, mean [bs*T] fp32, rstd [bs*T] fp32)``; ``mean`` is zero for RMSNorm."""
    bs, t, d = x.shape
    m = bs * t
    y = new_output((bs, t, d), like=x)
    mean = new_output((m,), like=x, dtype=torch.float32)
    rstd = new_output((m,), like=x, dtype=torch.float32)
    if m > 0:
        block, num_warps = _block(d)
        weight = weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        tm_norm_fwd_kernel[(m,)](
            x, weight, bias if bias is not None else weight, y, mean, rstd,
            t, d, d // heads,
            x.stride(0), x.stride(1), x.stride(2),
            eps,
            RMS=rms, HAS_BIAS=bias is not None, BLOCK_D=block, num_warps=num_warps,
        )
    return y, mean, rstd


def tm_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, heads: int, weight: torch.Tensor,
    mean: torch.Tensor, rstd: torch.Tensor, rms: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dw, db)``; ``dw``/``db`` in the weight dtype (``db`` is meaningless for RMSNorm)."""
    bs, t, d = x.shape
    m = bs * t
    c = d // heads
    weight = weight.contiguous()
    programs = num_programs_for(max(m, 1), x.device)
    rows_per_program = triton.cdiv(max(m, 1), programs)
    ds = new_output((bs, t, d), like=x, dtype=torch.float32)
    dw_partial = new_output((programs, d), like=x, dtype=torch.float32)
    db_partial = new_output((programs, d), like=x, dtype=torch.float32)
    block, num_warps = _block(d)
    tm_norm_bwd_kernel[(programs,)](
        dy, x, weight, mean, rstd, ds, dw_partial, db_partial,
        m, t, d, c,
        dy.stride(0), dy.stride(1), dy.stride(2),
        x.stride(0), x.stride(1), x.stride(2),
        rows_per_program,
        RMS=rms, BLOCK_D=block, num_warps=num_warps,
    )
    dx = token_mix(ds, t, c, add_self=True, out_dtype=x.dtype)
    return dx, dw_partial.sum(0).to(weight.dtype), db_partial.sum(0).to(weight.dtype)
