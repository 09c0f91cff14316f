"""``fiun-hub serve``: a Hugging Face Hub-compatible HTTP endpoint over a :class:`~fiun_hub.hub.local.LocalHub`.

The unmodified ``huggingface_hub`` client (``HfApi(endpoint=URL, token=T)``, with ``HF_HUB_DISABLE_XET=1``) can
read (``model_info``, ``list_models``, ``list_repo_refs/commits/files/tree``, ``hf_hub_download``,
``snapshot_download``) and write (``create_repo``, ``upload_file``/``upload_folder``/``create_commit`` through the
preupload route, the git-LFS batch API with the ``basic`` transfer and the NDJSON commit route, ``create_tag``).
Routes, auth and limits are documented in docs/serve.md.

Every write goes through :meth:`LocalHub.publish` or :meth:`LocalHub.tag`: atomic, journaled, under the writers'
lock, with the lineage index kept current. Uploaded LFS bytes are streamed to a staging folder inside the hub's
``.fiun`` directory, checked against the sha256 and size the client declared, and deleted once the commit that
names them has been tried (whether it landed or not); nothing reaches the hub on any error.

Blocking hub work runs in Starlette's thread pool, never on the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

from ..constants import CARD_FILE, DEFAULT_AUTHOR, DEFAULT_BRANCH, LEDGER_REPO, RELATIONS
from ..errors import (
    BadInput,
    CardError,
    ConflictError,
    EntryNotFound,
    Purged,
    FiunError,
    RepoNotFound,
    RevisionNotFound,
)
from ..hub.ids import (COMMIT_RE, REF_NAME_RE, check_user_writable, repo_folder_name, validate_repo_id,
                      validate_repo_path, validate_tag_name)
from ..hub.local import Blob, LocalHub, RepoChange, purged_error, sha256_file

log = logging.getLogger("fiun_hub.serve")

MB = 1 << 20
DEFAULT_MAX_UPLOAD_MB = 4096
DEFAULT_PORT = 8000
LFS_THRESHOLD = 10 * MB  # files at least this large are LFS files (the Hub's limit for regular files)
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".npz", ".pkl",
    ".pickle", ".joblib", ".gguf", ".ot", ".tflite", ".pb", ".mlmodel", ".arrow", ".parquet", ".zip", ".tar",
    ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".wasm", ".model",
)
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
TICKET_TTL_S = 3600.0  # an LFS upload ticket, and a staged object, live this long without a commit
JSON_LIMIT = 16 * MB  # JSON request bodies (preupload, batch, create, tag, validate-yaml)
DRAIN_LIMIT = 64 * MB  # read (and drop) up to this much of an over-long body so the client sees our 413
MAX_COMMIT_LINES = 100_000  # operations in one NDJSON commit (the preupload and LFS batch take 10,000 files each)
HEADER_LIMIT = 64 << 10  # request line + headers, bytes (h11_max_incomplete_event_size); larger: 400, closed
HEADER_TIMEOUT_S = 10.0  # a connection must send a whole request head within this (and again after each answer)
BODY_TIMEOUT_S = 60.0  # at most this long between two pieces of a request body; then 408 and the connection closes
KEEP_ALIVE_S = 9.0  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive). Longer
# than huggingface_hub's httpx pool keeps one (keepalive_expiry 5 s): with equal times the client reuses a connection
# the server is closing and a POST fails with "connection reset"
WRITE_BATCH = 4 * MB
MEMORY_STAGE_MB = 64  # uploads up to this size are held in memory until their commit ($FIUN_HUB_SERVE_MEMORY_MB)
PAGE_MODELS, PAGE_TREE, PAGE_COMMITS = 1000, 1000, 100
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
XET_HINT = "fiun-hub serve does not support Xet storage; set HF_HUB_DISABLE_XET=1 in the client's environment"


# ---------------------------------------------------------------------------- small helpers
class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and ``X-Error-Code`` when ``code``)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


def _one_line(msg: object, limit: int = 1000) -> str:
    return " ".join(str(msg).split())[:limit]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _header_safe(value: object) -> str:
    """A header value h11 accepts: control characters (NUL, CR, LF, DEL, C1...) become ``?``, as does anything
    outside latin-1. Every header an answer carries goes through here (:func:`_error`)."""
    return _CONTROL.sub("?", str(value)).encode("latin-1", "replace").decode("latin-1")


def _loads(body: bytes | str, what: str = "request body") -> Any:
    """JSON from a client: malformed or too deeply nested (RecursionError) is a 400, never a 500."""
    try:
        return json.loads(body)
    except RecursionError:
        raise HTTPError(400, f"{what} is nested too deeply") from None
    except ValueError:
        raise HTTPError(400, f"{what} is not valid JSON") from None


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; anything else can be reached from other machines."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    if not is_loopback(host) and not allow_remote:
        raise BadInput(f"--host {host} is not a loopback address: the hub would be reachable from other machines; "
                       "pass --allow-remote if that is what you want")


def is_lfs(path: str, size: int, sample: bytes | None = None) -> bool:
    """Whether a file is an LFS file: a binary-model suffix, at least 10 MiB, or binary content (a NUL byte in its
    first 512 bytes). The same rule decides the preupload mode and the listing, so both agree."""
    if path.lower().endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD:
        return True
    return sample is not None and b"\x00" in sample[:512]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular file (what the Hub calls its ``oid`` / ``blobId``)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()


def _front_matter(data: bytes) -> dict | None:
    """A card's YAML front matter as plain JSON data (``cardData``), or None if it has none or is unreadable."""
    from huggingface_hub import ModelCard

    from ..card import MAX_CARD_BYTES, _plain

    if len(data) > MAX_CARD_BYTES:
        return None
    try:
        card = ModelCard(data.decode("utf-8"), ignore_metadata_errors=True)
        return _plain(card.data.to_dict(), CARD_FILE) or None
    except Exception:  # malformed YAML, not UTF-8, alias bomb...: the listing shows no cardData
        return None


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int, float))]
    return []


def card_tags(card: dict | None, files) -> list[str]:
    """The tags the Hub derives from a card: library, card tags, pipeline, license, datasets, ``safetensors``, and
    ``base_model:ORG/NAME`` plus ``base_model:RELATION:ORG/NAME`` for every parent.

    >>> card_tags({"library_name": "timm", "tags": ["fiun-hub"], "base_model": ["a/x", "b/y"],
    ...            "base_model_relation": "merge"}, ["model.safetensors"])[2:]
    ['safetensors', 'base_model:a/x', 'base_model:merge:a/x', 'base_model:b/y', 'base_model:merge:b/y']
    """
    card = card or {}
    tags: list[str] = []
    if isinstance(card.get("library_name"), str):
        tags.append(card["library_name"])
    tags += _str_list(card.get("tags"))
    if isinstance(card.get("pipeline_tag"), str):
        tags.append(card["pipeline_tag"])
    if any(str(p).endswith(".safetensors") for p in files):
        tags.append("safetensors")
    tags += [f"license:{v}" for v in _str_list(card.get("license"))]
    tags += [f"dataset:{v}" for v in _str_list(card.get("datasets"))]
    bases = _str_list(card.get("base_model"))
    relation = card.get("base_model_relation")
    if relation not in RELATIONS:
        relation = "merge" if len(bases) > 1 else "finetune"
    for b in bases:
        tags += [f"base_model:{b}", f"base_model:{relation}:{b}"]
    return list(dict.fromkeys(tags))


def _str_field(card: dict | None, key: str) -> str | None:
    value = (card or {}).get(key)
    return value if isinstance(value, str) else None


def _norm_rev(rev: str) -> str:
    """Hub spellings of a revision -> ours: ``refs/heads/main`` -> ``main``, ``refs/tags/v1`` -> ``tags/v1``."""
    if rev.startswith("refs/heads/"):
        return rev[len("refs/heads/"):]
    if rev.startswith("refs/tags/"):
        return "tags/" + rev[len("refs/tags/"):]
    return rev


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.mutex = threading.Lock()

    def get_or(self, key, make: Callable[[], Any]):
        with self.mutex:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self.mutex:
            self[key] = value
            if len(self) > self.size:
                self.popitem(last=False)
        return value


