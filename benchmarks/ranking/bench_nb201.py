"""Every proxy and aggregate on NAS-Bench-201, beside its published figure; every proxy checked network by network.

Reads the scores that `score_nb201.py` wrote (benchmarks/results/nb201/scores_*_c10.csv for the 10-class head,
*_c100.csv for the 100-class head), and reports:
1. per score and aggregate, Kendall tau-b with a bootstrap 95% interval against the 200-epoch CIFAR-10 and
   CIFAR-100 test accuracy, on the networks of the fixed sample that it scored (n), beside its published
   figure and flagged where it is more than 0.05 below it; the size and shape baselines also on all 15,625;
2. per proxy that NAS-Bench-Suite-Zero precomputed, Kendall tau between autokd's value and theirs on the same
   networks (their 491; params and FLOPs must order them identically);
3. the score tables that `bench_ranking_table.py` reads (`kd_acc` = the benchmark's accuracy), one per dataset.
The CIFAR-100 column scores CIFAR-10 images (no CIFAR-100 images here) with a 100-class head for the proxies
scored with `--head 100`; the others are read from the 10-class head, whose value for them does not depend on
the head (feature-only scores, size) or, for DisWOT, needs the teacher's 10 classes.

    python benchmarks/ranking/bench_nb201.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.io import write_csv, write_text  # noqa: E402
from autokd.proxies import proxy_of  # noqa: E402
from autokd.proxies.aggregate import aggregate_terms  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine, markdown_table, print_table, write_json  # noqa: E402
from benchmarks.ranking.bench_proxy_quality import (  # noqa: E402
    COMBINATIONS,
    add_combinations,
    bootstrap_ci,
    kendall_tau,
    oriented_column,
    score_keys,
)
from benchmarks.ranking.score_nb201 import NASLIB, ground_truth  # noqa: E402

NB201_DIR = RESULTS_DIR / "nb201"
DATASETS = {"c10": "c10_test", "c100": "c100_test"}
#: published Kendall tau on NB201 (CIFAR-10, CIFAR-100) and where it comes from
PUBLISHED: dict[str, tuple[float, float, str]] = {
    "macs": (0.623, 0.586, "VKDNW (CVPR 2025) Table 1, FLOPs"),
    "layers": (0.626, 0.646, "VKDNW Table 1, number of trainable layers"),
    "zico": (0.607, 0.614, "VKDNW Table 1"),
    "aznas": (0.712, 0.696, "VKDNW Table 1 (AZ-NAS's NB201 notebook: 0.741 on CIFAR-10)"),
    "zen": (0.10, 0.08, "VKDNW Table 1"),
    "vkdnw": (0.618, 0.634, "VKDNW Table 1, VKDNW_single (layer count, entropy breaking ties)"),
    "vkdnw_agg": (0.750, 0.753, "VKDNW Table 1"),
}
#: NAS-Bench-Suite-Zero's column for each autokd score it also holds
NASLIB_NAMES = {"params": "params", "macs": "flops", "synflow": "synflow", "snip": "snip", "grad_norm": "grad_norm",
                "fisher": "fisher", "jacov": "jacov"}
NOT_IN_AUTOKD = ("grasp", "epe_nas", "l2_norm", "plain")
#: FLOPs of one 3x3 average-pool edge in all 15 cells at 32 px (16, 32, 64 channels on 32, 16, 8 px maps)
POOL_FLOPS = 9 * 5 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)


def read_scores(directory: Path, head: int) -> pd.DataFrame:
    """Every score file of one head, merged on the network index."""
    frames = [pd.read_csv(p).drop(columns=["head"]) for p in sorted(directory.glob(f"scores_*_c{head}.csv"))]
    frames = [f.drop(columns=[c for c in f.columns if c.startswith("sec_")]) for f in frames]
    if not frames:
        return pd.DataFrame(columns=["index", "arch"])
    merged = frames[0].set_index(["index", "arch"])
    for f in frames[1:]:  # a column in several files keeps every file's values (the first where both have one)
        merged = merged.combine_first(f.set_index(["index", "arch"]))
    return merged.reset_index()


def seconds_per_network(directory: Path) -> dict[str, float]:
    """Mean CPU seconds per network of each proxy (10-class head)."""
    out: dict[str, float] = {}
    for path in sorted(directory.glob("scores_*_c10.csv")):
        frame = pd.read_csv(path)
        out.update({c[4:]: float(frame[c].mean()) for c in frame.columns if c.startswith("sec_")})
    return out


def dataset_frame(c10: pd.DataFrame, c100: pd.DataFrame, gt: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The scores for one dataset (CIFAR-100: the 100-class head where scored) with `kd_acc` = its accuracy."""
    frame = c10.copy()
    if dataset == "c100" and len(c100):
        frame = frame.set_index("index")
        other = c100.set_index("index")
        for col in other.columns.drop("arch"):
            frame[col] = other[col].reindex(frame.index)
        frame = frame.reset_index()
    accuracy = gt.set_index("index")[DATASETS[dataset]]
    frame["kd_acc"] = accuracy.reindex(frame["index"]).to_numpy()
    return frame


