"""Images per second of one KD training step: autokd's trainer against timm's own distillation path.

Per teacher -> student pair, in one process, on the same device-resident batch (the input pipeline is left out
of every path alike):
- timm: `timm.task.LogitDistillationTask` stepped as timm's train.py does at its fast settings (bf16
  autocast, channels_last, AdamW); `timm+compile` adds `task.compile()` (student and teacher).
- autokd live: `autokd.train.Trainer.step`, the step `train_student` runs (teacher under inference_mode,
  bf16 autocast, channels_last, fused AdamW); `autokd live+compile` compiles the teacher and the student step.
- autokd cache: the same step with `teacher_cache` on and the batch's top-k teacher rows already cached (what
  every epoch after the first, and every later student or recipe, sees): no teacher forward at all.
MFU is the model FLOPs each path executes (2 x fvcore MACs: teacher forward + 3 x student forward, no teacher
with the cache) per second, over the GPU's dense bf16 peak (datasheet) or the measured matmul peak.

    python benchmarks/training/bench_train_throughput.py              # GPU: vit_b -> deit_t and resnet50 -> resnet18
    python benchmarks/training/bench_train_throughput.py --compile    # also the torch.compile paths
    python benchmarks/training/bench_train_throughput.py --small      # CPU-sized models at 64 px (what the test runs)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from autokd.cost import count_macs  # noqa: E402
from autokd.data.datasets import ArrayImages, ImageDataset  # noqa: E402
from autokd.recipes import Recipe  # noqa: E402
from autokd.teachers import Teacher, resolve_teacher  # noqa: E402
from autokd.train import Batch, Student, Trainer, TrainOptions  # noqa: E402
from autokd.train.distributed import DistInfo  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from benchmarks.common import RESULTS_DIR, machine, matmul_peak, print_table, write_json  # noqa: E402

PAIRS = [("vit_base_patch16_224", "deit_tiny_patch16_224", 224), ("resnet50", "resnet18", 224)]
SMALL_PAIRS = [("test_vit2", "test_vit", 64), ("test_resnet", "test_convnext", 64)]
# dense bf16 tensor-core peak, FLOP/s, from the datasheets (no sparsity)
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12,
         "L4": 121e12, "A10": 125e12}
NUM_CLASSES = 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny timm test models at 64 px (CPU-sized)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (8 with --small)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 5, 1 with --small)")
    parser.add_argument("--compile", action="store_true",
                        help="also time timm+compile and autokd live+compile")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None,
                        help="default benchmarks/results/train_throughput[_small].json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    pairs = SMALL_PAIRS if args.small else PAIRS
    batch = args.batch_size or (8 if args.small else 256)
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 5)
    peak, peak_source = _peak(device)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for teacher_name, student_name, img in pairs:
            rows += bench_pair(teacher_name, student_name, img, batch, args.steps, warmup, device,
                               args.compile, Path(tmp), peak)
    title = f"KD training step, batch {batch}, {device.type}" + (f" ({torch.cuda.get_device_name()})"
                                                                  if device.type == "cuda" else "")
    columns = ["pair", "path", "img/s", "ms/step", "x timm", "x timm+compile", "MFU %", "peak GB"]
    table = [[r["pair"], r["path"], r["images_per_second"], r["step_ms"], r["ratio_to_timm"],
              r.get("ratio_to_timm_compile", float("nan")), 100 * r["mfu"] if r["mfu"] is not None else "-",
              r["peak_memory_gb"]] for r in rows]
    print_table(title, columns, table, notes=[
        f"MFU against {peak_source}; model FLOPs = 2 x fvcore MACs (teacher forward + 3 x student forward; "
        "no teacher with the cache); the input pipeline is left out of every path"])
    result = {"machine": machine(), "device": str(device), "batch_size": batch, "steps": args.steps,
              "peak_flops": peak, "peak_source": peak_source, "rows": rows}
    path = write_json(result, args.json or RESULTS_DIR / ("train_throughput_small.json" if args.small
                                                          else "train_throughput.json"))
    print(f"wrote {path}")
    return 0


def bench_pair(teacher_name: str, student_name: str, img: int, batch: int, steps: int, warmup: int,
               device: torch.device, compile_: bool, tmp: Path, peak: float | None) -> list[dict[str, Any]]:
    pair = f"{teacher_name}->{student_name}"
    teacher = resolve_teacher(teacher_name, NUM_CLASSES, img_size=img)
    teacher.pretrained = teacher.head_trained = True  # speed does not depend on the weights
    t_macs = count_macs(teacher.model, img)
    s_macs = count_macs(_student(student_name, img), img)
    torch.manual_seed(0)
    images = torch.randn(batch, 3, img, img, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    args = (teacher, student_name, img, images, labels, device)
    paths = [("timm", lambda: _timm_step(*args, compile_=False))]
    if compile_:
        paths.append(("timm+compile", lambda: _timm_step(*args, compile_=True)))
    paths.append(("autokd live", lambda: _autokd_step(*args, tmp, cache=False, compile_=False)))
    if compile_:
        paths.append(("autokd live+compile", lambda: _autokd_step(*args, tmp, cache=False, compile_=True)))
    paths.append(("autokd cache", lambda: _autokd_step(*args, tmp, cache=True, compile_=False)))
    steps_by_path = {name: make() for name, make in paths}
    seconds_by_path, memory = _time_interleaved(steps_by_path, steps, warmup, device)
    rows = []
    for name in steps_by_path:
        seconds = seconds_by_path[name]
        flops = 2 * (3 * s_macs + (0 if "cache" in name else t_macs)) * batch
        rows.append({"pair": pair, "path": name, "images_per_second": batch / seconds,
                     "step_ms": 1e3 * seconds, "mfu": flops / seconds / peak if peak else None,
                     "peak_memory_gb": memory,
                     "teacher_gmacs": t_macs / 1e9, "student_gmacs": s_macs / 1e9,
                     "teacher_share_of_flops": t_macs / (t_macs + 3 * s_macs)})
        print(f"{pair:40s} {name:22s} {batch / seconds:10.1f} img/s", flush=True)
    del steps_by_path
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    base = next(r["images_per_second"] for r in rows if r["path"] == "timm")
    compiled = next((r["images_per_second"] for r in rows if r["path"] == "timm+compile"), None)
    for r in rows:
        r["ratio_to_timm"] = r["images_per_second"] / base
        if compiled:
            r["ratio_to_timm_compile"] = r["images_per_second"] / compiled
    return rows


def _student(name: str, img: int) -> nn.Module:
    torch.manual_seed(0)
    cfg = timm.models.get_pretrained_cfg(name)
    kwargs = {"img_size": img} if cfg is not None and cfg.fixed_input_size else {}
    return timm.create_model(name, num_classes=NUM_CLASSES, **kwargs)


def _timm_step(teacher: Teacher, student_name: str, img: int, images, labels, device, *, compile_: bool):
    """timm's distillation step as its train.py runs it (--amp --amp-dtype bfloat16 --channels-last)."""
    from timm.optim import create_optimizer_v2
    from timm.task import DistillationTeacher, LogitDistillationTask

    student = _student(student_name, img).to(device)
    teacher_model = teacher.model.to(device).eval()
    if device.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
        teacher_model = teacher_model.to(memory_format=torch.channels_last)
    task = LogitDistillationTask(student, DistillationTeacher(teacher_model, device=device),
                                 criterion=nn.CrossEntropyLoss(), task_loss_weight=0.5,
                                 distill_loss_weight=0.5, temperature=1.0, device=device, verbose=False)
    task.train()
    if compile_:
        task.compile()
    optimizer = create_optimizer_v2(student, opt="adamw", lr=5e-4, weight_decay=0.05)
    x = images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = task(x, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _autokd_step(teacher: Teacher, student_name: str, img: int, images, labels, device, tmp: Path, *,
                 cache: bool, compile_: bool):
    """`Trainer.step` on the batch, with the recipe `kd_adamw` (mixup off, as in the timm path)."""
    n = max(2 * images.shape[0], 16)
    pixels = np.random.default_rng(0).integers(0, 255, (n, img, img, 3), dtype=np.uint8)
    targets = np.random.default_rng(1).integers(0, NUM_CLASSES, n)
    data = ImageDataset("random", [str(c) for c in range(NUM_CLASSES)], ArrayImages(pixels, targets), None,
                        is_real=False)
    recipe = Recipe.load("kd_adamw").replace(batch_size=images.shape[0], mixup=0.0, cutmix=0.0,
                                             teacher_cache=cache)
    out = Path(tempfile.mkdtemp(dir=tmp))
    options = TrainOptions(num_workers=0, progress=False, compile_teacher=compile_, compile_student=compile_,
                           cache_dir=tmp / "cache")
    info = DistInfo(0, 1, 0, device)
    student = Student(_student(student_name, img), student_name)
    trainer = Trainer(student, teacher, data, recipe, out, info, options)
    trainer.students[0].trainable.train()
    if cache:
        trainer.teacher_side.cache.prepare(0, create=True)
    x = images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images
    b = Batch(x, labels, np.arange(images.shape[0]), np.arange(images.shape[0]))
    return lambda: trainer.step(b)


def _time_interleaved(steps_by_path: dict[str, Any], steps: int, warmup: int, device: torch.device,
                      rounds: int = 5) -> tuple[dict[str, float], float]:
    """Median seconds per step of each path over `rounds` rounds that time every path in turn (so a load
    that comes and goes on a shared machine hits every path alike), and the peak GPU memory in GB."""
    for step in steps_by_path.values():
        _time(step, 1, warmup, device)
    per_round = max(1, steps // rounds)
    times: dict[str, list[float]] = {name: [] for name in steps_by_path}
    memory = 0.0
    for _ in range(rounds):
        for name, step in steps_by_path.items():
            seconds, peak = _time(step, per_round, 0, device)
            times[name].append(seconds)
            memory = max(memory, peak)
    return {name: float(np.median(t)) for name, t in times.items()}, memory


def _time(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Mean seconds per step over `steps` after `warmup` steps, and the peak GPU memory in GB."""
    for _ in range(warmup):  # the first step also fills the cache
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    memory = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else 0.0
    return seconds, memory


def _peak(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return matmul_peak(device, seconds=0.5), "the measured fp32 matmul peak of this CPU"
    name = torch.cuda.get_device_name()
    for key, value in PEAKS.items():
        if key in name:
            return value, f"the {key} datasheet dense bf16 peak ({value / 1e12:.0f} TFLOP/s)"
    return matmul_peak(device, torch.bfloat16), "the measured bf16 matmul peak"


if __name__ == "__main__":
    raise SystemExit(main())
