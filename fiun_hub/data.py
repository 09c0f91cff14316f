"""Data specs -> labelled tensors shaped for a model.

A data spec is a short string (DESIGN.md section 7):

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, labels ``"0"``..``"9"``); split 70/30,
  stratified, fixed seed, so ``digits:train`` and ``digits:test`` never overlap.
- ``fashion-mnist[:DIR]``: the idx files of Debian's ``dataset-fashion-mnist`` (default
  ``/usr/share/datasets/fashion-mnist``).
- ``npz:PATH``: a ``.npz`` with arrays ``x`` (N,H,W or N,C,H,W) and ``y`` (N,), optional ``labels``;
  loaded with ``allow_pickle=False``.
- ``folder:PATH``: one sub-folder per class holding image files (read with Pillow).

A ``:train`` or ``:test`` suffix picks the split (default: ``train``). ``:test`` is always held out: a source
with a split of its own (Fashion-MNIST's t10k files, an npz's ``x_test``/``y_test``, a folder's ``test/``) uses
it; a source without one (an npz with only ``x``/``y``, a folder of class sub-folders) is split like ``digits``
(70/30, stratified, seed 0) when a suffix is given, and read whole without one; a split that cannot be made
(an npz with ``x_train`` but no ``x_test``, a class with one sample) is refused.

A spec yields images (:func:`load_images`: float32 in [0, 1], native size and channels); :func:`prepare`
feeds them to a model with its own preprocessing (:class:`fiun_hub.preprocessing.Preprocessing`, timm's data
config) the way ``timm.data.create_transform(**cfg, is_training=False)`` would, as one tensor operation per
batch. :func:`load_for_model` does both for a model's config; :func:`load_data` with only ``in_chans`` and
``input_size`` uses fiun-hub's own training preprocessing (mean = std = 0.5, bilinear, no crop).
"""
from __future__ import annotations

import gzip
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .constants import MAX_CLASSES
from .errors import DataSpecError
from .preprocessing import Preprocessing, legacy

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
DIGITS_LABELS = [str(i) for i in range(10)]
SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class LabeledData:
    """Images ``x`` (N, C, H, W, float32), targets ``y`` (N, int64) indexing ``labels`` (names)."""

    x: torch.Tensor
    y: torch.Tensor
    labels: list[str]
    spec: str = ""
    #: how ``x`` was fed (:func:`prepare`); None: plain [0, 1] images (:func:`load_images`) or made by hand
    preprocessing: Preprocessing | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def fingerprint(self) -> str:
        """sha256 over the raw tensors and label names: names the exact data a sidecar was computed on."""
        h = hashlib.sha256()
        h.update(self.x.contiguous().numpy().tobytes())
        h.update(self.y.contiguous().numpy().tobytes())
        h.update("\x00".join(self.labels).encode())
        return h.hexdigest()

    def select_labels(self, names: Sequence[str]) -> "LabeledData":
        """Keep only samples of the named classes, re-indexed to ``names`` order.

        >>> d = load_data("digits:test").select_labels(["3", "1"])
        >>> d.labels, sorted(set(d.y.tolist()))
        (['3', '1'], [0, 1])
        """
        unknown = [n for n in names if n not in self.labels]
        if unknown:
            raise DataSpecError(f"labels {unknown} are not in data {self.spec or '?'} (has {self.labels})")
        old_to_new = torch.full((len(self.labels),), -1, dtype=torch.long)
        for new, name in enumerate(names):
            old_to_new[self.labels.index(name)] = new
        mapped = old_to_new[self.y]
        keep = mapped >= 0
        return LabeledData(self.x[keep], mapped[keep], list(names), self.spec, self.preprocessing)

    def to_label_space(self, names: Sequence[str]) -> "LabeledData":
        """Re-index targets to another label list; samples whose class is not in ``names`` are dropped."""
        present = [n for n in names if n in self.labels]
        sub = self.select_labels(present)
        idx = torch.tensor([list(names).index(n) for n in present], dtype=torch.long)
        return LabeledData(sub.x, idx[sub.y] if len(sub) else sub.y, list(names), self.spec, self.preprocessing)

    def subset(self, index: torch.Tensor | Sequence[int]) -> "LabeledData":
        index = torch.as_tensor(index, dtype=torch.long)
        return LabeledData(self.x[index], self.y[index], list(self.labels), self.spec, self.preprocessing)


