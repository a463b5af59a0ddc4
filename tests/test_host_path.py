"""The host path of a call: a module remembers what it decided for an input signature (backend, op
arguments, class table, aux) and the next call with that signature goes straight to the op; every
change that would alter a decision sends the call back through the full path."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import backends, ops

pytestmark = pytest.mark.skipif(not backends.has_backend("cpu"), reason="needs the C++ extension")


def _module(**kw):
    return dk.DistributionBalancedLoss("coco-mlt", backend="cpu", validate_labels=False, **kw)


def _inputs(n=4, c=80, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=dtype).requires_grad_()
    y = (torch.rand(n, c, generator=g) < 0.2).to(torch.uint8)
    return z, y


def _reference(z, y, **kw):
    ref = dk.DistributionBalancedLoss("coco-mlt", backend="reference", **kw)
    x = z.detach().clone().requires_grad_()
    loss = ref(x, y)
    loss.backward()
    return loss.detach(), x.grad


def _count_full_path(monkeypatch, module):
    calls = []
    original = module._fused

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "_fused", spy)
    return calls


def test_second_call_takes_the_plan_and_agrees(monkeypatch):
    loss_fn = _module()
    calls = _count_full_path(monkeypatch, loss_fn)
    for seed in range(3):
        z, y = _inputs(seed=seed)
        loss = loss_fn(z, y)
        loss.backward()
        ref_loss, ref_grad = _reference(z, y)
        torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(z.grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert len(calls) == 1  # the later calls went straight to the op
    assert len(loss_fn._plans) == 1


@pytest.mark.parametrize("change", ["batch", "dtype", "no_grad", "labels_dtype"])
def test_a_new_signature_takes_the_full_path(monkeypatch, change):
    loss_fn = _module()
    calls = _count_full_path(monkeypatch, loss_fn)
    z, y = _inputs()
    loss_fn(z, y).backward()
    if change == "batch":
        z, y = _inputs(n=7)
    elif change == "dtype":
        z, y = _inputs(dtype=torch.float64)
    elif change == "labels_dtype":
        y = y.bool()
    if change == "no_grad":
        with torch.no_grad():
            loss = loss_fn(z, y)
        assert not loss.requires_grad
    else:
        loss = loss_fn(z, y)
        loss.backward()
    assert len(calls) == 2
    ref_loss, _ = _reference(z, y)
    torch.testing.assert_close(loss.detach(), ref_loss.to(loss.dtype), rtol=1e-5, atol=1e-7)


def test_module_state_changes_are_seen(monkeypatch):
    loss_fn = _module()
    calls = _count_full_path(monkeypatch, loss_fn)
    z, y = _inputs()
    loss_fn(z, y)
    loss_fn.backend = "reference"  # a new backend: decided again
    loss_fn(z, y)
    assert len(calls) == 1  # the reference path does not reach _fused
    loss_fn.backend = "cpu"  # the state the plan was made under: it applies again
    loss_fn(z, y)
    assert len(calls) == 1
    loss_fn.config = dataclasses.replace(loss_fn.config, gamma=1.0)  # (not a supported use, but seen)
    loss_fn.spec = dataclasses.replace(loss_fn.spec, gamma=1.0)
    loss_fn(z, y)
    assert len(calls) == 2
    # the class table modified in place: the plan's cast copy is stale, so the full path runs
    before = loss_fn(z, y).detach()
    with torch.no_grad():
        loss_fn.class_params[3].add_(1.0)  # every NTR bias shifted
    after = loss_fn(z, y).detach()
    assert len(calls) == 3
    assert not torch.allclose(before, after)


def test_backend_environment_is_seen(monkeypatch):
    loss_fn = dk.DistributionBalancedLoss("coco-mlt", validate_labels=False)  # auto
    calls = _count_full_path(monkeypatch, loss_fn)
    z, y = _inputs()
    loss_fn(z, y)
    monkeypatch.setenv("DBL_BACKEND", "reference")
    loss = loss_fn(z, y)
    assert len(calls) == 1  # DBL_BACKEND=reference: no fused call
    torch.testing.assert_close(loss, _reference(z, y)[0], rtol=1e-5, atol=1e-7)


def test_bad_inputs_still_raise_after_a_plan():
    loss_fn = _module()
    z, y = _inputs()
    loss_fn(z, y)
    with pytest.raises(ValueError, match="shape"):
        loss_fn(z, y[:, :40])
    with pytest.raises(ValueError, match="require grad"):
        loss_fn(z, y.float().requires_grad_())
    checked = dk.DistributionBalancedLoss("coco-mlt", backend="cpu")  # labels checked (default on CPU)
    checked(z, y)
    checked(z, y)
    with pytest.raises(ValueError, match="0, 1 or -1"):
        checked(z, torch.full_like(y, 3))


def test_second_backward_after_an_in_place_change_raises():
    loss_fn = _module()
    z, y = _inputs()
    x = z * 1.0  # a non-leaf input that the caller then modifies
    loss = loss_fn(x, y)
    loss.backward(retain_graph=True)
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_retain_graph_twice_gives_twice_the_gradient_on_the_plan():
    loss_fn = _module()
    z, y = _inputs()
    loss_fn(z, y).backward()  # makes the plan
    z.grad = None
    loss = loss_fn(z, y)
    loss.backward(retain_graph=True)
    once = z.grad.clone()
    loss.backward()
    torch.testing.assert_close(z.grad, 2 * once)


def test_the_plan_passes_the_same_arguments_as_the_full_path(monkeypatch):
    loss_fn = _module()
    z, y = _inputs()
    seen = []
    original = ops.call

    def spy(op, tensors, scalars, reference_loss=None, eager=None):
        seen.append((op, tuple(None if t is None else (t.data_ptr(), t.dtype) for t in tensors), scalars))
        return original(op, tensors, scalars, reference_loss, eager)

    monkeypatch.setattr(ops, "call", spy)
    loss_fn(z, y)
    loss_fn(z, y)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_inference_tensors_as_labels_and_table():
    with torch.inference_mode():
        built = _module()
        labels = (torch.rand(4, 80) < 0.2).to(torch.uint8)
    z, _ = _inputs()
    for _ in range(2):
        z.grad = None
        loss = built(z, labels)
        loss.backward(retain_graph=True)
        loss.backward()  # the second backward recomputes: no version counter to check on labels
    ref_loss, ref_grad = _reference(z, labels.clone())
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z.grad, 2 * ref_grad, rtol=1e-5, atol=1e-7)
    assert not built._plans  # the table is an inference tensor: no plan


@pytest.mark.skipif(not backends.has_backend("triton"), reason="needs triton (its interpreter on CPU)")
def test_a_kernel_without_a_feature_warns_once_and_runs_the_reference(monkeypatch):
    """A build whose Triton kernel lacks the asymmetric form (declared features: none)."""
    import warnings

    from dbl_kernels import loss as loss_module
    from dbl_kernels import ops

    monkeypatch.setitem(ops._FEATURES, backends.fused_op("triton"), {None: frozenset()})
    loss_module._WARNED.clear()
    z, y = _inputs()
    loss_fn = dk.AsymmetricLoss(backend="triton")
    with pytest.warns(UserWarning, match=r"triton kernel does not compute the asymmetric form"):
        got = loss_fn(z, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = loss_fn(z, y)  # once per backend, device and feature set
        dk.AsymmetricLoss(backend="cpu")(z, y)  # the cpu kernel computes it: no warning
    expect = dk.AsymmetricLoss(backend="reference")(z, y)
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(again, expect)
