"""Forgetting models that have no sidecar of their own, and models that have none of the forgotten labels
(issue 13, parts 2 and 6), on the real trained DAG of tests/test_forget.py.

- ``stripped``: a copy of the trained hub where the merge ``dag/merged`` and the IL child ``dag/il`` were
  republished without sidecars (same weights), plus ``dag/late-x``, a child of the sidecar-less merge head pushed
  without a sidecar (so its nearest sidecars are two levels up);
- the combined sidecar is checked against its definition (docs/method.md section 8) from the real files;
- the plan, the records, ``lineage --check``, refusal, and ``audit --fix`` of a late derivative without a sidecar;
- a transfer child without class 3: a forget of 3 leaves its weights and sidecars byte-identical.
"""
from __future__ import annotations

import json

import pytest
import torch

from fiun_hub.constants import FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
from fiun_hub.hub.local import LocalHub, RepoChange

from test_forget import A, B, FORGET, I, M, R, ROOT_LABELS, V, copy_hub, digits, heads, push, trained_dag

X = "dag/late-x"
T = "dag/transfer"
T_LABELS = [c for c in ROOT_LABELS if c != FORGET][::-1]  # no "3", rows in another order


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    return trained_dag(tmp_path_factory)


def strip_sidecars(hub: LocalHub, repo: str) -> str:
    return hub.publish([RepoChange(repo, {}, "drop sidecars", parent_commit=hub.head(repo),
                                   delete=(FIM_FILE, FIM_CLASSES_FILE))])[repo]


@pytest.fixture(scope="module")
def stripped(dag, tmp_path_factory):
    from fiun_hub.models import load_model

    hub = copy_hub(dag[0], tmp_path_factory.mktemp("stripped") / "hub")
    pins = {r: hub.head(r) for r in (A, B, R)}
    for repo in (M, I):
        strip_sidecars(hub, repo)
    model, config, _ = load_model(hub, M)
    push(hub, model, X, config.labels, parents=[f"{M}@{hub.head(M)}"])  # no sidecar
    return {"hub": hub, "pins": pins, "heads": heads(hub)}


def test_a_repo_without_a_sidecar_uses_its_parents_combined_at_their_pinned_revisions(stripped):
    """M (a merge of A and B): each class FIM is the element-wise max of A's and B's at the revisions M pins,
    counts add up, the model FIM is the count-weighted mean of the class FIMs; X (a child of M's sidecar-less
    head) climbs to the same two; I (other head order, gained labels 9, 8) gets R's rows by label name."""
    from fiun_hub.fallback import resolve_sidecars
    from fiun_hub.sidecars import load_sidecars

    hub, pins = stripped["hub"], stripped["pins"]
    sa, sb = load_sidecars(hub, A, pins[A]), load_sidecars(hub, B, pins[B])
    for repo in (M, X):
        sc, choice = resolve_sidecars(hub, repo, hub.commit_info(repo), ROOT_LABELS, "fc")
        assert choice.sources == (f"{A}@{pins[A]}", f"{B}@{pins[B]}")
        assert choice.describe() == f"approximate: from {A}@{pins[A]}, {B}@{pins[B]}"
        assert sc.counts == {c: sa.counts[c] + sb.counts[c] for c in ROOT_LABELS}
        for c in ROOT_LABELS:
            for n in ("fc.weight", "fc.bias"):
                assert torch.equal(sc.class_fims[c][n], torch.maximum(sa.class_fims[c][n], sb.class_fims[c][n]))
        total = sum(sc.counts.values())
        want = sum(sc.counts[c] * sc.class_fims[c]["fc.weight"].double() for c in ROOT_LABELS) / total
        assert torch.allclose(sc.model_fim["fc.weight"].double(), want, rtol=1e-6, atol=0)
    il_labels = hub_labels(hub, I)
    sc, choice = resolve_sidecars(hub, I, hub.commit_info(I), il_labels, "fc")
    sr = load_sidecars(hub, R, pins[R])
    assert choice.sources == (f"{R}@{pins[R]}",) and sc.labels == il_labels
    assert "9" not in sc.counts and "8" not in sc.counts and sc.counts == sr.counts
    row = il_labels.index("3")
    assert torch.equal(sc.class_fims["3"]["fc.weight"][row], sr.class_fims["3"]["fc.weight"][ROOT_LABELS.index("3")])
    assert sc.class_fims["3"]["fc.weight"][il_labels.index("9")].abs().sum() == 0  # a gained label: no FIM


def hub_labels(hub, repo):
    from fiun_hub.repo import read_meta

    return read_meta(hub, repo).labels