def parse_spec(spec: str) -> tuple[str, str | None, str]:
    """``'fashion-mnist:/d:test'`` -> ``('fashion-mnist', '/d', 'test')``."""
    if not spec or not isinstance(spec, str):
        raise DataSpecError("empty data spec; use digits, fashion-mnist[:DIR], npz:PATH or folder:PATH")
    split = "train"
    body = spec
    for s in SPLITS:
        if body == s:
            raise DataSpecError(f"data spec {spec!r} names only a split")
        if body.endswith(":" + s):
            split, body = s, body[: -len(s) - 1]
            break
    kind, _, arg = body.partition(":")
    kind = kind.strip().lower()
    if kind not in ("digits", "fashion-mnist", "npz", "folder"):
        raise DataSpecError(f"unknown data spec {spec!r}; use digits, fashion-mnist[:DIR], npz:PATH or folder:PATH")
    if kind in ("npz", "folder") and not arg:
        raise DataSpecError(f"data spec {spec!r} needs a path: {kind}:PATH")
    if kind == "digits" and arg:
        raise DataSpecError(f"data spec {spec!r}: digits takes no argument (only :train or :test)")
    return kind, arg or None, split


def load_images(spec: str) -> LabeledData:
    """The images of a data spec: float32 in [0, 1], (N, C, H, W) at their native size and channel count.

    >>> d = load_images("digits:test")
    >>> tuple(d.x.shape[1:]), float(d.x.max()) <= 1.0
    ((1, 8, 8), True)
    """
    kind, arg, split = parse_spec(spec)
    explicit = _has_split_suffix(spec)
    if kind == "digits":
        x, y, labels = _digits(split)
    elif kind == "fashion-mnist":
        x, y, labels = _fashion_mnist(Path(arg) if arg else FASHION_MNIST_DIR, split)
    elif kind == "npz":
        x, y, labels = _npz(Path(arg), split, explicit)
    else:
        x, y, labels = _folder(Path(arg), split, explicit)
    if x.shape[0] == 0:
        raise DataSpecError(f"data spec {spec!r} holds no samples")
    try:
        images = to_unit_images(x)
    except DataSpecError as exc:
        raise DataSpecError(f"data spec {spec}: {exc}") from None
    return LabeledData(images, torch.as_tensor(y, dtype=torch.long), labels, spec)


def load_for_model(spec: str, config) -> LabeledData:
    """The data of ``spec`` as the model of ``config`` (a :class:`fiun_hub.models.ModelConfig`) was trained to
    see it: its own preprocessing (``config.preprocessing``)."""
    return prepare(load_images(spec), config.preprocessing)


def load_data(spec: str, in_chans: int = 1, input_size: Sequence[int] | None = None,
              preprocessing: Preprocessing | None = None) -> LabeledData:
    """Resolve a data spec to tensors shaped ``(N, in_chans, H, W)``, fed with ``preprocessing`` or, by
    default, fiun-hub's training preprocessing (:func:`fiun_hub.preprocessing.legacy`) at ``input_size``
    (``(H, W)`` or timm's ``(C, H, W)``; None keeps the native size).

    >>> d = load_data("digits:test", in_chans=3, input_size=(16, 16))
    >>> tuple(d.x.shape[1:]), len(d.labels)
    ((3, 16, 16), 10)
    """
    images = load_images(spec)
    if preprocessing is None:
        hw = tuple(int(v) for v in input_size)[-2:] if input_size is not None else tuple(images.x.shape[-2:])
        preprocessing = legacy((int(in_chans), *hw))
    return prepare(images, preprocessing)


def prepare(data: LabeledData, p: Preprocessing) -> LabeledData:
    """``data`` (images from :func:`load_images`) fed with the preprocessing ``p``."""
    if data.preprocessing is not None:
        if data.preprocessing == p:
            return data
        raise DataSpecError(f"data {data.spec or '?'} is already fed with other preprocessing "
                            f"({data.preprocessing.describe()}); prepare it from its images")
    return LabeledData(transform_images(data.x, p), data.y, list(data.labels), data.spec, p)


