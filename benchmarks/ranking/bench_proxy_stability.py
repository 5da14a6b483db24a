"""Does a proxy rank the architectures, or the scoring batch? Kendall tau between two fixed batches.

For each setting (teacher, search space, image size, budget), draws `--students` random specs under the budget
(exact MACs), scores each on two different fixed, class-balanced scoring batches from the held-out part of the
data, and reports per score the Kendall tau between the two rankings (>= 0.8 passes: autokd's rule for a
default score), the CPU seconds per candidate, and the same for the rank aggregates of
`bench_proxy_quality.COMBINATIONS` (each ranked within the sample on each batch). Teacher-free scores do not
depend on the teacher: a setting whose students were scored already (same space, size, budget, data) reuses them
and rescores only the teacher-aware ones (DisWOT).

    python benchmarks/ranking/bench_proxy_stability.py --data ../shared/data/cifar10-jpeg.zip --students 200 \
        --setting "resnet56_cifar:cifar_resnet:50M" --setting "resnet56_cifar:vit:50M"
A setting is TEACHER:SPACE:BUDGET[:IMG_SIZE][:trained]; the teacher is scored as a random copy unless ':trained'.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402
from benchmarks.ranking.bench_proxy_quality import COMBINATIONS, add_combinations, kendall_tau, oriented_column  # noqa: E402

PASS_TAU = 0.8
#: proxies whose score depends on the teacher (rescored per teacher)
TEACHER_AWARE = ("diswot",)
DEFAULT_SETTINGS = ("resnet56_cifar:cifar_resnet:50M", "resnet56_cifar:vit:50M")


def parse_setting(text: str) -> dict:
    parts = text.split(":")
    if len(parts) < 3:
        raise SystemExit(f"cannot read setting {text!r}: use TEACHER:SPACE:BUDGET[:IMG_SIZE][:trained]")
    extra = parts[3:]
    trained = "trained" in extra
    sizes = [int(x) for x in extra if x.isdigit()]
    return {"teacher": parts[0], "space": parts[1], "budget": parts[2], "img_size": sizes[0] if sizes else None,
            "score_teacher": "trained" if trained else "random", "name": text}


def sample_specs(ev, space_name: str, count: int, seed: int, attempts: int = 50_000) -> list:
    """`count` distinct random specs of the space under the evaluator's budget (exact MACs)."""
    space = ev.spaces[space_name]
    rng, specs, seen = random.Random(seed), [], set()
    for _ in range(attempts):
        spec = space.sample(rng)
        if spec not in seen and ev.fits(spec):
            specs.append(spec)
        seen.add(spec)
        if len(specs) == count:
            return specs
    raise SystemExit(f"found only {len(specs)} distinct specs of {space_name} under the budget")


def score_on_each_batch(ctx, specs: list, names: list[str]) -> tuple[list[pd.DataFrame], dict[str, float]]:
    """One frame per scoring batch (a row per spec, a column per score), and each proxy's CPU s per spec."""
    from autokd.errors import AutokdError
    from autokd.proxies import score_candidate

    ev = ctx.evaluator
    rows: list[list[dict]] = [[] for _ in ev.batches]
    seconds = {n: 0.0 for n in names}
    for spec in specs:
        model, cost = ev.build(spec).to(ev.device), ev.cost(spec)
        for b, (batch, ref) in enumerate(zip(ev.batches, ev.references)):
            row = {"spec": spec.to_json(), "params": float(cost.params), "macs": float(cost.macs)}
            for name in names:
                start = time.process_time()
                with contextlib.suppress(AutokdError):  # cannot read this model: nan, counted in "n"
                    row.update(score_candidate(model, batch, ref, [name], cost=cost))
                seconds[name] += (time.process_time() - start) / len(ev.batches)
            rows[b].append(row)
    return [pd.DataFrame(r) for r in rows], {n: s / len(specs) for n, s in seconds.items()}


