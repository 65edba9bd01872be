"""Composite blocks (SPEC §1, §4, §6): RankMixer, TokenMixer-Large, the SiameseNorm UniMixer block
and stack, and Wukong's FMB, LCB and layer.

Pure PyTorch, fp64-capable, built only from the other references. Weights are passed in
explicitly (already Sinkhorn-normalised where the SPEC says so), so every function is a plain
function of tensors that ``torch.autograd.gradcheck`` can differentiate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ffn import pgelu_ffn, pswiglu
from .interactions import fm_interaction
from .mixing import token_mixer, unimixing_rmsnorm
from .norms import layer_norm, rms_norm

# --- RankMixer (SPEC §1) ----------------------------------------------------------------------


def rankmixer_block(
    x: Tensor,
    ln1_weight: Tensor | None,
    ln1_bias: Tensor | None,
    w1: Tensor,
    b1: Tensor | None,
    w2: Tensor,
    b2: Tensor | None,
    ln2_weight: Tensor | None,
    ln2_bias: Tensor | None,
    eps: float = 1e-6,
) -> Tensor:
    """RankMixer block, post-norm, ``H == T`` heads:

    ``S = LN(TokenMixer(X) + X)``; ``X' = LN(PFFN(S) + S)`` with the per-token GELU FFN
    ``v_t = W2_t GELU(W1_t s_t + b1_t) + b2_t``, ``w1 [T, D, kD]``, ``w2 [T, kD, D]``.
    """
    tokens = x.shape[1]
    s = layer_norm(token_mixer(x, tokens) + x, ln1_weight, ln1_bias, eps)
    return layer_norm(pgelu_ffn(s, w1, b1, w2, b2) + s, ln2_weight, ln2_bias, eps)


def token_unmixer(m: Tensor, tokens: int) -> Tensor:
    """The inverse of ``token_mixer(x, H)``: ``[bs, H, T*D/H] -> [bs, T, D]``.

    It is itself a TokenMixer with ``T`` heads: row ``t`` gathers chunk ``t`` of every mixed row.
    """
    return token_mixer(m, tokens)


def tokenmixer_large_block(
    x: Tensor,
    heads: int,
    norm_weight: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None = None,
    b_up: Tensor | None = None,
    b_down: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """TokenMixer-Large (SPEC §1), pre-RMSNorm:

    ``X' = X + Unmix_{H->T}( pSwiGLU( Mix_{T->H}( RMSNorm(X) ) ) )``.

    The SwiGLU runs per mixed token: ``w_gate, w_up [H, T*D/H, h]``, ``w_down [H, h, T*D/H]``.
    """
    tokens = x.shape[1]
    u = rms_norm(x, norm_weight, eps)
    m = token_mixer(u, heads)
    o = pswiglu(m, w_gate, w_up, w_down, b_gate, b_up, b_down)
    return x + token_unmixer(o, tokens)


# --- UniMixer block with SiameseNorm (SPEC §4) --------------------------------------------------


def unimixer_block(
    xbar: Tensor,
    ybar: Tensor,
    w_local: Tensor,
    w_global: Tensor,
    norm_y: Tensor,
    norm_mix: Tensor,
    norm_x: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None = None,
    b_up: Tensor | None = None,
    b_down: Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """One SiameseNorm UniMixer block; returns ``(Xbar', Ybar')``::

        Y~ = RMSNorm(Ybar)                    norm_y
        Z  = Xbar + Y~
        U  = RMSNorm(Z + UniMixing(Z))        norm_mix, w_local [N,B,B], w_global [N,N]
        O  = pSwiGLU(U)
        Xbar' = RMSNorm(Xbar + O)             norm_x
        Ybar' = Ybar + O
    """
    y_tilde = rms_norm(ybar, norm_y, eps)
    z = xbar + y_tilde
    o = unimixing_rmsnorm_pswiglu(z, w_local, w_global, norm_mix, w_gate, w_up, w_down, b_gate, b_up, b_down,
                                  eps)
    return rms_norm(xbar + o, norm_x, eps), ybar + o


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
) -> Tensor:
    """The block's mixing and FFN sub-layers: ``pSwiGLU(RMSNorm(z + UniMixing(z)))``."""
    u = unimixing_rmsnorm(z, w_local, w_global, norm_weight, eps)
    return pswiglu(u, w_gate, w_up, w_down, b_gate, b_up, b_down)


