"""The stability benchmark on a tiny search, and the ranking table's choice rule on synthetic ground truths."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
from autokd.spaces import ArchSpec  # noqa: E402
from benchmarks.ranking import bench_proxy_stability as bps  # noqa: E402
from benchmarks.ranking import bench_ranking_table as brt  # noqa: E402


def test_stability_of_size_is_one_and_of_a_batch_score_is_measured(tmp_path, capsys):
    out = tmp_path / "stab.json"
    result = bps.main(["--setting", "resnet20_cifar:cifar_resnet:25M", "--students", "6", "--batch-size", "16",
                       "--proxies", "params,layers,synflow,diswot", "--threads", "1", "--out", str(out)])
    setting = result["settings"]["resnet20_cifar:cifar_resnet:25M"]
    assert setting["students"] == 6 and setting["batch_size"] == 16
    table = setting["stability"]
    # size and SynFlow (an all-ones input) do not read the batch: the same ranking on both batches
    for key in ("params", "layers", "synflow", "params+layers"):
        assert table[key]["tau"] == pytest.approx(1.0) and table[key]["pass"]
    assert -1 <= table["diswot"]["tau"] <= 1 and table["diswot"]["n"] == 6
    assert setting["cpu_seconds_per_candidate"]["params"] < setting["cpu_seconds_per_candidate"]["diswot"] + 1
    assert json.loads(out.read_text())["pass_tau"] == 0.8
    assert "tau(batch A, batch B)" in capsys.readouterr().out


def synthetic_scores(path: Path, n: int, seed: int) -> Path:
    """kd_acc; 'good' follows it with a little noise, 'params' with more, 'noisy' is random."""
    rng = np.random.default_rng(seed)
    kd = np.arange(n, dtype=float)
    rows = []
    for i in range(n):
        spec = ArchSpec.make("cifar_resnet", depths=(i + 1, 1, 1), widths=(8, 16, 16), shortcut="A").to_json()
        rows.append({"spec": spec, "space": "cifar_resnet", "kd_acc": kd[i], "params": kd[i] + rng.normal(0, 6),
                     "macs": rng.normal(), "swap": kd[i] + rng.normal(0, 1), "snip": kd[i] + rng.normal(0, 0.1)})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def stability_json(path: Path, taus: dict) -> Path:
    stability = {k: {"tau": v, "n": 20, "pass": v >= 0.8} for k, v in taus.items()}
    path.write_text(json.dumps({"settings": {"s": {"students": 20, "stability": stability,
                                                   "cpu_seconds_per_candidate": {"params": 0.0, "macs": 0.0,
                                                                                 "swap": 0.1, "snip": 3.0}}}}))
    return path


def test_the_default_is_the_best_mean_among_stable_fast_rows(tmp_path):
    a = synthetic_scores(tmp_path / "a.csv", 20, 0)
    b = synthetic_scores(tmp_path / "b.csv", 20, 1)
    stab = stability_json(tmp_path / "stab.json", {"params": 1.0, "macs": 1.0, "swap": 0.95, "snip": 0.95,
                                                    "params+swap": 0.9, "params+snip": 0.9})
    result = brt.main(["--gt", f"a={a}", "--gt", f"b={b}", "--stability", str(stab), "--cost", str(stab),
                       "--resamples", "50", "--out", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md")])
    mean = result["mean_tau"]
    assert mean["snip"] > mean["swap"] > mean["params"]
    # snip ranks best but costs 3 CPU s per candidate (over the limit): the fast, stable swap is chosen
    assert "snip" not in result["eligible"] and result["default"] == "swap"
    assert result["leave_one_out"]["a"]["pick"] == "swap"
    assert result["leave_one_out"]["a"]["tau"] == pytest.approx(result["table"]["a"]["swap"]["tau"])
    assert result["best_size_baseline"]["a"] == pytest.approx(result["table"]["a"]["params"]["tau"])
    assert "| swap (default) |" in (tmp_path / "t.md").read_text()


def test_an_unstable_row_is_never_the_default(tmp_path):
    a = synthetic_scores(tmp_path / "a.csv", 20, 0)
    stab = stability_json(tmp_path / "stab.json", {"params": 1.0, "macs": 1.0, "swap": 0.5, "snip": 0.95,
                                                    "params+swap": 0.5, "params+snip": 0.9})
    result = brt.main(["--gt", f"a={a}", "--stability", str(stab), "--cost", str(stab), "--resamples", "50",
                       "--out", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md")])
    assert result["default"] == "params"  # swap and params+swap are unstable, snip too slow


def test_fidelity_benchmark_ranks_the_same_students_every_way_and_resumes_row_by_row(tmp_path, shared_data):
    from autokd.proxies.aggregate import DEFAULT_OBJECTIVE
    from benchmarks.ranking import bench_fidelity

    out = tmp_path / "fidelity.json"
    argv = ["--small", "--threads", "1", "--out", str(out), "--runs", str(tmp_path / "runs"), "--resamples", "50",
            "--data", str(shared_data / "cifar10-jpeg.zip")]
    result = bench_fidelity.main(argv)
    rows = {r["ranking"]: r for r in result["rows"]}
    assert list(rows) == ["params", "macs", f"default ({DEFAULT_OBJECTIVE})", "refine 200 images x 1 epochs (eta 3)",
                          "supernet K=1, 1 epochs"]
    for row in rows.values():
        assert row["students"] == 6 and -1 <= row["kendall_tau"] <= 1 and 1 <= row["top_pick_true_rank"] <= 6
        assert row["ci"][0] <= row["kendall_tau"] <= row["ci"][1]
    assert rows["params"]["cpu_minutes"] == 0 and rows["supernet K=1, 1 epochs"]["cpu_minutes"] > 0
    assert -1 <= result["noise_ceiling"]["tau"] <= 1 and result["noise_ceiling"]["students"] == 6
    assert {"inherited", "scratch"} <= set(result["finetune"])
    # the same command keeps the finished rows (their CPU-minutes unchanged) and adds none
    again = bench_fidelity.main(argv)
    assert again["rows"] == json.loads(out.read_text())["rows"] == result["rows"]
