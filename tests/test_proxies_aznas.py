"""AZ-NAS's four scores against hand computations, and the scoring contract on a CIFAR ResNet and a ViT."""

from __future__ import annotations

import copy
import math
import types

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.cost import Cost
from autokd.errors import AutokdError
from autokd.proxies.aznas import AZNAS, AZNAS_PROXIES, eigen_entropy, rademacher
from autokd.proxies.base import Probe, ScoringBatch, blocks, reinit_
from autokd.spaces.cifar_resnet import CifarResNet
from autokd.spaces.nb201 import NB201Network

NUM_CLASSES = 10


def probe(model: nn.Module, batch: ScoringBatch, seed: int = 0, macs: int = 123) -> Probe:
    return Probe(model, batch, types.SimpleNamespace(seed=seed), cost=Cost(macs=macs, params=1))


def make_batch(n: int = 8, size: int = 8, seed: int = 0) -> ScoringBatch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    return ScoringBatch(images, torch.randint(0, NUM_CLASSES, (n,), generator=generator))


def entropy_by_hand(rows: torch.Tensor) -> float:
    """The authors' expressivity of one feature: rows x channels, centred, covariance, eigen-entropy."""
    rows = rows.double() - rows.double().mean(0)
    s = torch.linalg.eigvalsh(rows.T @ rows / rows.shape[0])
    p = s / s.sum()
    return float(-(p * torch.log(p + 1e-8)).sum())


def trainability_by_hand(g_in_rows: torch.Tensor, g_out_rows: torch.Tensor) -> float:
    sigma = float(torch.linalg.svdvals(g_in_rows.double().T @ g_out_rows.double() / g_out_rows.shape[0]).max())
    return 2 - sigma - 1 / (sigma + 1e-6)


