"""The reference loss: golden values of the authors' code, identities, gradients, label kinds."""
import math

import pytest
import torch
import torch.nn.functional as F

import dbl_kernels as dk
from dbl_kernels import reference
from dbl_kernels.reference import LossConfig

from conftest import GOLDEN_CASES, golden_case, rel_err


def _voc(**options):
    return dk.DistributionBalancedLoss("voc-mlt", backend="reference", **options)


def _inputs(n=12, c=20, seed=0, scale=3.0, p=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    labels = (torch.rand(n, c, generator=g) < p).to(torch.uint8)
    labels[:, 0] = 1  # every row has a positive
    return logits, labels


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c["name"] for c in GOLDEN_CASES])
def test_golden_matches_authors_resample_loss(case, golden_arrays):
    kwargs, (freq, neg), logits, labels, loss_ref, grad_ref = golden_case(case, golden_arrays)
    loss_fn = dk.ResampleLoss(class_freq=freq, neg_class_freq=neg, backend="reference", **kwargs)
    z = logits.clone().requires_grad_()
    loss = loss_fn(z, labels)
    loss.backward()
    assert abs(loss.item() - loss_ref) / abs(loss_ref) <= 1e-5
    assert rel_err(z.grad, grad_ref) <= 1e-5


def test_plain_bce_identity():
    z, y = _inputs()
    loss_fn = _voc(reweight=None, focal=False, logit_reg=False)
    for reduction in ("mean", "sum", "none"):
        ours = loss_fn(z, y, reduction=reduction)
        torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(z, y.float(), reduction=reduction))


def test_focal_over_bce_is_modulator_times_weight():
    z, y = _inputs(seed=1)
    cfg = dict(gamma=2.0, balance_param=2.0, reduction="none")
    focal = _voc(**cfg)(z, y)
    plain = _voc(focal=False, **{k: v for k, v in cfg.items() if k != "gamma"})(z, y)
    # plain = w' * l, focal = balance * (1 - p_t)^gamma * w' * l with p_t from the NTR logits
    stats = dk.ClassStats.preset("voc-mlt")
    n = torch.tensor(stats.class_freq, dtype=torch.float32)
    lam = 2.0  # the default neg_scale
    bias = -torch.log(stats.train_num / n - 1) * 0.05 / lam
    x = (z + bias) * (y + lam * (1 - y))
    p_t = torch.exp(-F.binary_cross_entropy_with_logits(x, y.float(), reduction="none"))
    torch.testing.assert_close(focal / plain, 2.0 * (1 - p_t) ** 2, rtol=1e-4, atol=1e-6)


def test_rebalance_weight_formula():
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    n = torch.tensor([10.0, 100.0, 1000.0])
    cfg = LossConfig(map_alpha=0.1, map_beta=10.0, map_gamma=0.2)
    w = reference.rebalance_weight(y, n, cfg)
    r0 = 1 / 10 + 1 / 1000
    expected0 = [0.1 + 1 / (1 + math.exp(-10 * ((1 / nj) / r0 - 0.2))) for nj in (10, 100, 1000)]
    torch.testing.assert_close(w[0], torch.tensor(expected0))
    assert w[1, 1].item() == pytest.approx(0.1 + 1 / (1 + math.exp(-10 * (1 - 0.2))))


def test_cb_modes():
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    n = torch.tensor([10.0, 100.0, 1000.0])
    cb = lambda k: (1 - 0.9) / (1 - 0.9 ** k)  # noqa: E731
    expect = {
        "by_class": [cb(10), cb(100), cb(1000)],
        "average_w": [(cb(10) + cb(1000)) / 2] * 3,
        "average_n": [cb(505.0)] * 3,
        "min_n": [cb(10)] * 3,
    }
    for mode, row0 in expect.items():
        w = reference.cb_weight(y, n, LossConfig(reweight="CB", cb_beta=0.9, cb_mode=mode))
        torch.testing.assert_close(w[0], torch.tensor(row0, dtype=torch.float32))
        # a row without positives falls back to the per-class weight (the authors' code gives NaN)
        torch.testing.assert_close(w[1], torch.tensor(expect["by_class"], dtype=torch.float32))


@pytest.mark.parametrize("reweight", ["rebalance", "CB", "inv", "sqrt_inv", None])
@pytest.mark.parametrize("weight_norm", [None, "by_instance", "by_batch"])
def test_gradcheck_fp64(reweight, weight_norm):
    z, y = _inputs(n=5, c=20, seed=2)
    loss_fn = _voc(reweight=reweight, weight_norm=weight_norm, gamma=1.5)
    z = z.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: loss_fn(t, y), (z,))


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 2.0])
def test_focal_gradient_finite_at_saturation(gamma):
    torch.manual_seed(3)
    z = (torch.randn(64, 20) * 9).requires_grad_()
    y = (torch.rand(64, 20) < 0.3).to(torch.uint8)
    _voc(gamma=gamma)(z, y).backward()
    assert torch.isfinite(z.grad).all()
    # the closed form agrees with autograd of the naive formula where that one is finite
    z2 = z.detach().double().requires_grad_()
    x, yy = z2, y.double()
    loss = F.binary_cross_entropy_with_logits(x, yy, reduction="none")
    naive = ((1 - torch.exp(-loss)) ** gamma * loss).sum()
    naive.backward()
    ours = z2.detach().requires_grad_()
    reference._FocalBCE.apply(ours, yy, gamma).sum().backward()
    finite = torch.isfinite(z2.grad)
    torch.testing.assert_close(ours.grad[finite], z2.grad[finite])


