import subprocess
import sys

import pytest

from autokd.cli import main
from autokd.proxies.aggregate import DEFAULT_OBJECTIVE

TINY = ["search", "--teacher", "resnet20_cifar", "--space", "cifar_resnet", "--population", "4",
        "--tournament", "2", "--batch-size", "16", "--quiet"]


def run_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "lots"], "cannot read budget 'lots'"),
        (["--budget", "1M"], "smallest model has"),
        (["--teacher", "resnet20_cifarr"], "resnet20_cifar"),
        (["--data", "/nonexistent/images"], "/nonexistent/images"),
        (["--sampler", "annealing"], "unknown sampler"),
        (["--space", "transformerxl"], "unknown search space"),
        (["--storage", "postgresql://autokd@127.0.0.1:9/none"], "storage"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, argv, message):
    out = tmp_path / "out"
    code, err = run_error(capsys, [*TINY, "--budget", "30M", "--trials", "2", "--out", str(out), *argv])
    assert code == 2
    assert [line for line in err if line.startswith("autokd: error:")] == err[-1:]
    assert message in err[-1]
    assert not out.exists()


def test_empty_dataset_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_error(capsys, [*TINY, "--budget", "30M", "--data", str(tmp_path / "empty")])
    assert code == 2 and "no images" in err[-1]


def test_unknown_teacher_suggests_close_names(capsys):
    code, err = run_error(capsys, [*TINY, "--teacher", "vit_bb"])
    assert code == 2 and "vit_b" in err[-1]


def test_console_script_prints_the_leaderboard(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "autokd", *TINY, "--budget", "30M", "--trials", "6", "--top-k", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "synthetic" in proc.stderr  # the embedded default says it is not real images
    assert f"top 3 by {DEFAULT_OBJECTIVE}" in proc.stdout
    assert f"autokd dashboard --storage sqlite:///{out}/autokd.db" in proc.stdout
    assert (out / "report.html").exists() and (out / "top" / "3.yaml").exists()


def test_dashboard_serves_the_study_on_localhost(tmp_path):
    import json
    import socket
    import time
    import urllib.request

    assert main([*TINY, "--budget", "30M", "--trials", "2", "--storage", f"sqlite:///{tmp_path}/a.db",
                 "--study", "dash"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "autokd", "dashboard", "--storage", f"sqlite:///{tmp_path}/a.db",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError("dashboard did not start")
        assert [s["study_name"] for s in studies] == ["dash"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert f"http://127.0.0.1:{port}" in proc.stdout.read()


def test_dashboard_without_a_database_is_a_clear_error(capsys, tmp_path):
    code, err = run_error(capsys, ["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"])
    assert code == 2 and "no study database" in err[-1] and not (tmp_path / "none.db").exists()
