"""Takedowns: :func:`plan_takedown` validates a request against the hub and the ledger and works out what to do
(the affected set's classification, the FIUn plan restricted to the repos to forget); :func:`run_takedown` carries
it out with FIUn (:func:`fiun_hub.unlearn.run_forget`) and records the request and its outcome (every repo, old and
new revision, hash of the new weights, measured accuracies) in the ledger. The ledger record (and the purge's
tombstones) land in the **same** publish as the forget's new revisions, so a takedown lands whole or not at all; a
second ledger commit then adds the new revision ids and the accuracies. :func:`apply_plan` is that step, for a
takedown and for ``audit --fix`` (fiun_hub/compliance/repair.py) alike."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..constants import DEFAULT_AUTHOR, LEDGER_FORGOT, LEDGER_RECORDED, LEDGER_REPO, WEIGHTS_FILE
from ..errors import BadInput, FiunError
from ..hub.ids import split_repo_rev
from ..hub.base import Blob, Hub, PurgeHub, RepoChange
from ..hub.local import LocalHub
from . import clock
from .classification import CardCache, RepoState, classify
from .ledger import adopted_entries, ledger_change, ledger_exists, ledger_records, new_record, with_event
from .measure import check_eval_data, measure
from .report import audit, request_entry, undeclared_derivatives
from .request import RequestError, TakedownRequest
from .status import Status


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


def _origin_pins(hub: Hub, request: TakedownRequest) -> None:
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


def restrict_plan(hub: Hub, request: TakedownRequest, plan, apply: Iterable[str]) -> tuple[Any, dict[str, str]]:
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


def add_adopted(hub: Hub, plan, g, repos: Iterable[str], adoptions: dict[str, dict],
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


def plan_takedown(hub: Hub, request: TakedownRequest) -> TakedownPlan:
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
    targets = [s.repo for s in states if Status(s.status).takedown_forgets]
    record_only: list[str] = []
    by_repo = {n.repo: n for n in plan.nodes}
    problems = [p for r in targets if r in by_repo for p in by_repo[r].problems]
    restricted = plan
    if not problems:
        restricted, blocked = restrict_plan(hub, request, plan, [r for r in targets if r in by_repo])
        # an adopted undeclared derivative (or a declared descendant of one) to redo: not in the cards' lineage
        from ..lineage import resolve

        extra = [r for r in targets if r not in by_repo]
        if extra:
            blocked.update(add_adopted(hub, restricted, resolve(hub), extra, adopted_entries(record),
                                       {s.repo: s.depth for s in states}))
        problems = list(blocked.values())
    return TakedownPlan(request, restricted, states, targets, record_only, record, problems,
                        undeclared=undeclared_derivatives(hub, request.id, states, CardCache(hub)))


def plan_report(hub: Hub, tp: TakedownPlan) -> dict[str, Any]:
    """Report data (as :func:`audit` gives) for a takedown that has not run: what it would do (``--dry-run``)."""
    from ..lineage import resolve

    rec = tp.record or new_record(tp.request)
    entry = request_entry(resolve(hub), rec, tp.states, [])
    used = {n.repo: n.sidecar_used for n in tp.plan.nodes} if tp.plan is not None else {}
    for row in entry["repos"]:  # which sidecar each target's forget would use
        if row["repo"] in tp.targets:
            row["sidecar"] = used.get(row["repo"], row.get("sidecar"))
    # In a plan, "pending" is the work to do, not a finding; undeclared derivatives are (the takedown misses them).
    entry.update(findings=tp.undeclared, ok=not tp.problems, todo=list(tp.targets), record_only=list(tp.record_only))
    return {"kind": "takedown-plan", "hub": str(hub.root), "generated_at": clock.now(), "ok": not tp.problems,
            "eval_data": None, "max_forget_acc": None, "ledger_revision": None, "problems": tp.problems,
            "findings": tp.undeclared, "requests": [entry]}


def check_run_options(executor: str, workers: int) -> None:
    """Bad --executor / --workers, or Ray missing, is bad input before anything runs (one line saying how to
    install Ray)."""
    from ..executors import check_executor, import_ray

    check_executor(executor, workers)
    if executor == "ray":
        import_ray()


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


def _origins_used(hub: Hub, plan, lin: CardCache) -> list[str]:
    """Each origin with the revision whose sidecar gives its unlearning FIM (the pre-forget one when done)."""
    out = []
    for o in plan.origins:
        node = next(n for n in plan.nodes if n.repo == o)
        rec = lin.record(o, node.head, plan.request_id) if node.done else None
        out.append(f"{o}@{(rec.from_revision if rec else None) or node.head}")
    return out


def apply_plan(hub: PurgeHub, tp: TakedownPlan, kind: str, *, eval_data: str | None, workers: int,
               progress: Callable[[str], None] | None, findings: list[dict] | None = None, executor: str = "local",
               ray_address: str | None = None, purge: bool = True, hold_reason: str | None = None) -> dict[str, Any]:
    """Forget ``tp.targets`` (those not blocked) and record them and ``tp.record_only`` in the ledger: the forget's
    revisions and the ledger record in one publish, then a ledger commit with the new revisions and accuracies.
    ``workers``, ``executor``, ``ray_address``: where the per-repo work runs (:func:`fiun_hub.unlearn.run_forget`);
    a failed task publishes nothing, ledger included."""
    from ..unlearn import run_forget

    request, plan = tp.request, tp.plan
    lin = CardCache(hub)
    todo = [n for n in plan.nodes if not n.done]
    before = {}
    if eval_data:
        for n in todo:
            before[n.repo] = measure(hub, request, n.repo, n.head, eval_data)
    at = clock.now()
    record = json.loads(json.dumps(tp.record)) if tp.record is not None else new_record(request)
    event: dict[str, Any] = {"kind": kind, "at": at, "author": DEFAULT_AUTHOR, "origins": _origins_used(hub, plan, lin),
                             "eval_data": eval_data, "repos": {}, "blocked": dict(tp.blocked)}
    if findings is not None:
        event["findings"] = findings
    heads = {s.repo: s.head for s in tp.states}
    for repo in tp.record_only:
        rec = lin.record(repo, heads[repo], request.id)
        event["repos"][repo] = {"action": LEDGER_RECORDED, "from": rec.from_revision if rec else None,
                                "to": heads[repo],
                                "weights_sha256": hub.list_files(repo, heads[repo]).get(WEIGHTS_FILE)}
    texts = {} if tp.record is not None else {request.id: request.text or _yaml_of(request)}

    used = {n.repo: n.sidecar_used for n in plan.nodes}
    adopted = {n.repo: n.adopted_from for n in plan.nodes if n.adopted_from is not None}

    def build(changes: list[RepoChange]) -> RepoChange:
        for ch in changes:
            event["repos"][ch.repo] = {"action": LEDGER_FORGOT, "from": ch.parent_commit, "to": None,
                                       "sidecar": used.get(ch.repo, "own"),
                                       **({"adopted_from": adopted[ch.repo]} if ch.repo in adopted else {}),
                                       "weights_sha256": _weights_of(ch), **{f"{k}_before": v for k, v in
                                                                              before.get(ch.repo, {}).items()}}
        return ledger_change(hub, {request.id: with_event(record, event)}, texts,
                             f"{kind.capitalize()} {request.id}: forget {request.forget_text()} at "
                             f"{', '.join(request.origin_repos)} ({len(changes)} repo(s))")

    records = ledger_records(hub)

    def purge_of(changes: list[RepoChange]) -> list[dict] | None:
        from .. import purge as P

        starts: dict[str, str | None] = {ch.repo: ch.parent_commit for ch in changes if ch.repo != LEDGER_REPO}
        # earlier revisions of other repos that declared a holding revision as parent (re-pushed since)
        starts.update(P.derived_history_starts(hub, request.id, {r: [s] for r, s in starts.items() if s}))
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
        hub.publish([ledger_change(hub, {request.id: with_event(record, event)}, texts,
                                   f"Record {request.id} for {len(event['repos'])} repo(s) that already carry it")])
    else:
        return {"noop": True, "revisions": {}, "stats": {}, "event": None, "seconds": 0.0, "forget_seconds": {},
                "ledger_revision": hub.head(LEDGER_REPO) if ledger_exists(hub) else None}
    if eval_data:
        for repo, e in event["repos"].items():
            e.update(measure(hub, request, repo, e["to"], eval_data))
    final = with_event(record, event)
    ledger_rev = hub.publish([ledger_change(hub, {request.id: final}, {},
                                            f"{kind.capitalize()} {request.id}: new revisions"
                                            + (f" and accuracies on {eval_data}" if eval_data else ""))])[LEDGER_REPO]
    return {"noop": False, "revisions": result.revisions if result else {}, "stats": result.stats if result else {},
            "event": event, "ledger_revision": ledger_rev, "seconds": time.perf_counter() - t0,
            "forget_seconds": result.seconds if result else {}}


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
    (``report``) of the request's state afterwards (an :func:`audit`: a LocalHub)."""
    if hold_reason is not None and not hold_reason.strip():
        raise BadInput("--keep-history needs --reason TEXT: a legal hold is recorded with why")
    if tp.problems:
        raise BadInput(tp.problems[0] + (f" (and {len(tp.problems) - 1} more problem(s); see --dry-run)"
                                         if len(tp.problems) > 1 else ""))
    check_eval_data(eval_data)
    check_run_options(executor, workers)
    out = apply_plan(hub, tp, "takedown", eval_data=eval_data, workers=workers, progress=progress, executor=executor,
                     ray_address=ray_address, purge=purge, hold_reason=hold_reason)
    report = audit(hub, tp.request.id, kind="takedown")
    return {"request_id": tp.request.id, **out, "report": report}


__all__ = ["TakedownPlan", "plan_takedown", "plan_report", "run_takedown", "apply_plan", "restrict_plan",
           "add_adopted", "check_run_options"]
