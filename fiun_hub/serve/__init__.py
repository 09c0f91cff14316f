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

The package, one module per job: :mod:`.app` (the Starlette app, the router and the error ladder), :mod:`.auth`
(loopback rule, token, writable repos), :mod:`.body` (request bodies), :mod:`.shapes` (the Hub's JSON shapes),
:mod:`.read` and :mod:`.write` (the routes), :mod:`.lfs` (the git-LFS batch API, the LFS file list and purge),
:mod:`.staging` (uploads waiting for their commit), :mod:`.ndjson` (the commit payload), :mod:`.common` (limits and
helpers every part shares) and :mod:`.process` (uvicorn, :func:`spawn`).
"""

from .app import create_app
from .auth import check_host, is_loopback
from .common import (BODY_TIMEOUT_S, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, DRAIN_LIMIT, HAVE_STARLETTE, HEADER_LIMIT,
                     HEADER_TIMEOUT_S, JSON_LIMIT, KEEP_ALIVE_S, LFS_SUFFIXES, LFS_THRESHOLD, MAX_COMMIT_LINES,
                     SERVE_HINT, HTTPError)
from .process import bind_socket, run, spawn, url_of
from .shapes import card_tags, git_blob_sha1, is_lfs, lfs_pointer

__all__ = ["create_app", "run", "spawn", "check_host", "is_loopback", "card_tags", "is_lfs", "git_blob_sha1",
           "lfs_pointer", "bind_socket", "url_of", "HTTPError", "HAVE_STARLETTE", "SERVE_HINT", "DEFAULT_MAX_UPLOAD_MB",
           "DEFAULT_PORT", "JSON_LIMIT", "DRAIN_LIMIT", "MAX_COMMIT_LINES", "HEADER_LIMIT", "HEADER_TIMEOUT_S",
           "BODY_TIMEOUT_S", "KEEP_ALIVE_S", "LFS_SUFFIXES", "LFS_THRESHOLD"]
