"""Validation of repo ids, revisions, request ids and in-repo paths: the only strings that become file names in a
hub. A format (the formats tier, docs/architecture.md): the hub package (``fiun_hub.hub.ids`` re-exports this
module) and the card (``fiun_hub.card``, whose records name repos, commits and requests) both read it."""
from __future__ import annotations

import re

from .constants import DEFAULT_BRANCH, LEDGER_REPO
from .errors import BadInput, InvalidRepoId

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID_RE = re.compile(rf"^({_PART})/({_PART})\Z")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}\Z")
REF_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
MAX_PATH = 255
# request ids (takedowns, forgets): they name ledger files (records/{id}.json) and land in every affected card
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?\Z")


def validate_repo_id(repo: object) -> str:
    """Return ``repo`` if it is a safe ``org/name`` id, else raise :class:`InvalidRepoId`.

    Each part starts with a letter or digit, holds letters, digits, ``.``, ``_`` or ``-``, and may not contain
    ``--`` (the HF cache folder ``models--org--name`` would become ambiguous) or ``..``.

    >>> validate_repo_id("acme/resnet-digits")
    'acme/resnet-digits'
    >>> validate_repo_id("../etc")
    Traceback (most recent call last):
    ...
    fiun_hub.errors.InvalidRepoId: invalid repo id '../etc': expected org/name (letters, digits, '.', '_', '-'; no '..' or '--')
    """
    if isinstance(repo, str) and REPO_ID_RE.match(repo) and ".." not in repo and "--" not in repo:
        return repo
    shown = repo if isinstance(repo, str) and len(repo) <= 200 else f"{str(repo)[:200]}..."
    raise InvalidRepoId(
        f"invalid repo id {shown!r}: expected org/name (letters, digits, '.', '_', '-'; no '..' or '--')"
    )


def split_repo_rev(spec: str) -> tuple[str, str | None]:
    """``'org/x@abc'`` -> ``('org/x', 'abc')``; ``'org/x'`` -> ``('org/x', None)``."""
    repo, sep, rev = spec.partition("@")
    validate_repo_id(repo)
    if sep and not rev:
        raise BadInput(f"empty revision in {spec!r}; write org/name@REVISION")
    if rev:
        validate_ref_name(rev.removeprefix("tags/"), what="revision")
    return repo, (rev or None)


def validate_ref_name(name: str, what: str = "tag") -> str:
    if not isinstance(name, str) or not REF_NAME_RE.match(name) or ".." in name:
        raise BadInput(f"invalid {what} {name!r}: use letters, digits, '.', '_', '-' (at most 100)")
    return name


def validate_request_id(rid: object, what: str = "request id") -> str:
    """A request id: letters, digits, '.', '_', '-', at most 128, no '..' (the rule of takedown and forget ids)."""
    if isinstance(rid, str) and REQUEST_ID_RE.match(rid) and ".." not in rid:
        return rid
    shown = rid if isinstance(rid, str) and len(rid) <= 60 else f"{str(rid)[:60]}..."
    raise BadInput(f"invalid {what} {shown!r}: letters, digits, '.', '_', '-' (at most 128, e.g. TKD-2026-001)")


def validate_tag_name(name: str) -> str:
    """A tag a user may set: a ref name, and not ``main`` (``refs/tags/main`` beside the branch ``main`` would make
    the revision ``main`` mean two things). The one rule of ``fiun-hub tag`` and serve's create_tag."""
    validate_ref_name(name)
    if name == DEFAULT_BRANCH:
        raise BadInput(f"invalid tag {name!r}: {DEFAULT_BRANCH} is the branch; pick another tag name")
    return name


def check_user_writable(repo: str) -> str:
    """A repo a user may push to, tag or commit to: any but the takedown ledger, which only `fiun-hub takedown`
    (and `audit --fix`) write, in the same publish as the forget they record. The one rule of the CLI and serve."""
    if repo == LEDGER_REPO:
        raise BadInput(f"{LEDGER_REPO} is the takedown ledger; only `fiun-hub takedown` and `audit --fix` write it")
    return repo


def validate_repo_path(path: str) -> str:
    """A file path inside a repo: relative, '/'-separated, no '..', no empty parts, no backslash."""
    parts = path.split("/") if isinstance(path, str) else []
    if (
        not parts
        or len(path) > MAX_PATH
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") for p in parts)
        or parts[0] == ".fiun"
    ):
        raise BadInput(f"invalid file path in repo: {path!r}")
    return path


def repo_folder_name(repo: str) -> str:
    """The HF cache folder of a model repo: ``org/name`` -> ``models--org--name``."""
    org, name = validate_repo_id(repo).split("/")
    return f"models--{org}--{name}"


def repo_from_folder(folder: str) -> str | None:
    if not folder.startswith("models--"):
        return None
    parts = folder[len("models--"):].split("--")
    if len(parts) != 2:
        return None
    repo = "/".join(parts)
    return repo if REPO_ID_RE.match(repo) and ".." not in repo else None
