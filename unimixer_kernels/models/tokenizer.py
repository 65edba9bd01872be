"""Feature tokenization (SPEC §11): domains embedded, concatenated, padded, cut into T tokens,
then a token-specific projection."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_positive_ints
from .data import Field


class FeatureTokenizer(nn.Module):
    """Categorical features ``[bs, F]`` (int64) -> tokens ``[bs, T, D]``.

    1. Every field is embedded (width ``emb_dim``, or ``emb_dim[domain]`` per domain);
    2. the embeddings are concatenated domain by domain (in the order the domains first appear
       in ``fields``) into ``E`` of length ``len_E``;
    3. ``E`` is zero-padded to ``T * d`` with ``d = ceil(len_E / T)`` **(choice)** and cut into
       ``T`` chunks of length ``d``;
    4. chunk ``i`` gets its own projection ``x_i = W_i E_i + b_i`` with ``W_i [D, d]`` (stored as
       ``weight [T, d, D]``), as in the paper; ``shared_projection=True`` uses one ``W`` for all
       chunks, as the co-authors' code does.
    """

    def __init__(
        self,
        fields: Sequence[Field],
        tokens: int,
        dim: int,
        emb_dim: int | Mapping[str, int] = 16,
        *,
        shared_projection: bool = False,
    ) -> None:
        super().__init__()
        check_positive_ints(tokens=tokens, dim=dim)
        self.fields = tuple(fields)
        domains = list(dict.fromkeys(f.domain for f in self.fields))
        # columns of the input, reordered so that each domain is contiguous in E
        self.order = [i for dom in domains for i, f in enumerate(self.fields) if f.domain == dom]
        widths = [emb_dim if isinstance(emb_dim, int) else emb_dim[self.fields[i].domain] for i in self.order]
        check_positive_ints(**{f"emb_dim[{self.fields[i].name}]": w for i, w in zip(self.order, widths)})
        self.embeddings = nn.ModuleList(
            nn.Embedding(self.fields[i].vocab, w) for i, w in zip(self.order, widths)
        )
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=0.1)
        self.tokens, self.dim = tokens, dim
        self.embedded_width = sum(widths)
        self.chunk = math.ceil(self.embedded_width / tokens)
        lead = 1 if shared_projection else tokens
        bound = 1.0 / math.sqrt(self.chunk)
        self.weight = nn.Parameter(torch.empty(lead, self.chunk, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(lead, dim))

    def forward(self, features: Tensor) -> Tensor:
        if not isinstance(features, Tensor):
            raise TypeError(f"features: expected a torch.Tensor, got {type(features).__name__}")
        if features.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"features: expected an int64 or int32 tensor of ids, got dtype {features.dtype}")
        if features.dim() != 2 or features.shape[1] != len(self.fields):
            raise ValueError(
                f"features: expected shape (bs, F={len(self.fields)}), got {tuple(features.shape)}"
            )
        e = torch.cat([emb(features[:, i]) for i, emb in zip(self.order, self.embeddings)], -1)
        pad = self.tokens * self.chunk - self.embedded_width
        e = nn.functional.pad(e, (0, pad)).reshape(-1, self.tokens, self.chunk)
        return torch.einsum("std,tdo->sto", e, self.weight.expand(self.tokens, -1, -1)) + self.bias
