"""The no-sidecar fallback against each repo's own sidecar, and sequences of forgets (issue 13, parts 2 and 3).

On each of the four scenarios of :mod:`fiun_hub.research.scenarios` (fl, ddpl, il, tl), built once at the quick
profile of ``benchmarks/fiun_vs_baselines.py`` (digits, ``test_resnet`` 16x16, 6 epochs from scratch, seed 0):

1. **fallback**: the scenario's 1-class and 4-class requests (classes ``3`` and ``1,2,3,5``, as in
   fiun_vs_baselines) are run with FIUn's defaults twice, on fresh copies of the built hub:
   ``own`` (every repo has its own sidecars, as built) and ``fallback`` (every repo with a parent was republished
   without sidecars, same weights, so each uses its nearest ancestors' sidecars at the revisions it pins:
   docs/method.md section 8). Per affected model: held-out forget and retain accuracy before and after, and the
   number of head entries the update changed.
2. **sequence**: on a fresh copy, class ``3`` at the origins, then a sample-wise forget of 40 samples of the first
   origin's own training shard, then class ``5``; after each step the held-out accuracy of every class an earlier
   step removed, on every model whose card records it. Run with the update as shipped (earlier-forgotten rows kept
   inert) and with that switched off (``forgotten_before`` patched to return nothing: the rule before issue 13).

Held-out data: the whole ``digits:test`` split (540 images). Writes
``benchmarks/results/fallback_and_sequences.json``.

    nice -n 10 python benchmarks/fallback_and_sequences.py      # about 2 minutes on 2 shared cores (1 torch thread)
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fiun_hub.unlearn as UL  # noqa: E402
from fiun_hub.constants import FIM_CLASSES_FILE, FIM_FILE  # noqa: E402
from fiun_hub.data import load_data  # noqa: E402
from fiun_hub.evaluate import forget_retain_accuracy  # noqa: E402
from fiun_hub.hub.local import LocalHub, RepoChange  # noqa: E402
from fiun_hub.models import load_model  # noqa: E402
from fiun_hub.repo import read_meta  # noqa: E402
from fiun_hub.research.scenarios import SCENARIOS, plan_scenario, realize_scenario  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "fallback_and_sequences.json"
REQUESTS = {"1-class": ["3"], "4-class": ["1", "2", "3", "5"]}
SEQUENCE = [("classes", ["3"]), ("samples", 40), ("classes", ["5"])]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def copy_hub(src: Path, dst: Path) -> LocalHub:
    shutil.copytree(src, dst, symlinks=True)
    return LocalHub(dst)


def accuracies(hub: LocalHub, repos, classes, test, revision: dict | None = None) -> dict[str, dict]:
    out = {}
    for repo in repos:
        model, config, _ = load_model(hub, repo, (revision or {}).get(repo))
        forget = [c for c in classes if c in config.labels]
        f, r = forget_retain_accuracy(model, config.labels, test, forget)
        out[repo] = {"forget_acc": None if not forget else round(f, 2), "retain_acc": round(r, 2)}
    return out


def run_fallback(scn, built: Path, work: Path, test) -> dict[str, Any]:
    out: dict[str, Any] = {}
    affected = scn.affected()
    for variant in ("own", "fallback"):
        for req, classes in REQUESTS.items():
            hub = copy_hub(built, work / f"{scn.name}-{variant}-{req}")
            if variant == "fallback":
                for repo in scn.repos:
                    if scn.node(repo).parents:
                        hub.publish([RepoChange(repo, {}, "drop sidecars", parent_commit=hub.head(repo),
                                                delete=(FIM_FILE, FIM_CLASSES_FILE))])
            old = {r: hub.head(r) for r in affected}
            classes = [c for c in classes if all(c in scn.node(o).labels for o in scn.origins)]
            before = accuracies(hub, affected, classes, test, old)
            plan, result = UL.forget(hub, list(scn.origins), classes)
            after = accuracies(hub, affected, classes, test)
            used = {n.repo: n.sidecar_used for n in plan.nodes}
            rows = {r: {"sidecar": used[r], "changed": result.stats[r]["changed"],
                        "forget_before": before[r]["forget_acc"],
                        "forget_after": after[r]["forget_acc"], "retain_before": before[r]["retain_acc"],
                        "retain_after": after[r]["retain_acc"]} for r in affected}
            fa = [v["forget_after"] for v in rows.values() if v["forget_after"] is not None]
            drops = [v["retain_before"] - v["retain_after"] for v in rows.values()]
            out.setdefault(variant, {})[req] = {"classes": classes, "models": rows,
                                                "worst_forget_acc": max(fa) if fa else None,
                                                "worst_retain_drop": round(max(drops), 2),
                                                "approximate": sum(u != "own" for u in used.values())}
            log(f"{scn.name} {variant} {req}: worst forget {out[variant][req]['worst_forget_acc']}, "
                f"worst retain drop {out[variant][req]['worst_retain_drop']}")
    return out


def sample_spec(scn, work: Path, n: int) -> str:
    """``n`` samples of the first origin's own training shard, raw images, as an npz spec."""
    from fiun_hub.data import _digits

    x, y, labels = _digits("train")
    shard = np.array(scn.node(scn.origins[0]).shard)
    pick = np.random.default_rng(0).choice(shard, size=n, replace=False)
    path = work / f"{scn.name}-samples.npz"
    np.savez(path, x=x[pick], y=y[pick], labels=np.array(labels))
    return f"npz:{path}"


