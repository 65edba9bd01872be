"""Unrolled log-domain Sinkhorn (SPEC §2.1, §3): Triton kernels and launchers (no autograd here).

Maths
-----
With ``S0 = sym(M) / tau`` (``sym(M) = (M + M^T)/2`` if symmetric, else ``M``), the reference
iterates ``S <- S - lse_row(S)``, ``S <- S - lse_col(S)`` ``K`` times. Every iterate has the form
``S0[i, j] - u[i] - v[j]``, so the kernels carry only the potentials. The first iteration is
done as the reference does it, giving ``R1 = S0 - u_1`` (rows) and ``T1 = R1 - v_1``; later
potentials are kept *relative* to it (small numbers, so the fp32 iterates keep the reference's
precision even at tau = 0.05, where ``S0`` reaches hundreds)::

    u_1[i] = lse_j S0[i, j]             v_1[j] = lse_i R1[i, j]
    u_k[i] = lse_j(T1[i, j] - v_{k-1}[j])   (k >= 2, v_1 := 0 here: relative)
    v_k[j] = lse_i(T1[i, j] - u_k[i])
    P      = exp(T1 - u_K[i] - v_K[j])      (u_K = v_K = 0 if K = 1)

``lse`` subtracts the running maximum before ``exp``; everything is fp32. **Saved for backward:**
``U, V [n_mat, K, n]`` fp32 (``U[:, 0] = u_1``, ``U[:, k] = u_{k+1}`` relative, same for V):
``2*K*n`` floats per matrix, nothing of size ``n^2``.

Backward (the gradient of the unrolled map, as autograd gives on the reference) walks the
iterations in reverse with one working gradient ``G`` (fp32, ``n x n``) and recomputes each
iterate ``E = exp(S)`` from ``S0`` and the potentials::

    G = dP * P
    for k = K .. 1:
        G -= E_col(k) * colsum(G)[None, :]    E_col(k) = exp(T1 - u_k - v_k)   (exp(T1) for k = 1)
        G -= E_row(k) * rowsum(G)[:, None]    E_row(k) = exp(T1 - u_k - v_{k-1}) (exp(R1) for k = 1)
    dS0 = G;   dM = sym(G) / tau

Layouts
-------
* **Small matrices, batched** (``n <= SMALL_MAX_N``, e.g. the local weights ``[N, B, B]``): one
  program holds ``MB`` whole matrices ``[MB, NP, NP]`` in registers and runs all ``K``
  iterations there. One launch forward, one backward. For Lite the program also forms the logits
  ``sum_l omega[m, l] Z[l]`` itself, and its backward returns ``d omega`` directly and per-program
  partials of ``d Z`` (summed by a second pass, no atomics).
* **Large matrices, tiled** (``n > SMALL_MAX_N``, e.g. the global weights): a grid of
  ``BM x BN`` tiles (64 x 64 from n = 64 on, 4 warps; ``UNIMIXER_SINKHORN_TILE`` picks others), times
  the batch. Every half-step is
  one launch and one streaming pass over the tiles: a program reads the potentials of its rows (or
  columns), reduces its tile along the other axis into a partial, and the last program of each
  band to finish reduces the band's partials into the potential the next launch reads
  (``_arrive``: a count per band, no waiting). Forward: ``1 + 2K`` launches; backward ``2 + 2K``
  (``1 + 2K`` when not symmetric, or with pairs). The partials are ``[tiles along an axis, n]`` fp32.
  **Pairs** (``UNIMIXER_SINKHORN_PAIRS``, symmetric logits with square tiles): ``S0``'s tile
  ``(q, p)`` is tile ``(p, q)`` transposed, bit for bit, so one program holds the pair's one tile and
  runs each half-step on it twice, as the tile and as its mirror image (``_fwd_half`` and
  ``_bwd_half`` take an orientation), with the same operations per entry in either: every half-step
  reads half of ``S0`` (at n = 4096 fwd+bwd 2.23 → 1.93 ms, run92); the backward's working-gradient
  workspace keeps each program's two tiles as its registers hold them (``_g_tile``), and the last
  launch writes ``dM = sym(G) / tau`` on both tiles itself, with no symmetrising pass.

  ``S0`` comes from one of: the logits (first pass only; it writes ``S0`` once to an fp32
  ``n x n`` workspace, freed at the end of the call, never saved), that workspace, or, for Lite
  (matrix free), ``A @ B`` formed per tile with ``tl.dot`` (``r`` MACs per entry, fp32 IEEE
  for fp32 factors; symmetric adds the product of the transposed tile, so ``S0`` is exactly
  symmetric as in the reference), so no ``n x n`` logits are ever read. Exception, by cost:
  fp32 factors run ``tl.dot`` on FMA units (IEEE fp32, as the tolerance needs), where forming an
  entry costs ``r`` FMAs, far more than reading 4 bytes once ``r > LOWRANK_MATERIALISE_MIN_RANK``
  (32); there ``A @ B`` is formed once per call by one fp32 GEMM (``UNIMIXER_LITE_GEMM``: the
  project's GEMM on bf16 tensor cores from three-part splits of the factors, fp32's accuracy,
  :mod:`.gemm_fp32`; or cuBLAS in IEEE fp32) and run as dense logits, here and in the resident
  kernels (at n = 4096, r = 256 the in-kernel formation took about 0.5 ms per direction on the H200,
  run51; at n = 1024, r = 128, resident, about 15 us; forming the resident tiles from the bf16 parts
  on tensor cores took longer than the GEMM and its launches, run114; NOTES). It is a transient of
  the call, freed at its end and never saved, so the saved state stays ``O(K n)``, with the split
  GEMM's bf16 parts of the factors besides (``O(n r)``, ``lite_global_fwd``); bf16/fp16 factors
  use tensor cores and stay matrix free. The backward's
  half-steps do not read or write ``G``: each passes only ``G``'s sums along one axis to the next,
  and its last launch forms ``G`` from them and ``dP * P`` (an fp32 ``n x n`` workspace written by
  its first launch; ``_bwd_tile``). For Lite the backward materialises ``dM`` (fp32 ``n x n``, or for
  the split GEMM its bf16 parts, stored so by the resident kernels' last pass) once; ``dA = dM B^T``
  and ``dB = A^T dM`` are two fp32 GEMMs done by the caller, as the logits' GEMM.
* **Tiled, resident** (``RESIDENT``, the default where it applies;
  ``UNIMIXER_SINKHORN_PERSISTENT=0`` turns it off): where every tile can have its own program, all
  resident at once (``n = 1024`` with 64 x 128 tiles and 8 warps: 128 programs), one launch per
  direction. A program keeps its ``S0`` tile, in backward its ``G`` tile, and the potentials of its
  rows and columns in registers for the whole call, so matrix-free Lite forms its low-rank tile
  once, not ``2K + 1`` times. After the first iteration the reductions need no maximum (every
  iterate is then normalised along one axis, see ``sinkhorn_resident_fwd_kernel``), so the partials
  are plain sums, and one exponential per entry serves both half-steps of an iteration. The
  half-steps meet through the partials alone: each is written as tagged 8-byte words (value and
  step), double buffered, and a program polls exactly the words it needs until they carry the step's
  tag; no barrier, no fence, no workspace. The launch is cooperative (the driver refuses a grid that
  could not be resident at once), and the wait is bounded (it counts a failure instead of hanging).
  The interpreter runs programs one after another, so there only a matrix that is a single tile
  takes this path.
* **Programmatic dependent launch** (``UNIMIXER_PDL``: by default while a CUDA graph is captured,
  sm_90+): the tiled launches wait with ``griddepcontrol.wait`` until the previous kernel has
  finished and its writes are visible, then release the next launch, so that its launch processing
  overlaps this kernel's tail. Only the ``S0`` tile may be read before the wait (``EARLY``), and only
  where the previous launch does not write it: every launch but the first pass and the one right
  after it, whose workspace that pass writes (matrix-free Lite reads its constant factors, so there
  only the first pass waits first). It applies to the one-launch-per-half-step kernels; the
  resident kernels are one launch per direction and run as they are.

Matrices and partial rows are indexed in int64; offsets inside one matrix are int32
(``n <= 46340``).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import (
    LITE_GEMM_SWITCH,
    PAIRS_SWITCH,
    PERSISTENT_SWITCH,
    POLL_SWITCH,
    TILE_SWITCH,
    new_output,
    sm_count,
    switch,
    triton_launch_option,
)
from ._partials import sum_partials
from ._pdl import pdl_options, pdl_prologue
from .gemm_fp32 import mm_parts, split_parts, store_parts

# matrices up to this size run the batched in-register kernels; larger ones the tiled kernels
SMALL_MAX_N = 64
# the tiled path's launch scheme (UNIMIXER_SINKHORN_PERSISTENT):
# * 'auto': where one program per tile fits the GPU at once (n = 1024: 128 tiles of 64 x 128) and
#   the launch can be cooperative, the resident kernels (RESIDENT): one launch per direction, the
#   tiles held in registers, tagged partials instead of barriers; elsewhere one launch per half-step;
# * '0': one launch per half-step everywhere.
_MODE = switch(PERSISTENT_SWITCH)
if _MODE not in ("auto", "0"):
    raise ValueError(f"{PERSISTENT_SWITCH}: expected 'auto' or '0', got {_MODE!r}")
RESIDENT = _MODE == "auto"
RESIDENT_TILE = (64, 128)
# warps of a resident program with such a tile (_resident_shape). At n = 1024 (CUDA graphs, H200)
# fwd+bwd took 0.263 ms at 16 warps, 0.222 at 8 and 0.304 at 4, each with the partial blocks sized for
# 16 warps (bench/results/2026-11-30-h200-run93), and 0.219 at 8 warps with its own blocks (run94).
# Part of the gain is the blocks' size: 16 warps with the 8-warp blocks took 0.211 (run94), but there
# each thread holds a single word of the column partials and the layouts replicate words across
# warps, which _resident_shape avoids
RESIDENT_WARPS = 8
# polls (~1 us each) before a resident program's wait gives up and counts a failure instead of
# hanging; a legitimate wait is microseconds, so only programs that are not co-resident reach it
RESIDENT_MAX_SPINS = 1 << 24
# after each resident launch, synchronise and raise if a wait gave up (tests)
RESIDENT_CHECK = False
# Lite global with fp32 factors of a larger rank: A @ B is formed once per call by an fp32 GEMM
# (Fp32Products) and run as dense logits, instead of on FMA units in the kernels
LOWRANK_MATERIALISE_MIN_RANK = 32
# FMA contraction in the batched kernels, and in the resident kernels where S0 = logits * scale
# (dense): off. There S0 must round once and be the same number in every use; with contraction the
# compiler fuses the product into some uses (``x * scale - u`` as one FMA) but not into the
# log-sum-exp's maximum and exponentials, and the gradient, which at small n can cancel terms of
# order 1 down to 1e-12, shows the difference (a sweep example at n = 2: 8.8x torch's error with it,
# 1.0x without; NOTES). The batched kernels' Lite basis composition writes its products as explicit
# FMAs (``tl.fma``), so it still rounds once per product, as the reference's GEMMs do, while its
# ``* scale`` stays one rounding (with contraction on, a Lite sweep example at n = 2 had 11x torch's
# error on the H200, run57). The resident kernels' low-rank tile (``tl.dot``) keeps it on (the Lite
# GPU tests gave the same results with it on and off). The one-launch-per-half-step kernels keep it
# on: their S0 is rounded once into the fp32 workspace.
DENSE_FP_FUSION = False
# elements of one program's register block in the batched kernels (MB * NP * NP)
SMALL_BLOCK_ELEMS = 2048
# tile shape of the tiled kernels; None picks from n (the tests shrink them to hit many tiles)
TILE_OVERRIDE: tuple[int, int] | None = None
# every other one-launch-per-half-step launch walks the tiles (and matrices) in reverse order, so
# that it starts on what the launch before it read last, which is still in L2 (S0 is 64 MiB at
# n = 4096, the H200's L2 60 MiB as the device reports it; walking every pass in one order, each
# pass evicts what the next needs first). The order changes no number: partials are reduced in
# index order.
SERPENTINE = True

# where S0 comes from: the logits (and cache it), the cache, the factors
_DENSE, _WORKSPACE, _LOWRANK = 0, 1, 2
_INIT, _ROW, _COL, _COL_LAST = 0, 1, 2, 3
# how a band's last program reduces the band's partials (``_arrive``)
_SUM, _LSE, _LOG_SUM = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _lse(x, AXIS: tl.constexpr):
    """logsumexp along AXIS of an ``-inf``-masked block; a fully masked slice gives 0, not NaN."""
    m = tl.max(x, axis=AXIS)
    m = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(tl.exp(x - tl.expand_dims(m, AXIS)), axis=AXIS)
    s = tl.where(s == 0.0, 1.0, s)
    return m + tl.log(s)


# --- batched small matrices, one program per MB matrices, all in registers -------------------


@triton.jit
def _small_logits(
    X, OMEGA, mats, rows, cols, mvalid, n, nb,
    sx0, sx1, sx2, so0, so1, scale,
    SYMMETRIC: tl.constexpr, LITE: tl.constexpr, MB: tl.constexpr, NP: tl.constexpr,
):
    """``S0 [MB, NP, NP]`` fp32: ``sym(M)/tau`` (or ``sym(sum_l omega[m,l] Z[l])/tau`` for Lite).

    Padding is 0 here; callers mask it with ``-inf`` where it matters."""
    rmask = rows < n
    cmask = cols < n
    if LITE:
        # X is the basis Z [b, B, B] (strides sx0, sx1, sx2), OMEGA is [N, b]
        m2 = rmask[:, None] & cmask[None, :]
        s0 = tl.zeros([MB, NP, NP], dtype=tl.float32)
        for bi in range(nb):
            z = tl.load(X + bi * sx0 + rows[:, None] * sx1 + cols[None, :] * sx2, mask=m2, other=0.0)
            z = z.to(tl.float32)
            if SYMMETRIC:
                zt = tl.load(X + bi * sx0 + cols[None, :] * sx1 + rows[:, None] * sx2, mask=m2, other=0.0)
                z = z + zt.to(tl.float32)
            w = tl.load(OMEGA + mats * so0 + bi * so1, mask=mvalid, other=0.0).to(tl.float32)
            # one rounding per product, as with contraction, which these kernels compile without
            s0 = tl.fma(tl.broadcast_to(w[:, None, None], [MB, NP, NP]),
                        tl.broadcast_to(z[None, :, :], [MB, NP, NP]), s0)
    else:
        m3 = mvalid[:, None, None] & rmask[None, :, None] & cmask[None, None, :]
        base = X + mats[:, None, None] * sx0
        s0 = tl.load(base + rows[None, :, None] * sx1 + cols[None, None, :] * sx2, mask=m3, other=0.0)
        s0 = s0.to(tl.float32)
        if SYMMETRIC:
            st = tl.load(base + cols[None, None, :] * sx1 + rows[None, :, None] * sx2, mask=m3, other=0.0)
            s0 = s0 + st.to(tl.float32)
    return s0 * scale


@triton.jit
def _small_frame(X, OMEGA, pid, n_mat, n, nb, K, sx0, sx1, sx2, so0, so1, scale,
                 SYMMETRIC: tl.constexpr, LITE: tl.constexpr, MB: tl.constexpr, NP: tl.constexpr):
    """Program ``pid``'s ``MB`` small matrices, as the forward and backward both see them: matrix,
    row and column indices, validity, the ``[MB, NP, NP]`` and ``[MB, NP]`` masks, the logits ``S0`` and the
    offsets of the potentials' rows."""
    mats = pid * MB + tl.arange(0, MB).to(tl.int64)
    rows = tl.arange(0, NP)
    cols = tl.arange(0, NP)
    mvalid = mats < n_mat
    mask = mvalid[:, None, None] & (rows < n)[None, :, None] & (cols < n)[None, None, :]
    vmask = mvalid[:, None] & (rows < n)[None, :]
    s0 = _small_logits(X, OMEGA, mats, rows, cols, mvalid, n, nb, sx0, sx1, sx2, so0, so1, scale,
                       SYMMETRIC, LITE, MB, NP)
    pot = mats[:, None] * K * n + rows[None, :]
    return mats, rows, cols, mvalid, mask, vmask, s0, pot


