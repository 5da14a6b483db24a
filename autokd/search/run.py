"""`autokd search` as a library call: prepare, open or resume the study, run workers, write the outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autokd.errors import AutokdError
from autokd.io import check_writable_dir, write_csv, write_json
from autokd.report import leaderboard, trials_frame, write_report, write_top_specs
from autokd.search.controller import SearchConfig, SearchContext, enqueue_seeds, load_or_create_study, prepare
from autokd.search.workers import optimize, start_workers
from autokd.spaces import ArchSpec
from autokd.storage import masked_url

log = logging.getLogger("autokd")


@dataclass
class SearchResult:
    """The study, its leaderboard, and where the outputs went."""

    study: optuna.Study
    context: SearchContext
    leaderboard: pd.DataFrame
    storage_url: str
    out: Path | None
    seconds: float
    #: what the leaderboard folds on (a spec's macro configuration), None with every trial shown
    fold: Callable[[ArchSpec], Hashable] | None = None


def macro_fold(ctx: SearchContext) -> Callable[[ArchSpec], Hashable]:
    """A spec's macro configuration in its space (`SearchSpace.macro_key`): what the leaderboard folds on."""

    def key(spec: ArchSpec) -> Hashable:
        space = ctx.spaces.get(spec.space)
        return spec if space is None else space.macro_key(spec)

    return key


def run_search(config: SearchConfig, out: str | Path | None = None, top_k: int = 10, progress: bool = True,
               check: Callable[[SearchContext], None] | None = None, all_trials: bool = False) -> SearchResult:
    """Run (or resume) a search until its study holds `config.trials` complete trials; write outputs to `out`.
    `check` may refuse the prepared context (raise AutokdError) before anything is written. The leaderboard
    shows `top_k` distinct macro configurations, each its best trial (`all_trials`: the best `top_k` trials)."""
    start = time.perf_counter()
    out = check_writable_dir(out) if out else None
    if top_k < 1:
        raise AutokdError(f"--top-k must be at least 1, got {top_k}")
    ctx = prepare(config)  # every input error is raised here, before anything is written
    if check is not None:
        check(ctx)
    for note in ctx.notes:
        log.info(note)
    storage_url = config.storage_url(out)
    if out and config.storage is None:  # the default study database lives in the output folder
        out.mkdir(parents=True, exist_ok=True)
    study = load_or_create_study(ctx, storage_url)
    enqueue_seeds(study, ctx)

    workers = []
    if config.workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // config.workers))
        workers = start_workers(config, storage_url, study.study_name)
    try:
        if progress:
            with _progress_bar(study, ctx) as callback:
                optimize(study, ctx, callbacks=[callback])
        else:
            optimize(study, ctx)
    finally:
        for proc in workers:
            proc.join()
    failed = [p.exitcode for p in workers if p.exitcode != 0]
    if failed:
        log.warning("%d search worker(s) stopped early (exit codes %s)", len(failed), failed)
    check_complete(study, config.trials)

    fold = None if all_trials else macro_fold(ctx)
    board = leaderboard(study, config.objective, top_k, fold=fold)
    if out:
        write_outputs(study, ctx, board, out)
    return SearchResult(study, ctx, board, storage_url, out, time.perf_counter() - start, fold)


def check_complete(study: optuna.Study, target: int) -> int:
    """The number of complete trials; none at all is an error that names the cause."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    if done == 0:
        errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
        cause = f"every candidate failed, the last with {errors[-1]}" if errors else "the time ran out first"
        raise AutokdError(f"the search finished no trial ({cause}): give a longer --timeout, or fix the cause and "
                          "run the same command again")
    if done < target:
        log.warning("the study holds %d of %d complete trials (time out or failing candidates)", done, target)
    return done


def write_outputs(study: optuna.Study, ctx: SearchContext, board: pd.DataFrame, out: Path) -> None:
    """leaderboard.csv, top/<rank>.yaml, report.html and the config, next to the study."""
    write_csv(out / "leaderboard.csv", board.drop(columns=["spec_json"]))
    storage = masked_url(ctx.config.storage_url(out))
    meta = {**ctx.study_attrs(), "study": study.study_name, "storage": storage}
    write_top_specs(board, out / "top", meta)
    write_report(trials_frame(study), board, out / "report.html", ctx.config.objective, ctx.budget.macs,
                 title=f"autokd search: {study.study_name}")
    write_json(out / "search.json", {**asdict(ctx.config), "storage": storage})


class _progress_bar:
    """A rich progress bar over complete trials, showing the best score so far."""

    def __init__(self, study: optuna.Study, ctx: SearchContext):
        self.ctx = ctx
        self.progress = Progress(
            TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(), transient=False,
        )
        self.task = self.progress.add_task("search", total=ctx.config.trials, completed=0, best="-")
        self(study, None)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> None:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        best = max((t.user_attrs[self.ctx.config.objective] for t in done), default=None)
        self.progress.update(self.task, completed=min(len(done), self.ctx.config.trials),
                             best="-" if best is None else f"{best:.4f}")