@dataclass
class _Ticket:
    repo: str
    oid: str
    size: int
    expires: float
    busy: bool = False


@dataclass
class _Staged:
    path: Path | None  # on disk in the staging folder, or
    data: bytes | None  # held in memory (verified bytes, no re-read or re-hash at commit)
    size: int
    expires: float


# ---------------------------------------------------------------------------- the app
try:  # starlette is an optional dependency (pip install 'fiun-hub[serve]')
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    class _BlobResponse(FileResponse):
        chunk_size = 1 << 20  # 64 KiB reads (starlette's default) cost a thread hop each

    HAVE_STARLETTE = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_STARLETTE = False

SERVE_HINT = "fiun-hub serve needs starlette and uvicorn: pip install 'fiun-hub[serve]'"


def create_app(hub: LocalHub, token: str | None, open_reads: bool = True,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * MB, *, author: str | None = None,
               memory_stage_bytes: int | None = None, body_timeout: float = BODY_TIMEOUT_S) -> "Starlette":
    """The Starlette app serving ``hub``. ``token``: the bearer token writes need (None: read-only server);
    ``open_reads=False``: reads need it too; ``max_upload_bytes``: the largest file (and request body) accepted;
    ``body_timeout``: the longest wait for the next piece of a request body (then 408, connection closed).

    Uploaded LFS objects up to ``memory_stage_bytes`` (default ``$FIUN_HUB_SERVE_MEMORY_MB`` MiB, else 64 MiB;
    at most four times that in memory at once) wait for their commit in memory, larger ones in the staging
    folder ``HUB/.fiun/serve-staging/``."""
    if not HAVE_STARLETTE:
        raise BadInput(SERVE_HINT)
    if not open_reads and not token:
        raise BadInput("a private server needs a token (--token or $FIUN_HUB_TOKEN)")
    if max_upload_bytes <= 0:
        raise BadInput("the upload limit must be positive")
    if not body_timeout > 0:
        raise BadInput("the body timeout must be positive")
    if memory_stage_bytes is None:
        try:
            memory_stage_bytes = int(float(os.environ.get("FIUN_HUB_SERVE_MEMORY_MB", MEMORY_STAGE_MB)) * MB)
        except ValueError:
            raise BadInput("FIUN_HUB_SERVE_MEMORY_MB must be a number of MiB") from None
    state = _Server(hub, token, open_reads, int(max_upload_bytes), author or DEFAULT_AUTHOR,
                    max(int(memory_stage_bytes), 0))
    state.body_timeout = float(body_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            state.close()

    async def unrouted(request, exc):
        # Starlette's router matched nothing (a path holding a newline, another method): the same dispatcher and
        # error mapper answer it, never Starlette's plain-text page.
        return await state.dispatch(request)

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
    app = Starlette(routes=[Route("/{path:path}", state.dispatch, methods=methods)], lifespan=lifespan,
                    exception_handlers={404: unrouted, 405: unrouted})
    app.state.fiun = state
    return app


class _Server:
    def __init__(self, hub: LocalHub, token: str | None, open_reads: bool, max_upload: int, author: str,
                 memory_stage: int):
        self.hub = hub
        self.token = token or None
        self.open_reads = open_reads
        self.max_upload = max_upload
        self.max_body = 2 * max_upload + MB  # an NDJSON commit carries regular files inline, base64-encoded
        self.body_timeout = BODY_TIMEOUT_S
        self.author = author
        self.memory_stage, self.memory_total, self.memory_used = memory_stage, 4 * memory_stage, 0
        self.mutex = threading.Lock()
        self.tickets: dict[str, _Ticket] = {}
        self.staged: dict[tuple[str, str], _Staged] = {}
        self.blob_meta = _LRU(65536)  # (sha256, path-suffix-is-lfs, size) -> (lfs, blob oid)
        self.summaries = _LRU(8192)  # commit id -> card data, tags, creation time
        self.created = _LRU(65536)  # commit id -> time of the repo's first commit
        self.staging = self._make_staging()
        R = r"(?P<org>[^/]+)/(?P<name>[^/]+)"
        routes: list[tuple[str, str, Callable]] = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("GET", r"/api/models", self.list_models),
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("GET", rf"/api/models/{R}", self.model_info),
            ("GET", rf"/api/models/{R}/revision/(?P<rev>[^/]+)", self.model_info),
            ("GET", rf"/api/models/{R}/refs", self.refs),
            ("GET", rf"/api/models/{R}/commits/(?P<rev>[^/]+)", self.commits),
            ("GET", rf"/api/models/{R}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self.tree),
            ("POST", rf"/api/models/{R}/paths-info/(?P<rev>[^/]+)", self.paths_info),
            ("POST", rf"/api/models/{R}/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", rf"/api/models/{R}/commit/(?P<rev>[^/]+)", self.commit),
            ("POST", rf"/api/models/{R}/tag/(?P<rev>[^/]+)", self.create_tag),
            ("GET", rf"/api/models/{R}/lfs-files", self.lfs_files),
            ("POST", rf"/api/models/{R}/lfs-files/batch", self.lfs_files_delete),
            ("*", rf"/api/models/{R}/xet-[a-z]+-token(?:/.*)?", self.no_xet),
            ("POST", rf"/{R}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/api/fiun/lfs-upload/(?P<ticket>[A-Za-z0-9_-]{16,64})", self.lfs_put),
            ("POST", rf"/api/fiun/lfs-verify/{R}", self.lfs_verify),
            ("GET", rf"/{R}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            ("*", r"/api/(?:datasets|spaces|kernels)(?:/.*)?", self.not_models),
            ("*", r"/(?:datasets|spaces)/.*", self.not_models),
        ]
        self.routes = [(m, re.compile(p + r"\Z"), h) for m, p, h in routes]

    # ------------------------------------------------------------------ staging folder
    def _make_staging(self) -> Path:
        parent = self.hub.meta / "serve-staging"
        parent.mkdir(exist_ok=True)
        for d in parent.iterdir():  # left by a server that is gone (crash, kill -9)
            pid = d.name.split("-", 1)[0]
            if not (pid.isdigit() and _pid_alive(int(pid))):
                shutil.rmtree(d, ignore_errors=True)
        mine = parent / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        mine.mkdir()
        return mine

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.staging.parent.rmdir()  # only when no other server uses it

    def _staged_name(self, repo: str, oid: str) -> Path:
        return self.staging / f"{repo_folder_name(repo)}.{oid}"

    def _purge_expired(self) -> None:
        now = time.monotonic()
        with self.mutex:
            for t in [k for k, v in self.tickets.items() if v.expires < now and not v.busy]:
                del self.tickets[t]
        self._drop_staged([k for k, v in list(self.staged.items()) if v.expires < now])

    def _drop_staged(self, keys) -> None:
        with self.mutex:
            gone = [self.staged.pop(k) for k in keys if k in self.staged]
            self.memory_used -= sum(s.size for s in gone if s.data is not None)
        for s in gone:
            if s.path is not None:
                s.path.unlink(missing_ok=True)

    def _reserve_memory(self, size: int) -> bool:
        with self.mutex:
            if size > self.memory_stage or self.memory_used + size > self.memory_total:
                return False
            self.memory_used += size
            return True

    # ------------------------------------------------------------------ dispatch, errors, auth
    async def dispatch(self, request: "Request") -> "Response":
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        method = request.method.upper()
        want = "GET" if method == "HEAD" else method
        handler, groups, allowed = None, {}, False
        for m, rx, h in self.routes:
            match = rx.match(path)
            if match:
                allowed = True
                if m in (want, "*"):
                    handler = h
                    groups = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    break
        try:
            if handler is None:
                if allowed:
                    raise HTTPError(405, f"{method} is not allowed on {unquote(path)}")
                raise HTTPError(404, f"fiun-hub serve has no route {method} {unquote(path)[:200]} "
                                     "(see docs/serve.md for what it supports)")
            return await handler(request, **groups)
        except ClientDisconnect:
            return Response(status_code=400, headers={"Connection": "close"})
        except Exception as exc:  # noqa: BLE001 - the one error mapper of every route
            status, message, code, headers, extra = _error_of(exc, method, path)
            if request.method.upper() in ("POST", "PUT", "PATCH") and not getattr(request.state, "body_done", False):
                # The body was not read to its end (over the limit, too slow, refused before reading): close the
                # connection after the answer instead of reading the rest of the body to keep it alive.
                headers = {**headers, "Connection": "close"}
            return _error(status, message, code, headers, extra)

    def _auth(self, request: "Request", write: bool) -> None:
        if not write and self.open_reads:
            return
        if write and self.token is None:
            raise HTTPError(403, "this server is read-only: start `fiun-hub serve` with --token to accept writes")
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPError(401, "a token is required: send `Authorization: Bearer <token>` "
                                 "(HfApi(token=...) or HF_TOKEN)", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise HTTPError(403, "invalid token")

    @staticmethod
    def _repo(org: str, name: str) -> str:
        repo = f"{org}/{name}"
        try:
            return validate_repo_id(repo)
        except BadInput:
            raise RepoNotFound(f"repo {repo[:200]} not found (fiun-hub repo ids are org/name)") from None

    @staticmethod
    def _writable(repo: str) -> None:
        try:
            check_user_writable(repo)
        except BadInput as exc:
            raise HTTPError(403, str(exc)) from None

    def _write_target(self, request, org: str, name: str, *, commit: bool = False) -> str:
        """The repo a write route may change: the token checked, the ledger refused, and for a commit (preupload,
        commit) no pull request."""
        self._auth(request, write=True)
        repo = self._repo(org, name)
        self._writable(repo)
        if commit and request.query_params.get("create_pr"):
            raise HTTPError(400, "pull requests are not supported by fiun-hub serve")
        return repo

    def _commit_info(self, repo: str, rev: str | None):
        """commit_info with every malformed revision answered as 'revision not found' (after the repo check)."""
        rev = _norm_rev(rev or DEFAULT_BRANCH)
        if not COMMIT_RE.match(rev) and not REF_NAME_RE.match(rev.removeprefix("tags/")):
            if not self.hub.repo_exists(repo):
                raise RepoNotFound(f"repo {repo} not found")
            raise RevisionNotFound(f"revision {rev[:100]!r} not found in {repo}")
        info = self.hub.commit_info(repo, rev)
        stones = self.hub.tombstones(repo, info.id)
        if stones:  # purged files are not listed (tree, paths-info, siblings); resolve answers 451 for them
            info = dataclasses.replace(info, files={p: h for p, h in info.files.items() if p not in stones})
        return info

    @staticmethod
    def _base(request: "Request") -> str:
        return str(request.base_url).rstrip("/")

    async def _chunks(self, request: "Request"):
        """The request body piece by piece; more than ``body_timeout`` seconds without a piece is a 408 (and the
        connection is closed). Sets ``request.state.body_done`` once the body was read to its end."""
        stream = request.stream().__aiter__()
        while True:
            try:
                if hasattr(asyncio, "timeout"):  # Python 3.11+: no task per piece, as wait_for makes
                    async with asyncio.timeout(self.body_timeout):
                        chunk = await stream.__anext__()
                else:  # pragma: no cover - Python 3.10
                    chunk = await asyncio.wait_for(stream.__anext__(), self.body_timeout)
            except StopAsyncIteration:
                request.state.body_done = True
                return
            except asyncio.TimeoutError:
                raise HTTPError(408, f"no part of the request body came for {self.body_timeout:g}s; closing the "
                                     "connection") from None
            yield chunk

    async def _body(self, request: "Request", limit: int) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + DRAIN_LIMIT:
            raise HTTPError(413, f"request body of {int(declared)} bytes is over this server's limit of {limit}")
        buf = bytearray()
        n = 0
        async for chunk in self._chunks(request):
            n += len(chunk)
            if n > limit + DRAIN_LIMIT:
                break  # read and dropped enough (a chunked body declares no length): answer now, then close
            if n <= limit:
                buf += chunk
        if n > limit:
            raise HTTPError(413, f"request body is over this server's limit of {limit} bytes (--max-upload-mb)")
        return bytes(buf)

    async def _json(self, request: "Request") -> dict:
        data = _loads(await self._body(request, JSON_LIMIT))
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return data

    # ------------------------------------------------------------------ blob metadata
    def _meta(self, repo: str, path: str, sha: str, size: int) -> tuple[bool, str]:
        """(is LFS, git blob id) of one file; small files are read once (cached by content)."""
        by_name = is_lfs(path, size)

        def make() -> tuple[bool, str]:
            if by_name:
                return True, git_blob_sha1(lfs_pointer(sha, size))
            data = self.hub.blob_path(repo, sha).read_bytes()
            if is_lfs(path, len(data), data[:512]):
                return True, git_blob_sha1(lfs_pointer(sha, len(data)))
            return False, git_blob_sha1(data)

        return self.blob_meta.get_or((sha, by_name, size), make)

    def _size(self, repo: str, info, path: str) -> int:
        size = info.sizes.get(path)
        return size if isinstance(size, int) else self.hub.blob_path(repo, info.files[path]).stat().st_size

    def _file_entry(self, repo: str, info, path: str) -> dict:
        sha = info.files[path]
        size = self._size(repo, info, path)
        lfs, oid = self._meta(repo, path, sha, size)
        entry = {"type": "file", "oid": oid, "size": size, "path": path}
        if lfs:
            entry["lfs"] = {"oid": sha, "size": size, "pointerSize": len(lfs_pointer(sha, size))}
        return entry

    def _created_at(self, repo: str, info) -> str:
        chain, cur = [], info
        while True:
            with self.created.mutex:
                known = self.created.get(cur.id)
            if known is not None:
                break
            chain.append(cur.id)
            if not cur.parents:
                known = cur.time
                break
            cur = self.hub.commit_info(repo, cur.parents[0])
        for cid in chain:
            self.created.get_or(cid, lambda: known)
        return known

    def _summary(self, repo: str, info) -> dict:
        def make() -> dict:
            card = None
            if CARD_FILE in info.files:
                card = _front_matter(self.hub.read_file(repo, CARD_FILE, info.id))
            card = card or None
            return {
                "card": card,
                "tags": card_tags(card, info.files),
                "library_name": _str_field(card, "library_name"),
                "pipeline_tag": _str_field(card, "pipeline_tag"),
                "created": self._created_at(repo, info),
            }

        return self.summaries.get_or(info.id, make)

    def _model_json(self, repo: str, info, *, blobs: bool = False) -> dict:
        s = self._summary(repo, info)
        stones = self.hub.tombstones(repo, info.id)
        present = [p for p in sorted(info.files) if p not in stones]
        if blobs:
            siblings = []
            for p in present:
                e = self._file_entry(repo, info, p)
                sib = {"rfilename": p, "size": e["size"], "blobId": e["oid"]}
                if "lfs" in e:
                    sib["lfs"] = {"size": e["size"], "sha256": e["lfs"]["oid"], "pointerSize": e["lfs"]["pointerSize"]}
                siblings.append(sib)
        else:
            siblings = [{"rfilename": p} for p in present]
        removed = [{"rfilename": p, "request": st.get("request"), "at": st.get("at"), "status": 451,
                    "message": str(purged_error(repo, info.id, p, st))} for p, st in sorted(stones.items())]
        return {
            "_id": repo, "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": info.id,
            "lastModified": info.time, "createdAt": s["created"], "private": not self.open_reads,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "library_name": s["library_name"],
            "tags": list(s["tags"]), "pipeline_tag": s["pipeline_tag"], "cardData": s["card"],
            "siblings": siblings, "spaces": [], "removed": removed,
            "usedStorage": sum(v for v in info.sizes.values() if isinstance(v, int)),
        }

    # ------------------------------------------------------------------ read routes
    async def whoami(self, request):
        if self.token is None:
            raise HTTPError(401, "this server has no token (read-only)")
        self._auth(request, write=True)
        return JSONResponse({"type": "user", "name": "fiun-hub", "fullname": "fiun-hub serve", "orgs": [],
                             "auth": {"type": "access_token",
                                      "accessToken": {"displayName": "fiun-hub serve", "role": "write"}}})

    async def model_info(self, request, org, name, rev=None):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        q = request.query_params
        blobs = q.get("blobs", "").lower() in ("1", "true")
        expand = q.getlist("expand") + q.getlist("expand[]")

        def work():
            return self._model_json(repo, self._commit_info(repo, rev), blobs=blobs)

        data = await run_in_threadpool(work)
        if expand:
            data = {"_id": data["_id"], "id": data["id"], **{k: data[k] for k in expand if k in data}}
        return JSONResponse(data)

    async def list_models(self, request):
        self._auth(request, write=False)
        q = request.query_params
        filters = [f for v in q.getlist("filter") for f in v.split(",") if f]
        author, search = q.get("author"), (q.get("search") or "").lower()
        full = q.get("full", "").lower() in ("1", "true")
        with_card = q.get("cardData", "").lower() in ("1", "true")
        with_config = q.get("config", "").lower() in ("1", "true")
        expand = q.getlist("expand") + q.getlist("expand[]")
        sort, direction = q.get("sort"), q.get("direction")
        try:
            limit = int(q["limit"]) if q.get("limit") else None
            cursor = int(q.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "limit and cursor must be integers") from None

        def work() -> list[dict]:
            out = []
            for repo in self.hub.list_repos():
                if author and repo.split("/")[0] != author:
                    continue
                if search and search not in repo.lower():
                    continue
                try:
                    info = self.hub.commit_info(repo)
                except FiunError:
                    continue  # a repo whose head is unreadable is left out of listings (fiun-hub verify reports it)
                data = self._model_json(repo, info)
                if any(f not in data["tags"] and f != repo for f in filters):
                    continue
                if with_config and "config.json" in info.files:
                    with contextlib.suppress(Exception):
                        if self._size(repo, info, "config.json") <= MB:
                            data["config"] = json.loads(self.hub.read_file(repo, "config.json", info.id))
                out.append(data)
            return out

        items = await run_in_threadpool(work)
        if sort:
            key = {"lastModified": "lastModified", "createdAt": "createdAt", "id": "id"}.get(sort)
            if key:
                items.sort(key=lambda d: d[key], reverse=direction != "1")
        if limit is not None:
            items = items[:max(limit, 0)]
        shown = []
        for d in items:
            if expand:
                shown.append({"_id": d["_id"], "id": d["id"], **{k: d[k] for k in expand if k in d}})
                continue
            keep = ["_id", "id", "modelId", "author", "sha", "lastModified", "createdAt", "private", "downloads",
                    "likes", "tags", "library_name", "pipeline_tag"]
            if full:
                keep += ["siblings", "gated", "disabled"]
            if with_card:
                keep.append("cardData")
            if "config" in d:
                keep.append("config")
            shown.append({k: d[k] for k in keep if k in d})
        return self._page(request, shown, cursor, PAGE_MODELS)

    def _page(self, request, items: list, cursor: int, size: int) -> "Response":
        page = items[cursor:cursor + size]
        headers = {}
        if cursor + size < len(items):
            nxt = request.url.include_query_params(cursor=str(cursor + size))
            headers["Link"] = f'<{nxt}>; rel="next"'
        return JSONResponse(page, headers=headers)

    # ------------------------------------------------------------------ LFS files: list and purge (docs/serve.md)
    def _lfs_objects(self, repo: str) -> dict[str, dict]:
        """``{sha256: {"filename", "pushedAt", "size", "commits": [(commit, path)]}}`` of the LFS files still in
        ``repo``'s blobs (named by a commit outside a tombstone)."""
        out: dict[str, dict] = {}
        infos = []
        for cid in self.hub.commits(repo):
            try:
                infos.append(self.hub.commit_info(repo, cid))
            except BadInput:
                continue
        for info in sorted(infos, key=lambda i: i.time):
            stones = self.hub.tombstones(repo, info.id)
            for p, sha in info.files.items():
                if p in stones or not self.hub.blob_path(repo, sha).is_file():
                    continue
                size = self._size(repo, info, p)
                if not self._meta(repo, p, sha, size)[0]:
                    continue
                o = out.setdefault(sha, {"filename": p, "pushedAt": info.time, "size": size, "commits": []})
                o["filename"] = p
                o["commits"].append((info.id, p))
        return out

    async def lfs_files(self, request, org, name):
        """``HfApi.list_lfs_files``: the repo's LFS files (token required), paginated by a Link header."""
        self._auth(request, write=True)
        repo = self._repo(org, name)
        try:
            cursor = int(request.query_params.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "cursor must be an integer") from None

        def work() -> list[dict]:
            if not self.hub.repo_exists(repo):
                raise RepoNotFound(f"repo {repo} not found")
            return [{"fileOid": sha, "oid": sha, "filename": o["filename"], "pushedAt": o["pushedAt"], "ref": None,
                     "size": o["size"]} for sha, o in sorted(self._lfs_objects(repo).items())]

        return self._page(request, await run_in_threadpool(work), max(cursor, 0), 1000)

    async def lfs_files_delete(self, request, org, name):
        """``HfApi.permanently_delete_lfs_files``: purge LFS files from every revision that names them (token
        required): tombstones naming the request of the ``X-Fiun-Request`` header (else ``lfs-files-api``), blobs
        deleted. A file the head names is refused (409): commit its removal first."""
        from ..compliance import REQUEST_ID_RE

        repo = self._write_target(request, org, name)
        data = await self._json(request)
        shas = (data.get("deletions") or {}).get("sha") if isinstance(data.get("deletions"), dict) else None
        if not isinstance(shas, list) or not all(isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x)
                                                 for x in shas):
            raise HTTPError(400, "lfs-files/batch needs `deletions`: {sha: [sha256...], rewriteHistory: bool}")
        rid = request.headers.get("x-fiun-request") or "lfs-files-api"
        if not REQUEST_ID_RE.match(rid) or ".." in rid:
            raise HTTPError(400, "X-Fiun-Request must be a request id (letters, digits, . _ -)")

        def work() -> dict:
            from ..unlearn import utc_now

            with self.hub.lock():
                objects = self._lfs_objects(repo)
                head = self.hub.commit_info(repo, self.hub.head(repo))
                missing = [x for x in shas if x not in objects]
                if missing:
                    raise HTTPError(404, f"LFS file {missing[0][:12]} is not in {repo}", "EntryNotFound")
                live = [x for x in shas if x in head.files.values()]
                if live:
                    raise HTTPError(409, f"LFS file {live[0][:12]} is in the head of {repo}; commit its removal "
                                         "first, then purge the history")
                at = utc_now()
                entries = [{"repo": repo, "commit": cid, "path": p, "sha256": x,
                            "size": objects[x]["size"], "request": rid, "at": at}
                           for x in dict.fromkeys(shas) for cid, p in objects[x]["commits"]]
                self.hub.purge(entries)
            return {"deleted": len(set(shas))}

        return JSONResponse(await run_in_threadpool(work))

    async def refs(self, request, org, name):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        refs = await run_in_threadpool(self.hub.refs, repo)
        return JSONResponse({
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                         for b, c in sorted(refs["branches"].items())],
            "converts": [],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in sorted(refs["tags"].items())],
            "pullRequests": [],
        })

    async def commits(self, request, org, name, rev):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        formatted = "formatted" in request.query_params.getlist("expand[]") + request.query_params.getlist("expand")
        try:
            cursor = int(request.query_params.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "cursor must be an integer") from None

        def work():
            head = self._commit_info(repo, rev)
            return self.hub.history(repo, head.id)

        items = []
        for c in await run_in_threadpool(work):
            title, _, rest = c.message.partition("\n")
            item = {"id": c.id, "title": title, "message": rest.strip("\n"),
                    "authors": [{"user": c.author, "avatar": None}], "date": c.time, "parents": list(c.parents)}
            if formatted:
                item["formatted"] = {"title": _html(title), "message": _html(rest.strip("\n"))}
            items.append(item)
        return self._page(request, items, cursor, PAGE_COMMITS)

    async def tree(self, request, org, name, rev, path=None):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        prefix = (path or "").strip("/")
        try:
            cursor = int(request.query_params.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "cursor must be an integer") from None

        def work() -> list[dict]:
            info = self._commit_info(repo, rev)
            files = sorted(info.files)
            under = [p for p in files if not prefix or p.startswith(prefix + "/")]
            if prefix and not under:
                if prefix in info.files:
                    raise HTTPError(400, f"{prefix} is a file, not a folder; use paths-info or resolve",
                                    headers={"X-Repo-Commit": info.id})
                raise HTTPError(404, f"{prefix} not found in {repo}@{info.id[:12]}", "EntryNotFound",
                                headers={"X-Repo-Commit": info.id})
            start = len(prefix) + 1 if prefix else 0
            folders: dict[str, list[str]] = {}
            out = []
            for p in under:
                rel = p[start:].split("/")
                for depth in range(1, len(rel)):
                    if not recursive and depth > 1:
                        break
                    folders.setdefault(p[:start] + "/".join(rel[:depth]), []).append(p)
                if recursive or len(rel) == 1:
                    out.append(self._file_entry(repo, info, p))
            for f, members in folders.items():
                oid = hashlib.sha1("\n".join(f"{m} {info.files[m]}" for m in members).encode()).hexdigest()
                out.append({"type": "directory", "oid": oid, "size": 0, "path": f})
            out.sort(key=lambda e: (e["path"].count("/"), e["type"] != "directory", e["path"]))
            return out

        return self._page(request, await run_in_threadpool(work), cursor, PAGE_TREE)

    async def paths_info(self, request, org, name, rev):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        body = await self._body(request, JSON_LIMIT)
        if "json" in request.headers.get("content-type", ""):
            data = _loads(body)
            paths = data.get("paths") if isinstance(data, dict) else None
        else:
            paths = parse_qs(body.decode("utf-8", "replace")).get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise HTTPError(400, "paths-info needs a list of paths")

        def work() -> list[dict]:
            info = self._commit_info(repo, rev)
            out = []
            for p in dict.fromkeys(x.strip("/") for x in paths):
                if p in info.files:
                    out.append(self._file_entry(repo, info, p))
                elif any(f.startswith(p + "/") for f in info.files):
                    members = [f for f in sorted(info.files) if f.startswith(p + "/")]
                    oid = hashlib.sha1("\n".join(f"{m} {info.files[m]}" for m in members).encode()).hexdigest()
                    out.append({"type": "directory", "oid": oid, "size": 0, "path": p})
            return out

        return JSONResponse(await run_in_threadpool(work))

    async def resolve(self, request, org, name, rev, path):
        self._auth(request, write=False)
        repo = self._repo(org, name)

        def work():
            info = self._commit_info(repo, rev)
            stone = self.hub.tombstones(repo, info.id).get(path)
            if stone is not None:
                raise purged_error(repo, info.id, path, stone)
            if path not in info.files:
                raise HTTPError(404, f"{path[:300]} not found in {repo}@{info.id[:12]}", "EntryNotFound",
                                headers={"X-Repo-Commit": info.id})
            blob = self.hub.file_path(repo, path, info.id)
            st = blob.stat()
            lfs, oid = self._meta(repo, path, info.files[path], st.st_size)
            return info, blob, st, lfs, oid

        info, blob, st, lfs, oid = await run_in_threadpool(work)
        sha = info.files[path]
        headers = {"X-Repo-Commit": info.id, "ETag": f'"{sha if lfs else oid}"', "Accept-Ranges": "bytes",
                   "Cache-Control": "public, max-age=31536000, immutable" if COMMIT_RE.match(rev) else "no-cache"}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(st.st_size)})
        return _BlobResponse(blob, headers=headers, media_type="application/octet-stream", stat_result=st)

    async def validate_yaml(self, request):
        self._auth(request, write=False)
        data = await self._json(request)
        content = data.get("content")
        if not isinstance(content, str):
            raise HTTPError(400, "validate-yaml needs the card text in `content`")
        from ..card import parse_card_full

        try:
            await run_in_threadpool(parse_card_full, content, CARD_FILE)
        except CardError as exc:
            msg = _one_line(exc)
            raise HTTPError(400, msg, extra={"errors": [{"message": msg}], "warnings": []}) from None
        return JSONResponse({"errors": [], "warnings": []})

    async def no_xet(self, request, org, name):
        raise HTTPError(501, XET_HINT)

    async def not_models(self, request):
        raise HTTPError(404, "fiun-hub serve holds model repos only (no datasets, spaces or kernels)", "RepoNotFound")

    # ------------------------------------------------------------------ write routes
    async def create_repo(self, request):
        self._auth(request, write=True)
        data = await self._json(request)
        if data.get("type") not in (None, "model"):
            raise HTTPError(400, f"fiun-hub serve holds model repos only, not {str(data.get('type'))[:40]}")
        org, name = data.get("organization"), data.get("name")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "create needs a repo name")
        if not isinstance(org, str) or not org:
            raise HTTPError(400, "fiun-hub repo ids are org/name: pass repo_id='ORG/NAME'")
        repo = validate_repo_id(f"{org}/{name}")  # InvalidRepoId -> 400
        self._writable(repo)
        url = f"{self._base(request)}/{repo}"
        if await run_in_threadpool(self.hub.repo_exists, repo):
            raise HTTPError(409, f"You already created this model repo: {repo}", extra={"url": url})
        change = RepoChange(repo, files={".gitattributes": GITATTRIBUTES.encode()}, message="initial commit",
                            parent_commit="", author=self.author)
        try:
            await run_in_threadpool(self.hub.publish, [change])
        except ConflictError:
            raise HTTPError(409, f"You already created this model repo: {repo}", extra={"url": url}) from None
        return JSONResponse({"url": url, "name": repo, "id": repo})

    async def create_tag(self, request, org, name, rev):
        repo = self._write_target(request, org, name)
        data = await self._json(request)
        tag = data.get("tag")
        try:
            validate_tag_name(tag)
        except BadInput:
            raise HTTPError(400, f"invalid tag name {str(tag)[:100]!r}: letters, digits, '.', '_', '-' (not 'main')") \
                from None

        def work() -> str:
            if tag in self.hub.refs(repo)["tags"]:
                raise HTTPError(409, f"tag {tag} already exists in {repo}")
            cid = self._commit_info(repo, rev).id
            try:
                return self.hub.tag(repo, tag, cid)
            except BadInput as exc:
                if "already exists" in str(exc):
                    raise HTTPError(409, str(exc)) from None
                raise

        cid = await run_in_threadpool(work)
        return JSONResponse({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": cid})

    def _check_branch(self, repo: str, rev: str) -> None:
        if not self.hub.repo_exists(repo):
            raise RepoNotFound(f"repo {repo} not found")
        if _norm_rev(rev) != DEFAULT_BRANCH:
            raise RevisionNotFound(f"branch {rev[:100]!r} not found in {repo}: fiun-hub serve writes to "
                                   f"{DEFAULT_BRANCH} only (no other branches, no pull requests)")

    async def preupload(self, request, org, name, rev):
        repo = self._write_target(request, org, name, commit=True)
        data = await self._json(request)
        files = data.get("files")
        if not isinstance(files, list) or len(files) > 10000:
            raise HTTPError(400, "preupload needs `files`: a list of {path, sample, size}")
        parsed = []
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("path"), str) or type(f.get("size")) is not int \
                    or f["size"] < 0:
                raise HTTPError(400, "each preupload file needs a path and an integer size")
            validate_repo_path(f["path"])
            try:
                sample = base64.b64decode(f.get("sample") or "", validate=True)[:512]
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"sample of {f['path'][:200]} is not base64") from None
            if f["size"] > self.max_upload:
                raise HTTPError(413, f"{f['path'][:200]} is {f['size']} bytes, over this server's upload limit of "
                                     f"{self.max_upload} bytes (--max-upload-mb)")
            parsed.append((f["path"], f["size"], sample))

        def work() -> dict:
            self._check_branch(repo, rev)
            info = self.hub.commit_info(repo)
            out = []
            for p, size, sample in parsed:
                mode = "lfs" if is_lfs(p, size, sample) else "regular"
                oid = None
                if p in info.files and self._size(repo, info, p) == size:
                    if mode == "lfs":
                        oid = info.files[p]
                    else:
                        remote_lfs, blob_oid = self._meta(repo, p, info.files[p], size)
                        oid = None if remote_lfs else blob_oid
                out.append({"path": p, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return {"files": out, "commitOid": info.id}

        return JSONResponse(await run_in_threadpool(work))

    async def lfs_batch(self, request, org, name):
        repo = self._write_target(request, org, name)
        data = await self._json(request)
        if data.get("operation") != "upload":
            raise HTTPError(400, "the LFS batch API here only uploads; download files through /resolve")
        transfers = data.get("transfers") or ["basic"]
        if not isinstance(transfers, list) or "basic" not in transfers:
            raise HTTPError(400, f"only the basic LFS transfer is supported. {XET_HINT}")
        if data.get("hash_algo", "sha256") != "sha256":
            raise HTTPError(400, "only sha256 LFS objects are supported")
        objects = data.get("objects")
        if not isinstance(objects, list) or len(objects) > 10000:
            raise HTTPError(400, "LFS batch needs `objects`: a list of {oid, size}")
        for o in objects:
            if not isinstance(o, dict) or not isinstance(o.get("oid"), str) or not SHA256_RE.fullmatch(o["oid"]) \
                    or type(o.get("size")) is not int or o["size"] < 0:
                raise HTTPError(400, "each LFS object needs a sha256 `oid` (64 lowercase hex) and an integer `size`")
            if o["size"] > self.max_upload:
                raise HTTPError(413, f"LFS object {o['oid'][:12]} is {o['size']} bytes, over this server's upload "
                                     f"limit of {self.max_upload} bytes (--max-upload-mb)")
        rev = data.get("ref", {}).get("name") if isinstance(data.get("ref"), dict) else None
        await run_in_threadpool(self._check_branch, repo, rev or DEFAULT_BRANCH)
        self._purge_expired()
        base = self._base(request)

        def present(oid: str, size: int) -> bool:
            with self.mutex:
                s = self.staged.get((repo, oid))
                if s is not None and s.size == size:
                    s.expires = time.monotonic() + TICKET_TTL_S
                    return True
            blob = self.hub.blob_path(repo, oid)
            return blob.is_file() and not blob.is_symlink() and blob.stat().st_size == size

        out = []
        for o in objects:
            oid, size = o["oid"], o["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not await run_in_threadpool(present, oid, size):
                ticket = secrets.token_urlsafe(24)
                with self.mutex:
                    self.tickets[ticket] = _Ticket(repo, oid, size, time.monotonic() + TICKET_TTL_S)
                entry["actions"] = {
                    "upload": {"href": f"{base}/api/fiun/lfs-upload/{ticket}", "expires_in": int(TICKET_TTL_S)},
                    "verify": {"href": f"{base}/api/fiun/lfs-verify/{repo}", "expires_in": int(TICKET_TTL_S)},
                }
            out.append(entry)
        return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    async def lfs_put(self, request, ticket):
        """The upload href of one LFS object: its secret ticket is the credential (the client sends no token to
        an upload URL). The bytes are streamed to memory (small objects) or to the staging folder, and kept only
        if their size and sha256 are the declared ones."""
        with self.mutex:
            t = self.tickets.get(ticket)
            if t is None or t.expires < time.monotonic() or t.busy:
                t = None
            else:
                t.busy = True
        if t is None:
            raise HTTPError(404, "unknown, expired or busy LFS upload ticket; ask the batch API again")
        in_memory = self._reserve_memory(t.size)
        tmp = None if in_memory else self.staging / f".incoming-{uuid.uuid4().hex}"
        fh, kept, pending = None, False, None
        try:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_upload + DRAIN_LIMIT:
                raise HTTPError(413, f"upload of {int(declared)} bytes is over this server's limit of "
                                     f"{self.max_upload} bytes (--max-upload-mb)")
            h = hashlib.sha256()
            parts: list[bytes] = []
            if tmp is not None:
                fh = await run_in_threadpool(open, tmp, "wb")

            def write(data: bytes) -> None:
                h.update(data)
                if fh is None:
                    parts.append(data)
                else:
                    fh.write(data)

            async def flush(data: bytes) -> None:
                """Hash and store ``data`` in a worker thread while the next batch is received (one in flight,
                so the order is kept)."""
                nonlocal pending
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(run_in_threadpool(write, data))

            n, buf, over = 0, bytearray(), False
            async for chunk in self._chunks(request):
                n += len(chunk)
                if over or n > t.size or n > self.max_upload:
                    over = True
                    if n > max(t.size, self.max_upload) + DRAIN_LIMIT:
                        break
                    continue
                buf += chunk
                if len(buf) >= WRITE_BATCH:
                    data, buf = bytes(buf), bytearray()
                    await flush(data)
            if pending is not None:
                await pending
                pending = None
            if over and n > self.max_upload:
                raise HTTPError(413, f"upload is over this server's limit of {self.max_upload} bytes "
                                     "(--max-upload-mb)")
            if over or n != t.size:
                raise HTTPError(400, f"LFS object {t.oid[:12]}: received {n} bytes, the batch declared {t.size}")
            if buf:
                await run_in_threadpool(write, bytes(buf))
            if fh is not None:
                await run_in_threadpool(fh.close)
            if h.hexdigest() != t.oid:
                raise HTTPError(400, f"LFS object {t.oid[:12]}: the bytes received hash to {h.hexdigest()[:12]}, "
                                     "not the declared sha256; nothing was stored")
            expires = time.monotonic() + TICKET_TTL_S
            if in_memory:
                staged = _Staged(None, b"".join(parts), t.size, expires)
            else:
                final = self._staged_name(t.repo, t.oid)
                os.replace(tmp, final)
                staged = _Staged(final, None, t.size, expires)
            self._drop_staged([(t.repo, t.oid)])  # the same object uploaded again replaces the older copy
            with self.mutex:
                self.staged[(t.repo, t.oid)] = staged
                self.tickets.pop(ticket, None)
            kept = True
            return Response(status_code=200)
        finally:
            if pending is not None:  # a batch still being written (the client went away, or an error)
                with contextlib.suppress(BaseException):
                    await pending
            if fh is not None and not fh.closed:
                fh.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            with self.mutex:
                t.busy = False
                if in_memory and not kept:
                    self.memory_used -= t.size

    async def lfs_verify(self, request, org, name):
        self._auth(request, write=True)
        repo = self._repo(org, name)
        data = await self._json(request)
        oid, size = data.get("oid"), data.get("size")
        with self.mutex:
            s = self.staged.get((repo, oid)) if isinstance(oid, str) else None
        if s is None or s.size != size:
            raise HTTPError(404, f"LFS object {str(oid)[:12]} of {size} bytes was not uploaded")
        return JSONResponse({"ok": True})

    async def commit(self, request, org, name, rev):
        repo = self._write_target(request, org, name, commit=True)
        await run_in_threadpool(self._check_branch, repo, rev)
        body = await self._body(request, self.max_body)
        ops = await run_in_threadpool(_parse_ndjson, body, self.max_upload)  # linear, but MBs of JSON: off the loop
        del body
        keys = [(repo, oid) for oid, _ in ops.lfs.values()]
        try:
            cid = await run_in_threadpool(self._commit_work, repo, ops)
        finally:
            self._drop_staged(keys)  # tried: the staged bytes are in the hub now, or not wanted
        url = f"{self._base(request)}/{repo}/commit/{cid}"
        return JSONResponse({"success": True, "commitOid": cid, "commitUrl": url, "hookOutput": ""})

    def _commit_work(self, repo: str, ops: "_Ops") -> str:
        head = self.hub.commit_info(repo)
        parent = ops.parent
        if parent is not None and not COMMIT_RE.match(parent):
            matches = [c for c in self.hub.commits(repo) if c.startswith(parent.lower())]
            parent = matches[0] if len(matches) == 1 else parent
        if parent is not None and parent != head.id:
            raise HTTPError(412, f"parent commit {ops.parent[:12]} is not the head of {DEFAULT_BRANCH} of {repo} "
                                 f"({head.id[:12]}): someone committed first; re-read and retry")
        deletes = []
        for p in ops.deleted_files:
            if p not in head.files:
                raise HTTPError(404, f"A file with this name doesn't exist: {p[:300]} in {repo}", "EntryNotFound")
            deletes.append(p)
        for folder in ops.deleted_folders:
            members = [f for f in head.files if f.startswith(folder + "/")] if folder else list(head.files)
            if not members:
                raise HTTPError(404, f"A folder with this name doesn't exist: {folder[:300]} in {repo}",
                                "EntryNotFound")
            deletes += members
        if ops.deleted_folders and parent is None:
            parent = head.id  # the folder's content was read at this head: land on it or not at all
        files: dict[str, bytes | Blob | Path] = dict(ops.regular)
        for p, (oid, size) in ops.lfs.items():
            with self.mutex:
                s = self.staged.get((repo, oid))
            if s is not None and (s.data is not None or s.path.is_file()):
                if size is not None and size != s.size:
                    raise HTTPError(400, f"{p[:300]}: declared size {size} differs from the {s.size} bytes uploaded")
                # In memory: the very bytes whose sha256 was checked, handed over with it (no second hash pass).
                files[p] = Blob(s.data, oid) if s.data is not None else s.path
                continue
            blob = self.hub.blob_path(repo, oid)  # content this repo already holds (unchanged or re-added files)
            if blob.is_file() and not blob.is_symlink() and (size is None or blob.stat().st_size == size) \
                    and sha256_file(blob) == oid:
                files[p] = blob
                continue
            raise HTTPError(400, f"{p[:300]}: LFS object {oid[:12]} was not uploaded (or expired); upload it through "
                                 "the LFS batch API first")
        if CARD_FILE in files:
            self._check_card(repo, files[CARD_FILE], head)
        if not files and not deletes:
            raise HTTPError(400, "the commit has no operations")
        change = RepoChange(repo, files=files, message=ops.message, parent_commit=parent, delete=tuple(deletes),
                            author=self.author)
        try:
            cid = self.hub.publish([change])[repo]
        except ConflictError as exc:  # the head moved under the lock (412), or the lock was not free in time (409)
            raise HTTPError(409 if "locked" in str(exc) else 412, str(exc)) from None
        tree = self.hub.list_files(repo, cid)
        bad = [p for p, (oid, _) in ops.lfs.items() if tree.get(p) != oid]
        if bad:  # cannot happen unless the staging folder was written behind our back
            log.error("fiun-hub serve: %s@%s: %s stored with another sha256 than declared", repo, cid, bad)
        return cid

    def _check_card(self, repo: str, content: bytes | Blob | Path, head=None) -> None:
        """A card must parse (docs/card-schema.md), must not make its repo its own ancestor, and may add only
        records of a forget of the head it replaces (card.claims_without_forget)."""
        from ..card import MAX_CARD_BYTES, claims_without_forget, parse_card, parse_card_full
        from ..lineage import resolve, validate_new_parents

        if isinstance(content, Blob):
            content = content.data
        if isinstance(content, Path):
            if content.stat().st_size > MAX_CARD_BYTES:
                raise HTTPError(400, f"{CARD_FILE} is larger than {MAX_CARD_BYTES} bytes")
            content = content.read_bytes()
        meta, _ = parse_card_full(content, where=f"{repo}:{CARD_FILE}")  # CardError -> 400
        carried: list[dict] = []
        if head is not None and CARD_FILE in head.files:
            try:
                carried = parse_card(self.hub.read_file(repo, CARD_FILE, head.id)).unlearned
            except BadInput:
                pass
        claims = claims_without_forget(meta.unlearned, carried, head.id if head is not None else None)
        if claims:
            raise HTTPError(400, f"{repo}:{CARD_FILE}: fiun.unlearned record of request "
                                 f"{str(claims[0].get('request'))[:130]} does not record a forget of the head it "
                                 f"replaces ({head.id[:12] if head is not None else 'none'}); forget records are "
                                 "written by `fiun-hub forget` / `takedown`, never claimed")
        if meta.parents:
            validate_new_parents(resolve(self.hub), repo, [p.repo for p in meta.parents])


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error(status: int, message: str, code: str | None = None, headers: dict | None = None,
           extra: dict | None = None) -> "Response":
    msg = _one_line(message)
    h = {"X-Error-Message": msg}
    if code:
        h["X-Error-Code"] = code
    h.update(headers or {})
    return JSONResponse({**(extra or {}), "error": msg}, status_code=status,
                        headers={k: _header_safe(v) for k, v in h.items()})


def _error_of(exc: BaseException, method: str, path: str) -> tuple[int, str, str | None, dict, dict]:
    """(status, message, X-Error-Code, headers, extra body keys) of an exception a route raised: the one mapping
    from errors to answers (docs/serve.md, "Errors")."""
    if isinstance(exc, HTTPError):
        return exc.status, exc.message, exc.code, exc.headers, exc.extra
    if isinstance(exc, Purged):  # a takedown purged the file: 451 Unavailable For Legal Reasons, naming the request
        return 451, str(exc), "Purged", {}, {}
    for kind, code in ((RepoNotFound, "RepoNotFound"), (RevisionNotFound, "RevisionNotFound"),
                       (EntryNotFound, "EntryNotFound")):
        if isinstance(exc, kind):
            return 404, str(exc), code, {}, {}
    if isinstance(exc, ConflictError):
        return 409, str(exc), None, {}, {}
    if isinstance(exc, FiunError):
        return 400, str(exc), None, {}, {}
    if isinstance(exc, RecursionError):  # a structure from the client nested too deeply for a parser
        return 400, "the request is nested too deeply", None, {}, {}
    log.error("fiun-hub serve: %s %s failed", method, path, exc_info=exc)  # a bug: 500 with the type, traceback
    return 500, f"internal error ({type(exc).__name__}); see the server log", None, {}, {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Ops:
    message: str
    parent: str | None
    regular: dict[str, bytes]
    lfs: dict[str, tuple[str, int | None]]  # path -> (sha256, declared size or None)
    deleted_files: list[str]
    deleted_folders: list[str]


def _parse_ndjson(body: bytes, max_file: int, max_lines: int = MAX_COMMIT_LINES) -> _Ops:
    """The Hub's NDJSON commit payload: a ``header`` line, then ``file`` / ``lfsFile`` / ``deletedFile`` /
    ``deletedFolder`` lines. Later lines about a path override earlier ones (a ``deletedFolder`` overrides the
    earlier ``file`` / ``lfsFile`` lines under it). Anything malformed -> 400; more than ``max_lines`` lines -> 413.

    Linear in the payload: each line is parsed once, the last line about each path is kept in a dict, and a file
    is checked against the folder deletions that came after it by looking up its own parent folders (never by
    scanning every file per folder, or every deletion per file)."""

    def bad(msg: str) -> HTTPError:
        return HTTPError(400, f"malformed commit payload: {msg}")

    lines = [ln for ln in body.split(b"\n") if ln.strip()]
    if not lines:
        raise bad("empty body (expected NDJSON: a header line, then one line per operation)")
    if len(lines) > max_lines:
        raise HTTPError(413, f"the commit has {len(lines)} lines, over this server's limit of {max_lines} operations; "
                             "split it into several commits")
    items = []
    for i, ln in enumerate(lines, 1):
        item = _loads(ln, f"malformed commit payload: line {i}")
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) \
                or not isinstance(item.get("value"), dict):
            raise bad(f"line {i} is not {{\"key\": ..., \"value\": {{...}}}}")
        items.append(item)
    del lines
    if items[0]["key"] != "header":
        raise bad("the first line must be the header")
    header = items[0]["value"]
    summary = header.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise bad("the header needs a non-empty `summary` (the commit message)")
    description = header.get("description") or ""
    if not isinstance(description, str):
        raise bad("header `description` must be a string")
    parent = header.get("parentCommit")
    if parent is not None and (not isinstance(parent, str) or not re.fullmatch(r"[0-9a-fA-F]{5,40}", parent)):
        raise bad("header `parentCommit` must be a commit id (5 to 40 hex digits)")
    ops = _Ops(summary.strip() + (f"\n\n{description.strip()}" if description.strip() else ""), parent, {}, {}, [], [])

    last: dict[str, tuple[int, str, Any]] = {}  # path -> (line, "file" | "lfsFile" | "deletedFile", payload)
    folders: dict[str, int] = {}  # deleted folder ("" = everything) -> its last line
    for i, item in enumerate(items[1:], 2):
        key, v = item["key"], item["value"]
        path = v.get("path")
        if not isinstance(path, str):
            raise bad(f"line {i} ({key}) has no path")
        path = path.strip("/") if key == "deletedFolder" else path
        try:
            validate_repo_path(path) if (path or key != "deletedFolder") else None
        except BadInput as exc:
            raise bad(f"line {i}: {exc}") from None
        if key == "header":
            raise bad(f"line {i}: a second header")
        elif key == "file":
            content, encoding = v.get("content"), v.get("encoding", "base64")
            if not isinstance(content, str):
                raise bad(f"line {i}: file {path[:200]} has no content")
            if encoding == "base64":
                if len(content) > (max_file + 2) // 3 * 4 + 4:
                    raise HTTPError(413, f"{path[:200]} is over this server's upload limit of {max_file} bytes")
                try:
                    data = base64.b64decode(content, validate=True)
                except (binascii.Error, ValueError):
                    raise bad(f"line {i}: content of {path[:200]} is not base64") from None
            elif encoding in ("utf-8", "utf8"):
                data = content.encode("utf-8")
            else:
                raise bad(f"line {i}: unknown encoding {str(encoding)[:40]!r}")
            if len(data) > max_file:
                raise HTTPError(413, f"{path[:200]} is over this server's upload limit of {max_file} bytes")
            last[path] = (i, "file", data)
        elif key == "lfsFile":
            oid, size = v.get("oid"), v.get("size")
            if v.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not SHA256_RE.fullmatch(oid):
                raise bad(f"line {i}: lfsFile {path[:200]} needs a sha256 oid (64 lowercase hex)")
            if size is not None and (type(size) is not int or size < 0):
                raise bad(f"line {i}: lfsFile {path[:200]} has an invalid size")
            last[path] = (i, "lfsFile", (oid, size))
        elif key == "deletedFile":
            last[path] = (i, "deletedFile", None)
        elif key == "deletedFolder":
            if path not in folders:
                ops.deleted_folders.append(path)
            folders[path] = i
        else:
            raise bad(f"line {i}: unknown operation {key[:40]!r} (copies and other operations are not supported)")

    def deleted_after(path: str, line: int) -> bool:
        """Whether a folder holding ``path`` was deleted by a later line (its parents: one lookup each)."""
        if not folders:
            return False
        if folders.get("", 0) > line:
            return True
        cut = path.find("/")
        while cut != -1:
            if folders.get(path[:cut], 0) > line:
                return True
            cut = path.find("/", cut + 1)
        return False

    for path, (line, kind, payload) in sorted(last.items(), key=lambda kv: kv[1][0]):
        if kind == "deletedFile":
            ops.deleted_files.append(path)
        elif not deleted_after(path, line):
            (ops.regular if kind == "file" else ops.lfs)[path] = payload
    return ops


# ---------------------------------------------------------------------------- running it
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host.strip("[]")
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _timed_protocol(header_timeout: float):
    """uvicorn's h11 protocol with a deadline for each request head: a connection that has not sent a whole request
    line and headers ``header_timeout`` seconds after it opened (or after its last answer) is closed. uvicorn
    itself only times out idle keep-alive connections, so a client sending half a head would be kept for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer = None
        _timed_cycle = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self.cycle is not self._timed_cycle:  # a whole head came: a request
                self._timed_cycle = self.cycle
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's head (keep-alive) has the same deadline

    return TimedH11Protocol


def run(hub_path: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
        open_reads: bool = True, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * MB, *, allow_remote: bool = False,
        ready: Callable[[str], None] | None = None, log_level: str = "warning",
        header_timeout: float = HEADER_TIMEOUT_S, body_timeout: float = BODY_TIMEOUT_S) -> None:
    """Serve the hub at ``hub_path`` until interrupted. ``ready(url)`` is called once the socket is bound.

    Limits against half-sent requests: a request head within ``header_timeout`` seconds and :data:`HEADER_LIMIT`
    bytes, no more than ``body_timeout`` seconds between two pieces of a body, idle keep-alive connections closed
    after :data:`KEEP_ALIVE_S`."""
    if not HAVE_STARLETTE:
        raise BadInput(SERVE_HINT)
    try:
        import uvicorn
    except ImportError:
        raise BadInput(SERVE_HINT) from None
    check_host(host, allow_remote)
    hub = hub_path if isinstance(hub_path, LocalHub) else LocalHub(hub_path)
    if not header_timeout > 0:
        raise BadInput("the header timeout must be positive")
    app = create_app(hub, token, open_reads, max_upload_bytes, body_timeout=body_timeout)
    sock = bind_socket(host, port)
    if ready is not None:
        ready(url_of(sock, host))
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                            server_header=False, http=_timed_protocol(float(header_timeout)),
                            h11_max_incomplete_event_size=HEADER_LIMIT, timeout_keep_alive=KEEP_ALIVE_S)
    uvicorn.Server(config).run(sockets=[sock])


def spawn(hub_path: str | os.PathLike, log: str | os.PathLike, *args: str, env: dict | None = None,
          timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start ``fiun-hub --hub HUB serve --port 0 ARGS`` as a process (output to ``log``) and wait until it answers
    HTTP; returns ``(process, url)``. Port 0 binds a free port without a pick-then-bind race; the URL is read
    from the startup line. For tests and benchmarks; stop it with ``terminate()``."""
    import urllib.error
    import urllib.request

    script = Path(sys.executable).with_name("fiun-hub")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "fiun_hub_cli.main"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd + ["--hub", str(hub_path), "serve", "--port", "0", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    deadline, url = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        m = re.search(rb"at (http://127\.0\.0\.1:\d+)", Path(log).read_bytes())
        if m:
            url = m.group(1).decode()
            try:
                opener.open(f"{url}/api/models", timeout=5).read()
                return proc, url
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # a --private server answers too
                    return proc, url
            except OSError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"fiun-hub serve did not come up ({url}): {Path(log).read_text(errors='replace')[-2000:]}")


__all__ = ["create_app", "run", "spawn", "check_host", "is_loopback", "card_tags", "is_lfs", "DEFAULT_MAX_UPLOAD_MB",
           "DEFAULT_PORT"]
