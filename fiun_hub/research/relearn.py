"""The relearn test (issue 16, beyond the head): fine-tune a copy of a model on retained data for a fixed small
budget, then measure forget and retain accuracy. Research code (it trains, with :mod:`.training`); the other
metrics are in :mod:`fiun_hub.evaluate`."""
from __future__ import annotations

import copy
from typing import Sequence

import torch.nn as nn

from ..data import LabeledData
from ..errors import BadInput
from ..evaluate import forget_retain_accuracy, model_rows
from .training import train_classifier


DEFAULT_RELEARN_EPOCHS = 1
DEFAULT_RELEARN_LR = 1e-3
DEFAULT_RELEARN_BATCH = 32


def relearn_test(model: nn.Module, model_labels: Sequence[str], retain_train: LabeledData, test: LabeledData,
                 forget: Sequence[str], *, epochs: int = DEFAULT_RELEARN_EPOCHS, lr: float = DEFAULT_RELEARN_LR,
                 batch_size: int = DEFAULT_RELEARN_BATCH, seed: int = 0, device=None) -> dict:
    """Relearn test: fine-tune a **copy** of the model on retained data only for a fixed small budget, then
    measure forget and retain accuracy on held-out ``test`` (the model itself is not changed).

    Budget: ``epochs`` passes over ``retain_train`` with Adam at ``lr`` (cosine decay), batch ``batch_size``,
    every parameter trainable, shuffling seeded by ``seed`` (:func:`fiun_hub.research.training.train_classifier`),
    so the same budget can be given to every method and to the retrained model. ``retain_train`` is in the
    dataset's label space; samples of the forgotten classes and of classes the model does not know are dropped
    (the test is defined on retained data only). A suppression that left the class in the backbone can come back
    once the head moves; compare with a retrained model after the same budget.

    Returns ``{"forget_acc", "retain_acc"}`` (percent, None as :func:`forget_retain_accuracy`) plus
    ``"steps"`` and ``"samples"``."""
    labels = model_rows(model_labels)
    if int(epochs) < 0:
        raise BadInput(f"relearn epochs must be >= 0, got {epochs}")
    want = {str(c) for c in forget}
    keep_names = [n for n in labels if n not in want and n in retain_train.labels]
    data = retain_train.select_labels(keep_names).to_label_space(labels) if keep_names else None
    if data is None or len(data) < 2:
        raise BadInput("relearn_test needs at least two retained training samples of classes the model knows")
    twin = copy.deepcopy(model)
    info = {"steps": 0}
    if int(epochs) > 0:
        info = train_classifier(twin, data, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                                seed=int(seed), device=device)
    twin.eval()
    f, r = forget_retain_accuracy(twin, labels, test, list(forget), device=device)
    return {"forget_acc": f, "retain_acc": r, "steps": int(info["steps"]), "samples": len(data)}
