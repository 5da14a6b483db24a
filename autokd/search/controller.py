"""The search controller: an Optuna study over architecture genes, scored training-free, under a MAC budget.

`autokd.search.workers` runs its trials (the optimize loop and the extra worker processes)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.samplers import NSGAIISampler, TPESampler
from optuna.trial import TrialState

from autokd.cost import Budget, format_macs
from autokd.data import ImageDataset, load_data, scoring_batch
from autokd.data.split import HELDOUT_FRACTION
from autokd.device import resolve_device
from autokd.errors import AutokdError
from autokd.proxies import (
    PROXIES,
    RELATION_LAYERS,
    WIDTH_MATCHES,
    ScoringBatch,
    TeacherReference,
    random_copy,
    teacher_reference,
)
from autokd.proxies.aggregate import DEFAULT_OBJECTIVE, RankAggregate, aggregate_terms
from autokd.search.codec import SpecCodec, holds_spec
from autokd.search.evaluate import CandidateEvaluator, sample_reference
from autokd.search.samplers import BudgetedRandomSampler, RegularizedEvolutionSampler
from autokd.search.study import find_study
from autokd.spaces import SearchSpace, available_spaces, default_spaces, load_space
from autokd.storage import HEARTBEAT_SECONDS, MEMORY, masked_url, open_storage
from autokd.teachers import Teacher, resolve_teacher

log = logging.getLogger("autokd")

SAMPLERS = ("evolution", "nsga2", "tpe", "random")
# Studies are keyed by what makes their scores comparable; resuming with another setting is refused.
STUDY_KEYS = (
    "teacher", "budget", "params_budget", "img_size", "spaces", "objective", "seed", "batch_size", "data",
    "width_match", "score_teacher", "score_batches", "relation_layer", "reference_size",
)


@dataclass
class SearchConfig:
    """Everything a search needs; plain values, so workers in other processes can rebuild the context."""

    teacher: str = "vit_b"
    budget: str = "1GFLOP"
    params_budget: str | None = None
    data: str | None = None
    spaces: tuple[str, ...] | None = None
    trials: int = 100
    timeout: float | None = None
    seed: int = 0  # the scoring batch, the random teacher and each candidate's init: part of the study's identity
    sampler_seed: int | None = None  # None: a fresh seed per worker; an int: reproducible on one machine
    heartbeat: int = HEARTBEAT_SECONDS  # a trial silent for 3 beats (its worker died) is failed and retried
    sampler: str = "evolution"
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    teacher_weights: str | None = None
    img_size: int | None = None
    batch_size: int | None = None
    score_batches: int = 1
    proxies: tuple[str, ...] = ()  # scores recorded beside those the objective needs
    objective: str = DEFAULT_OBJECTIVE
    reference_size: int = 32  # specs an aggregate objective ranks each candidate against
    width_match: str = "projection"
    relation_layer: str = "features"
    score_teacher: str = "random"
    population_size: int = 20
    tournament_size: int = 5
    device: str = "auto"
    val_fraction: float = HELDOUT_FRACTION

    def storage_url(self, out: Path | None) -> str:
        if self.storage:
            return self.storage
        return f"sqlite:///{(out / 'autokd.db') if out else Path('autokd.db')}"


@dataclass
class SearchContext:
    """The prepared state of one search in one process: teacher reference computed once, spaces loaded."""

    config: SearchConfig
    budget: Budget
    teacher: Teacher
    spaces: dict[str, SearchSpace]
    evaluator: CandidateEvaluator
    codec: SpecCodec
    data_name: str
    data: ImageDataset | None = None  # the loaded dataset, so `autokd run` trains on it without reading it again
    notes: list[str] = field(default_factory=list)
    ranking: RankAggregate | None = None  # an aggregate objective, fitted on the fixed reference sample
    worker: dict[str, Any] = field(default_factory=dict)  # host, pid, index and sampler seed, set with the study

    def objective_value(self, scores: dict[str, float]) -> float:
        """The value the search maximises: the aggregate's, or the one score named by the objective."""
        return self.ranking(scores) if self.ranking is not None else scores[self.config.objective]

    def study_attrs(self) -> dict:
        c = self.config
        return {
            "teacher": self.teacher.name,
            "budget": self.budget.macs,
            "params_budget": self.budget.params,
            "img_size": self.teacher.img_size,
            "spaces": sorted(self.spaces),
            "objective": c.objective,
            "seed": c.seed,
            "batch_size": self.evaluator.batch.images.shape[0],
            "data": self.data_name,
            "num_classes": self.evaluator.num_classes,
            "proxies": list(self.evaluator.proxies),
            "width_match": c.width_match,
            "score_teacher": c.score_teacher,
            "score_batches": len(self.evaluator.batches),
            "relation_layer": c.relation_layer,
            "reference_size": c.reference_size if self.ranking is not None else 0,
        }


