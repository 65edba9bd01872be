"""RMSNorm and add + RMSNorm: Triton kernels and their launchers (no autograd here).

Forward, per row ``i`` of ``[M, D]``::

    s_i    = x_i + r_i                      (add_rms_norm only; written once, input dtype)
    rstd_i = rsqrt(mean(s_i^2) + eps)       (fp32, saved for backward: 4 bytes per row)
    y_i    = s_i * rstd_i * w               (+ r_i for rms_norm with a residual: the residual is
                                             added after the norm, in fp32, rounded once)

Backward, with ``g_i = dy_i * w`` and ``xhat_i = s_i * rstd_i``::

    ds_i = rstd_i * (g_i - xhat_i * mean(g_i * xhat_i)) (+ dsum_i, the gradient of the sum output)
    dw   = sum_i dy_i * xhat_i

Each program handles a tile of ``BLOCK_M`` rows (about 4096 values), so narrow rows still give
each program enough bytes in flight. ``dw`` is reduced deterministically: each program writes its
fp32 partial row, and a second pass (:func:`._partials.sum_partials`, which other ops' backwards
share so that all their partials take one launch) sums the ``[programs, D]`` partials. Rows are
indexed in int64 so ``M * D`` may exceed 2^31.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import new_output, num_programs_for, rows_2d
from ._partials import sum_partials

# where the forward's residual goes: none, added before the norm (add_rms_norm, which also writes
# the sum), added after it (rms_norm with a residual), or ``x`` itself added after it
NO_RESIDUAL = tl.constexpr(0)
ADD_BEFORE = tl.constexpr(1)
ADD_AFTER = tl.constexpr(2)
ADD_X_AFTER = tl.constexpr(3)


@triton.jit
def _row_offsets(rows, group_rows, stride_row, stride_group, GROUPED: tl.constexpr):
    # GROUPED: the rows of a token slice t[:, a:b] of [bs, T, D], row i being token i % group_rows
    # of sample i // group_rows (samples stride_group apart); else rows stride_row apart. The
    # division in int32 (fewer than 2^31 rows; the launcher checks), the offsets in int64
    if GROUPED:
        r = rows.to(tl.int32)
        return (r // group_rows).to(tl.int64) * stride_group + (r % group_rows).to(tl.int64) * stride_row
    else:
        return rows * stride_row


@triton.jit
def rms_norm_fwd_kernel(
    X, R, W, Y, S, RSTD,
    M, D, stride_x, stride_r, stride_y, stride_s,
    group_rows, stride_xg,
    eps,
    RESIDUAL: tl.constexpr,
    GROUPED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < M
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    x_rows = _row_offsets(rows, group_rows, stride_x, stride_xg, GROUPED)
    x = tl.load(X + x_rows[:, None] + cols[None, :], mask=mask, other=0.0)
    if RESIDUAL == ADD_BEFORE:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # round the sum to the storage dtype first, so forward and backward see the same value
        x = (x.to(tl.float32) + r.to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + rows[:, None] * stride_s + cols[None, :], x, mask=mask)
    xf = x.to(tl.float32)
    # IEEE-rounded sqrt and divide: the fast ones cost a few ulps that fp32 tests would see
    rstd = tl.math.div_rn(1.0, tl.sqrt_rn(tl.sum(xf * xf, axis=1) / D + eps))
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(RSTD + rows, rstd, mask=rmask)
    y = xf * rstd[:, None] * w[None, :]
    if RESIDUAL == ADD_AFTER:
        y += tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL == ADD_X_AFTER:
        y += xf
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_bwd_kernel(
    DY, DSUM, S, W, RSTD, DS, DW_PARTIAL,
    M, D, stride_dy, stride_dsum, stride_s, stride_ds,
    rows_per_program,
    group_rows, stride_sg, stride_dsg,
    HAS_DSUM: tl.constexpr,
    GROUPED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACCUMULATE: tl.constexpr = False,
):
    # rows_per_program is a multiple of BLOCK_M (the launcher rounds it up); ACCUMULATE: each
    # program adds its dw partial to the row already there (a later token pass, TokenPassNorm)
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program, BLOCK_M):
        rows = row_start + i + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        # masked rows load zeros (rstd 0 too): they contribute nothing and store nothing
        s_rows = _row_offsets(rows, group_rows, stride_s, stride_sg, GROUPED)
        s = tl.load(S + s_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = s * rstd[:, None]
        g = dy * w[None, :]
        ds = rstd[:, None] * (g - xhat * (tl.sum(g * xhat, axis=1) / D)[:, None])
        if HAS_DSUM:
            dsum = tl.load(DSUM + rows[:, None] * stride_dsum + cols[None, :], mask=mask, other=0.0)
            ds += dsum.to(tl.float32)
        ds_rows = _row_offsets(rows, group_rows, stride_ds, stride_dsg, GROUPED)
        tl.store(DS + ds_rows[:, None] + cols[None, :], ds.to(DS.dtype.element_ty), mask=mask)
        dw += dy * xhat
    part = tl.sum(dw, axis=0)
    if ACCUMULATE:
        part += tl.load(DW_PARTIAL + pid * D + cols, mask=cmask, other=0.0)
    tl.store(DW_PARTIAL + pid * D + cols, part, mask=cmask)


# Rows per program: a tile of about TILE_ELEMENTS values, so narrow rows (D = 128 at the presets)
# are not one 256-byte row per program, which leaves the memory system mostly idle.
TILE_ELEMENTS = 4096
# the backward's tile and programs per SM: half the forward's tile (its three to four fp32 rows a
# thread held 182 registers at D = 128, two programs an SM), twice the programs. At paper-small's
# rows on the H200 alone (bench/norm_bwd_probe.py, run218): 15.4 against 20.6 µs a call without
# dsum, 23.4 against 24.2 with it; in the UniMixer block's step (run219's profile, both calls with
# dsum) 25.4 and 19.9 against 26.7 and 20.0
BWD_TILE_ELEMENTS = 2048
BWD_PROGRAMS_PER_SM = 8


def _tile(d: int, elements: int = TILE_ELEMENTS) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_D, num_warps)`` for rows of width ``d`` in tiles of about ``elements`` values."""
    block_d = triton.next_power_of_2(d)
    block_m = max(1, elements // block_d)
    return block_m, block_d, min(max(block_m * block_d // 1024, 1), 8)


def rms_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Launch the forward on ``x [..., D]``, with ``residual`` added before the norm (add_rms_norm);
    returns ``(y, s or None, rstd [M] fp32)``."""
    return _launch_fwd(x, residual, weight, eps, NO_RESIDUAL if residual is None else ADD_BEFORE)


def rms_norm_add_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch ``residual + RMSNorm(x)`` on ``x [..., D]`` (``residual=None``: ``x`` itself), the sum
    in fp32 rounded once; returns ``(z, rstd [M] fp32)``."""
    mode = ADD_X_AFTER if residual is None else ADD_AFTER
    z, _, rstd = _launch_fwd(x, residual, weight, eps, mode)
    return z, rstd


def _launch_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, mode: tl.constexpr,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    d = x.shape[-1]
    x2 = rows_2d(x)
    r2 = rows_2d(residual) if residual is not None else x2
    m = x2.shape[0]
    y = new_output((m, d), like=x)
    s = new_output((m, d), like=x) if mode == ADD_BEFORE else y
    rstd = new_output((m,), like=x, dtype=torch.float32)
    _run_fwd(x2, r2, weight, y, s, rstd, m, d, (x2.stride(0), r2.stride(0), y.stride(0), s.stride(0)), eps,
             mode)
    shape = x.shape
    return y.view(shape), (s.view(shape) if mode == ADD_BEFORE else None), rstd


def _run_fwd(x, r, weight, y, s, rstd, m: int, d: int, strides: tuple, eps: float, mode: tl.constexpr,
             group: tuple[int, int] | None = None) -> None:
    """:func:`rms_norm_fwd_kernel` over ``m`` rows (``strides``: of ``x``, ``r``, ``y``, ``s``);
    ``group``: ``(group_rows, stride_xg)`` of token-slice rows (``GROUPED``), else plain rows."""
    if m == 0:
        return
    block_m, block_d, warps = _tile(d)
    rms_norm_fwd_kernel[(triton.cdiv(m, block_m),)](
        x, r, weight, y, s, rstd,
        m, d, *strides,
        *(group if group is not None else (1, 0)),
        eps,
        RESIDUAL=mode,
        GROUPED=group is not None,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=warps,
    )


def _run_bwd(dy, dsum, s, weight, rstd, ds, partial, m: int, d: int, strides: tuple, rows_per_program: int,
             programs: int, has_dsum: bool, group: tuple[int, int, int] | None = None,
             accumulate: bool = False):
    """:func:`rms_norm_bwd_kernel` on ``programs`` programs of ``rows_per_program`` rows
    (``strides``: of ``dy``, ``dsum``, ``s``, ``ds``); ``group``: ``(group_rows, stride_sg,
    stride_dsg)`` of token-slice rows (``GROUPED``), else plain rows. Returns the launch's compiled
    kernel."""
    block_m, block_d, warps = _tile(d, BWD_TILE_ELEMENTS)
    return rms_norm_bwd_kernel[(programs,)](
        dy, dsum, s, weight, rstd, ds, partial,
        m, d, *strides,
        rows_per_program,
        *(group if group is not None else (1, 0, 0)),
        HAS_DSUM=has_dsum,
        GROUPED=group is not None,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        ACCUMULATE=accumulate,
        num_warps=warps,
    )


def _bwd_grid(m: int, d: int, device: torch.device) -> tuple[int, int]:
    """``(rows_per_program, programs)`` of :func:`rms_norm_bwd_kernel` over ``m`` rows:
    :data:`BWD_PROGRAMS_PER_SM` programs an SM or fewer, each a whole number of ``BLOCK_M`` tiles."""
    block_m = _tile(d, BWD_TILE_ELEMENTS)[0]
    tiles = triton.cdiv(max(m, 1), block_m)
    rows_per_program = triton.cdiv(tiles, num_programs_for(tiles, device, BWD_PROGRAMS_PER_SM)) * block_m
    return rows_per_program, triton.cdiv(max(m, 1), rows_per_program)


def rms_norm_bwd_partials(
    dy: torch.Tensor,
    dsum: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ds, dw partials [programs, D] fp32)``: the gradient with respect to the normalised input
    (plus ``dsum``, the gradient of a sum output or of an input used twice, when given), and the
    per-program partials of ``dw`` for :func:`._partials.sum_partials`."""
    d = s.shape[-1]
    s2 = rows_2d(s)
    dy2 = rows_2d(dy)
    dsum2 = rows_2d(dsum) if dsum is not None else dy2
    m = s2.shape[0]
    ds = new_output((m, d), like=s)
    rows_per_program, programs = _bwd_grid(m, d, s.device)
    partial = new_output((programs, d), like=s, dtype=torch.float32)
    _run_bwd(dy2, dsum2, s2, weight, rstd, ds, partial, m, d,
             (dy2.stride(0), dsum2.stride(0), s2.stride(0), ds.stride(0)), rows_per_program, programs,
             has_dsum=dsum is not None)
    return ds.view(s.shape), partial


def rms_norm_bwd(
    dy: torch.Tensor,
    dsum: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``y`` (plus ``dsum``) with respect to the normalised input and ``w`` (in
    ``w``'s dtype): :func:`rms_norm_bwd_partials`, then their sum."""
    ds, partial = rms_norm_bwd_partials(dy, dsum, s, weight, rstd)
    dw = new_output(weight.shape, like=weight)
    sum_partials((partial, dw))
    return ds, dw


class TokenPassNorm:
    """``u = RMSNorm(s)`` in front of a consumer whose backward runs in token passes (the per-token
    FFN's, :func:`.pswiglu.ffn_bwd`), so that neither ``u`` nor ``du`` is ever held whole.

    ``s [bs, T, D]`` (unit stride along ``D``) is the norm's input and ``ds`` (strides of ``s``) its
    gradient's buffer, which may be ``s`` itself when the caller owns ``s``; ``rstd`` is the
    forward's ``[bs, T]`` fp32 statistics, or ``None``. A pass over the tokens ``sl`` takes one of
    two routes:

    - its consumer's kernel does the norm itself (the fused FFN, ``rstd`` required):
      :meth:`fused_pass` gives it the pass's ``s``, ``ds`` and ``rstd`` and whether it adds to the
      partial rows an earlier pass wrote; it forms ``u`` from ``rstd``, the forward's bits, and
      writes ``ds`` and its partials from its own fp32 ``du``;
    - else :meth:`rows` recomputes ``u`` from ``s`` with the forward kernel (the same bits as the
      forward's ``u``) and keeps the pass's ``rstd``; :meth:`grads` then turns the pass's ``du``
      into the rows ``sl`` of ``ds`` and the norm weight's partials.

    With ``ds`` over ``s`` a pass overwrites only the rows it has read, after its last read of them.
    :meth:`plan` sizes one partial buffer that every pass adds to, which the caller sums into ``dw``
    (the norm weight's gradient, its dtype) with its own partials once every pass has run
    (:meth:`weight_grad_pair`)."""

    def __init__(self, s: torch.Tensor, weight: torch.Tensor, eps: float, ds: torch.Tensor,
                 rstd: torch.Tensor | None = None) -> None:
        if s.dim() != 3 or s.stride(-1) != 1 or ds.shape != s.shape or ds.stride() != s.stride():
            raise ValueError("TokenPassNorm: s must be [bs, T, D] with unit stride along D, and ds like s")
        if s.shape[0] * s.shape[1] >= 2 ** 31:
            raise ValueError(f"TokenPassNorm: {s.shape[0] * s.shape[1]} rows; at most 2^31 - 1")
        if rstd is not None and (rstd.shape != s.shape[:2] or rstd.dtype != torch.float32):
            raise ValueError(f"TokenPassNorm: rstd must be [bs, T] fp32, got {tuple(rstd.shape)} "
                             f"{rstd.dtype}")
        self.s, self.weight, self.eps, self.ds, self.saved_rstd = s, weight, eps, ds, rstd
        self._rstd: dict[int, torch.Tensor] = {}
        self._accumulate = False  # whether a pass has written the partial rows (plan resets it)
        self._rows_written: int | None = None
        self.partial: torch.Tensor | None = None
        self.dw: torch.Tensor | None = None

    def plan(self, chunks: list[slice], rows_per_token: int | None = None) -> None:
        """Size the norm weight's partial buffer for the passes ``chunks`` (the first the longest, as
        :func:`.pswiglu._chunks` makes them). ``rows_per_token``: the fused route's, at most
        ``rows_per_token`` rows for each token of the first pass (its kernel's grid, :meth:`wrote`).
        Else one row per program of the first pass's backward grid, which every pass takes (each pass
        fills the GPU), the later passes adding their partials to the rows the first wrote. (Partials
        of the whole tensor's grid split among the passes left each of eight passes an eighth of the
        GPU, 21 µs a pass at paper-100m, run85; a grid per pass with rows of its own made the sum of
        2048 partial rows a 32 µs launch at paper-small, run81.)"""
        bs, t, d = self.s.shape
        first = chunks[0].stop - chunks[0].start if chunks else 0
        if any(c.stop - c.start > first for c in chunks):
            raise ValueError("TokenPassNorm.plan: the first pass must be the longest")
        if rows_per_token is not None:
            programs = first * rows_per_token
        else:
            self._rows_per_program, programs = _bwd_grid(bs * first, d, self.s.device)
        self._accumulate = False
        self._rows_written = None  # the fused route's: the rows its first pass wrote (wrote)
        self.partial = new_output((programs if chunks else 0, d), like=self.s, dtype=torch.float32)
        self.dw = new_output(self.weight.shape, like=self.weight)

    def fused_pass(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """``(s, ds, rstd, accumulate)`` of the tokens ``sl`` for a kernel that does the pass's norm
        itself (views; ``accumulate``: add to the partial rows, which an earlier pass wrote)."""
        if self.saved_rstd is None:
            raise ValueError("TokenPassNorm.fused_pass: needs the forward's rstd")
        n = sl.stop - sl.start
        accumulate, self._accumulate = self._accumulate, True
        return (self.s.narrow(1, sl.start, n), self.ds.narrow(1, sl.start, n),
                self.saved_rstd.narrow(1, sl.start, n), accumulate)

    def wrote(self, rows: int) -> None:
        """After a :meth:`fused_pass`'s kernel: it wrote (or, after the first pass, added to) the first
        ``rows`` partial rows, a row per program of its grid, which :meth:`plan`'s ``rows_per_token``
        sized for the smallest tile. The sum reads the rows the first pass wrote, which every later
        pass must stay within."""
        first = self._rows_written is None
        if first:
            limit, what = self.partial.shape[0], "the buffer holds"
        else:
            limit, what = self._rows_written, "the first pass wrote"
        if rows > limit:
            raise RuntimeError(f"TokenPassNorm.wrote: a pass wrote {rows} partial rows, past the {limit} "
                               f"{what}")
        if first:
            self._rows_written = rows

    def rows(self, sl: slice) -> torch.Tensor:
        """``u`` of the tokens ``sl``, ``[bs, n, D]`` contiguous, as the forward computed it."""
        x = self.s.narrow(1, sl.start, sl.stop - sl.start)
        bs, n, d = x.shape
        m = bs * n
        u = new_output((bs, n, d), like=x)
        rstd = new_output((m,), like=x, dtype=torch.float32)
        self._rstd[sl.start] = rstd
        _run_fwd(x, x, self.weight, u, u, rstd, m, d, (x.stride(1), 0, d, d), self.eps, NO_RESIDUAL,
                 group=(n, x.stride(0)))
        return u

    def grads(self, sl: slice, du: torch.Tensor) -> None:
        """The rows ``sl`` of ``ds`` from the pass's ``du [bs, n, D]`` (contiguous), and its norm
        weight partials; after :meth:`rows` for the same ``sl``."""
        n = sl.stop - sl.start
        s, ds = self.s.narrow(1, sl.start, n), self.ds.narrow(1, sl.start, n)
        bs, _, d = s.shape
        m = bs * n
        rows_per_program = self._rows_per_program
        programs = triton.cdiv(max(m, 1), rows_per_program)
        if m == 0:
            if not self._accumulate:
                self.partial.zero_()
                self._accumulate = True
            return
        _run_bwd(du, du, s, self.weight, self._rstd.pop(sl.start), ds, self.partial, m, d,
                 (d, d, s.stride(1), ds.stride(1)), rows_per_program, programs, has_dsum=False,
                 group=(n, s.stride(0), ds.stride(0)), accumulate=self._accumulate)
        self._accumulate = True

    def weight_grad_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(partials, dw)`` for :func:`._partials.sum_partials`: the rows the passes wrote."""
        if self._rows_written is not None:
            return self.partial[:self._rows_written], self.dw
        return self.partial, self.dw
