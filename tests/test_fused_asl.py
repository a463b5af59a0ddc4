"""The asymmetric (ASL) element form and the per_class reduction in the C++ kernels (contract v2):
the CPU op and the CUDA kernel's code path run on the CPU (dbl::_cuda_emulate, with the MUFU error
model at its worst in either direction) against the reference, through AsymmetricLoss,
AsymmetricLossMultiLabel and DistributionBalancedLoss(gamma_neg=..., clip=...)."""
import dataclasses
import itertools

import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import loss as loss_module
from dbl_kernels import ops, reference
from dbl_kernels._spec import REDUCTIONS, make_aux

from conftest import cuda_emulate
from test_cpp_backend import _stats, cpp_ops, needs_ext

pytestmark = needs_ext
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
REDUCTION_NAMES = ("none", "sum", "mean", "batchmean", "per_class")
# (gamma_pos, gamma_neg): ASL's defaults, fractional, zero on either side and on both
GAMMAS = [(1.0, 4.0), (0.5, 2.5), (0.0, 0.0), (2.0, 0.0), (0.0, 1.5)]


def _labels(n, c, kind, seed=0):
    """Hard (with unknowns), soft (with unknowns) or partial (many unknowns) labels."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, c, generator=g) < 0.3).float()
    y[1] = 0  # a row without positives
    if kind == "soft":
        mask = torch.rand(n, c, generator=g) < 0.4
        y[mask] = torch.rand(n, c, generator=g)[mask]
    unknown = {"hard": 0.1, "soft": 0.1, "partial": 0.5}[kind]
    y[torch.rand(n, c, generator=g) < unknown] = -1
    return y


def _logits(n, c, dtype=torch.float32, seed=1, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    z[0, :4] = torch.tensor([40.0, -40.0, 95.0, -95.0])  # saturated: the gradients must stay finite
    return z.to(dtype)


def _close(a, b, tol):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    assert float((a - b).norm()) <= tol * max(float(b.norm()), 1e-30), float((a - b).norm() / b.norm())


def _loss_and_grad(module, z, y, weight=None, reduction=None):
    z = z.detach().clone().requires_grad_()
    loss = module(z, y, weight, reduction=reduction)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), z.grad


class _NoReference:
    """Within it, the reference raises: the call must run the fused op."""

    def __enter__(self):
        self.saved = reference.distribution_balanced_loss

        def boom(*args, **kwargs):
            raise AssertionError("this call ran the reference instead of the fused op")

        reference.distribution_balanced_loss = boom

    def __exit__(self, *exc):
        reference.distribution_balanced_loss = self.saved


def _compare(make, z, y, weight=None, reduction=None):
    """The module with backend='cpu' (which must not fall back to the reference) and the CUDA
    kernel's emulation, each against backend='reference'."""
    ref = _loss_and_grad(make("reference"), z, y, weight, reduction)
    tol = TOL[reference.compute_dtype(z)]
    fused = make("cpu")
    with _NoReference():
        ours = _loss_and_grad(fused, z, y, weight, reduction)
    _close(ours[0], ref[0], tol)
    _close(ours[1], ref[1], tol)
    for err in (1, -1) if z.dtype == torch.float32 else (0,):
        loss, grad = _emulated(fused, z, y, weight, reduction, err)
        _close(loss, ref[0], tol)
        _close(grad, ref[1], tol)


def _op_args(module, z, y, weight=None, reduction=None, need_grad=True):
    """The arguments the module gives the fused op (as loss._FusedLoss._fused)."""
    cfg = module.config if reduction is None else dataclasses.replace(module.config, reduction=reduction)
    _, spec = module._class_table(z.shape[1])
    class_freq, train_num, _ = module._reference_inputs()
    aux = make_aux(z, y, cfg, spec, class_freq, train_num)
    params = module._params(reference.compute_dtype(z), num_classes=z.shape[1])
    own = module._buffers.get("weight")  # AsymmetricLoss(weight=...): its forward multiplies it in
    if own is not None:
        weight = own if weight is None else weight * own
    w = None if weight is None else weight.expand(z.shape)
    return ops.op_args(z, y, w, params, aux, spec, need_grad, REDUCTIONS[cfg.reduction])


def _emulated(module, z, y, weight=None, reduction=None, err=0):
    loss, grad, _ = cuda_emulate(*_op_args(module, z, y, weight, reduction), err)
    return loss, grad


def _asl(**kw):
    return lambda backend: dk.AsymmetricLoss(backend=backend, **kw)


