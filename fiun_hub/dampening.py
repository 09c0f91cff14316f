"""The FIUn maths: unlearning FIM, row alignment, MFIM, selection and dampening. Tensors in, tensors out.

DESIGN.md section 5, with the changes that ``benchmarks/ablation_dampening.py`` justifies (write-up and numbers:
``docs/method.md``). A FIM here is ``{param name: tensor}`` shaped like the parameters; head parameters
(classifier weight / bias) have one row per label, in the model's label order.

The class-wise step for one affected model ``v`` (origin or descendant), all of it data-free::

    U      = unlearning_fim(origin.class_fims, origin.counts, forget)          # at each origin, once
    M      = merge_fims([align_rows(U_o, o.labels, v.labels, head) for o in origins of v])
    new    = class_forget_update(v.params, v.labels, v.model_fim, v.class_fims, v.counts, M, forget, head)

:func:`class_forget_update` is :func:`forget_update_stacked` (the update, written once over stacks of models) on
a stack of one, with the chosen defaults:

1. the model FIM it compares against is v's **retain FIM** (:func:`retain_fim`: v's model FIM with its own
   forget-class FIMs taken out, from its own sidecars). The paper compares against the FIM of all of v's
   training data, forget classes included, which bounds the dampening of a forget row below by about
   ``n_forget / n`` (10% of the row left for one class in ten, 40% for four) and so never removes the class;
2. on the head, only the rows of the forgotten labels may be selected (:func:`forget_rows_only`): retained
   rows are left bit-identical;
3. dampened head rows shrink toward the **ranked-last reference** (:func:`ranked_last_reference`), not toward 0:
   the retained rows' mean weight with a bias below every retained logit for features up to twice the norm the
   model's own head FIM implies. A softmax head is only defined up to adding one vector to every row; toward 0 a
   forgotten logit still wins whenever the other logits are negative, and toward the retained rows' *mean* (the
   rule before issue 16) it sits between the retained logits and stays the runner-up where few are retained;
4. a forgotten head row that the unlearning FIM reaches goes **whole** to that reference (``whole_rows``,
   ``DEFAULT_WHOLE_ROWS``): for a retained sample the loss gradient on a forgotten logit always pushes it down,
   so the retain FIM of a forgotten row is no reason to keep one of its entries, and entry by entry a bias left
   unselected kept the class ranked 2nd (docs/method.md section 9). ``alpha = 1``, ``lam = 0.01`` still select
   and dampen the entries of other layers and of sample-wise forgets (``lam = 1``, the paper's value, missed the
   4-class targets).

These defaults assume FIMs from the ``normalized`` per-sample estimator (each sample's squared gradient
divided by its squared norm over the unlearnable layers, see :func:`fiun_hub.fisher.normalized_head_fisher`): such FIMs sum to
1 over the layers for every model, so an origin's unlearning FIM is on the same scale as any descendant's
model FIM. With the plain empirical Fisher, whose scale follows each model's training loss (three orders of
magnitude across one DAG in the benchmark), no single ``alpha`` fits every descendant.

A sample-wise forget (no label rows to restrict to) runs :func:`sample_forget_update` instead: the samples' FIM
against :func:`samplewise_reference_fim` (the model's own class FIMs mixed over the samples' labels, counts from
the forget record), with a budget of ``SAMPLE_TOPK`` head entries (:func:`top_ratio_only`), toward 0
(docs/method.md section 10; the model-FIM comparison before it cost 14-41 held-out points).

:func:`dampen` alone, with ``reference=None`` and ``alpha=1, lam=1``, is the paper's rule (SSD's
``modify_weight``): where ``M > alpha * F``, ``theta <- theta * min((lam * F / M) ** exponent, 1)``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from .errors import UnlearnError
from .fisher import normalized_head_fisher  # the default estimator lives in fisher.py (re-exported for old callers)

Fim = dict[str, torch.Tensor]

#: chosen defaults (docs/method.md): one alpha / lambda for every scenario
DEFAULT_ALPHA = 1.0
DEFAULT_LAMBDA = 0.01
DEFAULT_EXPONENT = 1.0
#: sample-wise defaults (``benchmarks/ablation_samplewise.py``, docs/method.md section 10): compared against the
#: class-mix FIM (:func:`samplewise_reference_fim`); only the SAMPLE_TOPK head entries of the samples' label rows
#: where the samples weigh most over their classes' average can be selected
SAMPLE_ALPHA = 1.0
SAMPLE_LAMBDA = 0.01
SAMPLE_TOPK = 20
#: where dampened forgotten head rows (and the inert rows of earlier forgets) are sent: :func:`ranked_last_reference`
DEFAULT_REFERENCE_RULE = "ranked-last"
#: the ranked-last reference's bias margin, in units of ``||w_k - w_ref|| * (the features' RMS norm)``
DEFAULT_RANK_MARGIN = 2.0
REFERENCE_RULES = ("ranked-last", "elementwise-min", "retained-mean")
#: class-wise: a forgotten head row that the forget data reach is set to its reference as a whole
#: (:func:`whole_rows_stacked`, docs/method.md section 1), not entry by entry
DEFAULT_WHOLE_ROWS = True


# --------------------------------------------------------------------------------------------------- the update, stacked
# The formulas of the update, each written once, over *stacks*: the leading dimension indexes models, so a single
# model is a stack of one (``t[None]``), and their composition, written once too (:func:`forget_update_stacked`).
# The per-repo functions below (:func:`class_forget_update`, :func:`sample_forget_update`, :func:`dampen`,
# :func:`anchor_inert_rows`, :func:`retain_fim`, :func:`ranked_last_reference`, ...) check their inputs and call
# these on a stack of one; :func:`fiun_hub.executors.dampen_group` calls :func:`forget_update_stacked` on the
# stacked tensors of many repos with the same head shape (one set of operations per parameter name, on any device).
# Elementwise, or reducing along the row dimension only, so a model's result does not depend on what else is in its
# stack.


def nonneg64(t: torch.Tensor) -> torch.Tensor:
    """float64, on ``t``'s device, with NaN -> 0 and negatives -> 0 (+Inf kept: it means "infinitely important")."""
    t = t.to(torch.float64)
    t = torch.where(torch.isnan(t), torch.zeros_like(t), t)
    return t.clamp_min(0.0)


