"""HfHub: the same small interface as :class:`~fiun_hub.hub.local.LocalHub`, over the Hugging Face Hub HTTP API.

``--hub hf://HOST[:PORT][/NAMESPACE]`` talks to any server that speaks the Hub's API: huggingface.co, a
self-hosted hub, or ``fiun-hub serve``. ``hf://`` uses plain http for loopback hosts and https for every other
host; ``hf+http://`` and ``hf+https://`` pick one explicitly. ``--hub hf`` is ``$HF_ENDPOINT`` (default
https://huggingface.co). The token comes from ``$FIUN_HUB_TOKEN``, else ``$HF_TOKEN``, else the client's login.

What differs from a LocalHub (docs/hf-hub.md):

* **No cross-repo atomicity.** Each repo's new revision is one ``create_commit(parent_commit=...)``; a publish
  over many repos checks every expected head first, then commits repo by repo. If it stops part-way it raises
  :class:`PublishIncomplete` naming the repos that landed; re-running the same forget finishes the rest (a repo
  whose card already records the request is skipped).
* **No lineage index.** The resolver reads every repo's card through the API (``list_models`` + the card).
  With a NAMESPACE only that author's repos are listed; on huggingface.co a namespace is required.
* Files are read through ``hf_hub_download`` into a Hugging Face cache folder (``$FIUN_HF_CACHE``, default
  ``~/.cache/fiun-hub/hf/HOST``), so each file at each commit is fetched once. The sha256 of LFS files comes
  from the server's tree listing; small (non-LFS) files carry their git blob id instead.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import urlsplit

from ..card import parse_card
from ..constants import CARD_FILE, DEFAULT_AUTHOR, DEFAULT_BRANCH
from ..errors import (
    BadInput,
    ConflictError,
    EntryNotFound,
    FiunError,
    HubNotFound,
    RepoNotFound,
    RevisionNotFound,
)
from .base import PURGE_HISTORY, Blob, CommitInfo, RepoChange, check_changes
from .ids import COMMIT_RE, validate_ref_name, validate_repo_id

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
PUBLIC_HUB = "huggingface.co"


class PublishIncomplete(FiunError):
    """A publish to a remote hub stopped part-way: some repos have their new revision, the rest do not."""

    def __init__(self, msg: str, done: dict[str, str], pending: list[str]):
        super().__init__(msg)
        self.done = done
        self.pending = pending


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``hf://HOST[:PORT][/NAMESPACE]`` (or ``hf``) -> (endpoint URL, namespace or None).

    >>> parse_hf_spec("hf://127.0.0.1:8123")
    ('http://127.0.0.1:8123', None)
    >>> parse_hf_spec("hf://hub.example.org/acme")
    ('https://hub.example.org', 'acme')
    >>> parse_hf_spec("hf+http://10.0.0.5:80")
    ('http://10.0.0.5:80', None)
    """
    if spec == "hf":
        return os.environ.get("HF_ENDPOINT", "https://" + PUBLIC_HUB).rstrip("/"), None
    m = re.match(r"hf(\+https?)?://(.*)\Z", spec)
    if not m:
        raise BadInput(f"not a remote hub spec: {spec!r} (expected hf://HOST[:PORT][/NAMESPACE])")
    parts = urlsplit("//" + m.group(2))
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise BadInput(f"bad port in hub spec {spec!r}") from None
    if not host or parts.query or parts.fragment or parts.username or parts.password:
        raise BadInput(f"bad hub spec {spec!r}: expected hf://HOST[:PORT][/NAMESPACE]")
    scheme = m.group(1)[1:] if m.group(1) else ("http" if host in _LOOPBACK else "https")
    namespace = parts.path.strip("/") or None
    if namespace is not None and not _NAMESPACE_RE.match(namespace):
        raise BadInput(f"bad namespace {namespace!r} in hub spec {spec!r} (one user or organisation name)")
    netloc = f"[{host}]" if ":" in host else host
    return f"{scheme}://{netloc}" + (f":{port}" if port else ""), namespace


