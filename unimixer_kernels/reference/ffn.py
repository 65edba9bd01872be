"""Per-token feed-forward networks (SPEC §1, §4): a batched GEMM over tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_token_linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x [bs, T, i]``, ``w [T, i, o]`` -> ``[bs, T, o]``, in the accumulation dtype."""
    acc = _acc(x)
    y = torch.einsum("sti,tio->sto", x.to(acc), w.to(acc))
    return y if b is None else y + b.to(acc)


def pswiglu(
    u: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None = None,
    b_up: Tensor | None = None,
    b_down: Tensor | None = None,
) -> Tensor:
    """``o_t = W_down[t] (SiLU(W_gate[t] u_t + b_g) * (W_up[t] u_t + b_u)) + b_d`` per token.

    ``u [bs, T, D]``, ``w_gate, w_up [T, D, h]``, ``w_down [T, h, D]``.
    """
    g = _per_token_linear(u, w_gate, b_gate)
    v = _per_token_linear(u, w_up, b_up)
    a = F.silu(g) * v
    return _per_token_linear(a, w_down, b_down).to(u.dtype)


def pgelu_ffn(
    u: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None
) -> Tensor:
    """RankMixer's PFFN: ``v_t = W2_t GELU(W1_t u_t + b1_t) + b2_t`` with ``W1 [T, D, kD]``."""
    a = F.gelu(_per_token_linear(u, w1, b1))
    return _per_token_linear(a, w2, b2).to(u.dtype)
