"""Top-1/top-5 accuracy and expected calibration error, accumulated as sums so processes can add them up."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from autokd.train.distributed import DistInfo, all_sum

ECE_BINS = 15


class ClassificationMeter:
    """Running sums for top-1, top-5 and a 15-bin reliability diagram (confidence = max softmax)."""

    def __init__(self, bins: int = ECE_BINS, device: torch.device | str = "cpu"):
        self.bins = bins
        # rows: count, correct top-1, correct top-5; then per bin: count, confidence sum, correct sum
        self.totals = torch.zeros(3, dtype=torch.float64, device=device)
        self.bin_sums = torch.zeros(3, bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        correct = hit[:, 0].double()
        conf = logits.softmax(dim=1).max(dim=1).values.double()
        self.totals[0] += len(labels)  # a Python number: no host-device copy per batch
        self.totals[1:] += torch.stack([correct.sum(), hit.any(dim=1).double().sum()]).to(self.totals.device)
        # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 goes to the first bin
        which = (conf * self.bins).ceil().long().clamp(1, self.bins) - 1
        ones = torch.ones_like(conf)
        for row, values in enumerate((ones, conf, correct)):
            self.bin_sums[row].index_add_(0, which.to(self.bin_sums.device), values.to(self.bin_sums.device))

    def reduce(self, info: DistInfo) -> ClassificationMeter:
        """Sum the counts over all processes (in place)."""
        all_sum(info, self.totals)
        all_sum(info, self.bin_sums)
        return self

    def result(self) -> Metrics:
        n = float(self.totals[0])
        if n == 0:
            return Metrics(0.0, 0.0, 0.0, 0)
        count, conf, correct = self.bin_sums
        ece = float((conf - correct).abs().sum() / n)  # sum_b |B_b|/n * |conf_b - acc_b|
        return Metrics(100.0 * float(self.totals[1]) / n, 100.0 * float(self.totals[2]) / n, ece, int(n))


@dataclass(frozen=True)
class Metrics:
    """Top-1 and top-5 accuracy in percent, expected calibration error (0..1), and the number of images."""

    top1: float
    top5: float
    ece: float
    count: int


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, info: DistInfo, *, channels_last: bool = False,
             autocast_dtype: torch.dtype | None = None) -> Metrics:
    """Accuracy and calibration of `model` over `loader` (each process its shard), summed over processes."""
    was_training = model.training
    model.eval()
    meter = ClassificationMeter(device=info.device)
    device = info.device
    for batch in loader:
        images, labels = batch[0], batch[1]
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        meter.update(logits, labels)
    model.train(was_training)
    return meter.reduce(info).result()
