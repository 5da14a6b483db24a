"""Pick subnets with inherited weights, no retraining: score them on held-out data, search a band by aging
evolution (the search's own Optuna sampler), and hand a subnet's weights to `autokd train`.

Every scored subnet is first checked against its band and the budget by the exact fvcore count; one over
either is refused, never scored. CNN subnets get their BatchNorm statistics recalibrated on training images
before scoring (see `autokd.supernet.base`).

Wiring for the CLI (`autokd search --evaluator supernet --bands K`, `autokd train --inherit`):

    bands = space_bands(space, budget, K, num_classes)
    for band in bands:
        supernet, largest, smallest = band_supernet(band, seed=seed)
        train_supernet(supernet, teacher.model, train_loader, SupernetRun(band, largest, smallest, recipe),
                       out / f"band{band.band.index}")
        results = search_band(supernet, band, heldout_targets(teacher.model, heldout_loader),
                              calibration_batches(train_loader), trials=T)
    # `--inherit`: the student starts from its supernet weights
    student.model.load_state_dict(inherit(out / "band1" / "supernet.pt", spec, calibration_batches(loader)))
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from autokd.cost import count_params
from autokd.errors import AutokdError
from autokd.search.codec import SpecCodec
from autokd.search.samplers import RegularizedEvolutionSampler
from autokd.spaces import ArchSpec
from autokd.supernet.bands import BandSpace
from autokd.supernet.base import Supernet
from autokd.supernet.build import rebuild_supernet
from autokd.supernet.train import load_supernet_state

log = logging.getLogger("autokd")

CALIBRATION_BATCHES = 8  # OFA recalibrates on 2000 images; 8 batches of 64-256 are 512-2048
METRICS = ("accuracy", "kd_loss")


@torch.no_grad()
def heldout_targets(teacher: nn.Module, loader: Iterable, device: str | torch.device = "cpu"
                    ) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(images, labels, teacher logits) of every held-out batch: the teacher runs once per search."""
    teacher = teacher.to(device).eval()
    return [(b[0].to(device), b[1].to(device), teacher(b[0].to(device)).float()) for b in loader]


def calibration_batches(loader: Iterable, batches: int = CALIBRATION_BATCHES) -> list[Tensor]:
    """The images of the first `batches` batches of `loader` (training images, for BatchNorm statistics)."""
    return [b[0] for b in itertools.islice(loader, batches)]


@torch.no_grad()
def score_subnet(supernet: Supernet, band: BandSpace, spec: ArchSpec, heldout: Sequence[tuple[Tensor, ...]],
                 calibration: Sequence[Tensor] | None) -> dict[str, Any]:
    """Held-out top-1 (%) and KL to the teacher (T = 1) of `spec` with inherited weights; refuses a spec over
    the budget or outside the band (exact count)."""
    macs = band.refuse_over_budget(supernet.check(spec))
    model = supernet.extract(spec, calibration).to(heldout[0][0].device if heldout else "cpu")
    if calibration is None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise AutokdError(f"{spec.short()} has BatchNorm, whose statistics must be recalibrated for each subnet: "
                          "give calibration batches of training images (calibration_batches(loader))")
    correct = seen = 0
    kl = 0.0
    for images, labels, teacher_logits in heldout:
        logits = model(images).float()
        correct += int((logits.argmax(1) == labels).sum())
        kl += float(F.kl_div(logits.log_softmax(-1), teacher_logits.log_softmax(-1), reduction="sum",
                             log_target=True))
        seen += len(labels)
    if not seen:
        raise AutokdError("the held-out set is empty: give held-out images to score subnets")
    return {"spec": spec.to_json(), "macs": macs, "params": count_params(model), "top1": 100.0 * correct / seen,
            "kd_loss": kl / seen}


def search_band(supernet: Supernet, band: BandSpace, heldout: Sequence[tuple[Tensor, ...]],
                calibration: Sequence[Tensor] | None, *, trials: int = 64, metric: str = "accuracy",
                population: int = 16, tournament: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Aging evolution over the band's subnets, each scored with inherited weights; returns the scored
    subnets, best first. The first population comes from random in-band specs; every child is checked
    against the band and the budget by the exact count before it is scored."""
    if metric not in METRICS:
        raise AutokdError(f"unknown supernet metric {metric!r}: use one of {list(METRICS)}")

    def fits(spec: ArchSpec) -> bool:  # cheap checks first: the exact count builds and traces the model
        return supernet.contains(spec) and band.band.holds(band.estimate(spec)) and band.fits(spec)

    codec = SpecCodec({band.space.name: band.space})
    sampler = RegularizedEvolutionSampler(codec, fits, population_size=population, tournament_size=tournament,
                                          seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for spec in [s for s in band.pool(population * 2, seed) if fits(s)][:population]:
        study.enqueue_trial(codec.encode(spec))
    results: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        spec = codec.suggest(trial)
        if not fits(spec):  # an enqueued spec or a sampler fallback: refused, never scored
            raise optuna.TrialPruned(f"{spec.short()} is outside the band or over the budget")
        result = score_subnet(supernet, band, spec, heldout, calibration)
        results.append(result)
        return result["top1"] if metric == "accuracy" else -result["kd_loss"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=trials)
    key = (lambda r: (-r["top1"], r["kd_loss"])) if metric == "accuracy" else (lambda r: r["kd_loss"])
    return sorted(results, key=key)


def load_supernet(path: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """The supernet saved in a supernet.pt, and its checkpoint (band, anchors, history)."""
    state = load_supernet_state(path)
    supernet = rebuild_supernet(json.loads(state["config"]))
    supernet.load_state_dict(state["model"])
    return supernet.eval(), state


def inherit(path: str | Path, spec: ArchSpec | str, calibration: Iterable[Tensor] | None = None
            ) -> dict[str, Tensor]:
    """The state dict that starts `spec`'s stand-alone model (`space.build(spec, num_classes)`) from the
    supernet in `path` (a supernet.pt); BatchNorm statistics recalibrated on `calibration` batches when given
    (training recomputes them anyway)."""
    spec = ArchSpec.from_json(spec) if isinstance(spec, str) else spec
    supernet, _ = load_supernet(path)
    return supernet.inherit(spec, calibration)


def inherit_from_file(model: nn.Module, spec: ArchSpec, spec_file: str | Path) -> Path:
    """Load into `model` (built for `spec`) its weights from the supernet that a `top/<rank>.yaml` of
    `autokd search --evaluator supernet` names; returns that supernet.pt."""
    import yaml

    try:
        path = Path(yaml.safe_load(Path(spec_file).read_text())["supernet"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise AutokdError(f"--inherit needs a top/<rank>.yaml written by `autokd search --evaluator supernet`; "
                          f"{str(spec_file)!r} names no supernet") from None
    if not path.is_file():
        raise AutokdError(f"the supernet {str(path)!r} named by {str(spec_file)!r} does not exist: run the search "
                          "again, or train without --inherit")
    model.load_state_dict(inherit(path, spec))
    return path
