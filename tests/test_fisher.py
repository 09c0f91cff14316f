"""fiun_hub.fisher: estimators against brute-force autograd, sidecar round trips and validation, and deterministic
sidecar bytes (the same content gives the same sha256, in any process)."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save as st_save

from fiun_hub import fisher
from fiun_hub.data import load_data
from fiun_hub.errors import BadInput, SidecarError, UnlearnError
from fiun_hub.fisher import (
    FisherResult,
    compute_fisher,
    read_sidecars,
    resolve_layers,
    sidecar_bytes,
    strip_classes,
)

N = 200  # samples used against brute force
HEAD = ["fc.weight", "fc.bias"]
BODY_GLOB = "layer4.0.conv1.weight,layer4.0.bn2.*"  # not the head: torch.func path
BODY = ["layer4.0.conv1.weight", "layer4.0.bn2.weight", "layer4.0.bn2.bias"]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """rtol 1e-4, with an absolute floor far below the tensor's scale (float32 noise on near-zero entries)."""
    return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-7 * float(b.abs().max()) + 1e-12)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 20, bs: int = 64) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (bs,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def data():
    return load_data("digits:train", in_chans=1, input_size=(16, 16))


@pytest.fixture(scope="module")
def resnet(data):
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    _train(m, data.x, data.y)
    with torch.no_grad():
        p = torch.softmax(m(data.x[:N]), 1)
    assert float(p.max(1).values.mean()) > 0.3  # trained: p is far from uniform
    return m


@pytest.fixture(scope="module")
def vit(data):
    torch.manual_seed(0)
    m = timm.create_model("test_vit", num_classes=10, in_chans=1, img_size=16)
    _train(m, data.x, data.y, steps=10)
    return m


def brute_per_sample(model, x, y, names, k=10):
    """sum_i g_i^2 per class (float64) from a plain per-sample autograd loop."""
    model.eval()
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    sums = {n: torch.zeros((k, *params[n].shape), dtype=torch.float64) for n in names}
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        for n, g in zip(names, torch.autograd.grad(loss, plist)):
            sums[n][y[i]] += g.double() ** 2
    return sums, torch.bincount(y, minlength=k)


def brute_batches(model, x, y, names, bs):
    model.eval()
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    acc = {n: torch.zeros(params[n].shape, dtype=torch.float64) for n in names}
    nb = 0
    for s in range(0, x.shape[0], bs):
        loss = F.cross_entropy(model(x[s:s + bs]), y[s:s + bs])
        for n, g in zip(names, torch.autograd.grad(loss, plist)):
            acc[n] += g.double() ** 2
        nb += 1
    return {n: a / nb for n, a in acc.items()}


@pytest.fixture(scope="module")
def brute(resnet, data):
    return brute_per_sample(resnet, data.x[:N], data.y[:N], HEAD + BODY)


def check_against_brute(res: FisherResult, brute, labels):
    sums, counts = brute
    for n in res.layers:
        assert res.model_fim[n].dtype == torch.float32 and res.model_fim[n].device.type == "cpu"
        assert close(res.model_fim[n], sums[n].sum(0) / counts.sum()), n
        assert float(res.model_fim[n].abs().max()) > 0, n
        for c, lab in enumerate(labels):
            assert res.counts[lab] == int(counts[c])
            if counts[c]:
                assert close(res.class_fims[lab][n], sums[n][c] / counts[c]), (n, lab)


def weighted_mean_of_classes(res: FisherResult, n: str) -> torch.Tensor:
    tot = sum(res.counts[lab] * res.class_fims[lab][n].double() for lab in res.class_fims)
    return tot / sum(res.counts.values())


# ------------------------------------------------------------------------------------------ resolve_layers


def test_resolve_layers_resnet(resnet):
    assert resolve_layers(resnet) == HEAD
    assert resolve_layers(resnet, "head", classifier="layer4.0.bn2") == ["layer4.0.bn2.weight", "layer4.0.bn2.bias"]
    assert resolve_layers(resnet, "all") == [n for n, p in resnet.named_parameters() if p.requires_grad]
    assert resolve_layers(resnet, BODY_GLOB) == BODY
    assert resolve_layers(resnet, " fc.* ") == HEAD
    for bad in ("nothing.*", "fc.*,nothing.*", " , "):
        with pytest.raises(SidecarError):
            resolve_layers(resnet, bad)
    with pytest.raises(SidecarError, match="not a module"):
        resolve_layers(resnet, "head", classifier="nohead")


def test_resolve_layers_vit(vit):
    assert resolve_layers(vit) == ["head.weight", "head.bias"]
    assert resolve_layers(vit, "head.*") == ["head.weight", "head.bias"]
    assert resolve_layers(vit, "blocks.5.mlp.fc2.*") == ["blocks.5.mlp.fc2.weight", "blocks.5.mlp.fc2.bias"]


# ------------------------------------------------------------------------------------------ per-sample


def test_per_sample_head_closed_form(resnet, data, brute, monkeypatch):
    def no_generic(*a, **k):
        raise AssertionError("head FIM must use the closed form")

    monkeypatch.setattr(fisher, "_per_sample_generic", no_generic)
    seen = []
    res = compute_fisher(resnet, data.x[:N], data.y[:N], data.labels, HEAD, batch_size=50, progress=seen.append)
    assert seen == [50, 100, 150, 200]
    assert res.estimator == "per-sample" and res.batch_size is None and res.layers == HEAD
    assert res.labels == data.labels
    check_against_brute(res, brute, data.labels)
    for n in HEAD:
        assert close(res.model_fim[n], weighted_mean_of_classes(res, n))


def test_per_sample_closed_form_loop_over_classes_agrees(resnet, data, brute, monkeypatch):
    monkeypatch.setattr(fisher, "_ONEHOT_FLOPS", 0)  # the path used for many classes
    check_against_brute(compute_fisher(resnet, data.x[:N], data.y[:N], data.labels, HEAD), brute, data.labels)


def test_per_sample_body_torch_func(resnet, data, brute, monkeypatch):
    def no_loop(*a, **k):
        raise AssertionError("vmap should handle test_resnet")

    monkeypatch.setattr(fisher, "_loop_grads", no_loop)
    res = compute_fisher(resnet, data.x[:N], data.y[:N], data.labels, BODY, batch_size=64)
    check_against_brute(res, brute, data.labels)
    for n in BODY:
        assert close(res.model_fim[n], weighted_mean_of_classes(res, n))


def test_per_sample_vmap_fallback_loop(resnet, data, brute, monkeypatch):
    def broken_vmap(*a, **k):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", broken_vmap)
    monkeypatch.setattr(fisher, "_head_linear", lambda *a: None)  # force the generic path for the head too
    res = compute_fisher(resnet, data.x[:N], data.y[:N], data.labels, HEAD + BODY[:1], batch_size=80)
    assert set(res.model_fim) == set(HEAD + BODY[:1])
    check_against_brute(res, brute, data.labels)


def test_linear_whose_output_is_not_the_logits_is_not_closed_form(data):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.Tanh())
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return 3.0 * self.fc(self.body(x))  # the Linear's output is not the logits

    torch.manual_seed(0)
    m = Scaled()
    x, y = data.x[:120], data.y[:120]
    assert fisher._head_linear(m, HEAD) is not None
    res = compute_fisher(m, x, y, data.labels, HEAD)
    check_against_brute(res, brute_per_sample(m, x, y, HEAD), data.labels)


