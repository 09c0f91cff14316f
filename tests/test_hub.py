"""LocalHub: the HF cache layout, commits, revisions, tags, dedup, locking, journal recovery, id validation, and
interop with the real readers (huggingface_hub, timm) under HF_HUB_OFFLINE=1."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fiun_hub.errors import (
    BadInput,
    ConflictError,
    EntryNotFound,
    HubNotFound,
    InvalidRepoId,
    RepoNotFound,
    RevisionNotFound,
)
from fiun_hub.hub import open_hub
from fiun_hub.hub.ids import (
    REPO_ID_RE,
    repo_folder_name,
    repo_from_folder,
    split_repo_rev,
    validate_ref_name,
    validate_repo_id,
    validate_repo_path,
)
from fiun_hub.hub.local import LocalHub, RepoChange, commit_id
from fiun_hub.lineage import read_index_file, rebuild_index

HEX40 = re.compile(r"[0-9a-f]{40}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs(hub: LocalHub, repo: str) -> set[str]:
    return {p.name for p in (hub.repo_dir(repo) / "blobs").iterdir()}


# ---------------------------------------------------------------------------- creation
def test_init_marks_an_empty_folder_and_is_idempotent(tmp_path):
    hub = LocalHub.init(tmp_path / "h")
    assert (tmp_path / "h" / ".fiun" / "hub.json").is_file()
    assert hub.list_repos() == []
    assert LocalHub.init(tmp_path / "h").root == hub.root  # exist_ok
    with pytest.raises(BadInput):
        LocalHub.init(tmp_path / "h", exist_ok=False)


def test_init_refuses_a_non_empty_folder_and_open_needs_a_hub(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(BadInput):
        LocalHub.init(tmp_path / "busy")
    assert sorted(os.listdir(tmp_path / "busy")) == ["x.txt"]
    with pytest.raises(HubNotFound):
        LocalHub(tmp_path / "nothing")
    with pytest.raises(HubNotFound):
        open_hub(tmp_path / "busy")
    with pytest.raises(BadInput):
        open_hub("hf://huggingface.co")


def test_open_hub_reads_fiun_hub_env(tmp_path, monkeypatch):
    LocalHub.init(tmp_path / "envhub")
    monkeypatch.setenv("FIUN_HUB", str(tmp_path / "envhub"))
    assert open_hub().root == (tmp_path / "envhub").absolute()


# ---------------------------------------------------------------------------- layout and commits
def test_layout_is_the_hf_cache_layout(hub):
    files = {"config.json": b'{"a": 1}', "model.safetensors": b"weights", "sub/dir/notes.txt": b"nested"}
    cid = hub.publish([RepoChange("acme/resnet-x", files, "first")])["acme/resnet-x"]
    rdir = hub.root / "models--acme--resnet-x"
    assert rdir == hub.repo_dir("acme/resnet-x")

    ref = (rdir / "refs" / "main").read_bytes()
    assert ref == cid.encode() and HEX40.fullmatch(ref.decode())  # 40 lowercase hex, no trailing newline

    assert {p.name for p in (rdir / "blobs").iterdir()} == {sha(b) for b in files.values()}
    for path, content in files.items():
        blob = rdir / "blobs" / sha(content)
        assert blob.read_bytes() == content and not blob.is_symlink()
        link = rdir / "snapshots" / cid / path
        assert link.is_symlink()
        target = os.readlink(link)
        assert not os.path.isabs(target)
        depth = path.count("/") + 2
        assert target == "/".join([".."] * depth + ["blobs", sha(content)])
        assert link.resolve() == blob.resolve()
        assert link.read_bytes() == content
    assert sorted(os.listdir(rdir)) == ["blobs", "refs", "snapshots"]  # no trees/ listing other files
    assert sorted(p.relative_to(rdir / "snapshots" / cid).as_posix()
                  for p in (rdir / "snapshots" / cid).rglob("*") if not p.is_dir()) == sorted(files)


def test_commit_record_has_parents_author_time_message_and_hashes(hub):
    c1 = hub.publish([RepoChange("org/m", {"a.txt": b"one"}, "first", author="alice")])["org/m"]
    c2 = hub.publish([RepoChange("org/m", {"b.txt": b"two"}, "second")], author="bob")["org/m"]
    assert HEX40.fullmatch(c1) and HEX40.fullmatch(c2) and c1 != c2

    info = hub.commit_info("org/m")
    assert info.id == c2 and info.repo == "org/m"
    assert info.parents == [c1]
    assert info.author == "bob" and info.message == "second"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", info.time)
    assert info.files == {"a.txt": sha(b"one"), "b.txt": sha(b"two")}
    assert info.sizes == {"a.txt": 3, "b.txt": 3}
    first = hub.commit_info("org/m", c1)
    assert first.parents == [] and first.author == "alice" and first.files == {"a.txt": sha(b"one")}

    # The id is derived from the content, and the stored record says so.
    record = json.loads((hub.root / ".fiun" / "commits" / c2[:2] / f"{c2}.json").read_text())
    assert record["id"] == c2 == commit_id(record)
    tampered = dict(record, message="rewritten")
    assert commit_id(tampered) != c2


def test_history_walks_parents_newest_first(hub):
    ids = [hub.publish([RepoChange("org/h", {"v": str(i).encode()}, f"rev {i}")])["org/h"] for i in range(4)]
    hist = hub.history("org/h")
    assert [c.id for c in hist] == ids[::-1]
    assert [c.message for c in hist] == ["rev 3", "rev 2", "rev 1", "rev 0"]
    assert [c.id for c in hub.history("org/h", ids[1])] == [ids[1], ids[0]]
    assert [c.id for c in hub.history("org/h", limit=2)] == [ids[3], ids[2]]
    assert sorted(hub.commits("org/h")) == sorted(ids)


def test_read_any_file_at_any_revision(hub):
    c1 = hub.publish([RepoChange("org/r", {"w.bin": b"v1", "keep.txt": b"same", "gone.txt": b"bye"})])["org/r"]
    hub.tag("org/r", "v1")
    c2 = hub.publish([RepoChange("org/r", {"w.bin": b"v2"}, delete=("gone.txt",))])["org/r"]

    assert hub.read_file("org/r", "w.bin") == b"v2"
    assert hub.read_file("org/r", "w.bin", "main") == b"v2"
    assert hub.read_file("org/r", "w.bin", c1) == b"v1"
    assert hub.read_file("org/r", "w.bin", c2) == b"v2"
    assert hub.read_file("org/r", "w.bin", c1[:7]) == b"v1"  # unique prefix
    assert hub.read_file("org/r", "w.bin", "v1") == b"v1"  # tag
    assert hub.read_file("org/r", "w.bin", "tags/v1") == b"v1"
    assert hub.read_file("org/r", "keep.txt", c2) == b"same"
    assert hub.read_file("org/r", "gone.txt", c1) == b"bye"
    assert hub.list_files("org/r", c2) == {"w.bin": sha(b"v2"), "keep.txt": sha(b"same")}
    assert hub.file_path("org/r", "w.bin", c1) == hub.repo_dir("org/r") / "blobs" / sha(b"v1")
    assert hub.resolve("org/r") == hub.head("org/r") == c2

    with pytest.raises(EntryNotFound):
        hub.read_file("org/r", "gone.txt", c2)
    with pytest.raises(RevisionNotFound):
        hub.read_file("org/r", "w.bin", "f" * 40)
    with pytest.raises(RevisionNotFound):
        hub.resolve("org/r", "no-such-branch")
    with pytest.raises(BadInput):
        hub.resolve("org/r", "../../etc")
    with pytest.raises(RepoNotFound):
        hub.read_file("org/absent", "w.bin")
    with pytest.raises(InvalidRepoId):
        hub.read_file("../etc", "passwd")
    # A commit of another repo is not a revision of this one.
    other = hub.publish([RepoChange("org/other", {"x": b"x"})])["org/other"]
    with pytest.raises(RevisionNotFound):
        hub.resolve("org/r", other)


def test_a_revision_named_like_a_ref_folder_is_not_found(hub):
    """BUG (fiun_hub/hub/local.py, _read_ref ~line 186): once a repo has a tag, refs/tags is a folder, and the
    revision ``tags`` makes read_text raise IsADirectoryError (a traceback and exit 1 from the CLI) instead of
    RevisionNotFound. Fix: catch IsADirectoryError/OSError there too (or test ``path.is_file()`` first)."""
    hub.publish([RepoChange("org/r", {"a": b"1"})])
    hub.tag("org/r", "v1")
    for rev in ("tags", "refs", "tags/tags"):
        with pytest.raises(RevisionNotFound):
            hub.resolve("org/r", rev)


def test_read_file_verify_detects_a_corrupt_blob(hub):
    hub.publish([RepoChange("org/c", {"w.bin": b"good bytes"})])
    blob = hub.file_path("org/c", "w.bin")
    assert hub.read_file("org/c", "w.bin", verify=True) == b"good bytes"
    blob.write_bytes(b"evil bytes")
    with pytest.raises(EntryNotFound, match="corrupt"):
        hub.read_file("org/c", "w.bin", verify=True)


def test_tags_and_refs(hub):
    c1 = hub.publish([RepoChange("org/t", {"a": b"1"})])["org/t"]
    assert hub.tag("org/t", "v1") == c1
    c2 = hub.publish([RepoChange("org/t", {"a": b"2"})])["org/t"]
    ref = hub.repo_dir("org/t") / "refs" / "tags" / "v1"
    assert ref.read_bytes() == c1.encode()
    assert hub.refs("org/t") == {"branches": {"main": c2}, "tags": {"v1": c1}}
    with pytest.raises(BadInput, match="already exists"):
        hub.tag("org/t", "v1")
    assert hub.resolve("org/t", "v1") == c1  # unchanged by the refused move
    assert hub.tag("org/t", "v1", force=True) == c2
    assert hub.tag("org/t", "old", c1) == c1
    assert hub.refs("org/t")["tags"] == {"v1": c2, "old": c1}
    for bad in ("../x", "a/b", "", ".hidden", "x" * 101):
        with pytest.raises(BadInput):
            hub.tag("org/t", bad)
    with pytest.raises(RepoNotFound):
        hub.tag("org/nope", "v1")
    with pytest.raises(RevisionNotFound):
        hub.tag("org/t", "v2", "0" * 40)


def test_identical_files_are_stored_once(hub):
    big = os.urandom(4096)
    hub.publish([RepoChange("org/d", {"a.bin": big, "copy/of/a.bin": big, "b.txt": b"b"})])
    assert blobs(hub, "org/d") == {sha(big), sha(b"b")}
    hub.publish([RepoChange("org/d", {"again.bin": big, "b.txt": b"b"}, "no new content")])
    assert blobs(hub, "org/d") == {sha(big), sha(b"b")}
    assert not [p for p in (hub.repo_dir("org/d") / "blobs").iterdir() if p.name.startswith(".")]  # no temp left
    # From a Path too (streamed, hashed while copied).
    src = hub.root.parent / "src.bin"
    src.write_bytes(big)
    hub.publish([RepoChange("org/d", {"from-path.bin": src})])
    assert blobs(hub, "org/d") == {sha(big), sha(b"b")}
    assert hub.read_file("org/d", "from-path.bin") == big


def test_repush_of_identical_weights_adds_no_blob(hub, model_folder):
    from fiun_hub.repo import push_folder

    folder = model_folder()
    first = push_folder(hub, folder, "org/model")
    before = blobs(hub, "org/model")
    assert len(before) == 3  # config, weights, card
    second = push_folder(hub, folder, "org/model")
    assert second["revision"] != first["revision"]
    assert second["parent_commits"] == [first["revision"]]
    assert blobs(hub, "org/model") == before


# ---------------------------------------------------------------------------- publish semantics
def test_parent_commit_guards_the_head(hub):
    c1 = hub.publish([RepoChange("org/p", {"a": b"1"}, parent_commit="")])["org/p"]
    with pytest.raises(ConflictError):
        hub.publish([RepoChange("org/p", {"a": b"x"}, parent_commit="")])  # must be new, is not
    with pytest.raises(ConflictError):
        hub.publish([RepoChange("org/p", {"a": b"x"}, parent_commit="0" * 40)])
    with pytest.raises(ConflictError):
        hub.publish([RepoChange("org/new", {"a": b"x"}, parent_commit=c1)])  # expects a head, none exists
    c2 = hub.publish([RepoChange("org/p", {"a": b"2"}, parent_commit=c1)])["org/p"]
    assert hub.head("org/p") == c2 and hub.list_repos() == ["org/p"]


def test_publish_over_several_repos_is_all_or_nothing(hub, hub_fingerprint):
    heads = hub.publish([RepoChange("org/a", {"x": b"a1"}), RepoChange("org/b", {"x": b"b1"})])
    before = hub_fingerprint(hub.root)
    with pytest.raises(ConflictError):
        hub.publish([
            RepoChange("org/a", {"x": b"a2"}, parent_commit=heads["org/a"]),
            RepoChange("org/b", {"x": b"b2"}, parent_commit="0" * 40),  # stale
        ])
    assert hub_fingerprint(hub.root) == before
    new = hub.publish([
        RepoChange("org/a", {"x": b"a2"}, parent_commit=heads["org/a"]),
        RepoChange("org/b", {"x": b"b2"}, parent_commit=heads["org/b"]),
    ])
    assert hub.read_file("org/a", "x") == b"a2" and hub.read_file("org/b", "x") == b"b2"
    assert {r: hub.head(r) for r in new} == new


@pytest.mark.parametrize("path", ["../x", "/abs", "a//b", "a/./b", "a\\b", ".fiun/x", "", "a/../b", "x\x00y"])
def test_publish_refuses_unsafe_paths(hub, hub_fingerprint, path):
    before = hub_fingerprint(hub.root)
    with pytest.raises(BadInput):
        hub.publish([RepoChange("org/a", {path: b"x"})])
    assert hub_fingerprint(hub.root) == before


@pytest.mark.parametrize("repo", ["../etc", "/abs/x", "org/x/y", "org", "org--a/b", "a/b--c", "org/..", "./x"])
def test_publish_refuses_bad_repo_ids(hub, hub_fingerprint, repo):
    before = hub_fingerprint(hub.root)
    with pytest.raises(InvalidRepoId):
        hub.publish([RepoChange(repo, {"x": b"x"})])
    assert hub_fingerprint(hub.root) == before


def test_publish_refuses_a_path_that_is_both_file_and_folder(hub, hub_fingerprint):
    """A tree holding ``a`` and ``a/b`` cannot be a snapshot folder; it must be refused as bad input, cleanly.

    BUG (fiun_hub/hub/local.py, publish/_make_snapshot): the tree is not checked, so os.symlink raises a raw
    FileExistsError half-way through, leaving an orphan blob and a ``snapshots/.tmp-*`` folder behind.
    """
    hub.publish([RepoChange("org/a", {"x": b"1"})])
    before = hub_fingerprint(hub.root)
    with pytest.raises(BadInput):
        hub.publish([RepoChange("org/a", {"a": b"1", "a/b": b"2"})])
    assert hub_fingerprint(hub.root) == before


# ---------------------------------------------------------------------------- lock and concurrent writers
def test_lock_excludes_a_second_writer(hub):
    other = LocalHub(hub.root)
    with hub.lock():
        with pytest.raises(ConflictError, match="locked"):
            with other.lock(timeout=0.2):
                pass
    with other.lock(timeout=0.2):  # free again
        pass


_WRITER = textwrap.dedent("""
    import os, sys, time
    from fiun_hub.errors import ConflictError
    from fiun_hub.hub.local import LocalHub, RepoChange
    root, parent, who, go = sys.argv[1:]
    hub = LocalHub(root)
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.002)
    try:
        cid = hub.publish([RepoChange("org/shared", {"w.bin": os.urandom(1 << 20), "who": who.encode()},
                                      f"by {who}", parent_commit=parent)])["org/shared"]
        print("ok", cid)
    except ConflictError as exc:
        print("conflict", exc)
