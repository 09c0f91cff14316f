"""Constants shared across fiun-hub, in one place."""
from __future__ import annotations

import errno
import os
from pathlib import Path

DEFAULT_HUB = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fiun-hub"
HUB_ENV = "FIUN_HUB"
DEFAULT_BRANCH = "main"
FIUN_DIR = ".fiun"  # fiun-hub's own records inside a hub

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FIM_FILE = "fim.safetensors"
FIM_CLASSES_FILE = "fim-classes.safetensors"
PROTO_FILE = "fim-prototypes.safetensors"  # class prototypes, for `forget --scope features` (fiun_hub/feature_forget.py)

RELATIONS = ("finetune", "merge", "adapter", "quantized")
DEFAULT_AUTHOR = os.environ.get("USER", "fiun-hub")
TAG = "fiun-hub"
MAX_LIST = 100_000  # entries of one list in a card (card.MAX_LIST): labels, records, a record's classes
MAX_CLASSES = 100_000  # labels of one model or data set: bounds every label list built from an untrusted integer
LEDGER_REPO = "fiun-hub/ledger"  # the takedown ledger: a repo in the hub, not a model (kept out of the lineage)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # what a full file system raises: out of bytes, inodes or quota
# Two audit finding kinds, written by the tiers below compliance that find them (fiun_hub/fingerprint.py,
# fiun_hub/purge.py); their meaning: fiun_hub/compliance/status.py (Status.UNDECLARED_DERIVATIVE, Status.UNPURGED).
FINDING_UNDECLARED_DERIVATIVE = "undeclared-derivative"
FINDING_UNPURGED = "unpurged"
# A ledger record's per-repo ``action`` (docs/takedowns.md, "The ledger"): written by the takedown's step
# (fiun_hub/compliance/takedown.py), read by the ledger's proof rule and by the purge (fiun_hub/purge.py).
LEDGER_FORGOT = "forgot"      # fiun-hub's own forget wrote this revision (with the sha256 of its weights)
LEDGER_RECORDED = "recorded"  # the repo already carried the request: only entered in the ledger
