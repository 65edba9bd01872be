"""``unimixing`` and ``unimixing_rmsnorm``: validation and backends (SPEC §2).

The Triton backend (``triton_kernels/unimixing.py``) fuses the local and the global mixing in one
kernel (the intermediate ``h`` never goes to memory; the ``N x N`` global product runs on tensor
cores in the activation dtype). ``unimixing_rmsnorm`` is, by default, two autograd nodes: the
mixing with its residual, ``s = z + UniMixing(z)`` (added to the fp32 sum in the mixing kernel's
epilogue), then the RMSNorm op on ``s``. In backward the norm's node runs first and its end frees
``s`` and ``du``; the mixing's backward then writes ``dz`` over the norm's ``ds`` (its own buffer).
That is two ``[bs, T, D]`` buffers fewer at the mixing backward (the UniMixer block, which now
calls ``unimixing_rmsnorm_pswiglu``, moves the RMSNorm into its FFN's node instead). With
``UNIMIXER_UNIMIXING_NORM=fused`` the RMSNorm runs in the mixing kernel's epilogue instead, one
autograd node (measured slower on the H200), wherever whole tokens fit its tile. Either forward
saves ``s`` (input dtype) and the fp32 ``rstd``; the backward recomputes ``h`` from the inputs (in
registers for small ``B``; for ``B > 8``, or any ``B`` with ``UNIMIXER_UNIMIXING_BACKWARD=gemm``, the
backward writes ``W_G^T dY`` and the recomputed ``h`` to scratch buffers and runs both global
products as plain GEMMs; the plain mixing nodes below save the forward's ``h`` instead where it
has one, see "Saved ``H``" below). Non-contiguous inputs are copied once.

Precision: with fp16/bf16 activations the global product rounds ``w_global`` and the ``h`` chunk
to the activation dtype before the fp32-accumulated dot, so the weight gradients carry that
dtype's precision even when the weights are fp32. fp32 activations run in full fp32 (``ieee``).

Autocast: the ops lower their arguments to the autocast dtype (``"lower"``), but the Triton backend
takes the weights uncast (``lowers``, ``_registry.py``): the global product rounds ``w_global`` as
the cast would (in the memory path's transposing pass), the per-block products use the fp32
``w_local`` as is, and the weight gradients come back in fp32 from the kernels (``dW_G`` cast in
the partial sums) rather than through autocast's casts around the op (76 us a step at
``paper-100m`` on the H200, run97, where the copy of ``dW_G`` alone took 49). Where the forward
wrote ``W_G^T`` in the activation dtype (the memory path at ``B < 16``) the mixing nodes save that
for the backward instead of ``w_global`` (the custom ops' second output): an fp32 ``w_global``,
such as a Sinkhorn output, is then not kept alive by the op, as with autocast's cast before it
(the blocks' training peaks unchanged, bench/results/2026-11-30-h200-run104).

A ``w_global`` still being made on another stream: the Triton backends of ``unimixing``,
``unimixing_rmsnorm`` and ``unimixing_rmsnorm_pswiglu`` take it pending (``reads_late``,
``_pending.py``) and wait for it just before the first kernel that reads it; on the memory path that is
after ``H = X W_B``, so the UniMixing module's per-block products (and, before the op, the autocast
casts) run while ``W_G``'s Sinkhorn does. Other backends wait before they run.

Saved ``H``: where the forward wrote ``H = X W_B`` in the natural layout for its GEMM (the memory
path at ``B >= 16``, ``saves_local``) the nodes save it too (the third output), and the backward
reads it rather than forming and writing it again (``UNIMIXER_UNIMIXING_SAVE_H=recompute`` turns
that off).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import _pending, reference
from .._checks import check_same_device, check_shape, check_tensor
from .._registry import define_op
from ._optional import as_input, as_output, placeholder
from .rms_norm import rms_norm_fwd

# "auto" on CUDA: Triton, measured faster than the best torch.compile at every preset timed, training
# 5.19x (paper-small, run107), 1.93x (paper-100m, run107), 2.98x (rankmixer-100m, run151); inference
# 3.56x, 2.13x (run107), 2.36x (run149) (bench/results/2026-11-30-h200-run1*)
UNIMIXING = define_op("unimixing", cuda_auto=("triton",), autocast="lower")
UNIMIXING_RMSNORM = define_op("unimixing_rmsnorm", autocast="lower", autocast_keep=(3,))

UNIMIXING.register("reference")(reference.unimixing)
UNIMIXING_RMSNORM.register("reference")(reference.unimixing_rmsnorm)


def _kernels():
    from ..triton_kernels import unimixing as kernels

    return kernels


# --- Triton: forward and backward custom ops -------------------------------------------------


def _waiter(w_global: Tensor):
    """The kernels' ``before_global``: the wait a ``w_global`` handed over still pending owes
    (``_pending.py``; the ops' ``reads_late``), so that the per-block products go first."""
    return functools.partial(_pending.ready, w_global)


@torch.library.custom_op("unimixer::unimixing_fwd", mutates_args=())
def unimixing_fwd(x: Tensor, w_local: Tensor, w_global: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, wg_t, h)``: ``wg_t`` is the forward GEMM's ``W_G^T`` in ``x``'s dtype, which the backward
    takes in place of ``w_global`` where the kernels say so (``saves_global_t``), else empty; ``h``
    the forward's ``H = X W_B`` where they save it (``saves_local``), else empty."""
    y, _, _, wg_t, h = _kernels().unimixing_fwd(x, w_local, w_global, before_global=_waiter(w_global))
    return y, as_output(wg_t, x), as_output(h, x)


@unimixing_fwd.register_fake
def _(x: Tensor, w_local: Tensor, w_global: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), *_saved_fakes(x, w_local)


@torch.library.custom_op("unimixer::unimixing_bwd", mutates_args=())
def unimixing_bwd(dy: Tensor, x: Tensor, w_local: Tensor, w_global: Tensor, h: Tensor, global_t: bool,
                  dwg_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dw_local, dw_global)``; with ``global_t``, ``w_global`` is the forward's ``W_G^T``;
    ``h``: the forward's ``H``, or empty (formed again); ``dw_global`` in ``dwg_dtype``."""
    return _kernels().unimixing_bwd(dy, x, w_local, w_global, global_t=global_t, dwg_dtype=dwg_dtype,
                                    h=as_input(h))


@unimixing_bwd.register_fake
def _(dy, x, w_local, w_global, h, global_t, dwg_dtype) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), w_local.new_empty(w_local.shape), w_global.new_empty(w_global.shape,
                                                                                        dtype=dwg_dtype)


