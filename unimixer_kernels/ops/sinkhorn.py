"""``sinkhorn`` and ``lite_weights``: validation and backends (SPEC §2.1, §3)."""

from __future__ import annotations

from torch import Tensor

from .. import reference
from .._checks import check_same_device, check_shape, check_sinkhorn_args, check_tensor
from .._registry import define_op

SINKHORN = define_op("sinkhorn")
LITE_WEIGHTS = define_op("lite_weights")

SINKHORN.register("reference")(reference.sinkhorn)
LITE_WEIGHTS.register("reference")(reference.lite_weights)


def sinkhorn(
    logits: Tensor,
    tau: float = 1.0,
    iters: int = 20,
    symmetric: bool = True,
    *,
    backend: str = "auto",
) -> Tensor:
    """Unrolled log-domain Sinkhorn of ``logits [..., n, n]``; returns fp32 (fp64 for fp64 input).

    Gradients are those of the unrolled ``iters``-step map.
    """
    check_tensor("logits", logits)
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits: expected a [..., n, n] tensor, got shape {tuple(logits.shape)}")
    check_sinkhorn_args(tau, iters)
    return SINKHORN.dispatch(backend, logits.device)(logits, float(tau), int(iters), bool(symmetric))


def lite_weights(
    omega: Tensor,
    basis: Tensor,
    a_g: Tensor,
    b_g: Tensor,
    tau: float = 1.0,
    iters: int = 1,
    symmetric: bool = True,
    *,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """UniMixing-Lite weights: ``(SK(omega @ Z) [N, B, B], SK(A_G @ B_G) [N, N])``."""
    check_tensor("omega", omega, ndim=2)
    check_tensor("basis", basis, ndim=3)
    check_tensor("a_g", a_g, ndim=2)
    check_tensor("b_g", b_g, ndim=2)
    n, nb = omega.shape
    if basis.shape[0] != nb or basis.shape[1] != basis.shape[2]:
        raise ValueError(
            f"basis: expected shape ({nb}, B, B) (b = omega.shape[1]), got {tuple(basis.shape)}"
        )
    if a_g.shape[0] != n:
        raise ValueError(f"a_g: expected shape ({n}, r) (N = omega.shape[0]), got {tuple(a_g.shape)}")
    check_shape("b_g", b_g, (a_g.shape[1], n), "(r, N) from a_g and omega")
    check_same_device(omega=omega, basis=basis, a_g=a_g, b_g=b_g)
    check_sinkhorn_args(tau, iters)
    return LITE_WEIGHTS.dispatch(backend, omega.device)(
        omega, basis, a_g, b_g, float(tau), int(iters), bool(symmetric)
    )
