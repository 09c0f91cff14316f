"""Compliance: takedown requests, their ledger inside the hub, and audits that prove them (docs/takedowns.md).

A *takedown request* is a YAML file a compliance team receives (who asked, why, when, by when, which models'
training data held what, and what must go). :func:`plan_takedown` validates it against the hub and works out
the affected set; :func:`run_takedown` carries it out with FIUn (:mod:`fiun_hub.unlearn`) and records the
request and its outcome (every repo, old and new revision, hash of the new weights, measured accuracies) in
the *ledger*: the repo ``fiun-hub/ledger`` of the same hub, one ``records/{id}.json`` and ``requests/{id}.yaml``
per request. The ledger record lands in the **same** publish as the forget's new revisions, so a takedown
lands whole or not at all; a second ledger commit then adds the new revision ids and the accuracies.

:func:`audit` recomputes each request's affected set from the lineage *now* and classifies every repo in it:

========================  ==============================================================================
status                    meaning
========================  ==============================================================================
``done``                  its head carries the request and its weights are the ones the ledger recorded
                          (or later ones the ledger also recorded, e.g. from another request)
``inherited``             its head does not carry the request, but it derives only from revisions that do
                          (a model derived after the takedown from a cleaned revision): nothing to forget
``pre-forget-pin``        **finding** (a): derived from a revision of an affected repo that predates the
                          takedown (the lineage pin shows it)
``derived-from-flagged``  **finding**: derived from a revision that lost the request's record
``unpinned-parent``       **finding**: derived from an affected repo without a pinned revision
``lost-record``           **finding** (b): the ledger recorded the forget here, but the head's card no longer
                          carries it (a later push dropped it)
``weights-changed``       **finding** (c): the head carries the request, but its weights changed after the
                          forget to ones the ledger never recorded
``unrecorded``            **finding**: the head's card claims the request but the ledger holds no entry of a
                          fiun-hub forget there (a card's record is a claim): a takedown or fix forgets it
``pending``               **finding** (in an audit) / to do (in a takedown): the request was never applied here
``forget-accuracy``       **finding** (with ``eval_data``): held-out forget accuracy above the threshold
========================  ==============================================================================

:func:`fix` applies the request to the flagged repos (new revisions, ledger updated): a repo derived from a
pre-takedown revision is dampened with the origin's *pre-forget* unlearning FIM, which
:func:`fiun_hub.unlearn.run_forget` takes from the origin's ``from_revision`` when the origin already carries the
request.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..constants import CARD_FILE, DEFAULT_AUTHOR, LEDGER_REPO, WEIGHTS_FILE
from ..errors import BadInput, FiunError
from ..hub.ids import REQUEST_ID_RE, split_repo_rev
from ..hub.local import Blob, LocalHub, RepoChange

LEDGER_TAG = "fiun-hub-ledger"
LEDGER_FORMAT = "fiun-ledger/1"
REQUEST_KEYS = ("id", "reason", "requested_by", "received", "deadline", "origins", "forget", "notes")
FORGET_KEYS = ("classes", "data", "alpha", "lambda")
MAX_REQUEST_BYTES = 1 << 20
DEFAULT_MAX_FORGET_ACC = 5.0  # percent; above it a class-wise forget is reported as not holding

#: statuses that are findings in an audit, and those that --fix (or a takedown re-run) repairs by forgetting
FINDINGS = ("pending", "pre-forget-pin", "derived-from-flagged", "unpinned-parent", "lost-record", "weights-changed",
            "unrecorded", "forget-accuracy", "origin-missing", "undeclared-derivative")
APPLY = ("pending", "pre-forget-pin", "derived-from-flagged", "unpinned-parent", "lost-record", "weights-changed",
         "unrecorded")


def ledger_proof(entry: Any) -> bool:
    """A ledger entry that proves a forget: written by fiun-hub's own forget (``action: forgot``) with the sha256
    of the weights it wrote. An entry that only ``recorded`` what a card claimed proves nothing."""
    return isinstance(entry, dict) and entry.get("action") == "forgot" and isinstance(entry.get("weights_sha256"), str)


class RequestError(BadInput):
    """A takedown request file that is malformed or contradicts the ledger."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------------ requests
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


def _day(iso: str) -> _dt.date:
    return _dt.date.fromisoformat(iso[:10])


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
    if deadline and _day(deadline) < _day(received):
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


# ------------------------------------------------------------------------------------------------ ledger
def ledger_exists(hub: LocalHub) -> bool:
    return hub.repo_exists(LEDGER_REPO)


def ledger_records(hub: LocalHub, revision: str | None = None) -> dict[str, dict]:
    """Every request's ledger record, by request id (empty when the hub has no ledger yet)."""
    if not ledger_exists(hub):
        return {}
    out = {}
    files = hub.list_files(LEDGER_REPO, revision)
    for path in sorted(files):
        if path.startswith("records/") and path.endswith(".json"):
            rid = path[len("records/"):-len(".json")]
            try:
                rec = json.loads(hub.read_file(LEDGER_REPO, path, revision))
            except (ValueError, UnicodeDecodeError):
                raise BadInput(f"ledger record {path} in {LEDGER_REPO} is not valid JSON; "
                               f"see `fiun-hub log {LEDGER_REPO}`") from None
            well_formed = isinstance(rec, dict) and rec.get("format") == LEDGER_FORMAT and isinstance(
                rec.get("repos"), dict) and isinstance(rec.get("request"), dict) and rec["request"].get("id") == rid
            if not well_formed:
                raise BadInput(f"ledger record {path} in {LEDGER_REPO} is not a {LEDGER_FORMAT} record")
            out[rid] = rec
    return out


def ledger_record(hub: LocalHub, request_id: str) -> dict | None:
    return ledger_records(hub).get(request_id)


def _ledger_card(records: dict[str, dict]) -> str:
    lines = ["---", "tags:", f"- {LEDGER_TAG}", "fiun:", f"  ledger: {LEDGER_FORMAT}", "---", "",
             "# Takedown ledger", "",
             "One record per takedown request: `requests/{id}.yaml` is the request as received, `records/{id}.json` "
             "what was done (every repo, old and new revision, sha256 of the new weights, accuracies). Written by "
             "`fiun-hub takedown` and `fiun-hub audit --fix`; its history is the audit trail (`fiun-hub log "
             f"{LEDGER_REPO}`). Do not edit by hand.", "",
             "| request | received | deadline | forget | origins | repos | completed |",
             "|---|---|---|---|---|---|---|"]
    for rid, rec in sorted(records.items()):
        r = rec["request"]
        f = r["forget"]
        what = "classes " + ", ".join(f["classes"]) if f.get("classes") else f"samples of {f.get('data')}"
        lines.append(f"| {rid} | {r['received']} | {r.get('deadline') or '-'} | {what} | {', '.join(r['origins'])} "
                     f"| {len(rec['repos'])} | {rec.get('completed_at') or '-'} |")
    return "\n".join(lines) + "\n"


