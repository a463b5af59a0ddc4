"""Large label spaces: sparse (CSR) labels and the fused classifier + loss."""
import numpy as np
import pytest
import torch

import dbl_kernels as dk

BACKENDS = [b for b in ("reference", "cpu", "triton") if b in dk.available_backends()]


def _stats(c, seed=0):
    rng = np.random.default_rng(seed)
    return dk.ClassStats.from_counts(rng.integers(2, 300, size=c).astype(float), train_num=400.0)


def _labels(n, c, seed=0, unknown=True):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, c, generator=g) < 0.08).to(torch.int8)
    if unknown:
        y[(torch.rand(n, c, generator=g) < 0.02)] = -1
    return y


def _loss_grad(fn, z, y):
    z = z.clone().requires_grad_()
    loss = fn(z, y)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), z.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(), dict(reweight="CB", cb_mode="average_n", weight_norm="by_batch"),
                                     dict(reduction="none", weight_norm="by_instance"), dict(gamma_neg=4.0, clip=0.05)])
def test_sparse_labels_equal_dense(backend, options):
    y = _labels(9, 40, seed=1)
    y[3] = 0  # a row with nothing stored
    z = torch.randn(9, 40, generator=torch.Generator().manual_seed(2)) * 3
    loss_fn = dk.DistributionBalancedLoss(_stats(40), backend=backend, **options)
    for values in (torch.float32, torch.int64, torch.int8):
        csr = y.to(values).to_sparse_csr()
        a, b = _loss_grad(loss_fn, z, y), _loss_grad(loss_fn, z, csr)
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    asl = dk.AsymmetricLoss(backend=backend)
    torch.testing.assert_close(_loss_grad(asl, z, y.to_sparse_csr()), _loss_grad(asl, z, y), rtol=1e-6, atol=1e-7)
    functional = dk.distribution_balanced_loss(z, y.to_sparse_csr(), _stats(40), backend=backend)
    torch.testing.assert_close(functional, dk.distribution_balanced_loss(z, y, _stats(40), backend=backend))


def _csr(crow, col, values, shape):
    return torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col), torch.tensor(values, dtype=torch.float32),
                                   size=shape, check_invariants=False)


@pytest.mark.parametrize("bad, match", [
    (_csr([0, 1, 2], [0, 7], [1.0, 1.0], (2, 5)), r"column index 7, outside \[0, 5\)"),
    (_csr([0, 1, 2], [-1, 2], [1.0, 1.0], (2, 5)), "column index -1"),
    (_csr([0, 2, 2], [3, 1], [1.0, 1.0], (2, 5)), "sorted and without duplicates"),
    (_csr([0, 2, 2], [1, 1], [1.0, 1.0], (2, 5)), "sorted and without duplicates"),
    (_csr([0, 1, 2], [0, 2], [1.0, 0.5], (2, 5)), "store 1 .positive. or -1 .unknown., found 0.5"),
    (_csr([0, 1, 2], [0, 2], [1.0, 1.0], (2, 6)), "logits' shape"),
])
def test_bad_sparse_labels_say_what_is_wrong(bad, match):
    loss_fn = dk.DistributionBalancedLoss(_stats(5), backend="reference")
    with pytest.raises(ValueError, match=match):
        loss_fn(torch.zeros(2, 5), bad)


def test_class_stats_from_sparse_labels():
    y = _labels(50, 30, seed=3)
    y[:, :2] = torch.tensor([1, 0], dtype=torch.int8)
    dense = dk.ClassStats.from_labels(y, smooth=1.0)
    sparse = dk.ClassStats.from_labels(y.to_sparse_csr(), smooth=1.0)
    np.testing.assert_array_equal(sparse.class_freq, dense.class_freq)
    loader = [(None, y[i:i + 8].to_sparse_csr()) for i in range(0, 50, 8)]
    np.testing.assert_array_equal(dk.ClassStats.from_loader(loader, progress=False, smooth=1.0).class_freq,
                                  dense.class_freq)


def _dense_path(hidden, weight, bias, labels, stats, backend, **options):
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    return dk.DistributionBalancedLoss(stats, backend=backend, **options)(logits, labels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(), dict(reduction="sum", weight_norm="by_batch"),
                                     dict(reduction="batchmean", reweight="CB", cb_mode="min_n", weight_norm="by_instance"),
                                     dict(gamma_neg=4.0, clip=0.05, reweight=None)])
