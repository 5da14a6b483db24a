"""The supernet evaluator of a search: K bands of one space, a supernet trained per band, the best subnets of each
band by held-out accuracy with inherited weights (AutoDistil's search, no retraining).

Held-out images are a stratified tenth of the training split (the test split is never read). Each band's
supernet lives in `out/band<i>/supernet.pt` and resumes where it stopped; `inherit(path, spec)` hands a subnet's
weights to `autokd train --inherit`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from autokd.data import ImageDataset, subset_data
from autokd.data.split import HELDOUT_FRACTION, SPLIT_SEED, split_indices
from autokd.errors import AutokdError
from autokd.io import write_csv, write_yaml
from autokd.recipes import Recipe
from autokd.spaces import ArchSpec
from autokd.spaces.base import SearchSpace
from autokd.supernet.bands import space_bands
from autokd.supernet.build import band_supernet
from autokd.supernet.select import calibration_batches, heldout_targets, search_band
from autokd.supernet.train import CHECKPOINT, SupernetRun, train_supernet
from autokd.teachers import Teacher
from autokd.train.inputs import Inputs, recipe_transform

log = logging.getLogger("autokd")

@dataclass(frozen=True)
class SupernetConfig:
    """K bands, supernet training epochs, subnets scored per band, the batch, the in-band specs that size each
    supernet, the ranking metric (ties in accuracy go to the lower KD loss), the seed, and the training images it
    uses (a stratified subset; None: all)."""

    bands: int = 3
    epochs: int = 10
    trials: int = 32
    batch_size: int = 64
    pool: int = 200
    images: int | None = None
    metric: str = "accuracy"
    seed: int = 0

    def check(self) -> None:
        if self.bands < 1:
            raise AutokdError(f"--bands must be at least 1, got {self.bands}")
        if self.epochs < 1:
            raise AutokdError(f"--supernet-epochs must be at least 1, got {self.epochs}")
        if self.trials < 1:
            raise AutokdError(f"--supernet-trials must be at least 1, got {self.trials}")


def supernet_loaders(data: ImageDataset, teacher: Teacher, batch_size: int, seed: int = 0
                     ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Loaders of the training images (shuffled and augmented; plain, for BatchNorm calibration) and of the
    held-out tenth (plain)."""
    inputs = Inputs.of(teacher)
    train_idx, heldout_idx = split_indices(data.train.labels, HELDOUT_FRACTION, SPLIT_SEED)
    if len(train_idx) < batch_size:
        raise AutokdError(f"the train split has {len(train_idx)} images, fewer than one batch of {batch_size}")
    train_view = data.train.view(train_idx, recipe_transform("standard", inputs))
    plain = recipe_transform("none", inputs)
    train = DataLoader(train_view, batch_size=batch_size, shuffle=True, drop_last=True,
                       generator=torch.Generator().manual_seed(seed))
    calibration = DataLoader(data.train.view(train_idx, plain), batch_size=batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(seed))
    return train, calibration, DataLoader(data.train.view(heldout_idx, plain), batch_size=256)


