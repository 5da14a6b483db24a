"""`autokd run` as a library call: search, distil the top distinct candidates, rank them by trained accuracy.

Every stage is recorded in the study's user_attrs (`stage/search`, `stage/train/<rank>`: running | done, with
`artifacts/...` paths), and each stage leaves its files on disk, so running the same call again after a crash
redoes nothing finished: search trials are kept (the study resumes), finished trainings are skipped
(out/train/<rank>/results.json), an interrupted training resumes from its last.pt.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from math import nan
from pathlib import Path

import optuna
import pandas as pd
import torch

from autokd.advise import add_runs, profile_of, recipe_auto, student_profile
from autokd.data import load_data
from autokd.errors import AutokdError
from autokd.io import write_csv, write_json, write_text
from autokd.recipes import CNN_SPACES, Recipe, default_recipe, load_recipe
from autokd.recipes.kb import kb_path
from autokd.recipes.recommend import grid_id
from autokd.report import leaderboard
from autokd.search import SearchConfig, SearchContext, SearchResult, run_search
from autokd.spaces import ArchSpec
from autokd.supernet.evaluate import SupernetConfig, evaluate_spaces
from autokd.supernet.select import inherit_from_file
from autokd.train import Student, TrainResult, student_from_trial, student_from_yaml, train_students

log = logging.getLogger("autokd")


@dataclass
class RunResult:
    """The search, one TrainResult per trained rank, and the trained leaderboard (out/trained.csv)."""

    search: SearchResult
    trained: pd.DataFrame
    results: dict[int, TrainResult]
    out: Path
    seconds: float
    complete: bool = True  # False when a training was stopped (SIGTERM): run again to resume
    skipped: list[int] = field(default_factory=list)  # ranks whose finished training was reused
    ranked_by: str = ""  # the column that ranked the candidates: the search objective, or heldout_top1 (supernet)


def distinct_candidates(study: optuna.Study, objective: str, k: int,
                        fold: Callable[[ArchSpec], Hashable] | None = None) -> pd.DataFrame:
    """The top `k` complete trials by `objective` with distinct specs (evolution can score a spec twice); with
    `fold`, one per fold key (the leaderboard's distinct macro configurations)."""
    board = leaderboard(study, objective, fold=fold)
    if board.empty:
        return board
    board = board.drop_duplicates("spec_json", keep="first").head(k).reset_index(drop=True)
    board["rank"] = range(1, len(board) + 1)
    return board


def supernet_stage(search: SearchResult, config: SupernetConfig, top_k: int) -> pd.DataFrame:
    """The supernet evaluator after a search: K band supernets per searched space, trained on the search's data
    and distilled from its teacher; subnets ranked by held-out top-1 (out/supernet.csv, out/top/<rank>.yaml)."""
    ctx = search.context
    if search.out is None or ctx.data is None:
        raise AutokdError("--evaluator supernet trains supernets on your images under the search folder: give "
                          "--data and --out")
    recipes = {name: load_recipe(default_recipe(name)) for name in ctx.spaces}
    meta = {k: v for k, v in ctx.study_attrs().items() if k not in ("study", "storage")}

    def progress(space: str, band: int, entry: dict) -> None:  # the dashboard shows each supernet's epochs
        search.study.set_user_attr(f"supernet/{space}/band{band}", entry)

    start = time.perf_counter()
    frame = evaluate_spaces(ctx.spaces, ctx.budget.macs, ctx.teacher, ctx.data, recipes, search.out, config, meta,
                            top_k, device=ctx.evaluator.device, on_epoch=progress)
    supernet_report(search.out / "report.html", frame, config, time.perf_counter() - start)
    return frame


def run_pipeline(
    config: SearchConfig,
    out: str | Path,
    *,
    train_top: int = 3,
    recipe: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    baseline: bool = False,
    teacher_cache: bool = False,
    num_workers: int | None = None,
    compile: bool = False,
    top_k: int = 10,
    progress: bool = True,
    kb: str | None = None,
    starter_kb: bool = True,
    add_to_kb: bool = True,
    supernet: SupernetConfig | None = None,
    inherit: bool = False,
    all_trials: bool = False,
) -> RunResult:
    """Search (resumable), distil the `train_top` best distinct candidates into out/train/<rank>/ with `recipe`
    (default: `default_recipe` of each student's space; "auto": the knowledge base's recommendation for each
    student, see autokd.recipes.recommend), write out/trained.csv and a section in report.html. Finished
    trainings are added to the knowledge base `kb` (None: the default one) unless `add_to_kb` is False;
    "auto" reads it with the starter KB unless `starter_kb` is False. With
    `supernet`, the candidates are the supernet evaluator's best (`supernet_stage`); `inherit` starts each from
    its supernet weights. The candidates are distinct macro configurations, as the leaderboard shows them
    (`all_trials`: the best trials, whatever their configuration)."""
    start = time.perf_counter()
    out = Path(out)
    if train_top < 1:
        raise AutokdError("--train-top must be at least 1")
    if inherit and supernet is None:
        raise AutokdError("--inherit starts the students from supernet weights: use it with --evaluator supernet")
    recipes = {}  # checked before the search, so a typo costs nothing
    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, teacher_cache=teacher_cache)
    for name in {recipe} if recipe and recipe != "auto" else {default_recipe(s) for s in (*CNN_SPACES, "vit")}:
        recipes[name] = load_recipe(name, **overrides)

    search = run_search(config, out=out, top_k=top_k, progress=progress, check=_trained_teacher,
                        all_trials=all_trials)
    study, ctx = search.study, search.context
    teacher = ctx.teacher
    n_trials = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    study.set_user_attr("stage/search", "done")
    study.set_user_attr("artifacts/search", {"out": str(out), "trials": n_trials,
                                             "leaderboard": str(out / "leaderboard.csv")})

    if supernet is None:
        ranked_by, origin = config.objective, {}
        chosen = distinct_candidates(study, config.objective, train_top, search.fold)
    else:
        ranked_by, origin = "heldout_top1", {"evaluator": "supernet", "inherit": inherit}
        chosen = supernet_stage(search, supernet, top_k).head(train_top).assign(trial=-1)
        chosen["student_file"] = [str(out / "top" / f"{rank}.yaml") for rank in chosen["rank"]]
    # real data as the search read it; the synthetic demo set is drawn for the teacher's size and the seed
    data = ctx.data if config.data is not None else load_data(None, img_size=teacher.img_size, seed=config.seed)
    results: dict[int, TrainResult] = {}
    skipped: list[int] = []
    pending: dict[str, list[dict]] = {}  # recipe -> candidates still to train
    profiles: dict[int, dict] = {}  # rank -> the KB's task and pair features
    add_to_kb = add_to_kb and data.is_real  # the synthetic demo set is no task to learn recipes from
    for row in chosen.to_dict("records"):
        rank, trial = int(row["rank"]), int(row["trial"])
        if recipe == "auto" or add_to_kb:
            profiles[rank] = _profile(profiles, search, data, row, config)
        if recipe == "auto":
            name, chosen_recipe = _auto_recipe(out / "train" / str(rank), kb, profiles[rank], overrides, starter_kb)
            recipes[name] = chosen_recipe
        else:
            name = recipe or default_recipe(row["space"])
        finished = _check_folder(out / "train" / str(rank), trial, row["spec_json"], recipes[name], origin)
        if finished is not None:
            results[rank] = finished
            skipped.append(rank)
            study.set_user_attr(f"stage/train/{rank}", "done")
        else:
            pending.setdefault(name, []).append(row)
    groups = [(name, group) for name, rows in pending.items() for group in _resume_groups(rows, out)]
    for name, (group, resume) in groups:
        students, folders = [], []
        for row in group:
            rank, trial = int(row["rank"]), int(row["trial"])
            folders.append(out / "train" / str(rank))
            study.set_user_attr(f"stage/train/{rank}", "running")
            study.set_user_attr(f"artifacts/train/{rank}", {"dir": str(folders[-1]), "trial": trial, "recipe": name})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + rank)  # the same initial weights on a fresh rerun
                students.append(_candidate(search, row, inherit))
        log.info("%s student(s) %s together (one teacher pass per batch) with recipe %s",
                 "resuming" if resume else "training", ", ".join(str(r["rank"]) for r in group), name)
        trained = train_students(students, teacher, data, recipes[name], folders, device=config.device,
                                 resume=resume, seed=config.seed, baseline=baseline, num_workers=num_workers,
                                 compile_teacher=compile, compile_student=compile, progress=progress)
        if add_to_kb:
            added = add_runs(kb, trained, [profiles[int(r["rank"])] for r in group], recipes[name], config.seed)
            log.info("added %d run(s) to the knowledge base %s", added, kb_path(kb))
        for row, folder, result in zip(group, folders, trained):
            rank = int(row["rank"])
            results[rank] = result
            if result.stopped is None:
                study.set_user_attr(f"stage/train/{rank}", "done")
                study.set_user_attr(f"artifacts/train/{rank}", {
                    "dir": str(folder), "trial": int(row["trial"]), "recipe": name,
                    "results": str(folder / "results.json"), "checkpoint": result.best_checkpoint})
        if any(r.stopped is not None for r in trained):
            log.warning("training stopped (%s): run the same command again to resume", trained[0].stopped)
            break

    complete = len(results) == len(chosen) and all(r.stopped is None for r in results.values())
    trained = trained_frame(chosen, results, ranked_by)
    write_csv(out / "trained.csv", trained)
    append_report(out / "report.html", trained, ranked_by)
    if complete:
        study.set_user_attr("stage/report", "done")
        study.set_user_attr("artifacts/report", {"trained": str(out / "trained.csv"),
                                                 "report": str(out / "report.html")})
    return RunResult(search, trained, results, out, time.perf_counter() - start, complete, skipped, ranked_by)


