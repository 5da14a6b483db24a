"""Dataset meta-features for the recipe recommender (AutoDistiller's knowledge base)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from autokd.data.datasets import ImageDataset, Transform
from autokd.data.split import HELDOUT_FRACTION, SPLIT_SEED, split_indices, stratified_subset


def meta_features(data: ImageDataset, sample: int = 64, seed: int = 0) -> dict[str, Any]:
    """Classes, train size, resolution (median short side of a sample), class balance (min/max count)."""
    counts = Counter(data.train.labels)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(data.train), size=min(sample, len(data.train)), replace=False)
    short_sides = [min(data.train.open_image(int(i)).size) for i in picks]  # header only, no decode
    return {
        "num_classes": data.num_classes,
        "train_size": len(data.train),
        "resolution": int(np.median(short_sides)),
        "class_balance": min(counts.values()) / max(counts.values()),
        "is_real": data.is_real,
    }


#: the measured teacher features, all in [0, 1] except the entropy (nats)
TEACHER_FEATURES = ("teacher_acc", "teacher_entropy", "teacher_ece", "probe_acc")


@torch.inference_mode()
def teacher_meta_features(model: nn.Module, transform: Transform, data: ImageDataset, sample: int = 256,
                          seed: int = 0, device: str | torch.device = "cpu", bins: int = 15) -> dict[str, float]:
    """The teacher on a stratified sample of the held-out part of train: accuracy, mean predictive entropy,
    ECE, and the 2-fold accuracy of a linear probe on its pooled features (`forward_head(pre_logits=True)`)."""
    _, heldout = split_indices(data.train.labels, HELDOUT_FRACTION, SPLIT_SEED)
    labels = np.asarray(data.train.labels)
    picks = heldout[stratified_subset(labels[heldout], min(sample, len(heldout)), seed)]
    model = model.eval().to(device)
    logits, pooled = [], []
    for start in range(0, len(picks), 64):
        x = torch.stack([transform(data.train.load_image(int(i))) for i in picks[start:start + 64]]).to(device)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        pooled.append(feats.float().flatten(1).cpu())
        logits.append(model.get_classifier()(feats).float().cpu())
    probs = torch.cat(logits).softmax(1)
    y = torch.as_tensor(labels[picks])
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(conf, edges[1:-1])
    ece = sum(abs(float(conf[which == b].sum() - correct[which == b].sum())) for b in range(bins)) / len(y)
    entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(1).mean())
    return {"teacher_acc": float(correct.mean()), "teacher_entropy": entropy, "teacher_ece": ece,
            "probe_acc": _probe(torch.cat(pooled).numpy(), labels[picks], seed)}


def _probe(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Held-out accuracy of a logistic regression on half the sample, evaluated on the other half (and back)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    folds = min(2, int(np.bincount(labels).min()))
    if folds < 2:
        return float("nan")  # a class with one sampled image: no held-out half to score
    scores = []
    for fit, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        scaler = StandardScaler().fit(features[fit])
        clf = LogisticRegression(max_iter=300).fit(scaler.transform(features[fit]), labels[fit])
        scores.append(clf.score(scaler.transform(features[test]), labels[test]))
    return float(np.mean(scores))
