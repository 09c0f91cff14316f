"""The resolver: cards of real pushed models -> networkx.DiGraph, the lineage index (one file, equal to a rebuild
from cards), validation (cycle, unknown parent, pin to an unknown revision, renamed parent, pre-forget pins),
queries (roots, ancestors, descendants, affected set, merge sources) and exports."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import networkx as nx
import pytest
from safetensors.torch import save as st_save

from fiun_hub import lineage as L
from fiun_hub.card import CardMeta, ParentRef, parse_card, render_card
from fiun_hub.errors import BadInput, LineageError, RepoNotFound, RevisionNotFound
from fiun_hub.hub.local import LocalHub, RepoChange
from fiun_hub.repo import push_folder

LABELS = ["cat", "dog", "bird"]


def _save(folder: Path, seed: int, labels=LABELS) -> Path:
    import timm
    import torch

    from fiun_hub.models import save_model_folder

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(labels), in_chans=1)
    return save_model_folder(model, folder, labels, input_size=(1, 16, 16))


@pytest.fixture(scope="module")
def family_src(tmp_path_factory):
    """A real hub:  base -> ft -> merged <- other;  merged -> deep (adapter, pinned explicitly).

    base gets a second revision after ft was pushed, so ft stays pinned to base's first revision.
    """
    root = tmp_path_factory.mktemp("family")
    hub = LocalHub.init(root / "hub")
    f = {name: _save(root / name, seed) for seed, name in enumerate(["base", "base2", "ft", "other", "merged", "deep"])}
    revs = {}
    revs["base@1"] = push_folder(hub, f["base"], "org/base")["revision"]
    revs["ft"] = push_folder(hub, f["ft"], "org/ft", parents=["org/base"])["revision"]
    revs["base@2"] = push_folder(hub, f["base2"], "org/base", message="retrained")["revision"]
    revs["other"] = push_folder(hub, f["other"], "org/other")["revision"]
    revs["merged"] = push_folder(hub, f["merged"], "org/merged", parents=["org/ft", "org/other"])["revision"]
    revs["deep"] = push_folder(hub, f["deep"], "org/deep", parents=[f"org/merged@{revs['merged'][:10]}"],
                               relation="adapter")["revision"]
    return {"root": hub.root, "revs": revs, "folders": f}


@pytest.fixture
def family(family_src, tmp_path):
    """A private copy of the family hub (tests may write to it)."""
    dst = tmp_path / "hub"
    shutil.copytree(family_src["root"], dst, symlinks=True)
    return LocalHub(dst), family_src["revs"]


def card_of(hub: LocalHub, repo: str, rev: str | None = None) -> CardMeta:
    return parse_card(hub.read_file(repo, "README.md", rev))


def publish_card(hub: LocalHub, repo: str, text: str) -> str:
    return hub.publish([RepoChange(repo, {"README.md": text.encode()})])[repo]


def card_text(parents=(), relation=None, labels=("x",), unlearned=()) -> str:
    return render_card(CardMeta(parents=[ParentRef(r, v) for r, v in parents], relation=relation,
                                labels=list(labels), unlearned=list(unlearned)))


# ---------------------------------------------------------------------------- cards written by push
def test_push_pins_parents_in_the_card(family):
    hub, revs = family
    ft = card_of(hub, "org/ft")
    assert ft.parents == [ParentRef("org/base", revs["base@1"])]  # the head when ft was pushed
    assert ft.relation == "finetune" and ft.labels == LABELS
    assert hub.head("org/base") == revs["base@2"] != revs["base@1"]

    merged = card_of(hub, "org/merged")
    assert merged.parents == [ParentRef("org/ft", revs["ft"]), ParentRef("org/other", revs["other"])]
    assert merged.relation == "merge" and merged.base_model == ["org/ft", "org/other"]

    deep = card_of(hub, "org/deep")
    assert deep.parents == [ParentRef("org/merged", revs["merged"])]  # a prefix is pinned as the full id
    assert deep.relation == "adapter"

    raw = hub.read_file("org/ft", "README.md").decode()
    assert "base_model: org/base\n" in raw and "base_model_relation: finetune\n" in raw
    assert card_of(hub, "org/base").parents == [] and card_of(hub, "org/base", revs["base@1"]).labels == LABELS


def test_push_pins_an_explicit_older_revision_and_a_tag(family, model_folder):
    hub, revs = family
    hub.tag("org/base", "v1", revs["base@1"])
    push_folder(hub, model_folder(), "org/from-old", parents=[f"org/base@{revs['base@1']}"])
    push_folder(hub, model_folder(), "org/from-tag", parents=["org/base@v1"])
    assert card_of(hub, "org/from-old").parents == [ParentRef("org/base", revs["base@1"])]
    assert card_of(hub, "org/from-tag").parents == [ParentRef("org/base", revs["base@1"])]


def test_push_keeps_the_body_of_a_card_in_the_folder(hub, model_folder):
    folder = model_folder()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n\n# My model\n\nTrained on digits.\n")
    push_folder(hub, folder, "org/m")
    text = hub.read_file("org/m", "README.md").decode()
    assert "Trained on digits." in text
    assert parse_card(text).labels == LABELS


# ---------------------------------------------------------------------------- the graph
def test_graph_nodes_and_edges(family):
    hub, revs = family
    g = L.resolve(hub)
    assert isinstance(g, nx.DiGraph)
    assert set(g) == {"org/base", "org/ft", "org/other", "org/merged", "org/deep"}
    for repo in g:
        a = g.nodes[repo]
        assert a["head"] == hub.head(repo)
        assert a["labels"] == LABELS
        assert a["sidecar"] == "none" and a["unlearned"] == [] and a["card_error"] is None
        assert a["missing"] is False
    assert g.nodes["org/ft"]["relation"] == "finetune" and g.nodes["org/base"]["relation"] is None
    assert set(g.edges) == {("org/base", "org/ft"), ("org/ft", "org/merged"), ("org/other", "org/merged"),
                            ("org/merged", "org/deep")}
    assert g.edges["org/base", "org/ft"] == {"relation": "finetune", "revision": revs["base@1"]}
    assert g.edges["org/other", "org/merged"] == {"relation": "merge", "revision": revs["other"]}
    assert g.edges["org/merged", "org/deep"] == {"relation": "adapter", "revision": revs["merged"]}
    assert nx.is_directed_acyclic_graph(g)
    assert L.check(hub, g) == []


def test_queries(family):
    hub, _ = family
    g = L.resolve(hub)
    assert L.roots(g) == ["org/base", "org/other"]
    assert L.ancestors(g, "org/deep") == {"org/merged", "org/ft", "org/base", "org/other"}
    assert L.ancestors(g, "org/base") == set()
    assert L.descendants(g, "org/base") == {"org/ft", "org/merged", "org/deep"}
    assert L.descendants(g, "org/deep") == set()
    assert L.affected(g, ["org/base"]) == {"org/base": 0, "org/ft": 1, "org/merged": 2, "org/deep": 3}
    assert L.affected(g, ["org/base", "org/other"]) == {
        "org/base": 0, "org/other": 0, "org/ft": 1, "org/merged": 1, "org/deep": 2}
    assert L.affected(g, ["org/deep"]) == {"org/deep": 0}
    assert L.merge_sources(g, ["org/base", "org/other"], "org/deep") == ["org/base", "org/other"]
    assert L.merge_sources(g, ["org/base", "org/other"], "org/ft") == ["org/base"]
    assert L.merge_sources(g, ["org/ft"], "org/ft") == ["org/ft"]
    assert set(L.subgraph(g, "org/ft", up=True)) == {"org/ft", "org/base"}
    assert set(L.subgraph(g, "org/ft", down=True)) == {"org/ft", "org/merged", "org/deep"}
    assert set(L.subgraph(g, "org/ft")) == {"org/ft", "org/base", "org/merged", "org/deep"}
    assert L.subgraph(g, None) is g
    for fn in (lambda: L.ancestors(g, "org/nope"), lambda: L.descendants(g, "org/nope"),
               lambda: L.affected(g, ["org/base", "org/nope"]), lambda: L.subgraph(g, "org/nope")):
        with pytest.raises(RepoNotFound):
            fn()


def test_affected_on_a_pure_graph_with_diamonds():
    entries = {}
    for name, parents in {"o/a": [], "o/b": ["o/a"], "o/c": ["o/a"], "o/d": ["o/b", "o/c"], "o/e": ["o/d"],
                          "x/y": []}.items():
        entries[name] = {"head": "0" * 40, "parents": [{"repo": p, "revision": "0" * 40} for p in parents],
                         "relation": "merge" if len(parents) > 1 else ("finetune" if parents else None),
                         "labels": [], "sidecar": "none", "unlearned": [], "card_error": None}
    g = L.graph_from_entries(entries)
    assert L.affected(g, ["o/b"]) == {"o/b": 0, "o/d": 1, "o/e": 2}
    assert L.affected(g, ["o/a"]) == {"o/a": 0, "o/b": 1, "o/c": 1, "o/d": 2, "o/e": 3}
    assert L.roots(g) == ["o/a", "x/y"]
    assert L.merge_sources(g, ["o/b", "o/c"], "o/e") == ["o/b", "o/c"]


# ---------------------------------------------------------------------------- the index
def _same_graph(g1: nx.DiGraph, g2: nx.DiGraph) -> bool:
    return dict(g1.nodes(data=True)) == dict(g2.nodes(data=True)) and \
        {(u, v): d for u, v, d in g1.edges(data=True)} == {(u, v): d for u, v, d in g2.edges(data=True)}


def test_index_is_kept_current_and_equals_a_rebuild(family, model_folder):
    hub, _ = family
    index_file = hub.root / ".fiun" / "lineage.json"
    assert index_file.is_file()
    assert L.read_index_file(hub) == L.rebuild_index(hub)
    assert _same_graph(L.resolve(hub), L.resolve(hub, rebuild=True))
    new = push_folder(hub, model_folder(), "org/late", parents=["org/deep"])["revision"]
    index = L.read_index_file(hub)
    assert index["org/late"]["head"] == new
    assert index["org/late"]["parents"] == [{"repo": "org/deep", "revision": hub.head("org/deep")}]
    assert _same_graph(L.resolve(hub), L.resolve(hub, rebuild=True))


def test_resolve_reads_the_index_not_the_cards(family, monkeypatch):
    hub, _ = family
    expected = L.resolve(hub, rebuild=True)

    def boom(*a, **k):
        raise AssertionError("resolve read a card")

    monkeypatch.setattr(LocalHub, "read_file", boom)
    monkeypatch.setattr(LocalHub, "commit_info", boom)
    monkeypatch.setattr(L, "parse_card", boom)
    assert _same_graph(L.resolve(hub), expected)
    with pytest.raises(AssertionError, match="read a card"):
        L.resolve(hub, rebuild=True)


@pytest.mark.parametrize("damage", ["delete", "garbage", "wrong-format"])
def test_a_missing_or_damaged_index_is_rebuilt_from_cards(family, model_folder, damage):
    hub, _ = family
    expected = L.resolve(hub, rebuild=True)
    index_file = hub.root / ".fiun" / "lineage.json"
    if damage == "delete":
        index_file.unlink()
    elif damage == "garbage":
        index_file.write_bytes(b"{not json")
    else:
        index_file.write_text(json.dumps({"format": "other/9", "repos": {}}))
    assert L.read_index_file(hub) is None
    assert _same_graph(L.resolve(hub), expected)
    push_folder(hub, model_folder(), "org/after", parents=["org/base"])
    index = L.read_index_file(hub)
    assert set(index) == set(expected) | {"org/after"}  # the next publish rewrote the whole index
    assert index == L.rebuild_index(hub)


def test_sidecar_state_is_a_node_attribute(family):
    import torch

    hub, _ = family
    weights = hub.list_files("org/ft")["model.safetensors"]
    fim = {"fc.weight": torch.ones(3, 8)}
    ok = st_save(fim, metadata={"weights_sha256": weights})
    stale = st_save(fim, metadata={"weights_sha256": "0" * 64})
    by_commit = st_save(fim, metadata={"model_commit": hub.head("org/ft")})
    g = None
    for data, want in ((ok, "ok"), (stale, "stale"), (b"not safetensors", "invalid"), (by_commit, "ok")):
        hub.publish([RepoChange("org/ft", {"fim.safetensors": data})])
        g = L.resolve(hub)
        assert g.nodes["org/ft"]["sidecar"] == want
        assert _same_graph(g, L.resolve(hub, rebuild=True))
    hub.publish([RepoChange("org/ft", {"model.safetensors": b"other weights"})])
    assert L.resolve(hub).nodes["org/ft"]["sidecar"] == "stale"  # the weights moved on, the FIM did not
    assert [p.kind for p in L.check(hub)] == ["stale-sidecar"]


# ---------------------------------------------------------------------------- validation
def test_unknown_parent_is_reported(family):
    hub, revs = family
    publish_card(hub, "org/orphan", card_text(parents=[("org/ghost", "1" * 40)]))
    g = L.resolve(hub)
    assert g.nodes["org/ghost"]["missing"] is True
    assert "org/ghost" not in L.roots(g) and "org/orphan" not in L.roots(g)
    problems = L.check(hub, g)
    assert [(p.repo, p.kind) for p in problems] == [("org/ghost", "missing-parent")]
    assert "org/orphan" in problems[0].message
    with pytest.raises(RepoNotFound):
        L.descendants(g, "org/ghost")


def test_renamed_parent_is_reported(family):
    hub, _ = family
    # org/base moves to org/base-v2 (same files, new id) and the old repo is removed; ft's card still names it.
    files = {p: hub.read_file("org/base", p) for p in hub.list_files("org/base")}
    hub.publish([RepoChange("org/base-v2", files, "renamed from org/base")])
    shutil.rmtree(hub.root / "models--org--base")
    g = L.resolve(hub, rebuild=True)
    assert g.nodes["org/base"]["missing"] is True and "org/base-v2" in g
    assert ("org/base", "missing-parent") in [(p.repo, p.kind) for p in L.check(hub, g)]


def test_pin_to_an_unknown_revision_is_reported(family):
    hub, _ = family
    publish_card(hub, "org/bad-pin", card_text(parents=[("org/base", "2" * 40)]))
    problems = L.check(hub)
    assert [(p.repo, p.kind) for p in problems] == [("org/bad-pin", "unknown-revision")]
    # A commit that exists, but in another repo, is no revision of org/base either.
    publish_card(hub, "org/bad-pin", card_text(parents=[("org/base", hub.head("org/other"))]))
    assert [(p.repo, p.kind) for p in L.check(hub)] == [("org/bad-pin", "unknown-revision")]


def test_cycle_is_reported_and_does_not_break_the_queries(family):
    hub, _ = family
    x1 = publish_card(hub, "org/x", card_text())
    y1 = publish_card(hub, "org/y", card_text(parents=[("org/x", x1)]))
    publish_card(hub, "org/x", card_text(parents=[("org/y", y1)]))  # written by hand: x <- y <- x
    g = L.resolve(hub)
    assert not nx.is_directed_acyclic_graph(g)
    kinds = [(p.kind, p.message) for p in L.check(hub, g)]
    assert [k for k, _ in kinds] == ["cycle"]
    assert "org/x" in kinds[0][1] and "org/y" in kinds[0][1]
    assert L.affected(g, ["org/x"]) == {"org/x": 0, "org/y": 1}
    assert "org/x" in L.to_tree(g) and "org/y" in L.to_tree(g)
    assert _same_graph(g, L.resolve(hub, rebuild=True))


def test_unpinned_and_malformed_cards_are_reported(family):
    hub, _ = family
    publish_card(hub, "org/loose", "---\nbase_model: org/base\nbase_model_relation: finetune\n---\n")
    publish_card(hub, "org/broken", "---\nbase_model: [unclosed\n---\n")
    g = L.resolve(hub)
    assert g.edges["org/base", "org/loose"]["revision"] == ""
    assert g.nodes["org/broken"]["card_error"] and "malformed" in g.nodes["org/broken"]["card_error"]
    assert sorted((p.repo, p.kind) for p in L.check(hub, g)) == [("org/broken", "card"), ("org/loose", "unpinned")]
    assert _same_graph(g, L.resolve(hub, rebuild=True))


def test_a_repo_without_a_card_is_a_root_that_does_not_block_a_forget(family):
    """A repo made by `create_repo` (only .gitattributes) claims no lineage: `lineage --check` lists it, but a
    forget elsewhere goes on; a malformed card, which may hide parents, still blocks it."""
    from fiun_hub.errors import UnlearnError
    from fiun_hub.unlearn import plan_forget

    hub, _ = family
    hub.publish([RepoChange("org/empty", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                            parent_commit="")])
    g = L.resolve(hub)
    assert g.nodes["org/empty"]["no_card"] and not g.nodes["org/empty"]["card_error"]
    assert g.in_degree("org/empty") == 0 and g.out_degree("org/empty") == 0
    assert [(p.repo, p.kind) for p in L.check(hub, g) if p.repo == "org/empty"] == [("org/empty", "no-card")]
    assert _same_graph(g, L.resolve(hub, rebuild=True))
    plan = plan_forget(hub, ["org/base"], "cat")  # plans (its sidecar problems are another matter)
    assert "org/empty" not in {n.repo for n in plan.nodes}
    publish_card(hub, "org/broken", "---\nbase_model: [unclosed\n---\n")
    with pytest.raises(UnlearnError, match="org/broken"):
        plan_forget(hub, ["org/base"], "cat")


def test_child_pinned_before_a_forget_is_reported(family):
    hub, revs = family
    # org/other forgets a class; org/merged still derives from the pre-forget revision.
    rec = {"request": "TKD-1", "classes": ["dog"], "origins": [f"org/other@{revs['other']}"],
           "from_revision": revs["other"], "alpha": 1.0, "lambda": 1.0, "at": "2026-11-22T10:00:00Z"}
    publish_card(hub, "org/other", card_text(labels=("cat", "bird"), unlearned=[rec]))
    g = L.resolve(hub)
    assert g.nodes["org/other"]["unlearned"] == [rec]
    problems = L.check(hub, g)
    assert [(p.repo, p.kind) for p in problems] == [("org/merged", "pre-forget-pin")]
    assert "TKD-1" in problems[0].message


def test_a_card_with_a_yaml_timestamp_keeps_the_hub_usable(family, hub_fingerprint):
    """A hand-written card whose forget record has an unquoted timestamp (YAML -> datetime).

    Either publish refuses it as bad input with nothing written, or it lands and the hub stays usable.
    BUG (fiun_hub/lineage.py write_index_file + fiun_hub/hub/local.py publish): json.dumps of the index raises
    TypeError *after* the refs moved and before the journal is removed, so publish crashes, and every later
    LocalHub(root) replays the journal, hits the same TypeError, and the hub cannot be opened any more.
    """
    hub, revs = family
    before = hub_fingerprint(hub.root)
    text = (f"---\nfiun:\n  labels: [cat]\n  unlearned:\n  - {{request: R1, from_revision: '{revs['other']}', "
            "at: 2026-11-22T10:00:00Z}\n---\n")
    try:
        publish_card(hub, "org/other", text)
    except BadInput:
        assert hub_fingerprint(hub.root) == before
        return
    reopened = LocalHub(hub.root)
    assert not (hub.root / ".fiun" / "journal.json").exists()
    assert _same_graph(L.resolve(reopened), L.resolve(reopened, rebuild=True))


# ---------------------------------------------------------------------------- push refuses bad lineage
def test_push_refuses_a_parent_that_would_create_a_cycle(family, hub_fingerprint):
    hub, revs = family
    folder = hub.root.parent / "cyc"
    _save(folder, seed=99)
    before = hub_fingerprint(hub.root)
    with pytest.raises(LineageError, match="cycle"):
        push_folder(hub, folder, "org/base", parents=["org/deep"])
    with pytest.raises(LineageError, match="cycle"):
        push_folder(hub, folder, "org/ft", parents=["org/ft"])
    with pytest.raises(LineageError, match="cycle"):
        push_folder(hub, folder, "org/ft", parents=["org/other", "org/merged"])
    with pytest.raises(RepoNotFound):
        push_folder(hub, folder, "org/new", parents=["org/ghost"])
    with pytest.raises(RevisionNotFound):
        push_folder(hub, folder, "org/new", parents=["org/base@" + "3" * 40])
    with pytest.raises(BadInput):
        push_folder(hub, folder, "org/new", parents=["org/base", "org/base"])
    with pytest.raises(BadInput):
        push_folder(hub, folder, "org/new", relation="merge")  # a relation without a parent
    assert hub_fingerprint(hub.root) == before


# ---------------------------------------------------------------------------- exports
def test_json_export_is_node_link_data(family):
    hub, revs = family
    g = L.resolve(hub)
    data = json.loads(json.dumps(L.to_json(g)))
    assert data["directed"] is True
    nodes = {n["id"]: n for n in data["nodes"]}
    assert set(nodes) == set(g)
    assert nodes["org/ft"]["head"] == hub.head("org/ft") and nodes["org/ft"]["labels"] == LABELS
    links = {(e["source"], e["target"]): e for e in data["links"]}
    assert set(links) == set(g.edges)
    assert links["org/base", "org/ft"]["revision"] == revs["base@1"]
    assert links["org/merged", "org/deep"]["relation"] == "adapter"
    back = nx.node_link_graph(data, edges="links")
    assert _same_graph(back, g)


def test_text_exports(family):
    hub, _ = family
    g = L.resolve(hub)
    tree = L.to_tree(g)
    assert tree.splitlines()[0].startswith("org/base [@")
    assert all(repo in tree for repo in g)
    assert "org/merged (see above)" in tree  # reached twice, expanded once
    dot = L.to_dot(g)
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert '"org/base" -> "org/ft"' in dot and dot.count("->") == g.number_of_edges()
    mermaid = L.to_mermaid(g)
    assert mermaid.startswith("graph TD") and mermaid.count("-->") == g.number_of_edges()
    assert "|adapter|" in mermaid


def test_png_export_draws_the_dag(family, tmp_path):
    import matplotlib.image as mpimg

    hub, _ = family
    out = L.to_png(L.resolve(hub), tmp_path / "dag.png")
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas


def test_png_export_leaves_the_global_matplotlib_state_alone(family, tmp_path, monkeypatch):
    """The picture is drawn on its own Figure/Agg canvas: the caller's backend is not switched and no pyplot
    figure is left registered (a notebook or GUI caller keeps its own)."""
    import matplotlib

    hub, _ = family
    monkeypatch.setitem(matplotlib.rcParams, "backend", "pdf")
    pyplot = __import__("sys").modules.get("matplotlib.pyplot")
    before = list(pyplot.get_fignums()) if pyplot else []
    L.to_png(L.resolve(hub), tmp_path / "dag.png")
    assert matplotlib.rcParams["backend"] == "pdf"
    pyplot = __import__("sys").modules.get("matplotlib.pyplot")
    assert (list(pyplot.get_fignums()) if pyplot else []) == before


def test_a_publish_without_an_index_hook_removes_the_index_rather_than_leave_it_stale(tmp_path):
    """The hub keeps the lineage index through the hook fiun_hub registers (hub.local.register_indexer). A publish
    in a process with no hook removes .fiun/lineage.json (readers rebuild it from the cards) instead of leaving an
    index that misses it, and the next publish with the hook writes it whole again."""
    import fiun_hub.hub.local as HL
    from fiun_hub import lineage

    hub = LocalHub.init(tmp_path / "hub")
    hub.publish([RepoChange("o/a", {"x.bin": b"1"}, "a", parent_commit="")])
    index = tmp_path / "hub" / ".fiun" / "lineage.json"
    assert set(lineage.read_index_file(hub)) == {"o/a"}
    saved = HL._INDEXER
    HL.register_indexer(None)
    try:
        hub.publish([RepoChange("o/b", {"x.bin": b"2"}, "b", parent_commit="")])
        assert not index.exists()
    finally:
        HL.register_indexer(saved)
    assert set(lineage.resolve(hub)) == {"o/a", "o/b"}
    hub.publish([RepoChange("o/c", {"x.bin": b"3"}, "c", parent_commit="")])
    assert set(lineage.read_index_file(hub)) == {"o/a", "o/b", "o/c"}
