"""Gradient-based proxies (ZiCo, SNIP, Fisher, jacov): hand computations on tiny nets, the scoring contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.errors import AutokdError
from autokd.proxies.base import Probe, ScoringBatch
from autokd.proxies.gradient import GRADIENT_PROXIES, JACOV_EPS, jacov_score, zico_score
from autokd.proxies.reference import TeacherReference
from autokd.spaces.cifar_resnet import CifarResNet

NUM_CLASSES = 10
BY_NAME = {p.name: p for p in GRADIENT_PROXIES}


def make_batch(size: int, hw: int, seed: int = 0) -> ScoringBatch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, hw, hw, generator=generator)
    return ScoringBatch(images, torch.randint(0, NUM_CLASSES, (size,), generator=generator))


def probe(model: nn.Module, batch: ScoringBatch, seed: int = 0) -> Probe:
    ref = TeacherReference(torch.eye(batch.size), torch.zeros(NUM_CLASSES, 4), batch.labels.clone(), seed=seed)
    return Probe(model, batch, ref)


def score(name: str, model: nn.Module, batch: ScoringBatch) -> float:
    return BY_NAME[name](probe(model, batch))[name]


class MLP(nn.Module):
    """flatten -> Linear -> ReLU -> Linear: every gradient has a short closed form."""

    def __init__(self, d: int, hidden: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def mlp_by_hand(model: MLP, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward and backward of mean cross-entropy through the MLP, written out with the chain rule."""
    w1, b1, w2, b2 = (t.detach() for t in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias))
    x = images.flatten(1)
    pre = x @ w1.T + b1
    hidden = pre.clamp_min(0)
    z = hidden @ w2.T + b2
    dz = (z.softmax(1) - F.one_hot(labels, NUM_CLASSES).float()) / len(labels)
    dpre = (dz @ w2) * (pre > 0)
    return {"pre": pre, "z": z, "dz": dz, "dpre": dpre, "dw1": dpre.T @ x, "dw2": dz.T @ hidden}


# --- hand computations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 15])
def test_zico_matches_hand_computation_on_two_halves(size):
    batch = make_batch(size, 2)
    model = MLP(12)
    half = size // 2
    first = mlp_by_hand(model, batch.images[:half], batch.labels[:half])
    second = mlp_by_hand(model, batch.images[half:], batch.labels[half:])
    expected = 0.0
    for key in ("dw1", "dw2"):
        a, b = first[key].flatten().double(), second[key].flatten().double()
        # two samples: mean|g| = (|a| + |b|) / 2, population std = |a - b| / 2
        keep = a != b
        expected += math.log(float(((a.abs() + b.abs())[keep] / (a - b).abs()[keep]).sum()))
    assert score("zico", model, batch) == pytest.approx(expected, rel=1e-5)


def test_zico_score_equals_the_authors_numpy_formula():
    generator = torch.Generator().manual_seed(1)
    grads = [[torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)] for _ in range(3)]
    grads[1][0][0, 0] = grads[0][0][0, 0] = grads[2][0][0, 0]  # an entry with std 0 is left out
    dead = [[torch.zeros(2, 2)] for _ in range(3)]  # a layer with no gradient adds nothing

    def caculate_zico(per_batch):  # SLDGroup/ZiCo ZeroShotProxy/compute_zico.py, per layer
        total = 0.0
        for layer in zip(*per_batch):
            g = np.array([x.flatten().numpy().astype(np.float64) for x in layer])
            std, mean_abs = np.std(g, axis=0), np.mean(np.abs(g), axis=0)
            nonzero = np.nonzero(std)[0]
            tmpsum = np.sum(mean_abs[nonzero] / std[nonzero])
            total += np.log(tmpsum) if tmpsum != 0 else 0.0
        return total

    assert zico_score(grads) == pytest.approx(caculate_zico(grads), rel=1e-12)
    assert zico_score([g + d for g, d in zip(grads, dead)]) == pytest.approx(caculate_zico(grads), rel=1e-12)
    assert zico_score(dead) == 0.0


def test_snip_matches_hand_computation():
    batch = make_batch(16, 2)
    model = MLP(12)
    grads = mlp_by_hand(model, batch.images, batch.labels)
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    expected = (w1 * grads["dw1"]).abs().sum() + (w2 * grads["dw2"]).abs().sum()
    assert score("snip", model, batch) == pytest.approx(float(expected), rel=1e-5)


def test_fisher_matches_hand_computation_on_linear_outputs():
    batch = make_batch(16, 2)
    model = MLP(12, hidden=8)
    by_hand = mlp_by_hand(model, batch.images, batch.labels)
    # per channel 0.5 * mean_B (act * dL/dact)^2 on each layer's output, weighted by the layer's fan-in
    fc1 = 0.5 * (by_hand["pre"] * by_hand["dpre"]).pow(2).mean(0).sum() * 12
    fc2 = 0.5 * (by_hand["z"] * by_hand["dz"]).pow(2).mean(0).sum() * 8
    assert score("fisher", model, batch) == pytest.approx(float(fc1 + fc2), rel=1e-5)


