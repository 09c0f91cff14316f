"""FIUn against retraining, fine-tuning and gradient ascent on real inheritance DAGs (FL, DDPL, IL, TL).

For each of the four scenarios of :mod:`fiun_hub.research.scenarios` this benchmark

1. builds the scenario in a fresh hub (real timm models trained on disjoint shards, sidecars with the default
   ``normalized`` estimator, lineage in the cards);
2. for a 1-class and a 4-class forget request at the scenario's origins, on a fresh copy of the built hub
   (``shutil.copytree(symlinks=True)``), runs
   - **FIUn**: :func:`fiun_hub.unlearn.plan_forget` + :func:`fiun_hub.unlearn.run_forget` at the method's
     defaults (alpha=1, lambda=0.01, normalized estimator, head only), timed end to end (plan, origin FIMs,
     dampening of every affected model, publishing every new revision; an untimed dry plan runs first so
     that imports and first reads are not counted);
   - **retrain** (the gold standard), **finetune** and **gradient_ascent** from :mod:`fiun_hub.research.baselines`
     (at their defaults), timed as they report (``BaselineResult.seconds``: the whole propagation down the
     affected set, weights kept in memory, nothing published);
3. evaluates every affected model before and after on HELD-OUT test data (a class-stratified subset of the
   dataset's test split): forget accuracy, retain accuracy (percent) and a membership-inference score.

Then a **depth sweep**: a plain chain of fine-tunes (root trained from scratch, every further model continues
from its parent on its own small shard for one epoch) of up to ``max(depths)`` models; FIUn is run and timed
on a copy of the hub taken when the chain had exactly d models, for each d; retrain and finetune are run ONCE
on the full chain and their time at depth d is the sum of their per-node times over the first d models (a
chain's prefix is redone exactly as the chain itself: each node depends on its ancestors only).

Metrics (via :func:`fiun_hub.evaluate.forget_retain_accuracy` and :func:`fiun_hub.evaluate.mia_score`):

- ``forget_acc``: accuracy on the held-out test samples of the forgotten classes the model has a head row for
  (None where it has none); ``retain_acc``: on the test samples of its other classes; argmax over the full head.
- ``mia``: SSD / bad-teaching convention: a logistic regression on the softmax entropy, fit on retain-train
  (the model's own shard minus the forgotten classes; member) against the held-out test subset (non-member),
  applied to forget-train; the percentage of forget-train predicted "member" (lower = forgotten; retrain is
  the reference). Forget-train of a model = the forget-class samples of the training shards of the model and
  of all its ancestors (all the forget data that flowed into it), at most ``--mia-per-class`` per class.

Each model's logits are computed once per weight state on one evaluation set (test subset + the training
samples the MIA needs) and the library functions are applied to them through a lookup model. FIUn only
changes the head: after a forget, if every non-head weight is bit-identical to before (checked), its logits
are its new head applied to the cached pre-logit features, which is the same computation as a full forward.

    python benchmarks/fiun_vs_baselines.py --quick   # digits + test_resnet 16x16: ~3 min on 2 cores
    python benchmarks/fiun_vs_baselines.py           # Fashion-MNIST + resnet18 28x28 (in_chans=1): ~28 min
                                                     # on a shared 2-core box (~24 CPU-minutes)

Sizes (full): 6,000-sample pool, 500-sample shards, 3 epochs from scratch (1 when continuing), fl/ddpl width 2,
tl width 3, 1,000 held-out test images; chain: 500-sample root (3 epochs) + 50-sample nodes (1 epoch). Work is
split over ``--jobs`` (default 2) worker processes with 1 torch thread each; a scenario or the depth sweep always
runs whole inside one worker, so each ratio compares timings from one process.

Writes ``benchmarks/results/fiun_vs_baselines[_quick].json`` and ``.png``; the full run also writes
``docs/benchmarks-fiun.md`` (hand-written notes after its ``<!-- notes -->`` marker are kept).
"""
from __future__ import annotations

import argparse
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

from fiun_hub.dampening import DEFAULT_ALPHA, DEFAULT_LAMBDA  # noqa: E402
from fiun_hub.data import LabeledData, load_data  # noqa: E402
from fiun_hub.errors import BadInput  # noqa: E402
from fiun_hub.evaluate import forget_retain_accuracy, mia_score  # noqa: E402
from fiun_hub.fisher import DEFAULT_ESTIMATOR  # noqa: E402
from fiun_hub.hub.local import LocalHub  # noqa: E402
from fiun_hub.models import load_model  # noqa: E402
from fiun_hub.research import baselines as BL  # noqa: E402
from fiun_hub.research.scenarios import (BATCH_SIZE, CONTINUE_LR, DEFAULT_LR, Recipe, Scenario,  # noqa: E402
                                         ScenarioNode, head_params, plan_scenario, realize_scenario, torch_threads)
