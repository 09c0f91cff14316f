"""The ``fiun-hub`` command line: each command parses, calls one library function, prints text or JSON.

Exit codes: 0 success, 1 a failed check (audit, verify, lineage --check), 2 bad input.
"""
from __future__ import annotations

import json
import sys

import click

from fiun_hub.errors import BadInput
from fiun_hub.forget_record import forget_records
from fiun_hub.hub.base import ATOMIC_PUBLISH, PURGE, supports

from .common import Ctx, fail, handled, pass_ctx, short_sidecar
from .compliance import audit, takedown
from .serve import serve

MAX_FIM_THREADS = 1024  # fim --workers: torch threads (torch refuses more than a C int and starts them all)


def _json_after_command(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Ctx).as_json = True


class OneLineErrors(click.Group):
    """Usage errors (unknown option, bad choice, missing argument) print one line too, exit 2.

    Every command also takes ``--json`` after its name (``fiun-hub lineage --json``, as users type it), the same
    flag as the global one before it."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any("--json" in p.opts for p in cmd.params):
            cmd.params.append(click.Option(["--json"], is_flag=True, expose_value=False, is_eager=True,
                                           callback=_json_after_command,
                                           help="Print machine-readable JSON instead of text (as `fiun-hub --json`)."))
        super().add_command(cmd, name)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            fail("aborted", 1)
        except click.ClickException as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
            fail(" ".join(exc.format_message().split()) + hint, 2)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--hub", "hub", metavar="PATH|hf://HOST[:PORT][/NS]", envvar="FIUN_HUB",
              help="Hub folder (default: $FIUN_HUB, else ~/.cache/fiun-hub), or a hub reached over the Hugging Face "
                   "Hub HTTP API: hf://HOST[:PORT][/NAMESPACE] (e.g. a `fiun-hub serve`), `hf` for $HF_ENDPOINT; "
                   "token from $FIUN_HUB_TOKEN or $HF_TOKEN.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
@click.version_option(package_name="fiun-hub")
@click.pass_context
def main(ctx: click.Context, hub: str | None, as_json: bool) -> None:
    """fiun-hub: unlearning across whole families of derived models.

    Models and their Fisher sidecars live in versioned, Hugging Face-style repos whose cards record their
    parents; `forget` removes classes from an origin model and from every model derived from it in one
    parallel, data-free pass (FIUn), and `audit` proves afterwards that every model that had to forget did.
    """
    ctx.obj = Ctx(hub, as_json)


@main.command()
@pass_ctx
@handled
def init(c: Ctx) -> None:
    """Create an empty hub (a folder in the Hugging Face cache layout)."""
    hub = c.hub(create=True)
    c.emit({"hub": str(hub.root)}, f"hub ready at {hub.root}")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.argument("repo")
@click.option("--parent", "parents", multiple=True, metavar="REPO[@REV]",
              help="A model this one derives from; pinned to REV, or to the parent's current head. Repeatable.")
@click.option("--relation", type=click.Choice(["finetune", "merge", "adapter", "quantized"]),
              help="How it derives from its parents (default: finetune, or merge with several parents).")
@click.option("-m", "--message", help="Commit message.")
@pass_ctx
@handled
def push(c: Ctx, folder: str, repo: str, parents: tuple[str, ...], relation: str | None, message: str | None) -> None:
    """Commit a timm-format model FOLDER (config.json + model.safetensors) as a new revision of REPO.

    The card's front matter records base_model, base_model_relation and the parents pinned to exact revisions.
    Sidecars (fim.safetensors, fim-classes.safetensors) in the folder are committed with it.
    """
    from fiun_hub.repo import push_folder

    info = push_folder(c.hub(), folder, repo, parents, relation, message)
    for note in info.get("notes", []):
        click.echo(f"fiun-hub: note: {note}", err=True)
    c.emit(info, f"pushed {repo}@{info['revision']}")


def _describe_pre(d: dict) -> str:
    """A data config dict (``Preprocessing.to_dict``) in one line, as ``Preprocessing.describe`` writes it."""
    c, h, w = d["input_size"]
    return (f"{c}x{h}x{w}, mean {d['mean']}, std {d['std']}, {d['interpolation']}, "
            f"crop {d['crop_pct']} ({d['crop_mode']})")


@main.command()
@click.argument("spec", metavar="REPO[@REV]")
@pass_ctx
@handled
def show(c: Ctx, spec: str) -> None:
    """One revision: commit, files, parents, labels, sidecar state and forget records."""
    from fiun_hub.hub import split_repo_rev
    from fiun_hub.repo import show as show_rev

    repo, rev = split_repo_rev(spec)
    info = show_rev(c.hub(), repo, rev)

    def text() -> str:
        lines = [
            f"{info['repo']}@{info['revision']}" + ("  (head)" if info["is_head"] else ""),
            f"  tags:     {', '.join(info['tags']) or '-'}",
            f"  author:   {info['author']}   time: {info['time']}",
            f"  message:  {info['message']}",
            f"  relation: {info['relation'] or '-'}",
            "  parents:  " + (", ".join(f"{p['repo']}@{(p['revision'] or 'UNPINNED')[:12]}" for p in info["parents"])
                              or "- (root)"),
            f"  labels:   {', '.join(info['labels'])}",
            "  inputs:   " + (_describe_pre(info["preprocessing"]) if info.get("preprocessing") else
                              "unreadable data config"),
            f"  sidecar:  {info['sidecar']['state']}"
            + (f" ({info['sidecar'].get('estimator')}, layers {info['sidecar'].get('layers')})"
               if info["sidecar"]["state"] in ("ok", "stale") else ""),
        ]
        pre = info["sidecar"].get("preprocessing")
        if pre is not None:
            lines.append("            preprocessing: " + _describe_pre(pre)
                         + ("" if info["sidecar"].get("preprocessing_recorded") else " (not recorded: legacy)"))
        if info["sidecar"].get("fix"):
            lines.append(f"            stale: {info['sidecar'].get('stale_reason') or 'computed on other weights'}; "
                         f"run `{info['sidecar']['fix']}`")
        if info["card_error"]:
            lines.append(f"  card:     ERROR {info['card_error']}")
        for r in forget_records(info["unlearned"]):
            a = r.adopted
            classes = list(r.classes) if r.classes is not None else None
            lines.append(f"  forgot:   {r.request} classes={classes} at {r.at}"
                         + (f" (adopted: inferred parent {a.repo}@{a.revision[:12]})" if a else ""))
        lines.append("  files:")
        for p, f in sorted(info["files"].items()):
            lines.append(f"    {p:28s} {f['size'] if f['size'] is not None else '?':>10} {f['sha256'][:12]}")
        return "\n".join(lines)

    c.emit(info, text)


@main.command()
@click.argument("repo", metavar="REPO[@REV]")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="Show at most N revisions (N >= 1).")
@pass_ctx
@handled
def log(c: Ctx, repo: str, limit: int | None) -> None:
    """Revision history of REPO (from REV, default its head), newest first, with the forget requests each revision
    carries."""
    from fiun_hub.hub import split_repo_rev
    from fiun_hub.repo import log as repo_log

    name, rev = split_repo_rev(repo)
    entries = repo_log(c.hub(), name, rev, limit)
    c.emit(entries, lambda: "\n".join(
        f"{e['revision'][:12]}  {e['time'][:19]}  {e['author']:12s} {e['message']}"
        + (f"  [forgot: {', '.join(e['unlearned'])}]" if e["unlearned"] else "") for e in entries))


@main.command()
@click.argument("repo")
@click.argument("name")
@click.option("--revision", "-r", help="Revision to tag (default: head).")
@click.option("--force", is_flag=True, help="Move the tag if it exists.")
@pass_ctx
@handled
def tag(c: Ctx, repo: str, name: str, revision: str | None, force: bool) -> None:
    """Tag a revision of REPO as NAME (refs/tags/NAME)."""
    from fiun_hub.repo import tag as tag_revision

    cid = tag_revision(c.hub(), repo, name, revision, force=force)
    c.emit({"repo": repo, "tag": name, "revision": cid}, f"tagged {repo}@{cid[:12]} as {name}")


@main.command()
@click.argument("repo", required=False)
@click.option("--up", is_flag=True, help="Only REPO's ancestors.")
@click.option("--down", is_flag=True, help="Only REPO's descendants.")
@click.option("--format", "fmt", type=click.Choice(["tree", "json", "dot", "mermaid", "png"]), default=None,
              help="Output format (default: tree; json with --json).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (required for png).")
@click.option("--check", is_flag=True, help="List provenance problems (unknown/unpinned parents, cycles, "
                                            "pins to pre-forget revisions, unreadable cards) and what a forget's "
                                            "plan would refuse (stale sidecars, no sidecar here nor at any "
                                            "ancestor); exit 1 if any. Repos that would use an ancestor's "
                                            "sidecar are listed as notes.")
@click.option("--rebuild", is_flag=True, help="Read every card instead of the lineage index.")
@click.option("--infer", is_flag=True, help="Infer edges from the weights' fingerprints: pairs with identical "
                                            "tensors or far closer than independently trained models, and merges; "
                                            "with their evidence and whether the cards declare them. With --check, "
                                            "exit 1 if any is undeclared.")
@pass_ctx
@handled
def lineage(c: Ctx, repo: str | None, up: bool, down: bool, fmt: str | None, output: str | None, check: bool,
            rebuild: bool, infer: bool) -> None:
    """Show the inheritance DAG of the hub, or of REPO (its ancestors and descendants)."""
    from fiun_hub import lineage as L

    if output is not None and not output.strip():
        raise BadInput("-o/--output needs a file name")
    hub = c.hub()
    g, entries = L.resolve_entries(hub, rebuild=rebuild)
    if infer:
        from fiun_hub.fingerprint import Relation, infer as infer_edges

        # the entries g was built from, not a second read of the index (with --rebuild, infer reads it as before)
        edges = infer_edges(hub, g, None if rebuild else entries)
        if repo is not None:
            edges = [e for e in edges if repo in (e.parent, e.child)]
        undeclared = [e for e in edges if not e.declared]
        # sibling/ancestor edges count too (docs/lineage-inference.md): one is normally undeclared only when a
        # derivation edge it rests on is, and nothing reported is left out of the check
        c.emit({"edges": [e.to_dict() for e in edges], "undeclared": len(undeclared),
                "undeclared_derived": sum(e.relation == Relation.DERIVED for e in undeclared)},
               lambda: "\n".join(e.line() for e in edges) or "no suspected edges")
        if check and undeclared:
            sys.exit(1)
        return
    if check:
        from fiun_hub.fallback import forget_problems

        problems = L.check(hub, g) + forget_problems(hub, g)
        blocking = [p for p in problems if p.blocking]
        c.emit([p.to_dict() for p in problems],
               lambda: "\n".join(p.message if p.blocking else f"note: {p.message}" for p in problems)
               + ("" if blocking else ("\n" if problems else "") + f"lineage ok: {g.number_of_nodes()} repos"))
        if blocking:
            sys.exit(1)
        return
    g = L.subgraph(g, repo, up, down)
    fmt = fmt or ("json" if c.as_json else "tree")
    if fmt == "png":
        if not output:
            raise BadInput("--format png needs -o FILE")
        try:
            path = L.to_png(g, output, title=f"lineage of {repo}" if repo else "fiun-hub lineage")
        except OSError as exc:
            raise BadInput(f"cannot write {output}: {exc.strerror or exc}") from None
        c.emit({"png": str(path), "nodes": g.number_of_nodes(), "edges": g.number_of_edges()}, f"wrote {path}")
        return
    text = {"tree": L.to_tree, "dot": L.to_dot, "mermaid": L.to_mermaid,
            "json": lambda gr: json.dumps(L.to_json(gr), indent=2, default=str)}[fmt](g)
    if output:
        try:
            with open(output, "w") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            raise BadInput(f"cannot write {output}: {exc.strerror or exc}") from None
        if c.as_json:
            click.echo(json.dumps({"output": output, "format": fmt}))
        else:
            click.echo(f"wrote {output}")
    else:
        click.echo(text)


def _progress(c: Ctx, total: int | None, description: str):
    """A rich progress bar on stderr (silent with --json or when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=c.as_json or not console.is_terminal, transient=True), total, description