""")


def test_two_processes_with_the_same_parent_one_wins(hub, tmp_path):
    base = hub.publish([RepoChange("org/shared", {"who": b"nobody"})])["org/shared"]
    go = tmp_path / "go"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(hub.root), base, who, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for who in ("w1", "w2")]
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    outcomes = sorted(r[0].split()[0] for r in results)
    assert outcomes == ["conflict", "ok"], results
    winner = next(r[0].split()[1] for r in results if r[0].startswith("ok"))
    assert hub.head("org/shared") == winner
    assert [c.id for c in hub.history("org/shared")] == [winner, base]
    assert len(hub.commits("org/shared")) == 2
    assert len(blobs(hub, "org/shared")) == 3  # nobody, the winner's name and weights; nothing of the loser
    assert not (hub.root / ".fiun" / "journal.json").exists()


# ---------------------------------------------------------------------------- crash recovery
def _crashed_after_journal(hub: LocalHub, moved: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Build the state a publish of org/a and org/b leaves when killed after writing its journal:
    blobs, commits and snapshots stored, the journal on disk, refs (other than ``moved``) and the lineage
    index still old. Returns (old heads, new heads)."""
    old = hub.publish([RepoChange("org/a", {"x": b"a1"}), RepoChange("org/b", {"x": b"b1"})])
    index_before = (hub.root / ".fiun" / "lineage.json").read_bytes()
    new = hub.publish([RepoChange("org/a", {"x": b"a2"}), RepoChange("org/b", {"x": b"b2"})])
    for repo in ("org/a", "org/b"):
        if repo not in moved:
            (hub.repo_dir(repo) / "refs" / "main").write_bytes(old[repo].encode())
    (hub.root / ".fiun" / "lineage.json").write_bytes(index_before)
    journal = {"moves": [{"repo": r, "ref": "main", "old": old[r], "new": new[r]} for r in ("org/a", "org/b")],
               "time": "2026-01-01T00:00:00.000000Z"}
    (hub.root / ".fiun" / "journal.json").write_text(json.dumps(journal))
    return old, new


