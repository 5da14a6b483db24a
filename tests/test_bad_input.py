"""Bad input, as a new user gives it, across every command: one line naming the problem and the fix, exit 2, no
traceback, and the folders as they were (the output folder absent)."""

import importlib.util
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autokd.cli import main

SEARCH = ["--teacher", "resnet20_cifar", "--budget", "25M", "--space", "cifar_resnet", "--objective", "params",
          "--batch-size", "4", "--population", "4", "--tournament", "2", "--trials", "2", "--quiet"]
PG_DOWN = "postgresql://autokd:hunter2-secret@127.0.0.1:1/autokd"


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Bad (and a few good) inputs: image folders, zips, YAMLs, weights files."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)

    def image(path: Path, fmt: str = "PNG") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(path, format=fmt)

    for c in range(3):
        for i in range(4):
            image(root / "good" / f"c{c}" / f"{i}.jpg", "JPEG")
    jpeg = (root / "good" / "c0" / "0.jpg").read_bytes()
    for name, bad in (("badjpg", b"this is not a jpeg"), ("truncjpg", jpeg[:300])):
        for c in range(2):  # one class all bad: the class-balanced scoring batch meets them
            for i in range(4):
                (root / name / f"c{c}").mkdir(parents=True, exist_ok=True)
                (root / name / f"c{c}" / f"{i}.jpg").write_bytes(jpeg if c == 0 else bad)
    for c in range(3):
        (root / "empty" / f"c{c}").mkdir(parents=True)
    for i in range(3):
        image(root / "oneclass" / "c0" / f"{i}.png")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in (root / "good").rglob("*.jpg"):
            z.write(p, p.relative_to(root / "good").as_posix())
    (root / "trunc.zip").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "corrupt.zip").write_bytes(b"PK\x03\x04 not really a zip")
    yamls = {
        "wrongtype_vit.yaml": "family: vit\ndepth: [notanint]\n",
        "negative_widths.yaml": "family: cifar_resnet\nwidths: [-8, 0]\n",
        "unknown_key.yaml": "family: cifar_resnet\ndepthz: [1, 2]\n",
        "not_yaml.yaml": "family: [cifar_resnet\n  : :\n",
        "no_family.yaml": "depths: [1, 2]\n",
        "recipe_unknown.yaml": "loss: kd\ntemperatur: 4\n",
        "recipe_wrongtype.yaml": "loss: kd\nlr: fast\n",
    }
    for name, text in yamls.items():
        (root / name).write_text(text)
    (root / "corrupt.pth").write_bytes(b"\x80\x02 not a checkpoint")
    from autokd.spaces.cifar_resnet import CifarResNet

    torch.save({f"module.{k}": v for k, v in CifarResNet(depths=(3, 3, 3)).state_dict().items()}, root / "r20.th")
    torch.save(CifarResNet(depths=(1, 1, 1), widths=(8, 8, 8)).state_dict(), root / "tiny.pth")  # another shape
    (root / "a_file").write_text("not a folder")
    return root


