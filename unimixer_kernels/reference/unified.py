"""The unified framework (SPEC §5): every scaling block is ``output = reshape(G(X) @ V(X))``.

``V`` is a *local pattern*, one row per block or token (``[bs, N, w]``, or ``[N, w]`` when it is
a parameter); ``G`` is a *global pattern*, ``[N, N]`` or, when it depends on the input,
``[bs, N, N]``. Each row of the SPEC's table is a pair of the functions below;
:func:`unified_row` instantiates a row by name. Pure PyTorch, fp64-capable; the explicit ``G``
costs ``N^2`` memory, so this is the readable form, not the fast one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .mixing import tokenmixer_global
from .sinkhorn import lite_local_logits, sinkhorn

ROWS = ("tokenmixer", "unimixing", "unimixing-lite", "self-attention", "heterogeneous-attention", "fm")


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --- local patterns V(X) -------------------------------------------------------------------------


def local_identity(x: Tensor, block: int) -> Tensor:
    """``x_n``: the blocks of the token-major flatten, ``[bs, T, D] -> [bs, T*D/block, block]``."""
    return x.reshape(x.shape[0], -1, block)


def local_blockwise(x: Tensor, w_local: Tensor) -> Tensor:
    """``x_n @ W_B[n]`` with ``w_local [N, B, B]`` indexed by the input block."""
    acc = _acc(x)
    return torch.einsum("snb,nbc->snc", local_identity(x, w_local.shape[-1]).to(acc), w_local.to(acc))


def local_linear(x: Tensor, w_v: Tensor) -> Tensor:
    """``X W_V``, one row per token (``B = D``), ``w_v [D, dv]`` shared by the tokens."""
    acc = _acc(x)
    return x.to(acc) @ w_v.to(acc)


def local_token_specific(x: Tensor, w_v: Tensor) -> Tensor:
    """``x_t W_V[t]``, one row per token, ``w_v [T, D, dv]``."""
    acc = _acc(x)
    return torch.einsum("std,tde->ste", x.to(acc), w_v.to(acc))


# --- global patterns G(X) -----------------------------------------------------------------------


def global_attention(x: Tensor, w_q: Tensor, w_k: Tensor) -> Tensor:
    """``softmax(X W_Q (X W_K)^T / sqrt(dk))`` per sample: ``[bs, T, T]``."""
    acc = _acc(x)
    q, k = x.to(acc) @ w_q.to(acc), x.to(acc) @ w_k.to(acc)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


def global_heterogeneous_attention(x: Tensor, w_q: Tensor, w_k: Tensor) -> Tensor:
    """``softmax_s(Q_t x_t . K_s x_s / sqrt(dk))`` with token-specific ``w_q, w_k [T, D, dk]``."""
    q, k = local_token_specific(x, w_q), local_token_specific(x, w_k)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


def global_gram(x: Tensor) -> Tensor:
    """``X X^T`` per sample (the FM row): ``[bs, n, n]``."""
    xf = x.to(_acc(x))
    return xf @ xf.transpose(-1, -2)


def global_tokenmixer(tokens: int, heads: int, dim: int, like: Tensor) -> Tensor:
    """TokenMixer's fixed permutation over chunks of width ``D/H``: ``K_{T,H}``, ``[T*H, T*H]``."""
    return tokenmixer_global(tokens, heads, dim, dim // heads).to(device=like.device, dtype=_acc(like))


# --- the framework ---------------------------------------------------------------------------


def unified_mixing(g: Tensor, v: Tensor) -> Tensor:
    """``G @ V``: ``g [N, N]`` or ``[bs, N, N]``, ``v [bs, N, w]`` or ``[N, w]`` -> ``[bs, N, w]``."""
    acc = torch.promote_types(g.dtype, v.dtype)
    g, v = g.to(acc), v.to(acc)
    if g.dim() == 2 and v.dim() == 3:
        return torch.einsum("mn,snw->smw", g, v)
    if g.dim() == 3 and v.dim() == 2:
        return torch.einsum("smn,nw->smw", g, v)
    return g @ v


def unified_row(x: Tensor, row: str, **params) -> Tensor:
    """One row of SPEC §5's table, built as ``reshape(G(X) @ V(X))``.

    ``params`` by row:

    - ``tokenmixer``: ``heads``; output ``[bs, H, T*D/H]``;
    - ``unimixing``: ``theta_local [N, B, B]``, ``theta_global [N, N]``, ``tau``, ``iters``,
      ``symmetric`` (optional); output ``[bs, T, D]``;
    - ``unimixing-lite``: ``omega``, ``basis``, ``a_g``, ``b_g``, ``tau``, ``iters``, ``symmetric``;
    - ``self-attention``: ``w_q, w_k [D, dk]``, ``w_v [D, dv]``; output ``[bs, T, dv]``;
    - ``heterogeneous-attention``: ``w_q, w_k [T, D, dk]``, ``w_v [T, D, dv]``; ``[bs, T, dv]``;
    - ``fm``: ``y [n, k]``; output ``[bs, n, k]``.

    The output has the accumulation dtype (fp32, or fp64 for fp64 input).
    """
    bs, tokens, dim = x.shape
    if row == "tokenmixer":
        heads = params["heads"]
        v = local_identity(x, dim // heads).to(_acc(x))
        g = global_tokenmixer(tokens, heads, dim, x)
        return unified_mixing(g, v).reshape(bs, heads, tokens * dim // heads)
    if row in ("unimixing", "unimixing-lite"):
        tau, iters, sym = params["tau"], params["iters"], params.get("symmetric", True)
        if row == "unimixing":
            local_logits, global_logits = params["theta_local"], params["theta_global"]
        else:
            local_logits = lite_local_logits(params["omega"], params["basis"])
            global_logits = params["a_g"] @ params["b_g"]
        v = local_blockwise(x, sinkhorn(local_logits, tau, iters, sym))
        g = sinkhorn(global_logits, tau, iters, sym)
        return unified_mixing(g, v).reshape(bs, tokens, dim)
    if row == "self-attention":
        g = global_attention(x, params["w_q"], params["w_k"])
        return unified_mixing(g, local_linear(x, params["w_v"]))
    if row == "heterogeneous-attention":
        g = global_heterogeneous_attention(x, params["w_q"], params["w_k"])
        return unified_mixing(g, local_token_specific(x, params["w_v"]))
    if row == "fm":
        return unified_mixing(global_gram(x), params["y"].to(_acc(x)))
    raise ValueError(f"row: expected one of {ROWS}, got {row!r}")
