"""Purging pre-forget revisions (issue 15): a takedown removes the forgotten data from the hub, not only from heads.

On test_compliance.py's takedown story (a real trained DAG, the real CLI): every pre-takedown revision of an affected
repo has tombstones instead of weights and sidecars, its blobs are gone, every reader (fiun-hub show/eval/push
--parent, huggingface_hub, timm, serve with the real client) refuses it naming the request, pins to it still resolve
as lineage, unaffected repos are byte-identical, and the ledger records what went. Also: a legal hold
(--keep-history --reason), the `unpurged` audit finding and `audit --fix`, kill -9 at every step of a purge, a
concurrent push during one, and the LFS purge endpoints of `fiun-hub serve` through the unmodified HfApi.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
from pathlib import Path

import pytest

from conftest import fingerprint
from fiun_hub.compliance import ledger_record
from fiun_hub.constants import CARD_FILE, CONFIG_FILE, FIM_FILE, WEIGHTS_FILE
from fiun_hub.errors import Purged
from fiun_hub.hub.local import LocalHub, RepoChange
from fiun_hub.verify import verify
from test_compliance import LATE, REQUEST, invoke, ok, story  # noqa: F401  (story is a fixture)
from test_forget import AFFECTED, A, B, R, U, V, copy_hub, trained_dag

RID = "TKD-2026-001"


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    return trained_dag(tmp_path_factory)


def _blob(hub: LocalHub, repo: str, rev: str, path: str) -> Path:
    return hub.repo_dir(repo) / "blobs" / hub.commit_info(repo, rev).files[path]


# ----------------------------------------------------------------------------------------------- the story
def test_takedown_purges_every_pre_forget_revision(story):
    hub, before = story["hub"], story["before_heads"]
    for repo in AFFECTED:
        old = before[repo]
        stones = hub.tombstones(repo, old)
        assert WEIGHTS_FILE in stones and stones[WEIGHTS_FILE]["request"] == RID, repo
        assert not _blob(hub, repo, old, WEIGHTS_FILE).exists(), repo  # the bytes are gone
        snap = hub.repo_dir(repo) / "snapshots" / old
        assert not (snap / WEIGHTS_FILE).exists() and (snap / CARD_FILE).exists() and (snap / CONFIG_FILE).exists()
        assert (hub.repo_dir(repo) / ".no_exist" / old / WEIGHTS_FILE).is_file()
        # the commit record, and so history and log, stay
        assert old in [c.id for c in hub.history(repo)]
    # the origin's pre-forget sidecars are the request's unlearning FIM: kept (and `audit --fix` used them)
    assert FIM_FILE not in hub.tombstones(R, before[R]) and _blob(hub, R, before[R], FIM_FILE).is_file()
    assert FIM_FILE in hub.tombstones(A, before[A])
    # the late model's pre-fix revision was purged by the fix
    assert WEIGHTS_FILE in hub.tombstones(LATE, story["late_rev"])
    assert ok(story["verify"]).startswith("hub ok")


def test_the_ledger_records_the_purged_blobs(story):
    ev = story["record"]["events"][0]
    p = ev["purge"]
    assert set(p["files"]) == set(AFFECTED)
    one = next(f for f in p["files"][A] if f["path"] == WEIGHTS_FILE)
    assert one["commit"] == story["before_heads"][A] and len(one["sha256"]) == 64 and one["size"] > 0
    assert p["bytes_removed"] >= sum(f["size"] for r in AFFECTED for f in p["files"][r]
                                     if f["path"] == WEIGHTS_FILE)
    report = (story["root"] / "final.md").read_text()
    assert "bytes removed" in report


def test_every_reader_refuses_a_purged_revision_naming_the_request(story, run_cli, tmp_path):
    hub = story["hub"]
    old = story["before_heads"][A]
    H = ("--hub", hub.root)
    want = f"{A}@{old[:12]} {WEIGHTS_FILE} was purged by request {RID} on "
    stored = fingerprint(hub.root)
    for args in (("show", f"{A}@{old}"), ("eval", f"{A}@{old}", "--data", "digits:test"),
                 ("fim", f"{A}@{old}", "--data", "digits:train")):
        code, out, err = run_cli(*H, *args)
        assert code == 2 and err.strip().startswith("fiun-hub: error: " + want), (args, err)
        assert len(err.strip().splitlines()) == 1
    assert fingerprint(hub.root) == stored  # refusing changed nothing stored (fim commits nothing)
    folder = tmp_path / "m"
    folder.mkdir()
    for p in (CONFIG_FILE, WEIGHTS_FILE):
        (folder / p).write_bytes(hub.read_file(A, p))
    code, _, err = run_cli(*H, "push", folder, "dag/edge", "--parent", f"{A}@{old}")
    assert code == 2 and want in err and not hub.repo_exists("dag/edge")
    with pytest.raises(Purged, match="was purged by request"):
        hub.read_file(A, WEIGHTS_FILE, old)
    # the head is fine
    assert hub.read_file(A, WEIGHTS_FILE)


def test_hf_and_timm_readers_get_entry_not_found_never_stale_bytes(story):
    import timm
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    hub = story["hub"]
    old = story["before_heads"][A]
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(A, WEIGHTS_FILE, cache_dir=hub.root, local_files_only=True, revision=old)
    with pytest.raises(EntryNotFoundError):
        timm.create_model(f"hf-hub:{A}@{old}", pretrained=True, cache_dir=hub.root)
    snap = Path(snapshot_download(A, cache_dir=hub.root, local_files_only=True, revision=old))
    assert sorted(p.name for p in snap.iterdir()) == [CARD_FILE, CONFIG_FILE]
    timm.create_model(f"hf-hub:{A}@{hub.head(A)}", pretrained=True, cache_dir=hub.root)  # the head loads


def test_pins_to_purged_revisions_still_resolve_as_lineage(story):
    from fiun_hub.lineage import resolve

    g = resolve(story["hub"])
    # the late model's original pin (the fix re-forgot it, its card keeps the pin to the purged revision)
    assert g.edges[A, LATE]["revision"] == story["before_heads"][A]
    failing = story["audit_failing"][1]
    assert "PRE-FORGET-PIN" in failing


def test_unaffected_repos_are_byte_identical(story, dag):
    src = Path(dag[0])
    hub = story["hub"]
    for repo in (U, V):
        folder = hub.repo_dir(repo).name
        assert fingerprint(hub.root / folder) == fingerprint(src / folder), repo
    # post-forget revisions are whole: every file of every head reads back and hashes to its name
    for repo in AFFECTED:
        for path, sha in hub.list_files(repo).items():
            assert hashlib.sha256(hub.read_file(repo, path)).hexdigest() == sha


# ----------------------------------------------------------------------------------------------- hold, unpurged
@pytest.fixture(scope="module")
def requested(dag, tmp_path_factory):
    root = tmp_path_factory.mktemp("purge-requests")
    req = root / "req.yaml"
    req.write_text(REQUEST)
    return Path(dag[0]), req, root


def test_legal_hold_keeps_history_and_is_reported(requested):
    src, req, root = requested
    hub = copy_hub(src, root / "hold")
    before = {r: hub.head(r) for r in AFFECTED}
    H = ("--hub", hub.root)
    res = invoke(*H, "takedown", req, "--keep-history")
    assert res[0] == 2 and "--reason" in res[2]
    out = ok(invoke(*H, "takedown", req, "--keep-history", "--reason", "litigation hold LIT-7 (counsel)"))
    assert "legal hold" in out and "LIT-7" in out
    for repo, old in before.items():
        assert not hub.tombstones(repo, old) and hub.read_file(repo, WEIGHTS_FILE, old)
    ev = ledger_record(hub, RID)["events"][0]
    assert ev["hold"]["reason"] == "litigation hold LIT-7 (counsel)"
    assert ev["hold"]["revisions"][A] == [before[A]]
    audit = ok(invoke(*H, "audit", "--report", root / "hold.html"))
    assert "legal hold since" in audit and "audit ok" in audit
    assert "LIT-7" in (root / "hold.html").read_text()
    assert verify(hub) == []


def test_unpurged_is_found_and_fixed(requested):
    from fiun_hub.compliance import load_request, plan_takedown, run_takedown

    src, req, root = requested
    hub = copy_hub(src, root / "unpurged")
    before = {r: hub.head(r) for r in AFFECTED}
    run_takedown(hub, plan_takedown(hub, load_request(req)), purge=False)  # as a takedown before purging existed
    # a stray copy of pre-forget weights in serve's staging folder
    stray = hub.meta / "serve-staging" / "1-x" / "upload"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(hub.read_file(A, WEIGHTS_FILE, before[A]))
    res = invoke("--hub", hub.root, "--json", "audit")
    assert res[0] == 1
    kinds = {(f["repo"], f["kind"]) for f in json.loads(res[1])["findings"]}
    assert kinds == {(r, "unpurged") for r in AFFECTED}
    out = ok(invoke("--hub", hub.root, "audit", "--fix"))
    assert "bytes removed" in out and "1 staged file(s)" in out and not stray.exists()
    assert not _blob(hub, A, before[A], WEIGHTS_FILE).exists()
    ok(invoke("--hub", hub.root, "audit"))
    # a stray copy made after the purge is found (its sha256 is a purged one) and removed
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(Path(src, hub.repo_dir(A).name, "blobs", hub.commit_info(A, before[A]).files[WEIGHTS_FILE])
                      .read_bytes())
    res = invoke("--hub", hub.root, "--json", "audit")
    findings = json.loads(res[1])["findings"]
    assert [f["kind"] for f in findings] == ["unpurged"] and "serve-staging" in findings[0]["message"]
    ok(invoke("--hub", hub.root, "audit", "--fix"))
    assert not stray.exists()
    assert verify(hub) == []
    # a purged blob put back by hand: verify reports it, the audit flags it, --fix deletes it again
    blob = _blob(hub, B, before[B], WEIGHTS_FILE)
    blob.write_bytes(b"x")  # (content irrelevant: the name is a purged sha256)
    assert any("was purged by request" in p for p in verify(hub))
    assert invoke("--hub", hub.root, "audit")[0] == 1
    ok(invoke("--hub", hub.root, "audit", "--fix"))
    assert not blob.exists() and verify(hub) == []
    evs = ledger_record(hub, RID)["events"]
    assert [e["kind"] for e in evs].count("purge") == 3, [(e["kind"], e["at"], e.get("purge", {}).get("blobs")) for e in evs]


def _sha_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (snapshot links read through to their blobs)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _revision_bytes(hub: LocalHub, repo: str, rev: str) -> dict[str, str]:
    """sha256 of every file of one revision: its snapshot folder and the blobs it names."""
    d = hub.repo_dir(repo)
    out = {f"snapshots/{rev}/{k}": v for k, v in _sha_tree(d / "snapshots" / rev).items()}
    for sha in hub.commit_info(repo, rev).files.values():
        out[f"blobs/{sha}"] = hashlib.sha256((d / "blobs" / sha).read_bytes()).hexdigest()
    return out


def test_a_second_purge_leaves_kept_revisions_and_unaffected_repos_byte_identical(requested, tmp_path):
    src, req, root = requested
    hub = copy_hub(src, tmp_path / "hub")
    untouched = {r: _sha_tree(hub.repo_dir(r)) for r in (U, V)}  # copies taken before any purge
    ok(invoke("--hub", hub.root, "takedown", req))
    assert {r: _sha_tree(hub.repo_dir(r)) for r in (U, V)} == untouched
    kept = {r: hub.head(r) for r in AFFECTED}  # the first request's post-forget revisions
    kept_bytes = {r: _revision_bytes(hub, r, rev) for r, rev in kept.items()}
    stones_1 = {r: {c.id: hub.tombstones(r, c.id) for c in hub.history(r)} for r in AFFECTED}
    second = tmp_path / "TKD-2026-002.yaml"
    second.write_text(REQUEST.replace(RID, "TKD-2026-002").replace('["3"]', '["5"]'))
    data = json.loads(ok(invoke("--hub", hub.root, "--json", "takedown", second)))
    assert set(data["revisions"]) == set(AFFECTED)
    for repo, rev in kept.items():
        assert hub.head(repo) != rev
        assert not hub.tombstones(repo, rev), repo  # never touched by the second request's purge
        assert _revision_bytes(hub, repo, rev) == kept_bytes[repo], repo
        assert hub.read_file(repo, WEIGHTS_FILE, rev)
        # and the first request's tombstones are as they were
        assert {c: t for c, t in ((c.id, hub.tombstones(repo, c.id)) for c in hub.history(repo))
                if c in stones_1[repo]} == stones_1[repo], repo
    assert {r: _sha_tree(hub.repo_dir(r)) for r in (U, V)} == untouched
    assert verify(hub) == []
    assert "audit ok: 2 request(s)" in ok(invoke("--hub", hub.root, "audit"))  # no `unpurged` for the kept ones


# ----------------------------------------------------------------------------------------------- crash safety
def _small_hub(root: Path) -> tuple[LocalHub, list[dict], str]:
    """Two repos of raw files: x has three revisions (the sidecar shared by the first two), y one. Returns the
    hub, the tombstones purging x's first two revisions' weights and sidecar, and x's head."""
    hub = LocalHub.init(root)
    card = b"---\nlicense: mit\n---\n"
    w = [os.urandom(4096) for _ in range(3)]
    side = os.urandom(2048)
    for i in range(3):
        hub.publish([RepoChange("org/x", {CARD_FILE: card, WEIGHTS_FILE: w[i], FIM_FILE: side if i < 2 else b"s2"},
                                f"v{i}")])
    hub.publish([RepoChange("org/y", {CARD_FILE: card, WEIGHTS_FILE: w[0]}, "y")])  # same bytes, another repo
    from fiun_hub.purge import purge_entries

    head = hub.head("org/x")
    start = hub.commit_info("org/x").parents[0]
    return hub, purge_entries(hub, "TKD-9", {"org/x": start}, "2026-12-02T00:00:00Z"), head


