"""Compliance: takedown requests, their ledger inside the hub, and audits that prove them (docs/takedowns.md).

A *takedown request* is a YAML file a compliance team receives (who asked, why, when, by when, which models'
training data held what, and what must go). :func:`plan_takedown` validates it against the hub and works out
the affected set; :func:`run_takedown` carries it out with FIUn (:mod:`fiun_hub.unlearn`) and records the
request and its outcome (every repo, old and new revision, hash of the new weights, measured accuracies) in
the *ledger*: the repo ``fiun-hub/ledger`` of the same hub, one ``records/{id}.json`` and ``requests/{id}.yaml``
per request. The ledger record lands in the **same** publish as the forget's new revisions, so a takedown
lands whole or not at all; a second ledger commit then adds the new revision ids and the accuracies.
:func:`audit` recomputes each request's affected set from the lineage *now* and gives every repo in it a
:class:`Status` (the one table of what each status means, whether it is a finding and what is done about it);
:func:`fix` applies the request to the flagged repos.

The package, bottom to top (each module imports only those below it; ``lint-imports`` checks it, contract
"Compliance: repair -> takedown -> report -> classification | measure -> ledger -> request -> status | clock"):

==================  ==========================================================================================
``status``          :class:`Status`: the audit statuses and finding kinds, with their meaning, as one table
``clock``           ``clock.now()``: the time every ledger event and report is stamped with
``request``         :class:`TakedownRequest`, :func:`parse_request`, :func:`load_request`, :class:`RequestError`
``ledger``          the ledger repo: :func:`ledger_records`, the commit that writes a record (``ledger_change``),
                    which entries prove a forget (:func:`ledger_proof`)
``classification``  :class:`RepoState`, :func:`classify`: where each repo of an affected set stands now
``measure``         held-out forget / retain accuracy on ``--eval-data``
``report``          :func:`audit` and the report data it returns (per request entry, lineage picture data)
``takedown``        :class:`TakedownPlan`, :func:`plan_takedown`, :func:`plan_report`, :func:`run_takedown`
``repair``          :func:`fix` (``audit --fix``, ``--adopt``)
==================  ==========================================================================================

Everything other modules use is re-exported here: ``from fiun_hub import compliance; compliance.audit(...)``.
"""
from __future__ import annotations

from ..constants import LEDGER_REPO
from ..hub.ids import REQUEST_ID_RE
from .classification import RepoState, classify
from .ledger import (LEDGER_FORMAT, LEDGER_TAG, adopted_entries, ledger_exists, ledger_proof, ledger_record,
                     ledger_records)
from .report import DEFAULT_MAX_FORGET_ACC, audit
from .repair import fix
from .request import RequestError, TakedownRequest, load_request, parse_request
from .status import Status, StatusInfo
from .takedown import TakedownPlan, plan_report, plan_takedown, run_takedown

__all__ = ["LEDGER_REPO", "LEDGER_FORMAT", "LEDGER_TAG", "TakedownRequest", "RequestError", "parse_request",
           "load_request", "ledger_records", "ledger_record", "ledger_exists", "ledger_proof", "RepoState", "classify",
           "Status", "StatusInfo", "TakedownPlan", "plan_takedown", "plan_report", "run_takedown", "audit", "fix",
           "adopted_entries", "DEFAULT_MAX_FORGET_ACC", "REQUEST_ID_RE"]
