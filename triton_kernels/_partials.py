"""The second pass of the deterministic weight-gradient reductions, for every op in one launch.

A weight-gradient kernel writes one fp32 partial per program (or per sample split) into a
``[P, ...]`` buffer; ``out = partial.sum(0)`` in the output's dtype finishes it. An op's backward
has several such buffers (pSwiGLU six, seven with the norm in front of it, the UniMixing + RMSNorm
backward three), which as separate
``sum`` and cast calls cost two launches each. :func:`sum_partials` sums up to
:data:`MAX_SEGMENTS` buffers in one launch and casts in the store.

Each buffer is a segment of the grid: program ``i`` of segment ``k`` owns ``BM_k`` output
elements and walks the ``P_k`` partials ``BP_k`` rows at a time, adding each ``[BP_k, BM_k]`` tile
into an fp32 accumulator of that shape, then reduces the ``BP_k`` rows once. The order of the
additions depends only on the shapes, so the result is the same on every run (no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output
from ._pdl import pdl_prologue

MAX_SEGMENTS = 7
# values per program tile: a [BP, BM] tile of this many fp32 values, with BP up to MAX_ROWS partial
# rows (a long P, e.g. the RMSNorm backward's one row per program, then takes few loop steps)
TILE = 4096
MAX_ROWS = 128


@triton.jit
def _sum_segment(block, SRC, DST, P, M, BP: tl.constexpr, BM: tl.constexpr):
    cols = block.to(tl.int64) * BM + tl.arange(0, BM)
    cmask = cols < M
    acc = tl.zeros([BP, BM], dtype=tl.float32)
    for p0 in range(0, P, BP):
        rows = p0 + tl.arange(0, BP)
        mask = (rows < P)[:, None] & cmask[None, :]
        tile = tl.load(SRC + rows.to(tl.int64)[:, None] * M + cols[None, :], mask=mask, other=0.0)
        acc += tile.to(tl.float32)
    tl.store(DST + cols, tl.sum(acc, axis=0).to(DST.dtype.element_ty), mask=cmask)


@triton.jit
def sum_partials_kernel(
    S0, D0, P0, M0, S1, D1, P1, M1, S2, D2, P2, M2,
    S3, D3, P3, M3, S4, D4, P4, M4, S5, D5, P5, M5, S6, D6, P6, M6,
    E0, E1, E2, E3, E4, E5,
    NSEG: tl.constexpr,
    BP0: tl.constexpr, BM0: tl.constexpr, BP1: tl.constexpr, BM1: tl.constexpr,
    BP2: tl.constexpr, BM2: tl.constexpr, BP3: tl.constexpr, BM3: tl.constexpr,
    BP4: tl.constexpr, BM4: tl.constexpr, BP5: tl.constexpr, BM5: tl.constexpr,
    BP6: tl.constexpr, BM6: tl.constexpr, PDL: tl.constexpr = False, RELEASE_FIRST: tl.constexpr = False,
):
    """``D_k[j] = sum_p S_k[p, j]`` (fp32, fixed order, cast to ``D_k``'s dtype) for the ``NSEG``
    segments ``k``; segment ``k`` owns programs ``[E_{k-1}, E_k)`` (``E_{-1} = 0``). ``PDL``,
    ``RELEASE_FIRST``: launched with programmatic dependent launch (``_pdl.pdl_prologue``)."""
    pdl_prologue(PDL, RELEASE_FIRST)
    pid = tl.program_id(0)
    if pid < E0:
        _sum_segment(pid, S0, D0, P0, M0, BP0, BM0)
    if NSEG > 1:
        if (pid >= E0) & (pid < E1):
            _sum_segment(pid - E0, S1, D1, P1, M1, BP1, BM1)
    if NSEG > 2:
        if (pid >= E1) & (pid < E2):
            _sum_segment(pid - E1, S2, D2, P2, M2, BP2, BM2)
    if NSEG > 3:
        if (pid >= E2) & (pid < E3):
            _sum_segment(pid - E2, S3, D3, P3, M3, BP3, BM3)
    if NSEG > 4:
        if (pid >= E3) & (pid < E4):
            _sum_segment(pid - E3, S4, D4, P4, M4, BP4, BM4)
    if NSEG > 5:
        if (pid >= E4) & (pid < E5):
            _sum_segment(pid - E4, S5, D5, P5, M5, BP5, BM5)
    if NSEG > 6:
        if pid >= E5:
            _sum_segment(pid - E5, S6, D6, P6, M6, BP6, BM6)


# a segment's programs: at least this many where its outputs allow BM >= MIN_COLS (a few long
# columns, e.g. a norm weight's 128 over 1024 partial rows, then take 16 programs walking 512 rows
# a step, not 4 walking 128: each step waits on its loads, so the steps set the time)
MIN_PROGRAMS = 16
MIN_COLS = 8


def _rows_cols(p: int, m: int) -> tuple[int, int]:
    """``(BP, BM)``: the partial rows and output elements of one program's tile (``BP * BM`` is
    :data:`TILE`): up to :data:`MAX_ROWS` rows, or more when the ``m`` outputs would otherwise give
    fewer than :data:`MIN_PROGRAMS` programs."""
    rows = triton.next_power_of_2(max(p, 1))
    bm = max(TILE // min(rows, MAX_ROWS), 1)
    if triton.cdiv(m, bm) < MIN_PROGRAMS and rows > MAX_ROWS:
        bm = max(min(bm, triton.next_power_of_2(triton.cdiv(m, MIN_PROGRAMS))), MIN_COLS)
    return min(rows, TILE // bm), bm


def sum_partials(*pairs: tuple[torch.Tensor, torch.Tensor], launch: dict | None = None) -> None:
    """For each ``(partial, out)``: ``out = partial.sum(0)``, summed in fp32 in a fixed order and
    cast to ``out``'s dtype, all in one launch. ``partial`` is a contiguous floating ``[P, ...]``
    tensor (fp32 partials, or 16-bit rows to be summed, as a bias gradient's), ``out`` a contiguous
    tensor of ``partial.shape[1:]``; :data:`MAX_SEGMENTS` pairs a launch (more take more
    launches). ``launch``: :func:`._pdl.pdl_options`' keywords, for a caller whose chain of launches
    uses programmatic dependent launch."""
    if not pairs:
        raise ValueError("pairs: expected at least one (partial, out) pair")
    for first in range(0, len(pairs), MAX_SEGMENTS):
        _sum_partials_launch(pairs[first:first + MAX_SEGMENTS], first, launch or {})


def _sum_partials_launch(pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...], first: int,
                         launch: dict) -> None:
    args, consts, ends, total = [], {}, [], 0
    for k, (part, out) in enumerate(pairs):
        if not part.is_floating_point() or not part.is_contiguous() or not out.is_contiguous():
            raise ValueError(f"pairs[{first + k}]: expected a contiguous floating-point partial and a "
                             f"contiguous output, got {part.dtype} (contiguous: {part.is_contiguous()}) and "
                             f"contiguous: {out.is_contiguous()}")
        if part.shape[1:] != out.shape:
            raise ValueError(f"pairs[{first + k}]: the output shape {tuple(out.shape)} must be the partial's "
                             f"{tuple(part.shape)} without its first dim")
        p, m = part.shape[0], out.numel()
        bp, bm = _rows_cols(p, m)
        total += triton.cdiv(m, bm)
        ends.append(total)
        args += [part, out, p, m]
        consts[f"BP{k}"], consts[f"BM{k}"] = bp, bm
    for k in range(len(pairs), MAX_SEGMENTS):  # unused segments: never reached
        args += [pairs[0][0], pairs[0][1], 0, 0]
        consts[f"BP{k}"], consts[f"BM{k}"] = 1, 1
    ends += [total] * (MAX_SEGMENTS - len(ends))
    if total == 0:
        return
    sum_partials_kernel[(total,)](*args, *ends[:-1], NSEG=len(pairs), **consts, **launch, num_warps=4)


def cast_all(xs: list[torch.Tensor], dtype: torch.dtype, contiguous: bool = False) -> list[torch.Tensor]:
    """``[x.to(dtype) for x in xs]``, the contiguous ``x`` in one launch (the one-partial case of
    :func:`sum_partials`, :data:`MAX_SEGMENTS` tensors a launch: one read and one write each). A
    non-contiguous ``x`` is cast by ``x.to(dtype)`` (its strides kept), or with ``contiguous`` copied
    once first and cast to a contiguous result. The per-token FFNs' fp32 weights lowered under
    autocast, and their 16-bit gradients widened back, are three tensors a call: one launch each way
    instead of three. On the H200 torch's bf16 -> fp32 copy is not vectorised: 110 µs for a
    ``[16, 768, 3072]`` gradient, where one Triton pass took 58 (run125)."""
    if contiguous:
        xs = [x.contiguous() for x in xs]
    outs = [new_output(x.shape, like=x, dtype=dtype) if x.is_contiguous() else x.to(dtype) for x in xs]
    pairs = [(x.view(1, -1), out.view(-1)) for x, out in zip(xs, outs) if x.is_contiguous() and x.numel()]
    if pairs:
        sum_partials(*pairs)
    return outs
