"""Ablation behind docs/method.md section 11 (issue 16 part 2): which deeper, data-free-at-descendants edit takes
the forgotten classes out of the penultimate features (linear-probe recall near a retrained model's)?

Phase ``single`` (minutes): one ``test_resnet`` (16x16) trained on all of ``digits:train`` (10 epochs), forgets
of ``3`` and of ``1,3,5,7``. Every variant ends with FIUn's head rule (``class_forget_update`` on the head, its
defaults) and is scored on ``digits:test``: forget / retain accuracy, top-2 leak, linear-probe recall of the
forgotten classes (probe fit on every other training sample), next to a model retrained without the classes.

- ``head``: today's rule (the backbone untouched);
- ``ssd-l4``: option (a), the rule of docs/method.md section 1 (retain FIM, normalized estimator, toward 0 off
  the head) on ``layer4``'s conv weights + the head, FIMs over those layers, several alpha / lambda;
- ``shrink``: option (b), at the origin only, with the request's data (the forgotten classes' training samples):
  Adam steps on ``layer4`` pushing each forgotten sample to the retained class the ORIGINAL head ranks best for
  it (boundary shrink), EWC-regularised by the origin's retain FIM over ``layer4`` (gamma * sum F_r d^2,
  normalized estimator); the weight delta is what a descendant would receive;
- ``proj-oracle``: option (c) as an upper bound that is not a weight edit (no exact fold through the final ReLU
  exists for a ResNet): the probe is fit on features with the forgotten classes' mean directions projected out.

Phase ``dag``: ``benchmarks/beyond_head.py``'s DAG (R root, A fine-tune child, T transfer child with R's frozen
backbone), FIUn's head update through ``plan_forget``/``run_forget``, then the last block's residual sum projected
off the forgotten classes' prototype directions (folded, docs/method.md section 11): from the origin's prototypes
(all / all-1 directions), each model's own (the top k, k = 1..n: the scope is ``max(1, n-1)``) and each model's own
``unique`` part (orthogonalized against the retained prototypes' deviations) and, opt-in (``FFE_FAMILIES=mix``),
an edit between rank n-2 and n-1 (the (n-1)-th direction mixed with a class-free one at ``FFE_MIX`` degrees),
against the retrained DAG. The
original, head, retrained and own/unique models also get beyond_head's relearn test (retained data only), a
few-shot relearn (+``FFE_FEW`` samples per forgotten class, ``FFE_FEW_EPOCHS`` epochs) and the class MIA (the
model's forgotten-class training samples against their test samples). The models' prototypes (originals and
retrained) go to ``..._prototypes.json``.

Phase ``rules``: per-model rank rules (from prototypes alone) scored on the dag results: each rule's pick is a
``fold-own k=K`` cell, plus the rank closest to retrain in hindsight (the ceiling of any rank rule).

    nice -n 10 python benchmarks/features_forget_explore.py single
    nice -n 10 python benchmarks/features_forget_explore.py dag                              # ~4 min, shared cores
    FFE_DATASET=fashion-mnist nice -n 10 python benchmarks/features_forget_explore.py dag   # ~6-21 min
    python benchmarks/features_forget_explore.py rules                                      # after both dag runs
    nice -n 10 python benchmarks/features_forget_explore.py libcheck   # the library's features_forget = this fold

Env: ``FFE_DATASET`` (digits), ``FFE_FAMILIES`` (origin,own,unique; or mix), ``FFE_FEW`` (5), ``FFE_FEW_EPOCHS``
(1), ``FFE_MIX`` (0,30,45,60,90), ``FFE_SEED`` (0), ``FFE_TAG`` (appended to the results file's name). Writes
``benchmarks/results/features_forget_explore_<phase>
[_<dataset>][_<tag>].json``.
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

from fiun_hub.dampening import class_forget_update, retain_fim, unlearning_fim  # noqa: E402
from fiun_hub.data import load_data  # noqa: E402
from fiun_hub.evaluate import (forget_retain_accuracy, linear_probe, penultimate_features,  # noqa: E402
                               probe_recall_from_features, top2_leak)
from fiun_hub.fisher import compute_fisher, resolve_layers  # noqa: E402
from fiun_hub.research.scenarios import new_model  # noqa: E402
from fiun_hub.research.training import train_classifier  # noqa: E402

LABELS = [str(i) for i in range(10)]
HEAD = ["fc.weight", "fc.bias"]
L4_CONV = "layer4.*conv*.weight,layer4.*downsample.1.weight"
RESULTS = ROOT / "benchmarks" / "results"
#: the dag phase's fold families: the origin's prototypes (all / all-1 directions), each model's own (top k of the
#: class-mean directions, k = 1..n), each model's own ``unique`` part (top k of the directions orthogonalized
#: against the retained classes' deviations)
FAMILIES = tuple(os.environ.get("FFE_FAMILIES", "origin,own,unique").split(","))
#: the DAG's seed (beyond_head's ``plan_dag``: shards, inits, shuffles; the retrained DAG uses the same recipes)
SEED = int(os.environ.get("FFE_SEED", "0"))
T0 = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def trained(data, epochs=10, seed=0):
    m = new_model("test_resnet", 10, 1, seed)
    train_classifier(m, data, epochs=epochs, lr=3e-3, batch_size=32, seed=seed)
    return m.eval()


def with_params(model, params):
    m = copy.deepcopy(model)
    sd = m.state_dict()
    sd.update({k: v.to(sd[k].dtype) for k, v in params.items()})
    m.load_state_dict(sd)
    return m.eval()


def head_rule(model, labels, head_fim, forget):
    """FIUn's class-wise head update at its defaults (the model's own head sidecar, the origin = itself)."""
    p = {n: t.detach().clone() for n, t in model.named_parameters() if n in HEAD}
    u = unlearning_fim(head_fim.class_fims, head_fim.counts, forget)
    new = class_forget_update(p, labels, head_fim.model_fim, head_fim.class_fims, head_fim.counts, u, forget, HEAD)
    return with_params(model, new)


def score(model, labels, probe_train, test, forget):
    f, r = forget_retain_accuracy(model, labels, test, forget)
    pr = linear_probe(model, labels, probe_train, test, forget)
    return {"forget_acc": round(f, 1), "retain_acc": round(r, 1),
            "top2_leak": round(top2_leak(model, labels, test, forget), 1),
            "probe_recall": round(pr["forget_recall"], 1), "probe_retain_acc": round(pr["retain_acc"], 1)}


def ssd_layers(model, fim, forget, alpha, lam):
    """Option (a): the section-1 rule over every layer of ``fim`` (head rows restricted, off-head toward 0)."""
    p = {n: t.detach().clone() for n, t in model.named_parameters() if n in fim.model_fim}
    u = unlearning_fim(fim.class_fims, fim.counts, forget)
    new = class_forget_update(p, LABELS, fim.model_fim, fim.class_fims, fim.counts, u, forget, HEAD,
                              alpha=alpha, lam=lam)
    changed = sum(int((new[n] != p[n]).sum()) for n in p if n not in HEAD)
    return new, changed


def shrink_delta(model, xf, retain_l4, *, steps, lr, gamma, forget_rows, batch=32, seed=0):
    """Option (b) at the origin: boundary shrink of ``layer4`` on the forgotten samples ``xf`` (targets: the
    retained class the original head ranks first), EWC penalty ``gamma * sum F_r (theta - theta0)^2``.
    Returns the delta on layer4's parameters (BN affine included, running stats untouched)."""
    m = copy.deepcopy(model).eval()
    names = [n for n, _ in m.named_parameters() if n.startswith("layer4")]
    for n, p in m.named_parameters():
        p.requires_grad_(n in names)
    theta0 = {n: p.detach().clone() for n, p in m.named_parameters() if n in names}
    with torch.no_grad():
        lg = m(xf)
        lg[:, list(forget_rows)] = -torch.inf
        tgt = lg.argmax(1)
    params = [p for n, p in m.named_parameters() if n in names]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    fr = {n: retain_l4[n] for n in names if n in retain_l4}
    for _ in range(steps):
        idx = torch.randperm(len(xf), generator=g)[:batch]
        opt.zero_grad()
        loss = F.cross_entropy(m(xf[idx]), tgt[idx])
        if gamma:
            loss = loss + gamma * sum((fr[n] * (p - theta0[n]) ** 2).sum()
                                      for n, p in m.named_parameters() if n in fr)
        loss.backward()
        opt.step()
    return {n: (p.detach() - theta0[n]) for n, p in m.named_parameters() if n in names}


