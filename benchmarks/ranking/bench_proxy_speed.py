"""Candidates scored per second: autokd's scoring against the per-candidate procedure of DisWOT's public code.

(a) autokd, once per objective of `--objectives` (default: DisWOT and the search's default objective): the
    teacher reference (and, for a rank aggregate, the fixed reference sample) is computed once per search; per
    candidate the search builds the model with its seeded init, counts its MACs exactly (fvcore), and scores it,
    all through `CandidateEvaluator`, the object the search itself uses. The table also gives the wall time of
    a 1,000-candidate search with each objective: set-up + 1,000 candidates at the measured rate.
(b) DisWOT's public code, per candidate: a fresh batch (decode + transform), a teacher forward AND backward
    (classifier-weight gradient of cross-entropy from autograd), the student forward and backward, then the same
    M_r / M_s distances (autokd.proxies). This is the baseline, kept here and not in the library.

    python benchmarks/ranking/bench_proxy_speed.py                      # vit_b teacher, 224 px, batch 32, 1 GMAC, vit
    python benchmarks/ranking/bench_proxy_speed.py --teacher resnet20_cifar --img-size 32 --budget 25M \
        --space cifar_resnet --candidates 5 --baseline-candidates 2     # a quick run
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.cost import count_macs
from autokd.data import split_indices
from autokd.proxies import ForwardOutputs, TeacherReference, diswot_distances, relation_gram
from autokd.proxies.aggregate import DEFAULT_OBJECTIVE
from autokd.proxies.base import forward_outputs, scoring_mode
from autokd.search import SearchConfig, prepare
from autokd.search.evaluate import ESTIMATE_TOLERANCE, CandidateEvaluator, spec_seed
from autokd.spaces import ArchSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from benchmarks.common import (  # noqa: E402
    NOISE_NOTE,
    RESULTS_DIR,
    Timer,
    autocast,
    machine,
    matmul_peak,
    print_table,
    resolve_device,
    use_amp,
    write_json,
)

NAME = "proxy_speed"
RATE_TARGET = 2.0  # candidates/s, full pipeline, vit_b teacher, 1 GMAC, batch 32, CPU
RATIO_TARGET = 10.0  # autokd vs DisWOT's public per-candidate procedure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="vit_b", help="teacher alias or timm name (random init when no weights)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the teacher's)")
    p.add_argument("--budget", default="1GFLOP", help="MAC budget of the students")
    p.add_argument("--space", default="vit", help="student space(s), comma-separated (vit, mobilenet, resnet, ...)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--candidates", type=int, default=20, help="in-budget candidates timed for autokd's procedure")
    p.add_argument("--baseline-candidates", type=int, default=3,
                   help="candidates timed for the DisWOT public-code procedure (about 30 s each on 2 CPU cores)")
    p.add_argument("--warmup", type=int, default=1, help="untimed candidates before autokd's timing")
    p.add_argument("--data", default=None, help="ImageFolder dir or zip (default: the synthetic demo set)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                   help="bf16 autocast on a GPU (auto: on for cuda); always off on the CPU")
    p.add_argument("--objectives", default=f"diswot,{DEFAULT_OBJECTIVE}",
                   help="objectives timed for autokd's procedure, comma-separated (default: diswot and the default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json", help="where the JSON goes")
    args = p.parse_args(argv)
    if args.candidates < 1 or args.baseline_candidates < 1:
        p.error("--candidates and --baseline-candidates must be at least 1")
    if args.baseline_candidates > args.candidates:
        p.error("--baseline-candidates cannot exceed --candidates: the baseline scores the same candidates")
    return args


def random_specs(evaluator: CandidateEvaluator, seed: int):
    """New random specs, uniform over the evaluator's spaces (as the search's random sampler draws them)."""
    rng, spaces, seen = random.Random(seed), list(evaluator.spaces.values()), set()
    while True:
        spec = rng.choice(spaces).sample(rng)
        if spec not in seen:
            seen.add(spec)
            yield spec


def time_autokd(ctx, n: int, warmup: int, seed: int, device: torch.device,
                amp: bool) -> list[dict[str, Any]]:
    """Per in-budget candidate: seconds to build, to count (fvcore) and to score, and on rejected proposals."""
    evaluator = ctx.evaluator
    rows: list[dict[str, Any]] = []
    rejected = 0.0  # time on proposals over budget, charged to the next accepted candidate
    for spec in random_specs(evaluator, seed):
        if len(rows) == n + warmup:
            break
        start = time.perf_counter()
        if evaluator.estimate(spec) > evaluator.budget.macs * (1 + ESTIMATE_TOLERANCE):
            rejected += time.perf_counter() - start
            continue
        with Timer(device) as build:
            evaluator.build(spec)
        with Timer(device) as count:
            cost = evaluator.cost(spec)
        if not evaluator.budget.fits(cost):
            rejected += time.perf_counter() - start
            continue
        with Timer(device) as score, autocast(device, amp):
            scores = evaluator.score(spec)
        rows.append({"arch": spec.short(), "spec": spec.as_dict(), "macs": cost.macs, "build_s": build.seconds,
                     "count_s": count.seconds, "score_s": score.seconds, "reject_s": rejected,
                     "objective": ctx.objective_value(scores)})
        rejected = 0.0
    return rows[warmup:]


def build_seeded(evaluator: CandidateEvaluator, spec: ArchSpec) -> nn.Module:
    """The candidate with the search's seeded init, built afresh (not from the evaluator's cache)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec_seed(spec, evaluator.seed))
        return evaluator.spaces[spec.space].build(spec, evaluator.num_classes)


