"""Forget / retain accuracy and membership inference for class-wise unlearning (DESIGN.md section 5).

Conventions (see ``shared/reference/unlearning-metrics.md``):

- accuracies are percentages in [0, 100], measured on held-out data;
- ``test`` data is given in the *dataset's* label space (``LabeledData.labels``); it is mapped onto the
  model's head rows by label **name**, so a model whose head has fewer, more or reordered labels is
  evaluated correctly; samples of classes the model does not know are ignored;
- predictions are the argmax over the model's **full** head: a forgotten row still competes, nothing is
  masked.

Beyond the head (issue 16; each to be read next to a model retrained without the forgotten data):

- :func:`top2_leak`: share of forgotten-class held-out samples whose own class is still ranked 1st or 2nd;
- :func:`linear_probe`: recall of the forgotten classes by a logistic regression on the penultimate features
  (``forward_head(forward_features(x), pre_logits=True)``), fit on a train split, scored on held-out data;
- :func:`fiun_hub.research.relearn.relearn_test` (research: it trains): forget accuracy after a fixed small
  fine-tune of a copy on retained data only;
- :func:`sample_forget_metrics`: for sample-wise forgets, accuracy on the forgotten samples and the
  loss-threshold membership attack's AUC of the forgotten samples against held-out ones;
- :func:`class_conditional_mia`: the same attack, each forgotten sample compared with held-out samples of its own
  label, with Hanley-McNeil's standard error (:func:`auc_standard_error`); what ``audit --eval-data`` judges a
  sample-wise request's membership on (fiun_hub/compliance/measure.py);
- :func:`beyond_head_repo`: top-2 leak and probe recall of a hub repo, fed with its own preprocessing.
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


# ------------------------------------------------------------------------------------------------------------
# Beyond the head (issue 16): does the forgotten information survive in the ranking, the features, a fine-tune,
# or the per-sample losses? Every number below is meant to be read next to a model retrained without the
# forgotten data (never next to 0): a retrained model's features still separate a class it never saw to some
# degree, and its forgotten samples are just unseen samples of their class.
# ------------------------------------------------------------------------------------------------------------
def model_rows(model_labels: Sequence[str]) -> list[str]:
    """A model's head labels as strings, one per row; repeated labels are a :class:`BadInput`."""
    labels = [str(v) for v in model_labels]
    if len(set(labels)) != len(labels):
        raise BadInput(f"model labels are not unique: {labels}")
    return labels


def _forget_rows(labels: Sequence[str], forget: Sequence[str]) -> torch.Tensor:
    want = {str(c) for c in forget}
    return torch.tensor([i for i, name in enumerate(labels) if name in want], dtype=torch.long)


def topk_leak_from_logits(logits: torch.Tensor, target: torch.Tensor, forget_rows: Sequence[int] | torch.Tensor,
                          k: int = 2) -> float | None:
    """Percentage of the samples of forgotten rows whose **own** row is ranked among the top ``k`` logits.

    ``logits``: (N, K); ``target``: (N,) head rows; ``forget_rows``: the head rows of the forgotten classes. Only
    samples whose target is a forgotten row count (None if there is none). The rank of a sample's row is the
    number of logits strictly greater than its own, so a tie counts as a leak (the conservative reading). With
    ``k = 2`` this is the *top-2 leak*: it includes top-1 (forget accuracy), so once forget accuracy is 0 it is
    exactly the share of forgotten samples whose class is still the runner-up (issue 16).

    >>> lg = torch.tensor([[0., 5., 1.], [3., 2., 1.], [0., 1., 9.]])   # rows 0, 0, 0 are the targets
    >>> round(topk_leak_from_logits(lg, torch.tensor([0, 0, 0]), [0]), 2)   # ranks 2, 0, 2 -> 1 of 3 in top-2
    33.33
    """
    if k < 1:
        raise BadInput(f"k must be >= 1, got {k}")
    logits = torch.as_tensor(logits).float()
    target = torch.as_tensor(target, dtype=torch.long)
    if logits.ndim != 2 or target.ndim != 1 or logits.shape[0] != target.shape[0]:
        raise BadInput(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} do not match")
    rows = torch.as_tensor(forget_rows, dtype=torch.long)
    is_f = torch.isin(target, rows)
    if not bool(is_f.any()):
        return None
    lg, t = logits[is_f], target[is_f]
    own = lg.gather(1, t[:, None])
    rank = (lg > own).sum(dim=1)
    return 100.0 * float((rank < k).float().mean())


