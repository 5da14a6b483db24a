"""The `autokd` command line: a thin shell over the library API."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from autokd.errors import AutokdError
from autokd.io import check_writable_dir


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line that points to --help (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {low} to {high}" if high is not None
                                             else f"{value} is out of range: give {low} or more")
        return value

    return parse


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_refine_args(p: argparse.ArgumentParser) -> None:
    """--refine and its settings (`autokd search`)."""
    p.add_argument("--refine", type=_int_in(2), metavar="N",
                   help="then distil the top N briefly in rungs of successive halving and rank them by held-out "
                        "accuracy (OUT/refine.csv; needs --data and the teacher's trained weights)")
    p.add_argument("--refine-epochs", type=_int_in(1), default=3, help="the refine's KD schedule (default 3)")
    p.add_argument("--refine-eta", type=_int_in(2), default=3, help="keep 1/eta at each rung (default 3)")
    p.add_argument("--refine-images", type=_int_in(0), default=2000,
                   help="train images for the refine, stratified (default 2000; 0 for all)")
    p.add_argument("--refine-recipe", help="the refine's recipe (default: the top candidate's default)")


def add_supernet_args(p: argparse.ArgumentParser) -> None:
    """--evaluator and the supernet's settings (`autokd search`)."""
    p.add_argument("--evaluator", default="proxy", choices=("proxy", "supernet"),
                   help="what ranks the students: proxy (training-free, default) or supernet (AutoDistil: one "
                        "weight-sharing supernet per MAC band distilled from the teacher, subnets ranked by "
                        "held-out top-1 with inherited weights; OUT/supernet.csv, top/*.yaml; needs --data and "
                        "the teacher's trained weights)")
    p.add_argument("--bands", type=_int_in(1), default=3, help="supernet: MAC bands, one supernet each (default 3)")
    p.add_argument("--supernet-epochs", type=_int_in(1), default=10, help="supernet: training epochs (default 10)")
    p.add_argument("--supernet-trials", type=_int_in(1), default=32,
                   help="supernet: subnets scored per band by aging evolution (default 32)")
    p.add_argument("--supernet-batch-size", type=_int_in(2), default=64, help="supernet: batch (default 64)")
    p.add_argument("--supernet-images", type=_int_in(0), default=0,
                   help="supernet: train images it trains and scores on, stratified (default 0: all)")
    p.add_argument("--supernet-pool", type=_int_in(2), default=200,
                   help="supernet: random in-band students whose largest genes size each supernet (default 200)")


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="vit_b", help="alias (vit_b, resnet50, ...), timm name, or pkg.module:factory")
    p.add_argument("--teacher-weights", help="a local weights file for the teacher (nothing is downloaded)")
    p.add_argument("--budget", default="1GFLOP", help="MAC budget: 1GFLOP, 500MFLOPs, 1.5G, 300M, 2e9 (1 FLOP = 1 MAC)")
    p.add_argument("--params-budget", help="optional limit on parameters, e.g. 5M")
    p.add_argument("--data", help="ImageFolder dir, ImageFolder zip, or CIFAR pickle folder (default: synthetic demo)")
    p.add_argument("--space", type=_csv, help="search space(s), comma-separated: vit,resnet,mobilenet,cifar_resnet "
                                             "or a YAML path (default: those that suit the teacher and resolution)")
    p.add_argument("--trials", type=int, default=100, help="complete trials the study should hold (default 100)")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--seed", type=int,
                   help="seed of the scoring batch and random teacher (default 0) and of the sampler (default: a "
                        "fresh one per worker, so machines running the same command propose different students)")
    p.add_argument("--sampler", default="evolution", help="evolution (default), nsga2, tpe or random")
    p.add_argument("--population", type=int, default=20, help="evolution: population size (default 20)")
    p.add_argument("--tournament", type=int, default=5, help="evolution: tournament size (default 5)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/autokd.db); postgresql://... for "
                                     "many machines")
    p.add_argument("--study", help="study name (default from teacher, budget, data and spaces); reuse to resume")
    p.add_argument("--workers", type=int, default=1, help="processes working on the study (default 1)")
    p.add_argument("--img-size", type=int, help="input resolution (default: the teacher's)")
    p.add_argument("--batch-size", type=int, help="scoring batch (default 64 at <= 64 px, else 32)")
    p.add_argument("--score-batches", type=int, default=1,
                   help="score every candidate on N fixed batches and average (default 1; costs N times more)")
    p.add_argument("--proxies", type=_csv, default=(),
                   help="more scores to record beside the objective's, e.g. diswot,zico,meco (params and macs "
                        "are always recorded)")
    p.add_argument("--objective",
                   help="the score the search maximises (default: the best measured ranking, see the README): one "
                        "score, or several joined by '+' (their log-rank sum, AZ-NAS style), or aznas")
    p.add_argument("--reference-size", type=int, default=32,
                   help="random specs under the budget that an aggregate objective ranks against (default 32)")
    p.add_argument("--score-teacher", default="random", choices=("random", "trained"),
                   help="DisWOT scores against a randomly initialised copy of the teacher (default, as the paper) "
                        "or the trained teacher")
    p.add_argument("--width-match", default="projection",
                   help="how DisWOT compares a student of another width: projection (default), pool, correlation, "
                        "class")
    p.add_argument("--relation-layer", default="features", choices=("features", "pooled"),
                   help="what DisWOT's relation term compares: the last feature map (default) or the pooled features")
    p.add_argument("--top-k", type=int, default=10, help="leaderboard size (default 10)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", help="folder for leaderboard.csv, top/*.yaml, report.html and the study database")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _search_config(args: argparse.Namespace):
    from autokd.search import SearchConfig

    return SearchConfig(
        teacher=args.teacher, budget=args.budget, params_budget=args.params_budget, data=args.data,
        spaces=args.space, trials=args.trials, timeout=args.timeout, seed=0 if args.seed is None else args.seed,
        sampler_seed=args.seed, sampler=args.sampler,
        storage=args.storage, study_name=args.study, workers=args.workers, teacher_weights=args.teacher_weights,
        img_size=args.img_size, batch_size=args.batch_size, proxies=args.proxies,
        **({"objective": args.objective} if args.objective else {}), reference_size=args.reference_size,
        population_size=args.population, tournament_size=args.tournament, device=args.device,
        width_match=args.width_match, score_teacher=args.score_teacher, score_batches=args.score_batches,
        relation_layer=args.relation_layer,
    )


