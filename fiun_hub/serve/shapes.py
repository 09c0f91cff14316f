"""The JSON shapes of the Hub API: which files are LFS files and their git ids, the tags a card implies, the
model-info and file entries, paginated lists and URLs."""

from __future__ import annotations

import hashlib
from typing import Any

from ..constants import CARD_FILE, RELATIONS
from ..hub.local import purged_error
from .common import LFS_SUFFIXES, LFS_THRESHOLD, JSONResponse, Request, Response


def is_lfs(path: str, size: int, sample: bytes | None = None) -> bool:
    """Whether a file is an LFS file: a binary-model suffix, at least 10 MiB, or binary content (a NUL byte in its
    first 512 bytes). The same rule decides the preupload mode and the listing, so both agree."""
    if path.lower().endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD:
        return True
    return sample is not None and b"\x00" in sample[:512]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular file (what the Hub calls its ``oid`` / ``blobId``)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()


def _front_matter(data: bytes) -> dict | None:
    """A card's YAML front matter as plain JSON data (``cardData``), or None if it has none or is unreadable."""
    from huggingface_hub import ModelCard

    from ..card import MAX_CARD_BYTES, front_matter_data

    if len(data) > MAX_CARD_BYTES:
        return None
    try:
        card = ModelCard(data.decode("utf-8"), ignore_metadata_errors=True)
        return front_matter_data(card.data.to_dict(), CARD_FILE) or None
    except Exception:  # malformed YAML, not UTF-8, alias bomb...: the listing shows no cardData
        return None


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int, float))]
    return []


def card_tags(card: dict | None, files) -> list[str]:
    """The tags the Hub derives from a card: library, card tags, pipeline, license, datasets, ``safetensors``, and
    ``base_model:ORG/NAME`` plus ``base_model:RELATION:ORG/NAME`` for every parent.

    >>> card_tags({"library_name": "timm", "tags": ["fiun-hub"], "base_model": ["a/x", "b/y"],
    ...            "base_model_relation": "merge"}, ["model.safetensors"])[2:]
    ['safetensors', 'base_model:a/x', 'base_model:merge:a/x', 'base_model:b/y', 'base_model:merge:b/y']
    """
    card = card or {}
    tags: list[str] = []
    if isinstance(card.get("library_name"), str):
        tags.append(card["library_name"])
    tags += _str_list(card.get("tags"))
    if isinstance(card.get("pipeline_tag"), str):
        tags.append(card["pipeline_tag"])
    if any(str(p).endswith(".safetensors") for p in files):
        tags.append("safetensors")
    tags += [f"license:{v}" for v in _str_list(card.get("license"))]
    tags += [f"dataset:{v}" for v in _str_list(card.get("datasets"))]
    bases = _str_list(card.get("base_model"))
    relation = card.get("base_model_relation")
    if relation not in RELATIONS:
        relation = "merge" if len(bases) > 1 else "finetune"
    for b in bases:
        tags += [f"base_model:{b}", f"base_model:{relation}:{b}"]
    return list(dict.fromkeys(tags))


def _str_field(card: dict | None, key: str) -> str | None:
    value = (card or {}).get(key)
    return value if isinstance(value, str) else None


class Shapes:
    """The model-info, file and page answers, with their caches (mixed into
    :class:`~fiun_hub.serve.app._Server`; ``self.blob_meta``, ``self.summaries``, ``self.created``)."""

    @staticmethod
    def _base(request: "Request") -> str:
        return str(request.base_url).rstrip("/")

    def _meta(self, repo: str, path: str, sha: str, size: int) -> tuple[bool, str]:
        """(is LFS, git blob id) of one file; small files are read once (cached by content)."""
        by_name = is_lfs(path, size)

        def make() -> tuple[bool, str]:
            if by_name:
                return True, git_blob_sha1(lfs_pointer(sha, size))
            data = self.hub.blob_path(repo, sha).read_bytes()
            if is_lfs(path, len(data), data[:512]):
                return True, git_blob_sha1(lfs_pointer(sha, len(data)))
            return False, git_blob_sha1(data)

        return self.blob_meta.get_or((sha, by_name, size), make)

    def _size(self, repo: str, info, path: str) -> int:
        size = info.sizes.get(path)
        return size if isinstance(size, int) else self.hub.blob_path(repo, info.files[path]).stat().st_size

    def _file_entry(self, repo: str, info, path: str) -> dict:
        sha = info.files[path]
        size = self._size(repo, info, path)
        lfs, oid = self._meta(repo, path, sha, size)
        entry = {"type": "file", "oid": oid, "size": size, "path": path}
        if lfs:
            entry["lfs"] = {"oid": sha, "size": size, "pointerSize": len(lfs_pointer(sha, size))}
        return entry

    def _created_at(self, repo: str, info) -> str:
        chain, cur = [], info
        while True:
            with self.created.mutex:
                known = self.created.get(cur.id)
            if known is not None:
                break
            chain.append(cur.id)
            if not cur.parents:
                known = cur.time
                break
            cur = self.hub.commit_info(repo, cur.parents[0])
        for cid in chain:
            self.created.get_or(cid, lambda: known)
        return known

    def _summary(self, repo: str, info) -> dict:
        def make() -> dict:
            card = None
            if CARD_FILE in info.files:
                card = _front_matter(self.hub.read_file(repo, CARD_FILE, info.id))
            card = card or None
            return {
                "card": card,
                "tags": card_tags(card, info.files),
                "library_name": _str_field(card, "library_name"),
                "pipeline_tag": _str_field(card, "pipeline_tag"),
                "created": self._created_at(repo, info),
            }

        return self.summaries.get_or(info.id, make)

    def _model_json(self, repo: str, info, *, blobs: bool = False) -> dict:
        s = self._summary(repo, info)
        stones = self.hub.tombstones(repo, info.id)
        present = [p for p in sorted(info.files) if p not in stones]
        if blobs:
            siblings = []
            for p in present:
                e = self._file_entry(repo, info, p)
                sib = {"rfilename": p, "size": e["size"], "blobId": e["oid"]}
                if "lfs" in e:
                    sib["lfs"] = {"size": e["size"], "sha256": e["lfs"]["oid"], "pointerSize": e["lfs"]["pointerSize"]}
                siblings.append(sib)
        else:
            siblings = [{"rfilename": p} for p in present]
        removed = [{"rfilename": p, "request": st.get("request"), "at": st.get("at"), "status": 451,
                    "message": str(purged_error(repo, info.id, p, st))} for p, st in sorted(stones.items())]
        return {
            "_id": repo, "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": info.id,
            "lastModified": info.time, "createdAt": s["created"], "private": not self.open_reads,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "library_name": s["library_name"],
            "tags": list(s["tags"]), "pipeline_tag": s["pipeline_tag"], "cardData": s["card"],
            "siblings": siblings, "spaces": [], "removed": removed,
            "usedStorage": sum(v for v in info.sizes.values() if isinstance(v, int)),
        }

    def _page(self, request, items: list, cursor: int, size: int) -> "Response":
        page = items[cursor:cursor + size]
        headers = {}
        if cursor + size < len(items):
            nxt = request.url.include_query_params(cursor=str(cursor + size))
            headers["Link"] = f'<{nxt}>; rel="next"'
        return JSONResponse(page, headers=headers)
