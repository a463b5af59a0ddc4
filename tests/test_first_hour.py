"""What a new user meets in the first hour: torch.compile on the default backend, gradcheck on the
fused backends, a second or differentiable backward through one loss."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import backends

HERE = Path(__file__).resolve().parent
FUSED = [b for b in ("cpu", "triton") if b in dk.available_backends()]


def test_compile_fullgraph_default_backend_in_a_fresh_process():
    out = subprocess.run([sys.executable, str(HERE / "scripts" / "compile_default_backend.py")], capture_output=True,
                         text=True, timeout=600, cwd=HERE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["equal"] == [True] * 4
    # no dynamo warnings (lru_cache, graph breaks) and nothing else from the package
    assert result["warnings"] == [], result["warnings"]


def _case(reduction, backend, n=3, c=5, seed=0, **options):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = (torch.rand(n, c, generator=g) < 0.4).to(torch.float64)
    y[0, 1] = -1.0  # one unknown label
    stats = dk.ClassStats.from_counts([30.0, 5.0, 12.0, 70.0, 2.0], train_num=100.0)
    return dk.DistributionBalancedLoss(stats, backend=backend, reduction=reduction, **options), z, y


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_and_gradgradcheck_on_fused_backends(backend, reduction):
    # Triton runs interpreted here: one small case (every launch costs a Python-level grid walk)
    cases = [dict()] if backend == "triton" else [dict(), dict(gamma=0.5, weight_norm="by_instance")]
    for options in cases:
        loss_fn, z, y = _case(reduction, backend, n=2 if backend == "triton" else 3, **options)
        assert torch.autograd.gradcheck(lambda x: loss_fn(x, y), (z,))
        assert torch.autograd.gradgradcheck(lambda x: loss_fn(x, y), (z,))


@pytest.mark.parametrize("backend", FUSED)
def test_retain_graph_twice_gives_twice_the_gradient(backend):
    loss_fn, z, y = _case("mean", backend)
    reference, *_ = _case("mean", "reference")
    loss = loss_fn(z, y)
    loss.backward(retain_graph=True)
    once = z.grad.clone()
    loss.backward(retain_graph=True)
    torch.testing.assert_close(z.grad, 2 * once, rtol=1e-12, atol=0)
    loss.backward(torch.tensor(0.5, dtype=torch.float64))  # a third, scaled
    torch.testing.assert_close(z.grad, 2.5 * once, rtol=1e-12, atol=0)
    expect, = torch.autograd.grad(reference(z, y), z)
    torch.testing.assert_close(once, expect, rtol=1e-10, atol=1e-12)
    g1, = torch.autograd.grad(loss_fn(z, y), z)  # autograd.grad twice on one loss
    loss = loss_fn(z, y)
    a, = torch.autograd.grad(loss, z, retain_graph=True)
    b, = torch.autograd.grad(loss, z)
    assert torch.equal(a, g1) and torch.equal(b, g1)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_matches_the_reference(backend):
    loss_fn, z, y = _case("sum", backend, gamma=1.5)
    reference, *_ = _case("sum", "reference", gamma=1.5)
    hess = torch.autograd.functional.hessian(lambda x: loss_fn(x, y), z)
    torch.testing.assert_close(hess, torch.autograd.functional.hessian(lambda x: reference(x, y), z))


@pytest.mark.parametrize("backend", FUSED)
def test_common_backward_makes_no_extra_pass(backend, monkeypatch):
    """One fused call per forward; loss.backward() then only scales (a no-op for 1.0); a second
    backward recomputes once."""
    calls = []
    real = backends.fused_op(backend)

    def spy(*args):
        calls.append(args[-1])  # need_grad
        return real(*args)

    monkeypatch.setattr(backends, "fused_op", lambda name: spy)
    loss_fn, z, y = _case("mean", backend, n=4, c=5)
    loss = loss_fn(z, y)
    assert calls == [True]
    loss.backward(retain_graph=True)
    assert calls == [True]
    grad_ptr = z.grad.data_ptr()
    loss.backward()
    assert calls == [True, True]
    z.grad = None
    loss_fn(z, y).backward()
    assert calls == [True, True, True] and z.grad is not None
    assert grad_ptr != 0


def test_auto_falling_back_to_the_reference_warns_once_with_the_fix(monkeypatch):
    monkeypatch.setattr(backends, "_RESOLVED", {})
    monkeypatch.setattr(backends, "_LOADED", {"cpp": None, "triton": None})
    monkeypatch.setattr(backends, "_WHY", {"cpp": "No module named 'dbl_kernels._C'"})
    monkeypatch.delenv("DBL_BACKEND", raising=False)
    with pytest.warns(UserWarning, match=r"pip install --no-build-isolation -e \.") as caught:
        assert backends.resolve("auto", "cpu") == "reference"
    assert "dbl_kernels._C" in str(caught[0].message)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve("auto", "cpu") == "reference"  # once: resolution is cached
        loss_fn = dk.DistributionBalancedLoss("voc-mlt", backend="reference")  # explicit: no warning
        loss_fn(torch.randn(2, 20), torch.zeros(2, 20))


@pytest.mark.parametrize("bad, found", [(2, r"\[0, 2\]"), (255, r"\[0, 255\]")])
def test_class_stats_from_labels_rejects_what_the_loss_rejects(bad, found):
    labels = torch.zeros(4, 3, dtype=torch.uint8)
    labels[0, 0] = 1
    labels[1, 1] = bad
    with pytest.raises(ValueError, match=r"integer labels must be 0, 1 or -1 \(unknown\); found values in " + found):
        dk.ClassStats.from_labels(labels)
    floats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.5, 1.0]])
    with pytest.raises(ValueError, match="negative values other than -1"):
        dk.ClassStats.from_labels(floats)
    partial = torch.tensor([[1, 0], [-1, 1], [0, 0]])
    assert dk.ClassStats.from_labels(partial).class_freq.tolist() == [1.0, 1.0]  # -1 is unknown, not counted


def test_cpu_threads_needs_no_prior_call():
    # a fresh process: the extension loads on demand (torch.ops.dbl is empty until it does)
    code = "import dbl_kernels as dk, torch; torch.set_num_threads(2); print(dk.cpu_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=HERE.parent)
    if "cpu" not in dk.available_backends():
        assert out.returncode != 0 and "not built" in out.stderr
    else:
        assert out.returncode == 0, out.stderr[-2000:]
        assert int(out.stdout.strip()) in (1, 2)
