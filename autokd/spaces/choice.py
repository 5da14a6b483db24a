"""ChoiceSpace: a search space whose genes each take one value from a list, with the generic machinery
(flat Optuna params, sampling, mutation, smallest spec, seeds, MAC cache) shared by all spaces.

A gene is a scalar (`embed_dim`) or a per-layer / per-stage list (`heads`, `widths`). A list gene is stored in
the spec as a tuple and flattened into one Optuna param per position (`heads_0`, `heads_1`, ...); a list whose
length follows a depth gene keeps only its first `depth` entries in the spec. Genes with a single choice are
fixed: they are in every spec (so a spec alone describes the model) but are not Optuna params.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import optuna

from autokd.errors import AutokdError
from autokd.spaces.base import SearchSpace
from autokd.spaces.spec import ArchSpec

_MAX_MUTATION_TRIES = 1000


@dataclass(frozen=True)
class ListGene:
    """A per-layer or per-stage gene: `choices[i]` lists the values allowed at position i."""

    name: str
    param: str
    choices: tuple[tuple[Any, ...], ...]
    #: the scalar gene that holds the number of positions in use (None: all positions are used)
    length: str | None = None


def gene_changes(a: ArchSpec, b: ArchSpec) -> int:
    """How many genes differ: one per scalar, one per differing position of a list (over the shorter one)."""
    changes = 0
    for key, value in a.genes:
        other = b[key]
        if isinstance(value, tuple):
            changes += sum(x != y for x, y in zip(value, other))
        else:
            changes += value != other
    return changes


def _fmt(value: Any) -> str:
    return str([*value] if isinstance(value, tuple) else value).replace(" ", "")


def per_layer_label(spec: ArchSpec, per_layer: tuple[str, ...]) -> str:
    """The genes of `spec` in one line (what `spec.short()` shows after the space name): macro genes as
    `name=value`, each per-layer gene as the range of its layers' values, e.g. `depth=12 ... heads/layer=2-7`."""
    macro = [f"{k}={_fmt(v)}" for k, v in spec.genes if k not in per_layer]
    layers = []
    for name in per_layer:
        values = spec.get(name)
        if values:
            low, high = min(values), max(values)
            layers.append(f"{name}/layer={low}" if low == high else f"{name}/layer={low}-{high}")
    return " ".join([*macro, *layers])


def _distribution(choices: tuple[Any, ...]) -> optuna.distributions.BaseDistribution:
    # Evenly spaced integers are ordinal (TPE models them as such); anything else is categorical.
    if len(choices) > 1 and all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
        values = sorted(choices)
        step = values[1] - values[0]
        if step > 0 and all(b - a == step for a, b in zip(values, values[1:])):
            return optuna.distributions.IntDistribution(values[0], values[-1], step=step)
    return optuna.distributions.CategoricalDistribution(list(choices))


def _leaf(default: Any) -> Any:
    """The first plain value of a default: a scalar, a list, or a list of per-stage lists."""
    while isinstance(default, (list, tuple)):
        default = default[0]
    return default


def _same_kind(value: Any, like: Any) -> bool:
    """Whether a YAML value has the kind of the default `like`; numbers must be positive."""
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(like, bool) and isinstance(value, bool)
    if isinstance(like, int):
        return isinstance(value, int) and value > 0
    if isinstance(like, float):
        return isinstance(value, (int, float)) and value > 0
    return isinstance(value, type(like))


