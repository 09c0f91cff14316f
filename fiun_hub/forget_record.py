"""The forget record: one entry of a card's ``fiun.unlearned`` list (docs/card-schema.md, "The forget record").

A card holds its records as plain data (``CardMeta.unlearned``, the lineage index, ``show --json``): that is the
format, written and read as it is. :class:`ForgetRecord` is the one typed view of it: :meth:`ForgetRecord.from_dict`
checks a record against the schema (:func:`check_record`, the rule every write path applies) and
:meth:`ForgetRecord.to_dict` gives back exactly the data it was made from (same keys, same order, same values,
other keys included), so a card that carries a record forward stays byte for byte what it was. A record made here
(the forget's own, :func:`fiun_hub.unlearn.run_forget`) writes the keys in the order a forget has always written
them: ``request``, ``classes`` (``null`` for a sample-wise forget), ``origins``, ``from_revision``, ``alpha``,
``lambda``, ``estimator``, ``reference``, ``sidecar``, ``at``, then, only when set, ``adopted_from`` and
``inferred``, ``weights``, ``samples``, ``data``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .constants import MAX_LIST
from .errors import CardError, FiunError
from .ids import COMMIT_RE, REQUEST_ID_RE, validate_repo_id

OWN = "own"  # the ``sidecar`` of a forget that used the repo's own sidecars (the default when absent)
UNCHANGED = "unchanged"  # the ``weights`` of a forget that left the weights as they were (no forgotten label)


class RecordError(CardError):
    """A ``fiun.unlearned`` record that breaks the schema (docs/card-schema.md): refused by every write path."""


def _record_fail(where: str, msg: str) -> RecordError:
    return RecordError(f"{where}: {msg}" if where else msg)


_RECORD_STRINGS = ("at", "estimator", "reference", "data")


def check_record(u: Any, where: str = "") -> None:
    """One ``fiun.unlearned`` record against the schema: a ``request`` id (the rule of takedown ids), and each
    other field fiun-hub reads, when present, of its type (``from_revision`` a 40-hex commit id, ``classes`` and
    ``origins`` lists of strings, ``alpha`` / ``lambda`` numbers, ``at`` ... strings, ``inferred`` a boolean,
    ``adopted_from`` a ``{repo, revision, evidence}`` mapping with ``inferred: true``). Raises :class:`RecordError`."""
    if not isinstance(u, dict):
        raise _record_fail(where, "card field fiun.unlearned must be a list of records")
    rid = u.get("request")
    if not isinstance(rid, str):
        raise _record_fail(where, "each fiun.unlearned record needs a request id")
    if not REQUEST_ID_RE.match(rid) or ".." in rid:
        raise _record_fail(where, f"fiun.unlearned: request id {rid[:60]!r} is not letters, digits, '.', '_', '-' "
                                  "(at most 128)")
    rev = u.get("from_revision")
    if rev is not None and not (isinstance(rev, str) and COMMIT_RE.match(rev)):
        raise _record_fail(where, f"fiun.unlearned record {rid}: from_revision must be a 40-hex commit id, got "
                                  f"{str(rev)[:60]!r}")
    for key in ("classes", "origins"):
        v = u.get(key)
        if v is not None and not (isinstance(v, list) and len(v) <= MAX_LIST and all(isinstance(x, str) for x in v)):
            raise _record_fail(where, f"fiun.unlearned record {rid}: {key} must be a list of strings")
    for key in ("alpha", "lambda"):
        v = u.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _record_fail(where, f"fiun.unlearned record {rid}: {key} must be a number")
    for key in _RECORD_STRINGS:
        v = u.get(key)
        if v is not None and not isinstance(v, str):
            raise _record_fail(where, f"fiun.unlearned record {rid}: {key} must be a string")
    inferred = u.get("inferred")
    if inferred is not None and not isinstance(inferred, bool):
        raise _record_fail(where, f"fiun.unlearned record {rid}: inferred must be true or false")
    adopted = u.get("adopted_from")
    if adopted is not None:
        # `audit --fix --adopt`: the parent the weights look derived from, which the card does not declare
        bad = f"fiun.unlearned record {rid}: adopted_from must be {{repo: org/name, revision: <40 hex>, evidence: {{...}}}}"
        if not isinstance(adopted, dict) or not isinstance(adopted.get("revision"), str) \
                or not COMMIT_RE.match(adopted["revision"]) or not isinstance(adopted.get("repo"), str) \
                or not isinstance(adopted.get("evidence", {}), dict):
            raise _record_fail(where, bad)
        try:
            validate_repo_id(adopted["repo"])
        except FiunError:
            raise _record_fail(where, bad) from None
        if inferred is not True:
            raise _record_fail(where, f"fiun.unlearned record {rid}: a record with adopted_from needs inferred: true "
                                      "(the parent is inferred from the weights, not declared)")


def _copy(value: Any) -> Any:
    """A deep copy of plain data (dicts and lists), so that a record shares nothing mutable with its source."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


@dataclass(frozen=True)
class AdoptedFrom:
    """``adopted_from`` of a record written by ``audit --fix --adopt``: the parent the weights look derived from,
    which the card does not declare, at its pre-forget revision, with the fingerprint evidence."""

    repo: str
    revision: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplesFingerprint:
    """``samples`` of a sample-wise record: what was forgotten, never where a file lay (docs/card-schema.md)."""

    sha256: str
    count: int
    labels: Mapping[str, int] = field(default_factory=dict)  # samples per label name


# card key -> field name, in the order a forget writes them; the first ten are always written
_KEYS = ("request", "classes", "origins", "from_revision", "alpha", "lambda", "estimator", "reference", "sidecar",
         "at", "scope", "prototypes", "adopted_from", "inferred", "weights", "samples", "data")
