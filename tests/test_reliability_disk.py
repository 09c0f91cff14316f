"""A full file system, and a push whose parent is forgotten while it waits for the writers' lock.

Full disk (issue 12, item 12): the hub lives on a real, small tmpfs (``mount -t tmpfs -o size=..,nr_inodes=..``;
we run as root here and in CI), so the kernel itself answers ENOSPC. Out of bytes: the tmpfs is sized to hold the
hub and not a forget's new weights. Out of inodes exactly when refs move: the tmpfs has room, and the test fills its
remaining inodes with empty ballast files the moment the publish's journal is written (a wrapper around
``atomic_write``, the kill tests' hook), so the first ref move is refused by the kernel. Where mounting is not
permitted the tests are skipped with the reason.

Parent pins under the lock (item 15): a forked process holds the writers' lock and runs a forget of the parent while
a second forked process pushes a child of it; the push resolves its pin before the forget lands and takes the lock
after. See docs/reliability.md, "Full disk" and "Parent pins".
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import base_and_child_hub, fingerprint
from fiun_hub.hub.local import LocalHub

IN = (1, 16, 16)
LABELS = [str(i) for i in range(10)]
ARCH = "test_efficientnet"  # the smallest timm model (417 KB of weights)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """h/base -> h/child, real timm weights with sidecars; copied for every test."""
    from fiun_hub.models import save_model_folder
    from fiun_hub.research.scenarios import new_model

    root = tmp_path_factory.mktemp("disk")
    built = base_and_child_hub(root, ARCH, 40, IN)
    hub, base = built["hub"], built["base"]
    folder = save_model_folder(new_model(ARCH, 10, 1, 3), root / "folder", LABELS, input_size=IN)
    return {"hub": hub.root, "base": base, "folder": folder}


def _cli(hub: Path, *args: str):
    """The CLI in-process: (exit code, stdout, stderr); an uncaught exception (a traceback) fails the test."""
    from click.testing import CliRunner

    from fiun_hub_cli.main import main

    res = CliRunner().invoke(main, ["--hub", str(hub), *map(str, args)], env={"FIUN_HUB": None})
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"traceback from {args}: {res.exception!r}") from res.exception
    return res.exit_code, res.stdout, res.stderr


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fiun-hub: error: "), err
    return lines[0]


@contextlib.contextmanager
def tmpfs(where: Path, size_kb: int, inodes: int):
    """A real tmpfs of ``size_kb`` KiB and ``inodes`` inodes at ``where`` (skips the test where mounting is refused)."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,nr_inodes={inodes}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(res.stderr or res.stdout).strip() or res.returncode}): the "
                    "full-disk tests need a real small file system (root, or CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _resize(where: Path, size_kb: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(where)], check=True, capture_output=True)


def _used_kb(where: Path) -> int:
    st = os.statvfs(where)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def _heads(hub: Path) -> dict[str, str]:
    return LocalHub(hub, recover=False).heads()


def _reads_work(hub: Path, heads: dict[str, str]) -> None:
    """Read-only commands answer from the heads ``heads`` (what the hub was before), with exit 0."""
    code, out, err = _cli(hub, "lineage")
    assert code == 0 and "h/child" in out, err
    code, out, err = _cli(hub, "--json", "show", "h/child")
    assert code == 0 and json.loads(out)["revision"] == heads["h/child"], err
    code, out, err = _cli(hub, "--json", "log", "h/base")
    assert code == 0 and json.loads(out)[0]["revision"] == heads["h/base"], err


def test_out_of_bytes_during_a_forget_is_one_line_and_changes_nothing(template, tmp_path):
    with tmpfs(tmp_path / "fs", 16 << 10, 4096) as fs:
        shutil.copytree(template["hub"], fs / "hub", symlinks=True)
        hub = fs / "hub"
        _resize(fs, _used_kb(fs) + 192)  # room for the cards, not for the new weights
        before, heads = fingerprint(hub), _heads(hub)
        code, out, err = _cli(hub, "forget", "--origin", "h/base", "--classes", "3")
        line = _one_line(err)
        assert code == 2 and "no space left on device" in line and "nothing was published" in line, line
        assert fingerprint(hub) == before  # byte-identical: what the forget staged is gone again
        _reads_work(hub, heads)  # the disk is still full
        code, out, err = _cli(hub, "verify")
        assert code == 0, out + err
        _resize(fs, 16 << 10)
        code, out, err = _cli(hub, "--json", "forget", "--origin", "h/base", "--classes", "3")
        assert code == 0, err
        assert set(json.loads(out)["revisions"]) == {"h/base", "h/child"}


