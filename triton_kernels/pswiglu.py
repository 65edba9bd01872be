"""Per-token FFNs (pSwiGLU and the per-token GELU FFN): Triton kernels and launchers, no autograd.

Both are a batched GEMM over tokens. For token ``t`` and a tile of samples ``S`` (rows of
``U_t = u[S, t, :]``)::

    gated (pSwiGLU):  G = U_t W1[t] + b1[t]   V = U_t W3[t] + b3[t]   A = SiLU(G) * V
    plain (GELU FFN): G = U_t W1[t] + b1[t]                           A = GELU(G)   (g Phi(g))
    O_t = A W2[t] + b2[t]

``W1, W3 [T, D, h]`` and ``W2 [T, h, D]``. The ``[bs, T, D] <-> [T, bs, D]`` change of layout is
folded into strides: a program owns ``(token, sample tile)`` and reads ``u`` with the sample
stride ``T*D`` (any strides are accepted for ``u`` and ``dO``); nothing is transposed in memory.

Forward (``ffn_fwd_kernel``, grid ``(T, cdiv(bs, BLOCK_S))``): the ``[BLOCK_S, D]`` tile of ``u``
is loaded once; the hidden width is walked in ``BLOCK_H`` chunks (``h`` need not be a power of
two: masks), each chunk computes its ``G`` (and ``V``) with the activation as the epilogue and
is immediately multiplied into the ``[BLOCK_S, D]`` fp32 output accumulator, so the hidden
activations never go to memory. Optionally (``save``) ``G`` and ``V`` are written
(``[T, bs, h]``, compute dtype) for the backward; by default they are recomputed instead.

Backward, with ``dA = dO W2^T``::

    gated:  dV = dA * SiLU(G)      dG = dA * V * sig(G) * (1 + G * (1 - sig(G)))
    plain:  dG = dA * (Phi(G) + G * phi(G))
    du  = dG W1^T (+ dV W3^T)
    dW1 = sum_s u^T dG   dW3 = sum_s u^T dV   dW2 = sum_s A^T dO   db = column sums

``ffn_bwd_act_kernel`` (grid ``(T, cdiv(bs, BLOCK_S))``) recomputes or loads ``G, V``, forms
``dG, dV, A`` chunk by chunk, accumulates ``du`` in registers, and writes ``dG, dV, A``
(``[T, bs, h]``, compute dtype) for ``ffn_bwd_weight_kernel`` (grid
``(T * NSPLIT, D tiles, h tiles)``): each program reduces one contiguous range of samples in its
loop into an fp32 partial, and the ``NSPLIT`` partials are summed in a second pass (``NSPLIT`` is
sized so the grid fills the GPU; 1 when ``T`` alone does). Weight and bias gradients are
deterministic: no atomics. With ``UNIMIXER_FFN_BACKWARD=recompute`` the act kernel writes only
``du``, and the weight kernel forms ``A, dG, dV`` of its hidden tile itself from ``u``, ``dO`` and the
weights (its one d tile then spans ``D``): no ``[T, bs, h]`` buffer in the backward at all, for
three more small GEMMs per sample tile (about 1.4x the backward's FLOPs). On the H200 it is slower
(pSwiGLU at paper-small 0.647 against 0.312 ms, peak 61 against 126 MiB), so it stays opt-in.

Tiles (sample tile, hidden chunk, warps, stages) are tuned on the GPU, keyed on ``D``, ``h``
and the batch rounded up to a power of two, among configurations first pruned by a
shared-memory estimate, by timing every tile in alternating rounds (:class:`~._tuning.TileTuner`:
the forward, the backward's act and weight kernels); batches under 1024 take
one configuration untuned, and the interpreter one small configuration.

Wide tokens (``next_power_of_2(D) > FUSED_MAX_D = 256`` for 16-bit dtypes, ``> 128`` for fp32;
e.g. RankMixer's ``D = 768``) would not fit whole rows in shared memory. They take plain per-token
GEMMs, ``ffn_token_gemm_kernel`` (a K loop over a 1-d grid of ``(token, bs tile, n tile)``, token
slowest, row tiles grouped; ``C = A B (+ A2 B2) (+ bias)``) or, for 16-bit operands on CUDA, cuBLAS's
strided-batched GEMMs through ``torch.bmm`` (``UNIMIXER_FFN_GEMM``, :func:`cublas_token_gemms`), and
one elementwise pass, ``ffn_act_kernel``, for the activation::

    forward:   G (, V) = u W1 (, u W3)                GEMMs, [T, bs, h]
               A = act(G + b1, V + b3)                pass (into G's buffer unless G is saved)
               o = A W2 + b2                          GEMM, written as [bs, T, D] through strides
    backward:  G (, V) recomputed (or the saved ones), dA = dO W2^T      GEMMs
               A, dG (, dV) from G, V, dA             pass (into the buffers of G, dA, V), with
                                                      the bias gradients' partial sums
               du = dG W1^T (+ dV W3^T)               GEMM with two products
               dW1 = u^T dG, dW3 = u^T dV, dW2 = A^T dO   GEMMs over the samples (K = bs)

The activation epilogues these GEMMs once carried cost more than the pass: on the H200 the GELU
epilogue made its GEMM 2.3x, the GELU backward's 3.6x slower than the product alone (run36). Weight
gradients reduce every sample inside each tile's fp32 accumulator (deterministic, no partials). The
tiles are autotuned (keyed on ``N``, the bucketed ``M`` and ``K`` (either can be the batch) and the
operands' dtypes) for 16-bit dtypes. With ``UNIMIXER_FFN_TMA`` (default ``auto``) the 16-bit GEMMs
whose operands allow it and whose dimensions the TMA tile divides read and write through TMA tensor
descriptors with a fixed launch: one product in 128 x 256 tiles, about one program per SM walking the
tiles (persistent), two products in 128 x 128 tiles, one per program (see :func:`_use_tma` and
``_TMA_LAUNCH`` for the measurements behind both choices).

Precision: fp32 inputs use ``input_precision="ieee"``; bf16/fp16 run the tensor cores with fp32
accumulation, the hidden activation rounded to the input dtype before the second GEMM. When the
weights' dtype differs from ``u``'s, everything is computed in fp32.

With an RMSNorm in front (``rms_norm_ffn_fwd`` / ``rms_norm_ffn_bwd_``, the UniMixer block's
``pSwiGLU(RMSNorm(s))``) the forward normalises into a temporary ``u``, and only ``s`` and the norm's
``rstd`` (fp32, one per row) are saved; the backward's token passes each form their tokens' ``u``
again and turn their ``du`` into ``ds`` at once (``rms_norm.TokenPassNorm``), written over ``s``, so
that neither ``u`` nor ``du`` is ever whole. On the fused path the act kernel does both itself
(``PRENORM``): ``u = s * rstd * w`` (the forward's bits) is formed from its rows of ``s`` and stored for
the weight kernel, and its fp32 ``du`` becomes ``ds`` and the norm weight's partials, one fp32 row per
program (the buffer is sized for the smallest sample tile, and the sum reads the rows the tuned tile
wrote): two norm launches a pass fewer (run214: 26.7 against 34.9 µs a pass at ``paper-small``). The
wide-token path runs the norm's kernels around its GEMMs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._launch import (
    FFN_BACKWARD_SWITCH,
    FFN_CHUNK_SWITCH,
    FFN_GEMM_SWITCH,
    FFN_TMA_SWITCH,
    bucket,
    cublas_switch,
    interpreting,
    new_output,
    num_programs_for,
    sm_count,
    switch,
)
from ._partials import sum_partials
from ._pdl import pdl_options, pdl_prologue
from ._tiles import grouped_tile
from ._tuning import TileTuner
from .rms_norm import TokenPassNorm, rms_norm_fwd


def _tile_configs() -> list:
    """(token, sample tile) kernels: sample tile, hidden chunk, warps, pipeline stages. Configs
    that do not fit in shared memory for a given ``D`` are skipped by the autotuner."""
    if interpreting():
        return [triton.Config({"BLOCK_S": 32, "BLOCK_H": 32}, num_warps=4, num_stages=1)]
    # (64, 32, 4, 3) and (128, 32, 8, 3): the act kernel's fastest tiles at paper-small, with the norm
    # in front and without (run216, bench/ffn_act_probe.py)
    shapes = [(64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 8, 2),
              (128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2), (32, 32, 4, 2), (32, 64, 4, 1),
              (16, 32, 4, 1)]
    return [triton.Config({"BLOCK_S": s, "BLOCK_H": h}, num_warps=w, num_stages=st) for s, h, w, st in shapes]


_SMEM_BUDGET = 160 * 1024  # bytes: an H100/H200 SM has 227 KiB; leave room for layout scratch


def _tile_smem_bytes(cfg, block_d: int, elem: int, gated: bool) -> int:
    """A rough shared-memory estimate of the (token, sample tile) kernels: the activation rows,
    the hidden chunk, and one set of weight tiles per pipeline stage."""
    bs, bh = cfg.kwargs["BLOCK_S"], cfg.kwargs["BLOCK_H"]
    weights = (3 if gated else 2) * block_d * bh
    return elem * (2 * bs * block_d + bs * bh + max(cfg.num_stages, 1) * weights)


def _prune_tiles(configs, named_args, **kwargs) -> list:
    """Drop configurations whose tiles would overflow shared memory for this ``D`` and dtype.
    Small batches (tests, tiny models) take the smallest remaining one instead of tuning: the
    tuning would cost more than it saves."""
    if len(configs) == 1:
        return configs
    block_d = kwargs.get("BLOCK_D", 128)
    cdt = kwargs.get("CDT", tl.float16)
    elem = max(cdt.primitive_bitwidth // 8, 1) if hasattr(cdt, "primitive_bitwidth") else 4
    gated = bool(kwargs.get("GATED", True))
    fits = [c for c in configs if _tile_smem_bytes(c, block_d, elem, gated) <= _SMEM_BUDGET]
    if not fits:
        fits = [min(configs, key=lambda c: _tile_smem_bytes(c, block_d, elem, gated))]
    if named_args["BS_KEY"] >= 1024:
        return fits
    return [min(fits, key=lambda c: abs(c.kwargs["BLOCK_S"] - 32) + abs(c.kwargs["BLOCK_H"] - 32)
                + 8 * abs(c.num_stages - 2))]


def _prune_weight(configs, named_args, **kwargs) -> list:
    """As :func:`_prune_tiles` for the weight-gradient kernel: per pipeline stage the ``[BLOCK_S, BLOCK_D]``
    rows of ``u`` and ``dO`` and the three ``[BLOCK_S, BLOCK_H]`` hidden tiles. ``RECOMPUTE`` takes its
    own, smaller family of tiles."""
    if len(configs) == 1:
        return configs
    recompute = bool(kwargs.get("RECOMPUTE", False))
    family = _WEIGHT_SHAPES_RECOMPUTE if recompute else _WEIGHT_SHAPES
    configs = [c for c in configs if (c.kwargs["BLOCK_S"], c.num_warps, c.num_stages) in family] or configs
    cdt = kwargs.get("CDT", tl.float16)
    elem = max(cdt.primitive_bitwidth // 8, 1) if hasattr(cdt, "primitive_bitwidth") else 4
    width = 2 * kwargs.get("BLOCK_D", 64) + 3 * kwargs.get("BLOCK_H", 64)
    size = lambda c: elem * max(c.num_stages, 1) * width * c.kwargs["BLOCK_S"]  # noqa: E731
    fits = [c for c in configs if size(c) <= _SMEM_BUDGET] or [min(configs, key=size)]
    if named_args["BS_KEY"] >= 1024:
        return fits
    return [min(fits, key=size)]


# (sample tile, warps, stages) of the weight-gradient kernel reading A, dG, dV from memory: tiles
# that ptxas compiles for sm_90 without spills at its 64 x 64 output tile (with the [BLOCK_S, ...] bias
# sums in registers), but 128 x 8 warps x 2 stages (20 bytes; python -m bench sm90)
_WEIGHT_SHAPES = [(32, 4, 2), (64, 4, 3), (64, 8, 2), (64, 8, 3), (128, 8, 2), (32, 4, 1)]
# ... and recomputing them (whole-D rows, three [D, BLOCK_H] fp32 accumulators): the tiles that
# ptxas compiles for sm_90 without spills at D = 128 (BLOCK_H 32) and D = 256 (BLOCK_H 16); the
# 32-sample ones spill (64-340 bytes)
_WEIGHT_SHAPES_RECOMPUTE = [(16, 8, 2), (16, 8, 3), (16, 4, 2)]


def _weight_configs() -> list:
    if interpreting():
        return [triton.Config({"BLOCK_S": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_S": s}, num_warps=w, num_stages=st)
            for s, w, st in _WEIGHT_SHAPES + _WEIGHT_SHAPES_RECOMPUTE]


@triton.jit
def _hidden(u, t, offs_d, offs_h, mask_d, mask_h, W1, W3, B1, B3, D, H,
            GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr,
            CDT: tl.constexpr, PREC: tl.constexpr):
    """``(G, V, w1, w3)`` of one hidden chunk: ``G`` and ``V`` fp32 (``V`` is ``G`` when not gated),
    and the chunk's ``[D, h-chunk]`` weight tiles, which a backward reuses transposed."""
    wmask = mask_d[:, None] & mask_h[None, :]
    w1 = tl.load(W1 + t * D * H + offs_d[:, None] * H + offs_h[None, :], mask=wmask, other=0.0)
    g = tl.dot(u, w1.to(CDT), input_precision=PREC)
    if HAS_B1:
        g += tl.load(B1 + t * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    v = g
    w3 = w1
    if GATED:
        w3 = tl.load(W3 + t * D * H + offs_d[:, None] * H + offs_h[None, :], mask=wmask, other=0.0)
        v = tl.dot(u, w3.to(CDT), input_precision=PREC)
        if HAS_B3:
            v += tl.load(B3 + t * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    return g, v, w1, w3


@triton.jit
def _hidden_grads(u, do, G, V, hid, hmask, t, offs_d, offs_h, mask_d, mask_h, W1, W3, W2, B1, B3, D, H,
                  SAVED: tl.constexpr, GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr,
                  CDT: tl.constexpr, PREC: tl.constexpr):
    """``(A, dG, dV)`` fp32 of one hidden chunk: ``G, V`` loaded (``SAVED``) or recomputed from the
    ``u`` rows, and ``dA = dO W2^T`` from the ``dO`` rows (both ``[samples, whole D]``); then the
    chunk's ``[D, h-chunk]`` tiles of ``W1`` and ``W3`` (loaded here either way).

    Every weight tile is loaded along its rows (``h`` for ``W1``, ``W3``; ``D`` for ``W2``) and
    transposed in the dot: the transposed loads these replaced (element strides of ``h`` and ``D``)
    made ptxas spill at every tile at ``D = 128`` (284-2144 bytes, ``python -m bench sm90``)."""
    if SAVED:
        g = tl.load(G + hid, mask=hmask, other=0.0).to(tl.float32)
        v = g
        if GATED:
            v = tl.load(V + hid, mask=hmask, other=0.0).to(tl.float32)
        wmask = mask_d[:, None] & mask_h[None, :]
        w1 = tl.load(W1 + t * D * H + offs_d[:, None] * H + offs_h[None, :], mask=wmask, other=0.0)
        w3 = w1
        if GATED:
            w3 = tl.load(W3 + t * D * H + offs_d[:, None] * H + offs_h[None, :], mask=wmask, other=0.0)
    else:
        g, v, w1, w3 = _hidden(u, t, offs_d, offs_h, mask_d, mask_h, W1, W3, B1, B3, D, H,
                               GATED, HAS_B1, HAS_B3, CDT, PREC)
    # W2[t] as an [h-chunk, D] tile, transposed: dA = dO W2^T
    w2 = tl.load(W2 + t * H * D + offs_h[:, None] * D + offs_d[None, :],
                 mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    a, dg, dv = _activation_bwd(g, v, tl.dot(do, tl.trans(w2.to(CDT)), input_precision=PREC), GATED,
                                (CDT == tl.float16) or (CDT == tl.bfloat16))
    return a, dg, dv, w1, w3


@triton.jit
def _token_tile(BS, D, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program ``(t, sample tile)`` of a fused kernel: token ``t``, sample and feature offsets and
    their masks."""
    t = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < BS
    mask_d = offs_d < D
    return t, offs_s, offs_d, mask_s, mask_d, mask_s[:, None] & mask_d[None, :]


@triton.jit
def _load_token_rows(PTR, t, offs_s, offs_d, io_mask, stride_s, stride_t, stride_d, CDT: tl.constexpr):
    """The ``[BLOCK_S, BLOCK_D]`` slice of token ``t`` of a strided ``[bs, T, D]`` tensor, in ``CDT``."""
    return tl.load(PTR + offs_s[:, None] * stride_s + t * stride_t + offs_d[None, :] * stride_d,
                   mask=io_mask, other=0.0).to(CDT)


@triton.jit
def _gelu_cdf_pdf(g, POLY: tl.constexpr):
    """``(Phi(g), phi(g))``, the standard normal CDF and density, fp32. ``POLY`` (16-bit outputs):
    ``Phi`` from ``phi`` by Abramowitz and Stegun's 26.2.17 (``1 - Phi(|g|) = phi(g) P(t)``, ``t = 1 /
    (1 + 0.2316419 |g|)``, ``P`` of degree 5; absolute error under 7.5e-8, far below a 16-bit
    rounding), which shares ``phi``'s one exponential: about 17 instructions an element on sm_90
    against libdevice's ``erf`` beside ``exp`` (the GELU passes are issue-bound there). Else ``erf``."""
    pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
    if POLY:
        t = 1.0 / (1.0 + 0.2316419 * tl.abs(g))
        q = pdf * t * (0.319381530 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978
                                                                                   + t * 1.330274429))))
        cdf = tl.where(g >= 0, 1.0 - q, q)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
    return cdf, pdf


