"""``unimixing`` and ``unimixing_rmsnorm``: validation and backends (SPEC §2)."""

from __future__ import annotations

from torch import Tensor

from .. import reference
from .._checks import check_same_device, check_shape, check_tensor
from .._registry import define_op

UNIMIXING = define_op("unimixing")
UNIMIXING_RMSNORM = define_op("unimixing_rmsnorm")

UNIMIXING.register("reference")(reference.unimixing)
UNIMIXING_RMSNORM.register("reference")(reference.unimixing_rmsnorm)


def check_mixing_args(x_name: str, x: object, w_local: object, w_global: object) -> None:
    """``x [bs, T, D]``, ``w_local [N, B, B]``, ``w_global [N, N]`` with ``N * B == T * D``."""
    check_tensor(x_name, x, ndim=3)
    check_tensor("w_local", w_local, ndim=3)
    check_tensor("w_global", w_global, ndim=2)
    _, t, d = x.shape
    n, b, b2 = w_local.shape
    if b != b2:
        raise ValueError(f"w_local: expected shape (N, B, B), got {tuple(w_local.shape)}")
    length = t * d
    if length % b != 0:
        raise ValueError(
            f"w_local: block size B={b} must divide L = T*D = {length} "
            f"(L % B = {length % b}); choose B dividing T*D"
        )
    if n != length // b:
        raise ValueError(
            f"w_local: expected shape ({length // b}, {b}, {b}) (N = T*D/B), got {tuple(w_local.shape)}"
        )
    check_shape("w_global", w_global, (n, n), "(N, N) with N = w_local.shape[0]")


def unimixing(x: Tensor, w_local: Tensor, w_global: Tensor, *, backend: str = "auto") -> Tensor:
    """``y_m = sum_n W_G[m, n] (x_n @ W_B[n])`` over the blocks of ``x [bs, T, D]``."""
    check_mixing_args("x", x, w_local, w_global)
    check_same_device(x=x, w_local=w_local, w_global=w_global)
    return UNIMIXING.dispatch(backend, x.device)(x, w_local, w_global)


def unimixing_rmsnorm(
    z: Tensor,
    w_local: Tensor,
    w_global: Tensor,
    norm_weight: Tensor,
    eps: float = 1e-6,
    *,
    backend: str = "auto",
) -> Tensor:
    """``RMSNorm(z + UniMixing(z))`` over ``D``: the mixing sub-block of the UniMixer block."""
    check_mixing_args("z", z, w_local, w_global)
    check_tensor("norm_weight", norm_weight, ndim=1)
    check_shape("norm_weight", norm_weight, (z.shape[-1],), "(D,)")
    check_same_device(z=z, w_local=w_local, w_global=w_global, norm_weight=norm_weight)
    return UNIMIXING_RMSNORM.dispatch(backend, z.device)(z, w_local, w_global, norm_weight, float(eps))
