"""Scale benchmark: one class-wise forget at the root of a 1,000-model lineage, local vs Ray executors.

What is built (``build``), and what of it is synthetic:

- the root is a real ``test_resnet`` (1x16x16 input, 10 digit classes, ~373k parameters, a 1.5 MB
  ``model.safetensors``) trained for ``--epochs`` epochs on scikit-learn's digits (``digits:train``);
- every other model is SYNTHETIC: its weights are its parent's (the element-wise mean of both parents' for a
  merge) plus Gaussian noise of 1% of each tensor's standard deviation; it is never trained;
- the lineage is a synthetic random DAG (seeded): each new model continues a recent chain (``chain``, 45%),
  fine-tunes any earlier model (``fanout``, 40%) or merges two earlier models (``merge``, 15%), depth capped at
  ``--max-depth``; every model descends from the root;
- every model has REAL Fisher sidecars (``fim.safetensors`` + ``fim-classes.safetensors``, the ``normalized``
  estimator on the head, as ``fiun-hub fim`` writes them) computed on ITS OWN weights, but all on the same
  ``--fim-samples`` samples of digits:train (not on a per-model training set), bound to the weights by
  ``weights_sha256``;
- every repo is a normal fiun-hub repo: timm ``config.json``, ``model.safetensors``, sidecars and a
  ``README.md`` card (``fiun_hub.card.render_card``) pinning its parents' revisions, published through
  ``LocalHub.publish`` one DAG level at a time (in batches of ``--publish-batch`` repos).

What is measured (``measure``, each executor in a fresh subprocess on a fresh copy of the built hub):
``plan_forget`` + ``run_forget`` of ``--origin ROOT --classes 3`` (every model affected; ``run_forget``'s
phases: origin FIMs, the executor's unlearn (tasks write the new weights into the blob store), finish (sidecars,
cards, as results arrive), publish), the driver's peak
RSS (``VmHWM``; ``getrusage``'s ru_maxrss would include the spawning process's), the peak summed PSS of the
driver's whole process tree (Ray's processes included), the bytes the hub grew by vs the bytes of the files
that changed, and, on the same files afterwards, plain read + write of each affected weight file (with and
without fsync) for the per-descendant ratio. Local and Ray must publish identical weights (sha256 of every
new weight file).

    python benchmarks/scale.py                     # 1,000 models; runs local, ray, ray-warm, local-batched
    python benchmarks/scale.py --models 200 --executors local --keep /tmp/scale200

Writes benchmarks/results/scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RESULTS = Path(__file__).parent / "results"
ROOT = "scale/m0000"
FORGET = "3"
LABELS = [str(i) for i in range(10)]
INPUT = (1, 16, 16)


# ============================================================================================== build
def plan_dag(n: int, seed: int, max_depth: int) -> list[tuple[str, list[str], str]]:
    """``[(repo, parents, kind)]`` in creation order; kind: root | chain | fanout | merge."""
    rng = random.Random(seed)
    names = [ROOT]
    depth = {ROOT: 0}
    out = [(ROOT, [], "root")]
    for i in range(1, n):
        name = f"scale/m{i:04d}"
        r = rng.random()
        ok = [x for x in names if depth[x] < max_depth]
        if r < 0.45:
            kind = "chain"
            recent = [x for x in names[-16:] if depth[x] < max_depth] or ok
            parents = [rng.choice(recent)]
        elif r < 0.85 or len(ok) < 2:
            kind = "fanout"
            parents = [rng.choice(ok)]
        else:
            kind = "merge"
            parents = rng.sample(ok, 2)
        depth[name] = 1 + max(depth[p] for p in parents)
        names.append(name)
        out.append((name, parents, kind))
    return out


def build(hub_dir: Path, n: int, seed: int, epochs: int, fim_samples: int, max_depth: int,
          publish_batch: int, log=print) -> dict:
    import hashlib

    import torch

    from fiun_hub.card import CardMeta, ParentRef, fim_entry, render_card
    from fiun_hub.constants import CARD_FILE, CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
    from fiun_hub.data import load_data
    from fiun_hub.fisher import compute_fisher, resolve_layers, sidecar_bytes
    from fiun_hub.hub.local import Blob, LocalHub, RepoChange
    from fiun_hub.models import config_dict, state_bytes
    from fiun_hub.research.scenarios import new_model
    from fiun_hub.research.training import train_classifier

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dag = plan_dag(n, seed, max_depth)
    hub = LocalHub.init(hub_dir)
    train = load_data("digits:train", in_chans=1, input_size=INPUT[1:])
    model = new_model("test_resnet", len(LABELS), 1, seed)
    train_classifier(model, train, epochs=epochs, lr=3e-3, seed=seed)
    model.eval()
    t_train = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:fim_samples]
    fx, fy = train.x[idx], train.y[idx]
    layers = resolve_layers(model, "head")
    config = json.dumps(config_dict(model, LABELS, INPUT), indent=2).encode()
    learned = {k for k, _ in model.named_parameters()}  # perturbed; buffers (BN statistics) are averaged only
    states: dict[str, dict[str, torch.Tensor]] = {ROOT: {k: v.detach().clone() for k, v in model.state_dict().items()}}
    depth = {ROOT: 0}
    for repo, parents, _ in dag[1:]:
        depth[repo] = 1 + max(depth[p] for p in parents)
    levels: dict[int, list[tuple[str, list[str], str]]] = {}
    for item in dag:
        levels.setdefault(depth[item[0]], []).append(item)
    revs: dict[str, str] = {}
    t_fim = t_pub = 0.0
    done = 0
    for d in sorted(levels):
        items = levels[d]
        for b in range(0, len(items), publish_batch):
            changes = []
            for repo, parents, kind in items[b:b + publish_batch]:
                if parents:
                    gen = torch.Generator().manual_seed(seed * 1_000_003 + int(repo[-4:]))
                    state = {}
                    for k, v in states[parents[0]].items():
                        if v.is_floating_point():
                            base = sum(states[p][k] for p in parents) / len(parents)
                            noise = torch.randn(base.shape, generator=gen, dtype=base.dtype)
                            state[k] = base + 0.01 * base.std().nan_to_num() * noise if k in learned else base
                        else:
                            state[k] = v.clone()
                    states[repo] = state
                    model.load_state_dict(state)
                weights = state_bytes(model)
                sha = hashlib.sha256(weights).hexdigest()
                t = time.perf_counter()
                res = compute_fisher(model, fx, fy, LABELS, layers, estimator="normalized")
                t_fim += time.perf_counter() - t
                fim, cls = sidecar_bytes(res, {"weights_sha256": sha, "data_spec": f"digits:train[:{fim_samples}]",
                                               "dataset": f"digits-train-subset-{fim_samples}-seed{seed}",
                                               "synthetic": "weights perturbed from parent(s), not trained"})
                meta = CardMeta(parents=[ParentRef(p, revs[p]) for p in parents],
                                relation=("merge" if len(parents) > 1 else "finetune") if parents else None,
                                labels=list(LABELS), fim=fim_entry(res.layers, res.estimator))
                card = render_card(meta, None, repo).encode()
                changes.append(RepoChange(repo, {CONFIG_FILE: config, WEIGHTS_FILE: Blob(weights, sha),
                                                 FIM_FILE: fim, FIM_CLASSES_FILE: cls, CARD_FILE: card},
                                          f"Push {repo} ({kind})", parent_commit=""))
            t = time.perf_counter()
            revs.update(hub.publish(changes))
            t_pub += time.perf_counter() - t
            done += len(changes)
            log(f"  built {done}/{n} (depth {d})")
    kinds = {}
    for _, _, k in dag:
        kinds[k] = kinds.get(k, 0) + 1
    fan = {}
    for _, parents, _ in dag:
        for p in parents:
            fan[p] = fan.get(p, 0) + 1
    return {"models": n, "kinds": kinds, "max_depth": max(depth.values()),
            "depth_median": statistics.median(depth.values()), "max_children": max(fan.values()),
            "seconds": {"train_root": round(t_train, 2), "sidecars": round(t_fim, 2), "publish": round(t_pub, 2),
                        "total": round(time.perf_counter() - t0, 2)}}


# ============================================================================================== measure
def build_or_reuse(src: Path, args, log) -> dict:
    """The hub at ``src``: reused when ``--keep`` names one already built (its build info beside it), else built
    from ``args`` (models, seed, epochs, fim_samples, max_depth, publish_batch). Returns the build info."""
    info_file = src.parent / (src.name + ".build.json")
    if args.keep and (src / ".fiun").is_dir() and info_file.is_file():
        build_info = json.loads(info_file.read_text())
        build_info["reused"] = True
        log(f"reusing the hub at {src}")
        return build_info
    if src.exists():
        shutil.rmtree(src)
    log(f"building {args.models} models at {src}")
    build_info = build(src, args.models, args.seed, args.epochs, args.fim_samples, args.max_depth,
                       args.publish_batch, log)
    info_file.write_text(json.dumps(build_info))
    return build_info


def tree_bytes(root: Path) -> tuple[int, int]:
    """(apparent bytes of every file and symlink under root, disk bytes as du counts them)."""
    apparent = disk = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            apparent += st.st_size
            disk += st.st_blocks * 512
    return apparent, disk


def read_write_seconds(paths: list[Path], scratch: Path, fsync: bool) -> list[float]:
    out = []
    dst = scratch / "copy.safetensors"
    for src in paths:
        t = time.perf_counter()
        data = src.read_bytes()
        with open(dst, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        out.append(time.perf_counter() - t)
        dst.unlink()
    return out


def _vm_hwm_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike getrusage's ru_maxrss it is not inherited from the
    process that spawned us (Linux carries ru_maxrss across fork + exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory:
    """Samples the proportional set size (PSS: shared pages split between their users, so Ray's shared object
    store is not counted once per worker) of this process and all its descendants (Ray's GCS, raylet and
    workers when Ray was started here); keeps the peak of the sum."""

    def __init__(self, interval: float = 0.25):
        import threading

        self.interval, self.peak, self.procs = interval, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = _process_tree(os.getpid())
        total = sum(_pss_mb(p) for p in pids)
        if total > self.peak:
            self.peak, self.procs = total, len(pids)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "TreeMemory":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _warm_worker(seconds: float) -> int:
    """A Ray task that imports what a forget's tasks import, then holds its worker a moment (so the warm-up
    tasks spread over every worker)."""
    import importlib

    importlib.import_module("fiun_hub.unlearn")
    time.sleep(seconds)
    return os.getpid()


def measure(hub_dir: Path, executor: str, workers: int, batched: bool, warm: bool = False) -> dict:
    """One forget on ``hub_dir`` (modified in place). Run in a fresh process (peak RSS is per process)."""
    import torch

    from fiun_hub.constants import WEIGHTS_FILE
    from fiun_hub.hub.local import LocalHub
    from fiun_hub.unlearn import plan_forget, run_forget

    torch.set_num_threads(1)
    # batched: the batched dampening path (what a CUDA device uses: repos stacked by head shape), here on CPU
    path = {"batched": True, "device": "cpu"} if batched else {}
    ray_init_s = None
    if executor == "ray":  # start Ray before the clock: its start-up is a per-process cost, reported apart
        from fiun_hub.executors import init_ray

        t = time.perf_counter()
        ray = init_ray(num_cpus=workers)
        ray_init_s = time.perf_counter() - t
        if warm:  # a long-lived Ray: its workers have already imported torch and fiun_hub
            remote = ray.remote(_warm_worker)
            pids = set(ray.get([remote.remote(0.5) for _ in range(3 * workers)]))
            ray_init_s = time.perf_counter() - t
            print(f"warmed {len(pids)} Ray workers", file=sys.stderr)
    hub = LocalHub(hub_dir)
    before_apparent, before_disk = tree_bytes(hub_dir)
    rss0 = _vm_hwm_mb()
    with TreeMemory() as tree:
        t0 = time.perf_counter()
        plan = plan_forget(hub, [ROOT], classes=[FORGET], request_id="SCALE-1")
        t_plan = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = run_forget(hub, plan, workers=workers, executor=executor, **path)
        t_run = time.perf_counter() - t1
        total = time.perf_counter() - t0
    peak_rss = _vm_hwm_mb()
    after_apparent, after_disk = tree_bytes(hub_dir)
    changed = 0
    n_changed_files = 0
    new_weights = {}
    for repo, v in result.revisions.items():
        old = hub.commit_info(repo, v["from"])
        new = hub.commit_info(repo, v["to"])
        for path, sha in new.files.items():
            if old.files.get(path) != sha:
                changed += new.sizes[path]
                n_changed_files += 1
        new_weights[repo] = new.files[WEIGHTS_FILE]
    paths = [hub.file_path(r, WEIGHTS_FILE, v["to"]) for r, v in result.revisions.items()]
    with tempfile.TemporaryDirectory(dir=hub_dir.parent) as scratch:
        rw_sync = read_write_seconds(paths, Path(scratch), fsync=True)
        rw_buf = read_write_seconds(paths, Path(scratch), fsync=False)
    n = len(result.revisions)
    per = total / n
    out = {
        "executor": executor + (" (batched CPU path)" if batched else "") + (" (workers warmed up)" if warm else ""),
        "workers": workers,
        "affected": n,
        "seconds": round(total, 3),
        "plan_seconds": round(t_plan, 3),
        "run_seconds": round(t_run, 3),
        "phases": {k: round(v, 3) for k, v in result.seconds.items()},
        "ray_init_seconds": None if ray_init_s is None else round(ray_init_s, 2),
        "per_descendant_seconds": round(per, 5),
        "weights_bytes": paths[0].stat().st_size,
        "read_write_fsync_median_s": round(statistics.median(rw_sync), 5),
        "read_write_buffered_median_s": round(statistics.median(rw_buf), 5),
        "per_descendant_io_ratio": round(per / statistics.median(rw_sync), 2),
        "per_descendant_io_ratio_buffered": round(per / statistics.median(rw_buf), 2),
        "peak_rss_mb": round(peak_rss, 1),
        "rss_before_forget_mb": round(rss0, 1),
        "peak_tree_pss_mb": round(tree.peak, 1),
        "tree_processes": tree.procs,
        "hub_bytes_added": after_apparent - before_apparent,
        "hub_disk_bytes_added": after_disk - before_disk,
        "changed_files": n_changed_files,
        "changed_files_bytes": changed,
        "bytes_added_ratio": round((after_apparent - before_apparent) / changed, 4),
        "disk_bytes_added_ratio": round((after_disk - before_disk) / changed, 4),
        "new_weights_sha256": new_weights,
    }
    if executor == "ray":
        import ray

        ray.shutdown()
    return out


def run_on_copy(src: Path, work: Path, script: str, args: list[str], out_json: Path, what: str, log) -> dict:
    """Copy the hub ``src`` to ``work`` (fresh), run ``script --measure work <args> --measure-out out_json`` in a
    fresh single-threaded subprocess, and return the JSON it wrote; the copy is removed afterwards."""
    if work.exists():
        shutil.rmtree(work)
    t = time.perf_counter()
    shutil.copytree(src, work, symlinks=True)
    os.sync()  # flush the copy now: the forget's publish syncs the file system and would pay for it
    log(f"  copied the hub in {time.perf_counter() - t:.1f}s; measuring {what}")
    cmd = [sys.executable, script, "--measure", str(work), *args, "--measure-out", str(out_json)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measure {what} failed (exit {proc.returncode}; -9 is a kill, e.g. the OOM killer):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(out_json.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return data


def _measure_in_subprocess(src: Path, work: Path, executor: str, workers: int, batched: bool, log,
                           warm: bool = False) -> dict:
    args = ["--executor", executor, "--workers", str(workers)] + (["--batched"] if batched else []) \
        + (["--warm"] if warm else [])
    return run_on_copy(src, work, __file__, args, work.parent / f"measure-{executor}-{int(batched)}-{int(warm)}.json",
                       f"{executor}{' batched' if batched else ''}", log)


# ============================================================================================== main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the root")
    ap.add_argument("--fim-samples", type=int, default=256)
    ap.add_argument("--max-depth", type=int, default=24)
    ap.add_argument("--publish-batch", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="Ray CPUs (local Ray) / process-pool size")
    ap.add_argument("--executors", default="local,ray,ray-warm,local-batched",
                    help="comma-separated runs: local (one process), ray (a fresh local Ray: workers import torch "
                         "during the forget), ray-warm (workers warmed up first), local-batched (the batched "
                         "path on CPU)")
    ap.add_argument("--keep", type=Path, help="build the hub here and keep it (reused if it is already built)")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--measure-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--executor", default="local", help=argparse.SUPPRESS)
    ap.add_argument("--batched", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.measure:  # child process
        res = measure(args.measure, args.executor, 1 if args.executor == "local" else args.workers, args.batched,
                      args.warm)
        args.measure_out.write_text(json.dumps(res))
        return res

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fiun-scale-") as tmp:
        tmp = Path(tmp)
        src = args.keep or tmp / "hub"
        build_info = build_or_reuse(src, args, log)
        hub_apparent, hub_disk = tree_bytes(src)
        runs = {}
        for e in executors:
            base = e.split("-")[0]
            if base not in ("local", "ray") or e not in ("local", "ray", "ray-warm", "local-batched"):
                raise SystemExit(f"unknown executor run {e!r}: use local, ray, ray-warm, local-batched")
            runs[e] = _measure_in_subprocess(src, tmp / "work", base, 1 if base == "local" else args.workers,
                                             e.endswith("-batched"), log, warm=e.endswith("-warm"))
            log(f"  {e}: {runs[e]['seconds']}s, peak RSS {runs[e]['peak_rss_mb']} MB")
    shas = {e: r.pop("new_weights_sha256") for e, r in runs.items()}
    ref = next(iter(shas.values()))
    identical = {e: s == ref for e, s in shas.items()}
    main_run = runs.get("local") or next(iter(runs.values()))
    import torch

    out = {
        "benchmark": "scale",
        "command": "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "ray": _ray_version(),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
                    "loadavg_1m_at_start": round(load0, 2), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "synthetic": "root trained on digits; all other weights = parent(s) + 1% noise (untrained); random DAG; "
                     "real per-model sidecars, all on the same digits:train subset",
        "build": build_info,
        "hub_bytes_before": hub_apparent,
        "hub_disk_bytes_before": hub_disk,
        # headline numbers (from the local, single-process run)
        "models": build_info["models"],
        "affected": main_run["affected"],
        "seconds": main_run["seconds"],
        "per_descendant_seconds": main_run["per_descendant_seconds"],
        "per_descendant_io_ratio": main_run["per_descendant_io_ratio"],
        "peak_rss_mb": main_run["peak_rss_mb"],
        "peak_memory_mb": {e: {"driver_peak_rss": r["peak_rss_mb"], "process_tree_peak_pss": r["peak_tree_pss_mb"]}
                           for e, r in runs.items()},
        "bytes_added_ratio": main_run["bytes_added_ratio"],
        "executors": {e: r["seconds"] for e, r in runs.items()},
        "identical_weights": identical,
        "targets": {
            "per_descendant_io_ratio<=2": main_run["per_descendant_io_ratio"] <= 2,
            "bytes_added_ratio<=1.05": main_run["bytes_added_ratio"] <= 1.05,
            "ray_identical_to_local": all(identical.values()),
        },
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    return out


def _ray_version() -> str | None:
    try:
        import ray

        return ray.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
