"""Forward, feature-based zero-cost proxies: MeCo, SWAP and Zen-score.

Each reads the activations of one forward pass (two for Zen) and no labels; higher = better for each.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.proxies.base import Probe, Proxy, reinit_, scoring_mode

#: SWAP's number of samples: the authors' sign patterns are over 16 images
SWAP_SAMPLES = 16
#: Zen-score's perturbation scale (the authors' `mixup_gamma`)
ZEN_GAMMA = 1e-2
#: leaf modules whose output repeats their input (placeholders in timm models): MeCo does not count them twice
PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd)


def meco_layer(output: torch.Tensor) -> float | None:
    """The smallest eigenvalue of one layer's channel Pearson correlation on the first image, or None if undefined.

    `output` is (B, C, H, W) (channels over H*W positions) or ViT tokens (B, N, C) (channels over N tokens).
    Constant channels give NaN correlations, set to 0 as the authors do. With C >= positions the centred
    features have rank < C, so the smallest eigenvalue is exactly 0 (returned without an eigen-solve).
    """
    if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4) or not output.is_floating_point():
        return None
    first = output[0].detach()
    features = first.flatten(1) if output.dim() == 4 else first.T  # (channels, positions)
    channels, positions = features.shape
    if channels < 2 or positions < 2:
        return None
    if channels >= positions:
        return 0.0
    corr = torch.nan_to_num(torch.corrcoef(features.double()), nan=0.0, posinf=0.0, neginf=0.0)
    return float(torch.linalg.eigvalsh(corr)[0])


def _meco(probe: Probe) -> dict[str, float]:
    """MeCo (Jiang et al., NeurIPS 2023): sum over layers of the smallest eigenvalue of the channel correlation.

    Reference: HamsterMimi/MeCo @ 0d830dd2 : correlation/NAS_Bench_201.py `get_score` (the NATS-Bench run: one
    real image, a forward hook on every module, `out[0].reshape(C, -1)`, `torch.corrcoef`, NaN -> 0, smallest
    real eigenvalue, summed) and @ 3f6d16e7 : correlation/foresight/pruners/measures/meco.py (same, on a
    randn(1, 3, 64, 64) input). autokd's deviations:
    - only leaf modules count, not containers (a container's output repeats its last child's, so counting
      containers adds a bias towards deep nesting), nor pass-through placeholders (Identity, Dropout);
      outputs without two channels and two positions (logits, 1x1 maps) are skipped: they add exactly 0 there;
    - ViT tokens (B, N, C): channels are C, positions the N tokens (the authors' reshape would correlate
      tokens over channels);
    - the features are the first image's, but BatchNorm uses the statistics of the whole scoring batch (as
      every autokd proxy scores): one image cannot normalise a 1x1 map (timm ResNets at 32 px);
    - eigvalsh in float64 (the matrix is symmetric), and an exact 0 when C >= positions (rank-deficient).
    Layers whose width reaches their number of positions add 0, so small images make MeCo degenerate for wide
    layers (a ViT at 32 px, patch 4 has 65 tokens: every layer of width >= 65 adds 0).
    """
    model = probe.model
    values: list[float] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        value = meco_layer(output)
        if value is not None:
            values.append(value)

    leaves = [m for m in model.modules() if not any(m.children()) and not isinstance(m, PASS_THROUGH)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with scoring_mode(model, batch_stats=True, seed=probe.ref.seed), torch.no_grad():
            model(probe.batch.images.to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {"meco": float(sum(values))}


def pattern_codes(signs: torch.Tensor) -> torch.Tensor:
    """One int64 per column of `signs` (samples x neurons, values in {-1, 0, 1}): its B signs in base 3.

    Equal codes <=> equal columns, so counting distinct codes counts SWAP's distinct patterns exactly.
    """
    samples = signs.shape[0]
    if samples > 39:  # 3^39 < 2^63
        raise AutokdError(f"'swap' encodes at most 39 samples per neuron, got {samples}: use {SWAP_SAMPLES}")
    codes = torch.zeros(signs.shape[1], dtype=torch.int64, device=signs.device)
    for i in range(samples):
        codes += (signs[i].to(torch.int64) + 1) * 3**i
    return codes


def unique_patterns(signs: torch.Tensor) -> int:
    """SWAP's count: the number of distinct columns (per-neuron patterns) of `signs` (samples x neurons)."""
    return int(torch.unique(pattern_codes(signs)).numel())


