import importlib.util
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn as nn
import yaml

from autokd.cost import count_macs, count_params
from autokd.data import IMAGENET_MEAN, IMAGENET_STD, synthetic_dataset
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.spaces import ArchSpec
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.teachers import Teacher
from autokd.train import (
    ClassificationMeter,
    no_kd,
    resolve_student,
    student_from_timm,
    student_from_trial,
    student_from_yaml,
    train_student,
)
from autokd.train.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def tiny(num_classes=4, seed=0):
    torch.manual_seed(seed)
    return CifarResNet(depths=(1, 1, 1), widths=(8, 16, 32), num_classes=num_classes)


def as_teacher(model, num_classes=4, pretrained=True):
    return Teacher(model=model.eval(), name="tiny_teacher", pretrained=pretrained, img_size=32,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0, interpolation="bilinear",
                   family="cifar_resnet", num_classes=num_classes)


def small_recipe(preset="kd", **changes):
    base = dict(epochs=2, batch_size=16, lr=0.05, augmentation="none")
    return Recipe.load(preset).replace(**{**base, **changes})


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_classes=4, train_size=192, test_size=64, img_size=32)


@pytest.fixture(scope="module")
def trained_teacher(data, tmp_path_factory):
    """A tiny teacher trained without KD for a few epochs (so it is far better than chance)."""
    model = tiny(seed=1)
    result = train_student(model, None, data, small_recipe("none", epochs=4, lr=0.1),
                           tmp_path_factory.mktemp("t"), progress=False)
    assert result.top1 > 60.0  # 4 classes: chance is 25%
    return as_teacher(model)


