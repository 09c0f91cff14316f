"""Classification: where each repo of a request's affected set stands *now* (:class:`RepoState`, its
:class:`~fiun_hub.compliance.status.Status`), from the lineage, the cards and the ledger (docs/takedowns.md, "What
the audit checks"). Reads only: an audit, a takedown's plan and a fix all start here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..constants import WEIGHTS_FILE
from ..errors import BadInput
from ..forget_record import ForgetRecord
from ..hub.base import Hub
from .ledger import adopted_entries, ledger_proof
from .request import TakedownRequest
from .status import Status

class CardCache:
    """Cached reads of cards and histories for one classification."""

    def __init__(self, hub: Hub):
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
        return not isinstance(m, Exception) and m.record(request_id) is not None

    def record(self, repo: str, rev: str, request_id: str) -> ForgetRecord | None:
        m = self.meta(repo, rev)
        if isinstance(m, Exception):
            return None
        return m.record(request_id)

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
    status: Status  # (a value given as a plain string is read as its Status)
    head: str
    weights_sha256: str | None
    message: str = ""
    ledger: dict | None = None  # the ledger's entry for this repo, if any
    eval: dict = field(default_factory=dict)  # forget_acc, retain_acc (now)

    @property
    def finding(self) -> bool:
        return Status(self.status).finding

    def to_dict(self) -> dict[str, Any]:
        led = self.ledger or {}
        return {"repo": self.repo, "depth": self.depth, "status": Status(self.status).value, "finding": self.finding,
                "message": self.message, "head": self.head, "weights_sha256": self.weights_sha256,
                "from": led.get("from"), "to": led.get("to"), "recorded_weights_sha256": led.get("weights_sha256"),
                "at": led.get("at"), "sidecar": led.get("sidecar"), "forget_acc_before": led.get("forget_acc_before"),
                "retain_acc_before": led.get("retain_acc_before"), "forget_acc_recorded": led.get("forget_acc"),
                "retain_acc_recorded": led.get("retain_acc"), "adopted_from": led.get("adopted_from"),
                **{k: v for k, v in self.eval.items()}}


def _find_to(lin: CardCache, repo: str, head: str, entry: dict, request_id: str) -> str | None:
    """The commit a ledger entry's forget created: recorded, else the first commit after ``from`` on the head's
    line that carries the request (a ledger whose second commit was lost to a crash)."""
    if entry.get("to"):
        return entry["to"]
    hist = lin.history(repo, head)
    for older, newer in zip(hist[1:], hist[:-1]):
        if older.id == entry.get("from") and lin.carries(repo, newer.id, request_id):
            return newer.id
    return None


def classify(hub: Hub, request: TakedownRequest, record: dict | None, all_records: dict[str, dict],
             g=None, lin: CardCache | None = None) -> tuple[list[RepoState], list[dict]]:
    """Every repo of the request's affected set *now*, with its status (:class:`Status`), and the problems that
    concern the request as a whole (an origin missing from the hub)."""
    from ..lineage import affected, resolve

    g = g if g is not None else resolve(hub)
    lin = lin or CardCache(hub)
    rid = request.id
    origins = request.origin_repos
    missing = [o for o in origins if o not in g or g.nodes[o].get("missing")]
    problems = [{"request": rid, "repo": o, "kind": Status.ORIGIN_MISSING.value,
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
            for r, dist in affected(g, [repo]).items():
                depths[r] = min(depths.get(r, base + dist), base + dist)
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
        return rec.from_revision if rec else None

    def predates(repo: str, rev: str) -> bool:
        f = first_from(repo)
        return f is None or rev in set(lin.history_ids(repo, f))

    memo: dict[tuple[str, str], tuple[list[tuple[str, str]], str] | None] = {}
    # repos outside the affected set through an earlier revision of which an affected repo derives from it (the
    # graph's ``via`` edges: that revision declared a parent the repo's head no longer does)
    through = {d["via"] for _, v, d in g.edges(data=True) if v in depths and d.get("via")}

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
                if p.repo not in depths and p.repo not in through:
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
        st = RepoState(repo, depths[repo], Status.DONE, head, weights, ledger=entry)
        if lin.carries(repo, head, rid):
            if entry is None:
                st.status = Status.UNRECORDED
                st.message = (f"{repo}: its card claims request {rid} but the ledger does not prove it (no forget "
                              "of it by `fiun-hub takedown`); a takedown or --fix forgets it")
            else:
                to = _find_to(lin, repo, head, entry, rid)
                hist = lin.history(repo, head)
                ids = [c.id for c in hist]
                if to is None or to not in ids:
                    st.status = Status.WEIGHTS_CHANGED
                    st.message = (f"{repo}: its head does not descend from the revision the ledger recorded for "
                                  f"request {rid} ({(to or '?')[:12]})")
                elif hist[ids.index(to)].files.get(WEIGHTS_FILE) != entry.get("weights_sha256"):
                    st.status = Status.WEIGHTS_CHANGED
                    st.message = f"{repo}@{to[:12]}: weights differ from the sha256 the ledger recorded"
                else:
                    ok = known_weights.get(repo, set())
                    for c, parent in zip(hist[:ids.index(to)], hist[1:ids.index(to) + 1]):
                        w = c.files.get(WEIGHTS_FILE)
                        if w != parent.files.get(WEIGHTS_FILE) and w not in ok:
                            st.status = Status.WEIGHTS_CHANGED
                            st.message = (f"{repo}: weights changed at {c.id[:12]} ({c.message[:60]!r}) after the "
                                          f"forget of request {rid}, to weights the ledger never recorded")
                            break
        elif entry is not None:
            st.status = Status.LOST_RECORD
            st.message = (f"{repo}: the ledger recorded request {rid} at {(entry.get('to') or '?')[:12]}, but its "
                          f"head {head[:12]} no longer carries it")
        else:
            d = dirt(repo, head)
            if d is None:
                st.status = Status.INHERITED
                pins = [f"{p.repo}@{p.revision[:12]}" for p in lin.meta(repo, head).parents
                        if p.repo in depths or p.repo in through]
                st.message = f"derived after the takedown from {', '.join(pins)}, which carry request {rid}"
            else:
                chain, why = d
                first, cause = chain[0], chain[-1]
                via = f" (through {cause[0]}@{cause[1][:12]})" if len(chain) > 1 else ""
                if record is None or repo in origins and len(chain) == 1:
                    st.status = Status.PENDING
                    st.message = f"{repo}: request {rid} has not been applied here"
                elif why == "unpinned":
                    st.status = Status.UNPINNED_PARENT
                    st.message = f"{repo}: derived from {first[0]} without a pinned revision; cannot prove it clean"
                elif why == "lost":
                    st.status = Status.DERIVED_FROM_FLAGGED
                    st.message = (f"{repo}: derived from {first[0]}@{first[1][:12]}, which does not carry request "
                                  f"{rid}{via}")
                elif why == "card":
                    st.status = Status.PRE_FORGET_PIN
                    st.message = f"{repo}: derived from {first[0]}@{first[1][:12]}, whose card cannot be read"
                else:
                    st.status = Status.PRE_FORGET_PIN
                    st.message = (f"{repo}: derived from {first[0]}@{first[1][:12]}, a revision from before "
                                  f"request {rid} that still holds the forgotten data{via}")
        states.append(st)
    return states, problems


__all__ = ["CardCache", "RepoState", "classify"]
