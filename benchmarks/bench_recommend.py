"""Leave-one-task-out over a recipe knowledge base: the recommender against the best fixed recipe and the default.

For every task of the KB (benchmarks/results/recipe_kb.csv by default), a meta-model fitted on the other tasks
ranks the recipes run on each of its (task, pair) units; the table gives the true gain of the top-1 and of the best
of the top 5, the unit's best gain, the gain of the recipe best on average over the other tasks, and of today's
default rule (DIST for CNN students, KD with AdamW for ViTs) and chance (a random recipe; the best of 5 random),
with each one's regret. Prints the table, writes
benchmarks/results/recommend_loto.{csv,json}.

    python benchmarks/bench_recommend.py [--kb PATH] [--runs-only]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine  # noqa: E402

from autokd.io import write_csv, write_json  # noqa: E402
from autokd.recipes.kb import read_kb  # noqa: E402
from autokd.recipes.loto import leave_one_task_out, loto_summary  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kb", default=str(RESULTS_DIR / "recipe_kb.csv"))
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--runs-only", action="store_true", help="leave out the published rows")
    p.add_argument("--out", default=str(RESULTS_DIR / "recommend_loto"), help="prefix of the .csv and .json")
    args = p.parse_args()
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
    write_csv(f"{args.out}.csv", frame)
    write_json(f"{args.out}.json", {"kb": args.kb, "rows": len(table), "tasks": int(table["task"].nunique()),
                                    "summary": summary, "machine": machine(), "units": frame.to_dict("records")})
    print(f"wrote {args.out}.csv and {args.out}.json")


if __name__ == "__main__":
    main()