def tau_row(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> dict:
    """tau [bootstrap CI] on the rows where the score exists."""
    ok = ~np.isnan(x)
    if ok.sum() < 8 or np.ptp(x[ok]) == 0:
        return {}
    return {"tau": kendall_tau(x[ok], y[ok]), "ci": bootstrap_ci(x[ok], y[ok], kendall_tau, resamples, seed=seed),
            "n": int(ok.sum())}


def closed_form_baselines(gt: pd.DataFrame) -> pd.DataFrame:
    """params, MACs (fvcore's count, held to it by a test) and the layer count of all 15,625 networks."""
    from autokd.cost import count_params
    from autokd.spaces import load_space
    from autokd.spaces.nb201 import parse_cell, spec_from_cell

    space = load_space("nb201", 32)
    cache: dict[tuple[int, int], int] = {}
    rows = []
    for arch in gt["arch"]:
        ops = parse_cell(arch)
        convs = (ops.count("nor_conv_3x3"), ops.count("nor_conv_1x1"))
        spec = spec_from_cell(arch)
        if convs not in cache:  # params depend only on how many edges are 3x3 and 1x1 convs
            cache[convs] = count_params(space.build(spec, 10))
        rows.append({"params": cache[convs], "macs": space.estimate_macs(spec, 10),
                     "layers": 1 + 3 * 2 + 15 * sum(convs) + 1})  # stem, 2 reduction blocks, cells, classifier
    return pd.DataFrame(rows)


def stability(seed0: pd.DataFrame, seed1: pd.DataFrame, names: tuple[str, ...]) -> dict:
    """Kendall tau between two scorings of the same networks (scoring batch, random teacher and inits from seed 0
    and seed 1), per score and aggregate, in the format `bench_ranking_table.py --stability` reads."""
    common = sorted(set(seed0["index"]) & set(seed1["index"]))
    a = add_combinations(seed0.set_index("index").loc[common].reset_index(), names)
    b = add_combinations(seed1.set_index("index").loc[common].reset_index(), names)
    keys = [k for k in [*score_keys(b), *names] if k in a.columns and k in b.columns]
    out = {}
    for key in keys:
        x, y = oriented_column(a, key), oriented_column(b, key)
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() > 1 and np.ptp(x[ok]) > 0:
            out[key] = {"tau": kendall_tau(x[ok], y[ok]), "n": int(ok.sum())}
    return {"settings": {"resnet56_cifar:nb201:all:32 (seed 0 vs seed 1)": {"students": len(common),
                                                                             "stability": out}}}


def naslib_check(c10: pd.DataFrame) -> list[dict]:
    """Per proxy NAS-Bench-Suite-Zero also computed, on the same networks: Kendall tau between autokd's value and
    theirs, and each one's tau against their 200-epoch CIFAR-10 validation accuracy."""
    theirs = pd.read_csv(NASLIB)
    theirs = theirs[theirs["dataset"] == "c10"].drop_duplicates("index").set_index("index")
    mine = c10.set_index("index")
    out = []
    for key, name in NASLIB_NAMES.items():
        if key not in mine.columns:
            out.append({"proxy": key, "naslib": name, "tau": None, "n": 0})
            continue
        both = pd.merge(mine[[key]], theirs[[name, "val_accuracy"]], left_index=True, right_index=True,
                        suffixes=("", "_naslib")).dropna()
        ours, their, acc = (both.iloc[:, i].to_numpy(float) for i in range(3))
        out.append({"proxy": key, "naslib": name, "tau": kendall_tau(ours, their), "n": len(both),
                    "tau_acc_autokd": kendall_tau(ours, acc), "tau_acc_naslib": kendall_tau(their, acc)})
    if "macs" in mine.columns:  # their FLOPs also count 9 per output of each 3x3 average pool; fvcore counts none
        both = mine[["macs", "arch"]].join(theirs[["flops"]], how="inner").dropna()
        pools = both["arch"].str.count("avg_pool_3x3").to_numpy()
        ours = both["macs"].to_numpy(float) + POOL_FLOPS * pools
        out.append({"proxy": "macs + pooling", "naslib": "flops", "n": len(both),
                    "tau": kendall_tau(ours, both["flops"].to_numpy(float)),
                    "note": "autokd's MACs plus 9 FLOPs per 3x3 average-pool output"})
    return out + [{"proxy": name, "naslib": name, "tau": None, "n": 0, "note": "not implemented in autokd"}
                  for name in NOT_IN_AUTOKD]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scores", type=Path, default=NB201_DIR, help="folder of score_nb201.py's CSVs")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed1", type=Path, default=NB201_DIR / "stability" / "scores_seed1_c10.csv",
                   help="the same networks scored with --seed 1: the two-batch stability of every score")
    p.add_argument("--out", type=Path, default=NB201_DIR / "nb201_ranking.json")
    args = p.parse_args(argv)

    gt = ground_truth()
    c10, c100 = read_scores(args.scores, 10), read_scores(args.scores, 100)
    seconds = seconds_per_network(args.scores)
    names = COMBINATIONS
    frames = {d: add_combinations(dataset_frame(c10, c100, gt, d), names) for d in DATASETS}
    for d, frame in frames.items():  # the inputs of bench_ranking_table.py
        write_csv(args.scores / f"table_nb201_{d}.csv", frame)
    rows = [*score_keys(frames["c10"]), *names]
    rows = [r for r in dict.fromkeys(rows) if r in frames["c10"].columns and frames["c10"][r].nunique() > 1]
    results = {}
    for r in rows:
        results[r] = {d: tau_row(oriented_column(f, r), f["kd_acc"].to_numpy(float), args.resamples, args.seed)
                      for d, f in frames.items()}
    full = closed_form_baselines(gt)
    on_all = {b: {d: tau_row(full[b].to_numpy(float), gt[col].to_numpy(float), args.resamples, args.seed)
                  for d, col in DATASETS.items()} for b in ("params", "macs", "layers")}

    def cost(row: str) -> str:
        terms = {proxy_of(t) or t for t in (aggregate_terms(row) or (row,))}
        return f"{sum(seconds[t] for t in terms):.2f}" if all(t in seconds for t in terms) else "-"

    def cell(q: dict) -> str:
        return f"{q['tau']:+.3f} [{q['ci'][0]:+.2f}, {q['ci'][1]:+.2f}]" if q else "-"

    lines = []
    for r in sorted(rows, key=lambda r: -np.mean([results[r][d].get("tau", -1) for d in DATASETS])):
        q = results[r]
        pub = PUBLISHED.get(r)
        gap = [q[d]["tau"] - pub[i] for i, d in enumerate(DATASETS) if pub and q[d]] if pub else []
        flag = "below published by > 0.05" if gap and min(gap) < -0.05 else ""
        lines.append([r, cell(q["c10"]), cell(q["c100"]), q["c10"].get("n", "-"),
                      f"{pub[0]:.3f} / {pub[1]:.3f}" if pub else "-", flag,
                      cost(r)])
    for b, q in on_all.items():
        lines.append([f"{b} (all 15,625)", cell(q["c10"]), cell(q["c100"]), q["c10"]["n"],
                      f"{PUBLISHED[b][0]:.3f} / {PUBLISHED[b][1]:.3f}" if b in PUBLISHED else "-", "", "0"])
    head = ("100-class head for " + ", ".join(c for c in c100.columns if c not in ("index", "arch"))
            if len(c100) else "10-class head") + ", CIFAR-10 images"
    columns = ["score", "tau CIFAR-10", f"tau CIFAR-100 ({head})", "n",
               "published C-10 / C-100", "check", "CPU s/net"]
    notes = [f"fixed sample: score_nb201.py's prefix of n networks; bootstrap 95% over {args.resamples} resamples",
             "published: " + "; ".join(f"{k}: {v[2]}" for k, v in PUBLISHED.items())]
    print_table("NAS-Bench-201: Kendall tau vs 200-epoch test accuracy", columns, lines, notes)
    check = naslib_check(c10)
    check_columns = ["autokd", "NAS-Bench-Suite-Zero", "tau between them", "networks",
                     "tau vs their val. acc.: autokd / theirs", "note"]
    check_lines = [[c["proxy"], c["naslib"], f"{c['tau']:+.3f}" if c["tau"] is not None else "-", c["n"],
                    f"{c['tau_acc_autokd']:+.3f} / {c['tau_acc_naslib']:+.3f}" if "tau_acc_autokd" in c else "-",
                    c.get("note", "")] for c in check]
    print_table("autokd's value vs NAS-Bench-Suite-Zero's, network by network (Kendall tau, CIFAR-10)",
                check_columns, check_lines)
    write_text(args.out.with_suffix(".md"),
               markdown_table(columns, lines) + "\n\n" + markdown_table(check_columns, check_lines) + "\n")
    stable = None
    if args.seed1.is_file():
        stable = stability(c10, pd.read_csv(args.seed1).drop(columns=["head"]), names)
        write_json(stable, args.out.parent / "proxy_stability_nb201.json")
        setting = next(iter(stable["settings"].values()))
        print(f"two-batch stability on {setting['students']} networks: " + ", ".join(
            f"{k} {v['tau']:+.2f}" for k, v in setting["stability"].items()))
    result = {"taus": results, "stability": stable, "all_networks": on_all, "naslib_check": check,
              "cpu_seconds_per_network": seconds,
              "published": PUBLISHED, "sample_sizes": {d: len(f) for d, f in frames.items()}, "machine": machine()}
    print(f"wrote {write_json(result, args.out)} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
