import numpy as np
import pandas as pd
import pytest

from autokd.errors import AutokdError
from autokd.recipes.kb import COLUMNS, append_rows, make_row, pair_columns, read_kb, recipe_columns
from autokd.recipes.loto import (
    expected_best_of_random,
    leave_one_task_out,
    loto_summary,
    paired_difference_ci,
    recipe_model,
    seed_agreement,
)
from autokd.recipes.meta_model import MetaModel
from autokd.recipes.recommend import candidate_grid, grid_frame, recommend


def planted_table(tasks: int = 24, seed: int = 0) -> pd.DataFrame:
    """Recipe 'sharp' gains 2 points exactly when the feature 'noise' is high, else -1; 'safe' always gains 0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        noise, size = rng.uniform(0, 1), rng.uniform(0, 1)  # size: a feature that does not matter
        for recipe, lr in (("sharp", 0.1), ("safe", 0.05)):
            for s in range(2):
                gain = (2.0 if noise > 0.5 else -1.0) if recipe == "sharp" else 0.5
                rows.append({"dataset": f"d{t}", "noise": noise, "size": size, "method": recipe, "lr": lr,
                             "acc_gain": gain + rng.normal(0, 0.1), "seed": s})
    return pd.DataFrame(rows)


def test_meta_model_recovers_a_planted_rule_on_any_table():
    table = planted_table()
    model = MetaModel(["noise", "size"], ["method", "lr"], "acc_gain", trees=100).fit(table)
    candidates = pd.DataFrame({"method": ["safe", "sharp"], "lr": [0.05, 0.1]})
    for noise, winner in ((0.9, "sharp"), (0.75, "sharp"), (0.1, "safe"), (0.3, "safe")):
        ranked = model.rank({"noise": noise, "size": 0.5}, candidates)
        assert ranked["method"].tolist()[0] == winner and ranked["rank"].tolist() == [1, 2]
    high = model.rank({"noise": 0.9, "size": 0.5}, candidates).set_index("method")
    assert high.loc["sharp", "mean"] == pytest.approx(2.0, abs=0.4)
    assert high.loc["safe", "mean"] == pytest.approx(0.5, abs=0.3)
    assert (high["low"] <= high["mean"]).all() and (high["mean"] <= high["high"]).all()
    near = model.nearest_tasks({"noise": 0.9, "size": 0.5}, table, "dataset", k=3)
    assert list(near.columns) == ["dataset", "distance"] and near["distance"].is_monotonic_increasing
    by_task = table.groupby("dataset")[["noise", "size"]].first()
    z = (by_task - by_task.mean()) / by_task.std(ddof=0)
    point = (pd.Series({"noise": 0.9, "size": 0.5}) - by_task.mean()) / by_task.std(ddof=0)
    assert near["dataset"][0] == ((z - point) ** 2).sum(axis=1).idxmin()


def test_nearest_tasks_leave_out_a_feature_the_tasks_share():
    table = planted_table()  # every KB task has the same student size, up to its classifier head
    table = table.assign(student_macs=12e6 + table["dataset"].str[1:].astype(int))
    model = MetaModel(["noise", "size", "student_macs"], ["method", "lr"], "acc_gain", trees=10).fit(table)
    query = {"noise": 0.9, "size": 0.5}
    same = model.nearest_tasks({**query, "student_macs": 12e6}, table, "dataset", k=3)
    other = model.nearest_tasks({**query, "student_macs": 24e6}, table, "dataset", k=3)  # a bigger student
    pd.testing.assert_frame_equal(same, other)  # the shared column tells no task apart: distances unchanged
    assert other["distance"].max() < 5


def test_shrink_pulls_a_prediction_to_the_pipelines_average_over_tasks():
    table = pd.DataFrame({"task": ["A", "A", "B", "A", "B"], "f": [0.0, 0.0, 1.0, 0.0, 1.0],
                          "method": ["r1", "r1", "r1", "r2", "r2"], "gain": [1.0, 3.0, 6.0, 0.0, 2.0]})
    candidates = pd.DataFrame({"method": ["r1", "r2", "r3"]})
    plain = MetaModel(["f"], ["method"], "gain", trees=10, seed=0).fit(table).rank({"f": 0.0}, candidates)
    model = MetaModel(["f"], ["method"], "gain", trees=10, seed=0, shrink=1.0, task_column="task").fit(table)
    ranked = model.rank({"f": 0.0}, candidates).set_index("method")
    assert ranked.loc["r1", "mean"] == pytest.approx((2.0 + 6.0) / 2)  # each task once: A's two rows average to 2
    assert ranked.loc["r1", "low"] == ranked.loc["r1", "high"] == pytest.approx(4.0)
    assert ranked.loc["r2", "mean"] == pytest.approx(1.0)
    # r3 was never run: the forest's prediction, unchanged
    assert ranked.loc["r3", "mean"] == pytest.approx(plain.set_index("method").loc["r3", "mean"])
    half = MetaModel(["f"], ["method"], "gain", trees=10, seed=0, shrink=0.5, task_column="task").fit(table)
    both = half.rank({"f": 0.0}, candidates).set_index("method")
    assert both.loc["r1", "mean"] == pytest.approx((plain.set_index("method").loc["r1", "mean"] + 4.0) / 2)


def test_the_shrink_is_chosen_on_the_training_tasks_alone():
    table = planted_table(tasks=12).rename(columns={"dataset": "task", "acc_gain": "gain"})
    kwargs = dict(unit_columns=("task",), recipe_column="method", task_columns=["noise", "size"],
                  pipeline_columns=["method", "lr"], trees=50)
    # the winner depends on the task: the recipes' average (shrink 1) picks 'sharp' or 'safe' everywhere
    assert recipe_model(table, **kwargs).shrink == 0.0
    # a recipe best on average, task features that are noise: the choice is the lowest inner regret
    rng = np.random.default_rng(1)
    features = {f"t{t}": rng.uniform(size=2) for t in range(8)}
    flat = pd.DataFrame([{"task": t, "noise": f[0], "size": f[1], "method": m, "lr": 0.1,
                          "gain": (1.0 if m == "good" else 0.0) + rng.normal(0, 1.0)}
                         for t, f in features.items() for m in ("good", "b", "c", "d")])
    regrets = [leave_one_task_out(flat, top=1, default=None, task_column="task", outcome="gain",
                                  make_model=lambda _t, s=s: MetaModel(["noise", "size"], ["method", "lr"], "gain",
                                                                       trees=50, shrink=s, task_column="task"),
                                  **{k: v for k, v in kwargs.items() if k != "trees"})["top1_regret"].mean()
               for s in (0.0, 0.5, 1.0)]
    assert recipe_model(flat, **kwargs).shrink == (0.0, 0.5, 1.0)[int(np.argmin(regrets))]
    assert recipe_model(flat, shrinks=(1.0,), **kwargs).shrink == 1.0


def test_leave_one_task_out_regret_matches_a_hand_computation():
    gains = {"A": {"r1": 3, "r2": 1, "r3": 2}, "B": {"r1": 2, "r2": 0, "r3": 4}, "C": {"r1": 1, "r2": 5, "r3": 0}}
    table = pd.DataFrame([{"task": t, "f": 1.0, "recipe_id": r, "gain": g, "pair": "p"}
                          for t, by in gains.items() for r, g in by.items()])
    frame = leave_one_task_out(
        table, top=2, unit_columns=("task", "pair"), task_columns=["f"], pipeline_columns=["recipe_id"],
        default=lambda unit: "r3",
        make_model=lambda _train: MetaModel(["f"], ["recipe_id"], "gain", trees=5, bootstrap=False)).set_index("task")
    # held out A: trained on B, C -> means r1 1.5, r2 2.5, r3 2.0 -> ranking r2, r3, r1; fixed = r2
    # held out B: trained on A, C -> r1 2.0, r2 3.0, r3 1.0 -> r2, r1, r3; fixed = r2
    # held out C: trained on A, B -> r1 2.5, r2 0.5, r3 3.0 -> r3, r1, r2; fixed = r3
    assert frame["top1_recipe"].to_dict() == {"A": "r2", "B": "r2", "C": "r3"}
    assert frame["top1_gain"].tolist() == [1, 0, 0]
    assert frame["top2_gain"].tolist() == [2, 2, 1]
    assert frame["best_gain"].tolist() == [3, 4, 5]
    assert frame["fixed_gain"].tolist() == [1, 0, 0]
    assert frame["default_gain"].tolist() == [2, 4, 0]
    assert frame["top1_regret"].tolist() == [2, 4, 5]
    assert frame["top2_regret"].tolist() == [1, 2, 4]
    assert frame["default_regret"].tolist() == [1, 0, 5]
    # chance: a random recipe gains the unit's mean; the best of 2 random of 3 misses only the best pair's worst
    assert frame["random1_gain"].tolist() == pytest.approx([2, 2, 2])
    assert frame["random2_gain"].tolist() == pytest.approx([(3 + 3 + 2) / 3, (4 + 4 + 2) / 3, (5 + 5 + 1) / 3])
    summary = loto_summary(frame.reset_index())
    assert summary["top1_regret"] == pytest.approx(11 / 3) and summary["top2_regret"] == pytest.approx(7 / 3)
    assert summary["default_regret"] == pytest.approx(2.0) and summary["units"] == 3
    assert summary["top1_at_least_default"] == pytest.approx(1 / 3)


def test_expected_best_of_random_recipes_is_exact():
    import itertools

    gains = [0.5, -1.0, 2.0, 0.0, 1.5]
    for k in (1, 2, 3, 5):
        brute = np.mean([max(c) for c in itertools.combinations(gains, k)])
        assert expected_best_of_random(gains, k) == pytest.approx(brute)


def test_paired_difference_of_regrets_over_units():
    frame = pd.DataFrame({"top1_regret": [0.0, 1.0, 2.0, np.nan], "fixed_regret": [1.0, 1.0, 4.0, 3.0]})
    ci = paired_difference_ci(frame, "top1_regret", "fixed_regret", resamples=500)
    assert ci["mean"] == pytest.approx(1.0) and ci["units"] == 3  # differences 1, 0, 2; the nan unit left out
    assert 0.0 <= ci["low"] <= 1.0 <= ci["high"] <= 2.0


def test_seed_agreement_by_hand():
    gains = {0: {"r1": 3.0, "r2": 2.0, "r3": 1.0}, 1: {"r1": 1.0, "r2": 2.0, "r3": 3.0}}
    table = pd.DataFrame([{"task": "A", "pair": "p", "recipe_id": r, "seed": s, "gain": g}
                          for s, by in gains.items() for r, g in by.items()])
    table = pd.concat([table, table.assign(task="B", seed=0)])  # one seed only: no agreement to measure
    frame = seed_agreement(table, unit_columns=("task", "pair"))
    assert frame["task"].tolist() == ["A"]
    row = frame.iloc[0]
    assert row["kendall_tau"] == pytest.approx(-1.0)
    # seed 0 picks r1, which gains 1 of seed 1's best 3; seed 1 picks r3, 1 of seed 0's best 3
    assert row["cross_seed_regret"] == pytest.approx(2.0)
    assert row["seed_sd"] == pytest.approx(np.std([2.0, 0.0, -2.0], ddof=1) / np.sqrt(2))


def kb_rows(tasks=("t1", "t2", "t3"), student_family="cifar_resnet"):
    grid = candidate_grid("cifar_resnet", student_family)
    rows = []
    for i, task in enumerate(tasks):
        features = {"num_classes": 10, "train_size": 1000 * (i + 1), "resolution": 32, "class_balance": 1.0,
                    "teacher_acc": 0.5 + 0.1 * i, "teacher_entropy": 1.0, "teacher_ece": 0.05, "probe_acc": 0.6}
        pair = pair_columns("cifar_resnet", student_family, 40_000_000, 5_000_000, 270_000, 50_000)
        for j, (rid, recipe) in enumerate(list(grid.items())[:6]):
            rows.append(make_row(task, features, pair, recipe_columns(recipe, rid, rid.split(":")[0]),
                                 50.0 + j, 49.0, seed=0))
    return rows


def test_kb_appends_atomically_skips_known_keys_and_validates(tmp_path):
    path = tmp_path / "kb.csv"
    assert append_rows(path, kb_rows()) == 18
    assert append_rows(path, kb_rows()) == 0  # the same runs again: keys already there
    frame = read_kb(path)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 18
    assert frame["gain"].eq(frame["student_acc"] - 49.0).all() and set(frame["source"]) == {"run"}
    assert not list(tmp_path.glob(".kb.csv.tmp*"))


@pytest.mark.parametrize("content, message", [
    ("a,b\n1,2\n", r"lacks column\(s\) num_classes"),
    ("\x00\x01\x02PK\x03\x04 binary", "not an autokd KB|not a CSV"),
    (None, "no knowledge base at"),
])
def test_bad_kb_is_one_error_line_and_auto_names_the_fallback(tmp_path, content, message):
    from autokd.recipes.recommend import auto_recipe

    path = tmp_path / "kb.csv"
    if content is not None:
        path.write_text(content)
    profile = {**kb_rows()[0]}
    with pytest.raises(AutokdError, match=message) as err:
        recommend(str(path), profile, starter=False)
    assert "\n" not in str(err.value) and "falling back" not in str(err.value)  # an error, not a fallback
    recipe, note = auto_recipe(str(path), profile, starter=False)  # --recipe auto falls back, and says so
    assert recipe.loss == "dist" and note.endswith("falling back to the default rule (dist for a cnn->cnn pair)")
    if content is None:  # no KB of the user's own: the starter KB answers
        assert len(recommend(str(path), profile).ranked) > 0


def test_kb_without_rows_for_this_pair_kind_names_the_fallback(tmp_path):
    from autokd.recipes.recommend import auto_recipe

    path = tmp_path / "kb.csv"
    append_rows(path, kb_rows())
    profile = {**kb_rows(student_family="vit")[0]}
    with pytest.raises(AutokdError, match=r"no cnn->vit runs .* \(it holds cnn->cnn\)") as err:
        recommend(str(path), profile, starter=False)
    assert "\n" not in str(err.value)
    assert "kd_adamw for a cnn->vit pair" in auto_recipe(str(path), profile, starter=False)[1]


def test_grid_has_every_kd_preset_with_its_knobs():
    grid = candidate_grid()
    presets = {rid.split(":")[0] for rid in grid}
    assert presets == {"kd", "dkd", "dist", "nkd", "kd_ls", "fitnet", "kd_adamw"}  # minilm needs two ViTs
    assert "minilm" in {r.split(":")[0] for r in candidate_grid("vit", "vit")}
    assert grid["kd:T=2"].loss_params["temperature"] == 2.0 and grid["dist:T=4"].loss_params["tau"] == 4.0
    assert grid["dkd:beta=2"].loss_params["beta"] == 2.0 and grid["dkd:beta=2"].loss_params["alpha"] == 1.0
    assert grid["kd:lr=0.1"].lr == pytest.approx(0.1)
    assert len(grid) == 7 * 5 and grid_frame(grid)["recipe_id"].is_unique


def test_teacher_meta_features_match_a_hand_computation():
    import math

    import torch
    from torch import nn

    from autokd.data import synthetic_dataset
    from autokd.data.meta import teacher_meta_features

    class Fixed(nn.Module):
        """Pooled features = the image's mean colour; a classifier that always says class 0 with logit 10."""

        def __init__(self):
            super().__init__()
            self.head = nn.Linear(3, 4)
            nn.init.zeros_(self.head.weight)
            self.head.bias.data = torch.tensor([10.0, 0.0, 0.0, 0.0])

        def forward_features(self, x):
            return x

        def forward_head(self, x, pre_logits=False):
            x = x.mean((2, 3))
            return x if pre_logits else self.head(x)

        def get_classifier(self):
            return self.head

    data = synthetic_dataset(num_classes=4, train_size=400, test_size=8, img_size=16)
    to_tensor = lambda image: torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    features = teacher_meta_features(Fixed(), to_tensor, data, sample=40)
    p0 = math.exp(10) / (math.exp(10) + 3)
    assert features["teacher_acc"] == pytest.approx(0.25)  # a stratified sample: a quarter is class 0
    assert features["teacher_ece"] == pytest.approx(p0 - 0.25, abs=1e-5)  # one bin: confidence p0, accuracy 1/4
    assert features["teacher_entropy"] == pytest.approx(-p0 * math.log(p0) - 3 * (1 - p0) / 3 * math.log((1 - p0) / 3),
                                                         rel=1e-4)
    assert 0.0 <= features["probe_acc"] <= 1.0


