"""The ledger: the repo ``fiun-hub/ledger`` of the same hub, one ``records/{id}.json`` (what was done: every repo,
old and new revision, sha256 of the new weights, accuracies, the events) and ``requests/{id}.yaml`` (the request as
received) per request, and a card listing them (docs/takedowns.md, "The ledger"). Reading records, building the
commit that writes them (:func:`ledger_change`, published by the takedown with its forget), and the rules over a
record: which entries prove a forget (:func:`ledger_proof`), which adopted an undeclared derivative."""
from __future__ import annotations

import json
from typing import Any

from ..constants import CARD_FILE, LEDGER_FORGOT, LEDGER_REPO
from ..errors import BadInput
from ..hub.base import Hub, RepoChange
from .request import TakedownRequest

LEDGER_TAG = "fiun-hub-ledger"
LEDGER_FORMAT = "fiun-ledger/1"


def ledger_proof(entry: Any) -> bool:
    """A ledger entry that proves a forget: written by fiun-hub's own forget (``action: forgot``) with the sha256
    of the weights it wrote. An entry that only ``recorded`` what a card claimed proves nothing."""
    return (isinstance(entry, dict) and entry.get("action") == LEDGER_FORGOT
            and isinstance(entry.get("weights_sha256"), str))


def ledger_exists(hub: Hub) -> bool:
    return hub.repo_exists(LEDGER_REPO)


def ledger_records(hub: Hub, revision: str | None = None) -> dict[str, dict]:
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


def deleted_records(hub: Hub, history: list | None = None) -> dict[str, str]:
    """Requests whose record an earlier ledger revision holds and the head does not: ``{request id: the first
    commit without it}``. fiun-hub only adds to the ledger, so such a record was deleted by hand (any client that
    writes the repo can): the audit refuses to call the hub ok without it. ``history``: the ledger's
    (``hub.history(LEDGER_REPO)``, newest first; read when not given)."""
    if not ledger_exists(hub):
        return {}
    out: dict[str, str] = {}
    newer: set[str] | None = None
    newer_id = ""
    for c in hub.history(LEDGER_REPO) if history is None else history:  # newest first
        have = {p for p in c.files if p.startswith("records/") and p.endswith(".json")}
        if newer is not None:
            for path in have - newer:
                out.setdefault(path[len("records/"):-len(".json")], newer_id)
        newer, newer_id = have if newer is None else newer | have, c.id
    return out


_FIXED = ("action", "from", "weights_sha256")  # what an event recorded of a repo: never changed afterwards


def _rewrite_in(rid: str, old: dict | None, rec: dict) -> str | None:
    """How ``rec`` (one ledger commit's record of ``rid``) rewrote ``old`` (the previous commit's) or itself, else
    None. fiun-hub only appends events; a takedown's second commit fills in its last event's ``to`` revisions
    (and accuracies, and repos that record only)."""
    for repo, e in rec["repos"].items():
        ev = rec["events"][e["event"]]["repos"][repo]
        if any(e.get(k) != ev.get(k) for k in _FIXED + ("to",)):
            return f"the record of request {rid} names for {repo} other facts than its event"
    if old is None:
        return None
    if rec.get("request_sha256") != old.get("request_sha256"):
        return f"the record of request {rid} changed the request it records"
    for i, oe in enumerate(old["events"]):
        ne = rec["events"][i] if i < len(rec["events"]) else None
        if ne is None or (ne.get("kind"), ne.get("at")) != (oe.get("kind"), oe.get("at")):
            return f"the record of request {rid} lost or moved its {oe.get('kind')} event of {oe.get('at')}"
        for repo, was in oe["repos"].items():
            is_ = ne["repos"].get(repo) or {}
            if any(was.get(k) != is_.get(k) for k in _FIXED) or was.get("to") not in (None, is_.get("to")):
                return f"the record of request {rid} rewrote what its {oe['kind']} event of {oe['at']} recorded for {repo}"
    return None


