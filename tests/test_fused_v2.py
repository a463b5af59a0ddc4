"""Kernel contract v2 beyond the element forms: the CPU op's label check in its own pass
(MODE_CHECK_LABELS), given row statistics (row_stats: a column slice of a wider problem, the
chunked classifier) on the CPU op and the CUDA kernel's emulation, and CSR labels in the CPU op."""
import itertools
import re

import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import backends, ops, reference
from dbl_kernels._spec import MODE_CHECK_LABELS, REDUCTION_NONE, REDUCTION_PER_CLASS, REDUCTION_SUM, make_aux

from conftest import cuda_emulate
from test_cpp_backend import REWEIGHTS, _inputs, _stats, cpp_ops, needs_ext

pytestmark = needs_ext
NORMS = (None, "by_instance", "by_batch")


def _close(a, b, tol=1e-5):
    a, b = a.double(), b.double()
    assert float((a - b).norm()) <= tol * max(float(b.norm()), 1e-30), float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------------
# MODE_CHECK_LABELS
# ------------------------------------------------------------------------------------------------
BAD_LABELS = [
    (torch.tensor([[0, 1, 2]], dtype=torch.int64), "integer labels must be 0, 1 or -1 (unknown); found values in [0, 2]"),
    (torch.tensor([[0, -3, 1]], dtype=torch.int8), "integer labels must be 0, 1 or -1 (unknown); found values in [-3, 1]"),
    (torch.tensor([[0, 7, 1]], dtype=torch.uint8), "integer labels must be 0, 1 or -1 (unknown); found values in [0, 7]"),
    (torch.tensor([[0.0, 1.5, 1.0]]), "float labels must lie in [0, 1] or be -1 (unknown); found values in [0, 1.5]"),
    (torch.tensor([[0.0, -2.0, 1.0]], dtype=torch.float64),
     "float labels must lie in [0, 1] or be -1 (unknown); found values in [-2, 1]"),
    (torch.tensor([[0.0, -0.5, 1.0]], dtype=torch.bfloat16),
     "float labels must lie in [0, 1] or be -1 (unknown); found negative values other than -1"),
    (torch.tensor([[0.0, float("nan"), 1.0]]),
     "float labels must lie in [0, 1] or be -1 (unknown); found values in [nan, nan]"),
    # in (-1, 0) only at double precision (the kernel computes in fp32): checked in the labels' dtype
    (torch.tensor([[0.0, -0.99999999999, 1.0]], dtype=torch.float64),
     "float labels must lie in [0, 1] or be -1 (unknown); found negative values other than -1"),
]


def _op_args(mod, z, y, check=True, reduction=None, row_stats=None, aux=None):
    spec = mod.spec
    if aux is None:
        aux = make_aux(z, y, mod.config, spec, mod.class_freq, mod.stats.train_num)
    params = mod._params(reference.compute_dtype(z))
    args = list(ops.op_args(z, y, None, params, aux, spec, True, reduction, check_labels=check, row_stats=row_stats))
    return args


@pytest.mark.parametrize("labels,message", BAD_LABELS, ids=lambda v: str(getattr(v, "dtype", "")))
def test_the_op_rejects_invalid_labels_in_its_pass(labels, message):
    y = torch.zeros(4, 40, dtype=labels.dtype)
    y[2, 17:20] = labels[0]  # one bad value among valid ones, away from the row's start
    z = torch.randn(4, 40)
    mod = dk.DistributionBalancedLoss(_stats(40), backend="cpu")
    with pytest.raises(ValueError, match=re.escape(message)):
        cpp_ops.fused(*_op_args(mod, z, y, reduction=REDUCTION_SUM))
    # the loss module: the same message, from the op (the Python-side check is skipped)
    with pytest.raises(ValueError, match="labels must"):
        mod(z.requires_grad_(), y)
    # without the mode the op does not look
    cpp_ops.fused(*_op_args(mod, z.detach(), y, check=False, reduction=REDUCTION_SUM))


