"""Which ranking should `autokd search` use? Every score and aggregate on every ground truth, in one table.

Reads the per-spec scores that `bench_proxy_quality.py --scores-out` wrote for each ground truth, and the
stability figures of `bench_proxy_stability.py`. For every score and rank aggregate it reports, per ground truth,
Kendall tau against KD accuracy with a bootstrap 95% interval and the true rank of its top pick; beside them the
noise ceiling (Kendall tau between two seeds of the same students, where the ground truth has two), the mean tau
over the ground truths, the worst stability tau over the settings measured, and the CPU seconds per candidate.

The default is chosen by rule: the best mean tau among the rows whose stability passes (>= 0.8 everywhere it was
measured) and that keep a search fast: at most `SPEED_LIMIT_S` CPU seconds per candidate in the `--cost` run
(a 1 GMAC ViT at 224 px, batch 32: a 1,000-candidate search then fits in 10 minutes on 2 cores). A learned
choice is judged leave-one-ground-truth-out: for each ground truth, the row with the best mean tau on the others
is picked and its tau on the held-out one is reported, never the row's own best.

    python benchmarks/ranking/bench_ranking_table.py \
        --gt s1=benchmarks/results/scores_s1.csv --gt c10=benchmarks/results/scores_c10.csv:space \
        --seeds c10=benchmarks/results/gt_cifar10_v2.csv --stability benchmarks/results/proxy_stability.json \
        --cost benchmarks/results/proxy_cost_224.json
`NAME=CSV:space` also makes one ground truth per search space of the CSV (NAME/cifar_resnet, NAME/vit).
`--shown NAME=CSV[:space]` adds a ground truth to the table that neither the mean nor the choices count (one
that a rebuilt ground truth supersedes). `--group NAME=GT1,GT2` counts several ground truths once, by their mean
tau (e.g. NAS-Bench-201's CIFAR-10 and CIFAR-100 columns, one benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.io import write_text  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, markdown_table, print_table, write_json  # noqa: E402
from benchmarks.ranking.bench_proxy_quality import (  # noqa: E402
    COMBINATIONS,
    add_combinations,
    bootstrap_ci,
    kendall_tau,
    oriented_column,
    score_keys,
    top_pick_rank,
)

BASELINES = ("params", "macs")
SPEED_LIMIT_S = 1.0
MIN_SPECS = 8


def ground_truths(specs: list[str]) -> dict[str, pd.DataFrame]:
    """NAME=CSV[:space] -> one frame per ground truth (the whole CSV, and per space when asked)."""
    out = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        path, _, split = rest.partition(":")
        frame = pd.read_csv(path)
        out[name] = frame
        if split == "space" and "space" in frame.columns and frame["space"].nunique() > 1:
            for space, part in frame.groupby("space"):
                if len(part) >= MIN_SPECS:
                    out[f"{name}/{space}"] = part.reset_index(drop=True)
    return out


def seed_ceiling(raw_path: str, spaces: str | None, resamples: int, seed: int) -> dict | None:
    """Kendall tau between seed 0 and seed 1 of the students that have both (the ground truth's noise ceiling)."""
    raw = pd.read_csv(raw_path)
    if "seed" not in raw.columns or raw["seed"].nunique() < 2:
        return None
    if spaces is not None:
        raw = raw[raw["space"] == spaces]
    wide = raw.pivot_table(index="spec", columns="seed", values="kd_acc").dropna()
    if len(wide) < MIN_SPECS:
        return None
    a, b = wide.iloc[:, 0].to_numpy(float), wide.iloc[:, 1].to_numpy(float)
    return {"tau": kendall_tau(a, b), "tau_ci": bootstrap_ci(a, b, kendall_tau, resamples, seed=seed),
            "n": len(wide), "source": str(raw_path)}


def quality(frame: pd.DataFrame, rows: list[str], resamples: int, seed: int) -> dict[str, dict]:
    """tau [CI] and top-pick rank of every row against kd_acc (rows the frame lacks are left out)."""
    frame = add_combinations(frame.drop(columns=[c for c in COMBINATIONS if c in frame.columns]))
    y_all = frame["kd_acc"].to_numpy(float)
    out = {}
    for row in rows:
        if row not in frame.columns:
            continue
        x = oriented_column(frame, row)
        ok = ~np.isnan(x)
        if ok.sum() < MIN_SPECS or np.ptp(x[ok]) == 0:
            continue
        out[row] = {"tau": kendall_tau(x[ok], y_all[ok]),
                    "tau_ci": bootstrap_ci(x[ok], y_all[ok], kendall_tau, resamples, seed=seed),
                    "top_pick_rank": top_pick_rank(x[ok], y_all[ok]), "n": int(ok.sum())}
    return out


def worst_stability(paths: list[str]) -> tuple[dict[str, float], list[str]]:
    """Per score: the lowest batch-to-batch tau over the settings of the stability JSONs, and those settings
    (a score that could not be computed in a setting, nan there, does not count against it)."""
    worst: dict[str, float] = {}
    settings: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for name, setting in data["settings"].items():
            settings.append(f"{name} ({setting['students']} students)")
            for key, value in setting["stability"].items():
                if value["n"] > 1 and value["tau"] == value["tau"]:
                    worst[key] = min(worst.get(key, 1.0), value["tau"])
    return worst, settings


def cpu_seconds(path: str | None, keys: list[str]) -> dict[str, float]:
    """CPU seconds per candidate of each score (the first setting of a stability JSON), an aggregate summing its
    terms."""
    if not path or not Path(path).is_file():
        return {}
    from autokd.proxies import proxy_of
    from autokd.proxies.aggregate import aggregate_terms

    setting = next(iter(json.loads(Path(path).read_text())["settings"].values()))
    per_proxy = setting["cpu_seconds_per_candidate"]
    out = {}
    for key in keys:
        proxies = {proxy_of(t) for t in (aggregate_terms(key) or (key,))}
        if all(p in per_proxy for p in proxies):
            out[key] = sum(per_proxy[p] for p in proxies)
    return out


def grouped(table: dict[str, dict[str, dict]], groups: dict[str, list[str]]) -> dict[str, dict[str, dict]]:
    """The table with each group's ground truths replaced by one whose tau is their mean (rows all of them have)."""
    out = {g: t for g, t in table.items() if not any(g in members for members in groups.values())}
    for name, members in groups.items():
        rows = set.intersection(*(set(table[m]) for m in members))
        out[name] = {r: {"tau": float(np.mean([table[m][r]["tau"] for m in members]))} for r in rows}
    return out


def leave_one_out(table: dict[str, dict[str, dict]], eligible: list[str]) -> dict[str, dict]:
    """For each ground truth: the eligible row with the best mean tau on the others, and its tau there."""
    out = {}
    for held in table:
        others = [g for g in table if g != held]
        means = {r: np.mean([table[g][r]["tau"] for g in others]) for r in eligible
                 if all(r in table[g] for g in others) and r in table[held]}
        if not means:
            continue
        pick = max(means, key=means.get)
        out[held] = {"pick": pick, "mean_tau_elsewhere": float(means[pick]), "tau": table[held][pick]["tau"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gt", action="append", required=True, help="NAME=SCORES_CSV[:space] (repeatable)")
    p.add_argument("--shown", action="append", help="NAME=SCORES_CSV[:space]: in the table, not in the mean")
    p.add_argument("--group", action="append", default=[],
                   help="NAME=GT1,GT2: count these ground truths once, by their mean tau (repeatable)")
    p.add_argument("--seeds", action="append",
                   help="NAME=GROUND_TRUTH_CSV with two seeds per student: the noise ceiling of NAME (repeatable)")
    p.add_argument("--stability", action="append", help="a bench_proxy_stability.py JSON (repeatable)")
    p.add_argument("--cost", default=str(RESULTS_DIR / "proxy_cost_224.json"),
                   help="a stability JSON whose first setting gives the CPU seconds per candidate")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS_DIR / "ranking_table.json"))
    p.add_argument("--markdown", default=str(RESULTS_DIR / "ranking_table.md"))
    args = p.parse_args(argv)

    gts = ground_truths(args.gt)
    shown_gts = ground_truths(args.shown or [])
    keys = list(dict.fromkeys(k for f in gts.values() for k in score_keys(f)))
    rows = [*keys, *COMBINATIONS]
    table = {name: quality(frame, rows, args.resamples, args.seed) for name, frame in gts.items()}
    shown = {name: quality(frame, rows, args.resamples, args.seed) for name, frame in shown_gts.items()}
    rows = [r for r in rows if any(r in t for t in table.values())]
    complete = [r for r in rows if all(r in t for t in table.values())]  # rows every ground truth could judge
    ceilings = {}
    for spec in args.seeds or ():
        name, _, path = spec.partition("=")
        for gt in {**gts, **shown_gts}:
            if gt == name or gt.startswith(name + "/"):
                ceilings[gt] = seed_ceiling(path, gt.split("/", 1)[1] if "/" in gt else None, args.resamples,
                                            args.seed)
    stable, settings = worst_stability(args.stability or [])
    seconds = cpu_seconds(args.cost, rows)
    groups = {name: members.split(",") for name, _, members in (g.partition("=") for g in args.group)}
    unknown = [m for members in groups.values() for m in members if m not in table]
    if unknown:
        raise SystemExit(f"--group names ground truths that --gt does not give: {unknown}")
    counted = grouped(table, groups)  # each benchmark once
    mean = {r: float(np.mean([counted[g][r]["tau"] for g in counted if r in counted[g]])) for r in rows}
    # a default must read every model: rows that some ground truth could not judge are shown, not chosen
    eligible = [r for r in complete
                if stable.get(r, -1.0) >= 0.8 and seconds.get(r, float("inf")) <= SPEED_LIMIT_S]
    default = max(eligible, key=mean.get) if eligible else None
    loo = leave_one_out(counted, eligible)
    best_size = {g: max(table[g][b]["tau"] for b in BASELINES if b in table[g]) for g in table}

    everything = {**table, **shown}
    columns = ["score", *[f"{g}{' (not counted)' if g in shown else ''}" for g in everything], "mean tau",
               "stability (worst)", "CPU s/cand"]
    lines = []
    for r in sorted(rows, key=lambda r: -mean[r]):
        cells = [(f"{t[r]['tau']:+.2f} [{t[r]['tau_ci'][0]:+.2f}, {t[r]['tau_ci'][1]:+.2f}] "
                  f"({t[r]['top_pick_rank']}/{t[r]['n']})" if r in t else "-") for t in everything.values()]
        lines.append([r + (" (default)" if r == default else ""), *cells,
                      f"{mean[r]:+.3f}" + ("" if r in complete else " (partial)"),
                      f"{stable[r]:+.2f}" if r in stable else "-", f"{seconds[r]:.3f}" if r in seconds else "-"])
    ceiling_row = ["noise ceiling (seed 0 vs 1)",
                   *[(f"{c['tau']:+.2f} [{c['tau_ci'][0]:+.2f}, {c['tau_ci'][1]:+.2f}] (n {c['n']})"
                      if (c := ceilings.get(g)) else "n/a") for g in everything], "", "", ""]
    loo_row = ["leave-one-out pick", *[(f"{loo[g]['tau']:+.2f} ({loo[g]['pick']})" if g in loo else
                                        f"in {n}: {loo[n]['tau']:+.2f} ({loo[n]['pick']})" if n in loo else "-")
                                       for g in everything
                                       for n in [next((k for k, m in groups.items() if g in m), g)]], "", "", ""]
    goal = ", ".join(f"{g} {'yes' if table[g][default]['tau'] >= best_size[g] + 0.05 else 'no'} "
                     f"({table[g][default]['tau'] - best_size[g]:+.2f})" for g in table) if default else "-"
    print_table("every score on every ground truth: Kendall tau vs KD accuracy", columns,
                [*lines, ceiling_row, loo_row],
                [f"default (best mean tau among rows stable >= 0.8 on {', '.join(settings) or 'nothing measured'}"
                 f" and <= {SPEED_LIMIT_S:g} CPU s per candidate): {default}",
                 f"beats the better of params and MACs by >= +0.05 on: {goal}",
                 *[f"{name} counts once: the mean of {', '.join(m)}" for name, m in groups.items()]])
    write_text(args.markdown, markdown_table(["score", *columns[1:]], [*lines, ceiling_row, loo_row]))
    result = {"ground_truths": {g: len(f) for g, f in gts.items()}, "table": table, "shown": shown,
              "eligible": eligible, "speed_limit_s": SPEED_LIMIT_S,
              "shown_ground_truths": {g: len(f) for g, f in shown_gts.items()}, "mean_tau": mean,
              "stability_worst": stable, "stability_settings": settings, "cpu_seconds": seconds,
              "noise_ceiling": ceilings, "default": default, "leave_one_out": loo, "groups": groups,
              "best_size_baseline": best_size, "machine": machine()}
    print(f"wrote {write_json(result, Path(args.out))} and {args.markdown}")
    return result


if __name__ == "__main__":
    main()