def top2_leak(model: nn.Module, model_labels: Sequence[str], test: LabeledData, forget: Sequence[str], *,
              k: int = 2, batch_size: int = 256, device=None) -> float | None:
    """Top-2 leak in percent of the forgotten classes on held-out ``test`` (dataset label space, mapped to the
    model's head by name as :func:`forget_retain_accuracy` does): the share of test samples of forgotten classes
    the model has a row for whose own class is ranked first or second over the full head (None: the model knows
    none of them). A model retrained without the classes keeps their rows only as negatives and ranks them near
    the bottom; a head-only suppression can leave them as the runner-up (see :func:`topk_leak_from_logits`)."""
    labels = model_rows(model_labels)
    keep, target = _known_targets(labels, test)
    rows = _forget_rows(labels, forget)
    if keep.numel() == 0 or rows.numel() == 0:
        return None
    logits = predict_logits(model, test.x[keep], batch_size, device)
    if logits.shape[1] != len(labels):
        raise BadInput(f"model has {logits.shape[1]} outputs but {len(labels)} labels were given")
    return topk_leak_from_logits(logits, target, rows, k)


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256, device=None) -> torch.Tensor:
    """The features the head reads: ``model.forward_head(model.forward_features(x), pre_logits=True)`` (timm's
    pre-logits, after pooling), in eval mode, as a float32 CPU tensor (N, D). The train/eval mode is restored."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise BadInput(f"{type(model).__name__} has no forward_features/forward_head (not a timm classifier)")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = [model.forward_head(model.forward_features(x[i:i + batch_size].to(dev)), pre_logits=True)
                .float().flatten(1).cpu() for i in range(0, int(x.shape[0]), batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        raise BadInput("penultimate_features of no sample")
    return torch.cat(outs)


def probe_recall_from_features(train_feats: np.ndarray, train_y: np.ndarray, test_feats: np.ndarray,
                               test_y: np.ndarray, forget_rows: Sequence[int], *, C: float = 1.0,
                               max_iter: int = 2000) -> dict:
    """Fit a multinomial logistic regression (scikit-learn, features standardised on the train split) on
    ``train_feats -> train_y`` and score it on the test split.

    Returns ``{"forget_recall": % of test samples of forgotten rows predicted as their own class (None if none),
    "retain_acc": % of the other test samples predicted right (None if none), "accuracy": % of all}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_feats, test_feats = np.asarray(train_feats, np.float64), np.asarray(test_feats, np.float64)
    train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
    if len(train_y) < 2 or len(np.unique(train_y)) < 2:
        raise BadInput("the probe needs training samples of at least two classes")
    if len(test_y) == 0:
        raise BadInput("the probe needs held-out samples")
    if not (np.isfinite(train_feats).all() and np.isfinite(test_feats).all()):
        raise BadInput("non-finite features: the probe cannot be fit")
    scaler = StandardScaler().fit(train_feats)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(scaler.transform(train_feats), train_y)
    pred = clf.predict(scaler.transform(test_feats))
    ok = pred == test_y
    is_f = np.isin(test_y, np.asarray(list(forget_rows), dtype=np.int64))

    def pct(mask):
        return 100.0 * float(ok[mask].mean()) if mask.any() else None

    return {"forget_recall": pct(is_f), "retain_acc": pct(~is_f), "accuracy": 100.0 * float(ok.mean())}


def linear_probe(model: nn.Module, model_labels: Sequence[str], probe_train: LabeledData, test: LabeledData,
                 forget: Sequence[str], *, C: float = 1.0, max_iter: int = 2000, batch_size: int = 256,
                 device=None) -> dict:
    """A linear probe on the model's penultimate features (:func:`penultimate_features`): what an attacker with
    labelled data recovers from the backbone when only the head was changed ("Illusion of Unlearning").

    A logistic regression over the classes the model has a head row for is fit on the features of
    ``probe_train`` (e.g. a split of the training data, forgotten classes included: the attacker has labelled
    samples of them) and scored on held-out ``test``; both are in the dataset's label space and are mapped onto
    the model's classes by name (others are ignored). Returns :func:`probe_recall_from_features`'s dict:
    ``forget_recall`` (the headline: recall of the forgotten classes, in percent; None if the model knows none of
    them), ``retain_acc``, ``accuracy``. Compare ``forget_recall`` with a retrained model's, whose features still
    carry generic information about a class it never saw."""
    labels = model_rows(model_labels)
    ktr, ytr = _known_targets(labels, probe_train)
    kte, yte = _known_targets(labels, test)
    if ktr.numel() == 0 or kte.numel() == 0:
        raise BadInput("linear_probe: the probe or test data holds no sample of a class the model knows")
    ftr = penultimate_features(model, probe_train.x[ktr], batch_size, device).numpy()
    fte = penultimate_features(model, test.x[kte], batch_size, device).numpy()
    return probe_recall_from_features(ftr, ytr.numpy(), fte, yte.numpy(), _forget_rows(labels, forget).tolist(),
                                      C=C, max_iter=max_iter)


