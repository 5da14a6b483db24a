"""The teacher's side of every DisWOT comparison, computed once per search on the fixed scoring batch."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.proxies.base import ScoringBatch, classifier_grad, forward_outputs, relation_gram, scoring_mode

WIDTH_MATCHES = ("projection", "pool", "correlation", "class")
#: what DisWOT's relation term reads: the last feature map (the paper) or the pooled features the classifier sees
RELATION_LAYERS = ("features", "pooled")


@dataclass(frozen=True, eq=False)
class TeacherReference:
    """The teacher's relation Gram and classifier gradient on the scoring batch, and how to compare students.

    `width_match` says how DisWOT's semantic term compares a student of another width (autokd.proxies.diswot);
    `seed` fixes the random projection and any randomness while scoring. Change either with
    `dataclasses.replace`, without rerunning the teacher.
    """

    relation: torch.Tensor | None  # (B, B) row-normalised Gram of the teacher's `relation_layer` outputs
    grad: torch.Tensor | None  # (K, C_t) gradient of mean cross-entropy w.r.t. the teacher's classifier weight
    labels: torch.Tensor  # (B,) the scoring batch's labels, to check that students see the same batch
    seed: int = 0
    width_match: str = "projection"
    relation_layer: str = "features"
    # teacher-side tensors derived per student width (projected gradients, channel correlations)
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.width_match not in WIDTH_MATCHES:
            choices = ", ".join(WIDTH_MATCHES)
            raise AutokdError(f"unknown width_match {self.width_match!r}: use one of {choices}")
        if self.relation_layer not in RELATION_LAYERS:
            layers = ", ".join(RELATION_LAYERS)
            raise AutokdError(f"unknown relation_layer {self.relation_layer!r}: use one of {layers}")

    @classmethod
    def without_teacher(cls, labels: torch.Tensor, seed: int = 0) -> TeacherReference:
        """The batch's labels and seed only, for searches whose scores do not read the teacher (no forward)."""
        return cls(None, None, labels.detach().cpu().clone(), seed)

    @property
    def has_teacher(self) -> bool:
        return self.grad is not None

    @property
    def batch_size(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return self.grad.shape[0]

    @property
    def width(self) -> int:
        return self.grad.shape[1]

    def check_batch(self, batch: ScoringBatch) -> None:
        """Raise unless `batch` looks like the batch this reference was computed on (same size and labels)."""
        if batch.size != self.batch_size or not torch.equal(batch.labels.cpu(), self.labels):
            raise AutokdError(
                "the scoring batch differs from the one the teacher reference was computed on: "
                "score every candidate on the batch passed to teacher_reference"
            )


def teacher_reference(
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    width_match: str = "projection",
    batch_stats: bool = False,
    relation_layer: str = "features",
) -> TeacherReference:
    """Run the teacher once, in eval mode and without grad, and keep what DisWOT compares students against.

    `batch_stats=True` puts the teacher's BatchNorm on batch statistics, as students are scored; this suits a
    randomly initialised teacher, whose running statistics mean nothing (as in the DisWOT paper).
    """
    batch = ScoringBatch(images, labels)
    with scoring_mode(teacher, batch_stats=batch_stats, seed=seed), torch.no_grad():
        out = forward_outputs(teacher, batch.images)
        relation = relation_gram(out.features if relation_layer == "features" else out.pooled)
        grad = classifier_grad(out.logits, out.pooled, batch.labels)
    return TeacherReference(relation, grad, batch.labels.detach().cpu().clone(), seed, width_match, relation_layer)


def random_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with every parameter re-initialised (each layer's own reset_parameters), seeded."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return clone.eval()