def search(**changes: str) -> list[str]:
    argv = list(SEARCH)
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def no_driver(monkeypatch):
    """A machine without the PostgreSQL driver."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("psycopg") else real(name, *a))
    for name in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, name, None)


# (id, argv from the inputs folder `f` and the output folder `o`, what the error line must say, optional setup)
CASES = [
    # search: numbers out of range or absurd
    ("budget-1e400", lambda f, o: ["search", *search(budget="1e400"), "--out", o], "budget '1e400' is out of range"),
    ("budget-word", lambda f, o: ["search", *search(budget="lots"), "--out", o], "cannot read budget 'lots'"),
    ("budget-zero", lambda f, o: ["search", *search(budget="0"), "--out", o], "budget '0' is out of range"),
    ("budget-tiny", lambda f, o: ["search", *search(budget="1M"), "--out", o], "raise --budget to at least"),
    ("trials-0", lambda f, o: ["search", *search(trials="0"), "--out", o], "--trials, --workers and"),
    ("workers-0", lambda f, o: ["search", *search(workers="0"), "--out", o], "--trials, --workers and"),
    ("img-size-0", lambda f, o: ["search", *search(img_size="0"), "--out", o], "--img-size 0 is out of range"),
    ("img-size-huge", lambda f, o: ["search", *search(img_size="100000"), "--out", o], "--img-size 100000 is out"),
    ("batch-size-1", lambda f, o: ["search", *search(batch_size="1"), "--out", o], "--batch-size 1 is out of range"),
    ("timeout-0", lambda f, o: ["search", *search(timeout="0"), "--out", o], "--timeout must be a positive"),
    ("timeout-nan", lambda f, o: ["search", *search(timeout="nan"), "--out", o], "--timeout must be a positive"),
    ("tournament", lambda f, o: ["search", *search(population="2", tournament="5"), "--out", o],
     "--tournament <= --population"),
    ("top-k-0", lambda f, o: ["search", *search(top_k="0"), "--out", o], "--top-k must be at least 1"),
    ("seed-negative", lambda f, o: ["search", *search(seed="-1"), "--out", o], "--seed must be 0 or more"),
    ("trials-word", lambda f, o: ["search", *search(trials="many"), "--out", o], "argument --trials: invalid int"),
    ("params-budget-negative", lambda f, o: ["search", *search(), "--params-budget=-5M", "--out", o],
     "cannot read budget '-5M'"),
    # search: unknown names
    ("sampler", lambda f, o: ["search", *search(sampler="annealing"), "--out", o], "unknown sampler 'annealing'"),
    ("objective", lambda f, o: ["search", *search(objective="accuracy"), "--out", o], "unknown score 'accuracy'"),
    ("proxy", lambda f, o: ["search", *search(proxies="magic"), "--out", o], "unknown proxy 'magic'"),
    ("width-match", lambda f, o: ["search", *search(width_match="stretch"), "--out", o], "unknown --width-match"),
    ("device-tpu", lambda f, o: ["search", *search(device="tpu"), "--out", o], "unknown device 'tpu'"),
    ("device-cuda", lambda f, o: ["search", *search(device="cuda:7"), "--out", o], "--device cuda:7: this machine"),
    ("teacher", lambda f, o: ["search", *search(teacher="resnet20_cifarr"), "--out", o], "unknown teacher"),
    # search spaces: YAML with wrong types, unknown keys, no YAML at all
    ("space-name", lambda f, o: ["search", *search(space="transformerxl"), "--out", o], "unknown search space"),
    ("space-wrong-type", lambda f, o: ["search", *search(space=f"{f}/wrongtype_vit.yaml"), "--out", o],
     "`depth` choices must be positive integers, got 'notanint'"),
    ("space-negative", lambda f, o: ["search", *search(space=f"{f}/negative_widths.yaml"), "--out", o],
     "`widths` choices must be positive integers, got -8"),
    ("space-unknown-key", lambda f, o: ["search", *search(space=f"{f}/unknown_key.yaml"), "--out", o],
     "unknown key(s) ['depthz']"),
    ("space-not-yaml", lambda f, o: ["search", *search(space=f"{f}/not_yaml.yaml"), "--out", o], "is not valid YAML"),
    ("space-no-family", lambda f, o: ["search", *search(space=f"{f}/no_family.yaml"), "--out", o],
     "`family` is None"),
    # weights files
    ("weights-missing", lambda f, o: ["search", *search(teacher_weights=f"{f}/none.pth"), "--out", o],
     "does not exist"),
    ("weights-corrupt", lambda f, o: ["search", *search(teacher_weights=f"{f}/corrupt.pth"), "--out", o],
     "corrupt or not a state dict"),
    ("weights-other-model", lambda f, o: ["search", *search(teacher="resnet56_cifar", teacher_weights=f"{f}/r20.th"),
                                          "--out", o], "do not fit resnet56_cifar"),
    ("weights-other-shape", lambda f, o: ["search", *search(teacher_weights=f"{f}/tiny.pth"), "--out", o],
     "do not fit resnet20_cifar"),
    # data: missing, corrupt or truncated zips and JPEGs, empty class folders, one class
    ("data-missing", lambda f, o: ["search", *search(data=f"{f}/none"), "--out", o], "does not exist"),
    ("data-corrupt-zip", lambda f, o: ["search", *search(data=f"{f}/corrupt.zip"), "--out", o], "is not a zip"),
    ("data-truncated-zip", lambda f, o: ["search", *search(data=f"{f}/trunc.zip"), "--out", o], "is not a zip"),
    ("data-corrupt-jpeg", lambda f, o: ["search", *search(data=f"{f}/badjpg"), "--out", o],
     "badjpg/c1/"),
    ("data-truncated-jpeg", lambda f, o: ["search", *search(data=f"{f}/truncjpg"), "--out", o],
     "truncjpg/c1/"),
    ("data-empty-classes", lambda f, o: ["search", *search(data=f"{f}/empty"), "--out", o], "holds no images"),
    ("data-one-class", lambda f, o: ["search", *search(data=f"{f}/oneclass"), "--out", o], "needs at least 2"),
    ("data-a-file", lambda f, o: ["search", *search(data=f"{f}/a_file"), "--out", o], "is not a zip archive"),
    # paths and storages
    ("out-under-a-file", lambda f, o: ["search", *search(), "--out", f"{f}/a_file/run"], "is a file"),
    ("out-uncreatable", lambda f, o: ["search", *search(), "--out", "/proc/forbidden/x"],
     "--out '/proc/forbidden/x' cannot be created or written"),
    ("run-out-uncreatable", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--out",
                                          "/proc/forbidden/x"], "cannot be created or written"),
    ("storage-not-url", lambda f, o: ["search", *search(storage="autokd.db"), "--out", o], "is not a URL"),
    ("storage-refused", lambda f, o: ["search", *search(storage=PG_DOWN), "--out", o],
     "cannot open storage 'postgresql://autokd:***@127.0.0.1:1/autokd'"),
    ("storage-no-driver", lambda f, o: ["search", *search(storage=PG_DOWN), "--out", o],
     "pip install 'autokd[postgres]'", no_driver),
    ("storage-sqlite-folder", lambda f, o: ["search", *search(storage=f"sqlite:///{f}/none/x.db"), "--out", o],
     "check that its folder exists"),
    # run
    ("run-batch-size", lambda f, o: ["run", *search(batch_size="-1"), "--teacher-weights", f"{f}/r20.th", "--out", o],
     "--batch-size -1 is out of range"),
    ("run-no-out", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th"], "--out DIR"),
    ("run-random-teacher", lambda f, o: ["run", *search(), "--out", o], "distilling needs a trained teacher"),
    ("run-train-top-0", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--train-top", "0",
                                      "--out", o], "--train-top must be at least 1"),
    ("run-epochs-0", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--epochs", "0",
                                   "--out", o], "'epochs' must be >= 1, got 0"),
    ("run-lr-nan", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--lr", "nan", "--out", o],
     "'lr' must be > 0.0, got nan"),
    ("run-loader-workers", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--loader-workers",
                                         "-1", "--out", o], "-1 is out of range: give 0 or more"),
    ("run-recipe-name", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--recipe", "magic",
                                      "--out", o], "unknown recipe 'magic'"),
    ("run-recipe-unknown-key", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--recipe",
                                             f"{f}/recipe_unknown.yaml", "--out", o], "unknown recipe key(s)"),
    ("run-recipe-wrong-type", lambda f, o: ["run", *search(), "--teacher-weights", f"{f}/r20.th", "--recipe",
                                            f"{f}/recipe_wrongtype.yaml", "--out", o], "lr"),
    # train
    ("train-student", lambda f, o: ["train", "--student", "nosuchnet", "--out", o], "unknown student 'nosuchnet'"),
    ("train-student-yaml", lambda f, o: ["train", "--student", f"{f}/unknown_key.yaml", "--out", o],
     "has no valid `spec`"),
    ("train-epochs-0", lambda f, o: ["train", "--student", "resnet18", "--recipe", "none", "--epochs", "0",
                                     "--out", o], "'epochs' must be >= 1, got 0"),
    ("train-batch-negative", lambda f, o: ["train", "--student", "resnet18", "--recipe", "none", "--batch-size",
                                           "-1", "--out", o], "'batch_size' must be >= 1"),
    ("train-img-size-0", lambda f, o: ["train", "--student", "resnet18", "--img-size", "0", "--out", o],
     "argument --img-size: 0 is out of range"),
    ("train-no-teacher", lambda f, o: ["train", "--student", "resnet18", "--recipe", "kd", "--out", o],
     "give --teacher"),
    ("train-weights-other-model", lambda f, o: ["train", "--student", "resnet18", "--teacher", "resnet20_cifar",
                                                "--teacher-weights", f"{f}/tiny.pth", "--out", o],
     "do not fit resnet20_cifar"),
    ("train-data-zip", lambda f, o: ["train", "--student", "resnet18", "--data", f"{f}/trunc.zip", "--out", o],
     "is not a zip"),
    ("train-no-out", lambda f, o: ["train", "--student", "resnet18"], "--out DIR"),
    ("train-out-under-a-file", lambda f, o: ["train", "--student", "resnet18", "--out", f"{f}/a_file/t"],
     "is a file"),
    ("train-out-uncreatable", lambda f, o: ["train", "--student", "resnet18", "--out", "/proc/forbidden/t"],
     "cannot be created or written"),
    # finetune-teacher
    ("finetune-teacher", lambda f, o: ["finetune-teacher", "--teacher", "nosuchnet", "--out", o], "unknown teacher"),
    ("finetune-epochs", lambda f, o: ["finetune-teacher", "--teacher", "resnet20_cifar", "--epochs", "-1",
                                      "--out", o], "'epochs' must be >= 1, got -1"),
    ("finetune-data", lambda f, o: ["finetune-teacher", "--teacher", "resnet20_cifar", "--data", f"{f}/empty",
                                    "--out", o], "holds no images"),
    ("finetune-weights", lambda f, o: ["finetune-teacher", "--teacher", "resnet20_cifar", "--teacher-weights",
                                       f"{f}/corrupt.pth", "--out", o], "corrupt or not a state dict"),
    # dashboard
    ("dashboard-no-db", lambda f, o: ["dashboard", "--storage", f"sqlite:///{f}/none.db"], "no study database"),
    ("dashboard-not-url", lambda f, o: ["dashboard", "--storage", "studies"], "is not a URL"),
    ("dashboard-port", lambda f, o: ["dashboard", "--port", "70000"], "70000 is out of range: give 1 to 65535"),
    ("dashboard-refused", lambda f, o: ["dashboard", "--storage", PG_DOWN], "postgresql://autokd:***@"),
    ("unknown-command", lambda f, o: ["distil"], "invalid choice: 'distil'"),
    ("recommend-needs-data", lambda f, o: ["recommend"], "the following arguments are required: --data"),
    ("recommend-tune-needs-out", lambda f, o: ["recommend", "--data", str(f), "--teacher", "resnet20_cifar",
                                               "--student", "s.yaml", "--tune", "2"], "--tune keeps its study"),
    ("recommend-out-uncreatable", lambda f, o: ["recommend", "--data", str(f), "--teacher", "resnet20_cifar",
                                                "--student", "s.yaml", "--tune", "2", "--out", "/proc/forbidden/x"],
     "cannot be created or written"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, message, setup", [pytest.param(c[1], c[2], c[3] if len(c) > 3 else None, id=c[0])
                                                   for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(fx, tmp_path, capsys, monkeypatch, argv, message, setup):
    if setup is not None:
        setup(monkeypatch)
    out = tmp_path / "out"
    before = snapshot(fx)
    code = main(argv(str(fx), str(out)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if ": error: " in line]
    assert errors == err[-1:] and err[-1].startswith("autokd"), err  # one error line, the last one
    assert message in err[-1]
    assert "Traceback" not in "\n".join(err) and "hunter2" not in "\n".join(err)
    assert not out.exists() and snapshot(fx) == before


def test_a_study_made_with_other_settings_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", *search(), "--study", "s", "--out", str(out)]) == 0
    before = {k: v for k, v in snapshot(out).items() if not k.startswith("autokd.db")}
    assert main(["search", *search(budget="20M"), "--study", "s", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("autokd: error: study 's' in sqlite:///") and "different budget" in err[-1]
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("autokd.db")} == before


def test_ctrl_c_mid_search_is_one_line_exit_130(tmp_path, capsys, monkeypatch):
    from autokd.search.evaluate import CandidateEvaluator

    def interrupted(self, spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(CandidateEvaluator, "score", interrupted)
    assert main(["search", *search(), "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "autokd: interrupted; run the same command again to resume"
    assert not (tmp_path / "out" / "leaderboard.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["search", *search(budget="1e400")], "autokd: error: budget '1e400' is out of range"),
    (["search", *search(storage=PG_DOWN)], "autokd: error: cannot open storage 'postgresql://autokd:***@"),
    (["search", *search(), "--out", "/proc/forbidden/x"], "autokd: error: --out '/proc/forbidden/x' cannot be created"),
])
def test_the_installed_command_prints_no_traceback(tmp_path, argv, message):
    done = subprocess.run([sys.executable, "-m", "autokd", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []


def test_memory_storage_is_refused_on_the_command_line(capsys, tmp_path):
    from autokd.cli import main

    code = main(["search", "--teacher", "resnet20_cifar", "--space", "cifar_resnet", "--budget", "30M",
                 "--storage", "memory", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--storage memory" in err[-1] and not (tmp_path / "out").exists()
