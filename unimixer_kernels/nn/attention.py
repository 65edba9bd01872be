"""HiFormer's heterogeneous attention (SPEC §7) as a module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_positive_ints
from ..reference.attention import heterogeneous_attention
from ._common import check_backend, check_module_input, uniform_fan_in_


class HeterogeneousAttention(nn.Module):
    """Attention with token-specific projections over ``x [bs, T, D]`` -> ``[bs, T, D]``:

    ``Q_t, K_t [D, H*dk]``, ``V_t [D, H*dv]``, ``O_t [H*dv, D]``; per head
    ``att[t, s] = softmax_s(q_t . k_s / sqrt(dk))``, ``o_t = O_t concat_h(sum_s att v_s)``.

    ``head_dim`` (dk) and ``value_dim`` (dv) default to ``D / heads``. There is no kernel for it
    yet: it runs the pure-PyTorch computation on every backend (``backend`` is accepted so that
    every module has the same signature).
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        heads: int = 1,
        *,
        head_dim: int | None = None,
        value_dim: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive_ints(tokens=tokens, dim=dim, heads=heads)
        dk = max(1, dim // heads) if head_dim is None else head_dim
        dv = max(1, dim // heads) if value_dim is None else value_dim
        check_positive_ints(head_dim=dk, value_dim=dv)
        self.tokens, self.dim, self.heads, self.head_dim, self.value_dim = tokens, dim, heads, dk, dv
        self.backend = check_backend(backend)

        def proj(i: int, o: int) -> nn.Parameter:
            return nn.Parameter(uniform_fan_in_(torch.empty(tokens, i, o), i))

        self.w_q, self.w_k = proj(dim, heads * dk), proj(dim, heads * dk)
        self.w_v, self.w_o = proj(dim, heads * dv), proj(heads * dv, dim)

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        return heterogeneous_attention(x, self.w_q, self.w_k, self.w_v, self.w_o, self.heads)
