"""What every part of the server shares: its limits, :class:`HTTPError`, JSON from a client, the Hub's
spellings of a revision, a small LRU cache, and starlette's names (None without the ``serve`` extra)."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from typing import Any, Callable


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
REFUSED_DRAIN_LIMIT = 1 * MB  # a request refused before its body was read: its body is read (and dropped) up to this
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


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and ``X-Error-Code`` when ``code``)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


def one_line(msg: object, limit: int = 1000) -> str:
    return " ".join(str(msg).split())[:limit]


def loads(body: bytes | str, what: str = "request body") -> Any:
    """JSON from a client: malformed or too deeply nested (RecursionError) is a 400, never a 500."""
    try:
        return json.loads(body)
    except RecursionError:
        raise HTTPError(400, f"{what} is nested too deeply") from None
    except ValueError:
        raise HTTPError(400, f"{what} is not valid JSON") from None


def norm_rev(rev: str) -> str:
    """Hub spellings of a revision -> ours: ``refs/heads/main`` -> ``main``, ``refs/tags/v1`` -> ``tags/v1``."""
    if rev.startswith("refs/heads/"):
        return rev[len("refs/heads/"):]
    if rev.startswith("refs/tags/"):
        return "tags/" + rev[len("refs/tags/"):]
    return rev


class LRU(OrderedDict):
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


try:  # starlette is an optional dependency (pip install 'fiun-hub[serve]')
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    class BlobResponse(FileResponse):
        chunk_size = 1 << 20  # 64 KiB reads (starlette's default) cost a thread hop each

    HAVE_STARLETTE = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_STARLETTE = False
    Starlette = run_in_threadpool = ClientDisconnect = Request = FileResponse = JSONResponse = Response = None
    Route = BlobResponse = None

SERVE_HINT = "fiun-hub serve needs starlette and uvicorn: pip install 'fiun-hub[serve]'"