def cmd_search(args: argparse.Namespace) -> int:
    from rich.console import Console

    from autokd.cost import format_macs
    from autokd.search import run_search
    from autokd.storage import masked_url

    config = _search_config(args)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    result = run_search(config, out=args.out, top_k=args.top_k, progress=not args.quiet)
    ctx = result.context
    console.print(
        f"study [bold]{result.study.study_name}[/] in {masked_url(result.storage_url)}: "
        f"{len(result.study.trials)} trials, budget {ctx.budget} ({ctx.teacher.img_size} px), "
        f"{result.seconds:.1f} s"
    )
    console.print(leaderboard_table(result.leaderboard, config.objective, format_macs))
    if result.out:
        console.print(f"wrote {result.out}/leaderboard.csv, {result.out}/top/*.yaml, {result.out}/report.html")
    if args.refine:
        _refine(args, result, console)
    if args.evaluator == "supernet":
        _supernet(args, result, console)
    console.print(f"dashboard: autokd dashboard --storage {masked_url(result.storage_url)}")
    return 0


def _refine(args: argparse.Namespace, result, console) -> None:
    """`--refine N`: successive halving of short KD runs over the top N; writes OUT/refine.csv."""
    from autokd.io import write_csv
    from autokd.recipes import default_recipe
    from autokd.report import leaderboard
    from autokd.search.refine import RefineConfig, refine

    ctx = result.context
    if result.out is None:
        raise AutokdError("--refine writes its runs under the search folder: give --out")
    if ctx.data is None:
        raise AutokdError("--refine trains the candidates on your images: give --data")
    board = leaderboard(result.study, ctx.config.objective)
    name = args.refine_recipe or default_recipe(board["space"].iloc[0])
    recipe = _recipe(argparse.Namespace(epochs=None, batch_size=None, lr=None), name)
    settings = RefineConfig(top=args.refine, epochs=args.refine_epochs, eta=args.refine_eta,
                            images=args.refine_images or None, seed=args.seed or 0)
    frame = refine(board, ctx.teacher, ctx.data, recipe, result.out, result.storage_url, result.study.study_name,
                   settings, img_size=ctx.teacher.img_size, device=args.device, progress=not args.quiet)
    write_csv(result.out / "refine.csv", frame)
    cols = ["refine_rank", "proxy_rank", "arch", "epochs_reached", "heldout_top1", "status"]
    console.print(frame[cols].to_string(index=False))
    console.print(f"wrote {result.out}/refine.csv (recipe {name}; held-out top-1 of {settings.images or 'all'} "
                  f"train images; study {result.study.study_name}-refine)")