@triton.jit
def _activation(g, v, GATED: tl.constexpr, POLY: tl.constexpr):
    """``SiLU(g) * v`` (SwiGLU) or the GELU of ``g`` (:func:`_gelu_cdf_pdf`), fp32."""
    if GATED:
        a = g * tl.sigmoid(g) * v
    else:
        cdf, _ = _gelu_cdf_pdf(g, POLY)
        a = g * cdf
    return a


@triton.jit
def _activation_bwd(g, v, da, GATED: tl.constexpr, POLY: tl.constexpr):
    """``(a, dg, dv)``: the activation recomputed, and the gradients of ``g`` and ``v`` given
    ``da`` (``dv`` is meaningless for the plain GELU)."""
    if GATED:
        sig = tl.sigmoid(g)
        sg = g * sig
        a = sg * v
        dg = da * v * (sig + sg * (1.0 - sig))
        dv = da * sg
    else:
        cdf, pdf = _gelu_cdf_pdf(g, POLY)
        a = g * cdf
        dg = da * (cdf + g * pdf)
        dv = da
    return a, dg, dv


@triton.jit
def ffn_fwd_kernel(
    U, W1, W3, W2, B1, B3, B2, OUT, G, V,
    BS, D, H, BS_KEY,
    stride_us, stride_ut, stride_ud,
    GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr, HAS_B2: tl.constexpr,
    SAVE: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    t, offs_s, offs_d, mask_s, mask_d, io_mask = _token_tile(BS, D, BLOCK_S, BLOCK_D)
    u = _load_token_rows(U, t, offs_s, offs_d, io_mask, stride_us, stride_ut, stride_ud, CDT)
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        g, v, _, _ = _hidden(u, t, offs_d, offs_h, mask_d, mask_h, W1, W3, B1, B3, D, H,
                             GATED, HAS_B1, HAS_B3, CDT, PREC)
        if SAVE:
            hid = t * BS * H + offs_s[:, None] * H + offs_h[None, :]
            hmask = mask_s[:, None] & mask_h[None, :]
            tl.store(G + hid, g.to(G.dtype.element_ty), mask=hmask)
            if GATED:
                tl.store(V + hid, v.to(V.dtype.element_ty), mask=hmask)
        a = _activation(g, v, GATED, (CDT == tl.float16) or (CDT == tl.bfloat16))
        w2 = tl.load(W2 + t * H * D + offs_h[:, None] * D + offs_d[None, :],
                     mask=mask_h[:, None] & mask_d[None, :], other=0.0)
        acc = tl.dot(a.to(CDT), w2.to(CDT), acc, input_precision=PREC)
    if HAS_B2:
        acc += tl.load(B2 + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + offs_s[:, None] * (D * tl.num_programs(0)) + t * D + offs_d[None, :],
             acc.to(OUT.dtype.element_ty), mask=io_mask)


# the forward writes only outputs that every launch writes again: tuned on its real arguments, as the
# backward's kernels, so that no host-bound timing decides its tile (``_tuning``). Tried at paper-small and
# not kept (run258, run259): the eight-warp 128-sample tiles its shared-memory estimate drops (128 x 64 x 8
# warps x 2 and 3 stages, 131 and 180 KiB on sm_90: 48.2 and 45.9 µs against 64 x 64 x 4 x 2's 45.0) and
# a persistent form, one or two programs an SM walking the tiles in one loop over (tile, chunk) steps
# (54-88 µs; its rows, loaded each step, pipelined with the weights: 139 against 115 KiB at 64 x 64 x 2,
# room for one program an SM where the one-tile form fits two)
ffn_fwd_tuned = TileTuner(ffn_fwd_kernel, _tile_configs(), prune=_prune_tiles,
                          key=["D", "H", "BS_KEY", "GATED", "SAVE", "CDT", "PREC"])


@triton.jit
def _prenorm_rows(S, RSTD, NW, t, offs_s, offs_d, mask_s, mask_d, io_mask,
                  stride_ss, stride_st, stride_sd, stride_rs, stride_rt, UDT: tl.constexpr):
    """``u = RMSNorm(s)`` of the program's rows from the forward's ``rstd``, in the norm kernel's
    order of products (``s * rstd * w``, rounded to ``UDT``, ``s``'s dtype: the forward's ``u`` bit for
    bit). Returns ``(u, rstd, w)``."""
    s = tl.load(S + offs_s[:, None] * stride_ss + t * stride_st + offs_d[None, :] * stride_sd,
                mask=io_mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + offs_s * stride_rs + t * stride_rt, mask=mask_s, other=0.0)
    nw = tl.load(NW + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return (s * rstd[:, None] * nw[None, :]).to(UDT), rstd, nw


@triton.jit
def _prenorm_grads(du, rstd, nw, S, DS, DW_PART, t, offs_s, offs_d, mask_d, io_mask, BS, D,
                   stride_ss, stride_st, stride_sd, ACCUMULATE: tl.constexpr, BLOCK_S: tl.constexpr):
    """The norm's backward on the program's rows (``du`` fp32, whole rows): ``ds`` (into ``DS``,
    ``S``'s strides; ``DS`` may be ``S``, whose rows only this program reads) and the norm weight's
    partial ``sum_rows du * xhat`` into the program's own row of ``DW_PART``, ``t * (sample tiles) +
    tile`` (``ACCUMULATE``: added to what an earlier token pass left there)."""
    # the row goes through a [4, BLOCK_D] tile whose other rows are masked off: stored as a [BLOCK_D] or
    # [1, BLOCK_D] tile, the kernel spilled up to 32 bytes a thread on sm_90 (ptxas, Triton 3.6; none so)
    j = tl.arange(0, 4)
    pmask = (j == 0)[:, None] & mask_d[None, :]
    row = t * tl.cdiv(BS, BLOCK_S) + tl.program_id(1)
    ptrs = DW_PART + (row + j).to(tl.int64)[:, None] * D + offs_d[None, :]
    # the earlier pass's partials loaded first, beside xhat's rows: loaded after the column sum's
    # barrier, the sum waited out its whole latency (4% of the kernel's stall samples, run232)
    earlier = tl.load(ptrs, mask=pmask, other=0.0) if ACCUMULATE else None
    rows = offs_s[:, None] * stride_ss + t * stride_st + offs_d[None, :] * stride_sd
    xhat = tl.load(S + rows, mask=io_mask, other=0.0).to(tl.float32) * rstd[:, None]
    g = du * nw[None, :]
    ds = rstd[:, None] * (g - xhat * (tl.sum(g * xhat, axis=1) / D)[:, None])
    tl.store(DS + rows, ds.to(DS.dtype.element_ty), mask=io_mask)
    tile = tl.where((j == 0)[:, None], tl.sum(du * xhat, axis=0)[None, :], 0.0)
    if ACCUMULATE:
        tile += earlier
    tl.store(ptrs, tile, mask=pmask)


@triton.jit
def ffn_bwd_act_kernel(
    DO, U, W1, W3, W2, B1, B3, G, V, DU, A, DG, DV, RSTD, NW, DS, DW_PART,
    BS, D, H, BS_KEY,
    stride_dos, stride_dot, stride_dod,
    stride_us, stride_ut, stride_ud, stride_dus,
    stride_rs, stride_rt,
    GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr,
    SAVED: tl.constexpr, STORE: tl.constexpr, PRENORM: tl.constexpr, ACCUMULATE: tl.constexpr,
    CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    PDL: tl.constexpr = False, EARLY: tl.constexpr = False,
):
    """``du`` for program ``(t, sample tile)``; with ``STORE`` also ``A, dG, dV`` for
    ``ffn_bwd_weight_kernel`` (without it, that kernel recomputes them). ``DU``'s rows are
    ``stride_dus`` apart (a pass over some of the tokens writes into the whole ``[bs, T, D]``).

    ``PRENORM``: the FFN's input is ``RMSNorm(s)``, ``U`` is ``s`` and ``RSTD`` the forward's
    ``[bs, T]`` fp32 statistics (strides ``stride_rs``, ``stride_rt``): the program forms its rows
    of ``u`` (:func:`_prenorm_rows`), writes them to ``DU`` (``[bs, tokens, D]`` contiguous, rows
    ``stride_dus`` apart) for the weight kernel, and turns its ``du`` into ``ds`` and the norm
    weight's partials (:func:`_prenorm_grads`) instead of storing ``du``.

    ``PDL`` (programmatic dependent launch, ``_pdl.pdl_prologue``): the program waits for the
    previous kernel before its first read, then releases the next one; or with ``EARLY`` it first reads
    its rows of ``dO`` and ``u`` (or ``s``, ``rstd`` and the norm weight), which the caller guarantees no
    kernel still in flight writes, then releases the next kernel and waits. It writes nothing before
    the wait."""
    t, offs_s, offs_d, mask_s, mask_d, io_mask = _token_tile(BS, D, BLOCK_S, BLOCK_D)
    if not EARLY:
        pdl_prologue(PDL)
    do = _load_token_rows(DO, t, offs_s, offs_d, io_mask, stride_dos, stride_dot, stride_dod, CDT)
    if PRENORM:
        u_rows, rstd, nw = _prenorm_rows(U, RSTD, NW, t, offs_s, offs_d, mask_s, mask_d, io_mask, stride_us,
                                         stride_ut, stride_ud, stride_rs, stride_rt, DU.dtype.element_ty)
        u = u_rows.to(CDT)
    else:
        u = _load_token_rows(U, t, offs_s, offs_d, io_mask, stride_us, stride_ut, stride_ud, CDT)
    if EARLY:
        pdl_prologue(PDL, True)
    if PRENORM:
        tl.store(DU + offs_s[:, None] * stride_dus + t * D + offs_d[None, :], u_rows, mask=io_mask)
    du = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        hid = t * BS * H + offs_s[:, None] * H + offs_h[None, :]
        hmask = mask_s[:, None] & mask_h[None, :]
        a, dg, dv, w1, w3 = _hidden_grads(u, do, G, V, hid, hmask, t, offs_d, offs_h, mask_d, mask_h, W1, W3,
                                          W2, B1, B3, D, H, SAVED, GATED, HAS_B1, HAS_B3, CDT, PREC)
        if STORE:
            if GATED:
                tl.store(DV + hid, dv.to(DV.dtype.element_ty), mask=hmask)
            tl.store(A + hid, a.to(A.dtype.element_ty), mask=hmask)
            tl.store(DG + hid, dg.to(DG.dtype.element_ty), mask=hmask)
        # du = dG W1^T (+ dV W3^T), the chunk's weight tiles transposed
        du = tl.dot(dg.to(CDT), tl.trans(w1.to(CDT)), du, input_precision=PREC)
        if GATED:
            du = tl.dot(dv.to(CDT), tl.trans(w3.to(CDT)), du, input_precision=PREC)
    if PRENORM:
        _prenorm_grads(du, rstd, nw, U, DS, DW_PART, t, offs_s, offs_d, mask_d, io_mask, BS, D,
                       stride_us, stride_ut, stride_ud, ACCUMULATE, BLOCK_S)
    else:
        tl.store(DU + offs_s[:, None] * stride_dus + t * D + offs_d[None, :],
                 du.to(DU.dtype.element_ty), mask=io_mask)


# the act kernel's tiles, chosen by timing (TileTuner), which restores nothing, so that its timings carry no
# copies: Triton's autotuner's restoring copies run inside the timed call, and they chose the plain
# kernel's 128 x 32 tiles, 22.9 µs a pass, against the best tile's 18.3 (run216). With the norm in front
# the kernel writes ``ds`` over ``s`` and adds to the partials of earlier passes, so it is tuned on scratch
# copies of those (:func:`_prenorm_scratch`)
ffn_bwd_act = TileTuner(ffn_bwd_act_kernel, _tile_configs(), prune=_prune_tiles,
                        key=["D", "H", "BS_KEY", "GATED", "SAVED", "STORE", "PRENORM", "CDT", "PREC"])
# the smallest sample tile the act kernel may take: the PRENORM partial buffer holds a row per program of it
_MIN_BLOCK_S = min(c.kwargs["BLOCK_S"] for c in ffn_bwd_act.configs)


@triton.jit
def ffn_bwd_weight_kernel(
    DO, U, A, DG, DV, W1, W3, W2, B1, B3, G, V, DW1, DW3, DW2, DB1, DB3, DB2,
    BS, D, H, BS_KEY, NSPLIT,
    stride_dos, stride_dot, stride_dod,
    stride_us, stride_ut, stride_ud,
    GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr, SAVED: tl.constexpr,
    RECOMPUTE: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr = False,
):
    """Program ``(t * NSPLIT + split, d tile, h tile)`` reduces one contiguous range of samples
    into its fp32 partial ``[NSPLIT, T, ...]`` slot; the caller sums the ``NSPLIT`` axis.

    ``RECOMPUTE``: ``A, dG, dV`` of the program's hidden tile are formed here from ``u``, ``dO`` and
    the weights (``G, V`` loaded when ``SAVED``), as ``ffn_bwd_act_kernel`` forms them, instead of
    read from its ``[T, bs, h]`` buffers; ``BLOCK_D`` then spans all of ``D`` (one d tile). ``PDL``:
    launched with programmatic dependent launch, it releases the next kernel, then waits
    (``_pdl.pdl_prologue``; never the last kernel of its chain)."""
    pdl_prologue(PDL, True)
    pid0 = tl.program_id(0)
    t = (pid0 // NSPLIT).to(tl.int64)
    split = pid0 % NSPLIT
    n_tokens = tl.num_programs(0) // NSPLIT
    pid_d = tl.program_id(1)
    pid_h = tl.program_id(2)
    per_split = tl.cdiv(tl.cdiv(BS, NSPLIT), BLOCK_S) * BLOCK_S
    s_begin = split * per_split
    s_end = tl.minimum(s_begin + per_split, BS)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_d = offs_d < D
    mask_h = offs_h < H
    acc_w1 = tl.zeros([BLOCK_D, BLOCK_H], dtype=tl.float32)
    acc_w3 = tl.zeros([BLOCK_D, BLOCK_H], dtype=tl.float32)
    acc_w2 = tl.zeros([BLOCK_D, BLOCK_H], dtype=tl.float32)  # dW2^T: all three products [D, h] tiles
    # bias gradients: elementwise sums of the loaded tiles, reduced over samples once after the
    # loop (a reduction per step put 24 barriers and ~120 shuffles into every step on sm_90)
    acc_b1 = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)
    acc_b3 = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)
    acc_b2 = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for s0 in range(s_begin, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        mask_s = offs_s < s_end
        io_mask = mask_s[:, None] & mask_d[None, :]
        u = _load_token_rows(U, t, offs_s, offs_d, io_mask, stride_us, stride_ut, stride_ud, CDT)
        do = _load_token_rows(DO, t, offs_s, offs_d, io_mask, stride_dos, stride_dot, stride_dod, CDT)
        hid = t * BS * H + offs_s[:, None] * H + offs_h[None, :]
        hmask = mask_s[:, None] & mask_h[None, :]
        if RECOMPUTE:
            a32, dg32, dv32, _, _ = _hidden_grads(u, do, G, V, hid, hmask, t, offs_d, offs_h, mask_d, mask_h,
                                                  W1, W3, W2, B1, B3, D, H, SAVED, GATED, HAS_B1, HAS_B3, CDT,
                                                  PREC)
            # rounded to the compute dtype as the stored buffers are; rows past the range are 0
            dg = tl.where(mask_s[:, None], dg32, 0.0).to(CDT)
            dv = tl.where(mask_s[:, None], dv32, 0.0).to(CDT)
            a = tl.where(mask_s[:, None], a32, 0.0).to(CDT)
        else:
            dg = tl.load(DG + hid, mask=hmask, other=0.0)
            dv = dg
            if GATED:
                dv = tl.load(DV + hid, mask=hmask, other=0.0)
            a = tl.load(A + hid, mask=hmask, other=0.0)
        ut = tl.trans(u)
        acc_w1 = tl.dot(ut, dg, acc_w1, input_precision=PREC)
        acc_b1 += dg.to(tl.float32)
        if GATED:
            acc_w3 = tl.dot(ut, dv, acc_w3, input_precision=PREC)
            acc_b3 += dv.to(tl.float32)
        acc_w2 = tl.dot(tl.trans(do), a, acc_w2, input_precision=PREC)
        acc_b2 += do.to(tl.float32)
    slot = split * n_tokens + t
    wmask = mask_d[:, None] & mask_h[None, :]
    wid = slot * D * H + offs_d[:, None] * H + offs_h[None, :]
    tl.store(DW1 + wid, acc_w1, mask=wmask)
    if GATED:
        tl.store(DW3 + wid, acc_w3, mask=wmask)
    tl.store(DW2 + slot * H * D + offs_h[None, :] * D + offs_d[:, None], acc_w2, mask=wmask)
    # one program column writes each bias gradient, so every element is written exactly once
    if pid_d == 0:
        tl.store(DB1 + slot * H + offs_h, tl.sum(acc_b1, axis=0), mask=mask_h)
        if GATED:
            tl.store(DB3 + slot * H + offs_h, tl.sum(acc_b3, axis=0), mask=mask_h)
    if pid_h == 0:
        tl.store(DB2 + slot * D + offs_d, tl.sum(acc_b2, axis=0), mask=mask_d)


# the weight kernel writes only its fp32 partial slots, every one each launch: tuned on its real arguments
ffn_bwd_weight = TileTuner(ffn_bwd_weight_kernel, _weight_configs(), prune=_prune_weight,
                           key=["D", "H", "BS_KEY", "GATED", "NSPLIT", "RECOMPUTE", "CDT", "PREC"])


# --- launchers -------------------------------------------------------------------------------

def _gemm_configs() -> list:
    """Tiles of :func:`ffn_token_gemm_kernel` (M, N, K tile, warps, stages). 16-bit dtypes autotune
    among all but the last (pruned: see :func:`_prune_gemm`); fp32 (CUDA-core ``ieee`` dots, there for
    exactness) takes the last, the interpreter one small tile. ``python -m bench sm90`` lists each
    tile's shared memory, registers and spills."""
    if interpreting():
        return [triton.Config(dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16), num_warps=4, num_stages=1)]
    tiles = [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 128, 8, 3),
             (128, 256, 128, 8, 2), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 16, 4, 2)]
    return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k), num_warps=w, num_stages=st)
            for m, n, k, w, st in tiles]


