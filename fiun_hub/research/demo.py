"""The main job, end to end on the embedded LocalHub: build a real inheritance network on digits, forget one
class at its origin with FIUn, and compare with retraining the affected subgraph.

Every number comes from this run: held-out (digits:test) forget and retain accuracy of each model before and
after, the wall time of the forget next to the wall time of retraining the affected models with the recipes that
built them, and a PNG of the lineage with the unlearned models marked.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput

DEMO_MARKER = "fiun-demo.json"


def _fresh_dir(path: Path) -> Path:
    """``path`` emptied if it holds an earlier demo; refused if it holds anything else."""
    path = Path(path).expanduser().absolute()
    if path.exists():
        if not (path / DEMO_MARKER).is_file() and any(path.iterdir()):
            raise BadInput(f"{path} exists and is not an earlier fiun-hub demo; pick another --dir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_demo(
    directory: str | Path,
    *,
    scenario: str = "fl",
    forget: str = "3",
    seed: int = 0,
    retrain: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo into ``directory`` (hub at ``directory/hub``, picture at ``directory/lineage.png``)."""
    from .. import lineage
    from ..hub.local import LocalHub
    from .scenarios import build_scenario, torch_threads
    from ..unlearn import plan_forget, run_forget

    say = progress or (lambda msg: None)
    root = _fresh_dir(Path(directory))
    hub = LocalHub.init(root / "hub")
    say(f"building the {scenario.upper()} inheritance network on digits (real timm test_resnet models)")
    scn = build_scenario(scenario, hub, dataset="digits", seed=seed, org="demo", progress=lambda m: say("  " + m))
    say("measuring held-out accuracy before the forget")
    before = scn.evaluate(hub, [forget])

    origins = list(scn.origins)
    say(f"forgetting class {forget!r} at {', '.join(origins)} and every model derived from it (FIUn)")
    with torch_threads(1):
        t0 = time.perf_counter()
        plan = plan_forget(hub, origins, classes=[forget], request_id="demo-forget-" + forget)
        result = run_forget(hub, plan)
        fiun_s = time.perf_counter() - t0
    say(f"  {len(result.revisions)} new revisions published in {fiun_s:.2f}s")
    after = scn.evaluate(hub, [forget])

    retrain_s = None
    retrained: dict[str, dict[str, Any]] = {}
    if retrain:
        from .baselines import retrain as retrain_baseline

        say("retraining the affected models from their clean ancestors, for comparison (the gold standard)")
        res = retrain_baseline(scn, hub, [forget], progress=lambda m: say("  " + m))
        retrain_s = res.seconds
        retrained = res.evaluate(scn, hub)

    affected = [n.repo for n in plan.nodes]
    colors = {r: ("#ffb366" if r in origins else "#ffd8a8") for r in affected}
    g = lineage.resolve(hub)
    png = lineage.to_png(g, root / "lineage.png", title=f"{scenario.upper()} lineage: class {forget} forgotten "
                                                        "(orange: unlearned)", colors=colors)
    rows = []
    for repo in scn.repos:
        rows.append({
            "repo": repo,
            "affected": repo in affected,
            "forget_acc_before": before[repo]["forget_acc"],
            "forget_acc": after[repo]["forget_acc"],
            "retain_acc_before": before[repo]["retain_acc"],
            "retain_acc": after[repo]["retain_acc"],
            "retrain_forget_acc": retrained.get(repo, {}).get("forget_acc"),
            "retrain_retain_acc": retrained.get(repo, {}).get("retain_acc"),
        })
    out = {
        "hub": str(hub.root),
        "scenario": scenario,
        "forget_classes": [forget],
        "request_id": plan.request_id,
        "origins": origins,
        "models": rows,
        "fiun_seconds": fiun_s,
        "retrain_seconds": retrain_s,
        "speedup": (retrain_s / fiun_s) if retrain_s else None,
        "build_seconds": scn.build_seconds,
        "lineage_png": str(png),
        "held_out": scn.test_spec,
    }
    (root / DEMO_MARKER).write_text(json.dumps(out, indent=2, default=str))
    return out


def format_report(out: dict[str, Any]) -> str:
    """The demo's result as a table a person reads."""
    def pct(v):
        return "   -  " if v is None else f"{v:5.1f}%"

    lines = [f"held-out accuracy on {out['held_out']} (forget = class {', '.join(out['forget_classes'])}; "
             "retain = the other classes)", ""]
    lines.append(f"{'model':24s} {'forget before':>13s} {'after':>7s}  {'retain before':>13s} {'after':>7s}"
                 f"  {'retrained: forget':>17s} {'retain':>7s}")
    for r in out["models"]:
        mark = "" if r["affected"] else "  (not affected)"
        lines.append(f"{r['repo']:24s} {pct(r['forget_acc_before']):>13s} {pct(r['forget_acc']):>7s}  "
                     f"{pct(r['retain_acc_before']):>13s} {pct(r['retain_acc']):>7s}  "
                     f"{pct(r['retrain_forget_acc']):>17s} {pct(r['retrain_retain_acc']):>7s}{mark}")
    lines.append("")
    n = sum(r["affected"] for r in out["models"])
    lines.append(f"FIUn forget of {n} affected models: {out['fiun_seconds']:.2f}s (one pass, no data)")
    if out["retrain_seconds"]:
        lines.append(f"retraining the same models:        {out['retrain_seconds']:.2f}s "
                     f"({out['speedup']:.0f}x slower)")
    lines.append(f"lineage picture: {out['lineage_png']}")
    lines.append(f"hub:             {out['hub']}  (try: fiun-hub --hub {out['hub']} lineage)")
    return "\n".join(lines)
