"""``sinkhorn`` and the Lite weights (``lite_local_weights``, ``lite_global_weights`` and both at once,
``lite_weights``): validation, backends, and the Triton custom ops (SPEC §2.1, §3).

The Triton backend saves only the per-iteration potentials (``2*K*n`` fp32 per matrix) plus
references to the inputs, and recomputes the iterates in backward; see
``triton_kernels/sinkhorn.py`` for the maths, the layouts and the launches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_same_device, check_shape, check_sinkhorn_args, check_tensor
from .._registry import define_op

# "auto" on CUDA: the cuda backend for the calls it takes (ops/sinkhorn_cuda.py), the reference for the others
SINKHORN = define_op("sinkhorn", cuda_auto=("cuda",), autocast="fp32")
LITE_WEIGHTS = define_op("lite_weights", autocast="fp32")
# the Lite weights one at a time (the modules call these two), so that the global weight can run on the
# cuda Sinkhorn (ops/sinkhorn_cuda.py) and the local weights' batch of small matrices elsewhere; "auto" on
# CUDA: the cuda backend for the calls it takes (faster than the best compile at N = 1024 and 4096, eager
# and graphed, run207), the reference for the others
LITE_LOCAL_WEIGHTS = define_op("lite_local_weights", autocast="fp32")
LITE_GLOBAL_WEIGHTS = define_op("lite_global_weights", cuda_auto=("cuda",), autocast="fp32")

SINKHORN.register("reference")(reference.sinkhorn)
LITE_WEIGHTS.register("reference")(reference.lite_weights)
LITE_LOCAL_WEIGHTS.register("reference")(reference.lite_local_weights)
LITE_GLOBAL_WEIGHTS.register("reference")(reference.lite_global_weights)

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels():
    from ..triton_kernels import sinkhorn as kernels

    return kernels


def potentials_like(t: Tensor, lead: tuple[int, ...], iters: int, n: int) -> Tensor:
    return t.new_empty((*lead, iters, n), dtype=torch.float32)


# --- Triton: sinkhorn ----------------------------------------------------------------------------


@torch.library.custom_op("unimixer::sinkhorn_fwd", mutates_args=())
def sinkhorn_fwd(logits: Tensor, tau: float, iters: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(P, U, V)``: the fp32 doubly stochastic matrix and the row / column potentials."""
    return _kernels().sinkhorn_fwd(logits, tau, iters, symmetric)


