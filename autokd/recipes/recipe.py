"""Recipe: one knowledge-distillation recipe (loss, weights, optimiser, schedule, augmentation).

A recipe is a frozen value, validated on construction, that round-trips through YAML and JSON. Named presets
follow the reference implementations (mdistiller for CIFAR, DeiT for the AdamW variants); `Recipe.load` takes
a preset name or a .yaml/.json path.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autokd.errors import AutokdError
from autokd.io import write_text

#: logit losses and their parameters with defaults (the loss-ramp `warmup_epochs` of DKD is in epochs)
LOSS_PARAMS: dict[str, dict[str, float]] = {
    "none": {},
    "kd": {"temperature": 4.0},
    "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20.0},
    "dist": {"beta": 1.0, "gamma": 1.0, "tau": 1.0},
    "nkd": {"temperature": 1.0, "gamma": 1.5},
}
#: feature losses and their parameters with defaults
FEATURE_PARAMS: dict[str, dict[str, int]] = {
    "fitnet": {},
    "minilm": {"relation_heads": 12},
}
#: parameters that must be > 0 (all others must be >= 0)
_POSITIVE_PARAMS = {"temperature", "tau", "relation_heads"}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine",)
# "tensor": the standard augmentation done for the whole batch as tensor ops on the device (small images only);
# or a timm auto-augment string, e.g. "rand-m9-mstd0.5-inc1"
AUGMENTATIONS = ("standard", "none", "tensor")


@dataclass(frozen=True)
class Recipe:
    """A KD recipe. Defaults are Hinton KD with mdistiller's CIFAR optimiser (SGD 0.05, batch 64, 240 epochs).

    `loss_params` and `feature_params` are completed with the defaults of their loss; treat them as read-only.
    `warmup_epochs` is the learning-rate warm-up; DKD's loss ramp is `loss_params["warmup_epochs"]`.
    For AdamW, `momentum` is beta1.
    """

    loss: str = "kd"
    loss_params: dict[str, float] = field(default_factory=dict)
    logit_standardize: bool = False
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    feature_loss: str | None = None
    feature_weight: float = 0.0
    feature_params: dict[str, int] = field(default_factory=dict)
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 240
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    grad_clip: float | None = None
    augmentation: str = "standard"
    teacher_cache: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))
        _check_choice("loss", self.loss, LOSS_PARAMS)
        object.__setattr__(self, "loss_params", _complete("loss", self.loss, self.loss_params, LOSS_PARAMS))
        if self.feature_loss is not None:
            _check_choice("feature_loss", self.feature_loss, FEATURE_PARAMS)
            params = _complete("feature loss", self.feature_loss, self.feature_params, FEATURE_PARAMS)
        elif self.feature_params:
            raise AutokdError("feature_params are set but feature_loss is not: set feature_loss or drop them")
        else:
            params = {}
        object.__setattr__(self, "feature_params", params)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_augmentation(self.augmentation)
        for name in ("ce_weight", "kd_weight", "feature_weight", "weight_decay", "mixup", "cutmix"):
            _check_range(name, getattr(self, name), low=0.0)
        _check_range("lr", self.lr, low=0.0, open_low=True)
        _check_range("momentum", self.momentum, low=0.0, high=1.0)
        _check_range("label_smoothing", self.label_smoothing, low=0.0, high=1.0)
        _check_range("batch_size", self.batch_size, low=1)
        _check_range("epochs", self.epochs, low=1)
        _check_range("warmup_epochs", self.warmup_epochs, low=0.0, high=self.epochs)
        if self.grad_clip is not None:
            _check_range("grad_clip", self.grad_clip, low=0.0, open_low=True)
        if self.logit_standardize and self.loss == "none":
            raise AutokdError("logit_standardize needs a logit loss, not 'none': set loss or drop the flag")
        if self.teacher_cache and self.feature_loss is not None:
            raise AutokdError(
                f"feature_loss {self.feature_loss!r} needs live teacher features, which teacher_cache does "
                "not store: set teacher_cache: false or feature_loss: null"
            )

    @property
    def needs_teacher(self) -> bool:
        """Whether training needs teacher outputs at all (False for the CE-only baseline)."""
        return (self.loss != "none" and self.kd_weight > 0) or (
            self.feature_loss is not None and self.feature_weight > 0
        )

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated again); see `with_epochs` to rescale warm-ups too.
        A new loss or feature loss starts from its own default parameters unless they are given too."""
        data = self.to_dict()
        if changes.get("loss", self.loss) != self.loss:
            data["loss_params"] = {}
        if changes.get("feature_loss", self.feature_loss) != self.feature_loss:
            data["feature_params"] = {}
        return Recipe.from_dict({**data, **changes})

    def with_epochs(self, epochs: int) -> Recipe:
        """A copy for `epochs` epochs, with the learning-rate and loss warm-ups scaled in proportion."""
        scale = epochs / self.epochs
        params = dict(self.loss_params)
        if "warmup_epochs" in params:
            params["warmup_epochs"] = params["warmup_epochs"] * scale
        return self.replace(epochs=epochs, warmup_epochs=self.warmup_epochs * scale, loss_params=params)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build from a plain dict; unknown keys raise AutokdError naming the allowed ones."""
        if not isinstance(data, dict):
            raise AutokdError(f"a recipe must be a mapping of fields, got {type(data).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise AutokdError(f"unknown recipe key(s) {', '.join(unknown)}: allowed are {', '.join(allowed)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write as YAML, or as JSON when the suffix is .json."""
        path = Path(path)
        write_text(path, self.to_json() if path.suffix == ".json" else self.to_yaml())

    @classmethod
    def load(cls, source: str | Path) -> Recipe:
        """A preset by name (see `list_presets`) or a recipe from a .yaml/.yml/.json file."""
        path = Path(source)
        if str(source) in PRESETS:
            return cls.from_dict(PRESETS[str(source)])
        if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
            if not path.is_file():
                raise AutokdError(f"recipe file {str(path)!r} does not exist: check the path")
            try:
                data = yaml.safe_load(path.read_text())  # JSON is YAML
            except yaml.YAMLError as err:
                raise AutokdError(f"cannot parse recipe file {str(path)!r}: {err}".splitlines()[0]) from None
            return cls.from_dict(data or {})
        raise AutokdError(
            f"unknown recipe {str(source)!r}: use a preset ({', '.join(PRESETS)}) or a .yaml/.json file"
        )

    def __hash__(self) -> int:  # the params dicts are not hashable; the JSON form is
        return hash(self.to_json())


