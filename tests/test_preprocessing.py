"""Issue 13 parts 1 and 5: every model is fed the inputs it was trained on (its own timm data config), sidecars
record that preprocessing and go stale when it changes, save_model_folder records the trained config, and
``:test`` is held out or refused. Real timm models trained on the bundled digits, real hub, real files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fiun_hub.constants import CONFIG_FILE, FIM_CLASSES_FILE, FIM_FILE
from fiun_hub.errors import BadInput, DataSpecError

MNIST = {"mean": (0.1307,), "std": (0.3081,), "interpolation": "bilinear", "crop_pct": 0.9, "crop_mode": "center"}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic",
            "crop_pct": 0.875, "crop_mode": "center"}


def _digits_uint8():
    """digits as uint8 images (so that Pillow and the tensor path start from the same pixels)."""
    from sklearn.datasets import load_digits

    from fiun_hub.data import _split_indices

    d = load_digits()
    x = np.round(d.images / 16.0 * 255).astype(np.uint8)
    tr, te = _split_indices(d.target, "train"), _split_indices(d.target, "test")
    return x[tr], d.target[tr], x[te], d.target[te]


def _trained_repo(hub, tmp_path, name, *, data_config, train_size, chans, color=False, epochs=4):
    """A test_resnet trained on digits fed with ``data_config`` at ``train_size``, saved and pushed; returns
    (repo, npz path)."""
    import timm

    from fiun_hub.data import load_images, prepare
    from fiun_hub.models import save_model_folder
    from fiun_hub.preprocessing import training_config
    from fiun_hub.repo import push_folder
    from fiun_hub.research.training import train_classifier

    xtr, ytr, xte, yte = _digits_uint8()
    if color:  # non-square RGB images (8x10, a tint per channel): the shorter-side resize and crop matter
        def tint(x):
            x = np.pad(x, ((0, 0), (0, 0), (1, 1)))
            return np.stack([x, (x * 0.7).astype(np.uint8), (x * 0.4).astype(np.uint8)], axis=-1)
        xtr, xte = tint(xtr), tint(xte)
    npz = tmp_path / f"{name}.npz"
    np.savez(npz, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    pre = training_config((chans, train_size, train_size), data_config)
    train = prepare(load_images(f"npz:{npz}:train"), pre)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10, in_chans=chans)
    train_classifier(model, train, epochs=epochs, lr=3e-3, batch_size=32, seed=0)
    folder = save_model_folder(model.eval(), tmp_path / name, [str(i) for i in range(10)],
                               input_size=pre.input_size, data_config=data_config)
    push_folder(hub, folder, f"t/{name}")
    return f"t/{name}", npz


def _timm_reference(model, npz, chans):
    """Predictions of ``model`` on the npz's x_test fed image by image through Pillow and
    ``timm.data.create_transform(**resolve_model_data_config(model), is_training=False)``."""
    import timm
    from PIL import Image

    cfg = timm.data.resolve_model_data_config(model)
    tf = timm.data.create_transform(**cfg, is_training=False)
    with np.load(npz) as z:
        xs, ys = z["x_test"], z["y_test"]
    batch = []
    for im in xs:
        pil = Image.fromarray(im)
        batch.append(tf(pil.convert("RGB") if chans == 3 else pil))
    with torch.no_grad():
        return model(torch.stack(batch)).argmax(1), torch.as_tensor(ys), cfg


@pytest.mark.parametrize("case", ["mnist-1ch", "imagenet-3ch-other-size"])
def test_bulk_path_agrees_with_timm_transform_image_by_image(hub, tmp_path, case):
    """`eval`'s tensor path gives timm's own numbers: identical predictions on a fixed batch and accuracy
    within 0.5 points, for a 1-channel model with MNIST statistics and a 3-channel model with ImageNet
    statistics evaluated at a size other than its training size (its config edited from 24 to 32)."""
    from fiun_hub.data import load_for_model
    from fiun_hub.evaluate import evaluate_repo
    from fiun_hub.models import load_model
    from fiun_hub.hub.local import RepoChange

    if case == "mnist-1ch":
        repo, npz = _trained_repo(hub, tmp_path, "mnist", data_config=MNIST, train_size=20, chans=1)
        chans = 1
    else:
        repo, npz = _trained_repo(hub, tmp_path, "inet", data_config=IMAGENET, train_size=24, chans=3, color=True)
        chans = 3
        cfg = json.loads(hub.read_file(repo, CONFIG_FILE))
        cfg["pretrained_cfg"]["input_size"] = [3, 32, 32]
        hub.publish([RepoChange(repo, {CONFIG_FILE: json.dumps(cfg).encode()}, "evaluate at 32",
                                parent_commit=hub.resolve(repo))])
    model, config, _ = load_model(hub, repo)
    ref_pred, y, cfg = _timm_reference(model, npz, chans)
    assert config.preprocessing.to_dict() == {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    data = load_for_model(f"npz:{npz}:test", config)
    assert tuple(data.x.shape[1:]) == config.preprocessing.input_size
    with torch.no_grad():
        ours_logits = model(data.x[:128])
    ours = ours_logits.argmax(1)
    # Pillow resamples 8-bit images in fixed point, the tensor path in float: inputs differ by at most one
    # grey level, which can flip only a near-tie. Every prediction on the fixed batch agrees except on samples
    # whose top-two logits are within 0.1 (at most two such flips), never a clear one.
    top2 = ours_logits.topk(2, dim=1).values
    near_tie = (top2[:, 0] - top2[:, 1]) < 0.1
    differ = ours != ref_pred[:128]
    assert not (differ & ~near_tie).any(), (differ & ~near_tie).nonzero().flatten().tolist()
    assert int(differ.sum()) <= 2, int(differ.sum())
    ref_acc = 100.0 * float((ref_pred == y).float().mean())
    got = evaluate_repo(hub, repo, f"npz:{npz}:test")["accuracy"]
    assert ref_acc > 50  # a trained model, so that agreement means something
    assert abs(got - ref_acc) <= 0.5, (got, ref_acc)


def test_resolve_matches_timm_and_refuses_bad_configs():
    """fiun-hub resolves a config.json's data config as timm does; a non-numeric mean, an input size of 0, an
    unknown interpolation are one-line BadInput."""
    import timm

    from fiun_hub.models import build_model, parse_config

    base = {"architecture": "test_resnet", "num_classes": 3, "model_args": {"in_chans": 1}}
    for pcfg in ({}, {"input_size": [1, 28, 28], "mean": [0.1307], "std": [0.3081]},
                 {"input_size": [3, 40, 30], "interpolation": "bilinear", "crop_pct": 0.95, "crop_mode": "squash"}):
        raw = {**base, "pretrained_cfg": pcfg}
        if pcfg.get("input_size", [1])[0] == 3:
            raw["model_args"] = {"in_chans": 3}
        config = parse_config(json.dumps(raw))
        want = timm.data.resolve_model_data_config(build_model(config))
        got = config.preprocessing.to_dict()
        for k in ("interpolation", "crop_pct", "crop_mode"):
            assert got[k] == want[k]
        assert got["input_size"] == [config.in_chans, *want["input_size"][1:]]
        for k in ("mean", "std"):  # timm's channel adaptation: three values on one channel become their mean
            theirs = list(want[k]) if len(want[k]) == config.in_chans else [sum(want[k]) / len(want[k])]
            assert got[k] == pytest.approx(theirs)
    for bad in ({"mean": ["a"]}, {"mean": "0.5"}, {"input_size": [1, 0, 0]}, {"std": [0]},
                {"interpolation": "lanczos2"}, {"crop_pct": -1}, {"crop_mode": "zoom"}):
        with pytest.raises(BadInput) as err:
            parse_config(json.dumps({**base, "pretrained_cfg": {"input_size": [1, 16, 16], **bad}}))
        assert "\n" not in str(err.value)


def test_save_model_folder_records_the_trained_config_not_imagenet(hub, tmp_path):
    """resnet18's pretrained settings (mean 0.485.., bicubic, crop 0.875/0.95, tag, licence) are not what a
    model trained here was fed: the folder records the trained config, timm reads it back, push keeps it."""
    import timm

    from fiun_hub.models import save_model_folder
    from fiun_hub.repo import push_folder

    model = timm.create_model("resnet18", num_classes=3, in_chans=1)
    folder = save_model_folder(model, tmp_path / "r18", ["a", "b", "c"], input_size=(1, 28, 28),
                               data_config={"mean": 0.1307, "std": 0.3081})
    pcfg = json.loads((folder / CONFIG_FILE).read_text())["pretrained_cfg"]
    for key in ("tag", "license", "hf_hub_id", "url", "test_input_size", "test_crop_pct"):
        assert key not in pcfg
    assert pcfg["mean"] == [0.1307] and pcfg["std"] == [0.3081] and pcfg["input_size"] == [1, 28, 28]
    assert pcfg["interpolation"] == "bilinear" and pcfg["crop_pct"] == 1.0 and pcfg["crop_mode"] == "squash"
    again = timm.create_model(f"local-dir:{folder}", pretrained=False)
    cfg = timm.data.resolve_model_data_config(again)
    assert tuple(cfg["mean"]) == (0.1307,) and tuple(cfg["input_size"]) == (1, 28, 28)
    push_folder(hub, folder, "t/r18")
    assert json.loads(hub.read_file("t/r18", CONFIG_FILE))["pretrained_cfg"] == pcfg
    with pytest.raises(BadInput):
        save_model_folder(model, tmp_path / "bad", ["a", "b", "c"], input_size=(1, 28, 28),
                          data_config={"mean": "grey"})
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def sidecar_hub(hub, model_folder):
    """A pushed repo with sidecars computed by `fim` on digits (project default preprocessing)."""
    from fiun_hub.repo import push_folder
    from fiun_hub.sidecars import compute_and_commit

    push_folder(hub, model_folder([str(i) for i in range(10)]), "t/m")
    compute_and_commit(hub, "t/m", "digits:train")
    return hub


def _publish(hub, repo, files, msg="edit"):
    from fiun_hub.hub.local import RepoChange

    return hub.publish([RepoChange(repo, files, msg, parent_commit=hub.resolve(repo))])[repo]


def _rewrite_meta(hub, repo, change):
    """fim + fim-classes with header metadata edited by ``change(meta)``."""
    from safetensors import safe_open

    from fiun_hub.fisher import encode_safetensors

    out = {}
    for name in (FIM_FILE, FIM_CLASSES_FILE):
        path = hub.file_path(repo, name)
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata())
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        change(meta)
        out[name] = encode_safetensors(tensors, meta)
    return out


def test_sidecar_records_preprocessing_and_goes_stale_when_the_config_changes(sidecar_hub, cli):
    """`fim` records the preprocessing; a config.json that now declares other statistics makes the sidecar
    stale for `lineage --check` and the forget's plan (like a sidecar on other weights)."""
    from fiun_hub import lineage
    from fiun_hub.errors import SidecarError
    from fiun_hub.preprocessing import parse_recorded
    from fiun_hub.safetensors_io import read_header
    from fiun_hub.sidecars import load_sidecars

    hub = sidecar_hub
    _, meta = read_header(hub.file_path("t/m", FIM_FILE))
    assert parse_recorded(meta["preprocessing"]).mean == (0.5,)
    assert lineage.check(hub, lineage.resolve(hub)) == []
    load_sidecars(hub, "t/m")
    cfg = json.loads(hub.read_file("t/m", CONFIG_FILE))
    cfg["pretrained_cfg"]["mean"], cfg["pretrained_cfg"]["std"] = [0.1307], [0.3081]
    _publish(hub, "t/m", {CONFIG_FILE: json.dumps(cfg).encode()})
    kinds = {(p.repo, p.kind) for p in lineage.check(hub, lineage.resolve(hub, rebuild=True))}
    assert ("t/m", "stale-sidecar") in kinds
    with pytest.raises(SidecarError, match="other preprocessing"):
        load_sidecars(hub, "t/m")
    code, out, _ = cli("--hub", hub.root, "--json", "show", "t/m")
    side = json.loads(out)["sidecar"]
    assert code == 0 and side["state"] == "stale" and side["preprocessing"]["mean"] == [0.5]
    assert "other preprocessing" in side["stale_reason"] and json.loads(out)["preprocessing"]["mean"] == [0.1307]
    code, text, _ = cli("--hub", hub.root, "show", "t/m")
    assert "stale: computed with other preprocessing" in text and "inputs:   1x16x16, mean [0.1307]" in text
    code, out, err = cli("--hub", hub.root, "forget", "--origin", "t/m", "--classes", "3", "--dry-run")
    assert code == 2 and "preprocessing" in err and len(err.strip().splitlines()) == 1