class ChoiceSpace(SearchSpace):
    """A SearchSpace of categorical genes; subclasses set `scalars` and `lists` and implement build/macs."""

    family: str

    def __init__(self, config: dict[str, Any], img_size: int):
        super().__init__(config, img_size)
        self.scalars: dict[str, tuple[Any, ...]] = {}
        self.lists: list[ListGene] = []
        self._flat_choices: dict[str, tuple[Any, ...]] | None = None
        self._macs_cache: dict[tuple[ArchSpec, int], int] = {}
        self._smallest: ArchSpec | None = None

    # ---- reading the YAML ----------------------------------------------------------------------------
    def option(self, key: str, default: Any, typed: bool = True) -> tuple[Any, ...]:
        """The choices for `key`: a YAML list, or a single value meaning a fixed gene; with `typed`, each of the
        default's type (positive when it is a number)."""
        return self._check_choices(key, self.config.get(key, default), _leaf(default) if typed else None)

    def stage_option(self, key: str, default: Any, stages: int) -> tuple[tuple[Any, ...], ...]:
        """Per-stage choices for `key`: one list shared by all stages, or a list of `stages` lists."""
        value, like = self.config.get(key, default), _leaf(default)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
            if len(value) != stages:
                raise AutokdError(
                    f"search space {self.name!r}: `{key}` has {len(value)} per-stage lists, expected {stages}"
                )
            return tuple(self._check_choices(key, v, like) for v in value)
        return (self._check_choices(key, value, like),) * stages

    def _check_choices(self, key: str, value: Any, like: Any = None) -> tuple[Any, ...]:
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values or any(isinstance(v, (list, tuple, dict)) or v is None for v in values):
            raise AutokdError(
                f"search space {self.name!r}: `{key}` must be a value or a non-empty list, got {value!r}"
            )
        bad = next((v for v in values if like is not None and not _same_kind(v, like)), None)
        if bad is not None:
            kind = {bool: "true or false", int: "positive integers", float: "positive numbers"}.get(
                type(like), "names")
            raise AutokdError(f"search space {self.name!r}: `{key}` choices must be {kind}, got {bad!r}; fix it "
                              "in the YAML file")
        return values

    # ---- flat params ---------------------------------------------------------------------------------
    def choices(self) -> dict[str, tuple[Any, ...]]:
        """Every flat param (fixed ones included) with its allowed values."""
        if self._flat_choices is None:
            flat = dict(self.scalars)
            for gene in self.lists:
                flat.update({f"{gene.param}_{i}": c for i, c in enumerate(gene.choices)})
            empty = [k for k, v in flat.items() if not v]
            if empty:
                raise AutokdError(
                    f"search space {self.name!r} has no valid value for {empty} at {self.img_size} px; "
                    "widen those choices in its YAML"
                )
            self._flat_choices = flat
        return self._flat_choices

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {k: _distribution(v) for k, v in self.choices().items() if len(v) > 1}

    def _flat(self, spec: ArchSpec) -> dict[str, Any]:
        flat = {k: spec[k] for k in self.scalars}
        for gene in self.lists:
            values = spec[gene.name]
            for i in range(len(gene.choices)):
                # Positions past the depth in use repeat the last layer, so a deeper child copies it.
                flat[f"{gene.param}_{i}"] = values[min(i, len(values) - 1)]
        return flat

    def encode(self, spec: ArchSpec) -> dict[str, Any]:
        choices = self.choices()
        return {k: v for k, v in self._flat(spec).items() if len(choices[k]) > 1}

    def decode(self, params: dict[str, Any]) -> ArchSpec:
        flat = {}
        for key, options in self.choices().items():
            value = params.get(key, options[0] if len(options) == 1 else None)
            if value not in options:
                raise AutokdError(
                    f"search space {self.name!r}: param {key}={value!r} is not one of {list(options)}"
                )
            flat[key] = value
        genes: dict[str, Any] = {k: flat[k] for k in self.scalars}
        for gene in self.lists:
            n = genes[gene.length] if gene.length else len(gene.choices)
            genes[gene.name] = tuple(flat[f"{gene.param}_{i}"] for i in range(n))
        return ArchSpec.make(self.name, **self.repair(genes))

    def repair(self, genes: dict[str, Any]) -> dict[str, Any]:
        """Map a combination of choices onto a valid architecture (e.g. sort widths); identity by default."""
        return genes

    def active_params(self, spec: ArchSpec) -> list[str]:
        """Flat params that change the architecture of `spec` and have more than one choice."""
        names = [k for k, v in self.scalars.items() if len(v) > 1]
        for gene in self.lists:
            n = spec[gene.length] if gene.length else len(gene.choices)
            names += [f"{gene.param}_{i}" for i in range(n) if len(gene.choices[i]) > 1]
        return names

    # ---- naming and folding --------------------------------------------------------------------------
    def per_layer_genes(self) -> tuple[str, ...]:
        """The list genes whose length follows a depth gene (e.g. a ViT's per-layer heads and MLP ratios)."""
        return tuple(gene.name for gene in self.lists if gene.length)

    def macro_key(self, spec: ArchSpec) -> ArchSpec:
        """`spec` without its per-layer genes: every scalar gene and every per-stage list (length None), so
        specs that differ only in per-layer choices share one key."""
        per_layer = self.per_layer_genes()
        return ArchSpec(spec.space, tuple((k, v) for k, v in spec.genes if k not in per_layer))

    def label(self, spec: ArchSpec) -> str:
        """The genes of `spec` in one line, per-layer genes shown as ranges (`heads/layer=2-7`)."""
        return per_layer_label(spec, self.per_layer_genes())

    # ---- search operators ----------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> ArchSpec:
        return self.decode({k: rng.choice(v) for k, v in self.choices().items()})

    def mutate(self, spec: ArchSpec, rng: random.Random) -> ArchSpec:
        params = self._flat(spec)
        active = self.active_params(spec)
        if not active:
            raise AutokdError(f"search space {self.name!r} holds a single architecture: nothing to mutate")
        choices = self.choices()
        # Propose 1-2 changed params; a repair may undo or widen the change, so keep the first child that
        # differs from the parent in one or two genes.
        for _ in range(_MAX_MUTATION_TRIES):
            child_params = dict(params)
            for key in rng.sample(active, min(rng.choice((1, 2)), len(active))):
                child_params[key] = rng.choice([c for c in choices[key] if c != params[key]])
            child = self.decode(child_params)
            if 1 <= gene_changes(spec, child) <= 2:
                return child
        raise AutokdError(f"search space {self.name!r}: found no valid mutation of {spec}")

    def smallest(self) -> ArchSpec:
        if self._smallest is None:
            # Coordinate descent on the closed-form count: exact when MACs are monotone in each gene.
            params = {k: v[0] for k, v in self.choices().items()}
            best = self.estimate_macs(self.decode(params))
            improved = True
            while improved:
                improved = False
                for key, options in self.choices().items():
                    for value in options:
                        macs = self.estimate_macs(self.decode({**params, key: value}))
                        if macs < best:
                            params, best, improved = {**params, key: value}, macs, True
            self._smallest = self.decode(params)
        return self._smallest

    def seeds(self) -> list[ArchSpec]:
        seeds: list[ArchSpec] = []
        for genes in self.seed_genes():
            spec = self.snap(genes)
            if spec not in seeds:
                seeds.append(spec)
        return seeds

    def seed_genes(self) -> list[dict[str, Any]]:
        """Known-good architectures as gene dicts, before snapping to the space's choices."""
        return []

    def snap(self, genes: dict[str, Any]) -> ArchSpec:
        """The in-space spec nearest to `genes`: each value moves to its nearest choice (missing genes take
        the first choice)."""
        flat = {}
        for key, options in self.choices().items():
            flat[key] = _nearest(genes.get(key), options)
        for gene in self.lists:
            values = genes.get(gene.name) or ()
            for i, options in enumerate(gene.choices):
                value = values[min(i, len(values) - 1)] if values else None
                flat[f"{gene.param}_{i}"] = _nearest(value, options)
        return self.decode(flat)

    # ---- cost ----------------------------------------------------------------------------------------
    def estimate_macs(self, spec: ArchSpec, num_classes: int = 1000) -> int:
        """Closed-form MACs as fvcore counts them (batch 1), classifier for `num_classes` included."""
        key = (spec, num_classes)
        if key not in self._macs_cache:
            self._macs_cache[key] = int(self.macs(spec, num_classes))
        return self._macs_cache[key]

    @abstractmethod
    def macs(self, spec: ArchSpec, num_classes: int) -> int:
        """The uncached closed-form MAC count."""


def _nearest(value: Any, options: tuple[Any, ...]) -> Any:
    if value in options:
        return value
    numeric = [o for o in options if isinstance(o, (int, float)) and not isinstance(o, bool)]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and numeric:
        return min(numeric, key=lambda o: (abs(o - value), o))
    return options[0]
