"""The audit statuses: what an audit (and a takedown's plan) says about each repo of a request's affected set, and
the kinds of the findings about a request as a whole. One table, here: each status's meaning, whether it is a
finding, what a takedown and ``audit --fix`` do with it, and its colour class in the lineage picture. The
``fiun-hub audit`` text, the takedown plan's action column, the reports' legend (fiun_hub/report.py) and
docs/takedowns.md ("What the audit checks", checked against this table by tests/test_compliance_status.py) all
read it.

A status is a ``str`` enum: it compares, hashes and formats as its value, and the report data (JSON) holds the
plain value (``status.value``), so the JSON is what it was when statuses were strings.

>>> Status("lost-record").finding, Status.DONE.finding, Status.WEIGHTS_CHANGED.takedown_forgets
(True, False, False)
>>> json.dumps({"status": Status.PRE_FORGET_PIN}), f"{Status.DONE:>6s}", Status.lookup("no-such") is None
('{"status": "pre-forget-pin"}', '  done', True)

Two finding kinds are written, as plain values, by the lower tiers that find them (they cannot import this
package): ``undeclared-derivative`` by fiun_hub/fingerprint.py, ``unpurged`` by fiun_hub/purge.py. Their values
are named once, in fiun_hub/constants.py, which both sides import.
"""
from __future__ import annotations

import enum
import json  # noqa: F401  (the doctest)
from dataclasses import dataclass
from typing import overload

from ..constants import FINDING_UNDECLARED_DERIVATIVE, FINDING_UNPURGED

#: the lineage picture's legend classes (fiun_hub/report.py colours them)
LEGENDS = ("done", "inherited", "pending", "flagged", "context")


@dataclass(frozen=True)
class StatusInfo:
    """One row of the table: what a status means and what is done about it."""

    meaning: str
    #: a finding: an audit that finds it fails (exit 1)
    finding: bool
    #: the status of a repo's row in the affected set; False: a finding about the request (listed under it: no row
    #: carries it), or a node of the picture only
    row: bool = True
    #: its class in the lineage picture's legend; ``pending`` is the work to do in a takedown's plan, a finding
    #: (flagged) in an audit
    legend: str = "flagged"
    #: a takedown's plan: what it does with such a repo (the action column), None where a plan never shows it
    takedown: str | None = None
    #: a takedown forgets such a repo (it is one of the plan's targets)
    takedown_forgets: bool = False
    #: ``audit --fix`` forgets such a repo
    fix_forgets: bool = False
    #: what ``audit --fix`` does about it, in words (docs/takedowns.md's ``--fix`` column)
    fix: str = "–"
    #: a warning (never a finding): the audit passes (exit 0) but does not say a plain "ok"; its text and JSON
    #: (``warnings``) name what it could not verify
    warning: bool = False


def _forgets(meaning: str, *, takedown: str = "forget", fix: str = "forgets it", legend: str = "flagged") -> StatusInfo:
    """The row of a finding a takedown and ``audit --fix`` both forget."""
    return StatusInfo(meaning, True, legend=legend, takedown=takedown, takedown_forgets=True, fix_forgets=True,
                      fix=fix)


