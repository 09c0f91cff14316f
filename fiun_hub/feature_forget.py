"""The ``features`` scope of a class-wise forget (issue 16 part 2): take the forgotten classes out of the
penultimate features, not only out of the head, data-free at every affected model.

Why (docs/method.md section 11, ``benchmarks/features_forget_explore.py``): after FIUn's head rule the backbone is
unchanged, so a linear probe on ``forward_head(pre_logits=True)`` recovers the forgotten classes as well as on the
original model (98-99% for 4 digits classes, a retrained model 88-91%). Dampening ``layer4`` with the FIM rule, or
a boundary-shrink weight delta at the origin, leave the probe where it is; what moves it is removing the forgotten
classes' **mean directions** from the features.

The edit, per affected model ``v`` (its own prototypes, or the origin's for a class ``v`` has none of):

```
mu_c     = mean over v's training samples of class c of s (pooled)     # prototypes: rows x channels, a sidecar
mu_r     = count-weighted mean of the retained classes' mu_c
D        = [mu_c - mu_r for c in forgotten]                              # channels x n
Q        = top max(1, n-1) left singular vectors of D                  # the rank: section 11's ablation
s       <- mu_r + (I - Q Q^T)(s - mu_r)                                  # at every spatial position
```

``s`` is the last residual block's sum before its final ReLU (``layer4[-1]``: ``bn2(conv2(.)) + downsample(x)``);
the projection is linear per position, so it is folded **exactly** into the block's last conv and the downsample
conv (output channels mixed by ``(I - QQ^T) diag(gamma / sigma)``) and their BatchNorms (running mean 0, weight =
the running std, so the BN passes its input through plus the new bias). The architecture, the file's tensor names,
shapes and dtypes are unchanged; timm loads it as before. The new prototypes are exact too: pooling is linear, so
``mu_c <- mu_r + (I - QQ^T)(mu_c - mu_r)``.

Removing all ``n`` directions of several classes collapses them onto each other (probe recall 56-72% for 4 classes,
below a retrained model's 88-91%); ``n - 1`` keeps one axis between them and lands within 3 points of the
retrained models on the digits DAG (seed 0; on a second seed one model is 10 points below, and per-model rank rules
from prototypes did no better: docs/method.md section 11.4). One class has nothing to collapse onto: its one
direction goes. Supported: timm ResNet-style models whose last block has a downsample (``test_resnet``); a last
block with an identity shortcut (resnet18's ``layer4.1``) has no exact fold and raises
:class:`~fiun_hub.errors.UnlearnError`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .constants import PROTO_FILE
from .errors import UnlearnError

#: where the features are edited: the last residual block of the last stage (timm ResNet)
STAGE = "layer4"


def fold_point(model: nn.Module) -> dict[str, str]:
    """The parameter prefixes of the fold: ``{"block", "conv", "bn", "ds_conv", "ds_bn"}`` (e.g. ``layer4.0``,
    ``layer4.0.conv2``, ``layer4.0.bn2``, ``layer4.0.downsample.1``, ``layer4.0.downsample.2``)."""
    stage = getattr(model, STAGE, None)
    if not isinstance(stage, nn.Sequential) or len(stage) == 0:
        raise UnlearnError(f"{type(model).__name__} has no {STAGE} of residual blocks: the features scope "
                           "supports timm ResNet-style models only")
    i = len(stage) - 1
    blk = stage[i]
    last = next((k for k in ("3", "2") if isinstance(getattr(blk, f"bn{k}", None), nn.BatchNorm2d)
                 and isinstance(getattr(blk, f"conv{k}", None), nn.Conv2d)), None)
    if last is None:
        raise UnlearnError(f"{STAGE}.{i} has no final conv/BatchNorm pair (conv2/bn2 or conv3/bn3)")
    ds = getattr(blk, "downsample", None)
    if not isinstance(ds, nn.Sequential):
        raise UnlearnError(f"{STAGE}.{i} has an identity shortcut: the features scope has no exact fold there")
    convs = [n for n, m in ds.named_children() if isinstance(m, nn.Conv2d)]
    bns = [n for n, m in ds.named_children() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != 1 or len(bns) != 1 or list(ds._modules).index(bns[0]) != len(ds) - 1:
        raise UnlearnError(f"{STAGE}.{i}.downsample is not (pool,) conv, BatchNorm: no exact fold")
    p = f"{STAGE}.{i}"
    return {"block": p, "conv": f"{p}.conv{last}", "bn": f"{p}.bn{last}", "ds_conv": f"{p}.downsample.{convs[0]}",
            "ds_bn": f"{p}.downsample.{bns[0]}"}


def pooled_preactivation(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``s`` of :func:`fold_point`'s block (its sum before the final ReLU), averaged over positions: (N, C)
    float64, eval mode (the model's mode is restored)."""
    blk = model.get_submodule(fold_point(model)["block"])
    act = next((getattr(blk, a) for a in ("act3", "act2") if isinstance(getattr(blk, a, None), nn.Module)), None)
    if act is None:
        raise UnlearnError("the last block has no final activation (act2/act3)")
    got: list[torch.Tensor] = []
    hook = act.register_forward_pre_hook(lambda _m, inp: got.append(inp[0].detach().double().mean((2, 3))))
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        with torch.no_grad():
            for i in range(0, int(x.shape[0]), batch_size):
                model(x[i:i + batch_size].to(dev))
    finally:
        hook.remove()
        model.train(was)
    return torch.cat(got).cpu() if got else torch.zeros(0, 0, dtype=torch.float64)


