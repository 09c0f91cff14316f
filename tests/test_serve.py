"""`fiun-hub serve` against the UNMODIFIED huggingface_hub client.

One real server subprocess (`fiun-hub --hub HUB serve --port 0 --token T --max-upload-mb 4`; port 0 binds a free
port race-free and the command prints its URL) serves the whole module. The client runs in this process:
conftest sets HF_HUB_OFFLINE=1 for the session, so huggingface_hub's constants are patched for this module only
(offline off, Xet off, the endpoint pointed at the loopback server), and every HTTP request the client sends is
checked to go to the loopback server: nothing here can reach the internet.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from fiun_hub.card import CardMeta, ParentRef, render_card
from fiun_hub.hub.local import LocalHub

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

TOKEN = "test-token-5f1c"
MAX_MB = 4
LABELS = ["cat", "dog", "bird"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """Raw request -> (status, headers, body)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def ndjson(*items: dict) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


# ---------------------------------------------------------------------------- fixtures
def start_server(hub: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    from fiun_hub.serve import spawn

    env = {k: v for k, v in os.environ.items() if k not in ("FIUN_HUB", "FIUN_HUB_TOKEN")}
    # Uploads up to 100 kB wait for their commit in memory, larger ones in the staging folder: both paths run.
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "FIUN_HUB_SERVE_MEMORY_MB": "0.1"})
    return spawn(hub, log, *extra, env=env)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    hub = LocalHub.init(root / "hub")
    proc, url = start_server(hub.root, root / "server.log", "--token", TOKEN, "--max-upload-mb", str(MAX_MB))
    try:
        yield SimpleNamespace(url=url, hub=hub, root=hub.root, proc=proc, tmp=root)
    finally:
        stop_server(proc)
        # A clean shutdown leaves no staging folder behind.
        assert not (hub.root / ".fiun" / "serve-staging").exists()


@pytest.fixture(scope="module")
def client(server):
    """huggingface_hub, online, Xet off, pointed at the loopback server (for this module only)."""
    import httpx2
    from huggingface_hub import constants

    real_send = httpx2.Client.send

    def loopback_only(self, request, *args, **kwargs):
        assert request.url.host in ("127.0.0.1", "localhost"), f"request left the machine: {request.url}"
        return real_send(self, request, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(constants, "HF_HUB_OFFLINE", False)
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setattr(constants, "ENDPOINT", server.url)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    mp.setattr(constants, "HF_HUB_CACHE", str(server.tmp / "hf-cache"))
    mp.setattr(constants, "HF_TOKEN_PATH", str(server.tmp / "no-token"))
    mp.setattr(httpx2.Client, "send", loopback_only)
    try:
        from huggingface_hub import HfApi

        yield SimpleNamespace(api=HfApi(endpoint=server.url, token=TOKEN), url=server.url)
    finally:
        mp.undo()


def _model_folder(root: Path, name: str, seed: int, card: str | None) -> Path:
    import timm
    import torch

    from fiun_hub.models import save_model_folder

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(LABELS), in_chans=1)
    folder = save_model_folder(model, root / name, LABELS, input_size=(1, 16, 16))
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


@pytest.fixture(scope="module")
def lineage(server, client):
    """org/base <- org/child (finetune), and org/merged (merge of both), all uploaded with upload_folder."""
    api = client.api
    heads = {}
    for i, (repo, parents, relation) in enumerate([("org/base", [], None), ("org/child", ["org/base"], "finetune"),
                                                   ("org/merged", ["org/base", "org/child"], "merge")]):
        pins = [ParentRef(p, heads[p]) for p in parents]
        card = render_card(CardMeta(parents=pins, relation=relation, labels=LABELS), repo=repo)
        folder = _model_folder(server.tmp / "models", repo.split("/")[1], i, card)
        api.create_repo(repo)
        info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"upload {repo}")
        heads[repo] = info.oid
    return SimpleNamespace(heads=heads, folder=server.tmp / "models")


