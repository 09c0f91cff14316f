"""Build real inheritance networks of timm models into a hub: the paper's four frameworks (FL, DDPL, IL, TL).

Every model is a real timm model trained on a real data shard, pushed as a timm Hub folder with its lineage
in the card (``base_model`` + revision-pinned ``fiun.parents``), its label names (the classes it saw, in
head-row order) and its Fisher sidecars, computed on its **own** training shard with the default estimator
and committed in the **same** commit as the weights (``weights_sha256`` binds them, so the sidecar state is
``ok``).

A :class:`Scenario` records everything needed to redo any model (the baselines in :mod:`fiun_hub.research.baselines`
retrain the affected subgraph with exactly the recipe that built it): repos in topological order, their
parents and relation, label set, the shard (indices into the dataset's train split), the recipe (init rule,
epochs, learning rate, batch size, seeds, trainable part) and the origins (the models whose data holds the
classes to forget).

Topologies (defaults; ``depth`` = longest parent->child path, ``width`` = fan-out):

- ``fl`` (federated learning, depth 4, width 3): ``fl-global-0`` (the server's model, trained from scratch on
  the server shard; the origin) -> ``fl-client-{k}-r1`` (each client fine-tunes the global model on its own
  fixed shard) -> ``fl-global-1`` (``merge``: FedAvg of the clients, then trained further on the server shard)
  -> ``fl-client-{k}-r2`` -> ``fl-global-2``. An odd depth ends with a client round.
- ``ddpl`` (distributed data-parallel learning, depth 2, width 3): ``ddpl-worker-{k}`` (roots, trained from
  one shared initialisation on their own shards; all are origins, a multi-root forget) -> ``ddpl-aggregate-1``
  (``merge``: average, then trained on its own shard) -> ``ddpl-worker-{k}-r1`` (workers continue from it).
  A larger depth alternates further aggregate / worker rounds.
- ``il`` (incremental learning, depth 3): a chain ``il-stage-0`` -> ``il-stage-1`` -> ... in which each stage
  continues from its parent on a new shard holding more labels: the head grows (existing rows copied by label
  name, new rows freshly initialised) and every other stage puts its new labels first, so row order differs
  from the parent's. The root (origin) sees 60% of the labels.
- ``tl`` (transfer learning, depth 1, width 3): a star ``tl-base`` (all labels, trained in full; the origin)
  -> ``tl-transfer-{k}``, each keeping the base's backbone frozen (bit-identical) and training only a new head
  of its own size on its own label subset (a sliding window of 60% of the labels; every other child reverses
  the order; a child may lack the forget class).

Shards are disjoint, drawn from a seeded class-interleaved order of the train split (so every shard is
roughly class-balanced). Training is :func:`fiun_hub.research.training.train_classifier` (Adam, cosine decay); fresh
weights come from the global RNG under ``torch.random.fork_rng`` seeded per node, so a build is deterministic
given ``seed`` (the caller's RNG state is left untouched). A build runs with one torch thread by default
(``num_threads``; restored afterwards): these models are tiny and extra threads only contend for the cores.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
import torch
import torch.nn as nn

from ..constants import FIM_CLASSES_FILE, FIM_FILE, WEIGHTS_FILE
from ..data import LabeledData, load_data, parse_spec
from ..errors import BadInput
from ..fisher import DEFAULT_ESTIMATOR
from ..preprocessing import SIDECAR_KEY

SCENARIOS = ("fl", "ddpl", "il", "tl")
INITS = ("scratch", "parents-average", "parent", "parent-frozen-backbone")

#: defaults, tuned for digits at 16x16 with test_resnet on 2 CPU cores (each build < 60 s, ~90%+ per model)
DEFAULT_EPOCHS = 10  # epochs of a model trained from scratch (or a frozen-backbone head)
DEFAULT_LR = 3e-3  # Adam learning rate from scratch
CONTINUE_LR = 1e-3  # Adam learning rate of a model continuing from its parent(s)
HEAD_LR = 1e-2  # Adam learning rate of a new head on a frozen backbone
BATCH_SIZE = 32
DEFAULT_POOL = 1260  # at most this many train samples are dealt into shards (digits:train has 1257)
DEFAULT_FORGET = "3"  # suggested forget class when the dataset has it

ProgressFn = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- records
@dataclass
class Recipe:
    """How one model was made from its parents (or from nothing), so that it can be redone exactly.

    ``init``: ``scratch`` (fresh weights seeded by ``init_seed``), ``parents-average`` (FedAvg of the
    parents, equal weights), ``parent`` (the parent's weights; head rows copied by label name, rows for new
    labels fresh from ``init_seed``), ``parent-frozen-backbone`` (the parent's backbone, a fresh head from
    ``init_seed``, only the head trained: ``trainable == "head"``). Then ``epochs`` of
    :func:`~fiun_hub.research.training.train_classifier` at ``lr`` with ``batch_size`` and shuffling seed ``seed``.
    """

    init: str
    epochs: int
    lr: float
    batch_size: int = BATCH_SIZE
    seed: int = 0
    init_seed: int = 0
    trainable: str = "all"  # "all" | "head"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise BadInput(f"unknown init rule {self.init!r}; use one of {list(INITS)}")
        if self.trainable not in ("all", "head"):
            raise BadInput(f"trainable must be 'all' or 'head', got {self.trainable!r}")


@dataclass
class ScenarioNode:
    """One model of a scenario."""

    repo: str
    role: str  # global | client | aggregate | worker | stage | base | transfer
    parents: list[str]
    relation: str | None  # None for a root, else "finetune" | "merge"
    labels: list[str]  # head rows, in order: the classes the model was trained on
    shard: list[int]  # indices into the train split of the samples it was trained on
    recipe: Recipe
    revision: str = ""  # the commit holding the built weights + sidecars ("" before the build)
    metrics: dict[str, Any] = field(default_factory=dict)  # test_acc, train_seconds, samples, ...


@dataclass
class Scenario:
    """A built (or planned) inheritance network; ``nodes`` are in topological order."""

    name: str
    dataset: str  # data spec without split, e.g. "digits"
    arch: str
    input_size: tuple[int, int, int]
    nodes: dict[str, ScenarioNode]
    origins: list[str]  # models whose training data holds the classes to forget
    forget_classes: list[str]  # a suggested forget request (held by every origin's shard)
    seed: int = 0
    org: str = "demo"
    build_seconds: float = 0.0
    _train: LabeledData | None = field(default=None, repr=False, compare=False)
    _test: LabeledData | None = field(default=None, repr=False, compare=False)

    # -------------------------------------------------------------------- topology
    @property
    def train_spec(self) -> str:
        return f"{self.dataset}:train"

    @property
    def test_spec(self) -> str:
        return f"{self.dataset}:test"

    @property
    def repos(self) -> list[str]:
        """Repos in topological order (parents before children)."""
        return list(self.nodes)

    @property
    def origin(self) -> str:
        """The (first) origin: the model whose data holds the classes to forget (the root, for fl/il/tl)."""
        return self.origins[0]

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(p, r) for r, n in self.nodes.items() for p in n.parents]

    def node(self, repo: str) -> ScenarioNode:
        try:
            return self.nodes[repo]
        except KeyError:
            raise BadInput(f"{repo} is not a model of scenario {self.name}") from None

    def parents(self, repo: str) -> list[str]:
        return list(self.node(repo).parents)

    def children(self, repo: str) -> list[str]:
        return [r for r, n in self.nodes.items() if repo in n.parents]

    def roots(self) -> list[str]:
        return [r for r, n in self.nodes.items() if not n.parents]

    @property
    def depth(self) -> int:
        """Longest parent -> child path, in edges."""
        level: dict[str, int] = {}
        for r, n in self.nodes.items():
            level[r] = 1 + max((level[p] for p in n.parents), default=-1)
        return max(level.values(), default=0)

    def affected(self, origins: Iterable[str] | None = None) -> list[str]:
        """Origins and all their descendants, in topological order."""
        origins = list(origins) if origins is not None else list(self.origins)
        for o in origins:
            self.node(o)
        g = nx.DiGraph((p, r) for r, n in self.nodes.items() for p in n.parents)
        g.add_nodes_from(self.nodes)
        seen = {r for layer in nx.bfs_layers(g, origins) for r in layer}
        return [r for r in self.nodes if r in seen]

    # -------------------------------------------------------------------- data
    @property
    def preprocessing(self):
        """What every model of the scenario is trained on and saved with: fiun-hub's training preprocessing
        (mean = std = 0.5, bilinear, no crop) at the scenario's input size."""
        from ..preprocessing import training_config

        return training_config(self.input_size)

    def load_train(self) -> LabeledData:
        if self._train is None:
            self._train = load_data(self.train_spec, preprocessing=self.preprocessing)
        return self._train

    def load_test(self) -> LabeledData:
        if self._test is None:
            self._test = load_data(self.test_spec, preprocessing=self.preprocessing)
        return self._test

    def train_data(self, repo: str, exclude: Iterable[str] = ()) -> LabeledData:
        """The shard ``repo`` was trained on, targets in its head-row order; ``exclude``: drop samples of these
        classes (the retained data of a forget request)."""
        node = self.node(repo)
        data = self.load_train().subset(node.shard)
        drop = [data.labels.index(c) for c in set(exclude) if c in data.labels]
        if drop:
            keep = torch.nonzero(~torch.isin(data.y, torch.tensor(drop, dtype=torch.long))).flatten()
            data = data.subset(keep)
        return data.to_label_space(node.labels)

    def forget_data(self, repo: str, classes: Iterable[str]) -> LabeledData:
        """The samples of ``classes`` in ``repo``'s shard, targets in its head-row order (classes it has no
        row for are dropped)."""
        node = self.node(repo)
        data = self.load_train().subset(node.shard)
        present = [c for c in dict.fromkeys(classes) if c in data.labels and c in node.labels]
        if not present:
            return LabeledData(data.x[:0], data.y[:0], list(node.labels), data.spec, data.preprocessing)
        return data.select_labels(present).to_label_space(node.labels)

    # -------------------------------------------------------------------- evaluation
    def evaluate(self, hub, forget_classes: Sequence[str], test_data: LabeledData | None = None,
                 revision: str = "head", repos: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Held-out forget / retain accuracy (percent; None where the model knows no such class) per repo.

        ``revision``: ``"head"`` (the hub's current heads, e.g. after a forget) or ``"built"`` (the revisions
        this scenario built)."""
        return evaluate_scenario(self, hub, forget_classes, test_data, revision=revision, repos=repos)

    # -------------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "dataset": self.dataset, "train_spec": self.train_spec, "test_spec": self.test_spec,
            "arch": self.arch, "input_size": list(self.input_size),
            "origins": list(self.origins), "forget_classes": list(self.forget_classes), "seed": self.seed,
            "org": self.org, "build_seconds": self.build_seconds,
            "nodes": [{**asdict(n), "recipe": asdict(n.recipe)} for n in self.nodes.values()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Scenario":
        nodes = {}
        for raw in d["nodes"]:
            raw = dict(raw)
            raw["recipe"] = Recipe(**raw["recipe"])
            nodes[raw["repo"]] = ScenarioNode(**raw)
        return cls(name=d["name"], dataset=d["dataset"], arch=d["arch"], input_size=tuple(d["input_size"]),
                   nodes=nodes, origins=list(d["origins"]), forget_classes=list(d["forget_classes"]),
                   seed=int(d.get("seed", 0)), org=d.get("org", "demo"),
                   build_seconds=float(d.get("build_seconds", 0.0)))


# ----------------------------------------------------------------------------------------------- models
@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op torch threads (None: leave as is), restoring the previous count afterwards.

    These models are tiny: on a small, shared CPU box one thread is as fast as two when idle and up to 10x
    faster when other processes compete for the cores, so builders and baselines default to 1."""
    if n is None:
        yield
        return
    if int(n) < 1:
        raise BadInput(f"num_threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def head_params(model: nn.Module) -> list[str]:
    """Parameter names of the model's classifier (``pretrained_cfg['classifier']``), e.g. fc.weight, fc.bias."""
    from ..fisher import resolve_layers

    return resolve_layers(model, "head")


def new_model(arch: str, num_classes: int, in_chans: int, init_seed: int) -> nn.Module:
    """A fresh timm model whose initial weights depend only on ``init_seed`` (the global RNG is restored)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        try:
            return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        except Exception as exc:  # noqa: BLE001 - timm raises RuntimeError / TypeError / ValueError
            raise BadInput(f"cannot build timm model {arch!r}: {exc}") from None


def inherit(model: nn.Module, parent_state: Mapping[str, torch.Tensor], parent_labels: Sequence[str],
            labels: Sequence[str], *, copy_head: bool = True) -> nn.Module:
    """Load a parent's weights into ``model`` (same backbone, a head with ``labels``): everything but the
    head is copied; head rows are copied by label name when ``copy_head`` (rows of labels the parent lacks
    keep ``model``'s fresh values), else the whole head stays fresh."""
    heads = set(head_params(model))
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for k, v in own.items():
        if k in heads:
            t = v.detach().clone()
            if copy_head:
                src = parent_state[k]
                for row, lab in enumerate(labels):
                    if lab in parent_labels:
                        t[row] = src[list(parent_labels).index(lab)]
            new[k] = t
        else:
            if k not in parent_state or tuple(parent_state[k].shape) != tuple(v.shape):
                raise BadInput(f"parent weights do not fit the child's backbone at {k}")
            new[k] = parent_state[k].detach().clone()
    model.load_state_dict(new, strict=True)
    return model


def realize_node(
    scenario: Scenario,
    repo: str,
    parent_states: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    exclude: Iterable[str] = (),
    device=None,
) -> tuple[nn.Module, dict[str, Any]]:
    """(Re)make one model from its parents' weights with its recipe, training on its shard minus the samples
    of ``exclude`` classes. Returns the trained model and training info. Used both to build a scenario and to
    retrain it (:func:`fiun_hub.research.baselines.retrain`)."""
    from .training import average_state_dicts, train_classifier

    node = scenario.node(repo)
    r = node.recipe
    model = new_model(scenario.arch, len(node.labels), scenario.input_size[0], r.init_seed)
    missing = [p for p in node.parents if p not in parent_states]
    if missing:
        raise BadInput(f"{repo}: weights of parent(s) {missing} are needed")
    if r.init == "scratch":
        if node.parents:
            raise BadInput(f"{repo}: a model with parents cannot be trained from scratch in a scenario")
    elif r.init == "parents-average":
        for p in node.parents:
            if scenario.node(p).labels != node.labels:
                raise BadInput(f"{repo}: cannot average {p}, whose labels differ")
        model.load_state_dict(average_state_dicts([parent_states[p] for p in node.parents]), strict=True)
    else:
        if len(node.parents) != 1:
            raise BadInput(f"{repo}: init {r.init!r} needs exactly one parent")
        p = node.parents[0]
        inherit(model, parent_states[p], scenario.node(p).labels, node.labels,
                copy_head=r.init == "parent")
    data = scenario.train_data(repo, exclude)
    if len(data) < 2:
        raise BadInput(f"{repo}: only {len(data)} training sample(s) left")
    trainable = head_params(model) if r.trainable == "head" else None
    info = {"samples": len(data)}
    if r.epochs > 0:
        info.update(train_classifier(model, data, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, seed=r.seed,
                                     trainable=trainable, device=device))
    model.eval()
    return model, info


# ----------------------------------------------------------------------------------------------- planning
class _Dealer:
    """Hands out disjoint samples of the train split in a seeded, class-interleaved order."""

    def __init__(self, y: torch.Tensor, labels: Sequence[str], seed: int, pool: int):
        rng = np.random.default_rng(seed)
        y_np = y.numpy()
        per = [list(rng.permutation(np.flatnonzero(y_np == c))) for c in range(len(labels))]
        order: list[int] = []
        for j in range(max((len(p) for p in per), default=0)):
            for p in per:
                if j < len(p):
                    order.append(int(p[j]))
        self.order = order[:pool]
        self.y = y_np
        self.labels = list(labels)
        self.used: set[int] = set()

    def take(self, n: int, labels: Sequence[str] | None = None) -> list[int]:
        want = None if labels is None else {self.labels.index(lab) for lab in labels}
        out = []
        for i in self.order:
            if len(out) >= n:
                break
            if i in self.used or (want is not None and int(self.y[i]) not in want):
                continue
            out.append(i)
            self.used.add(i)
        if len(out) < 2:
            raise BadInput(f"not enough training samples left for a shard of {n} (got {len(out)}); "
                           "lower shard_size, depth or width")
        return sorted(out)


@dataclass
class _Settings:
    epochs: int
    cont_epochs: int
    lr: float
    cont_lr: float
    head_lr: float
    batch_size: int
    seed: int


def _split_dataset(dataset: str) -> str:
    base = dataset.strip()
    for s in (":train", ":test"):
        if base.endswith(s):
            base = base[: -len(s)]
    parse_spec(base)  # validates
    return base


def plan_scenario(
    name: str,
    *,
    dataset: str = "digits",
    arch: str = "test_resnet",
    depth: int | None = None,
    width: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    shard_size: int | None = None,
    pool_size: int | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    org: str = "demo",
    prefix: str | None = None,
    input_size: Sequence[int] = (1, 16, 16),
    forget_classes: Sequence[str] | None = None,
) -> Scenario:
    """The topology, shards and recipes of a scenario, nothing trained (see the module docstring).

    ``depth``: longest inheritance path (fl default 4, ddpl 2, il 3, tl must be 1); ``width``: clients per
    round (fl, default 3), workers (ddpl, default 3) or transfer children (tl, default 3); il is a chain.
    ``epochs``: epochs from scratch / of a new head (default 10); models continuing from parents train
    ``max(1, epochs // 3)`` epochs. ``lr``: learning rate from scratch (continuing: lr / 3; head: lr * 10 / 3).
    ``shard_size``: samples per shard (default: the pool split evenly); ``pool_size``: train samples dealt
    at most (default 1260). ``forget_classes``: the suggested request (default ``["3"]`` if it is a label of
    every origin, else the origin's first label).
    """
    from ..hub.ids import validate_repo_id

    if name not in SCENARIOS:
        raise BadInput(f"unknown scenario {name!r}; use one of {', '.join(SCENARIOS)}")
    dataset = _split_dataset(dataset)
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 3 or min(input_size) < 1:
        raise BadInput(f"input_size must be (C, H, W), got {input_size}")
    epochs = DEFAULT_EPOCHS if epochs is None else int(epochs)
    if epochs < 1:
        raise BadInput(f"epochs must be >= 1, got {epochs}")
    lr = DEFAULT_LR if lr is None else float(lr)
    if not lr > 0:
        raise BadInput(f"lr must be positive, got {lr}")
    st = _Settings(epochs, max(1, epochs // 3), lr, lr * CONTINUE_LR / DEFAULT_LR, lr * HEAD_LR / DEFAULT_LR,
                   int(batch_size), int(seed))
    prefix = prefix or name
    validate_repo_id(f"{org}/{prefix}-x")
    train = load_data(f"{dataset}:train", in_chans=input_size[0], input_size=input_size[1:])  # labels only
    pool = min(len(train), DEFAULT_POOL if pool_size is None else int(pool_size))
    dealer = _Dealer(train.y, train.labels, seed, pool)
    labels = list(train.labels)
    if len(labels) < 2:
        raise BadInput(f"{dataset} has fewer than two labels")
    builder = {"fl": _plan_fl, "ddpl": _plan_ddpl, "il": _plan_il, "tl": _plan_tl}[name]
    nodes, origins = builder(f"{org}/{prefix}", labels, dealer, pool, depth, width, shard_size, st)
    if forget_classes is None:
        common = set(labels)
        for o in origins:
            common &= set(nodes[o].labels)
        forget_classes = [DEFAULT_FORGET] if DEFAULT_FORGET in common else [nodes[origins[0]].labels[0]]
    scn = Scenario(name=name, dataset=dataset, arch=arch, input_size=input_size, nodes=nodes,
                   origins=origins, forget_classes=[str(c) for c in forget_classes], seed=int(seed), org=org)
    scn._train = train
    for o in origins:
        unknown = [c for c in scn.forget_classes if c not in nodes[o].labels]
        if unknown:
            raise BadInput(f"forget class(es) {unknown} are not labels of origin {o}")
    return scn


def _size(shard_size: int | None, pool: int, shares: int) -> int:
    if shard_size is not None:
        if shard_size < 2:
            raise BadInput(f"shard_size must be >= 2, got {shard_size}")
        return int(shard_size)
    return max(2, pool // shares)


def _check(v: int | None, default: int, what: str, lo: int = 1) -> int:
    v = default if v is None else int(v)
    if v < lo:
        raise BadInput(f"{what} must be >= {lo}, got {v}")
    return v


def _plan_fl(base, labels, dealer, pool, depth, width, shard_size, st):
    depth = _check(depth, 4, "fl depth")
    width = _check(width, 3, "fl width")
    n = _size(shard_size, pool, width + 1)
    server = dealer.take(n)
    clients = [dealer.take(n) for _ in range(width)]
    nodes: dict[str, ScenarioNode] = {}
    s = st.seed * 1000
    root = f"{base}-global-0"
    nodes[root] = ScenarioNode(root, "global", [], None, list(labels), server,
                               Recipe("scratch", st.epochs, st.lr, st.batch_size, s + 1, s + 1))
    prev, level, rnd = root, 0, 0
    while level < depth:
        rnd += 1
        members = []
        for k, shard in enumerate(clients, start=1):
            repo = f"{base}-client-{k}-r{rnd}"
            nodes[repo] = ScenarioNode(repo, "client", [prev], "finetune", list(labels), shard,
                                       Recipe("parent", st.cont_epochs, st.cont_lr, st.batch_size,
                                              s + 100 * rnd + k, s + 100 * rnd + k))
            members.append(repo)
        level += 1
        if level >= depth:
            break
        repo = f"{base}-global-{rnd}"
        nodes[repo] = ScenarioNode(repo, "aggregate", members, "merge", list(labels), server,
                                   Recipe("parents-average", st.cont_epochs, st.cont_lr, st.batch_size,
                                          s + 100 * rnd, s + 100 * rnd))
        prev = repo
        level += 1
    return nodes, [root]


def _plan_ddpl(base, labels, dealer, pool, depth, width, shard_size, st):
    depth = _check(depth, 2, "ddpl depth")
    width = _check(width, 3, "ddpl width", lo=2)
    n = _size(shard_size, pool, width + 1)
    shards = [dealer.take(n) for _ in range(width)]
    agg_shard = dealer.take(n)
    nodes: dict[str, ScenarioNode] = {}
    s = st.seed * 1000
    workers = []
    for k, shard in enumerate(shards, start=1):
        repo = f"{base}-worker-{k}"
        # one shared initialisation (init_seed), as data-parallel workers start from the same weights
        nodes[repo] = ScenarioNode(repo, "worker", [], None, list(labels), shard,
                                   Recipe("scratch", st.epochs, st.lr, st.batch_size, s + k, s))
        workers.append(repo)
    origins = list(workers)
    level, rnd = 0, 0
    while level < depth:
        rnd += 1
        agg = f"{base}-aggregate-{rnd}"
        nodes[agg] = ScenarioNode(agg, "aggregate", workers, "merge", list(labels), agg_shard,
                                  Recipe("parents-average", st.cont_epochs, st.cont_lr, st.batch_size,
                                         s + 100 * rnd, s + 100 * rnd))
        level += 1
        if level >= depth:
            break
        workers = []
        for k, shard in enumerate(shards, start=1):
            repo = f"{base}-worker-{k}-r{rnd}"
            nodes[repo] = ScenarioNode(repo, "worker", [agg], "finetune", list(labels), shard,
                                       Recipe("parent", st.cont_epochs, st.cont_lr, st.batch_size,
                                              s + 100 * rnd + k, s + 100 * rnd + k))
            workers.append(repo)
        level += 1
    return nodes, origins


def _plan_il(base, labels, dealer, pool, depth, width, shard_size, st):
    depth = _check(depth, 3, "il depth")
    if width not in (None, 1):
        raise BadInput("il is a chain: width must be 1")
    k = len(labels)
    n0 = math.ceil(0.6 * k)
    if k - n0 < depth:
        n0 = max(2, k - depth)
    if k - n0 < depth:
        raise BadInput(f"il depth {depth} needs at least {depth + 2} labels; the data has {k}")
    chunks = [list(c) for c in np.array_split(np.array(labels[n0:], dtype=object), depth)]
    n = _size(shard_size, pool, depth + 1)
    nodes: dict[str, ScenarioNode] = {}
    s = st.seed * 1000
    cur = list(labels[:n0])
    root = f"{base}-stage-0"
    nodes[root] = ScenarioNode(root, "stage", [], None, list(cur), dealer.take(n, cur),
                               Recipe("scratch", st.epochs, st.lr, st.batch_size, s + 1, s + 1))
    prev = root
    for i, new in enumerate(chunks, start=1):
        new = [str(v) for v in new]
        cur = (new + cur) if i % 2 == 1 else (cur + new)  # row order differs from the parent's every other stage
        repo = f"{base}-stage-{i}"
        nodes[repo] = ScenarioNode(repo, "stage", [prev], "finetune", list(cur), dealer.take(n, cur),
                                   Recipe("parent", st.cont_epochs, st.cont_lr, st.batch_size, s + 100 * i,
                                          s + 100 * i))
        prev = repo
    return nodes, [root]


def _plan_tl(base, labels, dealer, pool, depth, width, shard_size, st):
    if depth not in (None, 1):
        raise BadInput("tl is a star of depth 1: depth must be 1")
    width = _check(width, 3, "tl width")
    n = _size(shard_size, pool, width + 2)
    nodes: dict[str, ScenarioNode] = {}
    s = st.seed * 1000
    root = f"{base}-base"
    nodes[root] = ScenarioNode(root, "base", [], None, list(labels), dealer.take(2 * n),
                               Recipe("scratch", st.epochs, st.lr, st.batch_size, s + 1, s + 1))
    k = len(labels)
    m = max(2, math.ceil(0.6 * k))
    step = (k - m) / max(1, width - 1)
    for i in range(width):
        start = int(round(i * step)) % max(1, k - m + 1)
        sub = list(labels[start:start + m])
        if i % 2 == 1:
            sub = sub[::-1]
        repo = f"{base}-transfer-{i + 1}"
        nodes[repo] = ScenarioNode(repo, "transfer", [root], "finetune", sub, dealer.take(n, sub),
                                   Recipe("parent-frozen-backbone", st.epochs, st.head_lr, st.batch_size,
                                          s + 10 + i, s + 10 + i, trainable="head"))
    return nodes, [root]


# ----------------------------------------------------------------------------------------------- building
def sidecar_files(model: nn.Module, labels: Sequence[str], data: LabeledData, weights_sha256: str, *,
                  data_spec: str, layers: str = "head", estimator: str = DEFAULT_ESTIMATOR, device=None,
                  extra: Mapping[str, str] | None = None) -> tuple[bytes, bytes]:
    """``(fim.safetensors, fim-classes.safetensors)`` bytes of ``model`` on in-memory ``data`` (targets in
    head-row order), bound to the weights by ``weights_sha256`` so they can be committed with them.

    ``model_commit`` is not set: the commit that will hold both is not known before it is made, and
    ``weights_sha256`` is what readers check (:func:`fiun_hub.lineage.sidecar_state`)."""
    from ..fisher import compute_fisher, resolve_layers, sidecar_bytes

    names = resolve_layers(model, layers)
    res = compute_fisher(model, data.x, data.y, list(labels), names, estimator=estimator, device=device)
    meta = {
        "weights_sha256": weights_sha256,
        "dataset": data.fingerprint,
        "data_spec": data_spec,
        **dict(extra or {}),
    }
    if data.preprocessing is not None:  # what the sidecar was computed with (docs/sidecars.md)
        meta[SIDECAR_KEY] = data.preprocessing.canonical()
    return sidecar_bytes(res, meta)


def push_model(hub, model: nn.Module, repo: str, labels: Sequence[str], *, input_size: Sequence[int],
               parents: Sequence[str] = (), relation: str | None = None, message: str | None = None,
               fim_data: LabeledData | None = None, data_spec: str = "", estimator: str = DEFAULT_ESTIMATOR,
               device=None, data_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Save ``model`` as a timm folder (recording the data config it was trained with: ``input_size`` and
    ``data_config``, by default fiun-hub's training preprocessing), add sidecars computed on ``fim_data`` (when
    given; fed with that same preprocessing) and push weights + sidecars as ONE revision of ``repo``
    (``parents`` as ``org/x@rev``). Returns push_folder's summary."""
    from ..models import save_model_folder
    from ..preprocessing import training_config
    from ..repo import push_folder

    trained = training_config(input_size, data_config)
    if fim_data is not None:
        if fim_data.preprocessing is not None and fim_data.preprocessing != trained:
            raise BadInput(f"{repo}: fim_data is fed with {fim_data.preprocessing.describe()}, the model is saved "
                           f"with {trained.describe()}")
        if fim_data.preprocessing is None:
            fim_data = LabeledData(fim_data.x, fim_data.y, list(fim_data.labels), fim_data.spec, trained)
    with tempfile.TemporaryDirectory(prefix="fiun-scenario-") as tmp:
        folder = save_model_folder(model, tmp, list(labels), input_size=tuple(input_size), data_config=data_config)
        if fim_data is not None:
            sha = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
            fim, cls = sidecar_files(model, labels, fim_data, sha, data_spec=data_spec, estimator=estimator,
                                     device=device)
            (folder / FIM_FILE).write_bytes(fim)
            (folder / FIM_CLASSES_FILE).write_bytes(cls)
        return push_folder(hub, folder, repo, parents=list(parents), relation=relation, message=message)


def _as_hub(hub):
    from ..hub.local import LocalHub

    if isinstance(hub, (str, Path)):
        return LocalHub.init(hub)
    return hub


def realize_scenario(scenario: Scenario, hub, *, estimator: str = DEFAULT_ESTIMATOR, device=None,
                     num_threads: int | None = 1, progress: ProgressFn | None = None) -> Scenario:
    """Train every planned model in topological order and push it (weights + sidecars, lineage pinned to the
    parents' new revisions). Fills ``revision`` and ``metrics`` of each node; returns the scenario.
    ``num_threads``: torch intra-op threads during the build (see :func:`torch_threads`)."""
    hub = _as_hub(hub)
    with torch_threads(num_threads):
        return _realize(scenario, hub, estimator, device, progress)


def _realize(scenario: Scenario, hub, estimator: str, device, progress: ProgressFn | None) -> Scenario:
    from ..evaluate import accuracy

    t0 = time.perf_counter()
    test = scenario.load_test()
    states: dict[str, dict[str, torch.Tensor]] = {}
    for repo, node in scenario.nodes.items():
        t1 = time.perf_counter()
        model, info = realize_node(scenario, repo, {p: states[p] for p in node.parents}, device=device)
        t_train = time.perf_counter() - t1
        data = scenario.train_data(repo)
        what = {"scratch": "trained from scratch", "parents-average": "FedAvg of " + ", ".join(node.parents),
                "parent": f"continued from {node.parents[0] if node.parents else ''}",
                "parent-frozen-backbone": f"new head on the frozen backbone of {node.parents[0] if node.parents else ''}"}
        msg = (f"{scenario.name} scenario: {node.role} {what[node.recipe.init]}; {node.recipe.epochs} epochs on "
               f"{len(data)} samples of {scenario.train_spec}")
        summary = push_model(hub, model, repo, node.labels, input_size=scenario.input_size,
                             parents=[f"{p}@{scenario.nodes[p].revision}" for p in node.parents],
                             relation=node.relation, message=msg, fim_data=data,
                             data_spec=f"{scenario.train_spec}#shard:{repo}", estimator=estimator, device=device)
        node.revision = summary["revision"]
        node.metrics = {
            "samples": len(data),
            "train_seconds": round(t_train, 3),
            "final_loss": info.get("loss"),
            "test_acc": accuracy(model, test.to_label_space(node.labels)),
            "seconds": round(time.perf_counter() - t1, 3),
        }
        states[repo] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress(f"{repo}: {node.metrics['test_acc']:.1f}% held-out, {node.metrics['seconds']:.1f}s")
    scenario.build_seconds = time.perf_counter() - t0
    return scenario


def build_scenario(
    name: str,
    hub,
    *,
    dataset: str = "digits",
    arch: str = "test_resnet",
    depth: int | None = None,
    width: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    shard_size: int | None = None,
    pool_size: int | None = None,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    org: str = "demo",
    prefix: str | None = None,
    input_size: Sequence[int] = (1, 16, 16),
    forget_classes: Sequence[str] | None = None,
    estimator: str = DEFAULT_ESTIMATOR,
    device=None,
    num_threads: int | None = 1,
    progress: ProgressFn | None = None,
) -> Scenario:
    """Plan (:func:`plan_scenario`) and build (:func:`realize_scenario`) a scenario into ``hub`` (a LocalHub
    or a path, created if needed). Returns the :class:`Scenario` with every node's revision and metrics."""
    scn = plan_scenario(name, dataset=dataset, arch=arch, depth=depth, width=width, epochs=epochs, lr=lr,
                        shard_size=shard_size, pool_size=pool_size, batch_size=batch_size, seed=seed, org=org,
                        prefix=prefix, input_size=input_size, forget_classes=forget_classes)
    return realize_scenario(scn, hub, estimator=estimator, device=device, num_threads=num_threads,
                            progress=progress)


def build_fl(hub, **kwargs) -> Scenario:
    return build_scenario("fl", hub, **kwargs)


def build_ddpl(hub, **kwargs) -> Scenario:
    return build_scenario("ddpl", hub, **kwargs)


def build_il(hub, **kwargs) -> Scenario:
    return build_scenario("il", hub, **kwargs)


def build_tl(hub, **kwargs) -> Scenario:
    return build_scenario("tl", hub, **kwargs)


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_model(model: nn.Module, labels: Sequence[str], test: LabeledData,
                   forget_classes: Sequence[str]) -> dict[str, Any]:
    """``{"forget_acc", "retain_acc"}`` in percent on held-out ``test`` (dataset label space)."""
    from ..evaluate import forget_retain_accuracy

    f, r = forget_retain_accuracy(model, list(labels), test, list(forget_classes))
    return {"forget_acc": f, "retain_acc": r}


def evaluate_scenario(scenario: Scenario, hub, forget_classes: Sequence[str],
                      test_data: LabeledData | None = None, *, revision: str = "head",
                      repos: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Held-out forget / retain accuracy of each repo (all, or ``repos``) at its head or built revision."""
    from ..models import load_model

    if revision not in ("head", "built"):
        raise BadInput(f"revision must be 'head' or 'built', got {revision!r}")
    hub = _as_hub(hub)
    test = test_data if test_data is not None else scenario.load_test()
    out: dict[str, dict[str, Any]] = {}
    for repo in (list(repos) if repos is not None else scenario.repos):
        rev = None if revision == "head" else scenario.node(repo).revision
        model, config, cid = load_model(hub, repo, rev)
        out[repo] = {**evaluate_model(model, config.labels, test, forget_classes), "revision": cid}
    return out


__all__ = [
    "SCENARIOS", "INITS", "Recipe", "ScenarioNode", "Scenario", "plan_scenario", "realize_scenario",
    "build_scenario", "build_fl", "build_ddpl", "build_il", "build_tl", "realize_node", "new_model", "inherit",
    "head_params", "sidecar_files", "push_model", "evaluate_model", "evaluate_scenario", "torch_threads",
]
