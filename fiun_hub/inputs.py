"""Reading a file a user names (a request file, ...): opened without blocking, refused unless it is a regular file,
and read with a bound, so a FIFO, ``/dev/zero`` or a huge file gives one line, never a hang or a full memory."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import BadInput


def read_regular_file(path: str | Path, limit: int, what: str = "file", error: type[BadInput] = BadInput) -> bytes:
    """The bytes of ``path`` (at most ``limit``). Raises ``error`` (one line naming the file) if it cannot be
    opened, is not a regular file (FIFO, device, socket, folder) or is larger than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{what} {path} is not a regular file (a FIFO, device, socket or folder)")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise error(f"{what} {path} is larger than {limit} bytes")
    return b"".join(chunks)
