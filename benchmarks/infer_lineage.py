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
    small families (1-5 noise copies or re-uploads of one of (a)'s models), and independents (each tensor of one
    of (a)'s models with its values shuffled: the same value distribution, no correlation). ``lineage --infer``
    is timed as a CLI subprocess (end to end, Python start included) and in-process
    (``fingerprint.infer``), median of ``--repeats``; precision / recall at that scale are reported too.

Writes ``benchmarks/results/infer_lineage.json`` and prints Markdown tables.

Run:  HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/infer_lineage.py              (several minutes on 2 cores)
      ... --quick        (test_resnet only, sizes 300 and 1,000, family 100: a smoke test)
      ... --datasets digits,fashion-mnist   (adds the Fashion-MNIST variant)
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
        from fiun_hub.scenarios import push_model

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
        from fiun_hub.scenarios import new_model

        return new_model(self.arch, num_classes or len(self.labels), 1, seed)

    def model_from(self, repo):
        m = self.fresh(0)
        m.load_state_dict(self.states[repo])
        return m

    def train(self, model, shard, epochs, lr, seed, trainable=None):
        from fiun_hub.training import train_classifier

        data = self.shards[shard] if isinstance(shard, int) else shard
        return train_classifier(model, data, epochs=epochs, lr=lr, batch_size=32, seed=seed, trainable=trainable)

    def build(self) -> None:
        import torch

        from fiun_hub.data import LabeledData
        from fiun_hub.scenarios import head_params, inherit
        from fiun_hub.training import average_state_dicts

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
        for pi, p in ((1, p1), (2, p2)):
            for e in range(1, 6):
                m = self.model_from(p)
                self.train(m, 4, e, 1e-3, 40 + e)
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
            related_edges.append({k: e.get(k) for k in ("parent", "child", "kind", "direction")})
        else:
            child, parent = (a, b) if a in truth and b in truth[a]["parents"] else (b, a)
            found.setdefault(child, []).append({**e, "true_parent": parent,
                                                "direction_ok": e["parent"] == parent and e["child"] == child})
    n = len(edges)
    per_kind = {}
    misses = []
    for kind in KINDS:
        planted = [r for r, t in truth.items() if t["kind"] == kind]
        rows = {"planted": len(planted), "found": 0, "all_parents_found": 0, "direction_ok": 0,
                "declared_right": 0}
        for r in planted:
            hits = found.get(r, [])
            parents = set(truth[r]["parents"])
            got = {h["true_parent"] for h in hits}
            if hits:
                rows["found"] += 1
                rows["direction_ok"] += all(h["direction_ok"] for h in hits)
                rows["declared_right"] += all(bool(h["declared"]) == truth[r]["declared"] for h in hits)
            else:
                misses.append({"repo": r, **{k: v for k, v in truth[r].items() if k != "parents"},
                               "parents": sorted(parents)})
            rows["all_parents_found"] += got == parents
        rows["recall"] = round(rows["found"] / len(planted), 4) if planted else None
        per_kind[kind] = rows
    independents = [r for r, t in truth.items() if t["kind"] == "independent"]
    flagged_ind = sorted({x for e in false_edges for x in (e["parent"], e["child"]) if x in independents})
    return {
        "edges": n, **verdicts,
        "precision_strict": round(verdicts["correct"] / n, 4) if n else None,
        "precision": round((verdicts["correct"] + verdicts["related"]) / n, 4) if n else None,
        "per_kind": per_kind,
        "independents": len(independents),
        "independents_flagged": flagged_ind,
        "false_edges": false_edges[:50],
        "related_edges": related_edges[:50],
        "misses": misses,
    }


def run_infer_cli(hub_root: Path) -> tuple[float, dict]:
    cli = Path(sys.executable).with_name("fiun-hub")
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "cli.main"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd + ["--hub", str(hub_root), "--json", "lineage", "--infer"], capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"lineage --infer failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return dt, json.loads(p.stdout)


def bench_quality(root: Path, archs: list[str], datasets: list[str], epochs: int) -> tuple[dict, dict, LocalHub]:
    import torch

    from fiun_hub.scenarios import torch_threads

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
    infer_s, data = run_infer_cli(root)
    res = score(truth, data["edges"])
    res.update(models=len(truth), build_s=round(build_s, 1), infer_cli_s=round(infer_s, 2),
               undeclared_reported=data["undeclared"], archs=archs, datasets=datasets, epochs=epochs)
    # every edge as reported, for the record (small)
    res["reported"] = [{k: e.get(k) for k in ("parent", "child", "kind", "direction", "declared", "identical_tensors",
                                              "shared_tensors", "init_similarity", "learned_similarity",
                                              "merge_weights")} for e in data["edges"]]
    return res, truth, hub


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


def population(n: int, family: int, bases: list[str], family_base: str, seed: int = 0) -> list[dict]:
    """``n`` synthetic models: specs (``job`` for :func:`_make`, or ``same_as``: a re-upload) with their planted
    truth."""
    rng = np.random.default_rng(seed)
    specs: list[dict] = [{"name": "fam/root", "job": (family_base, None, 0.0, 0), "kind": "independent",
                          "parents": []}]
    for i in range(min(family, n - 1)):
        specs.append({"name": f"fam/copy-{i}", "job": (family_base, None, float(rng.uniform(0.01, 0.1)), 10_000 + i),
                      "kind": "noise", "parents": ["fam/root"]})
    j = 0
    while len(specs) < n:
        base = bases[int(rng.integers(len(bases)))]
        shuffle_seed = 20_000 + j
        if rng.random() < 0.7:  # an independent
            specs.append({"name": f"ind/m{j}", "job": (base, shuffle_seed, 0.0, 0), "kind": "independent",
                          "parents": []})
            j += 1
            continue
        root = f"grp{j}/root"  # a small family: its own root (shuffled: unrelated to the rest) and its copies
        specs.append({"name": root, "job": (base, shuffle_seed, 0.0, 0), "kind": "independent", "parents": []})
        for c in range(int(rng.integers(1, 6))):
            if rng.random() < 0.2:
                specs.append({"name": f"grp{j}/reupload-{c}", "job": None, "same_as": root, "kind": "re-upload",
                              "parents": [root]})
            else:
                specs.append({"name": f"grp{j}/copy-{c}",
                              "job": (base, shuffle_seed, float(rng.uniform(0.01, 0.1)), 30_000 + 10 * j + c),
                              "kind": "noise", "parents": [root]})
        j += 1
    return specs[:n]


def build_scale_hub(root: Path, specs: list[dict], base_paths: dict, workers: int) -> dict:
    """The scale hub: stub repos (one commit each), fingerprints of real bytes, an index naming them."""
    from concurrent.futures import ProcessPoolExecutor
    from types import SimpleNamespace

    from fiun_hub import lineage
    from fiun_hub.fingerprint import _layout_path, fingerprint_path
    from fiun_hub.hub.local import atomic_write

    manifest = root / "bench-manifest.json"
    key = json.dumps([[s["name"], s.get("job"), s.get("same_as")] for s in specs])
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("key") == key:
            print(f"  reusing {root} ({len(specs):,} models)", flush=True)
            return m["info"]
    hub = LocalHub.init(root)
    store = SimpleNamespace(root=root)
    t0 = time.perf_counter()
    jobs = [s["job"] for s in specs if s.get("job") is not None]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_load_bases, initargs=(base_paths,)) as ex:
            made = list(ex.map(_make, jobs, chunksize=16))
    else:
        _load_bases(base_paths)
        made = [_make(j) for j in jobs]
    fingerprint_s = time.perf_counter() - t0
    weights: dict[str, str] = {}
    it = iter(made)
    layouts = 0
    for s in specs:
        if s.get("job") is None:
            weights[s["name"]] = weights[s["same_as"]]
            continue
        sha, fp, layout = next(it)
        weights[s["name"]] = sha
        lp = _layout_path(store, layout["key"])
        if not lp.is_file():
            atomic_write(lp, json.dumps(layout, separators=(",", ":")).encode(), fsync=False)
            layouts += 1
        atomic_write(fingerprint_path(store, sha), json.dumps(fp, separators=(",", ":")).encode(), fsync=False)
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
    info = {"models": len(specs), "distinct_weights": len(set(weights.values())), "layouts": layouts,
            "fingerprint_s": round(fingerprint_s, 1), "fingerprint_ms_per_model": round(1000 * fingerprint_s /
                                                                                        max(1, len(jobs)), 1),
            "publish_stubs_s": round(publish_s, 1), "workers": workers}
    manifest.write_text(json.dumps({"key": key, "info": info}))
    return info


