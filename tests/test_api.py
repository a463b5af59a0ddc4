"""Public API: module, functional form, presets, ResampleLoss compatibility, dispatch, bad input."""
import numpy as np
import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import backends

from conftest import SHARED, dataset_counts


def _inputs(n=6, c=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 2, (torch.rand(n, c, generator=g) < 0.3).to(torch.uint8)


def test_presets_carry_the_authors_configs():
    coco = dk.DistributionBalancedLoss.from_preset("coco-mlt")
    voc = dk.DistributionBalancedLoss.from_preset("voc-mlt")
    assert coco.num_classes == 80 and voc.num_classes == 20
    assert (voc.config.map_gamma, voc.config.neg_scale) == (0.3, 5.0)
    assert (coco.config.map_gamma, coco.config.neg_scale) == (0.2, 2.0)
    assert dk.DistributionBalancedLoss.from_preset("voc-mlt", gamma=1.0).config.gamma == 1.0
    with pytest.raises(ValueError, match="unknown preset"):
        dk.DistributionBalancedLoss.from_preset("coco")


def test_functional_equals_module():
    z, y = _inputs()
    module = dk.DistributionBalancedLoss("voc-mlt", gamma=1.0, reduction="sum", backend="reference")
    functional = dk.distribution_balanced_loss(z, y, "voc-mlt", gamma=1.0, reduction="sum", backend="reference")
    torch.testing.assert_close(module(z, y), functional)
    with pytest.raises(TypeError, match="unknown option"):
        dk.distribution_balanced_loss(z, y, "voc-mlt", gama=1.0)


def test_buffers_follow_to():
    module = dk.DistributionBalancedLoss("voc-mlt").half()  # e.g. a model cast to half precision
    assert module.class_freq.dtype == module.class_params.dtype == torch.float64
    torch.testing.assert_close(module.class_freq, torch.tensor(dk.ClassStats.preset("voc-mlt").class_freq))
    z, y = _inputs()
    meta = dk.DistributionBalancedLoss("voc-mlt").to("meta")
    assert meta.class_freq.device.type == "meta" and meta.class_params.device.type == "meta"
    assert torch.isfinite(module(z, y))


def test_resample_loss_constructor_and_freq_file(tmp_path):
    freq, neg = dataset_counts("voc-mlt")
    cfg = dict(use_sigmoid=True, reweight_func="rebalance",
               focal=dict(focal=True, balance_param=2.0, gamma=2),
               logit_reg=dict(neg_scale=5.0, init_bias=0.05),
               map_param=dict(alpha=0.1, beta=10.0, gamma=0.3), loss_weight=1.0)
    by_counts = dk.ResampleLoss(class_freq=freq, neg_class_freq=neg, **cfg)
    dk.ClassStats(freq, neg).save(tmp_path / "freq.npz")
    by_file = dk.ResampleLoss(freq_file=str(tmp_path / "freq.npz"), **cfg)
    preset = dk.DistributionBalancedLoss.from_preset("voc-mlt")
    z, y = _inputs()
    torch.testing.assert_close(by_counts(z, y), preset(z, y))
    torch.testing.assert_close(by_file(z, y), preset(z, y))
    legacy = SHARED / "data" / "legacy" / "coco_mlt_class_freq.pkl"
    if legacy.exists():
        assert dk.ResampleLoss(freq_file=str(legacy), reweight_func="rebalance").num_classes == 80


def test_resample_loss_reduction_override_and_avg_factor():
    freq, neg = dataset_counts("voc-mlt")
    loss_fn = dk.ResampleLoss(class_freq=freq, neg_class_freq=neg, reweight_func="rebalance")
    z, y = _inputs()
    none = loss_fn(z, y, reduction_override="none")
    assert none.shape == z.shape
    torch.testing.assert_close(loss_fn(z, y, reduction_override="sum"), none.sum())
    torch.testing.assert_close(loss_fn(z, y, avg_factor=10.0), none.sum() / 10.0)
    with pytest.raises(ValueError, match="reduction_override"):
        loss_fn(z, y, reduction_override="avg")


def test_resample_loss_reweight_none_with_neg_scale_works():
    """The authors' class crashes here (None / neg_scale); ours uses w = 1."""
    freq, neg = dataset_counts("voc-mlt")
    loss_fn = dk.ResampleLoss(class_freq=freq, neg_class_freq=neg, reweight_func=None,
                              logit_reg=dict(neg_scale=2.0, init_bias=0.05))
    z, y = _inputs()
    assert torch.isfinite(loss_fn(z, y))


def test_resample_loss_rejects_softmax_and_ambiguous_stats():
    freq, neg = dataset_counts("voc-mlt")
    with pytest.raises(NotImplementedError, match="use_sigmoid"):
        dk.ResampleLoss(use_sigmoid=False, class_freq=freq, neg_class_freq=neg)
    with pytest.raises(ValueError, match="exactly one"):
        dk.ResampleLoss(reweight_func="rebalance")
    with pytest.raises(TypeError, match="unknown keyword"):
        dk.ResampleLoss(class_freq=freq, neg_class_freq=neg, foo=1)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda z, y: (z[:, :5], y), ValueError, "shape"),
    (lambda z, y: (z, y[:, :5]), ValueError, "labels must have the logits' shape"),
    (lambda z, y: (z[0], y[0]), ValueError, "2-D"),
    (lambda z, y: (z.long(), y), TypeError, "logits must be float"),
    (lambda z, y: (z, y * 3), ValueError, "integer labels must be 0, 1 or -1"),
    (lambda z, y: (z, y.float() * 2), ValueError, r"float labels must lie in \[0, 1\]"),
    (lambda z, y: (z, y.float() - 0.5), ValueError, "negative values other than -1"),
    (lambda z, y: (z, y.float() * float("nan")), ValueError, "float labels"),
    (lambda z, y: (z.numpy(), y), TypeError, "logits must be a torch.Tensor"),
    (lambda z, y: (z, y.float().requires_grad_()), ValueError, "labels require grad"),
])
def test_bad_inputs_raise_clear_errors(bad, exc, match):
    z, y = _inputs()
    z_bad, y_bad = bad(z, y)
    loss_fn = dk.DistributionBalancedLoss("voc-mlt", backend="reference")
    with pytest.raises(exc, match=match):
        loss_fn(z_bad, y_bad)


