"""Each loss against a hand computation: explicit Python loops over floats, not the vectorised code."""

import math

import pytest
import timm
import torch
import torch.nn as nn

from autokd.errors import AutokdError
from autokd.recipes import (
    FeatureCapture,
    FeatureProjector,
    KDLoss,
    QKVCapture,
    Recipe,
    build_loss,
    dist_loss,
    dkd_loss,
    dkd_warmup,
    feature_tap,
    fitnet_loss,
    kd_loss,
    minilm_loss,
    nkd_loss,
    probs_to_logits,
    standardize,
    topk_to_probs,
)

# ---------------------------------------------------------------- hand helpers (plain Python)


def softmax(row, t=1.0):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def mean(values):
    return sum(values) / len(values)


def pearson(a, b):
    ma, mb = mean(a), mean(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / (math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b)))


def rows(tensor):
    return tensor.tolist()


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    target = torch.tensor([0, 3, 5, 3])
    return student, teacher, target


# ---------------------------------------------------------------- logit losses vs hand


def test_kd_loss_matches_hand(logits):
    s, t, _ = logits
    hand = 16 * mean([kl(softmax(zt, 4), softmax(zs, 4)) for zs, zt in zip(rows(s), rows(t))])
    assert kd_loss(s, t, temperature=4.0).item() == pytest.approx(hand, abs=1e-5)


def test_dkd_loss_matches_hand(logits):
    s, t, y = logits
    tckd, nckd = [], []
    for zs, zt, c in zip(rows(s), rows(t), y.tolist()):
        ps, pt = softmax(zs, 4), softmax(zt, 4)
        tckd.append(kl([pt[c], 1 - pt[c]], [ps[c], 1 - ps[c]]))
        others = [i for i in range(len(zs)) if i != c]
        nckd.append(kl(softmax([zt[i] for i in others], 4), softmax([zs[i] for i in others], 4)))
    hand = 16 * (1.0 * mean(tckd) + 8.0 * mean(nckd))
    assert dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0).item() == pytest.approx(hand, abs=1e-5)


def test_dkd_parts_recombine_into_kd(logits):
    # the DKD identity per sample: KL = TCKD + (1 - p_t^(t)) * NCKD
    s, t, y = logits
    for i in range(len(y)):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        tckd = dkd_loss(si, ti, yi, alpha=1.0, beta=0.0, temperature=2.0)
        nckd = dkd_loss(si, ti, yi, alpha=0.0, beta=1.0, temperature=2.0)
        pt_target = torch.softmax(ti / 2.0, -1)[0, yi].item()
        assert kd_loss(si, ti, 2.0).item() == pytest.approx((tckd + (1 - pt_target) * nckd).item(), abs=1e-6)


def test_dkd_warmup_ramp():
    assert [dkd_warmup(e, 20) for e in (1, 10, 20, 40)] == [0.05, 0.5, 1.0, 1.0]
    assert dkd_warmup(0, 0) == 1.0


def test_dist_loss_matches_hand(logits):
    s, t, _ = logits
    ys = [softmax(z, 2.0) for z in rows(s)]
    yt = [softmax(z, 2.0) for z in rows(t)]
    inter = 1 - mean([pearson(a, b) for a, b in zip(ys, yt)])
    columns = range(len(ys[0]))
    intra = 1 - mean([pearson([r[j] for r in ys], [r[j] for r in yt]) for j in columns])
    hand = 4 * (0.5 * inter + 3.0 * intra)
    assert dist_loss(s, t, beta=0.5, gamma=3.0, tau=2.0).item() == pytest.approx(hand, abs=1e-5)


def test_nkd_loss_matches_hand(logits):
    s, t, y = logits
    target_terms, non_target_terms = [], []
    for zs, zt, c in zip(rows(s), rows(t), y.tolist()):
        target_terms.append(-softmax(zt)[c] * math.log(softmax(zs)[c]))
        others = [i for i in range(len(zs)) if i != c]
        ps = softmax([zs[i] for i in others], 2.0)
        pt = softmax([zt[i] for i in others], 2.0)
        non_target_terms.append(sum(a * math.log(b) for a, b in zip(pt, ps)))
    hand = mean(target_terms) - 1.5 * 4 * mean(non_target_terms)
    assert nkd_loss(s, t, y, temperature=2.0, gamma=1.5).item() == pytest.approx(hand, abs=1e-5)


