"""DisWOT (Dong et al., CVPR 2023): how similar a student is to the teacher, from one forward pass.

score = -(M_r + M_s), higher = more similar = better student; 0 is the maximum (the teacher itself).

- M_r, relation term (similarity-preserving KD): `||G_t - G_s||_F^2 / B^2` with G the row-normalised B x B
  Gram of the flattened last feature map (`relation_layer="pooled"`: of the pooled features the classifier
  sees). Only the batch size must match.
- M_s, semantic term: the authors' inter-channel-correlation (ICKD) loss on the classifier-weight gradients g
  (K x C) of mean cross-entropy, in its O(K*C) closed form
  `M_s = 2 - 2/(C*K) * sum_k (sum_i sign(g^s_ki) sign(g^t_ki)) * cos(g^s_k, g^t_k)`.
  g = (softmax(z) - onehot(y))^T h / B comes from the forward pass, so no backward pass is run.

Students of another width than the teacher (C_s != C_t), `TeacherReference.width_match`:
- "projection" (default, as the authors' Auto-Prox): the teacher's gradient goes through a fixed Gaussian
  projection R (C_t x C_s, scale 1/sqrt(C_s), derived from the reference's seed and cached per (C_t, C_s)).
  Since g_t R = (softmax(z) - onehot(y))^T (h_t R) / B, this is the gradient the teacher would have with a
  fixed random 1x1 conv on its pooled features. Equal widths are compared directly, as in DisWOT.
- "pool": average the teacher's gradient over groups of neighbouring channels down (or up) to C_s
  (`adaptive_avg_pool1d`; identity at equal width), which keeps the sign structure that pooled ReLU features
  give every class row.

- "correlation": compare the C x C channel correlations g^T g (rows L2-normalised), average-pooled to the
  smaller width and renormalised, by `||A_s - A_t||_F^2 / C` (0 to 4, like M_s). It replaces M_s for every
  student, equal widths too, so that one search compares one quantity. Pooling assumes that neighbouring
  channel indices are related, which random networks do not promise; the option exists to be measured.
- "class": compare the K x K class relations g g^T (rows L2-normalised) by `||A_s - A_t||_F^2 / K` (0 to 4).
  Classes index both gradients the same way whatever the widths, so nothing is projected, pooled or resized;
  like "correlation" it replaces M_s for every student. Row k of g is the mean feature of the batch weighted
  by (p_k - y_k), so A says which classes the network's features already tell apart, and how alike.

None is neutral, measured on CIFAR-10 JPEGs with the trained ResNet-56 teacher (C_t = 64), 40 random
cifar_resnet students: with "projection", M_s is 1.96 +- 0.02 for every student narrower than 64 and 0.88 for
width 64, so among mismatched widths M_s carries almost no signal and equal-width students are favoured; with
"pool", M_s shrinks with the student's width (0.14 at width 8), so a 200-trial search under 50 MMACs ranked
the narrowest students first. Against trained students (benchmarks/ranking/bench_proxy_variants.py,
docs/evidence.md) the projection ranked distilled accuracy best of the four, so it stays the default;
`--width-match` picks another.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from autokd.errors import AutokdError
from autokd.proxies.base import Probe, Proxy, classifier_grad, relation_gram
from autokd.proxies.reference import TeacherReference


def relation_distance(gram_s: torch.Tensor, gram_t: torch.Tensor) -> float:
    """M_r = ||G_t - G_s||_F^2 / B^2 between two row-normalised B x B relation Grams."""
    return float((gram_t - gram_s).pow(2).sum() / gram_s.shape[0] ** 2)


def semantic_distance(grad_s: torch.Tensor, grad_t: torch.Tensor) -> float:
    """M_s, the ICKD loss between two K x C gradients, in O(K*C).

    Equals `2 - 2/(C*K) * sum_k (sum_i sign(s_ki) sign(t_ki)) cos(s_k, t_k)` when no entry is exactly zero;
    an entry that is zero in one (both) gradient(s) adds 1 (0) instead of 2 to the leading 2*C*K, as the
    direct form does.
    """
    k, c = grad_s.shape
    grad_s, grad_t = grad_s.double(), grad_t.double()
    agree = (grad_s.sign() * grad_t.sign()).sum(1)
    cos = F.cosine_similarity(grad_s, grad_t, dim=1)
    nonzero = (grad_s != 0).sum(1) + (grad_t != 0).sum(1)
    return float((nonzero - 2 * agree * cos).sum() / (c * k))


def correlation_distance(grad_s: torch.Tensor, grad_t: torch.Tensor) -> float:
    """`||A_s - A_t||_F^2 / C` between row-normalised channel correlations g^T g, pooled to the smaller C."""
    return _compare_correlations(channel_correlation(grad_s), channel_correlation(grad_t))


def channel_correlation(grad: torch.Tensor) -> torch.Tensor:
    """The C x C channel correlation g^T g of a K x C gradient, each row L2-normalised."""
    grad = grad.double()
    return F.normalize(grad.T @ grad, dim=1)


def class_relation(grad: torch.Tensor) -> torch.Tensor:
    """The K x K class relation g g^T of a K x C gradient, each row L2-normalised (any width C)."""
    grad = grad.double()
    return F.normalize(grad @ grad.T, dim=1)


def class_distance(grad_s: torch.Tensor, grad_t: torch.Tensor) -> float:
    """`||A_s - A_t||_F^2 / K` between the class relations of two K x C gradients (widths may differ)."""
    return _relations_gap(class_relation(grad_s), class_relation(grad_t))


def _relations_gap(rel_s: torch.Tensor, rel_t: torch.Tensor) -> float:
    return float((rel_s - rel_t).pow(2).sum() / len(rel_s))


def _compare_correlations(corr_s: torch.Tensor, corr_t: torch.Tensor) -> float:
    size = min(len(corr_s), len(corr_t))
    return _relations_gap(_pool_square(corr_s, size), _pool_square(corr_t, size))


def _pool_square(matrix: torch.Tensor, size: int) -> torch.Tensor:
    if len(matrix) == size:
        return matrix
    return F.normalize(F.adaptive_avg_pool2d(matrix[None, None], size)[0, 0], dim=1)


@lru_cache(maxsize=64)
def random_projection(c_in: int, c_out: int, seed: int = 0) -> torch.Tensor:
    """The fixed C_in x C_out Gaussian projection (std 1/sqrt(C_out)) of a seed, from its own generator."""
    state = int(np.random.SeedSequence([seed, c_in, c_out]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(state)
    return torch.randn(c_in, c_out, generator=generator) / c_out**0.5


def diswot_distances(
    features: torch.Tensor,
    pooled: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref: TeacherReference,
) -> tuple[float, float]:
    """(M_r, M_s) of a student's forward outputs on the scoring batch against the teacher reference."""
    if not ref.has_teacher:
        raise AutokdError("'diswot' compares students with the teacher, but this reference was made without it: "
                          "build it with teacher_reference(teacher, images, labels)")
    if logits.shape[1] != ref.num_classes:
        raise AutokdError(
            f"student has {logits.shape[1]} classes but the teacher has {ref.num_classes}: "
            "build students with the teacher's num_classes"
        )
    layer = features if ref.relation_layer == "features" else pooled
    m_r = relation_distance(relation_gram(layer), ref.relation.to(layer.device))
    grad_s = classifier_grad(logits, pooled, labels)
    grad_t = ref.grad.to(grad_s.device)
    width, match = grad_s.shape[1], ref.width_match

    def teacher_side(make):  # derived once per (width match, student width, device), then reused
        key = (match, width, str(grad_s.device))
        if key not in ref.cache:
            ref.cache[key] = make()
        return ref.cache[key]

    if match == "correlation":
        corr_t = teacher_side(lambda: channel_correlation(grad_t))
        return m_r, _compare_correlations(channel_correlation(grad_s), corr_t)
    if match == "class":
        return m_r, _relations_gap(class_relation(grad_s), teacher_side(lambda: class_relation(grad_t)))
    if match == "pool":
        pooled_t = teacher_side(lambda: F.adaptive_avg_pool1d(grad_t.unsqueeze(0), width).squeeze(0))
        return m_r, semantic_distance(grad_s, pooled_t)
    if width != ref.width:
        grad_t = teacher_side(lambda: grad_t @ random_projection(ref.width, width, ref.seed).to(grad_t.device))
    return m_r, semantic_distance(grad_s, grad_t)


def _diswot(probe: Probe) -> dict[str, float]:
    out = probe.outputs
    m_r, m_s = diswot_distances(out.features, out.pooled, out.logits, probe.batch.labels, probe.ref)
    return {"diswot": 0.0 - (m_r + m_s), "diswot_relation": m_r, "diswot_semantic": m_s}


DISWOT = Proxy("diswot", _diswot, outputs=("diswot", "diswot_relation", "diswot_semantic"), reads_teacher=True)
