"""Diagonal Fisher information (FIM) of a model's unlearnable layers, and the sidecars that store it.

DESIGN.md sections 3 and 5. Two estimators:

- ``per-sample``: the exact empirical Fisher ``F = mean_i (d loss_i / d theta)^2``. When the layers are
  exactly the parameters of the ``nn.Linear`` whose output is the model's logits (the usual case: the head),
  it is computed in closed form from one forward pass and no backward pass: with ``h`` the head input and
  ``e = softmax(logits) - onehot(y)``, ``grad_W = e outer h`` and ``grad_b = e``, so the squared gradients
  are ``e^2 outer h^2``. Any other layers go through ``torch.func`` (``vmap(grad(...))`` in chunks), or a
  plain per-sample autograd loop where ``vmap`` fails.
- ``normalized`` (fiun-hub's default for sidecars, ``DEFAULT_ESTIMATOR``): the per-sample estimator with each sample's squared gradient divided by its
  squared norm over the covered layers, ``F = mean_i g_i^2 / ||g_i||^2``, so every sample carries unit
  importance whatever the model's confidence (the plain empirical Fisher vanishes on confidently fit
  samples, which puts different models' FIMs on scales decades apart; docs/method.md). For the head, the
  closed form uses ``||g||^2 = ||e||^2 (||h||^2 + 1)`` and forms ``e_y = -sum_{k != y} p_k`` so that a
  confident sample keeps its direction instead of rounding to zero.
- ``batch``: the estimator of the FIUn/SSD code, ``mean over batches of (grad of the batch-mean loss)^2``,
  batches in data order, unshuffled, the last partial batch counting as one batch; per-class FIMs come from
  batches drawn within each class (in data order). It depends on the batch size and on the data order, and
  its model FIM is *not* the count-weighted mean of its class FIMs.

The model is always evaluated in eval mode (BatchNorm running statistics); loss is cross-entropy with the
true labels. Per-class FIMs are means over that class's samples (or batches), so for ``per-sample`` the
and ``normalized`` the model FIM equals ``sum_c n_c F_c / sum_c n_c``, which is what :func:`strip_classes` relies on.

The sidecars that store it (format, reading, validation, stripping classes) are in :mod:`fiun_hub.sidecar_format`;
their names are re-exported here.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import BadInput, SidecarError
from .sidecar_format import (ESTIMATORS, FORMAT, RESERVED_KEYS, Sidecars, encode_safetensors, encode_sidecars,
                             read_sidecars, strip_classes)

#: what fiun-hub writes into sidecars unless told otherwise (compute_fisher itself defaults to the textbook
#: per-sample estimator)
DEFAULT_ESTIMATOR = "normalized"
#: accumulate in float64 while the accumulators fit in this many bytes, else in float32
_FLOAT64_BUDGET = 1 << 30
#: the torch.func path holds chunk x (selected parameters) per-sample gradients; keep them under this
_PER_SAMPLE_GRAD_BUDGET = 256 << 20
#: closed form: sum all classes in one matmul while chunk x classes^2 x head inputs stays under this
_ONEHOT_FLOPS = 1 << 26


# --------------------------------------------------------------------------------------------------- results


@dataclass
class FisherResult:
    """What :func:`compute_fisher` returns; every tensor float32 on CPU, shaped like its parameter."""

    model_fim: dict[str, torch.Tensor]  # param -> mean over all samples (per-sample) / all batches (batch)
    class_fims: dict[str, dict[str, torch.Tensor]]  # label -> {param -> FIM over that class}; 0-sample classes omitted
    counts: dict[str, int]  # label -> number of samples of that class (every label, 0 included)
    labels: list[str]  # the model's label names in head-row order
    layers: list[str]  # param names covered
    estimator: str  # "normalized" | "per-sample" | "batch"
    batch_size: int | None  # batch estimator's batch size (None otherwise)


# --------------------------------------------------------------------------------------------------- layers


def _classifier_names(model: nn.Module, classifier: str | Sequence[str] | None) -> list[str]:
    if classifier is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if classifier is None and hasattr(model, "get_classifier"):
        try:
            clf = model.get_classifier()
        except Exception:  # noqa: BLE001 - any failure just means "no answer from the model"
            clf = None
        if isinstance(clf, nn.Module):
            for name, mod in model.named_modules():
                if mod is clf and name:
                    classifier = name
                    break
    if classifier is None:
        raise SidecarError(
            f"cannot tell the classifier of {type(model).__name__}: it has no pretrained_cfg['classifier']; "
            "name it (classifier=...) or give layer globs"
        )
    if isinstance(classifier, str):
        names = [c.strip() for c in classifier.split(",") if c.strip()]
    else:
        names = [str(c) for c in classifier]
    if not names:
        raise SidecarError(f"empty classifier name for {type(model).__name__}")
    return names


def resolve_layers(model: nn.Module, spec: str = "head", classifier: str | None = None) -> list[str]:
    """Parameter names of the unlearnable layers, in the model's parameter order.

    ``"head"``: the parameters of the classifier module (``classifier``, default
    ``model.pretrained_cfg['classifier']``), e.g. ``["fc.weight", "fc.bias"]``; ``"all"``: every trainable
    parameter; anything else: comma-separated ``fnmatch`` globs over parameter names (case-sensitive). Every
    glob must match something. Raises :class:`SidecarError` when nothing matches.
    """
    all_names = [n for n, _ in model.named_parameters()]
    spec = (spec if spec is not None else "head").strip()
    if spec == "head":
        out: list[str] = []
        for mod_name in _classifier_names(model, classifier):
            try:
                sub = model.get_submodule(mod_name)
            except AttributeError:
                raise SidecarError(f"classifier {mod_name!r} is not a module of {type(model).__name__}") from None
            out.extend(f"{mod_name}.{n}" for n, _ in sub.named_parameters())
        if not out:
            raise SidecarError(f"classifier of {type(model).__name__} has no parameters")
        order = {n: i for i, n in enumerate(all_names)}
        return sorted(dict.fromkeys(out), key=lambda n: order.get(n, len(order)))
    if spec == "all":
        out = [n for n, p in model.named_parameters() if p.requires_grad]
        if not out:
            raise SidecarError(f"{type(model).__name__} has no trainable parameters")
        return out
    globs = [g.strip() for g in spec.split(",") if g.strip()]
    if not globs:
        raise SidecarError(f"empty layer spec {spec!r}; use head, all or comma-separated globs")
    dead = [g for g in globs if not any(fnmatchcase(n, g) for n in all_names)]
    if dead:
        sample = ", ".join(all_names[:3] + (["..."] if len(all_names) > 3 else []))
        raise SidecarError(f"layer glob(s) {dead} match no parameter of {type(model).__name__} (names look like: {sample})")
    return [n for n in all_names if any(fnmatchcase(n, g) for g in globs)]


# --------------------------------------------------------------------------------------------------- compute


class _NotHead(Exception):
    """The Linear's output turned out not to be the model's logits: use the generic path."""


def _head_linear(model: nn.Module, layers: Sequence[str]) -> tuple[nn.Linear, str, str | None] | None:
    """The nn.Linear whose direct parameters are exactly ``layers``, with its weight and bias names."""
    want = set(layers)
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        own = {prefix + n for n, _ in mod.named_parameters(recurse=False)}
        if own == want:
            return mod, prefix + "weight", (prefix + "bias") if mod.bias is not None else None
    return None


def _as_logits(out, k: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"model output must be logits shaped (N, classes), got {shape}")
    if out.shape[1] != k:
        raise BadInput(f"model has {out.shape[1]} output rows but {k} labels were given")
    return out


class _Acc:
    """Per-class and model accumulators for the selected parameters."""

    def __init__(self, shapes: dict[str, torch.Size], k: int, device: torch.device, dtype: torch.dtype, batch: bool):
        self.dtype = dtype
        self.cls = {n: torch.zeros((k, *s), dtype=dtype, device=device) for n, s in shapes.items()}
        self.cls_n = torch.zeros(k, dtype=torch.float64)  # samples (per-sample) or batches (batch) per class
        self.model = {n: torch.zeros(s, dtype=dtype, device=device) for n, s in shapes.items()} if batch else None
        self.model_n = 0


def _acc_dtype(shapes: dict[str, torch.Size], k: int) -> torch.dtype:
    numel = sum(math.prod(s) for s in shapes.values())
    return torch.float64 if numel * (k + 1) * 8 <= _FLOAT64_BUDGET else torch.float32


def compute_fisher(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    labels: list[str],
    layers: list[str],
    *,
    estimator: str = "per-sample",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> FisherResult:
    """Diagonal FIM of ``layers`` over ``(x, y)``; see the module docstring for the estimators.

    ``x``: (N, C, H, W) float; ``y``: (N,) integers indexing the head rows (= ``labels``). ``batch_size``
    is the batch estimator's batch size, and the forward chunk size of the per-sample estimator (which
    does not depend on it). The model is run in eval mode on ``device`` (default: cuda if available, else
    cpu); its modules' train/eval modes, its parameters' ``requires_grad`` and its device are restored
    afterwards. ``progress(n)`` gets the cumulative number of samples done (0 < n <= N) after each chunk; the
    batch estimator on non-head layers makes two passes (mixed batches, then per-class batches) and reports
    half the sum of both, so ``n`` still ends at N. Returned tensors are float32 on CPU.
    """
    if estimator not in ESTIMATORS:
        raise BadInput(f"unknown FIM estimator {estimator!r}; use one of {list(ESTIMATORS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInput(f"batch_size must be a positive integer, got {batch_size!r}")
    labels = [str(v) for v in labels]
    if len(set(labels)) != len(labels):
        raise BadInput(f"duplicate label names in {labels}")
    k = len(labels)
    if k == 0:
        raise BadInput("no labels given")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise BadInput(f"x must be (N, ...) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    n_total = int(y.shape[0])
    if n_total == 0:
        raise BadInput("no samples to compute the FIM on")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise BadInput(f"y must hold integer class indices, got {y.dtype}")
    y = y.long()
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise BadInput(f"y holds class indices outside [0, {k}) ({k} labels)")

    params = dict(model.named_parameters())
    layers = list(dict.fromkeys(str(n) for n in layers))
    if not layers:
        raise BadInput("no layers to compute the FIM of")
    unknown = [n for n in layers if n not in params]
    if unknown:
        raise BadInput(f"{unknown} are not parameters of {type(model).__name__}")

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = next(iter(params.values()))
    orig_dev, pdtype = first.device, first.dtype
    if not pdtype.is_floating_point:
        pdtype = torch.float32
    modes = {m: m.training for m in model.modules()}
    req = {n: p.requires_grad for n, p in params.items()}
    moved = orig_dev != dev
    shapes = {n: params[n].shape for n in layers}
    acc_dtype = _acc_dtype(shapes, k)
    batch = estimator == "batch"
    normalized = estimator == "normalized"
    counts = torch.bincount(y, minlength=k)
    try:
        model.eval()
        if moved:
            model.to(dev)
        acc = None
        head = _head_linear(model, layers)
        if head is not None:
            try:
                acc = _closed_form(model, head, x, y, k, batch, batch_size, dev, pdtype, acc_dtype, progress,
                                   normalized)
            except _NotHead:
                acc = None
        if acc is None:
            with torch.no_grad():
                _as_logits(model(x[:1].to(dev, pdtype)), k)
            if batch:
                acc = _batch_autograd(model, layers, x, y, k, batch_size, dev, pdtype, acc_dtype, progress)
            else:
                acc = _per_sample_generic(model, layers, x, y, k, batch_size, dev, pdtype, acc_dtype, progress,
                                          normalized)
    finally:
        if moved:
            model.to(orig_dev)
        for m, mode in modes.items():
            m.training = mode
        for n, p in params.items():
            p.requires_grad_(req[n])

    model_fim: dict[str, torch.Tensor] = {}
    class_fims: dict[str, dict[str, torch.Tensor]] = {}
    present = [c for c in range(k) if acc.cls_n[c] > 0]
    for n in layers:
        cls = acc.cls[n].to("cpu", torch.float64)
        if batch:
            model_fim[n] = (acc.model[n].to("cpu", torch.float64) / acc.model_n).float()
        else:
            model_fim[n] = (cls.sum(0) / n_total).float()
        for c in present:
            class_fims.setdefault(labels[c], {})[n] = (cls[c] / acc.cls_n[c]).float()
    return FisherResult(
        model_fim=model_fim,
        class_fims=class_fims,
        counts={labels[c]: int(counts[c]) for c in range(k)},
        labels=labels,
        layers=layers,
        estimator=estimator,
        batch_size=batch_size if batch else None,
    )


def normalized_errors(logits: torch.Tensor, h: torch.Tensor, y: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """The ``normalized`` estimator's per-sample term for a linear head, written once: the output error
    ``e = softmax(z) - onehot(y)`` of each sample, scaled by ``1 / ||g||`` so that ``e^2 outer h^2`` (and ``e^2`` for
    the bias) is that sample's squared gradient over its squared norm over the head, ``g_W = e h^T``, ``g_b = e``,
    ``||g||^2 = ||e||^2 (||h||^2 + 1)``. ``e_y`` is formed as ``-sum_{k != y} p_k``, exact where ``1 - p_y`` would
    round to 0, so a confidently fit sample keeps its direction; a sample whose gradient is exactly 0 gets 0.
    ``logits``: (N, K), ``h``: (N, D), both in the dtype to compute in; ``y``: (N,) row indices."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    e = torch.softmax(logits, dim=1)
    others = e.clone()
    others[rows, y] = 0.0
    e[rows, y] = -others.sum(1)
    gn2 = (e * e).sum(1) * ((h * h).sum(1) + (1.0 if bias else 0.0))
    scale = torch.where(gn2 > 0, gn2, torch.ones_like(gn2)).rsqrt() * (gn2 > 0)
    return e * scale[:, None]


