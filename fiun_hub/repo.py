"""Repo-level operations behind the CLI: push a model folder with its lineage, show a revision, log, tag."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from .card import MAX_CARD_BYTES, CardMeta, ParentRef, fim_entry, parse_card, parse_card_full, render_card
from .constants import CARD_FILE, CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE, RELATIONS, WEIGHTS_FILE
from .errors import BadInput, ConflictError
from .hub.ids import check_user_writable, split_repo_rev, validate_repo_id, validate_tag_name
from .hub.base import LOCK, PURGE, Hub, RepoChange, purged_error, supports
from .lineage import resolve, sidecar_state, validate_new_parents
from .preprocessing import of_config, recorded, stale_preprocessing

SIDECARS = (FIM_FILE, FIM_CLASSES_FILE)


def pin_parents(hub: Hub, specs: Sequence[str]) -> list[ParentRef]:
    """``org/x`` -> x's current head; ``org/x@REV`` -> that revision's commit id (must exist)."""
    out: list[ParentRef] = []
    for spec in specs:
        repo, rev = split_repo_rev(spec)
        if repo in [p.repo for p in out]:
            raise BadInput(f"--parent {repo} given twice")
        cid = hub.resolve(repo, rev)
        _refuse_purged(hub, repo, cid)
        out.append(ParentRef(repo, cid))
    return out


def _refuse_purged(hub: Hub, repo: str, cid: str) -> None:
    """A revision whose weights a takedown purged cannot be read, shown or derived from: one line naming the
    request (it still resolves as lineage for the pins that already name it)."""
    stones = hub.tombstones(repo, cid) if supports(hub, PURGE) else {}
    if stones:
        path = WEIGHTS_FILE if WEIGHTS_FILE in stones else sorted(stones)[0]
        raise purged_error(repo, cid, path, stones[path])

def forgets_superseding(hub: Hub, repo: str, revision: str) -> set[str]:
    """The forget requests recorded at ``repo``'s head whose forget started at ``revision`` or after it: a child
    pinned to ``revision`` would keep what they removed. (Empty when the head's card cannot be read.)"""
    try:
        records = read_meta(hub, repo).records
    except BadInput:
        return set()
    out = set()
    for rec in records:
        start = rec.from_revision
        if start:
            try:
                if revision in {c.id for c in hub.history(repo, start)}:
                    out.add(rec.request)
            except BadInput:
                continue
    return out


def _repin_under_lock(hub: Hub, specs: Sequence[str], pins: list[ParentRef], render: Callable[[], None],
                      notes: list[str]) -> Callable[[Hub], None]:
    """A publish precondition (run under the writers' lock) that checks again the parent pins resolved before the
    lock. A parent named without a revision is pinned to its head *now* (``pins`` is updated, ``render()`` rewrites
    the card, a note says so); an explicit revision that a forget superseded meanwhile refuses the push: the child
    would escape that forget. (Forgets that had superseded an explicit pin before the push started are reported by
    ``fiun-hub lineage --check`` and ``audit``, as before.)"""
    seen = [forgets_superseding(hub, p.repo, p.revision) for p in pins]

    def check(locked: Hub) -> None:
        changed = False
        for i, (spec, p) in enumerate(zip(specs, pins)):
            landed = sorted(forgets_superseding(locked, p.repo, p.revision) - seen[i])
            if split_repo_rev(spec)[1] is not None:  # pinned by the user: never moved behind their back
                if landed:
                    raise ConflictError(
                        f"--parent {spec}: {p.repo}@{p.revision[:12]} was superseded by forget request {landed[0]}, "
                        "which landed while this push waited; a child pinned to it would keep what that forget "
                        f"removed. Nothing was pushed: derive it from {p.repo}@{locked.head(p.repo)[:12]} "
                        "(or omit @REV)")
                continue
            head = locked.head(p.repo)
            if head != p.revision:
                why = f"forget request {landed[0]} landed" if landed else "it moved"
                notes.append(f"--parent {p.repo}: pinned to its new head {head[:12]} ({why} while this push waited; "
                             f"its head was {p.revision[:12]})")
                pins[i] = ParentRef(p.repo, head)
                changed = True
        if changed:
            render()

    return check


def push_folder(
    hub: Hub,
    folder: str | Path,
    repo: str,
    parents: Sequence[str] = (),
    relation: str | None = None,
    message: str | None = None,
    author: str | None = None,
) -> dict[str, Any]:
    """Commit a timm-format model folder as a new revision of ``repo``, writing its lineage into the card.

    Sidecars (``fim.safetensors``, ``fim-classes.safetensors``) in the folder are committed too; a previous
    revision's sidecars are dropped, since they describe other weights. Parent pins are checked again under the
    writers' lock (:func:`_repin_under_lock`). Returns the new revision's summary, with ``notes`` (what the user
    should hear: a parent re-pinned to a head that moved while the push waited).
    """
    from .models import check_folder, folder_file  # torch and timm: only a push builds a model (log/show stay light)

    check_user_writable(validate_repo_id(repo))
    folder = Path(folder)
    config = check_folder(folder)
    if relation is not None and relation not in RELATIONS:
        raise BadInput(f"--relation {relation!r} is not one of {', '.join(RELATIONS)}")
    if relation is not None and not parents:
        raise BadInput("--relation needs at least one --parent")
    pins = pin_parents(hub, parents)
    validate_new_parents(resolve(hub), repo, [p.repo for p in pins])
    head = hub.head(repo) if hub.repo_exists(repo) else ""

    body, extra = None, {}
    card_path = folder_file(folder, CARD_FILE)
    if card_path is not None:
        # Malformed YAML is refused, not silently dropped; the body and other front-matter keys are kept.
        if card_path.stat().st_size > MAX_CARD_BYTES:
            raise BadInput(f"{card_path}: card is {card_path.stat().st_size} bytes, more than the {MAX_CARD_BYTES} "
                           "allowed")
        given, body = parse_card_full(card_path.read_bytes(), where=str(card_path))
        extra = given.extra
    elif head:
        try:  # keep the previous revision's other front-matter keys (license, ...) and body
            given, body = parse_card_full(hub.read_file(repo, CARD_FILE, head))
            extra = given.extra
        except BadInput:
            pass
    files: dict[str, bytes | Path] = {"config.json": folder / "config.json", WEIGHTS_FILE: folder / WEIGHTS_FILE}
    meta = CardMeta(parents=pins, relation=relation or (("merge" if len(pins) > 1 else "finetune") if pins else None),
                    labels=config.labels, extra=extra)
    present = [s for s in SIDECARS if folder_file(folder, s) is not None]
    if present:
        if len(present) != 2:
            raise BadInput(f"{folder} has {present[0]} but not its partner; push both sidecars or neither")
        from .fisher import read_sidecars

        sc = read_sidecars((folder / FIM_FILE).read_bytes(), (folder / FIM_CLASSES_FILE).read_bytes(),
                           where=str(folder))
        if sc.labels != config.labels:
            raise BadInput(f"{folder}: sidecar labels {sc.labels} differ from the model's {config.labels}")
        meta.fim = fim_entry(sc.layers, sc.estimator)
        files.update({s: folder / s for s in SIDECARS})
    delete = tuple(s for s in SIDECARS if s not in present and head and s in hub.list_files(repo, head))

    def render() -> None:
        meta.parents = list(pins)
        files[CARD_FILE] = render_card(meta, body, repo).encode()

    render()
    parent_names = ", ".join(p.repo for p in pins)
    msg = message or (f"Push {repo}" + (f" ({meta.relation} of {parent_names})" if pins else ""))
    notes: list[str] = []
    # The pins were resolved without the lock: check them again under it (a forget of a parent may land meanwhile;
    # the change's card is re-rendered in place before anything is written). A remote hub has no lock to do it under.
    check = _repin_under_lock(hub, parents, pins, render, notes) if pins and supports(hub, LOCK) else None
    cid = hub.publish([RepoChange(repo, files, msg, parent_commit=head, delete=delete, author=author)],
                      precondition=check)[repo]
    return {**show(hub, repo, cid), "notes": notes}


def tag(hub, repo: str, name: str, revision: str | None = None, force: bool = False) -> str:
    """Tag ``repo@revision`` as ``name`` (the rules serve's create_tag applies too: not ``main``, not the ledger)."""
    check_user_writable(validate_repo_id(repo))
    validate_tag_name(name)
    return hub.tag(repo, name, revision, force=force)


def read_meta(hub: Hub, repo: str, revision: str | None = None) -> CardMeta:
    """The card's lineage facts at a revision (a missing or malformed card raises)."""
    cid = hub.resolve(repo, revision)
    return parse_card(hub.read_file(repo, CARD_FILE, cid), where=f"{repo}@{cid[:12]}")


def sidecar_summary(hub: Hub, repo: str, files: dict[str, str], cid: str) -> dict[str, Any]:
    """The sidecar's state at ``cid`` and what its header records, including the preprocessing it was computed with
    (``preprocessing``: the recorded data config, ``preprocessing_recorded``: False for a sidecar written before
    fiun-hub recorded it, read as the legacy mean = std = 0.5 at the model's input size) and, when stale, why."""
    state = sidecar_state(hub, repo, files, cid)
    out: dict[str, Any] = {"state": state}
    if state in ("ok", "stale"):
        _, meta = hub.safetensors_header(repo, FIM_FILE, cid)
        out.update({k: meta.get(k) for k in ("estimator", "batch_size", "model_commit", "data_spec", "dataset")})
        for k in ("layers", "counts"):
            try:
                out[k] = json.loads(meta.get(k, "null"))
            except ValueError:
                out[k] = None
        try:
            model = of_config(json.loads(hub.read_file(repo, CONFIG_FILE, cid)), f"{repo}:{CONFIG_FILE}")
            out["preprocessing"] = recorded(meta, model, f"{repo}:{FIM_FILE}").to_dict()
            out["preprocessing_recorded"] = "preprocessing" in meta
            why = stale_preprocessing(meta, model, f"{repo}:{FIM_FILE}")
        except (BadInput, ValueError):  # sidecar_state said ok/stale, so the config and record read; be safe
            out["preprocessing"], out["preprocessing_recorded"], why = None, "preprocessing" in meta, None
        if state == "stale":
            out["stale_reason"] = why or "computed on other weights"
    if state == "stale":
        out["fix"] = f"fiun-hub fim {repo} --data SPEC"
    return out


def model_preprocessing(hub: Hub, repo: str, cid: str) -> dict[str, Any] | None:
    """The data config the model at ``cid`` declares (``config.json``, resolved as timm resolves it), or None when
    its config is missing or malformed (``show`` still shows the rest)."""
    try:
        return of_config(json.loads(hub.read_file(repo, CONFIG_FILE, cid)), f"{repo}:{CONFIG_FILE}").to_dict()
    except (BadInput, ValueError):
        return None


def show(hub: Hub, repo: str, revision: str | None = None) -> dict[str, Any]:
    """Everything about one revision: commit, files, lineage, labels, sidecar state, forget records, tags."""
    info = hub.commit_info(repo, revision)
    _refuse_purged(hub, repo, info.id)
    refs = hub.refs(repo)
    try:
        meta = parse_card(hub.read_file(repo, CARD_FILE, info.id), where=f"{repo}@{info.id[:12]}")
        card: dict[str, Any] = {
            "parents": [p.to_dict() for p in meta.parents],
            "relation": meta.relation,
            "labels": meta.labels,
            "unlearned": meta.unlearned,
            "card_error": None,
        }
    except BadInput as exc:
        card = {"parents": [], "relation": None, "labels": [], "unlearned": [], "card_error": str(exc)}
    return {
        "repo": repo,
        "revision": info.id,
        "is_head": refs["branches"].get("main") == info.id,
        "tags": sorted(t for t, c in refs["tags"].items() if c == info.id),
        "author": info.author,
        "time": info.time,
        "message": info.message,
        "parent_commits": info.parents,
        "files": {p: {"sha256": s, "size": info.sizes.get(p)} for p, s in info.files.items()},
        **card,
        "preprocessing": model_preprocessing(hub, repo, info.id),
        "sidecar": sidecar_summary(hub, repo, info.files, info.id),
    }


def log(hub: Hub, repo: str, revision: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Revision history, newest first, each with the forget requests its card records."""
    out = []
    for info in hub.history(repo, revision, limit=limit):
        try:
            meta = parse_card(hub.read_file(repo, CARD_FILE, info.id))
            forgets = [r.request for r in meta.records]
        except BadInput:
            forgets = []
        out.append({"revision": info.id, "author": info.author, "time": info.time, "message": info.message,
                    "unlearned": forgets})
    return out
