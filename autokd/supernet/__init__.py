"""AutoDistil for vision: K bands of MACs, one weight-sharing supernet each, sandwich KD training, and in-band
search of subnets scored with inherited weights (no retraining)."""

from autokd.supernet.bands import Band, BandSpace, space_bands, split_bands
from autokd.supernet.base import Supernet, recalibrate_bn
from autokd.supernet.build import band_supernet, rebuild_supernet, supernet_for
from autokd.supernet.cnn import CifarResNetSupernet
from autokd.supernet.select import (
    calibration_batches,
    heldout_targets,
    inherit,
    load_supernet,
    score_subnet,
    search_band,
)
from autokd.supernet.train import SupernetRun, sandwich_specs, sandwich_step, train_supernet
from autokd.supernet.vit import VitSupernet

__all__ = [
    "Band",
    "BandSpace",
    "CifarResNetSupernet",
    "Supernet",
    "SupernetRun",
    "VitSupernet",
    "band_supernet",
    "calibration_batches",
    "heldout_targets",
    "inherit",
    "load_supernet",
    "rebuild_supernet",
    "recalibrate_bn",
    "sandwich_specs",
    "sandwich_step",
    "score_subnet",
    "search_band",
    "space_bands",
    "split_bands",
    "supernet_for",
    "train_supernet",
]