def test_bad_weight_and_options():
    z, y = _inputs()
    loss_fn = dk.DistributionBalancedLoss("voc-mlt")
    with pytest.raises(ValueError, match="does not broadcast"):
        loss_fn(z, y, weight=torch.ones(3))
    with pytest.raises(ValueError, match="enlarge"):
        loss_fn(z, y, weight=torch.ones(2, 6, 20))
    for kwargs, match in [(dict(reweight="focal"), "reweight"), (dict(weight_norm="by_row"), "weight_norm"),
                          (dict(cb_mode="avg"), "cb_mode"), (dict(reduction="avg"), "reduction"),
                          (dict(backend="gpu"), "backend"), (dict(ntr_bias="x"), "ntr_bias"),
                          (dict(neg_scale=0.0), "neg_scale"), (dict(cb_beta=1.0), "cb_beta"),
                          (dict(gamma=-0.5), "gamma"), (dict(focal="yes"), "focal"),
                          (dict(map_beta=float("inf")), "map_beta")]:
        with pytest.raises((ValueError, TypeError), match=match):
            dk.DistributionBalancedLoss("voc-mlt", **kwargs)
    with pytest.raises(TypeError, match="ClassStats"):
        dk.DistributionBalancedLoss(3)


def test_bad_stats_size():
    z, y = _inputs(c=80)
    with pytest.raises(ValueError, match="C=80 columns but the class statistics have 20"):
        dk.DistributionBalancedLoss("voc-mlt")(z, y)


