"""Training-free proxies: DisWOT's closed forms against direct ones, the scoring contract, the baselines."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from autokd.cost import Cost, count_macs, count_params
from autokd.errors import AutokdError
from autokd.proxies import (
    PROXIES,
    ScoringBatch,
    channel_correlation,
    classifier_grad,
    correlation_distance,
    random_projection,
    relation_distance,
    relation_gram,
    score_candidate,
    semantic_distance,
    teacher_reference,
)
from autokd.proxies.base import forward_outputs

NUM_CLASSES = 10


def resnet(name: str = "resnet10t", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=NUM_CLASSES)


def vit(depth: int = 2, width: int = 192, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=NUM_CLASSES,
        img_size=32,
        patch_size=4,
        depth=depth,
        embed_dim=width,
        num_heads=max(1, width // 64),
    )


class TinyNet(nn.Module):
    """A CNN with timm's three methods; `functional` uses F.relu instead of activation modules."""

    def __init__(self, width: int = 16, functional: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.Identity() if functional else nn.ReLU()
        self.functional = functional
        self.fc = nn.Linear(width, NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.functional else self.act(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.fixture(scope="module")
def batch() -> ScoringBatch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (16,), generator=generator)
    return ScoringBatch(images, labels)


# --- DisWOT's closed forms -------------------------------------------------------------------------------


def ickd_direct(grad_s: torch.Tensor, grad_t: torch.Tensor) -> torch.Tensor:
    """The authors' ICKD loss on classifier gradients as their code computes it (batch K classes, C channels).

    Per class k the C x C outer product g_k g_k^T, rows L2-normalised; sum of squared differences / (C*K).
    """
    k, c = grad_s.shape
    emb_s = F.normalize(torch.bmm(grad_s[:, :, None], grad_s[:, None, :]), dim=2)
    emb_t = F.normalize(torch.bmm(grad_t[:, :, None], grad_t[:, None, :]), dim=2)
    return (emb_s - emb_t).pow(2).sum() / (c * k)


def design_closed_form(grad_s: torch.Tensor, grad_t: torch.Tensor) -> torch.Tensor:
    """DESIGN.md's formula, literally: 2 - 2/(C*K) sum_k (sum_i sign(s_ki) sign(t_ki)) cos(s_k, t_k)."""
    k, c = grad_s.shape
    agree = (grad_s.sign() * grad_t.sign()).sum(1)
    return 2 - 2 / (c * k) * (agree * F.cosine_similarity(grad_s, grad_t, dim=1)).sum()


@pytest.mark.parametrize(("k", "c", "seed"), [(10, 64, 0), (3, 7, 1), (100, 32, 2), (1, 1, 3)])
def test_semantic_closed_form_equals_direct_ickd(k, c, seed):
    generator = torch.Generator().manual_seed(seed)
    grad_s = torch.randn(k, c, generator=generator, dtype=torch.float64)
    grad_t = 0.5 * grad_s + torch.randn(k, c, generator=generator, dtype=torch.float64)
    direct = float(ickd_direct(grad_s, grad_t))
    assert semantic_distance(grad_s, grad_t) == pytest.approx(direct, abs=1e-5)
    assert float(design_closed_form(grad_s, grad_t)) == pytest.approx(direct, abs=1e-5)
    assert semantic_distance(grad_s.float(), grad_t.float()) == pytest.approx(direct, abs=1e-5)


def test_semantic_closed_form_handles_exact_zeros_like_the_direct_form():
    # a dead channel (all-zero column) occurs in random ReLU nets; DESIGN.md's formula counts its entries as 2
    generator = torch.Generator().manual_seed(4)
    grad_s = torch.randn(10, 16, generator=generator, dtype=torch.float64)
    grad_t = torch.randn(10, 16, generator=generator, dtype=torch.float64)
    grad_s[:, 3] = 0
    grad_t[:, 3] = 0
    grad_t[:, 5] = 0
    direct = float(ickd_direct(grad_s, grad_t))
    assert semantic_distance(grad_s, grad_t) == pytest.approx(direct, abs=1e-12)
    assert float(design_closed_form(grad_s, grad_t)) - direct == pytest.approx(3 * 10 / (10 * 16), abs=1e-12)


def test_semantic_distance_bounds():
    grad = torch.randn(10, 32, generator=torch.Generator().manual_seed(5))
    assert semantic_distance(grad, grad) == pytest.approx(0.0, abs=1e-12)
    assert semantic_distance(grad, 3 * grad) == pytest.approx(0.0, abs=1e-12)  # scale-free
    # built on the outer products g_k g_k^T, the loss cannot tell a class row from its negation
    assert semantic_distance(grad, -grad) == pytest.approx(0.0, abs=1e-12)
    row_s, row_t = torch.tensor([[1.0, 1, 1, -10]]), torch.tensor([[1.0, 1, 1, 10]])
    assert semantic_distance(row_s, row_t) == pytest.approx(float(ickd_direct(row_s, row_t)), abs=1e-6)
    assert 2.9 < semantic_distance(row_s, row_t) < 4.0


def test_relation_term_matches_similarity_preserving_loss():
    generator = torch.Generator().manual_seed(6)
    feats_s = torch.randn(8, 4, 3, 3, generator=generator)
    feats_t = torch.randn(8, 5, 2, 2, generator=generator)  # only the batch size must match

    def gram(feats):
        rows = [[float(feats[i].flatten() @ feats[j].flatten()) for j in range(8)] for i in range(8)]
        return [[v / sum(x * x for x in row) ** 0.5 for v in row] for row in rows]

    gs, gt = gram(feats_s), gram(feats_t)
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(8) for j in range(8)) / 64
    assert relation_distance(relation_gram(feats_s), relation_gram(feats_t)) == pytest.approx(
        expected, rel=1e-5
    )
    assert torch.allclose(relation_gram(feats_t).norm(dim=1), torch.ones(8))


@pytest.mark.parametrize("make", [resnet, vit, TinyNet], ids=["resnet10t", "vit", "tiny"])
def test_closed_form_classifier_grad_equals_autograd(make, batch):
    model = make().eval()
    out = forward_outputs(model, batch.images)
    loss = F.cross_entropy(model(batch.images), batch.labels)
    (expected,) = torch.autograd.grad(loss, model.get_classifier().weight)
    closed = classifier_grad(out.logits.detach(), out.pooled.detach(), batch.labels)
    assert closed.shape == (NUM_CLASSES, model.get_classifier().in_features)
    assert torch.allclose(closed, expected, atol=1e-5)


# --- DisWOT scoring contract -----------------------------------------------------------------------------


def test_teacher_against_itself_scores_zero(batch):
    teacher = resnet("resnet10t")
    ref = teacher_reference(teacher, batch.images, batch.labels, batch_stats=True)
    scores = score_candidate(teacher, batch, ref, ["diswot"])
    assert scores["diswot_relation"] == pytest.approx(0.0, abs=1e-10)
    assert scores["diswot_semantic"] == pytest.approx(0.0, abs=1e-10)
    assert scores["diswot"] == pytest.approx(0.0, abs=1e-10)
    # a BN-free teacher in eval mode is scored the same way as a student
    teacher = vit()
    ref = teacher_reference(teacher, batch.images, batch.labels)
    assert score_candidate(teacher, batch, ref, "diswot")["diswot"] == pytest.approx(0.0, abs=1e-10)


def test_noisy_teacher_scores_below_teacher_and_more_noise_scores_lower(batch):
    teacher = resnet("resnet10t")
    ref = teacher_reference(teacher, batch.images, batch.labels, batch_stats=True)
    scores = {}
    for noise in (0.0, 0.1, 1.0):
        student = copy.deepcopy(teacher)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(noise * p.std(unbiased=False) * torch.randn(p.shape, generator=generator))
        scores[noise] = score_candidate(student, batch, ref, ["diswot"])
    assert scores[0.0]["diswot"] == pytest.approx(0.0, abs=1e-10)
    assert scores[0.1]["diswot_relation"] > 0 and scores[0.1]["diswot_semantic"] > 0
    assert scores[0.0]["diswot"] > scores[0.1]["diswot"] > scores[1.0]["diswot"]


def test_scores_are_deterministic_and_leave_model_and_rng_untouched(batch):
    teacher, student = resnet("resnet10t", seed=0), resnet("resnet10t", seed=1)
    student.train()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    ref = teacher_reference(teacher, batch.images, batch.labels)
    rng = torch.get_rng_state()
    names = [n for n in PROXIES if n not in ("dss", "vkdnw")]  # dss reads ViTs only; vkdnw has its own tests
    first = score_candidate(student, batch, ref, names)
    second = score_candidate(student, batch, ref, names)
    assert first == second
    assert set(first) == {key for n in names for key in PROXIES[n].outputs}
    assert torch.equal(torch.get_rng_state(), rng)
    assert student.training and all(m.training for m in student.modules())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in student.parameters())
    # a fresh reference from the same batch and seed gives the same scores
    again = teacher_reference(teacher, batch.images, batch.labels)
    assert score_candidate(student, batch, again, names) == first


