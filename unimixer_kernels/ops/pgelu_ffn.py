"""``pgelu_ffn``: RankMixer's per-token GELU FFN, validation and backends (SPEC §1).

The Triton backend shares the per-token FFN kernels of ``pswiglu`` (plain form, exact GELU
epilogue); at wide tokens (``D > 256``, RankMixer's) its GEMMs with fp16 or bf16 operands on CUDA are
cuBLAS's (``UNIMIXER_FFN_GEMM``). ``recompute=True`` (default) recomputes the hidden
pre-activation ``g = u W1 + b1`` in the backward; ``recompute=False`` saves it (``bs * T * kD``
elements in the compute dtype).

Precision and autocast: with fp16/bf16 activations the products run in the activations' dtype,
weights of another dtype (fp32 parameters) rounded to it, as autocast would round them; the weight
and bias gradients come back in the parameters' own dtypes. Under autocast the op lowers its
arguments (``"lower"``, ``_registry.py``), but the Triton backend takes the weights and biases uncast
(``lowers``): the wide path casts each weight once in the forward and computes its gradient as an fp32
GEMM output, where autocast's casts around the op would widen a 16-bit gradient in one more pass over
each weight. ``recompute`` covers the weight copies too: ``False`` saves them beside ``g`` (the autocast
cast's memory), ``True`` casts them again in the backward, each freed after its last GEMM.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_bool, check_optional_tensor, check_same_device, check_shape, check_tensor
from .._registry import define_op
from ._optional import as_input, as_output, placeholder

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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(o, g, w1c, w2c)``: with ``save``, ``g`` is ``[T, bs, kD]`` and ``w1c``, ``w2c`` the 16-bit
    copies of weights lowered on the wide path; each is empty where there is none."""
    o, *rest = _kernels().pgelu_ffn_fwd(u, w1, b1, w2, b2, save)
    return o, *(as_output(x, u) for x in rest)


@pgelu_ffn_fwd.register_fake
def _(u, w1, b1, w2, b2, save):
    if not save:
        return u.new_empty(u.shape), *(placeholder(u) for _ in range(3))
    bs, t, _ = u.shape
    cdt, *copy = _kernels().lowering(u, w1, w2)
    copies = [w.new_empty(w.shape, dtype=cdt) if c else placeholder(u) for w, c in zip((w1, w2), copy)]
    return u.new_empty(u.shape), u.new_empty((t, bs, w1.shape[-1]), dtype=cdt), *copies


@torch.library.custom_op("unimixer::pgelu_ffn_bwd", mutates_args=())
def pgelu_ffn_bwd(
    do: Tensor, u: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, g: Tensor | None,
    w1c: Tensor | None, w2c: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(du, dw1, db1, dw2, db2)``: the weight gradients in the weights' dtypes, a bias gradient in
    the bias dtype (the weight's if absent); ``w1c``, ``w2c``: the forward's weight copies or ``None``."""
    dtypes = (b1.dtype if b1 is not None else w1.dtype, b2.dtype if b2 is not None else w2.dtype)
    du, dw1, dw2, db1, db2 = _kernels().pgelu_ffn_bwd(do, u, w1, b1, w2, g, (w1c, w2c), bias_dtypes=dtypes)
    return du, dw1, db1, dw2, db2


@pgelu_ffn_bwd.register_fake
def _(do, u, w1, b1, w2, b2, g, w1c, w2c):
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
    _, g, w1c, w2c = output
    ctx.save = save
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.save_for_backward(u, w1, b1, w2, b2, g, w1c, w2c)
    ctx.mark_non_differentiable(g, w1c, w2c)
    ctx.set_materialize_grads(False)  # no zero-filled [T, bs, kD] gradient of g


def _pgelu_backward(ctx, do: Tensor | None, _dg: Tensor | None, _dw1c: Tensor | None, _dw2c: Tensor | None):
    if do is None:
        return (None,) * 6
    u, w1, b1, w2, b2, g, w1c, w2c = ctx.saved_tensors
    du, dw1, db1, dw2, db2 = pgelu_ffn_bwd(do, u, w1, b1, w2, b2, g if ctx.save else None,
                                           as_input(w1c), as_input(w2c))
    has_b1, has_b2 = ctx.has_bias
    return du, dw1, db1 if has_b1 else None, dw2, db2 if has_b2 else None, None


pgelu_ffn_fwd.register_autograd(_pgelu_backward, setup_context=_pgelu_setup)


# the weights and biases (1-4) stay uncast under autocast: the backend lowers them itself (module
# docstring), and their gradients come back in their own dtype without autocast's casts around the op
@PGELU_FFN.register("triton", lowers=(1, 2, 3, 4))
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
    """``v_t = W2[t] GELU(W1[t] u_t + b1[t]) + b2[t]`` per token (exact erf GELU; for 16-bit outputs
    the Triton kernels form the normal CDF by a polynomial within 7.5e-8 of it, far below their
    rounding).

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
