"""Plan and carry out a forget request with FIUn (DESIGN.md section 5).

1. :func:`plan_forget`: origins -> affected set (BFS) -> per affected repo: depth, merge sources (the origins it
   is or descends from), head shape, sidecar state, and every problem that would stop the forget.
2. :func:`run_forget`: the unlearning FIM U(o) of each origin, from its per-class sidecar (class-wise, no data)
   or from ``--data`` (sample-wise), computed on the origin's weights *before* any change; per affected repo
   the MFIM M(v) = max over its sources of U(o), rows aligned by label name; the dampening of v's unlearnable
   layers from M(v) and v's own model FIM only. Every repo is independent of the others (any order, any
   number of workers); the new revisions are then published together, all or nothing.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import networkx as nx

from .card import parse_card_full, render_card
from .forget_record import UNCHANGED, ForgetRecord, forget_records
from .constants import CARD_FILE, CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
from .errors import BadInput, ConflictError, DataSpecError, FiunError, LineageError, UnlearnError
from .hub.ids import validate_repo_id, validate_request_id
from .hub.base import BLOB_STORE, LOCK, PURGE, Blob, CommitInfo, Hub, RepoChange, check_card_write, supports
from .hub.staging import StagedBlob, Staging
from .lineage import affected, merge_sources, resolve
from .models import parse_config
from .repo import read_meta
from .fallback import resolve_sidecars
from .sidecars import path_at, read_at

from .dampening import (DEFAULT_ALPHA, DEFAULT_LAMBDA, DEFAULT_REFERENCE_RULE, SAMPLE_ALPHA,  # noqa: E402
                        SAMPLE_LAMBDA)  # (one place for the defaults)
from .dampening import align_rows, merge_fims, unlearning_fim
from .data import load_for_model
from . import executors  # (executors.run_unlearn looked up when called: the tests wrap it)
from .fisher import compute_fisher, strip_classes
from .models import load_model
from .node_update import NodeTask, emit_weights, read_into_bytearray, splice_update, unlearn_node  # (re-exported)


@dataclass
class NodePlan:
    """One affected repo in a plan."""

    repo: str
    depth: int
    head: str
    sources: list[str]
    labels: list[str]
    forget_here: list[str]  # forget classes this repo's head has a row for
    head_shape: list[int] | None
    sidecar: str
    done: bool  # already carries the request
    problems: list[str] = field(default_factory=list)
    # which sidecar the update uses: "own", or "approximate: from org/a@REV[, ...]" (fiun_hub.fallback)
    sidecar_used: str = "own"
    # labels of this head that earlier forgets (other requests in its card) removed: kept inert by the update
    forgotten_before: list[str] = field(default_factory=list)
    # an undeclared derivative adopted by `audit --fix --adopt`: {"repo", "revision", "evidence"} of the parent its
    # weights look derived from (recorded as "adopted_from" with "inferred": true; its card's parents stay as they are)
    adopted_from: dict[str, Any] | None = None
    # adopted repos above it (its declared ancestors) -> their inferred parent [(repo, revision)]: where the search
    # for ancestors' sidecars goes from them, since their cards name no parent
    inferred_ancestors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def inferred_parents(self) -> list[tuple[str, str]] | None:
        """``[(repo, revision)]`` of the inferred parent (adopted nodes), in place of the card's parents when
        looking for ancestors' sidecars; None (the card's) otherwise."""
        if self.adopted_from is None:
            return None
        return [(str(self.adopted_from["repo"]), str(self.adopted_from["revision"]))]


@dataclass
class Plan:
    request_id: str
    origins: list[str]
    classes: list[str] | None
    data_spec: str | None
    alpha: float
    lam: float
    nodes: list[NodePlan]
    unaffected: int
    # Checked configs and sidecars (and the head's CommitInfo) read while planning, reused by run_forget (not
    # part of the plan's data): repo -> (config, sidecars[, commit info]).
    _loaded: dict[str, tuple[Any, ...]] = field(default_factory=dict, repr=False, compare=False)
    # sample-wise: write the data spec into the records too (by default only the samples' fingerprint)
    record_spec: bool = False
    # class-wise: "head" (the rule of docs/method.md section 1) or "features" (also the last block's features,
    # :mod:`fiun_hub.feature_forget`, section 11)
    scope: str = "head"
    # features scope: repo -> (prototypes, counts, where they come from), read while planning
    _protos: dict[str, tuple[Any, ...]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def problems(self) -> list[str]:
        return [p for n in self.nodes for p in n.problems]

    @property
    def todo(self) -> list[NodePlan]:
        return [n for n in self.nodes if not n.done]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["nodes"] = [asdict(n) for n in self.nodes]
        d["problems"] = self.problems
        d["noop"] = not self.todo
        return d


def default_request_id(origins: Sequence[str], classes: Sequence[str] | None, data_spec: str | None) -> str:
    """A stable id for the same request, so that re-running it is a no-op."""
    key = json.dumps([sorted(origins), sorted(classes or []), data_spec or ""])
    return "forget-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _parse_classes(classes: Sequence[str] | str | None) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = classes.split(",")
    out = list(dict.fromkeys(c.strip() for c in classes if c and c.strip()))
    if not out:
        raise UnlearnError("empty forget set: give --classes A,B or --data SPEC")
    return out


def _head_params(layers: Sequence[str], classifier: str) -> list[str]:
    return [n for n in layers if n.rsplit(".", 1)[0] == classifier]


def plan_forget(
    hub: Hub,
    origins: Sequence[str],
    classes: Sequence[str] | str | None = None,
    data_spec: str | None = None,
    request_id: str | None = None,
    alpha: float | None = None,
    lam: float | None = None,
    scope: str = "head",
) -> Plan:
    """Work out what a forget would do, without changing anything. Problems are listed per repo. ``alpha`` /
    ``lam`` None: the defaults of the kind of forget (class-wise ``DEFAULT_*``, sample-wise ``SAMPLE_*``).
    ``scope``: ``head`` (default) or ``features`` (class-wise only: also project the forgotten classes out of the
    last block's features, from class prototype sidecars, :mod:`fiun_hub.feature_forget`)."""
    origins = list(dict.fromkeys(origins))
    if not origins:
        raise UnlearnError("no --origin given: name the model(s) whose training data held what must go")
    for o in origins:
        validate_repo_id(o)
    if (classes is None) == (data_spec is None):
        raise UnlearnError("give exactly one of --classes A,B (class-wise) or --data SPEC (sample-wise)")
    if scope not in SCOPES:
        raise UnlearnError(f"unknown --scope {scope!r}; use one of {', '.join(SCOPES)}")
    if scope != "head" and classes is None:
        raise UnlearnError("--scope features is for class-wise forgets (--classes) only")
    classes = _parse_classes(classes)
    if alpha is None:
        alpha = DEFAULT_ALPHA if data_spec is None else SAMPLE_ALPHA
    if lam is None:
        lam = DEFAULT_LAMBDA if data_spec is None else SAMPLE_LAMBDA
    if not (alpha > 0 and lam > 0) or not all(map(lambda v: v == v and v != float("inf"), (alpha, lam))):
        raise UnlearnError(f"--alpha and --lambda must be positive and finite (got {alpha}, {lam})")
    key = data_spec
    if data_spec is not None:
        # The samples, not the spec's text, name a sample-wise request: the same path holding other samples is
        # another request (with the spec as key, a re-run on a replaced file was "already applied", exit 0, and
        # the new samples were never forgotten). Read here, so --dry-run refuses what the forget would.
        samples = samples_fingerprint(data_spec)
        if not samples["count"]:
            raise DataSpecError(f"data spec {data_spec!r} holds no samples")
        key = f"samples:{samples['sha256']}"
    g = resolve(hub)
    if request_id is not None:
        request_id = validate_request_id(request_id, "--request-id")
    else:
        request_id = default_request_id(origins, classes, key)
        if data_spec is not None:  # a record from before the samples named the request: the same samples under
            # the spec-based id are the same request (a re-run stays a no-op; other samples there are still new)
            legacy = default_request_id(origins, classes, data_spec)
            if any(r.request == legacy and r.samples_fingerprint is not None
                   and r.samples_fingerprint.sha256 == samples["sha256"]
                   for o in origins if o in g for r in forget_records(g.nodes[o].get("unlearned"))):
                request_id = legacy
    depths = affected(g, origins)
    sub = g.subgraph(depths)
    if not nx.is_directed_acyclic_graph(sub):
        cyc = nx.find_cycle(sub)
        raise LineageError(f"the affected lineage has a cycle: {' -> '.join(u for u, _ in cyc)}; fix the cards")
    if classes is not None:
        known = set().union(*(set(g.nodes[o].get("labels") or []) for o in origins))
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise UnlearnError(f"class(es) {', '.join(unknown)} are not labels of origin(s) {', '.join(origins)} "
                               f"(labels: {', '.join(sorted(known))})")
    broken = sorted(r for r in g if g.nodes[r].get("card_error") and r not in depths)
    if broken:  # a repo whose card cannot be read might derive from an origin: refuse to guess
        raise UnlearnError(f"cannot tell whether {broken[0]} derives from the origins: "
                           f"{g.nodes[broken[0]]['card_error']}; fix its card first"
                           + (f" ({len(broken) - 1} more such repo(s))" if len(broken) > 1 else ""))
    nodes: list[NodePlan] = []
    loaded: dict[str, tuple[Any, ...]] = {}
    for repo in sorted(depths, key=lambda r: (depths[r], r)):
        a = g.nodes[repo]
        records = forget_records(a.get("unlearned"))
        done = any(r.request == request_id for r in records)
        labels = list(a.get("labels") or [])
        node = NodePlan(repo, depths[repo], a["head"], merge_sources(g, origins, repo), labels,
                        [c for c in (classes or []) if c in labels], None, a.get("sidecar", "none"), done)
        node.forgotten_before = forgotten_before(records, labels, request_id)
        if a.get("card_error"):
            node.problems.append(a["card_error"])
        if not done:
            _check_node(hub, node, loaded, origins, classes)
        nodes.append(node)
    plan = Plan(request_id, origins, classes, data_spec, float(alpha), float(lam), nodes,
                g.number_of_nodes() - len(depths), loaded, scope=scope)
    if scope == "features":
        _check_features(hub, plan)
    return plan


#: the scopes of a class-wise forget
SCOPES = ("head", "features")


def _check_features(hub: Hub, plan: Plan) -> None:
    """Features scope: read every affected repo's prototype sidecar (its own; the first origin's that has them for
    forgotten classes it lacks) into ``plan._protos``, and add to the nodes' problems what would stop the edit."""
    from .feature_forget import PROTO_FILE
    from .prototypes import load_prototypes

    own: dict[str, Any] = {}
    for node in plan.todo:
        got = plan._loaded.get(node.repo)
        if got is None or len(got) < 3:
            continue
        unfoldable = _no_fold(node.repo, got[0]) if node.forget_here else None
        if unfoldable:  # before asking for prototypes that `fim --prototypes` could not make either
            node.problems.append(unfoldable)
            continue
        try:
            own[node.repo] = load_prototypes(hub, node.repo, got[2])
        except FiunError as exc:
            node.problems.append(str(exc))
    for node in plan.todo:
        if not node.forget_here or node.repo not in own:
            continue
        mine = own[node.repo]
        if mine is not None and all(c in mine[0] for c in node.forget_here):
            plan._protos[node.repo] = (mine[0], mine[1], "own")
            continue
        src = next((o for o in plan.origins if own.get(o) is not None
                    and all(c in own[o][0] for c in node.forget_here)), None)
        if src is None:
            node.problems.append(f"{node.repo}: --scope features needs class prototypes of "
                                 f"{', '.join(node.forget_here)} ({PROTO_FILE}, its own or an origin's); run "
                                 f"`fiun-hub fim {node.repo} --data SPEC --prototypes`")
            continue
        plan._protos[node.repo] = (own[src][0], own[src][1], f"origin {src}")


def _no_fold(repo: str, config: Any) -> str | None:
    """Why the features scope cannot edit ``repo``'s architecture (no exact fold point), else None; from the
    model's structure (:func:`fiun_hub.models.build_shapes`)."""
    from .feature_forget import fold_point
    from .models import build_shapes

    try:
        fold_point(build_shapes(config))
    except FiunError as exc:
        return f"{repo}: {exc}"
    return None


def _check_node(hub: Hub, node: NodePlan, loaded: dict, origins: Sequence[str],
                classes: Sequence[str] | None) -> None:
    """Read ``node``'s head (config, sidecars: its own, else its ancestors' at the revisions it is pinned to, or
    at its inferred parent's for an adopted node) into ``loaded`` and add to ``node.problems`` what would stop
    its forget."""
    repo, labels = node.repo, node.labels
    try:
        info = hub.commit_info(repo, node.head)  # read once: config, sidecars and weights come from it
        config = parse_config(read_at(hub, repo, info, CONFIG_FILE), f"{repo}:{CONFIG_FILE}")
        sc, choice = resolve_sidecars(hub, repo, info, labels or config.labels, config.classifier,
                                      node.inferred_parents(), node.inferred_ancestors)
        node.sidecar_used = choice.describe()
        loaded[repo] = (config, sc, info)
        heads = _head_params(sc.layers, config.classifier)
        node.head_shape = list(sc.model_fim[heads[0]].shape) if heads else None
        if sc.labels != labels:
            node.problems.append(f"{repo}: sidecar labels differ from the card's; recompute the sidecar")
        if not heads:
            node.problems.append(f"{repo}: its sidecar does not cover the head {config.classifier}, so it "
                                 f"cannot be aligned; run `fiun-hub fim {repo} --layers head --data SPEC`")
        if repo in origins and classes is not None:
            have = [c for c in node.forget_here if sc.counts.get(c, 0) > 0]
            if not have:
                node.problems.append(f"{repo}: origin has no per-class FIM for {', '.join(classes)}; "
                                     f"run `fiun-hub fim {repo} --data SPEC` on data holding them")
        for o in node.sources:
            if o != repo and o in loaded:
                node.problems += _mismatch(repo, sc, heads, o, loaded[o][1])
    except FiunError as exc:
        node.problems.append(str(exc))


def adopt_node(hub: Hub, plan: Plan, g: nx.DiGraph, repo: str, sources: Sequence[str],
               adopted_from: dict[str, Any] | None, depth: int = 1,
               inferred: dict[str, Any] | None = None) -> NodePlan:
    """A node for ``repo``, which the cards do not link to ``plan``'s origins, added to ``plan`` (to do): an
    undeclared derivative adopted by ``audit --fix --adopt`` (``adopted_from``: ``{repo, revision, evidence}`` of
    the inferred parent, whose sidecars at that revision stand in when ``repo`` has none), or (``adopted_from``
    None) a declared descendant of one. ``sources``: the origins whose unlearning FIM it merges (its inferred
    parent's). ``g``: the lineage (:func:`fiun_hub.lineage.resolve`). ``inferred``: every adopted repo's
    ``adopted_from`` (a descendant's search for its ancestors' sidecars goes through them to their inferred
    parents). Its card stays as it is, but for the forget record; what would stop its forget is in the node's
    problems."""
    a = g.nodes[repo]
    labels = list(a.get("labels") or [])
    up = nx.ancestors(g, repo)
    node = NodePlan(repo, depth, a["head"], list(sources), labels,
                    [c for c in (plan.classes or []) if c in labels], None, a.get("sidecar", "none"), False,
                    adopted_from=dict(adopted_from) if adopted_from is not None else None,
                    inferred_ancestors={r: [(str(p["repo"]), str(p["revision"]))] for r, p in (inferred or {}).items()
                                        if r in up})
    node.forgotten_before = forgotten_before(forget_records(a.get("unlearned")), labels, plan.request_id)
    if a.get("card_error"):
        node.problems.append(a["card_error"])
    else:
        _check_node(hub, node, plan._loaded, plan.origins, plan.classes)
    plan.nodes.append(node)
    return node


def forgotten_before(records: Sequence[ForgetRecord], labels: Sequence[str], request_id: str) -> list[str]:
    """The labels of ``labels`` that class-wise records other than ``request_id`` removed (oldest first)."""
    out: list[str] = []
    for u in records:
        if u.request == request_id:
            continue
        for c in u.classes or ():
            if str(c) in labels and str(c) not in out:
                out.append(str(c))
    return out


def samples_fingerprint(spec: str) -> dict[str, Any]:
    """What a sample-wise record names instead of the data spec (a path may name a person): the sha256 of the
    sample arrays as the spec's source holds them, before any preprocessing (images: dtype, shape and bytes; labels
    as int64; the label names, NUL-separated), the sample count and the count per label name."""
    import numpy as np

    from . import data as D

    kind, arg, split = D.parse_spec(spec)
    explicit = D._has_split_suffix(spec)  # as the data loader reads it: a file without a split suffix is whole
    if kind == "digits":
        x, y, labels = D._digits(split)
    elif kind == "fashion-mnist":
        x, y, labels = D._fashion_mnist(Path(arg) if arg else D.FASHION_MNIST_DIR, split)
    elif kind == "npz":
        assert arg is not None  # (parse_spec refuses npz: and folder: without a path)
        x, y, labels = D._npz(Path(arg), split, explicit)
    else:
        assert arg is not None
        x, y, labels = D._folder(Path(arg), split, explicit)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.int64)
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}{list(x.shape)}".encode())
    h.update(x.tobytes())
    h.update(y.tobytes())
    h.update("\x00".join(str(v) for v in labels).encode())
    counts = np.bincount(y, minlength=len(labels)).tolist() if len(y) else []
    return {"sha256": h.hexdigest(), "count": int(len(y)),
            "labels": {str(lab): int(n) for lab, n in zip(labels, counts) if n}}