def run_sequence(scn, built: Path, work: Path, test, inert: bool) -> list[dict[str, Any]]:
    real = UL.forgotten_before
    if not inert:
        UL.forgotten_before = lambda records, labels, request_id: []
    try:
        hub = copy_hub(built, work / f"{scn.name}-seq-{'inert' if inert else 'off'}")
        affected = scn.affected()
        steps = []
        for i, (kind, arg) in enumerate(SEQUENCE):
            rid = f"seq-{i}"
            if kind == "classes":
                UL.forget(hub, list(scn.origins), arg, request_id=rid)
            else:
                UL.forget(hub, list(scn.origins), data_spec=sample_spec(scn, work, arg), request_id=rid)
            earlier: dict[str, dict[str, float]] = {}
            for repo in affected:
                classes = [c for u in read_meta(hub, repo).unlearned if u["request"] != rid
                           for c in u.get("classes") or []]
                model, config, _ = load_model(hub, repo)
                for c in dict.fromkeys(classes):
                    if c not in config.labels:  # a model without that label (a transfer head) has nothing to keep
                        continue
                    earlier.setdefault(c, {})[repo] = round(forget_retain_accuracy(model, config.labels, test,
                                                                                  [c])[0], 2)
            worst = {c: max(v.values()) for c, v in earlier.items()}
            steps.append({"step": i, "kind": kind, "what": arg, "earlier_forgotten_acc": earlier, "worst": worst})
            log(f"{scn.name} sequence ({'inert' if inert else 'off'}) step {i} {kind}: worst earlier {worst}")
        return steps
    finally:
        UL.forgotten_before = real


def main() -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    test = load_data("digits:test", in_chans=1, input_size=(16, 16))
    results: dict[str, Any] = {
        "command": "HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/fallback_and_sequences.py",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count()},
        "profile": {"dataset": "digits", "arch": "test_resnet", "input_size": [1, 16, 16], "epochs": 6, "seed": 0,
                    "width": {"fl": 2, "ddpl": 2, "tl": 3}},
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="fiun-fallback-") as tmp:
        work = Path(tmp)
        for name in SCENARIOS:
            built = work / f"{name}-built"
            scn = plan_scenario(name, dataset="digits", arch="test_resnet", epochs=6, seed=0, org="bench",
                                width={"fl": 2, "ddpl": 2, "tl": 3}.get(name), input_size=(1, 16, 16),
                                forget_classes=["3"])
            scn._test = test
            realize_scenario(scn, LocalHub.init(built), num_threads=1)
            log(f"{name}: built {len(scn.nodes)} models, origins {scn.origins}")
            entry = {"models": len(scn.nodes), "origins": list(scn.origins), "affected": scn.affected(),
                     "fallback": run_fallback(scn, built, work, test),
                     "sequence": {"inert": run_sequence(scn, built, work, test, True),
                                  "off": run_sequence(scn, built, work, test, False)}}
            results["scenarios"][name] = entry
    results["seconds"] = round(time.perf_counter() - t0, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {OUT} in {results['seconds']}s")
    return results


if __name__ == "__main__":
    main()
