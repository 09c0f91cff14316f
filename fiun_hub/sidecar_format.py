"""The sidecar format (``fiun-fim/1``): ``fim.safetensors`` (the model FIM) and ``fim-classes.safetensors`` (one
FIM per class), their header metadata, reading and validating them, and rewriting them with classes stripped.
docs/sidecars.md. The estimators that fill them are in :mod:`fiun_hub.fisher` (which re-exports these names).

Sidecars are safetensors only, read with ``safetensors.torch.load`` (never pickle) and validated. They are written
by :func:`encode_safetensors`, not ``safetensors.torch.save``: header metadata keys sorted, tensors by name, so the
same content always gives the same bytes (and the same sha256, so the hub stores it once).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from safetensors.torch import load as _st_load

from .constants import FIM_CLASSES_FILE, FIM_FILE
from .errors import BadInput, SidecarError, UnlearnError
from .jsonsafe import loads as loads_json

FORMAT = "fiun-fim/1"
#: the estimators a sidecar header may name (:func:`fiun_hub.fisher.compute_fisher` computes each)
ESTIMATORS = ("normalized", "per-sample", "batch")
#: header metadata keys written by this module; callers' metadata may not set them to other values
RESERVED_KEYS = ("format", "estimator", "batch_size", "layers", "labels", "counts")
MAX_COUNT = 2 ** 53  # a class's sample count: beyond float64's exact integers it is no count (the FIMs' weights)
_MAX_HEADER = 100 << 20


@dataclass
class Sidecars:
    """Parsed, validated ``fim.safetensors`` (+ optional ``fim-classes.safetensors``)."""

    model_fim: dict[str, torch.Tensor]
    class_fims: dict[str, dict[str, torch.Tensor]]  # empty when the classes sidecar was not given
    counts: dict[str, int]
    labels: list[str]
    layers: list[str]
    estimator: str
    batch_size: int | None
    metadata: dict[str, str] = field(default_factory=dict)  # the full header metadata of fim.safetensors

    @property
    def model_commit(self) -> str | None:
        return self.metadata.get("model_commit") or None

    @property
    def forgotten(self) -> list[str]:
        """Classes already stripped from these sidecars (header ``forgotten``), oldest first."""
        raw = self.metadata.get("forgotten")
        try:
            val = json.loads(raw) if raw else []
        except (ValueError, RecursionError):
            return []
        return [str(v) for v in val] if isinstance(val, list) else []


def _prefix(where: str) -> str:
    if where and not where.endswith((" ", ":")):
        return where + ": "
    return where


def _check_tensor(t: torch.Tensor, what: str, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise SidecarError(f"{where}{what} is not a tensor")
    if not t.dtype.is_floating_point:
        raise SidecarError(f"{where}{what} has dtype {t.dtype}; a FIM is float32")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise SidecarError(f"{where}{what} holds {bad} non-finite value(s) (NaN/Inf)")
    if bool((t < 0).any()):
        raise SidecarError(f"{where}{what} holds negative values; a diagonal FIM is >= 0")
    return t


def encode_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Deterministic safetensors bytes: the same tensors and metadata give the same bytes, in every process.

    ``safetensors.torch.save`` writes the header metadata in a Rust hash map's order, which changes from call to
    call, so equal sidecars would get different sha256s (and be stored twice). Here the header is
    ``{"__metadata__": {keys sorted}, tensors sorted by name}`` as compact JSON, padded with spaces to a multiple
    of 8 bytes (as safetensors pads it), and the data follows in the header's order. Any safetensors reader
    reads it. Tensors must be CPU, contiguous-able, of a dtype safetensors knows."""
    names = {v: k for k, v in _ST_DTYPES.items()}
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        dtype = names.get(t.dtype)
        if dtype is None:
            raise BadInput(f"{name}: dtype {t.dtype} cannot be stored in safetensors")
        t = t.contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([len(head).to_bytes(8, "little"), head] + chunks)


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _check_all(tensors: Mapping[str, torch.Tensor], what: Callable[[str], str], where: str) -> dict[str, torch.Tensor]:
    """:func:`_check_tensor` of every tensor, but with one finiteness and one sign test over all of them together
    (a sidecar holds one tensor per layer and class: checking them one by one costs more than the data); only
    when that finds a problem is each tensor checked on its own, so the error names it."""
    out: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            _check_tensor(t, what(k), where)  # raises
        out[k] = t.detach().to("cpu", torch.float32).contiguous()
    if out:
        flat = torch.cat([t.reshape(-1) for t in out.values()])
        if not bool(torch.isfinite(flat).all()) or bool((flat < 0).any()):
            for k, t in out.items():
                _check_tensor(t, what(k), where)
    return out


