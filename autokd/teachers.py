"""Resolve `--teacher` into a model: an alias, a timm name, a CIFAR ResNet or `pkg.module:factory`.

Offline first: nothing is downloaded. Pretrained timm weights are used only when they are already in the local
Hugging Face cache or given as a file; otherwise the teacher is randomly initialised and autokd says so once.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.data import resolve_model_data_config
from timm.models import clean_state_dict, get_pretrained_cfg

from autokd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from autokd.errors import AutokdError

TEACHER_ALIASES: dict[str, str] = {
    "vit_t": "vit_tiny_patch16_224",
    "vit_s": "vit_small_patch16_224",
    "vit_b": "vit_base_patch16_224",
    "vit_l": "vit_large_patch16_224",
    "deit_t": "deit_tiny_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "mnv3_l": "mobilenetv3_large_100",
    "mnv3_s": "mobilenetv3_small_100",
    "effnet_b0": "efficientnet_b0",
    "convnext_t": "convnext_tiny",
    "convnext_atto": "convnext_atto",
    "convnext_femto": "convnext_femto",
    "convnext_pico": "convnext_pico",
    "convnext_nano": "convnext_nano",
    # the classic CIFAR ResNets (He et al. 2016, option-A shortcuts), built by autokd.spaces.cifar_resnet
    "resnet20_cifar": "resnet20_cifar",
    "resnet32_cifar": "resnet32_cifar",
    "resnet44_cifar": "resnet44_cifar",
    "resnet56_cifar": "resnet56_cifar",
}
CIFAR_RESNET_BLOCKS = {"resnet20_cifar": 3, "resnet32_cifar": 5, "resnet44_cifar": 7, "resnet56_cifar": 9}

# timm architecture class (or a base class) -> family
_FAMILIES = {
    "VisionTransformer": "vit",
    "ResNet": "resnet",
    "EfficientNet": "mobilenet",
    "MobileNetV3": "mobilenet",
    "ConvNeXt": "convnext",
    "CifarResNet": "cifar_resnet",
}


@dataclass
class Teacher:
    """A resolved teacher: the model in eval mode and the input pipeline it expects."""

    model: nn.Module
    name: str
    pretrained: bool
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    family: str
    num_classes: int
    notes: list[str] = field(default_factory=list)
    head_trained: bool = True  # False when the classifier was re-initialised for another class count

    def transform(self, training: bool = False, **augment):
        """timm's eval (or train) transform for this teacher's input size and normalisation."""
        if training:
            return train_transform(self.img_size, self.mean, self.std, self.interpolation, **augment)
        return eval_transform(self.img_size, self.mean, self.std, self.crop_pct, self.interpolation)


def resolve_teacher(name: str, num_classes: int, weights: str | Path | None = None,
                    img_size: int | None = None) -> Teacher:
    """Build teacher `name` (alias, timm name, `resnetNN_cifar`, `pkg.module:factory` or `file.py:factory`)
    with a `num_classes` classifier; `weights` is a local weights file; `img_size` overrides the input."""
    with hf_offline():
        return _resolve_teacher(name, num_classes, weights, img_size)


def _resolve_teacher(name: str, num_classes: int, weights: str | Path | None, img_size: int | None) -> Teacher:
    if num_classes < 2:
        raise AutokdError(f"teacher needs at least 2 classes, got num_classes={num_classes}")
    weights = _check_weights_path(weights)
    target = TEACHER_ALIASES.get(name, name)
    if target in CIFAR_RESNET_BLOCKS:
        teacher = _cifar_teacher(target, num_classes, weights, img_size)
    elif ":" in name:
        teacher = _factory_teacher(name, num_classes, weights, img_size)
    elif timm.is_model(target):
        teacher = _timm_teacher(target, num_classes, weights, img_size)
    else:
        raise AutokdError(_unknown_message(name))
    teacher.model.eval()
    if not teacher.pretrained and not teacher.notes:  # one line, shown by the caller (the CLI logs notes)
        teacher.notes.append(
            f"teacher {teacher.name} is randomly initialised (no weights file and none in the local cache), "
            "which DisWOT's training-free proxy is designed for; to use a trained teacher give its weights "
            "file (--teacher-weights PATH) or put timm's weights in the Hugging Face cache"
        )
    return teacher


def infer_family(model: nn.Module) -> str:
    """'vit', 'resnet', 'mobilenet', 'convnext', 'cifar_resnet' or 'other', from the model's classes."""
    for cls in type(model).__mro__:
        if cls.__name__ in _FAMILIES:
            return _FAMILIES[cls.__name__]
    return "other"


