import logging
import os

import pytest
import timm
import torch
import torch.nn as nn

from autokd.data import load_data
from autokd.data.split import scoring_indices
from autokd.errors import AutokdError
from autokd.teachers import CIFAR_RESNET_BLOCKS, TEACHER_ALIASES, infer_family, resolve_teacher

RESNET56 = "cifar10_resnet56-4bfd9763.th"


def test_every_alias_names_a_timm_model_or_a_cifar_resnet():
    for alias, target in TEACHER_ALIASES.items():
        assert timm.is_model(target) or target in CIFAR_RESNET_BLOCKS, alias
    assert TEACHER_ALIASES["vit_b"] == "vit_base_patch16_224"
    assert TEACHER_ALIASES["mnv3_l"] == "mobilenetv3_large_100"


@pytest.mark.parametrize(
    "alias, name, family",
    [
        ("deit_t", "deit_tiny_patch16_224", "vit"),
        ("resnet18", "resnet18", "resnet"),
        ("mnv3_s", "mobilenetv3_small_100", "mobilenet"),
        ("effnet_b0", "efficientnet_b0", "mobilenet"),
        ("convnext_atto", "convnext_atto", "convnext"),
        ("resnet20_cifar", "resnet20_cifar", "cifar_resnet"),
    ],
)
def test_alias_resolution_and_family(alias, name, family):
    teacher = resolve_teacher(alias, num_classes=7)
    assert (teacher.name, teacher.family, teacher.num_classes, teacher.pretrained) == (name, family, 7, False)
    assert not teacher.model.training
    with torch.no_grad():
        assert teacher.model(torch.zeros(1, 3, teacher.img_size, teacher.img_size)).shape == (1, 7)


def test_vit_b_random_teacher_with_one_line_note():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    teacher = resolve_teacher("vit_b", num_classes=10)
    assert teacher.name == "vit_base_patch16_224" and teacher.family == "vit" and not teacher.pretrained
    assert (teacher.img_size, teacher.crop_pct, teacher.interpolation) == (224, 0.9, "bicubic")
    assert teacher.model.get_classifier().out_features == 10
    assert 85e6 < sum(p.numel() for p in teacher.model.parameters()) < 87e6
    notes = teacher.notes  # the caller shows them (the CLI logs each)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "randomly initialised" in notes[0] and "DisWOT" in notes[0] and "weights" in notes[0]


def test_timm_name_with_input_size_override():
    teacher = resolve_teacher("test_vit", num_classes=5, img_size=96)
    assert teacher.family == "vit" and teacher.img_size == 96 and teacher.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        assert teacher.model(torch.zeros(2, 3, 96, 96)).shape == (2, 5)  # position embeddings fit 96 px
    image = load_data(None).train.load_image(0)
    assert teacher.transform()(image).shape == (3, 96, 96)
    assert teacher.transform(training=True)(image).shape == (3, 96, 96)
    assert resolve_teacher("test_resnet", num_classes=3).family == "resnet"


