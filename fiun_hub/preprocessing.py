"""A model's preprocessing: its timm data config, resolved, checked and written down (torch-free).

Every model is fed images the way timm's own eval transform (``timm.data.create_transform(**cfg,
is_training=False)``) would feed them: resize (shorter side to ``size / crop_pct``, or both sides for
``crop_mode="squash"``, or the longer side for ``"border"``) with the config's interpolation, center crop (or pad)
to ``input_size``, scale to [0, 1], normalise with ``mean``/``std``. :func:`resolve` reads the config from a
``config.json``'s ``pretrained_cfg`` with the same precedence and defaults as ``timm.data.resolve_data_config``
(what ``timm.data.resolve_model_data_config(model)`` returns for the model timm builds from that file);
:class:`Preprocessing` is the checked result and :meth:`Preprocessing.canonical` the string a Fisher sidecar
records (docs/sidecars.md). The tensor path that applies it is :func:`fiun_hub.data.prepare`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import BadInput

# timm's defaults (timm.data.constants) for a pretrained_cfg that does not say
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_INTERPOLATION = "bicubic"
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP_MODE = "center"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_MODES = ("center", "squash", "border")
#: the header key of fim.safetensors that holds :meth:`Preprocessing.canonical`
SIDECAR_KEY = "preprocessing"
#: what fiun-hub's own training feeds a model, and what ``save_model_folder`` records when not told otherwise:
#: [0, 1] images, mean = std = 0.5, bilinear, resized to the input size (no crop).
PROJECT_DEFAULTS = {"mean": (0.5,), "std": (0.5,), "interpolation": "bilinear", "crop_pct": 1.0,
                    "crop_mode": "squash"}
#: keys of a data config (timm's names)
KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


@dataclass(frozen=True)
class Preprocessing:
    """A resolved, checked timm data config: ``input_size`` (C, H, W), per-channel ``mean``/``std`` (C values),
    ``interpolation``, ``crop_pct``, ``crop_mode``."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}

    def canonical(self) -> str:
        """Compact JSON, keys sorted: the form a sidecar header records (docs/sidecars.md).

        >>> legacy((1, 16, 16)).canonical()
        '{"crop_mode":"squash","crop_pct":1.0,"input_size":[1,16,16],"interpolation":"bilinear","mean":[0.5],"std":[0.5]}'
        """
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        c, h, w = self.input_size
        return (f"{c}x{h}x{w}, mean {list(self.mean)}, std {list(self.std)}, {self.interpolation}, "
                f"crop {self.crop_pct} ({self.crop_mode})")


def _floats(value: Any, key: str, chans: int, where: str) -> tuple[float, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple)):
        raise BadInput(f"{where}: {key} must be a number or a list of numbers, got {value!r}"[:300])
    vals = (value,) if isinstance(value, (int, float)) else tuple(value)
    if not vals or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in vals):
        raise BadInput(f"{where}: {key} must be finite numbers, got {value!r}"[:300])
    vals = tuple(float(v) for v in vals)
    if len(vals) == 1:
        vals = vals * chans
    elif len(vals) != chans:
        if chans == 1:  # timm's channel adaptation (resolve_input_data_config): the mean of the values
            vals = (sum(vals) / len(vals),)
        else:
            raise BadInput(f"{where}: {key} has {len(vals)} values for a {chans}-channel model")
    if key == "std" and any(v <= 0 for v in vals):
        raise BadInput(f"{where}: std must be positive, got {list(vals)}")
    return vals


