"""What short KD training buys over a training-free ranking, per CPU-minute, on a ground truth.

The ground truth's students are ranked by params (the size baseline) and refined by `autokd.search.refine` (all
of them one epoch, then successive halving) on a stratified subset of the training split, held-out accuracy only.
Kendall tau against the ground truth's KD accuracy [bootstrap 95% CI] and the top pick's true rank, for: params,
the held-out accuracy after the first epoch (every student), and the refine ranking (furthest rung first), with
the refine's seconds in the same run.

    python benchmarks/ranking/bench_refine.py --gt benchmarks/results/gt_cifar10_v2.csv --space cifar_resnet \
        --teacher-weights runs/gt_cifar10_v2/teacher/best.pt --images 2000 --epochs 3 --eta 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.data import ImageDataset, load_data  # noqa: E402
from autokd.recipes import Recipe, default_recipe, load_recipe  # noqa: E402
from autokd.search.refine import RefineConfig, refine  # noqa: E402
from autokd.spaces import ArchSpec  # noqa: E402
from autokd.teachers import Teacher, resolve_teacher  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402
from benchmarks.ranking.bench_proxy_quality import ranking_row, read_ground_truth  # noqa: E402
from benchmarks.ranking.build_ground_truth import DEFAULT_DATA, IMG_SIZE  # noqa: E402


def refine_ranking(gt: pd.DataFrame, order: np.ndarray, teacher: Teacher, data: ImageDataset, recipe: Recipe,
                   config: RefineConfig) -> tuple[pd.DataFrame, float]:
    """Refine the ground truth's students, entered best `order` first as a search's leaderboard would; returns
    one row per student (refine rank, held-out top-1 per epoch, kd_acc) and the refine's CPU-minutes."""
    board = gt.assign(order=order).sort_values("order", ascending=False, kind="stable").reset_index(drop=True)
    board = pd.DataFrame({"rank": range(1, len(board) + 1), "trial": range(len(board)), "spec_json": board["spec"],
                          "arch": [str(ArchSpec.from_json(s)) for s in board["spec"]], "macs": board["macs"],
                          "params": board["params"], "kd_acc": board["kd_acc"]})
    start = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        frame = refine(board, teacher, data, recipe, Path(tmp), f"sqlite:///{tmp}/refine.db", "bench", config,
                       img_size=IMG_SIZE, device="cpu")
    cpu_minutes = (time.process_time() - start) / 60
    return frame.merge(board[["rank", "kd_acc", "spec_json"]], left_on="proxy_rank", right_on="rank"), cpu_minutes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gt", required=True)
    p.add_argument("--space", help="only the students of this space")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--teacher", default="resnet56_cifar")
    p.add_argument("--teacher-weights", required=True)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "refine.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gt = read_ground_truth(args.gt)
    gt["space"] = [ArchSpec.from_json(s).space for s in gt["spec"]]
    if args.space:
        gt = gt[gt["space"] == args.space].reset_index(drop=True)
    data = load_data(args.data, img_size=IMG_SIZE, seed=0)
    teacher = resolve_teacher(args.teacher, data.num_classes, weights=args.teacher_weights)
    recipe = load_recipe(default_recipe(gt["space"].iloc[0]), batch_size=args.batch_size)
    config = RefineConfig(top=len(gt), epochs=args.epochs, eta=args.eta, images=args.images)
    frame, cpu_minutes = refine_ranking(gt, gt["params"].to_numpy(float), teacher, data, recipe, config)
    target = frame["kd_acc"].to_numpy()
    rankings = {
        "params": frame["params"].to_numpy(float),
        "epoch-1 held-out top-1": frame["epoch1_heldout_top1"].to_numpy(float),
        "refine (successive halving)": -frame["refine_rank"].to_numpy(float),
    }
    rows = [ranking_row(name, score, target, args.resamples, cpu_minutes=0.0 if name == "params" else cpu_minutes)
            for name, score in rankings.items()]
    print_table(f"Ranking {len(frame)} students of {args.gt} ({args.space or 'all spaces'})",
                ["ranking", "Kendall tau", "95% CI", "top pick's true rank", "CPU min"],
                [[r["ranking"], r["kendall_tau"], f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]",
                  f"{r['top_pick_true_rank']}/{len(frame)}", r["cpu_minutes"]] for r in rows],
                notes=[f"refine: {args.images} train images, epochs {args.epochs}, eta {args.eta}, recipe "
                       f"{recipe.loss}; held-out accuracy only; CPU minutes of this process"])
    result = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "students": frame.drop(columns=["rank"]).to_dict("records")}
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
