"""What every ``fiun-hub`` command module shares: the context object (``Ctx``: the hub from ``--hub``, ``--json``,
``emit``), the error handling (one line on stderr and the exit code the error carries) and small text helpers.

``cli/main.py`` (the group and most commands), ``cli/compliance.py`` (takedown, audit) and ``cli/serve.py`` all
import from here, so none of them imports another.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
from typing import Any, Callable

import click

from fiun_hub.constants import NO_SPACE
from fiun_hub.errors import BadInput, FiunError
from fiun_hub.hub.base import ATOMIC_PUBLISH, supports


# Commands that need a LocalHub's folder, and why (a remote hub is reached over the Hub HTTP API).
LOCAL_ONLY = {
    "init": "a remote hub needs no creating (repos are created when pushed)",
    "verify": "it re-hashes the hub's own files; a remote hub checks its storage itself",
    "takedown": "its ledger is published atomically with the unlearned repos, which a remote hub cannot do "
                "(use `fiun-hub forget`, which reports which repos landed)",
    "audit": "it reads the takedown ledger of a local hub",
    "serve": "it serves a hub folder (a remote hub is served already)",
}


class Ctx:
    def __init__(self, hub: str | None, as_json: bool):
        self.hub_spec = hub
        self.as_json = as_json
        self.opened = None  # the hub this command opened (for the state a full disk left it in)

    def hub(self, create: bool = False):
        from fiun_hub.hub import is_remote, open_hub

        command = click.get_current_context().info_name
        if command in LOCAL_ONLY and is_remote(self.hub_spec):
            raise BadInput(f"`fiun-hub {command}` needs a local hub folder (--hub PATH): {LOCAL_ONLY[command]}")
        self.opened = open_hub(self.hub_spec, create=create)
        return self.opened

    def emit(self, data: Any, text: str | Callable[[], str] | None = None) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            click.echo(text() if callable(text) else (text if text is not None else str(data)))


def fail(msg: str, code: int = 2) -> None:
    click.echo(f"fiun-hub: error: {msg}", err=True)
    sys.exit(code)


def no_space_line(exc: OSError) -> str:
    """One line for a full file system (out of bytes, inodes or quota), saying what state the hub is in."""
    where = f" (writing in {os.path.dirname(str(exc.filename)) or exc.filename})" if exc.filename else ""
    line = f"no space left on device{where}"
    ctx = click.get_current_context(silent=True)
    hub = getattr(ctx.find_object(Ctx), "opened", None) if ctx is not None else None
    pending = hub.unfinished_publish() if supports(hub, ATOMIC_PUBLISH) else []
    if pending:
        return (f"{line}: the publish to {', '.join(pending[:3])}" + (f" and {len(pending) - 3} more" if
                len(pending) > 3 else "") + " had started moving refs and is recorded in the hub's journal; it "
                "completes on the next fiun-hub command that writes, once there is space (until then every "
                "command reads the hub as it was before it)")
    if hub is not None:
        return f"{line}: nothing was published and the hub is as it was; free some space and run it again"
    return f"{line}; free some space and run it again"


def handled(fn: Callable) -> Callable:
    """Map library errors to one line on stderr and the exit code they carry (a full disk: exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FiunError as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            fail(no_space_line(exc), 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


pass_ctx = click.make_pass_decorator(Ctx)


def short_sidecar(used: str) -> str:
    """``approximate: from acme/a@3f2c...`` with 12-hex revisions, for text output."""
    return re.sub(r"@([0-9a-f]{12})[0-9a-f]{28}", r"@\1…", used)