@main.command()
@click.argument("repo")
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="The model's training data: digits, fashion-mnist[:DIR], npz:PATH, folder:PATH (+ :train/:test); "
                   "fed with the model's own preprocessing, which the sidecar records.")
@click.option("--layers", default="head", show_default=True,
              help="Unlearnable layers: head (the classifier timm names), all, or comma-separated globs.")
@click.option("--estimator", type=click.Choice(["normalized", "per-sample", "batch"]), default="normalized",
              show_default=True,
              help="normalized: per-sample squared gradients over their squared norm (scale-free, the default); "
                   "per-sample: the exact empirical Fisher; batch: the paper's squared batch gradients.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Batch size of the batch estimator; the others run the data in chunks of this size (their "
                   "estimate does not depend on it, up to float rounding).")
@click.option("--device", help="torch device (default: cuda if available, else cpu).")
@click.option("--workers", type=click.IntRange(1, MAX_FIM_THREADS), default=None,
              help="CPU threads for the computation (and the CPUs the Ray task reserves); default: torch's "
                   "thread count here. The same count gives the same bytes on either executor.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: one Ray task (pip install 'fiun-hub[ray]'); the sidecars are "
                   "published here once it succeeded.")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="Join this Ray cluster (default: start a local Ray); its workers must see the hub's folder.")
