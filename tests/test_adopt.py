"""`fiun-hub audit --fix --adopt`: undeclared derivatives forgotten as children of the revision they look derived from.

On a copy of tests/test_forget.py's trained DAG (real test_resnet models trained on digits) a fine-tune of dag/root
is pushed with no parent in its card and no sidecar of its own. A takedown of class "3" at dag/root misses it;
`audit` names it (undeclared-derivative) and fails; `audit --fix` alone leaves it as it is; `audit --fix --adopt`
forgets it (the sidecars of dag/root's pre-forget revision stand in for its own), with the inferred parent in its
forget record and its card's parents unchanged; the next audit, with held-out data, is ok and the adopted model's
held-out forget accuracy is low. `--adopt` without `--fix` is one line, exit 2, nothing changed.

On copies: a card-less re-upload and a model with a stale sidecar cannot be adopted and are reported as such; a
declared child of the fine-tune (no sidecar either) is forgotten with it, and a dropped record of the adopted repo
is a lost-record that plain `--fix` (and a takedown re-run) redo; a sample-wise takedown adopts with the same
samples fingerprint.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import fingerprint
from fiun_hub.compliance import LEDGER_REPO, ledger_record
from fiun_hub.constants import CARD_FILE, CONFIG_FILE, FIM_FILE, WEIGHTS_FILE
from fiun_hub.hub.local import LocalHub, RepoChange
from fiun_hub.repo import read_meta
from test_compliance import REQUEST, invoke, one_error_line, one_thread  # noqa: F401  (autouse: one torch thread)
from test_fingerprint import undeclared_finetune
from test_forget import ROOT_LABELS, R, copy_hub, digits, heads, push, trained_dag

FT, COPY = "x/undeclared-finetune", "x/reupload"
RID = "TKD-2026-001"


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """The whole story once; each step's output kept. Nothing may change its hub afterwards."""
    src, _ = trained_dag(tmp_path_factory)
    root = tmp_path_factory.mktemp("adopt")
    hub = copy_hub(src, root / "hub")
    model = undeclared_finetune(hub)
    s: dict = {"src": src, "root": root, "hub": hub, "pre": hub.head(R)}
    s["ft_rev"] = push(hub, model, FT, ROOT_LABELS)  # no --parent, no sidecar
    req = root / "request.yaml"
    req.write_text(REQUEST)
    H = ("--hub", hub.root)
    s["takedown"] = invoke(*H, "takedown", req)
    s["audit"] = invoke(*H, "--json", "audit")
    s["audit_text"] = invoke(*H, "audit")
    before = fingerprint(hub.root)
    s["adopt_alone"] = invoke(*H, "audit", "--adopt")
    s["adopt_alone_unchanged"] = fingerprint(hub.root) == before
    s["fix_plain"] = invoke(*H, "--json", "audit", "--fix")
    s["heads_after_plain_fix"] = heads(hub)
    shutil.copytree(hub.root, root / "before-adopt", symlinks=True)
    s["fix_adopt"] = invoke(*H, "--json", "audit", "--fix", "--adopt", "--eval-data", "digits:test")
    s["audit_after"] = invoke(*H, "--json", "audit", "--eval-data", "digits:test")
    s["audit_after_text"] = invoke(*H, "audit", "--report", root / "after.md")
    invoke(*H, "audit", "--report", root / "after.html")
    s["show"] = invoke(*H, "show", FT)
    s["rerun_dry"] = invoke(*H, "takedown", req, "--dry-run")
    return s


def test_audit_names_the_undeclared_finetune_and_fix_alone_leaves_it(story):
    code, _, err = story["takedown"]
    assert code == 0, err
    code, out, _ = story["audit"]
    assert code == 1
    report = json.loads(out)
    assert not report["ok"]
    found = [f for f in report["findings"] if f["kind"] == "undeclared-derivative"]
    assert [f["repo"] for f in found] == [FT]
    assert found[0]["derived_from"] == {"repo": R, "revision": story["pre"]}
    code, out, _ = story["audit_text"]
    assert code == 1 and f"UNDECLARED-DERIVATIVE: {FT}: its weights look derived from {R}@{story['pre'][:12]}" in out
    assert "`--fix --adopt` to undeclared derivatives too" in out
    # without --adopt, --fix leaves it as it was: the finding stays, the audit fails
    code, out, _ = story["fix_plain"]
    assert code == 1
    data = json.loads(out)
    assert not data["ok"] and [f["repo"] for f in data["findings"]] == [FT]
    assert data["fixed"][0]["unfixable"] == [FT] and not data["fixed"][0]["revisions"]
    assert story["heads_after_plain_fix"][FT] == story["ft_rev"]