from fiun_hub.unlearn import plan_forget, run_forget  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks-fiun.md"
NOTES_MARKER = "<!-- notes -->"
SCENARIO_NAMES = ("fl", "ddpl", "il", "tl")
METHODS = ("fiun", "retrain", "finetune", "gradient_ascent")
TARGETS = {
    "1-class": {"forget_acc_max": 1.0, "retain_drop_max": 2.0},
    "4-class": {"forget_acc_max": 2.0, "retain_drop_max": 5.0},
    "fiun_speedup_vs_retrain_min": 1000.0,
    "fiun_speedup_vs_finetune_min": 50.0,
    "scope": "forget/retain limits hold for EVERY affected model (held-out test data); speed-ups are ratios "
             "of wall times measured in the same run",
}
# head-row indices of the forget requests (the il root sees the first 60% of the labels, so all are < 6)
REQUEST_INDICES = {"1-class": [3], "4-class": [1, 2, 3, 5]}

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "dataset": "digits", "arch": "test_resnet", "input_size": [1, 16, 16],
        "epochs": 6, "shard_size": None, "pool_size": None,  # default pool (1260 = all of digits:train)
        "width": {"fl": 2, "ddpl": 2, "tl": 3}, "depth": {},
        "test_per_class": None,  # the whole digits:test split (540)
        "train_eval_max": 200, "mia_per_class": 50,
        "depths": [2, 5, 10, 20, 30], "chain_root_shard": 300, "chain_shard": 30, "chain_epochs": 6,
        "chain_test_per_class": None,
    },
    "full": {
        "dataset": "fashion-mnist", "arch": "resnet18", "input_size": [1, 28, 28],
        "epochs": 3, "shard_size": 500, "pool_size": 6000,
        "width": {"fl": 2, "ddpl": 2, "tl": 3}, "depth": {},
        "test_per_class": 100,  # 1,000 held-out test images (100 per class)
        "train_eval_max": 200, "mia_per_class": 50,
        "depths": [2, 5, 10, 20, 30], "chain_root_shard": 500, "chain_shard": 50, "chain_epochs": 3,
        "chain_test_per_class": 50,  # the chain's build check and FIUn accuracy use 500 test images
    },
}

T0 = time.perf_counter()
TAG = ""


def log(msg: str) -> None:
    print(f"{TAG}[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- evaluation
class _Lookup(nn.Module):
    """A 'model' whose input is a column of row indices into a precomputed logits table: lets the library's
    metric functions run on logits computed once per weight state."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives predict_logits a device
        self.register_buffer("table", logits.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


@torch.no_grad()
def prelogits(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    out = [model.forward_head(model.forward_features(x[i:i + batch_size]), pre_logits=True)
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).float()


@torch.no_grad()
def head_logits(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    return model.get_classifier()(feats).float()


class EvalSet:
    """One model's evaluation rows: the held-out test subset, then training samples (own-shard subsample for
    retain-train, lineage forget-class samples for forget-train), all in the dataset's label space."""

    def __init__(self, scn: Scenario, repo: str, test: LabeledData, all_forget: Sequence[str], *,
                 train_eval_max: int, mia_per_class: int, seed: int):
        train = scn.load_train()
        rng = np.random.default_rng(seed)
        labels = list(train.labels)
        own = np.array(scn.node(repo).shard, dtype=np.int64)
        own = np.sort(rng.permutation(own)[:train_eval_max]) if len(own) > train_eval_max else own
        lineage: set[str] = set()
        stack = [repo]
        while stack:
            r = stack.pop()
            if r not in lineage:
                lineage.add(r)
                stack.extend(scn.parents(r))
        pool = np.array(sorted({i for r in lineage for i in scn.node(r).shard}), dtype=np.int64)
        ytr = train.y.numpy()
        fpool: list[int] = []
        for c in all_forget:
            cand = pool[ytr[pool] == labels.index(c)]
            fpool.extend(int(i) for i in np.sort(rng.permutation(cand)[:mia_per_class]))
        idx = np.array(sorted(set(own.tolist()) | set(fpool)), dtype=np.int64)
        self.n_test = len(test)
        self.x = torch.cat([test.x, train.x[torch.as_tensor(idx)]])
        self.y = torch.cat([test.y, train.y[torch.as_tensor(idx)]])
        self.labels = labels
        n = len(self.y)
        self.is_test = torch.zeros(n, dtype=torch.bool)
        self.is_test[: self.n_test] = True
        self.is_own = torch.zeros(n, dtype=torch.bool)
        self.is_fpool = torch.zeros(n, dtype=torch.bool)
        pos = {int(v): self.n_test + k for k, v in enumerate(idx)}
        for i in own.tolist():
            self.is_own[pos[int(i)]] = True
        for i in fpool:
            self.is_fpool[pos[int(i)]] = True
        self.index_x = torch.arange(n, dtype=torch.float32)[:, None]

    def _ld(self, mask: torch.Tensor) -> LabeledData:
        keep = torch.nonzero(mask).flatten()
        return LabeledData(self.index_x[keep], self.y[keep], list(self.labels), "eval-rows")

    def metrics(self, logits: torch.Tensor, model_labels: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
        lk = _Lookup(logits)
        cls_rows = torch.tensor([self.labels.index(c) for c in classes], dtype=torch.long)
        in_c = torch.isin(self.y, cls_rows)
        test = self._ld(self.is_test)
        f, r = forget_retain_accuracy(lk, list(model_labels), test, list(classes))
        try:
            mia = mia_score(lk, list(model_labels), self._ld(self.is_fpool & in_c), self._ld(self.is_own & ~in_c),
                            test)
        except BadInput:  # the model knows none of the forgotten classes
            mia = None
        per = {c: forget_retain_accuracy(lk, list(model_labels), test, [c])[0] for c in classes} \
            if len(classes) > 1 else {}
        return {"forget_acc": f, "retain_acc": r, "mia": mia, "per_class": per}


def _non_head_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], heads: set[str]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k not in heads)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- helpers
def stratified_test(dataset: str, input_size: Sequence[int], per_class: int | None, seed: int) -> LabeledData:
    test = load_data(f"{dataset}:test", in_chans=input_size[0], input_size=input_size[1:])
    if per_class is None:
        return test
    rng = np.random.default_rng(seed + 12345)
    y = test.y.numpy()
    idx = np.concatenate([np.sort(rng.permutation(np.flatnonzero(y == c))[:per_class])
                          for c in range(len(test.labels))])
    return test.subset(np.sort(idx).tolist())