def stability(frames: list[pd.DataFrame], keys: list[str]) -> dict[str, dict]:
    """Per score: Kendall tau between its rankings on the two batches, over the specs both could score."""
    a, b = (add_combinations(f) for f in frames)
    out = {}
    for key in keys:
        if key not in a.columns or key not in b.columns:
            continue
        x, y = oriented_column(a, key), oriented_column(b, key)
        ok = ~(np.isnan(x) | np.isnan(y))
        tau = kendall_tau(x[ok], y[ok]) if ok.sum() > 1 else float("nan")
        constant = ok.sum() > 1 and np.isnan(tau) and np.ptp(x[ok]) == 0  # the same value for every spec
        out[key] = {"tau": 1.0 if constant else tau, "n": int(ok.sum()), "pass": bool(constant or tau >= PASS_TAU)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", action="append", help="TEACHER:SPACE:BUDGET[:IMG_SIZE][:trained] (repeatable)")
    p.add_argument("--data", help="the data for the scoring batches (default: autokd's synthetic demo data)")
    p.add_argument("--students", type=int, default=200)
    p.add_argument("--proxies", type=lambda v: v.split(","), default=["all"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=str(RESULTS_DIR / "proxy_stability.json"))
    args = p.parse_args(argv)

    import torch

    from autokd.proxies import PROXIES
    from autokd.search import SearchConfig, prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(PROXIES) if "all" in args.proxies else args.proxies
    results, shared = {}, {}
    for setting in map(parse_setting, args.setting or DEFAULT_SETTINGS):
        config = SearchConfig(teacher=setting["teacher"], budget=setting["budget"], data=args.data,
                              spaces=(setting["space"],), img_size=setting["img_size"], batch_size=args.batch_size,
                              score_batches=2, proxies=tuple(names), seed=args.seed,
                              score_teacher=setting["score_teacher"], device=args.device)
        ctx = prepare(config)
        key = (setting["space"], ctx.teacher.img_size, ctx.budget.macs)
        start = time.perf_counter()
        if key in shared:  # the students and their teacher-free scores are the same: rescore the teacher's only
            specs, frames, seconds = shared[key]
            aware = [n for n in names if n in TEACHER_AWARE]
            new, new_seconds = score_on_each_batch(ctx, specs, aware)
            drop = [k for n in aware for k in PROXIES[n].outputs]
            frames = [f.drop(columns=drop, errors="ignore").assign(**{c: g[c] for c in g.columns if c in drop})
                      for f, g in zip(frames, new)]
            seconds = {**seconds, **new_seconds}
        else:
            specs = sample_specs(ctx.evaluator, setting["space"], args.students, args.seed)
            frames, seconds = score_on_each_batch(ctx, specs, names)
            shared[key] = (specs, frames, seconds)
        keys = [k for n in names for k in PROXIES[n].outputs if k in frames[0].columns]
        keys = list(dict.fromkeys(keys)) + [c for c in COMBINATIONS if c not in keys]
        table = stability(frames, keys)
        results[setting["name"]] = {
            "teacher": ctx.teacher.name, "pretrained": ctx.teacher.pretrained,
            "score_teacher": setting["score_teacher"],
            "space": setting["space"], "img_size": ctx.teacher.img_size, "budget_macs": ctx.budget.macs,
            "students": len(specs), "batch_size": int(ctx.evaluator.batch.size), "stability": table,
            "cpu_seconds_per_candidate": seconds, "wall_seconds": time.perf_counter() - start,
        }
        rows = [[k, f"{v['tau']:+.3f}", v["n"], "yes" if v["pass"] else "NO",
                 f"{seconds[n]:.3f}" if (n := _proxy_of(k, PROXIES)) in seconds else "-"]
                for k, v in table.items()]
        print_table(f"stability between two scoring batches: {setting['name']} ({ctx.teacher.name}, "
                    f"{'trained' if ctx.teacher.pretrained and setting['score_teacher'] == 'trained' else 'random'} "
                    f"teacher, {len(specs)} students, {ctx.teacher.img_size} px)",
                    ["score", "tau(batch A, batch B)", "n", f">= {PASS_TAU}", "CPU s/cand"], rows,
                    [f"data: {args.data or 'synthetic demo data'}; batch {ctx.evaluator.batch.size}"])
    result = {"settings": results, "pass_tau": PASS_TAU, "args": vars(args), "machine": machine()}
    print(f"wrote {write_json(result, Path(args.out))}")
    return result


def _proxy_of(key: str, proxies: dict) -> str | None:
    return next((name for name, proxy in proxies.items() if key in proxy.outputs), None)


if __name__ == "__main__":
    main()
