"""``unimixing_rmsnorm_pswiglu``: the UniMixer block's mixing and FFN sub-layers (SPEC §4),
``o = pSwiGLU(RMSNorm(z + UniMixing(z)))``, validation and backends.

It is :func:`.unimixing.unimixing_rmsnorm` followed by :func:`.pswiglu.pswiglu`, with the op
boundary moved for the training step's memory. The Triton backend is two autograd nodes:

1. ``s = z + UniMixing(z)``, the mixing with its residual (``unimixer::unimixing_residual_fwd``,
   as in ``unimixing_rmsnorm``);
2. ``o = pSwiGLU(RMSNorm(s))`` (``unimixer::rms_norm_pswiglu_fwd``). Its forward runs the norm
   into a temporary ``u`` and the FFN on it, and saves ``s`` and the norm's ``[bs, T]`` fp32
   ``rstd``, not ``u``. Its backward runs the FFN backward in token passes
   (``triton_kernels/pswiglu.py``, ``triton_kernels/rms_norm.py``'s ``TokenPassNorm``), each
   forming its tokens' ``u`` again (the forward's bits) and turning its ``du`` into ``ds``: on
   the fused path (``D`` up to 256) inside the FFN's activation-gradient kernel, from ``rstd``,
   with ``du`` in fp32 registers; on the wide-token path by the norm's own kernels around the
   pass's GEMMs. ``ds`` is written over ``s``: this op made ``s`` and nothing else reads it. So
   ``u`` is never saved and ``du`` never held whole: two ``[bs, T, D]`` buffers fewer at the FFN
   backward, the UniMixer block's peak. The mixing's backward then writes ``dz`` over ``ds`` in
   turn.

Because the backward overwrites the saved ``s``, a second backward through the same graph
(``retain_graph=True``) raises autograd's in-place modification error instead of giving wrong
gradients. With ``UNIMIXER_UNIMIXING_NORM=fused`` the composite runs ``unimixing_rmsnorm``'s fused
node and then ``pswiglu``. Values and the FFN's gradients are those of the two ops run one after
the other, bit for bit, and so is ``ds`` on the wide-token path; the norm weight's gradient sums its
partials in another order, and on the fused path ``ds`` comes from the FFN kernel's fp32 ``du`` (the
two ops round ``du`` to the activation dtype first), so it differs from theirs by roundings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_same_device, check_shape, check_tensor
from .._registry import define_op
from .pswiglu import bias_grad_dtypes, check_pswiglu_args, pswiglu_fwd, weight_grad_fakes
from .unimixing import (
    check_mixing_args,
    check_triton_dtypes,
    unimixing_residual_fwd,
    unimixing_rmsnorm_fwd,
    uses_fused_norm,
)

UNIMIXING_RMSNORM_PSWIGLU = define_op("unimixing_rmsnorm_pswiglu", autocast="lower", autocast_keep=(3,))

UNIMIXING_RMSNORM_PSWIGLU.register("reference")(reference.unimixing_rmsnorm_pswiglu)


def _kernels():
    from ..triton_kernels import pswiglu as kernels

    return kernels


# --- Triton: the pre-norm pSwiGLU node, forward and backward custom ops ---------------------------


@torch.library.custom_op("unimixer::rms_norm_pswiglu_fwd", mutates_args=())
def rms_norm_pswiglu_fwd(
    s: Tensor,
    norm_weight: Tensor,
    eps: float,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None,
    b_up: Tensor | None,
    b_down: Tensor | None,
    input_is_private: bool,
) -> tuple[Tensor, Tensor]:
    """``(pSwiGLU(RMSNorm(s)), rstd)``, ``rstd`` the norm's ``[bs, T]`` fp32 statistics for the
    backward. With ``input_is_private`` the caller promises that nothing reads ``s`` after this op
    (true in the composite: ``s`` is its own intermediate), and the backward writes ``ds`` over it;
    otherwise over a copy."""
    return _kernels().rms_norm_ffn_fwd(s, norm_weight, eps, w_gate, w_up, w_down, b_gate, b_up, b_down)


@rms_norm_pswiglu_fwd.register_fake
def _(s, norm_weight, eps, w_gate, w_up, w_down, b_gate, b_up, b_down, input_is_private):
    return s.new_empty(s.shape), s.new_empty(s.shape[:2], dtype=torch.float32)


@torch.library.custom_op("unimixer::rms_norm_pswiglu_bwd", mutates_args=("s",))
def rms_norm_pswiglu_bwd(
    do: Tensor,
    s: Tensor,
    rstd: Tensor,
    norm_weight: Tensor,
    eps: float,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None,
    b_up: Tensor | None,
    b_down: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dnorm_weight, dw_gate, dw_up, dw_down, db_gate, db_up, db_down)``; ``ds`` is written over
    ``s`` (contiguous). The bias gradients have the bias dtype (the weight dtype when absent)."""
    if not s.is_contiguous():
        raise ValueError("s: expected a contiguous tensor (ds is written over it); pass s.contiguous()")
    dtypes = bias_grad_dtypes(w_gate, w_up, w_down, b_gate, b_up, b_down)
    return _kernels().rms_norm_ffn_bwd_(do, s, rstd, norm_weight, eps, w_gate, w_up, w_down, b_gate, b_up,
                                        bias_dtypes=dtypes)


