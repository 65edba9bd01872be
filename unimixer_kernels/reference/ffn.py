"""Per-token feed-forward networks (SPEC §1, §4): a batched GEMM over tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ffn_compute_dtype(u: torch.dtype, weights: list[torch.dtype]) -> torch.dtype | None:
    """The per-token FFNs' precision rule: 16-bit activations ``u`` with weights each of ``u``'s
    dtype or fp32 compute in ``u``'s dtype, the weights and biases rounded to it (as autocast
    would cast them; fp32 accumulation). Returns that dtype, or ``None`` where nothing is rounded."""
    if u in (torch.float16, torch.bfloat16) and all(w in (u, torch.float32) for w in weights):
        return u
    return None


def _rounded(u: Tensor, *params: Tensor | None) -> list[Tensor | None]:
    dt = ffn_compute_dtype(u.dtype, [p.dtype for p in params if p is not None])
    return [p if p is None or dt is None else p.to(dt) for p in params]


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

    ``u [bs, T, D]``, ``w_gate, w_up [T, D, h]``, ``w_down [T, h, D]``. 16-bit ``u`` rounds fp32
    weights and biases to its dtype first (:func:`ffn_compute_dtype`).
    """
    w_gate, w_up, w_down, b_gate, b_up, b_down = _rounded(u, w_gate, w_up, w_down, b_gate, b_up, b_down)
    g = _per_token_linear(u, w_gate, b_gate)
    v = _per_token_linear(u, w_up, b_up)
    a = F.silu(g) * v
    return _per_token_linear(a, w_down, b_down).to(u.dtype)


def pgelu_ffn(
    u: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None
) -> Tensor:
    """RankMixer's PFFN: ``v_t = W2_t GELU(W1_t u_t + b1_t) + b2_t`` with ``W1 [T, D, kD]``; 16-bit
    ``u`` rounds fp32 weights and biases to its dtype first (:func:`ffn_compute_dtype`)."""
    w1, b1, w2, b2 = _rounded(u, w1, b1, w2, b2)
    a = F.gelu(_per_token_linear(u, w1, b1))
    return _per_token_linear(a, w2, b2).to(u.dtype)
