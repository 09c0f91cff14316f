"""Evaluation for the ledger and the audit: a repo's held-out forget and retain accuracy on ``--eval-data``
(loaded once per preprocessing), recorded by a takedown before and after its forget and re-measured by an audit."""
from __future__ import annotations

from typing import Any

from ..errors import BadInput, FiunError
from ..hub.base import Hub
from .request import TakedownRequest

_DATA_CACHE: dict[tuple, Any] = {}


def _dataset(spec: str, config) -> Any:
    """``spec`` fed with a model's own preprocessing; the last few are kept, since every repo of a request is
    measured on it."""
    from ..data import load_for_model

    key = (spec, config.preprocessing)
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) >= 4:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = load_for_model(spec, config)
    return _DATA_CACHE[key]


def measure(hub: Hub, request: TakedownRequest, repo: str, revision: str, eval_data: str) -> dict[str, Any]:
    """Held-out forget / retain accuracy (class-wise: on the request's classes the model has, and on its other
    classes) or accuracy on the forget samples and on ``eval_data`` (sample-wise) of ``repo@revision``, in
    percent; ``eval_error`` instead when the data does not fit the model."""
    from ..evaluate import accuracy, forget_retain_accuracy
    from ..models import load_model

    try:
        model, config, _ = load_model(hub, repo, revision)
        held_out = _dataset(eval_data, config)
        if request.classes:
            forget = [c for c in request.classes if c in config.labels]
            f, r = forget_retain_accuracy(model, config.labels, held_out, forget)
            if not forget:
                return {"forget_acc": None, "retain_acc": r}
            return {"forget_acc": f, "retain_acc": r}
        known = held_out.to_label_space(config.labels)
        assert request.data is not None  # a request names classes or data
        on_forget = _dataset(request.data, config).to_label_space(config.labels)
        if len(known) == 0 or len(on_forget) == 0:
            raise BadInput(f"{repo}: {eval_data if len(known) == 0 else request.data} holds no sample of its classes")
        return {"forget_acc": accuracy(model, on_forget), "retain_acc": accuracy(model, known)}
    except FiunError as exc:
        return {"forget_acc": None, "retain_acc": None, "eval_error": str(exc).splitlines()[0][:300]}


def check_eval_data(spec: str | None) -> None:
    """A bad ``--eval-data`` spec is bad input before anything runs."""
    if spec is not None:
        from ..data import parse_spec

        parse_spec(spec)


__all__ = ["measure", "check_eval_data"]