def test_out_of_inodes_when_refs_move_completes_on_the_next_write(template, tmp_path, monkeypatch):
    import fiun_hub.hub.local as L

    with tmpfs(tmp_path / "fs", 16 << 10, 1000) as fs:
        shutil.copytree(template["hub"], fs / "hub", symlinks=True)
        hub = fs / "hub"
        ballast = fs / "ballast"
        heads = _heads(hub)
        real_write = L.atomic_write
        filled = []

        def write(path, data, fsync=True):
            real_write(path, data, fsync)
            if Path(path).name == "journal.json" and not filled:  # fill every inode left, right now
                ballast.mkdir()
                with contextlib.suppress(OSError):
                    while True:
                        (ballast / str(len(filled))).touch()
                        filled.append(1)

        monkeypatch.setattr(L, "atomic_write", write)
        code, out, err = _cli(hub, "forget", "--origin", "h/base", "--classes", "3", "--request-id", "disk-full")
        monkeypatch.setattr(L, "atomic_write", real_write)
        line = _one_line(err)
        assert filled and code == 2, (code, line)
        assert "no space left on device" in line and "completes on the next fiun-hub command that writes" in line
        assert (hub / ".fiun" / "journal.json").is_file()

        # While the disk stays full: reads answer as before the forget, verify names the journal, writes say why.
        _reads_work(hub, heads)
        code, out, err = _cli(hub, "verify")
        assert code == 1 and out.strip().splitlines() == [
            "unfinished publish journal in .fiun/journal.json (open the hub with a write to finish it)"], out + err
        code, out, err = _cli(hub, "tag", "h/base", "v1")
        assert code == 2 and "no space left on device" in _one_line(err) and "h/base, h/child" in err
        assert _heads(hub) == heads

        # Space again: the next write lands the forget whole, then its own change.
        shutil.rmtree(ballast)
        code, out, err = _cli(hub, "tag", "h/base", "v1")
        assert code == 0, err
        assert not (hub / ".fiun" / "journal.json").exists()
        h = LocalHub(hub)
        for repo, old in heads.items():
            info = h.commit_info(repo)
            assert info.parents == [old] and "disk-full" in info.message
        assert h.refs("h/base")["tags"]["v1"] == h.head("h/base")
        code, out, err = _cli(hub, "verify")
        assert code == 0, out + err


# ------------------------------------------------------------------------------------------------ parent pins
def _wait_for(path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def _forget_holding_the_lock(root: str, locked: str, waiting: str) -> None:
    """Take the writers' lock, wait until the pusher has resolved its pins and waits for the lock, then forget."""
    from fiun_hub.unlearn import plan_forget, run_forget

    hub = LocalHub(root)
    with hub.lock():
        Path(locked).touch()
        _wait_for(waiting)
        run_forget(hub, plan_forget(hub, ["h/base"], "3", request_id="race-3"))


def _push_waiting(root: str, folder: str, spec: str, locked: str, waiting: str, out: str) -> None:
    """Push a child of h/base once the forget holds the lock; say when the push starts waiting for the lock."""
    import fiun_hub.hub.local as L

    _wait_for(locked)
    real_lock = L.LocalHub.lock

    def lock(self, *args, **kwargs):
        Path(waiting).touch()  # the pins are resolved: the push's publish now waits for the forget's lock
        return real_lock(self, *args, **kwargs)

    L.LocalHub.lock = lock
    code, stdout, stderr = _cli(Path(root), "push", folder, "h/new", "--parent", spec)
    Path(out).write_text(json.dumps([code, stdout, stderr]))


def _race(template, tmp_path, spec: str) -> tuple[int, str, str, str, str]:
    """(exit code, stdout, stderr of the push, h/base's head before and after the forget)."""
    from test_reliability import _fork, _reap, _wait

    hub = tmp_path / "hub"
    shutil.copytree(template["hub"], hub, symlinks=True)
    old = LocalHub(hub).head("h/base")
    locked, waiting, out = (str(tmp_path / n) for n in ("locked", "waiting", "out.json"))
    pids = [_fork(_forget_holding_the_lock, str(hub), locked, waiting),
            _fork(_push_waiting, str(hub), str(template["folder"]), spec.format(old=old), locked, waiting, out)]
    try:
        assert [_wait(pid, 300) for pid in pids] == [0, 0]
    finally:
        _reap(pids)
    code, stdout, stderr = json.loads(Path(out).read_text())
    new = LocalHub(hub).head("h/base")
    assert new != old and "race-3" in LocalHub(hub).commit_info("h/base").message
    return code, stdout, stderr, old, new


def test_push_with_an_unpinned_parent_forgotten_meanwhile_pins_the_new_head(template, tmp_path):
    from fiun_hub.repo import read_meta

    code, stdout, stderr, old, new = _race(template, tmp_path, "h/base")
    assert code == 0, stderr
    assert stderr.strip() == (f"fiun-hub: note: --parent h/base: pinned to its new head {new[:12]} (forget request "
                              f"race-3 landed while this push waited; its head was {old[:12]})")
    hub = LocalHub(tmp_path / "hub")
    assert [(p.repo, p.revision) for p in read_meta(hub, "h/new").parents] == [("h/base", new)]
    code, out, err = _cli(hub.root, "lineage", "--check")
    assert code == 0, out  # not derived from a pre-forget revision (a no-sidecar note may name it)
    assert not [line for line in out.splitlines() if "h/new" in line and not line.startswith("note:")], out


def test_push_pinned_to_a_revision_forgotten_meanwhile_is_refused(template, tmp_path):
    code, stdout, stderr, old, new = _race(template, tmp_path, "h/base@{old}")
    line = _one_line(stderr)
    assert code == 2 and f"h/base@{old[:12]} was superseded by forget request race-3" in line, line
    assert f"h/base@{new[:12]}" in line
    assert not LocalHub(tmp_path / "hub").repo_exists("h/new")