def copy_hub(src: Path, dst: Path) -> LocalHub:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return LocalHub(dst)


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(float(v), nd)


def machine_info() -> dict[str, Any]:
    import timm

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem = None
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "memory_gib": mem,
            "gpu": "none used (CPU only)", "python": sys.version.split()[0], "torch": torch.__version__,
            "timm": timm.__version__, "torch_threads": 1, "load_avg_start": list(os.getloadavg())}


# ----------------------------------------------------------------------------------------------- scenarios
def run_scenario(name: str, prof: dict[str, Any], work: Path, test: LabeledData, requests: dict[str, list[str]],
                 seed: int, out: dict[str, Any]) -> None:
    t_s = time.perf_counter()
    built_dir = work / f"{name}-built"
    hub0 = LocalHub.init(built_dir)
    scn = plan_scenario(name, dataset=prof["dataset"], arch=prof["arch"], depth=prof["depth"].get(name),
                        width=prof["width"].get(name) if name != "il" else None, epochs=prof["epochs"],
                        shard_size=prof["shard_size"], pool_size=prof["pool_size"], seed=seed, org="bench",
                        input_size=prof["input_size"], forget_classes=requests["1-class"])
    scn._test = test  # the build's own held-out check uses the same test subset
    log(f"{name}: building {len(scn.nodes)} models")
    realize_scenario(scn, hub0, num_threads=1, progress=lambda m: log(f"  build {m}"))
    affected = scn.affected()
    all_forget = list(dict.fromkeys(c for cs in requests.values() for c in cs))
    build = {"seconds": round(scn.build_seconds, 1), "depth": scn.depth, "models": len(scn.nodes),
             "origins": list(scn.origins), "affected": affected,
             "nodes": {r: {"parents": n.parents, "relation": n.relation, "labels": n.labels,
                           "samples": n.metrics.get("samples"), "epochs": n.recipe.epochs,
                           "init": n.recipe.init, "test_acc": _r(n.metrics.get("test_acc")),
                           "train_seconds": _r(n.metrics.get("train_seconds"))}
                       for r, n in scn.nodes.items()}}
    log(f"{name}: built in {scn.build_seconds:.1f}s; affected {len(affected)}")

    # ---- before: one forward per model, pre-logit features cached
    evsets: dict[str, EvalSet] = {}
    before: dict[str, dict[str, Any]] = {}
    for k, repo in enumerate(affected):
        model, config, _ = load_model(hub0, repo, scn.node(repo).revision)
        ev = EvalSet(scn, repo, test, all_forget, train_eval_max=prof["train_eval_max"],
                     mia_per_class=prof["mia_per_class"], seed=seed + k)
        feats = prelogits(model, ev.x)
        before[repo] = {"labels": list(config.labels), "state": _state(model), "feats": feats,
                        "logits": head_logits(model, feats), "heads": set(head_params(model))}
        evsets[repo] = ev
        if k == 0:  # the lookup path gives exactly what the library gives on the model itself
            direct = forget_retain_accuracy(model, config.labels, test, requests["1-class"])
            via = ev.metrics(before[repo]["logits"], config.labels, requests["1-class"])
            for a, b in zip(direct, (via["forget_acc"], via["retain_acc"])):
                if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-6):
                    raise RuntimeError(f"evaluation check failed on {repo}: {direct} vs {via}")

    def model_state_metrics(repo: str, logits: torch.Tensor, classes: list[str], ref: dict[str, Any]):
        m = evsets[repo].metrics(logits, before[repo]["labels"], classes)
        return {"forget_acc_before": _r(ref["forget_acc"]), "forget_acc": _r(m["forget_acc"]),
                "retain_acc_before": _r(ref["retain_acc"]), "retain_acc": _r(m["retain_acc"]),
                "mia_before": _r(ref["mia"]), "mia": _r(m["mia"]),
                **({"forget_acc_per_class": {c: _r(v) for c, v in m["per_class"].items()}} if m["per_class"] else {})}

    for req, classes in requests.items():
        key = f"{name}/{req}"
        log(f"{key}: forget {classes} at {scn.origins}")
        ref = {r: evsets[r].metrics(before[r]["logits"], before[r]["labels"], classes) for r in affected}
        hub = copy_hub(built_dir, work / f"{name}-{req}")
        methods: dict[str, Any] = {}

        # ---- FIUn, end to end
        plan_forget(hub, scn.origins, classes=classes)  # dry plan: warms imports and first reads, untimed
        t = time.perf_counter()
        plan = plan_forget(hub, scn.origins, classes=classes)
        res = run_forget(hub, plan)
        fiun_s = time.perf_counter() - t
        models = {}
        head_only = True
        for repo in affected:
            model, config, cid = load_model(hub, repo)
            if cid != res.revisions[repo]["to"]:
                raise RuntimeError(f"{repo}: head {cid} is not FIUn's new revision")
            st = _state(model)
            if _non_head_equal(st, before[repo]["state"], before[repo]["heads"]):
                logits = head_logits(model, before[repo]["feats"])
            else:
                head_only = False
                logits = head_logits(model, prelogits(model, evsets[repo].x))
            models[repo] = {**model_state_metrics(repo, logits, classes, ref[repo]),
                            "changed_params": res.stats[repo]["changed"]}
        methods["fiun"] = {"seconds": round(fiun_s, 4), "phases": {k: round(v, 4) for k, v in res.seconds.items()},
                           "head_only": head_only, "models": models}
        log(f"{key}: fiun {fiun_s:.2f}s")

        # ---- baselines (they read the built revisions; nothing is published)
        for mname, fn in (("retrain", BL.retrain), ("finetune", BL.finetune),
                          ("gradient_ascent", BL.gradient_ascent)):
            r = fn(scn, hub, classes, num_threads=1)
            models = {}
            for repo in affected:
                model, _, _ = load_model(hub, repo, scn.node(repo).revision)
                model.load_state_dict(r.states[repo], strict=True)
                logits = head_logits(model, prelogits(model, evsets[repo].x))
                models[repo] = model_state_metrics(repo, logits, classes, ref[repo])
            methods[mname] = {"seconds": round(r.seconds, 3),
                              "node_seconds": {k: round(v, 3) for k, v in r.node_seconds.items()},
                              "models": models}
            if mname == "gradient_ascent":
                methods[mname]["steps"] = {k: v.get("steps") for k, v in r.info.items()}
            del r
            log(f"{key}: {mname} {methods[mname]['seconds']:.1f}s")
        shutil.rmtree(work / f"{name}-{req}", ignore_errors=True)
        entry = {"forget_classes": classes, "origins": list(scn.origins), "affected": affected,
                 "methods": methods}
        entry["summary"] = summarize(entry, req)
        entry["pass"] = verdict(entry["summary"], req)
        out["scenarios"][key] = entry
        log(f"{key}: fiun pass={entry['pass']}")
    out["builds"][name] = build
    out["builds"][name]["scenario_seconds"] = round(time.perf_counter() - t_s, 1)
    shutil.rmtree(built_dir, ignore_errors=True)


