"""``pswiglu``: the per-token SwiGLU, validation and backends (SPEC §4).

The Triton backend is a token-major batched GEMM (``triton_kernels/pswiglu.py``): gate and up in
one pass with the ``SiLU(g) * v`` epilogue feeding the down projection, and a backward that
reduces the weight gradients deterministically. ``recompute=True`` (the default) saves nothing
but the inputs and recomputes the hidden pre-activations ``g = u W_gate + b_g`` and
``v = u W_up + b_u`` in the backward (two of the five GEMMs again); ``recompute=False`` saves
them (``2 * bs * T * h`` elements in the compute dtype, the largest activations of the op).

Tokens wider than 256 take plain per-token GEMMs and one activation pass instead; with fp16 or bf16
operands on CUDA those GEMMs are cuBLAS's strided-batched ones (``UNIMIXER_FFN_GEMM``, see
``python -m unimixer_kernels.info``), the rest Triton kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_bool, check_optional_tensor, check_same_device, check_shape, check_tensor
from .._registry import define_op
from ._optional import as_output, placeholder

PSWIGLU = define_op("pswiglu", autocast="lower")


@PSWIGLU.register("reference")
def _pswiglu_reference(u, w_gate, w_up, w_down, b_gate, b_up, b_down, recompute: bool = True) -> Tensor:
    return reference.pswiglu(u, w_gate, w_up, w_down, b_gate, b_up, b_down)


def _kernels():
    from ..triton_kernels import pswiglu as kernels

    return kernels


# --- Triton: forward and backward custom ops -------------------------------------------------


@torch.library.custom_op("unimixer::pswiglu_fwd", mutates_args=())
def pswiglu_fwd(
    u: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None,
    b_up: Tensor | None,
    b_down: Tensor | None,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(o, g, v)``: ``g``/``v`` are ``[T, bs, h]`` when ``save``, else empty."""
    o, g, v = _kernels().ffn_fwd(u, w_gate, w_up, w_down, b_gate, b_up, b_down, save)
    return o, as_output(g, u), as_output(v, u)


@pswiglu_fwd.register_fake
def _(u, w_gate, w_up, w_down, b_gate, b_up, b_down, save):
    bs, t, _ = u.shape
    h = w_gate.shape[-1]
    if save:
        dt = _kernels().compute_dtype(u, (w_gate, w_up, w_down))  # the kernels' hidden dtype
        return u.new_empty(u.shape), u.new_empty((t, bs, h), dtype=dt), u.new_empty((t, bs, h), dtype=dt)
    return u.new_empty(u.shape), placeholder(u), placeholder(u)


