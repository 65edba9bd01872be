"""``pswiglu``: the per-token SwiGLU, validation and backends (SPEC §4)."""

from __future__ import annotations

from torch import Tensor

from .. import reference
from .._checks import check_optional_tensor, check_same_device, check_shape, check_tensor
from .._registry import define_op

PSWIGLU = define_op("pswiglu")
PSWIGLU.register("reference")(reference.pswiglu)


def pswiglu(
    u: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_gate: Tensor | None = None,
    b_up: Tensor | None = None,
    b_down: Tensor | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """``o_t = W_down[t] (SiLU(W_gate[t] u_t + b_g) * (W_up[t] u_t + b_u)) + b_d`` per token."""
    check_tensor("u", u, ndim=3)
    check_tensor("w_gate", w_gate, ndim=3)
    _, t, d = u.shape
    h = w_gate.shape[-1]
    check_shape("w_gate", w_gate, (t, d, h), "(T, D, h)")
    check_tensor("w_up", w_up, ndim=3)
    check_shape("w_up", w_up, (t, d, h), "(T, D, h) like w_gate")
    check_tensor("w_down", w_down, ndim=3)
    check_shape("w_down", w_down, (t, h, d), "(T, h, D)")
    for name, bias, width in (("b_gate", b_gate, h), ("b_up", b_up, h), ("b_down", b_down, d)):
        if check_optional_tensor(name, bias, ndim=2) is not None:
            check_shape(name, bias, (t, width), f"(T, {'h' if width == h else 'D'})")
    check_same_device(u=u, w_gate=w_gate, w_up=w_up, w_down=w_down, b_gate=b_gate, b_up=b_up, b_down=b_down)
    return PSWIGLU.dispatch(backend, u.device)(u, w_gate, w_up, w_down, b_gate, b_up, b_down)
