"""``fm_interaction`` and ``dot_interaction``: validation and backends (SPEC §6)."""

from __future__ import annotations

from torch import Tensor

from .. import reference
from .._checks import check_same_device, check_tensor
from .._registry import define_op

FM_INTERACTION = define_op("fm_interaction")
DOT_INTERACTION = define_op("dot_interaction")

FM_INTERACTION.register("reference")(reference.fm_interaction)
DOT_INTERACTION.register("reference")(reference.dot_interaction)

DOT_ORDERS = ("triu", "tril")


def fm_interaction(x: Tensor, y: Tensor, *, backend: str = "auto") -> Tensor:
    """Wukong's optimised FM ``X (X^T Y)``: ``[bs, n, d]``, ``[n, k]`` -> ``[bs, n, k]``."""
    check_tensor("x", x, ndim=3)
    check_tensor("y", y, ndim=2)
    if y.shape[0] != x.shape[1]:
        raise ValueError(f"y: expected shape ({x.shape[1]}, k) (n = x.shape[1]), got {tuple(y.shape)}")
    check_same_device(x=x, y=y)
    return FM_INTERACTION.dispatch(backend, x.device)(x, y)


def dot_interaction(x: Tensor, order: str = "triu", *, backend: str = "auto") -> Tensor:
    """DLRM pairwise dots: ``"triu"`` (torchrec, ``i < j``) or ``"tril"`` (NVIDIA, ``i > j``, padded)."""
    check_tensor("x", x, ndim=3)
    if order not in DOT_ORDERS:
        raise ValueError(f"order: expected one of {DOT_ORDERS}, got {order!r}")
    return DOT_INTERACTION.dispatch(backend, x.device)(x, order)
