"""timm models in timm's Hub format: ``config.json`` (architecture, num_classes, label_names, pretrained_cfg,
model_args) and ``model.safetensors``. timm loads such a folder or hub repo unchanged; fiun-hub builds the model
from the config and reads the weights with safetensors only.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .constants import CONFIG_FILE, MAX_CLASSES, WEIGHTS_FILE
from .errors import BadInput
from .jsonsafe import loads as loads_json
from .preprocessing import KEYS as PREPROCESSING_KEYS, PROJECT_DEFAULTS, Preprocessing, check, of_config
from .safetensors_io import header_of_bytes, load_tensors, read_header, torch_dtypes

MAX_CONFIG_BYTES = 1 << 20
UNSAFE_ARG_SUFFIXES = ("_path", "_file", "_dir", "_url")
MAX_CHANNELS = 64
MAX_SIDE = 8192


@dataclass
class ModelConfig:
    """The parts of ``config.json`` fiun-hub uses."""

    architecture: str
    num_classes: int
    labels: list[str]
    classifier: str
    in_chans: int
    input_size: tuple[int, int, int]
    model_args: dict[str, Any]
    raw: dict[str, Any]
    #: the data config the model is fed with (its ``pretrained_cfg``, resolved as timm resolves it)
    preprocessing: Preprocessing | None = None


def _pos_int(value: Any, key: str, where: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise BadInput(f"{where}: {key!r} must be an integer from 1 to {limit}, got {str(value)[:50]!r}")
    return value


def check_architecture(name: Any, where: str) -> str:
    """``name`` if timm registers it locally (``timm.list_models()``); never a ``hf-hub:`` / ``local-dir:`` name,
    which would make timm read a config (and build what it names) from the network or any folder."""
    import timm

    if not isinstance(name, str) or not name:
        raise BadInput(f"{where}: missing 'architecture'")
    if ":" in name or "/" in name or len(name) > 200 or not timm.is_model(name):
        raise BadInput(f"{where}: architecture {name[:100]!r} is not a model timm registers locally "
                       "(see timm.list_models(); hf-hub: and local-dir: names are refused)")
    return name


def parse_config(data: bytes | str, where: str = "config.json") -> ModelConfig:
    """Validate a timm Hub ``config.json``: every field fiun-hub reads has the type it needs, the architecture
    is one timm registers locally, and no label list is built past :data:`MAX_CLASSES`."""
    if isinstance(data, (bytes, str)) and len(data) > MAX_CONFIG_BYTES:
        raise BadInput(f"{where}: config is larger than {MAX_CONFIG_BYTES} bytes")
    raw = loads_json(data, where, "config")
    if not isinstance(raw, dict):
        raise BadInput(f"{where}: must be a JSON object")
    arch = check_architecture(raw.get("architecture"), where)
    num_classes = _pos_int(raw.get("num_classes"), "num_classes", where, MAX_CLASSES)
    pcfg = raw.get("pretrained_cfg") or {}
    if not isinstance(pcfg, dict):
        raise BadInput(f"{where}: 'pretrained_cfg' must be an object")
    names = raw.get("label_names")
    if isinstance(names, dict):  # timm allows {index: name}
        names = [names.get(str(i), str(i)) for i in range(num_classes)]
    if names is not None and not isinstance(names, list):
        raise BadInput(f"{where}: 'label_names' must be a list of names")
    if names is not None and not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
        raise BadInput(f"{where}: 'label_names' must hold strings")
    labels = [str(n) for n in names] if names is not None else [str(i) for i in range(num_classes)]
    if len(labels) != num_classes:
        raise BadInput(f"{where}: {len(labels)} label_names for num_classes={num_classes}")
    if len(set(labels)) != len(labels):
        raise BadInput(f"{where}: label_names has duplicates")
    model_args = raw.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise BadInput(f"{where}: 'model_args' must be an object")
    for key in model_args:
        # Arguments that make timm read files or weights (and torch.load them) are never taken from a config.
        k = key.lower()
        if k.startswith("pretrained") or "checkpoint" in k or k.endswith(UNSAFE_ARG_SUFFIXES) or k == "cache_dir":
            raise BadInput(f"{where}: model_args may not set {key!r} (fiun-hub never loads weights named by a config)")
    size = pcfg.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 3):
        raise BadInput(f"{where}: pretrained_cfg.input_size must be [C, H, W], got {str(size)[:50]}")
    if "in_chans" in model_args:
        _pos_int(model_args["in_chans"], "model_args.in_chans", where, MAX_CHANNELS)
    input_size = tuple(size) if size is not None else (model_args.get("in_chans", 3), 224, 224)
    for key, v, limit in zip(("C", "H", "W"), input_size, (MAX_CHANNELS, MAX_SIDE, MAX_SIDE)):
        _pos_int(v, f"pretrained_cfg.input_size {key}", where, limit)
    in_chans = int(model_args.get("in_chans", input_size[0]))
    classifier = pcfg.get("classifier") or "fc"
    if isinstance(classifier, list) and classifier:
        classifier = classifier[0]
    if not isinstance(classifier, str):
        raise BadInput(f"{where}: pretrained_cfg.classifier must be a module name")
    preprocessing = of_config(raw, where)
    return ModelConfig(arch, num_classes, labels, classifier, in_chans, preprocessing.input_size,
                       model_args, raw, preprocessing)


def build_model(config: ModelConfig) -> torch.nn.Module:
    """An untrained timm model of the config's architecture and head size (no download)."""
    import timm

    kwargs = dict(config.model_args)
    kwargs["num_classes"] = config.num_classes
    try:
        model = timm.create_model(config.architecture, pretrained=False, **kwargs)
    except Exception as exc:
        raise BadInput(f"cannot build timm model {config.architecture!r}: {exc}") from None
    pcfg = config.raw.get("pretrained_cfg") or {}
    # as timm's own hf-hub loading does: the model carries its config.json's pretrained_cfg (a data key it does
    # not set takes timm's default, not the architecture's), so that timm.data.resolve_model_data_config(model)
    # gives the preprocessing the model declares
    base = {k: v for k, v in model.pretrained_cfg.items() if k not in PREPROCESSING_KEYS}
    model.pretrained_cfg = {**base, **pcfg}
    return model