def test_vit_head(vit, data):
    x, y = data.x[:120], data.y[:120]
    layers = resolve_layers(vit)
    res = compute_fisher(vit, x, y, data.labels, layers)
    check_against_brute(res, brute_per_sample(vit, x, y, layers), data.labels)


def test_empty_class_is_omitted(resnet, data):
    keep = data.y[:N] != 9
    res = compute_fisher(resnet, data.x[:N][keep], data.y[:N][keep], data.labels, HEAD)
    assert res.counts["9"] == 0 and "9" not in res.class_fims and len(res.class_fims) == 9
    fim, cls = sidecar_bytes(res, {})
    s = read_sidecars(fim, cls)
    assert s.counts["9"] == 0 and "9" not in s.class_fims


# ------------------------------------------------------------------------------------------ batch


@pytest.mark.parametrize("layers", [HEAD, BODY], ids=["head-closed-form", "body-autograd"])
def test_batch_estimator(resnet, data, layers):
    bs = 48  # does not divide the class sizes: partial batches count as batches
    x, y = data.x[:N], data.y[:N]
    seen = []
    res = compute_fisher(resnet, x, y, data.labels, layers, estimator="batch", batch_size=bs, progress=seen.append)
    assert res.estimator == "batch" and res.batch_size == bs
    assert seen[-1] == N and seen == sorted(seen)
    want = brute_batches(resnet, x, y, layers, bs)
    for n in layers:
        assert close(res.model_fim[n], want[n]), n
    for c, lab in enumerate(data.labels):
        m = y == c
        want_c = brute_batches(resnet, x[m], y[m], layers, bs)
        for n in layers:
            assert close(res.class_fims[lab][n], want_c[n]), (n, lab)