def normalized_head_fisher(
    features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, bias: bool = True
) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]], dict[int, int]]:
    """The ``normalized`` per-sample Fisher of a linear head in closed form, from given head inputs and logits
    (pure; the caller runs the model): each sample's :func:`normalized_errors` squared, outer its squared
    features, averaged over all samples (model FIM) and over each class's (class FIMs). Every sample carries
    unit importance: the FIM sums to 1 over the head whatever the model's confidence, and a sample's own row gets
    at least half of it. :func:`compute_fisher` with ``estimator="normalized"`` is this, accumulated in chunks.

    ``features``: (N, D) head inputs; ``logits``: (N, K); ``y``: (N,) row indices. Returns
    ``(model_fim, class_fims, counts)`` keyed ``"weight"`` / ``"bias"`` (rename to the parameter names) and
    by class row; float32.
    """
    h = features.detach().to(torch.float64)
    z = logits.detach().to(torch.float64)
    y = y.detach().long()
    n, k = z.shape
    e = normalized_errors(z, h, y, bias)
    e2 = e * e
    h2 = h * h
    model_fim = {"weight": (e2.T @ h2 / max(n, 1)).float()}
    if bias:
        model_fim["bias"] = (e2.sum(0) / max(n, 1)).float()
    class_fims: dict[int, dict[str, torch.Tensor]] = {}
    counts: dict[int, int] = {}
    for c in range(k):
        mask = y == c
        counts[c] = int(mask.sum())
        if counts[c] == 0:
            continue
        cf = {"weight": (e2[mask].T @ h2[mask] / counts[c]).float()}
        if bias:
            cf["bias"] = (e2[mask].sum(0) / counts[c]).float()
        class_fims[c] = cf
    return model_fim, class_fims, counts


