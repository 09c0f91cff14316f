"""Executors: local, process pool, Ray (a real local Ray, 2 CPUs) and the batched dampening path.

- run_batched (the CUDA path, run here on CPU) gives the same bytes and stats as unlearn_node repo by repo, on
  tasks of mixed head shapes, label orders, forget sets, alphas / lambdas and non-head layers; a repo off the
  common path fails with unlearn_node's own error;
- Ray: the same bytes as the local executor (per task and chunked), shared objects stored once, a failed task
  raises the task's own error (naming its repo) and a forget through Ray on a real hub publishes the same new
  files (sha256 of weights, sidecars and cards) as the local executor; a failing repo publishes nothing;
- `fim` and `takedown` with `--executor ray`: byte-identical files to the local executor (a takedown's ledger
  included, with the clocks fixed), nothing published on failure;
- without Ray installed, the ray executor (forget, fim, takedown) says how to get it in one line.

One local Ray (2 CPUs) is started once for the module and shared by every Ray test.
"""
from __future__ import annotations

import hashlib
import json
import importlib.util
import random
import shutil
import sys

import pytest
import torch

from fiun_hub.errors import BadInput, FiunError, UnlearnError
from fiun_hub.executors import EXECUTORS, run_batched, run_tasks, run_unlearn, share_fields
from fiun_hub.unlearn import NodeTask, unlearn_node

HAVE_RAY = importlib.util.find_spec("ray") is not None  # CI installs the test extra, which has ray

needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install 'fiun-hub[ray]')")
HEAD = ["fc.weight", "fc.bias"]


