"""``fiun-hub takedown`` and ``fiun-hub audit``: carry out a takedown request and prove it later (docs/takedowns.md).

Standalone click commands over :mod:`fiun_hub.compliance`; ``cli/main.py`` registers them with
``main.add_command(takedown)`` and ``main.add_command(audit)``. They use the CLI's context object (``Ctx``: the
hub, ``--json``, ``emit``) and its error handling (one line on stderr; exit 0 success, 1 a failed audit, 2 bad
input), both from ``cli/common.py``: this module imports nothing from ``main``.
"""
from __future__ import annotations

import sys
from typing import Any

import click

from fiun_hub.constants import LEDGER_RECORDED

from .common import fail, handled, short_sidecar

def _check_report_path(path: str | None) -> None:
    from pathlib import Path

    from fiun_hub.errors import BadInput
    from fiun_hub.report import FORMATS

    if path is not None and Path(path).suffix.lower() not in FORMATS:
        raise BadInput(f"--report {path}: the file name must end in .md, .html or .json")


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _request_lines(req: dict) -> list[str]:
    f = req["forget"]
    what = "classes " + ", ".join(f["classes"]) if f.get("classes") else f"samples of {f['data']}"
    return [f"request {req['id']}: forget {what} at {', '.join(req['origins'])}",
            f"  reason: {req['reason']}",
            f"  requested by {req['requested_by']}, received {req['received']}"
            + (f", deadline {req['deadline']}" if req.get("deadline") else "")]


def _plan_text(tp) -> str:
    from fiun_hub.compliance import Status

    lines = _request_lines(tp.request.to_dict())
    lines.append(f"affected: {len(tp.states)} repo(s); {len(tp.targets)} to forget"
                 + (f", {len(tp.record_only)} to record" if tp.record_only else ""))
    lines.append(f"  {'repo':32s} {'depth':>5s}  {'head':12s}  action")
    used = {n.repo: n.sidecar_used for n in tp.plan.nodes} if tp.plan is not None else {}
    for s in tp.states:
        status = Status(s.status)
        lines.append(f"  {s.repo:32s} {s.depth:>5d}  {s.head[:12]:12s}  {status.info.takedown or status.value}")
        if status not in (Status.PENDING, Status.DONE) and s.message:
            lines.append(f"      {s.message}")
        a = (s.ledger or {}).get("adopted_from")
        if isinstance(a, dict):
            lines.append(f"      ~ adopted: inferred parent {a.get('repo')}@{str(a.get('revision'))[:12]} (not in its card)")
        if s.repo in tp.targets and used.get(s.repo, "own") != "own":
            lines.append(f"      ~ sidecar {short_sidecar(used[s.repo])}")
    for p in tp.problems:
        lines.append(f"  ! {p}")
    for f in tp.undeclared:
        lines.append(f"  ! {Status.UNDECLARED_DERIVATIVE.value} (not in the affected set): {f['message']}")
    return "\n".join(lines)


def _outcome_text(tp, result: dict) -> str:
    lines = [_plan_text(tp)]
    if result["noop"]:
        lines.append(f"request {tp.request.id} is already carried out and recorded for every affected repo; "
                     "nothing to do")
        return "\n".join(lines)
    ev = result["event"]
    lines.append(f"published {len(result['revisions'])} new revision(s) and the ledger record "
                 f"({'fiun-hub/ledger'}@{result['ledger_revision'][:12]}) in {result['seconds']:.2f}s:")
    for repo, e in ev["repos"].items():
        acc = ""
        if "forget_acc" in e or "retain_acc" in e:
            acc = (f"  forget {_pct(e.get('forget_acc_before'))} -> {_pct(e.get('forget_acc'))}"
                   f"  retain {_pct(e.get('retain_acc_before'))} -> {_pct(e.get('retain_acc'))}")
        if e.get("action") == LEDGER_RECORDED:
            lines.append(f"  {repo:32s} recorded at {e['to'][:12]}  weights {(e['weights_sha256'] or '-')[:12]}{acc}")
        else:
            lines.append(f"  {repo:32s} {e['from'][:12]} -> {e['to'][:12]}  weights {e['weights_sha256'][:12]}{acc}")
    lines += _purge_lines(ev)
    return "\n".join(lines)


def _purge_lines(ev: dict) -> list[str]:
    if ev.get("hold"):
        n = sum(len(v) for v in ev["hold"]["revisions"].values())
        return [f"history kept under a legal hold ({n} pre-forget revision(s) still hold the data): "
                f"{ev['hold']['reason']}"]
    p = ev.get("purge")
    if not p:
        return []
    files = sum(len(v) for v in p["files"].values())
    return [f"purged {files} file(s) of {p['revisions']} pre-forget revision(s) in {len(p['files'])} repo(s): "
            f"{p['blobs']} blob(s), {p['bytes_removed']:,} bytes removed"]


