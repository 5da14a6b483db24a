"""bench_proxy_quality.py on a synthetic ground truth whose correlations are known exactly."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
from autokd.spaces import ArchSpec  # noqa: E402
from benchmarks.ranking import bench_proxy_quality as bpq  # noqa: E402

N = 8


def swap(values, i, j):
    values = list(values)
    values[i], values[j] = values[j], values[i]
    return values


@pytest.fixture
def gt_csv(tmp_path):
    """N specs, two seeds each (kd_acc 50+i +- 1, so the mean is 50+i); cls_acc in the reverse order."""
    kd = [50.0 + i for i in range(N)]
    rows = []
    for i in range(N):
        spec = ArchSpec.make("cifar_resnet", depths=(i + 1, 1, 1), widths=(8, 16, 16), shortcut="A").to_json()
        proxies = {
            "diswot": kd[i],                              # perfect
            "naswot": -kd[i],                             # perfectly wrong
            "synflow": swap(kd, 2, 3)[i],                 # one adjacent pair swapped, away from the top
            "grad_norm": swap(kd, N - 1, N - 2)[i],       # the top two swapped: top pick is second best
            "diswot_relation": -kd[i],                    # a distance: lower = better, so perfect once negated
            "diswot_semantic": kd[i],                     # a distance that grows with accuracy: tau -1
        }
        for seed, delta in ((0, -1.0), (1, 1.0)):
            rows.append({"spec": spec, "macs": 1000 * (N - i), "params": 10 * (i % 3), "kd_acc": kd[i] + delta,
                         "cls_acc": 40.0 - i + delta, "seed": seed, "epochs": 3, "device": "cpu", **proxies,
                         "note": "synthetic"})
    path = tmp_path / "gt.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_known_correlations_and_top_picks(gt_csv, tmp_path, capsys):
    out = tmp_path / "q.json"
    result = bpq.main(["--gt", str(gt_csv), "--resamples", "300", "--out", str(out)])
    assert json.loads(out.read_text())["specs"] == N and result["rows"] == 2 * N and not result["rescored"]
    q = result["proxies"]
    pairs = N * (N - 1) / 2
    assert q["diswot"]["kd_acc"]["tau"] == pytest.approx(1.0) and q["diswot"]["kd_acc"]["top_pick_rank"] == 1
    assert q["diswot"]["kd_acc"]["tau_ci"] == pytest.approx((1.0, 1.0))
    assert q["naswot"]["kd_acc"]["tau"] == pytest.approx(-1.0) and q["naswot"]["kd_acc"]["top_pick_rank"] == N
    assert q["synflow"]["kd_acc"]["tau"] == pytest.approx(1 - 2 / pairs)  # = 1 - 4 / (n (n - 1))
    assert q["synflow"]["kd_acc"]["rho"] == pytest.approx(1 - 12 / (N * (N**2 - 1)))
    assert q["synflow"]["kd_acc"]["top_pick_rank"] == 1 and q["grad_norm"]["kd_acc"]["top_pick_rank"] == 2
    assert q["diswot_relation"]["kd_acc"]["tau"] == pytest.approx(1.0)
    assert q["diswot_semantic"]["kd_acc"]["tau"] == pytest.approx(-1.0)
    assert q["macs"]["kd_acc"]["tau"] == pytest.approx(-1.0) and q["macs"]["kd_acc"]["top_pick_rank"] == N
    # cls_acc runs the other way round
    assert q["diswot"]["cls_acc"]["tau"] == pytest.approx(-1.0) and q["macs"]["cls_acc"]["tau"] == pytest.approx(1.0)
    low, high = q["synflow"]["kd_acc"]["tau_ci"]
    assert low < q["synflow"]["kd_acc"]["tau"] <= high <= 1.0
    assert "diswot_semantic" in capsys.readouterr().out


def test_statistics_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert bpq.kendall_tau(x, x[::-1]) == pytest.approx(-1.0)
    assert bpq.kendall_tau(x, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert math.isnan(bpq.kendall_tau(x, np.ones(4)))
    # a tie in the target shares the best rank; the proxy's pick is row 2
    assert bpq.top_pick_rank(np.array([0.1, 0.2, 0.9, 0.3]), np.array([70.0, 80.0, 80.0, 60.0])) == 1
    assert bpq.top_pick_rank(np.array([0.1, 0.2, 0.9, 0.3]), np.array([70.0, 80.0, 65.0, 60.0])) == 3
    a = bpq.bootstrap_ci(x, np.array([1.0, 3.0, 2.0, 4.0]), bpq.kendall_tau, 200, seed=1)
    assert a == bpq.bootstrap_ci(x, np.array([1.0, 3.0, 2.0, 4.0]), bpq.kendall_tau, 200, seed=1)  # seeded


def test_ranking_row_drops_unscored_rows_and_keeps_extra_columns():
    target = np.array([1.0, 2.0, 3.0, 4.0])
    row = bpq.ranking_row("r", np.array([4.0, np.nan, 2.0, 1.0]), target, 200, kind="size", cpu_minutes=0.5)
    assert row["students"] == 3 and row["kind"] == "size" and row["cpu_minutes"] == 0.5
    assert row["kendall_tau"] == pytest.approx(-1.0)  # the 3 scored rows in reverse order
    assert row["top_pick_true_rank"] == 3  # score 4 picks target 1.0, the worst of the three
    assert row["ci"][0] <= row["kendall_tau"] <= row["ci"][1]


def test_seeds_are_averaged(gt_csv):
    frame = bpq.read_ground_truth(gt_csv)
    assert len(frame) == N and (frame["seeds"] == 2).all()
    assert list(frame["kd_acc"]) == [50.0 + i for i in range(N)]


def test_variants_rescore_every_variant_against_the_same_ground_truth(tmp_path, folder, weights):
    from benchmarks.ranking import bench_proxy_variants

    rows = [{"spec": ArchSpec.make("cifar_resnet", depths=(d, 1, 1), widths=(8, 16, w), shortcut="A").to_json(),
             "macs": 10_000_000, "params": 1000 * (i + 1), "kd_acc": 50.0 + i, "cls_acc": 40.0 + i, "seed": 0,
             "epochs": 1, "device": "cpu"} for i, (d, w) in enumerate([(1, 16), (2, 16), (1, 32), (3, 32)])]
    gt = tmp_path / "gt.csv"
    pd.DataFrame(rows).to_csv(gt, index=False)
    result = bench_proxy_variants.main([
        "--gt", str(gt), "--data", str(folder), "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
        "--variants", "trained teacher;random teacher (default)", "--resamples", "50",
        "--out", str(tmp_path / "v.json"),
    ])
    assert set(result["variants"]) == {"trained teacher", "random teacher (default)"}
    for variant in result["variants"].values():
        assert set(variant) == {"diswot", "diswot_relation", "diswot_semantic", "params", "params+diswot", "by_space"}
        assert variant["by_space"] == {}  # one space only
        assert all(-1 <= v["tau"] <= 1 for k, v in variant.items() if k != "by_space")
    # params does not depend on the DisWOT variant
    variants = result["variants"]
    assert variants["trained teacher"]["params"]["tau"] == variants["random teacher (default)"]["params"]["tau"]
    assert json.loads((tmp_path / "v.json").read_text())["gt"] == str(gt)


def test_combinations_are_log_rank_sums_within_the_ground_truth():
    frame = pd.DataFrame({"diswot": [3.0, 1.0, 2.0, 5.0], "params": [10, 30, 20, 5], "macs": [4, 3, 2, 1],
                          "diswot_relation": [0.1, 0.3, 0.2, 0.0]})
    both = bpq.add_combinations(frame, ("params+diswot", "diswot_relation+params", "params+zico"))
    # ranks among the 4 (ascending, 1 = worst): diswot [3,1,2,4], params [2,4,3,1]; p = (rank - 0.5 + 1) / 5
    p = lambda r: (r + 0.5) / 5  # noqa: E731
    expected = [np.log(p(3)) + np.log(p(2)), np.log(p(1)) + np.log(p(4)), np.log(p(2)) + np.log(p(3)),
                np.log(p(4)) + np.log(p(1))]
    assert np.allclose(both["params+diswot"], expected)
    # a distance is negated before ranking: relation [0.1, 0.3, 0.2, 0.0] ranks [3, 1, 2, 4] like diswot
    assert np.allclose(both["diswot_relation+params"], expected)
    assert "params+zico" not in both.columns  # a term the frame lacks: not reported


def test_combinations_are_reported_with_the_proxies(gt_csv, tmp_path):
    result = bpq.main(["--gt", str(gt_csv), "--resamples", "50", "--out", str(tmp_path / "q.json"),
                       "--scores-out", str(tmp_path / "scores.csv")])
    # diswot = kd_acc (ranks 1..N) and macs in reverse (N..1): the aggregate is symmetric, so it cannot order
    # the middle against the ends the way kd_acc does
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == N and "params+diswot" in scores.columns
    assert -1 <= result["proxies"]["params+diswot"]["kd_acc"]["tau"] <= 1
    assert result["proxies"]["params+macs"]["kd_acc"]["tau"] < 0  # both terms favour the worst specs


def test_quality_within_each_space(tmp_path):
    # within each space diswot orders kd_acc perfectly; across spaces it is inverted (vit scores high, trains low)
    rows = []
    for i in range(4):
        for _space, spec, acc, score in (
            ("cifar_resnet", ArchSpec.make("cifar_resnet", depths=(i + 1, 1, 1), widths=(8, 16, 16), shortcut="A"),
             60.0 + i, float(i)),
            ("vit", ArchSpec.make("vit", depth=4 + i, embed_dim=192, heads=(3,) * (4 + i),
                                  mlp_ratio=(2.0,) * (4 + i), patch_size=8, pool="avg", head_dim=64),
             20.0 + i, 10.0 + i),
        ):
            rows.append({"spec": spec.to_json(), "macs": 1000, "params": 10, "kd_acc": acc, "cls_acc": acc,
                         "seed": 0, "epochs": 1, "device": "cpu", "diswot": score, "diswot_relation": -score,
                         "diswot_semantic": 0.0, "naswot": 0.0, "synflow": 0.0, "grad_norm": 0.0})
    gt = tmp_path / "gt.csv"
    pd.DataFrame(rows).to_csv(gt, index=False)
    result = bpq.main(["--gt", str(gt), "--resamples", "50", "--out", str(tmp_path / "q.json")])
    assert set(result["by_space"]) == {"cifar_resnet", "vit"}
    for space in ("cifar_resnet", "vit"):
        assert result["by_space"][space]["diswot"]["kd_acc"]["tau"] == pytest.approx(1.0)
        assert result["by_space"][space]["diswot"]["kd_acc"]["n"] == 4
    assert result["proxies"]["diswot"]["kd_acc"]["tau"] < 0  # the overall ranking puts every vit first


def test_row_statistics_equal_scipy_on_resamples_with_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    x[3] = x[4]  # a tie, on top of the ties that resampling makes
    idx = rng.integers(0, 30, size=(40, 30))
    assert np.allclose(bpq.kendall_tau_rows(x[idx], y[idx]), [bpq.kendall_tau(x[i], y[i]) for i in idx])
    assert np.allclose(bpq.spearman_rho_rows(x[idx], y[idx]), [bpq.spearman_rho(x[i], y[i]) for i in idx])
    assert np.isnan(bpq.kendall_tau_rows(np.ones((1, 5)), np.arange(5.0)[None]))[0]