@pytest.mark.parametrize("width_match", ["projection", "pool", "correlation", "class"])
def test_width_mismatch_is_deterministic_and_seeded(batch, width_match):
    teacher, student = resnet("resnet10t"), vit(width=64)  # C_t = 512, C_s = 64
    ref = teacher_reference(teacher, batch.images, batch.labels, width_match=width_match)
    assert ref.width == 512
    first = score_candidate(student, batch, ref, ["diswot"])
    assert first == score_candidate(student, batch, ref, ["diswot"])
    assert 0.0 < first["diswot_semantic"] < 4.0
    assert first["diswot"] == pytest.approx(-(first["diswot_relation"] + first["diswot_semantic"]))
    reseeded = score_candidate(student, batch, dataclasses.replace(ref, seed=1), ["diswot"])
    if width_match == "projection":
        assert reseeded["diswot_semantic"] != first["diswot_semantic"]
    else:  # no randomness in the pooling, correlation and class paths
        assert reseeded == first


def test_pool_width_match_is_identity_at_equal_width_and_averages_neighbours(batch):
    teacher = resnet("resnet10t")
    pooled = teacher_reference(teacher, batch.images, batch.labels, width_match="pool")
    direct = teacher_reference(teacher, batch.images, batch.labels)
    # equal widths: both compare the gradients directly
    assert score_candidate(teacher, batch, pooled, ["diswot"]) == score_candidate(teacher, batch, direct, ["diswot"])
    # a student of half the width is compared with the mean of each pair of neighbouring teacher channels
    from autokd.proxies import classifier_grad, semantic_distance
    from autokd.proxies.base import forward_outputs

    student = vit(width=256)
    with torch.no_grad():
        out = forward_outputs(student, batch.images)
    grad_s = classifier_grad(out.logits, out.pooled, batch.labels)
    halved = pooled.grad.reshape(pooled.grad.shape[0], 256, 2).mean(-1)
    expected = semantic_distance(grad_s, halved)
    assert score_candidate(student, batch, pooled, ["diswot"])["diswot_semantic"] == pytest.approx(expected, abs=1e-6)


