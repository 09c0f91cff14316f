"""The CLI around FIUn: `forget` (class-wise, sample-wise, --dry-run, --workers, idempotence, bad input of every
kind), `fim`, `eval` and `demo`, on real hubs of real timm models.

Every command goes through the real click entry point in-process (the `cli` fixture: a subprocess would pay for
importing torch and timm each time; tests/test_cli_hub.py runs the console script itself). Hubs are built once
(see tests/test_forget.py) and copied before each use.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fiun_hub.constants import WEIGHTS_FILE
from fiun_hub.hub.local import LocalHub
from test_forget import AFFECTED, FORGET, IL_LABELS, I, R, ROOT_LABELS, U, V, copy_hub, digits, heads, small_hub, \
    trained_dag


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    return trained_dag(tmp_path_factory)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_hub(tmp_path_factory)


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fiun-hub: error: ") and len(lines[0]) > len("fiun-hub: error: ") + 5
    assert "Traceback" not in err + out
    return lines[0]


def ok(code: int, out: str, err: str):
    assert code == 0, (code, out, err)
    return out


# ----------------------------------------------------------------------------------------------- forget
def test_forget_workers_2_matches_workers_1_and_reruns_are_noops(cli, dag, tmp_path, hub_fingerprint):
    h1 = copy_hub(dag[0], tmp_path / "h1")
    h2 = copy_hub(dag[0], tmp_path / "h2")
    old = heads(h1)
    r1 = json.loads(ok(*cli("--hub", h1.root, "--json", "forget", "--origin", R, "--classes", FORGET,
                            "--workers", "1")))
    r2 = json.loads(ok(*cli("--hub", h2.root, "--json", "forget", "--origin", R, "--classes", FORGET,
                            "--workers", "2")))
    for r, h in ((r1, h1), (r2, h2)):
        assert r["noop"] is False and set(r["revisions"]) == set(AFFECTED)
        assert [n["repo"] for n in r["plan"]["nodes"]] == AFFECTED and r["plan"]["unaffected"] == 2
        for repo in AFFECTED:
            assert r["revisions"][repo] == {"from": old[repo], "to": h.head(repo)} and h.head(repo) != old[repo]
            assert r["stats"][repo]["weights_sha256"] == h.list_files(repo)[WEIGHTS_FILE]
        assert h.head(U) == old[U] and h.head(V) == old[V]
    for repo in AFFECTED:  # the process pool gives exactly the same bytes
        assert h1.list_files(repo)[WEIGHTS_FILE] == h2.list_files(repo)[WEIGHTS_FILE]
        assert h1.read_file(repo, WEIGHTS_FILE) == h2.read_file(repo, WEIGHTS_FILE)
        assert h1.list_files(repo)[WEIGHTS_FILE] != h1.list_files(repo, old[repo])[WEIGHTS_FILE]
    # the same request again: nothing to do, nothing written (JSON and text)
    snap1, snap2 = hub_fingerprint(h1.root), hub_fingerprint(h2.root)
    again = json.loads(ok(*cli("--hub", h1.root, "--json", "forget", "--origin", R, "--classes", FORGET)))
    assert again["noop"] is True and again["request_id"] == r1["request_id"]
    out = ok(*cli("--hub", h2.root, "forget", "--origin", R, "--classes", FORGET, "--workers", "2"))
    assert "already applied" in out and r2["request_id"] in out
    assert hub_fingerprint(h1.root) == snap1 and hub_fingerprint(h2.root) == snap2


def test_dry_run_prints_the_plan_and_changes_nothing(cli, dag, tmp_path, hub_fingerprint):
    hub = copy_hub(dag[0], tmp_path / "hub")
    snap, old = hub_fingerprint(hub.root), heads(hub)
    out = ok(*cli("--hub", hub.root, "forget", "--origin", R, "--classes", FORGET, "--dry-run"))
    assert "affected: 5 repo(s), 2 other repo(s) untouched" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("  dag/")}
    assert set(lines) == set(AFFECTED)
    for repo, depth, shape in ((R, 0, "8x96"), ("dag/child-a", 1, "8x96"), (I, 1, "10x96"), ("dag/merged", 2, "8x96")):
        assert lines[repo][1:] == [str(depth), old[repo][:12], "ok", shape, R]
    d = json.loads(ok(*cli("--hub", hub.root, "--json", "forget", "--origin", R, "--classes", FORGET, "--dry-run")))
    assert d["noop"] is False and d["problems"] == [] and d["unaffected"] == 2
    assert d["origins"] == [R] and d["classes"] == [FORGET] and d["alpha"] == 1.0 and d["lam"] == 0.01
    nodes = {n["repo"]: n for n in d["nodes"]}
    assert [n["repo"] for n in d["nodes"]] == AFFECTED
    assert {r: n["depth"] for r, n in nodes.items()} == {R: 0, "dag/child-a": 1, "dag/child-b": 1, I: 1,
                                                         "dag/merged": 2}
    assert all(n["sources"] == [R] and n["sidecar"] == "ok" and n["problems"] == [] and n["done"] is False
               for n in nodes.values())
    assert nodes[I]["head_shape"] == [10, 96] and nodes[R]["head_shape"] == [8, 96]
    assert nodes[I]["labels"] == IL_LABELS and nodes[I]["forget_here"] == [FORGET]
    assert all(nodes[r]["head"] == old[r] for r in AFFECTED)
    assert hub_fingerprint(hub.root) == snap


def test_dry_run_with_problems_lists_them_and_exits_2(cli, small, tmp_path, hub_fingerprint):
    hub = copy_hub(small[0], tmp_path / "hub")
    snap = hub_fingerprint(hub.root)
    code, out, err = cli("--hub", hub.root, "--json", "forget", "--origin", "s/nosc", "--classes", "1", "--dry-run")
    line = one_error_line(code, out, err)
    d = json.loads(out)
    assert d["nodes"][0]["repo"] == "s/nosc" and d["nodes"][0]["sidecar"] == "none"
    assert d["problems"] and "s/nosc" in d["problems"][0] and d["problems"][0] in line
    assert hub_fingerprint(hub.root) == snap


# (args after `forget`, what the error line must name or None, a word of the message / the fix)
BAD = {
    "no-sidecar": (["--origin", "s/nosc", "--classes", "1"], "s/nosc", "fiun-hub fim s/nosc --data"),
    "stale-sidecar": (["--origin", "s/stale", "--classes", "1"], "s/stale", "fiun-hub fim s/stale --data"),
    "class-never-had": (["--origin", "s/origin", "--classes", "1,7"], "s/origin", "7"),
    "empty-forget-set": (["--origin", "s/origin", "--classes", ","], None, "empty forget set"),
    "nan-in-sidecar": (["--origin", "s/nan-root", "--classes", "1"], "s/nan-child", "non-finite"),
    "head-not-in-sidecar": (["--origin", "s/hl-root", "--classes", "1"], "s/headless", "cannot be aligned"),
    "other-estimator": (["--origin", "s/est-root", "--classes", "1"], "s/batch-child", "fiun-hub fim --estimator"),
    "classes-and-data": (["--origin", "s/origin", "--classes", "1", "--data", "digits:train"], None,
                         "exactly one of"),
    "neither-classes-nor-data": (["--origin", "s/origin"], None, "exactly one of"),
    "unknown-origin": (["--origin", "s/nope", "--classes", "1"], "s/nope", "not found"),
    "bad-origin-id": (["--origin", "../etc", "--classes", "1"], "../etc", ""),
    "alpha-zero": (["--origin", "s/origin", "--classes", "1", "--alpha", "0"], None, "alpha"),
    "workers-zero": (["--origin", "s/origin", "--classes", "1", "--workers", "0"], None, "workers"),
    # one task fails (Inf in s/inf-child's weights) inside a process pool while the other two succeed
    "task-fails": (["--origin", "s/inf-root", "--classes", "1", "--workers", "2"], "s/inf-child", "non-finite"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_forget_bad_input_one_line_exit_2_hub_unchanged(cli, small, tmp_path, hub_fingerprint, case):
    args, names, words = BAD[case]
    hub = copy_hub(small[0], tmp_path / "hub")
    snap = hub_fingerprint(hub.root)
    line = one_error_line(*cli("--hub", hub.root, "forget", *args))
    if names:
        assert names in line, line
    assert words in line, line
    assert hub_fingerprint(hub.root) == snap


def test_samplewise_forget_records_a_fingerprint_not_the_path(cli, dag, tmp_path):
    import hashlib

    from sklearn.datasets import load_digits

    from fiun_hub.repo import read_meta, show

    hub = copy_hub(dag[0], tmp_path / "hub")
    old = heads(hub)
    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == 3)[:6], np.flatnonzero(d.target == 5)[:2]])
    path = tmp_path / "jane-doe-photos.npz"
    x, y = d.images[keep].astype(np.float32), d.target[keep].astype(np.int64)
    np.savez(path, x=x, y=y, labels=np.array([str(i) for i in range(10)]))
    spec = f"npz:{path}"
    # the fingerprint, computed here from the arrays as stored (docs/card-schema.md)
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}{list(x.shape)}".encode())
    h.update(x.tobytes())
    h.update(y.tobytes())
    h.update("\x00".join(str(i) for i in range(10)).encode())
    want = {"sha256": h.hexdigest(), "count": 8, "labels": {"3": 6, "5": 2}}
    r = json.loads(ok(*cli("--hub", hub.root, "--json", "forget", "--origin", R, "--data", spec)))
    assert r["noop"] is False and set(r["revisions"]) == set(AFFECTED)
    for repo in AFFECTED:
        assert hub.head(repo) != old[repo]
        rec = read_meta(hub, repo).unlearned[-1]
        assert "data" not in rec and rec["samples"] == want, rec
        assert rec["request"] == r["request_id"] and rec["classes"] is None
        assert rec["origins"] == [f"{R}@{old[R]}"] and rec["from_revision"] == old[repo]
        assert "jane-doe" not in hub.read_file(repo, "README.md").decode()
        assert "jane-doe" not in hub.commit_info(repo).message
        assert show(hub, repo)["sidecar"]["state"] == "ok"
    assert hub.head(U) == old[U]
    again = json.loads(ok(*cli("--hub", hub.root, "--json", "forget", "--origin", R, "--data", spec)))
    assert again["noop"] is True
    # --record-spec writes the spec too, when the user wants it there
    hub2 = copy_hub(dag[0], tmp_path / "hub2")
    ok(*cli("--hub", hub2.root, "forget", "--origin", R, "--data", spec, "--record-spec"))
    rec = read_meta(hub2, R).unlearned[-1]
    assert rec["data"] == spec and rec["samples"] == want


# ----------------------------------------------------------------------------------------------- fim
def test_fim_commits_sidecars(cli, small, tmp_path, hub_fingerprint):
    hub = copy_hub(small[0], tmp_path / "hub")
    repo = "s/nosc"
    for estimator in (None, "per-sample", "batch"):
        old = hub.head(repo)
        extra = ["--estimator", estimator] if estimator else []
        info = json.loads(ok(*cli("--hub", hub.root, "--json", "fim", repo, "--data", "digits:train", *extra)))
        new = hub.head(repo)
        assert info["revision"] == new != old and info["model_commit"] == old
        assert hub.commit_info(repo).parents == [old]
        assert hub.list_files(repo)[WEIGHTS_FILE] == hub.list_files(repo, old)[WEIGHTS_FILE]
        assert info["layers"] == ["fc.weight", "fc.bias"]
        want = estimator or "normalized"
        assert info["estimator"] == want
        assert set(info["counts"]) == {"0", "1", "2"} and info["samples"] == sum(info["counts"].values()) > 0
        shown = json.loads(ok(*cli("--hub", hub.root, "--json", "show", repo)))
        assert shown["revision"] == new and shown["sidecar"]["state"] == "ok"
        assert shown["sidecar"]["estimator"] == want and shown["sidecar"]["layers"] == ["fc.weight", "fc.bias"]
        if estimator == "batch":
            assert shown["sidecar"]["batch_size"] == "64"
    # the sidecars make the repo a valid origin
    d = json.loads(ok(*cli("--hub", hub.root, "--json", "forget", "--origin", repo, "--classes", "1", "--dry-run")))
    assert d["problems"] == [] and d["nodes"][0]["sidecar"] == "ok"
    # data sharing no label with the model
    snap = hub_fingerprint(hub.root)
    line = one_error_line(*cli("--hub", hub.root, "fim", "s/cats", "--data", "digits:train"))
    assert "s/cats" in line and "no label" in line
    line = one_error_line(*cli("--hub", hub.root, "fim", "s/cats", "--data", "digits:train", "--estimator", "fisher"))
    assert hub_fingerprint(hub.root) == snap


# ----------------------------------------------------------------------------------------------- eval
def test_eval_matches_forget_retain_accuracy(cli, dag, tmp_path, hub_fingerprint):
    from fiun_hub.evaluate import accuracy, forget_retain_accuracy
    from fiun_hub.models import load_model

    hub = copy_hub(dag[0], tmp_path / "hub")
    snap = hub_fingerprint(hub.root)
    test = digits("test")
    for repo, labels in ((R, ROOT_LABELS), (I, IL_LABELS)):
        res = json.loads(ok(*cli("--hub", hub.root, "--json", "eval", repo, "--data", "digits:test",
                                 "--forget-classes", FORGET)))
        model, config, cid = load_model(hub, repo)
        assert config.labels == labels and res["revision"] == cid and res["repo"] == repo
        known = test.to_label_space(labels)
        f, r = forget_retain_accuracy(model, labels, test, [FORGET])
        assert res["samples"] == len(known)
        assert res["accuracy"] == pytest.approx(accuracy(model, known))
        assert res["forget_acc"] == pytest.approx(f) and res["retain_acc"] == pytest.approx(r)
        assert res["forget_classes"] == [FORGET] and 0 <= f <= 100 and 0 <= r <= 100
        # accuracy is the sample-weighted mix of forget and retain accuracy
        n_f = int((test.y == test.labels.index(FORGET)).sum())
        assert res["accuracy"] == pytest.approx((f * n_f + r * (len(known) - n_f)) / len(known), abs=1e-3)
    out = ok(*cli("--hub", hub.root, "eval", R, "--data", "digits:test", "--forget-classes", FORGET))
    assert "forget accuracy" in out and "retain accuracy" in out
    line = one_error_line(*cli("--hub", hub.root, "eval", R, "--data", "digits:test", "--forget-classes", "9"))
    assert R in line and "9" in line
    assert hub_fingerprint(hub.root) == snap


# ----------------------------------------------------------------------------------------------- demo
def test_demo_tl_no_retrain(cli, tmp_path):
    from fiun_hub.repo import read_meta

    d = tmp_path / "demo"
    out = json.loads(ok(*cli("--json", "demo", "--dir", d, "--scenario", "tl", "--no-retrain")))
    assert out["scenario"] == "tl" and out["forget_classes"] == ["3"] and out["retrain_seconds"] is None
    hub = LocalHub(out["hub"])
    affected = [m for m in out["models"] if m["affected"]]
    assert affected and {m["repo"] for m in affected} >= set(out["origins"])
    for m in affected:
        labels = read_meta(hub, m["repo"]).labels
        if "3" in labels:
            assert m["forget_acc"] is not None and m["forget_acc"] <= 1.0, m
        else:
            assert m["forget_acc"] is None, m
        assert any(u["request"] == out["request_id"] for u in read_meta(hub, m["repo"]).unlearned)
    assert all(m["forget_acc"] is not None for m in affected if m["repo"] in out["origins"])
    png = Path(out["lineage_png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_a_dir_holding_other_files(cli, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.txt").write_text("do not delete")
    line = one_error_line(*cli("demo", "--dir", d, "--scenario", "tl", "--no-retrain"))
    assert str(d) in line
    assert (d / "thesis.txt").read_text() == "do not delete" and sorted(p.name for p in d.iterdir()) == ["thesis.txt"]
