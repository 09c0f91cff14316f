"""What a head-only forget leaves behind (issue 16): FIUn against retraining, fine-tuning and gradient ascent,
measured beyond forget/retain accuracy: top-2 leak, a linear probe on the features, a relearn test, and for
sample-wise forgets the accuracy on the forgotten samples and a membership-inference AUC.

DAG (per dataset, built fresh into a temporary hub; real timm models, sidecars with the default estimator):

- ``R``: root, trained from scratch on the largest shard (all labels): the origin of every request;
- ``A``: fine-tune child of R (its weights, all labels, its own shard, a third of R's epochs);
- ``T``: transfer child of R (R's frozen backbone, a new 6-label head ``7,3,1,5,0,8`` by index, its own shard).

Requests at R: class-wise 1 class (index 3) and 4 classes (indices 1,3,5,7); sample-wise 1% and 5% of R's training
shard (a seeded random draw, all classes), given to FIUn as an ``npz:`` file of the raw images.

Methods: ``original`` (the built models), ``fiun`` (``plan_forget`` + ``run_forget`` at the defaults: head
scope, alpha=1, lambda=0.01; sample-wise: the class-mix rule with its 20-entry budget, docs/method.md section 10;
end to end, timed), ``retrain`` (the affected subgraph redone with each model's
recipe without the forgotten data; timed), ``finetune`` (25% of each recipe's epochs on retained data),
``gradient_ascent`` (class-wise: :func:`fiun_hub.research.baselines.gradient_ascent` at its defaults; sample-wise: the
same ascent on the forgotten samples, stopping once the model's accuracy on them is at most its held-out
accuracy before the forget), and, class-wise, ``deep`` (:mod:`fiun_hub.research.deep_forget`, the prototype of a deeper
forget: FIUn's head update plus zeroing the penultimate channels that the forgotten classes dominate; not a
default) when that module is present.

Metrics (``fiun_hub.evaluate``; held-out = the dataset's test split, or a stratified subset of it):

- class-wise: ``forget_acc``, ``retain_acc``, ``top2_leak`` (forgotten-class held-out samples whose class is
  ranked 1st or 2nd), ``probe_recall`` (logistic regression on ``forward_head(pre_logits=True)`` features, fit
  on a stratified train subset, recall of the forgotten classes on held-out), ``relearn_forget_acc`` (forget
  accuracy after 1 epoch of Adam at 1e-3 on the model's own shard minus the forgotten classes);
- sample-wise: ``held_out_acc``, ``forgotten_acc`` (on the forgotten training samples, restricted to classes the
  model knows), ``mia_auc`` (loss-threshold attack AUC, forgotten vs held-out; 50 = indistinguishable).

    nice -n 10 python benchmarks/beyond_head.py                      # digits (+ Fashion-MNIST if installed)
    nice -n 10 python benchmarks/beyond_head.py --datasets digits    # digits only

Writes ``benchmarks/results/beyond_head.json`` and prints markdown tables (also in
``benchmarks/results/beyond_head.md``).
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fiun_hub.data import FASHION_MNIST_DIR, LabeledData, load_data, load_images  # noqa: E402
from fiun_hub.evaluate import forget_retain_accuracy, linear_probe, sample_forget_metrics, top2_leak  # noqa: E402
from fiun_hub.hub.local import LocalHub  # noqa: E402
from fiun_hub.models import load_model  # noqa: E402
from fiun_hub.research import baselines as BL  # noqa: E402
from fiun_hub.research.relearn import relearn_test  # noqa: E402
from fiun_hub.research.scenarios import (BATCH_SIZE, Recipe, Scenario, ScenarioNode, _Dealer,  # noqa: E402
                                         head_params, realize_node, realize_scenario, torch_threads)
from fiun_hub.research.training import train_classifier  # noqa: E402
from fiun_hub.unlearn import plan_forget, run_forget  # noqa: E402

try:  # the deeper-forget prototype (issue 16 part 2), measured as an extra column when present
    from fiun_hub.research import deep_forget as DF  # noqa: E402
except ImportError:  # pragma: no cover
    DF = None

RESULTS = ROOT / "benchmarks" / "results"
T_INDEX = (7, 3, 1, 5, 0, 8)  # T's head, by label index
CLASS_REQUESTS = {"1-class": (3,), "4-class": (1, 3, 5, 7)}
SAMPLE_REQUESTS = {"1%-samples": 0.01, "5%-samples": 0.05}
RELEARN = {"epochs": 1, "lr": 1e-3, "batch_size": 32}

PROFILES: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "arch": "test_resnet", "input_size": (1, 16, 16), "pool": 1257,
               "shards": {"R": 757, "A": 250, "T": 250}, "epochs": {"R": 10, "A": 3, "T": 10},
               "test_per_class": None, "probe_per_class": None},
    "fashion-mnist": {"dataset": "fashion-mnist", "arch": "test_resnet", "input_size": (1, 28, 28), "pool": 3000,
                      "shards": {"R": 1800, "A": 600, "T": 600}, "epochs": {"R": 6, "A": 2, "T": 6},
                      "test_per_class": 100, "probe_per_class": 100},
}
LR = {"scratch": 3e-3, "parent": 1e-3, "parent-frozen-backbone": 1e-2}

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def _r(v, nd: int = 1):
    return None if v is None else round(float(v), nd)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def stratified(data: LabeledData, per_class: int | None, seed: int) -> LabeledData:
    if per_class is None:
        return data
    rng = np.random.default_rng(seed)
    y = data.y.numpy()
    idx = np.concatenate([np.sort(rng.permutation(np.flatnonzero(y == c))[:per_class])
                          for c in range(len(data.labels))])
    return data.subset(np.sort(idx).tolist())


# ------------------------------------------------------------------------------------------------ the DAG
def plan_dag(prof: dict[str, Any], seed: int) -> Scenario:
    ds, size = prof["dataset"], prof["input_size"]
    train = load_data(f"{ds}:train", in_chans=size[0], input_size=size[1:])
    labels = list(train.labels)
    dealer = _Dealer(train.y, labels, seed, min(prof["pool"], len(train)))
    sh, ep = prof["shards"], prof["epochs"]
    s = seed * 1000
    t_labels = [labels[i] for i in T_INDEX]
    nodes = {
        "bench/R": ScenarioNode("bench/R", "base", [], None, labels, dealer.take(sh["R"]),
                                Recipe("scratch", ep["R"], LR["scratch"], BATCH_SIZE, s + 1, s + 1)),
        "bench/A": ScenarioNode("bench/A", "client", ["bench/R"], "finetune", labels, dealer.take(sh["A"]),
                                Recipe("parent", ep["A"], LR["parent"], BATCH_SIZE, s + 2, s + 2)),
        "bench/T": ScenarioNode("bench/T", "transfer", ["bench/R"], "finetune", t_labels,
                                dealer.take(sh["T"], t_labels),
                                Recipe("parent-frozen-backbone", ep["T"], LR["parent-frozen-backbone"], BATCH_SIZE,
                                       s + 3, s + 3, trainable="head")),
    }
    scn = Scenario(name="beyond-head", dataset=ds, arch=prof["arch"], input_size=tuple(size), nodes=nodes,
                   origins=["bench/R"], forget_classes=[labels[3]], seed=seed, org="bench")
    scn._train = load_data(f"{ds}:train", preprocessing=scn.preprocessing)
    return scn


def minus_samples(scn: Scenario, origin: str, drop: Sequence[int]) -> Scenario:
    """The same scenario with ``drop`` (train-split indices) removed from ``origin``'s shard."""
    out = copy.copy(scn)
    out.nodes = {r: copy.copy(n) for r, n in scn.nodes.items()}
    gone = set(int(i) for i in drop)
    out.nodes[origin].shard = [i for i in scn.nodes[origin].shard if i not in gone]
    return out


