"""`autokd run` end to end on a tiny teacher and data: search, distil the top 2, a kill mid-training, resume."""

import json

import optuna
import pandas as pd
import pytest

import autokd.pipeline as pipeline
from autokd.cli import main
from autokd.errors import AutokdError
from autokd.search import SearchConfig


def complete_trials(out):
    storage = f"sqlite:///{out}/autokd.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return study, sorted(t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def test_run_resumes_after_a_kill_without_redoing_search_or_finished_training(tmp_path, folder, weights,
                                                                                monkeypatch, capsys):
    out = tmp_path / "run"
    config = SearchConfig(teacher="resnet20_cifar", teacher_weights=str(weights), data=str(folder), budget="20M",
                          spaces=("cifar_resnet",), trials=6, population_size=4, tournament_size=2, batch_size=10)
    real = pipeline.train_students
    calls = []

    def killed_mid_training(students, teacher, data, recipe, folders, **kw):
        calls.append(([f.name for f in folders], kw["resume"]))
        # both students train 3 steps of the first epoch together, then die as SIGKILL would: last.pt only
        real(students, teacher, data, recipe, folders, **{**kw, "max_steps": 3})
        for f in folders:
            (f / "results.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_students", killed_mid_training)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(config, out, train_top=2, epochs=2, batch_size=16, num_workers=0, progress=False)
    study, trials = complete_trials(out)
    assert len(trials) == 6 and study.user_attrs["stage/search"] == "done"
    assert study.user_attrs["stage/train/1"] == study.user_attrs["stage/train/2"] == "running"
    for rank in ("1", "2"):
        assert (out / "train" / rank / "last.pt").is_file() and not (out / "train" / rank / "results.json").exists()
    assert calls == [(["1", "2"], False)]  # one teacher pass per batch for both students

    # the same command again, through the CLI: no new trials, both students resumed together from last.pt
    calls.clear()
    monkeypatch.setattr(pipeline, "train_students", lambda *a, **kw: calls.append(([f.name for f in a[4]],
                                                                                    kw["resume"])) or real(*a, **kw))
    argv = ["run", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--budget", "20M", "--space", "cifar_resnet", "--trials", "6", "--population", "4", "--tournament", "2",
            "--batch-size", "10", "--train-top", "2", "--epochs", "2", "--train-batch-size", "16",
            "--loader-workers", "0", "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert calls == [(["1", "2"], True)]
    study, after = complete_trials(out)
    assert after == trials
    second = json.loads((out / "train" / "2" / "results.json").read_text())
    assert second["stopped"] is None and second["epochs"] == 2 and len(second["history"]) == 2
    assert second["students_together"] == 2
    assert study.user_attrs["stage/train/2"] == "done" and study.user_attrs["stage/report"] == "done"
    assert study.user_attrs["artifacts/train/2"]["results"].endswith("train/2/results.json")
    mtime = (out / "train" / "1" / "results.json").stat().st_mtime_ns

    # and again: every training is finished, so nothing is trained and both results are reused as they are
    calls.clear()
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert calls == [] and (out / "train" / "1" / "results.json").stat().st_mtime_ns == mtime

    trained = pd.read_csv(out / "trained.csv")
    assert list(trained["proxy_rank"]) == [1, 2] and trained["top1"].notna().all()
    assert sorted(trained["trained_rank"]) in ([1, 2], [1, 1])
    assert trained["arch"].nunique() == 2
    board = pd.read_csv(out / "leaderboard.csv")
    best = board.iloc[0]
    assert trained["trial"].iloc[0] == best["trial"] and (trained["macs"] <= 20e6).all()
    assert "Trained students" in (out / "report.html").read_text()
    assert "proxy rank" in stdout and "2 finished training(s) reused" in stdout

    # other epochs into the same folder: refused, never mixed with the finished run
    with pytest.raises(AutokdError, match="recipe or epochs"):
        pipeline.run_pipeline(config, out, train_top=2, epochs=3, batch_size=16, num_workers=0, progress=False)


def test_distinct_candidates_drop_repeated_specs(tmp_path):
    from autokd.spaces import ArchSpec

    study = optuna.create_study(direction="maximize")
    specs = [ArchSpec.make("cifar_resnet", depths=(d, 1, 1), widths=(8, 16, 16), shortcut="A") for d in (1, 2, 1, 3)]
    for spec, score in zip(specs, (0.9, 0.5, 0.8, 0.1)):  # spec 0 scored twice (0.9 and 0.8)
        study.add_trial(optuna.trial.create_trial(
            value=score, user_attrs={"spec": spec.as_dict(), "macs": 1, "params": 1, "budget_slack": 0.0,
                                     "diswot": score}))
    chosen = pipeline.distinct_candidates(study, "diswot", 3)
    assert list(chosen["trial"]) == [0, 1, 3] and list(chosen["rank"]) == [1, 2, 3]


def test_default_recipe_suits_the_student():
    assert pipeline.default_recipe("cifar_resnet") == "dist" and pipeline.default_recipe("vit") == "kd_adamw"
    assert pipeline.default_recipe("nb201") == "dist"  # a CNN: DIST with SGD, not the ViT's AdamW recipe
