"""The HfHub backend (``--hub hf://HOST:PORT``) end to end over loopback: a real ``fiun-hub serve`` process in
front of a real LocalHub, the real huggingface_hub client inside HfHub, and the same forget as on a LocalHub.

The client must reach the loopback server, so these tests switch the client's offline flag off (conftest sets
HF_HUB_OFFLINE=1 for everything else); nothing here leaves 127.0.0.1.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fiun_hub.constants import CARD_FILE, WEIGHTS_FILE
from fiun_hub.errors import ConflictError
from fiun_hub.hub.local import Blob, LocalHub, RepoChange
from test_forget import AFFECTED, FORGET, R, U, V, copy_hub, trained_dag

TOKEN = "fiun-test-token"

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture
def online(monkeypatch):
    """Let the client talk to loopback servers in this process (and in the in-process CLI)."""
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("FIUN_HUB_TOKEN", TOKEN)
    return monkeypatch


@pytest.fixture
def serve(tmp_path, online):
    """Factory: ``serve(hub_path) -> "hf://127.0.0.1:PORT"``: a real `fiun-hub serve` process on that hub (port 0:
    the server binds a free port and prints its URL; see tests/test_serve.py)."""
    from test_serve import start_server, stop_server

    procs = []
    online.setenv("FIUN_HF_CACHE", str(tmp_path / "hf-cache"))  # a fresh download cache per test

    def start(hub_path: Path) -> str:
        proc, url = start_server(Path(hub_path), tmp_path / f"server{len(procs)}.log", "--token", TOKEN)
        procs.append(proc)
        return "hf://" + url.removeprefix("http://")

    yield start
    for p in procs:
        stop_server(p)


def mirror(src: LocalHub, dst) -> None:
    """Copy every repo's head tree from ``src`` into ``dst`` (parents first), one publish per repo."""
    from fiun_hub.lineage import resolve
    import networkx as nx

    for repo in nx.topological_sort(resolve(src)):
        files = {p: Blob.of(src.read_file(repo, p)) for p in src.list_files(repo)}
        dst.publish([RepoChange(repo, files, f"mirror {repo}", parent_commit="")])


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    return trained_dag(tmp_path_factory)


def _weights(hub, repos) -> dict[str, str]:
    import hashlib

    return {r: hashlib.sha256(hub.read_file(r, WEIGHTS_FILE)).hexdigest() for r in repos}


@pytest.fixture(scope="module")
def local_forgotten(dag, tmp_path_factory):
    """The same forget on a LocalHub: the reference the remote one must match byte for byte (read only)."""
    from fiun_hub.unlearn import forget

    hub = copy_hub(dag[0], tmp_path_factory.mktemp("local") / "hub")
    forget(hub, [R], FORGET)
    return hub


def test_forget_over_http_matches_the_local_forget(dag, serve, cli, tmp_path, local_forgotten):
    from fiun_hub.hub import open_hub

    spec = serve(LocalHub.init(tmp_path / "served").root)
    remote = open_hub(spec)
    mirror(LocalHub(dag[0]), remote)
    assert remote.list_repos() == LocalHub(dag[0]).list_repos()
    before = {r: remote.head(r) for r in remote.list_repos()}

    code, out, err = cli("--hub", spec, "--json", "forget", "--origin", R, "--classes", FORGET)
    assert code == 0, (out, err)
    res = json.loads(out)
    assert res["atomic"] is False and set(res["revisions"]) == set(AFFECTED)
    remote = open_hub(spec)  # a fresh client: nothing cached
    for repo in AFFECTED:
        assert remote.head(repo) == res["revisions"][repo]["to"] != before[repo]
        assert remote.history(repo)[1].id == before[repo]
        card = remote.read_file(repo, CARD_FILE).decode()
        assert res["request_id"] in card
    assert remote.head(U) == before[U] and remote.head(V) == before[V]
    # identical weights to the same forget on a LocalHub (sha256 through the server and on disk)
    assert _weights(remote, AFFECTED) == _weights(local_forgotten, AFFECTED)
    served = LocalHub(tmp_path / "served")
    assert all(served.list_files(r)[WEIGHTS_FILE] == local_forgotten.list_files(r)[WEIGHTS_FILE] for r in AFFECTED)
    # the text output says what a remote hub cannot promise; a re-run is a no-op
    code, out, err = cli("--hub", spec, "forget", "--origin", R, "--classes", FORGET)
    assert code == 0 and "already applied" in out, (out, err)
    assert {r: served.head(r) for r in AFFECTED} == {r: res["revisions"][r]["to"] for r in AFFECTED}


