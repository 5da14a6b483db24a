"""KD recipes: the Recipe value with its presets, and the loss catalogue it draws from."""

from autokd.recipes.feature_losses import (
    FeatureCapture,
    FeatureProjector,
    QKVCapture,
    fitnet_loss,
    minilm_loss,
)
from autokd.recipes.logit_losses import (
    dist_loss,
    dkd_loss,
    dkd_warmup,
    kd_loss,
    nkd_loss,
    probs_to_logits,
    standardize,
    topk_to_probs,
)
from autokd.recipes.losses import KDLoss, build_loss, feature_tap
from autokd.recipes.recipe import FEATURE_PARAMS, LOSS_PARAMS, PRESETS, Recipe, list_presets, load_recipe

__all__ = [
    "FEATURE_PARAMS",
    "LOSS_PARAMS",
    "PRESETS",
    "FeatureCapture",
    "FeatureProjector",
    "KDLoss",
    "QKVCapture",
    "Recipe",
    "build_loss",
    "dist_loss",
    "dkd_loss",
    "dkd_warmup",
    "feature_tap",
    "fitnet_loss",
    "kd_loss",
    "list_presets",
    "load_recipe",
    "minilm_loss",
    "nkd_loss",
    "probs_to_logits",
    "standardize",
    "topk_to_probs",
]
