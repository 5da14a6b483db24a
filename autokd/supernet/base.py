"""The weight-sharing supernet shared by every family: one store of the largest weights, subnets as leading slices.

A subnet runs as the space's own model (its `build`), called with `torch.func.functional_call` on slices of the
store, so the supernet's subnet and a stand-alone model loaded with `inherit(spec)` run the same code on the same
numbers, and gradients of any subnet land in the leading slice of the shared weights (AutoFormer's weight
entanglement, OFA's leading channels).

BatchNorm: a subnet always normalises with its batch statistics, and a stand-alone model gets running
statistics by recalibration on training images (`recalibrate_bn`). Slicing the largest net's running stats is
wrong for a subnet: channel c's statistics depend on every layer before it, which differ between subnets (OFA
and BigNAS recalibrate for this reason).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

from autokd.errors import AutokdError
from autokd.spaces import ArchSpec
from autokd.spaces.choice import ChoiceSpace

SKELETONS = 64  # built subnet models kept for reuse (they are small; building one costs ~5-30 ms)


def lead(tensor: Tensor, shape: Iterable[int]) -> Tensor:
    """The leading block of `tensor` with this shape (a view)."""
    shape = tuple(shape)
    if len(shape) != tensor.ndim or any(s > t for s, t in zip(shape, tensor.shape)):
        raise AutokdError(f"cannot slice a {tuple(tensor.shape)} supernet weight to {shape}: the subnet is "
                          "larger than the supernet")
    return tensor[tuple(slice(0, s) for s in shape)]


def envelope(specs: Iterable[ArchSpec]) -> dict[str, Any]:
    """The elementwise maximum of the numeric genes of `specs` (lists per position), and the set of values of
    the others."""
    out: dict[str, Any] = {}
    for spec in specs:
        for key, value in spec.genes:
            if isinstance(value, tuple):
                old = out.get(key, ())
                n = max(len(old), len(value))
                out[key] = tuple(max(v for v in (old[i:i + 1] + value[i:i + 1])) for i in range(n))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = max(out.get(key, value), value)
            else:
                out.setdefault(key, set()).add(value)
    if not out:
        raise AutokdError("a supernet needs at least one architecture to hold")
    return out


def batch_stats_only(model: nn.Module) -> nn.Module:
    """Make every BatchNorm of `model` normalise with batch statistics, in train and eval mode alike."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Recompute every BatchNorm's running statistics as the plain average over `batches` (OFA's recipe)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    seen = 0
    device = next(model.parameters()).device
    for images in batches:
        model(images.to(device))
        seen += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    if not seen:
        raise AutokdError("BatchNorm recalibration got no images: give at least one batch")
    return model


class Supernet(nn.Module, ABC):
    """A family's weight store plus the subnet machinery; `subnet(spec)` picks what `forward` runs."""

    def __init__(self, space: ChoiceSpace, container: ArchSpec, num_classes: int):
        super().__init__()
        self.space, self.container, self.num_classes = space, container, num_classes
        self.active: ArchSpec | None = None
        self._skeletons: OrderedDict[ArchSpec, nn.Module] = OrderedDict()

    # ---- what each family defines --------------------------------------------------------------------
    @abstractmethod
    def contains(self, spec: ArchSpec) -> bool:
        """Whether `spec` is a slice of this supernet."""

    @abstractmethod
    def source(self, key: str, spec: ArchSpec, shape: torch.Size) -> Tensor:
        """The slice of the store that is weight `key` (of this shape) of `spec`'s stand-alone model."""

    # ---- subnets -------------------------------------------------------------------------------------
    def check(self, spec: ArchSpec) -> ArchSpec:
        if spec.space != self.space.name or not self.contains(spec):
            raise AutokdError(f"{spec} is not a subnet of this supernet (largest {self.container}): sample "
                              "from the supernet's band")
        return spec

    def subnet(self, spec: ArchSpec) -> Supernet:
        """Make `spec` the subnet that `forward` runs; returns self."""
        self.active = self.check(spec)
        return self

    def skeleton(self, spec: ArchSpec) -> nn.Module:
        """`spec`'s model from the space's builder, BatchNorm on batch statistics; its own weights unused."""
        model = self._skeletons.pop(spec, None)
        if model is None:
            model = batch_stats_only(self.space.build(spec, self.num_classes))
            for p in model.parameters():
                p.requires_grad_(False)
        self._skeletons[spec] = model  # most recently used last
        while len(self._skeletons) > SKELETONS:
            self._skeletons.popitem(last=False)
        model.train(self.training)
        return model

    def sliced(self, spec: ArchSpec) -> dict[str, Tensor]:
        """Every parameter of `spec`'s stand-alone model as a slice of the store (gradients flow back)."""
        skeleton = self.skeleton(self.check(spec))
        return {k: self.source(k, spec, p.shape) for k, p in skeleton.named_parameters()}

    def forward_parts(self, x: Tensor, spec: ArchSpec | None = None) -> tuple[Tensor, Tensor]:
        """(forward_features output, logits) of `spec` (default: the active subnet)."""
        spec = spec or self.active
        if spec is None:
            raise AutokdError("no subnet is active: call supernet.subnet(spec) first")
        model = self.skeleton(spec)
        return functional_call(_Parts(model), {f"model.{k}": v for k, v in self.sliced(spec).items()}, (x,))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_parts(x)[1]

    # ---- stand-alone models --------------------------------------------------------------------------
    @torch.no_grad()
    def inherit(self, spec: ArchSpec, calibration: Iterable[Tensor] | None = None) -> dict[str, Tensor]:
        """The state dict of `spec`'s stand-alone model with its supernet weights (copies). BatchNorm running
        statistics are recalibrated on `calibration` batches when given, else left at their initial values."""
        return {k: v.detach().clone() for k, v in self.extract(spec, calibration).state_dict().items()}

    @torch.no_grad()
    def extract(self, spec: ArchSpec, calibration: Iterable[Tensor] | None = None) -> nn.Module:
        """`spec` built by the space's own builder and loaded with its slice of the supernet's weights."""
        model = self.space.build(self.check(spec), self.num_classes)
        state = model.state_dict()
        state.update({k: v.detach().clone() for k, v in self.sliced(spec).items()})
        model.load_state_dict(state)
        device = next(self.parameters()).device
        model.to(device)
        if calibration is not None:
            recalibrate_bn(model, calibration)
        return model.eval()

    def config(self) -> dict[str, Any]:
        """What rebuilds this supernet's shape (with `build_supernet`): space, resolution, classes, container."""
        return {"space": self.space.name, "space_config": self.space.config, "img_size": self.space.img_size,
                "num_classes": self.num_classes, "container": self.container.as_dict()}


class _Parts(nn.Module):
    """Calls timm's forward_features then forward_head, returning both (for feature losses)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.forward_features(x)
        return features, self.model.forward_head(features)