@click.option("--prototypes", is_flag=True,
              help="Also commit the class prototypes (fim-prototypes.safetensors: per class, the mean of the last "
                   "block's pre-activation over the data) that `forget --scope features` needs; computed here.")
@pass_ctx
@handled
def fim(c: Ctx, repo: str, data_spec: str, layers: str, estimator: str, batch_size: int, device: str | None,
        workers: int | None, executor: str, ray_address: str | None, prototypes: bool) -> None:
    """Compute REPO's Fisher sidecars (model FIM and per-class FIMs) on its training data and commit them.

    The data is fed to REPO with its own preprocessing: the timm data config its config.json declares (input
    size, channels, mean, std, interpolation, crop), applied as timm's eval transform would. The sidecar header
    records that preprocessing; if the config later declares another, the sidecar is stale (`show`,
    `lineage --check`) and a forget refuses it until `fim` is run again. Models that never had `fim` run on them
    can still be forgotten with their nearest ancestors' sidecars (see `forget --help`).
    """
    from fiun_hub.sidecars import compute_and_commit

    repo = _head_only(c.hub(), repo, "fim computes and commits the sidecars of the head")
    bar, _, desc = _progress(c, None, f"Fisher of {repo}" + (" (Ray)" if executor == "ray" else ""))
    with bar:
        task = bar.add_task(desc, total=None)
        info = compute_and_commit(c.hub(), repo, data_spec, layers=layers, estimator=estimator,
                                  batch_size=batch_size, device=device,
                                  progress=lambda n: bar.update(task, completed=n),
                                  executor=executor, ray_address=ray_address, workers=workers)
    if prototypes:
        from fiun_hub.prototypes import commit_prototypes

        got = commit_prototypes(c.hub(), repo, data_spec)
        info = {**info, "revision": got["revision"], "prototypes": {"block": got["block"], "samples": got["samples"]}}
    c.emit(info, f"committed sidecars to {repo}@{info['revision']} ({info['estimator']}, {info['samples']} samples, "
                 f"layers {', '.join(info['layers'])}" + (", computed on Ray" if executor == "ray" else "")
                 + (f", prototypes of {info['prototypes']['block']}" if prototypes else "") + ")")


