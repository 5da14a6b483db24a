"""`autokd train`, `autokd finetune-teacher` and `autokd run`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autokd.cli.common import add_kb_args, add_recipe_args, int_in, recipe_from, run_folder
from autokd.cli.search import add_search_args, add_supernet_args, search_config, supernet_config
from autokd.errors import AutokdError
from autokd.io import check_writable_dir


def add_train_args(p: argparse.ArgumentParser, student: bool = True) -> None:
    p.add_argument("--teacher", required=not student, help="alias, timm name or pkg.module:factory")
    p.add_argument("--teacher-weights", help="the teacher's weights file (a random teacher is refused)")
    if student:
        p.add_argument("--student", required=True, action="append",
                       help="a spec YAML from `autokd search` (OUT/top/1.yaml), study:NAME#TRIAL, or a timm name; "
                            "repeat it to train several students on one teacher pass (OUT/1, OUT/2, ...)")
        p.add_argument("--storage", help="the storage of a study:NAME#TRIAL student (default sqlite:///autokd.db)")
        p.add_argument("--inherit", action="store_true",
                       help="start each student from its supernet weights (a top/<rank>.yaml of `autokd search "
                            "--evaluator supernet`)")
        add_recipe_args(p)
        add_kb_args(p)
    p.add_argument("--data", help="ImageFolder dir, ImageFolder zip, or CIFAR pickle folder (default: synthetic demo)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (warm-ups scale with it)")
    p.add_argument("--batch-size", type=int, help="override the recipe's global batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--img-size", type=int_in(8, 4096), help="input resolution (default: the teacher's)")
    p.add_argument("--out", help="run folder: results.json, best.pt, last.pt")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the run in --out (or in DIR) from its last checkpoint")
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int_in(0), help="data-loading processes")
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher and the student (CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from autokd.advise import add_runs, profile_of, recipe_auto, student_profile
    from autokd.data import load_data
    from autokd.recipes import default_recipe
    from autokd.recipes.kb import kb_path
    from autokd.teachers import resolve_teacher
    from autokd.train import resolve_student, student_space, train_students

    out, resume = run_folder(args)
    auto = args.recipe == "auto"
    recipe = recipe_from(args, args.recipe) if args.recipe and not auto else None  # a bad recipe fails before loading
    data = load_data(args.data, img_size=args.img_size or 32, seed=args.seed)
    students = []
    for i, ref in enumerate(args.student):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed + i)  # the same initial weights on every run of the same command
            students.append(resolve_student(ref, data.num_classes, storage=args.storage, img_size=args.img_size))
        if args.inherit:
            from autokd.supernet.select import inherit_from_file

            if students[-1].spec is None:
                raise AutokdError(f"--inherit needs a top/<rank>.yaml written by `autokd search --evaluator "
                                  f"supernet`, not {ref!r}")
            path = inherit_from_file(students[-1].model, students[-1].spec, ref)
            print(f"autokd: {students[-1].spec.short()} starts from its inherited weights in {path}")
    teacher = None
    if args.teacher:
        teacher = resolve_teacher(args.teacher, data.num_classes, weights=args.teacher_weights, img_size=args.img_size)
        for note in teacher.notes:
            logging.getLogger("autokd").info(note)
    profile = None
    if teacher is not None and (auto or (not args.no_kb and data.is_real)):
        profile = profile_of(teacher, students[0], data, seed=args.seed, device=args.device)
    if auto:
        if profile is None:
            raise AutokdError("--recipe auto recommends a recipe for a teacher-student pair: give --teacher")
        recipe, note = recipe_auto(args.kb, profile, not args.no_starter_kb, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, teacher_cache=args.teacher_cache)
        print(f"autokd: {note}", file=sys.stderr)
    if recipe is None:
        names = {default_recipe(student_space(s)) for s in students}
        if len(names) > 1:
            raise AutokdError(f"the students' default recipes differ ({', '.join(sorted(names))}): students trained "
                              "together share one recipe, so give --recipe")
        recipe = recipe_from(args, names.pop())
    if teacher is None and recipe.needs_teacher:
        raise AutokdError(f"recipe {args.recipe or recipe.loss!r} distils from a teacher: give --teacher (or use "
                          "--recipe none)")
    for student in students:
        if teacher is not None and student.img_size and student.img_size != teacher.img_size:
            raise AutokdError(
                f"the student was searched at {student.img_size} px but the teacher takes {teacher.img_size} px: "
                "search students for this teacher, or give both the same --img-size"
            )
    # one student: the run folder is --out; several: --out/1, --out/2, ... in the order given
    outs = [out] if len(students) == 1 else [out / str(i) for i in range(1, len(students) + 1)]
    results = train_students(
        students, teacher, data, recipe, outs, device=args.device, resume=resume, seed=args.seed,
        baseline=args.baseline, num_workers=args.workers, compile_teacher=args.compile, compile_student=args.compile,
        progress=not args.quiet,
    )
    for result, folder in zip(results, outs):
        _print_result(result, folder)
    if profile is not None and not args.no_kb and data.is_real:
        profiles = [profile] if len(students) == 1 else [student_profile(profile, s, teacher.img_size)
                                                         for s in students]
        added = add_runs(args.kb, results, profiles, recipe, args.seed)
        print(f"autokd: added {added} run(s) to the knowledge base {kb_path(args.kb)} (--no-kb to skip)",
              file=sys.stderr)
    return 0


def cmd_finetune_teacher(args: argparse.Namespace) -> int:
    """Train the teacher itself with cross-entropy on the user's data; its best.pt is a --teacher-weights file."""
    import torch

    from autokd.data import load_data
    from autokd.teachers import resolve_teacher
    from autokd.train import finetune_teacher

    out, resume = run_folder(args)
    recipe = recipe_from(args, args.recipe)
    data = load_data(args.data, img_size=args.img_size or 32, seed=args.seed)
    torch.manual_seed(args.seed)  # a new head for these classes starts from the same weights on every run
    teacher = resolve_teacher(args.teacher, data.num_classes, weights=args.teacher_weights, img_size=args.img_size)
    result = finetune_teacher(teacher, data, recipe, out, device=args.device, resume=resume, seed=args.seed,
                              num_workers=args.workers, progress=not args.quiet)
    _print_result(result, out)
    print(f"use it with: --teacher {args.teacher} --teacher-weights {out}/best.pt")
    return 0