def asl_cases(gammas, num_classes):
    """(make, reduction): AsymmetricLoss with ``gammas`` x clip x the focusing weight constant or
    not x (smoothing, pos_weight), the reductions taken in turn."""
    pos_weight = torch.linspace(0.5, 2.0, num_classes, dtype=torch.float64)
    cases = itertools.product((0.0, 0.05), (False, True), ((0.0, None), (0.1, None), (0.0, pos_weight)))
    for i, (clip, constant, (smoothing, pw)) in enumerate(cases):
        yield (_asl(gamma_pos=gammas[0], gamma_neg=gammas[1], clip=clip, disable_torch_grad_focal_loss=constant,
                    smoothing=smoothing, pos_weight=pw), REDUCTION_NAMES[i % len(REDUCTION_NAMES)])


@pytest.mark.parametrize("kind", ["hard", "soft", "partial"])
@pytest.mark.parametrize("gammas", GAMMAS, ids=lambda g: f"g{g[0]}-{g[1]}")
def test_asymmetric_loss_matches_reference(kind, gammas):
    z, y = _logits(10, 24), _labels(10, 24, kind)
    for make, reduction in asl_cases(gammas, 24):
        _compare(make, z, y, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTION_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_reduction_and_weight(reduction, dtype):
    z, y = _logits(9, 16, dtype), _labels(9, 16, "soft")
    weight = torch.rand(16, generator=torch.Generator().manual_seed(3)) + 0.5  # per class, broadcast
    _compare(_asl(smoothing=0.1, pos_weight=2.0), z, y, reduction=reduction)
    _compare(_asl(clip=0.05, weight=weight), z, y, reduction=reduction)
    _compare(_asl(gamma_neg=3.0, gamma_pos=0.5), z, y, weight.expand(9, 16).contiguous() * 0.5, reduction)


def test_asymmetric_loss_multilabel_defaults():
    z, y = _logits(8, 12), _labels(8, 12, "hard")
    _compare(lambda backend: dk.AsymmetricLossMultiLabel(backend=backend, smoothing=0.1), z, y)
    _compare(lambda backend: dk.AsymmetricLossMultiLabel(backend=backend, pos_weight=torch.full((12,), 3.0)), z, y)


@pytest.mark.parametrize("reweight", [dict(reweight="rebalance"), dict(reweight="CB", cb_mode="average_w"),
                                      dict(reweight="inv"), dict(reweight=None)],
                         ids=lambda r: "-".join(str(v) for v in r.values()))
def test_db_asymmetric_focusing(reweight):
    c = 20
    z, stats = _logits(12, c), _stats(c)
    for kind, (logit_reg, norm, focal), (gamma_neg, clip) in itertools.product(
            ("hard", "soft"), ((True, None, True), (False, "by_instance", True), (True, "by_batch", False)),
            ((4.0, 0.0), (1.0, 0.05), (None, 0.05))):
        y = _labels(12, c, kind)
        cfg = dict(reweight, logit_reg=logit_reg, weight_norm=norm, focal=focal, gamma=1.5, gamma_neg=gamma_neg,
                   clip=clip)
        _compare(lambda backend: dk.DistributionBalancedLoss(stats, backend=backend, **cfg), z, y)
        _compare(lambda backend: dk.DistributionBalancedLoss(stats, backend=backend, **cfg), z, y,
                 reduction="per_class")


def test_per_class_is_the_column_sums_and_deterministic():
    z, y = _logits(300, 7), _labels(300, 7, "soft")
    stats = _stats(7)
    mod = dk.DistributionBalancedLoss(stats, backend="cpu", reduction="per_class")
    none = mod(z, y, reduction="none")
    per_class = mod(z, y)
    assert per_class.shape == (7,)
    _close(per_class, none.double().sum(0), 1e-6)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(mod(z, y))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)
    emulated = [_emulated(mod, z, y)[0] for _ in range(2)]
    assert torch.equal(emulated[0], emulated[1])
    _close(emulated[0], per_class, 1e-6)


def test_fused_supports_sends_asymmetric_configs_to_the_cpu_op():
    features = ops.features(cpp_ops.fused)
    assert {"asymmetric", "per_class"} <= features
    asl = dk.AsymmetricLoss(gamma_neg=None, clip=0.0, pos_weight=2.0)  # asymmetric through pos_weight alone
    assert not asl.config.asymmetric and asl._class_table(5)[1].asymmetric
    assert loss_module._fused_supports(features, asl.config, False, asl._reference_inputs()[2])
    assert not loss_module._fused_supports(frozenset(), asl.config, False, asl._reference_inputs()[2])
    # a backend without the feature runs the reference
    cfg = dk.AsymmetricLoss(reduction="per_class").config
    assert not loss_module._fused_supports(frozenset({"asymmetric"}), cfg, False)


