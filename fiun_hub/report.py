"""Takedown and audit reports a person would rather look at than read: one self-contained HTML page (the lineage
picture embedded as a base64 PNG, one table per request), and the same facts as Markdown (with a Mermaid
diagram) and JSON. Input: the data :func:`fiun_hub.compliance.audit` (or ``run_takedown`` / ``plan_report``)
returns. Nothing here reads the hub.
"""
from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from .compliance.status import Status
from .errors import BadInput
from .hub.local import atomic_write

#: fill colour of a lineage node, by the legend class of its status (``Status.legend``: findings share one red)
STATUS_COLORS = {
    "done": "#8ce99a",
    "inherited": "#c3fae8",
    "pending": "#ffd43b",
    "flagged": "#ff8787",
    "context": "#e9ecef",
}
STATUS_TEXT = {
    "done": "carries the request, weights as recorded",
    "inherited": "derived after the takedown from revisions that carry it",
    "pending": "to be forgotten",
    "flagged": "finding",
    "context": "parent outside the affected set",
}
FORMATS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".json": "json"}
TITLES = {"audit": "Takedown audit", "takedown": "Takedown", "takedown-plan": "Takedown plan (dry run)"}


def color_class(status: str, kind: str = "audit") -> str:
    """The legend class of a repo status (fiun_hub/compliance/status.py): done, inherited, pending (the work to do,
    in a takedown's plan only), flagged (every finding, and a status the table does not know) or context."""
    known = Status.lookup(status)
    return known.legend(kind) if known is not None else "flagged"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{float(v):.1f}%"


def _short(v: Any, n: int = 12) -> str:
    return str(v)[:n] if v else "–"


def _acc(row: dict, what: str) -> str:
    """``before → recorded (now X)`` for forget or retain accuracy; only the parts that were measured."""
    parts = []
    if row.get(f"{what}_acc_before") is not None:
        parts.append(_pct(row[f"{what}_acc_before"]))
    if row.get(f"{what}_acc_recorded") is not None:
        parts.append(_pct(row[f"{what}_acc_recorded"]))
    text = " → ".join(parts)
    if row.get(f"{what}_acc") is not None or row.get("eval_error"):
        now = f"now {_pct(row.get(f'{what}_acc'))}"
        text = f"{text} ({now})" if text else now
    return text or "–"


def _note(r: dict) -> str:
    """A repo row's note: its status message (or evaluation error), and the sidecar its forget used when it was not
    its own ("approximate: from acme/a@3f2c..."; docs/method.md section 8)."""
    note = r.get("message") or r.get("eval_error") or ""
    m = r.get("membership")  # a sample-wise request's membership test, unless the message already says it
    if isinstance(m, dict) and m.get("text") and m.get("text") not in note:
        note = f"{note}; {m['text']}" if note else m["text"]
    used = r.get("sidecar")
    if used and used != "own":
        short = re.sub(r"@([0-9a-f]{12})[0-9a-f]{28}", r"@\1…", str(used))
        note = f"{note}; sidecar {short}" if note else f"sidecar {short}"
    a = r.get("adopted_from")
    if isinstance(a, dict):  # `audit --fix --adopt`: the parent is inferred from the weights, not in the card
        adopted = f"adopted: inferred parent {a.get('repo')}@{str(a.get('revision'))[:12]}…"
        note = f"{note}; {adopted}" if note else adopted
    return note


def _forget_text(req: dict) -> str:
    f = req.get("forget") or {}
    return "classes " + ", ".join(map(str, f["classes"])) if f.get("classes") else f"samples of {f.get('data')}"


def _headline(data: dict) -> str:
    title = TITLES.get(data.get("kind"), "Report")
    n = len(data.get("findings") or [])
    if data.get("kind") == "takedown-plan":
        return f"{title}: nothing changed yet"
    w = len(data.get("warnings") or [])
    passed = f"PASSED with {w} warning{'s' * (w != 1)} (not verified)" if w else "PASSED"
    return f"{title}: {passed if data.get('ok') else 'FAILED'}" + (f" ({n} finding{'s' * (n != 1)})" if n else "")


def _deadline(entry: dict) -> str:
    d = entry["request"].get("deadline")
    if not d:
        return "–"
    met = entry.get("deadline_met")
    return d + ("" if met is None else " (met)" if met else " (MISSED)")


def _state(entry: dict) -> str:
    if "todo" in entry:  # a plan
        return f"{len(entry['todo'])} repo(s) to forget" + (
            f", {len(entry['record_only'])} to record" if entry.get("record_only") else "")
    if entry["ok"] and entry.get("warnings"):
        return f"no finding, membership unverified ({len(entry['warnings'])} warning(s))"
    return "ok" if entry["ok"] else f"{len(entry['findings'])} finding(s)"


