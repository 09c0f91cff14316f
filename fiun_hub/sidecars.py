"""Fisher sidecars in the hub: compute and commit them (``fiun-hub fim``), and read them back checked.

The formats are fixed in docs/sidecars.md; the maths lives in :mod:`fiun_hub.fisher`.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Callable

from .card import fim_entry, render_card
from .constants import CARD_FILE, FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
from .data import load_data
from .errors import SidecarError
from .fisher import DEFAULT_ESTIMATOR, ESTIMATORS
from .hub.local import LocalHub, RepoChange
from .models import load_model
from .repo import read_meta



def load_sidecars(hub: LocalHub, repo: str, revision: str | None = None, *, need_classes: bool = True):
    """The checked sidecars of ``repo`` at ``revision``; missing, stale or malformed ones raise SidecarError
    naming the fix."""
    from .fisher import read_sidecars

    cid = hub.resolve(repo, revision)
    where = f"{repo}@{cid[:12]}"
    files = hub.list_files(repo, cid)
    fix = f"run `fiun-hub fim {repo} --data SPEC` on its training data"
    if FIM_FILE not in files or (need_classes and FIM_CLASSES_FILE not in files):
        raise SidecarError(f"{where} has no Fisher sidecar; {fix}")
    sc = read_sidecars(hub.read_file(repo, FIM_FILE, cid),
                       hub.read_file(repo, FIM_CLASSES_FILE, cid) if FIM_CLASSES_FILE in files else None,
                       where=where)
    recorded = sc.metadata.get("weights_sha256")
    if recorded is None and sc.model_commit:
        try:
            recorded = hub.list_files(repo, sc.model_commit).get(WEIGHTS_FILE)
        except Exception:
            recorded = None
    if recorded != files.get(WEIGHTS_FILE):
        raise SidecarError(f"{where}: Fisher sidecar is stale (computed on other weights); {fix}")
    return sc


def compute_and_commit(
    hub: LocalHub,
    repo: str,
    data_spec: str,
    *,
    layers: str = "head",
    estimator: str = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Compute the model FIM and per-class FIMs of ``repo``'s head on ``data_spec`` and commit them as a new
    revision (weights unchanged). Samples of classes the model does not know are ignored."""
    from .fisher import compute_fisher, resolve_layers, sidecar_bytes

    if estimator not in ESTIMATORS:
        raise SidecarError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
    model, config, cid = load_model(hub, repo)
    data = load_data(data_spec, in_chans=config.in_chans, input_size=config.input_size)
    known = [n for n in config.labels if n in data.labels]
    if not known:
        raise SidecarError(f"data {data_spec} shares no label with {repo} (model labels {config.labels[:10]}, "
                           f"data labels {data.labels[:10]})")
    data = data.to_label_space(config.labels)
    if not bool(data.x.isfinite().all()):
        raise SidecarError(f"{repo}: data {data_spec} holds NaN or Inf values")
    names = resolve_layers(model, layers, classifier=config.classifier)
    result = compute_fisher(model, data.x, data.y, config.labels, names, estimator=estimator,
                            batch_size=batch_size, device=device, progress=progress)
    files = hub.list_files(repo, cid)
    fim, fim_classes = sidecar_bytes(result, {
        "model_commit": cid,
        "weights_sha256": files[WEIGHTS_FILE],
        "dataset": data.fingerprint,
        "data_spec": data_spec,
        "computed_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    meta = read_meta(hub, repo, cid)
    meta.fim = fim_entry(result.layers, result.estimator)
    from .card import card_body

    card = render_card(meta, card_body(hub.read_file(repo, CARD_FILE, cid).decode()), repo)
    new = hub.publish([RepoChange(
        repo, {FIM_FILE: fim, FIM_CLASSES_FILE: fim_classes, CARD_FILE: card.encode()},
        message or f"Fisher sidecars ({result.estimator}, {len(data)} samples of {data_spec})", parent_commit=cid,
    )])[repo]
    return {"repo": repo, "revision": new, "model_commit": cid, "layers": result.layers,
            "estimator": result.estimator, "samples": len(data), "counts": result.counts}
