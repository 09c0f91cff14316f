"""Hostile input, round three: the newest parts (the fingerprint index and `lineage --infer`, `audit --fix --adopt`,
sample-wise `forget --data`, `fim --layers`, forget records, `--json` under errors), attacked as an outside red team
would. One test per defect found; each failed before its fix (a traceback, a hang or memory exhaustion, a wrong
exit code, or stored bytes changed) and now gets one line on stderr, exit 2, and a hub left byte-identical.

Hubs are real: untrained test_resnet models saved with `save_model_folder` and pushed with the real CLI (their
fingerprints are computed on push, as for any publish), run through the real `fiun-hub` console script in a
subprocess (a hostile file can exhaust memory: a subprocess keeps that out of the test process).
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from conftest import fingerprint


def one_line(res) -> str:
    code, out, err = res
    assert "Traceback" not in out + err, err[-2000:]
    assert code == 2, (code, out[-500:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fiun-hub: error: "), err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def small_hub(tmp_path_factory):
    """h/a (its 1-d tensors randomised, as training would leave them) and an undeclared copy h/b of its weights with
    the head nudged (no --parent), pushed with the CLI."""
    import subprocess
    import sys
    from pathlib import Path

    import timm
    import torch

    from fiun_hub.models import save_model_folder

    root = tmp_path_factory.mktemp("round3")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    a = save_model_folder(model, root / "a", ["x", "y", "z"], input_size=(1, 16, 16))
    with torch.no_grad():
        model.get_classifier().weight.add_(0.01)
    b = save_model_folder(model, root / "b", ["x", "y", "z"], input_size=(1, 16, 16))
    exe = str(Path(sys.executable).with_name("fiun-hub"))
    hub = root / "hub"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args in (["init"], ["push", a, "h/a"], ["push", b, "h/b"]):
        subprocess.run([exe, "--hub", hub, *map(str, args)], check=True, capture_output=True, env=env)
    return hub


@pytest.fixture
def hub_copy(small_hub, tmp_path):
    dst = tmp_path / "hub"
    shutil.copytree(small_hub, dst, symlinks=True)
    return dst


def _index(hub):
    return hub / ".fiun" / "lineage.json"


def _edit_index(hub, repo: str, **fields) -> None:
    d = json.loads(_index(hub).read_text())
    d["repos"][repo].update(fields)
    _index(hub).write_text(json.dumps(d))


def _fingerprints(hub) -> list[str]:
    return sorted(glob.glob(str(hub / ".fiun" / "fingerprints" / "??" / "*.json")))


def _layouts(hub) -> list[str]:
    return sorted(glob.glob(str(hub / ".fiun" / "fingerprints" / "layouts" / "*.json")))


def test_the_small_hub_infers_the_undeclared_copy(hub_copy, run_cli):
    code, out, err = run_cli("--hub", hub_copy, "--json", "lineage", "--infer")
    assert code == 0, err
    assert {(e["parent"], e["child"]) for e in json.loads(out)["edges"]} == {("h/a", "h/b")}


# ------------------------------------------------------------------ the lineage index and the fingerprint store
@pytest.mark.parametrize("weights", [5, {"a": 1}, "../../../../../../tmp/x"], ids=["int", "dict", "path"])
def test_an_index_entry_whose_weights_field_is_not_a_sha256_is_rebuilt_from_the_cards(hub_copy, run_cli, weights):
    """Was: TypeError traceback (int: not subscriptable; dict: unhashable) in `lineage --infer`; a path was joined
    into the fingerprint store's path. The index is a cache: an entry of the wrong shape makes it unreadable, the
    cards are read instead, and the answer is the same as on the intact hub."""
    _edit_index(hub_copy, "h/b", weights=weights)
    before = fingerprint(hub_copy)
    code, out, err = run_cli("--hub", hub_copy, "--json", "lineage", "--infer")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert {(e["parent"], e["child"]) for e in json.loads(out)["edges"]} == {("h/a", "h/b")}
    assert fingerprint(hub_copy) == before


def test_an_index_naming_a_repo_that_is_not_a_repo_id_is_rebuilt_from_the_cards(hub_copy, run_cli):
    """Was: `lineage --infer` printed `UNDECLARED ... ../../etc <-> h/a`: a hand-edited key became a repo."""
    d = json.loads(_index(hub_copy).read_text())
    d["repos"]["../../etc"] = d["repos"]["h/b"]
    _index(hub_copy).write_text(json.dumps(d))
    code, out, err = run_cli("--hub", hub_copy, "--json", "lineage", "--infer")
    assert code == 0, err[-2000:]
    assert "../../etc" not in out


def test_a_deeply_nested_index_is_rebuilt_from_the_cards(hub_copy, run_cli):
    """Was: RecursionError traceback from json.loads in every command reading the index."""
    _index(hub_copy).write_text("[" * 100_000 + "]" * 100_000)
    code, out, err = run_cli("--hub", hub_copy, "lineage")
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert "h/a" in out and "h/b" in out


@pytest.mark.parametrize("which", ["fingerprint", "layout"])
def test_a_deeply_nested_fingerprint_record_is_one_line(hub_copy, run_cli, which):
    """Was: RecursionError traceback (json.loads) in `lineage --infer`."""
    path = (_fingerprints if which == "fingerprint" else _layouts)(hub_copy)[0]
    open(path, "w").write("[" * 100_000 + "]" * 100_000)
    before = fingerprint(hub_copy)
    line = one_line(run_cli("--hub", hub_copy, "lineage", "--infer"))
    assert "damaged" in line and "--repair-index" in line
    assert fingerprint(hub_copy) == before


def test_a_layout_with_an_infinite_dimension_is_one_line(hub_copy, run_cli):
    """Was: OverflowError traceback (int(inf)) reading a layout whose shape holds 1e400."""
    path = _layouts(hub_copy)[0]
    text = open(path).read().replace('"tensors":[[', '"tensors":[["zz","F32",[1e400]],[', 1)
    open(path, "w").write(text)
    line = one_line(run_cli("--hub", hub_copy, "lineage", "--infer"))
    assert "damaged tensor layout" in line


def test_a_fingerprint_record_that_is_a_link_to_dev_zero_is_one_line(hub_copy, run_cli):
    """Was: the whole of /dev/zero read into memory: the process was killed (out of memory) or hung."""
    path = _fingerprints(hub_copy)[0]
    os.unlink(path)
    os.symlink("/dev/zero", path)
    line = one_line(run_cli("--hub", hub_copy, "lineage", "--infer", timeout=60))
    assert "damaged weight fingerprint" in line


# ------------------------------------------------------------------ sample-wise forget --data
@pytest.fixture(scope="module")
def sidecar_hub(tmp_path_factory):
    """h/base -> h/child (untrained test_resnet over the ten digits, with sidecars): conftest's helper."""
    from conftest import base_and_child_hub

    return base_and_child_hub(tmp_path_factory.mktemp("samplewise"), "test_resnet", 60)["hub"].root


