"""Wukong's optimised FM ``O = X (X^T Y)``: Triton kernels and launchers (no autograd here).

Per sample ``s``: ``X_s [n, d]``, the shared ``Y [n, k]``, ``W_s = X_s^T Y [d, k]`` and
``O_s = X_s W_s [n, k]``. Backward, with ``dW_s = X_s^T dO_s``::

    dX_s = dO_s W_s^T + Y dW_s^T
    dY   = sum_s X_s dW_s

Everything splits over column chunks ``c`` of ``d``: ``W_s[c] = X_s[:, c]^T Y`` needs only that
chunk, ``O_s = sum_c X_s[:, c] W_s[c]``, and ``dX_s[:, c]`` / the ``dY`` term need only ``W_s[c]``
and ``dW_s[c]``. So a program walks ``d`` in ``BLOCK_D`` chunks with ``n`` and ``k`` whole:
``X`` is read from memory exactly once per pass, and ``W`` never leaves registers.

- ``fm_fwd_kernel``: grid ``(bs,)``, one sample per program. Saves nothing: the backward
  recomputes ``W`` (as large as ``X`` itself for the ``wukong`` shape, in fp32).
- ``fm_bwd_kernel``: grid ``(cdiv(bs, SAMPLES),)``; each program loops over its ``SAMPLES``
  samples, writes ``dX``, and accumulates ``dY`` in fp32 registers; the ``[programs, n, k]`` fp32
  partials are summed, and cast to ``y``'s dtype, in a second pass (:func:`._partials.sum_partials`;
  deterministic, no atomics).

Precision: ``W`` and ``dW`` are fp32 accumulators. For bf16/fp16 inputs the forward feeds ``W``
to the second GEMM split into two terms of the input dtype (``hi + lo``, about 16 bits of
mantissa), so the output matches the fp32-accumulating reference to its own rounding while
staying on the tensor cores; the backward rounds ``W``/``dW`` to the input dtype (optionally
split too: ``split=True``). fp32 uses ``input_precision="ieee"``. If ``y``'s dtype differs from
``x``'s, everything runs in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output
from ._partials import sum_partials


@triton.jit
def _dot_split(a, b, acc, SPLIT: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr):
    """``acc + a @ b`` with ``b`` fp32: as ``a @ hi(b) + a @ lo(b)`` when ``SPLIT``."""
    b_hi = b.to(CDT)
    acc = tl.dot(a, b_hi, acc, input_precision=PREC)
    if SPLIT:
        b_lo = (b - b_hi.to(tl.float32)).to(CDT)
        acc = tl.dot(a, b_lo, acc, input_precision=PREC)
    return acc


@triton.jit
def fm_fwd_kernel(
    X, Y, OUT,
    N, D, K,
    stride_xs, stride_xn, stride_xd,
    SPLIT: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_k = offs_k < K
    nk_mask = mask_n[:, None] & mask_k[None, :]
    y = tl.load(Y + offs_n[:, None] * K + offs_k[None, :], mask=nk_mask, other=0.0).to(CDT)
    o = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        x = tl.load(X + s * stride_xs + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(CDT)
        w = tl.dot(tl.trans(x), y, input_precision=PREC)  # [BLOCK_D, BLOCK_K] chunk of X^T Y
        o = _dot_split(x, w, o, SPLIT, CDT, PREC)
    tl.store(OUT + s * N * K + offs_n[:, None] * K + offs_k[None, :], o.to(OUT.dtype.element_ty),
             mask=nk_mask)


@triton.jit
def fm_bwd_kernel(
    DO, X, Y, DX, DY_PARTIAL,
    BS, N, D, K,
    stride_dos, stride_don, stride_dok,
    stride_xs, stride_xn, stride_xd,
    SPLIT: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    SAMPLES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program ``p`` handles samples ``[p*SAMPLES, (p+1)*SAMPLES)`` and writes its ``dY`` partial."""
    pid = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_k = offs_k < K
    nk_mask = mask_n[:, None] & mask_k[None, :]
    y = tl.load(Y + offs_n[:, None] * K + offs_k[None, :], mask=nk_mask, other=0.0).to(CDT)
    dy = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    first = pid.to(tl.int64) * SAMPLES
    for i in range(0, SAMPLES):
        s = first + i
        if s < BS:
            do = tl.load(DO + s * stride_dos + offs_n[:, None] * stride_don + offs_k[None, :] * stride_dok,
                         mask=nk_mask, other=0.0).to(CDT)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < D
                nd_mask = mask_n[:, None] & mask_d[None, :]
                x = tl.load(X + s * stride_xs + offs_n[:, None] * stride_xn + offs_d[None, :] * stride_xd,
                            mask=nd_mask, other=0.0).to(CDT)
                xt = tl.trans(x)
                w = tl.dot(xt, y, input_precision=PREC)  # [BLOCK_D, BLOCK_K]
                dw = tl.dot(xt, do, input_precision=PREC)
                dx = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
                dx = _dot_split(do, tl.trans(w), dx, SPLIT, CDT, PREC)
                dx = _dot_split(y, tl.trans(dw), dx, SPLIT, CDT, PREC)
                tl.store(DX + s * N * D + offs_n[:, None] * D + offs_d[None, :],
                         dx.to(DX.dtype.element_ty), mask=nd_mask)
                dy = _dot_split(x, dw, dy, SPLIT, CDT, PREC)
    tl.store(DY_PARTIAL + pid * N * K + offs_n[:, None] * K + offs_k[None, :], dy, mask=nk_mask)


