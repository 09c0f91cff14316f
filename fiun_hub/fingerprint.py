"""Weight fingerprints and lineage inferred from them: the derivatives nobody declared (docs/hub-layout.md,
"Fingerprints"; the rule in docs/lineage-inference.md). Computing and storing a fingerprint is
:mod:`fiun_hub.fingerprint_store` (below the lineage layer, which records one on every publish), re-exported here;
this module is the inference, which reads the lineage index.

A fingerprint (:mod:`fiun_hub.fingerprint_store` says what it holds and where it is stored) is per tensor a digest
of its bytes, the norm of its centred values and a linear count sketch, so a FedAvg merge's sketch is the average
of its parents'.

Two models are compared on the tensors they share (same name and shape, any float dtype) in two groups:

- *init* tensors (2 or more dimensions): random at initialisation. Any two models that started from the same
  random initialisation agree here, derived or not.
- *learned* tensors (1 dimension: norm scales and shifts, biases, running statistics): constant at initialisation
  in the usual schemes, so their centred values are what training learned. Only a model that inherited another's
  training agrees with it here.

A pair is a suspected edge when most shared tensors are byte-identical (a re-upload, a frozen-backbone transfer
child), or when both groups are close (``INIT_MIN`` and ``LEARNED_MIN``: a fine-tune, a noisy copy); a model is a
suspected merge when its sketches are a convex combination of two or more others' (``MERGE_RESIDUAL``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .constants import FINDING_UNDECLARED_DERIVATIVE, LEDGER_REPO, WEIGHTS_FILE
from .errors import BadInput
# Computing and storing fingerprints sits below the lineage layer (fingerprint_store: every index entry writes
# through it); its names are re-exported here, where the tests, the benchmarks and the CLI find them.
from .fingerprint_store import (  # noqa: F401
    _LAYOUTS,
    FINGERPRINT_DIR,
    FINGERPRINT_FORMAT,
    LAYOUT_FORMAT,
    SKETCH_K,
    Fingerprint,
    Layout,
    _layout_key,
    _layout_path,
    compute_fingerprint,
    fingerprint_file,
    fingerprint_of,
    fingerprint_path,
    load_fingerprint,
    rebuild_fingerprints,
    record_fingerprint,
    sketch_values,
    write_fingerprint,
)
from .hub.base import LOCAL_FOLDER, Hub, supports

#: decision thresholds, calibrated on independently trained models (docs/lineage-inference.md)
IDENTICAL_MIN = 0.5      # share of comparable tensors that are byte-identical
INIT_MIN = 0.9           # mean cosine over shared init tensors
LEARNED_MIN = 0.85       # mean cosine over shared learned tensors
CANDIDATE_MIN = 0.3      # loose bound on the compact vectors (both groups) for a pair to be checked exactly
MERGE_PAIR_MIN = 0.3     # a merge parent's cosine to the merge (both groups)
MERGE_RESIDUAL = 0.15    # relative residual of the merge fit (each group)
MERGE_MAX_PARENTS = 8
CLOSE_MERGE_CANDIDATES = 16  # a model's most similar older relations fitted as a merge (:func:`_merges_among_close`)
CLOSE_MERGE_GAIN = 0.5      # ... and at most half the residual of its best single parent (a near copy of one
#                              model fits its siblings as well as it fits that model: no gain; on the benchmark,
#                              fine-tunes and noise copies fit their older relations at >= 0.83 of it, FedAvg merges
#                              at ~1e-5)
CLOSE_MERGE_RESIDUAL = 0.06  # the same among close models (:func:`_merges_among_close`): on the benchmark, FedAvg
#                              merges fitted over all their older relations leave 5e-7 to 9e-7
COMPACT_DIM = 64


# ------------------------------------------------------------------------------------------- what an edge says
class _Value(str, enum.Enum):
    """A ``str`` enum: it compares, hashes, formats and JSON-encodes as its value; ``to_dict`` holds the plain
    value (``.value``), so the ``lineage --infer --json`` output (and a card's ``adopted_from`` evidence) is what it
    was when these were strings."""

    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class EdgeKind(_Value):
    """What the weights of a suspected edge's two models show (:attr:`SuspectedEdge.kind`)."""

    REUPLOAD = "re-upload"   # the same weights file
    IDENTICAL = "identical"  # most shared tensors byte-identical (a frozen-backbone transfer child, say)
    CLOSE = "close"          # both groups of tensors close (a fine-tune, a noisy copy)
    MERGE = "merge"          # a convex combination of two or more others' (a FedAvg merge)


class Direction(_Value):
    """Why a suspected edge's parent is the parent (:attr:`SuspectedEdge.direction`)."""

    TIME = "time"        # its weights appeared first on the history
    MERGE = "merge"      # a merge fit: the parents are the fitted ones
    FORGET = "forget"    # from an affected repo's pre-forget revision (takedown plans, audits)
    UNKNOWN = "unknown"  # no way to tell: parent and child are the two models in name order


class Relation(_Value):
    """What a suspected edge is in the inferred lineage (:attr:`SuspectedEdge.relation`; :func:`_relations`,
    :func:`_merges_among_close`)."""

    DERIVED = "derived"      # a suspected derivation: child from parent
    SIBLING = "sibling"      # both ends derive from ``via`` (their own reported edges say so), neither from the other
    ANCESTOR = "ancestor"    # parent is an earlier ancestor of child through the reported edge ``via`` -> child
    AMBIGUOUS = "ambiguous"  # a merge parent of child only in an alternative explanation of child's merge that fits
    #                          its weights as well (``merge_alternatives``)


# ------------------------------------------------------------------------------------------- comparing
@dataclass
class Evidence:
    """How two fingerprints compare on their shared tensors."""

    shared: int            # tensors of the same name and shape (any float dtype), non-constant in both
    identical: int         # of those, byte-identical
    init_similarity: float | None     # mean cosine over shared init tensors (None: none shared)
    learned_similarity: float | None  # mean cosine over shared learned tensors

    @property
    def kind(self) -> EdgeKind | None:
        """``identical`` / ``close`` when the pair looks derived, else None."""
        if self.shared and self.identical >= max(1, IDENTICAL_MIN * self.shared):
            return EdgeKind.IDENTICAL
        ini, lea = self.init_similarity, self.learned_similarity
        if ini is not None and ini >= INIT_MIN and (lea is None or lea >= LEARNED_MIN):
            return EdgeKind.CLOSE
        if ini is None and lea is not None and lea >= LEARNED_MIN:
            return EdgeKind.CLOSE
        return None

    @property
    def score(self) -> float:
        vals = [v for v in (self.init_similarity, self.learned_similarity) if v is not None]
        return min(vals) if vals else 0.0

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
        return {"shared_tensors": self.shared, "identical_tensors": self.identical,
                "init_similarity": r(self.init_similarity), "learned_similarity": r(self.learned_similarity)}


class _Group:
    """The models of one layout, as arrays: digests (N, T), norms (N, T), unit sketches (N, T, K)."""

    def __init__(self, layout: Layout, keys: list, fps: list[Fingerprint]):
        self.layout, self.keys = layout, keys
        self.index = {k: i for i, k in enumerate(keys)}
        self.digests = np.stack([f.digests for f in fps]) if fps else np.zeros((0, len(layout.tensors)), np.uint64)
        self.norms = np.stack([f.norms for f in fps]) if fps else np.zeros((0, len(layout.tensors)), np.float32)
        raw = np.stack([f.sketch for f in fps]) if fps else np.zeros((0, len(layout.tensors), SKETCH_K), np.float32)
        self.raw = raw
        sn = np.linalg.norm(raw, axis=2, keepdims=True)
        # a zero norm (a constant tensor) or an all-zero sketch is no evidence: its unit sketch stays 0 (no
        # division by 0) and it is left out of every mean (``valid``)
        self.valid = (self.norms > 0) & (sn[..., 0] > 0)
        self.unit = np.divide(raw, sn, out=np.zeros_like(raw), where=self.valid[..., None])


def _projection(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim, COMPACT_DIM)) / np.sqrt(COMPACT_DIM)).astype(np.float32)