def test_standardize_matches_hand(logits):
    s, _, _ = logits
    for row, out in zip(rows(s), rows(standardize(s))):
        m = mean(row)
        std = math.sqrt(sum((v - m) ** 2 for v in row) / (len(row) - 1))
        assert out == pytest.approx([(v - m) / (std + 1e-7) for v in row], abs=1e-6)


def test_losses_vanish_when_student_equals_teacher(logits):
    _, t, y = logits
    assert kd_loss(t, t).item() == pytest.approx(0, abs=1e-7)
    assert dkd_loss(t, t, y).item() == pytest.approx(0, abs=1e-7)
    assert dist_loss(t, t).item() == pytest.approx(0, abs=1e-5)  # 1 - c / (c + 1e-8), the eps of torchdistill
    qkv = tuple(torch.randn(2, 5, 8) for _ in range(3))
    assert minilm_loss(qkv, qkv, relation_heads=2).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "nkd"])
def test_gradient_reaches_the_student_only(name, logits):
    s, t, y = (x.clone() for x in logits)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = {
        "kd": lambda: kd_loss(s, t),
        "dkd": lambda: dkd_loss(s, t, y),
        "dist": lambda: dist_loss(s, t),
        "nkd": lambda: nkd_loss(s, t, y),
    }[name]()
    loss.backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0


# ---------------------------------------------------------------- teacher probabilities and top-k


def test_topk_rebuild_sums_to_one_and_keeps_the_topk():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(5, 10, generator=g) * 2, -1)
    values, indices = probs.topk(3, dim=-1)
    dense = topk_to_probs(values, indices.to(torch.int16), num_classes=10)
    assert torch.allclose(dense.sum(-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(dense.gather(1, indices), values, atol=1e-6)
    for b in range(5):  # the rest is uniform: (1 - top-k mass) / (C - k)
        rest = (1 - sum(values[b].tolist())) / 7
        others = [dense[b, j].item() for j in range(10) if j not in indices[b].tolist()]
        assert others == pytest.approx([rest] * 7, abs=1e-6)
    half = topk_to_probs(values.half(), indices, num_classes=10)  # the cache stores fp16
    assert torch.allclose(half.sum(-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(half.gather(1, indices), values, atol=2e-3)
    over = topk_to_probs(torch.tensor([[0.6, 0.5]]).half(), torch.tensor([[1, 0]]), num_classes=3)
    assert over[0].tolist() == pytest.approx([0.5 / 1.1, 0.6 / 1.1, 0.0], abs=1e-3)  # mass > 1: renormalised


@pytest.mark.parametrize("preset", ["kd", "dkd", "dist", "nkd", "kd_ls"])
def test_teacher_probabilities_give_the_same_loss_as_logits(preset, logits):
    s, t, y = logits[0].float(), logits[1].float(), logits[2]
    loss_fn = KDLoss(Recipe.load(preset))
    from_logits, _ = loss_fn(s, y, t, epoch=40)
    from_probs, _ = loss_fn(s, y, teacher_probs=torch.softmax(t, -1), epoch=40)
    assert from_probs.item() == pytest.approx(from_logits.item(), abs=1e-5)
    assert torch.allclose(standardize(probs_to_logits(torch.softmax(t, -1))), standardize(t), atol=1e-5)


# ---------------------------------------------------------------- KDLoss


def test_kdloss_combines_weighted_parts(logits):
    s, t, y = logits[0].float(), logits[1].float(), logits[2]
    recipe = Recipe.load("kd").replace(label_smoothing=0.1)
    total, parts = KDLoss(recipe)(s, y, t)
    assert set(parts) == {"ce", "kd"}
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), abs=1e-6)
    ce = mean([-sum((0.9 * (j == c) + 0.1 / 6) * math.log(p) for j, p in enumerate(softmax(z)))
               for z, c in zip(rows(s), y.tolist())])
    assert parts["ce"].item() == pytest.approx(0.1 * ce, abs=1e-5)
    assert parts["kd"].item() == pytest.approx(0.9 * kd_loss(s, t, 4.0).item(), abs=1e-5)


def test_kdloss_soft_targets_and_dkd_ramp(logits):
    s, t, y = logits[0].float(), logits[1].float(), logits[2]
    loss_fn = KDLoss(Recipe.load("dkd"))
    soft = 0.7 * nn.functional.one_hot(y, 6).float() + 0.3 * nn.functional.one_hot((y + 1) % 6, 6).float()
    _, half = loss_fn(s, soft, t, epoch=10)
    _, full = loss_fn(s, y, t, epoch=25)
    assert half["kd"].item() == pytest.approx(0.5 * full["kd"].item(), rel=1e-6)  # argmax of soft = y
    ce = mean([-sum(q * math.log(p) for q, p in zip(qs, softmax(z))) for z, qs in zip(rows(s), rows(soft))])
    assert half["ce"].item() == pytest.approx(ce, abs=1e-5)
    with pytest.raises(ValueError, match="epoch"):
        loss_fn(s, y, t)


def test_kdloss_none_preset_is_plain_ce(logits):
    s, y = logits[0].float(), logits[2]
    total, parts = KDLoss(Recipe.load("none"))(s, y)
    assert set(parts) == {"ce"}
    assert total.item() == pytest.approx(nn.functional.cross_entropy(s, y).item(), abs=1e-6)


def test_kdloss_wants_exactly_one_teacher(logits):
    s, t, y = logits[0].float(), logits[1].float(), logits[2]
    with pytest.raises(ValueError, match="exactly one"):
        KDLoss(Recipe.load("kd"))(s, y)
    with pytest.raises(ValueError, match="exactly one"):
        KDLoss(Recipe.load("kd"))(s, y, t, teacher_probs=torch.softmax(t, -1))


# ---------------------------------------------------------------- FitNet projector


def test_fitnet_loss_matches_hand():
    # student map (1, 2, 2, 2) -> teacher ViT tokens (1, 1 + 1, 3): pool to 1x1, 1x1 conv, BN (eval), MSE
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, -0.5], [1.5, 2.5]]]])
    teacher = torch.tensor([[[9.0, 9.0, 9.0], [1.0, -2.0, 0.5]]])  # the first token is CLS
    projector = FeatureProjector.from_shapes(student.shape, teacher.shape).eval()
    weight = [[1.0, 2.0], [-1.0, 0.5], [0.0, 3.0]]
    with torch.no_grad():
        projector.proj[0].weight.copy_(torch.tensor(weight)[:, :, None, None])
    pooled = [mean([1.0, 2.0, 3.0, 4.0]), mean([0.5, -0.5, 1.5, 2.5])]
    out = [sum(w * p for w, p in zip(row, pooled)) / math.sqrt(1 + 1e-5) for row in weight]
    hand = mean([(o - t) ** 2 for o, t in zip(out, [1.0, -2.0, 0.5])])
    assert fitnet_loss(student, teacher, projector).item() == pytest.approx(hand, abs=1e-5)


