"""A synthetic click data set whose signal lives in feature interactions (SPEC §11 rankers).

Every sample has categorical fields in four semantic domains (user, item, behaviour, context)
and a click label. The click log-odds are built from:

- a *match* term: the behaviour field ``hist_category`` equals the item's category (an
  interaction of two fields that no single field predicts);
- low-rank *affinities* ``<v_a[x_a], v_b[x_b]>`` between pairs of fields from different domains
  (user x item category, user age x brand, city x item, hour x device);
- small main effects.

The log-odds are standardised and shifted to a click rate near 30%. ``users`` carries the user
id of every sample for UAUC.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Field:
    """One categorical feature: its name, its semantic domain and its vocabulary size."""

    name: str
    domain: str
    vocab: int


DEFAULT_FIELDS: tuple[Field, ...] = (
    Field("user_id", "user", 200),
    Field("user_age", "user", 8),
    Field("user_city", "user", 20),
    Field("item_id", "item", 500),
    Field("item_category", "item", 20),
    Field("item_brand", "item", 50),
    Field("hist_category", "behaviour", 20),
    Field("hist_brand", "behaviour", 50),
    Field("hour", "context", 24),
    Field("device", "context", 4),
)

AFFINITY_PAIRS = (
    ("user_id", "item_category"),
    ("user_age", "item_category"),
    ("user_city", "item_brand"),
    ("hour", "device"),
)


@dataclass
class ClickData:
    """``features [n, F]`` (int64, one column per field), ``users [n]``, ``labels [n]`` (0/1 float),
    and the log-odds the labels were drawn from (``true_logits [n]``, for the oracle AUC)."""

    features: Tensor
    users: Tensor
    labels: Tensor
    fields: tuple[Field, ...]
    true_logits: Tensor

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, index: Tensor | slice) -> ClickData:
        return ClickData(
            self.features[index], self.users[index], self.labels[index], self.fields, self.true_logits[index]
        )

    def split(self, train_fraction: float = 0.8) -> tuple[ClickData, ClickData]:
        cut = int(len(self) * train_fraction)
        return self.subset(slice(0, cut)), self.subset(slice(cut, len(self)))

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[ClickData]:
        """Endless shuffled mini-batches (reshuffled each epoch, reproducible from ``generator``)."""
        while True:
            perm = torch.randperm(len(self), generator=generator)
            for start in range(0, len(self) - batch_size + 1, batch_size):
                yield self.subset(perm[start : start + batch_size])


def make_click_dataset(
    num_samples: int,
    fields: Sequence[Field] = DEFAULT_FIELDS,
    *,
    latent_dim: int = 4,
    match_weight: float = 3.0,
    seed: int = 0,
) -> ClickData:
    """Draw ``num_samples`` clicks; the same ``seed`` gives the same data on every machine."""
    fields = tuple(fields)
    names = [f.name for f in fields]
    if "user_id" not in names:
        raise ValueError(f"fields: expected a field named 'user_id' (for UAUC), got {names}")
    g = torch.Generator().manual_seed(seed)
    col = {f.name: torch.randint(0, f.vocab, (num_samples,), generator=g) for f in fields}
    vocab = {f.name: f.vocab for f in fields}
    # an item has one category and one brand
    for attribute in ("item_category", "item_brand"):
        if {"item_id", attribute} <= col.keys():
            of_item = torch.randint(0, vocab[attribute], (vocab["item_id"],), generator=g)
            col[attribute] = of_item[col["item_id"]]
    logit = torch.zeros(num_samples, dtype=torch.float64)
    if {"hist_category", "item_category"} <= col.keys():
        # half the time the history holds the item's category
        same = torch.rand(num_samples, generator=g) < 0.5
        col["hist_category"] = torch.where(same, col["item_category"], col["hist_category"])
        logit += match_weight * (col["hist_category"] == col["item_category"]).double()
    for a, b in AFFINITY_PAIRS:
        if a in col and b in col:
            va = torch.randn(vocab[a], latent_dim, generator=g, dtype=torch.float64)
            vb = torch.randn(vocab[b], latent_dim, generator=g, dtype=torch.float64)
            logit += (va[col[a]] * vb[col[b]]).sum(-1) / latent_dim**0.5
    for f in fields:
        logit += 0.3 * torch.randn(f.vocab, generator=g, dtype=torch.float64)[col[f.name]]
    logit = 1.5 * (logit - logit.mean()) / logit.std() - 1.0
    labels = (torch.rand(num_samples, generator=g, dtype=torch.float64) < torch.sigmoid(logit)).float()
    features = torch.stack([col[n] for n in names], 1)
    return ClickData(features, col["user_id"].clone(), labels, fields, logit.float())