def test_plan_says_which_sidecar_and_the_forget_runs(stripped, cli, tmp_path):
    from fiun_hub.evaluate import forget_retain_accuracy
    from fiun_hub.models import load_model
    from fiun_hub.repo import read_meta

    hub = copy_hub(stripped["hub"].root, tmp_path / "hub")
    pins, old = stripped["pins"], heads(hub)
    code, out, err = cli("--hub", hub.root, "--json", "forget", "--origin", R, "--classes", FORGET, "--dry-run")
    assert code == 0, err
    nodes = {n["repo"]: n for n in json.loads(out)["nodes"]}
    assert nodes[M]["sidecar_used"] == nodes[X]["sidecar_used"] == f"approximate: from {A}@{pins[A]}, {B}@{pins[B]}"
    assert nodes[I]["sidecar_used"] == f"approximate: from {R}@{pins[R]}"
    assert nodes[R]["sidecar_used"] == nodes[A]["sidecar_used"] == "own"
    code, text, _ = cli("--hub", hub.root, "forget", "--origin", R, "--classes", FORGET, "--dry-run")
    assert code == 0 and f"~ sidecar approximate: from {A}@{pins[A][:12]}…, {B}@{pins[B][:12]}…" in text

    code, out, err = cli("--hub", hub.root, "--json", "forget", "--origin", R, "--classes", FORGET)
    assert code == 0, err
    test = digits("test")
    for repo, used in ((M, nodes[M]["sidecar_used"]), (X, nodes[X]["sidecar_used"]), (I, nodes[I]["sidecar_used"]),
                       (A, "own")):
        rec = read_meta(hub, repo).unlearned[-1]
        assert rec["sidecar"] == used and rec["from_revision"] == old[repo]
        files = hub.list_files(repo)
        # a repo that used its ancestors' sidecars gets none (it never had any); one with its own keeps them
        assert (FIM_FILE in files) == (used == "own")
        model, config, _ = load_model(hub, repo)
        f, r = forget_retain_accuracy(model, config.labels, test, [FORGET])
        before = forget_retain_accuracy(load_model(hub, repo, old[repo])[0], config.labels, test, [FORGET])
        assert before[0] > 80 and f <= 2.0 and r >= before[1] - 2.0, (repo, before, f, r)


def test_lineage_check_and_forget_refuse_the_same_repo_without_any_sidecar(stripped, cli, tmp_path,
                                                                           hub_fingerprint):
    hub = copy_hub(stripped["hub"].root, tmp_path / "hub")
    code, out, err = cli("--hub", hub.root, "--json", "lineage", "--check")
    assert code == 0, out  # notes only: every repo has a sidecar to use
    notes = {p["repo"]: p for p in json.loads(out)}
    assert set(notes) == {M, I, X, V} and all(p["kind"] == "approximate-sidecar" and not p["blocking"]
                                           for p in notes.values())
    strip_sidecars(hub, R)  # the root's head now has none, and it has no ancestor
    snap = hub_fingerprint(hub.root)
    code, out, err = cli("--hub", hub.root, "--json", "lineage", "--check")
    assert code == 1
    blocking = [p for p in json.loads(out) if p["blocking"]]
    assert [(p["repo"], p["kind"]) for p in blocking] == [(R, "no-sidecar")]
    code, out, err = cli("--hub", hub.root, "forget", "--origin", R, "--classes", FORGET)
    assert code == 2 and blocking[0]["message"] in err and f"fiun-hub fim {R} --data SPEC" in err
    assert hub_fingerprint(hub.root) == snap


