"""VKDNW: the per-sample Jacobian, the Fisher matrix and the decile entropy against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.proxies import vkdnw
from autokd.proxies.base import Probe, ScoringBatch, weight_layers
from autokd.proxies.reference import teacher_reference
from autokd.proxies.vkdnw import (
    VKDNW,
    VKDNW_PROXIES,
    decile_entropy,
    fisher_information,
    reinitialised_copy,
    representative_jacobian,
    representatives,
)
from autokd.spaces.cifar_resnet import CifarResNet

NUM_CLASSES = 10


def vit(depth: int = 1, width: int = 32, img: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=img, patch_size=4, depth=depth,
        embed_dim=width, num_heads=2,
    )


class GainNet(nn.Module):
    """Conv (bias) - BN - in-place ReLU - LayerNorm - linear, plus a parameter the container itself reads."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor([1.5, 0.5]))
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x))) * self.gain[0]
        return self.fc(self.norm(x.mean((2, 3))))


@pytest.fixture(scope="module")
def batch() -> ScoringBatch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    return ScoringBatch(images, torch.randint(0, NUM_CLASSES, (8,), generator=generator))


@pytest.fixture(scope="module")
def ref(batch):
    return teacher_reference(CifarResNet((1, 1, 1), (8, 8, 8)), batch.images, batch.labels, seed=3)


def jacobian_by_hand(model: nn.Module, images: torch.Tensor, names: list[str]) -> torch.Tensor:
    """One autograd call per sample and class: d z_bk / d (element 0 of each parameter), as the authors define J."""
    model = model.eval().requires_grad_(True)
    params = [model.get_parameter(n) for n in names]
    rows = []
    for image in images:
        logits = model(image[None])[0]
        rows.append([[float(g.flatten()[0]) for g in torch.autograd.grad(z, params, retain_graph=True)]
                     for z in logits])
    return torch.tensor(rows)


@pytest.mark.parametrize(("make", "closed_forms_only"), [(GainNet, False), (lambda: vit(img=8), True)],
                         ids=["cnn", "vit"])