def test_batch_head_with_batches_spanning_chunks(resnet, data):
    """Class batches of size 8 fill up across several data chunks and several per chunk."""
    x, y = data.x[:100], data.y[:100]
    res = compute_fisher(resnet, x, y, data.labels, HEAD, estimator="batch", batch_size=8)
    for c, lab in enumerate(data.labels):
        want_c = brute_batches(resnet, x[y == c], y[y == c], HEAD, 8)
        for n in HEAD:
            assert close(res.class_fims[lab][n], want_c[n]), (n, lab)


# ------------------------------------------------------------------------------------------ model state


def test_model_state_restored(data):
    torch.manual_seed(1)
    m = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    m.train()
    m.layer1.eval()  # a mixed mode must come back as it was
    for p in m.layer2.parameters():
        p.requires_grad_(False)
    modes = {n: mod.training for n, mod in m.named_modules()}
    req = {n: p.requires_grad for n, p in m.named_parameters()}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = data.x[:40], data.y[:40]
    for est in ("per-sample", "batch"):
        for layers in (HEAD, ["layer2.0.conv1.weight", "fc.bias"]):
            compute_fisher(m, x, y, data.labels, layers, estimator=est, batch_size=16)
            assert {n: mod.training for n, mod in m.named_modules()} == modes
            assert {n: p.requires_grad for n, p in m.named_parameters()} == req
            for k, v in m.state_dict().items():  # eval mode: BN running stats untouched, no step taken
                assert torch.equal(v, before[k]), k
            assert all(p.grad is None for p in m.parameters())


def test_bad_inputs(resnet, data):
    x, y = data.x[:10], data.y[:10]
    with pytest.raises(BadInput):
        compute_fisher(resnet, x, y + 10, data.labels, HEAD)
    with pytest.raises(BadInput, match="output rows"):
        compute_fisher(resnet, x, y % 5, data.labels[:5], HEAD)
    with pytest.raises(BadInput):
        compute_fisher(resnet, x, y, data.labels, ["nope.weight"])
    with pytest.raises(BadInput):
        compute_fisher(resnet, x, y, data.labels, HEAD, estimator="true")
    with pytest.raises(BadInput):
        compute_fisher(resnet, x, y[:5], data.labels, HEAD)


# ------------------------------------------------------------------------------------------ sidecars


@pytest.fixture(scope="module")
def result(resnet, data):
    return compute_fisher(resnet, data.x[:N], data.y[:N], data.labels, HEAD)


META = {"model_commit": "a" * 40, "dataset": "f" * 64, "data_spec": "digits:train"}


def _header(buf: bytes) -> tuple[int, dict]:
    n = int.from_bytes(buf[:8], "little")
    return n, json.loads(buf[8:8 + n])


def _with_header(buf: bytes, header: dict) -> bytes:
    """Rewrite the JSON header, padded to its original length so the data offsets stay where they were."""
    n, _ = _header(buf)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= n
    return buf[:8] + raw + b" " * (n - len(raw)) + buf[8 + n:]


def test_sidecar_round_trip(result):
    fim, cls = sidecar_bytes(result, META)
    s = read_sidecars(fim, cls, where="org/x@abc: ")
    assert s.labels == result.labels and s.layers == result.layers and s.counts == result.counts
    assert s.estimator == "per-sample" and s.batch_size is None and s.model_commit == "a" * 40
    assert s.metadata["format"] == "fiun-fim/1" and s.metadata["batch_size"] == ""
    assert s.metadata["dataset"] == "f" * 64 and json.loads(s.metadata["labels"]) == result.labels
    for n in result.layers:
        assert torch.equal(s.model_fim[n], result.model_fim[n])
        for lab in result.class_fims:
            assert torch.equal(s.class_fims[lab][n], result.class_fims[lab][n])
    _, h = _header(cls)
    assert "fc.weight@3" in h and h["__metadata__"] == _header(fim)[1]["__metadata__"]
    only = read_sidecars(fim)
    assert only.class_fims == {} and only.counts == result.counts


