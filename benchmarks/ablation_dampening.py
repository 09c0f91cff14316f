"""Ablation of FIUn's selection + dampening rule on a real inheritance DAG of timm models (digits).

Builds a DAG of 7 ``test_resnet`` models trained on ``digits:train`` (16x16, 1 channel), computes every
model's sidecar FIMs on its own training data, forgets class "3" (and the 4-class set 1,3,5,7) at the root
and reports held-out (``digits:test``) forget / retain accuracy per model, before and after, for the paper's
rule and for every variant tried. Results: ``benchmarks/results/ablation_dampening.json``; the write-up is
``docs/method.md``.

DAG (parent -> child; every model is affected by a forget at the root):

    R  root, from scratch, all 10 classes, all of digits:train
    A  fine-tune of R on shard Q0+Q1            B  fine-tune of R on shard Q2+Q3
    M  FedAvg(A, B) fine-tuned further on Q1+Q2 (two parents)
    C  chain child of M fine-tuned on Q3 *without class 3* (knows 3 only through inheritance)
    T  transfer learning: R's frozen backbone, its own new head on labels 7,3,1,5,0,8 (Q0+Q1)
    I  incremental learning from T: head grows to 10 labels in reversed order (gains 9,6,4,2), full
       fine-tune on Q2+Q3

Each descendant is unlearned from the root's unlearning FIM (aligned to its head rows by label name) and
its OWN sidecars only: never the forget data, never its parents' new weights.

Run:  python benchmarks/ablation_dampening.py            (about 3-4 minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

from fiun_hub import dampening as D  # noqa: E402
from fiun_hub.data import LabeledData, load_data  # noqa: E402
from fiun_hub.evaluate import forget_retain_accuracy  # noqa: E402
from fiun_hub.fisher import compute_fisher, resolve_layers  # noqa: E402
from fiun_hub.training import average_state_dicts, train_classifier  # noqa: E402

DIGITS = [str(i) for i in range(10)]
T_LABELS = ["7", "3", "1", "5", "0", "8"]
I_LABELS = list(reversed(DIGITS))
FORGET_SETS = {"1-class": ["3"], "4-class": ["1", "3", "5", "7"]}
INPUT = (16, 16)


@dataclass
class Node:
    name: str
    model: torch.nn.Module
    labels: list[str]
    train: LabeledData  # own training data, targets in the model's head-row order
    parents: list[str]
    how: str
    fims: dict = field(default_factory=dict)  # (layers, estimator) -> FisherResult


def _new_model(num_classes: int) -> torch.nn.Module:
    return timm.create_model("test_resnet", num_classes=num_classes, in_chans=1)


def build_dag(seed: int = 0, log=print) -> dict[str, Node]:
    """Train the 7-model DAG (deterministic given ``seed``)."""
    torch.manual_seed(seed)
    train = load_data("digits:train", in_chans=1, input_size=INPUT)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    q = [perm[i::4] for i in range(4)]
    shard = lambda *ix: train.subset(torch.cat([q[i] for i in ix]).sort().values)  # noqa: E731
    nodes: dict[str, Node] = {}

    def fit(node: Node, **kw):
        t0 = time.perf_counter()
        r = train_classifier(node.model, node.train, seed=seed, **kw)
        log(f"  trained {node.name:2s} ({node.how}): loss {r['first_loss']:.3f} -> {r['loss']:.4f} "
            f"in {time.perf_counter() - t0:.1f}s")

    r = Node("R", _new_model(10), DIGITS, train, [], "root, scratch, all data")
    fit(r, epochs=15, lr=3e-3)
    nodes["R"] = r
    for name, ix in (("A", (0, 1)), ("B", (2, 3))):
        n = Node(name, copy.deepcopy(r.model), DIGITS, shard(*ix), ["R"], f"finetune R on Q{ix}")
        fit(n, epochs=6, lr=1e-3)
        nodes[name] = n
    a, b = nodes["A"], nodes["B"]
    m = Node("M", _new_model(10), DIGITS, shard(1, 2), ["A", "B"], "FedAvg(A,B) + finetune Q1+Q2")
    m.model.load_state_dict(average_state_dicts([a.model.state_dict(), b.model.state_dict()],
                                                [len(a.train), len(b.train)]))
    fit(m, epochs=4, lr=5e-4)
    nodes["M"] = m
    q3 = shard(3)
    no3 = q3.subset(torch.nonzero(q3.y != DIGITS.index("3")).flatten())
    c = Node("C", copy.deepcopy(m.model), DIGITS, no3, ["M"], "chain finetune of M on Q3 without class 3")
    fit(c, epochs=4, lr=5e-4)
    nodes["C"] = c
    t_model = copy.deepcopy(r.model)
    t_model.reset_classifier(len(T_LABELS))
    t = Node("T", t_model, T_LABELS, shard(0, 1).to_label_space(T_LABELS), ["R"],
             "transfer: frozen R backbone, new head 7,3,1,5,0,8")
    fit(t, epochs=15, lr=1e-2, trainable=["fc.weight", "fc.bias"])
    nodes["T"] = t
    i_model = copy.deepcopy(t.model)
    i_model.reset_classifier(len(I_LABELS))
    with torch.no_grad():  # incremental learning: keep T's rows by name, new rows for the gained labels
        for row, lab in enumerate(I_LABELS):
            if lab in T_LABELS:
                i_model.fc.weight[row] = t.model.fc.weight[T_LABELS.index(lab)]
                i_model.fc.bias[row] = t.model.fc.bias[T_LABELS.index(lab)]
    i = Node("I", i_model, I_LABELS, shard(2, 3).to_label_space(I_LABELS), ["T"],
             "incremental: T + labels 9,6,4,2, reversed order, full finetune Q2+Q3")
    fit(i, epochs=8, lr=1e-3)
    nodes["I"] = i
    for n in nodes.values():
        n.model.eval()
    return nodes