def test_random_projection_is_fixed_per_seed_and_scaled():
    proj = random_projection(512, 256, 0)
    assert proj is random_projection(512, 256, 0)
    assert torch.equal(proj, random_projection.__wrapped__(512, 256, 0))
    assert not torch.equal(proj, random_projection(512, 256, 1))
    assert float(proj.std()) == pytest.approx(256**-0.5, rel=0.02)


def test_correlation_distance_of_equal_widths_and_resized_widths():
    generator = torch.Generator().manual_seed(8)
    grad = torch.randn(10, 32, generator=generator)
    assert correlation_distance(grad, grad) == pytest.approx(0.0, abs=1e-12)
    corr = channel_correlation(grad)
    assert corr.shape == (32, 32) and torch.allclose(corr.norm(dim=1), torch.ones(32, dtype=torch.float64))
    # a teacher whose channels are the student's, each repeated twice, pools back to the student's correlation
    assert correlation_distance(grad, grad.repeat_interleave(2, dim=1)) == pytest.approx(0.0, abs=1e-10)
    assert correlation_distance(grad, torch.randn(10, 64, generator=generator)) > 0.1


def test_teacher_runs_once_and_keeps_no_grad(batch):
    teacher = resnet("resnet10t")
    calls = []
    forward_features = teacher.forward_features
    teacher.forward_features = lambda x: calls.append(1) or forward_features(x)
    ref = teacher_reference(teacher, batch.images, batch.labels)
    for student in (resnet(seed=1), vit(), TinyNet(), resnet(seed=2)):
        score_candidate(student, batch, ref, ["diswot", "naswot", "synflow", "grad_norm", "params", "macs"])
    assert len(calls) == 1
    assert all(p.grad is None for p in teacher.parameters())


def test_diswot_and_naswot_share_one_forward_without_grad(batch):
    student = resnet("resnet10t", seed=1)
    ref = teacher_reference(resnet("resnet10t"), batch.images, batch.labels)
    grad_modes = []
    forward_features = student.forward_features
    student.forward_features = lambda x: grad_modes.append(torch.is_grad_enabled()) or forward_features(x)
    score_candidate(student, batch, ref, ["diswot", "naswot", "params"], cost=Cost(macs=1, params=2))
    assert grad_modes == [False]


