"""``fiun-hub serve``: the hub over the Hugging Face Hub HTTP API (docs/serve.md). The code is in :mod:`.app`."""

from .app import (BODY_TIMEOUT_S, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, DRAIN_LIMIT, HAVE_STARLETTE, HEADER_LIMIT,
                  HEADER_TIMEOUT_S, JSON_LIMIT, KEEP_ALIVE_S, LFS_SUFFIXES, LFS_THRESHOLD, MAX_COMMIT_LINES, SERVE_HINT,
                  bind_socket, card_tags, check_host, create_app, is_lfs, is_loopback, run, spawn, url_of)

__all__ = ["create_app", "run", "spawn", "check_host", "is_loopback", "card_tags", "is_lfs", "DEFAULT_MAX_UPLOAD_MB",
           "DEFAULT_PORT"]