def test_batch_sidecar_round_trip(resnet, data):
    res = compute_fisher(resnet, data.x[:64], data.y[:64], data.labels, HEAD, estimator="batch", batch_size=16)
    s = read_sidecars(*sidecar_bytes(res, {}))
    assert s.estimator == "batch" and s.batch_size == 16 and s.metadata["batch_size"] == "16"


def test_sidecar_bytes_refuses_bad_metadata_and_values(result):
    with pytest.raises(BadInput):
        sidecar_bytes(result, {"format": "other"})
    with pytest.raises(BadInput):
        sidecar_bytes(result, {"model_commit": 3})
    bad = FisherResult({**result.model_fim, "fc.bias": torch.full((10,), float("nan"))}, result.class_fims,
                       result.counts, result.labels, result.layers, result.estimator, result.batch_size)
    with pytest.raises(SidecarError, match="fc.bias"):
        sidecar_bytes(bad, {})


def test_truncated_and_lying_headers(result):
    fim, cls = sidecar_bytes(result, META)
    n, header = _header(fim)
    for cut in (0, 5, 8, 20, 8 + n, len(fim) - 4, len(fim) - 1):
        with pytest.raises(SidecarError, match="^org/x@abc: "):
            read_sidecars(fim[:cut], where="org/x@abc: ")
    with pytest.raises(SidecarError):
        read_sidecars(fim, cls[:-7])
    with pytest.raises(SidecarError):  # header length claims more than there is
        read_sidecars((len(fim) + 10).to_bytes(8, "little") + fim[8:])
    for field, value in (("dtype", "F64"), ("dtype", "F16"), ("shape", [10, 97]), ("data_offsets", [0, 999])):
        h = json.loads(json.dumps(header))
        h["fc.weight"][field] = value
        with pytest.raises(SidecarError):
            read_sidecars(_with_header(fim, h))
    h = json.loads(json.dumps(header))
    h["fc.weight"]["dtype"] = "I32"  # same size, so safetensors accepts it: we must not
    with pytest.raises(SidecarError, match="dtype"):
        read_sidecars(_with_header(fim, h))
    h = json.loads(json.dumps(header))
    h["__metadata__"]["format"] = "fiun-fim/0"
    with pytest.raises(SidecarError, match="format"):
        read_sidecars(_with_header(fim, h))


def test_non_finite_and_inconsistent_tensors(result):
    fim, cls = sidecar_bytes(result, META)
    _, h = _header(fim)
    meta = h["__metadata__"]
    good = {n: result.model_fim[n] for n in result.layers}
    for bad_value in (float("nan"), float("inf")):
        w = good["fc.weight"].clone()
        w[2, 3] = bad_value
        with pytest.raises(SidecarError, match="^m@1: .*fc.weight"):
            read_sidecars(st_save({**good, "fc.weight": w}, metadata=meta), where="m@1")
    with pytest.raises(SidecarError, match="negative"):
        read_sidecars(st_save({**good, "fc.bias": -good["fc.bias"] - 1}, metadata=meta))
    with pytest.raises(SidecarError):  # a layer missing
        read_sidecars(st_save({"fc.weight": good["fc.weight"]}, metadata=meta))
    ctensors = {f"{n}@{lab}": result.class_fims[lab][n] for lab in result.class_fims for n in result.layers}
    nan_c = {**ctensors, "fc.bias@4": torch.full((10,), float("nan"))}
    with pytest.raises(SidecarError, match="fc.bias@4"):
        read_sidecars(fim, st_save(nan_c, metadata=meta))
    missing = {k: v for k, v in ctensors.items() if k != "fc.weight@7"}
    with pytest.raises(SidecarError, match="fc.weight@7"):
        read_sidecars(fim, st_save(missing, metadata=meta))
    with pytest.raises(SidecarError, match="unexpected"):
        read_sidecars(fim, st_save({**ctensors, "fc.weight@ten": ctensors["fc.weight@1"].clone()}, metadata=meta))
    with pytest.raises(SidecarError, match="model FIM"):
        read_sidecars(fim, st_save({**ctensors, "fc.bias@2": torch.zeros(11)}, metadata=meta))
    with pytest.raises(SidecarError, match="disagree"):
        read_sidecars(fim, st_save(ctensors, metadata={**meta, "counts": json.dumps({"0": 1})}))
    with pytest.raises(SidecarError, match="counts"):
        read_sidecars(st_save(good, metadata={**meta, "counts": json.dumps({"eleven": 3})}))