def _supernet(args: argparse.Namespace, result, console) -> None:
    """`--evaluator supernet`: K band supernets per space, trained and searched; OUT/supernet.csv, top/*.yaml."""
    import time

    import pandas as pd

    from autokd.cost import format_macs
    from autokd.io import write_csv
    from autokd.recipes import default_recipe
    from autokd.spaces import ArchSpec
    from autokd.supernet.evaluate import SupernetConfig, evaluate_bands, write_supernet_top

    ctx = result.context
    if result.out is None or ctx.data is None:
        raise AutokdError("--evaluator supernet trains supernets on your images under the search folder: give "
                          "--data and --out")
    config = SupernetConfig(bands=args.bands, epochs=args.supernet_epochs, trials=args.supernet_trials,
                            batch_size=args.supernet_batch_size, pool=args.supernet_pool,
                            images=args.supernet_images or None, seed=args.seed or 0)
    start, frames = time.perf_counter(), []
    for name, space in ctx.spaces.items():
        recipe = _recipe(argparse.Namespace(epochs=None, batch_size=None, lr=None), default_recipe(name))
        frame = evaluate_bands(space, ctx.budget.macs, ctx.teacher, ctx.data, recipe,
                               result.out / "supernet" / name, config)
        frames.append(frame.assign(space=name))
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(3, "arch", [ArchSpec.from_json(s).short() for s in frame["spec_json"]])
    write_csv(result.out / "supernet.csv", frame)
    meta = {k: v for k, v in ctx.study_attrs().items() if k not in ("study", "storage")}
    write_supernet_top(frame, result.out / "top", meta, args.top_k)
    best = frame.sort_values(["band", "band_rank"]).groupby("band").head(1)
    console.print(best.assign(MACs=best["macs"].map(format_macs))[
        ["band", "band_range", "arch", "MACs", "params", "heldout_top1", "kd_loss"]].to_string(index=False))
    console.print(f"supernet ({args.bands} band(s), {args.supernet_epochs} epoch(s), {args.supernet_trials} "
                  f"subnets per band) ranked {len(frame)} subnets in {time.perf_counter() - start:.0f} s; wrote "
                  f"{result.out}/supernet.csv and top/*.yaml (ranked by the supernet; start one from its "
                  "supernet weights with `autokd train --student OUT/top/1.yaml --inherit`)")


def leaderboard_table(board, objective: str, format_macs):
    from rich.table import Table

    table = Table(title=f"top {len(board)} by {objective}")
    terms = [t for t in objective.split("+") if t not in ("params", "macs")] if "+" in objective else []
    extra = [c for c in (*terms, "diswot_relation", "diswot_semantic") if c in board.columns and c != objective]
    for col in ["rank", "trial", "arch", "MACs", "params", objective]:
        table.add_column(col, overflow="fold", no_wrap=col != "arch")
    for col in extra:
        table.add_column(col.replace("diswot_relation", "M_r").replace("diswot_semantic", "M_s"), no_wrap=True)
    for row in board.to_dict("records"):
        table.add_row(
            str(row["rank"]), str(row["trial"]), row["arch"], format_macs(row["macs"]),
            f"{row['params'] / 1e6:.2f} M", f"{row[objective]:.4f}", *[f"{row[c]:.4g}" for c in extra],
        )
    return table


