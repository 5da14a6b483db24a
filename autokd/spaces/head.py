"""timm's head methods for the CIFAR-style CNNs: global average pooling, then one linear classifier."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PooledLinearHead:
    """forward / forward_head / get_classifier / reset_classifier for a module with `forward_features`,
    `num_features` and a linear classifier in the attribute named by `head_attr`."""

    head_attr = "classifier"
    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_attr)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh `num_classes` classifier, as timm's models offer."""
        self.num_classes = num_classes
        setattr(self, self.head_attr, nn.Linear(self.num_features, num_classes))
