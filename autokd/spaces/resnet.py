"""ResNet space: timm ResNets with per-stage depths and widths, the block type and the stem width.

The stem is timm's deep 3x3 stem (ResNet-C: convs of stem_width, stem_width, 2 * stem_width channels), the
only timm stem whose width is configurable; the classic 7x7 stem is fixed at 64 channels.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from autokd.errors import AutokdError
from autokd.spaces.choice import ChoiceSpace, ListGene
from autokd.spaces.spec import ArchSpec

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
# Defaults, as in autokd/search_spaces/resnet.yaml: per-stage choices around ResNet-18/34/50's (2|3, 2|4, 2|6, 2|3)
# depths and (64, 128, 256, 512) widths, down to half width.
DEPTHS = [[1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [1, 2, 3]]
WIDTHS = [[24, 32, 48, 64], [48, 64, 96, 128], [96, 128, 192, 256], [192, 256, 384, 512]]


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution or pooling window."""
    return (size + 2 * padding - kernel) // stride + 1


class ResNetSpace(ChoiceSpace):
    name = "resnet"
    family = "resnet"
    options = ("block", "stem_width", "depths", "widths")

    def __init__(self, config: dict[str, Any], img_size: int):
        super().__init__(config, img_size)
        self.scalars = {
            "block": self.option("block", ["basic", "bottleneck"]),
            "stem_width": self.option("stem_width", [16, 24, 32]),
        }
        unknown = [b for b in self.scalars["block"] if b not in BLOCKS]
        if unknown:
            raise AutokdError(
                f"search space {self.name!r}: unknown `block` {unknown}; use basic or bottleneck"
            )
        self.lists = [
            ListGene("depths", "depth", self.stage_option("depths", DEPTHS, 4)),
            ListGene("widths", "width", self.stage_option("widths", WIDTHS, 4)),
        ]

    def suits(self) -> bool:
        return self.img_size >= 64

    def build(self, spec: ArchSpec, num_classes: int) -> nn.Module:
        return ResNet(
            block=BLOCKS[spec["block"]],
            layers=spec["depths"],
            channels=spec["widths"],
            stem_width=spec["stem_width"],
            stem_type="deep",
            num_classes=num_classes,
        )

    def macs(self, spec: ArchSpec, num_classes: int) -> int:
        stem = spec["stem_width"]
        h = conv_out(self.img_size, 3, 2, 1)
        area = h * h
        # Deep stem: three 3x3 convs with BatchNorm (fvcore counts an inference BatchNorm as 2 per element).
        total = area * (3 * stem * 9 + stem * stem * 9 + stem * 2 * stem * 9) + 2 * area * (
            stem + stem + 2 * stem
        )
        h = conv_out(h, 3, 2, 1)  # max pool
        inplanes = 2 * stem
        bottleneck = spec["block"] == "bottleneck"
        for stage, (depth, planes) in enumerate(zip(spec["depths"], spec["widths"])):
            out = planes * (4 if bottleneck else 1)
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                h_out = conv_out(h, 3, stride, 1)
                a_in, a_out = h * h, h_out * h_out
                if bottleneck:
                    total += a_in * inplanes * planes + 2 * a_in * planes
                    total += a_out * planes * planes * 9 + 2 * a_out * planes
                    total += a_out * planes * out + 2 * a_out * out
                else:
                    total += a_out * inplanes * planes * 9 + 2 * a_out * planes
                    total += a_out * planes * planes * 9 + 2 * a_out * planes
                if stride != 1 or inplanes != out:
                    total += a_out * inplanes * out + 2 * a_out * out  # 1x1 projection shortcut
                inplanes, h = out, h_out
        return total + h * h * inplanes + inplanes * num_classes  # global average pool and classifier

    def seed_genes(self) -> list[dict[str, Any]]:
        return [
            {"block": "basic", "stem_width": 32, "depths": (2, 2, 2, 2), "widths": (64, 128, 256, 512)},
            {"block": "basic", "stem_width": 16, "depths": (2, 2, 2, 2), "widths": (32, 64, 128, 256)},
            {"block": "basic", "stem_width": 32, "depths": (3, 4, 6, 3), "widths": (64, 128, 256, 512)},
            {"block": "bottleneck", "stem_width": 32, "depths": (3, 4, 6, 3), "widths": (64, 128, 256, 512)},
        ]
