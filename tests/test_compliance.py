"""Takedown requests, the ledger, audits and their reports, end to end on a small real network.

The network is tests/test_forget.py's trained DAG (root -> child-a, child-b -> merged; root -> il; unrelated ->
unrelated-child; real test_resnet models trained on digits, with sidecars), built once per session and copied
before anything changes it. The story: a takedown of class "3" at dag/root (with held-out accuracies), a clean
audit (exit 0), a model pushed afterwards from a pre-takedown revision of dag/child-a (and one from the cleaned
revision), a failing audit naming it (exit 1), `audit --fix`, a clean audit again; the HTML report opened in
headless Chromium. Other tests: request validation, lost records and changed weights, sequential requests,
re-runs and conflicting ids.

The commands run in-process through click's runner, registered on the real `fiun-hub` group.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import fingerprint
from fiun_hub.compliance import LEDGER_REPO, RequestError, ledger_record, parse_request
from fiun_hub.constants import WEIGHTS_FILE
from fiun_hub.hub.local import LocalHub, RepoChange
from test_forget import AFFECTED, FORGET, A, B, I, R, U, V, copy_hub, digits, heads, push, shared_build, \
    trained_dag

LATE, CLEAN = "dag/late", "dag/clean"
REQUEST = """\
id: TKD-2026-001
reason: "Erasure request (GDPR art. 17): a data subject's handwritten samples of digit 3"
requested_by: dpo@example.org
received: 2026-11-20
deadline: 2099-12-20
origins: [dag/root]
forget:
  classes: ["3"]
notes: |
  Ticket LEGAL-4711. The samples were in dag/root's training shard.
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    return trained_dag(tmp_path_factory)


