"""fiun_hub.research.scenarios: the four frameworks built for real (tiny timm models on digits) into a real LocalHub."""
from __future__ import annotations

import collections
import shutil

import networkx as nx
import pytest
import torch

from fiun_hub.fisher import DEFAULT_ESTIMATOR
from fiun_hub.errors import BadInput
from fiun_hub.evaluate import accuracy
from fiun_hub.hub.local import LocalHub
from fiun_hub.lineage import resolve
from fiun_hub.models import load_model
from fiun_hub.research.scenarios import Scenario, build_scenario, head_params, plan_scenario
from fiun_hub.sidecars import load_sidecars
from fiun_hub.unlearn import forget

# tiny: ~64 samples per shard, a few dozen Adam steps per model; enough to beat chance clearly
TINY = dict(shard_size=64, epochs=10, batch_size=16, lr=1e-2)
SHAPES = {"fl": dict(depth=4, width=2), "ddpl": dict(depth=2, width=2), "il": dict(depth=3),
          "tl": dict(width=2, shard_size=48)}  # the TL base trains on two shards


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """All four scenarios, built once into one hub (distinct repo prefixes)."""
    hub = LocalHub.init(tmp_path_factory.mktemp("scenarios") / "hub")
    scns = {name: build_scenario(name, hub, **{**TINY, **SHAPES[name]}) for name in SHAPES}
    return hub, scns


@pytest.fixture(scope="module")
def graph(built):
    return resolve(built[0])


def _copy_hub(hub: LocalHub, dest) -> LocalHub:
    shutil.copytree(hub.root, dest, symlinks=True)
    return LocalHub(dest)


# ----------------------------------------------------------------------------------------------- lineage
@pytest.mark.parametrize("name", list(SHAPES))
def test_repos_parents_relations_labels_in_hub(built, graph, name):
    hub, scns = built
    scn = scns[name]
    for repo, node in scn.nodes.items():
        assert hub.repo_exists(repo)
        assert hub.head(repo) == node.revision
        assert set(graph.predecessors(repo)) == set(node.parents)
        assert graph.nodes[repo]["labels"] == node.labels  # card labels = head rows = classes trained on
        assert graph.nodes[repo]["relation"] == node.relation
        for p in node.parents:
            edge = graph.edges[p, repo]
            assert edge["relation"] == node.relation
            assert edge["revision"] == scn.nodes[p].revision  # pinned to the parent's built revision
    # topological order
    order = scn.repos
    for repo, node in scn.nodes.items():
        assert all(order.index(p) < order.index(repo) for p in node.parents)
    assert set(scn.affected()) >= set(scn.origins)


def test_fl_depth_and_merges(built, graph):
    scn = built[1]["fl"]
    sub = graph.subgraph(scn.repos)
    assert nx.dag_longest_path_length(sub) >= 4
    assert scn.depth >= 4
    assert scn.roots() == scn.origins == [scn.origin]
    merges = [n for n in scn.nodes.values() if n.relation == "merge"]
    assert len(merges) >= 2
    for m in merges:
        assert len(m.parents) >= 2 and m.recipe.init == "parents-average"
    # clients of a round train on disjoint shards
    r1 = [n for n in scn.nodes.values() if n.role == "client" and n.repo.endswith("-r1")]
    shards = [set(n.shard) for n in r1]
    assert len(r1) == 2 and not (shards[0] & shards[1])
    assert scn.affected() == scn.repos  # the root's data reaches every model


def test_ddpl_workers_aggregate_multi_origin(built):
    scn = built[1]["ddpl"]
    roots = scn.roots()
    assert len(roots) == 2 and scn.origins == roots
    agg = [n for n in scn.nodes.values() if n.role == "aggregate"]
    assert len(agg) == 1 and agg[0].relation == "merge" and agg[0].parents == roots
    cont = [n for n in scn.nodes.values() if n.parents == [agg[0].repo]]
    assert len(cont) == 2 and all(n.relation == "finetune" for n in cont)
    assert scn.depth == 2


def test_il_heads_grow_and_reorder(built, graph):
    hub, scns = built
    scn = scns["il"]
    chain = scn.repos
    assert len(chain) == 4 and scn.depth == 3
    reordered = False
    for parent, child in zip(chain, chain[1:]):
        pl, cl = scn.nodes[parent].labels, scn.nodes[child].labels
        assert scn.nodes[child].parents == [parent]
        assert set(pl) < set(cl)  # strictly more labels
        reordered |= cl[:len(pl)] != pl
        model, config, _ = load_model(hub, child)
        assert config.labels == cl == graph.nodes[child]["labels"]
        assert model.get_classifier().weight.shape[0] == len(cl)
    assert reordered, "some stage must order its head rows differently from its parent"
    assert len(scn.nodes[chain[0]].labels) < len(scn.nodes[chain[-1]].labels)


