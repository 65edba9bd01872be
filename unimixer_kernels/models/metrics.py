"""Ranking metrics (SPEC §11): AUC, UAUC and log loss, in plain torch (no sklearn)."""

from __future__ import annotations

import torch
from torch import Tensor


def _as_1d(name: str, t: object) -> Tensor:
    t = torch.as_tensor(t)
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-d tensor, got shape {tuple(t.shape)}")
    return t.detach().cpu()


def average_ranks(scores: Tensor) -> Tensor:
    """1-based ranks of ``scores`` in ascending order; tied scores share their average rank."""
    s = _as_1d("scores", scores).double()
    order = torch.argsort(s, stable=True)
    _, inverse, counts = torch.unique(s[order], return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()          # rank of the last member of each tie group
    avg = last - (counts.double() - 1.0) / 2.0
    ranks = torch.empty_like(s)
    ranks[order] = avg[inverse]
    return ranks


def auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve: the probability that a random positive outranks a random
    negative, ties counted half (the Mann-Whitney statistic). Raises if a class is missing."""
    y = _as_1d("labels", labels).double()
    s = _as_1d("scores", scores)
    if s.shape != y.shape:
        raise ValueError(f"labels: expected shape {tuple(s.shape)} (that of scores), got {tuple(y.shape)}")
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"labels: expected both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def uauc(scores: Tensor, labels: Tensor, users: Tensor) -> float:
    """User AUC: the mean of per-user AUC over the users that have both labels (unweighted)."""
    s, y, u = _as_1d("scores", scores), _as_1d("labels", labels), _as_1d("users", users)
    if not (s.shape == y.shape == u.shape):
        raise ValueError(
            f"users: expected scores, labels and users of one shape, got {tuple(s.shape)}, "
            f"{tuple(y.shape)}, {tuple(u.shape)}"
        )
    values = []
    for user in torch.unique(u):
        mask = u == user
        yu = y[mask] > 0.5
        if yu.any() and not yu.all():
            values.append(auc(s[mask], y[mask]))
    if not values:
        raise ValueError("labels: no user has both a positive and a negative label")
    return sum(values) / len(values)


def log_loss(probabilities: Tensor, labels: Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of predicted probabilities, clipped to ``[eps, 1 - eps]``."""
    p = _as_1d("probabilities", probabilities).double().clamp(eps, 1.0 - eps)
    y = _as_1d("labels", labels).double()
    if p.shape != y.shape:
        raise ValueError(f"labels: expected shape {tuple(p.shape)}, got {tuple(y.shape)}")
    return float(-(y * p.log() + (1.0 - y) * (1.0 - p).log()).mean())


def log_loss_from_logits(logits: Tensor, labels: Tensor) -> float:
    """Mean BCE from logits (exact, no clipping)."""
    z = _as_1d("logits", logits).double()
    y = _as_1d("labels", labels).double()
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))


__all__ = ["auc", "average_ranks", "log_loss", "log_loss_from_logits", "uauc"]