def _mismatch(repo: str, sc, heads: Sequence[str], origin: str, osc) -> list[str]:
    """Why ``origin``'s unlearning FIM could not be merged into ``repo``'s (empty if it can). Head rows are
    aligned by label, so only their other dimensions must agree; other layers must agree whole."""
    fix = f"recompute one with `fiun-hub fim --estimator {osc.estimator} {repo} --data SPEC`"
    if sc.estimator != osc.estimator:
        return [f"{repo}: its sidecar uses the {sc.estimator} estimator but origin {origin}'s uses "
                f"{osc.estimator}; {fix}"]
    for name, t in osc.model_fim.items():
        if name not in sc.model_fim:
            return [f"{repo}: its sidecar lacks layer {name} of origin {origin}; {fix}"]
        mine = sc.model_fim[name]
        if (t.shape[1:] != mine.shape[1:]) if name in heads else (t.shape != mine.shape):
            return [f"{repo}: layer {name} has shape {tuple(mine.shape)}, origin {origin}'s {tuple(t.shape)}; "
                    "it cannot be aligned"]
    return []


# ------------------------------------------------------------------------------------------------ unlearning
@dataclass(frozen=True)
class OriginFim:
    """U(o): one origin's unlearning FIM, on its weights before the request (:func:`origin_unlearning_fim`)."""

    fim: dict[str, Any]  # layer -> tensor, head rows in ``labels`` order (aligned per repo by dampening.align_rows)
    labels: list[str]  # the origin's head-row order
    revision: str  # the origin's revision it was computed at (recorded in each record's ``origins``)
    estimator: str  # its sidecar's estimator: every affected repo's must be the same