def test_legacy_and_garbled_recorded_preprocessing(sidecar_hub, cli, hub_fingerprint):
    """A sidecar without a recorded preprocessing counts as computed with the legacy 0.5/0.5 config (fine for
    a model that declares it, stale otherwise); a garbled one is one line, exit 2, nothing changed."""
    from fiun_hub import lineage

    hub = sidecar_hub
    _publish(hub, "t/m", _rewrite_meta(hub, "t/m", lambda m: m.pop("preprocessing")))
    assert lineage.sidecar_state(hub, "t/m", hub.list_files("t/m"), hub.resolve("t/m")) == "ok"
    _publish(hub, "t/m", _rewrite_meta(hub, "t/m", lambda m: m.update(preprocessing='{"mean": "x"}')))
    assert lineage.sidecar_state(hub, "t/m", hub.list_files("t/m"), hub.resolve("t/m")) == "invalid"
    before = hub_fingerprint(hub.root)
    code, out, err = cli("--hub", hub.root, "forget", "--origin", "t/m", "--classes", "3")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "preprocessing" in err
    assert hub_fingerprint(hub.root) == before


def test_bad_model_config_is_one_line_exit_2(hub, model_folder, cli, hub_fingerprint):
    """A config with a non-numeric mean or an input size of 0: push refuses it; one already in the hub makes
    `eval` exit 2 with one line; nothing changes."""
    from fiun_hub.repo import push_folder

    push_folder(hub, model_folder([str(i) for i in range(10)]), "t/m")
    for bad in ({"mean": ["grey"]}, {"input_size": [1, 0, 0]}):
        folder = model_folder([str(i) for i in range(10)])
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        cfg["pretrained_cfg"].update(bad)
        (folder / CONFIG_FILE).write_text(json.dumps(cfg))
        before = hub_fingerprint(hub.root)
        code, _, err = cli("--hub", hub.root, "push", str(folder), "t/m")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert hub_fingerprint(hub.root) == before
    _publish(hub, "t/m", {CONFIG_FILE: json.dumps(cfg).encode()})
    before = hub_fingerprint(hub.root)
    code, _, err = cli("--hub", hub.root, "eval", "t/m", "--data", "digits:test")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "input_size" in err
    assert hub_fingerprint(hub.root) == before