def _head_only(hub, spec: str, why: str) -> str:
    """``REPO`` or ``REPO@REV`` naming the head -> ``REPO``. Any other revision is refused: a purged one with its
    tombstone's one line (``... was purged by request ...``), another with ``why``."""
    from fiun_hub.constants import WEIGHTS_FILE
    from fiun_hub.hub import split_repo_rev

    repo, rev = split_repo_rev(spec)
    if rev is None:
        return repo
    cid = hub.resolve(repo, rev)
    if cid != hub.resolve(repo):
        hub.read_file(repo, WEIGHTS_FILE, cid)  # raises Purged on a purged revision
        raise BadInput(f"{repo}@{cid[:12]} is not the head of {repo}: {why}")
    return repo


def _plan_text(plan) -> str:
    lines = [f"request {plan.request_id}: forget "
             + (f"classes {', '.join(plan.classes)}" if plan.classes else f"samples of {plan.data_spec}")
             + f" at {', '.join(plan.origins)} (alpha={plan.alpha:g}, lambda={plan.lam:g})",
             f"affected: {len(plan.nodes)} repo(s), {plan.unaffected} other repo(s) untouched"]
    lines.append(f"  {'repo':32s} {'depth':>5s}  {'head':12s} {'sidecar':8s} {'head shape':12s} merges")
    for n in plan.nodes:
        shape = "x".join(map(str, n.head_shape)) if n.head_shape else "-"
        state = "done" if n.done else ("approx" if n.sidecar_used != "own" else n.sidecar)
        lines.append(f"  {n.repo:32s} {n.depth:>5d}  {n.head[:12]:12s} {state:8s} {shape:12s} "
                     f"{', '.join(n.sources)}")
        if n.sidecar_used != "own":
            lines.append(f"      ~ sidecar {short_sidecar(n.sidecar_used)}")
        for p in n.problems:
            lines.append(f"      ! {p}")
    return "\n".join(lines)


