"""What a supernet buys: K = 1 (one-shot) against K = 3 bands, scored on the CIFAR-10 ground truth.

For each K: split the space's range (its smallest model to the largest ground-truth MACs) into K bands, train
one supernet per band by sandwich KD from the teacher on the ground truth's CIFAR-10 subset (32 px), then score
every ground-truth student of the space by held-out top-1 with inherited weights (BatchNorm recalibrated, no
retraining). Reports Kendall tau against the students' mean kd_acc, beside #params, with CPU-minutes. Then one
subnet (the median-MACs student) is distilled for `--finetune-epochs` from its inherited weights and from
scratch, and both test top-1s are reported. Writes benchmarks/results/supernet_fidelity[_small].json and .csv.

Held-out scoring images come from the training subset (the search never reads the test split); kd_acc is the
ground truth's test accuracy.

    python benchmarks/ranking/bench_supernet_fidelity.py --small            # a smoke run, minutes
    python benchmarks/ranking/bench_supernet_fidelity.py --epochs 20 --bands 1,3 --finetune-teacher 2 \
        --finetune-epochs 4
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.data import ImageDataset, load_data, subset_data  # noqa: E402
from autokd.io import write_csv  # noqa: E402
from autokd.recipes import Recipe, load_recipe  # noqa: E402
from autokd.spaces import ArchSpec, load_space  # noqa: E402
from autokd.spaces.base import SearchSpace  # noqa: E402
from autokd.supernet import (  # noqa: E402
    SupernetRun,
    band_supernet,
    calibration_batches,
    heldout_targets,
    score_subnet,
    space_bands,
    train_supernet,
)
from autokd.supernet.evaluate import supernet_loaders  # noqa: E402
from autokd.teachers import Teacher, resolve_teacher  # noqa: E402
from autokd.train import Student, train_student  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, write_json  # noqa: E402
from benchmarks.ranking.bench_proxy_quality import kendall_tau  # noqa: E402
from benchmarks.ranking.build_ground_truth import DEFAULT_DATA, DEFAULT_WEIGHTS, IMG_SIZE, teacher_weights  # noqa: E402

GT = RESULTS_DIR / "gt_cifar10_v2.csv"


def ground_truth(path: Path, space: str, limit: int | None) -> pd.DataFrame:
    """One row per student of `space`: spec, macs, params and the mean kd_acc over seeds."""
    rows = pd.read_csv(path)
    rows = rows[rows["space"] == space]
    frame = rows.groupby("spec", as_index=False).agg(macs=("macs", "first"), params=("params", "first"),
                                                     kd_acc=("kd_acc", "mean"), seeds=("seed", "count"))
    frame = frame.sort_values("macs").reset_index(drop=True)
    if limit and limit < len(frame):  # spread over the MACs range
        frame = frame.iloc[np.linspace(0, len(frame) - 1, limit).round().astype(int)].reset_index(drop=True)
    return frame


@dataclass
class SupernetData:
    """What every supernet of a run shares: its training batches, held-out batches with the teacher's logits,
    and the BatchNorm calibration batches."""

    train: DataLoader
    heldout: list
    calibration: list

    @classmethod
    def of(cls, data: ImageDataset, teacher: Teacher, batch_size: int) -> SupernetData:
        torch.manual_seed(0)
        train, calibration, heldout = supernet_loaders(data, teacher, batch_size)
        return cls(train, heldout_targets(teacher.model, heldout), calibration_batches(calibration))


def supernet_scores(space: SearchSpace, specs: list[ArchSpec], budget: int, k: int, recipe: Recipe,
                    teacher: Teacher, loaders: SupernetData, folder: Path, pool: int, num_classes: int
                    ) -> tuple[dict[ArchSpec, dict], dict[str, float], tuple]:
    """Train K band supernets afresh (`recipe.epochs` each) and score every spec by held-out top-1 with inherited
    weights; returns the scores, the CPU- and wall-minutes of the whole, and the last (supernet, band)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    scores, last = {}, None
    for band in space_bands(space, budget, k, num_classes):
        members = [s for s in specs if band.fits(s)]
        net, largest, smallest = band_supernet(band, include=members, pool=pool)
        history = train_supernet(net, teacher.model, loaders.train, SupernetRun(band, largest, smallest, recipe),
                                 folder / f"band{band.band.index}", resume=False)
        for spec in members:
            scores[spec] = score_subnet(net, band, spec, loaders.heldout, loaders.calibration)
        print(f"K={k} {band.band}: {len(members)} GT students, last loss {history[-1]['loss_random']:.3f}",
              flush=True)
        last = (net, band)
    cost = {"cpu_minutes": (time.process_time() - cpu0) / 60, "wall_minutes": (time.perf_counter() - wall0) / 60}
    return scores, cost, last


def gt_data_and_teacher(gt_args: argparse.Namespace) -> tuple[ImageDataset, Teacher]:
    """The ground truth's CIFAR-10 subset and its (fine-tuned) teacher, as build_ground_truth made them."""
    weights = teacher_weights(gt_args)
    data = subset_data(load_data(gt_args.data, img_size=IMG_SIZE, seed=0), gt_args.subset, gt_args.test_subset, 0)
    return data, resolve_teacher(gt_args.teacher, data.num_classes, weights=weights)


