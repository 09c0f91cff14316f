"""Per-descendant cost of a class-wise forget, as a ratio to reading plus writing the descendant's weights.

Builds a DAG of N models (default 200 descendants of one root: chains, fan-outs and two-parent merges) in a
fresh hub: the root is trained briefly on digits, every other model is its parent's weights (the average of
two parents for a merge) plus small noise, and every model gets real sidecars computed on digits:train.
Then it times `fiun-hub forget --origin ROOT --classes 3` (library call, one process) and, in the same run,
the plain read + write (with fsync, as the hub writes) of each affected weight file.

    python benchmarks/forget_scale.py --descendants 200

Writes benchmarks/results/forget_scale.json.
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
from fiun_hub.training import train_classifier  # noqa: E402
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--descendants", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--arch", default="test_resnet", help="timm architecture of every model (resnet18: 45 MB)")
    ap.add_argument("--out", type=Path, default=RESULTS / "forget_scale.json")
    ap.add_argument("--keep", type=Path, help="Build the hub here and keep it (reused if it exists).")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and far faster on a shared box
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        where = args.keep or tmp / "hub"
        t = time.perf_counter()
        if args.keep and (args.keep / ".fiun").is_dir():
            hub, root = LocalHub(where), "bench/m000"
        else:
            hub = LocalHub.init(where)
            root = build(hub, args.descendants, args.seed, tmp / "folders", args.arch)
        build_s = time.perf_counter() - t
        if args.keep:  # measure on a copy so the kept hub stays pre-forget
            import shutil

            shutil.copytree(where, tmp / "work", symlinks=True)
            hub = LocalHub(tmp / "work")
        plan = plan_forget(hub, [root], classes=["3"])  # warm-up: imports, first reads
        t = time.perf_counter()
        plan = plan_forget(hub, [root], classes=["3"])
        plan_s = time.perf_counter() - t
        repos = [n.repo for n in plan.nodes]
        rw_before = read_write_seconds(hub, repos, tmp)
        t = time.perf_counter()
        result = run_forget(hub, plan, workers=args.workers)
        forget_s = time.perf_counter() - t
        rw_after = read_write_seconds(hub, repos, tmp)
        size = hub.file_path(root, "model.safetensors").stat().st_size
    rw = statistics.median(rw_before + rw_after)
    per_desc = (forget_s + plan_s) / len(repos)
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
        "command": "python benchmarks/forget_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "arch": args.arch,
        "affected": len(repos),
        "weights_bytes": size,
        "build_seconds": round(build_s, 2),
        "plan_seconds": round(plan_s, 3),
        "forget_seconds": round(forget_s, 3),
        "forget_phases": {k: round(v, 3) for k, v in result.seconds.items()},
        "per_descendant_seconds": round(per_desc, 5),
        "weights_read_write_seconds_median": round(rw, 5),
        "per_descendant_io_ratio": round(per_desc / rw, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