_ADAMW = dict(  # DeiT's ImageNet recipe: AdamW 5e-4 at batch 512, 300 epochs, RandAugment, mixup and cutmix
    optimizer="adamw", lr=5e-4, weight_decay=0.05, momentum=0.9, batch_size=512, epochs=300,
    warmup_epochs=5.0, label_smoothing=0.1, mixup=0.8, cutmix=1.0, augmentation="rand-m9-mstd0.5-inc1",
)
#: name -> recipe fields; the rest take the CIFAR defaults of `Recipe`
PRESETS: dict[str, dict[str, Any]] = {
    "none": dict(loss="none", ce_weight=1.0, kd_weight=0.0),
    "kd": dict(loss="kd", loss_params=dict(temperature=4.0), ce_weight=0.1, kd_weight=0.9),
    "dkd": dict(loss="dkd", loss_params=dict(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20.0),
                ce_weight=1.0, kd_weight=1.0),
    "dist": dict(loss="dist", loss_params=dict(beta=1.0, gamma=1.0, tau=1.0), ce_weight=1.0, kd_weight=1.0),
    "nkd": dict(loss="nkd", loss_params=dict(temperature=1.0, gamma=1.5), ce_weight=1.0, kd_weight=1.0),
    "kd_ls": dict(loss="kd", loss_params=dict(temperature=2.0), logit_standardize=True,
                  ce_weight=0.1, kd_weight=9.0),
    # feature weight untuned: mdistiller's 100 is for an intermediate hint layer with CE only
    "fitnet": dict(loss="kd", loss_params=dict(temperature=4.0), ce_weight=0.1, kd_weight=0.9,
                   feature_loss="fitnet", feature_weight=1.0),
    "kd_adamw": dict(loss="kd", loss_params=dict(temperature=1.0), ce_weight=0.5, kd_weight=0.5, **_ADAMW),
    "minilm": dict(loss="kd", loss_params=dict(temperature=1.0), ce_weight=0.5, kd_weight=0.5,
                   feature_loss="minilm", feature_weight=1.0, feature_params=dict(relation_heads=12),
                   **_ADAMW),
}


