"""LocalHub: versioned model repos in the Hugging Face cache layout (docs/hub-layout.md).

```
HUB/models--{org}--{name}/blobs/{sha256}            immutable, content-addressed
HUB/models--{org}--{name}/snapshots/{commit}/{path}  relative symlink to ../../blobs/{sha256}
HUB/models--{org}--{name}/refs/main                  head commit id, 40 hex, no newline
HUB/models--{org}--{name}/refs/tags/{tag}            tag -> commit id
HUB/.fiun/hub.json                                   marks the folder as a hub
HUB/.fiun/commits/{id[:2]}/{id}.json                 commit records (repo, parents, author, time, message, files)
HUB/.fiun/journal.json                               ref moves of an unfinished publish (crash recovery)
HUB/.fiun/generation                                 a counter bumped after every set of ref moves (readers' check)
HUB/.fiun/lineage.json                               the lineage index, rewritten on every publish
HUB/.fiun/lock                                       the writers' lock (flock)
HUB/.fiun/purged/{id[:2]}/{id}.json                  tombstones: files of commit {id} a takedown purged
HUB/models--{org}--{name}/.no_exist/{commit}/{path}  the HF cache's "no such file at this revision" marker
```

Blobs, commits and snapshots are written first and are invisible until a ref points at them; the ref moves of
one publish are recorded in a journal (fsync'ed) and then applied by atomic renames, so a publish over many
repos lands whole or, after a crash, is finished by the next process that opens the hub.

Readers take no lock. The moment a publish lands is the removal of its journal: while a journal exists, every
read (``head``, ``resolve``, ``refs``, ``list_repos``, ``repo_exists``, ``heads``) reports the heads it records as
``old``, so a ref already renamed by an unfinished publish is never seen. A read of many refs (``heads``, ``refs``)
is also checked against ``.fiun/generation``, which each publish bumps after its last ref move and before it
removes the journal: a read during which the generation changed is done again (a seqlock), so it never mixes heads
from before and after one publish. See docs/hub-layout.md, "Readers".
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Protocol

from ..constants import DEFAULT_AUTHOR, DEFAULT_BRANCH, FIUN_DIR, NO_SPACE
from ..errors import (
    BadInput,
    ConflictError,
    EntryNotFound,
    HubNotFound,
    RepoNotFound,
    RevisionNotFound,
)
from .base import (  # the shared records live in hub/base.py; importable from here as before
    ATOMIC_PUBLISH,
    BLOB_STORE,
    CONSISTENT_HEADS,
    LOCAL_FOLDER,
    LOCK,
    PURGE,
    Blob,
    CommitInfo,
    RepoChange,
    check_card_write,
    check_changes,
    purged_error,
)
from ..safetensors_io import read_header
from .staging import Staging
from .ids import (
    COMMIT_RE,
    repo_folder_name,
    repo_from_folder,
    validate_ref_name,
    validate_repo_id,
    validate_tag_name,
    validate_repo_path,
)

HUB_FORMAT = "fiun-hub/1"
TOMBSTONE_FORMAT = "fiun-hub-tombstones/1"
LOCK_TIMEOUT_S = float(os.environ.get("FIUN_HUB_LOCK_TIMEOUT", "120"))
_CHUNK = 1 << 20


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # (a full disk): leave no half-written temporary behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


def sync_filesystem(path: Path) -> None:
    """Flush every pending write on the file system holding ``path``: one ``syncfs`` for a whole batch of
    files, instead of one ``fsync`` per file (falls back to ``os.sync``)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


_GUARDED = ("", "/refs", "/blobs", "/snapshots", f"/refs/{DEFAULT_BRANCH}")


def guarded_paths(repo_folder: Path) -> tuple[Path, ...]:
    """The parts of a repo folder that must never be symlinks (only snapshot entries are links)."""
    return tuple(Path(f"{repo_folder}{part}") for part in _GUARDED)


def link_problem(root: Path, repo: str, link: Path) -> str:
    """One line naming a symlink found where a hub holds none, the repo and where the link leads."""
    rel = link.relative_to(root).as_posix() if link.is_relative_to(root) else str(link)
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    try:
        inside = link.resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):  # a loop of links
        inside = False
    where = "inside the hub" if inside else "outside the hub"
    return f"{repo}: {rel} is a symlink to {target!r} ({where}); a hub holds no links but its snapshot entries"