def _digits_npz(path, start: int, n: int = 10) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(path, x=d.images[start:start + n].astype(np.float32), y=d.target[start:start + n])


def test_a_sample_wise_forget_of_a_replaced_file_is_a_new_request_not_a_no_op(sidecar_hub, tmp_path, run_cli):
    """Was: the default request id hashed the spec's text, so `forget --data npz:f.npz` after f.npz was replaced by
    other samples said "already applied ... nothing to do" (exit 0) and those samples were never forgotten."""
    hub = tmp_path / "hub"
    shutil.copytree(sidecar_hub, hub, symlinks=True)
    spec = f"npz:{tmp_path / 'f.npz'}"
    _digits_npz(tmp_path / "f.npz", 0)
    code, out, err = run_cli("--hub", hub, "--json", "forget", "--origin", "h/base", "--data", spec)
    assert code == 0, err[-2000:]
    first = json.loads(out)["request_id"]
    _digits_npz(tmp_path / "f.npz", 500)  # other samples under the same name
    code, out, err = run_cli("--hub", hub, "--json", "forget", "--origin", "h/base", "--data", spec, "--dry-run")
    assert code == 0, err[-2000:]
    plan = json.loads(out)
    assert plan["request_id"] != first and not plan["noop"]
    assert {n["repo"] for n in plan["nodes"] if not n["done"]} == {"h/base", "h/child"}


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_sample_wise_dry_run_refuses_data_the_forget_would_refuse(sidecar_hub, tmp_path, run_cli, kind):
    """Was: `forget --data SPEC --dry-run` never read SPEC: a missing or empty npz gave a plan and exit 0."""
    import numpy as np

    if kind == "empty":
        np.savez(tmp_path / "f.npz", x=np.zeros((0, 8, 8), np.float32), y=np.zeros(0, np.int64))
    before = fingerprint(sidecar_hub)
    line = one_line(run_cli("--hub", sidecar_hub, "forget", "--origin", "h/base", "--data",
                            f"npz:{tmp_path / 'f.npz'}", "--dry-run"))
    assert ("f.npz" in line) and (kind != "empty" or "no samples" in line)
    assert fingerprint(sidecar_hub) == before


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_sample_wise_forget_of_non_finite_images_is_refused(sidecar_hub, tmp_path, run_cli, value):
    """Was: `forget --data` on ten all-NaN (or all-inf) images exited 0 and published a new revision of every
    affected repo recording a forget of samples no model can have seen (their Fisher is NaN, zeroed)."""
    import numpy as np

    hub = tmp_path / "hub"
    shutil.copytree(sidecar_hub, hub, symlinks=True)
    np.savez(tmp_path / "f.npz", x=np.full((10, 8, 8), float(value), np.float32), y=np.arange(10))
    before = fingerprint(hub)
    line = one_line(run_cli("--hub", hub, "forget", "--origin", "h/base", "--data", f"npz:{tmp_path / 'f.npz'}"))
    assert "NaN or infinite" in line
    assert fingerprint(hub) == before


