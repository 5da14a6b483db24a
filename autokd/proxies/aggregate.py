"""Rank aggregation of several scores (AZ-NAS, CVPR 2024), against a fixed reference sample.

AZ-NAS ranks a population by each score (ascending: the best of N gets rank N) and sums log(rank / N) over the
scores, so a candidate must be good on every score: one bad rank costs more than one good rank gains. The
authors re-rank over every candidate seen so far, which makes a trial's value change as the search goes on.
autokd ranks each candidate against a fixed reference sample of the space under the budget instead, so the
value of a trial is fixed once computed and comparable across trials, workers and resumed runs:

    score = sum_k log p_k,   p_k = (#ref below v_k + 0.5 * #ref equal to v_k + 1) / (N + 1)

Past the best reference value p_k grows on linearly, by 1 / (N + 1) per mean gap between the top reference
values, so that the candidates an evolution finds beyond the reference sample stay ordered instead of tying at
p = 1. Scored against the population itself (the benchmarks' ground truths), this is AZ-NAS's aggregate up to
the +1 smoothing. A score that is nan for a candidate (a proxy that cannot read that model) counts as the median
(p = 0.5), so it neither rewards nor punishes the candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autokd.errors import AutokdError

#: named aggregates: the authors' own combinations, and size with the scores the literature pairs it with
AGGREGATES: dict[str, tuple[str, ...]] = {
    "aznas": ("az_expressivity", "az_progressivity", "az_trainability", "az_complexity"),
    # VKDNW_agg (CVPR 2025; ondratybl/VKDNW NB201/paper_preparation.ipynb, "Ablation: add components"): FLOPs,
    # AZ-NAS's expressivity and trainability, jacov and VKDNW (layer count, entropy breaking ties), equal weights
    "vkdnw_agg": ("vkdnw", "jacov", "az_expressivity", "az_trainability", "macs"),
}
#: what `autokd search` maximises unless told otherwise, chosen by rule: the best mean Kendall tau over the trusted
#: ground truths (DisWOT's S1 distilled students; NAS-Bench-201, its CIFAR-10 and CIFAR-100 columns counted once)
#: among the scores stable across scoring batches and <= 1 CPU s per candidate (docs/nb201.md,
#: benchmarks/ranking/bench_ranking_table.py)
DEFAULT_OBJECTIVE = "params+synflow"
#: keys that are distances (lower = better): negated before ranking
LOWER_IS_BETTER = frozenset({"diswot_relation", "diswot_semantic"})


def aggregate_terms(objective: str) -> tuple[str, ...]:
    """The score keys an objective aggregates: a named aggregate, 'a+b+c', or () for a single score."""
    if objective in AGGREGATES:
        return AGGREGATES[objective]
    if "+" in objective:
        terms = tuple(t.strip() for t in objective.split("+"))
        if any(not t for t in terms) or len(set(terms)) != len(terms):
            raise AutokdError(f"cannot read objective {objective!r}: join distinct score names with '+', "
                              "e.g. params+zico")
        return terms
    return ()


def oriented(key: str, value: float) -> float:
    """`value` with higher = better (distances negated)."""
    return -value if key in LOWER_IS_BETTER else value


@dataclass(frozen=True)
class RankAggregate:
    """The log-rank aggregate of `terms`, each ranked against its sorted reference values."""

    terms: tuple[str, ...]
    reference: Mapping[str, np.ndarray]  # term -> sorted oriented values of the reference sample (no nan)

    @classmethod
    def fit(cls, terms: Sequence[str], sample: Sequence[Mapping[str, float]]) -> RankAggregate:
        """Reference values of `terms` from the scores of a reference sample (one dict per candidate)."""
        if not sample:
            raise AutokdError("the rank aggregate needs a non-empty reference sample")
        reference = {}
        for term in terms:
            if any(term not in s for s in sample):
                raise AutokdError(f"the reference sample has no score {term!r}: compute that proxy")
            values = np.array([oriented(term, s[term]) for s in sample], dtype=float)
            reference[term] = np.sort(values[~np.isnan(values)])
        return cls(tuple(terms), reference)

    def percentile(self, term: str, value: float) -> float:
        """p > 0: the share of the reference below `value` (ties count half), smoothed by +1; past the best
        reference value, 1 plus the distance beyond it in mean gaps of the top values, over N + 1."""
        ref = self.reference[term]
        value = oriented(term, value)
        if np.isnan(value) or ref.size == 0:
            return 0.5
        n = ref.size
        if value > ref[-1]:
            top = ref[max(0, n - 5):]
            gap = (top[-1] - top[0]) / (len(top) - 1) if len(top) > 1 and top[-1] > top[0] else abs(top[-1]) or 1.0
            return float(1 + (value - ref[-1]) / gap / (n + 1))
        below = np.searchsorted(ref, value, side="left")
        equal = np.searchsorted(ref, value, side="right") - below
        return float((below + 0.5 * equal + 1) / (n + 1))

    def __call__(self, scores: Mapping[str, float]) -> float:
        """sum over terms of log(percentile): higher is better; 0 is a candidate at the top of every term."""
        return float(sum(np.log(self.percentile(t, scores[t])) for t in self.terms))


def population_aggregate(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The aggregate of every member of a population ranked against the population itself (AZ-NAS)."""
    terms = list(columns)
    rows = [{t: float(columns[t][i]) for t in terms} for i in range(len(next(iter(columns.values()))))]
    agg = RankAggregate.fit(terms, rows)
    return np.array([agg(row) for row in rows])
