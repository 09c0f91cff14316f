"""Ablation of FIUn's selection + dampening rule on a real inheritance DAG of timm models (digits).

Builds a DAG of 7 ``test_resnet`` models trained on ``digits:train`` (16x16, 1 channel), computes every
model's sidecar FIMs on its own training data, forgets class "3" (and the 4-class set 1,3,5,7) at the root
and reports held-out (``digits:test``) forget / retain accuracy per model, before and after, for the paper's
rule and for every variant tried. Results: ``benchmarks/results/ablation_dampening.json``; the write-up is
``docs/method.md``.

DAG (parent -> child; every model is affected by a forget at the root):

    R  root, from scratch, all 10 classes, all of digits:train
    A  fine-tune of R on shard Q0+Q1            B  fine-tune of R on shard Q2+Q3
    M  FedAvg(A, B) fine-tuned further on Q1+Q2 (two parents)
    C  chain child of M fine-tuned on Q3 *without class 3* (knows 3 only through inheritance)
    T  transfer learning: R's frozen backbone, its own new head on labels 7,3,1,5,0,8 (Q0+Q1)
    I  incremental learning from T: head grows to 10 labels in reversed order (gains 9,6,4,2), full
       fine-tune on Q2+Q3

Each descendant is unlearned from the root's unlearning FIM (aligned to its head rows by label name) and
its OWN sidecars only: never the forget data, never its parents' new weights.

Rows: the paper's rule (per-sample and batch estimators, SSD's alpha=10, all layers with and without
BatchNorm), each change added in turn, leave-one-out from the chosen rule, two diagnostics that edit the
forgotten head rows completely (to 0, to the retained-row mean), two origins merged by MFIM, an alpha x lambda
grid and a membership-inference check. A second DAG (seed 1) is trained as a robustness check.

Run:  python benchmarks/ablation_dampening.py   (about 6 minutes on 2 idle CPU cores: two DAGs are trained)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

from fiun_hub import dampening as D  # noqa: E402
from fiun_hub.data import LabeledData, load_data  # noqa: E402
from fiun_hub.evaluate import forget_retain_accuracy  # noqa: E402
from fiun_hub.fisher import compute_fisher, resolve_layers  # noqa: E402
from fiun_hub.research.training import average_state_dicts, train_classifier  # noqa: E402

DIGITS = [str(i) for i in range(10)]
T_LABELS = ["7", "3", "1", "5", "0", "8"]
I_LABELS = list(reversed(DIGITS))
FORGET_SETS = {"1-class": ["3"], "4-class": ["1", "3", "5", "7"]}
INPUT = (16, 16)


@dataclass
class Node:
    name: str
    model: torch.nn.Module
    labels: list[str]
    train: LabeledData  # own training data, targets in the model's head-row order
    parents: list[str]
    how: str
    fims: dict = field(default_factory=dict)  # (layers, estimator) -> FisherResult


def _new_model(num_classes: int) -> torch.nn.Module:
    return timm.create_model("test_resnet", num_classes=num_classes, in_chans=1)


def build_dag(seed: int = 0, log=print) -> dict[str, Node]:
    """Train the 7-model DAG (deterministic given ``seed``)."""
    torch.manual_seed(seed)
    train = load_data("digits:train", in_chans=1, input_size=INPUT)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    q = [perm[i::4] for i in range(4)]
    shard = lambda *ix: train.subset(torch.cat([q[i] for i in ix]).sort().values)  # noqa: E731
    nodes: dict[str, Node] = {}

    def fit(node: Node, **kw):
        t0 = time.perf_counter()
        r = train_classifier(node.model, node.train, seed=seed, **kw)
        log(f"  trained {node.name:2s} ({node.how}): loss {r['first_loss']:.3f} -> {r['loss']:.4f} "
            f"in {time.perf_counter() - t0:.1f}s")

    r = Node("R", _new_model(10), DIGITS, train, [], "root, scratch, all data")
    fit(r, epochs=15, lr=3e-3)
    nodes["R"] = r
    for name, ix in (("A", (0, 1)), ("B", (2, 3))):
        n = Node(name, copy.deepcopy(r.model), DIGITS, shard(*ix), ["R"], f"finetune R on Q{ix}")
        fit(n, epochs=6, lr=1e-3)
        nodes[name] = n
    a, b = nodes["A"], nodes["B"]
    m = Node("M", _new_model(10), DIGITS, shard(1, 2), ["A", "B"], "FedAvg(A,B) + finetune Q1+Q2")
    m.model.load_state_dict(average_state_dicts([a.model.state_dict(), b.model.state_dict()],
                                                [len(a.train), len(b.train)]))
    fit(m, epochs=4, lr=5e-4)
    nodes["M"] = m
    q3 = shard(3)
    no3 = q3.subset(torch.nonzero(q3.y != DIGITS.index("3")).flatten())
    c = Node("C", copy.deepcopy(m.model), DIGITS, no3, ["M"], "chain finetune of M on Q3 without class 3")
    fit(c, epochs=4, lr=5e-4)
    nodes["C"] = c
    t_model = copy.deepcopy(r.model)
    t_model.reset_classifier(len(T_LABELS))
    t = Node("T", t_model, T_LABELS, shard(0, 1).to_label_space(T_LABELS), ["R"],
             "transfer: frozen R backbone, new head 7,3,1,5,0,8")
    fit(t, epochs=15, lr=1e-2, trainable=["fc.weight", "fc.bias"])
    nodes["T"] = t
    i_model = copy.deepcopy(t.model)
    i_model.reset_classifier(len(I_LABELS))
    with torch.no_grad():  # incremental learning: keep T's rows by name, new rows for the gained labels
        for row, lab in enumerate(I_LABELS):
            if lab in T_LABELS:
                i_model.fc.weight[row] = t.model.fc.weight[T_LABELS.index(lab)]
                i_model.fc.bias[row] = t.model.fc.bias[T_LABELS.index(lab)]
    i = Node("I", i_model, I_LABELS, shard(2, 3).to_label_space(I_LABELS), ["T"],
             "incremental: T + labels 9,6,4,2, reversed order, full finetune Q2+Q3")
    fit(i, epochs=8, lr=1e-3)
    nodes["I"] = i
    for n in nodes.values():
        n.model.eval()
    return nodes


def save_dag(nodes: dict[str, Node], path: str) -> None:
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for k, n in nodes.items():
        for p, t in n.model.state_dict().items():
            tensors[f"{k}/{p}"] = t.contiguous()
        tensors[f"{k}//x"], tensors[f"{k}//y"] = n.train.x.contiguous(), n.train.y.contiguous()
        meta[k] = json.dumps({"labels": n.labels, "parents": n.parents, "how": n.how})
    save_file(tensors, path, metadata=meta)


def load_dag(path: str) -> dict[str, Node]:
    from safetensors import safe_open

    nodes = {}
    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
        keys = list(fh.keys())
        for k, raw in meta.items():
            info = json.loads(raw)
            model = _new_model(len(info["labels"]))
            model.load_state_dict({key.split("/", 1)[1]: fh.get_tensor(key) for key in keys
                                   if key.startswith(k + "/") and not key.startswith(k + "//")})
            model.eval()
            train = LabeledData(fh.get_tensor(f"{k}//x"), fh.get_tensor(f"{k}//y"), info["labels"], "digits:train")
            nodes[k] = Node(k, model, info["labels"], train, info["parents"], info["how"])
    return {k: nodes[k] for k in ("R", "A", "B", "M", "C", "T", "I")}


# --------------------------------------------------------------------------------------------------- sidecars

HEAD = ["fc.weight", "fc.bias"]


@dataclass
class Fims:
    """A model's sidecar content: model FIM, per-class FIMs (by label), counts (by label)."""

    model_fim: dict
    class_fims: dict
    counts: dict
    labels: list