# ------------------------------------------------------------------------------------------------ metrics
class Evaluator:
    def __init__(self, scn: Scenario, hub0: LocalHub, prof: dict[str, Any], seed: int):
        self.scn, self.hub0 = scn, hub0
        self.test = stratified(scn.load_test(), prof["test_per_class"], seed + 11)
        self.probe_train = stratified(scn.load_train(), prof["probe_per_class"], seed + 12)
        self.labels = {r: list(n.labels) for r, n in scn.nodes.items()}

    def model(self, repo: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
        m, _, _ = load_model(self.hub0, repo, self.scn.node(repo).revision)
        if state is not None:
            m.load_state_dict(state, strict=True)
        return m.eval()

    def classwise(self, repo: str, model: nn.Module, classes: list[str]) -> dict[str, Any]:
        labels = self.labels[repo]
        if not any(c in labels for c in classes):
            return {"knows_forgotten": False}
        f, r = forget_retain_accuracy(model, labels, self.test, classes)
        probe = linear_probe(model, labels, self.probe_train, self.test, classes)
        rl = relearn_test(model, labels, self.scn.train_data(repo, exclude=classes), self.test, classes,
                          seed=self.scn.node(repo).recipe.seed + 31, **RELEARN)
        return {"forget_acc": _r(f), "retain_acc": _r(r), "top2_leak": _r(top2_leak(model, labels, self.test,
                                                                                      classes)),
                "probe_recall": _r(probe["forget_recall"]), "probe_retain_acc": _r(probe["retain_acc"]),
                "relearn_forget_acc": _r(rl["forget_acc"]), "relearn_retain_acc": _r(rl["retain_acc"])}

    def samplewise(self, repo: str, model: nn.Module, forgotten: LabeledData) -> dict[str, Any]:
        labels = self.labels[repo]
        m = sample_forget_metrics(model, labels, forgotten, self.test)
        return {"held_out_acc": _r(m["held_out_acc"]), "forgotten_acc": _r(m["forgotten_acc"]),
                "mia_auc": _r(m["mia_auc"]), "forgotten_known": len(forgotten.to_label_space(labels))}


# ------------------------------------------------------------------------------------------------ methods
def run_fiun(hub: LocalHub, scn: Scenario, *, classes=None, data_spec=None) -> tuple[float, dict, dict]:
    plan_forget(hub, scn.origins, classes=classes, data_spec=data_spec)  # warm imports and first reads, untimed
    t = time.perf_counter()
    plan = plan_forget(hub, scn.origins, classes=classes, data_spec=data_spec)
    res = run_forget(hub, plan)
    sec = time.perf_counter() - t
    states = {}
    for repo in scn.affected():
        model, _, cid = load_model(hub, repo)
        if cid != res.revisions[repo]["to"]:
            raise RuntimeError(f"{repo}: head {cid} is not FIUn's new revision")
        states[repo] = _state(model)
    return sec, states, {r: res.stats[r].get("changed") for r in states}


def samplewise_baselines(scn: Scenario, hub0: LocalHub, drop: list[int], before_acc: dict[str, float]) -> dict:
    """retrain / finetune / gradient ascent for a sample-wise request, as the class-wise baselines do them."""
    origin = scn.origin
    minus = minus_samples(scn, origin, drop)
    forgotten = scn.load_train().subset(drop)
    out: dict[str, Any] = {}
    # retrain: the affected subgraph redone with each recipe, the origin without the samples
    t0 = time.perf_counter()
    states: dict[str, dict] = {}
    for repo in scn.affected():
        model, _ = realize_node(minus, repo, {p: states[p] for p in scn.node(repo).parents})
        states[repo] = _state(model)
    out["retrain"] = (time.perf_counter() - t0, states)
    # finetune: 25% of each recipe's epochs on the retained data, parents first (TL takes the new backbone)
    t0 = time.perf_counter()
    states = {}
    for repo in scn.affected():
        node = scn.node(repo)
        model = BL.load_built(hub0, scn, repo)
        BL._take_parent_backbone(scn, repo, model, states)
        ep = max(1, round(BL.DEFAULT_FINETUNE_FRACTION * node.recipe.epochs))
        train_classifier(model, minus.train_data(repo), epochs=ep, lr=node.recipe.lr, batch_size=node.recipe.batch_size,
                         seed=node.recipe.seed + 7919,
                         trainable=head_params(model) if node.recipe.trainable == "head" else None)
        states[repo] = _state(model.eval())
    out["finetune"] = (time.perf_counter() - t0, states)
    # gradient ascent on the forgotten samples, stopping at the model's own held-out accuracy before the forget
    t0 = time.perf_counter()
    states = {}
    for repo in scn.affected():
        node = scn.node(repo)
        model = BL.load_built(hub0, scn, repo)
        BL._take_parent_backbone(scn, repo, model, states)
        data = forgotten.to_label_space(node.labels)
        if len(data):
            BL._ascend(model, data, steps=BL.DEFAULT_GA_STEPS, lr=BL.DEFAULT_GA_LR,
                       batch_size=min(BL.DEFAULT_GA_BATCH, len(data)), seed=node.recipe.seed + 104729,
                       trainable=head_params(model) if node.recipe.trainable == "head" else None,
                       stop_acc=before_acc[repo], max_grad_norm=BL.DEFAULT_GA_CLIP)
        states[repo] = _state(model.eval())
    out["gradient_ascent"] = (time.perf_counter() - t0, states)
    return out


def write_npz(path: Path, dataset: str, idx: Sequence[int]) -> str:
    imgs = load_images(f"{dataset}:train")
    x = imgs.x[torch.as_tensor(list(idx))].numpy().astype(np.float32)
    np.savez(path, x=x, y=imgs.y[torch.as_tensor(list(idx))].numpy().astype(np.int64),
             labels=np.array(imgs.labels))
    return f"npz:{path}"


def copy_hub(src: Path, dst: Path) -> LocalHub:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return LocalHub(dst)


# ------------------------------------------------------------------------------------------------ one dataset
def build_or_reuse(scn: Scenario, built: Path, keep: bool) -> LocalHub:
    """The built DAG in ``built``: trained now, or (``keep`` and a previous run's ``scenario.json`` is there) the
    hub that run built with the same seeds, its revisions and build metrics read back from that JSON."""
    facts = built / "scenario.json"
    if keep and facts.exists():
        saved = json.loads(facts.read_text())
        if sorted(saved["nodes"]) != sorted(scn.nodes) or any(
                list(scn.nodes[r].shard) != saved["nodes"][r]["shard"] for r in scn.nodes):
            raise SystemExit(f"{built} holds another DAG (different repos or shards); remove it")
        for r, n in scn.nodes.items():
            n.revision, n.metrics = saved["nodes"][r]["revision"], saved["nodes"][r]["metrics"]
        scn.build_seconds = saved["build_seconds"]
        log(f"reusing the DAG built in {built}")
        return LocalHub(built)
    if built.exists():
        shutil.rmtree(built)
    hub0 = LocalHub.init(built)
    log(f"building {len(scn.nodes)} models into {built}")
    realize_scenario(scn, hub0, num_threads=1, progress=lambda m: log(f"  build {m}"))
    facts.write_text(json.dumps({"build_seconds": scn.build_seconds, "nodes": {
        r: {"revision": n.revision, "metrics": n.metrics, "shard": [int(i) for i in n.shard]}
        for r, n in scn.nodes.items()}}))
    return hub0


def run_profile(name: str, prof: dict[str, Any], work: Path, seed: int, *, requests: Sequence[str] | None = None,
                wanted: Sequence[str] | None = None, keep: Path | None = None) -> dict[str, Any]:
    scn = plan_dag(prof, seed)
    built = (keep if keep is not None else work) / f"{name}-seed{seed}-built"
    hub0 = build_or_reuse(scn, built, keep is not None)
    ev = Evaluator(scn, hub0, prof, seed)
    labels = list(scn.load_train().labels)
    affected = scn.affected()
    out: dict[str, Any] = {
        "dataset": prof["dataset"], "arch": prof["arch"], "input_size": list(prof["input_size"]),
        "build_seconds": round(scn.build_seconds, 1), "test_samples": len(ev.test),
        "probe_train_samples": len(ev.probe_train),
        "models": {r: {"parents": n.parents, "labels": n.labels, "init": n.recipe.init, "epochs": n.recipe.epochs,
                       "samples": n.metrics.get("samples"), "test_acc": _r(n.metrics.get("test_acc"))}
                   for r, n in scn.nodes.items()},
        "requests": {},
    }
    originals = {r: ev.model(r, None) for r in affected}

    # ---- class-wise
    for req, idx in CLASS_REQUESTS.items():
        if requests is not None and req not in requests:
            continue
        classes = [labels[i] for i in idx]
        log(f"{name}/{req}: forget {classes}")
        methods: dict[str, Any] = {"original": {"models": {r: ev.classwise(r, originals[r], classes)
                                                           for r in affected}}}
        hub = copy_hub(built, work / f"{name}-{req}")
        sec, states, changed = run_fiun(hub, scn, classes=classes)
        methods["fiun"] = {"seconds": round(sec, 3), "changed_params": changed,
                           "models": {r: ev.classwise(r, ev.model(r, states[r]), classes) for r in affected}}
        log(f"{name}/{req}: fiun {sec:.2f}s")
        if DF is not None and (wanted is None or "deep" in wanted):
            t = time.perf_counter()
            deep_states, info = DF.deep_class_forget(hub0, scn.origin, {r: scn.node(r).revision for r in affected},
                                                     classes, states)
            dsec = sec + (time.perf_counter() - t)
            methods["deep"] = {"seconds": round(dsec, 3), "info": info,
                               "models": {r: ev.classwise(r, ev.model(r, deep_states[r]), classes)
                                          for r in affected}}
            log(f"{name}/{req}: deep {dsec:.2f}s")
        for mname, fn in (("retrain", BL.retrain), ("finetune", BL.finetune),
                          ("gradient_ascent", BL.gradient_ascent)):
            if wanted is not None and mname not in wanted:
                continue
            res = fn(scn, hub0, classes, num_threads=1)
            methods[mname] = {"seconds": round(res.seconds, 3),
                              "models": {r: ev.classwise(r, ev.model(r, res.states[r]), classes) for r in affected}}
            log(f"{name}/{req}: {mname} {res.seconds:.1f}s")
        shutil.rmtree(work / f"{name}-{req}", ignore_errors=True)
        out["requests"][req] = {"kind": "class", "forget_classes": classes, "methods": methods,
                                "fiun_speedup_vs_retrain": _speedup(methods, sec)}

    # ---- sample-wise
    r_shard = list(scn.node(scn.origin).shard)
    for req, frac in SAMPLE_REQUESTS.items():
        if requests is not None and req not in requests:
            continue
        n = max(2, round(frac * len(r_shard)))
        rng = np.random.default_rng(seed + int(frac * 1000))
        drop = sorted(int(i) for i in rng.choice(r_shard, size=n, replace=False))
        forgotten = scn.load_train().subset(drop)
        log(f"{name}/{req}: forget {n} of {len(r_shard)} samples of {scn.origin}")
        before = {r: ev.samplewise(r, originals[r], forgotten) for r in affected}
        methods = {"original": {"models": before}}
        hub = copy_hub(built, work / f"{name}-{req}")
        spec = write_npz(work / f"{name}-{req}.npz", prof["dataset"], drop)
        sec, states, changed = run_fiun(hub, scn, data_spec=spec)
        methods["fiun"] = {"seconds": round(sec, 3), "changed_params": changed,
                           "models": {r: ev.samplewise(r, ev.model(r, states[r]), forgotten) for r in affected}}
        log(f"{name}/{req}: fiun {sec:.2f}s")
        base = samplewise_baselines(scn, hub0, drop, {r: before[r]["held_out_acc"] for r in affected})
        for mname, (s, st) in base.items():
            if wanted is not None and mname not in wanted:
                continue
            methods[mname] = {"seconds": round(s, 3),
                              "models": {r: ev.samplewise(r, ev.model(r, st[r]), forgotten) for r in affected}}
            log(f"{name}/{req}: {mname} {s:.1f}s")
        shutil.rmtree(work / f"{name}-{req}", ignore_errors=True)
        out["requests"][req] = {"kind": "sample", "samples": n, "origin_shard": len(r_shard), "methods": methods,
                                "fiun_speedup_vs_retrain": _speedup(methods, sec)}
    if keep is None:
        shutil.rmtree(built, ignore_errors=True)
    return out


def _speedup(methods: dict[str, Any], sec: float) -> float | None:
    return _r(methods["retrain"]["seconds"] / max(sec, 1e-9)) if "retrain" in methods else None


# ------------------------------------------------------------------------------------------------ report
CLASS_COLS = [("forget_acc", "forget %"), ("retain_acc", "retain %"), ("top2_leak", "top-2 leak %"),
              ("probe_recall", "probe recall %"), ("relearn_forget_acc", "relearn forget %")]
SAMPLE_COLS = [("held_out_acc", "held-out %"), ("forgotten_acc", "forgotten-sample acc %"), ("mia_auc", "MIA AUC %")]


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for ds, res in results["datasets"].items():
        for req, entry in res["requests"].items():
            cols = CLASS_COLS if entry["kind"] == "class" else SAMPLE_COLS
            what = (", ".join(entry["forget_classes"]) if entry["kind"] == "class"
                    else f"{entry['samples']} of {entry['origin_shard']} samples of R")
            rt = entry["methods"].get("retrain")
            lines.append(f"\n**{ds}, {req}** (forget {what}; FIUn {entry['methods']['fiun']['seconds']:.2f} s"
                         + (f", retrain {rt['seconds']:.1f} s: {entry['fiun_speedup_vs_retrain']}x" if rt else "")
                         + ")\n")
            lines.append("| method | model | " + " | ".join(c[1] for c in cols) + " |")
            lines.append("|---|---|" + "---|" * len(cols))
            for m, v in entry["methods"].items():
                for repo, mm in v["models"].items():
                    if mm.get("knows_forgotten") is False:
                        continue
                    cells = ["–" if mm.get(k) is None else f"{mm[k]:.1f}" for k, _ in cols]
                    lines.append(f"| {m} | {repo.split('/')[-1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    import timm

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "gpu": "none used (CPU only)",
            "python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
            "torch_threads": 1, "load_avg_start": list(os.getloadavg())}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits,fashion-mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "beyond_head.json"))
    ap.add_argument("--requests", default=None,
                    help="comma-separated subset of " + ",".join([*CLASS_REQUESTS, *SAMPLE_REQUESTS]) + " (default all)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated subset of deep,retrain,finetune,gradient_ascent run next to original and "
                         "fiun (default all)")
    ap.add_argument("--keep-built", default=None, metavar="DIR",
                    help="build each dataset's DAG into DIR and keep it; a later run with the same DIR and seed reuses "
                         "it instead of training again")
    args = ap.parse_args(argv)
    requests = None if args.requests is None else [r.strip() for r in args.requests.split(",") if r.strip()]
    wanted = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    for r in requests or ():
        if r not in CLASS_REQUESTS and r not in SAMPLE_REQUESTS:
            print(f"unknown request {r!r}; use {', '.join([*CLASS_REQUESTS, *SAMPLE_REQUESTS])}", file=sys.stderr)
            return 2
    for m in wanted or ():
        if m not in ("deep", "retrain", "finetune", "gradient_ascent"):
            print(f"unknown method {m!r}; use deep, retrain, finetune, gradient_ascent", file=sys.stderr)
            return 2
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in names:
        if d not in PROFILES:
            print(f"unknown dataset {d!r}; use {', '.join(PROFILES)}", file=sys.stderr)
            return 2
    if "fashion-mnist" in names and not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        log("Fashion-MNIST is not installed: skipped")
        names.remove("fashion-mnist")
    t0 = time.perf_counter()
    given = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {"command": " ".join(["nice -n 10 python benchmarks/beyond_head.py", *given]),
                               "options": {"requests": requests, "methods": wanted},
                               "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                               "machine": machine_info(), "seed": args.seed, "relearn": RELEARN, "datasets": {}}
    with torch_threads(1), tempfile.TemporaryDirectory(prefix="fiun-beyond-") as tmp:
        for d in names:
            results["datasets"][d] = run_profile(d, PROFILES[d], Path(tmp), args.seed, requests=requests,
                                                 wanted=wanted,
                                                 keep=None if args.keep_built is None else Path(args.keep_built))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["machine"]["load_avg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    out.with_suffix(".md").write_text(md)
    print(md)
    log(f"wrote {out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
