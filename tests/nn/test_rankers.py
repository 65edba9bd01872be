"""Rankers: metrics against hand-computed values, the tokenizer, data, and training smoke tests."""

import math

import pytest
import torch
import torch.nn.functional as F

from unimixer_kernels.models import (
    FAMILIES,
    FeatureTokenizer,
    Field,
    Ranker,
    auc,
    log_loss,
    log_loss_from_logits,
    make_click_dataset,
    uauc,
)
from unimixer_kernels.models import train as train_module

# --- metrics ---------------------------------------------------------------------------------------


def test_auc_hand_computed():
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    # ties count half: pairs (0.5|0.5)=1/2, (0.5|0.2)=1, (0.9|0.5)=1, (0.9|0.2)=1 -> 3.5/4
    assert auc(torch.tensor([0.5, 0.5, 0.2, 0.9]), torch.tensor([1, 0, 0, 1])) == pytest.approx(0.875)
    assert auc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])) == 1.0
    assert auc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 0.0])) == 0.0


def test_auc_equals_pairwise_count():
    scores = torch.randint(0, 6, (60,)).float()  # many ties
    labels = (torch.rand(60) < 0.4).float()
    labels[0], labels[1] = 0.0, 1.0
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    assert auc(scores, labels) == pytest.approx(wins.mean().item(), abs=1e-12)


def test_uauc_hand_computed():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.4])
    labels = torch.tensor([0, 1, 1, 1, 0, 1])
    users = torch.tensor([7, 7, 7, 3, 3, 5])
    # user 7: AUC 1; user 3: AUC 0; user 5 has one label only and is skipped
    assert uauc(scores, labels, users) == pytest.approx(0.5)


def test_log_loss_hand_computed():
    expected = -(math.log(0.9) + math.log(0.8)) / 2
    assert log_loss(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0])) == pytest.approx(expected)
    logits = torch.tensor([math.log(9.0), math.log(0.25)])  # sigmoid -> 0.9, 0.2
    assert log_loss_from_logits(logits, torch.tensor([1.0, 0.0])) == pytest.approx(expected)
    assert math.isfinite(log_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))


# --- data and tokenizer ----------------------------------------------------------------------------


def test_click_data_is_reproducible_and_has_signal():
    a, b = make_click_dataset(4000, seed=3), make_click_dataset(4000, seed=3)
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    assert 0.15 < a.labels.mean() < 0.5
    assert torch.equal(a.users, a.features[:, 0])
    assert auc(a.true_logits, a.labels) > 0.75  # the oracle can rank
    for j, f in enumerate(a.fields):
        assert 0 <= a.features[:, j].min() and a.features[:, j].max() < f.vocab


def test_tokenizer_pads_chunks_and_projects_per_token():
    fields = (Field("u", "user", 5), Field("c", "context", 3), Field("i", "item", 4), Field("u2", "user", 2))
    tok = FeatureTokenizer(fields, tokens=3, dim=4, emb_dim={"user": 2, "item": 3, "context": 1})
    feats = torch.tensor([[1, 2, 3, 0], [4, 0, 1, 1]])
    # E = [user: u, u2 | context: c | item: i], width 2+2+1+3 = 8, padded to 9 = 3 chunks of 3
    assert tok.embedded_width == 8 and tok.chunk == 3
    by_name = {fields[i].name: emb for i, emb in zip(tok.order, tok.embeddings)}
    e = torch.cat([by_name["u"](feats[:, 0]), by_name["u2"](feats[:, 3]), by_name["c"](feats[:, 1]),
                   by_name["i"](feats[:, 2]), torch.zeros(2, 1)], -1)
    expected = torch.stack([e[:, 3 * t : 3 * t + 3] @ tok.weight[t] + tok.bias[t] for t in range(3)], 1)
    torch.testing.assert_close(tok(feats), expected)
    shared = FeatureTokenizer(fields, 3, 4, 2, shared_projection=True)
    assert shared.weight.shape == (1, 3, 4) and shared(feats).shape == (2, 3, 4)


# --- training ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_ranker_overfits_one_batch(family):
    torch.manual_seed(0)
    data = make_click_dataset(128, seed=1)
    model = Ranker(data.fields, family, tokens=4, dim=16, num_blocks=2, block=4, emb_dim=8, tower_hidden=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = F.binary_cross_entropy_with_logits(model(data.features), data.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_train_entry_point_runs_and_anneals(capsys):
    result = train_module.main(
        ["--family", "unimixer-lite", "--steps", "12", "--samples", "1500", "--batch-size", "64",
         "--log-every", "4", "--dim", "16", "--tokens", "4", "--threads", "0"]
    )
    out = capsys.readouterr().out
    assert "loss" in out and "AUC" in out and "UAUC" in out
    assert len(result["losses"]) == 12
    assert result["taus"][0] == 1.0 and result["taus"][-1] == pytest.approx(1.0 - 0.95 * 11 / 12)
    assert set(result["metrics"]) == {"auc", "uauc", "log_loss"}


def test_training_is_reproducible_from_the_seed():
    kw = dict(steps=4, num_samples=800, batch_size=32, tokens=4, dim=16, verbose=False, evaluate_at_end=False)
    a = train_module.train("unimixer", **kw)
    b = train_module.train("unimixer", **kw)
    assert a["losses"] == b["losses"]