# ------------------------------------------------------------------------------------------------ JSON
def _purge_facts(entry: dict) -> list[tuple[str, str]]:
    """The purge's facts of one request (fiun_hub/purge.py): bytes removed, legal holds."""
    p = entry.get("purge") or {}
    out = []
    if p.get("files_purged"):
        out.append(("purged", f"{p['files_purged']} file(s) of pre-forget revisions, {p['blobs_removed']} blob(s), "
                              f"{p['bytes_removed']:,} bytes removed"))
    for h in p.get("holds") or []:
        n = sum(len(v) for v in (h.get("revisions") or {}).values())
        out.append(("legal hold", f"since {h.get('at')}: {n} pre-forget revision(s) kept: {h.get('reason')}"))
    return out


def to_json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


# ------------------------------------------------------------------------------------------------ picture
def lineage_png(lineage: dict, title: str = "", kind: str = "audit") -> bytes:
    """A PNG of the request's lineage, each node filled by its status (:data:`STATUS_COLORS`)."""
    import networkx as nx

    from .lineage import to_png

    g = nx.DiGraph()
    colors = {}
    for n in lineage["nodes"]:
        g.add_node(n["id"], head=n.get("head"), missing=n.get("missing", False), unlearned=[])
        colors[n["id"]] = STATUS_COLORS[color_class(n["status"], kind)]
    for e in lineage["edges"]:
        g.add_edge(e["source"], e["target"], relation=e.get("relation"), revision=e.get("revision"))
    with tempfile.TemporaryDirectory(prefix="fiun-report-") as tmp:
        path = to_png(g, Path(tmp) / "lineage.png", title=title, colors=colors)
        return path.read_bytes()


def _mermaid(lineage: dict, kind: str) -> str:
    ids = {n["id"]: f"n{i}" for i, n in enumerate(lineage["nodes"])}
    out = ["```mermaid", "graph TD"]
    for n in lineage["nodes"]:
        label = f"{n['id']}<br/>@{_short(n.get('head'), 8)}<br/>{n['status']}".replace('"', "#quot;")
        out.append(f'  {ids[n["id"]]}["{label}"]:::{color_class(n["status"], kind)}')
    for e in lineage["edges"]:
        arrow = "-.->" if e.get("relation") == "inferred" else "-->"  # inferred from the weights: dotted
        out.append(f"  {ids[e['source']]} {arrow}|@{_short(e.get('revision'), 8)}| {ids[e['target']]}")
    for cls, color in STATUS_COLORS.items():
        out.append(f"  classDef {cls} fill:{color},stroke:#333")
    out.append("```")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ Markdown
def _md(v: Any) -> str:
    return str(v if v is not None else "–").replace("|", "\\|").replace("\n", " ")