def summarize(entry: dict[str, Any], req: str) -> dict[str, Any]:
    out = {}
    fiun_s = entry["methods"]["fiun"]["seconds"]
    for m, res in entry["methods"].items():
        vals = list(res["models"].values())
        fa = [v["forget_acc"] for v in vals if v["forget_acc"] is not None]
        fb = [v["forget_acc_before"] for v in vals if v["forget_acc_before"] is not None]
        drops = [v["retain_acc_before"] - v["retain_acc"] for v in vals
                 if v["retain_acc"] is not None and v["retain_acc_before"] is not None]
        mia = [v["mia"] for v in vals if v["mia"] is not None]
        miab = [v["mia_before"] for v in vals if v["mia_before"] is not None]
        lim = TARGETS[req]
        out[m] = {
            "worst_forget_acc": _r(max(fa)) if fa else None,
            "worst_forget_acc_before": _r(max(fb)) if fb else None,
            "min_forget_acc_before": _r(min(fb)) if fb else None,
            "worst_retain_drop": _r(max(drops)) if drops else None,
            "mean_mia": _r(sum(mia) / len(mia)) if mia else None,
            "mean_mia_before": _r(sum(miab) / len(miab)) if miab else None,
            "seconds": res["seconds"],
            "fiun_speedup": _r(res["seconds"] / fiun_s, 1) if fiun_s > 0 else None,
            "forget_ok": (max(fa) <= lim["forget_acc_max"]) if fa else None,
            "retain_ok": (max(drops) <= lim["retain_drop_max"]) if drops else None,
        }
    return out


def verdict(summary: dict[str, Any], req: str) -> dict[str, Any]:
    f = summary["fiun"]
    sr, sf = summary["retrain"]["fiun_speedup"], summary["finetune"]["fiun_speedup"]
    v = {
        "forget": bool(f["forget_ok"]),
        "retain": bool(f["retain_ok"]),
        "speed_vs_retrain": bool(sr is not None and sr >= TARGETS["fiun_speedup_vs_retrain_min"]),
        "speed_vs_finetune": bool(sf is not None and sf >= TARGETS["fiun_speedup_vs_finetune_min"]),
    }
    v["accuracy_targets"] = v["forget"] and v["retain"]
    v["all"] = all(v[k] for k in ("forget", "retain", "speed_vs_retrain", "speed_vs_finetune"))
    return v


# ----------------------------------------------------------------------------------------------- depth sweep
def plan_chain(prof: dict[str, Any], n_models: int, seed: int, forget: list[str]) -> Scenario:
    """A plain chain of fine-tunes: chain-0 from scratch on its shard, chain-i continues from chain-(i-1) for
    one epoch on its own disjoint shard (all labels, same head order)."""
    input_size = tuple(prof["input_size"])
    train = load_data(f"{prof['dataset']}:train", in_chans=input_size[0], input_size=input_size[1:])
    labels = list(train.labels)
    rng = np.random.default_rng(seed + 77)
    y = train.y.numpy()
    per = [list(rng.permutation(np.flatnonzero(y == c))) for c in range(len(labels))]
    order = [int(p[j]) for j in range(max(len(p) for p in per)) for p in per if j < len(p)]
    need = prof["chain_root_shard"] + (n_models - 1) * prof["chain_shard"]
    if need > len(order):
        raise BadInput(f"the chain needs {need} training samples; the split has {len(order)}")
    lr = DEFAULT_LR
    s = seed * 1000 + 500
    nodes: dict[str, ScenarioNode] = {}
    pos = prof["chain_root_shard"]
    root = "bench/chain-00"
    nodes[root] = ScenarioNode(root, "stage", [], None, labels, sorted(order[:pos]),
                               Recipe("scratch", prof["chain_epochs"], lr, BATCH_SIZE, s, s))
    prev = root
    for i in range(1, n_models):
        repo = f"bench/chain-{i:02d}"
        shard = sorted(order[pos:pos + prof["chain_shard"]])
        pos += prof["chain_shard"]
        nodes[repo] = ScenarioNode(repo, "stage", [prev], "finetune", labels, shard,
                                   Recipe("parent", 1, lr * CONTINUE_LR / DEFAULT_LR, BATCH_SIZE, s + i, s + i))
        prev = repo
    scn = Scenario(name="chain", dataset=prof["dataset"], arch=prof["arch"], input_size=input_size, nodes=nodes,
                   origins=[root], forget_classes=list(forget), seed=seed, org="bench")
    scn._train = train
    return scn