@main.command()
@click.option("--origin", "origins", multiple=True, required=True, metavar="REPO",
              help="A model whose own training data held what must go. Repeatable.")
@click.option("--classes", help="Class-wise forget: comma-separated label names (needs no data).")
@click.option("--data", "data_spec", metavar="SPEC", help="Sample-wise forget: the samples to forget.")
@click.option("--request-id", help="Id recorded in every card (default: derived from origins and forget set); "
                                   "re-running the same id is a no-op.")
@click.option("--alpha", type=float, default=None,
              help="Selection: a parameter is dampened where its MFIM exceeds alpha x its own (retain) FIM "
                   "(default 1; sample-wise: its FIM over the samples' labels, at most 20 head entries, "
                   "docs/method.md section 10).")
@click.option("--lambda", "lam", type=float, default=None,
              help="Dampening: a selected parameter keeps min(lambda x F / M, 1) of its distance to its "
                   "reference (default 0.01).")
@click.option("--record-spec", is_flag=True,
              help="Sample-wise: also write the --data spec into every card's record (by default a record names "
                   "the samples only by fingerprint: sha256, count, label counts; a path may name a person).")
@click.option("--scope", type=click.Choice(["head", "features"]), default="head", show_default=True,
              help="Class-wise: head (the rule of docs/method.md section 1) or features (also project the "
                   "forgotten classes' prototype directions out of the last block's features, so a linear probe "
                   "on them no longer finds the classes; needs `fim --prototypes` sidecars; timm ResNets whose "
                   "last block has a downsample; docs/method.md section 11).")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes for the per-repo work.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (or a process pool with --workers); ray: Ray tasks, several repos each "
                   "(pip install 'fiun-hub[ray]').")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="Join this Ray cluster (default: start a local Ray with --workers CPUs).")
@click.option("--purge", is_flag=True,
              help="Also purge the weights and sidecars of every pre-forget revision of the affected repos "
                   "(on a local hub: tombstones in their place, in the same publish; on a remote hub, after the commits, "
                   "through the endpoint's LFS purge where it has one). `takedown` does this by default.")
