"""Baselines FIUn is compared with, propagated down a scenario's DAG the way they would have to be in practice.

Each baseline walks the affected set (the origins and every descendant) in topological order, one model after
the other, and returns the new weights of every affected repo **in memory** (nothing is published), with the
wall time. Unaffected repos are never touched (not even loaded, unless a redone child needs their weights).

- :func:`retrain` (the gold standard): every affected model is redone with the recipe that built it
  (:func:`fiun_hub.research.scenarios.realize_node`: same init rule, epochs, learning rate, batch size and seeds) from
  its parents' weights (the redone ones for affected parents, the built revision for clean ones) on its shard
  minus the samples of the forget classes. An origin that is a root is retrained from scratch (same seeded
  initialisation). A head may keep a row for a forgotten class; that row is trained only as a negative.
- :func:`finetune`: every affected model continues from its current (built) weights on its retained data for
  a fraction of its recipe's epochs (default 25%, at least one) at the recipe's learning rate. A model whose
  recipe trains only the head on its parent's frozen backbone (TL) first takes its parent's fine-tuned
  backbone (it shares that backbone by construction), then fine-tunes its own head.
- :func:`gradient_ascent`: every affected model starts from its current weights and ascends the cross-entropy
  of the **origins'** forget samples (the forget-class samples of the origins' shards; descendants never
  trained on other forget data than what they inherited), mapped onto its own head by label name, with SGD for
  a few steps at a small learning rate, BatchNorm statistics frozen. A model with no head row for any forget
  class keeps its weights. TL children take their parent's ascended backbone as in :func:`finetune`.

Every baseline takes ``origins=`` (default: the scenario's), ``device=``, ``progress=`` and ``num_threads=``
(torch intra-op threads while it runs, default 1, restored afterwards; None leaves them alone).
``BaselineResult.states`` maps repo -> state dict; :func:`evaluate_state` / :meth:`BaselineResult.evaluate`
score them on held-out data.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import LabeledData
from ..errors import BadInput, UnlearnError
from .scenarios import Scenario, evaluate_model, head_params, inherit, realize_node, torch_threads

ProgressFn = Callable[[str], None]

DEFAULT_FINETUNE_FRACTION = 0.25
DEFAULT_GA_STEPS = 20
DEFAULT_GA_LR = 1e-2
DEFAULT_GA_BATCH = 32
DEFAULT_GA_STOP_ACC = 10.0  # stop ascending once the model gets at most this % of its forget samples right
DEFAULT_GA_CLIP = 1.0


@dataclass
class BaselineResult:
    """New weights of every affected repo (in memory) and the wall time of the whole propagation."""

    method: str
    seconds: float
    states: dict[str, dict[str, torch.Tensor]]
    forget_classes: list[str] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    node_seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def repos(self) -> list[str]:
        return list(self.states)

    def evaluate(self, scenario: Scenario, hub, test_data: LabeledData | None = None,
                 forget_classes: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Held-out ``{"forget_acc", "retain_acc"}`` (percent) of every state."""
        test = test_data if test_data is not None else scenario.load_test()
        forget = list(forget_classes) if forget_classes is not None else self.forget_classes
        return {repo: evaluate_state(hub, repo, state, test, forget, revision=scenario.node(repo).revision)
                for repo, state in self.states.items()}

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "seconds": self.seconds, "repos": self.repos,
                "node_seconds": dict(self.node_seconds), "forget_classes": self.forget_classes,
                "origins": self.origins}


# ----------------------------------------------------------------------------------------------- helpers
def _classes(scenario: Scenario, forget_classes: Sequence[str] | str | None, origins: Sequence[str]) -> list[str]:
    if forget_classes is None:
        forget_classes = scenario.forget_classes
    if isinstance(forget_classes, str):
        forget_classes = forget_classes.split(",")
    out = list(dict.fromkeys(str(c).strip() for c in forget_classes if str(c).strip()))
    if not out:
        raise UnlearnError("empty forget set")
    known = set().union(*(set(scenario.node(o).labels) for o in origins))
    unknown = [c for c in out if c not in known]
    if unknown:
        raise UnlearnError(f"class(es) {unknown} are not labels of origin(s) {list(origins)}")
    return out