# ------------------------------------------------------------------------------------- part 5: held-out splits
def _indices(x):
    return {bytes(row) for row in np.asarray(x).reshape(len(x), -1)}


def test_npz_test_split_is_held_out_or_refused(tmp_path):
    from fiun_hub.data import load_images

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(60, 6, 6), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    single = tmp_path / "single.npz"
    np.savez(single, x=x, y=y)
    whole, tr, te = (load_images(f"npz:{single}{s}") for s in ("", ":train", ":test"))
    assert len(whole) == 60 and len(tr) + len(te) == 60
    assert not _indices((tr.x * 255).round().byte().numpy()) & _indices((te.x * 255).round().byte().numpy())
    assert sorted(np.bincount(te.y.numpy()).tolist()) == [6, 6, 6]  # stratified, like digits
    assert torch.equal(load_images(f"npz:{single}:test").x, te.x)  # fixed seed
    both = tmp_path / "both.npz"
    np.savez(both, x=x[:40], y=y[:40], x_test=x[40:], y_test=y[40:])
    assert len(load_images(f"npz:{both}:test")) == 20 and len(load_images(f"npz:{both}:train")) == 40
    only_train = tmp_path / "train_only.npz"
    np.savez(only_train, x_train=x, y_train=y)
    with pytest.raises(DataSpecError, match="x_test"):
        load_images(f"npz:{only_train}:test")
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, x=x[:3], y=np.array([0, 1, 2]))
    with pytest.raises(DataSpecError, match="split"):
        load_images(f"npz:{tiny}:test")
    assert len(load_images(f"npz:{tiny}")) == 3  # the whole file (a forget set) is still readable