def invoke(*args) -> tuple[int, str, str]:
    """The real `fiun-hub` group with `takedown` and `audit` registered, in-process."""
    from click.testing import CliRunner

    from fiun_hub_cli.compliance import audit, takedown
    from fiun_hub_cli.main import main

    main.add_command(takedown)
    main.add_command(audit)
    result = CliRunner().invoke(main, [str(a) for a in args], env={"FIUN_HUB": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def ok(res, code: int = 0) -> str:
    assert res[0] == code, res
    return res[1]


def one_error_line(res) -> str:
    code, out, err = res
    assert code == 2, res
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fiun-hub: error: "), err
    assert "Traceback" not in out + err
    return lines[0]


def late_model(hub: LocalHub, repo: str, parent: str, rev: str, without: str | None = None,
               source: LocalHub | None = None) -> str:
    """Push ``repo``, derived from ``parent@rev``: its weights (read from ``source``, a copy taken before the
    takedown purged them, when given), briefly fine-tuned (on no sample of class ``without``), with fresh
    sidecars."""
    from fiun_hub.models import load_model
    from fiun_hub.research.training import train_classifier

    model, config, _ = load_model(source or hub, parent, rev)
    data = digits("train").subset(torch.arange(900, 1000)).to_label_space(config.labels)
    if without is not None:
        data = data.subset(torch.nonzero(data.y != config.labels.index(without)).flatten())
    train_classifier(model, data, epochs=1, lr=1e-4, batch_size=32, seed=9)
    if source is None:
        return push(hub, model.eval(), repo, config.labels, parents=[f"{parent}@{rev}"], fim_data=data)
    # `fiun-hub push --parent` refuses a purged revision; the edge team's upload (any client: serve, the HF
    # client) still lands with the pin in its card, which is what the audit must catch.
    cid = push(source, model.eval(), repo, config.labels, parents=[f"{parent}@{rev}"], fim_data=data)
    files = {p: source.file_path(repo, p, cid) for p in source.list_files(repo, cid)}
    return hub.publish([RepoChange(repo, files, "Edge build (uploaded)", parent_commit="")])[repo]


def build_story(root: Path, src: Path, info: dict) -> dict:
    """The whole takedown story on a copy of the trained hub in ``root``; each step's output is kept (JSON)."""
    hub_dir = root / "hub"
    hub = copy_hub(src, hub_dir)
    req = root / "TKD-2026-001.yaml"
    req.write_text(REQUEST)
    s: dict = {"info": info, "before_heads": heads(hub)}
    H = ("--hub", hub_dir)
    before = fingerprint(hub_dir)
    s["dry"] = invoke(*H, "takedown", req, "--dry-run", "--report", root / "plan.json")
    s["plan_report"] = json.loads((root / "plan.json").read_text())
    s["dry_md"] = invoke(*H, "takedown", req, "--dry-run", "--report", root / "plan.md")
    s["dry_html"] = invoke(*H, "takedown", req, "--dry-run", "--report", root / "plan.html")
    s["plan_md"], s["plan_html"] = (root / "plan.md").read_text(), (root / "plan.html").read_text()
    s["dry_unchanged"] = fingerprint(hub_dir) == before
    s["takedown"] = invoke(*H, "--json", "takedown", req, "--eval-data", "digits:test",
                           "--report", root / "takedown.html")
    s["after_takedown"] = heads(hub)
    s["record"] = ledger_record(hub, "TKD-2026-001")
    s["ledger_log"] = [{"id": c.id, "message": c.message, "files": sorted(c.files)} for c in hub.history(LEDGER_REPO)]
    shutil.copytree(hub_dir, root / "after-takedown", symlinks=True)  # for the other tests
    s["audit_clean"] = invoke(*H, "audit")
    s["rerun"] = invoke(*H, "takedown", req)
    s["after_rerun"] = heads(hub)
    # Afterwards, someone derives a model from child-a's pre-takedown revision, another from its cleaned head.
    # (The takedown purged the pre-takedown weights from the hub: the edge team's copy is from before it.)
    s["late_rev"] = late_model(hub, LATE, A, info["revisions"][A], source=copy_hub(src, root / "edge"))
    s["clean_rev"] = late_model(hub, CLEAN, A, hub.head(A), without=FORGET)
    s["lineage_check"] = invoke(*H, "--json", "lineage", "--check")
    s["audit_failing"] = invoke(*H, "audit", "--report", root / "failing.html")
    invoke(*H, "audit", "--report", root / "failing.json")
    invoke(*H, "audit", "--report", root / "failing.md")
    s["fix"] = invoke(*H, "--json", "audit", "--fix", "--eval-data", "digits:test", "--report", root / "fixed.html")
    s["audit_again"] = invoke(*H, "audit", "--report", root / "final.md")
    s["verify"] = invoke(*H, "verify")
    return s


@pytest.fixture(scope="module")
def story(dag, tmp_path_factory):
    """The story, run once per session (pytest-xdist workers share it); nothing may change its hub."""
    src, info = dag
    hub_dir, s = shared_build(tmp_path_factory, "takedown-story", lambda folder: build_story(folder, src, info))
    return {**s, "root": hub_dir.parent, "hub": LocalHub(hub_dir)}


# ----------------------------------------------------------------------------------------------- the story
def test_dry_run_shows_the_affected_set_and_changes_nothing(story):
    out = ok(story["dry"])
    assert story["dry_unchanged"]
    assert "affected: 5 repo(s); 5 to forget" in out
    for repo in AFFECTED:
        assert repo in out
    assert U not in out and V not in out
    plan = story["plan_report"]  # `--dry-run --report`: the plan's report, nothing applied
    assert plan["kind"] == "takedown-plan" and plan["ok"] is True
    assert sorted(plan["requests"][0]["todo"]) == sorted(AFFECTED)
    assert plan["findings"] == plan["requests"][0]["findings"]  # the trained DAG declares every edge
    ok(story["dry_md"]), ok(story["dry_html"])
    for text in (story["plan_md"], story["plan_html"]):  # the same plan in the other two formats
        assert all(repo in text for repo in AFFECTED)


def test_takedown_forgets_everything_derived_and_records_it(story):
    data = json.loads(ok(story["takedown"]))
    hub, before = story["hub"], story["before_heads"]
    assert set(data["revisions"]) == set(AFFECTED)
    assert data["ok"] and data["report"].endswith("takedown.html")
    rec = story["record"]
    assert rec["request"]["origins"] == [R] and rec["request"]["forget"] == {"classes": ["3"]}
    assert rec["request"]["received"] == "2026-11-20"
    assert set(rec["repos"]) == set(AFFECTED) and len(rec["events"]) == 1
    for repo in AFFECTED:
        e = rec["repos"][repo]
        assert e["from"] == before[repo] and e["to"] == story["after_takedown"][repo]
        assert e["weights_sha256"] == hub.list_files(repo, e["to"])[WEIGHTS_FILE]
        assert e["forget_acc_before"] > 80 and e["forget_acc"] <= 1.0, (repo, e)
        assert e["retain_acc"] >= e["retain_acc_before"] - 2.0, (repo, e)
    for repo in (U, V):
        assert story["after_takedown"][repo] == before[repo]
    # the request as received is in the ledger, versioned: the record landed with the forget, then the revisions
    assert hub.read_file(LEDGER_REPO, "requests/TKD-2026-001.yaml").decode() == REQUEST
    log = story["ledger_log"]
    assert len(log) == 2 and "new revisions" in log[0]["message"]
    assert set(log[1]["files"]) == {"records/TKD-2026-001.json", "requests/TKD-2026-001.yaml", "README.md"}


def test_clean_audit_and_rerun_is_a_noop(story):
    out = ok(story["audit_clean"])
    assert "audit ok: 1 request(s), 5 repo(s) checked" in out
    assert "(deadline met)" in out
    assert "nothing to do" in ok(story["rerun"])
    assert story["after_rerun"] == story["after_takedown"]


def test_lineage_check_shows_the_pre_forget_pin(story):
    code, out, _ = story["lineage_check"]
    assert code == 1
    kinds = {(p["repo"], p["kind"]) for p in json.loads(out)}
    assert (LATE, "pre-forget-pin") in kinds and (CLEAN, "pre-forget-pin") not in kinds


def test_audit_flags_the_model_derived_from_a_pre_takedown_revision(story):
    code, out, err = story["audit_failing"]
    assert code == 1, (out, err)
    late = next(line for line in out.splitlines() if line.strip().startswith(LATE))
    assert "PRE-FORGET-PIN" in late
    assert f"derived from {A}@{story['info']['revisions'][A][:12]}" in out
    clean = next(line for line in out.splitlines() if line.strip().startswith(CLEAN))
    assert "inherited" in clean
    assert "audit failed: 1 finding(s)" in out
    data = json.loads((story["root"] / "failing.json").read_text())
    assert not data["ok"] and [(f["repo"], f["kind"]) for f in data["findings"]] == [(LATE, "pre-forget-pin")]
    rows = {r["repo"]: r for r in data["requests"][0]["repos"]}
    assert rows[LATE]["head"] == story["late_rev"] and rows[CLEAN]["status"] == "inherited"
    assert all(rows[r]["status"] == "done" for r in AFFECTED)


def test_fix_dampens_it_with_the_origins_pre_forget_fim_and_records_it(story):
    data = json.loads(ok(story["fix"]))
    hub = story["hub"]
    assert data["ok"] and data["findings_before_fix"][0]["repo"] == LATE
    [fixed] = data["fixed"]
    assert fixed["fixed"] == [LATE] and set(fixed["revisions"]) == {LATE}
    new = fixed["revisions"][LATE]["to"]
    assert hub.head(LATE) == new and hub.head(CLEAN) == story["clean_rev"]  # the clean one is left alone
    from fiun_hub.repo import read_meta

    record = next(u for u in read_meta(hub, LATE).unlearned if u["request"] == "TKD-2026-001")
    # U(root) came from root's revision before the takedown, not from its cleaned head
    assert record["origins"] == [f"{R}@{story['before_heads'][R]}"]
    assert record["from_revision"] == story["late_rev"]
    rec = ledger_record(hub, "TKD-2026-001")
    assert [e["kind"] for e in rec["events"]] == ["takedown", "fix"]
    e = rec["repos"][LATE]
    assert e["to"] == new and e["weights_sha256"] == hub.list_files(LATE)[WEIGHTS_FILE]
    assert e["forget_acc_before"] > 80 and e["forget_acc"] <= 1.0, e
    assert rec["events"][1]["findings"][0]["kind"] == "pre-forget-pin"
    rows = {r["repo"]: r for r in data["requests"][0]["repos"]}
    assert rows[LATE]["status"] == "done" and rows[LATE]["forget_acc"] <= 1.0


def test_audit_is_clean_again_and_the_hub_verifies(story):
    assert "audit ok: 1 request(s), 7 repo(s) checked" in ok(story["audit_again"])
    assert ok(story["verify"]).startswith("hub ok")
    md = (story["root"] / "final.md").read_text()
    assert "```mermaid" in md and f"| `{LATE}` | done |" in md and "| fix |" in md


def test_reports_hold_the_same_facts(story):
    md = (story["root"] / "failing.md").read_text()
    data = json.loads((story["root"] / "failing.json").read_text())
    html = (story["root"] / "failing.html").read_text()
    for row in data["requests"][0]["repos"]:
        assert f"`{row['repo']}` | {row['status']} |" in md
        assert f'data-repo="{row["repo"]}" data-status="{row["status"]}"' in html
        assert row["weights_sha256"][:12] in md and row["weights_sha256"][:12] in html
    assert 'src="data:image/png;base64,' in html
    assert "<link" not in html and 'src="http' not in html  # self-contained


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed "
                                                "(apt-get install -y chromium; .ci/run installs it)")
def test_html_report_renders_in_headless_chromium(story, tmp_path):
    page = story["root"] / "failing.html"
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(base + ["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, env=env).stdout
    assert '<table class="repos"' in dom, dom[:500]
    assert f'data-repo="{LATE}" data-status="pre-forget-pin"' in dom
    assert '<img class="lineage"' in dom
    assert 'data-images-loaded="1"' in dom  # the embedded PNG decoded in the browser
    shot = tmp_path / "shot.png"
    subprocess.run(base + ["--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, env=env)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# ----------------------------------------------------------------------------------------------- more findings
@pytest.fixture
def after_takedown(story, tmp_path):
    return copy_hub(story["root"] / "after-takedown", tmp_path / "copy")


def test_lost_record_and_changed_weights_are_flagged_and_fixed_where_possible(after_takedown, story):
    from fiun_hub.models import load_model

    hub = after_takedown
    H = ("--hub", hub.root)
    # (b) child-b is pushed again (say, retrained from its weights): the new card no longer carries the request
    model, config, _ = load_model(hub, B)
    data = digits("train").subset(torch.arange(1000, 1100)).to_label_space(config.labels)
    push(hub, model, B, config.labels, parents=[f"{R}@{hub.head(R)}"], fim_data=data)
    # (c) il gets other weights under a card that still claims the forget
    hub.publish([RepoChange(I, {WEIGHTS_FILE: hub.read_file(I, WEIGHTS_FILE)[:-4] + b"\0\0\0\0"},
                            "tweak weights", parent_commit=hub.head(I))])
    res = invoke(*H, "--json", "audit")
    assert res[0] == 1
    found = {(f["repo"], f["kind"]) for f in json.loads(res[1])["findings"]}
    assert found == {(B, "lost-record"), (I, "weights-changed")}
    res = invoke(*H, "audit", "--fix")
    assert res[0] == 1  # il cannot be fixed: its sidecar is stale (computed on the old weights)
    assert f"could not fix {I}" in res[1] and "stale" in res[1]
    assert f"{B} -> {hub.head(B)[:12]}" in res[1]
    res = invoke(*H, "--json", "audit")
    assert {(f["repo"], f["kind"]) for f in json.loads(res[1])["findings"]} == {(I, "weights-changed")}, \
        [f["message"] for f in json.loads(res[1])["findings"]]


def test_two_fixes_of_one_request_in_the_same_second_are_two_ledger_events(after_takedown, monkeypatch):
    """The ledger is the audit trail: a second `audit --fix` stamped in the same second as the first (scripts run
    them back to back) must not replace the first's event (with_event keyed events by time and kind)."""
    import fiun_hub.compliance as C
    from fiun_hub.compliance.ledger import ledger_record
    from fiun_hub.models import load_model

    hub = after_takedown
    monkeypatch.setattr(C.clock, "now", lambda: "2026-11-22T10:00:00Z")
    for n in range(2):  # child-b re-pushed without the record, then fixed: twice
        model, config, _ = load_model(hub, B)
        data = digits("train").subset(torch.arange(1000 + 100 * n, 1100 + 100 * n)).to_label_space(config.labels)
        push(hub, model, B, config.labels, parents=[f"{R}@{hub.head(R)}"], fim_data=data)
        ok(invoke("--hub", hub.root, "audit", "--fix"))
    fixes = [e for e in ledger_record(hub, "TKD-2026-001")["events"] if e["kind"] == "fix"]
    assert len(fixes) == 2 and all(B in e["repos"] for e in fixes), fixes
    assert ok(invoke("--hub", hub.root, "audit"))


def test_a_second_request_keeps_the_first_provable(after_takedown, story, tmp_path):
    hub = after_takedown
    second = tmp_path / "TKD-2026-002.yaml"
    second.write_text(REQUEST.replace("TKD-2026-001", "TKD-2026-002").replace('["3"]', '["5"]'))
    data = json.loads(ok(invoke("--hub", hub.root, "--json", "takedown", second)))
    assert set(data["revisions"]) == set(AFFECTED)
    # every weight changed again, by a forget the ledger recorded: the first request still holds
    out = ok(invoke("--hub", hub.root, "audit"))
    assert "audit ok: 2 request(s), 10 repo(s) checked" in out


def test_same_id_with_other_content_is_refused(after_takedown, story, tmp_path, hub_fingerprint):
    other = tmp_path / "r.yaml"
    other.write_text(REQUEST.replace('["3"]', '["4"]'))
    before = hub_fingerprint(after_takedown.root)
    line = one_error_line(invoke("--hub", after_takedown.root, "takedown", other))
    assert "already in the ledger with different content" in line
    assert hub_fingerprint(after_takedown.root) == before


def test_audit_of_an_unknown_request_and_of_an_empty_ledger(after_takedown, hub, story):
    line = one_error_line(invoke("--hub", after_takedown.root, "audit", "--request", "NOPE-1"))
    assert "NOPE-1 is not in the ledger (requests: TKD-2026-001)" in line
    assert "nothing to audit" in ok(invoke("--hub", hub.root, "audit"))


# ----------------------------------------------------------------------------------------------- validation
BAD = {
    "not a mapping": ("- a\n- b\n", "must be a YAML mapping"),
    "malformed YAML": ("id: [unclosed\n", "malformed YAML at line"),
    "unknown key": (REQUEST + "orgins: [x/y]\n", "unknown key(s) orgins"),
    "bad id": (REQUEST.replace("TKD-2026-001", "../etc"), "id must be a string of letters"),
    "missing reason": ("\n".join(line for line in REQUEST.splitlines() if not line.startswith("reason")),
                       "reason is required"),
    "bad date": (REQUEST.replace("received: 2026-11-20", "received: last tuesday"), "received must be a date"),
    "deadline first": (REQUEST.replace("deadline: 2099-12-20", "deadline: 2026-01-01"), "is before received"),
    "no origins": (REQUEST.replace("origins: [dag/root]", "origins: []"), "origins is required"),
    "bad origin": (REQUEST.replace("origins: [dag/root]", "origins: [../root]"), "invalid repo id"),
    "ledger origin": (REQUEST.replace("origins: [dag/root]", f"origins: [{LEDGER_REPO}]"), "is the takedown ledger"),
    "both forgets": (REQUEST.replace('classes: ["3"]', 'classes: ["3"]\n  data: digits'), "exactly one of"),
    "no forget": (REQUEST.replace('classes: ["3"]', 'klasses: ["3"]'), "unknown key(s) klasses"),
    "bad data spec": (REQUEST.replace('classes: ["3"]', "data: ftp:x"), "forget.data: unknown data spec"),
    "bad alpha": (REQUEST.replace('classes: ["3"]', 'classes: ["3"]\n  alpha: -1'), "alpha must be a positive"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_a_clear_error(case):
    text, msg = BAD[case]
    with pytest.raises(RequestError) as exc:
        parse_request(text, where="r.yaml")
    assert msg in str(exc.value) and str(exc.value).startswith("r.yaml: "), str(exc.value)


def test_request_round_trip_and_defaults():
    r = parse_request(REQUEST)
    assert (r.id, r.classes, r.data, r.deadline, r.origin_repos) == ("TKD-2026-001", ["3"], None, "2099-12-20", [R])
    assert parse_request(REQUEST.replace("deadline: 2099-12-20\n", "")).deadline is None
    assert parse_request(REQUEST.replace("origins: [dag/root]", "origins: dag/root@main")).origins == ["dag/root@main"]
    # the same request written differently is the same request
    assert parse_request(REQUEST.replace('classes: ["3"]', "classes:\n    - 3")).fingerprint() == r.fingerprint()
    assert parse_request(REQUEST.replace('["3"]', '["4"]')).fingerprint() != r.fingerprint()


def test_cli_bad_input_is_one_line_and_changes_nothing(hub, tmp_path, hub_fingerprint, model_folder):
    from fiun_hub.repo import push_folder

    push_folder(hub, model_folder(labels=["1", "2", "3"]), "org/base")
    before = hub_fingerprint(hub.root)
    bad = tmp_path / "bad.yaml"
    bad.write_text(REQUEST.replace("received: 2026-11-20", "received: soon"))
    assert "received must be a date" in one_error_line(invoke("--hub", hub.root, "takedown", bad))
    good = tmp_path / "good.yaml"
    good.write_text(REQUEST)
    assert "origin dag/root is not in the hub" in one_error_line(invoke("--hub", hub.root, "takedown", good))
    good.write_text(REQUEST.replace("dag/root", "org/base"))
    assert "no Fisher sidecar" in one_error_line(invoke("--hub", hub.root, "takedown", good))
    assert "must end in .md, .html or .json" in one_error_line(
        invoke("--hub", hub.root, "takedown", good, "--report", tmp_path / "r.pdf"))
    assert "cannot read request file" in one_error_line(invoke("--hub", hub.root, "takedown", tmp_path / "n.yaml"))
    # out-of-range numbers are bad input even where nothing would run (an empty ledger, no --fix)
    for args in (("--workers", "0"), ("--workers", "-1"), ("--max-forget-acc", "101"), ("--max-forget-acc", "nan"),
                 ("--max-forget-acc", "-1")):
        assert one_error_line(invoke("--hub", hub.root, "audit", *args))
    assert "needs a file name" in one_error_line(invoke("--hub", hub.root, "lineage", "-o", ""))
    assert hub_fingerprint(hub.root) == before