def retain_fim_stacked(fm: torch.Tensor, totals: torch.Tensor,
                       drops: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``(N F_m - sum_c n_c F_c) / (N - sum_c n_c)``, clamped at 0, float32 (:func:`retain_fim`), per model of a
    stack. ``fm``: (B, ...) model FIMs through :func:`nonneg64`; ``totals``: (B,) float64 sample counts N;
    ``drops``: per dropped class, ``(n_c`` (B,) float64, ``F_c`` (B, ...) through :func:`nonneg64`). No drops:
    ``fm`` as float32."""
    if not drops:
        return fm.float()
    bshape = (fm.shape[0],) + (1,) * (fm.ndim - 1)
    acc = totals.reshape(bshape) * fm
    n_drop = torch.zeros_like(totals)
    for nc, fc in drops:
        n_drop = n_drop + nc
        acc -= nc.reshape(bshape) * fc
    return (acc / (totals - n_drop).reshape(bshape)).clamp_min(0.0).float()


def _row_mask(mask: Sequence[bool], like: torch.Tensor) -> torch.Tensor:
    """``mask`` (one flag per head row) shaped to broadcast over a stack ``like`` of (B, rows, ...)."""
    return torch.tensor(list(mask), dtype=torch.bool, device=like.device).reshape(
        (1, len(mask)) + (1,) * (like.ndim - 2))


def forget_rows_stacked(m: torch.Tensor, forget_mask: Sequence[bool]) -> torch.Tensor:
    """A stack of head MFIMs (B, rows, ...) with the rows not flagged in ``forget_mask`` set to 0."""
    return torch.where(_row_mask(forget_mask, m), m, torch.zeros_like(m))


def row_mean_stacked(p: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """float64 mean of the rows ``keep`` (long indices) of each model of a stack (B, rows, ...): (B, 1, ...)."""
    return p.to(torch.float64).index_select(1, keep).mean(1, keepdim=True)


def dampen_stacked(p: torch.Tensor, f: torch.Tensor, m: torch.Tensor, *, alpha: float, lam: float,
                   exponent: float = DEFAULT_EXPONENT, reference: torch.Tensor | None = None,
                   floor: float = 0.0) -> torch.Tensor:
    """Selection and dampening, elementwise (:func:`dampen` says the rule and its guards); any shape, so a stack
    too. ``p``: parameters (finite); ``f``: the FIM compared against; ``m``: the MFIM; ``reference``: where a
    selected element shrinks to (default 0); ``floor``: the least ``beta`` (0: none, the class-wise rule).
    Returns a new tensor in ``p``'s dtype: selected elements moved, the others bit-identical."""
    m, f = m.to(torch.float64), f.to(torch.float64)
    theta = p.to(torch.float64)
    valid = ~(torch.isnan(m) | torch.isnan(f) | (m < 0) | (f < 0) | torch.isinf(f))
    sel = valid & (m > alpha * f)
    ratio = torch.where(torch.isinf(m) | (f == 0), torch.zeros_like(m),
                        (lam * f) / torch.where(m > 0, m, torch.ones_like(m)))
    beta = ratio.pow(exponent).clamp(0.0, 1.0)
    beta = torch.where(torch.isfinite(beta), beta, torch.zeros_like(beta))
    if floor > 0:  # skipped at 0, so that the class-wise update runs exactly the operations it always ran
        beta = beta.clamp_min(float(floor))
    if reference is not None:
        r = reference.to(torch.float64)
        moved = r + beta * (theta - r)
    else:
        moved = beta * theta
    return torch.where(sel, moved.to(p.dtype), p)


def anchor_rows_stacked(new: torch.Tensor, rows: Sequence[int], keep: torch.Tensor,
                        reference: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of a stack of heads (B, rows, ...) whose ``rows`` are set to ``reference`` (B, 1, ...), by default
    the mean of the rows ``keep`` (:func:`anchor_inert_rows`)."""
    ref = row_mean_stacked(new, keep) if reference is None else reference
    out = new.clone()
    out[:, list(rows)] = ref.expand((new.shape[0], len(rows)) + tuple(new.shape[2:])).to(new.dtype)
    return out


def reached_rows_stacked(ms: Sequence[torch.Tensor], forget_mask: Sequence[bool]) -> torch.Tensor:
    """(B, rows) bool: the rows flagged in ``forget_mask`` whose unlearning-FIM entries, over every head parameter
    (``ms``: one stack (B, rows, ...) per head parameter), sum to more than 0 (:func:`nonneg64`: NaN and negatives
    count as 0, +Inf as reached): the forgotten rows that the forget data reach."""
    b, rows = ms[0].shape[0], ms[0].shape[1]
    tot = torch.zeros((b, rows), dtype=torch.float64, device=ms[0].device)
    for m in ms:
        tot = tot + nonneg64(m).reshape(b, rows, -1).sum(-1)
    return (tot > 0) & _row_mask(forget_mask, tot)


def whole_rows_stacked(new: torch.Tensor, reference: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
    """A stack of head parameters ``new`` (B, rows, ...) with the ``reached`` rows ((B, rows) bool,
    :func:`reached_rows_stacked`) set to ``reference`` (broadcast to ``new``, e.g. (B, 1, ...)), in ``new``'s
    dtype; other rows bit-identical.

    Why whole rows: on a forgotten row ``k`` every retained sample's loss gradient w.r.t. the logit ``z_k`` is
    ``p_k >= 0`` (it only ever pushes ``z_k`` down), so the retain FIM of that row measures how much the retained
    data want the class's logit *lower*, never a reason to keep an entry of it; compared entry by entry with the
    unlearning FIM it still left entries (a bias, part of the weights) where they were, and the half-moved logit
    kept the class ranked 2nd. Set whole to the ranked-last reference, the row's logit is below every retained
    logit for every feature vector within ``margin * R`` (:func:`ranked_last_reference`), which is also where a
    later forget puts it as an inert row (:func:`anchor_inert_rows`)."""
    sel = reached.reshape(tuple(reached.shape) + (1,) * (new.ndim - 2))
    return torch.where(sel, reference.to(new.dtype).expand_as(new), new)


def head_weight_bias(shapes: Mapping[str, Sequence[int]], rows: int) -> tuple[str, str] | None:
    """The names of a head's weight (rows, D, ...) and bias (rows,) among the head parameters ``shapes`` (name ->
    shape of ONE model, not a stack), or None unless there is exactly one of each (then no ranked-last reference:
    the retained mean is used)."""
    ws = [n for n, s in shapes.items() if len(s) >= 2 and s[0] == rows]
    bs = [n for n, s in shapes.items() if len(s) == 1 and s[0] == rows]
    return (ws[0], bs[0]) if len(ws) == 1 and len(bs) == 1 and len(shapes) == 2 else None


def feature_norm_stacked(fw: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Per model of a stack, the root of ``sum F_w / sum F_b`` (float64, (B,)): from a head FIM of any per-sample
    squared-gradient estimator, a weighted root mean square of the norm of the penultimate features. Per sample,
    the squared gradient of weight ``(k, j)`` is ``e_k^2 h_j^2 s`` and of bias ``k`` is ``e_k^2 s`` (``e`` the
    softmax error, ``s`` the estimator's per-sample scale: 1, or ``1 / ||g||^2`` for ``normalized``), so the ratio
    is ``E[w ||h||^2] / E[w]`` with ``w = s ||e||^2 >= 0``. 0 where it cannot be estimated (no bias FIM)."""
    b = fw.shape[0]
    sw = nonneg64(fw).reshape(b, -1).sum(1)
    sb = nonneg64(fb).reshape(b, -1).sum(1)
    r = torch.where(sb > 0, sw / torch.where(sb > 0, sb, torch.ones_like(sb)), torch.zeros_like(sb)).sqrt()
    return torch.where(torch.isfinite(r), r, torch.zeros_like(r))


def ranked_last_stacked(w: torch.Tensor, b: torch.Tensor, keep: torch.Tensor, feature_norm: torch.Tensor | None,
                        *, rule: str, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference rows (weight (B, 1, ...), bias (B, 1), float64) of :func:`ranked_last_reference` for a stack
    of heads ``w`` (B, rows, ...) / ``b`` (B, rows), the retained rows ``keep`` and the models' feature norms
    (:func:`feature_norm_stacked`; None: 0)."""
    bsz = w.shape[0]
    wk = w.to(torch.float64).index_select(1, keep)
    bk = b.to(torch.float64).index_select(1, keep)
    if rule == "retained-mean":
        return wk.mean(1, keepdim=True), bk.mean(1, keepdim=True)
    if rule == "elementwise-min":  # w_ref . h <= w_k . h for every h >= 0
        return wk.min(1, keepdim=True).values, bk.min(1, keepdim=True).values
    if rule != "ranked-last":
        raise UnlearnError(f"unknown reference rule {rule!r}")
    wref = wk.mean(1, keepdim=True)
    spread = (wk - wref).reshape(bsz, wk.shape[1], -1).pow(2).sum(-1).sqrt()  # (B, K): ||w_k - w_ref||
    fn = torch.zeros(bsz, dtype=torch.float64, device=w.device) if feature_norm is None \
        else feature_norm.to(torch.float64).reshape(bsz)
    bref = (bk - float(margin) * fn[:, None] * spread).min(1, keepdim=True).values
    return wref, bref


# --------------------------------------------------------------------------------------------------- the update, composed


class PerName(Mapping[str, torch.Tensor]):
    """A mapping of parameter names whose tensors are computed when read (``fn(name)``) and not kept, so that an
    update over many parameters holds one parameter's inputs at a time (:func:`forget_update_stacked` reads each
    non-head parameter's inputs once)."""

    def __init__(self, names: Iterable[str], fn: Callable[[str], torch.Tensor]):
        self._names = list(dict.fromkeys(names))
        self._have = set(self._names)
        self._fn = fn

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._have:
            raise KeyError(name)
        return self._fn(name)

    def __contains__(self, name: object) -> bool:
        return name in self._have

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _rule_and_margin(rule: str | None, margin: float | None) -> tuple[str, float]:
    """The reference rule and rank margin, defaults filled in; :class:`UnlearnError` on an unknown rule or a margin
    that is not a finite number >= 0."""
    rule = DEFAULT_REFERENCE_RULE if rule is None else rule
    margin = DEFAULT_RANK_MARGIN if margin is None else margin
    if rule not in REFERENCE_RULES:
        raise UnlearnError(f"unknown reference rule {rule!r} (one of {', '.join(REFERENCE_RULES)})")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise UnlearnError(f"margin must be a finite number >= 0, got {margin!r}")
    return rule, margin


def reference_rows_stacked(heads: Mapping[str, torch.Tensor], keep: torch.Tensor,
                           model_fim: Mapping[str, torch.Tensor] | None = None, *, rule: str | None = None,
                           margin: float | None = None) -> dict[str, torch.Tensor]:
    """Each head parameter's reference row (B, 1, ...), float64, for a stack of heads (``heads``: name -> (B, rows,
    ...), every head parameter) and the retained rows ``keep`` (long indices): the ranked-last row of
    :func:`ranked_last_stacked` when the head is one weight and one bias (:func:`head_weight_bias`; the features'
    norm from ``model_fim``, the models' own head FIM stacks, where it has both with the heads' shapes), else, or
    for ``rule="retained-mean"``, the retained rows' mean (:func:`row_mean_stacked`). The rule of
    :func:`ranked_last_reference`, which is this on a stack of one; raises :class:`UnlearnError` on an unknown
    rule or a bad margin."""
    rule, margin = _rule_and_margin(rule, margin)
    rows = next(iter(heads.values())).shape[1] if heads else 0
    pair = head_weight_bias({n: tuple(t.shape[1:]) for n, t in heads.items()}, rows)
    if rule == "retained-mean" or pair is None:
        return {n: row_mean_stacked(t, keep) for n, t in heads.items()}
    wn, bn = pair
    w, b = heads[wn], heads[bn]
    fn = None
    if model_fim is not None and wn in model_fim and bn in model_fim \
            and tuple(model_fim[wn].shape) == tuple(w.shape) and tuple(model_fim[bn].shape) == tuple(b.shape):
        fn = feature_norm_stacked(model_fim[wn], model_fim[bn])
    wref, bref = ranked_last_stacked(w, b, keep, fn, rule=rule, margin=margin)
    return {wn: wref, bn: bref}


def dampen_params_stacked(params: Mapping[str, torch.Tensor], model_fim: Mapping[str, torch.Tensor],
                          mfim: Mapping[str, torch.Tensor], *, alpha: float = DEFAULT_ALPHA,
                          lam: float = DEFAULT_LAMBDA, exponent: float = DEFAULT_EXPONENT,
                          reference: Mapping[str, torch.Tensor] | None = None, floor: float = 0.0) -> Fim:
    """:func:`dampen` on stacks: every tensor (B, ...) (``reference`` too, already expanded to its parameter's
    shape), same checks and errors (shapes in messages are one model's), no device moves. Parameters not in
    ``mfim`` are returned as they are (the same tensors)."""
    for name, val in (("alpha", alpha), ("lam", lam), ("exponent", exponent)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
            raise UnlearnError(f"{name} must be a finite number >= 0, got {val!r}")
    if exponent == 0:
        raise UnlearnError("exponent must be > 0")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= float(floor) <= 1.0:
        raise UnlearnError(f"floor must be a number in [0, 1], got {floor!r}")
    out: Fim = {}
    for n, p in params.items():
        if n not in mfim:
            out[n] = p
            continue
        if n not in model_fim:
            raise UnlearnError(f"the model FIM lacks {n}, which the unlearning FIM covers")
        m, f = mfim[n], model_fim[n]
        if m.shape != p.shape or f.shape != p.shape:
            raise UnlearnError(f"{n}: parameter {tuple(p.shape[1:])}, model FIM {tuple(f.shape[1:])}, "
                               f"unlearning FIM {tuple(m.shape[1:])}")
        if not bool(torch.isfinite(p).all()):
            raise UnlearnError(f"parameter {n} holds non-finite values")
        r = None
        if reference is not None and n in reference:
            r = reference[n]
            if r.shape != p.shape:
                raise UnlearnError(f"reference of {n} is {tuple(r.shape[1:])}, parameter {tuple(p.shape[1:])}")
            if not bool(torch.isfinite(r).all()):
                raise UnlearnError(f"reference of {n} holds non-finite values")
        out[n] = dampen_stacked(p, f, m, alpha=alpha, lam=lam, exponent=exponent, reference=r, floor=floor)
    return out


def _check_rows_stacked(name: str, t: torch.Tensor, k: int) -> None:
    """:func:`_check_rows` for one model of a stack (B, rows, ...)."""
    if t.ndim <= 1 or t.shape[1] != k:
        raise UnlearnError(f"head parameter {name} has {tuple(t.shape)[1:2] or 'no'} rows but {k} labels")


def anchor_inert_stacked(params: Mapping[str, torch.Tensor], head: Sequence[str], inert: Sequence[bool],
                         forgotten: Sequence[bool], model_fim: Mapping[str, torch.Tensor] | None = None, *,
                         rule: str | None = None, margin: float | None = None) -> Fim:
    """``params`` (stacks (B, ...)) with the head rows flagged in ``inert`` (forgotten by earlier requests) set to
    the reference row (:func:`reference_rows_stacked`) of the retained rows (flagged neither in ``inert`` nor in
    ``forgotten``) of ``params`` itself (the updated head): such a row ranks below the retained rows, whatever the
    update did to them. ``head``: the head parameters (all in ``params``). Others are returned as they are;
    nothing flagged in ``inert``: ``params`` as it is. :func:`anchor_inert_rows` is this on a stack of one."""
    rows = [i for i, a in enumerate(inert) if a]
    if not rows:
        return dict(params)
    kept = [i for i, (a, f) in enumerate(zip(inert, forgotten)) if not a and not f]
    if not kept:
        raise UnlearnError("every label of the model is forgotten; nothing to keep")
    for n in head:
        _check_rows_stacked(n, params[n], len(inert))
    keep = torch.tensor(kept, dtype=torch.long, device=params[head[0]].device if head else None)
    refs = reference_rows_stacked({n: params[n] for n in head}, keep, model_fim, rule=rule, margin=margin)
    out = dict(params)
    for n in head:
        p = params[n]
        out[n] = anchor_rows_stacked(p, rows, keep, refs[n].to(p.dtype).to(torch.float64))
    return out


def forget_update_stacked(
    params: Mapping[str, torch.Tensor],
    model_fim: Mapping[str, torch.Tensor],
    mfim: Mapping[str, torch.Tensor],
    head: Sequence[str],
    forgotten: Sequence[bool],
    inert: Sequence[bool] = (),
    *,
    against: Mapping[str, torch.Tensor] | None = None,
    totals: torch.Tensor | None = None,
    drops: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]] = (),
    alpha: float = DEFAULT_ALPHA,
    lam: float = DEFAULT_LAMBDA,
    exponent: float = DEFAULT_EXPONENT,
    use_retain_fim: bool = True,
    forget_rows: bool = True,
    mean_reference: bool = True,
    reference_rule: str | None = None,
    margin: float | None = None,
    whole_rows: bool = DEFAULT_WHOLE_ROWS,
) -> Fim:
    """THE FIUn update of B models at once, written once: :func:`class_forget_update` and
    :func:`sample_forget_update` run it on a stack of one, :func:`fiun_hub.executors.dampen_group` on the stacked
    tensors of many repos. Every tensor is a stack (B, ...) of models that share parameter names and shapes and the
    per-row flags below (their labels may differ; their values too). Returns the new stacks, one per name of
    ``params`` (a parameter the update does not touch: the same tensor as given).

    ``params``: the unlearnable parameters; ``model_fim``: the models' own model FIMs, as stored; ``mfim``: the
    merged unlearning FIMs aligned to each model's rows (names within ``params``); ``head``: the head parameters
    among ``params`` (one row per label); ``forgotten`` / ``inert``: per head row, whether its label is forgotten
    now / was forgotten by an earlier request (empty: no head rows are flagged). The steps (the module docstring,
    docs/method.md):

    1. the FIM compared against: ``against`` when given (the sample-wise class-mix FIM), else the retain FIM
       (:func:`retain_fim_stacked` of ``model_fim``, ``totals`` (B,) float64 sample counts and ``drops``, one
       ``(n_c (B,) float64, {name: F_c (B, ...)})`` per class with training samples taken out) with
       ``use_retain_fim``, else ``model_fim`` as it is;
    2. with a forgotten row and ``forget_rows``: on the head only the forgotten rows of the MFIM are kept
       (:func:`forget_rows_stacked`);
    3. with a forgotten row, ``mean_reference`` and a retained row (neither forgotten nor inert): dampened head
       rows move toward the reference row of the retained rows (:func:`reference_rows_stacked`, ``reference_rule``
       / ``margin``); else toward 0;
    4. selection and dampening (:func:`dampen_params_stacked`, ``alpha`` / ``lam`` / ``exponent``);
    5. with that reference and ``whole_rows``: the forgotten rows the MFIM reaches are set to it whole
       (:func:`reached_rows_stacked`, :func:`whole_rows_stacked`);
    6. with an inert row and a retained row: the inert rows are set to the reference row of the UPDATED head's
       retained rows (:func:`anchor_inert_stacked`), so that no later forget can make such a class win again."""
    head = [n for n in head if n in params]
    forgotten = [bool(v) for v in forgotten]
    inert = [bool(v) for v in inert] or [False] * len(forgotten)
    if len(inert) != len(forgotten):
        raise UnlearnError(f"{len(forgotten)} forgotten-row flags but {len(inert)} inert-row flags")
    kept = [i for i, (f, a) in enumerate(zip(forgotten, inert)) if not f and not a]
    if against is not None:
        f_cmp: Mapping[str, torch.Tensor] = against
    elif use_retain_fim:
        if drops and totals is None:
            raise UnlearnError("the retain FIM needs the models' total sample counts (totals)")
        tot = torch.zeros(0, dtype=torch.float64) if totals is None else totals  # read only with drops
        f_cmp = PerName([n for n in model_fim if n in mfim], lambda n: retain_fim_stacked(
            nonneg64(model_fim[n]), tot, [(nc, nonneg64(fc[n])) for nc, fc in drops]))
    else:
        f_cmp = model_fim
    head_m: dict[str, torch.Tensor] = {}  # the head's MFIM, rows restricted; other parameters' as given
    known = any(forgotten) and bool(head)
    if known and forget_rows:
        for n in head:
            if n in mfim:
                head_m[n] = mfim[n]
                _check_rows_stacked(n, head_m[n], len(forgotten))
                head_m[n] = forget_rows_stacked(head_m[n], forgotten)
    m = PerName(mfim, lambda n: head_m[n] if n in head_m else mfim[n])
    ref = None
    if known and mean_reference and kept:
        heads = {n: params[n] for n in head}
        rule = DEFAULT_REFERENCE_RULE if reference_rule is None else reference_rule
        if rule not in REFERENCE_RULES:  # checked before the rows, as ever
            raise UnlearnError(f"unknown reference rule {rule!r} (one of {', '.join(REFERENCE_RULES)})")
        for n in head:
            _check_rows_stacked(n, params[n], len(forgotten))
        keep = torch.tensor(kept, dtype=torch.long, device=params[head[0]].device)
        refs = reference_rows_stacked(heads, keep, model_fim, rule=rule, margin=margin)
        ref = {n: r.to(heads[n].dtype).expand_as(heads[n]) for n, r in refs.items()}
    out = dampen_params_stacked(params, f_cmp, m, alpha=alpha, lam=lam, exponent=exponent, reference=ref)
    reach = [n for n in head if n in m]
    if whole_rows and ref is not None and reach:
        reached = reached_rows_stacked([m[n] for n in reach], forgotten)
        for n in reach:
            out[n] = whole_rows_stacked(out[n], ref[n], reached)
    if any(inert) and head and kept:
        out = anchor_inert_stacked(out, head, inert, forgotten, model_fim, rule=reference_rule, margin=margin)
    return out


# --------------------------------------------------------------------------------------------------- FIMs


def _finite_nonneg(t: torch.Tensor) -> torch.Tensor:
    """float64 copy on the CPU with NaN -> 0 and negatives -> 0 (:func:`nonneg64`)."""
    return nonneg64(t.detach().to("cpu"))


def unlearning_fim(
    class_fims: Mapping[str, Mapping[str, torch.Tensor]], counts: Mapping[str, int], classes: Sequence[str]
) -> Fim:
    """The unlearning FIM of a class-wise forget: ``sum_c n_c F_c / sum_c n_c`` over ``classes``
    (DESIGN.md section 5.3), from an origin's per-class sidecar. float32 out.

    Every class must have a class FIM and a positive count (else :class:`UnlearnError`).

    >>> f = {"a": {"w": torch.tensor([1.0])}, "b": {"w": torch.tensor([4.0])}}
    >>> unlearning_fim(f, {"a": 3, "b": 1}, ["a", "b"])["w"].tolist()
    [1.75]
    """
    classes = list(dict.fromkeys(str(c) for c in classes))
    if not classes:
        raise UnlearnError("no classes to forget")
    missing = [c for c in classes if c not in class_fims or int(counts.get(c, 0)) <= 0]
    if missing:
        raise UnlearnError(f"the origin has no class FIM (or no training sample) for {missing}")
    names = list(class_fims[classes[0]].keys())
    for c in classes[1:]:
        if set(class_fims[c].keys()) != set(names):
            raise UnlearnError(f"class FIMs of {classes[0]!r} and {c!r} cover different parameters")
    total = float(sum(int(counts[c]) for c in classes))
    out: Fim = {}
    for n in names:
        ref_shape = class_fims[classes[0]][n].shape
        acc = torch.zeros(ref_shape, dtype=torch.float64)
        for c in classes:
            t = class_fims[c][n]
            if t.shape != ref_shape:
                raise UnlearnError(f"class FIM {n}@{c} has shape {tuple(t.shape)}, expected {tuple(ref_shape)}")
            acc += int(counts[c]) * _finite_nonneg(t)
        out[n] = (acc / total).float()
    return out


def samplewise_reference_fim(
    model_fim: Mapping[str, torch.Tensor],
    class_fims: Mapping[str, Mapping[str, torch.Tensor]],
    counts: Mapping[str, int],
    forgotten_counts: Mapping[str, int],
) -> Fim:
    """What a sample-wise forget compares its unlearning FIM against in one model: the mix of the model's own class
    FIMs over the labels the forgotten samples carry, weighted by how many forgotten samples carry each,
    ``sum_c k_c F_c / sum_c k_c`` (``k_c = forgotten_counts[c]``, only labels the model has a class FIM and a
    training sample of). That is what samples *of those classes* weigh on average in this model, so only entries
    where the forgotten samples weigh more than their classes' typical samples can be selected; against the model
    FIM (all classes) every entry of those classes' rows would be. Data-free: ``forgotten_counts`` is the per-label
    count the forget record's sample fingerprint holds. None of the labels here: ``model_fim`` as is (float32).

    >>> f = {"a": {"w": torch.tensor([1.0])}, "b": {"w": torch.tensor([4.0])}}
    >>> samplewise_reference_fim({"w": torch.tensor([9.0])}, f, {"a": 5, "b": 5}, {"a": 1, "b": 3})["w"].tolist()
    [3.25]
    """
    have = {str(c): int(k) for c, k in forgotten_counts.items()
            if int(k) > 0 and str(c) in class_fims and int(counts.get(str(c), 0)) > 0}
    if not have:
        return {n: _finite_nonneg(t).float() for n, t in model_fim.items()}
    mix = unlearning_fim(class_fims, have, list(have))
    missing = [n for n in model_fim if n not in mix]
    if missing:
        raise UnlearnError(f"the class FIMs lack {missing}, which the model FIM covers")
    return {n: mix[n] for n in model_fim}


def retain_fim(
    model_fim: Mapping[str, torch.Tensor],
    class_fims: Mapping[str, Mapping[str, torch.Tensor]],
    counts: Mapping[str, int],
    forget: Sequence[str],
) -> Fim:
    """A model's FIM over its training data *without* the ``forget`` classes, from its own sidecars:
    ``(N F_m - sum_{c in forget} n_c F_c) / (N - sum n_c)`` with ``N = sum of all counts``; exact for the
    per-sample estimators (whose model FIM is the count-weighted mean of the class FIMs), clamped at 0
    against rounding. Forget classes the model has no sample of are skipped (then it is ``F_m`` itself).

    >>> fm = {"w": torch.tensor([2.5])}
    >>> retain_fim(fm, {"a": {"w": torch.tensor([1.0])}, "b": {"w": torch.tensor([4.0])}}, {"a": 1, "b": 1}, ["b"])["w"].tolist()
    [1.0]
    """
    total, drop = _retain_drops(model_fim, class_fims, counts, forget)
    if not drop:
        return {n: _finite_nonneg(t).float() for n, t in model_fim.items()}
    out: Fim = {}
    totals = torch.tensor([float(total)], dtype=torch.float64)
    for n, t in model_fim.items():
        drops = [(torch.tensor([float(int(counts[c]))], dtype=torch.float64), _finite_nonneg(class_fims[c][n])[None])
                 for c in drop]
        out[n] = retain_fim_stacked(_finite_nonneg(t)[None], totals, drops)[0]
    return out


def _retain_drops(
    model_fim: Mapping[str, torch.Tensor],
    class_fims: Mapping[str, Mapping[str, torch.Tensor]],
    counts: Mapping[str, int],
    forget: Sequence[str],
) -> tuple[int, list[str]]:
    """The checks of :func:`retain_fim` (same errors, same order): its total sample count and the forget classes
    with training samples that it takes out (none: the retain FIM is the model FIM)."""
    total = sum(int(v) for v in counts.values())
    drop = [c for c in dict.fromkeys(str(c) for c in forget) if int(counts.get(c, 0)) > 0]
    missing = [c for c in drop if c not in class_fims]
    if missing:
        raise UnlearnError(f"the retain FIM needs the class FIMs of {missing} (fim-classes sidecar)")
    if not drop:
        return total, drop
    if total - sum(int(counts[c]) for c in drop) <= 0:
        raise UnlearnError(f"forgetting {list(forget)} leaves no retained training sample")
    for n, t in model_fim.items():
        for c in drop:
            if n not in class_fims[c] or class_fims[c][n].shape != t.shape:
                raise UnlearnError(f"class FIM {n}@{c} is missing or shaped unlike the model FIM")
    return total, drop


def _check_rows(name: str, t: torch.Tensor, k: int) -> None:
    """A head parameter must have one row per label."""
    if t.ndim == 0 or t.shape[0] != k:
        raise UnlearnError(f"head parameter {name} has {tuple(t.shape)[:1] or 'no'} rows but {k} labels")


def align_rows(
    fim: Mapping[str, torch.Tensor], from_labels: Sequence[str], to_labels: Sequence[str], head_params: Sequence[str]
) -> Fim:
    """Re-index the head parameters of ``fim`` (first dim = label rows) from ``from_labels`` to ``to_labels``
    by label name: row ``i`` of the result is the source row of label ``to_labels[i]``, or zeros when the
    source has no such label (a gained label: nothing of it to forget). Other parameters are copied and must
    already match the target in shape (the caller checks against the target model); a head parameter whose
    first dim is not ``len(from_labels)`` raises :class:`UnlearnError`.

    >>> f = {"fc.bias": torch.tensor([1.0, 2.0, 3.0])}
    >>> align_rows(f, ["a", "b", "c"], ["c", "x", "a"], ["fc.bias"])["fc.bias"].tolist()
    [3.0, 0.0, 1.0]
    """
    src, dst = [str(v) for v in from_labels], [str(v) for v in to_labels]
    if len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise UnlearnError("label lists must not repeat a label")
    pos = {lab: i for i, lab in enumerate(src)}
    index = torch.tensor([pos.get(lab, -1) for lab in dst], dtype=torch.long)
    have = index >= 0
    head = set(head_params)
    out: Fim = {}
    for n, t in fim.items():
        if n in head:
            _check_rows(n, t, len(src))
            new = torch.zeros((len(dst), *t.shape[1:]), dtype=t.dtype)
            if bool(have.any()):
                new[have] = t[index[have]]
            out[n] = new
        else:
            out[n] = t.detach().clone()
    return out


def check_shapes(fim: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], what: str = "FIM") -> None:
    """Raise :class:`UnlearnError` unless every tensor of ``fim`` names a parameter of the same shape."""
    for n, t in fim.items():
        if n not in params:
            raise UnlearnError(f"{what} covers {n}, which the model does not have")
        if tuple(t.shape) != tuple(params[n].shape):
            raise UnlearnError(f"{what} of {n} is {tuple(t.shape)} but the parameter is {tuple(params[n].shape)}")


