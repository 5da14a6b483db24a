"""Which of DisWOT's open choices ranks trained students best? One rescoring of the ground truth per variant.

Variants: the trained teacher or a randomly initialised copy of it (the search's default), the other width
matchings (pool, correlation, class), batch 32 and 128 (default 64), another fixed batch, the mean over 4 fixed
batches, the relation term on the pooled features instead of the last feature map, scoring at 64 px. Reports
Kendall tau (95% CI) of DisWOT and its two terms against KD accuracy, beside the params baseline and the
budget-aware combination (log-rank sum of params and DisWOT, AZ-NAS style), and writes results/proxy_variants.json.

    python benchmarks/ranking/bench_proxy_variants.py --gt benchmarks/results/gt_cifar10.csv \
        --data ../shared/data/cifar10-jpeg.zip --teacher-weights ../shared/teachers/cifar10_resnet56-4bfd9763.th
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402
from benchmarks.ranking import bench_proxy_quality  # noqa: E402

VARIANTS = {
    "trained teacher": ["--score-teacher", "trained"],
    "random teacher (default)": ["--score-teacher", "random"],
    "random teacher + width pool": ["--width-match", "pool"],
    "random teacher + width correlation": ["--width-match", "correlation"],
    "random teacher + width class": ["--width-match", "class"],
    "random teacher + batch 32": ["--batch-size", "32"],
    "random teacher + batch 128": ["--batch-size", "128"],
    "random teacher + another batch (seed 1)": ["--seed", "1"],
    "random teacher + mean of 4 batches": ["--score-batches", "4"],
    "random teacher + relation on pooled features": ["--relation-layer", "pooled"],
    "random teacher + scored at 64 px": ["--img-size", "64"],
    "trained teacher + width pool": ["--score-teacher", "trained", "--width-match", "pool"],
    "trained teacher + width class": ["--score-teacher", "trained", "--width-match", "class"],
}
SHOWN = ("diswot", "diswot_relation", "diswot_semantic", "params", "params+diswot")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", default="resnet56_cifar")
    p.add_argument("--teacher-weights", required=True)
    p.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated names from the list above")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--out", default=str(RESULTS_DIR / "proxy_variants.json"))
    args = p.parse_args(argv)

    results: dict[str, dict] = {}
    rows: dict[str, list] = {}  # table ("all" or a space) -> rows
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(";"):
            extra = list(VARIANTS[name])
            weights = ["--teacher-weights", args.teacher_weights]
            base = ["--batch-size", "64"] if "--batch-size" not in extra else []
            q = bench_proxy_quality.main([
                "--gt", args.gt, "--data", args.data, "--teacher", args.teacher, *weights, "--rescore",
                "--proxies", "diswot", "--resamples", str(args.resamples), "--out", str(Path(tmp) / "q.json"),
                *base, *extra,
            ])
            tables = {"all": q["proxies"], **q["by_space"]}
            results[name] = {k: q["proxies"][k]["kd_acc"] for k in SHOWN}
            results[name]["by_space"] = {space: {k: v[k]["kd_acc"] for k in SHOWN}
                                         for space, v in q["by_space"].items()}
            for table, quality in tables.items():
                rows.setdefault(table, []).append([name] + [
                    f"{quality[k]['kd_acc']['tau']:+.3f} [{quality[k]['kd_acc']['tau_ci'][0]:+.2f}, "
                    f"{quality[k]['kd_acc']['tau_ci'][1]:+.2f}]" for k in SHOWN])
    for table, table_rows in rows.items():
        where = "all students" if table == "all" else f"within the {table} space"
        print_table(f"DisWOT variants: Kendall tau against KD accuracy, {where}", ["variant", *SHOWN], table_rows,
                    [f"ground truth {args.gt}; relation/semantic are negated distances (higher = better)"])
    result = {"gt": args.gt, "variants": results, "machine": machine()}
    print(f"wrote {write_json(result, Path(args.out))}")
    return result


if __name__ == "__main__":
    main()
