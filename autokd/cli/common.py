"""Argument types and options shared by several `autokd` commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from autokd.errors import AutokdError
from autokd.io import check_writable_dir


class Parser(argparse.ArgumentParser):
    """Usage errors in one line that points to --help (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {low} to {high}" if high is not None
                                             else f"{value} is out of range: give {low} or more")
        return value

    return parse


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """--recipe, --baseline and --teacher-cache, shared by `train` and `run`."""
    p.add_argument("--recipe", help="a preset (kd, dkd, dist, nkd, kd_ls, fitnet, minilm, none, kd_adamw), a "
                                    "recipe YAML/JSON file, or auto: the top `autokd recommend` from the knowledge "
                                    "base (default: dist for CNN students, kd_adamw for ViTs)")
    p.add_argument("--baseline", action="store_true", help="also train each student without KD and report the gain")
    p.add_argument("--teacher-cache", action="store_true", help="cache the teacher's top-k outputs (TinyViT-style)")


def add_kb_args(p: argparse.ArgumentParser, opt_out: bool = True) -> None:
    """--kb, --no-starter-kb (and --no-kb): the knowledge base of KD runs that recommendations learn from."""
    p.add_argument("--kb", help="your knowledge base CSV, read with autokd's starter KB; runs are added to it "
                                "(default $AUTOKD_KB or ~/.cache/autokd/kb.csv)")
    p.add_argument("--no-starter-kb", action="store_true",
                   help="recommend from your knowledge base alone, without the starter KB that ships with autokd")
    if opt_out:
        p.add_argument("--no-kb", action="store_true", help="do not append this run's results to the knowledge base")


def run_folder(args: argparse.Namespace) -> tuple[Path, bool]:
    resume = args.resume
    out = Path(resume) if isinstance(resume, str) else (Path(args.out) if args.out else None)
    if out is None:
        raise AutokdError("give the run folder with --out DIR (or --resume DIR)")
    return check_writable_dir(out), bool(resume)


def recipe_from(args: argparse.Namespace, name: str):
    from autokd.recipes import load_recipe

    return load_recipe(name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       teacher_cache=getattr(args, "teacher_cache", False))


def add_halving_args(p: argparse.ArgumentParser, prefix: str, schedule: str, images: str) -> None:
    """--PREFIX-epochs, --PREFIX-eta and --PREFIX-images: a successive-halving schedule of short KD runs."""
    p.add_argument(f"--{prefix}-epochs", type=int_in(1), default=3, help=f"{schedule} (default 3)")
    p.add_argument(f"--{prefix}-eta", type=int_in(2), default=3, help="keep 1/eta at each rung (default 3)")
    p.add_argument(f"--{prefix}-images", type=int_in(0), default=2000,
                   help=f"{images}, stratified (default 2000; 0 for all)")