def _ledger_change(hub: LocalHub, updates: dict[str, dict], texts: dict[str, str], message: str) -> RepoChange:
    """One ledger commit writing ``updates`` (request id -> record) and the request files in ``texts``."""
    parent = hub.head(LEDGER_REPO) if ledger_exists(hub) else ""
    records = {**ledger_records(hub, parent or None), **updates}
    files: dict[str, bytes] = {f"records/{rid}.json": (json.dumps(rec, indent=2, sort_keys=True) + "\n").encode()
                               for rid, rec in updates.items()}
    files.update({f"requests/{rid}.yaml": text.encode() for rid, text in texts.items()})
    files[CARD_FILE] = _ledger_card(records).encode()
    return RepoChange(LEDGER_REPO, files, message, parent_commit=parent)


# ------------------------------------------------------------------------------------------------ classification
def _weights_of(change: RepoChange) -> str | None:
    content = change.files.get(WEIGHTS_FILE)
    if isinstance(content, Blob):
        return content.sha256
    if isinstance(content, (bytes, bytearray)):
        return hashlib.sha256(content).hexdigest()
    if isinstance(content, Path):
        from ..hub.local import sha256_file

        return sha256_file(content)
    return None


class _Lineage:
    """Cached reads of cards and histories for one classification."""

    def __init__(self, hub: LocalHub):
        self.hub = hub
        self._meta: dict[tuple[str, str], Any] = {}
        self._hist: dict[tuple[str, str], list] = {}

    def meta(self, repo: str, rev: str):
        from ..repo import read_meta

        key = (repo, rev)
        if key not in self._meta:
            try:
                self._meta[key] = read_meta(self.hub, repo, rev)
            except BadInput as exc:
                self._meta[key] = exc
        return self._meta[key]

    def carries(self, repo: str, rev: str, request_id: str) -> bool:
        m = self.meta(repo, rev)
        return not isinstance(m, Exception) and any(u.get("request") == request_id for u in m.unlearned)

    def record(self, repo: str, rev: str, request_id: str) -> dict | None:
        m = self.meta(repo, rev)
        if isinstance(m, Exception):
            return None
        return next((u for u in m.unlearned if u.get("request") == request_id), None)

    def history(self, repo: str, rev: str) -> list:
        key = (repo, rev)
        if key not in self._hist:
            try:
                self._hist[key] = self.hub.history(repo, rev)
            except BadInput:
                self._hist[key] = []
        return self._hist[key]

    def history_ids(self, repo: str, rev: str) -> list[str]:
        return [c.id for c in self.history(repo, rev)]


@dataclass
class RepoState:
    """Where one repo of a request's affected set stands."""

    repo: str
    depth: int
    status: str
    head: str
    weights_sha256: str | None
    message: str = ""
    ledger: dict | None = None  # the ledger's entry for this repo, if any
    eval: dict = field(default_factory=dict)  # forget_acc, retain_acc (now)

    @property
    def finding(self) -> bool:
        return self.status in FINDINGS

    def to_dict(self) -> dict[str, Any]:
        led = self.ledger or {}
        return {"repo": self.repo, "depth": self.depth, "status": self.status, "finding": self.finding,
                "message": self.message, "head": self.head, "weights_sha256": self.weights_sha256,
                "from": led.get("from"), "to": led.get("to"), "recorded_weights_sha256": led.get("weights_sha256"),
                "at": led.get("at"), "sidecar": led.get("sidecar"), "forget_acc_before": led.get("forget_acc_before"),
                "retain_acc_before": led.get("retain_acc_before"), "forget_acc_recorded": led.get("forget_acc"),
                "retain_acc_recorded": led.get("retain_acc"), "adopted_from": led.get("adopted_from"),
                **{k: v for k, v in self.eval.items()}}


def _find_to(lin: _Lineage, repo: str, head: str, entry: dict, request_id: str) -> str | None:
    """The commit a ledger entry's forget created: recorded, else the first commit after ``from`` on the head's
    line that carries the request (a ledger whose second commit was lost to a crash)."""
    if entry.get("to"):
        return entry["to"]
    hist = lin.history(repo, head)
    for older, newer in zip(hist[1:], hist[:-1]):
        if older.id == entry.get("from") and lin.carries(repo, newer.id, request_id):
            return newer.id
    return None


def adopted_entries(record: dict | None, g=None) -> dict[str, dict]:
    """repo -> ``adopted_from`` (``{repo, revision, evidence}``) of the request's ledger entries that adopted an
    undeclared derivative (``audit --fix --adopt``), for repos in the lineage ``g`` (all when None)."""
    out = {}
    for r, e in ((record or {}).get("repos") or {}).items():
        a = e.get("adopted_from") if ledger_proof(e) else None
        if isinstance(a, dict) and isinstance(a.get("repo"), str) and isinstance(a.get("revision"), str) and (
                g is None or (r in g and not g.nodes[r].get("missing"))):
            out[r] = a
    return out


