"""The sidecar a forget uses for a repo: its own, or (when it has none) its nearest ancestors' (docs/method.md §8).

Most models on a hub never had ``fiun-hub fim`` run on them. A repo without a sidecar of its own uses the sidecar of
its nearest ancestor **at the revision it is pinned to** (the weights it was derived from); for a merge, each parent
line gives its nearest sidecar and they are combined as the MFIM combines unlearning FIMs:

- rows are aligned to the repo's head by label name (:func:`fiun_hub.dampening.align_rows`);
- each class FIM is the element-wise maximum of the sources' FIMs of that class;
- each class count is the sum of the sources' counts;
- the model FIM is the count-weighted mean of the combined class FIMs (as after
  :func:`fiun_hub.fisher.strip_classes`), so the retain FIM stays consistent with the class FIMs.

A source is a pinned ancestor revision whose sidecars (both files) are bound to that revision's weights; a stale or
invalid one is passed over and the search goes on above it. A pinned revision whose sidecars a takedown purged
stands on the sidecars its forget kept at the next revision (:func:`kept_after_purge`: the same class FIMs with the
forgotten classes stripped, so the same retain FIM), and the record names that revision. A repo with neither its own sidecar nor any ancestor's
is refused with the ``fiun-hub fim`` command that fixes it. A repo *with* its own sidecar always uses it (a stale or
malformed one is a problem, never silently replaced).

:func:`sidecar_sources` reads only card front matter and sidecar headers (cheap: ``lineage --check`` runs it over a
whole hub); :func:`resolve_sidecars` loads and combines what it found (what ``forget`` and ``audit --fix`` use).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .constants import CARD_FILE, FIM_CLASSES_FILE, FIM_FILE
from .errors import FiunError, SidecarError
from .forget_record import OWN  # (re-exported: a record's sidecar value)
from .hub.base import PURGE, supports


@dataclass(frozen=True)
class SidecarChoice:
    """Which sidecar a repo's forget uses: its own (``sources`` empty) or its ancestors' at pinned revisions."""

    sources: tuple[str, ...] = ()  # "org/name@40hex", nearest first; empty = the repo's own

    @property
    def approximate(self) -> bool:
        return bool(self.sources)

    def describe(self) -> str:
        """``own`` or ``approximate: from acme/a@<40 hex>[, ...]`` (what plans, records and the ledger say)."""
        return "approximate: from " + ", ".join(self.sources) if self.sources else OWN


def no_sidecar_message(repo: str, rev: str) -> str:
    return (f"{repo}@{rev[:12]} has no Fisher sidecar and no ancestor has one at the revision it is pinned to; "
            f"run `fiun-hub fim {repo} --data SPEC` on its training data")


def _usable_at(hub, repo: str, info) -> bool:
    """Both sidecar files at the commit ``info``, bound to its weights (header check only)."""
    from .lineage import sidecar_state

    return FIM_CLASSES_FILE in info.files and sidecar_state(hub, repo, info.files, info.id) == "ok"


def _parents_at(hub, repo: str, rev: str) -> list[tuple[str, str]]:
    """The pinned parents named by ``repo``'s card at ``rev`` (an unreadable card names none)."""
    from .card import parse_card

    try:
        meta = parse_card(hub.read_file(repo, CARD_FILE, rev), where=f"{repo}@{rev[:12]}")
    except FiunError:
        return []
    return [(p.repo, p.revision) for p in meta.parents if p.revision]


def _header(hub, repo: str, rev: str) -> dict | None:
    """The model sidecar's header metadata at ``rev``; None when it cannot be read (purged, missing, garbled)."""
    try:
        return hub.safetensors_header(repo, FIM_FILE, rev)[1]  # the header alone (a range request on a remote hub)
    except Exception:
        return None


def _derived(hub, repo: str, prev, nxt) -> bool:
    """Whether the sidecars of ``nxt`` are ``prev``'s with only forgotten classes stripped: the same blobs (a forget
    that left the repo untouched), or a forget record in ``nxt``'s card that started from ``prev`` with the repo's
    own sidecars, confirmed by the header's ``derived_from`` where the header is still there to read."""
    if nxt.files.get(FIM_FILE) == prev.files.get(FIM_FILE) and \
            nxt.files.get(FIM_CLASSES_FILE) == prev.files.get(FIM_CLASSES_FILE):
        return True
    from .card import parse_card

    try:
        records = parse_card(hub.read_file(repo, CARD_FILE, nxt.id), where=f"{repo}@{nxt.id[:12]}").records
    except FiunError:
        return False
    if not any(r.from_revision == prev.id and r.own_sidecar for r in records):
        return False
    header = _header(hub, repo, nxt.id)
    return header.get("derived_from") == prev.id if header is not None else FIM_FILE in _stones(hub, repo, nxt.id)


