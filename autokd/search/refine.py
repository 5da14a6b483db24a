"""`--refine N`: the top N of the training-free ranking distilled briefly, in rungs of successive halving.

Each candidate is a trial of the study `<search study>-refine`. Every surviving candidate trains one more epoch
of one KD schedule (all together, one teacher pass per batch) and reports its held-out top-1 as the trial's
intermediate value at that epoch; at each rung (epochs min_epochs x eta^k) Optuna's asynchronous
SuccessiveHalvingPruner stops a candidate outside the best 1/eta of those reported so far, in proxy-rank order.
The test split is never read. A killed refinement resumes: the same command finds the study's trials and each
run's last.pt, and ends as an uninterrupted one would. A candidate's initial weights follow from its spec and
the seed, not its rank, so a network refined in two searches trains the same way.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import pandas as pd
import torch

from autokd.data import ImageDataset, subset_data
from autokd.errors import AutokdError
from autokd.recipes import Recipe
from autokd.search.evaluate import spec_seed
from autokd.spaces import ArchSpec
from autokd.storage import open_storage
from autokd.teachers import Teacher
from autokd.train import TrainResult, build_from_spec, train_students
from autokd.train.inputs import train_steps_per_epoch

log = logging.getLogger("autokd")


@dataclass(frozen=True)
class Halving:
    """A short KD schedule cut into rungs of successive halving: its length, the first rung, the halving rate,
    the train images each run uses and the seed (shared by `--refine` and recipe tuning)."""

    epochs: int = 3
    min_epochs: int = 1
    eta: int = 3
    images: int | None = 2000
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.min_epochs <= self.epochs:
            raise AutokdError(f"refine epochs must satisfy 1 <= min epochs <= epochs, got {self.min_epochs} and "
                              f"{self.epochs}")
        if self.eta < 2:
            raise AutokdError(f"the halving rate eta must be at least 2, got {self.eta}")


@dataclass(frozen=True)
class RefineConfig(Halving):
    """How many candidates, and the halving schedule they are refined by."""

    top: int = 9

    def check(self) -> None:
        if self.top < 2:
            raise AutokdError(f"--refine needs at least 2 candidates to compare, got {self.top}")
        super().check()


def refine(board: pd.DataFrame, teacher: Teacher, data: ImageDataset, recipe: Recipe, out: Path,
           storage_url: str, study_name: str, config: RefineConfig, *, img_size: int, device: str = "auto",
           progress: bool = False) -> pd.DataFrame:
    """Train the top `config.top` distinct specs of `board` (a leaderboard, best first) by successive halving;
    returns one row per candidate: proxy rank, held-out top-1 per epoch reached, refine rank, status."""
    config.check()
    if not teacher.pretrained:
        raise AutokdError("--refine distils the candidates: give the teacher's trained weights (--teacher-weights)")
    chosen = board.drop_duplicates("spec_json").head(config.top).reset_index(drop=True)
    data = replace(data, test=None)  # a copy without the test split: every figure is a held-out one
    if config.images:
        data = subset_data(data, config.images, None, config.seed)
    recipe = recipe.with_epochs(config.epochs)
    steps = train_steps_per_epoch(data, recipe)
    study = optuna.create_study(
        study_name=f"{study_name}-refine", storage=open_storage(storage_url), direction="maximize",
        load_if_exists=True,
        pruner=halving_pruner(config))
    existing = {t.user_attrs.get("proxy_rank"): t for t in study.get_trials(deepcopy=False)}
    specs = {int(r["rank"]): ArchSpec.from_json(r["spec_json"]) for r in chosen.to_dict("records")}
    if existing and {r: t.user_attrs.get("spec") for r, t in existing.items()} != {
            r: spec.as_dict() for r, spec in specs.items()}:
        raise AutokdError(f"study {study.study_name!r} holds a refinement of other candidates: delete it (optuna "
                          "delete-study) or search into another --out")
    trials, students, folders = {}, {}, {}
    for rank, spec in specs.items():
        if rank in existing:  # a resumed refinement: the same trial goes on
            trials[rank] = optuna.trial.Trial(study, existing[rank]._trial_id)
        else:
            with warnings.catch_warnings():  # the storage's heartbeat is for the search's workers
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trials[rank] = study.ask()
            for key, value in (("spec", spec.as_dict()), ("proxy_rank", rank), ("search_trial", int(
                    chosen.loc[chosen["rank"] == rank, "trial"].iloc[0]))):
                trials[rank].set_user_attr(key, value)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec_seed(spec, config.seed))
            students[rank] = build_from_spec(spec, data.num_classes, img_size)
        folders[rank] = out / "refine" / str(rank)
    values = {rank: dict(existing[rank].intermediate_values) if rank in existing else {} for rank in specs}
    running = optuna.trial.TrialState.RUNNING
    alive = [rank for rank in specs if rank not in existing or existing[rank].state == running]
    histories = {rank: _history(folders[rank]) for rank in alive}
    done = {len(h) for h in histories.values()}
    if len(done) > 1:
        raise AutokdError(f"the refine runs in {str(out / 'refine')!r} stopped at different epochs: delete them and "
                          f"the study {study.study_name!r} to start the refinement again")
    start = done.pop() if done else 0
    if start:  # killed after that epoch's training: report what is not reported yet, decide who goes on
        alive = _next_rung(study, trials, values, alive, {r: h[-1]["heldout_top1"] for r, h in histories.items()},
                           start, config.epochs)
    for epoch in range(start + 1, config.epochs + 1):
        if not alive:
            break
        resume = all((folders[r] / "last.pt").is_file() for r in alive)
        results = train_students([students[r] for r in alive], teacher, data, recipe, [folders[r] for r in alive],
                                 device=device, resume=resume, seed=config.seed, max_steps=epoch * steps,
                                 evaluate_teacher=False, progress=progress)
        reached = {rank: result.history[-1]["heldout_top1"] for rank, result in zip(alive, results)}
        survivors = _next_rung(study, trials, values, alive, reached, epoch, config.epochs)
        if epoch < config.epochs:
            log.info("refine epoch %d/%d: %d candidate(s) trained, %d go on", epoch, config.epochs, len(alive),
                     len(survivors))
        alive = survivors
    return refine_frame(chosen, values, config.epochs)


def halving_pruner(config: Halving) -> optuna.pruners.SuccessiveHalvingPruner:
    """Optuna's successive-halving pruner with rungs at min_epochs x eta^k."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_epochs, reduction_factor=config.eta)