def classify(hub: LocalHub, request: TakedownRequest, record: dict | None, all_records: dict[str, dict],
             g=None, lin: _Lineage | None = None) -> tuple[list[RepoState], list[dict]]:
    """Every repo of the request's affected set *now*, with its status (module docstring), and the problems that
    concern the request as a whole (an origin missing from the hub)."""
    from ..lineage import affected, resolve

    g = g if g is not None else resolve(hub)
    lin = lin or _Lineage(hub)
    rid = request.id
    origins = request.origin_repos
    missing = [o for o in origins if o not in g or g.nodes[o].get("missing")]
    problems = [{"request": rid, "repo": o, "kind": "origin-missing",
                 "message": f"origin {o} of request {rid} is not in the hub"} for o in missing]
    present = [o for o in origins if o not in missing]
    depths = affected(g, present) if present else {}
    # Cards' records are claims: only the ledger's entries of fiun-hub's own forgets (the weights hash it wrote)
    # prove that a repo carried out the request (ledger_proof).
    ledger_repos = {r: e for r, e in ((record or {}).get("repos") or {}).items() if ledger_proof(e)}
    # Undeclared derivatives adopted by `audit --fix --adopt` belong to the affected set (with what derives from
    # them) though no card links them to the origins: checked like any affected repo from then on.
    adopted = adopted_entries(record, g)
    for repo in sorted(adopted, key=lambda r: depths.get(adopted[r]["repo"], 0)):
        if repo not in depths:
            base = depths.get(adopted[repo]["repo"], 0) + 1
            for r, d in affected(g, [repo]).items():
                depths[r] = min(depths.get(r, base + d), base + d)
    heads = {r: g.nodes[r]["head"] for r in depths}
    applied = {r for r in depths if r in ledger_repos or lin.carries(r, heads[r], rid)}
    known_weights: dict[str, set[str]] = {}
    for rec in all_records.values():
        for r, e in (rec.get("repos") or {}).items():
            if ledger_proof(e):
                known_weights.setdefault(r, set()).add(e.get("weights_sha256"))
        for ev in rec.get("events") or []:
            for r, e in (ev.get("repos") or {}).items() if isinstance(ev, dict) else ():
                if ledger_proof(e):
                    known_weights.setdefault(r, set()).add(e.get("weights_sha256"))

    def proven(repo: str, rev: str) -> bool:
        """``repo@rev`` carries the request and the ledger proves it: its weights are ones fiun-hub's forget of
        the request wrote there (a card's record alone is a claim)."""
        entry = ledger_repos.get(repo)
        if entry is None or not lin.carries(repo, rev, rid):
            return False
        info = next((c for c in lin.history(repo, rev) if c.id == rev), None)
        return info is not None and info.files.get(WEIGHTS_FILE) in known_weights.get(repo, set())

    def first_from(repo: str) -> str | None:
        if repo in ledger_repos:
            return ledger_repos[repo].get("first_from") or ledger_repos[repo].get("from")
        rec = lin.record(repo, heads[repo], rid)
        return rec.get("from_revision") if rec else None

    def predates(repo: str, rev: str) -> bool:
        f = first_from(repo)
        return f is None or rev in set(lin.history_ids(repo, f))

    memo: dict[tuple[str, str], tuple[list[tuple[str, str]], str] | None] = {}

    def dirt(repo: str, rev: str, stack: frozenset = frozenset()) -> tuple[list[tuple[str, str]], str] | None:
        """None if ``repo@rev`` holds nothing the request removes; else (the chain of pins down to the cause,
        why): ``origin`` / ``predates`` (a revision from before the forget), ``lost`` (a revision after the
        forget without its record), ``unpinned``, ``card``."""
        key = (repo, rev)
        if key in memo:
            return memo[key]
        if key in stack:  # a cycle: lineage --check reports it
            return None
        meta = lin.meta(repo, rev)
        out: tuple[list[tuple[str, str]], str] | None
        if isinstance(meta, Exception):
            out = ([(repo, rev)], "card")
        elif proven(repo, rev):
            out = None
        elif repo in applied and not predates(repo, rev):
            out = ([(repo, rev)], "lost")
        elif repo in origins or repo in adopted:  # (an adopted repo's revisions from before its forget)
            out = ([(repo, rev)], "origin")
        else:
            out = None
            for p in meta.parents:
                if p.repo not in depths:
                    continue
                if not p.revision:
                    out = ([(p.repo, "")], "unpinned")
                    break
                d = dirt(p.repo, p.revision, stack | {key})
                if d is not None:
                    out = ([(p.repo, p.revision)] + d[0], d[1])
                    break
        memo[key] = out
        return out

    states = []
    for repo in sorted(depths, key=lambda r: (depths[r], r)):
        head = heads[repo]
        weights = hub.list_files(repo, head).get(WEIGHTS_FILE)
        entry = ledger_repos.get(repo)
        st = RepoState(repo, depths[repo], "done", head, weights, ledger=entry)
        if lin.carries(repo, head, rid):
            if entry is None:
                st.status = "unrecorded"
                st.message = (f"{repo}: its card claims request {rid} but the ledger does not prove it (no forget "
                              "of it by `fiun-hub takedown`); a takedown or --fix forgets it")
            else:
                to = _find_to(lin, repo, head, entry, rid)
                hist = lin.history(repo, head)
                ids = [c.id for c in hist]
                if to is None or to not in ids:
                    st.status = "weights-changed"
                    st.message = (f"{repo}: its head does not descend from the revision the ledger recorded for "
                                  f"request {rid} ({(to or '?')[:12]})")
                elif hist[ids.index(to)].files.get(WEIGHTS_FILE) != entry.get("weights_sha256"):
                    st.status = "weights-changed"
                    st.message = f"{repo}@{to[:12]}: weights differ from the sha256 the ledger recorded"
                else:
                    ok = known_weights.get(repo, set())
                    for c, parent in zip(hist[:ids.index(to)], hist[1:ids.index(to) + 1]):
                        w = c.files.get(WEIGHTS_FILE)
                        if w != parent.files.get(WEIGHTS_FILE) and w not in ok:
                            st.status = "weights-changed"
                            st.message = (f"{repo}: weights changed at {c.id[:12]} ({c.message[:60]!r}) after the "
                                          f"forget of request {rid}, to weights the ledger never recorded")
                            break
        elif entry is not None:
            st.status = "lost-record"
            st.message = (f"{repo}: the ledger recorded request {rid} at {(entry.get('to') or '?')[:12]}, but its "
                          f"head {head[:12]} no longer carries it")
        else:
            d = dirt(repo, head)
            if d is None:
                st.status = "inherited"
                pins = [f"{p.repo}@{p.revision[:12]}" for p in lin.meta(repo, head).parents if p.repo in depths]
                st.message = f"derived after the takedown from {', '.join(pins)}, which carry request {rid}"
            else:
                chain, why = d
                first, cause = chain[0], chain[-1]
                via = f" (through {cause[0]}@{cause[1][:12]})" if len(chain) > 1 else ""
                if record is None or repo in origins and len(chain) == 1:
                    st.status = "pending"
                    st.message = f"{repo}: request {rid} has not been applied here"
                elif why == "unpinned":
                    st.status = "unpinned-parent"
                    st.message = f"{repo}: derived from {first[0]} without a pinned revision; cannot prove it clean"
                elif why == "lost":
                    st.status = "derived-from-flagged"
                    st.message = (f"{repo}: derived from {first[0]}@{first[1][:12]}, which does not carry request "
                                  f"{rid}{via}")
                elif why == "card":
                    st.status = "pre-forget-pin"
                    st.message = f"{repo}: derived from {first[0]}@{first[1][:12]}, whose card cannot be read"
                else:
                    st.status = "pre-forget-pin"
                    st.message = (f"{repo}: derived from {first[0]}@{first[1][:12]}, a revision from before "
                                  f"request {rid} that still holds the forgotten data{via}")
        states.append(st)
    return states, problems


# ------------------------------------------------------------------------------------------------ evaluation
_DATA_CACHE: dict[tuple, Any] = {}


def _dataset(spec: str, config) -> Any:
    """``spec`` fed with a model's own preprocessing; the last few are kept, since every repo of a request is
    measured on it."""
    from ..data import load_for_model

    key = (spec, config.preprocessing)
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) >= 4:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = load_for_model(spec, config)
    return _DATA_CACHE[key]