@triton.jit
def sinkhorn_small_fwd_kernel(
    X, OMEGA, P, U, V,
    n_mat, n, nb, K,
    sx0, sx1, sx2, so0, so1,
    scale,
    SYMMETRIC: tl.constexpr, LITE: tl.constexpr, MB: tl.constexpr, NP: tl.constexpr,
):
    """Forward of ``MB`` matrices per program: writes ``P [n_mat, n, n]`` and the potentials
    ``U, V [n_mat, K, n]`` (``u_1``, ``v_1``, then ``u_k - u_1``, ``v_k - v_1``)."""
    pid = tl.program_id(0).to(tl.int64)
    mats, rows, cols, mvalid, mask, vmask, s0, pot = _small_frame(
        X, OMEGA, pid, n_mat, n, nb, K, sx0, sx1, sx2, so0, so1, scale, SYMMETRIC, LITE, MB, NP)
    u = _lse(tl.where(mask, s0, float("-inf")), 2)
    tl.store(U + pot, u, mask=vmask)
    r1 = s0 - u[:, :, None]
    v = _lse(tl.where(mask, r1, float("-inf")), 1)
    tl.store(V + pot, v, mask=vmask)
    t1 = r1 - v[:, None, :]
    u = tl.zeros([MB, NP], dtype=tl.float32)
    v = tl.zeros([MB, NP], dtype=tl.float32)
    for k in range(1, K):
        u = _lse(tl.where(mask, t1 - v[:, None, :], float("-inf")), 2)
        tl.store(U + pot + k * n, u, mask=vmask)
        v = _lse(tl.where(mask, t1 - u[:, :, None], float("-inf")), 1)
        tl.store(V + pot + k * n, v, mask=vmask)
    p = tl.exp(tl.where(mask, t1 - u[:, :, None] - v[:, None, :], float("-inf")))
    out = mats[:, None, None] * n * n + rows[None, :, None] * n + cols[None, None, :]
    tl.store(P + out, p, mask=mask)


@triton.jit
def sinkhorn_small_bwd_kernel(
    X, OMEGA, DP, U, V, DX, DOMEGA, DZ_PARTIAL,
    n_mat, n, nb, K,
    sx0, sx1, sx2, so0, so1, sd0, sd1, sd2,
    scale, grad_scale,
    SYMMETRIC: tl.constexpr, LITE: tl.constexpr, MB: tl.constexpr, NP: tl.constexpr,
):
    """Backward of ``MB`` matrices per program, ``G`` in registers.

    Dense: writes ``dM [n_mat, n, n]`` (input dtype). Lite: writes ``d omega [N, b]`` and this
    program's partial ``d Z [b, n, n]`` (fp32) into ``DZ_PARTIAL[pid]``."""
    pid = tl.program_id(0).to(tl.int64)
    mats, rows, cols, mvalid, mask, vmask, s0, pot = _small_frame(
        X, OMEGA, pid, n_mat, n, nb, K, sx0, sx1, sx2, so0, so1, scale, SYMMETRIC, LITE, MB, NP)
    r1 = s0 - tl.load(U + pot, mask=vmask, other=0.0)[:, :, None]
    t1 = r1 - tl.load(V + pot, mask=vmask, other=0.0)[:, None, :]
    u = tl.load(U + pot + (K - 1) * n, mask=vmask & (K > 1), other=0.0)
    v = tl.load(V + pot + (K - 1) * n, mask=vmask & (K > 1), other=0.0)
    p = tl.exp(tl.where(mask, t1 - u[:, :, None] - v[:, None, :], float("-inf")))
    dp = tl.load(DP + mats[:, None, None] * sd0 + rows[None, :, None] * sd1 + cols[None, None, :] * sd2,
                 mask=mask, other=0.0).to(tl.float32)
    g = dp * p
    for t in range(1, K):
        k = K - t
        u = tl.load(U + pot + k * n, mask=vmask, other=0.0)
        v = tl.load(V + pot + k * n, mask=vmask, other=0.0)
        e = tl.exp(tl.where(mask, t1 - u[:, :, None] - v[:, None, :], float("-inf")))
        g = g - e * tl.sum(g, axis=1)[:, None, :]
        v = tl.load(V + pot + (k - 1) * n, mask=vmask & (k > 1), other=0.0)
        e = tl.exp(tl.where(mask, t1 - u[:, :, None] - v[:, None, :], float("-inf")))
        g = g - e * tl.sum(g, axis=2)[:, :, None]
    # the first iteration, whose iterates are t1 (after its column step) and r1 (after its row step)
    g = g - tl.exp(tl.where(mask, t1, float("-inf"))) * tl.sum(g, axis=1)[:, None, :]
    g = g - tl.exp(tl.where(mask, r1, float("-inf"))) * tl.sum(g, axis=2)[:, :, None]
    dm = g * grad_scale
    if SYMMETRIC:
        dm = dm + tl.permute(dm, (0, 2, 1))
    if LITE:
        m2 = (rows < n)[:, None] & (cols < n)[None, :]
        for bi in range(nb):
            z = tl.load(X + bi * sx0 + rows[:, None] * sx1 + cols[None, :] * sx2, mask=m2, other=0.0)
            dw = tl.sum(tl.sum(dm * z.to(tl.float32)[None, :, :], axis=2), axis=1)
            tl.store(DOMEGA + mats * nb + bi, dw.to(DOMEGA.dtype.element_ty), mask=mvalid)
            w = tl.load(OMEGA + mats * so0 + bi * so1, mask=mvalid, other=0.0).to(tl.float32)
            dz = tl.sum(w[:, None, None] * dm, axis=0)
            tl.store(DZ_PARTIAL + (pid * nb + bi) * n * n + rows[:, None] * n + cols[None, :], dz, mask=m2)
    else:
        out = mats[:, None, None] * n * n + rows[None, :, None] * n + cols[None, None, :]
        tl.store(DX + out, dm.to(DX.dtype.element_ty), mask=mask)


# --- large matrices: tiled, one launch per half-step -------------------------------------------


@triton.jit
def _tile_logits(
    SRC, A, B, WS, mat, rows, cols, n, rank,
    s0, s1, s2, sa0, sa1, sb0, sb1, scale,
    MODE: tl.constexpr, SYMMETRIC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr, EVEN: tl.constexpr,
):
    """The ``S0`` tile ``[BM, BN]`` (fp32, 0 outside the matrix) of matrix ``mat``.

    MODE 0: from the logits ``SRC`` (strided, any float dtype), symmetrised and scaled.
    MODE 1: from the contiguous fp32 workspace ``WS`` written by MODE 0.
    MODE 2: ``(A @ B) * scale`` (plus its transpose if symmetric) with ``A [n, rank]``,
    ``B [rank, n]`` (matrix free)."""
    rmask, cmask = _masks(rows, cols, n, BM, BN, EVEN)
    m2 = rmask[:, None] & cmask[None, :]
    if MODE == 0:
        base = SRC + mat * s0
        x = tl.load(base + rows[:, None] * s1 + cols[None, :] * s2, mask=m2, other=0.0).to(tl.float32)
        if SYMMETRIC:
            # the transposed tile, loaded along its own rows, then transposed in registers
            xt = tl.load(base + cols[:, None] * s1 + rows[None, :] * s2, mask=cmask[:, None] & rmask[None, :],
                         other=0.0)
            x = x + tl.trans(xt.to(tl.float32))
        x = x * scale
    elif MODE == 1:
        x = tl.load(WS + mat * n * n + rows[:, None] * n + cols[None, :], mask=m2, other=0.0,
                    cache_modifier=".cg")
    else:
        x = _lowrank_tile(A, B, rows, cols, rmask, cmask, rank, sa0, sa1, sb0, sb1, BM, BN, BK, DOT_IEEE)
        if SYMMETRIC:
            # (A B)^T tile from its own product, so S0 is exactly symmetric, as in the reference
            xt = _lowrank_tile(A, B, cols, rows, cmask, rmask, rank, sa0, sa1, sb0, sb1, BN, BM, BK, DOT_IEEE)
            x = x + tl.trans(xt)
        x = x * scale
    return x


@triton.jit
def _lowrank_tile(A, B, rows, cols, rmask, cmask, rank, sa0, sa1, sb0, sb1,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr):
    """``(A @ B)[rows, cols]`` in fp32, ``rank`` MACs per entry.

    ``DOT_IEEE`` (fp32 factors, FMA units): the rank's ``BK``-wide chunks go to two accumulators in
    turn, added at the end, so that no entry is one sequential chain of ``rank`` roundings (at
    tau = 0.05 the output hinges on the last bits of these sums; NOTES, the Lite sweep)."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    if DOT_IEEE:
        acc2 = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, rank, 2 * BK):
            a, b = _lowrank_chunk(A, B, rows, cols, rmask, cmask, k0, rank, sa0, sa1, sb0, sb1, BK)
            acc = tl.dot(a, b, acc, input_precision="ieee")
            a, b = _lowrank_chunk(A, B, rows, cols, rmask, cmask, k0 + BK, rank, sa0, sa1, sb0, sb1, BK)
            acc2 = tl.dot(a, b, acc2, input_precision="ieee")
        acc = acc + acc2
    else:
        for k0 in range(0, rank, BK):
            a, b = _lowrank_chunk(A, B, rows, cols, rmask, cmask, k0, rank, sa0, sa1, sb0, sb1, BK)
            acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _lowrank_chunk(A, B, rows, cols, rmask, cmask, k0, rank, sa0, sa1, sb0, sb1, BK: tl.constexpr):
    """Columns ``k0 .. k0 + BK`` of ``A[rows]`` and the matching rows of ``B[:, cols]`` (0 past ``rank``)."""
    ks = k0 + tl.arange(0, BK)
    kmask = ks < rank
    a = tl.load(A + rows[:, None] * sa0 + ks[None, :] * sa1, mask=rmask[:, None] & kmask[None, :], other=0.0)
    b = tl.load(B + ks[:, None] * sb0 + cols[None, :] * sb1, mask=kmask[:, None] & cmask[None, :], other=0.0)
    return a, b


@triton.jit
def _masks(rows, cols, n, BM: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr):
    """``rows < n`` and ``cols < n``; constant ``True`` when the tiles divide ``n`` (``EVEN``), so the
    compiler drops the masks' selects and predicates (at n = 4096 a fifth of a half-step's
    instructions, sm_90 SASS)."""
    if EVEN:
        rmask = tl.full([BM], 1, tl.int1)
        cmask = tl.full([BN], 1, tl.int1)
    else:
        rmask = rows < n
        cmask = cols < n
    return rmask, cmask


@triton.jit
def _exp(x, FAST: tl.constexpr):
    """``tl.exp(x)`` (``ex2.approx`` of ``x * log2(e)``), and with ``FAST`` (sm_90 builds) the same
    with results below fp32's normal range flushed to zero (``.ftz``): the same number wherever the
    result is a normal float, without the three instructions per element that ``ex2.approx.f32``
    spends on subnormal results. Every iterate's exponential in the tiled half-steps goes through
    here, so each launch forms each iterate exactly as the others do (``_bwd_tile``); ``_lse`` (the
    first iteration's partials and their reduction) keeps ``tl.exp``."""
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x * LOG2E], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp(x)


