"""TokenMixer and UniMixing (SPEC §1, §2): the token-major flatten, blocks, local and global mixing."""

from __future__ import annotations

import torch
from torch import Tensor

from .norms import rms_norm


def token_mixer(x: Tensor, heads: int) -> Tensor:
    """RankMixer's TokenMixer: ``[bs, T, D] -> [bs, H, T*D/H]``.

    Token ``t`` is cut into ``H`` heads of width ``c = D/H``; output row ``h`` is head ``h`` of
    every token, in token order: ``out[h, t*c:(t+1)*c] = x[t, h*c:(h+1)*c]``.
    """
    bs, t, d = x.shape
    c = d // heads
    return x.reshape(bs, t, heads, c).transpose(1, 2).reshape(bs, heads, t * c)


def unimixing(x: Tensor, w_local: Tensor, w_global: Tensor) -> Tensor:
    """``y_m = sum_n W_G[m, n] * (x_n @ W_B[n])`` over blocks of the token-major flatten.

    ``x [bs, T, D]``, ``w_local [N, B, B]`` (indexed by the input block), ``w_global [N, N]``.
    Accumulates in fp32 (fp64 for fp64 input); the output has the input dtype.
    """
    bs, t, d = x.shape
    n, b, _ = w_local.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    blocks = x.reshape(bs, n, b).to(acc)
    h = torch.einsum("snb,nbc->snc", blocks, w_local.to(acc))
    y = torch.einsum("mn,snc->smc", w_global.to(acc), h)
    return y.reshape(bs, t, d).to(x.dtype)


def unimixing_rmsnorm(
    z: Tensor, w_local: Tensor, w_global: Tensor, norm_weight: Tensor, eps: float = 1e-6
) -> Tensor:
    """``RMSNorm(z + UniMixing(z))``, the residual sum kept in fp32."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    s = z.to(acc) + unimixing(z.to(acc), w_local, w_global)
    return rms_norm(s, norm_weight, eps).to(z.dtype)


def unimixing_operator(w_local: Tensor, w_global: Tensor) -> Tensor:
    """The explicit ``L x L`` operator acting on column vectors: block ``(m, n)`` is
    ``W_G[m, n] * W_B[n]^T``. For tests only: it costs ``L^2`` memory."""
    n, b, _ = w_local.shape
    blocks = w_global[:, :, None, None] * w_local.transpose(-1, -2)[None]
    return blocks.permute(0, 2, 1, 3).reshape(n * b, n * b)


def tokenmixer_global(tokens: int, heads: int, dim: int, block: int) -> Tensor:
    """TokenMixer as a UniMixing global matrix, ``K_{T,H} (x) I_{c/B}`` (SPEC §2).

    ``W_G[(h*T + t)*r + j, (t*H + h)*r + j] = 1`` with ``c = D/H``, ``r = c/B``.
    """
    c = dim // heads
    r = c // block
    n = tokens * dim // block
    w = torch.zeros(n, n)
    for h in range(heads):
        for t in range(tokens):
            for j in range(r):
                w[(h * tokens + t) * r + j, (t * heads + h) * r + j] = 1.0
    return w
