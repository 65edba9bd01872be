"""``rms_norm`` and ``add_rms_norm``: validation, backends, and the Triton custom ops.

This file is the pattern every op follows:

1. ``define_op`` records the op and the backends ``"auto"`` prefers on CUDA;
2. the reference backend is the function in ``reference``;
3. each kernel backend is a pair of ``torch.library`` custom ops (forward and backward, each
   with a fake implementation) glued by ``register_autograd``, so ``torch.compile`` sees one
   opaque node per op and never breaks the graph;
4. the public function validates its input (SPEC §9), then dispatches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_same_device, check_shape, check_tensor
from .._registry import define_op

RMS_NORM = define_op("rms_norm")
ADD_RMS_NORM = define_op("add_rms_norm")

RMS_NORM.register("reference")(reference.rms_norm)
ADD_RMS_NORM.register("reference")(reference.add_rms_norm)


def _kernels():
    from ..triton_kernels import rms_norm as kernels

    return kernels


# --- shapes and autograd, shared by every kernel backend (Triton here, CUDA in rms_norm_cuda) ---
# Forward ops: (x, weight, eps) -> (y, rstd) and (x, residual, weight, eps) -> (y, x + residual,
# rstd); backward op: (dy, dsum?, s, weight, rstd) -> (ds, dw). rstd is fp32 [...], one per row.
# Autograd leaves the gradients of unused outputs as None (no zero-filled [...] buffers for rstd).


def rms_norm_fwd_fake(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


def add_rms_norm_fwd_fake(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


def rms_norm_bwd_fake(
    dy: Tensor, dsum: Tensor | None, s: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    return s.new_empty(s.shape), weight.new_empty(weight.shape)


def rms_norm_setup(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)
    ctx.mark_non_differentiable(rstd)
    ctx.set_materialize_grads(False)


def add_rms_norm_setup(ctx, inputs, output) -> None:
    _, _, weight, _ = inputs
    _, s, rstd = output
    ctx.save_for_backward(s, weight, rstd)
    ctx.mark_non_differentiable(rstd)
    ctx.set_materialize_grads(False)


def make_backwards(bwd_op):
    """The autograd formulas of both forward ops, given a backend's backward op."""

    def rms_norm_backward(ctx, dy: Tensor | None, _drstd: Tensor | None):
        if dy is None:
            return None, None, None
        x, weight, rstd = ctx.saved_tensors
        dx, dw = bwd_op(dy, None, x, weight, rstd)
        return dx, dw, None

    def add_rms_norm_backward(ctx, dy: Tensor | None, dsum: Tensor | None, _drstd: Tensor | None):
        if dy is None and dsum is None:
            return None, None, None, None
        s, weight, rstd = ctx.saved_tensors
        if dy is None:  # only the sum output was used
            dy = torch.zeros_like(s)
        ds, dw = bwd_op(dy, dsum, s, weight, rstd)
        return ds, ds, dw, None

    return rms_norm_backward, add_rms_norm_backward


# --- Triton: forward and backward custom ops -------------------------------------------------