@pytest.mark.parametrize(
    "student_shape, teacher_shape, target_shape",
    [
        ((2, 8, 8, 8), (2, 16, 8, 8), (2, 16, 8, 8)),  # same grid
        ((2, 8, 8, 8), (2, 16, 4, 4), (2, 16, 4, 4)),  # pooled down
        ((2, 8, 4, 4), (2, 16, 8, 8), (2, 16, 8, 8)),  # interpolated up
        ((2, 8, 4, 4), (2, 65, 12), (2, 12, 8, 8)),  # CNN -> ViT with CLS
        ((2, 197, 12), (2, 16, 7, 7), (2, 16, 7, 7)),  # ViT -> CNN
        ((2, 64, 12), (2, 20), (2, 20, 1, 1)),  # tokens without prefix -> pooled vector
    ],
)
def test_projector_maps_any_pair_to_the_teacher_grid(student_shape, teacher_shape, target_shape):
    projector = FeatureProjector.from_shapes(student_shape, teacher_shape)
    assert projector(torch.randn(student_shape)).shape == target_shape
    assert projector.target(torch.randn(teacher_shape)).shape == target_shape


def test_projector_rejects_tokens_without_a_square_grid():
    with pytest.raises(AutokdError, match="square patch grid"):
        FeatureProjector.from_shapes((2, 8, 4, 4), (2, 280, 12))  # no square in 272..280


# ---------------------------------------------------------------- MiniLM


