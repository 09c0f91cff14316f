"""The Starlette app: :func:`create_app`, the server state and its router (:meth:`_Server.dispatch`), and the one
error ladder that maps every exception a route raises to an answer (docs/serve.md, "Errors")."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from typing import Callable
from urllib.parse import unquote

from ..constants import DEFAULT_AUTHOR
from ..errors import BadInput, ConflictError, EntryNotFound, FiunError, Purged, RepoNotFound, RevisionNotFound
from ..hub.local import LocalHub
from .auth import Auth
from .body import BodyReader
from .common import (BODY_TIMEOUT_S, DEFAULT_MAX_UPLOAD_MB, HAVE_STARLETTE, MB, MEMORY_STAGE_MB, SERVE_HINT, LRU,
                     ClientDisconnect, HTTPError, JSONResponse, Request, Response, Route, Starlette, log, one_line)
from .lfs import LfsRoutes
from .read import ReadRoutes
from .shapes import Shapes
from .staging import Staged, Staging, Ticket
from .write import WriteRoutes


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


class _Server(Staging, Auth, BodyReader, Shapes, ReadRoutes, LfsRoutes, WriteRoutes):
    """One served hub: its settings, caches and staged uploads, and the router; the routes and helpers are in the
    mixins, one module per job."""

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
        self.tickets: dict[str, Ticket] = {}
        self.staged: dict[tuple[str, str], Staged] = {}
        self.blob_meta = LRU(65536)  # (sha256, path-suffix-is-lfs, size) -> (lfs, blob oid)
        self.summaries = LRU(8192)  # commit id -> card data, tags, creation time
        self.created = LRU(65536)  # commit id -> time of the repo's first commit
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
            if request.method.upper() in ("POST", "PUT", "PATCH") and not getattr(request.state, "body_done", False) \
                    and not await self._drain_refused(request):
                # The body was not read to its end (over the limit, too slow, or a large one refused before
                # reading): close the connection after the answer instead of reading the rest to keep it alive.
                # A small body refused before reading was read and dropped (_drain_refused): the connection stays.
                headers = {**headers, "Connection": "close"}
            return _error(status, message, code, headers, extra)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _header_safe(value: object) -> str:
    """A header value h11 accepts: control characters (NUL, CR, LF, DEL, C1...) become ``?``, as does anything
    outside latin-1. Every header an answer carries goes through here (:func:`_error`)."""
    return _CONTROL.sub("?", str(value)).encode("latin-1", "replace").decode("latin-1")


def _error(status: int, message: str, code: str | None = None, headers: dict | None = None,
           extra: dict | None = None) -> "Response":
    msg = one_line(message)
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
