"""NNI 3.0 as a peer searcher on NAS-Bench-201: its Random and RegularizedEvolution strategies on its NB201 space.

Run the way NNI benchmarks its own strategies (microsoft/nni, test/algo/nas/benchmark/test_algo.py): the space is
`BenchmarkModelSpace` over NNI's NB201 space (`NasBench201Benchmark.default_space()`, the framework-free twin of
`nni.nas.hub.pytorch.NasBench201`: six `Categorical`s labelled `0_1 0_2 1_2 0_3 1_3 2_3`, "edge from node j to
node i", over none, skip_connect, conv_1x1, conv_3x3, avg_pool_3x3); the evaluator is NNI's `NasBench201Benchmark`
with its database query replaced by `value(cell_string)`; models run one by one in this process through
`SequentialExecutionEngine(max_model_count=trials)`. No network is built or trained, and no NNI manager, network
connection or GPU is needed. Both strategies deduplicate (NNI's default), so every trial is a new architecture.
RegularizedEvolution keeps NNI's defaults (population 100, tournament 25, mutation 0.05 a dimension); with the same
seed its first 100 trials are Random's first 100, since both draw them from `RandomState(seed)` the same way.

Needs `pip install nni==3.0 "peewee<4"`: `nni.nas.benchmark` imports peewee 3's `playhouse.sqlite_ext` (nni 3.0 also
pins filelock<3.12 and typeguard<4.1.3; torch 2.14.1 works with both). Without pytorch-lightning, which NNI imports
for its PyTorch shortcuts but does not declare, NNI's default framework is set to "none" before `nni.nas` is first
imported.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from autokd.spaces.nb201 import EDGES, cell_string

STRATEGIES = ("random", "evolution")
#: NNI's op names where they differ from NAS-Bench-201's
NNI_TO_NB201 = {"conv_1x1": "nor_conv_1x1", "conv_3x3": "nor_conv_3x3"}


def cell_from_sample(sample: Mapping[str, str]) -> str:
    """The NB201 cell string of an NNI sample: label `[scope/]j_i` is node i's edge from node j."""
    ops: dict[tuple[int, int], str] = {}
    for label, op in sample.items():
        src, dst = label.rsplit("/", 1)[-1].split("_")
        ops[(int(dst), int(src))] = NNI_TO_NB201.get(op, op)
    if set(ops) != set(EDGES):
        raise ValueError(f"not a NAS-Bench-201 sample: {dict(sample)!r}")
    return cell_string(tuple(ops[edge] for edge in EDGES))


def _nni() -> tuple[Any, Any, Any, Any]:
    """NNI's top module and its nas benchmark, execution and strategy modules."""
    import nni

    if importlib.util.find_spec("pytorch_lightning") is None:
        nni.set_default_framework("none")  # else nni.nas.evaluator imports pytorch_lightning
    try:
        from nni.nas import benchmark, execution, strategy
    except (ImportError, NameError) as err:  # NameError: nni 3.0 runs `del peewee` after a failed import
        raise ImportError(f"NNI's NAS benchmark space needs peewee 3: pip install 'peewee<4' ({err})") from err
    return nni, benchmark, execution, strategy


def _evaluator(value: Callable[[str], float]) -> Any:
    """NNI's NB201 benchmark evaluator, scoring a sample by `value` of its cell string instead of a database query."""
    nni, benchmark, _, _ = _nni()

    class ValueBenchmark(benchmark.NasBench201Benchmark):
        def evaluate(self, sample: Mapping[str, str]) -> float:
            score = float(value(cell_from_sample(sample)))
            nni.report_final_result(score)
            return score

    return ValueBenchmark()


def _strategy(name: str, seed: int, kwargs: Mapping[str, Any]) -> Any:
    """NNI's Random ('random') or RegularizedEvolution ('evolution') strategy, seeded."""
    strategies = _nni()[3]
    if name == "random":
        return strategies.Random(seed=seed, **kwargs)
    if name == "evolution":
        return strategies.RegularizedEvolution(seed=seed, **kwargs)
    raise ValueError(f"unknown NNI strategy {name!r}: choose one of {', '.join(STRATEGIES)}")


@contextmanager
def _quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the `nni` logger's level for the block (NNI logs two INFO lines a trial)."""
    logger = logging.getLogger("nni")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def nni_search(value: Callable[[str], float], strategy: str, trials: int, seed: int, *,
               strategy_kwargs: Mapping[str, Any] | None = None) -> tuple[str, int]:
    """Run NNI's `strategy` ('random', 'evolution') for `trials` architectures scored by `value(cell)` (higher wins).

    Returns the best cell string NNI found and how many distinct architectures it evaluated (fewer than `trials`
    only if the strategy gave up finding a new one). `strategy_kwargs` go to the strategy (e.g. population_size)."""
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    search = _strategy(strategy, seed, strategy_kwargs or {})
    _, benchmark, execution, _ = _nni()
    engine = execution.SequentialExecutionEngine(max_model_count=trials)
    with _quiet():
        search(benchmark.BenchmarkModelSpace(_evaluator(value)), engine)
    ranked = list(search.list_models(sort=True))
    if not ranked:
        raise RuntimeError(f"NNI's {strategy} strategy evaluated no architecture")
    distinct = {cell_from_sample(model.sample) for model in engine.list_models()}
    return cell_from_sample(ranked[0].sample), len(distinct)
