"""Build, cost and score candidate specs; the teacher's side is computed once and reused for every candidate."""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from autokd.cost import Budget, Cost, count_params, measure_cost
from autokd.proxies import ScoringBatch, TeacherReference, score_candidate
from autokd.spaces import ArchSpec, SearchSpace

# The closed-form estimate is held within 2% of fvcore by a test; anything estimated further over is rejected
# without building the model.
ESTIMATE_TOLERANCE = 0.03


@dataclass(frozen=True)
class Candidate:
    """A spec with its exact cost and its proxy scores."""

    spec: ArchSpec
    cost: Cost
    scores: dict[str, float] = field(default_factory=dict)


def spec_seed(spec: ArchSpec, seed: int) -> int:
    """A stable per-spec seed, so a spec's random init (and so its score) is the same in every process."""
    digest = hashlib.sha256(f"{seed}:{spec.to_json()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def seeded_build(space: SearchSpace, spec: ArchSpec, num_classes: int, seed: int) -> nn.Module:
    """`spec` built with the search's init for it: the same weights whenever it is built with this seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec_seed(spec, seed))
        return space.build(spec, num_classes)


class CandidateEvaluator:
    """Costs and scores specs of several spaces against teacher references on fixed batches, caching by spec.

    With several scoring batches, each score is the mean over the batches (one reference per batch).
    """

    def __init__(
        self,
        spaces: dict[str, SearchSpace],
        budget: Budget,
        num_classes: int,
        batches: Sequence[ScoringBatch],
        references: Sequence[TeacherReference],
        proxies: Sequence[str],
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        if not batches or len(batches) != len(references):
            raise ValueError(f"need one teacher reference per scoring batch, got {len(batches)} batches and "
                             f"{len(references)} references")
        self.spaces = spaces
        self.budget = budget
        self.num_classes = num_classes
        self.batches = list(batches)
        self.references = list(references)
        self.proxies = list(proxies)
        self.device = torch.device(device)
        self.seed = seed
        self._costs: dict[ArchSpec, Cost] = {}
        self._models: OrderedDict[ArchSpec, nn.Module] = OrderedDict()

    @property
    def batch(self) -> ScoringBatch:
        """The first scoring batch (the only one unless the search averages several)."""
        return self.batches[0]

    @property
    def reference(self) -> TeacherReference:
        """The teacher reference on the first scoring batch."""
        return self.references[0]

    def estimate(self, spec: ArchSpec) -> int:
        return self.spaces[spec.space].estimate_macs(spec, self.num_classes)

    def build(self, spec: ArchSpec) -> nn.Module:
        """The candidate with a seeded random init (kept for a few specs: cost and score share one build)."""
        if spec in self._models:
            self._models.move_to_end(spec)
            return self._models[spec]
        model = seeded_build(self.spaces[spec.space], spec, self.num_classes, self.seed)
        self._models[spec] = model
        while len(self._models) > 4:
            self._models.popitem(last=False)
        return model

    def cost(self, spec: ArchSpec) -> Cost:
        """Exact MACs (fvcore, or the space's closed form where it is exact) and params."""
        if spec not in self._costs:
            space = self.spaces[spec.space]
            if space.exact_macs:
                self._costs[spec] = Cost(macs=self.estimate(spec), params=count_params(self.build(spec)))
            else:
                self._costs[spec] = measure_cost(self.build(spec), space.img_size)
        return self._costs[spec]

    def fits(self, spec: ArchSpec) -> bool:
        """Within budget by the exact count; the estimate only short-cuts clear misses."""
        if self.estimate(spec) > self.budget.macs * (1 + ESTIMATE_TOLERANCE):
            return False
        return self.budget.fits(self.cost(spec))

    def score(self, spec: ArchSpec) -> dict[str, float]:
        """Every requested proxy score; refuses a spec over budget."""
        cost = self.cost(spec)
        if not self.budget.fits(cost):
            raise ValueError(f"refusing to score {spec}: {cost.macs} MACs is over the budget {self.budget}")
        model = self.build(spec).to(self.device)
        scores = self.score_model(model, self.proxies, cost)
        self.build(spec).to("cpu")
        return scores

    def score_model(self, model: nn.Module, proxies: Sequence[str], cost: Cost) -> dict[str, float]:
        """The named proxies' scores of `model`, averaged over the scoring batches."""
        runs = [score_candidate(model, b, r, proxies, cost=cost) for b, r in zip(self.batches, self.references)]
        return {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}

    def evaluate(self, spec: ArchSpec) -> Candidate:
        return Candidate(spec, self.cost(spec), self.score(spec))


def sample_reference(evaluator: CandidateEvaluator, size: int, seed: int, attempts: int = 100) -> list[ArchSpec]:
    """`size` distinct random specs under the budget, the spaces taken in turn: an aggregate's fixed reference."""
    rng = random.Random(f"reference:{seed}")
    spaces = sorted(evaluator.spaces)
    specs: list[ArchSpec] = []
    for _ in range(size * attempts):
        spec = evaluator.spaces[spaces[len(specs) % len(spaces)]].sample(rng)
        if spec not in specs and evaluator.fits(spec):
            specs.append(spec)
            if len(specs) == size:
                break
    return specs