# --- a CNN: expressivity, progressivity and trainability with a resolution change -----------------------


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class BlockNet(nn.Module):
    """stem conv, then two blocks: 4 -> 4 channels at 8x8, 4 -> 8 channels down to 4x4."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(ConvBlock(4, 4, 1), ConvBlock(4, 8, 2))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean((2, 3))


def channel_rows(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def test_cnn_scores_by_hand():
    model, batch = BlockNet(), make_batch()
    # CNNs are scored on a Kaiming-normal (fan-in) copy, drawn from the reference seed, fed N(0, 1) noise shaped
    # like the batch (the authors' torch.randn input), then Rademacher vectors
    generator = torch.Generator().manual_seed(5)
    init = copy.deepcopy(model)
    reinit_(init, generator)
    noise = torch.randn(batch.images.shape, generator=generator)
    w1, w2 = init.blocks[0].conv.weight.detach(), init.blocks[1].conv.weight.detach()
    assert float(w2.std()) == pytest.approx(math.sqrt(2 / 36), rel=0.3)
    with torch.no_grad():
        stem = F.conv2d(noise, init.stem.weight, init.stem.bias, padding=1)
        h1 = torch.relu(F.conv2d(stem, w1, padding=1))
        h2 = torch.relu(F.conv2d(h1, w2, stride=2, padding=1))
    # the stem's output is the first feature, as in the authors' extract_cell_features
    e0, e1, e2 = (entropy_by_hand(channel_rows(h)) for h in (stem, h1, h2))
    g1, g2 = rademacher(h1, generator), rademacher(h2, generator)
    # d relu(conv(x)) / dx, transposed: mask by the ReLU, then the transposed convolution
    g_in1 = F.conv_transpose2d(g1 * (h1 > 0), w1, padding=1)
    g_in2 = F.conv_transpose2d(g2 * (h2 > 0), w2, stride=2, padding=1, output_padding=1)
    g_in2 = F.pixel_unshuffle(g_in2, 2)  # (B, 16, 4, 4) on the output's grid
    t1 = trainability_by_hand(channel_rows(g_in1), channel_rows(g1))
    t2 = trainability_by_hand(channel_rows(g_in2), channel_rows(g2))
    scores = AZNAS(probe(model, batch, seed=5))
    assert scores["az_expressivity"] == pytest.approx(e0 + e1 + e2, rel=1e-5)
    assert scores["az_progressivity"] == pytest.approx(min(e1 - e0, e2 - e1), rel=1e-4, abs=1e-6)
    assert scores["az_trainability"] == pytest.approx((t1 + t2) / 2, rel=1e-4)
    assert scores["az_complexity"] == 123.0


def test_scores_read_noise_not_the_batch_images():
    model, batch = BlockNet(), make_batch()
    other = ScoringBatch(batch.images.flip(0) * 3 + 1, batch.labels)
    assert AZNAS(probe(model, other)) == AZNAS(probe(model, batch))


# --- NAS-Bench-201: the authors' NB201 code (stem output first, identity cells -inf, nan -inf) ------------


def nb201_by_hand(model: nn.Module, shape: torch.Size, seed: int) -> tuple[float, float, float]:
    """The authors' NB201 compute_az_nas_score on the chained cell features of a re-initialised copy."""
    generator = torch.Generator().manual_seed(seed)
    init = copy.deepcopy(model).train()
    reinit_(init, generator)
    noise = torch.randn(shape, generator=generator)
    features = [init.stem(noise)]
    for cell in init.cells:  # 3 cells and the 2 stride-2 residual blocks between them
        features.append(cell(features[-1]))
    entropies = [entropy_by_hand(channel_rows(f.detach())) for f in features]
    grads_out = [rademacher(f, generator) for f in features[1:]]
    scores = []
    for f_in, f_out, g_out in zip(features, features[1:], grads_out):
        g_in = torch.autograd.grad(f_out, f_in, g_out, retain_graph=True)[0]
        if g_in.shape == g_out.shape and torch.equal(g_in, g_out):
            scores.append(-math.inf)
            continue
        if g_in.shape[2] != g_out.shape[2]:
            g_in = F.pixel_unshuffle(g_in, g_in.shape[2] // g_out.shape[2])
        scores.append(trainability_by_hand(channel_rows(g_in), channel_rows(g_out)))
    steps = [b - a for a, b in zip(entropies, entropies[1:])]
    values = (sum(entropies), min(steps), sum(scores) / len(scores))
    return tuple(-math.inf if math.isnan(v) else v for v in values)  # the authors' nan -> -inf


BEST_CELL = ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3")
MIXED_CELL = ("avg_pool_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_1x1", "none", "nor_conv_3x3")


@pytest.mark.parametrize("ops", [BEST_CELL, MIXED_CELL], ids=["best", "mixed"])
def test_nb201_scores_by_hand(ops):
    model, batch = NB201Network(ops, channels=4, cells=1), make_batch(n=16)
    expressivity, progressivity, trainability = nb201_by_hand(model, batch.images.shape, seed=3)
    scores = AZNAS(probe(model, batch, seed=3))
    assert len(blocks(model)) == 5  # the 3 InferCells and the 2 ResidualBlocks
    assert scores["az_expressivity"] == pytest.approx(expressivity, rel=1e-5)
    assert scores["az_progressivity"] == pytest.approx(progressivity, rel=1e-4, abs=1e-6)
    assert scores["az_trainability"] == pytest.approx(trainability, rel=1e-4)


def test_nb201_identity_cell_has_the_worst_trainability():
    # node 3 = skip(node 0) + none(node 1) + none(node 2): each cell passes its input on unchanged
    ops = ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "none", "none")
    model, batch = NB201Network(ops, channels=4, cells=1), make_batch(n=16)
    scores = AZNAS(probe(model, batch))
    assert scores["az_trainability"] == -math.inf == nb201_by_hand(model, batch.images.shape, seed=0)[2]
    assert math.isfinite(scores["az_expressivity"]) and math.isfinite(scores["az_progressivity"])


def test_nb201_zero_cell_has_the_worst_expressivity_and_progressivity():
    # an all-`none` cell outputs zeros: no variance, so no eigen-entropy (nan, read as -inf by the authors)
    model, batch = NB201Network(("none",) * 6, channels=4, cells=1), make_batch(n=16)
    scores = AZNAS(probe(model, batch))
    assert scores["az_expressivity"] == scores["az_progressivity"] == -math.inf
    assert math.isfinite(scores["az_trainability"])
    expressivity, progressivity, _ = nb201_by_hand(model, batch.images.shape, seed=0)
    assert expressivity == progressivity == -math.inf


