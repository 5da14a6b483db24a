"""Search spaces: sampling, building, mutation, encoding, closed-form MACs against fvcore, YAML, teachers."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from autokd.cost import count_macs, count_params
from autokd.errors import AutokdError
from autokd.spaces import SPACES, ArchSpec, available_spaces, default_spaces, load_space
from autokd.spaces.choice import gene_changes
from autokd.spaces.cifar_resnet import CifarResNet, ShortcutA
from autokd.spaces.vit import VitSpace

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEACHERS = SHARED / "teachers"
# Each space at a resolution it suits; forward passes use the smaller size to stay fast.
SPACE_SIZES = [("vit", 224), ("vit", 32), ("resnet", 224), ("mobilenet", 224), ("cifar_resnet", 32), ("nb201", 32)]
FORWARD_SIZES = [("vit", 32), ("resnet", 64), ("mobilenet", 64), ("cifar_resnet", 32), ("nb201", 32)]
# The estimate is checked where counting is cheap, at sizes whose odd halvings exercise the padding arithmetic
# (100 -> 50 -> 25 -> 13 -> 7 -> 4), and on a few specs at 224 px.
COUNT_SIZES = [("vit", 64), ("resnet", 100), ("mobilenet", 100), ("cifar_resnet", 32), ("nb201", 32)]


@pytest.fixture(scope="module")
def spaces():
    return {key: load_space(*key) for key in SPACE_SIZES + FORWARD_SIZES + COUNT_SIZES}


def test_registry_and_yaml_files_agree():
    assert available_spaces() == sorted(SPACES)
    for name in available_spaces():
        space = load_space(name, 224)
        assert isinstance(space, SPACES[name]) and space.name == name


@pytest.mark.parametrize("key", FORWARD_SIZES, ids=lambda k: f"{k[0]}@{k[1]}")
def test_sampled_specs_build_and_run(spaces, key):
    space, img = spaces[key], key[1]
    rng = random.Random(0)
    x = torch.randn(2, 3, img, img)
    for _ in range(4):
        spec = space.sample(rng)
        assert spec.space == key[0]
        model = space.build(spec, num_classes=7).eval()
        with torch.no_grad():
            logits = model(x)
            features = model.forward_features(x)
            pooled = model.forward_head(features, pre_logits=True)
        classifier = model.get_classifier()
        assert logits.shape == (2, 7) and torch.isfinite(logits).all()
        assert features.shape[0] == 2 and features.ndim in (3, 4)  # ViT tokens (B,N,C) or CNN maps (B,C,H,W)
        assert isinstance(classifier, nn.Linear) and classifier.out_features == 7
        assert classifier.in_features == model.num_features and pooled.shape == (2, model.num_features)
        torch.testing.assert_close(classifier(pooled), logits)


@pytest.mark.parametrize("key", SPACE_SIZES, ids=lambda k: f"{k[0]}@{k[1]}")
def test_encode_decode_round_trip(spaces, key):
    space = spaces[key]
    dists = space.distributions()
    rng = random.Random(1)
    for _ in range(200):
        spec = space.sample(rng)
        params = space.encode(spec)
        assert params.keys() == dists.keys()
        for name, value in params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(value)), (name, value)
        assert space.decode(params) == spec
        assert space.encode(space.decode(params)) == params
        assert ArchSpec.from_json(spec.to_json()) == spec
        # Any point of the Optuna space decodes to a valid spec, and decoding is idempotent.
        raw = {name: rng.choice(space.choices()[name]) for name in dists}
        decoded = space.decode(raw)
        assert space.decode(space.encode(decoded)) == decoded


def test_decode_rejects_values_outside_the_space(spaces):
    space = spaces[("resnet", 224)]
    params = space.encode(space.sample(random.Random(0)))
    with pytest.raises(AutokdError, match="width_2"):
        space.decode({**params, "width_2": 100})


@pytest.mark.parametrize("key", SPACE_SIZES, ids=lambda k: f"{k[0]}@{k[1]}")
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_mutate_changes_one_or_two_genes(spaces, key, seed):
    space = spaces[key]
    rng = random.Random(seed)
    parent = space.sample(rng)
    child = space.mutate(parent, rng)
    assert child != parent and 1 <= gene_changes(parent, child) <= 2
    assert space.decode(space.encode(child)) == child  # still a valid spec of the space


@pytest.mark.parametrize("key", SPACE_SIZES, ids=lambda k: f"{k[0]}@{k[1]}")
def test_mutations_cover_one_and_two_genes_and_every_gene(spaces, key):
    space = spaces[key]
    rng = random.Random(2)
    counts, touched = set(), set()
    for _ in range(300):
        parent = space.sample(rng)
        child = space.mutate(parent, rng)
        counts.add(gene_changes(parent, child))
        touched |= {k for k, v in parent.genes if child[k] != v}
    assert counts == {1, 2}
    varying = {k for k, v in space.scalars.items() if len(v) > 1}
    varying |= {g.name for g in space.lists if any(len(c) > 1 for c in g.choices)}
    assert touched == varying


@pytest.mark.parametrize(
    "key, n",
    [(k, 50) for k in COUNT_SIZES] + [(k, 4) for k in SPACE_SIZES if k[1] == 224],
    ids=lambda k: f"{k[0]}@{k[1]}" if isinstance(k, tuple) else f"x{k}",
)
def test_estimate_matches_fvcore_within_2_percent(spaces, key, n):
    space, img = spaces[key], key[1]
    rng = random.Random(3)
    errors = []
    for _ in range(n):
        spec = space.sample(rng)
        real = count_macs(space.build(spec, 10), img)
        errors.append(abs(space.estimate_macs(spec, num_classes=10) - real) / real)
    assert max(errors) < 0.02, max(errors)


@pytest.mark.parametrize("key", SPACE_SIZES, ids=lambda k: f"{k[0]}@{k[1]}")
def test_smallest_and_seeds(spaces, key):
    space = spaces[key]
    smallest = space.smallest()
    assert space.decode(space.encode(smallest)) == smallest
    rng = random.Random(4)
    floor = space.estimate_macs(smallest)
    assert all(floor <= space.estimate_macs(space.sample(rng)) for _ in range(300))
    for neighbour in (space.mutate(smallest, rng) for _ in range(50)):
        assert space.estimate_macs(neighbour) >= floor
    seeds = space.seeds()
    assert len(set(seeds)) == len(seeds)
    assert seeds or key[0] == "nb201"  # NB201's known-good cells come from the benchmark's results: none seeded
    for seed in seeds:
        assert space.decode(space.encode(seed)) == seed


def test_deit_tiny_shaped_spec_matches_timm():
    space = VitSpace({"head_dim": ["split", 64]}, 224)
    genes = dict(depth=12, embed_dim=192, heads=(3,) * 12, mlp_ratio=(4.0,) * 12, patch_size=16, pool="token")
    spec = space.decode(space.encode(ArchSpec.make("vit", head_dim="split", **genes)))
    model = space.build(spec, 1000)
    assert count_params(model) == count_params(timm.create_model("deit_tiny_patch16_224")) == 5_717_416
    assert count_macs(model, 224) == pytest.approx(1.26e9, rel=0.01)
    # AutoFormer's fixed 64-wide heads give the same net when heads * 64 == embed_dim.
    fixed = space.build(spec.replace(head_dim=64), 1000)
    assert count_params(fixed) == count_params(model)
    assert space.estimate_macs(spec.replace(head_dim=64)) == space.estimate_macs(spec)


def test_vit_fixed_head_dim_sets_attention_width():
    space = load_space("vit", 32)
    spec = space.snap(dict(depth=4, embed_dim=192, heads=(2, 3, 5, 7), mlp_ratio=(2.0,) * 4, head_dim=64))
    model = space.build(spec, 10)
    assert [b.attn.qkv.out_features for b in model.blocks] == [3 * 64 * h for h in (2, 3, 5, 7)]
    assert [b.attn.proj.in_features for b in model.blocks] == [64 * h for h in (2, 3, 5, 7)]


def test_vit_split_heads_divide_embed_dim():
    space = VitSpace({"head_dim": "split"}, 224)
    rng = random.Random(5)
    for _ in range(300):
        spec = space.sample(rng)
        assert all(spec["embed_dim"] % h == 0 for h in spec["heads"])
    assert space.decode({**space.encode(spec), "embed_dim": 224, "heads_0": 3})["heads"][0] in (2, 4)


def test_vit_patch_sizes_follow_the_resolution():
    assert load_space("vit", 224).choices()["patch_size"] == (14, 16, 32)
    assert load_space("vit", 32).choices()["patch_size"] == (4, 8)
    odd = load_space("vit", 100)
    assert not odd.suits()
    with pytest.raises(AutokdError, match="patch_size"):
        odd.sample(random.Random(0))


def test_mobilenet_v2_seed_is_timm_mobilenetv2():
    space = load_space("mobilenet", 224)
    v2 = space.seeds()[0]
    assert v2["widths"] == (24, 32, 64, 96, 160, 320) and v2["depths"] == (2, 3, 4, 3, 3, 1)
    ours, theirs = space.build(v2, 1000), timm.create_model("mobilenetv2_100")
    assert count_params(ours) == count_params(theirs)
    assert space.estimate_macs(v2) == count_macs(theirs, 224)


def test_suits_and_default_spaces():
    assert load_space("cifar_resnet", 32).suits() and not load_space("cifar_resnet", 224).suits()
    assert load_space("resnet", 224).suits() and not load_space("resnet", 32).suits()
    assert default_spaces("resnet", 32) == ["cifar_resnet", "vit"]
    assert default_spaces("deit", 224) == ["vit"]
    assert default_spaces("resnet", 224) == ["resnet", "mobilenet"]
    assert default_spaces("convnext", 224) == ["resnet", "mobilenet"]
    assert default_spaces("efficientnet", 224) == ["mobilenet"]
    assert default_spaces("vit", 100) == ["mobilenet", "resnet"]  # no patch size divides 100 px


def test_yaml_errors_name_the_problem(tmp_path):
    bad_key = tmp_path / "mine.yaml"
    bad_key.write_text("family: vit\ndepthh: [4, 6]\n")
    with pytest.raises(AutokdError, match="depthh"):
        load_space(str(bad_key), 224)
    bad_family = tmp_path / "other.yaml"
    bad_family.write_text("family: transformer\n")
    with pytest.raises(AutokdError, match="family"):
        load_space(str(bad_family), 224)
    with pytest.raises(AutokdError, match="cifar_resnet"):  # the message lists the available spaces
        load_space("no_such_space", 224)
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("family: resnet\nblock: [basic, dense]\n")
    with pytest.raises(AutokdError, match="dense"):
        load_space(str(bad_value), 224)


def test_yaml_path_with_custom_choices(tmp_path):
    path = tmp_path / "tiny_vit.yaml"
    path.write_text("family: vit\ndepth: [2, 3]\nembed_dim: 64\nheads: [1, 2]\nhead_dim: split\npool: avg\n")
    space = load_space(str(path), 32)
    spec = space.sample(random.Random(0))
    assert spec.space == "tiny_vit" and spec["depth"] in (2, 3) and spec["embed_dim"] == 64
    assert set(space.distributions()) == {
        "depth",
        "patch_size",
        "heads_0",
        "heads_1",
        "heads_2",
        "mlp_ratio_0",
        "mlp_ratio_1",
        "mlp_ratio_2",
    }


def test_cifar_resnet_parameter_counts_and_names():
    assert count_params(CifarResNet(depths=(3, 3, 3))) == 269_722  # ResNet-20: 0.27M
    assert count_params(CifarResNet(depths=(9, 9, 9))) == 853_018  # ResNet-56: 0.85M
    model = CifarResNet(depths=(1, 1, 1), widths=(16, 16, 32), shortcut="B")
    # the teachers' checkpoints name these parameterised children; activations are parameter-free modules
    names = {n for n, m in model.named_children() if any(True for _ in m.parameters())}
    assert names == {"conv1", "bn1", "layer1", "layer2", "layer3", "linear"}
    assert isinstance(model.layer3[0].shortcut, nn.Sequential) and len(model.layer3[0].shortcut) == 2
    with pytest.raises(AutokdError, match="decrease"):
        CifarResNet(widths=(32, 16, 64))
    model.reset_classifier(100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100) and model.get_classifier().out_features == 100


def test_cifar_widths_never_decrease(spaces):
    space = spaces[("cifar_resnet", 32)]
    rng = random.Random(6)
    for _ in range(300):
        widths = space.mutate(space.sample(rng), rng)["widths"]
        assert list(widths) == sorted(widths)


def test_shortcut_a_subsamples_and_pads_both_sides():
    x = torch.randn(1, 16, 8, 8)
    y = ShortcutA(16, 32, stride=2)(x)
    assert y.shape == (1, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def _teacher_state(n: int) -> dict[str, torch.Tensor]:
    paths = list(TEACHERS.glob(f"cifar10_resnet{6 * n + 2}-*.th"))
    if not paths:
        pytest.skip(f"no ResNet-{6 * n + 2} teacher in {TEACHERS}")
    state = torch.load(paths[0], map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


@pytest.mark.parametrize("n", [3, 5, 7, 9])
def test_pretrained_teachers_load_strictly(n):
    model = CifarResNet(depths=(n, n, n))
    model.load_state_dict(_teacher_state(n), strict=True)


@pytest.mark.realdata
def test_resnet20_teacher_classifies_cifar_test_images():
    archive = SHARED / "data" / "cifar10-jpeg.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} absent")
    from PIL import Image

    model = CifarResNet(depths=(3, 3, 3)).eval()
    model.load_state_dict(_teacher_state(3))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images, labels = [], []
    with zipfile.ZipFile(archive) as zf:
        for label, cls in enumerate(classes):
            for i in range(20):
                image = Image.open(io.BytesIO(zf.read(f"test/{cls}/{i:04d}.jpg"))).convert("RGB")
                images.append((np.asarray(image, dtype=np.float32) / 255 - mean) / std)
                labels.append(label)
    x = torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == torch.tensor(labels)).float().mean().item()
    assert accuracy > 0.7  # about 0.81 on the JPEG test set; a wrong shortcut or layout gives ~0.1
