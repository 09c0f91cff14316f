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
from test_compliance import REQUEST, invoke, one_error_line, one_thread  # noqa: F401  (autouse: one torch thread)
from test_forget import A, B, I, M, R, ROOT_LABELS, copy_hub, digits, fresh_model, push, trained_dag

FT, COPY = "x/undeclared-finetune", "x/reupload"
SEEDS = ("ind/seed-11", "ind/seed-12")
SAME = ("ind/same-seed-a", "ind/same-seed-b")
INDEPENDENT = SEEDS + SAME


def digit_shard():
    """``shard(a, b)``: images a..b of a fixed shuffle of digits:train's 0-7, in dag/root's label space."""
    train = digits("train")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(17))
    low = perm[train.y[perm] < 8]
    return lambda a, b: train.subset(low[a:b]).to_label_space(ROOT_LABELS)


def undeclared_finetune(hub):
    """dag/root fine-tuned for 2 epochs on 120 images it was not trained on (seed 21): the derivative that its
    pusher does not declare. Returns the model (eval mode), not pushed."""
    from fiun_hub.models import load_model
    from fiun_hub.research.training import train_classifier

    model, _, _ = load_model(hub, R)
    train_classifier(model, digit_shard()(0, 120), epochs=2, lr=1e-3, batch_size=32, seed=21)
    return model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from fiun_hub.research.training import train_classifier

    src, _ = trained_dag(tmp_path_factory)
    root = tmp_path_factory.mktemp("infer")
    hub = copy_hub(src, root / "hub")
    shard = digit_shard()
    push(hub, undeclared_finetune(hub), FT, ROOT_LABELS)  # no --parent: nobody declared it
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


def test_a_forget_at_the_parent_does_not_flip_the_inferred_direction(built, tmp_path):
    """After a takedown the parent's head weights are new, but they are a forget of the weights the undeclared
    fine-tune came from: the edge still points parent -> fine-tune (it pointed fine-tune -> parent when the time
    was that of the head's weights)."""
    hub, req = built
    hub = copy_hub(hub.root, tmp_path / "hub")
    code, out, err = invoke("--hub", hub.root, "--json", "takedown", req)
    assert code == 0, err
    code, out, err = invoke("--hub", hub.root, "--json", "lineage", "--infer")
    assert code == 0, err
    pair = [e for e in json.loads(out)["edges"] if {e["parent"], e["child"]} == {R, FT}]
    assert pair, "the fine-tune is still found after the forget"
    assert [(e["parent"], e["child"], e["direction"]) for e in pair] == [(R, FT, "time")], pair


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


def _random_fingerprints(n: int, seed: int = 0) -> dict:
    """``n`` fingerprints of one small layout (2-D init tensors and 1-D learned ones), a few near copies of one
    root among unrelated ones; some tensors constant (norm 0: no evidence) and some byte-identical."""
    import numpy as np

    from fiun_hub.fingerprint import SKETCH_K, Fingerprint, Layout, _layout_key

    rng = np.random.default_rng(seed)
    tensors = [(f"w{i}", "F32", (8, 8)) for i in range(5)] + [(f"b{i}", "F32", (8,)) for i in range(4)]
    layout = Layout(_layout_key(tensors), tensors)
    root = rng.standard_normal((len(tensors), SKETCH_K)).astype(np.float32)
    out = {}
    for i in range(n):
        if i % 3 == 0:
            sk = rng.standard_normal(root.shape).astype(np.float32)
        else:
            sk = root + rng.uniform(0.01, 0.4) * rng.standard_normal(root.shape).astype(np.float32)
        digests = rng.integers(0, 2**63, size=len(tensors), dtype=np.uint64)
        if i % 4 == 1:
            digests[:3] = 7  # shared with other such models
        norms = np.ones(len(tensors), np.float32)
        norms[rng.integers(len(tensors))] = 0.0
        out[f"m{i:02d}"] = Fingerprint(f"{i:064x}", layout, digests, norms, sk)
    return out