def add_delta(model, delta, scale=1.0):
    sd = {n: (t + scale * delta[n]) for n, t in model.state_dict().items() if n in delta}
    return with_params(model, sd)


def proj_oracle(model, labels, probe_train, test, forget):
    """Probe on features with the forgotten classes' mean directions (about the retained mean) projected out."""
    ftr = penultimate_features(model, probe_train.x).double()
    fte = penultimate_features(model, test.x).double()
    rows = [labels.index(c) for c in forget]
    keep = [i for i in range(len(labels)) if i not in rows]
    mu_r = ftr[torch.isin(probe_train.y, torch.tensor(keep))].mean(0)
    dirs = torch.stack([ftr[probe_train.y == r].mean(0) - mu_r for r in rows], 1)
    q, _ = torch.linalg.qr(dirs)
    P = torch.eye(ftr.shape[1], dtype=torch.float64) - q @ q.T
    res = probe_recall_from_features((ftr @ P).numpy(), probe_train.y.numpy(), (fte @ P).numpy(), test.y.numpy(),
                                     rows)
    return {"probe_recall": round(res["forget_recall"], 1), "probe_retain_acc": round(res["retain_acc"], 1)}


# ----------------------------------------------------------------------------------- option (c): a folded projection
def pre_act(model, x, batch=256):
    """Spatially pooled input of ``layer4[-1].act2`` (the residual sum before the last ReLU), (N, C) float64."""
    got = []
    h = model.layer4[-1].act2.register_forward_pre_hook(lambda mod, inp: got.append(inp[0].detach().clone()))
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
    finally:
        h.remove()
    return torch.cat([g.mean((2, 3)) for g in got]).double()


