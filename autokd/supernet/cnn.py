"""The `cifar_resnet` supernet (OFA-style): per stage, a subnet keeps the first blocks and the leading channels.

The store is the CIFAR ResNet of the container spec (each stage at its largest depth and width, shortcut B
when any subnet uses it); every weight of a subnet is the leading block of the store's weight of the same name.
Shortcut A is parameter-free, so subnets of either shortcut share everything else.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from autokd.spaces import ArchSpec
from autokd.spaces.choice import ChoiceSpace
from autokd.supernet.base import Supernet, envelope, lead


def cnn_container(space: ChoiceSpace, specs: Iterable[ArchSpec]) -> ArchSpec:
    """The smallest `cifar_resnet` spec that holds every spec of `specs` as a slice."""
    top = envelope(specs)
    shortcut = "B" if "B" in top["shortcut"] else "A"
    return ArchSpec.make(space.name, depths=top["depths"], widths=top["widths"], shortcut=shortcut)


class CifarResNetSupernet(Supernet):
    """Sliced per-stage depths and widths of the CIFAR ResNet space."""

    def __init__(self, space: ChoiceSpace, container: ArchSpec, num_classes: int):
        super().__init__(space, container, num_classes)
        self.store = space.build(container, num_classes)
        self._weights = dict(self.store.named_parameters())

    def contains(self, spec: ArchSpec) -> bool:
        c = self.container
        return (all(a <= b for a, b in zip(spec["depths"], c["depths"]))
                and all(a <= b for a, b in zip(spec["widths"], c["widths"]))
                and (spec["shortcut"] == "A" or c["shortcut"] == "B"))

    def source(self, key: str, spec: ArchSpec, shape: torch.Size) -> Tensor:
        return lead(self._weights[key], shape)
