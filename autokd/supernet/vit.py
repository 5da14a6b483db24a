"""The ViT supernet (AutoFormer's weight entanglement): prefix-sliced embed dim, heads, MLP ratio and depth.

The store holds the blocks of the container spec (its largest depth, embed dim, per-layer attention and MLP
widths), one shared final LayerNorm (timm's `norm` for class-token pooling, `fc_norm` for average pooling),
the class token and head, and per patch size its own patch projection and position table (with a class-token
slot; average pooling skips it). A subnet's layer i is the leading slice of the store's block i: its first
`embed_dim` inputs, its first `heads * head_dim` rows of each of Q, K and V, its first `int(embed_dim * ratio)`
MLP units.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch import Tensor

from autokd.errors import AutokdError
from autokd.spaces import ArchSpec
from autokd.spaces.choice import ChoiceSpace
from autokd.supernet.base import Supernet, envelope, lead


def vit_container(space: ChoiceSpace, specs: Iterable[ArchSpec]) -> ArchSpec:
    """The smallest ViT spec (per-layer maxima, every patch size used) that holds every spec of `specs`."""
    specs = list(specs)
    head_dims = {s["head_dim"] for s in specs}
    if len(head_dims) != 1:
        raise AutokdError(f"a ViT supernet needs one head_dim, its specs have {sorted(map(str, head_dims))}: "
                          "fix head_dim in the space's YAML")
    (head_dim,), top = head_dims, envelope(specs)
    patches = tuple(sorted({s["patch_size"] for s in specs}))
    heads = (1,) * top["depth"] if head_dim == "split" else top["heads"]  # split: attention width = embed_dim
    return ArchSpec.make(space.name, depth=top["depth"], embed_dim=top["embed_dim"], heads=heads,
                         mlp_ratio=top["mlp_ratio"], head_dim=head_dim, patch_size=patches[0],
                         pool="token", patches=patches)


class VitSupernet(Supernet):
    """Sliced depth, embed dim, per-layer heads and MLP ratio; patch size and pooling as in the space."""

    def __init__(self, space: ChoiceSpace, container: ArchSpec, num_classes: int):
        super().__init__(space, container, num_classes)
        genes = {k: v for k, v in container.as_dict()["genes"].items() if k != "patches"}
        store = space.build(ArchSpec.make(space.name, **genes), num_classes)
        self.blocks, self.norm, self.head, self.cls_token = store.blocks, store.norm, store.head, store.cls_token
        dim = container["embed_dim"]
        self.proj = nn.ModuleDict()
        self.pos = nn.ParameterDict()
        for p in container["patches"]:
            self.proj[str(p)] = nn.Conv2d(3, dim, p, stride=p)  # timm's PatchEmbed init (PyTorch default)
            tokens = (space.img_size // p) ** 2 + 1
            self.pos[str(p)] = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self._weights = dict(self.named_parameters())

    def no_weight_decay(self) -> set[str]:
        """As timm's ViT: no weight decay on the class token and position tables."""
        return {"cls_token", *(f"pos.{p}" for p in self.pos)}

    def contains(self, spec: ArchSpec) -> bool:
        c = self.container
        if spec["head_dim"] != c["head_dim"] or spec["patch_size"] not in c["patches"]:
            return False
        if spec["depth"] > c["depth"] or spec["embed_dim"] > c["embed_dim"]:
            return False
        split = spec["head_dim"] == "split"
        return all((split or h <= hc) and r <= rc for h, r, hc, rc in
                   zip(spec["heads"], spec["mlp_ratio"], c["heads"], c["mlp_ratio"]))

    def source(self, key: str, spec: ArchSpec, shape: torch.Size) -> Tensor:
        p = str(spec["patch_size"])
        if key == "pos_embed":
            pos = self.pos[p] if spec["pool"] == "token" else self.pos[p][:, 1:]
            return lead(pos, shape)
        if key.startswith("patch_embed.proj."):
            return lead(self._weights[f"proj.{p}.{key.rsplit('.', 1)[1]}"], shape)
        if key.startswith("fc_norm."):  # average pooling normalises the pooled vector with the shared norm
            key = "norm." + key.split(".", 1)[1]
        if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
            full = self._weights[key]
            width, a = full.shape[0] // 3, shape[0] // 3
            return torch.cat([lead(full[j * width:(j + 1) * width], (a, *shape[1:])) for j in range(3)])
        return lead(self._weights[key], shape)