@contextmanager
def hf_offline() -> Iterator[None]:
    """Hugging Face Hub offline inside the block only (nothing downloads), as it was after it."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    old_flag = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:  # huggingface_hub reads the variable once, at import
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_flag


def _check_weights_path(weights: str | Path | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise AutokdError(f"teacher weights file {str(path)!r} does not exist: give the path to a .pth, .pt, "
                          ".th or .safetensors file")
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`: safetensors, or torch.load with weights_only (a `state_dict`/`model` entry
    unwrapped, `module.` prefixes stripped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):  # timm checkpoints keep their args
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AutokdError(f"cannot read teacher weights {str(path)!r}: corrupt or not a state dict "
                          f"({type(e).__name__}); give a torch.save or safetensors state dict") from None
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AutokdError(f"teacher weights {str(path)!r} hold no state dict of tensors: "
                          "give a file saved with torch.save(model.state_dict(), path)")
    return clean_state_dict(obj)


def _cached_weights(name: str) -> bool:
    """Whether timm's pretrained weights for `name` are in the local cache (checked without network)."""
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str) for f in files)
    if cfg.url:
        from timm.models._hub import check_cached_file

        return bool(check_cached_file(cfg.url))
    return False


@contextmanager
def _timm_load_log() -> Iterator[list[logging.LogRecord]]:
    """Collect timm's pretrained-loading log records (it reports keys it could not load at INFO level),
    passing on to the usual handlers only those the logger's own level lets through."""
    logger = logging.getLogger("timm.models._builder")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
        for record in records:
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)


def timm_size_kwargs(name: str, img_size: int | None) -> dict:
    """`img_size` for timm models whose input size is fixed (ViTs: position embeddings sized, and resampled,
    for it); nothing for the others, which take any size."""
    cfg = get_pretrained_cfg(name)
    return {"img_size": img_size} if img_size and cfg is not None and cfg.fixed_input_size else {}


def _timm_teacher(name: str, num_classes: int, weights: Path | None, img_size: int | None) -> Teacher:
    kwargs: dict = {"num_classes": num_classes, **timm_size_kwargs(name, img_size)}
    if weights is not None:
        _read_state_dict(weights)  # a clear error for a missing or corrupt file before timm tries
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    pretrained = weights is not None or _cached_weights(name)
    source = str(weights) if weights is not None else "the local Hugging Face cache"
    with _timm_load_log() as records:
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            if not pretrained:
                raise
            raise AutokdError(f"weights from {source} do not fit {name} ({_first_line(e)}): "
                              f"give weights saved from a {name}") from None
    head_trained = pretrained
    if pretrained:
        head_trained = _check_timm_load(name, records, getattr(model, "pretrained_cfg", {}).get("classifier"), source)
    data_cfg = resolve_model_data_config(model)
    return Teacher(
        model=model,
        name=name,
        pretrained=pretrained,
        img_size=img_size or int(data_cfg["input_size"][-1]),
        mean=tuple(data_cfg["mean"]),
        std=tuple(data_cfg["std"]),
        crop_pct=float(data_cfg.get("crop_pct", 0.875)),
        interpolation=str(data_cfg.get("interpolation", "bicubic")),
        family=infer_family(model),
        num_classes=num_classes,
        head_trained=head_trained,
    )


def _check_timm_load(name: str, records: list[logging.LogRecord], classifier, source: str) -> bool:
    """Refuse a weights file whose tensors timm could not place (it only logs them when adapting the head);
    return whether the classifier itself came from the file."""
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for record in records:
        message = record.getMessage()
        if message.startswith("Missing keys ("):
            keys = message[len("Missing keys ("):message.index(") discovered")].split(", ")
            body = [k for k in keys if not any(k.startswith(h + ".") for h in heads)]
            if body:
                raise AutokdError(f"weights from {source} do not fit {name}: {len(body)} tensors missing "
                                  f"(e.g. {body[0]}); give weights saved from a {name}")
            return False  # only the classifier is missing: timm re-initialised it for this class count
    return True


def _cifar_teacher(name: str, num_classes: int, weights: Path | None, img_size: int | None) -> Teacher:
    from autokd.spaces.cifar_resnet import CifarResNet  # lazy: the spaces package is optional here

    n = CIFAR_RESNET_BLOCKS[name]
    state = _read_state_dict(weights) if weights is not None else None
    # a checkpoint fine-tuned on this data (autokd finetune-teacher) already has a head of num_classes
    head = num_classes if state is not None and state.get("linear.weight", torch.empty(0)).shape[:1] == (
        num_classes,) else 10
    model = CifarResNet(depths=(n, n, n), widths=(16, 32, 64), shortcut="A", num_classes=head)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise AutokdError(f"teacher weights {str(weights)!r} do not fit {name} ({_first_line(e)}): "
                              f"give a {name} checkpoint (keys conv1, layer1..3, linear)") from None
    if num_classes != head:
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(num_classes)
        else:
            model.linear = nn.Linear(model.linear.in_features, num_classes)
            model.num_classes = num_classes
    return Teacher(
        model=model,
        name=name,
        pretrained=weights is not None,
        head_trained=weights is not None and head == num_classes,
        img_size=img_size or 32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_pct=1.0,
        interpolation="bilinear",
        family="cifar_resnet",
        num_classes=num_classes,
    )


