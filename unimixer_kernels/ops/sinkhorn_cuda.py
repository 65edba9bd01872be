"""The ``cuda`` backend of ``sinkhorn``: glue for the compiled ops.

``csrc/sinkhorn.cu`` defines, in the operator library ``unimixer_C`` (``csrc/registration.cpp``):

* ``sinkhorn_fwd(logits, tau, iters, symmetric) -> (P, U, V)``
* ``sinkhorn_bwd(dp, logits, u, v, tau, iters, symmetric) -> dlogits``
* ``sinkhorn_bwd_(dp, logits, u, v, tau, iters, symmetric)``: the same gradient written over ``logits``
  (in place where the kernels allow it: contiguous symmetric logits of n > 1024; else through a temporary)

the same contract as the Triton backend's ops (fp32 ``P``, the potentials ``U, V [..., iters, n]``
saved, everything else recomputed in backward), for dense logits with ``n <= 1024``: one launch
per direction, a row band's tiles in one thread-block cluster exchanging their row sums through
distributed shared memory, the column sums through global memory; and (``csrc/sinkhorn_paired.cu``)
for symmetric logits with ``1024 < n <= 5120``: of each pair of mirrored 64 x 64 tiles one is kept,
on chip (shared memory, or a workspace that stays in L2) for the whole call, one warp per pair and one
block per SM, exchanging partial sums as tagged words through global memory. This file registers the
fakes and the autograd formula (shared with the Triton backend, ``ops/sinkhorn.py``) and the backend,
and the ``cuda`` backend of ``lite_global_weights``: ``A_G @ B_G`` by the Triton backend's fp32 GEMM for
these logits (``UNIMIXER_LITE_GEMM``), then these kernels, as forward and backward ops of their own. Up
to ``SAVED_LOGITS_MAX_N`` (with the split GEMM) the forward saves the logits and the factors' bf16 parts
for the backward (5.5 MiB at N = 1024); above, it saves no ``N x N`` logits: the backward forms them again
and writes their gradient over them with ``sinkhorn_bwd_``.

Environment: ``UNIMIXER_SINKHORN_CUDA_TILE`` = ``auto`` | ``128x64`` | ``64x128`` | ``128x128`` (rows x
columns of a block's tile; ``auto`` takes the first in that order whose clusters all fit the device at
once: on the H200 128x64 at n = 300 and 512, 128x128 at n = 1024, run168; it does not apply above n =
1024); ``UNIMIXER_SINKHORN_CHECK=1``
synchronises after each launch and raises if a wait for partials timed out (the tests).

``"auto"`` on CUDA runs this backend wherever the kernels take the call (``_refusal``: n <= 1024 with
at most 64 resident 128 x 128 tiles, or symmetric n <= 5120 within the paired kernels' residency), and
the reference elsewhere: measured faster than the best ``torch.compile`` at N = 1024 and 4096, eager and
under CUDA graphs (bench/results run199); ``lite_global_weights`` likewise (run207).

``torch.compile``: the graph holds the library's ops. Dynamo cannot trace the library's loading (an
import); the backend's selection, which runs before the call is traced, loads it and registers the
fakes (``_cuda_ext.on_load``).
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

from .. import _cuda_ext
from .._registry import assume_constant
from .sinkhorn import (
    LITE_GLOBAL_WEIGHTS,
    SINKHORN,
    lite_setup,
    make_backward,
    potentials_like,
    sinkhorn_bwd_fake,
    sinkhorn_fwd_fake,
    sinkhorn_setup,
)
from .sinkhorn import (
    _kernels as _triton_sinkhorn,
)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_N = 1024  # kMaxN in csrc/sinkhorn.cu: a row band of 128-column tiles in one portable cluster (8 blocks)
# Every block of a launch is resident at once. The kernels check that against the device before they
# launch (cudaOccupancyMaxActiveClusters); this static bound, checked first, keeps every call the
# backend accepts inside what the H200 holds with 128 x 128 tiles (64 blocks: one matrix of n = 1024
# in 8 clusters of 8), so that the check never has to refuse one
MAX_BLOCKS = 64
# Larger symmetric logits (csrc/sinkhorn_paired.cu): 64 x 64 tiles, of each mirrored pair one kept, 16 pairs
# per block (one warp each) and one block per SM, all resident; a block reduces up to 32 rows' partials
MAX_N_PAIRED = 5120
PAIRED_BAND = 64
PAIRED_UNITS_PER_SM = 16
PAIRED_ROWS_PER_BLOCK = 32
_NAMES = ("sinkhorn_fwd", "sinkhorn_bwd", "sinkhorn_bwd_", "sinkhorn_plan")


def _backward_op(dp: Tensor, logits: Tensor, u: Tensor, v: Tensor, tau: float, iters: int,
                 symmetric: bool) -> Tensor:
    # P is fp32, so its gradient is too, unless a caller's own autograd.Function handed back another dtype
    return torch.ops.unimixer_C.sinkhorn_bwd(dp.to(torch.float32), logits, u, v, tau, iters, symmetric)


def _sinkhorn_bwd_inplace_fake(dp: Tensor, logits: Tensor, u: Tensor, v: Tensor, tau: float, iters: int,
                               symmetric: bool) -> None:
    return None


@functools.cache
def _register_python_parts() -> None:
    torch.library.register_fake("unimixer_C::sinkhorn_fwd", sinkhorn_fwd_fake)
    torch.library.register_fake("unimixer_C::sinkhorn_bwd", sinkhorn_bwd_fake)
    torch.library.register_fake("unimixer_C::sinkhorn_bwd_", _sinkhorn_bwd_inplace_fake)
    torch.library.register_autograd("unimixer_C::sinkhorn_fwd", make_backward(_backward_op),
                                    setup_context=sinkhorn_setup)


def cuda_ops():
    """``torch.ops.unimixer_C`` with the library loaded and its fakes and autograd registered."""
    return _cuda_ext.ops_with(_register_python_parts)


_cuda_ext.on_load(_register_python_parts, *_NAMES)


TILE_SWITCH = "UNIMIXER_SINKHORN_CUDA_TILE"
TILES = ("auto", "128x64", "64x128", "128x128")


def _refusal(logits: Tensor, symmetric: bool) -> tuple[type[Exception], str] | None:
    """Why the backend cannot run this call (the error to raise), or None: the limits of the kernels,
    checked before the library is called (its own checks are a second line of defence)."""
    return _refusal_of(logits.shape, logits.dtype, logits.device, symmetric)


def _refusal_of(shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device,
                symmetric: bool) -> tuple[type[Exception], str] | None:
    """:func:`_refusal` for logits of this shape, dtype and device."""
    if dtype not in SUPPORTED_DTYPES:
        return TypeError, (f"logits: the cuda backend takes dtype in {SUPPORTED_DTYPES}, got {dtype} "
                           "(use backend='reference' for float64)")
    n = shape[-1]
    n_mat = math.prod(shape) // (n * n) if n else 0
    if n > MAX_N:
        if not symmetric or n > MAX_N_PAIRED:
            return ValueError, (f"logits: the cuda backend takes n <= {MAX_N} (a row band of tiles in "
                                f"one thread-block cluster), or symmetric logits of n <= {MAX_N_PAIRED} "
                                f"(mirrored tiles kept once); got n = {n}, symmetric={symmetric}; use "
                                "backend='triton'")
        return _paired_refusal(device, n, n_mat)
    blocks = n_mat * ((n + 127) // 128) ** 2
    if blocks > MAX_BLOCKS:
        return ValueError, (f"logits: the cuda backend keeps every 128 x 128 tile of the batch resident "
                            f"at once, at most {MAX_BLOCKS} tiles; {n_mat} matrices of n = {n} have "
                            f"{blocks}. Use backend='triton', or fewer matrices per call")
    return None


def _auto_accepts(logits: Tensor, tau: float, iters: int, symmetric: bool) -> bool:
    """``"auto"`` runs a call here wherever the kernels take it (measured faster than the best
    ``torch.compile`` at N = 1024 and 4096, bench/results run199), else the next backend."""
    return _refusal(logits, symmetric) is None


@SINKHORN.register("cuda", auto_accepts=_auto_accepts)
def _sinkhorn_cuda(logits: Tensor, tau: float, iters: int, symmetric: bool) -> Tensor:
    tile = _tile_switch()
    refusal = _refusal(logits, symmetric)
    if refusal is not None:
        raise refusal[0](refusal[1])
    _check_tile(tile, logits.shape, logits.dtype, logits.device, symmetric)
    return _call(logits, tau, iters, symmetric)


def _tile_switch() -> str:
    tile = os.environ.get(TILE_SWITCH, "auto") or "auto"
    if tile not in TILES:
        raise ValueError(f"{TILE_SWITCH}: expected one of {TILES}, got {tile!r}")
    return tile


def _check_tile(tile: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device,
                symmetric: bool) -> None:
    """A tile asked for by name may not fit where 'auto' would take another: ask the library's residency
    check (which reads only the logits' shape, dtype and device: it is given a storage-free stand-in)
    before it would have to refuse the call."""
    n = shape[-1]
    n_mat = math.prod(shape) // (n * n) if n else 0
    if n <= MAX_N and tile != "auto" and n_mat and not torch.compiler.is_compiling():
        like = torch.empty((), dtype=dtype, device=device).expand(shape)
        fwd, bwd = cuda_ops().sinkhorn_plan(like, symmetric)
        if min(fwd, bwd) < 0:
            raise ValueError(f"{TILE_SWITCH}={tile}: the clusters of {n_mat} matrices of n = {n} in {tile} "
                             "tiles do not all fit the device at once; use 'auto'")


def _lite_global_refusal(a_g: Tensor, symmetric: bool) -> tuple[type[Exception], str] | None:
    n = a_g.shape[0]
    refusal = _refusal_of((n, n), torch.float32, a_g.device, symmetric)
    if refusal is None:
        return None
    return refusal[0], f"a_g, b_g: the logits A_G @ B_G [{n}, {n}] ({refusal[1]})"


def _lite_global_auto_accepts(a_g: Tensor, b_g: Tensor, tau: float, iters: int, symmetric: bool) -> bool:
    """A list such as ``cuda/triton`` (a per-op spec) runs a call here wherever the kernels take its
    logits."""
    return _lite_global_refusal(a_g, symmetric) is None


# The Lite global weight: forward and backward ops of their own. At large N the N x N logits are never
# saved (paper-100m's peak has no room for them): the backward forms them again (the same fp32 GEMM, bit for
# bit) and the Sinkhorn backward writes their gradient over them, the paired kernels (N > 1024) in place.


def _logits(a_g: Tensor, b_g: Tensor, mm=None) -> Tensor:
    """``A_G @ B_G`` in fp32 by the Triton backend's GEMM for these logits (``UNIMIXER_LITE_GEMM``: the
    split GEMM on bf16 tensor cores, or cuBLAS in IEEE fp32), whatever torch's TF32 flag: the forward and
    the backward form the same bits, and the same as the Triton backend's where it forms them once.
    ``mm``: the call's ``Fp32Products`` (default a new one), which keeps the factors' bf16 parts."""
    return _triton_sinkhorn().lowrank_logits(a_g.float(), b_g.float(), mm)[0]


# With the split GEMM (UNIMIXER_LITE_GEMM=split, the default) and N up to this, the forward saves the logits
# and the factors' bf16 parts (4 MiB and 1.5 MiB at paper-small's N = 1024, r = 128), so that the backward,
# which runs at the end of the Lite block's step, neither splits the factors nor forms the logits again, and
# forms its two gradient GEMMs on the split GEMM too (dL's parts, 6 MiB there, at the step's end). Above it
# (64 MiB of logits and 96 MiB of dL's parts at paper-100m's N = 4096, over the Lite block's peak margin
# there, bench/NOTES.md) nothing N x N is saved and the gradients run on cuBLAS in IEEE fp32. At N = 1024
# cuBLAS's two fp32 GEMMs fill a fraction of the GPU (32 output tiles each), one after the other.
SAVED_LOGITS_MAX_N = 1024


def _saves_logits(n: int, mm) -> bool:
    return mm.mode == "split" and n <= SAVED_LOGITS_MAX_N


@torch.library.custom_op("unimixer::lite_global_cuda_fwd", mutates_args=())
def lite_global_cuda_fwd(a_g: Tensor, b_g: Tensor, tau: float, iters: int,
                         symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(W_G, U, V, L, A_G parts, B_G parts)`` of ``SK(A_G @ B_G)``, the logits ``L`` formed by
    :func:`_logits`; ``L`` and the parts for the backward where :func:`_saves_logits`, else empty."""
    mm = _triton_sinkhorn().Fp32Products()
    a32, b32 = a_g.float(), b_g.float()
    logits = _logits(a32, b32, mm)
    w, u, v = cuda_ops().sinkhorn_fwd(logits, tau, iters, symmetric)
    if not _saves_logits(logits.shape[0], mm):
        empty = a_g.new_empty((0,), dtype=torch.bfloat16)
        return w, u, v, logits.new_empty((0,)), empty, empty.clone()
    pa, pb = mm.parts_of(a32), mm.parts_of(b32)
    if pa is None or pb is None:  # the split GEMM splits every operand it is given
        raise RuntimeError("lite_global_cuda_fwd: the split GEMM kept no parts of A_G, B_G; this is a bug")
    return w, u, v, logits, pa, pb


