"""VKDNW (Tybl & Neumann, CVPR 2025): entropy of the Fisher information spectrum, plus the number of layers.

"Training-free Neural Architecture Search through Variance of Knowledge of Deep Network Weights". Reference
code: ondratybl/VKDNW @ 3b2d12ff : NB201/ZeroShotProxy/compute_vkdnw_score.py (the Fisher matrix and its
deciles), @ 00b175c7 : NB201/tss_general_.py (params_grad_len = 128, batch 64) and @ 0ed06168 :
NB201/tss_utils.py (the entropy of the deciles; VKDNW ranked on (layer count, entropy)). As that code does:

1. Re-initialise a copy of the net: Conv2d/Linear Kaiming-normal (fan_in, ReLU gain), their biases 0,
   BatchNorm2d/GroupNorm weight 1 and bias 0; other parameters (LayerNorm, position embeddings) are kept.
2. Eval mode (BatchNorm on its running statistics, those of a freshly built net: mean 0, variance 1).
3. Representative parameters: element 0 of each of the first 128 parameter tensors, in registration order.
4. Per-sample Jacobian J_b (K logits x P representatives) on the batch; the Fisher information of the softmax
   output, F = mean_b J_b^T (diag(p_b) - p_b p_b^T) J_b with p_b = 0.95 softmax(z_b) + 0.05 / K.
5. lambda = singular values of F (its eigenvalues); q = the 9 deciles (0.1..0.9) of lambda, linearly
   interpolated; entropy = -sum t log(t + 1e-10), t = q / (sum|q| + 1e-10).
6. VKDNW_single = number of trainable layers + entropy (the paper's Eq. 12).

How J is computed (the authors vmap a per-sample jacrev over the whole net: the same J to 1e-6, 4-5x slower
on a CPU for ResNet-20 and a 4-block ViT): one forward records the output of every module that owns a
representative (and, for a parameter a container reads itself, such as a ViT's cls_token and pos_embed, the
output of each operation that reads it); K backward passes (one per class) give d z_bk / d output per sample,
exactly, since samples do not interact in eval mode; d output / d element comes in closed form for Conv2d,
Linear, BatchNorm and LayerNorm, else from a forward-mode pass through that one module or operation
(scaled-dot-product attention on its math kernel, the only one with forward-mode derivatives). J is their
product summed over the output. A parameter read outside its own module (weight tying) is followed only there.

Where autokd deviates, and why:
- The covariance is used directly; the authors multiply J by its Cholesky factor L (L L^T = that covariance),
  which gives the same F. Their alpha is a float16 0.05 (0.049988), here exactly 0.05; F, its spectrum and
  the entropy are computed in float64 (the authors: float32 on GPU), so tiny eigenvalues are not rounding.
- The scoring batch (real images) is used; the authors' default is Gaussian noise, and their paper reports
  real and random inputs to rank alike. The re-initialisation is seeded from the teacher reference's seed.
- Layers: `weight_layers(model)` (trainable Conv/Linear), the paper's "number of trainable layers". The
  authors' code counts parameter tensors instead (`len(model.named_parameters())`, ~3x the layers in a
  Conv-BN net) and ranks lexicographically on (count, entropy), so there the entropy only breaks ties; the sum
  used here lets an entropy gap above 1 outweigh one layer. Both parts are reported, to re-rank either way.
- Only trainable parameters are representatives (the authors take every parameter; the same for a student).

Reads CNNs and ViTs whose forward returns logits and whose layers keep the batch as the first dimension of
their outputs (timm ViTs, ResNets, MobileNets; not window-attention nets such as Swin, which fold windows into
it: those raise an AutokdError). Cost: about 1 forward + K backward passes of the batch (K classes).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from autokd.errors import AutokdError
from autokd.proxies.base import Probe, Proxy, scoring_mode, weight_layers

#: parameter tensors whose first element represents them (the authors' params_grad_len)
REPRESENTATIVES = 128
#: label smoothing of the softmax probabilities in the Fisher covariance
ALPHA = 0.05
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EPS = 1e-10


def representatives(model: nn.Module, limit: int = REPRESENTATIVES) -> list[str]:
    """Names of the parameter tensors whose element 0 enters the Fisher matrix: the first `limit` trainable."""
    return [name for name, p in model.named_parameters() if p.requires_grad][:limit]


@torch.no_grad()
def reinitialised_copy(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy with the authors' Kaiming-normal init (draws from the global RNG)."""
    clone = copy.deepcopy(model).eval().requires_grad_(False)
    for module in clone.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
            module.weight.fill_(1.0)
            module.bias.zero_()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.reset_running_stats()
    return clone


