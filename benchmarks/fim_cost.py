"""Timing probe: what does a head FIM cost next to a plain forward pass?

On digits (train split, 16x16, 1 channel) with timm's ``test_resnet`` (briefly trained), times in the same
run, interleaved, ``--repeats`` times:

  forward               a plain no-grad forward pass over the data (chunks of --batch-size)
  per_sample_head       compute_fisher(..., estimator="per-sample") on the head: the closed form
  normalized_head       compute_fisher(..., estimator="normalized") on the head (fiun-hub's sidecar default)
  batch_head            compute_fisher(..., estimator="batch") on the head (closed form as well)
  batch_head_autograd   the same batch estimator the paper's way (forward + backward per batch)
  per_sample_torch_func the per-sample head FIM without the closed form (torch.func vmap over grad)

and writes the medians and the ratio per_sample_head / forward (target <= 1.2) to
``benchmarks/results/fim_cost.json``. On a shared CPU box timings swing; read the ratios.

    python benchmarks/fim_cost.py [--repeats 5] [--threads 1] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from fiun_hub import fisher
from fiun_hub.data import load_data

TARGET = 1.2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared box)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "fim_cost.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = load_data("digits:train", in_chans=1, input_size=(16, 16))
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(20):  # a few steps so the softmax is not uniform
        idx = torch.arange(step * 64, step * 64 + 64) % len(data)
        opt.zero_grad()
        F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
    model.eval()
    layers = fisher.resolve_layers(model)
    x, y, labels, bs = data.x, data.y, data.labels, args.batch_size
    dev = "cpu"

    def forward():
        with torch.no_grad():
            for s in range(0, x.shape[0], bs):
                model(x[s:s + bs])

    def per_sample_head():
        fisher.compute_fisher(model, x, y, labels, layers, batch_size=bs, device=dev)

    def batch_head():
        fisher.compute_fisher(model, x, y, labels, layers, estimator="batch", batch_size=bs, device=dev)

    def normalized_head():
        fisher.compute_fisher(model, x, y, labels, layers, estimator="normalized", batch_size=bs, device=dev)

    def without_closed_form(estimator):
        def run():
            real = fisher._head_linear
            fisher._head_linear = lambda *a, **k: None
            try:
                fisher.compute_fisher(model, x, y, labels, layers, estimator=estimator, batch_size=bs, device=dev)
            finally:
                fisher._head_linear = real
        return run

    cases = {
        "forward": forward,
        "per_sample_head": per_sample_head,
        "normalized_head": normalized_head,
        "batch_head": batch_head,
        "batch_head_autograd": without_closed_form("batch"),
        "per_sample_torch_func": without_closed_form("per-sample"),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    ratios = {f"{k}/forward": med[k] / med["forward"] for k in cases if k != "forward"}
    ratios_min = {f"{k}/forward": best[k] / best["forward"] for k in cases if k != "forward"}
    # each repeat runs every case back to back: the per-repeat ratio cancels slow drifts in machine load
    paired = {f"{k}/forward": statistics.median(a / b for a, b in zip(times[k], times["forward"]))
              for k in cases if k != "forward"}
    out = {
        "model": "test_resnet", "data": "digits:train 16x16", "n_samples": int(x.shape[0]), "layers": layers,
        "batch_size": bs, "repeats": args.repeats, "threads": args.threads, "device": dev,
        "torch": torch.__version__, "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
        "median_s": med, "min_s": best, "all_s": times, "ratios": ratios, "ratios_of_min": ratios_min,
        "ratios_paired_median": paired,
        "ratio_per_sample_head_over_forward": ratios["per_sample_head/forward"], "target": TARGET,
        "meets_target": ratios["per_sample_head/forward"] <= TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for k in cases:
        extra = f"  x{ratios[k + '/forward']:.2f} forward" if k != "forward" else ""
        print(f"{k:24s} median {med[k] * 1000:8.1f} ms{extra}")
    print(f"per-sample head FIM / forward = {out['ratio_per_sample_head_over_forward']:.3f} of medians, "
          f"{ratios_min['per_sample_head/forward']:.3f} of minima, "
          f"{paired['per_sample_head/forward']:.3f} median of paired ratios (target <= {TARGET})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