def _purge_child(root: str, entries: list[dict], head: str, nth: int | None, delay: float | None,
                 out: str | None = None) -> None:
    import fiun_hub.hub.local as L

    calls = [0]

    def hit() -> None:
        calls[0] += 1
        if nth is not None and calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(obj, name):
        original = getattr(obj, name)

        def f(*a, **k):
            out = original(*a, **k)
            hit()
            return out

        setattr(obj, name, f)

    wrap(L, "atomic_write")
    wrap(L, "sync_filesystem")
    wrap(Path, "touch")
    wrap(Path, "unlink")
    if delay is not None:
        threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    hub = LocalHub(root)
    hub.publish([RepoChange("org/x", {"notes.txt": b"forgotten"}, "forget", parent_commit=head)], purge=entries)
    if out:
        Path(out).write_text(str(calls[0]))


def _outcome(root: Path, entries: list[dict], head: str, ref_y: bytes) -> str:
    hub = LocalHub(root)
    with hub.lock():  # the next write command finishes or rolls back (readers leave a journal to writers)
        pass
    assert verify(hub) == [], verify(hub)
    assert hub.repo_dir("org/y").joinpath("refs/main").read_bytes() == ref_y
    assert hub.read_file("org/y", WEIGHTS_FILE)  # the same bytes in another repo are never touched
    landed = hub.head("org/x") != head
    for e in entries:
        stoned = e["path"] in hub.tombstones("org/x", e["commit"])
        assert stoned == landed
        with_blob = (hub.repo_dir("org/x") / "blobs" / e["sha256"]).exists()
        assert with_blob == (not landed), e
    assert hub.read_file("org/x", FIM_FILE) == b"s2"
    return "landed" if landed else "none"