def test_kd_run_writes_results_and_loadable_checkpoints(data, trained_teacher, tmp_path):
    student = tiny(seed=2)
    result = train_student(student, trained_teacher, data, small_recipe("kd"), tmp_path, progress=True,
                           log_every=3)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["top1"] == result.top1 and saved["epochs"] == 2 and saved["eval_split"] == "test"
    assert saved["eval_images"] == 64 and saved["world_size"] == 1 and saved["stopped"] is None
    assert len(saved["history"]) == 2 and [h["epoch"] for h in saved["history"]] == [1, 2]
    assert "top1" not in result.history[-1]  # the test split is read once, after the last epoch
    assert result.heldout_top1 == result.history[-1]["heldout_top1"] and result.heldout_images == 20
    assert result.best_top1 == max(h["heldout_top1"] for h in result.history)  # best.pt: held-out choice
    assert result.top1 > 40.0  # learnt something in 2 epochs
    assert result.teacher_top1 > 60.0
    assert result.macs == count_macs(tiny(), 32) and result.params == count_params(student)
    assert result.latency_ms > 0 and result.images_per_second > 0 and 0 <= result.ece <= 1
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine ends at zero
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / name, weights_only=True)
        fresh = tiny()
        fresh.load_state_dict(state["model"])
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(last["model"]["linear.weight"], student.linear.weight.detach())
    assert last["epoch"] == 2 and last["global_step"] == 2 * ((192 - 20) // 16)  # 20 held out
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["top1"] == result.best_top1 and best["epoch"] == result.best_epoch
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_teacher_accuracy_is_measured_on_the_same_split(data, trained_teacher, tmp_path):
    from autokd.train import Trainer, evaluate

    trainer = Trainer(tiny(), trained_teacher, data, small_recipe("kd"), tmp_path, CPU)
    direct = evaluate(trained_teacher.model, trainer.loaders.test_loader, CPU)
    meter = ClassificationMeter()
    with torch.no_grad():
        for images, labels in trainer.loaders.test_loader:
            meter.update(trained_teacher.model(images), labels)
    assert direct.top1 == meter.result().top1 and direct.count == 64


def test_heldout_split_when_the_data_has_no_test_part(tmp_path):
    data = synthetic_dataset(num_classes=4, train_size=160, test_size=8, img_size=32)
    data.test = None
    result = train_student(tiny(), None, data, small_recipe("none", epochs=1), tmp_path, progress=False)
    assert result.eval_split == "heldout" and result.eval_images == 16  # a tenth of 160, stratified


def test_baseline_reports_the_gain_over_no_kd(data, trained_teacher, tmp_path):
    result = train_student(tiny(seed=3), trained_teacher, data, small_recipe("kd", epochs=1), tmp_path,
                           baseline=True, progress=False)
    base = json.loads((tmp_path / "baseline" / "results.json").read_text())
    assert base["recipe"]["loss"] == "none" and base["teacher"] is None
    assert result.baseline_top1 == base["top1"]
    assert result.gain == pytest.approx(result.top1 - base["top1"])
    # the baseline starts from the student's initial weights, kept for a resume
    init = torch.load(tmp_path / "init.pt", weights_only=True)["model"]
    assert torch.equal(init["conv1.weight"], tiny(seed=3).conv1.weight.detach())


def test_no_kd_keeps_the_schedule_and_drops_the_teacher():
    recipe = Recipe.load("dkd").replace(teacher_cache=True, epochs=7)
    plain = no_kd(recipe)
    assert plain.loss == "none" and not plain.needs_teacher and not plain.teacher_cache
    assert (plain.epochs, plain.lr, plain.optimizer, plain.batch_size) == (7, recipe.lr, recipe.optimizer,
                                                                           recipe.batch_size)


def test_random_teacher_is_refused_unless_no_kd(data, tmp_path):
    random_teacher = as_teacher(tiny(), pretrained=False)
    with pytest.raises(AutokdError, match="randomly initialised.*teacher-weights"):
        train_student(tiny(), random_teacher, data, small_recipe("kd"), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()  # nothing half-written
    result = train_student(tiny(), random_teacher, data, small_recipe("none", epochs=1), tmp_path / "b",
                           progress=False)
    assert result.teacher == "tiny_teacher" and result.teacher_top1 is not None


def test_kd_without_a_teacher_is_refused(data, tmp_path):
    with pytest.raises(AutokdError, match="none was given"):
        train_student(tiny(), None, data, small_recipe("dkd"), tmp_path, progress=False)


def test_class_count_mismatch_says_how_to_fix(data, tmp_path):
    teacher = as_teacher(tiny(num_classes=10), num_classes=10)
    with pytest.raises(AutokdError, match=r"4 classes but teacher tiny_teacher's head has 10.*num_classes=4"):
        train_student(tiny(), teacher, data, small_recipe("kd"), tmp_path, progress=False)
    with pytest.raises(AutokdError, match="student predicts 10 classes but the data has 4"):
        train_student(tiny(num_classes=10), None, data, small_recipe("none"), tmp_path, progress=False)


def test_unknown_recipe_is_one_line():
    with pytest.raises(AutokdError, match="unknown recipe 'dkdd'") as err:
        Recipe.load("dkdd")
    assert "\n" not in str(err.value)


class NanAfter(nn.Module):
    """A student whose training forward turns NaN after `after` calls (to test the NaN stop)."""

    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_nan_loss_stops_with_a_reason_and_keeps_the_last_good_checkpoint(data, trained_teacher, tmp_path):
    steps = 192 // 16
    student = NanAfter(tiny(), after=steps + 2)  # epoch 1 is clean, epoch 2 goes NaN
    with pytest.raises(AutokdError, match="NaN or inf in epoch 2.*last good checkpoint.*last.pt"):
        train_student(student, trained_teacher, data, small_recipe("kd", epochs=3), tmp_path, progress=False,
                      log_every=4)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["step_in_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_mixup_label_smoothing_and_grad_clip_run(data, trained_teacher, tmp_path):
    recipe = small_recipe("kd", mixup=0.8, cutmix=1.0, label_smoothing=0.1, grad_clip=1.0,
                          augmentation="standard", optimizer="adamw", lr=1e-3, warmup_epochs=1.0)
    result = train_student(tiny(), trained_teacher, data, recipe, tmp_path, progress=False)
    assert result.epochs == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)
    # linear warm-up over epoch 1 reaches the full rate, then the cosine decays it to zero
    assert result.history[0]["lr"] == pytest.approx(1e-3) and result.history[1]["lr"] == pytest.approx(0.0)


@pytest.mark.parametrize("preset", ["dkd", "dist", "nkd", "kd_ls"])
def test_every_logit_preset_trains(preset, trained_teacher, tmp_path):
    data = synthetic_dataset(num_classes=4, train_size=48, test_size=8, img_size=32)
    student = tiny()
    before = student.linear.weight.detach().clone()
    result = train_student(student, trained_teacher, data, small_recipe(preset, epochs=1), tmp_path,
                           progress=False)
    assert result.recipe["loss"] == Recipe.load(preset).loss and math.isfinite(result.history[0]["train_loss"])
    assert not torch.equal(before, student.linear.weight)


def test_feature_loss_trains_the_projector(data, trained_teacher, tmp_path):
    recipe = small_recipe("fitnet", epochs=1)
    result = train_student(tiny(), trained_teacher, data, recipe, tmp_path, progress=False)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert any(k.startswith("projector.") for k in last["loss"])
    assert math.isfinite(result.history[0]["train_loss"])


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_against_a_hand_computation():
    logits = torch.tensor([[4.0, 0.0, 0.1, 0.2, 0.3, 0.4],   # correct, confident
                           [0.5, 1.0, 0.0, 0.1, 0.2, 0.3],   # wrong, label in the top 5
                           [0.5, 0.2, 0.1, 0.3, 0.4, 0.0],   # wrong, label last
                           [0.0, 0.1, 3.0, 2.0, 0.2, 0.3]])  # correct
    labels = torch.tensor([0, 0, 5, 2])
    meter = ClassificationMeter(bins=15)
    meter.update(logits, labels)
    result = meter.result()
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    top5 = torch.tensor([labels[i] in logits[i].topk(5).indices for i in range(4)]).float()
    edges = torch.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs()
    assert result.top1 == 50.0 and result.top5 == 75.0
    assert result.top1 == pytest.approx(100 * correct.mean().item())
    assert result.top5 == pytest.approx(100 * top5.mean().item())
    assert result.ece == pytest.approx(float(ece), abs=1e-9)
    assert result.count == 4


def test_metrics_sum_over_batches():
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 7), torch.randint(0, 7, (50,))
    whole, parts = ClassificationMeter(), ClassificationMeter()
    whole.update(logits, labels)
    for i in range(0, 50, 16):
        parts.update(logits[i:i + 16], labels[i:i + 16])
    assert whole.result() == parts.result()


# ------------------------------------------------------------------------------------------------ students
def _write_top_yaml(path: Path, spec: ArchSpec, budget: int, macs: int, study=None):
    search = {"teacher": "resnet56_cifar", "budget": budget, "img_size": 32, "num_classes": 10}
    if study:
        search.update(study)
    path.write_text(yaml.safe_dump({"spec": spec.as_dict(), "rank": 1, "trial": 3, "macs": macs, "params": 0,
                                    "scores": {}, "search": search}, sort_keys=False))


def test_student_from_search_yaml(tmp_path):
    spec = ArchSpec.make("cifar_resnet", depths=(1, 2, 1), widths=(8, 16, 32), shortcut="A")
    macs = count_macs(CifarResNet((1, 2, 1), (8, 16, 32), "A", 10), 32)
    _write_top_yaml(tmp_path / "1.yaml", spec, budget=macs + 1, macs=macs)
    student = student_from_yaml(tmp_path / "1.yaml")
    assert student.spec == spec and student.img_size == 32 and student.searched_macs == macs
    assert count_macs(student.model, 32) == macs and student.model.linear.out_features == 10
    assert not student.notes
    assert student_from_yaml(tmp_path / "1.yaml", num_classes=4).model.linear.out_features == 4


def test_student_over_its_search_budget_warns(tmp_path, caplog):
    spec = ArchSpec.make("cifar_resnet", depths=(1, 1, 1), widths=(8, 16, 32), shortcut="A")
    _write_top_yaml(tmp_path / "1.yaml", spec, budget=1000, macs=1000)
    student = resolve_student(str(tmp_path / "1.yaml"), num_classes=10)
    assert len(student.notes) == 1 and "over the" in student.notes[0] and "budget" in student.notes[0]
    assert "over the" in caplog.text


def test_student_from_study_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="c10", storage=url)
    study.set_user_attr("autokd", {"img_size": 32, "num_classes": 10, "budget": 10**9})
    spec = ArchSpec.make("cifar_resnet", depths=(2, 1, 1), widths=(8, 8, 16), shortcut="B")
    trial = study.ask()
    trial.set_user_attr("spec", spec.as_dict())
    trial.set_user_attr("macs", 123)
    study.tell(trial, 1.0)
    student = student_from_trial(url, "c10", trial.number)
    assert student.spec == spec and student.searched_macs == 123 and student.study["trial"] == trial.number
    assert resolve_student(f"study:c10#{trial.number}", 10, storage=url).spec == spec
    with pytest.raises(AutokdError, match="no scored trial #7"):
        student_from_trial(url, "c10", 7)
    with pytest.raises(AutokdError, match="no study 'nope'"):
        student_from_trial(url, "nope", 0)


