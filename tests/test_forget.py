"""FIUn forget over real DAGs of real timm models in a real LocalHub (library level).

- planning (affected set by BFS, depth, MFIM merge sources, untouched repos) on hand-built DAGs: a diamond, two
  origins (nested, and disjoint ones merged by a grandchild), a chain of 10;
- a forget of class "3" on a small trained DAG (root, two fine-tuned children, their merged grandchild, an IL
  child whose head has extra and reordered labels, plus unrelated repos): held-out forget / retain accuracy,
  the new revisions (card record, weights, sidecars), unaffected repos byte-identical, only head tensors
  changed, idempotence, timm loads the new revisions offline;
- all-or-nothing: a head moved between plan and run, and a task that fails inside the executor;
- memory and cost: new weights stream into the blob store (staged, invisible until the refs move), cards are
  rendered without huggingface_hub's ModelCard round trip but to the same text, and the batched (CUDA) path
  forced on CPU publishes the same files.

The trained hub is built once per test session (shared by the pytest-xdist workers through a file lock) and
copied before anything mutates it. Plain helpers here are reused by tests/test_cli_forget.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from fiun_hub.constants import CARD_FILE, FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
from fiun_hub.errors import ConflictError, FiunError
from fiun_hub.hub.local import LocalHub, RepoChange

IN = (1, 16, 16)
# the trained DAG
R, A, B, M, I = "dag/root", "dag/child-a", "dag/child-b", "dag/merged", "dag/il"
U, V = "dag/unrelated", "dag/unrelated-child"
AFFECTED = [R, A, B, I, M]  # plan order: (depth, name)
ROOT_LABELS = [str(i) for i in range(8)]
IL_LABELS = ["9", "8"] + ROOT_LABELS[::-1]  # extra labels first, inherited ones reversed
FORGET = "3"


# ----------------------------------------------------------------------------------------------- helpers
def copy_hub(src: str | os.PathLike, dst: str | os.PathLike) -> LocalHub:
    shutil.copytree(src, dst, symlinks=True)
    return LocalHub(dst)


def repo_tree(hub: LocalHub, repo: str) -> dict:
    """Byte-level picture of one repo's folder (refs, snapshots, blobs): path -> content sha256 / link target."""
    root = hub.repo_dir(repo)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir() else (
            "file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def heads(hub: LocalHub) -> dict[str, str]:
    return {r: hub.head(r) for r in hub.list_repos()}


def shared_build(tmp_path_factory, name: str, builder) -> tuple[Path, dict]:
    """Build ``builder(folder) -> info`` once per session; under pytest-xdist the workers share it (file lock).
    Returns ``(hub path, info)``; callers copy the hub before changing anything."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    else:
        root = tmp_path_factory.getbasetemp() / f"shared-{name}"
    with FileLock(str(root) + ".lock"):
        if not (root / "info.json").is_file():
            tmp = Path(str(root) + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            info = builder(tmp)
            (tmp / "info.json").write_text(json.dumps(info))
            os.replace(tmp, root)
    return root / "hub", json.loads((root / "info.json").read_text())


def fresh_model(labels, seed: int):
    from fiun_hub.research.scenarios import new_model

    return new_model("test_resnet", len(labels), 1, seed)


def digits(split: str = "train"):
    from fiun_hub.data import load_data

    return load_data(f"digits:{split}", in_chans=1, input_size=IN[1:])


def push(hub, model, repo, labels, parents=(), fim_data=None, estimator=None):
    from fiun_hub.research.scenarios import push_model

    kw = {"estimator": estimator} if estimator else {}
    return push_model(hub, model, repo, list(labels), input_size=IN, parents=list(parents), fim_data=fim_data,
                      data_spec="digits:train#test-shard", **kw)["revision"]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def weights_sha(hub: LocalHub, repo: str, rev: str | None = None) -> str:
    return hub.list_files(repo, rev)[WEIGHTS_FILE]


# ----------------------------------------------------------------------------------------------- trained DAG
def build_trained_dag(folder: Path) -> dict:
    """root (digits 0-7) -> child-a, child-b (fine-tuned) -> merged (FedAvg + fine-tune); root -> il (10 labels,
    head rows: 9, 8, then root's reversed); unrelated -> unrelated-child. Sidecars on each model's own shard."""
    from fiun_hub.evaluate import forget_retain_accuracy
    from fiun_hub.research.scenarios import inherit, torch_threads
    from fiun_hub.research.training import average_state_dicts, train_classifier

    hub = LocalHub.init(folder / "hub")
    train, test = digits("train"), digits("test")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train), generator=g)
    low = perm[train.y[perm] < 8]  # samples of digits 0-7, shuffled
    rest = perm[train.y[perm] >= 8]
    shards = {R: low[:300], A: low[300:380], B: low[380:460], M: low[460:540],
              I: torch.cat([low[540:660], rest[:60]])}

    def data(repo, labels):
        return train.subset(shards[repo]).to_label_space(labels)

    def fit(model, repo, labels, epochs, lr, seed):
        train_classifier(model, data(repo, labels), epochs=epochs, lr=lr, batch_size=32, seed=seed)
        return model.eval()

    revs, metrics = {}, {}
    with torch_threads(1):
        root = fit(fresh_model(ROOT_LABELS, 1), R, ROOT_LABELS, 5, 3e-3, 1)
        revs[R] = push(hub, root, R, ROOT_LABELS, fim_data=data(R, ROOT_LABELS))
        kids = {}
        for repo, seed in ((A, 2), (B, 3)):
            m = fresh_model(ROOT_LABELS, seed)
            m.load_state_dict(state(root))
            kids[repo] = fit(m, repo, ROOT_LABELS, 2, 1e-3, seed)
            revs[repo] = push(hub, kids[repo], repo, ROOT_LABELS, parents=[f"{R}@{revs[R]}"],
                              fim_data=data(repo, ROOT_LABELS))
        merged = fresh_model(ROOT_LABELS, 4)
        merged.load_state_dict(average_state_dicts([state(kids[A]), state(kids[B])]))
        merged = fit(merged, M, ROOT_LABELS, 2, 1e-3, 4)
        revs[M] = push(hub, merged, M, ROOT_LABELS, parents=[f"{A}@{revs[A]}", f"{B}@{revs[B]}"],
                       fim_data=data(M, ROOT_LABELS))
        il = inherit(fresh_model(IL_LABELS, 5), state(root), ROOT_LABELS, IL_LABELS)
        il = fit(il, I, IL_LABELS, 3, 1e-3, 5)
        revs[I] = push(hub, il, I, IL_LABELS, parents=[f"{R}@{revs[R]}"], fim_data=data(I, IL_LABELS))
        unrelated = fresh_model(["0", "1", "2"], 6)
        revs[U] = push(hub, unrelated, U, ["0", "1", "2"],
                       fim_data=train.subset(low[660:760]).to_label_space(["0", "1", "2"]))
        revs[V] = push(hub, fresh_model(["0", "1", "2"], 7), V, ["0", "1", "2"], parents=[f"{U}@{revs[U]}"])
        for repo, model, labels in ((R, root, ROOT_LABELS), (A, kids[A], ROOT_LABELS), (B, kids[B], ROOT_LABELS),
                                    (M, merged, ROOT_LABELS), (I, il, IL_LABELS)):
            f, r = forget_retain_accuracy(model, labels, test, [FORGET])
            metrics[repo] = {"forget_acc": f, "retain_acc": r}
    return {"revisions": revs, "before": metrics}


def trained_dag(tmp_path_factory) -> tuple[Path, dict]:
    return shared_build(tmp_path_factory, "trained-dag", build_trained_dag)


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    return trained_dag(tmp_path_factory)


@pytest.fixture(scope="module")
def forgotten(dag, tmp_path_factory):
    """A copy of the trained hub after `forget(hub, [root], ["3"])`, with what it looked like before."""
    from fiun_hub.unlearn import forget

    src, info = dag
    hub = copy_hub(src, tmp_path_factory.mktemp("forgotten") / "hub")
    before_heads = heads(hub)
    before_trees = {r: repo_tree(hub, r) for r in (U, V)}
    plan, result = forget(hub, [R], [FORGET])
    return {"hub": hub, "plan": plan, "result": result, "heads": before_heads, "trees": before_trees, "info": info}


# ----------------------------------------------------------------------------------------------- planning
@pytest.fixture(scope="module")
def shapes_hub(tmp_path_factory):
    """Hand-built DAGs in one real hub: one untrained model (config + weights) committed under every name with a
    card naming its pinned parents (written with fiun_hub.card, as `push` writes it); no sidecars.

    diamond  d/a -> d/b, d/c -> d/d          nested/disjoint  p/p -> p/p1 -> p/g <- q/q1 <- q/q
    chain    c/c0 -> c/c1 -> ... -> c/c9     unrelated        x/x -> x/y
    """
    from fiun_hub.card import CardMeta, ParentRef, render_card
    from fiun_hub.models import save_model_folder

    root = tmp_path_factory.mktemp("shapes")
    labels = ["0", "1", "2"]
    folder = save_model_folder(fresh_model(labels, 0), root / "m", labels, input_size=IN)
    files = {n: (folder / n).read_bytes() for n in ("config.json", WEIGHTS_FILE)}
    hub = LocalHub.init(root / "hub")
    edges = {"d/a": [], "d/b": ["d/a"], "d/c": ["d/a"], "d/d": ["d/b", "d/c"],
             "p/p": [], "q/q": [], "p/p1": ["p/p"], "q/q1": ["q/q"], "p/g": ["p/p1", "q/q1"],
             "x/x": [], "x/y": ["x/x"]}
    edges.update({f"c/c{i}": ([f"c/c{i - 1}"] if i else []) for i in range(10)})
    level: dict[str, int] = {}
    for repo, parents in edges.items():  # parents come first in `edges`
        level[repo] = 1 + max((level[p] for p in parents), default=-1)
    for depth in range(max(level.values()) + 1):  # one publish per level: parents are pinned to their heads
        changes = []
        for repo in (r for r in edges if level[r] == depth):
            parents = edges[repo]
            meta = CardMeta(parents=[ParentRef(p, hub.head(p)) for p in parents], labels=labels,
                            relation=("merge" if len(parents) > 1 else "finetune") if parents else None)
            card = render_card(meta, None, repo).encode()
            changes.append(RepoChange(repo, {**files, CARD_FILE: card}, f"push {repo}", parent_commit=""))
        hub.publish(changes)
    return hub


def _plan(hub, origins, classes="1"):
    from fiun_hub.unlearn import plan_forget

    before = heads(hub)
    plan = plan_forget(hub, origins, classes)
    assert heads(hub) == before  # planning changes nothing
    return plan, {n.repo: n for n in plan.nodes}


def test_plan_diamond(shapes_hub):
    total = len(shapes_hub.list_repos())
    plan, nodes = _plan(shapes_hub, ["d/a"])
    assert [(n.repo, n.depth) for n in plan.nodes] == [("d/a", 0), ("d/b", 1), ("d/c", 1), ("d/d", 2)]
    assert all(n.sources == ["d/a"] for n in plan.nodes)
    assert plan.unaffected == total - 4
    assert all(n.head == shapes_hub.head(n.repo) for n in plan.nodes)
    assert all(n.forget_here == ["1"] and n.labels == ["0", "1", "2"] and not n.done for n in plan.nodes)
    # no sidecars here: every node says so, and the plan cannot run
    assert all(n.sidecar == "none" and n.head_shape is None for n in plan.nodes)
    assert all(any("no Fisher sidecar" in p and n.repo in p for p in n.problems) for n in plan.nodes)
    d = plan.to_dict()
    assert [x["repo"] for x in d["nodes"]] == ["d/a", "d/b", "d/c", "d/d"] and d["unaffected"] == total - 4
    assert d["problems"] == plan.problems and d["noop"] is False

    plan, nodes = _plan(shapes_hub, ["d/b"])  # a middle node: only it and the join below it
    assert {r: n.depth for r, n in nodes.items()} == {"d/b": 0, "d/d": 1}
    assert nodes["d/d"].sources == ["d/b"]
    assert plan.unaffected == total - 2


def test_plan_two_origins_one_ancestor_of_the_other(shapes_hub):
    plan, nodes = _plan(shapes_hub, ["d/a", "d/b"])
    assert {r: n.depth for r, n in nodes.items()} == {"d/a": 0, "d/b": 0, "d/c": 1, "d/d": 1}
    assert {r: n.sources for r, n in nodes.items()} == {
        "d/a": ["d/a"], "d/b": ["d/a", "d/b"], "d/c": ["d/a"], "d/d": ["d/a", "d/b"]}
    assert plan.unaffected == len(shapes_hub.list_repos()) - 4
    assert plan.origins == ["d/a", "d/b"]


def test_plan_two_disjoint_origins_merged_by_a_grandchild(shapes_hub):
    plan, nodes = _plan(shapes_hub, ["p/p", "q/q"])
    assert [(n.repo, n.depth) for n in plan.nodes] == [("p/p", 0), ("q/q", 0), ("p/p1", 1), ("q/q1", 1),
                                                      ("p/g", 2)]
    assert {r: n.sources for r, n in nodes.items()} == {
        "p/p": ["p/p"], "q/q": ["q/q"], "p/p1": ["p/p"], "q/q1": ["q/q"], "p/g": ["p/p", "q/q"]}
    assert plan.unaffected == len(shapes_hub.list_repos()) - 5
    # one origin alone reaches the grandchild, which then merges only that origin
    plan, nodes = _plan(shapes_hub, ["q/q"])
    assert {r: (n.depth, n.sources) for r, n in nodes.items()} == {
        "q/q": (0, ["q/q"]), "q/q1": (1, ["q/q"]), "p/g": (2, ["q/q"])}


def test_plan_chain_of_ten(shapes_hub):
    chain = [f"c/c{i}" for i in range(10)]
    plan, nodes = _plan(shapes_hub, ["c/c0"])
    assert [n.repo for n in plan.nodes] == chain
    assert [n.depth for n in plan.nodes] == list(range(10))
    assert all(n.sources == ["c/c0"] for n in plan.nodes)
    assert plan.unaffected == len(shapes_hub.list_repos()) - 10
    plan, nodes = _plan(shapes_hub, ["c/c4"])
    assert [(n.repo, n.depth) for n in plan.nodes] == [(f"c/c{i}", i - 4) for i in range(4, 10)]
    assert all(n.sources == ["c/c4"] for n in plan.nodes)
    assert plan.unaffected == len(shapes_hub.list_repos()) - 6
    # both ends as origins: the tail merges both, the head only the first
    plan, nodes = _plan(shapes_hub, ["c/c0", "c/c9"])
    assert nodes["c/c9"].depth == 0 and nodes["c/c9"].sources == ["c/c0", "c/c9"]
    assert nodes["c/c5"].sources == ["c/c0"]


# ----------------------------------------------------------------------------------------------- the forget
def test_trained_dag_plan(dag):
    from fiun_hub.unlearn import plan_forget

    hub = LocalHub(dag[0])
    plan = plan_forget(hub, [R], FORGET)
    assert [(n.repo, n.depth) for n in plan.nodes] == [(R, 0), (A, 1), (B, 1), (I, 1), (M, 2)]
    assert all(n.sources == [R] for n in plan.nodes)
    assert plan.unaffected == 2 and not plan.problems
    shapes = {n.repo: n.head_shape for n in plan.nodes}
    assert shapes[R] == shapes[M] == [8, 96] and shapes[I] == [10, 96]
    assert all(n.sidecar == "ok" for n in plan.nodes)


def test_forget_drops_held_out_forget_accuracy_and_keeps_retain(forgotten):
    from fiun_hub.evaluate import forget_retain_accuracy
    from fiun_hub.models import load_model

    hub, before = forgotten["hub"], forgotten["info"]["before"]
    test = digits("test")
    for repo in AFFECTED:
        model, config, cid = load_model(hub, repo)
        assert cid == forgotten["result"].revisions[repo]["to"]
        f, r = forget_retain_accuracy(model, config.labels, test, [FORGET])
        assert before[repo]["forget_acc"] >= 50, (repo, before[repo])  # the class was really learnt
        assert f <= 5.0, (repo, before[repo], f, r)
        assert abs(r - before[repo]["retain_acc"]) <= 3.0, (repo, before[repo], f, r)


def test_forget_new_revisions_carry_the_record(forgotten):
    from fiun_hub.repo import read_meta

    hub, plan, result, old = forgotten["hub"], forgotten["plan"], forgotten["result"], forgotten["heads"]
    assert not result.noop and set(result.revisions) == set(AFFECTED)
    for repo in AFFECTED:
        new = hub.head(repo)
        assert result.revisions[repo] == {"from": old[repo], "to": new} and new != old[repo]
        assert hub.commit_info(repo).parents == [old[repo]]
        meta, old_meta = read_meta(hub, repo), read_meta(hub, repo, old[repo])
        assert [p.to_dict() for p in meta.parents] == [p.to_dict() for p in old_meta.parents]  # lineage kept
        assert meta.labels == old_meta.labels
        assert meta.unlearned[:-1] == old_meta.unlearned == []
        rec = meta.unlearned[-1]
        assert rec["request"] == plan.request_id
        assert rec["classes"] == [FORGET]
        assert rec["origins"] == [f"{R}@{old[R]}"]
        assert rec["from_revision"] == old[repo]
        assert rec["alpha"] == 1.0 and rec["lambda"] == 0.01
        assert rec["estimator"] == "normalized"
        assert rec.get("at")
        assert "data" not in rec
        # new weights, the rest of the tree as before (plus the card and sidecars)
        files, old_files = hub.list_files(repo), hub.list_files(repo, old[repo])
        assert set(files) == set(old_files)
        assert files[WEIGHTS_FILE] != old_files[WEIGHTS_FILE]
        assert result.stats[repo]["weights_sha256"] == files[WEIGHTS_FILE]
        assert hashlib.sha256(hub.read_file(repo, WEIGHTS_FILE)).hexdigest() == files[WEIGHTS_FILE]
        assert files["config.json"] == old_files["config.json"]
        assert result.stats[repo]["changed"] > 0


def test_forget_new_sidecars_match_new_weights_and_drop_the_class(forgotten):
    from fiun_hub.fisher import read_sidecars
    from fiun_hub.lineage import resolve
    from fiun_hub.repo import show
    from fiun_hub.sidecars import load_sidecars

    hub, old = forgotten["hub"], forgotten["heads"]
    g = resolve(hub, rebuild=True)
    for repo in AFFECTED:
        files = hub.list_files(repo)
        sc = load_sidecars(hub, repo)  # raises if stale
        assert sc.metadata["weights_sha256"] == files[WEIGHTS_FILE]
        assert show(hub, repo)["sidecar"]["state"] == "ok" and g.nodes[repo]["sidecar"] == "ok"
        before = load_sidecars(hub, repo, old[repo])
        assert before.counts[FORGET] > 0 and FORGET in before.class_fims
        assert FORGET not in sc.class_fims and sc.counts.get(FORGET, 0) == 0
        assert sc.forgotten == [FORGET]
        assert sc.labels == before.labels and sc.layers == before.layers == ["fc.weight", "fc.bias"]
        assert {c: n for c, n in sc.counts.items() if n} == {c: n for c, n in before.counts.items()
                                                            if n and c != FORGET}
        assert set(sc.class_fims) == set(before.class_fims) - {FORGET}
        raw = read_sidecars(hub.read_file(repo, FIM_FILE), hub.read_file(repo, FIM_CLASSES_FILE))
        assert not any(k.endswith("@" + FORGET) for c in raw.class_fims.values() for k in c)
        # the model FIM is the count-weighted mean of the kept class FIMs
        total = sum(sc.counts.values())
        for n in sc.layers:
            mean = sum(sc.counts[c] * sc.class_fims[c][n].double() for c in sc.class_fims) / total
            assert torch.allclose(sc.model_fim[n].double(), mean, rtol=1e-5, atol=1e-12)


def test_unaffected_repos_are_byte_identical(forgotten):
    hub = forgotten["hub"]
    for repo in (U, V):
        assert hub.head(repo) == forgotten["heads"][repo]
        assert repo_tree(hub, repo) == forgotten["trees"][repo]
    assert forgotten["plan"].unaffected == 2


def test_only_head_tensors_change(forgotten):
    from safetensors.torch import load

    from fiun_hub.safetensors_io import header_of_bytes

    hub, old = forgotten["hub"], forgotten["heads"]
    for repo in AFFECTED:
        new_b, old_b = hub.read_file(repo, WEIGHTS_FILE), hub.read_file(repo, WEIGHTS_FILE, old[repo])
        assert len(new_b) == len(old_b)
        assert header_of_bytes(new_b) == header_of_bytes(old_b)
        n_head = 8 + int.from_bytes(old_b[:8], "little")
        assert new_b[:n_head] == old_b[:n_head]  # the header bytes themselves
        new, before = load(new_b), load(old_b)
        assert set(new) == set(before)
        changed = {k for k in new if not torch.equal(new[k], before[k])}
        assert changed and changed <= {"fc.weight", "fc.bias"}, (repo, changed)
        assert "fc.weight" in changed
        for k in new:
            assert new[k].dtype == before[k].dtype and new[k].shape == before[k].shape
        # only the forgotten label's rows move; every retained row is bit-identical
        labels = IL_LABELS if repo == I else ROOT_LABELS
        row = labels.index(FORGET)
        keep = [i for i in range(len(labels)) if i != row]
        assert torch.equal(new["fc.weight"][keep], before["fc.weight"][keep])
        assert torch.equal(new["fc.bias"][keep], before["fc.bias"][keep])


def test_same_request_again_is_a_noop(forgotten, tmp_path, hub_fingerprint):
    from fiun_hub.unlearn import forget

    hub = copy_hub(forgotten["hub"].root, tmp_path / "hub")
    snap = hub_fingerprint(hub.root)
    plan, result = forget(hub, [R], [FORGET])
    assert result.noop and result.revisions == {}
    assert plan.request_id == forgotten["plan"].request_id
    assert all(n.done for n in plan.nodes) and not plan.todo and plan.to_dict()["noop"] is True
    assert hub_fingerprint(hub.root) == snap
    # the same classes in another order / with duplicates is the same request
    plan, result = forget(hub, [R], f" {FORGET},{FORGET} ")
    assert result.noop and hub_fingerprint(hub.root) == snap


def test_new_revisions_load_in_timm_offline(forgotten):
    import timm

    from fiun_hub.models import load_model

    hub = forgotten["hub"]
    x = digits("test").x[:64]
    for repo in AFFECTED:
        rev = hub.head(repo)
        tm = timm.create_model(f"hf-hub:{repo}@{rev}", pretrained=True, cache_dir=hub.root).eval()
        ours, config, _ = load_model(hub, repo, rev)
        assert tm.num_classes == len(config.labels)
        with torch.no_grad():
            assert torch.equal(tm(x), ours(x)), repo
        old = load_model(hub, repo, forgotten["heads"][repo])[0]
        with torch.no_grad():
            assert not torch.equal(old(x), ours(x))


# ----------------------------------------------------------------------------------------------- all or nothing
def test_head_moved_between_plan_and_run_publishes_nothing(dag, tmp_path, hub_fingerprint):
    from fiun_hub.unlearn import plan_forget, run_forget

    hub = copy_hub(dag[0], tmp_path / "hub")
    plan = plan_forget(hub, [R], FORGET)
    assert not plan.problems
    hub.publish([RepoChange(M, {"NOTES.md": b"someone else wrote first\n"}, "concurrent edit",
                            parent_commit=hub.head(M))])
    snap, before = hub_fingerprint(hub.root), heads(hub)
    with pytest.raises(ConflictError, match="dag/merged"):
        run_forget(hub, plan)
    assert hub_fingerprint(hub.root) == snap and heads(hub) == before
    assert all(hub.list_files(r, hub.head(r)) == LocalHub(hub.root).list_files(r) for r in AFFECTED)


def build_small_hub(folder: Path) -> dict:
    """Untrained 3-label models on digits 0-2, with sidecars bound to their weights, and deliberately broken
    cases (used here and by tests/test_cli_forget.py):

    s/origin -> s/child                 healthy
    s/nosc                              no sidecar              s/stale     sidecar of other weights
    s/nan-root -> s/nan-child           NaN in the child's model FIM
    s/hl-root -> s/headless             child's sidecar covers layer4.0.bn2.* (no head)
    s/est-root -> s/batch-child         child's sidecar uses the batch estimator
    s/inf-root -> s/inf-child, s/inf-sib   inf-child's weights hold an Inf (sidecar bound to them)
    s/cats                              labels cat/dog/bird (no digit), no sidecar
    """
    from safetensors.torch import load, save

    from fiun_hub.models import save_model_folder
    from fiun_hub.repo import push_folder
    from fiun_hub.safetensors_io import header_of_bytes
    from fiun_hub.research.scenarios import sidecar_files, torch_threads

    labels = ["0", "1", "2"]
    hub = LocalHub.init(folder / "hub")
    data = digits("train").to_label_space(labels)
    data = data.subset(torch.arange(90))
    revs: dict[str, str] = {}
    n = iter(range(100))

    def put(repo, parents=(), sidecar=True, **kw):
        m = fresh_model(labels, next(n))
        revs[repo] = push(hub, m, repo, labels, parents=[f"{p}@{revs[p]}" for p in parents],
                          fim_data=data if sidecar else None, **kw)
        return m

    def put_folder(repo, model, parents=(), mutate=None, sha=None, **side):
        f = save_model_folder(model, folder / "tmp" / repo.replace("/", "--"), labels, input_size=IN)
        wbytes = (f / WEIGHTS_FILE).read_bytes()
        if mutate is not None:
            # push refuses non-finite weights, so damaged weights are committed straight through the store,
            # as a hub could hold them (written by another tool, or before the check existed)
            revs[repo] = push_folder(hub, f, repo, parents=[f"{p}@{revs[p]}" for p in parents])["revision"]
            t = load(wbytes)
            mutate(t)
            wbytes = save(t, metadata=header_of_bytes(wbytes)[1] or None)
            fim, cls = sidecar_files(model, labels, data, sha or hashlib.sha256(wbytes).hexdigest(),
                                     data_spec="digits:train", **side)
            revs[repo] = hub.publish([RepoChange(repo, {WEIGHTS_FILE: wbytes, FIM_FILE: fim, FIM_CLASSES_FILE: cls},
                                                 "damaged weights", parent_commit=revs[repo])])[repo]
            return
        fim, cls = sidecar_files(model, labels, data, sha or hashlib.sha256(wbytes).hexdigest(),
                                 data_spec="digits:train", **side)
        (f / FIM_FILE).write_bytes(fim)
        (f / FIM_CLASSES_FILE).write_bytes(cls)
        revs[repo] = push_folder(hub, f, repo, parents=[f"{p}@{revs[p]}" for p in parents])["revision"]

    with torch_threads(1):
        put("s/origin")
        put("s/child", ["s/origin"])
        put("s/nosc", sidecar=False)
        put_folder("s/stale", fresh_model(labels, next(n)), sha="0" * 64)
        put("s/nan-root")
        put("s/nan-child", ["s/nan-root"])
        fim = hub.read_file("s/nan-child", FIM_FILE)
        t, meta = load(fim), header_of_bytes(fim)[1]
        t["fc.weight"][0, 0] = float("nan")
        revs["s/nan-child"] = hub.publish([RepoChange("s/nan-child", {FIM_FILE: save(t, metadata=meta)},
                                                      "a NaN", parent_commit=revs["s/nan-child"])])["s/nan-child"]
        put("s/hl-root")
        put_folder("s/headless", fresh_model(labels, next(n)), ["s/hl-root"], layers="layer4.0.bn2.*")
        put("s/est-root")
        put("s/batch-child", ["s/est-root"], estimator="batch")
        put("s/inf-root")
        put("s/inf-sib", ["s/inf-root"])

        def add_inf(t):
            t["fc.weight"][0, 0] = float("inf")

        put_folder("s/inf-child", fresh_model(labels, next(n)), ["s/inf-root"], mutate=add_inf)
        cats = fresh_model(["cat", "dog", "bird"], next(n))
        revs["s/cats"] = push(hub, cats, "s/cats", ["cat", "dog", "bird"])
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    return {"revisions": revs}


def small_hub(tmp_path_factory) -> tuple[Path, dict]:
    return shared_build(tmp_path_factory, "small-hub", build_small_hub)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_hub(tmp_path_factory)


def test_small_hub_is_as_described(small):
    from fiun_hub.lineage import resolve

    g = resolve(LocalHub(small[0]))
    states = {r: g.nodes[r]["sidecar"] for r in g}
    assert states["s/nosc"] == "none" and states["s/stale"] == "stale" and states["s/cats"] == "none"
    assert all(states[r] == "ok" for r in ("s/origin", "s/child", "s/nan-child", "s/headless", "s/batch-child",
                                            "s/inf-child", "s/inf-sib"))


def test_a_child_pushed_while_the_forget_runs_makes_it_refuse(dag, tmp_path, model_folder):
    """Between the plan and the publish a new child of the origin appears (pinned to the pre-forget revision):
    publishing would leave it holding what the forget removes, so the publish is refused and nothing moves."""
    from fiun_hub.errors import ConflictError
    from fiun_hub.repo import push_folder
    from fiun_hub.unlearn import plan_forget, run_forget

    hub = copy_hub(dag[0], tmp_path / "hub")
    plan = plan_forget(hub, [R], FORGET)
    push_folder(hub, model_folder(), "dag/late", parents=[R])
    before = heads(hub)
    with pytest.raises(ConflictError, match="dag/late now derives from dag/root"):
        run_forget(hub, plan)
    assert heads(hub) == before
    assert not [p for p in hub.repo_dir(R).joinpath("blobs").iterdir() if p.name.startswith(".incoming")]


def test_a_failing_task_publishes_nothing(small, tmp_path, hub_fingerprint):
    """s/inf-child's dampening fails inside the executor while s/inf-root and s/inf-sib succeed: no new
    revision anywhere (the same through a process pool: test_cli_forget, case task-fails)."""
    from fiun_hub.unlearn import plan_forget, run_forget

    hub = copy_hub(small[0], tmp_path / "hub")
    plan = plan_forget(hub, ["s/inf-root"], "1")
    assert not plan.problems and [n.repo for n in plan.nodes] == ["s/inf-root", "s/inf-child", "s/inf-sib"]
    snap = hub_fingerprint(hub.root)
    with pytest.raises(FiunError):
        run_forget(hub, plan)
    assert hub_fingerprint(hub.root) == snap


def test_a_failing_task_names_its_repo(small, tmp_path):
    """The error a failed per-repo task raises says which repo failed (DESIGN.md 6: one clear line)."""
    from fiun_hub.unlearn import plan_forget, run_forget

    hub = copy_hub(small[0], tmp_path / "hub")
    with pytest.raises(FiunError) as exc:
        run_forget(hub, plan_forget(hub, ["s/inf-root"], "1"))
    assert "s/inf-child" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("child, words", [("s/headless", "cannot be aligned"), ("s/batch-child", "estimator")])
def test_dry_run_plan_lists_unalignable_heads(small, tmp_path, child, words):
    """A descendant the run would refuse (head absent from its sidecar, other estimator than the origin's) is a
    problem the plan itself lists, so that `--dry-run` shows it and run_forget refuses before any work."""
    from fiun_hub.unlearn import plan_forget, run_forget

    hub = copy_hub(small[0], tmp_path / "hub")
    root = {"s/headless": "s/hl-root", "s/batch-child": "s/est-root"}[child]
    with pytest.raises(FiunError, match=words):  # what the run says (nothing is published: see test_cli_forget)
        run_forget(hub, plan_forget(hub, [root], "1"))
    plan = plan_forget(hub, [root], "1")
    assert any(child in p for p in plan.problems), plan.problems


# ----------------------------------------------------------------------------------------------- memory and cost
def test_forget_streams_new_weights_into_the_blob_store(forgotten, dag, tmp_path, monkeypatch):
    """On a LocalHub each task writes its new weights file into the repo's blob store (a staging name, then
    blobs/{sha256}) and hands back only its path and sha256: no process holds the new weights of every repo at
    once. Another run of the same request wrote the same files, nothing is left staged, and the hub verifies."""
    import fiun_hub.executors as ex
    from fiun_hub.unlearn import forget
    from fiun_hub.verify import verify

    seen = []
    real = ex.run_unlearn

    def spy(tasks, **kw):
        inner = kw["on_result"]
        assert all(t.out_path and ".incoming-forget-" in t.out_path for t in tasks)
        kw["on_result"] = lambda repo, res: seen.append((repo, type(res[1]), res[2]["weights_sha256"])) or \
            inner(repo, res)
        return real(tasks, **kw)

    monkeypatch.setattr(ex, "run_unlearn", spy)
    hub = copy_hub(dag[0], tmp_path / "hub")
    _, result = forget(hub, [R], [FORGET])
    assert sorted(r for r, _, _ in seen) == sorted(AFFECTED) and {t for _, t, _ in seen} == {str}
    want = forgotten["result"].stats
    for repo, _, sha in seen:
        assert sha == want[repo]["weights_sha256"] == hub.list_files(repo)[WEIGHTS_FILE]
        blobs = hub.blob_path(repo, sha).parent
        assert not list(blobs.glob(".incoming*")), repo
    assert verify(hub) == []
    # the same request on another copy (the `forgotten` fixture) gave the same files, card timestamps aside
    for repo in AFFECTED:
        new, other = hub.list_files(repo), forgotten["hub"].list_files(repo)
        assert {k: v for k, v in new.items() if k != CARD_FILE} == {k: v for k, v in other.items() if k != CARD_FILE}


def test_staged_blob_is_published_in_place_and_read_lazily(tmp_path):
    """A StagedBlob names a file already at blobs/{sha256}: publish keeps it (writes nothing), and its data is
    the file's bytes, mapped only when read."""
    from fiun_hub.unlearn import StagedBlob, _Staging

    hub = LocalHub.init(tmp_path / "hub")
    hub.publish([RepoChange("o/r", {"a.bin": b"x" * 10}, "first", parent_commit="")])
    staging = _Staging(hub)
    data = os.urandom(200_000)
    path = staging.path_for("o/r")
    Path(path).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    blob = staging.adopt("o/r", path, sha)
    assert isinstance(blob, StagedBlob) and blob.size == len(data) and bytes(blob.data) == data
    assert not Path(path).exists() and hub.blob_path("o/r", sha).is_file()
    before = hub.blob_path("o/r", sha).stat().st_ino
    rev = hub.publish([RepoChange("o/r", {"b.bin": blob}, "second", parent_commit=hub.head("o/r"))])["o/r"]
    assert hub.read_file("o/r", "b.bin", rev, verify=True) == data
    assert hub.commit_info("o/r", rev).sizes["b.bin"] == len(data)
    assert hub.blob_path("o/r", sha).stat().st_ino == before  # not rewritten
    # a failed forget's discard removes what its staging created, never identical content already stored
    staging = _Staging(hub)
    again = staging.path_for("o/r")
    Path(again).write_bytes(data)
    staging.adopt("o/r", again, sha)
    other = os.urandom(100_000)
    p2 = staging.path_for("o/r")
    Path(p2).write_bytes(other)
    created = staging.adopt("o/r", p2, hashlib.sha256(other).hexdigest())
    staging.discard()
    assert hub.blob_path("o/r", sha).is_file() and not created.path.exists()
    assert hub.read_file("o/r", "b.bin", verify=True) == data and not list(created.path.parent.glob(".incoming*"))


def test_forget_cards_are_what_huggingface_hub_writes(forgotten):
    """The forget renders cards without huggingface_hub's ModelCard round trip (libyaml, direct dump); the text
    is still exactly what ModelCardData writes, and ModelCard reads it back to the same data."""
    from huggingface_hub import ModelCard, ModelCardData

    from fiun_hub.card import meta_to_dict, parse_card_full, render_card

    hub = forgotten["hub"]
    for repo in AFFECTED:
        text = hub.read_file(repo, CARD_FILE).decode()
        meta, body = parse_card_full(text)
        data = meta_to_dict(meta)
        assert render_card(meta, body, repo) == text
        assert text == f"---\n{ModelCardData(**data).to_yaml()}\n---\n" + body
        card = ModelCard(text)
        assert card.data.to_dict() == ModelCardData(**data).to_dict() and card.text == body


def test_card_fast_path_matches_modelcard_on_random_front_matter():
    """front_matter_yaml (libyaml, direct) == ModelCardData(**d).to_yaml() and the fast parse == ModelCard's, on
    random front matter: unicode, control characters, long and empty keys, tags given as a string, HF fields."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st
    from huggingface_hub import ModelCard, ModelCardData

    from fiun_hub.card import _front_matter, front_matter_yaml

    text = (st.text(max_size=40) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=140)
            | st.sampled_from(["", "x" * 130, "é日本", "\U0001F600", "\x85", "a\nb", "2026-11-22", "yes", "~"]))
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | text | st.dates()
    values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3),
                          max_leaves=10)
    keys = text | st.sampled_from(["tags", "license", "base_model", "model_name", "library_name", "fiun", "datasets"])

    # derandomize: the same 300 cases on every run, so a CI run never fails on a case no run before it met
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.dictionaries(keys, values, max_size=6))
    @example({"eval_results": []})  # ModelCardData writes `model-index: [{results: []}]`, which ModelCard refuses
    def check(d):
        try:
            want = ModelCardData(**d).to_yaml()
        except Exception:  # noqa: BLE001  (nothing to compare against)
            return
        assert front_matter_yaml(d) == want
        card_text = f"---\n{want}\n---\nbody\n"
        try:
            card = ModelCard(card_text)
        except Exception as exc:  # noqa: BLE001  the fast parse must refuse it the same way
            with pytest.raises(type(exc)) as got:
                _front_matter(card_text)
            assert str(got.value) == str(exc)
            return
        assert repr(_front_matter(card_text)) == repr((card.data.to_dict(), card.text))

    check()


def test_forget_through_the_batched_path_on_cpu_gives_the_same_files(forgotten, dag, tmp_path):
    """The batched dampening (what a CUDA device uses: repos stacked by head shape) forced on CPU, in this process
    and in a process pool of chunks, publishes the same weights and sidecars as the per-repo path."""
    from fiun_hub.unlearn import plan_forget, run_forget

    want = {r: forgotten["hub"].list_files(r) for r in AFFECTED}
    for name, kw in (("one", {}), ("pool", {"workers": 2})):
        hub = copy_hub(dag[0], tmp_path / name)
        result = run_forget(hub, plan_forget(hub, [R], [FORGET]), batched=True, device="cpu", **kw)
        assert set(result.revisions) == set(AFFECTED)
        for r in AFFECTED:
            got = hub.list_files(r)
            assert {k: v for k, v in got.items() if k != CARD_FILE} == \
                   {k: v for k, v in want[r].items() if k != CARD_FILE}, (name, r)


def test_run_unlearn_picks_the_batched_path_when_cuda_is_seen(monkeypatch, tmp_path):
    """Device choice without a GPU: with CUDA reported available, run_unlearn resolves the device to cuda and
    takes the batched path (here intercepted before any CUDA call); an explicit CPU device keeps the per-repo
    path unless batched=True."""
    import fiun_hub.executors as ex

    calls = []
    monkeypatch.setattr(ex, "run_batched", lambda tasks, **kw: calls.append(str(kw["device"])) or {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert str(ex.resolve_device(None)) == "cuda"
    ex.run_unlearn([], device=None)
    assert calls == ["cuda"]
    monkeypatch.setattr(ex, "run_tasks", lambda fn, tasks, **kw: calls.append("per-repo") or {})
    ex.run_unlearn([], device="cpu")
    ex.run_unlearn([], device="cpu", batched=True)
    assert calls == ["cuda", "per-repo", "cpu"]
