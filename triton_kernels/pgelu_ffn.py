"""RankMixer's per-token GELU FFN ``v_t = W2_t GELU(W1_t u_t + b1_t) + b2_t``: launchers.

The kernels are the per-token FFN kernels of :mod:`.pswiglu` in their plain (non-gated) form:
one token-major batched GEMM with the exact (erf) GELU as its epilogue, fed straight into the
second GEMM; the backward recomputes (or loads) ``G = U W1 + b1`` and reduces the weight
gradients over samples inside one program loop (deterministic). See that module for the grid,
tiles and precision.
"""

from __future__ import annotations

import torch

from .pswiglu import ffn_bwd, ffn_fwd


def pgelu_ffn_fwd(
    u: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(o [bs, T, D], G [T, bs, kD] or None)``."""
    o, g, _ = ffn_fwd(u, w1, None, w2, b1, None, b2, save)
    return o, g


def pgelu_ffn_bwd(
    do: torch.Tensor, u: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
    g: torch.Tensor | None,
    bias_dtypes: tuple[torch.dtype, torch.dtype] = (torch.float32, torch.float32),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(du, dw1, dw2, db1 [T, kD], db2 [T, D])``, the bias gradients in ``bias_dtypes``."""
    db1_dt, db2_dt = bias_dtypes
    du, dw1, _, dw2, db1, _, db2 = ffn_bwd(do, u, w1, None, w2, b1, None, g, None,
                                           bias_dtypes=(db1_dt, db1_dt, db2_dt))
    return du, dw1, dw2, db1, db2