def _saved_fakes(x: Tensor, w_local: Tensor) -> tuple[Tensor, Tensor]:
    """The fake ``(wg_t, h)`` outputs: shaped where the kernels save them, else empty."""
    n = w_local.shape[0]
    kernels = _kernels()
    wg_t = x.new_empty((n, n)) if kernels.saves_global_t(x, w_local) else placeholder(x)
    return wg_t, (x.new_empty(x.shape) if kernels.saves_local(x, w_local) else placeholder(x))


def _save_mixing(ctx, x: Tensor, w_local: Tensor, w_global: Tensor, wg_t: Tensor, h: Tensor) -> None:
    """Save what the mixing backward reads: ``w_global``, or the forward's ``W_G^T`` where it wrote
    one (then an fp32 ``w_global`` is not kept alive by this node: half the bytes), and the forward's
    ``H`` where it handed one over (empty otherwise)."""
    ctx.mark_non_differentiable(wg_t, h)
    ctx.set_materialize_grads(False)  # no zero-filled gradients of wg_t and h
    ctx.global_t = wg_t.numel() > 0
    ctx.dwg_dtype = w_global.dtype
    ctx.save_for_backward(x, w_local, wg_t if ctx.global_t else w_global, h)


def _unimixing_setup(ctx, inputs, output) -> None:
    x, w_local, w_global = inputs
    _save_mixing(ctx, x, w_local, w_global, output[1], output[2])


def _unimixing_backward(ctx, dy: Tensor, _dwg_t: Tensor | None, _dh: Tensor | None):
    x, w_local, w_global, h = ctx.saved_tensors
    return unimixing_bwd(dy, x, w_local, w_global, h, ctx.global_t, ctx.dwg_dtype)


unimixing_fwd.register_autograd(_unimixing_backward, setup_context=_unimixing_setup)


