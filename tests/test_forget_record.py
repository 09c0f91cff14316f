"""The forget record (fiun_hub/forget_record.py): one typed view of a card's ``fiun.unlearned`` entries that reads
every record the schema accepts and writes it back byte for byte, and writes a forget's own records in the order a
forget has always written them (issue 14 item 6)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from fiun_hub.card import CardMeta, ParentRef, check_record, parse_card, render_card
from fiun_hub.forget_record import (AdoptedFrom, ForgetRecord, RecordError, SamplesFingerprint, forget_records)

A, B = "a" * 40, "b" * 40
EVIDENCE = {"kind": "close", "shared_tensors": 77, "identical_tensors": 0, "init_similarity": 1.0,
            "learned_similarity": 0.994}
SAMPLES = {"sha256": "0635ecc5" * 8, "count": 8, "labels": {"3": 6, "5": 2}}
BASE = {"request": "forget-1a2b3c4d5e6f", "classes": ["3"], "origins": [f"org/root@{A}"], "from_revision": B,
        "alpha": 1.0, "lambda": 0.01, "estimator": "normalized", "reference": "ranked-last", "sidecar": "own",
        "at": "2026-11-22T10:00:00Z"}

# every record shape a forget writes: class-wise, adopted, untouched (no forgotten label here), sample-wise (with
# and without --record-spec), an adopted untouched one, one that used its ancestors' sidecars
WRITTEN = {
    "class-wise": BASE,
    "adopted": {**BASE, "request": "TKD-2026-001",
                "adopted_from": {"repo": "org/root", "revision": A, "evidence": EVIDENCE}, "inferred": True},
    "untouched": {**BASE, "classes": ["9"], "weights": "unchanged"},
    "adopted-untouched": {**BASE, "adopted_from": {"repo": "org/root", "revision": A, "evidence": {}},
                          "inferred": True, "weights": "unchanged"},
    "sample-wise": {**BASE, "classes": None, "alpha": 1.0, "lambda": 1.0, "reference": "zero", "samples": SAMPLES},
    "sample-wise-spec": {**BASE, "classes": None, "reference": "zero", "samples": SAMPLES, "data": "npz:forget.npz"},
    "approximate": {**BASE, "sidecar": f"approximate: from org/a@{A}, org/b@{B}", "origins": [f"a/x@{A}", f"b/y@{B}"]},
}
# what else the schema accepts (cards written by hand, by older versions or by other tools): fewer keys, other
# orders, integers, keys fiun-hub does not know, nulls
READ_ONLY = {
    "request only": {"request": "TKD-C"},
    "hand-written": {"request": "TKD-C", "classes": ["3"], "origins": [f"h/base@{A}"]},
    "reordered": {"at": "2026-01-01T00:00:00Z", "lambda": 1, "request": "r.1", "alpha": 2, "classes": []},
    "unknown keys": {"request": "x_y", "note": {"by": "hand", "list": [1, 2]}, "classes": ["a"], "zz": None},
    "nulls": {"request": "x", "from_revision": None, "origins": None, "sidecar": None, "weights": None},
    "adopted, no evidence": {"request": "x", "inferred": True, "adopted_from": {"repo": "o/r", "revision": A}},
    "odd samples": {"request": "x", "samples": "sha256:..", "weights": 3, "sidecar": 5},
}
SHAPES = {**WRITTEN, **READ_ONLY}


def _card(records: list[dict]) -> str:
    return render_card(CardMeta(parents=[ParentRef("org/root", A)], labels=["3", "5", "9"], unlearned=records),
                       repo="org/x")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_record_shape_round_trips_byte_for_byte(name):
    d = SHAPES[name]
    rec = ForgetRecord.from_dict(d)
    back = rec.to_dict()
    assert back == d and list(back) == list(d)
    assert json.dumps(back) == json.dumps(d)  # same keys, same order, same value types (1 stays 1, not 1.0)
    assert _card([rec.to_dict()]) == _card([d])
    assert ForgetRecord.from_dict(back) == rec
    back["request"] = "changed"  # to_dict is a copy: the record does not change with it
    if isinstance(back.get("adopted_from"), dict):
        back["adopted_from"]["repo"] = "x/y"
    assert ForgetRecord.from_dict(d).to_dict() == rec.to_dict() == d


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_a_record_made_here_writes_the_forgets_keys_in_the_forgets_order(name):
    """What run_forget builds (ForgetRecord(...).to_dict()) is the dict it wrote before: the ten keys always
    (classes null for a sample-wise forget), the others only when set, in the same order."""
    d = WRITTEN[name]
    made = ForgetRecord(request=d["request"], classes=tuple(d["classes"]) if d["classes"] is not None else None,
                        origins=tuple(d["origins"]), from_revision=d["from_revision"], alpha=d["alpha"],
                        lam=d["lambda"], estimator=d["estimator"], reference=d["reference"], sidecar=d["sidecar"],
                        at=d["at"], adopted_from=d.get("adopted_from"), inferred=d.get("inferred"),
                        weights=d.get("weights"), samples=d.get("samples"), data=d.get("data"))
    assert json.dumps(made.to_dict()) == json.dumps(d)
    assert made == ForgetRecord.from_dict(d)  # equal whatever the key order it came with
    assert _card([made.to_dict()]) == _card([d])


BAD = [
    ("not a mapping", ["x"], "card field fiun.unlearned must be a list of records"),
    ("no request", {"classes": ["a"]}, "each fiun.unlearned record needs a request id"),
    ("bad request", {"request": "a/b"}, "request id 'a/b' is not letters"),
    ("short revision", {"request": "r", "from_revision": "abc"}, "from_revision must be a 40-hex commit id"),
    ("classes of ints", {"request": "r", "classes": [3]}, "classes must be a list of strings"),
    ("alpha a bool", {"request": "r", "alpha": True}, "alpha must be a number"),
    ("at a number", {"request": "r", "at": 3}, "at must be a string"),
    ("inferred a string", {"request": "r", "inferred": "yes"}, "inferred must be true or false"),
    ("adopted, not inferred", {"request": "r", "adopted_from": {"repo": "o/r", "revision": A}}, "needs inferred: true"),
    ("adopted, bad repo", {"request": "r", "inferred": True, "adopted_from": {"repo": "o", "revision": A}},
     "adopted_from must be"),
]


@pytest.mark.parametrize("name,record,msg", BAD, ids=[b[0] for b in BAD])
def test_from_dict_refuses_what_the_schema_refuses_with_its_message(name, record, msg):
    with pytest.raises(RecordError) as want:
        check_record(record, "org/x@abc")
    with pytest.raises(RecordError) as got:
        ForgetRecord.from_dict(record, "org/x@abc")
    assert str(got.value) == str(want.value) and msg in str(got.value) and str(got.value).startswith("org/x@abc: ")
    with pytest.raises(RecordError):
        forget_records([BASE, record])


def test_typed_accessors():
    base, adopted = ForgetRecord.from_dict(WRITTEN["class-wise"]), ForgetRecord.from_dict(WRITTEN["adopted"])
    assert (base.request, base.classes, base.lam, base.class_wise) == ("forget-1a2b3c4d5e6f", ("3",), 0.01, True)
    assert base.adopted is None and not base.is_inferred and base.own_sidecar and not base.weights_unchanged
    assert adopted.adopted == AdoptedFrom("org/root", A, EVIDENCE) and adopted.is_inferred
    assert ForgetRecord.from_dict(WRITTEN["adopted-untouched"]).weights_unchanged
    assert not ForgetRecord.from_dict(WRITTEN["approximate"]).own_sidecar
    assert ForgetRecord.from_dict({"request": "old"}).own_sidecar  # written before the sidecar key: its own
    assert not ForgetRecord.from_dict({"request": "x", "sidecar": None}).own_sidecar  # (as u.get("sidecar", OWN))
    sample = ForgetRecord.from_dict(WRITTEN["sample-wise"])
    assert not sample.class_wise and sample.samples_fingerprint == SamplesFingerprint(SAMPLES["sha256"], 8,
                                                                                      {"3": 6, "5": 2})
    assert ForgetRecord.from_dict(READ_ONLY["odd samples"]).samples_fingerprint is None
    assert base.origin_revision("org/root") == A and base.origin_revision("org/other") is None
    assert ForgetRecord.from_dict(READ_ONLY["adopted, no evidence"]).adopted == AdoptedFrom("o/r", A, {})
    assert base.has("lambda") and not base.has("weights") and not base.has("lam")
    with pytest.raises(AttributeError):
        base.request = "other"  # frozen
    meta = parse_card(_card([WRITTEN["class-wise"], WRITTEN["adopted"]]))
    assert meta.records == [base, adopted] and meta.record("TKD-2026-001") == adopted and meta.record("x") is None


def test_records_of_real_forgets_round_trip_and_the_origin_fim_pickles(tmp_path):
    """A class-wise forget, then a sample-wise one (with --record-spec) on a real hub (h/base -> h/child, test_resnet):
    every stored card re-rendered from its records read as ForgetRecord and written back is the same bytes, each
    record has the forget's key order, and the origin's unlearning FIM (OriginFim) pickles, as a task for another
    process would carry it."""
    from conftest import base_and_child_hub
    from fiun_hub.constants import CARD_FILE
    from fiun_hub.card import parse_card_full
    from fiun_hub.data import load_images
    from fiun_hub.unlearn import OriginFim, forget, origin_unlearning_fim, plan_forget

    built = base_and_child_hub(tmp_path, "test_resnet", 24, (1, 16, 16))
    hub = built["hub"]
    plan = plan_forget(hub, ["h/base"], classes=["3"])
    u = origin_unlearning_fim(hub, plan, "h/base")
    assert isinstance(u, OriginFim) and u.revision == built["base"] and u.labels == [str(i) for i in range(10)]
    again = pickle.loads(pickle.dumps(u))
    assert (again.labels, again.revision, again.estimator) == (u.labels, u.revision, u.estimator)
    assert sorted(again.fim) == sorted(u.fim) and all(again.fim[n].equal(u.fim[n]) for n in u.fim)
    forget(hub, ["h/base"], classes=["3"])
    imgs = load_images("digits:train")
    np.savez(tmp_path / "forget.npz", x=imgs.x[:4].numpy().astype(np.float32), y=imgs.y[:4].numpy().astype(np.int64),
             labels=np.array(imgs.labels))
    forget(hub, ["h/base"], data_spec=f"npz:{tmp_path / 'forget.npz'}", record_spec=True)
    seen = 0
    for repo in ("h/base", "h/child"):
        for info in hub.history(repo):
            text = hub.read_file(repo, CARD_FILE, info.id).decode()
            meta, body = parse_card_full(text)
            for d in meta.unlearned:
                keys = list(d)
                assert keys[:10] == ["request", "classes", "origins", "from_revision", "alpha", "lambda",
                                     "estimator", "reference", "sidecar", "at"], keys
                assert keys[10:] in ([], ["samples", "data"]), keys
                seen += 1
            meta.unlearned = [r.to_dict() for r in meta.records]
            assert render_card(meta, body, repo) == text
    assert seen == 2 + 4  # each repo: the class-wise record, then both records at the second forget's head
