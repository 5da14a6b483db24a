import pytest
import torch
import yaml
from test_cli_train import run
from test_recommend import kb_rows

from autokd.cli import main
from autokd.recipes.kb import append_rows, read_kb
from autokd.recipes.recommend import candidate_grid


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only contends
    yield
    torch.set_num_threads(threads)


def test_recommend_ranks_recipes_for_a_tiny_real_task_and_tune_adds_runs(capsys, tmp_path, folder, student_yaml,
                                                                         weights, one_thread):
    kb = tmp_path / "kb.csv"
    append_rows(kb, kb_rows())
    base = ["recommend", "--data", str(folder), "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
            "--student", str(student_yaml), "--kb", str(kb), "--no-starter-kb", "--device", "cpu", "--quiet"]
    code, out, err = run(capsys, [*base, "--top", "4"])
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("│")]
    ranks = [line.split("│")[1].strip() for line in lines]
    assert ranks[:4] == ["1", "2", "3", "4"]  # 4 ranked recipes, then the nearest tasks
    assert "nearest tasks" in out and "t1" in out and "predicted KD gain" in out and f"tasks in {kb}" in out
    code, out, err = run(capsys, [*base, "--top", "2", "--tune", "2", "--tune-epochs", "1", "--batch-size", "16",
                                  "--tune-images", "0", "--out", str(tmp_path / "tune")])
    assert code == 0, err
    rows = read_kb(kb)
    new = rows[rows["task"] == "data"]
    assert len(rows) == 18 + len(new) and 1 <= len(new) <= 2 and new["recipe_id"].str.startswith("tune:").all()
    assert new["epochs"].eq(1).all() and new["gain"].notna().all()


def test_recommend_with_a_bad_kb_is_one_line_exit_2(capsys, tmp_path, folder, student_yaml, weights, one_thread):
    kb = tmp_path / "kb.csv"
    kb.write_text("not,a,kb\n1,2,3\n")
    code, out, err = run(capsys, ["recommend", "--data", str(folder), "--teacher", "resnet20_cifar",
                                  "--teacher-weights", str(weights), "--student", str(student_yaml), "--kb", str(kb),
                                  "--device", "cpu"])
    assert code == 2 and len(err) == 1 and "lacks column(s)" in err[0] and "falling back" not in err[0]


def test_recommend_answers_from_the_starter_kb_out_of_the_box(capsys, tmp_path, folder, student_yaml, weights,
                                                              one_thread, private_kb):
    argv = ["recommend", "--data", str(folder), "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
            "--student", str(student_yaml), "--device", "cpu", "--top", "3"]
    code, out, err = run(capsys, argv)  # no KB of the user's own yet ($AUTOKD_KB names a missing file)
    assert code == 0 and not any("error" in line for line in err), err
    assert "tasks in the starter KB\n" in out  # the title names where the runs came from
    ranks = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert ranks[:3] == ["1", "2", "3"] and "c10-" in out  # the starter KB's tasks are the nearest ones
    assert not private_kb.exists()  # recommending writes nothing
    append_rows(private_kb, kb_rows())  # the user's own runs are read with it
    code, out, err = run(capsys, argv)
    assert code == 0 and f"tasks in the starter KB and {private_kb}" in out
    code, out, err = run(capsys, [*argv, "--kb", str(tmp_path / "none.csv"), "--no-starter-kb"])
    assert code == 2 and len(err) == 1 and err[0].startswith("autokd: error: no knowledge base at")
    assert "falling back" not in err[0] and "--no-starter-kb" in err[0]
    code, out, err = run(capsys, [*argv, "--kb", str(tmp_path / "typo.csv")])  # not read as the starter KB alone
    assert code == 2 and len(err) == 1 and err[0].startswith("autokd: error: no knowledge base at")


def test_train_recipe_auto_uses_the_kb_and_appends_its_run(capsys, tmp_path, folder, student_yaml, weights,
                                                           one_thread):
    kb = tmp_path / "kb.csv"
    append_rows(kb, kb_rows())
    argv = ["train", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--student", str(student_yaml),
            "--data", str(folder), "--recipe", "auto", "--epochs", "1", "--batch-size", "16", "--kb", str(kb),
            "--out", str(tmp_path / "run"), "--quiet", "--workers", "0", "--device", "cpu"]
    code, out, err = run(capsys, argv)
    assert code == 0, err
    assert any(line.startswith("autokd: --recipe auto: ") and "predicted gain" in line for line in err)
    assert any("added 1 run(s) to the knowledge base" in line for line in err)
    assert len(read_kb(kb)) == 19
    # no KB at all (the starter KB left out): one line naming the fallback, then the default rule trains
    empty = tmp_path / "empty.csv"
    code, out, err = run(capsys, [*argv[:-9], "--epochs", "1", "--batch-size", "16", "--kb", str(empty), "--no-kb",
                                  "--no-starter-kb", "--out", str(tmp_path / "run2"), "--quiet", "--workers", "0",
                                  "--device", "cpu"])
    assert code == 0, err
    assert [line for line in err if "--recipe auto" in line] == [
        f"autokd: --recipe auto: no knowledge base at {str(empty)!r}: autokd train and autokd run on real data add "
        "their runs there; give --kb PATH for another, or leave out --no-starter-kb; falling back to the default "
        "rule (dist for a cnn->cnn pair)"]
    assert not empty.exists() and not any("error" in line for line in err)


def test_run_recipe_auto_trains_the_recommendation_and_appends_it(capsys, tmp_path, folder, weights, one_thread,
                                                                  private_kb):
    append_rows(private_kb, kb_rows())
    out = tmp_path / "run"
    argv = ["run", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--budget", "20M", "--space", "cifar_resnet", "--trials", "2", "--population", "2", "--tournament", "2",
            "--objective", "diswot",
            "--batch-size", "10", "--train-top", "1", "--epochs", "1", "--train-batch-size", "16", "--recipe", "auto",
            "--loader-workers", "0", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = read_kb(private_kb)
    new = rows[rows["task"] == "data"]
    assert len(new) == 1 and new["recipe_id"].iloc[0] in candidate_grid()
    marker = yaml.safe_load((out / "train" / "1" / "candidate.json").read_text())
    assert marker["recipe"] == candidate_grid()[new["recipe_id"].iloc[0]].with_epochs(1).replace(
        batch_size=16).to_dict()
    assert main(argv) == 0  # resumed: the same recipe, nothing added twice
    assert len(read_kb(private_kb)) == len(rows)
