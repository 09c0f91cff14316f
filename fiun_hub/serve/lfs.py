"""The git-LFS routes: the batch API (``basic`` transfer) with its upload and verify hrefs, and the LFS file list
and purge (``list_lfs_files``, ``permanently_delete_lfs_files``; docs/serve.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
import uuid

from ..constants import DEFAULT_BRANCH
from ..errors import BadInput, RepoNotFound
from .common import (DRAIN_LIMIT, SHA256_RE, TICKET_TTL_S, WRITE_BATCH, XET_HINT, HTTPError, JSONResponse, Response,
                     run_in_threadpool)
from .staging import Staged, Ticket


class LfsRoutes:
    """The LFS routes (mixed into :class:`~fiun_hub.serve.app._Server`)."""

    def _lfs_objects(self, repo: str) -> dict[str, dict]:
        """``{sha256: {"filename", "pushedAt", "size", "commits": [(commit, path)]}}`` of the LFS files still in
        ``repo``'s blobs (named by a commit outside a tombstone)."""
        out: dict[str, dict] = {}
        infos = []
        for cid in self.hub.commits(repo):
            try:
                infos.append(self.hub.commit_info(repo, cid))
            except BadInput:
                continue
        for info in sorted(infos, key=lambda i: i.time):
            stones = self.hub.tombstones(repo, info.id)
            for p, sha in info.files.items():
                if p in stones or not self.hub.blob_path(repo, sha).is_file():
                    continue
                size = self._size(repo, info, p)
                if not self._meta(repo, p, sha, size)[0]:
                    continue
                o = out.setdefault(sha, {"filename": p, "pushedAt": info.time, "size": size, "commits": []})
                o["filename"] = p
                o["commits"].append((info.id, p))
        return out

    async def lfs_files(self, request, org, name):
        """``HfApi.list_lfs_files``: the repo's LFS files (token required), paginated by a Link header."""
        self._auth(request, write=True)
        repo = self._repo(org, name)
        try:
            cursor = int(request.query_params.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "cursor must be an integer") from None

        def work() -> list[dict]:
            if not self.hub.repo_exists(repo):
                raise RepoNotFound(f"repo {repo} not found")
            return [{"fileOid": sha, "oid": sha, "filename": o["filename"], "pushedAt": o["pushedAt"], "ref": None,
                     "size": o["size"]} for sha, o in sorted(self._lfs_objects(repo).items())]

        return self._page(request, await run_in_threadpool(work), max(cursor, 0), 1000)

    async def lfs_files_delete(self, request, org, name):
        """``HfApi.permanently_delete_lfs_files``: purge LFS files from every revision that names them (token
        required): tombstones naming the request of the ``X-Fiun-Request`` header (else ``lfs-files-api``), blobs
        deleted. A file the head names is refused (409): commit its removal first."""
        from ..compliance import REQUEST_ID_RE

        repo = self._write_target(request, org, name)
        data = await self._json(request)
        shas = (data.get("deletions") or {}).get("sha") if isinstance(data.get("deletions"), dict) else None
        if not isinstance(shas, list) or not all(isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x)
                                                 for x in shas):
            raise HTTPError(400, "lfs-files/batch needs `deletions`: {sha: [sha256...], rewriteHistory: bool}")
        rid = request.headers.get("x-fiun-request") or "lfs-files-api"
        if not REQUEST_ID_RE.match(rid) or ".." in rid:
            raise HTTPError(400, "X-Fiun-Request must be a request id (letters, digits, . _ -)")

        def work() -> dict:
            from ..unlearn import utc_now

            with self.hub.lock():
                objects = self._lfs_objects(repo)
                head = self.hub.commit_info(repo, self.hub.head(repo))
                missing = [x for x in shas if x not in objects]
                if missing:
                    raise HTTPError(404, f"LFS file {missing[0][:12]} is not in {repo}", "EntryNotFound")
                live = [x for x in shas if x in head.files.values()]
                if live:
                    raise HTTPError(409, f"LFS file {live[0][:12]} is in the head of {repo}; commit its removal "
                                         "first, then purge the history")
                at = utc_now()
                entries = [{"repo": repo, "commit": cid, "path": p, "sha256": x,
                            "size": objects[x]["size"], "request": rid, "at": at}
                           for x in dict.fromkeys(shas) for cid, p in objects[x]["commits"]]
                self.hub.purge(entries)
            return {"deleted": len(set(shas))}

        return JSONResponse(await run_in_threadpool(work))

    async def lfs_batch(self, request, org, name):
        repo = self._write_target(request, org, name)
        data = await self._json(request)
        if data.get("operation") != "upload":
            raise HTTPError(400, "the LFS batch API here only uploads; download files through /resolve")
        transfers = data.get("transfers") or ["basic"]
        if not isinstance(transfers, list) or "basic" not in transfers:
            raise HTTPError(400, f"only the basic LFS transfer is supported. {XET_HINT}")
        if data.get("hash_algo", "sha256") != "sha256":
            raise HTTPError(400, "only sha256 LFS objects are supported")
        objects = data.get("objects")
        if not isinstance(objects, list) or len(objects) > 10000:
            raise HTTPError(400, "LFS batch needs `objects`: a list of {oid, size}")
        for o in objects:
            if not isinstance(o, dict) or not isinstance(o.get("oid"), str) or not SHA256_RE.fullmatch(o["oid"]) \
                    or type(o.get("size")) is not int or o["size"] < 0:
                raise HTTPError(400, "each LFS object needs a sha256 `oid` (64 lowercase hex) and an integer `size`")
            if o["size"] > self.max_upload:
                raise HTTPError(413, f"LFS object {o['oid'][:12]} is {o['size']} bytes, over this server's upload "
                                     f"limit of {self.max_upload} bytes (--max-upload-mb)")
        rev = data.get("ref", {}).get("name") if isinstance(data.get("ref"), dict) else None
        await run_in_threadpool(self._check_branch, repo, rev or DEFAULT_BRANCH)
        self._purge_expired()
        base = self._base(request)

        def present(oid: str, size: int) -> bool:
            with self.mutex:
                s = self.staged.get((repo, oid))
                if s is not None and s.size == size:
                    s.expires = time.monotonic() + TICKET_TTL_S
                    return True
            blob = self.hub.blob_path(repo, oid)
            return blob.is_file() and not blob.is_symlink() and blob.stat().st_size == size

        out = []
        for o in objects:
            oid, size = o["oid"], o["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not await run_in_threadpool(present, oid, size):
                ticket = secrets.token_urlsafe(24)
                with self.mutex:
                    self.tickets[ticket] = Ticket(repo, oid, size, time.monotonic() + TICKET_TTL_S)
                entry["actions"] = {
                    "upload": {"href": f"{base}/api/fiun/lfs-upload/{ticket}", "expires_in": int(TICKET_TTL_S)},
                    "verify": {"href": f"{base}/api/fiun/lfs-verify/{repo}", "expires_in": int(TICKET_TTL_S)},
                }
            out.append(entry)
        return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    async def lfs_put(self, request, ticket):
        """The upload href of one LFS object: its secret ticket is the credential (the client sends no token to
        an upload URL). The bytes are streamed to memory (small objects) or to the staging folder, and kept only
        if their size and sha256 are the declared ones."""
        with self.mutex:
            t = self.tickets.get(ticket)
            if t is None or t.expires < time.monotonic() or t.busy:
                t = None
            else:
                t.busy = True
        if t is None:
            raise HTTPError(404, "unknown, expired or busy LFS upload ticket; ask the batch API again")
        in_memory = self._reserve_memory(t.size)
        tmp = None if in_memory else self.staging / f".incoming-{uuid.uuid4().hex}"
        fh, kept, pending = None, False, None
        try:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_upload + DRAIN_LIMIT:
                raise HTTPError(413, f"upload of {int(declared)} bytes is over this server's limit of "
                                     f"{self.max_upload} bytes (--max-upload-mb)")
            h = hashlib.sha256()
            parts: list[bytes] = []
            if tmp is not None:
                fh = await run_in_threadpool(open, tmp, "wb")

            def write(data: bytes) -> None:
                h.update(data)
                if fh is None:
                    parts.append(data)
                else:
                    fh.write(data)

            async def flush(data: bytes) -> None:
                """Hash and store ``data`` in a worker thread while the next batch is received (one in flight,
                so the order is kept)."""
                nonlocal pending
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(run_in_threadpool(write, data))

            n, buf, over = 0, bytearray(), False
            async for chunk in self._chunks(request):
                n += len(chunk)
                if over or n > t.size or n > self.max_upload:
                    over = True
                    if n > max(t.size, self.max_upload) + DRAIN_LIMIT:
                        break
                    continue
                buf += chunk
                if len(buf) >= WRITE_BATCH:
                    data, buf = bytes(buf), bytearray()
                    await flush(data)
            if pending is not None:
                await pending
                pending = None
            if over and n > self.max_upload:
                raise HTTPError(413, f"upload is over this server's limit of {self.max_upload} bytes "
                                     "(--max-upload-mb)")
            if over or n != t.size:
                raise HTTPError(400, f"LFS object {t.oid[:12]}: received {n} bytes, the batch declared {t.size}")
            if buf:
                await run_in_threadpool(write, bytes(buf))
            if fh is not None:
                await run_in_threadpool(fh.close)
            if h.hexdigest() != t.oid:
                raise HTTPError(400, f"LFS object {t.oid[:12]}: the bytes received hash to {h.hexdigest()[:12]}, "
                                     "not the declared sha256; nothing was stored")
            expires = time.monotonic() + TICKET_TTL_S
            if in_memory:
                staged = Staged(None, b"".join(parts), t.size, expires)
            else:
                final = self._staged_name(t.repo, t.oid)
                os.replace(tmp, final)
                staged = Staged(final, None, t.size, expires)
            self._drop_staged([(t.repo, t.oid)])  # the same object uploaded again replaces the older copy
            with self.mutex:
                self.staged[(t.repo, t.oid)] = staged
                self.tickets.pop(ticket, None)
            kept = True
            return Response(status_code=200)
        finally:
            if pending is not None:  # a batch still being written (the client went away, or an error)
                with contextlib.suppress(BaseException):
                    await pending
            if fh is not None and not fh.closed:
                fh.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            with self.mutex:
                t.busy = False
                if in_memory and not kept:
                    self.memory_used -= t.size

    async def lfs_verify(self, request, org, name):
        self._auth(request, write=True)
        repo = self._repo(org, name)
        data = await self._json(request)
        oid, size = data.get("oid"), data.get("size")
        with self.mutex:
            s = self.staged.get((repo, oid)) if isinstance(oid, str) else None
        if s is None or s.size != size:
            raise HTTPError(404, f"LFS object {str(oid)[:12]} of {size} bytes was not uploaded")
        return JSONResponse({"ok": True})
