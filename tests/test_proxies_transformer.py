"""TF-TAS DSS against the authors' procedure written out on a copy of the net (in-place |W|, .grad)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.proxies.base import Probe, ScoringBatch
from autokd.proxies.reference import teacher_reference
from autokd.proxies.transformer import DSS, TRANSFORMER_PROXIES, linear_roles
from autokd.spaces.cifar_resnet import CifarResNet

NUM_CLASSES = 10


def vit(depth: int = 2, width: int = 64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=32, patch_size=4, depth=depth,
        embed_dim=width, num_heads=max(1, width // 64),
    )


@pytest.fixture(scope="module")
def batch() -> ScoringBatch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    return ScoringBatch(images, torch.randint(0, NUM_CLASSES, (8,), generator=generator))


@pytest.fixture(scope="module")
def ref(batch):
    return teacher_reference(CifarResNet((1, 1, 1), (8, 8, 8)), batch.images, batch.labels)


def dss_by_hand(model: nn.Module) -> float:
    """The authors' steps on a copy: |.| of the state in place, eval, ones image, sum(logits).backward()."""
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for value in net.state_dict().values():
            value.abs_()
    net(torch.ones(1, 3, 32, 32)).sum().backward()
    nuclear = torch.linalg.matrix_norm
    total = 0.0
    with torch.no_grad():
        for block in net.blocks:
            for layer in (block.attn.qkv, block.attn.proj):  # synaptic diversity of the MSA weights
                total += float(nuclear(layer.weight.grad, "nuc") * nuclear(layer.weight, "nuc"))
            for layer in (block.mlp.fc1, block.mlp.fc2):  # synaptic saliency of the MLP weights
                total += float((layer.weight.grad * layer.weight).abs().sum())
        return total + 2 * float((net.head.weight.grad * net.head.weight).abs().sum())  # the head, counted twice


def test_dss_equals_the_authors_procedure(batch, ref):
    model = vit(depth=2, width=64)
    assert DSS(Probe(model, batch, ref))["dss"] == pytest.approx(dss_by_hand(model), rel=1e-5)


def test_dss_of_one_linear_attention_by_hand(batch, ref):
    # a net whose output is W2 |W1| x: the MSA term is nuc(dR/dW1) nuc(|W1|) with dR/dW1 = (1^T |W2|)^T 1^T
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(3, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.qkv(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = Attention(), nn.Linear(4, NUM_CLASSES, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x.mean((2, 3))))

        def get_classifier(self) -> nn.Module:
            return self.head

    net = Net()
    w1, w2 = net.attn.qkv.weight.detach().abs(), net.head.weight.detach().abs()
    grad_w1 = torch.outer(w2.sum(0), torch.ones(3))  # input: the all-ones image, pooled to ones(3)
    hidden = w1 @ torch.ones(3)
    expected = float(torch.linalg.matrix_norm(grad_w1, "nuc") * torch.linalg.matrix_norm(w1, "nuc"))
    expected += 2 * float((torch.outer(torch.ones(NUM_CLASSES), hidden) * w2).sum())
    assert DSS(Probe(net, batch, ref))["dss"] == pytest.approx(expected, rel=1e-5)


def test_dss_runs_on_a_vit_and_leaves_it_untouched(batch, ref):
    model = vit(depth=4, width=64).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        first = DSS(Probe(model, batch, ref))
    assert first == DSS(Probe(model, batch, ref)) and set(first) == {"dss"}
    assert torch.isfinite(torch.tensor(first["dss"])) and first["dss"] > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert DSS(Probe(vit(depth=4, width=128), batch, ref))["dss"] > first["dss"]  # wider: more synapses
    assert TRANSFORMER_PROXIES == (DSS,)


def test_linear_roles_of_a_timm_vit():
    attention, other, head = linear_roles(vit(depth=2))
    assert attention == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert other == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    assert head == "head"


def test_dss_refuses_a_cnn(batch, ref):
    with pytest.raises(AutokdError, match="'dss' reads attention blocks"):
        DSS(Probe(CifarResNet((1, 1, 1), (8, 16, 16)), batch, ref))
    with pytest.raises(AutokdError, match="'dss'"):
        DSS(Probe(timm.create_model("resnet10t", num_classes=NUM_CLASSES), batch, ref))
