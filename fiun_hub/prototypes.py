"""The class prototype sidecar on a hub (``fim-prototypes.safetensors``, docs/sidecars.md): read it at a commit,
checked against the weights it sits beside, and compute and commit it. The maths and the format are in
:mod:`fiun_hub.feature_forget` (the maths tier); this module is the operations tier's side, beside
:mod:`fiun_hub.sidecars`."""
from __future__ import annotations

import torch

from .errors import UnlearnError
from .feature_forget import PROTO_FILE, class_prototypes, encode_prototypes, fold_point, read_prototypes


def load_prototypes(hub, repo: str, info) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, str]] | None:
    """The repo's prototype sidecar at commit ``info`` (None when it has none); refused when it was computed on
    other weights."""
    from .sidecars import read_at
    from .constants import WEIGHTS_FILE

    if PROTO_FILE not in info.files:
        return None
    where = f"{repo}@{info.id[:12]}"
    protos, counts, meta = read_prototypes(read_at(hub, repo, info, PROTO_FILE), where)
    if meta.get("weights_sha256") != info.files.get(WEIGHTS_FILE):
        raise UnlearnError(f"{where}: {PROTO_FILE} is stale (computed on other weights); run "
                           f"`fiun-hub fim {repo} --data SPEC --prototypes` again")
    return protos, counts, meta


def commit_prototypes(hub, repo: str, data_spec: str, message: str | None = None) -> dict:
    """Compute ``repo``'s class prototypes (:func:`class_prototypes`) on ``data_spec`` (its training data, with its
    own preprocessing; samples of classes it does not know are ignored) and commit them as a new revision, weights
    and other files unchanged."""
    from .constants import WEIGHTS_FILE
    from .data import load_for_model
    from .hub.base import RepoChange
    from .models import load_model

    cid = hub.resolve(repo)
    model, config, _ = load_model(hub, repo, cid)
    point = fold_point(model)
    data = load_for_model(data_spec, config).to_label_space(config.labels)
    if len(data) == 0:
        raise UnlearnError(f"{data_spec} holds no sample of {repo}'s classes")
    protos, counts = class_prototypes(model, data.x, data.y, config.labels)
    sha = hub.list_files(repo, cid)[WEIGHTS_FILE]
    blob = encode_prototypes(protos, counts, config.labels, point["block"], sha, {"data_spec": data_spec})
    new = hub.publish([RepoChange(repo, {PROTO_FILE: blob}, message or f"Class prototypes ({len(data)} samples of "
                                  f"{data_spec})", parent_commit=cid)])[repo]
    return {"repo": repo, "revision": new, "block": point["block"], "samples": len(data), "counts": counts}


__all__ = ["load_prototypes", "commit_prototypes"]
