"""fiun_hub.research.deep_forget (issue 16 prototype, not a default): channel selection by hand, exact zeroing of
penultimate channels on real timm ResNets (a downsample last block and identity-shortcut blocks)."""
from __future__ import annotations

import pytest
import torch

from fiun_hub.research.deep_forget import channel_ratio, feature_channel_params, select_channels, zero_feature_channels
from fiun_hub.errors import UnlearnError
from fiun_hub.evaluate import penultimate_features


def test_channel_ratio_and_selection_by_hand():
    u = torch.tensor([[1.0, 0.0, 4.0, 1.0], [1.0, 0.0, 2.0, 0.0]])  # column sums 2, 0, 6, 1
    r = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # column sums 2, 2, 1, 0
    ratio = channel_ratio(u, r)
    assert ratio.tolist() == [1.0, 0.0, 6.0, float("inf")]
    assert select_channels(ratio, alpha=0.5, max_fraction=1.0) == [3, 2, 0]
    assert select_channels(ratio, alpha=2.0, max_fraction=1.0) == [3, 2]
    assert select_channels(ratio, alpha=0.5, max_fraction=0.25) == [3]
    assert select_channels(ratio, alpha=0.5, max_fraction=0.0) == []
    with pytest.raises(UnlearnError):
        channel_ratio(u, r[:, :3])
    with pytest.raises(UnlearnError):
        select_channels(ratio, alpha=0.0)


@pytest.mark.parametrize("arch,size,expect", [
    ("test_resnet", 16, ["layer4.0.bn2", "layer4.0.downsample.2"]),
    ("resnet18", 32, ["layer4.1.bn2", "layer4.0.bn2", "layer4.0.downsample.1"]),
])
def test_zeroed_channels_are_exactly_zero_and_others_are_untouched(arch, size, expect):
    import timm

    torch.manual_seed(0)
    m = timm.create_model(arch, num_classes=5, in_chans=1).eval()
    with torch.no_grad():  # timm zero-inits the last BN of a block: give every BN random affine values
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.5)
    assert feature_channel_params(m) == expect
    x = torch.randn(6, 1, size, size)
    before = penultimate_features(m, x)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    new = zero_feature_channels(m, state, [0, 3])
    m.load_state_dict(new)
    after = penultimate_features(m, x)
    assert torch.equal(after[:, [0, 3]], torch.zeros(6, 2))
    assert before[:, [0, 3]].abs().sum() > 0  # they were not zero before
    changed = [k for k in state if not torch.equal(state[k], new[k])]
    assert sorted(changed) == sorted(f"{p}.{leaf}" for p in expect for leaf in ("weight", "bias"))
    if arch == "test_resnet":  # a downsample block alone: every other channel is bit-identical
        assert torch.equal(after[:, [1, 2, 4]], before[:, [1, 2, 4]])
    with pytest.raises(UnlearnError):
        zero_feature_channels(m, state, [10_000])
    assert zero_feature_channels(m, state, []) == state


def test_unsupported_architecture_is_refused():
    import timm

    with pytest.raises(UnlearnError):
        feature_channel_params(timm.create_model("test_vit", num_classes=3))