def test_available_backends_and_env_override(monkeypatch):
    names = dk.available_backends()
    assert "reference" in names
    monkeypatch.setenv("DBL_BACKEND", "reference")
    assert backends.resolve("auto", "cpu") == "reference"
    monkeypatch.setenv("DBL_BACKEND", "nope")
    with pytest.raises(ValueError, match="DBL_BACKEND"):
        backends.resolve("auto", "cpu")
    monkeypatch.delenv("DBL_BACKEND")
    assert backends.resolve("auto", "cpu") in names
    if "cuda" in names:
        with pytest.raises(ValueError, match="cannot run on cpu"):
            backends.resolve("cuda", "cpu")


def test_unavailable_backend_says_how_to_get_it():
    missing = [b for b in ("cpu", "cuda", "triton") if b not in dk.available_backends()]
    if not missing:
        pytest.skip("every backend is available here")
    z, y = _inputs()
    with pytest.raises(ValueError, match="not available here"):
        dk.DistributionBalancedLoss("voc-mlt", backend=missing[0])(z, y)


@pytest.mark.parametrize("validate", [None, False])
@pytest.mark.parametrize("with_unknown", [False, True])
def test_mean_count_with_and_without_label_check(validate, with_unknown):
    """The label check tells the fused kernels whether -1 occurs; without it they count on the device."""
    fused = [b for b in dk.available_backends() if b in ("cpu", "triton")]
    if not fused:
        pytest.skip("no fused CPU backend here")
    z, y = _inputs(n=9)
    y = y.float()
    if with_unknown:
        y[::3, 2:7] = -1
    ref = dk.DistributionBalancedLoss("voc-mlt", backend="reference")(z, y)
    for backend in fused:
        ours = dk.DistributionBalancedLoss("voc-mlt", backend=backend, validate_labels=validate)(z, y)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_half_cast_keeps_large_counts_exact():
    stats = dk.ClassStats([3.0, 70000.0, 2049.0], train_num=200000)
    z, y = _inputs(c=3)
    full = dk.DistributionBalancedLoss(stats, backend="reference")(z, y)
    halved = dk.DistributionBalancedLoss(stats, backend="reference").half()(z, y)
    assert torch.isfinite(halved)
    torch.testing.assert_close(halved, full)


def test_stats_do_not_touch_the_callers_array():
    counts = np.array([3.0, 50.0, 2049.0])
    dk.ClassStats(counts, train_num=1e5)
    counts[0] = 4.0  # still writable
    assert counts.flags.writeable


def test_functional_accepts_validate_labels_and_avg_factor():
    z, y = _inputs()
    total = dk.distribution_balanced_loss(z, y, "voc-mlt", reduction="sum")
    torch.testing.assert_close(dk.distribution_balanced_loss(z, y, "voc-mlt", avg_factor=4.0), total / 4.0)
    with pytest.raises(ValueError, match="integer labels"):
        dk.distribution_balanced_loss(z, y * 3, "voc-mlt", validate_labels=True)
    # unchecked, invalid labels are the caller's responsibility: no error, some number
    assert torch.isfinite(dk.distribution_balanced_loss(z, y * 3, "voc-mlt", validate_labels=False,
                                                        backend="reference"))


