"""The Hub's NDJSON commit payload, parsed into the operations of one commit."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput
from ..hub.ids import validate_repo_path
from .common import MAX_COMMIT_LINES, SHA256_RE, HTTPError, loads


@dataclass
class Ops:
    message: str
    parent: str | None
    regular: dict[str, bytes]
    lfs: dict[str, tuple[str, int | None]]  # path -> (sha256, declared size or None)
    deleted_files: list[str]
    deleted_folders: list[str]


def parse_ndjson(body: bytes, max_file: int, max_lines: int = MAX_COMMIT_LINES) -> Ops:
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
        item = loads(ln, f"malformed commit payload: line {i}")
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
    ops = Ops(summary.strip() + (f"\n\n{description.strip()}" if description.strip() else ""), parent, {}, {}, [], [])

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