def test_evidence_of_all_pairs_at_once_equals_each_pair_by_hand():
    """``_evidence`` (vectorised over pairs) against the rule written out per pair: shared = tensors valid in
    both, identical = of those byte-identical, each group's similarity = mean cosine of its valid tensors."""
    import numpy as np

    from fiun_hub import fingerprint as F

    fps = _random_fingerprints(30)
    g = F._groups_of(fps)[next(iter(fps.values())).layout.key]
    n = len(g.keys)
    ia, ib = np.triu_indices(n, 1)
    cols = np.arange(len(g.layout.tensors))
    learned = g.layout.learned
    evs = F._evidence(g, ia, cols, g, ib, cols, learned)
    assert len(evs) == ia.size > 400
    for p in range(ia.size):
        a, b = fps[g.keys[ia[p]]], fps[g.keys[ib[p]]]
        ua = a.sketch / np.linalg.norm(a.sketch, axis=1, keepdims=True)
        ub = b.sketch / np.linalg.norm(b.sketch, axis=1, keepdims=True)
        valid = (a.norms > 0) & (b.norms > 0)
        cos = (ua * ub).sum(axis=1)
        ev = evs[p]
        assert ev.shared == valid.sum() and ev.identical == ((a.digests == b.digests) & valid).sum()
        for got, grp in ((ev.init_similarity, ~learned), (ev.learned_similarity, learned)):
            m = valid & grp
            assert abs(got - cos[m].mean()) < 1e-5


def test_prune_by_score_matrix_equals_pair_by_pair(monkeypatch):
    """``_prune`` (dense score matrix per connected set) keeps exactly the pairs the pair-by-pair rule keeps, on
    the suspected pairs of a family of near copies (most pairs explained by a closer third model), and in the
    fallback for a set too large for the matrix."""
    from fiun_hub import fingerprint as F

    pairs, _ = F.relate(_random_fingerprints(40, seed=3))
    assert len(pairs) > 100
    want = F._prune_pairwise(pairs)
    assert 0 < len(want) < len(pairs) / 2  # the rule drops most pairs of a family: the test can tell
    assert F._prune(pairs) == want
    monkeypatch.setattr(F, "PRUNE_DENSE_MAX", 5)
    assert F._prune(pairs) == want


def test_prune_keeps_a_reupload_whose_cosine_rounds_below_a_frozen_backbone_childs(monkeypatch):
    """Measured on Fashion-MNIST (benchmarks/infer_lineage.py): a re-upload's cosines are 1 up to float32
    rounding, and a frozen-backbone child of the same model (all but its head identical) came out 1e-7 higher,
    so the re-upload counted as "explained" by the child and was dropped. Whole copies are never pruned."""
    from fiun_hub import fingerprint as F

    one_less, one_more = 0.99999994, 1.0000001  # cosines of 1 as float32 sums round them
    pairs = {("p", "reupload"): ("identical", F.Evidence(77, 77, one_less, one_less)),
             ("frozen", "p"): ("identical", F.Evidence(75, 75, one_more, one_more)),
             ("frozen", "reupload"): ("identical", F.Evidence(75, 75, one_more, one_more)),
             # a sibling pair explained by p: still dropped
             ("ft", "p"): ("close", F.Evidence(77, 0, 0.999, 0.98)),
             ("ft2", "p"): ("close", F.Evidence(77, 0, 0.999, 0.97)),
             ("ft", "ft2"): ("close", F.Evidence(77, 0, 0.998, 0.96))}
    for prune in (F._prune, F._prune_pairwise):
        kept = prune(pairs)
        assert ("p", "reupload") in kept and ("ft", "ft2") not in kept and ("ft", "p") in kept


