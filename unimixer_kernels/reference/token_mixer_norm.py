"""``Norm(TokenMixer(x) + x)`` and ``Norm(x + r)``: RankMixer's two post-norm sums (SPEC §1), composed from
the references."""

from __future__ import annotations

import torch
from torch import Tensor

from .mixing import token_mixer
from .norms import layer_norm, rms_norm


def token_mixer_residual_norm(
    x: Tensor,
    heads: int,
    weight: Tensor,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    norm: str = "layer",
) -> Tensor:
    """``LayerNorm(TokenMixer(x) + x)`` (or RMSNorm with ``norm="rms"``); needs ``heads == T``.

    The residual sum is kept in fp32 (fp64 for fp64 input), the statistics too; the output has
    the input dtype.
    """
    return _norm_of_sum(token_mixer(x, heads), x, weight, bias, eps, norm)


def _norm_of_sum(a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None, eps: float, norm: str) -> Tensor:
    """``Norm(a + b)`` with the sum and statistics in fp32 (fp64 for fp64 ``b``), in ``b``'s dtype."""
    acc = torch.float64 if b.dtype == torch.float64 else torch.float32
    s = a.to(acc) + b.to(acc)
    y = rms_norm(s, weight, eps) if norm == "rms" else layer_norm(s, weight, bias, eps)
    return y.to(b.dtype)


def residual_norm(
    x: Tensor,
    residual: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    eps: float = 1e-6,
    norm: str = "layer",
) -> Tensor:
    """``LayerNorm(x + residual)`` (or RMSNorm with ``norm="rms"``): RankMixer's ``LN(PFFN(S) + S)``.

    The sum is kept in fp32 (fp64 for fp64 input), the statistics too; the output has ``x``'s dtype.
    """
    return _norm_of_sum(residual, x, weight, bias, eps, norm)
