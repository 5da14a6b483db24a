"""`recommend --tune N`: an Optuna study over the recipe space, warm-started with the recommended recipes.

The space is the KD preset, its temperature (tau for DIST), the KD loss weight and the learning rate; the other
knobs stay at the preset's values. The top recommendations are enqueued as the first trials. Each trial distils
a fresh copy of the student for a short schedule, one epoch at a time, reporting its held-out top-1 at every
epoch to Optuna's SuccessiveHalvingPruner (as `autokd search --refine` does for students). Every complete trial
is appended to the knowledge base with the no-KD accuracy of the default rule's schedule (trained once, in
out/baseline). A killed study resumes: the same call continues the running trial from its last.pt.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch.nn as nn

from autokd.data import ImageDataset, subset_data
from autokd.errors import AutokdError
from autokd.recipes.kb import PAIR_COLUMNS, append_rows, make_row, recipe_columns
from autokd.recipes.recipe import Recipe, default_recipe
from autokd.recipes.recommend import TEMPERATURES
from autokd.search.refine import Halving
from autokd.train import TrainResult, no_kd, train_student
from autokd.train.inputs import Inputs, train_steps_per_epoch

log = logging.getLogger("autokd")
_RANGES = {"temperature": (0.5, 8.0), "kd_weight": (0.05, 10.0), "lr": (1e-4, 0.5)}


@dataclass(frozen=True)
class TuneConfig(Halving):
    """Trials to finish, their batch size, and the halving schedule each trial runs."""

    trials: int = 10
    batch_size: int | None = None


def space_params(recipe_id: str, recipe: Recipe) -> dict[str, Any]:
    """A grid recipe as a point of the tuning space (loss-specific weights other than kd_weight are dropped)."""
    preset = recipe_id.split(":")[0]
    key = TEMPERATURES[preset][0]
    return {"preset": preset, "temperature": recipe.loss_params[key], "kd_weight": recipe.kd_weight, "lr": recipe.lr}


def recipe_of(params: dict[str, Any]) -> Recipe:
    """The recipe at a point of the tuning space."""
    base = Recipe.load(params["preset"])
    key = TEMPERATURES[params["preset"]][0]
    return base.replace(loss_params={**base.loss_params, key: params["temperature"]},
                        kd_weight=params["kd_weight"], lr=params["lr"])


def tune_recipes(make_student: Callable[[], nn.Module], teacher: Any, data: ImageDataset, profile: dict[str, Any],
                 start: list[tuple[str, Recipe]], out: Path, config: TuneConfig, *, storage_url: str | None = None,
                 study_name: str = "autokd-recipes", kb: str | Path | None = None, device: str = "auto",
                 progress: bool = False) -> pd.DataFrame:
    """Run the recipe study until `config.trials` trials are complete or pruned; returns one row per finished
    trial (number, state, recipe knobs, held-out top-1, test top-1, gain). `kb`: where complete trials go
    (None: nowhere). `profile` is `task_profile`'s, with a `task` name."""
    if config.trials < 1:
        raise AutokdError(f"--tune needs at least 1 trial, got {config.trials}")
    out = Path(out)
    storage_url = storage_url or f"sqlite:///{out / 'tune.db'}"
    out.mkdir(parents=True, exist_ok=True)
    if config.images and config.images < len(data.train):  # the KB rows describe the subset the runs saw
        data = subset_data(replace(data), config.images, None, config.seed)
        profile = {**profile, "train_size": len(data.train), "task": f"{profile['task']}-{len(data.train)}img"}
    presets = sorted({space_params(rid, r)["preset"] for rid, r in start} | {"kd", "dkd", "dist", "nkd"})
    study = optuna.create_study(
        study_name=study_name, storage=storage_url, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_epochs, reduction_factor=config.eta))
    if not study.trials:
        seen = []
        for rid, recipe in start:
            params = space_params(rid, recipe)
            if params not in seen:
                seen.append(params)
                study.enqueue_trial(params, user_attrs={"recipe_id": rid})
    baseline = _baseline(make_student, teacher, data, profile, out / "baseline", config, device, progress)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        _run_trial(study, optuna.trial.Trial(study, frozen._trial_id), presets, make_student, teacher, data,
                   profile, out, config, baseline, kb, device, progress)
    while len(study.get_trials(deepcopy=False, states=finished)) < config.trials:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, message=".*fixed.*")
            trial = study.ask()
        _run_trial(study, trial, presets, make_student, teacher, data, profile, out, config, baseline, kb,
                   device, progress)
    return tune_frame(study)


