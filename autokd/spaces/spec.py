"""ArchSpec: a family name plus its genes; hashable, so costs and scores are cached by spec."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: space name -> how its specs are named in tables (e.g. NAS-Bench-201's cell string)
_LABELS: dict[str, Callable[[ArchSpec], str]] = {}


def register_label(space: str, label: Callable[[ArchSpec], str]) -> None:
    """Name the specs of `space` by `label(spec)` in `ArchSpec.short()` (leaderboards, top/*.yaml, reports)."""
    _LABELS[space] = label


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: `space` names the search space, `genes` its (sorted, frozen) parameters."""

    space: str
    genes: tuple[tuple[str, Any], ...]

    @classmethod
    def make(cls, space: str, **genes: Any) -> ArchSpec:
        return cls(space, tuple(sorted((k, _freeze(v)) for k, v in genes.items())))

    def __getitem__(self, key: str) -> Any:
        for k, v in self.genes:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def replace(self, **changes: Any) -> ArchSpec:
        return ArchSpec.make(self.space, **{**self.as_dict()["genes"], **changes})

    def as_dict(self) -> dict[str, Any]:
        return {"space": self.space, "genes": {k: _thaw(v) for k, v in self.genes}}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        return cls.make(data["space"], **data["genes"])

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))

    def short(self) -> str:
        """A compact one-line summary: long per-layer lists shown as their range (or the space's own label)."""
        if self.space in _LABELS:
            return f"{self.space} {_LABELS[self.space](self)}"

        def fmt(v: Any) -> str:
            if isinstance(v, tuple) and len(v) > 4:
                return f"{min(v)}..{max(v)}"
            return str(_thaw(v)).replace(" ", "")

        return f"{self.space} " + " ".join(f"{k}={fmt(v)}" for k, v in self.genes)

    def __str__(self) -> str:
        body = ", ".join(f"{k}={_thaw(v)}" for k, v in self.genes)
        return f"{self.space}({body})"
