"""Weight fingerprints and lineage inferred from them: the derivatives nobody declared (docs/hub-layout.md,
"Fingerprints"; the rule in docs/lineage-inference.md).

A fingerprint is computed from a safetensors file's bytes (no model is built, nothing is unpickled): for every
floating-point tensor, a digest of its bytes, the L2 norm of its centred values and a count sketch of them
(``SKETCH_K`` signed bucket sums with a hash fixed by the tensor's size, so the same-shaped tensors of two models
are sketched alike; sketches are linear, so a FedAvg merge's sketch is the average of its parents'). Fingerprints
are stored by the weights' sha256 under ``HUB/.fiun/fingerprints/`` when a revision is published and are never
removed, so the fingerprint of a pre-forget revision outlives its weights.

Two models are compared on the tensors they share (same name, dtype and shape) in two groups:

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

import base64
import hashlib
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .constants import FIUN_DIR, LEDGER_REPO, WEIGHTS_FILE
from .errors import BadInput
from .hub.base import LOCAL_FOLDER, supports
from .inputs import read_regular_file
from .jsonsafe import loads as loads_json
from .safetensors_io import parse_header

FINGERPRINT_DIR = "fingerprints"
FINGERPRINT_FORMAT = "fiun-fingerprint/1"
LAYOUT_FORMAT = "fiun-layout/1"
SKETCH_K = 32
#: decision thresholds, calibrated on independently trained models (docs/lineage-inference.md)
IDENTICAL_MIN = 0.5      # share of comparable tensors that are byte-identical
INIT_MIN = 0.9           # mean cosine over shared init tensors
LEARNED_MIN = 0.85       # mean cosine over shared learned tensors
CANDIDATE_MIN = 0.3      # loose bound on the compact vectors (both groups) for a pair to be checked exactly
MERGE_PAIR_MIN = 0.3     # a merge parent's cosine to the merge (both groups)
MERGE_RESIDUAL = 0.15    # relative residual of the merge fit (each group)
MERGE_MAX_PARENTS = 8
CLOSE_MERGE_GAIN = 0.5      # ... and at most half the residual of its best single parent (a near copy of one
#                              model fits its siblings as well as it fits that model: no gain)
CLOSE_MERGE_RESIDUAL = 0.06  # the same among close models (:func:`_merges_among_close`): on the benchmark,
#                              fine-tunes and re-uploads fit a merge of their relations to 0.09-0.14, FedAvg merges 0.01-0.06
COMPACT_DIM = 64
_FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": None}


# ------------------------------------------------------------------------------------------- computing
@dataclass
class Layout:
    """The floating-point tensors a fingerprint covers, in order: name, dtype, shape."""

    key: str
    tensors: list[tuple[str, str, tuple[int, ...]]]

    @property
    def learned(self) -> np.ndarray:
        """True for 1-dimensional tensors (the *learned* group), False for the *init* group."""
        return np.array([len(s) <= 1 for _, _, s in self.tensors], dtype=bool)

    def to_json(self) -> dict:
        return {"format": LAYOUT_FORMAT, "key": self.key, "tensors": [[n, d, list(s)] for n, d, s in self.tensors]}


@dataclass
class Fingerprint:
    """One weights file's fingerprint: per-tensor digests (uint64), centred norms and count sketches."""

    weights: str
    layout: Layout
    digests: np.ndarray   # (T,) uint64
    norms: np.ndarray     # (T,) float32; 0 for a constant tensor (never counted as identical or similar)
    sketch: np.ndarray    # (T, SKETCH_K) float32

    def to_json(self) -> dict:
        return {"format": FINGERPRINT_FORMAT, "weights": self.weights, "layout": self.layout.key, "k": SKETCH_K,
                "digests": self.digests.astype(">u8").tobytes().hex(),
                "norms": base64.b64encode(self.norms.astype("<f4").tobytes()).decode(),
                "sketch": base64.b64encode(self.sketch.astype("<f4").tobytes()).decode()}


