"""The NAS-Bench-201 space: the benchmark's own networks, named by their cell strings, searchable end to end."""

import random

import pandas as pd
import pytest
import torch
import yaml

from autokd.cli import main
from autokd.cost import count_macs, count_params
from autokd.errors import AutokdError
from autokd.spaces import load_space
from autokd.spaces.nb201 import OPS, cell_string, parse_cell, spec_from_cell

BEST_C10 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def space():
    return load_space("nb201", 32)


@pytest.mark.parametrize("op, params", [("none", 73_306), ("nor_conv_3x3", 1_531_546), ("nor_conv_1x1", 241_306)])
def test_parameter_counts_are_the_benchmarks(space, op, params):
    # the benchmark's published range with 10 classes: 0.073306 M (all none) to 1.531546 M (all 3x3)
    spec = spec_from_cell(cell_string((op,) * 6))
    assert count_params(space.build(spec, 10)) == params


def test_cell_string_round_trip_and_label(space):
    rng = random.Random(0)
    for _ in range(50):
        spec = space.sample(rng)
        text = cell_string(spec)
        assert spec_from_cell(text) == spec and parse_cell(text) == spec["edges"]
        assert spec.short() == f"nb201 {text}"
    assert parse_cell(BEST_C10)[3] == "skip_connect"  # edge 3 is node 3 from node 0


@pytest.mark.parametrize("text", ["", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                                  "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "|none~0|+|none~0|"])
def test_bad_cell_strings_are_refused(text):
    with pytest.raises(AutokdError, match="cannot read NAS-Bench-201 cell"):
        parse_cell(text)


def test_edges_wire_the_cell_as_the_benchmark_does(space):
    # only the edge 0 -> 3 is a conv; every other edge is none: the cell computes conv(x), nodes 1, 2 are zero
    ops = ["none"] * 6
    ops[3] = "nor_conv_1x1"
    model = space.build(spec_from_cell(cell_string(tuple(ops))), 10).eval()
    cell = model.cells[0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(cell(x), cell.edges[3](x))
    all_none = space.build(spec_from_cell(cell_string(("none",) * 6)), 10).eval()
    with torch.no_grad():
        assert torch.count_nonzero(all_none.cells[0](x)) == 0


def test_closed_form_macs_match_fvcore_on_every_op_mix(space):
    rng = random.Random(1)
    cells = [(op,) * 6 for op in OPS] + [space.sample(rng)["edges"] for _ in range(4)]
    for ops in cells:
        spec = spec_from_cell(cell_string(ops))
        assert space.estimate_macs(spec, 10) == count_macs(space.build(spec, 10), 32)


def test_the_search_costs_nb201_candidates_by_the_closed_form_without_tracing(space, monkeypatch):
    from autokd import cost as cost_module
    from autokd.cost import Budget, measure_cost
    from autokd.proxies import ScoringBatch, TeacherReference
    from autokd.search.evaluate import CandidateEvaluator

    labels = torch.arange(4) % 10
    evaluator = CandidateEvaluator({"nb201": space}, Budget(macs=10**9), 10,
                                   [ScoringBatch(torch.randn(4, 3, 32, 32), labels)],
                                   [TeacherReference.without_teacher(labels)], ["params"])
    specs = [spec_from_cell(cell_string(space.sample(random.Random(i))["edges"])) for i in range(3)]
    traced = [measure_cost(evaluator.build(s), 32) for s in specs]
    monkeypatch.setattr(cost_module, "count_macs", lambda *a, **k: pytest.fail("traced an nb201 candidate"))
    assert [evaluator.cost(s) for s in specs] == traced


def test_ground_truth_cells_parse(shared_ground_truth):
    gt = pd.read_csv(shared_ground_truth / "nb201_200ep.csv")
    assert len(gt) == 15625 and gt["arch"].map(parse_cell).nunique() == 15625


def test_search_nb201_end_to_end_names_students_by_cell(capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["search", "--teacher", "resnet20_cifar", "--space", "nb201", "--budget", "60M", "--trials", "6",
                 "--reference-size", "8",
                 "--population", "4", "--tournament", "2", "--batch-size", "16", "--top-k", "3", "--quiet",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) >= 3 and (board["macs"] <= 60e6).all()
    for arch in board["arch"]:
        text = arch.removeprefix("nb201 ")
        assert cell_string(parse_cell(text)) == text
    assert board["arch"].iloc[0].removeprefix("nb201 ") in printed.replace("\n", "")
    top = yaml.safe_load((out / "top" / "1.yaml").read_text())
    assert top["arch"] == board["arch"].iloc[0] and top["spec"]["space"] == "nb201"
    assert board["arch"].iloc[0].removeprefix("nb201 ") in (out / "report.html").read_text()


def test_image_sizes_the_network_cannot_halve_are_refused():
    with pytest.raises(AutokdError, match="divisible by 4"):
        load_space("nb201", 30)
    assert load_space("nb201", 64).suits() and not load_space("nb201", 224).suits()
