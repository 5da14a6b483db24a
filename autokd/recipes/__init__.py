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
from autokd.recipes.recipe import (
    CNN_SPACES,
    FEATURE_PARAMS,
    LOSS_PARAMS,
    PRESETS,
    Recipe,
    default_recipe,
    list_presets,
    load_recipe,
)

__all__ = [
    "CNN_SPACES",
    "FEATURE_PARAMS",
    "LOSS_PARAMS",
    "PRESETS",
    "FeatureCapture",
    "FeatureProjector",
    "KDLoss",
    "QKVCapture",
    "Recipe",
    "build_loss",
    "default_recipe",
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