def _layout_key(tensors) -> str:
    return hashlib.sha256(json.dumps([[n, d, list(s)] for n, d, s in tensors]).encode()).hexdigest()[:32]


_HASHES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _bucket_hash(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket and sign of each of ``n`` positions: fixed by ``n`` alone (the same for every model)."""
    if n not in _HASHES:
        rng = np.random.default_rng(1_000_003 + n)
        buckets = rng.integers(0, SKETCH_K, size=n, dtype=np.int64)
        signs = rng.integers(0, 2, size=n, dtype=np.int8).astype(np.float64) * 2 - 1
        if len(_HASHES) > 512:
            _HASHES.clear()
        _HASHES[n] = (buckets, signs)
    return _HASHES[n]


def _values(buf, dtype: str, start: int, end: int) -> np.ndarray | None:
    if dtype == "BF16":
        raw = np.frombuffer(buf, dtype="<u2", count=(end - start) // 2, offset=start)
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    np_dtype = _FLOATS.get(dtype)
    if np_dtype is None:
        return None
    size = np.dtype(np_dtype).itemsize
    return np.frombuffer(buf, dtype=np.dtype(np_dtype).newbyteorder("<"), count=(end - start) // size,
                         offset=start).astype(np.float64)


def sketch_values(x: np.ndarray) -> tuple[float, np.ndarray]:
    """(L2 norm of the centred values, their count sketch). Tensors of at most ``SKETCH_K`` values are kept
    whole (zero-padded), so small tensors compare exactly."""
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, 0.0)  # before any arithmetic: inf/NaN never reach the mean (no RuntimeWarning)
    if finite.sum() < 2:
        return 0.0, np.zeros(SKETCH_K)
    fx = x[finite] if not finite.all() else x
    if fx.min() == fx.max():
        return 0.0, np.zeros(SKETCH_K)  # constant: exactly 0, not the rounding noise of x - mean
    # the mean of the finite values only; non-finite positions sit at that mean (centred value 0)
    x = np.where(finite, x - fx.mean(), 0.0)
    norm = float(np.sqrt(np.dot(x, x)))
    if x.size <= SKETCH_K:
        out = np.zeros(SKETCH_K)
        out[: x.size] = x
        return norm, out
    buckets, signs = _bucket_hash(x.size)
    return norm, np.bincount(buckets, weights=signs * x, minlength=SKETCH_K)


def compute_fingerprint(data, weights_sha256: str, where: str = "") -> Fingerprint:
    """The fingerprint of safetensors bytes (``bytes`` or an ``mmap``). :class:`BadInput` if the file is not a
    valid safetensors file."""
    header, _ = parse_header(bytes(data[: 8 + min(len(data) - 8, 100 << 20)]) if len(data) >= 8 else bytes(data),
                             len(data), where)
    n_header = int.from_bytes(bytes(data[:8]), "little")
    base = 8 + n_header
    tensors, digests, norms, sketches = [], [], [], []
    for name in sorted(header):
        t = header[name]
        dtype, shape = t["dtype"], tuple(t["shape"])
        if dtype not in _FLOATS:
            continue  # integer buffers (num_batches_tracked) say nothing about lineage
        a, b = t["data_offsets"]
        h = hashlib.sha256(f"{dtype}{list(shape)}".encode())
        h.update(memoryview(data)[base + a: base + b])
        x = _values(data, dtype, base + a, base + b)
        norm, sk = sketch_values(x) if x is not None and x.size >= 2 else (0.0, np.zeros(SKETCH_K))
        tensors.append((name, dtype, shape))
        digests.append(int.from_bytes(h.digest()[:8], "big"))
        norms.append(norm)
        sketches.append(sk)
    layout = Layout(_layout_key(tensors), tensors)
    return Fingerprint(weights_sha256, layout, np.array(digests, dtype=np.uint64),
                       np.array(norms, dtype=np.float32),
                       np.array(sketches, dtype=np.float32).reshape(len(tensors), SKETCH_K))


def fingerprint_file(path: str | os.PathLike, weights_sha256: str, where: str = "") -> Fingerprint:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise BadInput(f"{where or path}: not a safetensors file (empty)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return compute_fingerprint(mm, weights_sha256, where or str(path))


# ------------------------------------------------------------------------------------------- the store
def _store(hub) -> Path:
    return Path(hub.root) / FIUN_DIR / FINGERPRINT_DIR


_SHA256 = frozenset("0123456789abcdef")
#: bound on one stored record (a fingerprint is ~200 bytes a tensor): a record swapped for ``/dev/zero`` or a huge
#: file is one line, never a full memory
MAX_RECORD = 64 << 20


def fingerprint_path(hub, weights_sha256: str) -> Path:
    if not (isinstance(weights_sha256, str) and len(weights_sha256) == 64 and set(weights_sha256) <= _SHA256):
        raise BadInput(f"{str(weights_sha256)[:80]!r} is not a weights sha256 (lineage index edited by hand? "
                       "rebuild with `fiun-hub verify --repair-index`)")
    return _store(hub) / weights_sha256[:2] / f"{weights_sha256}.json"


def _read_record(path: Path, where: str, what: str):
    """A stored JSON record: FileNotFoundError when there is none; else its value, read bounded from a regular
    file and parsed with a depth bound (:class:`BadInput` otherwise)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    return loads_json(read_regular_file(path, MAX_RECORD, what), where, what)


def _layout_path(hub, key: str) -> Path:
    return _store(hub) / "layouts" / f"{key}.json"


def write_fingerprint(hub, fp: Fingerprint) -> None:
    from .hub.local import atomic_write

    lp = _layout_path(hub, fp.layout.key)
    if not lp.is_file():
        atomic_write(lp, json.dumps(fp.layout.to_json(), separators=(",", ":")).encode(), fsync=False)
    atomic_write(fingerprint_path(hub, fp.weights), json.dumps(fp.to_json(), separators=(",", ":")).encode(),
                 fsync=False)


def record_fingerprint(hub, repo: str, weights_sha256: str | None, *, verify: bool = False) -> bool:
    """Store the fingerprint of ``repo``'s weights blob ``weights_sha256`` unless it is stored already (with
    ``verify``: unless the stored one reads back whole). Never raises on the model's bytes: a blob that is missing
    (purged) or not safetensors is skipped. Returns whether a fingerprint is stored now."""
    if not weights_sha256 or not supports(hub, LOCAL_FOLDER):
        return False
    path = fingerprint_path(hub, weights_sha256)
    if path.is_file():
        if not verify:
            return True
        try:
            load_fingerprint(hub, weights_sha256)
            return True
        except BadInput:
            pass
    blob = hub.blob_path(repo, weights_sha256)
    if not blob.is_file() or blob.is_symlink():
        return False
    try:
        fp = fingerprint_file(blob, weights_sha256, f"{repo}:{WEIGHTS_FILE}")
    except (BadInput, OSError, ValueError):
        return False
    write_fingerprint(hub, fp)
    return True


_LAYOUTS: dict[tuple[str, str], Layout] = {}


def _load_layout(hub, key: str, where: str) -> Layout:
    ck = (str(hub.root), key)
    if ck in _LAYOUTS:
        return _LAYOUTS[ck]
    try:
        d = _read_record(_layout_path(hub, key), where, "tensor layout")
        if not isinstance(d, dict) or d.get("format") != LAYOUT_FORMAT:
            raise ValueError("format")
        tensors = [(str(n), str(dt), tuple(int(v) for v in s)) for n, dt, s in d["tensors"]]
        if _layout_key(tensors) != key:
            raise ValueError("key does not match its tensors")
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError, BadInput) as exc:
        raise BadInput(f"{where}: damaged tensor layout {key[:12]} in {FIUN_DIR}/{FINGERPRINT_DIR}/layouts "
                       f"({type(exc).__name__}); rebuild with `fiun-hub verify --repair-index`") from None
    _LAYOUTS[ck] = Layout(key, tensors)
    return _LAYOUTS[ck]


