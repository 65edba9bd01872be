"""Sinkhorn normalisation and the UniMixing-Lite weight construction (SPEC §2.1, §3)."""

from __future__ import annotations

import torch
from torch import Tensor


def sinkhorn(logits: Tensor, tau: float = 1.0, iters: int = 20, symmetric: bool = True) -> Tensor:
    """Unrolled log-domain Sinkhorn over the last two dims; fp32 (fp64 if given fp64).

    ``M = (M + M^T)/2`` if symmetric; ``S = M/tau``; ``iters`` times: rows then columns are
    normalised with logsumexp; returns ``exp(S)``. Columns sum to 1 exactly after the loop.
    """
    s = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    if symmetric:
        s = 0.5 * (s + s.transpose(-1, -2))
    s = s / tau
    for _ in range(iters):
        s = s - torch.logsumexp(s, dim=-1, keepdim=True)
        s = s - torch.logsumexp(s, dim=-2, keepdim=True)
    return s.exp()


def lite_local_logits(omega: Tensor, basis: Tensor) -> Tensor:
    """``sum_l omega[n, l] * Z[l]``: ``[N, b] x [b, B, B] -> [N, B, B]``."""
    return torch.einsum("nl,lij->nij", omega, basis)


def lite_local_weights(omega: Tensor, basis: Tensor, tau: float = 1.0, iters: int = 1,
                       symmetric: bool = True) -> Tensor:
    """UniMixing-Lite's local weights ``W_B[n] = SK(sum_l omega[n,l] Z[l])``."""
    return sinkhorn(lite_local_logits(omega, basis), tau, iters, symmetric)


def lite_global_weights(a_g: Tensor, b_g: Tensor, tau: float = 1.0, iters: int = 1,
                        symmetric: bool = True) -> Tensor:
    """UniMixing-Lite's global weight ``W_G = SK(A_G @ B_G)``."""
    return sinkhorn(a_g @ b_g, tau, iters, symmetric)


def lite_weights(
    omega: Tensor,
    basis: Tensor,
    a_g: Tensor,
    b_g: Tensor,
    tau: float = 1.0,
    iters: int = 1,
    symmetric: bool = True,
) -> tuple[Tensor, Tensor]:
    """UniMixing-Lite: ``W_B[n] = SK(sum_l omega[n,l] Z[l])`` and ``W_G = SK(A_G @ B_G)``."""
    return (lite_local_weights(omega, basis, tau, iters, symmetric),
            lite_global_weights(a_g, b_g, tau, iters, symmetric))