def test_gamma_half_saturated_gradient_is_nonzero_and_bounded():
    z = torch.tensor([[40.0, -40.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    reference._FocalBCE.apply(z, y, 0.5).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().max() < 1e-8


def test_partial_labels_are_ignored():
    z, y = _inputs(seed=4)
    y = y.to(torch.int8)
    y_partial = y.clone()
    y_partial[::2, 3:9] = -1
    zz = z.clone().requires_grad_()
    loss_fn = _voc(reduction="sum")
    loss_fn(zz, y_partial).backward()
    assert (zz.grad[::2, 3:9] == 0).all()
    # same as dropping those entries: equal to the loss of a weight mask on fully-known labels with
    # the unknown entries removed from the row sums (set them to 0 there)
    mask = (y_partial != -1).float()
    masked = _voc(reduction="none")(z, y_partial.clamp(min=0)) * mask
    torch.testing.assert_close(loss_fn(z, y_partial), masked.sum())
    mean = _voc()(z, y_partial)
    torch.testing.assert_close(mean, masked.sum() / mask.sum())


def test_soft_labels_interpolate():
    z, y = _inputs(seed=5)
    soft = y.float() * 0.9 + 0.05
    loss_fn = _voc()
    out = loss_fn(z, soft)
    assert torch.isfinite(out)
    assert out != loss_fn(z, y)
    hard_again = loss_fn(z, y.float())
    torch.testing.assert_close(hard_again, loss_fn(z, y))


def test_weight_argument_multiplies_elementwise_loss():
    z, y = _inputs(seed=6)
    w = torch.rand(z.shape[0], 1)
    loss_fn = _voc(reduction="none")
    torch.testing.assert_close(loss_fn(z, y, weight=w), loss_fn(z, y) * w)


def test_label_dtypes_agree():
    z, y = _inputs(seed=7)
    base = _voc()(z, y)
    for dtype in (torch.bool, torch.int8, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64):
        torch.testing.assert_close(_voc()(z, y.to(dtype)), base)


def test_half_logits_give_fp32_loss_and_half_grad():
    z, y = _inputs(seed=8)
    for dtype in (torch.float16, torch.bfloat16):
        zh = z.to(dtype).requires_grad_()
        loss = _voc()(zh, y)
        assert loss.dtype == torch.float32
        loss.backward()
        assert zh.grad.dtype == dtype
        torch.testing.assert_close(loss, _voc()(zh.detach().float(), y), rtol=1e-5, atol=1e-6)


def test_fp64_loss_is_fp64():
    z, y = _inputs(seed=9)
    assert _voc()(z.double(), y).dtype == torch.float64


def test_no_input_mutation():
    z, y = _inputs(seed=10)
    z.requires_grad_()
    w = torch.rand_like(z)
    copies = [t.detach().clone() for t in (z, y, w)]
    versions = [t._version for t in (z, y, w)]
    _voc()(z, y, weight=w).backward()
    for t, c, v in zip((z, y, w), copies, versions):
        assert torch.equal(t.detach(), c) and t._version == v


def test_empty_batch_matches_bce_but_its_mean_is_zero():
    # torch's mean over nothing is NaN; a mean over zero known entries here is 0 (partial-label
    # batches may have none), so one empty or all-unknown batch cannot turn a model's weights NaN.
    for reduction in ("mean", "sum", "none"):
        z, y = torch.empty(0, 20), torch.empty(0, 20)
        ref = F.binary_cross_entropy_with_logits(z, y, reduction=reduction)
        ours = _voc(reduction=reduction)(z, y)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, torch.zeros(()) if reduction == "mean" else ref)


def test_ntr_bias_forms():
    """'official' divides the prior bias by lambda (the authors' code); 'paper' is eq. 9 as printed."""
    stats = dk.ClassStats.preset("voc-mlt")
    official = reference.ntr_bias(torch.tensor(stats.class_freq), stats.train_num, LossConfig(neg_scale=5.0))
    paper = reference.ntr_bias(torch.tensor(stats.class_freq), stats.train_num,
                               LossConfig(neg_scale=5.0, ntr_bias="paper"))
    torch.testing.assert_close(paper, official * 5.0)
    z, y = _inputs(seed=11)
    assert _voc(ntr_bias="paper")(z, y) != _voc()(z, y)
