"""`autokd search`: its options, the leaderboard table, `--refine` and `--evaluator supernet`."""

from __future__ import annotations

import argparse
import sys

from autokd.cli.common import add_halving_args, csv_list, int_in, recipe_from
from autokd.errors import AutokdError


def add_refine_args(p: argparse.ArgumentParser) -> None:
    """--refine and its settings (`autokd search`)."""
    p.add_argument("--refine", type=int_in(2), metavar="N",
                   help="then distil the top N briefly in rungs of successive halving and rank them by held-out "
                        "accuracy (OUT/refine.csv; needs --data and the teacher's trained weights)")
    add_halving_args(p, "refine", "the refine's KD schedule", "train images for the refine")
    p.add_argument("--refine-recipe", help="the refine's recipe (default: the top candidate's default)")


def add_supernet_args(p: argparse.ArgumentParser) -> None:
    """--evaluator and the supernet's settings (`autokd search`)."""
    p.add_argument("--evaluator", default="proxy", choices=("proxy", "supernet"),
                   help="what ranks the students: proxy (training-free, default) or supernet (AutoDistil: one "
                        "weight-sharing supernet per MAC band distilled from the teacher, subnets ranked by "
                        "held-out top-1 with inherited weights; OUT/supernet.csv, top/*.yaml; needs --data and "
                        "the teacher's trained weights)")
    p.add_argument("--bands", type=int_in(1), default=3, help="supernet: MAC bands, one supernet each (default 3)")
    p.add_argument("--supernet-epochs", type=int_in(1), default=10, help="supernet: training epochs (default 10)")
    p.add_argument("--supernet-trials", type=int_in(1), default=32,
                   help="supernet: subnets scored per band by aging evolution (default 32)")
    p.add_argument("--supernet-batch-size", type=int_in(2), default=64, help="supernet: batch (default 64)")
    p.add_argument("--supernet-images", type=int_in(0), default=0,
                   help="supernet: train images it trains and scores on, stratified (default 0: all)")
    p.add_argument("--supernet-pool", type=int_in(2), default=200,
                   help="supernet: random in-band students whose largest genes size each supernet (default 200)")


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="vit_b", help="alias (vit_b, resnet50, ...), timm name, or pkg.module:factory")
    p.add_argument("--teacher-weights", help="a local weights file for the teacher (nothing is downloaded)")
    p.add_argument("--budget", default="1GFLOP", help="MAC budget: 1GFLOP, 500MFLOPs, 1.5G, 300M, 2e9 (1 FLOP = 1 MAC)")
    p.add_argument("--params-budget", help="optional limit on parameters, e.g. 5M")
    p.add_argument("--data", help="ImageFolder dir, ImageFolder zip, or CIFAR pickle folder (default: synthetic demo)")
    p.add_argument("--space", type=csv_list, help="search space(s), comma-separated: vit,resnet,mobilenet,cifar_resnet "
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
    p.add_argument("--proxies", type=csv_list, default=(),
                   help="more scores to record beside the objective's, e.g. diswot,zico,meco (params and macs "
                        "are always recorded)")
    p.add_argument("--objective",
                   help="the score the search maximises (default: the best measured ranking, see "
                        "docs/evidence.md): one score, or several joined by '+' (their log-rank sum, AZ-NAS style), "
                        "or aznas")
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
    p.add_argument("--top-k", type=int, default=10,
                   help="leaderboard size (default 10): distinct architectures, each the best of the trials that "
                        "differ from it only in per-layer choices")
    p.add_argument("--all-trials", action="store_true",
                   help="list the best trials themselves, without folding per-layer variants into one row")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", help="folder for leaderboard.csv, top/*.yaml, report.html and the study database")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def search_config(args: argparse.Namespace):
    from autokd.search import SearchConfig
    from autokd.storage import MEMORY

    if args.storage == MEMORY:  # gone when the command ends: nothing to train from, resume or open in the dashboard
        raise AutokdError("--storage memory keeps the study in one Python process and is for the library API; give "
                          "sqlite:///PATH/autokd.db or postgresql://... on the command line")

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

    config = search_config(args)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    result = run_search(config, out=args.out, top_k=args.top_k, progress=not args.quiet, all_trials=args.all_trials)
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
    board = leaderboard(result.study, ctx.config.objective, fold=result.fold)
    name = args.refine_recipe or default_recipe(board["space"].iloc[0])
    recipe = recipe_from(argparse.Namespace(epochs=None, batch_size=None, lr=None), name)
    settings = RefineConfig(top=args.refine, epochs=args.refine_epochs, eta=args.refine_eta,
                            images=args.refine_images or None, seed=args.seed or 0)
    frame = refine(board, ctx.teacher, ctx.data, recipe, result.out, result.storage_url, result.study.study_name,
                   settings, img_size=ctx.teacher.img_size, device=args.device, progress=not args.quiet)
    write_csv(result.out / "refine.csv", frame)
    cols = ["refine_rank", "proxy_rank", "arch", "epochs_reached", "heldout_top1", "status"]
    console.print(frame[cols].to_string(index=False))
    console.print(f"wrote {result.out}/refine.csv (recipe {name}; held-out top-1 of {settings.images or 'all'} "
                  f"train images; study {result.study.study_name}-refine)")


def supernet_config(args: argparse.Namespace):
    """The supernet evaluator's settings from --bands and --supernet-* (`autokd search` and `autokd run`)."""
    from autokd.supernet.evaluate import SupernetConfig

    return SupernetConfig(bands=args.bands, epochs=args.supernet_epochs, trials=args.supernet_trials,
                          batch_size=args.supernet_batch_size, pool=args.supernet_pool,
                          images=args.supernet_images or None, seed=args.seed or 0)


def _supernet(args: argparse.Namespace, result, console) -> None:
    """`--evaluator supernet`: K band supernets per space, trained and searched; OUT/supernet.csv, top/*.yaml."""
    import time

    from autokd.cost import format_macs
    from autokd.pipeline import supernet_stage

    start = time.perf_counter()
    frame = supernet_stage(result, supernet_config(args), args.top_k)
    best = frame.sort_values(["band", "band_rank"]).groupby(["space", "band"]).head(1)
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
    variants = "variants" in board.columns
    for col in ["rank", "trial", "arch", *(["variants"] if variants else []), "MACs", "params", objective]:
        table.add_column(col, overflow="fold", no_wrap=col != "arch")
    for col in extra:
        table.add_column(col.replace("diswot_relation", "M_r").replace("diswot_semantic", "M_s"), no_wrap=True)
    for row in board.to_dict("records"):
        table.add_row(
            str(row["rank"]), str(row["trial"]), row["arch"], *([str(row["variants"])] if variants else []),
            format_macs(row["macs"]),
            f"{row['params'] / 1e6:.2f} M", f"{row[objective]:.4f}", *[f"{row[c]:.4g}" for c in extra],
        )
    return table