def validate(config: SearchConfig) -> Budget:
    """Cheap checks of the config, before anything heavy is loaded."""
    budget = Budget.parse(config.budget, config.params_budget)
    if config.sampler not in SAMPLERS:
        raise AutokdError(f"unknown sampler {config.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    unknown = [p for p in config.proxies if p not in PROXIES]
    if unknown:
        raise AutokdError(f"unknown proxy {unknown[0]!r}: choose from {', '.join(PROXIES)}")
    objective_proxies(config.objective)
    if config.reference_size < 2:
        raise AutokdError("--reference-size must be at least 2")
    for name in config.spaces or ():
        if name not in available_spaces() and not Path(name).is_file():
            raise AutokdError(f"unknown search space {name!r}: choose from {', '.join(available_spaces())}")
    if config.score_teacher not in ("random", "trained"):
        raise AutokdError(f"unknown --score-teacher {config.score_teacher!r}: choose random or trained")
    if config.width_match not in WIDTH_MATCHES:
        raise AutokdError(f"unknown --width-match {config.width_match!r}: choose one of {', '.join(WIDTH_MATCHES)}")
    if config.relation_layer not in RELATION_LAYERS:
        raise AutokdError(f"unknown --relation-layer {config.relation_layer!r}: choose one of "
                          f"{', '.join(RELATION_LAYERS)}")
    if config.trials < 1 or config.workers < 1 or config.score_batches < 1:
        raise AutokdError("--trials, --workers and --score-batches must be at least 1")
    if config.storage == MEMORY and config.workers > 1:
        raise AutokdError("--storage memory lives in one process: use one worker, or a sqlite:/// or "
                          "postgresql:// storage for several")
    if config.timeout is not None and not config.timeout > 0:
        raise AutokdError(f"--timeout must be a positive number of seconds, got {config.timeout}")
    if config.img_size is not None and not 8 <= config.img_size <= 4096:
        raise AutokdError(f"--img-size {config.img_size} is out of range: give a resolution from 8 to 4096 pixels")
    if config.batch_size is not None and not 2 <= config.batch_size <= 4096:
        raise AutokdError(f"--batch-size {config.batch_size} is out of range: the scoring batch needs 2 to 4096 "
                          "images")
    if not 1 <= config.tournament_size <= config.population_size:
        raise AutokdError("evolution needs 1 <= --tournament <= --population")
    if config.heartbeat < 1:
        raise AutokdError("the heartbeat must be at least 1 second")
    if config.seed < 0 or (config.sampler_seed is not None and config.sampler_seed < 0):
        raise AutokdError("--seed must be 0 or more")
    resolve_device(config.device)
    return budget


def objective_proxies(objective: str) -> list[str]:
    """The proxies whose outputs an objective reads (a score name, a named aggregate or 'a+b+c')."""
    outputs = {key: name for name, proxy in PROXIES.items() for key in proxy.outputs}
    terms = aggregate_terms(objective) or (objective,)
    unknown = [t for t in terms if t not in outputs]
    if unknown:
        raise AutokdError(f"unknown score {unknown[0]!r} in the objective {objective!r}: choose from "
                          f"{', '.join(outputs)}, or join several with '+'")
    return list(dict.fromkeys(outputs[t] for t in terms))


def prepare(config: SearchConfig) -> SearchContext:
    """Load data and teacher, pick spaces that can meet the budget, compute the teacher reference once."""
    budget = validate(config)
    notes: list[str] = []
    data = load_data(config.data)
    if not data.is_real:
        notes.append(data.describe())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # a random teacher must be the same in every worker and on resume
        teacher = resolve_teacher(
            config.teacher, num_classes=len(data.classes), weights=config.teacher_weights, img_size=config.img_size
        )
    notes.extend(teacher.notes)
    img_size = teacher.img_size
    names = list(config.spaces or default_spaces(teacher.family, img_size))
    spaces = {}
    for name in names:
        space = load_space(name, img_size)
        if config.spaces is None and not space.suits():
            continue
        spaces[space.name] = space
    if not spaces:
        raise AutokdError(f"no search space suits {img_size} px inputs: pick one with --space")

    device = resolve_device(config.device)
    batch_size = config.batch_size or (64 if img_size <= 64 else 32)
    # several batches are consecutive chunks of one class-balanced draw, so the first is the single-batch default
    images, labels = scoring_batch(data, batch_size * config.score_batches, config.seed, teacher.transform(),
                                   val_fraction=config.val_fraction)
    batches = [ScoringBatch(x.to(device), y.to(device))
               for x, y in zip(images.split(batch_size), labels.split(batch_size)) if len(y) >= 2]
    proxies = list(dict.fromkeys([*config.proxies, *objective_proxies(config.objective), "params", "macs"]))
    if any(PROXIES[p].reads_teacher for p in proxies):
        references = teacher_references(teacher, batches, config, device)
    else:  # no score reads the teacher: its forward pass is skipped
        references = [TeacherReference.without_teacher(b.labels, config.seed) for b in batches]
    evaluator = CandidateEvaluator(spaces, budget, len(data.classes), batches, references, proxies, device,
                                   config.seed)

    reachable = {}
    for name, space in spaces.items():
        smallest = evaluator.cost(space.smallest())
        if budget.fits(smallest):
            reachable[name] = space
        else:
            notes.append(f"space {name!r} has nothing under {budget}: its smallest model has "
                         f"{format_macs(smallest.macs)}; skipped")
    if not reachable:
        smallest = min(evaluator.cost(s.smallest()).macs for s in spaces.values())
        raise AutokdError(
            f"nothing in space(s) {', '.join(spaces)} fits the budget {budget}: the smallest model has "
            f"{format_macs(smallest)}; raise --budget to at least that"
        )
    evaluator.spaces = reachable
    ranking = None
    if aggregate_terms(config.objective):
        sample = sample_reference(evaluator, config.reference_size, config.seed)
        ranking = RankAggregate.fit(aggregate_terms(config.objective), [evaluator.score(s) for s in sample])
    return SearchContext(config, budget, teacher, reachable, evaluator, SpecCodec(reachable), data.name, data,
                         notes, ranking)


def teacher_references(teacher: Teacher, batches: list[ScoringBatch], config: SearchConfig,
                       device: torch.device) -> list[TeacherReference]:
    """The teacher's side of DisWOT on each scoring batch, computed once per search."""
    # DisWOT scores against a randomly initialised teacher, as the paper does; on the CIFAR-10 ground truth this
    # ranked distilled accuracy better than the trained teacher (README). The trained teacher is kept for training.
    random_teacher = config.score_teacher == "random" or not teacher.pretrained
    scorer = random_copy(teacher.model, config.seed) if random_teacher and teacher.pretrained else teacher.model
    scorer.to(device)
    # A random teacher's BatchNorm running statistics mean nothing: score it on batch statistics, as the paper.
    references = [teacher_reference(scorer, b.images, b.labels, seed=config.seed, width_match=config.width_match,
                                    batch_stats=random_teacher, relation_layer=config.relation_layer)
                  for b in batches]
    scorer.to("cpu")
    return references


def worker_seed(sampler_seed: int | None, worker: int) -> int:
    """The sampler seed of worker `worker`: distinct for every worker on every machine, so the same command on
    several machines proposes different students; with `sampler_seed`, reproducible on one machine."""
    if sampler_seed is None:
        return int.from_bytes(os.urandom(4), "little")
    key = f"{sampler_seed}:{socket.gethostname()}:{worker}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def make_sampler(ctx: SearchContext, seed: int) -> optuna.samplers.BaseSampler:
    c = ctx.config
    if c.sampler == "evolution":
        return RegularizedEvolutionSampler(ctx.codec, ctx.evaluator.fits, c.population_size, c.tournament_size, seed)
    if c.sampler == "random":
        return BudgetedRandomSampler(ctx.codec, ctx.evaluator.fits, seed)
    if c.sampler == "nsga2":
        return NSGAIISampler(seed=seed)
    return TPESampler(seed=seed)


def directions(config: SearchConfig) -> list[str]:
    """NSGA-II optimises (score, MACs); the others the score alone."""
    return ["maximize", "minimize"] if config.sampler == "nsga2" else ["maximize"]


def default_study_name(ctx: SearchContext) -> str:
    return f"{ctx.teacher.name}-{ctx.budget.macs / 1e6:g}M-{ctx.data_name}-{'+'.join(sorted(ctx.spaces))}"


def load_or_create_study(ctx: SearchContext, storage_url: str, worker: int = 0) -> optuna.Study:
    """Create the study, or resume it when the same settings made it; a mismatch is a clear error."""
    storage = open_storage(storage_url, ctx.config.heartbeat)
    name = ctx.config.study_name or default_study_name(ctx)
    attrs = ctx.study_attrs()
    exists = find_study(storage, name)
    seed = worker_seed(ctx.config.sampler_seed, worker)
    ctx.worker = {"host": socket.gethostname(), "pid": os.getpid(), "index": worker, "sampler_seed": seed}
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(ctx, seed),
        directions=directions(ctx.config),
        load_if_exists=True,
    )
    if exists:
        old = study.user_attrs.get("autokd", {})
        diff = [k for k in STUDY_KEYS if k in old and old[k] != attrs[k]]
        if diff:
            raise AutokdError(
                f"study {name!r} in {masked_url(storage_url)} was made with a different {', '.join(diff)}; "
                "use another --study name or the original settings"
            )
    else:
        study.set_user_attr("autokd", attrs)
        study.set_metric_names([ctx.config.objective, "macs"][: len(directions(ctx.config))])
    w = ctx.worker  # every worker that joined, with its sampler seed (each trial also records its worker)
    study.set_user_attr(f"workers/{w['host']}:{w['pid']}/{worker}", seed)
    return study