@pytest.mark.parametrize("moved", [(), ("org/a",)], ids=["before-any-move", "half-moved"])
def test_opening_the_hub_finishes_an_interrupted_publish(hub, moved):
    old, new = _crashed_after_journal(hub, moved)
    # Until recovery, readers see a consistent old or half state; nothing is unreadable.
    stale = LocalHub(hub.root, recover=False)
    assert stale.read_file("org/b", "x") == b"b1"
    assert (hub.root / ".fiun" / "journal.json").exists()

    reopened = LocalHub(hub.root)
    assert not (hub.root / ".fiun" / "journal.json").exists()
    assert {r: reopened.head(r) for r in new} == new
    assert reopened.read_file("org/a", "x") == b"a2" and reopened.read_file("org/b", "x") == b"b2"
    for repo in new:
        assert (reopened.repo_dir(repo) / "refs" / "main").read_bytes() == new[repo].encode()
    index = read_index_file(reopened)
    assert {r: index[r]["head"] for r in new} == new
    assert index == rebuild_index(reopened)


def test_a_writer_holding_the_hub_open_finishes_the_journal_first(hub):
    old, new = _crashed_after_journal(hub)
    # ``hub`` was opened before the crash; its next write takes the lock, which completes the journal.
    c3 = hub.publish([RepoChange("org/a", {"x": b"a3"}, parent_commit=new["org/a"])])["org/a"]
    assert hub.head("org/b") == new["org/b"]
    assert hub.commit_info("org/a").parents == [new["org/a"]] and hub.head("org/a") == c3


