"""The Asymmetric Loss (ASL) family and DB with asymmetric focusing: against ASL written from the
paper's equations, identities with BCE and DB-focal, soft / partial labels, every backend."""
import pytest
import torch
import torch.nn.functional as F

import dbl_kernels as dk

BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda") if b in dk.available_backends()]


def paper_asl(x, y, gamma_neg=4.0, gamma_pos=1.0, clip=0.05, eps=1e-8, constant_weight=False, smoothing=0.0,
              weight=None, pos_weight=None, reduction="sum"):
    """ASL as Ridnik et al. write it (eq. 1-4): sigmoid probabilities, the negatives' probability
    shifted by the margin, log terms clamped at eps, the one-sided focusing weight."""
    x, y = x.double(), y.double()
    if smoothing:
        y = y * (1 - smoothing) + 0.5 * smoothing
    p = torch.sigmoid(x)
    p_neg = (1 - p + clip).clamp(max=1) if clip else 1 - p
    log_pos = y * torch.log(p.clamp(min=eps))
    if pos_weight is not None:
        log_pos = log_pos * pos_weight
    log_likelihood = log_pos + (1 - y) * torch.log(p_neg.clamp(min=eps))
    with torch.set_grad_enabled(torch.is_grad_enabled() and not constant_weight):
        p_t = p * y + p_neg * (1 - y)
        focus = torch.pow(1 - p_t, gamma_pos * y + gamma_neg * (1 - y))
    loss = -log_likelihood * focus
    if weight is not None:
        loss = loss * weight
    return {"sum": loss.sum(), "batchmean": loss.sum() / x.shape[0], "mean": loss.mean(), "none": loss}[reduction]


def _inputs(n=9, c=12, seed=0, scale=3.0, kind="hard"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    if kind == "soft":
        y = torch.rand(n, c, generator=g, dtype=torch.float64)
    else:
        y = (torch.rand(n, c, generator=g) < 0.35).double()
    return x, y


def _loss_and_grad(fn, x, y, go=None):
    x = x.clone().requires_grad_()
    loss = fn(x, y)
    loss.backward(torch.ones_like(loss) if go is None else go)
    return loss.detach(), x.grad


def _close(ours, ref, tol):
    for a, b in zip(ours, ref):
        a, b = a.double(), b.double()
        assert float((a - b).norm() / b.norm().clamp_min(1e-30)) < tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [
    dict(),  # Alibaba-MIIL's defaults: gamma_neg 4, gamma_pos 1, clip 0.05, gradient through the weight
    dict(gamma_neg=2.5, gamma_pos=0.5, clip=0.1),
    dict(gamma_neg=4, gamma_pos=1, clip=0.0),
    dict(disable_torch_grad_focal_loss=True),
    dict(smoothing=0.1, pos_weight=2.0),
    dict(clip=None, gamma_neg=1.0),
])
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_asl_matches_the_paper(backend, options, kind):
    x, y = _inputs(kind=kind)
    theirs = dict(options)
    if "disable_torch_grad_focal_loss" in theirs:
        theirs["constant_weight"] = theirs.pop("disable_torch_grad_focal_loss")
    if theirs.get("clip", 0.05) is None:
        theirs["clip"] = 0.0
    ours = dk.AsymmetricLoss(backend=backend, **options)
    tol = 1e-12 if backend == "reference" else 1e-9
    _close(_loss_and_grad(ours, x, y), _loss_and_grad(lambda a, b: paper_asl(a, b, **theirs), x, y), tol)
    _close(_loss_and_grad(ours, x.float(), y.float()), _loss_and_grad(lambda a, b: paper_asl(a, b, **theirs), x, y), 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_timm_class_and_its_reductions(backend, reduction):
    x, y = _inputs(seed=4)
    weight = torch.rand(12, dtype=torch.float64) + 0.5
    pos_weight = torch.linspace(0.5, 3.0, 12, dtype=torch.float64)
    ours = dk.AsymmetricLossMultiLabel(smoothing=0.05, reduction=reduction, weight=weight, pos_weight=pos_weight,
                                       backend=backend)
    go = torch.rand(9, 12, dtype=torch.float64) if reduction == "none" else None
    ref = _loss_and_grad(lambda a, b: paper_asl(a, b, smoothing=0.05, weight=weight, pos_weight=pos_weight,
                                                reduction=reduction), x, y, go)
    _close(_loss_and_grad(ours, x, y, go), ref, 1e-9)
    assert dk.AsymmetricLossMultiLabel().config.reduction == "batchmean"
    assert dk.AsymmetricLoss().config.reduction == "sum"


@pytest.mark.parametrize("backend", BACKENDS)
def test_asl_without_focusing_or_clip_is_bce_summed(backend):
    x, y = _inputs(seed=2, kind="soft")
    ours = dk.AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, backend=backend)
    bce = lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="sum")  # noqa: E731
    _close(_loss_and_grad(ours, x, y), _loss_and_grad(bce, x, y), 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["coco-mlt", "voc-mlt"])
