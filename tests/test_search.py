import random

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from autokd.cost import Budget, count_macs
from autokd.search import RegularizedEvolutionSampler, SearchConfig, run_search
from autokd.search.codec import SpecCodec
from autokd.spaces import load_space

# A tiny teacher on 32 px synthetic data: the whole search runs in seconds.
TINY = dict(teacher="resnet20_cifar", budget="25M", spaces=("cifar_resnet",), population_size=6,
            tournament_size=3, batch_size=32, objective="diswot")


def config(tmp_path, **kw) -> SearchConfig:
    return SearchConfig(**{**TINY, "storage": f"sqlite:///{tmp_path}/s.db", **kw})


def test_search_end_to_end(tmp_path):
    result = run_search(config(tmp_path, trials=12), out=tmp_path / "out", top_k=5, progress=False)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12
    budget = Budget.parse("25M")
    space = load_space("cifar_resnet", 32)
    for t in complete:
        assert t.user_attrs["macs"] <= budget.macs
        assert t.user_attrs["budget_slack"] >= 0
        assert t.constraints == {"macs_over_budget": pytest.approx(t.user_attrs["macs"] / budget.macs - 1)}
        assert {"diswot", "diswot_relation", "diswot_semantic", "params", "macs"} <= set(t.user_attrs)
    # the recorded MACs are the real fvcore count of the built model
    spec = result.study.trials[0].user_attrs["spec"]
    from autokd.spaces import ArchSpec

    assert count_macs(space.build(ArchSpec.from_dict(spec), 10), 32) == result.study.trials[0].user_attrs["macs"]
    board = result.leaderboard
    assert len(board) == 5
    assert list(board["diswot"]) == sorted(board["diswot"], reverse=True)
    assert board["diswot"].iloc[0] == max(t.value for t in complete)
    out = tmp_path / "out"
    assert (out / "leaderboard.csv").read_text().count("\n") == 6
    assert sorted(p.name for p in (out / "top").iterdir()) == [f"{i}.yaml" for i in range(1, 6)]
    assert "Pareto front" in (out / "report.html").read_text()


def test_resume_adds_trials_without_duplicating(tmp_path):
    first = run_search(config(tmp_path, trials=8), progress=False)
    names = {t.number for t in first.study.trials}
    second = run_search(config(tmp_path, trials=14), progress=False)
    assert second.study.study_name == first.study.study_name
    complete = second.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 14
    assert names <= {t.number for t in second.study.trials}
    specs = [str(t.user_attrs["spec"]) for t in complete]
    assert len(specs) == len(set(specs)), "evolution proposed a duplicate architecture"


def test_resume_with_other_settings_is_refused(tmp_path):
    run_search(config(tmp_path, trials=3, study_name="s"), progress=False)
    from autokd.errors import AutokdError

    with pytest.raises(AutokdError, match="different budget"):
        run_search(config(tmp_path, trials=3, study_name="s", budget="20M"), progress=False)


def test_two_workers_share_one_sqlite_study(tmp_path):
    result = run_search(config(tmp_path, trials=16, workers=2), progress=False)
    trials = result.study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 16
    assert not [t for t in trials if t.state in (TrialState.FAIL, TrialState.RUNNING)]
    assert sorted(t.number for t in trials) == list(range(len(trials)))


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random"])
def test_other_samplers_never_score_over_budget(tmp_path, sampler):
    result = run_search(config(tmp_path, trials=6, sampler=sampler), progress=False)
    for t in result.study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["macs"] <= 25e6
        else:
            assert t.state == TrialState.PRUNED and "diswot" not in t.user_attrs  # over budget or a duplicate