def test_adopt_without_fix_is_one_line_and_changes_nothing(story):
    line = one_error_line(story["adopt_alone"])
    assert "--adopt" in line and "--fix" in line
    assert story["adopt_alone_unchanged"]


def test_fix_adopt_forgets_it_with_the_inferred_parent_in_the_record_not_in_the_card(story):
    hub, pre, old = story["hub"], story["pre"], story["ft_rev"]
    code, out, err = story["fix_adopt"]
    assert code == 0, (out, err)
    data = json.loads(out)
    fixed = data["fixed"][0]
    assert fixed["revisions"][FT]["from"] == old
    new = fixed["revisions"][FT]["to"]
    assert hub.head(FT) == new != old
    adopted = {a["repo"]: a for a in fixed["adopted"]}
    assert set(adopted) == {FT}
    assert adopted[FT]["inferred_parent"] == f"{R}@{pre}"
    assert adopted[FT]["repo"] == FT and adopted[FT]["evidence"]["learned_similarity"] > 0.85
    # the card: parents unchanged (none), the record names the inferred parent
    before, after = read_meta(hub, FT, old), read_meta(hub, FT, new)
    assert after.parents == before.parents == []
    rec = next(u for u in after.unlearned if u["request"] == RID)
    assert rec["inferred"] is True
    assert rec["adopted_from"]["repo"] == R and rec["adopted_from"]["revision"] == pre
    assert rec["adopted_from"]["evidence"]["kind"] == "close"
    assert rec["sidecar"] == f"approximate: from {R}@{pre}"  # it has none: dag/root's pre-forget ones stand in
    assert FIM_FILE not in hub.list_files(FT, new)
    assert hub.list_files(FT, new)[WEIGHTS_FILE] != hub.commit_info(FT, old).files[WEIGHTS_FILE]
    # the ledger entry copies adopted_from, with the accuracies before and after
    entry = ledger_record(hub, RID)["repos"][FT]
    assert entry["action"] == "forgot" and entry["to"] == new
    assert entry["adopted_from"]["repo"] == R and entry["adopted_from"]["revision"] == pre
    assert entry["forget_acc_before"] > 50 and entry["forget_acc"] <= 5
    # the other repos of the request are untouched by the adoption
    assert set(fixed["revisions"]) == {FT}


def test_the_next_audit_checks_the_adopted_repo_and_is_ok(story):
    code, out, err = story["audit_after"]
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["ok"] and not report["findings"]
    rows = {r["repo"]: r for r in report["requests"][0]["repos"]}
    assert rows[FT]["status"] == "done" and rows[FT]["adopted_from"]["revision"] == story["pre"]
    assert rows[FT]["forget_acc"] <= 5 and rows[FT]["retain_acc"] > 50  # held-out digits:test, measured now
    # the report's lineage draws the inferred parent (dotted in the Mermaid picture); no card declares it
    assert {"source": R, "target": FT, "revision": story["pre"], "relation": "inferred"} in \
        report["requests"][0]["lineage"]["edges"]
    md = (story["root"] / "after.md").read_text()
    assert "-.->|@" + story["pre"][:8] + "|" in md
    assert f"adopted: inferred parent {R}@{story['pre'][:12]}…" in md
    assert f"adopted: inferred parent {R}@{story['pre'][:12]}…" in (story["root"] / "after.html").read_text()
    assert (story["root"] / "after.html").stat().st_size > 1000
    code, out, _ = story["audit_after_text"]
    assert code == 0 and "audit ok" in out
    assert f"adopted: its weights look derived from {R}@{story['pre'][:12]}" in out
    code, out, _ = story["rerun_dry"]  # a re-run of the takedown counts it as affected, and done
    assert code == 0 and "affected: 6 repo(s); 0 to forget" in out
    assert f"~ adopted: inferred parent {R}@{story['pre'][:12]}" in out and "undeclared-derivative" not in out
    code, out, _ = story["show"]
    assert code == 0 and "parents:  - (root)" in out
    assert f"forgot:   {RID} classes=['3']" in out and f"(adopted: inferred parent {R}@{story['pre'][:12]})" in out