def _print_result(result, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from autokd.cost import format_macs

    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"{result.student} ({result.recipe.get('loss')}), {result.epochs} epochs on {result.device}")
    for col in ("top1", "top5", "ECE", "held-out best", "teacher top1", "no-KD top1", "MACs", "params", "latency",
                "img/s"):
        table.add_column(col, no_wrap=True)

    def pct(v):
        return "-" if v is None else f"{v:.2f}%"

    table.add_row(pct(result.top1), pct(result.top5), f"{result.ece:.4f}", pct(result.best_top1),
                  pct(result.teacher_top1), pct(result.baseline_top1), format_macs(result.macs),
                  f"{result.params / 1e6:.2f} M", f"{result.latency_ms:.2f} ms", f"{result.images_per_second:.0f}")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {out}/results.json, {out}/best.pt, {out}/last.pt")


def add_run_args(p: argparse.ArgumentParser) -> None:
    add_search_args(p)
    add_supernet_args(p)
    p.add_argument("--inherit", action="store_true",
                   help="with --evaluator supernet: start each student from its supernet weights")
    p.add_argument("--train-top", type=int, default=3, help="distil this many distinct top candidates (default 3)")
    add_recipe_args(p)
    add_kb_args(p)
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (warm-ups scale with it)")
    p.add_argument("--train-batch-size", type=int, help="override the recipe's global batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--loader-workers", type=int_in(0), help="data-loading processes for training")
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher and the students (CUDA)")


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from autokd.cost import format_macs
    from autokd.pipeline import run_pipeline
    from autokd.storage import masked_url

    if not args.out:
        raise AutokdError("give the run folder with --out DIR (the same DIR resumes an interrupted run)")
    check_writable_dir(args.out)
    result = run_pipeline(
        search_config(args), args.out, train_top=args.train_top, recipe=args.recipe, epochs=args.epochs,
        batch_size=args.train_batch_size, lr=args.lr, baseline=args.baseline, teacher_cache=args.teacher_cache,
        num_workers=args.loader_workers, compile=args.compile, top_k=args.top_k, progress=not args.quiet,
        kb=args.kb, starter_kb=not args.no_starter_kb, add_to_kb=not args.no_kb, inherit=args.inherit,
        supernet=supernet_config(args) if args.evaluator == "supernet" else None, all_trials=args.all_trials,
    )
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    study = result.search.study
    console.print(f"study [bold]{study.study_name}[/] in {masked_url(result.search.storage_url)}: "
                  f"{len(study.trials)} trials; "
                  f"{len(result.skipped)} finished training(s) reused; {result.seconds:.1f} s")
    console.print(trained_table(result.trained, result.ranked_by, format_macs))
    out = result.out
    if not result.complete:
        print("autokd: a training was stopped; run the same command again to resume", file=sys.stderr)
        return 130
    console.print(f"wrote {out}/trained.csv, {out}/report.html, {out}/train/<rank>/best.pt, {out}/leaderboard.csv")
    return 0


def trained_table(trained, objective: str, format_macs):
    import pandas as pd
    from rich.table import Table

    def pct(v):
        return "-" if pd.isna(v) else f"{v:.2f}%"  # not trained (yet)

    table = Table(title="trained students: proxy rank vs trained rank")
    for col in ("proxy rank", "trained rank", "trial", "arch", objective, "top1", "no-KD top1", "MACs", "params",
                "latency"):
        table.add_column(col, overflow="fold", no_wrap=col != "arch")
    for row in trained.sort_values(["trained_rank", "proxy_rank"], na_position="last").to_dict("records"):
        rank = row["trained_rank"]
        table.add_row(
            str(row["proxy_rank"]), "-" if pd.isna(rank) else str(rank),
            str(row["trial"]) if row["trial"] >= 0 else "-",  # a supernet's subnet is no trial of the study
            row["arch"], f"{row[objective]:.4f}", pct(row["top1"]), pct(row["no_kd_top1"]),
            format_macs(row["macs"]), f"{row['params'] / 1e6:.2f} M",
            "-" if pd.isna(row["latency_ms"]) else f"{row['latency_ms']:.2f} ms",
        )
    return table
