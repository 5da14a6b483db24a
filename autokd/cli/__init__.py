"""The `autokd` command line: a thin shell over the library API."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from autokd.cli.common import Parser, int_in
from autokd.cli.recommend import add_recommend_args, cmd_recommend
from autokd.cli.search import add_refine_args, add_search_args, add_supernet_args, cmd_search
from autokd.cli.train import add_run_args, add_train_args, cmd_finetune_teacher, cmd_run, cmd_train
from autokd.errors import AutokdError


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autokd.storage import masked_url, open_storage

    url = args.storage
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise AutokdError(f"no study database at {url[len('sqlite:///'):]}: run `autokd search --out DIR` first")
    storage = open_storage(url)
    import optuna_dashboard

    print(f"optuna-dashboard on http://{args.host}:{args.port} for {masked_url(url)} (Ctrl-C to stop)",
          flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="autokd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="rank and evolve students under a MAC budget, no training")
    add_search_args(search)
    add_refine_args(search)
    add_supernet_args(search)
    search.set_defaults(func=cmd_search)
    train = sub.add_parser("train", help="distil a student from the teacher (resumable; torchrun for many GPUs)")
    add_train_args(train)
    train.set_defaults(func=cmd_train)
    finetune = sub.add_parser("finetune-teacher", help="fine-tune the teacher on your data before distilling")
    add_train_args(finetune, student=False)
    finetune.set_defaults(func=cmd_finetune_teacher, recipe="none")
    run = sub.add_parser("run", help="search, distil the top candidates, rank them by trained accuracy (resumable)")
    add_run_args(run)
    run.set_defaults(func=cmd_run)
    rec = sub.add_parser("recommend", help="KD recipes for this data and pair, ranked by a meta-model over the "
                                           "knowledge base of KD runs (--tune N: then tune them with short runs)")
    add_recommend_args(rec)
    rec.set_defaults(func=cmd_recommend)
    dash = sub.add_parser("dashboard", help="open a study in optuna-dashboard")
    dash.add_argument("--storage", default="sqlite:///autokd.db", help="the study's storage URL")
    dash.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=int_in(1, 65535), default=8080)
    dash.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed in one line
        return int(done.code or 0)
    logging.basicConfig(level=logging.INFO, format="autokd: %(message)s", stream=sys.stderr)
    for noisy in ("optuna", "timm", "fvcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
    try:
        return args.func(args)
    except AutokdError as err:
        print(f"autokd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autokd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130

