"""``token_mixer``, ``token_mixer_residual_norm`` and ``residual_norm``: validation and backends
(SPEC §1).

Triton backends (``triton_kernels/token_mixer.py``): TokenMixer is one gather kernel in both
directions (its backward is the inverse permutation); ``Norm(TokenMixer(x) + x)`` and
``Norm(x + r)`` are one pass each way that never stores the mixed tensor or the sum, saving only
``mean``/``rstd`` per row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_divides, check_optional_tensor, check_same_device, check_shape, check_tensor
from .._registry import define_op
from ..reference.token_mixer_norm import residual_norm as _residual_norm_reference
from ..reference.token_mixer_norm import token_mixer_residual_norm as _token_mixer_residual_norm_reference

TOKEN_MIXER = define_op("token_mixer")
TOKEN_MIXER.register("reference")(reference.token_mixer)

# "auto" on CUDA: Triton, measured correct (the GPU tests) and faster than the best torch.compile at
# every preset timed, fwd+bwd bf16 on the H200: 4.38x at rankmixer-100m, 4.01x at rankmixer-1b
# (bench/results/2026-11-30-h200-run134, run142; at rankmixer-1b 1.73-2.94x before its backward's
# wide-sample settings, run134, run138; 3.74x at rankmixer-100m in run39)
TOKEN_MIXER_RESIDUAL_NORM = define_op("token_mixer_residual_norm", cuda_auto=("triton",))
TOKEN_MIXER_RESIDUAL_NORM.register("reference")(_token_mixer_residual_norm_reference)

# "auto" on CUDA: Triton, as above: 6.45x at rankmixer-100m (run134; 7.13x in run39), 3.52x at
# rankmixer-1b (run138)
RESIDUAL_NORM = define_op("residual_norm", cuda_auto=("triton",))
RESIDUAL_NORM.register("reference")(_residual_norm_reference)

NORMS = ("layer", "rms")


def _kernels():
    from ..triton_kernels import token_mixer as kernels

    return kernels


# --- Triton: TokenMixer forward and backward custom ops --------------------------------------


@torch.library.custom_op("unimixer::token_mixer_fwd", mutates_args=())
def token_mixer_fwd(x: Tensor, heads: int) -> Tensor:
    return _kernels().token_mix(x, heads, x.shape[-1] // heads)


@token_mixer_fwd.register_fake
def _(x: Tensor, heads: int) -> Tensor:
    bs, t, d = x.shape
    return x.new_empty((bs, heads, t * (d // heads)))


@torch.library.custom_op("unimixer::token_mixer_bwd", mutates_args=())
def token_mixer_bwd(dout: Tensor, tokens: int) -> Tensor:
    """The inverse permutation: ``dx [bs, T, D]`` from ``dout [bs, H, T*D/H]``."""
    return _kernels().token_mix(dout, tokens, dout.shape[-1] // tokens)


@token_mixer_bwd.register_fake
def _(dout: Tensor, tokens: int) -> Tensor:
    bs, heads, width = dout.shape
    return dout.new_empty((bs, tokens, heads * (width // tokens)))


def _token_mixer_setup(ctx, inputs, output) -> None:
    x, _ = inputs
    ctx.tokens = x.shape[1]


def _token_mixer_backward(ctx, dout: Tensor):
    return token_mixer_bwd(dout, ctx.tokens), None


token_mixer_fwd.register_autograd(_token_mixer_backward, setup_context=_token_mixer_setup)


@TOKEN_MIXER.register("triton")
def _token_mixer_triton(x: Tensor, heads: int) -> Tensor:
    return token_mixer_fwd(x, heads)


# --- Triton: Norm(TokenMixer(x) + x) forward and backward custom ops -------------------------


def _with_stats(x: Tensor, y: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)`` with the per-row statistics shaped ``[bs, T]``."""
    return y, mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


