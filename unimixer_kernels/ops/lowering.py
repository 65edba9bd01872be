"""The Triton backend's autocast cast: how the ``"lower"`` policy (``_registry``) casts an op's
floating-point arguments to the autocast dtype when the op runs on the Triton backend.

One call casts all of an op call's arguments of one dtype (``lower_cast``, ``[x.to(dtype) for x in
xs]``), in one launch where they are contiguous (``_partials.cast_all``, the one-row case of the
weight gradients' partial sums). The backward widens their gradients back to that dtype in one launch
too (``widen_cast``), instead of torch's converting copy, which on the H200 runs at about half the copy
rate from bf16 to fp32. Under autocast the fp32 weights of a per-token FFN take this path: three
tensors, cast in one launch and their 16-bit gradients, as large as the weights, widened in one per
training step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._registry import register_lowering_cast, triton_interpreter_on


def _kernels():
    from ..triton_kernels import _partials as kernels

    return kernels


@torch.library.custom_op("unimixer::lower_cast", mutates_args=())
def lower_cast(xs: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """``[x.to(dtype) for x in xs]`` for tensors of one dtype other than ``dtype`` (a custom op returns
    no alias of its input)."""
    _check_one_dtype("xs", xs, dtype)
    if dtype == torch.bfloat16 and triton_interpreter_on():
        # the Triton CPU interpreter rounds fp32 to bf16 by truncation, the GPU to nearest even, as
        # x.to does: on CPU tensors the cast is torch's
        return [x.to(dtype) for x in xs]
    return _kernels().cast_all(xs, dtype)


@lower_cast.register_fake
def _(xs, dtype):
    return [torch.empty_like(x, dtype=dtype) for x in xs]  # the strides x.to(dtype) gives


@torch.library.custom_op("unimixer::widen_cast", mutates_args=())
def widen_cast(xs: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """Each ``x`` converted to the wider ``dtype``, contiguous (a non-contiguous ``x`` is copied once
    first), in one Triton launch."""
    return _kernels().cast_all(xs, dtype, contiguous=True)


@widen_cast.register_fake
def _(xs, dtype):
    return [x.new_empty(x.shape, dtype=dtype) for x in xs]


def _check_one_dtype(name: str, xs: list[Tensor], dtype: torch.dtype) -> None:
    if not xs:
        raise ValueError(f"{name}: expected at least one tensor")
    if any(x.dtype != xs[0].dtype for x in xs):
        raise ValueError(f"{name}: expected tensors of one dtype (one call per dtype), got "
                         f"{sorted({str(x.dtype) for x in xs})}")
    if xs[0].dtype == dtype:
        raise ValueError(f"lower_cast: {name} are already {dtype}; pass them themselves instead of casting")


def _setup(ctx, inputs, output) -> None:
    ctx.dtype = inputs[0][0].dtype


def _backward(ctx, grads: list[Tensor]):
    return widen_cast(grads, ctx.dtype), None


lower_cast.register_autograd(_backward, setup_context=_setup)
register_lowering_cast("triton", lower_cast)