def test_kill9_at_every_step_of_a_purge_is_all_or_nothing(tmp_path):
    import multiprocessing as mp

    template = tmp_path / "template"
    hub, entries, head = _small_hub(template)
    assert len(entries) == 4 and len(hub.purge_blobs(entries)) == 3  # the sidecar once, both weights
    ref_y = hub.repo_dir("org/y").joinpath("refs/main").read_bytes()
    ctx = mp.get_context("fork")
    # count the steps of one purge, then kill at each of them (and at a few random moments)
    probe = tmp_path / "probe"
    import shutil

    shutil.copytree(template, probe, symlinks=True)
    p = ctx.Process(target=_purge_child, args=(str(probe), entries, head, None, None, str(tmp_path / "steps")))
    p.start()
    p.join(60)
    steps = int((tmp_path / "steps").read_text())
    assert _outcome(probe, entries, head, ref_y) == "landed"
    seen = set()
    rng = random.Random(15)
    trials = [(n, None) for n in range(1, steps + 1)] + [(None, rng.uniform(0.0, 0.05)) for _ in range(3)]
    for i, (nth, delay) in enumerate(trials):
        work = tmp_path / f"t{i}"
        shutil.copytree(template, work, symlinks=True)
        p = ctx.Process(target=_purge_child, args=(str(work), entries, head, nth, delay))
        p.start()
        p.join(60)
        seen.add(_outcome(work, entries, head, ref_y))
        shutil.rmtree(work)
    assert seen == {"landed", "none"}


