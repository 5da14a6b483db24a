"""Running a search's trials: the optimize loop of one worker (exactly `trials` complete ones, shared with other
workers through the study's storage) and the extra worker processes."""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
import warnings

import optuna
import torch
from optuna.trial import TrialState

from autokd.errors import AutokdError
from autokd.search.controller import SearchConfig, SearchContext, load_or_create_study, make_objective, prepare

log = logging.getLogger("autokd")


def complete_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


MAX_FAILURES = 10  # consecutive failed candidates after which a worker stops: the failure is not the candidate's


def optimize(
    study: optuna.Study, ctx: SearchContext, callbacks: list | None = None, attempt_factor: int = 20
) -> None:
    """Run trials until the study holds exactly `trials` complete ones (counting earlier runs and other workers),
    or the timeout. A failing candidate is recorded and the search goes on; bad input (AutokdError) stops it."""
    target = ctx.config.trials
    deadline = None if ctx.config.timeout is None else time.monotonic() + ctx.config.timeout
    bad_input: list[AutokdError] = []
    objective, tally = make_objective(ctx, bad_input), _Tally()
    attempts = (target - complete_count(study)) * attempt_factor  # bounds TPE/NSGA-II proposing over budget
    while attempts > 0 and tally.failures < MAX_FAILURES and wait_for_room(study, target, deadline):
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[tally, *(callbacks or [])],
                       gc_after_trial=False)
        attempts -= 1
        if bad_input:
            raise bad_input[0]
    if tally.failures >= MAX_FAILURES:
        log.warning("%d candidates in a row failed; this worker stops. The last error: %s", tally.failures,
                    tally.last_error)


class _Tally:
    """A trial callback: counts consecutive failed trials and keeps the last error."""

    def __init__(self):
        self.failures, self.last_error = 0, None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == TrialState.FAIL
        self.failures = self.failures + 1 if failed else 0
        if failed:
            self.last_error = trial.user_attrs.get("error")


def wait_for_room(study: optuna.Study, target: int, deadline: float | None, poll: float = 0.5) -> bool:
    """Wait while complete and running trials make up the target (a running one may still fail); False once the
    study holds the target or the deadline passed. A trial whose worker died is failed here after its grace."""
    while deadline is None or time.monotonic() < deadline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        done = states.count(TrialState.COMPLETE)
        if done >= target:
            return False
        if done + states.count(TrialState.RUNNING) < target:
            return True
        time.sleep(poll)
    return False


def _worker_main(config: SearchConfig, storage_url: str, study_name: str, worker: int) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads() // max(1, config.workers)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        ctx = prepare(config)
        ctx.config.study_name = study_name
        optimize(load_or_create_study(ctx, storage_url, worker), ctx)
    except AutokdError as err:  # the main process reports the outcome; no traceback here
        log.warning("search worker %d stopped: %s", worker, err)
        raise SystemExit(2) from None


def start_workers(config: SearchConfig, storage_url: str, study_name: str) -> list[mp.Process]:
    """Extra processes on the same study (the caller is worker 0); each computes its own teacher reference."""
    spawn = mp.get_context("spawn")
    procs = [
        spawn.Process(target=_worker_main, args=(config, storage_url, study_name, i), daemon=False)
        for i in range(1, config.workers)
    ]
    for p in procs:
        p.start()
    return procs
