"""Wukong's interaction layer (SPEC §6): factorization-machine block, linear compression block,
residual and LayerNorm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .._checks import check_positive, check_positive_ints
from ._common import check_backend, check_module_input, layer_norm, uniform_fan_in_


class WukongLayer(nn.Module):
    """``X' = LN(concat(FMB(X), LCB(X)) + residual)`` on ``x [bs, n, d]`` -> ``[bs, nF + nL, d]``.

    - ``FMB(X) = reshape(MLP(LN(flatten(X (X^T Y)))), [bs, nF, d])``, the FM through
      ``uk.fm_interaction`` with ``Y [n, k]``; the MLP is ``Linear -> ReLU -> ... -> Linear``
      (``mlp_hidden`` widths, default one layer of ``nF*d``) **(choice)**;
    - ``LCB(X) = W_L X`` with ``W_L [nL, n]``;
    - the residual is ``X`` when ``nF + nL == n``, else ``W_res X`` with ``W_res [nF + nL, n]``;
    - LN over ``d`` for the output, over ``n*k`` inside the FMB.

    Defaults **(choice)**: ``num_fm = n // 2``, ``num_lcb = n - num_fm`` (the shape is kept, so
    layers stack), ``rank k = max(1, n // 2)`` (the SPEC preset has n=64, k=32).
    """

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        num_fm: int | None = None,
        num_lcb: int | None = None,
        rank: int | None = None,
        mlp_hidden: Sequence[int] | None = None,
        eps: float = 1e-6,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        n, d = num_embeddings, dim
        check_positive_ints(num_embeddings=n, dim=d)
        num_fm = n // 2 if num_fm is None else num_fm
        num_lcb = n - num_fm if num_lcb is None else num_lcb
        rank = max(1, n // 2) if rank is None else rank
        check_positive_ints(num_fm=num_fm, num_lcb=num_lcb, rank=rank)
        mlp_hidden = (num_fm * d,) if mlp_hidden is None else tuple(mlp_hidden)
        check_positive_ints(**{f"mlp_hidden[{i}]": w for i, w in enumerate(mlp_hidden)})
        check_positive("eps", eps)
        self.num_embeddings, self.dim, self.num_fm, self.num_lcb, self.rank = n, d, num_fm, num_lcb, rank
        self.eps = float(eps)
        self.backend = check_backend(backend)
        self.y = nn.Parameter(torch.randn(n, rank) / n**0.5)
        self.fm_ln_weight = nn.Parameter(torch.ones(n * rank))
        self.fm_ln_bias = nn.Parameter(torch.zeros(n * rank))
        widths = (n * rank, *mlp_hidden, num_fm * d)
        self.mlp_weights = nn.ParameterList(
            nn.Parameter(uniform_fan_in_(torch.empty(i, o), i)) for i, o in zip(widths[:-1], widths[1:])
        )
        self.mlp_biases = nn.ParameterList(
            nn.Parameter(uniform_fan_in_(torch.empty(o), i)) for i, o in zip(widths[:-1], widths[1:])
        )
        self.w_l = nn.Parameter(uniform_fan_in_(torch.empty(num_lcb, n), n))
        out = num_fm + num_lcb
        self.w_res = None if out == n else nn.Parameter(uniform_fan_in_(torch.empty(out, n), n))
        self.ln_weight, self.ln_bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def mlp_layers(self) -> list[tuple[Tensor, Tensor]]:
        return list(zip(self.mlp_weights, self.mlp_biases))

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.num_embeddings, self.dim)
        bs = x.shape[0]
        fm = ops.fm_interaction(x, self.y, backend=self.backend).reshape(bs, -1)
        h = layer_norm(fm, self.fm_ln_weight, self.fm_ln_bias, self.eps)
        layers = self.mlp_layers()
        for i, (w, b) in enumerate(layers):
            h = h @ w.to(h.dtype) + b.to(h.dtype)
            if i + 1 < len(layers):
                h = F.relu(h)
        fmb = h.reshape(bs, self.num_fm, self.dim)
        lcb = torch.einsum("ln,snd->sld", self.w_l.to(x.dtype), x)
        residual = x if self.w_res is None else torch.einsum("mn,snd->smd", self.w_res.to(x.dtype), x)
        return layer_norm(torch.cat([fmb, lcb], 1) + residual, self.ln_weight, self.ln_bias, self.eps)