def test_valid_labels_pass_and_wide_rows_are_checked_too():
    mod = dk.DistributionBalancedLoss(_stats(40), backend="cpu")
    for dtype in (torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.float32,
                  torch.float64):
        z, y = _inputs(6, 40, partial=dtype not in (torch.bool, torch.uint8))
        y = y.to(dtype)
        loss, _ = cpp_ops.fused(*_op_args(mod, z, y))
        ref, _ = cpp_ops.fused(*_op_args(mod, z, y, check=False))
        assert torch.equal(loss, ref)
    # a row wider than the CPU kernel's column tile (32768) takes the tiled path
    c = 40000
    wide = dk.DistributionBalancedLoss(_stats(c), backend="cpu", reduction="sum")
    y = torch.zeros(2, c)
    y[1, c - 3] = 0.5
    y[0, 5] = 1
    z = torch.randn(2, c)
    cpp_ops.fused(*_op_args(wide, z, y))
    y[1, c - 2] = 3.0
    with pytest.raises(ValueError, match="found values in"):
        cpp_ops.fused(*_op_args(wide, z, y))


def test_the_loss_skips_its_python_check_for_the_cpu_op(monkeypatch):
    from dbl_kernels import loss as loss_module
    z, y = _inputs(5, 20)
    mod = dk.DistributionBalancedLoss(_stats(20), backend="cpu")
    ref = dk.DistributionBalancedLoss(_stats(20), backend="reference")(z, y)
    calls = []
    monkeypatch.setattr(loss_module, "check_label_values", lambda *a, **k: calls.append(1) or False)
    _close(mod(z, y), ref)
    assert calls == []
    assert "check_labels" in ops.features(cpp_ops.fused, "cpu")
    assert "check_labels" not in ops.features(cpp_ops.fused, "cuda")
    assert not hasattr(torch.ops.dbl, "_labels_between")  # superseded by the in-pass check


def test_an_extension_without_the_emulation_skips_its_tests(monkeypatch):
    """DBL_NO_EMULATE=1 builds (device runs) have no dbl::_cuda_emulate: its tests skip, not fail."""
    import types

    monkeypatch.setattr(torch.ops, "dbl", types.SimpleNamespace())
    with pytest.raises(pytest.skip.Exception, match="DBL_NO_EMULATE"):
        cuda_emulate()


def test_cuda_emulation_refuses_check_labels():
    mod = dk.DistributionBalancedLoss(_stats(20))
    z, y = _inputs(4, 20)
    args = _op_args(mod, z, y)
    assert args[ops.OP_ARG_NAMES.index("modes")][MODE_CHECK_LABELS] == 1
    with pytest.raises(RuntimeError, match="check_labels"):
        cuda_emulate(*args, 0)


# ------------------------------------------------------------------------------------------------
# row_stats
# ------------------------------------------------------------------------------------------------
def _sliced(op, mod, z, y, c0, c1, reduction, emulate=False):
    """The op on columns [c0, c1) with the full problem's row statistics and batch max."""
    cfg = mod.config
    n = mod.class_freq
    w = reference.reweight(y.float(), n, mod.stats.train_num, cfg)
    stats = reference.row_statistics(y.float(), n, cfg)
    row_stats = None if stats is None else torch.cat([stats[0].t(), stats[1].t()]).contiguous()
    aux = torch.tensor([1.0, 1.0 / float(w.amax())])
    params = mod._params(torch.float32)[:, c0:c1].contiguous()
    args = ops.op_args(z[:, c0:c1], y[:, c0:c1], None, params, aux, mod.spec, True, reduction, row_stats=row_stats)
    if emulate:
        return cuda_emulate(*args, 1)[:2]
    return op(*args)


