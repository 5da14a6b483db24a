"""Many workers on one study, on PostgreSQL and SQLite: exactly N complete trials of N distinct architectures,
distinct sampler seeds on every machine, a killed worker's trial failed by the heartbeat and retried."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autokd.search.controller import worker_seed

WORKER = Path(__file__).with_name("search_worker.py")
# The cheapest search: a random CIFAR ResNet-20 teacher on synthetic 32 px images, scored by parameter count.
TINY = dict(teacher="resnet20_cifar", budget="25M", spaces=["cifar_resnet"], population_size=4, tournament_size=2,
            batch_size=4, objective="params")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    return request.getfixturevalue("postgres_url")


def start(config: dict, sync: Path, modes: list[str]) -> list[subprocess.Popen]:
    """One worker process per mode, each in its own process group (as on separate machines)."""
    sync.mkdir(exist_ok=True)
    return [subprocess.Popen([sys.executable, str(WORKER), json.dumps(config), str(sync), mode], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for mode in modes]


def release(procs: list[subprocess.Popen], sync: Path, timeout: float = 180) -> None:
    """Wait until every worker is about to score its first candidate, then let them all go at once."""
    deadline = time.monotonic() + timeout
    while len(list(sync.glob("ready-*"))) < len(procs):
        for p in procs:
            assert p.poll() is None, p.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "workers did not get ready"
        time.sleep(0.1)
    (sync / "go").touch()


def finish(procs: list[subprocess.Popen], timeout: float = 180) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-3000:]


def load(storage: str, name: str) -> optuna.Study:
    from autokd.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage))


def assert_exactly_n_distinct(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == n
    assert len({json.dumps(t.user_attrs["spec"], sort_keys=True) for t in complete}) == n
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    return complete


def test_four_worker_processes_reach_exactly_n_distinct_trials(postgres_url, tmp_path):
    name, n = f"four-{uuid.uuid4().hex[:8]}", 12
    config = {**TINY, "trials": n, "storage": postgres_url, "study_name": name}
    procs = start(config, tmp_path / "sync", ["slow"] * 4)
    release(procs, tmp_path / "sync")
    finish(procs)
    study = load(postgres_url, name)
    complete = assert_exactly_n_distinct(study, n)
    pids = {t.user_attrs["worker"]["pid"] for t in complete}
    assert pids == {p.pid for p in procs}  # all four were mid-trial at once, and each finished trials
    seeds = {t.user_attrs["worker"]["sampler_seed"] for t in complete}
    assert len(seeds) == 4
    # the surplus check keeps the count exact: trials started beyond the target were skipped, not completed
    skipped = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all("skipped" in t.user_attrs or t.user_attrs.get("over_budget") for t in skipped)


def test_two_machines_with_the_same_command_draw_different_seeds(postgres_url, tmp_path):
    name, n = f"machines-{uuid.uuid4().hex[:8]}", 16
    argv = [sys.executable, "-m", "autokd", "search", "--teacher", "resnet20_cifar", "--budget", "25M", "--space",
            "cifar_resnet", "--objective", "params", "--batch-size", "4", "--population", "4", "--tournament", "2",
            "--trials", str(n), "--workers", "2", "--storage", postgres_url, "--study", name, "--quiet"]
    machines = [subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True, cwd=tmp_path) for _ in range(2)]
    finish(machines)
    study = load(postgres_url, name)
    assert_exactly_n_distinct(study, n)
    joined = {k: v for k, v in study.user_attrs.items() if k.startswith("workers/")}
    assert len(joined) == 4  # two machines x two workers, each recorded with its sampler seed
    assert len(set(joined.values())) == 4
    mains = {k.split("/")[1] for k in joined if k.endswith("/0")}
    assert {int(m.rsplit(":", 1)[1]) for m in mains} == {p.pid for p in machines}  # worker 0 of each machine
    assert {t.user_attrs["worker"]["sampler_seed"] for t in study.trials} <= set(joined.values())


def test_a_killed_worker_loses_nothing(storage, tmp_path):
    """SIGKILL one of two workers mid-trial: the heartbeat fails its trial, Optuna's retry callback queues the same
    architecture again, the other worker runs it, and the study still ends with exactly N complete trials."""
    name, n = f"kill-{uuid.uuid4().hex[:8]}", 6
    config = {**TINY, "trials": n, "storage": storage, "study_name": name, "heartbeat": 1}
    sync = tmp_path / "sync"
    victim, survivor = procs = start(config, sync, ["hang", "slow"])
    release(procs, sync)
    while not (sync / f"scoring-{victim.pid}").exists():
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    finish([survivor])

    study = load(storage, name)
    complete = assert_exactly_n_distinct(study, n)
    (killed,) = [t for t in study.trials if t.user_attrs["worker"]["pid"] == victim.pid]
    assert killed.state == TrialState.FAIL and "error" not in killed.user_attrs  # failed by the heartbeat
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["spec"] == killed.user_attrs["spec"]
    assert retry.user_attrs["worker"]["pid"] == survivor.pid and retry in complete


def test_worker_seeds_differ_by_worker_and_machine_and_repeat_with_a_seed(monkeypatch):
    assert worker_seed(None, 0) != worker_seed(None, 0)  # no seed: fresh on every start
    here = [worker_seed(7, k) for k in range(4)]
    assert len(set(here)) == 4 and here == [worker_seed(7, k) for k in range(4)]
    monkeypatch.setattr(socket, "gethostname", lambda: "another-machine")
    assert not set(here) & {worker_seed(7, k) for k in range(4)}


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from autokd.storage import open_storage
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
storage = open_storage(sys.argv[1])
print(len(storage.get_all_studies()))
"""


@pytest.mark.parametrize("round_", range(3))
def test_workers_opening_a_fresh_sqlite_file_at_once_all_succeed(tmp_path, round_):
    """Workers started together race to create Optuna's tables; the loser sees "table already exists" and must
    open the storage the winner made, not fail."""
    url, go = f"sqlite:///{tmp_path}/race.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(go)], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(6)]
    time.sleep(3)  # every process has imported optuna and waits on the go file
    go.touch()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out[-2000:]
        assert out.strip().splitlines()[-1] == "0"
