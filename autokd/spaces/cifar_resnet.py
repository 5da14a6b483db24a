"""The 3-stage CIFAR ResNet of He et al. (2016) and its space: per-stage depth and width, shortcut A or B.

`CifarResNet` keeps the submodule names of the public pretrained CIFAR-10 ResNet-20..56 checkpoints
(conv1, bn1, layer1..3 of BasicBlocks with conv1/bn1/conv2/bn2[/shortcut], linear), so they load strictly.
Widths never decrease from stage to stage, for both shortcuts: option A zero-pads channels, so it cannot
narrow, and He et al.'s nets all widen. The space keeps them sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.errors import AutokdError
from autokd.spaces.choice import ChoiceSpace, ListGene
from autokd.spaces.head import PooledLinearHead
from autokd.spaces.resnet import conv_out
from autokd.spaces.spec import ArchSpec


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by `stride`, zero-pad the channels equally on both sides."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = ((planes - in_planes) // 2, planes - in_planes - (planes - in_planes) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # activations as modules, so hooks (NASWOT's binary codes) see them
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = ShortcutA(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(PooledLinearHead, nn.Module):
    """ResNet-(6n+2) for 32 px images, with timm's forward_features / forward_head / get_classifier."""

    head_attr = "linear"  # the checkpoints' name

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        shortcut: str = "A",
        num_classes: int = 10,
    ):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise AutokdError(f"CIFAR ResNet shortcut must be 'A' or 'B', got {shortcut!r}")
        if shortcut == "A" and any(b < a for a, b in zip(widths, widths[1:])):
            raise AutokdError(f"CIFAR ResNet widths must not decrease with shortcut A, got {list(widths)}")
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU()
        in_planes = widths[0]
        for stage, (depth, planes) in enumerate(zip(depths, widths)):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class CifarResNetSpace(ChoiceSpace):
    name = "cifar_resnet"
    family = "cifar_resnet"
    options = ("depths", "widths", "shortcut")

    def __init__(self, config: dict[str, Any], img_size: int):
        super().__init__(config, img_size)
        widths = self.option("widths", [8, 16, 24, 32, 48, 64, 96, 128])
        self.scalars = {"shortcut": self.option("shortcut", ["A", "B"])}
        if set(self.scalars["shortcut"]) - {"A", "B"}:
            raise AutokdError(f"search space {self.name!r}: `shortcut` choices must be A and/or B")
        self.lists = [
            ListGene("depths", "depth", self.stage_option("depths", list(range(1, 10)), 3)),
            # One width list for all stages, so that sorting a sampled triple keeps every value valid.
            ListGene("widths", "width", (widths,) * 3),
        ]

    def suits(self) -> bool:
        return self.img_size <= 64

    def repair(self, genes: dict[str, Any]) -> dict[str, Any]:
        return {**genes, "widths": tuple(sorted(genes["widths"]))}

    def build(self, spec: ArchSpec, num_classes: int) -> nn.Module:
        return CifarResNet(spec["depths"], spec["widths"], spec["shortcut"], num_classes)

    def macs(self, spec: ArchSpec, num_classes: int) -> int:
        h = self.img_size
        in_planes = spec["widths"][0]
        total = h * h * 3 * in_planes * 9 + 2 * h * h * in_planes  # stem conv + BatchNorm (2 per element)
        for stage, (depth, planes) in enumerate(zip(spec["depths"], spec["widths"])):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                h = conv_out(h, 3, stride, 1)
                a = h * h
                total += a * planes * (in_planes + planes) * 9 + 4 * a * planes
                if spec["shortcut"] == "B" and (stride != 1 or in_planes != planes):
                    total += a * in_planes * planes + 2 * a * planes
                in_planes = planes
        return total + h * h * in_planes + in_planes * num_classes  # global average pool and classifier

    def seed_genes(self) -> list[dict[str, Any]]:
        # ResNet-20, -32, -56 (n = 3, 5, 9 blocks per stage; widths 16, 32, 64; shortcut A).
        return [{"depths": (n,) * 3, "widths": (16, 32, 64), "shortcut": "A"} for n in (3, 5, 9)]
