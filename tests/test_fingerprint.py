"""Weight fingerprints in the lineage index, `lineage --infer`, and audits that find undeclared derivatives.

On a copy of tests/test_forget.py's trained DAG (real test_resnet models trained on digits) we push, with no
parent in their cards: a fine-tune of dag/root, a plain re-upload of dag/root, two models trained from scratch
with different seeds and two trained from one seed on different data. The weights must give away the first two
and none of the independent ones; takedown plans and audits of a forget at dag/root must name the undeclared
derivatives; a damaged fingerprint is one line and exit 2.
"""
from __future__ import annotations

import json

import pytest
import torch

from fiun_hub.constants import WEIGHTS_FILE
from fiun_hub.fingerprint import fingerprint_path, load_fingerprint
from fiun_hub.hub.local import LocalHub
from test_compliance import REQUEST, invoke, one_error_line
from test_forget import A, B, I, M, R, ROOT_LABELS, copy_hub, digits, fresh_model, push, trained_dag

FT, COPY = "x/undeclared-finetune", "x/reupload"
SEEDS = ("ind/seed-11", "ind/seed-12")
SAME = ("ind/same-seed-a", "ind/same-seed-b")
INDEPENDENT = SEEDS + SAME


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from fiun_hub.models import load_model
    from fiun_hub.research.training import train_classifier

    src, _ = trained_dag(tmp_path_factory)
    root = tmp_path_factory.mktemp("infer")
    hub = copy_hub(src, root / "hub")
    train = digits("train")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(17))
    low = perm[train.y[perm] < 8]
    shard = lambda a, b: train.subset(low[a:b]).to_label_space(ROOT_LABELS)  # noqa: E731

    model, config, _ = load_model(hub, R)
    train_classifier(model, shard(0, 120), epochs=2, lr=1e-3, batch_size=32, seed=21)
    push(hub, model.eval(), FT, ROOT_LABELS)  # no --parent: nobody declared it
    from fiun_hub.hub.local import RepoChange

    files = {n: hub.read_file(R, n) for n in ("config.json", WEIGHTS_FILE)}
    hub.publish([RepoChange(COPY, files, "re-upload", parent_commit="")])  # no card at all
    for repo, seed, (a, b) in ((SEEDS[0], 11, (0, 300)), (SEEDS[1], 12, (0, 300)),
                               (SAME[0], 13, (0, 200)), (SAME[1], 13, (200, 400))):
        m = fresh_model(ROOT_LABELS, seed)  # the same recipe as dag/root: 5 epochs at 3e-3
        train_classifier(m, shard(a, b), epochs=5, lr=3e-3, batch_size=32, seed=seed)
        push(hub, m.eval(), repo, ROOT_LABELS)
    req = root / "request.yaml"
    req.write_text(REQUEST)
    return hub, req


def test_every_publish_stores_a_fingerprint_and_the_rebuild_restores_it(built, tmp_path):
    hub, _ = built
    hub = copy_hub(hub.root, tmp_path / "hub")
    for repo in hub.list_repos():
        w = hub.list_files(repo).get(WEIGHTS_FILE)
        if w:
            fp = load_fingerprint(hub, w)
            assert fp.weights == w and len(fp.layout.tensors) == fp.sketch.shape[0] > 10
    w = hub.list_files(FT)[WEIGHTS_FILE]
    path = fingerprint_path(hub, w)
    path.unlink()
    fingerprint_path(hub, hub.list_files(A)[WEIGHTS_FILE]).write_text('{"format": "nonsense"}')
    code, out, err = invoke("--hub", hub.root, "verify", "--repair-index")
    assert code == 0, (out, err)
    assert path.is_file() and load_fingerprint(hub, hub.list_files(A)[WEIGHTS_FILE]).weights


def _infer(hub, *extra):
    code, out, err = invoke("--hub", hub.root, "--json", "lineage", "--infer", *extra)
    return code, json.loads(out), err


def test_infer_finds_the_undeclared_finetune_and_reupload_and_no_independent_model(built):
    hub, _ = built
    code, data, _ = _infer(hub)
    assert code == 0
    edges = {(e["parent"], e["child"]): e for e in data["edges"]}
    ft = edges[(R, FT)]
    assert not ft["declared"] and ft["kind"] == "close" and ft["direction"] == "time"
    assert ft["learned_similarity"] > 0.85 and ft["identical_tensors"] == 0
    copy = edges.get((R, COPY)) or edges[(COPY, R)]
    assert copy["kind"] == "re-upload" and not copy["declared"]
    assert copy["identical_tensors"] == copy["shared_tensors"] > 10
    # the declared fine-tunes of the trained DAG are found too, and known as declared
    assert edges[(R, A)]["declared"] and edges[(R, B)]["declared"]
    assert not [e for e in data["edges"] if e["parent"] in INDEPENDENT or e["child"] in INDEPENDENT]
    assert data["undeclared"] == len([e for e in data["edges"] if not e["declared"]]) >= 2
    code, _, _ = _infer(hub, "--check")
    assert code == 1
    code, out, _ = invoke("--hub", hub.root, "lineage", "--infer")
    assert f"UNDECLARED close: {R} -> {FT}" in out


