"""AutoFormer-like ViT space: depth, embed_dim, per-layer heads and MLP ratio, patch size, pooling.

Models are timm VisionTransformers whose blocks are timm Blocks with per-layer heads and MLP ratios. The head
width is either fixed (AutoFormer's 64: a layer's attention width is heads * 64, independent of embed_dim) or
`split` (embed_dim / heads as in timm and DeiT; only head counts dividing embed_dim are valid).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn as nn
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from autokd.errors import AutokdError
from autokd.spaces.choice import ChoiceSpace, ListGene, per_layer_label
from autokd.spaces.spec import ArchSpec, register_label


@functools.cache
def fixed_head_attention(head_dim: int) -> type[Attention]:
    """timm's Attention with the per-head width pinned to `head_dim` (timm's Block cannot pass it through)."""

    class FixedHeadAttention(Attention):
        def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any):
            super().__init__(dim, num_heads=num_heads, attn_head_dim=head_dim, **kwargs)

    FixedHeadAttention.__name__ = FixedHeadAttention.__qualname__ = f"Attention{head_dim}"
    return FixedHeadAttention


@torch.no_grad()
def init_vit_(model: VisionTransformer) -> None:
    """timm's default ViT init, fast: its trunc_normal_(std=.02) truncates at +-2 (100 std), so normal_ draws
    the same distribution; other modules get their PyTorch default init."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    nn.init.normal_(model.pos_embed, std=0.02)
    if model.cls_token is not None:
        nn.init.normal_(model.cls_token, std=1e-6)
    model.weight_init_mode = ""  # what a later model.init_weights() would use, as for a timm-built ViT