@lite_global_cuda_fwd.register_fake
def _(a_g: Tensor, b_g: Tensor, tau: float, iters: int,
      symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    n = a_g.shape[0]
    saved = _saves_logits(n, _triton_sinkhorn().Fp32Products())
    logits = a_g.new_empty((n, n) if saved else (0,), dtype=torch.float32)
    pa, pb = (a_g.new_empty((3, *x.shape) if saved else (0,), dtype=torch.bfloat16) for x in (a_g, b_g))
    return (a_g.new_empty((n, n), dtype=torch.float32), potentials_like(a_g, (), iters, n),
            potentials_like(a_g, (), iters, n), logits, pa, pb)


@torch.library.custom_op("unimixer::lite_global_cuda_bwd", mutates_args=())
def lite_global_cuda_bwd(dw: Tensor, a_g: Tensor, b_g: Tensor, u: Tensor, v: Tensor, logits: Tensor,
                         a_parts: Tensor, b_parts: Tensor, tau: float, iters: int,
                         symmetric: bool) -> tuple[Tensor, Tensor]:
    """``(dA_G, dB_G)``: ``dL`` from the forward's logits where it saved them (``logits`` not empty), else
    from the logits formed again (the forward's GEMM, so bit for bit its logits); then ``dL @ B_G^T`` and
    ``A_G^T @ dL``, on the split GEMM from the forward's parts of the factors where it saved them (one
    launch splitting ``dL``, one for both products), else by cuBLAS in IEEE fp32. At ``N > MAX_N`` the
    paired kernels write ``dL`` over the logits formed again; below, the cluster kernels' in-place form
    would compute it into a new buffer and copy it over them, so it is taken from that buffer."""
    saved = logits.numel() > 0
    if not saved:
        logits = _logits(a_g, b_g)
    dw32 = dw.to(torch.float32)
    if logits.shape[0] <= MAX_N:
        dl = cuda_ops().sinkhorn_bwd(dw32, logits, u, v, tau, iters, symmetric)
    else:
        cuda_ops().sinkhorn_bwd_(dw32, logits, u, v, tau, iters, symmetric)
        dl = logits
    a32, b32 = a_g.float(), b_g.float()
    mm = _triton_sinkhorn().Fp32Products("split" if saved else "cublas")
    if saved:
        mm.adopt(a32, a_parts)
        mm.adopt(b32, b_parts)
    da, db = mm((dl, b32.t()), (a32.t(), dl))
    return da.to(a_g.dtype), db.to(b_g.dtype)


@lite_global_cuda_bwd.register_fake
def _(dw, a_g, b_g, u, v, logits, a_parts, b_parts, tau, iters, symmetric) -> tuple[Tensor, Tensor]:
    return a_g.new_empty(a_g.shape), b_g.new_empty(b_g.shape)


def _lite_global_cuda_backward(ctx, dw: Tensor | None, *_):
    a_g, b_g, u, v, logits, a_parts, b_parts = ctx.saved_tensors
    if dw is None:
        return None, None, None, None, None
    return (*lite_global_cuda_bwd(dw, a_g, b_g, u, v, logits, a_parts, b_parts, *ctx.args), None, None, None)


lite_global_cuda_fwd.register_autograd(_lite_global_cuda_backward, setup_context=lite_setup)


@LITE_GLOBAL_WEIGHTS.register("cuda", auto_accepts=_lite_global_auto_accepts)
def _lite_global_weights_cuda(a_g: Tensor, b_g: Tensor, tau: float, iters: int, symmetric: bool) -> Tensor:
    """``SK(A_G @ B_G)`` on the kernels, saving ``A_G``, ``B_G`` and the potentials, and up to
    ``SAVED_LOGITS_MAX_N`` the logits and the factors' parts (:func:`lite_global_cuda_fwd`)."""
    tile = _tile_switch()
    refusal = _lite_global_refusal(a_g, symmetric)
    if refusal is not None:
        raise refusal[0](refusal[1])
    n = a_g.shape[0]
    _check_tile(tile, (n, n), torch.float32, a_g.device, symmetric)
    return lite_global_cuda_fwd(a_g, b_g, tau, iters, symmetric)[0]


def _call(logits: Tensor, tau: float, iters: int, symmetric: bool) -> Tensor:
    if torch.compiler.is_compiling():  # the library is loaded and registered (the module docstring)
        return torch.ops.unimixer_C.sinkhorn_fwd(logits, tau, iters, symmetric)[0]
    return cuda_ops().sinkhorn_fwd(logits, tau, iters, symmetric)[0]


def paired_units(n: int, n_mat: int) -> int:
    """Mirrored pairs of 64 x 64 tiles (I <= J) of ``n_mat`` symmetric matrices of ``n``: the units the
    paired kernels spread over the SMs, at most ``PAIRED_UNITS_PER_SM`` each."""
    bands = -(-n // PAIRED_BAND)
    return n_mat * bands * (bands + 1) // 2


@assume_constant
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _paired_refusal(device: torch.device, n: int, n_mat: int) -> tuple[type[Exception], str] | None:
    # the residency rules of csrc/sinkhorn_paired.cu (`plan`)
    if device.type != "cuda":
        return None  # the library's device check names the argument
    index = device.index if device.index is not None else torch.cuda.current_device()
    sms = _sm_count(index)
    units = paired_units(n, n_mat)
    per = -(-units // sms)
    blocks = max(-(-units // per), -(-n_mat * n // PAIRED_ROWS_PER_BLOCK)) if units else 0
    if per > PAIRED_UNITS_PER_SM or blocks > sms:
        return ValueError, (f"logits: the cuda backend keeps every mirrored pair of 64 x 64 tiles resident, "
                            f"at most {PAIRED_UNITS_PER_SM} per SM and one block per SM ({sms} SMs); {n_mat} "
                            f"matrices of n = {n} have {units} pairs. Use backend='triton', or fewer "
                            "matrices per call")
    return None
