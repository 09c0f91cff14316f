"""Reliability of the hub under crashes, concurrent writers and hostile input (DESIGN.md sections 2, 6, 7).

Real processes and real files throughout; torch is imported once (by conftest) and every extra process is an
``os.fork()`` of the test process, so a trial costs milliseconds, not the seconds of a fresh interpreter.

1. Fault injection: a class-wise forget over a DAG of 20 real timm repos (test_efficientnet; one origin, 19
   descendants: chains, fan-outs, two-parent merges, each with real sidecars) runs in a forked child that is
   SIGKILLed: at >= 50 random moments spread over the whole forget (delays drawn from the measured length of an
   uninterrupted forget, a third of them from its end, where the publish runs), plus once in each phase of the
   publish (first snapshot, first syncfs, journal, half the ref moves, index, second syncfs). After each kill the
   next command (``fiun-hub verify``) opens the hub, which finishes an unfinished journal; then all-or-nothing is
   checked (every affected head moved to a commit carrying the request, or none moved) and verify must find
   nothing.
2. Readers during publishes: a writer publishes 20-repo sets over and over while readers poll the heads (from
   the lineage index, from a fresh LocalHub per poll, from a long-lived LocalHub, the last two with
   ``LocalHub.heads()``): each observed set must be whole. A fourth reader calls ``head()`` once per repo; what
   it sees is reported, not asserted (separate calls can straddle the instant a publish lands).
3. Concurrency: 10 processes push new repos, push the same repo, race on one expected head, and forget over
   overlapping sub-DAGs (re-planning after a refusal) on one hub at once; afterwards every acknowledged write is
   in its repo's history, nothing unacknowledged is, every refusal was a ConflictError naming the repo, and
   verify passes.
4. Hostile input: a table of bad inputs for push, show, log, fim, forget, eval, lineage and verify (symlinks out
   of the hub, hostile card YAML, lying safetensors headers, NaN/Inf, shape mismatches, unknown revisions,
   cycles), each -> exit 2 (1 for verify's findings) with one line naming what and where, hub (and whatever lies
   outside it) byte-identical; plus hypothesis properties of the card parser and of repo ids at the CLI.

The figures these tests measure are printed (``pytest -s``) and reported in docs/reliability.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import base_and_child_hub, fingerprint
from fiun_hub.constants import CARD_FILE, CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
from fiun_hub.errors import FiunError
from fiun_hub.hub.local import LocalHub, RepoChange

IN = (1, 16, 16)
LABELS = [str(i) for i in range(10)]
# The forest: the smallest real timm architecture (417 KB of weights; test_resnet's are 1.5 MB) and 4 labels,
# so that a trial (a forget of 20 repos, then verify hashing every blob) costs ~0.6 CPU-seconds, not ~1.
FOREST_ARCH = "test_efficientnet"
F_LABELS = ["0", "1", "2", "3"]
N_REPOS = 20
ORIGIN = "f/m00"
FORGET_CLASS = "3"
REQUEST = "kill-test-3"
MIN_RANDOM_KILLS = 50
LANES = 2  # trial runners in parallel (the box has 2 cores)


def _say(msg: str) -> None:
    """Figures for docs/reliability.md (visible with ``pytest -s``)."""
    print(f"[reliability] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ processes
def _fork(fn: Callable, *args) -> int:
    """Run ``fn(*args)`` in a forked child (exit 0, or 3 with a traceback on stderr); returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 - report anything, then leave without pytest's teardown
            traceback.print_exc()
            code = 3
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 300) -> int:
    """Exit status of a child as a shell would give it (128 + signal for a kill)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish in {timeout}s")
        time.sleep(0.005)


def _reap(pids: list[int]) -> None:
    """Kill and reap the children of ``pids`` that are still there (a failed test leaves no process behind)."""
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):  # already reaped
            pass


def _link_copy(src: Path, dst: Path) -> None:
    """Copy a hub cheaply: files are hard links (a publish only ever adds files and renames new ones over old
    names, never writes into an existing file), symlinks stay symlinks, the writers' lock is not shared."""
    shutil.copytree(src, dst, symlinks=True, copy_function=os.link, ignore=shutil.ignore_patterns("lock"))


# ------------------------------------------------------------------------------------------------ the forest
@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    return build_forest(tmp_path_factory.mktemp("forest"))


def build_forest(root: Path) -> dict:
    """A hub of 20 real timm repos, each with sidecars computed on its own weights: f/m00 and 19
    descendants (chains, fan-outs, two-parent merges), so a forget at f/m00 publishes 20 new revisions.
    Also two model folders (weights + sidecars) for pushes."""
    from fiun_hub.data import load_data
    from fiun_hub.models import save_model_folder
    from fiun_hub.research.scenarios import new_model, push_model, sidecar_files, torch_threads

    hub = LocalHub.init(root / "hub")
    data = load_data("digits:train", in_chans=1, input_size=IN[1:]).to_label_space(F_LABELS)
    data = data.subset(torch.arange(40))
    rng = random.Random(20)
    names: list[str] = []
    heads: dict[str, str] = {}
    edges: dict[str, list[str]] = {}
    t = time.perf_counter()
    with torch_threads(1):
        for i in range(N_REPOS):
            if not names:
                parents = []
            else:
                r = rng.random()
                parents = ([names[-1]] if r < 0.5 else [rng.choice(names)] if r < 0.85 or len(names) < 2
                           else rng.sample(names, 2))
            name = f"f/m{i:02d}"
            heads[name] = push_model(hub, new_model(FOREST_ARCH, len(F_LABELS), 1, 100 + i), name, F_LABELS,
                                     input_size=IN, parents=[f"{p}@{heads[p]}" for p in parents], fim_data=data,
                                     data_spec="digits:train#reliability")["revision"]
            names.append(name)
            edges[name] = parents
        folders = []
        for k in range(2):
            model = new_model(FOREST_ARCH, len(F_LABELS), 1, 900 + k)
            folder = save_model_folder(model, root / f"push-{k}", F_LABELS, input_size=IN)
            sha = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
            fim, cls = sidecar_files(model, F_LABELS, data, sha, data_spec="digits:train#reliability")
            (folder / FIM_FILE).write_bytes(fim)
            (folder / FIM_CLASSES_FILE).write_bytes(cls)
            folders.append(folder)
    _say(f"forest: {N_REPOS} {FOREST_ARCH} repos ({sum(len(p) > 1 for p in edges.values())} merges), "
         f"weights {hub.file_path(ORIGIN, WEIGHTS_FILE).stat().st_size} bytes each, built in "
         f"{time.perf_counter() - t:.1f}s")
    return {"root": hub.root, "repos": names, "heads": heads, "edges": edges, "folders": folders}


def _ref(root: Path, repo: str) -> str:
    org, name = repo.split("/")
    return (root / f"models--{org}--{name}" / "refs" / "main").read_text()