def test_pos_weight_is_the_class_tables_pos_w_row():
    from dbl_kernels._spec import POS_W
    pw = torch.arange(1.0, 7.0)
    table, spec = dk.AsymmetricLoss(pos_weight=pw)._class_table(6)
    assert torch.equal(table[POS_W], pw.double()) and spec.asymmetric
    table, _ = dk.AsymmetricLoss()._class_table(6)
    assert torch.equal(table[POS_W], torch.ones(6, dtype=torch.float64))
    # and it acts: pos_weight 3 triples the positives' loss of a hard-label batch with gamma_pos 0
    z, y = _logits(6, 6), (_labels(6, 6, "hard") == 1).float()
    base = dk.AsymmetricLoss(gamma_pos=0, gamma_neg=0, clip=0, backend="cpu", reduction="none")(z, y)
    tripled = dk.AsymmetricLoss(gamma_pos=0, gamma_neg=0, clip=0, pos_weight=3.0, backend="cpu",
                                reduction="none")(z, y)
    _close(tripled[y == 1], 3 * base[y == 1], 1e-6)
    _close(tripled[y == 0], base[y == 0], 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(dtype):
    z, y = _logits(8, 16, dtype, scale=2.0), _labels(8, 16, "soft")
    ref = _loss_and_grad(dk.AsymmetricLoss(backend="reference"), z.float(), y)
    with _NoReference():
        loss, grad = _loss_and_grad(dk.AsymmetricLoss(backend="cpu"), z, y)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    _close(loss, ref[0], 1e-5)
    _close(grad.float(), ref[1], 1e-2)  # the gradient rounded to 16 bits


def test_opcheck_on_the_op():
    z, y = _logits(6, 10), _labels(6, 10, "soft")
    for reduction, mod in (("per_class", dk.AsymmetricLoss(smoothing=0.1, pos_weight=2.0)),
                           ("none", dk.AsymmetricLoss(clip=0.0, disable_torch_grad_focal_loss=True)),
                           ("sum", dk.DistributionBalancedLoss(_stats(10), gamma_neg=3.0, clip=0.05))):
        torch.library.opcheck(cpp_ops.fused, _op_args(mod, z, y, reduction=reduction, need_grad=False))
        torch.library.opcheck(cpp_ops.fused, _op_args(mod, z.clone().requires_grad_(), y, reduction=reduction))


def test_gradcheck_fp64():
    y = _labels(5, 6, "soft")
    z = _logits(5, 6, torch.float64, scale=2.0)[1:].contiguous()  # no saturated row: finite differences
    y = y[1:].contiguous()
    for mod in (dk.AsymmetricLoss(backend="cpu", gamma_pos=0.5, gamma_neg=2.5, clip=0.05, smoothing=0.1,
                                  pos_weight=torch.linspace(0.5, 2, 6)),
                dk.AsymmetricLoss(backend="cpu", gamma_neg=2.0, reduction="per_class"),  # (a constant focusing
                # weight, disable_torch_grad_focal_loss, is not the true derivative: against the reference only)
                dk.DistributionBalancedLoss(_stats(6), backend="cpu", gamma_neg=3.0, clip=0.05)):
        assert torch.autograd.gradcheck(lambda x: mod(x, y), (z.clone().requires_grad_(),))


def test_saturated_logits_keep_every_gamma_finite():
    z = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0]] * 4)
    y = torch.tensor([[1.0] * 5, [0.0] * 5, [0.3] * 5, [-1.0, 1.0, 0.0, 1.0, 0.0]])
    for gp, gn, clip in itertools.product((0.0, 0.25, 1.0), (0.0, 0.5, 4.0), (0.0, 0.05)):
        make = _asl(gamma_pos=gp, gamma_neg=gn, clip=clip, reduction="none")
        loss, grad = _loss_and_grad(make("cpu"), z, y)
        ref = _loss_and_grad(make("reference"), z.double(), y.double())
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        _close(loss, ref[0], 1e-5)
        _close(grad, ref[1], 1e-5)
        emu_loss, emu_grad = _emulated(make("cpu"), z, y, reduction="none", err=1)
        assert torch.isfinite(emu_grad).all()
        _close(emu_loss, ref[0], 1e-5)
        _close(emu_grad, ref[1], 1e-5)
