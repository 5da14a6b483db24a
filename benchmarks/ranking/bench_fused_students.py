"""K students of one architecture stepped one after another, or fused into one `torch.func.vmap` step.

Students that share a shape can be stacked (`torch.func.stack_module_state`) and run as one batched
module: one kernel per layer for all K instead of K. This measures whether that pays, per K, on the device
at hand, for the forward + backward + AdamW step of KD on one shared batch of teacher logits.
BatchNorm's running statistics cannot update under vmap, so the comparison uses LayerNorm students (ViTs).

    python benchmarks/ranking/bench_fused_students.py --device cpu --threads 1
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.spaces import ArchSpec  # noqa: E402
from autokd.train import build_from_spec  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402

SPEC = ('{"genes": {"depth": 4, "embed_dim": 96, "head_dim": 32, "heads": [3, 3, 3, 3], '
        '"mlp_ratio": [2.0, 2.0, 2.0, 2.0], "patch_size": 4, "pool": "avg"}, "space": "vit"}')


def kd_loss(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    target = F.log_softmax(teacher, -1)  # KL written out: aten::kl_div has no vmap batching rule
    kl = (target.exp() * (target - F.log_softmax(logits, -1))).sum(-1).mean()
    return 0.5 * F.cross_entropy(logits, labels) + 0.5 * kl


def looped(models: list[torch.nn.Module]):
    optims = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]

    def step(x, t, y):
        for model, opt in zip(models, optims):
            loss = kd_loss(model(x), t, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def fused(models: list[torch.nn.Module]):
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.AdamW(params.values(), lr=1e-3)  # elementwise: K AdamWs in one

    def one(p, b, x, t, y):
        return kd_loss(functional_call(base, (p, b), (x,)), t, y)

    batched = vmap(one, in_dims=(0, 0, None, None, None), randomness="different")

    def step(x, t, y):
        loss = batched(params, buffers, x, t, y).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="1,2,4,8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--spec", default=SPEC)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "fused_students.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = ArchSpec.from_json(args.spec)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    t = torch.randn(args.batch_size, 10, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    rows: list[dict[str, Any]] = []
    for k in [int(v) for v in args.k.split(",")]:
        models = [build_from_spec(spec, 10, 32).model.to(device) for _ in range(k)]
        seconds = {}
        for name, make in (("looped", looped), ("vmap", fused)):
            step = make([copy.deepcopy(m) for m in models])
            step(x, t, y)  # warm-up
            best = float("inf")
            for _ in range(3):  # best of three rounds of `steps`
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(x, t, y)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, (time.perf_counter() - start) / args.steps)
            seconds[name] = best
        rows.append({"k": k, "looped_student_images_per_second": k * args.batch_size / seconds["looped"],
                     "vmap_student_images_per_second": k * args.batch_size / seconds["vmap"],
                     "vmap_speedup": seconds["looped"] / seconds["vmap"]})
    print_table(f"K {spec} students on one batch of {args.batch_size}, {device}, {torch.get_num_threads()} threads",
                ["K", "looped student-img/s", "vmap student-img/s", "vmap / looped"],
                [[r["k"], r["looped_student_images_per_second"], r["vmap_student_images_per_second"],
                  r["vmap_speedup"]] for r in rows])
    print(f"wrote {write_json({'machine': machine(), 'spec': args.spec, 'rows': rows}, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