def representative_jacobian(model: nn.Module, images: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Per-sample J (B, K, P) = d logits / d (element 0 of each named parameter), and the logits (B, K).

    Call under grad mode with `model` in eval mode; its parameters need not require grad.
    """
    owners = {name: name.rpartition(".")[::2] for name in names}
    calls: dict[str, list] = {path: [] for path, _ in owners.values()}
    handles = []
    for path in calls:
        module = model.get_submodule(path)
        handles.append(module.register_forward_pre_hook(_stash_inputs(calls[path]), with_kwargs=True))
        handles.append(module.register_forward_hook(_record_output(calls[path]), with_kwargs=True))
    # a parameter of a container (a ViT's cls_token, pos_embed) is followed to the operations that read it
    watched = {
        id(model.get_parameter(name)): name
        for name, (path, _) in owners.items()
        if next(model.get_submodule(path).children(), None) is not None
    }
    recorder = _UseRecorder(watched)
    try:
        with recorder if watched else contextlib.nullcontext():
            logits = model(images.clone().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise AutokdError(f"'vkdnw' needs a model whose forward returns logits (B, K); {type(model).__name__} does not")
    batch, classes = logits.shape
    pairs = []  # per representative: (output tensor in the graph, (box, d output[box] / d element)) for each use
    for name, (path, attr) in owners.items():
        uses = recorder.uses.get(name, [])
        if uses and all(out.shape[:1] == (batch,) for _, _, out in uses):
            pairs.append([(out, _op_tangent(model.get_parameter(name), func, args)) for func, args, out in uses])
        else:
            pairs.append(_tangents(model, path, attr, calls[path]))
    if any(leaf.shape[:1] != (batch,) for uses in pairs for leaf, _ in uses):
        raise AutokdError(
            f"'vkdnw' needs every layer's output to start with the batch dimension; {type(model).__name__} "
            "folds windows or heads into it: drop 'vkdnw' for this model"
        )
    needed = list({id(leaf): leaf for uses in pairs for leaf, box in uses if box is not None}.values())
    needed = [leaf for leaf in needed if leaf.requires_grad]
    jacobian = logits.new_zeros(batch, classes, len(names))
    for k in range(classes if needed else 0):
        cotangent = F.one_hot(torch.full((batch,), k, device=logits.device), classes).to(logits.dtype)
        grads = torch.autograd.grad(logits, needed, cotangent, retain_graph=k < classes - 1, allow_unused=True)
        by_leaf = {id(leaf): grad for leaf, grad in zip(needed, grads)}
        for p, uses in enumerate(pairs):
            for leaf, box in uses:
                grad = by_leaf.get(id(leaf))
                if grad is not None and box is not None:
                    jacobian[:, k, p] += (grad[box[0]] * box[1]).flatten(1).sum(1)
    return jacobian, logits.detach()


def fisher_information(jacobian: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """F = mean_b J_b^T (diag(p_b) - p_b p_b^T) J_b (P x P, float64), p_b the smoothed softmax of z_b."""
    jacobian, logits = jacobian.double(), logits.double()
    prob = (1 - ALPHA) * F.softmax(logits, dim=1) + ALPHA / logits.shape[1]
    weighted = torch.einsum("bkp,bk->bp", jacobian, prob)
    second = torch.einsum("bkp,bk,bkq->pq", jacobian, prob, jacobian)
    return (second - weighted.T @ weighted) / len(logits)


def decile_entropy(eigenvalues: torch.Tensor) -> float:
    """Entropy of the 9 deciles of the spectrum, normalised to sum 1 (the authors' 1e-10 guards included)."""
    values = eigenvalues.double()
    deciles = torch.quantile(values, torch.tensor(DECILES, dtype=torch.float64, device=values.device))
    share = deciles / (deciles.abs().sum() + EPS)
    return float(-(share * torch.log(share + EPS)).sum())


def _stash_inputs(records: list) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        frozen = tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, (args, kwargs))
        records.append(frozen)  # completed by the forward hook (calls nest, so the last open one is ours)

    return hook


def _record_output(records: list) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        index = max(i for i, r in enumerate(records) if len(r) == 2)
        output = tree_map(_in_graph, output)
        records[index] = (*records[index], [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)])
        # later in-place ops (ReLU(inplace=True), x += shortcut) must not change the recorded outputs
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, output)

    return hook