# ------------------------------------------------------------------------------------------------ 1. kill -9
# Steps of LocalHub.publish at which a child kills itself (SIGKILL) right after the n-th call: one per phase
# (objects written but no record yet; all objects durable, no journal; journal, no ref moved; half the refs moved;
# every ref and the index written; all durable, journal not yet removed).
PUBLISH_STEPS = [("snapshot", 1), ("sync", 1), ("journal", 1), ("ref", N_REPOS // 2), ("index", 1), ("sync", 2)]


def _install_kill_hook(step: str, nth: int) -> None:
    """In a child: SIGKILL this process right after the ``nth`` call of one publish step."""
    import fiun_hub.hub.local as L

    calls = [0]

    def hit(kind: str) -> None:
        if kind == step:
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    methods = {"blob": "_store_blob", "snapshot": "_make_snapshot", "ref": "_write_ref"}
    if step in methods:
        original = getattr(L.LocalHub, methods[step])

        def method(self, *a, **k):
            out = original(self, *a, **k)
            hit(step)
            return out

        setattr(L.LocalHub, methods[step], method)
    elif step == "sync":
        original_sync = L.sync_filesystem

        def sync(path):
            original_sync(path)
            hit("sync")

        L.sync_filesystem = sync
    else:
        original_write = L.atomic_write

        def write(path, data, fsync=True):
            original_write(path, data, fsync)
            path = Path(path)
            kind = ("journal" if path.name == "journal.json" else "index" if path.name == "lineage.json"
                    else "commit" if path.parent.parent.name == "commits" else "other")
            hit(kind)

        L.atomic_write = write


def _forget_child(root: str, hook: tuple[str, int] | None, report: str | None) -> None:
    from fiun_hub.unlearn import plan_forget, run_forget

    if hook:
        _install_kill_hook(*hook)
    hub = LocalHub(root)
    plan = plan_forget(hub, [ORIGIN], FORGET_CLASS, request_id=REQUEST)
    result = run_forget(hub, plan)
    if report:
        Path(report).write_text(json.dumps(result.seconds))


def _disk_state(root: Path, old: dict[str, str], template_counts: tuple[int, int]) -> dict:
    """What a killed forget left on disk, before anything opens the hub again."""
    moved = sum(_ref(root, r) != old[r] for r in old)
    snaps = blobs = 0
    for r in old:
        rdir = root / ("models--" + r.replace("/", "--"))
        snaps += len(os.listdir(rdir / "snapshots"))
        blobs += len(os.listdir(rdir / "blobs"))
    journal = (root / ".fiun" / "journal.json").exists()
    new_objects = (snaps, blobs) != template_counts
    if journal:
        phase = "journal-written"
    elif moved == len(old):
        phase = "published"
    elif moved:
        phase = "TORN-WITHOUT-JOURNAL"
    elif new_objects:
        phase = "objects-written"
    else:
        phase = "before-publish"
    return {"phase": phase, "moved_at_kill": moved, "journal_at_kill": journal, "new_objects": new_objects}


def _check_after(root: Path, old: dict[str, str]) -> dict:
    """The next command after a kill: `fiun-hub --json verify` (opening the hub finishes a journal), then the
    all-or-nothing check of the affected heads."""
    from click.testing import CliRunner

    from fiun_hub_cli.main import main

    res = CliRunner().invoke(main, ["--hub", str(root), "--json", "verify"], env={"FIUN_HUB": None})
    try:
        problems = json.loads(res.stdout)["problems"]
    except (ValueError, KeyError):
        problems = [f"verify gave exit {res.exit_code}: {res.stdout[-300:]} {res.stderr[-300:]} {res.exception!r}"]
    hub = LocalHub(root)
    heads = {r: hub.head(r) for r in old}
    moved = [r for r in old if heads[r] != old[r]]
    bad = []
    for r in moved:
        info = hub.commit_info(r)
        card = hub.read_file(r, CARD_FILE)
        if info.parents != [old[r]] or card.count(f"request: {REQUEST}".encode()) != 1:
            bad.append(r)
    return {"verify_exit": res.exit_code, "problems": problems, "moved_after": len(moved), "bad_new_heads": bad,
            "journal_after": (root / ".fiun" / "journal.json").exists()}


def _one_trial(template: Path, work: Path, old: dict[str, str], counts: tuple[int, int], delay: float | None,
               hook: tuple[str, int] | None, rerun_after: set[str]) -> dict:
    dst = work / "trial"
    shutil.rmtree(dst, ignore_errors=True)
    _link_copy(template, dst)
    report = work / "seconds.json"
    report.unlink(missing_ok=True)
    t0 = time.monotonic()
    pid = _fork(_forget_child, str(dst), hook, str(report) if delay is None and hook is None else None)
    if delay is not None:
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)  # a child that already exited is a zombie: this does nothing to it
        except ProcessLookupError:
            pass
    status = _wait(pid)
    out = {"delay": delay, "hook": hook, "status": status, "seconds": time.monotonic() - t0,
           "killed": status == 128 + signal.SIGKILL}
    if report.is_file():
        out["phases"] = json.loads(report.read_text())
    out.update(_disk_state(dst, old, counts))
    out.update(_check_after(dst, old))
    if out["phase"] in rerun_after:  # the interrupted forget, run again to the end, lands exactly once everywhere
        rerun_after.discard(out["phase"])
        from fiun_hub.unlearn import plan_forget, run_forget

        hub = LocalHub(dst)
        plan = plan_forget(hub, [ORIGIN], FORGET_CLASS, request_id=REQUEST)
        out["rerun_todo"] = len(plan.todo)
        run_forget(hub, plan)
        after = _check_after(dst, old)
        out["rerun_ok"] = after["moved_after"] == len(old) and not after["bad_new_heads"]
        out["problems"] = out["problems"] + [f"after the re-run: {p}" for p in after["problems"]]
    shutil.rmtree(dst, ignore_errors=True)
    return out


def _lane(template: str, work: str, old: dict[str, str], counts: tuple[int, int], quota: int,
          hooks: list, seed: int, out_file: str) -> None:
    """One trial runner (a forked process): two uninterrupted forgets to measure its length, then random kills
    until ``quota`` of them landed (a third of the delays drawn from the last 40%, where the publish runs),
    then the kills at publish steps."""
    torch.set_num_threads(1)
    template, work = Path(template), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rerun_after = {"objects-written", "journal-written", "before-publish"}  # once each per lane
    results = []
    for _ in range(2):  # the first run also warms the page cache; the faster one sets the window
        control = _one_trial(template, work, old, counts, None, None, set())
        control["control"] = True
        results.append(control)
    length = min(r["seconds"] for r in results)
    kills = tries = 0
    while kills < quota and tries < quota * 2:
        late = tries % 3 == 2
        delay = rng.uniform(0.6, 0.92) * length if late else rng.uniform(0.0, 0.92) * length
        r = _one_trial(template, work, old, counts, delay, None, rerun_after)
        r["late"] = late
        results.append(r)
        kills += r["killed"]
        tries += 1
        if not r["killed"]:  # the forget ran faster than the window: shrink it (the box's load varies)
            length = min(length, r["seconds"])
    for hook in hooks:
        results.append(_one_trial(template, work, old, counts, None, tuple(hook), set()))
    Path(out_file).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def kill_trials(forest, tmp_path_factory):
    template = Path(forest["root"])
    old = dict(forest["heads"])
    counts = (0, 0)
    for r in old:
        rdir = template / ("models--" + r.replace("/", "--"))
        counts = (counts[0] + len(os.listdir(rdir / "snapshots")), counts[1] + len(os.listdir(rdir / "blobs")))
    before = fingerprint(template)
    work = tmp_path_factory.mktemp("kills")
    per_lane = -(-MIN_RANDOM_KILLS // LANES)
    t = time.perf_counter()
    pids, files = [], []
    for lane in range(LANES):
        f = work / f"lane{lane}.json"
        hooks = [list(h) for h in PUBLISH_STEPS[lane::LANES]]
        pids.append(_fork(_lane, str(template), str(work / f"lane{lane}"), old, counts, per_lane, hooks,
                          1000 + lane, str(f)))
        files.append(f)
    statuses = [_wait(p, timeout=600) for p in pids]
    assert statuses == [0] * LANES, f"a trial runner crashed: {statuses} (see captured stderr)"
    results = [r for f in files for r in json.loads(f.read_text())]
    wall = time.perf_counter() - t
    assert fingerprint(template) == before, "the template hub changed: a publish wrote into an existing file"
    random_kills = [r for r in results if r["killed"] and r["hook"] is None]
    hooked = [r for r in results if r["hook"] is not None]
    phases: dict[str, int] = {}
    for r in random_kills + hooked:
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    controls = [r for r in results if r.get("control")]
    figures = {
        "trials": len(results), "seconds": round(wall, 1), "lanes": LANES,
        "uninterrupted_forget_s": round(statistics.median(r["seconds"] for r in controls), 2),
        "its_publish_s": round(statistics.median(r["phases"]["publish"] for r in controls), 2),
        "random_sigkills": len(random_kills),
        "finished_before_the_kill": sum(not r["killed"] for r in results if r["hook"] is None and not r.get("control")),
        "sigkills_at_publish_steps": sum(r["killed"] for r in hooked),
        "phase_at_kill": dict(sorted(phases.items())),
        "journals_finished_by_next_command": sum(r["journal_at_kill"] for r in results),
        "half_moved_on_disk_at_kill": sum(0 < r["moved_at_kill"] < N_REPOS for r in results),
        "all_moved_after": sum(r["moved_after"] == N_REPOS for r in results),
        "none_moved_after": sum(r["moved_after"] == 0 for r in results),
        "verify_clean": sum(not r["problems"] for r in results),
        "reruns_ok": f"{sum(r.get('rerun_ok', False) for r in results)}/{sum('rerun_ok' in r for r in results)}",
    }
    _say("kill -9 " + json.dumps(figures))
    return results


@pytest.mark.slow
def test_kill9_lands_across_the_whole_forget(kill_trials):
    """>= 50 random kills really happened, in every phase of the forget; each publish-step kill hit its step."""
    random_kills = [r for r in kill_trials if r["killed"] and r["hook"] is None]
    assert len(random_kills) >= MIN_RANDOM_KILLS
    controls = [r for r in kill_trials if r.get("control")]
    assert controls and all(r["status"] == 0 and r["moved_after"] == N_REPOS for r in controls), controls
    seen = {r["phase"] for r in random_kills}
    assert {"before-publish"} <= seen and seen & {"objects-written", "journal-written", "published"}, seen
    hooked = [r for r in kill_trials if r["hook"] is not None]
    assert len(hooked) == len(PUBLISH_STEPS) and all(r["killed"] for r in hooked), \
        [(r["hook"], r["status"]) for r in hooked if not r["killed"]]
    by_step = {tuple(r["hook"]): r for r in hooked}
    assert by_step[("journal", 1)]["phase"] == "journal-written" and by_step[("journal", 1)]["moved_at_kill"] == 0
    assert by_step[("ref", N_REPOS // 2)]["moved_at_kill"] == N_REPOS // 2  # a half-moved set on disk...
    assert by_step[("sync", 1)]["phase"] == "objects-written"


@pytest.mark.slow
def test_kill9_is_all_or_nothing_after_the_next_command(kill_trials):
    """Every affected head moved to a commit carrying the request (parent = the old head), or none moved; the
    next command leaves no journal behind; a journal found on disk is always rolled forward."""
    for r in kill_trials:
        where = f"trial {r['hook'] or r['delay']} (phase {r['phase']}, {r['moved_at_kill']} moved at the kill)"
        assert r["phase"] != "TORN-WITHOUT-JOURNAL", where
        assert r["moved_after"] in (0, N_REPOS), where
        assert r["bad_new_heads"] == [], where
        assert not r["journal_after"], where
        if r["journal_at_kill"]:
            assert r["moved_after"] == N_REPOS, where
    reruns = [r for r in kill_trials if "rerun_ok" in r]
    assert reruns and all(r["rerun_ok"] for r in reruns)
    assert all(r["rerun_todo"] == (N_REPOS if r["moved_after"] == 0 else 0) for r in reruns)


@pytest.mark.slow
def test_kill9_then_verify_finds_nothing(kill_trials):
    """After each kill the next command's verify is clean.

    BUG (fiun_hub/hub/local.py, LocalHub.publish ~lines 463-464, with fiun_hub/verify.py ~line 48): publish makes
    a commit's snapshot folder (``_make_snapshot``) BEFORE it writes the commit record, and verify checks every
    snapshot folder as a commit. A writer killed between the two leaves ``snapshots/{cid}`` without
    ``.fiun/commits/{cid}.json``: an unreferenced leftover the design allows ("killed before step 3 leaves only
    unreferenced files"), but verify reports it as ``commit <cid>: revision <cid> not found`` and exits 1, for
    ever. Fix: write the commit record first and the snapshot (renamed into place whole) second, so a snapshot
    folder always has its record; and/or have verify skip (or list as garbage, without failing) snapshot folders
    that have no commit record and that no ref or journal names.
    """
    failed = [(r["hook"] or ("control" if r["delay"] is None else round(r["delay"], 3)), r["phase"], r["problems"][:2])
              for r in kill_trials if r["problems"]]
    snapshot_bug = re.compile(r"commit ([0-9a-f]{12}): revision \1[0-9a-f]{28} not found")
    other = [f for f in failed if not all(snapshot_bug.search(p) for p in f[2])]
    assert failed == [], (f"{len(failed)} of {len(kill_trials)} trials left verify problems, "
                          f"{len(failed) - len(other)} of them only record-less snapshots (the bug above); "
                          f"others: {other[:5]}; e.g. {failed[:2]}")
    assert all(r["verify_exit"] == 0 for r in kill_trials)


# ------------------------------------------------------------------------------------------------ 2. readers
ROUNDS = 6


def _writer(root: str, rounds: int, pause_after: int, done: str) -> None:
    """Publishes ``rounds`` whole sets (a NOTES.md in every repo, message "round k"); after the
    ``pause_after``-th ref move of each publish the writer is preempted for 40 ms (a busy box does that)."""
    import fiun_hub.hub.local as L

    original = L.LocalHub._write_ref
    moves = [0]

    def slow_write_ref(self, *a, **k):
        original(self, *a, **k)
        moves[0] += 1
        if moves[0] % N_REPOS == pause_after:
            time.sleep(0.04)

    L.LocalHub._write_ref = slow_write_ref
    hub = LocalHub(root)
    repos = hub.list_repos()
    time.sleep(0.2)  # let the readers start polling
    for k in range(1, rounds + 1):
        hub.publish([RepoChange(r, {"NOTES.md": f"round {k}\n".encode()}, f"round {k}", parent_commit=hub.head(r))
                     for r in repos])
        time.sleep(0.03)
    Path(done).touch()


def _reader(root: str, kind: str, done: str, out: str) -> None:
    from fiun_hub.lineage import resolve

    seen = []
    handle = LocalHub(root)
    repos = handle.list_repos()
    while not os.path.exists(done):
        if kind == "index":  # what lineage, forget's plan and audit read: one file, replaced whole
            g = resolve(LocalHub(root))
            heads = [g.nodes[r]["head"] for r in repos]
        elif kind == "fresh-open":  # a command: open the hub (finishing any journal), then read every ref
            got = LocalHub(root).heads(repos)
            heads = [got[r] for r in repos]
        elif kind == "handle":  # a long-lived LocalHub (a server, a notebook, one long command) reading every ref
            got = handle.heads()
            heads = [got[r] for r in repos]
        else:  # "per-ref": the same handle, one head() call per repo, nothing tying the calls into one read
            heads = [handle.head(r) for r in repos]
        seen.append(heads)
        time.sleep(0.008)
    Path(out).write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def reader_runs(forest, tmp_path_factory):
    work = tmp_path_factory.mktemp("readers")
    root = work / "hub"
    _link_copy(Path(forest["root"]), root)
    done = work / "done"
    kinds = ["index", "fresh-open", "handle", "per-ref"]
    readers = [_fork(_reader, str(root), kind, str(done), str(work / f"{kind}.json")) for kind in kinds]
    writer = _fork(_writer, str(root), ROUNDS, N_REPOS // 2, str(done))
    try:
        assert _wait(writer, 300) == 0
    finally:
        done.touch()  # a failed writer must not leave the readers polling for ever
        statuses = [_wait(p, 120) for p in readers]
    assert statuses == [0] * len(kinds)
    hub = LocalHub(root)
    rounds = {}
    for r in hub.list_repos():
        for info in hub.history(r):
            rounds[info.id] = int(info.message.split()[1]) if info.message.startswith("round ") else 0
    out = {}
    for kind in kinds:
        seen = json.loads((work / f"{kind}.json").read_text())
        torn = [sorted({rounds[h] for h in heads}) for heads in seen if len({rounds[h] for h in heads}) > 1]
        out[kind] = {"polls": len(seen), "torn": len(torn), "examples": torn[:3],
                     "rounds_seen": len({rounds[heads[0]] for heads in seen})}
    _say(f"readers during {ROUNDS} publishes of {N_REPOS}-repo sets: " + "; ".join(
        f"{k}: {v['polls']} polls, {v['rounds_seen']} distinct sets, {v['torn']} half-moved" for k, v in out.items()))
    from fiun_hub.verify import verify

    assert verify(hub) == []
    return out


def test_index_readers_never_see_a_half_moved_set(reader_runs):
    r = reader_runs["index"]
    assert r["polls"] > ROUNDS and r["rounds_seen"] >= 2
    assert r["torn"] == 0, r


def test_ref_readers_never_see_a_half_moved_set(reader_runs):
    """Readers take no lock, and a reader that reads the refs themselves (not the index) must still never see a
    half-moved set: a command that opens the hub and reads every head, and a long-lived LocalHub (a server, a
    notebook, a long command) that keeps reading them while a writer publishes 20-repo sets, paused mid-moves.

    Both read the set with ``LocalHub.heads()``: a seqlock on ``.fiun/generation`` (bumped by every publish
    after its last ref move, before its journal goes) with read-through of the journal (while a journal exists,
    the heads it records as ``old`` are reported). Each poll must be whole, and the handle must still follow the
    writer (see several rounds), so a view frozen at its first read would fail too.

    The fourth reader calls ``head()`` once per repo: each call is exact (it reports the head before a publish
    until that publish lands, at one instant: its journal's removal), but nothing ties 20 separate calls into one
    read, so a poll that straddles that instant mixes two rounds. No lock-free design can avoid that for
    independent calls; it is reported (docs/reliability.md) and not asserted.
    """
    for kind in ("fresh-open", "handle"):
        r = reader_runs[kind]
        assert r["polls"] > ROUNDS and r["rounds_seen"] >= 2, (kind, r)
        assert r["torn"] == 0, \
            f"{kind} reader saw {r['torn']} half-moved sets in {r['polls']} polls, e.g. rounds {r['examples']}"
    assert reader_runs["handle"]["rounds_seen"] >= 3, reader_runs["handle"]  # it follows the writer


# ------------------------------------------------------------------------------------------------ 3. writers
def _concurrent_worker(root: str, role: str, arg, go: str, out: str) -> None:
    """One writer process: waits for ``go``, then does its writes; logs each as acknowledged or refused."""
    from fiun_hub.repo import push_folder
    from fiun_hub.unlearn import plan_forget, run_forget

    torch.set_num_threads(1)
    random.seed(os.getpid())  # forked children share the parent's random state
    hub = LocalHub(root)
    log = []

    def attempt(kind: str, fn: Callable[[], dict[str, str]]) -> bool:
        try:
            revs = fn()
            log.append({"kind": kind, "ok": True, "revisions": revs})
            return True
        except FiunError as exc:
            log.append({"kind": kind, "ok": False, "error": type(exc).__name__, "message": str(exc)})
            return False

    staged = None
    if role == "race":  # read the head before the start, publish after: at most one racer per head wins
        staged = hub.head("c/race")
    elif role == "forget":  # plan from the heads before the start, then run (refused if a head moved)
        staged = plan_forget(hub, [arg["origin"]], arg["classes"], request_id=arg["request"])
    Path(out + ".ready").touch()
    while not os.path.exists(go):
        time.sleep(0.001)
    if role == "push-new":
        for k, (folder, parent) in enumerate(arg):
            repo = f"c/new-{os.getpid()}-{k}"
            attempt("push", lambda: {repo: push_folder(hub, folder, repo, parents=[parent] if parent else [])[
                "revision"]})
    elif role == "push-same":
        for folder in arg:
            attempt("push", lambda: {"c/shared": push_folder(hub, folder, "c/shared")["revision"]})
    elif role == "race":
        attempt("race", lambda: hub.publish([RepoChange("c/race", {"who": str(os.getpid()).encode()},
                                                        f"race by {os.getpid()}", parent_commit=staged)]))
    elif role == "forget":
        plan = staged
        for _ in range(6):
            if attempt("forget", lambda: {r: v["to"] for r, v in run_forget(hub, plan).revisions.items()}):
                break
            time.sleep(random.uniform(0.0, 0.2))
            plan = plan_forget(hub, [arg["origin"]], arg["classes"], request_id=arg["request"])
    Path(out).write_text(json.dumps(log))


def test_concurrent_writers_lose_nothing(forest, tmp_path):
    """10 processes write at once: 3 push two new repos each (one a child of f/m00), 2 push c/shared twice each,
    3 race on c/race with the head they all read before the start, 2 forget over overlapping sub-DAGs (planned
    before the start; a refused forget re-plans). Nothing acknowledged is lost, nothing unacknowledged lands,
    every refusal is a ConflictError naming the repo that moved (or that came to derive from a forget's origin
    while it ran), verify is clean."""
    root = tmp_path / "hub"
    _link_copy(Path(forest["root"]), root)
    hub = LocalHub(root)
    folders = [str(f) for f in forest["folders"]]
    from fiun_hub.repo import push_folder

    push_folder(hub, folders[0], "c/shared")
    # c/race is no model, but it has a card (no parents): forget refuses to plan while a repo's card is missing
    # or malformed, as it cannot tell whether that repo derives from the origin.
    hub.publish([RepoChange("c/race", {"who": b"nobody", CARD_FILE: b"---\ntags: [fiun-hub]\n---\nRace target.\n"})])
    initial = {r: {c.id for c in hub.history(r)} for r in hub.list_repos()}
    sub = forest["repos"][5]  # a sub-DAG that overlaps the whole-forest forget
    roles = (
        [("push-new", [(folders[i % 2], None), (folders[(i + 1) % 2], ORIGIN)]) for i in range(3)]
        + [("push-same", folders), ("push-same", folders[::-1])]
        + [("race", None)] * 3
        + [("forget", {"origin": ORIGIN, "classes": "1", "request": "conc-1"}),
           ("forget", {"origin": sub, "classes": "2", "request": "conc-2"})]
    )
    go = tmp_path / "go"
    t = time.perf_counter()
    pids = [_fork(_concurrent_worker, str(root), role, arg, str(go), str(tmp_path / f"w{i}.json"))
            for i, (role, arg) in enumerate(roles)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"w{i}.json.ready").exists() for i in range(len(roles))):
            assert time.monotonic() < deadline, "the writers did not get ready"
            for i, pid in enumerate(pids):  # a writer that died while getting ready: say so now, not in 120 s
                if not (tmp_path / f"w{i}.json.ready").exists() and os.waitpid(pid, os.WNOHANG)[0]:
                    raise AssertionError(f"writer {i} ({roles[i][0]}) exited before it was ready "
                                         "(its traceback is in the captured stderr)")
            time.sleep(0.01)
        go.touch()  # every racer has read its expected head and every forget has its plan: all go at once
        statuses = [_wait(p, 300) for p in pids]
    finally:
        _reap(pids)
    assert statuses == [0] * len(pids)
    wall = time.perf_counter() - t
    logs = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(len(roles))]
    ops = [op for log in logs for op in log]
    acked = [op for op in ops if op["ok"]]
    refused = [op for op in ops if not op["ok"]]

    hub = LocalHub(root)
    acked_by_repo: dict[str, set[str]] = {}
    for op in acked:
        for repo, rev in op["revisions"].items():
            acked_by_repo.setdefault(repo, set()).add(rev)
    lost, phantom = [], []
    for repo in hub.list_repos():
        history = {c.id for c in hub.history(repo)}
        mine = acked_by_repo.get(repo, set())
        lost += [(repo, rev[:12]) for rev in mine - history]
        phantom += [(repo, rev[:12]) for rev in history - mine - initial.get(repo, set())]
    _say(f"concurrency: {len(roles)} processes, {len(ops)} writes in {wall:.1f}s: {len(acked)} acknowledged "
         f"({sum(len(op['revisions']) for op in acked)} revisions), {len(refused)} refused "
         f"({sorted({op['error'] for op in refused})}), lost {len(lost)}, unacknowledged in history {len(phantom)}")
    assert len(roles) >= 8
    assert lost == [] and phantom == []
    for op in refused:  # a refusal says so, and says which repo moved
        assert op["error"] == "ConflictError" and re.search(r"moved|locked|lineage changed", op["message"]), op
        assert re.search(r"\b[cf]/[\w.-]+", op["message"]), op
    races = [op for op in ops if op["kind"] == "race"]
    assert sum(op["ok"] for op in races) == 1 and len(races) == 3  # one expected head, one winner
    forgets = [op for op in ops if op["kind"] == "forget"]
    assert sum(op["ok"] for op in forgets) == 2, forgets  # each forget landed, after re-planning if refused
    for op in forgets:
        if op["ok"]:
            for repo, rev in op["revisions"].items():
                assert hub.commit_info(repo, rev).message.startswith("Forget")
    pushes = [op for op in ops if op["kind"] == "push"]
    assert sum(op["ok"] for op in pushes) >= 6  # every new repo; the same-repo pushes may conflict
    from fiun_hub.verify import verify

    assert verify(hub) == []
    assert not (root / ".fiun" / "journal.json").exists()


# ------------------------------------------------------------------------------------------------ 4. hostile input
class _Timeout(Exception):
    pass


def _guarded_cli(args: list, seconds: int = 20):
    """The CLI in-process (click's runner), stopped by SIGALRM if it runs longer than ``seconds``."""
    from click.testing import CliRunner

    from fiun_hub_cli.main import main

    def on_alarm(signum, frame):
        raise _Timeout(f"did not finish in {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        res = CliRunner().invoke(main, [str(a) for a in args], env={"FIUN_HUB": None})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    exc = res.exception if res.exception is not None and not isinstance(res.exception, SystemExit) else None
    return res.exit_code, res.stdout, res.stderr, exc


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """h/base -> h/child (real test_resnet weights and sidecars) and a good model folder with sidecars."""
    from fiun_hub.models import save_model_folder
    from fiun_hub.research.scenarios import new_model, sidecar_files, torch_threads

    root = tmp_path_factory.mktemp("hostile")
    built = base_and_child_hub(root, "test_resnet", 60, IN)
    hub, base, child, child_model, data = (built[k] for k in ("hub", "base", "child", "child_model", "data"))
    with torch_threads(1):
        good = save_model_folder(new_model("test_resnet", 10, 1, 3), root / "good", LABELS, input_size=IN)
        sha = hashlib.sha256((good / WEIGHTS_FILE).read_bytes()).hexdigest()
        fim, cls = sidecar_files(new_model("test_resnet", 10, 1, 3), LABELS, data, sha, data_spec="d")
    (good / FIM_FILE).write_bytes(fim)
    (good / FIM_CLASSES_FILE).write_bytes(cls)
    return {"hub": hub.root, "good": good, "base": base, "child": child, "child_model": child_model, "data": data}


@dataclasses.dataclass
class Ctx:
    hub: Path
    tmp: Path
    outside: Path
    good: Path
    base: str
    child: str
    child_model: object
    data: object

    @property
    def h(self) -> LocalHub:
        return LocalHub(self.hub)

    def folder(self, name: str, mutate: Callable[[Path], None] | None = None) -> Path:
        d = self.tmp / name
        shutil.copytree(self.good, d)
        if mutate:
            mutate(d)
        return d

    def header_folder(self, name: str, edit: Callable[[dict], None]) -> Path:
        """The good folder with its weights' safetensors header edited by ``edit``."""
        return self.folder(name, lambda d: (d / WEIGHTS_FILE).write_bytes(
            _edit_header((d / WEIGHTS_FILE).read_bytes(), edit)))

    def card_folder(self, name: str, front: str | bytes, body: bytes = b"# card\n") -> Path:
        front = front.encode() if isinstance(front, str) else front
        return self.folder(name, lambda d: (d / CARD_FILE).write_bytes(b"---\n" + front + b"\n---\n" + body))

    def repo_dir(self, repo: str) -> Path:
        return self.h.repo_dir(repo)

    def blob(self, repo: str, path: str) -> Path:
        return self.h.file_path(repo, path)

    def escape(self, path: Path) -> Path:
        """Move ``path`` out of the hub (same content) and leave a symlink to it in its place."""
        target = self.outside / f"{path.name}-{len(os.listdir(self.outside))}"
        shutil.move(str(path), str(target))
        os.symlink(target, path)
        return target

    def publish(self, repo: str, files: dict, message: str = "hand-made") -> str:
        """Write a revision the way another tool (or an attacker with write access) would: no push checks."""
        h = self.h
        return h.publish([RepoChange(repo, files, message, parent_commit=h.head(repo) if h.repo_exists(repo)
                                     else "")])[repo]

    def child_weights(self, mutate: Callable[[bytes], bytes]) -> None:
        """Replace h/child's weights by ``mutate(weights)`` with sidecars bound to the new bytes."""
        from fiun_hub.research.scenarios import sidecar_files

        weights = mutate(self.h.read_file("h/child", WEIGHTS_FILE))
        fim, cls = sidecar_files(self.child_model, LABELS, self.data, hashlib.sha256(weights).hexdigest(),
                                 data_spec="d")
        self.publish("h/child", {WEIGHTS_FILE: weights, FIM_FILE: fim, FIM_CLASSES_FILE: cls})


def _edit_header(data: bytes, edit: Callable[[dict], None]) -> bytes:
    """A safetensors file whose header was edited by ``edit`` (the data bytes stay where they are)."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) <= n:
        return data[:8] + raw + b" " * (n - len(raw)) + data[8 + n:]
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _retype(name: str, dtype: str) -> Callable[[dict], None]:
    def edit(h):
        h[name]["dtype"] = dtype
    return edit


def _overlap(h: dict) -> None:
    """Point the second of two same-sized tensors at the first one's bytes (a hole is left behind)."""
    sized: dict = {}
    for k, v in h.items():
        if k != "__metadata__" and v["dtype"] == "F32":
            sized.setdefault(v["data_offsets"][1] - v["data_offsets"][0], []).append(k)
    a, b = next(names for names in sized.values() if len(names) >= 2)[:2]
    h[b]["data_offsets"] = list(h[a]["data_offsets"])


def _with_value(path: Path, name: str, value: float) -> None:
    from safetensors.torch import load, save

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(data[8:8 + n]).get("__metadata__")
    tensors = load(data)
    tensors[name][0, 0] = value
    path.write_bytes(save(tensors, metadata=meta))


def _nan_weights(data: bytes) -> bytes:
    from safetensors.torch import load, save

    t = load(data)
    t["layer1.0.conv1.weight"].view(-1)[0] = float("nan")
    return save(t)


def _alias_bomb(depth: int = 9, width: int = 10) -> str:
    lines = ["lol0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"lol{d}: &a{d} [" + ", ".join([f"*a{d - 1}"] * width) + "]" for d in range(1, depth)]
    return "\n".join(lines)


def _devzero(d: Path) -> None:
    (d / WEIGHTS_FILE).unlink()
    os.symlink("/dev/zero", d / WEIGHTS_FILE)


def _cycle(c: Ctx) -> list:
    """c/a <-> c/b: each card pins the other (as a hand-edited hub could hold)."""
    def card(parent: str, rev: str) -> bytes:
        return (f"---\nbase_model: {parent}\nbase_model_relation: finetune\nfiun:\n  parents:\n"
                f"  - {{repo: {parent}, revision: '{rev}'}}\n  labels: [a, b]\n---\n").encode()
    a0 = c.publish("c/a", {CARD_FILE: b"---\nfiun: {labels: [a, b]}\n---\n"})
    b0 = c.publish("c/b", {CARD_FILE: card("c/a", a0)})
    c.publish("c/a", {CARD_FILE: card("c/b", b0)})
    return ["forget", "--origin", "c/a", "--classes", "a"]


def _missing_parent_record(c: Ctx) -> list:
    c.publish("h/base", {"NOTES.md": b"second revision\n"})
    first = c.base
    (c.hub / ".fiun" / "commits" / first[:2] / f"{first}.json").unlink()
    return ["log", "h/base"]


def _npz(c: Ctx, name: str, **arrays) -> str:
    path = c.tmp / f"{name}.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def _nan_npz(c: Ctx) -> list:
    x = np.random.default_rng(0).random((20, 16, 16)).astype(np.float32)
    x[:, 0, 0] = np.nan
    return ["fim", "h/base", "--data", _npz(c, "nan", x=x, y=np.arange(20) % 10)]


def _pickled_npz(c: Ctx) -> list:
    path = c.tmp / "pickled.npz"
    np.savez(path, x=np.array([object(), 1], dtype=object), y=np.array([0, 1]))
    return ["fim", "h/base", "--data", f"npz:{path}"]


def _config_mismatch(c: Ctx, repo: str) -> None:
    cfg = json.loads(c.h.read_file(repo, CONFIG_FILE))
    cfg["num_classes"] = 4
    cfg["label_names"] = ["a", "b", "c", "d"]
    c.publish(repo, {CONFIG_FILE: json.dumps(cfg).encode()})


def _relabel_config(d: Path) -> None:
    cfg = json.loads((d / CONFIG_FILE).read_text())
    cfg["label_names"] = [f"class-{v}" for v in cfg["label_names"]]
    (d / CONFIG_FILE).write_text(json.dumps(cfg))


def _snapshot_link_outside(c: Ctx) -> list:
    """The snapshot entry config.json of h/base points at a file outside the hub (same bytes)."""
    entry = c.repo_dir("h/base") / "snapshots" / c.base / CONFIG_FILE
    (c.outside / CONFIG_FILE).write_bytes(entry.read_bytes())
    entry.unlink()
    os.symlink(c.outside / CONFIG_FILE, entry)
    return ["verify"]


def _refs_main_symlink(c: Ctx, repo: str = "h/base") -> None:
    c.escape(c.repo_dir(repo) / "refs" / "main")


# ---- round two (issue 12, items 1-11)
def _link_card_to(target: str) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        (d / CARD_FILE).unlink(missing_ok=True)
        os.symlink(target, d / CARD_FILE)
    return mutate


def _fifo_at(name: str) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        (d / name).unlink(missing_ok=True)
        os.mkfifo(d / name)
    return mutate


def _edit_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        cfg = json.loads((d / CONFIG_FILE).read_text())
        edit(cfg)
        (d / CONFIG_FILE).write_text(json.dumps(cfg))
    return mutate


def _local_dir_arch(c: Ctx) -> Callable[[dict], None]:
    """``local-dir:`` at a folder holding a timm config (the good folder itself): timm would read it and build
    what it names, whatever the model_args check allowed."""
    def edit(cfg: dict) -> None:
        cfg["architecture"] = f"local-dir:{c.good}"
    return edit


def _deep_header_folder(c: Ctx) -> Path:
    """model.safetensors whose header nests 100,000 arrays (the bytes after it unchanged)."""
    def mutate(d: Path) -> None:
        data = (d / WEIGHTS_FILE).read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        raw = json.dumps(header, separators=(",", ":"))[:-1] + ',"deep":' + "[" * 100_000 + "]" * 100_000 + "}"
        (d / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(raw)) + raw.encode() + data[8 + n:])
    return c.folder("deep-header", mutate)


def _request(c: Ctx, name: str, text: str | None = None, **fields) -> Path:
    base = {"id": "TKD-H-1", "reason": "erasure", "requested_by": "dpo@example.org", "received": "2026-11-20",
            "origins": "[h/base]", "forget": "{classes: ['3']}"}
    base.update(fields)
    path = c.tmp / f"{name}.yaml"
    path.write_text(text if text is not None else "".join(f"{k}: {v}\n" for k, v in base.items()))
    return path


def _request_fifo(c: Ctx) -> list:
    path = c.tmp / "request.fifo"
    os.mkfifo(path)
    return ["takedown", path]


def _npz_spec(c: Ctx, name: str, x, y, **more) -> list:
    return ["fim", "h/base", "--data", _npz(c, name, x=x, y=y, **more)]


def _image_folder(c: Ctx, name: str, modes: list[str], fifo: bool = False) -> list:
    from PIL import Image

    root = c.tmp / name
    for i, mode in enumerate(modes):
        d = root / str(i)
        d.mkdir(parents=True)
        for j in range(3):
            im = Image.new("L", (8, 8), color=40 * j + i).convert(mode)
            im.save(d / f"{j}.png")
    if fifo:
        os.mkfifo(root / "0" / "zz.png")
    return ["fim", "h/base", "--data", f"folder:{root}"]


def _bad_record_in_index(c: Ctx) -> list:
    """The index holds a record with from_revision: 5 (what serve used to store in a card)."""
    path = c.hub / ".fiun" / "lineage.json"
    index = json.loads(path.read_text())
    index["repos"]["h/base"]["unlearned"] = [{"request": "R1", "from_revision": 5}]
    path.write_text(json.dumps(index))
    return ["lineage", "--check"]


def _index_entry_wrong_type(c: Ctx, command: list) -> list:
    path = c.hub / ".fiun" / "lineage.json"
    index = json.loads(path.read_text())
    index["repos"]["h/child"] = ["not", "an", "entry"]
    path.write_text(json.dumps(index))
    return command


def _damaged_journal(c: Ctx, body: object, command: list) -> list:
    (c.hub / ".fiun" / "journal.json").write_text(json.dumps(body))
    return command


def _commit_record_without(c: Ctx, key: str, command: list) -> list:
    path = c.hub / ".fiun" / "commits" / c.base[:2] / f"{c.base}.json"
    record = json.loads(path.read_text())
    del record[key]
    path.write_text(json.dumps(record))
    return command


def _card_near_limit(c: Ctx) -> list:
    """h/child's card one record short of 1 MiB: the forget's record would push it past what fiun-hub reads."""
    from fiun_hub.card import MAX_CARD_BYTES

    card = c.h.read_file("h/child", CARD_FILE)
    pad = MAX_CARD_BYTES - len(card) - 100
    c.publish("h/child", {CARD_FILE: card + b"x" * pad + b"\n"})
    return ["forget", "--origin", "h/base", "--classes", "3"]


HOSTILE_ROUND_TWO: dict[str, tuple[Callable[[Ctx], list], int, str, str]] = {
    # 1. files that are links out of the model folder, or not regular files
    "push-card-linked-to-proc-environ": (lambda c: ["push", c.folder("environ", _link_card_to("/proc/self/environ")),
                                                    "h/new"], 2, r"symlink .*outside", CARD_FILE),
    "push-card-linked-outside-the-folder": (lambda c: ((c.outside / "notes.md").write_text("private\n"), [
        "push", c.folder("outlink", _link_card_to(str(c.outside / "notes.md"))), "h/new"])[1],
        2, r"symlink .*outside", CARD_FILE),
    "push-card-a-fifo": (lambda c: ["push", c.folder("fifo-card", _fifo_at(CARD_FILE)), "h/new"],
                         2, r"not a regular file", CARD_FILE),
    "push-sidecar-a-fifo": (lambda c: ["push", c.folder("fifo-fim", _fifo_at(FIM_FILE)), "h/new"],
                            2, r"not a regular file", FIM_FILE),
    # 2. architectures timm does not register locally
    "push-config-architecture-local-dir": (lambda c: ["push", c.folder("localdir", _edit_config(_local_dir_arch(c))),
                                                      "h/new"], 2, r"not a model timm registers", "local-dir:"),
    "push-config-architecture-hf-hub": (lambda c: ["push", c.folder("hfhub", _edit_config(
        lambda cfg: cfg.update(architecture="hf-hub:timm/resnet18.a1_in1k"))), "h/new"],
        2, r"not a model timm registers", "hf-hub:"),
    "eval-config-architecture-local-dir-in-hub": (lambda c: (c.publish("h/child", {CONFIG_FILE: json.dumps(
        {**json.loads(c.h.read_file("h/child", CONFIG_FILE)), "architecture": f"local-dir:{c.good}"}).encode()}),
        ["eval", "h/child", "--data", "digits:test"])[1], 2, r"not a model timm registers", "h/child"),
    # 4. the ledger and the branch name are nobody's to write
    "push-into-the-ledger": (lambda c: ["push", c.good, "fiun-hub/ledger"], 2, r"takedown ledger", "fiun-hub/ledger"),
    "tag-main": (lambda c: ["tag", "h/base", "main"], 2, r"main is the branch", "main"),
    # 5. ill-typed and deeply nested JSON
    "push-config-input-size-a-string": (lambda c: ["push", c.folder("insize", _edit_config(
        lambda cfg: cfg["pretrained_cfg"].update(input_size="big"))), "h/new"], 2, r"input_size", CONFIG_FILE),
    "push-config-in-chans-a-string": (lambda c: ["push", c.folder("inchans", _edit_config(
        lambda cfg: cfg.update(model_args={"in_chans": "one"}))), "h/new"], 2, r"in_chans", CONFIG_FILE),
    "push-config-classifier-a-number": (lambda c: ["push", c.folder("clf", _edit_config(
        lambda cfg: cfg["pretrained_cfg"].update(classifier=7))), "h/new"], 2, r"classifier", CONFIG_FILE),
    "push-config-nested-100k": (lambda c: ["push", c.folder("deepcfg", lambda d: (d / CONFIG_FILE).write_text(
        "[" * 100_000 + "]" * 100_000)), "h/new"], 2, r"nested too deeply", CONFIG_FILE),
    "push-weights-header-nested-100k": (lambda c: ["push", _deep_header_folder(c), "h/new"],
                                        2, r"nested too deeply", WEIGHTS_FILE),
    # 6. label lists from untrusted integers, bounded before they are built
    "push-config-a-billion-classes": (lambda c: ["push", c.folder("billion", _edit_config(
        lambda cfg: (cfg.pop("label_names"), cfg.update(num_classes=10 ** 9)))), "h/new"],
        2, r"num_classes", CONFIG_FILE),
    "fim-npz-label-10-to-the-12": (lambda c: _npz_spec(c, "huge-y", np.zeros((4, 8, 8), np.float32),
                                                       np.array([0, 1, 2, 10 ** 12])), 2, r"outside 0\.\.", "huge-y.npz"),
    # 7. request files
    "takedown-request-impossible-date": (lambda c: ["takedown", _request(c, "feb30", received="2026-02-30")],
                                         2, r"malformed YAML value|date", "feb30.yaml"),
    "takedown-request-month-13": (lambda c: ["takedown", _request(c, "m13", received="2026-13-45")],
                                  2, r"malformed YAML value|date", "m13.yaml"),
    "takedown-request-5000-digit-int": (lambda c: ["takedown", _request(c, "bigint", id="1" * 5000)],
                                        2, r"malformed YAML value|id must be", "bigint.yaml"),
    "takedown-request-date-time-out-of-range": (lambda c: ["takedown", _request(
        c, "range", received="0001-01-01T00:00:00+05:00")], 2, r"outside the dates", "range.yaml"),
    "takedown-request-alias-bomb-in-notes": (lambda c: ["takedown", _request(
        c, "bomb", text=_alias_bomb() + "\nid: TKD-B\nreason: r\nrequested_by: x\nreceived: 2026-11-20\n"
        "origins: [h/base]\nforget: {classes: ['3']}\nnotes: *a8\n")], 2, r"aliases", "bomb.yaml"),
    "takedown-request-dev-zero": (lambda c: ["takedown", "/dev/zero"], 2, r"not a regular file", "/dev/zero"),
    "takedown-request-a-fifo": (_request_fifo, 2, r"not a regular file", "request.fifo"),
    # 8. data specs
    "fim-npz-string-images": (lambda c: _npz_spec(c, "strx", np.array([["a"] * 8] * 8 * 4).reshape(4, 8, 8),
                                                  np.arange(4)), 2, r"must hold numbers", "strx.npz"),
    "fim-npz-datetime-images": (lambda c: _npz_spec(c, "datex", np.zeros((4, 8, 8), "datetime64[s]"), np.arange(4)),
                                2, r"must hold numbers", "datex.npz"),
    "fim-npz-empty-images": (lambda c: _npz_spec(c, "empty", np.zeros((4, 0, 0), np.float32), np.arange(4)),
                             2, r"no empty side", "empty.npz"),
    "fim-npz-duplicate-label-names": (lambda c: _npz_spec(c, "dup", np.zeros((4, 8, 8), np.float32), np.arange(4),
                                                          labels=np.array(["0", "1", "1", "2"])),
                                      2, r"twice", "dup.npz"),
    "eval-folder-grayscale-rgb-and-palette": (lambda c: ["eval", "h/base", "--data", _image_folder(
        c, "mixed", ["L", "RGB", "P"])[-1]], 0, r"accuracy", "accuracy"),
    "fim-folder-fifo-named-png": (lambda c: _image_folder(c, "fifo-img", ["L", "L"], fifo=True),
                                  2, r"not a regular file", "zz.png"),
    # 9. ill-typed forget records
    "push-card-record-from-revision-an-int": (lambda c: ["push", c.card_folder(
        "rec-int", "fiun: {unlearned: [{request: R1, from_revision: 5}]}"), "h/new"], 2, r"from_revision", "R1"),
    "lineage-check-ill-typed-record-in-index": (_bad_record_in_index, 0, r"lineage ok|h/child", "repos|h/child"),
    # 10. request ids, and cards fiun-hub could not read back
    "forget-request-id-overlong": (lambda c: ["forget", "--origin", "h/base", "--classes", "3", "--request-id",
                                              "r" * 130_000], 2, r"invalid --request-id", "rrrr"),
    "forget-request-id-with-slash": (lambda c: ["forget", "--origin", "h/base", "--classes", "3", "--request-id",
                                                "../x"], 2, r"invalid --request-id", "../x"),
    "forget-card-would-pass-the-size-limit": (_card_near_limit, 2, r"would be \d+ bytes", "h/child"),
    # 11. damaged journal, commit records, index entries
    "verify-journal-a-list": (lambda c: _damaged_journal(c, [], ["verify"]), 1, r"journal\.json is damaged", "journal"),
    "verify-journal-move-missing-key": (lambda c: _damaged_journal(c, {"moves": [{"repo": "h/base"}]}, ["verify"]),
                                        1, r"journal\.json is damaged", "journal"),
    "show-with-a-damaged-journal": (lambda c: _damaged_journal(c, {"moves": [{"repo": "h/base"}]}, ["show", "h/base"]),
                                    0, r"h/base", "h/base"),
    "push-with-a-damaged-journal": (lambda c: _damaged_journal(c, [], ["push", c.good, "h/new"]),
                                    2, r"journal\.json is damaged", "journal"),
    "show-commit-record-missing-a-key": (lambda c: _commit_record_without(c, "message", ["show", f"h/base@{c.base}"]),
                                         2, r"damaged", "h/base"),
    "log-commit-record-missing-a-key": (lambda c: _commit_record_without(c, "files", ["log", "h/base"]),
                                        2, r"damaged", "h/base"),
    "verify-commit-record-missing-a-key": (lambda c: _commit_record_without(c, "parents", ["verify"]),
                                           1, r"damaged", "h/base"),
    "lineage-index-entry-a-list": (lambda c: _index_entry_wrong_type(c, ["lineage"]), 0, r"h/child", "h/child"),
    "forget-dry-run-index-entry-a-list": (lambda c: _index_entry_wrong_type(
        c, ["forget", "--origin", "h/base", "--classes", "3", "--dry-run"]), 0, r"h/child", "h/child"),
    "verify-index-entry-a-list": (lambda c: _index_entry_wrong_type(c, ["verify"]), 1, r"index", "lineage.json"),
}


# id -> (setup(ctx) -> args after `--hub HUB`, exit code, what the line must match, where it must name).
# "where" may use {folder} (the case's folder), {outside} (the folder outside the hub).
HOSTILE: dict[str, tuple[Callable[[Ctx], list], int, str, str]] = {
    # ---- push: hostile cards in the folder
    "push-card-2mb": (lambda c: ["push", c.card_folder("big", "license: mit", b"x" * (2 << 20)), "h/new"],
                      2, r"card is \d+ bytes", "{folder}"),
    "push-card-nested-300": (lambda c: ["push", c.card_folder("deep", "x: " + "[" * 300 + "]" * 300), "h/new"],
                              2, r"nested too deeply", "{folder}"),
    "push-card-yaml-alias-bomb": (lambda c: ["push", c.card_folder("bomb", _alias_bomb()), "h/new"],
                                  2, r"alias|expan|too (large|big|many|deep)|nested", "{folder}"),
    "push-card-python-tag": (lambda c: ["push", c.card_folder(
        "pytag", f"x: !!python/object/apply:os.system ['touch {c.outside}/PWNED']"), "h/new"],
        2, r"malformed card front matter", "{folder}"),
    "push-card-binary-tag": (lambda c: ["push", c.card_folder("binary", "x: !!binary aGVsbG8="), "h/new"],
                             2, r"bytes value|not plain data", "{folder}"),
    "push-card-parents-a-string": (lambda c: ["push", c.card_folder("p-str", "fiun: {parents: h/base}"), "h/new"],
                                   2, r"fiun\.parents", "{folder}"),
    "push-card-labels-an-int": (lambda c: ["push", c.card_folder("l-int", "fiun: {labels: 5}"), "h/new"],
                                2, r"fiun\.labels", "{folder}"),
    "push-card-unlearned-ints": (lambda c: ["push", c.card_folder("u-int", "fiun: {unlearned: [1, 2]}"), "h/new"],
                                 2, r"fiun\.unlearned", "{folder}"),
    "push-card-base-model-a-mapping": (lambda c: ["push", c.card_folder("bm-map", "base_model: {repo: h/base}"),
                                                  "h/new"], 2, r"base_model", "{folder}"),
    "push-card-not-utf8": (lambda c: ["push", c.card_folder("latin1", b"license: \xe9\xff"), "h/new"],
                           2, r"UTF-8", "{folder}"),
    # ---- push: lying or poisoned safetensors
    "push-weights-dtype-size-lie": (lambda c: ["push", c.header_folder("f16", _retype("fc.weight", "F16")), "h/new"],
                                    2, r"size disagrees|dtype", "fc.weight"),
    "push-weights-dtype-relabel-same-size": (lambda c: ["push", c.header_folder("i32", _retype("fc.weight", "I32")),
                                                        "h/new"], 2, r"dtype|I32|int", "fc.weight"),
    "push-weights-overlapping-offsets": (lambda c: ["push", c.header_folder("overlap", _overlap), "h/new"],
                                         2, r"overlap|offset", WEIGHTS_FILE),
    "push-weights-nan": (lambda c: ["push", c.folder("nan", lambda d: (d / WEIGHTS_FILE).write_bytes(
        _nan_weights((d / WEIGHTS_FILE).read_bytes()))), "h/new"], 2, r"NaN|non-finite", WEIGHTS_FILE),
    "push-weights-symlink-to-dev-zero": (lambda c: ["push", c.folder("devzero", _devzero), "h/new"],
                                         2, r"no model\.safetensors|symlink .*outside", "{folder}"),
    "push-sidecar-inf": (lambda c: ["push", c.folder("inf", lambda d: _with_value(d / FIM_FILE, "fc.weight",
                                                                                  float("inf"))), "h/new"],
                         2, r"non-finite", FIM_FILE),
    "push-sidecar-negative": (lambda c: ["push", c.folder("neg", lambda d: _with_value(d / FIM_FILE, "fc.weight",
                                                                                       -1.0)), "h/new"],
                              2, r"negative", FIM_FILE),
    "push-sidecar-without-partner": (lambda c: ["push", c.folder("lone", lambda d: (d / FIM_CLASSES_FILE).unlink()),
                                                "h/new"], 2, r"partner", "{folder}"),
    "push-sidecar-truncated": (lambda c: ["push", c.folder("trunc", lambda d: (d / FIM_FILE).write_bytes(
        (d / FIM_FILE).read_bytes()[:-40])), "h/new"], 2, r"truncated|not a valid safetensors|corrupt", FIM_FILE),
    "push-sidecar-labels-of-another-model": (lambda c: ["push", c.folder("relabel", _relabel_config), "h/new"],
                                             2, r"sidecar labels .* differ", "{folder}"),
    # ---- push: ids, revisions, symlinks out of the hub
    "push-id-unicode": (lambda c: ["push", c.good, "h/na\u00efve"], 2, r"invalid repo id", "h/na"),
    "push-id-overlong": (lambda c: ["push", c.good, "h/" + "a" * 97], 2, r"invalid repo id", "h/aaaa"),
    "push-parent-unknown-tag": (lambda c: ["push", c.good, "h/new", "--parent", "h/base@tags/nope"],
                                2, r"not found", "h/base"),
    "push-into-a-blobs-folder-linked-outside": (
        lambda c: (c.escape(c.repo_dir("h/base") / "blobs"), ["push", c.good, "h/base"])[1],
        2, r"symlink|outside", "h/base"),
    # ---- show / log
    "show-refs-main-linked-outside": (lambda c: (_refs_main_symlink(c), ["show", "h/base"])[1],
                                      2, r"symlink|outside", "h/base"),
    "show-repo-folder-linked-outside": (lambda c: (c.escape(c.repo_dir("h/base")), ["show", "h/base"])[1],
                                        2, r"symlink|outside", "h/base"),
    "show-refs-main-garbage": (lambda c: ((c.repo_dir("h/base") / "refs" / "main").write_text("not a commit"),
                                          ["show", "h/base"])[1], 2, r"not found|not a commit", "h/base"),
    "show-41-hex-revision": (lambda c: ["show", "h/base@" + "a" * 41], 2, r"not found", "h/base"),
    "show-commit-of-another-repo": (lambda c: ["show", f"h/child@{c.base}"], 2, r"not found|does not belong",
                                    "h/child"),
    "log-parent-commit-record-missing": (_missing_parent_record, 2, r"unreadable|not found", "h/base"),
    # ---- fim
    "fim-weights-blob-linked-outside": (lambda c: (c.escape(c.blob("h/base", WEIGHTS_FILE)),
                                                   ["fim", "h/base", "--data", "digits:train"])[1],
                                        2, r"missing|symlink|outside", "h/base"),
    "fim-nan-in-data": (_nan_npz, 2, r"non-finite|NaN", "h/base|nan.npz"),
    "fim-pickled-npz": (_pickled_npz, 2, r"cannot read npz", "pickled.npz"),
    "fim-config-does-not-fit-weights": (lambda c: (_config_mismatch(c, "h/base"),
                                                   ["fim", "h/base", "--data", "digits:train"])[1],
                                        2, r"do not fit", "h/base"),
    # ---- forget
    "forget-cycle-in-hand-made-cards": (_cycle, 2, r"cycle", "c/a"),
    "forget-descendant-card-wrong-types": (lambda c: (c.publish("h/child", {CARD_FILE: (
        f"---\nbase_model: h/base\nbase_model_relation: finetune\nfiun:\n  parents: [{{repo: h/base, revision: "
        f"'{c.base}'}}]\n  labels: 5\n---\n").encode()}), ["forget", "--origin", "h/base", "--classes", "3"])[1],
        2, r"fiun\.labels", "h/child"),
    "forget-sidecar-blob-linked-outside": (lambda c: (c.escape(c.blob("h/child", FIM_FILE)),
                                                      ["forget", "--origin", "h/base", "--classes", "3"])[1],
                                           2, r"missing|symlink|outside", "h/child"),
    "forget-weights-dtype-relabel-in-hub": (lambda c: (c.child_weights(
        lambda w: _edit_header(w, _retype("fc.weight", "I32"))), ["forget", "--origin", "h/base", "--classes", "3"])[1],
        2, r"dtype|I32|int", "h/child"),
    "forget-lambda-inf": (lambda c: ["forget", "--origin", "h/base", "--classes", "3", "--lambda", "inf"],
                          2, r"lambda", "inf"),
    "forget-alpha-nan": (lambda c: ["forget", "--origin", "h/base", "--classes", "3", "--alpha", "nan"],
                         2, r"alpha", "nan"),
    "forget-origin-with-revision": (lambda c: ["forget", "--origin", f"h/base@{c.base[:8]}", "--classes", "3"],
                                    2, r"invalid repo id", "h/base@"),
    # ---- eval
    "eval-unknown-revision": (lambda c: ["eval", "h/base@deadbee", "--data", "digits:test"], 2, r"not found",
                              "h/base"),
    "eval-nan-weights-in-hub": (lambda c: (c.child_weights(_nan_weights),
                                           ["eval", "h/child", "--data", "digits:test"])[1],
                                2, r"NaN or Inf", "h/child"),
    "eval-truncated-weights-in-hub": (lambda c: (c.publish("h/child", {WEIGHTS_FILE: c.h.read_file(
        "h/child", WEIGHTS_FILE)[:-4096]}), ["eval", "h/child", "--data", "digits:test"])[1],
        2, r"truncated|runs past|exceeds", "h/child"),
    "eval-config-does-not-fit-weights": (lambda c: (_config_mismatch(c, "h/child"),
                                                    ["eval", "h/child", "--data", "digits:test"])[1],
                                         2, r"do not fit", "h/child"),
    # ---- lineage
    "lineage-output-in-missing-folder": (lambda c: ["lineage", "--format", "dot", "-o", c.tmp / "no" / "dag.dot"],
                                         2, r"No such file|cannot write|does not exist", "dag.dot"),
    "lineage-png-in-missing-folder": (lambda c: ["lineage", "--format", "png", "-o", c.tmp / "no" / "dag.png"],
                                      2, r"No such file|cannot write|does not exist", "dag.png"),
    "lineage-bad-id": (lambda c: ["lineage", "h/../x", "--up"], 2, r"invalid repo id|not found", "h/../x"),
    # ---- verify: findings, exit 1
    "verify-blob-linked-outside": (lambda c: (c.escape(c.blob("h/base", WEIGHTS_FILE)), ["verify"])[1],
                                   1, r"not a regular file", "h/base"),
    "verify-snapshot-link-outside": (_snapshot_link_outside, 1, r"links to the wrong blob|outside", "h/base"),
    "verify-corrupt-blob": (lambda c: (os.chmod(c.blob("h/child", CONFIG_FILE), 0o644), c.blob(
        "h/child", CONFIG_FILE).write_bytes(b"{}"), ["verify"])[2], 1, r"corrupt", "h/child"),
    "verify-head-commit-record-missing": (lambda c: ((c.hub / ".fiun" / "commits" / c.child[:2] / f"{c.child}.json")
                                                     .unlink(), ["verify"])[1], 1, r"unknown commit", "h/child"),
    "verify-refs-main-linked-outside": (lambda c: (_refs_main_symlink(c), ["verify"])[1], 1, r"symlink|outside",
                                        "h/base"),
    "verify-repo-folder-linked-outside": (lambda c: (c.escape(c.repo_dir("h/base")), ["verify"])[1],
                                          1, r"symlink|outside", "h/base"),
    "verify-blobs-folder-linked-outside": (lambda c: (c.escape(c.repo_dir("h/base") / "blobs"), ["verify"])[1],
                                           1, r"symlink|outside", "h/base"),
}

HOSTILE.update(HOSTILE_ROUND_TWO)
COMMANDS = {"push", "show", "log", "fim", "forget", "eval", "lineage", "verify", "tag", "takedown"}

# Why the cases that fail today fail: what the lead needs to fix (shown with the assertion).
HOSTILE_BUGS = {
    "push-card-yaml-alias-bomb": (
        "fiun_hub/card.py _plain (~line 126, called by meta_from_dict ~141) rebuilds every occurrence of a YAML "
        "alias, so this 1 KB card (9 levels of 10 aliases) expands to 10^9 nodes: push hangs (and so does every "
        "command indexing such a card in a hub). Fix: a node budget in _plain (e.g. 100_000 nodes in all -> "
        "CardError 'card front matter is too large once YAML aliases are expanded'), or refuse aliases on load"),
    "push-weights-dtype-relabel-same-size": (
        "fiun_hub/models.py check_folder (~line 160-185) compares tensor names and shapes with the config's model, "
        "not dtypes: fc.weight relabelled F32 -> I32 (same size) is committed, and load_state_dict later casts the "
        "int32 reading of float bytes without a word (eval exits 0). Fix: require each header dtype to equal the "
        "model parameter's dtype in check_folder (and in models.load_state)"),
    "push-weights-overlapping-offsets": (
        "fiun_hub/safetensors_io.py parse_header (~lines 67-87) checks each tensor's size and that the largest end "
        "is the data size, not that the ranges tile the data: two tensors sharing bytes pass push and fail only "
        "when safetensors loads the blob (eval: 'invalid offset'). Fix: sort the ranges and require each start to "
        "be the previous end, from 0"),
    "push-weights-nan": (
        "fiun_hub/models.py check_folder (~line 160) reads only the header, so NaN/Inf weights are committed "
        "(models.load_state refuses them only when loading). Fix: load the tensors in push (safetensors) and refuse "
        "non-finite floating values, naming the tensor"),
    "fim-nan-in-data": (
        "fiun_hub/sidecars.py compute_and_commit (~lines 65-75): NaN in the data gives a NaN FIM that sidecar_bytes "
        "refuses as 'fim.safetensors: fc.weight holds 960 non-finite value(s)', naming neither the repo nor the "
        "data. Fix: refuse non-finite data (DataSpecError naming the spec) and pass where=repo to the encoder"),
    "forget-descendant-card-wrong-types": (
        "fiun_hub/lineage.py index_entry (~line 52-71) keeps a malformed card as card_error WITHOUT parents, so "
        "the repo has no edge, and fiun_hub/unlearn.py plan_forget (~line 120-142) only reports card errors of "
        "repos already in the affected set: the forget lands on h/base alone (exit 0) and silently skips its "
        "child. Fix: plan_forget refuses while any repo has a card_error (its parents, hence whether it derives "
        "from the origin, are unknown), naming it"),
    "forget-weights-dtype-relabel-in-hub": (
        "fiun_hub/unlearn.py unlearn_node (~line 235-260) reads the unlearnable tensors with whatever dtype the "
        "header claims (I32 here) and 'dampens' them; the forget lands (exit 0). Fix: refuse non-floating "
        "unlearnable tensors (or a dtype other than the sidecar's/model's) in plan_forget, naming repo and tensor"),
    "lineage-output-in-missing-folder": (
        "cli/main.py lineage (~lines 223 and 229): open(output) and lineage.to_png raise OSError, which "
        "`handled` does not map: a traceback and exit 1. Fix: catch OSError there (or in `handled`) and raise "
        "BadInput(f'cannot write {output}: {exc.strerror}')"),
    "lineage-png-in-missing-folder": "same as lineage-output-in-missing-folder (cli/main.py lineage, to_png)",
    "verify-head-commit-record-missing": (
        "fiun_hub/verify.py verify (~line 72): rebuild_index(hub) raises RevisionNotFound for a repo whose head "
        "commit record is gone, so verify aborts with exit 2 instead of listing 'h/child: branch main points at "
        "unknown commit ...' and exiting 1. Fix: rebuild the index per repo under try/except, reporting failures"),
}


def test_hostile_table_covers_every_command():
    used = {case.split("-")[0] for case in HOSTILE}
    assert used >= COMMANDS and len(HOSTILE) >= 30, (sorted(used), len(HOSTILE))


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_one_line_and_hub_unchanged(small, tmp_path, case):
    setup, code, what, where = HOSTILE[case]
    ctx = Ctx(tmp_path / "hub", tmp_path / "work", tmp_path / "outside", small["good"], small["base"],
              small["child"], small["child_model"], small["data"])
    ctx.tmp.mkdir()
    ctx.outside.mkdir()
    shutil.copytree(small["hub"], ctx.hub, symlinks=True)  # a real copy: cases corrupt files in place
    args = setup(ctx)
    folder = next((str(a) for a in args if isinstance(a, Path) and str(a).startswith(str(ctx.tmp))), "")
    where = where.format(folder=folder, outside=ctx.outside)
    before, outside_before = fingerprint(ctx.hub), fingerprint(ctx.outside)
    result = _guarded_cli(["--hub", ctx.hub, *args], 3 if "bomb" in case else 30)
    try:
        _check_hostile(ctx, case, code, what, where, result, before, outside_before)
    except AssertionError as exc:
        if case in HOSTILE_BUGS:
            raise AssertionError(f"{exc}\nBUG: {HOSTILE_BUGS[case]}") from None
        raise


def _check_hostile(ctx: Ctx, case: str, code: int, what: str, where: str, result, before, outside_before) -> None:
    exit_code, out, err, exc = result
    assert not isinstance(exc, _Timeout), f"{case}: {exc}"
    assert exc is None, f"{case}: uncaught {type(exc).__name__}: {exc}"
    assert "Traceback" not in out + err
    assert exit_code == code, (case, exit_code, out[-500:], err)
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fiun-hub: error: "), err
        line = lines[0]
    else:
        hits = [ln for ln in out.splitlines() if re.search(what, ln)]
        assert hits, out
        line = hits[0]
    assert re.search(what, line), (case, line)
    assert any(w in line for w in where.split("|")), (case, where, line)
    assert fingerprint(ctx.hub) == before, f"{case}: the hub changed"
    assert fingerprint(ctx.outside) == outside_before, f"{case}: files outside the hub changed"
    assert not (ctx.outside / "PWNED").exists()


def test_forget_keeps_a_card_with_an_unpinned_parent_readable(small, tmp_path):
    """A card written by another tool names its parent by ``base_model`` only (no ``fiun.parents`` pin): the
    resolver accepts it as an unpinned edge, so a forget at the parent reaches the child. The child's new card
    must still parse, or the child drops out of the lineage (later forgets skip it, audit cannot see its record).

    BUG (fiun_hub/card.py, meta_to_dict ~line 206): unpinned parents (``ParentRef(repo, "")``) are written into
    ``fiun.parents`` as ``{repo: h/base, revision: ''}``, which meta_from_dict (~line 165) refuses ("revision of
    h/base must be a 40-hex commit id, got ''"). Every rewrite of such a card (forget's run_forget, fim's
    compute_and_commit) turns a readable card into an unreadable one. Fix: write only pinned parents into
    ``fiun.parents`` (unpinned ones stay in ``base_model``), or accept ``revision: ''`` as "unpinned" on read.
    The hypothesis property test below finds the same with ``base_model: 'h/base'``.
    """
    from fiun_hub.lineage import resolve

    root = tmp_path / "hub"
    shutil.copytree(small["hub"], root, symlinks=True)
    hub = LocalHub(root)
    card = (b"---\nbase_model: h/base\nlicense: mit\nfiun:\n  labels: [" + ", ".join(f"'{x}'" for x in LABELS).encode()
            + b"]\n---\nA card written by another tool.\n")
    hub.publish([RepoChange("h/child", {CARD_FILE: card}, "card by another tool", parent_commit=hub.head("h/child"))])
    assert ("h/base", "h/child") in resolve(hub).edges
    code, out, err, exc = _guarded_cli(["--hub", root, "forget", "--origin", "h/base", "--classes", "3"])
    assert exc is None and code == 0, (code, err, exc)
    g = resolve(LocalHub(root), rebuild=True)
    assert g.nodes["h/child"]["card_error"] is None, g.nodes["h/child"]["card_error"]
    assert ("h/base", "h/child") in g.edges


def test_takedown_forgets_a_repo_whose_card_only_claims_the_request(small, tmp_path):
    """Records in cards are claims (issue 12 item 3). h/child's card claims request TKD-C (a well-formed record,
    as any writer can publish) although its weights never forgot anything. `takedown TKD-C` at h/base must really
    forget h/child (new weights, a ledger entry of fiun-hub's own forget with their sha256), not only record the
    claim, and the audit then holds on the ledger's proof."""
    from fiun_hub.card import parse_card_full, render_card
    from fiun_hub.compliance import ledger_record

    root = tmp_path / "hub"
    shutil.copytree(small["hub"], root, symlinks=True)
    hub = LocalHub(root)
    head = hub.head("h/child")
    meta, body = parse_card_full(hub.read_file("h/child", CARD_FILE))
    meta.unlearned = [{"request": "TKD-C", "classes": ["3"], "origins": [f"h/base@{small['base']}"],
                       "from_revision": head, "alpha": 1.0, "lambda": 1.0, "at": "2026-11-22T10:00:00Z"}]
    claimed = hub.publish([RepoChange("h/child", {CARD_FILE: render_card(meta, body, "h/child").encode()}, "claim",
                                      parent_commit=head)])["h/child"]
    claimed_weights = hub.list_files("h/child", claimed)[WEIGHTS_FILE]
    request = tmp_path / "tkd-c.yaml"
    request.write_text("id: TKD-C\nreason: erasure\nrequested_by: dpo@example.org\nreceived: 2026-11-20\n"
                       "origins: [h/base]\nforget: {classes: ['3']}\n")
    code, out, err, exc = _guarded_cli(["--hub", root, "takedown", request], 120)
    assert exc is None and code == 0, (code, out[-500:], err, exc)
    hub = LocalHub(root)
    entry = ledger_record(hub, "TKD-C")["repos"]["h/child"]
    assert entry["action"] == "forgot" and entry["from"] == claimed, entry
    assert hub.head("h/child") == entry["to"] != claimed
    assert hub.list_files("h/child")[WEIGHTS_FILE] == entry["weights_sha256"] != claimed_weights
    code, out, err, exc = _guarded_cli(["--hub", root, "audit", "--request", "TKD-C"], 60)
    assert exc is None and code == 0, (code, out[-800:], err)


# ------------------------------------------------------------------------------------------------ properties
_YAML_ATOMS = st.sampled_from([
    "a", "'h/base'", "h/base", "0" * 40, "'" + "0" * 40 + "'", "finetune", "merge", "null", "~", "true", "1e309",
    "-.inf", ".nan", "0x1F", "2026-11-22T10:00:00Z", "2026-11-22", "!!binary aGk=", "!!set {a, b}", "!!str 5",
    "!!python/name:os.system", "*a0", "&a0 [x, y]", "<<: {k: v}", "? [a]", "'\\u0000'", "\"\\x00\"", "[]", "{}",
    "|\n  text", ">-\n  folded", "!custom x", "%YAML 1.1", "---", "...", "@", "`", "a: b: c", "- - -",
])
_KEYS = st.sampled_from(["base_model", "base_model_relation", "fiun", "parents", "labels", "fim", "unlearned",
                         "repo", "revision", "request", "tags", "license", "x", "<<", "? k"])


@st.composite
def _hostile_yaml(draw) -> str:
    """Front matter built from fragments YAML treats specially: anchors, aliases, merge keys, tags, directives,
    documents markers, special floats, timestamps, block scalars, nesting."""
    def value(depth: int) -> str:
        kind = draw(st.integers(0, 3 if depth < 4 else 0))
        if kind == 0:
            return draw(_YAML_ATOMS)
        if kind == 1:
            return "[" + ", ".join(value(depth + 1) for _ in range(draw(st.integers(0, 3)))) + "]"
        if kind == 2:
            return "{" + ", ".join(f"{draw(_KEYS)}: {value(depth + 1)}" for _ in range(draw(st.integers(0, 3)))) + "}"
        return "&a0 " + value(depth + 1)

    lines = [f"{draw(_KEYS)}: {value(0)}" for _ in range(draw(st.integers(1, 5)))]
    if draw(st.booleans()):
        lines.append(f"fiun: {{parents: [{{repo: {draw(_YAML_ATOMS)}, revision: {draw(_YAML_ATOMS)}}}], "
                     f"labels: {value(1)}, unlearned: [{{request: {draw(_YAML_ATOMS)}}}]}}")
    return "\n".join(lines)


def _timed(fn, seconds: int = 10):
    def on_alarm(signum, frame):
        raise _Timeout(f"did not finish in {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_hostile_yaml())
@example("lol0: &a0 [a, a, a, a, a, a, a, a]\nlol1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]\n"
         "lol2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]\nlol3: [*a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2]")
@example("x: &a0 [1]\ny: {<<: {k: *a0}}\nfiun: {labels: *a0}")
@example(f"fiun: {{parents: [{{repo: h/base, revision: '{'0' * 40}'}}], labels: [a, b]}}\nbase_model: h/base")
@example("base_model: 'h/base'")
def test_card_parser_on_hostile_yaml_is_total_bounded_and_stable(front):
    """parse_card on hostile YAML returns a CardMeta or raises CardError, quickly (alias expansion included);
    what it accepts is plain JSON data, and rendering it gives a card that parses back to the same lineage
    (parents, labels, forget records), a fixed point after one rendering.

    Fails today on ``base_model: 'h/base'`` (an unpinned parent renders as ``revision: ''``, which the parser
    refuses): the bug of test_forget_keeps_a_card_with_an_unpinned_parent_readable (fiun_hub/card.py
    meta_to_dict). With that case set aside, 3000 examples found nothing else."""
    from fiun_hub.card import CardError, meta_to_dict, parse_card, render_card

    text = f"---\n{front}\n---\nbody\n"
    try:
        meta = _timed(lambda: parse_card(text, where="org/x"), 10)
    except CardError as exc:
        assert str(exc).startswith("org/x: ") and "\n" not in str(exc).strip()
        return
    json.dumps(meta_to_dict(meta), allow_nan=True)  # plain data: what the lineage index stores
    again = parse_card(render_card(meta, "body\n", "org/x"))
    assert (again.parents, again.labels, again.unlearned, again.fim) == (meta.parents, meta.labels, meta.unlearned,
                                                                         meta.fim)
    if meta.parents:
        assert again.relation == (meta.relation or ("merge" if len(meta.parents) > 1 else "finetune"))
    assert parse_card(render_card(again, "body\n", "org/x")) == again


_ID_TEXT = st.text(alphabet=st.sampled_from(list("hH/base-._@:~ \t\n\\\x00\u00e9\u2215\uff0f.0123456789abcdef")),
                   min_size=0, max_size=24)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["show", "log", "lineage", "eval", "fim", "forget"]),
       spec=_ID_TEXT | st.sampled_from(["h/base", "h/child", "h/base@main", "h/base@tags/x", "h/..", "h/base/x"]))
@example(command="show", spec="h/base")
@example(command="show", spec="h/base\n")
@example(command="log", spec="h/\u2215x")
@example(command="show", spec="-h")
@example(command="eval", spec="-h")
def test_any_repo_spec_at_the_cli_is_exit_0_or_one_line_exit_2(small, command, spec):
    """Whatever string names the repo, every command answers 0 or 2 with one line, never a traceback, and
    writes nothing; ``show``/``log``/``lineage`` succeed exactly on the ids of the repos that exist."""
    from fiun_hub.errors import InvalidRepoId
    from fiun_hub.hub.ids import repo_from_folder, validate_repo_id

    hub = small["hub"]
    # `--` ends the options, so a spec such as "-h" is the repo argument, not a request for help.
    args = {"show": ["show", "--", spec], "log": ["log", "--", spec], "lineage": ["lineage", "--up", "--", spec],
            "eval": ["eval", "--data", "npz:/nonexistent.npz", "--", spec],
            "fim": ["fim", "--data", "npz:/nonexistent.npz", "--", spec],
            "forget": ["forget", "--origin", spec, "--classes", "3", "--dry-run"]}[command]
    before = _hub_marks(hub)
    code, out, err, exc = _guarded_cli(["--hub", hub, *args], 30)
    assert exc is None, f"{command} {spec!r}: uncaught {type(exc).__name__}: {exc}"
    assert code in (0, 2), (command, spec, code, err)
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("fiun-hub: error: "), (command, spec, err)
    exists = spec.split("@")[0] in ("h/base", "h/child") and spec.count("@") <= 1
    if command in ("show", "log", "lineage") and "@" not in spec:
        assert (code == 0) == exists, (command, spec, code, err)
    try:
        repo = validate_repo_id(spec.split("@")[0])
    except InvalidRepoId:
        assert code == 2 or command == "lineage" and spec == "", (command, spec, code)
    else:  # an accepted id names exactly one folder, right under the hub
        folder = LocalHub(hub).repo_dir(repo)
        assert folder.parent == Path(hub) and repo_from_folder(folder.name) == repo
    assert _hub_marks(hub) == before


def _hub_marks(root: Path) -> dict:
    """Every path in the hub with its size and mtime (cheap enough to take around each hypothesis example)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            out[p] = (st_.st_size, st_.st_mtime_ns, st_.st_mode)
    return out