def _closed_form(model, head, x, y, k, batch, bs, dev, pdtype, acc_dtype, progress, normalized=False) -> _Acc:
    """Head-only FIM from one forward pass: squared gradients are (p - e)^2 outer h^2 (per-sample), or
    ((p - e)^T h / B)^2 per batch (batch). Raises _NotHead if the Linear's output is not the logits."""
    lin, wname, bname = head
    shapes = {wname: lin.weight.shape}
    if bname:
        shapes[bname] = lin.bias.shape
    acc = _Acc(shapes, k, dev, acc_dtype, batch)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = lin.register_forward_hook(lambda mod, inp, out: seen.append((inp[0] if inp else None, out)))
    pending: dict[int, list[list[torch.Tensor]]] = {}  # batch: class -> [[e...], [h...]] not yet a full batch
    pending_n: dict[int, int] = {}

    def add_batch(target_w, target_b, e, h):
        gw = e.T @ h / e.shape[0]
        target_w += gw * gw
        if bname:
            gb = e.mean(0)
            target_b += gb * gb

    def flush(c: int, final: bool):
        if pending_n.get(c, 0) < bs and not (final and pending_n.get(c, 0)):
            return
        es, hs = pending[c]
        e, h = torch.cat(es), torch.cat(hs)
        while e.shape[0] >= bs or (final and e.shape[0] > 0):
            add_batch(acc.cls[wname][c], acc.cls[bname][c] if bname else None, e[:bs], h[:bs])
            acc.cls_n[c] += 1
            e, h = e[bs:], h[bs:]
        pending[c] = [[e], [h]]
        pending_n[c] = int(e.shape[0])

    done = 0
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], bs):
                xb = x[start:start + bs].to(dev, pdtype)
                yb = y[start:start + bs].to(dev)
                seen.clear()
                out = model(xb)
                if len(seen) != 1:
                    raise _NotHead
                h, o = seen[0]
                if not isinstance(out, torch.Tensor) or not isinstance(h, torch.Tensor) or h.ndim != 2:
                    raise _NotHead
                if o is not out and not isinstance(o, torch.Tensor):
                    raise _NotHead
                if o is not out and (o.shape != out.shape or not torch.equal(o, out)):
                    raise _NotHead
                _as_logits(out, k)
                rows = torch.arange(out.shape[0], device=out.device)
                hh = h.to(acc_dtype)
                if normalized:
                    e = normalized_errors(out.to(acc_dtype), hh, yb, bias=bool(bname))
                else:
                    e = torch.softmax(out.to(acc_dtype), dim=1)
                    e[rows, yb] -= 1.0
                onehot_ok = not batch and e.shape[0] * k * k * hh.shape[1] <= _ONEHOT_FLOPS
                classes = [] if onehot_ok else yb.unique().tolist()
                if onehot_ok:
                    # all classes at once: rows (class c, output j) of onehot_c * e^2_j, times h^2
                    e2, h2 = e * e, hh * hh
                    onehot = torch.zeros(e.shape[0], k, dtype=acc_dtype, device=e.device)
                    onehot[torch.arange(e.shape[0], device=e.device), yb] = 1.0
                    z = (onehot[:, :, None] * e2[:, None, :]).reshape(e.shape[0], k * k)
                    acc.cls[wname] += (z.T @ h2).reshape(k, k, -1)
                    if bname:
                        acc.cls[bname] += onehot.T @ e2
                    acc.cls_n += torch.bincount(yb.cpu(), minlength=k).double()
                elif not batch:
                    e2, h2 = e * e, hh * hh
                    for c in classes:
                        m = yb == c
                        e2c = e2[m]
                        acc.cls[wname][c] += e2c.T @ h2[m]
                        if bname:
                            acc.cls[bname][c] += e2c.sum(0)
                        acc.cls_n[c] += int(m.sum())
                else:
                    add_batch(acc.model[wname], acc.model[bname] if bname else None, e, hh)
                    acc.model_n += 1
                    for c in classes:
                        m = yb == c
                        lst = pending.setdefault(c, [[], []])
                        lst[0].append(e[m])
                        lst[1].append(hh[m])
                        pending_n[c] = pending_n.get(c, 0) + int(m.sum())
                        flush(c, final=False)
                done += xb.shape[0]
                if progress is not None:
                    progress(done)
            for c in list(pending):
                flush(c, final=True)
    finally:
        handle.remove()
    return acc


