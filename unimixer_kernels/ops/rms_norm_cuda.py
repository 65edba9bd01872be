"""The ``cuda`` backend of ``rms_norm`` and ``add_rms_norm``: glue for the compiled ops.

``csrc/rms_norm.cu`` defines, in the operator library ``unimixer_C`` (``csrc/registration.cpp``):

* ``rms_norm_fwd(x, weight, eps) -> (y, rstd)``
* ``add_rms_norm_fwd(x, residual, weight, eps) -> (y, x + residual, rstd)``
* ``rms_norm_bwd(dy, dsum?, s, weight, rstd) -> (ds, dw)``

The schemas and CUDA kernels live in C++; this file adds what torch.compile and autograd need:
a fake implementation per op (shapes and dtypes only) and the backward formula. The library is
loaded the first time the backend runs, so importing the package never needs it; the C++ side
names this module with ``m.set_python_module`` so torch can find the fakes on its own.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import _cuda_ext
from .rms_norm import ADD_RMS_NORM, RMS_NORM

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NAMES = ("rms_norm_fwd", "add_rms_norm_fwd", "rms_norm_bwd")


# --- fake implementations (torch.compile, torch.export, meta tensors) --------------------------


def _rms_norm_fwd_fake(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _add_rms_norm_fwd_fake(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _rms_norm_bwd_fake(
    dy: Tensor, dsum: Tensor | None, s: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    return s.new_empty(s.shape), weight.new_empty(weight.shape)


# --- autograd ------------------------------------------------------------------------------------


def _rms_norm_setup(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)
    ctx.mark_non_differentiable(rstd)


def _rms_norm_backward(ctx, dy: Tensor, _drstd: Tensor | None):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = torch.ops.unimixer_C.rms_norm_bwd(dy, None, x, weight, rstd)
    return dx, dw, None


def _add_rms_norm_setup(ctx, inputs, output) -> None:
    _, _, weight, _ = inputs
    _, s, rstd = output
    ctx.save_for_backward(s, weight, rstd)
    ctx.mark_non_differentiable(rstd)


def _add_rms_norm_backward(ctx, dy: Tensor | None, dsum: Tensor | None, _drstd: Tensor | None):
    s, weight, rstd = ctx.saved_tensors
    if dy is None:  # only the sum output was used
        dy = torch.zeros_like(s)
    ds, dw = torch.ops.unimixer_C.rms_norm_bwd(dy, dsum, s, weight, rstd)
    return ds, ds, dw, None


def _library_loaded() -> bool:
    return all(hasattr(torch.ops.unimixer_C, name) for name in _NAMES)


@functools.cache
def _register_python_parts() -> None:
    torch.library.register_fake("unimixer_C::rms_norm_fwd", _rms_norm_fwd_fake)
    torch.library.register_fake("unimixer_C::add_rms_norm_fwd", _add_rms_norm_fwd_fake)
    torch.library.register_fake("unimixer_C::rms_norm_bwd", _rms_norm_bwd_fake)
    torch.library.register_autograd(
        "unimixer_C::rms_norm_fwd", _rms_norm_backward, setup_context=_rms_norm_setup
    )
    torch.library.register_autograd(
        "unimixer_C::add_rms_norm_fwd", _add_rms_norm_backward, setup_context=_add_rms_norm_setup
    )


def cuda_ops():
    """``torch.ops.unimixer_C`` with the library loaded and its fakes and autograd registered."""
    _cuda_ext.load()
    _register_python_parts()
    return torch.ops.unimixer_C


# The library was loaded before this module (torch imports it through the C++ pystub when it
# needs a fake): register now, or the ops would have no fake and no autograd.
if _library_loaded():
    _register_python_parts()


# --- the backend -------------------------------------------------------------------------------


def _check_cuda_dtype(x: Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: the cuda backend supports dtypes {SUPPORTED_DTYPES}, got {x.dtype}")


@RMS_NORM.register("cuda")
def _rms_norm_cuda(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    _check_cuda_dtype(x)
    return cuda_ops().rms_norm_fwd(x, weight, eps)[0]


@ADD_RMS_NORM.register("cuda")
def _add_rms_norm_cuda(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    _check_cuda_dtype(x)
    y, s, _ = cuda_ops().add_rms_norm_fwd(x, residual, weight, eps)
    return y, s