def test_a_torn_journal_is_dropped_and_heads_stay(hub):
    old = hub.publish([RepoChange("org/a", {"x": b"a1"})])
    (hub.root / ".fiun" / "journal.json").write_text('{"moves": [{"repo": "org/a", "ref": "ma')
    reopened = LocalHub(hub.root)
    assert not (hub.root / ".fiun" / "journal.json").exists()
    assert reopened.head("org/a") == old["org/a"]


def test_a_reader_sees_the_heads_before_an_unfinished_publish(hub):
    """While a journal exists (here: left by a crash after 2 of 3 ref moves, one of them creating org/c), a
    reader that does not finish it reports the heads the journal records as ``old``: the publish has not landed."""
    created = hub.publish([RepoChange("org/c", {"x": b"c"})])["org/c"]  # its ref: the creation already moved
    old, new = _crashed_after_journal(hub, moved=("org/a",))
    journal = hub.root / ".fiun" / "journal.json"
    moves = json.loads(journal.read_text())["moves"] + [{"repo": "org/c", "ref": "main", "old": None, "new": created}]
    journal.write_text(json.dumps({"moves": moves}))
    reader = LocalHub(hub.root, recover=False)
    assert reader.heads() == old
    assert reader.heads(["org/a", "org/b"]) == old
    assert {r: reader.head(r) for r in old} == old and reader.resolve("org/a", "main") == old["org/a"]
    assert reader.refs("org/a")["branches"] == {"main": old["org/a"]}
    assert reader.read_file("org/a", "x") == b"a1"
    assert "org/c" not in reader.list_repos() and not reader.repo_exists("org/c")
    with pytest.raises(RepoNotFound):
        reader.head("org/c")
    with pytest.raises(RepoNotFound):
        reader.heads(["org/a", "org/c"])
    generation = reader.generation()
    reopened = LocalHub(hub.root)  # recovery lands the publish and bumps the generation
    assert reopened.generation() == generation + 1
    assert reopened.heads(["org/a", "org/b", "org/c"]) == {**new, "org/c": created}
    assert reader.heads(["org/a", "org/b"]) == new and reader.repo_exists("org/c")