def test_remote_sidecar_headers_are_read_without_downloading_the_sidecars(dag, serve, tmp_path):
    """Over HTTP the lineage reads each sidecar's header with HfApi.parse_safetensors_file_metadata (range
    requests): the states are the local ones, the header is the one on disk, and no fim.safetensors lands in the
    download cache."""
    from fiun_hub import lineage
    from fiun_hub.constants import FIM_FILE
    from fiun_hub.hub import open_hub

    local = copy_hub(dag[0], tmp_path / "hub")
    remote = open_hub(serve(local.root))
    states = {n: d["sidecar"] for n, d in lineage.resolve(remote).nodes(data=True)}
    assert states == {n: d["sidecar"] for n, d in lineage.resolve(local, rebuild=True).nodes(data=True)}
    assert "ok" in states.values()
    assert remote.safetensors_header(R, FIM_FILE) == local.safetensors_header(R, FIM_FILE)
    assert not list(Path(remote.cache_dir).rglob(FIM_FILE)) and list(Path(remote.cache_dir).rglob(CARD_FILE))


def test_an_interrupted_forget_is_finished_by_running_it_again(dag, serve, tmp_path, local_forgotten):
    """The connection drops after two repos are committed: the error names what landed, the hub holds exactly
    those two new revisions, and the same forget run again finishes the rest with the same bytes."""
    try:  # the HTTP library the client is built on (httpx2 in huggingface_hub 2.x)
        import httpx2 as httpx
    except ImportError:
        import httpx

    from fiun_hub.hub import open_hub
    from fiun_hub.hub.hf import PublishIncomplete
    from fiun_hub.unlearn import plan_forget, run_forget

    spec = serve(LocalHub.init(tmp_path / "served").root)
    mirror(LocalHub(dag[0]), open_hub(spec))
    hub = open_hub(spec)
    before = {r: hub.head(r) for r in hub.list_repos()}
    real_commit, calls = hub.api.create_commit, []

    def dropping(*args, **kwargs):
        if len(calls) == 2:
            raise httpx.ConnectError("connection reset by peer (injected)")
        calls.append(args[0])
        return real_commit(*args, **kwargs)

    hub.api.create_commit = dropping
    plan = plan_forget(hub, [R], FORGET)
    with pytest.raises(PublishIncomplete) as exc:
        run_forget(hub, plan)
    assert list(exc.value.done) == calls and len(calls) == 2 and len(exc.value.pending) == 3
    assert "2 of 5" in str(exc.value) and "re-run" in str(exc.value)
    fresh = open_hub(spec)
    moved = {r for r in AFFECTED if fresh.head(r) != before[r]}
    assert moved == set(calls)

    plan2 = plan_forget(fresh, [R], FORGET)
    assert plan2.request_id == plan.request_id and {n.repo for n in plan2.todo} == set(AFFECTED) - moved
    result = run_forget(fresh, plan2)
    assert set(result.revisions) == set(AFFECTED) - moved
    assert _weights(open_hub(spec), AFFECTED) == _weights(local_forgotten, AFFECTED)
    assert not plan_forget(open_hub(spec), [R], FORGET).todo


