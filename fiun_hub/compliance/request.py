"""Takedown requests: the YAML file a compliance team receives (who asked, why, when, by when, which models'
training data held what, and what must go), validated field by field (docs/takedowns.md, "The request file").
Every problem is one :class:`RequestError` naming the field."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from ..constants import LEDGER_REPO
from ..errors import BadInput, FiunError
from ..hub.ids import REQUEST_ID_RE, split_repo_rev

REQUEST_KEYS = ("id", "reason", "requested_by", "received", "deadline", "origins", "forget", "notes")
FORGET_KEYS = ("classes", "data", "alpha", "lambda")
MAX_REQUEST_BYTES = 1 << 20


class RequestError(BadInput):
    """A takedown request file that is malformed or contradicts the ledger."""


@dataclass
class TakedownRequest:
    """One validated takedown request. ``origins`` keep the ``org/name[@rev]`` form they were given in."""

    id: str
    reason: str
    requested_by: str
    received: str  # ISO date (or date-time)
    origins: list[str]
    classes: list[str] | None = None
    data: str | None = None
    deadline: str | None = None
    notes: str | None = None
    alpha: float | None = None
    lam: float | None = None
    text: str = field(default="", repr=False, compare=False)  # the file as received

    @property
    def origin_repos(self) -> list[str]:
        return [split_repo_rev(o)[0] for o in self.origins]

    def forget_text(self) -> str:
        return f"classes {', '.join(self.classes)}" if self.classes else f"samples of {self.data}"

    def to_dict(self) -> dict[str, Any]:
        forget: dict[str, Any] = {"classes": list(self.classes)} if self.classes else {"data": self.data}
        if self.alpha is not None:
            forget["alpha"] = self.alpha
        if self.lam is not None:
            forget["lambda"] = self.lam
        return {"id": self.id, "reason": self.reason, "requested_by": self.requested_by, "received": self.received,
                "deadline": self.deadline, "origins": list(self.origins), "forget": forget, "notes": self.notes}

    def fingerprint(self) -> str:
        """sha256 of the request's content (not of its formatting): the same request gives the same value."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any], text: str = "") -> "TakedownRequest":
        f = d.get("forget") or {}
        return cls(d["id"], d["reason"], d["requested_by"], d["received"], list(d["origins"]),
                   list(f["classes"]) if f.get("classes") else None, f.get("data"), d.get("deadline"),
                   d.get("notes"), f.get("alpha"), f.get("lambda"), text)


