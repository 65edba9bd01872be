"""fp32 GEMM on bf16 tensor cores: ``C = A @ B`` to fp32's accuracy, from six bf16 products.

Each fp32 operand is split exactly into three bf16 parts, ``x = x0 + x1 + x2`` (fp32's 24-bit
significand as three 8-bit ones, each rounded from what the parts before it left; every remainder is
exact in fp32), by one elementwise pass (:func:`split_parts`, two tensors a launch), and

    A @ B  ~  A0 B0  +  (A0 B1 + A1 B0)  +  (A0 B2 + A1 B1 + A2 B0)

with every product of two parts exact in fp32. The three products left out (``A1 B2``, ``A2 B1``,
``A2 B2``) are below ``2^-24`` of ``|a| |b|`` each, an fp32 rounding's size, so an entry's error is
that of its fp32 additions, not of bf16 or TF32 inputs.

The additions. The tensor cores' fp32 accumulation does not round to nearest: a single accumulator
carried along ``K = 4096`` had 5.7-7.7x the error of cuBLAS's IEEE ``sgemm`` on the H200 (the errors
add up with one sign), 0.5-0.7x at ``K = 128, 256`` (``bench/NOTES.md``, ``python -m bench.gemm_fp32``).
So each ``BK``-wide step of ``K`` sums its six products, smallest first, in a fresh accumulator, and
that chunk is added to the running total by an ordinary (round-to-nearest) fp32 addition.

The parts live in memory (6 bytes an element against fp32's 4), so the GEMM's operands reach the
tensor cores straight from shared memory, as a 16-bit GEMM's do; splitting inside the GEMM
(registers, then shared memory again for every product) ran at about a third of the bf16 rate.
Split-K (``split`` programs along ``K``, fp32 partials summed in a fixed order by
:func:`sum_partials`) fills the GPU where the output has few tiles (``dA = dM B^T`` at n = 1024, rank
128: 16 tiles of 64 x 128 for 132 SMs). No atomics: the result does not depend on the run.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import interpreting, new_output, sm_count
from ._partials import sum_partials
from ._tiles import grouped_tile


class GemmConfig(NamedTuple):
    """One launch of :func:`mm_parts`: output tile ``BM x BN``, ``BK`` of ``K`` a loop step, warps,
    pipeline stages, and ``split``, the programs along ``K`` (fp32 partials summed afterwards)."""

    bm: int
    bn: int
    bk: int
    warps: int
    stages: int
    split: int


# the output tile where it gives every SM one, and the one for narrow outputs: the fastest of eight
# tiles at paper-100m's three products on the H200 (bench/results/2026-11-30-h200-run113); and where
# even those leave more than half of the SMs idle (paper-small's dA_G, dB_G), 64 x 64 tiles before K is
# split: the Lite global weight at paper-small 249.7 -> 245.3 us a step (64 x 128 with K in 8: 245.9;
# 32 x 128: 248.0), run123
_WIDE = (128, 128, 32, 8, 4)
_NARROW = (64, 128, 64, 4, 3)
_SMALL = (64, 64, 64, 4, 3)
# split K only while each split keeps this many of K's loop steps
_MIN_STEPS_PER_SPLIT = 4
_SPLIT_BLOCK = 2048


# the CPU interpreter's ``tl.dot`` multiplies bf16's stored bits as integers: there the parts go to
# ``tl.dot`` as fp32, where their products are as exact (read when the module is imported)
_PARTS_AS_FP32 = tl.constexpr(interpreting())


@triton.jit
def _part_dot(x, y, acc):
    if _PARTS_AS_FP32:
        return tl.dot(x.to(tl.float32), y.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(x, y, acc)


@triton.jit
def store_parts(P, offs, x, mask, plane):
    """Store the three bf16 parts of fp32 ``x`` at ``P + offs``, ``P + plane + offs`` and ``P + 2 * plane +
    offs``: ``x0 + x1 + x2 == x`` exactly, each part the bf16 rounding of what the ones before it left,
    every remainder exact in fp32. Also the Sinkhorn backward's ``dM`` (``sinkhorn.py``)."""
    x0 = x.to(tl.bfloat16)
    r = x - x0.to(tl.float32)
    x1 = r.to(tl.bfloat16)
    x2 = (r - x1.to(tl.float32)).to(tl.bfloat16)
    tl.store(P + offs, x0, mask=mask)
    tl.store(P + plane + offs, x1, mask=mask)
    tl.store(P + 2 * plane + offs, x2, mask=mask)