def merge_fims(fims: Sequence[Mapping[str, torch.Tensor]], scale_per_extra_origin: float = 1.0) -> Fim:
    """MFIM: the element-wise maximum of several (aligned) unlearning FIMs; a parameter present in only some
    of them takes the max over those. ``scale_per_extra_origin = c`` divides the result by ``c ** (K - 1)``
    for K FIMs (the paper code's ad hoc knob, c = 5 there; 1 = off, the default).

    >>> a, b = {"w": torch.tensor([1.0, 5.0])}, {"w": torch.tensor([3.0, 2.0])}
    >>> merge_fims([a, b])["w"].tolist()
    [3.0, 5.0]
    """
    if not fims:
        raise UnlearnError("nothing to merge: no unlearning FIM")
    if not (isinstance(scale_per_extra_origin, (int, float)) and math.isfinite(scale_per_extra_origin)
            and scale_per_extra_origin > 0):
        raise UnlearnError(f"scale_per_extra_origin must be a positive number, got {scale_per_extra_origin!r}")
    out: dict[str, torch.Tensor] = {}
    for f in fims:
        for n, t in f.items():
            t = _finite_nonneg(t)
            if n not in out:
                out[n] = t
            else:
                if out[n].shape != t.shape:
                    raise UnlearnError(f"cannot merge FIMs of {n}: shapes {tuple(out[n].shape)} and {tuple(t.shape)}")
                out[n] = torch.maximum(out[n], t)
    div = float(scale_per_extra_origin) ** (len(fims) - 1)
    return {n: (t / div).float() for n, t in out.items()}


