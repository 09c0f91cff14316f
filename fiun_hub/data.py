"""Data specs -> labelled tensors shaped for a model.

A data spec is a short string (DESIGN.md section 7):

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, labels ``"0"``..``"9"``); split 70/30,
  stratified, fixed seed, so ``digits:train`` and ``digits:test`` never overlap.
- ``fashion-mnist[:DIR]``: the idx files of Debian's ``dataset-fashion-mnist`` (default
  ``/usr/share/datasets/fashion-mnist``).
- ``npz:PATH``: a ``.npz`` with arrays ``x`` (N,H,W or N,C,H,W) and ``y`` (N,), optional ``labels``;
  loaded with ``allow_pickle=False``.
- ``folder:PATH``: one sub-folder per class holding image files (read with Pillow).

A ``:train`` or ``:test`` suffix picks the split (default: ``train``). Images are scaled to [0, 1],
resized to the model's input size, given the model's ``in_chans`` and normalised with mean/std 0.5.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .constants import MAX_CLASSES
from .errors import DataSpecError

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
        return LabeledData(self.x[keep], mapped[keep], list(names), self.spec)

    def to_label_space(self, names: Sequence[str]) -> "LabeledData":
        """Re-index targets to another label list; samples whose class is not in ``names`` are dropped."""
        present = [n for n in names if n in self.labels]
        sub = self.select_labels(present)
        idx = torch.tensor([list(names).index(n) for n in present], dtype=torch.long)
        return LabeledData(sub.x, idx[sub.y] if len(sub) else sub.y, list(names), self.spec)

    def subset(self, index: torch.Tensor | Sequence[int]) -> "LabeledData":
        index = torch.as_tensor(index, dtype=torch.long)
        return LabeledData(self.x[index], self.y[index], list(self.labels), self.spec)


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


def load_data(spec: str, in_chans: int = 1, input_size: Sequence[int] | None = None) -> LabeledData:
    """Resolve a data spec to tensors shaped ``(N, in_chans, H, W)``.

    ``input_size`` is ``(H, W)`` (or timm's ``(C, H, W)``); None keeps the native size.

    >>> d = load_data("digits:test", in_chans=3, input_size=(16, 16))
    >>> tuple(d.x.shape[1:]), len(d.labels)
    ((3, 16, 16), 10)
    """
    kind, arg, split = parse_spec(spec)
    if kind == "digits":
        x, y, labels = _digits(split)
    elif kind == "fashion-mnist":
        x, y, labels = _fashion_mnist(Path(arg) if arg else FASHION_MNIST_DIR, split)
    elif kind == "npz":
        x, y, labels = _npz(Path(arg), split)
    else:
        x, y, labels = _folder(Path(arg), split)
    if x.shape[0] == 0:
        raise DataSpecError(f"data spec {spec!r} holds no samples")
    try:
        images = shape_images(x, in_chans, input_size)
    except DataSpecError as exc:
        raise DataSpecError(f"data spec {spec}: {exc}") from None
    return LabeledData(images, torch.as_tensor(y, dtype=torch.long), labels, spec)


def shape_images(x: np.ndarray | torch.Tensor, in_chans: int = 1, input_size: Sequence[int] | None = None) -> torch.Tensor:
    """uint8 or float images (N,H,W) / (N,C,H,W) / (N,H,W,C) -> normalised float32 (N,in_chans,H',W')."""
    t = torch.as_tensor(np.array(x, copy=True)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    else:
        t = t.float()
        hi = float(t.max()) if t.numel() else 1.0
        if hi > 1.0:
            t = t / hi
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4 and t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4 or 0 in t.shape[1:]:
        raise DataSpecError(f"images must be (N,H,W) or (N,C,H,W) with no empty side, got shape {tuple(t.shape)}")
    c = t.shape[1]
    if c != in_chans:
        if c == 1:
            t = t.expand(-1, in_chans, -1, -1)
        elif in_chans == 1:
            t = t.mean(dim=1, keepdim=True)
        else:
            raise DataSpecError(f"cannot shape {c}-channel images for a model with in_chans={in_chans}")
    if input_size is not None:
        hw = tuple(int(v) for v in input_size)[-2:]
        if tuple(t.shape[-2:]) != hw:
            t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    return ((t - 0.5) / 0.5).contiguous()


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


def _npz(path: Path, split: str):
    _regular(path, "npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            xk = f"x_{split}" if f"x_{split}" in keys else "x"
            yk = f"y_{split}" if f"y_{split}" in keys else "y"
            if xk not in keys or yk not in keys:
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
    return np.asarray(x), y.astype(np.int64), labels


def _folder(root: Path, split: str):
    from PIL import Image

    if (root / split).is_dir():
        root = root / split
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
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def _regular(path: Path, what: str) -> None:
    """Refuse a missing path or one that is not a regular file (FIFO, device, socket, folder) before opening it."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        raise DataSpecError(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise DataSpecError(f"{what} {path} is not a regular file (a FIFO, device or folder)")