@torch.library.custom_op("unimixer::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    y, _, rstd = _kernels().rms_norm_fwd(x, None, weight, eps)
    return y, rstd.view(x.shape[:-1])


@torch.library.custom_op("unimixer::add_rms_norm_fwd", mutates_args=())
def add_rms_norm_fwd(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    y, s, rstd = _kernels().rms_norm_fwd(x, residual, weight, eps)
    return y, s, rstd.view(x.shape[:-1])


@torch.library.custom_op("unimixer::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(
    dy: Tensor, dsum: Tensor | None, s: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    return _kernels().rms_norm_bwd(dy, dsum, s, weight, rstd.reshape(-1))


rms_norm_fwd.register_fake(rms_norm_fwd_fake)
add_rms_norm_fwd.register_fake(add_rms_norm_fwd_fake)
rms_norm_bwd.register_fake(rms_norm_bwd_fake)
_rms_norm_backward, _add_rms_norm_backward = make_backwards(rms_norm_bwd)
rms_norm_fwd.register_autograd(_rms_norm_backward, setup_context=rms_norm_setup)
add_rms_norm_fwd.register_autograd(_add_rms_norm_backward, setup_context=add_rms_norm_setup)


@torch.library.custom_op("unimixer::rms_norm_residual_fwd", mutates_args=())
def rms_norm_residual_fwd(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """``(residual + RMSNorm(x), rstd)``; ``residual=None`` adds ``x`` itself, so that the
    backward adds the residual path into the norm's ``dx`` in its kernel (``dsum``) instead of
    autograd accumulating two gradients of ``x``."""
    z, rstd = _kernels().rms_norm_add_fwd(x, residual, weight, eps)
    return z, rstd.view(x.shape[:-1])


@rms_norm_residual_fwd.register_fake
def _(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return rms_norm_fwd_fake(x, weight, eps)


def _rms_norm_residual_setup(ctx, inputs, output) -> None:
    x, residual, weight, _ = inputs
    _, rstd = output
    ctx.residual_is_x = residual is None
    ctx.save_for_backward(x, weight, rstd)
    ctx.mark_non_differentiable(rstd)
    ctx.set_materialize_grads(False)


def _rms_norm_residual_backward(ctx, dz: Tensor | None, _drstd: Tensor | None):
    if dz is None:
        return None, None, None, None
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_bwd(dz, dz if ctx.residual_is_x else None, x, weight, rstd)
    return dx, (None if ctx.residual_is_x else dz), dw, None


rms_norm_residual_fwd.register_autograd(_rms_norm_residual_backward, setup_context=_rms_norm_residual_setup)


@RMS_NORM.register("triton")
def _rms_norm_triton(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    if residual is None:
        return rms_norm_fwd(x, weight, eps)[0]
    return rms_norm_residual_fwd(x, None if residual is x else residual, weight, eps)[0]


@ADD_RMS_NORM.register("triton")
def _add_rms_norm_triton(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    y, s, _ = add_rms_norm_fwd(x, residual, weight, eps)
    return y, s


# --- public functions --------------------------------------------------------------------------


def _check_norm_args(x: object, weight: object, eps: object) -> None:
    check_tensor("x", x)
    check_tensor("weight", weight, ndim=1)
    if x.dim() < 1:
        raise ValueError(f"x: expected at least 1 dimension, got shape {tuple(x.shape)}")
    check_shape("weight", weight, (x.shape[-1],), "the last dim of x")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")


def _check_residual(x: Tensor, residual: object) -> None:
    check_tensor("residual", residual)
    check_shape("residual", residual, x.shape, "the shape of x")
    if residual.dtype != x.dtype:
        raise TypeError(f"residual: expected dtype {x.dtype} (the dtype of x), got {residual.dtype}")


def rms_norm(
    x: Tensor, weight: Tensor, eps: float = 1e-6, *, residual: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dim, statistics in fp32.

    ``residual`` (same shape and dtype as ``x``): returns ``residual + RMSNorm(x)`` instead, the sum
    taken in fp32 and rounded once; the Triton backend adds it in the norm's pass (no separate add,
    no normalised intermediate), and ``residual=x`` (the same tensor) also adds the two gradients
    of ``x`` inside the backward kernel. The cuda backend refuses it (``ValueError``).

    Any leading shape. A non-contiguous ``x`` (or ``residual``) whose rows are not unit-stride is
    copied once.
    """
    _check_norm_args(x, weight, eps)
    if residual is not None:
        _check_residual(x, residual)
    check_same_device(x=x, residual=residual, weight=weight)
    return RMS_NORM.dispatch(backend, x.device)(x, weight, float(eps), residual)


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """``(RMSNorm(x + residual), x + residual)`` in one pass; the sum is in the input dtype."""
    _check_norm_args(x, weight, eps)
    _check_residual(x, residual)
    check_same_device(x=x, residual=residual, weight=weight)
    return ADD_RMS_NORM.dispatch(backend, x.device)(x, residual, weight, float(eps))