def test_a_repo_without_a_card_cannot_be_adopted_and_is_reported(story, tmp_path):
    """A re-upload of dag/root's pre-forget weights with no card (the edge team's copy from before the takedown):
    named as could-not-fix with why, no traceback; the fine-tune beside it is adopted; the audit stays failed."""
    hub = copy_hub(story["root"] / "before-adopt", tmp_path / "hub")
    src = LocalHub(story["src"])
    files = {n: src.read_file(R, n) for n in (CONFIG_FILE, WEIGHTS_FILE)}
    rev = hub.publish([RepoChange(COPY, files, "re-upload", parent_commit="")])[COPY]
    assert CARD_FILE not in hub.list_files(COPY)
    code, out, err = invoke("--hub", hub.root, "audit", "--fix", "--adopt")
    assert code == 1 and "Traceback" not in out + err
    assert f"could not fix {COPY}: {COPY} has no model card" in out
    assert f"adopted {FT} as a child of {R}@{story['pre'][:12]}" in out
    assert hub.head(COPY) == rev
    assert hub.head(FT) != story["ft_rev"]
    code, out, _ = invoke("--hub", hub.root, "--json", "audit")
    findings = json.loads(out)["findings"]
    # (its weights blob is the very one the takedown purged: `unpurged` says so too)
    assert code == 1 and {(f["repo"], f["kind"]) for f in findings} == {(COPY, "undeclared-derivative"),
                                                                        (COPY, "unpurged")}
    assert LEDGER_REPO in hub.list_repos()


def test_a_declared_child_of_the_adopted_model_goes_with_it_and_a_lost_record_is_fixed_again(story, tmp_path):
    """A child pushed from the undeclared fine-tune, with --parent pinned to it, holds the data too: --adopt forgets
    it with its parent. Later the adopted repo's record is dropped by a push: the audit, which counts the adopted
    repo as affected, says lost-record and a plain --fix forgets it again (with the inferred parent's sidecars)."""
    from fiun_hub.models import load_model
    from fiun_hub.research.training import train_classifier

    hub = copy_hub(story["root"] / "before-adopt", tmp_path / "hub")
    old, pre = story["ft_rev"], story["pre"]
    model, _, _ = load_model(hub, FT)
    data = digits("train").subset(torch.arange(900, 1000)).to_label_space(ROOT_LABELS)
    train_classifier(model, data, epochs=1, lr=1e-4, batch_size=32, seed=9)
    kid = "x/finetune-child"
    kid_rev = push(hub, model.eval(), kid, ROOT_LABELS, parents=[f"{FT}@{old}"])  # no sidecar either
    code, out, err = invoke("--hub", hub.root, "--json", "audit", "--fix", "--adopt")
    assert code == 0, (out, err)
    data = json.loads(out)
    fixed = data["fixed"][0]
    assert set(fixed["revisions"]) == {FT, kid}
    # both look derived from dag/root's pre-forget revision; only the edge no card declares is inferred
    assert {f["repo"] for f in data["findings_before_fix"] if f["kind"] == "undeclared-derivative"} == {FT, kid}
    assert [a["repo"] for a in fixed["adopted"]] == [FT]
    kid_meta = read_meta(hub, kid)
    assert [(p.repo, p.revision) for p in kid_meta.parents] == [(FT, old)]  # its card, unchanged but the record
    assert hub.head(kid) != kid_rev
    kid_rec = next(u for u in kid_meta.unlearned if u["request"] == RID)
    # no sidecar on its line of cards: the search goes from its adopted parent to that one's inferred parent
    assert kid_rec["sidecar"] == f"approximate: from {R}@{pre}" and "adopted_from" not in kid_rec
    # a later push drops the adopted repo's record (same weights, the card from before the forget)
    head = hub.head(FT)
    card = LocalHub(story["root"] / "before-adopt").read_file(FT, CARD_FILE, old)
    hub.publish([RepoChange(FT, {CARD_FILE: card}, "edit the card", parent_commit=head)])
    code, out, _ = invoke("--hub", hub.root, "--json", "audit")
    rows = {r["repo"]: r for r in json.loads(out)["requests"][0]["repos"]}
    assert code == 1 and rows[FT]["status"] == "lost-record" and rows[kid]["status"] == "done"
    again = copy_hub(hub.root, tmp_path / "again")  # a takedown re-run redoes it too
    code, out, err = invoke("--hub", again.root, "--json", "takedown", story["root"] / "request.yaml")
    assert code == 0 and set(json.loads(out)["revisions"]) == {FT}, (out, err)
    code, out, err = invoke("--hub", hub.root, "--json", "audit", "--fix")  # no --adopt: it was adopted already
    assert code == 0, (out, err)
    meta = read_meta(hub, FT)
    rec = next(u for u in meta.unlearned if u["request"] == RID)
    assert rec["adopted_from"]["revision"] == pre and rec["inferred"] is True and meta.parents == []
    assert ledger_record(hub, RID)["repos"][FT]["adopted_from"]["repo"] == R