def test_diswot_runs_one_forward_and_no_backward(batch, monkeypatch):
    # Speed itself is measured in benchmarks/ranking/bench_proxy_speed.py; here: one student forward, no autograd.
    student = timm.create_model("resnet18", num_classes=NUM_CLASSES)
    ref = teacher_reference(resnet("resnet10t"), batch.images, batch.labels)
    calls = []
    original = student.forward_features
    monkeypatch.setattr(student, "forward_features", lambda x: calls.append(1) or original(x))

    def no_backward(*args, **kwargs):
        raise AssertionError("DisWOT must not run a backward pass")

    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    scores = score_candidate(student, batch, ref, ["diswot"])
    assert calls == [1] and set(scores) == {"diswot", "diswot_relation", "diswot_semantic"}


# --- baselines -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [resnet, vit], ids=["resnet10t", "vit"])
def test_baselines_finite_and_deterministic(make, batch):
    model = make()
    ref = teacher_reference(resnet("resnet10t", seed=3), batch.images, batch.labels)
    names = ["naswot", "synflow", "grad_norm"]
    first = score_candidate(model, batch, ref, names)
    assert first == score_candidate(model, batch, ref, names)
    assert all(torch.isfinite(torch.tensor(v)) and v > 0 for v in first.values())


def test_naswot_kernel_matches_its_definition(batch):
    model = TinyNet().train()
    with torch.no_grad():
        kernel = forward_outputs(model, batch.images, record_codes=True).activation_kernel
        codes = (model.bn(model.conv(batch.images)).flatten(1) > 0).double()
    expected = codes @ codes.T + (1 - codes) @ (1 - codes).T
    assert torch.equal(kernel, expected)


def test_naswot_kernel_stays_exact_under_autocast(batch):
    # every image agrees with itself on every unit: the diagonal counts all units, beyond bf16's 8 bits
    model = resnet().train()
    units = []
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    hooks = [m.register_forward_pre_hook(lambda m, a: units.append(a[0][0].numel())) for m in relus]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        kernel = forward_outputs(model, batch.images, record_codes=True).activation_kernel
    for hook in hooks:
        hook.remove()
    assert sum(units) > 10_000
    assert torch.equal(
        kernel.diagonal(), torch.full((len(batch.images),), float(sum(units)), dtype=torch.float64)
    )


def test_synflow_params_macs_rank_bigger_models_higher(batch):
    ref = teacher_reference(resnet("resnet10t"), batch.images, batch.labels)
    names = ["synflow", "params", "macs", "naswot"]
    for small, big in [
        (resnet("resnet10t"), resnet("resnet50")),
        (vit(depth=1, width=64), vit(depth=4, width=192)),
    ]:
        s, b = score_candidate(small, batch, ref, names), score_candidate(big, batch, ref, names)
        for name in ("synflow", "params", "macs", "naswot"):
            assert b[name] > s[name], name
    # grad-norm follows size in these ViTs, not across timm ResNets (resnet18 scores below resnet10t at init)
    small = score_candidate(vit(depth=1, width=64), batch, ref, ["grad_norm"])
    assert score_candidate(vit(depth=4), batch, ref, ["grad_norm"])["grad_norm"] > small["grad_norm"]


def test_synflow_treats_batchnorm_as_identity(batch):
    # as in the authors' BN-free nets: BN parameters and statistics do not change the score
    ref = teacher_reference(resnet("resnet10t"), batch.images, batch.labels)
    model = resnet("resnet18")
    before = score_candidate(model, batch, ref, ["synflow"])["synflow"]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-2, 2)
                m.running_var.fill_(9.0)
    assert score_candidate(model, batch, ref, ["synflow"])["synflow"] == pytest.approx(before, rel=1e-12)


def test_params_and_macs_come_from_cost_or_are_measured(batch):
    model = TinyNet()
    ref = teacher_reference(TinyNet(), batch.images, batch.labels)
    given = score_candidate(model, batch, ref, ["params", "macs"], cost=Cost(macs=123, params=45))
    assert given == {"params": 45.0, "macs": 123.0}
    measured = score_candidate(model, batch, ref, ["params", "macs"])
    assert measured == {"params": float(count_params(model)), "macs": float(count_macs(model, 32))}


# --- bad input -------------------------------------------------------------------------------------------


