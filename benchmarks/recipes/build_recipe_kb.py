"""The starter knowledge base of KD runs: real tasks x teacher-student pairs x the recipe grid x seeds.

Tasks are made from the real images in ../shared/data: CIFAR-10 and Imagenette at several resolutions and subset
sizes, few-shot, long-tailed, noisy labels, grayscale, and class subsets (`TASKS`). The teacher of every task is
the CIFAR-10 ResNet-56 of ../shared/teachers fine-tuned on that task's train split (`--finetune-epochs`). Pairs:
ResNet-56 -> a small CIFAR ResNet (cnn->cnn) and ResNet-56 -> a small ViT (cnn->vit). Each (task, pair, seed)
trains the student without KD once (the default rule's schedule with cross-entropy only: the KB's no-KD accuracy),
then with every recipe of `autokd.recipes.recommend.candidate_grid`, all at `--epochs` epochs and batch `--batch-
size`. Rows go to the starter KB that ships with autokd (autokd/recipes/data/starter_kb.csv) as runs finish; a row
the CSV holds is not run again, a finished run folder is reused and an interrupted one resumes from its last.pt,
so the same command continues a killed build. `--published` adds the CIFAR-100 KD tables of ../shared/reference
(source=published).

    python benchmarks/recipes/build_recipe_kb.py --device cuda --epochs 15 --seeds 2 --published     # the starter KB
    python benchmarks/recipes/build_recipe_kb.py --small --out /tmp/kb.csv                          # about a minute
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.data import ImageDataset, load_data, stratified_subset  # noqa: E402
from autokd.data.datasets import LabeledImages  # noqa: E402
from autokd.data.split import SubsetImages  # noqa: E402
from autokd.errors import AutokdError  # noqa: E402
from autokd.recipes import Recipe, default_recipe  # noqa: E402
from autokd.recipes.kb import (  # noqa: E402
    PAIR_COLUMNS,
    STARTER_KB,
    append_rows,
    make_row,
    read_kb,
    recipe_columns,
    row_key,
)
from autokd.recipes.recommend import candidate_grid, task_profile  # noqa: E402
from autokd.spaces import ArchSpec  # noqa: E402
from autokd.teachers import resolve_teacher  # noqa: E402
from autokd.train import TrainResult, build_from_spec, finetune_teacher, no_kd, train_student  # noqa: E402
from autokd.train.inputs import Inputs  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"
CIFAR, IMAGENETTE = SHARED / "data" / "cifar10-jpeg.zip", SHARED / "data" / "imagenette-160.zip"
TEACHER_WEIGHTS = SHARED / "teachers" / "cifar10_resnet56-4bfd9763.th"
PAIRS = {  # pair name -> (student family, spec)
    "r56-r8": ("cifar_resnet", ArchSpec.make("cifar_resnet", depths=(1, 1, 1), widths=(16, 32, 64), shortcut="A")),
    "r56-vit": ("vit", ArchSpec.make("vit", depth=4, embed_dim=192, heads=(3,) * 4, mlp_ratio=(2.0,) * 4,
                                     patch_size=4, pool="avg", head_dim=64)),
}
log = logging.getLogger("autokd")


@dataclass(frozen=True)
class Task:
    """How to make a task from a zip: train images (stratified), image size, and one change of the data."""

    name: str
    source: Path
    train: int
    img_size: int = 32
    change: str = "none"  # none | longtail | noisy | gray | animals | vehicles
    test: int = 2000


TASKS = [
    Task("c10-4k", CIFAR, 4000), Task("c10-1k", CIFAR, 1000), Task("c10-fewshot10", CIFAR, 100),
    Task("c10-longtail", CIFAR, 4000, change="longtail"), Task("c10-noisy30", CIFAR, 2000, change="noisy"),
    Task("c10-gray", CIFAR, 2000, change="gray"), Task("c10-animals", CIFAR, 2000, change="animals"),
    Task("c10-vehicles", CIFAR, 1600, change="vehicles"), Task("inette-32", IMAGENETTE, 2000),
    Task("inette-64", IMAGENETTE, 2000, img_size=64), Task("inette-fewshot20", IMAGENETTE, 200),
]
SMALL = [Task("c10-small", CIFAR, 200, test=200)]


class Relabeled(LabeledImages):
    """Images of another LabeledImages with new labels, optionally converted to grayscale (kept 3-channel)."""

    def __init__(self, base: LabeledImages, labels, gray: bool = False):
        super().__init__(labels, base.transform)
        self.base, self.gray = base, gray

    def open_image(self, index: int):
        image = self.base.open_image(index)
        return image.convert("L").convert("RGB") if self.gray else image


@functools.cache
def _load(source: Path) -> ImageDataset:
    return load_data(source)


def make_task(task: Task, seed: int = 0) -> ImageDataset:
    """The task's dataset: a stratified subset of the zip's train split, changed as `task.change` says."""
    data = replace(_load(task.source))  # a shallow copy: its splits are replaced below, never changed
    keep = {"animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
            "vehicles": ["airplane", "automobile", "ship", "truck"]}.get(task.change)
    if keep is not None:  # a class subset, labels renumbered
        codes = {data.classes.index(c): i for i, c in enumerate(keep)}
        for split in ("train", "test"):
            part = getattr(data, split)
            picked = [i for i, y in enumerate(part.labels) if y in codes]
            setattr(data, split, Relabeled(SubsetImages(part, picked), [codes[part.labels[i]] for i in picked]))
        data.classes = keep
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.train.labels)
    idx = stratified_subset(labels, task.train, seed)
    if task.change == "longtail":  # class c keeps a share 0.02^(c / (C - 1)) of its images: imbalance 50
        shares = 0.02 ** (np.arange(data.num_classes) / (data.num_classes - 1))
        idx = np.concatenate([idx[labels[idx] == c][: max(2, int(shares[c] * (labels[idx] == c).sum()))]
                              for c in range(data.num_classes)])
    train = SubsetImages(data.train, np.sort(idx))
    new_labels = list(train.labels)
    if task.change == "noisy":  # 30% of the train labels replaced by another class, uniformly
        for i in np.flatnonzero(rng.random(len(new_labels)) < 0.3):
            new_labels[i] = int((new_labels[i] + rng.integers(1, data.num_classes)) % data.num_classes)
    data.train = Relabeled(train, new_labels, gray=task.change == "gray")
    test = SubsetImages(data.test, stratified_subset(data.test.labels, min(task.test, len(data.test)), seed))
    data.test = Relabeled(test, test.labels, gray=task.change == "gray")
    return replace(data, name=task.name)


def teacher_for(task: Task, data: ImageDataset, runs: Path, args: argparse.Namespace):
    """ResNet-56 fine-tuned on the task (cross-entropy, `--finetune-epochs`), reused when already done."""
    folder = runs / task.name / "teacher"
    if not (folder / "results.json").is_file() or TrainResult.load(folder / "results.json").stopped is not None:
        torch.manual_seed(0)
        start = resolve_teacher("resnet56_cifar", data.num_classes, weights=TEACHER_WEIGHTS, img_size=task.img_size)
        recipe = Recipe.load("none").replace(epochs=args.finetune_epochs, lr=0.01, batch_size=args.batch_size)
        result = finetune_teacher(start, data, recipe, folder, device=args.device,
                                  resume=(folder / "last.pt").is_file(), progress=False)
        if result.stopped is not None:
            raise SystemExit(f"teacher fine-tuning stopped ({result.stopped}): run the same command again to resume")
    return resolve_teacher("resnet56_cifar", data.num_classes, weights=folder / "best.pt", img_size=task.img_size)


def train_one(spec: ArchSpec, teacher, data: ImageDataset, recipe: Recipe, folder: Path, seed: int,
              args: argparse.Namespace, img_size: int) -> tuple[float, str]:
    """Test top-1 of the student trained with `recipe` (no teacher for a no-KD recipe) and the run's status;
    reuses a finished run. A run whose loss became NaN/inf is 'diverged', at a constant prediction's accuracy
    on the stratified test split (100 / classes)."""
    if (folder / "results.json").is_file() and TrainResult.load(folder / "results.json").stopped is None:
        return TrainResult.load(folder / "results.json").top1, "done"
    diverged = (100.0 / data.num_classes, "diverged")
    if (folder / "diverged.txt").is_file():
        return diverged
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_from_spec(spec, data.num_classes, img_size)
    try:
        result = train_student(student, teacher if recipe.needs_teacher else None, data, recipe, folder,
                               device=args.device, resume=(folder / "last.pt").is_file(), seed=seed,
                               progress=False, inputs=Inputs.of(teacher), evaluate_teacher=False)
    except AutokdError as err:
        if "NaN or inf" not in str(err):
            raise
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "diverged.txt").write_text(f"{err}\n")
        return diverged
    if result.stopped is not None:
        raise SystemExit(f"stopped ({result.stopped}): run the same command again to resume")
    return result.top1, "done"


def schedule(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """The recipe at the build's epochs and batch; with `--teacher-cache`, the teacher's outputs come from the
    cache wherever the recipe allows it (no mixup/cutmix, no feature loss), shared by every run of a task."""
    recipe = recipe.with_epochs(args.epochs).replace(batch_size=args.batch_size)
    cacheable = recipe.mixup == 0 and recipe.cutmix == 0 and recipe.feature_loss is None
    return recipe.replace(teacher_cache=True) if args.teacher_cache and cacheable and recipe.needs_teacher else recipe


def build(args: argparse.Namespace) -> None:
    runs, out = Path(args.runs), Path(args.out)
    tasks = SMALL if args.small else [t for t in TASKS if not args.tasks or t.name in args.tasks]
    pairs = {k: v for k, v in PAIRS.items() if not args.pairs or k in args.pairs}
    done = set(read_kb(out, missing_ok=True)["key"])
    for task in tasks:
        data = make_task(task)
        teacher = teacher_for(task, data, runs, args)
        for pair_name, (family, spec) in pairs.items():
            grid = {rid: schedule(r, args) for rid, r in candidate_grid(teacher.family, family).items()
                    if not args.recipes or rid in args.recipes}
            with torch.random.fork_rng(devices=[]):
                probe = build_from_spec(spec, data.num_classes, task.img_size).model
            profile = task_profile(teacher, probe, family, data, task.img_size, device=args.device)
            pair = {k: profile[k] for k in PAIR_COLUMNS}
            for seed in range(args.seeds):
                todo = {rid: r for rid, r in grid.items()
                        if row_key(task.name, pair, recipe_columns(r, rid, rid)["recipe_json"], seed) not in done}
                if not todo:
                    continue
                base = schedule(no_kd(Recipe.load(default_recipe(family))), args)
                folder = runs / task.name / pair_name / str(seed)
                no_kd_acc, _ = train_one(spec, teacher, data, base, folder / "no_kd", seed, args, task.img_size)
                for rid, recipe in todo.items():
                    start = time.perf_counter()
                    acc, status = train_one(spec, teacher, data, recipe, folder / rid.replace(":", "_"), seed,
                                            args, task.img_size)
                    row = make_row(task.name, profile, pair, recipe_columns(recipe, rid, rid.split(":")[0]), acc,
                                   no_kd_acc, seed, status=status)
                    append_rows(out, [row])
                    done.add(row["key"])
                    print(f"{task.name} {pair_name} seed {seed} {rid}: {acc:.2f} {status} (no KD {no_kd_acc:.2f}), "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
    if args.published:
        print(f"published rows added: {append_rows(out, published_rows())}")


#: CIFAR-100 (../shared/reference/kd_losses_and_trainers.md 3.1-3.2): teacher -> student, T, S, {method: top-1}.
#: KD, DKD, DIST and KD+LS are the kd, dkd, dist and kd_ls presets at their 240-epoch mdistiller settings.
PUBLISHED = [
    ("resnet32x4", "resnet8x4", 79.42, 72.50, {"kd": 73.33, "dkd": 76.32, "dist": 76.31, "kd_ls": 76.62}),
    ("wrn40_2", "wrn16_2", 75.61, 73.26, {"kd": 74.92, "dkd": 76.23, "kd_ls": 76.11}),
    ("wrn40_2", "wrn40_1", 75.61, 71.98, {"kd": 73.54, "dkd": 74.81, "dist": 74.43, "kd_ls": 74.37}),
    ("vgg13", "vgg8", 74.64, 70.36, {"kd": 72.98, "dkd": 74.68, "kd_ls": 74.36}),
    ("resnet56", "resnet20", 72.34, 69.06, {"kd": 70.66, "dkd": 71.97, "dist": 71.75, "kd_ls": 71.43}),
    ("resnet110", "resnet32", 74.31, 71.14, {"kd": 73.08, "dkd": 74.11, "kd_ls": 74.17}),
    ("resnet32x4", "shufflenetv2", 79.42, 71.82, {"kd": 74.45, "dkd": 77.07, "dist": 77.35, "kd_ls": 75.56}),
    ("vgg13", "mobilenetv2", 74.64, 64.60, {"kd": 67.37, "dkd": 69.71, "kd_ls": 68.61}),
    ("resnet50", "mobilenetv2", 79.34, 64.60, {"kd": 67.35, "dkd": 70.35, "dist": 68.66}),
]


def published_rows() -> list[dict]:
    """The published CIFAR-100 rows, one task per teacher-student pair ("c100-pub:<teacher>-<student>"):
    student families mapped to autokd's (ShuffleNet, MobileNet -> mobilenet; the others -> cifar_resnet); MACs,
    params and the measured teacher features other than its accuracy are unknown (NaN)."""
    grid, rows = candidate_grid(), []
    for teacher, student, t_acc, s_acc, methods in PUBLISHED:
        family = "mobilenet" if student.startswith(("shuffle", "mobile")) else "cifar_resnet"
        task = {"num_classes": 100, "train_size": 50000, "resolution": 32, "class_balance": 1.0,
                "teacher_acc": t_acc / 100}
        pair = {"teacher_family": "cifar_resnet", "student_family": family, "pair_kind": "cnn->cnn",
                "teacher_macs": float("nan"), "student_macs": float("nan"), "teacher_params": float("nan"),
                "student_params": float("nan"), "macs_ratio": float("nan"), "params_ratio": float("nan")}
        for rid, acc in methods.items():
            rows.append(make_row(f"c100-pub:{teacher}-{student}", task, pair, recipe_columns(grid[rid], rid, rid),
                                 acc, s_acc, seed=0, source="published"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(STARTER_KB), help="the KB CSV (default: the starter KB that ships with autokd)")
    p.add_argument("--runs", default="runs/recipe_kb", help="run folders (resumable)")
    p.add_argument("--small", action="store_true", help="one 200-image task, one pair, two recipes, one epoch")
    p.add_argument("--tasks", type=lambda s: s.split(","), help=f"subset of {','.join(t.name for t in TASKS)}")
    p.add_argument("--pairs", type=lambda s: s.split(","), help=f"subset of {','.join(PAIRS)}")
    p.add_argument("--recipes", type=lambda s: s.split(","), help="subset of the grid's recipe ids")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--teacher-cache", action="store_true",
                   help="teacher outputs from autokd's teacher cache (top-k fp16 probabilities), computed once per "
                        "task and view for every recipe that allows it; the rows do not depend on it")
    p.add_argument("--published", action="store_true", help="add the published CIFAR-100 rows (source=published)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; --small: 1)")
    args = p.parse_args()
    if args.small:
        args.pairs, args.recipes = ["r56-r8"], args.recipes or ["dist", "kd:T=2"]
        args.epochs, args.finetune_epochs, args.seeds, args.batch_size = 1, 1, 1, 32
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    build(args)


if __name__ == "__main__":
    main()