def test_strip_classes(resnet, data, result):
    fim, cls = sidecar_bytes(result, META)
    s = read_sidecars(fim, cls)
    f2, c2 = strip_classes(s, ["3"])
    s2 = read_sidecars(f2, c2)
    assert "3" not in s2.class_fims and "3" not in s2.counts and s2.labels == result.labels
    assert json.loads(s2.metadata["forgotten"]) == ["3"] and s2.model_commit == "a" * 40
    # model FIM = exactly what the per-sample estimator gives on the data without class 3
    keep = data.y[:N] != 3
    direct = compute_fisher(resnet, data.x[:N][keep], data.y[:N][keep], data.labels, HEAD)
    for n in HEAD:
        assert close(s2.model_fim[n], direct.model_fim[n])
        assert not torch.allclose(s2.model_fim[n], s.model_fim[n])
        for lab in direct.class_fims:
            assert torch.equal(s2.class_fims[lab][n], s.class_fims[lab][n])
    s3 = read_sidecars(*strip_classes(s2, ["5", "3"]))
    assert json.loads(s3.metadata["forgotten"]) == ["3", "5"] and set(s3.class_fims) == set(data.labels) - {"3", "5"}
    with pytest.raises(UnlearnError):
        strip_classes(s, ["eleven"])
    with pytest.raises(UnlearnError):
        strip_classes(s, data.labels)
    with pytest.raises(SidecarError):
        strip_classes(read_sidecars(fim), ["3"])  # needs the per-class sidecar


# ------------------------------------------------------------------------------------------ normalized estimator


def brute_normalized(model, x, y, names, k=10):
    """sum_i g_i^2 / ||g_i||^2 per class (float64), the norm taken over all of ``names``."""
    model.eval()
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    sums = {n: torch.zeros((k, *params[n].shape), dtype=torch.float64) for n in names}
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i:i + 1]).double(), y[i:i + 1])
        gs = [g.double() for g in torch.autograd.grad(loss, plist)]
        norm2 = sum(float((g * g).sum()) for g in gs)
        for n, g in zip(names, gs):
            if norm2 > 0:
                sums[n][y[i]] += g * g / norm2
    return sums, torch.bincount(y, minlength=k)


@pytest.mark.parametrize("layers", [HEAD, HEAD + BODY])
def test_normalized_estimator_against_brute_force(resnet, data, layers, monkeypatch):
    if layers == HEAD:
        def no_generic(*a, **k):
            raise AssertionError("head FIM must use the closed form")
        monkeypatch.setattr(fisher, "_per_sample_generic", no_generic)
    x, y = data.x[:60], data.y[:60]
    res = compute_fisher(resnet, x, y, data.labels, layers, estimator="normalized")
    assert res.estimator == "normalized" and res.batch_size is None
    sums, counts = brute_normalized(resnet, x, y, layers)
    for n in layers:
        assert torch.allclose(res.model_fim[n].double(), sums[n].sum(0) / counts.sum(), rtol=1e-3, atol=1e-9), n
        for c, lab in enumerate(data.labels):
            if counts[c]:
                assert torch.allclose(res.class_fims[lab][n].double(), sums[n][c] / counts[c], rtol=1e-3, atol=1e-9)
    # every sample carries unit importance: the FIM sums to 1 over the covered layers
    assert abs(sum(float(res.model_fim[n].double().sum()) for n in layers) - 1.0) < 1e-4


def test_normalized_sidecar_round_trip_and_strip(resnet, data):
    res = compute_fisher(resnet, data.x[:N], data.y[:N], data.labels, HEAD, estimator="normalized")
    fim, cls = sidecar_bytes(res, META)
    sc = read_sidecars(fim, cls)
    assert sc.estimator == "normalized" and sc.batch_size is None
    # like per-sample, the model FIM is the count-weighted mean of the class FIMs, so stripping is exact
    for n in HEAD:
        assert close(sc.model_fim[n], weighted_mean_of_classes(res, n))
    f2, c2 = strip_classes(sc, ["3"])
    stripped = read_sidecars(f2, c2)
    assert "3" not in stripped.class_fims and stripped.counts.get("3", 0) == 0


