"""The read routes: whoami, model info and listings, refs, commits, tree, paths-info, resolve (downloads),
validate-yaml, and the answers for what is not served (Xet, datasets, spaces)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from urllib.parse import parse_qs

from ..constants import CARD_FILE, DEFAULT_BRANCH
from ..errors import CardError, FiunError, RepoNotFound, RevisionNotFound
from ..hub.ids import COMMIT_RE, REF_NAME_RE
from ..hub.local import purged_error
from .common import (JSON_LIMIT, MB, PAGE_COMMITS, PAGE_MODELS, PAGE_TREE, XET_HINT, HTTPError, JSONResponse,
                     BlobResponse, norm_rev, loads, one_line, run_in_threadpool)


class ReadRoutes:
    """The read routes (mixed into :class:`~fiun_hub.serve.app._Server`)."""

    def _commit_info(self, repo: str, rev: str | None):
        """commit_info with every malformed revision answered as 'revision not found' (after the repo check)."""
        rev = norm_rev(rev or DEFAULT_BRANCH)
        if not COMMIT_RE.match(rev) and not REF_NAME_RE.match(rev.removeprefix("tags/")):
            if not self.hub.repo_exists(repo):
                raise RepoNotFound(f"repo {repo} not found")
            raise RevisionNotFound(f"revision {rev[:100]!r} not found in {repo}")
        info = self.hub.commit_info(repo, rev)
        stones = self.hub.tombstones(repo, info.id)
        if stones:  # purged files are not listed (tree, paths-info, siblings); resolve answers 451 for them
            info = dataclasses.replace(info, files={p: h for p, h in info.files.items() if p not in stones})
        return info

    async def whoami(self, request):
        if self.token is None:
            raise HTTPError(401, "this server has no token (read-only)")
        self._auth(request, write=True)
        return JSONResponse({"type": "user", "name": "fiun-hub", "fullname": "fiun-hub serve", "orgs": [],
                             "auth": {"type": "access_token",
                                      "accessToken": {"displayName": "fiun-hub serve", "role": "write"}}})

    async def model_info(self, request, org, name, rev=None):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        q = request.query_params
        blobs = q.get("blobs", "").lower() in ("1", "true")
        expand = q.getlist("expand") + q.getlist("expand[]")

        def work():
            return self._model_json(repo, self._commit_info(repo, rev), blobs=blobs)

        data = await run_in_threadpool(work)
        if expand:
            data = {"_id": data["_id"], "id": data["id"], **{k: data[k] for k in expand if k in data}}
        return JSONResponse(data)

    async def list_models(self, request):
        self._auth(request, write=False)
        q = request.query_params
        filters = [f for v in q.getlist("filter") for f in v.split(",") if f]
        author, search = q.get("author"), (q.get("search") or "").lower()
        full = q.get("full", "").lower() in ("1", "true")
        with_card = q.get("cardData", "").lower() in ("1", "true")
        with_config = q.get("config", "").lower() in ("1", "true")
        expand = q.getlist("expand") + q.getlist("expand[]")
        sort, direction = q.get("sort"), q.get("direction")
        try:
            limit = int(q["limit"]) if q.get("limit") else None
            cursor = int(q.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "limit and cursor must be integers") from None

        def work() -> list[dict]:
            out = []
            for repo in self.hub.list_repos():
                if author and repo.split("/")[0] != author:
                    continue
                if search and search not in repo.lower():
                    continue
                try:
                    info = self.hub.commit_info(repo)
                except FiunError:
                    continue  # a repo whose head is unreadable is left out of listings (fiun-hub verify reports it)
                data = self._model_json(repo, info)
                if any(f not in data["tags"] and f != repo for f in filters):
                    continue
                if with_config and "config.json" in info.files:
                    with contextlib.suppress(Exception):
                        if self._size(repo, info, "config.json") <= MB:
                            data["config"] = json.loads(self.hub.read_file(repo, "config.json", info.id))
                out.append(data)
            return out

        items = await run_in_threadpool(work)
        if sort:
            key = {"lastModified": "lastModified", "createdAt": "createdAt", "id": "id"}.get(sort)
            if key:
                items.sort(key=lambda d: d[key], reverse=direction != "1")
        if limit is not None:
            items = items[:max(limit, 0)]
        shown = []
        for d in items:
            if expand:
                shown.append({"_id": d["_id"], "id": d["id"], **{k: d[k] for k in expand if k in d}})
                continue
            keep = ["_id", "id", "modelId", "author", "sha", "lastModified", "createdAt", "private", "downloads",
                    "likes", "tags", "library_name", "pipeline_tag"]
            if full:
                keep += ["siblings", "gated", "disabled"]
            if with_card:
                keep.append("cardData")
            if "config" in d:
                keep.append("config")
            shown.append({k: d[k] for k in keep if k in d})
        return self._page(request, shown, cursor, PAGE_MODELS)

    async def refs(self, request, org, name):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        refs = await run_in_threadpool(self.hub.refs, repo)
        return JSONResponse({
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                         for b, c in sorted(refs["branches"].items())],
            "converts": [],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in sorted(refs["tags"].items())],
            "pullRequests": [],
        })

    async def commits(self, request, org, name, rev):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        formatted = "formatted" in request.query_params.getlist("expand[]") + request.query_params.getlist("expand")
        try:
            cursor = int(request.query_params.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "cursor must be an integer") from None

        def work():
            head = self._commit_info(repo, rev)
            return self.hub.history(repo, head.id)

        items = []
        for c in await run_in_threadpool(work):
            title, _, rest = c.message.partition("\n")
            item = {"id": c.id, "title": title, "message": rest.strip("\n"),
                    "authors": [{"user": c.author, "avatar": None}], "date": c.time, "parents": list(c.parents)}
            if formatted:
                item["formatted"] = {"title": _html(title), "message": _html(rest.strip("\n"))}
            items.append(item)
        return self._page(request, items, cursor, PAGE_COMMITS)

    async def tree(self, request, org, name, rev, path=None):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        prefix = (path or "").strip("/")
        try:
            cursor = int(request.query_params.get("cursor") or 0)
        except ValueError:
            raise HTTPError(400, "cursor must be an integer") from None

        def work() -> list[dict]:
            info = self._commit_info(repo, rev)
            files = sorted(info.files)
            under = [p for p in files if not prefix or p.startswith(prefix + "/")]
            if prefix and not under:
                if prefix in info.files:
                    raise HTTPError(400, f"{prefix} is a file, not a folder; use paths-info or resolve",
                                    headers={"X-Repo-Commit": info.id})
                raise HTTPError(404, f"{prefix} not found in {repo}@{info.id[:12]}", "EntryNotFound",
                                headers={"X-Repo-Commit": info.id})
            start = len(prefix) + 1 if prefix else 0
            folders: dict[str, list[str]] = {}
            out = []
            for p in under:
                rel = p[start:].split("/")
                for depth in range(1, len(rel)):
                    if not recursive and depth > 1:
                        break
                    folders.setdefault(p[:start] + "/".join(rel[:depth]), []).append(p)
                if recursive or len(rel) == 1:
                    out.append(self._file_entry(repo, info, p))
            for f, members in folders.items():
                oid = hashlib.sha1("\n".join(f"{m} {info.files[m]}" for m in members).encode()).hexdigest()
                out.append({"type": "directory", "oid": oid, "size": 0, "path": f})
            out.sort(key=lambda e: (e["path"].count("/"), e["type"] != "directory", e["path"]))
            return out

        return self._page(request, await run_in_threadpool(work), cursor, PAGE_TREE)

    async def paths_info(self, request, org, name, rev):
        self._auth(request, write=False)
        repo = self._repo(org, name)
        body = await self._body(request, JSON_LIMIT)
        if "json" in request.headers.get("content-type", ""):
            data = loads(body)
            paths = data.get("paths") if isinstance(data, dict) else None
        else:
            paths = parse_qs(body.decode("utf-8", "replace")).get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise HTTPError(400, "paths-info needs a list of paths")

        def work() -> list[dict]:
            info = self._commit_info(repo, rev)
            out = []
            for p in dict.fromkeys(x.strip("/") for x in paths):
                if p in info.files:
                    out.append(self._file_entry(repo, info, p))
                elif any(f.startswith(p + "/") for f in info.files):
                    members = [f for f in sorted(info.files) if f.startswith(p + "/")]
                    oid = hashlib.sha1("\n".join(f"{m} {info.files[m]}" for m in members).encode()).hexdigest()
                    out.append({"type": "directory", "oid": oid, "size": 0, "path": p})
            return out

        return JSONResponse(await run_in_threadpool(work))

    async def resolve(self, request, org, name, rev, path):
        self._auth(request, write=False)
        repo = self._repo(org, name)

        def work():
            info = self._commit_info(repo, rev)
            stone = self.hub.tombstones(repo, info.id).get(path)
            if stone is not None:
                raise purged_error(repo, info.id, path, stone)
            if path not in info.files:
                raise HTTPError(404, f"{path[:300]} not found in {repo}@{info.id[:12]}", "EntryNotFound",
                                headers={"X-Repo-Commit": info.id})
            blob = self.hub.file_path(repo, path, info.id)
            st = blob.stat()
            lfs, oid = self._meta(repo, path, info.files[path], st.st_size)
            return info, blob, st, lfs, oid

        info, blob, st, lfs, oid = await run_in_threadpool(work)
        sha = info.files[path]
        headers = {"X-Repo-Commit": info.id, "ETag": f'"{sha if lfs else oid}"', "Accept-Ranges": "bytes",
                   "Cache-Control": "public, max-age=31536000, immutable" if COMMIT_RE.match(rev) else "no-cache"}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(st.st_size)})
        return BlobResponse(blob, headers=headers, media_type="application/octet-stream", stat_result=st)

    async def validate_yaml(self, request):
        self._auth(request, write=False)
        data = await self._json(request)
        content = data.get("content")
        if not isinstance(content, str):
            raise HTTPError(400, "validate-yaml needs the card text in `content`")
        from ..card import parse_card_full

        try:
            await run_in_threadpool(parse_card_full, content, CARD_FILE)
        except CardError as exc:
            msg = one_line(exc)
            raise HTTPError(400, msg, extra={"errors": [{"message": msg}], "warnings": []}) from None
        return JSONResponse({"errors": [], "warnings": []})

    async def no_xet(self, request, org, name):
        raise HTTPError(501, XET_HINT)

    async def not_models(self, request):
        raise HTTPError(404, "fiun-hub serve holds model repos only (no datasets, spaces or kernels)", "RepoNotFound")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
