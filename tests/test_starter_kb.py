"""The starter knowledge base ships inside the package, is one file (the benchmarks build and read that file),
and is read together with the user's own KB, which alone receives new runs."""

import inspect
import sys
from pathlib import Path

import pytest
from test_recommend import kb_rows

from autokd.errors import AutokdError
from autokd.recipes.kb import STARTER_KB, append_rows, read_kb, read_kbs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root, for benchmarks.*


def test_the_starter_kb_is_package_data_with_both_pair_kinds():
    assert STARTER_KB.is_relative_to(ROOT / "autokd") and STARTER_KB.is_file()
    rows = read_kb(STARTER_KB)
    assert len(rows) >= 400 and rows["key"].is_unique
    assert {"cnn->cnn", "cnn->vit"} <= set(rows["pair_kind"]) and rows["task"].nunique() >= 10


def test_the_benchmarks_build_and_read_the_one_starter_file():
    from benchmarks.recipes import bench_recommend, build_recipe_kb

    for script in (build_recipe_kb, bench_recommend):  # their --out / --kb default to the shipped file
        assert 'default=str(STARTER_KB)' in inspect.getsource(script.main)
    assert not (ROOT / "benchmarks" / "results" / "recipe_kb.csv").exists()  # no second copy to drift


def test_the_user_kb_is_read_with_the_starter_and_alone_receives_runs(tmp_path):
    user = tmp_path / "kb.csv"
    starter_rows = len(read_kb(STARTER_KB))
    table, sources = read_kbs(user)  # no user KB yet: the starter alone
    assert sources == [STARTER_KB] and len(table) == starter_rows
    before = STARTER_KB.read_bytes()
    append_rows(user, kb_rows())
    table, sources = read_kbs(user)
    assert sources == [STARTER_KB, user] and len(table) == starter_rows + len(kb_rows())
    table, sources = read_kbs(user, starter=False)
    assert sources == [user] and len(table) == len(kb_rows())
    table, _ = read_kbs(STARTER_KB)  # --kb naming the starter file itself: each run once
    assert len(table) == starter_rows
    assert STARTER_KB.read_bytes() == before
    with pytest.raises(AutokdError, match="no knowledge base at .*leave out --no-starter-kb"):
        read_kbs(tmp_path / "none.csv", starter=False)
