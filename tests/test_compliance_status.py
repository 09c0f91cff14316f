"""The audit statuses are one table (fiun_hub/compliance/status.py): what the audit, a takedown's plan, `audit --fix`
and the reports do with each status reads it, docs/takedowns.md's table says the same, and the report data keeps
plain strings (its JSON is what it was when statuses were strings)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from fiun_hub.compliance import RepoState, Status
from fiun_hub.report import color_class

DOCS = Path(__file__).resolve().parents[1] / "docs" / "takedowns.md"

# What the code did before the table (compliance.py's FINDINGS and APPLY tuples, plan_takedown's target list,
# cli/compliance.py's ACTIONS, report.py's color_class): the table must say the same.
FINDINGS = {"pending", "pre-forget-pin", "derived-from-flagged", "unpinned-parent", "lost-record", "weights-changed",
            "unrecorded", "forget-accuracy", "origin-missing", "undeclared-derivative",
            # added with the table: a sample-wise request's samples still members (tests/test_compliance_membership.py)
            "samples-still-members"}
APPLY = {"pending", "pre-forget-pin", "derived-from-flagged", "unpinned-parent", "lost-record", "weights-changed",
         "unrecorded"}
TARGETS = {"pending", "pre-forget-pin", "derived-from-flagged", "unpinned-parent", "lost-record", "unrecorded"}
ACTIONS = {"pending": "forget", "pre-forget-pin": "forget", "derived-from-flagged": "forget",
           "unpinned-parent": "forget", "lost-record": "forget", "unrecorded": "forget (its card only claims it)",
           "done": "done", "inherited": "keep (derived after the takedown)",
           "weights-changed": "left as is (see `fiun-hub audit --fix`)"}


def _docs_table() -> dict[str, tuple[str, str, str]]:
    """status -> (finding?, meaning, --fix) from the table under "What the audit checks"."""
    text = DOCS.read_text()
    section = text[text.index("## What the audit checks"):]
    section = section[:section.index("\n## ", 4)]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| `([a-z-]+)` \| (.*?) \| (.*) \| (.*?) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows


def test_the_table_says_what_the_code_did_before_it():
    assert {s.value for s in Status if s.finding} == FINDINGS | {"unpurged"}
    assert {s.value for s in Status if s.fix_forgets} == APPLY
    assert {s.value for s in Status if s.takedown_forgets} == TARGETS
    assert {s.value: s.info.takedown for s in Status if s.info.takedown is not None} == ACTIONS
    for s in Status:
        old = s.value if s.value in ("done", "inherited", "context") else "flagged"
        assert color_class(s.value) == color_class(s) == old
        assert color_class(s.value, "takedown-plan") == ("pending" if s is Status.PENDING else old)
    assert color_class("no-such-status") == "flagged"


def test_docs_table_matches_the_code():
    docs = _docs_table()
    assert set(docs) == {s.value for s in Status if s is not Status.CONTEXT}
    for value, (finding, meaning, fix) in docs.items():
        s = Status(value)
        assert finding.startswith("**yes**") == s.finding and (finding == "no") == (not s.finding), value
        assert meaning == s.info.meaning, value
        assert fix == s.info.fix, value


def test_report_data_holds_plain_strings():
    row = RepoState("acme/a", 1, Status.LOST_RECORD, "0" * 40, None, "lost").to_dict()
    assert type(row["status"]) is str and row["status"] == "lost-record" and row["finding"] is True
    assert json.dumps(row) == json.dumps({**row, "status": "lost-record"})
    assert yaml.safe_dump(row) == yaml.safe_dump({**row, "status": "lost-record"})
    # a status written as its value reads the same, and formats as its value
    assert RepoState("acme/a", 0, "done", "0" * 40, None).to_dict()["finding"] is False
    assert f"{Status.WEIGHTS_CHANGED:>16s}|{Status.DONE}" == " weights-changed|done"
    assert json.dumps([Status.PENDING]) == '["pending"]'