def test_a_sample_wise_forget_of_five_channel_images_for_a_one_channel_model_is_refused(sidecar_hub, tmp_path,
                                                                                         run_cli):
    """Was: five-channel images given to a one-channel model were averaged into one channel and forgotten, exit 0:
    an image the model never saw, forgotten in its place. Only 3-channel images are averaged (as RGB -> grey)."""
    import numpy as np

    hub = tmp_path / "hub"
    shutil.copytree(sidecar_hub, hub, symlinks=True)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x=rng.random((10, 5, 8, 8), dtype=np.float32), y=np.arange(10))
    before = fingerprint(hub)
    line = one_line(run_cli("--hub", hub, "forget", "--origin", "h/base", "--data", f"npz:{tmp_path / 'f.npz'}"))
    assert "5-channel" in line and "in_chans=1" in line, line
    assert fingerprint(hub) == before


def test_a_sample_wise_record_under_the_old_spec_based_id_still_makes_a_re_run_a_no_op(sidecar_hub, tmp_path,
                                                                                        run_cli):
    """Records written before the samples named a sample-wise request carry the id of the spec's text. The same
    samples under that id are the same request (a re-run must not dampen them twice); other samples under the same
    spec are still a new request."""
    from fiun_hub.unlearn import default_request_id

    hub = tmp_path / "hub"
    shutil.copytree(sidecar_hub, hub, symlinks=True)
    spec = f"npz:{tmp_path / 'f.npz'}"
    legacy = default_request_id(["h/base"], None, spec)
    _digits_npz(tmp_path / "f.npz", 0)
    code, out, err = run_cli("--hub", hub, "--json", "forget", "--origin", "h/base", "--data", spec,
                             "--request-id", legacy)  # what the code before wrote by default
    assert code == 0, err[-2000:]
    code, out, err = run_cli("--hub", hub, "--json", "forget", "--origin", "h/base", "--data", spec, "--dry-run")
    assert code == 0, err[-2000:]
    plan = json.loads(out)
    assert plan["request_id"] == legacy and plan["noop"], plan
    _digits_npz(tmp_path / "f.npz", 500)
    code, out, err = run_cli("--hub", hub, "--json", "forget", "--origin", "h/base", "--data", spec, "--dry-run")
    assert code == 0, err[-2000:]
    plan = json.loads(out)
    assert plan["request_id"] != legacy and not plan["noop"], plan
