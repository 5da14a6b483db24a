"""Search quality on NAS-Bench-201: the 200-epoch accuracy of the network that `autokd search` hands its user.

Runs autokd's own search, the library call that `autokd search --space nb201 --teacher resnet56_cifar --data
CIFAR-10` makes (prepare, Optuna study, sampler, objective, budget check, leaderboard), with each candidate's
scores read from a table of all 15,625 networks scored once on the search's fixed batch (`score_nb201.py
--size 15625`, as NAS-Bench-Suite-Zero precomputes its proxies); `--live` runs a few seeds for real and checks
that live and replay pick the same network. The pick is looked up by its cell string in the benchmark's
200-epoch CIFAR-10 and CIFAR-100 test accuracy. Beside it, in the same run: the largest #params among N random
networks, the best true accuracy among N random networks (an oracle) and the best network of all, 200 draws
each; under MACs budgets, the best network under the budget. Rows are written as they come and a rerun skips
the ones done.

    python benchmarks/search/bench_nb201_search.py --trials 100,1000 --seeds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.cost import Cost  # noqa: E402
from autokd.proxies import PROXIES, proxy_of  # noqa: E402
from autokd.proxies.aggregate import DEFAULT_OBJECTIVE, aggregate_terms  # noqa: E402
from autokd.report import leaderboard  # noqa: E402
from autokd.search import SearchConfig, prepare  # noqa: E402
from autokd.search.controller import SearchContext, enqueue_seeds, load_or_create_study  # noqa: E402
from autokd.search.evaluate import CandidateEvaluator  # noqa: E402
from autokd.search.workers import optimize  # noqa: E402
from autokd.spaces import ArchSpec, load_space  # noqa: E402
from autokd.spaces.nb201 import cell_string, spec_from_cell  # noqa: E402
from autokd.storage import MEMORY  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, markdown_table, print_table, write_json  # noqa: E402
from benchmarks.ranking.score_nb201 import DATA, TEACHER_WEIGHTS, ground_truth  # noqa: E402

TABLES = (RESULTS_DIR / "nb201_all" / "scores_synflow_c10.csv",)
OUT = RESULTS_DIR / "nb201_search"
SAMPLERS = ("evolution", "random", "tpe", "nsga2")
#: the largest network, all six edges 3x3 convs, at 10 classes
LARGEST_MACS = 221_934_208


def load_table(paths: list[Path]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Scores by cell string, merged over the files, and each proxy's mean CPU seconds per network."""
    frames = [pd.read_csv(p).drop(columns=["head", "index"]).set_index("arch") for p in paths]
    table = pd.concat(frames, axis=1)
    table = table.loc[:, ~table.columns.duplicated()]
    seconds = {c[4:]: float(table[c].mean()) for c in table.columns if c.startswith("sec_")}
    scores = table.drop(columns=[c for c in table.columns if c.startswith("sec_")])
    return scores.to_dict("index"), seconds


@contextmanager
def replayed(table: dict[str, dict[str, float]]) -> Iterator[None]:
    """Within the block, every CandidateEvaluator reads costs and scores from `table` instead of measuring them:
    MACs from the closed form (held to fvcore's count by tests/test_nb201.py), params and scores as tabled."""
    original_cost, original_score = CandidateEvaluator.cost, CandidateEvaluator.score

    def cost(self: CandidateEvaluator, spec: ArchSpec) -> Cost:
        row = table[cell_string(spec)]
        return Cost(macs=self.estimate(spec), params=int(row["params"]))

    def score(self: CandidateEvaluator, spec: ArchSpec) -> dict[str, float]:
        if not self.budget.fits(self.cost(spec)):
            raise ValueError(f"refusing to score {spec}: over the budget {self.budget}")
        row = table[cell_string(spec)]
        return {key: float(row[key]) for proxy in self.proxies for key in PROXIES[proxy].outputs if key in row}

    CandidateEvaluator.cost, CandidateEvaluator.score = cost, score
    try:
        yield
    finally:
        CandidateEvaluator.cost, CandidateEvaluator.score = original_cost, original_score


def search_config(objective: str, budget: int, **changes) -> SearchConfig:
    """What `autokd search --space nb201 --teacher resnet56_cifar --data CIFAR-10` sets, for this budget."""
    return SearchConfig(teacher="resnet56_cifar", teacher_weights=str(TEACHER_WEIGHTS), data=str(DATA),
                        budget=str(budget), spaces=("nb201",), objective=objective, seed=0, **changes)