@pytest.mark.parametrize("sparse", [False, True])
def test_fused_classifier_matches_logits_then_loss(backend, options, sparse):
    g = torch.Generator().manual_seed(4)
    n, h, c = 10, 6, 70
    stats = _stats(c, seed=5)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = (torch.randn(c, h, generator=g) * 0.5).requires_grad_()
    bias = torch.randn(c, generator=g, requires_grad=True)
    y = _labels(n, c, seed=6)
    labels = y.to_sparse_csr() if sparse else y
    expect = _dense_path(hidden, weight, bias, y, stats, backend, **options)
    grads = torch.autograd.grad(expect, (hidden, weight, bias))
    for chunk in (16, 64, 1000):  # several chunks (the last one short), and one
        got = dk.linear_distribution_balanced_loss(hidden, weight, labels, stats, bias, chunk_size=chunk,
                                                   backend=backend, **options)
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
        for a, b in zip(torch.autograd.grad(got, (hidden, weight, bias)), grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_classifier_module_scaling_and_errors():
    stats = _stats(40, seed=7)
    module = dk.LinearDistributionBalancedLoss(8, stats, chunk_size=16, backend="reference")
    hidden = torch.randn(5, 8)
    y = _labels(5, 40, seed=8)
    loss = module(hidden, y)
    (2.5 * loss).backward()
    w_grad = module.weight.grad.clone()
    module.weight.grad = None
    expect = 2.5 * dk.DistributionBalancedLoss(stats, backend="reference")(module.logits(hidden), y)
    expect.backward()
    torch.testing.assert_close(w_grad, module.weight.grad, rtol=1e-5, atol=1e-7)
    per_class = dk.linear_distribution_balanced_loss(hidden, module.weight, y, stats, module.bias, reduction="per_class")
    torch.testing.assert_close(per_class.sum(), dk.linear_distribution_balanced_loss(
        hidden, module.weight, y, stats, module.bias, reduction="sum"))
    with pytest.raises(ValueError, match="reduction='none' is not supported by the fused classifier"):
        dk.linear_distribution_balanced_loss(hidden, module.weight, y, stats, reduction="none")
    with pytest.raises(ValueError, match="hidden has 7 features but weight expects 8"):
        module(torch.randn(5, 7), y)
    with pytest.raises(ValueError, match="chunk_size must be a positive number"):
        dk.linear_distribution_balanced_loss(hidden, module.weight, y, stats, chunk_size=0)
    loss = module(hidden, y)
    loss.backward()
    with pytest.raises(RuntimeError, match="already back-propagated"):
        loss.backward()


def test_fused_classifier_under_autocast():
    stats = _stats(64, seed=9)
    module = dk.LinearDistributionBalancedLoss(16, stats, chunk_size=32, backend="reference")
    hidden = torch.randn(12, 16, requires_grad=True)
    y = _labels(12, 64, seed=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(hidden, y)
    loss.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    expect = dk.DistributionBalancedLoss(stats, backend="reference")(module.logits(hidden), y)
    torch.testing.assert_close(loss, expect, rtol=3e-2, atol=1e-3)  # bf16 matmuls, fp32 loss math


def test_readme_xmc_example_reads_a_label_file(tmp_path):
    # the README's reader, run: one line of label ids per sample into CSR, then a batch of rows
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    source = re.search(r"(def read_xmc_labels.*?size=\(len\(crow\) - 1, num_classes\)\))", readme, re.S).group(1)
    scope = {"torch": torch}
    exec(source, scope)
    path = tmp_path / "labels.txt"
    path.write_text("1 5 3\n2\n\n7,1\n")
    labels = scope["read_xmc_labels"](str(path), 10)
    dense = torch.zeros(4, 10, dtype=torch.int8)
    for row, ids in enumerate(([1, 3, 5], [2], [], [1, 7])):
        dense[row, ids] = 1
    assert torch.equal(labels.to_dense(), dense)
    batch = dk.csr_select_rows(labels, [3, 0, 2])
    assert torch.equal(batch.to_dense(), dense[[3, 0, 2]])
