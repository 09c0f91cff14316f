"""fiun_hub.research.baselines on real tiny scenarios: retrain (gold standard), fine-tune and gradient ascent,
propagated down the DAG in memory; and FIUn's forget publishing a revision for every affected repo."""
from __future__ import annotations

import shutil

import pytest
import torch

from fiun_hub.research.baselines import (
    BaselineResult,
    evaluate_state,
    finetune,
    gradient_ascent,
    load_built,
    retrain,
    run_baseline,
)
from fiun_hub.errors import BadInput, UnlearnError
from fiun_hub.hub.local import LocalHub
from fiun_hub.lineage import resolve
from fiun_hub.research.scenarios import build_scenario, head_params
from fiun_hub.unlearn import forget

TINY = dict(shard_size=48, epochs=8, batch_size=16, lr=1e-2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hub = LocalHub.init(tmp_path_factory.mktemp("baselines") / "hub")
    fl = build_scenario("fl", hub, depth=4, width=2, **TINY)
    tl = build_scenario("tl", hub, width=2, **TINY)
    return hub, fl, tl


def _heads(hub, scn):
    return {r: (hub.head(r), len(hub.commits(r))) for r in scn.repos}


def _check_shapes(hub, scn, res: BaselineResult):
    assert set(res.states) == set(scn.affected(res.origins))
    for repo, state in res.states.items():
        ref = load_built(hub, scn, repo).state_dict()
        assert set(state) == set(ref)
        for k, v in ref.items():
            assert state[k].shape == v.shape and state[k].dtype == v.dtype, f"{repo}:{k}"
            if v.is_floating_point():
                assert torch.isfinite(state[k]).all()
    assert res.seconds > 0 and set(res.node_seconds) == set(res.states)


def test_retrain_is_gold_standard(setup):
    hub, fl, _ = setup
    before = _heads(hub, fl)
    res = retrain(fl, hub, fl.forget_classes)
    assert res.method == "retrain" and res.forget_classes == ["3"]
    _check_shapes(hub, fl, res)
    assert list(res.states) == fl.affected() == fl.repos  # topological order, root origin
    ev = res.evaluate(fl, hub)
    for repo, v in ev.items():
        assert v["forget_acc"] is not None and v["forget_acc"] <= 10.0, (repo, v)  # never saw the class
        assert v["retain_acc"] > 20.0, (repo, v)
    # the root origin was retrained from scratch: same seeded init, other data -> other weights
    root = fl.origin
    built_root = load_built(hub, fl, root).state_dict()
    assert not torch.equal(res.states[root]["fc.weight"], built_root["fc.weight"])
    # fewer samples than the built shards (forget-class samples removed)
    assert all(res.info[r]["samples"] < len(fl.nodes[r].shard) for r in fl.repos)
    assert _heads(hub, fl) == before  # nothing published


def test_finetune_and_gradient_ascent_shapes(setup):
    hub, fl, _ = setup
    before = _heads(hub, fl)
    ft = finetune(fl, hub, fl.forget_classes)
    _check_shapes(hub, fl, ft)
    for repo in fl.repos:
        assert ft.info[repo]["epochs"] == max(1, round(0.25 * fl.nodes[repo].recipe.epochs))
        assert not torch.equal(ft.states[repo]["fc.weight"], load_built(hub, fl, repo).state_dict()["fc.weight"])
    ga = gradient_ascent(fl, hub, fl.forget_classes, steps=3)
    _check_shapes(hub, fl, ga)
    assert all(ga.info[r]["forget_samples"] > 0 and ga.info[r]["steps"] <= 3 for r in fl.repos)
    assert _heads(hub, fl) == before


def test_tl_propagation_uses_parent_backbone(setup):
    hub, _, tl = setup
    base = tl.origin
    for method in ("finetune", "gradient_ascent"):
        res = run_baseline(method, tl, hub, tl.forget_classes, **({"steps": 2} if method != "finetune" else {}))
        _check_shapes(hub, tl, res)
        heads = set(head_params(load_built(hub, tl, base)))
        for child in tl.children(base):
            child_built = load_built(hub, tl, child).state_dict()
            for k, v in res.states[base].items():
                if k not in heads:  # the child runs on its parent's (new) backbone
                    assert torch.equal(res.states[child][k], v), (method, child, k)
            if not any(c in tl.nodes[child].labels for c in tl.forget_classes) and method == "gradient_ascent":
                assert torch.equal(res.states[child]["fc.weight"], child_built["fc.weight"])


def test_unaffected_repos_are_not_touched(setup):
    hub, fl, _ = setup
    origin = next(r for r in fl.repos if r.endswith("client-1-r2"))
    expected = fl.affected([origin])
    assert len(expected) == 2 and expected[0] == origin  # the client and the last aggregate
    before = _heads(hub, fl)
    for method, kw in (("retrain", {}), ("finetune", {}), ("ga", {"steps": 2})):
        res = run_baseline(method, fl, hub, ["3"], origins=[origin], **kw)
        assert list(res.states) == expected
        _check_shapes(hub, fl, res)
    assert _heads(hub, fl) == before


def test_evaluate_state_matches_scenario_evaluate(setup):
    hub, _, tl = setup
    test = tl.load_test()
    ref = tl.evaluate(hub, tl.forget_classes, test, revision="built")
    for repo in tl.repos:
        got = evaluate_state(hub, repo, load_built(hub, tl, repo).state_dict(), test, tl.forget_classes)
        assert got == {k: ref[repo][k] for k in ("forget_acc", "retain_acc")}
    with pytest.raises(BadInput):
        evaluate_state(hub, tl.origin, {"fc.weight": torch.zeros(1)}, test, tl.forget_classes)


def test_bad_requests(setup):
    hub, fl, _ = setup
    with pytest.raises(UnlearnError):
        retrain(fl, hub, ["cat"])
    with pytest.raises(BadInput):
        run_baseline("distill", fl, hub, ["3"])
    with pytest.raises(BadInput):
        finetune(fl, hub, ["3"], origins=["demo/nope"])


def test_fiun_forget_publishes_every_affected_repo(setup, tmp_path):
    src, fl, _ = setup
    shutil.copytree(src.root, tmp_path / "hub", symlinks=True)
    hub = LocalHub(tmp_path / "hub")
    plan, res = forget(hub, [fl.origin], classes=fl.forget_classes)
    assert not plan.problems and not res.noop
    assert set(res.revisions) == set(fl.affected()) == set(fl.repos)
    g = resolve(hub)
    for repo in fl.repos:
        assert res.revisions[repo]["from"] == fl.nodes[repo].revision
        assert hub.head(repo) == res.revisions[repo]["to"] != fl.nodes[repo].revision
        assert g.nodes[repo]["unlearned"][-1]["request"] == res.request_id
        assert g.nodes[repo]["sidecar"] == "ok"
    ev = fl.evaluate(hub, fl.forget_classes)  # heads: the unlearned revisions load and evaluate
    assert set(ev) == set(fl.repos) and all(v["revision"] == res.revisions[r]["to"] for r, v in ev.items())