def origin_unlearning_fim(hub: Hub, plan: Plan, origin: str, device: str | None = None) -> OriginFim:
    """U(o) for one origin, on its weights before this request."""

    g_node = next(n for n in plan.nodes if n.repo == origin)
    revision = g_node.head
    if g_node.done:  # already unlearned: use the revision the request started from
        meta = read_meta(hub, origin, g_node.head)
        rec = next(r for r in meta.records if r.request == plan.request_id)
        revision = rec.from_revision or revision
    got = plan._loaded.get(origin)
    if not g_node.done and got and len(got) > 2 and got[2].id == revision:
        sc = got[1]
    else:
        info = hub.commit_info(origin, revision)
        oconfig = parse_config(read_at(hub, origin, info, CONFIG_FILE), f"{origin}:{CONFIG_FILE}")
        sc, _ = resolve_sidecars(hub, origin, info, oconfig.labels, oconfig.classifier)
    if plan.classes is not None:
        have = [c for c in plan.classes if sc.counts.get(c, 0) > 0]
        return OriginFim(unlearning_fim(sc.class_fims, sc.counts, have), sc.labels, revision, sc.estimator)

    model, config, _ = load_model(hub, origin, revision)
    assert plan.data_spec is not None  # sample-wise (a plan has classes or a data spec)
    data = load_for_model(plan.data_spec, config)
    data = data.to_label_space(config.labels)
    if len(data) == 0:
        raise UnlearnError(f"forget data {plan.data_spec} holds no sample of {origin}'s classes")
    res = compute_fisher(model, data.x, data.y, config.labels, sc.layers, estimator=sc.estimator,
                         batch_size=sc.batch_size or 64, device=device)
    return OriginFim(res.model_fim, sc.labels, revision, sc.estimator)