def test_heads_is_redone_when_a_publish_lands_during_the_read(hub, monkeypatch):
    """A seqlock, not a lock: a publish of the whole set that lands between two ref reads makes heads() read
    again, so it returns one whole set, never the first repo's old head with the second's new one."""
    first = hub.publish([RepoChange("org/a", {"x": b"a1"}), RepoChange("org/b", {"x": b"b1"})])
    reader, writer = LocalHub(hub.root), LocalHub(hub.root)
    real_read_ref, reads, landed = LocalHub._read_ref, [], {}

    def read_ref(self, path):
        value = real_read_ref(self, path)
        if self is reader:
            reads.append(value)
            if len(reads) == 1:  # between the reads of org/a's and org/b's refs, a publish of both lands
                landed.update(writer.publish([RepoChange(r, {"x": b"2"}, parent_commit=first[r]) for r in first]))
        return value

    monkeypatch.setattr(LocalHub, "_read_ref", read_ref)
    assert reader.heads(["org/a", "org/b"]) == landed
    assert len(reads) == 4 and reads[0] == first["org/a"]  # the first read straddled the publish: done again


def test_a_ref_moved_by_a_publish_in_progress_reads_as_before_it(hub, monkeypatch):
    """During the ref moves of a publish (refs renamed one by one), another handle's head(), heads() and refs()
    report the heads before it, for every repo, until the journal goes; the writer reads what it wrote."""
    first = hub.publish([RepoChange(r, {"x": r.encode()}) for r in ("org/a", "org/b", "org/c")])
    reader = LocalHub(hub.root)
    seen = []
    real_write_ref = LocalHub._write_ref

    def write_ref(self, repo, ref, cid, fsync=True):
        real_write_ref(self, repo, ref, cid, fsync)
        seen.append(({r: reader.head(r) for r in first}, reader.heads(), reader.refs(repo)["branches"]["main"],
                     self.head(repo)))

    monkeypatch.setattr(LocalHub, "_write_ref", write_ref)
    second = hub.publish([RepoChange(r, {"x": b"2"}, parent_commit=first[r]) for r in first])
    assert len(seen) == 3
    for (moved, repo_cid), (per_ref, whole, ref, own) in zip(second.items(), seen):
        assert per_ref == first and whole == first and ref == first[moved] and own == repo_cid
    assert reader.heads() == second


