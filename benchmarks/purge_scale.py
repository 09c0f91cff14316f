"""Purge benchmark (issue 15): hub bytes and time of a forget that purges the pre-forget revisions, against one
that keeps them, on the 1,000-model lineage of ``benchmarks/scale.py``.

The hub is the one ``scale.py`` builds (same ``build``, same seeds: a trained ``test_resnet`` root, 999 synthetic
descendants with real sidecars; see scale.py and docs/scale.md for what is synthetic); ``--keep DIR`` builds it once
and reuses it, and reuses a hub ``scale.py --keep DIR`` built. Then, each in a fresh subprocess on a fresh copy of
the built hub (flushed to disk before the clock starts), one class-wise forget of class 3 at the root (every model
affected) in each ``--modes`` run:

- ``keep``: ``plan_forget`` + ``run_forget`` on the plain hub: what a forget stored before issue 15, and what
  ``takedown --keep-history`` stores (the pre-forget revisions keep their weights and sidecars);
- ``purge``: the same through :class:`fiun_hub.purge.PurgingHub` (what ``fiun-hub forget --purge`` does): the
  pre-forget revisions' weights and sidecars purged in the same publish;
- ``takedown``: ``plan_takedown`` + ``run_takedown`` of a request (ledger record in the same publish, purge by
  default, then the ledger commit and the audit ``run_takedown`` ends with);
- ``takedown-hold``: the same with ``--keep-history --reason`` (a recorded legal hold, nothing purged).

Measured per run: the hub's bytes (apparent size of every file and link under it, and disk blocks as ``du``
counts them) before and after, the forget's wall time split into the purge's own work and the rest, and afterwards
(not timed into the forget) ``fiun-hub verify`` and a read of the root's pre-forget weights (which must be refused
with the request's message when purged). The purge's own work is timed by wrapping the functions that do only purge
work (a timer around each, no change of behaviour): :func:`fiun_hub.purge.purge_entries`, ``summary``,
``change_live``, ``held_revisions`` and :meth:`LocalHub._check_purge` / ``_apply_purge`` (writing the tombstones and
``.no_exist`` markers, removing the snapshot entries and deleting the freed blobs, then its ``syncfs``). What it
does not count: writing the purge into the journal and the one extra ``syncfs`` + journal rewrite a purging publish
makes before applying it; the difference of the ``purge`` and ``keep`` runs' totals is reported too, for that.

    python benchmarks/purge_scale.py --keep /tmp/scalebench/hub1000            # 1,000 models (build ~6 min)
    python benchmarks/purge_scale.py --models 100 --out /tmp/purge100.json     # smaller

Writes benchmarks/results/purge_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).parent))
import scale  # noqa: E402  (the 1,000-model build, shared)

RESULTS = Path(__file__).parent / "results"
REQUEST_ID = "PURGE-BENCH-1"
MODES = ("keep", "purge", "takedown", "takedown-hold")


class Timers:
    """Accumulated wall time of the outermost call of each wrapped function (nested wrapped calls, e.g.
    ``purge_blobs`` inside ``summary``, are not counted twice)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._depth = 0

    def wrap(self, owner, name: str) -> None:
        fn = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            if timers._depth:
                return fn(*args, **kwargs)
            timers._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers._depth -= 1
                timers.seconds[name] = timers.seconds.get(name, 0.0) + time.perf_counter() - t
                timers.calls[name] = timers.calls.get(name, 0) + 1

        setattr(owner, name, timed)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _blob_count(hub_dir: Path) -> int:
    return sum(len(os.listdir(p / "blobs")) for p in hub_dir.iterdir()
               if p.name.startswith("models--") and (p / "blobs").is_dir())


