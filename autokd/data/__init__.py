"""Datasets (folder, zip, CIFAR pickles, synthetic demo), the held-out search split, transforms."""

from autokd.data.datasets import ImageDataset, LabeledImages, LabeledView, load_data
from autokd.data.demo import synthetic_dataset
from autokd.data.meta import meta_features
from autokd.data.split import (
    SubsetImages,
    scoring_batch,
    scoring_indices,
    split_indices,
    stratified_subset,
    subset_data,
)
from autokd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDataset",
    "LabeledImages",
    "LabeledView",
    "SubsetImages",
    "eval_transform",
    "load_data",
    "meta_features",
    "scoring_batch",
    "scoring_indices",
    "split_indices",
    "stratified_subset",
    "subset_data",
    "synthetic_dataset",
    "train_transform",
]
