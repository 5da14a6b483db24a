"""Atomic writes: a crash mid-write leaves the old file; every writer outside the trainer uses the helper."""

import re
from pathlib import Path

import pandas as pd
import pytest

from autokd.io import atomic_path, write_csv, write_json, write_text, write_yaml
from autokd.search import SearchConfig, run_search

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "sub" / "report.html", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_writers_round_trip(tmp_path):
    import json

    import yaml

    assert json.loads(write_json(tmp_path / "a.json", {"x": [1, 2]}).read_text()) == {"x": [1, 2]}
    assert yaml.safe_load(write_yaml(tmp_path / "a.yaml", {"b": 1, "a": 2}).read_text()) == {"b": 1, "a": 2}
    frame = pd.DataFrame({"trial": [3, 1], "score": [0.5, 0.25]})
    pd.testing.assert_frame_equal(pd.read_csv(write_csv(tmp_path / "a.csv", frame)), frame)


def test_every_writer_outside_the_trainer_goes_through_the_helper():
    direct = re.compile(r"\.write_text\(|\.write_bytes\(|\.to_csv\(|json\.dump\(|yaml\.safe_dump\([^)]*,|"
                        r"open\([^)]*['\"][wa]b?['\"]")
    found = []
    for path in sorted((ROOT / "autokd").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("autokd/train/") or rel == "autokd/io.py":
            continue
        found += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if direct.search(line)]
    assert found == []


def test_a_rerun_with_a_shorter_leaderboard_removes_stale_top_files(tmp_path):
    config = SearchConfig(teacher="resnet20_cifar", budget="25M", spaces=("cifar_resnet",), population_size=4,
                          tournament_size=2, batch_size=4, objective="params", trials=5)
    out = tmp_path / "out"
    run_search(config, out=out, top_k=5, progress=False)
    (out / "top" / "notes.yaml").write_text("mine: true\n")  # not a rank: left alone
    assert sorted(p.name for p in (out / "top").iterdir()) == ["1.yaml", "2.yaml", "3.yaml", "4.yaml", "5.yaml",
                                                                "notes.yaml"]
    run_search(config, out=out, top_k=2, progress=False)
    assert sorted(p.name for p in (out / "top").iterdir()) == ["1.yaml", "2.yaml", "notes.yaml"]
    assert pd.read_csv(out / "leaderboard.csv")["rank"].tolist() == [1, 2]