def check(cfg: Mapping[str, Any], where: str = "data config") -> Preprocessing:
    """A :class:`Preprocessing` from a data config dict (timm's keys, all present), or BadInput naming the fault."""
    if not isinstance(cfg, Mapping):
        raise BadInput(f"{where}: must be an object")
    missing = [k for k in KEYS if k not in cfg]
    if missing:
        raise BadInput(f"{where}: missing {', '.join(missing)}")
    size = cfg["input_size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 or v > 65536 for v in size)):
        raise BadInput(f"{where}: input_size must be three positive integers (C, H, W), got {size!r}"[:300])
    size = tuple(int(v) for v in size)
    mean = _floats(cfg["mean"], "mean", size[0], where)
    std = _floats(cfg["std"], "std", size[0], where)
    interp = cfg["interpolation"]
    if interp not in INTERPOLATIONS:
        raise BadInput(f"{where}: interpolation {interp!r} is not supported (use one of {', '.join(INTERPOLATIONS)})"[:300])
    crop = cfg["crop_pct"]
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not math.isfinite(crop) or not 0 < crop <= 4:
        raise BadInput(f"{where}: crop_pct must be a number in (0, 4], got {crop!r}"[:300])
    mode = cfg["crop_mode"]
    if mode not in CROP_MODES:
        raise BadInput(f"{where}: crop_mode {mode!r} is not one of {', '.join(CROP_MODES)}"[:300])
    return Preprocessing(size, mean, std, str(interp), float(crop), str(mode))


def resolve(pretrained_cfg: Mapping[str, Any] | None, in_chans: int | None = None,
            where: str = "pretrained_cfg") -> Preprocessing:
    """The data config timm resolves for a model built from ``pretrained_cfg`` (``config.json``), checked.

    Same precedence and defaults as ``timm.data.resolve_data_config``: ``input_size`` (else 3x224x224),
    ``interpolation`` (else bicubic), ``mean``/``std`` (else ImageNet's), ``crop_pct`` (else 0.875),
    ``crop_mode`` (else center); ``in_chans`` (the model's ``model_args``) overrides the channel count, and
    ImageNet's three values on a 1-channel model become their mean (timm's channel adaptation).

    >>> resolve({"input_size": [1, 28, 28], "mean": [0.1307], "std": [0.3081]}).describe()
    '1x28x28, mean [0.1307], std [0.3081], bicubic, crop 0.875 (center)'
    """
    pcfg = pretrained_cfg or {}
    if not isinstance(pcfg, Mapping):
        raise BadInput(f"{where}: must be an object")
    size = pcfg.get("input_size") or (3, 224, 224)
    if isinstance(size, (list, tuple)) and len(size) == 3 and in_chans is not None:
        size = (in_chans, *size[1:])
    return check({
        "input_size": size,
        "interpolation": pcfg.get("interpolation") or DEFAULT_INTERPOLATION,
        "mean": pcfg.get("mean") if pcfg.get("mean") is not None else IMAGENET_DEFAULT_MEAN,
        "std": pcfg.get("std") if pcfg.get("std") is not None else IMAGENET_DEFAULT_STD,
        "crop_pct": pcfg.get("crop_pct") or DEFAULT_CROP_PCT,
        "crop_mode": pcfg.get("crop_mode") or DEFAULT_CROP_MODE,
    }, where)


def of_config(raw: Mapping[str, Any], where: str = "config.json") -> Preprocessing:
    """The preprocessing of a parsed timm Hub ``config.json`` (its ``pretrained_cfg`` and ``model_args``)."""
    if not isinstance(raw, Mapping):
        raise BadInput(f"{where}: must be a JSON object")
    pcfg = raw.get("pretrained_cfg") or {}
    if not isinstance(pcfg, Mapping):
        raise BadInput(f"{where}: 'pretrained_cfg' must be an object")
    args = raw.get("model_args") or {}
    chans = args.get("in_chans") if isinstance(args, Mapping) else None
    if chans is not None and (isinstance(chans, bool) or not isinstance(chans, int) or chans < 1):
        raise BadInput(f"{where}: model_args.in_chans must be a positive integer, got {chans!r}"[:300])
    return resolve(pcfg, chans, f"{where}: pretrained_cfg")


def legacy(input_size: Sequence[int]) -> Preprocessing:
    """What fiun-hub fed every model before sidecars recorded their preprocessing (and what its own training
    feeds): mean = std = 0.5, bilinear, resized straight to ``input_size``. A sidecar without a recorded
    preprocessing is taken to have been computed with this, at its model's input size."""
    size = tuple(int(v) for v in input_size)
    return check({"input_size": size, **PROJECT_DEFAULTS}, "legacy preprocessing")


def training_config(input_size: Sequence[int], data_config: Mapping[str, Any] | None = None) -> Preprocessing:
    """The preprocessing a model was trained with: :data:`PROJECT_DEFAULTS` at ``input_size``, overridden by
    the keys given in ``data_config``."""
    cfg = {**PROJECT_DEFAULTS, **dict(data_config or {})}
    cfg["input_size"] = tuple(cfg.get("input_size") or input_size)
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise BadInput(f"data config: unknown keys {unknown} (use {', '.join(KEYS)})")
    return check(cfg, "data config")


def parse_recorded(text: str, where: str = "sidecar") -> Preprocessing:
    """The preprocessing a sidecar header records (:meth:`Preprocessing.canonical`); BadInput if garbled."""
    try:
        cfg = json.loads(text)
    except (TypeError, ValueError):
        raise BadInput(f"{where}: recorded preprocessing is not JSON: {str(text)[:80]!r}") from None
    if not isinstance(cfg, dict) or set(cfg) != set(KEYS):
        raise BadInput(f"{where}: recorded preprocessing must have exactly the keys {', '.join(KEYS)}")
    return check(cfg, f"{where}: recorded preprocessing")


def recorded(meta: Mapping[str, str], model: Preprocessing, where: str = "sidecar") -> Preprocessing:
    """The preprocessing a sidecar header ``meta`` was computed with: its ``preprocessing`` key, or for a
    sidecar written before fiun-hub recorded it, :func:`legacy` at the model's input size."""
    text = meta.get(SIDECAR_KEY)
    if text is None:
        return legacy(model.input_size)
    return parse_recorded(text, where)


def stale_preprocessing(meta: Mapping[str, str], model: Preprocessing, where: str = "sidecar") -> str | None:
    """Why a sidecar (header ``meta``) does not fit the model's current preprocessing, or None when it does.
    The one staleness rule for preprocessing, shared by ``lineage`` and ``sidecars`` (a garbled record raises
    BadInput)."""
    used = recorded(meta, model, where)
    if used == model:
        return None
    return f"computed with other preprocessing ({used.describe()}; the model now declares {model.describe()})"


__all__ = ["Preprocessing", "check", "resolve", "of_config", "legacy", "training_config", "parse_recorded",
           "recorded", "stale_preprocessing", "PROJECT_DEFAULTS", "SIDECAR_KEY"]
