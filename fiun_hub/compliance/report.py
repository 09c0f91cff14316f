"""The audit and the data of its report: :func:`audit` checks every request of the ledger against the hub as it is
now (the classification, ``--eval-data`` accuracies, undeclared derivatives, what a purge left behind) and returns
the report data that ``fiun-hub audit`` prints and fiun_hub/report.py renders (docs/takedowns.md, "Reports"):
per request its ledger facts, one row per affected repo, the findings and its part of the lineage picture."""
from __future__ import annotations

from typing import Any

from ..constants import LEDGER_REPO
from ..errors import BadInput
from ..forget_record import forget_records
from ..hub.base import Hub
from ..hub.local import LocalHub
from . import clock
from .classification import CardCache, RepoState, classify
from .ledger import deleted_records, ledger_records, rewritten_records
from .measure import check_eval_data, measure
from .request import TakedownRequest, day
from .status import Status

DEFAULT_MAX_FORGET_ACC = 5.0  # percent; above it a class-wise forget is reported as not holding


def _lineage_data(g, states: list[RepoState]) -> dict[str, Any]:
    """The request's part of the DAG for the report picture: affected repos and their direct parents."""
    status = {s.repo: Status(s.status).value for s in states}
    keep = set(status)
    for r in list(status):
        keep |= {p for p in g.predecessors(r) if p != LEDGER_REPO}
    nodes = [{"id": n, "head": g.nodes[n].get("head"), "status": status.get(n, Status.CONTEXT.value),
              "missing": bool(g.nodes[n].get("missing"))} for n in sorted(keep)]
    edges = [{"source": u, "target": v, "revision": g.edges[u, v].get("revision") or "",
              "relation": g.edges[u, v].get("relation")} for u, v in sorted(g.edges) if u in keep and v in keep]
    # the parent an `audit --fix --adopt` inferred from the weights (no card declares it)
    edges += [{"source": a["repo"], "target": s.repo, "revision": a.get("revision") or "", "relation": "inferred"}
              for s in states for a in [(s.ledger or {}).get("adopted_from")]
              if isinstance(a, dict) and a.get("repo") in keep and not g.has_edge(a["repo"], s.repo)]
    return {"nodes": nodes, "edges": edges}


def request_entry(g, rec: dict, states: list[RepoState], problems: list[dict]) -> dict[str, Any]:
    """One request's part of a report: its ledger facts, one row per affected repo, findings, lineage."""
    rid = rec["request"]["id"]
    findings = problems + [{"request": rid, "repo": s.repo, "kind": Status(s.status).value, "message": s.message}
                           for s in states if s.finding]
    # Repos the ledger recorded that are no longer in the affected set (the lineage was rewired): shown, not
    # flagged, since nothing derives them from the origins any more.
    gone = sorted(set(rec["repos"]) - {s.repo for s in states})
    completed = rec.get("completed_at")
    deadline = rec["request"].get("deadline")
    return {
        "request": rec["request"], "request_sha256": rec.get("request_sha256"),
        "ok": not findings, "findings": findings, "completed_at": completed,
        "deadline_met": (day(completed) <= day(deadline)) if completed and deadline else None,
        "events": [{**{k: e.get(k) for k in ("kind", "at", "author", "eval_data")}, "repos": sorted(e["repos"])}
                   for e in rec.get("events", [])],
        "repos": [s.to_dict() for s in states],
        "no_longer_affected": [{"repo": r, **rec["repos"][r]} for r in gone],
        "lineage": _lineage_data(g, states),
    }


def undeclared_derivatives(hub: Hub, rid: str, states: list[RepoState], lin: CardCache) -> list[dict]:
    """Findings ``undeclared-derivative``: heads outside the affected set whose weights look derived from an
    affected repo's pre-forget revision (fiun_hub.fingerprint)."""
    from ..fingerprint import undeclared_findings

    pre = {}
    for s in states:
        led = s.ledger or {}
        rec = lin.record(s.repo, s.head, rid)
        pre[s.repo] = led.get("first_from") or led.get("from") or (rec.from_revision if rec else None) or s.head
    return undeclared_findings(hub, rid, pre, {s.repo for s in states},
                               carries=lambda repo, head: lin.carries(repo, head, rid))


