"""The CLI over a hub: init, push, show, log, tag, lineage (all formats, --up/--down, -o, --check), --json on
every command, and bad input of every kind -> one line on stderr, exit 2, nothing written.

A few tests run the real console script in a subprocess; the rest call the same click entry point in-process
(each subprocess pays for importing torch and timm)."""
from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from fiun_hub.card import parse_card
from fiun_hub.hub.local import LocalHub, RepoChange
from fiun_hub.lineage import read_index_file
from fiun_hub.repo import push_folder

HEX40 = re.compile(r"[0-9a-f]{40}")


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fiun-hub: error: ") and len(lines[0]) > len("fiun-hub: error: ") + 5
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A hub with org/base (tagged v1) <- org/child, and model folders good and bad."""
    import timm
    import torch

    from fiun_hub.models import save_model_folder

    root = tmp_path_factory.mktemp("cli")

    def save(name: str, seed: int, labels=("cat", "dog", "bird")) -> Path:
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=len(labels), in_chans=1)
        return save_model_folder(model, root / name, list(labels), input_size=(1, 16, 16))

    hub = LocalHub.init(root / "hub")
    f = {n: save(n, i) for i, n in enumerate(["base", "child", "good", "other"])}
    base = push_folder(hub, f["base"], "org/base")["revision"]
    hub.tag("org/base", "v1")
    child = push_folder(hub, f["child"], "org/child", parents=["org/base"])["revision"]

    bad = {}
    for name, damage in {
        "no-config": lambda d: (d / "config.json").unlink(),
        "no-weights": lambda d: (d / "model.safetensors").unlink(),
        "truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-1000]),
        "short-header": lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 10 ** 6) + b"{"),
        "config-not-json": lambda d: (d / "config.json").write_text("{architecture: test_resnet"),
        "config-no-arch": lambda d: (d / "config.json").write_text('{"num_classes": 3}'),
        "config-unknown-arch": lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"test_resnet"', '"no_such_net"')),
        "bad-card": lambda d: (d / "README.md").write_text("---\nbase_model: [unclosed\n  - x: :\n---\n# hi\n"),
        "bad-card-schema": lambda d: (d / "README.md").write_text("---\nbase_model_relation: distill\n---\n"),
    }.items():
        d = root / name
        shutil.copytree(f["good"], d)
        damage(d)
        bad[name] = d
    # Weights that do not fit the config (a 5-class head under a 3-class config).
    bad["mismatch"] = save("mismatch", 9, labels=("a", "b", "c", "d", "e"))
    shutil.copy(f["good"] / "config.json", bad["mismatch"] / "config.json")
    bad["missing-folder"] = root / "does-not-exist"
    return {"hub": hub.root, "base": base, "child": child, "folders": f, "bad": bad}


@pytest.fixture
def env(src, tmp_path):
    """A private copy of the hub; returns (hub path, info)."""
    dst = tmp_path / "hub"
    shutil.copytree(src["hub"], dst, symlinks=True)
    return dst, src


# ---------------------------------------------------------------------------- the real console script
def test_console_script_init_push_lineage_tag(run_cli, src, tmp_path):
    hub = tmp_path / "fresh"
    code, out, err = run_cli("--hub", hub, "init")
    assert code == 0 and "hub ready" in out and err == ""
    assert (hub / ".fiun" / "hub.json").is_file()

    code, out, err = run_cli("--hub", hub, "--json", "push", src["folders"]["base"], "acme/base", "-m", "first")
    assert code == 0, err
    pushed = json.loads(out)
    assert HEX40.fullmatch(pushed["revision"]) and pushed["message"] == "first" and pushed["is_head"]
    assert (hub / "models--acme--base" / "refs" / "main").read_bytes() == pushed["revision"].encode()

    h = LocalHub(hub)
    child = push_folder(h, src["folders"]["child"], "acme/child", parents=["acme/base"])["revision"]

    code, out, err = run_cli("lineage", "--format", "json", env={"FIUN_HUB": str(hub)})  # hub from $FIUN_HUB
    assert code == 0, err
    data = json.loads(out)
    assert {n["id"] for n in data["nodes"]} == {"acme/base", "acme/child"}
    assert [(e["source"], e["target"], e["revision"]) for e in data["links"]] == [
        ("acme/base", "acme/child", pushed["revision"])]
    assert {n["id"]: n["head"] for n in data["nodes"]} == {"acme/base": pushed["revision"], "acme/child": child}

    code, out, err = run_cli("--hub", hub, "--json", "tag", "acme/child", "v1")
    assert code == 0 and json.loads(out) == {"repo": "acme/child", "tag": "v1", "revision": child}


def test_console_script_bad_input_is_one_line_and_exit_2(run_cli, env, hub_fingerprint):
    hub, info = env
    before = hub_fingerprint(hub)
    line = one_error_line(*run_cli("--hub", hub, "lineage", "org/nope"))
    assert "org/nope" in line
    line = one_error_line(*run_cli("--hub", hub, "--json", "tag", "../etc", "v1"))
    assert "invalid repo id" in line
    assert hub_fingerprint(hub) == before


# ---------------------------------------------------------------------------- push
def test_push_with_parents_relation_and_message(cli, env):
    hub, info = env
    code, out, err = cli("--hub", hub, "--json", "push", info["folders"]["good"], "org/adapted",
                         "--parent", "org/child", "--parent", f"org/base@{info['base']}", "--relation", "adapter",
                         "-m", "adapter of two")
    assert code == 0, err
    data = json.loads(out)
    assert data["repo"] == "org/adapted" and data["message"] == "adapter of two" and data["relation"] == "adapter"
    assert data["parents"] == [{"repo": "org/child", "revision": info["child"]},
                               {"repo": "org/base", "revision": info["base"]}]
    assert set(data["files"]) == {"config.json", "model.safetensors", "README.md"}
    h = LocalHub(hub)
    card = parse_card(h.read_file("org/adapted", "README.md"))
    assert card.base_model == ["org/child", "org/base"] and card.relation == "adapter"
    text = h.read_file("org/adapted", "README.md").decode()
    assert "base_model:\n- org/child\n- org/base\n" in text and "base_model_relation: adapter" in text
    assert h.read_file("org/adapted", "model.safetensors") == (info["folders"]["good"] / "model.safetensors").read_bytes()
    assert read_index_file(h)["org/adapted"]["head"] == data["revision"]

    code, out, err = cli("--hub", hub, "push", info["folders"]["other"], "org/merged", "--parent", "org/base",
                         "--parent", "org/adapted")
    assert code == 0 and re.fullmatch(r"pushed org/merged@[0-9a-f]{40}\n", out), (out, err)
    merged = parse_card(h.read_file("org/merged", "README.md"))
    assert merged.relation == "merge"  # the default with several parents
    assert [p.revision for p in merged.parents] == [h.head("org/base"), data["revision"]]  # bare = head


def test_push_a_bare_parent_pins_its_head_then(cli, env):
    hub, info = env
    assert cli("--hub", hub, "push", info["folders"]["good"], "org/base")[0] == 0  # base moves on
    h = LocalHub(hub)
    new_base = h.head("org/base")
    assert new_base != info["base"]
    assert cli("--hub", hub, "push", info["folders"]["other"], "org/late", "--parent", "org/base")[0] == 0
    assert parse_card(h.read_file("org/late", "README.md")).parents[0].revision == new_base
    # org/child still pins the revision it was pushed against.
    assert parse_card(h.read_file("org/child", "README.md")).parents[0].revision == info["base"]


# ---------------------------------------------------------------------------- show, log, tag
def test_show_text_and_json(cli, env):
    hub, info = env
    code, out, err = cli("--hub", hub, "show", "org/child")
    assert code == 0, err
    assert out.startswith(f"org/child@{info['child']}  (head)")
    assert f"parents:  org/base@{info['base'][:12]}" in out and "relation: finetune" in out
    assert "labels:   cat, dog, bird" in out and "model.safetensors" in out
    code, out, err = cli("--hub", hub, "--json", "show", "org/base@v1")
    data = json.loads(out)
    assert data["revision"] == info["base"] and data["tags"] == ["v1"] and data["parents"] == []
    assert data["files"]["model.safetensors"]["size"] == (info["folders"]["base"] / "model.safetensors").stat().st_size


def test_log_and_tag(cli, env):
    hub, info = env
    assert cli("--hub", hub, "push", info["folders"]["good"], "org/base", "-m", "second")[0] == 0
    code, out, err = cli("--hub", hub, "--json", "log", "org/base")
    entries = json.loads(out)
    assert [e["message"] for e in entries] == ["second", "Push org/base"]
    assert entries[1]["revision"] == info["base"] and all(HEX40.fullmatch(e["revision"]) for e in entries)
    code, out, err = cli("--hub", hub, "log", "org/base", "-n", "1")
    assert code == 0 and len(out.splitlines()) == 1 and out.split()[0] == entries[0]["revision"][:12]

    code, out, err = cli("--hub", hub, "--json", "tag", "org/base", "v0", "--revision", info["base"])
    assert code == 0 and json.loads(out) == {"repo": "org/base", "tag": "v0", "revision": info["base"]}
    code, out, err = cli("--hub", hub, "tag", "org/base", "v1", "--force")
    assert code == 0 and "as v1" in out
    assert LocalHub(hub).refs("org/base")["tags"] == {"v0": info["base"], "v1": entries[0]["revision"]}


def test_json_on_every_command(cli, env, tmp_path):
    hub, info = env
    runs = {
        "init": cli("--hub", tmp_path / "new", "--json", "init"),
        "push": cli("--hub", hub, "--json", "push", info["folders"]["good"], "org/j"),
        "show": cli("--hub", hub, "--json", "show", "org/j"),
        "log": cli("--hub", hub, "--json", "log", "org/j"),
        "tag": cli("--hub", hub, "--json", "tag", "org/j", "t1"),
        "lineage": cli("--hub", hub, "--json", "lineage"),
        "check": cli("--hub", hub, "--json", "lineage", "--check"),
    }
    for name, (code, out, err) in runs.items():
        # no repo here has a sidecar (nor an ancestor with one): a forget would refuse, so --check fails
        assert code == (1 if name == "check" else 0), (name, err)
        json.loads(out)  # every command speaks JSON
    assert json.loads(runs["init"][1]) == {"hub": str((tmp_path / "new").absolute())}
    assert {(p["kind"], p["blocking"]) for p in json.loads(runs["check"][1])} == {("no-sidecar", True)}


# ---------------------------------------------------------------------------- lineage
def test_lineage_formats_and_directions(cli, env, tmp_path):
    hub, info = env
    assert cli("--hub", hub, "push", info["folders"]["good"], "org/grand", "--parent", "org/child")[0] == 0
    code, out, _ = cli("--hub", hub, "lineage")
    assert code == 0 and out.splitlines()[0].startswith("org/base [@")
    assert "└── org/child" in out and "org/grand" in out

    def ids(*args):
        code, out, err = cli("--hub", hub, "lineage", *args, "--format", "json")
        assert code == 0, err
        return {n["id"] for n in json.loads(out)["nodes"]}

    assert ids() == {"org/base", "org/child", "org/grand"}
    assert ids("org/child", "--up") == {"org/base", "org/child"}
    assert ids("org/child", "--down") == {"org/child", "org/grand"}
    assert ids("org/grand", "--up") == {"org/base", "org/child", "org/grand"}
    assert ids("org/base", "--down", "--rebuild") == {"org/base", "org/child", "org/grand"}

    code, out, _ = cli("--hub", hub, "lineage", "--format", "dot")
    assert out.startswith("digraph lineage {") and out.count("->") == 2
    code, out, _ = cli("--hub", hub, "lineage", "--format", "mermaid")
    assert out.startswith("graph TD") and out.count("-->|finetune|") == 2

    target = tmp_path / "dag.dot"
    code, out, _ = cli("--hub", hub, "lineage", "--format", "dot", "-o", target)
    assert code == 0 and out == f"wrote {target}\n" and target.read_text().startswith("digraph")

    png = tmp_path / "dag.png"
    code, out, err = cli("--hub", hub, "--json", "lineage", "org/child", "--format", "png", "-o", png)
    assert code == 0, err
    assert json.loads(out) == {"png": str(png), "nodes": 3, "edges": 2}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_lineage_check_exit_codes(cli, env):
    hub, info = env
    code, out, err = cli("--hub", hub, "lineage", "--check")
    # neither repo has a sidecar, nor an ancestor with one: what the forget's plan would refuse, with the fix
    assert code == 1 and "fiun-hub fim org/base --data SPEC" in out and "fiun-hub fim org/child --data SPEC" in out
    h = LocalHub(hub)
    h.publish([RepoChange("org/bad-pin", {"README.md": (
        f"---\nbase_model: org/base\nbase_model_relation: finetune\n"
        f"fiun: {{parents: [{{repo: org/base, revision: '{'9' * 40}'}}]}}\n---\n").encode()})])
    h.publish([RepoChange("org/orphan", {"README.md": (
        f"---\nbase_model: org/ghost\nbase_model_relation: finetune\n"
        f"fiun: {{parents: [{{repo: org/ghost, revision: '{'8' * 40}'}}]}}\n---\n").encode()})])
    code, out, err = cli("--hub", hub, "--json", "lineage", "--check")
    assert code == 1
    problems = [p for p in json.loads(out) if p["kind"] != "no-sidecar"]
    assert sorted((p["repo"], p["kind"]) for p in problems) == [("org/bad-pin", "unknown-revision"),
                                                                ("org/ghost", "missing-parent")]
    code, out, err = cli("--hub", hub, "lineage", "--check")
    assert code == 1 and "does not exist" in out and "not in the hub" in out


# ---------------------------------------------------------------------------- bad input
BAD_CASES = {
    # unknown repo or revision
    "show-unknown-repo": lambda i: ["show", "org/nope"],
    "show-unknown-short-rev": lambda i: ["show", "org/base@0123456"],
    "show-unknown-commit": lambda i: ["show", "org/base@" + "e" * 40],
    "show-unknown-tag": lambda i: ["show", "org/base@tags/nope"],
    "show-unknown-branch": lambda i: ["show", "org/base@dev"],
    "show-rev-named-tags": lambda i: ["show", "org/base@tags"],  # refs/tags is a folder, not a ref
    "log-rev-named-tags": lambda i: ["log", "org/base@tags"],
    "log-unknown-repo": lambda i: ["log", "org/nope"],
    "tag-unknown-repo": lambda i: ["tag", "org/nope", "v1"],
    "tag-unknown-rev": lambda i: ["tag", "org/base", "v9", "--revision", "f" * 40],
    "tag-exists": lambda i: ["tag", "org/base", "v1"],
    "tag-bad-name": lambda i: ["tag", "org/base", "../v1"],
    "lineage-unknown-repo": lambda i: ["lineage", "org/nope", "--up"],
    # ids that are not org/name
    "show-dotdot": lambda i: ["show", "../etc"],
    "show-abs": lambda i: ["show", "/etc/passwd"],
    "show-extra-slash": lambda i: ["show", "org/base/extra"],
    "show-empty-rev": lambda i: ["show", "org/base@"],
    "show-bad-rev": lambda i: ["show", "org/base@../../x"],
    "log-double-dash": lambda i: ["log", "org--x/y"],
    "push-dotdot": lambda i: ["push", i["folders"]["good"], "org/.."],
    "push-dotdot-org": lambda i: ["push", i["folders"]["good"], "../etc"],
    "push-abs": lambda i: ["push", i["folders"]["good"], "/abs/x"],
    "push-extra-slash": lambda i: ["push", i["folders"]["good"], "org/a/b"],
    "push-no-org": lambda i: ["push", i["folders"]["good"], "justaname"],
    "push-trailing-newline": lambda i: ["push", i["folders"]["good"], "org/name\n"],
    # folders
    "push-no-config": lambda i: ["push", i["bad"]["no-config"], "org/new"],
    "push-no-weights": lambda i: ["push", i["bad"]["no-weights"], "org/new"],
    "push-missing-folder": lambda i: ["push", i["bad"]["missing-folder"], "org/new"],
    "push-truncated": lambda i: ["push", i["bad"]["truncated"], "org/new"],
    "push-short-header": lambda i: ["push", i["bad"]["short-header"], "org/new"],
    "push-config-not-json": lambda i: ["push", i["bad"]["config-not-json"], "org/new"],
    "push-config-no-arch": lambda i: ["push", i["bad"]["config-no-arch"], "org/new"],
    "push-config-unknown-arch": lambda i: ["push", i["bad"]["config-unknown-arch"], "org/new"],
    "push-weights-mismatch": lambda i: ["push", i["bad"]["mismatch"], "org/new"],
    "push-bad-card-yaml": lambda i: ["push", i["bad"]["bad-card"], "org/new"],
    "push-bad-card-schema": lambda i: ["push", i["bad"]["bad-card-schema"], "org/base"],
    # lineage
    "push-cycle": lambda i: ["push", i["folders"]["good"], "org/base", "--parent", "org/child"],
    "push-self-parent": lambda i: ["push", i["folders"]["good"], "org/child", "--parent", "org/child"],
    "push-unknown-parent": lambda i: ["push", i["folders"]["good"], "org/new", "--parent", "org/ghost"],
    "push-unknown-parent-rev": lambda i: ["push", i["folders"]["good"], "org/new", "--parent",
                                          "org/base@" + "d" * 40],
    "push-bad-parent-id": lambda i: ["push", i["folders"]["good"], "org/new", "--parent", "../x"],
    "push-parent-twice": lambda i: ["push", i["folders"]["good"], "org/new", "--parent", "org/base",
                                    "--parent", "org/base@v1"],
    "push-relation-no-parent": lambda i: ["push", i["folders"]["good"], "org/new", "--relation", "merge"],
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_one_line_exit_2_nothing_written(cli, env, hub_fingerprint, case):
    hub, info = env
    before = hub_fingerprint(hub)
    for as_json in ((), ("--json",)):
        one_error_line(*cli("--hub", hub, *as_json, *BAD_CASES[case](info)))
    assert hub_fingerprint(hub) == before


def test_no_hub_and_non_empty_folder(cli, tmp_path):
    one_error_line(*cli("--hub", tmp_path / "absent", "show", "org/x"))
    assert not (tmp_path / "absent").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    one_error_line(*cli("--hub", tmp_path / "busy", "init"))
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    one_error_line(*cli("--hub", "hf://huggingface.co", "show", "org/x"))


def test_serve_over_a_remote_hub_is_one_line(cli):
    """`serve` serves a hub folder: with --hub hf://... it is one line naming that (it was a TypeError traceback),
    before any connection is tried (nothing listens on port 9)."""
    line = one_error_line(*cli("--hub", "hf://127.0.0.1:9", "serve", "--port", "0"))
    assert "needs a local hub folder" in line, line


@pytest.mark.parametrize("args", [
    ["lineage", "--format", "png"],  # png needs -o FILE
    ["push", "{good}/config.json", "org/new"],  # a file where a folder is expected
    ["push", "{good}", "org/new", "--parent", "org/base", "--relation", "distill"],
    ["lineage", "--format", "svg"],
], ids=["png-without-output", "push-a-file", "unknown-relation", "unknown-format"])
def test_usage_errors_are_one_line_too(cli, env, hub_fingerprint, args):
    """BUG (cli/main.py): errors that click raises itself (click.UsageError in ``lineage`` for png without -o,
    click.Path(file_okay=False) and click.Choice validation) bypass ``handled`` and print click's four-line
    "Usage: ... Try ... Error: ..." block instead of the contract's one ``fiun-hub: error:`` line (exit code is
    2 already). Fix: raise BadInput instead of click.UsageError, and map click.UsageError to one line in one
    place (e.g. call ``main.main(standalone_mode=False)`` from a small entry function that catches
    click.ClickException and prints ``fiun-hub: error: {exc.format_message()}``)."""
    hub, info = env
    before = hub_fingerprint(hub)
    one_error_line(*cli("--hub", hub, *[a.format(good=info["folders"]["good"]) for a in args]))
    assert hub_fingerprint(hub) == before


def test_push_never_unpickles_a_checkpoint_named_by_config(cli, env, hub_fingerprint, tmp_path, monkeypatch):
    """Weights are safetensors only; nothing is ever unpickled (DESIGN section 3).

    BUG (fiun_hub/models.py build_model, ~line 83): ``config.model_args`` goes verbatim into
    ``timm.create_model(**kwargs)``, so a config.json holding ``"model_args": {"checkpoint_path": ...}`` makes
    check_folder (push) - and load_model on a pushed repo - ``torch.load`` any local file. Fix: accept only the
    architecture's own keyword arguments (refuse checkpoint_path, pretrained, pretrained_cfg*, cache_dir, ...)
    with BadInput in parse_config.
    """
    import torch

    hub, info = env
    folder = tmp_path / "evil"
    shutil.copytree(info["folders"]["good"], folder)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"anything": torch.zeros(1)}, ckpt)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"]["checkpoint_path"] = str(ckpt)
    (folder / "config.json").write_text(json.dumps(cfg))
    loaded = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a[0]) or real_load(*a, **k))
    before = hub_fingerprint(hub)
    code, out, err = cli("--hub", hub, "push", folder, "org/evil")
    assert loaded == [], f"push unpickled {loaded}"
    one_error_line(code, out, err)
    assert hub_fingerprint(hub) == before