def test_jacobian_equals_per_sample_autograd(make, closed_forms_only, monkeypatch):
    # GainNet's gain[0] is read as a scalar, so it takes the forward-mode pass through the whole net; a timm
    # ViT needs none (closed forms for its layers, cls_token and pos_embed followed to the ops that read them)
    if closed_forms_only:
        monkeypatch.setattr(vkdnw, "_jvp_tangent", None)
    torch.manual_seed(1)
    original = make()
    model, names = reinitialised_copy(original), representatives(original)
    images = torch.randn(3, 3, 8, 8)
    jacobian, logits = representative_jacobian(model, images, names)
    expected = jacobian_by_hand(model, images, names)
    assert jacobian.shape == (3, NUM_CLASSES, len(names))
    assert torch.allclose(jacobian, expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().amax(dim=(0, 1)).gt(0).float().mean() > 0.6  # most representatives are felt
    with torch.no_grad():
        assert torch.allclose(logits, model(images), atol=1e-6)


def test_fisher_equals_the_authors_cholesky_form():
    # The authors multiply J by L with L L^T = diag(p) - p p^T (Theorem 1 of their reference); F is the same.
    generator = torch.Generator().manual_seed(2)
    jacobian = torch.randn(5, NUM_CLASSES, 7, generator=generator, dtype=torch.float64)
    logits = 3 * torch.randn(5, NUM_CLASSES, generator=generator, dtype=torch.float64)
    prob = 0.95 * logits.softmax(1) + 0.05 / NUM_CLASSES
    q = 1 - prob.cumsum(1)
    q[:, -1] = 0
    q_shift = torch.roll(q, 1, dims=1)
    q_shift[:, 0] = 1
    d = torch.sqrt(prob * q / q_shift)
    lower = torch.nan_to_num(-prob[:, :, None] / q[:, None, :], neginf=0.0)
    lower = torch.tril(lower, diagonal=-1) + torch.eye(NUM_CLASSES, dtype=torch.float64)
    lower = lower @ torch.diag_embed(d)
    covariance = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    assert torch.allclose(lower @ lower.transpose(1, 2), covariance, atol=1e-12)
    factored = lower.transpose(1, 2) @ jacobian
    expected = (factored.transpose(1, 2) @ factored).mean(0)
    assert torch.allclose(fisher_information(jacobian, logits), expected, atol=1e-10)


def test_decile_entropy_by_hand():
    spectrum = torch.tensor([0.0, 1e-6, 1e-3, 0.5, 2.0, 3.0, 10.0, 50.0, 200.0, 1e4, 2e4])
    deciles = np.quantile(spectrum.double().numpy(), np.arange(1, 10) / 10)  # linear interpolation, as torch
    share = deciles / (np.abs(deciles).sum() + 1e-10)
    assert decile_entropy(spectrum) == pytest.approx(-(share * np.log(share + 1e-10)).sum(), rel=1e-12)
    assert decile_entropy(torch.full((20,), 7.0)) == pytest.approx(math.log(9), rel=1e-9)  # flat: the maximum
    assert decile_entropy(torch.zeros(20)) == 0.0  # the authors' fallback spectrum


def test_vkdnw_score_by_hand(batch, ref):
    model = GainNet()
    with torch.random.fork_rng():  # the proxy re-initialises on a fork seeded with the reference's seed
        torch.manual_seed(ref.seed)
        clone = reinitialised_copy(model)
    names = representatives(model)
    jacobian = jacobian_by_hand(clone, batch.images, names).double()
    with torch.no_grad():
        logits = clone(batch.images).double()
    fisher = torch.zeros(len(names), len(names), dtype=torch.float64)
    for jac, z in zip(jacobian, logits):
        prob = 0.95 * z.softmax(0) + 0.05 / NUM_CLASSES
        fisher += jac.T @ (torch.diag(prob) - torch.outer(prob, prob)) @ jac / len(batch.images)
    eigenvalues = np.linalg.eigvalsh(fisher.numpy())
    share = np.quantile(eigenvalues, np.arange(1, 10) / 10)
    share = share / (np.abs(share).sum() + 1e-10)
    entropy = -(share * np.log(share + 1e-10)).sum()
    scores = VKDNW(Probe(model, batch, ref))
    assert scores["vkdnw_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert scores["vkdnw"] == pytest.approx(2 + entropy, rel=1e-4)  # conv + fc: two trainable layers


def test_reinitialised_copy_follows_the_authors_init():
    model = CifarResNet((1, 1, 1), (8, 16, 16))
    model.bn1.running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    clone = reinitialised_copy(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not clone.training and not any(p.requires_grad for p in clone.parameters())
    assert torch.equal(clone.bn1.weight, torch.ones(8)) and torch.equal(clone.bn1.running_mean, torch.zeros(8))
    assert torch.equal(clone.linear.bias, torch.zeros(NUM_CLASSES))
    big = nn.Linear(4000, 10)
    assert float(reinitialised_copy(big).weight.std()) == pytest.approx(math.sqrt(2 / 4000), rel=0.05)


@pytest.mark.parametrize(
    "make", [lambda: CifarResNet((1, 1, 1), (8, 16, 16)), lambda: vit(depth=2, width=32)], ids=["resnet", "vit"]
)
def test_vkdnw_runs_and_leaves_the_model_untouched(make, batch, ref):
    model = make().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.inference_mode():
        first = VKDNW(Probe(model, batch, ref))
    assert first == VKDNW(Probe(model, batch, ref))
    assert set(first) == {"vkdnw", "vkdnw_entropy"} == set(VKDNW.outputs)
    assert 0.0 < first["vkdnw_entropy"] <= math.log(9) + 1e-9
    assert first["vkdnw"] == pytest.approx(len(weight_layers(model)) + first["vkdnw_entropy"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert VKDNW_PROXIES == (VKDNW,)


def test_vkdnw_rejects_models_it_cannot_read(batch, ref):
    class Tokens(nn.Module):  # folds the tokens into the batch dimension, as window attention does
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(2).transpose(1, 2).reshape(-1, 3)).reshape(len(x), -1, NUM_CLASSES).mean(1)

    with pytest.raises(AutokdError, match="'vkdnw'.*batch dimension"):
        VKDNW(Probe(Tokens(), batch, ref))
    frozen = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, NUM_CLASSES)).requires_grad_(False)
    with pytest.raises(AutokdError, match="'vkdnw'"):
        VKDNW(Probe(frozen, batch, ref))