_Staging = Staging  # (the name the tests and older callers use; LocalHub.staging() makes one)


@dataclass
class ForgetResult:
    request_id: str
    noop: bool
    revisions: dict[str, dict[str, str]]  # repo -> {"from": old, "to": new}
    stats: dict[str, dict[str, Any]]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def utc_now() -> str:
    """The time written into forget records (a function, so that tests can fix it)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _loaded(hub: Hub, plan: Plan, node: NodePlan) -> tuple[Any, Any, Any]:
    """(config, sidecars, commit info) of ``node``'s head, from what planning read when it can."""
    got = plan._loaded.get(node.repo) or ()
    info = got[2] if len(got) > 2 else hub.commit_info(node.repo, node.head)
    if len(got) >= 2:
        return got[0], got[1], info
    config = parse_config(read_at(hub, node.repo, info, CONFIG_FILE), node.repo)
    return config, resolve_sidecars(hub, node.repo, info, node.labels or config.labels, config.classifier,
                                    node.inferred_parents(), node.inferred_ancestors)[0], info


def run_forget(
    hub: Hub,
    plan: Plan,
    *,
    workers: int = 1,
    executor: str = "local",
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    ray_address: str | None = None,
    batched: bool | None = None,
    extra_changes: Callable[[list[RepoChange]], list[RepoChange]] | None = None,
    purge: Callable[[list[RepoChange]], list[dict] | None] | None = None,
) -> ForgetResult:
    """Carry out a plan: compute U per origin, M per repo, dampen every affected repo independently (in this
    process, a process pool or Ray; batched by head shape on CUDA), then publish all new revisions together
    (or none, if anything failed or a head moved).

    Each repo's new files are finished as its result arrives: on a LocalHub the executor's task writes the new
    weights straight into the repo's blob store (a staging name, then ``blobs/{sha256}``; invisible until the
    publish moves the refs), and this process derives the sidecars and the card and keeps only small things. So
    memory does not grow with the number of repos, and nothing is left behind when the forget fails.

    ``extra_changes(changes)``: more changes made from the forget's own (e.g. the takedown ledger's record of
    them, :mod:`fiun_hub.compliance`), published in the same publish, so that they land with the new revisions
    or not at all. ``purge(changes)``: the tombstones to write in that publish (:mod:`fiun_hub.purge`; a hub
    with ``PURGE`` only). ``purge`` is called first, then ``extra_changes``, both after every repo is done and
    before the publish; if either raises, nothing is published."""
    import time


    if plan.problems:
        raise UnlearnError(plan.problems[0])
    if purge is not None and not supports(hub, PURGE):
        raise ValueError("run_forget(purge=...) needs a hub with the PURGE capability")
    if not plan.todo:
        return ForgetResult(plan.request_id, True, {}, {}, {})
    t0 = time.perf_counter()
    fims = {o: origin_unlearning_fim(hub, plan, o, device) for o in plan.origins}
    t_origin = time.perf_counter() - t0

    samples = samples_fingerprint(plan.data_spec) if plan.data_spec is not None else None
    staging = hub.staging() if supports(hub, BLOB_STORE) else None
    tasks, nodes, untouched = [], {}, []
    for node in plan.todo:
        config, sc, info = _loaded(hub, plan, node)
        if plan.classes is not None and not node.forget_here:
            # None of the forgotten labels here: the weights and sidecars stay byte-identical; only the record
            # is added (so that audits see the request applied).
            nodes[node.repo] = (node, sc, info)
            untouched.append(node.repo)
            continue
        heads = _head_params(sc.layers, config.classifier)
        aligned = [align_rows(fims[o].fim, fims[o].labels, node.labels, heads) for o in node.sources]
        for o, f in zip(node.sources, aligned):
            for name, t in f.items():
                if name not in sc.model_fim or sc.model_fim[name].shape != t.shape:
                    raise UnlearnError(f"{node.repo}: layer {name} of origin {o} cannot be aligned "
                                       f"(shape {tuple(t.shape)} vs {tuple(sc.model_fim[name].shape) if name in sc.model_fim else 'absent'})")
        for o in node.sources:
            est = fims[o].estimator
            if est != sc.estimator:
                raise UnlearnError(f"{node.repo}: its sidecar uses the {sc.estimator} estimator but origin {o}'s "
                                   f"uses {est}; recompute one with `fiun-hub fim --estimator {est} "
                                   f"{node.repo} --data SPEC`")
        mfim = merge_fims(aligned)
        feats = _features_edit(hub, plan, node) if plan.scope == "features" else None
        tasks.append(NodeTask(node.repo, str(path_at(hub, node.repo, info, WEIGHTS_FILE)), node.labels,
                              {n: sc.model_fim[n] for n in mfim},
                              {c: {n: f[n] for n in mfim} for c, f in sc.class_fims.items()}, dict(sc.counts),
                              mfim, list(plan.classes or []), heads, plan.alpha, plan.lam,
                              inert=list(node.forgotten_before),
                              sample_counts=dict(samples["labels"]) if samples is not None else None,
                              features=feats))
        nodes[node.repo] = (node, sc, info)

    now = utc_now()
    origin_revs = [f"{o}@{fims[o].revision}" for o in plan.origins]
    what = (f"classes {', '.join(plan.classes or [])}" if samples is None else
            f"{samples['count']} samples (sha256 {samples['sha256'][:12]})")
    changes: dict[str, RepoChange] = {}
    stats: dict[str, dict[str, Any]] = {}
    t_finish = [0.0]

    def finish(repo: str, result: tuple | None) -> dict[str, Any]:
        """One repo's new revision, made as its result arrives: weights (staged), sidecars, card."""
        t = time.perf_counter()
        node, sc, info = nodes[repo]
        files: dict[str, Any] = {}
        drop: tuple[str, ...] = ()
        if result is None:  # untouched: same weights, same sidecars
            sha = info.files.get(WEIGHTS_FILE)
            st = {"changed": 0, "params": sum(int(t.numel()) for t in sc.model_fim.values()), "unchanged": True}
        else:
            _, payload, st = result
            sha = st.get("weights_sha256")
            if isinstance(payload, (bytes, bytearray)):
                weights = Blob(bytes(payload), sha) if sha else Blob.of(bytes(payload))
                sha = weights.sha256
            else:  # a path: the task wrote its new weights into the staging (out_path)
                assert staging is not None
                weights = staging.adopt(repo, payload, sha)
            files[WEIGHTS_FILE] = weights
            if node.sidecar_used == "own":
                # The new sidecars: the forgotten classes stripped, the rest kept as computed on the pre-forget
                # weights. (A repo that used its ancestors' sidecars gets none: it never had any of its own.)
                fim_b, cls_b = strip_classes(sc, node.forget_here, {"weights_sha256": sha,
                                                                    "derived_by": plan.request_id,
                                                                    "derived_from": node.head})
                put = staging.put if staging is not None else (lambda _r, d: d)
                files.update({FIM_FILE: put(repo, fim_b), FIM_CLASSES_FILE: put(repo, cls_b)})
            protos, drop = _new_prototypes(hub, plan, node, info, sha)
            files.update(protos)
        meta, body = parse_card_full(read_at(hub, repo, info, CARD_FILE), where=repo)
        record = ForgetRecord(
            request=plan.request_id,
            classes=tuple(plan.classes) if plan.classes is not None else None,
            origins=tuple(origin_revs),
            from_revision=node.head,
            alpha=plan.alpha,
            lam=plan.lam,
            estimator=sc.estimator,
            reference=DEFAULT_REFERENCE_RULE if plan.classes else "zero",
            sidecar=node.sidecar_used,
            at=now,
            scope=plan.scope if plan.scope != "head" else None,
            prototypes=plan._protos[node.repo][2] if plan.scope != "head" and node.repo in plan._protos else None,
            adopted_from=dict(node.adopted_from) if node.adopted_from is not None else None,
            inferred=True if node.adopted_from is not None else None,
            weights=UNCHANGED if result is None else None,
            samples=samples,
            data=plan.data_spec if samples is not None and plan.record_spec else None,
        )
        meta.unlearned = list(meta.unlearned) + [record.to_dict()]
        card = render_card(meta, body, repo).encode()
        check_card_write(repo, card)  # what publish refuses (a card past the size fiun-hub reads), before it runs
        files[CARD_FILE] = card
        changes[repo] = RepoChange(
            repo, files,
            f"Forget {what} (request {plan.request_id}, FIUn from {', '.join(node.sources)}"
            + (f"; adopted: weights look derived from {node.adopted_from['repo']}@"
               f"{str(node.adopted_from['revision'])[:12]}" if node.adopted_from is not None else "") + ")"
            + ("; no forgotten label here, weights unchanged" if result is None else ""),
            parent_commit=node.head, delete=drop,
        )
        stats[repo] = {**st, "weights_sha256": sha}
        t_finish[0] += time.perf_counter() - t
        return stats[repo]

    publishing = False
    try:
        if staging is not None:
            for task in tasks:
                task.out_path = staging.path_for(task.repo)
        t1 = time.perf_counter()
        executors.run_unlearn(tasks, workers=workers, executor=executor, device=device, batched=batched,
                              progress=progress, ray_address=ray_address, on_result=finish)
        for repo in untouched:
            finish(repo, None)
            if progress:
                progress(repo)
        t_nodes = time.perf_counter() - t1 - t_finish[0]
        t2 = time.perf_counter()
        mine = [changes[n.repo] for n in plan.todo]
        opts: dict[str, Any] = {"precondition": _affected_set_unchanged(plan)} if supports(hub, LOCK) else {}
        if purge is not None:
            opts["purge"] = purge(list(mine))
        extra = list(extra_changes(list(mine))) if extra_changes is not None else []
        publishing = True
        new = hub.publish(mine + extra, **opts)
        t_publish = time.perf_counter() - t2
    except BaseException as exc:
        # Nothing is published: remove what this forget staged. (A publish that failed after writing its commit
        # records may name the staged blobs from those unreachable commits: then they stay, as its own do.)
        if staging is not None and (not publishing or isinstance(exc, ConflictError)):
            staging.discard()
        raise
    finally:
        if staging is not None:
            staging.cleanup()
    return ForgetResult(
        plan.request_id, False,
        {n.repo: {"from": n.head, "to": new[n.repo]} for n in plan.todo},
        stats,
        {"origin_fims": t_origin, "unlearn": t_nodes, "finish": t_finish[0], "publish": t_publish,
         "total": time.perf_counter() - t0},
    )