# ----------------------------------------------------------------------------------------------- synthetic tasks
def make_task(folder, i: int, labels, forget, *, d: int = 8, alpha: float = 1.0, lam: float = 0.01,
              body: bool = False, zero_count: str | None = None, mutate=None, origin=None) -> NodeTask:
    """A weights file (a conv tensor + an fc head of len(labels) rows) and sidecar-like FIMs whose forget rows
    weigh more than the retained ones, so that real selection and dampening happen."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1000 + i)
    k = len(labels)
    w = {"conv.weight": torch.randn(4, 3, generator=g), "fc.weight": torch.randn(k, d, generator=g),
         "fc.bias": torch.randn(k, generator=g)}
    if mutate:
        mutate(w)
    path = folder / f"w{i}.safetensors"
    save_file(w, str(path))
    names = HEAD + (["conv.weight"] if body else [])
    counts = {lab: 0 if lab == zero_count else 5 + (j * 7 + i) % 11 for j, lab in enumerate(labels)}
    class_fims = {}
    for lab in labels:
        if counts[lab] == 0:
            continue
        class_fims[lab] = {n: torch.rand(w[n].shape, generator=g) * (0.1 if n != "conv.weight" else 1.0)
                           for n in names}
        for n in HEAD:  # each class weighs mostly on its own row
            class_fims[lab][n][labels.index(lab)] += torch.rand(class_fims[lab][n][0].shape, generator=g)
    tot = sum(counts.values())
    model_fim = {n: sum(counts[c] * class_fims[c][n] for c in class_fims) / tot for n in names}
    model_fim["fc.bias"][0] = 0.0  # the F = 0 guard
    src = origin or {}
    mfim = {n: src.get(n, sum((class_fims[c][n] for c in forget if c in class_fims), torch.zeros(w[n].shape))
                       * 1.5 + 1e-3) for n in names}
    return NodeTask(f"t/m{i}", str(path), list(labels), model_fim, class_fims, counts, mfim, list(forget), HEAD,
                    alpha, lam)


@pytest.fixture
def tasks(tmp_path):
    """Forty tasks of mixed structure: same-shape majority, other label orders, another head size, two forget
    classes, a forget class a repo lacks, a zero-count forget class, other alpha/lambda, a non-head layer."""
    labels = [str(c) for c in range(10)]
    out = []
    for i in range(24):
        out.append(make_task(tmp_path, i, labels, ["3"]))
    rnd = random.Random(0)
    for i in range(24, 28):
        out.append(make_task(tmp_path, i, rnd.sample(labels, len(labels)), ["3"]))
    out.append(make_task(tmp_path, 28, labels[:5], ["3"]))
    out.append(make_task(tmp_path, 29, labels + ["x", "y"], ["3"]))
    out.append(make_task(tmp_path, 30, labels, ["3", "7"]))
    out.append(make_task(tmp_path, 31, labels, ["3", "7"]))
    out.append(make_task(tmp_path, 32, [c for c in labels if c != "3"], ["3"]))
    out.append(make_task(tmp_path, 33, labels, ["3"], zero_count="3"))
    out.append(make_task(tmp_path, 34, labels, ["3"], alpha=0.5, lam=1.0))
    out.append(make_task(tmp_path, 35, labels, ["3"], body=True))
    out.append(make_task(tmp_path, 36, labels, ["3"], body=True))
    out.append(make_task(tmp_path, 37, labels, []))
    for i in (38, 39):
        out.append(make_task(tmp_path, i, labels, ["3"], d=16))
    for i, forget, inert in ((40, ["3"], ["5", "7"]), (41, ["3"], ["5", "7"]), (42, [], ["5"])):
        t = make_task(tmp_path, i, labels, forget)  # rows that earlier forgets removed stay inert
        t.inert = inert
        out.append(t)
    return out


def per_node(tasks):
    return {t.repo: unlearn_node(t) for t in tasks}


# ----------------------------------------------------------------------------------------------- batched path
def test_batched_gives_the_bytes_of_unlearn_node(tasks):
    want = per_node(tasks)
    assert sum(want[t.repo][2]["changed"] for t in tasks) > 100  # real dampening happened
    for max_batch in (128, 7):
        got = run_batched(tasks, device="cpu", max_batch=max_batch)
        assert set(got) == set(want)
        for r in want:
            assert got[r][0] == r
            assert hashlib.sha256(got[r][1]).hexdigest() == hashlib.sha256(want[r][1]).hexdigest(), r
            assert got[r][2] == want[r][2], r


def test_batched_groups_by_head_shape(tasks, monkeypatch):
    """The 24 plain repos are dampened in ONE group (one set of stacked operations), not one by one."""
    import fiun_hub.executors as ex

    sizes = []
    real = ex.dampen_group
    monkeypatch.setattr(ex, "dampen_group", lambda g, dev=None: sizes.append(len(g)) or real(g, dev))
    seen = []
    run_batched(tasks, device="cpu", progress=seen.append)
    # t/m32 has none of the forgotten labels: nothing of it changes, so it skips the stacked path
    assert max(sizes) >= 24 and sum(sizes) == len(tasks) - 1
    assert sorted(seen) == sorted(t.repo for t in tasks)


def test_batched_failure_is_unlearn_nodes_error(tmp_path):
    labels = [str(c) for c in range(10)]

    def add_inf(w):
        w["fc.weight"][0, 0] = float("inf")

    good = [make_task(tmp_path, i, labels, ["3"]) for i in range(3)]
    bad = make_task(tmp_path, 9, labels, ["3"], mutate=add_inf)
    with pytest.raises(UnlearnError) as want:
        run_tasks(unlearn_node, good + [bad])
    with pytest.raises(UnlearnError) as got:
        run_batched(good + [bad], device="cpu")
    assert str(got.value) == str(want.value) and str(got.value).startswith("t/m9: ")
    lacking = make_task(tmp_path, 10, labels, ["3"])
    lacking.mfim["layer9.weight"] = torch.zeros(1)
    with pytest.raises(UnlearnError, match="lack the sidecar's layer"):
        run_batched([lacking], device="cpu")


def test_batched_reference_the_dtype_cannot_hold_fails_as_unlearn_node(tmp_path):
    """A float16 head whose ranked-last bias is below float16's range: the per-repo update refuses the reference; the
    batched path used to write -inf/NaN into the forgotten row (then failed on another message, or on none where no
    entry was selected). It now gives the repo's own per-repo error (its group re-run repo by repo)."""
    labels = [str(c) for c in range(10)]

    def big_half(w):
        w["fc.weight"] = (w["fc.weight"] * 5000).half()
        w["fc.bias"] = w["fc.bias"].half()

    good = [make_task(tmp_path, i, labels, ["3"], mutate=big_half) for i in range(2)]
    with pytest.raises(UnlearnError) as want:
        run_tasks(unlearn_node, good)
    assert "reference of fc.bias holds non-finite values" in str(want.value)
    with pytest.raises(UnlearnError) as got:
        run_batched(good, device="cpu")
    assert str(got.value) == str(want.value) and str(got.value).startswith("t/m0: ")


