"""Weight fingerprints, computed and stored (docs/hub-layout.md, "Fingerprints"): the store every lineage index
entry writes through. The inference over them (suspected edges, undeclared derivatives) is
:mod:`fiun_hub.fingerprint`, which reads the lineage index; this module reads nothing above the hub, so the
lineage layer records a fingerprint on every publish without an import cycle. :mod:`fiun_hub.fingerprint`
re-exports its names.

A fingerprint is computed from a safetensors file's bytes (no model is built, nothing is unpickled): for every
floating-point tensor, a digest of its bytes, the L2 norm of its centred values and a count sketch of them
(``SKETCH_K`` signed bucket sums with a hash fixed by the tensor's size, so the same-shaped tensors of two models
are sketched alike; sketches are linear, so a FedAvg merge's sketch is the average of its parents'). Fingerprints
are stored by the weights' sha256 under ``HUB/.fiun/fingerprints/`` when a revision is published and are never
removed, so the fingerprint of a pre-forget revision outlives its weights.
"""
from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .constants import FIUN_DIR, WEIGHTS_FILE
from .errors import BadInput
from .forget_record import forget_records
from .hub.base import BLOB_STORE, LOCAL_FOLDER, supports
from .hub.local import atomic_write
from .inputs import read_regular_file
from .jsonsafe import loads as loads_json
from .safetensors_io import parse_header

FINGERPRINT_DIR = "fingerprints"
FINGERPRINT_FORMAT = "fiun-fingerprint/1"
LAYOUT_FORMAT = "fiun-layout/1"
SKETCH_K = 32
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


#: bound on one stored record (a fingerprint is ~200 bytes a tensor): a record swapped for ``/dev/zero`` or a huge
#: file is one line, never a full memory
MAX_RECORD = 64 << 20


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def fingerprint_path(hub, weights_sha256: str) -> Path:
    if not (isinstance(weights_sha256, str) and _SHA256_RE.fullmatch(weights_sha256)):
        raise BadInput(f"{str(weights_sha256)[:80]!r} is not a weights sha256 (lineage index edited by hand? "
                       "rebuild with `fiun-hub verify --repair-index`)")
    # one path parse, not three joins (10k of these for a 10k-model infer)
    return Path(f"{hub.root}/{FIUN_DIR}/{FINGERPRINT_DIR}/{weights_sha256[:2]}/{weights_sha256}.json")


def _read_record(path: Path, where: str, what: str):
    """A stored JSON record: FileNotFoundError when there is none; else its value, read bounded from a regular
    file and parsed with a depth bound (:class:`BadInput` otherwise)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    return loads_json(read_regular_file(path, MAX_RECORD, what), where, what)


def _layout_path(hub, key: str) -> Path:
    return _store(hub) / "layouts" / f"{key}.json"


def write_fingerprint(hub, fp: Fingerprint) -> None:
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
    if not supports(hub, BLOB_STORE):  # (a folder without a blob store: nothing to compute from)
        return False
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
        for rec in forget_records(e.get("unlearned")):
            rev = rec.from_revision
            if not rev:
                continue
            try:
                w = hub.list_files(repo, rev).get(WEIGHTS_FILE)
            except BadInput:
                continue
            record_fingerprint(hub, repo, w, verify=True)


__all__ = ["Fingerprint", "Layout", "compute_fingerprint", "fingerprint_file", "fingerprint_path", "write_fingerprint",
           "record_fingerprint", "load_fingerprint", "fingerprint_of", "rebuild_fingerprints", "sketch_values",
           "FINGERPRINT_DIR", "FINGERPRINT_FORMAT", "LAYOUT_FORMAT", "SKETCH_K"]
