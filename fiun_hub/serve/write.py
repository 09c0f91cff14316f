"""The write routes: create a repo, tag, preupload and the NDJSON commit, each landing through the hub's atomic
:meth:`~fiun_hub.hub.local.LocalHub.publish` / :meth:`~fiun_hub.hub.local.LocalHub.tag`, and the card rules
a commit must keep."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from ..constants import CARD_FILE, DEFAULT_BRANCH
from ..errors import BadInput, ConflictError, RepoNotFound, RevisionNotFound
from ..hub.ids import COMMIT_RE, validate_repo_id, validate_repo_path, validate_tag_name
from ..hub.local import Blob, RepoChange, sha256_file
from .common import GITATTRIBUTES, HTTPError, JSONResponse, log, norm_rev, run_in_threadpool
from .ndjson import Ops, parse_ndjson
from .shapes import is_lfs


class WriteRoutes:
    """The write routes (mixed into :class:`~fiun_hub.serve.app._Server`)."""

    async def create_repo(self, request):
        self._auth(request, write=True)
        data = await self._json(request)
        if data.get("type") not in (None, "model"):
            raise HTTPError(400, f"fiun-hub serve holds model repos only, not {str(data.get('type'))[:40]}")
        org, name = data.get("organization"), data.get("name")
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "create needs a repo name")
        if not isinstance(org, str) or not org:
            raise HTTPError(400, "fiun-hub repo ids are org/name: pass repo_id='ORG/NAME'")
        repo = validate_repo_id(f"{org}/{name}")  # InvalidRepoId -> 400
        self._writable(repo)
        url = f"{self._base(request)}/{repo}"
        if await run_in_threadpool(self.hub.repo_exists, repo):
            raise HTTPError(409, f"You already created this model repo: {repo}", extra={"url": url})
        change = RepoChange(repo, files={".gitattributes": GITATTRIBUTES.encode()}, message="initial commit",
                            parent_commit="", author=self.author)
        try:
            await run_in_threadpool(self.hub.publish, [change])
        except ConflictError:
            raise HTTPError(409, f"You already created this model repo: {repo}", extra={"url": url}) from None
        return JSONResponse({"url": url, "name": repo, "id": repo})

    async def create_tag(self, request, org, name, rev):
        repo = self._write_target(request, org, name)
        data = await self._json(request)
        tag = data.get("tag")
        try:
            validate_tag_name(tag)
        except BadInput:
            raise HTTPError(400, f"invalid tag name {str(tag)[:100]!r}: letters, digits, '.', '_', '-' (not 'main')") \
                from None

        def work() -> str:
            if tag in self.hub.refs(repo)["tags"]:
                raise HTTPError(409, f"tag {tag} already exists in {repo}")
            cid = self._commit_info(repo, rev).id
            try:
                return self.hub.tag(repo, tag, cid)
            except BadInput as exc:
                if "already exists" in str(exc):
                    raise HTTPError(409, str(exc)) from None
                raise

        cid = await run_in_threadpool(work)
        return JSONResponse({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": cid})

    def _check_branch(self, repo: str, rev: str) -> None:
        if not self.hub.repo_exists(repo):
            raise RepoNotFound(f"repo {repo} not found")
        if norm_rev(rev) != DEFAULT_BRANCH:
            raise RevisionNotFound(f"branch {rev[:100]!r} not found in {repo}: fiun-hub serve writes to "
                                   f"{DEFAULT_BRANCH} only (no other branches, no pull requests)")

    async def preupload(self, request, org, name, rev):
        repo = self._write_target(request, org, name, commit=True)
        data = await self._json(request)
        files = data.get("files")
        if not isinstance(files, list) or len(files) > 10000:
            raise HTTPError(400, "preupload needs `files`: a list of {path, sample, size}")
        parsed = []
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("path"), str) or type(f.get("size")) is not int \
                    or f["size"] < 0:
                raise HTTPError(400, "each preupload file needs a path and an integer size")
            validate_repo_path(f["path"])
            try:
                sample = base64.b64decode(f.get("sample") or "", validate=True)[:512]
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"sample of {f['path'][:200]} is not base64") from None
            if f["size"] > self.max_upload:
                raise HTTPError(413, f"{f['path'][:200]} is {f['size']} bytes, over this server's upload limit of "
                                     f"{self.max_upload} bytes (--max-upload-mb)")
            parsed.append((f["path"], f["size"], sample))

        def work() -> dict:
            self._check_branch(repo, rev)
            info = self.hub.commit_info(repo)
            out = []
            for p, size, sample in parsed:
                mode = "lfs" if is_lfs(p, size, sample) else "regular"
                oid = None
                if p in info.files and self._size(repo, info, p) == size:
                    if mode == "lfs":
                        oid = info.files[p]
                    else:
                        remote_lfs, blob_oid = self._meta(repo, p, info.files[p], size)
                        oid = None if remote_lfs else blob_oid
                out.append({"path": p, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return {"files": out, "commitOid": info.id}

        return JSONResponse(await run_in_threadpool(work))

    async def commit(self, request, org, name, rev):
        repo = self._write_target(request, org, name, commit=True)
        await run_in_threadpool(self._check_branch, repo, rev)
        body = await self._body(request, self.max_body)
        ops = await run_in_threadpool(parse_ndjson, body, self.max_upload)  # linear, but MBs of JSON: off the loop
        del body
        keys = [(repo, oid) for oid, _ in ops.lfs.values()]
        try:
            cid = await run_in_threadpool(self._commit_work, repo, ops)
        finally:
            self._drop_staged(keys)  # tried: the staged bytes are in the hub now, or not wanted
        url = f"{self._base(request)}/{repo}/commit/{cid}"
        return JSONResponse({"success": True, "commitOid": cid, "commitUrl": url, "hookOutput": ""})

    def _commit_work(self, repo: str, ops: "Ops") -> str:
        head = self.hub.commit_info(repo)
        parent = ops.parent
        if parent is not None and not COMMIT_RE.match(parent):
            matches = [c for c in self.hub.commits(repo) if c.startswith(parent.lower())]
            parent = matches[0] if len(matches) == 1 else parent
        if parent is not None and parent != head.id:
            raise HTTPError(412, f"parent commit {ops.parent[:12]} is not the head of {DEFAULT_BRANCH} of {repo} "
                                 f"({head.id[:12]}): someone committed first; re-read and retry")
        deletes = []
        for p in ops.deleted_files:
            if p not in head.files:
                raise HTTPError(404, f"A file with this name doesn't exist: {p[:300]} in {repo}", "EntryNotFound")
            deletes.append(p)
        for folder in ops.deleted_folders:
            members = [f for f in head.files if f.startswith(folder + "/")] if folder else list(head.files)
            if not members:
                raise HTTPError(404, f"A folder with this name doesn't exist: {folder[:300]} in {repo}",
                                "EntryNotFound")
            deletes += members
        if ops.deleted_folders and parent is None:
            parent = head.id  # the folder's content was read at this head: land on it or not at all
        files: dict[str, bytes | Blob | Path] = dict(ops.regular)
        for p, (oid, size) in ops.lfs.items():
            with self.mutex:
                s = self.staged.get((repo, oid))
            if s is not None and (s.data is not None or s.path.is_file()):
                if size is not None and size != s.size:
                    raise HTTPError(400, f"{p[:300]}: declared size {size} differs from the {s.size} bytes uploaded")
                # In memory: the very bytes whose sha256 was checked, handed over with it (no second hash pass).
                files[p] = Blob(s.data, oid) if s.data is not None else s.path
                continue
            blob = self.hub.blob_path(repo, oid)  # content this repo already holds (unchanged or re-added files)
            if blob.is_file() and not blob.is_symlink() and (size is None or blob.stat().st_size == size) \
                    and sha256_file(blob) == oid:
                files[p] = blob
                continue
            raise HTTPError(400, f"{p[:300]}: LFS object {oid[:12]} was not uploaded (or expired); upload it through "
                                 "the LFS batch API first")
        if CARD_FILE in files:
            self._check_card(repo, files[CARD_FILE], head)
        if not files and not deletes:
            raise HTTPError(400, "the commit has no operations")
        change = RepoChange(repo, files=files, message=ops.message, parent_commit=parent, delete=tuple(deletes),
                            author=self.author)
        try:
            cid = self.hub.publish([change])[repo]
        except ConflictError as exc:  # the head moved under the lock (412), or the lock was not free in time (409)
            raise HTTPError(409 if "locked" in str(exc) else 412, str(exc)) from None
        tree = self.hub.list_files(repo, cid)
        bad = [p for p, (oid, _) in ops.lfs.items() if tree.get(p) != oid]
        if bad:  # cannot happen unless the staging folder was written behind our back
            log.error("fiun-hub serve: %s@%s: %s stored with another sha256 than declared", repo, cid, bad)
        return cid

    def _check_card(self, repo: str, content: bytes | Blob | Path, head=None) -> None:
        """A card must parse (docs/card-schema.md), must not make its repo its own ancestor, and may add only
        records of a forget of the head it replaces (card.claims_without_forget)."""
        from ..card import MAX_CARD_BYTES, ForgetRecord, claims_without_forget, parse_card, parse_card_full
        from ..lineage import resolve, validate_new_parents

        if isinstance(content, Blob):
            content = content.data
        if isinstance(content, Path):
            if content.stat().st_size > MAX_CARD_BYTES:
                raise HTTPError(400, f"{CARD_FILE} is larger than {MAX_CARD_BYTES} bytes")
            content = content.read_bytes()
        meta, _ = parse_card_full(content, where=f"{repo}:{CARD_FILE}")  # CardError -> 400
        carried: list[dict] = []
        if head is not None and CARD_FILE in head.files:
            try:
                carried = parse_card(self.hub.read_file(repo, CARD_FILE, head.id)).unlearned
            except BadInput:
                pass
        claims = claims_without_forget(meta.unlearned, carried, head.id if head is not None else None)
        if claims:
            raise HTTPError(400, f"{repo}:{CARD_FILE}: fiun.unlearned record of request "
                                 f"{ForgetRecord.from_dict(claims[0]).request[:130]} does not record a forget of the head it "
                                 f"replaces ({head.id[:12] if head is not None else 'none'}); forget records are "
                                 "written by `fiun-hub forget` / `takedown`, never claimed")
        if meta.parents:
            validate_new_parents(resolve(self.hub), repo, [p.repo for p in meta.parents])
