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
import torch

from conftest import fingerprint
from fiun_hub.constants import CARD_FILE
from fiun_hub.hub.local import LocalHub

IN = (1, 16, 16)
LABELS = [str(i) for i in range(10)]
ARCH = "test_efficientnet"  # the smallest timm model (417 KB of weights)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """h/base -> h/child, real timm weights with sidecars; copied for every test."""
    from fiun_hub.data import load_data
    from fiun_hub.models import save_model_folder
    from fiun_hub.scenarios import new_model, push_model, torch_threads

    root = tmp_path_factory.mktemp("disk")
    hub = LocalHub.init(root / "hub")
    data = load_data("digits:train", in_chans=1, input_size=IN[1:]).to_label_space(LABELS).subset(torch.arange(40))
    with torch_threads(1):
        base = push_model(hub, new_model(ARCH, 10, 1, 1), "h/base", LABELS, input_size=IN, fim_data=data,
                          data_spec="d")["revision"]
        push_model(hub, new_model(ARCH, 10, 1, 2), "h/child", LABELS, input_size=IN, parents=[f"h/base@{base}"],
                   fim_data=data, data_spec="d")
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
