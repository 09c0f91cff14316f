"""The resolver: model cards -> the inheritance DAG (a ``networkx.DiGraph``), its checks, queries and exports.

Nodes are repos, with attributes ``head``, ``labels``, ``relation``, ``sidecar`` (none | ok | stale | invalid),
``unlearned`` (forget records at the head), ``card_error`` and ``missing`` (a parent named by a card but absent
from the hub). Edges run parent -> child with ``relation`` and ``revision`` (the pinned parent commit, "" when
unpinned).

The graph is built from the lineage index (``HUB/.fiun/lineage.json``), which every publish keeps current, so a
large hub resolves from one file; ``resolve(hub, rebuild=True)`` reads every card instead and gives the same graph.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import networkx as nx

from .card import parse_card
from .forget_record import check_record, forget_records
from .constants import CARD_FILE, CONFIG_FILE, FIM_FILE, FIUN_DIR, LEDGER_REPO, WEIGHTS_FILE
from .errors import BadInput, CardError, FiunError, LineageError, RepoNotFound
from .hub import local as _local
from .hub.base import CONSISTENT_HEADS, LOCAL_FOLDER, supports
from .preprocessing import of_config, stale_preprocessing
from .hub.ids import validate_repo_id
from .hub.local import INDEX_FILE
from .inputs import read_regular_file
from .jsonsafe import loads as loads_json

MAX_INDEX = 1 << 30
# /2: a sidecar's state also depends on the preprocessing it recorded (an index written before is rebuilt)
# /3: entries hold ``former_parents`` (the parents earlier revisions declared that the head does not)
INDEX_FORMAT = "fiun-lineage/3"


# ---------------------------------------------------------------------------- index
def sidecar_state(hub, repo: str, files: dict[str, str], revision: str) -> str:
    """``none``, ``ok``, ``stale`` (computed on other weights, or with other preprocessing than the model's
    config now declares) or ``invalid`` (unreadable, or a garbled recorded preprocessing) for the FIM sidecar at
    a revision."""
    if FIM_FILE not in files:
        return "none"
    try:
        _, meta = hub.safetensors_header(repo, FIM_FILE, revision)  # the header alone (over HTTP: range requests)
    except Exception:
        return "invalid"
    state = weights_state(hub, repo, meta, files.get(WEIGHTS_FILE))
    if state == "ok":
        state = _preprocessing_state(hub, repo, files, revision, meta)
    return state


def weights_state(hub, repo: str, meta: dict, weights: str | None) -> str:
    """The one rule for whether a sidecar (header ``meta``) belongs to the weights whose sha256 is ``weights``:
    ``ok``; ``stale`` (computed on other weights, or the model commit it records cannot be read); ``invalid`` (it
    records neither ``weights_sha256`` nor ``model_commit``). The lineage reports it (:func:`sidecar_state`);
    ``sidecars.load_sidecars`` refuses every sidecar it does not call ``ok``."""
    if meta.get("weights_sha256"):
        return "ok" if meta["weights_sha256"] == weights else "stale"
    if meta.get("model_commit"):
        try:
            return "ok" if hub.list_files(repo, meta["model_commit"]).get(WEIGHTS_FILE) == weights else "stale"
        except Exception:
            return "stale"
    return "invalid"


def _preprocessing_state(hub, repo: str, files: dict[str, str], revision: str, meta: dict) -> str:
    """``ok``, ``stale`` or ``invalid`` by the one preprocessing rule (:func:`fiun_hub.preprocessing.
    stale_preprocessing`), which ``sidecars.load_sidecars`` applies too."""
    if CONFIG_FILE not in files:
        return "invalid"
    try:
        model = of_config(json.loads(hub.read_file(repo, CONFIG_FILE, revision)), f"{repo}:{CONFIG_FILE}")
        return "stale" if stale_preprocessing(meta, model) else "ok"
    except Exception:  # a garbled record or config: the sidecar cannot be trusted for this model
        return "invalid"


def index_entry(hub, repo: str, revision: str | None = None) -> dict:
    """What the lineage index records for one repo at its head (or ``revision``)."""
    info = hub.commit_info(repo, revision)
    entry = {
        "head": info.id,
        "time": info.time,
        "parents": [],
        "relation": None,
        "labels": [],
        "sidecar": sidecar_state(hub, repo, info.files, info.id),
        "unlearned": [],
        "card_error": None,
        "weights": info.files.get(WEIGHTS_FILE),
    }
    from .fingerprint_store import record_fingerprint  # (in the function: numpy loads only when a revision is indexed)

    record_fingerprint(hub, repo, entry["weights"])  # .fiun/fingerprints/: kept for every published revision
    if CARD_FILE not in info.files:
        # No card, no lineage claim: a root (e.g. a repo just made by `create_repo`). Unlike an unreadable card
        # it cannot hide parents, so it does not block a forget; `lineage --check` still lists it.
        entry["no_card"] = True
        return entry
    try:
        meta = parse_card(hub.read_file(repo, CARD_FILE, info.id), where=f"{repo}@{info.id[:12]}")
    except CardError as exc:
        entry["card_error"] = str(exc)
        return entry
    except Exception as exc:  # a card must never make the hub unusable: record it as a card problem
        entry["card_error"] = f"{repo}@{info.id[:12]}: unreadable card ({type(exc).__name__}: {exc})"[:300]
        return entry
    entry.update(
        parents=[p.to_dict() for p in meta.parents],
        relation=meta.relation,
        labels=meta.labels,
        unlearned=meta.unlearned,
    )
    former = former_parents(hub, repo, info, {p.repo for p in meta.parents})
    if former:
        entry["former_parents"] = former
    return entry


_CARD_PARENTS: dict[str, list[dict] | None] = {}  # card sha256 -> its parents (a card's content never changes)


def former_parents(hub, repo: str, info, head_parents: set[str]) -> dict[str, list[dict]]:
    """Earlier revisions of ``repo`` whose card declares a parent its head's card does not: revision -> every
    parent that revision's card declares. A child pinned to such a revision derives from those parents (say
    ``repo`` was re-pushed retrained without them), so :func:`graph_from_entries` links them to it; cards that
    cannot be read add nothing (``lineage --check`` reports the head's; older ones are history). Only on a hub
    with a folder (whose index keeps them): a remote hub's history is one request per commit, for every command."""
    out: dict[str, list[dict]] = {}
    if not supports(hub, LOCAL_FOLDER) or not info.parents:
        return out
    try:
        older = hub.history(repo, info.id)[1:]
    except (FiunError, OSError):
        return out
    for c in older:
        sha = c.files.get(CARD_FILE)
        if sha is None:
            continue
        if sha not in _CARD_PARENTS:
            if len(_CARD_PARENTS) > 100_000:
                _CARD_PARENTS.clear()
            try:
                meta = parse_card(hub.read_file(repo, CARD_FILE, c.id), where=f"{repo}@{c.id[:12]}")
                _CARD_PARENTS[sha] = [p.to_dict() for p in meta.parents]
            except Exception:  # noqa: BLE001 - an old card never makes the hub unusable
                _CARD_PARENTS[sha] = None
        pins = _CARD_PARENTS[sha]
        if pins and any(p["repo"] not in head_parents for p in pins):
            out[c.id] = pins
    return out


def _index_path(hub) -> Path:
    return Path(hub.root) / FIUN_DIR / INDEX_FILE


def read_index_file(hub) -> dict | None:
    """The index's repo entries, or None if there is no (readable) index."""
    if not supports(hub, LOCAL_FOLDER):  # a remote hub keeps no index: read the cards
        return None
    try:  # bounded and depth-checked: a hand-edited index is rebuilt from the cards, never a traceback
        data = loads_json(read_regular_file(_index_path(hub), MAX_INDEX, "lineage index"), INDEX_FILE)
    except (OSError, ValueError, BadInput):
        return None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("repos"), dict):
        return None
    if not all(_repo_ok(r) and _entry_ok(e) for r, e in data["repos"].items()):
        return None  # edited by hand or damaged: the cards are the truth (verify reports it, --repair-index fixes it)
    return data["repos"]