def _norm_fwd_fake(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.shape[:-1]
    return (x.new_empty(x.shape), x.new_empty(stats, dtype=torch.float32),
            x.new_empty(stats, dtype=torch.float32))


@torch.library.custom_op("unimixer::token_mixer_residual_norm_fwd", mutates_args=())
def token_mixer_residual_norm_fwd(
    x: Tensor, heads: int, weight: Tensor, bias: Tensor | None, eps: float, rms: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)``: ``mean``/``rstd`` are fp32 ``[bs, T]`` (``mean`` is 0 for RMSNorm)."""
    return _with_stats(x, *_kernels().tm_norm_fwd(x, heads, weight, bias, eps, rms))


@token_mixer_residual_norm_fwd.register_fake
def _(x, heads, weight, bias, eps, rms):
    return _norm_fwd_fake(x)


@torch.library.custom_op("unimixer::token_mixer_residual_norm_bwd", mutates_args=())
def token_mixer_residual_norm_bwd(
    dy: Tensor, x: Tensor, heads: int, weight: Tensor, mean: Tensor, rstd: Tensor, rms: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)``."""
    return _kernels().tm_norm_bwd(dy, x, heads, weight, mean.reshape(-1), rstd.reshape(-1), rms)


@token_mixer_residual_norm_bwd.register_fake
def _(dy, x, heads, weight, mean, rstd, rms):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _tm_norm_setup(ctx, inputs, output) -> None:
    x, heads, weight, bias, _, rms = inputs
    _, mean, rstd = output
    ctx.heads, ctx.rms = heads, rms
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _tm_norm_backward(ctx, dy: Tensor, _dmean: Tensor | None, _drstd: Tensor | None):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = token_mixer_residual_norm_bwd(dy, x, ctx.heads, weight, mean, rstd, ctx.rms)
    db = None if ctx.bias_dtype is None else db.to(ctx.bias_dtype)
    return dx, None, dw, db, None, None


token_mixer_residual_norm_fwd.register_autograd(_tm_norm_backward, setup_context=_tm_norm_setup)


@TOKEN_MIXER_RESIDUAL_NORM.register("triton")
def _token_mixer_residual_norm_triton(
    x: Tensor, heads: int, weight: Tensor, bias: Tensor | None, eps: float, norm: str
) -> Tensor:
    return token_mixer_residual_norm_fwd(x, heads, weight, bias, eps, norm == "rms")[0]


# --- Triton: Norm(x + r) forward and backward custom ops ---------------------------------------


@torch.library.custom_op("unimixer::residual_norm_fwd", mutates_args=())
def residual_norm_fwd(
    x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None, eps: float, rms: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """As :func:`token_mixer_residual_norm_fwd`."""
    return _with_stats(x, *_kernels().residual_norm_fwd(x, residual, weight, bias, eps, rms))


@residual_norm_fwd.register_fake
def _(x, residual, weight, bias, eps, rms):
    return _norm_fwd_fake(x)


@torch.library.custom_op("unimixer::residual_norm_bwd", mutates_args=())
def residual_norm_bwd(
    dy: Tensor, x: Tensor, residual: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, rms: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ds, dweight, dbias)``: ``ds`` is the gradient of ``x`` and of ``residual``, in the wider of
    their dtypes."""
    return _kernels().residual_norm_bwd(dy, x, residual, weight, mean.reshape(-1), rstd.reshape(-1), rms)


@residual_norm_bwd.register_fake
def _(dy, x, residual, weight, mean, rstd, rms):
    ds = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))
    return ds, weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _residual_norm_setup(ctx, inputs, output) -> None:
    x, residual, weight, bias, _, rms = inputs
    _, mean, rstd = output
    ctx.rms = rms
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(x, residual, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _residual_norm_backward(ctx, dy: Tensor, _dmean: Tensor | None, _drstd: Tensor | None):
    x, residual, weight, mean, rstd = ctx.saved_tensors
    ds, dw, db = residual_norm_bwd(dy, x, residual, weight, mean, rstd, ctx.rms)
    db = None if ctx.bias_dtype is None else db.to(ctx.bias_dtype)
    return ds.to(x.dtype), ds.to(residual.dtype), dw, db, None, None


residual_norm_fwd.register_autograd(_residual_norm_backward, setup_context=_residual_norm_setup)


@RESIDUAL_NORM.register("triton")
def _residual_norm_triton(
    x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None, eps: float, norm: str
) -> Tensor:
    return residual_norm_fwd(x, residual, weight, bias, eps, norm == "rms")[0]


# --- public functions --------------------------------------------------------------------------


def _check_heads(x: Tensor, heads: object) -> None:
    if isinstance(heads, bool) or not isinstance(heads, int):
        raise TypeError(f"heads: expected an int, got {heads!r}")
    check_divides("heads", heads, x.shape[-1], "D")


def token_mixer(x: Tensor, heads: int, *, backend: str = "auto") -> Tensor:
    """RankMixer's rule-based mixing: ``[bs, T, D] -> [bs, H, T*D/H]`` (a permutation).

    ``out[h, t*c:(t+1)*c] = x[t, h*c:(h+1)*c]`` with ``c = D/H``. ``x`` may have any strides
    (the Triton kernel gathers through them); the output is contiguous.
    """
    check_tensor("x", x, ndim=3)
    _check_heads(x, heads)
    return TOKEN_MIXER.dispatch(backend, x.device)(x, heads)


def token_mixer_residual_norm(
    x: Tensor,
    heads: int,
    weight: Tensor,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    norm: str = "layer",
    *,
    backend: str = "auto",
) -> Tensor:
    """``Norm(TokenMixer(x) + x)`` over ``D``: RankMixer's ``S = LN(TokenMixer(X) + X)``.

    ``x [bs, T, D]`` (any strides), ``heads`` must equal ``T`` (so the mixed tensor has the shape
    of ``x``) and divide ``D``. ``norm="layer"`` (default): LayerNorm with ``weight [D]`` and an
    optional ``bias [D]``; ``norm="rms"``: RMSNorm with ``weight`` and no bias. The residual sum
    and the statistics are fp32; the output has the dtype of ``x``.
    """
    check_tensor("x", x, ndim=3)
    _check_heads(x, heads)
    if heads != x.shape[1]:
        raise ValueError(
            f"heads: expected {x.shape[1]} (= T, so TokenMixer(x) + x is defined), got {heads}"
        )
    _check_norm_args(x, weight, bias, eps, norm)
    check_same_device(x=x, weight=weight, bias=bias)
    return TOKEN_MIXER_RESIDUAL_NORM.dispatch(backend, x.device)(x, heads, weight, bias, float(eps), norm)


def _check_norm_args(x: Tensor, weight: Tensor, bias: Tensor | None, eps: object, norm: object) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    check_tensor("weight", weight, ndim=1)
    check_shape("weight", weight, (x.shape[-1],), "the last dim of x")
    if check_optional_tensor("bias", bias, ndim=1) is not None:
        if norm == "rms":
            raise ValueError("bias: expected None with norm='rms' (RMSNorm has no bias), got a tensor")
        check_shape("bias", bias, (x.shape[-1],), "the last dim of x")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")


def residual_norm(
    x: Tensor,
    residual: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    norm: str = "layer",
    *,
    backend: str = "auto",
) -> Tensor:
    """``Norm(x + residual)`` over ``D``: RankMixer's ``X' = LN(PFFN(S) + S)``.

    ``x, residual [bs, T, D]`` (same shape, any strides, floating dtypes that may differ).
    ``norm="layer"`` (default): LayerNorm with ``weight [D]`` and an optional ``bias [D]``;
    ``norm="rms"``: RMSNorm with ``weight`` and no bias. The sum and the statistics are fp32 (the
    sum is never stored); the output has the dtype of ``x``.
    """
    check_tensor("x", x, ndim=3)
    check_tensor("residual", residual, ndim=3)
    check_shape("residual", residual, tuple(x.shape), "the shape of x")
    _check_norm_args(x, weight, bias, eps, norm)
    check_same_device(x=x, residual=residual, weight=weight, bias=bias)
    return RESIDUAL_NORM.dispatch(backend, x.device)(x, residual, weight, bias, float(eps), norm)