@sinkhorn_fwd.register_fake
def sinkhorn_fwd_fake(
    logits: Tensor, tau: float, iters: int, symmetric: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(P, U, V)``'s shapes and dtypes, for every backend's forward op."""
    lead, n = tuple(logits.shape[:-2]), logits.shape[-1]
    return (logits.new_empty(logits.shape, dtype=torch.float32),
            potentials_like(logits, lead, iters, n), potentials_like(logits, lead, iters, n))


@torch.library.custom_op("unimixer::sinkhorn_bwd", mutates_args=())
def sinkhorn_bwd(
    dp: Tensor, logits: Tensor, u: Tensor, v: Tensor, tau: float, iters: int, symmetric: bool
) -> Tensor:
    return _kernels().sinkhorn_bwd(dp, logits, u, v, tau, iters, symmetric)


@sinkhorn_bwd.register_fake
def sinkhorn_bwd_fake(dp: Tensor, logits: Tensor, u: Tensor, v: Tensor, tau: float, iters: int,
                      symmetric: bool) -> Tensor:
    return logits.new_empty(logits.shape)


def sinkhorn_setup(ctx, inputs, output) -> None:
    """Every backend's forward op saves the logits and the potentials (``2 * iters * n`` floats)."""
    logits, tau, iters, symmetric = inputs
    _, u, v = output
    ctx.save_for_backward(logits, u, v)
    ctx.args = (tau, iters, symmetric)
    ctx.mark_non_differentiable(u, v)
    ctx.set_materialize_grads(False)  # no zero-filled gradients of the potentials


def make_backward(bwd_op):
    """The autograd formula of a backend's forward op, given its backward op."""

    def sinkhorn_backward(ctx, dp: Tensor | None, _du, _dv):
        logits, u, v = ctx.saved_tensors
        if dp is None:
            return None, None, None, None
        return bwd_op(dp, logits, u, v, *ctx.args), None, None, None

    return sinkhorn_backward


sinkhorn_fwd.register_autograd(make_backward(sinkhorn_bwd), setup_context=sinkhorn_setup)


def _check_triton_dtype(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype not in _TRITON_DTYPES:
            raise TypeError(
                f"{name}: the triton backend takes dtype in {_TRITON_DTYPES}, got {t.dtype} "
                "(use backend='reference' for float64)"
            )


@SINKHORN.register("triton")
def _sinkhorn_triton(logits: Tensor, tau: float, iters: int, symmetric: bool) -> Tensor:
    _check_triton_dtype(logits=logits)
    return sinkhorn_fwd(logits, tau, iters, symmetric)[0]


# --- Triton: lite_weights ------------------------------------------------------------------------


@torch.library.custom_op("unimixer::lite_local_fwd", mutates_args=())
def lite_local_fwd(
    omega: Tensor, basis: Tensor, tau: float, iters: int, symmetric: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``SK(sum_l omega[n, l] Z[l])`` with the basis composition fused into the batched Sinkhorn."""
    return _kernels().lite_local_fwd(omega, basis, tau, iters, symmetric)


@lite_local_fwd.register_fake
def _(omega: Tensor, basis: Tensor, tau: float, iters: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    n, bsz = omega.shape[0], basis.shape[-1]
    return (omega.new_empty((n, bsz, bsz), dtype=torch.float32),
            potentials_like(omega, (n,), iters, bsz), potentials_like(omega, (n,), iters, bsz))


@torch.library.custom_op("unimixer::lite_local_bwd", mutates_args=())
def lite_local_bwd(
    dw: Tensor, omega: Tensor, basis: Tensor, u: Tensor, v: Tensor, tau: float, iters: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    return _kernels().lite_local_bwd(dw, omega, basis, u, v, tau, iters, symmetric)


@lite_local_bwd.register_fake
def _(dw, omega, basis, u, v, tau, iters, symmetric) -> tuple[Tensor, Tensor]:
    return omega.new_empty(omega.shape), basis.new_empty(basis.shape)


def lite_setup(ctx, inputs, output) -> None:
    """Every Lite weight's forward op: the two differentiable inputs and every output after the weight
    (the potentials, and the Triton global weight's factor parts), which are not differentiable."""
    x, y, tau, iters, symmetric = inputs
    _, *saved = output
    ctx.save_for_backward(x, y, *saved)
    ctx.args = (tau, iters, symmetric)
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)  # no zero-filled gradients of the potentials or the parts


def make_lite_backward(bwd_op):
    """The autograd formula of a Lite weight's forward op that saves its two inputs and the potentials,
    given its backward op ``(dw, x, y, u, v, tau, iters, symmetric) -> (dx, dy)``."""

    def lite_backward(ctx, dw: Tensor | None, _du, _dv):
        x, y, u, v = ctx.saved_tensors
        if dw is None:
            return None, None, None, None, None
        dx, dy = bwd_op(dw, x, y, u, v, *ctx.args)
        return dx, dy, None, None, None

    return lite_backward


lite_local_fwd.register_autograd(make_lite_backward(lite_local_bwd), setup_context=lite_setup)


@torch.library.custom_op("unimixer::lite_global_fwd", mutates_args=())
def lite_global_fwd(
    a_g: Tensor, b_g: Tensor, tau: float, iters: int, symmetric: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``SK(A_G @ B_G)`` matrix free: no ``N x N`` logits are read or written, only ``W_G``. Returns
    ``(W_G, U, V, A_G parts, B_G parts)``: the bf16 parts (``[3, N, r]``, ``[3, r, N]``) of fp32 factors
    where the split GEMM forms the logits (rank above 32, ``UNIMIXER_LITE_GEMM=split``), saved for the
    backward so that it splits neither again (``O(N r)``, 1.5x the factors' bytes); else empty."""
    w, u, v, pa, pb = _kernels().lite_global_fwd(a_g, b_g, tau, iters, symmetric)
    return w, u, v, _parts_or_empty(pa, a_g), _parts_or_empty(pb, b_g)


def _parts_or_empty(parts: Tensor | None, like: Tensor) -> Tensor:
    return parts if parts is not None else like.new_empty((0,), dtype=torch.bfloat16)


@lite_global_fwd.register_fake
def _(a_g: Tensor, b_g: Tensor, tau: float, iters: int, symmetric: bool):
    n = a_g.shape[0]
    saved = _kernels().saves_factor_parts(a_g, b_g)
    pa, pb = ((a_g.new_empty((3, *x.shape), dtype=torch.bfloat16) if saved else None) for x in (a_g, b_g))
    return (a_g.new_empty((n, n), dtype=torch.float32), potentials_like(a_g, (), iters, n),
            potentials_like(a_g, (), iters, n), _parts_or_empty(pa, a_g), _parts_or_empty(pb, b_g))


@torch.library.custom_op("unimixer::lite_global_bwd", mutates_args=())
def lite_global_bwd(
    dw: Tensor, a_g: Tensor, b_g: Tensor, u: Tensor, v: Tensor, a_parts: Tensor, b_parts: Tensor, tau: float,
    iters: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """``(dA_G, dB_G)``; ``a_parts``, ``b_parts``: the forward's (empty when it returned none)."""
    saved = a_parts.numel() > 0
    return _kernels().lite_global_bwd(dw, a_g, b_g, u, v, tau, iters, symmetric,
                                      a_parts if saved else None, b_parts if saved else None)


@lite_global_bwd.register_fake
def _(dw, a_g, b_g, u, v, a_parts, b_parts, tau, iters, symmetric) -> tuple[Tensor, Tensor]:
    return a_g.new_empty(a_g.shape), b_g.new_empty(b_g.shape)


def _lite_global_backward(ctx, dw: Tensor | None, *_):
    a_g, b_g, u, v, a_parts, b_parts = ctx.saved_tensors
    if dw is None:
        return None, None, None, None, None
    da, db = lite_global_bwd(dw, a_g, b_g, u, v, a_parts, b_parts, *ctx.args)
    return da, db, None, None, None


lite_global_fwd.register_autograd(_lite_global_backward, setup_context=lite_setup)


@LITE_LOCAL_WEIGHTS.register("triton")
def _lite_local_weights_triton(omega: Tensor, basis: Tensor, tau: float, iters: int,
                               symmetric: bool) -> Tensor:
    _check_triton_dtype(omega=omega, basis=basis)
    if basis.shape[-1] <= _kernels().SMALL_MAX_N:
        return lite_local_fwd(omega, basis, tau, iters, symmetric)[0]
    # blocks too large for one program's registers: compose with torch, then the tiled kernels
    return sinkhorn_fwd(reference.lite_local_logits(omega, basis), tau, iters, symmetric)[0]


@LITE_GLOBAL_WEIGHTS.register("triton")
def _lite_global_weights_triton(a_g: Tensor, b_g: Tensor, tau: float, iters: int, symmetric: bool) -> Tensor:
    _check_triton_dtype(a_g=a_g, b_g=b_g)
    return lite_global_fwd(a_g, b_g, tau, iters, symmetric)[0]


@LITE_WEIGHTS.register("triton")
def _lite_weights_triton(
    omega: Tensor, basis: Tensor, a_g: Tensor, b_g: Tensor, tau: float, iters: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    return (_lite_local_weights_triton(omega, basis, tau, iters, symmetric),
            _lite_global_weights_triton(a_g, b_g, tau, iters, symmetric))


# --- public functions --------------------------------------------------------------------------


def sinkhorn(
    logits: Tensor,
    tau: float = 1.0,
    iters: int = 20,
    symmetric: bool = True,
    *,
    backend: str = "auto",
) -> Tensor:
    """Unrolled log-domain Sinkhorn of ``logits [..., n, n]``; returns fp32 (fp64 for fp64 input).

    Gradients are those of the unrolled ``iters``-step map. The Triton backend takes fp32, fp16
    and bf16, reads any strides, and saves ``2 * iters * n`` floats per matrix for backward.
    """
    check_tensor("logits", logits)
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits: expected a [..., n, n] tensor, got shape {tuple(logits.shape)}")
    check_sinkhorn_args(tau, iters)
    return SINKHORN.dispatch(backend, logits.device)(logits, float(tau), int(iters), bool(symmetric))


def lite_weights(
    omega: Tensor,
    basis: Tensor,
    a_g: Tensor,
    b_g: Tensor,
    tau: float = 1.0,
    iters: int = 1,
    symmetric: bool = True,
    *,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """UniMixing-Lite weights: ``(SK(omega @ Z) [N, B, B], SK(A_G @ B_G) [N, N])``.

    The Triton backend fuses the basis composition into the batched local Sinkhorn and forms the
    global logits tile by tile from ``A_G`` and ``B_G`` (never an ``N x N`` logits matrix).
    """
    _check_lite_local(omega, basis)
    check_tensor("a_g", a_g, ndim=2)
    n = omega.shape[0]
    if a_g.shape[0] != n:
        raise ValueError(f"a_g: expected shape ({n}, r) (N = omega.shape[0]), got {tuple(a_g.shape)}")
    _check_lite_global(a_g, b_g)
    check_same_device(omega=omega, basis=basis, a_g=a_g, b_g=b_g)
    check_sinkhorn_args(tau, iters)
    return LITE_WEIGHTS.dispatch(backend, omega.device)(
        omega, basis, a_g, b_g, float(tau), int(iters), bool(symmetric)
    )


def lite_local_weights(
    omega: Tensor, basis: Tensor, tau: float = 1.0, iters: int = 1, symmetric: bool = True, *,
    backend: str = "auto",
) -> Tensor:
    """UniMixing-Lite's local weights ``SK(sum_l omega[n, l] Z[l]) [N, B, B]``: the first half of
    :func:`lite_weights`. The Triton backend fuses the basis composition into the batched Sinkhorn."""
    _check_lite_local(omega, basis)
    check_same_device(omega=omega, basis=basis)
    check_sinkhorn_args(tau, iters)
    return LITE_LOCAL_WEIGHTS.dispatch(backend, omega.device)(
        omega, basis, float(tau), int(iters), bool(symmetric))


def lite_global_weights(
    a_g: Tensor, b_g: Tensor, tau: float = 1.0, iters: int = 1, symmetric: bool = True, *,
    backend: str = "auto",
) -> Tensor:
    """UniMixing-Lite's global weight ``SK(A_G @ B_G) [N, N]``: the second half of :func:`lite_weights`.
    The Triton backend forms the logits tile by tile (never an ``N x N`` logits matrix); the ``cuda``
    backend forms them by the Triton backend's fp32 GEMM (``UNIMIXER_LITE_GEMM``) and runs the ``cuda``
    Sinkhorn on them (where its kernels take the call: N <= 1024, or symmetric N <= 5120), so it holds
    one ``N x N`` fp32 matrix during each call (the logits; in the backward, formed again, then their
    gradient over them) for a faster Sinkhorn."""
    _check_lite_global(a_g, b_g)
    check_same_device(a_g=a_g, b_g=b_g)
    check_sinkhorn_args(tau, iters)
    return LITE_GLOBAL_WEIGHTS.dispatch(backend, a_g.device)(
        a_g, b_g, float(tau), int(iters), bool(symmetric))


def _check_lite_local(omega: Tensor, basis: Tensor) -> None:
    check_tensor("omega", omega, ndim=2)
    check_tensor("basis", basis, ndim=3)
    nb = omega.shape[1]
    if basis.shape[0] != nb or basis.shape[1] != basis.shape[2]:
        raise ValueError(
            f"basis: expected shape ({nb}, B, B) (b = omega.shape[1]), got {tuple(basis.shape)}"
        )


def _check_lite_global(a_g: Tensor, b_g: Tensor) -> None:
    check_tensor("a_g", a_g, ndim=2)
    check_tensor("b_g", b_g, ndim=2)
    check_shape("b_g", b_g, (a_g.shape[1], a_g.shape[0]), "(r, N) from a_g [N, r]")