# --------------------------------------------------------------------------------------------------- head helpers


def forget_rows_only(
    mfim: Mapping[str, torch.Tensor], labels: Sequence[str], forget: Sequence[str], head_params: Sequence[str]
) -> Fim:
    """Zero the head rows of ``mfim`` that belong to retained labels, so that on the head only the rows of the
    forgotten labels can be selected (a zero unlearning FIM never exceeds ``alpha * F``). Other parameters are
    returned unchanged."""
    forget_set = {str(c) for c in forget}
    mask = [str(lab) in forget_set for lab in labels]
    head = set(head_params)
    out: Fim = {}
    for n, t in mfim.items():
        if n in head:
            _check_rows(n, t, len(labels))
            out[n] = forget_rows_stacked(t[None], mask)[0]
        else:
            out[n] = t
    return out


def retained_mean_reference(
    params: Mapping[str, torch.Tensor], labels: Sequence[str], forget: Sequence[str], head_params: Sequence[str]
) -> Fim:
    """For each head parameter, a tensor whose every row is the mean of the retained labels' rows (the
    point a dampened row shrinks toward). Needs at least one retained label. Non-head parameters get no
    reference (they shrink toward 0)."""
    forget_set = {str(c) for c in forget}
    keep = [i for i, lab in enumerate(labels) if str(lab) not in forget_set]
    if not keep:
        raise UnlearnError(f"every label of the model ({list(labels)}) is to be forgotten; nothing to keep")
    idx = torch.tensor(keep, dtype=torch.long)
    out: Fim = {}
    for n in head_params:
        if n not in params:
            raise UnlearnError(f"head parameter {n} is not among the parameters")
        p = params[n].detach()
        if p.ndim == 0 or p.shape[0] != len(labels):
            raise UnlearnError(f"head parameter {n} has {tuple(p.shape)[:1] or 'no'} rows but {len(labels)} labels")
        mean = row_mean_stacked(p[None], idx)[0]
        out[n] = mean.expand_as(p).to(p.dtype).clone()
    return out