def load_fingerprint(hub, weights_sha256: str, where: str = "") -> Fingerprint:
    """The stored fingerprint of weights ``weights_sha256``; :class:`BadInput` (one line) if it is damaged."""
    path = fingerprint_path(hub, weights_sha256)
    where = where or weights_sha256[:12]
    try:
        d = _read_record(path, where, "weight fingerprint")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, BadInput):
        d = None
    try:
        if not isinstance(d, dict) or d.get("format") != FINGERPRINT_FORMAT or d.get("weights") != weights_sha256 \
                or d.get("k") != SKETCH_K:
            raise ValueError("not a fingerprint record for these weights")
        layout = _load_layout(hub, str(d["layout"]), where)
        t = len(layout.tensors)
        digests = np.frombuffer(bytes.fromhex(d["digests"]), dtype=">u8").astype(np.uint64)
        norms = np.frombuffer(base64.b64decode(d["norms"], validate=True), dtype="<f4").astype(np.float32)
        sketch = np.frombuffer(base64.b64decode(d["sketch"], validate=True), dtype="<f4").astype(np.float32)
        if digests.size != t or norms.size != t or sketch.size != t * SKETCH_K:
            raise ValueError("sizes disagree with its layout")
        if not (np.isfinite(norms).all() and np.isfinite(sketch).all()) or (norms < 0).any():
            raise ValueError("values are not finite")
    except BadInput:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadInput(f"{where}: damaged weight fingerprint {FIUN_DIR}/{FINGERPRINT_DIR}/{weights_sha256[:2]}/"
                       f"{weights_sha256[:12]}... ({exc}); rebuild with `fiun-hub verify --repair-index`") from None
    return Fingerprint(weights_sha256, layout, digests, norms, sketch.reshape(t, SKETCH_K))