# per-token GEMMs below this many multiply-adds take one tile untuned (tests, tiny models)
_TUNE_MIN_MACS = 1 << 28


def _prune_gemm(configs, named_args, **kwargs) -> list:
    """fp32: the small CUDA-core tile. 16-bit: the tensor-core tiles; those wider than ``128 x 128 x 64``
    only for one product (two would overflow shared memory); GEMMs under ``_TUNE_MIN_MACS`` per token
    take ``128 x 64`` untuned."""
    if len(configs) == 1:
        return configs
    if kwargs["CDT"] not in (tl.float16, tl.bfloat16):
        return [c for c in configs if c.kwargs["BLOCK_K"] == 16]
    fits = [c for c in configs if c.kwargs["BLOCK_K"] != 16 and (
        not kwargs["DUAL"] or (c.kwargs["BLOCK_N"] <= 128 and c.kwargs["BLOCK_K"] <= 64))]
    if named_args["M_KEY"] * named_args["N"] * named_args["K_KEY"] >= _TUNE_MIN_MACS:
        return fits
    return [c for c in fits if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == (128, 64)] or fits[:1]


@triton.jit
def _desc_tile(desc, t, r0, c0, R: tl.constexpr, C: tl.constexpr, TRANS: tl.constexpr):
    """The ``[R, C]`` tile at ``(r0, c0)`` of token ``t`` of an operand read through a 3-d tensor
    descriptor (TMA) over ``(token, outer, inner)``: the contiguous inner dimension is the tile's
    columns, or its rows when ``TRANS``. Out-of-bounds elements read as zeros."""
    if TRANS:
        tile = tl.trans(tl.reshape(desc.load([t, c0, r0]), (C, R)))
    else:
        tile = tl.reshape(desc.load([t, r0, c0]), (R, C))
    return tile


