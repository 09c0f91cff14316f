"""Lineage inferred from weights (issue 17, "Measured"): precision and recall of `fiun-hub lineage --infer` on a hub
with planted derivatives, and its time at 1,000 and 10,000 models in the index.

(a) Quality. A real ``LocalHub``; for each architecture (default ``test_resnet``, ``test_vit`` at 16x16 and
    ``test_convnext`` at 32x32) and data set (default the bundled digits; ``--datasets digits,fashion-mnist`` adds
    Debian's Fashion-MNIST), real timm models trained here and pushed through ``push_model`` (so every publish
    stores its fingerprint the ordinary way):

    - independents (must not be flagged): 4 models from different seeds on the same data, and 2 models from one
      seed on disjoint data, all from scratch (same recipe: 4 epochs, Adam 3e-3);
    - fine-tunes of 1 to 5 epochs (Adam 1e-3, on data the parent never saw) of two independents; 3 one-epoch
      "client" fine-tunes of a third;
    - merges: FedAvg of 2 clients (weights 2:1) and of 3 clients (equal), and a weight average of two
      independents (a soup of unrelated models: no pair is close, only the merge fit can find it);
    - transfer children with a new head (6 classes): a frozen backbone (head trained) and a full fine-tune;
    - plain re-uploads (identical bytes, no card) of an independent and of a fine-tune;
    - weight-noise copies: every float tensor plus Gaussian noise of 1%, 5%, 10% and 30% of its own std.

    Most derivatives are published without declaring a parent; a few declare it (``declared`` in the JSON). The
    real CLI runs (``fiun-hub --json lineage --infer``, a subprocess) and every reported edge is scored against
    the planted truth: *correct* when it connects a derivative with one of its true parents (its direction
    checked separately), *related* when it connects two models of one true family otherwise (a grandparent, two
    siblings), *false* when the two models share no ancestry at all. Recall per kind: a derivative is found when
    some edge connects it with a true parent (a merge: with all of its parents, also reported).

(b) Scale. A second hub whose index holds N models (default 1,000 and 10,000), each a stub repo (one real commit
    with a small config, so history and times are real) whose index entry names a weights sha256 with a
    fingerprint computed by ``compute_fingerprint`` from real safetensors bytes: perturbed copies of the weights
    trained in (a). The population: one fine-tune family of ``--family`` (default 500) near copies of one parent
    (noise 1-10% of each tensor's std: the worst case for one layout bucket, every pair of the family is close),
    small families (a shuffled copy of one of (a)'s models and 1-5 noise copies or re-uploads of it), and
    independents. Family members are fingerprinted from their bytes; an independent is assembled tensor by tensor
    from the real fingerprints of ``--pool-variants`` shuffled copies (each tensor's values permuted: the same value
    distribution, no correlation) of ``--pool-bases`` trained models of its layout. A fingerprint is computed tensor
    by tensor, so that equals ``compute_fingerprint`` of the assembled file (checked on one model per layout), and
    10,000 models build in minutes. ``lineage --infer`` is timed as a CLI subprocess (end to end, Python start
    included) and in-process (``fingerprint.infer``), wall and CPU time, median of ``--repeats``; precision /
    recall at that scale are reported too. The stub repos' commits hold no weights (only the index names them),
    so this hub is for timing only (``verify`` would object).

Writes ``benchmarks/results/infer_lineage.json`` and prints Markdown tables.

Run:  HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/infer_lineage.py   (13 min on 2 shared cores at load 6-12)
      ... --quick        (test_resnet only, sizes 300 and 1,000, family 100: a smoke test)
      ... --datasets digits,fashion-mnist   (adds the Fashion-MNIST variant; --sizes '' : the quality part only)
      ... --keep DIR     (keep both hubs; a later run with the same DIR reuses the scale fingerprints)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.hub_scale import machine_info  # noqa: E402
from fiun_hub.constants import WEIGHTS_FILE  # noqa: E402
from fiun_hub.hub.local import LocalHub, RepoChange  # noqa: E402

INPUT = {"test_resnet": 16, "test_vit": 16, "test_convnext": 32, "test_efficientnet": 16}
SHORT = {"test_resnet": "resnet", "test_vit": "vit", "test_convnext": "convnext", "test_efficientnet": "effnet"}
DS_SHORT = {"digits": "dg", "fashion-mnist": "fm"}
NOISE = (0.01, 0.05, 0.1, 0.3)
KINDS = ("fine-tune", "merge", "transfer", "re-upload", "noise")


# ------------------------------------------------------------------------------------------------ (a) quality
class Planter:
    """Trains and publishes one architecture x data set family of models, recording the planted truth."""

    def __init__(self, hub: LocalHub, arch: str, ds: str, truth: dict, epochs: int, seed: int = 0):
        import torch

        from fiun_hub.data import load_data

        self.hub, self.arch, self.ds, self.truth, self.epochs = hub, arch, ds, truth, epochs
        self.size = INPUT.get(arch, 16)
        self.org = f"{SHORT.get(arch, arch.replace('_', '-'))}-{DS_SHORT.get(ds, ds)}"
        train = load_data(f"{ds}:train", in_chans=1, input_size=(self.size, self.size))
        self.labels = list(train.labels)
        g = torch.Generator().manual_seed(1000 + seed)
        perm = torch.randperm(len(train), generator=g)
        n = min(len(train), 1500) // 6  # 6 disjoint shards (digits: 209 images each)
        self.shards = [train.subset(perm[i * n:(i + 1) * n]) for i in range(6)]
        self.revs: dict[str, str] = {}
        self.states: dict[str, dict] = {}

    def name(self, short: str) -> str:
        return f"{self.org}/{short}"

    def push(self, short, model, kind, parents=(), declared=False, labels=None, **detail):
        from fiun_hub.research.scenarios import push_model

        repo = self.name(short)
        pins = [f"{p}@{self.revs[p]}" for p in parents] if declared else []
        rev = push_model(self.hub, model.eval(), repo, labels or self.labels, input_size=(1, self.size, self.size),
                         parents=pins, relation=("merge" if len(parents) > 1 else "finetune") if pins else None)
        self.revs[repo] = rev["revision"]
        self.states[repo] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.truth[repo] = {"kind": kind, "parents": list(parents), "declared": bool(declared), "arch": self.arch,
                            "dataset": self.ds, **detail}
        return repo

    def fresh(self, seed, num_classes=None):
        from fiun_hub.research.scenarios import new_model

        return new_model(self.arch, num_classes or len(self.labels), 1, seed)

    def model_from(self, repo):
        m = self.fresh(0)
        m.load_state_dict(self.states[repo])
        return m

    def train(self, model, shard, epochs, lr, seed, trainable=None):
        from fiun_hub.research.training import train_classifier

        data = self.shards[shard] if isinstance(shard, int) else shard
        return train_classifier(model, data, epochs=epochs, lr=lr, batch_size=32, seed=seed, trainable=trainable)

    def build(self) -> None:
        import torch

        from fiun_hub.data import LabeledData
        from fiun_hub.research.scenarios import head_params, inherit
        from fiun_hub.research.training import average_state_dicts

        E = self.epochs
        both = LabeledData(torch.cat([self.shards[0].x, self.shards[1].x]),
                           torch.cat([self.shards[0].y, self.shards[1].y]), self.labels)
        ind = []
        for s in (1, 2, 3, 4):  # different seeds, the same data
            m = self.fresh(100 + s)
            self.train(m, both, E, 3e-3, s)
            ind.append(self.push(f"ind-seed{s}", m, "independent", detail_seed=100 + s))
        for j, shard in ((0, 2), (1, 3)):  # one seed, disjoint data, from scratch
            m = self.fresh(777)
            self.train(m, shard, E, 3e-3, 7)
            ind.append(self.push(f"ind-sameseed-{'ab'[j]}", m, "independent", detail_seed=777))
        p1, p2, p3 = ind[0], ind[1], ind[2]
        ft = {}
        unseen = LabeledData(torch.cat([self.shards[i].x for i in (2, 3, 4, 5)]),
                             torch.cat([self.shards[i].y for i in (2, 3, 4, 5)]), self.labels)
        for pi, p in ((1, p1), (2, p2)):
            for e in range(1, 6):
                # each fine-tune its own data (200 images the parent never saw) and seed: made by someone else
                pick = torch.randperm(len(unseen), generator=torch.Generator().manual_seed(10 * pi + e))[:200]
                m = self.model_from(p)
                self.train(m, unseen.subset(pick), e, 1e-3, 40 + 10 * pi + e)
                declared = (pi, e) in ((1, 3), (2, 5))
                ft[(pi, e)] = self.push(f"ft-e{e}-p{pi}", m, "fine-tune", [p], declared, epochs=e)
        clients = []
        for c, shard in enumerate((2, 3, 5)):
            m = self.model_from(p3)
            self.train(m, shard, 1, 1e-3, 60 + c)
            clients.append(self.push(f"client{c}-p3", m, "fine-tune", [p3], epochs=1, client=True))
        avg2 = average_state_dicts([self.states[clients[0]], self.states[clients[1]]], weights=[2, 1])
        m = self.fresh(0)
        m.load_state_dict(avg2)
        self.push("fedavg2", m, "merge", clients[:2], merge="fedavg of 2 clients, weights 2:1")
        avg3 = average_state_dicts([self.states[c] for c in clients])
        m = self.fresh(0)
        m.load_state_dict(avg3)
        self.push("fedavg3", m, "merge", clients, declared=True, merge="fedavg of 3 clients, equal weights")
        soup = average_state_dicts([self.states[ind[3]], self.states[ind[4]]])
        m = self.fresh(0)
        m.load_state_dict(soup)
        self.push("soup-unrelated", m, "merge", [ind[3], ind[4]], merge="average of two independents")
        tl_labels = self.labels[:6]
        for mode, parent, declared in (("frozen", p1, False), ("full", p2, True)):
            m = inherit(self.fresh(900, num_classes=6), self.states[parent], self.labels, tl_labels, copy_head=False)
            data = self.shards[4].to_label_space(tl_labels)
            if mode == "frozen":
                self.train(m, data, 3, 3e-3, 91, trainable=head_params(m))
            else:
                self.train(m, data, 2, 1e-3, 92)
            self.push(f"tl-{mode}", m, "transfer", [parent], declared, labels=tl_labels, transfer=mode)
        for src, short in ((p1, "copy-p1"), (ft[(1, 2)], "copy-ft-e2-p1")):
            files = {n: self.hub.read_file(src, n) for n in ("config.json", WEIGHTS_FILE)}
            self.hub.publish([RepoChange(self.name(short), files, "re-upload", parent_commit="")])
            self.truth[self.name(short)] = {"kind": "re-upload", "parents": [src], "declared": False,
                                            "arch": self.arch, "dataset": self.ds}
            self.states[self.name(short)] = self.states[src]
        gen = torch.Generator().manual_seed(5)
        for r in NOISE:
            sd = {}
            for k, v in self.states[p2].items():
                if v.is_floating_point() and v.numel() > 1 and float(v.std()) > 0:
                    v = v + torch.randn(v.shape, generator=gen) * float(v.std()) * r
                    if k.endswith("running_var"):
                        v = v.clamp_min(1e-4)
                sd[k] = v
            m = self.fresh(0)
            m.load_state_dict(sd)
            self.push(f"noise-{int(r * 100)}pct-p2", m, "noise", [p2], noise=r)


def related(truth: dict, a: str, b: str) -> str:
    """``correct`` (a derivative and one of its true parents), ``related`` (one true family otherwise) or
    ``false``."""
    if b in truth.get(a, {}).get("parents", []) or a in truth.get(b, {}).get("parents", []):
        return "correct"
    anc = {}
    for r in (a, b):
        seen, todo = {r}, [r]
        while todo:
            for p in truth.get(todo.pop(), {}).get("parents", []):
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        anc[r] = seen
    return "related" if anc[a] & anc[b] else "false"


def score(truth: dict, edges: list[dict]) -> dict:
    """Precision of the reported edges and recall per planted kind."""
    verdicts = {"correct": 0, "related": 0, "false": 0}
    false_edges, related_edges = [], []
    found: dict[str, list[dict]] = {}
    for e in edges:
        a, b = e["parent"], e["child"]
        v = related(truth, a, b)
        verdicts[v] += 1
        if v == "false":
            false_edges.append(e)
        elif v == "related":
            related_edges.append({k: e.get(k) for k in ("parent", "child", "kind", "direction", "relation", "via")})
        else:
            child, parent = (a, b) if a in truth and b in truth[a]["parents"] else (b, a)
            found.setdefault(child, []).append({**e, "true_parent": parent,
                                                "direction_ok": e["parent"] == parent and e["child"] == child})
    n = len(edges)
    # the edges `--infer` prints as derivations (relation "derived") apart from those it marks sibling/ancestor
    by_rel: dict[str, dict[str, int]] = {}
    for e in edges:
        row = by_rel.setdefault(e.get("relation", "derived"), {"correct": 0, "related": 0, "false": 0})
        row[related(truth, e["parent"], e["child"])] += 1
    nd = sum(by_rel.get("derived", {}).values())
    in_family = {x for e in edges if related(truth, e["parent"], e["child"]) != "false" for x in (e["parent"], e["child"])}
    per_kind = {}
    misses = []
    for kind in KINDS:
        planted = [r for r, t in truth.items() if t["kind"] == kind]
        rows = {"planted": len(planted), "found": 0, "found_derived": 0, "all_parents_found": 0,
                "all_parents_derived": 0, "direction_ok": 0, "declared_right": 0, "found_in_family": 0}
        for r in planted:
            hits = found.get(r, [])
            parents = set(truth[r]["parents"])
            got = {h["true_parent"] for h in hits}
            # an edge to a true parent printed as a derivation (not marked sibling/ancestor)
            rows["found_derived"] += any(h.get("relation", "derived") == "derived" for h in hits)
            if hits:
                rows["found"] += 1
                rows["direction_ok"] += all(h["direction_ok"] for h in hits)
                rows["declared_right"] += all(bool(h["declared"]) == truth[r]["declared"] for h in hits)
            else:
                misses.append({"repo": r, **{k: v for k, v in truth[r].items() if k != "parents"},
                               "parents": sorted(parents)})
            rows["all_parents_found"] += got == parents
            # every true parent by an edge printed as a derivation (for a merge: its merge edges)
            rows["all_parents_derived"] += {h["true_parent"] for h in hits
                                            if h.get("relation", "derived") == "derived"} == parents
            rows["found_in_family"] += r in in_family
        rows["recall"] = round(rows["found"] / len(planted), 4) if planted else None
        rows["recall_derived"] = round(rows["found_derived"] / len(planted), 4) if planted else None
        rows["family_recall"] = round(rows["found_in_family"] / len(planted), 4) if planted else None
        rows["all_parents_derived_recall"] = round(rows["all_parents_derived"] / len(planted), 4) if planted else None
        per_kind[kind] = rows
    independents = [r for r, t in truth.items() if t["kind"] == "independent"]
    flagged_ind = sorted({x for e in false_edges for x in (e["parent"], e["child"]) if x in independents})
    return {
        "edges": n, **verdicts,
        "precision_strict": round(verdicts["correct"] / n, 4) if n else None,
        "precision": round((verdicts["correct"] + verdicts["related"]) / n, 4) if n else None,
        "by_relation": by_rel,
        "derived_edges": nd,
        "precision_derived": round(by_rel["derived"]["correct"] / nd, 4) if nd else None,
        "per_kind": per_kind,
        "independents": len(independents),
        "independents_flagged": flagged_ind,
        "false_edges": false_edges[:50],
        "related_edges": related_edges[:50],
        "misses": misses,
    }


def _ancestors(truth: dict, r: str) -> set:
    seen, todo = set(), [r]
    while todo:
        for p in truth.get(todo.pop(), {}).get("parents", []):
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return seen


def audit_recall(hub, truth: dict) -> dict:
    """What takedown plans and audits see: ``fingerprint.derivatives_of`` with one true parent's head as the
    source (the parent itself excluded), for every planted parent. A derivative is found when a query of one of
    its parents returns it; a returned model is *descendant* (of the source: what a takedown must reach),
    *related* (the source's family otherwise) or *false*."""
    from fiun_hub import fingerprint as F
    from fiun_hub import lineage

    entries = lineage.read_index_file(hub)
    parents = sorted({p for t in truth.values() for p in t["parents"]})
    got: dict[str, set] = {}
    verdicts = {"descendant": 0, "related": 0, "false": 0}
    false = []
    t0 = time.perf_counter()
    for p in parents:
        fp = F.load_fingerprint(hub, entries[p]["weights"])
        out = F.derivatives_of(hub, {p: fp}, entries, exclude={p})
        for repo, edge in out.get(p, []):
            got.setdefault(p, set()).add(repo)
            if p in _ancestors(truth, repo):
                verdicts["descendant"] += 1
            elif related(truth, p, repo) != "false":
                verdicts["related"] += 1
            else:
                verdicts["false"] += 1
                false.append({"source": p, "repo": repo, **edge.evidence})
    per_kind = {}
    misses = []
    for kind in KINDS:
        planted = [r for r, t in truth.items() if t["kind"] == kind]
        found = [r for r in planted if any(r in got.get(p, set()) for p in truth[r]["parents"])]
        misses += [r for r in planted if r not in found]
        per_kind[kind] = {"planted": len(planted), "found": len(found),
                          "recall": round(len(found) / len(planted), 4) if planted else None}
    total = sum(verdicts.values())
    return {"queries": len(parents), "seconds": round(time.perf_counter() - t0, 2), **verdicts,
            "precision": round((verdicts["descendant"] + verdicts["related"]) / total, 4) if total else None,
            "precision_descendants": round(verdicts["descendant"] / total, 4) if total else None,
            "recall": {k: v["recall"] for k, v in per_kind.items()}, "per_kind": per_kind, "misses": misses,
            "false_findings": false[:30]}


_LAST_CPU: list[float] = []  # CPU seconds (user + sys) of the last CLI run: less noisy than wall time here


def run_infer_cli(hub_root: Path) -> tuple[float, dict]:
    import resource

    cli = Path(sys.executable).with_name("fiun-hub")
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "cli.main"]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd + ["--hub", str(hub_root), "--json", "lineage", "--infer"], capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    _LAST_CPU[:] = [r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime]
    if p.returncode != 0:
        raise SystemExit(f"lineage --infer failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return dt, json.loads(p.stdout)


def bench_quality(root: Path, archs: list[str], datasets: list[str], epochs: int) -> tuple[dict, dict, LocalHub]:
    import torch

    from fiun_hub.research.scenarios import torch_threads

    hub = LocalHub.init(root)
    truth: dict = {}
    t0 = time.perf_counter()
    with torch_threads(1):
        for ds in datasets:
            for arch in archs:
                t = time.perf_counter()
                print(f"  training {arch} on {ds} ...", flush=True)
                torch.manual_seed(0)
                Planter(hub, arch, ds, truth, epochs).build()
                print(f"    {time.perf_counter() - t:.0f} s", flush=True)
    build_s = time.perf_counter() - t0
    res = rescore(root, truth, archs, datasets, epochs)
    res["build_s"] = round(build_s, 1)
    return res, truth, hub


def rescore(root: Path, truth: dict, archs, datasets, epochs) -> dict:
    infer_s, data = run_infer_cli(root)
    res = score(truth, data["edges"])
    res.update(models=len(truth), infer_cli_s=round(infer_s, 2),
               undeclared_reported=data["undeclared"], archs=archs, datasets=datasets, epochs=epochs)
    # every edge as reported, for the record (small)
    res["reported"] = [{k: e.get(k) for k in ("parent", "child", "kind", "direction", "declared", "identical_tensors",
                                              "shared_tensors", "init_similarity", "learned_similarity",
                                              "merge_weights", "relation", "via", "merge_parents",
                                              "merge_residual", "merge_single_residual", "merge_alternatives")}
                       for e in data["edges"]]
    return res


# ------------------------------------------------------------------------------------------------ (b) scale
_BASES: dict = {}


def _load_bases(paths: dict) -> None:
    from safetensors.numpy import load_file

    _BASES.update({k: load_file(str(p)) for k, p in paths.items()})


def _make(job) -> tuple[str, dict, dict]:
    """One synthetic model ``(base, shuffle_seed, noise, noise_seed)``: the base's float tensors, each with its
    values shuffled (when ``shuffle_seed`` is not None: an unrelated model with the same value distribution), then
    plus Gaussian noise of ``noise`` times its std; saved as safetensors bytes and fingerprinted by
    ``compute_fingerprint``. Returns ``(weights sha256, fingerprint json, layout json)``."""
    import hashlib

    from safetensors.numpy import save

    from fiun_hub.fingerprint import compute_fingerprint

    base, shuffle_seed, r, noise_seed = job
    shuf = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    noise = np.random.default_rng(noise_seed)
    out = {}
    for k, v in sorted(_BASES[base].items()):
        if v.dtype.kind == "f" and v.size > 1:
            if shuf is not None:
                v = shuf.permutation(v.reshape(-1)).reshape(v.shape)
            s = float(v.std())
            if r and s > 0:
                v = v + (noise.standard_normal(v.shape) * s * r).astype(v.dtype)
                if k.endswith("running_var"):
                    v = np.maximum(v, 1e-4).astype(v.dtype)
        out[k] = np.ascontiguousarray(v)
    data = save(out)
    sha = hashlib.sha256(data).hexdigest()
    fp = compute_fingerprint(data, sha, f"synthetic {base}")
    return sha, fp.to_json(), fp.layout.to_json()


def _arrays(fp_json: dict, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import base64

    return (np.frombuffer(bytes.fromhex(fp_json["digests"]), dtype=">u8"),
            np.frombuffer(base64.b64decode(fp_json["norms"]), dtype="<f4"),
            np.frombuffer(base64.b64decode(fp_json["sketch"]), dtype="<f4").reshape(t, -1))


def _assemble(pool: dict, layout: dict, seed: int) -> tuple[str, dict, np.ndarray]:
    """An independent-like model assembled per tensor: tensor ``t`` taken from a random one of ``pool`` (real
    fingerprints of shuffled copies of trained models of one layout). A fingerprint is computed tensor by tensor,
    so this equals ``compute_fingerprint`` of the safetensors file assembled the same way (checked on a sample by
    :func:`check_assembled`); the weights key is a sha256 of the choice, not of bytes that were never written."""
    import base64
    import hashlib

    t = len(layout["tensors"])
    if "stacked" not in pool:
        parts = [_arrays(p, t) for p in pool["fps"]]
        pool["stacked"] = [np.stack([p[i] for p in parts]) for i in range(3)]
    D, N, S = pool["stacked"]
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, D.shape[0], size=t)
    rows = np.arange(t)
    digests, norms, sketch = D[choice, rows], N[choice, rows], S[choice, rows]
    sha = hashlib.sha256(f"assembled {layout['key']} {seed}".encode()).hexdigest()
    first = pool["fps"][0]
    return sha, {"format": first["format"], "weights": sha, "layout": layout["key"], "k": first["k"],
                 "digests": digests.astype(">u8").tobytes().hex(),
                 "norms": base64.b64encode(norms.astype("<f4").tobytes()).decode(),
                 "sketch": base64.b64encode(sketch.astype("<f4").tobytes()).decode()}, choice


def check_assembled(pool_jobs: list, choice: np.ndarray, fp_json: dict, base_paths: dict) -> bool:
    """Write the safetensors bytes of an assembled model (tensor ``t`` from variant ``choice[t]``) and compare
    ``compute_fingerprint`` of them with the assembled fingerprint."""
    from safetensors.numpy import load_file, save

    from fiun_hub.fingerprint import compute_fingerprint

    variants = []
    for base, shuffle_seed, _, _ in pool_jobs:
        shuf = np.random.default_rng(shuffle_seed)
        arr = {}
        for k, v in sorted(load_file(str(base_paths[base])).items()):
            arr[k] = shuf.permutation(v.reshape(-1)).reshape(v.shape) if v.dtype.kind == "f" and v.size > 1 else v
        variants.append(arr)
    fp0 = compute_fingerprint(save(variants[0]), "x" * 64)
    names = [n for n, _, _ in fp0.layout.tensors]
    out = dict(variants[0])
    for t, n in enumerate(names):
        out[n] = variants[int(choice[t])][n]
    fp = compute_fingerprint(save(out), "x" * 64)
    d, nr, sk = _arrays(fp_json, len(names))
    return bool((fp.digests == d.astype(np.uint64)).all() and np.array_equal(fp.norms, nr)
                and np.array_equal(fp.sketch, sk))


def population(n: int, family: int, bases: list[str], family_base: str, layouts: list[str],
               seed: int = 0, group_p: float = 0.015) -> list[dict]:
    """``n`` synthetic models: specs (``job`` for :func:`_make`, ``assembled``: an independent for
    :func:`_assemble`, or ``same_as``: a re-upload) with their planted truth. The family comes first, so the
    population of a smaller ``n`` is the start of a larger one."""
    rng = np.random.default_rng(seed)
    specs: list[dict] = [{"name": "fam/root", "job": (family_base, None, 0.0, 0), "kind": "independent",
                          "parents": []}]
    for i in range(min(family, n - 1)):
        specs.append({"name": f"fam/copy-{i}", "job": (family_base, None, float(rng.uniform(0.01, 0.1)), 10_000 + i),
                      "kind": "noise", "parents": ["fam/root"]})
    j = 0
    while len(specs) < n:
        if rng.random() >= group_p:  # an independent
            specs.append({"name": f"ind/m{j}", "assembled": (layouts[int(rng.integers(len(layouts)))], 50_000 + j),
                          "kind": "independent", "parents": []})
            j += 1
            continue
        base = bases[int(rng.integers(len(bases)))]
        shuffle_seed = 20_000 + j
        root = f"grp{j}/root"  # a small family: its own root (shuffled: unrelated to the rest) and its copies
        specs.append({"name": root, "job": (base, shuffle_seed, 0.0, 0), "kind": "independent", "parents": []})
        for c in range(int(rng.integers(1, 6))):
            if rng.random() < 0.2:
                specs.append({"name": f"grp{j}/reupload-{c}", "same_as": root, "kind": "re-upload",
                              "parents": [root]})
            else:
                specs.append({"name": f"grp{j}/copy-{c}",
                              "job": (base, shuffle_seed, float(rng.uniform(0.01, 0.1)), 30_000 + 10 * j + c),
                              "kind": "noise", "parents": [root]})
        j += 1
    return specs[:n]


_MADE: dict = {}  # job -> (sha, fingerprint json, layout json), shared by the sizes of one run


def build_scale_hub(root: Path, specs: list[dict], base_paths: dict, pools: dict, workers: int) -> dict:
    """The scale hub: stub repos (one commit each), fingerprints of real bytes, an index naming them."""
    from concurrent.futures import ProcessPoolExecutor
    from types import SimpleNamespace

    from fiun_hub import lineage
    from fiun_hub.fingerprint import _layout_path, fingerprint_path
    from fiun_hub.hub.local import atomic_write

    manifest = root / "bench-manifest.json"
    key = json.dumps([[s["name"], s.get("job"), s.get("assembled"), s.get("same_as")] for s in specs])
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("key") == key:
            print(f"  reusing {root} ({len(specs):,} models)", flush=True)
            return m["info"]
    if root.exists():
        import shutil

        shutil.rmtree(root)  # a kept hub of another population
    hub = LocalHub.init(root)
    store = SimpleNamespace(root=root)
    t0 = time.perf_counter()
    jobs = sorted({s["job"] for s in specs if s.get("job") is not None} - set(_MADE), key=str)
    if workers > 1 and len(jobs) > 32:
        with ProcessPoolExecutor(workers, initializer=_load_bases, initargs=(base_paths,)) as ex:
            _MADE.update(zip(jobs, ex.map(_make, jobs, chunksize=8)))
    else:
        _load_bases(base_paths)
        _MADE.update((j, _make(j)) for j in jobs)
    fingerprint_s = time.perf_counter() - t0
    weights: dict[str, str] = {}
    layouts = set()
    t0 = time.perf_counter()
    assembled = 0
    for s in specs:
        if s.get("same_as"):
            weights[s["name"]] = weights[s["same_as"]]
            continue
        if s.get("assembled"):
            lk, seed = s["assembled"]
            layout = pools[lk]["layout"]
            sha, fp, _ = _assemble(pools[lk], layout, seed)
            assembled += 1
        else:
            sha, fp, layout = _MADE[s["job"]]
        weights[s["name"]] = sha
        if layout["key"] not in layouts:
            atomic_write(_layout_path(store, layout["key"]), json.dumps(layout, separators=(",", ":")).encode(),
                         fsync=False)
            layouts.add(layout["key"])
        atomic_write(fingerprint_path(store, sha), json.dumps(fp, separators=(",", ":")).encode(), fsync=False)
    write_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    names = [s["name"] for s in specs]
    for start in range(0, len(names), 250):
        hub.publish([RepoChange(r, {"config.json": json.dumps({"architecture": "synthetic", "i": i}).encode()},
                                "synthetic model", parent_commit="")
                     for i, r in enumerate(names[start:start + 250], start)])
    publish_s = time.perf_counter() - t1
    entries = lineage.read_index_file(hub)
    for r in names:
        entries[r]["weights"] = weights[r]
    lineage.write_index_file(hub, entries)
    info = {"models": len(specs), "distinct_weights": len(set(weights.values())), "layouts": len(layouts),
            "computed_fingerprints": len(jobs), "assembled_fingerprints": assembled,
            "compute_s": round(fingerprint_s, 1), "write_fingerprints_s": round(write_s, 1),
            "compute_ms_per_model": round(1000 * fingerprint_s / max(1, len(jobs)), 1),
            "publish_stubs_s": round(publish_s, 1), "workers": workers}
    manifest.write_text(json.dumps({"key": key, "info": info}))
    return info


def make_pools(base_paths: dict, base_layouts: dict, per_layout_bases: int, variants: int) -> tuple[dict, dict]:
    """Per layout: real fingerprints of ``variants`` shuffled copies of each of up to ``per_layout_bases`` trained
    models, and one assembled model checked against ``compute_fingerprint`` of its bytes."""
    by: dict[str, list[str]] = {}
    for r, lk in sorted(base_layouts.items()):
        by.setdefault(lk, []).append(r)
    jobs = {lk: [(b, 40_000 + 100 * i + v, 0.0, 0) for i, b in enumerate(rs[:per_layout_bases])
                 for v in range(variants)] for lk, rs in by.items()}
    _load_bases(base_paths)
    pools, checks = {}, {}
    for lk, js in jobs.items():
        made = [_make(j) for j in js]
        pools[lk] = {"fps": [m[1] for m in made], "layout": made[0][2], "bases": sorted({j[0] for j in js})}
        _, fp, choice = _assemble(pools[lk], pools[lk]["layout"], 7)
        checks[lk[:12]] = check_assembled(js, choice, fp, base_paths)
    return pools, checks


def bench_scale(root: Path, n: int, family: int, base_paths: dict, family_base: str, pools: dict,
                layout_weights: list[str], workers: int, repeats: int, profile: bool) -> dict:
    from fiun_hub import fingerprint as F

    bases = sorted(base_paths)
    specs = population(n, family, bases, family_base, layout_weights)
    print(f"  scale hub: {n:,} models (family of {min(family, n - 1)}) ...", flush=True)
    info = build_scale_hub(root, specs, base_paths, pools, workers)
    hub = LocalHub(root)
    cli_s, cli_cpu, data = [], [], None
    for _ in range(repeats):
        dt, data = run_infer_cli(root)
        cli_s.append(dt)
        cli_cpu.append(_LAST_CPU[0])
    api_s, api_cpu = [], []
    edges = None
    for _ in range(repeats):
        F._LAYOUTS.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        edges = F.infer(hub)
        api_s.append(time.perf_counter() - t0)
        api_cpu.append(time.process_time() - c0)
    load = os.getloadavg()[0]
    prof = None
    if profile:
        import cProfile
        import io
        import pstats

        F._LAYOUTS.clear()
        pr = cProfile.Profile()
        pr.enable()
        F.infer(hub)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(25)
        prof = s.getvalue()
        print(prof)
    truth = {s["name"]: {"kind": s["kind"], "parents": s["parents"], "declared": False} for s in specs}
    sc = score(truth, data["edges"])
    kinds = {}
    for s in specs:
        kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
    return {"models": n, "composition": kinds, **info,
            "infer_cli_s": [round(t, 2) for t in cli_s], "infer_cli_median_s": round(statistics.median(cli_s), 2),
            "infer_api_s": [round(t, 2) for t in api_s], "infer_api_median_s": round(statistics.median(api_s), 2),
            "infer_cli_cpu_s": [round(t, 2) for t in cli_cpu], "infer_cli_cpu_median_s": round(statistics.median(cli_cpu), 2),
            "infer_api_cpu_s": [round(t, 2) for t in api_cpu], "infer_api_cpu_median_s": round(statistics.median(api_cpu), 2),
            "loadavg_1m_after": round(load, 2),
            "edges": len(data["edges"]), "api_edges": len(edges),
            "precision": sc["precision"], "precision_strict": sc["precision_strict"], "false": sc["false"],
            "precision_derived": sc["precision_derived"], "by_relation": sc["by_relation"],
            "recall": {k: v["recall"] for k, v in sc["per_kind"].items() if v["planted"]},
            "misses": sc["misses"][:20], "profile": prof}


# ------------------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    q = res["quality"]
    a = res.get("audit", {})
    out = [f"Quality: {q['models']} models ({', '.join(q['archs'])} on {', '.join(q['datasets'])}), "
           f"{q['edges']} edges reported: {q['correct']} correct, {q['related']} related, {q['false']} false; "
           f"precision {q['precision']} (strict, true parent only: {q['precision_strict']}); "
           f"of the {q.get('derived_edges')} printed as derivations, {q.get('by_relation', {}).get('derived', {}).get('correct')} "
           f"to the true parent (precision over derivation edges {q.get('precision_derived')}; by relation "
           f"{q.get('by_relation')}); "
           f"independents flagged: {len(q['independents_flagged'])} of {q['independents']}", "",
           "| kind | planted | `--infer`: edge to the true parent (of them printed as a derivation) | recall | all parents "
           "(all by derivation edges) | direction right | declared flag right | in its family | audit (`derivatives_of` "
           "the parent) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, r in q["per_kind"].items():
        ak = a.get("per_kind", {}).get(kind, {})
        out.append(f"| {kind} | {r['planted']} | {r['found']} ({r.get('found_derived')}) | {r['recall']} | {r['all_parents_found']} ({r.get('all_parents_derived')}) | "
                   f"{r['direction_ok']} | {r['declared_right']} | {r['found_in_family']} ({r['family_recall']}) | "
                   f"{ak.get('found')} ({ak.get('recall')}) |")
    if a:
        out += ["", f"Audit queries: {a['queries']} sources, {a['descendant']} descendants + {a['related']} related + "
                    f"{a['false']} false returned (precision {a['precision']}), {a['seconds']} s"]
    if q["misses"]:
        out += ["", "Misses: " + "; ".join(f"{m['repo']} ({m['kind']})" for m in q["misses"])]
    out += ["", "| models in the index | CLI `--infer` wall (CPU) | in-process `infer` wall (CPU) | edges | precision | "
                "recall (noise / re-upload) | load |", "|---:|---:|---:|---:|---:|---|---:|"]
    for s in res["scale"]:
        out.append(f"| {s['models']:,} | {s['infer_cli_median_s']} s ({s.get('infer_cli_cpu_median_s')} s) | "
                   f"{s['infer_api_median_s']} s ({s.get('infer_api_cpu_median_s')} s) | {s['edges']:,} | "
                   f"{s['precision']} | {s['recall'].get('noise')} / {s['recall'].get('re-upload')} | "
                   f"{s.get('loadavg_1m_after')} |")
    if len(res["scale"]) >= 2:
        a, b = res["scale"][0], res["scale"][-1]
        out.append(f"\n{b['models']:,} vs {a['models']:,}: CLI x{b['infer_cli_median_s'] / a['infer_cli_median_s']:.2f}, "
                   f"in-process x{b['infer_api_median_s'] / a['infer_api_median_s']:.2f}"
                   + (f", in-process CPU x{b['infer_api_cpu_median_s'] / a['infer_api_cpu_median_s']:.2f}"
                      if a.get("infer_api_cpu_median_s") else ""))
    return "\n".join(out)


def run_scale(res: dict, hub: LocalHub, truth: dict, base_dir: Path, args, sizes: list[int]) -> None:
    """Part (b): the pools of shuffled variants, then one scale hub per size, timed."""
    from fiun_hub import lineage
    from fiun_hub.fingerprint import load_fingerprint

    entries = lineage.read_index_file(hub)
    base_paths = {r: hub.blob_path(r, entries[r]["weights"]) for r in sorted(truth)
                  if truth[r]["kind"] != "re-upload"}
    base_layouts = {r: load_fingerprint(hub, entries[r]["weights"]).layout.key for r in base_paths}
    family_base = next(r for r in truth if truth[r]["kind"] == "independent")  # the first arch's seed 1
    t0 = time.perf_counter()
    cached = base_dir / "pools.json"
    pkey = [sorted(base_paths), args.pool_bases, args.pool_variants]
    if args.reuse and cached.is_file() and json.loads(cached.read_text()).get("key") == pkey:
        c = json.loads(cached.read_text())
        pools, checks = c["pools"], c["checks"]
    else:
        pools, checks = make_pools(base_paths, base_layouts, args.pool_bases, args.pool_variants)
        cached.write_text(json.dumps({"key": pkey, "checks": checks, "pools": {
            k: {kk: vv for kk, vv in v.items() if kk != "stacked"} for k, v in pools.items()}}))
    res["assembled_check"] = {"equal_to_compute_fingerprint": checks, "pool_s": round(time.perf_counter() - t0, 1),
                              "pool_bases": args.pool_bases, "pool_variants": args.pool_variants}
    print(f"  pools of shuffled variants: {len(pools)} layouts, assembled == computed: {checks}", flush=True)
    if args.one_layout:
        layout_weights = [base_layouts[family_base]]
    else:
        layout_weights = [base_layouts[r] for r in sorted(base_layouts)]  # as many as that layout has models
    res["scale"] = []
    for n in sizes:
        res["scale"].append(bench_scale(base_dir / f"scale-hub-{n}", n, args.family, base_paths, family_base, pools,
                                        layout_weights, args.workers, args.repeats, args.profile))
        s = res["scale"][-1]
        print(f"  {n:,}: CLI {s['infer_cli_median_s']} s, in-process {s['infer_api_median_s']} s, "
              f"{s['edges']:,} edges, precision {s['precision']}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="test_resnet,test_vit,test_convnext")
    ap.add_argument("--datasets", default="digits")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the models trained from scratch")
    ap.add_argument("--sizes", default="1000,10000", help="models in the index for the timing ('': quality only)")
    ap.add_argument("--family", type=int, default=500, help="near copies of one parent in the scale hub")
    ap.add_argument("--workers", type=int, default=2, help="processes computing the scale fingerprints")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool-bases", type=int, default=4, help="trained models per layout for the independents")
    ap.add_argument("--pool-variants", type=int, default=8, help="shuffled copies of each of them")
    ap.add_argument("--one-layout", action="store_true", help="every synthetic independent in the family's layout "
                                                              "(one bucket: the worst case)")
    ap.add_argument("--profile", action="store_true", help="cProfile one in-process infer at each size")
    ap.add_argument("--keep", help="keep the hubs under this folder (and reuse the scale fingerprints)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse the trained quality hub of an earlier "
                                                         "run with the same archs, datasets and epochs")
    ap.add_argument("--quick", action="store_true", help="test_resnet only, sizes 300,1000, family 100")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "infer_lineage.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.archs, args.sizes, args.family = "test_resnet", "300,1000", 100
    archs = [a for a in args.archs.split(",") if a]
    datasets = [d for d in args.datasets.split(",") if d]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    res: dict = {"benchmark": "infer_lineage", "machine": machine_info(),
                 "args": {k: v for k, v in vars(args).items() if k != "out"}}
    t_all = time.perf_counter()
    tmp = None
    if args.keep:
        base_dir = Path(args.keep)
        base_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fiun-infer-")
        base_dir = Path(tmp.name)
    try:
        qroot = base_dir / "quality-hub"
        saved = base_dir / "quality-truth.json"
        if args.reuse and saved.is_file() and json.loads(saved.read_text()).get("args") == [archs, datasets, args.epochs]:
            print(f"quality: reusing {qroot}", flush=True)
            truth = json.loads(saved.read_text())["truth"]
            q, hub = rescore(qroot, truth, archs, datasets, args.epochs), LocalHub(qroot)
        else:
            if qroot.exists():
                import shutil

                shutil.rmtree(qroot)
            print("quality: planting derivatives ...", flush=True)
            q, truth, hub = bench_quality(qroot, archs, datasets, args.epochs)
            saved.write_text(json.dumps({"args": [archs, datasets, args.epochs], "truth": truth}))
        res["quality"] = q
        res["truth"] = truth
        print(f"  {q['edges']} edges, precision {q['precision']}, infer {q['infer_cli_s']} s", flush=True)
        res["audit"] = audit_recall(hub, truth)
        a = res["audit"]
        print(f"  audit (derivatives_of each true parent): recall {a['recall']}, false {a['false']}", flush=True)
        res["scale"] = []
        if sizes:
            run_scale(res, hub, truth, base_dir, args, sizes)
    finally:
        if tmp is not None:
            tmp.cleanup()
    res["total_s"] = round(time.perf_counter() - t_all, 1)
    try:
        res["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print()
    print(markdown(res))
    print(f"\nwrote {out} ({res['total_s']} s)")
    return res


if __name__ == "__main__":
    main()