def _record_ok(u: object) -> bool:
    try:
        check_record(u)
    except CardError:
        return False
    return True


def _repo_ok(repo: object) -> bool:
    try:
        validate_repo_id(repo)
    except BadInput:
        return False
    return True


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _weights_ok(w: object) -> bool:
    return w is None or (isinstance(w, str) and _SHA256_RE.fullmatch(w) is not None)


def _entry_ok(e: object) -> bool:
    """An index entry of the shape :func:`index_entry` writes (what graph_from_entries reads)."""
    return (isinstance(e, dict) and isinstance(e.get("head"), str) and isinstance(e.get("sidecar"), str)
            and (e.get("relation") is None or isinstance(e["relation"], str))
            and (e.get("card_error") is None or isinstance(e["card_error"], str))
            and isinstance(e.get("labels"), list) and isinstance(e.get("unlearned"), list)
            and _weights_ok(e.get("weights"))
            and all(_record_ok(u) for u in e["unlearned"])
            and isinstance(e.get("parents"), list)
            and all(_pin_ok(p) for p in e["parents"])
            and isinstance(e.get("former_parents", {}), dict)
            and all(isinstance(k, str) and isinstance(v, list) and all(_pin_ok(p) for p in v)
                    for k, v in e.get("former_parents", {}).items()))