def _measure(hub: LocalHub, request: TakedownRequest, repo: str, revision: str, eval_data: str) -> dict[str, Any]:
    """Held-out forget / retain accuracy (class-wise: on the request's classes the model has, and on its other
    classes) or accuracy on the forget samples and on ``eval_data`` (sample-wise) of ``repo@revision``, in
    percent; ``eval_error`` instead when the data does not fit the model."""
    from ..evaluate import accuracy, forget_retain_accuracy
    from ..models import load_model

    try:
        model, config, _ = load_model(hub, repo, revision)
        held_out = _dataset(eval_data, config)
        if request.classes:
            forget = [c for c in request.classes if c in config.labels]
            f, r = forget_retain_accuracy(model, config.labels, held_out, forget)
            if not forget:
                return {"forget_acc": None, "retain_acc": r}
            return {"forget_acc": f, "retain_acc": r}
        known = held_out.to_label_space(config.labels)
        on_forget = _dataset(request.data, config).to_label_space(config.labels)
        if len(known) == 0 or len(on_forget) == 0:
            raise BadInput(f"{repo}: {eval_data if len(known) == 0 else request.data} holds no sample of its classes")
        return {"forget_acc": accuracy(model, on_forget), "retain_acc": accuracy(model, known)}
    except FiunError as exc:
        return {"forget_acc": None, "retain_acc": None, "eval_error": str(exc).splitlines()[0][:300]}


def _check_executor(executor: str, workers: int) -> None:
    """Bad --executor / --workers, or Ray missing, is bad input before anything runs (one line saying how to
    install Ray)."""
    from ..executors import check_executor, import_ray

    check_executor(executor, workers)
    if executor == "ray":
        import_ray()


def _check_eval_data(spec: str | None) -> None:
    if spec is not None:
        from ..data import parse_spec

        parse_spec(spec)


# ------------------------------------------------------------------------------------------------ applying
@dataclass
class TakedownPlan:
    """What a takedown (or a fix) would do: the FIUn plan restricted to ``targets`` and the repos it only records."""

    request: TakedownRequest
    plan: Any  # fiun_hub.unlearn.Plan, with every non-target marked done
    states: list[RepoState]
    targets: list[str]  # repos that get a new, unlearned revision
    record_only: list[str]  # repos that already carry the request and only enter the ledger
    record: dict | None  # the request's ledger record before this run
    problems: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # target -> why it cannot be applied
    undeclared: list[dict] = field(default_factory=list)  # findings undeclared-derivative (not forgotten)

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "request_id": self.request.id, "undeclared": self.undeclared,
                "affected": [s.to_dict() for s in self.states], "targets": self.targets,
                "record_only": self.record_only, "in_ledger": self.record is not None, "problems": self.problems,
                "blocked": self.blocked, "plan": self.plan.to_dict() if self.plan is not None else None,
                "noop": not self.targets and not self.record_only}


def _origin_pins(hub: LocalHub, request: TakedownRequest) -> None:
    """An ``org/name@rev`` origin must name a revision on the line of the origin's head."""
    for spec in request.origins:
        repo, rev = split_repo_rev(spec)
        if not hub.repo_exists(repo):
            raise RequestError(f"request {request.id}: origin {repo} is not in the hub")
        if rev:
            cid = hub.resolve(repo, rev)
            if cid not in {c.id for c in hub.history(repo)}:
                raise RequestError(f"request {request.id}: origin {spec} is not in the history of {repo}'s head; "
                                   "the forget applies to the head and everything derived from it")


def _restrict(hub: LocalHub, request: TakedownRequest, plan, apply: Iterable[str]) -> tuple[Any, dict[str, str]]:
    """The FIUn plan with only ``apply`` left to do (every other node marked done and its problems dropped),
    and the targets that cannot be applied, with why."""
    from ..constants import CONFIG_FILE
    from ..fallback import resolve_sidecars
    from ..models import parse_config
    from ..sidecars import read_at

    apply = set(apply)
    nodes, blocked = [], {}
    for n in plan.nodes:
        if n.repo in apply:
            problems = list(n.problems)
            if n.done:  # it carries the request but must be redone (weights changed): check what plan skipped
                try:
                    info = hub.commit_info(n.repo, n.head)
                    config = parse_config(read_at(hub, n.repo, info, CONFIG_FILE), n.repo)
                    sc, choice = resolve_sidecars(hub, n.repo, info, n.labels or config.labels, config.classifier)
                    n = dataclasses.replace(n, sidecar_used=choice.describe())
                    plan._loaded[n.repo] = (config, sc, info)
                    if n.repo in plan.origins and plan.classes is not None and \
                            not any(sc.counts.get(c, 0) > 0 for c in n.forget_here):
                        problems.append(f"{n.repo}: its sidecar at {n.head[:12]} has no per-class FIM for "
                                        f"{', '.join(plan.classes)} (stripped by the earlier forget); recompute it "
                                        f"with `fiun-hub fim {n.repo} --data SPEC` on data holding them")
                except FiunError as exc:
                    problems.append(str(exc))
            if problems:
                blocked[n.repo] = problems[0]
                nodes.append(dataclasses.replace(n, done=True, problems=[]))
            else:
                nodes.append(dataclasses.replace(n, done=False, problems=[]))
        else:
            nodes.append(dataclasses.replace(n, done=True, problems=[]))
    # An origin that must be redone but cannot be blocks the whole request: its unlearning FIM is the source.
    for o in plan.origins:
        node = next((n for n in plan.nodes if n.repo == o), None)
        if o in blocked or (node is not None and not node.done and o not in apply):
            raise BadInput(blocked.get(o) or f"origin {o} does not carry request {request.id} and is not being "
                                              "forgotten; cannot compute its unlearning FIM")
    return dataclasses.replace(plan, nodes=nodes), blocked


def _add_adopted(hub: LocalHub, plan, g, repos: Iterable[str], adoptions: dict[str, dict],
                 depths: dict[str, int]) -> dict[str, str]:
    """Add to ``plan`` (to do) a node for each repo of ``repos`` that the cards do not link to the origins: an
    undeclared derivative adopted with ``adoptions[repo]`` (``{repo, revision, evidence}`` of its inferred
    parent, recorded as ``adopted_from`` in its forget record), or a declared descendant of one. Its sources are
    the origins its inferred parent merges. Returns the repos that cannot be forgotten, with why (their nodes
    stay in the plan, marked done)."""
    from ..unlearn import adopt_node

    in_plan = {n.repo: n for n in plan.nodes}

    def sources_of(repo: str, seen: frozenset = frozenset()) -> set[str]:
        if repo in in_plan and in_plan[repo].adopted_from is None:
            return set(in_plan[repo].sources)
        if repo in seen or repo not in g:
            return set()
        seen = seen | {repo}
        if repo in adoptions:
            return sources_of(adoptions[repo]["repo"], seen)
        return set().union(*(sources_of(p, seen) for p in g.predecessors(repo)))

    blocked = {}
    for repo in repos:
        if repo in in_plan:
            continue
        sources = sorted(sources_of(repo))
        node = adopt_node(hub, plan, g, repo, sources, adoptions.get(repo), depths.get(repo, 1), adoptions)
        in_plan[repo] = node
        if not sources:
            node.problems.insert(0, f"{repo}: none of the origins {', '.join(plan.origins)} is among the inferred "
                                    "or declared ancestors it derives from")
        if node.problems:
            blocked[repo] = node.problems[0]
            node.done, node.problems = True, []
    return blocked


