"""The proxy registry and the one call that scores a candidate with any set of proxies."""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from autokd.cost import Cost
from autokd.errors import AutokdError
from autokd.proxies.activation import ACTIVATION_PROXIES
from autokd.proxies.aznas import AZNAS_PROXIES
from autokd.proxies.base import Probe, Proxy, ScoringBatch
from autokd.proxies.baselines import GRAD_NORM, MACS, NASWOT, PARAMS, SYNFLOW
from autokd.proxies.diswot import DISWOT
from autokd.proxies.gradient import GRADIENT_PROXIES
from autokd.proxies.reference import TeacherReference
from autokd.proxies.shape import SHAPE_PROXIES
from autokd.proxies.transformer import TRANSFORMER_PROXIES
from autokd.proxies.vkdnw import VKDNW_PROXIES

PROXIES: dict[str, Proxy] = {
    p.name: p
    for p in (DISWOT, NASWOT, SYNFLOW, GRAD_NORM, *GRADIENT_PROXIES, *ACTIVATION_PROXIES, *AZNAS_PROXIES,
              *VKDNW_PROXIES, *TRANSFORMER_PROXIES, PARAMS, MACS, *SHAPE_PROXIES)
}


def proxy_of(key: str) -> str | None:
    """The registered proxy whose outputs include score `key` (None for an unknown key)."""
    return next((name for name, proxy in PROXIES.items() if key in proxy.outputs), None)


def score_candidate(
    model: nn.Module,
    batch: ScoringBatch,
    ref: TeacherReference,
    names: Iterable[str] | str = ("diswot",),
    cost: Cost | None = None,
) -> dict[str, float]:
    """Every score the named proxies give `model` on `batch`, keyed by output name (one shared forward).

    'diswot' also gives 'diswot_relation' and 'diswot_semantic', its two distances (lower = closer); every
    other key is higher = better. 'params' and 'macs' come from `cost` (measured here when it is not given).
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise AutokdError(f"unknown proxy {', '.join(map(repr, unknown))}: choose from {', '.join(PROXIES)}")
    ref.check_batch(batch)
    proxies = [PROXIES[n] for n in dict.fromkeys(names)]
    probe = Probe(model, batch, ref, cost, record_codes=any(p.reads_activation_codes for p in proxies))
    scores: dict[str, float] = {}
    for proxy in proxies:
        scores.update(proxy(probe))
    return scores
