"""The speed and search benchmarks in tiny configurations: they run, and their tables and JSON hold sane numbers."""

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
from autokd.proxies import classifier_grad, relation_gram  # noqa: E402
from autokd.search import SearchConfig, prepare  # noqa: E402
from autokd.spaces import load_space  # noqa: E402
from benchmarks.ranking import bench_proxy_speed  # noqa: E402
from benchmarks.search import bench_search  # noqa: E402

# A CIFAR teacher far bigger than the students, so that the per-candidate teacher backward of the public
# procedure dominates even with timing noise.
SPEED = ["--teacher", "resnet56_cifar", "--img-size", "32", "--budget", "10M", "--space", "cifar_resnet",
         "--batch-size", "16", "--threads", "1"]
SEARCH = ["--teacher", "resnet20_cifar", "--budget", "25M", "--space", "cifar_resnet", "--population", "4",
          "--tournament", "2", "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_proxy_speed_reports_rates_ratio_and_peak(tmp_path, capsys):
    out = tmp_path / "speed.json"
    result = bench_proxy_speed.main([*SPEED, "--candidates", "3", "--baseline-candidates", "2", "--out", str(out),
                                     "--objectives", "diswot,params+layers"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    printed = capsys.readouterr().out
    for column in ("cand/s", "x DisWOT public", "% matmul peak", "autokd score only", "DisWOT public-code"):
        assert column in printed

    auto, public = result["autokd"], result["diswot_public"]
    assert auto["candidates"] == 3 and public["candidates"] == 2
    assert auto["rate_score_only"] > auto["rate_pipeline"] > 0 and public["rate"] > 0
    # one student forward against a teacher forward+backward plus a student forward+backward per candidate
    assert result["ratio_score_only"] > 1
    assert result["ratio_pipeline"] == pytest.approx(auto["rate_pipeline"] / public["rate"])
    assert result["peak_flops"] > 1e8 and 0 < auto["fraction_of_peak"] < 1
    assert 0 < public["fraction_of_peak"] < 1
    assert result["teacher_gmacs"] == pytest.approx(0.1256, rel=0.01)  # ResNet-56: 125.5 MMACs at 32 px

    rows = result["objectives"]["diswot"]["candidates"]
    assert {"arch", "spec", "macs", "build_s", "count_s", "score_s", "reject_s", "objective"} <= set(rows[0])
    aggregate = result["objectives"]["params+layers"]
    assert aggregate["reference_size"] == 32 and result["objectives"]["diswot"]["reference_size"] == 0
    assert all(r["objective"] <= 0 for r in aggregate["candidates"])  # a sum of log-percentiles
    assert aggregate["search_1000_s"] == pytest.approx(aggregate["setup_s"] + 1000 / aggregate["rate_pipeline"])
    assert {"data_s", "build_s", "teacher_s", "student_s", "diswot"} <= set(result["diswot_public_candidates"][0])
    assert all(0 < r["macs"] <= 10e6 for r in rows)
    assert len({r["arch"] for r in rows}) == 3
    assert auto["mean_gmacs"] == pytest.approx(sum(r["macs"] for r in rows) / 3e9)
    for r in [*(r["objective"] for r in rows), *(r["diswot"] for r in result["diswot_public_candidates"])]:
        assert math.isfinite(r) and -6 <= r <= 0  # -(M_r in [0,2] + M_s in [0,4])
    # the baseline scores the same candidates as autokd (on other batches)
    assert [r["arch"] for r in result["diswot_public_candidates"]] == [r["arch"] for r in rows[:2]]


def test_public_procedure_computes_autokds_distances_on_the_same_batch():
    # The baseline's full backward gives, by autograd, the classifier gradients that autokd takes in closed form
    # from one forward, and so the same scores: the speed comparison is between two ways to the same quantity.
    ctx = prepare(SearchConfig(teacher="resnet20_cifar", budget="60M", spaces=("cifar_resnet",), batch_size=16,
                               objective="diswot"))
    evaluator, batch, seed = ctx.evaluator, ctx.evaluator.batch, ctx.config.seed
    ref = evaluator.reference
    out_t, grad_t = bench_proxy_speed.grad_forward(ctx.teacher.model, batch.images, batch.labels, seed)
    assert torch.allclose(grad_t, ref.grad, atol=1e-6)
    assert torch.allclose(relation_gram(out_t.features), ref.relation, atol=1e-6)
    space = load_space("cifar_resnet", 32)
    resnet20 = space.seeds()[0]  # the teacher's width, and a narrower student
    assert resnet20["widths"] == (16, 32, 64) and space.smallest()["widths"][-1] < 64
    for spec in (resnet20, space.smallest()):
        student = bench_proxy_speed.build_seeded(evaluator, spec)
        out_s, grad_s = bench_proxy_speed.grad_forward(student, batch.images, batch.labels, seed)
        assert torch.allclose(grad_s, classifier_grad(out_s.logits, out_s.pooled, batch.labels), atol=1e-6)
        m_r, m_s = bench_proxy_speed.public_distances(out_t, grad_t, out_s, batch.labels, seed, ref.width_match)
        scores = evaluator.score(spec)
        assert scores["diswot_relation"] == pytest.approx(m_r, rel=1e-4, abs=1e-6)
        assert scores["diswot_semantic"] == pytest.approx(m_s, rel=1e-4, abs=1e-6)


def test_proxy_speed_refuses_more_baseline_candidates_than_candidates(tmp_path):
    with pytest.raises(SystemExit):
        bench_proxy_speed.main([*SPEED, "--candidates", "2", "--baseline-candidates", "3",
                                "--out", str(tmp_path / "x.json")])


def test_search_benchmark_compares_evolution_with_random(tmp_path, capsys):
    out = tmp_path / "search.json"
    result = bench_search.main([*SEARCH, "--trials", "8", "--seeds", "0", "--objective", "diswot", "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == json.loads(json.dumps(result["summary"]))
    printed = capsys.readouterr().out
    for column in ("trials/min", "best diswot", "top-10 mean", "evolution - random"):
        assert column in printed

    runs = result["runs"]
    assert [(r["seed"], r["sampler"]) for r in runs] == [(0, "evolution"), (0, "random")]
    for r in runs:
        assert r["complete"] == 8
        assert r["trials_per_min"] > 0 and r["wall_s"] >= r["search_s"] > 0
        assert r["max_macs"] <= r["budget_macs"] == 25_000_000
        assert 0 >= r["best"] >= r["top10_mean"] >= -6
        assert r["best"] >= r["best_at_half"]
        assert r["same_reference"]
    s = result["summary"]
    assert s["seeds"] == 1 and s["all_same_reference"]
    assert s["evolution_minus_random_best"][0] == pytest.approx(runs[0]["best"] - runs[1]["best"])
    assert s["trials_per_min_ratio"][0] == pytest.approx(runs[0]["trials_per_min"] / runs[1]["trials_per_min"])
    assert s["evolution"]["best"] == (runs[0]["best"], 0.0)


def test_kd_cifar10_benchmark_compares_recipes_to_no_kd(tmp_path, folder, weights):
    from benchmarks.training import bench_kd_cifar10

    result = bench_kd_cifar10.main([
        "--data", str(folder), "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
        "--recipes", "none,kd", "--epochs", "1",
        "--finetune-epochs", "1", "--batch-size", "10", "--device", "cpu", "--runs", str(tmp_path / "runs"),
        "--out", str(tmp_path / "kd.json"),
    ])
    assert [r["recipe"] for r in result["runs"]] == ["none", "kd"]
    assert set(result["summary"]) == {"none", "kd"} and result["device"] == "cpu"
    assert all(0 <= r["top1"] <= 100 and r["seconds"] > 0 for r in result["runs"])
    assert result["teacher_top1"] is not None  # the fine-tuned teacher scored on the same test images
    assert (tmp_path / "runs" / "teacher" / "best.pt").exists()
    assert json.loads((tmp_path / "kd.json").read_text())["summary"] == result["summary"]


def test_search_quality_compares_autokds_pick_with_hand_and_random(tmp_path, folder, weights, capsys):
    from autokd.cost import count_macs
    from autokd.spaces import load_space
    from benchmarks.search import bench_search_quality

    result = bench_search_quality.main([
        "--data", str(folder), "--teacher", "resnet20_cifar", "--teacher-weights", str(weights),
        "--budget", "45M", "--trials", "6", "--k", "2", "--epochs", "1", "--device", "cpu", "--objectives",
        "diswot,params",
        "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "q.json"),
    ])
    summary = result["summary"]
    assert list(summary) == ["autokd (diswot)", "autokd (params)", "hand (ResNet-20)", "random (best of 2)"]
    assert summary["hand (ResNet-20)"]["arch"] == bench_search_quality.RESNET20.short()
    assert len(result["runs"]["random (best of 2)"]) == 2
    random_best = max(r["top1"] for r in result["runs"]["random (best of 2)"])
    assert summary["random (best of 2)"]["top1"] == random_best
    for arm, s in summary.items():
        others = max(v["top1"] for a, v in summary.items() if a != arm)
        assert s["gain_over_best_other"] == pytest.approx(s["top1"] - others)
        assert s["macs"] <= 45e6
    for objective in ("diswot", "params"):  # the search's time is charged to its arm
        assert summary[f"autokd ({objective})"]["seconds"] > result["search_seconds"][objective] > 0
    hand = summary["hand (ResNet-20)"]
    assert hand["seconds"] == pytest.approx(result["runs"]["hand (ResNet-20)"][0]["seconds"])
    # the params objective picks the largest student under the budget among the trials it scored
    board = pd.read_csv(tmp_path / "runs" / "search-params" / "leaderboard.csv")
    assert summary["autokd (params)"]["params"] == board["params"].max()
    assert "vs best other" in capsys.readouterr().out

    space = load_space("cifar_resnet", 32)
    specs = bench_search_quality.random_specs(5, 10_000_000, seed=3)
    assert len(set(specs)) == 5 and all(count_macs(space.build(s, 10), 32) <= 10_000_000 for s in specs)
    assert specs == bench_search_quality.random_specs(5, 10_000_000, seed=3)


def test_end_to_end_training_benchmark_compares_every_path_with_timm(tmp_path, monkeypatch, capsys):
    from benchmarks.training import bench_train_e2e

    if not bench_train_e2e.CIFAR.is_file():
        pytest.skip(f"no CIFAR-10 zip at {bench_train_e2e.CIFAR}")
    monkeypatch.setattr("autokd.train.trainer.CACHE_ROOT", tmp_path / "cache")
    out = tmp_path / "e2e.json"
    bench_train_e2e.main(["--small", "--images", "96", "--batch-size", "16", "--k", "2", "--threads", "1",
                          "--json", str(out)])
    rows = {r["path"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) >= {"pipeline timm", "pipeline autokd standard", "pipeline autokd tensor", "timm live",
                         "autokd standard live", "autokd tensor cache (warm)", "2 together tensor live"}
    assert all(r["images_per_second"] > 0 for r in rows.values())
    assert rows["timm live"]["ratio_to_timm"] == 1.0 and rows["pipeline timm"]["ratio_to_timm"] == 1.0
    live = rows["autokd standard live"]
    assert live["ratio_to_timm"] == pytest.approx(live["images_per_second"] / rows["timm live"]["images_per_second"])
    k2 = rows["2 together tensor live"]
    assert k2["ratio_to_k_singles"] == pytest.approx(
        k2["images_per_second"] / (2 * rows["autokd tensor live"]["images_per_second"]))
    assert "End-to-end KD training" in capsys.readouterr().out


def test_ground_truth_groups_students_of_one_space_kind_and_seed():
    from benchmarks.ranking import build_ground_truth

    cnn = ['{"genes": {"depths": [1, 1, 1], "shortcut": "A", "widths": [8, 8, 8]}, "space": "cifar_resnet"}',
           '{"genes": {"depths": [2, 1, 1], "shortcut": "A", "widths": [8, 8, 8]}, "space": "cifar_resnet"}',
           '{"genes": {"depths": [3, 1, 1], "shortcut": "A", "widths": [8, 8, 8]}, "space": "cifar_resnet"}']
    vit = '{"genes": {"depth": 2, "embed_dim": 64, "mlp_ratio": 2.0, "num_heads": 2, "patch_size": 4}, "space": "vit"}'
    jobs = [(cnn[0], "kd", 0), (vit, "kd", 0), (cnn[1], "kd", 0), (cnn[0], "kd", 1), (cnn[2], "kd", 0)]
    groups = build_ground_truth.groups_of(jobs, together=2)
    assert groups == [[jobs[0], jobs[2]], [jobs[1]], [jobs[3]], [jobs[4]]]
    assert build_ground_truth.groups_of(jobs, together=1) == [[job] for job in jobs]
    assert build_ground_truth.groups_of(jobs, together=5) == [[jobs[0], jobs[2], jobs[4]], [jobs[1]], [jobs[3]]]