def commit_id(record: Mapping) -> str:
    """40-hex id derived from a commit's content (repo, tree, parents, author, time, message)."""
    body = {k: record[k] for k in ("repo", "files", "parents", "author", "time", "message")}
    return hashlib.sha1(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_NOT_MOVED = object()


class DamagedJournal(BadInput):
    """``.fiun/journal.json`` parses but is not a journal a publish writes."""


def _str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _record_problem(record: object) -> str | None:
    """What is wrong with a commit record's shape (None: every field CommitInfo holds, of its type)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key in ("id", "repo", "author", "time", "message"):
        if not isinstance(record.get(key), str):
            return f"{key!r} missing or not a string"
    parents = record.get("parents")
    if not isinstance(parents, list) or not all(isinstance(p, str) and COMMIT_RE.match(p) for p in parents):
        return "'parents' missing or not a list of commit ids"
    if not _str_map(record.get("files")):
        return "'files' missing or not a map of path to sha256"
    sizes = record.get("sizes", {})
    if not isinstance(sizes, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes.values()):
        return "'sizes' is not a map of path to size"
    return None


class LocalHub:
    """A hub directory. Reads need no lock; writes go through :meth:`publish` (or :meth:`tag`) under the lock."""

    # Everything hub/base.py names but PURGE_HISTORY (a purge here is a tombstoned publish: :meth:`purge`).
    capabilities = frozenset({ATOMIC_PUBLISH, LOCK, CONSISTENT_HEADS, LOCAL_FOLDER, BLOB_STORE, PURGE})

    def __init__(self, root: str | os.PathLike, *, recover: bool = True):
        self.root = Path(root).expanduser().absolute()
        self.meta = self.root / FIUN_DIR
        self._root = str(self.root)
        self._lock_owner: int | None = None  # the thread holding the writers' lock through this handle
        self._journal = str(self.meta / "journal.json")
        self._generation_file = str(self.meta / "generation")
        if not (self.meta / "hub.json").is_file():
            raise HubNotFound(f"no fiun-hub hub at {self.root}; create one with `fiun-hub --hub {self.root} init`")
        if recover and (self.meta / "journal.json").exists():
            self._try_recover()

    # ------------------------------------------------------------------ creation
    @classmethod
    def init(cls, root: str | os.PathLike, exist_ok: bool = True) -> "LocalHub":
        """Create an empty hub (or open an existing one when ``exist_ok``)."""
        root = Path(root).expanduser().absolute()
        marker = root / FIUN_DIR / "hub.json"
        if marker.is_file():
            if not exist_ok:
                raise BadInput(f"a hub already exists at {root}")
            return cls(root)
        if root.exists() and not root.is_dir():
            raise BadInput(f"{root} exists and is not a directory")
        if root.is_dir() and any(p.name != FIUN_DIR for p in root.iterdir()):
            raise BadInput(f"{root} is not empty and is not a hub; pick an empty or new folder")
        (root / FIUN_DIR / "commits").mkdir(parents=True, exist_ok=True)
        atomic_write(marker, json.dumps({"format": HUB_FORMAT, "created": _now()}).encode())
        return cls(root)

    # ------------------------------------------------------------------ paths
    def repo_dir(self, repo: str) -> Path:
        """The repo's folder. A repo folder, or its ``refs``, ``blobs``, ``snapshots`` folder or ``refs/main``,
        that is a symlink is refused (:class:`BadInput` naming the repo and the link) before anything reads or
        writes through it: it could lead out of the hub."""
        folder = os.path.join(self._root, repo_folder_name(repo))
        for part in _GUARDED:  # os.path on strings: ~1.5 us a check, where pathlib takes ~10
            if os.path.islink(folder + part):
                raise BadInput(link_problem(self.root, repo, Path(folder + part)) + " (run `fiun-hub verify`)")
        return Path(folder)

    def _commit_path(self, cid: str) -> Path:
        return self.meta / "commits" / cid[:2] / f"{cid}.json"

    # ------------------------------------------------------------------ reads
    def _scan_repos(self) -> list[str]:
        out = []
        for entry in os.scandir(self.root):
            repo = repo_from_folder(entry.name)
            if repo and not entry.is_symlink() and os.path.isfile(os.path.join(entry.path, "refs", DEFAULT_BRANCH)):
                out.append(repo)
        return sorted(out)

    def list_repos(self) -> list[str]:
        """Every repo with a head (a repo an unfinished publish is creating is not listed yet)."""
        out = self._scan_repos()
        pending = self._pending()
        if pending:
            out = [r for r in out if pending.get((r, DEFAULT_BRANCH), _NOT_MOVED) is not None]
        return out

    def repo_exists(self, repo: str) -> bool:
        exists = (self.repo_dir(repo) / "refs" / DEFAULT_BRANCH).is_file()
        return exists and self._pending().get((repo, DEFAULT_BRANCH), _NOT_MOVED) is not None

    def head(self, repo: str) -> str:
        return self.resolve(repo, DEFAULT_BRANCH)

    def heads(self, repos: Iterable[str] | None = None) -> dict[str, str]:
        """``{repo: head}`` of ``repos`` (default: every repo), all as of one moment: never some refs of a
        publish moved and others not, whatever the writers do meanwhile, and without a lock.

        Seqlock: read ``.fiun/generation``, the refs, the journal, the generation again; a read during which the
        generation changed (a publish landed) is done again. A journal still present (a publish moving refs, or
        one a crash left) stands for its ``old`` heads. Costs two small reads on top of one read per ref."""
        names = None if repos is None else list(dict.fromkeys(repos))
        dirs: dict[str, Path] = {r: self.repo_dir(r) for r in names} if names is not None else {}  # (else: below)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            generation = self._generation()
            if names is None:
                dirs = {r: self.repo_dir(r) for r in self._scan_repos()}  # (refuses links, as head() does)
            out = {r: self._read_ref(d / "refs" / DEFAULT_BRANCH) for r, d in dirs.items()}
            pending = self._pending()
            if self._generation() == generation:
                break
            if time.monotonic() > deadline:
                raise ConflictError(f"hub {self.root} kept changing for {LOCK_TIMEOUT_S:.0f}s while reading heads; "
                                    "try again")
            time.sleep(0.001)
        for (repo, ref), old in pending.items():
            if ref == DEFAULT_BRANCH and repo in out:
                out[repo] = old
        for repo in [r for r, cid in out.items() if cid is None]:
            if names is None:  # being created by an unfinished publish, or refs/main unreadable: not a repo yet
                del out[repo]
            elif (dirs[repo] / "refs" / DEFAULT_BRANCH).is_file() and (repo, DEFAULT_BRANCH) not in pending:
                raise RevisionNotFound(f"refs/main of {repo} is not a commit id; run `fiun-hub verify`")
            else:
                raise RepoNotFound(f"repo {repo} not found in hub {self.root}")
        return {r: cid for r, cid in out.items() if cid is not None}  # (every None was dropped or raised above)

    def generation(self) -> int:
        """The hub's generation: bumped after the ref moves of every publish, tag move and journal recovery."""
        try:
            return int(self._generation() or 0)
        except ValueError:
            return -1

    def _generation(self) -> bytes:
        try:
            with open(self._generation_file, "rb") as fh:
                return fh.read(64)
        except OSError:
            return b""

    def _bump_generation(self) -> None:
        """Under the lock, after a set of ref moves and before the journal goes (readers retry across it)."""
        atomic_write(Path(self._generation_file), str(max(self.generation(), 0) + 1).encode(), fsync=False)

    def _pending(self) -> dict[tuple[str, str], str | None]:
        """``{(repo, ref): old commit or None}`` of an unfinished publish: readers report those ``old`` heads
        until the journal is gone (the moment the publish lands). Empty when there is no journal, and for the
        writer itself (it holds the lock and reads the refs as they are). A journal that cannot be parsed was
        never renamed into place whole, so it predates any ref move: no ref of it has moved."""
        if self._lock_owner == threading.get_ident() or not os.path.exists(self._journal):
            return {}
        try:
            with open(self._journal, "rb") as fh:
                moves = json.loads(fh.read()).get("moves", [])
            return {(m["repo"], m["ref"]): m.get("old") for m in moves}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}

    def _read_ref(self, path: Path) -> str | None:
        """The commit id a ref file holds, or None (absent, a folder, a link, not a commit id, unreadable)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            raw = os.read(fd, 4096)
        except OSError:  # a folder (refs/tags)
            return None
        finally:
            os.close(fd)
        try:
            value = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            return None
        return value if COMMIT_RE.match(value) else None

    def resolve(self, repo: str, revision: str | None = None) -> str:
        """Commit id of ``revision`` (commit id or unique prefix of >= 7 hex, branch, tag, ``tags/NAME``)."""
        revision = revision or DEFAULT_BRANCH
        rdir = self.repo_dir(repo)
        if COMMIT_RE.match(revision) and self._commit_exists(repo, revision):
            return revision  # (also a commit a publish has written but not yet made a head)
        main_ref = rdir / "refs" / DEFAULT_BRANCH
        main = self._read_ref(main_ref) if revision == DEFAULT_BRANCH else None
        exists = main is not None or main_ref.is_file()
        # After the ref is read: while an unfinished publish moves it, the head is the one before that publish.
        pending = self._pending()
        if (repo, DEFAULT_BRANCH) in pending:
            old = pending[(repo, DEFAULT_BRANCH)]
            exists = old is not None
            if revision == DEFAULT_BRANCH:
                main = old
        if not exists:
            raise RepoNotFound(f"repo {repo} not found in hub {self.root}")
        if main:
            return main
        if COMMIT_RE.match(revision):
            raise RevisionNotFound(f"revision {revision} not found in {repo}")
        validate_ref_name(revision.removeprefix("tags/"), what="revision")
        for name, ref in ((revision, rdir / "refs" / revision),
                          (None, rdir / "refs" / "tags" / revision.removeprefix("tags/"))):
            if name == DEFAULT_BRANCH:
                continue  # read above
            cid = self._read_ref(ref)
            if cid:
                return cid
        if 7 <= len(revision) < 40 and all(c in "0123456789abcdef" for c in revision):
            matches = [c for c in self.commits(repo) if c.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise RevisionNotFound(f"revision {revision} is ambiguous in {repo} ({len(matches)} commits match)")
        raise RevisionNotFound(f"revision {revision!r} not found in {repo} (not a commit, branch or tag)")

    def _commit_exists(self, repo: str, cid: str) -> bool:
        return (self.repo_dir(repo) / "snapshots" / cid).is_dir() and self._commit_path(cid).is_file()

    def commits(self, repo: str) -> list[str]:
        """Every commit id stored for ``repo`` (reachable or not)."""
        snap = self.repo_dir(repo) / "snapshots"
        return sorted(p.name for p in snap.iterdir() if COMMIT_RE.match(p.name)) if snap.is_dir() else []

    def commit_info(self, repo: str, revision: str | None = None) -> CommitInfo:
        cid = self.resolve(repo, revision)
        try:
            record = json.loads(self._commit_path(cid).read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            raise RevisionNotFound(f"commit record {cid} of {repo} is unreadable: {exc}") from None
        if isinstance(record, dict) and record.get("repo") != repo:
            raise RevisionNotFound(f"revision {cid} does not belong to {repo}")
        bad = _record_problem(record)
        if bad:
            raise RevisionNotFound(f"commit record {cid} of {repo} is damaged ({bad}); run `fiun-hub verify`")
        return CommitInfo(**{k: record[k] for k in CommitInfo.__dataclass_fields__ if k in record})

    def list_files(self, repo: str, revision: str | None = None) -> dict[str, str]:
        """path -> sha256 of the tree at ``revision``."""
        return dict(self.commit_info(repo, revision).files)

    def history(self, repo: str, revision: str | None = None, limit: int | None = None) -> list[CommitInfo]:
        """Commits from ``revision`` back to the first, newest first (first-parent walk)."""
        out: list[CommitInfo] = []
        info = self.commit_info(repo, revision)
        while True:
            out.append(info)
            if (limit and len(out) >= limit) or not info.parents:
                return out
            info = self.commit_info(repo, info.parents[0])

    def refs(self, repo: str) -> dict[str, dict[str, str]]:
        """``{"branches": {name: commit}, "tags": {name: commit}}``, all as of one moment (as :meth:`heads`)."""
        rdir = self.repo_dir(repo) / "refs"
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            generation = self._generation()
            exists = (rdir / DEFAULT_BRANCH).is_file()
            branches = ({p.name: self._read_ref(p) for p in rdir.iterdir()
                         if p.is_file() and not p.is_symlink() and not p.name.startswith(".")} if exists else {})
            tags_dir = rdir / "tags"
            tags = ({p.name: self._read_ref(p) for p in tags_dir.iterdir() if p.is_file()}
                    if exists and tags_dir.is_dir() and not tags_dir.is_symlink() else {})
            pending = self._pending()
            if self._generation() == generation:
                break
            if time.monotonic() > deadline:
                raise ConflictError(f"hub {self.root} kept changing for {LOCK_TIMEOUT_S:.0f}s while reading the "
                                    f"refs of {repo}; try again")
            time.sleep(0.001)
        for (moved, ref), old in pending.items():
            if moved == repo:
                named = tags if ref.startswith("tags/") else branches
                named[ref.removeprefix("tags/")] = old
        if not exists or branches.get(DEFAULT_BRANCH, "") is None and (repo, DEFAULT_BRANCH) in pending:
            raise RepoNotFound(f"repo {repo} not found in hub {self.root}")
        return {"branches": {k: v for k, v in branches.items() if v}, "tags": {k: v for k, v in tags.items() if v}}

    def blob_path(self, repo: str, sha: str) -> Path:
        return self.repo_dir(repo) / "blobs" / sha

    def staging(self) -> Staging:
        """A place to write the new files of one publish into the blob stores as they are made (a forget: every
        repo's new weights, written by the executors' tasks), adopted as ``blobs/{sha256}`` and handed to
        :meth:`publish` as :class:`~fiun_hub.hub.staging.StagedBlob` (see :mod:`fiun_hub.hub.staging`)."""
        return Staging(self)

    def file_path(self, repo: str, path: str, revision: str | None = None) -> Path:
        """Path of the blob holding ``path`` at ``revision`` (inside the hub; never follows a snapshot link)."""
        info = self.commit_info(repo, revision)
        sha = info.files.get(path)
        if sha is None:
            raise EntryNotFound(f"{path} not found in {repo}@{info.id[:12]}")
        stone = self.tombstones(repo, info.id).get(path)
        if stone is not None:
            raise purged_error(repo, info.id, path, stone)
        blob = self.blob_path(repo, sha)
        if not blob.is_file() or blob.is_symlink():
            raise EntryNotFound(f"blob {sha[:12]} of {repo}:{path} is missing; run `fiun-hub verify`")
        return blob

    def read_file(self, repo: str, path: str, revision: str | None = None, verify: bool = False) -> bytes:
        blob = self.file_path(repo, path, revision)
        data = blob.read_bytes()
        if verify and hashlib.sha256(data).hexdigest() != blob.name:
            raise EntryNotFound(f"blob {blob.name[:12]} of {repo}:{path} is corrupt (sha256 mismatch)")
        return data

    def safetensors_header(self, repo: str, path: str, revision: str | None = None) -> tuple[dict, dict[str, str]]:
        """``(tensors, metadata)`` of the safetensors file ``path`` at ``revision``, from its header alone (validated
        against the file's size; the tensors' bytes are not read)."""
        return read_header(self.file_path(repo, path, revision))

    # ------------------------------------------------------------------ locking and journal
    @contextlib.contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """The writers' lock: one writer at a time across processes and threads (flock on ``.fiun/lock``; re-entrant
        for the thread holding it, so a publish inside ``with hub.lock():`` does not wait for itself)."""
        if self._lock_owner == threading.get_ident():  # re-entered by the same thread (not by another one)
            yield
            return
        fd = os.open(self.meta / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise ConflictError(f"hub {self.root} is locked by another writer; try again") from None
                    time.sleep(0.02)
            self._lock_owner = threading.get_ident()
            try:
                if (self.meta / "journal.json").exists():
                    self._recover()
                yield
            finally:
                self._lock_owner = None
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def journal_moves(self) -> list[dict] | None:
        """The ref moves of ``.fiun/journal.json`` (None: no journal, or one that does not parse, which predates
        any ref move since a journal is renamed into place whole). Raises :class:`DamagedJournal` for one that
        parses but is not what a publish writes (edited by hand): nothing may be moved by guessing."""
        journal = self.meta / "journal.json"
        try:
            entries = json.loads(journal.read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        moves = entries.get("moves") if isinstance(entries, dict) else None
        ok = isinstance(moves, list) and all(
            isinstance(m, dict) and isinstance(m.get("repo"), str) and isinstance(m.get("ref"), str)
            and isinstance(m.get("new"), str) and COMMIT_RE.match(m["new"])
            and (m.get("old") is None or isinstance(m["old"], str) and COMMIT_RE.match(m["old"]))
            and (m["ref"] == DEFAULT_BRANCH or m["ref"].startswith("tags/")) for m in moves)
        if ok and moves is not None:  # (ok: a list)
            try:
                for m in moves:
                    validate_repo_id(m["repo"])
                    validate_ref_name(m["ref"].removeprefix("tags/"))
            except BadInput:
                ok = False
        if not ok:
            raise DamagedJournal(f"{journal} is damaged (not the ref moves a publish writes: a 'moves' list of "
                                 "{repo, ref, old, new}); fiun-hub will not guess which refs to move: look at it, "
                                 "then remove it (reads still work)")
        return moves

    def _journal_purge(self) -> dict | None:
        """The purge a journal carries (``{"entries": [...], "blobs": [...]}``, None for none); read after
        :meth:`journal_moves` accepted the journal."""
        try:
            entries = json.loads((self.meta / "journal.json").read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        purge = entries.get("purge") if isinstance(entries, dict) else None
        if purge is None:
            return None
        if not (isinstance(purge, dict) and isinstance(purge.get("entries"), list)
                and isinstance(purge.get("blobs", []), list)):
            raise DamagedJournal(f"{self.meta / 'journal.json'} is damaged (its 'purge' is not the record a purge "
                                 "writes); look at it, then remove it (reads still work)")
        return purge

    def _try_recover(self) -> None:
        """Finish an unfinished publish when this handle is opened, if that can be done now. A reader does not need
        it (every read reports the journal's ``old`` heads until the journal is gone), so when a writer holds the
        lock or the disk is full (no space for the ref moves) the journal is left for the next writer, which
        finishes it under the lock before its own publish (:meth:`lock`)."""
        with contextlib.suppress(ConflictError, OSError, DamagedJournal):
            with self.lock(timeout=0):
                pass  # lock() finishes the journal once it holds the lock

    def unfinished_publish(self) -> list[str]:
        """The repos of a publish that started moving refs and did not finish (its journal is still there: it lands
        whole on the next write, see :meth:`lock`); empty when there is none."""
        try:
            with open(self._journal, "rb") as fh:
                moves = json.loads(fh.read()).get("moves", [])
            return sorted({m["repo"] for m in moves})
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return []

    def _recover(self) -> None:
        """Finish an interrupted publish: every object it names exists, so moving the refs completes it."""
        journal = self.meta / "journal.json"
        moves = self.journal_moves()
        if moves is None:
            journal.unlink(missing_ok=True)
            return
        for move in moves:
            self._write_ref(move["repo"], move["ref"], move["new"])
        if moves:
            self._update_index([m["repo"] for m in moves])
        purge = self._journal_purge()
        if purge:  # a purge journaled with (or without) the moves: finish it (every step is idempotent)
            self._apply_purge(purge)
        self._bump_generation()
        journal.unlink(missing_ok=True)
        _fsync_dir(self.meta)

    def _write_ref(self, repo: str, ref: str, cid: str, fsync: bool = True) -> None:
        atomic_write(self.repo_dir(repo) / "refs" / ref, cid.encode(), fsync=fsync)

    # ------------------------------------------------------------------ writes
    def _store_blob(self, repo: str, content: bytes | Blob | Path, created: list[Path] | None = None
                    ) -> tuple[str, int]:
        """Store one file's content as ``blobs/{sha256}``; a blob this call made is appended to ``created``."""
        blobs = self.repo_dir(repo) / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        tmp = blobs / f".incoming-{uuid.uuid4().hex}"
        try:
            if isinstance(content, Blob):
                final = blobs / content.sha256
                if not final.is_file():
                    tmp.write_bytes(content.data)
                    os.replace(tmp, final)
                    if created is not None:
                        created.append(final)
                return content.sha256, len(content.data)
            h = hashlib.sha256()
            size = 0
            with open(tmp, "wb") as out:
                if isinstance(content, (bytes, bytearray, memoryview)):
                    h.update(content)
                    out.write(content)
                    size = len(content)
                else:
                    with open(content, "rb") as src:
                        for chunk in iter(lambda: src.read(_CHUNK), b""):
                            h.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
            sha = h.hexdigest()
            final = blobs / sha
            if final.is_file():
                tmp.unlink()  # identical content is stored once
            else:
                os.replace(tmp, final)
                if created is not None:
                    created.append(final)
            return sha, size
        except BaseException:  # (a full disk): no half-written file stays behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _make_snapshot(self, repo: str, cid: str, files: Mapping[str, str]) -> None:
        snaps = self.repo_dir(repo) / "snapshots"
        final = snaps / cid
        if final.is_dir():
            return
        tmp = snaps / f".tmp-{cid}-{uuid.uuid4().hex[:8]}"
        try:
            for path, sha in files.items():
                link = tmp / path
                link.parent.mkdir(parents=True, exist_ok=True)
                depth = path.count("/") + 2  # snapshots/{cid}/ + nested folders
                target = "/".join([".."] * depth + ["blobs", sha])
                try:
                    os.symlink(target, link)
                except OSError as exc:
                    if exc.errno in NO_SPACE:
                        raise
                    shutil.copyfile(self.blob_path(repo, sha), link)  # a file system without symlinks
            tmp.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def publish(self, changes: list[RepoChange], *, author: str | None = None,
                precondition: Callable[["LocalHub"], None] | None = None,
                purge: list[dict] | None = None) -> dict[str, str]:
        """Commit a new revision to every repo in ``changes``, all or nothing. Returns repo -> new commit id.

        Raises :class:`ConflictError` (nothing moved) if a repo's head is not the ``parent_commit`` its
        change expects. ``precondition(hub)``, if given, runs under the writers' lock after that check and
        before anything is written; it raises to refuse the publish (e.g. a forget whose affected set grew
        since it was planned).

        ``purge``: tombstones to write in the same publish (``{"repo", "commit", "path", "sha256", "size",
        "request", "at"}`` each; :mod:`fiun_hub.purge` makes them): journaled with the ref moves, applied right
        after them (the new heads are visible first), finished by the next process after a crash. A blob is
        deleted only when no commit of its repo still names it outside a tombstone (docs/hub-layout.md).
        """
        if not changes and not purge:
            return {}
        check_changes(changes)
        with self.lock():
            heads: dict[str, str | None] = {}
            for ch in changes:
                current = self._read_ref(self.repo_dir(ch.repo) / "refs" / DEFAULT_BRANCH)
                if ch.parent_commit is not None and (ch.parent_commit or None) != current:
                    expected = ch.parent_commit[:12] if ch.parent_commit else "a new repo"
                    raise ConflictError(
                        f"{ch.repo} moved: expected head {expected}, found {current[:12] if current else 'no repo'}; "
                        "re-read and retry"
                    )
                heads[ch.repo] = current
            if precondition is not None:
                precondition(self)
            if purge:
                self._check_purge(purge)
            moves: list[dict[str, Any]] = []  # {"repo", "ref", "old": commit or None, "new"}
            created: list[Path] = []  # what this publish wrote, removed again if it fails before its journal
            try:
                for ch in changes:
                    parent = heads[ch.repo]
                    base = self.commit_info(ch.repo, parent) if parent else None
                    tree = dict(base.files) if base else {}
                    sizes = dict(base.sizes) if base else {}
                    for p in ch.delete:
                        tree.pop(p, None)
                        sizes.pop(p, None)
                    final = set(tree) | set(ch.files)
                    clash = sorted(p for p in final if any(p.startswith(q + "/") for q in final))
                    if clash:
                        raise BadInput(f"{ch.repo}: {clash[0]} is both a file and a folder in the new revision")
                    for p, content in ch.files.items():
                        tree[p], sizes[p] = self._store_blob(ch.repo, content, created)
                    record: dict[str, Any] = {
                        "repo": ch.repo,
                        "parents": [parent] if parent else [],
                        "author": ch.author or author or DEFAULT_AUTHOR,
                        "time": _now(),
                        "message": ch.message or f"Update {ch.repo}",
                        "files": dict(sorted(tree.items())),
                        "sizes": dict(sorted(sizes.items())),
                    }
                    cid = commit_id(record)
                    record["id"] = cid
                    # The record first: a snapshot folder is how a commit becomes visible to readers by id.
                    if not self._commit_path(cid).exists():
                        created.append(self._commit_path(cid))
                    atomic_write(self._commit_path(cid), json.dumps(record, indent=1).encode(), fsync=False)
                    snapshot = self.repo_dir(ch.repo) / "snapshots" / cid
                    if not snapshot.is_dir():
                        created.append(snapshot)
                    self._make_snapshot(ch.repo, cid, tree)
                    moves.append({"repo": ch.repo, "ref": DEFAULT_BRANCH, "old": parent, "new": cid})
                # The index entries are computed before any ref moves, so nothing can fail between the moves.
                entries = self._index_entries({m["repo"]: m["new"] for m in moves})
                # Blobs, commits and snapshots were written unsynced: make them durable in one go before the
                # journal names them, then move the refs and make that durable before the journal goes.
                sync_filesystem(self.root)
                journal = self.meta / "journal.json"
                record = {"moves": moves, "time": _now()}
                if purge:
                    record["purge"] = {"entries": list(purge), "blobs": self.purge_blobs(purge)}
                atomic_write(journal, json.dumps(record).encode())
            except BaseException:
                # Nothing names these objects yet: remove them (a full disk gets its space back).
                for path in reversed(created):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            path.unlink()
                raise
            for move in moves:
                self._write_ref(move["repo"], move["ref"], move["new"], fsync=False)
            if moves:
                self._write_index(entries)
                self._bump_generation()  # after the last move, before the journal goes: readers retry across it
            if purge:
                if moves:  # the moves have landed for readers; the purge alone stays journaled
                    sync_filesystem(self.root)
                    atomic_write(journal, json.dumps({"moves": [], "purge": record["purge"],
                                                      "time": record["time"]}).encode())
                self._apply_purge(record["purge"])
                self._bump_generation()
            sync_filesystem(self.root)
            journal.unlink()
            _fsync_dir(self.meta)
        return {m["repo"]: m["new"] for m in moves}

    # ------------------------------------------------------------------ tombstones (docs/hub-layout.md)
    def _tombstone_path(self, cid: str) -> Path:
        return self.meta / "purged" / cid[:2] / f"{cid}.json"

    def tombstones(self, repo: str, cid: str) -> dict[str, dict]:
        """``{path: {"sha256", "size", "request", "at", "freed"}}`` of the files of commit ``cid`` that a takedown purged
        (empty for a commit nothing was purged from: one ``stat``)."""
        path = self._tombstone_path(cid)
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BadInput(f"tombstone record {path.relative_to(self.root)} is unreadable: {exc}; "
                           "run `fiun-hub verify`") from None
        if not isinstance(record, dict) or record.get("repo") != repo or not isinstance(record.get("files"), dict):
            raise BadInput(f"tombstone record {path.relative_to(self.root)} is not a {TOMBSTONE_FORMAT} record "
                           f"of {repo}")
        return record["files"]

    def _check_purge(self, purge: list[dict]) -> None:
        for e in purge:
            info = self.commit_info(e["repo"], e["commit"])
            validate_repo_path(e["path"])
            if info.id != e["commit"] or info.files.get(e["path"]) != e["sha256"]:
                raise BadInput(f"purge of {e['repo']}@{e['commit'][:12]} {e['path']}: the commit does not hold "
                               f"that file with sha256 {e['sha256'][:12]}")

    def purge_blobs(self, purge: list[dict], live: Iterable[tuple[str, str]] = ()) -> list[dict]:
        """The blobs ``purge`` frees: ``[{"repo", "sha256"}]`` of the purged files' blobs that no commit of their
        repo names outside a tombstone (reference counting inside a repo; ``live`` adds ``(repo, sha256)`` pairs
        to keep, e.g. the files of a publish not yet written)."""
        gone: dict[str, set[tuple[str, str]]] = {}
        for e in purge:
            gone.setdefault(e["repo"], set()).add((e["commit"], e["path"]))
        keep = set(live)
        out = []
        for repo, stones in gone.items():
            for cid in self.commits(repo):
                try:
                    files = self.commit_info(repo, cid).files
                except BadInput:
                    continue  # a damaged record (verify reports it) names nothing it can keep
                old = self.tombstones(repo, cid)
                keep |= {(repo, sha) for p, sha in files.items() if (cid, p) not in stones and p not in old}
            for sha in sorted({e["sha256"] for e in purge if e["repo"] == repo}):
                if (repo, sha) not in keep:
                    out.append({"repo": repo, "sha256": sha})
        return out

    def _inside(self, repo: str, path: Path) -> Path:
        """``path`` (under the repo folder), refused if a link anywhere on the way leads out of the repo folder."""
        rdir = os.path.realpath(self.repo_dir(repo))
        if not os.path.realpath(path.parent).startswith(rdir + os.sep):
            raise BadInput(f"{repo}: {path.relative_to(self.root)} leads out of the repo folder; run `fiun-hub verify`")
        return path

    def _apply_purge(self, purge: dict) -> None:
        """Write the tombstones, the ``.no_exist`` markers, remove the snapshot entries, delete the freed blobs.
        Each step is idempotent, so a crash anywhere is finished by running it again (journal recovery)."""
        by_commit: dict[tuple[str, str], dict[str, dict]] = {}
        freed = {(b["repo"], b["sha256"]) for b in purge["blobs"]}
        for e in purge["entries"]:
            by_commit.setdefault((e["repo"], e["commit"]), {})[e["path"]] = {
                **{k: e.get(k) for k in ("sha256", "size", "request", "at")},
                "freed": (e["repo"], e["sha256"]) in freed}  # its blob deleted (no kept revision names it)
        for (repo, cid), files in by_commit.items():
            old = self.tombstones(repo, cid)
            record = {"format": TOMBSTONE_FORMAT, "repo": repo, "commit": cid, "files": {**files, **old}}
            atomic_write(self._tombstone_path(cid), json.dumps(record, indent=1, sort_keys=True).encode(),
                         fsync=False)
        for e in purge["entries"]:
            rdir = self.repo_dir(e["repo"])
            marker = self._inside(e["repo"], rdir / ".no_exist" / e["commit"] / e["path"])
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            entry = self._inside(e["repo"], rdir / "snapshots" / e["commit"] / e["path"])
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
        for b in purge["blobs"]:
            (self.repo_dir(b["repo"]) / "blobs" / b["sha256"]).unlink(missing_ok=True)
        sync_filesystem(self.root)

    def purge(self, entries: list[dict], changes: list[RepoChange] | None = None, *,
              author: str | None = None) -> dict[str, str]:
        """Purge ``entries`` (tombstones, see :meth:`publish`), with ``changes`` (e.g. the ledger's record of
        it) in the same journaled step. Returns the new commit ids of ``changes``."""
        return self.publish(list(changes or []), author=author, purge=entries)

    def tag(self, repo: str, name: str, revision: str | None = None, *, force: bool = False) -> str:
        """Point tag ``name`` of ``repo`` at ``revision`` (default: head). Returns the commit id."""
        validate_tag_name(name)
        with self.lock():
            cid = self.resolve(repo, revision)
            ref = self.repo_dir(repo) / "refs" / "tags" / name
            if ref.exists() and not force:
                raise BadInput(f"tag {name} already exists in {repo}; use --force to move it")
            self._write_ref(repo, f"tags/{name}", cid)
            self._bump_generation()
        return cid

    # ------------------------------------------------------------------ lineage index (through the hook)
    def _index_entries(self, heads: dict[str, str]) -> dict[str, dict] | None:
        """The index entries of ``heads`` (computed before any ref moves, so nothing can fail between them);
        None when no indexer is registered."""
        if _INDEXER is None:
            return None
        return {repo: _INDEXER.entry(self, repo, cid) for repo, cid in heads.items()}

    def _write_index(self, entries: dict[str, dict] | None) -> None:
        if _INDEXER is None or entries is None:
            # Nobody keeps the index in this process (or nobody did when this publish computed its entries):
            # remove it rather than leave one that misses this publish (readers then rebuild it from the cards,
            # and the next indexed publish writes it whole again).
            with contextlib.suppress(FileNotFoundError):
                (self.meta / INDEX_FILE).unlink()
            return
        index = _INDEXER.read(self)
        if index is None:  # no index yet (or it was removed): rebuild it whole from the cards
            index = {r: _INDEXER.entry(self, r, self.head(r)) for r in self.list_repos()}  # (_index_entries')
        index.update(entries)
        _INDEXER.write(self, index)

    def _update_index(self, repos: list[str]) -> None:
        self._write_index(self._index_entries({r: self.head(r) for r in repos}))


# ---------------------------------------------------------------------------- the index hook
INDEX_FILE = "lineage.json"  # .fiun/lineage.json: its format is the indexer's (fiun_hub.lineage)


class Indexer(Protocol):
    """Keeps ``.fiun/lineage.json`` current on every publish. The hub stores the index; what an entry holds (the
    card's lineage facts, the sidecar's state) is the lineage layer's, whose indexer ``fiun_hub/__init__.py``
    registers (:func:`register_indexer`), so that storage never imports the layers above it."""

    def entry(self, hub: "LocalHub", repo: str, cid: str) -> dict: ...
    def read(self, hub: "LocalHub") -> dict | None: ...
    def write(self, hub: "LocalHub", entries: dict[str, dict]) -> None: ...


_INDEXER: Indexer | None = None


def register_indexer(indexer: Indexer | None) -> None:
    """Make ``indexer`` keep the lineage index of every LocalHub publish in this process (None: none does)."""
    global _INDEXER
    _INDEXER = indexer


if TYPE_CHECKING:  # `mypy` (.ci/run) fails here when a LocalHub method drifts from the Hub Protocol or from
    # the methods of a capability it states (hub/base.py)
    from .base import AtomicPublishHub, BlobStoreHub, ConsistentHeadsHub, Hub, LocalFolderHub, PurgeHub

    def _is_a_hub(hub: LocalHub) -> Hub:
        return hub

    def _has_its_capabilities(hub: LocalHub) -> tuple[AtomicPublishHub, ConsistentHeadsHub, LocalFolderHub,
                                                      BlobStoreHub, PurgeHub]:
        return hub, hub, hub, hub, hub


__all__ = ["LocalHub", "DamagedJournal", "Indexer", "register_indexer", "INDEX_FILE", "atomic_write",
           "sync_filesystem", "sha256_file", "guarded_paths", "link_problem", "commit_id", "HUB_FORMAT",
           "TOMBSTONE_FORMAT", "LOCK_TIMEOUT_S",
           # records of hub/base.py, importable from here as before
           "Blob", "CommitInfo", "RepoChange", "check_changes", "check_card_write", "purged_error"]