@pass_ctx
@handled
def forget(c: Ctx, origins, classes, data_spec, request_id, alpha, lam, record_spec, scope, dry_run, workers,
           executor, ray_address, purge) -> None:
    """Unlearn classes (or samples) at the ORIGINs and at every model derived from them, in one pass.

    Each affected repo gets a new revision: dampened weights, sidecars without the forgotten classes and a
    `fiun.unlearned` record. A repo without a sidecar of its own uses its nearest ancestors' at the revisions it
    is pinned to (for a merge, combined as the MFIM combines them); the plan (--dry-run), the record and the
    ledger say "approximate: from org/a@REV". Only a repo with neither its own sidecar nor any ancestor's is
    refused, naming the `fiun-hub fim` command that fixes it. Sample-wise --data is fed to each origin with that
    model's own preprocessing (its config.json's timm data config). On a local hub all new revisions land together or none does; on a remote hub
    (--hub hf://...) each repo is committed on its own and re-running the same forget finishes an interrupted one.
    """
    from fiun_hub.unlearn import plan_forget, run_forget

    hub = c.hub()
    plan = plan_forget(hub, list(origins), classes, data_spec, request_id, alpha, lam,  # None: the kind's default
                       scope=scope)
    plan.record_spec = record_spec
    if dry_run or plan.problems:
        c.emit(plan.to_dict(), lambda: _plan_text(plan))
        if plan.problems:
            fail(plan.problems[0] + (f" (and {len(plan.problems) - 1} more problem(s); see --dry-run)"
                                     if len(plan.problems) > 1 else ""))
        return
    if not plan.todo:
        c.emit({"request_id": plan.request_id, "noop": True},
               f"request {plan.request_id} is already applied to all {len(plan.nodes)} affected repo(s); nothing to do")
        return
    target = hub
    remote_purge = purge and not supports(hub, PURGE)
    if purge and not remote_purge:
        from fiun_hub.purge import PurgingHub
        from fiun_hub.unlearn import utc_now

        target = PurgingHub(hub, plan.request_id, utc_now())
    bar, _, _ = _progress(c, len(plan.todo), "unlearning")
    with bar:
        task = bar.add_task("unlearning", total=len(plan.todo))
        result = run_forget(target, plan, workers=workers, executor=executor, ray_address=ray_address,
                            progress=lambda repo: bar.update(task, advance=1, description=repo))
    purged = getattr(target, "last", None)
    if remote_purge:  # over HTTP: the endpoint's LFS purge (HfApi.permanently_delete_lfs_files), where it has one
        outcomes = {r: hub.purge_history(r, plan.request_id) for r in result.revisions}
        purged = {"remote": outcomes, "files": {}, "revisions": 0, "blobs": sum(o.get("deleted", 0)
                                                                               for o in outcomes.values()),
                  "bytes_removed": sum(o.get("bytes_removed", 0) for o in outcomes.values())}
    atomic = supports(hub, ATOMIC_PUBLISH)
    note = [] if atomic else [f"note: {hub.location} is a remote hub: each repo was committed on its own (no "
                              "cross-repo atomicity); an interrupted run is finished by re-running it"]
    if purged and "remote" in purged:
        note += [o["unsupported"] for o in purged["remote"].values() if "unsupported" in o]
        note.append(f"purged {purged['blobs']} LFS file(s) of pre-forget revisions on {hub.location}: "
                    f"{purged['bytes_removed']:,} bytes removed")
    elif purged:
        note.append(f"purged {sum(len(v) for v in purged['files'].values())} file(s) of {purged['revisions']} "
                    f"pre-forget revision(s): {purged['blobs']} blob(s), {purged['bytes_removed']:,} bytes removed")
    c.emit({"plan": plan.to_dict(), **result.to_dict(), "atomic": atomic, "purge": purged},
           lambda: _plan_text(plan) + "\n" + "\n".join(
        [f"published {len(result.revisions)} new revision(s) in {result.seconds['total']:.2f}s:"]
        + [f"  {r}: {v['from'][:12]} -> {v['to'][:12]}  ({result.stats[r]['changed']} of "
           f"{result.stats[r]['params']} unlearnable parameters dampened)" for r, v in result.revisions.items()]
        + note))