# ---------------------------------------------------------------------------- reads after writes
def test_upload_folder_lineage_reads_back_through_the_client(server, client, lineage):
    from fiun_hub.lineage import read_index_file
    from fiun_hub.lineage import resolve as resolve_lineage

    api, hub, heads = client.api, LocalHub(server.root), lineage.heads
    for repo, head in heads.items():
        assert hub.head(repo) == head  # what the client was told landed is the head in the hub

    info = api.model_info("org/child", files_metadata=True)
    assert info.sha == heads["org/child"]
    assert info.card_data.base_model == "org/base" and info.card_data.base_model_relation == "finetune"
    assert info.card_data.to_dict()["fiun"]["parents"] == [{"repo": "org/base", "revision": heads["org/base"]}]
    assert {"timm", "fiun-hub", "safetensors", "base_model:org/base", "base_model:finetune:org/base"} <= set(info.tags)
    files = hub.list_files("org/child")
    sib = {s.rfilename: s for s in info.siblings}
    assert set(sib) == set(files) == {".gitattributes", "README.md", "config.json", "model.safetensors"}
    w = sib["model.safetensors"]
    assert w.lfs is not None and w.lfs.sha256 == files["model.safetensors"] and w.size == w.lfs.size
    assert sib["config.json"].lfs is None and sib["config.json"].size == len(hub.read_file("org/child", "config.json"))

    assert [m.id for m in api.list_models(filter="base_model:org/base")] == ["org/child", "org/merged"]
    assert [m.id for m in api.list_models(filter="base_model:finetune:org/base")] == ["org/child"]
    assert [m.id for m in api.list_models(filter="base_model:merge:org/child")] == ["org/merged"]
    assert [m.id for m in api.list_models(filter=["timm", "base_model:merge:org/base"])] == ["org/merged"]
    assert [m.id for m in api.list_models(search="bas")] == ["org/base"]
    assert next(iter(api.list_models(filter="base_model:org/child", cardData=True))).card_data.base_model == [
        "org/base", "org/child"]

    refs = api.list_repo_refs("org/base")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", heads["org/base"])]
    commits = api.list_repo_commits("org/base")
    assert [c.commit_id for c in commits] == [c.id for c in hub.history("org/base")]
    assert [c.title for c in commits] == ["upload org/base", "initial commit"]
    assert sorted(api.list_repo_files("org/merged")) == sorted(hub.list_files("org/merged"))

    # Every write went through publish: the lineage index is current and holds both edges of the merge.
    index = read_index_file(hub)
    assert {r: e["head"] for r, e in index.items()} == heads
    g = resolve_lineage(hub)
    assert sorted(g.predecessors("org/merged")) == ["org/base", "org/child"]
    assert g.edges["org/base", "org/child"]["revision"] == heads["org/base"]


def test_downloads_are_byte_identical_to_the_hub_blobs(server, client, lineage, tmp_path):
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download

    hub = LocalHub(server.root)
    files = hub.list_files("org/base")
    for path, sha in files.items():
        got = Path(hf_hub_download("org/base", path, cache_dir=tmp_path / "c1", token=False))
        assert got.read_bytes() == hub.read_file("org/base", path, verify=True), path
        meta = get_hf_file_metadata(hf_hub_url("org/base", path, endpoint=client.url), token=False)
        assert meta.commit_hash == lineage.heads["org/base"] and meta.size == len(got.read_bytes())
        if path == "model.safetensors":  # LFS: the etag is the content's sha256 (and the client's cache blob name)
            assert meta.etag == sha and got.resolve().name == sha
        else:  # regular file: its git blob id
            data = got.read_bytes()
            assert meta.etag == hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()

    snap = Path(snapshot_download("org/merged", cache_dir=tmp_path / "c2", token=False))
    assert snap.name == lineage.heads["org/merged"]
    assert {p.name: p.read_bytes() for p in snap.iterdir()} == {
        p: hub.read_file("org/merged", p) for p in hub.list_files("org/merged")}

    # Range requests (resumed downloads) get 206 with the right slice.
    blob = hub.read_file("org/base", "model.safetensors")
    status, headers, body = http("GET", f"{client.url}/org/base/resolve/main/model.safetensors",
                                 headers={"Range": "bytes=100-199"})
    assert status == 206 and body == blob[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(blob)}"
    assert headers["X-Repo-Commit"] == lineage.heads["org/base"]


def test_timm_loads_a_model_through_the_endpoint(server, client, lineage, tmp_path):
    import timm
    import torch
    from safetensors.torch import load

    model = timm.create_model("hf-hub:org/child", pretrained=True, cache_dir=tmp_path / "timm")
    want = load(LocalHub(server.root).read_file("org/child", "model.safetensors"))
    got = model.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)