def test_the_lock_of_one_handle_excludes_its_other_threads(hub):
    """One LocalHub shared by threads (a server): the writers' lock is re-entrant for the thread holding it only;
    another thread waits (here: gives up), and reads from it go through the journal like any reader's."""
    import threading

    first = hub.publish([RepoChange("org/a", {"x": b"1"})])
    second = hub.publish([RepoChange("org/a", {"x": b"2"})])  # refs/main: the second; the journal: the first
    seen = {}

    def other():
        try:
            with hub.lock(timeout=0.2):
                seen["locked"] = True
        except ConflictError:
            seen["locked"] = False
        seen["head"] = hub.head("org/a")

    with hub.lock():
        journal = {"moves": [{"repo": "org/a", "ref": "main", "old": first["org/a"], "new": second["org/a"]}]}
        (hub.root / ".fiun" / "journal.json").write_text(json.dumps(journal))  # a publish in the middle of it
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert hub.head("org/a") == second["org/a"]  # the writer's own thread reads the refs as they are
        (hub.root / ".fiun" / "journal.json").unlink()
    assert seen == {"locked": False, "head": first["org/a"]}


def test_the_generation_moves_with_every_set_of_ref_moves(hub):
    assert hub.generation() == 0
    a = hub.publish([RepoChange("org/a", {"x": b"1"})])["org/a"]
    assert hub.generation() == 1
    hub.tag("org/a", "v1", a)
    assert hub.generation() == 2
    hub.read_file("org/a", "x")
    hub.heads()
    assert hub.generation() == 2  # reads write nothing