def test_a_concurrent_push_during_a_purge_loses_nothing(tmp_path):
    import multiprocessing as mp

    hub, entries, head = _small_hub(tmp_path / "hub")
    ctx = mp.get_context("fork")
    pushes = [os.urandom(1024) for _ in range(10)]

    def pusher(root: str) -> None:
        h = LocalHub(root)
        for i, data in enumerate(pushes):
            h.publish([RepoChange("org/y", {f"f{i}.bin": data}, f"push {i}")])
            h.publish([RepoChange("org/x", {f"x{i}.bin": data}, f"push {i}")])
        os._exit(0)

    p = ctx.Process(target=pusher, args=(str(hub.root),))
    p.start()
    hub.purge(entries)
    p.join(60)
    assert p.exitcode == 0
    assert verify(hub) == []
    for i, data in enumerate(pushes):
        assert hub.read_file("org/y", f"f{i}.bin") == data and hub.read_file("org/x", f"x{i}.bin") == data
    for e in entries:
        assert e["path"] in hub.tombstones("org/x", e["commit"])
        assert not (hub.repo_dir("org/x") / "blobs" / e["sha256"]).exists()


# ----------------------------------------------------------------------------------------------- serve
def _status(exc: BaseException) -> int | None:
    while exc is not None:
        resp = getattr(exc, "response", None)
        if resp is not None:
            return resp.status_code
        exc = exc.__cause__ or exc.__context__
    return None