def bn_affine(bn):
    sd = torch.sqrt(bn.running_var.double() + bn.eps)
    a = bn.weight.double() / sd
    return a, bn.bias.double() - a * bn.running_mean.double(), sd


def fold_projection(model, P, c):
    """Make the last block's residual sum ``s`` (pre-ReLU) into ``c + P (s - c)`` exactly: fold ``P diag(a)`` into
    conv2 and the downsample conv, their BNs become ``x -> x + bias`` (running mean 0, weight = running std).
    Needs ``layer4[-1]`` with a downsample (BN last): otherwise the identity shortcut cannot be projected."""
    m = copy.deepcopy(model)
    blk = m.layer4[-1]
    if blk.downsample is None:
        raise ValueError("last block has an identity shortcut: no exact fold")
    P = P.double()
    with torch.no_grad():
        bias_total = (torch.eye(P.shape[0], dtype=torch.float64) - P) @ c
        for conv, bn in ((blk.conv2, blk.bn2), (blk.downsample[1], blk.downsample[2])):
            a, b, sd = bn_affine(bn)
            W = conv.weight.double()
            conv.weight.copy_(torch.einsum("ok,kihw->oihw", P * a[None, :], W).to(conv.weight.dtype))
            new_b = P @ b + (bias_total if bn is blk.bn2 else 0)
            bn.running_mean.zero_()
            bn.weight.copy_(sd.to(bn.weight.dtype))
            bn.bias.copy_(new_b.to(bn.bias.dtype))
    return m.eval()


def projector(dirs, t):
    q, _ = torch.linalg.qr(dirs.double())
    return torch.eye(q.shape[0], dtype=torch.float64) - t * (q @ q.T)


def data_dirs(model, x, y, rows, keep):
    """Class-mean directions of the forgotten rows about the retained mean, in pooled pre-activation space, and
    the retained mean (the origin's own training data)."""
    s = pre_act(model, x)
    mu_r = s[torch.isin(y, torch.tensor(keep))].mean(0)
    return torch.stack([s[y == r].mean(0) - mu_r for r in rows], 1), mu_r


def fim_dirs(model, head_fim, forget, labels):
    """Data-free: second-moment prototypes from the head FIM column sums (normalized estimator: a class's mean
    share of feature energy per channel), sqrt, forgotten minus retained; centre from the BNs' biases."""
    fr = retain_fim(head_fim.model_fim, head_fim.class_fims, head_fim.counts, forget)["fc.weight"].double().sum(0)
    dirs = torch.stack([head_fim.class_fims[c]["fc.weight"].double().sum(0).sqrt() - fr.sqrt() for c in forget], 1)
    blk = model.layer4[-1]
    c = bn_affine(blk.bn2)[1] * 0 + blk.bn2.bias.double() + blk.downsample[2].bias.double()
    return dirs, c