def load_state(model: torch.nn.Module, weights: bytes, where: str = "") -> torch.nn.Module:
    """Load safetensors weights into ``model``, strictly (every key, every shape)."""
    tensors = load_tensors(weights, where)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise BadInput(f"{where}: weights do not fit the config: {' '.join(first[:3])[:300]}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise BadInput(f"{where}: weight {name} holds NaN or Inf")
    return model.eval()


def build_shapes(config: ModelConfig) -> torch.nn.Module:
    """``config``'s model when only its shapes and structure are needed: built on the meta device (nothing
    allocated), or for real where the architecture refuses the meta device (random weights)."""
    try:
        with torch.device("meta"):
            return build_model(config)
    except BadInput:
        return build_model(config)


def check_runs(model: torch.nn.Module, config: ModelConfig, where: str) -> None:
    """``model`` runs on one input of the size its config declares and gives one logit per label, else
    :class:`BadInput` (say a timm architecture whose stages shrink a small input below their kernels). On the meta
    device it allocates nothing; the model is left in the mode it was in."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *config.input_size), device=device))
    except Exception as exc:  # noqa: BLE001 - whatever the architecture raises on that input
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        if device.type == "meta" and (isinstance(exc, NotImplementedError) or "meta" in lines[0]):
            raise  # an op without a meta kernel: the caller checks on a real model
        size = "x".join(str(v) for v in config.input_size)
        raise BadInput(f"{where}: {config.architecture} cannot run on its declared input {size} "
                       f"(pretrained_cfg.input_size): {lines[0][:200]}") from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, config.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(f"{where}: {config.architecture} gives {shape} for one input, not {config.num_classes} logits")


def load_model(hub, repo: str, revision: str | None = None) -> tuple[torch.nn.Module, ModelConfig, str]:
    """Model, config and commit id of ``repo`` at ``revision``, read from the hub (never the network)."""
    cid = hub.resolve(repo, revision)
    where = f"{repo}@{cid[:12]}"
    config = parse_config(hub.read_file(repo, CONFIG_FILE, cid), f"{where}:{CONFIG_FILE}")
    model = load_state(build_model(config), hub.read_file(repo, WEIGHTS_FILE, cid), f"{where}:{WEIGHTS_FILE}")
    check_runs(model, config, where)
    return model, config, cid


def state_bytes(model_or_state: torch.nn.Module | dict) -> bytes:
    """safetensors bytes of a model's state dict (contiguous, CPU)."""
    from safetensors.torch import save

    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


#: pretrained_cfg keys that describe the architecture; every other one (the pretrained weights' tag, licence,
#: source, their data config, test sizes, paper) describes weights that a trained model no longer has
STRUCTURAL_CFG_KEYS = ("architecture", "input_size", "fixed_input_size", "min_input_size", "pool_size",
                       "first_conv", "classifier", "num_classes", "custom_load")


def config_dict(model: torch.nn.Module, labels: Sequence[str], input_size: Sequence[int] | None = None,
                data_config: Mapping[str, Any] | None = None) -> dict:
    """timm's own config.json for ``model`` (written by ``timm.models.save_for_hf``) with ``label_names`` and
    the data config the model was trained with: ``input_size`` (C, H, W; default the architecture's) and
    ``data_config``'s ``mean``/``std``/``interpolation``/``crop_pct``/``crop_mode``, each defaulting to
    fiun-hub's training preprocessing (:data:`fiun_hub.preprocessing.PROJECT_DEFAULTS`). The architecture's
    pretrained settings (ImageNet statistics, tag, licence) are not carried over."""
    from timm.models import save_for_hf

    labels = [str(x) for x in labels]
    if len(labels) != model.num_classes:
        raise BadInput(f"{len(labels)} labels for a head of {model.num_classes} classes")
    trained = {**PROJECT_DEFAULTS, **dict(data_config or {})}
    if input_size is not None:
        trained["input_size"] = tuple(input_size)
    unknown = sorted(set(trained) - set(PREPROCESSING_KEYS))
    if unknown:
        raise BadInput(f"data config: unknown keys {unknown} (use {', '.join(PREPROCESSING_KEYS)})")
    mean = trained.get("mean")
    placeholder = (len(mean) if isinstance(mean, (list, tuple)) and len(mean) > 1 else 1, 1, 1)
    check({**trained, "input_size": trained.get("input_size") or placeholder}, "data config")  # before timm
    for key in ("mean", "std", "input_size"):
        if isinstance(trained.get(key), (list, tuple)):
            trained[key] = tuple(trained[key])
        elif key in ("mean", "std"):
            trained[key] = (trained[key],)
    own = model.pretrained_cfg
    model.pretrained_cfg = {k: v for k, v in own.items() if k in STRUCTURAL_CFG_KEYS}
    quiet = logging.getLogger("timm")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            save_for_hf(model, tmp, model_config={"label_names": labels}, safe_serialization=True,
                        data_config=trained)
            cfg = json.loads((Path(tmp) / CONFIG_FILE).read_text())
    except (ValueError, TypeError, AssertionError) as exc:
        raise BadInput(f"cannot record the data config {trained}: {exc}"[:300]) from None
    finally:
        model.pretrained_cfg = own
        quiet.setLevel(level)
    of_config(cfg, "data config")  # what was written reads back (and resolves) as a checked preprocessing
    return cfg


def save_model_folder(model: torch.nn.Module, folder: str | Path, labels: Sequence[str],
                      input_size: Sequence[int] | None = None, data_config: Mapping[str, Any] | None = None) -> Path:
    """Save any timm model (and its label names, in head-row order) as a timm Hub folder.

    ``input_size`` is the ``(C, H, W)`` the model was trained at and ``data_config`` the rest of the data config
    it was trained with (``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``; default fiun-hub's
    training preprocessing: mean = std = 0.5, bilinear, no crop), recorded in ``pretrained_cfg`` so that every
    reader (fiun-hub, timm) feeds the model what it was trained on (:func:`config_dict`).
    """
    folder = Path(folder)
    cfg = config_dict(model, labels, input_size, data_config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    (folder / WEIGHTS_FILE).write_bytes(state_bytes(model))
    return folder


def folder_file(folder: str | Path, name: str) -> Path | None:
    """``folder/name`` if it is a regular file inside ``folder`` (a symlink is followed only while it stays
    inside); None if there is no such entry. A link that leads out of the folder (``README.md ->
    /proc/self/environ`` would publish the pusher's environment) or a special file (FIFO, device, socket: a read
    could block or never end) is refused with one line naming it."""
    import stat

    folder = Path(folder)
    path = folder / name
    if not os.path.lexists(path):
        return None
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder)):
        raise BadInput(f"{path} is a symlink to {os.readlink(path)!r}, outside {folder}; push only files inside "
                       "the model folder")
    try:
        mode = os.stat(path).st_mode
    except (OSError, RuntimeError):
        raise BadInput(f"{path} is a dangling or looping symlink") from None
    if not stat.S_ISREG(mode):
        raise BadInput(f"{path} is not a regular file (a FIFO, device, socket or folder); push only plain files")
    return path


