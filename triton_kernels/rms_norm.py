"""RMSNorm and add + RMSNorm: Triton kernels and their launchers (no autograd here).

Forward, per row ``i`` of ``[M, D]``::

    s_i    = x_i + r_i                      (add_rms_norm only; written once, input dtype)
    rstd_i = rsqrt(mean(s_i^2) + eps)       (fp32, saved for backward: 4 bytes per row)
    y_i    = s_i * rstd_i * w               (+ r_i for rms_norm with a residual: the residual is
                                             added after the norm, in fp32, rounded once)

Backward, with ``g_i = dy_i * w`` and ``xhat_i = s_i * rstd_i``::

    ds_i = rstd_i * (g_i - xhat_i * mean(g_i * xhat_i)) (+ dsum_i, the gradient of the sum output)
    dw   = sum_i dy_i * xhat_i

Each program handles a tile of ``BLOCK_M`` rows (about 4096 values), so narrow rows still give
each program enough bytes in flight. ``dw`` is reduced deterministically: each program writes its
fp32 partial row, and a second pass (:func:`._partials.sum_partials`, which other ops' backwards
share so that all their partials take one launch) sums the ``[programs, D]`` partials. Rows are
indexed in int64 so ``M * D`` may exceed 2^31.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output, num_programs_for, rows_2d
from ._partials import sum_partials

# where the forward's residual goes: none, added before the norm (add_rms_norm, which also writes
# the sum), added after it (rms_norm with a residual), or ``x`` itself added after it
NO_RESIDUAL = tl.constexpr(0)
ADD_BEFORE = tl.constexpr(1)
ADD_AFTER = tl.constexpr(2)
ADD_X_AFTER = tl.constexpr(3)


@triton.jit
def rms_norm_fwd_kernel(
    X, R, W, Y, S, RSTD,
    M, D, stride_x, stride_r, stride_y, stride_s,
    eps,
    RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < M
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if RESIDUAL == ADD_BEFORE:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # round the sum to the storage dtype first, so forward and backward see the same value
        x = (x.to(tl.float32) + r.to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + rows[:, None] * stride_s + cols[None, :], x, mask=mask)
    xf = x.to(tl.float32)
    # IEEE-rounded sqrt and divide: the fast ones cost a few ulps that fp32 tests would see
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(tl.sum(xf * xf, axis=1) / D + eps))
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(RSTD + rows, rstd, mask=rmask)
    y = xf * rstd[:, None] * w[None, :]
    if RESIDUAL == ADD_AFTER:
        y += tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL == ADD_X_AFTER:
        y += xf
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_bwd_kernel(
    DY, DSUM, S, W, RSTD, DS, DW_PARTIAL,
    M, D, stride_dy, stride_dsum, stride_s, stride_ds,
    rows_per_program,
    HAS_DSUM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # rows_per_program is a multiple of BLOCK_M (the launcher rounds it up)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program, BLOCK_M):
        rows = row_start + i + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        # masked rows load zeros (rstd 0 too): they contribute nothing and store nothing
        s = tl.load(S + rows[:, None] * stride_s + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = s * rstd[:, None]
        g = dy * w[None, :]
        ds = rstd[:, None] * (g - xhat * (tl.sum(g * xhat, axis=1) / D)[:, None])
        if HAS_DSUM:
            dsum = tl.load(DSUM + rows[:, None] * stride_dsum + cols[None, :], mask=mask, other=0.0)
            ds += dsum.to(tl.float32)
        tl.store(DS + rows[:, None] * stride_ds + cols[None, :], ds.to(DS.dtype.element_ty), mask=mask)
        dw += dy * xhat
    tl.store(DW_PARTIAL + pid * D + cols, tl.sum(dw, axis=0), mask=cmask)


# Rows per program: a tile of about TILE_ELEMENTS values, so narrow rows (D = 128 at the presets)
# are not one 256-byte row per program, which leaves the memory system mostly idle.
TILE_ELEMENTS = 4096


def _tile(d: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_D, num_warps)`` for rows of width ``d``."""
    block_d = triton.next_power_of_2(d)
    block_m = max(1, TILE_ELEMENTS // block_d)
    return block_m, block_d, min(max(block_m * block_d // 1024, 1), 8)


def rms_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the forward on ``x [..., D]``, with ``residual`` added before the norm (add_rms_norm);
    returns ``(y, s or None, rstd [M] fp32)``."""
    return _launch_fwd(x, residual, weight, eps, NO_RESIDUAL if residual is None else ADD_BEFORE)


def rms_norm_add_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch ``residual + RMSNorm(x)`` on ``x [..., D]`` (``residual=None``: ``x`` itself), the sum
    in fp32 rounded once; returns ``(z, rstd [M] fp32)``."""
    mode = ADD_X_AFTER if residual is None else ADD_AFTER
    z, _, rstd = _launch_fwd(x, residual, weight, eps, mode)
    return z, rstd


def _launch_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, mode: tl.constexpr,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    d = x.shape[-1]
    x2 = rows_2d(x)
    r2 = rows_2d(residual) if residual is not None else x2
    m = x2.shape[0]
    y = new_output((m, d), like=x)
    s = new_output((m, d), like=x) if mode == ADD_BEFORE else y
    rstd = new_output((m,), like=x, dtype=torch.float32)
    if m > 0:
        block_m, block_d, warps = _tile(d)
        rms_norm_fwd_kernel[(triton.cdiv(m, block_m),)](
            x2, r2, weight, y, s, rstd,
            m, d, x2.stride(0), r2.stride(0), y.stride(0), s.stride(0),
            eps,
            RESIDUAL=mode,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    shape = x.shape
    return y.view(shape), (s.view(shape) if mode == ADD_BEFORE else None), rstd


def rms_norm_bwd_partials(
    dy: torch.Tensor,
    dsum: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ds, dw partials [programs, D] fp32)``: the gradient with respect to the normalised input
    (plus ``dsum``, the gradient of a sum output or of an input used twice, when given), and the
    per-program partials of ``dw`` for :func:`._partials.sum_partials`."""
    d = s.shape[-1]
    s2 = rows_2d(s)
    dy2 = rows_2d(dy)
    dsum2 = rows_2d(dsum) if dsum is not None else dy2
    m = s2.shape[0]
    ds = new_output((m, d), like=s)
    block_m, block_d, warps = _tile(d)
    tiles = triton.cdiv(max(m, 1), block_m)
    rows_per_program = triton.cdiv(tiles, num_programs_for(tiles, s.device)) * block_m
    programs = triton.cdiv(max(m, 1), rows_per_program)
    partial = new_output((programs, d), like=s, dtype=torch.float32)
    rms_norm_bwd_kernel[(programs,)](
        dy2, dsum2, s2, weight, rstd, ds, partial,
        m, d, dy2.stride(0), dsum2.stride(0), s2.stride(0), ds.stride(0),
        rows_per_program,
        HAS_DSUM=dsum is not None,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=warps,
    )
    return ds.view(s.shape), partial


def rms_norm_bwd(
    dy: torch.Tensor,
    dsum: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``y`` (plus ``dsum``) with respect to the normalised input and ``w`` (in
    ``w``'s dtype): :func:`rms_norm_bwd_partials`, then their sum."""
    ds, partial = rms_norm_bwd_partials(dy, dsum, s, weight, rstd)
    dw = new_output(weight.shape, like=weight)
    sum_partials((partial, dw))
    return ds, dw
