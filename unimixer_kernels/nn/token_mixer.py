"""Rule-based token mixing (SPEC §1): TokenMixer, the RankMixer block, the TokenMixer-Large block."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from .._checks import check_divides, check_positive, check_positive_ints
from ._common import check_backend, check_module_input
from .ffn import PerTokenFFN, swiglu_hidden


class TokenMixer(nn.Module):
    """RankMixer's TokenMixer ``[bs, T, D] -> [bs, H, T*D/H]`` through ``uk.token_mixer``:
    ``out[h, t*c:(t+1)*c] = x[t, h*c:(h+1)*c]`` with ``c = D/H`` (``heads`` defaults to ``T``).
    No parameters. :meth:`inverse` undoes it."""

    def __init__(self, tokens: int, dim: int, heads: int | None = None, *, backend: str = "auto") -> None:
        super().__init__()
        heads = tokens if heads is None else heads
        check_positive_ints(tokens=tokens, dim=dim, heads=heads)
        check_divides("heads", heads, dim, "D")
        self.tokens, self.dim, self.heads = tokens, dim, heads
        self.backend = check_backend(backend)

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        return ops.token_mixer(x, self.heads, backend=self.backend)

    def inverse(self, m: Tensor) -> Tensor:
        """``[bs, H, T*D/H] -> [bs, T, D]``: a TokenMixer with ``T`` heads on the mixed layout."""
        check_module_input(self, m, self.heads, self.tokens * self.dim // self.heads, "m")
        return ops.token_mixer(m, self.tokens, backend=self.backend)

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, dim={self.dim}, heads={self.heads}"


class RankMixerBlock(nn.Module):
    """RankMixer block, post-LayerNorm, ``H = T`` (SPEC §1)::

        S  = LN(TokenMixer(X) + X)     uk.token_mixer_residual_norm (one op)
        X' = LN(PFFN(S) + S)           PFFN: per-token GELU FFN (uk.pgelu_ffn), hidden k*D;
                                       the sum and its norm: uk.residual_norm (one op)

    About ``2kTD^2`` parameters per block (plus biases and norms). ``recompute`` is
    :class:`PerTokenFFN`'s: ``False`` saves the PFFN's hidden pre-activation (``bs * T * kD`` elements,
    192 MiB in bf16 at ``rankmixer-100m``) and, under autocast, the bf16 copies of its fp32 weights
    (144 MiB there) instead of recomputing them in the backward (one more GEMM, two casts).
    """

    def __init__(
        self, tokens: int, dim: int, k: int = 4, *, hidden: int | None = None, eps: float = 1e-6,
        recompute: bool = True, backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive_ints(tokens=tokens, dim=dim, k=k)
        check_divides("tokens", tokens, dim, "D (RankMixer needs H = T heads)")
        check_positive("eps", eps)
        self.tokens, self.dim, self.eps = tokens, dim, float(eps)
        self.backend = check_backend(backend)
        self.ln1_weight, self.ln1_bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        hidden = k * dim if hidden is None else hidden
        self.ffn = PerTokenFFN(tokens, dim, hidden, "gelu", recompute=recompute, backend=backend)
        self.ln2_weight, self.ln2_bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        s = ops.token_mixer_residual_norm(
            x, self.tokens, self.ln1_weight, self.ln1_bias, self.eps, "layer", backend=self.backend
        )
        return ops.residual_norm(self.ffn(s), s, self.ln2_weight, self.ln2_bias, self.eps, "layer",
                                 backend=self.backend)


class TokenMixerLargeBlock(nn.Module):
    """TokenMixer-Large (SPEC §1), pre-RMSNorm, ``H`` may differ from ``T``::

        U  = RMSNorm(X)                               uk.rms_norm
        M  = TokenMixer_{T->H}(U)                     [bs, H, T*D/H]
        O  = pSwiGLU(M)                               per mixed token, hidden h
        X' = X + TokenMixer_{H->T}(O)                 revert, then the residual

    ``hidden`` defaults to ``2/3 * 2 * (T*D/H)`` rounded up to a multiple of 8.
    """

    def __init__(
        self, tokens: int, dim: int, heads: int, *, hidden: int | None = None, bias: bool = True,
        eps: float = 1e-6, backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive_ints(tokens=tokens, dim=dim, heads=heads)
        check_divides("heads", heads, dim, "D")
        check_positive("eps", eps)
        self.tokens, self.dim, self.heads, self.eps = tokens, dim, heads, float(eps)
        self.backend = check_backend(backend)
        width = tokens * dim // heads
        self.norm_weight = nn.Parameter(torch.ones(dim))
        self.ffn = PerTokenFFN(
            heads, width, swiglu_hidden(width) if hidden is None else hidden, "swiglu", bias=bias,
            backend=backend,
        )

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        u = ops.rms_norm(x, self.norm_weight, self.eps, backend=self.backend)
        m = ops.token_mixer(u, self.heads, backend=self.backend)
        return x + ops.token_mixer(self.ffn(m), self.tokens, backend=self.backend)