def measure(hub_dir: Path, mode: str) -> dict:
    """One forget on ``hub_dir`` (modified in place), in mode ``mode``. Run in a fresh process."""
    import torch

    import fiun_hub.purge as P
    from fiun_hub.constants import WEIGHTS_FILE
    from fiun_hub.errors import Purged
    from fiun_hub.hub.local import LocalHub
    from fiun_hub.unlearn import plan_forget, run_forget, utc_now
    from fiun_hub.verify import verify

    torch.set_num_threads(1)
    timers = Timers()
    for name in ("purge_entries", "summary", "change_live", "held_revisions"):
        timers.wrap(P, name)
    for name in ("_check_purge", "_apply_purge"):
        timers.wrap(LocalHub, name)
    hub = LocalHub(hub_dir)
    root_before = hub.head(scale.ROOT)
    before_apparent, before_disk = scale.tree_bytes(hub_dir)
    blobs_before = _blob_count(hub_dir)
    phases, extra = {}, {}
    t0 = time.perf_counter()
    if mode in ("keep", "purge"):
        target = P.PurgingHub(hub, REQUEST_ID, utc_now()) if mode == "purge" else hub
        plan = plan_forget(hub, [scale.ROOT], classes=[scale.FORGET], request_id=REQUEST_ID)
        t_plan = time.perf_counter() - t0
        result = run_forget(target, plan)
        affected = len(result.revisions)
        phases = {"plan": round(t_plan, 3), **{k: round(v, 3) for k, v in result.seconds.items()}}
        if mode == "purge":
            s = target.last
            extra = {"purge_summary": {k: s[k] for k in ("blobs", "bytes_removed", "revisions")}
                     | {"files": sum(len(v) for v in s["files"].values())}}
    else:
        from fiun_hub.compliance import parse_request, plan_takedown, run_takedown

        request = parse_request(f"id: {REQUEST_ID}\nreason: benchmark\nrequested_by: bench@example.org\n"
                                f"received: 2026-12-01\norigins: [{scale.ROOT}]\nforget: {{classes: ['{scale.FORGET}']}}\n")
        tp = plan_takedown(hub, request)
        t_plan = time.perf_counter() - t0
        t1 = time.perf_counter()
        out = run_takedown(hub, tp, hold_reason="litigation hold (benchmark)" if mode == "takedown-hold" else None)
        t_run = time.perf_counter() - t1
        affected = len(out["revisions"])
        phases = {"plan_takedown": round(t_plan, 3), "apply": round(out["seconds"], 3),
                  "audit_after": round(t_run - out["seconds"], 3),
                  **{k: round(v, 3) for k, v in out["forget_seconds"].items()}}
        ev = out["event"]
        extra = {"report_ok": out["report"]["ok"],
                 "report_findings": [f["kind"] for e in out["report"]["requests"] for f in e["findings"]][:10],
                 "report_purge": {k: v for k, v in (out["report"]["requests"][0].get("purge") or {}).items()
                                  if k != "holds"},
                 "report_holds": [{"reason": h["reason"], "revisions": sum(len(v) for v in h["revisions"].values())}
                                  for h in (out["report"]["requests"][0].get("purge") or {}).get("holds") or []]}
        if ev.get("purge"):
            s = ev["purge"]
            extra["purge_summary"] = {k: s[k] for k in ("blobs", "bytes_removed", "revisions")} | {
                "files": sum(len(v) for v in s["files"].values())}
        if ev.get("hold"):
            extra["hold_revisions"] = sum(len(v) for v in ev["hold"]["revisions"].values())
    total = time.perf_counter() - t0
    after_apparent, after_disk = scale.tree_bytes(hub_dir)
    blobs_after = _blob_count(hub_dir)
    purge_s = timers.total
    # Afterwards, untimed: the hub is sound, and the root's pre-forget weights are refused (or kept) as they must be
    t = time.perf_counter()
    problems = verify(hub)
    t_verify = time.perf_counter() - t
    try:
        hub.read_file(scale.ROOT, WEIGHTS_FILE, root_before)
        old_read = "readable"
    except Purged as exc:
        old_read = f"refused: {exc}"
    return {
        "mode": mode,
        "affected": affected,
        "seconds": round(total, 3),
        "phases": phases,
        "purge_seconds": round(purge_s, 3),
        "purge_parts_seconds": {k: round(v, 3) for k, v in sorted(timers.seconds.items())},
        "forget_seconds_without_purge": round(total - purge_s, 3),
        "purge_to_forget_time_ratio": round(purge_s / (total - purge_s), 4),
        # the same against run_forget alone (origin FIMs + unlearn + finish + publish; the purge runs inside its
        # publish), without the plan (whose first call also imports timm and friends)
        "purge_to_run_forget_time_ratio": round(purge_s / (phases["total"] - purge_s), 4),
        "hub_bytes_before": before_apparent,
        "hub_bytes_after": after_apparent,
        "hub_disk_bytes_before": before_disk,
        "hub_disk_bytes_after": after_disk,
        "bytes_after_over_before": round(after_apparent / before_apparent, 4),
        "disk_bytes_after_over_before": round(after_disk / before_disk, 4),
        "blobs_before": blobs_before,
        "blobs_after": blobs_after,
        "verify_problems": problems[:5],
        "verify_ok": not problems,
        "verify_seconds": round(t_verify, 2),
        "root_pre_forget_weights": old_read,
        **extra,
    }


