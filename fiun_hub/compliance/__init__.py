"""Compliance: takedown requests, their ledger inside the hub, and audits that prove them (docs/takedowns.md).

(Transitional: the module moved to ``fiun_hub/compliance/takedown.py`` unchanged, so that ``git log --follow``
keeps its history; the next commits split it along its jobs.)
"""
from . import takedown as _module

globals().update({k: v for k, v in vars(_module).items() if not k.startswith("__")})
__all__ = list(_module.__all__)