def single(families=("ssd", "shrink")) -> dict:
    tr = load_data("digits:train", in_chans=1, input_size=(16, 16))
    te = load_data("digits:test", in_chans=1, input_size=(16, 16))
    probe_train = tr.subset(torch.arange(0, len(tr), 2))
    m = trained(tr)
    log("trained original")
    head_fim = compute_fisher(m, tr.x, tr.y, LABELS, HEAD, estimator="normalized")
    l4_layers = resolve_layers(m, L4_CONV) + HEAD
    l4_fim = compute_fisher(m, tr.x, tr.y, LABELS, l4_layers, estimator="normalized")
    all_l4 = [n for n, _ in m.named_parameters() if n.startswith("layer4")] + HEAD
    l4_all_fim = compute_fisher(m, tr.x, tr.y, LABELS, all_l4, estimator="normalized")
    log("FIMs")
    out = {"command": "nice -n 10 python benchmarks/features_forget_explore.py " + ("single" if "ssd" in families
           else families[0]), "requests": {}}
    for forget in (["3"], ["1", "3", "5", "7"]):
        rows = [int(c) for c in forget]
        is_f = torch.isin(tr.y, torch.tensor(rows))
        sc = lambda mm: score(mm, LABELS, probe_train, te, forget)  # noqa: E731
        retrained = trained(tr.subset(torch.nonzero(~is_f).flatten()))
        res = {"original": sc(m), "retrain": sc(retrained), "head": sc(head_rule(m, LABELS, head_fim, forget))}
        res["proj-oracle"] = proj_oracle(head_rule(m, LABELS, head_fim, forget), LABELS, probe_train, te, forget)
        log(f"{forget}: original/retrain/head {res['original']['probe_recall']}/{res['retrain']['probe_recall']}/"
            f"{res['head']['probe_recall']} proj {res['proj-oracle']}")
        keep = [i for i in range(10) if i not in rows]
        if "rank" in families:  # which directions: the top-k left singular vectors of the class-mean directions
            dirs, c = data_dirs(m, tr.x, tr.y, rows, keep)
            u, _, _ = torch.linalg.svd(dirs, full_matrices=False)
            joint = dirs @ torch.tensor([float((tr.y == r).sum()) for r in rows], dtype=torch.float64)
            for k in range(1, len(rows) + 1):
                for key, d in ((f"fold-data svd-k={k}", u[:, :k]),) + ((("fold-data joint", joint[:, None]),)
                                                                       if k == 1 else ()):
                    res[key] = sc(head_rule(fold_projection(m, projector(d, 1.0), c), LABELS, head_fim, forget))
                    log(f"{forget}: {key} {res[key]}")
        if "fold" in families:
            for src in ("data", "fim"):
                dirs, c = (data_dirs(m, tr.x, tr.y, rows, keep) if src == "data" else
                           fim_dirs(m, head_fim, forget, LABELS))
                for t in (0.5, 0.75, 0.9, 1.0):
                    mm = head_rule(fold_projection(m, projector(dirs, t), c), LABELS, head_fim, forget)
                    key = f"fold-{src} t={t}"
                    res[key] = sc(mm)
                    log(f"{forget}: {key} {res[key]}")
        for alpha, lam in ((1, 0.01), (1, 1), (3, 0.01), (10, 0.01), (30, 0.01)) if "ssd" in families else ():
            new, changed = ssd_layers(m, l4_fim, forget, alpha, lam)
            mm = with_params(m, new)
            res[f"ssd-l4 a={alpha} l={lam}"] = {**sc(mm), "changed_l4": changed}
            log(f"{forget}: ssd a={alpha} l={lam} {res[f'ssd-l4 a={alpha} l={lam}']}")
        fr = retain_fim(l4_all_fim.model_fim, l4_all_fim.class_fims, l4_all_fim.counts, forget)
        for steps, lr, gamma in ((30, 1e-3, 0), (100, 1e-3, 0), (100, 1e-3, 1e4), (100, 1e-3, 1e6),
                                 (300, 1e-3, 1e6)) if "shrink" in families else ():
            d = shrink_delta(m, tr.x[is_f], fr, steps=steps, lr=lr, gamma=gamma, forget_rows=rows)
            mm = head_rule(add_delta(m, d), LABELS, head_fim, forget)
            key = f"shrink s={steps} lr={lr} g={gamma:g}"
            res[key] = {**sc(mm), "delta_norm": round(float(sum((v ** 2).sum() for v in d.values()) ** 0.5), 4)}
            log(f"{forget}: {key} {res[key]}")
        out["requests"][",".join(forget)] = res
    return out


# ------------------------------------------------------------------ phase rules: per-model rank rules, offline
def rank_rules(protos, counts, rows):
    """The rank each candidate rule picks for one model and request, from its prototypes alone (``protos``: row ->
    (C,) float64, ``rows``: the forgotten rows it has). ``n-1``: the scope's ``max(1, n - 1)``; ``scatter``: the
    smallest k >= 1 whose projection brings the forgotten prototypes' mean nearest-neighbour distance (to any other
    prototype) down to the retained prototypes' closest pair; ``spread``: remove the directions whose singular
    value is at least the retained prototypes' RMS distance to their mean (at least one)."""
    keep = [r for r in protos if r not in rows]
    n = torch.tensor([float(counts[r]) for r in keep], dtype=torch.float64)
    mu = (torch.stack([protos[r] for r in keep]) * n[:, None]).sum(0) / n.sum()
    d = torch.stack([protos[r] - mu for r in rows], 1)
    u, sv, _ = torch.linalg.svd(d, full_matrices=False)

    def nn(r, table):
        return min(float((table[r] - table[o]).norm()) for o in table if o != r)

    closest = min(nn(r, {k: protos[k] for k in keep}) for r in keep)
    scatter = len(rows)
    for k in range(1, len(rows) + 1):
        q = u[:, :k]
        moved = {r: (protos[r] - q @ (q.T @ (protos[r] - mu))) if r in rows else protos[r] for r in protos}
        if sum(nn(r, moved) for r in rows) / len(rows) <= closest:
            scatter = k
            break
    spread = float(((torch.stack([protos[r] for r in keep]) - mu) ** 2).sum(1).mean().sqrt())
    return {"n-1": max(1, len(rows) - 1), "scatter": scatter, "spread": max(1, int((sv >= spread).sum()))}


