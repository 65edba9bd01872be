"""Rankers (SPEC §11): feature tokenizer -> one family's block stack -> mean pool -> MLP tower -> logit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_ints
from ..nn import HeterogeneousAttention, PerTokenFFN, RankMixerBlock, UniMixer, WukongLayer
from ..nn._common import layer_norm
from .data import Field
from .tokenizer import FeatureTokenizer

FAMILIES = ("unimixer", "unimixer-lite", "rankmixer", "wukong", "hiformer")


class HiFormerBlock(nn.Module):
    """The heterogeneous-attention baseline block, post-LayerNorm like RankMixer **(choice)**::

        S  = LN(X + HeterogeneousAttention(X))
        X' = LN(S + PFFN(S))                 per-token GELU FFN, hidden k*D
    """

    def __init__(self, tokens: int, dim: int, heads: int = 2, k: int = 4, *, eps: float = 1e-6,
                 backend: str = "auto") -> None:
        super().__init__()
        self.eps = eps
        self.attention = HeterogeneousAttention(tokens, dim, heads, backend=backend)
        self.ln1_weight, self.ln1_bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.ffn = PerTokenFFN(tokens, dim, k * dim, "gelu", backend=backend)
        self.ln2_weight, self.ln2_bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        s = layer_norm(x + self.attention(x), self.ln1_weight, self.ln1_bias, self.eps)
        return layer_norm(s + self.ffn(s), self.ln2_weight, self.ln2_bias, self.eps)


def build_stack(
    family: str, tokens: int, dim: int, num_blocks: int, *, block: int = 4, backend: str = "auto",
    **options,
) -> nn.Module:
    """The block stack of one family, ``[bs, T, D] -> [bs, T, D]``.

    ``options``: for ``unimixer``/``unimixer-lite`` any :class:`UniMixerBlock` keyword (``rank``,
    ``bases``, ``hidden``, ``init``, ``iters`` ...); ``k`` for ``rankmixer``/``hiformer``;
    ``heads`` for ``hiformer``; ``rank``/``mlp_hidden`` for ``wukong``.
    """
    check_choice("family", family, FAMILIES)
    check_positive_ints(tokens=tokens, dim=dim, num_blocks=num_blocks)
    if family in ("unimixer", "unimixer-lite"):
        lite = family == "unimixer-lite"
        return UniMixer(tokens, dim, block, num_blocks, lite=lite, backend=backend, **options)
    make = {"rankmixer": RankMixerBlock, "wukong": WukongLayer, "hiformer": HiFormerBlock}[family]
    return nn.Sequential(*(make(tokens, dim, backend=backend, **options) for _ in range(num_blocks)))


class Ranker(nn.Module):
    """A click ranker: ``features [bs, F]`` (int64 ids) -> click logits ``[bs]``.

    ``FeatureTokenizer`` -> ``build_stack(family)`` -> mean over tokens -> MLP tower
    (``Linear(D, tower_hidden) -> ReLU -> Linear(tower_hidden, 1)``). Train with BCE on the logit.
    """

    def __init__(
        self,
        fields: Sequence[Field],
        family: str = "unimixer-lite",
        *,
        tokens: int = 8,
        dim: int = 32,
        num_blocks: int = 2,
        block: int = 4,
        emb_dim: int | Mapping[str, int] = 16,
        tower_hidden: int = 64,
        backend: str = "auto",
        **stack_options,
    ) -> None:
        super().__init__()
        check_positive_ints(tower_hidden=tower_hidden)
        self.family = family
        self.tokenizer = FeatureTokenizer(fields, tokens, dim, emb_dim)
        self.stack = build_stack(
            family, tokens, dim, num_blocks, block=block, backend=backend, **stack_options
        )
        self.tower = nn.Sequential(nn.Linear(dim, tower_hidden), nn.ReLU(), nn.Linear(tower_hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        tokens = self.stack(self.tokenizer(features))
        return self.tower(tokens.mean(1)).squeeze(-1)
