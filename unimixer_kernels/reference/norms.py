"""RMSNorm, add + RMSNorm and LayerNorm (SPEC §4): statistics in fp32, output in the input dtype."""

from __future__ import annotations

import torch
from torch import Tensor


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6, residual: Tensor | None = None) -> Tensor:
    """``x * rsqrt(mean(x^2, -1) + eps) * weight`` over the last dim, plus ``residual`` when given
    (added in the statistics dtype, rounded once)."""
    xf = x.to(_stat_dtype(x))
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = xf * rstd * weight.to(xf.dtype)
    if residual is not None:
        y = y + residual.to(xf.dtype)
    return y.to(x.dtype)


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """``(RMSNorm(x + residual), x + residual)``; the sum is kept in the input dtype."""
    s = x + residual
    return rms_norm(s, weight, eps), s


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dim with fp32 statistics."""
    xf = x.to(_stat_dtype(x))
    w = None if weight is None else weight.to(xf.dtype)
    b = None if bias is None else bias.to(xf.dtype)
    return torch.nn.functional.layer_norm(xf, xf.shape[-1:], w, b, eps).to(x.dtype)
