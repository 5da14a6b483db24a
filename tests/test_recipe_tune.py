import optuna
import pytest
import torch

from autokd.data import synthetic_dataset
from autokd.recipes.kb import read_kb
from autokd.recipes.recommend import candidate_grid, task_profile
from autokd.search import recipe_tune as tune_module
from autokd.search.recipe_tune import TuneConfig, recipe_of, space_params, tune_recipes
from autokd.spaces.cifar_resnet import CifarResNet


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_teacher):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only contends
    data = synthetic_dataset(num_classes=4, train_size=96, test_size=16, img_size=32)
    teacher = tiny_teacher(data, tmp_path_factory.mktemp("teacher"))

    def make_student():
        torch.manual_seed(0)
        return CifarResNet(depths=(1, 1, 1), widths=(8, 8, 8), num_classes=4)

    profile = {**task_profile(teacher, make_student(), "cifar_resnet", data, 32, sample=64), "task": "synthetic4"}
    yield data, teacher, make_student, profile
    torch.set_num_threads(threads)


def test_task_profile_measures_the_teacher_on_held_out_images(setting):
    _, _, _, profile = setting
    assert profile["num_classes"] == 4 and profile["train_size"] == 96 and profile["resolution"] == 32
    assert 0 <= profile["teacher_acc"] <= 1 and 0 <= profile["teacher_ece"] <= 1 and 0 <= profile["probe_acc"] <= 1
    assert 0 < profile["teacher_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert profile["pair_kind"] == "cnn->cnn" and profile["macs_ratio"] > 1


def test_space_round_trips_the_grid_recipes():
    grid = candidate_grid()
    for rid in ("kd:T=2", "dist:w=2", "kd_adamw:lr=0.001"):
        assert recipe_of(space_params(rid, grid[rid])) == grid[rid]


def start_recipes():
    grid = candidate_grid()
    return [(rid, grid[rid].replace(batch_size=16, augmentation="none")) for rid in ("dist", "kd:T=2")]


def test_tune_two_trials_appends_complete_runs_to_the_kb(setting, tmp_path):
    data, teacher, make_student, profile = setting
    kb = tmp_path / "kb.csv"
    config = TuneConfig(trials=2, epochs=2, eta=2, images=None, batch_size=16)
    frame = tune_recipes(make_student, teacher, data, profile, start_recipes(), tmp_path / "tune", config, kb=kb,
                         device="cpu")
    assert len(frame) == 2 and set(frame["from"]) == {"dist", "kd:T=2"}  # the enqueued recommendations ran first
    rows = read_kb(kb)
    complete = frame[frame["state"] == "complete"]
    assert len(rows) == len(complete) >= 1
    assert (rows["task"] == "synthetic4").all() and (rows["source"] == "run").all()
    assert rows["gain"].tolist() == pytest.approx((rows["student_acc"] - rows["no_kd_acc"]).tolist())
    assert rows["epochs"].eq(2).all()


def test_killed_tune_resumes_the_running_trial(setting, tmp_path, monkeypatch):
    data, teacher, make_student, profile = setting
    kb = tmp_path / "kb.csv"
    config = TuneConfig(trials=2, epochs=2, eta=2, images=None, batch_size=16)
    real, calls = tune_module.train_student, []

    def dies_on_third(*args, **kwargs):  # baseline, trial 0 epoch 1, then killed in trial 0 epoch 2
        calls.append(kwargs.get("max_steps"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tune_module, "train_student", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        tune_recipes(make_student, teacher, data, profile, start_recipes(), tmp_path / "tune", config, kb=kb,
                     device="cpu")
    study = optuna.load_study(study_name="autokd-recipes", storage=f"sqlite:///{tmp_path / 'tune' / 'tune.db'}")
    assert [t.state.name for t in study.trials] == ["RUNNING", "WAITING"]
    assert list(study.trials[0].intermediate_values) == [1]
    monkeypatch.setattr(tune_module, "train_student", real)
    frame = tune_recipes(make_student, teacher, data, profile, start_recipes(), tmp_path / "tune", config, kb=kb,
                         device="cpu")
    study = optuna.load_study(study_name="autokd-recipes", storage=f"sqlite:///{tmp_path / 'tune' / 'tune.db'}")
    assert len(study.trials) == 2 and frame["trial"].tolist() != [] and set(frame["trial"]) == {0, 1}
    assert sorted(study.trials[0].intermediate_values) == [1, 2] or study.trials[0].state.name == "PRUNED"
    assert len(read_kb(kb)) == (frame["state"] == "complete").sum()
