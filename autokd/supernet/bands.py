"""AutoDistil's sub-spaces for vision: a space's budget range split into K bands of MACs, one supernet each.

The range runs from the space's smallest model to the budget, cut at log-spaced edges (K = 1: one band, the
one-shot supernet). Band k holds the specs with low_k < MACs <= high_k (band 0 includes its low end). Sampling
for training pre-filters with the closed-form estimate; every decision that scores a subnet uses the exact
fvcore count of the built model (`Band.fits`), so nothing over the budget is ever scored.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from autokd.cost import count_macs, format_macs
from autokd.errors import AutokdError
from autokd.spaces import ArchSpec, SearchSpace
from autokd.spaces.choice import ChoiceSpace

UNIFORM_DRAWS = 50  # uniform draws per in-band sample before walking into the band
WALK_STEPS = 2000  # mutations of a walk towards the band before giving up (a band too thin for this space)
CLIMB_STEPS = 300  # mutations tried when growing (shrinking) a spec towards the band's largest (smallest)


@dataclass(frozen=True)
class Band:
    """MACs range (low, high] of one band; band 0 also holds `low` itself."""

    index: int
    low: int
    high: int

    def holds(self, macs: int) -> bool:
        return (self.low < macs or (self.index == 0 and macs == self.low)) and macs <= self.high

    def __str__(self) -> str:
        return f"band {self.index}: {format_macs(self.low)} .. {format_macs(self.high)}"


def split_bands(low: int, budget: int, k: int) -> list[Band]:
    """K bands covering [low, budget] without overlap, at log-spaced MAC edges."""
    if k < 1:
        raise AutokdError(f"--bands must be at least 1, got {k}")
    if not 0 < low <= budget:
        raise AutokdError(f"the space's smallest model has {format_macs(low)}, over the {format_macs(budget)} "
                          "budget: raise the budget or pick another space")
    edges = [int(round(e)) for e in np.geomspace(low, budget, k + 1)]
    edges[0], edges[-1] = low, budget
    if len(set(edges)) != len(edges):
        raise AutokdError(f"{format_macs(low)} .. {format_macs(budget)} is too narrow for {k} bands: use fewer")
    return [Band(i, edges[i], edges[i + 1]) for i in range(k)]


class BandSpace:
    """One band of a space: in-band sampling (estimated MACs), the exact budget check, largest and smallest."""

    def __init__(self, space: SearchSpace, band: Band, num_classes: int, *, budget: int | None = None):
        if not isinstance(space, ChoiceSpace):
            raise AutokdError(f"space {space.name!r} has no supernet: use vit or cifar_resnet")
        self.space, self.band, self.num_classes = space, band, num_classes
        self.budget = band.high if budget is None else budget
        self._exact: dict[ArchSpec, int] = {}

    # ---- sizes ---------------------------------------------------------------------------------------
    def estimate(self, spec: ArchSpec) -> int:
        return self.space.estimate_macs(spec, self.num_classes)

    def exact_macs(self, spec: ArchSpec) -> int:
        """fvcore's count on the built model (cached by spec)."""
        if spec not in self._exact:
            self._exact[spec] = count_macs(self.space.build(spec, self.num_classes), self.space.img_size)
        return self._exact[spec]

    def fits(self, spec: ArchSpec) -> bool:
        """In this band and under the budget, by the exact count."""
        macs = self.exact_macs(spec)
        return self.band.holds(macs) and macs <= self.budget

    def refuse_over_budget(self, spec: ArchSpec) -> int:
        """The exact MACs of `spec`; raises when it is over the budget or outside the band."""
        macs = self.exact_macs(spec)
        if macs > self.budget or not self.band.holds(macs):
            raise AutokdError(f"{spec.short()} has {format_macs(macs)}: outside {self.band} (budget "
                              f"{format_macs(self.budget)}); it is not scored")
        return macs

    # ---- sampling ------------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> ArchSpec:
        """A random spec whose estimated MACs fall in the band: a uniform draw when one of a few lands in it,
        else a uniform draw walked into the band by mutations that bring its MACs closer (a thin band, e.g.
        the lowest ViT band, holds too few specs for rejection alone)."""
        for _ in range(UNIFORM_DRAWS):
            spec = self.space.sample(rng)
            if self.band.holds(self.estimate(spec)):
                return spec
        gap = self._gap(spec)
        for _ in range(WALK_STEPS):
            child = self.space.mutate(spec, rng)
            child_gap = self._gap(child)
            if child_gap <= gap:
                spec, gap = child, child_gap
            if gap == 0:
                return spec
        raise AutokdError(f"no {self.space.name} spec found in {self.band}: use fewer bands or widen the budget")

    def _gap(self, spec: ArchSpec) -> float:
        """How far the estimated MACs of `spec` lie outside the band, in log units (0 inside)."""
        macs = self.estimate(spec)
        if self.band.holds(macs):
            return 0.0
        return abs(math.log(macs / (self.band.high if macs > self.band.high else max(self.band.low, 1))))

    def pool(self, n: int, seed: int = 0) -> list[ArchSpec]:
        """`n` distinct in-band specs (fewer when the band holds fewer)."""
        rng, found = random.Random(seed), {}
        for _ in range(4 * n):
            found[self.sample(rng)] = None
            if len(found) >= n:
                break
        return list(found)

    def extreme(self, start: ArchSpec, largest: bool, seed: int = 0) -> ArchSpec:
        """Hill-climb from `start` by mutation to the in-band spec with the most (fewest) estimated MACs."""
        rng, best = random.Random(seed), start
        sign = 1 if largest else -1
        for _ in range(CLIMB_STEPS):
            child = self.space.mutate(best, rng)
            macs = self.estimate(child)
            if self.band.holds(macs) and sign * macs > sign * self.estimate(best):
                best = child
        return best

    def anchors(self, pool: list[ArchSpec], seed: int = 0) -> tuple[ArchSpec, ArchSpec]:
        """(largest, smallest) in-band specs: the extremes of `pool`, grown (shrunk) by mutation."""
        if not pool:
            raise AutokdError(f"{self.band} holds no {self.space.name} spec")
        largest = self.extreme(max(pool, key=self.estimate), True, seed)
        smallest = self.space.smallest() if self.band.holds(self.estimate(self.space.smallest())) else None
        smallest = smallest or self.extreme(min(pool, key=self.estimate), False, seed)
        return largest, smallest

    def describe(self) -> dict[str, Any]:
        return {"index": self.band.index, "low": self.band.low, "high": self.band.high, "budget": self.budget}


def space_bands(space: SearchSpace, budget: int, k: int, num_classes: int) -> list[BandSpace]:
    """The K bands of `space` under `budget` (exact MACs of the smallest model to the budget)."""
    low = count_macs(space.build(space.smallest(), num_classes), space.img_size)
    return [BandSpace(space, band, num_classes, budget=budget) for band in split_bands(low, budget, k)]
