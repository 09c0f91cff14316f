"""The hub interface: what every backend (:class:`~fiun_hub.hub.local.LocalHub`, :class:`~fiun_hub.hub.hf.HfHub`)
provides, the records that cross it, and the capabilities only some backends have.

The core (repo, lineage, sidecars, unlearn, compliance, the CLI) is written against :class:`Hub`. What a
backend can do beyond it is stated once, in its ``capabilities`` (a frozenset of the names below), and asked
with :func:`supports`; nothing asks ``isinstance(hub, LocalHub)`` or ``hasattr(hub, ...)``:

========================  =========  =====  =================================================================
capability                LocalHub   HfHub  what it promises
========================  =========  =====  =================================================================
``ATOMIC_PUBLISH``        yes        no     a publish over many repos lands whole (journaled ref moves;
                                            ``unfinished_publish()`` names the repos of one a crash left)
``LOCK``                  yes        no     one writers' lock: ``publish(precondition=...)`` runs the check
                                            under it (over HTTP the check is best effort, before the commits)
``CONSISTENT_HEADS``      yes        no     ``heads()``: every head as of one moment (never half a publish)
``LOCAL_FOLDER``          yes        no     ``root`` is a folder here: the lineage index, fingerprints,
                                            ``verify``; ``None`` on a backend without one
``BLOB_STORE``            yes        no     ``blob_path(repo, sha256)`` and ``staging()``: content-addressed
                                            files a writer can stage before a publish names them
``PURGE``                 yes        no     tombstones: ``tombstones()``, ``purge()``, ``publish(purge=...)``,
                                            ``purge_blobs()`` (the blobs a purge frees)
``PURGE_HISTORY``         no         yes    ``purge_history(repo, request_id)``: the endpoint's LFS purge
========================  =========  =====  =================================================================
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Final, Iterable, Literal, Mapping, Protocol, TypeGuard, overload

from ..card import MAX_CARD_BYTES, RecordError, parse_card_full
from ..constants import CARD_FILE, LEDGER_REPO
from ..errors import BadInput, CardError, Purged
from .ids import validate_repo_id, validate_repo_path

# Final: each name's type is its literal string, so `supports(hub, PURGE)` picks its overload below.
ATOMIC_PUBLISH: Final = "atomic-publish"
LOCK: Final = "lock"
CONSISTENT_HEADS: Final = "consistent-heads"
LOCAL_FOLDER: Final = "local-folder"
BLOB_STORE: Final = "blob-store"
PURGE: Final = "purge"
PURGE_HISTORY: Final = "purge-history"
CAPABILITIES = frozenset({ATOMIC_PUBLISH, LOCK, CONSISTENT_HEADS, LOCAL_FOLDER, BLOB_STORE, PURGE, PURGE_HISTORY})


# ---------------------------------------------------------------------------- records
@dataclass(frozen=True)
class CommitInfo:
    """One immutable commit of one repo."""

    id: str
    repo: str
    parents: list[str]
    author: str
    time: str
    message: str
    files: dict[str, str]  # path -> sha256 of content
    sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Blob:
    """File content whose sha256 the writer already computed (saves hashing it twice)."""

    data: bytes
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> "Blob":
        return cls(data, hashlib.sha256(data).hexdigest())


@dataclass
class RepoChange:
    """New revision of one repo inside a ``publish``.

    ``files`` add or replace paths (content as bytes, or a Path to copy from); ``delete`` removes paths.
    ``parent_commit`` is the head the writer expects: a commit id, ``""`` for "the repo must not exist yet",
    or None for "whatever the head is when the lock is taken".
    """

    repo: str
    files: Mapping[str, bytes | Blob | Path] = field(default_factory=dict)
    message: str = ""
    parent_commit: str | None = None
    delete: tuple[str, ...] = ()
    author: str | None = None


def check_changes(changes: list[RepoChange]) -> None:
    """What every backend's publish refuses before touching anything: bad repo ids or paths, a repo twice."""
    seen = set()
    for ch in changes:
        validate_repo_id(ch.repo)
        if ch.repo in seen:
            raise BadInput(f"repo {ch.repo} appears twice in one publish")
        seen.add(ch.repo)
        for p in list(ch.files) + list(ch.delete):
            validate_repo_path(p)
        if CARD_FILE in ch.files and ch.repo != LEDGER_REPO:
            check_card_write(ch.repo, ch.files[CARD_FILE])


def check_card_write(repo: str, content: bytes | Blob | Path) -> None:
    """A card no write may publish (every backend, every command, serve): one larger than fiun-hub reads back
    (it would make the repo, and every forget over it, unreadable), or one whose ``fiun.unlearned`` records break
    the schema. (A card that fails to parse for other reasons is another tool's: the lineage reports it.)"""
    if isinstance(content, Blob):
        content = content.data
    size = content.stat().st_size if isinstance(content, Path) else len(content)
    if size > MAX_CARD_BYTES:
        raise CardError(f"{repo}: the new {CARD_FILE} would be {size} bytes, more than the {MAX_CARD_BYTES} "
                        "fiun-hub reads back; nothing was published")
    data = content.read_bytes() if isinstance(content, Path) else bytes(content)
    try:
        parse_card_full(data, where=f"{repo}:{CARD_FILE}")
    except RecordError:
        raise
    except CardError:
        pass


