"""``fiun-hub verify``: the integrity of a LocalHub, checked from the bytes up.

Checks: every blob's content matches its sha256 name; every ref names a commit record of that repo; every
commit's snapshot lists exactly its files but the purged ones (tombstones) and each entry points at the right blob;
every file a commit names has its blob, unless a tombstone says it was purged; a purged blob that no kept revision
names is not back in ``blobs/``; no unfinished journal; the lineage index agrees with a rebuild from the cards.
"""
from __future__ import annotations

import json
import os
import time

from .constants import FIUN_DIR
from .hub.ids import COMMIT_RE, repo_from_folder
from .hub.local import DamagedJournal, LocalHub, guarded_paths, link_problem, sha256_file
from .lineage import index_entry, read_index_file, rebuild_index, write_index_file


def verify(hub: LocalHub, attempts: int = 3) -> list[str]:
    """One line per problem found; an empty list means the hub is sound.

    Verify takes no lock: when it found problems while a publish was landing (the hub's generation moved, or a
    journal is there), what it saw may straddle that publish (the index of one moment, the refs of another), so it
    looks again, up to ``attempts`` times in all."""
    journal = hub.root / FIUN_DIR / "journal.json"
    for attempt in range(max(attempts, 1)):
        generation = hub.generation()
        problems = _verify_once(hub)
        if not problems or (hub.generation() == generation and not journal.exists()):
            break
        if attempt + 1 < attempts:
            time.sleep(0.05 * (attempt + 1))
    return problems


def _verify_once(hub: LocalHub) -> list[str]:
    problems: list[str] = []
    if (hub.root / FIUN_DIR / "journal.json").exists():
        try:
            hub.journal_moves()
            problems.append("unfinished publish journal in .fiun/journal.json (open the hub with a write to finish it)")
        except DamagedJournal as exc:
            problems.append(str(exc))
    links = []
    for entry in sorted(hub.root.iterdir()):
        if entry.name.startswith("models--"):
            repo = repo_from_folder(entry.name) or entry.name
            for p in guarded_paths(entry):
                if p.is_symlink():
                    links.append(link_problem(hub.root, repo, p))
                    break  # nothing behind a link is looked at
    if links:
        return problems + links  # nothing behind a link is read
    repos = hub.list_repos()
    for repo in repos:
        rdir = hub.repo_dir(repo)
        blobs = rdir / "blobs"
        for blob in sorted(blobs.iterdir()) if blobs.is_dir() else []:
            if blob.name.startswith("."):
                continue
            if blob.is_symlink() or not blob.is_file():
                problems.append(f"{repo}: blob {blob.name[:12]} is not a regular file")
            elif sha256_file(blob) != blob.name:
                problems.append(f"{repo}: blob {blob.name[:12]} is corrupt (content does not match its sha256)")
        try:
            refs = hub.refs(repo)
        except Exception as exc:
            problems.append(f"{repo}: unreadable refs: {exc}")
            continue
        raw_main = (rdir / "refs" / "main").read_bytes()
        if not COMMIT_RE.match(raw_main.decode(errors="replace")):
            problems.append(f"{repo}: refs/main is not a bare 40-hex commit id")
        for kind, named in refs.items():
            for name, cid in named.items():
                try:
                    hub.commit_info(repo, cid)
                except Exception:
                    problems.append(f"{repo}: {kind[:-1]} {name} points at unknown commit {cid[:12]}")
        live: set[str] = set()
        purged: dict[str | None, dict] = {}  # sha256 (None: a tombstone of no file) -> its tombstone
        for cid in hub.commits(repo):
            try:
                info = hub.commit_info(repo, cid)
                stones = hub.tombstones(repo, cid)
            except Exception as exc:
                problems.append(f"{repo}: commit {cid[:12]}: {exc}")
                continue
            snap = rdir / "snapshots" / cid
            listed = {str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file() or p.is_symlink()}
            kept = set(info.files) - set(stones)
            if listed != kept:
                problems.append(f"{repo}: snapshot {cid[:12]} lists {sorted(listed ^ kept)[:3]} "
                                "differently from its commit and tombstones")
            for path, stone in stones.items():
                if info.files.get(path) != stone.get("sha256"):
                    problems.append(f"{repo}@{cid[:12]}: tombstone of {path} names another file than the commit")
                purged.setdefault(info.files.get(path), stone)
            for path, sha in info.files.items():
                if path in stones:
                    continue
                live.add(sha)
                if not (blobs / sha).is_file():
                    problems.append(f"{repo}@{cid[:12]}: blob of {path} is missing")
                    continue
                entry = snap / path
                if entry.is_symlink():
                    target = (entry.parent / os.readlink(entry)).resolve()
                    if target != (blobs / sha).resolve():
                        problems.append(f"{repo}@{cid[:12]}: {path} links to the wrong blob")
        for sha, stone in sorted((k, v) for k, v in purged.items() if k and k not in live):
            if (blobs / sha).exists():
                problems.append(f"{repo}: blob {sha[:12]} was purged by request {stone.get('request')} but is back "
                                "in blobs/ (`fiun-hub audit --fix` removes it)")
    index = read_index_file(hub)
    if index is None:
        problems.append("lineage index .fiun/lineage.json is missing or unreadable")
    else:
        fresh = {}
        for repo in repos:
            try:
                fresh[repo] = index_entry(hub, repo)
            except Exception as exc:  # reported, not raised: verify lists what is wrong
                problems.append(f"{repo}: head unreadable: {exc}")
        for repo in sorted(set(index) | set(fresh)):
            if json.dumps(index.get(repo), sort_keys=True) != json.dumps(fresh.get(repo), sort_keys=True):
                problems.append(f"{repo}: lineage index disagrees with the cards")
    return problems


def repair_index(hub: LocalHub) -> int:
    """Rewrite the lineage index from the cards; returns the number of repos indexed."""

    with hub.lock():
        fresh = rebuild_index(hub)
        write_index_file(hub, fresh)
    return len(fresh)


__all__ = ["verify", "repair_index"]
