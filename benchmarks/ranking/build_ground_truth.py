"""Ground truth for the proxies: train students spread across the MACs range, with and without KD.

Samples `--students` specs of `cifar_resnet` (and `--vit-students` of `vit` at 32 px) under each of
`--budgets` (each band runs from the previous budget, or the space's smallest model, to its own), stratified
by MACs (log-spaced bins), then trains each one per seed: distilled from the CIFAR-10 teacher (kd_acc) and,
when `--kinds` has cls, without KD (cls_acc, the same recipe with cross-entropy only). `--recipe auto` gives each
family its own recipe (`--cnn-recipe`, `--vit-recipe`). Writes one row per student and seed to
benchmarks/results/gt_cifar10.csv: spec (autokd JSON), macs, params, kd_acc, cls_acc, seed, epochs, device, note.
Runs resume: a training the CSV already holds is not run again (so a fresh checkout resumes from the committed
CSV), a finished one in the run folders (results.json) is reused, an interrupted one continues from its last.pt;
the CSV is rewritten as trainings finish. Jobs run student by student, every seed of one student together, so a
partial run already gives seed pairs spread over the MACs range; `--seeds-last` trains every student's first seed
before any second one, so that a partial run spans more students.

GPU (small models share one GPU well; several processes at once):
    python benchmarks/ranking/build_ground_truth.py --device cuda --workers 6 --students 48 --vit-students 24 \
        --budgets 12M,25M,50M --recipe auto --epochs 30 --seeds 2 --finetune-epochs 15 --teacher-cache
CPU (a subset of the training split, few epochs; the note column says so), the committed ground truth:
    python benchmarks/ranking/build_ground_truth.py --device cpu --workers 2 --threads 1 --students 42 \
        --vit-students 21 --budgets 12M,25M,50M --recipe auto --kinds kd --seeds 2 --epochs 4 --subset 4000 \
        --test-subset 2000 --finetune-epochs 2 --teacher-cache --runs runs/gt_cifar10_v2 \
        --out benchmarks/results/gt_cifar10_v2.csv
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.data import subset_data  # noqa: E402
from benchmarks.common import RESULTS_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
DEFAULT_WEIGHTS = SHARED / "teachers" / "cifar10_resnet56-4bfd9763.th"
DEFAULT_DATA = SHARED / "data" / "cifar10-jpeg.zip"
IMG_SIZE = 32
log = logging.getLogger("autokd")


# ------------------------------------------------------------------------------------------- sampling
def mac_bins(low: float, high: float, n: int) -> np.ndarray:
    """n log-spaced bins edges from `low` to `high` MACs (n + 1 edges)."""
    return np.geomspace(low, high, n + 1)


def stratified_specs(space_name: str, count: int, budget: int, seed: int, bins: int | None = None,
                     pool: int = 3000, floor: int = 0) -> list:
    """`count` distinct specs with `floor` < MACs <= `budget`, spread over log-spaced MACs bins (round-robin over
    the bins, so sparse bins still get their share); MACs are exact (fvcore)."""
    from autokd.cost import count_macs
    from autokd.spaces import load_space

    if count <= 0:
        return []
    space = load_space(space_name, IMG_SIZE)
    rng = random.Random(seed)
    low = max(count_macs(space.build(space.smallest(), 10), IMG_SIZE), floor)
    if low > budget:
        log.warning("space %s has nothing under %d MACs; skipped", space_name, budget)
        return []
    edges = mac_bins(low, budget, bins or min(count, 8))
    buckets: list[list] = [[] for _ in range(len(edges) - 1)]
    seen = set()
    for _ in range(pool):
        spec = space.sample(rng)
        estimate = space.estimate_macs(spec, 10)
        if spec in seen or estimate > budget * 1.02 or estimate < low * 0.98:
            continue
        seen.add(spec)
        b = min(max(int(np.searchsorted(edges, estimate, side="right")) - 1, 0), len(buckets) - 1)
        buckets[b].append(spec)
    chosen = []
    while len(chosen) < count and any(buckets):
        for bucket in buckets:
            while bucket and len(chosen) < count:
                spec = bucket.pop()
                if floor < count_macs(space.build(spec, 10), IMG_SIZE) <= budget:  # decided on the real count
                    chosen.append(spec)
                    break
    return sorted(chosen, key=lambda s: space.estimate_macs(s, 10))


# ------------------------------------------------------------------------------------------- training
_STATE: dict = {}


def _init_worker(args: argparse.Namespace, weights: str | None) -> None:
    import torch

    from autokd.data import load_data
    from autokd.teachers import resolve_teacher

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // max(1, args.workers)))
    logging.basicConfig(level=logging.WARNING, format="autokd: %(message)s")
    data = subset_data(load_data(args.data, img_size=IMG_SIZE, seed=0), args.subset, args.test_subset, 0)
    teacher = resolve_teacher(args.teacher, data.num_classes, weights=weights)
    _STATE.update(data=data, teacher=teacher, args=args)


def run_dir(runs: Path, spec_json: str, kind: str, seed: int) -> Path:
    digest = hashlib.sha1(spec_json.encode()).hexdigest()[:10]
    return runs / digest / f"{kind}-s{seed}"


def train_group(jobs: list[tuple[str, str, int]]) -> list[dict]:
    """Train students of one space, kind ('kd' or 'cls') and seed together, one teacher pass per batch, each in
    its own run folder; reuse finished runs and resume interrupted ones."""
    import torch

    from autokd.recipes import CNN_SPACES, load_recipe
    from autokd.spaces import ArchSpec
    from autokd.train import TrainResult, build_from_spec, no_kd, train_students

    args, data, teacher = _STATE["args"], _STATE["data"], _STATE["teacher"]
    (_, kind, seed), space = jobs[0], ArchSpec.from_json(jobs[0][0]).space
    name = args.recipe if args.recipe != "auto" else (args.cnn_recipe if space in CNN_SPACES else args.vit_recipe)
    recipe = load_recipe(name, epochs=args.epochs, batch_size=args.batch_size,
                         teacher_cache=args.teacher_cache and kind == "kd")
    recipe = recipe if kind == "kd" else no_kd(recipe)
    results: dict[str, TrainResult] = {}
    pending = []
    for spec_json, _, _ in jobs:
        done = run_dir(Path(args.runs), spec_json, kind, seed) / "results.json"
        result = TrainResult.load(done) if done.is_file() else None
        if result is not None and result.stopped is None:
            results[spec_json] = result
        else:
            pending.append(spec_json)
    # runs with a last.pt resume together (they were written together), the others start together
    started = [s for s in pending if (run_dir(Path(args.runs), s, kind, seed) / "last.pt").is_file()]
    for group, resume in ((started, True), ([s for s in pending if s not in started], False)):
        if not group:
            continue
        students = []
        for spec_json in group:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the same initial weights for kd and cls
                students.append(build_from_spec(ArchSpec.from_json(spec_json), data.num_classes, IMG_SIZE))
        outs = [run_dir(Path(args.runs), s, kind, seed) for s in group]
        trained = train_students(students, teacher if kind == "kd" else None, data, recipe, outs,
                                 device=args.device, resume=resume, seed=seed, num_workers=0, progress=False,
                                 img_size=IMG_SIZE, cache_dir=Path(args.runs) / "teacher_cache",
                                 evaluate_teacher=False, heldout=0)  # no selection: test read once
        results.update(zip(group, trained))
    return [{"spec": s, "kind": kind, "seed": seed, "top1": r.top1, "best_top1": r.best_top1, "macs": r.macs,
             "params": r.params, "epochs": r.epochs, "device": r.device, "teacher_top1": r.teacher_top1,
             "seconds": r.seconds} for s, r in ((s, results[s]) for s, _, _ in jobs)]


def groups_of(jobs: list[tuple[str, str, int]], together: int) -> list[list[tuple[str, str, int]]]:
    """Consecutive jobs of one space, kind and seed, `together` at most per group, in the jobs' order."""
    from autokd.spaces import ArchSpec

    open_groups: dict[tuple, list] = {}
    groups = []
    for job in jobs:
        key = (ArchSpec.from_json(job[0]).space, job[1], job[2])
        group = open_groups.setdefault(key, [])
        if not group:
            groups.append(group)
        group.append(job)
        if len(group) == together:
            del open_groups[key]
    return groups


