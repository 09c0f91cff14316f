"""Held-out cost of sample-wise forgets on a second DAG: the unit tests' trained digits DAG (tests/test_forget.py:
root on 300 samples of digits 0-7, two fine-tuned children, their merged grandchild, an IL child with labels 9, 8
and the root's reversed), through the real ``forget --data`` path (plan, run, publish on a LocalHub copy).

Per seeded draw of 1% / 5% of the root's shard and per rule: every affected model's held-out accuracy drop
(``fiun_hub.evaluate.sample_forget_metrics`` on digits:test) and the head entries changed. No retraining here
(held-out accuracy only): ``benchmarks/ablation_samplewise.py`` measures forgotten-sample accuracy and MIA.

    nice -n 10 python benchmarks/samplewise_testdag.py   # writes benchmarks/results/samplewise_testdag.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import fiun_hub.dampening as D  # noqa: E402
import test_forget as TF  # noqa: E402
from fiun_hub.data import load_images  # noqa: E402
from fiun_hub.evaluate import sample_forget_metrics  # noqa: E402
from fiun_hub.models import load_model  # noqa: E402
from fiun_hub.research.scenarios import torch_threads  # noqa: E402
from fiun_hub.unlearn import forget  # noqa: E402
from test_forget_samplewise import root_shard  # noqa: E402

_REAL = D.sample_forget_update


def old_rule(params, labels, model_fim, class_fims, counts, mfim, forgotten_counts, head_params, *, alpha, lam,
             inert=()):
    """The rule before issue 16 part 3: class_forget_update with no class (the model FIM, no budget, toward 0)."""
    return D.class_forget_update(params, labels, model_fim, class_fims, counts, mfim, [], head_params, alpha=alpha,
                                 lam=lam, inert=inert)


RULES = {
    "old": (old_rule, 1.0, 0.01),
    "cls alpha=2 (no budget)": (functools.partial(_REAL, topk=None), 2.0, 0.01),
    "cls alpha=5 (no budget)": (functools.partial(_REAL, topk=None), 5.0, 0.01),
    "cls topk=5": (functools.partial(_REAL, topk=5), 1.0, 0.01),
    "cls topk=10": (functools.partial(_REAL, topk=10), 1.0, 0.01),
    "cls topk=20 (default)": (_REAL, None, None),
    "cls topk=40": (functools.partial(_REAL, topk=40), 1.0, 0.01),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "samplewise_testdag.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="sw-testdag-"))
    out = {"command": "nice -n 10 python benchmarks/samplewise_testdag.py",
           "machine": "2 shared CPU cores, no GPU, torch 1 thread", "runs": {}}
    try:
        with torch_threads(1):
            TF.build_trained_dag(work)
            test, imgs, shard = TF.digits("test"), load_images("digits:train"), root_shard()
            hub0 = TF.LocalHub(work / "hub")
            before_models = {r: load_model(hub0, r)[:2] for r in TF.AFFECTED}
            for seed in (int(s) for s in args.seeds.split(",")):
                for frac in (0.01, 0.05):
                    n = max(2, round(frac * len(shard)))
                    drop = sorted(int(i) for i in np.random.default_rng(seed).choice(shard, size=n, replace=False))
                    idx = torch.as_tensor(drop)
                    npz = work / "forget.npz"
                    np.savez(npz, x=imgs.x[idx].numpy().astype(np.float32), y=imgs.y[idx].numpy().astype(np.int64),
                             labels=np.array(imgs.labels))
                    forgotten = TF.digits("train").subset(drop)
                    before = {r: sample_forget_metrics(m, c.labels, forgotten, test)["held_out_acc"]
                              for r, (m, c) in before_models.items()}
                    key = f"seed {seed}, {n} samples ({frac:.0%})"
                    out["runs"][key] = {"before_held_out": {r: round(v, 2) for r, v in before.items()}, "rules": {}}
                    for name, (fn, alpha, lam) in RULES.items():
                        D.sample_forget_update = fn
                        try:
                            shutil.rmtree(work / "copy", ignore_errors=True)
                            hub = TF.copy_hub(work / "hub", work / "copy")
                            _, res = forget(hub, [TF.R], data_spec=f"npz:{npz}", alpha=alpha, lam=lam)
                        finally:
                            D.sample_forget_update = _REAL
                        drops, changed = {}, {}
                        for r in TF.AFFECTED:
                            m, c, _ = load_model(hub, r)
                            drops[r] = round(before[r] - sample_forget_metrics(m, c.labels, forgotten,
                                                                               test)["held_out_acc"], 2)
                            changed[r] = res.stats[r]["changed"]
                        out["runs"][key]["rules"][name] = {"held_out_drop": drops, "changed": changed,
                                                           "max_drop": max(drops.values())}
                        print(f"[{time.perf_counter() - t0:6.1f}s] {key} {name}: max drop {max(drops.values()):.1f} "
                              f"{drops} changed {changed}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["max_drop_per_rule"] = {name: max(r["rules"][name]["max_drop"] for r in out["runs"].values())
                                for name in RULES}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["max_drop_per_rule"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
