"""Does the search pay off? autokd's pick vs a hand-picked student vs the best of k random students.

At one MACs budget on CIFAR-10, three ways to choose a `cifar_resnet` student, each distilled with the same
recipe, epochs, data and seeds from the same teacher:
  autokd   the top distinct candidate of an autokd search (the student `autokd run --train-top 1` trains), one
           arm per search objective in --objectives (default: the search's default, diswot)
  hand     a hand-picked student of the same budget: ResNet-20 (3-3-3 blocks, 16-32-64 wide, shortcut A)
  random   k students drawn uniformly from the space under the budget; the best of them on the test split
           (an optimistic upper bound for random search, since the pick looks at the test accuracy)
Reports test top-1 (mean over seeds) and total time (a fresh search + every training the arm needs; a finished
training found in --runs is reused and counted with its recorded time), and each arm's gain over the strongest
other arm; writes results/search_quality.json.

    python benchmarks/search/bench_search_quality.py --device cuda --epochs 30 --seeds 2          # GPU
    python benchmarks/search/bench_search_quality.py --device cpu --subset 4000 --test-subset 2000 --epochs 3   # CPU
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import sys
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.cost import Budget, count_macs  # noqa: E402
from autokd.data import load_data, subset_data  # noqa: E402
from autokd.pipeline import distinct_candidates  # noqa: E402
from autokd.recipes import Recipe, load_recipe  # noqa: E402
from autokd.search import SearchConfig, run_search  # noqa: E402
from autokd.spaces import ArchSpec, load_space  # noqa: E402
from autokd.teachers import resolve_teacher  # noqa: E402
from autokd.train import build_from_spec, train_student  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SPACE, IMG_SIZE = "cifar_resnet", 32
RESNET20 = ArchSpec.make(SPACE, depths=(3, 3, 3), widths=(16, 32, 64), shortcut="A")


def random_specs(k: int, budget: int, seed: int) -> list[ArchSpec]:
    """`k` distinct specs drawn uniformly from the space, each under `budget` MACs (exact count)."""
    space = load_space(SPACE, IMG_SIZE)
    rng, chosen = random.Random(seed), []
    while len(chosen) < k:
        spec = space.sample(rng)
        if spec not in chosen and count_macs(space.build(spec, 10), IMG_SIZE) <= budget:
            chosen.append(spec)
    return chosen


def distil(spec: ArchSpec, teacher, data, recipe: Recipe, seed: int, folder: Path, device: str) -> dict:
    """Distil `spec` (initial weights from `seed`); reuse a finished run in `folder`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_from_spec(spec, data.num_classes, IMG_SIZE)
    result = train_student(student, teacher, data, recipe, folder, device=device, seed=seed, num_workers=0,
                           progress=False, resume=(folder / "last.pt").is_file())
    return {"spec": spec.to_json(), "arch": spec.short(), "seed": seed, "top1": result.top1, "macs": result.macs,
            "params": result.params, "seconds": result.seconds, "device": result.device}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "data" / "cifar10-jpeg.zip"))
    p.add_argument("--teacher", default="resnet56_cifar")
    p.add_argument("--teacher-weights", default=str(SHARED / "teachers" / "cifar10_resnet56-4bfd9763.th"))
    p.add_argument("--budget", default="50M", help="MACs budget (ResNet-20 is 41 M at 32 px)")
    p.add_argument("--trials", type=int, default=300, help="search trials")
    p.add_argument("--objectives", default="diswot", help="one autokd arm per search objective, e.g. diswot,params")
    p.add_argument("--k", type=int, default=3, help="random students to train")
    p.add_argument("--recipe", default="dist")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--subset", type=int, help="train on a stratified subset of N training images")
    p.add_argument("--test-subset", type=int, help="evaluate on a stratified subset of N test images")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per student")
    p.add_argument("--seed", type=int, default=0, help="search and sampling seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default=str(ROOT / "runs" / "search_quality"))
    p.add_argument("--out", default=str(RESULTS_DIR / "search_quality.json"))
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    runs, budget = Path(args.runs), Budget.parse(args.budget).macs
    picks, searches = {}, {}
    for objective in args.objectives.split(","):
        config = SearchConfig(teacher=args.teacher, teacher_weights=args.teacher_weights, data=args.data,
                              budget=args.budget, spaces=(SPACE,), trials=args.trials, seed=args.seed,
                              sampler_seed=args.seed,
                              objective=objective, device=args.device)
        folder = runs / f"search-{objective}"
        shutil.rmtree(folder, ignore_errors=True)  # a fresh search, so its time is real
        search = run_search(config, out=folder, progress=False)
        picks[objective] = ArchSpec.from_json(distinct_candidates(search.study, objective, 1).iloc[0]["spec_json"])
        searches[objective] = search.seconds
        print(f"search ({objective}): {args.trials} trials in {search.seconds:.0f} s; pick "
              f"{picks[objective].short()}", flush=True)

    data = subset_data(load_data(args.data, img_size=IMG_SIZE, seed=0), args.subset, args.test_subset, 0)
    teacher = resolve_teacher(args.teacher, data.num_classes, weights=args.teacher_weights)
    recipe = load_recipe(args.recipe, epochs=args.epochs)
    arms = {**{f"autokd ({objective})": [spec] for objective, spec in picks.items()}, "hand (ResNet-20)": [RESNET20],
            f"random (best of {args.k})": random_specs(args.k, budget, args.seed)}
    search_seconds = {f"autokd ({objective})": seconds for objective, seconds in searches.items()}
    runs_by_arm: dict[str, list[dict]] = {}
    for arm, specs in arms.items():
        for i, spec in enumerate(specs):
            for seed in range(args.seeds):
                folder = runs / "train" / f"{spec.short()}-s{seed}".replace("/", "_")
                row = distil(spec, teacher, data, recipe, seed, folder, args.device)
                runs_by_arm.setdefault(arm, []).append({**row, "candidate": i})
                print(f"{arm}: {row['arch']} seed {seed}: top-1 {row['top1']:.2f}% ({row['seconds']:.0f} s)",
                      flush=True)

    summary = {}
    for arm, rows in runs_by_arm.items():
        by_candidate = {}
        for r in rows:
            by_candidate.setdefault(r["candidate"], []).append(r)
        means = {c: statistics.mean(r["top1"] for r in rs) for c, rs in by_candidate.items()}
        best = max(means, key=means.get)
        chosen = by_candidate[best][0]
        seconds = sum(r["seconds"] for r in rows) + search_seconds.get(arm, 0.0)
        summary[arm] = {"arch": chosen["arch"], "spec": chosen["spec"], "macs": chosen["macs"],
                        "params": chosen["params"], "top1": means[best],
                        "top1_seeds": [r["top1"] for r in by_candidate[best]],
                        "candidates": {by_candidate[c][0]["arch"]: m for c, m in means.items()},
                        "seconds": seconds}
    table = []
    for arm, s in summary.items():
        best_other = max(v["top1"] for a, v in summary.items() if a != arm)
        s["gain_over_best_other"] = s["top1"] - best_other
        table.append([arm, s["arch"], f"{s['macs'] / 1e6:.1f}", f"{s['params'] / 1e3:.0f}k", f"{s['top1']:.2f}",
                      f"{s['gain_over_best_other']:+.2f}", f"{s['seconds']:.0f}"])
    device = args.device if not args.device.startswith("cuda") else f"{args.device} ({torch.cuda.get_device_name()})"
    train_note = f"{len(data.train)} train images" + (f", {len(data.test)} test images" if data.test else "")
    print_table(f"search quality at {args.budget} MACs: {args.recipe}, {args.epochs} epochs, {args.seeds} seed(s)",
                ["arm", "student", "MMACs", "params", "test top-1 %", "vs best other", "seconds"], table,
                [f"device: {device}; {train_note}; teacher {args.teacher}",
                 f"autokd seconds include the search ({args.trials} trials: "
                 + ", ".join(f"{o} {s:.0f} s" for o, s in searches.items()) + ")",
                 "random: best of k on the test split (optimistic for random)"])
    result = {"benchmark": "search_quality", "config": vars(args), "device": device, "machine": machine(),
              "search_seconds": searches, "summary": summary, "runs": runs_by_arm}
    print(f"wrote {write_json(result, Path(args.out))}")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="autokd: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main()