def _per_sample_generic(model, layers, x, y, k, bs, dev, pdtype, acc_dtype, progress, normalized=False) -> _Acc:
    """Exact per-sample squared gradients via torch.func (vmap over grad), chunked; per-sample autograd
    loop when vmap cannot handle the model."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    sel = {n: params[n].detach() for n in layers}
    rest = {n: p.detach() for n, p in params.items() if n not in sel}
    shapes = {n: params[n].shape for n in layers}
    acc = _Acc(shapes, k, dev, acc_dtype, batch=False)
    numel = sum(math.prod(s) for s in shapes.values())
    chunk = max(1, min(bs, _PER_SAMPLE_GRAD_BUDGET // max(1, numel * 4 * 2)))

    def loss_fn(sp, xi, yi):
        out = torch.func.functional_call(model, ({**rest, **sp}, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    use_vmap = True
    per_grad = None
    loop_ready = False
    done = 0
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk].to(dev, pdtype)
        yb = y[start:start + chunk].to(dev)
        grads = None
        if use_vmap:
            try:
                if per_grad is None:
                    per_grad = torch.func.vmap(torch.func.grad(loss_fn), in_dims=(None, 0, 0))
                with torch.enable_grad(), warnings.catch_warnings():
                    # ops without a batching rule (e.g. CPU flash attention) run correctly, only slower
                    warnings.filterwarnings("ignore", message=".*performance drop.*")
                    grads = per_grad(sel, xb, yb)
            except Exception:  # noqa: BLE001 - vmap has no batching rule for some op: loop instead
                use_vmap, grads = False, None
        if grads is None:
            if not loop_ready:
                for n, p in params.items():
                    p.requires_grad_(n in sel)
                loop_ready = True
            grads = _loop_grads(model, [params[n] for n in layers], layers, xb, yb)
        sq = {n: grads[n].to(acc_dtype) ** 2 for n in layers}
        if normalized:  # each sample's squared gradient over its squared norm across the covered layers
            gn2 = sum(t.reshape(t.shape[0], -1).sum(1) for t in sq.values())
            inv = torch.where(gn2 > 0, 1.0 / torch.where(gn2 > 0, gn2, torch.ones_like(gn2)), torch.zeros_like(gn2))
            sq = {n: t * inv.reshape(-1, *([1] * (t.ndim - 1))) for n, t in sq.items()}
        for n in layers:
            acc.cls[n].index_add_(0, yb, sq[n])
        acc.cls_n += torch.bincount(yb.cpu(), minlength=k).double()
        done += xb.shape[0]
        if progress is not None:
            progress(done)
    return acc


def _loop_grads(model, plist, names, xb, yb) -> dict[str, torch.Tensor]:
    out = {n: torch.empty((xb.shape[0], *p.shape), dtype=p.dtype, device=p.device) for n, p in zip(names, plist)}
    with torch.enable_grad():
        for i in range(xb.shape[0]):
            loss = F.cross_entropy(model(xb[i:i + 1]), yb[i:i + 1])
            gs = torch.autograd.grad(loss, plist, allow_unused=True)
            for n, p, g in zip(names, plist, gs):
                out[n][i] = 0 if g is None else g
    return out


def _batch_autograd(model, layers, x, y, k, bs, dev, pdtype, acc_dtype, progress) -> _Acc:
    """The paper's estimator: mean over batches of (grad of the batch-mean loss)^2; one pass over the data
    in order, then one pass over each class's samples in order."""
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in layers)
    plist = [params[n] for n in layers]
    acc = _Acc({n: params[n].shape for n in layers}, k, dev, acc_dtype, batch=True)
    n_total = x.shape[0]
    done = [0, 0]

    def step(idx_or_slice, targets: dict[str, torch.Tensor]):
        xb = x[idx_or_slice].to(dev, pdtype)
        yb = y[idx_or_slice].to(dev)
        with torch.enable_grad():
            loss = F.cross_entropy(model(xb), yb)
            gs = torch.autograd.grad(loss, plist, allow_unused=True)
        for n, g in zip(layers, gs):
            if g is not None:
                g = g.to(acc_dtype)
                targets[n] += g * g
        return xb.shape[0]

    def report():
        if progress is not None:
            progress((done[0] + done[1]) // 2)

    for start in range(0, n_total, bs):
        done[0] += step(slice(start, start + bs), acc.model)
        acc.model_n += 1
        report()
    for c in range(k):
        idx = (y == c).nonzero().squeeze(1)
        for start in range(0, idx.shape[0], bs):
            done[1] += step(idx[start:start + bs], {n: acc.cls[n][c] for n in layers})
            acc.cls_n[c] += 1
            report()
    return acc


# --------------------------------------------------------------------------------------------------- sidecars


def sidecar_bytes(result: FisherResult, metadata: dict[str, str]) -> tuple[bytes, bytes]:
    """``(fim.safetensors, fim-classes.safetensors)`` bytes for ``result``; both headers carry ``format``,
    ``estimator``, ``batch_size``, ``layers``, ``labels``, ``counts`` plus ``metadata`` (strings; callers add
    ``model_commit``, ``dataset``, ``data_spec``). Refuses non-finite or negative values."""
    return encode_sidecars(result.model_fim, result.class_fims, result.counts, result.labels, result.layers,
                           result.estimator, result.batch_size, metadata)


__all__ = [
    "FORMAT", "ESTIMATORS", "RESERVED_KEYS", "FisherResult", "Sidecars", "resolve_layers", "compute_fisher",
    "sidecar_bytes", "read_sidecars", "strip_classes", "encode_safetensors",
]