@contextlib.contextmanager
def _map_errors(what: str) -> Iterator[None]:
    """Turn the client's HTTP errors into our error classes (one line each)."""
    from huggingface_hub import errors as hfe

    try:
        yield
    except hfe.RevisionNotFoundError:
        raise RevisionNotFound(f"{what}: revision not found") from None
    except hfe.RepositoryNotFoundError:
        raise RepoNotFound(f"{what}: repo not found (or not visible with this token)") from None
    except hfe.EntryNotFoundError:
        raise EntryNotFound(f"{what}: file not found") from None
    except hfe.OfflineModeIsEnabled:
        raise HubNotFound(f"{what}: HF_HUB_OFFLINE is set; unset it to talk to a remote hub") from None
    except hfe.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        server = getattr(exc, "server_message", None) or ""
        detail = " ".join((server or str(exc)).split())[:300]
        if status in (409, 412):
            raise ConflictError(f"{what}: {detail or 'the repo moved'}; re-read and retry") from None
        if status in (401, 403):
            raise BadInput(f"{what}: not allowed (HTTP {status}): {detail}; set FIUN_HUB_TOKEN or "
                           "HF_TOKEN to a token with write access") from None
        raise BadInput(f"{what}: HTTP {status}: {detail}") from None
    except OSError as exc:  # connection refused, DNS, timeouts (httpx errors are not OSErrors: below)
        raise HubNotFound(f"{what}: cannot reach the hub: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise HubNotFound(f"{what}: cannot reach the hub: {type(exc).__name__}: {exc}") from None
        raise


class HfHub:
    """A hub reached over the Hugging Face Hub HTTP API (see the module docstring for what differs)."""

    # Only the endpoint's LFS purge: one commit per repo (no ATOMIC_PUBLISH: see PublishIncomplete), no lock, no
    # local folder (no lineage index, no `verify`, ``root`` is None).
    capabilities = frozenset({PURGE_HISTORY})
    root = None

    def __init__(self, spec: str = "hf", *, token: str | None = None, cache_dir: str | os.PathLike | None = None):
        from huggingface_hub import HfApi

        self.spec = spec
        self.endpoint, self.namespace = parse_hf_spec(spec)
        host = urlsplit(self.endpoint).hostname or "hub"
        if self.namespace is None and host == PUBLIC_HUB:
            raise BadInput("name a namespace for huggingface.co: --hub hf://huggingface.co/ORG (listing every "
                           "public model is not a lineage)")
        self.token = token or os.environ.get("FIUN_HUB_TOKEN") or os.environ.get("HF_TOKEN") or None
        port = urlsplit(self.endpoint).port
        default_cache = Path("~/.cache/fiun-hub/hf").expanduser() / (f"{host}_{port}" if port else host)
        self.cache_dir = Path(cache_dir or os.environ.get("FIUN_HF_CACHE") or default_cache)
        self.api = HfApi(endpoint=self.endpoint, token=self.token)
        self._commits: dict[tuple[str, str], CommitInfo] = {}
        self._history: dict[tuple[str, str], list] = {}

    def __repr__(self) -> str:
        return f"HfHub({self.spec!r})"

    @property
    def location(self) -> str:
        return self.endpoint + (f"/{self.namespace}" if self.namespace else "")

    # ------------------------------------------------------------------ reads
    def list_repos(self) -> list[str]:
        with _map_errors(f"listing models of {self.location}"):
            return sorted(m.id for m in self.api.list_models(author=self.namespace) if "/" in m.id)

    def repo_exists(self, repo: str) -> bool:
        validate_repo_id(repo)
        with _map_errors(repo):
            return self.api.repo_exists(repo)

    def head(self, repo: str) -> str:
        return self.resolve(repo, DEFAULT_BRANCH)

    def resolve(self, repo: str, revision: str | None = None) -> str:
        """Commit id of ``revision`` (a commit id, branch or tag) as the server resolves it."""
        validate_repo_id(repo)
        revision = revision or DEFAULT_BRANCH
        if (repo, revision) in self._commits:
            return revision
        if not COMMIT_RE.match(revision):
            validate_ref_name(revision.removeprefix("tags/"), what="revision")
            revision = revision.removeprefix("tags/")
        with _map_errors(f"{repo}@{revision}"):
            sha = self.api.model_info(repo, revision=revision).sha
        if not sha or not COMMIT_RE.match(sha):
            raise RevisionNotFound(f"{repo}@{revision}: the server gave no commit id")
        return sha

    def _log(self, repo: str, cid: str) -> list:
        key = (repo, cid)
        if key not in self._history:
            with _map_errors(f"{repo}@{cid[:12]}"):
                commits = self.api.list_repo_commits(repo, revision=cid)
            for i, c in enumerate(commits):  # every suffix of a first-parent log is the log of that commit
                self._history.setdefault((repo, c.commit_id), commits[i:])
            self._history[key] = commits
        return self._history[key]

    def commits(self, repo: str) -> list[str]:
        """Commit ids reachable from the repo's branches and tags (the server keeps no unreachable ones)."""
        refs = self.refs(repo)
        out: set[str] = set()
        for cid in list(refs["branches"].values()) + list(refs["tags"].values()):
            out.update(c.commit_id for c in self._log(repo, cid))
        return sorted(out)

    def commit_info(self, repo: str, revision: str | None = None) -> CommitInfo:
        cid = self.resolve(repo, revision)
        key = (repo, cid)
        if key in self._commits:
            return self._commits[key]
        log = self._log(repo, cid)
        if not log or log[0].commit_id != cid:
            raise RevisionNotFound(f"{repo}@{cid[:12]}: the server's log does not start at this commit")
        from huggingface_hub.hf_api import RepoFile

        files, sizes = {}, {}
        with _map_errors(f"{repo}@{cid[:12]}"):
            for entry in self.api.list_repo_tree(repo, revision=cid, recursive=True):
                if isinstance(entry, RepoFile):  # a file (not a RepoFolder)
                    files[entry.path] = entry.lfs.sha256 if entry.lfs else entry.blob_id
                    sizes[entry.path] = entry.size
        c = log[0]
        info = CommitInfo(
            id=cid, repo=repo, parents=[log[1].commit_id] if len(log) > 1 else [],
            author=", ".join(c.authors) or DEFAULT_AUTHOR,
            time=c.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if c.created_at else "",
            message="\n\n".join(x for x in (c.title, c.message) if x), files=dict(sorted(files.items())),
            sizes=dict(sorted(sizes.items())),
        )
        self._commits[key] = info
        return info

    def list_files(self, repo: str, revision: str | None = None) -> dict[str, str]:
        return dict(self.commit_info(repo, revision).files)

    def history(self, repo: str, revision: str | None = None, limit: int | None = None) -> list[CommitInfo]:
        """Commits from ``revision`` back to the first, newest first."""
        cid = self.resolve(repo, revision)
        log = self._log(repo, cid)[: limit or None]
        return [self.commit_info(repo, c.commit_id) for c in log]

    def refs(self, repo: str) -> dict[str, dict[str, str]]:
        validate_repo_id(repo)
        with _map_errors(repo):
            r = self.api.list_repo_refs(repo)
        return {"branches": {b.name: b.target_commit for b in r.branches},
                "tags": {t.name: t.target_commit for t in r.tags}}

    def file_path(self, repo: str, path: str, revision: str | None = None) -> Path:
        """A local copy of ``path`` at ``revision`` (downloaded once into the cache folder)."""
        from huggingface_hub import hf_hub_download

        info = self.commit_info(repo, revision)
        if path not in info.files:
            raise EntryNotFound(f"{path} not found in {repo}@{info.id[:12]}")
        with _map_errors(f"{repo}:{path}@{info.id[:12]}"):
            return Path(hf_hub_download(repo, path, revision=info.id, cache_dir=self.cache_dir,
                                        token=self.token, endpoint=self.endpoint))

    def read_file(self, repo: str, path: str, revision: str | None = None, verify: bool = False) -> bytes:
        data = self.file_path(repo, path, revision).read_bytes()
        if verify:
            import hashlib

            sha = self.commit_info(repo, revision).files[path]
            if len(sha) == 64 and hashlib.sha256(data).hexdigest() != sha:
                raise EntryNotFound(f"{repo}:{path} does not match its sha256 (corrupt download or cache)")
        return data

    def safetensors_header(self, repo: str, path: str, revision: str | None = None) -> tuple[dict, dict[str, str]]:
        """``(tensors, metadata)`` of the safetensors file ``path`` at ``revision`` from its header alone, through
        ``HfApi.parse_safetensors_file_metadata`` (one or two range requests), not a download of the file: a
        sidecar's header is what the lineage and ``show`` read, and the file is as large as the layers it covers.
        Tensors come as the header lists them (``dtype``, ``shape``, ``data_offsets``)."""
        from huggingface_hub import errors as hfe

        info = self.commit_info(repo, revision)
        if path not in info.files:
            raise EntryNotFound(f"{path} not found in {repo}@{info.id[:12]}")
        where = f"{repo}:{path}@{info.id[:12]}"
        with _map_errors(where):
            try:
                meta = self.api.parse_safetensors_file_metadata(repo, path, revision=info.id)
            except hfe.SafetensorsParsingError as exc:
                raise BadInput(f"{where}: not a readable safetensors header ({exc})") from None
        tensors = {name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.data_offsets)}
                   for name, t in meta.tensors.items()}
        return tensors, dict(meta.metadata or {})

    @contextlib.contextmanager
    def lock(self, timeout: float = 0) -> Iterator[None]:
        """No hub-wide lock over HTTP: each commit states its parent instead."""
        yield

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def _lfs_uploads(self) -> Iterator[None]:
        """Upload through the Hub's LFS protocol, not Xet, unless the endpoint is huggingface.co: other servers
        (`fiun-hub serve`, most self-hosted hubs) speak only LFS. The client reads the switch at call time."""
        from huggingface_hub import constants

        if urlsplit(self.endpoint).hostname == PUBLIC_HUB:
            yield
            return
        saved = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = True
        try:
            yield
        finally:
            constants.HF_HUB_DISABLE_XET = saved

    def publish(self, changes: list[RepoChange], *, author: str | None = None,
                precondition: Callable[["HfHub"], None] | None = None) -> dict[str, str]:
        """One commit per repo, each with ``parent_commit``. Not atomic across repos: every expected head is
        checked first (nothing is written if one moved), then repos are committed in order; a failure part-way
        raises :class:`PublishIncomplete` naming what landed."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        if not changes:
            return {}
        check_changes(changes)
        for ch in changes:  # fail before anything is written when a head already moved
            if ch.parent_commit is None:
                continue
            current = self.head(ch.repo) if ch.parent_commit or self.repo_exists(ch.repo) else None
            if (ch.parent_commit or None) != current:
                expected = ch.parent_commit[:12] if ch.parent_commit else "a new repo"
                raise ConflictError(f"{ch.repo} moved: expected head {expected}, found "
                                    f"{current[:12] if current else 'no repo'}; re-read and retry")
        if precondition is not None:  # no lock over HTTP: a best-effort check just before the first commit
            precondition(self)
        done: dict[str, str] = {}
        for i, ch in enumerate(changes):
            ops: list[CommitOperationAdd | CommitOperationDelete] = []
            for p, content in ch.files.items():
                data = content.data if isinstance(content, Blob) else content
                ops.append(CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(data) if isinstance(data, Path)
                                              else data))
            ops += [CommitOperationDelete(path_in_repo=p) for p in ch.delete]
            try:
                parent = ch.parent_commit or None
                if ch.parent_commit == "":
                    with _map_errors(f"creating {ch.repo}"):
                        self.api.create_repo(ch.repo, exist_ok=False)
                    parent = self.head(ch.repo)
                with _map_errors(f"committing to {ch.repo}"), self._lfs_uploads():
                    res = self.api.create_commit(ch.repo, ops, commit_message=ch.message or f"Update {ch.repo}",
                                                 parent_commit=parent, revision=DEFAULT_BRANCH)
                done[ch.repo] = res.oid
            except FiunError as exc:
                if not done:
                    raise
                pending = [c.repo for c in changes[i:]]
                raise PublishIncomplete(
                    f"published {len(done)} of {len(changes)} repos before {ch.repo} failed ({exc}); a remote hub "
                    f"has no cross-repo atomicity: re-run the same command to finish ({len(pending)} left)",
                    done, pending) from None
        return done

    def purge_history(self, repo: str, request_id: str) -> dict:
        """Permanently delete the LFS files (weights, sidecars) that only revisions holding ``request_id``'s data
        name: every LFS file no revision carrying the request names (the head, after the forget, carries it).
        ``HfApi.list_lfs_files`` then ``permanently_delete_lfs_files(rewrite_history=True)``, the request id sent as
        ``X-Fiun-Request``. Returns ``{"deleted": n, "bytes_removed": b}``, or ``{"unsupported": why}`` when the
        endpoint has no such API (then the history is left as it was)."""
        from huggingface_hub import HfApi
        from huggingface_hub import errors as hfe

        keep: set[str] = set(self.list_files(repo).values())  # the head's files are never purged
        for info in self.history(repo):
            try:
                carries = parse_card(self.read_file(repo, CARD_FILE, info.id)).record(request_id) is not None
            except FiunError:
                carries = False
            if carries:
                keep |= set(info.files.values())
        api = HfApi(endpoint=self.endpoint, token=self.token, headers={"X-Fiun-Request": request_id})
        try:
            with _map_errors(f"{repo}: listing LFS files"):
                files = [f for f in api.list_lfs_files(repo) if f.oid not in keep]
            if files:
                with _map_errors(f"{repo}: purging LFS files"):
                    api.permanently_delete_lfs_files(repo, files, rewrite_history=True)
        except (BadInput, hfe.HfHubHTTPError) as exc:
            return {"unsupported": f"{repo}: history could not be purged on {self.location}: {exc}"}
        return {"deleted": len(files), "bytes_removed": sum(f.size for f in files)}

    def tag(self, repo: str, name: str, revision: str | None = None, *, force: bool = False) -> str:
        validate_ref_name(name)
        cid = self.resolve(repo, revision)
        with _map_errors(f"tagging {repo}"):
            if name in self.refs(repo)["tags"]:
                if not force:
                    raise BadInput(f"tag {name} already exists in {repo}; use --force to move it")
                self.api.delete_tag(repo, tag=name)
            self.api.create_tag(repo, tag=name, revision=cid)
        return cid


if TYPE_CHECKING:  # `mypy` (.ci/run) fails here when an HfHub method drifts from the Hub Protocol or from
    # the methods of the capability it states (hub/base.py)
    from .base import Hub, PurgeHistoryHub

    def _is_a_hub(hub: HfHub) -> Hub:
        return hub

    def _has_its_capabilities(hub: HfHub) -> PurgeHistoryHub:
        return hub


__all__ = ["HfHub", "PublishIncomplete", "parse_hf_spec"]
