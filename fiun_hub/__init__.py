"""fiun-hub: machine unlearning across whole families of derived models (docs/architecture.md is the map).

The package wires the lineage layer's index hook into the hub (:func:`fiun_hub.hub.local.register_indexer`), so
that every LocalHub publish keeps ``.fiun/lineage.json`` current in any process, whatever it imported first,
while the hub layer itself never imports lineage. The hook below loads :mod:`fiun_hub.lineage` (and networkx)
only when a publish first needs it.
"""
from __future__ import annotations

from .hub.local import register_indexer as _register_indexer


class _LineageIndexer:
    """The lineage layer's index hook, loaded on first use (a command that never publishes pays nothing for it)."""

    def entry(self, hub, repo: str, cid: str) -> dict:
        from .lineage import index_entry

        return index_entry(hub, repo, cid)

    def read(self, hub) -> dict | None:
        from .lineage import read_index_file

        return read_index_file(hub)

    def write(self, hub, entries: dict) -> None:
        from .lineage import write_index_file

        write_index_file(hub, entries)


_register_indexer(_LineageIndexer())