def test_functional_reuses_one_module_per_preset():
    from dbl_kernels import loss as loss_module

    z, y = _inputs()
    dk.distribution_balanced_loss(z, y, "voc-mlt", gamma=1.25)
    before = len(loss_module._FUNCTIONAL)
    for _ in range(5):
        dk.distribution_balanced_loss(z, y, "voc-mlt", gamma=1.25)
    assert len(loss_module._FUNCTIONAL) == before


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if b in dk.available_backends()] or ["none"])
def test_registered_op_backward_twice_and_its_create_graph_error(backend):
    # The op's own autograd (what traced code runs) scales out of place, so a retained graph can be
    # back-propagated again; it has no differentiable backward, and says so.
    if backend == "none":
        pytest.skip("no fused CPU backend here")
    from dbl_kernels import backends, ops
    from dbl_kernels._spec import make_aux

    z, y = _inputs()
    module = dk.DistributionBalancedLoss("voc-mlt", backend=backend)
    z = z.requires_grad_()
    aux = make_aux(z, y, module.config, module.spec, module.class_freq, module.stats.train_num)
    args = ops.op_args(z, y, None, module._params(torch.float32), aux, module.spec, True)
    loss, _ = backends.fused_op(backend)(*args)
    a, = torch.autograd.grad(loss, z, retain_graph=True)
    b, = torch.autograd.grad(loss, z, torch.tensor(2.0), retain_graph=True)
    assert torch.equal(2 * a, b)
    with pytest.raises(RuntimeError, match="create_graph"):
        torch.autograd.grad(loss, z, create_graph=True)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if b in dk.available_backends()] or ["none"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_eager_fast_path_equals_the_registered_autograd(backend, reduction):
    # Eager calls go through a plain autograd.Function (ops.call); traced ones through the custom
    # op's registered autograd. Same kernel, same formula: bit-identical loss and gradient.
    if backend == "none":
        pytest.skip("no fused CPU backend here")
    from dbl_kernels import backends, ops
    from dbl_kernels._spec import make_aux

    z, y = _inputs()
    module = dk.DistributionBalancedLoss("voc-mlt", backend=backend, reduction=reduction)
    go = torch.rand(z.shape) if reduction == "none" else torch.tensor(3.7)
    z1 = z.clone().requires_grad_()
    loss1 = module(z1, y)
    loss1.backward(go)
    z2 = z.clone().requires_grad_()
    aux = make_aux(z2, y, module.config, module.spec, module.class_freq, module.stats.train_num)
    args = ops.op_args(z2, y, None, module._params(torch.float32), aux, module.spec, True)
    loss2, _ = backends.fused_op(backend)(*args)  # the op itself: its registered autograd
    assert loss2.grad_fn is not None and type(loss2.grad_fn).__name__ != type(loss1.grad_fn).__name__
    loss2.backward(go)
    assert torch.equal(loss1, loss2) and torch.equal(z1.grad, z2.grad)


_FUNC_BACKENDS = ["reference"] + [b for b in ("cpu", "triton") if b in dk.available_backends()]


@pytest.mark.parametrize("backend", _FUNC_BACKENDS)
def test_torch_func_grad_vmap_and_forward_ad(backend):
    # The fused ops are first-order reverse mode only; under torch.func transforms or with a
    # forward-mode tangent the loss runs the reference, which supports them.
    import torch.autograd.forward_ad as fwAD

    z, y = _inputs()
    loss_fn = dk.DistributionBalancedLoss("voc-mlt", backend=backend)
    reference = dk.DistributionBalancedLoss("voc-mlt", backend="reference")
    zr = z.clone().requires_grad_()
    (expected,) = torch.autograd.grad(reference(zr, y), zr)
    torch.testing.assert_close(torch.func.grad(lambda t: loss_fn(t, y))(z), expected)
    tangent = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    with fwAD.dual_level():
        out = loss_fn(fwAD.make_dual(z, tangent), y)
        jvp = fwAD.unpack_dual(out).tangent
    assert jvp is not None
    torch.testing.assert_close(jvp, (expected * tangent).sum())
    per_row = torch.func.vmap(lambda t, yy: loss_fn(t[None], yy[None]))(z, y)
    torch.testing.assert_close(per_row, torch.stack([reference(z[i:i + 1], y[i:i + 1]) for i in range(len(z))]))


def test_module_built_under_inference_mode_works():
    z, y = _inputs()
    with torch.inference_mode():
        loss_fn = dk.DistributionBalancedLoss("voc-mlt")
        inside = loss_fn(z, y)
    outside = loss_fn(z, y)
    torch.testing.assert_close(inside, outside)
    torch.testing.assert_close(outside, dk.DistributionBalancedLoss("voc-mlt", backend="reference")(z, y))


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_reference_second_derivatives(gamma):
    # Double backward through the focal term recomputes l(x): the saved l is a constant to autograd.
    z, y = _inputs()
    z = z.double()
    loss_fn = dk.DistributionBalancedLoss("voc-mlt", backend="reference", gamma=gamma)
    assert torch.autograd.gradgradcheck(lambda t: loss_fn(t, y), (z.clone().requires_grad_(),))
    torch.testing.assert_close(torch.func.hessian(lambda t: loss_fn(t, y))(z),
                               torch.autograd.functional.hessian(lambda t: loss_fn(t, y), z))


@pytest.mark.parametrize("backend", _FUNC_BACKENDS)
def test_forward_ad_over_weight(backend):
    z, y = _inputs()
    g = torch.Generator().manual_seed(2)
    w, t = torch.rand(z.shape, generator=g), torch.randn(z.shape, generator=g)
    ours = dk.DistributionBalancedLoss("voc-mlt", backend=backend, reduction="none")
    ref = dk.DistributionBalancedLoss("voc-mlt", backend="reference", reduction="none")
    expected = torch.func.jvp(lambda ww: ref(z, y, ww), (w,), (t,))[1]
    assert expected.abs().max() > 0
    torch.testing.assert_close(torch.func.jvp(lambda ww: ours(z, y, ww), (w,), (t,))[1], expected)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "reference") if b in dk.available_backends()])
