"""``pgelu_ffn``: RankMixer's per-token GELU FFN, validation and backends (SPEC §1).

The Triton backend shares the per-token FFN kernels of ``pswiglu`` (plain form, exact GELU
epilogue); at wide tokens (``D > 256``, RankMixer's) its GEMMs with fp16 or bf16 operands on CUDA are
cuBLAS's (``UNIMIXER_FFN_GEMM``). ``recompute=True`` (default) recomputes the hidden
pre-activation ``g = u W1 + b1`` in the backward; ``recompute=False`` saves it (``bs * T * kD``
elements in the compute dtype).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_bool, check_optional_tensor, check_same_device, check_shape, check_tensor
from .._registry import define_op

PGELU_FFN = define_op("pgelu_ffn", autocast="lower")


@PGELU_FFN.register("reference")
def _pgelu_ffn_reference(u, w1, b1, w2, b2, recompute: bool = True) -> Tensor:
    return reference.pgelu_ffn(u, w1, b1, w2, b2)


def _kernels():
    from ..triton_kernels import pgelu_ffn as kernels

    return kernels


# --- Triton: forward and backward custom ops -------------------------------------------------


@torch.library.custom_op("unimixer::pgelu_ffn_fwd", mutates_args=())
def pgelu_ffn_fwd(
    u: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, save: bool
) -> tuple[Tensor, Tensor]:
    """``(o, g)``: ``g`` is ``[T, bs, kD]`` when ``save``, else empty."""
    o, g = _kernels().pgelu_ffn_fwd(u, w1, b1, w2, b2, save)
    return o, (g if g is not None else u.new_empty((0,)))


@pgelu_ffn_fwd.register_fake
def _(u, w1, b1, w2, b2, save):
    if not save:
        return u.new_empty(u.shape), u.new_empty((0,))
    bs, t, _ = u.shape
    dt = u.dtype if (w1.dtype == u.dtype and w2.dtype == u.dtype) else torch.float32
    return u.new_empty(u.shape), u.new_empty((t, bs, w1.shape[-1]), dtype=dt)


@torch.library.custom_op("unimixer::pgelu_ffn_bwd", mutates_args=())
def pgelu_ffn_bwd(
    do: Tensor, u: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, g: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(du, dw1, db1, dw2, db2)``; a bias gradient has the bias dtype (the weight's if absent)."""
    dtypes = (b1.dtype if b1 is not None else w1.dtype, b2.dtype if b2 is not None else w2.dtype)
    du, dw1, dw2, db1, db2 = _kernels().pgelu_ffn_bwd(do, u, w1, b1, w2, g, bias_dtypes=dtypes)
    return du, dw1, db1, dw2, db2


@pgelu_ffn_bwd.register_fake
def _(do, u, w1, b1, w2, b2, g):
    t, d, kd = w1.shape
    return (
        u.new_empty(u.shape),
        w1.new_empty(w1.shape),
        u.new_empty((t, kd), dtype=b1.dtype if b1 is not None else w1.dtype),
        w2.new_empty(w2.shape),
        u.new_empty((t, d), dtype=b2.dtype if b2 is not None else w2.dtype),
    )


def _pgelu_setup(ctx, inputs, output) -> None:
    u, w1, b1, w2, b2, save = inputs
    _, g = output
    ctx.save = save
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.save_for_backward(u, w1, b1, w2, b2, g)
    ctx.mark_non_differentiable(g)
    ctx.set_materialize_grads(False)  # no zero-filled [T, bs, kD] gradient of g


def _pgelu_backward(ctx, do: Tensor | None, _dg: Tensor | None):
    if do is None:
        return (None,) * 6
    u, w1, b1, w2, b2, g = ctx.saved_tensors
    du, dw1, db1, dw2, db2 = pgelu_ffn_bwd(do, u, w1, b1, w2, b2, g if ctx.save else None)
    has_b1, has_b2 = ctx.has_bias
    return du, dw1, db1 if has_b1 else None, dw2, db2 if has_b2 else None, None


pgelu_ffn_fwd.register_autograd(_pgelu_backward, setup_context=_pgelu_setup)


@PGELU_FFN.register("triton")
def _pgelu_ffn_triton(u, w1, b1, w2, b2, recompute: bool = True) -> Tensor:
    return pgelu_ffn_fwd(u, w1, b1, w2, b2, not recompute)[0]


# --- public function ---------------------------------------------------------------------------


def pgelu_ffn(
    u: Tensor,
    w1: Tensor,
    b1: Tensor | None,
    w2: Tensor,
    b2: Tensor | None = None,
    *,
    recompute: bool = True,
    backend: str = "auto",
) -> Tensor:
    """``v_t = W2[t] GELU(W1[t] u_t + b1[t]) + b2[t]`` per token (exact erf GELU).

    ``u [bs, T, D]`` (any strides), ``w1 [T, D, kD]``, ``b1 [T, kD]`` or ``None``,
    ``w2 [T, kD, D]``, ``b2 [T, D]`` or ``None``. The positional order follows
    ``reference.pgelu_ffn``. Non-contiguous weights or biases are copied once per call by the
    Triton backend.

    ``recompute`` (Triton backend; default ``True``): recompute the hidden pre-activation in the
    backward instead of saving it. ``False`` saves it. The reference ignores the option.
    """
    check_tensor("u", u, ndim=3)
    check_tensor("w1", w1, ndim=3)
    _, t, d = u.shape
    kd = w1.shape[-1]
    check_shape("w1", w1, (t, d, kd), "(T, D, kD)")
    check_tensor("w2", w2, ndim=3)
    check_shape("w2", w2, (t, kd, d), "(T, kD, D)")
    if check_optional_tensor("b1", b1, ndim=2) is not None:
        check_shape("b1", b1, (t, kd), "(T, kD)")
    if check_optional_tensor("b2", b2, ndim=2) is not None:
        check_shape("b2", b2, (t, d), "(T, D)")
    check_bool("recompute", recompute)
    check_same_device(u=u, w1=w1, b1=b1, w2=w2, b2=b2)
    return PGELU_FFN.dispatch(backend, u.device)(u, w1, b1, w2, b2, recompute)
