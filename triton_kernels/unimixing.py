"""UniMixing (SPEC §2) forward and backward: Triton kernels and their launchers (no autograd here).

Layout. ``x [bs, T, D]`` is read as ``[bs, L]`` (token-major flatten, ``L = T*D = N*B``); block ``n``
of sample ``s`` is ``x[s, n*B:(n+1)*B]``. Blocks may straddle tokens: only ``L % B == 0`` is needed.

Forward, for each sample::

    h_n = x_n @ W_B[n]                         local,  W_B [N, B, B]
    y_m = sum_n W_G[m, n] h_n                  global, W_G [N, N]

A tile of samples turns the global step into a GEMM ``Y = W_G @ H`` with ``H`` viewed as
``[N, (sample, c)]`` columns. ``unimixing_fwd_kernel`` owns a ``[BM blocks m] x [BC columns]`` tile
of ``Y`` (here ``BC = samples * BP``, ``BP = next_pow2(B)``, padded columns masked). Its K loop walks
``BK`` blocks ``n`` at a time: one coalesced load brings the ``[BK, samples, BP]`` chunk of ``x``,
each column ``b`` is picked out in registers (a thread holds the whole ``b`` axis), and ``B`` fp32
FMAs per element build the ``H`` chunk, which feeds ``tl.dot`` directly, so ``h`` never goes to
memory. The product is computed transposed (``Y^T += H^T W_G^T``) so that the ``H`` chunk is the
register operand and the tensor-core dot runs asynchronously while the next chunk is built. The dot
runs in the activation dtype (``w_global`` and the ``H`` chunk are rounded to it) with an fp32
accumulator; fp32 activations use ``input_precision="ieee"``.

Optional epilogue (``unimixing_rmsnorm``): ``s = z + y`` in fp32 and ``u = s * rstd * w`` with
``rstd = rsqrt(mean_D(s^2) + eps)`` per token. The tile then spans ``BM_EFF`` blocks, a multiple of
``lcm(B, D) / B``, so it always holds whole tokens (``TPT`` tokens of every sample in the tile).
It writes ``u``, ``s`` (in the input dtype) and the fp32 ``rstd [bs, T]`` for backward. Where whole
tokens do not fit a tile (``lcm(B, D)/B > 256``), and by default (measured faster; the fused epilogue
with ``UNIMIXER_UNIMIXING_NORM=fused``), the op layer (``ops/unimixing.py``) composes two autograd
nodes instead: the mixing, which adds ``z`` in its plain epilogue (``residual``: ``s = z + y`` in
fp32, every forward path), and the RMSNorm op on ``s``; :func:`unimixing_residual_bwd_` then
writes ``dz`` over the norm's ``ds``.

Backward, with ``g = dy`` (or, for the fused op, ``g = ds``, the gradient through the norm, from the
RMSNorm backward kernel of ``rms_norm.py``)::

    G_n      = sum_m W_G[m, n] g_m             GEMM ``W_G^T @ dY``
    dx_n     = G_n @ W_B[n]^T (+ g_n for the fused op's residual)
    dW_B[n]  = sum_s x_n^T G_n
    dW_G[m,n]= sum_s g_m . h_n                 (h recomputed from x and W_B)

Small ``B`` (``next_pow2(B) < 16``): ``unimixing_bwd_dx_kernel`` owns ``BN`` blocks ``n`` and a
contiguous range of samples; per tile of samples it computes ``G`` (K loop over ``m`` on tensor
cores), applies the local transpose and the residual in the epilogue (``B`` FMAs per element), and
accumulates its fp32 ``dW_B`` partial. ``unimixing_bwd_dwg_kernel`` owns a ``[BM, BN]`` tile of
``dW_G`` and a range of samples (K loop over ``(sample, c)``), rebuilding the ``H`` chunk in
registers as the forward does (and, as there, as the register operand of a transposed dot). ``G``
and ``H`` never go to memory.

Large ``B`` (``next_pow2(B) >= 16``, e.g. ``rankmixer-100m``'s 48): the per-element local work
(``O(B)`` FMAs) would dwarf the tensor-core GEMM, so the local products become dots. The forward
builds each ``H`` chunk with a batched ``tl.dot`` over the ``BK`` blocks, for 16 samples times a
16-column slice of ``c`` (the column tile; the ``x`` chunk is re-read once per slice). The backward
goes through memory in the activation dtype: ``unimixing_global_kernel`` writes ``G`` (a plain
GEMM over flat ``(s, c)`` columns, no padding of ``B``); ``unimixing_local_kernel`` does, per
block ``n``, ``dx_n = G_n W_B[n]^T``, the ``dW_B`` partial and, unless the forward's ``H`` was saved
(:func:`saves_local`, the default where the forward also went through memory), ``h_n = x_n W_B[n]``
(written), as two or three dots; ``unimixing_bwd_dwg_gemm_kernel`` is the GEMM ``dY H^T`` with both
operands from memory. With the forward's ``H`` saved and ``N <= 256`` (16-bit activations by default,
:func:`fuses_bwd_global`), ``unimixing_bwd_global_kernel`` forms ``G`` and the ``dW_G`` partials in one
pass over ``dY`` before the per-block kernel runs (150 MB in place of 200 at ``rankmixer-100m``).
The fused RMSNorm epilogue needs all of ``c`` in its tile, so with it the forward keeps the FMA
path at any ``B``. For 16-bit activations the forward goes through memory too by default
(``unimixing_local_kernel`` with ``H_ONLY`` writes ``H``, then ``unimixing_global_kernel`` reads
``W_G`` transposed: ``Y = W_G H``), 2.5× faster than the in-register forward at ``rankmixer-100m``.

**Memory path at small B** (``B < 16``; the default for 16-bit activations from ``N = 1024``, see
:data:`MEMORY_PATH_MIN_N`; forced with ``UNIMIXER_UNIMIXING_FORWARD`` / ``_BACKWARD=gemm``). In the
natural layout the GEMMs' K index would have runs of only ``B`` values, so ``H``, ``G`` and ``dY``
are stored c-major, ``[bs, B, N]`` (row ``s*B + c`` holds column ``c`` of every block of sample
``s``). ``unimixing_local_fma_kernel`` (one block per lane, ``B`` fp32 FMAs per element, no shared
memory) writes ``H`` (forward, ``H_ONLY``), or ``dX``, ``H`` and the ``dW_B`` partials
from ``G`` (backward). A plain GEMM kernel, ``unimixing_gemm_kernel``, does the forward
``Y^T = H^T W_G^T`` (its epilogue stores ``Y`` as ``[bs, T, D]``, with the residual), its ``W_G^T``
operand written once per call by ``unimixing_transpose_cast_kernel`` for 16-bit activations (the
cast to their dtype in the same pass). The backward's ``G^T = dY^T W_G``, after one transposing
copy of ``dY``, and ``dW_G = dY H^T`` are plain GEMMs on plain layouts: by default (16-bit
activations on CUDA, ``UNIMIXER_UNIMIXING_GEMM``, :func:`cublas_gemms`) cuBLAS runs them
(``torch.mm``; ``dW_G`` in the activation dtype, cast to the weight's by the partial sums), else
``unimixing_gemm_kernel`` (``dW_G`` in sample splits). The fused RMSNorm epilogue keeps the
in-register kernel.

Weight gradients are reduced deterministically: each program writes its own fp32 partial, and a
second pass sums the partials in a fixed order and casts them to the weights' dtypes, all of them
in one launch (:func:`._partials.sum_partials`; no atomics; with a single split, ``dW_G`` is
written directly; cuBLAS's ``dW_G`` is one GEMM, as deterministic as torch's own matmul).

Weights may be fp32 beside 16-bit activations (the op's autocast policy passes them uncast to this
backend): the global products then round ``W_G`` to the activations' dtype (a cast, or the
transposing cast above), the per-block products run in fp32 on the unrounded ``W_B``, and the weight
gradients come back in fp32 with no cast after the op.

Launches per call: forward 1 kernel (2 on the memory path, 3 with the transposing cast at small
``B``; plus a cast of ``w_global`` elsewhere when it is fp32 and the activations are half
precision). Backward, in registers: 2 kernels + the partial sums; through memory: 3 kernels (4 with
the c-major copy of ``dY``, ``unimixing_c_major_kernel``; 2 where one kernel forms ``G`` and ``dW_G``;
plus the cast of an fp32 ``w_global``) + the partial sums. The fused op adds the RMSNorm backward
kernel, whose ``dw`` partials join the same sum launch.

Non-contiguous inputs are copied once to contiguous memory by the launchers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._launch import (
    LOCAL_TILE_SWITCH,
    NORM_SWITCH,
    UNIMIXING_BWD_GLOBAL_SWITCH,
    UNIMIXING_BWD_SWITCH,
    UNIMIXING_FWD_SWITCH,
    UNIMIXING_GEMM_SWITCH,
    UNIMIXING_SAVE_H_SWITCH,
    UNIMIXING_TMA_SWITCH,
    bucket,
    cublas_switch,
    interpreting,
    new_output,
    sm_count,
    switch,
)
from ._partials import sum_partials
from ._tiles import grouped_tile
from .rms_norm import rms_norm_bwd_partials

_DOT_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# --- kernels -----------------------------------------------------------------------------------


@triton.jit
def _store_plus(OUT, R, offs, mask, acc, HAS_RESIDUAL: tl.constexpr):
    """Store the fp32 ``acc`` at ``OUT + offs`` in ``OUT``'s dtype, with ``HAS_RESIDUAL`` plus ``R``
    at the same offsets (added in fp32: one rounding)."""
    if HAS_RESIDUAL:
        acc += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _mix_chunk(acc_t, k0, X, WL, WG, rm, m_ok, ks, ks_ok, kc, kc_ok, kb, kb_ok, N, L,
               B: tl.constexpr, BP: tl.constexpr, CW: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr,
               SPT: tl.constexpr, LOCAL_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One K step of the forward: build the ``H`` chunk of blocks ``k0 .. k0+BK`` and return
    ``acc_t + H^T W_G^T`` (blocks past ``N`` are masked to zero)."""
    rn = k0 + tl.arange(0, BK)
    n_ok = rn < N
    wg = tl.load(WG + rm[:, None] * N + rn[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0)
    if LOCAL_DOT:
        x3 = tl.load(X + ks[None, :, None] * L + rn[:, None, None] * B + kb[None, None, :],
                     mask=n_ok[:, None, None] & ks_ok[None, :, None] & kb_ok[None, None, :], other=0.0)
        w3 = tl.load(WL + rn[:, None, None] * (B * B) + kb[None, :, None] * B + kc[None, None, :],
                     mask=n_ok[:, None, None] & kb_ok[None, :, None] & kc_ok[None, None, :], other=0.0)
        h = tl.dot(x3.to(DOT_DTYPE), w3.to(DOT_DTYPE), input_precision=PRECISION)
    else:
        h = tl.zeros([BK, SPT, CW], dtype=tl.float32)
        if B <= 16:
            # one coalesced load of the x chunk; column b is picked out in registers (the b
            # axis is held by one thread), and the loop is unrolled so that the K loop stays
            # innermost and software-pipelined
            x3 = tl.load(X + ks[None, :, None] * L + rn[:, None, None] * B + kb[None, None, :],
                         mask=n_ok[:, None, None] & ks_ok[None, :, None] & kb_ok[None, None, :],
                         other=0.0).to(tl.float32)
            for b in tl.static_range(B):
                xb = tl.sum(tl.where(kb[None, None, :] == b, x3, 0.0), axis=2)
                wb = tl.load(WL + rn[:, None] * (B * B) + b * B + kc[None, :],
                             mask=n_ok[:, None] & kc_ok[None, :], other=0.0).to(tl.float32)
                h += xb[:, :, None] * wb[:, None, :]
        else:
            # large B (fused epilogue only): unrolling would multiply the pipelined buffers
            for b in range(B):
                xb = tl.load(X + ks[None, :] * L + rn[:, None] * B + b,
                             mask=n_ok[:, None] & ks_ok[None, :], other=0.0).to(tl.float32)
                wb = tl.load(WL + rn[:, None] * (B * B) + b * B + kc[None, :],
                             mask=n_ok[:, None] & kc_ok[None, :], other=0.0).to(tl.float32)
                h += xb[:, :, None] * wb[:, None, :]
    # transposed product, acc^T[(s, c), m] += H^T W_G^T: the H chunk is the register operand,
    # so the tensor-core dot can run asynchronously while the next chunk is built
    h2t = tl.reshape(tl.permute(h.to(DOT_DTYPE), (1, 2, 0)), [BC, BK])
    return tl.dot(h2t, tl.trans(wg.to(DOT_DTYPE)), acc_t, input_precision=PRECISION)


@triton.jit
def unimixing_fwd_kernel(
    X, WL, WG, Y, S_OUT, NW, RSTD,
    BS, N, L, D, T,
    eps,
    BS_BUCKET,
    B: tl.constexpr,
    BP: tl.constexpr,
    CW: tl.constexpr,
    BM: tl.constexpr,
    BM_EFF: tl.constexpr,
    BK: tl.constexpr,
    BC: tl.constexpr,
    GROUP: tl.constexpr,
    LOCAL_DOT: tl.constexpr,
    FUSE_NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    TPT: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``Y[s, m*B + c] = sum_n W_G[m, n] sum_b X[s, n*B + b] W_B[n, b, c]`` (+ residual RMSNorm,
    or with ``HAS_RESIDUAL`` + ``X[s, m*B + c]``, added to the fp32 sum).

    A column tile holds ``BC // CW`` samples times ``CW`` output columns ``c`` (from ``c0``).
    ``LOCAL_DOT`` builds the ``H`` chunk with a batched ``tl.dot`` over the ``BK`` blocks (large
    ``B``; ``CW`` is then a slice of ``B``), otherwise with ``B`` fp32 FMAs (``CW = BP``)."""
    SPT: tl.constexpr = BC // CW  # samples per column tile
    NC: tl.constexpr = (B + CW - 1) // CW  # column slices per sample
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BM_EFF)
    num_s = tl.cdiv(BS, SPT) * NC
    # grouped order: GROUP row tiles walk the sample tiles together, so W_G rows and x stay in L2
    pid_m, pid_s = grouped_tile(pid, num_m, num_s, GROUP)

    m0 = pid_m * BM_EFF
    s0 = (pid_s // NC).to(tl.int64) * SPT
    c0 = (pid_s % NC) * CW
    rows = tl.arange(0, BM)
    rm = m0 + rows
    m_ok = (rows < BM_EFF) & (rm < N)
    cols = tl.arange(0, BC)
    js = cols // CW
    jc = c0 + cols % CW
    samp = s0 + js
    col_ok = (samp < BS) & (jc < B)
    ks = s0 + tl.arange(0, SPT)
    ks_ok = ks < BS
    kc = c0 + tl.arange(0, CW)
    kc_ok = kc < B
    kb = tl.arange(0, BP)
    kb_ok = kb < B

    acc_t = tl.zeros([BC, BM], dtype=tl.float32)
    if PRECISION == "ieee":
        # fp32 on CUDA cores: four accumulators take the K chunks in turn. One sequential fp32 sum
        # over N = 4096 terms is about 5x torch-fp32's error (1.05e-5 against 2.1e-6 on the H200);
        # a simulation of the kernel's FMA order gives 1.2e-5 for one, 7.5e-6 for two and 4.0e-6
        # for four interleaved sums
        acc1 = tl.zeros([BC, BM], dtype=tl.float32)
        acc2 = tl.zeros([BC, BM], dtype=tl.float32)
        acc3 = tl.zeros([BC, BM], dtype=tl.float32)
        for k0 in range(0, N, 4 * BK):
            acc_t = _mix_chunk(acc_t, k0, X, WL, WG, rm, m_ok, ks, ks_ok, kc, kc_ok, kb, kb_ok, N, L,
                               B, BP, CW, BK, BC, SPT, LOCAL_DOT, DOT_DTYPE, PRECISION)
            acc1 = _mix_chunk(acc1, k0 + BK, X, WL, WG, rm, m_ok, ks, ks_ok, kc, kc_ok, kb, kb_ok, N, L,
                              B, BP, CW, BK, BC, SPT, LOCAL_DOT, DOT_DTYPE, PRECISION)
            acc2 = _mix_chunk(acc2, k0 + 2 * BK, X, WL, WG, rm, m_ok, ks, ks_ok, kc, kc_ok, kb, kb_ok, N, L,
                              B, BP, CW, BK, BC, SPT, LOCAL_DOT, DOT_DTYPE, PRECISION)
            acc3 = _mix_chunk(acc3, k0 + 3 * BK, X, WL, WG, rm, m_ok, ks, ks_ok, kc, kc_ok, kb, kb_ok, N, L,
                              B, BP, CW, BK, BC, SPT, LOCAL_DOT, DOT_DTYPE, PRECISION)
        acc_t = (acc_t + acc1) + (acc2 + acc3)
    else:
        for k0 in range(0, N, BK):
            acc_t = _mix_chunk(acc_t, k0, X, WL, WG, rm, m_ok, ks, ks_ok, kc, kc_ok, kb, kb_ok, N, L,
                               B, BP, CW, BK, BC, SPT, LOCAL_DOT, DOT_DTYPE, PRECISION)
    acc = tl.trans(acc_t)

    offs = samp[None, :] * L + rm[:, None] * B + jc[None, :]
    mask = m_ok[:, None] & col_ok[None, :]
    if FUSE_NORM:
        # here CW == BP: a column tile holds every c of its samples
        z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        v = z + acc
        flat = rm[:, None] * B + jc[None, :]  # position inside the sample
        tok = (flat - m0 * B) // D  # token inside the tile: 0 .. TPT-1 where valid
        rstd = tl.zeros([BM, BC], dtype=tl.float32)
        t_first = (m0 * B) // D
        for k in tl.static_range(TPT):
            in_k = mask & (tok == k)
            col_sq = tl.sum(tl.where(in_k, v * v, 0.0), axis=0)
            per_sample = tl.sum(tl.reshape(col_sq, [SPT, CW]), axis=1)
            r = 1.0 / tl.sqrt(per_sample / D + eps)
            tl.store(RSTD + ks * T + t_first + k, r, mask=ks_ok & (t_first + k < T))
            r_cols = tl.reshape(tl.broadcast_to(r[:, None], [SPT, CW]), [BC])
            rstd = tl.where(in_k, r_cols[None, :], rstd)
        w = tl.load(NW + flat % D, mask=mask, other=0.0).to(tl.float32)
        tl.store(S_OUT + offs, v.to(S_OUT.dtype.element_ty), mask=mask)
        tl.store(Y + offs, (v * rstd * w).to(Y.dtype.element_ty), mask=mask)
    else:
        _store_plus(Y, X, offs, mask, acc, HAS_RESIDUAL)


@triton.jit
def _wg_t_dy(WG, DY, rn, n_ok, samp, c, col_ok, N, L, swk, swo, B: tl.constexpr, BN: tl.constexpr,
             BK: tl.constexpr, BC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """``sum_m W[m, rn] dY[samp, m*B + c]`` for a tile of output blocks ``rn`` and columns
    ``(samp, c)``, fp32, where ``W[m, o]`` is at ``WG + m*swk + o*swo``: ``(swk, swo) = (N, 1)`` reads
    ``W_G`` itself (``W_G^T dY``, the backward's ``G``), ``(1, N)`` its transpose (``W_G H``, the
    forward)."""
    acc = tl.zeros([BN, BC], dtype=tl.float32)
    for m0 in range(0, N, BK):
        rm = m0 + tl.arange(0, BK)
        m_ok = rm < N
        wgt = tl.load(WG + rm[None, :] * swk + rn[:, None] * swo, mask=n_ok[:, None] & m_ok[None, :],
                      other=0.0)
        dy = tl.load(DY + samp[None, :] * L + rm[:, None] * B + c[None, :],
                     mask=m_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(wgt.to(DOT_DTYPE), dy.to(DOT_DTYPE), acc, input_precision=PRECISION)
    return acc


@triton.jit
def unimixing_bwd_dx_kernel(
    DY, X, WL, WG, DX, DWL_PART,
    BS, N, L, samples_per_split,
    BS_BUCKET,
    B: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BC: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``G = W_G^T dY``; ``dX[s, n*B + b] = sum_c G[s, n, c] W_B[n, b, c]`` (+ ``dY`` itself when
    ``HAS_RESIDUAL``); ``DWL_PART[p, n, b, c] = sum_{s in split p} X[s, n*B + b] G[s, n, c]``."""
    SPT: tl.constexpr = BC // BP
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    n_ok = rn < N
    cols = tl.arange(0, BC)
    js = cols // BP
    jc = cols % BP
    kb = tl.arange(0, BP)
    kb_ok = kb < B
    s_begin = pid_p.to(tl.int64) * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    part = DWL_PART + pid_p.to(tl.int64) * (N * B * B) + rn[:, None] * (B * B) + kb[None, :]
    part_mask = n_ok[:, None] & kb_ok[None, :]
    for st in range(s_begin, s_end, SPT):
        samp = st + js
        col_ok = (samp < s_end) & (jc < B)
        acc = _wg_t_dy(WG, DY, rn, n_ok, samp, jc, col_ok, N, L, N, 1, B, BN, BK, BC, DOT_DTYPE, PRECISION)
        g3 = tl.reshape(acc, [BN, SPT, BP])
        ss = st + tl.arange(0, SPT)
        ss_ok = ss < s_end
        out3 = tl.zeros([BN, SPT, BP], dtype=tl.float32)
        for b in range(B):
            wb = tl.load(WL + rn[:, None] * (B * B) + b * B + kb[None, :], mask=part_mask, other=0.0)
            r = tl.sum(g3 * wb.to(tl.float32)[:, None, :], axis=2)
            out3 = tl.where((kb == b)[None, None, :], r[:, :, None], out3)
            xb = tl.load(X + ss[None, :] * L + rn[:, None] * B + b,
                         mask=n_ok[:, None] & ss_ok[None, :], other=0.0).to(tl.float32)
            contrib = tl.sum(xb[:, :, None] * g3, axis=1)
            # this program owns its partial slice: plain read-modify-write, no atomics
            prev = tl.load(part + b * B, mask=part_mask & (st > s_begin), other=0.0)
            tl.store(part + b * B, prev + contrib, mask=part_mask)
        # the next sample tile reads the partial back, possibly from other threads
        tl.debug_barrier()
        out = tl.reshape(out3, [BN, BC])
        offs = samp[None, :] * L + rn[:, None] * B + jc[None, :]
        _store_plus(DX, DY, offs, n_ok[:, None] & col_ok[None, :], out, HAS_RESIDUAL)


@triton.jit
def unimixing_bwd_dwg_kernel(
    DY, X, WL, DWG_PART,
    BS, N, L, samples_per_split,
    BS_BUCKET,
    B: tl.constexpr,
    BP: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BC: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``DWG_PART[p, m, n] = sum_{s in split p} sum_c DY[s, m*B + c] H[s, n, c]``, with
    ``H[s, n, c] = sum_b X[s, n*B + b] W_B[n, b, c]`` rebuilt in registers.

    Computed transposed, ``acc[n, m] = sum_(s,c) H[n, (s,c)] DY^T[(s,c), m]``: the ``H`` chunk is
    built as ``[BN, samples, c]`` (the forward's layout, no layout change) and is the register
    operand of the dot."""
    SPT: tl.constexpr = BC // BP
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_p = tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    m_ok = rm < N
    rn = pid_n * BN + tl.arange(0, BN)
    n_ok = rn < N
    cols = tl.arange(0, BC)
    js = cols // BP
    jc = cols % BP
    kc = tl.arange(0, BP)
    kc_ok = kc < B
    ks = tl.arange(0, SPT)
    s_begin = pid_p.to(tl.int64) * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    for st in range(s_begin, s_end, SPT):
        samp = st + js
        col_ok = (samp < s_end) & (jc < B)
        dyt = tl.load(DY + samp[:, None] * L + rm[None, :] * B + jc[:, None],
                      mask=col_ok[:, None] & m_ok[None, :], other=0.0)
        ss = st + ks
        ss_ok = ss < s_end
        # one load of the x chunk as [n, samples, b]; column b is picked out in registers, and the
        # loop is unrolled so that the K loop stays innermost (software-pipelined)
        x3 = tl.load(X + ss[None, :, None] * L + rn[:, None, None] * B + kc[None, None, :],
                     mask=n_ok[:, None, None] & ss_ok[None, :, None] & kc_ok[None, None, :],
                     other=0.0).to(tl.float32)
        h = tl.zeros([BN, SPT, BP], dtype=tl.float32)
        for b in tl.static_range(B):
            xb = tl.sum(tl.where(kc[None, None, :] == b, x3, 0.0), axis=2)
            wb = tl.load(WL + rn[:, None] * (B * B) + b * B + kc[None, :],
                         mask=n_ok[:, None] & kc_ok[None, :], other=0.0).to(tl.float32)
            h += xb[:, :, None] * wb[:, None, :]
        h2 = tl.reshape(h.to(DOT_DTYPE), [BN, BC])
        acc = tl.dot(h2, dyt.to(DOT_DTYPE), acc, input_precision=PRECISION)
    part = DWG_PART + pid_p.to(tl.int64) * N * N + rm[None, :] * N + rn[:, None]
    tl.store(part, acc.to(DWG_PART.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


@triton.jit
def _flat_columns(k0, end, B: tl.constexpr, BK: tl.constexpr):
    """The ``BK`` flat columns ``k = s*B + c`` from ``k0`` of the large-``B`` GEMMs (``H``, ``dY`` and
    ``G`` viewed as ``[N, (s, c)]``): ``(s, c, s < end)``."""
    kk = k0 + tl.arange(0, BK)
    samp = kk // B
    return samp, kk % B, samp < end


@triton.jit
def unimixing_global_kernel(
    WG, SRC, OUT, R,
    BS, N, L, swk, swo,
    BS_BUCKET,
    B: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BC: tl.constexpr,
    GROUP: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``OUT[s, o*B + c] = sum_m W[m, o] SRC[s, m*B + c]``: a plain GEMM over the flat columns
    ``k = s*B + c`` (no padding of ``B``), with ``W`` read through ``(swk, swo)`` as in
    :func:`_wg_t_dy`. Memory path at ``B >= 16`` (natural layout): the backward's ``G = W_G^T dY``
    (step 1) and the forward's ``Y = W_G H`` (step 2), which with ``HAS_RESIDUAL`` adds ``R``
    (laid out as ``OUT``) to the fp32 sum."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BN)
    num_k = tl.cdiv(BS * B, BC)
    pid_n, pid_k = grouped_tile(pid, num_n, num_k, GROUP)
    rn = pid_n * BN + tl.arange(0, BN)
    n_ok = rn < N
    samp, c, k_ok = _flat_columns(pid_k.to(tl.int64) * BC, BS, B, BC)
    acc = _wg_t_dy(WG, SRC, rn, n_ok, samp, c, k_ok, N, L, swk, swo, B, BN, BK, BC, DOT_DTYPE, PRECISION)
    off = samp[None, :] * L + rn[:, None] * B + c[None, :]
    _store_plus(OUT, R, off, n_ok[:, None] & k_ok[None, :], acc, HAS_RESIDUAL)


@triton.jit
def unimixing_local_kernel(
    G, X, WL, DY, DX, H, DWL_PART,
    BS, N, L, samples_per_split,
    B: tl.constexpr,
    BP: tl.constexpr,
    SB: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    H_ONLY: tl.constexpr,
    STORE_H: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Per block ``n`` and a range of samples (memory path at large ``B``), with tensor-core dots::

        H[s, n]  = X[s, n] @ W_B[n]                      (forward step 1, ``H_ONLY``: nothing else)
        DX[s, n] = G[s, n] @ W_B[n]^T (+ DY[s, n])       (backward step 2, and:)
        DWL_PART[p, n] = sum_{s in split p} X[s, n]^T G[s, n]

    ``STORE_H``: the backward also recomputes and writes ``H`` (where the forward's was not saved);
    ``H_ONLY`` needs it. Both modes form ``H`` with the same dot and tile, so the forward's ``H`` and
    the backward's are bitwise equal."""
    n = tl.program_id(0)
    pid_p = tl.program_id(1)
    kb = tl.arange(0, BP)
    kb_ok = kb < B
    wmask = kb_ok[:, None] & kb_ok[None, :]
    w = tl.load(WL + n * (B * B) + kb[:, None] * B + kb[None, :], mask=wmask, other=0.0).to(DOT_DTYPE)
    wt = tl.trans(w)
    dwb = tl.zeros([BP, BP], dtype=tl.float32)
    s_begin = pid_p.to(tl.int64) * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    for st in range(s_begin, s_end, SB):
        rs = st + tl.arange(0, SB)
        offs = rs[:, None] * L + n * B + kb[None, :]
        mask = (rs < s_end)[:, None] & kb_ok[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(DOT_DTYPE)
        if STORE_H or H_ONLY:
            h = tl.dot(x, w, input_precision=PRECISION)
            tl.store(H + offs, h.to(H.dtype.element_ty), mask=mask)
        if not H_ONLY:
            g = tl.load(G + offs, mask=mask, other=0.0).to(DOT_DTYPE)
            dx = tl.dot(g, wt, input_precision=PRECISION)
            if HAS_RESIDUAL:
                dx += tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            dwb = tl.dot(tl.trans(x), g, dwb, input_precision=PRECISION)
    if not H_ONLY:
        tl.store(DWL_PART + pid_p.to(tl.int64) * (N * B * B) + n * (B * B) + kb[:, None] * B + kb[None, :],
                 dwb, mask=wmask)


@triton.jit
def _local_fma_loads(X, DY, G, st, s_end, rs, L, offs, offs_g, inner, HAS_RESIDUAL: tl.constexpr,
                     H_ONLY: tl.constexpr):
    """One sample step's loads for :func:`unimixing_local_fma_kernel`, in the inputs' dtype: ``X``
    and, in the backward, ``dY`` (with the residual) and the step's whole ``G[s, :, n]`` (a lane's
    ``B`` scalars, as ``[s, n, c]``: all of them before any ``H`` store, which may overwrite ``G``; a
    store over a ``G`` element whose load is in flight waits for it: a load right before each store
    made the kernel 3x slower on the H200, one row ahead 1.8x). Arguments a mode does not read come
    back as ``X``'s values. Nothing is read past ``s_end``."""
    base = tl.cast(st, tl.int64) * L
    mask = ((st + rs) < s_end)[:, None, None] & inner
    x = tl.load(X + base + offs, mask=mask, other=0.0)
    dy = x
    g = x
    if not H_ONLY:
        if HAS_RESIDUAL:
            dy = tl.load(DY + base + offs, mask=mask, other=0.0)
        g = tl.load(G + base + offs_g, mask=mask, other=0.0)
    return x, dy, g


@triton.jit
def unimixing_local_fma_kernel(
    G, X, WL, DY, DX, H, DWL_PART,
    BS, N, L, samples_per_split,
    B: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    SB: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    H_ONLY: tl.constexpr,
):
    """``unimixing_local_kernel`` for small ``B`` (memory path at ``B < 16``), ``B`` fp32 FMAs per
    element, with ``G`` and ``H`` c-major (``[bs, B, N]``)::

        H[s, c, n] = sum_k X[s, n, k] W_B[n, k, c]               (``H_ONLY``: nothing else)
        DX[s, n, k] = sum_c G[s, c, n] W_B[n, k, c] (+ DY)
        DWL_PART[p, n, k, c] = sum_{s in split p} X[s, n, k] G[s, c, n]

    A program owns ``BN`` consecutive blocks and a split of the samples, ``SB`` samples per loop
    step. Every tile has one layout: a lane owns one block ``n``, its ``B`` values of ``X``, ``dY``
    and ``dX`` (one vector load or store), ``B`` scalars of ``G`` and ``H`` (one per c-major row; a
    warp's 32 lanes make one coalesced run) and all of ``W_B[n]``, so the products and the ``dW_B``
    sums over samples stay in the lane's registers: no shared memory and no barrier in the loop.
    Tiles ``[c, n, k]`` keep ``c`` in registers; the c-major offsets are marked non-contiguous so
    that their accesses keep that layout rather than a vectorised one."""
    pid_n = tl.program_id(0)
    pid_p = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    n_ok = rn < N
    kb = tl.arange(0, BP)
    kb_ok = kb < B
    cw = kb[:, None, None]
    kw = kb[None, None, :]
    # W_B[n, k, c] at [c, n, k]
    w_off = rn[None, :, None] * (B * B) + kw * B + cw
    w_mask = (kb_ok[:, None, None] & n_ok[None, :, None]) & kb_ok[None, None, :]
    wt = tl.load(WL + w_off, mask=w_mask, other=0.0).to(tl.float32)
    dwb = tl.zeros([BP, BN, BP], dtype=tl.float32)
    s_begin = pid_p * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    rs = tl.arange(0, SB)
    offs = rs[:, None, None] * L + rn[None, :, None] * B + kw
    offs_c = tl.max_contiguous(rs[:, None] * L + rn[None, :], [1, 1])
    offs_g = tl.max_contiguous(rs[:, None, None] * L + kw * N + rn[None, :, None], [1, 1, 1])  # G[s, c, n]
    inner = n_ok[None, :, None] & kb_ok[None, None, :]
    # software pipelined: a step's loads are issued one step ahead, before the previous step's
    # arithmetic and stores, so that two steps' reads are in flight per lane. The next step's
    # elements are other samples', so the stores of H over G (and dX over dY) never meet them
    x_n, dy_n, g_n = _local_fma_loads(X, DY, G, s_begin, s_end, rs, L, offs, offs_g, inner,
                                      HAS_RESIDUAL, H_ONLY)
    for st in range(s_begin, s_end, SB):
        x = x_n.to(tl.float32)
        dy_raw = dy_n
        g_raw = g_n
        x_n, dy_n, g_n = _local_fma_loads(X, DY, G, st + SB, s_end, rs, L, offs, offs_g, inner,
                                          HAS_RESIDUAL, H_ONLY)
        base = tl.cast(st, tl.int64) * L  # int64 here only (a carried base costs 40+ registers)
        row_ok = (st + rs) < s_end
        mask = row_ok[:, None, None] & inner
        mask_c = row_ok[:, None] & n_ok[None, :]
        if not H_ONLY:
            if HAS_RESIDUAL:
                dx = dy_raw.to(tl.float32)
            else:
                dx = tl.zeros([SB, BN, BP], dtype=tl.float32)
            g_all = g_raw.to(tl.float32)
        for c in tl.static_range(B):
            w_c = tl.sum(tl.where(cw == c, wt, 0.0), axis=0)  # [n, k]: W_B[n, k, c]
            h_c = tl.sum(x * w_c[None, :, :], axis=2)
            tl.store(H + base + c * N + offs_c, h_c.to(H.dtype.element_ty), mask=mask_c)
            if not H_ONLY:
                g_c = tl.sum(tl.where(kw == c, g_all, 0.0), axis=2)  # the lane's own registers
                dx += g_c[:, :, None] * w_c[None, :, :]
                dwb += tl.where(cw == c, tl.sum(x * g_c[:, :, None], axis=0)[None, :, :], 0.0)
        if not H_ONLY:
            tl.store(DX + base + offs, dx.to(DX.dtype.element_ty), mask=mask)
    if not H_ONLY:
        tl.store(DWL_PART + pid_p.to(tl.int64) * (N * B * B) + w_off, dwb, mask=w_mask)


@triton.jit
def unimixing_c_major_kernel(SRC, DST, BS, N, L,
                             B: tl.constexpr, BP: tl.constexpr, SB: tl.constexpr, BN: tl.constexpr):
    """``DST[s, c, n] = SRC[s, n*B + c]``: ``[bs, L]`` to c-major ``[bs, B, N]`` (the memory path's
    ``dY^T``). A program moves ``SB`` samples times ``BN`` blocks: whole contiguous runs of ``BN*B``
    values in, ``B`` runs of ``BN`` out, the transpose in between on chip."""
    n_tiles = tl.cdiv(N, BN)
    pid = tl.program_id(0)
    rs = (pid // n_tiles).to(tl.int64) * SB + tl.arange(0, SB)
    rn = (pid % n_tiles) * BN + tl.arange(0, BN)
    rc = tl.arange(0, BP)
    ok = (rs < BS)[:, None, None] & (rn < N)[None, :, None] & (rc < B)[None, None, :]
    x = tl.load(SRC + rs[:, None, None] * L + rn[None, :, None] * B + rc[None, None, :], mask=ok)
    out = DST + rs[:, None, None] * L + rc[None, :, None] * N + rn[None, None, :]
    tl.store(out, tl.permute(x, (0, 2, 1)), mask=tl.permute(ok, (0, 2, 1)))


@triton.jit
def unimixing_transpose_cast_kernel(SRC, DST, N, s_row, s_col, BT: tl.constexpr):
    """``DST = SRC^T`` in ``DST``'s dtype, ``[N, N]``, ``SRC`` read through its strides: the
    forward GEMM's ``W_G^T`` operand in the activation dtype, the cast fused into the transpose.
    A program moves one ``BT x BT`` tile: rows of ``SRC`` in, rows of ``DST`` out, the transpose on
    chip."""
    rr = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    rc = tl.program_id(1).to(tl.int64) * BT + tl.arange(0, BT)
    ok = (rr < N)[:, None] & (rc < N)[None, :]
    w = tl.load(SRC + rr[:, None] * s_row + rc[None, :] * s_col, mask=ok)
    tl.store(DST + rc[:, None] * N + rr[None, :], tl.trans(w.to(DST.dtype.element_ty)),
             mask=tl.trans(ok))


@triton.jit
def _unimixing_gemm_tile(
    tile, pid_p, A, BMAT, C, R, M, NC, K, k_per_split, sam, sak, sbk, sbn, L,
    KIND: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BM: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr,
):
    """Output tile ``tile`` of :func:`unimixing_gemm_kernel` over the K range of split ``pid_p``."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(NC, BN)
    pid_m, pid_n = grouped_tile(tile, num_m, num_n, GROUP)
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    m_ok = rm < M
    n_ok = rn < NC
    if TMA:  # one split: the descriptors' zero fill past M, NC and K is the masks' work
        k_begin = 0
        k_end = K
    else:
        k_begin = pid_p.to(tl.int64) * k_per_split
        k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    # fp32 (``ieee``): four accumulators take the K chunks in turn, so each sums a quarter of the
    # terms (one chain over N = 4096 measured 1.9e-5 against the fp64 reference, torch-fp32 3.0e-6)
    ACCS: tl.constexpr = 4 if PRECISION == "ieee" else 1
    acc1 = acc
    acc2 = acc
    acc3 = acc
    for k0 in range(k_begin, k_end, BK * ACCS):
        for j in tl.static_range(ACCS):
            if TMA:
                a = A.load([pid_m * BM, k0 + j * BK])
                b = BMAT.load([k0 + j * BK, pid_n * BN])
            else:
                rk = k0 + j * BK + tl.arange(0, BK)
                k_ok = rk < k_end
                a = tl.load(A + rm[:, None] * sam + rk[None, :] * sak, mask=m_ok[:, None] & k_ok[None, :],
                            other=0.0).to(DOT_DTYPE)
                b = tl.load(BMAT + rk[:, None] * sbk + rn[None, :] * sbn, mask=k_ok[:, None] & n_ok[None, :],
                            other=0.0).to(DOT_DTYPE)
            if j == 0:
                acc = tl.dot(a, b, acc, input_precision=PRECISION)
            elif j == 1:
                acc1 = tl.dot(a, b, acc1, input_precision=PRECISION)
            elif j == 2:
                acc2 = tl.dot(a, b, acc2, input_precision=PRECISION)
            else:
                acc3 = tl.dot(a, b, acc3, input_precision=PRECISION)
    if ACCS > 1:
        acc = (acc + acc1) + (acc2 + acc3)
    ROWS: tl.constexpr = KIND == 0 and BLOCK & (BLOCK - 1) == 0 and BM % BLOCK == 0
    if ROWS:
        # [BM, BN] -> [BM / BLOCK samples, BN * BLOCK]: each row a contiguous run of a sample's output
        rs = pid_m.to(tl.int64) * (BM // BLOCK) + tl.arange(0, BM // BLOCK)
        rj = pid_n * (BN * BLOCK) + tl.arange(0, BN * BLOCK)
        ok = (rs < M // BLOCK)[:, None] & (rj < NC * BLOCK)[None, :]
        off = rs[:, None] * L + rj[None, :]
        if HAS_RESIDUAL:
            out = tl.reshape(tl.permute(tl.reshape(acc, [BM // BLOCK, BLOCK, BN]), [0, 2, 1]),
                             [BM // BLOCK, BN * BLOCK])
            out = (out + tl.load(R + off, mask=ok, other=0.0).to(tl.float32)).to(C.dtype.element_ty)
        else:
            out = tl.reshape(acc.to(C.dtype.element_ty), [BM // BLOCK, BLOCK, BN])
            out = tl.reshape(tl.permute(out, [0, 2, 1]), [BM // BLOCK, BN * BLOCK])
        tl.store(C + off, out, mask=ok)
    else:
        mask = m_ok[:, None] & n_ok[None, :]
        if KIND == 0:
            off = (rm // BLOCK)[:, None] * L + rn[None, :] * BLOCK + (rm % BLOCK)[:, None]
            if HAS_RESIDUAL:
                acc += tl.load(R + off, mask=mask, other=0.0).to(tl.float32)
            ptr = C + off
        else:
            ptr = C + pid_p.to(tl.int64) * M * NC + rm[:, None] * NC + rn[None, :]
        tl.store(ptr, acc.to(C.dtype.element_ty), mask=mask)


@triton.jit
def unimixing_gemm_kernel(
    A, BMAT, C, R,
    M, NC, K, k_per_split,
    sam, sak, sbk, sbn,
    L, M_BUCKET,
    KIND: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    TMA: tl.constexpr = False,
):
    """``C = A @ B``, ``A [M, K]`` and ``B [K, NC]`` read through their strides, fp32 accumulation
    over the K range of split ``program_id(1)`` (memory path, c-major operands ``[bs, B, N]`` viewed
    as ``[bs*B, N]``, K contiguous or M/N contiguous, so every tile load is a run of whole rows).
    With ``TMA`` (16-bit, one split) ``A`` and ``B`` are row-major 2-d tensor descriptors instead
    and a grid of about one program per SM walks the output tiles (persistent, one flattened loop,
    so that a tile's epilogue overlaps the next tile's first loads).

    ``KIND`` 0, the forward's ``Y^T = H^T W_G^T``: row ``r = s*BLOCK + c``, column ``m`` is stored at
    ``C[s*L + m*BLOCK + c]`` (the ``[bs, T, D]`` output); for a power-of-two ``BLOCK`` the tile is
    rearranged to one row per sample first, so that its store is whole contiguous runs; with
    ``HAS_RESIDUAL`` the ``[bs, T, D]`` tensor ``R`` is added to the fp32 sum (``x + UniMixing(x)``
    in one rounding). Otherwise
    ``C[p]`` is a row-major ``[M, NC]`` (per-split partial): 1, the backward's ``G^T = dY^T W_G``;
    2, ``dW_G = dY H^T``."""
    if TMA:
        total = tl.cdiv(M, BM) * tl.cdiv(NC, BN)
        for tile in tl.range(tl.program_id(0), total, tl.num_programs(0), flatten=True):
            _unimixing_gemm_tile(tile, tl.program_id(1), A, BMAT, C, R, M, NC, K, k_per_split, sam, sak, sbk,
                                 sbn, L, KIND, BLOCK, HAS_RESIDUAL, BM, BN, BK, GROUP, DOT_DTYPE, PRECISION,
                                 TMA)
    else:
        _unimixing_gemm_tile(tl.program_id(0), tl.program_id(1), A, BMAT, C, R, M, NC, K, k_per_split,
                             sam, sak, sbk, sbn, L, KIND, BLOCK, HAS_RESIDUAL, BM, BN, BK, GROUP, DOT_DTYPE,
                             PRECISION, TMA)


@triton.jit
def unimixing_bwd_dwg_gemm_kernel(
    DY, H, DWG_PART,
    BS, N, L, samples_per_split,
    BS_BUCKET,
    B: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``DWG_PART[p, m, n] = sum_{k = s*B + c, s in split p} DY[s, m*B + c] H[s, n*B + c]``
    (large-``B`` backward, step 3: both operands from memory, flat K over ``(s, c)``)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_p = tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    m_ok = rm < N
    rn = pid_n * BN + tl.arange(0, BN)
    n_ok = rn < N
    s_begin = pid_p.to(tl.int64) * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(s_begin * B, s_end * B, BK):
        samp, c, k_ok = _flat_columns(k0, s_end, B, BK)
        dy = tl.load(DY + samp[None, :] * L + rm[:, None] * B + c[None, :],
                     mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        h = tl.load(H + samp[:, None] * L + rn[None, :] * B + c[:, None],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(dy.to(DOT_DTYPE), h.to(DOT_DTYPE), acc, input_precision=PRECISION)
    part = DWG_PART + pid_p.to(tl.int64) * N * N + rm[:, None] * N + rn[None, :]
    tl.store(part, acc.to(DWG_PART.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def unimixing_bwd_global_kernel(
    WG, DY, H, G, DWG_PART,
    BS, N, L, samples_per_split, swm, swt,
    B: tl.constexpr,
    NP: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The large-``B`` backward's two global GEMMs in one pass over ``dY`` (``N <= NP <= 256``): for
    its ``BM`` output blocks ``t`` and its range of samples, per step of ``BK`` flat columns ``k = s*B
    + c`` a program loads ``dY[:, k]`` (all ``N`` blocks) once and uses it twice::

        G[s, t*B + c]       = sum_m W_G[m, t] dY[s, m*B + c]       (stored; the whole K in one dot)
        DWG_PART[p, m, t]  += sum_k dY[s, m*B + c] H[s, t*B + c]    (fp32, stored at the end)

    ``W_G[m, t]`` is at ``WG + m*swm + t*swt``; its ``[BM, NP]`` slice is loaded once. ``dY`` and ``H``
    are read once each (``dY`` by every one of the ``N / BM`` row tiles, from L2), ``G`` written once."""
    pid_t = tl.program_id(0)
    pid_p = tl.program_id(1)
    rt = pid_t * BM + tl.arange(0, BM)
    t_ok = rt < N
    rn = tl.arange(0, NP)
    n_ok = rn < N
    wgt = tl.load(WG + rn[None, :] * swm + rt[:, None] * swt, mask=t_ok[:, None] & n_ok[None, :], other=0.0)
    wgt = wgt.to(DOT_DTYPE)
    s_begin = pid_p.to(tl.int64) * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    acc = tl.zeros([NP, BM], dtype=tl.float32)
    for k0 in range(s_begin * B, s_end * B, BK):
        samp, c, k_ok = _flat_columns(k0, s_end, B, BK)
        dy = tl.load(DY + samp[None, :] * L + rn[:, None] * B + c[None, :],
                     mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(DOT_DTYPE)
        g = tl.dot(wgt, dy, input_precision=PRECISION)
        tl.store(G + samp[None, :] * L + rt[:, None] * B + c[None, :], g.to(G.dtype.element_ty),
                 mask=t_ok[:, None] & k_ok[None, :])
        h = tl.load(H + samp[:, None] * L + rt[None, :] * B + c[:, None],
                    mask=k_ok[:, None] & t_ok[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot(dy, h, acc, input_precision=PRECISION)
    part = DWG_PART + pid_p.to(tl.int64) * N * N + rn[:, None] * N + rt[None, :]
    tl.store(part, acc.to(DWG_PART.dtype.element_ty), mask=n_ok[:, None] & t_ok[None, :])


# --- configuration -------------------------------------------------------------------------------


def _dot_setup(x: torch.Tensor):
    if x.dtype not in _DOT_DTYPES:
        raise TypeError(f"x: the Triton UniMixing kernels take fp32, fp16 or bf16, got {x.dtype}")
    return _DOT_DTYPES[x.dtype], ("ieee" if x.dtype == torch.float32 else "tf32")


def _global_for_dot(w_global: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # half-precision activations run the global product in their dtype: cast W_G once (it is
    # re-read by every column tile, so half the bytes matter) instead of in every program
    w = w_global.contiguous()
    if x.dtype != torch.float32 and w.dtype != x.dtype:
        w = w.to(x.dtype)
    return w


def _transposed_for_dot(w_global: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``W_G^T``, contiguous, in ``dtype``: :func:`unimixing_transpose_cast_kernel` (one pass, as
    the cast alone would take). The forward GEMM reads its ``B`` operand ``W_G^T`` row by row from
    it: through ``W_G``'s strides (K contiguous) the same GEMM took 454 against 388 us at
    paper-100m on the H200."""
    n = w_global.shape[0]
    wt = torch.empty((n, n), device=w_global.device, dtype=dtype)
    bt = 16 if interpreting() else 64
    unimixing_transpose_cast_kernel[(triton.cdiv(n, bt), triton.cdiv(n, bt))](
        w_global, wt, n, w_global.stride(0), w_global.stride(1), BT=bt,
        **({} if interpreting() else dict(num_warps=4)))
    return wt


def cublas_gemms(x: torch.Tensor) -> bool:
    """Whether the memory path's plain GEMMs run through cuBLAS rather than the project's kernels:
    at ``B < 16`` the backward's two (``torch.mm``, in place of :func:`unimixing_gemm_kernel`), at
    ``B >= 16`` the global products without a residual (``torch.bmm``, in place of
    :func:`unimixing_global_kernel`). The ``UNIMIXER_UNIMIXING_GEMM`` switch. cuBLAS needs 16-bit
    CUDA activations: fp32 keeps the kernel's exact ``ieee`` dots, whatever torch's TF32 flags say."""
    can = x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and not interpreting()
    return cublas_switch(UNIMIXING_GEMM_SWITCH, can, can, f"fp16 or bf16 activations on CUDA, outside the "
                         f"Triton interpreter; got {x.dtype} on {x.device}")


def saves_global_t(x: torch.Tensor, w_local: torch.Tensor) -> bool:
    """Whether the forward hands its ``W_G^T`` operand (activation dtype) to the op layer to save
    for the backward in place of ``w_global``: 16-bit activations, a non-empty batch, ``B < 16``
    and both directions on the memory path. The backward then casts nothing, and an fp32
    ``w_global`` (a Sinkhorn output) is not kept alive by the op: half its bytes saved, as with
    autocast's cast before the op."""
    n, b, _ = w_local.shape
    half = x.dtype in (torch.float16, torch.bfloat16)
    return x.shape[0] > 0 and half and c_major(b) and gemm_forward(b, n, half) and gemm_backward(b, n, half)


def saves_local(x: torch.Tensor, w_local: torch.Tensor) -> bool:
    """Whether the forward hands its ``H = X W_B`` (``[bs, T, D]``, the activation dtype) to the op
    layer to save for the backward (``UNIMIXER_UNIMIXING_SAVE_H``, 'auto'): a non-empty batch, ``B >=
    16`` (``H`` in the natural layout; at ``B < 16`` the backward writes its c-major ``H`` over ``G``)
    and both directions on the memory path. The forward writes ``H`` for its GEMM anyway; saved, the
    backward's per-block kernel neither forms nor writes it again, one ``[bs, T, D]`` write fewer
    for one buffer more held from the forward to the backward."""
    mode = switch(UNIMIXING_SAVE_H_SWITCH)
    if mode not in ("auto", "recompute"):
        raise ValueError(f"{UNIMIXING_SAVE_H_SWITCH}: expected 'auto' or 'recompute', got {mode!r}")
    n, b, _ = w_local.shape
    half = x.dtype in (torch.float16, torch.bfloat16)
    return (mode == "auto" and x.shape[0] > 0 and not c_major(b) and gemm_forward(b, n, half)
            and gemm_backward(b, n, half))


BWD_GLOBAL_MAX_N = 256
# (BM, BK, warps, stages) of unimixing_bwd_global_kernel: 16-bit from run152's sweep at rankmixer-100m
# (BK 32 with 4 stages 82.2, 2 stages 100.2 us with the sums); fp32 (only with the switch at 'fused';
# not timed), whose IEEE dots run on FMA units with their operands in registers, the largest tile
# ptxas for sm_90 builds without spills at N = 256 (64 x 32 at 4 warps spilled 36 KB a thread)
BWD_GLOBAL_TILE = {True: (128, 64, 8, 3), False: (16, 16, 4, 2)}


def fuses_bwd_global(x: torch.Tensor, n: int, h_saved: bool) -> bool:
    """Whether the memory-path backward at ``B >= 16`` forms ``G`` and the ``dW_G`` partials in one
    kernel (:func:`unimixing_bwd_global_kernel`, ``UNIMIXER_UNIMIXING_BWD_GLOBAL``): it needs the
    forward's ``H`` (the ``dW_G`` product runs before the per-block kernel) and ``N <= 256`` (one
    program holds ``W_G``'s columns for its blocks and a ``[N, BM]`` fp32 accumulator). 'auto' takes it
    for 16-bit activations, the dtypes it was timed with."""
    mode = switch(UNIMIXING_BWD_GLOBAL_SWITCH)
    if mode not in ("auto", "fused", "split"):
        raise ValueError(f"{UNIMIXING_BWD_GLOBAL_SWITCH}: expected 'auto', 'fused' or 'split', got {mode!r}")
    can = h_saved and n <= BWD_GLOBAL_MAX_N
    if mode == "fused" and not can:
        raise ValueError(
            f"{UNIMIXING_BWD_GLOBAL_SWITCH}=fused needs N <= {BWD_GLOBAL_MAX_N} blocks and the forward's H "
            f"saved ({UNIMIXING_SAVE_H_SWITCH}=auto); got N = {n}, H "
            f"{'saved' if h_saved else 'not saved'}: set it to 'auto' or 'split'")
    return can and (mode == "fused" or (mode == "auto" and x.dtype != torch.float32))


def fused_norm_rows(block: int, dim: int, device: torch.device) -> tuple[int, int, int] | None:
    """``(BM, BM_EFF, TPT)`` for the fused RMSNorm epilogue, or ``None`` when whole tokens do not
    fit one tile (then the op composes mixing and RMSNorm instead)."""
    group = math.lcm(block, dim) // block  # blocks per run of whole tokens
    floor = 16 if (interpreting() or device.type != "cuda") else 64
    bm = max(triton.next_power_of_2(group), floor)
    if bm > 256:
        return None
    bm_eff = (bm // group) * group
    return bm, bm_eff, bm_eff * block // dim


def _fused_row_options(fused: tuple[int, int, int], block: int, dim: int) -> list[tuple[int, int, int]]:
    """``(BM, BM_EFF, TPT)`` row tiles for the fused epilogue: the smallest, and twice and four times
    it up to 256 rows. The ``H`` chunk built in registers is shared by the ``BM`` rows of a tile, so
    taller tiles amortise that build, at the cost of a longer per-token epilogue."""
    group = math.lcm(block, dim) // block
    out = [fused]
    bm = fused[0] * 2
    while bm <= 256:
        eff = (bm // group) * group
        out.append((bm, eff, eff * block // dim))
        bm *= 2
    return out


def _cfg(num_warps: int, num_stages: int, **kw) -> triton.Config:
    return triton.Config(kw, num_warps=num_warps, num_stages=num_stages)


@functools.cache
def _tuned(kernel_name: str, configs: tuple, key: tuple):
    kernel = globals()[kernel_name]
    return triton.autotune(configs=[_cfg(w, s, **dict(kw)) for kw, w, s in configs], key=list(key))(kernel)


# The residual + RMSNorm of ``unimixing_rmsnorm``: the residual in the mixing kernel's epilogue and
# one RMSNorm pass after it (composed, the default), or both in the mixing kernel's epilogue
# (``UNIMIXER_UNIMIXING_NORM=fused``).
# The fused tile must hold whole tokens, which limits its row tiles: on the H200 at paper-small the
# fused forward took 0.286 ms against 0.172 ms composed (bench/NOTES.md).
def fused_norm_epilogue() -> bool:
    mode = switch(NORM_SWITCH)
    if mode not in ("fused", "composed"):
        raise ValueError(f"{NORM_SWITCH}: expected 'fused' or 'composed', got {mode!r}")
    return mode == "fused"


# B at or above this (padded to a power of two) runs the local products as tensor-core dots:
# the forward builds H with a batched dot, the backward materialises G = W_G^T dY and H.
LOCAL_DOT_MIN_BP = 16
# the slice of output columns c per sample in a local-dot forward tile (a dot's minimum width)
LOCAL_DOT_CW = 16
# the local dot kernel's backward (B >= 16): (programs per SM for its sample splits, samples a loop
# step for 16-bit activations), by whether it writes H (formed again) or not (the forward's saved).
# At rankmixer-100m (B = 48, N = 256, bf16, H200, under CUDA graphs), writing H: 4 splits a block (8
# an SM) took 66.8 us against 78.3 with the default's 2 (8 splits 67.4, 16 72.6; 32 or 128 samples a
# step and 8 warps no better; bench/results/2026-11-30-h200-run135); without H: 2 splits a block at 32
# samples a step took 45.2 us against 49.4 at (8, 64), the op's training step 210.0 against 215.7
# (run147, run148; (4, 64) was slower inside the step, 219.6). At N >= 1024 blocks every setting
# leaves one split, and 64 samples a step won: rankmixer-1b's step 511.7 us at (8, 64) or 511.9 at
# (4, 64) against 516.4 at (4, 32) (run150). The forward keeps the default (2 splits, 30.3 us, the
# fastest setting probed) and 64 samples a step.
LOCAL_DOT_BWD = {True: (8, 64), False: (4, 32)}
LOCAL_DOT_BWD_WIDE_N = 1024  # from this many blocks, 64 samples a step whatever LOCAL_DOT_BWD says


def _local_dot_bwd_tile(store_h: bool, n: int) -> tuple[int, int]:
    """``(programs per SM, samples a step)`` of the local dot kernel's backward (16-bit activations):
    :data:`LOCAL_DOT_BWD`, with 64 samples a step from :data:`LOCAL_DOT_BWD_WIDE_N` blocks."""
    per_sm, sb = LOCAL_DOT_BWD[store_h]
    return per_sm, (64 if n >= LOCAL_DOT_BWD_WIDE_N else sb)
# memory path at B < 16, the local FMA kernel: blocks per warp (one per lane); the warps per program
# and the samples per loop step are LOCAL_TILE_SWITCH's ('auto': LOCAL_FMA_TILE, forward and
# backward), and the forward's programs per SM LOCAL_FMA_FWD_PER_SM (the backward's 4, which bounds
# its dW_B partials). At paper-100m (bf16, H200, one launch under CUDA graphs) the backward took 131
# us at 4 x 4 against 208 at 4 x 2 (133-198 for 2 x 2 to 16 x 2), the forward 46 us at 4 x 2 with 8
# programs an SM against 58 with 4 (bench/results/2026-11-30-h200-run96)
LOCAL_FMA_LANES = 32
LOCAL_FMA_TILE = ((4, 2), (4, 4))
LOCAL_FMA_FWD_PER_SM = 8


def uses_local_dot(block: int, fused: bool, half: bool = True) -> bool:
    """Whether the forward builds H with a batched dot. The fused epilogue needs every column of a
    sample in its tile, and fp32 dots run on CUDA cores anyway, so both keep the FMA build."""
    return triton.next_power_of_2(block) >= LOCAL_DOT_MIN_BP and not fused and half


# The memory path (H, and in backward G, written once; plain GEMMs) against the in-register kernels,
# bf16 on the H200, CUDA graphs (bench/NOTES.md): with the c-major layout at B < 16 (run16) the op's
# fwd+bwd 0.541 -> 0.302 ms at N = 1024 (paper-small) and 3.29 -> 1.92 ms at N = 4096 (paper-100m);
# at B = 48 (rankmixer-100m, natural layout, run14) 0.405 -> 0.269. Smaller N are not measured and
# keep the in-register kernels. The cost is memory: G, H and dY^T live through the backward (the
# op's training peak 62 -> 110 MiB at paper-small).
MEMORY_PATH_MIN_N = 1024


def gemm_forward(block: int, n: int, half: bool) -> bool:
    """Whether the forward takes the memory path (``H`` written, then a GEMM):
    ``UNIMIXER_UNIMIXING_FORWARD`` 'gemm', 'register' (the one in-register kernel), or 'auto'
    (:data:`MEMORY_PATH_MIN_N`, ``B >= 16``)."""
    mode = switch(UNIMIXING_FWD_SWITCH)
    if mode not in ("auto", "gemm", "register"):
        raise ValueError(f"{UNIMIXING_FWD_SWITCH}: expected 'auto', 'gemm' or 'register', got {mode!r}")
    auto = uses_local_dot(block, False, half) or (half and n >= MEMORY_PATH_MIN_N)
    return mode == "gemm" or (mode == "auto" and auto)


def gemm_backward(block: int, n: int, half: bool) -> bool:
    """Whether the backward takes the memory path (``G`` and ``H`` written, two GEMMs and a
    per-block kernel): always for ``B >= 16`` (there is no in-register backward there), at
    :data:`MEMORY_PATH_MIN_N` for 16-bit activations, and at every ``B`` with
    ``UNIMIXER_UNIMIXING_BACKWARD=gemm``."""
    mode = switch(UNIMIXING_BWD_SWITCH)
    if mode not in ("auto", "gemm"):
        raise ValueError(f"{UNIMIXING_BWD_SWITCH}: expected 'auto' or 'gemm', got {mode!r}")
    return mode == "gemm" or uses_local_dot(block, False) or (half and n >= MEMORY_PATH_MIN_N)


# Tile lists (BM or BN, BK, BC, warps, stages), checked for register spills in sm_90 compiles.
# fp32 (``ieee``) dots run on CUDA cores: small tiles only, fp32 is there for exactness.
def _fwd_configs(bp: int, fused: list[tuple[int, int, int]] | None, local_dot: bool, half: bool) -> tuple:
    """``fused``: the epilogue's row options (:func:`_fused_row_options`), or ``None``."""
    rows = {bm: (bm, 1) for bm in (64, 128, 256)}
    if fused is not None:
        rows = {bm: (eff, tpt) for bm, eff, tpt in fused}
    first = min(rows)
    if local_dot:
        tiles = [(64, 16, 16 * LOCAL_DOT_CW, 8, 2), (128, 16, 16 * LOCAL_DOT_CW, 8, 2)]
    elif not half:
        tiles = [(first if fused else 64, 16, 64, 8 if fused and first > 64 else 4, 2)]
    elif fused is not None:
        tiles = [(first, 32, 128, 8, 3), (first, 64, 64, 4, 3), (first, 32, 64, 4, 4)]
        tiles += [(bm, 32, 64, 8, 3) for bm in rows if bm > first]
        tiles += [(bm, 32, 128, 8, 3) for bm in rows if first < bm <= 128]
    else:
        tiles = [(128, 32, 128, 8, 3), (128, 64, 128, 8, 3), (256, 32, 128, 8, 3), (256, 32, 64, 8, 3),
                 (64, 32, 128, 4, 4)]
    out = []
    for bm, bk, bc, w, s in tiles:
        bc = max(bc, bp)
        eff, tpt = rows[bm]
        out.append(((("BM", bm), ("BM_EFF", eff), ("BK", bk), ("BC", bc), ("TPT", tpt)), w, s))
    return tuple(dict.fromkeys(out))


def _dx_configs(bp: int, half: bool) -> tuple:
    tiles = [(128, 32, 128, 8, 3), (64, 32, 128, 4, 3), (128, 64, 64, 8, 3)]
    tiles = tiles if half else [(64, 16, 64, 4, 2)]
    return tuple(dict.fromkeys(
        ((("BN", bn), ("BK", bk), ("BC", max(bc, bp))), w, s) for bn, bk, bc, w, s in tiles
    ))


def _dwg_configs(bp: int, half: bool) -> tuple:
    tiles = [(128, 128, 32, 8, 3), (256, 64, 32, 8, 3), (128, 128, 32, 8, 4)]
    tiles = tiles if half else [(64, 64, 16, 4, 2)]
    return tuple(dict.fromkeys(
        ((("BM", bm), ("BN", bn), ("BC", max(bc, bp))), w, s) for bm, bn, bc, w, s in tiles
    ))


def _global_configs(half: bool) -> tuple:
    tiles = [(128, 64, 128, 8, 3), (128, 32, 256, 8, 3), (64, 64, 128, 4, 4)]
    tiles = tiles if half else [(64, 32, 64, 4, 2)]
    return tuple(((("BN", bn), ("BK", bk), ("BC", bc)), w, s) for bn, bk, bc, w, s in tiles)


def _gemm_configs(half: bool) -> tuple:
    tiles = [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 4, 4),
             (64, 128, 64, 4, 4)]
    tiles = tiles if half else [(64, 64, 32, 4, 2)]
    return tuple(((("BM", bm), ("BN", bn), ("BK", bk)), w, s) for bm, bn, bk, w, s in tiles)


def _dwg_gemm_configs(half: bool) -> tuple:
    tiles = [(128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (64, 128, 64, 4, 3)]
    tiles = tiles if half else [(64, 64, 32, 4, 2)]
    return tuple(((("BM", bm), ("BN", bn), ("BK", bk)), w, s) for bm, bn, bk, w, s in tiles)


def _splits(
    bs: int, tiles: int, device: torch.device, per_split_floats: int, per_sm: int = 4
) -> tuple[int, int]:
    """Sample splits for a weight-gradient kernel: at most ``per_sm`` programs per SM (rounding up
    gave paper-small's ``dW_G`` GEMM 5 splits, 320 programs: more than two per SM on an H200), a
    partial buffer of at most 2^24 fp32 values. Returns ``(splits, samples_per_split)``."""
    if device.type == "cuda" and not interpreting():
        want = per_sm * sm_count(device) // max(tiles, 1)
    else:
        want = 2
    cap = max(1, (1 << 24) // max(per_split_floats, 1))
    splits = max(1, min(want, cap, bs))
    per = triton.cdiv(bs, splits)
    return triton.cdiv(bs, per), per


def _dwg_buffer(splits: int, n: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # one split (large N fills the GPU without splitting): the kernel writes dW_G in its dtype
    # directly, with no fp32 round trip through memory
    return new_output((splits, n, n), like=like, dtype=torch.float32 if splits > 1 else dtype)


# --- launchers -----------------------------------------------------------------------------------


def unimixing_fwd(
    x: torch.Tensor,
    w_local: torch.Tensor,
    w_global: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: bool = False,
    before_global: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Forward. Returns ``(y, None, None, wg_t, h)`` with ``y = UniMixing(x)``, or with ``residual``
    ``y = x + UniMixing(x)`` (the sum in fp32, one rounding); with ``norm_weight``, the fused
    epilogue, ``(u, s, rstd [bs, T] fp32, None, None)`` where ``s = x + UniMixing(x)`` (input dtype)
    and ``u = RMSNorm(s)`` from the fp32 sum. The epilogue needs :func:`fused_norm_rows`; where it has
    none, the op layer composes the mixing with its residual and an RMSNorm pass instead. ``wg_t``:
    where :func:`saves_global_t`, the forward GEMM's ``W_G^T`` operand in the activation dtype, for
    the backward to take instead of ``w_global`` (``global_t``); else ``None``. ``h``: where
    :func:`saves_local`, the forward's ``H = X W_B``, for the backward to take (its ``h``); else
    ``None``. A non-contiguous ``x`` is copied once. ``before_global()``, where given, runs just
    before the first launch that reads ``w_global`` (the memory path launches the per-block products
    first): the caller's wait for a ``w_global`` still being made on another stream."""
    bs, t, d = x.shape
    n, b, _ = w_local.shape
    fuse = norm_weight is not None
    if fuse and residual:
        raise ValueError("residual: the norm epilogue already adds x; pass one of norm_weight and residual")
    fused = fused_norm_rows(b, d, x.device) if fuse else None
    if fuse and fused is None:
        raise ValueError(f"norm_weight: the fused norm epilogue needs whole tokens in one tile, and "
                         f"lcm(B, D) / B = {math.lcm(b, d) // b} blocks do not fit; compose the mixing "
                         f"(residual=True) and an RMSNorm pass instead")
    length = t * d
    dot_dtype, precision = _dot_setup(x)
    xc = x.contiguous()
    wl = w_local.contiguous()
    if not fuse and bs > 0 and gemm_forward(b, n, x.dtype != torch.float32):
        y, wg_t, h = _unimixing_fwd_memory(xc, wl, w_global, residual, before_global)
        return (y, None, None, (wg_t if saves_global_t(x, w_local) else None),
                (h if saves_local(x, w_local) else None))
    if before_global is not None:
        before_global()
    wg = _global_for_dot(w_global, x)
    y = new_output((bs, t, d), like=x)
    s_out = new_output((bs, t, d), like=x) if fuse else y
    rstd = new_output((bs, t), like=x, dtype=torch.float32) if fuse else y
    nw = norm_weight.contiguous() if fuse else wl
    if bs == 0:
        return y, (s_out if fuse else None), (rstd if fuse else None), None, None
    bp = triton.next_power_of_2(b)
    half = x.dtype != torch.float32
    local_dot = uses_local_dot(b, fuse, half)
    cw = LOCAL_DOT_CW if local_dot else bp
    args = (xc, wl, wg, y, s_out, nw, rstd, bs, n, length, d, t, float(eps), bucket(bs))
    consts = dict(B=b, BP=bp, CW=cw, GROUP=8, LOCAL_DOT=local_dot, FUSE_NORM=fuse, HAS_RESIDUAL=residual,
                  DOT_DTYPE=dot_dtype, PRECISION=precision)

    def grid(meta):
        return (triton.cdiv(n, meta["BM_EFF"]) * triton.cdiv(bs, meta["BC"] // cw) * triton.cdiv(b, cw),)

    if interpreting():
        bm, bm_eff, tpt = fused if fused is not None else (16, 16, 1)
        meta = dict(BM=bm, BM_EFF=bm_eff, BK=16, BC=max(16, 2 * cw), TPT=tpt)
        unimixing_fwd_kernel[grid(meta)](*args, **consts, **meta)
    else:
        options = _fused_row_options(fused, b, d) if fused is not None else None
        kernel = _tuned("unimixing_fwd_kernel", _fwd_configs(bp, options, local_dot, half),
                        ("N", "BS_BUCKET", "B", "FUSE_NORM"))
        kernel[grid](*args, **consts)
    if fuse:
        return y, s_out, rstd, None, None
    return y, None, None, None, None


def unimixing_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    w_local: torch.Tensor,
    w_global: torch.Tensor,
    residual: bool = False,
    dy_scratch: bool = False,
    global_t: bool = False,
    dwg_dtype: torch.dtype | None = None,
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dw_local, dw_global)`` for ``y = UniMixing(x)`` given ``dy``; with ``residual`` the
    output is ``x + UniMixing(x)`` and ``dy`` is also added to ``dx``. Non-contiguous ``dy`` or
    ``x`` (e.g. a stride-0 ``dy`` from ``expand``) are copied once. ``dy_scratch``: as in
    :func:`_unimixing_bwd_partials` (``dx`` may then be ``dy`` itself). ``global_t``: ``w_global`` is
    the forward's ``W_G^T`` operand (:func:`saves_global_t`); ``dwg_dtype``: ``dW_G``'s dtype
    (default ``w_global``'s); ``h``: the forward's ``H`` (:func:`saves_local`), else recomputed."""
    dx, dwl, dwg, partials = _unimixing_bwd_partials(dy, x, w_local, w_global, residual, dy_scratch,
                                                     global_t, dwg_dtype, h)
    if partials:
        sum_partials(*partials)
    return dx, dwl, dwg


def unimixing_residual_bwd_(
    dy: torch.Tensor,
    x: torch.Tensor,
    w_local: torch.Tensor,
    w_global: torch.Tensor,
    global_t: bool = False,
    dwg_dtype: torch.dtype | None = None,
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dw_local, dw_global)`` for ``y = x + UniMixing(x)``; ``dx`` is written over ``dy``, which
    must be a contiguous buffer of ``x``'s dtype that the caller gives up. The c-major memory path
    (B < 16) writes it there in its per-block kernel; the other paths write a buffer of their own
    and copy it over ``dy``. ``global_t``, ``dwg_dtype``, ``h``: as in :func:`unimixing_bwd`."""
    if not dy.is_contiguous() or dy.dtype != x.dtype or dy.shape != x.shape:
        raise ValueError(f"dy: expected a contiguous {x.dtype} tensor of shape {tuple(x.shape)}, got "
                         f"{dy.dtype} {tuple(dy.shape)} strides {dy.stride()}")
    dx, dwl, dwg = unimixing_bwd(dy, x, w_local, w_global, residual=True, dy_scratch=True, global_t=global_t,
                                 dwg_dtype=dwg_dtype, h=h)
    if dx is not dy:
        dy.copy_(dx)
    return dwl, dwg


def _unimixing_bwd_partials(
    dy: torch.Tensor,
    x: torch.Tensor,
    w_local: torch.Tensor,
    w_global: torch.Tensor,
    residual: bool,
    dy_scratch: bool = False,
    global_t: bool = False,
    dwg_dtype: torch.dtype | None = None,
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """:func:`unimixing_bwd` up to its last pass: ``(dx, dw_local, dw_global, partials)``, where
    the weight gradients not yet written are the outputs of the ``(partial, output)`` pairs that
    :func:`._partials.sum_partials` still has to sum (so a caller can add its own pairs to the
    same launch). ``dy_scratch``: ``dy`` is the caller's own contiguous buffer, dead after this
    call, which the c-major memory path then overwrites with ``dx`` (one ``[bs, T, D]`` buffer
    fewer at the backward's peak). ``global_t``, ``dwg_dtype``: as in :func:`unimixing_bwd`; a
    ``W_G^T`` reaching a path other than the c-major memory path (switches changed since the
    forward) is read as a transposed view there. ``h``: the forward's ``H`` (:func:`saves_local`), taken
    by the memory path at ``B >= 16`` (elsewhere, after such a switch change, ``H`` is formed again)."""
    bs, t, d = x.shape
    n, b, _ = w_local.shape
    dwg_dtype = w_global.dtype if dwg_dtype is None else dwg_dtype
    length = t * d
    dot_dtype, precision = _dot_setup(x)
    xc = x.contiguous()
    dyc = dy.contiguous()
    wl = w_local.contiguous()
    bp = triton.next_power_of_2(b)
    interp = interpreting()
    half = x.dtype != torch.float32
    memory = bs > 0 and gemm_backward(b, n, half)
    if global_t and not (memory and c_major(b)):
        w_global, global_t = w_global.t(), False
    if h is not None and (h.shape != x.shape or h.dtype != x.dtype):
        raise ValueError(f"h: expected the forward's H, {x.dtype} of shape {tuple(x.shape)}, got {h.dtype} "
                         f"{tuple(h.shape)}")
    if memory:
        hc = None if h is None or c_major(b) else h.contiguous()
        dx, dwl, dwg_part, pending = _unimixing_bwd_memory(dyc, xc, wl, w_global, residual,
                                                           dy_scratch and dyc is dy, global_t, dwg_dtype, hc)
        dwg, partials = _dwg_output(dwg_part, x, dwg_dtype)
        return dx, dwl, dwg, [*pending, *partials]
    wg = _global_for_dot(w_global, x)
    dx = new_output((bs, t, d), like=x)
    if bs == 0:
        return dx, torch.zeros_like(w_local), x.new_zeros((n, n), dtype=dwg_dtype), []

    # dX and dW_B
    p1, per1 = _splits(bs, triton.cdiv(n, 64), x.device, n * b * b)
    dwl_part = new_output((p1, n, b, b), like=x, dtype=torch.float32)
    args = (dyc, xc, wl, wg, dx, dwl_part, bs, n, length, per1, bucket(bs))
    consts = dict(B=b, BP=bp, HAS_RESIDUAL=residual, DOT_DTYPE=dot_dtype, PRECISION=precision)
    if interp:
        meta = dict(BN=16, BK=16, BC=max(16, bp))
        unimixing_bwd_dx_kernel[(triton.cdiv(n, meta["BN"]), p1)](*args, **consts, **meta)
    else:
        kernel = _tuned("unimixing_bwd_dx_kernel", _dx_configs(bp, half), ("N", "BS_BUCKET", "B"))
        kernel[lambda meta: (triton.cdiv(n, meta["BN"]), p1)](*args, **consts)

    # dW_G
    p2, per2 = _splits(bs, triton.cdiv(n, 128) ** 2, x.device, n * n, per_sm=2)
    dwg_part = _dwg_buffer(p2, n, x, dwg_dtype)
    args = (dyc, xc, wl, dwg_part, bs, n, length, per2, bucket(bs))
    consts = dict(B=b, BP=bp, DOT_DTYPE=dot_dtype, PRECISION=precision)
    if interp:
        meta = dict(BM=16, BN=16, BC=max(16, bp))
        unimixing_bwd_dwg_kernel[(triton.cdiv(n, 16), triton.cdiv(n, 16), p2)](*args, **consts, **meta)
    else:
        kernel = _tuned("unimixing_bwd_dwg_kernel", _dwg_configs(bp, half), ("N", "BS_BUCKET", "B"))
        kernel[lambda meta: (triton.cdiv(n, meta["BM"]), triton.cdiv(n, meta["BN"]), p2)](*args, **consts)

    dwl = new_output(w_local.shape, like=w_local)
    dwg, partials = _dwg_output(dwg_part, x, dwg_dtype)
    return dx, dwl, dwg, [(dwl_part, dwl), *partials]


def _bwd_global(wg: torch.Tensor, dyc: torch.Tensor, h: torch.Tensor, g: torch.Tensor,
                dwg_dtype: torch.dtype) -> torch.Tensor:
    """``G = W_G^T dY`` into ``g`` and the ``dW_G = dY H^T`` partials (returned, as
    :func:`_dwg_buffer`'s) by :func:`unimixing_bwd_global_kernel`, one program an SM."""
    bs, t, d = dyc.shape
    n = wg.shape[0]
    np2 = max(16, triton.next_power_of_2(n))
    if interpreting():
        bm, bk, opts = 16, 16, {}
    else:
        bm, bk, warps, stages = BWD_GLOBAL_TILE[dyc.dtype != torch.float32]
        opts = dict(num_warps=warps, num_stages=stages)
    bm = min(bm, np2)
    tiles = triton.cdiv(n, bm)
    p, per = _splits(bs, tiles, dyc.device, n * n, per_sm=1)
    part = _dwg_buffer(p, n, dyc, dwg_dtype)
    dot_dtype, precision = _dot_setup(dyc)
    unimixing_bwd_global_kernel[(tiles, p)](
        wg, dyc, h, g, part, bs, n, t * d, per, wg.stride(0), wg.stride(1), B=t * d // n, NP=np2, BM=bm,
        BK=bk, DOT_DTYPE=dot_dtype, PRECISION=precision, **opts)
    return part


def _dwg_output(dwg_part: torch.Tensor, like: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """``(dw_global, partials)``: a single-split buffer in ``dtype`` is the gradient itself, else
    the ``(partial, output)`` pair left to sum (or, for one split in another dtype, to cast)."""
    if dwg_part.shape[0] == 1 and dwg_part.dtype == dtype:
        return dwg_part[0], []
    dwg = new_output(dwg_part.shape[1:], like=like, dtype=dtype)
    return dwg, [(dwg_part, dwg)]


def _global_gemm(wg: torch.Tensor, src: torch.Tensor, out: torch.Tensor, transpose: bool,
                 residual: torch.Tensor | None = None) -> None:
    """``out = W_G^T src`` (backward's ``G``), or ``W_G src (+ residual)`` with ``transpose``
    (forward's ``Y``), all ``[bs, L]`` as ``[N, (s, c)]`` columns: :func:`unimixing_global_kernel`,
    or without a residual, where :func:`cublas_gemms`, cuBLAS's batched GEMM over the samples with
    ``W_G`` broadcast (at rankmixer-100m 39.5 against 45.7 µs each way, bitwise equal outputs,
    bench/results/2026-11-30-h200-run135)."""
    bs, t, d = src.shape
    n = wg.shape[0]
    b = t * d // n
    if residual is None and cublas_gemms(src):
        w = wg if transpose else wg.t()
        torch.bmm(w.expand(bs, n, n), src.view(bs, n, b), out=out.view(bs, n, b))
        return
    dot_dtype, precision = _dot_setup(src)
    swk, swo = (1, n) if transpose else (n, 1)
    args = (wg, src, out, out if residual is None else residual, bs, n, t * d, swk, swo, bucket(bs))
    consts = dict(B=b, HAS_RESIDUAL=residual is not None, GROUP=8, DOT_DTYPE=dot_dtype, PRECISION=precision)
    if interpreting():
        meta = dict(BN=16, BK=16, BC=16)
        unimixing_global_kernel[(triton.cdiv(n, 16) * triton.cdiv(bs * b, 16),)](*args, **consts, **meta)
    else:
        kernel = _tuned("unimixing_global_kernel", _global_configs(src.dtype != torch.float32),
                        ("N", "BS_BUCKET", "B", "swk"))
        kernel[lambda meta: (triton.cdiv(n, meta["BN"]) * triton.cdiv(bs * b, meta["BC"]),)](*args, **consts)


def _local_products(
    xc: torch.Tensor,
    wl: torch.Tensor,
    h: torch.Tensor | None,
    g: torch.Tensor | None = None,
    dyc: torch.Tensor | None = None,
    dx: torch.Tensor | None = None,
    residual: bool = False,
) -> torch.Tensor | None:
    """``H = X W_B`` per block into ``h``; with ``g`` (backward) also ``dX = G W_B^T (+ dY)`` into
    ``dx`` and the fp32 ``dW_B`` partials, which it returns. ``B < 16``: one block per lane
    (:func:`local_fma_tile`), ``B`` FMAs per element, ``G`` and ``H`` c-major (:func:`c_major`); else
    one block per program, tensor-core dots, ``G`` and ``H`` laid out as ``x``, and in the backward
    ``h=None`` skips ``H`` (the forward's was saved, :func:`saves_local`)."""
    bs, t, d = xc.shape
    n, b, _ = wl.shape
    interp = interpreting()
    h_only = g is None
    bp = triton.next_power_of_2(b)
    fma = c_major(b)
    if h is None and (h_only or fma):
        raise ValueError("h: the forward, and the backward at B < 16 (H written over G), need H's buffer")
    bn = 1  # blocks per program: one per lane of the FMA kernel's warps, else one
    if fma:
        warps, sb = local_fma_tile(h_only)
        bn = LOCAL_FMA_LANES * warps
    # the FMA forward writes no partials, so it may have more programs than _splits' default; the dot
    # kernel's backward more sample splits than the default's
    store_h = h is not None
    extra = {}
    if fma and h_only:
        extra = dict(per_sm=LOCAL_FMA_FWD_PER_SM)
    elif not fma and not h_only:
        extra = dict(per_sm=_local_dot_bwd_tile(store_h, n)[0])
    p1, per1 = _splits(bs, triton.cdiv(n, bn), xc.device, n * b * b, **extra)
    dwl_part = xc if h_only else new_output((p1, n, b, b), like=xc, dtype=torch.float32)
    h = xc if h is None else h  # not written (STORE_H off)
    ptrs = (xc, xc, wl, xc, xc, h, dwl_part) if h_only else (g, xc, wl, dyc, dx, h, dwl_part)
    args = (*ptrs, bs, n, t * d, per1)
    if fma:
        unimixing_local_fma_kernel[(triton.cdiv(n, bn), p1)](
            *args, B=b, BP=bp, BN=bn, SB=sb, HAS_RESIDUAL=residual, H_ONLY=h_only,
            **({} if interp else dict(num_warps=warps)),
        )
    else:
        dot_dtype, precision = _dot_setup(xc)
        sb = 64 if h_only else _local_dot_bwd_tile(store_h, n)[1]
        sb = 16 if xc.dtype == torch.float32 or interp else sb
        unimixing_local_kernel[(n, p1)](
            *args, B=b, BP=bp, SB=sb, HAS_RESIDUAL=residual, H_ONLY=h_only, STORE_H=store_h,
            DOT_DTYPE=dot_dtype, PRECISION=precision, **({} if interp else dict(num_warps=4)),
        )
    return None if h_only else dwl_part


def local_fma_tile(h_only: bool) -> tuple[int, int]:
    """``(warps, samples per loop step)`` of :func:`unimixing_local_fma_kernel` in the forward
    (``h_only``) or the backward (the ``UNIMIXER_UNIMIXING_LOCAL_TILE`` switch; 'auto':
    ``LOCAL_FMA_TILE``): a program owns ``LOCAL_FMA_LANES * warps`` blocks."""
    mode = switch(LOCAL_TILE_SWITCH)
    if mode == "auto":
        return LOCAL_FMA_TILE[0 if h_only else 1]
    warps, _, sb = mode.partition("x")
    ok = warps.isdigit() and sb.isdigit()
    warps, sb = (int(warps), int(sb)) if ok else (0, 0)
    if not (ok and warps in (1, 2, 4, 8, 16) and sb in (1, 2, 4, 8, 16)):
        raise ValueError(f"{LOCAL_TILE_SWITCH}: expected 'auto' or 'WARPSxSAMPLES', each a power of two "
                         f"from 1 to 16 (e.g. '4x2'), got {mode!r}")
    return warps, sb


def c_major(block: int) -> bool:
    """Whether the memory path stores ``H`` and ``G`` (and reads ``dY``) c-major, ``[bs, B, N]``:
    for ``B < 16``, where the natural layout would give the GEMMs runs of only ``B`` values along
    their K index. Its GEMMs are then plain (:func:`unimixing_gemm_kernel`) with whole-row loads."""
    return triton.next_power_of_2(block) < LOCAL_DOT_MIN_BP


def _c_major_copy(src: torch.Tensor, n: int, b: int) -> torch.Tensor:
    """``src [bs, T, D]`` (contiguous) as c-major ``[bs, B, N]``: :func:`unimixing_c_major_kernel`."""
    bs = src.shape[0]
    dst = torch.empty((bs, b, n), device=src.device, dtype=src.dtype)
    interp = interpreting()
    sb, bn = (2, 16) if interp else (4, 128)
    unimixing_c_major_kernel[(triton.cdiv(n, bn) * triton.cdiv(bs, sb),)](
        src, dst, bs, n, n * b, B=b, BP=triton.next_power_of_2(b), SB=sb, BN=bn,
        **({} if interp else dict(num_warps=4)))
    return dst


def _gemm(kind: int, a: torch.Tensor, bmat: torch.Tensor, out: torch.Tensor, m: int, nc: int, k: int,
          sa: tuple[int, int], sb: tuple[int, int], block: int = 1, length: int = 0,
          splits: tuple[int, int] | None = None, residual: torch.Tensor | None = None) -> None:
    """Launch :func:`unimixing_gemm_kernel` (``kind`` as there; ``splits = (p, k_per_split)``;
    ``residual``, kind 0 only, is added to the output; the forward's GEMM through tensor
    descriptors as :func:`gemm_tma` says)."""
    dot_dtype, precision = _dot_setup(a)
    p, per = splits if splits is not None else (1, k)
    args = [a, bmat, out, out if residual is None else residual, m, nc, k, per, *sa, *sb, length, bucket(m)]
    consts = dict(KIND=kind, BLOCK=block, HAS_RESIDUAL=residual is not None, GROUP=8, DOT_DTYPE=dot_dtype,
                  PRECISION=precision)
    tma = kind == 0 and gemm_tma(a, bmat, sa, sb, p, residual is not None)
    if tma:
        args[:2] = (TensorDescriptor(a, [m, k], [sa[0], 1], [16, 16]),
                    TensorDescriptor(bmat, [k, nc], [sb[0], 1], [16, 16]))
    if interpreting():  # 16-wide tiles; through descriptors, 3 programs that walk several tiles each
        tiles = triton.cdiv(m, 16) * triton.cdiv(nc, 16)
        unimixing_gemm_kernel[(min(3, tiles) if tma else tiles, p)](*args, **consts, BM=16, BN=16, BK=16,
                                                                     TMA=tma)
    elif tma:
        sms = sm_count(a.device)
        def grid(meta):
            return min(sms, triton.cdiv(m, meta["BM"]) * triton.cdiv(nc, meta["BN"])), 1
        _tma_gemm(residual is not None)[grid](*args, **consts)
    else:
        kernel = _tuned("unimixing_gemm_kernel", _gemm_configs(a.dtype != torch.float32),
                        ("M_BUCKET", "NC", "K", "KIND"))
        kernel[lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(nc, meta["BN"]), p)](*args, **consts)


def _tma_unavailable(a: torch.Tensor, bmat: torch.Tensor, sa: tuple[int, int], sb: tuple[int, int],
                     splits: int) -> str | None:
    """Why the forward GEMM's operands cannot be read through 2-d tensor descriptors, or ``None``."""
    if a.dtype not in (torch.float16, torch.bfloat16) or bmat.dtype != a.dtype:
        return f"16-bit operands (got {a.dtype} and {bmat.dtype})"
    if a.is_cuda and not interpreting() and torch.cuda.get_device_capability(a.device) < (9, 0):
        return "an sm_90 or newer GPU"
    if splits != 1:
        return "one K split"
    if sa[1] != 1 or sb[1] != 1:
        return "row-major operands"
    if any(x.data_ptr() % 16 or s[0] * x.element_size() % 16 for x, s in ((a, sa), (bmat, sb))):
        return "16-byte aligned operands and rows (N a multiple of 8)"
    return None


def gemm_tma(a: torch.Tensor, bmat: torch.Tensor, sa: tuple[int, int], sb: tuple[int, int],
             splits: int, residual: bool) -> bool:
    """Whether the memory-path forward GEMM reads its operands through TMA tensor descriptors, with
    about one program per SM walking the output tiles: the ``UNIMIXER_UNIMIXING_TMA`` switch
    ('auto': for the plain product (no ``residual``) wherever the operands allow it, see
    :func:`_tma_unavailable`; '1': with the residual too, and a ``ValueError`` where the operands do
    not allow it; '0': never). On the H200 (bf16, bench/results/2026-11-30-h200-run107) the plain
    product at paper-100m took 354 against 386 us (the op 1.26 against 1.37 ms fwd+bwd, 0.424
    against 0.464 ms inference); the residual epilogue, whose fp32 rearrangement limits it to
    128 x 128 tiles, gave the full UniMixer block at paper-100m nothing (5.64 against 5.61 ms, 1.06
    against 1.03 ms inference, run108), so 'auto' leaves it on pointers."""
    mode = switch(UNIMIXING_TMA_SWITCH)
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{UNIMIXING_TMA_SWITCH}: expected 'auto', '0' or '1', got {mode!r}")
    if mode == "0" or (mode == "auto" and residual):
        return False
    why = _tma_unavailable(a, bmat, sa, sb, splits)
    if why is not None and mode == "1":
        raise ValueError(f"{UNIMIXING_TMA_SWITCH}=1: the forward GEMM's tensor descriptors need {why}; "
                         f"set it to 'auto' or '0'")
    return why is None


def _tma_block_shapes(nargs: dict) -> None:
    nargs["A"].block_shape = [nargs["BM"], nargs["BK"]]
    nargs["BMAT"].block_shape = [nargs["BK"], nargs["BN"]]


# The TMA path's tiles (BM, BN, BK, warps, stages) by residual epilogue, autotuned: the FFN's
# persistent 128 x 256 launch and smaller tiles; with the residual, whose fp32 rearrangement of a
# 128 x 256 tile spills (548-616 bytes at 8 warps in sm_90 compiles), 128 x 128 only
_TMA_TILES = {False: ((128, 256, 64, 8, 3), (128, 256, 64, 8, 2), (128, 128, 64, 8, 4)),
              True: ((128, 128, 64, 8, 4), (128, 128, 64, 8, 3))}


@functools.cache
def _tma_gemm(residual: bool):
    configs = [triton.Config(dict(BM=bm, BN=bn, BK=bk, TMA=True), num_warps=w, num_stages=s,
                             pre_hook=_tma_block_shapes) for bm, bn, bk, w, s in _TMA_TILES[residual]]
    return triton.autotune(configs=configs, key=["M_BUCKET", "NC", "K", "KIND"])(unimixing_gemm_kernel)


def _unimixing_fwd_memory(
    xc: torch.Tensor, wl: torch.Tensor, w_global: torch.Tensor, residual: bool,
    before_global: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The memory-path forward: ``H = X W_B`` per block, written once in the activation dtype, then
    the GEMM ``Y = W_G H (+ X)`` with both operands from memory (2 launches). The in-register kernel
    builds each ``H`` chunk beside its dot instead. Small ``B``: ``H`` c-major and the plain GEMM
    ``Y^T = H^T W_G^T``, whose epilogue stores ``Y`` as ``[bs, T, D]``; for 16-bit activations its
    ``W_G^T`` operand is written first, transposed and cast in one pass
    (:func:`_transposed_for_dot`). Returns ``(y, W_G^T, H)``: at small ``B`` the GEMM's operand (a
    view of ``W_G`` for fp32) and ``None``, at large ``B`` ``None`` and ``H`` (natural layout).
    ``before_global``: as :func:`unimixing_fwd`'s, run after the per-block products."""
    bs, t, d = xc.shape
    n, b, _ = wl.shape
    y = new_output(xc.shape, like=xc)
    res = xc if residual else None
    if not c_major(b):
        h = torch.empty_like(xc)
        _local_products(xc, wl, h)
        if before_global is not None:
            before_global()
        _global_gemm(_global_for_dot(w_global, xc), h, y, transpose=True, residual=res)
        return y, None, h
    ht = torch.empty((bs, b, n), device=xc.device, dtype=xc.dtype)
    _local_products(xc, wl, ht)
    if before_global is not None:
        before_global()
    # the B operand W_G^T: fp32 reads W_G as it is (a transposed view), 16-bit a row-major copy
    if xc.dtype == torch.float32:
        wg_t = _global_for_dot(w_global, xc).t()
    else:
        wg_t = _transposed_for_dot(w_global, xc.dtype)
    _gemm(0, ht, wg_t, y, bs * b, n, n, (n, 1), wg_t.stride(), block=b, length=t * d, residual=res)
    return y, wg_t, None


def _unimixing_bwd_memory(
    dyc: torch.Tensor,
    xc: torch.Tensor,
    wl: torch.Tensor,
    w_global: torch.Tensor,
    residual: bool,
    dy_scratch: bool,
    global_t: bool,
    dwg_dtype: torch.dtype,
    h_saved: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The memory-path backward: ``G = W_G^T dY`` (GEMM; at ``B >= 16`` with ``h_saved`` and ``N <= 256``
    in one kernel with the ``dW_G`` partials, :func:`fuses_bwd_global`, whose partials then exist already,
    so the ``dW_B`` partials join them in the caller's one sum launch), then per block ``dX``, ``H`` (at
    ``B >= 16`` only without ``h_saved``, the forward's) and the ``dW_B`` partials
    (:func:`_local_products`), else summed into ``dW_B`` at once so that they are gone before ``dW_G = dY
    H^T`` (GEMM, sample splits; at small ``B`` both GEMMs by cuBLAS where :func:`cublas_gemms`, ``dW_G``
    then one GEMM in the activation dtype, cast to ``dwg_dtype`` by the caller's partial sums once ``G``,
    ``H`` and ``dY^T`` are gone) allocates its partials. ``w_global`` is ``W_G``, or with ``global_t`` the
    forward's ``W_G^T`` in the activation dtype; a cast of fp32 ``W_G`` lives only up to the ``G`` GEMM.
    Returns ``dx``, ``dW_B``, the ``dW_G`` partial buffer and the ``(partial, output)`` pairs still to
    sum. ``G`` and ``H`` go through memory in the activation dtype: at large ``B`` the in-register local
    transpose would cost ``O(B)`` CUDA-core work per element; at small ``B`` the GEMMs run without the
    register build of ``G`` and ``H`` beside their dots, on c-major operands (``dY`` transposed to ``[bs,
    B, N]`` first by :func:`_c_major_copy`; GEMMs reading it in place measured 1.5x slower on the H200:
    their tiles load in runs of ``B`` values). There ``H`` overwrites ``G`` (the local FMA kernel reads
    each ``G`` element before it writes ``H`` there, in the same lane), and, with ``dy_scratch`` and the
    residual, ``dx`` is written over ``dyc`` (the kernel reads each ``dY`` element before it writes ``dX``
    there, in the same lane; see :func:`_unimixing_bwd_partials`)."""
    bs, t, d = xc.shape
    n, b, _ = wl.shape
    length = t * d
    dot_dtype, precision = _dot_setup(xc)
    dwl = new_output(wl.shape, like=wl)
    # W_G as the G GEMM's B operand (K = the output block): a view of the saved W_G^T, or W_G
    wg = w_global.t() if global_t else _global_for_dot(w_global, xc)
    if c_major(b):
        in_place = dy_scratch and residual and dyc.dtype == xc.dtype
        dx = dyc if in_place else new_output(xc.shape, like=xc)
        dyt = _c_major_copy(dyc, n, b)
        gt = torch.empty_like(dyt)
        cublas = cublas_gemms(xc)
        if cublas:
            torch.mm(dyt.view(bs * b, n), wg, out=gt.view(bs * b, n))
        else:
            _gemm(1, dyt, wg, gt, bs * b, n, n, (n, 1), wg.stride())
        del wg
        ht = gt
        sum_partials((_local_products(xc, wl, ht, gt, dyc, dx, residual), dwl))
        if cublas:
            return dx, dwl, torch.mm(dyt.view(bs * b, n).t(), ht.view(bs * b, n)).unsqueeze(0), []
        # dW_G's partials after dW_B's are gone; one program an SM (two sample splits at paper-small)
        # keeps them to half an activation there (run79)
        p2, per2 = _splits(bs, triton.cdiv(n, 128) ** 2, xc.device, n * n, per_sm=1)
        dwg_part = _dwg_buffer(p2, n, xc, dwg_dtype)
        _gemm(2, dyt, ht, dwg_part, n, n, bs * b, (1, n), (n, 1), splits=(p2, per2 * b))
    else:
        dx = new_output(xc.shape, like=xc)
        g = torch.empty_like(xc)
        write_h = h_saved is None
        fused = fuses_bwd_global(xc, n, not write_h)
        if fused:
            dwg_part = _bwd_global(wg, dyc, h_saved, g, dwg_dtype)
        else:
            _global_gemm(wg, dyc, g, transpose=False)
        del wg
        h = torch.empty_like(xc) if write_h else h_saved
        dwl_part = _local_products(xc, wl, h if write_h else None, g, dyc, dx, residual)
        del g
        if fused:
            return dx, dwl, dwg_part, [(dwl_part, dwl)]
        sum_partials((dwl_part, dwl))
        del dwl_part
        p2, per2 = _splits(bs, triton.cdiv(n, 128) ** 2, xc.device, n * n, per_sm=2)
        dwg_part = _dwg_buffer(p2, n, xc, dwg_dtype)
        args = (dyc, h, dwg_part, bs, n, length, per2, bucket(bs))
        consts = dict(B=b, DOT_DTYPE=dot_dtype, PRECISION=precision)
        if interpreting():
            meta = dict(BM=16, BN=16, BK=16)
            grid = (triton.cdiv(n, 16), triton.cdiv(n, 16), p2)
            unimixing_bwd_dwg_gemm_kernel[grid](*args, **consts, **meta)
        else:
            kernel = _tuned("unimixing_bwd_dwg_gemm_kernel", _dwg_gemm_configs(xc.dtype != torch.float32),
                            ("N", "BS_BUCKET", "B"))
            kernel[lambda meta: (triton.cdiv(n, meta["BM"]), triton.cdiv(n, meta["BN"]), p2)](*args, **consts)
    return dx, dwl, dwg_part, []


def unimixing_rmsnorm_bwd(
    du: torch.Tensor,
    z: torch.Tensor,
    s: torch.Tensor,
    w_local: torch.Tensor,
    w_global: torch.Tensor,
    norm_weight: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``u = RMSNorm(z + UniMixing(z))``: the RMSNorm backward kernel turns ``du`` into
    ``ds`` (and the norm-weight partials), then the mixing backward adds the residual path; one
    launch sums the norm's and the mixing's weight-gradient partials."""
    ds, dnw_part = rms_norm_bwd_partials(du.contiguous(), None, s, norm_weight, rstd.reshape(-1))
    dz, dwl, dwg, partials = _unimixing_bwd_partials(ds, z, w_local, w_global, residual=True, dy_scratch=True)
    dnw = new_output(norm_weight.shape, like=norm_weight)
    sum_partials((dnw_part, dnw), *partials)
    return dz, dwl, dwg, dnw