@rms_norm_pswiglu_bwd.register_fake
def _(do, s, rstd, norm_weight, eps, w_gate, w_up, w_down, b_gate, b_up, b_down):
    return (norm_weight.new_empty(norm_weight.shape),
            *weight_grad_fakes(s, w_gate, w_up, w_down, b_gate, b_up, b_down))


def _rms_norm_pswiglu_setup(ctx, inputs, output) -> None:
    s, norm_weight, eps, w_gate, w_up, w_down, b_gate, b_up, b_down, input_is_private = inputs
    ctx.eps, ctx.input_is_private = eps, input_is_private
    ctx.has_bias = (b_gate is not None, b_up is not None, b_down is not None)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # rstd's gradient stays None, no zeros filled for it
    ctx.save_for_backward(s, output[1], norm_weight, w_gate, w_up, w_down, b_gate, b_up, b_down)


def _rms_norm_pswiglu_backward(ctx, do: Tensor, _drstd: Tensor | None):
    s, rstd, norm_weight, w_gate, w_up, w_down, b_gate, b_up, b_down = ctx.saved_tensors
    ds = s if ctx.input_is_private and s.is_contiguous() else s.clone(memory_format=torch.contiguous_format)
    dnw, dwg, dwu, dwd, dbg, dbu, dbd = rms_norm_pswiglu_bwd(
        do, ds, rstd, norm_weight, ctx.eps, w_gate, w_up, w_down, b_gate, b_up, b_down)
    has_bg, has_bu, has_bd = ctx.has_bias
    return (ds, dnw, None, dwg, dwu, dwd, dbg if has_bg else None, dbu if has_bu else None,
            dbd if has_bd else None, None)


rms_norm_pswiglu_fwd.register_autograd(_rms_norm_pswiglu_backward, setup_context=_rms_norm_pswiglu_setup)


# the mixing weights (1, 2) stay uncast under autocast, and w_global may arrive still pending, as for
# unimixing (ops/unimixing.py): the mixing's custom ops wait for it after the per-block products
@UNIMIXING_RMSNORM_PSWIGLU.register("triton", lowers=(1, 2), reads_late=(2,))
def _unimixing_rmsnorm_pswiglu_triton(z, w_local, w_global, norm_weight, w_gate, w_up, w_down,
                                      b_gate, b_up, b_down, eps: float) -> Tensor:
    check_triton_dtypes(z=z, w_local=w_local, w_global=w_global, norm_weight=norm_weight, w_gate=w_gate,
                        w_up=w_up, w_down=w_down)
    if uses_fused_norm(z, w_local):
        u = unimixing_rmsnorm_fwd(z, w_local, w_global, norm_weight, eps)[0]
        return pswiglu_fwd(u, w_gate, w_up, w_down, b_gate, b_up, b_down, False)[0]
    s = unimixing_residual_fwd(z, w_local, w_global, grad_is_private=True)[0]
    return rms_norm_pswiglu_fwd(s, norm_weight, eps, w_gate, w_up, w_down, b_gate, b_up, b_down,
                                input_is_private=True)[0]


# --- public function ---------------------------------------------------------------------------


def unimixing_rmsnorm_pswiglu(
    z: Tensor,
    w_local: Tensor,
    w_global: Tensor,
    norm_weight: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None = None,
    b_up: Tensor | None = None,
    b_down: Tensor | None = None,
    eps: float = 1e-6,
    *,
    backend: str = "auto",
) -> Tensor:
    """``pSwiGLU(RMSNorm(z + UniMixing(z)))``: ``unimixing_rmsnorm(z, w_local, w_global,
    norm_weight, eps)`` then ``pswiglu(u, w_gate, w_up, w_down, b_gate, b_up, b_down)``, with the
    shapes of those two ops, in one call that holds two ``[bs, T, D]`` buffers fewer in training
    (module docstring)."""
    check_mixing_args("z", z, w_local, w_global)
    check_tensor("norm_weight", norm_weight, ndim=1)
    check_shape("norm_weight", norm_weight, (z.shape[-1],), "(D,)")
    check_pswiglu_args("z", z, w_gate, w_up, w_down, b_gate, b_up, b_down)
    check_same_device(z=z, w_local=w_local, w_global=w_global, norm_weight=norm_weight, w_gate=w_gate,
                      w_up=w_up, w_down=w_down, b_gate=b_gate, b_up=b_up, b_down=b_down)
    return UNIMIXING_RMSNORM_PSWIGLU.dispatch(backend, z.device)(
        z, w_local, w_global, norm_weight, w_gate, w_up, w_down, b_gate, b_up, b_down, float(eps))
