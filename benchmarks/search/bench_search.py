"""`autokd search` end to end: wall time and trials per minute, and evolution against random sampling.

Each seed runs the search twice through `autokd.search.run_search`, with the regularized-evolution sampler and
with the budgeted random sampler, at equal trials, with the same seed and so the same random teacher, scoring
batch and teacher reference. Reported per sampler: wall time, trials/min, the best DisWOT score and the mean of
the top 10; and evolution's gain over random (a difference: scores are negative distances) and the trials/min
ratio.

    python benchmarks/search/bench_search.py                                   # vit_b, 1 GMAC, 200 trials, seed 0
    python benchmarks/search/bench_search.py --seeds 0,1,2 --trials 100
    python benchmarks/search/bench_search.py --teacher resnet20_cifar --budget 25M --space cifar_resnet --trials 20 \
        --population 8 --tournament 3                                    # a quick run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from autokd.proxies.aggregate import DEFAULT_OBJECTIVE
from autokd.search import SearchConfig, SearchResult, run_search

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from benchmarks.common import NOISE_NOTE, RESULTS_DIR, machine, print_table, resolve_device, write_json  # noqa: E402

NAME = "search"
SAMPLERS = ("evolution", "random")  # the second is the baseline


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="vit_b", help="teacher alias or timm name (random init when no weights)")
    p.add_argument("--budget", default="1GFLOP", help="MAC budget")
    p.add_argument("--space", default=None, help="space(s), comma-separated (default: those suiting the teacher)")
    p.add_argument("--trials", type=int, default=200, help="complete trials per sampler and seed")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (mean +- std when several)")
    p.add_argument("--data", default=None, help="ImageFolder dir or zip (default: the synthetic demo set)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the teacher's)")
    p.add_argument("--batch-size", type=int, default=None, help="scoring batch (default: the search's, 32 at 224)")
    p.add_argument("--population", type=int, default=SearchConfig.population_size,
                   help=f"evolution population (default: the search's, {SearchConfig.population_size})")
    p.add_argument("--tournament", type=int, default=SearchConfig.tournament_size,
                   help=f"evolution tournament size (default: the search's, {SearchConfig.tournament_size})")
    p.add_argument("--timeout", type=float, default=None, help="seconds per search run (stops it early)")
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE, help="the score both samplers maximise")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json", help="where the JSON goes")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.trials < 1:
        p.error("--trials must be at least 1")
    return args


def run_stats(result: SearchResult, top: int = 10) -> dict[str, Any]:
    """Trials, timing and the best scores of one finished search."""
    trials = [t for t in result.study.get_trials(deepcopy=False) if t.datetime_complete is not None]
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    values = sorted((t.value for t in complete), reverse=True)
    search_s = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    best = max(complete, key=lambda t: t.value)
    half = complete[: max(1, len(complete) // 2)]
    return {
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "wall_s": result.seconds,
        "search_s": search_s,
        "setup_s": result.seconds - search_s,
        "trials_per_min": 60 * len(complete) / search_s,
        "best": values[0],
        f"top{top}_mean": statistics.fmean(values[:top]),
        "best_at_half": max(t.value for t in half),
        "best_trial": best.number,
        "best_arch": result.leaderboard["arch"].iloc[0],
        "best_macs": best.user_attrs["macs"],
        "max_macs": max(t.user_attrs["macs"] for t in complete),
        "budget_macs": result.context.budget.macs,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (seed, sampler) search, print the table, write the JSON; returns what was written."""
    args = parse_args(argv)
    logging.getLogger("autokd").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")  # fvcore traces with jit
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = machine()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="autokd-bench-") as tmp:
        for seed in args.seeds:
            reference = None
            for sampler in SAMPLERS:
                config = SearchConfig(
                    teacher=args.teacher, budget=args.budget, data=args.data, trials=args.trials, seed=seed,
                    sampler_seed=seed,
                    spaces=tuple(args.space.split(",")) if args.space else None, sampler=sampler,
                    storage=f"sqlite:///{tmp}/{sampler}-{seed}.db", img_size=args.img_size,
                    batch_size=args.batch_size, population_size=args.population,
                    tournament_size=args.tournament, timeout=args.timeout, device=str(device),
                    objective=args.objective,
                )
                result = run_search(config, progress=False)
                ref = result.context.evaluator.reference
                reference = reference or ref
                same = torch.equal(ref.relation, reference.relation) and torch.equal(ref.grad, reference.grad)
                runs.append({"seed": seed, "sampler": sampler, "same_reference": same, **run_stats(result)})
                print(f"seed {seed} {sampler}: {runs[-1]['complete']} trials in {runs[-1]['wall_s']:.0f} s, "
                      f"best {runs[-1]['best']:.5f}", flush=True)
    ctx = result.context
    result_json = {
        "benchmark": NAME,
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "device": str(device), "teacher_name": ctx.teacher.name,
                   "teacher_pretrained": ctx.teacher.pretrained, "img_size": ctx.teacher.img_size,
                   "batch_size": ctx.evaluator.batch.size, "spaces": sorted(ctx.spaces), "data_name": ctx.data_name},
        "machine": info,
        "summary": summarise(runs),
        "note": NOISE_NOTE,
        "runs": runs,
    }
    _print(result_json)
    write_json(result_json, args.out)
    print(f"wrote {args.out}")
    return result_json


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per sampler mean and std over seeds; evolution minus random (best, top-10 mean) and the rate ratio."""
    by = {s: [r for r in runs if r["sampler"] == s] for s in SAMPLERS}
    summary: dict[str, Any] = {}
    for sampler, rows in by.items():
        summary[sampler] = {key: mean_std([r[key] for r in rows])
                            for key in ("best", "top10_mean", "best_at_half", "trials_per_min", "wall_s")}
    pairs = list(zip(by["evolution"], by["random"]))  # same seed order
    summary["evolution_minus_random_best"] = mean_std([e["best"] - r["best"] for e, r in pairs])
    summary["evolution_minus_random_top10_mean"] = mean_std([e["top10_mean"] - r["top10_mean"] for e, r in pairs])
    summary["trials_per_min_ratio"] = mean_std([e["trials_per_min"] / r["trials_per_min"] for e, r in pairs])
    summary["evolution_wins_best"] = sum(e["best"] > r["best"] for e, r in pairs)
    summary["seeds"] = len(pairs)
    summary["all_same_reference"] = all(r["same_reference"] for r in runs)
    return summary


def _print(result: dict[str, Any]) -> None:
    objective = result["config"].get("objective", "score")
    columns = ["sampler", "seed", "trials", "wall s", "setup s", "trials/min", f"best {objective}", "top-10 mean",
               "best @ half", "best GMACs"]
    rows = []
    for r in result["runs"]:
        rows.append([r["sampler"], r["seed"], r["complete"], r["wall_s"], r["setup_s"], r["trials_per_min"],
                     f"{r['best']:.5f}", f"{r['top10_mean']:.5f}", f"{r['best_at_half']:.5f}", r["best_macs"] / 1e9])
    s = result["summary"]
    if s["seeds"] > 1:
        for sampler in SAMPLERS:
            m = s[sampler]
            rows.append([f"{sampler} mean+-std", "all", "", f"{m['wall_s'][0]:.0f}", "",
                         f"{m['trials_per_min'][0]:.4g}+-{m['trials_per_min'][1]:.2g}", _pm(m["best"]),
                         _pm(m["top10_mean"]), _pm(m["best_at_half"]), ""])
    c = result["config"]
    notes = [
        f"teacher {c['teacher_name']} (pretrained={c['teacher_pretrained']}), {c['img_size']} px, batch "
        f"{c['batch_size']}, budget {c['budget']}, spaces {','.join(c['spaces'])}, {c['device']}, "
        f"population {c['population']}, tournament {c['tournament']}; same teacher reference in every run: "
        f"{s['all_same_reference']}",
        f"evolution - random: best {_pm(s['evolution_minus_random_best'])}, top-10 mean "
        f"{_pm(s['evolution_minus_random_top10_mean'])} (higher = evolution better); evolution best > random "
        f"best in {s['evolution_wins_best']}/{s['seeds']} seeds; trials/min evolution/random "
        f"{s['trials_per_min_ratio'][0]:.3g}",
        NOISE_NOTE,
    ]
    print_table("autokd search: evolution vs random", columns, rows, notes)


def _pm(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.5f}+-{pair[1]:.5f}"


if __name__ == "__main__":
    main()