def _origins(scenario: Scenario, origins: Iterable[str] | None) -> list[str]:
    out = list(dict.fromkeys(origins)) if origins is not None else list(scenario.origins)
    if not out:
        raise UnlearnError("no origin given")
    for o in out:
        scenario.node(o)
    return out


def load_built(hub, scenario: Scenario, repo: str) -> nn.Module:
    """``repo``'s model at the revision the scenario built (its weights before any forget)."""
    from ..models import load_model

    model, _, _ = load_model(hub, repo, scenario.node(repo).revision or None)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _take_parent_backbone(scenario: Scenario, repo: str, model: nn.Module,
                          states: Mapping[str, Mapping[str, torch.Tensor]]) -> bool:
    """For a frozen-backbone (TL) model whose parent was redone: use the parent's new backbone, keep the
    model's own head. Returns whether it did."""
    node = scenario.node(repo)
    if node.recipe.trainable != "head" or len(node.parents) != 1 or node.parents[0] not in states:
        return False
    p = node.parents[0]
    inherit(model, states[p], scenario.node(p).labels, node.labels, copy_head=False)
    return True


def evaluate_state(hub, repo: str, state: Mapping[str, torch.Tensor], test_data: LabeledData,
                   forget_classes: Sequence[str], revision: str | None = None) -> dict[str, Any]:
    """Build ``repo``'s model from its config (at ``revision``, default head), load ``state`` and return its
    held-out ``{"forget_acc", "retain_acc"}`` in percent (None where the model knows no such class)."""
    from ..constants import CONFIG_FILE
    from ..models import build_model, parse_config

    cid = hub.resolve(repo, revision)
    config = parse_config(hub.read_file(repo, CONFIG_FILE, cid), f"{repo}@{cid[:12]}:{CONFIG_FILE}")
    model = build_model(config)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise BadInput(f"{repo}: state does not fit its config: {str(exc).splitlines()[0][:200]}") from None
    pre = getattr(test_data, "preprocessing", None)
    if pre is not None and pre != config.preprocessing:  # fed for another model: its numbers would mean nothing
        raise BadInput(f"{repo}: test data is fed with {pre.describe()}, the model declares "
                       f"{config.preprocessing.describe()}")
    return evaluate_model(model.eval(), config.labels, test_data, forget_classes)


