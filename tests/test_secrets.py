"""A storage password never reaches stdout, logs, YAML, JSON, CSV, HTML or the study itself."""

import json
import subprocess
import sys

import optuna
import pytest
from sqlalchemy.engine import make_url

from autokd.cli import main
from autokd.storage import masked_url, open_storage


def test_masked_url_hides_every_form_of_password():
    assert masked_url("postgresql://autokd:s3cr@t:x@db.example:5432/autokd") == \
        "postgresql://autokd:***@db.example:5432/autokd"
    assert masked_url("postgresql://db/autokd?user=a&password=hunter2&sslmode=require") == \
        "postgresql://db/autokd?user=a&password=***&sslmode=require"
    assert masked_url("sqlite:///runs/a:b@c/autokd.db") == "sqlite:///runs/a:b@c/autokd.db"
    assert masked_url("postgresql://autokd@db/autokd") == "postgresql://autokd@db/autokd"
    assert masked_url("mysql+pymysql://u:p%40ss@h/db") == "mysql+pymysql://u:***@h/db"


def test_no_artifact_of_a_postgresql_run_holds_the_password(postgres_url, tmp_path, folder, weights, monkeypatch,
                                                             capsys):
    password = make_url(postgres_url).password
    assert password and len(password) >= 8
    out, study = tmp_path / "run", f"secret-{tmp_path.name}"
    argv = ["run", "--teacher", "resnet20_cifar", "--teacher-weights", str(weights), "--data", str(folder),
            "--budget", "20M", "--space", "cifar_resnet", "--objective", "params", "--trials", "4", "--population",
            "4", "--tournament", "2", "--batch-size", "10", "--train-top", "1", "--epochs", "1",
            "--train-batch-size", "16", "--loader-workers", "0", "--storage", postgres_url, "--study", study,
            "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "autokd", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "***@127.0.0.1" in done.stdout  # the study's storage is shown, masked
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"leaderboard.csv", "top/1.yaml", "report.html", "search.json", "trained.csv",
            "train/1/results.json"} <= names
    leaks = [p for p in files if password.encode() in p.read_bytes()]
    assert not leaks and password not in done.stdout + done.stderr
    assert json.loads((out / "search.json").read_text())["storage"] == masked_url(postgres_url)

    loaded = optuna.load_study(study_name=study, storage=open_storage(postgres_url))
    recorded = json.dumps([loaded.user_attrs, loaded._storage.get_study_system_attrs(loaded._study_id),
                           [(t.user_attrs, t.system_attrs) for t in loaded.trials]], default=str)
    assert password not in recorded

    import optuna_dashboard

    monkeypatch.setattr(optuna_dashboard, "run_server", lambda *a, **kw: None)
    assert main(["dashboard", "--storage", postgres_url]) == 0
    shown = capsys.readouterr()
    assert password not in shown.out + shown.err and masked_url(postgres_url) in shown.out


@pytest.mark.parametrize("url", ["postgresql://autokd:hunter2-secret@127.0.0.1:1/autokd",
                                 "postgresql://autokd:hunter2-secret@127.0.0.1/autokd?port=notaport"])
def test_an_unreachable_database_is_one_line_without_the_password(url, capsys, tmp_path):
    assert main(["dashboard", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("autokd: error: cannot open storage 'postgresql://autokd:***@")
    assert "hunter2" not in err