def test_two_undeclared_finetunes_of_one_parent_each_get_an_edge_to_the_parent(built, tmp_path):
    """Measured in benchmarks/infer_lineage.py: fine-tunes of one parent at a small learning rate move the same way
    and end up closer to each other than to their parent, so "drop a pair when a third model is closer to both"
    tied each fine-tune to a sibling and left it without an edge to the model it came from. The parent is older
    than its fine-tunes, so each keeps its edge to its oldest suspected relation."""
    from fiun_hub import fingerprint as F
    from fiun_hub.lineage import read_index_file
    from fiun_hub.models import load_model
    from fiun_hub.research.training import train_classifier

    hub, _ = built
    hub = copy_hub(hub.root, tmp_path / "hub")
    train = digits("train")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(29))
    low = perm[train.y[perm] < 8]
    fts = ("x/ft-1-epoch", "x/ft-4-epochs")
    for repo, epochs, (a, b), seed in ((fts[0], 1, (0, 200), 31), (fts[1], 4, (200, 400), 32)):
        model, _, _ = load_model(hub, R)
        train_classifier(model, train.subset(low[a:b]).to_label_space(ROOT_LABELS), epochs=epochs, lr=1e-3,
                         batch_size=32, seed=seed)
        push(hub, model.eval(), repo, ROOT_LABELS)  # no --parent
    # the case this test is about: the similarity rule alone leaves a fine-tune without its parent
    pairs, _ = F.relate(F.head_fingerprints(hub, read_index_file(hub)))
    alone = F._prune_explained(pairs)
    assert any(tuple(sorted((R, ft))) not in alone for ft in fts), "the fine-tunes no longer tell the old rule apart"
    code, data, _ = _infer(hub)
    assert code == 0
    edges = {(e["parent"], e["child"]): e for e in data["edges"]}
    for ft in fts:
        e = edges[(R, ft)]
        assert e["kind"] == "close" and e["direction"] == "time" and not e["declared"]
    assert not [e for e in data["edges"] if e["parent"] in INDEPENDENT or e["child"] in INDEPENDENT]


def test_oldest_relation_rule_keeps_one_edge_per_model_to_its_oldest_earlier_relation():
    """``_prune`` with times: each model keeps the pair to its oldest relation that appeared strictly before it
    (ties on time: the most similar); pairs of equal or unknown times take no part; without times, the similarity
    rule alone."""
    from fiun_hub import fingerprint as F

    ev = lambda s: ("close", F.Evidence(77, 0, 0.999, s))  # noqa: E731
    pairs = {("p", "ft1"): ev(0.975), ("p", "ft2"): ev(0.970), ("ft1", "ft2"): ev(0.980),  # ft1, ft2 closer
             ("q", "ft2"): ev(0.960), ("q2", "ft2"): ev(0.965),  # q and q2: as old as each other, later than p
             ("same", "ft1"): ev(0.990),  # appeared at the same time as ft1: no direction, no part
             ("x", "ft1"): ev(0.99)}      # no time
    since = {"p": "2026-01-01T00:00:00Z", "q": "2026-01-02T00:00:00Z", "q2": "2026-01-02T00:00:00Z",
             "ft1": "2026-01-03T00:00:00Z", "same": "2026-01-03T00:00:00Z", "ft2": "2026-01-04T00:00:00Z",
             "x": ""}
    alone = F._prune(pairs)
    assert ("p", "ft2") not in alone  # the similarity rule ties ft2 to its sibling ft1
    assert F._oldest_parents(pairs, since) == {("p", "ft1"), ("p", "ft2")}
    kept = F._prune(pairs, since)
    assert set(kept) == set(alone) | {("p", "ft1"), ("p", "ft2")}
    # without p: q and q2 tie on time as ft2's oldest relation, the closer one (q2) is kept; ft1 has no earlier
    # relation ("same" appeared with it, "x" has no time), so no edge for it
    rest = {k: v for k, v in pairs.items() if "p" not in k}
    assert F._oldest_parents(rest, since) == {("q2", "ft2")}


