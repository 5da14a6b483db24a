"""Images per second of `autokd train` end to end (JPEG zip to trained student) against an equivalent timm loop.

One run, per teacher -> student pair, on the same images, batch, optimiser, precision and memory format:
Every figure is images/s from the second epoch on (the first pays one-off costs on both sides).
- pipeline: the input pipeline alone, timm's loader (decodes every JPEG every epoch) against autokd's
  (decoded once into a memory-mapped file, augmented by the same timm transforms).
- timm: timm's loader and transforms + `timm.task.LogitDistillationTask` + timm's optimiser factory.
- autokd live: `train_student` with a live teacher (the images/s it reports: its epoch loops, data included),
  with the recipe's `standard` augmentation (timm's PIL pipeline) and, on small images, `tensor` (the same
  augmentation as tensor ops on the whole batch).
- autokd cache: `train_student` of a second student on the teacher cache that the first student filled
  (what every later student, recipe or `--refine` rung of a search sees): no teacher forward.
- K together: `train_students` with K students on one teacher pass; student-images/s = K x its images/s,
  against K x the single student's, live and on the cache.

    python benchmarks/training/bench_train_e2e.py            # CPU: ResNet-56 -> CIFAR ResNet on the CIFAR-10 JPEG zip
    python benchmarks/training/bench_train_e2e.py --gpu      # GPU: ViT-B -> DeiT-Ti, ResNet-50 -> ResNet-18, 224 px
    python benchmarks/training/bench_train_e2e.py --small    # a seconds-long run on a tiny pair (what the test runs)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from autokd.data import load_data, subset_data  # noqa: E402
from autokd.data.pixels import decode_once  # noqa: E402
from autokd.recipes import Recipe  # noqa: E402
from autokd.spaces import ArchSpec  # noqa: E402
from autokd.teachers import resolve_teacher  # noqa: E402
from autokd.train import Inputs, Student, build_from_spec, train_students  # noqa: E402
from autokd.train.distributed import DistInfo  # noqa: E402
from autokd.train.inputs import TrainData  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"
CIFAR = SHARED / "data" / "cifar10-jpeg.zip"
IMAGENETTE = SHARED / "data" / "imagenette-160.zip"
RESNET56 = SHARED / "teachers" / "cifar10_resnet56-4bfd9763.th"
SMALL_SPEC = '{"genes": {"depths": [1, 1, 1], "shortcut": "A", "widths": [16, 16, 32]}, "space": "cifar_resnet"}'
CPU_SPEC = '{"genes": {"depths": [1, 1, 1], "shortcut": "A", "widths": [16, 32, 64]}, "space": "cifar_resnet"}'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--small", action="store_true", help="a tiny student, few images (seconds)")
    mode.add_argument("--gpu", action="store_true", help="ViT-B -> DeiT-Ti and ResNet-50 -> ResNet-18 at 224 px")
    parser.add_argument("--images", type=int, default=None, help="train images (default 2000; 256 --small)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (CPU), 256 (GPU)")
    parser.add_argument("--k", default="2,4", help="students trained together")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch = args.batch_size or (256 if args.gpu else (32 if args.small else 64))
    images = args.images or (256 if args.small else 2000 if not args.gpu else 5000)
    ks = [int(k) for k in args.k.split(",") if k]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in _pairs(args):
            rows += bench_pair(pair, images, batch, args.epochs, ks, device, Path(tmp))
    name = "cuda:" + torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x {torch.get_num_threads()}"
    print_table(f"End-to-end KD training, batch {batch}, {images} images, {args.epochs} epochs, {name}",
                ["pair", "path", "img/s", "x timm", "x 1 student"],
                [[r["pair"], r["path"], r["images_per_second"], r.get("ratio_to_timm", float("nan")),
                  r.get("ratio_to_k_singles", float("nan"))] for r in rows],
                notes=["img/s of K together counts every student's images (K x the run's images/s)",
                       "x 1 student: K-together student-images/s over K x one student's (goal >= 0.8)"])
    result = {"machine": machine(), "device": name, "batch_size": batch, "images": images, "epochs": args.epochs,
              "threads": torch.get_num_threads(), "rows": rows}
    default = "train_e2e_small.json" if args.small else ("train_e2e_gpu.json" if args.gpu else "train_e2e.json")
    print(f"wrote {write_json(result, args.json or RESULTS_DIR / default)}")
    return 0


def _pairs(args) -> list[dict[str, Any]]:
    if args.gpu:
        return [dict(name="vit_b->deit_t", teacher="vit_base_patch16_224", student="deit_tiny_patch16_224",
                     data=IMAGENETTE, recipe="kd_adamw", weights=None),
                dict(name="resnet50->resnet18", teacher="resnet50", student="resnet18", data=IMAGENETTE,
                     recipe="kd", weights=None)]
    spec = SMALL_SPEC if args.small else CPU_SPEC
    return [dict(name=f"resnet56_cifar->{ArchSpec.from_json(spec)}", teacher="resnet56_cifar", student=spec,
                 data=CIFAR, recipe="kd", weights=RESNET56)]


def _student(pair: dict[str, Any], num_classes: int, img: int, seed: int) -> Student:
    torch.manual_seed(seed)
    if pair["student"].startswith("{"):
        return build_from_spec(ArchSpec.from_json(pair["student"]), num_classes, img)
    import timm

    return Student(timm.create_model(pair["student"], num_classes=num_classes), pair["student"], img_size=img)


def bench_pair(pair: dict[str, Any], images: int, batch: int, epochs: int, ks: list[int], device: torch.device,
               tmp: Path) -> list[dict[str, Any]]:
    data = subset_data(load_data(pair["data"]), images, 500, seed=0)
    teacher = resolve_teacher(pair["teacher"], data.num_classes, weights=pair["weights"])
    if pair["weights"] is None:  # throughput does not depend on the weights
        teacher.pretrained = teacher.head_trained = True
    recipe = Recipe.load(pair["recipe"]).replace(epochs=epochs, batch_size=batch, augmentation="standard",
                                                 mixup=0.0, cutmix=0.0, warmup_epochs=0.0)
    img = teacher.img_size
    info = DistInfo(0, 1, 0, device)
    workers = 0 if device.type == "cpu" else 8
    rows = []

    def add(path: str, ips: float, **extra: Any) -> None:
        rows.append({"pair": pair["name"], "path": path, "images_per_second": ips, **extra})
        print(f"{pair['name']:40s} {path:28s} {ips:10.1f} img/s", flush=True)

    augs = ["standard"] + (["tensor"] if decode_once(data, tmp / "pixels") is not None else [])
    add("pipeline timm", _timm_pipeline(data, recipe, teacher, batch, workers, device))
    for aug in augs:
        add(f"pipeline autokd {aug}", _autokd_pipeline(data, recipe.replace(augmentation=aug), teacher, info,
                                                       batch, workers, tmp))
    add("timm live", _timm_loop(pair, data, recipe, teacher, batch, epochs, workers, device))
    common = dict(device=str(device), num_workers=workers, progress=False, cache_dir=tmp / "cache",
                  evaluate_teacher=False, heldout=0)
    n = 0

    def run(k: int, aug: str, cache: bool) -> float:
        nonlocal n
        students = [_student(pair, data.num_classes, img, seed=100 + n + i) for i in range(k)]
        outs = [tmp / f"run{n}-{i}" for i in range(k)]
        n += 1
        r = recipe.replace(augmentation=aug, teacher_cache=cache)
        return _steady(train_students(students, teacher, data, r, outs, **common)[0].history)

    single = {}
    for aug in augs:
        single[aug, False] = run(1, aug, False)
        add(f"autokd {aug} live", single[aug, False])
        add(f"autokd {aug} cache (filling)", run(1, aug, True))
        single[aug, True] = run(1, aug, True)
        add(f"autokd {aug} cache (warm)", single[aug, True])
    aug = augs[-1]
    for k in ks:
        for cache in (False, True):
            ips = k * run(k, aug, cache)
            add(f"{k} together {aug} {'cache (warm)' if cache else 'live'}", ips, k=k,
                ratio_to_k_singles=ips / (k * single[aug, cache]))
    base = next(r["images_per_second"] for r in rows if r["path"] == "timm live")
    pipe = next(r["images_per_second"] for r in rows if r["path"] == "pipeline timm")
    for r in rows:
        if r.get("k") is None:
            r["ratio_to_timm"] = r["images_per_second"] / (pipe if r["path"].startswith("pipeline") else base)
    return rows


def _steady(history: list[dict[str, Any]]) -> float:
    """Images/s from the second epoch on (the first also pays one-off costs: decoding, thread pools)."""
    rates = [h["images_per_second"] for h in history[1:]] or [history[0]["images_per_second"]]
    return len(rates) / sum(1 / r for r in rates)


def _timm_loader(data, recipe: Recipe, teacher, batch: int, workers: int, device: torch.device):
    """timm's own train loader and transforms over the same images (a JPEG decoded at every read)."""
    from timm.data import create_loader

    i = Inputs.of(teacher)
    return create_loader(data.train, input_size=(3, i.img_size, i.img_size), batch_size=batch, is_training=True,
                         use_prefetcher=False, num_workers=workers, mean=i.mean, std=i.std,
                         interpolation=i.interpolation, scale=(0.5, 1.0) if i.img_size <= 64 else None,
                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def _timm_pipeline(data, recipe, teacher, batch, workers, device) -> float:
    loader = _timm_loader(data, recipe, teacher, batch, workers, device)
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def _autokd_pipeline(data, recipe, teacher, info, batch, workers, tmp: Path) -> float:
    """autokd's loader over decoded rows, and the batch augmentation where the recipe asks for it."""
    decoded = decode_once(data, tmp / "pixels") or data
    loaders = TrainData(decoded, recipe, Inputs.of(teacher), info, seed=0, heldout=0, num_workers=workers,
                        cuda=info.device.type == "cuda")
    for epoch in range(2):  # the second epoch reads decoded rows: what every epoch but the first sees
        loaders.sampler.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for x, _, _, seeds in loaders.train_loader:
            if loaders.augment is not None:
                x = loaders.augment(x.to(info.device), seeds.numpy())
            seen += len(x)
    return seen / (time.perf_counter() - start)


def _timm_loop(pair, data, recipe: Recipe, teacher, batch: int, epochs: int, workers: int,
               device: torch.device) -> float:
    """timm's loader + LogitDistillationTask + create_optimizer_v2, at the recipe's optimiser settings, bf16
    autocast and channels_last on a GPU as its train.py runs them."""
    from timm.optim import create_optimizer_v2
    from timm.task import DistillationTeacher, LogitDistillationTask

    cuda = device.type == "cuda"
    student = _student(pair, data.num_classes, teacher.img_size, seed=99).model.to(device)
    teacher_model = teacher.model.to(device).eval()
    if cuda:
        student = student.to(memory_format=torch.channels_last)
        teacher_model = teacher_model.to(memory_format=torch.channels_last)
    norm = {"mean": tuple(teacher.mean), "std": tuple(teacher.std)}  # the same inputs: no re-normalising
    for model in (student, teacher_model):
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **norm}
    task = LogitDistillationTask(student, DistillationTeacher(teacher_model, device=device),
                                 criterion=nn.CrossEntropyLoss(), task_loss_weight=0.5, distill_loss_weight=0.5,
                                 temperature=4.0, device=device, verbose=False)
    task.train()
    r = recipe
    kwargs: dict[str, Any] = {"betas": (r.momentum, 0.999)} if r.optimizer == "adamw" else {"momentum": r.momentum}
    if cuda:
        kwargs["fused"] = True
    optimizer = create_optimizer_v2(student, opt="adamw" if r.optimizer == "adamw" else "momentum", lr=r.lr,
                                    weight_decay=r.weight_decay, **kwargs)
    loader = _timm_loader(data, recipe, teacher, batch, workers, device)
    rates = []
    for _ in range(epochs):
        seen = 0
        start = time.perf_counter()
        for x, y in loader:
            if len(x) < batch:  # autokd drops the last partial batch too
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = task(x, y)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x)
        if cuda:
            torch.cuda.synchronize()
        rates.append({"images_per_second": seen / (time.perf_counter() - start)})
    return _steady(rates)


if __name__ == "__main__":
    raise SystemExit(main())
