"""Round 4 of outside testing: cases the earlier rounds did not cover, each found failing on the real CLI.

1. A child pinned to an older revision of its parent, whose card then declared an ancestor that the parent's
   head no longer declares (the parent was re-pushed with other parents). The child still derives from that
   ancestor through the revision it pins, so a forget at the ancestor must reach it, and an audit must not say ok
   while it is left untouched. The child here has weights of its own (a distillation-like retrain), so no
   weight fingerprint can find it: only the cards say where it came from. The takedown's purge also removes the
   weights of the parent's earlier revision that the child derives through (it is a fine-tune of the data too),
   or keeps it on the legal hold of --keep-history.
2. A takedown at a model in the middle of a declared lineage: its ancestor and siblings are no undeclared
   derivatives of it.
3. Numbers out of range: `log -n 0/-1`, `fim --workers 10^11`, `demo --seed -1/10^23`.
4. A sidecar header whose class count is 2^80 or 10^400.
5. A model that cannot run on the input size its config declares (test_convnext at 1x16x16).
Every case failed on the code before its fix (exit 0 with a wrong plan or audit, or a traceback).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import DIGIT_LABELS
from test_compliance import one_thread  # noqa: F401  (autouse: one torch thread)
from fiun_hub.compliance.ledger import ledger_record
from fiun_hub.hub.local import LocalHub

IN = (1, 16, 16)
REQUEST = """\
id: TKD-R4-1
reason: outsider round 4
requested_by: dpo@example.org
received: 2026-11-20
origins: [t/o]
forget:
  classes: ["3"]
