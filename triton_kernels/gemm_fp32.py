"""fp32 GEMM on bf16 tensor cores: ``C = A @ B`` to fp32's accuracy, from six bf16 products.

Each fp32 operand tile is split exactly into three bf16 parts, ``x = x0 + x1 + x2`` (fp32's 24-bit
significand as three 8-bit ones, each rounded to nearest from what the parts before it left), and

    A @ B  ~  A0 B0  +  (A0 B1 + A1 B0)  +  (A0 B2 + A1 B1 + A2 B0)

with every product of two parts exact in the fp32 accumulator. The three products left out
(``A1 B2``, ``A2 B1``, ``A2 B2``) are below ``2^-24`` of ``|a| |b|`` each, an fp32 rounding's size,
so an entry's error is that of an fp32 GEMM's own roundings (its ``K`` additions), not of bf16 or
TF32 inputs. The five small products go to a second fp32 accumulator, added to the first once at
the end, so that their sum is not rounded at the scale of ``A0 B0`` at every step.

Six bf16 products are 6 x 2K MACs an entry at the bf16 tensor-core rate; on the H200 that is still
about twice an fp32 SIMT GEMM's (cuBLAS's IEEE ``sgemm``) rate at the Lite global weight's shapes
(``bench/NOTES.md``). Split-K (``SPLIT`` programs along ``K``, fp32 partials summed in a fixed
order by :func:`sum_partials`) fills the GPU where the output has few tiles (``dA = dM B^T`` at
rank 256: 64 tiles of 128 x 128 against 132 SMs). The result does not depend on the run: no atomics.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import new_output, sm_count
from ._partials import sum_partials
from ._tiles import grouped_tile


class GemmConfig(NamedTuple):
    """One launch of :func:`mm_fp32`: output tile ``BM x BN``, ``BK`` of ``K`` a loop step, warps,
    pipeline stages, and ``split``, the programs along ``K`` (fp32 partials summed afterwards)."""

    bm: int
    bn: int
    bk: int
    warps: int
    stages: int
    split: int


# the output tile where the output fills the GPU with it, and the one for narrow outputs
_WIDE = (128, 128, 32, 8, 3)
_NARROW = (64, 128, 32, 4, 3)
# split K only while each split keeps this many of K's loop steps
_MIN_STEPS_PER_SPLIT = 8


@triton.jit
def _split3(x):
    """``x`` (fp32) as bf16 parts ``(x0, x1, x2)`` with ``x0 + x1 + x2 == x`` exactly: each part is
    the round-to-nearest bf16 of what the ones before it left, and every remainder is exact in fp32."""
    x0 = x.to(tl.bfloat16)
    r = x - x0.to(tl.float32)
    x1 = r.to(tl.bfloat16)
    x2 = (r - x1.to(tl.float32)).to(tl.bfloat16)
    return x0, x1, x2


@triton.jit
def _part_dot(x, y, acc, AS_FP32: tl.constexpr):
    """``acc + x @ y`` for bf16 parts. ``AS_FP32`` (the CPU interpreter, whose ``tl.dot`` multiplies
    bf16's stored bits as integers) takes the same values as fp32, where their products are as exact."""
    if AS_FP32:
        return tl.dot(x.to(tl.float32), y.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(x, y, acc)


@triton.jit
def mm_fp32_kernel(
    A, B, C, M, N, K, k_split, sam, sak, sbk, sbn,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr, AS_FP32: tl.constexpr,
):
    """``C[split] = A[:, ks] @ B[ks, :]`` over split ``program_id(1)``'s ``k_split`` columns of ``A``
    (``C`` contiguous ``[SPLIT, M, N]`` fp32; with one split, the product itself)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP)
    split = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    rmask = rows < M
    cmask = cols < N
    a_rows = A + rows.to(tl.int64)[:, None] * sam
    b_cols = B + cols.to(tl.int64)[None, :] * sbn
    k_lo = split * k_split
    k_hi = tl.minimum(K, k_lo + k_split)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    small = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < k_hi
        a = tl.load(a_rows + ks.to(tl.int64)[None, :] * sak, mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_cols + ks.to(tl.int64)[:, None] * sbk, mask=kmask[:, None] & cmask[None, :], other=0.0)
        a0, a1, a2 = _split3(a)
        b0, b1, b2 = _split3(b)
        small = _part_dot(a2, b0, small, AS_FP32)
        small = _part_dot(a1, b1, small, AS_FP32)
        small = _part_dot(a0, b2, small, AS_FP32)
        small = _part_dot(a1, b0, small, AS_FP32)
        small = _part_dot(a0, b1, small, AS_FP32)
        acc = _part_dot(a0, b0, acc, AS_FP32)
    out = C + split.to(tl.int64) * M * N + rows.to(tl.int64)[:, None] * N + cols[None, :]
    tl.store(out, acc + small, mask=rmask[:, None] & cmask[None, :])


def plan(m: int, n: int, k: int, device: torch.device) -> GemmConfig:
    """The launch for an ``[m, k] @ [k, n]`` product: 128 x 128 tiles where they give every SM one,
    else 64 x 128; then as many splits of ``K`` as bring the programs to about two per SM, each
    keeping at least ``_MIN_STEPS_PER_SPLIT`` loop steps."""
    sms = sm_count(device)
    bm, bn, bk, warps, stages = _WIDE if triton.cdiv(m, 128) * triton.cdiv(n, 128) >= sms else _NARROW
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    split = max(1, min(triton.cdiv(2 * sms, tiles), k // (bk * _MIN_STEPS_PER_SPLIT)))
    return GemmConfig(bm, bn, bk, warps, stages, split)


def mm_fp32(a: torch.Tensor, b: torch.Tensor, config: GemmConfig | None = None) -> torch.Tensor:
    """``a @ b`` (fp32 ``[M, K]`` and ``[K, N]``, any strides) as a new contiguous fp32 ``[M, N]``, on
    bf16 tensor cores to fp32's accuracy (module docstring). ``config`` overrides :func:`plan`."""
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise TypeError(f"mm_fp32: expected fp32 operands, got a {a.dtype} and b {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"mm_fp32: expected a [M, K] and b [K, N], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"mm_fp32: a is on {a.device} and b on {b.device}; put both on one device")
    (m, k), n = a.shape, b.shape[1]
    cfg = plan(m, n, k, a.device) if config is None else config
    split = max(1, min(cfg.split, triton.cdiv(k, cfg.bk)))
    out = new_output((m, n), like=a)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    k_split = triton.cdiv(triton.cdiv(k, split), cfg.bk) * cfg.bk
    split = triton.cdiv(k, k_split)
    dst = out if split == 1 else torch.empty((split, m, n), device=a.device, dtype=torch.float32)
    grid = (triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bn), split)
    mm_fp32_kernel[grid](
        a, b, dst, m, n, k, k_split, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, GROUP=8, AS_FP32=os.environ.get("TRITON_INTERPRET", "0") == "1",
        num_warps=cfg.warps, num_stages=cfg.stages,
    )
    if split > 1:
        sum_partials((dst, out))
    return out