def to_markdown(data: dict) -> str:
    kind = data.get("kind", "audit")
    lines = [f"# {_headline(data)}", "",
             f"- hub: `{data.get('hub')}`", f"- generated: {data.get('generated_at')}"]
    if data.get("ledger_revision"):
        lines.append(f"- ledger: `fiun-hub/ledger@{data['ledger_revision']}`")
    if data.get("eval_data"):
        lines.append(f"- accuracies measured now on `{data['eval_data']}` (held out); forget accuracy above "
                     f"{data.get('max_forget_acc')}% is a finding")
    for p in data.get("problems") or []:
        lines.append(f"- **problem:** {_md(p)}")
    if data.get("untracked_requests"):
        lines.append("- forgets without a ledger record (not audited): " + ", ".join(data["untracked_requests"]))
    for entry in data.get("requests", []):
        req = entry["request"]
        lines += ["", f"## Request {req['id']}: {_state(entry)}",
                  "", "| | |", "|---|---|",
                  f"| reason | {_md(req.get('reason'))} |", f"| requested by | {_md(req.get('requested_by'))} |",
                  f"| received | {_md(req.get('received'))} |", f"| deadline | {_md(_deadline(entry))} |",
                  f"| completed | {_md(entry.get('completed_at'))} |",
                  f"| origins | {_md(', '.join(req.get('origins') or []))} |",
                  f"| forget | {_md(_forget_text(req))} |"]
        if req.get("notes"):
            lines.append(f"| notes | {_md(req['notes'])} |")
        lines += [f"| {k} | {_md(v)} |" for k, v in _purge_facts(entry)]
        if entry["findings"]:
            lines += ["", "### Findings", ""]
            lines += [f"- **{f['kind']}** `{f['repo']}`: {f['message']}" for f in entry["findings"]]
        if entry.get("warnings"):
            lines += ["", "### Warnings (not verified)", ""]
            lines += [f"- **{w['kind']}** `{w['repo']}`: {w['message']}" for w in entry["warnings"]]
        lines += ["", "### Lineage", "", _mermaid(entry["lineage"], kind), "",
                  "### Repos", "",
                  "| repo | status | depth | head | weights sha256 | forgotten from → to | recorded weights "
                  "| forget acc | retain acc | at | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in entry["repos"]:
            lines.append(
                f"| `{r['repo']}` | {r['status']} | {r['depth']} | `{_short(r['head'])}` "
                f"| `{_short(r['weights_sha256'])}`"
                f" | {_md(_short(r.get('from')))} → {_md(_short(r.get('to')))} "
                f"| `{_short(r.get('recorded_weights_sha256'))}` | {_acc(r, 'forget')} | {_acc(r, 'retain')} "
                f"| {_md(r.get('at'))} | {_md(_note(r) or None)} |")
        if entry.get("events"):
            lines += ["", "### Ledger events", "", "| event | at | by | repos | eval data |", "|---|---|---|---|---|"]
            lines += [f"| {e['kind']} | {e['at']} | {_md(e.get('author'))} | {', '.join(e['repos'])} "
                      f"| {_md(e.get('eval_data'))} |" for e in entry["events"]]
    for f in data.get("fixed") or []:
        lines += ["", f"Fixed by `--fix` for {f['request_id']}: {', '.join(f['fixed']) or 'nothing'}"
                  + (f"; could not fix {', '.join(sorted(f['blocked']))}" if f.get("blocked") else "")]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;color:#212529;
padding:0 1rem}
h1{font-size:1.6rem} h1.ok{color:#2b8a3e} h1.bad{color:#c92a2a} h1.plan{color:#e67700}
section.request{border:1px solid #dee2e6;border-radius:8px;padding:1rem 1.5rem;margin:1.5rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem} dt{font-weight:600;color:#495057}
dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #dee2e6;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f3f5} code{font-size:.85em}
td.status{font-weight:600;white-space:nowrap}
figure{margin:1rem 0} img.lineage{max-width:100%;border:1px solid #dee2e6;border-radius:4px}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #333;margin:0 .3em 0 1em;vertical-align:middle}
ul.findings li{margin:.3rem 0} .meta{color:#495057}
div.scroll{overflow-x:auto} td.repo,td.acc,td.at{white-space:nowrap} td.note{min-width:16rem}
"""


def _e(v: Any) -> str:
    return html.escape("–" if v is None else str(v))


def _code(v: Any, n: int = 12) -> str:
    return f'<code title="{_e(v)}">{_e(_short(v, n))}</code>' if v else "–"


def to_html(data: dict) -> str:
    """One self-contained page: no external resource (styles inline, pictures as data: URIs)."""
    kind = data.get("kind", "audit")
    cls = "plan" if kind == "takedown-plan" else (
        ("plan" if data.get("warnings") else "ok") if data.get("ok") else "bad")  # a warning: not green
    head = _headline(data)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(head)}</title><style>{_CSS}</style></head>",
           f'<body data-kind="{_e(kind)}" data-ok="{str(bool(data.get("ok"))).lower()}">',
           f'<h1 class="{cls}">{_e(head)}</h1>',
           f'<p class="meta">hub <code>{_e(data.get("hub"))}</code>, generated {_e(data.get("generated_at"))}'
           + (f', ledger <code>fiun-hub/ledger@{_e(data["ledger_revision"])}</code>' if data.get("ledger_revision")
              else "")
           + (f', accuracies measured now on <code>{_e(data["eval_data"])}</code> (a forget accuracy above '
              f'{_e(data.get("max_forget_acc"))}% is a finding)' if data.get("eval_data") else "") + "</p>"]
    for p in data.get("problems") or []:
        out.append(f'<p class="problem"><strong>problem:</strong> {_e(p)}</p>')
    if data.get("untracked_requests"):
        out.append(f'<p class="meta">forgets without a ledger record (not audited): '
                   f'{_e(", ".join(data["untracked_requests"]))}</p>')
    legend = "".join(f'<span class="swatch" style="background:{c}"></span>{_e(s)}: {_e(STATUS_TEXT[s])}'
                     for s, c in STATUS_COLORS.items())
    for i, entry in enumerate(data.get("requests", [])):
        req = entry["request"]
        rid = req["id"]
        png = base64.b64encode(lineage_png(entry["lineage"], f"request {rid}", kind)).decode()
        state = _state(entry)
        out += [f'<section class="request" id="request-{_e(rid)}" data-ok="{str(entry["ok"]).lower()}">',
                f"<h2>Request {_e(rid)}: {_e(state)}</h2>", "<dl>"]
        facts = [("reason", req.get("reason")), ("requested by", req.get("requested_by")),
                 ("received", req.get("received")), ("deadline", _deadline(entry)),
                 ("completed", entry.get("completed_at")), ("origins", ", ".join(req.get("origins") or [])),
                 ("forget", _forget_text(req))] + ([("notes", req["notes"])] if req.get("notes") else []) \
            + _purge_facts(entry)
        out += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts] + ["</dl>"]
        if entry["findings"]:
            out.append('<h3>Findings</h3><ul class="findings">')
            out += [f"<li><strong>{_e(f['kind'])}</strong> <code>{_e(f['repo'])}</code>: {_e(f['message'])}</li>"
                    for f in entry["findings"]]
            out.append("</ul>")
        if entry.get("warnings"):
            out.append('<h3>Warnings (not verified)</h3><ul class="findings warnings">')
            out += [f"<li><strong>{_e(w['kind'])}</strong> <code>{_e(w['repo'])}</code>: {_e(w['message'])}</li>"
                    for w in entry["warnings"]]
            out.append("</ul>")
        out += ["<h3>Lineage</h3>", "<figure>",
                f'<img class="lineage" id="lineage-{i}" alt="lineage of request {_e(rid)}" '
                f'src="data:image/png;base64,{png}">',
                f"<figcaption>{legend}</figcaption></figure>",
                "<h3>Repos</h3>",
                f'<div class="scroll"><table class="repos" id="repos-{i}"><thead><tr>'
                "<th>repo</th><th>status</th><th>depth</th>"
                "<th>head</th><th>weights sha256</th><th>forgotten from</th><th>forgotten to</th>"
                "<th>recorded weights sha256</th><th>forget acc</th><th>retain acc</th><th>at</th><th>note</th>"
                "</tr></thead><tbody>"]
        for r in entry["repos"]:
            color = STATUS_COLORS[color_class(r["status"], kind)]
            out.append(
                f'<tr data-repo="{_e(r["repo"])}" data-status="{_e(r["status"])}">'
                f'<td class="repo"><code>{_e(r["repo"])}</code></td>'
                f'<td class="status" style="background:{color}">{_e(r["status"])}</td><td>{_e(r["depth"])}</td>'
                f"<td>{_code(r['head'])}</td><td>{_code(r['weights_sha256'])}</td><td>{_code(r.get('from'))}</td>"
                f"<td>{_code(r.get('to'))}</td><td>{_code(r.get('recorded_weights_sha256'))}</td>"
                f"<td class=\"acc\">{_e(_acc(r, 'forget'))}</td><td class=\"acc\">{_e(_acc(r, 'retain'))}</td>"
                f"<td class=\"at\">{_e(r.get('at'))}</td>"
                f"<td class=\"note\">{_e(_note(r))}</td></tr>")
        out.append("</tbody></table></div>")
        if entry.get("events"):
            out.append('<h3>Ledger events</h3><table class="events"><thead><tr><th>event</th><th>at</th><th>by</th>'
                       "<th>repos</th><th>eval data</th></tr></thead><tbody>")
            out += [f"<tr><td>{_e(e['kind'])}</td><td>{_e(e['at'])}</td><td>{_e(e.get('author'))}</td>"
                    f"<td>{_e(', '.join(e['repos']))}</td><td>{_e(e.get('eval_data'))}</td></tr>"
                    for e in entry["events"]]
            out.append("</tbody></table>")
        out.append("</section>")
    for f in data.get("fixed") or []:
        out.append(f"<p>Fixed by <code>--fix</code> for {_e(f['request_id'])}: {_e(', '.join(f['fixed']) or 'nothing')}"
                   + (f"; could not fix {_e(', '.join(sorted(f['blocked'])))}" if f.get("blocked") else "") + "</p>")
    # Marks the page once every picture has decoded (a headless browser's DOM dump shows it).
    out += ["<script>window.addEventListener('load',function(){var n=0;for(var i=0;i<document.images.length;i++)"
            "{var m=document.images[i];if(m.complete&&m.naturalWidth>0)n++;}"
            "document.body.setAttribute('data-images-loaded',String(n));});</script>",
            "</body></html>"]
    return "\n".join(out) + "\n"


def render(data: dict, fmt: str) -> str:
    """The report as ``md``, ``html`` or ``json`` text."""
    try:
        return {"md": to_markdown, "html": to_html, "json": to_json}[fmt](data)
    except KeyError:
        raise BadInput(f"unknown report format {fmt!r}; use md, html or json") from None


def write_report(data: dict, path: str | Path) -> Path:
    """Write the report to ``path``; the format follows its suffix (.md, .html, .json)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(f"--report {path}: the file name must end in .md, .html or .json")
    text = render(data, fmt)
    try:
        atomic_write(path, text.encode(), fsync=False)
    except OSError as exc:
        raise BadInput(f"cannot write report {path}: {exc.strerror or exc}") from None
    return path


__all__ = ["STATUS_COLORS", "color_class", "lineage_png", "to_json", "to_markdown", "to_html", "render",
           "write_report"]
