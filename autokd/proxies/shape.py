"""Size and shape baselines every proxy is reported beside: depth in blocks and the number of trainable layers."""

from __future__ import annotations

from autokd.proxies.base import Probe, Proxy, blocks, weight_layers


def _depth(probe: Probe) -> dict[str, float]:
    """The number of blocks (residual units, transformer blocks): deeper ranks higher."""
    return {"depth": float(len(blocks(probe.model)))}


def _layers(probe: Probe) -> dict[str, float]:
    """The number of trainable Conv/Linear layers, VKDNW's shape term (beats FLOPs on NAS-Bench-201)."""
    return {"layers": float(len(weight_layers(probe.model)))}


DEPTH = Proxy("depth", _depth, outputs=("depth",))
LAYERS = Proxy("layers", _layers, outputs=("layers",))
SHAPE_PROXIES = (DEPTH, LAYERS)