def test_a_stale_parent_commit_is_refused_and_nothing_lands(serve, tmp_path, model_folder):
    from fiun_hub.hub import open_hub

    spec = serve(LocalHub.init(tmp_path / "served").root)
    a, b = open_hub(spec), open_hub(spec)
    a.publish([RepoChange("org/x", {"a.txt": b"one"}, parent_commit="")])
    first = a.head("org/x")
    b.publish([RepoChange("org/x", {"a.txt": b"two"}, parent_commit=first)])
    second = b.head("org/x")
    with pytest.raises(ConflictError, match="moved"):  # a still believes the head is `first`
        a.publish([RepoChange("org/y", {"b.txt": b"new"}, parent_commit=""),
                   RepoChange("org/x", {"a.txt": b"three"}, parent_commit=first)])
    c = open_hub(spec)
    assert c.head("org/x") == second and c.read_file("org/x", "a.txt") == b"two"
    assert not c.repo_exists("org/y")  # checked before anything was written
    with pytest.raises(ConflictError):  # the server refuses it too (a writer that raced past the check)
        _stale_commit(c, first)
    assert open_hub(spec).head("org/x") == second


def _stale_commit(hub, parent: str) -> None:
    from huggingface_hub import CommitOperationAdd

    from fiun_hub.hub.hf import _map_errors

    with _map_errors("org/x"):
        hub.api.create_commit("org/x", [CommitOperationAdd("a.txt", b"three")], commit_message="stale",
                              parent_commit=parent)


def test_push_show_log_tag_lineage_through_the_cli(serve, cli, tmp_path, model_folder):
    import hashlib

    spec = serve(LocalHub.init(tmp_path / "served").root)
    base, kid = model_folder(), model_folder()
    code, out, err = cli("--hub", spec, "push", base, "org/base")
    assert code == 0, (out, err)
    code, out, err = cli("--hub", spec, "--json", "push", kid, "org/kid", "--parent", "org/base")
    assert code == 0, (out, err)
    code, out, err = cli("--hub", spec, "--json", "show", "org/kid")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["files"][WEIGHTS_FILE]["sha256"] == hashlib.sha256((kid / WEIGHTS_FILE).read_bytes()).hexdigest()
    code, out, err = cli("--hub", spec, "--json", "lineage")
    assert code == 0, err
    g = json.loads(out)
    assert {(e["source"], e["target"]) for e in g["links"]} == {("org/base", "org/kid")}
    code, out, err = cli("--hub", spec, "--json", "tag", "org/kid", "v1")
    assert code == 0, err
    served = LocalHub(tmp_path / "served")
    assert served.refs("org/kid")["tags"] == {"v1": served.head("org/kid")}
    code, out, err = cli("--hub", spec, "--json", "log", "org/kid")
    assert code == 0 and len(json.loads(out)) == len(served.history("org/kid")), err


@pytest.mark.parametrize("args,needle", [
    (("--hub", "hf://", "show", "a/b"), "hub spec"),
    (("--hub", "hf://host:99999", "show", "a/b"), "port"),
    (("--hub", "hf://huggingface.co", "show", "a/b"), "namespace"),
    (("--hub", "hf://127.0.0.1:1", "show", "a/b"), "cannot reach"),
    (("--hub", "hf://127.0.0.1:1", "verify"), "local hub folder"),
    (("--hub", "hf://127.0.0.1:1", "init"), "local hub folder"),
    (("--hub", "hf://127.0.0.1:1/bad..ns?x", "show", "a/b"), "hub spec"),
])
def test_bad_remote_hub_specs_fail_with_one_line(cli, online, args, needle):
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1 and needle in err, err


def test_a_wrong_token_cannot_write(serve, cli, tmp_path, model_folder, online, hub_fingerprint):
    root = LocalHub.init(tmp_path / "served").root
    spec = serve(root)
    snap = hub_fingerprint(root)
    online.setenv("FIUN_HUB_TOKEN", "not-the-token")
    code, out, err = cli("--hub", spec, "push", model_folder(), "org/base")
    assert code == 2 and len(err.splitlines()) == 1 and "not allowed" in err, (out, err)
    assert hub_fingerprint(root) == snap