def to_unit_images(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 or float images (N,H,W) / (N,C,H,W) / (N,H,W,C) -> float32 (N,C,H,W) in [0, 1] (uint8 / 255;
    float images above 1 are divided by their maximum)."""
    t = torch.as_tensor(np.array(x, copy=True)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    else:
        t = t.float()
        if not bool(torch.isfinite(t).all()):  # NaN fed to a model gives NaN gradients: a Fisher of nothing
            raise DataSpecError("images hold NaN or infinite values")
        hi = float(t.max()) if t.numel() else 1.0
        if hi > 1.0:
            t = t / hi
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4 and t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4 or 0 in t.shape[1:]:
        raise DataSpecError(f"images must be (N,H,W) or (N,C,H,W) with no empty side, got shape {tuple(t.shape)}")
    return t.contiguous()


def _resize(t: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Pillow's resampling (what torchvision's Resize does to the PIL images timm's transform works on), as
    tensor operations: antialiased bilinear/bicubic (torch's ``antialias=True`` is Pillow's filter, bicubic
    a=-0.5), horizontal pass first, bicubic clipped to [0, 1] after each pass as Pillow's 8-bit passes are;
    nearest picks the source pixel as Pillow does (:func:`_nearest_index`)."""
    h, w = t.shape[-2:]
    if (h, w) == tuple(size):
        return t
    if interpolation == "nearest":
        return t.index_select(-2, _nearest_index(h, size[0])).index_select(-1, _nearest_index(w, size[1]))
    for step in ((h, size[1]), tuple(size)):
        if tuple(t.shape[-2:]) == step:
            continue
        t = F.interpolate(t, size=step, mode=interpolation, align_corners=False, antialias=True)
        if interpolation == "bicubic":
            t = t.clamp_(0.0, 1.0)
    return t


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Pillow's nearest-neighbour source index (ImagingScaleAffine): start at half a step, add the step
    ``n_in / n_out`` in double precision, truncate; the running sum is what decides exact ties."""
    step = n_in / n_out
    pos = np.cumsum(np.concatenate([[step * 0.5], np.full(n_out - 1, step)]))
    return torch.as_tensor(np.clip(pos.astype(np.int64), 0, n_in - 1))


def _center_crop_or_pad(t: torch.Tensor, size: tuple[int, int], fill: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's CenterCrop (and timm's CenterCropOrPad): pad to at least ``size``, then crop the center."""
    ch, cw = size
    h, w = t.shape[-2:]
    if cw > w or ch > h:
        pad = [(cw - w) // 2 if cw > w else 0, (cw - w + 1) // 2 if cw > w else 0,
               (ch - h) // 2 if ch > h else 0, (ch - h + 1) // 2 if ch > h else 0]
        if fill is None:
            t = F.pad(t, pad)
        else:
            out = fill.view(1, -1, 1, 1).expand(t.shape[0], t.shape[1], h + pad[2] + pad[3], w + pad[0] + pad[1])
            out = out.clone()
            out[..., pad[2]: pad[2] + h, pad[0]: pad[0] + w] = t
            t = out
        h, w = t.shape[-2:]
        if (h, w) == (ch, cw):
            return t
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return t[..., top: top + ch, left: left + cw]


def transform_images(x: torch.Tensor, p: Preprocessing) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) -> the model's input (N, p.in_chans, H', W'), as timm's eval transform
    (``create_transform(**cfg, is_training=False)``) would make it image by image: resize with
    ``p.interpolation`` (``center``: shorter side to ``size / crop_pct``; ``squash``: both sides; ``border``:
    longer side, padded with the mean), center crop to ``p.input_size``, normalise. One-channel images are
    repeated for a 3-channel model (as Pillow's ``convert("RGB")`` does) and 3-channel ones averaged for a
    1-channel model."""
    t = x if x.dtype == torch.float32 else x.float()
    c, chans = t.shape[1], p.in_chans
    if c != chans:
        if c == 1:
            t = t.expand(-1, chans, -1, -1)
        elif chans == 1 and c == 3:
            t = t.mean(dim=1, keepdim=True)
        else:  # e.g. 5 channels for a 1-channel model: averaging them would feed it an image it never saw
            raise DataSpecError(f"cannot shape {c}-channel images for a model with in_chans={chans} "
                                "(1-channel images are repeated, 3-channel ones averaged; nothing else)")
    th, tw = p.input_size[1:]
    sh, sw = math.floor(th / p.crop_pct), math.floor(tw / p.crop_pct)
    h, w = t.shape[-2:]
    fill = None
    if p.crop_mode == "squash":
        size = (sh, sw)
    elif p.crop_mode == "border":
        rh, rw = h / sh, w / sw
        ratio = max(rh, rw)
        size = (round(h / ratio), round(w / ratio))
        fill = torch.tensor([round(255 * m) / 255.0 for m in p.mean], dtype=t.dtype)
    elif sh == sw:  # torchvision's Resize(int): the shorter side to sh, the longer in proportion (truncated)
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(sh * long / short)
        size = (new_long, sh) if w <= h else (sh, new_long)
    else:  # timm's ResizeKeepRatio: the shorter side (relative to the target) matches
        ratio = min(h / sh, w / sw)
        size = (round(h / ratio), round(w / ratio))
    t = _resize(t, size, p.interpolation)
    t = _center_crop_or_pad(t, (th, tw), fill)
    mean = torch.tensor(p.mean, dtype=t.dtype).view(1, -1, 1, 1)
    std = torch.tensor(p.std, dtype=t.dtype).view(1, -1, 1, 1)
    return ((t - mean) / std).contiguous()


def shape_images(x: np.ndarray | torch.Tensor, in_chans: int = 1, input_size: Sequence[int] | None = None) -> torch.Tensor:
    """uint8 or float images -> float32 (N,in_chans,H',W') with fiun-hub's training preprocessing
    (:func:`fiun_hub.preprocessing.legacy`)."""
    t = to_unit_images(x)
    hw = tuple(int(v) for v in input_size)[-2:] if input_size is not None else tuple(t.shape[-2:])
    return transform_images(t, legacy((int(in_chans), *hw)))


def _has_split_suffix(spec: str) -> bool:
    return any(spec.endswith(":" + s) for s in SPLITS)


def _split_indices(y: np.ndarray, split: str, test_fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    return np.sort(train if split == "train" else test)


def _digits(split: str):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    idx = _split_indices(d.target, split)
    return images[idx], d.target[idx], list(DIGITS_LABELS)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataSpecError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataSpecError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataSpecError(f"{path} is truncated: header says {dims}, found {body.size} bytes")
    return body.reshape(dims)


def _fashion_mnist(root: Path, split: str):
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for what in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for suffix in (".gz", ""):
            p = root / f"{prefix}-{what}{suffix}"
            if p.exists():
                found[what] = p
                break
        else:
            raise DataSpecError(
                f"Fashion-MNIST {prefix}-{what} not found under {root}; "
                "install it with `apt-get install dataset-fashion-mnist` or give fashion-mnist:DIR"
            )
    x = _read_idx(found["images-idx3-ubyte"])
    y = _read_idx(found["labels-idx1-ubyte"]).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise DataSpecError(f"Fashion-MNIST under {root}: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y, list(FASHION_MNIST_LABELS)


def _npz(path: Path, split: str, explicit: bool = True):
    _regular(path, "npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            splits = {s for s in SPLITS if f"x_{s}" in keys and f"y_{s}" in keys}
            if split in splits:
                xk, yk, whole = f"x_{split}", f"y_{split}", False
            elif "x" in keys and "y" in keys and (split == "train" or not splits):
                # x/y with x_test/y_test beside them is the training set; x/y alone has no split of its own
                xk, yk, whole = "x", "y", not splits
            elif splits:
                raise DataSpecError(f"{path} has no x_{split}/y_{split} (has {sorted(keys)}); a held-out split "
                                    f"must be its own arrays")
            else:
                raise DataSpecError(f"{path} must hold arrays 'x' and 'y' (has {sorted(keys)})")
            x, y = z[xk], z[yk]
            labels = [str(v) for v in z["labels"].tolist()] if "labels" in keys else None
    except DataSpecError:
        raise
    except Exception as exc:  # zipfile/ValueError on a damaged file, or pickled object arrays
        raise DataSpecError(f"cannot read npz {path}: {exc}") from None
    y, x = np.asarray(y), np.asarray(x)
    if x.dtype.kind not in "biuf":  # bool, integers, floats: not strings, dates, complex numbers or objects
        raise DataSpecError(f"{path}: 'x' must hold numbers (images), not {x.dtype}")
    if y.ndim != 1 or x.ndim == 0 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataSpecError(f"{path}: 'y' must be one integer label per image")
    if len(y) and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise DataSpecError(f"{path}: 'y' holds labels outside 0..{MAX_CLASSES - 1}")
    if labels is None:
        labels = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    if len(labels) > MAX_CLASSES:
        raise DataSpecError(f"{path}: 'labels' names {len(labels)} classes, more than {MAX_CLASSES}")
    if len(set(labels)) != len(labels):
        dup = next(v for v in labels if labels.count(v) > 1)
        raise DataSpecError(f"{path}: 'labels' names {dup!r} twice; each class needs its own name")
    if len(y) and (y.min() < 0 or y.max() >= len(labels)):
        raise DataSpecError(f"{path}: labels out of range 0..{len(labels) - 1}")
    x = np.asarray(x)
    if whole and explicit:  # no split of its own: split it like digits, so :train and :test never overlap
        idx = _held_out_split(y, split, str(path))
        x, y = x[idx], y[idx]
    return x, y.astype(np.int64), labels


def _held_out_split(y: np.ndarray, split: str, where: str) -> np.ndarray:
    """:func:`_split_indices` for a source without a split of its own, refused (one line) where a stratified
    split cannot be made."""
    counts = np.bincount(np.asarray(y, dtype=np.int64)) if len(y) else np.zeros(0, dtype=np.int64)
    present = counts[counts > 0]
    if len(y) < 4 or (present < 2).any():
        raise DataSpecError(f"{where} has no split of its own and too few samples per class to split it "
                            f"(every class needs 2); give x_train/y_train and x_test/y_test, or drop :{split}")
    return _split_indices(y, split)


def _folder(root: Path, split: str, explicit: bool = True):
    from PIL import Image

    whole = False
    if (root / split).is_dir():
        root = root / split
    elif any((root / s).is_dir() for s in SPLITS):
        raise DataSpecError(f"image folder {root} has no {split}/ sub-folder; a held-out split must be its own "
                            f"folder")
    else:
        whole = True
    if not root.is_dir():
        raise DataSpecError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataSpecError(f"image folder {root} has no class sub-folders")
    xs, ys, size = [], [], None
    for i, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            _regular(f, "image")  # a FIFO named *.png would block the read
            try:
                with Image.open(f) as im:
                    # grayscale stays one channel; palette, alpha, CMYK... become RGB (widened below if mixed)
                    im = im.convert("L" if im.mode in ("L", "1", "I", "I;16", "F") else "RGB")
                    size = size or im.size
                    arr = np.asarray(im.resize(size))
            except Exception as exc:
                raise DataSpecError(f"cannot read image {f}: {' '.join(str(exc).split())[:200]}") from None
            xs.append(arr)
            ys.append(i)
    if not xs:
        raise DataSpecError(f"image folder {root} holds no images")
    if any(a.ndim == 3 for a in xs):  # grayscale and colour images mixed: every image as RGB
        xs = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in xs]
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    if whole and explicit:  # no train/ and test/ of its own: split it like digits
        idx = _held_out_split(y, split, f"image folder {root}")
        x, y = x[idx], y[idx]
    return x, y, classes


def _regular(path: Path, what: str) -> None:
    """Refuse a missing path or one that is not a regular file (FIFO, device, socket, folder) before opening it."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        raise DataSpecError(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise DataSpecError(f"{what} {path} is not a regular file (a FIFO, device or folder)")
