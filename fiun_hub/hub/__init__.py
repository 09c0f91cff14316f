"""Storage backends behind one small interface (:class:`~fiun_hub.hub.base.Hub`: list repos, read a file at a
revision, history, refs, publish), each stating what else it can do in its ``capabilities``
(:func:`~fiun_hub.hub.base.supports`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import cast

from ..constants import DEFAULT_HUB, HUB_ENV
from ..errors import BadInput
from .ids import split_repo_rev, validate_repo_id
from .base import LOCAL_FOLDER, Blob, CommitInfo, Hub, RepoChange, supports
from .local import LocalHub


def hub_location(spec: str | os.PathLike | None = None) -> str:
    """``--hub`` value, else ``$FIUN_HUB``, else ``~/.cache/fiun-hub``."""
    return str(spec or os.environ.get(HUB_ENV) or DEFAULT_HUB)


def is_remote(spec: str | os.PathLike | None) -> bool:
    loc = hub_location(spec)
    return loc == "hf" or loc.startswith(("hf://", "hf+http://", "hf+https://"))


def open_hub(spec: str | os.PathLike | None = None, *, create: bool = False):
    """Open the hub named by ``spec``: a folder (:class:`LocalHub`; ``create`` makes an empty hub where there is
    none) or ``hf://HOST[:PORT][/NAMESPACE]`` / ``hf`` (:class:`~fiun_hub.hub.hf.HfHub`, a Hub HTTP API)."""
    loc = hub_location(spec)
    if is_remote(loc):
        if create:
            raise BadInput(f"{loc} is a remote hub: there is nothing to create (repos are created on push)")
        from .hf import HfHub

        return HfHub(loc)
    return LocalHub.init(Path(loc)) if create else LocalHub(Path(loc))


def require_local(hub: Hub, what: str) -> LocalHub:
    """``hub`` if it has a folder here (a LocalHub); else one clear error saying ``what`` needs a local hub folder."""
    if not supports(hub, LOCAL_FOLDER):
        raise BadInput(f"{what} needs a local hub folder (--hub PATH); {hub!r} is reached over HTTP")
    return cast(LocalHub, hub)  # (LOCAL_FOLDER is LocalHub's: the one backend with a folder here)


__all__ = ["Hub", "LocalHub", "RepoChange", "CommitInfo", "Blob", "supports", "open_hub", "hub_location", "validate_repo_id",
           "split_repo_rev", "is_remote", "require_local"]