def _date(value: Any, key: str, where: str) -> str:
    """A YAML date, date-time or ISO string -> ISO text (date-times in UTC)."""
    if isinstance(value, _dt.datetime):
        value = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        try:
            return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, ValueError):
            raise RequestError(f"{where}: {key} {value.isoformat()} is outside the dates fiun-hub can record "
                               "(years 1 to 9999 in UTC)") from None
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
        try:
            return _date(_dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")), key, where)
        except ValueError:
            pass
    raise RequestError(f"{where}: {key} must be a date like 2026-11-20, got {value!r}")


def day(iso: str) -> _dt.date:
    """The day of an ISO date or date-time (a request's received / deadline, a ledger's completed_at)."""
    return _dt.date.fromisoformat(iso[:10])


@overload
def _text(d: dict, key: str, where: str, required: Literal[True] = ..., max_len: int = ...) -> str: ...
@overload
def _text(d: dict, key: str, where: str, required: bool, max_len: int = ...) -> str | None: ...
def _text(d: dict, key: str, where: str, required: bool = True, max_len: int = 10_000) -> str | None:
    value = d.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RequestError(f"{where}: {key} is required (a non-empty string)")
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RequestError(f"{where}: {key} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise RequestError(f"{where}: {key} is longer than {max_len} characters")
    return value.strip()


def _number(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RequestError(f"{where}: forget.{key} must be a positive number, got {value!r}")
    return float(value)


def parse_request(text: str | bytes, where: str = "request") -> TakedownRequest:
    """Validate a takedown request (YAML text). Every problem is a :class:`RequestError` naming the field.

    >>> r = parse_request("id: TKD-1\\nreason: erasure\\nrequested_by: dpo@example.org\\nreceived: 2026-11-20\\n"
    ...                   "origins: [acme/base]\\nforget: {classes: [3]}\\n")
    >>> r.id, r.origins, r.classes, r.received
    ('TKD-1', ['acme/base'], ['3'], '2026-11-20')
    """
    import yaml

    if isinstance(text, bytes):
        if len(text) > MAX_REQUEST_BYTES:
            raise RequestError(f"{where}: request file is larger than {MAX_REQUEST_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"{where}: request file is not UTF-8 text") from None
    if len(text) > MAX_REQUEST_BYTES:
        raise RequestError(f"{where}: request file is larger than {MAX_REQUEST_BYTES} bytes")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        # A request needs no YAML aliases; refused before anything is built, an alias bomb never expands.
        if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=loader)):
            raise RequestError(f"{where}: YAML aliases (*name) are not allowed in a request file")
        d = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RequestError(f"{where}: malformed YAML{at}: {problem}") from None
    except RecursionError:
        raise RequestError(f"{where}: YAML nested too deeply") from None
    except (ValueError, OverflowError, TypeError) as exc:  # an impossible date (2026-02-30), a 5,000-digit int
        raise RequestError(f"{where}: malformed YAML value: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(d, dict):
        raise RequestError(f"{where}: a request must be a YAML mapping with keys {', '.join(REQUEST_KEYS)}")
    unknown = [str(k) for k in d if k not in REQUEST_KEYS]
    if unknown:
        raise RequestError(f"{where}: unknown key(s) {', '.join(unknown)}; a request has {', '.join(REQUEST_KEYS)}")
    rid = d.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid) or ".." in rid:
        raise RequestError(f"{where}: id must be a string of letters, digits, '.', '_', '-' (at most 128, e.g. "
                           f"TKD-2026-001), got {rid!r}")
    reason = _text(d, "reason", where)
    by = _text(d, "requested_by", where, max_len=500)
    if d.get("received") is None:
        raise RequestError(f"{where}: received is required (the date the request arrived, e.g. 2026-11-20)")
    received = _date(d["received"], "received", where)
    deadline = _date(d["deadline"], "deadline", where) if d.get("deadline") is not None else None
    if deadline and day(deadline) < day(received):
        raise RequestError(f"{where}: deadline {deadline} is before received {received}")
    origins = d.get("origins")
    if isinstance(origins, str):
        origins = [origins]
    if not isinstance(origins, list) or not origins:
        raise RequestError(f"{where}: origins is required: a list of org/name[@revision] (the models whose "
                           "training data held what must go)")
    seen = set()
    for o in origins:
        if not isinstance(o, str):
            raise RequestError(f"{where}: each origin must be a string org/name[@revision], got {o!r}")
        try:
            repo, _ = split_repo_rev(o.strip())
        except BadInput as exc:
            raise RequestError(f"{where}: origins: {exc}") from None
        if repo == LEDGER_REPO:
            raise RequestError(f"{where}: origins: {LEDGER_REPO} is the takedown ledger, not a model")
        if repo in seen:
            raise RequestError(f"{where}: origins: {repo} is given twice")
        seen.add(repo)
    origins = [o.strip() for o in origins]
    forget = d.get("forget")
    if not isinstance(forget, dict):
        raise RequestError(f"{where}: forget is required: a mapping with classes: [A, B] or data: SPEC")
    unknown = [str(k) for k in forget if k not in FORGET_KEYS]
    if unknown:
        raise RequestError(f"{where}: forget: unknown key(s) {', '.join(unknown)}; use classes or data "
                           "(and optionally alpha, lambda)")
    if ("classes" in forget) == ("data" in forget):
        raise RequestError(f"{where}: forget needs exactly one of classes: [A, B] (class-wise) or data: SPEC "
                           "(sample-wise)")
    classes, data = None, None
    if "classes" in forget:
        raw = forget["classes"]
        if isinstance(raw, (str, int)) and not isinstance(raw, bool):
            raw = [c for c in str(raw).split(",")]
        if not isinstance(raw, list) or not raw or not all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                                           for c in raw):
            raise RequestError(f"{where}: forget.classes must be a non-empty list of label names")
        classes = list(dict.fromkeys(str(c).strip() for c in raw if str(c).strip()))
        if not classes:
            raise RequestError(f"{where}: forget.classes must be a non-empty list of label names")
    else:
        from ..data import parse_spec

        if not isinstance(forget["data"], str):
            raise RequestError(f"{where}: forget.data must be a data spec string (npz:PATH, folder:PATH, ...)")
        try:
            parse_spec(forget["data"])
        except FiunError as exc:
            raise RequestError(f"{where}: forget.data: {exc}") from None
        data = forget["data"]
    notes = d.get("notes")
    if notes is not None and not isinstance(notes, str):
        notes = json.dumps(notes, default=str) if isinstance(notes, (list, dict)) else str(notes)
    return TakedownRequest(rid, reason, by, received, origins, classes, data, deadline,
                           notes.strip() if isinstance(notes, str) else None,
                           _number(forget.get("alpha"), "alpha", where), _number(forget.get("lambda"), "lambda", where),
                           text)


def load_request(path: str | Path) -> TakedownRequest:
    """Read and validate a request file."""
    from ..inputs import read_regular_file

    path = Path(path)
    return parse_request(read_regular_file(path, MAX_REQUEST_BYTES, "request file", RequestError), where=str(path))


__all__ = ["RequestError", "TakedownRequest", "parse_request", "load_request", "day", "REQUEST_KEYS", "FORGET_KEYS",
           "MAX_REQUEST_BYTES"]
