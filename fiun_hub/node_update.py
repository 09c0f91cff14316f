"""One affected repo's update: the task an executor runs (:func:`unlearn_node` over a :class:`NodeTask`).

Below both :mod:`fiun_hub.unlearn` (which plans a forget, builds these tasks and publishes their results) and
:mod:`fiun_hub.executors` (which schedules them: in this process, a pool, Ray, CUDA batches), so neither imports
the other's caller. Only the unlearnable tensors change, in place in the weights file's bytes
(:func:`splice_update`); the result is ``(repo, new bytes or the path they were written to, stats)``
(:func:`emit_weights`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .dampening import class_forget_update, sample_forget_update
from .errors import UnlearnError
from .safetensors_io import header_of_bytes, read_tensors, splice_tensor


@dataclass
class NodeTask:
    """Everything one affected repo needs: its weights file, its own sidecars (head rows named by ``labels``)
    and its MFIM. Never the forget data, never another repo's new weights.

    ``out_path``: where to write the new weights file (a staging name in the hub's blob store, see
    :class:`fiun_hub.hub.staging.Staging`); None returns the bytes instead."""

    repo: str
    weights_path: str
    labels: list[str]
    model_fim: dict[str, torch.Tensor]
    class_fims: dict[str, dict[str, torch.Tensor]]
    counts: dict[str, int]
    mfim: dict[str, torch.Tensor]
    forget: list[str]  # forgotten class names (empty for a sample-wise forget)
    head_params: list[str]
    alpha: float
    lam: float
    out_path: str | None = None
    inert: list[str] = field(default_factory=list)  # labels earlier forgets removed (kept inert)
    # sample-wise: the forgotten samples' count per label name (the record's fingerprint); None: class-wise
    sample_counts: dict[str, int] | None = None
    # class-wise, --scope features: {"point", "q", "center", "eps"} (:mod:`fiun_hub.feature_forget`); None: head only
    features: dict[str, Any] | None = None


def read_into_bytearray(path: str | os.PathLike) -> bytearray:
    """A file's bytes, read straight into one mutable buffer (no intermediate ``bytes`` copy)."""
    with open(path, "rb", buffering=0) as fh:
        data = bytearray(os.fstat(fh.fileno()).st_size)
        got = 0
        with memoryview(data) as view:
            while got < len(data):
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
        if got < len(data):  # the file shrank while being read: what is there (the header check judges it)
            del data[got:]
        extra = fh.read()  # ... or grew
    return data + extra if extra else data


def emit_weights(task: Any, data: bytes | bytearray, stats: dict[str, Any]) -> tuple[str, bytes | str, dict[str, Any]]:
    """One repo's result: ``(repo, new weights, stats)`` with the file's sha256 in ``stats["weights_sha256"]``
    (computed where the work runs, so a pool or Ray hashes in parallel). With ``task.out_path`` the file is
    written there (the executor's result is then that path, a few bytes, and no process holds the weights of
    more than the repo it works on); else the bytes are returned."""
    stats = {**stats, "weights_sha256": hashlib.sha256(data).hexdigest()}
    out = getattr(task, "out_path", None)
    if out:
        with open(out, "wb") as fh:
            fh.write(data)
        return task.repo, str(out), stats
    return task.repo, bytes(data), stats


def unlearn_node(task: NodeTask) -> tuple[str, bytes | str, dict[str, Any]]:
    """Dampen one repo's unlearnable layers; returns (repo, new safetensors bytes, stats), or (repo, path, stats)
    when the task names an ``out_path`` (:func:`emit_weights`). ``stats``: changed and total parameters of the
    unlearnable layers, the new file's sha256.

    Only the unlearnable tensors change and they keep dtype and shape, so the new file is the old one with those
    tensors' byte ranges rewritten: same header, every other byte identical, no full deserialisation.
    """
    data = read_into_bytearray(task.weights_path)
    header, _ = header_of_bytes(data, where=task.repo)
    missing = [n for n in task.mfim if n not in header]
    if missing:
        raise UnlearnError(f"{task.repo}: weights lack the sidecar's layer(s) {missing}")
    for n in task.mfim:
        if header[n]["dtype"] not in ("F16", "BF16", "F32", "F64"):
            raise UnlearnError(f"{task.repo}: unlearnable tensor {n} is {header[n]['dtype']}, not floating point")
    params = read_tensors(data, header, task.mfim)
    if task.sample_counts is not None:
        new = sample_forget_update(params, task.labels, task.model_fim, task.class_fims, task.counts, task.mfim,
                                   task.sample_counts, task.head_params, alpha=task.alpha, lam=task.lam,
                                   inert=task.inert or ())
    else:
        new = class_forget_update(params, task.labels, task.model_fim, task.class_fims, task.counts, task.mfim,
                                  task.forget, task.head_params, alpha=task.alpha, lam=task.lam,
                                  inert=task.inert or ())
    feats = getattr(task, "features", None)
    if feats is not None:  # the features scope: the last block's fold tensors, from the weights file's bytes
        from .feature_forget import fold_projection

        names = [f"{feats['point'][k]}.{leaf}" for k in ("conv", "ds_conv") for leaf in ("weight",)] + \
            [f"{feats['point'][k]}.{leaf}" for k in ("bn", "ds_bn")
             for leaf in ("weight", "bias", "running_mean", "running_var")]
        lack = [n for n in names if n not in header]
        if lack:
            raise UnlearnError(f"{task.repo}: weights lack {lack} (the features scope's fold)")
        fold_in = read_tensors(data, header, names)
        folded = fold_projection(fold_in, feats["point"], feats["q"], feats["center"], feats["eps"])
        params = {**params, **{n: fold_in[n] for n in folded}}
        new = {**new, **folded}
    return emit_weights(task, data, splice_update(task.repo, data, header, params, new))


def splice_update(repo: str, data: bytearray, header: dict, old: dict, new: dict) -> dict[str, Any]:
    """Write a repo's updated unlearnable tensors ``new`` into its weights file's bytes ``data`` in place
    (:func:`~fiun_hub.safetensors_io.splice_tensor`; ``old``: the tensors as read), refusing non-finite values or
    a changed dtype or shape. Returns the stats of the update: changed and total parameters."""
    changed = total = 0
    for n, t in new.items():
        if not torch.isfinite(t).all():
            raise UnlearnError(f"{repo}: dampening produced non-finite values in {n}")
        if t.dtype != old[n].dtype or t.shape != old[n].shape:
            raise UnlearnError(f"{repo}: dampening changed the dtype or shape of {n}")
        changed += int((t != old[n]).sum())
        total += t.numel()
        splice_tensor(data, header, n, t)
    return {"changed": changed, "params": total}


__all__ = ["NodeTask", "unlearn_node", "splice_update", "emit_weights", "read_into_bytearray"]