def _recipe(trial: optuna.Trial, presets: list[str], config: TuneConfig) -> Recipe:
    params = {"preset": trial.suggest_categorical("preset", presets)}
    for name, (low, high) in _RANGES.items():
        params[name] = trial.suggest_float(name, low, high, log=True)
    recipe = recipe_of(params).with_epochs(config.epochs)
    return recipe.replace(batch_size=config.batch_size) if config.batch_size else recipe


def _run_trial(study: optuna.Study, trial: optuna.Trial, presets: list[str], make_student, teacher, data,
               profile: dict[str, Any], out: Path, config: TuneConfig, baseline: float, kb, device: str,
               progress: bool) -> None:
    """Train one trial epoch by epoch (continuing its last.pt), reporting each epoch; append it to the KB."""
    recipe = _recipe(trial, presets, config)
    folder = out / "trials" / str(trial.number)
    steps = train_steps_per_epoch(data, recipe)
    done = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number).intermediate_values
    result = None
    for epoch in range(1, config.epochs + 1):
        if epoch in done:  # reported before a kill; the pruner decides again from the same values
            if epoch < config.epochs and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return
            continue
        resume = (folder / "last.pt").is_file()
        result = train_student(make_student(), teacher, data, recipe, folder, device=device, resume=resume,
                               seed=config.seed, max_steps=epoch * steps if epoch < config.epochs else None,
                               evaluate_teacher=False, progress=progress)
        if result.stopped is not None and not result.stopped.startswith("max_steps"):
            raise AutokdError(f"recipe trial {trial.number} stopped ({result.stopped}): run the same command "
                              "again to resume")
        trial.report(result.history[-1]["heldout_top1"], epoch)
        if epoch < config.epochs and trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("recipe trial %d pruned after epoch %d", trial.number, epoch)
            return
    if result is None:  # killed after the last report, before tell
        result = TrainResult.load(folder / "results.json")
    trial.set_user_attr("recipe_json", recipe.to_json())
    trial.set_user_attr("test_top1", result.top1)
    if kb is not None:
        row = make_row(profile["task"], profile, {k: profile[k] for k in PAIR_COLUMNS},
                       recipe_columns(recipe, f"tune:{trial.number}", recipe_of(trial.params).loss), result.top1,
                       baseline, config.seed)
        append_rows(kb, [row])
    study.tell(trial, result.history[-1]["heldout_top1"])


def _baseline(make_student, teacher: Any, data: ImageDataset, profile: dict[str, Any], folder: Path, config: TuneConfig,
              device: str, progress: bool) -> float:
    """The student trained without KD on the default rule's schedule (once; reused on a rerun)."""
    path = folder / "results.json"
    if path.is_file() and TrainResult.load(path).stopped is None:
        return TrainResult.load(path).top1
    recipe = no_kd(Recipe.load(default_recipe(profile["student_family"]))).with_epochs(config.epochs)
    recipe = recipe.replace(batch_size=config.batch_size) if config.batch_size else recipe
    result = train_student(make_student(), None, data, recipe, folder, device=device,
                           resume=(folder / "last.pt").is_file(), seed=config.seed, progress=progress,
                           inputs=Inputs.of(teacher))
    return result.top1


def tune_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per finished trial of the recipe study, best held-out top-1 first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished():
            reached = max(t.intermediate_values) if t.intermediate_values else 0
            rows.append({"trial": t.number, "state": t.state.name.lower(), **t.params,
                         "from": t.user_attrs.get("recipe_id", "sampled"), "epochs_reached": reached,
                         "heldout_top1": t.intermediate_values.get(reached, float("nan")),
                         "test_top1": t.user_attrs.get("test_top1", float("nan"))})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame = frame.sort_values(["epochs_reached", "heldout_top1"], ascending=False, kind="stable")
    return frame.reset_index(drop=True)