def _auto_recipe(folder: Path, kb: str | None, profile: dict, overrides: dict,
                 starter: bool = True) -> tuple[str, Recipe]:
    """`recipe="auto"` for one candidate: the recommendation, or the recipe its resumed training started with."""
    marker = folder / "candidate.json"
    if marker.is_file():
        chosen = Recipe.from_dict(json.loads(marker.read_text())["recipe"])
    else:
        chosen, note = recipe_auto(kb, profile, starter, **overrides)
        log.info("student %s: %s", folder.name, note)
    return f"auto:{grid_id(chosen, profile['teacher_family'], profile['student_family'])}", chosen


def _candidate(search: SearchResult, row: dict, inherit: bool = False) -> Student:
    """A candidate's student: from its trial in the study, or from the supernet's top/<rank>.yaml (started from
    its supernet weights when `inherit`)."""
    num_classes = search.context.evaluator.num_classes
    if "student_file" not in row or pd.isna(row["student_file"]):
        return student_from_trial(search.storage_url, search.study.study_name, int(row["trial"]), num_classes)
    student = student_from_yaml(row["student_file"], num_classes)
    if inherit:
        path = inherit_from_file(student.model, student.spec, row["student_file"])
        log.info("student %s starts from its inherited weights in %s", row["rank"], path)
    return student