# --- tokens (a ViT's blocks): no progressivity, identity blocks skipped ---------------------------------


class TokenBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class SkipBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TokenNet(nn.Module):
    def __init__(self, width: int = 6):
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.blocks = nn.Sequential(TokenBlock(width), SkipBlock(), TokenBlock(width))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(x.flatten(2).transpose(1, 2)))  # (B, H*W, C) tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(1)


def test_token_scores_by_hand():
    model, batch = TokenNet(), make_batch()
    w1, w3 = model.blocks[0].fc.weight.detach(), model.blocks[2].fc.weight.detach()  # no re-init: no convs
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(batch.images.shape, generator=generator)
    with torch.no_grad():
        tokens = model.embed(noise.flatten(2).transpose(1, 2))
        h1 = torch.tanh(tokens @ w1.T)
        h3 = torch.tanh(h1 @ w3.T)
    g1, g2, g3 = (rademacher(h, generator) for h in (h1, h1, h3))
    t1 = trainability_by_hand((g1 * (1 - h1**2) @ w1).flatten(0, 1), g1.flatten(0, 1))
    t3 = trainability_by_hand((g3 * (1 - h3**2) @ w3).flatten(0, 1), g3.flatten(0, 1))
    scores = AZNAS(probe(model, batch))
    # block outputs only (no embedding), the skip block's output counts
    entropies = [entropy_by_hand(h.flatten(0, 1)) for h in (h1, h1, h3)]
    assert scores["az_expressivity"] == pytest.approx(sum(entropies), rel=1e-5)
    assert math.isnan(scores["az_progressivity"])  # the authors define none for transformers
    assert scores["az_trainability"] == pytest.approx((t1 + t3) / 2, rel=1e-4)  # the identity block is skipped


def test_eigen_entropy_of_known_spectra():
    generator = torch.Generator().manual_seed(1)
    # C whitened channels (orthonormal centred columns): every eigenvalue equal, entropy log C
    centred = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    white = torch.linalg.qr(centred - centred.mean(0))[0]
    assert eigen_entropy(white[None].float()) == pytest.approx(math.log(4), abs=1e-4)
    # one channel repeated: a single non-zero eigenvalue, entropy 0
    rank_one = torch.randn(2, 1, 3, 3, generator=generator).repeat(1, 5, 1, 1)
    assert eigen_entropy(rank_one) == pytest.approx(0.0, abs=1e-6)


# --- the scoring contract --------------------------------------------------------------------------------


def cifar_resnet() -> nn.Module:
    torch.manual_seed(0)
    return CifarResNet(depths=(1, 1, 1), widths=(8, 16, 32))


def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=NUM_CLASSES,
        img_size=32,
        patch_size=4,
        depth=2,
        embed_dim=64,
        num_heads=1,
    )


@pytest.mark.parametrize("make", [cifar_resnet, vit], ids=["cifar_resnet", "vit"])
def test_finite_deterministic_and_the_model_untouched(make):
    model, batch = make(), make_batch(size=32)
    model(batch.images).sum().backward()  # a model with .grad fields, which scoring must leave alone
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    (proxy,) = AZNAS_PROXIES
    first = proxy(probe(model, batch))
    assert set(first) == set(proxy.outputs)
    finite = {k for k, v in first.items() if math.isfinite(v)}
    assert finite == set(first) - ({"az_progressivity"} if make is vit else set()), first
    with torch.inference_mode():
        again = proxy(probe(model, batch))
    assert again.keys() == first.keys()
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(again.values(), first.values()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert model.training and torch.equal(torch.get_rng_state(), rng)


def test_cnn_scores_depend_on_the_architecture_and_seed_not_the_build():
    batch = make_batch(size=32)
    first = AZNAS(probe(cifar_resnet(), batch))
    torch.manual_seed(1)
    other_build = AZNAS(probe(CifarResNet(depths=(1, 1, 1), widths=(8, 16, 32)), batch))
    assert other_build == first  # re-initialised from the reference seed
    assert AZNAS(probe(cifar_resnet(), batch, seed=1)) != first


def test_models_without_blocks_raise():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(AutokdError, match="'aznas'"):
        AZNAS(probe(model, make_batch()))