class PooledHead(nn.Module):
    """Conv (or a per-token Linear on pixels, ViT-like) -> mean over positions -> Linear."""

    def __init__(self, tokens: bool, width: int = 6):
        super().__init__()
        torch.manual_seed(2)
        self.tokens = tokens
        self.body = nn.Linear(3, width) if tokens else nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return F.linear(x.flatten(2).transpose(1, 2), self.body.weight, self.body.bias)  # (B, N, C)
        return F.conv2d(x, self.body.weight, self.body.bias, padding=1)  # (B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.body(x.flatten(2).transpose(1, 2)) if self.tokens else self.body(x)
        return self.fc(act.mean(1) if self.tokens else act.mean((2, 3)))


@pytest.mark.parametrize("tokens", [False, True], ids=["conv", "tokens"])
def test_fisher_sums_positions_per_channel(tokens):
    batch = make_batch(16, 4)
    model = PooledHead(tokens)
    with torch.no_grad():
        act = model.features(batch.images)
        pooled = act.mean(1) if tokens else act.mean((2, 3))
        z = pooled @ model.fc.weight.T + model.fc.bias
        dz = (z.softmax(1) - F.one_hot(batch.labels, NUM_CLASSES).float()) / batch.size
        dpooled = dz @ model.fc.weight
    # dL/dact = dpooled / positions at every position, so sum over positions of act * dL/dact = dpooled * pooled
    body = 0.5 * (dpooled * pooled).pow(2).mean(0).sum() * model.body.weight[0].numel()
    head = 0.5 * (z * dz).pow(2).mean(0).sum() * model.fc.in_features
    assert model.body.weight[0].numel() == (3 if tokens else 27)
    assert score("fisher", model, batch) == pytest.approx(float(body + head), rel=1e-5)


def eval_score(jacobians: np.ndarray) -> float:
    """zero-cost-nas foresight/pruners/measures/jacob_cov.py eval_score, on numpy."""
    corrs = np.corrcoef(jacobians)
    v, _ = np.linalg.eig(corrs)
    return float(np.real(-np.sum(np.log(v + JACOV_EPS) + 1.0 / (v + JACOV_EPS))))


def test_jacov_matches_hand_jacobians_and_the_reference_formula():
    batch = make_batch(8, 4)
    model = MLP(48, hidden=16)
    with torch.no_grad():
        by_hand = mlp_by_hand(model, batch.images, batch.labels)
        # d(sum_k z_k)/dx_i = ((1^T W2) * relu'(pre_i)) W1
        jacobians = (model.fc2.weight.sum(0) * (by_hand["pre"] > 0)) @ model.fc1.weight
    expected = eval_score(jacobians.double().numpy())
    assert jacov_score(jacobians) == pytest.approx(expected, rel=1e-9)
    assert score("jacov", model, batch) == pytest.approx(expected, rel=1e-4)


def test_jacov_of_a_linear_net_has_a_closed_form():
    # every image has the same Jacobian (the column sums of W): eigenvalues B once and 0 (B - 1) times
    batch = make_batch(8, 4)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, NUM_CLASSES))
    b, k = batch.size, JACOV_EPS
    expected = -(math.log(b + k) + 1 / (b + k)) - (b - 1) * (math.log(k) + 1 / k)
    assert score("jacov", model, batch) == pytest.approx(expected, rel=1e-9)
    assert jacov_score(torch.ones(4, 6)) == float("-inf")  # constant rows have no correlation


# --- the scoring contract on real students ---------------------------------------------------------------


def cifar_resnet() -> nn.Module:
    torch.manual_seed(0)
    return CifarResNet((1, 1, 1), (8, 16, 16), num_classes=NUM_CLASSES)


def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=32, patch_size=4, depth=2, embed_dim=64,
        num_heads=1,
    )


@pytest.mark.parametrize("make", [cifar_resnet, vit], ids=["cifar_resnet", "vit"])
def test_runs_on_students_finite_deterministic_and_leaves_model_untouched(make):
    with torch.inference_mode():  # scoring may be called, with a batch made, inside inference mode
        batch = make_batch(16, 32)
    model = make().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.inference_mode():
        first = {k: v for p in GRADIENT_PROXIES for k, v in p(probe(model, batch)).items()}
    second = {k: v for p in GRADIENT_PROXIES for k, v in p(probe(model, batch)).items()}
    assert first == second
    assert set(first) == {"zico", "snip", "fisher", "jacov"}
    assert all(math.isfinite(v) for v in first.values()), first
    assert first["snip"] > 0 and first["fisher"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


def test_proxies_are_named_and_keyed():
    assert [(p.name, p.outputs) for p in GRADIENT_PROXIES] == [
        ("zico", ("zico",)), ("snip", ("snip",)), ("fisher", ("fisher",)), ("jacov", ("jacov",))
    ]


# --- models they cannot read -----------------------------------------------------------------------------


class NoLayers(nn.Module):
    """A classifier with a bare weight matrix and no Conv/Linear module."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(NUM_CLASSES, 48, generator=torch.Generator().manual_seed(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1)) @ self.weight.T


def test_models_without_weight_layers_raise_an_error_naming_the_proxy():
    batch = make_batch(8, 4)
    for name in ("zico", "snip", "fisher"):
        with pytest.raises(AutokdError, match=f"'{name}' reads the gradients of Conv/Linear weights"):
            score(name, NoLayers(), batch)
    assert math.isfinite(score("jacov", NoLayers(), batch))  # jacov needs only input gradients


def test_labels_beyond_the_model_classes_raise_an_error_naming_the_proxy():
    batch = make_batch(8, 4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    for name in ("zico", "snip", "fisher"):
        with pytest.raises(AutokdError, match=f"'{name}': labels run from"):
            score(name, model, batch)