class VitSpace(ChoiceSpace):
    name = "vit"
    family = "vit"
    options = ("depth", "embed_dim", "heads", "mlp_ratio", "head_dim", "patch_size", "token_grid", "pool")

    def __init__(self, config: dict[str, Any], img_size: int):
        super().__init__(config, img_size)
        depth = self.option("depth", list(range(4, 15)))
        grid = self.option("token_grid", [4, 24])
        if len(grid) != 2 or not all(isinstance(g, int) for g in grid):
            raise AutokdError(f"search space {self.name!r}: `token_grid` must be [min, max] tokens per side")
        low, high = grid
        # A patch size must divide the image, and give a token grid that is neither trivial nor huge.
        patches = tuple(
            p
            for p in self.option("patch_size", [4, 8, 14, 16, 32])
            if img_size % p == 0 and low <= img_size // p <= high
        )
        self.scalars = {
            "depth": depth,
            "embed_dim": self.option("embed_dim", list(range(192, 449, 32))),
            "head_dim": self.option("head_dim", 64, typed=False),  # an int or `split`, checked below
            "patch_size": patches,
            "pool": self.option("pool", ["token", "avg"]),
        }
        for hd in self.scalars["head_dim"]:
            if hd != "split" and not (isinstance(hd, int) and hd > 0):
                raise AutokdError(
                    f"search space {self.name!r}: `head_dim` must be `split` or a positive int, got {hd!r}"
                )
        for pool in self.scalars["pool"]:
            if pool not in ("token", "avg"):
                raise AutokdError(
                    f"search space {self.name!r}: `pool` must be `token` or `avg`, got {pool!r}"
                )
        heads = self.option("heads", list(range(2, 8)))
        if "split" in self.scalars["head_dim"]:
            bad = [d for d in self.scalars["embed_dim"] if not any(d % h == 0 for h in heads)]
            if bad:
                raise AutokdError(
                    f"search space {self.name!r}: with head_dim `split`, no head count in {list(heads)} "
                    f"divides embed_dim {bad}; change `heads` or `embed_dim`"
                )
        n = max(depth)
        self.lists = [
            ListGene("heads", "heads", (heads,) * n, length="depth"),
            ListGene(
                "mlp_ratio", "mlp_ratio", (self.option("mlp_ratio", [2.0, 2.5, 3.0, 3.5, 4.0]),) * n, "depth"
            ),
        ]
        register_label(self.name, self.label)

    def suits(self) -> bool:
        return bool(self.scalars["patch_size"])

    def repair(self, genes: dict[str, Any]) -> dict[str, Any]:
        if genes["head_dim"] != "split":
            return genes
        # Split heads: move each head count to the nearest one that divides embed_dim (ties: fewer heads).
        valid = [h for h in self.lists[0].choices[0] if genes["embed_dim"] % h == 0]
        heads = tuple(h if h in valid else min(valid, key=lambda v: (abs(v - h), v)) for h in genes["heads"])
        return {**genes, "heads": heads}

    def build(self, spec: ArchSpec, num_classes: int) -> nn.Module:
        heads, ratios, head_dim = spec["heads"], spec["mlp_ratio"], spec["head_dim"]
        attn_layer = Attention if head_dim == "split" else fixed_head_attention(head_dim)

        def block_fn(*, dim: int, depth: int, num_heads: int, mlp_ratio: float, **kwargs: Any) -> Block:
            # VisionTransformer passes the layer index as `depth`: use it for the per-layer genes.
            return Block(dim=dim, num_heads=heads[depth], mlp_ratio=ratios[depth], depth=depth, **kwargs)

        token = spec["pool"] == "token"
        # Built on the meta device and initialised once below: timm's own init (PyTorch's default init, then a
        # slow truncated normal over it) takes most of the build time.
        model = VisionTransformer(
            img_size=self.img_size,
            patch_size=spec["patch_size"],
            num_classes=num_classes,
            global_pool=spec["pool"],
            class_token=token,
            embed_dim=spec["embed_dim"],
            depth=spec["depth"],
            num_heads=heads[0],
            block_fn=block_fn,
            attn_layer=attn_layer,
            weight_init="skip",
            device="meta",
        )
        model.to_empty(device="cpu")
        init_vit_(model)
        return model

    def macs(self, spec: ArchSpec, num_classes: int) -> int:
        d, p = spec["embed_dim"], spec["patch_size"]
        patches = (self.img_size // p) ** 2
        n = patches + (spec["pool"] == "token")
        total = patches * d * 3 * p * p  # patch embedding conv
        for h, r in zip(spec["heads"], spec["mlp_ratio"]):
            a = d if spec["head_dim"] == "split" else h * spec["head_dim"]
            hidden = int(d * r)
            total += 2 * 5 * n * d  # two LayerNorms (fvcore: 5 per element)
            total += n * d * 3 * a + 2 * n * n * a + n * a * d  # qkv, q@k and attn@v, projection
            total += 2 * n * d * hidden  # MLP
        total += (
            5 * (n if spec["pool"] == "token" else 1) * d
        )  # final norm on all tokens, or fc_norm on the pool
        return total + d * num_classes

    def seed_genes(self) -> list[dict[str, Any]]:
        # DeiT-Ti and DeiT-S (12 layers, 3 / 6 heads of 64, MLP 4), and a 6-layer DeiT-Ti; the patch is the
        # one whose token grid is closest to DeiT's 14 x 14.
        patch = min(self.scalars["patch_size"], key=lambda q: abs(self.img_size // q - 14), default=16)
        base = {"patch_size": patch, "pool": "token", "head_dim": 64}
        return [
            {**base, "depth": 12, "embed_dim": 192, "heads": (3,) * 12, "mlp_ratio": (4.0,) * 12},
            {**base, "depth": 6, "embed_dim": 192, "heads": (3,) * 6, "mlp_ratio": (4.0,) * 6},
            {**base, "depth": 12, "embed_dim": 384, "heads": (6,) * 12, "mlp_ratio": (4.0,) * 12},
        ]


# specs read back from a study or a top/*.yaml are named alike before a space is loaded
register_label(VitSpace.name, functools.partial(per_layer_label, per_layer=("heads", "mlp_ratio")))
