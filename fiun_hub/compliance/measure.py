"""Evaluation for the ledger and the audit: a repo's held-out forget and retain accuracy on ``--eval-data``
(loaded once per preprocessing), recorded by a takedown before and after its forget and re-measured by an audit;
for a sample-wise request the audit also tests the samples' membership (:func:`membership`)."""
from __future__ import annotations

from typing import Any

from ..errors import BadInput, FiunError
from ..hub.base import Hub
from .request import TakedownRequest

_DATA_CACHE: dict[tuple, Any] = {}

#: a sample-wise request's membership is decidable from this many of its samples and as many held-out samples of
#: their labels on: at 20 / 20 the null standard error is 9.2 points, so the margin below is 18 points; under it
#: the margin says nothing an attacker could not contradict ("not decidable", a warning)
MIN_MEMBERSHIP_N = 20
#: the samples are still members when their class-conditional loss-threshold AUC is above 50 by more than this
#: many standard errors at AUC 50 (the spread of a model that never saw them; one-sided, about 2% false alarms)
MEMBERSHIP_MARGIN_SE = 2.0


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


def measure(hub: Hub, request: TakedownRequest, repo: str, revision: str, eval_data: str, *,
            with_membership: bool = False) -> dict[str, Any]:
    """Held-out forget / retain accuracy (class-wise: on the request's classes the model has, and on its other
    classes) or accuracy on the forget samples and on ``eval_data`` (sample-wise) of ``repo@revision``, in
    percent; ``eval_error`` instead when the data does not fit the model. ``with_membership`` (the audit; the
    ledger records accuracies only): a sample-wise request's ``membership`` (:func:`membership`) too."""
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
        samples = _dataset(request.data, config)
        on_forget = samples.to_label_space(config.labels)
        if len(known) == 0 or len(on_forget) == 0:
            raise BadInput(f"{repo}: {eval_data if len(known) == 0 else request.data} holds no sample of its classes")
        out: dict[str, Any] = {"forget_acc": accuracy(model, on_forget), "retain_acc": accuracy(model, known)}
        if with_membership:
            out["membership"] = membership(model, config.labels, samples, held_out)
        return out
    except FiunError as exc:
        why = str(exc).splitlines()[0][:300]
        out = {"forget_acc": None, "retain_acc": None, "eval_error": why}
        if with_membership and not request.classes:
            out["membership"] = {"verdict": "not-checked", "why": f"the data did not fit: {why}"}
        return out


def membership(model, labels, samples, held_out) -> dict[str, Any]:
    """The membership test of a sample-wise request's ``samples`` against ``held_out``, class-conditional
    (:func:`fiun_hub.evaluate.class_conditional_mia`): its numbers and a ``verdict``: ``members`` (AUC above 50 by
    more than :data:`MEMBERSHIP_MARGIN_SE` null standard errors: a finding), ``not-detected``, or ``not-decidable``
    (fewer than :data:`MIN_MEMBERSHIP_N` samples or held-out samples of their labels)."""
    from ..evaluate import class_conditional_mia

    m = class_conditional_mia(model, labels, samples, held_out)
    out: dict[str, Any] = {"auc": _r(m["mia_auc"]), "se": _r(m["mia_auc_se"]), "se_null": _r(m["mia_auc_se_null"]),
                           "n": m["n_members"], "n_held_out": m["n_held_out"], "unmatched": m["unmatched"],
                           "per_label": m["per_label"], "margin_se": MEMBERSHIP_MARGIN_SE,
                           "min_n": MIN_MEMBERSHIP_N}
    if m["n_members"] < MIN_MEMBERSHIP_N or m["n_held_out"] < MIN_MEMBERSHIP_N:
        out["verdict"] = "not-decidable"
    else:
        out["threshold"] = _r(50.0 + MEMBERSHIP_MARGIN_SE * m["mia_auc_se_null"])
        out["verdict"] = "members" if m["mia_auc"] > out["threshold"] else "not-detected"
    return out


def membership_text(m: dict[str, Any]) -> str:
    """One line about a row's ``membership`` (the audit's text, messages and warnings)."""
    v = m.get("verdict")
    if v == "not-checked":
        return f"membership of the samples not checked ({m.get('why')})"
    n = f"n={m.get('n')} samples vs {m.get('n_held_out')} held-out of their labels"
    if m.get("auc") is None:
        return f"membership not decidable ({n})"
    auc = f"loss-threshold AUC {m['auc']:.1f} ± {m['se']:.1f} SE"
    if v == "not-decidable":
        return f"membership not decidable ({n}, fewer than {m.get('min_n')}; {auc})"
    if v == "members":
        return (f"the samples are still members: {auc} ({n}) is above {m['threshold']:.1f} "
                f"(50 + {m['margin_se']:g} null SE)")
    return f"membership not detected: {auc} ({n}), not above {m['threshold']:.1f}"


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)


def check_eval_data(spec: str | None) -> None:
    """A bad ``--eval-data`` spec is bad input before anything runs."""
    if spec is not None:
        from ..data import parse_spec

        parse_spec(spec)


__all__ = ["measure", "membership", "membership_text", "check_eval_data", "MIN_MEMBERSHIP_N",
           "MEMBERSHIP_MARGIN_SE"]
