"""Small, deterministic training loops used to build real inheritance networks (scenarios, tests, benchmarks).

Two operations make every edge of an inheritance DAG:

- :func:`train_classifier`: train from scratch, fine-tune, or (with ``trainable``) train only a new head on a
  frozen backbone (transfer learning);
- :func:`average_state_dicts`: FedAvg-merge same-architecture models into one state dict.

Library code: no printing; progress goes to an optional callback.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import LabeledData
from ..errors import BadInput

ProgressFn = Callable[[int, float], None]


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    return torch.device(device)


def train_classifier(
    model: nn.Module,
    data: LabeledData,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    trainable: list[str] | None = None,
    weight_decay: float = 0.0,
    device=None,
    progress: ProgressFn | None = None,
) -> dict:
    """Train ``model`` in place on ``data`` (targets already in the model's head-row order).

    Adam with a cosine learning-rate decay to 0 over ``epochs``; cross-entropy loss; each epoch visits every
    sample once in an order drawn from a generator seeded with ``seed`` (the global RNG is not touched), so a
    run is deterministic given the model's initial weights, the data and ``seed``. A last batch of one sample
    is dropped (BatchNorm cannot normalise a single sample).

    ``trainable``: parameter names to train; every other parameter is frozen for the call and, so that a frozen
    backbone really stays frozen, BatchNorm layers with no trainable parameter keep their running statistics
    (they run in eval mode). ``requires_grad`` and the train/eval mode of every module are restored afterwards.

    Returns ``{"loss": mean loss of the last epoch, "first_loss": of the first epoch, "losses": per epoch,
    "steps": optimizer steps, "seconds": wall time, "trained": names trained}``.

    >>> import timm; from fiun_hub.data import load_data
    >>> m = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    >>> r = train_classifier(m, load_data("digits:train", input_size=(16, 16)), epochs=1, lr=1e-3)
    >>> r["steps"] > 0
    True
    """
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise BadInput(f"bad training settings: epochs={epochs}, lr={lr}, batch_size={batch_size}")
    n = len(data)
    if n < 2:
        raise BadInput(f"cannot train on {n} sample(s)")
    dev = _resolve_device(device)
    named = dict(model.named_parameters())
    if trainable is not None:
        unknown = [t for t in trainable if t not in named]
        if unknown:
            raise BadInput(f"trainable names {unknown} are not parameters of the model")
        train_set = set(trainable)
    else:
        train_set = {k for k, p in named.items() if p.requires_grad}
    saved_grad = {k: p.requires_grad for k, p in named.items()}
    saved_mode = {name: mod.training for name, mod in model.named_modules()}
    saved_device = next(model.parameters()).device
    t0 = time.perf_counter()
    losses: list[float] = []
    steps = 0
    try:
        for k, p in named.items():
            p.requires_grad_(k in train_set)
        model.to(dev)
        model.train()
        if trainable is not None:
            for mod in model.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    own = [p for p in mod.parameters(recurse=False)]
                    if not any(p.requires_grad for p in own):
                        mod.eval()
        params = [p for k, p in named.items() if k in train_set]
        if not params:
            raise BadInput("nothing to train: no trainable parameter")
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        steps_per_epoch = max(1, (n + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
        gen = torch.Generator().manual_seed(int(seed))
        x_all, y_all = data.x, data.y
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                if idx.numel() < 2:
                    continue
                xb, yb = x_all[idx].to(dev), y_all[idx].to(dev)
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                sched.step()
                steps += 1
                total += float(loss.detach()) * idx.numel()
                seen += idx.numel()
            losses.append(total / max(seen, 1))
            if progress is not None:
                progress(epoch, losses[-1])
    finally:
        for k, p in named.items():
            p.requires_grad_(saved_grad[k])
        for name, mod in model.named_modules():
            mod.train(saved_mode.get(name, mod.training))
        model.to(saved_device)
    return {
        "loss": losses[-1] if losses else float("nan"),
        "first_loss": losses[0] if losses else float("nan"),
        "losses": losses,
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "trained": sorted(train_set),
    }


def average_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """FedAvg: the weighted mean of same-architecture state dicts.

    Floating-point tensors are averaged (in float64, cast back to their dtype) with ``weights`` normalised to
    sum 1 (default: equal weights, e.g. sample counts can be passed); integer buffers such as BatchNorm's
    ``num_batches_tracked`` are taken from the first state dict. Keys and shapes must match exactly.

    >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([2.0, 4.0])}
    >>> average_state_dicts([a, b])["w"].tolist()
    [1.0, 3.0]
    """
    if not state_dicts:
        raise BadInput("average_state_dicts needs at least one state dict")
    if weights is None:
        weights = [1.0] * len(state_dicts)
    if len(weights) != len(state_dicts):
        raise BadInput(f"{len(weights)} weights for {len(state_dicts)} state dicts")
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
        raise BadInput(f"merge weights must be finite, non-negative and not all zero: {list(weights)}")
    w = w / w.sum()
    first = state_dicts[0]
    keys = list(first.keys())
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd.keys()) != set(keys):
            diff = sorted(set(sd.keys()) ^ set(keys))
            raise BadInput(f"state dict {i} has different keys than the first: {diff[:5]}")
        for k in keys:
            if tuple(sd[k].shape) != tuple(first[k].shape):
                raise BadInput(f"state dict {i}: {k} has shape {tuple(sd[k].shape)}, first has {tuple(first[k].shape)}")
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        t0 = first[k]
        if torch.is_floating_point(t0) or torch.is_complex(t0):
            acc = torch.zeros(t0.shape, dtype=torch.float64)
            for wi, sd in zip(w, state_dicts):
                acc += wi * sd[k].detach().to("cpu", torch.float64)
            out[k] = acc.to(t0.dtype)
        else:
            out[k] = t0.detach().clone()
    return out
