"""The ``cuda`` backend of ``rms_norm`` and ``add_rms_norm``: glue for the compiled ops.

``csrc/rms_norm.cu`` defines, in the operator library ``unimixer_C`` (``csrc/registration.cpp``):

* ``rms_norm_fwd(x, weight, eps) -> (y, rstd)``
* ``add_rms_norm_fwd(x, residual, weight, eps) -> (y, x + residual, rstd)``
* ``rms_norm_bwd(dy, dsum?, s, weight, rstd) -> (ds, dw)``

The schemas and CUDA kernels live in C++; this file registers what torch.compile and autograd
need, the fakes and backward formulas shared with the Triton backend (``ops/rms_norm.py``). The library is
loaded the first time the backend runs, so importing the package never needs it; the C++ side
names this module with ``m.set_python_module`` so torch can find the fakes on its own.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import _cuda_ext
from .rms_norm import (
    ADD_RMS_NORM,
    RMS_NORM,
    add_rms_norm_fwd_fake,
    add_rms_norm_setup,
    make_backwards,
    rms_norm_bwd_fake,
    rms_norm_fwd_fake,
    rms_norm_setup,
)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_ROW_WIDTH = 16384  # kMaxRowWidth in csrc/rms_norm.cu: a row is held in registers
_NAMES = ("rms_norm_fwd", "add_rms_norm_fwd", "rms_norm_bwd")


@functools.cache
def _register_python_parts() -> None:
    torch.library.register_fake("unimixer_C::rms_norm_fwd", rms_norm_fwd_fake)
    torch.library.register_fake("unimixer_C::add_rms_norm_fwd", add_rms_norm_fwd_fake)
    torch.library.register_fake("unimixer_C::rms_norm_bwd", rms_norm_bwd_fake)
    rms_norm_backward, add_rms_norm_backward = make_backwards(
        lambda *args: torch.ops.unimixer_C.rms_norm_bwd(*args)
    )
    torch.library.register_autograd(
        "unimixer_C::rms_norm_fwd", rms_norm_backward, setup_context=rms_norm_setup
    )
    torch.library.register_autograd(
        "unimixer_C::add_rms_norm_fwd", add_rms_norm_backward, setup_context=add_rms_norm_setup
    )


def cuda_ops():
    """``torch.ops.unimixer_C`` with the library loaded and its fakes and autograd registered."""
    return _cuda_ext.ops_with(_register_python_parts)


_cuda_ext.on_load(_register_python_parts, *_NAMES)


# --- the backend -------------------------------------------------------------------------------


def _check_cuda_dtype(x: Tensor) -> None:
    # checked here, before the library is called: its own checks are a second line of defence
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x: the cuda backend supports dtypes {SUPPORTED_DTYPES}, got {x.dtype}")
    if x.shape[-1] > MAX_ROW_WIDTH:
        raise ValueError(
            f"x: the cuda backend holds a row in registers, so the last dim must be <= {MAX_ROW_WIDTH}; "
            f"got {x.shape[-1]}. Use backend='triton' or 'reference'"
        )


@RMS_NORM.register("cuda")
def _rms_norm_cuda(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None) -> Tensor:
    _check_cuda_dtype(x)
    if residual is not None:
        # the compiled library has no post-norm residual, and an add after it would round twice
        # where the contract rounds once
        raise ValueError("residual: the cuda backend's rms_norm has no residual; use backend='triton' or "
                         "'reference', or add the residual to the result yourself")
    return cuda_ops().rms_norm_fwd(x, weight, eps)[0]


@ADD_RMS_NORM.register("cuda")
def _add_rms_norm_cuda(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    _check_cuda_dtype(x)
    y, s, _ = cuda_ops().add_rms_norm_fwd(x, residual, weight, eps)
    return y, s
