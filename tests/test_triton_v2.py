"""Contract v2 in the Triton kernel (run on CPU tensors through the interpreter): the asymmetric
form (ASL, DB-ASL, pos_weight), reduction per_class, CSR labels and row_stats, each against the
reference, on the kernel itself (the reference raises inside ``_NoReference``)."""
import warnings

import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import _sparse, ops
from dbl_kernels import linear as linear_module

from test_cpp_backend import _stats
from test_fused_asl import _asl, _close, _labels, _logits, _loss_and_grad, _NoReference, asl_cases

pytestmark = pytest.mark.skipif("triton" not in dk.available_backends(), reason="triton not usable here")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _compare(make, z, y, reduction=None, tol=None):
    """``make(backend)``'s loss and gradient: triton (no reference inside, no warning) against the
    reference on the same (dense) labels."""
    tol = tol or TOL[z.dtype if z.dtype == torch.float64 else torch.float32]
    dense = _sparse.to_dense(y) if _sparse.is_csr(y) else y
    ref = _loss_and_grad(make("reference"), z, dense, None, reduction)
    with _NoReference(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="dbl_kernels")
        ours = _loss_and_grad(make("triton"), z, y, None, reduction)
    _close(ours[0], ref[0], tol)
    _close(ours[1], ref[1], tol)
    return ours


@pytest.mark.parametrize("kind", ["hard", "soft", "partial"])
@pytest.mark.parametrize("gammas", [(1.0, 4.0), (0.5, 2.5), (0.0, 0.0)], ids=lambda g: f"g{g[0]}-{g[1]}")
def test_asymmetric_loss_on_triton(kind, gammas):
    z, y = _logits(10, 24), _labels(10, 24, kind)
    for make, reduction in asl_cases(gammas, 24):
        _compare(make, z, y, reduction=reduction)


def test_asymmetric_loss_fp64_and_half_logits():
    z, y = _logits(8, 40), _labels(8, 40, "soft")
    make = _asl(gamma_pos=0.5, gamma_neg=2.5, clip=0.05)
    _compare(make, z.double(), y.double(), "sum")
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):  # gradients rounded to the logits' dtype
        _compare(make, z.clamp(-30, 30).to(dtype), y, "sum", tol)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
def test_saturated_logits_keep_gradients_finite(gamma):
    """|x| up to 95 in fp32 (exp(-|x|) below the smallest normal float): the ASL gradient stays
    finite for every gamma, as the reference's closed form."""
    z, y = _logits(6, 16), _labels(6, 16, "hard")
    z[1, :6] = torch.tensor([88.0, -88.0, 103.0, -103.0, 60.0, -60.0])
    loss, grad = _compare(_asl(gamma_pos=gamma, gamma_neg=gamma + 1.0, clip=0.05), z, y, "sum")
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("options", [dict(gamma_neg=4.0, clip=0.05), dict(gamma_neg=0.5),
                                     dict(gamma_neg=4.0, clip=0.05, reweight="CB", cb_mode="average_w"),
                                     dict(gamma_neg=2.0, clip=0.05, weight_norm="by_batch")])
def test_db_asymmetric_focusing_on_triton(options):
    stats = _stats(24)
    z, y = _logits(12, 24), _labels(12, 24, "hard")
    _compare(lambda backend: dk.DistributionBalancedLoss(stats, backend=backend, **options), z, y)


def test_per_class_is_column_sums_and_scales_by_column():
    stats = _stats(24)
    z, y = _logits(12, 24), _labels(12, 24, "partial")
    make = lambda backend: dk.DistributionBalancedLoss(stats, backend=backend, reduction="per_class")  # noqa: E731
    per_class, _ = _compare(make, z, y)
    total = make("triton")(z, y, reduction="sum")
    assert per_class.shape == (24,)
    _close(per_class.sum(), total, 1e-6)
    # backward with a C-vector: each column of the gradient by its own entry
    go = torch.linspace(-1.0, 2.0, 24)
    grads = []
    for backend in ("triton", "reference"):
        x = z.clone().requires_grad_()
        make(backend)(x, y).backward(go)
        grads.append(x.grad)
    _close(grads[0], grads[1], 1e-5)
    assert torch.equal(make("triton")(z, y), make("triton")(z, y))  # deterministic


REWEIGHTS = [dict(), dict(weight_norm="by_instance"), dict(weight_norm="by_batch"),
             dict(reweight="CB", cb_mode="average_w"), dict(reweight="CB", cb_mode="average_n"),
             dict(reweight="CB", cb_mode="min_n", weight_norm="by_batch"), dict(reweight="CB", cb_mode="by_class"),
             dict(reweight=None, logit_reg=False, focal=False), dict(gamma_neg=4.0, clip=0.05)]


@pytest.mark.parametrize("options", REWEIGHTS, ids=lambda o: "-".join(str(v) for v in o.values()) or "db-focal")
@pytest.mark.parametrize("reduction", ["mean", "sum", "per_class"])
def test_csr_labels_on_triton_equal_dense(options, reduction):
    stats = _stats(40)
    z, y = _logits(9, 40), _labels(9, 40, "hard")
    y[3] = 0  # a row with nothing stored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: sparse CSR is beta
        csr = y.to_sparse_csr()
    make = lambda backend: dk.DistributionBalancedLoss(stats, backend=backend, reduction=reduction,  # noqa: E731
                                                        **options)
    sparse = _compare(make, z, csr)
    dense = _loss_and_grad(make("triton"), z, y, None, None)  # the same kernel on dense labels: within 1e-6
    _close(sparse[0], dense[0], 1e-6)
    _close(sparse[1], dense[1], 1e-6)