def _is_bn(name: str, model: torch.nn.Module) -> bool:
    mod = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)


def layer_names(model: torch.nn.Module, spec: str) -> list[str]:
    if spec == "head":
        return list(HEAD)
    if spec == "all":
        return resolve_layers(model, "all")
    if spec == "all-no-bn":
        return [n for n in resolve_layers(model, "all") if not _is_bn(n, model)]
    if spec == "layer4-fc-no-bn":
        return [n for n in resolve_layers(model, "layer4.*,fc.*") if not _is_bn(n, model)]
    raise ValueError(spec)


def _normalized_fisher_generic(model, x, y, labels, layers, chunk=64) -> Fims:
    """normalized per-sample Fisher (g_i^2 / ||g_i||^2 over ``layers``) through torch.func, eval mode."""
    from torch.func import functional_call, grad, vmap
    import torch.nn.functional as F

    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    sel = {n: params[n] for n in layers}
    rest = {n: p for n, p in params.items() if n not in sel}

    def loss_fn(sp, xi, yi):
        out = functional_call(model, ({**rest, **sp}, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_grad = vmap(grad(loss_fn), in_dims=(None, 0, 0))
    k = len(labels)
    acc = {n: torch.zeros((k, *params[n].shape), dtype=torch.float64) for n in layers}
    for s in range(0, len(y), chunk):
        g = per_grad(sel, x[s:s + chunk], y[s:s + chunk])
        norm2 = sum((g[n].double() ** 2).flatten(1).sum(1) for n in layers)
        w = torch.where(norm2 > 0, 1.0 / norm2.clamp_min(1e-300), torch.zeros_like(norm2))
        for n in layers:
            sq = g[n].double() ** 2 * w.reshape(-1, *([1] * (g[n].ndim - 1)))
            acc[n].index_add_(0, y[s:s + chunk], sq)
    counts = torch.bincount(y, minlength=k)
    model_fim = {n: (acc[n].sum(0) / len(y)).float() for n in layers}
    class_fims = {labels[c]: {n: (acc[n][c] / counts[c]).float() for n in layers} for c in range(k) if counts[c] > 0}
    return Fims(model_fim, class_fims, {labels[c]: int(counts[c]) for c in range(k)}, list(labels))


def sidecar_fims(node: Node, estimator: str, layers: str, subsample: int | None = None, seed: int = 0) -> Fims:
    """A model's FIMs on its own training data. estimator: per-sample | batch (fisher.py) | normalized."""
    key = (estimator, layers, subsample)
    if key in node.fims:
        return node.fims[key]
    if layers == "all-no-bn":  # same FIMs as "all", BatchNorm entries dropped
        full = sidecar_fims(node, estimator, "all", subsample, seed)
        keep = set(layer_names(node.model, layers))
        out = Fims({n: t for n, t in full.model_fim.items() if n in keep},
                   {c: {n: t for n, t in f.items() if n in keep} for c, f in full.class_fims.items()},
                   full.counts, full.labels)
        node.fims[key] = out
        return out
    data = node.train
    if subsample and len(data) > subsample:
        g = torch.Generator().manual_seed(seed)
        data = data.subset(torch.randperm(len(data), generator=g)[:subsample].sort().values)
    names = layer_names(node.model, layers)
    if estimator in ("per-sample", "batch"):
        r = compute_fisher(node.model, data.x, data.y, node.labels, names, estimator=estimator, batch_size=64)
        out = Fims(r.model_fim, r.class_fims, r.counts, r.labels)
    elif estimator == "normalized" and layers == "head":
        node.model.eval()
        with torch.no_grad():
            h = node.model.forward_head(node.model.forward_features(data.x), pre_logits=True)
            z = node.model.fc(h)
        mf, cf, cnt = D.normalized_head_fisher(h, z, data.y)
        ren = lambda d: {"fc.weight": d["weight"], "fc.bias": d["bias"]}  # noqa: E731
        out = Fims(ren(mf), {node.labels[c]: ren(v) for c, v in cf.items()},
                   {node.labels[c]: n for c, n in cnt.items()}, list(node.labels))
    elif estimator == "normalized":
        out = _normalized_fisher_generic(node.model, data.x, data.y, node.labels, names)
    else:
        raise ValueError(estimator)
    node.fims[key] = out
    return out


# --------------------------------------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str
    what: str
    estimator: str = "normalized"
    layers: str = "head"
    retain: bool = True
    rows: bool = True
    mean_ref: bool = True
    ref_rule: str | None = None  # the reference rule of the dampened rows (None: D.DEFAULT_REFERENCE_RULE)
    alpha: float = D.DEFAULT_ALPHA
    lam: float = D.DEFAULT_LAMBDA
    exponent: float = 1.0
    transport: bool = False  # rescale U into each descendant's FIM scale (mass ratio of retain FIMs)
    subsample: int | None = None
    whole: bool = D.DEFAULT_WHOLE_ROWS  # forgotten head rows set whole to the reference (False: entry by entry)

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in ("estimator", "layers", "retain", "rows", "mean_ref", "ref_rule", "alpha", "lam",
                                              "exponent", "transport", "subsample", "whole")}


def ancestors(nodes: dict[str, Node], name: str) -> set[str]:
    seen, todo = set(), list(nodes[name].parents)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(nodes[p].parents)
    return seen


def _mass(fim: dict) -> float:
    return sum(float(t.double().sum()) for t in fim.values())


def unlearn_all(nodes: dict[str, Node], v: Variant, forget: list[str], origins: list[str]) -> dict[str, dict]:
    """New unlearnable parameters of every affected model. Each origin's U is computed once from its own
    sidecar; each model then uses only the merged, aligned U's and its own sidecars (data-free, parallel)."""
    fims = {k: sidecar_fims(n, v.estimator, v.layers, v.subsample) for k, n in nodes.items()}
    u = {}
    for o in origins:
        held = [c for c in forget if fims[o].counts.get(c, 0) > 0]
        u[o] = D.unlearning_fim(fims[o].class_fims, fims[o].counts, held)
    affected = {k for k in nodes if k in origins or ancestors(nodes, k) & set(origins)}
    new = {}
    for k in sorted(affected):
        node, f = nodes[k], fims[k]
        ups = [o for o in origins if o == k or o in ancestors(nodes, k)]
        aligned = []
        for o in ups:
            a = D.align_rows(u[o], nodes[o].labels, node.labels, HEAD)
            if v.transport:
                s = _mass(D.retain_fim(f.model_fim, f.class_fims, f.counts, forget)) / _mass(
                    D.retain_fim(fims[o].model_fim, fims[o].class_fims, fims[o].counts, forget))
                a = {n: t * s for n, t in a.items()}
            aligned.append(a)
        mfim = D.merge_fims(aligned)
        params = {n: p.detach() for n, p in node.model.named_parameters() if n in mfim}
        new[k] = D.class_forget_update(params, node.labels, f.model_fim, f.class_fims, f.counts, mfim, forget, HEAD,
                                       alpha=v.alpha, lam=v.lam, exponent=v.exponent, use_retain_fim=v.retain,
                                       forget_rows=v.rows, mean_reference=v.mean_ref,
                                       reference_rule=v.ref_rule, whole_rows=v.whole)
    return new


def evaluate_models(nodes, new, test, forget) -> dict[str, tuple]:
    out = {}
    for k, node in nodes.items():
        model = node.model
        if new.get(k):
            model = copy.deepcopy(node.model)
            with torch.no_grad():
                named = dict(model.named_parameters())
                for n, t in new[k].items():
                    named[n].copy_(t)
        out[k] = forget_retain_accuracy(model, node.labels, test, forget)
    return out


def summarize(before, after, scenario: str) -> dict:
    per = {}
    for k, (f, r) in after.items():
        per[k] = {"forget_before": before[k][0], "retain_before": before[k][1], "forget": f, "retain": r,
                  "retain_drop": before[k][1] - r}
    worst_f = max(p["forget"] for p in per.values())
    worst_d = max(p["retain_drop"] for p in per.values())
    f_max, d_max = (1.0, 2.0) if scenario == "1-class" else (2.0, 5.0)
    return {"per_model": per, "worst_forget": worst_f, "worst_retain_drop": worst_d,
            "meets_target": worst_f <= f_max and worst_d <= d_max}


PAPER = dict(retain=False, rows=False, mean_ref=False, alpha=1.0, lam=1.0, whole=False)

VARIANTS = [
    # the paper's rule (DESIGN.md 5.5 as written), head only
    Variant("paper/per-sample", "paper rule, exact per-sample empirical Fisher, a=1 l=1", "per-sample", **PAPER),
    Variant("paper/batch64", "paper rule, the paper code's batch estimator (batch 64), a=1 l=1", "batch", **PAPER),
    Variant("paper/per-sample/a10", "paper rule, per-sample, SSD's a=10", "per-sample", **{**PAPER, "alpha": 10.0}),
    Variant("paper/all-layers/a10", "paper rule, every layer incl. BatchNorm, per-sample (256 samples/model), a=10",
            "per-sample", "all", **{**PAPER, "alpha": 10.0}, subsample=256),
    Variant("paper/all-no-bn/a10", "paper rule, every layer except BatchNorm, per-sample (256/model), a=10",
            "per-sample", "all-no-bn", **{**PAPER, "alpha": 10.0}, subsample=256),
    Variant("paper/transport", "paper rule + U rescaled to each descendant's FIM mass (per-descendant scale)",
            "per-sample", **PAPER, transport=True),
    # adding the changes one at a time (per-sample estimator)
    Variant("+retain", "paper + compare against the retain FIM (own forget classes taken out)", "per-sample",
            **{**PAPER, "retain": True}),
    Variant("+retain+meanref", "... + dampen head rows toward the retained-row mean", "per-sample",
            **{**PAPER, "retain": True, "mean_ref": True, "ref_rule": "retained-mean"}),
    Variant("+retain+meanref+rows", "... + only forgotten head rows selectable", "per-sample",
            **{**PAPER, "retain": True, "mean_ref": True, "rows": True, "ref_rule": "retained-mean"}),
    Variant("+retain+meanref+rows+lam", f"... + lambda={D.DEFAULT_LAMBDA} (= the chosen rule on the plain "
            "per-sample Fisher)", "per-sample"),
    Variant("chosen", "normalized per-sample Fisher + retain FIM + forgotten rows + ranked-last reference, "
                      f"alpha={D.DEFAULT_ALPHA}, lambda={D.DEFAULT_LAMBDA} (the defaults)"),
    # leave-one-out from the chosen rule
    Variant("chosen-retain", "chosen, model FIM instead of retain FIM", retain=False),
    Variant("chosen-meanref", "chosen, dampen toward 0 instead of the ranked-last reference", mean_ref=False),
    Variant("chosen/retained-mean-ref", "chosen, dampen toward the retained-row mean (the rule before issue 16)",
            ref_rule="retained-mean"),
    Variant("chosen-rows", "chosen, every head row selectable", rows=False),
    Variant("chosen/entry-wise", "chosen, forgotten head rows dampened entry by entry as selected (the rule before "
            "whole rows)", whole=False),
    Variant("chosen/l1", "chosen with lambda=1", lam=1.0),
    Variant("chosen/l0.1", "chosen with lambda=0.1", lam=0.1),
    Variant("chosen/a3", "chosen with alpha=3", alpha=3.0),
    Variant("chosen/batch64", "chosen rule on the batch estimator's FIMs (batch 64)", "batch"),
    Variant("chosen/layer4+fc", "chosen rule on layer4 (no BN) + head, normalized over those layers",
            layers="layer4-fc-no-bn"),
]
SENS_ALPHA = [0.3, 1.0, 3.0, 10.0]
SENS_LAMBDA = [1.0, 0.3, 0.1, 0.03, 0.01]


def _apply(node: Node, new: dict) -> torch.nn.Module:
    model = copy.deepcopy(node.model)
    with torch.no_grad():
        named = dict(model.named_parameters())
        for n, t in new.items():
            named[n].copy_(t)
    return model


def _changed(node: Node, new: dict, forget: list[str]) -> dict:
    """How many unlearnable elements the update changed: in the head's forgotten rows, elsewhere in the head,
    and outside the head."""
    named = dict(node.model.named_parameters())
    rows = torch.tensor([lab in forget for lab in node.labels])
    out = {"changed_forget_rows": 0, "size_forget_rows": 0, "changed_other_head": 0, "changed_non_head": 0}
    for n, t in new.items():
        diff = t != named[n].detach()
        if n in HEAD:
            m = rows.reshape(-1, *([1] * (diff.ndim - 1))).expand_as(diff)
            out["changed_forget_rows"] += int((diff & m).sum())
            out["size_forget_rows"] += int(m.sum())
            out["changed_other_head"] += int((diff & ~m).sum())
        else:
            out["changed_non_head"] += int(diff.sum())
    return out


def _edit_rows(node: Node, forget: list[str], to_mean: bool) -> dict:
    params = {n: p.detach().clone() for n, p in node.model.named_parameters() if n in HEAD}
    rows = [i for i, lab in enumerate(node.labels) if lab in forget]
    keep = [i for i, lab in enumerate(node.labels) if lab not in forget]
    for n, t in params.items():
        t[rows] = t[keep].mean(0) if to_mean else 0.0
    return params


def _line(row: dict) -> str:
    return (f"{row['variant']:28s} {row['scenario']}: worst forget {row['worst_forget']:5.1f}%  worst retain drop "
            f"{row['worst_retain_drop']:+5.1f}  {'MEETS' if row['meets_target'] else 'misses'}  | " +
            " ".join(f"{k}:{p['forget']:.0f}/{-p['retain_drop']:+.1f}" for k, p in row["per_model"].items()))


def run_seed(seed: int, *, full: bool, cache: str | None, log=print) -> dict:
    """Train (or load) the DAG of one seed and run the variants; ``full`` adds the all-layer rows, the
    alpha x lambda grid and the membership-inference check."""
    t0 = time.perf_counter()
    if cache and Path(cache).exists():
        log(f"[seed {seed}] loading the DAG from {cache}")
        nodes = load_dag(cache)
    else:
        log(f"[seed {seed}] training the DAG ...")
        nodes = build_dag(seed, log=log)
        if cache:
            save_dag(nodes, cache)
    t_train = time.perf_counter() - t0
    test = load_data("digits:test", in_chans=1, input_size=INPUT)
    before = {s: evaluate_models(nodes, {}, test, fs) for s, fs in FORGET_SETS.items()}
    results = []
    for v in [v for v in VARIANTS if full or not v.subsample]:
        for scenario, forget in FORGET_SETS.items():
            t1 = time.perf_counter()
            new = unlearn_all(nodes, v, forget, ["R"])
            row = {"variant": v.name, "what": v.what, "scenario": scenario, "forget": forget, "origins": ["R"],
                   "settings": v.settings(), "update_seconds": round(time.perf_counter() - t1, 3),
                   **summarize(before[scenario], evaluate_models(nodes, new, test, forget), scenario)}
            for k, p in row["per_model"].items():
                p.update(_changed(nodes[k], new.get(k, {}), forget))
            results.append(row)
            log(_line(row))
    # diagnostics, not FIUn: what a *complete* edit of the forgotten head rows does
    for diag, what in (("diag/zero-rows", "forgotten rows (weight and bias) set to 0: the limit of the paper's "
                                          "multiplicative dampening"),
                       ("diag/mean-rows", "forgotten rows set to the mean of the retained rows: the limit of "
                                          "dampening toward the retained mean")):
        for scenario, forget in FORGET_SETS.items():
            new = {k: _edit_rows(n, forget, diag == "diag/mean-rows") for k, n in nodes.items()}
            row = {"variant": diag, "what": what, "scenario": scenario, "forget": forget, "origins": [],
                   "settings": {}, **summarize(before[scenario], evaluate_models(nodes, new, test, forget), scenario)}
            results.append(row)
            log(_line(row))
    # two origins (MFIM): the class is also forgotten at B, whose own shard holds it; B's descendants (M, C)
    # and B itself merge U(R) and U(B) by element-wise max
    chosen = Variant("chosen", "")
    for scenario, forget in FORGET_SETS.items():
        new = unlearn_all(nodes, chosen, forget, ["R", "B"])
        row = {"variant": "chosen/MFIM(R,B)", "what": "chosen rule, two origins R and B merged by element-wise max",
               "scenario": scenario, "forget": forget, "origins": ["R", "B"], "settings": chosen.settings(),
               **summarize(before[scenario], evaluate_models(nodes, new, test, forget), scenario)}
        results.append(row)
        log(_line(row))
    out = {"seed": seed,
           "models": {k: {"how": n.how, "parents": n.parents, "labels": n.labels, "n_train": len(n.train)}
                      for k, n in nodes.items()},
           "before": {s: {k: {"forget": f, "retain": r} for k, (f, r) in b.items()} for s, b in before.items()},
           "results": results}
    if full:
        sens = []
        for a in SENS_ALPHA:
            for lam in SENS_LAMBDA:
                for scenario, forget in FORGET_SETS.items():
                    v = Variant("sens", "", alpha=a, lam=lam)
                    s = summarize(before[scenario], evaluate_models(nodes, unlearn_all(nodes, v, forget, ["R"]),
                                                                    test, forget), scenario)
                    sens.append({"alpha": a, "lam": lam, "scenario": scenario, "worst_forget": s["worst_forget"],
                                 "worst_retain_drop": s["worst_retain_drop"], "meets_target": s["meets_target"]})
                    log(f"  sensitivity a={a:<5} l={lam:<5} {scenario}: {s['worst_forget']:5.1f} / "
                        f"{s['worst_retain_drop']:+5.1f} {'MEETS' if s['meets_target'] else 'misses'}")
        out["sensitivity"] = sens
        # membership inference (SSD convention), before / after the chosen rule, 1-class forget
        from fiun_hub.evaluate import mia_score

        train_all = load_data("digits:train", in_chans=1, input_size=INPUT)
        forget = FORGET_SETS["1-class"]
        f_train = train_all.select_labels(forget)
        r_train = train_all.select_labels([c for c in DIGITS if c not in forget])
        new = unlearn_all(nodes, chosen, forget, ["R"])
        mia = {k: {"before": mia_score(node.model, node.labels, f_train, r_train, test),
                   "after": mia_score(_apply(node, new[k]), node.labels, f_train, r_train, test)}
               for k, node in nodes.items()}
        log("MIA (% of forget-train predicted member), before -> after: " +
            " ".join(f"{k}:{m['before']:.0f}->{m['after']:.0f}" for k, m in mia.items()))
        out["mia_1class"] = mia
    out["seconds"] = {"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of the main DAG (full ablation)")
    ap.add_argument("--extra-seeds", type=int, nargs="*", default=[1],
                    help="further DAGs, each trained anew, for a robustness check (no all-layer rows, no grid)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablation_dampening.json"))
    ap.add_argument("--quick", action="store_true", help="skip the all-layer rows, the grid and the extra seeds")
    ap.add_argument("--cache", default=None, help="optional directory: load trained DAGs from it, or save them there")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t_start = time.perf_counter()
    cache = (lambda s: str(Path(args.cache) / f"dag-seed{s}.safetensors")) if args.cache else (lambda s: None)
    if args.cache:
        Path(args.cache).mkdir(parents=True, exist_ok=True)
    runs = [run_seed(args.seed, full=not args.quick, cache=cache(args.seed))]
    for s in ([] if args.quick else args.extra_seeds):
        runs.append(run_seed(s, full=False, cache=cache(s)))
    argv_str = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    out = {
        "benchmark": "ablation_dampening",
        "command": ("python benchmarks/ablation_dampening.py " + argv_str).strip(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads()},
        "defaults": {"alpha": D.DEFAULT_ALPHA, "lam": D.DEFAULT_LAMBDA, "exponent": D.DEFAULT_EXPONENT,
                     "estimator": "normalized", "layers": "head", "retain_fim": True, "forget_rows": True,
                     "mean_reference": True, "reference_rule": D.DEFAULT_REFERENCE_RULE,
                     "rank_margin": D.DEFAULT_RANK_MARGIN},
        "targets": {"1-class": "forget <= 1% and retain drop <= 2 points on every affected model",
                    "4-class": "forget <= 2% and retain drop <= 5 points on every affected model"},
        "forget_sets": FORGET_SETS,
        "runs": runs,
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} in {out['seconds_total']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
