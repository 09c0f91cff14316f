"""Purging pre-forget revisions: which files a takedown removes from the hub, and what is left over.

A forget lands new revisions; the revisions before it still hold the forgotten data. A purge replaces their
weights and sidecars with tombstones (docs/hub-layout.md, "Tombstones"; the storage step is
:meth:`fiun_hub.hub.local.LocalHub.publish`'s ``purge``) and deletes the blobs no kept revision of the repo names.
This module is the policy: which revisions and files (:func:`purge_entries`), the legal holds and the origins'
unlearning-FIM sidecars that are kept, and what an audit still finds on disk (:func:`leftovers`).

What a purge removes, per repo, walking the first-parent history back from the revision the forget started from:
every revision that does not carry the request (it holds the data), except revisions under a recorded legal hold.
Of each, every file but the card, ``config.json`` and ``.gitattributes`` (history, ``log``, lineage pins keep
working). Kept on purpose, and recorded: the sidecars of each origin's pre-forget revision, the source of the
request's unlearning FIM, which ``audit --fix`` needs for a derivative found later (docs/takedowns.md, "Purge").
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import AbstractSet, Any, Iterable, Mapping

from .constants import (CARD_FILE, CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE, FINDING_UNPURGED, LEDGER_FORGOT,
                        LEDGER_REPO, PROTO_FILE, WEIGHTS_FILE)
from .errors import BadInput
from .hub.base import Blob, Hub, PurgeHub, RepoChange
from .hub.local import LocalHub, sha256_file
from .repo import read_meta

KEPT_FILES = frozenset({CARD_FILE, CONFIG_FILE, ".gitattributes"})
FIM_SOURCE_FILES = (FIM_FILE, FIM_CLASSES_FILE)
SIDECAR_FILES = frozenset({FIM_FILE, FIM_CLASSES_FILE, PROTO_FILE})  # not weights


def purgeable(path: str) -> bool:
    """Whether a purge removes ``path`` from a revision that holds the data (everything but card and config)."""
    return path not in KEPT_FILES


def _carries(hub: Hub, repo: str, cid: str, request_id: str) -> bool:
    try:
        return read_meta(hub, repo, cid).record(request_id) is not None
    except BadInput:
        return False  # an unreadable card proves nothing: the revision holds the data


def holding_revisions(hub: Hub, repo: str, start: str, request_id: str) -> list[str]:
    """The revisions from ``start`` back (first parents) that still hold what ``request_id`` forgets: those that
    do not carry it."""
    return [c.id for c in hub.history(repo, start) if not _carries(hub, repo, c.id, request_id)]


def holds(records: Mapping[str, dict]) -> set[tuple[str, str]]:
    """``(repo, commit)`` of every revision kept under a legal hold by any ledger request."""
    out = set()
    for rec in records.values():
        for ev in rec.get("events", []):
            for repo, cids in ((ev.get("hold") or {}).get("revisions") or {}).items():
                out |= {(repo, c) for c in cids}
    return out


def kept_revisions(records: Mapping[str, dict], but: str | None = None) -> set[tuple[str, str]]:
    """``(repo, commit)`` of every post-forget revision a recorded request other than ``but`` produced: another
    request's purge never touches them (issue 15: a purge never touches another request's kept revisions)."""
    out = set()
    for rid, rec in records.items():
        if rid == but:
            continue
        for ev in rec.get("events", []):
            for repo, e in (ev.get("repos") or {}).items():
                if e.get("to"):
                    out.add((repo, e["to"]))
        for repo, e in (rec.get("repos") or {}).items():
            if isinstance(e, dict) and e.get("to"):
                out.add((repo, e["to"]))
    return out


def fim_sources(records: Mapping[str, dict], extra: Iterable[str] = ()) -> set[tuple[str, str]]:
    """``(origin, revision)`` whose sidecars are the unlearning FIM of a recorded request (kept by a purge)."""
    out = set()
    for spec in [o for rec in records.values() for ev in rec.get("events", []) for o in ev.get("origins") or []] + \
            list(extra):
        repo, _, rev = spec.partition("@")
        if rev:
            out.add((repo, rev))
    return out


def purge_entries(hub: PurgeHub, request_id: str, starts: Mapping[str, str | None], at: str, *,
                  held: AbstractSet[tuple[str, str]] = frozenset(),
                  fim_keep: AbstractSet[tuple[str, str]] = frozenset(), include_tombstoned: bool = False) -> list[dict]:
    """Tombstones for a purge of ``request_id``: ``starts`` maps each repo to the revision its forget started
    from. Files already tombstoned are left out (unless ``include_tombstoned``: an audit's re-check)."""
    out, seen = [], set()
    for repo, start in sorted(starts.items()):
        if not start:
            continue
        for cid in holding_revisions(hub, repo, start, request_id):
            if (repo, cid) in held or (repo, cid) in seen:
                continue
            seen.add((repo, cid))
            info = hub.commit_info(repo, cid)
            stones = hub.tombstones(repo, cid)
            for path, sha in sorted(info.files.items()):
                if not purgeable(path) or (path in stones and not include_tombstoned):
                    continue
                if (repo, cid) in fim_keep and path in FIM_SOURCE_FILES:
                    continue
                out.append({"repo": repo, "commit": cid, "path": path, "sha256": sha,
                            "size": info.sizes.get(path), "request": request_id, "at": at})
    return out


def derived_history_starts(hub: Hub, request_id: str, starts: Mapping[str, Iterable[str]],
                           entries: Mapping[str, dict] | None = None) -> dict[str, str]:
    """Where else a purge of ``request_id`` must start: repos outside ``starts`` whose *earlier* revisions declared a
    parent at a revision that holds the data (one a purge from ``starts`` walks), though their head no longer does
    (re-pushed without that parent: the lineage index's ``former_parents``). Each such revision is a derivative of
    the data; the repo's head, which declares other parents, is not. ``starts``: repo -> the revisions a purge
    walks back from; ``entries``: the lineage index's (read when not given). Returns repo -> the newest such
    revision (walk back from it), closed over chains of them."""
    from .lineage import index_entries

    entries = index_entries(hub) if entries is None else entries
    former = {r: e["former_parents"] for r, e in entries.items() if e.get("former_parents")}
    if not former:
        return {}
    holding = {repo: {c for s in froms if s for c in holding_revisions(hub, repo, s, request_id)}
               for repo, froms in starts.items()}
    out: dict[str, str] = {}
    grew = True
    while grew:
        grew = False
        for repo, revs in sorted(former.items()):
            if repo in holding or not hub.repo_exists(repo):
                continue
            hit = {rev for rev, pins in revs.items()
                   if any(p["revision"] in holding.get(p["repo"], ()) for p in pins)}
            if not hit:
                continue
            newest = next((c.id for c in hub.history(repo) if c.id in hit), None)
            if newest is None:
                continue
            out[repo] = newest
            holding[repo] = set(holding_revisions(hub, repo, newest, request_id))
            grew = True
    return out


def held_revisions(hub: Hub, request_id: str, starts: Mapping[str, str | None]) -> dict[str, list[str]]:
    """What a ``--keep-history`` takedown keeps: per repo, the revisions that still hold the data."""
    return {repo: holding_revisions(hub, repo, start, request_id) for repo, start in sorted(starts.items()) if start}


def summary(hub: PurgeHub, entries: list[dict], live: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """The ledger's record of a purge: per repo the purged files (revision, path, sha256, size), and the blobs
    (and bytes) it deletes."""
    blobs = hub.purge_blobs(entries, live)
    size = {(e["repo"], e["sha256"]): e.get("size") or 0 for e in entries}
    files: dict[str, list[dict]] = {}
    for e in entries:
        files.setdefault(e["repo"], []).append({k: e[k] for k in ("commit", "path", "sha256", "size")})
    return {"files": files, "blobs": len(blobs), "bytes_removed": sum(size[(b["repo"], b["sha256"])] for b in blobs),
            "revisions": len({(e["repo"], e["commit"]) for e in entries})}


def change_live(hub: Hub, changes: Iterable[RepoChange]) -> set[tuple[str, str]]:
    """``(repo, sha256)`` that the new revisions of ``changes`` will name (kept by the purge in their publish)."""
    out = set()
    for ch in changes:
        if ch.parent_commit:
            tree = hub.list_files(ch.repo, ch.parent_commit)
            out |= {(ch.repo, sha) for p, sha in tree.items() if p not in ch.files and p not in ch.delete}
        for content in ch.files.values():
            if isinstance(content, Blob):
                out.add((ch.repo, content.sha256))
            elif isinstance(content, (bytes, bytearray)):
                out.add((ch.repo, hashlib.sha256(content).hexdigest()))
            elif isinstance(content, Path):
                out.add((ch.repo, sha256_file(content)))
    return out


class PurgingHub(LocalHub):
    """The hub as :func:`fiun_hub.unlearn.run_forget` sees it for ``forget --purge``: its publish also purges the
    pre-forget revisions of every repo it lands, in the same journaled step. ``last`` is the purge's summary."""

    def __init__(self, hub: LocalHub, request_id: str, at: str):
        super().__init__(hub.root, recover=False)
        self.request_id, self.at = request_id, at
        self.last: dict[str, Any] | None = None

    def publish(self, changes, *, author=None, precondition=None, purge=None):
        changes = list(changes)
        starts: dict[str, str | None] = {c.repo: c.parent_commit for c in changes}
        starts.update(derived_history_starts(self, self.request_id, {r: [c] for r, c in starts.items() if c}))
        entries = list(purge or []) + purge_entries(self, self.request_id, starts, self.at)
        self.last = summary(self, entries, change_live(self, changes))
        return super().publish(changes, author=author, precondition=precondition, purge=entries)


# ------------------------------------------------------------------------------------------------ audit
def purged_shas(hub: LocalHub, freed_only: bool = False) -> dict[tuple[str, str], dict]:
    """``{(repo, sha256): tombstone}`` of every purged file in the hub (one read per tombstone record); with
    ``freed_only``, only those whose blob the purge deleted (others are still named by a kept revision). A LocalHub:
    it reads the tombstone records in the hub's folder (as do :func:`stray_files`, :func:`leftovers` and
    :func:`purge_leftovers`, which look for the purged bytes in its blob stores and staging too)."""
    out: dict[tuple[str, str], dict] = {}
    base = hub.meta / "purged"
    for path in sorted(base.glob("*/*.json")) if base.is_dir() else []:
        try:
            rec = json.loads(path.read_bytes())
            for p, stone in rec["files"].items():
                if freed_only and not stone.get("freed"):
                    continue
                out.setdefault((rec["repo"], stone["sha256"]), {**stone, "commit": rec["commit"], "path": p})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # verify reports an unreadable record
    return out


def live_shas(hub: PurgeHub, repo: str) -> dict[str, str]:
    """``{sha256: commit}`` of the blobs some commit of ``repo`` names outside a tombstone."""
    out: dict[str, str] = {}
    for cid in hub.commits(repo):
        try:
            files = hub.commit_info(repo, cid).files
            stones = hub.tombstones(repo, cid)
        except BadInput:
            continue
        for p, sha in files.items():
            if p not in stones:
                out.setdefault(sha, cid)
    return out


def stray_files(hub: LocalHub) -> list[Path]:
    """Files that are not blobs yet: serve's staged uploads and the writers' temporary files in ``blobs/``."""
    out = []
    staging = hub.meta / "serve-staging"
    if staging.is_dir():
        out += [p for p in staging.rglob("*") if p.is_file() and not p.is_symlink()]
    for entry in os.scandir(hub.root):
        if entry.name.startswith("models--") and not entry.is_symlink():
            blobs = Path(entry.path) / "blobs"
            if blobs.is_dir() and not blobs.is_symlink():
                out += [p for p in blobs.iterdir() if p.name.startswith(".") and p.is_file() and not p.is_symlink()]
    return out


def leftovers(hub: LocalHub, request_id: str, record: dict, records: Mapping[str, dict], *,
              at: str) -> dict[str, Any]:
    """What a purge of ``request_id`` should have removed and is still on disk, and what it keeps on hold:
    ``{"entries": [tombstones to (re)write], "blobs": [{"repo", "sha256", "where"}], "strays": [paths],
    "held": {repo: [commits]}, "findings": [...]}``. ``at``: the time the tombstones record (the caller's clock:
    compliance passes its own, which the tests fix)."""
    held_all = holds(records) | kept_revisions(records, request_id)
    mine = {(r, c) for ev in record.get("events", []) for r, cs in ((ev.get("hold") or {}).get("revisions")
                                                                    or {}).items() for c in cs}
    keep = fim_sources(records)
    starts: dict[str, set[str]] = {}
    for ev in record.get("events", []):
        for repo, e in (ev.get("repos") or {}).items():
            if e.get("action") == LEDGER_FORGOT and e.get("from") and hub.repo_exists(repo):
                starts.setdefault(repo, set()).add(e["from"])
    from .lineage import resolve_entries

    g, index = resolve_entries(hub)
    for repo, start in derived_history_starts(hub, request_id, starts, index).items():
        starts.setdefault(repo, set()).add(start)
    entries: list[dict] = []
    for repo, froms in sorted(starts.items()):
        for start in sorted(froms):
            try:
                entries += purge_entries(hub, request_id, {repo: start}, at, held=held_all, fim_keep=keep,
                                         include_tombstoned=True)
            except BadInput:
                continue
    uniq = {(e["repo"], e["commit"], e["path"]): e for e in entries}
    entries = list(uniq.values())
    findings, todo = [], []
    live_cache: dict[str, dict[str, str]] = {}

    def live(repo: str) -> dict[str, str]:
        if repo not in live_cache:
            live_cache[repo] = live_shas(hub, repo)
        return live_cache[repo]

    for e in entries:
        stoned = e["path"] in hub.tombstones(e["repo"], e["commit"])
        on_disk = hub.blob_path(e["repo"], e["sha256"]).is_file()
        if not stoned or (on_disk and e["sha256"] not in live(e["repo"])):
            todo.append(e)
    per_repo: dict[str, list[dict]] = {}
    for e in todo:
        per_repo.setdefault(e["repo"], []).append(e)
    for repo, es in sorted(per_repo.items()):
        findings.append({"request": request_id, "repo": repo, "kind": FINDING_UNPURGED,
                         "message": f"{repo}: {len(es)} file(s) of {len({e['commit'] for e in es})} pre-forget "
                                    f"revision(s) still hold the data of request {request_id} "
                                    f"(e.g. {es[0]['commit'][:12]} {es[0]['path']})"})
    hidden, hidden_findings = hidden_copies(hub, request_id, record, held_all, at, g)
    todo += hidden
    findings += hidden_findings
    # Anywhere in the hub: a blob or a staged file whose sha256 is one this request purged.
    stones = {k: v for k, v in purged_shas(hub, freed_only=True).items() if v.get("request") == request_id}
    shas = {sha for _, sha in stones}
    blobs, strays = [], []
    for repo in hub.list_repos():
        bdir = hub.repo_dir(repo) / "blobs"
        names = {p.name for p in bdir.iterdir()} if bdir.is_dir() else set()
        for sha in sorted(names & shas):
            if any(e["repo"] == repo and e["sha256"] == sha for e in todo):
                continue  # already named above
            where = live(repo).get(sha)
            blobs.append({"repo": repo, "sha256": sha, "where": where})
            findings.append({"request": request_id, "repo": repo, "kind": FINDING_UNPURGED,
                             "message": f"{repo}: blob {sha[:12]}, purged by request {request_id}, is back in the hub"
                                        + (f" (named by revision {where[:12]})" if where else "")})
    for path in stray_files(hub):
        try:
            sha = sha256_file(path)
        except OSError:
            continue
        if sha in shas:
            strays.append(path)
            findings.append({"request": request_id, "repo": "", "kind": FINDING_UNPURGED,
                             "message": f"{path.relative_to(hub.root)} holds a file purged by request {request_id} "
                                        f"(sha256 {sha[:12]})"})
    held: dict[str, list[str]] = {}
    for repo, cid in sorted(mine):
        held.setdefault(repo, []).append(cid)
    return {"entries": todo, "blobs": blobs, "strays": strays, "held": held, "findings": findings}


def _purged_by(hub: PurgeHub, repo: str, cid: str, request_id: str) -> bool:
    try:
        return any(isinstance(s, dict) and s.get("request") == request_id for s in hub.tombstones(repo, cid).values())
    except BadInput:
        return False  # an unreadable tombstone record: verify reports it


def hidden_copies(hub: LocalHub, request_id: str, record: dict, held: AbstractSet[tuple[str, str]],
                  at: str, g=None) -> tuple[list[dict], list[dict]]:
    """What still holds a request's data in a repo its record does not name, where the classification does not
    look: a revision behind the head whose card pins a revision this request purged; and, outside the affected set
    (declaring no affected parent), a revision behind the head, or a head's safetensors file other than its
    weights, that looks derived from the pre-forget weights of a repo it forgot (the fingerprints, as for
    undeclared derivatives). A later commit on top, or another file name, hides nothing. Returns ``(tombstone
    entries: every purgeable file of such a revision, or that one file of a head; findings unpurged)``; ``g``: the
    lineage graph (resolved when not given)."""
    from .fingerprint import fingerprint_of, relate
    from .lineage import affected, resolve

    recorded = {r for r in (record.get("repos") or {}) if hub.repo_exists(r)}
    g = resolve(hub) if g is None else g
    scope = set(affected(g, sorted(r for r in recorded if r in g))) | recorded
    sources: dict = {}
    for repo in sorted(recorded):
        e = record["repos"][repo]
        rev = e.get("first_from") or e.get("from")
        try:
            w = hub.commit_info(repo, rev).files.get(WEIGHTS_FILE) if rev else None
            fp = fingerprint_of(hub, repo, w, where=f"{repo}@{rev[:12]}") if w and rev else None
        except BadInput:
            continue
        if fp is not None:
            sources[("source", f"{repo}@{rev}")] = fp
    why: dict[tuple[str, str, str | None], str] = {}  # (repo, commit, path or None: the whole revision) -> why
    items: dict = {}
    for repo in hub.list_repos():
        if repo in recorded or repo == LEDGER_REPO:
            continue
        head = hub.head(repo)
        for cid in hub.commits(repo):
            if (repo, cid) in held:
                continue
            try:
                files, stones = hub.commit_info(repo, cid).files, hub.tombstones(repo, cid)
                parents = read_meta(hub, repo, cid).parents if CARD_FILE in files else []
            except BadInput:
                files, stones, parents = {}, {}, []
            pins = [p for p in parents if _purged_by(hub, p.repo, p.revision, request_id)]
            if cid != head and pins and WEIGHTS_FILE in files and WEIGHTS_FILE not in stones:
                why[(repo, cid, None)] = (f"its card pins {pins[0].repo}@{pins[0].revision[:12]}, which request "
                                          f"{request_id} purged")
                continue
            if not sources or repo in scope or any(p.repo in scope for p in parents):
                continue
            for path, sha in sorted(files.items()):
                weights_like = path.endswith(".safetensors") and path not in SIDECAR_FILES
                if not weights_like or path in stones or (cid == head and path == WEIGHTS_FILE):
                    continue  # a head's weights: the classification's undeclared-derivative check
                fp = fingerprint_of(hub, repo, sha, where=f"{repo}@{cid[:12]} {path}")
                if fp is not None:
                    items[(repo, cid, None if cid != head else path)] = fp
    if items:
        pairs, merges = relate({**items, **sources}, set(sources))
        found = [(a, b, ev) for (a, b), (_, ev) in pairs.items()]
        found += [(child, p, evs[p]) for child, ps, _, evs in merges for p, _ in ps]
        for a, b, ev in sorted(found, key=str):
            src, other = (a, b) if a in sources else (b, a)
            if src in sources and other in items and other not in why:
                e, (srepo, _, srev) = ev.to_dict(), src[1].partition("@")
                why[other] = (f"{'its' if other[2] is None else 'the'} weights look derived from {srepo}@{srev[:12]} "
                              f"(before the forget; {e.get('identical_tensors', 0)}/{e.get('shared_tensors', 0)} "
                              "tensors identical)")
    entries, findings = [], []
    for (repo, cid, only), reason in sorted(why.items(), key=str):
        info, stones = hub.commit_info(repo, cid), hub.tombstones(repo, cid)
        entries += [{"repo": repo, "commit": cid, "path": p, "sha256": sha, "size": info.sizes.get(p),
                     "request": request_id, "at": at}
                    for p, sha in sorted(info.files.items())
                    if (p == only if only is not None else purgeable(p)) and p not in stones]
        where = f"revision {cid[:12]} (behind its head)" if only is None else f"{only} at its head {cid[:12]}"
        findings.append({"request": request_id, "repo": repo, "kind": FINDING_UNPURGED,
                         "message": f"{repo}: {where} still holds the data of request {request_id}: {reason}"})
    return entries, findings


def purge_leftovers(hub: LocalHub, request_id: str, left: dict[str, Any],
                    changes: list[RepoChange] | None = None) -> dict[str, Any]:
    """Remove what :func:`leftovers` found: tombstones and blobs in one journaled step (with ``changes``, the
    ledger's record of it), the stray files, and the blobs back in the hub that no kept revision names. A blob a
    live revision names again is left (its revision is not a pre-forget one) and stays a finding."""
    entries = left["entries"]
    for b in left["blobs"]:
        if b["where"] is None:  # reappeared, named by nothing: an entry of its tombstone deletes it again
            stone = purged_shas(hub).get((b["repo"], b["sha256"]))
            if stone is not None:
                entries.append({"repo": b["repo"], "commit": stone["commit"], "path": stone["path"],
                                "sha256": b["sha256"], "size": stone.get("size"), "request": request_id,
                                "at": stone.get("at")})
    out = summary(hub, entries)
    with hub.lock():
        for path in left["strays"]:
            Path(path).unlink(missing_ok=True)
        hub.purge(entries, changes)
    out["strays"] = len(left["strays"])
    return out


__all__ = ["purgeable", "purge_entries", "derived_history_starts", "held_revisions", "summary", "PurgingHub",
           "leftovers", "purge_leftovers", "holds", "kept_revisions", "fim_sources", "hidden_copies", "KEPT_FILES"]