def test_run_unlearn_picks_the_path(tasks, monkeypatch):
    import fiun_hub.executors as ex

    called = []
    monkeypatch.setattr(ex, "run_batched", lambda *a, **k: called.append("batched") or {})
    run_unlearn(tasks[:2], device="cpu")  # CPU: per node
    assert called == []
    run_unlearn(tasks[:2], device="cpu", batched=True)
    assert called == ["batched"]


# ----------------------------------------------------------------------------------------------- plumbing
def sha_of(repo, result):
    return hashlib.sha256(result[1]).hexdigest()


def test_on_result_keeps_what_the_caller_returns(tasks):
    want = {r: sha_of(r, v) for r, v in per_node(tasks[:6]).items()}
    assert run_tasks(unlearn_node, tasks[:6], on_result=sha_of) == want
    assert run_batched(tasks[:6], device="cpu", on_result=sha_of) == want


def test_share_fields_stores_shared_values_once(tasks):
    a, b = tasks[0], tasks[1]
    same = {"fc.weight": a.mfim["fc.weight"].clone(), "fc.bias": a.mfim["fc.bias"].clone()}
    b.mfim = same  # equal content, another object
    stubs, shared, slots = share_fields([a, b])
    assert "mfim" in slots[0] and slots[0]["mfim"] == slots[1]["mfim"]
    assert "labels" in slots[0] and "model_fim" not in slots[0] and "weights_path" not in slots[0]
    assert stubs[0].mfim is None and stubs[0].model_fim is a.model_fim
    assert len([k for k in shared if k == slots[0]["mfim"]]) == 1


def test_pack_round_trips_tasks_bit_exactly(tasks):
    from fiun_hub.executors import pack, unpack

    t = tasks[0]
    t.model_fim["odd"] = torch.randn(3, dtype=torch.bfloat16)
    t.class_fims["0"]["half"] = torch.randn(2, 2).half()
    back = unpack(pack(t))
    assert type(back) is NodeTask and back.repo == t.repo and back.labels == t.labels
    for a, b in ((t.model_fim, back.model_fim), (t.class_fims["0"], back.class_fims["0"]), (t.mfim, back.mfim)):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8) if a[k].dtype == torch.bool
                                                            else a[k], b[k])


def test_unknown_executor_and_bad_workers(tasks):
    assert EXECUTORS == ("local", "ray")
    with pytest.raises(BadInput, match="unknown executor 'dask'"):
        run_tasks(unlearn_node, tasks[:1], executor="dask")
    with pytest.raises(BadInput, match="--workers"):
        run_tasks(unlearn_node, tasks[:1], workers=0)


