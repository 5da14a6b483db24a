"""Search spaces: load one from autokd/search_spaces/*.yaml, and pick the default spaces for a teacher."""

from __future__ import annotations

from pathlib import Path

import yaml

from autokd.errors import AutokdError
from autokd.spaces.base import SearchSpace
from autokd.spaces.cifar_resnet import CifarResNetSpace
from autokd.spaces.mobilenet import MobileNetSpace
from autokd.spaces.nb201 import NB201Space
from autokd.spaces.resnet import ResNetSpace
from autokd.spaces.spec import ArchSpec
from autokd.spaces.vit import VitSpace

__all__ = ["SPACES", "ArchSpec", "SearchSpace", "available_spaces", "default_spaces", "load_space"]

SPACES: dict[str, type[SearchSpace]] = {
    "vit": VitSpace,
    "resnet": ResNetSpace,
    "mobilenet": MobileNetSpace,
    "cifar_resnet": CifarResNetSpace,
    "nb201": NB201Space,
}
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"  # package data: ships in the wheel

# Teacher families (timm model-name prefixes) grouped by the student spaces that suit them.
_TRANSFORMERS = (
    "vit",
    "deit",
    "beit",
    "eva",
    "swin",
    "cait",
    "xcit",
    "levit",
    "pit",
    "tnt",
    "twins",
    "crossvit",
)
_RESNETS = ("resnet", "resnext", "wide_resnet", "seresnet", "convnext", "regnet", "cifar_resnet", "res2net")
_MOBILES = ("mobilenet", "efficientnet", "mnasnet", "fbnet", "ghostnet", "tinynet", "lcnet", "mixnet")


def available_spaces() -> list[str]:
    """Names of the spaces in autokd/search_spaces/ (what `load_space` accepts besides a path)."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str, img_size: int) -> SearchSpace:
    """A space from autokd/search_spaces/{name}.yaml, or from a YAML file; its `family` key picks the class."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        path = SPACES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise AutokdError(
                f"unknown search space {name_or_path!r}: use one of {available_spaces()} or a YAML file path"
            )
    if not path.is_file():
        raise AutokdError(f"search space file {str(path)!r} does not exist; check the path")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AutokdError(
            f"search space file {str(path)!r} is not valid YAML: {exc}".splitlines()[0]
        ) from exc
    if not isinstance(config, dict):
        raise AutokdError(f"search space file {str(path)!r} must hold a mapping of option: value")
    family = config.get("family")
    if family not in SPACES:
        raise AutokdError(
            f"search space file {str(path)!r}: `family` is {family!r}; set it to one of {sorted(SPACES)}"
        )
    config.setdefault("name", path.stem)
    return SPACES[family](config, img_size)


def default_spaces(teacher_family: str, img_size: int) -> list[str]:
    """The spaces to search for a teacher family (a timm model-name prefix such as 'deit' or 'resnet')."""
    family = teacher_family.lower()
    if img_size <= 64:
        names = ["cifar_resnet", "vit"]
    elif family.startswith(_TRANSFORMERS):
        names = ["vit"]
    elif family.startswith(_MOBILES):
        names = ["mobilenet"]
    else:  # a CNN: its own family first where there is a space for it, then the cheap inverted residuals
        names = ["resnet", "mobilenet"] if family.startswith(_RESNETS) else ["mobilenet", "resnet"]
    if family in names:
        names.remove(family)
        names.insert(0, family)
    suited = [n for n in names if load_space(n, img_size).suits()]
    # No preferred space fits this resolution (e.g. no patch size divides it): offer any space that does.
    return suited or [
        n for n in ("mobilenet", "resnet", "cifar_resnet", "vit") if load_space(n, img_size).suits()
    ]