def grad_forward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 seed: int) -> tuple[ForwardOutputs, torch.Tensor]:
    """Forward, mean cross-entropy and a full backward (`loss.backward()`, as DisWOT's code): the (detached)
    forward outputs and the classifier weight's gradient from autograd."""
    model.zero_grad(set_to_none=True)
    with scoring_mode(model, batch_stats=True, seed=seed), torch.enable_grad():
        out = forward_outputs(model, images)
        F.cross_entropy(out.logits.float(), labels).backward()
    grad = model.get_classifier().weight.grad.detach().float().clone()
    model.zero_grad(set_to_none=True)  # DisWOT's code lets teacher gradients accumulate; this does not
    return ForwardOutputs(out.features.detach(), out.pooled.detach(), out.logits.detach()), grad


def public_distances(out_t: ForwardOutputs, grad_t: torch.Tensor, out_s: ForwardOutputs, labels: torch.Tensor,
                     seed: int, width_match: str) -> tuple[float, float]:
    """(M_r, M_s) against a teacher reference made afresh from this batch's teacher pass, by autokd's own code
    (its width matching included). The student's classifier gradient there is the closed form, equal to the
    autograd one that the student's backward gave (tests/test_benchmarks.py checks both)."""
    ref = TeacherReference(relation=relation_gram(out_t.features), grad=grad_t, labels=labels.cpu(), seed=seed,
                           width_match=width_match)
    return diswot_distances(out_s.features, out_s.pooled, out_s.logits, labels, ref)


class FreshBatches:
    """A new random batch of the held-out train split per call, decoded and transformed (no DataLoader workers)."""

    def __init__(self, data, transform, batch_size: int, seed: int, val_fraction: float = 0.1):
        self.data, self.transform, self.batch_size = data, transform, batch_size
        self.pool = split_indices(data.train.labels, val_fraction, 0)[1]
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.rng.choice(self.pool, size=min(self.batch_size, len(self.pool)), replace=False)
        images = torch.stack([self.transform(self.data.train.load_image(int(i))) for i in idx])
        labels = torch.tensor([self.data.train.labels[int(i)] for i in idx], dtype=torch.long)
        return images, labels


def time_public(evaluator: CandidateEvaluator, teacher: nn.Module, specs: list[ArchSpec], batches: FreshBatches,
                seed: int, device: torch.device, amp: bool) -> list[dict[str, Any]]:
    """Per candidate: seconds for the fresh batch, the build, the teacher's and the student's forward+backward."""
    rows = []
    teacher.to(device)
    images, labels = batches()  # warm-up (autograd, allocator) on two images, untimed
    with autocast(device, amp):
        for model in (teacher, build_seeded(evaluator, specs[0]).to(device)):
            grad_forward(model, images[:2].to(device), labels[:2].to(device), seed)
    for spec in specs:
        with Timer(device) as data:
            images, labels = batches()
            images, labels = images.to(device), labels.to(device)
        with Timer(device) as build:
            student = build_seeded(evaluator, spec).to(device)
        with Timer(device) as teach, autocast(device, amp):
            out_t, grad_t = grad_forward(teacher, images, labels, seed)
        with Timer(device) as learn, autocast(device, amp):
            out_s, _ = grad_forward(student, images, labels, seed)
            m_r, m_s = public_distances(out_t, grad_t, out_s, labels, seed, evaluator.reference.width_match)
        rows.append({"arch": spec.short(), "macs": evaluator.cost(spec).macs, "data_s": data.seconds,
                     "build_s": build.seconds, "teacher_s": teach.seconds, "student_s": learn.seconds,
                     "diswot": -(m_r + m_s)})
    teacher.to("cpu")
    return rows