@main.command(name="eval")
@click.argument("spec", metavar="REPO[@REV]")
@click.option("--data", "data_spec", required=True, metavar="SPEC", help="Held-out data, e.g. digits:test (fed with REPO's own preprocessing).")
@click.option("--forget-classes", help="Comma-separated forgotten classes: report forget and retain accuracy.")
@pass_ctx
@handled
def eval_cmd(c: Ctx, spec: str, data_spec: str, forget_classes: str | None) -> None:
    """Accuracy of REPO on DATA; with --forget-classes, forget accuracy (on those classes) and retain accuracy.

    DATA is fed with REPO's own preprocessing (the timm data config its config.json declares: input size,
    channels, mean, std, interpolation, crop), as timm's eval transform would, never one normalisation for all.
    A `:test` split is held out from `:train`, or refused when the source has none.
    """
    from fiun_hub.evaluate import evaluate_repo
    from fiun_hub.hub import split_repo_rev

    repo, rev = split_repo_rev(spec)
    classes = [x.strip() for x in forget_classes.split(",") if x.strip()] if forget_classes else None
    res = evaluate_repo(c.hub(), repo, data_spec, classes, revision=rev)

    def text() -> str:
        def pct(v):
            return "n/a" if v is None else f"{v:.2f}%"
        out = [f"{repo}@{res['revision'][:12]} on {data_spec} ({res['samples']} samples)",
               f"  accuracy:        {pct(res['accuracy'])}"]
        if classes:
            out += [f"  forget accuracy: {pct(res['forget_acc'])}  (classes {', '.join(classes)})",
                    f"  retain accuracy: {pct(res['retain_acc'])}"]
        return "\n".join(out)

    c.emit(res, text)


@main.command()
@click.option("--repair-index", is_flag=True, help="Rewrite the lineage index from the cards first.")
@pass_ctx
@handled
def verify(c: Ctx, repair_index: bool) -> None:
    """Check the hub's integrity: blob hashes, refs, commits, snapshots, journal, lineage index. Exit 1 on problems."""
    from fiun_hub.verify import repair_index as repair
    from fiun_hub.verify import verify as check_hub

    hub = c.hub()
    if repair_index:
        repair(hub)
    problems = check_hub(hub)
    c.emit({"ok": not problems, "problems": problems},
           lambda: "\n".join(problems) if problems else f"hub ok: {len(hub.list_repos())} repos verified")
    if problems:
        sys.exit(1)


@main.command()
@click.option("--dir", "directory", default="fiun-hub-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where to build the demo hub and picture (an earlier demo there is replaced).")
@click.option("--scenario", type=click.Choice(["fl", "ddpl", "il", "tl"]), default="fl", show_default=True,
              help="Inheritance network: federated (fl), data-parallel (ddpl), incremental (il), transfer (tl).")
@click.option("--forget", "forget_class", default="3", show_default=True, help="The digit class to forget.")
@click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True,
              help="Seeds the scenario: the shards of digits, the initial weights and the training order.")
@click.option("--no-retrain", is_flag=True, help="Skip the retraining baseline.")
@pass_ctx
@handled
def demo(c: Ctx, directory: str, scenario: str, forget_class: str, seed: int, no_retrain: bool) -> None:
    """The main job in one command: build a real inheritance network of timm models on digits in a fresh
    hub, forget one class at its origin and at every derived model, and report held-out forget / retain
    accuracy before and after, the forget's time next to retraining's, and a lineage picture."""
    from rich.console import Console

    from fiun_hub.research.demo import format_report, run_demo

    console = Console(stderr=True)

    def say(msg: str) -> None:
        if not c.as_json:
            console.print(msg, markup=False, highlight=False)

    out = run_demo(directory, scenario=scenario, forget=forget_class, seed=seed, retrain=not no_retrain,
                   progress=say)
    c.emit(out, lambda: format_report(out))


main.add_command(takedown)
main.add_command(audit)
main.add_command(serve)

if __name__ == "__main__":
    main()
