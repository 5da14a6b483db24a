"""Translate between ArchSpecs of several spaces and one flat dict of Optuna params."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from autokd.spaces import ArchSpec, SearchSpace

SPACE_PARAM = "space"


class SpecCodec:
    """Params are `space` plus `<space>.<gene>` for the genes of that space (a conditional search space)."""

    def __init__(self, spaces: dict[str, SearchSpace]):
        self.spaces = spaces

    def distributions(self) -> dict[str, BaseDistribution]:
        dists: dict[str, BaseDistribution] = {SPACE_PARAM: CategoricalDistribution(list(self.spaces))}
        for name, space in self.spaces.items():
            dists.update({f"{name}.{k}": d for k, d in space.distributions().items()})
        return dists

    def encode(self, spec: ArchSpec) -> dict[str, Any]:
        params = self.spaces[spec.space].encode(spec)
        return {SPACE_PARAM: spec.space, **{f"{spec.space}.{k}": v for k, v in params.items()}}

    def decode(self, params: dict[str, Any]) -> ArchSpec:
        name = params[SPACE_PARAM]
        prefix = f"{name}."
        return self.spaces[name].decode({k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)})

    def is_complete(self, params: dict[str, Any]) -> bool:
        """Whether `params` hold every gene of their space."""
        name = params.get(SPACE_PARAM)
        if name not in self.spaces:
            return False
        return all(f"{name}.{k}" in params for k in self.spaces[name].distributions())

    def trial_spec(self, trial: FrozenTrial) -> ArchSpec | None:
        """The trial's architecture: its `spec` user attr (written in one step), its params, or the params it was
        queued with; None while its params are still being written one by one."""
        if "spec" in trial.user_attrs:
            return ArchSpec.from_dict(trial.user_attrs["spec"])
        for params in (trial.params, trial.system_attrs.get("fixed_params", {})):
            if self.is_complete(params):
                return self.decode(params)
        return None

    def suggest(self, trial: optuna.Trial) -> ArchSpec:
        """Ask the trial (and so its sampler) for every param of one space, and decode them."""
        name = trial.suggest_categorical(SPACE_PARAM, list(self.spaces))
        params = {SPACE_PARAM: name}
        for key, dist in self.spaces[name].distributions().items():
            params[f"{name}.{key}"] = _suggest(trial, f"{name}.{key}", dist)
        return self.decode(params)


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"unsupported distribution {dist!r}")


def holds_spec(trial: FrozenTrial) -> bool:
    """Whether the trial keeps its architecture from being proposed again: queued, running, complete, over budget,
    or failed by its own error. A trial killed with its worker does not (it is retried), nor one skipped as a
    duplicate or as surplus to the target."""
    if trial.state == TrialState.FAIL:
        return "error" in trial.user_attrs
    if trial.state == TrialState.PRUNED:
        return "skipped" not in trial.user_attrs
    return True