def _stones(hub, repo: str, cid: str) -> dict:
    if not supports(hub, PURGE):  # a hub that cannot purge has no tombstones
        return {}
    try:
        return hub.tombstones(repo, cid)
    except FiunError:
        return {}


def kept_after_purge(hub, repo: str, info) -> str | None:
    """The revision whose sidecars stand for ``repo``@``info``'s after a takedown purged them there, or None.

    A takedown purges the weights *and* sidecars of an affected repo's pre-forget revisions; a child pinned to
    such a revision (a late derivative) then finds no sidecar at its pin. The forget that purged it published, as
    the next revision on the repo's line, the same sidecars with only the forgotten classes stripped (its card's
    record starts from the pinned revision, the header's ``derived_from`` names it; a repo the forget left
    untouched keeps the very same blobs): the class FIMs of the retained classes are the pinned revision's own,
    and the model FIM is their count-weighted mean, which is exactly the retain FIM that the pinned revision's
    sidecar gives for the forgotten classes (docs/method.md §8.1). Followed through several takedowns. Anything
    else (a successor whose sidecars were computed afresh, none, stale ones) is not the pinned revision's FIM:
    None, and the search climbs to the pinned revision's own parents."""
    if FIM_FILE not in info.files or FIM_FILE not in _stones(hub, repo, info.id):
        return None
    try:
        line = hub.history(repo)
    except FiunError:
        return None
    cur = info
    for _ in range(len(line)):
        nxt = next((c for c in line if c.parents and c.parents[0] == cur.id), None)
        if nxt is None or FIM_FILE not in nxt.files or not _derived(hub, repo, cur, nxt):
            return None
        if FIM_FILE not in _stones(hub, repo, nxt.id):
            return nxt.id if _usable_at(hub, repo, nxt) else None
        cur = nxt  # purged too, by a later takedown: its successor holds them
    return None