def test_results_are_recorded_in_the_study(data, tmp_path):
    from autokd.train import Student

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="c10", storage=url)
    student = Student(tiny(), "tiny", study={"storage": url, "study": "c10", "trial": 5})
    result = train_student(student, None, data, small_recipe("none", epochs=1), tmp_path / "run",
                           progress=False)
    attrs = optuna.load_study(study_name="c10", storage=url).user_attrs["trained/5"]
    assert attrs["top1"] == result.top1 and attrs["macs"] == result.macs and attrs["recipe"] == "none"


def test_student_from_timm_and_unknown_names():
    student = student_from_timm("resnet18", num_classes=7)
    assert student.model.get_classifier().out_features == 7 and student.spec is None
    with pytest.raises(AutokdError, match="unknown student 'resnet_nope'"):
        resolve_student("resnet_nope", 10)
    with pytest.raises(AutokdError, match="does not exist"):
        resolve_student("runs/none/top/1.yaml", 10)


# ------------------------------------------------------------------------------------------------ benchmark
def test_throughput_benchmark_runs_small(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_train_throughput",
                                                  ROOT / "benchmarks" / "training" / "bench_train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--small", "--steps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["pair"], r["path"]) for r in rows] == [
        (pair, path) for pair in ("test_vit2->test_vit", "test_resnet->test_convnext")
        for path in ("timm", "autokd live", "autokd cache")]
    for row in rows:
        assert row["images_per_second"] > 0 and row["step_ms"] > 0 and 0 < row["mfu"] < 1
        assert 0 < row["teacher_share_of_flops"] < 1
    assert all(r["ratio_to_timm"] == 1.0 for r in rows if r["path"] == "timm")
    assert result["batch_size"] == 8 and result["device"] == "cpu"
    assert "img/s" in capsys.readouterr().out