def test_folder_test_split_is_held_out_or_refused(tmp_path):
    from PIL import Image

    from fiun_hub.data import load_images

    rng = np.random.default_rng(1)
    flat = tmp_path / "flat"
    for c in ("a", "b"):
        (flat / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, size=(5, 5), dtype=np.uint8)).save(flat / c / f"{i}.png")
    tr, te = load_images(f"folder:{flat}:train"), load_images(f"folder:{flat}:test")
    assert len(tr) + len(te) == 20 and len(load_images(f"folder:{flat}")) == 20
    assert not _indices((tr.x * 255).round().byte().numpy()) & _indices((te.x * 255).round().byte().numpy())
    split = tmp_path / "split"
    (split / "train").mkdir(parents=True)
    (flat / "a").rename(split / "train" / "a")
    with pytest.raises(DataSpecError, match="test/"):
        load_images(f"folder:{split}:test")


def test_eval_refuses_a_test_split_that_does_not_exist(hub, model_folder, tmp_path, cli, hub_fingerprint):
    from fiun_hub.repo import push_folder

    push_folder(hub, model_folder([str(i) for i in range(3)]), "t/m")
    npz = tmp_path / "train_only.npz"
    np.savez(npz, x_train=np.zeros((6, 8, 8), np.uint8), y_train=np.array([0, 1, 2] * 2))
    before = hub_fingerprint(hub.root)
    code, _, err = cli("--hub", hub.root, "eval", "t/m", "--data", f"npz:{npz}:test")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "x_test" in err
    assert hub_fingerprint(hub.root) == before