def test_create_tag_and_read_at_the_tag(server, client, lineage, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    api, hub = client.api, LocalHub(server.root)
    api.create_tag("org/base", tag="v1", tag_message="first release")
    assert hub.refs("org/base")["tags"] == {"v1": lineage.heads["org/base"]}
    tags = api.list_repo_refs("org/base").tags
    assert [(t.name, t.target_commit) for t in tags] == [("v1", lineage.heads["org/base"])]
    p = hf_hub_download("org/base", "config.json", revision="v1", cache_dir=tmp_path, token=False)
    assert Path(p).read_bytes() == hub.read_file("org/base", "config.json", "v1")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag("org/base", tag="v1")
    assert exc.value.response.status_code == 409
    api.create_tag("org/base", tag="v1", exist_ok=True)  # 409 is what exist_ok swallows


# ---------------------------------------------------------------------------- concurrency, auth, errors
def test_stale_parent_commit_is_refused_and_changes_nothing(server, client, lineage, hub_fingerprint):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    a, b = client.api, HfApi(endpoint=client.url, token=TOKEN)
    seen = b.model_info("org/child").sha  # both clients start from the same head
    assert a.model_info("org/child").sha == seen
    won = a.upload_file(path_or_fileobj=b"notes by A\n", path_in_repo="notes.txt", repo_id="org/child",
                        commit_message="A first", parent_commit=seen)
    before = hub_fingerprint(server.root)
    extra = os.urandom(200_000)  # an LFS file, staged on disk before the commit is refused
    with pytest.raises(HfHubHTTPError) as exc:
        b.upload_file(path_or_fileobj=extra, path_in_repo="extra.safetensors", repo_id="org/child",
                      commit_message="B, too late", parent_commit=seen)
    assert exc.value.response.status_code == 412 and "re-read and retry" in str(exc.value)
    assert hub_fingerprint(server.root) == before  # no blob, no commit, no staged bytes left
    hub = LocalHub(server.root)
    assert hub.head("org/child") == won.oid and "extra.safetensors" not in hub.list_files("org/child")
    # With the fresh head B's commit lands; deleting a file is a commit too.
    fresh = b.upload_file(path_or_fileobj=extra, path_in_repo="extra.safetensors", repo_id="org/child",
                          commit_message="B, rebased", parent_commit=won.oid)
    assert hub.read_file("org/child", "extra.safetensors", fresh.oid) == extra
    gone = a.delete_file("notes.txt", "org/child", commit_message="drop notes")
    assert set(hub.list_files("org/child", gone.oid)) == {".gitattributes", "README.md", "config.json",
                                                         "model.safetensors", "extra.safetensors"}


def test_writes_need_the_token_reads_do_not(server, client, lineage, hub_fingerprint):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    before = hub_fingerprint(server.root)
    body = json.dumps({"name": "sneaky", "organization": "org", "type": "model"}).encode()
    assert http("POST", f"{client.url}/api/repos/create", body)[0] == 401
    status, headers, raw = http("POST", f"{client.url}/api/repos/create", body, auth("wrong"))
    assert status == 403 and json.loads(raw)["error"] == "invalid token" and headers["X-Error-Message"]
    commit = ndjson({"key": "header", "value": {"summary": "x"}},
                    {"key": "file", "value": {"path": "a.txt", "content": "aGk=", "encoding": "base64"}})
    assert http("POST", f"{client.url}/api/models/org/base/commit/main", commit)[0] == 401
    assert http("POST", f"{client.url}/api/models/org/base/commit/main", commit, auth("wrong"))[0] == 403
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=client.url, token="wrong").upload_file(path_or_fileobj=b"x", path_in_repo="x.txt",
                                                              repo_id="org/base")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(endpoint=client.url, token=False).create_repo("org/sneaky")
    assert exc.value.response.status_code == 401
    assert hub_fingerprint(server.root) == before
    # Reads are open (the server runs without --private).
    assert HfApi(endpoint=client.url, token=False).model_info("org/base").sha == lineage.heads["org/base"]
    assert http("GET", f"{client.url}/org/base/resolve/main/config.json")[0] == 200


