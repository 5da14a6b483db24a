"""Rank aggregation against a fixed reference sample, and aggregate objectives in a search."""

import math

import numpy as np
import pytest
from optuna.trial import TrialState

from autokd.errors import AutokdError
from autokd.proxies.aggregate import RankAggregate, aggregate_terms, population_aggregate
from autokd.search import SearchConfig, run_search
from autokd.search.controller import objective_proxies

REFERENCE = [{"a": 1.0, "b": 10.0}, {"a": 2.0, "b": 30.0}, {"a": 3.0, "b": 20.0}, {"a": 4.0, "b": 40.0}]


def test_percentile_counts_the_reference_below_with_half_ties_and_smoothing():
    agg = RankAggregate.fit(["a", "b"], REFERENCE)
    assert agg.percentile("a", 0.5) == pytest.approx(1 / 5)  # none below
    assert agg.percentile("a", 2.5) == pytest.approx(3 / 5)  # 2 below
    assert agg.percentile("a", 3.0) == pytest.approx(3.5 / 5)  # 2 below, 1 tie
    # past the best reference value: 1 + distance in mean top gaps (a: 1; b: 10) / 5, so the order is kept
    assert agg.percentile("a", 4.5) == pytest.approx(1 + 0.5 / 5)
    assert agg.percentile("a", 9.0) == pytest.approx(1 + 5 / 5)
    assert agg.percentile("b", 50.0) == pytest.approx(1 + 1 / 5)
    assert agg({"a": 4.0001, "b": 40.001}) == pytest.approx(0.0, abs=1e-3)
    assert agg({"a": 2.5, "b": 25.0}) == pytest.approx(math.log(3 / 5) + math.log(3 / 5))


def test_a_missing_score_counts_as_the_median_and_distances_are_negated():
    agg = RankAggregate.fit(["a"], REFERENCE)
    assert agg.percentile("a", float("nan")) == 0.5
    dist = RankAggregate.fit(["diswot_relation"], [{"diswot_relation": v} for v in (0.1, 0.2, 0.3)])
    assert dist.percentile("diswot_relation", 0.0) == pytest.approx(1.25)  # the smallest distance ranks best
    assert dist.percentile("diswot_relation", 0.5) == pytest.approx(1 / 4)


def test_a_trial_value_does_not_depend_on_the_other_trials():
    agg = RankAggregate.fit(["a", "b"], REFERENCE)
    first = agg({"a": 2.2, "b": 33.0})
    for other in ({"a": 9.0, "b": 9.0}, {"a": -1.0, "b": 99.0}):
        agg(other)
    assert agg({"a": 2.2, "b": 33.0}) == first


def test_population_aggregate_is_az_nas_log_rank_sum():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0])
    # ascending ranks a [1,2,3], b [3,1,2]; p = (rank - 1 + 0.5 + 1) / 4
    p = lambda r: (r + 0.5) / 4  # noqa: E731
    expected = [math.log(p(1)) + math.log(p(3)), math.log(p(2)) + math.log(p(1)), math.log(p(3)) + math.log(p(2))]
    assert np.allclose(population_aggregate({"a": a, "b": b}), expected)


def test_objective_names():
    assert aggregate_terms("params+zico") == ("params", "zico")
    assert aggregate_terms("aznas")[0] == "az_expressivity"
    assert aggregate_terms("diswot") == ()
    with pytest.raises(AutokdError, match="distinct"):
        aggregate_terms("params+params")
    assert objective_proxies("params+diswot_relation") == ["params", "diswot"]
    with pytest.raises(AutokdError, match="unknown score 'nope'"):
        objective_proxies("params+nope")


def test_search_with_an_aggregate_objective(tmp_path):
    config = SearchConfig(teacher="resnet20_cifar", budget="25M", spaces=("cifar_resnet",), population_size=6,
                          tournament_size=3, batch_size=32, trials=8, objective="params+layers",
                          reference_size=16, storage=f"sqlite:///{tmp_path}/s.db")
    result = run_search(config, progress=False)
    ranking = result.context.ranking
    assert ranking is not None and ranking.terms == ("params", "layers")
    assert all(len(ranking.reference[t]) == 16 for t in ranking.terms)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 8
    for t in complete:
        assert t.value == pytest.approx(ranking({"params": t.user_attrs["params"], "layers": t.user_attrs["layers"]}))
        assert t.user_attrs["params+layers"] == t.value
    assert result.study.user_attrs["autokd"]["reference_size"] == 16


def test_the_default_search_skips_the_teacher_forward_and_ranks_by_its_aggregate(tmp_path, monkeypatch):
    import autokd.search.controller as controller

    calls = []
    monkeypatch.setattr(controller, "teacher_references", lambda *a: calls.append(1))
    config = SearchConfig(teacher="resnet20_cifar", budget="25M", spaces=("cifar_resnet",), population_size=4,
                          tournament_size=2, batch_size=16, trials=5, reference_size=8,
                          storage=f"sqlite:///{tmp_path}/s.db")
    result = run_search(config, progress=False)
    assert calls == []  # params and SynFlow do not read the teacher
    assert result.context.ranking.terms == tuple(config.objective.split("+"))
    for t in result.study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.value == pytest.approx(result.context.objective_value(t.user_attrs))