def ranked_last_reference(
    params: Mapping[str, torch.Tensor], labels: Sequence[str], drop: Sequence[str], head_params: Sequence[str],
    model_fim: Mapping[str, torch.Tensor] | None = None, *, rule: str | None = None, margin: float | None = None,
) -> Fim:
    """For each head parameter, a tensor whose every row is the reference row that dampened forgotten rows shrink
    toward: a row whose logit ranks below every retained row's (the labels not in ``drop``) on the inputs the model
    sees, so a forgotten class is ranked last, not between the retained ones. Needs at least one retained label.

    ``rule`` (default :data:`DEFAULT_REFERENCE_RULE`):

    - ``"ranked-last"``: weight row ``w_ref`` = the retained rows' mean, bias
      ``b_ref = min_k (b_k - margin * R * ||w_k - w_ref||)``, with ``R`` the features' weighted RMS norm from the
      model's own head FIM (:func:`feature_norm_stacked`). By Cauchy-Schwarz ``w_ref.h + b_ref <= w_k.h + b_k`` for
      every retained ``k`` and every feature vector with ``||h|| <= margin * R``, whatever the signs of ``h``
      (LayerNorm'd features of ConvNeXt / ViT heads included); no FIM of the pair: ``R = 0`` (bias = the lowest
      retained bias);
    - ``"elementwise-min"``: ``w_ref`` = the elementwise minimum of the retained rows, ``b_ref`` = the lowest
      retained bias: exactly ranked last (or tied) for every ``h >= 0`` (post-ReLU pooled features of ResNets),
      not otherwise;
    - ``"retained-mean"``: :func:`retained_mean_reference` (the rule before issue 16: the forgotten logit is the
      average retained logit, between the retained ones).

    Heads that are not one weight (rows, D, ...) and one bias (rows,) get the retained mean."""
    rule, margin = _rule_and_margin(rule, margin)
    mean = retained_mean_reference(params, labels, drop, head_params)  # checks rows and that a label is kept
    pair = head_weight_bias({n: tuple(params[n].shape) for n in head_params}, len(labels))
    if rule == "retained-mean" or pair is None:
        return mean
    drop_set = {str(c) for c in drop}
    keep = torch.tensor([i for i, lab in enumerate(labels) if str(lab) not in drop_set], dtype=torch.long)
    wn, bn = pair
    w, b = params[wn].detach().to("cpu"), params[bn].detach().to("cpu")
    fims = None if model_fim is None else {n: model_fim[n].detach().to("cpu")[None] for n in pair if n in model_fim}
    refs = reference_rows_stacked({wn: w[None], bn: b[None]}, keep, fims, rule=rule, margin=margin)
    out = dict(mean)
    out[wn] = refs[wn][0].expand_as(w).to(w.dtype).clone()
    out[bn] = refs[bn][0].expand_as(b).to(b.dtype).clone()
    return out


