"""Faults inside a search: a failing candidate, a duplicate proposed mid-write, a surplus trial, a killed trial's
architecture, a search that completes nothing."""

import optuna
import pytest
from optuna.trial import TrialState

from autokd.cli import main
from autokd.search import SearchConfig, prepare, run_search
from autokd.search.controller import load_or_create_study, make_objective
from autokd.search.evaluate import CandidateEvaluator
from autokd.search.samplers import BudgetedRandomSampler

TINY = dict(teacher="resnet20_cifar", budget="25M", spaces=("cifar_resnet",), population_size=4, tournament_size=2,
            batch_size=4, objective="params", sampler_seed=0)
ARGV = ["--teacher", "resnet20_cifar", "--budget", "25M", "--space", "cifar_resnet", "--objective", "params",
        "--batch-size", "4", "--population", "4", "--tournament", "2", "--trials", "4", "--quiet"]


@pytest.fixture
def flaky(monkeypatch):
    """Make every third candidate raise while being scored; returns the specs that failed."""
    real, calls, failed = CandidateEvaluator.score, [], []

    def score(self, spec):
        calls.append(spec)
        if len(calls) % 3 == 0:
            failed.append(spec)
            raise RuntimeError(f"boom #{len(calls)}")
        return real(self, spec)

    monkeypatch.setattr(CandidateEvaluator, "score", score)
    return failed


def test_a_failing_candidate_is_recorded_and_the_search_goes_on(tmp_path, flaky):
    result = run_search(SearchConfig(**TINY, trials=8, storage=f"sqlite:///{tmp_path}/s.db"), progress=False)
    trials = result.study.trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(result.study.get_trials(states=(TrialState.COMPLETE,))) == 8
    assert len(failed) == len(flaky) >= 3
    assert [t.user_attrs["error"] for t in failed] == [f"RuntimeError: boom #{3 * (i + 1)}" for i in range(len(failed))]
    # a candidate that failed by its own error is not proposed again
    assert [t.user_attrs["spec"] for t in failed] == [s.as_dict() for s in flaky]
    complete_specs = [t.user_attrs["spec"] for t in trials if t.state == TrialState.COMPLETE]
    assert not [s for s in flaky if s.as_dict() in complete_specs]


@pytest.mark.parametrize("command", ["search", "run"])
def test_a_search_that_completes_nothing_gives_one_line(tmp_path, monkeypatch, capsys, command, weights):
    def broken(self, spec):
        raise RuntimeError("no scoring today")

    monkeypatch.setattr(CandidateEvaluator, "score", broken)
    extra = ["--teacher-weights", str(weights), "--epochs", "1"] if command == "run" else []
    assert main([command, *ARGV, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("autokd: error: the search finished no trial (every candidate failed, the last with "
                       "RuntimeError: no scoring today): give a longer --timeout, or fix the cause and run the same "
                       "command again")
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out" / "leaderboard.csv").exists()


@pytest.fixture
def ctx_and_study(tmp_path):
    ctx = prepare(SearchConfig(**TINY, trials=2))
    return ctx, load_or_create_study(ctx, f"sqlite:///{tmp_path}/s.db")


def test_a_duplicate_proposed_while_another_worker_writes_is_skipped(ctx_and_study):
    ctx, study = ctx_and_study
    spec = ctx.spaces["cifar_resnet"].smallest()
    for _ in range(2):  # two workers propose the same spec at the same moment
        study.enqueue_trial(ctx.codec.encode(spec), skip_if_exists=False)
    first = study.ask()  # worker A: its spec written, still scoring
    ctx.codec.suggest(first)
    first.set_user_attr("spec", spec.as_dict())
    study.optimize(make_objective(ctx), n_trials=1)  # worker B
    second = study.trials[1]
    assert second.state == TrialState.PRUNED and second.user_attrs["skipped"] == "duplicate of trial 0"
    assert "macs" not in second.user_attrs  # skipped before any work
    study.tell(first, 1.0)


def test_a_trial_beyond_the_target_is_skipped(ctx_and_study):
    ctx, study = ctx_and_study  # target: 2 complete trials
    study.optimize(make_objective(ctx), n_trials=1)
    running = study.ask()  # another worker's trial, not finished yet: with the one complete they make 2
    study.optimize(make_objective(ctx), n_trials=1)
    surplus = study.trials[-1]
    assert surplus.state == TrialState.PRUNED and surplus.user_attrs["skipped"] == "target reached"
    assert running.number < surplus.number


def test_a_killed_trials_architecture_is_not_blacklisted(ctx_and_study):
    ctx, study = ctx_and_study
    space = ctx.spaces["cifar_resnet"]
    specs = [space.smallest(), *[s for s in space.seeds() if s != space.smallest()][:3]]
    dists = ctx.codec.distributions()

    def add(spec, state, **attrs):
        params = ctx.codec.encode(spec)
        study.add_trial(optuna.trial.create_trial(
            state=state, params=params, distributions={k: dists[k] for k in params},
            user_attrs={"spec": spec.as_dict(), **attrs}, value=1.0 if state == TrialState.COMPLETE else None))

    add(specs[0], TrialState.FAIL)  # killed with its worker: retried, so free
    add(specs[1], TrialState.FAIL, error="RuntimeError: boom")  # failed by its own error: would fail again
    add(specs[2], TrialState.PRUNED, skipped="duplicate of trial 0")
    add(specs[3], TrialState.COMPLETE)
    known = BudgetedRandomSampler(ctx.codec, ctx.evaluator.fits).known_specs(study)
    assert known == {specs[1], specs[3]}
