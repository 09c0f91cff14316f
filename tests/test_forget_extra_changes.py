"""`run_forget(extra_changes=, purge=)`: what compliance adds to a forget (the ledger record, the tombstones) lands
in the forget's own publish, all or nothing, with no hub subclass.

On a real hub (h/base -> h/child, untrained test_resnet weights with real sidecars): an extra change built from the
forget's changes is committed with the new revisions; an extra change that cannot be built leaves the hub
byte-identical (the staged weights discarded too).
"""
from __future__ import annotations

import json

import pytest

from conftest import base_and_child_hub, fingerprint
from fiun_hub.constants import WEIGHTS_FILE
from fiun_hub.hub.base import RepoChange
from fiun_hub.unlearn import plan_forget, run_forget

IN = (1, 16, 16)
EXTRA = "x/record"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return base_and_child_hub(tmp_path_factory.mktemp("extra"), "test_resnet", 40, IN)


def _copy(built, tmp_path):
    import shutil

    from fiun_hub.hub.local import LocalHub

    shutil.copytree(built["hub"].root, tmp_path / "hub", symlinks=True)
    return LocalHub(tmp_path / "hub")


def test_extra_changes_land_in_the_forgets_publish(built, tmp_path):
    hub = _copy(built, tmp_path)
    seen: list[list[str]] = []

    def extra(changes: list[RepoChange]) -> list[RepoChange]:
        seen.append(sorted(ch.repo for ch in changes))
        body = {ch.repo: {"from": ch.parent_commit, "weights": getattr(ch.files[WEIGHTS_FILE], "sha256", None)}
                for ch in changes}
        return [RepoChange(EXTRA, {"record.json": json.dumps(body, sort_keys=True).encode()}, "record",
                           parent_commit="")]

    plan = plan_forget(hub, ["h/base"], ["3"])
    result = run_forget(hub, plan, extra_changes=extra)
    assert seen == [["h/base", "h/child"]]
    record = json.loads(hub.read_file(EXTRA, "record.json"))
    for repo in ("h/base", "h/child"):
        new = result.revisions[repo]["to"]
        assert hub.head(repo) == new
        assert record[repo]["from"] == result.revisions[repo]["from"]
        assert record[repo]["weights"] == hub.list_files(repo, new)[WEIGHTS_FILE]
    assert EXTRA not in result.revisions  # the forget's result names only its own repos


def test_a_failing_extra_change_publishes_nothing(built, tmp_path):
    hub = _copy(built, tmp_path)
    plan = plan_forget(hub, ["h/base"], ["3"])
    before = fingerprint(hub.root)

    def extra(changes):
        raise RuntimeError("the ledger cannot be written")

    with pytest.raises(RuntimeError, match="ledger cannot be written"):
        run_forget(hub, plan, extra_changes=extra)
    assert fingerprint(hub.root) == before  # no new revision, no staged blob left behind

