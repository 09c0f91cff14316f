"""FIUn maths (placeholder, being researched)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .errors import UnlearnError

Fim = dict[str, torch.Tensor]


def unlearning_fim(class_fims: Mapping[str, Mapping[str, torch.Tensor]], counts: Mapping[str, int],
                   classes: Sequence[str]) -> Fim:
    classes = list(dict.fromkeys(str(c) for c in classes))
    missing = [c for c in classes if c not in class_fims or int(counts.get(c, 0)) <= 0]
    if missing:
        raise UnlearnError(f"no class FIM for {missing}")
    total = sum(int(counts[c]) for c in classes)
    names = list(class_fims[classes[0]].keys())
    out = {}
    for n in names:
        acc = torch.zeros(class_fims[classes[0]][n].shape, dtype=torch.float64)
        for c in classes:
            acc += int(counts[c]) * class_fims[c][n].double()
        out[n] = (acc / total).float()
    return out


def align_rows(fim, from_labels, to_labels, head_params):
    from_labels, to_labels = list(from_labels), list(to_labels)
    out = {}
    for n, t in fim.items():
        if n in head_params:
            new = torch.zeros((len(to_labels), *t.shape[1:]), dtype=t.dtype)
            for r, lab in enumerate(to_labels):
                if lab in from_labels:
                    new[r] = t[from_labels.index(lab)]
            out[n] = new
        else:
            out[n] = t.clone()
    return out


def merge_fims(fims, scale_per_extra_origin=1.0):
    out = {}
    for f in fims:
        for n, t in f.items():
            out[n] = t.clone() if n not in out else torch.maximum(out[n], t)
    if len(fims) > 1 and scale_per_extra_origin != 1.0:
        out = {n: t / scale_per_extra_origin ** (len(fims) - 1) for n, t in out.items()}
    return out


def dampen(params, model_fim, mfim, *, alpha, lam, exponent=1.0):
    out = {}
    for n, p in params.items():
        if n not in mfim:
            out[n] = p.clone()
            continue
        fd, ff = model_fim[n].double(), mfim[n].double()
        sel = ff > alpha * fd
        beta = torch.where(sel, (lam * fd / ff.clamp_min(1e-300)).pow(exponent).clamp(max=1.0), torch.ones_like(fd))
        out[n] = (p.double() * beta).to(p.dtype)
    return out