class Status(str, enum.Enum):
    """An audit status (a repo's row) or a finding kind (a request's), with its row of the table as ``info``."""

    info: StatusInfo

    # `Status(value)` looks a member up by its value (Enum's own lookup: this __new__ only builds the members below)
    @overload
    def __new__(cls, value: object) -> "Status": ...
    @overload
    def __new__(cls, value: str, info: StatusInfo) -> "Status": ...
    def __new__(cls, value: object, info: StatusInfo | None = None) -> "Status":
        assert isinstance(value, str) and info is not None, "a member is a value and its row"
        member = str.__new__(cls, value)
        member._value_ = value
        member.info = info
        return member

    # str() and format() give the value (as they do for a str, and for a StrEnum on Python 3.11+)
    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)

    DONE = "done", StatusInfo(
        "its head carries the request; its weights are the ones the ledger recorded, or later ones the ledger also "
        "recorded (for example by a second request)", False, legend="done", takedown="done")
    INHERITED = "inherited", StatusInfo(
        "its head does not carry the request, but every pin leading to it from the origins is a revision that "
        "carries it: a model derived *after* the takedown from a cleaned revision", False, legend="inherited",
        takedown="keep (derived after the takedown)")
    PRE_FORGET_PIN = "pre-forget-pin", _forgets(
        "derived from a revision of an affected repo that predates the takedown (the lineage pin shows it; the "
        "message names the pin and, through ancestors, the cause)")
    DERIVED_FROM_FLAGGED = "derived-from-flagged", _forgets(
        "derived from a revision that lost the record (see `lost-record`)")
    UNPINNED_PARENT = "unpinned-parent", _forgets(
        "derived from an affected repo without a pinned revision, so it cannot be proved clean")
    LOST_RECORD = "lost-record", _forgets(
        "the ledger recorded the forget here, but the head's card no longer carries it (a later `push` dropped it)",
        fix="forgets it again")
    WEIGHTS_CHANGED = "weights-changed", StatusInfo(
        "the head carries the request, but a later commit changed its weights to ones the ledger never recorded",
        True, takedown="left as is (see `fiun-hub audit --fix`)", fix_forgets=True,
        fix="forgets it again, if its sidecar matches the new weights")
    UNRECORDED = "unrecorded", _forgets(
        "the head's card claims the request but the ledger holds no entry of a fiun-hub forget there (a record in a "
        "card is a claim anyone who can write the repo can make; also a plain `fiun-hub forget --request-id`)",
        takedown="forget (its card only claims it)",
        fix="forgets it (a takedown re-run too): never recorded on the card's word")
    PENDING = "pending", _forgets(
        "the request was never applied here (an origin without it); in a takedown's plan, the work to do",
        legend="pending")
    FORGET_ACCURACY = "forget-accuracy", StatusInfo(
        "with `--eval-data`: held-out forget accuracy above `--max-forget-acc` (default 5%)", True,
        fix="forgets it, if it was `inherited`")
    SAMPLES_STILL_MEMBERS = "samples-still-members", StatusInfo(
        "sample-wise, with `--eval-data`: a loss-threshold membership test still tells the request's samples from "
        "held-out samples of their labels (AUC above 50 by more than 2 standard errors; AUC, SE and n in the "
        "message and the row's `membership`)", True,
        fix="– (forgetting again applies the same rule: retrain without the samples)")
    MEMBERSHIP_UNVERIFIED = "membership-unverified", StatusInfo(
        "(a warning, not a finding) sample-wise: the samples' membership was not checked (no `--eval-data`, or the "
        "data did not fit) or is not decidable (fewer than 20 samples or 20 held-out samples of their labels)",
        False, row=False, warning=True)
    ORIGIN_MISSING = "origin-missing", StatusInfo(
        "an origin of the request is no longer in the hub", True, row=False)
    UNDECLARED_DERIVATIVE = FINDING_UNDECLARED_DERIVATIVE, StatusInfo(
        "a model *outside* the affected set whose weights look derived from an affected repo's pre-forget revision, "
        "though its card does not declare it", True, row=False,
        fix="`--fix --adopt` forgets it; plain `--fix` leaves it")
    UNPURGED = FINDING_UNPURGED, StatusInfo(
        "a file of a pre-forget revision not tombstoned or whose blob is still on disk, a purged blob back in a "
        "repo, a staged or temporary file holding a purged one, or, in a repo the ledger does not name, a revision "
        "behind the head or a head's safetensors file other than its weights that still holds the data (its card "
        "pins a purged revision, or the weights look derived from a pre-forget one)", True, row=False,
        fix="purges it (a `purge` ledger event) and deletes the strays")
    CONTEXT = "context", StatusInfo(
        "(the lineage picture only) a parent outside the affected set", False, row=False, legend="context")

    @property
    def finding(self) -> bool:
        return self.info.finding

    @property
    def takedown_forgets(self) -> bool:
        return self.info.takedown_forgets

    @property
    def fix_forgets(self) -> bool:
        return self.info.fix_forgets

    def legend(self, kind: str = "audit") -> str:
        """Its class in the lineage picture of a report of ``kind`` (``audit``, ``takedown``, ``takedown-plan``)."""
        return "flagged" if self.info.legend == "pending" and kind != "takedown-plan" else self.info.legend

    @classmethod
    def lookup(cls, value: object) -> "Status | None":
        """The status of a report's value (a string), or None for one this table does not know."""
        try:
            return cls(value)
        except ValueError:
            return None


__all__ = ["Status", "StatusInfo", "LEGENDS"]