def fingerprint_of(hub, repo: str, weights_sha256: str, where: str = "") -> Fingerprint | None:
    """The stored fingerprint, computed and stored first when missing and the blob is still there; None when
    there is neither (weights purged before fingerprints existed, or not safetensors)."""
    try:
        return load_fingerprint(hub, weights_sha256, where)
    except FileNotFoundError:
        pass
    if record_fingerprint(hub, repo, weights_sha256):
        return load_fingerprint(hub, weights_sha256, where)
    return None


def rebuild_fingerprints(hub, entries: dict) -> None:
    """For an index rebuild: every head's fingerprint re-read and recomputed from its blob where damaged or
    missing, and those of the pre-forget revisions the heads' forget records name (kept when their blobs are
    gone)."""
    if not supports(hub, LOCAL_FOLDER):
        return
    for repo, e in entries.items():
        record_fingerprint(hub, repo, e.get("weights"), verify=True)
        for u in e.get("unlearned") or []:
            rev = u.get("from_revision") if isinstance(u, dict) else None
            if not rev:
                continue
            try:
                w = hub.list_files(repo, rev).get(WEIGHTS_FILE)
            except BadInput:
                continue
            record_fingerprint(hub, repo, w, verify=True)


# ------------------------------------------------------------------------------------------- comparing
@dataclass
class Evidence:
    """How two fingerprints compare on their shared tensors."""

    shared: int            # tensors of the same name, dtype and shape, non-constant in both
    identical: int         # of those, byte-identical
    init_similarity: float | None     # mean cosine over shared init tensors (None: none shared)
    learned_similarity: float | None  # mean cosine over shared learned tensors

    @property
    def kind(self) -> str | None:
        """``identical`` / ``close`` when the pair looks derived, else None."""
        if self.shared and self.identical >= max(1, IDENTICAL_MIN * self.shared):
            return "identical"
        ini, lea = self.init_similarity, self.learned_similarity
        if ini is not None and ini >= INIT_MIN and (lea is None or lea >= LEARNED_MIN):
            return "close"
        if ini is None and lea is not None and lea >= LEARNED_MIN:
            return "close"
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