def evaluate_states(hub, scenario: Scenario, states: Mapping[str, Mapping[str, torch.Tensor]],
                    forget_classes: Sequence[str], test_data: LabeledData | None = None) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_state` for every ``repo -> state``."""
    test = test_data if test_data is not None else scenario.load_test()
    return {repo: evaluate_state(hub, repo, st, test, forget_classes, revision=scenario.node(repo).revision)
            for repo, st in states.items()}


# ----------------------------------------------------------------------------------------------- baselines
def _threaded(fn):
    """Add ``num_threads`` (default 1; None leaves torch's setting alone) to a baseline."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, num_threads: int | None = 1, **kwargs):
        with torch_threads(num_threads):
            return fn(*args, **kwargs)

    return wrapper


@_threaded
def retrain(scenario: Scenario, hub, forget_classes: Sequence[str] | str | None = None, *,
            origins: Iterable[str] | None = None, device=None, progress: ProgressFn | None = None) -> BaselineResult:
    """Redo every affected model with its recipe on its retained data, parents first (the gold standard)."""
    origins = _origins(scenario, origins)
    forget = _classes(scenario, forget_classes, origins)
    t0 = time.perf_counter()
    states: dict[str, dict[str, torch.Tensor]] = {}
    clean: dict[str, dict[str, torch.Tensor]] = {}
    node_s, info = {}, {}
    for repo in scenario.affected(origins):
        t1 = time.perf_counter()
        parent_states = {}
        for p in scenario.node(repo).parents:
            if p in states:
                parent_states[p] = states[p]
            else:  # a clean ancestor: its built revision
                if p not in clean:
                    clean[p] = _state(load_built(hub, scenario, p))
                parent_states[p] = clean[p]
        model, tr = realize_node(scenario, repo, parent_states, exclude=forget, device=device)
        states[repo] = _state(model)
        node_s[repo] = time.perf_counter() - t1
        info[repo] = {"samples": tr.get("samples"), "epochs": scenario.node(repo).recipe.epochs,
                      "init": scenario.node(repo).recipe.init, "loss": tr.get("loss")}
        if progress is not None:
            progress(f"retrain {repo}: {node_s[repo]:.1f}s")
    return BaselineResult("retrain", time.perf_counter() - t0, states, forget, origins, node_s, info)


@_threaded
def finetune(scenario: Scenario, hub, forget_classes: Sequence[str] | str | None = None, *,
             epochs: int | None = None, fraction: float = DEFAULT_FINETUNE_FRACTION, lr: float | None = None,
             origins: Iterable[str] | None = None, device=None,
             progress: ProgressFn | None = None) -> BaselineResult:
    """Fine-tune every affected model from its current weights on its retained data, parents first.

    ``epochs``: per model (default ``max(1, round(fraction * recipe epochs))``); ``lr``: default the
    recipe's."""
    from .training import train_classifier

    origins = _origins(scenario, origins)
    forget = _classes(scenario, forget_classes, origins)
    if epochs is not None and int(epochs) < 1:
        raise BadInput(f"finetune epochs must be >= 1, got {epochs}")
    if not 0 < fraction <= 1:
        raise BadInput(f"finetune fraction must be in (0, 1], got {fraction}")
    t0 = time.perf_counter()
    states: dict[str, dict[str, torch.Tensor]] = {}
    node_s, info = {}, {}
    for repo in scenario.affected(origins):
        t1 = time.perf_counter()
        node = scenario.node(repo)
        r = node.recipe
        model = load_built(hub, scenario, repo)
        took_backbone = _take_parent_backbone(scenario, repo, model, states)
        data = scenario.train_data(repo, exclude=forget)
        if len(data) < 2:
            raise BadInput(f"{repo}: only {len(data)} retained training sample(s)")
        ep = int(epochs) if epochs is not None else max(1, round(fraction * r.epochs))
        tr = train_classifier(model, data, epochs=ep, lr=float(lr) if lr is not None else r.lr,
                              batch_size=r.batch_size, seed=r.seed + 7919,
                              trainable=head_params(model) if r.trainable == "head" else None, device=device)
        states[repo] = _state(model.eval())
        node_s[repo] = time.perf_counter() - t1
        info[repo] = {"samples": len(data), "epochs": ep, "loss": tr.get("loss"),
                      "parent_backbone": took_backbone}
        if progress is not None:
            progress(f"finetune {repo}: {node_s[repo]:.1f}s")
    return BaselineResult("finetune", time.perf_counter() - t0, states, forget, origins, node_s, info)


def origin_forget_indices(scenario: Scenario, forget: Sequence[str], origins: Sequence[str]) -> list[int]:
    """Indices (into the train split) of the forget-class samples in the origins' shards."""
    train = scenario.load_train()
    rows = {train.labels.index(c) for c in forget if c in train.labels}
    out: set[int] = set()
    for o in origins:
        for i in scenario.node(o).shard:
            if int(train.y[i]) in rows:
                out.add(int(i))
    return sorted(out)


@torch.no_grad()
def _acc(model: nn.Module, data: LabeledData, dev) -> float:
    pred = torch.cat([model(data.x[i:i + 256].to(dev)).argmax(1).cpu() for i in range(0, len(data), 256)])
    return 100.0 * float((pred == data.y).float().mean())


def _ascend(model: nn.Module, data: LabeledData, *, steps: int, lr: float, batch_size: int, seed: int,
            trainable: list[str] | None, stop_acc: float | None, max_grad_norm: float | None,
            device=None) -> tuple[list[float], float | None]:
    """Up to ``steps`` SGD steps maximising cross-entropy on ``data`` (BatchNorm in eval mode), stopping once
    the accuracy on ``data`` is at most ``stop_acc``; returns the losses and the last accuracy checked."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    named = dict(model.named_parameters())
    train_set = set(trainable) if trainable is not None else set(named)
    saved = {k: p.requires_grad for k, p in named.items()}
    losses: list[float] = []
    try:
        for k, p in named.items():
            p.requires_grad_(k in train_set)
        model.to(dev).eval()
        opt = torch.optim.SGD([p for k, p in named.items() if k in train_set], lr=lr)
        gen = torch.Generator().manual_seed(int(seed))
        n = len(data)
        acc = None
        params = [p for k, p in named.items() if k in train_set]
        for _ in range(int(steps)):
            if stop_acc is not None:
                acc = _acc(model, data, dev)
                if acc <= stop_acc:
                    break
            idx = torch.randperm(n, generator=gen)[:batch_size]
            opt.zero_grad(set_to_none=True)
            ce = F.cross_entropy(model(data.x[idx].to(dev)), data.y[idx].to(dev))
            (-ce).backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            losses.append(float(ce.detach()))
        else:
            if stop_acc is not None:
                acc = _acc(model, data, dev)
    finally:
        for k, p in named.items():
            p.requires_grad_(saved[k])
    return losses, acc


@_threaded
def gradient_ascent(scenario: Scenario, hub, forget_classes: Sequence[str] | str | None = None, *,
                    steps: int = DEFAULT_GA_STEPS, lr: float = DEFAULT_GA_LR, batch_size: int = DEFAULT_GA_BATCH,
                    stop_acc: float | None = DEFAULT_GA_STOP_ACC, max_grad_norm: float | None = DEFAULT_GA_CLIP,
                    origins: Iterable[str] | None = None, device=None,
                    progress: ProgressFn | None = None) -> BaselineResult:
    """Gradient ascent on the origins' forget samples at every affected model, parents first."""
    origins = _origins(scenario, origins)
    forget = _classes(scenario, forget_classes, origins)
    if int(steps) < 1 or not lr > 0 or int(batch_size) < 1:
        raise BadInput(f"bad gradient-ascent settings: steps={steps}, lr={lr}, batch_size={batch_size}")
    t0 = time.perf_counter()
    idx = origin_forget_indices(scenario, forget, origins)
    if not idx:
        raise UnlearnError(f"the origins' shards hold no sample of {forget}")
    pool = scenario.load_train().subset(idx)
    states: dict[str, dict[str, torch.Tensor]] = {}
    node_s, info = {}, {}
    for repo in scenario.affected(origins):
        t1 = time.perf_counter()
        node = scenario.node(repo)
        model = load_built(hub, scenario, repo)
        took_backbone = _take_parent_backbone(scenario, repo, model, states)
        data = pool.to_label_space(node.labels)
        losses: list[float] = []
        acc = None
        if len(data):
            losses, acc = _ascend(model, data, steps=steps, lr=lr, batch_size=int(batch_size),
                                  seed=node.recipe.seed + 104729,
                                  trainable=head_params(model) if node.recipe.trainable == "head" else None,
                                  stop_acc=stop_acc, max_grad_norm=max_grad_norm, device=device)
        states[repo] = _state(model.eval())
        node_s[repo] = time.perf_counter() - t1
        info[repo] = {"forget_samples": len(data), "steps": len(losses), "losses": losses, "forget_train_acc": acc,
                      "parent_backbone": took_backbone}
        if progress is not None:
            progress(f"gradient-ascent {repo}: {node_s[repo]:.1f}s")
    return BaselineResult("gradient_ascent", time.perf_counter() - t0, states, forget, origins, node_s, info)


BASELINES = {"retrain": retrain, "finetune": finetune, "gradient_ascent": gradient_ascent}


def run_baseline(method: str, scenario: Scenario, hub, forget_classes=None, **kwargs) -> BaselineResult:
    """Dispatch by name: ``retrain``, ``finetune`` or ``gradient_ascent`` (``gradient-ascent``, ``ga``)."""
    key = {"gradient-ascent": "gradient_ascent", "ga": "gradient_ascent"}.get(method, method)
    if key not in BASELINES:
        raise BadInput(f"unknown baseline {method!r}; use one of {', '.join(BASELINES)}")
    return BASELINES[key](scenario, hub, forget_classes, **kwargs)


__all__ = ["BaselineResult", "retrain", "finetune", "gradient_ascent", "run_baseline", "BASELINES",
           "evaluate_state", "evaluate_states", "load_built", "origin_forget_indices"]