def test_unknown_repo_revision_or_file_are_the_clients_not_found_errors(server, client, lineage, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = client.api
    for call in (lambda: api.model_info("org/nope"), lambda: api.list_repo_refs("org/nope"),
                 lambda: api.list_repo_files("org/nope"),
                 lambda: hf_hub_download("org/nope", "config.json", cache_dir=tmp_path, token=False),
                 lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/nope")):
        with pytest.raises(RepositoryNotFoundError):
            call()
    for call in (lambda: api.model_info("org/base", revision="nope"),
                 lambda: api.model_info("org/base", revision="0" * 40),
                 lambda: api.list_repo_commits("org/base", revision="nope"),
                 lambda: hf_hub_download("org/base", "config.json", revision="nope", cache_dir=tmp_path, token=False)):
        with pytest.raises(RevisionNotFoundError):
            call()
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/base", "nope.txt", cache_dir=tmp_path, token=False)
    status, headers, raw = http("HEAD", f"{client.url}/org/base/resolve/main/nope.txt")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    assert headers["X-Repo-Commit"] == lineage.heads["org/base"]


def test_malformed_commits_are_400_and_store_nothing(server, client, lineage, hub_fingerprint):
    api, url = client.api, f"{client.url}/api/models/org/base/commit/main"
    head = {"key": "header", "value": {"summary": "bad"}}
    before = hub_fingerprint(server.root)
    bad = {
        "not json": b"this is not ndjson\n",
        "no header": ndjson({"key": "file", "value": {"path": "a.txt", "content": "aGk=", "encoding": "base64"}}),
        "empty summary": ndjson({"key": "header", "value": {"summary": ""}}),
        "no operations": ndjson(head),
        "escaping path": ndjson(head, {"key": "file", "value": {"path": "../a.txt", "content": "aGk="}}),
        "hub records": ndjson(head, {"key": "file", "value": {"path": ".fiun/x", "content": "aGk="}}),
        "bad base64": ndjson(head, {"key": "file", "value": {"path": "a.txt", "content": "%%%", "encoding": "base64"}}),
        "unknown op": ndjson(head, {"key": "copyFile", "value": {"path": "a.txt"}}),
        "bad parent": ndjson({"key": "header", "value": {"summary": "x", "parentCommit": "zz"}}),
        "lfs never uploaded": ndjson(head, {"key": "lfsFile", "value": {
            "path": "w.safetensors", "algo": "sha256", "oid": hashlib.sha256(b"never").hexdigest(), "size": 5}}),
        "malformed card": ndjson(head, {"key": "file", "value": {
            "path": "README.md", "content": base64.b64encode(b"---\nbase_model: [unclosed\n---\n").decode()}}),
    }
    for name, body in bad.items():
        status, headers, raw = http("POST", url, body, {**auth(), "Content-Type": "application/x-ndjson"})
        assert status == 400, (name, status, raw)
        assert json.loads(raw)["error"] and headers["X-Error-Message"], name
    # The client checks a card with the server (validate-yaml) before uploading anything.
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\nbase_model_relation: distill\n---\n", path_in_repo="README.md",
                        repo_id="org/base")
    assert hub_fingerprint(server.root) == before
    # Control: the same route takes a well-formed payload.
    good = ndjson(head, {"key": "file", "value": {"path": "ok.txt", "content": "aGk=", "encoding": "base64"}})
    status, _, raw = http("POST", url, good, auth())
    assert status == 200
    assert LocalHub(server.root).read_file("org/base", "ok.txt", json.loads(raw)["commitOid"]) == b"hi"


def _batch(url: str, repo: str, oid: str, size: int, token: str = TOKEN):
    body = json.dumps({"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                       "objects": [{"oid": oid, "size": size}]}).encode()
    return http("POST", f"{url}/{repo}.git/info/lfs/objects/batch", body, auth(token))


def test_uploads_over_the_limit_are_413_and_store_nothing(server, client, lineage, hub_fingerprint):
    from huggingface_hub.errors import HfHubHTTPError

    big = os.urandom(MAX_MB * (1 << 20) + 1000)
    before = hub_fingerprint(server.root)
    for name in ("big.safetensors", "big.txt"):
        with pytest.raises(HfHubHTTPError) as exc:
            client.api.upload_file(path_or_fileobj=big, path_in_repo=name, repo_id="org/base")
        assert exc.value.response.status_code == 413
    assert _batch(client.url, "org/base", hashlib.sha256(big).hexdigest(), len(big))[0] == 413
    inline = ndjson({"key": "header", "value": {"summary": "big"}},
                    {"key": "file", "value": {"path": "big.txt", "content": base64.b64encode(big).decode()}})
    assert http("POST", f"{client.url}/api/models/org/base/commit/main", inline, auth())[0] == 413
    # An upload ticket for a small object cannot be used to push more than the limit.
    small = b"x" * 1000
    status, _, raw = _batch(client.url, "org/base", hashlib.sha256(small).hexdigest(), len(small))
    assert status == 200
    href = json.loads(raw)["objects"][0]["actions"]["upload"]["href"]
    assert http("PUT", href, big)[0] == 413
    assert hub_fingerprint(server.root) == before


def test_lfs_bytes_that_do_not_match_their_sha256_are_refused(server, client, lineage, hub_fingerprint):
    declared, other = os.urandom(50_000), os.urandom(50_000)  # small: staged in memory
    oid = hashlib.sha256(declared).hexdigest()
    commit = ndjson({"key": "header", "value": {"summary": "lfs"}},
                    {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": oid,
                                                 "size": len(declared)}})
    before = hub_fingerprint(server.root)
    status, _, raw = _batch(client.url, "org/base", oid, len(declared))
    assert status == 200
    actions = json.loads(raw)["objects"][0]["actions"]
    href = actions["upload"]["href"]
    status, _, raw = http("PUT", href, other)  # same size, other bytes
    assert status == 400 and "sha256" in json.loads(raw)["error"]
    assert http("PUT", href, declared[:-1])[0] == 400  # short
    verify = json.dumps({"oid": oid, "size": len(declared)}).encode()
    assert http("POST", actions["verify"]["href"], verify, auth())[0] == 404
    assert http("POST", f"{client.url}/api/models/org/base/commit/main", commit, auth())[0] == 400
    assert hub_fingerprint(server.root) == before
    # Control: the right bytes through the same ticket are accepted, verified and committed.
    assert http("PUT", href, declared)[0] == 200
    assert http("POST", actions["verify"]["href"], verify, auth())[0] == 200
    status, _, raw = http("POST", f"{client.url}/api/models/org/base/commit/main", commit, auth())
    assert status == 200
    hub = LocalHub(server.root)
    assert hub.list_files("org/base")["w.safetensors"] == oid
    assert hub.read_file("org/base", "w.safetensors", verify=True) == declared
    assert not any((server.root / ".fiun" / "serve-staging").glob("*/*"))  # staged bytes deleted after the commit


def test_create_repo_exists_and_bad_names(server, client, lineage, hub_fingerprint):
    from huggingface_hub.errors import HfHubHTTPError

    api = client.api
    before = hub_fingerprint(server.root)
    assert api.create_repo("org/base", exist_ok=True).repo_id == "org/base"
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("org/base")
    assert exc.value.response.status_code == 409
    for body in ({"name": "x", "organization": "org", "type": "dataset"}, {"name": "x--y", "organization": "org"},
                 {"name": "x"}):
        assert http("POST", f"{client.url}/api/repos/create", json.dumps(body).encode(), auth())[0] == 400
    assert hub_fingerprint(server.root) == before
    url = api.create_repo("org/fresh")
    assert url.repo_id == "org/fresh" and list(LocalHub(server.root).list_files("org/fresh")) == [".gitattributes"]


# ---------------------------------------------------------------------------- the command itself
def test_serve_refuses_remote_hosts_and_private_without_token(cli, server, monkeypatch):
    monkeypatch.delenv("FIUN_HUB_TOKEN", raising=False)  # else --private would find a token and start serving
    code, out, err = cli("--hub", server.root, "serve", "--host", "0.0.0.0")
    assert code == 2 and err.count("\n") == 1 and "--allow-remote" in err
    code, out, err = cli("--hub", server.root, "serve", "--private")
    assert code == 2 and err.count("\n") == 1 and "--private needs a token" in err


def test_private_server_needs_the_token_for_reads(server, tmp_path):
    proc, url = start_server(server.root, tmp_path / "private.log", "--token", TOKEN, "--private")
    try:
        assert http("GET", f"{url}/api/models/org/base")[0] == 401
        assert http("GET", f"{url}/org/base/resolve/main/config.json", headers=auth("wrong"))[0] == 403
        status, _, raw = http("GET", f"{url}/api/models/org/base", headers=auth())
        assert status == 200 and json.loads(raw)["private"] is True
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------- hostile input, round two (issue 12)
def _commit_card(url: str, repo: str, card: str):
    head = {"key": "header", "value": {"summary": "card"}}
    body = ndjson(head, {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                                  "content": base64.b64encode(card.encode()).decode()}})
    return http("POST", f"{url}/api/models/{repo}/commit/main", body, {**auth(), "Content-Type": "application/x-ndjson"})


def _claim_card(hub: LocalHub, repo: str, parent: str, record: dict) -> str:
    pins = [ParentRef(parent, hub.head(parent))]
    return render_card(CardMeta(parents=pins, relation="finetune", labels=LABELS, unlearned=[record]), repo=repo)


def test_ill_typed_forget_records_and_claims_without_a_forget_are_400(server, client, lineage, hub_fingerprint):
    """A record with ``from_revision: 5`` (it made ``lineage --check`` die for every user), and a record that
    claims a request without being the forget of the head it replaces, are refused; nothing is stored."""
    hub = LocalHub(server.root)
    before = hub_fingerprint(server.root)
    head = hub.head("org/child")
    cases = {
        "from_revision an int": {"request": "TKD-X", "from_revision": 5},
        "overlong request id": {"request": "r" * 200, "from_revision": head},
        "a bare claim": {"request": "TKD-X", "classes": ["cat"]},
        "a claim from another revision": {"request": "TKD-X", "from_revision": lineage.heads["org/base"]},
    }
    for name, record in cases.items():
        status, headers, raw = _commit_card(client.url, "org/child", _claim_card(hub, "org/child", "org/base", record))
        assert status == 400, (name, status, raw)
        assert "fiun.unlearned" in headers["X-Error-Message"] or "from_revision" in headers["X-Error-Message"], name
    assert hub_fingerprint(server.root) == before


def test_the_ledger_and_tag_main_are_refused_as_on_the_cli(server, client, lineage, cli, hub_fingerprint):
    """One rule (fiun_hub.hub.ids check_user_writable / validate_tag_name) for serve and the local CLI."""
    before = hub_fingerprint(server.root)
    status, _, raw = http("POST", f"{client.url}/api/models/org/base/tag/main", json.dumps({"tag": "main"}).encode(),
                          {**auth(), "Content-Type": "application/json"})
    assert status == 400, raw
    status, _, raw = _commit_card(client.url, "fiun-hub/ledger", "---\nlicense: mit\n---\n")
    assert status == 403 and b"takedown ledger" in raw, raw
    code, out, err = cli("--hub", server.root, "tag", "org/base", "main")
    assert code == 2 and err.count("\n") == 1 and "main is the branch" in err, err
    code, out, err = cli("--hub", server.root, "push", lineage.folder / "base", "fiun-hub/ledger")
    assert code == 2 and err.count("\n") == 1 and "takedown ledger" in err, err
    assert hub_fingerprint(server.root) == before


def test_a_card_claiming_a_request_through_serve_is_never_proof(server, client, lineage):
    """The attack of issue 12 item 3: a card committed through serve claims request TKD-CLAIM (a well-formed
    record naming the head it replaces, as a remote forget's would). A takedown of TKD-CLAIM must forget that repo,
    not record it, and an audit must not call it done on the card's word: not even when the ledger holds an entry
    that only *recorded* the claim (what `takedown` used to write for such a repo)."""
    from fiun_hub.compliance import audit, parse_request, plan_takedown
    from fiun_hub.compliance.ledger import ledger_change, new_record, with_event

    hub = LocalHub(server.root)
    folder = _model_folder(server.tmp / "models", "claim-child", 7, None)
    api = client.api
    api.create_repo("claim/child")
    api.upload_folder(repo_id="claim/child", folder_path=folder, commit_message="upload claim/child")
    head = hub.head("claim/child")
    record = {"request": "TKD-CLAIM", "classes": ["cat"], "origins": [f"org/base@{hub.head('org/base')}"],
              "from_revision": head, "alpha": 1.0, "lambda": 1.0, "at": "2026-11-22T10:00:00Z"}
    status, _, raw = _commit_card(client.url, "claim/child", _claim_card(hub, "claim/child", "org/base", record))
    assert status == 200, raw
    claimed = hub.head("claim/child")
    assert claimed != head
    request = parse_request("id: TKD-CLAIM\nreason: erasure\nrequested_by: dpo@example.org\nreceived: 2026-11-20\n"
                            "origins: [org/base]\nforget: {classes: [cat]}\n")
    tp = plan_takedown(hub, request)
    states = {s.repo: s.status for s in tp.states}
    assert states["claim/child"] == "unrecorded"
    assert "claim/child" in tp.targets and tp.record_only == [], (tp.targets, tp.record_only)
    # The ledger entry the old takedown wrote for such a repo: "recorded", the claimed head's own weights.
    event = {"kind": "takedown", "at": "2026-11-22T10:00:01Z", "author": "test", "origins": ["org/base"],
             "eval_data": None, "blocked": {}, "repos": {
                 "claim/child": {"action": "recorded", "from": head, "to": claimed,
                                 "weights_sha256": hub.list_files("claim/child", claimed)["model.safetensors"]}}}
    hub.publish([ledger_change(hub, {"TKD-CLAIM": with_event(new_record(request), event)},
                                {"TKD-CLAIM": request.to_dict()["id"]}, "legacy ledger entry")])
    report = audit(hub, "TKD-CLAIM")
    rows = {r["repo"]: r["status"] for r in report["requests"][0]["repos"]}
    assert rows["claim/child"] != "done" and not report["ok"], rows
    assert any(f["repo"] == "claim/child" and f["kind"] == "unrecorded" for f in report["findings"])


# ---------------------------------------------------------------------------- hostile requests (issue 12, 13-14)
def _raw(url: str, timeout: float = 30):
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return socket.create_connection((u.hostname, u.port), timeout=timeout)


def _closed_by_server(sock, guard: float = 30) -> bytes:
    """Read until the server closes the connection (b'' or a reset); what it sent first. ``guard`` only stops a
    server that never closes from hanging the test."""
    sock.settimeout(guard)
    got = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return got
            got += data
    except ConnectionResetError:
        return got


def test_deeply_nested_json_is_400_at_every_parser(server, client, lineage, hub_fingerprint):
    deep = b"[" * 100_000 + b"]" * 100_000
    before = hub_fingerprint(server.root)
    for method, path, body, headers in [
        ("POST", "/api/validate-yaml", deep, {"Content-Type": "application/json"}),
        ("POST", "/org/base.git/info/lfs/objects/batch", deep, auth()),
        ("POST", "/api/models/org/base/paths-info/main", deep, {"Content-Type": "application/json"}),
        ("POST", "/api/models/org/base/commit/main",
         ndjson({"key": "header", "value": {"summary": "deep"}}) + deep + b"\n", auth()),
    ]:
        status, h, raw = http(method, client.url + path, body, headers)
        assert status == 400 and "nested too deeply" in json.loads(raw)["error"], (path, status, raw[:200])
        assert "nested too deeply" in h["X-Error-Message"]
    assert hub_fingerprint(server.root) == before
    assert http("GET", f"{client.url}/api/models/org/base")[0] == 200  # the server is fine


def test_control_characters_in_a_path_never_reach_a_header(server, client, lineage):
    for path in ["/api/models/org/a%00b", "/org/base/resolve/main/a%00b.txt", "/api/models/org/base/tree/main/x%01y",
                 "/no%7Froute%0D%0AX-Injected:%201", "/api/models/org/base/tree/main/%C2%85%E2%80%A8"]:
        status, headers, raw = http("GET", client.url + path)
        assert status == 404, (path, status)
        message = headers["X-Error-Message"]
        assert message and not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in message), (path, message)
        assert "X-Injected" not in headers and json.loads(raw)["error"]
    assert http("GET", f"{client.url}/api/models/org/base")[0] == 200