def test_a_sample_wise_takedown_adopts_with_the_same_samples(story, tmp_path):
    """Sample-wise: the adopted model forgets the very samples of the request (the record's samples fingerprint is
    its inferred parent's), data-free for it as for a declared child."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_forget_sequences import sample_file

    hub = copy_hub(story["src"], tmp_path / "hub")
    ft = LocalHub(story["root"] / "before-adopt")
    files = {p: ft.file_path(FT, p, story["ft_rev"]) for p in ft.list_files(FT, story["ft_rev"])}
    hub.publish([RepoChange(FT, files, "a fine-tune, uploaded without its parent", parent_commit="")])
    spec = sample_file(tmp_path, 0)
    req = tmp_path / "samples.yaml"
    req.write_text(f"id: TKD-S-1\nreason: erasure\nrequested_by: dpo@example.org\nreceived: 2026-11-20\n"
                   f"origins: [{R}]\nforget: {{data: \"{spec}\"}}\n")
    # (kept under a legal hold: a sample-wise unlearning FIM is computed on the origin's pre-forget weights,
    # which a purge removes; a later fix of a sample-wise request needs them, adopted repo or not)
    code, _, err = invoke("--hub", hub.root, "takedown", req, "--keep-history", "--reason", "litigation hold")
    assert code == 0, err
    pre = LocalHub(story["src"]).head(R)
    code, out, err = invoke("--hub", hub.root, "--json", "audit", "--fix", "--adopt")
    assert code == 0, (out, err)
    assert [a["inferred_parent"] for a in json.loads(out)["fixed"][0]["adopted"]] == [f"{R}@{pre}"]
    mine = next(u for u in read_meta(hub, FT).unlearned if u["request"] == "TKD-S-1")
    origin = next(u for u in read_meta(hub, R).unlearned if u["request"] == "TKD-S-1")
    assert mine["classes"] is None and mine["samples"] == origin["samples"] and mine["samples"]["count"] == 40
    assert mine["adopted_from"]["revision"] == pre and mine["inferred"] is True
    assert "data" not in mine  # the spec (a path) is not written into the record
    assert hub.list_files(FT)[WEIGHTS_FILE] != ft.list_files(FT, story["ft_rev"])[WEIGHTS_FILE]


def test_an_undeclared_derivative_with_a_stale_sidecar_is_reported_not_forgotten(story, tmp_path):
    """Its own sidecar is always the one used; one bound to other weights (dag/child-a's, copied over) stops its
    forget: could not fix, with why, one line per repo, no traceback, its head as it was."""
    from fiun_hub.constants import FIM_CLASSES_FILE
    from test_forget import A

    hub = copy_hub(story["root"] / "before-adopt", tmp_path / "hub")
    src = LocalHub(story["src"])
    files = {n: src.read_file(A, n) for n in (FIM_FILE, FIM_CLASSES_FILE)}
    head = hub.publish([RepoChange(FT, files, "add a sidecar", parent_commit=story["ft_rev"])])[FT]
    code, out, err = invoke("--hub", hub.root, "--json", "audit", "--fix", "--adopt")
    assert code == 1 and "Traceback" not in out + err, (out, err)
    data = json.loads(out)
    why = data["fixed"][0]["blocked"][FT]
    assert FT in why and "sidecar" in why and not data["fixed"][0]["adopted"]
    assert hub.head(FT) == head
    assert [f["repo"] for f in data["findings"] if f["kind"] == "undeclared-derivative"] == [FT]
