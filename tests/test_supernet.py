"""Supernet slicing, bands and the budget: CPU, seconds."""

import random

import pytest
import torch

from autokd.errors import AutokdError
from autokd.spaces import ArchSpec, load_space
from autokd.supernet import recalibrate_bn, space_bands, split_bands, supernet_for
from autokd.supernet.bands import BandSpace
from autokd.supernet.select import score_subnet


def vit(depth, dim, heads, ratios, pool="avg", patch=8):
    return ArchSpec.make("vit", depth=depth, embed_dim=dim, head_dim=64, heads=heads, mlp_ratio=ratios,
                         patch_size=patch, pool=pool)


def cnn(depths, widths, shortcut="A"):
    return ArchSpec.make("cifar_resnet", depths=depths, widths=widths, shortcut=shortcut)


VIT_SPECS = [
    vit(4, 192, (2, 2, 2, 2), (2.0,) * 4),  # the space's smallest
    vit(4, 224, (3, 5, 2, 4), (2.5, 4.0, 2.0, 3.0), pool="token"),
    vit(5, 256, (4, 2, 6, 3, 7), (3.5, 2.0, 4.0, 2.5, 3.0)),
    vit(6, 288, (7,) * 6, (4.0,) * 6, pool="token"),  # the largest: the container itself
    vit(4, 192, (2, 3, 2, 3), (2.0, 2.5, 2.0, 3.0), patch=4),
]
CNN_SPECS = [
    cnn((1, 1, 1), (8, 8, 8)),  # the space's smallest
    cnn((2, 3, 1), (8, 16, 32), "B"),
    cnn((3, 1, 4), (16, 16, 48)),
    cnn((4, 4, 4), (24, 48, 64), "B"),  # the largest: the container itself
]


@pytest.fixture(scope="module")
def vit_net():
    torch.manual_seed(0)
    return supernet_for(load_space("vit", 32), VIT_SPECS, 10)


@pytest.fixture(scope="module")
def cnn_net():
    torch.manual_seed(0)
    return supernet_for(load_space("cifar_resnet", 32), CNN_SPECS, 10)


@pytest.mark.parametrize("spec", VIT_SPECS, ids=lambda s: s.short())
def test_vit_subnet_equals_standalone_model_with_sliced_weights(vit_net, spec):
    x = torch.randn(3, 3, 32, 32)
    vit_net.eval()
    with torch.no_grad():
        expected = vit_net.subnet(spec)(x)
        model = load_space("vit", 32).build(spec, 10)
        model.load_state_dict(vit_net.inherit(spec))  # strict: every key of the stand-alone model
        assert torch.allclose(model.eval()(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", CNN_SPECS, ids=lambda s: s.short())
def test_cnn_subnet_equals_standalone_model_with_sliced_weights(cnn_net, spec):
    x = torch.randn(4, 3, 32, 32)
    cnn_net.train()  # the supernet normalises with batch statistics; so does a model in train mode
    with torch.no_grad():
        expected = cnn_net.subnet(spec)(x)
        model = load_space("cifar_resnet", 32).build(spec, 10)
        model.load_state_dict(cnn_net.inherit(spec))
        assert torch.allclose(model.train()(x), expected, atol=1e-5, rtol=1e-5)


def test_slices_are_leading_blocks_of_the_shared_weights(vit_net, cnn_net):
    small = cnn_net.inherit(CNN_SPECS[1])
    store = cnn_net.store.state_dict()
    assert torch.equal(small["layer2.0.conv1.weight"], store["layer2.0.conv1.weight"][:16, :8])
    assert torch.equal(small["layer3.0.shortcut.0.weight"], store["layer3.0.shortcut.0.weight"][:32, :16])
    spec = VIT_SPECS[1]
    w = vit_net.inherit(spec)["blocks.1.attn.qkv.weight"]  # 5 heads of 64 of each of Q, K, V
    full = vit_net.blocks[1].attn.qkv.weight
    width = full.shape[0] // 3
    for j in range(3):
        assert torch.equal(w[j * 320:(j + 1) * 320], full[j * width:j * width + 320, :224])
    assert torch.equal(vit_net.inherit(spec)["pos_embed"], vit_net.pos["8"][:, :, :224])  # class-token slot
    assert torch.equal(vit_net.inherit(VIT_SPECS[0])["pos_embed"], vit_net.pos["8"][:, 1:, :192])


def test_extract_recalibrates_batchnorm_on_given_images(cnn_net):
    spec = CNN_SPECS[2]
    images = [torch.randn(16, 3, 32, 32) + 2.0 for _ in range(2)]
    model = cnn_net.extract(spec, calibration=images)
    assert model.bn1.running_mean.abs().sum() > 0  # not the initial zeros
    again = load_space("cifar_resnet", 32).build(spec, 10)
    again.load_state_dict(cnn_net.inherit(spec))
    recalibrate_bn(again, images)
    assert torch.allclose(again.bn1.running_var, model.bn1.running_var, atol=1e-5)


def test_a_spec_outside_the_supernet_is_refused(cnn_net):
    with pytest.raises(AutokdError, match="not a subnet"):
        cnn_net.subnet(cnn((5, 1, 1), (8, 8, 8)))
    with pytest.raises(AutokdError, match="not a subnet"):
        cnn_net.inherit(cnn((1, 1, 1), (8, 8, 128)))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_bands_cover_the_range_without_overlap(k):
    low, budget = 1_829_456, 50_000_000
    bands = split_bands(low, budget, k)
    assert len(bands) == k and bands[0].low == low and bands[-1].high == budget
    assert all(a.high == b.low for a, b in zip(bands, bands[1:]))
    rng = random.Random(0)
    for macs in [low, budget, *(b.high for b in bands), *(rng.randint(low, budget) for _ in range(500))]:
        assert sum(b.holds(macs) for b in bands) == 1
    assert not any(b.holds(budget + 1) or b.holds(low - 1) for b in bands)


def test_bands_refuse_impossible_settings():
    with pytest.raises(AutokdError, match="at least 1"):
        split_bands(10, 100, 0)
    with pytest.raises(AutokdError, match="over the"):
        split_bands(200, 100, 3)


def test_band_sampling_stays_in_band_even_in_a_thin_band():
    space = load_space("vit", 32)
    band = space_bands(space, 50_000_000, 3, 10)[0]  # the smallest ViTs: few random draws land here
    rng = random.Random(0)
    for _ in range(5):
        assert band.band.holds(band.estimate(band.sample(rng)))


def test_every_over_budget_subnet_is_refused(cnn_net):
    space = cnn_net.space
    budget = 6_000_000
    band = BandSpace(space, split_bands(1_829_456, budget, 1)[0], 10, budget=budget)
    heldout = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), torch.randn(8, 10))]
    over = [s for s in CNN_SPECS if band.exact_macs(s) > budget]
    assert over, "the test needs specs over the budget"
    for spec in over:
        with pytest.raises(AutokdError, match="not scored"):
            score_subnet(cnn_net, band, spec, heldout, None)
    scored = score_subnet(cnn_net, band, CNN_SPECS[0], heldout, [heldout[0][0]])
    assert scored["macs"] <= budget and 0 <= scored["top1"] <= 100