# ------------------------------------------------------------------ part 1 end to end: a forget on MNIST statistics
def _own_accuracy(model, npz, forget: list[int]) -> tuple[float, float]:
    """(forget, retain) accuracy in % on the npz's x_test, each image fed through timm's own eval transform of
    the model's data config (the reference ``fiun-hub eval`` must agree with)."""
    pred, y, _ = _timm_reference(model, npz, 1)
    f = torch.isin(y, torch.tensor(forget))
    return (100.0 * float((pred[f] == y[f]).float().mean()), 100.0 * float((pred[~f] == y[~f]).float().mean()))


def test_forget_on_models_declaring_mnist_statistics_is_judged_by_their_own_preprocessing(hub, tmp_path, cli):
    """The issue's case: models that declare MNIST statistics (0.1307/0.3081). A root trained with them and a
    child fine-tuned from it, sidecars from `fiun-hub fim`, a 4-class forget at the root through the CLI: every
    model ends at <= 2% forget accuracy and within 5 points of its retain accuracy *by its own preprocessing*
    (timm's transform, image by image), `fiun-hub eval` reports the same numbers, and `show` reports the
    preprocessing the sidecar was computed with."""
    from fiun_hub.data import load_images, prepare
    from fiun_hub.models import load_model, save_model_folder
    from fiun_hub.preprocessing import training_config
    from fiun_hub.research.training import train_classifier

    forget = [1, 3, 5, 7]
    root, npz = _trained_repo(hub, tmp_path, "mroot", data_config=MNIST, train_size=20, chans=1)
    model, config, _ = load_model(hub, root)
    shard = prepare(load_images(f"npz:{npz}:train"), training_config((1, 20, 20), MNIST))
    shard = shard.subset(torch.arange(0, len(shard), 2))
    train_classifier(model, shard, epochs=1, lr=1e-3, batch_size=32, seed=1)
    folder = save_model_folder(model.eval(), tmp_path / "mchild", config.labels, input_size=(1, 20, 20),
                               data_config=MNIST)
    child = "t/mchild"
    H = ("--hub", hub.root)
    assert cli(*H, "push", folder, child, "--parent", root)[0] == 0
    for repo in (root, child):
        code, _, err = cli(*H, "fim", repo, "--data", f"npz:{npz}:train")
        assert code == 0, err
    code, out, _ = cli(*H, "--json", "show", child)
    info = json.loads(out)
    assert code == 0 and info["preprocessing"]["mean"] == [0.1307] and info["preprocessing"]["std"] == [0.3081]
    assert info["sidecar"]["state"] == "ok" and info["sidecar"]["preprocessing"] == info["preprocessing"]
    assert info["sidecar"]["preprocessing_recorded"] is True
    code, text, _ = cli(*H, "show", child)
    assert "preprocessing: 1x20x20, mean [0.1307], std [0.3081], bilinear, crop 0.9 (center)" in text
    before = {r: _own_accuracy(load_model(hub, r)[0], npz, forget) for r in (root, child)}
    code, _, err = cli(*H, "forget", "--origin", root, "--classes", ",".join(map(str, forget)))
    assert code == 0, err
    for repo in (root, child):
        f, r = _own_accuracy(load_model(hub, repo)[0], npz, forget)
        assert before[repo][0] > 80 and f <= 2.0 and r >= before[repo][1] - 5.0, (repo, before[repo], f, r)
        code, out, _ = cli(*H, "--json", "eval", repo, "--data", f"npz:{npz}:test",
                           "--forget-classes", ",".join(map(str, forget)))
        got = json.loads(out)
        assert code == 0 and abs(got["forget_acc"] - f) <= 0.5 and abs(got["retain_acc"] - r) <= 0.5, (got, f, r)