def _pin_ok(p: object) -> bool:
    return isinstance(p, dict) and isinstance(p.get("repo"), str) and isinstance(p.get("revision"), str)


def write_index_file(hub, repos: dict) -> None:
    body = json.dumps({"format": INDEX_FORMAT, "repos": repos}, separators=(",", ":"), sort_keys=True, default=str)
    _local.atomic_write(_index_path(hub), body.encode())  # (looked up when called: the crash tests wrap it)


def rebuild_index(hub) -> dict:
    """Entries for every repo, read from the cards (not from the index), at heads read as one consistent set
    where the backend can (LocalHub.heads: never half of a publish)."""
    from .fingerprint_store import rebuild_fingerprints  # (numpy, as above)

    if supports(hub, CONSISTENT_HEADS):
        entries = {repo: index_entry(hub, repo, head) for repo, head in sorted(hub.heads().items())}
    else:
        entries = {repo: index_entry(hub, repo) for repo in hub.list_repos()}
    rebuild_fingerprints(hub, entries)
    return entries


# ---------------------------------------------------------------------------- graph
def graph_from_entries(entries: dict) -> nx.DiGraph:
    """Build the DAG from index entries (pure; no I/O)."""
    g = nx.DiGraph()
    entries = {r: e for r, e in entries.items() if r != LEDGER_REPO}
    for repo, e in entries.items():
        g.add_node(
            repo,
            head=e["head"],
            labels=e["labels"],
            relation=e["relation"],
            sidecar=e["sidecar"],
            unlearned=e["unlearned"],
            card_error=e["card_error"],
            no_card=e.get("no_card", False),
            missing=False,
        )
    for repo, e in entries.items():
        for p in e["parents"]:
            if p["repo"] not in g:
                g.add_node(p["repo"], missing=True, head=None, labels=[], relation=None, sidecar="none",
                           unlearned=[], card_error=None)
            g.add_edge(p["repo"], repo, relation=e["relation"], revision=p["revision"])
    # A child pinned to an earlier revision of its parent derives from what that revision's card declared, also
    # where the parent's head no longer declares it (re-pushed with other parents): an edge from each of those
    # (``via`` the parent), and so on up, through their own earlier revisions.
    todo = [(p, c, d["revision"]) for p, c, d in g.edges(data=True)]
    while todo:
        parent, child, rev = todo.pop()
        for pin in ((entries.get(parent) or {}).get("former_parents") or {}).get(rev, ()):
            q = pin["repo"]
            if q == child or g.has_edge(q, child):
                continue
            if q not in g:
                g.add_node(q, missing=True, head=None, labels=[], relation=None, sidecar="none", unlearned=[],
                           card_error=None)
            g.add_edge(q, child, relation=g.edges[parent, child]["relation"], revision=pin["revision"], via=parent)
            todo.append((q, child, pin["revision"]))
    return g


def resolve(hub, *, rebuild: bool = False) -> nx.DiGraph:
    """The inheritance DAG of a hub: from the index, or from every card when ``rebuild`` (or no index)."""
    return resolve_entries(hub, rebuild=rebuild)[0]


