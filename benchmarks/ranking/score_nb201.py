"""Score NAS-Bench-201 networks with autokd's proxies, as `autokd search --space nb201` scores them; resumable.

One fixed, seeded sample: the 491 networks of NAS-Bench-Suite-Zero's file first (so autokd's values can be
checked network by network against theirs), then a seeded draw of the others; a smaller sample is a prefix of
a larger one. Each network is built with the search's seeded init, scored on the search's fixed CIFAR-10 batch
(64 images of the held-out split) against the teacher's reference, and written as one CSV row as soon as it is
scored; a rerun skips the networks already in the file. `--head 100` builds a 100-class classifier (the
CIFAR-100 column: there are no CIFAR-100 images here, so it scores CIFAR-10 images) for the proxies whose value
depends on the head; proxies that read the teacher need the teacher's 10 classes and are refused there.

    python benchmarks/ranking/score_nb201.py --size 1000 --proxies synflow,meco,swap,naswot,diswot \
        --out benchmarks/results/nb201/scores_a_c10.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.*
from autokd.cost import Cost, count_params  # noqa: E402
from autokd.proxies import PROXIES, score_candidate  # noqa: E402
from autokd.search import SearchConfig, prepare  # noqa: E402
from autokd.search.evaluate import seeded_build  # noqa: E402
from autokd.spaces import load_space  # noqa: E402
from autokd.spaces.nb201 import spec_from_cell  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"
GROUND_TRUTH = SHARED / "ground_truth" / "nb201_200ep.csv"
NASLIB = SHARED / "ground_truth" / "nb201_naslib_zc.csv"
DATA = SHARED / "data" / "cifar10-jpeg.zip"
TEACHER_WEIGHTS = SHARED / "teachers" / "cifar10_resnet56-4bfd9763.th"


def ground_truth(path: Path = GROUND_TRUTH) -> pd.DataFrame:
    """All 15,625 networks: index, arch (cell string), c10_test, c100_test (200-epoch top-1, %)."""
    return pd.read_csv(path)


def sample_indices(size: int, seed: int = 0, naslib: Path = NASLIB, total: int = 15625) -> list[int]:
    """The fixed sample: NAS-Bench-Suite-Zero's networks (seeded order) then a seeded draw of the rest."""
    rng = np.random.default_rng(seed)
    checked = np.unique(pd.read_csv(naslib)["index"].to_numpy())
    first = rng.permutation(checked).tolist()
    rest = rng.permutation(np.setdiff1d(np.arange(total), checked)).tolist()
    return [int(i) for i in (first + rest)[:size]]


def done_indices(path: Path) -> set[int]:
    """Networks already scored in `path` (a rerun resumes after them); a row cut short by a kill is dropped."""
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    text = path.read_text()
    if not text.endswith("\n"):
        path.write_text(text[: text.rfind("\n") + 1])
    return set(pd.read_csv(path, usecols=["index"])["index"].astype(int))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1000, help="networks of the fixed sample to score (a prefix)")
    p.add_argument("--proxies", type=lambda v: tuple(v.split(",")), required=True)
    p.add_argument("--head", type=int, default=10, help="classifier outputs: 10 (CIFAR-10) or 100 (CIFAR-100)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="the search seed: scoring batch, teacher copy, inits")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    unknown = [n for n in args.proxies if n not in PROXIES]
    if unknown:
        raise SystemExit(f"unknown proxies {unknown}: choose from {', '.join(PROXIES)}")
    if args.head != 10 and any(PROXIES[n].reads_teacher for n in args.proxies):
        raise SystemExit("proxies that read the teacher need its 10 classes: score them with --head 10")
    config = SearchConfig(teacher="resnet56_cifar", teacher_weights=str(TEACHER_WEIGHTS), data=str(DATA),
                          budget="1T", spaces=("nb201",), proxies=args.proxies, objective="params", seed=args.seed,
                          batch_size=args.batch_size)
    ctx = prepare(config)
    batch, ref = ctx.evaluator.batch, ctx.evaluator.reference
    space = load_space("nb201", 32)
    gt = ground_truth().set_index("index")
    keys = list(dict.fromkeys(k for n in args.proxies for k in PROXIES[n].outputs))
    columns = ["index", "arch", "head", *keys, *(f"sec_{n}" for n in args.proxies)]
    done = done_indices(args.out)
    if done and list(pd.read_csv(args.out, nrows=0).columns) != columns:
        raise SystemExit(f"{args.out} holds other columns than --proxies {','.join(args.proxies)} writes: give "
                         "the same proxies to resume it, or another --out")
    todo = [i for i in sample_indices(args.size, args.sample_seed) if i not in done]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.out.is_file() or args.out.stat().st_size == 0
    with args.out.open("a", newline="") as f:
        writer = csv.DictWriter(f, columns)
        if new_file:
            writer.writeheader()
        for k, index in enumerate(todo):
            arch = gt.loc[index, "arch"]
            spec = spec_from_cell(arch)
            model = seeded_build(space, spec, args.head, args.seed)
            cost = Cost(macs=space.estimate_macs(spec, args.head), params=count_params(model))
            row: dict[str, object] = {"index": index, "arch": arch, "head": args.head}
            for name in args.proxies:  # one at a time, so that each is timed on its own
                start = time.process_time()
                row.update(score_candidate(model, batch, ref, [name], cost=cost))
                row[f"sec_{name}"] = round(time.process_time() - start, 4)
            writer.writerow(row)
            f.flush()
            if (k + 1) % 25 == 0:
                print(f"{args.out.name}: {k + 1}/{len(todo)} scored", flush=True)


if __name__ == "__main__":
    main()