def enqueue_seeds(study: optuna.Study, ctx: SearchContext) -> int:
    """Enqueue the spaces' known-good architectures that fit the budget (once per study)."""
    if study.user_attrs.get("seeds_enqueued"):
        return 0
    count = 0
    for space in ctx.spaces.values():
        for spec in space.seeds():
            if ctx.evaluator.fits(spec):
                study.enqueue_trial(ctx.codec.encode(spec), user_attrs={"seed_arch": True}, skip_if_exists=True)
                count += 1
    study.set_user_attr("seeds_enqueued", count)
    return count


def make_objective(
    ctx: SearchContext, bad_input: list[AutokdError] | None = None
) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    """Decode the trial's genes, skip a duplicate or surplus trial, count MACs exactly, refuse anything over
    budget, score the rest. A candidate that raises is recorded as failed with its error in user_attrs; bad input
    (AutokdError, e.g. no new architecture left) is also appended to `bad_input`, for the caller to stop on."""
    budget, evaluator, objective = ctx.budget, ctx.evaluator, ctx.config.objective
    multi = len(directions(ctx.config)) > 1

    def run_trial(trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            spec = ctx.codec.suggest(trial)
        except AutokdError as err:
            if bad_input is not None:
                bad_input.append(err)
            raise
        # One write holds the whole spec: other workers see it at once, never half of its params.
        trial.set_user_attr("spec", spec.as_dict())
        trial.set_user_attr("worker", ctx.worker)
        skip_duplicate_or_surplus(trial, spec, ctx)
        try:
            return score_trial(trial, spec)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise

    def score_trial(trial: optuna.Trial, spec) -> float | tuple[float, float]:
        cost = evaluator.cost(spec)
        trial.set_user_attr("macs", cost.macs)
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("budget_slack", budget.slack(cost))
        # Optuna 5 constraints (<= 0 is feasible); mirrored in user_attrs above, which the dashboard shows.
        trial.set_constraint("macs_over_budget", cost.macs / budget.macs - 1)
        if not budget.fits(cost):
            trial.set_user_attr("over_budget", True)
            raise optuna.TrialPruned(f"{cost.macs} MACs is over the budget")
        scores = evaluator.score(spec)
        value = ctx.objective_value(scores)
        for key, score in {**scores, objective: value}.items():
            trial.set_user_attr(key, score)
        return (value, float(cost.macs)) if multi else value

    return run_trial


def skip_duplicate_or_surplus(trial: optuna.Trial, spec, ctx: SearchContext) -> None:
    """Prune the trial when an earlier trial holds the same spec, or when earlier trials (complete, running or
    queued) already make up the target. Deciding by trial number makes the outcome the same in every worker."""
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    written = spec.as_dict()

    def same(t: optuna.trial.FrozenTrial) -> bool:  # compare the written spec; decode only queued params
        return t.user_attrs["spec"] == written if "spec" in t.user_attrs else ctx.codec.trial_spec(t) == spec

    twin = next((t.number for t in earlier if t.state != TrialState.FAIL and holds_spec(t) and same(t)), None)
    if twin is not None:
        trial.set_user_attr("skipped", f"duplicate of trial {twin}")
        raise optuna.TrialPruned(f"the same architecture as trial {twin}")
    ahead = sum(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in earlier)
    if ahead >= ctx.config.trials:
        trial.set_user_attr("skipped", "target reached")
        raise optuna.TrialPruned("earlier trials make up the target")
