"""Commands that only read cards, refs and safetensors headers never import torch, timm or ray (a `fiun-hub log`
must not pay seconds for a framework it does not use), and take ``--json`` after the command as well as before.

Each light command runs in a fresh interpreter (the real ``fiun_hub_cli.main`` entry point, through a ``-c``
wrapper that reports which heavy modules got imported), over the small hub of tests/test_forget.py (sidecars
ok, stale and missing, so `show` and `lineage --check` read sidecar headers too)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_forget import small_hub

HEAVY = ("torch", "timm", "ray")

# Run the CLI like the console script does, then print (on a last stdout line) the heavy modules it imported.
WRAPPER = """
import sys
sys.argv = ["fiun-hub"] + sys.argv[1:]
from fiun_hub_cli.main import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("HEAVY=" + ",".join(m for m in %r if m in sys.modules))
sys.exit(code)
""" % (HEAVY,)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return small_hub(tmp_path_factory)


def run_light(*args: str) -> tuple[int, str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "FIUN_HUB"}
    env.update({"HF_HUB_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)], capture_output=True, text=True, env=env)
    out, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    assert last.startswith("HEAVY="), (proc.returncode, proc.stdout, proc.stderr)
    heavy = [m for m in last[len("HEAVY="):].split(",") if m]
    return proc.returncode, out if out else "", heavy


@pytest.mark.parametrize("args", [
    ("log", "s/child"),
    ("show", "s/child"),
    ("show", "s/stale"),
    ("lineage",),
    ("lineage", "s/child", "--up"),
    ("lineage", "--check"),
    ("--json", "lineage", "--format", "mermaid"),
    ("verify",),
    ("audit",),
], ids=" ".join)
def test_reading_commands_import_no_torch_timm_or_ray(small, args):
    code, out, heavy = run_light("--hub", small[0], *args)
    assert code in (0, 1), (args, code, out)  # --check may find problems in this deliberately broken hub
    assert out.strip(), args
    assert heavy == [], f"`fiun-hub {' '.join(args)}` imported {heavy}"


def test_the_wrapper_sees_a_command_that_does_import_torch(small, tmp_path):
    """The check can fail: `eval` loads weights into a timm model, and the wrapper reports torch and timm."""
    code, out, heavy = run_light("--hub", small[0], "eval", "s/child", "--data", "digits:test")
    assert "torch" in heavy and "timm" in heavy, (code, out, heavy)


def test_tag_and_log_without_torch_json_after_the_command(small, tmp_path):
    import shutil

    hub = tmp_path / "hub"
    shutil.copytree(small[0], hub, symlinks=True)
    code, out, heavy = run_light("--hub", hub, "tag", "s/child", "light", "--json")
    assert code == 0 and heavy == [] and json.loads(out)["tag"] == "light"
    code, out, heavy = run_light("--hub", hub, "log", "s/child", "--json")
    assert code == 0 and heavy == [] and isinstance(json.loads(out), list)


@pytest.mark.parametrize("args", [
    ("lineage",),
    ("lineage", "s/child", "--down"),
    ("lineage", "--check"),
    ("log", "s/child"),
    ("show", "s/stale"),
    ("verify",),
    ("audit",),
    ("forget", "--origin", "s/origin", "--classes", "1", "--dry-run"),
], ids=" ".join)
def test_json_after_the_command_is_the_global_json(cli, small, args):
    """``fiun-hub CMD ... --json`` prints exactly what ``fiun-hub --json CMD ...`` prints, with the same exit code
    (it used to be a usage error, exit 2)."""
    before = cli("--hub", small[0], "--json", *args)
    after = cli("--hub", small[0], *args, "--json")
    text = cli("--hub", small[0], *args)
    assert after == before, args
    json.loads(after[1])
    assert after[0] in (0, 1) and text[1] != after[1], args  # it is JSON, not the text output


def test_json_after_a_command_with_an_error_still_fails_one_line(cli, small):
    code, out, err = cli("--hub", small[0], "show", "s/no-such-repo", "--json")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