def evaluate_bands(space: SearchSpace, budget_macs: int, teacher: Teacher, data: ImageDataset, recipe: Recipe,
                   out: str | Path, config: SupernetConfig, *, device: str | torch.device = "cpu",
                   on_epoch: Callable[[int, dict], None] | None = None) -> pd.DataFrame:
    """Train one supernet per band (resumable) on `device` and search each band; one row per scored subnet, best
    first within each band: band, band_rank, spec_json, arch, macs, params, heldout_top1, kd_loss, supernet,
    seconds. `on_epoch(band, entry)` gets each epoch's history entry (for the study's progress)."""
    config.check()
    if not teacher.pretrained:
        raise AutokdError("the supernet is distilled from the teacher: give the teacher's trained weights "
                          "(--teacher-weights)")
    out = Path(out)
    data = replace(data, test=None)  # a copy without the test split: every figure is a held-out one
    if config.images:
        data = subset_data(data, config.images, None, config.seed)
    recipe = recipe.with_epochs(config.epochs).replace(batch_size=config.batch_size)
    train_loader, calibration_loader, heldout_loader = supernet_loaders(data, teacher, config.batch_size,
                                                                        config.seed)
    heldout = heldout_targets(teacher.model, heldout_loader, device)
    calibration = calibration_batches(calibration_loader)  # the same images on every call: scores repeat
    rows = []
    for band in space_bands(space, budget_macs, config.bands, data.num_classes):
        start = time.perf_counter()
        net, largest, smallest = band_supernet(band, pool=config.pool, seed=config.seed)
        folder = out / f"band{band.band.index}"
        run = SupernetRun(band, largest, smallest, recipe, seed=config.seed)
        report = None if on_epoch is None else functools.partial(on_epoch, band.band.index)
        train_supernet(net, teacher.model, train_loader, run, folder, device=device, on_epoch=report)
        scored = search_band(net, band, heldout, calibration, trials=config.trials, metric=config.metric,
                             seed=config.seed)
        seconds = time.perf_counter() - start
        log.info("%s: %d subnets scored, best held-out top-1 %.2f%% (%.0f s)", band.band, len(scored),
                 scored[0]["top1"] if scored else float("nan"), seconds)
        for rank, r in enumerate(scored, 1):
            rows.append({"band": band.band.index, "band_range": str(band.band), "band_rank": rank,
                         "spec_json": r["spec"], "macs": r["macs"], "params": r["params"],
                         "heldout_top1": r["top1"], "kd_loss": r["kd_loss"],
                         "supernet": str(folder / CHECKPOINT), "seconds": seconds})
    frame = pd.DataFrame(rows).drop_duplicates("spec_json")
    if frame.empty:
        raise AutokdError(f"no subnet of {space.name} under {budget_macs} MACs could be scored")
    return frame.reset_index(drop=True)


def evaluate_spaces(spaces: Mapping[str, SearchSpace], budget_macs: int, teacher: Teacher, data: ImageDataset,
                    recipes: Mapping[str, Recipe], out: str | Path, config: SupernetConfig, meta: dict,
                    top_k: int, *, device: str | torch.device = "cpu",
                    on_epoch: Callable[[str, int, dict], None] | None = None) -> pd.DataFrame:
    """`evaluate_bands` for every space (its supernets under out/supernet/<space>), one table best first (held-out
    top-1, then KD loss) with a `rank` column; writes out/supernet.csv and out/top/<rank>.yaml.
    `on_epoch(space, band, entry)` gets each supernet epoch."""
    out = Path(out)
    frames = [evaluate_bands(space, budget_macs, teacher, data, recipes[name], out / "supernet" / name, config,
                             device=device, on_epoch=None if on_epoch is None else functools.partial(on_epoch, name))
              .assign(space=name) for name, space in spaces.items()]
    frame = pd.concat(frames, ignore_index=True).sort_values(["heldout_top1", "kd_loss"], ascending=[False, True],
                                                             kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    frame.insert(4, "arch", [ArchSpec.from_json(s).short() for s in frame["spec_json"]])
    write_csv(out / "supernet.csv", frame)
    write_supernet_top(frame, out / "top", meta, top_k)
    return frame


def write_supernet_top(frame: pd.DataFrame, folder: Path, meta: dict, top_k: int) -> list[Path]:
    """`folder/<rank>.yaml` for the `top_k` best subnets of all bands (held-out top-1, then KD loss), each with
    its band and supernet checkpoint, so `autokd train --inherit` can start from its weights."""
    board = frame.sort_values(["heldout_top1", "kd_loss"], ascending=[False, True], kind="stable").head(top_k)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, row in enumerate(board.to_dict("records"), 1):
        doc = {"spec": ArchSpec.from_json(row["spec_json"]).as_dict(), "rank": rank, "macs": int(row["macs"]),
               "params": int(row["params"]), "evaluator": "supernet", "band": int(row["band"]),
               "band_rank": int(row["band_rank"]), "supernet": row["supernet"],
               "scores": {"heldout_top1": float(row["heldout_top1"]), "kd_loss": float(row["kd_loss"])},
               "search": meta}
        paths.append(write_yaml(folder / f"{rank}.yaml", doc))
    for stale in set(folder.glob("*.yaml")) - set(paths):
        if stale.stem.isdigit():
            stale.unlink()
    return paths
