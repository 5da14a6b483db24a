"""Optuna samplers that only ever propose in-budget, unseen architectures: random and regularized evolution.

Regularized (aging) evolution follows Real et al. (AAAI 2019): the population is the most recent
`population_size` complete trials; a parent is the best of `tournament_size` of them drawn at random; the child is
the parent with one or two genes mutated. Unlike DisWOT's public code, the tournament picks the best, the
population ages, and the budget is checked for the initial population and for every child.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from autokd.errors import AutokdError
from autokd.search.codec import SpecCodec, holds_spec
from autokd.spaces import ArchSpec


class BudgetedRandomSampler(BaseSampler):
    """Uniform over spaces, uniform within a space, rejecting specs that are over budget or already tried."""

    def __init__(
        self,
        codec: SpecCodec,
        fits: Callable[[ArchSpec], bool],
        seed: int | None = None,
        max_attempts: int = 2000,
    ):
        self.codec = codec
        self.fits = fits
        self.max_attempts = max_attempts
        self._rng = random.Random(seed)
        self._fallback = RandomSampler(seed=seed)
        self._seen: dict[int, ArchSpec | None] = {}

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.codec.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.codec.encode(self.propose(study, self.known_specs(study)))

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def known_specs(self, study: optuna.Study) -> set[ArchSpec]:
        """Specs that must not be proposed again (see `holds_spec`); finished trials are decoded once."""
        live = set()
        for t in study.get_trials(deepcopy=False):
            if t.number in self._seen:
                continue
            spec = self.codec.trial_spec(t)
            if t.state.is_finished():
                self._seen[t.number] = spec if holds_spec(t) else None
            elif spec is not None:  # a trial still being suggested elsewhere is caught after its suggest
                live.add(spec)
        return {s for s in self._seen.values() if s is not None} | live

    def propose(self, study: optuna.Study, known: set[ArchSpec]) -> ArchSpec:
        return self._random_new(known)

    def _random_new(self, known: set[ArchSpec]) -> ArchSpec:
        spaces = list(self.codec.spaces.values())
        for _ in range(self.max_attempts):
            spec = self._rng.choice(spaces).sample(self._rng)
            if spec not in known and self.fits(spec):
                return spec
        raise AutokdError(
            f"found no new in-budget architecture in {self.max_attempts} random draws: "
            "raise the budget or widen the search space"
        )


class RegularizedEvolutionSampler(BudgetedRandomSampler):
    """Aging evolution as an Optuna sampler (single objective, maximised)."""

    def __init__(
        self,
        codec: SpecCodec,
        fits: Callable[[ArchSpec], bool],
        population_size: int = 20,
        tournament_size: int = 5,
        seed: int | None = None,
        max_attempts: int = 2000,
    ):
        super().__init__(codec, fits, seed=seed, max_attempts=max_attempts)
        if not 1 <= tournament_size <= population_size:
            raise AutokdError("evolution needs 1 <= tournament size <= population size")
        self.population_size = population_size
        self.tournament_size = tournament_size

    def population(self, study: optuna.Study) -> list[FrozenTrial]:
        """The most recent `population_size` complete trials: the oldest die first."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
        done.sort(key=lambda t: t.number)
        return done[-self.population_size :]

    def propose(self, study: optuna.Study, known: set[ArchSpec]) -> ArchSpec:
        population = self.population(study)
        if len(population) < self.population_size:
            return self._random_new(known)
        for _ in range(self.max_attempts):
            parent = self.tournament(population)
            child = self.codec.spaces[parent.space].mutate(parent, self._rng)
            if child not in known and self.fits(child):
                return child
        # The neighbourhood of the population is exhausted or over budget: explore instead of stalling.
        return self._random_new(known)

    def tournament(self, population: Sequence[FrozenTrial]) -> ArchSpec:
        """The best of `tournament_size` members drawn without replacement."""
        contenders = self._rng.sample(list(population), self.tournament_size)
        best = max(contenders, key=lambda t: t.value)
        return self.codec.decode(best.params)