def test_a_chunked_body_over_the_limit_is_cut_off_and_the_connection_closed(server, client):
    """The docs promise: read and drop up to 64 MiB past the limit (JSON bodies: 16 MiB), then answer and close."""
    import select

    from fiun_hub.serve import DRAIN_LIMIT, JSON_LIMIT

    sock = _raw(client.url)
    sock.sendall(b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    sent, total = 0, 4 * (JSON_LIMIT + DRAIN_LIMIT)
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunk)
            sent += 1 << 20
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _closed_by_server(sock)
    sock.close()
    assert sent < JSON_LIMIT + DRAIN_LIMIT + (32 << 20), f"the server read {sent >> 20} MiB of a chunked body"
    assert not answer or answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_large_commit_is_parsed_in_linear_time_and_bounded(server, client, lineage, hub_fingerprint):
    max_lines = 100_000  # docs/serve.md, "Limits" (fiun_hub.serve.MAX_COMMIT_LINES)
    url = f"{client.url}/api/models/org/base/commit/main"
    head = {"key": "header", "value": {"summary": "many"}}
    before = hub_fingerprint(server.root)
    # As many operations as allowed (5.8 MB): the quadratic parser needed minutes for this, on the event loop.
    many = ndjson(head) + b"".join(b'{"key": "deletedFile", "value": {"path": "gone/f%d.bin"}}\n' % i
                                   for i in range(max_lines - 1))
    status, _, raw = http("POST", url, many, auth())
    assert status == 404 and "gone/f0.bin" in json.loads(raw)["error"], raw[:300]
    status, _, raw = http("POST", url, many + b'{"key": "deletedFile", "value": {"path": "one/more"}}\n', auth())
    assert status == 413 and f"limit of {max_lines}" in json.loads(raw)["error"]
    assert hub_fingerprint(server.root) == before
    # Later lines override earlier ones, a folder deletion the files before it (and not after it).
    b64 = {n: base64.b64encode(n.encode()).decode() for n in ("keep", "old", "new", "e1", "e2")}
    status, _, raw = http("POST", url, ndjson(head, {"key": "file", "value": {"path": "d/keep.txt",
                                                                                  "content": b64["keep"]}}), auth())
    assert status == 200
    status, _, raw = http("POST", url, ndjson(
        head,
        {"key": "file", "value": {"path": "d/old.txt", "content": b64["old"]}},
        {"key": "deletedFolder", "value": {"path": "d/"}},
        {"key": "file", "value": {"path": "d/new.txt", "content": b64["new"]}},
        {"key": "file", "value": {"path": "e.txt", "content": b64["e1"]}},
        {"key": "deletedFile", "value": {"path": "e.txt"}},
        {"key": "file", "value": {"path": "e.txt", "content": b64["e2"]}}), auth())
    assert status == 200, raw
    hub = LocalHub(server.root)
    files = hub.list_files("org/base", json.loads(raw)["commitOid"])
    assert "d/keep.txt" not in files and "d/old.txt" not in files
    assert hub.read_file("org/base", "d/new.txt") == b"new" and hub.read_file("org/base", "e.txt") == b"e2"