def test_edges_explained_by_reported_derivations_are_marked_sibling_or_ancestor_and_stay_reported():
    """Measured in benchmarks/infer_lineage.py (section 10): besides each model's edge to its oldest earlier
    relation, ``--infer`` keeps pairs the similarity rule keeps, and 50 of 128 joined two models of one family
    where neither came from the other (two fine-tunes of one parent, a re-upload and its original's sibling, two
    merges of one parent's clients) or a model and its grandparent. Those are marked (``relation``/``via``), in
    the JSON and the line, and still reported; re-uploads and merge fits stay derivations."""
    from fiun_hub import fingerprint as F

    ev = lambda same=0: {"shared_tensors": 77, "identical_tensors": same,  # noqa: E731
                         "init_similarity": 0.999, "learned_similarity": 0.98}
    E = lambda p, c, kind="close", d="time", e=None: F.SuspectedEdge(p, c, kind, d, False, e or ev())  # noqa: E731
    edges = [E("p", "ft1"), E("p", "ft2"), E("ft1", "ft2"),       # two fine-tunes of p, and the pair of them
             E("ft1", "r", "re-upload", e=ev(77)), E("p", "r"),    # r re-uploads ft1; p is r's oldest relation
             E("ft2", "r"),                                        # r and its original's sibling
             E("ft1", "m", "merge", "merge"), E("ft2", "m", "merge", "merge"), E("p", "m"),  # m merges ft1, ft2
             E("ft1", "m2", "merge", "merge"), E("ft2", "m2", "merge", "merge"), E("m", "m2"),  # and so does m2
             E("u", "w", "re-upload", "unknown", ev(77)),          # a whole copy without a direction
             E("u", "v", d="unknown"),                              # a pair of one age: no core edge, no relation
             E("p", "tl"), E("p", "c", "re-upload", e=ev(77)),     # a frozen-backbone transfer, a re-upload of p:
             E("c", "tl", "identical", e=ev(77))]                  # the same tensors on what they share, siblings
    oldest = {("ft1", "p"), ("ft2", "p"), ("p", "r"), ("m", "p"), ("p", "tl"), ("c", "p")}
    F._relations(edges, oldest)
    got = {(e.parent, e.child): (e.relation, e.via) for e in edges}
    assert got == {
        ("p", "ft1"): ("derived", None), ("p", "ft2"): ("derived", None), ("ft1", "ft2"): ("sibling", "p"),
        ("ft1", "r"): ("derived", None), ("p", "r"): ("ancestor", "ft1"), ("ft2", "r"): ("sibling", "p"),
        ("ft1", "m"): ("derived", None), ("ft2", "m"): ("derived", None), ("p", "m"): ("ancestor", "ft1"),
        ("ft1", "m2"): ("derived", None), ("ft2", "m2"): ("derived", None), ("m", "m2"): ("sibling", "ft1"),
        ("u", "w"): ("derived", None), ("u", "v"): ("derived", None),
        ("p", "tl"): ("derived", None), ("p", "c"): ("derived", None), ("c", "tl"): ("sibling", "p")}
    sib = next(e for e in edges if (e.parent, e.child) == ("ft1", "ft2"))
    assert sib.to_dict()["relation"] == "sibling" and sib.to_dict()["via"] == "p"
    assert sib.line().startswith("UNDECLARED sibling (close, both from p): ft1 <-> ft2 (")
    anc = next(e for e in edges if (e.parent, e.child) == ("p", "r"))
    assert anc.line().startswith("UNDECLARED ancestor (close, through ft1): p -> r (")
    der = edges[0]
    assert "via" not in der.to_dict() and der.to_dict()["relation"] == "derived"
    assert der.line().startswith("UNDECLARED close: p -> ft1 (")


def test_edge_kinds_directions_and_relations_are_written_as_plain_values():
    """An edge's kind, direction and relation are ``str`` enums (``EdgeKind``, ``Direction``, ``Relation``), each
    value defined once; ``to_dict`` holds their plain values: an adopted derivative's evidence is written into its
    card's YAML, where a str subclass would be dumped as a Python object, and ``--json`` is what it was when they
    were strings. The line prints the values."""
    import yaml

    from fiun_hub import fingerprint as F

    e = F.SuspectedEdge("p", "c", F.EdgeKind.REUPLOAD, F.Direction.TIME, False,
                        {"shared_tensors": 2, "identical_tensors": 2}, F.Relation.ANCESTOR, "v")
    d = e.to_dict()
    assert [type(d[k]) for k in ("kind", "direction", "relation")] == [str, str, str]
    assert "!!python" not in yaml.dump(d, Dumper=yaml.Dumper)
    assert json.dumps(d) == json.dumps({"parent": "p", "child": "c", "kind": "re-upload", "direction": "time",
                                        "declared": False, "relation": "ancestor", "via": "v",
                                        "shared_tensors": 2, "identical_tensors": 2})
    assert e.line() == "UNDECLARED ancestor (re-upload, through v): p -> c (2/2 tensors identical, direction: time)"
    assert F.Relation("sibling") is F.Relation.SIBLING and f"{F.EdgeKind.CLOSE:>6}" == " close"