def replay_halving(board: pd.DataFrame, curves: dict[str, list[float]], config: RefineConfig) -> pd.DataFrame:
    """What `refine` returns when each candidate's held-out top-1 per epoch is already known (`curves`, by
    spec_json, from a run of the same schedule): the same pruner, in the same order, in memory."""
    config.check()
    chosen = board.drop_duplicates("spec_json").head(config.top).reset_index(drop=True)
    ranks = {int(r["rank"]): r["spec_json"] for r in chosen.to_dict("records")}
    study = optuna.create_study(direction="maximize", pruner=halving_pruner(config))
    trials = {rank: study.ask() for rank in ranks}
    values: dict[int, dict[int, float]] = {rank: {} for rank in ranks}
    alive = list(ranks)
    for epoch in range(1, config.epochs + 1):
        if not alive:
            break
        reached = {rank: curves[ranks[rank]][epoch - 1] for rank in alive}
        alive = _next_rung(study, trials, values, alive, reached, epoch, config.epochs)
    return refine_frame(chosen, values, config.epochs)


def _next_rung(study: optuna.Study, trials: dict, values: dict, alive: list[int], reached: dict[int, float],
               epoch: int, epochs: int) -> list[int]:
    """Report each candidate's held-out top-1 at `epoch` (once) and keep those the pruner lets go on."""
    survivors = []
    with warnings.catch_warnings():  # the storage's heartbeat is for the search's workers, not these trials
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        for rank in alive:
            trial = trials[rank]
            if epoch not in values[rank]:
                trial.report(reached[rank], epoch)
                values[rank][epoch] = reached[rank]
            if epoch == epochs:
                study.tell(trial, values[rank][epoch])
            elif trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                survivors.append(rank)
    return survivors


def _history(folder: Path) -> list[dict]:
    """The epochs a refine run has finished (its results.json is written at every stop)."""
    path = folder / "results.json"
    return TrainResult.load(path).history if path.is_file() else []


def refine_frame(chosen: pd.DataFrame, values: dict[int, dict[int, float]], epochs: int) -> pd.DataFrame:
    """Candidates ranked by the furthest epoch they reached, then by their held-out top-1 there."""
    rows = []
    for row in chosen.to_dict("records"):
        rank = int(row["rank"])
        reached = max(values[rank]) if values[rank] else 0
        rows.append({"proxy_rank": rank, "trial": int(row["trial"]), "arch": row["arch"], "macs": int(row["macs"]),
                     "params": int(row["params"]), "epochs_reached": reached,
                     "heldout_top1": values[rank].get(reached, float("nan")),
                     **{f"epoch{e}_heldout_top1": values[rank].get(e, float("nan")) for e in range(1, epochs + 1)},
                     "status": "complete" if reached == epochs else "pruned"})
    frame = pd.DataFrame(rows).sort_values(["epochs_reached", "heldout_top1"], ascending=False, kind="stable")
    frame.insert(0, "refine_rank", range(1, len(frame) + 1))
    return frame.reset_index(drop=True)
