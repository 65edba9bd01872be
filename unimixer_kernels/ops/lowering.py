"""The Triton backend's autocast cast: how the ``"lower"`` policy (``_registry``) casts an op's
floating-point arguments to the autocast dtype when the op runs on the Triton backend.

The forward is ``Tensor.to``, as for every other backend. The backward widens the gradient back to
the argument's dtype with one Triton pass (``_partials.widen``, the one-row case of the weight
gradients' partial sums) instead of torch's converting copy, which on the H200 runs at about half the
copy rate from bf16 to fp32. Under autocast every
fp32 weight of a per-token FFN takes this path: its 16-bit gradient, as large as the weight, is
widened once per training step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._registry import register_lowering_cast


def _kernels():
    from ..triton_kernels import _partials as kernels

    return kernels


@torch.library.custom_op("unimixer::lower_cast", mutates_args=())
def lower_cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)`` for a ``dtype`` other than ``x``'s (a custom op returns no alias of its input)."""
    if x.dtype == dtype:
        raise ValueError(f"lower_cast: x is already {dtype}; pass x itself instead of casting it")
    return x.to(dtype)


@lower_cast.register_fake
def _(x, dtype):
    return torch.empty_like(x, dtype=dtype)  # the strides x.to(dtype) gives


@torch.library.custom_op("unimixer::widen_cast", mutates_args=())
def widen_cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` converted to the wider ``dtype`` in one Triton pass, contiguous (a non-contiguous ``x`` is
    copied once first)."""
    return _kernels().widen(x, dtype)


@widen_cast.register_fake
def _(x, dtype):
    return x.new_empty(x.shape, dtype=dtype)


def _setup(ctx, inputs, output) -> None:
    ctx.dtype = inputs[0].dtype


def _backward(ctx, grad: Tensor):
    return widen_cast(grad, ctx.dtype), None


lower_cast.register_autograd(_backward, setup_context=_setup)
register_lowering_cast("triton", lower_cast)
