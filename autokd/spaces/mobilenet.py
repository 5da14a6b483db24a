"""MobileNet space: inverted-residual stages built by timm's EfficientNet builder (the MobileNetV2 layout).

A fixed stem and first depthwise-separable block, then six inverted-residual stages with strides
2, 2, 2, 1, 2, 1 whose depth, width, expansion ratio and depthwise kernel are searched per stage (as in
OFA's MobileNetV3 space), then a 1x1 head conv. `se` adds squeeze-excite to every inverted residual, and
`act` picks the activation (relu6 for MobileNetV2, hard_swish for a V3-like net).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.layers import get_act_layer, make_divisible
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet

from autokd.errors import AutokdError
from autokd.spaces.choice import ChoiceSpace, ListGene
from autokd.spaces.resnet import conv_out
from autokd.spaces.spec import ArchSpec

STRIDES = (2, 2, 2, 1, 2, 1)
# Defaults, as in autokd/search_spaces/mobilenet.yaml; MobileNetV2's stage widths are 24, 32, 64, 96, 160, 320.
WIDTHS = [[16, 24, 32], [24, 32, 40, 48], [48, 64, 80], [72, 96, 112, 128], [128, 160, 192], [192, 256, 320]]
SE_RATIO = 0.25


class MobileNetSpace(ChoiceSpace):
    name = "mobilenet"
    family = "mobilenet"
    options = ("stem_width", "first_width", "head_width", "act", "se", "depths", "widths", "expand", "kernel")

    def __init__(self, config: dict[str, Any], img_size: int):
        super().__init__(config, img_size)
        self.scalars = {
            "stem_width": self.option("stem_width", 32),
            "first_width": self.option("first_width", 16),
            "head_width": self.option("head_width", 1280),
            "act": self.option("act", "relu6"),
            "se": self.option("se", False),
        }
        for act in self.scalars["act"]:
            try:
                get_act_layer(act)
            except Exception as exc:
                raise AutokdError(
                    f"search space {self.name!r}: unknown `act` {act!r} (try relu6, hard_swish)"
                ) from exc
        n = len(STRIDES)
        self.lists = [
            ListGene("depths", "depth", self.stage_option("depths", [1, 2, 3, 4], n)),
            ListGene("widths", "width", self.stage_option("widths", WIDTHS, n)),
            ListGene("expand", "expand", self.stage_option("expand", [3, 4, 6], n)),
            ListGene("kernel", "kernel", self.stage_option("kernel", [3, 5, 7], n)),
        ]

    def suits(self) -> bool:
        return self.img_size >= 64

    def arch_def(self, spec: ArchSpec) -> list[list[str]]:
        """timm's block strings for `spec`, e.g. ['ir_r2_k3_s2_e6_c24']."""
        se = f"_se{SE_RATIO}" if spec["se"] else ""
        stages = [[f"ds_r1_k3_s1_c{spec['first_width']}"]]
        for depth, width, expand, kernel, stride in zip(
            spec["depths"], spec["widths"], spec["expand"], spec["kernel"], STRIDES
        ):
            stages.append([f"ir_r{depth}_k{kernel}_s{stride}_e{expand}_c{width}{se}"])
        return stages

    def build(self, spec: ArchSpec, num_classes: int) -> nn.Module:
        return EfficientNet(
            block_args=decode_arch_def(self.arch_def(spec)),
            num_classes=num_classes,
            num_features=spec["head_width"],
            stem_size=spec["stem_width"],
            fix_stem=True,
            act_layer=get_act_layer(spec["act"]),
        )

    def macs(self, spec: ArchSpec, num_classes: int) -> int:
        stem, first = spec["stem_width"], spec["first_width"]
        h = conv_out(self.img_size, 3, 2, 1)
        a = h * h
        # Stem conv, then the depthwise-separable block; every BatchNorm counts 2 per element in fvcore.
        total = a * 3 * stem * 9 + 2 * a * stem
        total += a * stem * 9 + 2 * a * stem + a * stem * first + 2 * a * first
        cin = first
        for depth, width, expand, kernel, stride in zip(
            spec["depths"], spec["widths"], spec["expand"], spec["kernel"], STRIDES
        ):
            for i in range(depth):
                s = stride if i == 0 else 1
                h_out = conv_out(h, kernel, s, kernel // 2)
                a_in, a_out = h * h, h_out * h_out
                mid = make_divisible(cin * expand)
                total += a_in * cin * mid + 2 * a_in * mid  # pointwise expansion
                total += a_out * mid * kernel * kernel + 2 * a_out * mid  # depthwise
                if spec["se"]:
                    # timm sizes the squeeze from the block input: round(mid * ratio / expand) channels.
                    total += 2 * mid * round(mid * (SE_RATIO / expand))
                total += a_out * mid * width + 2 * a_out * width  # pointwise projection
                cin, h = width, h_out
        head = spec["head_width"]
        a = h * h
        return total + a * cin * head + 2 * a * head + a * head + head * num_classes

    def seed_genes(self) -> list[dict[str, Any]]:
        v2 = {
            "depths": (2, 3, 4, 3, 3, 1),
            "widths": (24, 32, 64, 96, 160, 320),
            "expand": (6,) * 6,
            "kernel": (3,) * 6,
        }
        # MobileNetV3-Large's stage layout (kernels 3/5, widths 24-40-80-112-160) in this space's six stages.
        v3 = {
            "depths": (2, 3, 4, 2, 3, 1),
            "widths": (24, 40, 80, 112, 160, 192),
            "expand": (4, 3, 6, 6, 6, 6),
            "kernel": (3, 5, 3, 3, 5, 5),
        }
        # A MobileNetV2 at half depth, for small budgets.
        small = {**v2, "depths": (1, 2, 2, 2, 2, 1)}
        fixed = {k: self.scalars[k][0] for k in ("stem_width", "first_width", "head_width", "act", "se")}
        return [{**fixed, **genes} for genes in (v2, v3, small)]
