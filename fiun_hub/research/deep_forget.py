"""A prototype of a deeper, data-free class forget (issue 16, part 2): zero the penultimate feature channels that
the forgotten classes dominate, on top of FIUn's head update. NOT wired into ``forget``; nothing uses it by
default. It is measured in ``benchmarks/beyond_head.py`` (column ``deep``); see docs/method.md for the result
(it does not move the linear probe on the data sets measured).

Why these channels, from sidecars only. With the ``normalized`` estimator the head's per-sample FIM of weight
``(k, j)`` is ``e_k^2 h_j^2 / (||e||^2 (||h||^2 + 1))``; summed over the rows ``k`` it is
``h_j^2 / (||h||^2 + 1)``, the share of the sample's feature energy in channel ``j``. So the column sums of a
class FIM are a second-moment *class prototype* in feature space, which every model already has in its own
``fim-classes`` sidecar, and which the origin has for the forgotten classes. For an affected model ``v``:

```
u_j   = sum_k U(o)[k, j]          # the origin's unlearning FIM of the head weight, column sums
r_j   = sum_k F_r(v)[k, j]        # v's retain FIM (its own sidecars), column sums
ratio = u_j / r_j                 # how much more of its energy the forgotten data put in channel j
select j with ratio_j > alpha, the largest first, at most max_fraction of the channels
```

Each selected channel is removed from the features exactly: the affine BatchNorm that ends each path summing
into that channel of the last stage's output (the block's last BN and its downsample BN; through an identity
shortcut, the previous block's as well) gets weight and bias 0, so the channel is ``relu(0) = 0`` for every
input, and the head's column for it is then unused. Columns align across models that share the backbone shape
(a fine-tune or transfer child), so the origin's ``u`` applies to them without label alignment.
Supported: timm ResNet-style models (``layer4`` of BasicBlock/Bottleneck blocks); others raise UnlearnError.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import UnlearnError

DEFAULT_ALPHA = 2.0
DEFAULT_MAX_FRACTION = 0.25


def channel_ratio(origin_u_weight: torch.Tensor, retain_weight: torch.Tensor) -> torch.Tensor:
    """``ratio_j = sum_k U[k, j] / sum_k F_r[k, j]`` (float64); a channel with ``r_j = 0 < u_j`` is +Inf, one with
    ``u_j = 0`` is 0. Both are head weight FIMs (rows: labels, columns: feature channels)."""
    u = torch.as_tensor(origin_u_weight).double()
    r = torch.as_tensor(retain_weight).double()
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
        raise UnlearnError(f"head FIMs of shapes {tuple(u.shape)} and {tuple(r.shape)} do not share channels")
    u = torch.nan_to_num(u, nan=0.0).clamp_min(0).sum(0)
    r = torch.nan_to_num(r, nan=0.0).clamp_min(0).sum(0)
    out = torch.where(r > 0, u / r.clamp_min(1e-300), torch.where(u > 0, torch.inf, 0.0))
    return out


def select_channels(ratio: torch.Tensor, *, alpha: float = DEFAULT_ALPHA,
                    max_fraction: float = DEFAULT_MAX_FRACTION) -> list[int]:
    """Channels with ``ratio > alpha``, largest ratio first, at most ``floor(max_fraction * D)`` of them.

    >>> select_channels(torch.tensor([0.5, 3.0, 9.0, 2.5]), alpha=2.0, max_fraction=0.5)
    [2, 1]
    """
    if not alpha > 0 or not 0 <= max_fraction <= 1:
        raise UnlearnError(f"bad channel selection settings: alpha={alpha}, max_fraction={max_fraction}")
    ratio = torch.as_tensor(ratio).double()
    cap = int(max_fraction * ratio.numel())
    order = torch.argsort(ratio, descending=True, stable=True)
    return [int(j) for j in order[:cap] if float(ratio[j]) > alpha]


def _last_bn(block: nn.Module) -> str:
    for name in ("bn3", "bn2"):
        if isinstance(getattr(block, name, None), nn.BatchNorm2d):
            return name
    raise UnlearnError(f"{type(block).__name__} has no final BatchNorm (bn2/bn3): not a ResNet block")


def feature_channel_params(model: nn.Module) -> list[str]:
    """Prefixes (``layer4.0.bn2``, ``layer4.0.downsample.2``, ...) of the BatchNorms whose weight and bias set to 0
    make a channel of the penultimate features exactly 0: the last block's final BN and, walking back through
    identity shortcuts, every earlier block's, until a block with a downsample BN (included) or the start."""
    stage = getattr(model, "layer4", None)
    if not isinstance(stage, nn.Sequential) or len(stage) == 0:
        raise UnlearnError(f"{type(model).__name__} has no layer4 of residual blocks: channel zeroing supports "
                           "timm ResNet-style models only")
    out: list[str] = []
    for i in range(len(stage) - 1, -1, -1):
        block = stage[i]
        out.append(f"layer4.{i}.{_last_bn(block)}")
        ds = getattr(block, "downsample", None)
        if ds is not None:
            bns = [n for n, m in ds.named_children() if isinstance(m, nn.BatchNorm2d)]
            if not bns:
                raise UnlearnError(f"layer4.{i}.downsample has no BatchNorm: its channels cannot be zeroed")
            out.append(f"layer4.{i}.downsample.{bns[-1]}")
            return out
    raise UnlearnError("layer4 has no downsample: its input channels cannot be zeroed from within layer4")


