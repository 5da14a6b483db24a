"""The NAS-Bench-201 benchmarks: scoring rows resume, the report's figures, and the replayed search."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
from benchmarks.ranking import bench_nb201, score_nb201  # noqa: E402
from benchmarks.search import bench_nb201_search  # noqa: E402


@pytest.fixture(scope="module")
def gt():
    if not score_nb201.GROUND_TRUTH.is_file():
        pytest.skip("../shared/ground_truth is not present")
    return score_nb201.ground_truth()


def test_sample_is_naslib_first_and_nested(gt):
    naslib = set(pd.read_csv(score_nb201.NASLIB)["index"])
    big, small = score_nb201.sample_indices(1000), score_nb201.sample_indices(100)
    assert len(set(big)) == 1000 and big[:100] == small
    assert set(big[:len(naslib)]) == naslib and not set(big[len(naslib):]) & naslib


def test_scoring_writes_rows_as_it_goes_and_resumes(gt, tmp_path, shared_data, shared_teachers):
    out = tmp_path / "scores_x_c10.csv"
    score_nb201.main(["--size", "2", "--proxies", "params,layers,synflow", "--out", str(out)])
    first = pd.read_csv(out)
    assert len(first) == 2 and first["params"].between(73_306, 1_531_546).all()
    with out.open("a") as f:  # a row cut short by a kill is dropped on resume
        f.write("123,|none~0|+")
    score_nb201.main(["--size", "3", "--proxies", "params,layers,synflow", "--out", str(out)])
    again = pd.read_csv(out)
    assert len(again) == 3 and again["index"].tolist()[:2] == first["index"].tolist()
    assert again["index"].tolist() == score_nb201.sample_indices(3)


def fake_scores(gt: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Closed-form size and shape of the first n networks of the sample, and a noisy copy of the accuracy."""
    rng = np.random.default_rng(seed)
    index = score_nb201.sample_indices(n)
    rows = gt.set_index("index").loc[index].reset_index()
    size = bench_nb201.closed_form_baselines(rows)
    return pd.DataFrame({"index": rows["index"], "arch": rows["arch"], "head": 10, "params": size["params"],
                         "macs": size["macs"], "layers": size["layers"],
                         "meco": rows["c10_test"] + rng.normal(0, 1, n), "sec_meco": 0.5})


def test_report_taus_match_scipy_and_the_naslib_check(gt, tmp_path):
    scores = fake_scores(gt, 120)
    scores.to_csv(tmp_path / "scores_fake_c10.csv", index=False)
    result = bench_nb201.main(["--scores", str(tmp_path), "--resamples", "50", "--out", str(tmp_path / "r.json"),
                               "--seed1", str(tmp_path / "none.csv")])
    acc = gt.set_index("index").loc[scores["index"]]
    expected = stats.kendalltau(scores["meco"], acc["c10_test"]).statistic
    assert result["taus"]["meco"]["c10"]["tau"] == pytest.approx(expected)
    assert result["taus"]["meco"]["c10"]["n"] == 120
    low, high = result["taus"]["meco"]["c10"]["ci"]
    assert low < expected < high
    # the size baselines over all 15,625 networks: the figures of the ground truth's README
    assert result["all_networks"]["params"]["c10"]["tau"] == pytest.approx(0.578, abs=0.001)
    assert result["all_networks"]["params"]["c100"]["tau"] == pytest.approx(0.553, abs=0.001)
    check = {c["proxy"]: c for c in result["naslib_check"]}
    assert check["params"]["tau"] == pytest.approx(1.0) and check["params"]["n"] == 120
    assert (tmp_path / "table_nb201_c100.csv").is_file()


def test_replayed_search_stays_in_budget_resumes_and_beats_chance(gt, tmp_path, shared_data, shared_teachers):
    size = bench_nb201.closed_form_baselines(gt)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"index": gt["index"], "arch": gt["arch"], "head": 10, "params": size["params"],
                          "macs": size["macs"], "swap": gt["c10_test"] + rng.normal(0, 0.5, len(gt)),
                          "sec_params": 0.0, "sec_macs": 0.0, "sec_swap": 0.2})
    table.to_csv(tmp_path / "table.csv", index=False)
    argv = ["--table", str(tmp_path / "table.csv"), "--objective", "params+swap", "--trials", "40", "--seeds", "2",
            "--samplers", "evolution,random", "--budgets", "1,0.5", "--out", str(tmp_path / "out")]
    result = bench_nb201_search.main(argv)
    rows = result["rows"]
    assert len(rows) == 2 * 2 + 2  # both samplers without a budget, evolution under half the MACs
    assert all(r["macs"] <= r["budget"] for r in rows)
    assert all(r["distinct_scored"] == 40 for r in rows)
    # a score that tracks accuracy: the picks are far better than a random network (CIFAR-10 mean 87.1)
    assert np.mean([r["c10"] for r in rows]) > 92
    lines = (tmp_path / "out" / "searches.jsonl").read_text().splitlines()
    again = bench_nb201_search.main(argv)  # resumes: nothing run twice
    assert (tmp_path / "out" / "searches.jsonl").read_text().splitlines() == lines
    assert [json.dumps(r) for r in again["rows"]] == [json.dumps(r) for r in rows]


def test_refine_rows_pick_from_the_top_k_match_a_live_refine_and_resume(gt, tmp_path, shared_data,
                                                                         shared_teachers):
    from benchmarks.search import bench_nb201_refine

    argv = ["--settings", "2x1", "--trials", "30", "--seeds", "2", "--images", "100", "--live", "1",
            "--refine-seeds", "0,1", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    result = bench_nb201_refine.main(argv)
    rows = result["rows"]
    assert [(r["refine_seed"], r["seed"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["proxy_rank_of_pick"] in (1, 2) for r in rows)
    assert all(r["candidate_epochs"] == 2 and r["refine_cpu_s_estimate"] > 0 for r in rows)
    accuracy = gt.set_index("arch")
    assert all(r["c10"] == accuracy.loc[r["pick"], "c10_test"] for r in rows)
    check = result["live_checks"][0]
    assert check["same"] and check["live_pick"] == rows[0]["pick"]
    curves = (tmp_path / "out" / "refine_curves.jsonl").read_text()
    again = bench_nb201_refine.main(argv)  # resumes: nothing trained or run twice
    assert (tmp_path / "out" / "refine_curves.jsonl").read_text() == curves
    assert again["rows"] == rows and again["live_checks"] == result["live_checks"]