def teacher_weights(args: argparse.Namespace) -> str | None:
    """Fine-tune the teacher on the (subset) training split first; its best.pt becomes the teacher weights."""
    from autokd.data import load_data
    from autokd.recipes import load_recipe
    from autokd.teachers import resolve_teacher
    from autokd.train import TrainResult, finetune_teacher

    if not args.finetune_epochs:
        return args.teacher_weights
    folder = Path(args.runs) / "teacher"
    if not ((folder / "results.json").is_file() and TrainResult.load(folder / "results.json").stopped is None):
        data = subset_data(load_data(args.data, img_size=IMG_SIZE, seed=0), args.subset, args.test_subset, 0)
        teacher = resolve_teacher(args.teacher, data.num_classes, weights=args.teacher_weights)
        recipe = load_recipe("none", epochs=args.finetune_epochs, lr=args.finetune_lr)
        result = finetune_teacher(teacher, data, recipe, folder, device=args.device,
                                  resume=(folder / "last.pt").is_file(), num_workers=0, progress=False)
        print(f"teacher fine-tuned {args.finetune_epochs} epochs: top-1 {result.top1:.2f}%", flush=True)
    return str(folder / "best.pt")


def recorded(out: Path, spec_json: str, kind: str, seed: int) -> dict | None:
    """A training that `out` (the ground-truth CSV) already holds, as `train_group` returns it; None if absent."""
    if not out.is_file():
        return None
    frame = _read_rows(str(out), out.stat().st_mtime)
    row = frame[(frame["spec"] == spec_json) & (frame["seed"] == seed)]
    column = "kd_acc" if kind == "kd" else "cls_acc"
    if row.empty or pd.isna(row.iloc[0][column]):
        return None
    r = row.iloc[0]
    best, seconds = ("kd_best", "seconds") if kind == "kd" else ("cls_best", "seconds_cls")
    return {"spec": spec_json, "kind": kind, "seed": seed, "top1": float(r[column]), "best_top1": float(r[best]),
            "macs": int(r["macs"]), "params": int(r["params"]), "epochs": int(r["epochs"]), "device": r["device"],
            "teacher_top1": r["teacher_top1"], "seconds": float(r[seconds])}


