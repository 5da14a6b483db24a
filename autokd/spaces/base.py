"""The interface every search space implements, and the YAML loading shared by all of them."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any

import optuna
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.spaces.spec import ArchSpec


class SearchSpace(ABC):
    """A family of student architectures at one input resolution: sample, mutate, encode/decode, build, estimate.

    Genes are encoded as a fixed-length flat dict of Optuna params (per-layer genes up to the maximum depth are
    always present; `decode` keeps only the layers in use), so every sampler sees one static search space.
    """

    name: str
    #: keys allowed in the YAML file, besides `name` and `family`
    options: tuple[str, ...] = ()
    #: `estimate_macs` is fvcore's count itself (held equal by a test), so budgets need no trace of the model
    exact_macs: bool = False

    def __init__(self, config: dict[str, Any], img_size: int):
        unknown = set(config) - set(self.options) - {"name", "family", "description"}
        if unknown:
            raise AutokdError(
                f"search space {config.get('name', self.name)!r}: unknown key(s) {sorted(unknown)}; "
                f"allowed: {sorted(self.options)}"
            )
        self.config = config
        self.name = config.get("name", self.name)
        self.img_size = img_size

    @abstractmethod
    def sample(self, rng: random.Random) -> ArchSpec:
        """A uniformly random spec from the space."""

    @abstractmethod
    def mutate(self, spec: ArchSpec, rng: random.Random) -> ArchSpec:
        """A copy of `spec` with one or two genes changed (never equal to `spec`)."""

    @abstractmethod
    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The Optuna distributions of the flat params, keyed by param name."""

    @abstractmethod
    def encode(self, spec: ArchSpec) -> dict[str, Any]:
        """Flat Optuna params for `spec` (all keys of `distributions`)."""

    @abstractmethod
    def decode(self, params: dict[str, Any]) -> ArchSpec:
        """The spec that flat params describe."""

    @abstractmethod
    def build(self, spec: ArchSpec, num_classes: int) -> nn.Module:
        """The PyTorch module; it has timm's forward_features / forward_head / get_classifier."""

    @abstractmethod
    def estimate_macs(self, spec: ArchSpec, num_classes: int = 1000) -> int:
        """A closed-form MAC count, for pre-filtering only (held within 2% of fvcore by a test; equal to it where
        `exact_macs`)."""

    @abstractmethod
    def smallest(self) -> ArchSpec:
        """The spec with the fewest MACs in the space."""

    def macro_key(self, spec: ArchSpec) -> Hashable:
        """What leaderboards fold on: specs with equal keys differ only in per-layer choices (default: the spec
        itself, nothing folds)."""
        return spec

    def seeds(self) -> list[ArchSpec]:
        """Known-good architectures of this family (scaled to the space), enqueued when they fit the budget."""
        return []

    def suits(self) -> bool:
        """Whether the space makes sense at its input resolution."""
        return True