def _features_edit(hub: Hub, plan: Plan, node: NodePlan) -> dict[str, Any] | None:
    """The features edit of one repo for its task: the fold point, the directions, the centre, the BNs' eps."""
    from .feature_forget import fold_point, projection

    got = plan._protos.get(node.repo)
    if got is None:
        return None
    q, c = projection(got[0], got[1], node.forget_here)
    if q.shape[1] == 0:
        return None
    model, _, _ = load_model(hub, node.repo, node.head)
    point = fold_point(model)
    # (torch types a module's attributes as Tensor | Module: a BatchNorm's eps is a float)
    return {"point": point, "q": q, "center": c,
            "eps": float(model.get_submodule(point["bn"]).eps)}  # type: ignore[arg-type]


def _new_prototypes(hub: Hub, plan: Plan, node: NodePlan, info: CommitInfo, sha: str | None) \
        -> tuple[dict[str, bytes], tuple[str, ...]]:
    """A repo's own prototype sidecar for its new revision: the forgotten classes dropped, the others projected
    as its features were (exact), bound to the new weights. Nothing when it has none. Returns ``(files, paths to
    delete)``."""
    from .feature_forget import PROTO_FILE, encode_prototypes, project_prototypes, projection
    from .prototypes import load_prototypes

    if PROTO_FILE not in info.files or not sha:
        return {}, ()
    try:
        loaded = load_prototypes(hub, node.repo, info)
    except FiunError:
        if plan.scope == "features":
            raise
        # head scope: a stale or unreadable prototype sidecar cannot be rewritten, and it still holds the forgotten
        # classes' prototypes (means over their samples): the new revision drops it (it was refused anyway)
        return {}, (PROTO_FILE,)
    if loaded is None:  # (none: checked above)
        return {}, ()
    protos, counts, meta = loaded
    got = plan._protos.get(node.repo)
    if plan.scope == "features" and got is not None:
        q, c = projection(got[0], got[1], node.forget_here)
        protos = project_prototypes(protos, q, c)
    keep = {k: v for k, v in protos.items() if k not in node.forget_here}
    counts = {k: (0 if k in node.forget_here else v) for k, v in counts.items()}
    extra = {k: v for k, v in meta.items() if k not in ("format", "block", "labels", "counts", "weights_sha256")}
    return {PROTO_FILE: encode_prototypes(keep, counts, json.loads(meta["labels"]), meta["block"], sha,
                                          {**extra, "derived_by": plan.request_id})}, ()