def run_depth_sweep(prof: dict[str, Any], work: Path, test: LabeledData, forget: list[str], seed: int) -> dict:
    depths = sorted(set(int(d) for d in prof["depths"]))
    n = max(depths)
    scn = plan_chain(prof, n, seed, forget)
    scn._test = test
    hub_dir = work / "chain-built"
    hub0 = LocalHub.init(hub_dir)
    snaps: dict[int, Path] = {}
    count = [0]

    def progress(msg: str) -> None:
        count[0] += 1
        if count[0] in depths:  # the hub now holds exactly count[0] models: keep a copy for FIUn at this depth
            snaps[count[0]] = work / f"chain-d{count[0]}"
            shutil.copytree(hub_dir, snaps[count[0]], symlinks=True)
        if count[0] in depths or count[0] % 5 == 0:
            log(f"  chain build {msg}")

    log(f"depth sweep: building a chain of {n} models")
    realize_scenario(scn, hub0, num_threads=1, progress=progress)
    log(f"depth sweep: built in {scn.build_seconds:.1f}s")
    fiun: dict[int, dict[str, Any]] = {}
    deepest_hub = None
    for d in depths:
        hub = LocalHub(snaps[d])
        plan_forget(hub, scn.origins, classes=forget)  # dry, untimed
        t = time.perf_counter()
        plan = plan_forget(hub, scn.origins, classes=forget)
        res = run_forget(hub, plan)
        secs = time.perf_counter() - t
        fiun[d] = {"seconds": round(secs, 4), "affected": len(res.revisions),
                   "phases": {k: round(v, 4) for k, v in res.seconds.items()}}
        log(f"depth {d}: fiun {secs:.2f}s over {len(res.revisions)} models")
        if d == n:
            deepest_hub = hub
        else:
            shutil.rmtree(snaps[d], ignore_errors=True)
    # accuracy of FIUn on every model of the deepest chain (held-out test subset; forget/retain only)
    acc = {}
    with torch_threads(1):
        for repo in scn.repos:
            m0, cfg, _ = load_model(hub0, repo, scn.node(repo).revision)
            m1, _, _ = load_model(deepest_hub, repo)
            idx_rows = LabeledData(torch.arange(len(test), dtype=torch.float32)[:, None], test.y, test.labels)
            feats = prelogits(m0, test.x)
            f0, r0 = forget_retain_accuracy(_Lookup(head_logits(m0, feats)), cfg.labels, idx_rows, forget)
            if _non_head_equal(_state(m0), _state(m1), set(head_params(m0))):
                f1, r1 = forget_retain_accuracy(_Lookup(head_logits(m1, feats)), cfg.labels, idx_rows, forget)
            else:
                f1, r1 = forget_retain_accuracy(m1, cfg.labels, test, forget)
            acc[repo] = {"forget_acc_before": _r(f0), "forget_acc": _r(f1), "retain_acc_before": _r(r0),
                         "retain_acc": _r(r1)}
    shutil.rmtree(snaps[n], ignore_errors=True)
    log("depth sweep: retrain of the whole chain")
    rt = BL.retrain(scn, hub0, forget, num_threads=1)
    log(f"depth sweep: retrain {rt.seconds:.1f}s; finetune")
    ft = BL.finetune(scn, hub0, forget, num_threads=1)
    log(f"depth sweep: finetune {ft.seconds:.1f}s")
    repos = scn.repos
    rows = []
    for d in depths:
        r_s = sum(rt.node_seconds[r] for r in repos[:d])
        f_s = sum(ft.node_seconds[r] for r in repos[:d])
        fs = fiun[d]["seconds"]
        rows.append({"depth": d, "models": d, "fiun_seconds": fs, "retrain_seconds": round(r_s, 2),
                     "finetune_seconds": round(f_s, 2), "retrain_over_fiun": _r(r_s / fs, 1),
                     "finetune_over_fiun": _r(f_s / fs, 1), "fiun_phases": fiun[d]["phases"],
                     "speed_vs_retrain_ok": r_s / fs >= TARGETS["fiun_speedup_vs_retrain_min"],
                     "speed_vs_finetune_ok": f_s / fs >= TARGETS["fiun_speedup_vs_finetune_min"]})
    fa = [v["forget_acc"] for v in acc.values() if v["forget_acc"] is not None]
    drops = [v["retain_acc_before"] - v["retain_acc"] for v in acc.values()]
    shutil.rmtree(hub_dir, ignore_errors=True)
    return {
        "topology": "plain chain of fine-tunes: chain-00 from scratch "
                    f"({prof['chain_epochs']} epochs on {prof['chain_root_shard']} samples), each further model "
                    f"continues from its parent for 1 epoch on its own {prof['chain_shard']} samples",
        "forget_classes": forget, "origin": scn.origins[0], "build_seconds": round(scn.build_seconds, 1),
        "timing": "FIUn: measured at each depth on a copy of the hub taken when the chain had that many models "
                  "(plan + run_forget, end to end). retrain/finetune: one run over the whole chain; the time at "
                  "depth d is the sum of their per-node times over the first d models.",
        "rows": rows,
        "retrain_node_seconds": {k: round(v, 3) for k, v in rt.node_seconds.items()},
        "finetune_node_seconds": {k: round(v, 3) for k, v in ft.node_seconds.items()},
        "retrain_total_seconds": round(rt.seconds, 2), "finetune_total_seconds": round(ft.seconds, 2),
        "fiun_accuracy_deepest": {"models": acc, "worst_forget_acc": _r(max(fa)) if fa else None,
                                  "worst_retain_drop": _r(max(drops)) if drops else None},
    }