def test_half_sent_requests_are_closed(server, tmp_path):
    """A request head that never ends (all at once, or one byte at a time) and a body that stops are closed after
    the server's timeouts (here 0.5 s); the server keeps answering others."""
    import time

    proc, url = start_server(server.root, tmp_path / "timeouts.log", "--header-timeout", "0.5",
                             "--body-timeout", "0.5")
    socks = []
    try:
        heads = [_raw(url) for _ in range(20)]
        for s in heads:
            s.sendall(b"GET /api/models HTTP/1.1\r\nHost: x\r\nX-Half: ")
        bodies = [_raw(url) for _ in range(5)]
        for s in bodies:
            s.sendall(b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"con")
        socks = heads + bodies
        trickle = _raw(url)  # slowloris: a byte every 0.1 s keeps data coming, never a whole head
        socks.append(trickle)
        trickle.setblocking(False)
        closed, deadline = False, time.monotonic() + 30
        while not closed and time.monotonic() < deadline:
            try:
                closed = trickle.send(b"a") == 0 or trickle.recv(1) == b""
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            time.sleep(0.1)
        assert closed, "a head sent one byte at a time was never closed"
        for s in heads:
            assert _closed_by_server(s) == b""
        for s in bodies:
            answer = _closed_by_server(s)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert http("GET", f"{url}/api/models/org/base")[0] == 200
    finally:
        for s in socks:
            s.close()
        stop_server(proc)


