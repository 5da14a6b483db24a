"""How well does each training-free proxy rank students by their trained accuracy?

Reads a ground-truth CSV (one row per trained student and seed: spec as autokd JSON, macs, params, kd_acc,
cls_acc, seed, epochs, device), averages the seeds of each spec, scores every spec with autokd's proxies against
the teacher on --data (or takes precomputed proxy columns when the CSV has them), and reports for every proxy
Kendall tau and Spearman rho against kd_acc and cls_acc with seeded bootstrap 95% intervals, and the true rank of
the proxy's top pick. DisWOT's two terms are distances (lower = closer); they are negated here so that higher is
better for every proxy.

    python benchmarks/ranking/bench_proxy_quality.py --gt benchmarks/results/gt_cifar10.csv \
        --data ../shared/data/cifar10-jpeg.zip --teacher resnet56_cifar --teacher-weights T.th
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.io import write_csv  # noqa: E402
from autokd.proxies.aggregate import aggregate_terms, oriented, population_aggregate  # noqa: E402
from autokd.spaces import ArchSpec  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, print_table, write_json  # noqa: E402

# the proxies rescored by default: every registered proxy (params, macs, depth, layers come with the costs)
SCORED = ("all",)
# AZ-NAS-style log-rank aggregates reported beside the single scores (autokd.proxies.aggregate), fixed in advance
# from the literature: the authors' AZ-NAS, and size (params) paired with each teacher-free and teacher-aware score
COMBINATIONS = (
    "aznas", "az_expressivity+az_progressivity+az_trainability+params", "params+layers", "params+depth",
    "params+diswot", "params+zico", "params+meco", "params+swap", "params+vkdnw", "params+az_expressivity",
    "params+az_trainability", "params+synflow", "params+grad_norm", "params+naswot", "params+snip",
    "params+fisher", "params+jacov", "params+zen", "params+dss", "params+macs",
    # VKDNW's authors' aggregate, and size with the layer count, which VKDNW found ranks NB201 as well as FLOPs
    "vkdnw_agg", "params+layers+meco", "layers+meco", "params+layers+aznas",
)
TARGETS = ("kd_acc", "cls_acc")
GT_COLUMNS = ("spec", "macs", "params", "kd_acc", "cls_acc", "seed", "epochs", "device")


# ------------------------------------------------------------------------------------------- statistics
def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (ties counted as scipy does); nan when either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho; nan when either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def kendall_tau_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of two (R, n) arrays at once (as scipy's; nan where a row is constant)."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    n = x.shape[1]
    pairs = n * (n - 1) / 2
    concordance = (sx * sy).sum((1, 2)) / 2
    tied_x = ((sx == 0).sum((1, 2)) - n) / 2
    tied_y = ((sy == 0).sum((1, 2)) - n) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return concordance / np.sqrt((pairs - tied_x) * (pairs - tied_y))


def spearman_rho_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of two (R, n) arrays at once (nan where a row is constant)."""
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1))


#: the statistics that `bootstrap_ci` evaluates on all resamples at once
ROW_STATISTICS = {kendall_tau: kendall_tau_rows, spearman_rho: spearman_rho_rows}