# ----------------------------------------------------------------------------------------------- outputs
def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = results.get("depth_sweep")
    fig, axes = plt.subplots(1, 2 if sw else 1, figsize=(14 if sw else 9, 4.8))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    keys = list(results["scenarios"])
    colors = {"fiun": "tab:green", "retrain": "tab:red", "finetune": "tab:orange", "gradient_ascent": "tab:blue"}
    w = 0.2
    for j, m in enumerate(METHODS):
        vals = [results["scenarios"][k]["methods"][m]["seconds"] for k in keys]
        ax.bar(np.arange(len(keys)) + (j - 1.5) * w, vals, w, label=m, color=colors[m])
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(keys)))
    ax.set_xticklabels(keys, rotation=30, ha="right")
    ax.set_ylabel("wall seconds (log)")
    ax.set_title(f"forget request, whole affected set ({results['dataset']}, {results['model']})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    if sw:
        ax = axes[1]
        d = [r["depth"] for r in sw["rows"]]
        for m, k in (("fiun", "fiun_seconds"), ("retrain", "retrain_seconds"), ("finetune", "finetune_seconds")):
            ax.plot(d, [r[k] for r in sw["rows"]], "o-", label=m, color=colors[m])
        ax.set_yscale("log")
        ax.set_xlabel("models in the chain (depth)")
        ax.set_ylabel("wall seconds (log)")
        ax.set_title("chain of fine-tunes: forget at the root")
        ax.legend(fontsize=8)
        ax.grid(which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "✓" if v else "✗"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _secs(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def render_md(results: dict[str, Any]) -> str:
    p = results["sizes"]
    m = results["machine"]
    L = [
        "# FIUn vs retrain, finetune and gradient ascent (FL, DDPL, IL, TL)",
        "",
        f"Generated by `{results['command']}` on {results['date']} "
        f"(total {results['total_seconds'] / 60:.1f} min). Raw numbers: `benchmarks/results/"
        f"{results['json_name']}`; plot: `benchmarks/results/{results['png_name']}`.",
        "",
        f"- **Machine**: {m['cpu']}, {m['cpus']} CPU cores, {m['memory_gib']} GiB, no GPU; shared with other "
        f"jobs (load average at start {m['load_avg_start'][0]:.1f}, at end {m.get('load_avg_end', [0])[0]:.1f}); "
        f"torch {m['torch']} (1 thread), timm {m['timm']}, Python {m['python']}.",
        f"- **Data / model**: `{results['dataset']}` at {p['input_size'][1]}x{p['input_size'][2]} "
        f"(in_chans={p['input_size'][0]}), timm `{results['model']}`. Training pool {p['pool_size'] or 'default'} "
        f"samples, shards of {p['shard_size'] or 'pool / (width+1)'} samples, {p['epochs'] or 10} epochs from "
        f"scratch (models that continue from parents: max(1, epochs // 3)), batch 32, Adam. Widths "
        f"{p['width']}; depths: scenario defaults (fl 4, ddpl 2, il 3, tl 1).",
        f"- **Held-out evaluation**: {results['test_samples']} test images "
        f"({'all of the test split' if p['test_per_class'] is None else str(p['test_per_class']) + ' per class'}). "
        f"MIA: SSD convention (entropy, logistic regression fit on retain-train vs test, % of forget-train "
        f"predicted member); retain-train ≤ {p['train_eval_max']} samples of the model's own shard, forget-train "
        f"≤ {p['mia_per_class']} per class from the shards of the model and its ancestors.",
        f"- **FIUn**: defaults alpha={results['fiun_defaults']['alpha']}, lambda={results['fiun_defaults']['lambda']}, "
        f"estimator `{results['fiun_defaults']['estimator']}`, head only, 1 worker; timed end to end "
        f"(plan + run_forget incl. publishing). Baselines at their defaults, timed as they report.",
        f"- **Forget requests**: {', '.join(f'{k}: `{v}`' for k, v in results['requests'].items())}, "
        f"at each scenario's origin(s).",
        f"- **Processes**: {len(results['parts'])} worker process(es), 1 torch thread each; each scenario and the "
        f"depth sweep run whole inside one worker, so every ratio compares timings from the same process. "
        + "; ".join(f"worker {k}: {', '.join(pt['tasks'])} ({pt['wall_seconds'] / 60:.1f} min wall, "
                    f"{pt['cpu_seconds'] / 60:.1f} min CPU)" for k, pt in enumerate(results["parts"])) + ".",
        "",
        "## Per scenario",
        "",
        "Worst = over every affected model. Forget % and MIA are shown before → after; Δretain is the largest "
        "drop (before − after, points). Speed-up = this method's seconds / FIUn's seconds, same run.",
        "",
        "| scenario | affected | method | worst forget % | worst Δretain | mean MIA % | seconds | FIUn speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, e in results["scenarios"].items():
        for j, meth in enumerate(METHODS):
            s = e["summary"][meth]
            head = f"{key} | {len(e['affected'])}" if j == 0 else " | "
            L.append(f"| {head} | {meth} | {_f(s['worst_forget_acc_before'])} → {_f(s['worst_forget_acc'])} | "
                     f"{_f(s['worst_retain_drop'])} | {_f(s['mean_mia_before'])} → {_f(s['mean_mia'])} | "
                     f"{_secs(s['seconds'])} | {'1×' if meth == 'fiun' else _f(s['fiun_speedup']) + '×'} |")
    L += ["", "## Targets (FIUn)", "",
          "1 class: forget ≤ 1 % and Δretain ≤ 2 points on every affected model; 4 classes: ≤ 2 % and ≤ 5 points; "
          "FIUn ≥ 1000× faster than retrain and ≥ 50× faster than finetune.", "",
          "| scenario | forget | retain | ≥1000× retrain | ≥50× finetune | all |", "|---|---|---|---|---|---|"]
    for key, e in results["scenarios"].items():
        v, s = e["pass"], e["summary"]
        L.append(f"| {key} | {_f(v['forget'])} ({_f(s['fiun']['worst_forget_acc'])} %) | "
                 f"{_f(v['retain'])} ({_f(s['fiun']['worst_retain_drop'])}) | {_f(v['speed_vs_retrain'])} "
                 f"({_f(s['retrain']['fiun_speedup'])}×) | {_f(v['speed_vs_finetune'])} "
                 f"({_f(s['finetune']['fiun_speedup'])}×) | {_f(v['all'])} |")
    base_ok = []
    for meth in ("retrain", "finetune", "gradient_ascent"):
        ok = [k for k, e in results["scenarios"].items()
              if e["summary"][meth]["forget_ok"] and e["summary"][meth]["retain_ok"]]
        base_ok.append(f"{meth} {len(ok)}/{len(results['scenarios'])}")
    L += ["", "For comparison, the same accuracy targets met by the baselines: " + ", ".join(base_ok) + "."]
    sw = results.get("depth_sweep")
    if sw:
        L += ["", "## Depth sweep", "", f"{sw['topology']}; forget `{sw['forget_classes']}` at the root. "
              f"{sw['timing']} Accuracy check on {results.get('chain_test_samples')} held-out test images.", "",
              "| models (depth) | FIUn s | retrain s | finetune s | retrain / FIUn | finetune / FIUn |",
              "|---|---|---|---|---|---|"]
        for r in sw["rows"]:
            L.append(f"| {r['depth']} | {_secs(r['fiun_seconds'])} | {_secs(r['retrain_seconds'])} | "
                     f"{_secs(r['finetune_seconds'])} | {_f(r['retrain_over_fiun'])}× | {_f(r['finetune_over_fiun'])}× |")
        a = sw["fiun_accuracy_deepest"]
        L += ["", f"FIUn on the deepest chain ({max(r['depth'] for r in sw['rows'])} models): worst forget "
              f"{_f(a['worst_forget_acc'])} %, worst Δretain {_f(a['worst_retain_drop'])} points."]
    return "\n".join(L) + "\n"


def write_md(results: dict[str, Any], path: Path) -> None:
    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    path.write_text(render_md(results) + "\n" + NOTES_MARKER + (notes if notes else "\n"))


# ----------------------------------------------------------------------------------------------- main
TASK_WEIGHT = {"fl": 4.0, "ddpl": 4.0, "il": 2.5, "tl": 2.5, "sweep": 3.0}  # rough relative cost


def split_tasks(tasks: list[str], jobs: int) -> list[list[str]]:
    """Greedy longest-first assignment of tasks to ``jobs`` groups (each group keeps the canonical order)."""
    groups: list[list[str]] = [[] for _ in range(max(1, jobs))]
    load = [0.0] * len(groups)
    for t in sorted(tasks, key=lambda t: -TASK_WEIGHT[t]):
        k = load.index(min(load))
        groups[k].append(t)
        load[k] += TASK_WEIGHT[t]
    order = {t: i for i, t in enumerate(tasks)}
    return [sorted(g, key=order.get) for g in groups if g]


def _cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global TAG
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits + test_resnet at 16x16 (a few minutes)")
    ap.add_argument("--scenarios", default=",".join(SCENARIO_NAMES), help="comma list of fl,ddpl,il,tl")
    ap.add_argument("--no-depth-sweep", action="store_true")
    ap.add_argument("--depths", help="comma list of chain lengths (default 2,5,10,20,30)")
    ap.add_argument("--epochs", type=int, help="epochs from scratch (profile default: quick 6, full 3)")
    ap.add_argument("--shard-size", type=int, help="samples per shard (full default %d)" % PROFILES["full"]["shard_size"])
    ap.add_argument("--pool-size", type=int, help="train samples dealt at most (full default 6000)")
    ap.add_argument("--test-per-class", type=int, help="held-out test images per class (full default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2,
                    help="worker processes (1 torch thread each); scenarios and the depth sweep are dealt to them "
                         "whole, so every ratio compares timings taken in the same process (default 2)")
    ap.add_argument("--work", type=Path, help="scratch folder for the hubs (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/fiun_vs_baselines[_quick].json)")
    ap.add_argument("--md", type=Path, help=f"Markdown path (full run default: {DOC.relative_to(ROOT)}; "
                                            "quick: none)")
    ap.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)  # internal: a worker's partial JSON
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    TAG = args.tag
    prof = json.loads(json.dumps(PROFILES["quick" if args.quick else "full"]))
    for k in ("epochs", "shard_size", "pool_size", "test_per_class"):
        if getattr(args, k) is not None:
            prof[k] = getattr(args, k)
    if args.depths:
        prof["depths"] = [int(v) for v in args.depths.split(",")]
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in names if s not in SCENARIO_NAMES]
    if bad:
        ap.error(f"unknown scenario(s) {bad}")
    suffix = "_quick" if args.quick else ""
    out_path = args.out or RESULTS / f"fiun_vs_baselines{suffix}.json"
    png_path = out_path.with_suffix(".png")
    md_path = args.md if args.md is not None else (None if args.quick else DOC)
    raw_argv = list(argv if argv is not None else sys.argv[1:])

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    test = stratified_test(prof["dataset"], prof["input_size"], prof["test_per_class"], args.seed)
    chain_test = stratified_test(prof["dataset"], prof["input_size"], prof["chain_test_per_class"], args.seed)
    labels = list(test.labels)
    requests = {k: [labels[i] for i in v] for k, v in REQUEST_INDICES.items()}
    results: dict[str, Any] = {
        "dataset": prof["dataset"], "model": prof["arch"], "machine": machine_info(),
        "command": "python benchmarks/fiun_vs_baselines.py" + "".join(" " + a for a in raw_argv),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "json_name": out_path.name, "png_name": png_path.name,
        "sizes": prof, "test_samples": len(test), "chain_test_samples": len(chain_test), "requests": requests,
        "fiun_defaults": {"alpha": DEFAULT_ALPHA, "lambda": DEFAULT_LAMBDA, "estimator": DEFAULT_ESTIMATOR},
        "mia": "SSD convention (fiun_hub.evaluate.mia_score): entropy feature, logistic regression fit on "
               "retain-train (model's own shard minus the forgotten classes, member) vs the held-out test subset "
               "(non-member), applied to forget-train (forget-class samples of the shards of the model and its "
               "ancestors); % predicted member, lower = forgotten, retrain is the reference",
        "targets": TARGETS, "scenarios": {}, "builds": {}, "depth_sweep": None, "parts": [],
    }
    tasks = names + ([] if args.no_depth_sweep else ["sweep"])
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="fiun-vs-baselines-")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)

    def save(path: Path) -> None:
        results["total_seconds"] = round(time.perf_counter() - t_start, 1)
        results["machine"]["load_avg_end"] = list(os.getloadavg())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")

    try:
        if args.part_out is not None or args.jobs <= 1 or len(tasks) <= 1:
            with torch_threads(1):
                for name in names:
                    run_scenario(name, prof, work, test, requests, args.seed, results)
                    save(args.part_out or out_path)
                if "sweep" in tasks:
                    results["depth_sweep"] = run_depth_sweep(prof, work, chain_test, requests["1-class"], args.seed)
            results["parts"] = [{"tasks": tasks, "wall_seconds": round(time.perf_counter() - t_start, 1),
                                 "cpu_seconds": round(_cpu_seconds(), 1)}]
            if args.part_out is not None:
                save(args.part_out)
                return results
        else:
            import subprocess

            keep = []
            if args.quick:
                keep.append("--quick")
            for flag, val in (("--depths", args.depths), ("--epochs", args.epochs), ("--shard-size", args.shard_size),
                              ("--pool-size", args.pool_size), ("--test-per-class", args.test_per_class),
                              ("--seed", args.seed)):
                if val is not None:
                    keep += [flag, str(val)]
            groups = split_tasks(tasks, args.jobs)
            procs = []
            for k, group in enumerate(groups):
                sc = [t for t in group if t != "sweep"]
                cmd = [sys.executable, str(Path(__file__).resolve()), *keep, "--scenarios", ",".join(sc),
                       "--part-out", str(work / f"part{k}.json"), "--work", str(work / f"part{k}"),
                       "--tag", f"{'AB'[k] if k < 2 else k} "]
                if "sweep" not in group:
                    cmd.append("--no-depth-sweep")
                log(f"worker {k}: {group}")
                procs.append((group, subprocess.Popen(cmd)))
            for k, (group, proc) in enumerate(procs):
                if proc.wait() != 0:
                    raise SystemExit(f"worker {k} ({group}) failed with exit code {proc.returncode}")
            for k, (group, _) in enumerate(procs):
                part = json.loads((work / f"part{k}.json").read_text())
                results["scenarios"].update(part["scenarios"])
                results["builds"].update(part["builds"])
                if part.get("depth_sweep"):
                    results["depth_sweep"] = part["depth_sweep"]
                results["parts"] += part["parts"]
            order = [f"{n}/{r}" for n in names for r in requests]
            results["scenarios"] = {k: results["scenarios"][k] for k in order if k in results["scenarios"]}
    finally:
        if tmp is not None:
            tmp.cleanup()
    met = {k: e["pass"]["all"] for k, e in results["scenarios"].items()}
    results["all_targets_met"] = all(met.values()) if met else None
    results["accuracy_targets_met"] = all(e["pass"]["accuracy_targets"] for e in results["scenarios"].values()) \
        if met else None
    save(out_path)
    plot(results, png_path)
    if md_path is not None:
        write_md(results, md_path)
    log(f"done in {results['total_seconds']:.0f}s: {out_path}")
    print(render_md(results))
    return results


if __name__ == "__main__":
    main()