def test_serve_answers_451_and_purges_lfs_files_for_the_real_client(story, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    from test_serve import TOKEN, start_server, stop_server

    hub = copy_hub(story["hub"].root, tmp_path / "hub")
    old = story["before_heads"][A]
    W = "org/w"  # a repo with history: two revisions of LFS weights
    w1, w2 = os.urandom(3000), os.urandom(3000)
    hub.publish([RepoChange(W, {WEIGHTS_FILE: w1, CARD_FILE: b"---\nlicense: mit\n---\n"}, "v1")])
    hub.publish([RepoChange(W, {WEIGHTS_FILE: w2}, "v2")])
    proc, url = start_server(hub.root, tmp_path / "serve.log", "--token", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    try:
        api = HfApi(endpoint=url, token=TOKEN)
        with pytest.raises(Exception) as exc:
            hf_hub_download(A, WEIGHTS_FILE, revision=old, endpoint=url, cache_dir=tmp_path / "c", token=TOKEN)
        assert _status(exc.value) == 451, repr(exc.value)
        with pytest.raises(HfHubHTTPError, match=f"was purged by request {RID}") as exc:
            api.hf_hub_download(A, WEIGHTS_FILE, revision=old, cache_dir=tmp_path / "c2") if False else \
                api.get_hf_file_metadata(url=f"{url}/{A}/resolve/{old}/{WEIGHTS_FILE}")
        assert exc.value.response.status_code == 451
        info = api.model_info(A, revision=old)
        assert WEIGHTS_FILE not in [s.rfilename for s in info.siblings]
        assert sorted(r["rfilename"] for r in info.removed if r["request"] == RID) == \
            ["fim-classes.safetensors", FIM_FILE, WEIGHTS_FILE]
        # The LFS purge through the unmodified client: the unlearned head's predecessor of a repo with history.
        with pytest.raises(HfHubHTTPError) as exc:
            list(HfApi(endpoint=url, token=False).list_lfs_files(W))  # the token is required
        assert exc.value.response.status_code in (401, 403)
        wrong = HfApi(endpoint=url, token="hf_" + "x" * 30)
        with pytest.raises(HfHubHTTPError) as exc:  # and a wrong one is refused
            list(wrong.list_lfs_files(W))
        assert exc.value.response.status_code in (401, 403), exc.value.response.status_code
        files = {f.oid: f for f in api.list_lfs_files(W)}
        stored = fingerprint(hub.root)
        for token in ("hf_" + "x" * 30, False):  # deleting with a wrong token, or none, is refused and deletes nothing
            with pytest.raises(HfHubHTTPError) as exc:
                HfApi(endpoint=url, token=token).permanently_delete_lfs_files(W, list(files.values()),
                                                                              rewrite_history=True)
            assert exc.value.response.status_code in (401, 403), (token, exc.value.response.status_code)
        assert fingerprint(hub.root) == stored
        s1, s2 = (hashlib.sha256(x).hexdigest() for x in (w1, w2))
        assert set(files) == {s1, s2}
        with pytest.raises(HfHubHTTPError) as exc:  # a file of the head is refused
            api.permanently_delete_lfs_files(W, [files[s2]])
        assert exc.value.response.status_code == 409
        first = hub.history(W)[-1].id
        HfApi(endpoint=url, token=TOKEN, headers={"X-Fiun-Request": "TKD-LFS-1"}).permanently_delete_lfs_files(
            W, [files[s1]], rewrite_history=True)
        assert not (hub.repo_dir(W) / "blobs" / s1).exists() and hub.read_file(W, WEIGHTS_FILE) == w2
        assert hub.tombstones(W, first)[WEIGHTS_FILE]["request"] == "TKD-LFS-1"
        assert [f.oid for f in api.list_lfs_files(W)] == [s2]
        # the HfHub backend's purge: every LFS file no revision carrying the request names, never the head's
        from fiun_hub.hub.hf import HfHub

        remote = HfHub(f"hf://{url.split('://')[1]}", token=TOKEN)
        before = dict(hub.list_files(A))
        out = remote.purge_history(A, RID)
        assert "unsupported" not in out, out
        assert hub.list_files(A) == before and all(hub.read_file(A, p) for p in before)
        assert verify(LocalHub(hub.root)) == []
        # an endpoint that refuses the LFS purge API (here: a token it does not accept): one line, nothing changed
        stored = fingerprint(hub.root)
        out = HfHub(f"hf://{url.split('://')[1]}", token="hf_" + "x" * 30).purge_history(W, "TKD-LFS-2")
        assert set(out) == {"unsupported"} and "history could not be purged" in out["unsupported"], out
        assert len(out["unsupported"].splitlines()) == 1
        assert fingerprint(hub.root) == stored
    finally:
        stop_server(proc)


# ----------------------------------------------------------------------------------------------- remote (hf://)
try:  # fixtures: a real `fiun-hub serve` on a hub (test_hf_hub skips itself without starlette/uvicorn)
    from test_hf_hub import mirror, online, serve  # noqa: E402,F401
    HAVE_SERVE = True
except pytest.skip.Exception:
    HAVE_SERVE = False


@pytest.mark.skipif(not HAVE_SERVE, reason="needs starlette and uvicorn (fiun-hub serve)")
def test_cli_forget_purge_over_hf_purges_the_served_hub(dag, serve, cli, tmp_path):
    """`takedown`/`audit` need a local hub (their ledger publishes atomically with the repos), so over hf:// the
    purge is `forget --purge`: the endpoint's LFS purge through the unmodified client."""
    from fiun_hub.hub import open_hub
    from test_forget import FORGET

    spec = serve(LocalHub.init(tmp_path / "served").root)
    mirror(LocalHub(dag[0]), open_hub(spec))
    served = LocalHub(tmp_path / "served")
    before = {r: served.head(r) for r in served.list_repos()}
    code, out, err = cli("--hub", spec, "forget", "--origin", R, "--classes", FORGET, "--purge")
    assert code == 0, (out, err)
    assert "LFS file(s) of pre-forget revisions" in out and "history could not be purged" not in out, out
    served = LocalHub(tmp_path / "served")
    for repo in AFFECTED:
        old = before[repo]
        assert served.head(repo) != old
        assert not _blob(served, repo, old, WEIGHTS_FILE).exists(), repo
        assert WEIGHTS_FILE in served.tombstones(repo, old), repo
        assert served.read_file(repo, WEIGHTS_FILE)  # the head is whole
    for repo in (U, V):
        assert served.head(repo) == before[repo] and not served.tombstones(repo, before[repo])
    assert verify(served) == []
    code, _, err = cli("--hub", spec, "takedown", "x.yaml")
    assert code == 2 and "needs a local hub folder" in err