def _profile(profiles: dict[int, dict], search: SearchResult, data, row: dict, config: SearchConfig) -> dict:
    """The KB features of a candidate: the task's are measured once (the first candidate), the pair's each time."""
    with torch.random.fork_rng(devices=[]):
        student = _candidate(search, row)
    teacher = search.context.teacher
    if profiles:
        return student_profile(next(iter(profiles.values())), student, teacher.img_size)
    return profile_of(teacher, student, data, seed=config.seed, device=config.device)


def _resume_groups(rows: list[dict], out: Path) -> list[tuple[list[dict], bool]]:
    """The candidates whose training has a last.pt (they were trained together: resume them together), then
    the others (start them together)."""
    started = [r for r in rows if (out / "train" / str(r["rank"]) / "last.pt").is_file()]
    fresh = [r for r in rows if r not in started]
    return [(group, resume) for group, resume in ((started, True), (fresh, False)) if group]


def _trained_teacher(ctx: SearchContext) -> None:
    if not ctx.teacher.pretrained:
        raise AutokdError("distilling needs a trained teacher: give --teacher-weights (the search alone can use a "
                          "random one: `autokd search`)")


def _check_folder(folder: Path, trial: int, spec_json: str, recipe: Recipe, origin: dict | None = None
                  ) -> TrainResult | None:
    """The finished result in `folder`, or None to (re)start; a folder made for another student, recipe or
    origin (supernet, inherited weights) is refused rather than silently mixed."""
    marker = folder / "candidate.json"
    want = {"trial": trial, "spec": json.loads(spec_json), "recipe": recipe.to_dict(), **(origin or {})}
    if marker.is_file():
        have = json.loads(marker.read_text())
        if have != want:
            what = "student" if have.get("spec") != want["spec"] else "recipe or epochs (or --inherit)"
            raise AutokdError(f"{str(folder)!r} holds a training of another {what} (the search or the options "
                              "changed since): give a new --out, or the original options")
    else:
        write_json(marker, want)
    results = folder / "results.json"
    if results.is_file():
        done = TrainResult.load(results)
        if done.stopped is None:
            return done
    return None


