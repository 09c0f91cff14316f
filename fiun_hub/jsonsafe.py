"""JSON from untrusted bytes (configs, safetensors headers, records): one reader that refuses what would crash or
exhaust the process later (too deep, not JSON) with a :class:`~fiun_hub.errors.BadInput` naming the file."""
from __future__ import annotations

import json
from typing import Any

from .errors import BadInput

MAX_DEPTH = 64  # no config, header or record fiun-hub reads nests anywhere near this


def depth_of(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of JSON data (iterative: never recurses), stopping once past ``limit``."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        # only containers go on the stack (a record of 10k strings is one pass, not 10k pushes and pops)
        stack.extend([(x, d + 1) for x in (v.values() if isinstance(v, dict) else v) if isinstance(x, (dict, list))])
    return deepest


def loads(data: bytes | bytearray | str, where: str, what: str = "JSON", max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` with one-line errors: not JSON (or not UTF-8, or an integer too long to convert), or nested
    deeper than ``max_depth``."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise BadInput(f"{where}: {what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError, TypeError):
        raise BadInput(f"{where}: {what} is not valid JSON") from None
    if depth_of(value, max_depth) > max_depth:
        raise BadInput(f"{where}: {what} is nested too deeply (more than {max_depth} levels)")
    return value