def rules() -> dict:
    """Score the rank rules on the dag results already written (digits and Fashion-MNIST): each rule's pick is a
    ``fold-own k=K`` cell of the same run (the same fold), so no model is re-evaluated."""
    out = {"command": "python benchmarks/features_forget_explore.py rules", "datasets": {}}
    for ds in ("digits", "fashion-mnist"):
        path = RESULTS / f"features_forget_explore_dag{'' if ds == 'digits' else '_' + ds}.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        pro = json.loads((RESULTS / res["prototypes_file"]).read_text())["prototypes"]
        got = out["datasets"][ds] = {}
        for req, cells in res["requests"].items():
            for r, pj in pro.items():
                lab = pj["labels"]
                P = {i: torch.tensor(v, dtype=torch.float64) for i, v in enumerate(pj["prototypes"]) if v}
                counts = dict(enumerate(pj["counts"]))
                forget = [str(lab0) for lab0 in _request_labels(req, pro)]
                rows = [lab.index(c) for c in forget if c in lab]
                if not rows:
                    continue
                rt = cells["retrain"][r]["probe_recall"]
                for rule, k in rank_rules(P, counts, rows).items():
                    cell = cells[f"fold-own k={k}"][r]
                    got.setdefault(rule, {}).setdefault(req, {})[r] = {
                        "k": k, "probe_recall": cell["probe_recall"], "retrain": rt,
                        "gap": round(cell["probe_recall"] - rt, 1), "met": abs(cell["probe_recall"] - rt) <= 5.0}
                    log(f"{ds} {req} {r} {rule}: k={k} probe {cell['probe_recall']} retrain {rt}")
                # the ceiling of any rank rule: the rank closest to the retrained model, chosen in hindsight
                best = min(range(1, len(rows) + 1), key=lambda k: abs(cells[f"fold-own k={k}"][r]["probe_recall"] - rt))
                pr = cells[f"fold-own k={best}"][r]["probe_recall"]
                got.setdefault("oracle (not a rule: uses the retrained model)", {}).setdefault(req, {})[r] = {
                    "k": best, "probe_recall": pr, "retrain": rt, "gap": round(pr - rt, 1), "met": abs(pr - rt) <= 5.0}
        for rule, reqs in got.items():
            reqs["every_cell_met"] = all(c["met"] for q in reqs.values() for c in q.values())
    return out


def libcheck() -> dict:
    """The scope as the library runs it (``fiun_hub.feature_forget``: ``class_prototypes`` + ``features_forget``,
    what ``forget --scope features`` folds) against this file's fold (``fold-own k=max(1, n-1)``) on the digits
    DAG's original models: the largest logit difference on 200 test samples per (request, model)."""
    import tempfile

    import beyond_head as BH
    from fiun_hub.feature_forget import class_prototypes, features_forget
    from fiun_hub.hub.local import LocalHub
    from fiun_hub.research.scenarios import realize_scenario, torch_threads

    out = {"command": "nice -n 10 python benchmarks/features_forget_explore.py libcheck", "cells": {}}
    with torch_threads(1), tempfile.TemporaryDirectory(prefix="fiun-ffe-") as tmp:
        prof = BH.PROFILES["digits"]
        scn = BH.plan_dag(prof, 0)
        hub0 = LocalHub.init(Path(tmp) / "built")
        realize_scenario(scn, hub0, num_threads=1)
        ev = BH.Evaluator(scn, hub0, prof, 0)
        labels = list(scn.load_train().labels)
        for req, idx in BH.CLASS_REQUESTS.items():
            classes = [labels[i] for i in idx]
            for r in scn.affected():
                m, lab, data = ev.model(r, None), scn.node(r).labels, scn.train_data(r)
                new, info = features_forget(m, *class_prototypes(m, data.x, data.y, lab), classes)
                lib = copy.deepcopy(m)
                lib.load_state_dict({**lib.state_dict(), **new})
                d, c = proto_dirs(*prototypes(m, data), lab, [x for x in classes if x in lab])
                q = torch.linalg.svd(d, full_matrices=False)[0][:, :max(1, d.shape[1] - 1)]
                with torch.no_grad():
                    diff = float((lib(ev.test.x[:200]) - fold_projection(m, projector(q, 1.0), c)(ev.test.x[:200]))
                                 .abs().max())
                out["cells"][f"{req} {r}"] = {"directions": info["directions"], "max_abs_logit_diff": diff}
                log(f"{req} {r}: {info['directions']} directions, max |logit diff| {diff:.2e}")
    return out