def _measure_in_subprocess(src: Path, work: Path, mode: str, log) -> dict:
    return scale.run_on_copy(src, work, __file__, ["--mode", mode], work.parent / f"purge-measure-{mode}.json",
                             mode, log)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the root")
    ap.add_argument("--fim-samples", type=int, default=256)
    ap.add_argument("--max-depth", type=int, default=24)
    ap.add_argument("--publish-batch", type=int, default=100)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated runs of {', '.join(MODES)}")
    ap.add_argument("--keep", type=Path, help="build the hub here and keep it (reused if it is already built)")
    ap.add_argument("--out", type=Path, default=RESULTS / "purge_scale.json")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--measure-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="purge", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.measure:  # child process
        res = measure(args.measure, args.mode)
        args.measure_out.write_text(json.dumps(res))
        return res

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode {bad[0]!r}: use {', '.join(MODES)}")
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fiun-purge-") as tmp:
        tmp = Path(tmp)
        src = args.keep or tmp / "hub"
        build_info = scale.build_or_reuse(src, args, log)
        runs = {}
        for m in modes:
            runs[m] = _measure_in_subprocess(src, tmp / "work", m, log)
            r = runs[m]
            log(f"  {m}: {r['seconds']}s (purge {r['purge_seconds']}s), bytes x{r['bytes_after_over_before']}")
    import torch

    out = {
        "benchmark": "purge_scale",
        "command": "python benchmarks/purge_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__,
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
                    "gpu": None, "loadavg_1m_at_start": round(load0, 2),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "synthetic": "scale.py's hub: root trained on digits; all other weights = parent(s) + 1% noise (untrained); "
                     "random DAG; real per-model sidecars, all on the same digits:train subset",
        "build": build_info,
        "models": build_info["models"],
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    head = {}
    for m, r in runs.items():
        head[m] = {"bytes_after_over_before": r["bytes_after_over_before"], "seconds": r["seconds"],
                   "purge_seconds": r["purge_seconds"],
                   "purge_to_forget_time_ratio": r["purge_to_forget_time_ratio"],
                   "purge_to_run_forget_time_ratio": r["purge_to_run_forget_time_ratio"]}
    out["summary"] = head
    if "purge" in runs:
        out["targets"] = {"purged_bytes_after_over_before<=1.05": runs["purge"]["bytes_after_over_before"] <= 1.05}
    if "purge" in runs and "keep" in runs:
        out["purge_minus_keep_seconds"] = round(runs["purge"]["seconds"] - runs["keep"]["seconds"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    return out


if __name__ == "__main__":
    main()