def replay_board(ctx: SearchContext, sampler: str, seed: int, trials: int) -> tuple[pd.DataFrame, float]:
    """One search on the prepared context, in memory: its leaderboard (best first) and CPU seconds."""
    config = dataclasses.replace(ctx.config, sampler=sampler, sampler_seed=seed, trials=trials, storage=MEMORY,
                                 study_name=f"replay-{sampler}-{seed}-{trials}")
    run = dataclasses.replace(ctx, config=config)
    start = time.process_time()
    study = load_or_create_study(run, MEMORY)
    enqueue_seeds(study, run)
    optimize(study, run)
    board = leaderboard(study, config.objective)
    return board, time.process_time() - start


def replay(ctx: SearchContext, sampler: str, seed: int, trials: int) -> tuple[ArchSpec, float, int]:
    """One search on the prepared context, in memory: its top pick, seconds, and distinct networks scored."""
    board, seconds = replay_board(ctx, sampler, seed, trials)
    return ArchSpec.from_json(board["spec_json"].iloc[0]), seconds, int(board["spec_json"].nunique())


def nni_rows(table: dict[str, dict[str, float]], objective: str, trials: list[int], seeds: int,
             accuracy: dict[str, dict[str, float]], rows_path: Path, done: set, score_seconds: float) -> list[dict]:
    """NNI's strategies driven by the same objective value (the search's aggregate against its reference)."""
    from benchmarks.search.nni_nb201 import STRATEGIES, nni_search

    with replayed(table):
        ctx = prepare(search_config(objective, LARGEST_MACS))
    rows = []
    with rows_path.open("a") as f:
        for strategy in STRATEGIES:
            for n in trials:
                for seed in range(seeds):
                    if (f"nni {strategy}", n, 1.0, seed) in done:
                        continue
                    start = time.process_time()
                    cell, distinct = nni_search(lambda c: ctx.objective_value(table[c]), strategy, n, seed)
                    row = {"sampler": f"nni {strategy}", "trials": n, "budget_fraction": 1.0, "budget": LARGEST_MACS,
                           "seed": seed, "pick": cell, "c10": accuracy[cell]["c10_test"],
                           "c100": accuracy[cell]["c100_test"], "replay_cpu_s": time.process_time() - start,
                           "distinct_scored": distinct, "objective": objective}
                    row["macs"] = load_space("nb201", 32).estimate_macs(spec_from_cell(cell), 10)
                    row["live_cpu_s_estimate"] = row["replay_cpu_s"] + distinct * score_seconds
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    rows.append(row)
                    print(f"nni {strategy} N={n} seed {seed}: {cell} {row['c10']:.2f} / {row['c100']:.2f}", flush=True)
    return rows


def live_check(objective: str, seeds: int, trials: int, folder: Path) -> None:
    """The same searches run for real (`run_search`, scores measured), one line each in `folder`/checks.jsonl;
    a rerun skips the seeds done."""
    from autokd.search import run_search

    path = folder / "checks.jsonl"
    done = {c["seed"] for c in read_rows(path) if c["trials"] == trials and c["objective"] == objective}
    for seed in range(seeds):
        if seed in done:
            continue
        db = folder / f"live-{trials}-{seed}.db"
        db.unlink(missing_ok=True)  # a half-run study would resume with other trials
        config = search_config(objective, LARGEST_MACS, trials=trials, sampler_seed=seed, storage=f"sqlite:///{db}")
        start = time.process_time()
        live = run_search(config, progress=False)
        seconds = time.process_time() - start
        pick = cell_string(ArchSpec.from_json(live.leaderboard["spec_json"].iloc[0]))
        with path.open("a") as f:
            f.write(json.dumps({"seed": seed, "trials": trials, "objective": objective, "live_pick": pick,
                                "live_cpu_s": seconds, "threads": torch.get_num_threads()}) + "\n")
        db.unlink()


def refine_lines(path: Path, n: int, search_cpu: float | None) -> list[list[str]]:
    """The default search's top K refined by short KD (`bench_nb201_refine.py`), one row per setting; CPU is the
    timed live search's (`search_cpu`, else the estimate) plus the refinement's."""
    frame = pd.DataFrame(read_rows(path))
    if frame.empty or not (frame.trials == n).any():
        return []
    lines = []
    for (top, epochs, images), part in frame[frame.trials == n].groupby(["top", "epochs", "images"], sort=False):
        search = part.search_cpu_s_estimate if search_cpu is None else search_cpu
        cost = (search + part.refine_cpu_s_estimate).mean()
        lines.append(summary_line(f"autokd evolution + --refine {top} --refine-epochs {epochs}", n, "none",
                                  part.c10.tolist(), part.c100.tolist(),
                                  f"CPU {cost:.0f} s with the search ({part.candidate_epochs.mean():.0f} "
                                  f"candidate-epochs of {images} images, {part.refine_seed.nunique()} refine seed(s))"))
    return lines