@triton.jit
def _tile_index(tile, n, n_ct, BM: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr,
                PAIRS: tl.constexpr = False):
    """Tile ``(p, q)`` of an ``n x n`` matrix: ``divmod(tile, n_ct)``, or with ``PAIRS`` (square tiles,
    ``n_ct`` a side) the ``tile``-th of the ``n_ct (n_ct + 1) / 2`` unordered pairs ``{p, q}``:
    ``p = a``, ``q = (a + b) mod n_ct`` for ``b`` from 0 to ``n_ct // 2``, where an even ``n_ct`` takes
    ``b = n_ct / 2`` only for ``a < n_ct / 2`` (``{a, a + n_ct / 2}`` would come twice). Returns
    ``p, q``, its rows and columns, their masks and the tile's mask (``_masks``)."""
    if PAIRS:
        h = (n_ct + 1) // 2
        full = n_ct * h
        a = tl.where(tile < full, tile // h, tile - full)
        p = a
        q = (a + tl.where(tile < full, tile % h, n_ct // 2)) % n_ct
    else:
        p = tile // n_ct
        q = tile % n_ct
    rows = p * BM + tl.arange(0, BM)
    cols = q * BN + tl.arange(0, BN)
    rmask, cmask = _masks(rows, cols, n, BM, BN, EVEN)
    return p, q, rows, cols, rmask, cmask, rmask[:, None] & cmask[None, :]


@triton.jit
def _tile_frame(
    x_in, tile, mat, SRC, A, B, WS, n, rank, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
    MODE: tl.constexpr, SYMMETRIC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    DOT_IEEE: tl.constexpr, X_GIVEN: tl.constexpr, EVEN: tl.constexpr, PAIRS: tl.constexpr,
):
    """Tile ``(p, q)`` of matrix ``mat``, as every forward and backward half-step sees it: indices,
    masks and its logits (``x_in`` when ``X_GIVEN``, else formed or loaded)."""
    p, q, rows, cols, rmask, cmask, m2 = _tile_index(tile, n, n_ct, BM, BN, EVEN, PAIRS)
    if X_GIVEN:
        x = x_in
    else:
        x = _tile_logits(SRC, A, B, WS, mat, rows, cols, n, rank, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
                         MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, EVEN)
    return p, q, rows, cols, rmask, cmask, m2, x


# --- orientations: a tile, or (PAIRS) its mirror image read from the same registers -------------
# With PAIRS, one program holds the S0 tile (p, q) and also stands for the mirrored tile (q, p),
# which for symmetric logits is its transpose, bit for bit. The half-steps below are written for an
# "orientation": its rows and columns with their masks and band indices, and MIRROR (0 or 1), which says
# whether its rows run along the tile's axis 0 (the tile itself) or axis 1 (the mirror). These
# helpers broadcast its row and column vectors over the tile and reduce along its rows or columns.


@triton.jit
def _rv(v, MIRROR: tl.constexpr):
    """A vector over the orientation's rows, broadcast over the tile."""
    if MIRROR:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def _cv(v, MIRROR: tl.constexpr):
    """A vector over the orientation's columns, broadcast over the tile."""
    if MIRROR:
        return v[:, None]
    else:
        return v[None, :]


@triton.jit
def _row_sums(x, MIRROR: tl.constexpr):
    """Sums of the orientation's rows (over its columns: the tile's axis ``1 - MIRROR``)."""
    return tl.sum(x, axis=1 - MIRROR)


@triton.jit
def _col_sums(x, MIRROR: tl.constexpr):
    """Sums of the orientation's columns (over its rows: the tile's axis ``MIRROR``)."""
    return tl.sum(x, axis=MIRROR)


@triton.jit
def _g_tile(G, mat, tile, rows, cols, n, MIRROR: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
            PAIRS: tl.constexpr):
    """Pointers to one orientation's tile of the backward's ``G`` workspace: ``G [n_mat, n, n]`` at
    the tile's rows and columns, or with ``PAIRS`` ``G [n_mat, pairs, 2, BM, BN]``, each program's two
    orientations in its own slots, laid out as its registers are (a mirrored tile kept as ``G``'s
    layout would be read and written transposed, and the last launch's loop then converts its
    layout through shared memory every iteration)."""
    if PAIRS:
        slot = (mat * tl.num_programs(0) + tile) * 2 + MIRROR
        return G + slot * (BM * BN) + tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    else:
        return G + mat * n * n + rows[:, None] * n + cols[None, :]


@triton.jit
def _arrive(count, parts, idx, imask, out, n, n_parts, HOW: tl.constexpr, P2: tl.constexpr):
    """After this program stored its partial for the band ``idx`` (its rows, or columns): count it
    in, and if it is the band's last, reduce the band's ``n_parts`` partials (``parts [n_parts, n]``,
    in their fixed order, so the result does not depend on which program came last) into ``out``
    (``HOW``: ``_SUM``, ``_LSE`` of partial log-sum-exps, or ``_LOG_SUM`` of partial sums), and reset
    the count for the next launch.

    The partials' stores of every thread come before the count (a block-wide barrier, then one
    acquire-release atomic), and the last program reads them from L2 after it, as a cooperative
    grid barrier does; there is no waiting, so no program depends on another being resident."""
    tl.debug_barrier()
    if tl.atomic_add(count, 1, sem="acq_rel", scope="gpu") == n_parts - 1:
        ts = tl.arange(0, P2)
        vals = tl.load(parts + ts[:, None] * n + idx[None, :], mask=(ts < n_parts)[:, None] & imask[None, :],
                       other=float("-inf") if HOW == _LSE else 0.0, cache_modifier=".cg")
        if HOW == _LSE:
            red = _lse(vals, 0)
        elif HOW == _LOG_SUM:
            red = tl.log(tl.where(imask, tl.sum(vals, axis=0), 1.0))
        else:
            red = tl.sum(vals, axis=0)
        tl.store(out, red, mask=imask)
        tl.atomic_xchg(count, 0, sem="relaxed", scope="gpu")


@triton.jit
def _fwd_tile(
    x_in, tile, mat, SRC, A, B, WS, P, U, V, PR, PC, CNT,
    n, rank, K, k, n_rt, n_ct,
    s0, s1, s2, sa0, sa1, sb0, sb1, scale,
    PHASE: tl.constexpr, MODE: tl.constexpr, SYMMETRIC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr,
    RT_P: tl.constexpr, CT_P: tl.constexpr, X_GIVEN: tl.constexpr, PLAIN: tl.constexpr,
    EVEN: tl.constexpr, FAST_EXP: tl.constexpr, PAIRS: tl.constexpr,
):
    """One forward half-step (``_fwd_half``) over tile ``tile`` of matrix ``mat``, and with ``PAIRS``
    over its mirror image too (off the diagonal), from the one ``S0`` tile read."""
    p, q, rows, cols, rmask, cmask, m2, x = _tile_frame(
        x_in, tile, mat, SRC, A, B, WS, n, rank, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
        MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, X_GIVEN, EVEN, PAIRS)
    _fwd_half(x, m2, mat, p, q, rows, cols, rmask, cmask, WS, P, U, V, PR, PC, CNT, n, K, k, n_rt, n_ct,
              PHASE, MODE, 0, RT_P, CT_P, PLAIN, FAST_EXP)
    if PAIRS:
        if p != q:
            _fwd_half(x, m2, mat, q, p, cols, rows, cmask, rmask, WS, P, U, V, PR, PC, CNT, n, K, k, n_rt,
                      n_ct, PHASE, MODE, 1, RT_P, CT_P, PLAIN, FAST_EXP)


@triton.jit
def _fwd_half(
    x, m2, mat, p, q, rows, cols, rmask, cmask, WS, P, U, V, PR, PC, CNT, n, K, k, n_rt, n_ct,
    PHASE: tl.constexpr, MODE: tl.constexpr, MIRROR: tl.constexpr, RT_P: tl.constexpr, CT_P: tl.constexpr,
    PLAIN: tl.constexpr, FAST_EXP: tl.constexpr,
):
    """One forward half-step over one orientation (``p``, ``q``: its row and column bands; ``rows``,
    ``cols`` and masks its own) of the ``S0`` tile ``x``.

    PR ``[n_mat, n_ct, n]``: per column-tile partial ``lse_j`` for the next row potential.
    PC ``[n_mat, n_rt, n]``: per row-tile partial ``lse_i`` for the next column potential.
    ``CNT [n_mat, n_rt + n_ct]``: arrivals per row band, then per column band (``_arrive``): the last
    tile of a band to finish turns the band's partials into its potential, stored in U or V, so the
    next launch reads ``BM`` (or ``BN``) potentials rather than combining the partials again in every
    tile (at n = 4096 that combine was as much work as the tile itself).
    ``base`` is ``S0`` in iteration 1 and ``T1 = S0 - u_1 - v_1`` after it.
    PHASE 0 (init): S0 -> workspace (MODE 0, the tile itself only); PR = lse_j(S0); the last in a row
    band: U[0] (u_1).
    PHASE 1 (row step k): u = U[k]; PC from base - u; the last in a column band: V[k].
    PHASE 2 (column step k < K): v = V[k]; PR from T1 - (v if k > 1 else 0); the last in a row
    band: U[k + 1].
    PHASE 3 (column step K): P = exp(T1 - u - v) (relative potentials).
    Only the first iteration's partials need ``_lse``'s maximum (PHASE 0, and PHASE 1 at k = 0):
    every later half-step starts from an iterate normalised along the other axis, whose sums lie in
    ``[1 / n, n]`` (``sinkhorn_resident_fwd_kernel``), so its partials are plain sums of
    exponentials, and the band's last program takes the log of their sum (PHASE 2, and PHASE 1 with
    ``PLAIN``, k >= 1). Each entry is formed by the same operations in either orientation."""
    urow = U + mat * K * n + rows
    vcol = V + mat * K * n + cols
    rcount = CNT + mat * (n_rt + n_ct) + p
    ccount = CNT + mat * (n_rt + n_ct) + n_rt + q
    if PHASE == 0:
        if MODE == 0 and not MIRROR:
            tl.store(WS + mat * n * n + rows[:, None] * n + cols[None, :], x, mask=m2)
        part = _lse(tl.where(m2, x, float("-inf")), 1 - MIRROR)
        tl.store(PR + (mat * n_ct + q) * n + rows, part, mask=rmask)
        _arrive(rcount, PR + mat * n_ct * n, rows, rmask, urow, n, n_ct, _LSE, CT_P)
    elif PHASE == 1:
        u = tl.load(urow + k * n, mask=rmask, other=0.0, cache_modifier=".cg")
        # k = 0: the masked loads give u_1 = v_1 = 0, so base = S0
        base = x - _rv(tl.load(urow, mask=rmask & (k > 0), other=0.0, cache_modifier=".cg"), MIRROR)
        base = base - _cv(tl.load(vcol, mask=cmask & (k > 0), other=0.0, cache_modifier=".cg"), MIRROR)
        if PLAIN:
            part = _col_sums(_exp(tl.where(m2, base - _rv(u, MIRROR), float("-inf")), FAST_EXP), MIRROR)
        else:
            part = _lse(tl.where(m2, base - _rv(u, MIRROR), float("-inf")), MIRROR)
        tl.store(PC + (mat * n_rt + p) * n + cols, part, mask=cmask)
        _arrive(ccount, PC + mat * n_rt * n, cols, cmask, vcol + k * n, n, n_rt, _LOG_SUM if PLAIN else _LSE,
                RT_P)
    else:
        t1 = (x - _rv(tl.load(urow, mask=rmask, other=0.0, cache_modifier=".cg"), MIRROR)) \
            - _cv(tl.load(vcol, mask=cmask, other=0.0, cache_modifier=".cg"), MIRROR)
        v = tl.load(vcol + k * n, mask=cmask & (k > 0), other=0.0, cache_modifier=".cg")
        if PHASE == 2:
            # row step k + 1 >= 1 starts from a column-normalised iterate: plain sums (PLAIN)
            part = _row_sums(_exp(tl.where(m2, t1 - _cv(v, MIRROR), float("-inf")), FAST_EXP), MIRROR)
            tl.store(PR + (mat * n_ct + q) * n + rows, part, mask=rmask)
            _arrive(rcount, PR + mat * n_ct * n, rows, rmask, urow + (k + 1) * n, n, n_ct, _LOG_SUM, CT_P)
        else:
            u = tl.load(urow + k * n, mask=rmask & (k > 0), other=0.0, cache_modifier=".cg")
            pv = _exp(tl.where(m2, t1 - _rv(u, MIRROR) - _cv(v, MIRROR), float("-inf")), FAST_EXP)
            tl.store(P + mat * n * n + _rv(rows, MIRROR) * n + _cv(cols, MIRROR), pv, mask=m2)


@triton.jit
def _bwd_tile(
    x_in, tile, mat, SRC, A, B, WS, DP, U, V, CS, RS, G, DX, PR, PC, QR, QC, CNT,
    n, rank, K, k, n_rt, n_ct,
    s0, s1, s2, sa0, sa1, sb0, sb1, sd0, sd1, sd2, scale, grad_scale,
    PHASE: tl.constexpr, MODE: tl.constexpr, SYMMETRIC: tl.constexpr, LAST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr,
    RT_P: tl.constexpr, CT_P: tl.constexpr, X_GIVEN: tl.constexpr, FIRST: tl.constexpr,
    EVEN: tl.constexpr, FAST_EXP: tl.constexpr, PAIRS: tl.constexpr,
):
    """One backward half-step (``_bwd_half``, or with ``LAST`` ``_bwd_last``) over tile ``(p, q)``,
    and with ``PAIRS`` over its mirror image too. ``LAST`` writes ``dM = G * grad_scale`` into DX when
    not symmetric, else ``G`` back into G for ``sinkhorn_tile_sym_kernel``, or with ``PAIRS``
    ``dM = (G + G^T) * grad_scale`` into both tiles of the pair itself (no symmetrising pass): the
    tile's ``G`` and its mirror's are both in registers."""
    p, q, rows, cols, rmask, cmask, m2, x = _tile_frame(
        x_in, tile, mat, SRC, A, B, WS, n, rank, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
        MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, X_GIVEN, EVEN, PAIRS)
    if LAST:
        g = _bwd_last(x, m2, _g_tile(G, mat, tile, rows, cols, n, 0, BM, BN, PAIRS), mat, rows, cols,
                      rmask, cmask, U, V, CS, RS, n, K, 0, FAST_EXP)
        out = DX + mat * n * n + rows[:, None] * n + cols[None, :]
        if PAIRS:
            if p != q:
                gm = _bwd_last(x, m2, _g_tile(G, mat, tile, rows, cols, n, 1, BM, BN, PAIRS), mat, cols,
                               rows, cmask, rmask, U, V, CS, RS, n, K, 1, FAST_EXP)
                # the sums' order of sinkhorn_tile_sym_kernel (G + G^T), so the same bits
                dm = ((g + gm) * grad_scale).to(DX.dtype.element_ty)
                tl.store(out, dm, mask=m2)
                tl.store(DX + mat * n * n + cols[None, :] * n + rows[:, None], dm, mask=m2)
            else:
                tl.store(out, ((g + tl.trans(g)) * grad_scale).to(DX.dtype.element_ty), mask=m2)
        elif SYMMETRIC:
            tl.store(G + mat * n * n + rows[:, None] * n + cols[None, :], g, mask=m2)
        else:
            tl.store(out, (g * grad_scale).to(DX.dtype.element_ty), mask=m2)
    else:
        _bwd_half(x, m2, _g_tile(G, mat, tile, rows, cols, n, 0, BM, BN, PAIRS), mat, p, q, rows, cols,
                  rmask, cmask, WS, DP, U, V, CS, RS, PR, PC, QR, QC, CNT, n, K, k, n_rt, n_ct, sd0, sd1, sd2,
                  PHASE, MODE, 0, BM, BN, RT_P, CT_P, FIRST, FAST_EXP)
        if PAIRS:
            if p != q:
                _bwd_half(x, m2, _g_tile(G, mat, tile, rows, cols, n, 1, BM, BN, PAIRS), mat, q, p, cols,
                          rows, cmask, rmask, WS, DP, U, V, CS, RS, PR, PC, QR, QC, CNT, n, K, k, n_rt, n_ct,
                          sd0, sd1, sd2, PHASE, MODE, 1, BN, BM, RT_P, CT_P, FIRST, FAST_EXP)


@triton.jit
def _bwd_half(
    x, m2, gptr, mat, p, q, rows, cols, rmask, cmask, WS, DP, U, V, CS, RS, PR, PC, QR, QC, CNT,
    n, K, k, n_rt, n_ct, sd0, sd1, sd2,
    PHASE: tl.constexpr, MODE: tl.constexpr, MIRROR: tl.constexpr, RB: tl.constexpr, CB: tl.constexpr,
    RT_P: tl.constexpr, CT_P: tl.constexpr, FIRST: tl.constexpr, FAST_EXP: tl.constexpr,
):
    """One backward half-step but the last over one orientation (``p``, ``q``, ``rows``, ``cols`` as in
    ``_fwd_half``; ``RB``, ``CB``: its numbers of rows and columns; ``gptr``: its tile of ``G``,
    ``_g_tile``). The working gradient's workspace ``G`` holds ``dP * P`` from the first launch (read
    again by the first column step) until the last launch turns it into ``G``; no half-step in
    between reads or writes it.

    Every half-step needs only ``G``'s sums along one axis, and those follow from the previous
    step's sums by one matrix-vector product with the iterate: after column step ``k``,
    ``rowsum(G) = rowsum(G_before) - E_col(k) @ c_k``, and after row step ``k``,
    ``colsum(G) = colsum(G_before) - E_row(k)^T @ r_k``. ``G_before``'s sums are what the step
    before left: ``rowsum(dP * P)`` at the first step, else ``r_{k+1} (1 - rowsum(E_row(k+1)))`` and
    ``c_k (1 - colsum(E_col(k)))``, zero up to the iterates' rounding, which the reference's ``G``
    carries too (dropping them doubled the error at tau = 0.05). The sums ``c_k`` (``CS [n_mat, K,
    n]``) and ``r_k`` (``RS``) are kept, and the last launch forms ``G`` as the reference's sequence
    ``dP * P - E_col(K-1) c_{K-1} - E_row(K-1) r_{K-1} - ... - E_row(0) r_0`` (``_bwd_last``).

    Each half-step forms one iterate: the residual's sums over a tile, ``rowsum(E_row(k+1))`` and
    ``colsum(E_col(k))``, are of the iterate the launch before formed, which left them per tile in
    ``QR [n_mat, n_ct, n]`` (row step ``k + 1``, read by column step ``k``) and ``QC [n_mat, n_rt, n]``
    (column step ``k``, read by row step ``k``). A tile's share of the residual is its own sums', so
    no band reduces them: the program of the same tile in the next launch reads them.

    The sums and the final ``G`` must see the same numbers, bit for bit: ``G`` is then the
    reference's up to the sums' rounding, but where they differ the difference is not projected
    out as the reference's per-step sums would, and at tau = 0.05 it grows. So the last launch forms
    every iterate exactly as the half-steps did (two exponentials per entry and iteration; the
    resident kernel's one exponential and a column factor moved the gradient's error from 1.0x to
    2.4x torch's at n = 1024 when perturbed by 3 ulp, interpreter), and ``dP * P`` is written to
    ``G`` by the first launch and read back by the last rather than formed twice: the first launch
    forms ``S0`` from the logits, and with FMA contraction its product can differ in the last bit
    from the workspace's (on the H200 the gradient's error reached 27x torch's; a half-ulp
    perturbation of that ``S0`` gives 9.7x in the interpreter). A mirrored entry is always formed
    by the same program, in the same orientation.

    PR ``[n_mat, n_ct, n]``: per column-tile partial row sums; PC ``[n_mat, n_rt, n]``: per row-tile
    partial column sums. Iterates: ``T1 - u_k - v_k`` after column step ``k`` (u, v relative, 0 for
    k = 1) and ``T1 - u_k - v_{k-1}`` after row step ``k > 1``, ``S0 - u_1`` after row step 1
    (0-based ``k`` below).
    CNT: arrivals per band, as in ``_fwd_half``: the last tile of a band to finish sums the band's
    partials into CS or RS.
    PHASE 0 (init): S0 -> workspace (MODE 0, the tile itself only); ``dP * P`` into G, its column
    sums into PC; the last in a column band: ``c_{K-1}``.
    PHASE 1 (column step k): ``c_k`` from CS; PR as above; the last in a row band: ``r_k``.
    PHASE 2 (row step k >= 1): ``r_k`` from RS; PC as above, the last in a column band: ``c_{k-1}``."""
    urow = U + mat * K * n + rows
    vcol = V + mat * K * n + cols
    r1 = x - _rv(tl.load(urow, mask=rmask, other=0.0, cache_modifier=".cg"), MIRROR)
    t1 = r1 - _cv(tl.load(vcol, mask=cmask, other=0.0, cache_modifier=".cg"), MIRROR)
    u = tl.load(urow + k * n, mask=rmask & (k > 0), other=0.0, cache_modifier=".cg")
    prow = PR + (mat * n_ct + q) * n + rows
    pcol = PC + (mat * n_rt + p) * n + cols
    qrow = QR + (mat * n_ct + q) * n + rows
    qcol = QC + (mat * n_rt + p) * n + cols
    csum = CS + mat * K * n + cols
    rsum = RS + mat * K * n + rows
    rcount = CNT + mat * (n_rt + n_ct) + p
    ccount = CNT + mat * (n_rt + n_ct) + n_rt + q
    if PHASE == 0:
        if MODE == 0 and not MIRROR:
            tl.store(WS + mat * n * n + rows[:, None] * n + cols[None, :], x, mask=m2)
        v = tl.load(vcol + k * n, mask=cmask & (k > 0), other=0.0, cache_modifier=".cg")
        pv = _exp(tl.where(m2, t1 - _rv(u, MIRROR) - _cv(v, MIRROR), float("-inf")), FAST_EXP)
        dp = tl.load(DP + mat * sd0 + _rv(rows, MIRROR) * sd1 + _cv(cols, MIRROR) * sd2, mask=m2, other=0.0)
        g = dp.to(tl.float32) * pv
        tl.store(gptr, g, mask=m2)
        tl.store(pcol, _col_sums(g, MIRROR), mask=cmask)
        _arrive(ccount, PC + mat * n_rt * n, cols, cmask, csum + k * n, n, n_rt, _SUM, RT_P)
    elif PHASE == 1:
        c = tl.load(csum + k * n, mask=cmask, other=0.0, cache_modifier=".cg")
        v = tl.load(vcol + k * n, mask=cmask & (k > 0), other=0.0, cache_modifier=".cg")
        e = _exp(tl.where(m2, t1 - _rv(u, MIRROR) - _cv(v, MIRROR), float("-inf")), FAST_EXP)
        # this tile's column sums of E_col(k), for row step k (none follows k = 0: it is the last)
        tl.store(qcol, _col_sums(e, MIRROR), mask=cmask & (k > 0))
        if FIRST:
            # (k = K - 1) G's row sums before the first step: those of dP * P, from the init pass
            w = tl.load(gptr, mask=m2, other=0.0, cache_modifier=".cg")
            part = _row_sums(w - e * _cv(c, MIRROR), MIRROR)
        else:
            # after row step k + 1: r_{k+1} (1 - rowsum(E_row(k + 1))), this tile's share (r_{k+1}
            # counted in column tile 0); that launch formed E_row(k + 1) and left its sums in QR
            rp = tl.load(rsum + (k + 1) * n, mask=rmask, other=0.0, cache_modifier=".cg")
            qr = tl.load(qrow, mask=rmask, other=0.0, cache_modifier=".cg")
            # added in the tile's first column, so that everything is one reduction of the tile (a
            # vector combined with the reduction's result would change layout through shared memory,
            # every replica of an element writing its word: racecheck's hazards in run59)
            carry = tl.where(q == 0, rp, 0.0) - rp * qr
            first = _cv(tl.arange(0, CB) == 0, MIRROR)
            part = _row_sums(tl.where(first, _rv(carry, MIRROR), 0.0) - e * _cv(c, MIRROR), MIRROR)
        tl.store(prow, part, mask=rmask)
        _arrive(rcount, PR + mat * n_ct * n, rows, rmask, rsum + k * n, n, n_ct, _SUM, CT_P)
    else:
        r = tl.load(rsum + k * n, mask=rmask, other=0.0, cache_modifier=".cg")
        vp = tl.load(vcol + (k - 1) * n, mask=cmask & (k > 1), other=0.0, cache_modifier=".cg")
        e = _exp(tl.where(m2, t1 - _rv(u, MIRROR) - _cv(vp, MIRROR), float("-inf")), FAST_EXP)
        # this tile's row sums of E_row(k), for column step k - 1
        tl.store(qrow, _row_sums(e, MIRROR), mask=rmask)
        # G's column sums after column step k: c_k (1 - colsum(E_col(k))), this tile's share (c_k
        # counted in row tile 0); column step k formed E_col(k) and left its sums in QC
        c = tl.load(csum + k * n, mask=cmask, other=0.0, cache_modifier=".cg")
        qc = tl.load(qcol, mask=cmask, other=0.0, cache_modifier=".cg")
        carry = tl.where(p == 0, c, 0.0) - c * qc  # in the tile's first row, as in column steps
        first = _rv(tl.arange(0, RB) == 0, MIRROR)
        part = _col_sums(tl.where(first, _cv(carry, MIRROR), 0.0) - e * _rv(r, MIRROR), MIRROR)
        tl.store(pcol, part, mask=cmask)
        _arrive(ccount, PC + mat * n_rt * n, cols, cmask, csum + (k - 1) * n, n, n_rt, _SUM, RT_P)


@triton.jit
def _bwd_last(x, m2, gptr, mat, rows, cols, rmask, cmask, U, V, CS, RS, n, K, MIRROR: tl.constexpr,
              FAST_EXP: tl.constexpr):
    """The last backward launch's working gradient ``G`` on one orientation (``_bwd_half``): ``dP * P``
    from the first launch, less every step's iterate times its sums, in the reference's order (last
    iteration first, column step before row step), with ``r_0`` the row sums of the last step."""
    urow = U + mat * K * n + rows
    vcol = V + mat * K * n + cols
    csum = CS + mat * K * n + cols
    rsum = RS + mat * K * n + rows
    r1 = x - _rv(tl.load(urow, mask=rmask, other=0.0, cache_modifier=".cg"), MIRROR)
    t1 = r1 - _cv(tl.load(vcol, mask=cmask, other=0.0, cache_modifier=".cg"), MIRROR)
    r0 = tl.load(rsum, mask=rmask, other=0.0, cache_modifier=".cg")
    g = tl.load(gptr, mask=m2, other=0.0, cache_modifier=".cg")
    t1 = tl.where(m2, t1, float("-inf"))
    for t in range(0, K - 1):
        j = K - 1 - t  # iterations K-1 .. 1 (relative potentials)
        u = tl.load(urow + j * n, mask=rmask, other=0.0)
        v = tl.load(vcol + j * n, mask=cmask, other=0.0)
        vp = tl.load(vcol + (j - 1) * n, mask=cmask & (j > 1), other=0.0)
        c = tl.load(csum + j * n, mask=cmask, other=0.0)
        rj = tl.load(rsum + j * n, mask=rmask, other=0.0)
        g = g - _exp(t1 - _rv(u, MIRROR) - _cv(v, MIRROR), FAST_EXP) * _cv(c, MIRROR)
        g = g - _exp(t1 - _rv(u, MIRROR) - _cv(vp, MIRROR), FAST_EXP) * _rv(rj, MIRROR)
    # iteration 0: E_col = exp(T1), E_row = exp(S0 - u_1)
    g = g - _exp(t1, FAST_EXP) * _cv(tl.load(csum, mask=cmask, other=0.0), MIRROR)
    g = g - _exp(tl.where(m2, r1, float("-inf")), FAST_EXP) * _rv(r0, MIRROR)
    return g


@triton.jit
def _program_tile(flip):
    """This program's ``(tile, matrix)``: its grid indices, or with ``flip`` (1) both mirrored, so the
    launch walks the matrices from the end (``SERPENTINE``)."""
    tile = tl.program_id(0)
    mat = tl.program_id(1).to(tl.int64)
    tile = tile + flip * (tl.num_programs(0) - 1 - 2 * tile)
    mat = mat + flip * (tl.num_programs(1) - 1 - 2 * mat)
    return tile, mat


@triton.jit
def sinkhorn_tile_fwd_kernel(
    SRC, A, B, WS, P, U, V, PR, PC, CNT,
    n, rank, K, k, n_rt, n_ct, flip,
    s0, s1, s2, sa0, sa1, sb0, sb1, scale,
    PHASE: tl.constexpr, MODE: tl.constexpr, SYMMETRIC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr,
    RT_P: tl.constexpr, CT_P: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr, PLAIN: tl.constexpr,
    EVEN: tl.constexpr = False, FAST_EXP: tl.constexpr = False, PAIRS: tl.constexpr = False,
):
    """One forward half-step (``_fwd_tile``); grid ``(tiles, n_mat)``: ``n_rt * n_ct`` tiles, or with
    ``PAIRS`` (symmetric logits, square tiles) ``n_ct (n_ct + 1) / 2`` pairs of mirrored tiles
    (``_tile_index``). ``EARLY`` (with ``PDL``): the S0 tile is read (or formed from the factors)
    before the wait, overlapping the previous launch, which must not write what it reads (see
    ``tiled_fwd``). ``EVEN``: the tiles divide ``n`` (``_masks``); ``FAST_EXP``: ``_exp``'s
    flush-to-zero form (sm_90 builds); ``flip``: ``_program_tile``."""
    tile, mat = _program_tile(flip)
    x = _held_tile(tile, mat, SRC, A, B, WS, n, rank, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
                   MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, EARLY, EVEN, PAIRS)
    pdl_prologue(PDL)
    _fwd_tile(x, tile, mat, SRC, A, B, WS, P, U, V, PR, PC, CNT,
              n, rank, K, k, n_rt, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
              PHASE, MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, RT_P, CT_P, EARLY, PLAIN, EVEN, FAST_EXP, PAIRS)


@triton.jit
def sinkhorn_tile_bwd_kernel(
    SRC, A, B, WS, DP, U, V, CS, RS, G, DX, PR, PC, QR, QC, CNT,
    n, rank, K, k, n_rt, n_ct, flip,
    s0, s1, s2, sa0, sa1, sb0, sb1, sd0, sd1, sd2, scale, grad_scale,
    PHASE: tl.constexpr, MODE: tl.constexpr, SYMMETRIC: tl.constexpr, LAST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr,
    RT_P: tl.constexpr, CT_P: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr, FIRST: tl.constexpr,
    EVEN: tl.constexpr = False, FAST_EXP: tl.constexpr = False, PAIRS: tl.constexpr = False,
):
    """One backward half-step (``_bwd_tile``); grid, ``EARLY``, ``EVEN``, ``FAST_EXP`` and ``PAIRS`` as
    in ``sinkhorn_tile_fwd_kernel``; ``flip``: ``_program_tile``."""
    tile, mat = _program_tile(flip)
    x = _held_tile(tile, mat, SRC, A, B, WS, n, rank, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
                   MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, EARLY, EVEN, PAIRS)
    pdl_prologue(PDL)
    _bwd_tile(x, tile, mat, SRC, A, B, WS, DP, U, V, CS, RS, G, DX, PR, PC, QR, QC, CNT,
              n, rank, K, k, n_rt, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, sd0, sd1, sd2, scale,
              grad_scale, PHASE, MODE, SYMMETRIC, LAST, BM, BN, BK, DOT_IEEE, RT_P, CT_P, EARLY, FIRST,
              EVEN, FAST_EXP, PAIRS)


@triton.jit
def _store_dm(DX, offs, dm, mask, n, PARTS: tl.constexpr):
    """``dM`` (fp32 values) at ``DX + offs``: in ``DX``'s dtype, or with ``PARTS`` as the three bf16 parts
    of :mod:`.gemm_fp32` in ``DX [3, n_mat, n, n]`` (``n_mat``: the grid's second axis), which the
    caller's fp32 GEMMs take without a split pass of their own."""
    if PARTS:
        store_parts(DX, offs, dm, mask, tl.num_programs(1).to(tl.int64) * n * n)
    else:
        tl.store(DX + offs, dm.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _sym_tile(tile, mat, G, DX, n, n_ct, grad_scale, BM: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr,
              PARTS: tl.constexpr):
    """``dM = (G + G^T) * grad_scale`` (``grad_scale = 0.5 / tau``) on one tile."""
    _, _, rows, cols, rmask, cmask, m2 = _tile_index(tile, n, n_ct, BM, BN, EVEN)
    base = G + mat * n * n
    g = tl.load(base + rows[:, None] * n + cols[None, :], mask=m2, other=0.0, cache_modifier=".cg")
    gt = tl.load(base + cols[:, None] * n + rows[None, :], mask=cmask[:, None] & rmask[None, :], other=0.0,
                 cache_modifier=".cg")
    dm = (g + tl.trans(gt)) * grad_scale
    _store_dm(DX, mat * n * n + rows[:, None] * n + cols[None, :], dm, m2, n, PARTS)


@triton.jit
def sinkhorn_tile_sym_kernel(G, DX, n, n_ct, grad_scale, flip, BM: tl.constexpr, BN: tl.constexpr,
                             PDL: tl.constexpr, EVEN: tl.constexpr = False, PARTS: tl.constexpr = False):
    """``dM = (G + G^T) * grad_scale``, tile by tile (``PARTS``: :func:`_store_dm`); grid
    ``(n_rt * n_ct, n_mat)``."""
    pdl_prologue(PDL)
    tile, mat = _program_tile(flip)
    _sym_tile(tile, mat, G, DX, n, n_ct, grad_scale, BM, BN, EVEN, PARTS)


@triton.jit
def _held_tile(
    pid, mat, SRC, A, B, WS, n, rank, n_ct, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
    MODE: tl.constexpr, SYMMETRIC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr, HOLD: tl.constexpr,
    EVEN: tl.constexpr, PAIRS: tl.constexpr,
):
    """With ``HOLD``, the S0 tile ``pid`` (``_tile_index``), read (or formed) by an early PDL launch
    before its wait; ``0.0`` otherwise."""
    if HOLD:
        _, _, rows, cols, _, _, _ = _tile_index(pid, n, n_ct, BM, BN, EVEN, PAIRS)
        x = _tile_logits(SRC, A, B, WS, mat, rows, cols, n, rank, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
                         MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, EVEN)
    else:
        x = 0.0
    return x


# --- resident variant: one tile per program, tagged partials instead of barriers --------------


@triton.jit
def _tagged(val, tag):
    """fp32 ``val`` and the int ``tag`` in one int64 word (tag in the high half): a reader that
    sees the tag sees the value, since an aligned 8-byte store is never split."""
    bits = val.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    return bits | (tl.cast(tag, tl.int64) << 32)


# One thread's wait for one tagged word, after a first load of all of them gave $1: where the high
# half of $1 is not yet the tag $3, volatile loads of the word at $2 until it is, at most $4 of them,
# then (if the tag never came) one relaxed add to the failure count at $5. Nothing where $3 < 0
# (masked). Returns the last word read.
_SPIN_ASM = tl.constexpr("""{
.reg .pred spin_p, spin_q;
.reg .b32 spin_lo, spin_hi, spin_n;
mov.b64 $0, $1;
setp.lt.s32 spin_p, $3, 0;
@spin_p bra spin_done;
mov.b64 {spin_lo, spin_hi}, $0;
setp.ne.s32 spin_p, spin_hi, $3;
@!spin_p bra spin_done;
mov.u32 spin_n, 0;
spin_loop:
ld.volatile.global.b64 $0, [$2];
mov.b64 {spin_lo, spin_hi}, $0;
add.u32 spin_n, spin_n, 1;
setp.ne.s32 spin_p, spin_hi, $3;
setp.lt.u32 spin_q, spin_n, $4;
and.pred spin_q, spin_p, spin_q;
@spin_q bra spin_loop;
@spin_p red.relaxed.gpu.global.add.u64 [$5], 1;
spin_done:
}""")


@triton.jit
def _await_tagged(ptrs, mask, tag, FAIL, MAX_SPINS: tl.constexpr, THREAD_POLL: tl.constexpr):
    """The fp32 values of the words ``ptrs`` (where ``mask``), once every one carries ``tag``.

    Polls with volatile loads (L2, never a stale L1 line). Bounded: after ``MAX_SPINS`` polls it
    counts a failure in ``FAIL`` and returns what it has, rather than hang. Both ways start with one
    load of every word (all reads in flight at once). ``THREAD_POLL``: then each thread polls again
    only its own words still without the tag (inline PTX, a loop per word), and the caller's
    reduction over the words is the only block-wide step; else the program polls as a whole, a
    block-wide count of the words still missing deciding each new round of loads (the CPU
    interpreter's way: it has no inline assembly). Per-thread polls measured 4% faster on the H200
    at n = 1024 (NOTES)."""
    w = tl.load(ptrs, mask=mask, other=0, volatile=True)
    if THREAD_POLL:
        # the first load issues every word's read at once; only words still missing are polled again,
        # each by its own thread
        want = tl.where(mask, tag, -1)
        w = tl.inline_asm_elementwise(
            _SPIN_ASM, "=l,l,l,r,r,l",
            [w, ptrs.to(tl.int64, bitcast=True), want, tl.full(want.shape, MAX_SPINS, tl.int32),
             (FAIL + tl.zeros(want.shape, tl.int32)).to(tl.int64, bitcast=True)],
            dtype=tl.int64, is_pure=False, pack=1)
        return (w & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)
    missing = tl.sum(tl.sum(tl.where(mask & ((w >> 32).to(tl.int32) != tag), 1, 0), axis=1), axis=0)
    spins = 0
    while (missing > 0) & (spins < MAX_SPINS):
        w = tl.load(ptrs, mask=mask, other=0, volatile=True)
        missing = tl.sum(tl.sum(tl.where(mask & ((w >> 32).to(tl.int32) != tag), 1, 0), axis=1), axis=0)
        spins += 1
    if missing > 0:
        tl.atomic_add(FAIL, 1)
    return (w & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _resident_frame(pid, mat, SRC, A, B, U, V, PR, PC, FAIL, n, rank, K, n_rt, n_ct,
                    s0, s1, s2, sa0, sa1, sb0, sb1, scale,
                    MODE: tl.constexpr, SYMMETRIC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, DOT_IEEE: tl.constexpr, RT_P: tl.constexpr, CT_P: tl.constexpr):
    """Tile ``(p, q) = divmod(pid, n_ct)`` of matrix ``mat`` as a resident program sees it: indices,
    masks, its ``S0``, its failure counter, its matrix's partial buffers, the offsets of its rows'
    and columns' potentials, and the partial blocks' indices and masks."""
    p, q, rows, cols, rmask, cmask, m2 = _tile_index(pid, n, n_ct, BM, BN, False)
    if MODE == 0 and SYMMETRIC:
        # the transposed tile read transposed (once per call), not transposed in registers: the tile
        # then keeps the layout of everything the loop combines it with
        x = _tile_logits(SRC, A, B, SRC, mat, rows, cols, n, rank, s0, s1, s2, sa0, sa1, sb0, sb1, 1.0,
                         MODE, False, BM, BN, BK, DOT_IEEE, False)
        xt = tl.load(SRC + mat * s0 + cols[None, :] * s1 + rows[:, None] * s2, mask=m2, other=0.0)
        x = (x + xt.to(tl.float32)) * scale
    else:
        x = _tile_logits(SRC, A, B, SRC, mat, rows, cols, n, rank, s0, s1, s2, sa0, sa1, sb0, sb1, scale,
                         MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, False)
    ts_c = tl.arange(0, CT_P)
    ts_r = tl.arange(0, RT_P)
    return (p, q, rows, cols, rmask, cmask, m2, x, FAIL + mat, PR + mat * 2 * n_ct * n,
            PC + mat * 2 * n_rt * n, U + mat * K * n + rows, V + mat * K * n + cols, ts_c, ts_r,
            (ts_c < n_ct)[:, None] & rmask[None, :], (ts_r < n_rt)[:, None] & cmask[None, :])


@triton.jit
def sinkhorn_resident_fwd_kernel(
    SRC, A, B, P, U, V, PR, PC, FAIL,
    n, rank, K, n_rt, n_ct,
    s0, s1, s2, sa0, sa1, sb0, sb1, scale,
    MODE: tl.constexpr, SYMMETRIC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr,
    RT_P: tl.constexpr, CT_P: tl.constexpr, MAX_SPINS: tl.constexpr, THREAD_POLL: tl.constexpr,
):
    """The whole forward in one launch, one program per tile (grid ``(n_rt * n_ct, n_mat)``, all
    resident at once). The potentials are ``_fwd_tile``'s; where things live and how the half-steps
    after the first iteration reduce differ:

    * the ``S0`` tile becomes ``T1`` (in log2 units, ``-inf`` outside the matrix) after the first
      iteration and stays in registers for the whole call, with the current potentials of the
      tile's rows and columns; ``U``, ``V`` are only written;
    * the partials pass through ``PR [n_mat, 2, n_ct, n]`` and ``PC [n_mat, 2, n_rt, n]`` (int64,
      zeroed) as tagged words (``_tagged``): step ``s`` (0 the first pass, ``2k + 1`` row step
      ``k``, ``2k + 2`` column step ``k``) writes its partials with tag ``s + 1`` into copy
      ``(s // 2) % 2``, and step ``s + 1`` waits for that tag on exactly the words it reads: a row
      step on its row band's partials, a column step on its column band's. There is no barrier
      and no fence: a half-step costs one write and one round of reads of the partials;
    * two copies suffice: the next write into a copy is four steps later, and any program that far
      ahead has (through the chain of partials it waited on) seen every program finish the step
      that read the copy;
    * the first iteration (from ``S0``, whose rows and columns can be anything) reduces as
      ``_lse`` does, with its maximum. Every later half-step starts from a normalised iterate: after
      a row step every entry is at most 1 and, the matrix before it having had unit column sums,
      every column sums to at least ``1 / n`` (rows alike after a column step). So the exponentials
      need no shift (nothing above 1, a sum no smaller than ``1 / n``: no overflow, no underflow of a
      sum, the same relative precision) and the partials are plain sums;
    * one exponential per entry per iteration: ``E = exp(T1 - v)`` gives the row sums ``r``
      (``u = log r``), and the column step sums ``E / r`` (``v += log`` of that), the iterate after
      the row step, without a second exponential."""
    mat = tl.program_id(1).to(tl.int64)
    (p, q, rows, cols, rmask, cmask, m2, x, fail, pr, pc, urow, vcol, ts_c, ts_r, pr_mask,
     pc_mask) = _resident_frame(
        tl.program_id(0), mat, SRC, A, B, U, V, PR, PC, FAIL, n, rank, K, n_rt, n_ct,
        s0, s1, s2, sa0, sa1, sb0, sb1, scale, MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, RT_P, CT_P)
    # the first iteration, from S0: row step (partials of step 0, tag 1), then column step
    x = tl.where(m2, x, float("-inf"))
    tl.store(pr + q * n + rows, _tagged(_lse(x, 1), 1), mask=rmask)
    parts = _await_tagged(pr + ts_c[:, None] * n + rows[None, :], pr_mask, 1, fail, MAX_SPINS, THREAD_POLL)
    u = _lse(tl.where(pr_mask, parts, float("-inf")), 0)
    tl.store(urow, u, mask=rmask & (q == 0))
    x = x - u[:, None]
    tl.store(pc + p * n + cols, _tagged(_lse(x, 0), 2), mask=cmask)
    parts = _await_tagged(pc + ts_r[:, None] * n + cols[None, :], pc_mask, 2, fail, MAX_SPINS, THREAD_POLL)
    v = _lse(tl.where(pc_mask, parts, float("-inf")), 0)
    tl.store(vcol, v, mask=cmask & (p == 0))
    # later iterations: T1 in log2 units, relative potentials (log2 units) from 0, plain sums
    t1 = (x - v[None, :]) * LOG2E
    e = tl.exp2(t1)
    v = tl.zeros([BN], dtype=tl.float32)
    rinv = tl.full([BM], 1.0, tl.float32)
    for k in range(1, K):
        c = k % 2
        # row step k: E = exp(T1 - v_{k-1}) summed along the rows (step 2k, tag 2k + 1)
        tl.store(pr + (c * n_ct + q) * n + rows, _tagged(tl.sum(e, axis=1), 2 * k + 1), mask=rmask)
        parts = _await_tagged(pr + (c * n_ct + ts_c[:, None]) * n + rows[None, :], pr_mask, 2 * k + 1, fail,
                              MAX_SPINS, THREAD_POLL)
        r = tl.sum(parts, axis=0)
        r = tl.where(r > 0.0, r, 1.0)  # rows outside the matrix
        tl.store(urow + k * n, tl.log2(r) * LN2, mask=rmask & (q == 0))
        rinv = 1.0 / r
        # column step k: the iterate after the row step, E / r, summed along the columns
        tl.store(pc + (c * n_rt + p) * n + cols, _tagged(tl.sum(e * rinv[:, None], axis=0), 2 * k + 2),
                 mask=cmask)
        parts = _await_tagged(pc + (c * n_rt + ts_r[:, None]) * n + cols[None, :], pc_mask, 2 * k + 2, fail,
                              MAX_SPINS, THREAD_POLL)
        s = tl.sum(parts, axis=0)
        v = v + tl.log2(tl.where(s > 0.0, s, 1.0))
        tl.store(vcol + k * n, v * LN2, mask=cmask & (p == 0))
        e = tl.exp2(t1 - v[None, :])
    # P = exp(T1 - u - v) = exp(T1 - v) / r
    tl.store(P + mat * n * n + rows[:, None] * n + cols[None, :], e * rinv[:, None], mask=m2)


@triton.jit
def sinkhorn_resident_bwd_kernel(
    SRC, A, B, DP, U, V, G, DX, PR, PC, FAIL,
    n, rank, K, n_rt, n_ct,
    s0, s1, s2, sa0, sa1, sb0, sb1, sd0, sd1, sd2, scale, grad_scale,
    MODE: tl.constexpr, SYMMETRIC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr,
    RT_P: tl.constexpr, CT_P: tl.constexpr, MAX_SPINS: tl.constexpr, THREAD_POLL: tl.constexpr,
    PARTS: tl.constexpr = False,
):
    """The whole backward in one launch, one resident program per tile, as
    ``sinkhorn_resident_fwd_kernel``: ``T1`` (log2 units) and the working-gradient tile stay in
    registers, the partial sums pass as tagged words (step 0: ``G = dP * P``, writes column sums;
    step ``2t + 1``: column step ``k = K - 1 - t``, writes row sums; ``2t + 2``: row step ``k``,
    writes column sums). The last row step writes ``dM`` (or, symmetric, ``G`` for the caller's
    symmetrising pass). Same sums as ``_bwd_tile``, one exponential per entry per iteration: the row
    step's iterate is the column step's times ``exp(v_k - v_{k-1})`` per column (``v_0 := 0``
    relative, and ``-v_1`` before the first column step, so that ``k = 0`` gives ``exp(S0 - u_1)``).
    The factor is bounded: ``|v_k - v_{k-1}| <= log n`` for ``k >= 1`` (column sums of a row
    normalised iterate lie in ``[1/n, n]``), and at ``k = 0`` it is at most ``n``."""
    mat = tl.program_id(1).to(tl.int64)
    (p, q, rows, cols, rmask, cmask, m2, x, fail, pr, pc, urow, vcol, ts_c, ts_r, pr_mask,
     pc_mask) = _resident_frame(
        tl.program_id(0), mat, SRC, A, B, U, V, PR, PC, FAIL, n, rank, K, n_rt, n_ct,
        s0, s1, s2, sa0, sa1, sb0, sb1, scale, MODE, SYMMETRIC, BM, BN, BK, DOT_IEEE, RT_P, CT_P)
    v1 = tl.load(vcol, mask=cmask, other=0.0)
    t1 = (x - tl.load(urow, mask=rmask, other=0.0)[:, None]) - v1[None, :]
    t1 = tl.where(m2, t1 * LOG2E, float("-inf"))
    v1 = v1 * LOG2E
    u = tl.load(urow + (K - 1) * n, mask=rmask & (K > 1), other=0.0) * LOG2E
    v = tl.load(vcol + (K - 1) * n, mask=cmask & (K > 1), other=0.0) * LOG2E
    dp = tl.load(DP + mat * sd0 + rows[:, None] * sd1 + cols[None, :] * sd2, mask=m2, other=0.0)
    g = dp.to(tl.float32) * tl.exp2(t1 - u[:, None] - v[None, :])
    tl.store(pc + p * n + cols, _tagged(tl.sum(g, axis=0), 1), mask=cmask)
    for t in range(K):
        k = K - 1 - t
        c = t % 2
        u = tl.load(urow + k * n, mask=rmask & (k > 0), other=0.0) * LOG2E
        v = tl.load(vcol + k * n, mask=cmask & (k > 0), other=0.0) * LOG2E
        vp = tl.load(vcol + (k - 1) * n, mask=cmask & (k > 1), other=0.0) * LOG2E
        vp = tl.where(k > 0, vp, -v1)
        # column step k: the column band's column sums of step 2t
        parts = _await_tagged(pc + (c * n_rt + ts_r[:, None]) * n + cols[None, :], pc_mask, 2 * t + 1, fail,
                              MAX_SPINS, THREAD_POLL)
        col = tl.sum(parts, axis=0)
        e = tl.exp2(t1 - u[:, None] - v[None, :])
        g = g - e * col[None, :]
        tl.store(pr + (c * n_ct + q) * n + rows, _tagged(tl.sum(g, axis=1), 2 * t + 2), mask=rmask)
        # row step k: the row band's row sums of step 2t + 1
        parts = _await_tagged(pr + (c * n_ct + ts_c[:, None]) * n + rows[None, :], pr_mask, 2 * t + 2, fail,
                              MAX_SPINS, THREAD_POLL)
        row = tl.sum(parts, axis=0)
        g = g - (e * tl.exp2(v - vp)[None, :]) * row[:, None]
        if k > 0:
            tl.store(pc + ((1 - c) * n_rt + p) * n + cols, _tagged(tl.sum(g, axis=0), 2 * t + 3), mask=cmask)
    out = rows[:, None] * n + cols[None, :]
    if SYMMETRIC:
        tl.store(G + mat * n * n + out, g, mask=m2)
    else:
        _store_dm(DX, mat * n * n + out, g * grad_scale, m2, n, PARTS)


# --- launchers ---------------------------------------------------------------------------------


def _small_block(n: int, n_mat: int, device: torch.device) -> tuple[int, int]:
    npad = triton.next_power_of_2(max(n, 1))
    mb = max(1, SMALL_BLOCK_ELEMS // (npad * npad))
    if device.type == "cuda":
        # keep enough programs to fill the GPU when the batch is moderate
        mb = min(mb, triton.next_power_of_2(max(1, triton.cdiv(n_mat, 128))))
    return mb, npad


def _small_warps(mb: int, npad: int) -> int:
    return 4 if mb * npad * npad >= 1024 else (2 if mb * npad * npad >= 256 else 1)


# warps of the last backward launch, which holds the working gradient's tile beside the iterate's over
# its K-step loop (at 64 x 64 with pairs: 246 registers a thread at 4 warps, spills at 2)
LAST_WARPS = 4


def _tile_warps(bm: int, bn: int) -> int:
    """Warps of a one-launch-per-half-step program: 2 up to 64 x 64 tiles, 4 up to 8192 entries, else 8.

    At n = 4096 (64 x 64, symmetric, CUDA graphs, H200) fwd / fwd+bwd took 0.640 / 1.944 ms at 2 warps,
    0.725 / 2.152 at 4 and 1.083 / 3.354 at 8 with pairs, and fwd+bwd 2.213 against 2.559 ms at 2 and
    4 warps one program per tile (bench/results/2026-11-30-h200-run91; run92 again: 1.928 against
    2.157, and 2.216 against 2.571): a half-step's tile sums cross fewer warps (shuffles rather than
    shared memory and barriers), and its registers leave enough programs an SM."""
    if bm * bn <= 4096:
        return 2
    return 4 if bm * bn < 8192 else 8


def _tiles(n: int) -> tuple[int, int]:
    """``(BM, BN)`` of the tiled kernels: ``TILE_OVERRIDE``, else the ``UNIMIXER_SINKHORN_TILE``
    switch (``"BMxBN"``), else 64 x 64 (smaller for small ``n``); warps by ``_tile_warps``.

    The one-launch-per-half-step kernels are latency-bound: a 64 x 128 tile per 8-warp block left one
    block per SM at n = 1024 (Nsight Compute: 13% achieved occupancy, 77% of scheduler cycles with
    no eligible warp). With PDL, fwd+bwd (ms, CUDA graphs, run15): n = 1024: 64 x 128 0.435,
    64 x 64 0.335, 32 x 128 0.326, 32 x 64 0.345, 16 x 128 0.605; n = 4096: 5.51, **4.05**, 5.34,
    4.95. 64 x 64 is the best at n = 4096 and within 3% of the best at n = 1024."""
    if TILE_OVERRIDE is not None:
        return TILE_OVERRIDE
    mode = switch(TILE_SWITCH)
    if mode != "auto":
        bm, _, bn = mode.partition("x")
        ok = bm.isdigit() and bn.isdigit()
        bm, bn = (int(bm), int(bn)) if ok else (0, 0)
        if not (ok and all(16 <= t <= 256 and t & (t - 1) == 0 for t in (bm, bn)) and bm * bn <= 16384):
            raise ValueError(f"{TILE_SWITCH}: expected 'auto' or 'BMxBN' with powers of two from 16 to 256 "
                             f"and BM * BN <= 16384 (e.g. '32x128'), got {mode!r}")
        return bm, bn
    npad = triton.next_power_of_2(n)
    return min(64, max(16, npad)), min(64, max(16, npad))


def _resident_args(n: int, n_mat: int, device: torch.device, meta: dict):
    """``(n_rt, n_ct, meta, FAIL, PR, PC)`` of the resident kernels, or ``None`` where they are off
    (``RESIDENT``), or one program per tile would not fit the GPU at once, or the launch cannot be
    cooperative (a Triton without ``launch_cooperative_grid``: then nothing would guarantee that the
    programs are co-resident). On the CPU interpreter, which runs programs one after another: where
    a matrix is one tile."""
    if not RESIDENT:
        return None
    bm, bn = TILE_OVERRIDE or RESIDENT_TILE
    n_rt, n_ct = triton.cdiv(n, bm), triton.cdiv(n, bn)
    cooperative = triton_launch_option("launch_cooperative_grid")
    if device.type == "cuda" and not cooperative:
        return None
    if n_rt * n_ct > (sm_count(device) // n_mat if device.type == "cuda" else 1):
        return None
    warps, rt_p, ct_p = _resident_shape(bm, bn, n_rt, n_ct)
    meta = dict(BM=bm, BN=bn, BK=meta["BK"], DOT_IEEE=meta["DOT_IEEE"], RT_P=rt_p, CT_P=ct_p,
                MAX_SPINS=RESIDENT_MAX_SPINS, THREAD_POLL=_thread_poll(device), num_warps=warps)
    if cooperative:
        meta["launch_cooperative_grid"] = True
    # one zeroed buffer (one fill): the partials of both axes, then a failure count per matrix
    words = torch.zeros(n_mat * 2 * (n_ct + n_rt) * n + n_mat, device=device, dtype=torch.int64)
    pr = words[:n_mat * 2 * n_ct * n].view(n_mat, 2, n_ct, n)
    pc = words[n_mat * 2 * n_ct * n:-n_mat].view(n_mat, 2, n_rt, n)
    fail = words[-n_mat:]
    return n_rt, n_ct, meta, fail, pr, pc


def _resident_shape(bm: int, bn: int, n_rt: int, n_ct: int) -> tuple[int, int, int]:
    """``(warps, RT_P, CT_P)`` of a resident program: ``RESIDENT_WARPS`` for tiles of 8192 entries or
    more, else 4; the partials' blocks ``[RT_P, BN]`` and ``[CT_P, BM]`` hold every tile's words and
    at least two words per thread (one 16-byte load each): smaller ones would be replicated across
    warps, whose reductions then write the same shared-memory words (a benign race that
    compute-sanitizer's racecheck reports)."""
    warps = RESIDENT_WARPS if bm * bn >= 8192 else 4
    least = 2 * 32 * warps
    return (warps, max(triton.next_power_of_2(n_rt), least // bn),
            max(triton.next_power_of_2(n_ct), least // bm))


def _thread_poll(device: torch.device) -> bool:
    """The resident kernels' ``THREAD_POLL`` (``UNIMIXER_SINKHORN_POLL``): per-thread polls in inline
    PTX, except on the CPU interpreter (no inline assembly), where 'block' is the only way."""
    mode = switch(POLL_SWITCH)
    if mode not in ("thread", "block"):
        raise ValueError(f"{POLL_SWITCH}: expected 'thread' or 'block', got {mode!r}")
    return mode == "thread" and device.type == "cuda"


def _fp_fusion(formed: bool) -> bool:
    """The resident kernels' ``enable_fp_fusion``: on where S0 is ``formed`` as a low-rank product
    (Lite), else ``DENSE_FP_FUSION``."""
    return formed or DENSE_FP_FUSION


def _check_fail(fail: torch.Tensor) -> None:
    if RESIDENT_CHECK and int(fail.sum().item()) != 0:
        raise RuntimeError("sinkhorn resident kernel: a wait for partials timed out "
                           "(programs not co-resident)")


def _as_batch(t: torch.Tensor) -> torch.Tensor:
    """``[..., n, n]`` as ``[n_mat, n, n]``: a view when the leading dims allow it (any strides of
    the last two dims are read as they are), else one copy."""
    return t.reshape(math.prod(t.shape[:-2]), t.shape[-2], t.shape[-1])


def _check_compute_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: the Triton Sinkhorn takes float32, float16 or bfloat16, got {t.dtype}")


def small_fwd(x, omega, n_mat, n, iters, tau, symmetric):
    """Batched in-register forward. Dense: ``x [n_mat, n, n]``, ``omega None``. Lite: ``x`` is the
    basis ``[b, n, n]`` and ``omega [n_mat, b]``. Returns ``(P, U, V)``, all fp32."""
    lite = omega is not None
    p = new_output((n_mat, n, n), like=x, dtype=torch.float32)
    u = new_output((n_mat, iters, n), like=x, dtype=torch.float32)
    v = new_output((n_mat, iters, n), like=x, dtype=torch.float32)
    if n_mat == 0:
        return p, u, v
    mb, npad = _small_block(n, n_mat, x.device)
    om = omega if lite else x
    sinkhorn_small_fwd_kernel[(triton.cdiv(n_mat, mb),)](
        x, om, p, u, v,
        n_mat, n, omega.shape[1] if lite else 0, iters,
        x.stride(0), x.stride(1), x.stride(2), om.stride(0), om.stride(1) if lite else 0,
        (0.5 if symmetric else 1.0) / tau,
        SYMMETRIC=symmetric, LITE=lite, MB=mb, NP=npad,
        num_warps=_small_warps(mb, npad), enable_fp_fusion=DENSE_FP_FUSION,
    )
    return p, u, v


def small_bwd(dp, x, omega, u, v, n_mat, n, iters, tau, symmetric):
    """Batched in-register backward: ``dM [n_mat, n, n]`` (dtype of ``x``), or for Lite
    ``(d omega, d Z)``."""
    lite = omega is not None
    mb, npad = _small_block(n, n_mat, x.device)
    programs = triton.cdiv(n_mat, mb) if n_mat else 0
    if lite:
        nb = omega.shape[1]
        dx = x  # unused
        domega = new_output(omega.shape, like=omega)
        dz_partial = new_output((max(programs, 1), nb, n, n), like=x, dtype=torch.float32)
        if programs == 0:
            dz_partial.zero_()
            domega.zero_()
    else:
        nb = 0
        dx = new_output((n_mat, n, n), like=x)
        domega = dz_partial = dx
    if programs:
        om = omega if lite else x
        sinkhorn_small_bwd_kernel[(programs,)](
            x, om, dp, u, v, dx, domega, dz_partial,
            n_mat, n, nb, iters,
            x.stride(0), x.stride(1), x.stride(2), om.stride(0), om.stride(1) if lite else 0,
            dp.stride(0), dp.stride(1), dp.stride(2),
            (0.5 if symmetric else 1.0) / tau, (0.5 if symmetric else 1.0) / tau,
            SYMMETRIC=symmetric, LITE=lite, MB=mb, NP=npad,
            num_warps=_small_warps(mb, npad), enable_fp_fusion=DENSE_FP_FUSION,
        )
    if lite:
        dz = new_output(x.shape, like=x)
        sum_partials((dz_partial, dz))
        return domega, dz
    return dx


def _lowrank_chunk_width(rank: int, dot_ieee: bool) -> int:
    """``BK`` of ``_lowrank_tile``: 32, or for fp32 factors of rank up to 32, 16, so that its two
    accumulators each take some of the rank (at rank 128, 16-wide chunks made the matrix-free Lite
    weight 37% slower than 32-wide ones on the H200: twice the dots, each a round trip of its
    operands through shared memory; NOTES)."""
    return 16 if dot_ieee and rank <= 32 else 32


def _pairs(symmetric: bool, bm: int, bn: int) -> bool:
    """Whether the one-launch-per-half-step kernels run one program per pair of mirrored tiles
    (``PAIRS``, the ``UNIMIXER_SINKHORN_PAIRS`` switch): for symmetric logits with square tiles,
    where ``S0``'s tile ``(q, p)`` is tile ``(p, q)`` transposed, bit for bit, so one read serves both
    and every half-step reads half of ``S0``."""
    mode = switch(PAIRS_SWITCH)
    if mode not in ("auto", "0"):
        raise ValueError(f"{PAIRS_SWITCH}: expected 'auto' or '0', got {mode!r}")
    return mode == "auto" and symmetric and bm == bn


def _tile_programs(n_rt: int, n_ct: int, pairs: bool) -> int:
    """Programs per matrix of a one-launch-per-half-step launch: one per tile, or per pair of mirrored
    tiles (``_tile_index``)."""
    return n_ct * (n_ct + 1) // 2 if pairs else n_rt * n_ct


def _flips():
    """The ``flip`` argument of a call's successive one-launch-per-half-step launches: 0, 1, 0, ...
    with ``SERPENTINE``, else 0."""
    return itertools.cycle((0, 1) if SERPENTINE else (0,))


def _tile_args(n, src, a, b):
    bm, bn = _tiles(n)
    n_rt, n_ct = triton.cdiv(n, bm), triton.cdiv(n, bn)
    if a is not None:
        rank = a.shape[1]
        mode = _LOWRANK
        strides = (0, 0, 0, a.stride(0), a.stride(1), b.stride(0), b.stride(1))
        dot_ieee = a.dtype == torch.float32
    else:
        mode, rank = _DENSE, 0
        strides = (src.stride(0), src.stride(1), src.stride(2), 0, 0, 0, 0)
        dot_ieee = True
    # EVEN: no masks where the tiles divide n; FAST_EXP: flush-to-zero exponentials, compiled code only
    meta = dict(BM=bm, BN=bn, BK=_lowrank_chunk_width(rank, dot_ieee), DOT_IEEE=dot_ieee,
                RT_P=triton.next_power_of_2(n_rt),
                CT_P=triton.next_power_of_2(n_ct), num_warps=_tile_warps(bm, bn),
                EVEN=n % bm == 0 and n % bn == 0, FAST_EXP=(src if a is None else a).device.type == "cuda")
    return bm, bn, n_rt, n_ct, mode, rank, strides, meta


def _tiled_buffers(n_mat: int, n_rt: int, n_ct: int, n: int, sums: int, device: torch.device) -> tuple:
    """The one-launch-per-half-step kernels' buffers: the partials ``PR [n_mat, n_ct, n]`` and
    ``PC [n_mat, n_rt, n]`` (fp32); for the backward (``sums`` > 0), ``sums`` steps of its column and
    row sums ``CS``, ``RS [n_mat, sums, n]`` and the per-tile sums of the iterate that one launch
    leaves to the next, ``QR`` (shaped as ``PR``) and ``QC`` (as ``PC``), else ``None``; and the
    arrival counts (``_arrive``; per matrix one per row band and one per column band, zero before the
    first launch; each band's last program sets its count back to 0)."""
    heights = [n_ct, n_rt] + ([n_ct, n_rt, sums, sums] if sums else [])  # PR, PC, QR, QC, CS, RS
    buf = torch.empty(n_mat * sum(heights) * n, device=device, dtype=torch.float32)
    views = [part.view(n_mat, h, n) for part, h in zip(buf.split([n_mat * h * n for h in heights]), heights)]
    views += [None] * (6 - len(views))
    cnt = torch.zeros((n_mat, n_rt + n_ct), device=device, dtype=torch.int32)
    return (*views, cnt)


def tiled_fwd(src, a, b, n_mat, n, iters, tau, symmetric):
    """Tiled forward of ``src [n_mat, n, n]`` (dense) or of ``a @ b`` (``a [n, r]``, ``b [r, n]``,
    ``n_mat == 1``). Returns ``(P, U, V)``."""
    like = src if src is not None else a
    p = new_output((n_mat, n, n), like=like, dtype=torch.float32)
    u = new_output((n_mat, iters, n), like=like, dtype=torch.float32)
    v = new_output((n_mat, iters, n), like=like, dtype=torch.float32)
    if n_mat == 0 or n == 0:
        return p, u, v
    bm, bn, n_rt, n_ct, mode, rank, strides, meta = _tile_args(n, src, a, b)
    scale = (0.5 if symmetric else 1.0) / tau
    s_src, s_a, s_b = (a, a, b) if a is not None else (src, src, src)
    res = _resident_args(n, n_mat, like.device, meta)
    if res is not None:
        n_rt, n_ct, meta, fail, pr, pc = res
        sinkhorn_resident_fwd_kernel[(n_rt * n_ct, n_mat)](
            s_src, s_a, s_b, p, u, v, pr, pc, fail, n, rank, iters, n_rt, n_ct, *strides, scale,
            MODE=_DENSE if a is None else _LOWRANK, SYMMETRIC=symmetric,
            enable_fp_fusion=_fp_fusion(a is not None), **meta,
        )
        _check_fail(fail)
        return p, u, v
    ws = torch.empty((n_mat, n, n), device=like.device, dtype=torch.float32) if mode != _LOWRANK else p
    pr, pc, _, _, _, _, cnt = _tiled_buffers(n_mat, n_rt, n_ct, n, 0, like.device)
    pairs = _pairs(symmetric, bm, bn)
    grid = (_tile_programs(n_rt, n_ct, pairs), n_mat)
    pdl = pdl_options(like.device)
    flips = _flips()

    def launch(phase, k, m):
        # early S0 read (PDL): not in the first pass, and not right after it when it wrote the workspace
        early = pdl["PDL"] and phase != _INIT and (m == _LOWRANK or (phase, k) != (_ROW, 0))
        sinkhorn_tile_fwd_kernel[grid](
            s_src, s_a, s_b, ws, p, u, v, pr, pc, cnt,
            n, rank, iters, k, n_rt, n_ct, next(flips), *strides, scale,
            PHASE=phase, MODE=m, SYMMETRIC=symmetric, EARLY=early, PLAIN=phase == _ROW and k > 0,
            PAIRS=pairs, **meta, **pdl,
        )

    later = _LOWRANK if mode == _LOWRANK else _WORKSPACE
    launch(_INIT, 0, mode)
    for k in range(iters):
        launch(_ROW, k, later)
        launch(_COL_LAST if k == iters - 1 else _COL, k, later)
    return p, u, v


def tiled_bwd(dp, src, a, b, u, v, n_mat, n, iters, tau, symmetric, out_dtype, parts=False):
    """Tiled backward: ``dM [n_mat, n, n]`` in ``out_dtype``, the gradient with respect to the
    (pre-symmetrisation) logits ``src``, or to ``a @ b`` in the low-rank mode. ``parts`` (fp32
    ``out_dtype`` only): where the resident kernels run, ``dM`` as its three bf16 parts
    ``[3, n_mat, n, n]`` for :mod:`.gemm_fp32`, stored so by their last pass; elsewhere the fp32 ``dM``
    all the same (the one-launch-per-half-step kernels' ``dM`` doubles as a workspace), which the caller
    splits once this call's buffers are freed (split here, ``src`` and the workspaces would still be
    alive: 129 MiB more at the Lite block's peak at ``paper-100m``, run120)."""
    if parts and out_dtype != torch.float32:
        raise ValueError(f"tiled_bwd: parts are of an fp32 dM, got out_dtype={out_dtype}")
    like = src if src is not None else a
    if n_mat == 0 or n == 0:
        return new_output((n_mat, n, n), like=like, dtype=out_dtype)
    bm, bn, n_rt, n_ct, mode, rank, strides, meta = _tile_args(n, src, a, b)
    scale = grad_scale = (0.5 if symmetric else 1.0) / tau
    s_src, s_a, s_b = (a, a, b) if a is not None else (src, src, src)
    res = _resident_args(n, n_mat, like.device, meta)
    if res is not None:
        n_rt, n_ct, meta, fail, pr, pc = res
        grid = (n_rt * n_ct, n_mat)
        dx = new_output((3, n_mat, n, n) if parts else (n_mat, n, n), like=like,
                        dtype=torch.bfloat16 if parts else out_dtype)
        # the working gradient leaves registers only for the symmetrising pass
        g = torch.empty((n_mat, n, n), device=like.device, dtype=torch.float32) if symmetric else dx
        sinkhorn_resident_bwd_kernel[grid](
            s_src, s_a, s_b, dp, u, v, g, dx, pr, pc, fail,
            n, rank, iters, n_rt, n_ct, *strides, dp.stride(0), dp.stride(1), dp.stride(2), scale, grad_scale,
            MODE=_DENSE if a is None else _LOWRANK, SYMMETRIC=symmetric, PARTS=parts,
            enable_fp_fusion=_fp_fusion(a is not None), **meta,
        )
        _check_fail(fail)
        if symmetric:
            sinkhorn_tile_sym_kernel[grid](g, dx, n, n_ct, grad_scale, 0, BM=meta["BM"], BN=meta["BN"],
                                           num_warps=4, PDL=False, PARTS=parts)
        return dx
    dx = new_output((n_mat, n, n), like=like, dtype=out_dtype)
    # dP * P, written by the first launch and turned into the working gradient by the last one, and
    # the workspace of S0 (dense logits), written by the first launch and read by every one. An fp32
    # dM is written last, so one of them can live in its buffer: without symmetrising, G (the last
    # launch's program writes dM over the tile of G it has just read); symmetrising, the workspace
    # (the last launch writes G, and the symmetrising pass, after it, reads G's transposed tiles; with
    # PAIRS the last launch's program writes dM over the workspace tile it has read, and over the
    # mirrored tile, which no launch reads)
    pairs = _pairs(symmetric, bm, bn)
    spare = out_dtype == torch.float32
    if pairs:  # _g_tile's slots
        g = torch.empty((n_mat, _tile_programs(n_rt, n_ct, True), 2, bm, bn), device=like.device,
                        dtype=torch.float32)
    else:
        g = dx if spare and not symmetric else torch.empty((n_mat, n, n), device=like.device,
                                                           dtype=torch.float32)
    ws = dx if mode == _LOWRANK or (spare and symmetric) else torch.empty(
        (n_mat, n, n), device=like.device, dtype=torch.float32)
    # the partials of both axes, the iterate's sums carried from launch to launch, and every step's
    # column and row sums of G (O(K n) per matrix)
    pr, pc, qr, qc, cs, rs, cnt = _tiled_buffers(n_mat, n_rt, n_ct, n, iters, like.device)
    grid = (_tile_programs(n_rt, n_ct, pairs), n_mat)
    pdl = pdl_options(like.device)
    flips = _flips()
    last_meta = dict(meta, num_warps=LAST_WARPS)

    def launch(phase, k, m, last=False):
        early = pdl["PDL"] and phase != 0 and (m == _LOWRANK or (phase, k) != (1, iters - 1))
        sinkhorn_tile_bwd_kernel[grid](
            s_src, s_a, s_b, ws, dp, u, v, cs, rs, g, dx, pr, pc, qr, qc, cnt,
            n, rank, iters, k, n_rt, n_ct, next(flips), *strides, *dp.stride(), scale, grad_scale,
            PHASE=phase, MODE=m, SYMMETRIC=symmetric, LAST=last, EARLY=early,
            FIRST=phase == 1 and k == iters - 1, PAIRS=pairs, **(last_meta if last else meta), **pdl,
        )

    later = _LOWRANK if mode == _LOWRANK else _WORKSPACE
    launch(_INIT, iters - 1, mode)
    for k in range(iters - 1, -1, -1):
        launch(1, k, later)
        launch(2, k, later, last=k == 0)
    if symmetric and not pairs:
        sinkhorn_tile_sym_kernel[grid](g, dx, n, n_ct, grad_scale, next(flips), BM=bm, BN=bn,
                                       num_warps=LAST_WARPS, EVEN=meta["EVEN"], **pdl)
    return dx


# --- entry points used by the ops ----------------------------------------------------------------


def sinkhorn_fwd(logits: torch.Tensor, tau: float, iters: int, symmetric: bool):
    """``logits [..., n, n]`` -> ``(P [..., n, n], U [..., K, n], V [..., K, n])``, fp32."""
    _check_compute_dtype("logits", logits)
    n = logits.shape[-1]
    lead = logits.shape[:-2]
    x = _as_batch(logits)
    n_mat = x.shape[0]
    if n <= SMALL_MAX_N:
        p, u, v = small_fwd(x, None, n_mat, n, iters, tau, symmetric)
    else:
        p, u, v = tiled_fwd(x, None, None, n_mat, n, iters, tau, symmetric)
    return p.view(*lead, n, n), u.view(*lead, iters, n), v.view(*lead, iters, n)


def sinkhorn_bwd(dp, logits, u, v, tau: float, iters: int, symmetric: bool) -> torch.Tensor:
    """Gradient of the unrolled map with respect to ``logits`` (dtype of ``logits``)."""
    n = logits.shape[-1]
    x = _as_batch(logits)
    n_mat = x.shape[0]
    dp3 = _as_batch(dp)
    u3 = u.reshape(n_mat, iters, n)
    v3 = v.reshape(n_mat, iters, n)
    if n <= SMALL_MAX_N:
        dx = small_bwd(dp3, x, None, u3, v3, n_mat, n, iters, tau, symmetric)
    else:
        dx = tiled_bwd(dp3, x, None, None, u3, v3, n_mat, n, iters, tau, symmetric, logits.dtype)
    return dx.view(logits.shape)


def lite_local_fwd(omega: torch.Tensor, basis: torch.Tensor, tau: float, iters: int, symmetric: bool):
    """``SK(sum_l omega[m, l] Z[l])`` for ``omega [N, b]``, ``basis [b, B, B]`` (B <= SMALL_MAX_N)."""
    _check_compute_dtype("omega", omega)
    _check_compute_dtype("basis", basis)
    n = basis.shape[-1]
    return small_fwd(basis, omega, omega.shape[0], n, iters, tau, symmetric)


def lite_local_bwd(dp, omega, basis, u, v, tau: float, iters: int, symmetric: bool):
    """``(d omega, d basis)`` of the fused local Lite weights."""
    n = basis.shape[-1]
    return small_bwd(dp, basis, omega, u, v, omega.shape[0], n, iters, tau, symmetric)


def _lowrank_factors(a_g: torch.Tensor, b_g: torch.Tensor, symmetric: bool):
    dtype = torch.promote_types(a_g.dtype, b_g.dtype)
    return a_g.to(dtype), b_g.to(dtype)


def _lowrank_operands(a: torch.Tensor, b: torch.Tensor, mm: Fp32Products) -> tuple:
    """``(src, a, b)`` for ``tiled_fwd`` / ``tiled_bwd``: ``(None, a, b)`` (matrix free), or, for fp32
    factors of rank above ``LOWRANK_MATERIALISE_MIN_RANK``, ``(lowrank_logits(a, b, mm), None, None)``
    (the module docstring says why)."""
    if not _forms_logits(a.dtype, a.shape[1]):
        return None, a, b
    return lowrank_logits(a, b, mm), None, None


def _forms_logits(dtype: torch.dtype, rank: int) -> bool:
    """Whether factors of ``dtype`` and ``rank`` have ``A @ B`` formed once per call by the fp32 GEMM
    (:func:`_lowrank_operands`) rather than tile by tile in the kernels."""
    return dtype == torch.float32 and rank > LOWRANK_MATERIALISE_MIN_RANK


class Split(NamedTuple):
    """An operand of :class:`Fp32Products` given as its bf16 parts ``[3, M, K]`` (:mod:`.gemm_fp32`)."""

    parts: torch.Tensor


class Fp32Products:
    """The fp32 products of one Lite global call (``A_G @ B_G``; in the backward also ``dM B_G^T`` and
    ``A_G^T dM``), whatever torch's TF32 setting and whatever autocast region the call sits in (the
    ops run with autocast off, but the custom ops called on their own under autocast would otherwise
    form bf16 products), by the ``UNIMIXER_LITE_GEMM`` switch:

    * ``split``: the project's GEMM on bf16 tensor cores (:mod:`.gemm_fp32`, fp32's accuracy from six
      bf16 products). Each operand is split into its bf16 parts once (the forward's parts of ``A_G``
      and ``B_G`` are saved for the backward's logits and gradients, where they come back transposed;
      ``dM`` leaves the Sinkhorn backward as parts, :func:`tiled_bwd`), the operands a call still has
      to split are split in one launch per two, and the split-K partials of one call's products are
      summed in one launch;
    * ``cublas``: IEEE fp32 cuBLAS GEMMs. torch has no per-call precision for ``mm``: where TF32 is
      on, the process-wide flag is turned off around them (a matmul on another thread at that moment
      would see it off); at torch's default (off) nothing is touched.

    ``mode`` overrides the switch (the ``cuda`` backend's gradient GEMMs: ``cublas``)."""

    def __init__(self, mode: str | None = None):
        self.mode = switch(LITE_GEMM_SWITCH) if mode is None else mode
        if self.mode not in ("split", "cublas"):
            raise ValueError(f"{LITE_GEMM_SWITCH}: expected 'split' or 'cublas', got {self.mode!r}")
        self._parts: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def _key(x: torch.Tensor, mirror: bool = False) -> tuple:
        shape, stride = (x.shape[::-1], x.stride()[::-1]) if mirror else (x.shape, x.stride())
        return x.data_ptr(), x.dtype, tuple(shape), tuple(stride)

    def adopt(self, x: torch.Tensor, parts: torch.Tensor) -> None:
        """Use ``parts`` (its :func:`.gemm_fp32.split_parts`) wherever ``x`` or ``x.t()`` is an operand."""
        self._parts[self._key(x)] = parts

    def parts_of(self, x: torch.Tensor) -> torch.Tensor | None:
        """The parts this call has split ``x`` into, if any."""
        return self._parts.get(self._key(x))

    def _operand(self, x) -> torch.Tensor:
        if isinstance(x, Split):
            return x.parts
        if self._key(x) in self._parts:
            return self._parts[self._key(x)]
        return self._parts[self._key(x, mirror=True)].transpose(1, 2)

    def __call__(self, *pairs) -> list[torch.Tensor]:
        """``[a @ b for a, b in pairs]`` in fp32; an operand may be a :class:`Split` (``split`` mode)."""
        if self.mode == "split":
            fresh = {}
            for x in (x for pair in pairs for x in pair):
                if not isinstance(x, Split) and self._key(x) not in self._parts \
                        and self._key(x, mirror=True) not in self._parts:
                    fresh[self._key(x)] = x
            if fresh:
                self._parts.update(zip(fresh, split_parts(*(x.float() for x in fresh.values()))))
            return mm_parts(*[(self._operand(a), self._operand(b)) for a, b in pairs])
        if any(isinstance(x, Split) for pair in pairs for x in pair):
            raise ValueError(f"{LITE_GEMM_SWITCH}=cublas: operands are fp32 tensors, not their parts")
        m = torch.backends.cuda.matmul
        saved = m.allow_tf32
        if saved:
            m.allow_tf32 = False
        try:
            with torch.autocast(pairs[0][0].device.type, enabled=False):
                return [torch.mm(a.float(), b.float()) for a, b in pairs]
        finally:
            if saved:
                m.allow_tf32 = saved


def lowrank_logits(a: torch.Tensor, b: torch.Tensor, mm: Fp32Products | None = None) -> torch.Tensor:
    """``(A @ B)[None]`` by ``mm`` (a new :class:`Fp32Products` by default). The forward and the
    backward form it by the same GEMM, so both see the same numbers (the ``cuda`` backend of
    ``lite_global_weights`` forms its logits here too)."""
    return (mm or Fp32Products())((a, b))[0].unsqueeze(0)


def lite_global_fwd(a_g: torch.Tensor, b_g: torch.Tensor, tau: float, iters: int, symmetric: bool):
    """``SK(A_G @ B_G)`` matrix free: logits tiles are formed from the factors in every pass (or
    once per call, ``_lowrank_operands``). Returns ``(W_G, U, V, A parts, B parts)``: the parts of the
    factors where the split GEMM formed the logits from them (saved for the backward's), else ``None``."""
    _check_compute_dtype("a_g", a_g)
    _check_compute_dtype("b_g", b_g)
    n = a_g.shape[0]
    a, b = _lowrank_factors(a_g, b_g, symmetric)
    mm = Fp32Products()
    p, u, v = tiled_fwd(*_lowrank_operands(a, b, mm), 1, n, iters, tau, symmetric)
    return p.view(n, n), u.view(iters, n), v.view(iters, n), mm.parts_of(a), mm.parts_of(b)


def saves_factor_parts(a_g: torch.Tensor, b_g: torch.Tensor) -> bool:
    """Whether :func:`lite_global_fwd` returns the factors' parts (the split GEMM forms the logits)."""
    return switch(LITE_GEMM_SWITCH) == "split" and _forms_logits(torch.promote_types(a_g.dtype, b_g.dtype),
                                                                 a_g.shape[1])


def lite_global_bwd(dp, a_g, b_g, u, v, tau: float, iters: int, symmetric: bool, a_parts=None, b_parts=None):
    """``(dA_G, dB_G) = (dM B_G^T, A_G^T dM)``, with ``dM`` (fp32 ``n x n``, or its parts) materialised once
    and both GEMMs in fp32 by the logits' :class:`Fp32Products`; ``a_parts``, ``b_parts``: the
    forward's parts of the factors, if it returned them."""
    n = a_g.shape[0]
    a, b = _lowrank_factors(a_g, b_g, symmetric)
    mm = Fp32Products()
    if a_parts is not None:
        mm.adopt(a, a_parts)
        mm.adopt(b, b_parts)
    dm = tiled_bwd(dp.view(1, n, n), *_lowrank_operands(a, b, mm), u.view(1, iters, n), v.view(1, iters, n),
                   1, n, iters, tau, symmetric, torch.float32, parts=mm.mode == "split")
    dm = Split(dm.view(3, n, n)) if dm.dtype == torch.bfloat16 else dm.view(n, n)  # parts, or split by mm
    da, db = mm((dm, b_g.t()), (a_g.t(), dm))
    return da.to(a_g.dtype), db.to(b_g.dtype)
