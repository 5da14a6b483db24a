"""The NAS-Bench-201 space (Dong & Yang, ICLR 2020): one 4-node cell of 6 edges, each one of 5 ops.

The network is built exactly as the benchmark builds it (NATS-Bench "tss", `TinyNetwork`): a 3x3 conv stem to C
channels + BN; three stages of N cells at C, 2C and 4C channels, joined by ResNet basic blocks of stride 2 (ReLU-
conv-BN twice, shortcut avg-pool 2x2 + 1x1 conv); BN, ReLU, global average pooling, a linear classifier. A node
sums its incoming edges; the cell's output is its last node. With C = 16, N = 5 and 10 classes the all-`none`
cell has 73,306 parameters and the all-3x3 cell 1,531,546, the benchmark's published range.

A spec's genes are its 6 edges in the order of the benchmark's cell string
`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` (node 1 from 0; node 2 from 0, 1; node 3 from 0, 1, 2), so a student
is looked up in the benchmark by `cell_string(spec)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.spaces.choice import ChoiceSpace, ListGene
from autokd.spaces.head import PooledLinearHead
from autokd.spaces.spec import ArchSpec, register_label

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (to node, from node) of each edge, in the cell string's order
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def cell_string(edges: ArchSpec | tuple[str, ...]) -> str:
    """The benchmark's cell string of a spec (or of its 6 edge ops)."""
    ops = edges["edges"] if isinstance(edges, ArchSpec) else edges
    nodes = ["|" + "|".join(f"{ops[i]}~{src}" for i, (dst, src) in enumerate(EDGES) if dst == node) + "|"
             for node in (1, 2, 3)]
    return "+".join(nodes)


def parse_cell(text: str) -> tuple[str, ...]:
    """The 6 edge ops of a cell string such as `|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|`."""
    ops: list[str] = []
    try:
        for node, part in enumerate(text.strip().split("+"), start=1):
            items = [p for p in part.split("|") if p]
            sources = [int(item.split("~")[1]) for item in items]
            if sources != list(range(node)):
                raise ValueError
            ops += [item.split("~")[0] for item in items]
    except (ValueError, IndexError):
        ops = []
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise AutokdError(f"cannot read NAS-Bench-201 cell {text!r}: write it as "
                          "|op~0|+|op~0|op~1|+|op~0|op~1|op~2| with ops from " + ", ".join(OPS))
    return tuple(ops)


def spec_from_cell(text: str, channels: int = 16, cells: int = 5) -> ArchSpec:
    """The `nb201` spec of a benchmark cell string (the benchmark's own network: 16 channels, 5 cells a stage)."""
    return ArchSpec.make("nb201", edges=parse_cell(text), channels=channels, cells=cells)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv (no bias) -> BN, the benchmark's conv op."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class Zero(nn.Module):
    """The `none` op: zeros of the input's shape (kept in the graph, as the benchmark does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int) -> nn.Module:
    """One edge op at `channels` in and out, stride 1."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    return ReLUConvBN(channels, channels, 1 if name == "nor_conv_1x1" else 3)


class InferCell(nn.Module):
    """The searched cell: node j sums op(node i) over its incoming edges; returns the last node."""

    def __init__(self, ops: tuple[str, ...], channels: int):
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for node in (1, 2, 3):
            nodes.append(sum(self.edges[i](nodes[src]) for i, (dst, src) in enumerate(EDGES) if dst == node))
        return nodes[-1]


class ResidualBlock(nn.Module):
    """The stride-2 ResNet basic block between stages."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(PooledLinearHead, nn.Module):
    """A NAS-Bench-201 network, with timm's forward_features / forward_head / get_classifier."""

    def __init__(self, ops: tuple[str, ...], channels: int = 16, cells: int = 5, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualBlock(c, 2 * c))
                c *= 2
            layers += [InferCell(ops, c) for _ in range(cells)]
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.num_features = c
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.lastact(self.cells(self.stem(x)))


class NB201Space(ChoiceSpace):
    """NAS-Bench-201's cell space: six edges, each one of `ops`; stem width `channels`, `cells` per stage."""

    name = "nb201"
    family = "nb201"
    options = ("ops", "channels", "cells")
    exact_macs = True  # tests/test_nb201.py holds `macs` to fvcore on every op

    def __init__(self, config: dict[str, Any], img_size: int):
        super().__init__(config, img_size)
        if img_size % 4:  # the stride-2 blocks' 2x2-pool shortcut and 3x3 conv disagree on odd map sizes
            raise AutokdError(f"search space {self.name!r} needs an image size divisible by 4 (the benchmark's is "
                              f"32), got {img_size}; give --img-size 32")
        ops = self.option("ops", list(OPS))
        unknown = set(ops) - set(OPS)
        if unknown:
            raise AutokdError(f"search space {self.name!r}: unknown op(s) {sorted(unknown)}; choose from {OPS}")
        self.scalars = {"channels": self.option("channels", 16), "cells": self.option("cells", 5)}
        self.lists = [ListGene("edges", "edge", (ops,) * len(EDGES))]
        register_label(self.name, _label)

    def suits(self) -> bool:
        return self.img_size <= 64

    def build(self, spec: ArchSpec, num_classes: int) -> nn.Module:
        return NB201Network(spec["edges"], spec["channels"], spec["cells"], num_classes)

    def macs(self, spec: ArchSpec, num_classes: int) -> int:
        h, c, n = self.img_size, spec["channels"], spec["cells"]
        total = h * h * (27 * c + 2 * c)  # stem conv + BN
        for stage in range(3):
            if stage:
                h2 = (h + 1) // 2
                a = h2 * h2
                # conv_a (3x3, stride 2) + BN, conv_b (3x3) + BN, shortcut 1x1 conv after a 2x2 avg-pool
                total += a * (18 * c * c + 36 * c * c + 2 * c * c + 8 * c)
                h, c = h2, 2 * c
            total += n * _cell_macs(spec["edges"], c, h * h)
        return total + h * h * 2 * c + h * h * c + c * num_classes  # last BN, global pool, classifier

    # No seed architectures: every known-good cell comes from the benchmark's own results, which a search on
    # this space is measured against.


def _cell_macs(ops: tuple[str, ...], c: int, area: int) -> int:
    # fvcore counts no MACs for avg_pool2d, the zero op's mul or an identity
    per_op = {"nor_conv_3x3": area * (9 * c * c + 2 * c), "nor_conv_1x1": area * (c * c + 2 * c)}
    return sum(per_op.get(op, 0) for op in ops)


def _label(spec: ArchSpec) -> str:
    return cell_string(spec)


register_label(NB201Space.name, _label)  # specs read back from a study are named even before a space is loaded