@triton.jit
def _gemm_tile(
    tile, A, B, A2, B2, BIAS, C, M, N, K,
    stride_am, stride_at, stride_ak, stride_bt, stride_bk, stride_bn, stride_cm, stride_ct, stride_cn,
    DUAL: tl.constexpr, HAS_BIAS: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    TMA: tl.constexpr, A_T: tl.constexpr, B_T: tl.constexpr,
):
    """Output tile ``tile`` of :func:`ffn_token_gemm_kernel`: ``(t, m tile, n tile)`` with ``t`` the
    slowest index and, within a token, ``GROUP_M`` row tiles walking the column tiles together."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_token = num_m * num_n
    t32 = tile // per_token
    t = t32.to(tl.int64)
    pid_m, pid_n = grouped_tile(tile % per_token, num_m, num_n, GROUP_M)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    offs_m = m0.to(tl.int64) + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if TMA:
            a = _desc_tile(A, t32, m0, k0, BLOCK_M, BLOCK_K, A_T)
            b = _desc_tile(B, t32, k0, n0, BLOCK_K, BLOCK_N, B_T)
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            a_off = offs_m[:, None] * stride_am + t * stride_at + offs_k[None, :] * stride_ak
            b_off = t * stride_bt + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
            a_mask = mask_m[:, None] & mask_k[None, :]
            b_mask = mask_k[:, None] & mask_n[None, :]
            a = tl.load(A + a_off, mask=a_mask, other=0.0).to(CDT)
            b = tl.load(B + b_off, mask=b_mask, other=0.0).to(CDT)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        if DUAL:
            if TMA:
                a2 = _desc_tile(A2, t32, m0, k0, BLOCK_M, BLOCK_K, A_T)
                b2 = _desc_tile(B2, t32, k0, n0, BLOCK_K, BLOCK_N, B_T)
            else:
                a2 = tl.load(A2 + a_off, mask=a_mask, other=0.0).to(CDT)
                b2 = tl.load(B2 + b_off, mask=b_mask, other=0.0).to(CDT)
            acc = tl.dot(a2, b2, acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(BIAS + t * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if TMA:
        C.store([t32, m0, n0], tl.reshape(acc.to(C.dtype), (1, BLOCK_M, BLOCK_N)))
    else:
        out = C + offs_m[:, None] * stride_cm + t * stride_ct + offs_n[None, :] * stride_cn
        tl.store(out, acc.to(C.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.autotune(configs=_gemm_configs(), key=["M_KEY", "N", "K_KEY", "DUAL", "HAS_BIAS"],
                 prune_configs_by={"early_config_prune": _prune_gemm})
@triton.jit
def ffn_token_gemm_kernel(
    A, B, A2, B2, BIAS, C,
    M, N, K, M_KEY, K_KEY, TOKENS,
    stride_am, stride_at, stride_ak,
    stride_bt, stride_bk, stride_bn,
    stride_cm, stride_ct, stride_cn,
    DUAL: tl.constexpr, HAS_BIAS: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    TMA: tl.constexpr = False, A_T: tl.constexpr = False, B_T: tl.constexpr = False,
    PERSISTENT: tl.constexpr = False,
):
    """``C[t] = A[t] @ B[t] (+ A2[t] @ B2[t] when DUAL) (+ bias[t])`` for ``t < TOKENS``, one output
    tile (:func:`_gemm_tile`) per program, or with ``PERSISTENT`` a grid of about one program per SM
    walking the tiles in steps of the grid's size (one flattened loop, so that a tile's epilogue
    overlaps the next tile's first loads). Every GEMM of the wide-token path: the hidden
    pre-activations, the down projection, ``dA``, ``du`` and the weight gradients. With ``TMA`` the
    operands and ``C`` are 3-d tensor descriptors (``A_T``/``B_T`` as ``TRANS`` in
    :func:`_desc_tile`), else pointers with strides."""
    if PERSISTENT:
        total = TOKENS * tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), total, tl.num_programs(0), flatten=True):
            _gemm_tile(tile, A, B, A2, B2, BIAS, C, M, N, K, stride_am, stride_at, stride_ak, stride_bt,
                       stride_bk, stride_bn, stride_cm, stride_ct, stride_cn, DUAL, HAS_BIAS, CDT, PREC,
                       BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, TMA, A_T, B_T)
    else:
        _gemm_tile(tl.program_id(0), A, B, A2, B2, BIAS, C, M, N, K, stride_am, stride_at, stride_ak,
                   stride_bt, stride_bk, stride_bn, stride_cm, stride_ct, stride_cn, DUAL, HAS_BIAS, CDT,
                   PREC, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, TMA, A_T, B_T)


@triton.jit
def ffn_act_kernel(G, V, DA, A_OUT, DG_OUT, DV_OUT, PB1, PB3, B1, B3, BS, H, PB_STRIDE, ROWS,
                   GATED: tl.constexpr, BACKWARD: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr,
                   BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr):
    """The activation of the wide-token path over ``[T, bs, h]`` buffers: forward ``A = act(G + b1,
    V + b3)``; backward, given ``dA``, ``A`` again and ``dG`` (and ``dV``), and the bias gradients'
    partials. ``G`` and ``V`` are the up-projections' products without their biases, which are added
    here (``[T, h]``, any float dtype; fp32 sums). An output may be the buffer of an input it replaces
    (each element is read before it is written).

    Program ``(t * n_sb + sb, hb)`` covers samples ``[sb * ROWS, (sb + 1) * ROWS)`` of token ``t`` and
    ``BLOCK_H`` hidden columns, ``BLOCK_S`` rows per step. Backward, it writes the column sums of
    ``dG`` (and ``dV``) over its samples, as rounded into their buffers, to ``PB1`` (``PB3``) at
    ``sb * PB_STRIDE + t * H`` (fp32): the caller sums the ``n_sb`` partials."""
    POLY: tl.constexpr = (A_OUT.dtype.element_ty == tl.float16) or (A_OUT.dtype.element_ty == tl.bfloat16)
    n_sb = tl.cdiv(BS, ROWS)
    t = (tl.program_id(0) // n_sb).to(tl.int64)
    sb = tl.program_id(0) % n_sb
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    s_end = tl.minimum((sb + 1) * ROWS, BS)
    acc1 = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)
    # the biases as tiles, once per program (loaded and broadcast inside the loop, they cost the
    # GELU pass at rankmixer-100m 8 us forward and 28 backward, run128)
    bias1 = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)
    bias3 = tl.zeros([BLOCK_S, BLOCK_H], dtype=tl.float32)
    if HAS_B1:
        bias1 += tl.load(B1 + t * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    if HAS_B3:
        bias3 += tl.load(B3 + t * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    for s0 in range(sb * ROWS, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < s_end)[:, None] & mask_h[None, :]
        idx = t * BS * H + offs_s.to(tl.int64)[:, None] * H + offs_h[None, :]
        g = tl.load(G + idx, mask=mask, other=0.0).to(tl.float32)
        if HAS_B1:
            g += bias1
        v = g
        if GATED:
            v = tl.load(V + idx, mask=mask, other=0.0).to(tl.float32)
            if HAS_B3:
                v += bias3
        if BACKWARD:
            da = tl.load(DA + idx, mask=mask, other=0.0).to(tl.float32)
            a, dg, dv = _activation_bwd(g, v, da, GATED, POLY)
            dg = dg.to(DG_OUT.dtype.element_ty)
            tl.store(DG_OUT + idx, dg, mask=mask)
            acc1 += dg.to(tl.float32)  # masked elements are 0: da = 0 there, and dG, dV are multiples of it
            if GATED:
                dv = dv.to(DV_OUT.dtype.element_ty)
                tl.store(DV_OUT + idx, dv, mask=mask)
                acc3 += dv.to(tl.float32)
        else:
            a = _activation(g, v, GATED, POLY)
        tl.store(A_OUT + idx, a.to(A_OUT.dtype.element_ty), mask=mask)
    if BACKWARD:
        part = sb.to(tl.int64) * PB_STRIDE + t * H + offs_h
        tl.store(PB1 + part, tl.sum(acc1, axis=0), mask=mask_h)
        if GATED:
            tl.store(PB3 + part, tl.sum(acc3, axis=0), mask=mask_h)


_TL_DTYPES = {
    torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


def compute_dtype(u: torch.Tensor, weights, lower: bool = False) -> torch.dtype:
    """The products' operand dtype: ``u``'s where every weight has it; with ``lower`` (the caller
    lowers the weights itself, as autocast would) ``u``'s wherever ``u`` is 16-bit, the weights then
    rounded to it (in-kernel on the fused path, by :func:`_lowered` per token pass on the wide one);
    else fp32."""
    if (lower and u.dtype in (torch.float16, torch.bfloat16)) or (
            all(w.dtype == u.dtype for w in weights) and u.dtype in _TL_DTYPES):
        return u.dtype
    return torch.float32


def _lowered(w: torch.Tensor | None, cdt: torch.dtype) -> torch.Tensor | None:
    """``w`` in the compute dtype ``cdt`` for the wide path's GEMMs (a copy only where it differs)."""
    return w if w is None or w.dtype == cdt else w.to(cdt)