def test_minilm_loss_matches_hand():
    g = torch.Generator().manual_seed(2)
    student = tuple(torch.randn(1, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))  # 2 heads of 2
    teacher = tuple(torch.randn(1, 3, 6, generator=g, dtype=torch.float64) for _ in range(3))  # 2 heads of 3

    def relation(x, head, d):  # softmax over tokens j of <x_i, x_j> / sqrt(d) in one relation head
        cols = [row[head * d : (head + 1) * d] for row in x[0].tolist()]
        return [softmax([sum(a * b for a, b in zip(r, c)) / math.sqrt(d) for c in cols]) for r in cols]

    terms = []
    for xs, xt in zip(student, teacher):
        for head in range(2):
            rs, rt = relation(xs, head, 2), relation(xt, head, 3)
            terms += [kl(rt[i], rs[i]) for i in range(3)]
    assert minilm_loss(student, teacher, relation_heads=2).item() == pytest.approx(mean(terms), abs=1e-5)


def test_minilm_rejects_widths_the_heads_do_not_divide():
    qkv = tuple(torch.randn(1, 4, 10) for _ in range(3))
    with pytest.raises(AutokdError, match="relation_heads=4 does not divide the student width 10"):
        minilm_loss(qkv, qkv, relation_heads=4)


def tiny_vit(dim=48, heads=3, depth=2):
    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        embed_dim=dim,
        num_heads=heads,
        depth=depth,
        num_classes=5,
    )


def test_qkv_capture_returns_the_last_blocks_q_k_v():
    torch.manual_seed(0)
    model = tiny_vit().eval()
    block_inputs = []
    model.blocks[-1].register_forward_pre_hook(lambda m, args: block_inputs.append(args[0]))
    tap = QKVCapture(model)
    x = torch.randn(2, 3, 16, 16)
    model(x)
    q, k, v = tap.get()
    with pytest.raises(RuntimeError, match="no forward pass"):
        tap.get()
    tap.remove()
    block = model.blocks[-1]
    expected = block.attn.qkv(block.norm1(block_inputs[0]))
    assert q.shape == (2, 17, 48)
    assert torch.allclose(torch.cat([q, k, v], -1), expected, atol=1e-6)
    with pytest.raises(AutokdError, match="attn.qkv"):
        QKVCapture(timm.create_model("resnet18", num_classes=5))


# ---------------------------------------------------------------- build_loss end to end


def tiny_cnn(width):
    return timm.create_model("resnet18", num_classes=5, channels=(width, width, 2 * width, 2 * width))


def test_feature_capture_records_forward_features_and_removes_cleanly():
    model = tiny_cnn(8).eval()
    x = torch.randn(2, 3, 32, 32)
    tap = FeatureCapture(model)
    logits = model(x)
    assert torch.allclose(tap.get(), model.forward_features(x))
    assert torch.allclose(logits, model.forward_head(model.forward_features(x)))
    tap.remove()
    assert "forward_features" not in vars(model)


def test_build_loss_fitnet_trains_student_and_projector_only():
    torch.manual_seed(0)
    student, teacher = tiny_cnn(8), tiny_vit()
    recipe = Recipe.load("fitnet")
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    bn_before = student.bn1.running_mean.clone()
    loss_fn = build_loss(recipe, student, teacher, images)
    assert torch.equal(student.bn1.running_mean, bn_before)  # sizing ran in eval mode
    assert loss_fn.projector.proj[0].weight.shape == (48, 16, 1, 1)  # resnet's 16 channels -> ViT's 48
    s_tap, t_tap = feature_tap(recipe, student), feature_tap(recipe, teacher)
    with torch.no_grad():
        t_logits = teacher(images)
    total, parts = loss_fn(student(images), labels, t_logits, student_features=s_tap.get(),
                           teacher_features=t_tap.get())
    assert set(parts) == {"ce", "kd", "feature"} and parts["feature"] > 0
    total.backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert loss_fn.projector.proj[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_build_loss_minilm_checks_widths_and_runs():
    torch.manual_seed(0)
    student, teacher = tiny_vit(dim=24, heads=2), tiny_vit(dim=48, heads=3)
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 4])
    recipe = Recipe.load("minilm").replace(feature_params={"relation_heads": 6})
    loss_fn = build_loss(recipe, student, teacher, images)
    s_tap, t_tap = feature_tap(recipe, student), feature_tap(recipe, teacher)
    with torch.no_grad():
        t_logits = teacher(images)
    total, parts = loss_fn(student(images), labels, t_logits, student_features=s_tap.get(),
                           teacher_features=t_tap.get())
    assert parts["feature"] > 0
    total.backward()
    assert student.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(AutokdError, match="relation_heads=12 does not divide the student width 20"):
        build_loss(Recipe.load("minilm"), tiny_vit(dim=20, heads=2), teacher, images)
