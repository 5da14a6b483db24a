import optuna
import pandas as pd
import pytest

from autokd.data import synthetic_dataset
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.search.refine import RefineConfig, refine, replay_halving
from autokd.spaces import ArchSpec

SPECS = [ArchSpec.make("cifar_resnet", depths=[d, 1, 1], widths=[8, 8, w], shortcut="A")
         for d, w in ((1, 8), (2, 16), (1, 16), (2, 8))]


class NeverRead:
    """A test split that fails the test if anything loads an image from it."""

    def __init__(self, base):
        self.base, self.labels, self.transform = base, base.labels, base.transform

    def __len__(self):
        return len(self.base)

    def load_image(self, index):
        raise AssertionError("the test split was read")

    open_image = load_image


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_teacher):
    data = synthetic_dataset(num_classes=4, train_size=160, test_size=16, img_size=32)
    teacher = tiny_teacher(data, tmp_path_factory.mktemp("teacher"))
    data.test = NeverRead(data.test)
    board = pd.DataFrame([{"rank": i + 1, "trial": 10 + i, "arch": str(s), "macs": 1000 * (i + 1), "params": 10,
                           "spec_json": s.to_json()} for i, s in enumerate(SPECS)])
    return data, teacher, board


def test_successive_halving_keeps_the_best_half_each_rung_on_held_out_accuracy(setting, tmp_path):
    data, teacher, board = setting
    recipe = Recipe.load("kd").replace(batch_size=16, lr=0.05, augmentation="none")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    config = RefineConfig(top=4, epochs=3, min_epochs=1, eta=2, images=None)
    frame = refine(board, teacher, data, recipe, tmp_path, storage, "st", config, img_size=32)
    assert frame["status"][0] == "complete" and list(frame["refine_rank"]) == [1, 2, 3, 4]
    indexed = frame.set_index("proxy_rank")
    for epoch in (1, 2):  # who went on after each rung was at least as good as every candidate stopped there
        went_on = indexed.index[indexed["epochs_reached"] > epoch]
        stopped = indexed.index[indexed["epochs_reached"] == epoch]
        values = indexed[f"epoch{epoch}_heldout_top1"]
        assert len(went_on) and (not len(stopped) or min(values[went_on]) >= max(values[stopped]))
    assert (indexed["epochs_reached"] == 1).sum() >= 1  # halving stopped someone after the first rung (eta 2)
    study = optuna.load_study(study_name="st-refine", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == (frame["status"] == "pruned").sum() and "COMPLETE" in states
    best = study.best_trial
    assert best.user_attrs["proxy_rank"] == frame["proxy_rank"][0]
    assert best.value == frame["heldout_top1"][0] == best.intermediate_values[3]
    assert sorted(best.intermediate_values) == [1, 2, 3]  # every rung is in the study
    # the same command again: the finished refinement is read back, nothing is trained
    again = refine(board, teacher, data, recipe, tmp_path, storage, "st", config, img_size=32)
    pd.testing.assert_frame_equal(again, frame)
    other = board.assign(spec_json=board["spec_json"][::-1].to_numpy())
    with pytest.raises(AutokdError, match="holds a refinement of other candidates"):
        refine(other, teacher, data, recipe, tmp_path, storage, "st", config, img_size=32)


@pytest.mark.parametrize("kill_in", ["train_students", "_next_rung"])
def test_a_killed_refinement_resumes_to_the_same_result(setting, tmp_path, monkeypatch, kill_in):
    from autokd.search import refine as module

    data, teacher, board = setting
    recipe = Recipe.load("kd").replace(batch_size=16, lr=0.05, augmentation="none")
    config = RefineConfig(top=4, epochs=3, min_epochs=1, eta=2, images=None)
    whole = refine(board, teacher, data, recipe, tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", "st", config,
                   img_size=32)
    real, calls = getattr(module, kill_in), []

    def killed(*args, **kwargs):
        # dies as SIGKILL would: in the second epoch's training (the first saved and reported), or right after
        # the first epoch's training, before any of it was reported
        calls.append(1)
        if len(calls) == (2 if kill_in == "train_students" else 1):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, kill_in, killed)
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(KeyboardInterrupt):
        refine(board, teacher, data, recipe, tmp_path / "b", storage, "st", config, img_size=32)
    monkeypatch.setattr(module, kill_in, real)
    resumed = refine(board, teacher, data, recipe, tmp_path / "b", storage, "st", config, img_size=32)
    pd.testing.assert_frame_equal(resumed, whole)


