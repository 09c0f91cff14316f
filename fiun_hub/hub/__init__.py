"""Storage backends behind one small interface: list repos, read a file at a revision, history, refs, publish."""
from __future__ import annotations

import os
from pathlib import Path

from ..constants import DEFAULT_HUB, HUB_ENV
from ..errors import BadInput
from .ids import split_repo_rev, validate_repo_id
from .local import CommitInfo, LocalHub, RepoChange


def hub_location(spec: str | os.PathLike | None = None) -> str:
    """``--hub`` value, else ``$FIUN_HUB``, else ``~/.cache/fiun-hub``."""
    return str(spec or os.environ.get(HUB_ENV) or DEFAULT_HUB)


def open_hub(spec: str | os.PathLike | None = None, *, create: bool = False) -> LocalHub:
    """Open the hub named by ``spec`` (a folder). ``create`` makes an empty hub where there is none."""
    loc = hub_location(spec)
    if loc.startswith("hf://") or loc == "hf":
        raise BadInput(f"remote hubs ({loc}) are not supported by this version; use a local hub folder")
    return LocalHub.init(Path(loc)) if create else LocalHub(Path(loc))


__all__ = ["LocalHub", "RepoChange", "CommitInfo", "open_hub", "hub_location", "validate_repo_id",
           "split_repo_rev"]
