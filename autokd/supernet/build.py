"""Build a band's supernet, and rebuild one from a checkpoint's config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autokd.errors import AutokdError
from autokd.spaces import SPACES, ArchSpec
from autokd.spaces.choice import ChoiceSpace
from autokd.supernet.bands import BandSpace
from autokd.supernet.base import Supernet
from autokd.supernet.cnn import CifarResNetSupernet, cnn_container
from autokd.supernet.vit import VitSupernet, vit_container

FAMILIES = {"vit": (VitSupernet, vit_container), "cifar_resnet": (CifarResNetSupernet, cnn_container)}
POOL = 200  # in-band specs whose elementwise maximum sizes a band's supernet


def supernet_for(space: ChoiceSpace, specs: Sequence[ArchSpec], num_classes: int) -> Supernet:
    """The smallest supernet of `space` that holds every spec of `specs`."""
    family = getattr(space, "family", None)
    if family not in FAMILIES:
        raise AutokdError(f"space {space.name!r} (family {family!r}) has no supernet: use one of {sorted(FAMILIES)}")
    cls, container = FAMILIES[family]
    return cls(space, container(space, specs), num_classes)


def band_supernet(band: BandSpace, *, include: Sequence[ArchSpec] = (), pool: int = POOL,
                  seed: int = 0) -> tuple[Supernet, ArchSpec, ArchSpec]:
    """(supernet, largest, smallest) of a band: the supernet holds `pool` random in-band specs, the band's
    largest and smallest found, and every spec of `include` (e.g. candidates to score later)."""
    specs = band.pool(pool, seed)
    largest, smallest = band.anchors(specs, seed)
    return supernet_for(band.space, [*specs, largest, smallest, *include], band.num_classes), largest, smallest


def rebuild_supernet(config: dict[str, Any]) -> Supernet:
    """An empty supernet of the shape `Supernet.config()` describes (load its weights after)."""
    cfg = config["space_config"]
    space = SPACES[cfg["family"]](cfg, config["img_size"])
    cls, _ = FAMILIES[space.family]
    return cls(space, ArchSpec.from_dict(config["container"]), config["num_classes"])