def _swap(probe: Probe) -> dict[str, float]:
    """SWAP (Peng et al., ICLR 2024): the number of distinct per-neuron activation sign patterns over 16 images.

    Reference: pym1024/SWAP @ 8d622560 : src/metrics/swap.py (forward hooks on every nn.ReLU whose input is
    4-D, sign of the outputs concatenated over layers into (samples, neurons), number of unique rows of the
    transpose) and correlation.py (16 real CIFAR images, BatchNorm in train mode). autokd's deviations:
    - ViTs have no ReLU: for a model without 4-D ReLUs autokd reads its GELU outputs (token features), an
      autokd extension; the authors' code reads ReLU only;
    - the raw count: the authors multiply it by a size prior exp(-(params - mu)^2 / sigma) (`regular=True`),
      left to the aggregation, which ranks size separately;
    - the model as built, once: the authors average 32 N(0, 1) re-initialisations; behind train-mode BatchNorm
      the signs do not depend on the conv weights' scale.
    The first 16 images of the scoring batch (all of them if fewer); BatchNorm on their statistics.
    """
    model = probe.model
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    gelus = [m for m in model.modules() if isinstance(m, nn.GELU)]
    if not relus and not gelus:
        raise AutokdError(
            f"'swap' reads ReLU (CNN) or GELU (ViT) modules; {type(model).__name__} has none: "
            "build activations as modules (timm does) or drop 'swap'"
        )
    images = probe.batch.images[:SWAP_SAMPLES]
    relu_codes = _activation_codes(model, relus, images, probe.ref.seed, four_d=True) if relus else []
    codes = relu_codes or _activation_codes(model, gelus, images, probe.ref.seed, four_d=False)
    if not codes:
        raise AutokdError(
            f"'swap' reads ReLUs on feature maps or GELUs; {type(model).__name__} runs none on the batch: "
            "drop 'swap' for this model"
        )
    return {"swap": float(torch.unique(torch.cat(codes)).numel())}


def _activation_codes(
    model: nn.Module, modules: list[nn.Module], images: torch.Tensor, seed: int, four_d: bool
) -> list[torch.Tensor]:
    """The pattern codes of each module's output units over `images` (4-D inputs only when `four_d`)."""
    codes: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not four_d or args[0].dim() == 4:
            codes.append(pattern_codes(output.detach().flatten(1).sign()))

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with scoring_mode(model, batch_stats=True, seed=seed), torch.no_grad():
            model(images.to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return codes


def _zen(probe: Probe) -> dict[str, float]:
    """Zen-score (Lin et al., ICCV 2021): log E|f(x) - f(x + 0.01 x')| + sum over BN of log sqrt(mean running var).

    Reference: idstcv/ZenNAS @ ec107550 : ZeroShotProxy/compute_zen_score.py with evolution_search.py (repeat 1,
    a fresh net per candidate): N(0, 1) re-init, Gaussian x and x', pre-GAP feature maps of x and of
    x + 0.01 x', sum of |difference| per image averaged over the batch, then the BatchNorm2d term from the
    running variances after those two train-mode forwards (momentum 0.1 from a reset: 0.81 + 0.09 v1 + 0.1 v2).
    autokd follows this on a re-initialised copy (the model is untouched), with seeded Gaussian inputs of the
    scoring batch's shape. Deviation: the authors score the net with its residual links removed
    (`no_reslink=True`); autokd scores the model as built, residual links included.
    Zen-score is defined for BatchNorm CNNs: a model without BatchNorm2d (a ViT) raises.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in probe.model.modules()):
        raise AutokdError(
            f"'zen' is defined for BatchNorm CNNs; {type(probe.model).__name__} has no BatchNorm2d layer "
            "(a ViT's LayerNorm has no running variance): drop 'zen' for this model"
        )
    if not callable(getattr(probe.model, "forward_features", None)):
        raise AutokdError(
            f"'zen' reads the pre-pooling feature map from forward_features(); {type(probe.model).__name__} "
            "has none: build the model with timm or add forward_features"
        )
    model = copy.deepcopy(probe.model)
    generator = torch.Generator().manual_seed(probe.ref.seed)
    reinit_(model, generator, "unit")
    shape = probe.batch.images.shape
    x = torch.randn(shape, generator=generator)
    x_mix = x + ZEN_GAMMA * torch.randn(shape, generator=generator)
    with scoring_mode(model, batch_stats=True, seed=probe.ref.seed):
        return {"zen": zen_score(model, x, x_mix)}


def zen_score(model: nn.Module, x: torch.Tensor, x_mix: torch.Tensor) -> float:
    """log(mean over images of sum |f(x) - f(x_mix)|) + sum over BatchNorm2d of log sqrt(mean running var).

    f = forward_features with BatchNorm in train mode; the running statistics are reset (momentum 0.1) first and
    read after the two forwards, as in the authors' fresh nets. Changes `model`'s BatchNorm buffers and mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = 0.1
        norm.train()
    device = _device(model)
    with torch.no_grad():
        out, out_mix = model.forward_features(x.to(device)), model.forward_features(x_mix.to(device))
        change = float((out - out_mix).abs().flatten(1).sum(1).mean())
    bn_term = sum(0.5 * math.log(float(norm.running_var.mean())) for norm in norms)
    return math.log(change) + bn_term if change > 0 else -math.inf


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


MECO = Proxy("meco", _meco, outputs=("meco",))
SWAP = Proxy("swap", _swap, outputs=("swap",))
ZEN = Proxy("zen", _zen, outputs=("zen",))
ACTIVATION_PROXIES: tuple[Proxy, ...] = (MECO, SWAP, ZEN)