def test_a_post_refused_before_its_body_is_read_keeps_the_connection(server):
    """A wrong-token POST is refused before its body is read. Closing the connection with the body unread makes the
    kernel reset it, and the client can lose the 401 it was reading (seen in CI: `permanently_delete_lfs_files` with
    a wrong token failed with "connection reset"). A small body is read and dropped instead: the answer arrives and
    the same connection serves the next request."""
    import http.client

    host, port = server.url.split("//", 1)[1].rsplit(":", 1)
    body = json.dumps({"deletions": {"sha": ["0" * 64] * 2000, "rewriteHistory": True}}).encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/api/models/o/r/lfs-files/batch", body=body,
                     headers={"Authorization": "Bearer hf_" + "x" * 30, "Content-Type": "application/json"})
        refused = conn.getresponse()
        refused.read()
        conn.request("GET", "/api/models")  # http.client does not reconnect: this needs the same socket
        after = conn.getresponse()
        after.read()
    finally:
        conn.close()
    assert refused.status in (401, 403) and refused.getheader("connection", "").lower() != "close"
    assert after.status == 200


def test_an_idle_connection_outlives_the_clients_keep_alive(server):
    """huggingface_hub's httpx pool reuses an idle connection for up to ``keepalive_expiry`` seconds; a server that
    closes idle connections at the same moment races it, and the client's POST fails with "connection reset" (seen
    once in CI: `permanently_delete_lfs_files` after a 5 s pause). The server must keep one open longer."""
    import http.client
    import time

    import httpx2

    expiry = httpx2.Limits().keepalive_expiry
    host, port = server.url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/api/models")
        first = conn.getresponse()
        first.read()
        time.sleep(expiry + 0.5)  # idle a little longer than the client would keep the connection
        conn.request("GET", "/api/models")  # http.client does not reconnect: this needs the same socket
        second = conn.getresponse()
        second.read()
    finally:
        conn.close()
    assert (first.status, second.status) == (200, 200)