def _in_graph(value: object) -> object:
    """A floating tensor that does not depend on the input (a cls token, a position table) becomes a leaf of the
    graph, so that backward passes reach it; anything else is returned as is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
        return value.detach().requires_grad_(True)
    return value


def _tangents(model: nn.Module, path: str, attr: str, records: list) -> list[tuple]:
    """For each call of the owner and output: (output, (box, d output[box] / d element 0 of `attr`)).

    Only the box (a slice of the output) can be non-zero; None stands for an all-zero tangent.
    """
    module = model.get_submodule(path)
    pairs = []
    for args, kwargs, outputs in records:
        fast = _closed_form_tangent(module, attr, args, kwargs, outputs)
        boxes = [fast] if fast is not None else _jvp_tangent(module, attr, args, kwargs)
        pairs.extend(zip(outputs, boxes))
    return pairs


class _UseRecorder(TorchFunctionMode):
    """Records every operation that reads a watched parameter: (function, frozen arguments, output)."""

    def __init__(self, watched: dict[int, str]):
        super().__init__()
        self.watched = watched
        self.uses: dict[str, list] = {}

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> object:
        out = func(*args, **(kwargs or {}))
        hits = {self.watched[id(t)] for t in tree_flatten((args, kwargs))[0] if id(t) in self.watched}
        if not hits or not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        frozen = tree_map(
            lambda t: t if id(t) in self.watched or not isinstance(t, torch.Tensor) else t.detach().clone(),
            (args, kwargs or {}),
        )
        out = _in_graph(out)
        for name in hits:
            self.uses.setdefault(name, []).append((func, frozen, out))
        return out.clone()  # later in-place operations must not change the recorded output


def _op_tangent(param: torch.Tensor, func: Callable, frozen: tuple) -> tuple | None:
    """d output / d (element 0 of `param`) of one recorded operation, by forward mode, cropped."""
    unit = torch.zeros_like(param)
    unit.view(-1)[0] = 1.0
    zero = torch.zeros((), dtype=param.dtype, device=param.device)

    def moved(t: torch.Tensor) -> torch.Tensor:
        args, kwargs = tree_map(lambda a: param.detach() + t * unit if a is param else a, frozen)
        return func(*args, **kwargs)

    with torch.no_grad():
        _, tangent = jvp(moved, (zero,), (torch.ones_like(zero),))
    return _crop(tangent)


def _closed_form_tangent(module: nn.Module, attr: str, args: tuple, kwargs: dict, outputs: list) -> tuple | None:
    """Closed forms for element 0 of Conv2d/Linear/BatchNorm/LayerNorm weights and biases (output channel 0).

    Exact classes only (and timm's LayerNorm): subclasses such as timm's StdConv2d and BatchNormAct2d change the
    forward, and take `_jvp_tangent`.
    """
    if kwargs or len(args) != 1 or len(outputs) != 1 or attr not in ("weight", "bias"):
        return None
    x, out = args[0], outputs[0]
    kind = type(module)
    if kind is nn.Conv2d and module.padding_mode == "zeros" and x.dim() == 4:
        box = (slice(None), slice(0, 1))
        if attr == "bias":
            return box, torch.ones((), dtype=out.dtype, device=out.device)
        unit = torch.zeros(1, 1, *module.kernel_size, dtype=x.dtype, device=x.device)
        unit.view(-1)[0] = 1.0
        return box, F.conv2d(x[:, :1], unit, None, module.stride, module.padding, module.dilation)
    if kind is nn.Linear:
        box = (Ellipsis, slice(0, 1))
        return box, torch.ones((), dtype=out.dtype, device=out.device) if attr == "bias" else x[..., :1]
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if kind in norms and not module.training and module.running_mean is not None:
        box = (slice(None), slice(0, 1))
        if attr == "bias":
            return box, torch.ones((), dtype=out.dtype, device=out.device)
        return box, (x[:, :1] - module.running_mean[0]) / torch.sqrt(module.running_var[0] + module.eps)
    # timm's LayerNorm subclass computes the same F.layer_norm
    if isinstance(module, nn.LayerNorm) and kind.__name__ == "LayerNorm" and len(module.normalized_shape) == 1:
        box = (Ellipsis, slice(0, 1))
        if attr == "bias":
            return box, torch.ones((), dtype=out.dtype, device=out.device)
        return box, F.layer_norm(x, module.normalized_shape, None, None, module.eps)[..., :1]
    return None


def _jvp_tangent(module: nn.Module, attr: str, args: tuple, kwargs: dict) -> list:
    """Any other owner: one forward-mode pass through the owner module alone, cropped to its non-zeros."""
    base = getattr(module, attr).detach()
    unit = torch.zeros_like(base)
    unit.view(-1)[0] = 1.0
    zero = torch.zeros((), dtype=base.dtype, device=base.device)

    def moved(t: torch.Tensor) -> object:
        return functional_call(module, {attr: base + t * unit}, args, kwargs)

    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        _, tangent = jvp(moved, (zero,), (torch.ones_like(zero),))
    return [_crop(t) for t in tree_flatten(tangent)[0] if isinstance(t, torch.Tensor)]


def _crop(tangent: torch.Tensor) -> tuple[tuple[slice, ...], torch.Tensor] | None:
    """The smallest box (all of dim 0) holding the non-zeros of `tangent`, and its contents; None if all zero."""
    nonzero = tangent.ne(0)
    if not bool(nonzero.any()):
        return None
    box = [slice(None)]
    for dim in range(1, tangent.dim()):
        hit = nonzero.movedim(dim, 0).flatten(1).any(1).nonzero().flatten()
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box), tangent[tuple(box)]


def _vkdnw(probe: Probe) -> dict[str, float]:
    """VKDNW: the Fisher-spectrum entropy ('vkdnw_entropy') and VKDNW_single = layers + entropy ('vkdnw')."""
    model = probe.model
    names = representatives(model)
    if not names:
        raise AutokdError(f"'vkdnw' reads trainable parameters; {type(model).__name__} has none: drop 'vkdnw'")
    device = next(model.parameters()).device
    with (
        scoring_mode(model, batch_stats=False, seed=probe.ref.seed),
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device.type, enabled=False),
    ):
        clone = reinitialised_copy(model)
        jacobian, logits = representative_jacobian(clone, probe.batch.images.to(device), names)
        fisher = fisher_information(jacobian, logits)
        entropy = 0.0  # the authors' fallback when F has no spectrum (overflowing logits): all deciles 0
        if bool(torch.isfinite(fisher).all()):
            entropy = decile_entropy(torch.linalg.svdvals(fisher))
    return {"vkdnw_entropy": entropy, "vkdnw": len(weight_layers(model)) + entropy}


VKDNW = Proxy("vkdnw", _vkdnw, outputs=("vkdnw", "vkdnw_entropy"))
VKDNW_PROXIES = (VKDNW,)
