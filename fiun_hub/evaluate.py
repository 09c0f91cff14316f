"""Forget / retain accuracy and membership inference for class-wise unlearning (DESIGN.md section 5).

Conventions (see ``shared/reference/unlearning-metrics.md``):

- accuracies are percentages in [0, 100], measured on held-out data;
- ``test`` data is given in the *dataset's* label space (``LabeledData.labels``); it is mapped onto the
  model's head rows by label **name**, so a model whose head has fewer, more or reordered labels is
  evaluated correctly; samples of classes the model does not know are ignored;
- predictions are the argmax over the model's **full** head: a forgotten row still competes, nothing is
  masked.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .data import LabeledData
from .errors import BadInput


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256, device=None) -> torch.Tensor:
    """Logits of ``model`` on ``x`` (eval mode, no grad), as a float32 CPU tensor ``(N, num_classes)``.

    The model's train/eval mode is restored afterwards.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = []
        for start in range(0, int(x.shape[0]), batch_size):
            outs.append(model(x[start:start + batch_size].to(dev)).float().cpu())
        if not outs:
            n_out = getattr(model, "num_classes", 0)
            return torch.zeros((0, n_out), dtype=torch.float32)
        return torch.cat(outs)
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, data: LabeledData, batch_size: int = 256, device=None) -> float:
    """Top-1 accuracy in percent of ``model`` on ``data`` whose targets index the model's head rows."""
    if len(data) == 0:
        raise BadInput("accuracy on an empty data set")
    pred = predict_logits(model, data.x, batch_size, device).argmax(dim=1)
    return 100.0 * float((pred == data.y).float().mean())


def _known_targets(model_labels: Sequence[str], data: LabeledData) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of samples whose class the model knows, and their targets as model head rows."""
    row = {name: i for i, name in enumerate(model_labels)}
    lut = torch.tensor([row.get(name, -1) for name in data.labels], dtype=torch.long)
    mapped = lut[data.y] if len(data) else data.y
    keep = torch.nonzero(mapped >= 0).flatten()
    return keep, mapped[keep]


def forget_retain_accuracy(
    model: nn.Module,
    model_labels: Sequence[str],
    test: LabeledData,
    forget: Sequence[str],
    batch_size: int = 256,
    device=None,
) -> tuple[float | None, float | None]:
    """``(forget_acc, retain_acc)`` in percent on held-out ``test`` (in the dataset's label space).

    forget acc: accuracy on the test samples of forgotten classes that the model knows (None if it knows none
    of them); retain acc: accuracy on the test samples of the model's other known classes (None if none).
    Samples of classes the model does not know are ignored; predictions are the argmax over the full head.

    >>> # a model with head rows ["b", "a"] that always predicts row 0 ("b"):
    >>> # on test labels ["a", "b", "c"] with y = [0, 1, 2], forget=["a"] -> (0.0, 100.0); "c" is ignored
    """
    labels = list(model_labels)
    if len(set(labels)) != len(labels):
        raise BadInput(f"model labels are not unique: {labels}")
    keep, target = _known_targets(labels, test)
    if keep.numel() == 0:
        return None, None
    logits = predict_logits(model, test.x[keep], batch_size, device)
    if logits.shape[1] != len(labels):
        raise BadInput(f"model has {logits.shape[1]} outputs but {len(labels)} labels were given")
    pred = logits.argmax(dim=1)
    forget_rows = torch.tensor([i for i, name in enumerate(labels) if name in set(forget)], dtype=torch.long)
    is_forget = torch.isin(target, forget_rows)
    correct = (pred == target).float()

    def pct(mask: torch.Tensor) -> float | None:
        return 100.0 * float(correct[mask].mean()) if bool(mask.any()) else None

    return pct(is_forget), pct(~is_forget)


def _entropies(model: nn.Module, model_labels: Sequence[str], data: LabeledData, batch_size: int, device) -> np.ndarray:
    keep, _ = _known_targets(model_labels, data)
    if keep.numel() == 0:
        return np.zeros((0,), dtype=np.float64)
    prob = torch.softmax(predict_logits(model, data.x[keep], batch_size, device).double(), dim=1)
    ent = -(prob * torch.log(prob.clamp_min(1e-30))).sum(dim=1)
    return ent.numpy()


def mia_score(
    model: nn.Module,
    model_labels: Sequence[str],
    forget_train: LabeledData,
    retain_train: LabeledData,
    test: LabeledData,
    batch_size: int = 256,
    device=None,
) -> float:
    """Membership-inference score of the forget set, in percent (lower is better; a retrained model ~ 0).

    Convention: SSD / bad-teaching (Chundawat et al. 2023, arXiv 2205.08096; Foster et al. SSD
    ``src/metrics.py``): the attack feature is the entropy of the model's softmax; a logistic regression
    (scikit-learn, ``class_weight="balanced"``) is fit on retain-train samples (label 1 = member) against
    held-out ``test`` samples (label 0 = non-member) and applied to ``forget_train``; the score is the
    percentage of forget samples predicted "member". Each set is given in its dataset's label space and is
    restricted to the classes the model knows (entropy itself needs no label).
    """
    from sklearn.linear_model import LogisticRegression

    e_ret = _entropies(model, model_labels, retain_train, batch_size, device)
    e_test = _entropies(model, model_labels, test, batch_size, device)
    e_forget = _entropies(model, model_labels, forget_train, batch_size, device)
    if e_forget.size == 0:
        raise BadInput("mia_score: the forget set holds no sample of a class the model knows")
    if e_ret.size == 0 or e_test.size == 0:
        raise BadInput("mia_score needs retain-train and test samples of classes the model knows")
    x = np.concatenate([e_ret, e_test])[:, None]
    y = np.concatenate([np.ones(e_ret.size), np.zeros(e_test.size)])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs")
    clf.fit(x, y)
    return 100.0 * float(clf.predict(e_forget[:, None]).mean())


def evaluate_repo(hub, repo: str, data_spec: str, forget: Sequence[str] | None = None, *,
                  revision: str | None = None, device=None) -> dict:
    """Held-out accuracy of ``repo`` (at ``revision``) on ``data_spec``; with ``forget`` also forget accuracy
    (on those classes) and retain accuracy (on the model's other classes), in percent.

    The data is fed to the model with its own preprocessing (its timm data config: input size, mean, std,
    interpolation, crop) and mapped to its labels by name; samples of classes the model does not know are
    ignored.
    """
    from .data import load_for_model
    from .errors import DataSpecError
    from .models import load_model

    model, config, cid = load_model(hub, repo, revision)
    data = load_for_model(data_spec, config)
    forget = [str(c) for c in (forget or [])]
    unknown = [c for c in forget if c not in config.labels]
    if unknown:
        raise DataSpecError(f"{repo} has no class {', '.join(unknown)} (labels: {', '.join(config.labels)})")
    known = data.to_label_space(config.labels)
    if len(known) == 0:
        raise DataSpecError(f"data {data_spec} holds no sample of {repo}'s classes")
    out = {"repo": repo, "revision": cid, "data": data_spec, "samples": len(known),
           "accuracy": accuracy(model, known, device=device), "forget_classes": forget,
           "forget_acc": None, "retain_acc": None}
    if forget:
        out["forget_acc"], out["retain_acc"] = forget_retain_accuracy(model, config.labels, data, forget,
                                                                      device=device)
    return out