def bench_scale(root: Path, n: int, family: int, base_paths: dict, family_base: str, workers: int, repeats: int,
                profile: bool) -> dict:
    from fiun_hub import fingerprint as F

    bases = sorted(base_paths)
    specs = population(n, family, bases, family_base)
    print(f"  scale hub: {n:,} models (family of {min(family, n - 1)}) ...", flush=True)
    info = build_scale_hub(root, specs, base_paths, workers)
    hub = LocalHub(root)
    cli_s, data = [], None
    for _ in range(repeats):
        dt, data = run_infer_cli(root)
        cli_s.append(dt)
    api_s = []
    edges = None
    for _ in range(repeats):
        F._LAYOUTS.clear()
        t0 = time.perf_counter()
        edges = F.infer(hub)
        api_s.append(time.perf_counter() - t0)
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
            "edges": len(data["edges"]), "api_edges": len(edges),
            "precision": sc["precision"], "precision_strict": sc["precision_strict"], "false": sc["false"],
            "recall": {k: v["recall"] for k, v in sc["per_kind"].items() if v["planted"]},
            "misses": sc["misses"][:20], "profile": prof}


# ------------------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    q = res["quality"]
    out = [f"Quality: {q['models']} models ({', '.join(q['archs'])} on {', '.join(q['datasets'])}), "
           f"{q['edges']} edges reported: {q['correct']} correct, {q['related']} related, {q['false']} false; "
           f"precision {q['precision']} (strict, true parent only: {q['precision_strict']}); "
           f"independents flagged: {len(q['independents_flagged'])} of {q['independents']}", "",
           "| kind | planted | found | recall | all parents | direction right | declared flag right |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, r in q["per_kind"].items():
        out.append(f"| {kind} | {r['planted']} | {r['found']} | {r['recall']} | {r['all_parents_found']} | "
                   f"{r['direction_ok']} | {r['declared_right']} |")
    if q["misses"]:
        out += ["", "Misses: " + "; ".join(f"{m['repo']} ({m['kind']})" for m in q["misses"])]
    out += ["", "| models in the index | CLI `--infer` (median) | in-process `infer` | edges | precision | "
                "recall (noise / re-upload) |", "|---:|---:|---:|---:|---:|---|"]
    for s in res["scale"]:
        out.append(f"| {s['models']:,} | {s['infer_cli_median_s']} s | {s['infer_api_median_s']} s | {s['edges']:,} | "
                   f"{s['precision']} | {s['recall'].get('noise')} / {s['recall'].get('re-upload')} |")
    if len(res["scale"]) >= 2:
        a, b = res["scale"][0], res["scale"][-1]
        out.append(f"\n{b['models']:,} vs {a['models']:,}: CLI x{b['infer_cli_median_s'] / a['infer_cli_median_s']:.2f}, "
                   f"in-process x{b['infer_api_median_s'] / a['infer_api_median_s']:.2f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="test_resnet,test_vit,test_convnext")
    ap.add_argument("--datasets", default="digits")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the models trained from scratch")
    ap.add_argument("--sizes", default="1000,10000", help="models in the index for the timing")
    ap.add_argument("--family", type=int, default=500, help="near copies of one parent in the scale hub")
    ap.add_argument("--workers", type=int, default=2, help="processes computing the scale fingerprints")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one in-process infer at each size")
    ap.add_argument("--keep", help="keep the hubs under this folder (and reuse the scale fingerprints)")
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
        if qroot.exists():
            import shutil

            shutil.rmtree(qroot)
        print("quality: planting derivatives ...", flush=True)
        q, truth, hub = bench_quality(qroot, archs, datasets, args.epochs)
        res["quality"] = q
        res["truth"] = truth
        print(f"  {q['edges']} edges, precision {q['precision']}, infer {q['infer_cli_s']} s", flush=True)
        base_paths = {r: hub.blob_path(r, hub.list_files(r)[WEIGHTS_FILE]) for r in sorted(truth)
                      if truth[r]["kind"] != "re-upload"}
        family_base = next(r for r in truth if truth[r]["kind"] == "independent")  # the first arch's seed 1
        res["scale"] = []
        for n in sizes:
            res["scale"].append(bench_scale(base_dir / f"scale-hub-{n}", n, args.family, base_paths, family_base,
                                            args.workers, args.repeats, args.profile))
            s = res["scale"][-1]
            print(f"  {n:,}: CLI {s['infer_cli_median_s']} s, in-process {s['infer_api_median_s']} s, "
                  f"{s['edges']:,} edges, precision {s['precision']}", flush=True)
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
