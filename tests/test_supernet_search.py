"""The supernet evaluator end to end on a tiny real-image task: bands, training, in-band search, resume, CLI."""

import pandas as pd
import pytest
import yaml

from autokd.data import load_data
from autokd.errors import AutokdError
from autokd.recipes import load_recipe
from autokd.spaces import load_space
from autokd.supernet.evaluate import SupernetConfig, evaluate_bands
from autokd.teachers import resolve_teacher

BUDGET = 6_000_000


@pytest.fixture
def task(folder, weights):
    data = load_data(str(folder), img_size=32, seed=0)
    return data, resolve_teacher("resnet20_cifar", data.num_classes, weights=weights)


def test_every_band_is_trained_and_searched_under_the_budget(task, tmp_path):
    data, teacher = task
    config = SupernetConfig(bands=2, epochs=1, trials=3, batch_size=16, pool=20)
    frame = evaluate_bands(load_space("cifar_resnet", 32), BUDGET, teacher, data, load_recipe("kd"), tmp_path,
                           config)
    assert set(frame["band"]) == {0, 1}
    assert (frame["macs"] <= BUDGET).all()
    for _, rows in frame.groupby("band"):
        assert rows["band_rank"].tolist() == list(range(1, len(rows) + 1))
        order = list(zip(-rows["heldout_top1"], rows["kd_loss"]))
        assert order == sorted(order)
        assert rows["supernet"].nunique() == 1
    assert frame.loc[frame["band"] == 0, "macs"].max() <= frame.loc[frame["band"] == 1, "macs"].min()
    for band in (0, 1):
        assert (tmp_path / f"band{band}" / "supernet.pt").is_file()
    # a rerun finds the trained supernets and scores the same subnets the same way
    again = evaluate_bands(load_space("cifar_resnet", 32), BUDGET, teacher, data, load_recipe("kd"), tmp_path,
                           config)
    cols = ["band", "band_rank", "spec_json", "macs", "heldout_top1", "kd_loss"]
    pd.testing.assert_frame_equal(again[cols], frame[cols])


def test_a_random_teacher_and_bad_settings_are_refused(task, tmp_path, folder):
    data, _ = task
    random_teacher = resolve_teacher("resnet20_cifar", data.num_classes)
    with pytest.raises(AutokdError, match="trained weights"):
        evaluate_bands(load_space("cifar_resnet", 32), BUDGET, random_teacher, data, load_recipe("kd"), tmp_path,
                       SupernetConfig(epochs=1))
    with pytest.raises(AutokdError, match="--bands"):
        SupernetConfig(bands=0).check()


def test_search_with_the_supernet_evaluator_from_the_command_line(capsys, tmp_path, folder, weights):
    from autokd.cli import main

    out = tmp_path / "s"
    argv = ["search", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--budget", "6M", "--space", "cifar_resnet", "--trials", "4", "--population", "4", "--tournament", "2",
            "--batch-size", "10", "--out", str(out), "--quiet", "--evaluator", "supernet", "--bands", "2",
            "--supernet-epochs", "1", "--supernet-trials", "2", "--supernet-batch-size", "16", "--supernet-pool", "20"]
    assert main(argv) == 0, capsys.readouterr().err
    frame = pd.read_csv(out / "supernet.csv")
    assert set(frame["band"]) == {0, 1} and (frame["macs"] <= BUDGET).all()
    top = yaml.safe_load((out / "top" / "1.yaml").read_text())
    assert top["evaluator"] == "supernet" and top["supernet"].endswith("supernet.pt")
    assert top["scores"]["heldout_top1"] == pytest.approx(frame["heldout_top1"].max())
    printed = capsys.readouterr().out
    assert "supernet" in printed and "wrote" in printed
    # the winner starts from its supernet weights in `autokd train --inherit`
    trained = tmp_path / "t"
    argv = ["train", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--student", str(out / "top" / "1.yaml"), "--inherit", "--epochs", "1", "--batch-size", "16",
            "--out", str(trained), "--no-kb"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "starts from its inherited weights" in capsys.readouterr().out
    # a student file of the training-free ranking names no supernet
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump({k: v for k, v in top.items() if k != "supernet"}))
    argv[argv.index(str(out / "top" / "1.yaml"))] = str(tmp_path / "proxy.yaml")
    assert main(argv) == 2
    assert "names no supernet" in capsys.readouterr().err


def test_run_distils_the_supernets_best_from_their_inherited_weights(capsys, caplog, tmp_path, folder, weights):
    import json
    import logging

    from autokd.cli import main

    out = tmp_path / "r"
    argv = ["run", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--budget", "6M", "--space", "cifar_resnet", "--trials", "4", "--population", "4", "--tournament", "2",
            "--batch-size", "10", "--out", str(out), "--quiet", "--evaluator", "supernet", "--bands", "2",
            "--supernet-epochs", "1", "--supernet-trials", "2", "--supernet-batch-size", "16",
            "--supernet-pool", "20", "--train-top", "2", "--epochs", "1", "--train-batch-size", "16", "--no-kb"]
    with caplog.at_level(logging.INFO, logger="autokd"):
        assert main([*argv, "--inherit"]) == 0, capsys.readouterr().err
    trained = pd.read_csv(out / "trained.csv")
    board = pd.read_csv(out / "supernet.csv")
    assert "heldout_top1" in trained.columns and (trained["status"] == "done").all()
    # the two trained students are the supernet's two best, in its order
    assert trained.sort_values("proxy_rank")["heldout_top1"].tolist() == board["heldout_top1"].head(2).tolist()
    assert sum("inherited weights" in r.getMessage() for r in caplog.records) == 2
    report = (out / "report.html").read_text()  # the report says what ranked the candidates, and its cost
    assert "Supernet evaluator" in report and "2 band(s), 1 supernet epoch(s)" in report
    assert report.count("Trained students") == 1 and "search rank by heldout_top1" in report
    # the study records each supernet's epochs, for the dashboard
    import optuna

    attrs = optuna.load_study(study_name=None, storage=f"sqlite:///{out}/autokd.db").user_attrs
    assert {k for k in attrs if k.startswith("supernet/")} == {"supernet/cifar_resnet/band0",
                                                              "supernet/cifar_resnet/band1"}
    assert attrs["supernet/cifar_resnet/band0"]["epoch"] == 1
    marker = json.loads((out / "train" / "1" / "candidate.json").read_text())
    assert marker["evaluator"] == "supernet" and marker["inherit"] is True
    # the same command reuses both trainings; without --inherit the folders are another run's and refused
    assert main([*argv, "--inherit"]) == 0
    assert "2 finished training(s) reused" in capsys.readouterr().out
    assert main(argv) == 2
    assert "--inherit" in capsys.readouterr().err
    # --inherit needs the supernet evaluator
    assert main([a for a in argv if a not in ("--evaluator", "supernet")] + ["--inherit"]) == 2