def test_tl_children_keep_backbone_bit_identical(built):
    hub, scns = built
    scn = scns["tl"]
    base = scn.roots()[0]
    parent, _, _ = load_model(hub, base)
    pstate = parent.state_dict()
    heads = set(head_params(parent))
    children = scn.children(base)
    assert len(children) == 2
    for child in children:
        node = scn.nodes[child]
        assert node.recipe.init == "parent-frozen-backbone" and node.recipe.trainable == "head"
        model, config, _ = load_model(hub, child)
        state = model.state_dict()
        for k, v in pstate.items():
            if k not in heads:
                assert torch.equal(state[k], v), f"{child}: backbone tensor {k} changed"
        assert state["fc.weight"].shape[0] == len(node.labels) < len(scn.nodes[base].labels)
        assert set(node.labels) < set(scn.nodes[base].labels)
    assert scn.nodes[children[0]].labels != scn.nodes[children[1]].labels


# ----------------------------------------------------------------------------------------------- sidecars, accuracy
@pytest.mark.parametrize("name", list(SHAPES))
def test_every_repo_has_fresh_sidecars_on_its_own_shard(built, graph, name):
    hub, scns = built
    scn = scns[name]
    train = scn.load_train()
    for repo, node in scn.nodes.items():
        assert graph.nodes[repo]["sidecar"] == "ok"
        sc = load_sidecars(hub, repo)  # raises if missing or stale
        files = hub.list_files(repo)
        assert sc.metadata["weights_sha256"] == files["model.safetensors"]
        assert sc.estimator == DEFAULT_ESTIMATOR and sc.layers == ["fc.weight", "fc.bias"]
        assert sc.labels == node.labels
        assert sc.metadata["dataset"] == scn.train_data(repo).fingerprint
        expected = collections.Counter(train.labels[int(train.y[i])] for i in node.shard)
        assert {k: v for k, v in sc.counts.items() if v} == dict(expected)


@pytest.mark.parametrize("name", list(SHAPES))
def test_models_beat_chance_on_heldout(built, name):
    hub, scns = built
    scn = scns[name]
    test = scn.load_test()
    assert test.spec == "digits:test"
    for repo, node in scn.nodes.items():
        model, config, _ = load_model(hub, repo)
        acc = accuracy(model, test.to_label_space(config.labels))
        chance = 100.0 / len(config.labels)
        assert acc > 2 * chance, f"{repo}: {acc:.1f}% on digits:test (chance {chance:.1f}%)"
        assert acc == pytest.approx(node.metrics["test_acc"], abs=1e-6)


def test_evaluate_reports_forget_and_retain(built):
    hub, scns = built
    scn = scns["tl"]
    ev = scn.evaluate(hub, scn.forget_classes)
    assert set(ev) == set(scn.repos)
    for repo, v in ev.items():
        assert v["retain_acc"] is not None and 0 <= v["retain_acc"] <= 100
        has_row = any(c in scn.nodes[repo].labels for c in scn.forget_classes)
        assert (v["forget_acc"] is not None) == has_row
    assert scn.evaluate(hub, scn.forget_classes, revision="built") == ev


# ----------------------------------------------------------------------------------------------- forget (FIUn) on scenario hubs
def test_fiun_forget_multi_origin_ddpl_and_reordered_il(built, tmp_path):
    hub = _copy_hub(built[0], tmp_path / "hub")
    for name in ("ddpl", "il"):
        scn = built[1][name]
        plan, res = forget(hub, scn.origins, classes=scn.forget_classes)
        assert not plan.problems
        assert set(res.revisions) == set(scn.affected())
        g = resolve(hub)
        for repo in scn.affected():
            assert hub.head(repo) == res.revisions[repo]["to"] != scn.nodes[repo].revision
            assert g.nodes[repo]["sidecar"] == "ok"
            assert g.nodes[repo]["unlearned"][-1]["request"] == res.request_id


# ----------------------------------------------------------------------------------------------- planning
def test_plan_is_deterministic_and_serialisable():
    a = plan_scenario("fl", depth=4, width=2, shard_size=32, seed=3)
    b = plan_scenario("fl", depth=4, width=2, shard_size=32, seed=3)
    c = plan_scenario("fl", depth=4, width=2, shard_size=32, seed=4)
    assert a == b and a.repos == b.repos
    assert [n.shard for n in a.nodes.values()] != [n.shard for n in c.nodes.values()]
    assert Scenario.from_dict(a.to_dict()) == a
    used = [i for n in a.nodes.values() if n.role == "client" and n.repo.endswith("-r1") for i in n.shard]
    assert len(used) == len(set(used))


def test_build_is_deterministic_per_seed(tmp_path):
    kw = dict(depth=1, shard_size=24, epochs=1, batch_size=12, seed=5)
    shas = []
    for i in range(2):
        hub = LocalHub.init(tmp_path / f"h{i}")
        scn = build_scenario("il", hub, **kw)
        shas.append([hub.list_files(r)["model.safetensors"] for r in scn.repos])
    assert shas[0] == shas[1]


@pytest.mark.parametrize("name,kw", [
    ("gan", {}),
    ("tl", {"depth": 2}),
    ("il", {"width": 2}),
    ("il", {"depth": 9}),
    ("ddpl", {"width": 1}),
    ("fl", {"forget_classes": ["cat"]}),
    ("fl", {"epochs": 0}),
    ("fl", {"dataset": "nope"}),
])
def test_bad_plans_raise(name, kw):
    with pytest.raises(BadInput):
        plan_scenario(name, **kw)