@torch.library.custom_op("unimixer::pswiglu_bwd", mutates_args=())
def pswiglu_bwd(
    do: Tensor,
    u: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None,
    b_up: Tensor | None,
    b_down: Tensor | None,
    g: Tensor | None,
    v: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(du, dw_gate, dw_up, dw_down, db_gate, db_up, db_down)``; the bias gradients have the
    bias dtype (the weight dtype when the bias is absent)."""
    dtypes = bias_grad_dtypes(w_gate, w_up, w_down, b_gate, b_up, b_down)
    return _kernels().ffn_bwd(do, u, w_gate, w_up, w_down, b_gate, b_up, g, v, bias_dtypes=dtypes)


def bias_grad_dtypes(w_gate, w_up, w_down, b_gate, b_up, b_down) -> tuple[torch.dtype, ...]:
    """The dtypes of ``(db_gate, db_up, db_down)``: each bias's, or its weight's when absent."""
    return tuple(b.dtype if b is not None else w.dtype
                 for b, w in ((b_gate, w_gate), (b_up, w_up), (b_down, w_down)))


def weight_grad_fakes(like: Tensor, w_gate, w_up, w_down, b_gate, b_up, b_down) -> tuple[Tensor, ...]:
    """Fake ``(dw_gate, dw_up, dw_down, db_gate, db_up, db_down)`` of a pSwiGLU backward."""
    t, d, h = w_gate.shape
    dbg, dbu, dbd = bias_grad_dtypes(w_gate, w_up, w_down, b_gate, b_up, b_down)
    return (w_gate.new_empty(w_gate.shape), w_up.new_empty(w_up.shape), w_down.new_empty(w_down.shape),
            like.new_empty((t, h), dtype=dbg), like.new_empty((t, h), dtype=dbu),
            like.new_empty((t, d), dtype=dbd))


@pswiglu_bwd.register_fake
def _(do, u, w_gate, w_up, w_down, b_gate, b_up, b_down, g, v):
    return (u.new_empty(u.shape), *weight_grad_fakes(u, w_gate, w_up, w_down, b_gate, b_up, b_down))


def _pswiglu_setup(ctx, inputs, output) -> None:
    u, w_gate, w_up, w_down, b_gate, b_up, b_down, save = inputs
    _, g, v = output
    ctx.save = save
    ctx.has_bias = (b_gate is not None, b_up is not None, b_down is not None)
    ctx.save_for_backward(u, w_gate, w_up, w_down, b_gate, b_up, b_down, g, v)
    ctx.mark_non_differentiable(g, v)
    ctx.set_materialize_grads(False)  # no zero-filled [T, bs, h] gradients of g and v


def _pswiglu_backward(ctx, do: Tensor | None, _dg: Tensor | None, _dv: Tensor | None):
    if do is None:
        return (None,) * 8
    u, w_gate, w_up, w_down, b_gate, b_up, b_down, g, v = ctx.saved_tensors
    du, dwg, dwu, dwd, dbg, dbu, dbd = pswiglu_bwd(
        do, u, w_gate, w_up, w_down, b_gate, b_up, b_down,
        g if ctx.save else None, v if ctx.save else None,
    )
    has_bg, has_bu, has_bd = ctx.has_bias
    return (du, dwg, dwu, dwd, dbg if has_bg else None, dbu if has_bu else None,
            dbd if has_bd else None, None)


pswiglu_fwd.register_autograd(_pswiglu_backward, setup_context=_pswiglu_setup)


@PSWIGLU.register("triton")
def _pswiglu_triton(u, w_gate, w_up, w_down, b_gate, b_up, b_down, recompute: bool = True) -> Tensor:
    return pswiglu_fwd(u, w_gate, w_up, w_down, b_gate, b_up, b_down, not recompute)[0]


# --- public function ---------------------------------------------------------------------------


def pswiglu(
    u: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None = None,
    b_up: Tensor | None = None,
    b_down: Tensor | None = None,
    *,
    recompute: bool = True,
    backend: str = "auto",
) -> Tensor:
    """``o_t = W_down[t] (SiLU(W_gate[t] u_t + b_g) * (W_up[t] u_t + b_u)) + b_d`` per token.

    ``u [bs, T, D]`` (any strides: the Triton kernels read it in place), ``w_gate, w_up [T, D, h]``,
    ``w_down [T, h, D]``, ``b_gate, b_up [T, h]`` and ``b_down [T, D]`` optional. Non-contiguous
    weights or biases are copied once per call by the Triton backend.

    ``recompute`` (Triton backend; default ``True``): recompute the gate and up pre-activations in
    the backward instead of saving them, trading two of the five GEMMs of the backward for
    ``2 * bs * T * h`` saved elements. ``False`` saves them. Both give the same function; the
    reference ignores the option.
    """
    check_pswiglu_args("u", u, w_gate, w_up, w_down, b_gate, b_up, b_down)
    check_bool("recompute", recompute)
    check_same_device(u=u, w_gate=w_gate, w_up=w_up, w_down=w_down, b_gate=b_gate, b_up=b_up, b_down=b_down)
    return PSWIGLU.dispatch(backend, u.device)(u, w_gate, w_up, w_down, b_gate, b_up, b_down, recompute)


def check_pswiglu_args(u_name: str, u: object, w_gate: object, w_up: object, w_down: object,
                       b_gate: object, b_up: object, b_down: object) -> None:
    """``u [bs, T, D]``, ``w_gate, w_up [T, D, h]``, ``w_down [T, h, D]``, biases ``[T, h]`` /
    ``[T, D]`` or ``None``."""
    check_tensor(u_name, u, ndim=3)
    check_tensor("w_gate", w_gate, ndim=3)
    _, t, d = u.shape
    h = w_gate.shape[-1]
    check_shape("w_gate", w_gate, (t, d, h), "(T, D, h)")
    check_tensor("w_up", w_up, ndim=3)
    check_shape("w_up", w_up, (t, d, h), "(T, D, h) like w_gate")
    check_tensor("w_down", w_down, ndim=3)
    check_shape("w_down", w_down, (t, h, d), "(T, h, D)")
    for name, bias, width in (("b_gate", b_gate, h), ("b_up", b_up, h), ("b_down", b_down, d)):
        if check_optional_tensor(name, bias, ndim=2) is not None:
            check_shape(name, bias, (t, width), f"(T, {'h' if width == h else 'D'})")