def inherited_vs_scratch(net, band, specs: list[ArchSpec], space: SearchSpace, teacher: Teacher,
                         data: ImageDataset, loaders: SupernetData, recipe: Recipe, folder: Path) -> dict:
    """One subnet (the first at or above the median MACs that the supernet holds) distilled with `recipe` from
    its inherited weights and from scratch: both test top-1s and CPU-minutes."""
    pick = next(s for s in specs[len(specs) // 2:] if net.contains(s) and band.fits(s))
    compare = {"spec": pick.to_json(), "epochs": recipe.epochs}
    for start in ("inherited", "scratch"):
        model = space.build(pick, data.num_classes)
        if start == "inherited":
            model.load_state_dict(net.inherit(pick, loaders.calibration))
        cpu0 = time.process_time()
        r = train_student(Student(model, start, pick), teacher, data, recipe, folder / f"finetune_{start}",
                          device="cpu", seed=0, num_workers=0, progress=False, heldout=0, evaluate_teacher=False)
        compare[start] = {"test_top1": r.top1, "cpu_minutes": (time.process_time() - cpu0) / 60}
    print(f"fine-tune {pick.short()}: inherited {compare['inherited']['test_top1']:.2f}% vs scratch "
          f"{compare['scratch']['test_top1']:.2f}% after {recipe.epochs} epochs", flush=True)
    return compare


def add_gt_args(p: argparse.ArgumentParser) -> None:
    """The ground truth, its space, data, teacher and subsets: what these benchmarks take from build_ground_truth."""
    p.add_argument("--gt", default=str(GT))
    p.add_argument("--space", default="cifar_resnet")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--teacher", default="resnet56_cifar")
    p.add_argument("--teacher-weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.exists() else None)
    p.add_argument("--finetune-teacher", type=int, default=2, help="teacher fine-tuning epochs (as the GT)")
    p.add_argument("--subset", type=int, default=4000, help="the GT's train images (the supernets train on them)")
    p.add_argument("--test-subset", type=int, default=2000)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gt_args(p)
    p.add_argument("--bands", default="1,3")
    p.add_argument("--epochs", type=int, default=10, help="supernet training epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pool", type=int, default=200, help="in-band specs that size each supernet")
    p.add_argument("--students", type=int, default=None, help="at most this many GT students (spread by MACs)")
    p.add_argument("--finetune-epochs", type=int, default=4, help="inherited vs scratch training epochs")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", default="runs/supernet_fidelity")
    p.add_argument("--small", action="store_true", help="a smoke run: tiny subset, 1 epoch, 6 students")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.small:
        args.subset, args.test_subset, args.epochs, args.students = 400, 200, 1, 6
        args.finetune_epochs, args.finetune_teacher, args.pool, args.batch_size = 1, 0, 40, 32
        args.runs = args.runs + "_small"
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="autokd: %(message)s")
    stem = "supernet_fidelity_small" if args.small else "supernet_fidelity"
    out = Path(args.out) if args.out else RESULTS_DIR / f"{stem}.json"
    runs = Path(args.runs)

    # the GT's data and teacher: same subset, same (fine-tuned) teacher
    gt_args = argparse.Namespace(finetune_epochs=args.finetune_teacher, teacher_weights=args.teacher_weights,
                                 runs=str(runs), data=args.data, subset=args.subset, test_subset=args.test_subset,
                                 teacher=args.teacher, finetune_lr=0.01, device="cpu")
    data, teacher = gt_data_and_teacher(gt_args)
    loaders = SupernetData.of(data, teacher, args.batch_size)

    gt = ground_truth(Path(args.gt), args.space, args.students)
    specs = [ArchSpec.from_json(s) for s in gt["spec"]]
    space = load_space(args.space, IMG_SIZE)
    budget = int(gt["macs"].max())
    recipe = load_recipe("dist" if args.space == "cifar_resnet" else "kd_adamw", epochs=args.epochs,
                         batch_size=args.batch_size)
    result = {"machine": machine(), "settings": vars(args), "budget": budget, "students": len(gt),
              "params_tau": kendall_tau(gt["params"], gt["kd_acc"]), "macs_tau": kendall_tau(gt["macs"], gt["kd_acc"]),
              "supernets": [], "note": "tau against the GT's mean kd_acc; supernet scores are held-out top-1 with "
              "inherited weights (BatchNorm recalibrated on 8 training batches)"}
    table = gt.copy()
    last_net = None
    for k in (int(x) for x in args.bands.split(",")):
        scores, cost, last_net = supernet_scores(space, specs, budget, k, recipe, teacher, loaders,
                                                 runs / args.space / f"k{k}", args.pool, data.num_classes)
        column = f"k{k}_top1"
        table[column] = [scores[s]["top1"] if s in scores else np.nan for s in specs]
        scored = table[column].notna()
        result["supernets"].append({
            "bands": k, "epochs": args.epochs, "scored": int(scored.sum()),
            "tau": kendall_tau(table.loc[scored, column], table.loc[scored, "kd_acc"]), **cost})
        print(f"K={k}: tau {result['supernets'][-1]['tau']:.3f} over {int(scored.sum())} students, "
              f"{cost['cpu_minutes']:.1f} CPU-min (params tau {result['params_tau']:.3f})", flush=True)

    result["finetune"] = inherited_vs_scratch(*last_net, specs, space, teacher, data, loaders,
                                              recipe.with_epochs(args.finetune_epochs), runs / args.space)
    write_csv(out.with_suffix(".csv"), table)
    return write_json(result, out)


if __name__ == "__main__":
    main()