@functools.lru_cache(maxsize=2)
def _read_rows(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


def _teacher_top1(args: argparse.Namespace) -> float | None:
    """The fine-tuned teacher's top-1 on the eval split (from its run), else None."""
    from autokd.train import TrainResult

    done = Path(args.runs) / "teacher" / "results.json"
    return TrainResult.load(done).top1 if args.finetune_epochs and done.is_file() else None


def rows_from(results: list[dict], note: str, kinds: tuple[str, ...] = ("kd", "cls")) -> pd.DataFrame:
    """One row per (spec, seed) with every training of `kinds` done: kd_acc and cls_acc side by side (cls_acc
    empty when only KD was trained)."""
    from autokd.spaces import ArchSpec

    frame = pd.DataFrame(results)
    if frame.empty:
        return frame
    kd = frame[frame["kind"] == "kd"]
    cls = frame[frame["kind"] == "cls"][["spec", "seed", "top1", "best_top1", "seconds"]]
    how = "inner" if "cls" in kinds else "left"
    both = kd.merge(cls, on=["spec", "seed"], suffixes=("", "_cls"), how=how)
    both = both.rename(columns={"top1": "kd_acc", "best_top1": "kd_best", "top1_cls": "cls_acc",
                                "best_top1_cls": "cls_best"})
    both["space"] = [ArchSpec.from_json(s).space for s in both["spec"]]
    both["note"] = note
    cols = ["spec", "space", "macs", "params", "kd_acc", "cls_acc", "seed", "epochs", "device", "kd_best",
            "cls_best", "teacher_top1", "seconds", "seconds_cls", "note"]
    return both[cols].sort_values(["space", "macs", "seed"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="resnet56_cifar")
    p.add_argument("--teacher-weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.exists() else None)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the teacher on the train split first")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--students", type=int, default=40, help="cifar_resnet students (default 40)")
    p.add_argument("--vit-students", type=int, default=20, help="vit students at 32 px (default 20)")
    p.add_argument("--budgets", "--budget", default="50M",
                   help="MAC budgets, comma-separated: students are drawn in each band up to one (default 50M)")
    p.add_argument("--bins", type=int, help="MACs bins per space (default min(students, 8))")
    p.add_argument("--recipe", default="kd",
                   help="the recipe for every student (cls: the same without KD); auto: one per family")
    p.add_argument("--cnn-recipe", default="dist", help="CNN students' recipe under --recipe auto")
    p.add_argument("--vit-recipe", default=str(Path(__file__).resolve().parent / "gt_vit.yaml"),
                   help="ViT students' recipe under --recipe auto")
    p.add_argument("--kinds", default="kd,cls", help="kd (distilled), cls (no KD) or both (default kd,cls)")
    p.add_argument("--teacher-cache", action="store_true",
                   help="cache the teacher's outputs per view (shared by every student of a seed)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--subset", type=int, help="train on a stratified subset of N training images")
    p.add_argument("--test-subset", type=int, help="evaluate on a stratified subset of N test images")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=1, help="parallel training processes")
    p.add_argument("--seeds-last", action="store_true",
                   help="train every student's first seed before any later seed (a partial run spans more students)")
    p.add_argument("--together", type=int, default=1,
                   help="students of one space and seed trained together, one teacher pass per batch")
    p.add_argument("--threads", type=int, help="torch threads per process (default cores / workers)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "gt_cifar10"), help="run folders (resumable)")
    p.add_argument("--out", default=str(RESULTS_DIR / "gt_cifar10.csv"))
    p.add_argument("--note", help="extra words for the note column")
    args = p.parse_args(argv)

    import torch

    from autokd.cost import Budget

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    budgets = sorted(Budget.parse(b).macs for b in args.budgets.split(","))
    floors = [0, *budgets[:-1]]
    kinds = tuple(k for k in ("kd", "cls") if k in args.kinds.split(","))
    specs = []
    for space, count in (("cifar_resnet", args.students), ("vit", args.vit_students)):
        owed = 0  # a band with too few students (none under its budget) passes its share on to the next
        for i, (floor, budget) in enumerate(zip(floors, budgets)):
            share = count * (i + 1) // len(budgets) - count * i // len(budgets) + owed
            chosen = stratified_specs(space, share, budget, args.seed, args.bins, floor=floor)
            owed = share - len(chosen)
            specs += chosen
    weights = teacher_weights(args)
    teacher_top1 = _teacher_top1(args)
    train_note = f"{args.subset}-image stratified subset" if args.subset else "full train split"
    test_note = f"{args.test_subset}-image test subset" if args.test_subset else "full test split"
    ft = f"fine-tuned {args.finetune_epochs} epochs" if args.finetune_epochs else "not fine-tuned on the JPEGs"
    recipe = (args.recipe if args.recipe != "auto"
              else f"{args.cnn_recipe} (CNN) / {Path(args.vit_recipe).stem} (ViT)")
    note = (f"{args.device.upper()} version: {train_note}, {test_note}, {args.epochs} epochs, recipe {recipe}, "
            f"teacher {args.teacher} {ft}, budgets {args.budgets}" + (f"; {args.note}" if args.note else ""))
    order = random.Random(args.seed).sample(specs, len(specs))  # a partial run still spans the MACs range
    jobs = [(s.to_json(), kind, seed) for s in order for seed in range(args.seeds) for kind in kinds]
    if args.seeds_last:  # every student's first seed before any second one: a partial run covers more students
        jobs.sort(key=lambda job: job[2])
    print(f"{len(specs)} students x {args.seeds} seed(s) x {len(kinds)} = {len(jobs)} trainings on {args.device} with "
          f"{args.workers} worker(s); {note}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = [r for job in jobs if (r := recorded(out, *job)) is not None]  # the CSV resumes without run folders
    jobs = [job for job in jobs if recorded(out, *job) is None]
    start = time.perf_counter()
    done = 0
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(args, weights)) as pool:
        futures = [pool.submit(train_group, group) for group in groups_of(jobs, args.together)]
        for future in as_completed(futures):
            for r in future.result():
                done += 1
                results.append({**r, "teacher_top1": teacher_top1})
                print(f"[{done}/{len(jobs)}] {r['kind']} s{r['seed']} {r['macs'] / 1e6:.1f}M top1 {r['top1']:.2f}% "
                      f"({r['seconds']:.0f} s; {time.perf_counter() - start:.0f} s total)", flush=True)
            rows = rows_from(results, note, kinds)
            if not rows.empty:
                tmp = out.with_suffix(".tmp")
                rows.to_csv(tmp, index=False)
                os.replace(tmp, out)
    print(f"wrote {out}: {len(rows_from(results, note, kinds))} rows in {time.perf_counter() - start:.0f} s")
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="autokd: %(message)s")
    main()
