import json

import pytest
import torch
import yaml
from conftest import STUDENT as STUDENT_GENES

from autokd.cli import main
from autokd.spaces import ArchSpec

STUDENT = ArchSpec.make(**STUDENT_GENES)


def run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_train_writes_results_and_resumes(capsys, tmp_path, folder, student_yaml, weights):
    out = tmp_path / "run"
    argv = ["train", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--student",
            str(student_yaml), "--data", str(folder), "--recipe", "kd", "--epochs", "2", "--batch-size", "16",
            "--out", str(out), "--quiet", "--workers", "0"]
    code, stdout, err = run(capsys, argv)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert result["epochs"] == 2 and 0 <= result["top1"] <= 100 and result["eval_split"] == "test"
    assert result["macs"] > 0 and "results.json" in stdout
    state = torch.load(out / "best.pt", weights_only=True)
    assert set(state["model"]) == set(STUDENT_MODEL_KEYS())
    # a second fresh run into the same folder is refused; --resume on a finished run changes nothing
    code, _, err = run(capsys, argv)
    assert code == 2 and "--resume" in err[-1]
    code, _, err = run(capsys, [*argv, "--resume"])
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["top1"] == result["top1"]


def test_train_several_students_on_one_teacher_pass(capsys, tmp_path, folder, student_yaml, weights):
    torch.manual_seed(12345)  # whatever state the process is in, the command seeds the students it builds
    other = tmp_path / "2.yaml"
    wider = ArchSpec.make("cifar_resnet", depths=(1, 1, 1), widths=(8, 16, 32), shortcut="A")
    other.write_text(yaml.safe_dump({"spec": wider.as_dict(), "search": {"img_size": 32, "num_classes": 10}}))
    out = tmp_path / "run"
    code, stdout, err = run(capsys, ["train", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
                                     "--student", str(student_yaml), "--student", str(other), "--data", str(folder),
                                     "--recipe", "kd", "--epochs", "1", "--batch-size", "16", "--out", str(out),
                                     "--quiet", "--workers", "0"])
    assert code == 0, err
    first, second = (json.loads((out / str(i) / "results.json").read_text()) for i in (1, 2))
    assert first["students_together"] == second["students_together"] == 2
    assert first["params"] < second["params"] and first["student"] != second["student"]
    assert stdout.count("results.json") == 2
    # the same command again (a fresh process would start from another RNG state): the same students, the same run
    code, _, err = run(capsys, ["train", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
                                "--student", str(student_yaml), "--student", str(other), "--data", str(folder),
                                "--recipe", "kd", "--epochs", "1", "--batch-size", "16", "--out",
                                str(tmp_path / "again"), "--quiet", "--workers", "0"])
    assert code == 0, err
    for i in (1, 2):
        a = torch.load(out / str(i) / "last.pt", weights_only=True)["model"]
        b = torch.load(tmp_path / "again" / str(i) / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def STUDENT_MODEL_KEYS():
    from autokd.spaces import load_space

    return load_space("cifar_resnet", 32).build(STUDENT, 10).state_dict().keys()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recipe", "magic"], "magic"),
        (["--teacher-weights", None], "randomly initialised"),
        (["--student", "nope.yaml"], "does not exist"),
        (["--resume", "{tmp}/never-ran"], "checkpoint"),
    ],
)
def test_train_errors_are_one_line_exit_2(capsys, tmp_path, folder, student_yaml, weights, extra, message):
    argv = ["train", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--student",
            str(student_yaml), "--data", str(folder), "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]
    if extra[1] is None:
        i = argv.index(extra[0])
        del argv[i:i + 2]
    else:
        argv += [e.format(tmp=tmp_path) for e in extra]
    code, _, err = run(capsys, argv)
    assert code == 2
    assert err[-1].startswith("autokd: error:") and message in err[-1]


def test_teacher_trained_for_other_classes_must_be_finetuned_first(capsys, tmp_path, folder, student_yaml, weights):
    for c in range(5, 10):  # five classes left: the 10-class head no longer fits
        for split in ("train", "test"):
            for f in (folder / split / f"class{c}").iterdir():
                f.unlink()
            (folder / split / f"class{c}").rmdir()
    argv = ["--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--epochs", "1", "--quiet", "--workers", "0", "--batch-size", "10"]
    code, _, err = run(capsys, ["train", *argv, "--student", str(student_yaml), "--out", str(tmp_path / "a")])
    assert code == 2 and "finetune-teacher" in err[-1]
    code, stdout, err = run(capsys, ["finetune-teacher", *argv, "--out", str(tmp_path / "ft")])
    assert code == 0, err
    assert f"--teacher-weights {tmp_path}/ft/best.pt" in stdout
    from autokd.teachers import resolve_teacher

    teacher = resolve_teacher("resnet20_cifar", 5, weights=str(tmp_path / "ft" / "best.pt"))
    assert teacher.head_trained and teacher.num_classes == 5


def test_train_without_a_recipe_takes_the_preset_that_suits_the_student(capsys, tmp_path, folder, student_yaml,
                                                                         weights):
    from autokd.train import Student, student_space
    from autokd.train.students import student_from_timm

    out = tmp_path / "run"
    code, _, err = run(capsys, ["train", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
                                "--student", str(student_yaml), "--data", str(folder), "--epochs", "1",
                                "--batch-size", "20", "--out", str(out), "--quiet", "--workers", "0"])
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["recipe"]["loss"] == "dist"  # a CNN student
    assert student_space(student_from_timm("deit_tiny_patch16_224", 10)) == "vit"
    assert student_space(Student(torch.nn.Linear(2, 2), "linear")) == "resnet"