def load_recipe(source: str | Path, *, epochs: int | None = None, batch_size: int | None = None,
                lr: float | None = None, teacher_cache: bool = False) -> Recipe:
    """`Recipe.load(source)` with command-line overrides; new `epochs` rescale the warm-ups (`with_epochs`)."""
    return with_overrides(Recipe.load(source), epochs=epochs, batch_size=batch_size, lr=lr,
                          teacher_cache=teacher_cache)


def with_overrides(recipe: Recipe, *, epochs: int | None = None, batch_size: int | None = None,
                   lr: float | None = None, teacher_cache: bool = False) -> Recipe:
    """`recipe` with the command-line overrides that are given; new `epochs` rescale the warm-ups."""
    if epochs is not None:
        recipe = recipe.with_epochs(epochs)
    changes: dict[str, Any] = {k: v for k, v in (("batch_size", batch_size), ("lr", lr)) if v is not None}
    if teacher_cache:
        changes["teacher_cache"] = True
    return recipe.replace(**changes) if changes else recipe


#: spaces whose students are CNNs (the others are ViTs)
CNN_SPACES = ("cifar_resnet", "resnet", "mobilenet", "nb201")


def default_recipe(space: str) -> str:
    """The preset that suits a student of `space`: DIST (SGD) for CNNs, KD with AdamW for ViTs.

    DIST for CNNs: at the short schedules users run first it beats no KD where Hinton KD at T = 4 falls below
    it (tests/test_kd_real_data.py, benchmarks/results/kd_cifar10.json)."""
    return "dist" if space in CNN_SPACES else "kd_adamw"


def list_presets() -> list[str]:
    """Names accepted by `Recipe.load`."""
    return list(PRESETS)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    # YAML reads "5e-4" as a string and JSON may give 64.0 for an int: accept what converts exactly
    kind = str(kind)
    if value is None and "None" in kind:
        return None
    try:
        if kind.startswith("dict"):
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): _number(v) for k, v in value.items()}
        if kind.startswith("bool"):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        expected = kind.replace(" | None", " or null")
        raise AutokdError(f"recipe field {name!r} must be {expected}, got {value!r}") from None


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError
    number = float(value)
    return int(number) if isinstance(value, int) else number


def _check_choice(what: str, value: str, allowed: dict | tuple) -> None:
    if value not in allowed:
        raise AutokdError(f"unknown {what} {value!r}: allowed are {', '.join(allowed)}")


def _complete(what: str, name: str, params: dict[str, Any], table: dict[str, dict]) -> dict[str, Any]:
    defaults = table[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        bad = ", ".join(unknown)
        raise AutokdError(f"unknown parameter(s) {bad} for {what} {name!r}: allowed are {allowed}")
    merged = {**defaults, **params}
    for key, value in merged.items():
        if isinstance(defaults[key], int) and value != int(value):
            raise AutokdError(f"{what} {name!r}: {key} must be an integer, got {value!r}")
        merged[key] = type(defaults[key])(value)
        if value < 0 or (key in _POSITIVE_PARAMS and value == 0):
            sign = "> 0" if key in _POSITIVE_PARAMS else ">= 0"
            raise AutokdError(f"{what} {name!r}: {key} must be {sign}, got {value!r}")
    return merged


def _check_range(name: str, value: float, low: float, high: float | None = None, open_low: bool = False):
    if not math.isfinite(value) or value < low or (open_low and value == low) or (high is not None and value >= high):
        bound = f"{'>' if open_low else '>='} {low}" + ("" if high is None else f" and < {high}")
        raise AutokdError(f"recipe field {name!r} must be {bound}, got {value!r}")


def _check_augmentation(name: str) -> None:
    if name in AUGMENTATIONS:
        return
    from timm.data import auto_augment

    try:
        if name.startswith("rand"):
            auto_augment.rand_augment_transform(name, {})
        elif name.startswith("augmix"):
            auto_augment.augment_and_mix_transform(name, {})
        else:
            auto_augment.auto_augment_transform(name, {})
    except (AssertionError, KeyError, ValueError, IndexError):
        raise AutokdError(
            f"unknown augmentation {name!r}: use standard, tensor, none or a timm auto-augment string such as "
            "rand-m9-mstd0.5-inc1, augmix-m5-w4-d2 or original"
        ) from None
