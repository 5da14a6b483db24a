"""No KD vs KD vs DKD vs DIST on the CIFAR-10 JPEGs: ResNet-56 teacher (fine-tuned on the JPEGs), ResNet-20 student.

Every recipe trains the same ResNet-20 (same init seed) for the same epochs; the table gives test top-1 and wall
time per run, the teacher's own top-1, and each recipe's gain over no KD (the baseline in the same run).

    python benchmarks/training/bench_kd_cifar10.py                       # GPU: full data, 30 epochs, 2 fine-tune epochs
    python benchmarks/training/bench_kd_cifar10.py --subset 5000 --test-subset 2000 --epochs 3 --finetune-epochs 1 # CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.data import load_data, subset_data  # noqa: E402
from autokd.recipes import load_recipe  # noqa: E402
from autokd.spaces.cifar_resnet import CifarResNet  # noqa: E402
from autokd.teachers import resolve_teacher  # noqa: E402
from autokd.train import finetune_teacher, train_student  # noqa: E402
from benchmarks.common import machine, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "cifar10-jpeg.zip"))
    p.add_argument("--teacher", default="resnet56_cifar")
    p.add_argument("--teacher-weights", default=str(SHARED / "teachers" / "cifar10_resnet56-4bfd9763.th"))
    p.add_argument("--recipes", default="none,kd,dkd,dist")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--subset", type=int, help="train on a stratified subset of N training images")
    p.add_argument("--test-subset", type=int, help="evaluate on a stratified subset of N test images")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default=str(ROOT / "runs" / "kd_cifar10"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kd_cifar10.json"))
    args = p.parse_args(argv)

    runs = Path(args.runs)
    data = subset_data(load_data(args.data, img_size=32, seed=0), args.subset, args.test_subset, 0)
    weights = args.teacher_weights
    if args.finetune_epochs:
        teacher = resolve_teacher(args.teacher, data.num_classes, weights=weights)
        recipe = load_recipe("none", epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.batch_size)
        folder = runs / "teacher"
        ft = finetune_teacher(teacher, data, recipe, folder, device=args.device,
                              resume=(folder / "last.pt").is_file(), progress=False)
        print(f"teacher fine-tuned {args.finetune_epochs} epochs: top-1 {ft.top1:.2f}%", flush=True)
        weights = str(folder / "best.pt")
    teacher = resolve_teacher(args.teacher, data.num_classes, weights=weights)

    rows = []
    for name in args.recipes.split(","):
        recipe = load_recipe(name, epochs=args.epochs, batch_size=args.batch_size)
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            student = CifarResNet(depths=(3, 3, 3), widths=(16, 32, 64), shortcut="A", num_classes=data.num_classes)
            folder = runs / f"{name}-seed{seed}"
            start = time.perf_counter()
            result = train_student(student, teacher if recipe.needs_teacher else None, data, recipe, folder,
                                   device=args.device, resume=(folder / "last.pt").is_file(), seed=seed,
                                   progress=False)
            rows.append({"recipe": name, "seed": seed, "top1": result.top1, "best_top1": result.best_top1,
                         "teacher_top1": result.teacher_top1, "seconds": time.perf_counter() - start,
                         "device": result.device})
            print(f"{name} seed {seed}: top-1 {result.top1:.2f}% in {rows[-1]['seconds']:.0f} s", flush=True)

    by_recipe = {}
    for name in args.recipes.split(","):
        mine = [r for r in rows if r["recipe"] == name]
        by_recipe[name] = {"top1": statistics.mean(r["top1"] for r in mine),
                           "seconds": statistics.mean(r["seconds"] for r in mine)}
    base = by_recipe.get("none", {}).get("top1")
    teacher_top1 = next((r["teacher_top1"] for r in rows if r["teacher_top1"] is not None), None)
    table = [[name, f"{v['top1']:.2f}", "-" if base is None else f"{v['top1'] - base:+.2f}", f"{v['seconds']:.0f}"]
             for name, v in by_recipe.items()]
    info = machine()
    device = rows[0]["device"] if rows else args.device
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name()})"
    print_table(f"{args.teacher} -> ResNet-20 on CIFAR-10 JPEGs, {args.epochs} epochs, {args.seeds} seed(s)",
                ["recipe", "test top-1 %", "vs no KD", "s per run"], table,
                [f"teacher top-1 on the same test images: {teacher_top1}", f"device: {device}",
                 f"train images: {len(data.train)}, test images: {len(data.test) if data.test else 0}"])
    result = {"benchmark": "kd_cifar10", "config": vars(args), "machine": info, "device": device,
              "teacher_top1": teacher_top1, "summary": by_recipe, "runs": rows}
    write_json(result, Path(args.out))
    return result


if __name__ == "__main__":
    main()
