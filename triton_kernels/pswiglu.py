"""Per-token FFNs (pSwiGLU and the per-token GELU FFN): Triton kernels and launchers, no autograd.

Both are a batched GEMM over tokens. For token ``t`` and a tile of samples ``S`` (rows of
``U_t = u[S, t, :]``)::

    gated (pSwiGLU):  G = U_t W1[t] + b1[t]   V = U_t W3[t] + b3[t]   A = SiLU(G) * V
    plain (GELU FFN): G = U_t W1[t] + b1[t]                           A = GELU(G)   (erf form)
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
(``[T, bs, h]``, compute dtype) for ``ffn_bwd_weight_kernel`` (grid ``(T, D tiles, h tiles)``),
which reduces over all samples in one program loop: weight and bias gradients are
deterministic, with no atomics and no partial buffers.

Precision: fp32 inputs use ``input_precision="ieee"``; bf16/fp16 run the tensor cores with fp32
accumulation, the hidden activation rounded to the input dtype before the second GEMM. When the
weights' dtype differs from ``u``'s, everything is computed in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output


@triton.jit
def _hidden(u, t, offs_d, offs_h, mask_d, mask_h, W1, W3, B1, B3, D, H,
            GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr,
            CDT: tl.constexpr, PREC: tl.constexpr):
    """``G`` and ``V`` of one hidden chunk, fp32 (``V`` is ``G`` when not gated)."""
    wmask = mask_d[:, None] & mask_h[None, :]
    w1 = tl.load(W1 + t * D * H + offs_d[:, None] * H + offs_h[None, :], mask=wmask, other=0.0)
    g = tl.dot(u, w1.to(CDT), input_precision=PREC)
    if HAS_B1:
        g += tl.load(B1 + t * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    v = g
    if GATED:
        w3 = tl.load(W3 + t * D * H + offs_d[:, None] * H + offs_h[None, :], mask=wmask, other=0.0)
        v = tl.dot(u, w3.to(CDT), input_precision=PREC)
        if HAS_B3:
            v += tl.load(B3 + t * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    return g, v


@triton.jit
def ffn_fwd_kernel(
    U, W1, W3, W2, B1, B3, B2, OUT, G, V,
    BS, D, H,
    stride_us, stride_ut, stride_ud,
    GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr, HAS_B2: tl.constexpr,
    SAVE: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < BS
    mask_d = offs_d < D
    io_mask = mask_s[:, None] & mask_d[None, :]
    u = tl.load(U + offs_s[:, None] * stride_us + t * stride_ut + offs_d[None, :] * stride_ud,
                mask=io_mask, other=0.0).to(CDT)
    acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        g, v = _hidden(u, t, offs_d, offs_h, mask_d, mask_h, W1, W3, B1, B3, D, H,
                       GATED, HAS_B1, HAS_B3, CDT, PREC)
        if SAVE:
            hid = t * BS * H + offs_s[:, None] * H + offs_h[None, :]
            hmask = mask_s[:, None] & mask_h[None, :]
            tl.store(G + hid, g.to(G.dtype.element_ty), mask=hmask)
            if GATED:
                tl.store(V + hid, v.to(V.dtype.element_ty), mask=hmask)
        if GATED:
            a = g * tl.sigmoid(g) * v
        else:
            a = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
        w2 = tl.load(W2 + t * H * D + offs_h[:, None] * D + offs_d[None, :],
                     mask=mask_h[:, None] & mask_d[None, :], other=0.0)
        acc = tl.dot(a.to(CDT), w2.to(CDT), acc, input_precision=PREC)
    if HAS_B2:
        acc += tl.load(B2 + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + offs_s[:, None] * (D * tl.num_programs(0)) + t * D + offs_d[None, :],
             acc.to(OUT.dtype.element_ty), mask=io_mask)


@triton.jit
def ffn_bwd_act_kernel(
    DO, U, W1, W3, W2, B1, B3, G, V, DU, A, DG, DV,
    BS, D, H,
    stride_dos, stride_dot, stride_dod,
    stride_us, stride_ut, stride_ud,
    GATED: tl.constexpr, HAS_B1: tl.constexpr, HAS_B3: tl.constexpr,
    SAVED: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < BS
    mask_d = offs_d < D
    io_mask = mask_s[:, None] & mask_d[None, :]
    do = tl.load(DO + offs_s[:, None] * stride_dos + t * stride_dot + offs_d[None, :] * stride_dod,
                 mask=io_mask, other=0.0).to(CDT)
    u = tl.load(U + offs_s[:, None] * stride_us + t * stride_ut + offs_d[None, :] * stride_ud,
                mask=io_mask, other=0.0).to(CDT)
    du = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        hid = t * BS * H + offs_s[:, None] * H + offs_h[None, :]
        hmask = mask_s[:, None] & mask_h[None, :]
        if SAVED:
            g = tl.load(G + hid, mask=hmask, other=0.0).to(tl.float32)
            v = g
            if GATED:
                v = tl.load(V + hid, mask=hmask, other=0.0).to(tl.float32)
        else:
            g, v = _hidden(u, t, offs_d, offs_h, mask_d, mask_h, W1, W3, B1, B3, D, H,
                           GATED, HAS_B1, HAS_B3, CDT, PREC)
        wmask_t = mask_d[:, None] & mask_h[None, :]
        # W2[t]^T as a [D, h-chunk] tile: dA = dO W2^T
        w2t = tl.load(W2 + t * H * D + offs_h[None, :] * D + offs_d[:, None], mask=wmask_t, other=0.0)
        da = tl.dot(do, w2t.to(CDT), input_precision=PREC)
        if GATED:
            sig = tl.sigmoid(g)
            sg = g * sig
            a = sg * v
            dv = da * sg
            dg = da * v * (sig + sg * (1.0 - sig))
            tl.store(DV + hid, dv.to(DV.dtype.element_ty), mask=hmask)
        else:
            cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
            pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
            a = g * cdf
            dg = da * (cdf + g * pdf)
        tl.store(A + hid, a.to(A.dtype.element_ty), mask=hmask)
        tl.store(DG + hid, dg.to(DG.dtype.element_ty), mask=hmask)
        wmask = mask_h[:, None] & mask_d[None, :]
        # W1[t]^T as an [h-chunk, D] tile: du = dG W1^T (+ dV W3^T)
        w1t = tl.load(W1 + t * D * H + offs_h[:, None] + offs_d[None, :] * H, mask=wmask, other=0.0)
        du = tl.dot(dg.to(CDT), w1t.to(CDT), du, input_precision=PREC)
        if GATED:
            w3t = tl.load(W3 + t * D * H + offs_h[:, None] + offs_d[None, :] * H, mask=wmask, other=0.0)
            du = tl.dot(dv.to(CDT), w3t.to(CDT), du, input_precision=PREC)
    tl.store(DU + offs_s[:, None] * (D * tl.num_programs(0)) + t * D + offs_d[None, :],
             du.to(DU.dtype.element_ty), mask=io_mask)


@triton.jit
def ffn_bwd_weight_kernel(
    DO, U, A, DG, DV, DW1, DW3, DW2, DB1, DB3, DB2,
    BS, D, H,
    stride_dos, stride_dot, stride_dod,
    stride_us, stride_ut, stride_ud,
    GATED: tl.constexpr, CDT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_h = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_d = offs_d < D
    mask_h = offs_h < H
    acc_w1 = tl.zeros([BLOCK_D, BLOCK_H], dtype=tl.float32)
    acc_w3 = tl.zeros([BLOCK_D, BLOCK_H], dtype=tl.float32)
    acc_w2 = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    acc_b1 = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc_b3 = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc_b2 = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s0 in range(0, BS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        mask_s = offs_s < BS
        ut = tl.load(U + offs_s[None, :] * stride_us + t * stride_ut + offs_d[:, None] * stride_ud,
                     mask=mask_d[:, None] & mask_s[None, :], other=0.0).to(CDT)
        do = tl.load(DO + offs_s[:, None] * stride_dos + t * stride_dot + offs_d[None, :] * stride_dod,
                     mask=mask_s[:, None] & mask_d[None, :], other=0.0).to(CDT)
        hid = t * BS * H + offs_s[:, None] * H + offs_h[None, :]
        hmask = mask_s[:, None] & mask_h[None, :]
        dg = tl.load(DG + hid, mask=hmask, other=0.0)
        acc_w1 = tl.dot(ut, dg, acc_w1, input_precision=PREC)
        acc_b1 += tl.sum(dg.to(tl.float32), axis=0)
        if GATED:
            dv = tl.load(DV + hid, mask=hmask, other=0.0)
            acc_w3 = tl.dot(ut, dv, acc_w3, input_precision=PREC)
            acc_b3 += tl.sum(dv.to(tl.float32), axis=0)
        at = tl.load(A + t * BS * H + offs_s[None, :] * H + offs_h[:, None],
                     mask=mask_h[:, None] & mask_s[None, :], other=0.0)
        acc_w2 = tl.dot(at, do, acc_w2, input_precision=PREC)
        acc_b2 += tl.sum(do.to(tl.float32), axis=0)
    wmask = mask_d[:, None] & mask_h[None, :]
    wid = t * D * H + offs_d[:, None] * H + offs_h[None, :]
    tl.store(DW1 + wid, acc_w1.to(DW1.dtype.element_ty), mask=wmask)
    if GATED:
        tl.store(DW3 + wid, acc_w3.to(DW3.dtype.element_ty), mask=wmask)
    tl.store(DW2 + t * H * D + offs_h[:, None] * D + offs_d[None, :], acc_w2.to(DW2.dtype.element_ty),
             mask=mask_h[:, None] & mask_d[None, :])
    # one program column writes each bias gradient, so every element is written exactly once
    if pid_d == 0:
        tl.store(DB1 + t * H + offs_h, acc_b1, mask=mask_h)
        if GATED:
            tl.store(DB3 + t * H + offs_h, acc_b3, mask=mask_h)
    if pid_h == 0:
        tl.store(DB2 + t * D + offs_d, acc_b2, mask=mask_d)


# --- launchers -------------------------------------------------------------------------------

_TL_DTYPES = {
    torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


def _compute_dtype(u: torch.Tensor, weights) -> torch.dtype:
    if all(w.dtype == u.dtype for w in weights) and u.dtype in _TL_DTYPES:
        return u.dtype
    return torch.float32


def _prec(cdt: torch.dtype) -> str:
    return "ieee" if cdt in (torch.float32, torch.float64) else "tf32"


def _tiles(d: int, h: int, cdt: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_S, BLOCK_D, BLOCK_H, num_warps)`` for the (token, sample tile) kernels: the whole
    width ``D`` stays in registers, so the sample tile shrinks as ``D`` grows."""
    block_d = max(16, triton.next_power_of_2(d))
    block_s = 64 if block_d <= 128 else (32 if block_d <= 256 else 16)
    block_h = 64 if block_d <= 256 else 32
    block_h = min(block_h, max(16, triton.next_power_of_2(h)))
    num_warps = 4 if block_d <= 128 else 8
    return block_s, block_d, block_h, num_warps


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def ffn_fwd(
    u: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor | None,
    w2: torch.Tensor,
    b1: torch.Tensor | None,
    b3: torch.Tensor | None,
    b2: torch.Tensor | None,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Forward of the per-token FFN (gated when ``w3`` is given). Returns ``(o [bs, T, D],
    G, V)``; ``G``/``V`` are ``[T, bs, h]`` in the compute dtype when ``save``, else ``None``.

    ``u`` may have any strides; the weights and biases are made contiguous (a no-op for
    ordinary parameters)."""
    bs, t, d = u.shape
    h = w1.shape[-1]
    gated = w3 is not None
    w1, w3, w2, b1, b3, b2 = (_contig(x) for x in (w1, w3, w2, b1, b3, b2))
    cdt = _compute_dtype(u, [w for w in (w1, w3, w2) if w is not None])
    o = new_output((bs, t, d), like=u)
    g = new_output((t, bs, h), like=u, dtype=cdt) if save else None
    v = new_output((t, bs, h), like=u, dtype=cdt) if save and gated else None
    if bs == 0 or t == 0:
        return o, g, v
    block_s, block_d, block_h, num_warps = _tiles(d, h, cdt)
    dummy = w1
    ffn_fwd_kernel[(t, triton.cdiv(bs, block_s))](
        u, w1, w3 if gated else dummy, w2,
        b1 if b1 is not None else dummy, b3 if b3 is not None else dummy, b2 if b2 is not None else dummy,
        o, g if save else o, v if v is not None else o,
        bs, d, h,
        u.stride(0), u.stride(1), u.stride(2),
        GATED=gated, HAS_B1=b1 is not None, HAS_B3=b3 is not None, HAS_B2=b2 is not None,
        SAVE=save, CDT=_TL_DTYPES[cdt], PREC=_prec(cdt),
        BLOCK_S=block_s, BLOCK_D=block_d, BLOCK_H=block_h, num_warps=num_warps,
    )
    return o, g, v


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
) -> tuple[torch.Tensor, ...]:
    """Backward of :func:`ffn_fwd`. ``g``/``v`` are the saved hidden pre-activations, or ``None``
    to recompute them. Returns ``(du, dw1, dw3 or None, dw2, db1, db3 or None, db2)``; the bias
    gradients are fp32 ``[T, h]`` / ``[T, D]`` (cast by the caller)."""
    bs, t, d = u.shape
    h = w1.shape[-1]
    gated = w3 is not None
    w1, w3, w2, b1, b3 = (_contig(x) for x in (w1, w3, w2, b1, b3))
    cdt = _compute_dtype(u, [w for w in (w1, w3, w2) if w is not None])
    tdt = _TL_DTYPES[cdt]
    du = new_output((bs, t, d), like=u)
    dw1 = new_output(w1.shape, like=w1)
    dw3 = new_output(w3.shape, like=w3) if gated else None
    dw2 = new_output(w2.shape, like=w2)
    db1 = new_output((t, h), like=u, dtype=torch.float32)
    db3 = new_output((t, h), like=u, dtype=torch.float32) if gated else None
    db2 = new_output((t, d), like=u, dtype=torch.float32)
    if t == 0:
        return du, dw1, dw3, dw2, db1, db3, db2
    if bs == 0:
        for x in (dw1, dw3, dw2, db1, db3, db2):
            if x is not None:
                x.zero_()
        return du, dw1, dw3, dw2, db1, db3, db2
    a = torch.empty((t, bs, h), device=u.device, dtype=cdt)
    dg = torch.empty((t, bs, h), device=u.device, dtype=cdt)
    dv = torch.empty((t, bs, h), device=u.device, dtype=cdt) if gated else dg
    saved = g is not None
    block_s, block_d, block_h, num_warps = _tiles(d, h, cdt)
    dummy = w1
    ffn_bwd_act_kernel[(t, triton.cdiv(bs, block_s))](
        do, u, w1, w3 if gated else dummy, w2,
        b1 if b1 is not None else dummy, b3 if b3 is not None else dummy,
        g if saved else dummy, v if (saved and gated) else dummy,
        du, a, dg, dv,
        bs, d, h,
        do.stride(0), do.stride(1), do.stride(2),
        u.stride(0), u.stride(1), u.stride(2),
        GATED=gated, HAS_B1=b1 is not None, HAS_B3=b3 is not None,
        SAVED=saved, CDT=tdt, PREC=_prec(cdt),
        BLOCK_S=block_s, BLOCK_D=block_d, BLOCK_H=block_h, num_warps=num_warps,
    )
    bd = min(64, max(16, triton.next_power_of_2(d)))
    bh = min(64, max(16, triton.next_power_of_2(h)))
    ffn_bwd_weight_kernel[(t, triton.cdiv(d, bd), triton.cdiv(h, bh))](
        do, u, a, dg, dv,
        dw1, dw3 if gated else dw1, dw2, db1, db3 if gated else db1, db2,
        bs, d, h,
        do.stride(0), do.stride(1), do.stride(2),
        u.stride(0), u.stride(1), u.stride(2),
        GATED=gated, CDT=tdt, PREC=_prec(cdt),
        BLOCK_S=64, BLOCK_D=bd, BLOCK_H=bh, num_warps=4,
    )
    return du, dw1, dw3, dw2, db1, db3, db2