# --------------------------------------------------------------------------------------------------- dampening


def dampen(
    params: Mapping[str, torch.Tensor],
    model_fim: Mapping[str, torch.Tensor],
    mfim: Mapping[str, torch.Tensor],
    *,
    alpha: float = DEFAULT_ALPHA,
    lam: float = DEFAULT_LAMBDA,
    exponent: float = DEFAULT_EXPONENT,
    reference: Mapping[str, torch.Tensor] | None = None,
    floor: float = 0.0,
) -> Fim:
    """Selection and dampening (DESIGN.md section 5.5; SSD's ``modify_weight``).

    For every parameter ``n`` in both ``params`` and ``mfim`` (others are returned unchanged, as a clone) and
    every element: selected where ``M > alpha * F`` (``F = model_fim[n]``, ``M = mfim[n]``); a selected
    element moves toward its reference ``r`` (``reference[n]``, default 0):
    ``theta <- r + beta * (theta - r)`` with ``beta = min((lam * F / M) ** exponent, 1)``. With ``r = 0``
    parameters never grow in magnitude; in general they never move away from their reference. ``floor`` in
    [0, 1]: ``beta`` is at least ``floor`` (a selected element keeps at least that share of its distance).

    Guards: NaN in either FIM, negative values and ``F = +Inf`` leave the element unselected (unchanged);
    ``F = 0 < M`` or ``M = +Inf`` give ``beta = 0`` (the element is set to its reference). Elements not
    selected are returned bit-identical. Raises :class:`UnlearnError` on shape mismatches, non-finite
    parameters or references, or bad ``alpha`` / ``lam`` / ``exponent``.
    """
    stacks = {n: _one(p) for n, p in params.items()}
    new = dampen_params_stacked(
        stacks, {n: _one(model_fim[n]) for n in params if n in mfim and n in model_fim},
        {n: _one(mfim[n]) for n in params if n in mfim}, alpha=alpha, lam=lam, exponent=exponent,
        reference=None if reference is None else {n: _one(reference[n]) for n in params if n in mfim and n in reference},
        floor=floor)
    return _unstack(new, stacks, params)


