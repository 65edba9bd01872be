"""TokenMixer (a permutation), ``Norm(TokenMixer(x) + x)`` and ``Norm(x + r)``: Triton kernels and
launchers.

TokenMixer (SPEC §1) cuts token ``t`` into ``H`` heads of width ``c = D/H``; output row ``h`` is
head ``h`` of every token: ``out[h, t*c + j] = x[t, h*c + j]``. Its backward is the inverse
permutation, ``dx[t, h*c + j] = dout[h, t*c + j]``. Both directions are the same gather::

    out[s, r, l] = src[s, l // c, r*c + l % c]

(forward: ``src = x``, rows ``r = h``; backward: ``src = dout``, rows ``r = t``), which is what
``token_mix_gather_kernel`` does, one output row per program, ``src`` read through its strides.

``Norm(TokenMixer(x) + x)`` with ``H == T`` (RankMixer's first sub-block, post-norm):

- forward (``tm_norm_fwd_kernel``, a tile of ``ROWS`` rows ``(s, t)`` per program): gathers the mixed rows,
  adds the residual row in fp32, normalises (LayerNorm with optional bias, or RMSNorm), writes
  ``y`` and saves only ``mean`` and ``rstd`` (fp32, one each per row). The sum is never stored.
- backward (``tm_norm_bwd_kernel``, persistent, whole samples per program): recomputes the sum rows
  from ``x``, forms ``ds = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * w`` (no
  ``mean(g)`` term for RMSNorm) into the program's fp32 workspace, then, once the sample's rows are
  all there, writes ``dx = ds + TokenMixer^T(ds)`` (the residual form's permutation is symmetric),
  rounded once. ``dw`` / ``db`` go through per-program fp32 partials (deterministic; both summed in
  one launch).

``Norm(x + r)`` (RankMixer's second sub-block, ``LN(PFFN(S) + S)``) shares the forward kernel
(``MIX=False``: the second addend is read from ``r`` instead of gathered from ``x``); its backward
(``residual_norm_bwd_kernel``, persistent over row tiles) writes ``ds``, the gradient of both
addends, in the wider of their dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output, num_programs_for, sm_count
from ._partials import sum_partials


@triton.jit
def token_mix_gather_kernel(
    SRC, OUT,
    R, W, C,
    stride_ss, stride_sr, stride_sl,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s = row // R
    r = row % R
    offs = tl.arange(0, BLOCK)
    mask = offs < W
    src_row = offs // C
    src_col = r * C + offs % C
    val = tl.load(SRC + s * stride_ss + src_row * stride_sr + src_col * stride_sl, mask=mask, other=0.0)
    tl.store(OUT + row * W + offs, val, mask=mask)


@triton.jit
def _sum_rows(X, R, s, t, offs, mask, C, stride_xs, stride_xt, stride_xd, stride_rs, stride_rt, stride_rd,
              MIX: tl.constexpr):
    """The fp32 sum ``x[s, t, :] + TokenMixer(x)[s, t, :]`` (``MIX``, ``H == T``) or
    ``x[s, t, :] + r[s, t, :]`` for a tile of rows: ``s, t`` are ``[ROWS, 1]``, ``offs`` is
    ``[1, BLOCK_D]``."""
    own = tl.load(X + s * stride_xs + t * stride_xt + offs * stride_xd, mask=mask, other=0.0)
    if MIX:
        mixed = (offs // C) * stride_xt + (t * C + offs % C) * stride_xd
        other = tl.load(X + s * stride_xs + mixed, mask=mask, other=0.0)
    else:
        other = tl.load(R + s * stride_rs + t * stride_rt + offs * stride_rd, mask=mask, other=0.0)
    return own.to(tl.float32) + other.to(tl.float32)


@triton.jit
def tm_norm_fwd_kernel(
    X, R, W, B, Y, MEAN, RSTD,
    M, T, D, C,
    stride_xs, stride_xt, stride_xd,
    stride_rs, stride_rt, stride_rd,
    eps,
    MIX: tl.constexpr, RMS: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < M
    s = (rows // T)[:, None]
    t = (rows % T)[:, None]
    cols = tl.arange(0, BLOCK_D)
    offs = cols[None, :]
    mask = row_mask[:, None] & (offs < D)
    z = _sum_rows(X, R, s, t, offs, mask, C, stride_xs, stride_xt, stride_xd, stride_rs, stride_rt, stride_rd,
                  MIX)
    if RMS:
        mean = tl.zeros([ROWS], dtype=tl.float32)
        zc = z
    else:
        mean = tl.sum(z, axis=1) / D
        zc = tl.where(mask, z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=1) / D + eps)
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
    y = zc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    tl.store(MEAN + rows, mean, mask=row_mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)
    tl.store(Y + rows[:, None] * D + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _ds_tile(DY, X, R, w, MEAN, RSTD, rows, row_mask, s, t, offs, mask, D, C,
             stride_dys, stride_dyt, stride_dyd, stride_xs, stride_xt, stride_xd,
             stride_rs, stride_rt, stride_rd, MIX: tl.constexpr, RMS: tl.constexpr):
    """The norm's backward on a tile of rows: ``(ds, dy, xhat)`` in fp32, ``ds`` the gradient of the
    sum ``z``, ``rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * w`` (no ``mean(g)``
    term for RMSNorm), ``z`` recomputed from ``x`` (:func:`_sum_rows`)."""
    z = _sum_rows(X, R, s, t, offs, mask, C, stride_xs, stride_xt, stride_xd, stride_rs, stride_rt, stride_rd,
                  MIX)
    mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
    rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
    xhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
    dy = tl.load(DY + s * stride_dys + t * stride_dyt + offs * stride_dyd, mask=mask, other=0.0)
    dy = dy.to(tl.float32)
    g = dy * w
    ds = g - xhat * (tl.sum(g * xhat, axis=1) / D)[:, None]
    if not RMS:
        ds -= (tl.sum(g, axis=1) / D)[:, None]
    return ds * rstd[:, None], dy, xhat


@triton.jit
def residual_norm_bwd_kernel(
    DY, X, R, W, MEAN, RSTD, DS, DW_PARTIAL, DB_PARTIAL,
    M, T, D,
    stride_dys, stride_dyt, stride_dyd,
    stride_xs, stride_xt, stride_xd,
    stride_rs, stride_rt, stride_rd,
    tiles_per_program,
    RMS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``ds`` of ``Norm(x + r)``, the gradient of both addends, over a persistent grid of row tiles;
    ``dw`` / ``db`` as per-program fp32 partials."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    offs = cols[None, :]
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    db = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    first = pid.to(tl.int64) * tiles_per_program * ROWS
    for i in range(0, tiles_per_program):
        rows = first + i * ROWS + tl.arange(0, ROWS)
        row_mask = rows < M
        s = (rows // T)[:, None]
        t = (rows % T)[:, None]
        mask = row_mask[:, None] & (offs < D)
        ds, dy, xhat = _ds_tile(DY, X, R, w, MEAN, RSTD, rows, row_mask, s, t, offs, mask, D, 1,
                                stride_dys, stride_dyt, stride_dyd, stride_xs, stride_xt, stride_xd,
                                stride_rs, stride_rt, stride_rd, False, RMS)
        tl.store(DS + rows[:, None] * D + offs, ds.to(DS.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(DW_PARTIAL + pid * D + cols, tl.sum(dw, axis=0), mask=cols < D)
    tl.store(DB_PARTIAL + pid * D + cols, tl.sum(db, axis=0), mask=cols < D)


@triton.jit
def tm_norm_bwd_kernel(
    DY, X, W, MEAN, RSTD, DX, WS, DW_PARTIAL, DB_PARTIAL,
    BS, T, D, C,
    stride_dys, stride_dyt, stride_dyd,
    stride_xs, stride_xt, stride_xd,
    samples_per_program,
    RMS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The backward of ``Norm(TokenMixer(x) + x)`` straight to ``dx = ds + TokenMixer^T(ds)``, a
    whole sample at a time: the sample's ``ds`` rows (fp32) go to this program's slot of ``WS``
    (``[programs, 2, T, D]``, small enough to stay in cache), then, after a barrier, every ``dx`` row
    is its own ``ds`` row plus the gathered one, rounded once. The two slots alternate by sample, so
    one barrier a sample suffices: a slot is written again only after every warp has passed the
    barrier that follows the other slot's writes, which it reaches once done reading this one."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    offs = cols[None, :]
    col_ok = offs < D
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    db = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    s_begin = pid.to(tl.int64) * samples_per_program
    s_end = tl.minimum(s_begin + samples_per_program, BS)
    ws_prog = WS + pid.to(tl.int64) * (2 * T * D)
    for s0 in range(s_begin, s_end):
        ws = ws_prog + ((s0 - s_begin) % 2) * (T * D)
        s = s0 + tl.zeros([ROWS, 1], dtype=tl.int64)
        for t0 in range(0, T, ROWS):
            tr = t0 + tl.arange(0, ROWS)
            row_mask = tr < T
            t = tr[:, None]
            mask = row_mask[:, None] & col_ok
            ds, dy, xhat = _ds_tile(DY, X, X, w, MEAN, RSTD, s0 * T + tr, row_mask, s, t, offs, mask, D, C,
                                    stride_dys, stride_dyt, stride_dyd, stride_xs, stride_xt, stride_xd,
                                    stride_xs, stride_xt, stride_xd, True, RMS)
            tl.store(ws + t * D + offs, ds, mask=mask)
            dw += dy * xhat
            db += dy
        tl.debug_barrier()
        for t0 in range(0, T, ROWS):
            t = (t0 + tl.arange(0, ROWS))[:, None]
            mask = (t < T) & col_ok
            own = tl.load(ws + t * D + offs, mask=mask, other=0.0)
            mixed = tl.load(ws + (offs // C) * D + t * C + offs % C, mask=mask, other=0.0)
            tl.store(DX + s0 * (T * D) + t * D + offs, (own + mixed).to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * D + cols, tl.sum(dw, axis=0), mask=cols < D)
    tl.store(DB_PARTIAL + pid * D + cols, tl.sum(db, axis=0), mask=cols < D)


def _block(n: int) -> tuple[int, int]:
    block = triton.next_power_of_2(max(n, 1))
    return block, min(max(block // 256, 1), 8)


def token_mix(src: torch.Tensor, rows: int, c: int) -> torch.Tensor:
    """``out[s, r, l] = src[s, l // c, r*c + l % c]``.

    ``src [bs, R_src, W_src]`` with any strides; ``out [bs, rows, R_src * c]``, contiguous.
    Forward TokenMixer: ``token_mix(x, H, D/H)``; its backward: ``token_mix(dout, T, D/H)``."""
    bs, r_src, _ = src.shape
    width = r_src * c
    out = new_output((bs, rows, width), like=src)
    if out.numel() > 0:
        block, num_warps = _block(width)
        token_mix_gather_kernel[(bs * rows,)](
            src, out, rows, width, c,
            *_strides(src),
            BLOCK=block, num_warps=num_warps,
        )
    return out


# Launch settings for the norm kernels (defaults, not yet swept on hardware): a row tile of about
# TILE_ELEMENTS fp32 values (16 per thread with 4 warps, so the backward's half-dozen live tiles
# stay in registers), warps, and programs per SM for the persistent backward.
NORM_META = dict(tile_elements=2048, max_rows=16, num_warps=4, per_sm=8)
# tm_norm_bwd_kernel: programs per SM (each holds a 2 * T * D fp32 workspace slot pair, 96 KB at
# RankMixer's T = 16, D = 768), warps and row tile. At rankmixer-100m (H200, CUDA graphs) 2 programs an
# SM, 4 warps and 4-row tiles took 105.6-105.8 us against 137 for the two launches before it; 4 an SM
# with 2-row tiles 108.7, 8 warps no faster, 1 program an SM or 1-row tiles slower (run132, run133).
# Where the workspace cap leaves one program an SM (wide samples: rankmixer-1b, T = 32, D = 1536, 393 KB
# a slot pair), a program takes ``single_warps`` and row tiles of ``single_tile_elements``: there the
# backward took 128.3 us at 8 warps with 4-row tiles, 174.6 at 4 warps with 2-row tiles (the settings
# before), 165-167 at 8 or 16 warps with 2-row tiles, 127.4 at 16 warps with 4-row tiles; two programs an
# SM need the cap lifted to 104 MB for 127.1 (run141 probe)
TM_BWD_META = dict(per_sm=2, num_warps=4, tile_elements=4096, single_warps=8, single_tile_elements=8192,
                   workspace_bytes=32 << 20)


def _rows(d: int, rows: int | None, tile_elements: int | None = None) -> int:
    if rows:
        return rows
    block = triton.next_power_of_2(max(d, 1))
    return max(1, min(NORM_META["max_rows"], (tile_elements or NORM_META["tile_elements"]) // block))


def _norm_fwd(x, r, c, weight, bias, eps, rms, rows, num_warps):
    bs, t, d = x.shape
    m = bs * t
    y = new_output((bs, t, d), like=x)
    mean = new_output((m,), like=x, dtype=torch.float32)
    rstd = new_output((m,), like=x, dtype=torch.float32)
    if m > 0:
        rows = _rows(d, rows)
        weight = weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
        rr = r if r is not None else x
        tm_norm_fwd_kernel[(triton.cdiv(m, rows),)](
            x, rr, weight, bias if bias is not None else weight, y, mean, rstd,
            m, t, d, c, *_strides(x, rr), eps,
            MIX=r is None, RMS=rms, HAS_BIAS=bias is not None, ROWS=rows, BLOCK_D=triton.next_power_of_2(d),
            num_warps=num_warps or NORM_META["num_warps"],
        )
    return y, mean, rstd


def tm_norm_fwd(
    x: torch.Tensor, heads: int, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool,
    *, rows: int | None = None, num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Norm(TokenMixer(x) + x)`` for ``x [bs, T, D]`` (any strides), ``heads == T``.
    Returns ``(y, mean [bs*T] fp32, rstd [bs*T] fp32)``; ``mean`` is zero for RMSNorm."""
    return _norm_fwd(x, None, x.shape[-1] // heads, weight, bias, eps, rms, rows, num_warps)


def tm_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, heads: int, weight: torch.Tensor,
    mean: torch.Tensor, rstd: torch.Tensor, rms: bool,
    *, rows: int | None = None, num_warps: int | None = None, per_sm: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dw, db)``; ``dw``/``db`` in the weight dtype (``db`` is meaningless for RMSNorm).
    One launch (:func:`tm_norm_bwd_kernel`) writes ``dx`` in ``x``'s dtype, then one sums the
    weight partials."""
    bs, t, d = x.shape
    samples = max(bs, 1)
    weight = weight.contiguous()
    sms = sm_count(x.device)
    programs = num_programs_for(samples, x.device, per_sm=per_sm or TM_BWD_META["per_sm"])
    # wider samples: fewer programs, down to one an SM, so that the workspace stays near its size at
    # rankmixer-100m (25 MB), where it was timed
    slot_pairs = TM_BWD_META["workspace_bytes"] // (2 * t * d * 4)
    programs = max(1, min(programs, max(slot_pairs, sms)))
    single = programs <= sms  # one program an SM: wider programs (TM_BWD_META)
    tile = TM_BWD_META["single_tile_elements" if single else "tile_elements"]
    rows = min(_rows(d, rows, tile), triton.next_power_of_2(max(t, 1)))
    per_program = triton.cdiv(samples, programs)
    programs = triton.cdiv(samples, per_program)
    dx = new_output((bs, t, d), like=x)
    ws = torch.empty((programs, 2, t, d), device=x.device, dtype=torch.float32)
    dw_partial, db_partial = _partials(programs, x)
    tm_norm_bwd_kernel[(programs,)](
        dy, x, weight, mean, rstd, dx, ws, dw_partial, db_partial,
        bs, t, d, d // heads, *_strides(dy, x), per_program,
        RMS=rms, ROWS=rows, BLOCK_D=triton.next_power_of_2(max(d, 1)),
        num_warps=num_warps or TM_BWD_META["single_warps" if single else "num_warps"],
    )
    dw, db = _weight_grads(weight, dw_partial, db_partial)
    return dx, dw, db


def _strides(*tensors: torch.Tensor) -> list[int]:
    """The ``[bs, T, D]`` tensors' strides in order, as the kernels take them."""
    return [st for x in tensors for st in x.stride()]


def _partials(programs: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-program fp32 partials of the norm weight's and bias's gradients."""
    d = x.shape[-1]
    return (new_output((programs, d), like=x, dtype=torch.float32),
            new_output((programs, d), like=x, dtype=torch.float32))


def _weight_grads(weight: torch.Tensor, dw_partial: torch.Tensor, db_partial: torch.Tensor):
    """The norm weight's and bias's gradients, in the weight's dtype, from per-program partials."""
    dw, db = new_output(weight.shape, like=weight), new_output(weight.shape, like=weight)
    sum_partials((dw_partial, dw), (db_partial, db))
    return dw, db


def residual_norm_fwd(
    x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool,
    *, rows: int | None = None, num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Norm(x + r)`` for ``x, r [bs, T, D]`` (any strides): ``(y, mean, rstd)`` as :func:`tm_norm_fwd`."""
    return _norm_fwd(x, r, 1, weight, bias, eps, rms, rows, num_warps)


def residual_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor,
    mean: torch.Tensor, rstd: torch.Tensor, rms: bool,
    *, rows: int | None = None, num_warps: int | None = None, per_sm: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ds, dw, db)``: ``ds``, the gradient of both ``x`` and ``r``, in the wider of their dtypes."""
    bs, t, d = x.shape
    m = bs * t
    weight = weight.contiguous()
    rows = _rows(d, rows)
    tiles = triton.cdiv(max(m, 1), rows)
    programs = num_programs_for(tiles, x.device, per_sm=per_sm or NORM_META["per_sm"])
    tiles_per_program = triton.cdiv(tiles, programs)
    ds = new_output((bs, t, d), like=x, dtype=torch.promote_types(x.dtype, r.dtype))
    dw_partial, db_partial = _partials(programs, x)
    residual_norm_bwd_kernel[(programs,)](
        dy, x, r, weight, mean, rstd, ds, dw_partial, db_partial,
        m, t, d, *_strides(dy, x, r), tiles_per_program,
        RMS=rms, ROWS=rows, BLOCK_D=triton.next_power_of_2(max(d, 1)),
        num_warps=num_warps or NORM_META["num_warps"],
    )
    dw, db = _weight_grads(weight, dw_partial, db_partial)
    return ds, dw, db