def summarise(auto: list[dict], public: list[dict], teacher_macs: int, batch: int, peak: float) -> dict[str, Any]:
    """Rates, the ratios to the public-code procedure and the fraction of the matmul peak."""
    score_s = sum(r["score_s"] for r in auto)
    pipeline_s = sum(r["build_s"] + r["count_s"] + r["score_s"] + r["reject_s"] for r in auto)
    public_s = sum(r["data_s"] + r["build_s"] + r["teacher_s"] + r["student_s"] for r in public)
    rate_score, rate_pipeline, rate_public = len(auto) / score_s, len(auto) / pipeline_s, len(public) / public_s
    achieved = sum(2 * r["macs"] * batch for r in auto) / score_s
    # backward ~ 2x forward: forward + backward of teacher and student ~ 3x their forward MACs
    public_flops = sum(2 * 3 * (teacher_macs + r["macs"]) * batch for r in public)
    public_compute_s = sum(r["teacher_s"] + r["student_s"] for r in public)

    def mean(rows, key):
        return statistics.fmean(r[key] for r in rows)

    return {
        "autokd": {
            "candidates": len(auto),
            "rate_score_only": rate_score,
            "rate_pipeline": rate_pipeline,
            "mean_gmacs": mean(auto, "macs") / 1e9,
            "mean_s": {k: mean(auto, k) for k in ("build_s", "count_s", "score_s", "reject_s")},
            "achieved_flops": achieved,
            "fraction_of_peak": achieved / peak,
        },
        "diswot_public": {
            "candidates": len(public),
            "rate": rate_public,
            "mean_gmacs": mean(public, "macs") / 1e9,
            "mean_s": {k: mean(public, k) for k in ("data_s", "build_s", "teacher_s", "student_s")},
            "achieved_flops": public_flops / public_compute_s,
            "fraction_of_peak": public_flops / public_compute_s / peak,
        },
        "ratio_pipeline": rate_pipeline / rate_public,
        "ratio_score_only": rate_score / rate_public,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both procedures in one process, print the table, write the JSON; returns what was written."""
    args = parse_args(argv)
    logging.getLogger("autokd").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")  # fvcore traces with jit
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = use_amp(args.amp, device)
    info = machine()
    peak = matmul_peak(device, torch.bfloat16 if amp else torch.float32)
    arms = {}
    for objective in dict.fromkeys(args.objectives.split(",")):
        config = SearchConfig(teacher=args.teacher, budget=args.budget, data=args.data, img_size=args.img_size,
                              spaces=tuple(args.space.split(",")), batch_size=args.batch_size, seed=args.seed,
                              device=str(device), objective=objective)
        start = time.perf_counter()
        ctx = prepare(config)  # data, teacher, scoring batch, teacher reference, reference sample: once per search
        setup_s = time.perf_counter() - start
        arms[objective] = (ctx, setup_s, time_autokd(ctx, args.candidates, args.warmup, args.seed, device, amp))
    ctx, setup_s, auto = arms["diswot"] if "diswot" in arms else next(iter(arms.values()))
    evaluator, teacher = ctx.evaluator, ctx.teacher
    img_size, batch = teacher.img_size, evaluator.batch.size
    specs = [ArchSpec.from_dict(r["spec"]) for r in auto[: args.baseline_candidates]]
    teacher_macs = count_macs(teacher.model, img_size)
    batches = FreshBatches(ctx.data, teacher.transform(), batch, args.seed + 1, ctx.config.val_fraction)
    public = time_public(evaluator, teacher.model, specs, batches, args.seed, device, amp)
    peak = max(peak, matmul_peak(device, torch.bfloat16 if amp else torch.float32))  # the load may have changed
    summary = summarise(auto, public, teacher_macs, batch, peak)
    objectives = {}
    for objective, (octx, osetup, orows) in arms.items():
        rate = len(orows) / sum(r["build_s"] + r["count_s"] + r["score_s"] + r["reject_s"] for r in orows)
        objectives[objective] = {"setup_s": osetup, "rate_pipeline": rate, "search_1000_s": osetup + 1000 / rate,
                                 "reference_size": octx.config.reference_size if octx.ranking else 0,
                                 "candidates": orows}

    result = {
        "benchmark": NAME,
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "img_size": img_size, "batch_size": batch, "device": str(device), "amp": amp,
                   "teacher_name": teacher.name, "teacher_pretrained": teacher.pretrained,
                   "spaces": sorted(evaluator.spaces), "data_name": ctx.data_name},
        "machine": info,
        "peak_flops": peak,
        "peak_dtype": "bfloat16" if amp else "float32",
        "teacher_gmacs": teacher_macs / 1e9,
        "setup_s": setup_s,
        **summary,
        "targets": {
            "rate_pipeline_ge_2": summary["autokd"]["rate_pipeline"] >= RATE_TARGET,
            "ratio_ge_10": summary["ratio_pipeline"] >= RATIO_TARGET,
        },
        "note": NOISE_NOTE,
        "objectives": objectives,
        "diswot_public_candidates": public,
    }
    _print(result)
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


def _print(result: dict[str, Any]) -> None:
    a, b, c = result["autokd"], result["diswot_public"], result["config"]
    columns = ["procedure", "candidates", "cand/s", "s/cand", "mean GMACs", "x DisWOT public", "% matmul peak"]
    rows = [
        ["autokd score only", a["candidates"], a["rate_score_only"], 1 / a["rate_score_only"],
         a["mean_gmacs"], result["ratio_score_only"], 100 * a["fraction_of_peak"]],
        ["autokd full: sample+build+fvcore+score", a["candidates"], a["rate_pipeline"], 1 / a["rate_pipeline"],
         a["mean_gmacs"], result["ratio_pipeline"], "-"],
        ["DisWOT public-code procedure", b["candidates"], b["rate"], 1 / b["rate"], b["mean_gmacs"], 1.0,
         100 * b["fraction_of_peak"]],
    ]
    rows += [[f"autokd full, objective {name}", len(o["candidates"]), o["rate_pipeline"], 1 / o["rate_pipeline"],
              "-", o["rate_pipeline"] / b["rate"], "-"] for name, o in result["objectives"].items()]
    notes = [
        f"teacher {c['teacher_name']} ({result['teacher_gmacs']:.3g} GMACs, pretrained={c['teacher_pretrained']}), "
        f"{c['img_size']} px, batch {c['batch_size']}, budget {c['budget']}, space {','.join(c['spaces'])}, "
        f"{c['device']}, amp={c['amp']}; matmul peak {result['peak_flops'] / 1e9:.4g} GFLOP/s "
        f"({result['peak_dtype']}); setup once per search (teacher + batch + reference) {result['setup_s']:.1f} s",
        f"autokd per candidate: build {a['mean_s']['build_s']:.3f} s, fvcore {a['mean_s']['count_s']:.3f} s, "
        f"score {a['mean_s']['score_s']:.3f} s, rejected proposals {a['mean_s']['reject_s']:.3f} s",
        *[f"objective {name}: set-up {o['setup_s']:.1f} s (reference sample of {o['reference_size']}); a "
          f"1,000-candidate search {o['search_1000_s'] / 60:.1f} min" for name, o in result["objectives"].items()],
        f"DisWOT public per candidate: data {b['mean_s']['data_s']:.2f} s, build {b['mean_s']['build_s']:.2f} s, "
        f"teacher fwd+bwd {b['mean_s']['teacher_s']:.2f} s, student fwd+bwd {b['mean_s']['student_s']:.2f} s",
        f"targets: full pipeline >= {RATE_TARGET:g} cand/s: {result['targets']['rate_pipeline_ge_2']}; "
        f">= {RATIO_TARGET:g}x the public procedure: {result['targets']['ratio_ge_10']}",
        NOISE_NOTE,
    ]
    print_table("DisWOT proxy speed", columns, rows, notes)


if __name__ == "__main__":
    main()