def test_label_check_on_request_under_torch_compile(backend):
    z, y = _inputs()
    loss_fn = dk.DistributionBalancedLoss("voc-mlt", backend=backend, validate_labels=True)
    torch.testing.assert_close(torch.compile(loss_fn)(z, y), loss_fn(z, y))


@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu", "triton") if b in dk.available_backends()])
@pytest.mark.parametrize("cb_mode", ["by_class", "average_w", "average_n", "min_n"])
@pytest.mark.parametrize("weight_norm", [None, "by_batch"])
def test_fp32_class_balanced_weights_match_a_float64_oracle(backend, cb_mode, weight_norm):
    # In fp32, 1 - 0.9999 alone is off by 1e-4 relative: the per-class terms must come from float64.
    stats = dk.ClassStats.preset("coco-mlt")
    g = torch.Generator().manual_seed(3)
    z = torch.randn(24, stats.num_classes, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(24, stats.num_classes, generator=g) < 0.1).to(torch.uint8)
    for cb_beta in (0.9, 0.999, 0.9999):
        for reduction in ("none", "sum"):
            opts = dict(reweight="CB", cb_mode=cb_mode, cb_beta=cb_beta, weight_norm=weight_norm, reduction=reduction)
            oracle = dk.DistributionBalancedLoss(stats, backend="reference", **opts)(z, y)
            loss_fn = dk.DistributionBalancedLoss(stats, backend=backend, **opts)
            got = loss_fn(z.float(), y).double()
            err = float((got - oracle).norm() / oracle.norm())
            assert err < 1e-5, (cb_beta, reduction, err)


_ALL_BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda") if b in dk.available_backends()]


@pytest.mark.parametrize("backend", _ALL_BACKENDS)
@pytest.mark.parametrize("labels_dtype", [torch.int8, torch.float32])
@pytest.mark.parametrize("validate", [None, False])
def test_mean_over_no_known_label_is_zero_with_zero_gradient(backend, labels_dtype, validate):
    # Partial-label training makes all-unknown batches real; one NaN step would ruin the model.
    device = "cuda" if backend == "cuda" else "cpu"
    model = torch.nn.Linear(8, 20).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = dk.DistributionBalancedLoss("voc-mlt", backend=backend, validate_labels=validate).to(device)
    x = torch.randn(6, 8, device=device)
    unknown = torch.full((6, 20), -1, dtype=labels_dtype, device=device)
    loss = loss_fn(model(x), unknown)
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    empty = model(x[:0])
    assert loss_fn(empty, unknown[:0]).item() == 0.0
    z = torch.zeros(6, 20, device=device, requires_grad=True)
    grad, = torch.autograd.grad(loss_fn(z, unknown), z)
    assert torch.equal(grad, torch.zeros_like(z))


