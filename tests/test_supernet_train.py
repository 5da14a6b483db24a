"""Sandwich training, resume and in-band search of supernets: CPU, seconds."""

import random

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from autokd.errors import AutokdError
from autokd.recipes import KDLoss, Recipe
from autokd.spaces import ArchSpec, load_space
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.supernet import (
    SupernetRun,
    inherit,
    load_supernet,
    sandwich_specs,
    sandwich_step,
    search_band,
    split_bands,
    supernet_for,
    train_supernet,
)
from autokd.supernet.bands import BandSpace
from autokd.supernet.train import TeacherTargets


def cnn(depths, widths, shortcut="A"):
    return ArchSpec.make("cifar_resnet", depths=depths, widths=widths, shortcut=shortcut)


LARGEST, SMALLEST = cnn((3, 3, 3), (16, 24, 32), "B"), cnn((1, 1, 1), (8, 8, 8))
RANDOM = [cnn((2, 1, 3), (8, 16, 24)), cnn((1, 3, 2), (16, 16, 32), "B")]
RECIPE = Recipe(optimizer="sgd", lr=0.05, weight_decay=0.0, epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def space():
    return load_space("cifar_resnet", 32)


@pytest.fixture(scope="module")
def band(space):
    return BandSpace(space, split_bands(1_829_456, 12_000_000, 1)[0], 10)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(1)
    return CifarResNet((1, 1, 1), (16, 32, 64), num_classes=10).eval()


def fresh(space):
    torch.manual_seed(0)
    return supernet_for(space, [LARGEST, SMALLEST, *RANDOM], 10)


def loader():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g))
    return DataLoader(data, batch_size=16)


def step(net, teacher, specs):
    images, labels = next(iter(loader()))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    targets = TeacherTargets(teacher, net)
    try:
        return sandwich_step(net.train(), specs, images, labels, targets, KDLoss(RECIPE), optimizer)
    finally:
        targets.close()


def test_sandwich_step_updates_the_shared_weights_of_all_four_subnets(space, teacher):
    net = fresh(space)
    specs = [LARGEST, SMALLEST, *RANDOM]
    before = {s: {k: v.detach().clone() for k, v in net.sliced(s).items()} for s in specs}
    losses = step(net, teacher, specs)
    assert len(losses) == 4 and all(kind == "relation" for _, kind in losses)
    for spec in specs:
        after = net.sliced(spec)
        weights = [k for k in after if k.endswith("conv1.weight") or k.endswith("linear.weight")]
        assert all(not torch.equal(after[k], before[spec][k]) for k in weights), spec.short()


def test_training_the_smallest_subnet_changes_only_its_slice(space, teacher):
    net = fresh(space)
    store = {k: v.detach().clone() for k, v in net.store.state_dict().items()}
    step(net, teacher, [SMALLEST])
    mine = net.sliced(SMALLEST)
    changed = {k for k, v in net.store.state_dict().items() if not torch.equal(v, store[k])}
    assert changed and changed <= set(mine)  # nothing outside its layers moved
    w = net.store.conv1.weight
    assert torch.equal(w[8:], store["conv1.weight"][8:])  # channels past its width are untouched
    assert not torch.equal(w[:8], store["conv1.weight"][:8])


def test_vit_pair_uses_minilm_relations(teacher):
    space = load_space("vit", 32)
    specs = [ArchSpec.make("vit", depth=d, embed_dim=e, head_dim=64, heads=(h,) * d, mlp_ratio=(2.0,) * d,
                           patch_size=8, pool="token") for d, e, h in ((5, 256, 4), (4, 192, 2))]
    torch.manual_seed(0)
    net = supernet_for(space, specs, 10)
    vit_teacher = space.build(ArchSpec.make("vit", depth=4, embed_dim=192, head_dim=64, heads=(3,) * 4,
                                            mlp_ratio=(2.0,) * 4, patch_size=8, pool="token"), 10).eval()
    losses = step(net, vit_teacher, specs)
    assert [kind for _, kind in losses] == ["minilm", "minilm"]
    assert losses[1][0] > 0  # an untrained pair: relations differ


def run_for(band):
    return SupernetRun(band, LARGEST, SMALLEST, RECIPE, seed=3)


def test_resume_equals_an_uninterrupted_run(space, band, teacher, tmp_path):
    whole = fresh(space)
    history = train_supernet(whole, teacher, loader(), run_for(band), tmp_path / "whole")
    assert [h["epoch"] for h in history] == [1, 2]
    stopped = fresh(space)
    train_supernet(stopped, teacher, loader(), run_for(band), tmp_path / "split", stop_after=1)
    assert (tmp_path / "split" / "progress.json").is_file()
    resumed = fresh(space)  # a new process: fresh weights, everything else from supernet.pt
    history = train_supernet(resumed, teacher, loader(), run_for(band), tmp_path / "split")
    assert [h["epoch"] for h in history] == [1, 2]
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_resume_with_other_settings_is_refused(space, band, teacher, tmp_path):
    short = SupernetRun(band, LARGEST, SMALLEST, RECIPE.replace(epochs=1))
    train_supernet(fresh(space), teacher, loader(), short, tmp_path)
    other = SupernetRun(band, LARGEST, SMALLEST, RECIPE.replace(epochs=1), seed=5)
    with pytest.raises(AutokdError, match="another supernet or other settings"):
        train_supernet(fresh(space), teacher, loader(), other, tmp_path)
    with pytest.raises(AutokdError, match="another supernet or other settings"):
        train_supernet(supernet_for(space, [LARGEST, cnn((3, 3, 4), (16, 24, 32))], 10), teacher, loader(), short,
                       tmp_path)


def test_search_and_inherit_from_a_trained_supernet(space, band, teacher, tmp_path):
    net = fresh(space)
    train_supernet(net, teacher, loader(), SupernetRun(band, LARGEST, SMALLEST, RECIPE.replace(epochs=1)), tmp_path)
    images, labels = next(iter(loader()))
    heldout = [(images, labels, teacher(images).detach())]
    results = search_band(net, band, heldout, [images], trials=6, population=3, tournament=2, seed=0)
    assert results and all(r["macs"] <= band.budget for r in results)
    assert results == sorted(results, key=lambda r: -r["top1"])
    spec = ArchSpec.from_json(results[0]["spec"])
    loaded, state = load_supernet(tmp_path / "supernet.pt")
    assert state["epoch"] == 1 and net.contains(spec)
    model = space.build(spec, 10)
    model.load_state_dict(inherit(tmp_path / "supernet.pt", spec))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.train()(x), loaded.train().subnet(spec)(x), atol=1e-5)


def test_random_subnets_come_from_the_band_and_the_supernet(space, band):
    rng = random.Random(0)
    net = supernet_for(space, [LARGEST, *band.pool(40)], 10)
    for _ in range(3):
        specs = sandwich_specs(net, band, LARGEST, SMALLEST, rng)
        assert specs[:2] == [LARGEST, SMALLEST] and len(specs) == 4
        assert all(net.contains(s) and band.band.holds(band.estimate(s)) for s in specs[2:])