# ---------------------------------------------------------------------------- interop with the real readers
@pytest.fixture
def pushed(hub, model_folder):
    """org/net with two revisions of real timm weights (tagged v1 on the first)."""
    from fiun_hub.repo import push_folder

    f1, f2 = model_folder(seed=1), model_folder(seed=2)
    r1 = push_folder(hub, f1, "org/net")["revision"]
    hub.tag("org/net", "v1")
    r2 = push_folder(hub, f2, "org/net")["revision"]
    return {"hub": hub, "revs": (r1, r2), "folders": (f1, f2)}


def test_hf_hub_download_reads_every_revision_offline(pushed):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub, (r1, r2), (f1, f2) = pushed["hub"], pushed["revs"], pushed["folders"]
    for rev, folder in ((r1, f1), (r2, f2), ("main", f2), (None, f2), ("tags/v1", f1)):
        for name in ("config.json", "model.safetensors"):
            path = hf_hub_download("org/net", name, cache_dir=hub.root, local_files_only=True, revision=rev)
            assert Path(path).read_bytes() == (folder / name).read_bytes(), (rev, name)
    card = hf_hub_download("org/net", "README.md", cache_dir=hub.root, local_files_only=True, revision=r1)
    assert Path(card).read_bytes() == hub.read_file("org/net", "README.md", r1)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/net", "config.json", cache_dir=hub.root, local_files_only=True, revision="e" * 40)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/absent", "config.json", cache_dir=hub.root, local_files_only=True)


def test_snapshot_download_gives_exactly_the_snapshot(pushed):
    from huggingface_hub import snapshot_download

    hub, (r1, r2), _ = pushed["hub"], pushed["revs"], pushed["folders"]
    for rev in (r1, r2, None):
        folder = Path(snapshot_download("org/net", cache_dir=hub.root, local_files_only=True, revision=rev))
        cid = rev or r2
        assert folder == hub.repo_dir("org/net") / "snapshots" / cid
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
        assert files == hub.list_files("org/net", cid)


