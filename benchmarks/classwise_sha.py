"""Class-wise forgets on the tests' trained digits DAG: sha256 of every published weights file (per-repo and
batched paths), so that the weights before and after a code change can be compared.

    nice -n 10 python benchmarks/classwise_sha.py /tmp/dag > before.json   # on the old code; the DAG is built once
    nice -n 10 python benchmarks/classwise_sha.py /tmp/dag > after.json    # on the new code, same folder
    cmp before.json after.json
"""
import json, sys, shutil
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_forget as TF
from fiun_hub.unlearn import forget

work = Path(sys.argv[1]); out = {}
if not (work / "hub").exists():
    work.mkdir(parents=True, exist_ok=True)
    TF.build_trained_dag(work)
for name, classes, kw in (("1-class", ["3"], {}), ("4-class", ["1", "3", "5", "7"], {}),
                          ("1-class-batched", ["3"], {"batched": True})):
    dst = work / f"copy-{name}"
    shutil.rmtree(dst, ignore_errors=True)
    hub = TF.copy_hub(work / "hub", dst)
    plan, res = forget(hub, [TF.R], classes, **kw)
    out[name] = {r: s["weights_sha256"] for r, s in sorted(res.stats.items())}
print(json.dumps(out, indent=1))