def class_prototypes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, labels: Sequence[str],
                     batch_size: int = 256) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Per label with samples: the mean of :func:`pooled_preactivation` over them (float32, (C,)), and the count
    of every label. ``y`` indexes ``labels`` (head rows). Computed once, on the model's training data, as its FIM
    sidecars are."""
    s = pooled_preactivation(model, x, batch_size)
    y = torch.as_tensor(y).long()
    protos = {str(lab): s[y == i].mean(0).float() for i, lab in enumerate(labels) if bool((y == i).any())}
    return protos, {str(lab): int((y == i).sum()) for i, lab in enumerate(labels)}


def projection(protos: Mapping[str, torch.Tensor], counts: Mapping[str, int], forget: Sequence[str],
               rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, mu_r)``: the orthonormal directions to remove (C, k) and the retained mean (C,), float64, from
    prototypes alone. ``rank`` None: ``max(1, n - 1)`` for ``n`` forgotten classes. Raises when
    a forgotten class has no prototype or no retained class has one."""
    forget = list(dict.fromkeys(str(c) for c in forget))
    missing = [c for c in forget if c not in protos]
    if missing:
        raise UnlearnError(f"no prototype of {missing}: recompute the prototypes on data holding them")
    keep = [c for c in protos if c not in forget and counts.get(c, 0) > 0]
    if not keep or not forget:
        raise UnlearnError("the features scope needs prototypes of a forgotten and of a retained class")
    n = torch.tensor([float(counts[c]) for c in keep], dtype=torch.float64)
    mu_r = (torch.stack([protos[c].double() for c in keep]) * n[:, None]).sum(0) / n.sum()
    d = torch.stack([protos[c].double() - mu_r for c in forget], 1)
    k = max(1, len(forget) - 1) if rank is None else int(rank)
    if not 0 <= k <= len(forget):
        raise UnlearnError(f"rank {k} outside 0..{len(forget)}")
    u = torch.linalg.svd(d, full_matrices=False)[0]
    return u[:, :k].contiguous(), mu_r


