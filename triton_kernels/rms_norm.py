"""RMSNorm and add + RMSNorm: Triton kernels and their launchers (no autograd here).

Forward, per row ``i`` of ``[M, D]``::

    s_i    = x_i + r_i                      (only with a residual; written once, input dtype)
    rstd_i = rsqrt(mean(s_i^2) + eps)       (fp32, saved for backward: 4 bytes per row)
    y_i    = s_i * rstd_i * w

Backward, with ``g_i = dy_i * w`` and ``xhat_i = s_i * rstd_i``::

    ds_i = rstd_i * (g_i - xhat_i * mean(g_i * xhat_i)) (+ dsum_i, the gradient of the sum output)
    dw   = sum_i dy_i * xhat_i

``dw`` is reduced deterministically: each program writes its fp32 partial row, and a second pass
sums the ``[programs, D]`` partials. Rows are indexed in int64 so ``M * D`` may exceed 2^31.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output, num_programs_for, rows_2d


@triton.jit
def rms_norm_fwd_kernel(
    X, R, W, Y, S, RSTD,
    M, D, stride_x, stride_r, stride_y, stride_s,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0)
        # round the sum to the storage dtype first, so forward and backward see the same value
        x = (x.to(tl.float32) + r.to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + row * stride_s + cols, x, mask=mask)
    xf = x.to(tl.float32)
    # IEEE-rounded sqrt and divide: the fast ones cost a few ulps that fp32 tests would see
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(tl.sum(xf * xf, axis=0) / D + eps))
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, (xf * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_bwd_kernel(
    DY, DSUM, S, W, RSTD, DS, DW_PARTIAL,
    M, D, stride_dy, stride_dsum, stride_s, stride_ds,
    rows_per_program,
    HAS_DSUM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program):
        row = row_start + i
        if row < M:
            s = tl.load(S + row * stride_s + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            xhat = s * rstd
            g = dy * w
            ds = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / D))
            if HAS_DSUM:
                ds += tl.load(DSUM + row * stride_dsum + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DS + row * stride_ds + cols, ds.to(DS.dtype.element_ty), mask=mask)
            dw += dy * xhat
    tl.store(DW_PARTIAL + pid * D + cols, dw, mask=mask)


def rms_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the forward on ``x [..., D]``; returns ``(y, s or None, rstd [M] fp32)``."""
    d = x.shape[-1]
    x2 = rows_2d(x)
    r2 = rows_2d(residual) if residual is not None else x2
    m = x2.shape[0]
    y = new_output((m, d), like=x)
    s = new_output((m, d), like=x) if residual is not None else y
    rstd = new_output((m,), like=x, dtype=torch.float32)
    if m > 0:
        block_d = triton.next_power_of_2(d)
        rms_norm_fwd_kernel[(m,)](
            x2, r2, weight, y, s, rstd,
            m, d, x2.stride(0), r2.stride(0), y.stride(0), s.stride(0),
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK_D=block_d,
            num_warps=min(max(block_d // 256, 1), 8),
        )
    shape = x.shape
    return y.view(shape), (s.view(shape) if residual is not None else None), rstd


def rms_norm_bwd(
    dy: torch.Tensor,
    dsum: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``y`` (and of the sum output) with respect to the normalised input and ``w``."""
    d = s.shape[-1]
    s2 = rows_2d(s)
    dy2 = rows_2d(dy)
    dsum2 = rows_2d(dsum) if dsum is not None else dy2
    m = s2.shape[0]
    ds = new_output((m, d), like=s)
    programs = num_programs_for(m, s.device)
    rows_per_program = triton.cdiv(max(m, 1), programs)
    partial = new_output((programs, d), like=s, dtype=torch.float32)
    block_d = triton.next_power_of_2(d)
    rms_norm_bwd_kernel[(programs,)](
        dy2, dsum2, s2, weight, rstd, ds, partial,
        m, d, dy2.stride(0), dsum2.stride(0), s2.stride(0), ds.stride(0),
        rows_per_program,
        HAS_DSUM=dsum is not None,
        BLOCK_D=block_d,
        num_warps=min(max(block_d // 256, 1), 8),
    )
    return ds.view(s.shape), partial.sum(0).to(weight.dtype)