def _one(t: torch.Tensor) -> torch.Tensor:
    """A stack of one: ``t`` on the CPU with a leading dimension of 1 (a view where it already is on the CPU)."""
    return t.detach().to("cpu")[None]


def _unstack(new: Mapping[str, torch.Tensor], stacks: Mapping[str, torch.Tensor],
             params: Mapping[str, torch.Tensor]) -> Fim:
    """One model's tensors from the update of its stack of one (``stacks``: what was given, by :func:`_one`), on
    each parameter's device; a parameter the update did not touch is returned as a copy."""
    return {n: p.detach().clone() if new[n] is stacks[n] else new[n][0].to(p.device) for n, p in params.items()}


def _unkept(labels: Sequence[str], known: Sequence[str], inert: Sequence[str], head: Sequence[str],
            needs: bool) -> None:
    """Labels that repeat can leave no retained head row where the labels' names count one (a card's labels
    never repeat; only a direct call gets here): the error the per-name rule gave."""
    if needs and head and len(known) + len(inert) < len(labels) \
            and all(lab in set(known) or lab in set(inert) for lab in labels):
        raise UnlearnError(f"every label of the model ({list(labels)}) is to be forgotten; nothing to keep")


def class_forget_update(
    params: Mapping[str, torch.Tensor],
    labels: Sequence[str],
    model_fim: Mapping[str, torch.Tensor],
    class_fims: Mapping[str, Mapping[str, torch.Tensor]],
    counts: Mapping[str, int],
    mfim: Mapping[str, torch.Tensor],
    forget: Sequence[str],
    head_params: Sequence[str],
    *,
    alpha: float = DEFAULT_ALPHA,
    lam: float = DEFAULT_LAMBDA,
    exponent: float = DEFAULT_EXPONENT,
    use_retain_fim: bool = True,
    forget_rows: bool = True,
    mean_reference: bool = True,
    inert: Sequence[str] = (),
    reference_rule: str | None = None,
    whole_rows: bool = DEFAULT_WHOLE_ROWS,
) -> Fim:
    """The class-wise FIUn step for one affected model, with the chosen defaults (module docstring).

    ``params``: the model's unlearnable parameters; ``labels``: its head rows; ``model_fim`` /
    ``class_fims`` / ``counts``: ITS OWN sidecars; ``mfim``: the merged unlearning FIM already aligned to
    ``labels`` (:func:`align_rows`, :func:`merge_fims`); ``forget``: the forgotten label names (empty for a
    sample-wise forget). The three switches turn each change back into the paper's behaviour for ablations;
    ``reference_rule`` picks the reference of the dampened and inert rows (:func:`ranked_last_reference`; default
    :data:`DEFAULT_REFERENCE_RULE`, which the batched path always uses). ``whole_rows`` (default, and always on
    the batched path): every forgotten head row that the unlearning FIM reaches is then set to that reference as a
    whole (:func:`whole_rows_stacked`); False: entry by entry, as :func:`dampen` selects (the rule before).

    A class-wise forget of which the model has none of the labels changes nothing at all (retained rows never
    change). ``inert``: labels that earlier forgets removed from this model; their head rows are left out of the
    retained rows and set to the ranked-last reference of the updated head (:func:`anchor_inert_rows`), so that no later
    forget, class-wise or sample-wise, can make such a class win again.
    """
    labels = [str(v) for v in labels]
    forget = [str(c) for c in forget]
    check_shapes(mfim, params, "unlearning FIM")
    check_shapes({n: t for n, t in model_fim.items() if n in mfim}, params, "model FIM")
    known = [c for c in forget if c in labels]
    if forget and not known:  # none of the forgotten labels here: nothing of this model is selectable
        return {n: p.detach().clone() for n, p in params.items()}
    inert_here = [c for c in dict.fromkeys(str(c) for c in inert) if c in labels and c not in known]
    total, drop = _retain_drops(model_fim, class_fims, counts, forget) if use_retain_fim else (0, [])
    head = [n for n in head_params if n in params]
    _unkept(labels, known, inert_here, head, bool(known and mean_reference) or bool(inert_here))
    stacks = {n: _one(p) for n, p in params.items()}
    new = forget_update_stacked(
        stacks, {n: _one(t) for n, t in model_fim.items()}, {n: _one(t) for n, t in mfim.items()}, head,
        [lab in set(known) for lab in labels], [lab in set(inert_here) for lab in labels],
        totals=torch.tensor([float(total)], dtype=torch.float64),
        drops=[(torch.tensor([float(int(counts[c]))], dtype=torch.float64),
                {n: _one(class_fims[c][n]) for n in model_fim if n in mfim}) for c in drop],
        alpha=alpha, lam=lam, exponent=exponent, use_retain_fim=use_retain_fim, forget_rows=forget_rows,
        mean_reference=mean_reference, reference_rule=reference_rule, whole_rows=whole_rows)
    return _unstack(new, stacks, params)


def top_ratio_only(mfim: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], labels: Sequence[str],
                   rows_of: Sequence[str], head_params: Sequence[str], k: int) -> Fim:
    """``mfim`` with every entry set to 0 but the ``k`` largest ``M / F`` (``F``: ``reference``) among the head rows
    of the labels ``rows_of`` (ties at the k-th value all kept); other parameters are zeroed too, so only those
    entries can be selected. float32."""
    want = {str(c) for c in rows_of}
    rows = [i for i, lab in enumerate(labels) if str(lab) in want]
    head = [n for n in head_params if n in mfim]
    ratios = {}
    for n in head:
        m, f = nonneg64(mfim[n].detach().to("cpu")), nonneg64(reference[n].detach().to("cpu"))
        r = torch.where(f > 0, m / torch.where(f > 0, f, torch.ones_like(f)),
                        torch.where(m > 0, torch.full_like(m, math.inf), torch.zeros_like(m)))
        mask = torch.zeros_like(r, dtype=torch.bool)
        if rows:
            mask[rows] = True
        ratios[n] = torch.where(mask & torch.isfinite(m), r, torch.zeros_like(r))
    flat = torch.cat([r.flatten() for r in ratios.values()]) if ratios else torch.zeros(0, dtype=torch.float64)
    thr = torch.topk(flat, min(k, flat.numel())).values[-1] if k > 0 and flat.numel() else math.inf
    out: Fim = {}
    for n, t in mfim.items():
        if n in ratios:
            keep = (ratios[n] >= thr) & (ratios[n] > 0)
            out[n] = torch.where(keep, nonneg64(t.detach().to("cpu")), torch.zeros_like(ratios[n])).float()
        else:
            out[n] = torch.zeros_like(t, dtype=torch.float32)
    return out