def index_entries(hub) -> dict:
    """The lineage index's entries: read from the index, or rebuilt from every card when there is none (or it is
    out of date)."""
    entries = read_index_file(hub)
    return rebuild_index(hub) if entries is None else entries


def resolve_entries(hub, *, rebuild: bool = False) -> tuple[nx.DiGraph, dict]:
    """:func:`resolve` and the entries it was built from (the index read once, e.g. for ``lineage --infer``)."""
    import gc

    # Millions of small objects: the cyclic GC would rescan them over and over while they are built.
    enabled = gc.isenabled()
    gc.disable()
    try:
        entries = rebuild_index(hub) if rebuild else index_entries(hub)
        return graph_from_entries(entries), entries
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------------------- queries
def _check_known(g: nx.DiGraph, repos: Iterable[str]) -> list[str]:
    repos = list(repos)
    for r in repos:
        if r not in g or g.nodes[r].get("missing"):
            raise RepoNotFound(f"repo {r} not found in the lineage")
    return repos


def roots(g: nx.DiGraph) -> list[str]:
    """Repos with no parent.

    >>> g = nx.DiGraph([("a/root", "a/child"), ("a/child", "a/grandchild")])
    >>> roots(g)
    ['a/root']
    """
    return sorted(n for n in g if g.in_degree(n) == 0 and not g.nodes[n].get("missing"))


def ancestors(g: nx.DiGraph, repo: str) -> set[str]:
    """Every repo ``repo`` derives from, directly or not."""
    return nx.ancestors(g, _check_known(g, [repo])[0])


def descendants(g: nx.DiGraph, repo: str) -> set[str]:
    """Every repo derived from ``repo``, directly or not."""
    return nx.descendants(g, _check_known(g, [repo])[0])


def affected(g: nx.DiGraph, origins: Iterable[str]) -> dict[str, int]:
    """The affected set of a forget at ``origins``: origins and all their descendants, by BFS, with depth.

    Depth is the shortest number of edges from any origin (origins have depth 0), from networkx's ``bfs_layers``.
    Keys: the origins in the order given, then each layer in name order (callers use the depths, not the order).

    >>> g = nx.DiGraph([("o/a", "o/b"), ("o/a", "o/c"), ("o/b", "o/d"), ("o/c", "o/d"), ("x/y", "x/z")])
    >>> affected(g, ["o/a"])
    {'o/a': 0, 'o/b': 1, 'o/c': 1, 'o/d': 2}
    """
    origins = list(dict.fromkeys(_check_known(g, origins)))
    depth = dict.fromkeys(origins, 0)
    for d, layer in enumerate(nx.bfs_layers(g, origins)):
        depth.update((r, d) for r in sorted(layer) if r not in depth)
    return depth


def merge_sources(g: nx.DiGraph, origins: Iterable[str], repo: str) -> list[str]:
    """The origins whose unlearning FIM ``repo`` merges: ``repo`` itself if it is one, and its ancestors among them.

    >>> g = nx.DiGraph([("o/a", "o/c"), ("o/b", "o/c"), ("o/c", "o/d")])
    >>> merge_sources(g, ["o/a", "o/b"], "o/d")
    ['o/a', 'o/b']
    """
    up = nx.ancestors(g, repo) | {repo}
    return sorted(o for o in origins if o in up)


def subgraph(g: nx.DiGraph, repo: str | None, up: bool = False, down: bool = False) -> nx.DiGraph:
    """The part of ``g`` around ``repo``: ancestors (``up``), descendants (``down``) or both (neither flag)."""
    if repo is None:
        return g
    _check_known(g, [repo])
    keep = {repo}
    if up or not down:
        keep |= nx.ancestors(g, repo)
    if down or not up:
        keep |= nx.descendants(g, repo)
    return g.subgraph(keep).copy()


# ---------------------------------------------------------------------------- checks
@dataclass
class Problem:
    repo: str
    kind: str  # cycle | missing-parent | unpinned | unknown-revision | pre-forget-pin | stale-sidecar | card
    message: str  # ... | no-sidecar | approximate-sidecar (fiun_hub.fallback.forget_problems)
    blocking: bool = True  # False: a note (lineage --check still exits 0)

    def to_dict(self) -> dict:
        return {"repo": self.repo, "kind": self.kind, "message": self.message, "blocking": self.blocking}