@pytest.mark.skipif("cpu" not in dk.available_backends(), reason="needs the C++ extension")
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                                   torch.bfloat16, torch.float32, torch.float64])
def test_one_pass_label_check_agrees_with_torch(dtype):
    from dbl_kernels._labels import check_label_values

    def code(y):
        try:
            return int(check_label_values(y))
        except ValueError:
            return 2

    g = torch.Generator().manual_seed(1)
    base = (torch.rand(37, 70, generator=g) < 0.3).to(dtype)
    values = [0, 1, -1, 2, -2, 127] + ([0.5, -0.5, -1.5, 1.0001, float("nan"), float("inf"), -0.0]
                                       if dtype.is_floating_point else [])
    for v in values:
        y = base.clone()
        if dtype == torch.uint8 and v < 0:
            continue
        y[23, 41] = v
        for t in (y, y.t(), y[:, ::2], y[5:6]):  # strided and one-row views too
            assert torch.ops.dbl._check_labels(t) == code(t), (v, t.shape, t.stride())


def _fused_here():
    """(backend, device) for every fused backend that runs on this machine."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return [(b, dev if b != "cpu" else "cpu") for b in dk.available_backends() if b != "reference"] or [("none", "cpu")]


@pytest.mark.parametrize("backend,device", _fused_here())
@pytest.mark.parametrize("mag", [3.0, 5.0, 10.0, 17.0])
def test_confident_batches_stay_exact(backend, device, mag):
    # Every logit on its label's side by about mag (late training): the loss lives where p_t is
    # near 1, and the element loss -ln p_t must keep its relative accuracy there. Against the
    # float64 reference: DB-focal (the authors' config), CB-focal, BCE, DB-ASL and ASL, loss and
    # gradient, with byte and float labels.
    if backend == "none":
        pytest.skip("no fused backend built")
    from conftest import rel_err

    stats = dk.ClassStats.preset("coco-mlt")
    gen = torch.Generator().manual_seed(int(mag))
    y = (torch.rand(48, stats.num_classes, generator=gen) < 0.1).to(torch.uint8)
    z = torch.where(y.bool(), mag, -mag) + 0.1 * torch.randn(y.shape, generator=gen)
    losses = {"db-focal": lambda be: dk.DistributionBalancedLoss(stats, backend=be),
              "cb-focal": lambda be: dk.DistributionBalancedLoss(stats, backend=be, reweight="CB",
                                                                 cb_mode="average_w", logit_reg=False),
              "bce": lambda be: dk.DistributionBalancedLoss(stats, backend=be, reweight=None, focal=False,
                                                            logit_reg=False),
              "db-asl": lambda be: dk.DistributionBalancedLoss(stats, backend=be, gamma_neg=4.0, clip=0.05),
              "asl": lambda be: dk.AsymmetricLoss(backend=be)}
    for name, make in losses.items():
        x64 = z.double().requires_grad_()
        ref = make("reference")(x64, y.double())
        ref.backward()
        mod = make(backend).to(device)
        for labels in (y, y.float()):  # hard labels as bytes, and as the floats users often pass
            x = z.to(device, copy=True).requires_grad_()
            loss = mod(x, labels.to(device))
            loss.backward()
            assert rel_err(loss.detach().cpu(), ref.detach()) <= 1e-5, (name, labels.dtype, float(loss), float(ref))
            assert rel_err(x.grad.cpu(), x64.grad) <= 1e-5, (name, labels.dtype)
