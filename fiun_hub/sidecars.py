"""Fisher sidecars in the hub: compute and commit them (``fiun-hub fim``), and read them back checked.

The formats are fixed in docs/sidecars.md; the maths lives in :mod:`fiun_hub.fisher`.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from .card import card_body, fim_entry, render_card
from .constants import CARD_FILE, CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
from .data import load_for_model, parse_spec
from .errors import BadInput, EntryNotFound, SidecarError
from .executors import check_executor, run_call
from .fisher import DEFAULT_ESTIMATOR, ESTIMATORS, compute_fisher, read_sidecars, resolve_layers, sidecar_bytes
from .hub.base import BLOB_STORE, CommitInfo, Hub, RepoChange, supports
from .lineage import weights_state
from .models import load_model
from .preprocessing import SIDECAR_KEY, of_config, stale_preprocessing
from .repo import read_meta


def path_at(hub: Hub, repo: str, info: CommitInfo, path: str) -> Path:
    """Where the content of ``path`` in the commit ``info`` (a :class:`~fiun_hub.hub.base.CommitInfo` already
    read) lies: on a hub with a blob store (a LocalHub) the blob it names, found without resolving the commit again (``hub.file_path``
    reads the commit record once more); elsewhere ``hub.file_path``. A missing path or blob raises
    :class:`~fiun_hub.errors.EntryNotFound`, as ``file_path`` does."""
    if supports(hub, BLOB_STORE):
        sha = info.files.get(path)
        if sha is None:
            raise EntryNotFound(f"{path} not found in {repo}@{info.id[:12]}")
        blob = hub.blob_path(repo, sha)
        if blob.is_symlink() or not blob.is_file():
            raise EntryNotFound(f"blob {sha[:12]} of {repo}:{path} is missing; run `fiun-hub verify`")
        return blob
    return hub.file_path(repo, path, info.id)


def read_at(hub: Hub, repo: str, info: CommitInfo, path: str) -> bytes:
    """The bytes of ``path`` in the commit ``info`` (see :func:`path_at`)."""
    if supports(hub, BLOB_STORE):
        return path_at(hub, repo, info, path).read_bytes()
    return hub.read_file(repo, path, info.id)


def load_sidecars(hub: Hub, repo: str, revision: str | None = None, *, need_classes: bool = True, info=None):
    """The checked sidecars of ``repo`` at ``revision`` (or at the commit ``info``, already read); missing, stale
    or malformed ones raise SidecarError naming the fix."""
    info = info if info is not None else hub.commit_info(repo, revision)
    cid = info.id
    where = f"{repo}@{cid[:12]}"
    files = info.files
    fix = f"run `fiun-hub fim {repo} --data SPEC` on its training data"
    if FIM_FILE not in files or (need_classes and FIM_CLASSES_FILE not in files):
        raise SidecarError(f"{where} has no Fisher sidecar; {fix}")
    sc = read_sidecars(read_at(hub, repo, info, FIM_FILE),
                       read_at(hub, repo, info, FIM_CLASSES_FILE) if FIM_CLASSES_FILE in files else None,
                       where=where)
    state = weights_state(hub, repo, sc.metadata, files.get(WEIGHTS_FILE))  # the rule the lineage reports
    if state == "invalid":
        raise SidecarError(f"{where}: Fisher sidecar records neither the weights' sha256 nor the model commit it "
                           f"was computed on; {fix}")
    if state != "ok":
        raise SidecarError(f"{where}: Fisher sidecar is stale (computed on other weights); {fix}")
    check_preprocessing(hub, repo, info, sc.metadata, where, fix)
    return sc


def check_preprocessing(hub: Hub, repo: str, info: CommitInfo, meta: dict, where: str, fix: str) -> None:
    """SidecarError unless the sidecar (header ``meta``) was computed with the preprocessing the model's
    ``config.json`` at ``info`` declares (the rule of :func:`fiun_hub.preprocessing.stale_preprocessing`, which
    ``lineage.sidecar_state`` applies too). A garbled recorded preprocessing is bad input, exit 2."""
    if CONFIG_FILE not in info.files:
        raise SidecarError(f"{where} has no {CONFIG_FILE}")
    try:
        model = of_config(json.loads(read_at(hub, repo, info, CONFIG_FILE)), f"{where}:{CONFIG_FILE}")
    except ValueError:
        raise SidecarError(f"{where}:{CONFIG_FILE} is not valid JSON") from None
    try:
        why = stale_preprocessing(meta, model, f"{where}:{FIM_FILE}")
    except BadInput as exc:
        raise SidecarError(str(exc)) from None
    if why:
        raise SidecarError(f"{where}: Fisher sidecar is stale ({why}); {fix}")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (None: left as it is), then restored. Some
    reductions (the batch estimator's gradients, say) sum in another order with another thread count, so a
    computation that must give the same bytes everywhere runs with the same count everywhere."""
    import torch

    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def fisher_of(hub: Hub, repo: str, revision: str, data_spec: str, *, layers: str = "head",
              estimator: str = DEFAULT_ESTIMATOR, batch_size: int = 64, device: str | None = None,
              threads: int | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The Fisher computation of ``fiun-hub fim``, on its own so that it can run as one Ray task: load ``repo``
    at ``revision`` and ``data_spec``, compute the sidecars' FIMs with ``threads`` torch threads. Returns
    ``{"result": FisherResult, "dataset": fingerprint, "samples": n}``; publishes nothing."""

    model, config, _ = load_model(hub, repo, revision)
    data = load_for_model(data_spec, config)
    known = [n for n in config.labels if n in data.labels]
    if not known:
        raise SidecarError(f"data {data_spec} shares no label with {repo} (model labels {config.labels[:10]}, "
                           f"data labels {data.labels[:10]})")
    data = data.to_label_space(config.labels)
    if not bool(data.x.isfinite().all()):
        raise SidecarError(f"{repo}: data {data_spec} holds NaN or Inf values")
    names = resolve_layers(model, layers, classifier=config.classifier)
    assert config.preprocessing is not None  # (load_model's config always has it)
    with torch_threads(threads):
        result = compute_fisher(model, data.x, data.y, config.labels, names, estimator=estimator,
                                batch_size=batch_size, device=device, progress=progress)
    return {"result": result, "dataset": data.fingerprint, "samples": len(data),
            "preprocessing": config.preprocessing.canonical()}


def compute_and_commit(
    hub: Hub,
    repo: str,
    data_spec: str,
    *,
    layers: str = "head",
    estimator: str = DEFAULT_ESTIMATOR,
    batch_size: int = 64,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    message: str | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Compute the model FIM and per-class FIMs of ``repo``'s head on ``data_spec`` and commit them as a new
    revision (weights unchanged). Samples of classes the model does not know are ignored.

    ``executor="ray"`` runs the computation (:func:`fisher_of`) as one Ray task (``ray_address`` as for
    ``forget``; the task reads the model by path, so the workers must see the hub's folder) and publishes here
    when it succeeded; a failed task publishes nothing. ``workers``: torch threads for the computation (and
    the CPUs the Ray task reserves); by default this process's torch thread count, on either executor, so that
    both give the same bytes. The sidecar bytes are deterministic: the same model, data and options give the
    same files (no timestamp in them; the commit records the time)."""
    import torch


    if estimator not in ESTIMATORS:
        raise SidecarError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
    check_executor(executor, 1 if workers is None else workers)
    threads = workers or torch.get_num_threads()
    cid = hub.resolve(repo)
    if executor == "ray":
        parse_spec(data_spec)  # a bad spec is bad input here, before any Ray starts
        out = run_call(fisher_of, hub, repo, cid, data_spec, executor="ray", ray_address=ray_address,
                       num_cpus=threads, layers=layers, estimator=estimator, batch_size=batch_size,
                       device=device, threads=threads)
        if progress is not None:
            progress(out["samples"])
    else:
        out = fisher_of(hub, repo, cid, data_spec, layers=layers, estimator=estimator, batch_size=batch_size,
                        device=device, threads=threads, progress=progress)
    result = out["result"]
    files = hub.list_files(repo, cid)
    fim, fim_classes = sidecar_bytes(result, {
        "model_commit": cid,
        "weights_sha256": files[WEIGHTS_FILE],
        "dataset": out["dataset"],
        "data_spec": data_spec,
        SIDECAR_KEY: out["preprocessing"],
    })
    meta = read_meta(hub, repo, cid)
    meta.fim = fim_entry(result.layers, result.estimator)
    card = render_card(meta, card_body(hub.read_file(repo, CARD_FILE, cid).decode()), repo)
    new = hub.publish([RepoChange(
        repo, {FIM_FILE: fim, FIM_CLASSES_FILE: fim_classes, CARD_FILE: card.encode()},
        message or f"Fisher sidecars ({result.estimator}, {out['samples']} samples of {data_spec})",
        parent_commit=cid,
    )])[repo]
    return {"repo": repo, "revision": new, "model_commit": cid, "layers": result.layers,
            "estimator": result.estimator, "samples": out["samples"], "counts": result.counts,
            "executor": executor}