SPACE = load_space("cifar_resnet", 32)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.integers(8_000_000, 120_000_000))
def test_evolution_never_proposes_over_budget(seed, budget):
    # Property: with any population, every proposal (initial or child) fits the budget and is new.
    codec = SpecCodec({"cifar_resnet": SPACE})

    def fits(spec):
        return SPACE.estimate_macs(spec) <= budget

    sampler = RegularizedEvolutionSampler(codec, fits, population_size=5, tournament_size=2, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    rng = random.Random(seed)
    for _ in range(15):
        trial = study.ask()
        spec = codec.suggest(trial)
        assert fits(spec)
        study.tell(trial, rng.random())
    specs = [codec.decode(t.params) for t in study.trials]
    assert len(specs) == len(set(specs))


def test_tournament_picks_the_best():
    codec = SpecCodec({"cifar_resnet": SPACE})
    sampler = RegularizedEvolutionSampler(codec, lambda s: True, population_size=4, tournament_size=4, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    rng = random.Random(0)
    specs = []
    while len(specs) < 4:
        spec = SPACE.sample(rng)
        if spec not in specs:
            specs.append(spec)
    for value, spec in enumerate(specs):
        study.enqueue_trial(codec.encode(spec))
        trial = study.ask()
        codec.suggest(trial)
        study.tell(trial, float(value))
    assert sampler.tournament(sampler.population(study)) == specs[-1]


def test_search_on_real_cifar10_with_a_trained_teacher(tmp_path, shared_data, shared_teachers):
    cfg = config(
        tmp_path, teacher="resnet56_cifar", teacher_weights=str(shared_teachers / "cifar10_resnet56-4bfd9763.th"),
        data=str(shared_data / "cifar10-jpeg.zip"), budget="40M", trials=8, batch_size=64,
    )
    result = run_search(cfg, progress=False)
    ctx = result.context
    assert ctx.teacher.pretrained and ctx.data_name.startswith("cifar10")
    assert not ctx.notes, ctx.notes  # real images and real weights: nothing to warn about
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 8 and all(t.user_attrs["macs"] <= 40e6 for t in complete)
    # a trained teacher and real images give a relation term well away from zero for these random students
    assert all(0 < t.user_attrs["diswot_relation"] < 2 for t in complete)


def test_population_ages_out_the_oldest():
    codec = SpecCodec({"cifar_resnet": SPACE})
    sampler = RegularizedEvolutionSampler(codec, lambda s: True, population_size=3, tournament_size=3, seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    values = [9.0, 1.0, 2.0, 3.0, 4.0]  # the best (9.0) is the oldest and must have died
    for v in values:
        trial = study.ask()
        codec.suggest(trial)
        study.tell(trial, v)
    population = sampler.population(study)
    assert [t.number for t in population] == [2, 3, 4]
    assert sampler.tournament(population) == codec.decode(study.trials[4].params)


def test_diswot_scores_against_a_random_copy_of_a_trained_teacher_by_default(folder, weights):
    import torch

    from autokd.search import prepare

    base = dict(teacher="resnet20_cifar", teacher_weights=str(weights), data=str(folder), budget="30M",
                spaces=("cifar_resnet",), batch_size=10, objective="diswot")
    default, trained = prepare(SearchConfig(**base)), prepare(SearchConfig(**base, score_teacher="trained"))
    assert default.teacher.pretrained and trained.teacher.pretrained  # training still gets the trained teacher
    assert not torch.equal(default.evaluator.reference.grad, trained.evaluator.reference.grad)
    again = prepare(SearchConfig(**base))
    assert torch.equal(default.evaluator.reference.grad, again.evaluator.reference.grad)  # seeded copy
    assert default.study_attrs()["score_teacher"] == "random"


def test_several_scoring_batches_average_the_scores(tmp_path):
    import torch

    from autokd.errors import AutokdError
    from autokd.proxies import score_candidate
    from autokd.search import prepare

    one = prepare(config(tmp_path, proxies=("diswot", "naswot")))
    three = prepare(config(tmp_path, proxies=("diswot", "naswot"), score_batches=3))
    ev = three.evaluator
    assert len(ev.batches) == len(ev.references) == 3 and len(one.evaluator.batches) == 1
    assert torch.equal(ev.batch.images, one.evaluator.batch.images)  # the first batch is the single-batch default
    assert not torch.equal(ev.batches[0].images, ev.batches[1].images)
    for b in ev.batches:  # every batch class-balanced: 32 images of 10 classes, 3 or 4 each
        assert set(torch.bincount(b.labels.cpu(), minlength=10).tolist()) <= {3, 4}

    spec = load_space("cifar_resnet", 32).smallest()
    scores = ev.score(spec)
    per_batch = [score_candidate(ev.build(spec), b, r, ["diswot", "naswot"]) for b, r in zip(ev.batches,
                                                                                              ev.references)]
    for key in ("diswot", "diswot_relation", "naswot"):
        assert scores[key] == pytest.approx(sum(s[key] for s in per_batch) / 3)
    assert len({round(s["diswot"], 6) for s in per_batch}) == 3  # the batches really differ
    assert scores["diswot"] != pytest.approx(one.evaluator.score(spec)["diswot"])
    assert three.study_attrs()["score_batches"] == 3

    run_search(config(tmp_path, trials=2), progress=False)
    with pytest.raises(AutokdError, match="different score_batches"):
        run_search(config(tmp_path, trials=3, score_batches=2), progress=False)
    with pytest.raises(AutokdError, match="score-batches"):
        prepare(config(tmp_path, score_batches=0))