def test_missing_ray_says_how_to_get_it(tasks, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(BadInput, match=r"pip install 'fiun-hub\[ray\]'"):
        run_tasks(unlearn_node, tasks[:1], executor="ray")


# ----------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def local_ray():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'fiun-hub[ray]')")
    import ray

    from fiun_hub.executors import init_ray

    started = not ray.is_initialized()
    init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@needs_ray
def test_ray_gives_the_bytes_of_local(local_ray, tasks):
    want = run_tasks(unlearn_node, tasks)
    seen = []
    got = run_tasks(unlearn_node, tasks, executor="ray", progress=seen.append)
    assert sorted(seen) == sorted(want)
    assert {r: hashlib.sha256(v[1]).hexdigest() for r, v in got.items()} == \
           {r: hashlib.sha256(v[1]).hexdigest() for r, v in want.items()}
    chunked = run_tasks(unlearn_node, tasks, executor="ray", chunk_size=8)
    assert {r: v[1] for r, v in chunked.items()} == {r: v[1] for r, v in want.items()}
    batched = run_unlearn(tasks, executor="ray", workers=2, batched=True, device="cpu", on_result=sha_of)
    assert batched == {r: sha_of(r, v) for r, v in want.items()}


@needs_ray
def test_ray_failure_is_the_tasks_own_error(local_ray, tmp_path):
    labels = [str(c) for c in range(10)]

    def add_inf(w):
        w["fc.weight"][0, 0] = float("inf")

    tasks = [make_task(tmp_path, i, labels, ["3"]) for i in range(4)]
    tasks.append(make_task(tmp_path, 7, labels, ["3"], mutate=add_inf))
    with pytest.raises(UnlearnError) as exc:
        run_tasks(unlearn_node, tasks, executor="ray")
    assert "t/m7" in str(exc.value) and "\n" not in str(exc.value)


def _dag_hub(folder):
    """root (digits 0-3) -> a, b -> merged(a, b); root -> il (labels 5, 3, 2, 1, 0: another head shape);
    bad-root -> bad, ok, where bad's head holds an Inf (committed straight through LocalHub.publish, since
    `push` refuses such weights). Untrained models with real sidecars on 120 digits."""
    from safetensors.torch import load, save

    from fiun_hub.constants import FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
    from fiun_hub.data import load_data
    from fiun_hub.hub.local import LocalHub, RepoChange
    from fiun_hub.models import save_model_folder
    from fiun_hub.repo import push_folder
    from fiun_hub.safetensors_io import header_of_bytes
    from fiun_hub.research.scenarios import new_model, sidecar_files

    hub = LocalHub.init(folder / "hub")
    train = load_data("digits:train", in_chans=1, input_size=(16, 16))
    revs = {}

    def put(repo, labels, parents=(), seed=0, mutate=None):
        model = new_model("test_resnet", len(labels), 1, seed)
        f = save_model_folder(model, folder / "tmp" / repo.replace("/", "--"), labels, input_size=(1, 16, 16))
        wb = (f / WEIGHTS_FILE).read_bytes()
        data = train.to_label_space(labels)
        data = data.subset(torch.arange(min(120, len(data))))
        fim, cls = sidecar_files(model, labels, data, hashlib.sha256(wb).hexdigest(), data_spec="digits:train")
        (f / FIM_FILE).write_bytes(fim)
        (f / FIM_CLASSES_FILE).write_bytes(cls)
        revs[repo] = push_folder(hub, f, repo, parents=[f"{p}@{revs[p]}" for p in parents])["revision"]
        if mutate:  # new weights with the sidecars bound to them (the FIMs of the finite model)
            t = load(wb)
            mutate(t)
            wb = save(t, metadata=header_of_bytes(wb)[1] or None)
            fim, cls = sidecar_files(model, labels, data, hashlib.sha256(wb).hexdigest(), data_spec="digits:train")
            revs[repo] = hub.publish([RepoChange(repo, {WEIGHTS_FILE: wb, FIM_FILE: fim, FIM_CLASSES_FILE: cls},
                                                 "broken weights", parent_commit=revs[repo])])[repo]

    base = ["0", "1", "2", "3"]
    put("d/root", base, seed=1)
    put("d/a", base, ["d/root"], 2)
    put("d/b", base, ["d/root"], 3)
    put("d/merged", base, ["d/a", "d/b"], 4)
    put("d/il", ["5", "3", "2", "1", "0"], ["d/root"], 5)
    put("d/bad-root", base, seed=6)
    put("d/ok", base, ["d/bad-root"], 7)

    def add_inf(t):
        t["fc.weight"][0, 0] = float("inf")

    put("d/bad", base, ["d/bad-root"], 8, mutate=add_inf)
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    return hub


@pytest.fixture(scope="module")
def dag_hub(tmp_path_factory):
    return _dag_hub(tmp_path_factory.mktemp("dag")).root


def _new_files(hub, result):
    """Per new revision: the sha256 of every file in it (weights, sidecars, card)."""
    return {r: hub.list_files(r, v["to"]) for r, v in result.revisions.items()}


@needs_ray
def test_forget_through_ray_publishes_what_local_does(local_ray, dag_hub, tmp_path, monkeypatch):
    """Every file of every new revision is byte-identical (sha256) between the executors: weights, sidecars
    (deterministic encoding) and cards (the record's time fixed), per repo and batched."""
    from fiun_hub.hub.local import LocalHub
    from fiun_hub.unlearn import plan_forget, run_forget

    _frozen_clocks(monkeypatch)
    files = {}
    for ex, kw in (("local", {}), ("ray", {}), ("ray-batched", {"batched": True, "device": "cpu", "workers": 2})):
        shutil.copytree(dag_hub, tmp_path / ex, symlinks=True)
        hub = LocalHub(tmp_path / ex)
        plan = plan_forget(hub, ["d/root"], "3", request_id="REQ-1")
        assert len(plan.todo) == 5
        result = run_forget(hub, plan, executor=ex.split("-")[0], **kw)
        files[ex] = _new_files(hub, result)
    assert files["local"] == files["ray"] == files["ray-batched"]
    assert len({v["model.safetensors"] for v in files["ray"].values()}) == 5


@needs_ray
def test_failed_ray_task_publishes_nothing(local_ray, dag_hub, tmp_path, hub_fingerprint):
    from fiun_hub.hub.local import LocalHub
    from fiun_hub.unlearn import plan_forget, run_forget

    shutil.copytree(dag_hub, tmp_path / "h", symlinks=True)
    hub = LocalHub(tmp_path / "h")
    plan = plan_forget(hub, ["d/bad-root"], "1")
    snap = hub_fingerprint(hub.root)
    with pytest.raises(FiunError) as exc:
        run_forget(hub, plan, executor="ray")
    assert "d/bad" in str(exc.value)
    assert hub_fingerprint(hub.root) == snap


@needs_ray
def test_run_call_on_ray(local_ray):
    from fiun_hub.executors import run_call

    assert run_call(sorted, [3, 1, 2], executor="ray", reverse=True) == [3, 2, 1]
    assert run_call(sorted, [3, 1, 2], executor="local") == [1, 2, 3]
    with pytest.raises(ValueError):
        run_call(int, "x", executor="ray")


# ----------------------------------------------------------------------------------------------- fim and takedown
def _cli(*args):
    """The real `fiun-hub` group in this process (so it shares this module's Ray session)."""
    from click.testing import CliRunner

    from fiun_hub_cli.main import main

    result = CliRunner().invoke(main, [str(a) for a in args], env={"FIUN_HUB": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _all_files(hub):
    """repo -> (head, {path: sha256}) for every repo: what every file written so far holds."""
    return {r: (hub.head(r), hub.list_files(r)) for r in hub.list_repos()}


def _frozen_clocks(monkeypatch):
    """Fix every timestamp a forget, a takedown and a commit write, so that two runs can be compared byte for
    byte (commit ids included)."""
    import fiun_hub.compliance as C
    import fiun_hub.hub.local as L
    import fiun_hub.unlearn as U

    monkeypatch.setattr(U, "utc_now", lambda: "2026-11-22T10:00:00Z")
    monkeypatch.setattr(C.clock, "now", lambda: "2026-11-22T10:00:00Z")
    if hasattr(L, "_now"):
        monkeypatch.setattr(L, "_now", lambda: "2026-11-22T10:00:00.000000Z")
        return True
    return False


@needs_ray
def test_fim_through_ray_writes_the_bytes_of_local(local_ray, dag_hub, tmp_path):
    """`fiun-hub fim --executor ray` computes the sidecars in a Ray task and publishes here: the sha256 of every
    file it commits equals the local executor's, with the estimator whose sums depend on the thread count (the
    batch estimator over every layer) at the same --workers; computing twice locally gives the same bytes too."""
    from fiun_hub.hub.local import LocalHub

    got = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray"]), ("again", [])):
        shutil.copytree(dag_hub, tmp_path / name, symlinks=True)
        code, out, err = _cli("--hub", tmp_path / name, "--json", "fim", "d/a", "--data", "digits:train",
                              "--estimator", "batch", "--layers", "all", "--workers", "2", *extra)
        assert code == 0, err
        info = json.loads(out)
        hub = LocalHub(tmp_path / name)
        got[name] = hub.list_files("d/a", info["revision"])
        assert info["executor"] == ("ray" if extra else "local")
    assert got["local"] == got["ray"] == got["again"]
    from fiun_hub.sidecars import load_sidecars

    sc = load_sidecars(LocalHub(tmp_path / "ray"), "d/a")
    assert sc.estimator == "batch" and len(sc.layers) > 2 and "computed_at" not in sc.metadata


@needs_ray
def test_fim_failure_on_ray_publishes_nothing(local_ray, dag_hub, tmp_path, hub_fingerprint):
    shutil.copytree(dag_hub, tmp_path / "h", symlinks=True)
    snap = hub_fingerprint(tmp_path / "h")
    code, out, err = _cli("--hub", tmp_path / "h", "fim", "d/a", "--data", "digits:train", "--layers", "nope.*",
                          "--executor", "ray")
    assert code == 2 and "match no parameter" in err and len(err.strip().splitlines()) == 1, err
    assert hub_fingerprint(tmp_path / "h") == snap


TAKEDOWN = """\
id: TKD-RAY-1
reason: erasure request
requested_by: dpo@example.org
received: 2026-11-20
origins: [d/root]
forget: {classes: ["3"]}
"""


@needs_ray
def test_takedown_through_ray_writes_the_bytes_of_local(local_ray, dag_hub, tmp_path, monkeypatch):
    """`fiun-hub takedown --executor ray` publishes exactly what the local executor does: with the clocks fixed,
    every repo's head and the sha256 of every file (new weights, sidecars, cards, the ledger's records) agree."""
    frozen = _frozen_clocks(monkeypatch)
    req = tmp_path / "req.yaml"
    req.write_text(TAKEDOWN)
    from fiun_hub.hub.local import LocalHub

    got = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--workers", "2"])):
        shutil.copytree(dag_hub, tmp_path / name, symlinks=True)
        code, out, err = _cli("--hub", tmp_path / name, "--json", "takedown", req, *extra)
        assert code == 0, err
        assert set(json.loads(out)["revisions"]) == {"d/root", "d/a", "d/b", "d/merged", "d/il"}
        got[name] = _all_files(LocalHub(tmp_path / name))
    if frozen:
        assert got["local"] == got["ray"]
    else:  # commit ids differ with their times; every model repo's files must still agree
        assert {r: v[1] for r, v in got["local"].items() if r != "fiun-hub/ledger"} == \
               {r: v[1] for r, v in got["ray"].items() if r != "fiun-hub/ledger"}


@needs_ray
def test_failed_takedown_on_ray_publishes_nothing(local_ray, dag_hub, tmp_path, hub_fingerprint):
    req = tmp_path / "req.yaml"
    req.write_text(TAKEDOWN.replace("TKD-RAY-1", "TKD-RAY-2").replace("[d/root]", "[d/bad-root]")
                   .replace('["3"]', '["1"]'))
    shutil.copytree(dag_hub, tmp_path / "h", symlinks=True)
    snap = hub_fingerprint(tmp_path / "h")
    code, out, err = _cli("--hub", tmp_path / "h", "takedown", req, "--executor", "ray")
    assert code != 0 and "d/bad" in err and len(err.strip().splitlines()) == 1, err
    assert hub_fingerprint(tmp_path / "h") == snap


def test_fim_and_takedown_without_ray_say_how_to_get_it(dag_hub, tmp_path, monkeypatch, hub_fingerprint):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    req = tmp_path / "req.yaml"
    req.write_text(TAKEDOWN)
    shutil.copytree(dag_hub, tmp_path / "h", symlinks=True)
    snap = hub_fingerprint(tmp_path / "h")
    for args in (("fim", "d/a", "--data", "digits:train", "--executor", "ray"),
                 ("takedown", req, "--executor", "ray"),
                 ("forget", "--origin", "d/root", "--classes", "3", "--executor", "ray")):
        code, out, err = _cli("--hub", tmp_path / "h", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "pip install 'fiun-hub[ray]'" in lines[0], (args, err)
    assert hub_fingerprint(tmp_path / "h") == snap


def test_ray_chunks_of_the_batched_path_reserve_gpu_shares(tasks, monkeypatch):
    """The CUDA plan on Ray without a GPU: with device cuda, run_unlearn takes the batched path, sorts the repos
    by head shape into one chunk per CPU slot (or per max_batch repos), hands each chunk the device by name and
    asks Ray for an equal share of the cluster's GPUs per chunk. (Ray and CUDA are faked: nothing runs.)"""
    import fiun_hub.executors as ex

    class FakeRay:
        @staticmethod
        def cluster_resources():
            return {"CPU": 4.0, "GPU": 1.0}

    seen = {}

    def fake_run_ray(fn, chunks, **kw):
        seen.update(fn=fn, chunks=chunks, options=kw.get("options"))
        return {}

    monkeypatch.setattr(ex, "init_ray", lambda *a, **k: FakeRay)
    monkeypatch.setattr(ex, "_run_ray", fake_run_ray)
    ex.run_unlearn(tasks, executor="ray", device="cuda", max_batch=16)
    chunks = seen["chunks"]
    assert seen["fn"] is ex._run_chunk and len(chunks) == 4  # max(4 CPU slots, ceil(40 / 16))
    assert sorted(t.repo for c in chunks for t in c.tasks) == sorted(t.repo for t in tasks)
    assert all(c.device == "cuda" and c.max_batch == 16 for c in chunks)
    assert seen["options"] == {"num_gpus": 0.25}
    shapes = [repr(tuple((n, tuple(v.shape)) for n, v in t.mfim.items())) for c in chunks for t in c.tasks]
    assert shapes == sorted(shapes)  # grouped by head shape across the chunks
    seen.clear()
    ex.run_unlearn(tasks, executor="ray", device="cpu", batched=True)  # CPU: batched on request, no GPU asked
    assert seen["options"] is None