def check_folder(folder: str | Path) -> ModelConfig:
    """Validate a model folder for ``push``: config.json parses, model.safetensors is whole and fits the config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if folder_file(folder, name) is None:
            raise BadInput(f"{folder} has no {name}; save the model with fiun_hub.models.save_model_folder")
    config = parse_config((folder / CONFIG_FILE).read_bytes(), str(folder / CONFIG_FILE))
    header, _ = read_header(folder / WEIGHTS_FILE)
    model = build_shapes(config)
    try:
        check_runs(model, config, str(folder))
    except BadInput:
        raise
    except Exception:  # noqa: BLE001 - an op with no meta kernel: run it for real (random weights: shapes only)
        check_runs(build_model(config), config, str(folder))
    state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    got = {k: tuple(v["shape"]) for k, v in header.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {wrong[0]} is {got[wrong[0]]}, config needs {expected[wrong[0]]}")
        raise BadInput(f"{folder / WEIGHTS_FILE} does not fit {config.architecture} with "
                       f"{config.num_classes} classes: {detail}")
    names = {v: k for k, v in torch_dtypes().items()}
    for k, v in state.items():
        if header[k]["dtype"] != names.get(v.dtype):
            raise BadInput(f"{folder / WEIGHTS_FILE}: tensor {k} is {header[k]['dtype']}, the model needs "
                           f"{names.get(v.dtype, v.dtype)}")
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
        for k in fh.keys():
            t = fh.get_tensor(k)
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise BadInput(f"{folder / WEIGHTS_FILE}: tensor {k} holds NaN or Inf")
    return config


__all__ = ["ModelConfig", "parse_config", "build_model", "load_state", "load_model", "build_shapes", "check_runs", "state_bytes",
           "save_model_folder", "check_folder", "folder_file", "check_architecture", "config_dict", "header_of_bytes"]