@torch.library.custom_op("unimixer::unimixing_residual_fwd", mutates_args=())
def unimixing_residual_fwd(x: Tensor, w_local: Tensor, w_global: Tensor,
                           grad_is_private: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(x + UniMixing(x), wg_t, h)``, the sum in fp32 (``wg_t``, ``h`` as for ``unimixing_fwd``):
    the mixing node of ``unimixing_rmsnorm`` and of ``unimixing_rmsnorm_pswiglu``. With
    ``grad_is_private`` the caller promises that the output's gradient is a buffer nobody else reads
    (true in both: the output's only reader is the next node, whose backward returns a fresh ``ds``,
    or ``ds`` over the ``s`` it owns), and the backward writes ``dx`` over it; otherwise over a copy."""
    y, _, _, wg_t, h = _kernels().unimixing_fwd(x, w_local, w_global, residual=True,
                                                before_global=_waiter(w_global))
    return y, as_output(wg_t, x), as_output(h, x)


@unimixing_residual_fwd.register_fake
def _(x: Tensor, w_local: Tensor, w_global: Tensor, grad_is_private: bool) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.shape), *_saved_fakes(x, w_local)


@torch.library.custom_op("unimixer::unimixing_residual_bwd", mutates_args=("dy",))
def unimixing_residual_bwd(dy: Tensor, x: Tensor, w_local: Tensor, w_global: Tensor, h: Tensor,
                           global_t: bool, dwg_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(dw_local, dw_global)`` of ``x + UniMixing(x)``; ``dx`` is written over ``dy`` (contiguous,
    ``x``'s dtype). ``h``, ``global_t``, ``dwg_dtype``: as for ``unimixing_bwd``."""
    return _kernels().unimixing_residual_bwd_(dy, x, w_local, w_global, global_t, dwg_dtype, as_input(h))


@unimixing_residual_bwd.register_fake
def _(dy, x, w_local, w_global, h, global_t, dwg_dtype) -> tuple[Tensor, Tensor]:
    return w_local.new_empty(w_local.shape), w_global.new_empty(w_global.shape, dtype=dwg_dtype)


def _unimixing_residual_setup(ctx, inputs, output) -> None:
    x, w_local, w_global, grad_is_private = inputs
    ctx.grad_is_private = grad_is_private
    _save_mixing(ctx, x, w_local, w_global, output[1], output[2])


def _unimixing_residual_backward(ctx, ds: Tensor, _dwg_t: Tensor | None, _dh: Tensor | None):
    x, w_local, w_global, h = ctx.saved_tensors
    if ctx.grad_is_private and ds.is_contiguous() and ds.dtype == x.dtype:
        dx = ds
    else:
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(ds)
    dwl, dwg = unimixing_residual_bwd(dx, x, w_local, w_global, h, ctx.global_t, ctx.dwg_dtype)
    return dx, dwl, dwg, None


unimixing_residual_fwd.register_autograd(
    _unimixing_residual_backward, setup_context=_unimixing_residual_setup
)


@torch.library.custom_op("unimixer::unimixing_rmsnorm_fwd", mutates_args=())
def unimixing_rmsnorm_fwd(
    z: Tensor, w_local: Tensor, w_global: Tensor, norm_weight: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(u, s, rstd)``: ``u = RMSNorm(s)``, ``s = z + UniMixing(z)``, ``rstd [bs, T]`` fp32."""
    return _kernels().unimixing_fwd(z, w_local, w_global, norm_weight, eps,
                                    before_global=_waiter(w_global))[:3]


@unimixing_rmsnorm_fwd.register_fake
def _(z: Tensor, w_local: Tensor, w_global: Tensor, norm_weight: Tensor, eps: float):
    return z.new_empty(z.shape), z.new_empty(z.shape), z.new_empty(z.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("unimixer::unimixing_rmsnorm_bwd", mutates_args=())
def unimixing_rmsnorm_bwd(
    du: Tensor, z: Tensor, s: Tensor, w_local: Tensor, w_global: Tensor, norm_weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _kernels().unimixing_rmsnorm_bwd(du, z, s, w_local, w_global, norm_weight, rstd)


@unimixing_rmsnorm_bwd.register_fake
def _(du, z, s, w_local, w_global, norm_weight, rstd):
    return (z.new_empty(z.shape), w_local.new_empty(w_local.shape), w_global.new_empty(w_global.shape),
            norm_weight.new_empty(norm_weight.shape))


def _unimixing_rmsnorm_setup(ctx, inputs, output) -> None:
    z, w_local, w_global, norm_weight, _ = inputs
    _, s, rstd = output
    ctx.save_for_backward(z, s, w_local, w_global, norm_weight, rstd)
    ctx.mark_non_differentiable(s, rstd)
    ctx.set_materialize_grads(False)  # no zero-filled [bs, T, D] gradient of s


def _unimixing_rmsnorm_backward(ctx, du: Tensor | None, _ds: Tensor | None, _drstd: Tensor | None):
    if du is None:
        return None, None, None, None, None
    z, s, w_local, w_global, norm_weight, rstd = ctx.saved_tensors
    dz, dwl, dwg, dnw = unimixing_rmsnorm_bwd(du, z, s, w_local, w_global, norm_weight, rstd)
    return dz, dwl, dwg, dnw, None


unimixing_rmsnorm_fwd.register_autograd(_unimixing_rmsnorm_backward, setup_context=_unimixing_rmsnorm_setup)


def check_triton_dtypes(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype == torch.float64:
            raise TypeError(
                f"{name}: the Triton backend takes fp32, fp16 or bf16, got {t.dtype}; use backend='reference'"
            )


# the weights (1, 2) stay uncast under autocast: the backend lowers them itself (module docstring);
# w_global may arrive still pending (reads_late): the kernels wait for it after the per-block products
@UNIMIXING.register("triton", lowers=(1, 2), reads_late=(2,))
def _unimixing_triton(x: Tensor, w_local: Tensor, w_global: Tensor) -> Tensor:
    check_triton_dtypes(x=x, w_local=w_local, w_global=w_global)
    return unimixing_fwd(x, w_local, w_global)[0]


def uses_fused_norm(z: Tensor, w_local: Tensor) -> bool:
    """Whether the Triton backend runs the RMSNorm after the mixing in the mixing kernel's epilogue
    (``UNIMIXER_UNIMIXING_NORM=fused``, where whole tokens fit its tile) rather than composed."""
    kernels = _kernels()
    return kernels.fused_norm_epilogue() and kernels.fused_norm_rows(w_local.shape[1], z.shape[-1], z.device)


@UNIMIXING_RMSNORM.register("triton", lowers=(1, 2), reads_late=(2,))
def _unimixing_rmsnorm_triton(
    z: Tensor, w_local: Tensor, w_global: Tensor, norm_weight: Tensor, eps: float
) -> Tensor:
    check_triton_dtypes(z=z, w_local=w_local, w_global=w_global, norm_weight=norm_weight)
    if uses_fused_norm(z, w_local):
        return unimixing_rmsnorm_fwd(z, w_local, w_global, norm_weight, eps)[0]
    # composed (the default, or whole tokens do not fit the fused epilogue's tile): two autograd
    # nodes, the norm's backward runs first, and its end frees s and du
    s = unimixing_residual_fwd(z, w_local, w_global, grad_is_private=True)[0]
    return rms_norm_fwd(s, norm_weight, eps)[0]


# --- public functions --------------------------------------------------------------------------


def check_mixing_args(x_name: str, x: object, w_local: object, w_global: object) -> None:
    """``x [bs, T, D]``, ``w_local [N, B, B]``, ``w_global [N, N]`` with ``N * B == T * D``."""
    check_tensor(x_name, x, ndim=3)
    check_tensor("w_local", w_local, ndim=3)
    check_tensor("w_global", w_global, ndim=2)
    _, t, d = x.shape
    n, b, b2 = w_local.shape
    if b != b2:
        raise ValueError(f"w_local: expected shape (N, B, B), got {tuple(w_local.shape)}")
    length = t * d
    if length % b != 0:
        raise ValueError(
            f"w_local: block size B={b} must divide L = T*D = {length} "
            f"(L % B = {length % b}); choose B dividing T*D"
        )
    if n != length // b:
        raise ValueError(
            f"w_local: expected shape ({length // b}, {b}, {b}) (N = T*D/B), got {tuple(w_local.shape)}"
        )
    check_shape("w_global", w_global, (n, n), "(N, N) with N = w_local.shape[0]")


def unimixing(x: Tensor, w_local: Tensor, w_global: Tensor, *, backend: str = "auto") -> Tensor:
    """``y_m = sum_n W_G[m, n] (x_n @ W_B[n])`` over the blocks of ``x [bs, T, D]``."""
    check_mixing_args("x", x, w_local, w_global)
    check_same_device(x=x, w_local=w_local, w_global=w_global)
    return UNIMIXING.dispatch(backend, x.device)(x, w_local, w_global)


def unimixing_rmsnorm(
    z: Tensor,
    w_local: Tensor,
    w_global: Tensor,
    norm_weight: Tensor,
    eps: float = 1e-6,
    *,
    backend: str = "auto",
) -> Tensor:
    """``RMSNorm(z + UniMixing(z))`` over ``D``: the mixing sub-block of the UniMixer block."""
    check_mixing_args("z", z, w_local, w_global)
    check_tensor("norm_weight", norm_weight, ndim=1)
    check_shape("norm_weight", norm_weight, (z.shape[-1],), "(D,)")
    check_same_device(z=z, w_local=w_local, w_global=w_global, norm_weight=norm_weight)
    return UNIMIXING_RMSNORM.dispatch(backend, z.device)(z, w_local, w_global, norm_weight, float(eps))
