"""RankMixer's per-token GELU FFN ``v_t = W2_t GELU(W1_t u_t + b1_t) + b2_t``: launchers.

The kernels are the per-token FFN kernels of :mod:`.pswiglu` in their plain (non-gated) form: one
token-major batched GEMM with the exact GELU ``g Phi(g)`` as its epilogue (``Phi`` by ``erf`` for
fp32 and fp64 outputs, by a degree-5 tail polynomial within 7.5e-8 of it for 16-bit ones, see
``pswiglu._gelu_cdf_pdf``), fed straight into the second GEMM; the backward recomputes (or loads)
``G = U W1 + b1`` and reduces the weight gradients over samples inside one program loop
(deterministic). See that module for the grid, tiles and precision.

Weights of another dtype than 16-bit activations (fp32 parameters under autocast) are lowered here:
the products run in the activations' dtype, with the weights rounded to it (in-kernel on the fused
path; one cast per weight on the wide path), and the weight gradients come back in the weights' own
dtype straight from the GEMMs. With ``save`` the forward also returns its 16-bit weight copies for
the backward; without it the backward casts the weights again, each copy freed after its last GEMM.
"""

from __future__ import annotations

import torch

from .pswiglu import compute_dtype, ffn_bwd, ffn_fwd, fused_path


def lowering(u: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.dtype, bool, bool]:
    """``(compute dtype, copy w1, copy w2)``: whether the forward casts each weight to the compute dtype
    (on the wide path, where its dtype differs; the fused path rounds it in-kernel)."""
    cdt = compute_dtype(u, (w1, w2), lower=True)
    wide = not fused_path(u.shape[-1], cdt)
    return cdt, wide and w1.dtype != cdt, wide and w2.dtype != cdt


def _wide_copies(u: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> tuple:
    """The forward's copies of ``(w1, w2)`` in the compute dtype (:func:`lowering`), each ``None`` where
    there is none."""
    cdt, *copy = lowering(u, w1, w2)
    return tuple(w.contiguous().to(cdt) if c else None for w, c in zip((w1, w2), copy))


def pgelu_ffn_fwd(
    u: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(o [bs, T, D], G [T, bs, kD] or None, W1 copy or None, W2 copy or None)``: with ``save``, the
    hidden pre-activation and the lowered weights' copies for :func:`pgelu_ffn_bwd`."""
    w1c, w2c = _wide_copies(u, w1, w2)
    o, g, _ = ffn_fwd(u, w1 if w1c is None else w1c, None, w2 if w2c is None else w2c, b1, None, b2, save,
                      lower=True)
    return (o, g, w1c, w2c) if save else (o, g, None, None)


def pgelu_ffn_bwd(
    do: torch.Tensor, u: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
    g: torch.Tensor | None, copies: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    bias_dtypes: tuple[torch.dtype, torch.dtype] = (torch.float32, torch.float32),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(du, dw1, dw2, db1 [T, kD], db2 [T, D])``: the weight gradients in the weights' dtypes, the
    bias gradients in ``bias_dtypes``; ``copies``: the forward's weight copies (:func:`pgelu_ffn_fwd`)."""
    db1_dt, db2_dt = bias_dtypes
    du, dw1, _, dw2, db1, _, db2 = ffn_bwd(do, u, w1, None, w2, b1, None, g, None,
                                           bias_dtypes=(db1_dt, db1_dt, db2_dt), lower=True,
                                           copies=(copies[0], None, copies[1]))
    return du, dw1, dw2, db1, db2
