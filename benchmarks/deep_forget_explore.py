"""Exploration behind docs/method.md section 9 (issue 16): can two simple deeper edits take the forgotten class out
of the penultimate features of one digits model? Not a method of fiun-hub; the numbers back one sentence.

One ``test_resnet`` (16x16) trained from scratch on all of ``digits:train`` (10 epochs); forgets of ``3`` and of
``1,3,5,7``; every variant first sets the forgotten head rows to the mean of the retained rows (what FIUn's head
rule tends to), then:

- ``zero-k``: zero the k penultimate channels with the largest ratio of the forgotten classes' to the retained
  classes' normalized head-FIM column sums (``fiun_hub.research.deep_forget``), k = 0..48 of 96;
- ``relabel-s``: s Adam steps (lr 1e-3, batch 32, BatchNorm in eval) on ``layer4`` only, on the forgotten training
  samples, toward the head-reset model's own predictions (the retained class each sample now falls into).

Reported: forget / retain accuracy, linear-probe recall of the forgotten classes (fit on every other training
sample), next to a model retrained without the classes.

    nice -n 10 python benchmarks/deep_forget_explore.py    # ~1-2 min on 2 cores

Writes ``benchmarks/results/deep_forget_explore.json``.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fiun_hub.dampening import retain_fim, unlearning_fim  # noqa: E402
from fiun_hub.data import load_data  # noqa: E402
from fiun_hub.research.deep_forget import channel_ratio, zero_feature_channels  # noqa: E402
from fiun_hub.evaluate import forget_retain_accuracy, linear_probe  # noqa: E402
from fiun_hub.fisher import compute_fisher, resolve_layers  # noqa: E402
from fiun_hub.research.scenarios import new_model  # noqa: E402
from fiun_hub.research.training import train_classifier  # noqa: E402

LABELS = [str(i) for i in range(10)]


def trained(data):
    m = new_model("test_resnet", 10, 1, 0)
    train_classifier(m, data, epochs=10, lr=3e-3, batch_size=32, seed=0)
    return m.eval()


def head_reset(model, rows):
    m = copy.deepcopy(model)
    keep = [i for i in range(10) if i not in rows]
    with torch.no_grad():
        for r in rows:
            m.fc.weight[r] = m.fc.weight[keep].mean(0)
            m.fc.bias[r] = m.fc.bias[keep].mean()
    return m


def relabel(mh, xf, steps, lr=1e-3):
    m = copy.deepcopy(mh).eval()
    for n, p in m.named_parameters():
        p.requires_grad_(n.startswith("layer4"))
    with torch.no_grad():
        tgt = mh(xf).argmax(1)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randperm(len(xf), generator=g)[:32]
        opt.zero_grad()
        F.cross_entropy(m(xf[idx]), tgt[idx]).backward()
        opt.step()
    return m.eval()


def main() -> int:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tr = load_data("digits:train", in_chans=1, input_size=(16, 16))
    te = load_data("digits:test", in_chans=1, input_size=(16, 16))
    probe_train = tr.subset(torch.arange(0, len(tr), 2))
    m = trained(tr)
    fim = compute_fisher(m, tr.x, tr.y, LABELS, resolve_layers(m, "head"), estimator="normalized")

    def score(model, forget):
        f, r = forget_retain_accuracy(model, LABELS, te, forget)
        return {"forget_acc": round(f, 1), "retain_acc": round(r, 1),
                "probe_recall": round(linear_probe(model, LABELS, probe_train, te, forget)["forget_recall"], 1)}

    out = {"command": "nice -n 10 python benchmarks/deep_forget_explore.py", "requests": {}}
    for forget in (["3"], ["1", "3", "5", "7"]):
        rows = [int(c) for c in forget]
        is_f = torch.isin(tr.y, torch.tensor(rows))
        res = {"original": score(m, forget),
               "retrain": score(trained(tr.subset(torch.nonzero(~is_f).flatten())), forget)}
        u = unlearning_fim(fim.class_fims, fim.counts, forget)["fc.weight"]
        fr = retain_fim(fim.model_fim, fim.class_fims, fim.counts, forget)["fc.weight"]
        order = torch.argsort(channel_ratio(u, fr), descending=True)
        base = head_reset(m, rows)
        state = {k: v.clone() for k, v in base.state_dict().items()}
        for k in (0, 8, 16, 24, 32, 48):
            z = copy.deepcopy(base)
            z.load_state_dict(zero_feature_channels(z, state, order[:k].tolist()))
            res[f"zero-{k}"] = score(z.eval(), forget)
        for steps in (20, 50, 100):
            res[f"relabel-{steps}"] = score(relabel(base, tr.x[is_f], steps), forget)
        out["requests"][",".join(forget)] = res
        print(",".join(forget), json.dumps(res), flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = ROOT / "benchmarks" / "results" / "deep_forget_explore.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