# ------------------------------------------------------------------------------------------ deterministic bytes


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


_SUBPROCESS = r"""
import hashlib, sys, torch
from fiun_hub.fisher import FisherResult, sidecar_bytes, read_sidecars, strip_classes
g = torch.Generator().manual_seed(0)
labels = [str(i) for i in range(10)] + ["é", "z"]
layers = ["fc.weight", "fc.bias"]
shapes = {"fc.weight": (12, 8), "fc.bias": (12,)}
cls = {lab: {n: torch.rand(shapes[n], generator=g) for n in layers} for lab in labels}
counts = {lab: 3 + i for i, lab in enumerate(labels)}
tot = sum(counts.values())
model = {n: (sum(counts[c] * cls[c][n].double() for c in labels) / tot).float() for n in layers}
res = FisherResult(model, cls, counts, labels, layers, "per-sample", None)
meta = {"z": "1", "model_commit": "a" * 40, "dataset": "d", "a": "2", "weights_sha256": "b" * 64}
fim, cl = sidecar_bytes(res, meta)
f2, c2 = strip_classes(read_sidecars(fim, cl), ["3"], {"derived_by": "R", "weights_sha256": "c" * 64})
print(" ".join(hashlib.sha256(x).hexdigest() for x in (fim, cl, f2, c2)))
"""


def test_sidecar_bytes_are_deterministic():
    """The same sidecar content gives the same bytes: twice here, and in other processes (safetensors'
    own save writes header metadata in hash-map order, which changes from call to call and process to process).
    Metadata keys are sorted, tensors ordered by name, nothing time-dependent is added; readers still read it."""
    import subprocess
    import sys

    runs = [subprocess.run([sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    ns: dict = {}
    exec(compile(_SUBPROCESS.replace("print(", "out = ("), "<sidecars>", "exec"), ns)  # noqa: S102
    here = " ".join(_sha(x) for x in (ns["fim"], ns["cl"], ns["f2"], ns["c2"]))
    again = " ".join(_sha(x) for x in sidecar_bytes(ns["res"], ns["meta"]))
    assert runs[0].strip() == runs[1].strip() == here
    assert again == " ".join(here.split()[:2])
    n, h = _header(ns["fim"])
    meta = h["__metadata__"]
    assert list(meta) == sorted(meta) and "computed_at" not in meta and n % 8 == 0
    assert [k for k in h if k != "__metadata__"] == sorted(k for k in h if k != "__metadata__")
    s = read_sidecars(ns["f2"], ns["c2"])
    assert "3" not in s.class_fims and s.metadata["derived_by"] == "R" and "é" in s.class_fims


def test_encoded_sidecars_load_with_safetensors(result):
    """encode_safetensors writes standard safetensors: safetensors' own loaders read every tensor back exactly."""
    from safetensors.torch import load

    fim, cls = sidecar_bytes(result, META)
    back = load(cls)
    assert set(back) == {f"{n}@{lab}" for lab in result.class_fims for n in HEAD}
    for lab in result.class_fims:
        for n in HEAD:
            assert torch.equal(back[f"{n}@{lab}"], result.class_fims[lab][n])
    odd = fisher.encode_safetensors({"b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
                                     "a": torch.tensor([1.5], dtype=torch.float16), "e": torch.zeros(0)}, {"k": "v"})
    out = load(odd)
    assert out["b"].tolist() == [[0, 1, 2], [3, 4, 5]] and out["a"].dtype == torch.float16 and out["e"].numel() == 0


def test_compute_and_commit_twice_gives_the_same_sidecar_files(tmp_path, model_folder):
    """`fiun-hub fim` on the same model revision and data, in two copies of a hub, commits byte-identical
    sidecars and card (no timestamp in them: the commit records the time)."""
    import shutil

    from fiun_hub.hub.local import LocalHub
    from fiun_hub.repo import push_folder
    from fiun_hub.sidecars import compute_and_commit

    hub = LocalHub.init(tmp_path / "a")
    push_folder(hub, model_folder(labels=[str(i) for i in range(10)]), "o/m")
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    files = []
    for name in ("a", "b"):
        h = LocalHub(tmp_path / name)
        info = compute_and_commit(h, "o/m", "digits:train", estimator="batch", layers="all")
        files.append(h.list_files("o/m", info["revision"]))
    assert files[0] == files[1]
