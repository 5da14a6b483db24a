"""`autokd recommend`: KD recipes ranked by the knowledge base's meta-model, `--tune N`."""

from __future__ import annotations

import argparse
import sys

from autokd.cli.common import add_halving_args, add_kb_args, int_in
from autokd.errors import AutokdError
from autokd.io import check_writable_dir


def add_recommend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ImageFolder dir, ImageFolder zip, or CIFAR pickle folder")
    p.add_argument("--teacher", required=True, help="alias, timm name or pkg.module:factory")
    p.add_argument("--teacher-weights", help="the teacher's weights file (its accuracy is a feature of the task)")
    p.add_argument("--student", required=True, help="a spec YAML from `autokd search` (OUT/top/1.yaml), "
                                                    "study:NAME#TRIAL, or a timm name")
    p.add_argument("--storage", help="the storage of a study:NAME#TRIAL student (default sqlite:///autokd.db)")
    p.add_argument("--top", type=int_in(1), default=5, help="recipes to show (default 5)")
    add_kb_args(p, opt_out=False)
    p.add_argument("--img-size", type=int_in(8, 4096), help="input resolution (default: the teacher's)")
    p.add_argument("--tune", type=int_in(1), metavar="N",
                   help="then tune the recipe with N short KD runs (Optuna, warm-started with the top recipes, "
                        "successive halving; resumable in --out) and add them to the knowledge base")
    add_halving_args(p, "tune", "each tuning run's schedule", "train images per tuning run")
    p.add_argument("--batch-size", type=int_in(1), help="the tuning runs' batch size (default: the preset's)")
    p.add_argument("--out", help="folder of the tuning study and runs (needed with --tune; the same one resumes)")
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_recommend(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from autokd.advise import nearest_table, profile_of, recommend_table, tune_student
    from autokd.data import load_data
    from autokd.recipes.kb import kb_path
    from autokd.recipes.recommend import recommend
    from autokd.search.recipe_tune import TuneConfig
    from autokd.teachers import resolve_teacher
    from autokd.train import resolve_student

    if args.tune and not args.out:
        raise AutokdError("--tune keeps its study and runs in a folder: give --out DIR (the same DIR resumes)")
    if args.kb and not args.tune and not args.no_starter_kb and not kb_path(args.kb).is_file():
        # read with the starter KB, a mistyped path would go unnoticed
        raise AutokdError(f"no knowledge base at {args.kb!r}: check the path, or leave --kb out to use your default "
                          "KB with the starter KB (--tune creates the file)")
    out = check_writable_dir(args.out) if args.tune else None
    data = load_data(args.data, img_size=args.img_size or 32, seed=args.seed)
    teacher = resolve_teacher(args.teacher, data.num_classes, weights=args.teacher_weights, img_size=args.img_size)
    if not teacher.pretrained:
        raise AutokdError("the teacher's accuracy and calibration describe the task: give --teacher-weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        student = resolve_student(args.student, data.num_classes, storage=args.storage, img_size=args.img_size)
    profile = profile_of(teacher, student, data, seed=args.seed, device=args.device)
    rec = recommend(args.kb, profile, starter=not args.no_starter_kb)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    console.print(f"{data.describe()}; teacher {teacher.name} held-out acc {profile['teacher_acc']:.3f}, "
                  f"probe {profile['probe_acc']:.3f}, ECE {profile['teacher_ece']:.3f}; "
                  f"{profile['pair_kind']} pair, MACs ratio {profile['macs_ratio']:.1f}")
    console.print(recommend_table(rec, args.top))
    console.print(nearest_table(rec))
    if args.tune:
        config = TuneConfig(trials=args.tune, epochs=args.tune_epochs, eta=args.tune_eta,
                            images=args.tune_images or None, batch_size=args.batch_size, seed=args.seed)
        frame = tune_student(rec, teacher, student, data, profile, out, config,
                             top=args.top, kb=args.kb, device=args.device, progress=not args.quiet)
        console.print(frame.to_string(index=False, float_format="{:.4g}".format))
        console.print(f"tuning study in {args.out}/tune.db; complete runs added to {kb_path(args.kb)}")
    return 0