def test_loto_benchmark_reports_paired_intervals_and_the_seed_noise(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
    from benchmarks.recipes import bench_recommend

    rows = kb_rows()
    again = [{**r, "seed": 1, "student_acc": 105.0 - r["student_acc"]} for r in rows if r["task"] == "t1"]
    for r in again:  # seed 1 of t1 reverses the recipes' order: gains 6..1 instead of 1..6
        r["gain"] = r["student_acc"] - r["no_kd_acc"]
        r["key"] = r["key"].replace("|0|run", "|1|run")
    path = tmp_path / "kb.csv"
    append_rows(path, rows + again)
    result = bench_recommend.main(["--kb", str(path), "--out", str(tmp_path / "loto"), "--top", "2"])
    assert result["noise"]["units"] == 1 and result["noise"]["kendall_tau"] == pytest.approx(-1.0)
    assert result["noise"]["cross_seed_regret"] == pytest.approx(5.0)  # each seed's best is the other's worst
    ci = result["comparisons"]["fixed - top1 regret"]
    assert ci["units"] == 3 and ci["low"] <= ci["mean"] <= ci["high"]
    assert (tmp_path / "loto.csv").is_file()
    table = (tmp_path / "loto.md").read_text().splitlines()
    assert table[0].startswith("| task | student |") and len(table) == 2 + 3 + 1  # header, 3 units, the mean
    assert table[-1].startswith("| **mean of 3** |")