def _matched(la: Layout, lb: Layout) -> tuple[np.ndarray, np.ndarray] | None:
    """Column indices of the tensors two layouts share (name, dtype, shape), if they share at least half of the
    smaller one's (same architecture up to a new head)."""
    pos = {t: i for i, t in enumerate(lb.tensors)}
    ca, cb = [], []
    for i, t in enumerate(la.tensors):
        if t in pos:
            ca.append(i)
            cb.append(pos[t])
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
                    if A is not None:
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
                        if A is not None:
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
    kind: str                 # re-upload | identical | close | merge
    direction: str            # time | merge | forget | unknown
    declared: bool
    evidence: dict = field(default_factory=dict)
    # derived: a suspected derivation (child from parent); sibling: both ends derive from ``via`` (their own
    # reported edges say so), neither from the other; ancestor: parent is an earlier ancestor of child through the
    # reported edge ``via`` -> child (a grandparent). See :func:`_relations`.
    relation: str = "derived"
    via: str | None = None

    def to_dict(self) -> dict:
        d = {"parent": self.parent, "child": self.child, "kind": self.kind, "direction": self.direction,
             "declared": self.declared, "relation": self.relation}
        if self.via is not None:
            d["via"] = self.via
        return {**d, **self.evidence}

    def line(self) -> str:
        e = self.evidence
        arrow = "->" if self.direction != "unknown" else "<->"
        bits = [f"{e.get('identical_tensors', 0)}/{e.get('shared_tensors', 0)} tensors identical"]
        for k, name in (("init_similarity", "init"), ("learned_similarity", "learned")):
            if e.get(k) is not None:
                bits.append(f"{name} cos {e[k]:.3f}")
        if "merge_weights" in e:
            bits.append(f"merge weight {e['merge_weights']:.2f}, residual {e['merge_residual']:.3f}")
        bits.append(f"direction: {self.direction}")
        what = self.kind
        if self.relation == "sibling":
            arrow, what = "<->", f"sibling ({self.kind}, both from {self.via})"
        elif self.relation == "ancestor":
            what = f"ancestor ({self.kind}, through {self.via})"
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
        uniq = {}
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


def _oldest_parents(pairs: dict, since: dict) -> set:
    """For every model b, the pair (a, b) whose a appeared strictly before b and before every other suspected
    relation of b (ties: the most similar); at most one pair per model. Models without a time take no part."""
    keys = [k for k in pairs if since.get(k[0]) and since.get(k[1]) and since[k[0]] != since[k[1]]]
    if not keys:
        return set()
    times = sorted({since[x] for k in keys for x in k})
    rank = {t: i for i, t in enumerate(times)}
    ra = np.array([rank[since[a]] for a, _ in keys], dtype=np.int64)
    rb = np.array([rank[since[b]] for _, b in keys], dtype=np.int64)
    sc = np.array([pairs[k][1].score for k in keys], dtype=np.float64)
    nodes = {n: i for i, n in enumerate(sorted({x for k in keys for x in k}, key=str))}
    ia = np.array([nodes[a] for a, _ in keys], dtype=np.int64)
    ib = np.array([nodes[b] for _, b in keys], dtype=np.int64)
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
            explained = ((S[ia[sl]] > bar) & (S[ib[sl]] > bar)).any(axis=1)
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


def _since(hub, repo: str, head: str) -> str:
    """When ``repo``'s weights at ``head`` first appeared on its history (the oldest commit still holding them)."""
    try:
        hist = hub.history(repo, head)
    except BadInput:
        return ""
    w = hist[0].files.get(WEIGHTS_FILE)
    t = hist[0].time
    for c in hist[1:]:
        if c.files.get(WEIGHTS_FILE) != w:
            break
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


