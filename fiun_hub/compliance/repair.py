"""``audit --fix``: :func:`fix` applies each request with findings to its flagged repos (new unlearned revisions,
the ledger updated, through the takedown's own step, :func:`~fiun_hub.compliance.takedown.apply_plan`) and purges
what a request's purge left behind. A repo derived from a pre-takedown revision is dampened with the origin's
*pre-forget* unlearning FIM, which :func:`fiun_hub.unlearn.run_forget` takes from the origin's ``from_revision``
when the origin already carries the request. With ``adopt``, an undeclared derivative is forgotten as a child of the
revision its weights look derived from."""
from __future__ import annotations

import time
from typing import Any, Callable

from ..constants import CARD_FILE, DEFAULT_AUTHOR
from ..errors import BadInput
from ..hub.local import LocalHub
from . import clock
from .classification import classify
from .ledger import adopted_entries, ledger_change, ledger_records, with_event
from .measure import check_eval_data
from .request import TakedownRequest
from .status import Status
from .takedown import TakedownPlan, add_adopted, apply_plan, check_run_options, restrict_plan

def _fix_purge(hub: LocalHub, rid: str, rec: dict, records: dict[str, dict]) -> dict | None:
    """Purge what a request's purge left behind (audit finding ``unpurged``), with a ``purge`` ledger event in the
    same journaled step. None when there is nothing to purge."""
    from ..purge import leftovers, purge_leftovers

    left = leftovers(hub, rid, rec, records, at=clock.now())
    if not (left["entries"] or left["strays"] or any(b["where"] is None for b in left["blobs"])):
        return None
    from ..unlearn import utc_now

    # (microseconds: two purges within a second are two events; with_event replaces an event of the same time)
    at = utc_now()[:-1] + f".{time.time_ns() // 1000 % 1_000_000:06d}Z"
    event: dict[str, Any] = {"kind": "purge", "at": at, "author": DEFAULT_AUTHOR, "origins": [],
                             "eval_data": None, "repos": {}, "findings": left["findings"]}
    from ..purge import summary

    event["purge"] = summary(hub, left["entries"])
    change = ledger_change(hub, {rid: with_event(rec, event)}, {}, f"Purge {rid}: "
                           f"{len(left['entries'])} file(s) of pre-forget revisions left on disk")
    out = purge_leftovers(hub, rid, left, [change])
    # Staged copies of the blobs just purged are found once their tombstones say so: a second pass removes them.
    again = leftovers(hub, rid, ledger_records(hub)[rid], ledger_records(hub), at=clock.now())
    if again["strays"]:
        out["strays"] += purge_leftovers(hub, rid, {**again, "entries": [], "blobs": []})["strays"]
    return out


def _adoptable(g, finding: dict, affected_now: set[str]) -> dict | str:
    """``adopted_from`` for an ``undeclared-derivative`` finding that ``audit --fix --adopt`` can treat as a
    child of its inferred parent, else why not (a string)."""
    repo, src = finding["repo"], finding.get("derived_from") or {}
    a = g.nodes[repo] if repo in g else None
    if not (isinstance(src.get("repo"), str) and isinstance(src.get("revision"), str)):
        return f"{repo}: the finding names no inferred parent revision"
    if a is None or a.get("missing"):
        return f"{repo} is no longer in the hub"
    if a.get("no_card"):
        return (f"{repo} has no model card ({CARD_FILE}): the forget record (and the inferred parent in it) "
                f"would have nowhere to go; push one, e.g. with `--parent {src['repo']}@{src['revision']}`, "
                "and run `fiun-hub audit --fix` again")
    if a.get("card_error"):
        return a["card_error"]
    if src["repo"] not in affected_now:
        return f"{repo}: its inferred parent {src['repo']} is no longer affected by the request"
    return {"repo": src["repo"], "revision": src["revision"], "evidence": dict(finding.get("evidence") or {})}


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

    check_eval_data(eval_data)
    check_run_options(executor, workers)
    records = ledger_records(hub)
    out = []
    for entry in report["requests"]:
        if entry["ok"]:
            continue
        rid = entry["request"]["id"]
        rec = records[rid]
        request = TakedownRequest.from_dict(rec["request"])
        purged = None
        if any(f["kind"] == Status.UNPURGED for f in entry["findings"]):
            purged = _fix_purge(hub, rid, rec, records)
            records = ledger_records(hub)
            rec = records[rid]
        g = resolve(hub)
        states, _ = classify(hub, request, rec, records, g)  # fresh: an earlier fix in this loop may have moved heads
        flagged = {f["repo"]: f for f in entry["findings"] if f["kind"] != Status.UNPURGED}
        apply = [s.repo for s in states if Status(s.status).fix_forgets
                 or (s.repo in flagged and flagged[s.repo]["kind"] == Status.FORGET_ACCURACY
                     and s.status == Status.INHERITED)]
        record_only: list[str] = []  # a claim is never recorded as done: an unrecorded repo is forgotten
        depths = {s.repo: s.depth for s in states}
        adoptions = adopted_entries(rec, g)  # adopted by an earlier fix
        found: dict[str, dict] = {}
        not_adopted: dict[str, str] = {}
        for f in entry["findings"] if adopt else ():
            if f["kind"] != Status.UNDECLARED_DERIVATIVE or f["repo"] in depths:
                continue
            got = _adoptable(g, f, set(depths))
            if isinstance(got, str):
                not_adopted[f["repo"]] = got
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
            restricted, blocked = restrict_plan(hub, request, plan, [r for r in apply if r in in_plan])
        except BadInput as exc:  # an origin that must be redone cannot be: nothing of this request can
            out.append({"request_id": rid, "fixed": [], "blocked": {**not_adopted, **{r: str(exc) for r in
                                                                                   apply + extra}},
                        "revisions": {}, "adopted": [], "unfixable": sorted(r for r in flagged if r not in
                                                                            not_adopted)})
            continue
        todo = apply + [r for r in extra if r not in apply]
        blocked.update(add_adopted(hub, restricted, g, [r for r in todo if r not in in_plan], adoptions, depths))
        done = [r for r in todo if r not in blocked]
        blocked.update(not_adopted)
        tp = TakedownPlan(request, restricted, states, done, record_only, rec, blocked=blocked)
        res = apply_plan(hub, tp, "fix", eval_data=eval_data, workers=workers, progress=progress, executor=executor,
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


__all__ = ["fix"]
