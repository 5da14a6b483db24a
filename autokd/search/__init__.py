"""The search controller: Optuna study, budget-respecting samplers, workers."""

from autokd.search.controller import SAMPLERS, SearchConfig, SearchContext, prepare
from autokd.search.evaluate import Candidate, CandidateEvaluator
from autokd.search.run import SearchResult, run_search
from autokd.search.samplers import BudgetedRandomSampler, RegularizedEvolutionSampler

__all__ = [
    "SAMPLERS",
    "BudgetedRandomSampler",
    "Candidate",
    "CandidateEvaluator",
    "RegularizedEvolutionSampler",
    "SearchConfig",
    "SearchContext",
    "SearchResult",
    "prepare",
    "run_search",
]