def head_fingerprints(hub, entries: dict) -> dict[str, Fingerprint]:
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
        if cache[w] is not None:
            out[repo] = cache[w]
    return out


def infer(hub, g=None, entries: dict | None = None) -> list[SuspectedEdge]:
    """Suspected edges among the heads of every repo in the hub, with evidence, direction and whether the cards
    declare them (declared: one is an ancestor of the other in ``g``, or both descend from one declared model)."""
    from .lineage import read_index_file, rebuild_index, resolve

    if entries is None:
        entries = read_index_file(hub)
        if entries is None:
            entries = rebuild_index(hub)
    g = g if g is not None else resolve(hub)
    fps = head_fingerprints(hub, entries)
    pairs, merges = relate(fps)
    since: dict[str, str] = {}

    def when(r):
        if r not in since:
            since[r] = _since(hub, r, entries[r]["head"])
        return since[r]

    # every model with a suspected relation needs its time: the pruning keeps each one's edge to its oldest relation
    times = {r: when(r) for r in {x for k in pairs for x in k}}
    oldest = _oldest_parents(pairs, times)  # kept by _prune, and the core edges of _relations
    pairs = _prune(pairs, oldest=oldest)
    edges: list[SuspectedEdge] = []

    for (a, b), (kind, ev) in sorted(pairs.items()):
        if kind == "identical" and fps[a].weights == fps[b].weights:
            kind = "re-upload"
        ta, tb = when(a), when(b)
        if ta and tb and ta != tb:
            parent, child, direction = (a, b, "time") if ta < tb else (b, a, "time")
        else:
            parent, child, direction = a, b, "unknown"
        edges.append(SuspectedEdge(parent, child, kind, direction, _declared(g, a, b), ev.to_dict()))
    for child, parents, (r_init, r_learned), evs in merges:
        for p, w in parents:
            d = evs[p].to_dict()
            d.update(merge_weights=round(w, 4), merge_residual=round(max(r for r in (r_init, r_learned)
                                                                        if r is not None), 4),
                     merge_parents=[q for q, _ in parents])
            edges.append(SuspectedEdge(p, child, "merge", "merge", _declared(g, p, child), d))
    _merges_among_close(fps, pairs, edges)
    _relations(edges, oldest)
    edges.sort(key=lambda e: (e.declared, e.parent, e.child))
    return edges


def _merges_among_close(fps: dict, pairs: dict, edges: list[SuspectedEdge]) -> None:
    """A merge of close models (FedAvg of fine-tunes of one parent) is close to each of them, so :func:`relate`
    (which fits merges on the looser pairs) reports its pairs as ``close``, and by structure alone each would look
    like two fine-tunes of one parent. For every model with two or more close edges from older models (and no
    merge fit yet), fit a merge of those; when one fits with a residual of at most ``CLOSE_MERGE_RESIDUAL``, its edges from the fitted parents carry the merge's
    weights (``merge_weights``, ``merge_residual``, ``merge_parents``) and count as derivations."""
    merged = {e.child for e in edges if e.kind == "merge"}
    by_child: dict = {}
    for e in edges:
        if e.kind == "close" and e.direction == "time" and e.child not in merged:
            by_child.setdefault(e.child, []).append(e)
    for child, es in sorted(by_child.items(), key=lambda kv: str(kv[0])):
        if len(es) < 2:
            continue
        cands = {e.parent: pairs[tuple(sorted((e.parent, child), key=str))][1] for e in es}
        fit = _fit_merge(fps, child, cands)
        if fit is None:
            continue
        _, parents, (r_init, r_learned), _ = fit
        w = dict(parents)
        res = round(max(r for r in (r_init, r_learned) if r is not None), 4)
        if res > CLOSE_MERGE_RESIDUAL or res > CLOSE_MERGE_GAIN * min(
                (_single_residual(fps, child, p) for p in cands), default=0.0):
            continue
        for e in es:
            if e.parent in w:
                e.evidence.update(merge_weights=round(w[e.parent], 4), merge_residual=res,
                                  merge_parents=[q for q, _ in parents])