def _request_labels(req, pro):
    import beyond_head as BH

    labels = pro["bench/R"]["labels"]
    return [labels[i] for i in BH.CLASS_REQUESTS[req]]


def main() -> int:
    torch.set_num_threads(1)
    phase = sys.argv[1] if len(sys.argv) > 1 else "single"
    if phase in ("rules", "libcheck"):
        sys.path.insert(0, str(ROOT / "benchmarks"))
    out = single() if phase == "single" else single(("fold",)) if phase == "fold" else \
        single(("rank",)) if phase == "rank" else rules() if phase == "rules" else \
        libcheck() if phase == "libcheck" else dag()
    out["seconds"] = round(time.perf_counter() - T0, 1)
    ds = os.environ.get("FFE_DATASET", "digits")
    tag = os.environ.get("FFE_TAG", "")
    path = RESULTS / (f"features_forget_explore_{phase}{'' if ds == 'digits' or phase != 'dag' else '_' + ds}"
                      f"{'_' + tag if tag else ''}.json")
    split_prototypes(out, path)
    path.write_text(json.dumps(out, indent=1) + "\n")
    log(f"wrote {path}")
    return 0


def split_prototypes(out, path):
    """The dag phase's prototypes (the originals' and the retrained models') go to ``<name>_prototypes.json``, one
    line per model, so that the results file stays readable; ``rank_rules.py``-style checks read both."""
    keep = {k: out.pop(k) for k in ("prototypes", "retrain_prototypes") if k in out}
    if keep:
        side = path.with_name(path.stem + "_prototypes.json")
        side.write_text(json.dumps(keep, separators=(",", ":")) + "\n")
        out["prototypes_file"] = side.name


def prototypes(model, data):
    """Per head row: the mean pooled pre-activation of the last block over the model's own training samples of
    that row (what a prototype sidecar would store: rows x channels floats), and the counts."""
    s = pre_act(model, data.x)
    return {r: s[data.y == r].mean(0) for r in range(len(data.labels)) if bool((data.y == r).any())}, \
        {r: int((data.y == r).sum()) for r in range(len(data.labels))}


#: the ``mix`` family (an edit between rank n-2 and n-1 that is not invertible): degrees of the mixing angle
MIX_DEGREES = tuple(int(v) for v in os.environ.get("FFE_MIX", "0,30,45,60,90").split(","))


def mix_dirs(model, protos, d, deg):
    """The top n-2 directions of ``d`` and ``cos(a) q_{n-1} + sin(a) w``: ``w`` is the direction orthogonal to every
    prototype's deviation (class-free as far as the means tell) with the largest data-free variance estimate of
    ``s`` (per channel ``gamma_bn^2 + gamma_ds^2``: the BatchNorms' outputs have about their weights' variance on
    the training data). a = 0: rank n-1; a = 90: rank n-2 plus a class-free direction. Removing the mixed direction
    loses part of the q_{n-1} signal under w's noise: not invertible, unlike a shrink."""
    blk = model.layer4[-1]
    var = (blk.bn2.weight.detach().double() ** 2 + blk.downsample[2].weight.detach().double() ** 2)
    allp = torch.stack(list(protos.values()), 1)
    u, sv, _ = torch.linalg.svd(allp - allp.mean(1, keepdim=True), full_matrices=False)
    u = u[:, sv > 1e-6 * sv[0]]
    comp = torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T
    w = torch.linalg.eigh(comp @ torch.diag(var) @ comp)[1][:, -1]
    q = torch.linalg.svd(d, full_matrices=False)[0]
    n = d.shape[1]
    a = torch.deg2rad(torch.tensor(float(deg), dtype=torch.float64))
    v = torch.cos(a) * q[:, n - 2] + torch.sin(a) * w
    return torch.cat([q[:, :n - 2], v[:, None]], 1)


def proto_dirs(protos, counts, labels, forget, unique=False):
    """Forgotten class means about the retained mean (count-weighted), from prototypes only; None if a forgotten
    class has no prototype here. ``unique``: only their part orthogonal to the retained classes' own deviations
    from that mean (what the retained classes' features do not already say about them; the retained prototypes
    are then left exactly where they are)."""
    rows = [labels.index(c) for c in forget if c in labels]
    if any(r not in protos for r in rows):
        return None
    keep = [r for r in protos if r not in rows]
    n = torch.tensor([float(counts[r]) for r in keep], dtype=torch.float64)
    mu_r = (torch.stack([protos[r] for r in keep], 0) * n[:, None]).sum(0) / n.sum()
    d = torch.stack([protos[r] - mu_r for r in rows], 1)
    if unique:
        u, sv, _ = torch.linalg.svd(torch.stack([protos[r] - mu_r for r in keep], 1), full_matrices=False)
        u = u[:, sv > 1e-6 * sv[0]]
        d = d - u @ (u.T @ d)
    return d, mu_r