def rewritten_records(hub: Hub, history: list | None = None) -> str | None:
    """The first ledger commit that rewrote what an earlier one recorded, as one line, else None. The audit's proof
    rests on the ledger only growing: each event's repos keep their ``action``, ``from`` and ``weights_sha256`` and
    a ``to`` once set, events keep their place, the request its ``request_sha256``, and each repo's latest entry
    agrees with the event it names. A record edited by hand (any client that writes the repo can) is refused, not
    trusted. Reads each record blob once (a commit changes one or two). ``history``: as for
    :func:`deleted_records`."""
    if not ledger_exists(hub):
        return None
    parsed: dict[str, dict | None] = {}  # blob sha256 -> its record
    older: dict[str, tuple[str, dict | None]] = {}  # rid -> (sha, record) at the previous commit
    for c in reversed(hub.history(LEDGER_REPO) if history is None else history):  # oldest first
        now: dict[str, tuple[str, dict | None]] = {}
        for path, sha in c.files.items():
            if not (path.startswith("records/") and path.endswith(".json")):
                continue
            rid = path[len("records/"):-len(".json")]
            if rid in older and older[rid][0] == sha:
                now[rid] = older[rid]
                continue
            if sha not in parsed:
                try:
                    rec = json.loads(hub.read_file(LEDGER_REPO, path, c.id))
                except (ValueError, UnicodeDecodeError, BadInput):
                    rec = None  # ledger_records refuses an unreadable head record
                parsed[sha] = rec if isinstance(rec, dict) and isinstance(rec.get("events"), list) else None
            now[rid] = (sha, parsed[sha])
            rec = parsed[sha]
            if rec is None:
                continue
            where = f"{LEDGER_REPO}@{c.id[:12]} ({c.message.splitlines()[0] if c.message else ''})"
            try:
                why = _rewrite_in(rid, (older.get(rid) or ("", None))[1], rec)
            except (KeyError, IndexError, TypeError, AttributeError):
                why = f"the record of request {rid} is not a {LEDGER_FORMAT} record"
            if why:
                return f"{where}: {why}"
        older = now
    return None


def ledger_record(hub: Hub, request_id: str) -> dict | None:
    return ledger_records(hub).get(request_id)


def ledger_card(records: dict[str, dict]) -> str:
    """The ledger's card: its tag and format, and one table row per request."""
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


def ledger_change(hub: Hub, updates: dict[str, dict], texts: dict[str, str], message: str) -> RepoChange:
    """One ledger commit writing ``updates`` (request id -> record) and the request files in ``texts``."""
    parent = hub.head(LEDGER_REPO) if ledger_exists(hub) else ""
    records = {**ledger_records(hub, parent or None), **updates}
    files: dict[str, bytes] = {f"records/{rid}.json": (json.dumps(rec, indent=2, sort_keys=True) + "\n").encode()
                               for rid, rec in updates.items()}
    files.update({f"requests/{rid}.yaml": text.encode() for rid, text in texts.items()})
    files[CARD_FILE] = ledger_card(records).encode()
    return RepoChange(LEDGER_REPO, files, message, parent_commit=parent)


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


def new_record(request: TakedownRequest) -> dict:
    """The ledger record of a request before anything was done for it."""
    return {"format": LEDGER_FORMAT, "request": request.to_dict(), "request_file": f"requests/{request.id}.yaml",
            "request_sha256": request.fingerprint(), "completed_at": None, "events": [], "repos": {}}


def with_event(record: dict, event: dict) -> dict:
    """``record`` with ``event`` appended and its repos updated. Never replaces an event already in ``record``: two
    events of one kind stamped in the same second (two ``audit --fix`` runs) are two events. A caller that publishes
    an event twice (the takedown's interim and final copies) builds both from the record *before* the event."""
    rec = json.loads(json.dumps(record))
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


__all__ = ["LEDGER_REPO", "LEDGER_TAG", "LEDGER_FORMAT", "ledger_proof", "ledger_exists", "ledger_records",
           "deleted_records", "rewritten_records", "ledger_record", "ledger_card", "ledger_change", "new_record", "with_event",
           "adopted_entries"]