def _prec(cdt: torch.dtype) -> str:
    return "ieee" if cdt in (torch.float32, torch.float64) else "tf32"


def _block_d(d: int) -> int:
    """The whole width ``D`` stays in registers in the (token, sample tile) kernels."""
    return max(16, triton.next_power_of_2(d))


def _num_splits(bs: int, tiles: int, device: torch.device) -> int:
    """Sample ranges per token in the weight-gradient pass: as many as keep its programs within one
    wave of two an SM, each range at least 256 samples (a few in the interpreter). Rounding up put a
    sliver of programs into a second wave: 288 programs for 264 places at paper-small (a pass 43.2 µs
    against 39.7 with 5 ranges, run232)."""
    target = num_programs_for(1 << 30, device, per_sm=2)
    min_range = 256 if device.type == "cuda" else 16
    return max(1, min(target // tiles, triton.cdiv(bs, min_range)))


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


# Tokens wider than this (``next_power_of_2(D)``; half for 32/64-bit dtypes) take the tiled
# per-token GEMMs instead of the fused (token, sample tile) kernels, whose whole-row tiles would
# not fit in shared memory.
FUSED_MAX_D = 256


def fused_path(d: int, cdt: torch.dtype) -> bool:
    """Whether tokens of width ``d`` in the compute dtype ``cdt`` take the fused (token, sample tile)
    kernels rather than the wide-token path's tiled GEMMs and activation pass."""
    limit = FUSED_MAX_D if cdt in (torch.float16, torch.bfloat16) else FUSED_MAX_D // 2
    return _block_d(d) <= limit


def _operand_desc(x: torch.Tensor, rows: int, toks: int, cols: int, strides: tuple, cdt: torch.dtype):
    """A tensor descriptor over operand ``x`` of a per-token GEMM, whose ``[rows, cols]`` slice of token
    ``t`` sits at ``x + r * s_row + t * s_tok + c * s_col`` (``strides = (s_row, s_tok, s_col)``), with
    the dimensions ``(token, outer, inner)``, ``inner`` the unit-stride one (whatever the strides'
    order: TMA takes them unsorted, and a middle token dimension would cost a copy through
    registers). Returns ``(descriptor, TRANS)`` for :func:`_desc_tile` (``TRANS``: the inner
    dimension is the rows; the block shape is set per launch by :func:`_set_block`), or ``None``
    where TMA cannot address ``x``: a 32/64-bit compute dtype (those take CUDA-core dots), another
    dtype than the compute one, an address or a stride not a multiple of 16 bytes, no unit stride."""
    if cdt not in (torch.float16, torch.bfloat16) or x.dtype != cdt or x.data_ptr() % 16:
        return None
    inner = 0 if strides[0] == 1 and rows > 1 else 2
    if strides[inner] != 1:
        return None
    outer = 2 - inner
    if any(strides[i] * x.element_size() % 16 for i in (1, outer)):
        return None
    sizes = (rows, toks, cols)
    desc = TensorDescriptor(x, [toks, sizes[outer], sizes[inner]], [strides[1], strides[outer], 1],
                            [1, 1, 16])
    return desc, inner == 0


def _set_block(op, r: int, c: int) -> None:
    """Set the block shape of ``(descriptor, TRANS)`` for an ``[r, c]`` tile."""
    desc, trans = op
    desc.block_shape = [1, c, r] if trans else [1, r, c]


def _token_gemm(a, b, c, t, m, n, k, sa, sb, sc, cdt, *, a2=None, b2=None, bias=None, tma=None) -> None:
    """``c[t] = a[t] @ b[t] (+ a2[t] @ b2[t]) (+ bias[t])`` through :func:`ffn_token_gemm_kernel`
    over ``t * m tiles * n tiles`` programs (``t`` tokens); ``sa``/``sb``/``sc`` are the ``(m, t, k)``,
    ``(t, k, n)`` and ``(m, t, n)`` strides (``a2``/``b2`` share ``a``'s/``b``'s).

    ``tma``: read and write through tensor descriptors (``None``: as ``UNIMIXER_FFN_TMA`` says, see
    :func:`_use_tma`; ``True`` raises where an operand does not allow it). Pointer loads take the
    autotuned tiles, TMA the fixed launch of :func:`_tma_launch`."""
    if cublas_token_gemms(cdt, c.device):
        _bmm_token_gemm(a, b, c, t, m, n, k, sa, sb, sc, a2, b2, bias)
        return
    descs = None
    a_strides, b_strides = (sa[0], sa[1], sa[2]), (sb[1], sb[0], sb[2])
    dual = a2 is not None
    if tma is None:
        tma = _use_tma(m, n, k, dual)
    if tma:
        descs = [_operand_desc(x, r, t, cc, st, cdt) if x is not None else None
                 for x, r, cc, st in ((a, m, k, a_strides), (b, k, n, b_strides), (a2, m, k, a_strides),
                                      (b2, k, n, b_strides), (c, m, n, sc))]
        if any(d is None for d, x in zip(descs, (a, b, a2, b2, c)) if x is not None) or descs[4][1]:
            if tma is True:
                raise ValueError("tma=True: an operand is not readable through a tensor descriptor")
            descs = None
    consts = dict(DUAL=dual, HAS_BIAS=bias is not None, CDT=_TL_DTYPES[cdt], PREC=_prec(cdt), GROUP_M=8)
    sizes = (m, n, k, bucket(m), bucket(k), t, *sa, *sb, *sc)
    bias = bias if bias is not None else b
    if descs is None:
        def grid(meta):
            return (t * triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

        ffn_token_gemm_kernel[grid](a, b, a2 if dual else a, b2 if dual else b, bias, c, *sizes, **consts)
        return
    bm, bn, bk, warps, stages, persistent = _tma_launch(dual)
    for d, (r, cc) in zip(descs, ((bm, bk), (bk, bn), (bm, bk), (bk, bn), (bm, bn))):
        if d is not None:
            _set_block(d, r, cc)
    descs[2:4] = [d if d is not None else descs[i] for i, d in enumerate(descs[2:4])]
    tiles = t * triton.cdiv(m, bm) * triton.cdiv(n, bn)
    grid = min(tiles, sm_count(c.device)) if persistent else tiles
    ffn_token_gemm_kernel.fn[(grid,)](
        *(d[0] for d in descs[:4]), bias, descs[4][0], *sizes, **consts, TMA=True, A_T=descs[0][1],
        B_T=descs[1][1], BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PERSISTENT=persistent, num_warps=warps,
        num_stages=stages)


def cublas_token_gemms(cdt: torch.dtype, device: torch.device) -> bool:
    """Whether the wide-token path's GEMMs run through ``torch.bmm`` (cuBLAS) rather than
    :func:`ffn_token_gemm_kernel`: the ``UNIMIXER_FFN_GEMM`` switch. 'auto' takes cuBLAS for 16-bit
    operands on CUDA (fp32 keeps the kernel's exact ``ieee`` dots, whatever torch's TF32 flags say);
    'cublas' takes ``torch.bmm`` for 16-bit operands on any device (the CPU's in the interpreter tests)."""
    can = cdt in (torch.float16, torch.bfloat16)
    return cublas_switch(FFN_GEMM_SWITCH, can, can and device.type == "cuda" and not interpreting(),
                         f"fp16 or bf16 operands (weights in the activations' dtype), got {cdt}")


def _bmm_token_gemm(a, b, c, t, m, n, k, sa, sb, sc, a2, b2, bias) -> None:
    """:func:`_token_gemm` through ``torch.bmm`` / ``baddbmm_``: every operand a strided view
    (cuBLAS takes a unit stride in either of a matrix's two dimensions, so none is copied). A bias
    is written into ``c`` first (rounded to ``c``'s dtype) and the product added to it in fp32
    (``beta = 1``), where the Triton GEMM adds the fp32 bias to its accumulator. A ``c`` wider than
    the operands (a weight gradient in its fp32 weight's dtype) takes cuBLAS's fp32 output of the
    16-bit product (``out_dtype``), off CUDA the same product of the operands widened exactly."""
    def view(x, shape, strides):
        return x.as_strided(shape, strides, x.storage_offset())

    cv = view(c, (t, m, n), (sc[1], sc[0], sc[2]))
    av, bv = view(a, (t, m, k), (sa[1], sa[0], sa[2])), view(b, (t, k, n), sb)
    if c.dtype != a.dtype:
        if bias is not None or a2 is not None or c.dtype != torch.float32:
            raise ValueError(f"an output in another dtype than the operands' ({c.dtype}, {a.dtype}) must be "
                             "an fp32 plain product, without a bias or a second product")
        if c.device.type == "cuda":
            torch.bmm(av, bv, out_dtype=c.dtype, out=cv)
        else:
            torch.bmm(av.to(c.dtype), bv.to(c.dtype), out=cv)
        return
    if bias is None:
        torch.bmm(av, bv, out=cv)
    else:
        _fill_rows(cv, bias)
        cv.baddbmm_(av, bv)
    if a2 is not None:
        cv.baddbmm_(view(a2, (t, m, k), (sa[1], sa[0], sa[2])), view(b2, (t, k, n), sb))


@triton.jit
def fill_rows_kernel(C, BIAS, M, N, stride_ct, stride_cm, stride_cn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``C[t, i, :] = BIAS[t, :]`` for the ``BLOCK_M`` rows ``i`` of program ``(t, m block)``, in
    ``BLOCK_N``-wide steps (``BIAS`` contiguous ``[T, N]``; ``C`` through its strides)."""
    t = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        row = tl.load(BIAS + t * N + offs_n, mask=offs_n < N, other=0.0)
        tile = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32) + row.to(tl.float32)[None, :]
        ptrs = C + t * stride_ct + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(ptrs, tile.to(C.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


def _fill_rows(c: torch.Tensor, bias: torch.Tensor) -> None:
    """``c[t, i, :] = bias[t, :]`` for ``c [T, M, N]`` (any strides) and ``bias [T, N]``: one write
    pass (torch's copy of the broadcast bias is not vectorised: 43 us for the RankMixer FFN's 48 MB
    output on the H200, run127)."""
    t, m, n = c.shape
    if c.numel() == 0:
        return
    bm, bn = (16, 16) if interpreting() else (32, 256)
    fill_rows_kernel[(t, triton.cdiv(m, bm))](c, bias.contiguous(), m, n, *c.stride(), BLOCK_M=bm, BLOCK_N=bn,
                                              num_warps=4)


# The TMA path's launch by the number of products (False: one, True: two): (BLOCK_M, BLOCK_N, BLOCK_K,
# warps, stages, persistent). One product: 128 x 256 tiles, about one program per SM; on every GEMM of
# the GELU FFN at rankmixer-100m, timed alone, the fastest of the schemes probed: 0-16% off cuBLAS, 5-16%
# faster than one 128 x 128 tile per program (bench/results/2026-11-29-h200-run41) and 4-24% faster than
# 128 x 256 tiles one per program (run42); inside the op under autocast every scheme gave the same
# per-GEMM times (run43). Two products: 128 x 128, one
# program per tile (persistent, three stages would need 229 KiB of shared memory; with two it ran 13%
# slower, run41).
_TMA_LAUNCH = {False: (128, 256, 64, 8, 3, True), True: (128, 128, 64, 8, 3, False)}


def _tma_launch(dual: bool) -> tuple:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, persistent)`` of the TMA path (16-wide tiles in the
    interpreter, whose test shapes then clip tiles at every edge)."""
    bm, bn, bk, warps, stages, persistent = _TMA_LAUNCH[dual]
    if interpreting():
        return 16, 16, 16, 4, 1, persistent
    return bm, bn, bk, warps, stages, persistent


def _use_tma(m: int, n: int, k: int, dual: bool) -> bool | None:
    """Whether an ``[m, k] x [k, n]`` GEMM reads through tensor descriptors, by ``UNIMIXER_FFN_TMA``:
    '1' wherever its operands allow it (``None``: fall back to pointers elsewhere), '0' never, 'auto'
    where they allow it and the TMA tile divides ``m``, ``n`` and ``k``. That rule sorts the shapes
    measured, not the cause: TMA won every GEMM of the GELU FFN at rankmixer-100m timed alone (run41,
    run42) and the op by 2% (run43), and the autotuned pointer tiles won most GEMMs at paper-100m's
    shapes, by 10-60%, at h = 688 (tiles clip) as at h = 768 (none does; run42)."""
    mode = switch(FFN_TMA_SWITCH)
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{FFN_TMA_SWITCH}: expected 'auto', '0' or '1', got {mode!r}")
    if mode == "0":
        return False
    bm, bn, bk = _TMA_LAUNCH[dual][:3]
    if mode == "auto" and (m % bm or n % bn or k % bk):
        return False
    return None


# samples per program of the activation pass (its bias partials: one row per ACT_ROWS samples) and
# its tile per step, (BLOCK_S, BLOCK_H, warps) by (gated, backward), 16-wide in the interpreter. SwiGLU:
# (16, 128, 4), the fastest of 14 settings on the H200 for the GELU pass at rankmixer-100m when it
# used erf (run125) and near it for the SwiGLU pass of a 6-token pass at paper-100m (16 and 42 us,
# from 22 and 47). GELU, since its tail-polynomial CDF: forward (8, 128, 4), backward (8, 128, 2), of 9
# tiles at 32, 64 and 128 samples a program (run157: 122.1 and 237.3 us against 130.5 and 253.0)
ACT_ROWS = 64
_ACT_TILE = {(True, False): (16, 128, 4), (True, True): (16, 128, 4),
             (False, False): (8, 128, 4), (False, True): (8, 128, 2)}


def _act_pass(g, v, b1, b3, da, a_out, dg_out=None, dv_out=None, pb1=None, pb3=None) -> None:
    """:func:`ffn_act_kernel` over ``[n, bs, h]`` buffers (contiguous) and their biases ``b1``, ``b3``
    (``[n, h]`` contiguous, or ``None``): forward when ``da`` is None; backward writes the bias partials
    into ``pb1`` (``pb3``): views of ``[cdiv(bs, ACT_ROWS), T, h]`` fp32 buffers starting at this
    pass's first token."""
    n, bs, h = g.shape
    if g.numel() == 0:
        return
    backward = da is not None
    bs_blk, bh_blk, warps = (16, 16, 4) if interpreting() else _ACT_TILE[v is not None, backward]
    n_sb = triton.cdiv(bs, ACT_ROWS)
    pb_stride = pb1.stride(0) if backward else 0
    ffn_act_kernel[(n * n_sb, triton.cdiv(h, bh_blk))](
        g, v if v is not None else g, da if backward else g, a_out,
        dg_out if dg_out is not None else a_out, dv_out if dv_out is not None else a_out,
        pb1 if backward else g, pb3 if pb3 is not None else (pb1 if backward else g),
        b1 if b1 is not None else g, b3 if b3 is not None else g,
        bs, h, pb_stride, ACT_ROWS,
        GATED=v is not None, BACKWARD=backward, HAS_B1=b1 is not None, HAS_B3=b3 is not None,
        BLOCK_S=bs_blk, BLOCK_H=bh_blk, num_warps=warps)


def _pre_tiled(u, w, cdt, out=None) -> torch.Tensor:
    """``u W`` per token as ``[T, bs, h]`` (compute dtype), into ``out`` when given; the bias is the
    activation pass's to add (:func:`ffn_act_kernel`)."""
    bs, t, d = u.shape
    h = w.shape[-1]
    out = new_output((t, bs, h), like=u, dtype=cdt) if out is None else out
    _token_gemm(u, w, out, t, bs, h, d, (u.stride(0), u.stride(1), u.stride(2)), (d * h, h, 1),
                (h, bs * h, 1), cdt)
    return out


# the fused path's 'auto' passes: no fewer tokens than this each (4 a pass were 13% slower, run75)
FUSED_MIN_CHUNK = 8
# the wide-token path's 'auto' passes when the norm before the FFN is folded into its backward
# (``prenorm``): about six backward passes, two forward ones, of no fewer tokens than this each
FOLDED_PASSES, FOLDED_FWD_PASSES, FOLDED_MIN_CHUNK = 6, 2, 4


def _token_chunk(t: int, fused: bool = False, folded: bool = False, forward: bool = False) -> int:
    """Tokens per backward pass through the ``[tokens, bs, h]`` buffers, by
    ``UNIMIXER_FFN_TOKEN_CHUNK``: 'auto' (the default), 'all' (one pass) or a positive integer
    (capped at ``t``). Fewer tokens per pass shrink the buffers, and the training step's peak, at the
    price of smaller launches. 'auto':

    - the fused path (``D <= FUSED_MAX_D``): up to four passes of at least :data:`FUSED_MIN_CHUNK`
      tokens. There the three hidden buffers set the UniMixer block's training peak at paper-small:
      169.7 / 154.4 / 144.3 MiB in 0.847 / 0.849 / 0.958 ms with passes of 16 / 8 / 4 tokens (run75);
    - the wide-token path with the norm folded into the backward (``folded``): about
      :data:`FOLDED_PASSES` passes of at least :data:`FOLDED_MIN_CHUNK` tokens (the ``forward``'s
      unsaved buffers: :data:`FOLDED_FWD_PASSES`). Each backward pass then also recomputes only its
      own rows of the FFN's input and holds only their gradient: with one pass the UniMixer block
      at paper-100m (D = 512) peaked at 873 MiB, with six at 580 (the mixing backward's point;
      the FFN's 559), in 6.58 against 6.20 ms a training step (run84, run87);
    - the wide-token path otherwise: one pass (the RankMixer block at rankmixer-100m trained in
      3.32 / 3.44 ms with 4 / 2 tokens per pass, against 3.12 in one, with a peak of 709 / 661
      against 1009 MiB, run44)."""
    mode = switch(FFN_CHUNK_SWITCH)
    if mode == "auto":
        if fused:
            return min(t, max(FUSED_MIN_CHUNK, triton.cdiv(t, 4)))
        if folded:
            passes = FOLDED_FWD_PASSES if forward else FOLDED_PASSES
            return min(t, max(FOLDED_MIN_CHUNK, triton.cdiv(t, passes)))
        return t
    if mode == "all":
        return t
    if not mode.isdigit() or int(mode) < 1:
        raise ValueError(f"{FFN_CHUNK_SWITCH}: expected 'auto', 'all' or a positive integer, got {mode!r}")
    return min(int(mode), t)


def _chunks(t: int, tc: int):
    """``slice``s of ``tc`` tokens (the last may be shorter) covering ``t``."""
    return [slice(t0, min(t0 + tc, t)) for t0 in range(0, t, tc)]


def _part(x: torch.Tensor | None, sl: slice, dim: int = 0) -> torch.Tensor | None:
    """Tokens ``sl`` of ``x`` (a view; ``dim`` is the token dimension), or ``None``."""
    return None if x is None else x.narrow(dim, sl.start, sl.stop - sl.start)


def ffn_fwd(
    u: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor | None,
    w2: torch.Tensor,
    b1: torch.Tensor | None,
    b3: torch.Tensor | None,
    b2: torch.Tensor | None,
    save: bool,
    folded: bool = False,
    lower: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Forward of the per-token FFN (gated when ``w3`` is given). Returns ``(o [bs, T, D],
    G, V)``; ``G``/``V`` are ``[T, bs, h]`` in the compute dtype when ``save``, else ``None``: the
    hidden pre-activations for :func:`ffn_bwd` (on the wide-token path without their biases).
    ``folded``: the wide-token path runs in the token passes of the backward with the norm folded
    in (:func:`_token_chunk`), so that its unsaved hidden buffers stay as small. ``lower``: 16-bit
    ``u`` with weights of another dtype computes in ``u``'s dtype (:func:`compute_dtype`).

    ``u`` may have any strides; the weights and biases are made contiguous (a no-op for
    ordinary parameters)."""
    bs, t, d = u.shape
    h = w1.shape[-1]
    gated = w3 is not None
    w1, w3, w2, b1, b3, b2 = (_contig(x) for x in (w1, w3, w2, b1, b3, b2))
    cdt = compute_dtype(u, [w for w in (w1, w3, w2) if w is not None], lower)
    o = new_output((bs, t, d), like=u)
    if bs > 0 and t > 0 and not fused_path(d, cdt):
        g = new_output((t, bs, h), like=u, dtype=cdt) if save else None
        v = new_output((t, bs, h), like=u, dtype=cdt) if save and gated else None
        for sl in _chunks(t, _token_chunk(t, folded=folded, forward=True)):
            n = sl.stop - sl.start
            u_c = _part(u, sl, 1)
            g_c = _pre_tiled(u_c, _lowered(_part(w1, sl), cdt), cdt, _part(g, sl))
            v_c = _pre_tiled(u_c, _lowered(_part(w3, sl), cdt), cdt, _part(v, sl)) if gated else None
            act = new_output(g_c.shape, like=g_c) if save else g_c  # not saving: A replaces G
            _act_pass(g_c, v_c, _part(b1, sl), _part(b3, sl), None, act)
            _token_gemm(act, _lowered(_part(w2, sl), cdt), _part(o, sl, 1), n, bs, d, h, (h, bs * h, 1),
                        (h * d, d, 1), (t * d, d, 1), cdt, bias=_part(b2, sl))
            # this pass's buffers go back before the next pass allocates its own (assigning the next
            # pass's over these names would free them only after: two passes' buffers at once)
            del g_c, v_c, act
        return o, g, v
    g = new_output((t, bs, h), like=u, dtype=cdt) if save else None
    v = new_output((t, bs, h), like=u, dtype=cdt) if save and gated else None
    if bs == 0 or t == 0:
        return o, g, v
    dummy = w1
    ffn_fwd_tuned[lambda meta: (t, triton.cdiv(bs, meta["BLOCK_S"]))](
        u, w1, w3 if gated else dummy, w2,
        b1 if b1 is not None else dummy, b3 if b3 is not None else dummy, b2 if b2 is not None else dummy,
        o, g if save else o, v if v is not None else o,
        bs, d, h, bucket(bs),
        u.stride(0), u.stride(1), u.stride(2),
        GATED=gated, HAS_B1=b1 is not None, HAS_B3=b3 is not None, HAS_B2=b2 is not None,
        SAVE=save, CDT=_TL_DTYPES[cdt], PREC=_prec(cdt), BLOCK_D=_block_d(d),
    )
    return o, g, v


def _ffn_bwd_act_fused(do, u, w1, w3, w2, b1, b3, g, v, du, a, dg, dv, cdt, store: bool, norm=None,
                       launch: dict | None = None):
    """``ffn_bwd_act_kernel`` over the tokens of ``u``; returns the launch's sample tiles per token.
    ``norm``: ``(ds, rstd, weight, partial, accumulate)`` when ``u`` is the norm's input ``s``
    (``PRENORM``, its tile tuned on :func:`_prenorm_scratch`); ``du`` then receives the pass's ``u``
    (``[bs, tokens, D]`` contiguous) for the weight kernel. ``launch``: the kernel's ``PDL`` and
    ``EARLY`` keywords with Triton's ``launch_pdl`` (:func:`ffn_bwd`)."""
    bs, t, d = u.shape
    h = w1.shape[-1]
    gated = w3 is not None
    saved = g is not None
    dummy = w1
    ds, rstd, nw, partial, accumulate = norm if norm is not None else (dummy,) * 4 + (False,)
    rstd_strides = rstd.stride() if norm is not None else (0, 0)
    args = [do, u, w1, w3 if gated else dummy, w2,
            b1 if b1 is not None else dummy, b3 if b3 is not None else dummy,
            g if saved else dummy, v if (saved and gated) else dummy,
            du, a, dg, dv, rstd, nw, ds, partial,
            bs, d, h, bucket(bs),
            do.stride(0), do.stride(1), do.stride(2),
            u.stride(0), u.stride(1), u.stride(2), du.stride(0),
            *rstd_strides]
    meta = dict(GATED=gated, HAS_B1=b1 is not None, HAS_B3=b3 is not None,
                SAVED=saved, STORE=store, PRENORM=norm is not None, ACCUMULATE=accumulate,
                CDT=_TL_DTYPES[cdt], PREC=_prec(cdt), BLOCK_D=_block_d(d), **(launch or {}))
    tiles = []  # the sample tiles of each grid asked for: tuning's timed launches', then the launch's

    def grid(m):
        tiles.append(triton.cdiv(bs, m["BLOCK_S"]))
        return (t, tiles[-1])

    ffn_bwd_act.run(grid, args, meta, scratch=None if norm is None else _prenorm_scratch)
    return tiles[-1]


# where the act kernel's arguments ``DS`` and ``DW_PART`` sit in its list
_DS_ARG, _PART_ARG = (ffn_bwd_act_kernel.arg_names.index(a) for a in ("DS", "DW_PART"))


def _prenorm_scratch(args: list) -> list:
    """The ``PRENORM`` act kernel's arguments to tune on (:data:`ffn_bwd_act`, on a kind's first launch):
    scratch tensors in place of ``DS`` (which may be ``s``, read by the same launch) and the norm weight's
    partials (which later passes add to), so that no timed call overwrites the caller's tensors (the
    scratch ``ds`` has ``s``'s strides: ``s``'s extent, once per kind). Every other tensor it writes is an
    output the real launch writes again. Passes that add to earlier passes' partials (``ACCUMULATE``, not
    in the kind) take the first pass's tile."""
    ds, partial = args[_DS_ARG], args[_PART_ARG]
    args[_DS_ARG] = torch.empty_strided(ds.shape, ds.stride(), dtype=ds.dtype, device=ds.device)
    args[_PART_ARG] = torch.empty_like(partial)
    return args


def _weight_tiles(d: int, h: int, recompute: bool) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_H)`` of ``ffn_bwd_weight_kernel``. Recomputing, one d tile spans ``D`` (the
    recompute needs whole rows of ``u`` and ``dO``), and the hidden tile narrows so that its three
    ``[D, BLOCK_H]`` fp32 accumulators stay in registers."""
    if recompute:
        bd = _block_d(d)
        return bd, max(16, min(4096 // bd, triton.next_power_of_2(h)))
    return min(64, max(16, triton.next_power_of_2(d))), min(64, max(16, triton.next_power_of_2(h)))


def recompute_hidden_grads() -> bool:
    """Whether the fused path's weight-gradient kernel recomputes ``A, dG, dV`` (the
    ``UNIMIXER_FFN_BACKWARD`` switch)."""
    mode = switch(FFN_BACKWARD_SWITCH)
    if mode not in ("buffers", "recompute"):
        raise ValueError(f"{FFN_BACKWARD_SWITCH}: expected 'buffers' or 'recompute', got {mode!r}")
    return mode == "recompute"


def ffn_bwd(
    do: torch.Tensor,
    u: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor | None,
    w2: torch.Tensor,
    b1: torch.Tensor | None,
    b3: torch.Tensor | None,
    g: torch.Tensor | None,
    v: torch.Tensor | None,
    n_split: int | None = None,
    bias_dtypes: tuple[torch.dtype, torch.dtype, torch.dtype] | None = None,
    prenorm: TokenPassNorm | None = None,
    lower: bool = False,
    copies: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Backward of :func:`ffn_fwd`. ``g``/``v`` are the saved hidden pre-activations, or ``None``
    to recompute them. ``n_split`` (default: sized to the GPU) is the number of sample ranges
    per token whose fp32 weight-gradient partials are summed in a second pass, one launch for all
    six (the fused path only: the wide-token path reduces every sample inside each GEMM tile and
    ignores it). Returns ``(du, dw1, dw3 or None, dw2, db1, db3 or None, db2)``; the weight
    gradients have the weights' dtypes, the bias gradients ``[T, h]`` / ``[T, D]`` the dtypes
    ``bias_dtypes`` of ``(db1, db3, db2)`` (default fp32).

    ``prenorm``: the FFN's input is ``RMSNorm(s)`` (``u`` is then ``s``, ``g`` and ``v`` are
    ``None``). Each token pass forms its ``u`` again and turns its ``du`` into ``ds``
    (:class:`.rms_norm.TokenPassNorm`; on the fused path inside the act kernel, from the forward's
    ``rstd``, which ``prenorm`` must then hold): the returned ``du`` is then ``prenorm.ds``, and the
    norm weight's partials are summed with the FFN's.

    ``lower``: as :func:`ffn_fwd`'s; the weight gradients still come back in the weights' own dtypes,
    straight from the GEMMs (fp32 outputs of 16-bit products). On the wide path each 16-bit weight
    copy is cast per token pass and freed after its last GEMM, but for those ``copies`` (the
    forward's 16-bit ``(w1, w3, w2)``, each ``None`` where there is none) hands over."""
    bs, t, d = u.shape
    h = w1.shape[-1]
    gated = w3 is not None
    w1, w3, w2, b1, b3 = (_contig(x) for x in (w1, w3, w2, b1, b3))
    cdt = compute_dtype(u, [w for w in (w1, w3, w2) if w is not None], lower)
    tdt = _TL_DTYPES[cdt]
    db1_dt, db3_dt, db2_dt = bias_dtypes if bias_dtypes is not None else (torch.float32,) * 3
    if prenorm is not None and g is not None:
        raise ValueError("ffn_bwd: prenorm recomputes u, so the hidden pre-activations are recomputed too")
    du = new_output((bs, t, d), like=u) if prenorm is None else prenorm.ds
    if t == 0 or bs == 0:
        if prenorm is not None:
            prenorm.plan([])
            prenorm.dw.zero_()
        zeros = [torch.zeros(x.shape, device=u.device, dtype=x.dtype) if x is not None else None
                 for x in (w1, w3, w2)]
        bz = [torch.zeros(shape, device=u.device, dtype=dt)
              for shape, dt in (((t, h), db1_dt), ((t, h), db3_dt), ((t, d), db2_dt))]
        return du, zeros[0], zeros[1], zeros[2], bz[0], (bz[1] if gated else None), bz[2]
    saved = g is not None
    if not fused_path(d, cdt):
        db1 = new_output((t, h), like=u, dtype=db1_dt)
        db3 = new_output((t, h), like=u, dtype=db3_dt) if gated else None
        db2 = new_output((t, d), like=u, dtype=db2_dt)
        n_sb = triton.cdiv(bs, ACT_ROWS)
        pb1 = new_output((n_sb, t, h), device=u.device, dtype=torch.float32)
        pb3 = new_output((n_sb, t, h), device=u.device, dtype=torch.float32) if gated else None
        chunks = _chunks(t, _token_chunk(t, folded=prenorm is not None))
        if prenorm is not None:
            prenorm.plan(chunks)
        # the weight gradients are allocated at their first GEMM (below), so that dW2's buffer never
        # sits beside the hidden pre-activation's, nor dW1's beside A's
        dw1 = dw3 = dw2 = None
        lows = [c if c is not None else w for c, w in zip(copies or (None,) * 3, (w1, w3, w2))]
        for sl in chunks:
            n = sl.stop - sl.start
            u_c, do_c, du_c = _pass_rows(u, do, du, sl, prenorm)
            w1_c, w3_c = _lowered(_part(lows[0], sl), cdt), _lowered(_part(lows[1], sl), cdt)
            if saved:
                g_c, v_c = _part(g, sl), _part(v, sl)
                a_c = new_output((n, bs, h), like=u, dtype=cdt)
                dv_c = new_output((n, bs, h), like=u, dtype=cdt) if gated else None
            else:  # recomputed: A and dV then replace G and V in their buffers
                g_c = _pre_tiled(u_c, w1_c, cdt)
                v_c = _pre_tiled(u_c, w3_c, cdt) if gated else None
                a_c, dv_c = g_c, v_c
            dg_c = new_output((n, bs, h), like=u, dtype=cdt)  # dA, then dG in its place
            w2_c = _lowered(_part(lows[2], sl), cdt)
            _token_gemm(do_c, w2_c, dg_c, n, bs, h, d, (do.stride(0), do.stride(1), do.stride(2)),
                        (h * d, 1, d), (h, bs * h, 1), cdt)
            del w2_c
            _act_pass(g_c, v_c, _part(b1, sl), _part(b3, sl), dg_c, a_c, dg_c, dv_c, _part(pb1, sl, 1),
                      _part(pb3, sl, 1))
            _token_gemm(dg_c, w1_c, du_c, n, bs, d, h, (h, bs * h, 1), (d * h, 1, h),
                        (du_c.stride(0), du_c.stride(1), 1), cdt, a2=dv_c, b2=w3_c)
            del w1_c, w3_c
            if prenorm is not None:
                prenorm.grads(sl, du_c)
            # dW2 = A^T dO, then A (G's buffer when recomputed) goes before dW1 = u^T dG, dW3 = u^T dV
            dw2 = new_output(w2.shape, like=w2) if dw2 is None else dw2
            _weight_grad_tiled(a_c, do_c, _part(dw2, sl), bs, (1, bs * h, h),
                               (do.stride(1), do.stride(0), do.stride(2)), cdt)
            del g_c, a_c
            su = (u_c.stride(2), u_c.stride(1), u_c.stride(0))  # (m = d, t, k = sample)
            dw1 = new_output(w1.shape, like=w1) if dw1 is None else dw1
            _weight_grad_tiled(u_c, dg_c, _part(dw1, sl), bs, su, (bs * h, h, 1), cdt)
            del dg_c
            if gated:
                dw3 = new_output(w3.shape, like=w3) if dw3 is None else dw3
                _weight_grad_tiled(u_c, dv_c, _part(dw3, sl), bs, su, (bs * h, h, 1), cdt)
            del v_c, dv_c, u_c, du_c  # as in the forward: freed before the next pass
        # the bias gradients: the activation pass's partials, and dO's rows (db2 = sum over samples)
        pairs = [(pb1, db1), (do.reshape(bs, t * d).contiguous(), db2.view(t * d))]
        sum_partials(*pairs, *([(pb3, db3)] if gated else []), *_prenorm_pair(prenorm))
        return du, dw1, dw3, dw2, db1, db3, db2
    # the fused path's weight kernel can form A, dG, dV itself: no [T, bs, h] buffers then
    lean = recompute_hidden_grads()
    bd, bh = _weight_tiles(d, h, lean)
    d_tiles, h_tiles = triton.cdiv(d, bd), triton.cdiv(h, bh)
    dw1, dw2 = new_output(w1.shape, like=w1), new_output(w2.shape, like=w2)
    db1 = new_output((t, h), like=u, dtype=db1_dt)
    db2 = new_output((t, d), like=u, dtype=db2_dt)
    dw3 = new_output(w3.shape, like=w3) if gated else None
    db3 = new_output((t, h), like=u, dtype=db3_dt) if gated else None
    f32 = dict(device=u.device, dtype=torch.float32)
    dummy = w1
    # token passes (_token_chunk): each pass's buffers and partials are freed before the next's. Pass k's
    # partials are summed after pass k + 1's act kernel, so that this kernel follows pass k's weight kernel
    # in the stream: with programmatic dependent launch (UNIMIXER_PDL, _pdl.py) its programs read their
    # rows while that kernel's last programs run (the peak is unchanged: one pass's buffers beside one
    # pass's partials, as at the weight kernel). The first act kernel waits before any read (the kernel
    # before this op may have written dO) and the last sum before its release; every launch between
    # releases the next one before its wait, and reads before it only the op's inputs (EARLY)
    chunks = _chunks(t, _token_chunk(t, fused=True))
    if prenorm is not None:  # the act kernel does the norm: its partial rows (_prenorm_grads)
        prenorm.plan(chunks, rows_per_token=triton.cdiv(bs, _MIN_BLOCK_S))
    pdl = pdl_options(u.device)
    chain = dict(pdl, RELEASE_FIRST=True) if pdl["PDL"] else pdl
    pending = None  # the previous pass's (partial, output) pairs, still to sum
    for i, sl in enumerate(chunks):
        n = sl.stop - sl.start
        w1_c, w3_c, w2_c, b1_c, b3_c, g_c, v_c = (_part(x, sl) for x in (w1, w3, w2, b1, b3, g, v))
        if lean:
            a = dg = dv = du  # unused
        else:
            a = torch.empty((n, bs, h), device=u.device, dtype=cdt)
            dg = torch.empty((n, bs, h), device=u.device, dtype=cdt)
            dv = torch.empty((n, bs, h), device=u.device, dtype=cdt) if gated else dg
        do_c = _part(do, sl, 1)
        # EARLY: dO's, s's (or u's) rows of this pass's tokens, rstd and the norm weight read before the
        # wait; only the kernels before this op write them, and the first act kernel waited for those
        act_launch = dict(pdl, EARLY=pdl["PDL"] and i > 0)
        if prenorm is None:
            u_c = _part(u, sl, 1)
            _ffn_bwd_act_fused(do_c, u_c, w1_c, w3_c, w2_c, b1_c, b3_c, g_c, v_c, _part(du, sl, 1), a, dg, dv,
                               cdt, store=not lean, launch=act_launch)
        else:  # the kernel forms the pass's u from s into u_c, and writes ds over the pass's s
            s_c, ds_c, rstd_c, accumulate = prenorm.fused_pass(sl)
            u_c = new_output(s_c.shape, like=s_c)
            tiles = _ffn_bwd_act_fused(do_c, s_c, w1_c, w3_c, w2_c, b1_c, b3_c, g_c, v_c, u_c, a, dg, dv, cdt,
                                       store=not lean,
                                       norm=(ds_c, rstd_c, prenorm.weight, prenorm.partial, accumulate),
                                       launch=act_launch)
            prenorm.wrote(n * tiles)  # one partial row per program
        if pending is not None:
            sum_partials(*pending, launch=chain)
            pending = None  # its partials go back to the allocator before this pass's
        splits = n_split if n_split is not None else _num_splits(bs, n * d_tiles * h_tiles, u.device)
        dw1_p = new_output((splits, n, d, h), **f32)
        dw3_p = new_output((splits, n, d, h), **f32) if gated else dw1_p
        dw2_p = new_output((splits, n, h, d), **f32)
        db1_p = new_output((splits, n, h), **f32)
        db3_p = new_output((splits, n, h), **f32) if gated else db1_p
        db2_p = new_output((splits, n, d), **f32)
        ffn_bwd_weight[(n * splits, d_tiles, h_tiles)](
            do_c, u_c, a, dg, dv,
            w1_c, w3_c if gated else dummy, w2_c, b1_c if b1 is not None else dummy,
            b3_c if b3 is not None else dummy, g_c if saved else dummy, v_c if (saved and gated) else dummy,
            dw1_p, dw3_p, dw2_p, db1_p, db3_p, db2_p,
            bs, d, h, bucket(bs), splits,
            do.stride(0), do.stride(1), do.stride(2),
            u_c.stride(0), u_c.stride(1), u_c.stride(2),
            GATED=gated, HAS_B1=b1 is not None, HAS_B3=b3 is not None, SAVED=saved, RECOMPUTE=lean,
            CDT=tdt, PREC=_prec(cdt), BLOCK_D=bd, BLOCK_H=bh, **pdl,
        )
        del a, dg, dv, u_c  # this pass's buffers go back to the allocator before the next pass's
        pending = [(dw1_p, _part(dw1, sl)), (dw2_p, _part(dw2, sl)), (db1_p, _part(db1, sl)),
                   (db2_p, _part(db2, sl))]
        if gated:
            pending += [(dw3_p, _part(dw3, sl)), (db3_p, _part(db3, sl))]
        del dw1_p, dw3_p, dw2_p, db1_p, db3_p, db2_p  # held by pending alone
    sum_partials(*pending, *_prenorm_pair(prenorm), launch=pdl)
    return du, dw1, dw3, dw2, db1, db3, db2


def _pass_rows(u, do, du, sl, prenorm):
    """``(u, dO, du)`` of the tokens ``sl``: views of the whole tensors, or with ``prenorm`` the
    pass's recomputed ``u`` and a fresh ``du`` buffer (``[bs, n, D]``, freed with the pass)."""
    if prenorm is None:
        return _part(u, sl, 1), _part(do, sl, 1), _part(du, sl, 1)
    u_c = prenorm.rows(sl)
    return u_c, _part(do, sl, 1), new_output(u_c.shape, like=u_c)


def _prenorm_pair(prenorm) -> tuple:
    """The norm weight's ``(partials, dw)`` pair for :func:`sum_partials`, or none."""
    return () if prenorm is None else (prenorm.weight_grad_pair(),)


def _weight_grad_tiled(a, b, dw, k, sa, sb, cdt) -> None:
    """One weight gradient of the wide-token path, ``dW[t] = a_t^T b_t`` over the ``k`` samples:
    ``dW1 = u^T dG``, ``dW3 = u^T dV``, ``dW2 = A^T dO``, into ``dw [T, m, n]`` (contiguous, in any
    dtype: an fp32 one straight from the 16-bit products), each tile reducing all samples in one fp32
    accumulator (deterministic, no partials). ``sa``, ``sb``: ``a``'s ``(m, t, k)`` and ``b``'s
    ``(t, k, n)`` strides."""
    t, m, n = dw.shape
    _token_gemm(a, b, dw, t, m, n, k, sa, sb, (n, m * n, 1), cdt)


def rms_norm_ffn_fwd(
    s: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    w1: torch.Tensor,
    w3: torch.Tensor | None,
    w2: torch.Tensor,
    b1: torch.Tensor | None,
    b3: torch.Tensor | None,
    b2: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(FFN(RMSNorm(s)), rstd [bs, T] fp32)``: the norm kernel into a temporary ``u``, freed on
    return, then :func:`ffn_fwd` in the backward's token passes (its backward recomputes the hidden
    pre-activations, and ``u`` itself: from ``rstd`` on the fused path, from ``s`` alone on the
    wide-token path)."""
    u, _, rstd = rms_norm_fwd(s, None, norm_weight, eps)
    return ffn_fwd(u, w1, w3, w2, b1, b3, b2, save=False, folded=True)[0], rstd.view(s.shape[:2])


def rms_norm_ffn_bwd_(
    do: torch.Tensor,
    s: torch.Tensor,
    rstd: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    w1: torch.Tensor,
    w3: torch.Tensor | None,
    w2: torch.Tensor,
    b1: torch.Tensor | None,
    b3: torch.Tensor | None,
    bias_dtypes: tuple[torch.dtype, torch.dtype, torch.dtype] | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Backward of :func:`rms_norm_ffn_fwd` with ``ds`` written over ``s`` ([bs, T, D], unit stride
    along ``D``), pass by pass (:class:`.rms_norm.TokenPassNorm`; ``rstd`` the forward's): neither
    ``u`` nor ``du`` is held whole. Returns ``(dnorm_weight, dw1, dw3 or None, dw2, db1, db3 or
    None, db2)``."""
    prenorm = TokenPassNorm(s, norm_weight, eps, ds=s, rstd=rstd)
    _, *grads = ffn_bwd(do, s, w1, w3, w2, b1, b3, None, None, bias_dtypes=bias_dtypes, prenorm=prenorm)
    return (prenorm.dw, *grads)
