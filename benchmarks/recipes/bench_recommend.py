"""Leave-one-task-out over a recipe knowledge base: the recommender against the best fixed recipe and the default.

For every task of the KB (by default the starter KB, autokd/recipes/data/starter_kb.csv), a meta-model fitted on
the other tasks ranks the recipes run on each of its (task, pair) units; the table gives the true gain of the
top-1 and of the best of the top 5, the unit's best gain, the gain of the recipe best on average over the other
tasks, and of today's default rule (DIST for CNN students, KD with AdamW for ViTs) and chance (a random recipe;
the best of 5 random), with each one's regret, the paired bootstrap interval of the regret differences, and the
seed noise (units run on two seeds: how far the best recipe of one seed is from the best of the other). Prints the
table, writes benchmarks/results/recommend_loto.{csv,json} and the README's per-task table, recommend_loto.md.

    python benchmarks/recipes/bench_recommend.py [--kb PATH] [--runs-only]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.io import write_csv, write_json, write_text  # noqa: E402
from autokd.recipes.kb import STARTER_KB, read_kb  # noqa: E402
from autokd.recipes.loto import (  # noqa: E402
    leave_one_task_out,
    loto_summary,
    paired_difference_ci,
    seed_agreement,
)
from benchmarks.common import RESULTS_DIR, machine, markdown_table  # noqa: E402


def per_task_markdown(frame, summary: dict, top: int) -> str:
    """The README table: one row per held-out (task, pair) unit, gains with the recipe picked, then the means."""
    def cells(r: dict, label: str, student: str = "", recipes: str = "") -> list[str]:
        def pick(what: str) -> str:
            recipe = r.get(f"{what}_recipe")
            return f"{r[f'{what}_gain']:+.2f}" if recipe is None else f"{recipe} {r[f'{what}_gain']:+.2f}"

        return [label, student, recipes, pick("best"), pick("top1"), f"{r[f'top{top}_gain']:+.2f}", pick("fixed"),
                f"{r['default_gain']:+.2f}", f"{r['random1_gain']:+.2f}",
                *(f"{r[f'{what}_regret']:.2f}" for what in ("top1", f"top{top}", "fixed", "default"))]

    columns = ["task", "student", "recipes", "best", "top 1", f"best of top {top}", "fixed", "default",
               "random", "top-1 regret", f"top-{top} regret", "fixed regret", "default regret"]
    rows = [cells(r, r["task"], r["student_family"], r["recipes"]) for r in frame.to_dict("records")]
    rows.append(cells(summary, f"**mean of {summary['units']}**"))
    return markdown_table(columns, rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kb", default=str(STARTER_KB), help="the KB CSV (default: the starter KB that ships with autokd)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--runs-only", action="store_true", help="leave out the published rows")
    p.add_argument("--out", default=str(RESULTS_DIR / "recommend_loto"), help="prefix of the .csv, .md and .json")
    args = p.parse_args(argv)
    table = read_kb(args.kb)
    if args.runs_only:
        table = table[table["source"] == "run"]
    frame = leave_one_task_out(table, top=args.top)
    if frame.empty:
        raise SystemExit(f"{args.kb}: no task with at least 2 recipes to hold out; build the KB first")
    summary = loto_summary(frame)
    shown = ["task", "student_family", "recipes", "best_recipe", "best_gain", "top1_recipe", "top1_gain",
             f"top{args.top}_gain", "fixed_recipe", "fixed_gain", "default_gain", "random1_gain",
             f"random{args.top}_gain", "top1_regret", f"top{args.top}_regret", "fixed_regret", "default_regret"]
    print(frame[shown].to_string(index=False, float_format="{:.2f}".format))
    print("mean: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items() if k != "units") +
          f" over {summary['units']} (task, pair) units")
    top = f"top{args.top}"
    comparisons = {f"{base} - {ours} regret": paired_difference_ci(frame, f"{ours}_regret", f"{base}_regret")
                   for ours, base in (("top1", "fixed"), ("top1", "default"), (top, f"random{args.top}"))}
    for name, ci in comparisons.items():
        print(f"{name}: {ci['mean']:+.2f} pt [{ci['low']:+.2f}, {ci['high']:+.2f}] (bootstrap 95% over "
              f"{ci['units']} units; > 0: the recommender's regret is lower)")
    seeds = seed_agreement(table)
    noise = {}
    if len(seeds):
        noise = {"units": len(seeds), "kendall_tau": float(seeds["kendall_tau"].mean()),
                 "cross_seed_regret": float(seeds["cross_seed_regret"].mean()),
                 "seed_sd": float(seeds["seed_sd"].mean())}
        print(f"noise: over {noise['units']} units run on two seeds, the recipes' gains agree with Kendall tau "
              f"{noise['kendall_tau']:+.2f}; the best recipe of one seed has regret {noise['cross_seed_regret']:.2f} "
              f"on the other; one run's gain has sd {noise['seed_sd']:.2f} pt")
    write_csv(f"{args.out}.csv", frame)
    write_text(f"{args.out}.md", per_task_markdown(frame, summary, args.top))
    result = {"kb": args.kb, "rows": len(table), "tasks": int(table["task"].nunique()),
              "summary": summary, "comparisons": comparisons, "noise": noise,
              "seed_units": seeds.to_dict("records"), "machine": machine(),
              "units": frame.to_dict("records")}
    write_json(f"{args.out}.json", result)
    print(f"wrote {args.out}.csv, .md and .json")
    return result


if __name__ == "__main__":
    main()
