"""FIUn maths (fiun_hub.dampening): unit properties plus one real forget on a trained timm model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fiun_hub import dampening as D
from fiun_hub.errors import UnlearnError

HEAD = ["fc.weight", "fc.bias"]


# --------------------------------------------------------------------------------------------------- FIMs


def test_unlearning_fim_is_count_weighted_mean():
    cf = {"a": {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor(2.0)},
          "b": {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor(0.0)},
          "c": {"w": torch.tensor([100.0, 100.0]), "b": torch.tensor(100.0)}}
    u = D.unlearning_fim(cf, {"a": 1, "b": 3, "c": 50}, ["a", "b"])
    assert torch.allclose(u["w"], torch.tensor([(1 + 9) / 4, 12 / 4]))
    assert torch.allclose(u["b"], torch.tensor(2 / 4))
    with pytest.raises(UnlearnError):
        D.unlearning_fim(cf, {"a": 1, "b": 3}, ["z"])
    with pytest.raises(UnlearnError):
        D.unlearning_fim(cf, {"a": 0, "b": 3}, ["a"])


def test_retain_fim_removes_forget_classes_exactly():
    g = torch.Generator().manual_seed(0)
    cf = {c: {"w": torch.rand(3, 4, generator=g)} for c in "abc"}
    counts = {"a": 5, "b": 2, "c": 3}
    model = {"w": sum(counts[c] * cf[c]["w"] for c in cf) / 10}
    r = D.retain_fim(model, cf, counts, ["b"])
    assert torch.allclose(r["w"], (5 * cf["a"]["w"] + 3 * cf["c"]["w"]) / 8, atol=1e-6)
    # a forget class the model never saw: the model FIM itself
    assert torch.equal(D.retain_fim(model, cf, {**counts, "z": 0}, ["z"])["w"], model["w"].float())
    with pytest.raises(UnlearnError):
        D.retain_fim(model, cf, counts, ["a", "b", "c"])


def test_align_rows_by_name_gained_lost_reordered():
    w = torch.arange(12.0).reshape(3, 4)  # rows a, b, c
    fim = {"fc.weight": w, "fc.bias": torch.tensor([1.0, 2.0, 3.0]), "conv.weight": torch.ones(2, 2)}
    out = D.align_rows(fim, ["a", "b", "c"], ["c", "new", "a"], HEAD)  # b lost, new gained, reordered
    assert torch.equal(out["fc.weight"][0], w[2]) and torch.equal(out["fc.weight"][2], w[0])
    assert torch.equal(out["fc.weight"][1], torch.zeros(4))
    assert out["fc.bias"].tolist() == [3.0, 0.0, 1.0]
    assert torch.equal(out["conv.weight"], fim["conv.weight"])
    with pytest.raises(UnlearnError):  # head rows do not match the source labels
        D.align_rows(fim, ["a", "b"], ["a"], HEAD)
    with pytest.raises(UnlearnError):
        D.check_shapes({"conv.weight": torch.ones(3, 3)}, {"conv.weight": torch.ones(2, 2)})


def test_merge_is_elementwise_max_with_optional_scale():
    a = {"w": torch.tensor([1.0, 5.0, 0.0]), "only_a": torch.tensor([2.0])}
    b = {"w": torch.tensor([3.0, 2.0, 0.0])}
    m = D.merge_fims([a, b])
    assert m["w"].tolist() == [3.0, 5.0, 0.0] and m["only_a"].tolist() == [2.0]
    assert D.merge_fims([a, b], scale_per_extra_origin=5.0)["w"].tolist() == pytest.approx([0.6, 1.0, 0.0])
    assert D.merge_fims([a], scale_per_extra_origin=5.0)["w"].tolist() == [1.0, 5.0, 0.0]
    with pytest.raises(UnlearnError):
        D.merge_fims([a, {"w": torch.ones(2)}])
    with pytest.raises(UnlearnError):
        D.merge_fims([])


# --------------------------------------------------------------------------------------------------- dampen


def test_dampen_never_grows_and_leaves_unselected_bit_identical():
    g = torch.Generator().manual_seed(1)
    p = {"w": torch.randn(50, 20, generator=g), "untouched": torch.randn(7, generator=g)}
    f = {"w": torch.rand(50, 20, generator=g)}
    m = {"w": torch.rand(50, 20, generator=g) * 2}
    for alpha, lam, ex in ((1.0, 1.0, 1.0), (0.5, 3.0, 1.0), (2.0, 0.1, 2.0)):
        out = D.dampen(p, f, m, alpha=alpha, lam=lam, exponent=ex)
        assert bool((out["w"].abs() <= p["w"].abs()).all())
        sel = m["w"] > alpha * f["w"]
        assert torch.equal(out["w"][~sel], p["w"][~sel])
        assert torch.equal(out["untouched"], p["untouched"])
    # the paper rule exactly
    out = D.dampen(p, f, m, alpha=1.0, lam=1.0)
    sel = m["w"] > f["w"]
    assert torch.allclose(out["w"][sel], p["w"][sel] * (f["w"][sel] / m["w"][sel]).clamp(max=1))


def test_dampen_guards_zero_and_non_finite():
    p = {"w": torch.tensor([1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0])}
    f = {"w": torch.tensor([0.0, 0.0, float("nan"), 1.0, float("inf"), 1.0, 1.0])}
    m = {"w": torch.tensor([1.0, 0.0, 5.0, float("nan"), 5.0, float("inf"), -3.0])}
    out = D.dampen(p, f, m, alpha=1.0, lam=1.0)["w"]
    assert bool(torch.isfinite(out).all())
    # F=0<M -> 0; F=M=0 unselected; NaN unselected; F=Inf unselected; M=Inf -> 0; negative M unselected
    assert out.tolist() == [0.0, -2.0, 3.0, 4.0, 5.0, 0.0, 7.0]
    with pytest.raises(UnlearnError):
        D.dampen({"w": torch.tensor([float("nan")])}, {"w": torch.zeros(1)}, {"w": torch.ones(1)}, alpha=1, lam=1)
    with pytest.raises(UnlearnError):
        D.dampen(p, f, {"w": torch.ones(3)}, alpha=1, lam=1)
    with pytest.raises(UnlearnError):
        D.dampen(p, f, m, alpha=-1, lam=1)


def test_dampen_toward_reference_never_moves_away():
    g = torch.Generator().manual_seed(2)
    p = {"w": torch.randn(10, 6, generator=g)}
    ref = {"w": torch.randn(10, 6, generator=g)}
    f = {"w": torch.rand(10, 6, generator=g)}
    m = {"w": torch.rand(10, 6, generator=g) * 3}
    out = D.dampen(p, f, m, alpha=1.0, lam=0.5, reference=ref)["w"]
    assert bool(((out - ref["w"]).abs() <= (p["w"] - ref["w"]).abs() + 1e-6).all())
    sel = m["w"] > f["w"]
    assert torch.equal(out[~sel], p["w"][~sel])


def test_head_helpers():
    w = torch.tensor([[1.0, 1.0], [3.0, 5.0], [5.0, 9.0]])  # rows a, b, c
    params = {"fc.weight": w, "fc.bias": torch.tensor([0.0, 2.0, 4.0])}
    ref = D.retained_mean_reference(params, ["a", "b", "c"], ["a"], HEAD)
    assert ref["fc.weight"].tolist() == [[4.0, 7.0]] * 3 and ref["fc.bias"].tolist() == [3.0] * 3
    m = D.forget_rows_only({"fc.weight": torch.ones(3, 2), "fc.bias": torch.ones(3), "x": torch.ones(1)},
                           ["a", "b", "c"], ["b"], HEAD)
    assert m["fc.weight"][:, 0].tolist() == [0.0, 1.0, 0.0] and m["fc.bias"].tolist() == [0.0, 1.0, 0.0]
    assert m["x"].tolist() == [1.0]
    with pytest.raises(UnlearnError):
        D.retained_mean_reference(params, ["a", "b", "c"], ["a", "b", "c"], HEAD)


def test_dampen_floor_keeps_a_share_and_zero_floor_is_the_old_rule():
    p = {"w": torch.tensor([2.0, -4.0, 1.0])}
    f, m = {"w": torch.tensor([1.0, 0.0, 5.0])}, {"w": torch.tensor([100.0, 3.0, 1.0])}
    plain = D.dampen(p, f, m)
    assert torch.equal(D.dampen(p, f, m, floor=0.0)["w"], plain["w"])
    half = D.dampen(p, f, m, floor=0.5)["w"]
    assert half.tolist() == [1.0, -2.0, 1.0]  # beta 0.0001 and 0 raised to 0.5; the unselected entry untouched
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(UnlearnError):
            D.dampen(p, f, m, floor=bad)


def test_samplewise_reference_is_the_class_mix_of_the_forgotten_labels():
    cf = {"a": {"w": torch.tensor([1.0, 0.0])}, "b": {"w": torch.tensor([0.0, 4.0])}}
    fm = {"w": torch.tensor([9.0, 9.0])}
    ref = D.samplewise_reference_fim(fm, cf, {"a": 10, "b": 10}, {"a": 3, "b": 1, "z": 5})
    assert torch.allclose(ref["w"], torch.tensor([0.75, 1.0]))  # z: no class FIM here, left out
    # none of the samples' labels here (or only labels without a training sample): the model FIM itself
    assert torch.equal(D.samplewise_reference_fim(fm, cf, {"a": 0, "b": 10}, {"a": 2})["w"], fm["w"])


def test_top_ratio_only_keeps_k_entries_of_the_samples_rows():
    m = {"fc.weight": torch.tensor([[4.0, 1.0], [9.0, 8.0], [1.0, 7.0]]), "fc.bias": torch.tensor([5.0, 1.0, 1.0])}
    f = {"fc.weight": torch.ones(3, 2), "fc.bias": torch.ones(3)}
    out = D.top_ratio_only(m, f, ["x", "y", "z"], ["x", "z"], HEAD, 2)
    # row "y" is never a candidate, however large; of rows x, z the two largest ratios are 7 (z) and 5 (bias of x)
    assert out["fc.weight"].tolist() == [[0.0, 0.0], [0.0, 0.0], [0.0, 7.0]]
    assert out["fc.bias"].tolist() == [5.0, 0.0, 0.0]


def test_sample_forget_update_changes_at_most_topk_entries_and_keeps_inert_rows_inert():
    g = torch.Generator().manual_seed(0)
    labels = [str(i) for i in range(4)]
    params = {"fc.weight": torch.randn(4, 6, generator=g), "fc.bias": torch.randn(4, generator=g)}
    cf = {c: {n: torch.rand(t.shape, generator=g) for n, t in params.items()} for c in labels}
    counts = {c: 10 for c in labels}
    fm = {n: sum(cf[c][n] for c in labels) / 4 for n in params}
    mfim = {n: 3 * torch.rand(t.shape, generator=g) for n, t in params.items()}
    new = D.sample_forget_update(params, labels, fm, cf, counts, mfim, {"1": 2, "2": 1}, HEAD, topk=5)
    changed = sum(int((new[n] != params[n]).sum()) for n in params)
    assert 0 < changed <= 5
    for n in params:  # rows of labels no forgotten sample carries are bit-identical
        assert torch.equal(new[n][[0, 3]], params[n][[0, 3]])
    unbudgeted = D.sample_forget_update(params, labels, fm, cf, counts, mfim, {"1": 2, "2": 1}, HEAD, topk=None)
    assert sum(int((unbudgeted[n] != params[n]).sum()) for n in params) > changed
    inert = D.sample_forget_update(params, labels, fm, cf, counts, mfim, {"1": 2}, HEAD, inert=["3"])
    # the inert row goes to the ranked-last reference of the updated head: the retained rows' mean weight, and a
    # bias below every retained row's, so that the class never wins again
    w, b = inert["fc.weight"].double(), inert["fc.bias"].double()
    assert torch.allclose(w[3], w[[0, 1, 2]].mean(0), atol=1e-6)
    assert b[3] < b[[0, 1, 2]].min()
    ref = D.ranked_last_reference(inert, labels, ["3"], HEAD, fm)
    assert torch.allclose(b[3], ref["fc.bias"][0].double(), atol=1e-6)


def test_the_stacked_update_of_several_models_is_each_models_own_update():
    """forget_update_stacked is the one update: on a stack of 3 models (same labels, their own weights, FIMs and
    counts) it gives, model by model, the bytes of class_forget_update, for every ablation switch and with rows
    forgotten earlier; so the batched path could run the switches too."""
    g = torch.Generator().manual_seed(3)
    labels = [str(i) for i in range(6)]
    names = HEAD + ["conv.weight"]
    models = []
    for b in range(3):
        params = {"fc.weight": torch.randn(6, 5, generator=g), "fc.bias": torch.randn(6, generator=g),
                  "conv.weight": torch.randn(4, 3, generator=g)}
        counts = {c: 4 + (b * 3 + i) % 5 for i, c in enumerate(labels)}
        cf = {c: {n: torch.rand(params[n].shape, generator=g) for n in names} for c in labels}
        for i, c in enumerate(labels):
            for n in HEAD:
                cf[c][n][i] += 2.0
        fm = {n: sum(counts[c] * cf[c][n] for c in labels) / sum(counts.values()) for n in names}
        models.append((params, fm, cf, counts, D.unlearning_fim(cf, counts, ["2", "4"])))
    forget, inert = ["2", "4"], ["0"]
    stack = lambda get: {n: torch.stack([get(m)[n] for m in models]) for n in names}  # noqa: E731
    drops = [(torch.tensor([float(m[3][c]) for m in models], dtype=torch.float64), stack(lambda m: m[2][c]))
             for c in forget]
    totals = torch.tensor([float(sum(m[3].values())) for m in models], dtype=torch.float64)
    changed = set()
    for switches in ({}, {"use_retain_fim": False}, {"forget_rows": False}, {"mean_reference": False},
                     {"whole_rows": False}, {"reference_rule": "elementwise-min"}, {"reference_rule": "retained-mean"},
                     {"alpha": 10.0, "lam": 1.0}):
        got = D.forget_update_stacked(stack(lambda m: m[0]), stack(lambda m: m[1]), stack(lambda m: m[4]), HEAD,
                                      [c in forget for c in labels], [c in inert for c in labels], totals=totals,
                                      drops=drops, **switches)
        for b, (params, fm, cf, counts, u) in enumerate(models):
            want = D.class_forget_update(params, labels, fm, cf, counts, u, forget, HEAD, inert=inert, **switches)
            for n in names:
                assert torch.equal(got[n][b], want[n]), (switches, b, n)
            changed.add(tuple(float(want["fc.bias"][i]) for i in range(6)))
    assert len(changed) > 4  # the switches do change the update


def test_normalized_head_fisher_matches_autograd():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    h = torch.randn(12, 5).relu()
    y = torch.randint(0, 3, (12,))
    mf, cf, counts = D.normalized_head_fisher(h, lin(h), y)
    acc_w, acc_b = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for i in range(12):
        gw, gb = torch.autograd.grad(F.cross_entropy(lin(h[i:i + 1]), y[i:i + 1]), [lin.weight, lin.bias])
        n2 = gw.double().pow(2).sum() + gb.double().pow(2).sum()
        acc_w += gw.double() ** 2 / n2
        acc_b += gb.double() ** 2 / n2
    assert torch.allclose(mf["weight"].double(), acc_w / 12, atol=1e-6)
    assert torch.allclose(mf["bias"].double(), acc_b / 12, atol=1e-6)
    assert float(mf["weight"].sum() + mf["bias"].sum()) == pytest.approx(1.0, abs=1e-5)
    # model FIM is the count-weighted mean of the class FIMs
    tot = sum(counts[c] * cf[c]["weight"] for c in cf) / 12
    assert torch.allclose(tot, mf["weight"], atol=1e-6)


# --------------------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def trained():
    import timm

    from fiun_hub.data import load_data
    from fiun_hub.research.training import train_classifier

    torch.manual_seed(0)
    train = load_data("digits:train", in_chans=1, input_size=(16, 16))
    test = load_data("digits:test", in_chans=1, input_size=(16, 16))
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    train_classifier(model, train, epochs=6, lr=3e-3, seed=0)
    model.eval()
    return model, train, test


def _apply(model, new):
    m = copy.deepcopy(model)
    with torch.no_grad():
        named = dict(m.named_parameters())
        for n, t in new.items():
            named[n].copy_(t)
    return m


def test_trained_model_forgets_class_and_keeps_the_rest(trained):
    from fiun_hub.evaluate import forget_retain_accuracy

    model, train, test = trained
    labels = [str(i) for i in range(10)]
    with torch.no_grad():
        h = model.forward_head(model.forward_features(train.x), pre_logits=True)
        z = model.fc(h)
    mf, cf, cnt = D.normalized_head_fisher(h, z, train.y)
    ren = lambda d: {"fc.weight": d["weight"], "fc.bias": d["bias"]}  # noqa: E731
    model_fim = ren(mf)
    class_fims = {labels[c]: ren(v) for c, v in cf.items()}
    counts = {labels[c]: n for c, n in cnt.items()}
    forget = ["3"]
    u = D.unlearning_fim(class_fims, counts, forget)
    params = {n: p.detach() for n, p in model.named_parameters() if n in HEAD}
    f0, r0 = forget_retain_accuracy(model, labels, test, forget)
    assert f0 > 80 and r0 > 80

    new = D.class_forget_update(params, labels, model_fim, class_fims, counts, u, forget, HEAD)
    f1, r1 = forget_retain_accuracy(_apply(model, new), labels, test, forget)
    assert f1 <= 5.0, f1
    assert r1 >= r0 - 3.0, (r0, r1)
    # only the forgotten row changed
    keep = [i for i in range(10) if i != 3]
    assert torch.equal(new["fc.weight"][keep], params["fc.weight"][keep])
    assert torch.equal(new["fc.bias"][keep], params["fc.bias"][keep])

    # a descendant whose head is reordered uses the aligned U and its own FIMs: same outcome
    perm = list(reversed(range(10)))
    child = copy.deepcopy(model)
    with torch.no_grad():
        child.fc.weight.copy_(model.fc.weight[perm])
        child.fc.bias.copy_(model.fc.bias[perm])
    c_labels = [labels[i] for i in perm]
    c_fim = {n: t[perm] for n, t in model_fim.items()}
    c_class = {c: {n: t[perm] for n, t in v.items()} for c, v in class_fims.items()}
    ua = D.align_rows(u, labels, c_labels, HEAD)
    c_params = {n: p.detach() for n, p in child.named_parameters() if n in HEAD}
    c_new = D.class_forget_update(c_params, c_labels, c_fim, c_class, counts, ua, forget, HEAD)
    fc1, rc1 = forget_retain_accuracy(_apply(child, c_new), c_labels, test, forget)
    assert (fc1, rc1) == pytest.approx((f1, r1))


def _transfer_child(model, train, init_seed=None):
    """A transfer child of the trained model: its frozen backbone and a new 6-label head fit on its features (full
    batch, deterministic), with its own head FIMs; 4 of the 6 classes to forget. ``init_seed``: the new head's
    init, the same whatever ran before."""
    idx = [7, 3, 1, 5, 0, 8]
    c_labels = [str(i) for i in idx]
    child = copy.deepcopy(model)
    if init_seed is not None:
        torch.manual_seed(init_seed)
    child.reset_classifier(len(idx))
    sub = train.to_label_space(c_labels)
    with torch.no_grad():
        h = child.forward_head(child.forward_features(sub.x), pre_logits=True)
    torch.manual_seed(1)
    opt = torch.optim.Adam(child.fc.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(child.fc(h), sub.y).backward()
        opt.step()
    child.eval()
    with torch.no_grad():
        z = child.fc(h)
    mf, cf, cnt = D.normalized_head_fisher(h, z, sub.y)
    ren = lambda d: {"fc.weight": d["weight"], "fc.bias": d["bias"]}  # noqa: E731
    model_fim, class_fims = ren(mf), {c_labels[c]: ren(v) for c, v in cf.items()}
    counts = {c_labels[c]: n for c, n in cnt.items()}
    return child, c_labels, model_fim, class_fims, counts, ["1", "3", "5", "7"]


def test_forgotten_rows_rank_last_where_few_classes_are_retained(trained):
    """Issue 16's top-2 leak: a transfer child of the trained model (its frozen backbone, a new 6-label head) forgets
    4 of its 6 classes. Dampened toward the retained rows' mean, a forgotten logit sits between the 2 retained ones
    and the forgotten class is ranked 2nd on about half of its test samples; the default ranked-last reference puts
    it below both (a model retrained without the classes: ~0%)."""
    from fiun_hub.evaluate import forget_retain_accuracy, top2_leak

    model, train, test = trained
    child, c_labels, model_fim, class_fims, counts, forget = _transfer_child(model, train)
    u = D.unlearning_fim(class_fims, counts, forget)
    params = {n: p.detach() for n, p in child.named_parameters() if n in HEAD}
    f0, r0 = forget_retain_accuracy(child, c_labels, test, forget)
    assert f0 > 80 and r0 > 80, (f0, r0)
    leak = {}
    for rule in ("ranked-last", "retained-mean"):
        new = D.class_forget_update(params, c_labels, model_fim, class_fims, counts, u, forget, HEAD,
                                    reference_rule=rule)
        m = _apply(child, new)
        f1, r1 = forget_retain_accuracy(m, c_labels, test, forget)
        assert f1 <= 2.0 and r1 >= r0 - 5.0, (rule, f0, r0, f1, r1)
        leak[rule] = top2_leak(m, c_labels, test, forget)
    assert leak["ranked-last"] <= 5.0, leak
    assert leak["retained-mean"] > 20.0, leak  # the rule before issue 16: the class is the runner-up


def test_forgotten_rows_go_whole_to_the_reference_even_where_an_entry_is_not_selected(trained):
    """Issue 16, the Fashion-MNIST leak: entry by entry, a forgotten row's bias whose unlearning FIM is not above
    alpha times the retain FIM stays where it was while the rest of the row moves, and the half-moved logit keeps the
    class ranked 2nd. Here the same transfer child as above at alpha = 10 (SSD's value, in docs/method.md's sensitivity
    grid): forgotten biases are not selected, and entry by entry the classes are ranked 1st or 2nd on most of their
    test samples; with whole rows (the default) every forgotten row is the ranked-last reference row, the leak is 0,
    and the retained rows are bit-identical."""
    from fiun_hub.evaluate import forget_retain_accuracy, top2_leak

    model, train, test = trained
    child, c_labels, model_fim, class_fims, counts, forget = _transfer_child(model, train, init_seed=0)
    u = D.unlearning_fim(class_fims, counts, forget)
    f_r = D.retain_fim(model_fim, class_fims, counts, forget)
    alpha = 10.0
    unselected = [c_labels[i] for i in range(6)
                  if c_labels[i] in forget and float(u["fc.bias"][i]) <= alpha * float(f_r["fc.bias"][i])]
    assert unselected, "the construction needs a forgotten bias that entry-wise selection leaves"
    params = {n: p.detach() for n, p in child.named_parameters() if n in HEAD}
    f0, r0 = forget_retain_accuracy(child, c_labels, test, forget)
    leak = {}
    for whole in (False, True):
        new = D.class_forget_update(params, c_labels, model_fim, class_fims, counts, u, forget, HEAD, alpha=alpha,
                                    whole_rows=whole)
        m = _apply(child, new)
        f1, r1 = forget_retain_accuracy(m, c_labels, test, forget)
        leak[whole] = top2_leak(m, c_labels, test, forget)
        if whole:
            assert f1 <= 2.0 and r1 >= r0 - 5.0, (f0, r0, f1, r1)
            ref = D.ranked_last_reference(params, c_labels, forget, HEAD, model_fim)
            rows = [i for i, lab in enumerate(c_labels) if lab in forget]
            keep = [i for i, lab in enumerate(c_labels) if lab not in forget]
            for n in HEAD:
                assert torch.equal(new[n][rows], ref[n][rows])
                assert torch.equal(new[n][keep], params[n][keep])
    assert leak[True] <= 5.0, leak
    assert leak[False] > 10.0, leak  # entry by entry (the rule before): the unselected bias keeps the class 2nd
