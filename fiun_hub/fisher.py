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

Sidecars are safetensors only, read with ``safetensors.torch.load`` (never pickle) and validated. They are written
by :func:`encode_safetensors`, not ``safetensors.torch.save``: header metadata keys sorted, tensors by name, so the
same content always gives the same bytes (and the same sha256, so the hub stores it once).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load as _st_load

from .constants import FIM_CLASSES_FILE, FIM_FILE
from .errors import BadInput, SidecarError, UnlearnError
from .jsonsafe import loads as loads_json

FORMAT = "fiun-fim/1"
ESTIMATORS = ("normalized", "per-sample", "batch")
#: what fiun-hub writes into sidecars unless told otherwise (compute_fisher itself defaults to the textbook
#: per-sample estimator)
DEFAULT_ESTIMATOR = "normalized"
#: header metadata keys written by this module; callers' metadata may not set them to other values
RESERVED_KEYS = ("format", "estimator", "batch_size", "layers", "labels", "counts")
#: accumulate in float64 while the accumulators fit in this many bytes, else in float32
_FLOAT64_BUDGET = 1 << 30
#: the torch.func path holds chunk x (selected parameters) per-sample gradients; keep them under this
_PER_SAMPLE_GRAD_BUDGET = 256 << 20
_MAX_HEADER = 100 << 20
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


@dataclass
class Sidecars:
    """Parsed, validated ``fim.safetensors`` (+ optional ``fim-classes.safetensors``)."""

    model_fim: dict[str, torch.Tensor]
    class_fims: dict[str, dict[str, torch.Tensor]]  # empty when the classes sidecar was not given
    counts: dict[str, int]
    labels: list[str]
    layers: list[str]
    estimator: str
    batch_size: int | None
    metadata: dict[str, str] = field(default_factory=dict)  # the full header metadata of fim.safetensors

    @property
    def model_commit(self) -> str | None:
        return self.metadata.get("model_commit") or None

    @property
    def forgotten(self) -> list[str]:
        """Classes already stripped from these sidecars (header ``forgotten``), oldest first."""
        raw = self.metadata.get("forgotten")
        try:
            val = json.loads(raw) if raw else []
        except (ValueError, RecursionError):
            return []
        return [str(v) for v in val] if isinstance(val, list) else []


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


def _prefix(where: str) -> str:
    if where and not where.endswith((" ", ":")):
        return where + ": "
    return where