def test_timm_weights_file_adapts_the_head(tmp_path, caplog):
    source = timm.create_model("test_vit")  # 1000 classes
    torch.save(source.state_dict(), tmp_path / "w.pth")
    logging.getLogger("timm").setLevel(logging.WARNING)  # as the CLI does
    try:
        with caplog.at_level(logging.INFO):
            teacher = resolve_teacher("test_vit", num_classes=10, weights=tmp_path / "w.pth")
    finally:
        logging.getLogger("timm").setLevel(logging.NOTSET)
    assert teacher.pretrained and teacher.notes == []
    assert not [r for r in caplog.records if r.name.startswith("timm")]  # timm's INFO lines stay quiet
    assert torch.equal(teacher.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert teacher.model.get_classifier().out_features == 10


def test_timm_weights_found_in_the_local_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert not resolve_teacher("test_vit", num_classes=4).pretrained
    repo = tmp_path / "models--timm--test_vit.r160_in1k"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    source = timm.create_model("test_vit")
    save_file(source.state_dict(), repo / "snapshots" / "abc" / "model.safetensors")
    teacher = resolve_teacher("test_vit", num_classes=4)
    assert teacher.pretrained and torch.equal(teacher.model.pos_embed, source.pos_embed)


def test_bad_weights_files(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02 definitely not a checkpoint")
    for name in ("test_vit", "resnet20_cifar"):
        with pytest.raises(AutokdError, match="corrupt or not a state dict"):
            resolve_teacher(name, num_classes=10, weights=tmp_path / "corrupt.pth")
    with pytest.raises(AutokdError, match="does not exist"):
        resolve_teacher("test_vit", num_classes=10, weights=tmp_path / "missing.pth")
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(AutokdError, match="do not fit test_vit"):  # head adapted: timm only logs missing keys
        resolve_teacher("test_vit", num_classes=10, weights=tmp_path / "resnet.pth")
    with pytest.raises(AutokdError, match="do not fit test_vit"):  # same head: timm's strict load fails
        resolve_teacher("test_vit", num_classes=1000, weights=tmp_path / "resnet.pth")


FACTORIES = '''
import timm
import torch.nn as nn

def with_classes(num_classes):
    return timm.create_model("test_convnext", num_classes=num_classes)

def fixed_timm():
    return timm.create_model("test_resnet")  # 1000 classes; timm's reset_classifier fixes it

def fixed_plain():
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))

def not_a_model(num_classes):
    return "model"
'''


def test_module_factory_teachers(tmp_path, monkeypatch):
    (tmp_path / "my_teachers.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    teacher = resolve_teacher("my_teachers:with_classes", num_classes=6)
    assert teacher.family == "convnext" and teacher.model.get_classifier().out_features == 6
    assert not teacher.pretrained and teacher.img_size == 160  # from the timm model's pretrained_cfg
    reset = resolve_teacher("my_teachers:fixed_timm", num_classes=6)
    assert reset.family == "resnet" and reset.model.get_classifier().out_features == 6
    by_file = resolve_teacher(f"{tmp_path / 'my_teachers.py'}:with_classes", num_classes=2)
    assert by_file.model.get_classifier().out_features == 2
    with pytest.raises(AutokdError, match="returns 3 classes.*reset_classifier"):
        resolve_teacher("my_teachers:fixed_plain", num_classes=6, img_size=8)
    with pytest.raises(AutokdError, match="not an nn.Module"):
        resolve_teacher("my_teachers:not_a_model", num_classes=6)
    with pytest.raises(AutokdError, match="no callable 'nope'"):
        resolve_teacher("my_teachers:nope", num_classes=6)
    with pytest.raises(AutokdError, match="cannot import no_such_pkg"):
        resolve_teacher("no_such_pkg.models:factory", num_classes=6)


def test_module_factory_with_weights_file(tmp_path, monkeypatch):
    (tmp_path / "my_teachers2.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    trained = timm.create_model("test_convnext", num_classes=1000)
    wrapped = {f"module.{k}": v for k, v in trained.state_dict().items()}  # as saved from DDP
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "t.pth")
    teacher = resolve_teacher("my_teachers2:with_classes", num_classes=6, weights=tmp_path / "t.pth")
    assert teacher.pretrained and teacher.model.get_classifier().out_features == 6
    assert torch.equal(teacher.model.stem[0].weight, trained.stem[0].weight)
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(AutokdError, match="do not fit"):
        resolve_teacher("my_teachers2:with_classes", num_classes=6, weights=tmp_path / "other.pth")


def test_unknown_teacher_suggests_close_names():
    with pytest.raises(AutokdError, match=r"unknown teacher 'vit_bb': did you mean vit_b\b"):
        resolve_teacher("vit_bb", num_classes=10)
    with pytest.raises(AutokdError, match="resnet18"):
        resolve_teacher("resnet181", num_classes=10)


def test_cifar_resnet_weights_and_other_class_counts(shared_teachers, tmp_path):
    weights = shared_teachers / "cifar10_resnet20-12fca82f.th"
    reference = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    teacher = resolve_teacher("resnet20_cifar", num_classes=100, weights=weights)
    assert teacher.pretrained and teacher.model.linear.out_features == 100
    assert torch.equal(teacher.model.layer2[0].conv1.weight, reference["module.layer2.0.conv1.weight"])
    with pytest.raises(AutokdError, match="do not fit resnet56_cifar"):
        resolve_teacher("resnet56_cifar", num_classes=10, weights=weights)


@pytest.mark.realdata
def test_resnet56_cifar_scores_well_on_real_cifar10(shared_teachers, shared_data):
    teacher = resolve_teacher("resnet56_cifar", num_classes=10, weights=shared_teachers / RESNET56)
    assert teacher.pretrained and teacher.family == "cifar_resnet" and teacher.img_size == 32
    assert infer_family(teacher.model) == "cifar_resnet"
    data = load_data(shared_data / "cifar10-jpeg.zip")
    transform = teacher.transform()
    picks = scoring_indices(data.test.labels, range(len(data.test)), 200, seed=0)
    images = torch.stack([transform(data.test.load_image(int(i))) for i in picks])
    labels = torch.tensor([data.test.labels[i] for i in picks])
    with torch.no_grad():
        accuracy = (teacher.model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.70  # README: about 83% on the full JPEG test set; chance is 10%


def test_family_of_unknown_architecture_is_other():
    assert infer_family(nn.Linear(2, 2)) == "other"