def add_run_args(p: argparse.ArgumentParser) -> None:
    add_search_args(p)
    p.add_argument("--train-top", type=int, default=3, help="distil this many distinct top candidates (default 3)")
    add_recipe_args(p)
    add_kb_args(p)
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (warm-ups scale with it)")
    p.add_argument("--train-batch-size", type=int, help="override the recipe's global batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--loader-workers", type=_int_in(0), help="data-loading processes for training")
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
        _search_config(args), args.out, train_top=args.train_top, recipe=args.recipe, epochs=args.epochs,
        batch_size=args.train_batch_size, lr=args.lr, baseline=args.baseline, teacher_cache=args.teacher_cache,
        num_workers=args.loader_workers, compile=args.compile, top_k=args.top_k, progress=not args.quiet,
        kb=args.kb, add_to_kb=not args.no_kb,
    )
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    study = result.search.study
    console.print(f"study [bold]{study.study_name}[/] in {masked_url(result.search.storage_url)}: "
                  f"{len(study.trials)} trials; "
                  f"{len(result.skipped)} finished training(s) reused; {result.seconds:.1f} s")
    console.print(trained_table(result.trained, result.search.context.config.objective, format_macs))
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
            str(row["proxy_rank"]), "-" if pd.isna(rank) else str(rank), str(row["trial"]),
            row["arch"], f"{row[objective]:.4f}", pct(row["top1"]), pct(row["no_kd_top1"]),
            format_macs(row["macs"]), f"{row['params'] / 1e6:.2f} M",
            "-" if pd.isna(row["latency_ms"]) else f"{row['latency_ms']:.2f} ms",
        )
    return table


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autokd.storage import masked_url, open_storage

    url = args.storage
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise AutokdError(f"no study database at {url[len('sqlite:///'):]}: run `autokd search --out DIR` first")
    storage = open_storage(url)
    import optuna_dashboard

    print(f"optuna-dashboard on http://{args.host}:{args.port} for {masked_url(url)} (Ctrl-C to stop)",
          flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """--recipe, --baseline and --teacher-cache, shared by `train` and `run`."""
    p.add_argument("--recipe", help="a preset (kd, dkd, dist, nkd, kd_ls, fitnet, minilm, none, kd_adamw), a "
                                    "recipe YAML/JSON file, or auto: the top `autokd recommend` from the knowledge "
                                    "base (default: dist for CNN students, kd_adamw for ViTs)")
    p.add_argument("--baseline", action="store_true", help="also train each student without KD and report the gain")
    p.add_argument("--teacher-cache", action="store_true", help="cache the teacher's top-k outputs (TinyViT-style)")


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
    p.add_argument("--img-size", type=_int_in(8, 4096), help="input resolution (default: the teacher's)")
    p.add_argument("--out", help="run folder: results.json, best.pt, last.pt")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the run in --out (or in DIR) from its last checkpoint")
    p.add_argument("--seed", type=_int_in(0), default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=_int_in(0), help="data-loading processes")
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher and the student (CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_folder(args: argparse.Namespace) -> tuple[Path, bool]:
    resume = args.resume
    out = Path(resume) if isinstance(resume, str) else (Path(args.out) if args.out else None)
    if out is None:
        raise AutokdError("give the run folder with --out DIR (or --resume DIR)")
    return check_writable_dir(out), bool(resume)


def _recipe(args: argparse.Namespace, name: str):
    from autokd.recipes import load_recipe

    return load_recipe(name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       teacher_cache=getattr(args, "teacher_cache", False))


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from autokd.advise import add_runs, profile_of, recipe_auto, student_profile
    from autokd.data import load_data
    from autokd.recipes import default_recipe
    from autokd.recipes.kb import kb_path
    from autokd.teachers import resolve_teacher
    from autokd.train import resolve_student, student_space, train_students

    out, resume = _run_folder(args)
    auto = args.recipe == "auto"
    recipe = _recipe(args, args.recipe) if args.recipe and not auto else None  # a bad recipe fails before loading
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
        recipe, note = recipe_auto(args.kb, profile, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   teacher_cache=args.teacher_cache)
        print(f"autokd: {note}", file=sys.stderr)
    if recipe is None:
        names = {default_recipe(student_space(s)) for s in students}
        if len(names) > 1:
            raise AutokdError(f"the students' default recipes differ ({', '.join(sorted(names))}): students trained "
                              "together share one recipe, so give --recipe")
        recipe = _recipe(args, names.pop())
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


def add_kb_args(p: argparse.ArgumentParser, opt_out: bool = True) -> None:
    """--kb (and --no-kb): the knowledge base of KD runs that recommendations learn from."""
    p.add_argument("--kb", help="the knowledge base CSV (default $AUTOKD_KB or ~/.cache/autokd/kb.csv)")
    if opt_out:
        p.add_argument("--no-kb", action="store_true", help="do not append this run's results to the knowledge base")


def cmd_finetune_teacher(args: argparse.Namespace) -> int:
    """Train the teacher itself with cross-entropy on the user's data; its best.pt is a --teacher-weights file."""
    import torch

    from autokd.data import load_data
    from autokd.teachers import resolve_teacher
    from autokd.train import finetune_teacher

    out, resume = _run_folder(args)
    recipe = _recipe(args, args.recipe)
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


def add_recommend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ImageFolder dir, ImageFolder zip, or CIFAR pickle folder")
    p.add_argument("--teacher", required=True, help="alias, timm name or pkg.module:factory")
    p.add_argument("--teacher-weights", help="the teacher's weights file (its accuracy is a feature of the task)")
    p.add_argument("--student", required=True, help="a spec YAML from `autokd search` (OUT/top/1.yaml), "
                                                    "study:NAME#TRIAL, or a timm name")
    p.add_argument("--storage", help="the storage of a study:NAME#TRIAL student (default sqlite:///autokd.db)")
    p.add_argument("--top", type=_int_in(1), default=5, help="recipes to show (default 5)")
    add_kb_args(p, opt_out=False)
    p.add_argument("--img-size", type=_int_in(8, 4096), help="input resolution (default: the teacher's)")
    p.add_argument("--tune", type=_int_in(1), metavar="N",
                   help="then tune the recipe with N short KD runs (Optuna, warm-started with the top recipes, "
                        "successive halving; resumable in --out) and add them to the knowledge base")
    p.add_argument("--tune-epochs", type=_int_in(1), default=3, help="each tuning run's schedule (default 3)")
    p.add_argument("--tune-eta", type=_int_in(2), default=3, help="keep 1/eta at each rung (default 3)")
    p.add_argument("--tune-images", type=_int_in(0), default=2000,
                   help="train images per tuning run, stratified (default 2000; 0 for all)")
    p.add_argument("--batch-size", type=_int_in(1), help="the tuning runs' batch size (default: the preset's)")
    p.add_argument("--out", help="folder of the tuning study and runs (needed with --tune; the same one resumes)")
    p.add_argument("--seed", type=_int_in(0), default=0)
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
    data = load_data(args.data, img_size=args.img_size or 32, seed=args.seed)
    teacher = resolve_teacher(args.teacher, data.num_classes, weights=args.teacher_weights, img_size=args.img_size)
    if not teacher.pretrained:
        raise AutokdError("the teacher's accuracy and calibration describe the task: give --teacher-weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        student = resolve_student(args.student, data.num_classes, storage=args.storage, img_size=args.img_size)
    profile = profile_of(teacher, student, data, seed=args.seed, device=args.device)
    rec = recommend(args.kb, profile)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    console.print(f"{data.describe()}; teacher {teacher.name} held-out acc {profile['teacher_acc']:.3f}, "
                  f"probe {profile['probe_acc']:.3f}, ECE {profile['teacher_ece']:.3f}; "
                  f"{profile['pair_kind']} pair, MACs ratio {profile['macs_ratio']:.1f}")
    console.print(recommend_table(rec, args.top, kb_path(args.kb)))
    console.print(nearest_table(rec))
    if args.tune:
        config = TuneConfig(trials=args.tune, epochs=args.tune_epochs, eta=args.tune_eta,
                            images=args.tune_images or None, batch_size=args.batch_size, seed=args.seed)
        frame = tune_student(rec, teacher, student, data, profile, check_writable_dir(args.out), config,
                             top=args.top, kb=args.kb, device=args.device, progress=not args.quiet)
        console.print(frame.to_string(index=False, float_format="{:.4g}".format))
        console.print(f"tuning study in {args.out}/tune.db; complete runs added to {kb_path(args.kb)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autokd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="rank and evolve students under a MAC budget, no training")
    add_search_args(search)
    add_refine_args(search)
    add_supernet_args(search)
    search.set_defaults(func=cmd_search)
    train = sub.add_parser("train", help="distil a student from the teacher (resumable; torchrun for many GPUs)")
    add_train_args(train)
    train.set_defaults(func=cmd_train)
    finetune = sub.add_parser("finetune-teacher", help="fine-tune the teacher on your data before distilling")
    add_train_args(finetune, student=False)
    finetune.set_defaults(func=cmd_finetune_teacher, recipe="none")
    run = sub.add_parser("run", help="search, distil the top candidates, rank them by trained accuracy (resumable)")
    add_run_args(run)
    run.set_defaults(func=cmd_run)
    rec = sub.add_parser("recommend", help="KD recipes for this data and pair, ranked by a meta-model over the "
                                           "knowledge base of KD runs (--tune N: then tune them with short runs)")
    add_recommend_args(rec)
    rec.set_defaults(func=cmd_recommend)
    dash = sub.add_parser("dashboard", help="open a study in optuna-dashboard")
    dash.add_argument("--storage", default="sqlite:///autokd.db", help="the study's storage URL")
    dash.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=_int_in(1, 65535), default=8080)
    dash.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed in one line
        return int(done.code or 0)
    logging.basicConfig(level=logging.INFO, format="autokd: %(message)s", stream=sys.stderr)
    for noisy in ("optuna", "timm", "fvcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
    try:
        return args.func(args)
    except AutokdError as err:
        print(f"autokd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autokd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
