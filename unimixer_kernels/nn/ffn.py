"""Per-token feed-forward networks (SPEC §1, §4): one FFN per token, a batched GEMM over tokens."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from .._checks import check_bool, check_choice, check_positive_ints
from ._common import check_backend, check_module_input, uniform_fan_in_

ACTIVATIONS = ("swiglu", "gelu")


def swiglu_hidden(dim: int) -> int:
    """SPEC §4's default SwiGLU width: ``2/3 * 2D`` rounded up to a multiple of 8 **(choice)**."""
    return int(math.ceil(4 * dim / 3 / 8)) * 8


class PerTokenFFN(nn.Module):
    """Token-specific FFN over ``x [bs, T, D]``.

    - ``activation="swiglu"`` (UniMixer's pSwiGLU, SPEC §4):
      ``o_t = W_down[t] (SiLU(W_gate[t] u_t + b_g) * (W_up[t] u_t + b_u)) + b_d`` through
      ``uk.pswiglu``; ``hidden`` defaults to :func:`swiglu_hidden`.
    - ``activation="gelu"`` (RankMixer's PFFN, SPEC §1): ``v_t = W2_t GELU(W1_t s_t + b1_t) + b2_t``,
      through ``uk.pgelu_ffn``; ``hidden`` defaults to ``4 * D``.

    Parameters: ``w_gate, w_up [T, D, h]``, ``w_down [T, h, D]`` (SwiGLU) or ``w1 [T, D, h]``,
    ``w2 [T, h, D]`` (GELU); biases ``[T, h]`` / ``[T, D]`` when ``bias=True``.

    ``recompute`` (default ``True``) is the ops' option: the Triton backend recomputes the hidden
    pre-activations in the backward (one more GEMM per pre-activation) instead of saving them
    (``bs * T * h`` elements each in the compute dtype, kept from the forward to the backward). For
    the GELU FFN under autocast it also decides the 16-bit copies of the fp32 weights: cast again in the
    backward (``True``) or kept from the forward (``False``; ``ops/pgelu_ffn.py``).
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        hidden: int | None = None,
        activation: str = "swiglu",
        *,
        bias: bool = True,
        recompute: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        check_bool("recompute", recompute)
        if hidden is None:
            hidden = swiglu_hidden(dim) if activation == "swiglu" else 4 * dim
        check_positive_ints(tokens=tokens, dim=dim, hidden=hidden)
        self.tokens, self.dim, self.hidden, self.activation = tokens, dim, hidden, activation
        self.recompute = recompute
        self.backend = check_backend(backend)

        def weight(i: int, o: int) -> nn.Parameter:
            return nn.Parameter(uniform_fan_in_(torch.empty(tokens, i, o), i))

        def bias_of(width: int, fan_in: int) -> nn.Parameter | None:
            return nn.Parameter(uniform_fan_in_(torch.empty(tokens, width), fan_in)) if bias else None

        if activation == "swiglu":
            self.w_gate, self.w_up = weight(dim, hidden), weight(dim, hidden)
            self.w_down = weight(hidden, dim)
            self.b_gate, self.b_up = bias_of(hidden, dim), bias_of(hidden, dim)
            self.b_down = bias_of(dim, hidden)
        else:
            self.w1, self.w2 = weight(dim, hidden), weight(hidden, dim)
            self.b1, self.b2 = bias_of(hidden, dim), bias_of(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        if self.activation == "swiglu":
            return ops.pswiglu(
                x, self.w_gate, self.w_up, self.w_down, self.b_gate, self.b_up, self.b_down,
                recompute=self.recompute, backend=self.backend,
            )
        return ops.pgelu_ffn(x, self.w1, self.b1, self.w2, self.b2, recompute=self.recompute,
                             backend=self.backend)

    def swiglu_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """``(w_gate, w_up, w_down, b_gate, b_up, b_down)``, for ops that take the pSwiGLU whole."""
        if self.activation != "swiglu":
            raise ValueError(f"swiglu_weights: this FFN's activation is {self.activation!r}, not 'swiglu'")
        return self.w_gate, self.w_up, self.w_down, self.b_gate, self.b_up, self.b_down

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, dim={self.dim}, hidden={self.hidden}, activation={self.activation!r}"