def _single_residual(items: dict, child, parent) -> float:
    """The relative residual of ``child``'s sketches as a multiple of ``parent``'s alone (the larger group's; inf
    when they share nothing)."""
    fc, fp = items[child], items[parent]
    m = _matched(fc.layout, fp.layout)
    if m is None:
        return float("inf")
    ca, cb = m
    valid = (fc.norms[ca] > 0) & (fp.norms[cb] > 0)
    f = _merge_fit(fc.sketch[ca], [fp.sketch[cb]], fc.layout.learned[ca], valid)
    if f is None:
        return float("inf")
    return max(r for r in f[1:] if r is not None)


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
        whole = e.kind == "re-upload"
        fit = e.kind == "merge" or "merge_parents" in e.evidence
        if fit or whole:
            fixed.add(id(e))  # a whole copy or a merge fit is a derivation whatever else is reported
        if e.direction == "unknown":
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
                e.relation, e.via = "ancestor", via[0]
                continue
        if core.has_edge(a, b) or a in ancestors(b) or b in ancestors(a):
            continue  # a core edge, or one along a chain of them (kept as a derivation)
        shared = ancestors(a) & ancestors(b)
        if shared:
            # the nearest: a shared ancestor none of whose descendants is also shared
            near = sorted((s for s in shared if not any(s in ancestors(t) for t in shared)), key=str)
            e.relation, e.via = "sibling", near[0]


def derivatives_of(hub, sources: dict[str, Fingerprint], entries: dict, exclude: Iterable[str] = ()) \
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
        if kind == "identical" and items[src].weights == items[other].weights:
            kind = "re-upload"
        out.setdefault(src[1], []).append(
            (other, SuspectedEdge(src[1], other, kind, "forget", False, ev.to_dict())))
    for child, parents, res, evs in merges:
        if child in qkeys:
            continue
        for p, w in parents:
            if p in qkeys:
                d = evs[p].to_dict()
                d.update(merge_weights=round(w, 4), merge_parents=[str(q[1]) if isinstance(q, tuple) else q
                                                                   for q, _ in parents])
                out.setdefault(p[1], []).append((child, SuspectedEdge(p[1], child, "merge", "forget", False, d)))
    return out


def undeclared_findings(hub, request_id: str, pre_forget: dict[str, str], exclude: Iterable[str],
                        carries=None) -> list[dict]:
    """Findings ``undeclared-derivative`` for a request: heads outside ``exclude`` (the declared affected set)
    that look derived from the pre-forget revision ``pre_forget[repo]`` of an affected repo. ``carries(repo,
    head)`` tells a head that already carries the request (adopted by a fix): not a finding."""
    from .lineage import read_index_file, rebuild_index

    if not supports(hub, LOCAL_FOLDER) or not pre_forget:
        return []
    entries = read_index_file(hub)
    if entries is None:
        entries = rebuild_index(hub)
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
        out[repo] = {"request": request_id, "repo": repo, "kind": "undeclared-derivative",
                     "message": f"{repo}: its weights look derived from {src_repo}@{src_rev[:12]} (before the "
                                f"forget of request {request_id}) but its card does not declare it "
                                f"({edge.line().split('(', 1)[1]}",
                     "derived_from": {"repo": src_repo, "revision": src_rev}, "evidence": ev}
    return [out[r] for r in sorted(out)]


__all__ = ["Fingerprint", "Layout", "Evidence", "SuspectedEdge", "compute_fingerprint", "fingerprint_file",
           "record_fingerprint", "load_fingerprint", "fingerprint_of", "rebuild_fingerprints", "infer", "relate",
           "derivatives_of", "head_fingerprints", "undeclared_findings"]