@click.command()
@click.argument("request_file", metavar="REQUEST.yaml", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate and show the affected set; change nothing.")
@click.option("--eval-data", metavar="SPEC",
              help="Held-out data (e.g. digits:test): measure forget / retain accuracy of every repo before and "
                   "after, and record them in the ledger.")
@click.option("--report", "report_path", metavar="FILE",
              help="Also write a report: FILE.html (one self-contained page with the lineage picture), .md or .json.")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes for the per-repo work.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (or a process pool with --workers); ray: Ray tasks, several repos each "
                   "(pip install 'fiun-hub[ray]'). Either gives the same bytes; a failed task publishes nothing.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="Join this Ray cluster (default: start a local Ray with --workers CPUs); its workers must see "
                   "the hub's folder.")
@click.option("--keep-history", is_flag=True,
              help="Do not purge the pre-forget revisions: keep them as a recorded legal hold (needs --reason).")
@click.option("--reason", "hold_reason", metavar="TEXT", help="Why the history is kept (--keep-history).")
@click.pass_obj
@handled
def takedown(c, request_file: str, dry_run: bool, eval_data: str | None, report_path: str | None,
             workers: int, executor: str, ray_address: str | None, keep_history: bool,
             hold_reason: str | None) -> None:
    """Carry out the takedown request in REQUEST.yaml across every model derived from its origins.

    Validates the request, plans the forget (the affected set), unlearns every affected repo with FIUn and
    records the request and its outcome (every repo, old and new revision, sha256 of the new weights, accuracies
    with --eval-data) in the hub's ledger (the repo fiun-hub/ledger), in the same all-or-nothing publish as the
    new revisions. Re-running a request applies it to what was derived since from pre-takedown revisions.

    The weights and sidecars of every pre-forget revision of the affected repos are purged from the hub in the
    same publish (tombstones in their place; cards, configs and history stay): readers of those revisions get
    an error naming the request. --keep-history --reason TEXT keeps them instead, as a recorded legal hold.

    \b
    REQUEST.yaml:
      id: TKD-2026-001
      reason: erasure request under GDPR art. 17
      requested_by: dpo@example.org
      received: 2026-11-20
      deadline: 2026-12-20          # optional
      origins: [acme/base]          # org/name[@revision]: models whose training data held it
      forget: {classes: ["3"]}      # or {data: npz:PATH}; optional alpha, lambda
      notes: free text              # optional
    """
    from fiun_hub.compliance import load_request, plan_report, plan_takedown, run_takedown
    from fiun_hub.data import parse_spec
    from fiun_hub.report import write_report

    from fiun_hub.errors import BadInput

    _check_report_path(report_path)
    if keep_history != (hold_reason is not None) or (hold_reason is not None and not hold_reason.strip()):
        raise BadInput("--keep-history and --reason TEXT go together: a legal hold is recorded with why")
    if eval_data is not None:
        parse_spec(eval_data)
    hub = c.hub()
    request = load_request(request_file)
    tp = plan_takedown(hub, request)
    if dry_run or tp.problems:
        if report_path:
            write_report(plan_report(hub, tp), report_path)
        c.emit({**tp.to_dict(), "dry_run": True, "report": report_path}, lambda: _plan_text(tp))
        if tp.problems:
            fail(tp.problems[0] + (f" (and {len(tp.problems) - 1} more problem(s))" if len(tp.problems) > 1 else ""))
        return
    result = run_takedown(hub, tp, eval_data=eval_data, workers=workers, executor=executor, ray_address=ray_address,
                          hold_reason=hold_reason if keep_history else None)
    if report_path:
        write_report(result["report"], report_path)
    data = {"request": request.to_dict(), "plan": tp.to_dict(), **{k: v for k, v in result.items() if k != "report"},
            "ok": result["report"]["ok"], "verified": result["report"]["verified"], "report": report_path}
    c.emit(data, lambda: _outcome_text(tp, result) + (f"\nwrote {report_path}" if report_path else ""))


def _short_rev(spec: str) -> str:
    repo, _, rev = spec.partition("@")
    return f"{repo}@{rev[:12]}" if rev else repo


def _evidence_text(e: dict) -> str:
    """An undeclared derivative's evidence in a few words (as `lineage --infer` prints it)."""
    bits = [f"{e.get('kind', 'close')}", f"{e.get('identical_tensors', 0)}/{e.get('shared_tensors', 0)} tensors "
                                         "identical"]
    for k, name in (("init_similarity", "init"), ("learned_similarity", "learned")):
        if isinstance(e.get(k), (int, float)):
            bits.append(f"{name} cos {e[k]:.3f}")
    return ", ".join(bits)


