"""Attention baselines (SPEC §5, §7): multi-head self-attention and HiFormer's heterogeneous
attention, whose projections are token-specific. Pure PyTorch, fp64-capable."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _heads_attend(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """``q, k [bs, T, H*dk]``, ``v [bs, T, H*dv]`` -> ``concat_h(softmax_s(q_t.k_s/sqrt(dk)) v)``."""
    bs, t, _ = q.shape
    dk = q.shape[-1] // heads
    dv = v.shape[-1] // heads
    q = q.reshape(bs, t, heads, dk).transpose(1, 2)
    k = k.reshape(bs, t, heads, dk).transpose(1, 2)
    v = v.reshape(bs, t, heads, dv).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dk), dim=-1)
    return (att @ v).transpose(1, 2).reshape(bs, t, heads * dv)


def self_attention(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor | None = None, heads: int = 1
) -> Tensor:
    """Shared-projection attention: ``w_q, w_k [D, H*dk]``, ``w_v [D, H*dv]``, ``w_o [H*dv, D']``.

    With one head and no ``w_o`` this is the unified row
    ``softmax(X W_Q (X W_K)^T / sqrt(d)) @ (X W_V)``.
    """
    acc = _acc(x)
    xf = x.to(acc)
    q, k, v = (xf @ w.to(acc) for w in (w_q, w_k, w_v))
    o = _heads_attend(q, k, v, heads)
    if w_o is not None:
        o = o @ w_o.to(acc)
    return o.to(x.dtype)


def _per_token(x: Tensor, w: Tensor) -> Tensor:
    return torch.einsum("std,tde->ste", x, w)


def heterogeneous_attention(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor | None, heads: int
) -> Tensor:
    """HiFormer's heterogeneous attention (SPEC §7), token-specific projections:

    ``q_t = x_t Q_t``, ``k_t = x_t K_t`` with ``Q_t, K_t [D, H*dk]``; ``v_t = x_t V_t`` with
    ``V_t [D, H*dv]``; per head ``att[t, s] = softmax_s(q_t . k_s / sqrt(dk))``;
    ``o_t = concat_h(sum_s att[t, s] v_s) O_t`` with ``O_t [H*dv, D]`` (skipped if ``w_o`` is None).
    """
    acc = _acc(x)
    xf = x.to(acc)
    q, k, v = (_per_token(xf, w.to(acc)) for w in (w_q, w_k, w_v))
    o = _heads_attend(q, k, v, heads)
    if w_o is not None:
        o = _per_token(o, w_o.to(acc))
    return o.to(x.dtype)
