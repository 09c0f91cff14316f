"""Named errors. Library code raises these; the CLI maps each to one line on stderr and an exit code.

Exit codes (DESIGN.md section 7): 0 success, 1 a failed check (audit, verify), 2 bad input.
"""
from __future__ import annotations


class FiunError(Exception):
    """Base of every error fiun-hub raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class BadInput(FiunError):
    """The user handed us something we cannot use (malformed id, file, YAML, spec...)."""


class InvalidRepoId(BadInput):
    """A repo id that is not ``org/name``."""


class RepoNotFound(BadInput):
    """No such repo in the hub."""


class RevisionNotFound(BadInput):
    """No such revision (commit, branch or tag) in a repo."""


class EntryNotFound(BadInput):
    """No such file at a revision."""


class Purged(EntryNotFound):
    """A file of a revision that a takedown purged: its bytes are gone, a tombstone names the request and the date
    (docs/hub-layout.md, "Tombstones"). ``status`` is what ``fiun-hub serve`` answers (451)."""

    status = 451

    def __init__(self, message: str, request: str | None = None, at: str | None = None):
        super().__init__(message)
        self.request = request
        self.at = at


class HubNotFound(BadInput):
    """The hub directory does not exist or is not a hub."""


class LineageError(BadInput):
    """The inheritance graph is invalid (cycle, unknown parent, pin to an unknown revision)."""


class CardError(BadInput):
    """A model card whose front matter is malformed or breaks the schema."""


class SidecarError(BadInput):
    """A Fisher sidecar that is missing, stale, malformed or holds non-finite values."""


class DataSpecError(BadInput):
    """A data spec that cannot be resolved to a dataset."""


class UnlearnError(BadInput):
    """A forget request that cannot be carried out as asked."""


class ConflictError(FiunError):
    """A publish expected a head that has moved (someone else wrote first)."""

    exit_code = 2


class CheckFailed(FiunError):
    """A check (verify, audit) found problems."""

    exit_code = 1
