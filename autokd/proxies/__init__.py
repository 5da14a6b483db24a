"""Training-free scores of a student: DisWOT (similarity to the teacher) and the baselines it must beat."""

from autokd.proxies.base import ForwardOutputs, Probe, Proxy, ScoringBatch, classifier_grad, relation_gram
from autokd.proxies.diswot import (
    channel_correlation,
    class_distance,
    class_relation,
    correlation_distance,
    diswot_distances,
    random_projection,
    relation_distance,
    semantic_distance,
)
from autokd.proxies.reference import (
    RELATION_LAYERS,
    WIDTH_MATCHES,
    TeacherReference,
    random_copy,
    teacher_reference,
)
from autokd.proxies.scoring import PROXIES, proxy_of, score_candidate

__all__ = [
    "PROXIES",
    "RELATION_LAYERS",
    "WIDTH_MATCHES",
    "ForwardOutputs",
    "Probe",
    "Proxy",
    "ScoringBatch",
    "TeacherReference",
    "channel_correlation",
    "classifier_grad",
    "class_distance",
    "class_relation",
    "correlation_distance",
    "diswot_distances",
    "random_copy",
    "random_projection",
    "relation_distance",
    "relation_gram",
    "proxy_of",
    "score_candidate",
    "semantic_distance",
    "teacher_reference",
]