def plan_takedown(hub: LocalHub, request: TakedownRequest) -> TakedownPlan:
    """Validate ``request`` against the hub and the ledger and work out what a takedown does. Changes nothing.

    A request id already in the ledger must have the same content (a re-run then applies it to what was derived
    since from pre-takedown revisions, and is a no-op when nothing was)."""
    from ..unlearn import plan_forget

    records = ledger_records(hub)
    record = records.get(request.id)
    if record is not None and record.get("request_sha256") != request.fingerprint():
        raise RequestError(f"request {request.id} is already in the ledger with different content (received "
                           f"{record['request'].get('received')}); give a new request a new id")
    _origin_pins(hub, request)
    plan = plan_forget(hub, request.origin_repos, request.classes, request.data, request.id,
                       request.alpha, request.lam)  # None: the kind's default
    states, _ = classify(hub, request, record, records)
    # A repo whose card claims the request without the ledger's proof ("unrecorded") is forgotten, not recorded.
    targets = [s.repo for s in states if s.status in ("pending", "pre-forget-pin", "derived-from-flagged",
                                                      "unpinned-parent", "lost-record", "unrecorded")]
    record_only: list[str] = []
    by_repo = {n.repo: n for n in plan.nodes}
    problems = [p for r in targets if r in by_repo for p in by_repo[r].problems]
    restricted = plan
    if not problems:
        restricted, blocked = _restrict(hub, request, plan, [r for r in targets if r in by_repo])
        # an adopted undeclared derivative (or a declared descendant of one) to redo: not in the cards' lineage
        from ..lineage import resolve

        extra = [r for r in targets if r not in by_repo]
        if extra:
            blocked.update(_add_adopted(hub, restricted, resolve(hub), extra, adopted_entries(record),
                                        {s.repo: s.depth for s in states}))
        problems = list(blocked.values())
    return TakedownPlan(request, restricted, states, targets, record_only, record, problems,
                        undeclared=_undeclared(hub, request.id, states, _Lineage(hub)))


def _origins_used(hub: LocalHub, plan, lin: _Lineage) -> list[str]:
    """Each origin with the revision whose sidecar gives its unlearning FIM (the pre-forget one when done)."""
    out = []
    for o in plan.origins:
        node = next(n for n in plan.nodes if n.repo == o)
        rec = lin.record(o, node.head, plan.request_id) if node.done else None
        out.append(f"{o}@{(rec or {}).get('from_revision') or node.head}")
    return out


def _new_record(request: TakedownRequest) -> dict:
    return {"format": LEDGER_FORMAT, "request": request.to_dict(), "request_file": f"requests/{request.id}.yaml",
            "request_sha256": request.fingerprint(), "completed_at": None, "events": [], "repos": {}}


def _apply(hub: LocalHub, tp: TakedownPlan, kind: str, *, eval_data: str | None, workers: int,
           progress: Callable[[str], None] | None, findings: list[dict] | None = None, executor: str = "local",
           ray_address: str | None = None, purge: bool = True, hold_reason: str | None = None) -> dict[str, Any]:
    """Forget ``tp.targets`` (those not blocked) and record them and ``tp.record_only`` in the ledger: the forget's
    revisions and the ledger record in one publish, then a ledger commit with the new revisions and accuracies.
    ``workers``, ``executor``, ``ray_address``: where the per-repo work runs (:func:`fiun_hub.unlearn.run_forget`);
    a failed task publishes nothing, ledger included."""
    from ..unlearn import run_forget

    request, plan = tp.request, tp.plan
    lin = _Lineage(hub)
    todo = [n for n in plan.nodes if not n.done]
    before = {}
    if eval_data:
        for n in todo:
            before[n.repo] = _measure(hub, request, n.repo, n.head, eval_data)
    at = _now()
    record = json.loads(json.dumps(tp.record)) if tp.record is not None else _new_record(request)
    event: dict[str, Any] = {"kind": kind, "at": at, "author": DEFAULT_AUTHOR, "origins": _origins_used(hub, plan, lin),
                             "eval_data": eval_data, "repos": {}, "blocked": dict(tp.blocked)}
    if findings is not None:
        event["findings"] = findings
    heads = {s.repo: s.head for s in tp.states}
    for repo in tp.record_only:
        rec = lin.record(repo, heads[repo], request.id) or {}
        event["repos"][repo] = {"action": "recorded", "from": rec.get("from_revision"), "to": heads[repo],
                                "weights_sha256": hub.list_files(repo, heads[repo]).get(WEIGHTS_FILE)}
    texts = {} if tp.record is not None else {request.id: request.text or _yaml_of(request)}

    used = {n.repo: n.sidecar_used for n in plan.nodes}
    adopted = {n.repo: n.adopted_from for n in plan.nodes if n.adopted_from is not None}

    def build(changes: list[RepoChange]) -> RepoChange:
        for ch in changes:
            event["repos"][ch.repo] = {"action": "forgot", "from": ch.parent_commit, "to": None,
                                       "sidecar": used.get(ch.repo, "own"),
                                       **({"adopted_from": adopted[ch.repo]} if ch.repo in adopted else {}),
                                       "weights_sha256": _weights_of(ch), **{f"{k}_before": v for k, v in
                                                                              before.get(ch.repo, {}).items()}}
        return _ledger_change(hub, {request.id: _with_event(record, event)}, texts,
                              f"{kind.capitalize()} {request.id}: forget {request.forget_text()} at "
                              f"{', '.join(request.origin_repos)} ({len(changes)} repo(s))")

    records = ledger_records(hub)

    def purge_of(changes: list[RepoChange]) -> list[dict] | None:
        from .. import purge as P

        starts = {ch.repo: ch.parent_commit for ch in changes if ch.repo != LEDGER_REPO}
        if hold_reason is not None:
            event["hold"] = {"reason": hold_reason, "at": at, "revisions": P.held_revisions(hub, request.id, starts)}
            return None
        if not purge:
            return None
        entries = P.purge_entries(hub, request.id, starts, at,
                                  held=P.holds(records) | P.kept_revisions(records, request.id),
                                  fim_keep=P.fim_sources(records, event["origins"]))
        event["purge"] = P.summary(hub, entries, P.change_live(hub, changes))
        return entries

    t0 = time.perf_counter()
    result = None
    if todo:
        # the ledger's record and the purge's tombstones land in the forget's own publish: all or nothing
        result = run_forget(hub, plan, workers=workers, progress=progress, executor=executor,
                            ray_address=ray_address, extra_changes=lambda changes: [build(changes)],
                            purge=purge_of)
        for repo, rv in result.revisions.items():
            event["repos"][repo]["to"] = rv["to"]
            event["repos"][repo].update({k: v for k, v in result.stats[repo].items() if k in ("changed", "params")})
    elif event["repos"]:
        hub.publish([_ledger_change(hub, {request.id: _with_event(record, event)}, texts,
                                    f"Record {request.id} for {len(event['repos'])} repo(s) that already carry it")])
    else:
        return {"noop": True, "revisions": {}, "stats": {}, "event": None, "seconds": 0.0, "forget_seconds": {},
                "ledger_revision": hub.head(LEDGER_REPO) if ledger_exists(hub) else None}
    if eval_data:
        for repo, e in event["repos"].items():
            e.update(_measure(hub, request, repo, e["to"], eval_data))
    final = _with_event(record, event)
    ledger_rev = hub.publish([_ledger_change(hub, {request.id: final}, {},
                                             f"{kind.capitalize()} {request.id}: new revisions"
                                             + (f" and accuracies on {eval_data}" if eval_data else ""))])[LEDGER_REPO]
    return {"noop": False, "revisions": result.revisions if result else {}, "stats": result.stats if result else {},
            "event": event, "ledger_revision": ledger_rev, "seconds": time.perf_counter() - t0,
            "forget_seconds": result.seconds if result else {}}


