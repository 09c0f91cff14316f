"""Staging: files written into a LocalHub's blob store before a publish names them (docs/hub-layout.md).

A staged file is ``blobs/.incoming-forget-{token}-{n}`` until :meth:`Staging.adopt` links it to
``blobs/{sha256}``; the publish is then handed a :class:`StagedBlob` and finds the content in place. A blob is
invisible until a ref names it, so a publish stays all or nothing; :meth:`Staging.discard` removes what a
writer that failed had staged.
"""
from __future__ import annotations

import mmap
import os
import uuid
from pathlib import Path

from .base import Blob


class StagedBlob(Blob):
    """A file already in a LocalHub's blob store (``blobs/{sha256}``), named to ``publish`` like a :class:`Blob`.

    ``publish`` stores a Blob only when ``blobs/{sha256}`` is not there yet, so it finds this one in place and
    writes nothing; ``data`` maps the file (read-only, paged in only if something reads it), so nothing holds
    its bytes in memory. Until a ref names it, such a blob is invisible: publishing stays all or nothing."""

    path: Path
    size: int

    def __init__(self, path: str | os.PathLike, sha256: str, size: int):
        object.__setattr__(self, "path", Path(path))
        object.__setattr__(self, "sha256", sha256)
        object.__setattr__(self, "size", int(size))

    @property
    def data(self):
        if self.size == 0:
            return b""
        with open(self.path, "rb") as fh:  # FileNotFoundError if it vanished: the publish then fails whole
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def __repr__(self) -> str:
        return f"StagedBlob({str(self.path)!r}, {self.sha256[:12]}, {self.size} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)


class Staging:
    """New files of one writer (a forget) put straight into a LocalHub's blob stores as they are made, so that
    the writer never holds every new weights file in memory (1,000 repos: 1.5 GB of ``test_resnet`` weights).
    Made by :meth:`LocalHub.staging <fiun_hub.hub.local.LocalHub.staging>`; only the hub knows where blobs live.

    The executor's task writes ``blobs/.incoming-forget-{token}-{n}`` (:meth:`path_for`); when its result
    arrives, :meth:`adopt` hard-links it to ``blobs/{sha256}`` and removes the staging name. A blob is invisible
    until a ref names it, so the publish stays all or nothing. :meth:`discard` (the forget failed before anything
    was published, or its publish found a head moved) removes the staging files and every blob this forget
    created (never one that was there before: ``os.link`` fails on an existing name, which tells them apart)."""

    MIN_STAGED = 64 << 10  # smaller files (cards, small sidecars) stay in memory: staging them saves nothing

    def __init__(self, hub):
        self.hub = hub
        self.token = uuid.uuid4().hex[:16]
        self.incoming: dict[str, Path] = {}
        self.created: list[Path] = []
        self._n = 0

    def path_for(self, repo: str) -> str:
        self._n += 1
        p = self.hub.blob_path(repo, f".incoming-forget-{self.token}-{self._n}")
        p.parent.mkdir(parents=True, exist_ok=True)
        self.incoming[repo] = p
        return str(p)

    def adopt(self, repo: str, path: str | os.PathLike, sha: str) -> StagedBlob:
        """The staged file at ``path`` (sha256 ``sha``) as ``blobs/{sha}``."""
        src = Path(path)
        final = self.hub.blob_path(repo, sha)
        size = src.stat().st_size
        try:
            os.link(src, final)
            self.created.append(final)
        except FileExistsError:  # identical content is already stored (and maybe in use): leave it alone
            pass
        except OSError:  # a file system without hard links
            if not final.exists():
                os.replace(src, final)
                self.created.append(final)
        src.unlink(missing_ok=True)
        return StagedBlob(final, sha, size)

    def put(self, repo: str, data: bytes) -> Blob:
        """``data`` as a blob of ``repo``: staged on disk when large, else kept in memory (a plain Blob)."""
        blob = Blob.of(data)
        if len(data) < self.MIN_STAGED:
            return blob
        tmp = self.hub.blob_path(repo, f".incoming-forget-{self.token}-{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        return self.adopt(repo, tmp, blob.sha256)

    def discard(self) -> None:
        for p in self.created:
            p.unlink(missing_ok=True)
        self.created.clear()
        self.cleanup()

    def cleanup(self) -> None:
        """Remove staging files left behind (a task that failed, or whose result never came)."""
        for p in self.incoming.values():
            p.unlink(missing_ok=True)
        for d in {p.parent for p in self.incoming.values()}:
            for q in d.glob(f".incoming-forget-{self.token}-*"):
                q.unlink(missing_ok=True)


__all__ = ["Staging", "StagedBlob"]
