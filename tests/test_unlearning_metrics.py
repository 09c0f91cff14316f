"""fiun_hub.evaluate, issue 16 metrics: top-2 leak, linear probe, relearn test, sample-wise accuracy and MIA AUC.

Hand-computed cases on constructed logits, then a real test_resnet trained on digits (16x16): an original model,
and a head-only suppression of class 3 (its head row set to the mean of the retained rows, what FIUn's head rule
converges to) whose output forgets the class while its features do not.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import FixedLogits
from fiun_hub.data import LabeledData, load_data
from fiun_hub.errors import BadInput
from fiun_hub.evaluate import (beyond_head_repo, forget_retain_accuracy, linear_probe, mia_auc_from_losses,
                               penultimate_features, per_sample_losses, probe_recall_from_features,
                               sample_forget_metrics, top2_leak, topk_leak_from_logits)
from fiun_hub.research.relearn import relearn_test
from fiun_hub.research.training import train_classifier

LABELS = [str(i) for i in range(10)]



# ------------------------------------------------------------------------------------------ constructed logits
def test_topk_leak_hand_computed():
    lg = torch.tensor([
        [5.0, 4.0, 1.0, 0.0],  # target 0: rank 0 (top-1)
        [5.0, 4.0, 1.0, 0.0],  # target 1: rank 1 (runner-up: a leak)
        [5.0, 4.0, 1.0, 0.0],  # target 2: rank 2 (no leak)
        [4.0, 4.0, 4.0, 0.0],  # target 2: tied with two others -> rank 0 -> a leak (ties count)
        [9.0, 0.0, 0.0, 0.0],  # target 3: not a forgotten row, ignored
    ])
    t = torch.tensor([0, 1, 2, 2, 3])
    assert topk_leak_from_logits(lg, t, [0, 1, 2]) == pytest.approx(75.0)
    assert topk_leak_from_logits(lg, t, [2]) == pytest.approx(50.0)
    assert topk_leak_from_logits(lg, t, [2], k=3) == pytest.approx(100.0)
    assert topk_leak_from_logits(lg, t, [0, 1, 2], k=1) == pytest.approx(50.0)  # rows 0 and the tie
    assert topk_leak_from_logits(lg, t, [3]) == pytest.approx(100.0)  # 9 > 0 = 0 = 0: rank 1
    assert topk_leak_from_logits(lg, t, [3], k=1) == pytest.approx(0.0)
    assert topk_leak_from_logits(lg, torch.tensor([3, 3, 3, 3, 3]), [0]) is None
    with pytest.raises(BadInput):
        topk_leak_from_logits(lg, t[:3], [0])
    with pytest.raises(BadInput):
        topk_leak_from_logits(lg, t, [0], k=0)


def test_top2_leak_maps_labels_by_name():
    # model head rows ["b", "a", "c"]; data label space ["a", "b", "c", "d"]; forget "a" (head row 1)
    x = torch.tensor([
        [3.0, 2.0, 1.0],  # true a: row 1 ranked 2nd -> leak
        [3.0, 1.0, 2.0],  # true a: row 1 ranked 3rd -> no leak
        [1.0, 3.0, 2.0],  # true a: ranked 1st -> leak (and a forget-accuracy hit)
        [1.0, 3.0, 2.0],  # true b: not forgotten
        [1.0, 3.0, 2.0],  # true d: unknown to the model, ignored
    ]).reshape(5, 1, 1, 3)
    d = LabeledData(x, torch.tensor([0, 0, 0, 1, 3]), ["a", "b", "c", "d"])
    m = FixedLogits(3)
    assert top2_leak(m, ["b", "a", "c"], d, ["a"]) == pytest.approx(200 / 3)
    assert forget_retain_accuracy(m, ["b", "a", "c"], d, ["a"])[0] == pytest.approx(100 / 3)
    assert top2_leak(m, ["b", "a", "c"], d, ["d"]) is None
    with pytest.raises(BadInput):
        top2_leak(m, ["b", "a"], d, ["a"])


def test_mia_auc_hand_computed():
    assert mia_auc_from_losses(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == pytest.approx(100.0)
    assert mia_auc_from_losses(np.array([1.0, 2.0]), np.array([0.1, 0.2])) == pytest.approx(0.0)
    # members 0.5, 1.5 vs non-members 1.0, 1.5: pairs (0.5<1.0 win, 0.5<1.5 win, 1.5>1.0 loss, 1.5=1.5 half)
    assert mia_auc_from_losses(np.array([0.5, 1.5]), np.array([1.0, 1.5])) == pytest.approx(62.5)
    with pytest.raises(BadInput):
        mia_auc_from_losses(np.array([]), np.array([1.0]))
    with pytest.raises(BadInput):
        mia_auc_from_losses(np.array([np.nan]), np.array([1.0]))


def test_per_sample_losses_and_probe_from_features_by_hand():
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).reshape(2, 1, 1, 2)
    d = LabeledData(x, torch.tensor([0, 1]), ["a", "b"])
    loss = per_sample_losses(FixedLogits(2), ["a", "b"], d)
    assert loss == pytest.approx([np.log1p(np.exp(-2.0)), np.log(2.0)])
    # two separable clusters: a probe recovers the forgotten class exactly; on shuffled labels it cannot
    rng = np.random.default_rng(0)
    ftr = np.concatenate([rng.normal(0, 0.1, (40, 3)), rng.normal(3, 0.1, (40, 3))])
    ytr = np.repeat([0, 1], 40)
    fte = np.concatenate([rng.normal(0, 0.1, (10, 3)), rng.normal(3, 0.1, (10, 3))])
    yte = np.repeat([0, 1], 10)
    r = probe_recall_from_features(ftr, ytr, fte, yte, [1])
    assert r["forget_recall"] == 100.0 and r["retain_acc"] == 100.0
    assert probe_recall_from_features(ftr, ytr, fte, yte, [])["forget_recall"] is None
    with pytest.raises(BadInput):
        probe_recall_from_features(ftr, np.zeros(80, dtype=int), fte, yte, [1])


# ------------------------------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def digits():
    train = load_data("digits:train", in_chans=1, input_size=(16, 16))
    test = load_data("digits:test", in_chans=1, input_size=(16, 16))
    return train, test


@pytest.fixture(scope="module")
def trained(digits):
    import timm

    train, _ = digits
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    train_classifier(m, train, epochs=6, lr=3e-3, batch_size=32, seed=0)
    return m.eval()


def _suppress(model: nn.Module, row: int) -> nn.Module:
    """A head-only forget: the row goes to the mean of the other rows (FIUn's reference); backbone untouched."""
    m = copy.deepcopy(model)
    keep = [i for i in range(m.fc.weight.shape[0]) if i != row]
    with torch.no_grad():
        m.fc.weight[row] = m.fc.weight[keep].mean(0)
        m.fc.bias[row] = m.fc.bias[keep].mean()
    return m


def test_probe_sees_a_class_that_the_head_forgot(trained, digits):
    train, test = digits
    probe_train = train.subset(torch.arange(0, len(train), 2))
    orig = linear_probe(trained, LABELS, probe_train, test, ["3"])
    assert orig["forget_recall"] > 85.0 and orig["retain_acc"] > 85.0
    sup = _suppress(trained, 3)
    f, r = forget_retain_accuracy(sup, LABELS, test, ["3"])
    assert f <= 2.0 and r > 90.0  # the output forgot the class ...
    after = linear_probe(sup, LABELS, probe_train, test, ["3"])
    assert after["forget_recall"] == pytest.approx(orig["forget_recall"])  # ... the features did not
    # the probe really reads labels: fit on shuffled labels, it recovers (close to) nothing
    g = torch.Generator().manual_seed(0)
    shuffled = LabeledData(probe_train.x, probe_train.y[torch.randperm(len(probe_train), generator=g)],
                           list(probe_train.labels))
    assert linear_probe(trained, LABELS, shuffled, test, ["3"])["forget_recall"] < 40.0
    feats = penultimate_features(trained, test.x[:5])
    assert feats.shape == (5, trained.fc.in_features)
    assert torch.allclose(trained.fc(feats), trained(test.x[:5]), atol=1e-5)
    with pytest.raises(BadInput):
        penultimate_features(FixedLogits(3), test.x[:2])


def test_top2_leak_on_a_real_model(trained, digits):
    _, test = digits
    orig = top2_leak(trained, LABELS, test, ["3"])
    f, _ = forget_retain_accuracy(trained, LABELS, test, ["3"])
    assert orig >= f > 85.0
    sup = _suppress(trained, 3)
    assert top2_leak(sup, LABELS, test, ["3"]) < orig
    # a row pushed just under the best retained logit on every sample is the runner-up: a 100% leak, 0% accuracy
    logits = trained(test.x).detach()
    y3 = test.y == 3
    others = logits.clone()
    others[:, 3] = -float("inf")
    crafted = logits.clone()
    crafted[:, 3] = others.max(dim=1).values - 1e-3
    assert topk_leak_from_logits(crafted[y3], test.y[y3], [3]) == pytest.approx(100.0)
    assert topk_leak_from_logits(crafted[y3], test.y[y3], [3], k=1) == pytest.approx(0.0)


def test_relearn_test_trains_a_copy_on_retained_data_only(trained, digits):
    train, test = digits
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    retain = train.select_labels([c for c in LABELS if c != "3"])
    r0 = relearn_test(trained, LABELS, retain, test, ["3"], epochs=0)
    assert (r0["forget_acc"], r0["retain_acc"]) == forget_retain_accuracy(trained, LABELS, test, ["3"])
    assert r0["steps"] == 0
    r1 = relearn_test(trained, LABELS, train, test, ["3"], epochs=1, seed=1)  # class 3 is dropped from the data
    assert r1["samples"] == len(retain) and r1["steps"] == len(retain) // 32 + (len(retain) % 32 > 1)
    assert r1["retain_acc"] > 85.0
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k]), k  # the model under test is untouched
    # the budget is really spent on retained data: a retained class (5) wiped by a large negative bias comes back
    # within the budget (retain accuracy recovers), while the forgotten class, never in the relearn data, does not
    wiped = copy.deepcopy(trained)
    with torch.no_grad():
        wiped.fc.bias[5] = -10.0
        wiped.fc.bias[3] = -10.0
    f3, r_before = forget_retain_accuracy(wiped, LABELS, test, ["3"])
    assert f3 == 0.0 and forget_retain_accuracy(wiped, LABELS, test, ["5"])[0] == 0.0 and r_before < 91.0
    r5 = relearn_test(wiped, LABELS, train, test, ["3"])
    assert r5["forget_acc"] == 0.0 and r5["retain_acc"] > 95.0
    with pytest.raises(BadInput):
        relearn_test(trained, LABELS, train.select_labels(["3"]), test, ["3"])


