"""MeCo, SWAP and Zen-score against hand computations, and the scoring contract on a CIFAR ResNet and a ViT."""

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
from autokd.proxies.activation import (
    ACTIVATION_PROXIES,
    MECO,
    SWAP,
    ZEN,
    meco_layer,
    unique_patterns,
    zen_score,
)
from autokd.proxies.base import Probe, ScoringBatch, reinit_
from autokd.spaces.cifar_resnet import CifarResNet

NUM_CLASSES = 10


def probe(model: nn.Module, batch: ScoringBatch, seed: int = 0) -> Probe:
    return Probe(model, batch, types.SimpleNamespace(seed=seed), cost=Cost(macs=1, params=1))


def make_batch(n: int = 16, size: int = 8, seed: int = 0) -> ScoringBatch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    return ScoringBatch(images, torch.randint(0, NUM_CLASSES, (n,), generator=generator))


def vit(depth: int = 2, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=NUM_CLASSES,
        img_size=32,
        patch_size=4,
        depth=depth,
        embed_dim=width,
        num_heads=max(1, width // 64),
    )


def cifar_resnet() -> nn.Module:
    torch.manual_seed(0)
    return CifarResNet(depths=(1, 1, 1), widths=(8, 16, 32))


class ConvNet(nn.Module):
    """conv -> BN -> ReLU (-> Dropout) -> mean -> fc, with timm's forward_features."""

    def __init__(self, width: int = 4):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(width, NUM_CLASSES)
        self.fc_act = nn.ReLU()  # a ReLU on 2-D input: SWAP skips it

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.bn(self.conv(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_act(self.fc(self.forward_features(x).mean((2, 3))))


def authors_meco_layer(output: torch.Tensor) -> float:
    """The authors' per-module MeCo: out[0].reshape(C, -1), corrcoef, NaN -> 0, smallest real eigenvalue."""
    feature = output[0].reshape(output.shape[1], -1)
    corr = torch.corrcoef(feature)
    corr[torch.isnan(corr)] = 0
    return float(torch.linalg.eig(corr)[0].real.min())


# --- MeCo ------------------------------------------------------------------------------------------------


def test_meco_by_hand():
    batch, model = make_batch(), ConvNet()
    with torch.no_grad():
        conv = F.conv2d(batch.images, model.conv.weight, model.conv.bias, padding=1)
        norm = F.batch_norm(conv, None, None, model.bn.weight, model.bn.bias, training=True)
        act = torch.relu(norm)
    # conv, BN and ReLU count; Dropout repeats ReLU's output; logits and the model (a container) do not count
    expected = sum(authors_meco_layer(t) for t in (conv, norm, act))
    assert MECO(probe(model, batch))["meco"] == pytest.approx(expected, abs=1e-5)
    # containers add nothing: the same layers inside a Sequential give the same score
    wrapped = nn.Sequential(model)
    assert MECO(probe(wrapped, batch))["meco"] == pytest.approx(expected, abs=1e-5)


def test_meco_layer_reads_token_channels_and_is_zero_when_rank_deficient():
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 10, 3, generator=generator)  # (B, N, C): 3 channels over 10 tokens
    expected = float(torch.linalg.eigvalsh(torch.corrcoef(tokens[0].T.double()))[0])
    assert meco_layer(tokens) == pytest.approx(expected, abs=1e-12)
    wide = torch.randn(1, 6, 2, 2, generator=generator)  # 6 channels over 4 positions: rank <= 3
    assert meco_layer(wide) == 0.0
    assert authors_meco_layer(wide) == pytest.approx(0.0, abs=1e-5)
    assert meco_layer(torch.randn(4, 10)) is None  # logits: no positions
    assert meco_layer(torch.randn(4, 10, 1, 1)) is None  # a pooled map: one position


# --- SWAP ------------------------------------------------------------------------------------------------


def test_swap_by_hand():
    coarse = make_batch(n=20, size=2)  # 2x2 images blown up to 8x8: neighbouring neurons share patterns
    batch = ScoringBatch(coarse.images.repeat_interleave(4, 2).repeat_interleave(4, 3), coarse.labels)
    model = ConvNet(width=3)
    images = batch.images[:16]  # SWAP reads the first 16 images
    with torch.no_grad():
        conv = F.conv2d(images, model.conv.weight, model.conv.bias, padding=1)
        act = torch.relu(F.batch_norm(conv, None, None, model.bn.weight, model.bn.bias, training=True))
    signs = torch.sign(act).reshape(16, -1)
    expected = torch.unique(signs.T, dim=0).size(0)  # the authors' count
    assert 1 < expected < signs.shape[1]
    assert SWAP(probe(model, batch))["swap"] == expected


def test_unique_patterns_counts_distinct_columns():
    generator = torch.Generator().manual_seed(3)
    for samples in (1, 5, 16, 39):
        signs = torch.randint(-1, 2, (samples, 300), generator=generator)
        signs[:, 100:200] = signs[:, :100]  # repeated patterns count once
        assert unique_patterns(signs) == torch.unique(signs.T, dim=0).size(0)
    with pytest.raises(AutokdError, match="'swap'"):
        unique_patterns(torch.zeros(40, 3))


def test_swap_reads_gelu_outputs_of_a_vit():
    model, batch = vit(depth=1, width=32), make_batch(size=32)
    outputs = []
    gelus = [m for m in model.modules() if isinstance(m, nn.GELU)]
    handles = [m.register_forward_hook(lambda m, a, out: outputs.append(out.reshape(16, -1))) for m in gelus]
    with torch.no_grad():
        model.eval()(batch.images)
    for handle in handles:
        handle.remove()
    expected = torch.unique(torch.sign(torch.cat(outputs, 1)).T, dim=0).size(0)
    assert SWAP(probe(model, batch))["swap"] == expected


# --- Zen-score -------------------------------------------------------------------------------------------


class PlainNet(nn.Module):
    """conv-BN-ReLU-conv(stride 2)-BN: Zen-NAS's plain (no residual) form."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean((2, 3))


def test_zen_score_by_hand():
    model, generator = PlainNet(), torch.Generator().manual_seed(4)
    reinit_(model, generator, "unit")
    x = torch.randn(8, 3, 8, 8, generator=generator)
    x_mix = x + 0.01 * torch.randn(8, 3, 8, 8, generator=generator)
    w1, w2 = model.conv1.weight.detach(), model.conv2.weight.detach()

    def forward(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = F.conv2d(inputs, w1, padding=1)
        c2 = F.conv2d(torch.relu(F.batch_norm(c1, None, None, training=True)), w2, stride=2, padding=1)
        return F.batch_norm(c2, None, None, training=True), c1, c2

    out, c1, c2 = forward(x)
    out_mix, c1_mix, c2_mix = forward(x_mix)
    change = (out - out_mix).abs().sum((1, 2, 3)).mean()
    bn_term = 0.0
    for first, second in ((c1, c1_mix), (c2, c2_mix)):
        var = 0.9 * (0.9 * 1.0 + 0.1 * first.var((0, 2, 3))) + 0.1 * second.var((0, 2, 3))  # momentum 0.1
        bn_term += math.log(math.sqrt(float(var.mean())))
    assert zen_score(model, x, x_mix) == pytest.approx(math.log(float(change)) + bn_term, rel=1e-5)


def test_zen_scores_a_gaussian_copy_on_seeded_inputs():
    model, batch = PlainNet(), make_batch()
    generator = torch.Generator().manual_seed(7)
    expected_model = copy.deepcopy(model)
    reinit_(expected_model, generator, "unit")
    assert float(expected_model.conv2.weight.detach().std()) == pytest.approx(1.0, abs=0.15)
    x = torch.randn(batch.images.shape, generator=generator)
    x_mix = x + 0.01 * torch.randn(batch.images.shape, generator=generator)
    assert ZEN(probe(model, batch, seed=7))["zen"] == pytest.approx(zen_score(expected_model, x, x_mix), rel=1e-6)


# --- the scoring contract --------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [cifar_resnet, vit], ids=["cifar_resnet", "vit"])
def test_finite_deterministic_and_the_model_untouched(make):
    model, batch = make(), make_batch(size=32)
    model(batch.images).sum().backward()  # a model with .grad fields, which scoring must leave alone
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    for proxy in ACTIVATION_PROXIES:
        if proxy is ZEN and make is vit:
            with pytest.raises(AutokdError, match="'zen'"):
                proxy(probe(model, batch))
            continue
        first = proxy(probe(model, batch))
        assert set(first) == set(proxy.outputs)
        assert all(math.isfinite(v) for v in first.values()), first
        with torch.inference_mode():
            assert proxy(probe(model, batch)) == first
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert model.training and torch.equal(torch.get_rng_state(), rng)


def test_models_without_what_a_proxy_reads_raise():
    class FunctionalNet(ConvNet):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.bn(self.conv(x)))

    model = FunctionalNet()
    model.act, model.fc_act = nn.Identity(), nn.Identity()
    with pytest.raises(AutokdError, match="'swap'"):
        SWAP(probe(model, make_batch()))
    with pytest.raises(AutokdError, match="'zen'"):
        ZEN(probe(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), make_batch()))