def proto_json(protos, counts, labels):
    """A model's prototypes for the JSON (row order), so that a rank rule can be evaluated from them afterwards."""
    return {"labels": list(labels), "counts": [counts[r] for r in range(len(labels))],
            "prototypes": [[round(float(v), 5) for v in protos[r]] if r in protos else None
                           for r in range(len(labels))]}


def classwise_fast(ev, r, mm, classes):
    """beyond_head's class-wise metrics without the relearn test (the origin-prototype variants)."""
    labels = ev.labels[r]
    if not any(c in labels for c in classes):
        return {"knows_forgotten": False}
    f, rr = forget_retain_accuracy(mm, labels, ev.test, classes)
    probe = linear_probe(mm, labels, ev.probe_train, ev.test, classes)
    return {"forget_acc": round(f, 1), "retain_acc": round(rr, 1),
            "top2_leak": round(top2_leak(mm, labels, ev.test, classes), 1),
            "probe_recall": round(probe["forget_recall"], 1), "probe_retain_acc": round(probe["retain_acc"], 1)}


def class_mia(scn, ev, r, mm, classes):
    """The membership view of a class forget: the loss-threshold attack's AUC (percent) of the model's own
    training samples of the forgotten classes against held-out test samples of the same classes (a model that
    never trained on them: near 50), and the accuracy on those training samples."""
    from fiun_hub.evaluate import sample_forget_metrics

    here = [c for c in classes if c in ev.labels[r]]
    train = scn.load_train().subset(scn.node(r).shard)
    mine = train.select_labels([c for c in here if c in train.labels])
    held = ev.test.select_labels(here)
    if len(mine) == 0 or len(held) == 0:
        return {}
    m = sample_forget_metrics(mm, ev.labels[r], mine, held)
    return {"class_mia_auc": round(m["mia_auc"], 1), "forgotten_train_acc": round(m["forgotten_acc"], 1)}


#: the few-shot relearn: beyond_head's relearn budget (RELEARN) on the retained data plus this many training
#: samples of each forgotten class (the model's own shard), then forget accuracy on the test split
FEW = int(os.environ.get("FFE_FEW", "5"))
FEW_EPOCHS = int(os.environ.get("FFE_FEW_EPOCHS", "1"))


def relearn_few(scn, ev, r, mm, classes, budget):
    """How fast the class comes back when a few of its samples are in the fine-tuning data (a retrained model gets
    the same data and budget): a harder relearn test than the retained-only one."""
    from fiun_hub.research.training import train_classifier

    data = scn.train_data(r)
    labels = ev.labels[r]
    rows = [labels.index(c) for c in classes if c in labels]
    keep = [int(i) for i in torch.nonzero(~torch.isin(data.y, torch.tensor(rows))).flatten()]
    for row in rows:
        keep += [int(i) for i in torch.nonzero(data.y == row).flatten()[:FEW]]
    twin = copy.deepcopy(mm)
    train_classifier(twin, data.subset(sorted(keep)), epochs=budget["epochs"], lr=budget["lr"],
                     batch_size=budget["batch_size"], seed=scn.node(r).recipe.seed + 37)
    f, rr = forget_retain_accuracy(twin.eval(), labels, ev.test, classes)
    return {"relearn_few_forget_acc": round(f, 1), "relearn_few_retain_acc": round(rr, 1)}