def encode_sidecars(model_fim, class_fims, counts, labels, layers, estimator, batch_size, metadata, where="",
                    checked: bool = False) -> tuple[bytes, bytes]:
    """Both sidecar files' bytes (:func:`encode_safetensors`: deterministic). ``checked``: the class FIMs come
    from a validated :class:`Sidecars` (float32, finite, non-negative) and are not checked again."""
    where = _prefix(where)
    labels = [str(v) for v in labels]
    layers = [str(v) for v in layers]
    if estimator not in ESTIMATORS:
        raise SidecarError(f"{where}unknown estimator {estimator!r}")
    if estimator == "batch" and not (isinstance(batch_size, int) and batch_size > 0):
        raise SidecarError(f"{where}the batch estimator needs its batch size, got {batch_size!r}")
    missing = [n for n in layers if n not in model_fim]
    if missing:
        raise SidecarError(f"{where}model FIM lacks layers {missing}")
    unknown = [lab for lab in list(class_fims) + list(counts) if lab not in labels]
    if unknown:
        raise SidecarError(f"{where}labels {sorted(set(unknown))} are not among the model's labels")
    meta_core = {
        "format": FORMAT,
        "estimator": estimator,
        "batch_size": str(int(batch_size)) if estimator == "batch" else "",
        "layers": json.dumps(layers),
        "labels": json.dumps(labels),
        "counts": json.dumps({lab: int(counts[lab]) for lab in labels if lab in counts}),
    }
    meta: dict[str, str] = {}
    for key, val in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise BadInput(f"{where}sidecar metadata must map strings to strings, got {key!r}: {type(val).__name__}")
        if key in meta_core and val != meta_core[key]:
            raise BadInput(f"{where}sidecar metadata may not set {key!r} (fiun-hub writes it)")
        meta[key] = val
    meta.update(meta_core)
    fim = _check_all({n: model_fim[n] for n in layers}, lambda n: f"{FIM_FILE}: {n}", where)
    raw: dict[str, torch.Tensor] = {}
    for lab in labels:
        if lab not in class_fims:
            continue
        per = class_fims[lab]
        for n in layers:
            if n not in per:
                raise SidecarError(f"{where}class {lab!r} lacks the FIM of {n}")
            t = per[n]
            if isinstance(t, torch.Tensor) and t.shape != fim[n].shape:
                raise SidecarError(f"{where}class {lab!r} FIM of {n} is {tuple(t.shape)}, model FIM {tuple(fim[n].shape)}")
            raw[f"{n}@{lab}"] = t
    if checked:
        classes = {k: t.detach().to("cpu", torch.float32) for k, t in raw.items()}
    else:
        classes = _check_all(raw, lambda k: f"{FIM_CLASSES_FILE}: {k}", where)
    return encode_safetensors(fim, meta), encode_safetensors(classes, meta)