def _with_event(record: dict, event: dict) -> dict:
    """``record`` with ``event`` appended (replacing an earlier copy of the same event) and its repos updated."""
    rec = json.loads(json.dumps(record))
    rec["events"] = [e for e in rec["events"] if e.get("at") != event["at"] or e.get("kind") != event["kind"]]
    rec["events"].append(json.loads(json.dumps(event)))
    index = len(rec["events"]) - 1
    for repo, e in event["repos"].items():
        prev = rec["repos"].get(repo) or {}
        rec["repos"][repo] = {**{k: v for k, v in e.items() if k != "action"}, "at": event["at"], "event": index,
                              "action": e.get("action"), "first_from": prev.get("first_from") or prev.get("from")
                              or e.get("from")}
    if rec.get("completed_at") is None and event["repos"]:
        rec["completed_at"] = event["at"]
    return rec


def _yaml_of(request: TakedownRequest) -> str:
    import yaml

    return yaml.safe_dump(request.to_dict(), sort_keys=False)


def run_takedown(hub: LocalHub, tp: TakedownPlan, *, eval_data: str | None = None, workers: int = 1,
                 executor: str = "local", ray_address: str | None = None,
                 progress: Callable[[str], None] | None = None, purge: bool = True,
                 hold_reason: str | None = None) -> dict[str, Any]:
    """Carry out a :func:`plan_takedown`: forget every target and record the request and its outcome in the ledger.
    By default the pre-forget revisions' weights and sidecars are purged in the same publish (docs/takedowns.md,
    "Purge"); ``hold_reason`` keeps them as a recorded legal hold instead. Returns the outcome and the report data
    (``report``) of the request's state afterwards."""
    if hold_reason is not None and not hold_reason.strip():
        raise BadInput("--keep-history needs --reason TEXT: a legal hold is recorded with why")
    if tp.problems:
        raise BadInput(tp.problems[0] + (f" (and {len(tp.problems) - 1} more problem(s); see --dry-run)"
                                         if len(tp.problems) > 1 else ""))
    _check_eval_data(eval_data)
    _check_executor(executor, workers)
    out = _apply(hub, tp, "takedown", eval_data=eval_data, workers=workers, progress=progress, executor=executor,
                 ray_address=ray_address, purge=purge, hold_reason=hold_reason)
    report = audit(hub, tp.request.id, kind="takedown")
    return {"request_id": tp.request.id, **out, "report": report}


# ------------------------------------------------------------------------------------------------ audit
def _lineage_data(g, states: list[RepoState]) -> dict[str, Any]:
    """The request's part of the DAG for the report picture: affected repos and their direct parents."""
    status = {s.repo: s.status for s in states}
    keep = set(status)
    for r in list(status):
        keep |= {p for p in g.predecessors(r) if p != LEDGER_REPO}
    nodes = [{"id": n, "head": g.nodes[n].get("head"), "status": status.get(n, "context"),
              "missing": bool(g.nodes[n].get("missing"))} for n in sorted(keep)]
    edges = [{"source": u, "target": v, "revision": g.edges[u, v].get("revision") or "",
              "relation": g.edges[u, v].get("relation")} for u, v in sorted(g.edges) if u in keep and v in keep]
    # the parent an `audit --fix --adopt` inferred from the weights (no card declares it)
    edges += [{"source": a["repo"], "target": s.repo, "revision": a.get("revision") or "", "relation": "inferred"}
              for s in states for a in [(s.ledger or {}).get("adopted_from")]
              if isinstance(a, dict) and a.get("repo") in keep and not g.has_edge(a["repo"], s.repo)]
    return {"nodes": nodes, "edges": edges}


def _entry(g, rec: dict, states: list[RepoState], problems: list[dict]) -> dict[str, Any]:
    """One request's part of a report: its ledger facts, one row per affected repo, findings, lineage."""
    rid = rec["request"]["id"]
    findings = problems + [{"request": rid, "repo": s.repo, "kind": s.status, "message": s.message}
                           for s in states if s.finding]
    # Repos the ledger recorded that are no longer in the affected set (the lineage was rewired): shown, not
    # flagged, since nothing derives them from the origins any more.
    gone = sorted(set(rec["repos"]) - {s.repo for s in states})
    completed = rec.get("completed_at")
    deadline = rec["request"].get("deadline")
    return {
        "request": rec["request"], "request_sha256": rec.get("request_sha256"),
        "ok": not findings, "findings": findings, "completed_at": completed,
        "deadline_met": (_day(completed) <= _day(deadline)) if completed and deadline else None,
        "events": [{**{k: e.get(k) for k in ("kind", "at", "author", "eval_data")}, "repos": sorted(e["repos"])}
                   for e in rec.get("events", [])],
        "repos": [s.to_dict() for s in states],
        "no_longer_affected": [{"repo": r, **rec["repos"][r]} for r in gone],
        "lineage": _lineage_data(g, states),
    }


def _undeclared(hub: LocalHub, rid: str, states: list[RepoState], lin: _Lineage) -> list[dict]:
    """Findings ``undeclared-derivative``: heads outside the affected set whose weights look derived from an
    affected repo's pre-forget revision (fiun_hub.fingerprint)."""
    from ..fingerprint import undeclared_findings

    pre = {}
    for s in states:
        led = s.ledger or {}
        rec = lin.record(s.repo, s.head, rid) or {}
        pre[s.repo] = led.get("first_from") or led.get("from") or rec.get("from_revision") or s.head
    return undeclared_findings(hub, rid, pre, {s.repo for s in states},
                               carries=lambda repo, head: lin.carries(repo, head, rid))


