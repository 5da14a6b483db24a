"""Top-k refinement on NAS-Bench-201: what short KD training (`autokd search --refine K`) buys over the
training-free pick, in 200-epoch accuracy and CPU seconds.

Each seed's search is the default evolution replayed as in `bench_nb201_search.py`; its top K are then refined by
`autokd.search.refine` with the teacher's weights on 2,000 CIFAR-10 train images (the `--refine` default), held-out
top-1 deciding. Training is the cost, so every network in any seed's top K is trained once, all epochs, none
pruned (a candidate's training follows from its spec and the seed, not its rank), and each seed's successive
halving is replayed on those curves with Optuna's pruner (`replay_halving`); `--live` runs the first seeds' whole
refinement for real and checks the pick. Curves and rows are written as they come; a rerun skips what is done.

    python benchmarks/search/bench_nb201_refine.py --settings 3x1,9x3 --seeds 10 --refine-seeds 0 --live 1
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.proxies.aggregate import DEFAULT_OBJECTIVE  # noqa: E402
from autokd.recipes import default_recipe, load_recipe  # noqa: E402
from autokd.search import prepare  # noqa: E402
from autokd.search.refine import RefineConfig, refine, replay_halving  # noqa: E402
from autokd.spaces import ArchSpec  # noqa: E402
from autokd.spaces.nb201 import cell_string  # noqa: E402
from benchmarks.common import machine, markdown_table, print_table, write_json  # noqa: E402
from benchmarks.ranking.score_nb201 import ground_truth  # noqa: E402
from benchmarks.search.bench_nb201_search import (  # noqa: E402
    LARGEST_MACS,
    OUT,
    TABLES,
    load_table,
    read_rows,
    replay_board,
    replayed,
    search_config,
    summary_line,
)


def parse_setting(text: str, images: int, eta: int) -> RefineConfig:
    """'KxE': the top K refined for E epochs (rungs at 1, eta, eta^2 ... epochs)."""
    top, epochs = (int(x) for x in text.split("x"))
    return RefineConfig(top=top, epochs=epochs, min_epochs=1, eta=eta, images=images)


def cell_of(spec_json: str) -> str:
    return cell_string(ArchSpec.from_json(spec_json))


def candidates_board(specs: list[str], table: dict[str, dict[str, float]]) -> pd.DataFrame:
    """A leaderboard of `specs` in the given order, as `refine` reads one."""
    return pd.DataFrame([{"rank": i + 1, "trial": i, "arch": cell_of(s), "macs": 0,
                          "params": int(table[cell_of(s)]["params"]), "spec_json": s} for i, s in enumerate(specs)])


def train_curves(specs: list[str], partner: str, config: RefineConfig, ctx, table: dict, recipe, work: Path,
                 curves_path: Path, setting: str, group: int) -> None:
    """Train `specs` for all of `config.epochs` (no pruning), `group` networks at a time sharing the teacher's
    forward pass; one line per network (held-out top-1 per epoch, CPU seconds) appended to `curves_path`.
    `refine` compares two or more: a lone network trains beside `partner`, whose line is not written again."""
    chunks = [specs[i:i + group] for i in range(0, len(specs), group)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    work.mkdir(parents=True, exist_ok=True)
    for chunk in chunks:
        trained = chunk if len(chunk) > 1 else [*chunk, partner]
        name = f"{setting}-{hashlib.sha256(' '.join(trained).encode()).hexdigest()[:10]}"
        full = RefineConfig(top=len(trained), epochs=config.epochs, min_epochs=config.epochs, eta=config.eta,
                            images=config.images, seed=config.seed)
        start = time.process_time()
        frame = refine(candidates_board(trained, table), ctx.teacher, ctx.data, recipe, work / name,
                       f"sqlite:///{work / name}.db", name, full, img_size=32)
        seconds = (time.process_time() - start) / len(trained)
        with curves_path.open("a") as f:
            for row in frame.to_dict("records"):
                spec = trained[row["proxy_rank"] - 1]
                if spec not in chunk:
                    continue
                line = {"setting": setting, "refine_seed": config.seed, "spec_json": spec, "arch": cell_of(spec),
                        "cpu_s": seconds,
                        "threads": torch.get_num_threads(),
                        **{f"epoch{e}": row[f"epoch{e}_heldout_top1"] for e in range(1, config.epochs + 1)}}
                f.write(json.dumps(line) + "\n")
        print(f"{setting} refine seed {config.seed}: trained {len(trained)} networks, {seconds:.0f} CPU s each",
              flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="3x1,9x3", help="refinements KxE: the top K, E epochs, comma-separated")
    p.add_argument("--trials", type=int, default=1000, help="scored candidates per search")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--images", type=int, default=2000, help="train images each refine run uses")
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--refine-seeds", default="0", help="refine seeds (train subset, order and inits), comma-separated")
    p.add_argument("--group", type=int, default=5, help="networks trained together while building the curves")
    p.add_argument("--live", type=int, default=0, help="run this many seeds' refinement (first setting) for real")
    p.add_argument("--work", type=Path, help="run folders (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    logging.getLogger("autokd").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    table, seconds = load_table(list(TABLES))
    accuracy = ground_truth().set_index("arch")[["c10_test", "c100_test"]].to_dict("index")
    score_seconds = seconds["synflow"]
    recipe_name = default_recipe("nb201")
    recipe = load_recipe(recipe_name)
    work = args.work or Path(tempfile.mkdtemp(prefix="nb201-refine-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    curves_path, rows_path = args.out / "refine_curves.jsonl", args.out / "refine.jsonl"
    with replayed(table):
        ctx = prepare(search_config(DEFAULT_OBJECTIVE, LARGEST_MACS))
        boards = {seed: replay_board(ctx, "evolution", seed, args.trials) for seed in range(args.seeds)}

    settings = {s: parse_setting(s, args.images, args.eta) for s in args.settings.split(",")}
    refine_seeds = [int(x) for x in args.refine_seeds.split(",")]
    rows = [r for r in read_rows(rows_path) if r["trials"] == args.trials and r["images"] == args.images]
    done = {(r["setting"], r["seed"], r["refine_seed"]) for r in rows}
    for (setting, base), refine_seed in itertools.product(settings.items(), refine_seeds):
        config = dataclasses.replace(base, seed=refine_seed)
        needed = list(dict.fromkeys(s for board, _ in boards.values()
                                    for s in board["spec_json"].drop_duplicates().head(config.top)))
        lines = [c for c in read_rows(curves_path)
                 if c["setting"] == setting and c["refine_seed"] == refine_seed]
        missing = [s for s in needed if s not in {c["spec_json"] for c in lines}]
        if missing:
            partner = next(s for s in needed if s not in missing[:1])
            train_curves(missing, partner, config, ctx, table, recipe, work / f"{setting}-{refine_seed}",
                         curves_path, setting, args.group)
            lines = [c for c in read_rows(curves_path)
                     if c["setting"] == setting and c["refine_seed"] == refine_seed]
        curves = {c["spec_json"]: [c[f"epoch{e}"] for e in range(1, config.epochs + 1)] for c in lines}
        per_epoch = float(np.mean([c["cpu_s"] for c in lines])) / config.epochs
        with rows_path.open("a") as f:
            for seed, (board, search_cpu) in boards.items():
                if (setting, seed, refine_seed) in done:
                    continue
                frame = replay_halving(board, curves, config)
                pick, free = cell_of(board["spec_json"].iloc[int(frame["proxy_rank"][0]) - 1]), cell_of(
                    board["spec_json"].iloc[0])
                trained = int(frame["epochs_reached"].sum())
                row = {"setting": setting, "top": config.top, "epochs": config.epochs, "eta": config.eta,
                       "images": args.images, "trials": args.trials, "seed": seed, "refine_seed": refine_seed,
                       "pick": pick, "proxy_rank_of_pick": int(frame["proxy_rank"][0]),
                       "c10": accuracy[pick]["c10_test"], "c100": accuracy[pick]["c100_test"],
                       "free_pick": free, "free_c10": accuracy[free]["c10_test"],
                       "free_c100": accuracy[free]["c100_test"], "candidate_epochs": trained,
                       "refine_cpu_s_estimate": trained * per_epoch,
                       "search_cpu_s_estimate": search_cpu + board["spec_json"].nunique() * score_seconds,
                       "recipe": recipe_name}
                f.write(json.dumps(row) + "\n")
                rows.append(row)
                print(f"{setting} refine seed {refine_seed} seed {seed}: {pick} {row['c10']:.2f} / "
                      f"{row['c100']:.2f} (training-free pick {row['free_c10']:.2f} / {row['free_c100']:.2f})",
                      flush=True)

    checks = live_checks(args, settings, boards, ctx, recipe, rows, work)
    live_search = [c["live_cpu_s"] for c in read_rows(args.out / "live" / "checks.jsonl")
                   if c["trials"] == args.trials and c["objective"] == DEFAULT_OBJECTIVE]
    columns = ["search", "N scored", "CIFAR-10 top-1", "CIFAR-100 top-1", "runs", "CPU s per search", "note"]
    lines = []
    frame = pd.DataFrame(rows)
    free = frame.drop_duplicates("seed")
    search_cpu = (pd.Series(np.mean(live_search), index=free.index) if live_search else free.search_cpu_s_estimate)
    lines.append(_row("autokd evolution, training-free pick", args.trials, free.free_c10, free.free_c100,
                      search_cpu, f"{len(live_search)} live search(es) timed" if live_search else "estimate"))
    for setting, config in settings.items():
        part = frame[frame.setting == setting]
        by_seed = part.groupby("refine_seed").c10.mean()
        lines.append(_row(f"+ --refine {config.top} --refine-epochs {config.epochs}", args.trials, part.c10,
                          part.c100, search_cpu.mean() + part.refine_cpu_s_estimate,
                          f"{part.candidate_epochs.mean():.0f} candidate-epochs of {args.images} images; CIFAR-10 "
                          "by refine seed " + " / ".join(f"{v:.2f}" for v in by_seed)))
    print_table(f"NAS-Bench-201: the default search ({DEFAULT_OBJECTIVE}) and its top K refined by {recipe_name} KD",
                columns, lines, ["runs = search seeds x refine seeds; CPU s = the search's (timed live where shown) "
                                 "+ candidate-epochs x measured CPU s per candidate-epoch",
                                 *(f"live refine seed {c['seed']}: {c['live_pick']} "
                                   f"({'same' if c['same'] else 'DIFFERENT'}), {c['live_cpu_s']:.0f} CPU s"
                                   for c in checks)])
    (args.out / f"refine_n{args.trials}.md").write_text(markdown_table(columns, lines) + "\n")
    result = {"objective": DEFAULT_OBJECTIVE, "recipe": recipe_name, "rows": rows, "live_checks": checks,
              "table": lines, "machine": machine()}
    print(f"wrote {write_json(result, args.out / f'refine_n{args.trials}.json')}")
    return result


def _row(name: str, n: int, c10: pd.Series, c100: pd.Series, cpu: pd.Series, note: str) -> list[str]:
    line = summary_line(name, n, "none", c10.tolist(), c100.tolist(), note, f"{cpu.mean():.0f}")
    return [line[0], line[1], *line[3:]]


def live_checks(args: argparse.Namespace, settings: dict[str, RefineConfig], boards: dict, ctx, recipe,
                rows: list[dict], work: Path) -> list[dict]:
    """The first `--live` seeds' refinement in the first setting, run for real: same pick as the replay?"""
    path = args.out / "refine_live.jsonl"
    setting, config = next(iter(settings.items()))
    checks = [c for c in read_rows(path) if c["setting"] == setting and c["trials"] == args.trials]
    for seed in range(args.live):
        if any(c["seed"] == seed for c in checks):
            continue
        board = boards[seed][0]
        name = f"live-{setting}-{seed}"
        work.mkdir(parents=True, exist_ok=True)
        start = time.process_time()
        frame = refine(board, ctx.teacher, ctx.data, recipe, work / name, f"sqlite:///{work / name}.db", name,
                       config, img_size=32)
        live_pick = cell_of(board["spec_json"].iloc[int(frame["proxy_rank"][0]) - 1])
        replay_pick = next(r["pick"] for r in rows if r["setting"] == setting and r["seed"] == seed
                           and r["refine_seed"] == config.seed)
        checks.append({"setting": setting, "trials": args.trials, "seed": seed, "live_pick": live_pick,
                       "replay_pick": replay_pick, "same": live_pick == replay_pick,
                       "live_cpu_s": time.process_time() - start, "threads": torch.get_num_threads()})
        with path.open("a") as f:
            f.write(json.dumps(checks[-1]) + "\n")
        print(f"live refine seed {seed}: {live_pick} ({'same' if checks[-1]['same'] else 'DIFFERENT'})", flush=True)
    return checks


if __name__ == "__main__":
    main()
