"""The unified framework (SPEC §5) as one configurable module: ``output = reshape(G(X) @ V(X))``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from .._checks import check_choice, check_divides, check_positive_ints
from ..reference import attention as ref_attention
from ..reference import unified as ref_unified
from ._common import check_backend, check_module_input, uniform_fan_in_
from .unimixing import UniMixing

ROWS = ref_unified.ROWS


class UnifiedMixing(nn.Module):
    """One row of SPEC §5's table over ``x [bs, T, D]``, chosen by ``row``:

    ================================  ==================  =====================  ===================
    row                               local ``V``         global ``G``           output
    ================================  ==================  =====================  ===================
    ``"tokenmixer"`` (``heads``)      ``x_n``, ``D/H``    fixed permutation      ``[bs, H, T*D/H]``
    ``"unimixing"`` (``block``)       ``x_n W_B[n]``      ``SK(theta_G)``        ``[bs, T, D]``
    ``"unimixing-lite"``              ``x_n SK(omega Z)`` ``SK(A_G B_G)``        ``[bs, T, D]``
    ``"self-attention"``              ``X W_V``           softmax(QK^T/sqrt d)   ``[bs, T, dv]``
    ``"heterogeneous-attention"``     ``x_t W_V[t]``      token-specific softmax ``[bs, T, dv]``
    ``"fm"`` (``rank`` k)             ``Y [T, k]``        ``X X^T``              ``[bs, T, k]``
    ================================  ==================  =====================  ===================

    ``fused=True`` (default) runs the named rows through their public ops (``uk.token_mixer``,
    ``uk.unimixing``, ``uk.fm_interaction``); the attention rows, which have no op, run their
    classic pure-PyTorch formula. ``fused=False`` always builds ``G`` and ``V`` explicitly
    (:meth:`global_pattern`, :meth:`local_pattern`) and multiplies them: that is the framework
    itself, ``N^2`` memory, for tests and teaching. Both give the same function.

    The UniMixing rows hold a :class:`UniMixing` (``self.mixing``); ``mixing_kwargs`` go to it.
    ``qk_dim`` and ``value_dim`` (attention) default to ``D``; ``rank`` (FM) to ``T``.
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        row: str,
        *,
        heads: int | None = None,
        block: int | None = None,
        qk_dim: int | None = None,
        value_dim: int | None = None,
        rank: int | None = None,
        fused: bool = True,
        backend: str = "auto",
        **mixing_kwargs,
    ) -> None:
        super().__init__()
        check_positive_ints(tokens=tokens, dim=dim)
        check_choice("row", row, ROWS)
        self.tokens, self.dim, self.row, self.fused = tokens, dim, row, bool(fused)
        self.backend = check_backend(backend)
        self.mixing = None
        if row == "tokenmixer":
            self.heads = tokens if heads is None else heads
            check_positive_ints(heads=self.heads)
            check_divides("heads", self.heads, dim, "D")
        elif row in ("unimixing", "unimixing-lite"):
            if block is None:
                raise TypeError(f"block: expected an int for row={row!r}, got None")
            lite = row == "unimixing-lite"
            self.mixing = UniMixing(tokens, dim, block, lite=lite, backend=backend, **mixing_kwargs)
        elif row in ("self-attention", "heterogeneous-attention"):
            dk = dim if qk_dim is None else qk_dim
            dv = dim if value_dim is None else value_dim
            check_positive_ints(qk_dim=dk, value_dim=dv)
            lead = (tokens,) if row == "heterogeneous-attention" else ()
            self.w_q = nn.Parameter(uniform_fan_in_(torch.empty(*lead, dim, dk), dim))
            self.w_k = nn.Parameter(uniform_fan_in_(torch.empty(*lead, dim, dk), dim))
            self.w_v = nn.Parameter(uniform_fan_in_(torch.empty(*lead, dim, dv), dim))
        else:
            k = tokens if rank is None else rank
            check_positive_ints(rank=k)
            self.y = nn.Parameter(torch.randn(tokens, k) / tokens**0.5)

    def set_temperature(self, tau: float) -> None:
        if self.mixing is None:
            raise ValueError(f"row: set_temperature needs a UniMixing row, got {self.row!r}")
        self.mixing.set_temperature(tau)

    # --- the two patterns --------------------------------------------------------------------------

    def local_pattern(self, x: Tensor) -> Tensor:
        """``V(X)``: ``[bs, N, w]``, or the ``[N, w]`` parameter of the FM row."""
        if self.row == "tokenmixer":
            return ref_unified.local_identity(x, self.dim // self.heads)
        if self.mixing is not None:
            return ref_unified.local_blockwise(x, self.mixing.weights()[0])
        if self.row == "self-attention":
            return ref_unified.local_linear(x, self.w_v)
        if self.row == "heterogeneous-attention":
            return ref_unified.local_token_specific(x, self.w_v)
        return self.y

    def global_pattern(self, x: Tensor) -> Tensor:
        """``G(X)``: ``[N, N]`` when input-independent, else ``[bs, N, N]``."""
        if self.row == "tokenmixer":
            return ref_unified.global_tokenmixer(self.tokens, self.heads, self.dim, x)
        if self.mixing is not None:
            return self.mixing.weights()[1]
        if self.row == "self-attention":
            return ref_unified.global_attention(x, self.w_q, self.w_k)
        if self.row == "heterogeneous-attention":
            return ref_unified.global_heterogeneous_attention(x, self.w_q, self.w_k)
        return ref_unified.global_gram(x)

    # --- forward ---------------------------------------------------------------------------------

    def _out_shape(self, bs: int, width: int) -> tuple[int, ...]:
        if self.row == "tokenmixer":
            return (bs, self.heads, self.tokens * self.dim // self.heads)
        if self.mixing is not None:
            return (bs, self.tokens, self.dim)
        return (bs, self.tokens, width)

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        if self.fused:
            if self.row == "tokenmixer":
                return ops.token_mixer(x, self.heads, backend=self.backend)
            if self.mixing is not None:
                return self.mixing(x)
            if self.row == "fm":
                return ops.fm_interaction(x, self.y, backend=self.backend)
            if self.row == "self-attention":
                return ref_attention.self_attention(x, self.w_q, self.w_k, self.w_v)
            return ref_attention.heterogeneous_attention(x, self.w_q, self.w_k, self.w_v, None, 1)
        g, v = self.global_pattern(x), self.local_pattern(x)
        out = ref_unified.unified_mixing(g, v)
        return out.reshape(self._out_shape(x.shape[0], out.shape[-1])).to(x.dtype)