_TL_DTYPES = {
    torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


def _config(x: torch.Tensor, y: torch.Tensor, split: bool) -> dict:
    cdt = x.dtype if y.dtype == x.dtype else torch.float32
    half = cdt in (torch.float16, torch.bfloat16)
    n, k = y.shape
    return dict(SPLIT=half and split, CDT=_TL_DTYPES[cdt], PREC="tf32" if half else "ieee",
                BLOCK_N=max(16, triton.next_power_of_2(n)), BLOCK_K=max(16, triton.next_power_of_2(k)))


def _block_d(d: int, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(d)))


# Launch settings: reasonable defaults, not yet swept on hardware (the launchers take them as
# keywords so a benchmark can sweep them). The backward skips the hi/lo split: its gradients
# are checked at 5x the torch error, and the split would cost three extra GEMMs per chunk.
FWD_META = dict(block_d=64, num_warps=4, num_stages=2)
BWD_META = dict(block_d=64, num_warps=4, num_stages=2, samples=4, split=False)


def fm_fwd(x: torch.Tensor, y: torch.Tensor, *, block_d: int | None = None, num_warps: int | None = None,
           num_stages: int | None = None) -> torch.Tensor:
    """``X (X^T Y)`` for ``x [bs, n, d]`` (any strides) and ``y [n, k]`` -> ``[bs, n, k]``.
    The keyword launch settings default to ``FWD_META``."""
    bs, n, d = x.shape
    k = y.shape[-1]
    y = y.contiguous()
    out = new_output((bs, n, k), like=x)
    if bs > 0 and n > 0 and k > 0:
        fm_fwd_kernel[(bs,)](
            x, y, out, n, d, k, x.stride(0), x.stride(1), x.stride(2),
            **_config(x, y, True), BLOCK_D=_block_d(d, block_d or FWD_META["block_d"]),
            num_warps=num_warps or FWD_META["num_warps"], num_stages=num_stages or FWD_META["num_stages"],
        )
    elif out.numel():
        out.zero_()
    return out


def fm_bwd(
    do: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, block_d: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None, samples: int | None = None,
    split: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dX [bs, n, d], dY [n, k] in y's dtype)``; ``do`` and ``x`` may have any strides.
    The keyword launch settings default to ``BWD_META`` (``split``: the hi/lo split of the fp32
    ``W``/``dW`` operands for half-precision inputs)."""
    bs, n, d = x.shape
    k = y.shape[-1]
    y = y.contiguous()
    dx = new_output((bs, n, d), like=x)
    if bs == 0 or n == 0 or d == 0 or k == 0:
        return dx.zero_(), torch.zeros_like(y)
    samples = samples or BWD_META["samples"]
    if x.device.type != "cuda":
        samples = 2  # a program loops over several samples in the interpreter tests too
    programs = triton.cdiv(bs, samples)
    partial = new_output((programs, n, k), like=x, dtype=torch.float32)
    fm_bwd_kernel[(programs,)](
        do, x, y, dx, partial,
        bs, n, d, k,
        do.stride(0), do.stride(1), do.stride(2),
        x.stride(0), x.stride(1), x.stride(2),
        **_config(x, y, BWD_META["split"] if split is None else split),
        SAMPLES=samples, BLOCK_D=_block_d(d, block_d or BWD_META["block_d"]),
        num_warps=num_warps or BWD_META["num_warps"], num_stages=num_stages or BWD_META["num_stages"],
    )
    dy = new_output(y.shape, like=y)
    sum_partials((partial, dy))
    return dx, dy