def audit(hub: LocalHub, request_id: str | None = None, *, eval_data: str | None = None,
          max_forget_acc: float = DEFAULT_MAX_FORGET_ACC, kind: str = "audit") -> dict[str, Any]:
    """Check every request in the ledger (or only ``request_id``) against the hub as it is now.

    Returns ``{"kind", "hub", "generated_at", "ok", "verified", "warnings", "eval_data", "findings",
    "requests": [...]}``; each request entry has its ``request``, ledger facts, ``ok`` (no finding), ``verified``
    (no finding and no warning), ``findings``, ``warnings``, ``repos`` (one row per affected repo: status, head,
    weights, ledger revisions and hashes, accuracies; a sample-wise request's rows their ``membership``) and
    ``lineage`` (nodes with status, edges) for the picture. ``ok`` decides the exit code; a warning
    (``membership-unverified``: a sample-wise request's membership not checked or not decidable) does not fail
    the audit but makes it not ``verified``. A LocalHub: the purge's leftovers are looked for in its folder
    (:func:`fiun_hub.purge.leftovers`)."""
    from ..lineage import resolve

    check_eval_data(eval_data)
    if not (0 <= max_forget_acc <= 100):  # (NaN fails both)
        raise BadInput(f"--max-forget-acc must be a percentage, got {max_forget_acc}")
    records = ledger_records(hub)
    # the ledger's history, read once for both checks of its past (a ledger whose every record was deleted has one)
    history = hub.history(LEDGER_REPO) if hub.repo_exists(LEDGER_REPO) else []
    deleted = sorted(deleted_records(hub, history).items())
    if deleted:  # a hand edit: what the ledger recorded is the proof, and the audit is blind without it
        rid, cid = deleted[0]
        raise BadInput(f"the ledger's record of request {rid} was deleted at {LEDGER_REPO}@{cid[:12]}: the ledger "
                       f"only grows, so nothing is proved without it; restore records/{rid}.json from "
                       f"`fiun-hub log {LEDGER_REPO}`")
    rewritten = rewritten_records(hub, history)
    if rewritten:
        raise BadInput(f"{rewritten}: the ledger only grows, so nothing is proved by it; "
                       f"see `fiun-hub log {LEDGER_REPO}`")
    if request_id is not None and request_id not in records:
        known = ", ".join(sorted(records)) or "none"
        raise BadInput(f"request {request_id} is not in the ledger (requests: {known})")
    g = resolve(hub)
    lin = CardCache(hub)
    entries, findings = [], []
    for rid in sorted(records) if request_id is None else [request_id]:
        rec = records[rid]
        request = TakedownRequest.from_dict(rec["request"])
        states, problems = classify(hub, request, rec, records, g, lin)
        if eval_data:
            for s in states:
                s.eval = measure(hub, request, s.repo, s.head, eval_data, with_membership=True)
                fa = s.eval.get("forget_acc")
                if request.classes and fa is not None and fa > max_forget_acc and not s.finding:
                    s.status = Status.FORGET_ACCURACY
                    s.message = (f"{s.repo}: held-out forget accuracy {fa:.1f}% on {eval_data} is above "
                                 f"{max_forget_acc:g}%")
        warnings = [] if request.classes else _membership(rid, states, eval_data)
        entry = request_entry(g, rec, states, problems + undeclared_derivatives(hub, rid, states, lin))
        entry["warnings"] = warnings
        member = {s.repo: s.eval["membership"] for s in states if s.status == Status.SAMPLES_STILL_MEMBERS}
        for f in entry["findings"]:
            if f["kind"] == Status.SAMPLES_STILL_MEMBERS and f["repo"] in member:
                f["membership"] = member[f["repo"]]
        _purge_facts(hub, rid, rec, records, entry)
        entries.append(entry)
        req_findings = entry["findings"]
        findings += req_findings
    # Forgets run with plain `fiun-hub forget` have no request file and no ledger record: named, not audited
    # (`fiun-hub lineage --check` still reports models derived from their pre-forget revisions).
    untracked = [] if request_id is not None else sorted(
        {r.request for n in g.nodes for r in forget_records(g.nodes[n].get("unlearned"))} - set(records))
    warnings = [w for e in entries for w in e["warnings"]]
    return {"kind": kind, "hub": str(hub.root), "generated_at": clock.now(), "ok": not findings,
            "verified": not findings and not warnings, "warnings": warnings, "eval_data": eval_data,
            "max_forget_acc": max_forget_acc,
            "ledger_revision": hub.head(LEDGER_REPO) if records else None,
            "findings": findings, "requests": entries, "untracked_requests": untracked}


def _membership(rid: str, states: list[RepoState], eval_data: str | None) -> list[dict]:
    """A sample-wise request: each row's ``membership`` (measured with ``eval_data``, else ``not-checked``); a repo
    whose samples are still members becomes a ``samples-still-members`` finding (unless it is already flagged),
    one whose membership is not decidable or not checked a ``membership-unverified`` warning (returned)."""
    from .measure import membership_text

    warnings = []
    for s in states:
        m = s.eval.setdefault("membership", {"verdict": "not-checked", "why": "no --eval-data"})
        m["text"] = membership_text(m)
        if m["verdict"] == "members" and not s.finding:
            s.status, s.message = Status.SAMPLES_STILL_MEMBERS, f"{s.repo}: {m['text']} on {eval_data}"
        elif m["verdict"] in ("not-decidable", "not-checked"):
            warnings.append({"request": rid, "repo": s.repo, "kind": Status.MEMBERSHIP_UNVERIFIED.value,
                             "message": f"{s.repo}: {m['text']}", "membership": m})
    return warnings


def _purge_facts(hub: LocalHub, rid: str, rec: dict, records: dict[str, dict], entry: dict) -> None:
    """Add the ``unpurged`` findings (fiun_hub/purge.py) and the purge facts (bytes removed, holds) to a report
    entry."""
    from ..purge import leftovers

    left = leftovers(hub, rid, rec, records, at=clock.now())
    entry["findings"] = entry["findings"] + left["findings"]
    entry["ok"] = not entry["findings"]
    entry["verified"] = entry["ok"] and not entry.get("warnings")
    events = rec.get("events", [])
    entry["purge"] = {
        "bytes_removed": sum((e.get("purge") or {}).get("bytes_removed", 0) for e in events),
        "blobs_removed": sum((e.get("purge") or {}).get("blobs", 0) for e in events),
        "files_purged": sum(len(fs) for e in events for fs in ((e.get("purge") or {}).get("files") or {}).values()),
        "holds": [{"reason": e["hold"]["reason"], "at": e["hold"].get("at"),
                   "revisions": e["hold"].get("revisions") or {}} for e in events if e.get("hold")],
        "unpurged": len(left["findings"]),
    }


__all__ = ["audit", "request_entry", "undeclared_derivatives", "DEFAULT_MAX_FORGET_ACC"]
