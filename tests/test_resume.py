import signal

import pytest
import torch

from autokd.data import IMAGENET_MEAN, IMAGENET_STD, synthetic_dataset
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.teachers import Teacher
from autokd.train import atomic_save, load_checkpoint, train_student

TRAIN, BATCH = 80, 16
STEPS = (TRAIN - TRAIN // 10) // BATCH  # per epoch (a tenth of train is held out)


def tiny(seed=0):
    torch.manual_seed(seed)
    return CifarResNet(depths=(1, 1, 1), widths=(8, 16, 32), num_classes=4)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_classes=4, train_size=TRAIN, test_size=16, img_size=32)


@pytest.fixture(scope="module")
def teacher():
    return Teacher(model=tiny(seed=9).eval(), name="tiny_teacher", pretrained=True, img_size=32,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0, interpolation="bilinear",
                   family="cifar_resnet", num_classes=4)


# augmentation, mixup and cutmix on: a resumed run must replay views and restore every RNG to match
RECIPE = Recipe.load("kd").replace(epochs=3, batch_size=BATCH, lr=0.05, augmentation="standard", mixup=0.4,
                                   cutmix=0.5, warmup_epochs=1.0)


@pytest.fixture(scope="module")
def uninterrupted(data, teacher, tmp_path_factory):
    student = tiny()
    result = train_student(student, teacher, data, RECIPE, tmp_path_factory.mktemp("full"), progress=False)
    return student.state_dict(), result


def assert_same(state_a, state_b):
    for key, value in state_a.items():
        assert torch.allclose(value.float(), state_b[key].float(), atol=1e-6, rtol=1e-5), key


def test_stop_after_epoch_one_then_resume_matches_an_uninterrupted_run(data, teacher, uninterrupted,
                                                                        tmp_path):
    full_state, full = uninterrupted
    first = train_student(tiny(), teacher, data, RECIPE, tmp_path, max_steps=STEPS, progress=False)
    assert first.stopped == f"max_steps={STEPS} reached" and first.epochs == 1
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 0, STEPS)
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "rng", "cache", "settings"}
    student = tiny(seed=123)  # a fresh process would rebuild it with other weights: the checkpoint wins
    resumed = train_student(student, teacher, data, RECIPE, tmp_path, resume=True, progress=False)
    assert resumed.stopped is None and resumed.epochs == 3
    assert_same(full_state, student.state_dict())
    assert losses(resumed) == pytest.approx(losses(full))
    assert resumed.top1 == full.top1


def losses(result):
    return [h["train_loss"] for h in result.history]


class SigtermAt:
    """The train images, raising SIGTERM (as a scheduler's preemption would) when sample `at` is loaded."""

    def __init__(self, base, at, nth):
        self.base, self.at, self.nth, self.loads = base, at, nth, 0

    def __getattr__(self, name):
        return getattr(self.base, name)

    def __len__(self):
        return len(self.base)

    def load_image(self, index):
        if index == self.at:
            self.loads += 1
            if self.loads == self.nth:
                signal.raise_signal(signal.SIGTERM)
        return self.base.load_image(index)


def test_sigterm_mid_epoch_saves_and_resume_matches(data, teacher, uninterrupted, tmp_path):
    full_state, full = uninterrupted
    from autokd.data import ImageDataset

    order = _epoch_order(data, epoch=1)
    victim = next(i for i in order[2 * BATCH:3 * BATCH] if i > 1)  # in the third step of epoch 2, not among
    # the two images the trainer loads first to size the loss: so its second load is in epoch 2
    wrapped = ImageDataset(data.name, data.classes, SigtermAt(data.train, victim, nth=2), data.test,
                           data.is_real, data.source)
    first = train_student(tiny(), teacher, wrapped, RECIPE, tmp_path, progress=False)
    assert first.stopped == "SIGTERM"
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 3  # the step that loaded it ran, then it saved
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    student = tiny()
    resumed = train_student(student, teacher, data, RECIPE, tmp_path, resume=True, progress=False)
    assert_same(full_state, student.state_dict())
    assert resumed.top1 == full.top1 and resumed.epochs == 3
    # the interrupted epoch's loss and accuracy cover all of it, the part before the stop included
    assert losses(resumed) == pytest.approx(losses(full))
    assert [h["train_top1"] for h in resumed.history] == [h["train_top1"] for h in full.history]


def _epoch_order(data, epoch):
    from autokd.data.split import split_indices
    from autokd.train import EpochSampler

    train_idx, _ = split_indices(data.train.labels, 0.1, seed=0)  # the trainer holds a tenth out
    sampler = EpochSampler(train_idx, seed=0)
    sampler.set_epoch(epoch)
    return [index for _, index in sampler]


def test_resume_errors_are_one_line(data, teacher, tmp_path):
    with pytest.raises(AutokdError, match="no checkpoint at .* to resume from"):
        train_student(tiny(), teacher, data, RECIPE, tmp_path / "empty", resume=True, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AutokdError, match="corrupt") as err:
        train_student(tiny(), teacher, data, RECIPE, tmp_path / "bad", resume=True, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(AutokdError, match="already holds a training run.*--resume"):
        train_student(tiny(), teacher, data, RECIPE, tmp_path / "bad", progress=False)


def test_resume_with_other_settings_is_refused(data, teacher, tmp_path):
    recipe = RECIPE.replace(epochs=1, warmup_epochs=0.0)
    train_student(tiny(), teacher, data, recipe, tmp_path, max_steps=1, progress=False)
    with pytest.raises(AutokdError, match="different recipe"):
        train_student(tiny(), teacher, data, recipe.replace(lr=0.1), tmp_path, resume=True, progress=False)
    with pytest.raises(AutokdError, match="different seed"):
        train_student(tiny(), teacher, data, recipe, tmp_path, resume=True, seed=5, progress=False)


def test_atomic_save_replaces_whole_files_only(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"format": "autokd-train-1", "a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"format": "autokd-train-1", "a": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