def sidecar_sources(hub, repo: str, info, parents: Sequence[tuple[str, str]] | None = None,
                    inferred: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> tuple[str, ...]:
    """The ancestor revisions whose sidecars stand in for ``repo``'s at the commit ``info`` (which has none of its
    own): for each pinned parent, that revision if its sidecars are usable, else recursively its own parents'.
    Empty when no ancestor has one. Only card front matter and sidecar headers are read.

    ``parents`` (``[(repo, revision)]``) stand in for the pinned parents of ``repo``'s card: the parent an
    ``audit --fix --adopt`` inferred from the weights of an undeclared derivative (docs/takedowns.md), which its
    card does not name. ``inferred`` (repo -> ``[(repo, revision)]``) does the same for ancestors met on the way
    up (an adopted model above a declared descendant of it). Elsewhere the search follows the cards."""
    out: list[str] = []
    seen: set[tuple[str, str]] = set()

    def climb(r: str, rev: str) -> None:
        if parents is not None and r == repo and rev == info.id:
            pinned = list(parents)
        elif inferred and r in inferred:
            pinned = list(inferred[r])
        else:
            pinned = _parents_at(hub, r, rev)
        for p, prev in pinned:
            if (p, prev) in seen:
                continue
            seen.add((p, prev))
            try:
                pinfo = hub.commit_info(p, prev)
            except FiunError:
                continue
            if _usable_at(hub, p, pinfo):
                out.append(f"{p}@{pinfo.id}")
                continue
            kept = kept_after_purge(hub, p, pinfo)
            if kept is not None:
                out.append(f"{p}@{kept}")
            else:
                climb(p, pinfo.id)

    climb(repo, info.id)
    return tuple(dict.fromkeys(out))


def _head_names(layers: Sequence[str], classifier: str) -> list[str]:
    return [n for n in layers if n.rsplit(".", 1)[0] == classifier]


def combine(sidecars: Sequence[Any], labels: Sequence[str], classifier: str, where: str = ""):
    """One :class:`~fiun_hub.fisher.Sidecars` for a repo with head ``labels`` from several sources' (module
    docstring). Raises :class:`SidecarError` when the sources disagree on estimator or layers, or share no class
    with ``labels``."""
    import torch

    from .dampening import align_rows
    from .fisher import Sidecars

    first = sidecars[0]
    for sc in sidecars[1:]:
        if sc.estimator != first.estimator:
            raise SidecarError(f"{where}: its ancestors' sidecars use different estimators ({first.estimator}, "
                               f"{sc.estimator}); run `fiun-hub fim {where} --data SPEC`")
        if list(sc.layers) != list(first.layers):
            raise SidecarError(f"{where}: its ancestors' sidecars cover different layers; "
                               f"run `fiun-hub fim {where} --data SPEC`")
    labels = [str(v) for v in labels]
    heads = _head_names(first.layers, classifier)
    class_fims: dict[str, dict[str, torch.Tensor]] = {}
    counts: dict[str, int] = {}
    for sc in sidecars:
        for c in labels:
            n_c = int(sc.counts.get(c, 0))
            if n_c <= 0 or c not in sc.class_fims:
                continue
            aligned = align_rows(sc.class_fims[c], sc.labels, labels, heads)
            if c in class_fims:
                for n, t in aligned.items():
                    if class_fims[c][n].shape != t.shape:
                        raise SidecarError(f"{where}: its ancestors' sidecars of {n} differ in shape")
                    class_fims[c][n] = torch.maximum(class_fims[c][n], t)
            else:
                class_fims[c] = aligned
            counts[c] = counts.get(c, 0) + n_c
    keep = [c for c in labels if counts.get(c, 0) > 0]
    if not keep:
        raise SidecarError(f"{where}: its ancestors' sidecars hold no class of its labels; "
                           f"run `fiun-hub fim {where} --data SPEC`")
    total = float(sum(counts[c] for c in keep))
    model_fim = {}
    for n in first.layers:
        acc = torch.zeros(class_fims[keep[0]][n].shape, dtype=torch.float64)
        for c in keep:
            acc += counts[c] * class_fims[c][n].double()
        model_fim[n] = (acc / total).float()
    class_fims = {c: {n: t.float() for n, t in f.items()} for c, f in class_fims.items()}
    meta = {"approximate": "1", "counts": json.dumps(counts)}
    return Sidecars(model_fim, class_fims, counts, labels, list(first.layers), first.estimator, first.batch_size,
                    meta)


def resolve_sidecars(hub, repo: str, info, labels: Sequence[str], classifier: str,
                     parents: Sequence[tuple[str, str]] | None = None,
                     inferred: Mapping[str, Sequence[tuple[str, str]]] | None = None):
    """``(sidecars, choice)`` for ``repo`` at the commit ``info``: its own checked sidecars when it has a sidecar
    (stale or malformed ones raise, as :func:`fiun_hub.sidecars.load_sidecars` does), else its nearest ancestors'
    combined (module docstring); :class:`SidecarError` naming the ``fim`` command when there are none.
    ``parents``, ``inferred``: inferred parents in place of the cards' (:func:`sidecar_sources`)."""
    from .sidecars import load_sidecars

    if FIM_FILE in info.files:
        return load_sidecars(hub, repo, info=info), SidecarChoice()
    sources = sidecar_sources(hub, repo, info, parents, inferred)
    if not sources:
        raise SidecarError(no_sidecar_message(repo, info.id))
    loaded = []
    for s in sources:
        r, rev = s.split("@", 1)
        loaded.append(load_sidecars(hub, r, rev))
    return combine(loaded, labels, classifier, where=repo), SidecarChoice(tuple(sources))


def forget_problems(hub, g) -> list:
    """What a forget's plan would find about each repo's sidecar, for ``lineage --check`` (the same functions
    :func:`resolve_sidecars` uses, header reads only): ``no-sidecar`` (blocking: neither its own nor an ancestor's;
    the message names the ``fim`` command) and ``approximate-sidecar`` (a note, not blocking: a forget would use
    its ancestors' sidecars). Stale sidecars and unreadable cards are reported by :func:`fiun_hub.lineage.check`."""
    from .lineage import Problem

    out = []
    for repo in sorted(g):
        a = g.nodes[repo]
        if a.get("missing") or a.get("card_error") or a.get("no_card") or a.get("sidecar") != "none":
            continue
        try:
            info = hub.commit_info(repo, a["head"])
        except FiunError as exc:
            out.append(Problem(repo, "card", f"{repo}: {exc}"))
            continue
        sources = sidecar_sources(hub, repo, info)
        if sources:
            out.append(Problem(repo, "approximate-sidecar", f"{repo}: no sidecar of its own; a forget uses "
                                                            f"{SidecarChoice(sources).describe()}", blocking=False))
        else:
            out.append(Problem(repo, "no-sidecar", no_sidecar_message(repo, info.id)))
    return out


__all__ = ["SidecarChoice", "OWN", "sidecar_sources", "kept_after_purge", "combine", "resolve_sidecars", "no_sidecar_message",
           "forget_problems"]