"""


def _digits(split: str):
    from fiun_hub.data import load_data

    return load_data(f"digits:{split}", in_chans=1, input_size=IN[1:]).to_label_space(DIGIT_LABELS)


def _trained(seed: int, data, epochs: int, init=None):
    from fiun_hub.research.scenarios import new_model
    from fiun_hub.research.training import train_classifier

    model = new_model("test_resnet", 10, 1, seed)
    if init is not None:
        model.load_state_dict(init.state_dict())
    train_classifier(model, data, epochs=epochs, lr=3e-3, batch_size=32, seed=seed)
    return model.eval()


@pytest.fixture(scope="module")
def reparented(tmp_path_factory):
    """t/o -> t/a@rev1 -> t/x, then t/a re-pushed (rev2) with no parent: t/x still pins t/a@rev1.

    Real trained test_resnet models with sidecars; t/x is trained from fresh weights (its card is its only
    provenance)."""
    from fiun_hub.research.scenarios import push_model

    hub = LocalHub.init(tmp_path_factory.mktemp("reparented") / "hub")
    train = _digits("train")
    shard = train.subset(torch.arange(400))
    o = _trained(1, shard, 5)
    rev_o = push_model(hub, o, "t/o", DIGIT_LABELS, input_size=IN, fim_data=shard, data_spec="d")["revision"]
    a = _trained(2, train.subset(torch.arange(400, 500)), 1, init=o)
    rev_a1 = push_model(hub, a, "t/a", DIGIT_LABELS, input_size=IN, parents=[f"t/o@{rev_o}"], relation="finetune",
                        fim_data=shard, data_spec="d")["revision"]
    x = _trained(3, train.subset(torch.arange(500, 900)), 5)
    push_model(hub, x, "t/x", DIGIT_LABELS, input_size=IN, parents=[f"t/a@{rev_a1}"], relation="finetune",
               fim_data=shard, data_spec="d")
    a2 = _trained(4, train.subset(torch.arange(900, 1200)), 2)
    push_model(hub, a2, "t/a", DIGIT_LABELS, input_size=IN, fim_data=shard, data_spec="d")  # no parent now
    return hub


def test_a_forget_reaches_a_child_through_the_revision_it_pins_not_the_parents_head(reparented, cli):
    code, out, err = cli("--hub", reparented.root, "--json", "forget", "--origin", "t/o", "--classes", "3",
                         "--dry-run")
    assert code == 0, err
    affected = [n["repo"] for n in json.loads(out)["nodes"]]
    assert "t/x" in affected, affected  # t/x <- t/a@rev1 <- t/o: it learned from t/o's data
    assert "t/a" not in affected, affected  # t/a's head was retrained without t/o


def test_an_audit_says_ok_only_once_that_child_forgot_too(reparented, tmp_path, cli):
    from fiun_hub.evaluate import forget_retain_accuracy
    from fiun_hub.models import load_model
    from fiun_hub.repo import read_meta

    shutil.copytree(reparented.root, tmp_path / "hub", symlinks=True)
    hub = LocalHub(tmp_path / "hub")
    req = tmp_path / "req.yaml"
    req.write_text(REQUEST)
    code, out, err = cli("--hub", hub.root, "takedown", req)
    assert code == 0, err
    code, out, err = cli("--hub", hub.root, "audit")
    x_forgot = any(r["request"] == "TKD-R4-1" for r in read_meta(hub, "t/x").unlearned)
    model, config, _ = load_model(hub, "t/x")
    forget_acc, _ = forget_retain_accuracy(model, config.labels, _digits("test"), ["3"])
    assert code != 0 or (x_forgot and forget_acc <= 5.0), (code, out, forget_acc)
    assert x_forgot and forget_acc <= 5.0, (forget_acc, out)
    assert code == 0, out


def test_the_takedown_purges_the_earlier_revision_the_child_derives_through(reparented, tmp_path, cli):
    shutil.copytree(reparented.root, tmp_path / "hub", symlinks=True)
    hub = LocalHub(tmp_path / "hub")
    first = hub.history("t/a")[-1].id  # rev1: a fine-tune of t/o, holding its data
    req = tmp_path / "req.yaml"
    req.write_text(REQUEST)
    assert cli("--hub", hub.root, "takedown", req)[0] == 0
    code, out, err = cli("--hub", hub.root, "eval", f"t/a@{first}", "--data", "digits:test")
    assert code == 2 and "purged" in err, (code, out, err)
    code, out, err = cli("--hub", hub.root, "--json", "audit")
    assert code == 0 and json.loads(out)["ok"], (code, out, err)


def test_keep_history_holds_the_earlier_revision_the_child_derives_through(reparented, tmp_path, cli):
    shutil.copytree(reparented.root, tmp_path / "hub", symlinks=True)
    hub = LocalHub(tmp_path / "hub")
    first = hub.history("t/a")[-1].id
    req = tmp_path / "req.yaml"
    req.write_text(REQUEST)
    assert cli("--hub", hub.root, "takedown", req, "--keep-history", "--reason", "litigation")[0] == 0
    held = {}
    for ev in ledger_record(hub, "TKD-R4-1")["events"]:
        held.update((ev.get("hold") or {}).get("revisions") or {})
    assert first in held.get("t/a", []), held
    assert cli("--hub", hub.root, "eval", f"t/a@{first}", "--data", "digits:test")[0] == 0  # kept, on hold


# 2. A takedown at a model in the middle of a declared lineage: its declared ancestors and their other fine-tunes
#    look like it (they all share one ancestor's weights), but the cards explain that; they are no undeclared
#    derivatives of it (`lineage --infer` says so too), and `audit --fix --adopt` must not forget the request in
#    models that never saw its data.
@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """t/o -> t/a, t/b (fine-tunes of t/o; trained test_resnet models with sidecars)."""
    from fiun_hub.research.scenarios import push_model

    hub = LocalHub.init(tmp_path_factory.mktemp("family") / "hub")
    train = _digits("train")
    shard = train.subset(torch.arange(400))
    o = _trained(1, shard, 4)
    rev_o = push_model(hub, o, "t/o", DIGIT_LABELS, input_size=IN, fim_data=shard, data_spec="d")["revision"]
    for repo, seed, rows in (("t/a", 2, (400, 500)), ("t/b", 3, (500, 600))):
        m = _trained(seed, train.subset(torch.arange(*rows)), 1, init=o)
        push_model(hub, m, repo, DIGIT_LABELS, input_size=IN, parents=[f"t/o@{rev_o}"], relation="finetune",
                   fim_data=shard, data_spec="d")
    return hub


def test_an_audit_of_a_mid_lineage_origin_does_not_flag_its_declared_ancestor_and_siblings(family, tmp_path, cli):
    shutil.copytree(family.root, tmp_path / "hub", symlinks=True)
    hub = LocalHub(tmp_path / "hub")
    req = tmp_path / "req.yaml"
    req.write_text(REQUEST.replace("origins: [t/o]", "origins: [t/a]"))
    code, out, err = cli("--hub", hub.root, "takedown", req)
    assert code == 0, err
    code, out, err = cli("--hub", hub.root, "--json", "audit")
    findings = json.loads(out)["findings"]
    assert not [p for p in findings if p["kind"] == "undeclared-derivative"], findings
    assert code == 0, out


# 3. Numbers out of range in options: one line, exit 2, nothing written.
@pytest.mark.parametrize("n", ["-1", "0"])
def test_log_with_a_limit_below_one_is_bad_input(family, cli, hub_fingerprint, n):
    before = hub_fingerprint(family.root)
    code, out, err = cli("--hub", family.root, "log", "t/a", "-n", n)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fiun-hub: error: ") and "--limit" in lines[0], \
        (code, out, err)
    assert hub_fingerprint(family.root) == before


@pytest.mark.parametrize("args", [
    ("fim", "t/a", "--data", "digits:train", "--workers", "99999999999"),  # was: ValueError traceback from torch
    ("demo", "--seed", "-1"),  # was: numpy's ValueError traceback, after the demo folder was made
    ("demo", "--seed", "99999999999999999999999"),
])
def test_numbers_out_of_range_are_one_line(family, tmp_path, cli, hub_fingerprint, args):
    before = hub_fingerprint(family.root)
    if args[0] == "demo":
        args = args + ("--dir", str(tmp_path / "demo"))
    code, out, err = cli("--hub", family.root, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fiun-hub: error: "), (code, out, err)
    assert hub_fingerprint(family.root) == before and not (tmp_path / "demo").exists()


# 4. A sidecar whose header gives a class a count no data set has (2^80, 10^400): pushed, it made every forget of
#    that class a traceback (OverflowError in the unlearning FIM). Refused where the header is read.
@pytest.mark.parametrize("count", [2 ** 80, 10 ** 400])
def test_a_sidecar_with_an_impossible_sample_count_is_refused_in_one_line(family, tmp_path, cli, hub_fingerprint,
                                                                          count):
    from fiun_hub.constants import CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
    from fiun_hub.safetensors_io import header_of_bytes
    from fiun_hub.sidecar_format import RESERVED_KEYS, encode_sidecars, read_sidecars

    folder = tmp_path / "lying"
    folder.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (folder / name).write_bytes(family.read_file("t/o", name))
    fim, classes = family.read_file("t/o", FIM_FILE), family.read_file("t/o", FIM_CLASSES_FILE)
    s = read_sidecars(fim, classes)
    meta = {k: v for k, v in header_of_bytes(fim)[1].items() if k not in RESERVED_KEYS}
    a, b = encode_sidecars(s.model_fim, s.class_fims, {**s.counts, "3": count}, s.labels, s.layers, s.estimator,
                           s.batch_size, meta)
    (folder / FIM_FILE).write_bytes(a)
    (folder / FIM_CLASSES_FILE).write_bytes(b)
    before = hub_fingerprint(family.root)
    code, out, err = cli("--hub", family.root, "push", folder, "t/lying")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "count" in lines[0], (code, out, err)
    assert hub_fingerprint(family.root) == before


# 5. A model that cannot run on the input size its config declares (test_convnext at 1x16x16: its stages shrink a
#    16-pixel image below their 2x2 kernels). `push` took it; `fim` and `eval` then died with torch's RuntimeError
#    traceback (exit 1). Refused at push, and one line where an already stored one is read.
def test_a_model_that_cannot_run_on_its_declared_input_is_refused_in_one_line(tmp_path, cli, model_folder):
    from fiun_hub.constants import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE

    folder = model_folder(arch="test_convnext")  # saved with input size 1x16x16
    hub = LocalHub.init(tmp_path / "hub")
    code, out, err = cli("--hub", hub.root, "push", folder, "z/convnext")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cannot run on its declared input 1x16x16" in lines[0], (code, out, err)
    assert hub.list_repos() == []
    # as an older version stored it: committed without the check
    from fiun_hub.card import CardMeta, render_card
    from fiun_hub.hub.local import RepoChange

    files = {n: (folder / n).read_bytes() for n in (CONFIG_FILE, WEIGHTS_FILE)}
    files[CARD_FILE] = render_card(CardMeta(labels=["cat", "dog", "bird"])).encode()
    hub.publish([RepoChange("z/convnext", files, message="stored by an older version")])
    for args in (("fim", "z/convnext", "--data", "digits:train"), ("eval", "z/convnext", "--data", "digits:test")):
        code, out, err = cli("--hub", hub.root, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "cannot run on its declared input" in lines[0], (args, code, err)
