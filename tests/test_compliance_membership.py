"""A sample-wise takedown's audit tests the samples' membership (docs/takedowns.md, "Sample-wise requests"): the
audit's "ok" must not say the samples are gone while a membership attack says they are still in.

One real hub: two test_resnet models over the ten digit labels, trained 10 epochs on a shard of digits:train (300
samples of the other digits, 90 of digit 8: S is 50 of them, T 10 more). m/seen trained on the whole shard;
m/unseen on the shard without S (it still learnt 8s, from the other 40). Request S (origins both) is taken down with today's sample-wise rule (docs/method.md §10), then:

- with `--eval-data digits:test`, m/seen is a `samples-still-members` finding (the rule keeps membership, as
  docs/benchmarks.md §7.1 measures) with its AUC, SE and n in the JSON, exit 1; m/unseen, which never saw S, is not
  (its AUC of S against held-out 8s is near 50) and keeps its status;
- without `--eval-data` the audit says the membership was not checked: exit 0, but not "audit ok";
- a request of the 10 samples T is "not decidable (n=10 ...)": a warning, exit 0, never a plain ok;
- `audit --fix` does not pretend to clear the finding (no new revision; the audit after it still fails).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_compliance import invoke, one_thread  # noqa: F401  (autouse: one torch thread)
from test_forget import copy_hub, digits, fresh_model, heads, push

LABELS = [str(i) for i in range(10)]
SEEN, UNSEEN = "m/seen", "m/unseen"
HEAD = "reason: erasure\nrequested_by: dpo@example.org\nreceived: 2026-11-20\n"


def _npz(path, train_idx: np.ndarray) -> str:
    """The digits:train samples ``train_idx`` (positions in the train split) as raw 8x8 images in an npz."""
    from sklearn.datasets import load_digits

    from fiun_hub.data import _split_indices

    d = load_digits()
    pick = _split_indices(d.target, "train")[train_idx]
    np.savez(path, x=(d.images[pick] / 16.0).astype(np.float32), y=d.target[pick].astype(np.int64),
             labels=np.array(LABELS))
    return f"npz:{path}"


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    from fiun_hub.hub.local import LocalHub
    from fiun_hub.research.scenarios import torch_threads
    from fiun_hub.research.training import train_classifier

    root = tmp_path_factory.mktemp("membership")
    hub = LocalHub.init(root / "hub")
    train = digits("train")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    eights, others = perm[train.y[perm] == 8], perm[train.y[perm] != 8]
    S, T, rest = eights[:50], eights[50:60], torch.cat([eights[60:90], others[:300]])
    with torch_threads(1):
        for repo, idx, seed in ((SEEN, torch.cat([S, T, rest]), 1), (UNSEEN, torch.cat([T, rest]), 2)):
            data = train.subset(idx).to_label_space(LABELS)
            model = fresh_model(LABELS, seed)
            train_classifier(model, data, epochs=10, lr=3e-3, batch_size=32, seed=seed)
            push(hub, model.eval(), repo, LABELS, fim_data=data)
    s = {"hub": hub}
    for rid, idx, origins in (("TKD-S", S, [SEEN, UNSEEN]), ("TKD-T", T, [SEEN])):
        req = root / f"{rid}.yaml"
        req.write_text(f"id: {rid}\n{HEAD}origins: [{', '.join(origins)}]\n"
                       f"forget: {{data: \"{_npz(root / f'{rid}.npz', idx.numpy())}\"}}\n")
        code, out, err = invoke("--hub", hub.root, "takedown", req)
        assert code == 0, (out, err)
    H = ("--hub", hub.root)
    s["S_json"] = invoke(*H, "--json", "audit", "--request", "TKD-S", "--eval-data", "digits:test")
    s["S_text"] = invoke(*H, "audit", "--request", "TKD-S", "--eval-data", "digits:test", "--report",
                         root / "S.md")
    s["S_md"] = (root / "S.md").read_text()
    s["S_plain"] = invoke(*H, "--json", "audit", "--request", "TKD-S")
    s["S_plain_text"] = invoke(*H, "audit", "--request", "TKD-S")
    s["T_json"] = invoke(*H, "--json", "audit", "--request", "TKD-T", "--eval-data", "digits:test")
    s["T_text"] = invoke(*H, "audit", "--request", "TKD-T", "--eval-data", "digits:test")
    return s


def _rows(res) -> dict:
    return {r["repo"]: r for e in json.loads(res[1])["requests"] for r in e["repos"]}


def test_samples_the_model_still_remembers_are_a_finding(story):
    code, out, err = story["S_json"]
    assert code == 1, story["S_text"][1]
    data = json.loads(out)
    assert not data["ok"] and not data["verified"]
    [f] = [f for f in data["findings"] if f["kind"] == "samples-still-members"]
    m = f["membership"]
    assert f["repo"] == SEEN and m["verdict"] == "members" and m["n"] == 50 and m["n_held_out"] >= 20
    assert m["auc"] > m["threshold"] == pytest.approx(50 + 2 * m["se_null"], abs=0.02) and m["se"] > 0
    assert list(m["per_label"]) == ["8"]  # class-conditional: the 8s against held-out 8s only
    assert _rows(story["S_json"])[SEEN]["status"] == "samples-still-members"
    text = story["S_text"][1]
    assert story["S_text"][0] == 1 and "SAMPLES-STILL-MEMBERS" in text and "audit failed" in text
    assert f"AUC {m['auc']:.1f}" in text and "n=50" in text and "retrain without the samples" in text
    assert "samples-still-members" in story["S_md"]


def test_a_model_that_never_saw_the_samples_is_no_finding(story):
    row = _rows(story["S_json"])[UNSEEN]
    m = row["membership"]
    assert row["status"] == "done" and not row["finding"], row
    assert m["verdict"] == "not-detected" and m["n"] == 50 and m["auc"] <= m["threshold"], m
    assert abs(m["auc"] - 50) < 3 * m["se_null"], m  # exchangeable with held-out 8s: about 50
    assert "membership not detected" in story["S_text"][1]


def test_without_eval_data_membership_is_not_checked_and_not_a_plain_ok(story):
    code, out, err = story["S_plain"]
    assert code == 0, (out, err)
    data = json.loads(out)
    assert data["ok"] and not data["verified"]
    assert {w["repo"] for w in data["warnings"]} == {SEEN, UNSEEN}
    assert all(w["kind"] == "membership-unverified" and w["membership"]["verdict"] == "not-checked"
               for w in data["warnings"])
    text = story["S_plain_text"][1]
    assert "audit ok" not in text and "not verified" in text and "membership of the samples not checked" in text


def test_too_few_samples_are_not_decidable_never_ok(story):
    code, out, err = story["T_json"]
    assert code == 0, (out, err)
    data = json.loads(out)
    assert data["ok"] and not data["verified"] and not data["requests"][0]["verified"]
    [w] = data["warnings"]
    assert w["repo"] == SEEN and w["membership"]["verdict"] == "not-decidable" and w["membership"]["n"] == 10
    text = story["T_text"][1]
    assert "membership not decidable (n=10" in text and "audit ok" not in text and "not verified" in text


def test_fix_does_not_pretend_to_clear_it(story, tmp_path):
    """`audit --fix` would apply the same sample-wise rule again: it leaves the repo as it is and says so, and the
    audit after it still fails."""
    hub = copy_hub(story["hub"].root, tmp_path / "hub")
    before = heads(hub)
    code, out, err = invoke("--hub", hub.root, "--json", "audit", "--request", "TKD-S", "--fix", "--eval-data",
                            "digits:test")
    assert code == 1, (out, err)
    data = json.loads(out)
    assert data["fixed"][0]["revisions"] == {} and data["fixed"][0]["unfixable"] == [SEEN]
    assert [f["kind"] for f in data["findings"]] == ["samples-still-members"] and heads(hub) == before


def _hand_set(conf: list[float], y: list[int]):
    """Samples whose logits are set by hand (conftest's FixedLogits): the true class gets logit ``conf``."""
    from fiun_hub.data import LabeledData

    x = torch.zeros(len(y), 1, 1, 2)
    x[torch.arange(len(y)), 0, 0, torch.tensor(y)] = torch.tensor(conf)
    return LabeledData(x, torch.tensor(y), ["a", "b"])


def test_the_test_is_class_conditional_and_counts_what_it_compares():
    """Hand-set losses: the request's "a"s score like held-out "a"s, but held-out "b"s are hard. Pooled against
    every held-out sample the "a"s would look like members (AUC about 75); against held-out "a"s they are not.
    Under 20 of either: not decidable. Samples of a label the held-out data lacks are counted as unmatched."""
    from conftest import FixedLogits
    from fiun_hub.compliance.measure import membership
    from fiun_hub.evaluate import mia_auc_from_losses, per_sample_losses

    model = FixedLogits(2)
    conf = [float(v) for v in np.linspace(0.5, 3.0, 30)]
    members = _hand_set(conf, [0] * 30)
    held = _hand_set(conf + [0.1] * 30, [0] * 30 + [1] * 30)
    pooled = mia_auc_from_losses(per_sample_losses(model, ["a", "b"], members),
                                 per_sample_losses(model, ["a", "b"], held))
    assert pooled > 70  # what an unconditional test would call membership
    m = membership(model, ["a", "b"], members, held)
    assert m["verdict"] == "not-detected" and m["auc"] == 50.0 and m["n"] == 30 and m["n_held_out"] == 30
    assert m["per_label"] == {"a": [30, 30, 50.0]} and m["unmatched"] == 0
    few = membership(model, ["a", "b"], _hand_set(conf[:10] + [1.0], [0] * 10 + [1]), _hand_set(conf, [0] * 30))
    assert few["verdict"] == "not-decidable" and few["n"] == 10 and few["unmatched"] == 1