def test_sample_forget_metrics_on_an_overfit_model(digits):
    import timm

    train, test = digits
    members = train.subset(torch.arange(0, 150))
    torch.manual_seed(1)
    m = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    train_classifier(m, members, epochs=40, lr=3e-3, batch_size=16, seed=0)
    m.eval()
    out = sample_forget_metrics(m, LABELS, members, test)
    assert out["forgotten_acc"] == pytest.approx(100.0)
    assert out["mia_auc"] > 70.0  # members' losses are far below held-out losses
    assert out["held_out_acc"] < out["forgotten_acc"]
    unseen = train.subset(torch.arange(600, 750))  # same distribution, never trained on
    assert abs(sample_forget_metrics(m, LABELS, unseen, test)["mia_auc"] - 50.0) < 12.0
    with pytest.raises(BadInput):
        sample_forget_metrics(m, ["x", "y"], members, test)


def test_beyond_head_repo_uses_the_models_own_preprocessing(trained, digits, hub):
    from fiun_hub.research.scenarios import push_model

    train, test = digits
    push_model(hub, trained, "acme/digits", LABELS, input_size=(1, 16, 16))
    out = beyond_head_repo(hub, "acme/digits", ["3"], probe_spec="digits:train", test_spec="digits:test")
    assert out["top2_leak"] == pytest.approx(top2_leak(trained, LABELS, test, ["3"]))
    assert out["probe_forget_recall"] == pytest.approx(
        linear_probe(trained, LABELS, train, test, ["3"])["forget_recall"])
    from fiun_hub.errors import DataSpecError

    with pytest.raises(DataSpecError):
        beyond_head_repo(hub, "acme/digits", ["cat"], probe_spec="digits:train", test_spec="digits:test")
