"""Checked reading of safetensors files: the header is validated against the file before any tensor is read.

safetensors is the only weight format fiun-hub reads; nothing is ever unpickled.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .errors import BadInput
from .jsonsafe import loads as loads_json

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER = 100 << 20


def torch_dtypes() -> dict:
    """safetensors dtype name -> torch dtype."""
    import torch

    names = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
             "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "U16": "uint16",
             "U32": "uint32", "U64": "uint64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn"}
    return {k: getattr(torch, v) for k, v in names.items() if hasattr(torch, v)}


class _LazyDtypes(dict):
    """safetensors dtype name -> torch dtype (torch imported on first use)."""

    def __missing__(self, key):
        if not self:
            self.update(torch_dtypes())
            if key in self:
                return self[key]
        raise KeyError(key)


DTYPES = _LazyDtypes()


def parse_header(head: bytes | bytearray, total_size: int, where: str = "") -> tuple[dict, dict[str, str]]:
    """Validate a safetensors header (``head`` = the file's first bytes, at least 8 + header length).

    Returns ``(tensors, metadata)`` where tensors maps name -> {dtype, shape, data_offsets}. Raises
    :class:`BadInput` if the header is truncated, not JSON, or lies about dtypes, shapes or offsets.
    """
    prefix = f"{where}: " if where else ""
    if total_size < 8 or len(head) < 8:
        raise BadInput(f"{prefix}not a safetensors file (truncated: {total_size} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER or 8 + n > total_size:
        raise BadInput(f"{prefix}not a safetensors file (header length {n} exceeds the file's {total_size} bytes)")
    if len(head) < 8 + n:
        raise BadInput(f"{prefix}safetensors header is truncated")
    header = loads_json(head[8: 8 + n], where or "safetensors file", "safetensors header")
    if not isinstance(header, dict):
        raise BadInput(f"{prefix}safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadInput(f"{prefix}safetensors metadata must map strings to strings")
    body = total_size - 8 - n
    end_max = 0
    ranges = []
    for name, t in header.items():
        if not isinstance(t, dict):
            raise BadInput(f"{prefix}tensor {name!r}: malformed entry")
        dtype, shape, offs = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise BadInput(f"{prefix}tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise BadInput(f"{prefix}tensor {name!r}: malformed shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            raise BadInput(f"{prefix}tensor {name!r}: malformed data_offsets")
        numel = 1
        for d in shape:
            numel *= d
        if offs[1] - offs[0] != numel * DTYPE_SIZES[dtype] or offs[0] < 0:
            raise BadInput(f"{prefix}tensor {name!r}: header size disagrees with its {dtype} shape {shape}")
        if offs[1] > body:
            raise BadInput(f"{prefix}tensor {name!r} runs past the end of the file (truncated)")
        end_max = max(end_max, offs[1])
        ranges.append((offs[0], offs[1], name))
    pos = 0
    for a, b, name in sorted(ranges):
        if a != pos:
            raise BadInput(f"{prefix}tensor {name!r} {'overlaps another' if a < pos else 'leaves a gap before it'}")
        pos = b
    if end_max != body:
        raise BadInput(f"{prefix}safetensors data is {body} bytes but the header accounts for {end_max}")
    return header, metadata


def read_header(path: str | Path, where: str = "") -> tuple[dict, dict[str, str]]:
    """Header of a safetensors file on disk, validated against the file size."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            first = fh.read(8)
            if len(first) == 8:
                (n,) = struct.unpack("<Q", first)
                first += fh.read(min(n, MAX_HEADER))
    except OSError as exc:
        raise BadInput(f"{where or p}: cannot read: {exc.strerror}") from None
    return parse_header(first, size, where or str(p))


def header_of_bytes(data: bytes | bytearray, where: str = "") -> tuple[dict, dict[str, str]]:
    return parse_header(data, len(data), where)


def read_tensors(data: bytes | bytearray, header: dict, names) -> dict:
    """Copies of the tensors ``names`` of a safetensors file held in ``data`` (``header``: its validated
    header, :func:`header_of_bytes`), as torch tensors of the stored dtype and shape."""
    import torch

    start = 8 + int.from_bytes(data[:8], "little")
    out = {}
    for n in names:
        h = header[n]
        a, b = h["data_offsets"]
        dt = DTYPES[h["dtype"]]
        out[n] = torch.frombuffer(data, dtype=dt, count=(b - a) // dt.itemsize, offset=start + a).reshape(
            h["shape"]).clone()
    return out


def splice_tensor(data: bytearray, header: dict, name: str, tensor) -> None:
    """Overwrite, in place, the bytes of tensor ``name`` in the safetensors file held in ``data`` with
    ``tensor`` (same dtype and shape as stored): the header and every other byte stay as they are, so a file
    whose few tensors change is rewritten without deserialising the rest."""
    import torch

    start = 8 + int.from_bytes(data[:8], "little")
    a, b = header[name]["data_offsets"]
    data[start + a: start + b] = tensor.contiguous().view(torch.uint8).numpy().tobytes()


def load_tensors(data: bytes, where: str = "") -> dict:
    """Tensors of a safetensors byte string, after validating its header."""
    from safetensors.torch import load

    header_of_bytes(data, where)
    try:
        return load(data)
    except Exception as exc:
        raise BadInput(f"{where}: unreadable safetensors: {exc}") from None