def test_scan_cache_dir_lists_the_repos(pushed):
    from huggingface_hub import scan_cache_dir

    hub, (r1, r2), _ = pushed["hub"], pushed["revs"], pushed["folders"]
    hub.publish([RepoChange("org/other", {"x": b"x"})])
    info = scan_cache_dir(hub.root)
    assert len(info.warnings) == 1 and ".fiun" in str(info.warnings[0])
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {"org/net", "org/other"}
    net = repos["org/net"]
    assert net.repo_type == "model"
    assert {r.commit_hash for r in net.revisions} == {r1, r2}
    refs = {r.commit_hash: set(r.refs) for r in net.revisions}
    assert refs == {r1: {"tags/v1"}, r2: {"main"}}
    assert net.size_on_disk == sum(p.stat().st_size for p in (hub.repo_dir("org/net") / "blobs").iterdir())
    assert {f.file_name for r in net.revisions for f in r.files} == {"config.json", "model.safetensors", "README.md"}


def test_timm_loads_exactly_the_pushed_weights(pushed):
    import timm
    import torch
    from safetensors.torch import load_file

    hub, (r1, r2), (f1, f2) = pushed["hub"], pushed["revs"], pushed["folders"]
    for spec, folder in ((f"org/net@{r1}", f1), (f"org/net@{r2}", f2), ("org/net", f2)):
        model = timm.create_model(f"hf-hub:{spec}", pretrained=True, cache_dir=hub.root)
        want = load_file(folder / "model.safetensors")
        got = model.state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want), spec
        assert model.num_classes == 3
        assert model.pretrained_cfg.get("label_names") == ["cat", "dog", "bird"]
    r1_state = load_file(f1 / "model.safetensors")
    r2_state = load_file(f2 / "model.safetensors")
    assert not torch.equal(r1_state["fc.weight"], r2_state["fc.weight"])  # the revisions really differ


# ---------------------------------------------------------------------------- ids
ID_ALPHABET = "abZ09._-/\\\n :@~"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=ID_ALPHABET, max_size=14) | st.text(max_size=14))
@example("org/name\n")
@example("a/b\n")
@example("../etc")
@example("/a/b")
def test_validate_repo_id_property(candidate):
    try:
        repo = validate_repo_id(candidate)
    except InvalidRepoId:
        return
    assert repo == candidate
    assert not any(c.isspace() for c in repo), f"accepted whitespace in {repo!r}"
    assert ".." not in repo and "--" not in repo
    assert not repo.startswith("/") and repo.count("/") == 1 and "\\" not in repo
    folder = repo_folder_name(repo)
    assert "/" not in folder and folder not in (".", "..") and "\n" not in folder
    assert repo_from_folder(folder) == repo


_PART = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,10}[A-Za-z0-9_])?", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(_PART, _PART)
def test_every_well_formed_id_round_trips(org, name):
    repo = f"{org}/{name}"
    if ".." in repo or "--" in repo:
        with pytest.raises(InvalidRepoId):
            validate_repo_id(repo)
        return
    assert validate_repo_id(repo) == repo
    assert repo_from_folder(repo_folder_name(repo)) == repo


def test_repo_ids_with_a_trailing_newline_are_refused():
    """BUG (fiun_hub/hub/ids.py:8-11): the id/ref/commit regexes end in ``$``, which also matches before a final
    newline, so ``'org/name\\n'`` is accepted and becomes the folder ``models--org--name\\n``. Use re.fullmatch
    (or ``\\Z``) for REPO_ID_RE, COMMIT_RE and REF_NAME_RE."""
    with pytest.raises(InvalidRepoId):
        validate_repo_id("org/name\n")
    with pytest.raises(BadInput):
        validate_ref_name("v1\n")
    with pytest.raises(BadInput):
        split_repo_rev("org/name@v1\n")


def test_split_repo_rev_and_paths():
    assert split_repo_rev("org/x") == ("org/x", None)
    assert split_repo_rev("org/x@abc1234") == ("org/x", "abc1234")
    assert split_repo_rev("org/x@tags/v1") == ("org/x", "tags/v1")
    for bad in ("org/x@", "org/x@../y", "org@v1", "org/x/y@v1"):
        with pytest.raises(BadInput):
            split_repo_rev(bad)
    assert validate_repo_path("sub/dir/file.bin") == "sub/dir/file.bin"
    assert REPO_ID_RE.match("a/b")