def bootstrap_ci(x: np.ndarray, y: np.ndarray, statistic, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `statistic(x, y)` over paired resamples of the rows (seeded; degenerate
    resamples, whose statistic is nan, are left out)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
    if statistic in ROW_STATISTICS and len(x) <= 200:  # the all-pairs arrays grow as n^2 per resample
        values = np.concatenate([ROW_STATISTICS[statistic](x[chunk], y[chunk])
                                 for chunk in np.array_split(idx, max(1, n_resamples // 250))])
    else:
        values = np.array([statistic(x[i], y[i]) for i in idx])
    values = values[~np.isnan(values)]  # nan for a resample of one value: dropped
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def top_pick_rank(score: np.ndarray, target: np.ndarray) -> int:
    """The true rank (1 = best target) of the row the proxy scores highest; a tie in the target shares the
    best rank ('min'), a tie in the score picks the first row."""
    pick = int(np.argmax(np.asarray(score, float)))
    ranks = stats.rankdata(-np.asarray(target, float), method="min")
    return int(ranks[pick])


def ranking_row(name: str, score: np.ndarray, target: np.ndarray, resamples: int = 1000, **extra) -> dict:
    """Kendall tau [bootstrap CI] and the top pick's true rank of one ranking (rows it could not score, nan,
    left out), with `extra` columns such as its cost."""
    score, target = np.asarray(score, float), np.asarray(target, float)
    keep = ~np.isnan(score)
    score, target = score[keep], target[keep]
    low, high = bootstrap_ci(score, target, kendall_tau, resamples)
    return {"ranking": name, **extra, "kendall_tau": kendall_tau(score, target), "ci": [low, high],
            "top_pick_true_rank": top_pick_rank(score, target), "students": len(target)}


def score_keys(frame: pd.DataFrame) -> list[str]:
    """The proxy score columns of `frame`, in registry order (every registered proxy's output keys)."""
    from autokd.proxies import PROXIES

    keys = [k for proxy in PROXIES.values() for k in proxy.outputs]
    return [k for k in dict.fromkeys(keys) if k in frame.columns and frame[k].notna().any()]


def oriented_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A score or aggregate column with higher = better (distances negated)."""
    return np.array([oriented(name, v) for v in frame[name].to_numpy(float)])


def proxy_quality(frame: pd.DataFrame, proxies: list[str], targets: tuple[str, ...] = TARGETS,
                  n_resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """For each proxy and target: tau, rho, their intervals and the top pick's true rank (of len(frame))."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name in proxies:
        score = oriented_column(frame, name)
        scored = ~np.isnan(score)  # a proxy that could not score some specs is judged on the rest (see "n")
        score = score[scored]
        result[name] = {}
        for target in targets:
            if target not in frame.columns or frame[target].isna().all():
                continue
            y = frame[target].to_numpy(float)[scored]
            if len(y) < 2:
                result[name][target] = {"tau": np.nan, "tau_ci": (np.nan, np.nan), "rho": np.nan,
                                        "rho_ci": (np.nan, np.nan), "top_pick_rank": None, "n": len(y)}
                continue
            result[name][target] = {
                "tau": kendall_tau(score, y),
                "tau_ci": bootstrap_ci(score, y, kendall_tau, n_resamples, seed=seed),
                "rho": spearman_rho(score, y),
                "rho_ci": bootstrap_ci(score, y, spearman_rho, n_resamples, seed=seed),
                "top_pick_rank": top_pick_rank(score, y),
                "n": len(y),
            }
    return result


def add_combinations(frame: pd.DataFrame, combinations: tuple[str, ...] = COMBINATIONS) -> pd.DataFrame:
    """The frame with one column per aggregate whose terms it holds, each ranked within the frame (AZ-NAS)."""
    out = frame.copy()
    for name in combinations:
        terms = aggregate_terms(name)
        if terms and all(t in out.columns and out[t].notna().any() for t in terms):
            # ranked among the rows that have every term (a term scored on a smaller sample limits the rest)
            rows = out[list(terms)].notna().all(axis=1).to_numpy()
            values = np.full(len(out), np.nan)
            values[rows] = population_aggregate({t: out.loc[rows, t].to_numpy(float) for t in terms})
            out[name] = values
    return out


# ---------------------------------------------------------------------------------------------- inputs
def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """One row per spec: accuracies averaged over its seeds (with their count), cost and any proxy columns."""
    raw = pd.read_csv(path)
    missing = [c for c in ("spec", "kd_acc") if c not in raw.columns]
    if missing:
        raise SystemExit(f"{path} lacks the column(s) {', '.join(missing)}: expected {', '.join(GT_COLUMNS)}")
    numeric = [c for c in raw.columns if c not in ("spec", "seed") and pd.api.types.is_numeric_dtype(raw[c])]
    frame = raw.groupby("spec", sort=False)[numeric].mean().reset_index()
    frame["seeds"] = raw.groupby("spec", sort=False).size().to_numpy()
    return frame


def rescore(frame: pd.DataFrame, args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, str], dict]:
    """Score every spec with autokd's proxies, as a search with these settings would; also return, for any
    proxy that could not score some spec, why, and each proxy's mean CPU seconds per spec."""
    import time

    import torch

    from autokd.errors import AutokdError
    from autokd.proxies import PROXIES
    from autokd.search import SearchConfig, prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [ArchSpec.from_json(s) for s in frame["spec"]]
    names = list(PROXIES) if "all" in args.proxies else list(args.proxies)
    config = SearchConfig(
        teacher=args.teacher, teacher_weights=args.teacher_weights, data=args.data,
        budget="1T",  # the students were chosen under their budget; scoring them does not check it again
        spaces=tuple(sorted({s.space for s in specs})),
        img_size=args.img_size, batch_size=args.batch_size, score_batches=args.score_batches, proxies=tuple(names),
        seed=args.seed, objective="params",  # a single score: no reference sample to fit (every proxy is run below)
        width_match=args.width_match, relation_layer=args.relation_layer, score_teacher=args.score_teacher,
        device=args.device,
    )
    ctx = prepare(config)
    ev = ctx.evaluator
    rows, unavailable = [], {}
    seconds = {n: 0.0 for n in names}
    for i, spec in enumerate(specs):
        model = ev.build(spec).to(ev.device)
        cost = ev.cost(spec)
        row: dict[str, float] = {}
        for name in names:  # one proxy at a time, so that each is timed on its own
            start = time.process_time()
            try:
                row.update(ev.score_model(model, [name], cost))
            except AutokdError as err:  # a proxy that cannot read this model (e.g. SWAP without ReLUs)
                unavailable.setdefault(name, str(err))
            seconds[name] += time.process_time() - start
        rows.append(row)
        if args.progress:
            print(f"scored {i + 1}/{len(specs)}", flush=True)
    out = frame.copy()
    for key in dict.fromkeys(k for n in names for k in PROXIES[n].outputs):
        out[key] = [r.get(key, np.nan) for r in rows]
    return out, unavailable, {n: s / len(specs) for n, s in seconds.items()}


def report(frame: pd.DataFrame, proxies: list[str], args: argparse.Namespace, title: str,
           unavailable: dict[str, str]) -> dict:
    """Print the quality table of `frame` and return the numbers (`proxy_quality`)."""
    quality = proxy_quality(frame, proxies, n_resamples=args.resamples, seed=args.seed)
    rows = []
    for name in proxies:
        row = [name]
        for target in TARGETS:
            if target not in quality[name]:
                row += ["-", "-", "-"]
                continue
            q = quality[name][target]
            row += [f"{q['tau']:+.3f} [{q['tau_ci'][0]:+.2f}, {q['tau_ci'][1]:+.2f}]",
                    f"{q['rho']:+.3f} [{q['rho_ci'][0]:+.2f}, {q['rho_ci'][1]:+.2f}]",
                    f"{q['top_pick_rank'] or '-'}/{q['n']}"]
        rows.append(row)
    columns = ["proxy"] + [f"{m} {t}" for t in TARGETS for m in ("tau", "rho", "top pick")]
    notes = [f"{len(frame)} specs ({int(frame['seeds'].sum())} rows) from {args.gt}; bootstrap 95% intervals over "
             f"{args.resamples} seeded resamples; top pick = true rank of the proxy's best (1 = best)"]
    notes += [f"{name}: not scored for some specs ({why})" for name, why in unavailable.items()]
    print_table(title, columns, rows, notes)
    return quality


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gt", required=True, help="ground-truth CSV (benchmarks/ranking/build_ground_truth.py)")
    p.add_argument("--data", help="the data for the scoring batch (not needed when the CSV has proxy columns)")
    p.add_argument("--teacher", default="resnet56_cifar")
    p.add_argument("--teacher-weights", help="the teacher's weights (leave out for a random teacher)")
    p.add_argument("--rescore", action="store_true", help="score the specs even when the CSV has proxy columns")
    p.add_argument("--img-size", type=int, help="score at this resolution (default: the teacher's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--score-batches", type=int, default=1, help="average the scores over N fixed batches")
    p.add_argument("--proxies", type=lambda v: tuple(v.split(",")), default=SCORED,
                   help="proxies to rescore, comma-separated (default all registered ones)")
    p.add_argument("--progress", action="store_true", help="print a line per scored spec")
    p.add_argument("--width-match", default="projection")
    p.add_argument("--relation-layer", default="features", choices=("features", "pooled"))
    p.add_argument("--score-teacher", default="random", choices=("random", "trained"),
                   help="score against a random copy of the teacher (the search's default) or the trained one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--out", default=str(RESULTS_DIR / "proxy_quality.json"))
    p.add_argument("--scores-out", help="also write the ground truth with every proxy's score per spec (CSV)")
    args = p.parse_args(argv)

    frame = read_ground_truth(args.gt)
    unavailable: dict[str, str] = {}
    seconds: dict[str, float] = {}
    if args.rescore or not score_keys(frame):
        if not args.data:
            raise SystemExit("the CSV has no proxy columns: give --data (and --teacher/--teacher-weights) to score")
        frame, unavailable, seconds = rescore(frame, args)
    frame = add_combinations(frame)
    frame["space"] = [ArchSpec.from_json(spec).space for spec in frame["spec"]]
    if args.scores_out:
        write_csv(args.scores_out, frame)
    proxies = [*score_keys(frame), *(c for c in COMBINATIONS if c in frame.columns)]
    quality = report(frame, proxies, args, "proxy quality: rank correlation with trained accuracy", unavailable)
    by_space = {}
    spaces = sorted(frame["space"].unique())
    for space in spaces if len(spaces) > 1 else ():  # within one space, the combinations ranked there again
        part = add_combinations(frame[frame["space"] == space].reset_index(drop=True))
        if len(part) >= 4:
            by_space[space] = report(part, proxies, args, f"within the {space} space", unavailable)
    n = len(frame)
    result = {
        "gt": str(args.gt), "specs": n, "rows": int(frame["seeds"].sum()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("gt", "out")},
        "rescored": bool(seconds), "unavailable": unavailable, "cpu_seconds_per_spec": seconds,
        "proxies": quality, "by_space": by_space, "machine": machine(),
    }
    print(f"wrote {write_json(result, Path(args.out))}")
    return result


if __name__ == "__main__":
    main()