@torch.no_grad()
def per_sample_losses(model: nn.Module, model_labels: Sequence[str], data: LabeledData, batch_size: int = 256,
                      device=None) -> np.ndarray:
    """Cross-entropy of every sample of ``data`` (dataset label space) whose class the model knows, over the
    model's full head (float64 numpy, in the order of the kept samples)."""
    labels = model_rows(model_labels)
    keep, target = _known_targets(labels, data)
    if keep.numel() == 0:
        return np.zeros((0,), dtype=np.float64)
    logits = predict_logits(model, data.x[keep], batch_size, device).double()
    if logits.shape[1] != len(labels):
        raise BadInput(f"model has {logits.shape[1]} outputs but {len(labels)} labels were given")
    return torch.nn.functional.cross_entropy(logits, target, reduction="none").numpy()


def mia_auc_from_losses(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC in percent of the loss-threshold membership attack (Yeom et al. 2018): the attacker calls a sample a
    member when its loss is low; the score is the probability that a random member sample has a lower loss than
    a random non-member one (ties count half). 50 = the samples look like unseen ones, 100 = perfectly exposed.

    >>> mia_auc_from_losses(np.array([0.1, 0.2]), np.array([1.0, 2.0]))
    100.0
    """
    from sklearn.metrics import roc_auc_score

    m, n = np.asarray(member_losses, np.float64), np.asarray(nonmember_losses, np.float64)
    if m.size == 0 or n.size == 0:
        raise BadInput("the membership attack needs both member and non-member samples")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise BadInput("non-finite losses: the membership attack cannot be scored")
    y = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return 100.0 * float(roc_auc_score(y, -np.concatenate([m, n])))


def sample_forget_metrics(model: nn.Module, model_labels: Sequence[str], forgotten: LabeledData,
                          held_out: LabeledData, batch_size: int = 256, device=None) -> dict:
    """Metrics of a sample-wise forget, both sets in the dataset's label space (restricted to the classes the model
    knows):

    - ``forgotten_acc``: accuracy (percent) on the forgotten training samples; a model retrained without them
      gets about its held-out accuracy on them (they are unseen samples of known classes), not 0;
    - ``mia_auc``: the loss-threshold attack's AUC (percent, :func:`mia_auc_from_losses`) of the forgotten
      samples against held-out samples; a retrained model is near 50;
    - ``held_out_acc``: accuracy on ``held_out``.
    """
    labels = model_rows(model_labels)
    f_known = forgotten.to_label_space(labels)
    h_known = held_out.to_label_space(labels)
    if len(f_known) == 0 or len(h_known) == 0:
        raise BadInput("sample_forget_metrics: the forgotten or held-out set holds no sample the model knows")
    lf = per_sample_losses(model, labels, forgotten, batch_size, device)
    lh = per_sample_losses(model, labels, held_out, batch_size, device)
    return {"forgotten_acc": accuracy(model, f_known, batch_size, device),
            "held_out_acc": accuracy(model, h_known, batch_size, device),
            "mia_auc": mia_auc_from_losses(lf, lh)}


def auc_standard_error(auc_pct: float, n_member: int, n_non: int) -> float:
    """Hanley-McNeil standard error (percent) of an AUC (percent) measured on ``n_member`` and ``n_non`` samples
    (the one benchmarks/ablation_samplewise.py reports). At AUC 50 it is the exact null one,
    ``sqrt((n_member + n_non + 1) / (12 n_member n_non))``.

    >>> round(auc_standard_error(50.0, 50, 54), 2)
    5.69
    """
    if n_member < 1 or n_non < 1:
        raise BadInput("an AUC's standard error needs both member and non-member samples")
    a = auc_pct / 100.0
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    v = (a * (1 - a) + (n_member - 1) * (q1 - a * a) + (n_non - 1) * (q2 - a * a)) / (n_member * n_non)
    return 100.0 * max(v, 0.0) ** 0.5


def class_conditional_mia(model: nn.Module, model_labels: Sequence[str], members: LabeledData,
                          held_out: LabeledData, batch_size: int = 256, device=None) -> dict:
    """The loss-threshold attack (:func:`mia_auc_from_losses`) of ``members`` against ``held_out``, label by label:
    each label's samples are compared with the held-out samples of that label only (a person's 3s with held-out
    3s, so that a class the model finds easy does not pass for membership). Both sets are in their dataset's label
    space; samples of labels the model does not know, or that ``held_out`` has none of, are left out (``unmatched``).

    The per-label AUCs are averaged weighted by their member counts; the standard errors (Hanley-McNeil,
    :func:`auc_standard_error`) combine as ``sqrt(sum (w_l se_l)^2)``. Returned: ``mia_auc`` and ``mia_auc_se``
    (at the measured AUCs), ``mia_auc_se_null`` (the same at AUC 50: the spread of a model that never saw the
    samples, for which they are exchangeable with held-out ones), ``n_members``, ``n_held_out`` (of the matched
    labels), ``unmatched`` and ``per_label`` (label -> [members, held-out, AUC]); ``mia_auc`` is None when no
    label matches.
    """
    labels = model_rows(model_labels)
    m, h = members.to_label_space(labels), held_out.to_label_space(labels)
    lm = per_sample_losses(model, labels, m, batch_size, device) if len(m) else np.zeros(0)
    lh = per_sample_losses(model, labels, h, batch_size, device) if len(h) else np.zeros(0)
    ym, yh = m.y.numpy(), h.y.numpy()
    per_label, parts = {}, []
    for row in sorted(set(ym.tolist())):
        a, b = lm[ym == row], lh[yh == row]
        if a.size == 0 or b.size == 0:
            continue
        auc = mia_auc_from_losses(a, b)
        parts.append((a.size, b.size, auc))
        per_label[labels[row]] = [int(a.size), int(b.size), round(auc, 2)]
    n_m, n_h = sum(p[0] for p in parts), sum(p[1] for p in parts)
    out: dict = {"n_members": int(n_m), "n_held_out": int(n_h), "unmatched": int(len(members) - n_m),
                 "per_label": per_label, "mia_auc": None, "mia_auc_se": None, "mia_auc_se_null": None}
    if n_m:
        w = [p[0] / n_m for p in parts]
        out["mia_auc"] = float(sum(wi * p[2] for wi, p in zip(w, parts)))
        out["mia_auc_se"] = float(sum((wi * auc_standard_error(p[2], p[0], p[1])) ** 2
                                      for wi, p in zip(w, parts)) ** 0.5)
        out["mia_auc_se_null"] = float(sum((wi * auc_standard_error(50.0, p[0], p[1])) ** 2
                                           for wi, p in zip(w, parts)) ** 0.5)
    return out


def beyond_head_repo(hub, repo: str, forget: Sequence[str], *, probe_spec: str, test_spec: str,
                     revision: str | None = None, device=None) -> dict:
    """Top-2 leak and linear-probe recall of ``forget`` for ``repo`` (at ``revision``), each data spec fed with the
    model's own preprocessing (:func:`fiun_hub.data.load_for_model`, as :func:`evaluate_repo` does)."""
    from .data import load_for_model
    from .errors import DataSpecError
    from .models import load_model

    model, config, cid = load_model(hub, repo, revision)
    forget = [str(c) for c in forget]
    unknown = [c for c in forget if c not in config.labels]
    if unknown:
        raise DataSpecError(f"{repo} has no class {', '.join(unknown)} (labels: {', '.join(config.labels)})")
    test = load_for_model(test_spec, config)
    probe_train = load_for_model(probe_spec, config)
    probe = linear_probe(model, config.labels, probe_train, test, forget, device=device)
    return {"repo": repo, "revision": cid, "forget_classes": forget,
            "top2_leak": top2_leak(model, config.labels, test, forget, device=device),
            "probe_forget_recall": probe["forget_recall"], "probe_retain_acc": probe["retain_acc"]}