def test_fedavg_merges_of_undeclared_clients_get_merge_edges_to_every_client(built, tmp_path):
    """Measured in benchmarks/infer_lineage.py (section 10): a FedAvg of one parent's fine-tunes is close to each
    client, and the pruning dropped its edge to the lighter client of a 2:1 merge (the heavier one is closer to
    both), so it was never fitted as a merge: its edge to one client was marked ``sibling`` and its derivation edge
    went to the clients' parent. Now every model is fitted on all its older relations: the 2:1 FedAvg gets merge
    edges to both clients (weights 2/3, 1/3); a 3-client FedAvg is fitted on the clients (1/3 each), and its edge
    from the 2-client FedAvg (an exact alternative: 1/2 of it plus 1/6 and 1/3 of two clients) is ``ambiguous``.
    Fine-tunes of the parent are no merges."""
    from fiun_hub.models import load_model
    from fiun_hub.research.training import average_state_dicts, train_classifier

    hub, _ = built
    hub = copy_hub(hub.root, tmp_path / "hub")
    shard = digit_shard()
    clients = ("fl/client-0", "fl/client-1", "fl/client-2")
    states = []
    for c, (repo, seed) in enumerate(zip(clients, (41, 42, 43))):
        model, _, _ = load_model(hub, R)
        train_classifier(model, shard(300 + 120 * c, 420 + 120 * c), epochs=1, lr=1e-3, batch_size=32, seed=seed)
        push(hub, model.eval(), repo, ROOT_LABELS)  # no --parent
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for repo, sd in (("fl/fedavg-2", average_state_dicts(states[:2], weights=[2, 1])),
                     ("fl/fedavg-3", average_state_dicts(states))):
        model, _, _ = load_model(hub, R)
        model.load_state_dict(sd)
        push(hub, model.eval(), repo, ROOT_LABELS)
    code, data, _ = _infer(hub)
    assert code == 0
    edges = {(e["parent"], e["child"]): e for e in data["edges"]}
    for repo, parents, weights in (("fl/fedavg-2", clients[:2], (2 / 3, 1 / 3)),
                                   ("fl/fedavg-3", clients, (1 / 3, 1 / 3, 1 / 3))):
        for p, w in zip(parents, weights):
            e = edges[(p, repo)]
            assert e["relation"] == "derived" and e["direction"] == "time", e
            assert set(e["merge_parents"]) == set(parents) and abs(e["merge_weights"] - w) < 0.01, e
            assert e["merge_residual"] < 0.01 * e["merge_single_residual"], e
    amb = edges[("fl/fedavg-2", "fl/fedavg-3")]
    assert amb["relation"] == "ambiguous"
    alt = amb["merge_alternatives"][0]
    assert dict(zip(alt["merge_parents"], alt["merge_weights"])) == pytest.approx(
        {"fl/fedavg-2": 0.5, clients[2]: 1 / 3, clients[1]: 1 / 6}, abs=0.01)
    assert edges[(clients[0], "fl/fedavg-3")]["merge_alternatives"] == amb["merge_alternatives"]
    # the clients' parent is their ancestor, not a merge parent; the clients and the other fine-tunes are no merges
    assert edges[(R, "fl/fedavg-2")]["relation"] == "ancestor"
    fitted = {e["child"] for e in data["edges"] if "merge_parents" in e or e["kind"] == "merge"}
    assert fitted == {"fl/fedavg-2", "fl/fedavg-3"}
    code, out, _ = invoke("--hub", hub.root, "lineage", "--infer")
    assert "UNDECLARED ambiguous (close, a parent only if fl/fedavg-3 is the merge of fl/fedavg-2 + " in out
    assert not [e for e in data["edges"] if e["parent"] in INDEPENDENT or e["child"] in INDEPENDENT]
