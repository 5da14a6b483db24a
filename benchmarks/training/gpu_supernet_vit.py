"""K = 3 ViT band supernets on Imagenette at 160 px on one GPU: the teacher, supernet training, in-band search.

The teacher is DeiT-S-sized: timm's deit_small_patch16_224 built at img_size 160. No pretrained weights can be
fetched offline, so the script first trains it from scratch on Imagenette's training images (cross-entropy,
AdamW, --teacher-epochs; the evaluator's held-out tenth is kept out), unless --teacher-weights gives a weights file
(e.g. runs/gpu_supernet_vit/teacher/best.pt of an earlier run). `evaluate_bands` then trains one supernet per band
of the vit space by sandwich KD from that teacher and searches each band by held-out top-1 with inherited weights.
Prints and writes the band winners, the seconds of each stage and the device to
benchmarks/results/gpu_supernet_vit.{json,csv}.

    python benchmarks/training/gpu_supernet_vit.py            # one H100/H200: about 10 minutes
    python benchmarks/training/gpu_supernet_vit.py --small    # the CPU check: a tiny subset at 32 px, ResNet-20 teacher
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.data import ImageDataset, load_data, subset_data  # noqa: E402
from autokd.data.demo import synthetic_dataset  # noqa: E402
from autokd.io import write_csv  # noqa: E402
from autokd.recipes import Recipe, default_recipe, load_recipe  # noqa: E402
from autokd.spaces import ArchSpec, load_space  # noqa: E402
from autokd.supernet import space_bands  # noqa: E402
from autokd.supernet.evaluate import SupernetConfig, evaluate_bands  # noqa: E402
from autokd.teachers import Teacher, resolve_teacher  # noqa: E402
from autokd.train import Student, train_student  # noqa: E402
from autokd.train.distill import no_kd  # noqa: E402
from autokd.train.inputs import Inputs  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, print_table, resolve_device, write_json  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenette-160.zip"
FULL = dict(img_size=160, teacher="deit_small_patch16_224", teacher_epochs=30, budget=600_000_000, epochs=5,
            trials=24, batch_size=128, pool=200, images=None, test_images=None)
SMALL = dict(img_size=32, teacher="resnet20_cifar", teacher_epochs=1, budget=100_000_000, epochs=1, trials=3,
             batch_size=32, pool=20, images=300, test_images=100)


def load_images(path: str, args: argparse.Namespace) -> ImageDataset:
    """Imagenette (or any ImageFolder zip) at the run's size, subset for --small; the synthetic set without it."""
    data = (load_data(path, img_size=args.img_size) if Path(path).exists()
            else synthetic_dataset(train_size=args.images or 2000, test_size=args.test_images or 500,
                                   img_size=args.img_size))
    return subset_data(data, args.images, args.test_images, 0) if args.images else data


def teacher_recipe(epochs: int, batch_size: int) -> Recipe:
    """Cross-entropy with DeiT's optimiser (AdamW, warm-up, label smoothing), no mixup: a short run from scratch."""
    recipe = no_kd(load_recipe("kd_adamw", epochs=epochs, batch_size=batch_size, lr=1e-3))
    return recipe.replace(mixup=0.0, cutmix=0.0, augmentation="standard")


def trained_teacher(args: argparse.Namespace, data: ImageDataset, device: str, folder: Path
                    ) -> tuple[Teacher, dict[str, Any]]:
    """The teacher with trained weights (--teacher-weights, else trained here from scratch) and its figures."""
    if args.teacher_weights:
        return resolve_teacher(args.teacher, data.num_classes, args.teacher_weights, args.img_size), {}
    fresh = resolve_teacher(args.teacher, data.num_classes, img_size=args.img_size)
    student = Student(fresh.model.train(), fresh.name, img_size=args.img_size)
    result = train_student(student, None, data, teacher_recipe(args.teacher_epochs, args.batch_size), folder,
                           device=device, progress=False, inputs=Inputs.of(fresh), evaluate_teacher=False)
    weights = folder / "best.pt"
    figures = {"epochs": args.teacher_epochs, "test_top1": result.top1, "weights": str(weights)}
    return resolve_teacher(args.teacher, data.num_classes, weights, args.img_size), figures