def plan_report(hub: LocalHub, tp: TakedownPlan) -> dict[str, Any]:
    """Report data (as :func:`audit` gives) for a takedown that has not run: what it would do (``--dry-run``)."""
    from ..lineage import resolve

    rec = tp.record or _new_record(tp.request)
    entry = _entry(resolve(hub), rec, tp.states, [])
    used = {n.repo: n.sidecar_used for n in tp.plan.nodes} if tp.plan is not None else {}
    for row in entry["repos"]:  # which sidecar each target's forget would use
        if row["repo"] in tp.targets:
            row["sidecar"] = used.get(row["repo"], row.get("sidecar"))
    # In a plan, "pending" is the work to do, not a finding; undeclared derivatives are (the takedown misses them).
    entry.update(findings=tp.undeclared, ok=not tp.problems, todo=list(tp.targets), record_only=list(tp.record_only))
    return {"kind": "takedown-plan", "hub": str(hub.root), "generated_at": _now(), "ok": not tp.problems,
            "eval_data": None, "max_forget_acc": None, "ledger_revision": None, "problems": tp.problems,
            "findings": tp.undeclared, "requests": [entry]}


def audit(hub: LocalHub, request_id: str | None = None, *, eval_data: str | None = None,
          max_forget_acc: float = DEFAULT_MAX_FORGET_ACC, kind: str = "audit") -> dict[str, Any]:
    """Check every request in the ledger (or only ``request_id``) against the hub as it is now.

    Returns ``{"kind", "hub", "generated_at", "ok", "eval_data", "findings", "requests": [...]}``; each request
    entry has its ``request``, ledger facts, ``repos`` (one row per affected repo: status, head, weights,
    ledger revisions and hashes, accuracies) and ``lineage`` (nodes with status, edges) for the picture."""
    from ..lineage import resolve

    _check_eval_data(eval_data)
    if not (max_forget_acc >= 0 and math.isfinite(max_forget_acc)):
        raise BadInput(f"--max-forget-acc must be a percentage, got {max_forget_acc}")
    records = ledger_records(hub)
    if request_id is not None and request_id not in records:
        known = ", ".join(sorted(records)) or "none"
        raise BadInput(f"request {request_id} is not in the ledger (requests: {known})")
    g = resolve(hub)
    lin = _Lineage(hub)
    entries, findings = [], []
    for rid in sorted(records) if request_id is None else [request_id]:
        rec = records[rid]
        request = TakedownRequest.from_dict(rec["request"])
        states, problems = classify(hub, request, rec, records, g, lin)
        if eval_data:
            for s in states:
                s.eval = _measure(hub, request, s.repo, s.head, eval_data)
                fa = s.eval.get("forget_acc")
                if request.classes and fa is not None and fa > max_forget_acc and not s.finding:
                    s.status = "forget-accuracy"
                    s.message = (f"{s.repo}: held-out forget accuracy {fa:.1f}% on {eval_data} is above "
                                 f"{max_forget_acc:g}%")
        entry = _entry(g, rec, states, problems + _undeclared(hub, rid, states, lin))
        _purge_facts(hub, rid, rec, records, entry)
        entries.append(entry)
        req_findings = entry["findings"]
        findings += req_findings
    # Forgets run with plain `fiun-hub forget` have no request file and no ledger record: named, not audited
    # (`fiun-hub lineage --check` still reports models derived from their pre-forget revisions).
    untracked = [] if request_id is not None else sorted(
        {u.get("request") for n in g.nodes for u in g.nodes[n].get("unlearned") or []} - set(records))
    return {"kind": kind, "hub": str(hub.root), "generated_at": _now(), "ok": not findings, "eval_data": eval_data,
            "max_forget_acc": max_forget_acc, "ledger_revision": hub.head(LEDGER_REPO) if records else None,
            "findings": findings, "requests": entries, "untracked_requests": untracked}


def _purge_facts(hub: LocalHub, rid: str, rec: dict, records: dict[str, dict], entry: dict) -> None:
    """Add the ``unpurged`` findings (fiun_hub/purge.py) and the purge facts (bytes removed, holds) to a report
    entry."""
    from ..purge import leftovers

    left = leftovers(hub, rid, rec, records, at=_now())
    entry["findings"] = entry["findings"] + left["findings"]
    entry["ok"] = not entry["findings"]
    events = rec.get("events", [])
    entry["purge"] = {
        "bytes_removed": sum((e.get("purge") or {}).get("bytes_removed", 0) for e in events),
        "blobs_removed": sum((e.get("purge") or {}).get("blobs", 0) for e in events),
        "files_purged": sum(len(fs) for e in events for fs in ((e.get("purge") or {}).get("files") or {}).values()),
        "holds": [{"reason": e["hold"]["reason"], "at": e["hold"].get("at"),
                   "revisions": e["hold"].get("revisions") or {}} for e in events if e.get("hold")],
        "unpurged": len(left["findings"]),
    }


def _fix_purge(hub: LocalHub, rid: str, rec: dict, records: dict[str, dict]) -> dict | None:
    """Purge what a request's purge left behind (audit finding ``unpurged``), with a ``purge`` ledger event in the
    same journaled step. None when there is nothing to purge."""
    from ..purge import leftovers, purge_leftovers

    left = leftovers(hub, rid, rec, records, at=_now())
    if not (left["entries"] or left["strays"] or any(b["where"] is None for b in left["blobs"])):
        return None
    from ..unlearn import utc_now

    # (microseconds: two purges within a second are two events; _with_event replaces an event of the same time)
    at = utc_now()[:-1] + f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
    event: dict[str, Any] = {"kind": "purge", "at": at, "author": DEFAULT_AUTHOR, "origins": [],
                             "eval_data": None, "repos": {}, "findings": left["findings"]}
    from ..purge import summary

    event["purge"] = summary(hub, left["entries"])
    change = _ledger_change(hub, {rid: _with_event(rec, event)}, {}, f"Purge {rid}: "
                            f"{len(left['entries'])} file(s) of pre-forget revisions left on disk")
    out = purge_leftovers(hub, rid, left, [change])
    # Staged copies of the blobs just purged are found once their tombstones say so: a second pass removes them.
    again = leftovers(hub, rid, ledger_records(hub)[rid], ledger_records(hub), at=_now())
    if again["strays"]:
        out["strays"] += purge_leftovers(hub, rid, {**again, "entries": [], "blobs": []})["strays"]
    return out