def _factory_teacher(spec: str, num_classes: int, weights: Path | None, img_size: int | None) -> Teacher:
    module_name, _, attr = spec.rpartition(":")
    factory = getattr(_import(module_name, spec), attr, None)
    if not callable(factory):
        raise AutokdError(f"teacher {spec!r}: {module_name} has no callable {attr!r}; give module:factory "
                          "where factory(num_classes=...) returns an nn.Module")
    try:
        model = factory(num_classes=num_classes) if _accepts_num_classes(factory) else factory()
    except Exception as e:
        raise AutokdError(f"teacher factory {spec!r} failed ({type(e).__name__}: {_first_line(e)}); "
                          "make factory(num_classes=...) return an nn.Module") from None
    if not isinstance(model, nn.Module):
        raise AutokdError(f"teacher factory {spec!r} returned a {type(model).__name__}, not an nn.Module")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = img_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    _fit_classifier(model, spec, num_classes, size)
    notes = []
    if weights is not None:
        _load_matching(model, _read_state_dict(weights), weights, spec)
    else:
        notes.append(f"teacher {spec} is used as its factory built it: autokd cannot tell whether it is "
                     "trained (DisWOT's proxy works with a random teacher); give --teacher-weights PATH "
                     "to mark it trained")
    return Teacher(
        model=model,
        name=spec,
        pretrained=weights is not None,
        img_size=size,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        family=infer_family(model),
        num_classes=num_classes,
        notes=notes,
    )


def _import(module_name: str, spec: str):
    """Import a dotted module (the working directory included) or a `path/to/file.py`."""
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ModuleNotFoundError(f"no file {module_name}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())  # a console script does not see the user's working directory
        return importlib.import_module(module_name)
    except Exception as e:
        raise AutokdError(f"teacher {spec!r}: cannot import {module_name} ({type(e).__name__}: "
                          f"{_first_line(e)}); give an importable module or a .py file before ':'") from None


def _accepts_num_classes(factory) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _fit_classifier(model: nn.Module, spec: str, num_classes: int, img_size: int) -> None:
    """Make the model predict `num_classes` classes, resetting its head through timm's `reset_classifier`."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    outputs = getattr(head, "out_features", None)
    if outputs is None:
        with torch.no_grad():
            was_training = model.training
            outputs = model.eval()(torch.zeros(1, 3, img_size, img_size)).shape[-1]
            model.train(was_training)
    if outputs == num_classes:
        return
    if not hasattr(model, "reset_classifier"):
        raise AutokdError(f"teacher factory {spec!r} returns {outputs} classes, the data has {num_classes}: "
                          "accept num_classes in the factory or give the model a reset_classifier method")
    model.reset_classifier(num_classes)


def _load_matching(model: nn.Module, state: dict[str, torch.Tensor], path: Path, spec: str) -> None:
    """Load `state`, leaving out only a classifier of another size; any other mismatch is an error."""
    own = model.state_dict()
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_names = [n for n, m in model.named_modules() if head is not None and m is head]
    is_head = lambda key: any(key.startswith(h + ".") for h in head_names)  # noqa: E731
    state = {k: v for k, v in state.items() if not (is_head(k) and k in own and own[k].shape != v.shape)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise AutokdError(f"teacher weights {str(path)!r} do not fit {spec} ({_first_line(e)})") from None
    wrong = [k for k in missing if not is_head(k)] + list(unexpected)
    if wrong:
        raise AutokdError(f"teacher weights {str(path)!r} do not fit {spec}: {len(wrong)} tensors do not "
                          f"match (e.g. {wrong[0]}); give weights saved from this model")


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(TEACHER_ALIASES), n=3, cutoff=0.6)
    timm_close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
    close += [m for m in timm_close if m not in close]
    hint = f"did you mean {', '.join(close[:4])}? " if close else ""
    return (f"unknown teacher {name!r}: {hint}give an alias ({', '.join(list(TEACHER_ALIASES)[:6])}, ...), "
            "a timm model name or module:factory")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2])[:200] if lines else type(error).__name__