@triton.jit
def split_parts_kernel(X, P, numel, Y, Q, numel_y, BLOCK: tl.constexpr):
    """The parts (:func:`store_parts`) of two flat fp32 tensors in one launch: ``P [3, numel]`` of ``X``
    from the first ``cdiv(numel, BLOCK)`` programs, ``Q [3, numel_y]`` of ``Y`` from the rest."""
    pid = tl.program_id(0)
    first = tl.cdiv(numel, BLOCK)
    if pid < first:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        store_parts(P, offs, tl.load(X + offs, mask=offs < numel), offs < numel, numel)
    else:
        offs = (pid - first).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        store_parts(Q, offs, tl.load(Y + offs, mask=offs < numel_y), offs < numel_y, numel_y)


@triton.jit
def mm_parts_kernel(
    A, B, C, M, N, K, k_split, sap, sam, sak, sbp, sbk, sbn,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
):
    """``C[split] = A[:, ks] @ B[ks, :]`` over split ``program_id(1)``'s ``k_split`` columns of ``A``,
    from the bf16 parts ``A [3, M, K]`` and ``B [3, K, N]`` (strided); ``C`` is contiguous
    ``[SPLIT, M, N]`` fp32 (with one split, the product itself)."""
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
    for k0 in range(k_lo, k_hi, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < k_hi
        am = rmask[:, None] & kmask[None, :]
        bm = kmask[:, None] & cmask[None, :]
        pa = a_rows + ks.to(tl.int64)[None, :] * sak
        pb = b_cols + ks.to(tl.int64)[:, None] * sbk
        a0 = tl.load(pa, mask=am, other=0.0)
        a1 = tl.load(pa + sap, mask=am, other=0.0)
        a2 = tl.load(pa + 2 * sap, mask=am, other=0.0)
        b0 = tl.load(pb, mask=bm, other=0.0)
        b1 = tl.load(pb + sbp, mask=bm, other=0.0)
        b2 = tl.load(pb + 2 * sbp, mask=bm, other=0.0)
        # this step's chunk, smallest products first, added to the total with one fp32 rounding
        chunk = _part_dot(a2, b0, tl.zeros([BM, BN], dtype=tl.float32))
        chunk = _part_dot(a1, b1, chunk)
        chunk = _part_dot(a0, b2, chunk)
        chunk = _part_dot(a1, b0, chunk)
        chunk = _part_dot(a0, b1, chunk)
        acc += _part_dot(a0, b0, chunk)
    out = C + split.to(tl.int64) * M * N + rows.to(tl.int64)[:, None] * N + cols[None, :]
    tl.store(out, acc, mask=rmask[:, None] & cmask[None, :])


def split_parts(*xs: torch.Tensor) -> list[torch.Tensor]:
    """The bf16 parts of each 2-d fp32 ``x`` as ``[3, *x.shape]``, each part laid out as ``x`` is (row- or
    column-major; any other strides are copied to row-major once first); one launch per two tensors."""
    bases, outs = [], []
    for k, x in enumerate(xs):
        if x.dtype != torch.float32 or x.dim() != 2:
            raise TypeError(f"split_parts: xs[{k}]: expected a 2-d fp32 tensor, got {x.dtype} of shape "
                            f"{tuple(x.shape)}")
        transposed = not x.is_contiguous() and x.t().is_contiguous()
        base = x.t() if transposed else x.contiguous()
        parts = torch.empty((3, *base.shape), device=x.device, dtype=torch.bfloat16)
        outs.append(parts.transpose(1, 2) if transposed else parts)
        if base.numel():
            bases.append((base, parts))
    for first, second in itertools.zip_longest(bases[::2], bases[1::2]):
        (x, p), (y, q) = first, second or first  # no second: its slot gets no programs
        numel_y = y.numel() if second else 0
        grid = triton.cdiv(x.numel(), _SPLIT_BLOCK) + triton.cdiv(numel_y, _SPLIT_BLOCK)
        split_parts_kernel[(grid,)](x, p, x.numel(), y, q, numel_y, BLOCK=_SPLIT_BLOCK)
    return outs


def plan(m: int, n: int, k: int, device: torch.device) -> GemmConfig:
    """The launch for an ``[m, k] @ [k, n]`` product: 128 x 128 tiles where they give every SM one,
    else 64 x 128 where those fill at least half of the SMs, else 64 x 64; K is split only where the
    tiles leave more than half of the SMs idle, into as many splits as give about one program per SM,
    each keeping at least ``_MIN_STEPS_PER_SPLIT`` loop steps (at paper-100m's ``dA``, 128 tiles of
    64 x 128 for 132 SMs: one split 0.101 ms, three 0.159, four 0.118, run113)."""
    sms = sm_count(device)

    def tiles(cfg):
        return triton.cdiv(m, cfg[0]) * triton.cdiv(n, cfg[1])

    if tiles(_WIDE) >= sms:
        cfg = _WIDE
    elif 2 * tiles(_NARROW) >= sms:
        cfg = _NARROW
    else:
        cfg = _SMALL
    split = 1 if 2 * tiles(cfg) >= sms else max(1, min(triton.cdiv(sms, tiles(cfg)),
                                                       k // (cfg[2] * _MIN_STEPS_PER_SPLIT)))
    return GemmConfig(*cfg, split)


def mm_parts(*pairs: tuple[torch.Tensor, torch.Tensor],
             config: GemmConfig | None = None) -> list[torch.Tensor]:
    """``[A @ B for (pa, pb) in pairs]``, each a new contiguous fp32 ``[M, N]``, from the parts
    ``pa [3, M, K]`` and ``pb [3, K, N]`` of :func:`split_parts` (module docstring): one GEMM launch
    a pair, then one launch that sums every pair's split-K partials. ``config`` overrides
    :func:`plan` for every pair."""
    outs, partials = [], []
    for k, (pa, pb) in enumerate(pairs):
        if pa.dtype != torch.bfloat16 or pb.dtype != torch.bfloat16 or pa.dim() != 3 or pb.dim() != 3 \
                or pa.shape[0] != 3 or pb.shape[0] != 3 or pa.shape[2] != pb.shape[1]:
            raise ValueError(f"mm_parts: pairs[{k}]: expected split_parts of a [M, K] and b [K, N], got "
                             f"{pa.dtype} {tuple(pa.shape)} and {pb.dtype} {tuple(pb.shape)}")
        if pa.device != pb.device:
            raise ValueError(f"mm_parts: pairs[{k}]: a is on {pa.device} and b on {pb.device}; put both on "
                             "one device")
        (_, m, kk), n = pa.shape, pb.shape[2]
        out = new_output((m, n), like=pa, dtype=torch.float32)
        outs.append(out)
        if m == 0 or n == 0:
            continue
        if kk == 0:
            out.zero_()
            continue
        cfg = plan(m, n, kk, pa.device) if config is None else config
        k_split = triton.cdiv(triton.cdiv(kk, max(1, cfg.split)), cfg.bk) * cfg.bk
        split = triton.cdiv(kk, k_split)
        dst = out if split == 1 else torch.empty((split, m, n), device=pa.device, dtype=torch.float32)
        if split > 1:
            partials.append((dst, out))
        grid = (triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bn), split)
        mm_parts_kernel[grid](
            pa, pb, dst, m, n, kk, k_split, *pa.stride(), *pb.stride(),
            BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, GROUP=8, num_warps=cfg.warps, num_stages=cfg.stages,
        )
    if partials:
        sum_partials(*partials)
    return outs


def mm_fp32(a: torch.Tensor, b: torch.Tensor, config: GemmConfig | None = None) -> torch.Tensor:
    """``a @ b`` for 2-d fp32 ``a [M, K]``, ``b [K, N]`` (any strides): :func:`mm_parts` of their
    :func:`split_parts`. Split an operand once where it serves several products."""
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise TypeError(f"mm_fp32: expected fp32 operands, got a {a.dtype} and b {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"mm_fp32: expected a [M, K] and b [K, N], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return mm_parts(tuple(split_parts(a, b)), config=config)[0]
