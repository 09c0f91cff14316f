"""Uploaded LFS objects waiting for their commit: upload tickets, staged bytes in memory or in the staging folder
``HUB/.fiun/serve-staging/PID-*/`` (left-overs of a dead server are removed), and their expiry."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..hub.ids import repo_folder_name


@dataclass
class Ticket:
    repo: str
    oid: str
    size: int
    expires: float
    busy: bool = False


@dataclass
class Staged:
    path: Path | None  # on disk in the staging folder, or
    data: bytes | None  # held in memory (verified bytes, no re-read or re-hash at commit)
    size: int
    expires: float


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Staging:
    """The staging folder and the staged objects (mixed into :class:`~fiun_hub.serve.app._Server`;
    ``self.tickets``, ``self.staged``, ``self.mutex``)."""

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