def test_bad_input_raises_autokd_error(batch):
    ref = teacher_reference(TinyNet(), batch.images, batch.labels)
    with pytest.raises(AutokdError, match="unknown proxy 'nope'"):
        score_candidate(TinyNet(), batch, ref, ["diswot", "nope"])
    other = ScoringBatch(batch.images, (batch.labels + 1) % NUM_CLASSES)
    with pytest.raises(AutokdError, match="scoring batch differs"):
        score_candidate(TinyNet(), other, ref, ["diswot"])
    with pytest.raises(AutokdError, match="width_match"):
        dataclasses.replace(ref, width_match="nearest")
    wrong_classes = TinyNet()
    wrong_classes.fc = nn.Linear(16, NUM_CLASSES + 1)
    with pytest.raises(AutokdError, match="11 classes but the teacher has 10"):
        score_candidate(wrong_classes, batch, ref, ["diswot"])
    with pytest.raises(AutokdError, match="no ReLU/GELU/SiLU modules"):
        score_candidate(TinyNet(functional=True), batch, ref, ["naswot"])
    with pytest.raises(AutokdError, match="forward_features"):
        score_candidate(
            nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, NUM_CLASSES)), batch, ref, ["diswot"]
        )
    with pytest.raises(AutokdError, match="same B"):
        ScoringBatch(batch.images, batch.labels[:-1])
    with pytest.raises(AutokdError, match="labels run from"):
        teacher_reference(TinyNet(), batch.images, batch.labels + NUM_CLASSES)


def test_class_distance_by_hand_and_across_widths():
    from autokd.proxies import class_distance, class_relation

    # K = 2 classes: rows (1, 0) and (1, 1) -> g g^T = [[1, 1], [1, 2]], rows normalised
    grad = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([[1, 1], [1, 2]], dtype=torch.float64)
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(class_relation(grad), expected)
    other = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # orthogonal rows -> identity relation
    gap = ((expected - torch.eye(2, dtype=torch.float64)) ** 2).sum() / 2
    assert class_distance(grad, other) == pytest.approx(float(gap))
    # widths may differ: a teacher whose channels are the student's repeated (and scaled) has the same relation
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(10, 16, generator=generator)
    assert class_distance(student, 3 * student.repeat(1, 4)) == pytest.approx(0.0, abs=1e-12)
    assert class_distance(student, torch.randn(10, 64, generator=generator)) > 0.1


def test_class_width_match_scores_every_student_by_its_class_relation(batch):
    from autokd.proxies import class_distance, classifier_grad
    from autokd.proxies.base import forward_outputs

    teacher, student = resnet("resnet10t"), vit(width=64)
    ref = teacher_reference(teacher, batch.images, batch.labels, width_match="class")
    with torch.no_grad():
        out = forward_outputs(student, batch.images)
    grad_s = classifier_grad(out.logits, out.pooled, batch.labels)
    scores = score_candidate(student, batch, ref, ["diswot"])
    assert scores["diswot_semantic"] == pytest.approx(class_distance(grad_s, ref.grad), abs=1e-9)
    assert 0.0 < scores["diswot_semantic"] < 4.0


def test_pooled_relation_layer_compares_the_pooled_features(batch):
    from autokd.proxies import relation_distance

    teacher, student = resnet("resnet10t"), vit(width=64)
    ref = teacher_reference(teacher, batch.images, batch.labels, relation_layer="pooled")
    from autokd.proxies.base import scoring_mode

    with scoring_mode(teacher, batch_stats=False), torch.no_grad():  # as teacher_reference runs the teacher
        out_t = forward_outputs(teacher, batch.images)
    with scoring_mode(student, batch_stats=True), torch.no_grad():  # as candidates are scored
        out_s = forward_outputs(student, batch.images)
    assert torch.allclose(ref.relation, relation_gram(out_t.pooled))
    expected = relation_distance(relation_gram(out_s.pooled), relation_gram(out_t.pooled))
    scores = score_candidate(student, batch, ref, ["diswot"])
    assert scores["diswot_relation"] == pytest.approx(expected, rel=1e-5)
    default = score_candidate(student, batch, teacher_reference(teacher, batch.images, batch.labels), ["diswot"])
    assert default["diswot_relation"] != pytest.approx(expected, rel=1e-3)  # the feature map gives another value
    assert default["diswot_semantic"] == pytest.approx(scores["diswot_semantic"])  # the semantic term is unchanged
    with pytest.raises(AutokdError, match="relation_layer"):
        teacher_reference(teacher, batch.images, batch.labels, relation_layer="stem")