def anchors(gt: pd.DataFrame, macs: np.ndarray, params: np.ndarray, n: int, budget: int, draws: int = 200,
            seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Largest #params and best true accuracy among n random networks under the budget, `draws` times."""
    rng = np.random.default_rng(seed)
    under = np.flatnonzero(macs <= budget)
    c10, c100 = gt["c10_test"].to_numpy(), gt["c100_test"].to_numpy()
    out: dict[str, list[list[float]]] = {"params": [[], []], "oracle": [[], []]}
    for _ in range(draws):
        pick = rng.choice(under, size=min(n, len(under)), replace=False)
        by_size = pick[np.argmax(params[pick])]
        out["params"][0].append(c10[by_size])
        out["params"][1].append(c100[by_size])
        out["oracle"][0].append(c10[pick].max())
        out["oracle"][1].append(c100[pick].max())
    return {k: (np.array(v[0]), np.array(v[1])) for k, v in out.items()}


def read_rows(path: Path) -> list[dict]:
    """The searches already run (one JSON object a line)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def summary_line(name: str, n: int, budget_label: str, c10: list[float], c100: list[float], extra: str = "",
                 seconds: str = "-") -> list[str]:
    """One table row: mean +- sd of the picks' accuracies over the runs."""
    sd = statistics.stdev if len(c10) > 1 else (lambda _: 0.0)
    return [name, str(n), budget_label, f"{np.mean(c10):.2f} +- {sd(c10):.2f}", f"{np.mean(c100):.2f} +- "
            f"{sd(c100):.2f}", str(len(c10)), seconds, extra]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", type=Path, action="append", help="score_nb201.py CSVs of all 15,625 networks")
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE)
    p.add_argument("--trials", default="100,1000", help="scored candidates per search, comma-separated")
    p.add_argument("--seeds", type=int, default=10, help="sampler seeds per setting")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--budgets", default="1,0.25,0.5,0.75", help="fractions of the largest network's MACs")
    p.add_argument("--budget-samplers", default="evolution", help="samplers also run under the smaller budgets")
    p.add_argument("--nni", action="store_true",
                   help="also run NNI 3.0's Random and RegularizedEvolution on the same objective (no budget)")
    p.add_argument("--live", type=int, default=0, help="also run this many seeds live")
    p.add_argument("--live-trials", type=int, help="N of the live searches (default: the first --trials)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("autokd").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    table, seconds = load_table(args.table or list(TABLES))
    terms = aggregate_terms(args.objective) or (args.objective,)
    missing = [t for t in terms if t not in next(iter(table.values()))]
    if args.live > args.seeds or (args.live and "evolution" not in args.samplers.split(",")):
        raise SystemExit("--live compares with the evolution replays of the same seeds: keep --live <= --seeds and "
                         "evolution in --samplers")
    if len(table) < 15625 or missing:
        raise SystemExit(f"the table holds {len(table)} of 15,625 networks and lacks {missing or 'nothing'}: "
                         "finish score_nb201.py --size 15625 with the objective's proxies first")
    gt = ground_truth()
    accuracy = gt.set_index("arch")[["c10_test", "c100_test"]].to_dict("index")
    space = load_space("nb201", 32)
    macs = np.array([space.estimate_macs(spec_from_cell(a), 10) for a in gt["arch"]])
    params = np.array([table[a]["params"] for a in gt["arch"]])
    score_seconds = sum(seconds.get(p, 0.0) for p in {proxy_of(t) or t for t in terms})

    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "searches.jsonl"
    rows = [r for r in read_rows(rows_path) if r["objective"] == args.objective]  # other objectives: not ours
    done = {(r["sampler"], r["trials"], r["budget_fraction"], r["seed"]) for r in rows}
    trials = [int(t) for t in args.trials.split(",")]
    fractions = [float(f) for f in args.budgets.split(",")]
    with replayed(table), rows_path.open("a") as f:
        for fraction in fractions:
            budget = int(LARGEST_MACS * fraction)
            samplers = args.samplers.split(",") if fraction == 1 else args.budget_samplers.split(",")
            ctx = None
            for sampler in samplers:
                for n in trials:
                    for seed in range(args.seeds):
                        if (sampler, n, fraction, seed) in done:
                            continue
                        ctx = ctx or prepare(search_config(args.objective, budget))
                        pick, cpu, distinct = replay(ctx, sampler, seed, n)
                        cell = cell_string(pick)
                        row = {"sampler": sampler, "trials": n, "budget_fraction": fraction, "budget": budget,
                               "seed": seed, "pick": cell, "macs": space.estimate_macs(pick, 10),
                               "c10": accuracy[cell]["c10_test"], "c100": accuracy[cell]["c100_test"],
                               "replay_cpu_s": cpu, "distinct_scored": distinct,
                               "live_cpu_s_estimate": cpu + distinct * score_seconds, "objective": args.objective}
                        if row["macs"] > budget:
                            raise RuntimeError(f"a pick over its budget: {row}")
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                        rows.append(row)
                        print(f"{sampler} N={n} budget {fraction:g} seed {seed}: {cell} {row['c10']:.2f} / "
                              f"{row['c100']:.2f}", flush=True)

    if args.nni:
        rows += nni_rows(table, args.objective, trials, args.seeds, accuracy, rows_path, done, score_seconds)

    if args.live:
        (args.out / "live").mkdir(exist_ok=True)
        live_check(args.objective, args.live, args.live_trials or trials[0], args.out / "live")
    checks = []
    for check in read_rows(args.out / "live" / "checks.jsonl"):
        if check["objective"] != args.objective:
            continue
        replayed_pick = next(r["pick"] for r in rows if r["sampler"] == "evolution" and r["seed"] == check["seed"]
                             and r["trials"] == check["trials"] and r["budget_fraction"] == 1)
        checks.append({**check, "replay_pick": replayed_pick, "same": check["live_pick"] == replayed_pick})
        print(f"live check N={check['trials']} seed {check['seed']}: live {check['live_pick']} "
              f"({check['live_cpu_s']:.0f} CPU s), replay {replayed_pick}: "
              f"{'same' if checks[-1]['same'] else 'DIFFERENT'}", flush=True)
    timed = pd.DataFrame(checks, columns=["trials", "live_cpu_s", "same"])

    frame = pd.DataFrame(rows)
    lines = []
    for fraction in fractions:
        budget = int(LARGEST_MACS * fraction)
        label = "none" if fraction == 1 else f"{fraction:.0%} ({budget / 1e6:.0f} M)"
        for n in trials:
            part = frame[(frame.budget_fraction == fraction) & (frame.trials == n)]
            live = timed[timed.trials == n]
            for sampler, group in part.groupby("sampler", sort=False):
                name = (f"NNI 3.0 {sampler[4:]} (same objective)" if sampler.startswith("nni ") else
                        f"autokd {sampler}" + (" (default)" if sampler == "evolution" else ""))
                note = f"live est. {group.live_cpu_s_estimate.mean():.0f} s"
                if sampler == "evolution" and fraction == 1 and len(live):
                    note = (f"live {live.live_cpu_s.mean():.0f} CPU s ({len(live)} timed, "
                            f"{int(live.same.sum())} same pick)")
                lines.append(summary_line(name, n, label, group.c10.tolist(), group.c100.tolist(), note,
                                          f"{group.replay_cpu_s.mean():.1f}"))
            if fraction == 1:
                lines += refine_lines(args.out / "refine.jsonl", n,
                                      live.live_cpu_s.mean() if len(live) else None)
            draws = anchors(gt, macs, params, n, budget)
            lines.append(summary_line("largest #params of N random", n, label, *map(list, draws["params"])))
            lines.append(summary_line("best of N random (oracle)", n, label, *map(list, draws["oracle"])))
        under = gt[macs <= budget]
        lines.append([f"best network under the budget (of {len(under)})", "-", label,
                      f"{under.c10_test.max():.2f}", f"{under.c100_test.max():.2f}", "-", "-", ""])
    columns = ["search", "N scored", "MACs budget", "CIFAR-10 top-1", "CIFAR-100 top-1", "runs",
               "replay CPU s", "note"]
    print_table(f"NAS-Bench-201 search quality: objective {args.objective}, 200-epoch test accuracy of the pick",
                columns, lines, [f"scores per network: {score_seconds:.2f} CPU s ({args.objective}), from the table",
                                 "live est. = replay CPU s + distinct networks scored x scoring CPU s; live = a "
                                 "timed `run_search`, one thread"])
    (args.out / "search_quality.md").write_text(markdown_table(columns, lines) + "\n")
    result = {"objective": args.objective, "rows": rows, "live_checks": checks, "table": lines,
              "score_seconds": score_seconds,
              "machine": machine()}
    print(f"wrote {write_json(result, args.out / 'search_quality.json')}")
    return result


if __name__ == "__main__":
    main()