def _load(buf, fname: str, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise SidecarError(f"{where}{fname}: expected bytes, got {type(buf).__name__}")
    buf = bytes(buf)
    if len(buf) < 8:
        raise SidecarError(f"{where}{fname} is truncated ({len(buf)} bytes)")
    n = int.from_bytes(buf[:8], "little")
    if n > len(buf) - 8 or n > _MAX_HEADER:
        raise SidecarError(f"{where}{fname}: header claims {n} bytes but only {len(buf) - 8} follow (truncated or corrupt)")
    try:
        header = loads_json(buf[8:8 + n], f"{where}{fname}", "header")
    except BadInput as exc:
        raise SidecarError(f"{exc} (truncated or corrupt)") from None
    if not isinstance(header, dict):
        raise SidecarError(f"{where}{fname}: header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SidecarError(f"{where}{fname}: header metadata must map strings to strings")
    try:
        tensors = _st_load(buf)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise SidecarError(f"{where}{fname} is not a valid safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise SidecarError(f"{where}{fname}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    return tensors, dict(meta)


def _json_field(meta: dict[str, str], key: str, kind: type, fname: str, where: str):
    raw = meta.get(key)
    if raw is None:
        raise SidecarError(f"{where}{fname}: header lacks {key!r}")
    try:
        val = loads_json(raw, f"{where}{fname}", f"header {key!r}")
    except BadInput as exc:
        raise SidecarError(str(exc)) from None
    if not isinstance(val, kind):
        raise SidecarError(f"{where}{fname}: header {key!r} must be a JSON {kind.__name__}")
    return val


def _parse_meta(meta: dict[str, str], fname: str, where: str):
    estimator = meta.get("estimator")
    if estimator not in ESTIMATORS:
        raise SidecarError(f"{where}{fname}: unknown estimator {estimator!r}")
    raw_bs = meta.get("batch_size", "")
    batch_size: int | None = None
    if estimator == "batch":
        if not raw_bs.isdigit() or int(raw_bs) < 1:
            raise SidecarError(f"{where}{fname}: batch estimator with batch_size {raw_bs!r}")
        batch_size = int(raw_bs)
    layers = _json_field(meta, "layers", list, fname, where)
    labels = _json_field(meta, "labels", list, fname, where)
    counts = _json_field(meta, "counts", dict, fname, where)
    if not layers or not all(isinstance(v, str) for v in layers) or len(set(layers)) != len(layers):
        raise SidecarError(f"{where}{fname}: header 'layers' must be a non-empty list of distinct names")
    if not all(isinstance(v, str) for v in labels) or len(set(labels)) != len(labels):
        raise SidecarError(f"{where}{fname}: header 'labels' must be a list of distinct names")
    for lab, cnt in counts.items():
        if lab not in labels:
            raise SidecarError(f"{where}{fname}: counts name {lab!r}, which is not among the labels")
        if isinstance(cnt, bool) or not isinstance(cnt, int) or not 0 <= cnt <= MAX_COUNT:
            raise SidecarError(f"{where}{fname}: count of {lab!r} is {str(cnt)[:30]}, expected an integer from 0 "
                               f"to 2**53")
    counts = {lab: counts[lab] for lab in labels if lab in counts}
    return estimator, batch_size, layers, labels, counts


def read_sidecars(fim: bytes, classes: bytes | None = None, *, where: str = "") -> Sidecars:
    """Parse and validate sidecar bytes (safetensors only, never pickle). Raises :class:`SidecarError`,
    its message starting with ``where``, on truncated or lying headers, a wrong format, non-finite or
    negative values, or class FIMs inconsistent with the layers, labels, counts or model FIM shapes."""
    where = _prefix(where)
    tensors, meta = _load(fim, FIM_FILE, where)
    estimator, batch_size, layers, labels, counts = _parse_meta(meta, FIM_FILE, where)
    if set(tensors) != set(layers):
        extra, lack = sorted(set(tensors) - set(layers)), [n for n in layers if n not in tensors]
        raise SidecarError(f"{where}{FIM_FILE}: tensors do not match its layers (missing {lack}, unexpected {extra})")
    model_fim = _check_all({n: tensors[n] for n in layers}, lambda n: f"{FIM_FILE}: {n}", where)
    class_fims: dict[str, dict[str, torch.Tensor]] = {}
    if classes is not None:
        ctensors, cmeta = _load(classes, FIM_CLASSES_FILE, where)
        for key in RESERVED_KEYS + ("model_commit", "dataset", "data_spec", "preprocessing"):
            if (key in RESERVED_KEYS or (key in cmeta and key in meta)) and cmeta.get(key) != meta.get(key):
                raise SidecarError(f"{where}{FIM_FILE} and {FIM_CLASSES_FILE} disagree on {key!r}")
        expected = {f"{n}@{lab}": (n, lab) for lab in labels if counts.get(lab, 0) > 0 for n in layers}
        if set(ctensors) != set(expected):
            lack = sorted(set(expected) - set(ctensors))[:5]
            extra = sorted(set(ctensors) - set(expected))[:5]
            raise SidecarError(f"{where}{FIM_CLASSES_FILE}: keys do not match layers x classes with samples "
                               f"(missing {lack}, unexpected {extra})")
        checked = _check_all({key: ctensors[key] for key in expected}, lambda k: f"{FIM_CLASSES_FILE}: {k}", where)
        for key, (n, lab) in expected.items():
            t = checked[key]
            if t.shape != model_fim[n].shape:
                raise SidecarError(f"{where}{FIM_CLASSES_FILE}: {key} is {tuple(t.shape)}, "
                                   f"but the model FIM of {n} is {tuple(model_fim[n].shape)}")
            class_fims.setdefault(lab, {})[n] = t
    return Sidecars(model_fim=model_fim, class_fims=class_fims, counts=counts, labels=labels, layers=layers,
                    estimator=estimator, batch_size=batch_size, metadata=meta)


def strip_classes(s: Sidecars, drop: Iterable[str], metadata: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """Sidecar bytes with the ``drop`` classes' FIMs and counts removed, the model FIM recomputed as the
    count-weighted mean of the remaining class FIMs, metadata kept (updated by ``metadata``), and ``forgotten``
    (JSON list, cumulative) added. Exact for the per-sample estimator; for ``batch`` it is an approximation
    (header ``model_fim_source`` says so). Dropping nothing re-encodes the sidecars unchanged apart from
    ``metadata``; dropping a class already absent is a no-op. ``s`` is what :func:`read_sidecars` returns: its
    class FIMs were validated there and are not checked again. The bytes are deterministic
    (:func:`encode_safetensors`)."""
    drop = list(dict.fromkeys(str(d) for d in drop))
    unknown = [d for d in drop if d not in s.labels]
    if unknown:
        raise UnlearnError(f"cannot forget {unknown}: not among the model's labels {s.labels}")
    meta = {k: v for k, v in s.metadata.items() if k not in RESERVED_KEYS}
    meta.update(metadata or {})
    if not any(d in s.class_fims or s.counts.get(d, 0) for d in drop):
        return encode_sidecars(s.model_fim, s.class_fims, s.counts, s.labels, s.layers, s.estimator, s.batch_size,
                               meta, checked=True)
    needed = [lab for lab in s.labels if s.counts.get(lab, 0) > 0]
    if any(lab not in s.class_fims for lab in needed):
        raise SidecarError("stripping classes needs the per-class sidecar (fim-classes.safetensors)")
    counts = {lab: c for lab, c in s.counts.items() if lab not in drop}
    keep = [lab for lab in s.labels if counts.get(lab, 0) > 0]
    total = sum(counts[lab] for lab in keep)
    if total == 0:
        raise UnlearnError(f"forgetting {drop} leaves no class with training samples; nothing to keep")
    model_fim = {}
    for n in s.layers:
        acc = torch.zeros(s.model_fim[n].shape, dtype=torch.float64)
        for lab in keep:
            acc += counts[lab] * s.class_fims[lab][n].double()
        model_fim[n] = (acc / total).float()
    class_fims = {lab: s.class_fims[lab] for lab in keep}
    meta["forgotten"] = json.dumps(list(dict.fromkeys(s.forgotten + drop)))
    meta["model_fim_source"] = "class-weighted-mean"
    return encode_sidecars(model_fim, class_fims, counts, s.labels, s.layers, s.estimator, s.batch_size, meta,
                           checked=True)


__all__ = [
    "FORMAT", "ESTIMATORS", "RESERVED_KEYS", "Sidecars", "encode_safetensors", "encode_sidecars", "read_sidecars",
    "strip_classes",
]