def fold_projection(state: Mapping[str, torch.Tensor], point: Mapping[str, str], q: torch.Tensor,
                    center: torch.Tensor, eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` (a state dict, buffers included) that change when ``s <- c + (I - QQ^T)(s - c)`` is
    folded into the block of ``point`` (:func:`fold_point`); same dtypes and shapes. ``eps``: the BatchNorms' eps.
    ``q`` with no column: nothing changes (empty dict)."""
    q = torch.as_tensor(q, dtype=torch.float64)
    if q.ndim != 2 or q.shape[1] == 0:
        return {}
    c = torch.as_tensor(center, dtype=torch.float64)
    P = torch.eye(q.shape[0], dtype=torch.float64) - q @ q.T
    out: dict[str, torch.Tensor] = {}
    for conv, bn, add in ((point["conv"], point["bn"], (torch.eye(q.shape[0], dtype=torch.float64) - P) @ c),
                          (point["ds_conv"], point["ds_bn"], None)):
        keys = [f"{conv}.weight"] + [f"{bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        lack = [k for k in keys if k not in state]
        if lack:
            raise UnlearnError(f"the weights lack {lack}")
        w, g, b, mean, var = (state[k] for k in keys)
        if w.shape[0] != q.shape[0]:
            raise UnlearnError(f"{conv} has {w.shape[0]} output channels, the prototypes {q.shape[0]}")
        sd = torch.sqrt(var.double() + eps)
        a = g.double() / sd
        bias = P @ (b.double() - a * mean.double()) + (add if add is not None else 0.0)
        new_w = torch.einsum("ok,kihw->oihw", P * a[None, :], w.double())
        if not (torch.isfinite(new_w).all() and torch.isfinite(bias).all()):
            raise UnlearnError(f"the projection of {conv} is not finite")
        out[keys[0]] = new_w.to(w.dtype).flatten().clone().view(w.shape)  # standard strides (1x1 kernels)
        out[keys[1]] = sd.to(g.dtype)
        out[keys[2]] = bias.to(b.dtype)
        out[keys[3]] = torch.zeros_like(mean)
    return out


def project_prototypes(protos: Mapping[str, torch.Tensor], q: torch.Tensor, center: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """The prototypes of the edited model, exactly (pooling is linear): ``c + (I - QQ^T)(mu - c)``."""
    q = torch.as_tensor(q, dtype=torch.float64)
    c = torch.as_tensor(center, dtype=torch.float64)
    out = {}
    for lab, mu in protos.items():
        d = mu.double() - c
        out[lab] = (c + d - q @ (q.T @ d)).to(mu.dtype) if q.numel() else mu.clone()
    return out


def features_forget(model: nn.Module, protos: Mapping[str, torch.Tensor], counts: Mapping[str, int],
                    forget: Sequence[str], rank: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The ``features`` edit of one model from its prototypes (its own, or the origin's for classes it has none
    of): ``(changed tensors of its state dict, info)``. Only the forgotten labels with a prototype count; a model
    with none of them is unchanged."""
    here = [str(c) for c in forget if str(c) in protos]
    if not here:
        return {}, {"directions": 0}
    q, c = projection(protos, counts, here, rank)
    point = fold_point(model)
    eps = float(model.get_submodule(point["bn"]).eps)
    new = fold_projection(model.state_dict(), point, q, c, eps)
    return new, {"directions": int(q.shape[1]), "block": point["block"], "tensors": sorted(new)}


__all__ = ["STAGE", "fold_point", "pooled_preactivation", "class_prototypes", "projection", "fold_projection",
           "project_prototypes", "features_forget"]


# --------------------------------------------------------------------------------------------------- the sidecar
#: the prototype sidecar: one float32 (C,) tensor per label with samples, header: format, block, labels, counts and
#: the weights' sha256 it was computed on (bound like the FIM sidecars, ``lineage.weights_state``)
PROTO_FORMAT = "fiun-proto/1"


def encode_prototypes(protos: Mapping[str, torch.Tensor], counts: Mapping[str, int], labels: Sequence[str],
                      block: str, weights_sha256: str, extra: Mapping[str, str] | None = None) -> bytes:
    """Deterministic safetensors bytes of the prototype sidecar (:data:`PROTO_FILE`)."""
    import json

    from .sidecar_format import encode_safetensors

    meta = {**(extra or {}), "format": PROTO_FORMAT, "block": block, "labels": json.dumps(list(labels)),
            "counts": json.dumps({str(k): int(v) for k, v in counts.items()}), "weights_sha256": weights_sha256}
    return encode_safetensors({str(k): v.float().contiguous() for k, v in protos.items()}, meta)


def read_prototypes(data: bytes, where: str = "") -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, str]]:
    """Parse and check a prototype sidecar: ``(prototypes, counts, header metadata)``. Safetensors only; a wrong
    format, non-finite values, unequal lengths or labels outside the header raise :class:`UnlearnError`."""
    import json

    from .errors import FiunError
    from .safetensors_io import header_of_bytes, read_tensors

    pre = f"{where}: " if where else ""
    try:
        header, meta = header_of_bytes(bytes(data), where=where)
        tensors = read_tensors(bytes(data), header, [k for k in header if k != "__metadata__"])
        labels = json.loads(meta.get("labels", "null"))
        counts = json.loads(meta.get("counts", "null"))
    except (FiunError, ValueError, TypeError, RecursionError) as exc:
        raise UnlearnError(f"{pre}{PROTO_FILE} cannot be read: {exc}") from None
    if meta.get("format") != PROTO_FORMAT or not isinstance(labels, list) or not isinstance(counts, dict):
        raise UnlearnError(f"{pre}{PROTO_FILE} is not a {PROTO_FORMAT} sidecar")
    dims = {tuple(t.shape) for t in tensors.values()}
    if (set(tensors) - set(map(str, labels)) or len(dims) > 1 or any(len(d) != 1 for d in dims)
            or not all(bool(torch.isfinite(t).all()) for t in tensors.values())):
        raise UnlearnError(f"{pre}{PROTO_FILE}: prototypes must be finite vectors of one length, one per label")
    try:
        counts = {str(k): int(v) for k, v in counts.items()}
    except (TypeError, ValueError):
        raise UnlearnError(f"{pre}{PROTO_FILE}: bad counts") from None
    return {k: t.float() for k, t in tensors.items()}, counts, {str(k): str(v) for k, v in meta.items()}


__all__ += ["PROTO_FILE", "PROTO_FORMAT", "encode_prototypes", "read_prototypes"]