def _affected_set_unchanged(plan: Plan) -> Callable[[Hub], None]:
    """A publish precondition (checked under the writers' lock): no repo has come to derive from the origins
    since the plan was made. Otherwise a model pushed during the forget, pinned to an origin's pre-forget
    revision, would keep what the forget removed. (Not on a remote hub: there is no lock to check it under.)"""
    planned = {n.repo for n in plan.nodes}

    def check(hub: Hub) -> None:
        grown = sorted(set(affected(resolve(hub), plan.origins)) - planned)
        if grown:
            raise ConflictError(f"the lineage changed while the forget ran: {grown[0]} now derives from "
                                f"{', '.join(plan.origins)}" + (f" (and {len(grown) - 1} more)" if len(grown) > 1
                                                               else "") + "; nothing was published, run it again")

    return check


def forget(hub: Hub, origins: Sequence[str], classes=None, data_spec=None, request_id=None,
           alpha: float | None = None, lam: float | None = None, record_spec: bool = False,
           scope: str = "head", **kwargs) -> tuple[Plan, ForgetResult]:
    """Plan and run a forget in one call (what ``fiun-hub forget`` does)."""
    plan = plan_forget(hub, origins, classes, data_spec, request_id, alpha, lam, scope=scope)
    plan.record_spec = bool(record_spec)
    return plan, run_forget(hub, plan, **kwargs)


__all__ = ["Plan", "NodePlan", "OriginFim", "plan_forget", "adopt_node", "run_forget", "forget", "unlearn_node", "NodeTask",
           "ForgetResult", "default_request_id", "BadInput", "StagedBlob", "emit_weights", "utc_now",
           "read_into_bytearray", "splice_update"]