def test_takedown_plan_and_audit_name_the_undeclared_derivatives(built, tmp_path):
    hub, req = built
    hub = copy_hub(hub.root, tmp_path / "hub")
    pre = hub.head(R)
    code, out, err = invoke("--hub", hub.root, "takedown", req, "--dry-run")
    assert code == 0, err
    assert f"undeclared-derivative (not in the affected set): {FT}: its weights look derived from {R}@{pre[:12]}" \
        in out
    code, out, err = invoke("--hub", hub.root, "--json", "takedown", req)
    assert code == 0, err
    code, out, err = invoke("--hub", hub.root, "--json", "audit")
    assert code == 1
    report = json.loads(out)
    found = {f["repo"]: f for f in report["findings"] if f["kind"] == "undeclared-derivative"}
    assert set(found) == {FT, COPY}
    assert found[FT]["derived_from"] == {"repo": R, "revision": pre}
    assert found[COPY]["evidence"]["kind"] == "re-upload"
    # the declared children forgot; they and the independent models are no findings
    assert {f["repo"] for f in report["findings"]} == {FT, COPY}
    # the fingerprint of the pre-forget revision lives on even when its weights blob is gone
    # (the takedown purged it already; gone either way)
    blob = hub.root / f"models--{R.replace('/', '--')}" / "blobs" / hub.commit_info(R, pre).files[WEIGHTS_FILE]
    blob.unlink(missing_ok=True)
    assert not blob.exists()
    code, out, _ = invoke("--hub", hub.root, "--json", "audit")
    assert code == 1 and {f["repo"] for f in json.loads(out)["findings"]} == {FT, COPY}


def _snapshot(root) -> dict:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_infer_check_is_0_when_every_edge_is_declared(tmp_path_factory, tmp_path):
    """The trained DAG alone (every child declares its parent): edges found, all declared, --check exits 0."""
    src, _ = trained_dag(tmp_path_factory)
    hub = copy_hub(src, tmp_path / "hub")
    code, data, err = _infer(hub, "--check")
    assert code == 0, [e for e in data["edges"] if not e["declared"]]
    edges = {(e["parent"], e["child"]): e for e in data["edges"]}
    assert edges[(R, A)]["declared"] and edges[(R, B)]["declared"]
    assert data["undeclared"] == 0 and all(e["declared"] for e in data["edges"])
    code, out, _ = invoke("--hub", hub.root, "lineage", "--infer", "--check")
    assert code == 0 and "UNDECLARED" not in out


def test_a_damaged_fingerprint_is_one_line_and_exit_2(built, tmp_path):
    hub, req = built
    hub = copy_hub(hub.root, tmp_path / "hub")
    fingerprint_path(hub, hub.list_files(B)[WEIGHTS_FILE]).write_text('{"format": "fiun-fingerprint/1", "weights"')
    before = _snapshot(hub.root)
    line = one_error_line(invoke("--hub", hub.root, "lineage", "--infer"))
    assert "damaged weight fingerprint" in line and B in line
    assert _snapshot(hub.root) == before  # nothing stored changed
    assert LocalHub(hub.root).head(M)
    assert I in hub.list_repos()


def test_a_damaged_fingerprint_fails_audit_with_one_line_and_changes_nothing(built, tmp_path):
    """audit reads the heads' fingerprints to find undeclared derivatives: a damaged one is exit 2, not a pass."""
    hub, req = built
    hub = copy_hub(hub.root, tmp_path / "hub")
    code, _, err = invoke("--hub", hub.root, "takedown", req)
    assert code == 0, err
    fingerprint_path(hub, hub.list_files(FT)[WEIGHTS_FILE]).write_text('{"format": "fiun-fingerprint/1"')
    before = _snapshot(hub.root)
    line = one_error_line(invoke("--hub", hub.root, "audit"))
    assert "damaged weight fingerprint" in line and FT in line
    line = one_error_line(invoke("--hub", hub.root, "audit", "--fix"))
    assert "damaged weight fingerprint" in line
    assert _snapshot(hub.root) == before  # nothing stored changed, --fix included


def test_constant_and_non_finite_tensors_fingerprint_and_compare_without_warnings(tmp_path):
    """A constant tensor has norm exactly 0 (not x - mean rounding noise) and is no evidence; inf/NaN values are
    left out before any arithmetic, and the mean is over the finite values. No RuntimeWarning anywhere."""
    import warnings

    import numpy as np
    from safetensors.numpy import save_file

    from fiun_hub.fingerprint import fingerprint_file, relate, sketch_values

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    bad = rng.standard_normal(100).astype(np.float32)
    finite = bad.copy()
    bad[3], bad[50], bad[77] = np.inf, -np.inf, np.nan
    files = {}
    for name, noise in (("a", 0.0), ("b", 0.01)):
        t = {"w": w + noise * rng.standard_normal(w.shape).astype(np.float32),
             "bias": bias + noise * rng.standard_normal(40).astype(np.float32),
             "const": np.full(100, 0.1, np.float32), "bad": bad}
        files[name] = tmp_path / f"{name}.safetensors"
        save_file(t, str(files[name]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm, sk = sketch_values(np.full(1000, 0.1))
        assert norm == 0.0 and not sk.any()
        norm, sk = sketch_values(np.array([np.inf, np.nan, 1.0]))  # one finite value: nothing to centre
        assert norm == 0.0 and not sk.any()
        fps = {n: fingerprint_file(p, n * 64) for n, p in files.items()}
        names = [t[0] for t in fps["a"].layout.tensors]
        c, b = names.index("const"), names.index("bad")
        assert fps["a"].norms[c] == 0 and not fps["a"].sketch[c].any()
        kept = finite[np.isfinite(bad)].astype(np.float64)
        assert np.isfinite(fps["a"].norms[b])
        assert abs(fps["a"].norms[b] - np.linalg.norm(kept - kept.mean())) < 1e-3
        pairs, merges = relate(fps)
    kind, ev = pairs[("a", "b")]
    assert kind == "close" and not merges
    # the constant tensor is no evidence though it is byte-identical in both; the inf tensor is identical
    assert ev.shared == 3 and ev.identical == 1