def test_replayed_halving_picks_as_refine_does_from_curves_trained_in_another_order(setting, tmp_path):
    # the curves come from one run of every candidate, none pruned, in the reverse order: a network's training does
    # not depend on its rank, so the halving replayed on them is the refinement itself
    data, teacher, board = setting
    recipe = Recipe.load("kd").replace(batch_size=16, lr=0.05, augmentation="none")
    reverse = board.assign(spec_json=board["spec_json"][::-1].to_numpy(), arch=board["arch"][::-1].to_numpy())
    full = refine(reverse, teacher, data, recipe, tmp_path / "full", f"sqlite:///{tmp_path / 'f.db'}", "full",
                  RefineConfig(top=4, epochs=3, min_epochs=3, eta=2, images=None), img_size=32)
    assert (full["status"] == "complete").all()
    curves = {reverse["spec_json"][r - 1]: [row[f"epoch{e}_heldout_top1"] for e in (1, 2, 3)]
              for r, row in full.set_index("proxy_rank").iterrows()}
    config = RefineConfig(top=4, epochs=3, min_epochs=1, eta=2, images=None)
    live = refine(board, teacher, data, recipe, tmp_path / "live", f"sqlite:///{tmp_path / 'l.db'}", "live", config,
                  img_size=32)
    replayed = replay_halving(board, curves, config)
    pd.testing.assert_frame_equal(replayed, live)
    assert (live["status"] == "pruned").any()


def test_a_recipe_whose_warmup_outlasts_the_refine_is_scaled_to_it(setting, tmp_path):
    data, teacher, board = setting
    recipe = Recipe.load("kd_adamw").replace(batch_size=16, augmentation="none", mixup=0.0, cutmix=0.0)
    assert recipe.warmup_epochs > 1
    frame = refine(board, teacher, data, recipe, tmp_path, f"sqlite:///{tmp_path / 'w.db'}", "w",
                   RefineConfig(top=2, epochs=1, images=None), img_size=32)
    assert len(frame) == 2 and (frame["status"] == "complete").all()


def test_refine_settings_are_checked():
    with pytest.raises(AutokdError, match="at least 2 candidates"):
        RefineConfig(top=1).check()
    with pytest.raises(AutokdError, match="min epochs"):
        RefineConfig(epochs=2, min_epochs=3).check()


def test_search_refine_from_the_command_line(capsys, tmp_path, folder, weights):
    from autokd.cli import main

    out = tmp_path / "s"
    argv = ["search", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--budget", "20M", "--space", "cifar_resnet", "--trials", "6", "--population", "4", "--tournament", "2",
            "--batch-size", "10", "--out", str(out), "--quiet", "--refine", "3", "--refine-epochs", "2",
            "--refine-images", "0", "--refine-recipe", "kd"]
    assert main(argv) == 0, capsys.readouterr().err
    frame = pd.read_csv(out / "refine.csv")
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(frame) == 3 and set(frame["proxy_rank"]) == {1, 2, 3}
    assert set(frame["trial"]) <= set(board["trial"].head(6)) and set(frame["arch"]) <= set(board["arch"])
    assert frame["refine_rank"].tolist() == [1, 2, 3] and frame["status"].iloc[0] == "complete"
    assert (out / "refine" / str(frame["proxy_rank"].iloc[0]) / "results.json").is_file()
    assert "wrote" in capsys.readouterr().out
