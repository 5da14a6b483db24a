"""The leaderboard lists distinct architectures: trials that differ only in per-layer choices inside one macro
configuration fold into their best, with a count; `--all-trials` lists every trial."""

import pandas as pd
import pytest
import yaml

from autokd.cli import main
from autokd.report import leaderboard, write_top_specs
from autokd.spaces import ArchSpec, load_space


def vit(depth: int, heads: tuple[int, ...], ratio: float = 4.0) -> ArchSpec:
    return ArchSpec.make("vit", depth=depth, embed_dim=192, head_dim=64, heads=heads, mlp_ratio=(ratio,) * depth,
                         patch_size=8, pool="token")


def study_of(specs_and_scores):
    import optuna

    study = optuna.create_study(direction="maximize")
    for spec, score in specs_and_scores:
        study.add_trial(optuna.trial.create_trial(
            value=score, user_attrs={"spec": spec.as_dict(), "macs": 1000, "params": 100, "budget_slack": 0.5,
                                     "score": score}))
    return study


@pytest.fixture
def five_trials_of_two_configs():
    depth4 = [vit(4, (2, 3, 4, 5)), vit(4, (3, 3, 3, 3)), vit(4, (2, 2, 2, 7), ratio=2.0)]
    depth5 = [vit(5, (2,) * 5), vit(5, (4,) * 5)]
    return study_of([(depth4[0], 0.9), (depth4[1], 0.5), (depth4[2], 0.1), (depth5[0], 0.8), (depth5[1], 0.7)])


def test_five_trials_of_two_macro_configurations_are_two_rows_with_counts_3_and_2(five_trials_of_two_configs,
                                                                                    tmp_path):
    space = load_space("vit", 32)
    board = leaderboard(five_trials_of_two_configs, "score", fold=space.macro_key)
    assert list(board["rank"]) == [1, 2] and list(board["trial"]) == [0, 3]  # each configuration's best trial
    assert list(board["variants"]) == [3, 2] and list(board["score"]) == [0.9, 0.8]
    assert list(board.columns[:5]) == ["rank", "trial", "space", "arch", "variants"]
    every = leaderboard(five_trials_of_two_configs, "score")
    assert len(every) == 5 and "variants" not in every.columns and list(every["trial"]) == [0, 3, 4, 1, 2]
    assert list(leaderboard(five_trials_of_two_configs, "score", 1, fold=space.macro_key)["trial"]) == [0]

    paths = write_top_specs(board, tmp_path / "top", {"objective": "score"})
    docs = [yaml.safe_load(p.read_text()) for p in paths]
    assert [d["variants"] for d in docs] == [3, 2] and [d["trial"] for d in docs] == [0, 3]
    assert docs[0]["scores"] == {"score": 0.9}  # the count is no score


def test_a_spec_scored_twice_counts_once():
    study = study_of([(vit(4, (2, 3, 4, 5)), 0.9), (vit(4, (2, 3, 4, 5)), 0.9), (vit(4, (3,) * 4), 0.2)])
    board = leaderboard(study, "score", fold=load_space("vit", 32).macro_key)
    assert list(board["variants"]) == [2] and list(board["trial"]) == [0]


def test_the_macro_key_folds_per_layer_lists_only():
    space = load_space("vit", 32)
    assert space.per_layer_genes() == ("heads", "mlp_ratio")
    assert space.macro_key(vit(4, (2, 3, 4, 5))) == space.macro_key(vit(4, (7,) * 4, ratio=2.0))
    assert space.macro_key(vit(4, (2,) * 4)) != space.macro_key(vit(5, (2,) * 5))  # depth is macro
    assert space.macro_key(vit(4, (2,) * 4)) != space.macro_key(vit(4, (2,) * 4).replace(pool="avg"))
    # per-stage lists (length None) are macro: every CIFAR ResNet is its own configuration
    cnn = load_space("cifar_resnet", 32)
    assert cnn.per_layer_genes() == ()
    a = ArchSpec.make("cifar_resnet", depths=(1, 2, 3), widths=(8, 16, 32), shortcut="A")
    assert cnn.macro_key(a) == a and cnn.macro_key(a.replace(depths=(1, 2, 4))) != cnn.macro_key(a)
    # a NAS-Bench-201 cell is one list of 6 edges with no length gene: each cell stays its own row
    cells = load_space("nb201", 32)
    x, y = cells.sample(__import__("random").Random(0)), cells.sample(__import__("random").Random(1))
    assert x != y and cells.macro_key(x) != cells.macro_key(y) and cells.macro_key(x) == x


def test_the_arch_label_says_what_per_layer_values_are():
    spec = vit(4, (2, 3, 7, 5))
    load_space("vit", 32)
    assert spec.short() == ("vit depth=4 embed_dim=192 head_dim=64 patch_size=8 pool=token heads/layer=2-7 "
                            "mlp_ratio/layer=4.0")
    cnn = ArchSpec.make("cifar_resnet", depths=(1, 2, 3), widths=(8, 16, 32), shortcut="A")
    assert cnn.short() == "cifar_resnet depths=[1,2,3] shortcut=A widths=[8,16,32]"


SEARCH = ["search", "--teacher", "resnet20_cifar", "--space", "vit", "--budget", "40M", "--objective", "params",
          "--batch-size", "8", "--population", "6", "--tournament", "2", "--trials", "24", "--top-k", "5", "--quiet"]


def test_search_lists_distinct_architectures_and_all_trials_lists_every_trial(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SEARCH, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    board = pd.read_csv(out / "leaderboard.csv")
    space = load_space("vit", 32)
    specs = [ArchSpec.from_dict(yaml.safe_load((out / "top" / f"{r}.yaml").read_text())["spec"])
             for r in board["rank"]]
    keys = [space.macro_key(s) for s in specs]
    assert len(set(keys)) == len(keys) == len(board)  # distinct macro configurations
    assert board["variants"].sum() <= 24 and (board["variants"] >= 1).all()
    assert "variants" in printed and "heads/layer=" in printed and "heads=" not in printed

    assert main([*SEARCH, "--out", str(out), "--all-trials"]) == 0  # the same study: no new trial
    every = pd.read_csv(out / "leaderboard.csv")
    assert len(every) == 5 and "variants" not in every.columns
    assert list(every["params"]) == sorted(every["params"], reverse=True)

