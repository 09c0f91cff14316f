"""How precise the sample-wise targets of issue 16 can be measured (report only, no training): the standard error
of the accuracy on n forgotten samples (binomial, sqrt(p(1-p)/n)) and of the loss-threshold MIA AUC (Hanley and
McNeil 1982, n forgotten vs m held-out samples), for the cells of ``benchmarks/results/beyond_head.json`` and for
larger forget sets. Sampling error of the forgotten / held-out draw only: the variance across retraining seeds
comes on top.

    python benchmarks/samplewise_se.py
"""
import json, math, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def auc_se(auc: float, n1: int, n2: int) -> float:
    a = auc / 100
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return 100 * math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))


def main() -> int:
    d = json.loads((ROOT / "benchmarks" / "results" / "beyond_head.json").read_text())
    out = {"cells": [], "by_n": []}
    for ds, r in d["datasets"].items():
        for req, e in r["requests"].items():
            if e["kind"] != "sample":
                continue
            for m in ("fiun", "retrain"):
                for repo, mm in e["methods"][m]["models"].items():
                    k, p = mm["forgotten_known"], mm["forgotten_acc"] / 100
                    out["cells"].append({"dataset": ds, "request": req, "method": m, "model": repo, "n": k,
                                         "forgotten_acc": mm["forgotten_acc"],
                                         "acc_se": round(100 * math.sqrt(p * (1 - p) / k), 1),
                                         "mia_auc": mm["mia_auc"], "auc_se": round(auc_se(mm["mia_auc"], k,
                                                                                         r["test_samples"]), 1)})
    for n in (18, 90, 500, 1000, 3000):  # p = 0.9, AUC 55 against 1000 held-out samples
        out["by_n"].append({"n": n, "acc_se": round(100 * math.sqrt(0.09 / n), 1),
                            "acc_diff_se": round(100 * math.sqrt(2 * 0.09 / n), 1),
                            "auc_se": round(auc_se(55, n, 1000), 1)})
    print(json.dumps(out["by_n"], indent=1))
    (ROOT / "benchmarks" / "results" / "samplewise_se.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
