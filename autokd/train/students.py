"""Build the student to train: from a `top/<rank>.yaml` written by `autokd search`, a study trial, or timm."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
import yaml

from autokd.cost import count_macs, format_macs
from autokd.errors import AutokdError
from autokd.spaces import ArchSpec, load_space
from autokd.teachers import CIFAR_RESNET_BLOCKS, timm_size_kwargs

log = logging.getLogger("autokd")

STUDY_REF = re.compile(r"^study:(?P<name>.+)#(?P<trial>\d+)$")
DEFAULT_STORAGE = "sqlite:///autokd.db"


@dataclass
class Student:
    """A freshly built student and where it came from (the spec and search settings when it was searched)."""

    model: nn.Module
    name: str
    spec: ArchSpec | None = None
    img_size: int | None = None
    searched_macs: int | None = None
    budget: int | None = None
    study: dict[str, Any] | None = None  # {"storage", "study", "trial"} when it came from a study
    notes: list[str] = field(default_factory=list)


def student_space(student: Student) -> str:
    """The search space of `student`, or for a timm model "vit" when it embeds patches, else "resnet"."""
    if student.spec is not None:
        return student.spec.space
    return "vit" if hasattr(student.model, "patch_embed") else "resnet"


def build_from_spec(spec: ArchSpec, num_classes: int, img_size: int, *, budget: int | None = None,
                    name: str | None = None) -> Student:
    """Build `spec` with its search space (search_spaces/<space>.yaml); warn when it is over `budget`."""
    try:
        space = load_space(spec.space, img_size)
    except AutokdError as e:
        raise AutokdError(f"cannot rebuild student {spec}: {e}") from None
    try:
        model = space.build(spec, num_classes)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise AutokdError(f"cannot build student {spec} in space {spec.space!r} ({type(e).__name__}: {e}): give a "
                          "spec written by `autokd search` for this space") from None
    student = Student(model, name or str(spec), spec, img_size, budget=budget)
    if budget is not None:
        macs = count_macs(model, img_size)
        if macs > budget:
            student.notes.append(f"student {spec} has {format_macs(macs)} at {img_size} px, over the "
                                 f"{format_macs(budget)} budget it was searched for")
    return student


def student_from_yaml(path: str | Path, num_classes: int | None = None) -> Student:
    """A student from `top/<rank>.yaml` (keys `spec`, `search` with img_size/num_classes/budget, `macs`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AutokdError(f"student spec file {str(path)!r} does not exist: give a top/<rank>.yaml written "
                          "by `autokd search`, study:NAME#TRIAL or a timm model name")
    try:
        doc = yaml.safe_load(path.read_text())
        spec = ArchSpec.from_dict(doc["spec"])
        search = doc.get("search") or {}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise AutokdError(f"student spec file {str(path)!r} has no valid `spec` ({type(e).__name__}): give a "
                          "top/<rank>.yaml written by `autokd search`") from None
    img_size = int(search.get("img_size") or 224)
    student = build_from_spec(spec, _num_classes(num_classes, search, str(path)), img_size,
                              budget=search.get("budget"), name=f"{path.stem} {spec}")
    student.searched_macs = doc.get("macs")
    if search.get("study") and search.get("storage"):
        student.study = {"storage": search["storage"], "study": search["study"], "trial": doc.get("trial")}
    return student


def student_from_trial(storage: str, study_name: str, trial: int, num_classes: int | None = None) -> Student:
    """A student from trial number `trial` of a search study (its user_attrs["spec"])."""
    import optuna

    from autokd.storage import masked_url, open_storage

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise AutokdError(f"no study database at {storage!r}: give the --storage of the search (its default is "
                          "sqlite:///OUT/autokd.db)")  # opening it would create an empty one
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise AutokdError(f"no study {study_name!r} in {masked_url(storage)}: give a study made by `autokd search` "
                          "(see `autokd dashboard` for the names)") from None
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
    if not trials or "spec" not in trials[0].user_attrs:
        raise AutokdError(f"study {study_name!r} has no scored trial #{trial}: pick a trial number from its "
                          "leaderboard")
    search = study.user_attrs.get("autokd", {})
    spec = ArchSpec.from_dict(trials[0].user_attrs["spec"])
    student = build_from_spec(spec, _num_classes(num_classes, search, f"study {study_name!r}"),
                              int(search.get("img_size") or 224), budget=search.get("budget"),
                              name=f"{study_name}#{trial} {spec}")
    student.searched_macs = trials[0].user_attrs.get("macs")
    student.study = {"storage": storage, "study": study_name, "trial": trial}
    return student


def student_from_timm(name: str, num_classes: int, img_size: int | None = None) -> Student:
    """A randomly initialised timm model `name` with a `num_classes` head; `resnetNN_cifar` (the CIFAR ResNets
    the teacher side knows) is built in the `cifar_resnet` space."""
    if name in CIFAR_RESNET_BLOCKS:
        n = CIFAR_RESNET_BLOCKS[name]
        spec = ArchSpec.make("cifar_resnet", depths=[n, n, n], widths=[16, 32, 64], shortcut="A")
        return build_from_spec(spec, num_classes, img_size or 32, name=name)
    if not timm.is_model(name):
        raise AutokdError(f"unknown student {name!r}: give a top/<rank>.yaml from `autokd search`, "
                          "study:NAME#TRIAL or a timm model name")
    model = timm.create_model(name, num_classes=num_classes, **timm_size_kwargs(name, img_size))
    return Student(model, name, img_size=img_size)


def resolve_student(ref: str, num_classes: int, *, storage: str | None = None,
                    img_size: int | None = None) -> Student:
    """`ref` is a spec YAML path, `study:NAME#TRIAL` (in `storage`, default sqlite:///autokd.db) or a timm
    name; notes (e.g. over budget) are logged."""
    match = STUDY_REF.match(ref)
    if match:
        trial = int(match["trial"])
        student = student_from_trial(storage or DEFAULT_STORAGE, match["name"], trial, num_classes)
    elif ref.endswith((".yaml", ".yml")) or Path(ref).is_file():
        student = student_from_yaml(ref, num_classes)
    else:
        student = student_from_timm(ref, num_classes, img_size)
    for note in student.notes:
        log.warning(note)
    return student


def _num_classes(given: int | None, search: dict, where: str) -> int:
    if given is not None:
        return given
    if search.get("num_classes"):
        return int(search["num_classes"])
    raise AutokdError(f"{where} does not record the class count: give num_classes (the data's class count)")