def check(hub, g: nx.DiGraph | None = None) -> list[Problem]:
    """Provenance problems across the hub: cycles, missing or unpinned parents, pins to unknown revisions,
    children pinned to a revision that predates a forget applied to their parent, stale or invalid sidecars,
    malformed cards."""
    g = g if g is not None else resolve(hub)
    problems: list[Problem] = []
    for cyc in nx.simple_cycles(g):
        problems.append(Problem(cyc[0], "cycle", f"lineage cycle: {' -> '.join(cyc + [cyc[0]])}"))
    pre_forget_cache: dict[tuple[str, str], set[str]] = {}
    records: dict[str, list] = {}  # repo -> its forget records (read once)

    def records_of(r: str) -> list:
        if r not in records:
            records[r] = forget_records(g.nodes[r].get("unlearned"))
        return records[r]

    for repo in sorted(g):
        attrs = g.nodes[repo]
        if attrs.get("missing"):
            kids = ", ".join(sorted(g.successors(repo)))
            problems.append(Problem(repo, "missing-parent", f"{kids} names parent {repo}, which is not in the hub"))
            continue
        if attrs.get("card_error"):
            problems.append(Problem(repo, "card", attrs["card_error"]))
        if attrs.get("no_card"):
            problems.append(Problem(repo, "no-card", f"{repo}: no {CARD_FILE}, so no recorded parents or labels"))
        if attrs.get("sidecar") in ("stale", "invalid"):
            problems.append(Problem(repo, "stale-sidecar",
                                    f"{repo}: FIM sidecar is {attrs['sidecar']}; run `fiun-hub fim {repo} --data ...`"))
        for parent in sorted(g.predecessors(repo)):
            pin = g.edges[parent, repo].get("revision")
            if g.nodes[parent].get("missing"):
                continue
            if not pin:
                problems.append(Problem(repo, "unpinned", f"{repo}: parent {parent} is not pinned to a revision"))
                continue
            if pin not in set(hub.commits(parent)):
                problems.append(Problem(repo, "unknown-revision",
                                        f"{repo}: pinned revision {pin[:12]} of {parent} does not exist"))
                continue
            mine = {r.request for r in records_of(repo)}
            for rec in records_of(parent):
                if rec.request in mine or not rec.from_revision:
                    continue
                key = (parent, rec.from_revision)
                if key not in pre_forget_cache:
                    try:
                        pre_forget_cache[key] = {c.id for c in hub.history(parent, rec.from_revision)}
                    except BadInput:
                        pre_forget_cache[key] = set()
                if pin in pre_forget_cache[key]:
                    problems.append(Problem(
                        repo, "pre-forget-pin",
                        f"{repo}: derived from {parent}@{pin[:12]}, a revision that still holds data forgotten by "
                        f"request {rec.request}",
                    ))
    return problems


def validate_new_parents(g: nx.DiGraph, repo: str, parents: Iterable[str]) -> None:
    """Refuse parents that are ``repo`` itself or derive from it (a cycle)."""
    for p in parents:
        if p == repo or (repo in g and p in g and p in nx.descendants(g, repo)):
            raise LineageError(f"--parent {p} would create a cycle: {p} derives from {repo}")


# ---------------------------------------------------------------------------- exports
def to_json(g: nx.DiGraph) -> dict:
    """networkx node-link data (``nodes`` with ``id``, ``links`` with ``source``/``target``) plus attributes."""
    return nx.node_link_data(g, edges="links")


def _short(rev: str | None) -> str:
    return rev[:12] if rev else "-"


def _node_label(g: nx.DiGraph, n: str) -> str:
    a = g.nodes[n]
    if a.get("missing"):
        return f"{n} (missing)"
    bits = [f"@{_short(a.get('head'))}"]
    if a.get("relation"):
        bits.append(a["relation"])
    if a.get("sidecar") != "none":
        bits.append(f"fim:{a.get('sidecar')}")
    if a.get("unlearned"):
        bits.append("forgot:" + ",".join(r.request for r in forget_records(a["unlearned"])))
    return f"{n} [{' '.join(bits)}]"


