"""Feature interactions (SPEC §6): Wukong's optimised FM and DLRM's dot interaction."""

from __future__ import annotations

import torch
from torch import Tensor


def fm_interaction(x: Tensor, y: Tensor) -> Tensor:
    """``X (X^T Y)``: ``[bs, n, d]``, ``[n, k]`` -> ``[bs, n, k]``, with ``X^T Y`` first (O(nkd))."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    xty = torch.einsum("snd,nk->sdk", xf, y.to(acc))
    return torch.einsum("snd,sdk->snk", xf, xty).to(x.dtype)


def dot_interaction(x: Tensor, order: str = "triu") -> Tensor:
    """Pairwise dots of the ``n`` features of each sample.

    ``order="triu"`` (torchrec): pairs ``i < j`` in row-major order, ``[bs, n(n-1)/2]``.
    ``order="tril"`` (NVIDIA/HugeCTR): pairs ``i > j`` in row-major order, then one zero of
    padding, ``[bs, n(n-1)/2 + 1]``.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = x.shape[1]
    z = torch.einsum("sid,sjd->sij", x.to(acc), x.to(acc))
    if order == "triu":
        i, j = torch.triu_indices(n, n, offset=1, device=x.device)
        return z[:, i, j].to(x.dtype)
    i, j = torch.tril_indices(n, n, offset=-1, device=x.device)
    pairs = z[:, i, j]
    return torch.nn.functional.pad(pairs, (0, 1)).to(x.dtype)