def match_mass(mfim: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> Fim:
    """``mfim`` scaled so that its total equals the total of ``reference`` over the entries where ``mfim`` is
    positive (float32). With the ``normalized`` estimator both an origin's FIM of some samples and a model's class
    FIMs sum to 1 over the layers; but aligned to a descendant whose head has rows the origin lacks, the origin's FIM
    puts all of its mass on the shared rows while the descendant's own FIMs also spend some on the others, so
    without this every shared entry would look more important to the samples than it is. On the origin itself the
    scale is about 1. An all-zero ``mfim`` is returned as it is."""
    num = den = 0.0
    for n, t in mfim.items():
        m = nonneg64(t.detach().to("cpu"))
        num += float(torch.where(m > 0, nonneg64(reference[n].detach().to("cpu")), torch.zeros_like(m)).sum())
        den += float(m[torch.isfinite(m)].sum())
    if not (den > 0 and math.isfinite(num) and num > 0):
        return {n: t for n, t in mfim.items()}
    scale = num / den
    return {n: (nonneg64(t.detach().to("cpu")) * scale).float() for n, t in mfim.items()}


def sample_forget_update(
    params: Mapping[str, torch.Tensor],
    labels: Sequence[str],
    model_fim: Mapping[str, torch.Tensor],
    class_fims: Mapping[str, Mapping[str, torch.Tensor]],
    counts: Mapping[str, int],
    mfim: Mapping[str, torch.Tensor],
    forgotten_counts: Mapping[str, int],
    head_params: Sequence[str],
    *,
    alpha: float = SAMPLE_ALPHA,
    lam: float = SAMPLE_LAMBDA,
    inert: Sequence[str] = (),
    topk: int | None = SAMPLE_TOPK,
    mass: bool = False,
) -> Fim:
    """The sample-wise FIUn step for one affected model: :func:`dampen` of ``params`` by ``mfim`` (the origin's
    FIM of the forgotten samples, rows aligned to ``labels``) against :func:`samplewise_reference_fim` of the model's
    OWN sidecars (``model_fim`` / ``class_fims`` / ``counts``) over ``forgotten_counts`` (the forgotten samples'
    count per label name, as the forget record's fingerprint holds them), toward 0, with the sample-wise defaults:
    only the ``topk`` entries of the samples' label rows with the largest ``M / F`` can be selected
    (:func:`top_ratio_only`; None: no such budget). Comparing against the model FIM with no budget (the rule
    before) selects nearly every entry of the samples' label rows and costs 14-40 points of held-out accuracy; the
    class-mix FIM with no budget still selects hundreds of entries and cost up to 9.6 points on a weakly trained
    IL child (docs/method.md section 10). ``mass``: scale ``mfim`` with :func:`match_mass` first (measured, not
    adopted). Rows of ``inert`` labels (removed by
    earlier class-wise forgets) are set to the ranked-last reference afterwards, as :func:`class_forget_update` does."""
    labels = [str(v) for v in labels]
    check_shapes(mfim, params, "unlearning FIM")
    check_shapes({n: t for n, t in model_fim.items() if n in mfim}, params, "model FIM")
    head = [n for n in head_params if n in params]
    f = samplewise_reference_fim({n: t for n, t in model_fim.items() if n in mfim}, class_fims, counts,
                                 forgotten_counts)
    m = match_mass(mfim, f) if mass else dict(mfim)
    if topk is not None:
        m = top_ratio_only(m, f, labels, [c for c, k in forgotten_counts.items() if int(k) > 0], head, int(topk))
    inert_here = [c for c in dict.fromkeys(str(c) for c in inert) if c in labels]
    _unkept(labels, [], inert_here, head, bool(inert_here))
    stacks = {n: _one(p) for n, p in params.items()}
    new = forget_update_stacked(stacks, {n: _one(t) for n, t in model_fim.items()}, {n: _one(t) for n, t in m.items()},
                                head, [False] * len(labels), [lab in set(inert_here) for lab in labels],
                                against={n: _one(t) for n, t in f.items()}, alpha=alpha, lam=lam)
    return _unstack(new, stacks, params)


def anchor_inert_rows(
    params: Mapping[str, torch.Tensor], labels: Sequence[str], inert: Sequence[str], forget: Sequence[str],
    head_params: Sequence[str], model_fim: Mapping[str, torch.Tensor] | None = None, *, rule: str | None = None,
) -> Fim:
    """``params`` with the head rows of the ``inert`` labels (forgotten by earlier requests) set to the
    :func:`ranked_last_reference` row of the retained rows (neither ``inert`` nor ``forget``) of ``params``
    (``model_fim``: the model's own head FIM, for the features' norm): such a row ranks below the retained rows,
    whatever the update did to them. Other rows and parameters are returned as they are (same tensors, not
    copies)."""
    rows = [i for i, lab in enumerate(labels) if str(lab) in {str(c) for c in inert}]
    if not rows:
        return dict(params)
    drop = {str(c) for c in inert} | {str(c) for c in forget}
    keep = torch.tensor([i for i, lab in enumerate(labels) if str(lab) not in drop], dtype=torch.long)
    if keep.numel() == 0:
        raise UnlearnError(f"every label of the model ({list(labels)}) is forgotten; nothing to keep")
    out = dict(params)
    head = [n for n in head_params if n in params]
    for n in head:
        _check_rows(n, params[n], len(labels))
    fims = None if model_fim is None else {n: _one(model_fim[n]) for n in head if n in model_fim}
    new = anchor_inert_stacked({n: _one(params[n]) for n in head}, head,
                               [str(lab) in {str(c) for c in inert} for lab in labels],
                               [str(lab) in {str(c) for c in forget} for lab in labels], fims, rule=rule)
    for n in head:
        out[n] = new[n][0].to(params[n].device)
    return out


__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_LAMBDA", "DEFAULT_EXPONENT", "nonneg64", "retain_fim_stacked", "forget_rows_stacked",
    "row_mean_stacked", "dampen_stacked", "anchor_rows_stacked", "unlearning_fim", "retain_fim", "align_rows",
    "check_shapes", "merge_fims", "samplewise_reference_fim", "forget_rows_only", "retained_mean_reference", "dampen",
    "class_forget_update", "anchor_inert_rows", "sample_forget_update", "SAMPLE_ALPHA", "SAMPLE_LAMBDA",
    "SAMPLE_TOPK", "top_ratio_only", "match_mass", "normalized_head_fisher", "DEFAULT_REFERENCE_RULE",
    "DEFAULT_RANK_MARGIN", "REFERENCE_RULES", "head_weight_bias", "feature_norm_stacked", "ranked_last_stacked",
    "ranked_last_reference", "DEFAULT_WHOLE_ROWS", "reached_rows_stacked", "whole_rows_stacked",
    "reference_rows_stacked", "dampen_params_stacked", "anchor_inert_stacked", "forget_update_stacked", "PerName",
]