def _adoptable(g, finding: dict, affected_now: set[str]) -> tuple[dict | None, str | None]:
    """``(adopted_from, None)`` for an ``undeclared-derivative`` finding that ``audit --fix --adopt`` can treat
    as a child of its inferred parent, else ``(None, why not)``."""
    repo, src = finding["repo"], finding.get("derived_from") or {}
    a = g.nodes[repo] if repo in g else None
    if not (isinstance(src.get("repo"), str) and isinstance(src.get("revision"), str)):
        return None, f"{repo}: the finding names no inferred parent revision"
    if a is None or a.get("missing"):
        return None, f"{repo} is no longer in the hub"
    if a.get("no_card"):
        return None, (f"{repo} has no model card ({CARD_FILE}): the forget record (and the inferred parent in it) "
                      f"would have nowhere to go; push one, e.g. with `--parent {src['repo']}@{src['revision']}`, "
                      "and run `fiun-hub audit --fix` again")
    if a.get("card_error"):
        return None, a["card_error"]
    if src["repo"] not in affected_now:
        return None, f"{repo}: its inferred parent {src['repo']} is no longer affected by the request"
    return {"repo": src["repo"], "revision": src["revision"], "evidence": dict(finding.get("evidence") or {})}, None


def fix(hub: LocalHub, report: dict[str, Any], *, eval_data: str | None = None, workers: int = 1,
        progress: Callable[[str], None] | None = None, executor: str = "local",
        ray_address: str | None = None, adopt: bool = False) -> list[dict[str, Any]]:
    """Apply each request with findings in ``report`` (an :func:`audit` result) to its flagged repos: new
    unlearned revisions, and a ``fix`` event in the ledger naming the findings it answers. Repos that cannot be
    fixed (a stale sidecar, say) are left flagged, with why. Returns one outcome per request touched.

    ``adopt``: also treat each ``undeclared-derivative`` as a child of the revision its weights look derived from
    (and its declared descendants as descendants): the same forget, its record in the repo's card naming the
    inferred parent (``adopted_from``, ``inferred: true``) while the card's parents stay as they are; the ledger
    entry carries ``adopted_from`` too, so that later audits check the repo as part of the affected set."""
    import networkx as nx

    from ..lineage import affected, resolve
    from ..unlearn import plan_forget

    _check_eval_data(eval_data)
    _check_executor(executor, workers)
    records = ledger_records(hub)
    out = []
    for entry in report["requests"]:
        if entry["ok"]:
            continue
        rid = entry["request"]["id"]
        rec = records[rid]
        request = TakedownRequest.from_dict(rec["request"])
        purged = None
        if any(f["kind"] == "unpurged" for f in entry["findings"]):
            purged = _fix_purge(hub, rid, rec, records)
            records = ledger_records(hub)
            rec = records[rid]
        g = resolve(hub)
        states, _ = classify(hub, request, rec, records, g)  # fresh: an earlier fix in this loop may have moved heads
        flagged = {f["repo"]: f for f in entry["findings"] if f["kind"] != "unpurged"}
        apply = [s.repo for s in states if s.status in APPLY
                 or (s.repo in flagged and flagged[s.repo]["kind"] == "forget-accuracy" and s.status == "inherited")]
        record_only: list[str] = []  # a claim is never recorded as done: APPLY forgets it
        depths = {s.repo: s.depth for s in states}
        adoptions = adopted_entries(rec, g)  # adopted by an earlier fix
        found: dict[str, dict] = {}
        not_adopted: dict[str, str] = {}
        for f in entry["findings"] if adopt else ():
            if f["kind"] != "undeclared-derivative" or f["repo"] in depths:
                continue
            got, why = _adoptable(g, f, set(depths))
            if got is None:
                not_adopted[f["repo"]] = why
            else:
                found[f["repo"]] = got
        # one whose card declares its descent from another one adopted here is that one's descendant: only the
        # topmost edge is inferred
        new_adopt = {r: a for r, a in found.items() if not nx.ancestors(g, r) & (set(found) - {r})}
        for r, a in new_adopt.items():
            depths[r] = depths.get(a["repo"], 0) + 1
        extra = list(new_adopt)  # and what the cards derive from them
        for x in list(new_adopt):
            for r, d in sorted(affected(g, [x]).items(), key=lambda kv: (kv[1], kv[0])):
                if r not in depths:
                    depths[r] = depths[x] + d
                    extra.append(r)
        adoptions.update(new_adopt)
        if not apply and not record_only and not extra:
            out.append({"request_id": rid, "fixed": [], "blocked": dict(not_adopted), "revisions": {},
                        "adopted": [], "unfixable": sorted(r for r in flagged if r not in not_adopted),
                        "purged": purged})
            continue
        plan = plan_forget(hub, request.origin_repos, request.classes, request.data, request.id,
                           request.alpha, request.lam)  # None: the kind's default
        in_plan = {n.repo for n in plan.nodes}
        try:
            restricted, blocked = _restrict(hub, request, plan, [r for r in apply if r in in_plan])
        except BadInput as exc:  # an origin that must be redone cannot be: nothing of this request can
            out.append({"request_id": rid, "fixed": [], "blocked": {**not_adopted, **{r: str(exc) for r in
                                                                                   apply + extra}},
                        "revisions": {}, "adopted": [], "unfixable": sorted(r for r in flagged if r not in
                                                                            not_adopted)})
            continue
        todo = apply + [r for r in extra if r not in apply]
        blocked.update(_add_adopted(hub, restricted, g, [r for r in todo if r not in in_plan], adoptions, depths))
        done = [r for r in todo if r not in blocked]
        blocked.update(not_adopted)
        tp = TakedownPlan(request, restricted, states, done, record_only, rec, blocked=blocked)
        res = _apply(hub, tp, "fix", eval_data=eval_data, workers=workers, progress=progress, executor=executor,
                     ray_address=ray_address,
                     findings=[flagged[r] for r in sorted(flagged) if r in todo or r in record_only])
        out.append({"request_id": rid, "fixed": sorted(r for r in todo + record_only if r not in blocked),
                    "blocked": blocked, "revisions": res["revisions"], "ledger_revision": res["ledger_revision"],
                    "purged": purged,
                    "adopted": [{"repo": r, "inferred_parent": f"{a['repo']}@{a['revision']}", "parent": a["repo"],
                                 "revision": a["revision"], "evidence": a.get("evidence") or {}}
                                for r, a in sorted(new_adopt.items()) if r in res["revisions"]],
                    "unfixable": sorted(r for r in flagged if r not in todo and r not in record_only
                                        and r not in blocked)})
    return out


__all__ = ["LEDGER_REPO", "LEDGER_FORMAT", "TakedownRequest", "RequestError", "parse_request", "load_request",
           "ledger_records", "ledger_record", "ledger_exists", "RepoState", "classify", "TakedownPlan",
           "plan_takedown", "run_takedown", "audit", "fix", "adopted_entries", "DEFAULT_MAX_FORGET_ACC"]
