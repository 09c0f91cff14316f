"""Shared fixtures: a fresh hub, real timm model folders, the real CLI (subprocess and in-process).

HF_HUB_OFFLINE must be set before anything imports huggingface_hub: its constants are read at import time,
and a reader asked for a branch name would otherwise try the network first.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from fiun_hub.hub.local import LocalHub  # noqa: E402

DEFAULT_LABELS = ("cat", "dog", "bird")
DIGIT_LABELS = [str(i) for i in range(10)]


class FixedLogits(torch.nn.Module):
    """Logits are the input itself: x of shape (N, 1, 1, K) -> (N, K). Makes every prediction hand-set."""

    def __init__(self, k: int):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.k = k

    def forward(self, x):
        return x.flatten(1)[:, : self.k] + 0 * self.dummy


def base_and_child_hub(root: Path, arch: str, n_fim: int, input_size=(1, 16, 16)) -> dict:
    """``root/hub`` with h/base -> h/child: untrained ``arch`` weights (seeds 1, 2) over the ten digit labels, with
    sidecars from the first ``n_fim`` digits:train samples. Returns hub, base/child revisions, the models, the data."""
    from fiun_hub.data import load_data
    from fiun_hub.research.scenarios import new_model, push_model, torch_threads

    hub = LocalHub.init(root / "hub")
    data = load_data("digits:train", in_chans=1, input_size=input_size[1:]).to_label_space(DIGIT_LABELS)
    data = data.subset(torch.arange(n_fim))
    with torch_threads(1):
        base_model, child_model = new_model(arch, 10, 1, 1), new_model(arch, 10, 1, 2)
        base = push_model(hub, base_model, "h/base", DIGIT_LABELS, input_size=input_size, fim_data=data,
                          data_spec="d")["revision"]
        child = push_model(hub, child_model, "h/child", DIGIT_LABELS, input_size=input_size,
                           parents=[f"h/base@{base}"], fim_data=data, data_spec="d")["revision"]
    return {"hub": hub, "base": base, "child": child, "child_model": child_model, "data": data}


@pytest.fixture
def hub(tmp_path) -> LocalHub:
    """An empty LocalHub in a fresh folder."""
    return LocalHub.init(tmp_path / "hub")


@pytest.fixture
def model_folder(tmp_path):
    """Factory: ``model_folder(labels=None, arch="test_resnet", seed=0) -> Path``.

    Saves a real ``timm.create_model(arch, num_classes=len(labels), in_chans=1)`` in timm's Hub format
    (config.json + model.safetensors, label names, input size 1x16x16). Weights are seeded by ``seed`` and by
    the call's position, so every call gives a model with distinct weights, reproducibly.
    """
    import timm

    from fiun_hub.models import save_model_folder

    counter = itertools.count()

    def make(labels=None, arch: str = "test_resnet", seed: int = 0) -> Path:
        labels = list(labels) if labels is not None else list(DEFAULT_LABELS)
        n = next(counter)
        torch.manual_seed(seed * 100_003 + n)
        model = timm.create_model(arch, num_classes=len(labels), in_chans=1)
        folder = tmp_path / f"model-{arch}-{seed}-{n}"
        return save_model_folder(model, folder, labels, input_size=(1, 16, 16))

    return make


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("fiun-hub")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fiun_hub_cli.main"]


@pytest.fixture
def run_cli():
    """Run the real ``fiun-hub`` console script in a subprocess: ``run_cli(*args) -> (code, stdout, stderr)``."""

    def run(*args: str, env: dict | None = None, timeout: float = 120) -> tuple[int, str, str]:
        full_env = {k: v for k, v in os.environ.items() if k != "FIUN_HUB"}
        full_env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        full_env.update(env or {})
        proc = subprocess.run(_cli_command() + [str(a) for a in args], capture_output=True, text=True,
                              env=full_env, timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr

    return run


@pytest.fixture
def cli():
    """The same CLI in-process (click's runner; cheaper than a subprocess): ``cli(*args) -> (code, out, err)``."""
    from click.testing import CliRunner

    from fiun_hub_cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, [str(a) for a in args], env={"FIUN_HUB": None})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # an uncaught library error: show its traceback, not just an exit code
        return result.exit_code, result.stdout, result.stderr

    return run


def fingerprint(root: str | os.PathLike) -> dict[str, tuple]:
    """Byte-level picture of a folder: every path, file content (sha256) and symlink target."""
    root = Path(root)
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture
def hub_fingerprint():
    """``hub_fingerprint(path) -> dict``: compare before/after to prove nothing was written."""
    return fingerprint
