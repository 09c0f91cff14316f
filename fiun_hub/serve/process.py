"""Running the server: the listening socket, uvicorn with deadlines for request heads, and :func:`spawn` (a
server process for tests and benchmarks)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import BadInput
from ..hub.local import LocalHub
from .app import create_app
from .auth import check_host
from .common import (BODY_TIMEOUT_S, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, HAVE_STARLETTE, HEADER_LIMIT,
                     HEADER_TIMEOUT_S, KEEP_ALIVE_S, MB, SERVE_HINT)


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