def print_epoch(band: int, entry: dict[str, Any]) -> None:
    print(f"  band {band} supernet epoch {entry['epoch']}: loss random {entry['loss_random']:.4f} "
          f"({entry['seconds']:.0f} s)", flush=True)


def band_winners(frame: pd.DataFrame, bands, runs: Path) -> list[dict[str, Any]]:
    """Per band: its MACs range, the best subnet by held-out top-1, and the seconds of training and search."""
    out = []
    for band in bands:
        rows = frame[frame["band"] == band.band.index]
        progress = runs / f"band{band.band.index}" / "progress.json"
        train = sum(h["seconds"] for h in json.loads(progress.read_text())["history"])
        total = float(rows["seconds"].iloc[0]) if len(rows) else float("nan")
        best = rows.sort_values("band_rank").iloc[0].to_dict() if len(rows) else {}
        out.append({"band": band.band.index, "low": band.band.low, "high": band.band.high, "scored": len(rows),
                    "arch": ArchSpec.from_json(best["spec_json"]).short() if best else None,
                    "spec": best.get("spec_json"), "macs": int(best["macs"]) if best else None,
                    "params": int(best["params"]) if best else None, "heldout_top1": best.get("heldout_top1"),
                    "kd_loss": best.get("kd_loss"), "train_seconds": train, "search_seconds": total - train})
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="the CPU check: tiny subset, 32 px, one epoch")
    p.add_argument("--data", default=str(DATA), help="an ImageFolder zip (the synthetic set when it is absent)")
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher", default=None)
    p.add_argument("--teacher-weights", default=None, help="a trained teacher's weights: skips its training")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--budget", type=int, default=None, help="MACs of the top band's high end")
    p.add_argument("--bands", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="supernet training epochs per band")
    p.add_argument("--trials", type=int, default=None, help="subnets scored per band")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--pool", type=int, default=None, help="in-band specs that size each supernet")
    p.add_argument("--images", type=int, default=None, help="training images (a stratified subset; all: none)")
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", default=None, help="default runs/gpu_supernet_vit[_small]")
    p.add_argument("--out", default=None, help="default benchmarks/results/gpu_supernet_vit[_small].json")
    args = p.parse_args(argv)
    for key, value in (SMALL if args.small else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="autokd: %(message)s")
    stem = "gpu_supernet_vit_small" if args.small else "gpu_supernet_vit"
    runs, out = Path(args.runs or f"runs/{stem}"), Path(args.out or RESULTS_DIR / f"{stem}.json")
    device = resolve_device(args.device)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    data = load_images(args.data, args)
    teacher, teacher_figures = trained_teacher(args, data, str(device), runs / "teacher")
    seconds["teacher"] = time.perf_counter() - start
    print(f"teacher {teacher.name} at {args.img_size} px: {teacher_figures or 'given weights'} "
          f"({seconds['teacher']:.0f} s)", flush=True)

    start = time.perf_counter()
    space = load_space("vit", args.img_size)
    bands = space_bands(space, args.budget, args.bands, data.num_classes)
    config = SupernetConfig(bands=args.bands, epochs=args.epochs, trials=args.trials, batch_size=args.batch_size,
                            pool=args.pool, seed=0)
    recipe = load_recipe(default_recipe("vit"))
    frame = evaluate_bands(space, args.budget, teacher, data, recipe, runs / "supernet", config,
                           device=device, on_epoch=print_epoch)
    seconds["supernets_and_search"] = time.perf_counter() - start
    winners = band_winners(frame, bands, runs / "supernet")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()["cpu"]
    result = {"device": name, "machine": machine(), "settings": vars(args), "teacher": teacher_figures,
              "seconds": seconds, "bands": winners}
    print_table(f"band winners on {name} ({args.img_size} px, budget {args.budget / 1e6:.0f} MMACs)",
                ["band", "MACs range (M)", "arch", "MMACs", "held-out top-1", "train s", "search s"],
                [[w["band"], f"{w['low'] / 1e6:.0f}..{w['high'] / 1e6:.0f}", w["arch"],
                  (w["macs"] or 0) / 1e6, w["heldout_top1"], w["train_seconds"], w["search_seconds"]]
                 for w in winners], [f"stage seconds: {seconds}"])
    write_csv(out.with_suffix(".csv"), pd.DataFrame(winners))
    return write_json(result, out)


if __name__ == "__main__":
    print(f"wrote {main()}")