def _compact(g: _Group, cols: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Each model's unit sketches on the columns ``cols`` of group ``mask``, concatenated, scaled so the dot
    product of two is the mean per-tensor cosine, and projected to ``COMPACT_DIM`` (None: no such column)."""
    sel = cols[mask]
    if sel.size == 0:
        return None
    v = g.unit[:, sel, :].reshape(len(g.keys), -1) / np.sqrt(sel.size)
    return v @ _projection(v.shape[1], 7 + sel.size)


EVIDENCE_CHUNK = 2048  # pairs whose sketches are gathered at once (bounds the memory of a large family)


def _evidence(ga: _Group, ia: np.ndarray, ca: np.ndarray, gb: _Group, ib: np.ndarray, cb: np.ndarray,
              learned: np.ndarray) -> list[Evidence]:
    """Exact evidence (on the full sketches) for pairs ``(ga[ia[p]], gb[ib[p]])`` over matched columns, in chunks
    of ``EVIDENCE_CHUNK`` pairs: a family of a thousand fine-tunes is ~500k candidate pairs, whose gathered
    sketches at once would need tens of GiB."""
    if ia.size > EVIDENCE_CHUNK:
        return [e for s in range(0, ia.size, EVIDENCE_CHUNK)
                for e in _evidence(ga, ia[s:s + EVIDENCE_CHUNK], ca, gb, ib[s:s + EVIDENCE_CHUNK], cb, learned)]
    if ia.size == 0:
        return []
    def take(arr, rows, cols):  # one gather: rows only when the columns are all of them in order (same layout)
        if cols.size == arr.shape[1] and (cols == np.arange(cols.size)).all():
            return np.take(arr, rows, axis=0)
        return arr[rows[:, None], cols[None, :]]

    va = take(ga.valid, ia, ca) & take(gb.valid, ib, cb)
    same = (take(ga.digests, ia, ca) == take(gb.digests, ib, cb)) & va
    cos = np.einsum("ptk,ptk->pt", take(ga.unit, ia, ca), take(gb.unit, ib, cb)).astype(np.float64)
    # the means over each group's valid tensors for all pairs at once (a per-pair loop of masked means was most
    # of the time of a large family: ~125k pairs for 500 near copies)
    means = []
    for grp in (~learned, learned):
        m = va & grp[None, :]
        n = m.sum(axis=1)
        tot = np.where(m, cos, 0.0).sum(axis=1)
        means.append([None if k == 0 else float(t / k) for t, k in zip(tot.tolist(), n.tolist())])
    shared, ident = va.sum(axis=1).tolist(), same.sum(axis=1).tolist()
    return [Evidence(int(shared[p]), int(ident[p]), means[0][p], means[1][p]) for p in range(ia.size)]


def _unwrapped(names: list[str]) -> list[str]:
    """Tensor names without the dotted prefix every one of them shares (``module.`` of a DDP checkpoint,
    ``model.``, ``_orig_mod.``: a wrapper's, which leaves the values as they were)."""
    while len(names) > 1:
        heads = {n.split(".", 1)[0] for n in names}
        if len(heads) != 1 or any("." not in n for n in names):
            break
        cut = len(heads.pop()) + 1
        names = [n[cut:] for n in names]
    return names


def _matched(la: Layout, lb: Layout) -> tuple[np.ndarray, np.ndarray] | None:
    """Column indices of the tensors two layouts share (name, less a prefix all of a layout's names share, and
    shape, whatever the float dtype: an F16 or BF16 copy of F32 weights keeps their values, and so their sketches;
    its digests differ, so no tensor is counted identical), if they share at least half of the smaller one's (same
    architecture up to a new head)."""
    names_b = _unwrapped([t[0] for t in lb.tensors])
    pos = {(name, tuple(t[2])): i for i, (name, t) in enumerate(zip(names_b, lb.tensors))}
    ca, cb = [], []
    for i, (name, t) in enumerate(zip(_unwrapped([t[0] for t in la.tensors]), la.tensors)):
        j = pos.get((name, tuple(t[2])))
        if j is not None:
            ca.append(i)
            cb.append(j)
    if not ca or len(ca) < 0.5 * min(len(la.tensors), len(lb.tensors)):
        return None
    return np.array(ca), np.array(cb)


def candidate_pairs(groups: dict[str, _Group], queries: set | None = None, block: int = 2048):
    """Yield ``(group_a, group_b, ia, ib, evidence list)`` for every pair of models (of layouts that share most
    tensors) whose compact vectors are both within ``CANDIDATE_MIN``; ``queries``: only pairs with one of these
    keys on the ``a`` side."""
    keys = sorted(groups)
    for x, ka in enumerate(keys):
        for kb in keys[x:]:
            ga, gb = groups[ka], groups[kb]
            m = _matched(ga.layout, gb.layout)
            if m is None:
                continue
            ca, cb = m
            learned = ga.layout.learned[ca]
            comp_a = [_compact(ga, ca, ~learned), _compact(ga, ca, learned)]
            comp_b = comp_a if ka == kb else [_compact(gb, cb, ~learned), _compact(gb, cb, learned)]
            rows = np.arange(len(ga.keys))
            if queries is not None:
                rows = np.array([i for i, k in enumerate(ga.keys) if k in queries], dtype=np.int64)
            for start in range(0, rows.size, block):
                r = rows[start:start + block]
                # all pairs of one layout: rows r = start.. need only the columns from start on (upper triangle)
                lo = int(r[0]) if ka == kb and queries is None else 0
                ok = np.ones((r.size, len(gb.keys) - lo), dtype=bool)
                for A, B in zip(comp_a, comp_b):
                    if A is not None and B is not None:  # (both or neither: the same columns)
                        ok &= (A[r] @ B[lo:].T) >= CANDIDATE_MIN
                if ka == kb:
                    if queries is None:
                        ok &= r[:, None] < np.arange(lo, len(gb.keys))[None, :]
                    else:
                        ok &= r[:, None] != np.arange(len(gb.keys))[None, :]
                ia, ib = np.nonzero(ok)
                ia, ib = r[ia], ib + lo
                yield ga, gb, ia, ib, _evidence(ga, ia, ca, gb, ib, cb, learned)
            if queries is not None and ka != kb:  # the query may sit in the second layout
                rows_b = np.array([i for i, k in enumerate(gb.keys) if k in queries], dtype=np.int64)
                if rows_b.size:
                    ok = np.ones((rows_b.size, len(ga.keys)), dtype=bool)
                    for A, B in zip(comp_b, comp_a):
                        if A is not None and B is not None:
                            ok &= (A[rows_b] @ B.T) >= CANDIDATE_MIN
                    ib2, ia2 = np.nonzero(ok)
                    ib2 = rows_b[ib2]
                    yield gb, ga, ib2, ia2, _evidence(gb, ib2, cb, ga, ia2, ca, learned)


def _merge_fit(target: np.ndarray, parents: list[np.ndarray], learned: np.ndarray, valid: np.ndarray):
    """Least-squares weights of ``target`` (T, K raw sketches) as a combination of ``parents``; the relative
    residual per group. Each tensor is scaled by the target's own norm, so every tensor counts alike."""
    scale = np.linalg.norm(target, axis=1)
    use = valid & (scale > 0)
    if not use.any():
        return None
    w_t = np.where(use, 1.0 / np.where(scale > 0, scale, 1.0), 0.0)[:, None]
    y = (target * w_t).reshape(-1).astype(np.float64)
    X = np.stack([(p * w_t).reshape(-1) for p in parents], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    res = (y - X @ coef).reshape(target.shape)
    yy = y.reshape(target.shape)
    out = []
    for grp in (~learned, learned):
        m = use & grp
        out.append(float(np.linalg.norm(res[m]) / max(np.linalg.norm(yy[m]), 1e-12)) if m.any() else None)
    return coef, out[0], out[1]


# ------------------------------------------------------------------------------------------- inference
@dataclass
class SuspectedEdge:
    """A pair (or a merge) the weights say is related. ``parent``/``child`` follow ``direction``; with
    ``direction == "unknown"`` they are just the two models in name order."""

    parent: str
    child: str
    kind: EdgeKind            # re-upload | identical | close | merge
    direction: Direction      # time | merge | forget | unknown
    declared: bool
    evidence: dict = field(default_factory=dict)
    # derived | sibling | ancestor | ambiguous (:class:`Relation` says what each means; ``via``: the model a
    # sibling or an ancestor edge goes through)
    relation: Relation = Relation.DERIVED
    via: str | None = None

    def to_dict(self) -> dict:
        d = {"parent": self.parent, "child": self.child, "kind": EdgeKind(self.kind).value,
             "direction": Direction(self.direction).value, "declared": self.declared,
             "relation": Relation(self.relation).value}
        if self.via is not None:
            d["via"] = self.via
        return {**d, **self.evidence}

    def line(self) -> str:
        e = self.evidence
        arrow = "->" if self.direction != Direction.UNKNOWN else "<->"
        bits = [f"{e.get('identical_tensors', 0)}/{e.get('shared_tensors', 0)} tensors identical"]
        for k, name in (("init_similarity", "init"), ("learned_similarity", "learned")):
            if e.get(k) is not None:
                bits.append(f"{name} cos {e[k]:.3f}")
        if "merge_weights" in e:
            bits.append(f"merge weight {e['merge_weights']:.2f}, residual {e['merge_residual']:.3f}")
        bits.append(f"direction: {self.direction}")
        what: str = self.kind
        if self.relation == Relation.SIBLING:
            arrow, what = "<->", f"sibling ({self.kind}, both from {self.via})"
        elif self.relation == Relation.ANCESTOR:
            what = f"ancestor ({self.kind}, through {self.via})"
        elif self.relation == Relation.AMBIGUOUS:
            alts = e.get("merge_alternatives") or [{}]
            what = (f"ambiguous ({self.kind}, a parent only if {self.child} is the merge of "
                    f"{' + '.join(alts[0].get('merge_parents', []))} rather than of its fitted parents)")
        return (f"{'declared' if self.declared else 'UNDECLARED'} {what}: {self.parent} {arrow} {self.child} "
                f"({', '.join(bits)})")


def _groups_of(items: dict) -> dict[str, _Group]:
    by: dict[str, tuple[Layout, list, list]] = {}
    for key, fp in items.items():
        slot = by.setdefault(fp.layout.key, (fp.layout, [], []))
        slot[1].append(key)
        slot[2].append(fp)
    return {k: _Group(layout, keys, fps) for k, (layout, keys, fps) in by.items()}


def relate(items: dict, queries: set | None = None) -> tuple[dict, list]:
    """Suspected relations among fingerprints ``items`` (key -> Fingerprint): ``(pairs, merges)`` where pairs
    maps ``(a, b)`` (sorted keys) -> (kind, Evidence) and merges lists ``(child, [(parent, weight)], residuals,
    {parent: Evidence})``. With ``queries``, only relations involving one of those keys."""
    groups = _groups_of(items)
    pairs: dict[tuple, tuple[str, Evidence]] = {}
    loose: dict = {}
    for ga, gb, ia, ib, evs in candidate_pairs(groups, queries):
        for i, j, ev in zip(ia, ib, evs):
            a, b = ga.keys[i], gb.keys[j]
            key = (a, b) if str(a) <= str(b) else (b, a)
            kind = ev.kind
            if kind:
                pairs[key] = (kind, ev)
            elif (ev.init_similarity is None or ev.init_similarity >= MERGE_PAIR_MIN) and \
                    (ev.learned_similarity is None or ev.learned_similarity >= MERGE_PAIR_MIN):
                loose.setdefault(a, []).append((b, ev))
                loose.setdefault(b, []).append((a, ev))
    if queries is not None:
        # a merge of a query and other models: the merge's own candidates are needed to fit it
        children = {c for c in loose if c not in queries}
        if children:
            for ga, gb, ia, ib, evs in candidate_pairs(groups, children):
                for i, j, ev in zip(ia, ib, evs):
                    a, b = ga.keys[i], gb.keys[j]
                    if b in queries or ev.kind:
                        continue
                    if (ev.init_similarity is None or ev.init_similarity >= MERGE_PAIR_MIN) and \
                            (ev.learned_similarity is None or ev.learned_similarity >= MERGE_PAIR_MIN):
                        loose.setdefault(a, []).append((b, ev))
    merges = []
    for child, cands in loose.items():
        if queries is not None and child in queries:
            continue
        uniq: dict = {}  # parent -> its best Evidence
        for p, ev in cands:
            if p not in uniq or ev.score > uniq[p].score:
                uniq[p] = ev
        if len(uniq) < 2:
            continue
        fit = _fit_merge(items, child, uniq)
        if fit is not None:
            merges.append(fit)
    return pairs, merges


def _fit_merge(items: dict, child, cands: dict):
    """Greedy forward selection of merge parents for ``child`` among ``cands``; a merge when two or more
    parents with positive weights summing to about 1 leave a small residual in both groups."""
    fc = items[child]
    order = sorted(cands, key=lambda p: -cands[p].score)[: 2 * MERGE_MAX_PARENTS]
    aligned = {}
    for p in order:
        m = _matched(fc.layout, items[p].layout)
        if m is None:
            continue
        aligned[p] = m
    if len(aligned) < 2:
        return None
    # compare on the tensors every candidate shares with the child
    common = set(range(len(fc.layout.tensors)))
    for ca, _ in aligned.values():
        common &= set(ca.tolist())
    cols = np.array(sorted(common))
    if cols.size == 0:
        return None
    learned = fc.layout.learned[cols]
    target = fc.sketch[cols]

    def view(p):
        ca, cb = aligned[p]
        pos = dict(zip(ca.tolist(), cb.tolist()))
        idx = np.array([pos[c] for c in cols])
        return items[p].sketch[idx], items[p].norms[idx] > 0

    views = {p: view(p) for p in aligned}
    valid = fc.norms[cols] > 0

    def fit(trial):
        v = valid.copy()
        for q in trial:
            v &= views[q][1]
        f = _merge_fit(target, [views[q][0] for q in trial], learned, v)
        return None if f is None else (max(r for r in f[1:] if r is not None), list(trial), f)

    # a single parent explains a merge poorly, so start from the best pair, then add parents while it helps
    names = list(views)
    best = None
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            f = fit([names[i], names[j]])
            if f is not None and (best is None or f[0] < best[0]):
                best = f
    while best is not None and best[0] > MERGE_RESIDUAL / 3 and len(best[1]) < MERGE_MAX_PARENTS:
        trials = [fit(best[1] + [p]) for p in names if p not in best[1]]
        trials = [t for t in trials if t is not None]
        if not trials:
            break
        t = min(trials, key=lambda t: t[0])
        if t[0] >= best[0] - 1e-6:
            break
        best = t
    if best is None:
        return None
    keep = [p for p, c in zip(best[1], best[2][0]) if c >= 0.02]
    if len(keep) != len(best[1]) and len(keep) >= 2:
        best = fit(keep) or best
    if len(best[1]) < 2:
        return None
    err, parents, (coef, r_init, r_learned) = best
    if err > MERGE_RESIDUAL or (coef < 0.05).any() or abs(float(coef.sum()) - 1) > 0.15:
        return None
    return child, list(zip(parents, [float(c) for c in coef])), (r_init, r_learned), {p: cands[p] for p in parents}


PRUNE_DENSE_MAX = 4096  # models in one connected set of pairs pruned with a dense score matrix


def _whole_copy(ev: Evidence) -> bool:
    """Every shared tensor byte-identical (a re-upload, or the same weights under another head): never explained
    by a third model. Its cosines are 1 up to float rounding, so without this a third model with a cosine of 1
    plus rounding (a frozen-backbone child) could prune a re-upload."""
    return ev.shared > 0 and ev.identical == ev.shared


def _prune(pairs: dict, since: dict | None = None, *, oldest: set | None = None) -> dict:
    """Drop pairs explained by a third model closer to both (siblings, a grandparent): keep (a, b) unless some
    c has a stronger suspected relation to a and to b; whole copies (:func:`_whole_copy`) are always kept. Each
    connected set of pairs of up to ``PRUNE_DENSE_MAX`` models is checked with a dense score matrix (a family of
    500 near copies is ~125k pairs); larger ones pair by pair (:func:`_prune_pairwise`), with the same result.

    With ``since`` (key -> when its weights first appeared, comparable strings), each model also keeps its edge
    to the oldest model older than it among its suspected relations (:func:`_oldest_parents`): fine-tunes of one
    parent are often closer to each other than to the parent, so the similarity rule alone ties each fine-tune
    to a sibling, while the parent existed before all of them. ``oldest``: those pairs already computed
    (``_oldest_parents(pairs, since)``), in place of ``since``."""
    if not pairs:
        return {}
    keep = _prune_explained(pairs)
    if oldest is None and since:
        oldest = _oldest_parents(pairs, since)
    keep |= oldest or set()
    return {k: v for k, v in pairs.items() if k in keep}


def _timed_pairs(pairs: dict, since: dict):
    """The pairs with two different times, as arrays: ``(keys, ra, rb, sc, ia, ib, names)``: the time ranks of
    each side, the scores, each side's index into ``names``; None when there is none. Computed once by
    :func:`infer` for :func:`_oldest_parents` and :func:`_merges_among_close`."""
    keys = [k for k in pairs if since.get(k[0]) and since.get(k[1]) and since[k[0]] != since[k[1]]]
    if not keys:
        return None
    times = sorted({since[x] for k in keys for x in k})
    rank = {t: i for i, t in enumerate(times)}
    ra = np.array([rank[since[a]] for a, _ in keys], dtype=np.int64)
    rb = np.array([rank[since[b]] for _, b in keys], dtype=np.int64)
    sc = np.array([pairs[k][1].score for k in keys], dtype=np.float64)
    names = sorted({x for k in keys for x in k}, key=str)
    nodes = {n: i for i, n in enumerate(names)}
    ia = np.array([nodes[a] for a, _ in keys], dtype=np.int64)
    ib = np.array([nodes[b] for _, b in keys], dtype=np.int64)
    return keys, ra, rb, sc, ia, ib, names


def _oldest_parents(pairs: dict, since: dict, timed=None) -> set:
    """For every model b, the pair (a, b) whose a appeared strictly before b and before every other suspected
    relation of b (ties: the most similar); at most one pair per model. Models without a time take no part.
    ``timed``: :func:`_timed_pairs` of these, when computed already."""
    timed = timed if timed is not None else _timed_pairs(pairs, since)
    if timed is None:
        return set()
    keys, ra, rb, sc, ia, ib, _ = timed
    young = np.where(ra > rb, ia, ib)           # the later end of each pair
    old_rank = np.minimum(ra, rb)
    order = np.lexsort((-sc, old_rank, young))  # per young model: the oldest relation first, then the closest
    first = np.ones(order.size, dtype=bool)
    first[1:] = young[order][1:] != young[order][:-1]
    return {keys[i] for i in order[first].tolist()}


def _prune_explained(pairs: dict) -> set:
    """The pairs :func:`_prune` keeps by similarity alone."""
    import networkx as nx

    g = nx.Graph()
    g.add_edges_from(pairs)
    comp_of = {}
    comps = list(nx.connected_components(g))
    for i, comp in enumerate(comps):
        comp_of.update(dict.fromkeys(comp, i))
    keys_of: list[list] = [[] for _ in comps]
    for k in pairs:
        keys_of[comp_of[k[0]]].append(k)
    keep: set = set()
    for comp, keys in zip(comps, keys_of):
        if len(comp) > PRUNE_DENSE_MAX:
            keep |= set(_prune_pairwise({k: pairs[k] for k in keys}))
            continue
        pos = {n: i for i, n in enumerate(sorted(comp, key=str))}
        ia = np.array([pos[a] for a, _ in keys], dtype=np.int64)
        ib = np.array([pos[b] for _, b in keys], dtype=np.int64)
        sc = np.array([pairs[k][1].score for k in keys], dtype=np.float64)
        S = np.full((len(pos), len(pos)), -np.inf)
        S[ia, ib] = sc
        S[ib, ia] = sc
        for start in range(0, len(keys), 2048):
            sl = slice(start, start + 2048)
            bar = sc[sl, None] + 1e-9
            explained = np.any((S[ia[sl]] > bar) & (S[ib[sl]] > bar), axis=1)
            keep.update(k for k, e in zip(keys[sl], explained.tolist()) if not e or _whole_copy(pairs[k][1]))
    return keep


def _prune_pairwise(pairs: dict) -> dict:
    """:func:`_prune`, one pair at a time."""
    nbr: dict = {}
    for (a, b), (_, ev) in pairs.items():
        nbr.setdefault(a, {})[b] = ev.score
        nbr.setdefault(b, {})[a] = ev.score
    out = {}
    for (a, b), v in pairs.items():
        s = v[1].score
        common = set(nbr[a]) & set(nbr[b])
        if not _whole_copy(v[1]) and any(nbr[a][c] > s + 1e-9 and nbr[b][c] > s + 1e-9 for c in common):
            continue
        out[(a, b)] = v
    return out


def _since(hub: Hub, repo: str, head: str, records: Iterable = ()) -> str:
    """When ``repo``'s weights at ``head`` first appeared on its history (the oldest commit still holding them).
    A forget's new weights are the same model's: walking back, a change of weights made by a forget that started
    from the older commit (its ``from_revision``, in the head's forget ``records``) is crossed, so a forget does not
    make its model look newer than the models derived from it before (which flipped their edges' direction)."""
    try:
        hist = hub.history(repo, head)
    except BadInput:
        return ""
    starts = {u.get("from_revision") for u in records if isinstance(u, dict)} - {None}
    w = hist[0].files.get(WEIGHTS_FILE)
    t = hist[0].time
    for c in hist[1:]:
        cw = c.files.get(WEIGHTS_FILE)
        if cw != w:
            if not (cw and c.id in starts):
                break
            w = cw  # the newer weights are a forget of these
        t = c.time
    return t


def _declared(g, a: str, b: str) -> bool:
    import networkx as nx

    if a not in g or b not in g:
        return False
    if nx.has_path(g, a, b) or nx.has_path(g, b, a):
        return True
    # siblings and cousins: two fine-tunes of one declared ancestor are alike because of it, and the cards say so
    return bool(nx.ancestors(g, a) & nx.ancestors(g, b))


def head_fingerprints(hub: Hub, entries: dict) -> dict[str, Fingerprint]:
    """repo -> fingerprint of its head's weights, for index entries (repos without weights or fingerprint are
    left out). :class:`BadInput` on a damaged fingerprint."""
    out: dict[str, Fingerprint] = {}
    cache: dict[str, Fingerprint | None] = {}
    for repo, e in sorted(entries.items()):
        if repo == LEDGER_REPO:
            continue
        w = e.get("weights")
        if w is None and "weights" not in e:  # an index written before fingerprints: read the commit
            try:
                w = hub.list_files(repo, e["head"]).get(WEIGHTS_FILE)
            except BadInput:
                w = None
        if not w:
            continue
        if w not in cache:
            cache[w] = fingerprint_of(hub, repo, w, where=f"{repo}@{str(e.get('head'))[:12]}")
        fp = cache[w]
        if fp is not None:
            out[repo] = fp
    return out


def infer(hub: Hub, g=None, entries: dict | None = None) -> list[SuspectedEdge]:
    """Suspected edges among the heads of every repo in the hub, with evidence, direction and whether the cards
    declare them (declared: one is an ancestor of the other in ``g``, or both descend from one declared model)."""
    from .lineage import index_entries, resolve

    if entries is None:
        entries = index_entries(hub)
    g = g if g is not None else resolve(hub)
    fps = head_fingerprints(hub, entries)
    pairs, merges = relate(fps)
    since: dict[str, str] = {}

    def when(r):
        if r not in since:
            since[r] = _since(hub, r, entries[r]["head"], entries[r].get("unlearned") or ())
        return since[r]

    # every model with a suspected relation needs its time: the pruning keeps each one's edge to its oldest relation
    times = {r: when(r) for r in {x for k in pairs for x in k}}
    timed = _timed_pairs(pairs, times)
    oldest = _oldest_parents(pairs, times, timed)  # kept by _prune, and the core edges of _relations
    every = pairs  # before the pruning: a merge's edge to one of its parents may be pruned (the others explain it)
    pairs = _prune(pairs, oldest=oldest)
    edges: list[SuspectedEdge] = []

    for (a, b), (kind, ev) in sorted(pairs.items()):
        if kind == EdgeKind.IDENTICAL and fps[a].weights == fps[b].weights:
            kind = EdgeKind.REUPLOAD
        ta, tb = when(a), when(b)
        if ta and tb and ta != tb:
            parent, child, direction = (a, b, Direction.TIME) if ta < tb else (b, a, Direction.TIME)
        else:
            parent, child, direction = a, b, Direction.UNKNOWN
        edges.append(SuspectedEdge(parent, child, kind, direction, _declared(g, a, b), ev.to_dict()))
    for child, parents, (r_init, r_learned), evs in merges:
        for p, w in parents:
            d = evs[p].to_dict()
            d.update(merge_weights=round(w, 4), merge_residual=round(max(r for r in (r_init, r_learned)
                                                                        if r is not None), 4),
                     merge_parents=[q for q, _ in parents])
            edges.append(SuspectedEdge(p, child, EdgeKind.MERGE, Direction.MERGE, _declared(g, p, child), d))
    _merges_among_close(fps, every, edges, times, lambda a, b: _declared(g, a, b), timed)
    _relations(edges, oldest)
    edges.sort(key=lambda e: (e.declared, e.parent, e.child))
    return edges


def _merges_among_close(fps: dict, pairs: dict, edges: list[SuspectedEdge], times: dict | None = None,
                        declared=lambda a, b: False, timed=None) -> None:
    """A merge of close models (FedAvg of fine-tunes of one parent) is close to each of them, so :func:`relate`
    (which fits merges on the looser pairs) reports its pairs as ``close``, and by structure alone each would look
    like two fine-tunes of one parent. Every model with two or more suspected relations that appeared strictly
    before it (``pairs``: all of them, before the pruning; ``times``: when each model's weights appeared; no merge
    fit yet, no whole copy among them) is fitted as a convex combination of its ``CLOSE_MERGE_CANDIDATES`` most
    similar ones (:func:`_convex_fit`). A fit with a residual of at most ``CLOSE_MERGE_RESIDUAL`` and at most
    ``CLOSE_MERGE_GAIN`` of its best single candidate's is a merge: its edges from the fitted parents carry the
    merge's weights (``merge_weights``, ``merge_residual``, ``merge_parents``, ``merge_single_residual``) and count
    as derivations; a parent whose pair was pruned gets its edge back.

    Models are fitted oldest first. A candidate that is itself a fitted merge of other candidates (a 2-client FedAvg
    among the clients of a 3-client one) is left out of the fit: its weights are in the span of its parents', so
    the merge is fitted on those, and the merge through it is an exact alternative whenever all its parents have a
    positive weight (the mean of three clients is also 1/2 of a 2:1 merge of two of them, plus 1/6 and 1/3 of the
    others). Such an alternative is listed on every edge of the merge (``merge_alternatives``), and the edge from
    the composite candidate is reported with ``relation`` ``ambiguous``: from the weights, it may or may not be a
    parent. ``edges`` is changed in place; ``declared(a, b)`` for the edges added."""
    times = times or {}
    merged = {e.child for e in edges if e.kind == EdgeKind.MERGE}
    key = lambda a, b: (a, b) if str(a) <= str(b) else (b, a)  # noqa: E731
    by_key = {key(e.parent, e.child): e for e in edges}
    # every pair with a time on both sides (:func:`_timed_pairs`): per later end, its relations, most similar first
    timed = timed if timed is not None else _timed_pairs(pairs, times)
    older: dict = {}
    if timed is not None:
        keys, ra, rb, score, ia, ib, names_ = timed
        whole = np.zeros(len(keys), dtype=bool)  # only an `identical` pair can be a whole copy
        ident = [i for i, k in enumerate(keys) if pairs[k][0] == EdgeKind.IDENTICAL]
        whole[ident] = [_whole_copy(pairs[keys[i]][1]) for i in ident]
        young, old = np.where(ra > rb, ia, ib), np.where(ra > rb, ib, ia)
        order = np.lexsort((-score, young))  # per later model: its relations, most similar first
        starts = np.flatnonzero(np.r_[True, young[order][1:] != young[order][:-1]])
        for lo, hi in zip(starts.tolist(), starts[1:].tolist() + [order.size]):
            if hi - lo < 2:
                continue
            sel = order[lo:hi]
            if whole[sel].any():
                continue  # a re-upload (or the same weights under another head) is no merge
            older[names_[young[sel[0]]]] = [names_[j] for j in old[sel[:CLOSE_MERGE_CANDIDATES]].tolist()]
    fitted: dict = {}
    matched: dict = {}
    possible = _could_be_merges(fps, older)

    def edge(p, child):
        e = by_key.get(key(p, child))
        if e is None:  # pruned: some third model was closer to both
            kind, ev = pairs[key(p, child)]
            e = SuspectedEdge(p, child, kind, Direction.TIME, declared(p, child), ev.to_dict())
            edges.append(e)
            by_key[key(p, child)] = e
        return e

    for child in sorted(older, key=lambda c: (times[c], str(c))):
        if child in merged or child not in possible:
            continue
        cands = older[child]
        composite = [m for m in cands if m in fitted and set(fitted[m]) <= set(cands)]
        fit = _convex_fit(fps, child, cands, matched, exclude=composite)
        if fit is None:
            continue
        weights, res, single = fit
        if res > CLOSE_MERGE_RESIDUAL or res > CLOSE_MERGE_GAIN * single:
            continue
        fitted[child] = weights
        alternatives = []
        for m in sorted(composite, key=str):
            u = fitted[m]
            if not all(weights.get(j, 0.0) > 0 for j in u):
                continue
            alpha = min(weights[j] / u[j] for j in u)  # as much of m as its parents' weights allow
            alt = {m: alpha, **{j: w - alpha * u.get(j, 0.0) for j, w in weights.items()}}
            alt = {q: w for q, w in alt.items() if w > 1e-3}
            if alpha >= 0.05 and len(alt) >= 2:
                alternatives.append((m, alt))
        by_weight = sorted(weights, key=lambda q: (-weights[q], str(q)))
        common = {"merge_residual": float(f"{res:.3g}"), "merge_parents": by_weight,
                  "merge_single_residual": float(f"{single:.3g}")}
        if alternatives:
            common["merge_alternatives"] = [
                {"merge_parents": sorted(alt, key=lambda q: (-alt[q], str(q))),
                 "merge_weights": [round(alt[q], 4) for q in sorted(alt, key=lambda q: (-alt[q], str(q)))]}
                for _, alt in alternatives]
        for p in by_weight:
            edge(p, child).evidence.update(merge_weights=round(weights[p], 4), **common)
        for m, alt in alternatives:
            e = edge(m, child)
            e.relation, e.via = Relation.AMBIGUOUS, None
            e.evidence.update(alternative_merge_weight=round(alt[m], 4), merge_alternatives=common["merge_alternatives"])


MERGE_GATE_CHUNK = 64  # models whose candidates are gathered at once by :func:`_could_be_merges`


def _could_be_merges(fps: dict, older: dict) -> set:
    """The models of ``older`` (model -> its merge candidates) that :func:`_convex_fit` could accept, by a bound
    computed for many models at once: a fit's residual is at least the unconstrained least-squares residual over
    all its candidates, and when the larger group's relative residual is at most ``r`` the total one is too; so a
    model whose total least-squares residual is above ``CLOSE_MERGE_RESIDUAL`` or ``CLOSE_MERGE_GAIN`` times its
    best single candidate's can be no merge (the 500 near copies of the scale hub: all of them, in one batch).
    Models with a candidate of another layout are kept (fitted one by one)."""
    keep = set()
    batch: dict = {}
    for child, cands in older.items():
        lk = fps[child].layout.key
        if all(fps[p].layout.key == lk for p in cands):
            batch.setdefault((lk, len(cands)), []).append(child)
        else:
            keep.add(child)
    for (lk, n), children in batch.items():
        models = sorted({x for c in children for x in [c, *older[c]]}, key=str)
        row = {x: i for i, x in enumerate(models)}
        S = np.stack([fps[x].sketch for x in models])           # (M, T, K) float32
        N = np.stack([fps[x].norms for x in models]) > 0         # (M, T)
        for start in range(0, len(children), MERGE_GATE_CHUNK):
            part = children[start:start + MERGE_GATE_CHUNK]
            ci = np.array([row[c] for c in part])
            pi = np.array([[row[p] for p in older[c]] for c in part])  # (m, n)
            Y = S[ci].astype(np.float64)                              # (m, T, K)
            scale = np.linalg.norm(Y, axis=2)
            use = N[ci] & N[pi].all(axis=1) & (scale > 0)
            inv = np.where(use, 1.0 / np.where(use, scale, 1.0), 0.0)
            Yf = (Y * inv[..., None]).reshape(len(part), -1, 1)
            Xf = np.multiply(S[pi], inv[:, None, :, None], dtype=np.float64).reshape(len(part), n, -1)
            G = Xf @ Xf.transpose(0, 2, 1)
            b = (Xf @ Yf)[..., 0]
            yy = (Yf[..., 0] ** 2).sum(axis=1)
            d = np.einsum("mpp->mp", G)
            ok = (d > 0).all(axis=1) & (yy > 0)
            d, yy_ = np.where(d > 0, d, 1.0), np.where(yy > 0, yy, 1.0)
            single = np.sqrt(np.maximum(yy_[:, None] - b * b / d, 0.0) / yy_[:, None]).min(axis=1)
            ridge = (1e-12 * np.einsum("mpp->m", G) / n + np.where(ok, 0.0, 1.0))[:, None, None] * np.eye(n)[None]
            w = np.linalg.solve(G + ridge, b[..., None])[..., 0]
            res = np.sqrt(np.maximum(yy - np.einsum("mp,mp->m", w, b), 0.0) / yy_)
            bound = np.minimum(CLOSE_MERGE_RESIDUAL, CLOSE_MERGE_GAIN * single)
            for c, o, r_, bd in zip(part, ok.tolist(), res.tolist(), bound.tolist()):
                if o and r_ <= bd * (1 + 1e-6) + 1e-9:
                    keep.add(c)
    return keep


def _convex_fit(fps: dict, child, cands: list, matched: dict | None = None, exclude=()):
    """``child``'s sketches as a non-negative combination of ``cands``' but those in ``exclude`` (non-negative
    least squares on the tensors all candidates share, each tensor scaled by the child's own norm as in
    :func:`_merge_fit`): ``(weights, residual, best single residual)`` with the relative residual of the larger
    group (the best single candidate: of all of ``cands``), or None unless two or more parents have weights of at
    least 0.05 that sum to about 1 (``MERGE_MAX_PARENTS`` at most). Solved on the candidates' Gram matrix per group
    (a few candidates against thousands of sketch values: the products once, then every fit and residual from
    them). ``matched``: a cache of :func:`_matched` by layout pair."""
    from scipy.optimize import nnls

    matched = {} if matched is None else matched
    fc = fps[child]
    n = len(fc.layout.tensors)
    aligned = {}
    for p in cands:
        lk = (fc.layout.key, fps[p].layout.key)
        if lk not in matched:
            matched[lk] = _matched(fc.layout, fps[p].layout)
        if matched[lk] is not None:
            aligned[p] = matched[lk]
    if len(aligned) < 2:
        return None
    whole = [ca.size == n and cb.size == n and (ca == cb).all() for ca, cb in aligned.values()]
    if all(whole):
        cols = None  # every candidate in the child's layout
    else:
        common = set(range(n))
        for ca, _ in aligned.values():
            common &= set(ca.tolist())
        cols = np.array(sorted(common), dtype=np.int64)
        if cols.size == 0:
            return None
    names = list(aligned)
    views = []
    valid = fc.norms > 0 if cols is None else fc.norms[cols] > 0
    for p in names:
        if cols is None:
            views.append(fps[p].sketch)
            valid = valid & (fps[p].norms > 0)
            continue
        ca, cb = aligned[p]
        pos = dict(zip(ca.tolist(), cb.tolist()))
        theirs = np.array([pos[c] for c in cols.tolist()], dtype=np.int64)
        views.append(fps[p].sketch[theirs])
        valid = valid & (fps[p].norms[theirs] > 0)
    target = (fc.sketch if cols is None else fc.sketch[cols]).astype(np.float64)
    learned = fc.layout.learned if cols is None else fc.layout.learned[cols]
    scale = np.linalg.norm(target, axis=1)
    use = valid & (scale > 0)
    if not use.any():
        return None
    inv = 1.0 / np.where(use, scale, 1.0)
    X = np.stack(views, axis=2)  # (T, K, n)
    G, b, yy = [], [], []
    for grp in (~learned, learned):
        m = use & grp
        if not m.any():
            continue
        Xg = (X[m].astype(np.float64) * inv[m, None, None]).reshape(-1, len(names))
        yg = (target[m] * inv[m, None]).reshape(-1)
        G.append(Xg.T @ Xg)
        b.append(Xg.T @ yg)
        yy.append(float(yg @ yg))
    Gt, bt = sum(G), sum(b)

    def residual(w, idx):  # the larger group's relative residual: ||y - Xw||^2 = yy - 2 w.b + w.G.w per group
        return max(float(np.sqrt(max(v - 2 * w @ bg[idx] + w @ Gg[np.ix_(idx, idx)] @ w, 0.0) / max(v, 1e-300)))
                   for Gg, bg, v in zip(G, b, yy))

    d = np.diag(Gt)
    if not (d > 0).all():
        return None
    # each candidate alone (its least-squares scale): the relative residual over both groups, of the best one
    single = float(np.sqrt(np.maximum(sum(yy) - bt * bt / d, 0.0) / max(sum(yy), 1e-300)).min())

    def solve(idx):
        A = Gt[np.ix_(idx, idx)]
        # nnls on the Cholesky factor of the Gram matrix: the same minimiser as on the stacked values (a tiny ridge
        # for candidates that are equal on these tensors)
        try:
            L = np.linalg.cholesky(A + np.eye(len(idx)) * (1e-12 * float(np.trace(A)) / len(idx)))
        except np.linalg.LinAlgError:
            return None
        w, _ = nnls(L.T, np.linalg.solve(L, bt[idx]))
        return w

    idx = [j for j, p in enumerate(names) if p not in set(exclude)]
    if len(idx) < 2:
        return None
    sol = solve(idx)
    if sol is None:
        return None
    coef = np.zeros(len(names))
    coef[idx] = sol
    keep = [j for j in idx if coef[j] >= 0.02]
    if len(keep) < 2 or len(keep) > MERGE_MAX_PARENTS:
        return None
    w = coef[keep]
    if len(keep) != int((coef > 0).sum()):
        w = solve(keep)
        if w is None:
            return None
        keep, w = [j for j, v in zip(keep, w) if v > 0], w[w > 0]
    if len(keep) < 2 or (w < 0.05).any() or abs(float(w.sum()) - 1) > 0.15:
        return None
    return {names[j]: float(v) for j, v in zip(keep, w)}, residual(w, keep), single


def _relations(edges: list[SuspectedEdge], oldest: set) -> None:
    """Set each edge's ``relation``/``via`` (in place). The *core* edges are the derivations the evidence points
    at directly: each model's edge to its oldest earlier relation (``oldest``: sorted pairs), re-uploads (the
    same weights file) and merge fits (``merge``, or close edges :func:`_merges_among_close` fitted), each with a
    direction. Then, for the others:

    - an edge whose child has another core edge from ``d`` with its parent an ancestor of ``d`` (through core
      edges) is ``ancestor`` via ``d`` (a re-upload of a fine-tune and the fine-tune's parent; a merge and its
      clients' parent), never for a re-upload or a merge fit;
    - an edge between two models that share a core ancestor, neither an ancestor of the other, is ``sibling``
      via the nearest shared ancestor (two fine-tunes of one parent; two merges of its clients).

    The pairs stay reported: only what the line says about them changes."""
    import networkx as nx

    core = nx.DiGraph()
    fixed = set()
    for e in edges:
        key = (e.parent, e.child) if str(e.parent) <= str(e.child) else (e.child, e.parent)
        # a re-upload (the same file); not "identical" (the same tensors under another head): a frozen-backbone
        # transfer and a re-upload of its parent are identical on what they share, and siblings
        whole = e.kind == EdgeKind.REUPLOAD
        fit = e.kind == EdgeKind.MERGE or "merge_parents" in e.evidence
        if e.relation == Relation.AMBIGUOUS:
            fixed.add(id(e))  # a parent only in an alternative explanation of a merge: neither core nor relabelled
            continue
        if fit or whole:
            fixed.add(id(e))  # a whole copy or a merge fit is a derivation whatever else is reported
        if e.direction == Direction.UNKNOWN:
            continue
        if fit or whole or key in oldest:
            core.add_edge(e.parent, e.child)
    anc: dict = {}

    def ancestors(x):
        if x not in anc:
            anc[x] = nx.ancestors(core, x) if x in core else set()
        return anc[x]

    for e in edges:
        if id(e) in fixed:
            continue
        a, b = e.parent, e.child
        if b in core:
            via = sorted((d for d in core.predecessors(b) if d != a and a in ancestors(d)), key=str)
            if via:
                e.relation, e.via = Relation.ANCESTOR, via[0]
                continue
        if core.has_edge(a, b) or a in ancestors(b) or b in ancestors(a):
            continue  # a core edge, or one along a chain of them (kept as a derivation)
        shared = ancestors(a) & ancestors(b)
        if shared:
            # the nearest: a shared ancestor none of whose descendants is also shared
            near = sorted((s for s in shared if not any(s in ancestors(t) for t in shared)), key=str)
            e.relation, e.via = Relation.SIBLING, near[0]


def derivatives_of(hub: Hub, sources: dict[str, Fingerprint], entries: dict, exclude: Iterable[str] = ()) \
        -> dict[str, list[tuple[str, SuspectedEdge]]]:
    """Heads that look derived from the fingerprints ``sources`` (key, e.g. ``repo@rev`` -> Fingerprint), except
    repos in ``exclude``: source key -> [(repo, edge)]. Used by takedown plans and audits to find the undeclared
    derivatives of an affected model's pre-forget revision."""
    exclude = set(exclude)
    heads = {r: fp for r, fp in head_fingerprints(hub, entries).items() if r not in exclude}
    items: dict = dict(heads)
    qkeys = set()
    for k, fp in sources.items():
        qk = ("source", k)
        items[qk] = fp
        qkeys.add(qk)
    pairs, merges = relate(items, qkeys)
    out: dict[str, list[tuple[str, SuspectedEdge]]] = {}
    for (a, b), (kind, ev) in pairs.items():
        src, other = (a, b) if a in qkeys else (b, a)
        if src not in qkeys or other in qkeys:
            continue
        if kind == EdgeKind.IDENTICAL and items[src].weights == items[other].weights:
            kind = EdgeKind.REUPLOAD
        out.setdefault(src[1], []).append(
            (other, SuspectedEdge(src[1], other, kind, Direction.FORGET, False, ev.to_dict())))
    for child, parents, res, evs in merges:
        if child in qkeys:
            continue
        for p, w in parents:
            if p in qkeys:
                d = evs[p].to_dict()
                d.update(merge_weights=round(w, 4), merge_parents=[str(q[1]) if isinstance(q, tuple) else q
                                                                   for q, _ in parents])
                out.setdefault(p[1], []).append(
                    (child, SuspectedEdge(p[1], child, EdgeKind.MERGE, Direction.FORGET, False, d)))
    return out


def undeclared_findings(hub: Hub, request_id: str, pre_forget: dict[str, str], exclude: Iterable[str],
                        carries=None) -> list[dict]:
    """Findings ``undeclared-derivative`` for a request: heads outside ``exclude`` (the declared affected set)
    that look derived from the pre-forget revision ``pre_forget[repo]`` of an affected repo. ``carries(repo,
    head)`` tells a head that already carries the request (adopted by a fix): not a finding."""
    from .lineage import graph_from_entries, index_entries

    if not supports(hub, LOCAL_FOLDER) or not pre_forget:
        return []
    entries = index_entries(hub)
    sources = {}
    for repo, rev in sorted(pre_forget.items()):
        try:
            w = hub.list_files(repo, rev).get(WEIGHTS_FILE)
        except BadInput:
            continue
        fp = fingerprint_of(hub, repo, w, where=f"{repo}@{rev[:12]}") if w else None
        if fp is not None:
            sources[f"{repo}@{rev}"] = fp
    found = derivatives_of(hub, sources, entries, exclude)
    # a head whose likeness the cards explain (an ancestor of the affected repo, a sibling or cousin through a
    # declared ancestor, as `lineage --infer` counts them) is no undeclared derivative of it
    g = graph_from_entries(entries)
    found = {src: [(r, e) for r, e in hits if not _declared(g, src.partition("@")[0], r)]
             for src, hits in found.items()}

    def strength(edge):
        e = edge.evidence
        sims = [v for v in (e.get("init_similarity"), e.get("learned_similarity")) if v is not None]
        return (e.get("identical_tensors", 0), min(sims) if sims else 0.0)

    best: dict[str, tuple[str, SuspectedEdge]] = {}
    for src, hits in sorted(found.items()):
        for repo, edge in hits:
            if repo not in best or strength(edge) > strength(best[repo][1]):
                best[repo] = (src, edge)
    out: dict[str, dict] = {}
    for repo, (src, edge) in sorted(best.items()):
        if carries is not None and carries(repo, entries[repo]["head"]):
            continue
        src_repo, _, src_rev = src.partition("@")
        ev = {k: v for k, v in edge.to_dict().items() if k not in ("parent", "child", "direction", "declared")}
        out[repo] = {"request": request_id, "repo": repo, "kind": FINDING_UNDECLARED_DERIVATIVE,
                     "message": f"{repo}: its weights look derived from {src_repo}@{src_rev[:12]} (before the "
                                f"forget of request {request_id}) but its card does not declare it "
                                f"({edge.line().split('(', 1)[1]}",
                     "derived_from": {"repo": src_repo, "revision": src_rev}, "evidence": ev}
    return [out[r] for r in sorted(out)]


__all__ = ["Fingerprint", "Layout", "Evidence", "SuspectedEdge", "EdgeKind", "Direction", "Relation",
           "compute_fingerprint", "fingerprint_file", "record_fingerprint", "load_fingerprint", "fingerprint_of", "rebuild_fingerprints", "infer", "relate",
           "derivatives_of", "head_fingerprints", "undeclared_findings"]