def test_help_of_fim_forget_eval_says_each_model_is_fed_its_own_preprocessing(cli):
    """`--help` tells a user what the numbers depend on: the model's own data config, and the sidecar fallback."""
    helps = {cmd: " ".join(cli(cmd, "--help")[1].split()) for cmd in ("fim", "forget", "eval")}  # unwrapped
    for cmd, text in helps.items():
        assert "own preprocessing" in text, cmd
    assert "records that preprocessing" in helps["fim"]
    assert "nearest ancestors'" in helps["forget"] and "fiun-hub fim" in helps["forget"]
    assert "held out" in helps["eval"]


@pytest.mark.parametrize("bad", [{"mean": ["grey"]}, {"mean": "0.5"}, {"input_size": [1, 0, 16]}],
                         ids=["non-numeric-mean", "string-mean", "size-0"])
def test_a_malformed_config_in_the_hub_is_one_line_exit_2_for_fim_forget_eval(sidecar_hub, cli, hub_fingerprint,
                                                                                bad):
    """A config.json already in the hub (uploaded by another client) with a non-numeric mean or an input size
    of 0: `fim`, `forget` and `eval` each answer one line and exit 2, and nothing in the hub changes."""
    hub = sidecar_hub
    cfg = json.loads(hub.read_file("t/m", CONFIG_FILE))
    cfg["pretrained_cfg"].update(bad)
    _publish(hub, "t/m", {CONFIG_FILE: json.dumps(cfg).encode()})
    before = hub_fingerprint(hub.root)
    for args in (("fim", "t/m", "--data", "digits:train"), ("forget", "--origin", "t/m", "--classes", "3"),
                 ("eval", "t/m", "--data", "digits:test")):
        code, out, err = cli("--hub", hub.root, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("fiun-hub: error: "), (args, err)
        assert ("mean" in err or "input_size" in err) and "Traceback" not in out + err, (args, err)
        assert hub_fingerprint(hub.root) == before, args


@pytest.mark.parametrize("recorded", [
    '{"crop_mode":"squash","crop_pct":1.0,"input_size":[1,16,16],"interpolation":"lanczos","mean":[0.5],"std":[0.5]}',
    '{"crop_mode":"squash","crop_pct":1.0,"input_size":[1,16,16],"interpolation":"bilinear","mean":[0.5],'
    '"std":[0.5],"gamma":2.2}',
    '{"crop_mode":"squash","crop_pct":1.0,"input_size":[1,0,16],"interpolation":"bilinear","mean":[0.5],"std":[0.5]}',
], ids=["unknown-interpolation", "unknown-key", "size-0"])
def test_a_sidecar_with_unknown_preprocessing_is_one_line_exit_2(sidecar_hub, cli, hub_fingerprint, recorded):
    """A sidecar whose recorded preprocessing fiun-hub does not know: `show` and `lineage` call it invalid, a
    forget (plan or run) answers one line, exit 2, nothing changed."""
    from fiun_hub import lineage

    hub = sidecar_hub
    _publish(hub, "t/m", _rewrite_meta(hub, "t/m", lambda m: m.update(preprocessing=recorded)))
    assert lineage.sidecar_state(hub, "t/m", hub.list_files("t/m"), hub.resolve("t/m")) == "invalid"
    before = hub_fingerprint(hub.root)
    code, out, _ = cli("--hub", hub.root, "--json", "show", "t/m")
    assert code == 0 and json.loads(out)["sidecar"]["state"] == "invalid"
    for extra in ((), ("--dry-run",)):
        code, out, err = cli("--hub", hub.root, "forget", "--origin", "t/m", "--classes", "3", *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "preprocessing" in err and "Traceback" not in err, (extra, err)
    assert hub_fingerprint(hub.root) == before