def dag() -> dict:
    """beyond_head's digits DAG: FIUn's head update everywhere, then the last block's residual sum projected off
    the forgotten classes' prototype directions, from the origin's prototypes (``origin``) or each model's own
    (``own``: a fine-tune / transfer child that was trained on those classes), against the retrained DAG."""
    import shutil
    import tempfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import beyond_head as BH
    from fiun_hub.hub.local import LocalHub
    from fiun_hub.research import baselines as BL
    from fiun_hub.research.scenarios import realize_scenario, torch_threads

    prof = BH.PROFILES[os.environ.get("FFE_DATASET", "digits")]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("FFE_DATASET", "FFE_TAG", "FFE_FAMILIES", "FFE_FEW",
                                                    "FFE_FEW_EPOCHS", "FFE_MIX", "FFE_SEED") if os.environ.get(k))
    out = {"command": (env + " " if env else "") + "nice -n 10 python benchmarks/features_forget_explore.py dag",
           "dataset": prof["dataset"], "seed": SEED,
           "relearn": BH.RELEARN, "relearn_few": {"per_class": FEW, "epochs": FEW_EPOCHS},
           "families": list(FAMILIES), "requests": {}}
    with torch_threads(1), tempfile.TemporaryDirectory(prefix="fiun-ffe-") as tmp:
        scn = BH.plan_dag(prof, SEED)
        built = Path(tmp) / "built"
        hub0 = LocalHub.init(built)
        realize_scenario(scn, hub0, num_threads=1)
        log("built DAG")
        ev = BH.Evaluator(scn, hub0, prof, SEED)
        labels = list(scn.load_train().labels)
        aff = scn.affected()
        orig = {r: ev.model(r, None) for r in aff}
        protos = {r: prototypes(orig[r], scn.train_data(r)) for r in aff}
        out["prototypes"] = {r: proto_json(*protos[r], scn.node(r).labels) for r in aff}
        o = scn.origin
        for req, idx in BH.CLASS_REQUESTS.items():
            classes = [labels[i] for i in idx]

            def sc(r, mm, full=False):
                """probe etc.; ``full``: also the relearn test (beyond_head's budget) and the class-wise MIA"""
                got = ev.classwise(r, mm, classes) if full else classwise_fast(ev, r, mm, classes)
                if full and got.get("knows_forgotten", True):
                    got.update(class_mia(scn, ev, r, mm, classes))
                    got.update(relearn_few(scn, ev, r, mm, classes, {**BH.RELEARN, "epochs": FEW_EPOCHS}))
                return got

            res = {"original": {r: sc(r, orig[r], True) for r in aff}}
            hub = BH.copy_hub(built, Path(tmp) / req)
            _, states, _ = BH.run_fiun(hub, scn, classes=classes)
            heads = {r: ev.model(r, states[r]) for r in aff}
            res["head"] = {r: sc(r, heads[r], True) for r in aff}
            rt = BL.retrain(scn, hub0, classes, num_threads=1)
            rtm = {r: ev.model(r, rt.states[r]) for r in aff}
            res["retrain"] = {r: sc(r, rtm[r], True) for r in aff}
            # diagnostics for a per-model rank rule: the retrained models' prototypes on the same shards (the
            # forgotten classes' samples included: where a backbone that never saw them puts them)
            out.setdefault("retrain_prototypes", {})[req] = {
                r: proto_json(*prototypes(rtm[r], scn.train_data(r)), scn.node(r).labels) for r in aff}
            log(f"{req}: head/retrain done " + json.dumps({r.split('/')[-1]: v for r, v in res["retrain"].items()}))
            if "mix" in FAMILIES and len(classes) > 1:
                for deg in MIX_DEGREES:
                    key = f"fold-mix deg={deg}"
                    res[key] = {}
                    for r in aff:
                        lab = scn.node(r).labels
                        d, c = proto_dirs(*protos[r], lab, [x for x in classes if x in lab])
                        res[key][r] = classwise_fast(ev, r, fold_projection(
                            heads[r], projector(mix_dirs(orig[r], protos[r][0], d, deg), 1.0), c), classes)
                    log(f"{req}: {key} " + json.dumps({r.split('/')[-1]: v for r, v in res[key].items()}))
            for src in [f for f in FAMILIES if f != "mix"]:
                ks = ("all", "all-1") if src == "origin" else tuple(range(1, len(classes) + 1))
                for k in ks:
                    key = f"fold-{src} k={k}"
                    res[key] = {}
                    for r in aff:
                        lab = scn.node(r).labels
                        here = [c for c in classes if c in lab]
                        got = (proto_dirs(*protos[r], lab, here, unique=src == "unique") if src != "origin"
                               else None)
                        if got is None:
                            got = proto_dirs(*protos[o], scn.node(o).labels, classes)
                        dirs, c = got
                        if k == "all-1":  # the top n-1 singular directions (none for one class: head only)
                            dirs = torch.linalg.svd(dirs, full_matrices=False)[0][:, :dirs.shape[1] - 1]
                        elif isinstance(k, int):  # the top k (k > the classes this model knows: all of them)
                            dirs = torch.linalg.svd(dirs, full_matrices=False)[0][:, :min(k, dirs.shape[1])]
                        if dirs.shape[1] == 0:
                            res[key][r] = res["head"][r]
                            continue
                        res[key][r] = sc(r, fold_projection(heads[r], projector(dirs, 1.0), c), src != "origin")
                    log(f"{req}: {key} " + json.dumps({r.split('/')[-1]: v for r, v in res[key].items()}))
            out["requests"][req] = res
            shutil.rmtree(Path(tmp) / req, ignore_errors=True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