def _audit_text(data: dict) -> str:
    from fiun_hub.compliance import Status

    lines = []
    if not data["requests"]:
        return "the ledger holds no request; nothing to audit"
    for entry in data["requests"]:
        lines += _request_lines(entry["request"])
        done = entry.get("completed_at")
        met = entry.get("deadline_met")
        lines.append(f"  completed {done or '-'}" + ("" if met is None else " (deadline met)" if met
                                                      else " (DEADLINE MISSED)"))
        lines.append(f"  {'repo':32s} {'status':21s} {'head':12s}  {'weights':12s}  {'forget':>7s} {'retain':>7s}"
                     + ("" if data.get("eval_data") else "  (accuracies as recorded)"))
        for r in entry["repos"]:
            status = r["status"].upper() if r["finding"] else r["status"]
            lines.append(f"  {r['repo']:32s} {status:21s} {r['head'][:12]:12s}  {(r['weights_sha256'] or '-')[:12]:12s}"
                         f"  {_pct(r.get('forget_acc', r.get('forget_acc_recorded'))):>7s}"
                         f" {_pct(r.get('retain_acc', r.get('retain_acc_recorded'))):>7s}")
            if r.get("adopted_from"):
                a = r["adopted_from"]
                lines.append(f"      ~ adopted: its weights look derived from {a['repo']}@{str(a['revision'])[:12]} "
                             "(inferred; its card does not declare it)")
            if r["finding"] or r.get("eval_error"):
                lines.append(f"      ! {r['message'] or r.get('eval_error')}")
            if r.get("membership") and not (r["finding"] and r["status"] == Status.SAMPLES_STILL_MEMBERS):
                lines.append(f"      {'~' if r['membership']['verdict'] != 'members' else '!'} "
                             f"{r['membership']['text']}")
        for f in entry["findings"]:
            kind = Status.lookup(f["kind"])
            if kind is not None and not kind.info.row and kind.finding:  # a finding no repo's row shows
                lines.append(f"      ! {f['kind'].upper()}: {f['message']}")
        p = entry.get("purge") or {}
        if p.get("bytes_removed") or p.get("files_purged"):
            lines.append(f"  purged: {p['files_purged']} file(s), {p['blobs_removed']} blob(s), "
                         f"{p['bytes_removed']:,} bytes removed")
        for h in p.get("holds") or []:
            lines.append(f"  legal hold since {h['at']}: {sum(len(v) for v in h['revisions'].values())} pre-forget "
                         f"revision(s) kept: {h['reason']}")
    return "\n".join(lines)


def _summary(data: dict) -> str:
    from fiun_hub.compliance import Status

    n, k = len(data["findings"]), len(data["requests"])
    repos = sum(len(e["repos"]) for e in data["requests"])
    note = ""
    if data.get("untracked_requests"):
        note = (f"; forgets without a ledger record (not audited; see `fiun-hub lineage --check`): "
                f"{', '.join(data['untracked_requests'])}")
    warned = data.get("warnings") or []
    if data["ok"] and warned:  # no finding, but not a plain ok: what could not be verified is named
        rids = sorted({w["request"] for w in warned})
        return (f"audit passed with {len(warned)} warning(s), not verified: membership of the samples of "
                f"{', '.join(rids)} unverified at {len(warned)} repo(s) (not checked without --eval-data, or not "
                f"decidable from so few samples); {k} request(s), {repos} repo(s) checked{note}")
    if data["ok"]:
        return f"audit ok: {k} request(s), {repos} repo(s) checked{note}"
    kinds = {f["kind"] for f in data["findings"]}
    return (f"audit failed: {n} finding(s) in {sum(not e['ok'] for e in data['requests'])} of {k} request(s); "
            + ("`fiun-hub audit --fix` applies the request to the flagged repos"
               if kinds - {Status.SAMPLES_STILL_MEMBERS} else "")
            + (" (`--fix --adopt` to undeclared derivatives too)" if Status.UNDECLARED_DERIVATIVE in kinds else "")
            + ("; " if len(kinds) > 1 and Status.SAMPLES_STILL_MEMBERS in kinds else "")
            + ("samples-still-members: `--fix` cannot clear it (it applies the same sample-wise rule again); "
               "retrain without the samples" if Status.SAMPLES_STILL_MEMBERS in kinds else "") + note)


@click.command()
@click.option("--request", "request_id", metavar="ID", help="Only this request (default: every request in the ledger).")
@click.option("--eval-data", metavar="SPEC",
              help="Held-out data (e.g. digits:test): re-measure forget / retain accuracy of every affected repo.")
