"""What every proxy shares: the scoring batch, the scoring mode, one recorded forward pass, the Proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.cost import Cost, count_macs, count_params
from autokd.errors import AutokdError

if TYPE_CHECKING:
    from autokd.proxies.reference import TeacherReference

#: activations whose inputs give NASWOT's binary codes (unit is "on" when its pre-activation is > 0)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU)
#: class names of one block (residual unit) in autokd's spaces and timm: ViT Block, ResNet, MobileNet blocks,
#: NAS-Bench-201 cells
BLOCK_TYPES = ("Block", "BasicBlock", "Bottleneck", "InvertedResidual", "DepthwiseSeparableConv", "EdgeResidual",
               "UniversalInvertedResidual", "ConvNeXtBlock", "InferCell")
#: layers with weights that VKDNW and the layer-count baseline count
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in forward order: outermost modules whose class is in `BLOCK_TYPES` (or ends in 'Block')."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        name = type(module).__name__
        if module is not model and (name in BLOCK_TYPES or name.endswith("Block")):
            found.append(module)
            inside |= {id(m) for m in module.modules()}
    return found


def reinit_(model: nn.Module, generator: torch.Generator, scale: str = "kaiming") -> None:
    """Re-initialise in place, from `generator`: Conv2d/Linear weights N(0, s^2) with s = sqrt(2 / fan_in)
    ("kaiming": AZ-NAS) or 1 ("unit": Zen-NAS), zero biases, BatchNorm/GroupNorm weight 1 and bias 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                std = (2.0 / m.weight[0].numel()) ** 0.5 if scale == "kaiming" else 1.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Conv and Linear layers whose weight is trainable, in registration (forward) order."""
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS) and m.weight.requires_grad]


@dataclass(frozen=True, eq=False)
class ScoringBatch:
    """The one fixed labelled batch that every candidate of a search is scored on."""

    images: torch.Tensor  # (B, 3, H, W)
    labels: torch.Tensor  # (B,) class indices

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.dim() != 1 or len(self.images) != len(self.labels):
            raise AutokdError(
                f"scoring batch has images {tuple(self.images.shape)} and labels {tuple(self.labels.shape)}: "
                "pass images as (B, C, H, W) and labels as (B,) with the same B"
            )
        if len(self.labels) < 2:
            raise AutokdError("scoring batch needs at least 2 images: use a batch of 32-128")

    @property
    def size(self) -> int:
        return len(self.labels)


@contextmanager
def scoring_mode(model: nn.Module, batch_stats: bool, seed: int = 0) -> Iterator[None]:
    """Eval mode (no dropout), with BatchNorm on batch statistics when `batch_stats`; undone on exit.

    BatchNorm running statistics are restored afterwards and any randomness runs on a forked, seeded RNG, so
    scoring neither changes the model nor the caller's random stream.
    """
    training = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(b, b.clone()) for m in norms for b in m.buffers()]
    model.eval()
    if batch_stats:
        for m in norms:
            m.train()
    device = _device(model)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
    finally:
        for m, mode in training:
            m.training = mode
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@dataclass(frozen=True, eq=False)
class ForwardOutputs:
    """What one forward pass of a model on the scoring batch gives the proxies."""

    features: torch.Tensor  # the last feature map (B, C, H, W) or tokens (B, N, C)
    pooled: torch.Tensor  # h, what the classifier sees (B, C)
    logits: torch.Tensor  # (B, K)
    activation_kernel: torch.Tensor | None = None  # NASWOT's (B, B) code kernel, when recorded


def forward_outputs(model: nn.Module, images: torch.Tensor, record_codes: bool = False) -> ForwardOutputs:
    """Last feature map, pooled features and logits through timm's interface (call under no_grad)."""
    for method in ("forward_features", "forward_head", "get_classifier"):
        if not callable(getattr(model, method, None)):
            raise AutokdError(
                f"{type(model).__name__} has no {method}(): proxies need timm's forward_features, "
                "forward_head and get_classifier; build the model with timm or add those three methods"
            )
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise AutokdError(
            f"{type(model).__name__}.get_classifier() is {type(classifier).__name__}, not nn.Linear: "
            "build the model with num_classes > 0 and a linear head"
        )
    kernel = _ActivationKernel(len(images)) if record_codes else None
    handles = []
    if kernel is not None:
        handles = [m.register_forward_pre_hook(kernel) for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if kernel is not None and not handles:
        raise AutokdError(
            f"{type(model).__name__} has no ReLU/GELU/SiLU modules, so NASWOT has no codes to read: "
            "build activations as modules (timm does) or drop 'naswot'"
        )
    try:
        features = model.forward_features(images.to(_device(model)))
        pooled = model.forward_head(features, pre_logits=True)
        logits = classifier(pooled)
    finally:
        for handle in handles:
            handle.remove()
    return ForwardOutputs(features, pooled, logits, None if kernel is None else kernel.kernel)


class _ActivationKernel:
    """Accumulates NASWOT's K = c c^T + (1-c)(1-c)^T over every activation's binary code c (B x units)."""

    def __init__(self, batch_size: int):
        self.kernel = torch.zeros(batch_size, batch_size, dtype=torch.float64)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        codes = args[0].detach().flatten(1) > 0
        units = codes.shape[1]
        # 0/1 products sum exactly in float32 below 2^24 units (float64 beyond), unless autocast lowers them
        codes = codes.to(torch.float32 if units < 2**24 else torch.float64)
        with torch.autocast(codes.device.type, enabled=False):
            ones = codes.sum(1)
            # c c^T + (1-c)(1-c)^T = units - hamming distance = 2 c c^T - |c_i| - |c_j| + units
            layer = 2 * codes @ codes.T - ones[:, None] - ones[None, :] + units
        self.kernel = self.kernel.to(layer.device) + layer.double()


def classifier_grad(logits: torch.Tensor, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d(mean cross-entropy)/d(classifier weight), K x C, in closed form: (softmax(z) - onehot(y))^T h / B."""
    num_classes = logits.shape[1]
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise AutokdError(
            f"labels run from {int(labels.min())} to {int(labels.max())} but the model has {num_classes} "
            "classes: build teacher and students with num_classes equal to the dataset's"
        )
    labels = labels.to(logits.device)
    with torch.autocast(logits.device.type, enabled=False):
        error = logits.float().softmax(1) - F.one_hot(labels, num_classes).float()
        return error.T @ pooled.float() / len(labels)


def relation_gram(features: torch.Tensor) -> torch.Tensor:
    """The sample-relation Gram G = F F^T (B x B) of the flattened features, each row L2-normalised."""
    flat = features.flatten(1).float()
    with torch.autocast(flat.device.type, enabled=False):
        return F.normalize(flat @ flat.T, dim=1)


class Probe:
    """One candidate being scored: model, batch, teacher reference, and lazily its forward pass and cost.

    The forward pass (BatchNorm on batch statistics, no grad) runs at most once, shared by all proxies asked.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: ScoringBatch,
        ref: TeacherReference,
        cost: Cost | None = None,
        record_codes: bool = False,
    ):
        self.model, self.batch, self.ref = model, batch, ref
        self._cost, self._record_codes = cost, record_codes

    @cached_property
    def outputs(self) -> ForwardOutputs:
        with scoring_mode(self.model, batch_stats=True, seed=self.ref.seed), torch.inference_mode():
            return forward_outputs(self.model, self.batch.images, self._record_codes)

    @cached_property
    def cost(self) -> Cost:
        if self._cost is not None:
            return self._cost
        return Cost(count_macs(self.model, tuple(self.batch.images.shape[-2:])), count_params(self.model))


@dataclass(frozen=True)
class Proxy:
    """A training-free score: `score(probe)` returns its `outputs` keyed by name; higher is better."""

    name: str
    score: Callable[[Probe], dict[str, float]]
    outputs: tuple[str, ...]
    reads_activation_codes: bool = False
    reads_teacher: bool = False  # needs the teacher's reference (the search skips the teacher's forward otherwise)

    def __call__(self, probe: Probe) -> dict[str, float]:
        return self.score(probe)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device
