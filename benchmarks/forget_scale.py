"""Per-descendant cost of a class-wise forget, as a ratio to reading plus writing the descendant's weights.

Builds a DAG of N models (default 200 descendants of one root: chains, fan-outs and two-parent merges) in a
fresh hub: the root is trained briefly on digits, every other model is its parent's weights (the average of
two parents for a merge) plus small noise, and every model gets real sidecars computed on digits:train.
Then it times `fiun-hub forget --origin ROOT --classes 3` (library calls plan_forget + run_forget, one process
unless --workers / --executor say otherwise), each repetition on a fresh copy of the built hub, and, in the
same run, the plain read + write (with fsync, as the hub writes) of each affected weight file.

    python benchmarks/forget_scale.py --descendants 200
    python benchmarks/forget_scale.py --descendants 200 --keep /tmp/bench200 --repeat 3     # build once, reuse
    python benchmarks/forget_scale.py --keep /tmp/bench200 --profile /tmp/forget200.prof.txt  # + a cProfile

Writes benchmarks/results/forget_scale.json (the median repetition; every repetition under "runs").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from fiun_hub.data import load_data  # noqa: E402
from fiun_hub.hub.local import LocalHub  # noqa: E402
from fiun_hub.models import save_model_folder  # noqa: E402
from fiun_hub.repo import push_folder  # noqa: E402
from fiun_hub.sidecars import compute_and_commit  # noqa: E402
from fiun_hub.research.training import train_classifier  # noqa: E402
from fiun_hub.unlearn import plan_forget, run_forget  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def build(hub: LocalHub, n_desc: int, seed: int, work: Path, arch: str = "test_resnet") -> str:
    import timm

    torch.manual_seed(seed)
    rng = random.Random(seed)
    labels = [str(i) for i in range(10)]
    train = load_data("digits:train", in_chans=1, input_size=(16, 16))
    root = timm.create_model(arch, num_classes=10, in_chans=1)
    train_classifier(root, train, epochs=3, lr=3e-3, seed=seed)
    states = {"bench/m000": root.state_dict()}
    save_model_folder(root, work / "m000", labels, input_size=(1, 16, 16))
    push_folder(hub, work / "m000", "bench/m000")
    names = ["bench/m000"]
    for i in range(1, n_desc + 1):
        r = rng.random()
        if r < 0.5:
            parents = [names[-1]]  # chain
        elif r < 0.85:
            parents = [rng.choice(names)]  # fan-out
        else:
            parents = rng.sample(names, 2) if len(names) > 1 else [names[0]]  # merge
        state = {}
        for k, v in states[parents[0]].items():
            if v.is_floating_point():
                base = sum(states[p][k] for p in parents) / len(parents)
                state[k] = base + 0.01 * base.std().nan_to_num() * torch.randn_like(base)
            else:
                state[k] = v.clone()
        name = f"bench/m{i:03d}"
        root.load_state_dict(state)
        save_model_folder(root, work / name.split("/")[1], labels, input_size=(1, 16, 16))
        push_folder(hub, work / name.split("/")[1], name, parents=parents)
        states[name] = state
        names.append(name)
    for n in names:
        compute_and_commit(hub, n, "digits:train")
    return names[0]


def read_write_seconds(hub: LocalHub, repos: list[str], scratch: Path) -> list[float]:
    out = []
    for r in repos:
        src = hub.file_path(r, "model.safetensors")
        t = time.perf_counter()
        data = src.read_bytes()
        dst = scratch / "copy.safetensors"
        with open(dst, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        out.append(time.perf_counter() - t)
    return out


def forget_once(hub: LocalHub, root: str, scratch: Path, args, profile: Path | None = None) -> dict:
    """One timed plan + forget on ``hub`` (changed in place), with the read + write baseline around it."""
    plan = plan_forget(hub, [root], classes=["3"])  # warm-up: imports, first reads
    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    plan = plan_forget(hub, [root], classes=["3"])
    plan_s = time.perf_counter() - t
    repos = [n.repo for n in plan.nodes]
    rw_before = read_write_seconds(hub, repos, scratch)
    t = time.perf_counter()
    result = run_forget(hub, plan, workers=args.workers, executor=args.executor)
    forget_s = time.perf_counter() - t
    if prof is not None:
        import io
        import pstats

        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(40)
        profile.write_text(out.getvalue())
    rw_after = read_write_seconds(hub, repos, scratch)
    return {"affected": len(repos), "plan_s": plan_s, "forget_s": forget_s, "rw": rw_before + rw_after,
            "phases": dict(result.seconds)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--descendants", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="ray: a local Ray with --workers CPUs, started (and warmed up) before the clock")
    ap.add_argument("--repeat", type=int, default=1, help="forgets, each on a fresh copy of the built hub")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the first repetition here (text)")
    ap.add_argument("--arch", default="test_resnet", help="timm architecture of every model (resnet18: 45 MB)")
    ap.add_argument("--out", type=Path, default=RESULTS / "forget_scale.json")
    ap.add_argument("--keep", type=Path, help="Build the hub here and keep it (reused if it exists).")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and far faster on a shared box
    import shutil

    ray_init_s = None
    if args.executor == "ray":
        from fiun_hub.executors import init_ray

        t = time.perf_counter()
        ray = init_ray(num_cpus=max(2, args.workers))
        ray.get([ray.remote(lambda: __import__("fiun_hub.unlearn")).remote() for _ in range(4)])
        ray_init_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        where = args.keep or tmp / "hub"
        t = time.perf_counter()
        if args.keep and (args.keep / ".fiun").is_dir():
            root = "bench/m000"
        else:
            LocalHub.init(where)
            root = build(LocalHub(where), args.descendants, args.seed, tmp / "folders", args.arch)
        build_s = time.perf_counter() - t
        runs = []
        for i in range(args.repeat):  # each on a fresh copy, so the built hub stays pre-forget
            work = tmp / f"work{i}"
            shutil.copytree(where, work, symlinks=True)
            os.sync()  # flush the copy now: the forget's publish syncs the file system and would pay for it
            runs.append(forget_once(LocalHub(work), root, tmp, args, args.profile if i == 0 else None))
            shutil.rmtree(work)
        size = LocalHub(where).file_path(root, "model.safetensors").stat().st_size
    n = runs[0]["affected"]
    per = [(r["forget_s"] + r["plan_s"]) / n for r in runs]
    rw = statistics.median([x for r in runs for x in r["rw"]])
    best = sorted(range(len(runs)), key=lambda i: per[i])[len(runs) // 2]  # the median repetition
    med = runs[best]
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "command": "python benchmarks/forget_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "arch": args.arch,
        "executor": args.executor,
        "workers": args.workers,
        "ray_init_seconds": None if ray_init_s is None else round(ray_init_s, 2),
        "affected": n,
        "weights_bytes": size,
        "build_seconds": round(build_s, 2),
        "repetitions": len(runs),
        "plan_seconds": round(med["plan_s"], 3),
        "forget_seconds": round(med["forget_s"], 3),
        "forget_phases": {k: round(v, 3) for k, v in med["phases"].items()},
        "per_descendant_seconds": round(per[best], 5),
        "per_descendant_seconds_all": [round(p, 5) for p in per],
        "weights_read_write_seconds_median": round(rw, 5),
        "per_descendant_io_ratio": round(per[best] / rw, 2),
        "per_descendant_io_ratio_all": [round(p / rw, 2) for p in per],
        "profile": str(args.profile) if args.profile else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