@pytest.mark.parametrize("reweight", REWEIGHTS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_row_stats_slices_equal_the_dense_call(reweight):
    c = 60
    z, y = _inputs(10, c, soft=True)
    for norm, ntr in itertools.product(NORMS, (dict(logit_reg=False), dict(logit_reg=True))):
        mod = dk.DistributionBalancedLoss(_stats(c), backend="cpu", weight_norm=norm, **reweight, **ntr)
        aux = make_aux(z, y, mod.config, mod.spec, mod.class_freq, mod.stats.train_num, reduction=REDUCTION_NONE)
        aux = torch.tensor([1.0, float(aux[1])])
        dense_loss, dense_grad = cpp_ops.fused(*ops.op_args(z, y, None, mod._params(torch.float32), aux, mod.spec,
                                                            True, REDUCTION_NONE))
        for emulate in (False, True):
            parts = [_sliced(cpp_ops.fused, mod, z, y, c0, c1, REDUCTION_NONE, emulate) for c0, c1 in
                     ((0, 17), (17, 41), (41, c))]
            _close(torch.cat([p[0] for p in parts], 1), dense_loss)
            _close(torch.cat([p[1] for p in parts], 1), dense_grad)


@pytest.mark.parametrize("options", [dict(), dict(weight_norm="by_batch"), dict(weight_norm="by_instance"),
                                     dict(reweight="CB", cb_mode="min_n", weight_norm="by_batch"),
                                     dict(reweight="CB", cb_mode="average_n", weight_norm="by_instance"),
                                     dict(reweight="sqrt_inv", weight_norm="by_batch"),
                                     dict(reweight=None, logit_reg=False, weight_norm="by_batch"),
                                     dict(gamma_neg=3.0, clip=0.05, reduction="sum"),
                                     dict(reduction="batchmean"), dict(reduction="per_class")])
def test_chunked_classifier_equals_dense_on_cpu(options, monkeypatch):
    from dbl_kernels import linear
    n, h, c = 9, 8, 70
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(c, h, generator=g)
    bias = torch.randn(c, generator=g)
    _, y = _inputs(n, c, soft=True)
    stats = _stats(c)
    dense = dk.DistributionBalancedLoss(stats, backend="reference", **options)
    calls = []
    real = linear._chunk_loss
    monkeypatch.setattr(linear, "_chunk_loss", lambda *a: calls.append(1) or real(*a))

    def run(fn):
        hs, ws, bs = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        loss = fn(hs, ws, bs)
        if loss.dim() == 0:
            loss.backward()
        return [loss.detach()] + ([hs.grad, ws.grad, bs.grad] if loss.dim() == 0 else [])

    ref = run(lambda hs, ws, bs: dense(hs @ ws.t() + bs, y))
    ours = run(lambda hs, ws, bs: dk.linear_distribution_balanced_loss(hs, ws, y, stats, bs, chunk_size=16,
                                                                       backend="cpu", **options))
    assert calls == []  # every chunk ran the fused op
    for a, b in zip(ours, ref):
        _close(a, b)


def test_chunked_classifier_falls_back_without_the_feature(monkeypatch):
    from dbl_kernels import linear
    monkeypatch.setitem(ops._FEATURES, cpp_ops.fused, {None: frozenset({"asymmetric", "per_class"})})
    calls = []
    real = linear._chunk_loss
    monkeypatch.setattr(linear, "_chunk_loss", lambda *a: calls.append(1) or real(*a))
    hidden, weight = torch.randn(4, 3), torch.randn(20, 3)
    _, y = _inputs(4, 20)
    dk.linear_distribution_balanced_loss(hidden, weight, y, _stats(20), chunk_size=8, backend="cpu")
    assert len(calls) == 3
    assert backends.resolve("cpu", "cpu") == "cpu"


# ------------------------------------------------------------------------------------------------
# CSR labels in the CPU kernel
# ------------------------------------------------------------------------------------------------
def _csr_labels(n, c, seed=0, density=0.1):
    """CSR labels of 1 / -1 (a few unknowns) and the same labels dense; row 1 stores nothing."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(n, c)
    dense[torch.rand(n, c, generator=g) < density] = 1.0
    dense[torch.rand(n, c, generator=g) < density / 4] = -1.0
    dense[1] = 0
    return dense.to_sparse_csr(), dense


@pytest.mark.parametrize("reweight", REWEIGHTS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_csr_labels_equal_dense_on_the_cpu_op(reweight, monkeypatch):
    from dbl_kernels import _sparse
    c = 50
    sparse, dense = _csr_labels(11, c)
    z = torch.randn(11, c, generator=torch.Generator().manual_seed(5)) * 3
    monkeypatch.setattr(_sparse, "to_dense", lambda *a, **k: pytest.fail("the fused call densified the labels"))
    for norm, reduction, extra in itertools.product(NORMS, ("mean", "sum", "none", "per_class"),
                                                     (dict(), dict(gamma_neg=3.0, clip=0.05))):
        cfg = dict(reweight, weight_norm=norm, reduction=reduction, **extra)
        mod = dk.DistributionBalancedLoss(_stats(c), backend="cpu", **cfg)
        ref = dk.DistributionBalancedLoss(_stats(c), backend="reference", **cfg)
        zs, zd = z.clone().requires_grad_(), z.clone().requires_grad_()
        ours, theirs = mod(zs, sparse), ref(zd, dense)
        ours.sum().backward()
        theirs.sum().backward()
        _close(ours.detach(), theirs.detach())
        _close(zs.grad, zd.grad)


def test_csr_wide_rows_bool_values_and_batchmean():
    c = 33000  # wider than the CPU kernel's column tile: its chunks take their entries by search
    sparse, dense = _csr_labels(3, c, density=0.001)
    dense[2, c - 1] = 1
    sparse = dense.to_sparse_csr()
    z = torch.randn(3, c, generator=torch.Generator().manual_seed(2))
    for reduction in ("mean", "batchmean"):
        mod = dk.DistributionBalancedLoss(_stats(c), backend="cpu", reduction=reduction)
        ref = dk.DistributionBalancedLoss(_stats(c), backend="reference", reduction=reduction)
        _close(mod(z, sparse), ref(z, dense))
    positives = (dense == 1).to_sparse_csr()  # bool values: no unknowns
    mod = dk.DistributionBalancedLoss(_stats(c), backend="cpu")
    _close(mod(z, positives), dk.DistributionBalancedLoss(_stats(c), backend="reference")(z, (dense == 1).float()))


def test_csr_op_checks_values_and_structure():
    sparse, _ = _csr_labels(4, 20)
    mod = dk.DistributionBalancedLoss(_stats(20))
    z = torch.randn(4, 20)
    crow, col, values = sparse.crow_indices(), sparse.col_indices(), sparse.values()
    aux = torch.ones(2)

    def call(values, crow=crow, check=True):
        args = ops.op_args(z, values, None, mod._params(torch.float32), aux, mod.spec, True, REDUCTION_SUM,
                           check_labels=check, csr=(crow, col))
        return cpp_ops.fused(*args)

    call(values)
    bad = values.clone()
    bad[0] = 0.5
    with pytest.raises(ValueError, match=re.escape("sparse labels must store 1 (positive) or -1 (unknown), found 0.5")):
        call(bad)
    call(bad, check=False)  # without the mode the op does not look
    broken = crow.clone()
    broken[2] = crow[-1] + 5
    with pytest.raises(ValueError, match="malformed crow_indices"):
        call(values, broken)
    # both C++ ops read CSR labels; only the CPU op finds their row statistics itself
    assert {"csr", "csr_stats"} <= ops.features(cpp_ops.fused, "cpu")
    assert "csr" in ops.features(cpp_ops.fused, "cuda") and "csr_stats" not in ops.features(cpp_ops.fused, "cuda")


@pytest.mark.parametrize("reweight", REWEIGHTS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_csr_labels_on_the_cuda_kernel_emulated(reweight):
    """The CUDA kernel's generic path on CSR labels (run on the CPU by dbl::_cuda_emulate, the MUFU
    error model at both ends), with the row statistics and by_batch's maximum the loss hands down
    (the CUDA op has no csr_stats), against the CPU op on the dense labels."""
    c = 50
    sparse, dense = _csr_labels(11, c)
    z = torch.randn(11, c, generator=torch.Generator().manual_seed(5)) * 3
    for norm, reduction, extra in itertools.product(NORMS, (REDUCTION_NONE, REDUCTION_SUM, REDUCTION_PER_CLASS),
                                                     (dict(), dict(gamma_neg=3.0, clip=0.05))):
        mod = dk.DistributionBalancedLoss(_stats(c), backend="cpu", weight_norm=norm, **reweight, **extra)
        row_stats, inv_batch = mod._csr_row_stats(sparse, torch.float32, mod.config)
        aux = torch.tensor([1.0, 1.0 if inv_batch is None else float(inv_batch)])
        params = mod._params(torch.float32)
        dense_args = ops.op_args(z, dense, None, params, aux, mod.spec, True, reduction)
        want = cpp_ops.fused(*dense_args)
        args = ops.op_args(z, sparse.values(), None, params, aux, mod.spec, True, reduction, row_stats=row_stats,
                           csr=(sparse.crow_indices(), sparse.col_indices()))
        for err in (1, -1):
            loss, grad, _ = cuda_emulate(*args, err)
            _close(loss, want[0])
            _close(grad, want[1])
            # sparse and dense labels on the same kernel: within 1e-6
            dense_loss, dense_grad, _ = cuda_emulate(*dense_args, err)
            _close(loss, dense_loss, 1e-6)
            _close(grad, dense_grad, 1e-6)


def test_csr_on_the_cuda_kernel_needs_row_stats():
    sparse, _ = _csr_labels(4, 20)
    mod = dk.DistributionBalancedLoss(_stats(20))  # rebalance: row-dependent weights
    args = ops.op_args(torch.randn(4, 20), sparse.values(), None, mod._params(torch.float32), torch.ones(2), mod.spec,
                       True, REDUCTION_SUM, csr=(sparse.crow_indices(), sparse.col_indices()))
    with pytest.raises(ValueError, match="need row_stats"):
        cuda_emulate(*args, 0)