@click.option("--max-forget-acc", type=float, default=5.0, show_default=True, metavar="PCT",
              help="With --eval-data: a class-wise forget accuracy above PCT percent is a finding.")
@click.option("--report", "report_path", metavar="FILE",
              help="Also write a report: FILE.html (one self-contained page with the lineage picture), .md or .json.")
@click.option("--fix", "do_fix", is_flag=True,
              help="Apply the request to the flagged repos (new revisions, ledger updated), then audit again.")
@click.option("--adopt", is_flag=True,
              help="With --fix: treat each undeclared-derivative as a child of the revision its weights look derived "
                   "from: the same forget, the inferred parent recorded in its forget record (not in its card).")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes for the per-repo work (--fix).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where --fix runs the per-repo work: local, or Ray tasks of several repos each (pip install 'fiun-hub[ray]').")
@click.option("--ray-address", metavar="ADDR", default=None, help="Join this Ray cluster (--fix with --executor ray).")
@click.pass_obj
@handled
def audit(c, request_id: str | None, eval_data: str | None, max_forget_acc: float, report_path: str | None,
          do_fix: bool, adopt: bool, workers: int, executor: str, ray_address: str | None) -> None:
    """Prove every takedown in the ledger still holds; exit 1 on any finding.

    For each request (or --request ID) the affected set is recomputed from the lineage now, and each repo's
    head must carry the request. Findings: repos derived later from a pre-takedown revision of an affected repo
    (pre-forget-pin), heads that lost the record (lost-record), heads whose weights changed to ones the ledger
    never recorded (weights-changed), repos whose card claims the request without the ledger's proof of a forget
    there (unrecorded: a card's record is a claim; --fix forgets them), and with
    --eval-data a forget accuracy above --max-forget-acc. Repos derived after the takedown from cleaned
    revisions are fine (inherited). Models outside the affected set whose weights look derived from an affected
    repo's pre-forget revision are findings too (undeclared-derivative); --fix --adopt forgets them as children
    of that revision, recording the inferred parent in their forget record (their card's parents stay as they are).
    """
    from fiun_hub import compliance as C
    from fiun_hub.errors import BadInput
    from fiun_hub.report import write_report

    if adopt and not do_fix:
        raise BadInput("--adopt goes with --fix: `fiun-hub audit --fix --adopt` forgets the undeclared derivatives")
    from fiun_hub.executors import check_executor

    check_executor(executor, workers)  # a bad value is bad input with or without --fix
    _check_report_path(report_path)
    hub = c.hub()
    data = C.audit(hub, request_id, eval_data=eval_data, max_forget_acc=max_forget_acc)
    text = [_audit_text(data), _summary(data)]
    if do_fix and not data["ok"]:
        fixed = C.fix(hub, data, eval_data=eval_data, workers=workers, executor=executor, ray_address=ray_address,
                      adopt=adopt)
        for f in fixed:
            revs = ", ".join(f"{r} -> {v['to'][:12]}" for r, v in f["revisions"].items())
            line = f"--fix {f['request_id']}: " + (f"new revision(s) {revs}" if revs else "no new revision")
            recorded = [r for r in f["fixed"] if r not in f["revisions"]]
            if recorded:
                line += f"; recorded {', '.join(recorded)}"
            if f.get("ledger_revision"):
                line += f"; ledger fiun-hub/ledger@{f['ledger_revision'][:12]}"
            text.append(line)
            text += [f"  adopted {a['repo']} as a child of {_short_rev(a['inferred_parent'])} (inferred from its "
                     f"weights: {_evidence_text(a.get('evidence') or {})}; its card is unchanged)"
                     for a in f.get("adopted") or []]
            text += [f"  could not fix {r}: {why}" for r, why in f["blocked"].items()]
            if f.get("purged"):
                p = f["purged"]
                text.append(f"  purged {sum(len(v) for v in p['files'].values())} file(s) left on disk: "
                            f"{p['blobs']} blob(s), {p['bytes_removed']:,} bytes removed"
                            + (f", {p['strays']} staged file(s)" if p.get("strays") else ""))
        after = C.audit(hub, request_id, eval_data=eval_data, max_forget_acc=max_forget_acc)
        after["fixed"] = fixed
        after["findings_before_fix"] = data["findings"]
        data = after
        text += ["after the fix:", _audit_text(data), _summary(data)]
    if report_path:
        write_report(data, report_path)
        text.append(f"wrote {report_path}")
    c.emit(data, "\n".join(text))
    if not data["ok"]:
        sys.exit(1)


__all__ = ["takedown", "audit"]