def test_db_with_default_asymmetric_options_is_db_focal(backend, preset):
    stats = dk.ClassStats.preset(preset)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, stats.num_classes, generator=g, dtype=torch.float64) * 3
    hard = (torch.rand(x.shape, generator=g) < 0.1).double()
    soft = torch.rand(x.shape, generator=g, dtype=torch.float64)
    db = dk.DistributionBalancedLoss.from_preset(preset, backend=backend)
    same = dk.DistributionBalancedLoss.from_preset(preset, gamma_neg=None, clip=0.0, backend=backend)
    for y in (hard, soft):
        a, b = _loss_and_grad(db, x, y), _loss_and_grad(same, x, y)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # an explicit gamma_neg equal to gamma takes the asymmetric form: equal on hard labels
    explicit = dk.DistributionBalancedLoss.from_preset(preset, gamma_neg=2.0, backend=backend)
    _close(_loss_and_grad(explicit, x, hard), _loss_and_grad(db, x, hard), 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_db_asl_terms(backend):
    # DB-ASL = re-balancing weight x NTR weight x balance_param x ASL's element loss on the NTR logits
    stats = dk.ClassStats.preset("voc-mlt")
    x, _ = _inputs(n=10, c=20, seed=7)
    y = (torch.rand(10, 20, generator=torch.Generator().manual_seed(8)) < 0.15).double()
    loss_fn = dk.DistributionBalancedLoss(stats, gamma_neg=4.0, clip=0.05, reduction="none", backend=backend)
    plain = dk.DistributionBalancedLoss(stats, focal=False, reduction="none", backend="reference")
    # the non-focal DB loss gives w' * BCE(x'): with it, the ASL factor per element is recovered
    cfg = loss_fn.config
    from dbl_kernels import reference as R

    n = torch.tensor(stats.class_freq)
    w = R.normalize(R.reweight(y, n, stats.train_num, cfg), cfg)
    xs, ws = R.negative_tolerant(x, w, y, R.ntr_bias(n, stats.train_num, cfg), cfg)
    expect = cfg.balance_param * ws * paper_asl(xs, y, gamma_neg=4.0, gamma_pos=2.0, clip=0.05, reduction="none")
    torch.testing.assert_close(loss_fn(x, y).double(), expect, rtol=1e-9, atol=1e-12)
    assert plain(x, y).shape == expect.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_labels_and_saturated_logits(backend):
    x, y = _inputs(seed=9)
    y[0, :4] = -1
    x[1, :3] = torch.tensor([60.0, -60.0, 45.0])  # saturated: fractional gammas must stay finite
    y[1, :3] = torch.tensor([1.0, 0.0, 0.0])
    for options in (dict(gamma_pos=0.5, gamma_neg=0.3, clip=0.0), dict(gamma_pos=0.5, gamma_neg=2.5, clip=0.05)):
        loss, grad = _loss_and_grad(dk.AsymmetricLoss(backend=backend, reduction="none", **options), x, y)
        assert torch.isfinite(grad).all() and torch.isfinite(loss).all()
        assert torch.equal(loss[0, :4], torch.zeros(4, dtype=loss.dtype)) and torch.equal(grad[0, :4], torch.zeros(4))
        known = y[2:] >= 0
        ref = paper_asl(x[2:], y[2:], reduction="none", **options)
        torch.testing.assert_close(loss[2:][known].double(), ref[known], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_class_reduction(backend):
    for loss_fn in (dk.AsymmetricLoss(reduction="per_class", backend=backend),
                    dk.DistributionBalancedLoss("voc-mlt", reduction="per_class", backend=backend)):
        c = 12 if isinstance(loss_fn, dk.AsymmetricLoss) else 20
        x, y = _inputs(c=c, seed=11)
        total = _loss_and_grad(lambda a, b: loss_fn(a, b, reduction="sum"), x, y)
        per_class = _loss_and_grad(loss_fn, x, y)
        assert per_class[0].shape == (c,)
        torch.testing.assert_close(per_class[0].sum(), total[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(per_class[1], total[1], rtol=1e-12, atol=0)
        go = torch.rand(c, dtype=torch.float64)  # each column's gradient scaled by its own entry
        scaled = _loss_and_grad(loss_fn, x, y, go)
        none = _loss_and_grad(lambda a, b: loss_fn(a, b, reduction="none"), x, y, go.expand(x.shape[0], c))
        torch.testing.assert_close(scaled[1], none[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_asl_gradcheck(backend):
    x, y = _inputs(n=3, c=4, seed=12, scale=2.0)
    y[0, 0] = -1
    # (disable_torch_grad_focal_loss gives a deliberately partial gradient: not gradcheck's business)
    for options in (dict(), dict(gamma_neg=2.5, gamma_pos=0.5, smoothing=0.1, pos_weight=1.5)):
        loss_fn = dk.AsymmetricLoss(backend=backend, **options)
        assert torch.autograd.gradcheck(lambda a: loss_fn(a, y), (x.clone().requires_grad_(),))


def test_functional_form_and_bad_options():
    x, y = _inputs(seed=13)
    torch.testing.assert_close(dk.asymmetric_loss(x, y, gamma_neg=3, pos_weight=[2.0] * 12),
                               dk.AsymmetricLoss(gamma_neg=3, pos_weight=2.0)(x, y))
    with pytest.raises(ValueError, match="reduction='avg' is not supported"):
        dk.AsymmetricLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"clip must lie in \[0, 1\)"):
        dk.AsymmetricLoss(clip=1.0)
    with pytest.raises(ValueError, match="gamma_neg must be >= 0"):
        dk.AsymmetricLoss(gamma_neg=-1)
    with pytest.raises(ValueError, match="pos_weight must be a number or a per-class vector"):
        dk.AsymmetricLoss(pos_weight=torch.ones(2, 2))
    assert dk.AsymmetricLoss(eps=1e-4)(x, y).isfinite()  # accepted; the logs are exact