def zero_feature_channels(model: nn.Module, state: Mapping[str, torch.Tensor],
                          channels: Sequence[int]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` (``model``'s architecture) with ``channels`` of the penultimate features made exactly 0
    (:func:`feature_channel_params`). Untouched tensors are the input's own (not copied)."""
    out = dict(state)
    ch = torch.as_tensor(list(channels), dtype=torch.long)
    if ch.numel() == 0:
        return out
    for prefix in feature_channel_params(model):
        for leaf in ("weight", "bias"):
            key = f"{prefix}.{leaf}"
            if key not in out:
                raise UnlearnError(f"state has no {key}")
            t = out[key].clone()
            if int(ch.max()) >= t.shape[0] or int(ch.min()) < 0:
                raise UnlearnError(f"channel out of range for {key} ({t.shape[0]} channels)")
            t[ch] = 0
            out[key] = t
    return out


def deep_class_forget(hub, origin: str, revisions: Mapping[str, str], classes: Sequence[str],
                      head_states: Mapping[str, Mapping[str, torch.Tensor]], *, alpha: float = DEFAULT_ALPHA,
                      max_fraction: float = DEFAULT_MAX_FRACTION) -> tuple[dict[str, dict], dict[str, dict]]:
    """For every repo of ``revisions`` (repo -> the revision its sidecars and architecture are read at, i.e. before
    the forget): select channels from the origin's unlearning FIM and the repo's own retain FIM (sidecars only, no
    data) and zero them in ``head_states[repo]`` (e.g. the weights after FIUn's head update). A repo with none of
    ``classes`` is returned unchanged. Returns ``(states, info)``; info lists the channels per repo."""
    from ..dampening import retain_fim, unlearning_fim
    from ..models import load_model
    from ..fisher import resolve_layers
    from ..sidecars import load_sidecars

    osc = load_sidecars(hub, origin, revisions[origin])
    model_o, _, _ = load_model(hub, origin, revisions[origin])
    w_o = next(n for n in resolve_layers(model_o, "head") if n.endswith("weight"))
    u = unlearning_fim(osc.class_fims, osc.counts, [c for c in classes if osc.counts.get(c, 0) > 0])[w_o]
    states: dict[str, dict] = {}
    info: dict[str, dict] = {}
    for repo, rev in revisions.items():
        model, config, _ = load_model(hub, repo, rev)
        here = [c for c in classes if c in config.labels]
        if not here:
            states[repo] = dict(head_states[repo])
            info[repo] = {"channels": [], "reason": "none of the classes"}
            continue
        sc = osc if repo == origin else load_sidecars(hub, repo, rev)
        w = next(n for n in resolve_layers(model, "head") if n.endswith("weight"))
        fr = retain_fim(sc.model_fim, sc.class_fims, sc.counts, here)[w]
        chans = select_channels(channel_ratio(u, fr), alpha=alpha, max_fraction=max_fraction)
        states[repo] = zero_feature_channels(model, head_states[repo], chans)
        info[repo] = {"channels": chans, "of": int(fr.shape[1])}
    return states, info


__all__ = ["channel_ratio", "select_channels", "feature_channel_params", "zero_feature_channels",
           "deep_class_forget", "DEFAULT_ALPHA", "DEFAULT_MAX_FRACTION"]
