"""What each fidelity buys, on the same ground-truth students in one run, each with its CPU-minutes.

Rankings of the ground truth's students of one space: params and MACs (free), the default training-free score
(`autokd.proxies.aggregate.DEFAULT_OBJECTIVE`, rescored here), `--refine` at several settings (train images x
epochs, successive halving, the students entered in the default score's order as a search would), and band
supernets at several training lengths (K = 1 one-shot and K bands, scored by held-out top-1 with inherited
weights). Each row: Kendall tau [bootstrap 95% CI] against the students' mean distilled test accuracy, the top
pick's true rank, CPU-minutes. Beside them, the noise ceiling: tau between two seeds of the same students. Then
one subnet distilled from its inherited weights against the same architecture from scratch. Rows are written as
they finish (benchmarks/results/fidelity.json); the same command skips the rows already there.

    python benchmarks/ranking/bench_fidelity.py --small                              # a smoke run, minutes
    python benchmarks/ranking/bench_fidelity.py --teacher-weights runs/gt_cifar10_v2/teacher/best.pt \
        --finetune-teacher 0 --students 24 --refine 1000x2,2000x3,4000x3 --supernets 1x2,1x4,3x4,1x8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.data import load_data  # noqa: E402
from autokd.proxies.aggregate import DEFAULT_OBJECTIVE, aggregate_terms  # noqa: E402
from autokd.recipes import default_recipe, load_recipe  # noqa: E402
from autokd.search.refine import RefineConfig  # noqa: E402
from autokd.spaces import ArchSpec, load_space  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402
from benchmarks.ranking.bench_proxy_quality import add_combinations, bootstrap_ci, kendall_tau, ranking_row, rescore  # noqa: E402
from benchmarks.ranking.bench_refine import refine_ranking  # noqa: E402
from benchmarks.ranking.bench_supernet_fidelity import (  # noqa: E402
    SupernetData,
    add_gt_args,
    ground_truth,
    gt_data_and_teacher,
    inherited_vs_scratch,
    supernet_scores,
)
from benchmarks.ranking.build_ground_truth import IMG_SIZE  # noqa: E402


def pairs(text: str) -> list[tuple[int, int]]:
    """'1000x2,2000x3' -> [(1000, 2), (2000, 3)]."""
    return [(int(a), int(b)) for a, b in (part.split("x") for part in text.split(",") if part)]


def minutes(cost: dict) -> dict:
    """The CPU and wall minutes of a ranking (0 for one that costs nothing, such as params)."""
    return {"cpu_minutes": cost.get("cpu_minutes", 0.0), "wall_minutes": cost.get("wall_minutes", 0.0)}


def noise_ceiling(path: Path, specs: pd.Series, resamples: int) -> dict:
    """Kendall tau between seed 0 and seed 1 of the same students [bootstrap CI]: no ranking can agree with the
    ground truth much better than the ground truth agrees with itself."""
    raw = pd.read_csv(path)
    wide = raw[raw["spec"].isin(set(specs))].pivot_table(index="spec", columns="seed", values="kd_acc")
    if wide.shape[1] < 2:
        return {}
    a, b = wide.iloc[:, 0].to_numpy(float), wide.iloc[:, 1].to_numpy(float)
    low, high = bootstrap_ci(a, b, kendall_tau, resamples)
    return {"tau": kendall_tau(a, b), "ci": [low, high], "students": len(wide)}


def default_scores(gt: pd.DataFrame, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """The default objective over these students, its proxies computed here as a search would (random teacher)."""
    proxies = tuple(t for t in aggregate_terms(DEFAULT_OBJECTIVE) if t not in ("params", "macs"))
    scoring = argparse.Namespace(teacher=args.teacher, teacher_weights=None, data=args.data, img_size=None,
                                 batch_size=None, score_batches=1, proxies=proxies, progress=False,
                                 width_match="projection", relation_layer="features", score_teacher="random",
                                 seed=0, device="cpu", threads=args.threads)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    frame, unavailable, _ = rescore(gt, scoring)
    if unavailable:
        raise SystemExit(f"the default score could not score some students: {unavailable}")
    scores = add_combinations(frame, (DEFAULT_OBJECTIVE,))[DEFAULT_OBJECTIVE].to_numpy(float)
    cost = {"cpu_minutes": (time.process_time() - cpu0) / 60, "wall_minutes": (time.perf_counter() - wall0) / 60}
    return scores, cost


def report(result: dict) -> None:
    rows = [[r["ranking"], f"{r['kendall_tau']:+.3f}", f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]",
             f"{r['top_pick_true_rank']}/{r['students']}", f"{r['cpu_minutes']:.1f}"] for r in result["rows"]]
    noise = result.get("noise_ceiling") or {}
    notes = [f"noise ceiling (seed 0 vs seed 1 of the same students): {noise['tau']:+.3f} "
             f"[{noise['ci'][0]:+.2f}, {noise['ci'][1]:+.2f}] over {noise['students']}"] if noise else []
    if "finetune" in result:
        ft = result["finetune"]
        notes.append(f"one subnet, {ft['epochs']} epochs of KD: inherited {ft['inherited']['test_top1']:.2f}% vs "
                     f"scratch {ft['scratch']['test_top1']:.2f}%")
    print_table(f"What each fidelity buys: {result['students']} {result['settings']['space']} students of "
                f"{Path(result['settings']['gt']).name}", ["ranking", "Kendall tau", "95% CI", "top pick", "CPU min"],
                rows, notes)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_gt_args(p)
    p.add_argument("--students", type=int, default=24, help="at most this many GT students (spread by MACs)")
    p.add_argument("--refine", type=pairs, default="1000x2,2000x3,4000x3", help="IMAGESxEPOCHS settings")
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--supernets", type=pairs, default="1x2,1x4,3x4,1x8", help="BANDSxEPOCHS settings")
    p.add_argument("--pool", type=int, default=200, help="in-band specs that size each supernet")
    p.add_argument("--finetune-epochs", type=int, default=2, help="inherited vs scratch, from the last supernet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--runs", default="runs/fidelity")
    p.add_argument("--small", action="store_true", help="a smoke run: 6 students, tiny subsets, one epoch")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.small:
        args.subset, args.test_subset, args.students, args.pool, args.batch_size = 400, 200, 6, 40, 32
        args.refine, args.supernets, args.finetune_epochs, args.finetune_teacher = [(200, 1)], [(1, 1)], 1, 0
        args.runs += "_small"
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="autokd: %(message)s")
    out = args.out or RESULTS_DIR / ("fidelity_small.json" if args.small else "fidelity.json")
    runs = Path(args.runs)
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "threads")}
    result = json.loads(out.read_text()) if out.is_file() else {}
    if result.get("settings") != settings:  # another run's rows are never mixed in
        result = {"settings": settings, "rows": []}
    result["machine"] = machine()
    done = {r["ranking"] for r in result["rows"]}

    def save(row: dict) -> None:
        result["rows"].append(row)
        print(f"{row['ranking']}: tau {row['kendall_tau']:+.3f}, top pick {row['top_pick_true_rank']}/"
              f"{row['students']}, {row['cpu_minutes']:.1f} CPU-min", flush=True)
        write_json(result, out)

    gt = ground_truth(Path(args.gt), args.space, args.students)
    target = gt["kd_acc"].to_numpy(float)
    result["students"] = len(gt)
    result["noise_ceiling"] = noise_ceiling(Path(args.gt), gt["spec"], args.resamples)
    for name in ("params", "macs"):
        if name not in done:
            save(ranking_row(name, gt[name].to_numpy(float), target, args.resamples, kind="size", **minutes({})))
    default, cost = default_scores(gt, args)  # also the refine's entry order, so computed on every run
    if f"default ({DEFAULT_OBJECTIVE})" not in done:
        save(ranking_row(f"default ({DEFAULT_OBJECTIVE})", default, target, args.resamples, kind="training-free",
                         **minutes(cost)))

    recipe = load_recipe(default_recipe(args.space), batch_size=args.batch_size)
    gt_args = argparse.Namespace(finetune_epochs=args.finetune_teacher, teacher_weights=args.teacher_weights,
                                 runs=str(runs), data=args.data, subset=args.subset, test_subset=args.test_subset,
                                 teacher=args.teacher, finetune_lr=0.01, device="cpu")
    data, teacher = gt_data_and_teacher(gt_args)
    full = load_data(args.data, img_size=IMG_SIZE, seed=0)
    for images, epochs in args.refine:
        name = f"refine {images} images x {epochs} epochs (eta {args.eta})"
        if name in done:
            continue
        config = RefineConfig(top=len(gt), epochs=epochs, eta=args.eta, images=images)
        frame, cpu = refine_ranking(gt, default, teacher, full, recipe, config)
        order = frame.set_index("spec_json").loc[gt["spec"], "refine_rank"].to_numpy(float)
        save(ranking_row(name, -order, target, args.resamples, kind="refine", **minutes({"cpu_minutes": cpu})))

    specs = [ArchSpec.from_json(s) for s in gt["spec"]]
    space, budget = load_space(args.space, IMG_SIZE), int(gt["macs"].max())
    loaders = None
    for i, (k, epochs) in enumerate(args.supernets):
        name = f"supernet K={k}, {epochs} epochs"
        last = i == len(args.supernets) - 1
        if name in done and (not last or "finetune" in result):
            continue
        loaders = loaders or SupernetData.of(data, teacher, args.batch_size)
        scores, cost, net = supernet_scores(space, specs, budget, k, recipe.with_epochs(epochs), teacher, loaders,
                                            runs / args.space / f"k{k}_e{epochs}", args.pool, data.num_classes)
        top1 = np.array([scores[s]["top1"] if s in scores else np.nan for s in specs], dtype=float)
        if last:  # the longest supernet's weights, handed to one subnet
            result["finetune"] = inherited_vs_scratch(*net, specs, space, teacher, data, loaders,
                                                      recipe.with_epochs(args.finetune_epochs), runs / args.space)
        if name not in done:
            save(ranking_row(name, top1, target, args.resamples, kind="supernet", **minutes(cost)))
        else:
            write_json(result, out)
    report(result)
    return result


if __name__ == "__main__":
    main()