UNIMIXER_BLOCK_KEYS = (
    "w_local", "w_global", "norm_y", "norm_mix", "norm_x", "w_gate", "w_up", "w_down",
)


def unimixer_stack(
    x: Tensor, blocks: Sequence[Mapping[str, Tensor | None]], final_norm: Tensor, eps: float = 1e-6
) -> Tensor:
    """The SiameseNorm stack: both streams start at ``X``; output ``Xbar_M + RMSNorm(Ybar_M)``.

    Each element of ``blocks`` maps the argument names of :func:`unimixer_block` (``w_local``,
    ``w_global``, ``norm_y``, ``norm_mix``, ``norm_x``, ``w_gate``, ``w_up``, ``w_down`` and
    optionally ``b_gate``, ``b_up``, ``b_down``) to tensors.
    """
    xbar, ybar = x, x
    for p in blocks:
        xbar, ybar = unimixer_block(
            xbar, ybar, *(p[k] for k in UNIMIXER_BLOCK_KEYS),
            p.get("b_gate"), p.get("b_up"), p.get("b_down"), eps,
        )
    return xbar + rms_norm(ybar, final_norm, eps)


# --- Wukong (SPEC §6) -----------------------------------------------------------------------------


def mlp(x: Tensor, layers: Sequence[tuple[Tensor, Tensor | None]]) -> Tensor:
    """``Linear -> ReLU -> ... -> Linear`` with weights ``[in, out]`` (no activation after the last)."""
    for i, (w, b) in enumerate(layers):
        x = x @ w if b is None else x @ w + b
        if i + 1 < len(layers):
            x = F.relu(x)
    return x


def wukong_fmb(
    x: Tensor,
    y: Tensor,
    ln_weight: Tensor | None,
    ln_bias: Tensor | None,
    mlp_layers: Sequence[tuple[Tensor, Tensor | None]],
    eps: float = 1e-6,
) -> Tensor:
    """Factorization-machine block: ``reshape(MLP(LN(flatten(X (X^T Y)))), [bs, nF, d])``.

    ``x [bs, n, d]``, ``y [n, k]``; the LN is over the ``n*k`` flattened features; the last MLP
    layer has ``nF * d`` outputs.
    """
    bs, _, d = x.shape
    fm = fm_interaction(x, y).reshape(bs, -1)
    h = mlp(layer_norm(fm, ln_weight, ln_bias, eps), mlp_layers)
    return h.reshape(bs, -1, d)


def wukong_lcb(x: Tensor, w_l: Tensor) -> Tensor:
    """Linear-compression block ``W_L X``: ``w_l [nL, n]``, ``x [bs, n, d]`` -> ``[bs, nL, d]``."""
    return torch.einsum("ln,snd->sld", w_l, x)


def wukong_layer(
    x: Tensor,
    y: Tensor,
    fmb_ln_weight: Tensor | None,
    fmb_ln_bias: Tensor | None,
    mlp_layers: Sequence[tuple[Tensor, Tensor | None]],
    w_l: Tensor,
    ln_weight: Tensor | None,
    ln_bias: Tensor | None,
    w_res: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Wukong layer: ``X' = LN(concat(FMB(X), LCB(X)) + residual)``, LN over ``d`` per embedding.

    The residual is ``X`` when ``nF + nL == n`` and ``w_res`` is None, else ``w_res @ X`` with
    ``w_res [nF + nL, n]`` (a linear projection over the embedding axis, like the LCB).
    """
    out = torch.cat([wukong_fmb(x, y, fmb_ln_weight, fmb_ln_bias, mlp_layers, eps), wukong_lcb(x, w_l)], 1)
    residual = x if w_res is None else torch.einsum("mn,snd->smd", w_res, x)
    return layer_norm(out + residual, ln_weight, ln_bias, eps)