_ALWAYS = _KEYS[:10]
_FIELD = {k: ("lam" if k == "lambda" else k) for k in _KEYS}


@dataclass(frozen=True)
class ForgetRecord:
    """One forget applied to this lineage, as its card records it (docs/card-schema.md). Immutable: lists are
    tuples, and the mappings (``adopted_from``, ``samples``, ``extra``) are copies the record does not change.

    ``ForgetRecord.from_dict(d).to_dict() == d``, keys in the same order, for every record the schema accepts."""

    request: str
    classes: tuple[str, ...] | None = None  # class-wise; None for a sample-wise forget
    origins: tuple[str, ...] | None = None  # "org/root@<40 hex>": each origin at the revision its FIM came from
    from_revision: str | None = None  # this repo's head before the forget
    alpha: float | None = None
    lam: float | None = None  # "lambda" in the card
    estimator: str | None = None
    reference: str | None = None  # what dampened rows shrink toward
    sidecar: Any = None  # "own", or "approximate: from org/a@<40 hex>[, ...]" (not checked by the schema)
    at: str | None = None
    scope: str | None = None  # "features" (docs/method.md section 11); absent for the default head scope
    prototypes: str | None = None  # with the features scope: "own", or "origin REPO" (whose prototypes were used)
    adopted_from: Mapping[str, Any] | None = None  # see :attr:`adopted`
    inferred: bool | None = None
    weights: Any = None  # "unchanged": republished with only the record (not checked by the schema)
    samples: Any = None  # see :attr:`samples_fingerprint` (not checked by the schema)
    data: str | None = None  # the data spec, only with `forget --record-spec`
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys, kept as they were
    # the card keys present, in their order (None: made here, written in the forget's order)
    keys: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------------------------------- the format
    @classmethod
    def from_dict(cls, u: Any, where: str = "") -> "ForgetRecord":
        """The record of card data ``u``, checked by :func:`check_record` (its :class:`RecordError`, same text)."""
        check_record(u, where)
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in u.items():
            if k in _FIELD:
                kw[_FIELD[k]] = tuple(v) if k in ("classes", "origins") and v is not None else _copy(v)
            else:
                extra[k] = _copy(v)
        return cls(**kw, extra=extra, keys=tuple(u))

    def _present(self) -> tuple[str, ...]:
        if self.keys is not None:
            return self.keys
        return tuple(k for k in _KEYS if k in _ALWAYS or getattr(self, _FIELD[k]) is not None) + tuple(self.extra)

    def to_dict(self) -> dict[str, Any]:
        """The card data: what :meth:`from_dict` was given (a copy), or, for a record made here, the forget's keys
        in the forget's order (the ten always, the others only when set), then ``extra``."""
        out: dict[str, Any] = {}
        for k in self._present():
            if k in _FIELD:
                v = getattr(self, _FIELD[k])
                out[k] = list(v) if k in ("classes", "origins") and v is not None else _copy(v)
            else:
                out[k] = _copy(self.extra[k])
        return out

    def has(self, key: str) -> bool:
        """Whether the card data holds ``key`` (a card key: ``lambda``, not ``lam``), even with a null value."""
        return key in self._present()

    # ------------------------------------------------------------------------------------- typed accessors
    @property
    def class_wise(self) -> bool:
        """A forget of classes (``classes`` a list), not of samples."""
        return self.classes is not None

    @property
    def adopted(self) -> AdoptedFrom | None:
        """The inferred parent of a record written by ``audit --fix --adopt`` (checked by the schema)."""
        a = self.adopted_from
        if a is None:
            return None
        return AdoptedFrom(str(a["repo"]), str(a["revision"]), dict(a.get("evidence") or {}))

    @property
    def is_inferred(self) -> bool:
        """``inferred: true``: the record's parent is inferred from the weights, not declared."""
        return self.inferred is True

    @property
    def own_sidecar(self) -> bool:
        """The forget used the repo's own sidecars (``sidecar: own``, or no ``sidecar`` key: records before it)."""
        return self.sidecar == OWN if self.has("sidecar") else True

    @property
    def weights_unchanged(self) -> bool:
        """Republished with only the record (no forgotten label here): same weights and sidecar blobs."""
        return self.weights == UNCHANGED

    @property
    def samples_fingerprint(self) -> SamplesFingerprint | None:
        """``samples`` of a sample-wise record, when it has the shape a forget writes (None otherwise)."""
        s = self.samples
        if not isinstance(s, dict) or not isinstance(s.get("sha256"), str) or isinstance(s.get("count"), bool) \
                or not isinstance(s.get("count"), int) or not isinstance(s.get("labels", {}), dict):
            return None
        return SamplesFingerprint(s["sha256"], s["count"], dict(s.get("labels") or {}))

    def origin_revision(self, origin: str) -> str | None:
        """The revision of ``origin`` this forget's unlearning FIM came from (``origins``' ``origin@REV``)."""
        for o in self.origins or ():
            repo, _, rev = o.rpartition("@")
            if repo == origin:
                return rev
        return None


def forget_records(data: Iterable[Any] | None, where: str = "") -> list[ForgetRecord]:
    """The records of a ``fiun.unlearned`` list (a card's, a lineage index entry's, a graph node's ``unlearned``);
    None or empty: none. Each is checked (:class:`RecordError`)."""
    return [ForgetRecord.from_dict(u, where) for u in data or ()]


__all__ = ["ForgetRecord", "AdoptedFrom", "SamplesFingerprint", "RecordError", "check_record", "forget_records",
           "OWN", "UNCHANGED"]