def purged_error(repo: str, cid: str, path: str, stone: Mapping) -> Purged:
    """The one line every reader gives for a purged file."""
    day = str(stone.get("at") or "")[:10] or "an unknown date"
    return Purged(f"{repo}@{cid[:12]} {path} was purged by request {stone.get('request')} on {day}",
                  stone.get("request"), stone.get("at"))


# ---------------------------------------------------------------------------- the interface
class Hub(Protocol):
    """What the core asks of any hub. Capability-specific methods are named in the module docstring's table."""

    # Read-only here (a backend may state them as plain class or instance attributes):
    @property
    def capabilities(self) -> frozenset[str]: ...
    @property
    def root(self) -> Path | None: ...  # the hub's folder (LOCAL_FOLDER), else None

    def list_repos(self) -> list[str]: ...
    def repo_exists(self, repo: str) -> bool: ...
    def head(self, repo: str) -> str: ...
    def resolve(self, repo: str, revision: str | None = None) -> str: ...
    def commits(self, repo: str) -> list[str]: ...
    def commit_info(self, repo: str, revision: str | None = None) -> CommitInfo: ...
    def list_files(self, repo: str, revision: str | None = None) -> dict[str, str]: ...
    def history(self, repo: str, revision: str | None = None, limit: int | None = None) -> list[CommitInfo]: ...
    def refs(self, repo: str) -> dict[str, dict[str, str]]: ...
    def file_path(self, repo: str, path: str, revision: str | None = None) -> Path: ...
    def read_file(self, repo: str, path: str, revision: str | None = None, verify: bool = False) -> bytes: ...
    def safetensors_header(self, repo: str, path: str, revision: str | None = None) -> tuple[dict, dict[str, str]]:
        ...
    def lock(self, timeout: float = ...) -> ContextManager[None]: ...
    def publish(self, changes: list[RepoChange], *, author: str | None = None,
                precondition: Callable[["Hub"], None] | None = None) -> dict[str, str]: ...
    def tag(self, repo: str, name: str, revision: str | None = None, *, force: bool = False) -> str: ...


# ---------------------------------------------------------------------------- the capabilities' methods
# What a backend stating a capability adds to Hub, for the type checker: `if supports(hub, PURGE):` narrows `hub`
# to a PurgeHub there. Each backend is checked against the ones it states at the end of its module.
class AtomicPublishHub(Hub, Protocol):
    """ATOMIC_PUBLISH."""

    def unfinished_publish(self) -> list[str]: ...


class ConsistentHeadsHub(Hub, Protocol):
    """CONSISTENT_HEADS."""

    def heads(self, repos: Iterable[str] | None = None) -> dict[str, str]: ...


class LocalFolderHub(Hub, Protocol):
    """LOCAL_FOLDER: ``root`` is a folder."""

    @property
    def root(self) -> Path: ...


class BlobStoreHub(Hub, Protocol):
    """BLOB_STORE."""

    def blob_path(self, repo: str, sha: str) -> Path: ...
    def staging(self) -> Any: ...  # a hub.staging.Staging (that module sits above this one)


class PurgeHub(Hub, Protocol):
    """PURGE."""

    def tombstones(self, repo: str, cid: str) -> dict[str, dict]: ...
    def purge_blobs(self, purge: list[dict], live: Iterable[tuple[str, str]] = ()) -> list[dict]: ...
    def purge(self, entries: list[dict], changes: list[RepoChange] | None = None, *,
              author: str | None = None) -> dict[str, str]: ...
    def publish(self, changes: list[RepoChange], *, author: str | None = None,
                precondition: Callable[["Hub"], None] | None = None,
                purge: list[dict] | None = None) -> dict[str, str]: ...


class PurgeHistoryHub(Hub, Protocol):
    """PURGE_HISTORY."""

    def purge_history(self, repo: str, request_id: str) -> dict: ...


@overload
def supports(hub: object, capability: Literal["atomic-publish"]) -> TypeGuard[AtomicPublishHub]: ...
@overload
def supports(hub: object, capability: Literal["consistent-heads"]) -> TypeGuard[ConsistentHeadsHub]: ...
@overload
def supports(hub: object, capability: Literal["local-folder"]) -> TypeGuard[LocalFolderHub]: ...
@overload
def supports(hub: object, capability: Literal["blob-store"]) -> TypeGuard[BlobStoreHub]: ...
@overload
def supports(hub: object, capability: Literal["purge"]) -> TypeGuard[PurgeHub]: ...
@overload
def supports(hub: object, capability: Literal["purge-history"]) -> TypeGuard[PurgeHistoryHub]: ...
@overload
def supports(hub: object, capability: str) -> bool: ...
def supports(hub: object, capability: str) -> bool:
    """Whether ``hub`` states ``capability`` (one of the names above; a misspelt one is a programming error)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown hub capability {capability!r}")
    return capability in getattr(hub, "capabilities", ())


__all__ = ["Hub", "AtomicPublishHub", "ConsistentHeadsHub", "LocalFolderHub", "BlobStoreHub", "PurgeHub",
           "PurgeHistoryHub", "CommitInfo", "Blob", "RepoChange", "check_changes", "check_card_write", "purged_error",
           "supports", "CAPABILITIES", "ATOMIC_PUBLISH", "LOCK", "CONSISTENT_HEADS", "LOCAL_FOLDER", "BLOB_STORE",
           "PURGE", "PURGE_HISTORY"]