def trained_frame(chosen: pd.DataFrame, results: dict[int, TrainResult], objective: str) -> pd.DataFrame:
    """One row per candidate: proxy rank, trained rank (by top-1, 1 = best), accuracy, cost and latency."""
    rows = []
    for row in chosen.to_dict("records"):
        r = results.get(int(row["rank"]))
        done = r is not None and r.stopped is None
        rows.append({
            "proxy_rank": int(row["rank"]), "trial": int(row["trial"]), "space": row["space"], "arch": row["arch"],
            objective: row[objective], "macs": int(row["macs"]), "params": int(row["params"]),
            "top1": r.top1 if done else nan, "best_top1": r.best_top1 if done else nan,
            "top5": r.top5 if done else nan, "no_kd_top1": _num(r.baseline_top1) if done else nan,
            "latency_ms": r.latency_ms if done else nan, "epochs": r.epochs if done else None,
            "recipe": r.recipe.get("loss") if r else None, "status": "done" if done else "pending",
        })
    frame = pd.DataFrame(rows)
    frame.insert(1, "trained_rank", frame["top1"].rank(ascending=False, method="min").astype("Int64"))
    return frame


def _num(value: float | None) -> float:
    return nan if value is None else value


def append_report(path: Path, trained: pd.DataFrame, objective: str) -> None:
    """Add (or replace) the 'trained students' section of report.html: both rankings side by side."""
    table = trained.to_html(index=False, float_format="{:.4g}".format, na_rep="-")
    done = trained.dropna(subset=["top1"])
    agreement = ""
    if len(done) >= 2:
        tau = done["proxy_rank"].corr(done["top1"].rank(ascending=False), method="kendall")
        agreement = f"<p>Kendall tau between the search ranking and the trained ranking: {tau:.3f}</p>"
    section = (f"<h2>Trained students</h2><p>search rank by {html.escape(objective)}; trained rank by top-1 "
               f"(1 = best)</p>{table}{agreement}")
    put_section(path, "trained", section)


def supernet_report(path: Path, frame: pd.DataFrame, config: SupernetConfig, seconds: float) -> None:
    """Add (or replace) the 'supernet evaluator' section of report.html: what ranked the candidates, its cost,
    and each band's best subnets."""
    best = frame.sort_values(["space", "band", "band_rank"]).groupby(["space", "band"]).head(3)
    columns = ["space", "band_range", "band_rank", "arch", "macs", "params", "heldout_top1", "kd_loss"]
    section = (f"<h2>Supernet evaluator</h2><p>ranked by held-out top-1 with inherited weights: {config.bands} "
               f"band(s), {config.epochs} supernet epoch(s), {config.trials} subnets scored per band, "
               f"{len(frame)} scored in all, {seconds:.0f} s</p>"
               f"{best[columns].to_html(index=False, float_format='{:.4g}'.format)}")
    put_section(path, "supernet", section)


def put_section(path: Path, name: str, section: str) -> None:
    """Put `section` in report.html between its markers (replacing an earlier one), before the leaderboard."""
    start, end = f"<!-- autokd: {name} -->", f"<!-- /autokd: {name} -->"
    text = path.read_text() if path.is_file() else "<!doctype html><html><body></body></html>"
    if start in text:
        text = text[: text.index(start)] + text[text.index(end) + len(end):]
    section = start + section + end
    if "<h2>Leaderboard</h2>" in text:  # trained results first: they are the answer
        text = text.replace("<h2>Leaderboard</h2>", section + "<h2>Leaderboard</h2>", 1)
    else:
        text = text.replace("</body>", section + "</body>", 1)
    write_text(path, text)