def test_audit_fix_repairs_a_late_derivative_pushed_without_a_sidecar(dag, tmp_path):
    """A model fine-tuned from child-a's pre-takedown revision, uploaded without a sidecar after the takedown
    purged that revision (weights and sidecars): ``audit --fix`` forgets it with child-a's sidecars as the
    takedown's forget kept them at child-a's next revision (the pinned revision's FIMs, class 3 stripped), and
    the record, the ledger and the report name that revision."""
    from fiun_hub.compliance import audit, fix, ledger_record, parse_request, plan_takedown, run_takedown
    from fiun_hub.dampening import retain_fim
    from fiun_hub.models import load_model
    from fiun_hub.repo import read_meta
    from fiun_hub.safetensors_io import read_header
    from fiun_hub.sidecars import load_sidecars
    from fiun_hub.research.training import train_classifier

    from test_compliance import REQUEST

    hub = copy_hub(dag[0], tmp_path / "hub")
    edge = copy_hub(dag[0], tmp_path / "edge")  # the edge team's copy, taken before the takedown
    pre = hub.head(A)
    request = parse_request(REQUEST)
    run_takedown(hub, plan_takedown(hub, request))
    post = hub.head(A)
    assert FIM_FILE in hub.tombstones(A, pre)  # the pinned revision's sidecars are gone
    model, config, _ = load_model(edge, A, pre)
    data = digits("train").subset(torch.arange(900, 1000)).to_label_space(config.labels)
    train_classifier(model, data, epochs=1, lr=1e-4, batch_size=32, seed=9)
    cid = push(edge, model.eval(), "dag/late", config.labels, parents=[f"{A}@{pre}"])  # no sidecar
    files = {p: edge.file_path("dag/late", p, cid) for p in edge.list_files("dag/late", cid)}
    assert FIM_FILE not in files
    # `fiun-hub push --parent` refuses a purged revision; an upload by another client lands with the pin
    late = hub.publish([RepoChange("dag/late", files, "Edge build (uploaded)", parent_commit="")])["dag/late"]

    # what stands in for child-a@pre's sidecars: child-a@post's, derived from pre, whose model FIM is exactly
    # the retain FIM (class 3 out) that pre's own sidecars give
    assert read_header(hub.file_path(A, FIM_FILE, post))[1]["derived_from"] == pre
    old, kept = load_sidecars(edge, A, pre), load_sidecars(hub, A, post)
    want = retain_fim(old.model_fim, old.class_fims, old.counts, [FORGET])
    for n, t in kept.model_fim.items():
        assert torch.allclose(t, want[n], rtol=1e-5, atol=1e-12), n
    assert FORGET not in kept.counts and all(kept.counts[c] == old.counts[c] for c in kept.counts)

    report = audit(hub, request.id)
    assert [(f["repo"], f["kind"]) for f in report["findings"]] == [("dag/late", "pre-forget-pin")]
    [out] = fix(hub, report, eval_data="digits:test")
    assert out["fixed"] == ["dag/late"] and not out["blocked"]
    used = f"approximate: from {A}@{post}"
    rec = next(u for u in read_meta(hub, "dag/late").unlearned if u["request"] == request.id)
    assert rec["sidecar"] == used and rec["from_revision"] == late
    entry = ledger_record(hub, request.id)["repos"]["dag/late"]
    assert entry["sidecar"] == used
    # forgotten on held-out data (digits:test), retained classes kept
    assert entry["forget_acc"] <= 1.0 < 80 < entry["forget_acc_before"], entry
    assert entry["retain_acc"] >= entry["retain_acc_before"] - 2.0, entry
    again = audit(hub, request.id)
    assert again["ok"], again["findings"]
    row = next(r for r in again["requests"][0]["repos"] if r["repo"] == "dag/late")
    assert row["sidecar"] == used
    from fiun_hub.report import to_markdown

    assert f"sidecar approximate: from {A}@{post[:12]}…" in to_markdown(again)


# ----------------------------------------------------------------------------------------------- part 6
@pytest.fixture(scope="module")
def with_transfer(dag, tmp_path_factory):
    """The trained hub plus T: R's backbone with a new head for R's labels except 3 (another order), fine-tuned
    on a shard without 3, with its own sidecars."""
    from fiun_hub.models import load_model
    from fiun_hub.research.scenarios import inherit, new_model, torch_threads
    from fiun_hub.research.training import train_classifier

    hub = copy_hub(dag[0], tmp_path_factory.mktemp("transfer") / "hub")
    root, _, _ = load_model(hub, R)
    data = digits("train").subset(torch.arange(700, 900)).to_label_space(T_LABELS)
    with torch_threads(1):
        model = inherit(new_model("test_resnet", len(T_LABELS), 1, 11), root.state_dict(), ROOT_LABELS, T_LABELS)
        train_classifier(model, data, epochs=2, lr=1e-3, batch_size=32, seed=11)
    push(hub, model.eval(), T, T_LABELS, parents=[f"{R}@{hub.head(R)}"], fim_data=data)
    return hub


def test_a_model_without_the_forgotten_label_keeps_its_weights_and_sidecars(with_transfer, tmp_path):
    from fiun_hub.repo import read_meta
    from fiun_hub.unlearn import forget

    hub = copy_hub(with_transfer.root, tmp_path / "hub")
    old = hub.head(T)
    old_files = hub.list_files(T, old)
    plan, result = forget(hub, [R], [FORGET])
    node = next(n for n in plan.nodes if n.repo == T)
    assert node.forget_here == [] and result.stats[T]["changed"] == 0
    new = hub.head(T)
    assert new != old and result.revisions[T] == {"from": old, "to": new}
    files = hub.list_files(T)
    # retained rows never change: the same weights, the same sidecars (same blobs), only the card has the record
    for f in (WEIGHTS_FILE, FIM_FILE, FIM_CLASSES_FILE, "config.json"):
        assert files[f] == old_files[f], f
    rec = read_meta(hub, T).unlearned[-1]
    assert rec["request"] == plan.request_id and rec["weights"] == "unchanged" and rec["classes"] == [FORGET]
    assert hub.list_files(R)[WEIGHTS_FILE] != hub.list_files(R, plan.nodes[0].head)[WEIGHTS_FILE]