def _check_tensor(t: torch.Tensor, what: str, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise SidecarError(f"{where}{what} is not a tensor")
    if not t.dtype.is_floating_point:
        raise SidecarError(f"{where}{what} has dtype {t.dtype}; a FIM is float32")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise SidecarError(f"{where}{what} holds {bad} non-finite value(s) (NaN/Inf)")
    if bool((t < 0).any()):
        raise SidecarError(f"{where}{what} holds negative values; a diagonal FIM is >= 0")
    return t


def encode_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Deterministic safetensors bytes: the same tensors and metadata give the same bytes, in every process.

    ``safetensors.torch.save`` writes the header metadata in a Rust hash map's order, which changes from call to
    call, so equal sidecars would get different sha256s (and be stored twice). Here the header is
    ``{"__metadata__": {keys sorted}, tensors sorted by name}`` as compact JSON, padded with spaces to a multiple
    of 8 bytes (as safetensors pads it), and the data follows in the header's order. Any safetensors reader
    reads it. Tensors must be CPU, contiguous-able, of a dtype safetensors knows."""
    names = {v: k for k, v in _ST_DTYPES.items()}
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        dtype = names.get(t.dtype)
        if dtype is None:
            raise BadInput(f"{name}: dtype {t.dtype} cannot be stored in safetensors")
        t = t.contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([len(head).to_bytes(8, "little"), head] + chunks)


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _check_all(tensors: Mapping[str, torch.Tensor], what: Callable[[str], str], where: str) -> dict[str, torch.Tensor]:
    """:func:`_check_tensor` of every tensor, but with one finiteness and one sign test over all of them together
    (a sidecar holds one tensor per layer and class: checking them one by one costs more than the data); only
    when that finds a problem is each tensor checked on its own, so the error names it."""
    out: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            _check_tensor(t, what(k), where)  # raises
        out[k] = t.detach().to("cpu", torch.float32).contiguous()
    if out:
        flat = torch.cat([t.reshape(-1) for t in out.values()])
        if not bool(torch.isfinite(flat).all()) or bool((flat < 0).any()):
            for k, t in out.items():
                _check_tensor(t, what(k), where)
    return out


def _encode(model_fim, class_fims, counts, labels, layers, estimator, batch_size, metadata, where="",
            checked: bool = False) -> tuple[bytes, bytes]:
    """Both sidecar files' bytes (:func:`encode_safetensors`: deterministic). ``checked``: the class FIMs come
    from a validated :class:`Sidecars` (float32, finite, non-negative) and are not checked again."""
    where = _prefix(where)
    labels = [str(v) for v in labels]
    layers = [str(v) for v in layers]
    if estimator not in ESTIMATORS:
        raise SidecarError(f"{where}unknown estimator {estimator!r}")
    if estimator == "batch" and not (isinstance(batch_size, int) and batch_size > 0):
        raise SidecarError(f"{where}the batch estimator needs its batch size, got {batch_size!r}")
    missing = [n for n in layers if n not in model_fim]
    if missing:
        raise SidecarError(f"{where}model FIM lacks layers {missing}")
    unknown = [lab for lab in list(class_fims) + list(counts) if lab not in labels]
    if unknown:
        raise SidecarError(f"{where}labels {sorted(set(unknown))} are not among the model's labels")
    meta_core = {
        "format": FORMAT,
        "estimator": estimator,
        "batch_size": str(int(batch_size)) if estimator == "batch" else "",
        "layers": json.dumps(layers),
        "labels": json.dumps(labels),
        "counts": json.dumps({lab: int(counts[lab]) for lab in labels if lab in counts}),
    }
    meta: dict[str, str] = {}
    for key, val in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise BadInput(f"{where}sidecar metadata must map strings to strings, got {key!r}: {type(val).__name__}")
        if key in meta_core and val != meta_core[key]:
            raise BadInput(f"{where}sidecar metadata may not set {key!r} (fiun-hub writes it)")
        meta[key] = val
    meta.update(meta_core)
    fim = _check_all({n: model_fim[n] for n in layers}, lambda n: f"{FIM_FILE}: {n}", where)
    raw: dict[str, torch.Tensor] = {}
    for lab in labels:
        if lab not in class_fims:
            continue
        per = class_fims[lab]
        for n in layers:
            if n not in per:
                raise SidecarError(f"{where}class {lab!r} lacks the FIM of {n}")
            t = per[n]
            if isinstance(t, torch.Tensor) and t.shape != fim[n].shape:
                raise SidecarError(f"{where}class {lab!r} FIM of {n} is {tuple(t.shape)}, model FIM {tuple(fim[n].shape)}")
            raw[f"{n}@{lab}"] = t
    if checked:
        classes = {k: t.detach().to("cpu", torch.float32) for k, t in raw.items()}
    else:
        classes = _check_all(raw, lambda k: f"{FIM_CLASSES_FILE}: {k}", where)
    return encode_safetensors(fim, meta), encode_safetensors(classes, meta)


def sidecar_bytes(result: FisherResult, metadata: dict[str, str]) -> tuple[bytes, bytes]:
    """``(fim.safetensors, fim-classes.safetensors)`` bytes for ``result``; both headers carry ``format``,
    ``estimator``, ``batch_size``, ``layers``, ``labels``, ``counts`` plus ``metadata`` (strings; callers add
    ``model_commit``, ``dataset``, ``data_spec``). Refuses non-finite or negative values."""
    return _encode(result.model_fim, result.class_fims, result.counts, result.labels, result.layers,
                   result.estimator, result.batch_size, metadata)


def _load(buf, fname: str, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise SidecarError(f"{where}{fname}: expected bytes, got {type(buf).__name__}")
    buf = bytes(buf)
    if len(buf) < 8:
        raise SidecarError(f"{where}{fname} is truncated ({len(buf)} bytes)")
    n = int.from_bytes(buf[:8], "little")
    if n > len(buf) - 8 or n > _MAX_HEADER:
        raise SidecarError(f"{where}{fname}: header claims {n} bytes but only {len(buf) - 8} follow (truncated or corrupt)")
    try:
        header = loads_json(buf[8:8 + n], f"{where}{fname}", "header")
    except BadInput as exc:
        raise SidecarError(f"{exc} (truncated or corrupt)") from None
    if not isinstance(header, dict):
        raise SidecarError(f"{where}{fname}: header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SidecarError(f"{where}{fname}: header metadata must map strings to strings")
    try:
        tensors = _st_load(buf)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise SidecarError(f"{where}{fname} is not a valid safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise SidecarError(f"{where}{fname}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    return tensors, dict(meta)


def _json_field(meta: dict[str, str], key: str, kind: type, fname: str, where: str):
    raw = meta.get(key)
    if raw is None:
        raise SidecarError(f"{where}{fname}: header lacks {key!r}")
    try:
        val = loads_json(raw, f"{where}{fname}", f"header {key!r}")
    except BadInput as exc:
        raise SidecarError(str(exc)) from None
    if not isinstance(val, kind):
        raise SidecarError(f"{where}{fname}: header {key!r} must be a JSON {kind.__name__}")
    return val


def _parse_meta(meta: dict[str, str], fname: str, where: str):
    estimator = meta.get("estimator")
    if estimator not in ESTIMATORS:
        raise SidecarError(f"{where}{fname}: unknown estimator {estimator!r}")
    raw_bs = meta.get("batch_size", "")
    batch_size: int | None = None
    if estimator == "batch":
        if not raw_bs.isdigit() or int(raw_bs) < 1:
            raise SidecarError(f"{where}{fname}: batch estimator with batch_size {raw_bs!r}")
        batch_size = int(raw_bs)
    layers = _json_field(meta, "layers", list, fname, where)
    labels = _json_field(meta, "labels", list, fname, where)
    counts = _json_field(meta, "counts", dict, fname, where)
    if not layers or not all(isinstance(v, str) for v in layers) or len(set(layers)) != len(layers):
        raise SidecarError(f"{where}{fname}: header 'layers' must be a non-empty list of distinct names")
    if not all(isinstance(v, str) for v in labels) or len(set(labels)) != len(labels):
        raise SidecarError(f"{where}{fname}: header 'labels' must be a list of distinct names")
    for lab, cnt in counts.items():
        if lab not in labels:
            raise SidecarError(f"{where}{fname}: counts name {lab!r}, which is not among the labels")
        if isinstance(cnt, bool) or not isinstance(cnt, int) or cnt < 0:
            raise SidecarError(f"{where}{fname}: count of {lab!r} is {cnt!r}, expected an integer >= 0")
    counts = {lab: counts[lab] for lab in labels if lab in counts}
    return estimator, batch_size, layers, labels, counts


def read_sidecars(fim: bytes, classes: bytes | None = None, *, where: str = "") -> Sidecars:
    """Parse and validate sidecar bytes (safetensors only, never pickle). Raises :class:`SidecarError`,
    its message starting with ``where``, on truncated or lying headers, a wrong format, non-finite or
    negative values, or class FIMs inconsistent with the layers, labels, counts or model FIM shapes."""
    where = _prefix(where)
    tensors, meta = _load(fim, FIM_FILE, where)
    estimator, batch_size, layers, labels, counts = _parse_meta(meta, FIM_FILE, where)
    if set(tensors) != set(layers):
        extra, lack = sorted(set(tensors) - set(layers)), [n for n in layers if n not in tensors]
        raise SidecarError(f"{where}{FIM_FILE}: tensors do not match its layers (missing {lack}, unexpected {extra})")
    model_fim = _check_all({n: tensors[n] for n in layers}, lambda n: f"{FIM_FILE}: {n}", where)
    class_fims: dict[str, dict[str, torch.Tensor]] = {}
    if classes is not None:
        ctensors, cmeta = _load(classes, FIM_CLASSES_FILE, where)
        for key in RESERVED_KEYS + ("model_commit", "dataset", "data_spec", "preprocessing"):
            if (key in RESERVED_KEYS or (key in cmeta and key in meta)) and cmeta.get(key) != meta.get(key):
                raise SidecarError(f"{where}{FIM_FILE} and {FIM_CLASSES_FILE} disagree on {key!r}")
        expected = {f"{n}@{lab}": (n, lab) for lab in labels if counts.get(lab, 0) > 0 for n in layers}
        if set(ctensors) != set(expected):
            lack = sorted(set(expected) - set(ctensors))[:5]
            extra = sorted(set(ctensors) - set(expected))[:5]
            raise SidecarError(f"{where}{FIM_CLASSES_FILE}: keys do not match layers x classes with samples "
                               f"(missing {lack}, unexpected {extra})")
        checked = _check_all({key: ctensors[key] for key in expected}, lambda k: f"{FIM_CLASSES_FILE}: {k}", where)
        for key, (n, lab) in expected.items():
            t = checked[key]
            if t.shape != model_fim[n].shape:
                raise SidecarError(f"{where}{FIM_CLASSES_FILE}: {key} is {tuple(t.shape)}, "
                                   f"but the model FIM of {n} is {tuple(model_fim[n].shape)}")
            class_fims.setdefault(lab, {})[n] = t
    return Sidecars(model_fim=model_fim, class_fims=class_fims, counts=counts, labels=labels, layers=layers,
                    estimator=estimator, batch_size=batch_size, metadata=meta)


def strip_classes(s: Sidecars, drop: Iterable[str], metadata: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """Sidecar bytes with the ``drop`` classes' FIMs and counts removed, the model FIM recomputed as the
    count-weighted mean of the remaining class FIMs, metadata kept (updated by ``metadata``), and ``forgotten``
    (JSON list, cumulative) added. Exact for the per-sample estimator; for ``batch`` it is an approximation
    (header ``model_fim_source`` says so). Dropping nothing re-encodes the sidecars unchanged apart from
    ``metadata``; dropping a class already absent is a no-op. ``s`` is what :func:`read_sidecars` returns: its
    class FIMs were validated there and are not checked again. The bytes are deterministic
    (:func:`encode_safetensors`)."""
    drop = list(dict.fromkeys(str(d) for d in drop))
    unknown = [d for d in drop if d not in s.labels]
    if unknown:
        raise UnlearnError(f"cannot forget {unknown}: not among the model's labels {s.labels}")
    meta = {k: v for k, v in s.metadata.items() if k not in RESERVED_KEYS}
    meta.update(metadata or {})
    if not any(d in s.class_fims or s.counts.get(d, 0) for d in drop):
        return _encode(s.model_fim, s.class_fims, s.counts, s.labels, s.layers, s.estimator, s.batch_size, meta,
                       checked=True)
    needed = [lab for lab in s.labels if s.counts.get(lab, 0) > 0]
    if any(lab not in s.class_fims for lab in needed):
        raise SidecarError("stripping classes needs the per-class sidecar (fim-classes.safetensors)")
    counts = {lab: c for lab, c in s.counts.items() if lab not in drop}
    keep = [lab for lab in s.labels if counts.get(lab, 0) > 0]
    total = sum(counts[lab] for lab in keep)
    if total == 0:
        raise UnlearnError(f"forgetting {drop} leaves no class with training samples; nothing to keep")
    model_fim = {}
    for n in s.layers:
        acc = torch.zeros(s.model_fim[n].shape, dtype=torch.float64)
        for lab in keep:
            acc += counts[lab] * s.class_fims[lab][n].double()
        model_fim[n] = (acc / total).float()
    class_fims = {lab: s.class_fims[lab] for lab in keep}
    meta["forgotten"] = json.dumps(list(dict.fromkeys(s.forgotten + drop)))
    meta["model_fim_source"] = "class-weighted-mean"
    return _encode(model_fim, class_fims, counts, s.labels, s.layers, s.estimator, s.batch_size, meta, checked=True)


__all__ = [
    "FORMAT", "ESTIMATORS", "FisherResult", "Sidecars", "resolve_layers", "compute_fisher",
    "sidecar_bytes", "read_sidecars", "strip_classes", "encode_safetensors",
]
