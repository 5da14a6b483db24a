"""NNI 3.0's Random and RegularizedEvolution on NAS-Bench-201 (benchmarks/search/nni_nb201.py); skipped without nni."""

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks.*
from autokd.spaces.nb201 import parse_cell  # noqa: E402
from benchmarks.search.nni_nb201 import cell_from_sample, nni_search  # noqa: E402


def test_cell_from_sample_maps_nni_labels_and_ops():
    sample = {"cell/0_1": "conv_3x3", "cell/0_2": "none", "cell/1_2": "skip_connect",
              "cell/0_3": "avg_pool_3x3", "cell/1_3": "conv_1x1", "cell/2_3": "conv_3x3"}
    assert cell_from_sample(sample) == ("|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                                        "|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    with pytest.raises(ValueError):
        cell_from_sample({"0_1": "none"})


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_nni_search_returns_the_best_cell_it_evaluated(strategy):
    pytest.importorskip("nni")
    seen: dict[str, float] = {}

    def value(cell: str) -> float:
        seen[cell] = random.Random(cell).random()  # seeded by the cell: the same cell always scores the same
        return seen[cell]

    best, distinct = nni_search(value, strategy, trials=20, seed=0)
    assert parse_cell(best)
    assert distinct == len(seen) == 20
    assert seen[best] == max(seen.values())
    assert nni_search(value, strategy, trials=20, seed=0) == (best, distinct)  # seeded: the same run again