def test_mixup_needs_an_even_batch_per_process(data, trained_teacher, tmp_path):
    with pytest.raises(AutokdError, match="even batch size"):
        train_student(tiny(), trained_teacher, data, small_recipe("kd", batch_size=15, mixup=0.2), tmp_path,
                      progress=False)


def test_finetuning_uses_the_teachers_own_inputs(monkeypatch, tmp_path, weights):
    import dataclasses

    from autokd.recipes import Recipe
    from autokd.teachers import resolve_teacher
    from autokd.train import Inputs, finetune

    teacher = resolve_teacher("resnet20_cifar", 10, weights=str(weights))
    teacher = dataclasses.replace(teacher, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # not the ImageNet default
    seen = {}
    monkeypatch.setattr(finetune, "train_student", lambda *args, **kwargs: seen.update(kwargs))
    finetune.finetune_teacher(teacher, synthetic_dataset(train_size=20, test_size=10), Recipe.load("none"),
                              tmp_path / "ft")
    assert seen["inputs"] == Inputs.of(teacher) and seen["inputs"].mean == (0.5, 0.5, 0.5)


def test_students_trained_together_end_as_each_trained_alone(data, trained_teacher, tmp_path):
    from autokd.train import train_students

    recipe = small_recipe("kd", augmentation="standard")
    together = [tiny(seed=5), tiny(seed=6), CifarResNet(depths=(2, 1, 1), widths=(8, 8, 16), num_classes=4)]
    alone = [tiny(seed=5), tiny(seed=6), CifarResNet(depths=(2, 1, 1), widths=(8, 8, 16), num_classes=4)]
    alone[2].load_state_dict(together[2].state_dict())
    results = train_students(together, trained_teacher, data, recipe, [tmp_path / f"k{i}" for i in range(3)],
                             progress=False)
    for i, model in enumerate(alone):
        single = train_student(model, trained_teacher, data, recipe, tmp_path / f"one{i}", progress=False)
        for (name, a), b in zip(together[i].state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), (i, name)
        assert results[i].top1 == single.top1 and results[i].history == [
            {**h, "images_per_second": results[i].history[j]["images_per_second"]}
            for j, h in enumerate(single.history)]
        assert results[i].students_together == 3 and single.students_together == 1
        assert json.loads((tmp_path / f"k{i}" / "results.json").read_text())["top1"] == single.top1


def test_students_together_need_one_folder_each(data, trained_teacher, tmp_path):
    from autokd.train import train_students

    with pytest.raises(AutokdError, match="one distinct output folder per student"):
        train_students([tiny(), tiny()], trained_teacher, data, small_recipe("kd"), [tmp_path, tmp_path],
                       progress=False)


def test_cifar_resnet_names_build_students_as_they_build_teachers(tmp_path):
    student = resolve_student("resnet20_cifar", 10)
    assert student.spec.space == "cifar_resnet" and student.img_size == 32
    assert count_params(student.model) == 269_722  # ResNet-20: 3-3-3 blocks, 16-32-64 wide
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"spec": {"space": "cifar_resnet", "genes": {"depths": ["x", 1, 1]}}}))
    with pytest.raises(AutokdError, match="cannot build student .* give a spec written by `autokd search`"):
        resolve_student(str(bad), 10)


def test_a_study_student_from_a_missing_database_is_refused_without_creating_it(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(AutokdError, match="no study database at"):
        resolve_student("study:x#3", 10, storage=f"sqlite:///{missing}")
    assert not missing.exists()
