"""fiun-hub: machine unlearning across whole families of derived models (docs/architecture.md is the map).

Importing the package loads the lineage layer, which registers its index hook with the hub
(:func:`fiun_hub.hub.local.register_indexer`): every LocalHub publish then keeps ``.fiun/lineage.json`` current in
any process, whatever it imported first, while the hub layer itself never imports lineage.
"""
from . import lineage as _lineage  # noqa: F401  (registers the lineage index hook)