def to_tree(g: nx.DiGraph) -> str:
    """An indented text tree from the roots down; a node with several parents is expanded once."""
    lines: list[str] = []
    shown: set[str] = set()

    def walk(n: str, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        if n in shown:
            lines.append(f"{prefix}{branch}{n} (see above)")
            return
        shown.add(n)
        lines.append(f"{prefix}{branch}{_node_label(g, n)}")
        kids = sorted(g.successors(n))
        for i, k in enumerate(kids):
            walk(k, prefix + ("" if top else ("    " if last else "│   ")), i == len(kids) - 1, False)

    starts = sorted(n for n in g if g.in_degree(n) == 0)
    for r in starts:
        walk(r, "", True, True)
    for n in sorted(g):  # nodes only reachable through a cycle
        if n not in shown:
            walk(n, "", True, True)
    return "\n".join(lines)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(g: nx.DiGraph) -> str:
    out = ["digraph lineage {", "  rankdir=TB;", "  node [shape=box, style=rounded];"]
    for n in sorted(g):
        a = g.nodes[n]
        style = ', style="dashed"' if a.get("missing") else (', color="red"' if a.get("unlearned") else "")
        out.append(f"  {_q(n)} [label={_q(_node_label(g, n))}{style}];")
    for u, v, e in sorted(g.edges(data=True)):
        out.append(f"  {_q(u)} -> {_q(v)} [label={_q((e.get('relation') or '') + ' @' + _short(e.get('revision')))}];")
    out.append("}")
    return "\n".join(out)


def to_mermaid(g: nx.DiGraph) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(sorted(g))}
    out = ["graph TD"]
    for n in sorted(g):
        out.append(f'  {ids[n]}["{_node_label(g, n).replace(chr(34), "#quot;")}"]')
    for u, v, e in sorted(g.edges(data=True)):
        out.append(f"  {ids[u]} -->|{e.get('relation') or ''}| {ids[v]}")
    return "\n".join(out)


def layered_positions(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Top-down positions: one row per topological generation (falls back to a spring layout on cycles)."""
    try:
        gens = list(nx.topological_generations(g))
    except nx.NetworkXUnfeasible:
        return nx.spring_layout(g, seed=0)
    pos = {}
    for depth, gen in enumerate(gens):
        gen = sorted(gen)
        for i, n in enumerate(gen):
            pos[n] = (i - (len(gen) - 1) / 2.0, -float(depth))
    return pos


def to_png(g: nx.DiGraph, path: str | Path, title: str = "fiun-hub lineage",
           colors: dict[str, str] | None = None) -> Path:
    """Draw the DAG top-down to a PNG: boxes per repo (short name and head), arrows labelled by relation.

    ``colors`` maps repo -> fill colour; by default unlearned repos are orange, missing ones grey.
    """
    # A Figure with its own Agg canvas: no pyplot, so the caller's global backend and figure registry are untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = layered_positions(g)
    width = max([abs(x) for x, _ in pos.values()] + [1.0])
    depth = max([-y for _, y in pos.values()] + [1.0])
    fig = Figure(figsize=(min(4 + 2.6 * width, 40), min(2 + 1.4 * depth, 40)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for u, v, e in g.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                    arrowprops=dict(arrowstyle="-|>", color="#555", lw=1.2, shrinkA=4, shrinkB=4))
        if e.get("relation"):
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, e["relation"], fontsize=7, color="#555", ha="center",
                    va="center", bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none"))
    for n, (x, y) in pos.items():
        a = g.nodes[n]
        fill = (colors or {}).get(n) or ("#dddddd" if a.get("missing") else "#ffd8a8" if a.get("unlearned")
                                         else "#d0ebff")
        label = n + ("\n(missing)" if a.get("missing") else f"\n@{_short(a.get('head'))[:8]}")
        ax.text(x, y, label, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.4", fc=fill, ec="#333"))
    ax.set_xlim(-width - 1, width + 1)
    ax.set_ylim(-depth - 0.6, 0.6)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
