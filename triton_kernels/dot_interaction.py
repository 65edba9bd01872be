"""DLRM dot interaction: Triton kernels and launchers (no autograd here).

Per sample ``s``: ``Z_s = X_s X_s^T [n, n]`` and the output keeps one triangle in row-major
order:

- ``"triu"`` (torchrec): pairs ``i < j`` at ``p(i, j) = i*n - i*(i+1)/2 + (j - i - 1)``;
- ``"tril"`` (NVIDIA/HugeCTR): pairs ``i > j`` at ``p(i, j) = i*(i-1)/2 + j``, then one zero.

Backward: with ``G[i, j] = dOut[p(min(i,j), max(i,j))]`` off the diagonal (``Z`` is symmetric, each
unordered pair is stored once), ``dX_s = G X_s``. ``G`` holds ``dOut`` values unchanged, so it is
exact in the input dtype and the GEMM runs on the tensor cores with fp32 accumulation.

Both kernels: grid ``(bs,)``, one sample per program, ``n`` whole and ``d`` walked in
``BLOCK_D`` chunks (``X`` read once per pass). Nothing is saved but ``X``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output


@triton.jit
def _pair_index(i, j, N, TRIU: tl.constexpr):
    if TRIU:
        return i * N - (i * (i + 1)) // 2 + (j - i - 1)
    return (i * (i - 1)) // 2 + j


@triton.jit
def dot_fwd_kernel(
    X, OUT,
    N, D, P_OUT,
    stride_xs, stride_xn, stride_xd,
    TRIU: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    z = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X + s * stride_xs + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                    mask=mask_n[:, None] & (offs_d < D)[None, :], other=0.0).to(CDT)
        z = tl.dot(x, tl.trans(x), z, input_precision=PREC)
    i = offs_n[:, None]
    j = offs_n[None, :]
    if TRIU:
        keep = (i < j) & (j < N)
    else:
        keep = (i > j) & (i < N)
    p = _pair_index(i, j, N, TRIU)
    tl.store(OUT + s * P_OUT + p, z.to(OUT.dtype.element_ty), mask=keep)
    if not TRIU:
        # the padding column of the NVIDIA layout
        tl.store(OUT + s * P_OUT + P_OUT - 1, tl.zeros([], dtype=OUT.dtype.element_ty))


@triton.jit
def dot_bwd_kernel(
    DOUT, X, DX,
    N, D,
    stride_gs, stride_gp,
    stride_xs, stride_xn, stride_xd,
    TRIU: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    i = offs_n[:, None]
    j = offs_n[None, :]
    if TRIU:
        lo = tl.minimum(i, j)
        hi = tl.maximum(i, j)
    else:
        lo = tl.maximum(i, j)
        hi = tl.minimum(i, j)
    pair_mask = (i != j) & mask_n[:, None] & mask_n[None, :]
    p = _pair_index(lo, hi, N, TRIU)
    g = tl.load(DOUT + s * stride_gs + p * stride_gp, mask=pair_mask, other=0.0).to(CDT)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        nd_mask = mask_n[:, None] & (offs_d < D)[None, :]
        x = tl.load(X + s * stride_xs + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                    mask=nd_mask, other=0.0).to(CDT)
        dx = tl.dot(g, x, input_precision=PREC)
        tl.store(DX + s * N * D + offs_n[:, None] * D + offs_d[None, :], dx.to(DX.dtype.element_ty),
                 mask=nd_mask)


_TL_DTYPES = {
    torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


def out_width(n: int, order: str) -> int:
    pairs = n * (n - 1) // 2
    return pairs if order == "triu" else pairs + 1


def _config(x: torch.Tensor, order: str) -> dict:
    n, d = x.shape[1], x.shape[2]
    prec = "ieee" if x.dtype in (torch.float32, torch.float64) else "tf32"
    return dict(TRIU=order == "triu", CDT=_TL_DTYPES[x.dtype], PREC=prec,
                BLOCK_N=max(16, triton.next_power_of_2(n)),
                BLOCK_D=min(64, max(16, triton.next_power_of_2(d))), num_warps=4)


def dot_fwd(x: torch.Tensor, order: str) -> torch.Tensor:
    """``x [bs, n, d]`` (any strides) -> ``[bs, out_width(n, order)]``."""
    bs, n, d = x.shape
    width = out_width(n, order)
    out = new_output((bs, width), like=x)
    if bs > 0 and width > 0:
        dot_fwd_kernel[(bs,)](
            x, out, n, d, width, x.stride(0), x.stride(1), x.stride(2), **_config(x, order),
        )
    return out


def dot_bwd(dout: torch.Tensor, x: torch.Tensor, order: str) -> torch.Tensor:
    """``dX [bs, n, d]`` from ``dout [bs, width]`` (any strides)."""
    bs, n, d = x.shape
    dx = new_output((bs, n, d), like=x)
    if dx.numel() > 0:
        dot_bwd_kernel[(bs,)](
            dout, x, dx, n, d, dout.stride(0), dout.stride(1),
            x.stride(0), x.stride(1), x.stride(2), **_config(x, order),
        )
    return dx
