"""fiun_hub.evaluate and fiun_hub.research.training: hand-computed metrics, FedAvg, and real training on digits."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import FixedLogits
from fiun_hub.data import LabeledData, load_data
from fiun_hub.errors import BadInput
from fiun_hub.evaluate import accuracy, forget_retain_accuracy, mia_score, predict_logits
from fiun_hub.research.training import average_state_dicts, train_classifier



def _data(pred_rows, y, labels, k):
    x = torch.full((len(y), 1, 1, k), -5.0)
    for i, r in enumerate(pred_rows):
        x[i, 0, 0, r] = 5.0
    return LabeledData(x, torch.tensor(y), list(labels))


def test_accuracy_and_predict_logits():
    d = _data([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"], 3)
    m = FixedLogits(3)
    assert accuracy(m, d) == pytest.approx(75.0)
    assert predict_logits(m, d.x, batch_size=3).shape == (4, 3)


def test_forget_retain_accuracy_by_name():
    # model head rows: ["b", "a", "c"]; the data's label space: ["a", "b", "c", "d"]
    model_labels = ["b", "a", "c"]
    # samples (true label, predicted head row):
    #   a->row1 (a, ok), a->row0 (b, wrong), b->row0 (ok), b->row0 (ok), c->row1 (wrong), d->anything (ignored)
    y = [0, 0, 1, 1, 2, 3]
    pred_rows = [1, 0, 0, 0, 1, 2]
    d = _data(pred_rows, y, ["a", "b", "c", "d"], 3)
    m = FixedLogits(3)
    f, r = forget_retain_accuracy(m, model_labels, d, ["a"])
    assert f == pytest.approx(50.0)  # 1 of 2 "a" samples
    assert r == pytest.approx(200 / 3)  # b ok, b ok, c wrong
    f, r = forget_retain_accuracy(m, model_labels, d, ["a", "c"])
    assert f == pytest.approx(100 / 3) and r == pytest.approx(100.0)
    f, r = forget_retain_accuracy(m, model_labels, d, ["d"])  # a class the model does not know
    assert f is None and r == pytest.approx(60.0)
    with pytest.raises(BadInput):
        forget_retain_accuracy(m, ["a", "b"], d, ["a"])  # 3 outputs, 2 labels


def test_average_state_dicts_exact_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9), "h": torch.tensor([3.0], dtype=torch.float16)}
    out = average_state_dicts([a, b])
    assert out["w"].tolist() == [2.0, 4.0] and out["n"].item() == 3 and out["h"].dtype == torch.float16
    assert out["h"].tolist() == [2.0]
    assert average_state_dicts([a, b], weights=[3, 1])["w"].tolist() == [1.5, 3.0]
    with pytest.raises(BadInput):
        average_state_dicts([a, {"w": torch.ones(2)}])
    with pytest.raises(BadInput):
        average_state_dicts([a, {**b, "w": torch.ones(3)}])
    with pytest.raises(BadInput):
        average_state_dicts([])


def test_average_state_dicts_of_real_models():
    import timm

    torch.manual_seed(0)
    m1 = timm.create_model("test_resnet", num_classes=4, in_chans=1)
    m2 = timm.create_model("test_resnet", num_classes=4, in_chans=1)
    avg = average_state_dicts([m1.state_dict(), m2.state_dict()])
    m3 = timm.create_model("test_resnet", num_classes=4, in_chans=1)
    m3.load_state_dict(avg)
    k = "layer1.0.conv1.weight"
    assert torch.allclose(m3.state_dict()[k], (m1.state_dict()[k] + m2.state_dict()[k]) / 2)


@pytest.fixture(scope="module")
def digits():
    train = load_data("digits:train", in_chans=1, input_size=(16, 16))
    test = load_data("digits:test", in_chans=1, input_size=(16, 16))
    return train, test


def test_train_classifier_reduces_loss_is_deterministic_and_mia_is_a_percentage(digits):
    import timm

    train, test = digits
    small = train.subset(torch.arange(0, len(train), 2))
    torch.manual_seed(0)
    base = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
    r1 = train_classifier(m1, small, epochs=4, lr=3e-3, seed=5)
    r2 = train_classifier(m2, small, epochs=4, lr=3e-3, seed=5)
    assert r1["loss"] < r1["first_loss"] and r1["loss"] < 1.0 and r2["loss"] == r1["loss"]
    assert len(r1["losses"]) == 4 and r1["steps"] > 0
    for (n, p), (_, q) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p, q), n
    assert accuracy(m1, test) > 60.0
    forget = test.select_labels(["3"])
    retain = train.select_labels([str(i) for i in range(10) if i != 3])
    s = mia_score(m1, [str(i) for i in range(10)], train.select_labels(["3"]), retain, test)
    assert 0.0 <= s <= 100.0
    with pytest.raises(BadInput):
        mia_score(m1, [str(i) for i in range(10) if i != 3], forget, retain, test)


def test_train_classifier_respects_trainable(digits):
    import timm

    train, _ = digits
    small = train.subset(torch.arange(0, 256))
    torch.manual_seed(1)
    m = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.layer1[0].conv1.weight.requires_grad_(False)  # a caller's own setting must survive the call
    r = train_classifier(m, small, epochs=1, lr=1e-2, trainable=["fc.weight", "fc.bias"])
    after = m.state_dict()
    for k in before:
        if k.startswith("fc."):
            assert not torch.equal(before[k], after[k]), k
        else:  # frozen weights and the frozen backbone's BatchNorm statistics are untouched
            assert torch.equal(before[k], after[k]), k
    assert r["trained"] == ["fc.bias", "fc.weight"]
    assert m.layer1[0].conv1.weight.requires_grad is False
    assert all(p.requires_grad for n, p in m.named_parameters() if n != "layer1.0.conv1.weight")
    assert m.training  # mode restored
    with pytest.raises(BadInput):
        train_classifier(m, small, epochs=1, lr=1e-2, trainable=["nope"])