def test_csr_without_by_batch_never_densifies(monkeypatch):
    """The row statistics come from the stored entries, the labels from a search in each row's
    column indices: no dense label tile at all (by_batch's maximum alone takes column chunks)."""
    stats = _stats(40)
    z, y = _logits(9, 40), _labels(9, 40, "hard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csr = y.to_sparse_csr()
    ref = dk.DistributionBalancedLoss(stats, backend="reference", weight_norm="by_instance")(z, y)

    def boom(*args, **kwargs):
        raise AssertionError("CSR labels were densified")

    monkeypatch.setattr(_sparse, "to_dense", boom)
    ours = dk.DistributionBalancedLoss(stats, backend="triton", weight_norm="by_instance")(z, csr)
    _close(ours, ref, 1e-5)


def test_csr_rows_of_every_length_and_bool_values():
    """Rows with 0, 1, many and all columns stored (the search's rounds differ per row), values
    as bool (no unknowns) and as int8 with -1."""
    stats = _stats(33)
    z = _logits(6, 33)
    y = torch.zeros(6, 33)
    y[1, 7] = 1
    y[2, ::2] = 1
    y[3] = 1
    y[4, -1] = 1
    y[5, 0] = 1
    y[5, 1] = -1
    for values in (torch.bool, torch.int8):
        yv = y.clamp(min=0) if values == torch.bool else y
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            csr = yv.to(values).to_sparse_csr()
        _compare(lambda backend: dk.DistributionBalancedLoss(stats, backend=backend), z, csr)


def test_fused_classifier_runs_the_triton_op_with_row_stats(monkeypatch):
    """The chunked classifier hands the Triton op row statistics over all classes (STATS_GIVEN)
    instead of running the reference per chunk."""
    assert "row_stats" in ops.features(dk.backends.fused_op("triton"), "cpu")
    monkeypatch.setattr(linear_module, "_chunk_loss", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("the reference ran a chunk")))
    stats = _stats(40)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(7, 12, generator=g)
    weight = torch.randn(40, 12, generator=g) * 0.3
    bias = torch.randn(40, generator=g) * 0.1
    y = _labels(7, 40, "hard")
    for options in (dict(), dict(weight_norm="by_batch", reduction="sum"), dict(gamma_neg=4.0, clip=0.05)):
        h1, w1, b1 = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        ours = dk.linear_distribution_balanced_loss(h1, w1, y, stats, b1, chunk_size=16, backend="triton", **options)
        ours.backward()
        h2, w2, b2 = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        ref = dk.DistributionBalancedLoss(stats, backend="reference", **options)(h2 @ w2.T + b2, y)
        ref.backward()
        _close(ours.detach(), ref.detach(), 1e-5)
        for a, b in ((h1, h2), (w1, w2), (b1, b2)):
            _close(a.grad, b.grad, 1e-5)


def test_opcheck_with_v2_arguments():
    """torch.library.opcheck of the Triton op on CSR labels, row_stats, the asymmetric form and
    per_class (fake tensors, schema, autograd registration)."""
    from dbl_kernels._spec import REDUCTION_PER_CLASS, make_aux
    from dbl_kernels.triton_kernel import launcher

    stats = _stats(24)
    z, y = _logits(5, 24), _labels(5, 24, "hard")
    mod = dk.DistributionBalancedLoss(stats, backend="triton", gamma_neg=4.0, clip=0.05)
    params = mod._params(torch.float32, num_classes=24)
    aux = make_aux(z, y, mod.config, mod.spec, mod.class_freq, mod.stats.train_num)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csr = y.to_sparse_csr()
    row_stats, _ = mod._csr_row_stats(csr, torch.float32, mod.config)
    for need_grad, reduction in ((True, REDUCTION_PER_CLASS), (False, mod.spec.reduction)):
        args = ops.op_args(z.clone().requires_grad_(need_grad), csr.values(), None, params, aux, mod.spec, need_grad,
                           reduction, row_stats=row_stats, csr=(csr.crow_indices(), csr.col_indices()))
        torch.library.opcheck(launcher.fused, args, test_utils=("test_schema", "test_faketensor",
                                                                "test_autograd_registration"))


def test_gradcheck_fp64_on_triton():
    """fp64 on the Triton kernel: the closed-form gradient against finite differences (ASL with
    every option, per_class, DB-ASL; CSR labels too)."""
    y = _labels(5, 6, "soft")[1:].contiguous()
    z = _logits(5, 6, torch.float64, scale=2.0)[1:].contiguous()  # no saturated row: finite differences
    hard = _labels(5, 6, "hard")[1:].contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csr = hard.to_sparse_csr()
    cases = ((dk.AsymmetricLoss(backend="triton", gamma_pos=0.5, gamma_neg=2.5, clip=0.05, smoothing=0.1,
                                pos_weight=torch.linspace(0.5, 2, 6)), y),
             (dk.AsymmetricLoss(backend="triton", gamma_neg=2.0, reduction="per_class"), y),
             (dk.DistributionBalancedLoss(_stats(6), backend="triton", gamma_neg=3.0, clip=0.05), y),
             (dk.DistributionBalancedLoss(_stats(6), backend="triton", weight_norm="by_batch"), csr))
    for mod, labels in cases:
        with _NoReference():
            assert torch.autograd.gradcheck(lambda x: mod(x, labels), (z.clone().requires_grad_(),))
