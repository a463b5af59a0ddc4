"""Autograd and fake-tensor glue shared by every fused kernel op.

Each fused op returns ``(loss, grad)``: the forward already computed d loss / d logits, because the
Jacobian is diagonal (every weight depends on labels only). Backward then only has to multiply
that buffer by ``grad_output``:

* eager calls (``call``): the first backward scales the buffer in place, with the backend's own
  device-side kernel that reads ``grad_output`` on the device and does nothing when it is exactly
  1.0 (a plain ``loss.backward()``): no second pass over the gradient. A later backward through
  the same loss (``retain_graph=True``, gradcheck) recomputes the gradient from the saved inputs
  in one fused pass; a differentiable backward (``create_graph=True``) differentiates the
  reference's formula, handed down by the caller, on the saved inputs;
* traced calls (torch.compile, make_fx, jit.trace) go through the registered op, whose backward
  returns ``grad * grad_output`` out of place: a compiled graph fuses the product, and a repeated
  backward sees the unmodified buffer.
"""
from __future__ import annotations

import torch

from ._spec import MODE_REDUCTION, REDUCTION_NONE, REDUCTION_PER_CLASS
from ._tracing import is_eager
from .reference import compute_dtype

# Argument positions shared by every fused op's schema (see _spec.py).
OP_ARG_NAMES = ("logits", "labels", "crow_indices", "col_indices", "weight", "class_params", "aux", "row_stats",
                "modes", "scalars", "need_grad")
N_TENSORS = _N_TENSORS = OP_ARG_NAMES.index("modes")  # the leading tensor arguments
_NEED_GRAD = OP_ARG_NAMES.index("need_grad")


def op_args(logits, labels, weight, class_params, aux, spec, need_grad, reduction=None, *, check_labels=False,
            row_stats=None, csr=None):
    """The op's arguments. ``reduction`` (a code) overrides the spec's; ``csr = (crow_indices,
    col_indices)`` when ``labels`` are the stored values of CSR labels."""
    crow, col = csr if csr is not None else (None, None)
    return (logits, labels, crow, col, weight, class_params, aux, row_stats, spec.modes(reduction, check_labels),
            spec.scalars(), need_grad)


def fake_fused(logits, labels, crow_indices, col_indices, weight, class_params, aux, row_stats, modes, scalars,
               need_grad):
    """Shapes and dtypes only: what torch.compile traces."""
    dtype = compute_dtype(logits)
    reduction = modes[MODE_REDUCTION]
    if reduction == REDUCTION_NONE:
        loss = logits.new_empty(logits.shape, dtype=dtype)
    elif reduction == REDUCTION_PER_CLASS:
        loss = logits.new_empty(logits.shape[1:], dtype=dtype)
    else:
        loss = logits.new_empty((), dtype=dtype)
    grad = (torch.empty(logits.shape, dtype=logits.dtype, device=logits.device) if need_grad
            else logits.new_empty((0,)))
    return loss, grad


def _scale_in_place(grad, grad_output, device_scale):
    """grad *= grad_output, skipped when grad_output is a scalar 1.0 (decided on the device by the
    backend's ``device_scale`` for CUDA gradients; a CPU scalar is read directly: nothing to wait for)."""
    if grad_output.numel() == 1 and grad.is_cuda and device_scale is not None:
        device_scale(grad, grad_output)
        return
    if grad_output.numel() == 1 and grad_output.device.type == "cpu":
        if grad_output.item() == 1.0:
            return
    grad.mul_(grad_output)


class _EagerFused(torch.autograd.Function):
    """Eager calls that need a gradient: a plain autograd.Function around the op's kernel
    (dispatched below autograd) costs a fraction of the custom op's Python autograd wrapper (about
    65 against 140 us per forward + backward on a small CPU problem), most of a call at COCO batch
    sizes. Only the logits go through apply() as a tensor (it inspects every argument, about
    0.3 us each); the other inputs ride in the plan. All are kept by reference (no copies), with
    their version counters, for a second or differentiable backward."""

    @staticmethod
    def forward(ctx, plan, logits):
        # plan = (op, device_scale, reference_loss, scalar args, the op's tensors)
        op, ctx.device_scale, ctx.reference_loss, ctx.scalars, tensors = plan
        with torch._C._AutoDispatchBelowAutograd():
            loss, grad = op(*tensors, *ctx.scalars)
        ctx.grad = grad  # handed out (and dropped) by the first backward: not a saved tensor, it is scaled in place
        ctx.op, ctx.tensors = op, tensors
        # (inference tensors have no version counter, and cannot be modified outside inference mode)
        ctx.versions = [None if t is None or t.is_inference() else t._version for t in tensors]
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grad is not None and not torch.is_grad_enabled():  # the common case: the forward's buffer
            grad, ctx.grad = ctx.grad, None  # no reference left behind: autograd may adopt it as x.grad
            _scale_in_place(grad, grad_loss, ctx.device_scale)
            return None, grad
        _check_versions(ctx)
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            return None, _reference_backward(ctx, grad_loss)
        with torch._C._AutoDispatchBelowAutograd():  # a second backward through the same loss: one fused pass
            _, grad = ctx.op(*ctx.tensors, *ctx.scalars)
        _scale_in_place(grad, grad_loss, ctx.device_scale)
        return None, grad


def _check_versions(ctx):
    """What save_for_backward would check: the inputs were not modified in place since the forward."""
    for t, version in zip(ctx.tensors, ctx.versions):
        if version is not None and t._version != version:
            raise RuntimeError("dbl_kernels: an input of this loss was modified in place after the forward "
                               f"(version {version} -> {t._version}); a second backward needs the original "
                               "values: recompute the loss")


def _reference_backward(ctx, grad_loss):
    """d loss / d logits as a differentiable function of the logits and grad_loss, from the
    reference's formula (the fused kernels give first derivatives only)."""
    if ctx.reference_loss is None:
        raise RuntimeError("dbl_kernels: this fused call has no differentiable backward "
                           "(create_graph=True); use backend='reference'")
    logits = ctx.tensors[0]
    loss_fn, extra = ctx.reference_loss
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(logits, *extra), logits, grad_loss, create_graph=True)
    return grad


def call(op, tensors, scalars, reference_loss=None, eager=None):
    """The loss from a fused op (``op_args`` split into its tensors and its scalars): through the
    eager fast path where it applies, else the op.

    ``reference_loss = (fn, extra)``: ``fn(logits, *extra)`` is the same loss by the reference,
    for a differentiable backward (a tuple, not a closure: it is built on every call).
    ``eager``: ``is_eager(logits)``, where the caller knows it.
    """
    if eager is None:
        eager = is_eager(tensors[0])
    if eager:
        impl = _EAGER_IMPL.get(op, op)
        if not scalars[-1]:  # need_grad
            with torch._C._AutoDispatchBelowAutograd():  # nothing to differentiate: the kernel alone
                return impl(*tensors, *scalars)[0]
        return _EagerFused.apply((impl, _DEVICE_SCALE.get(op), reference_loss, scalars, tensors), tensors[0])
    return op(*tensors, *scalars)[0]


# The device-side gradient scale of each registered op, and the contract features it implements
# per device type (None: every device), handed down by its backend (register).
_DEVICE_SCALE = {}
_FEATURES = {}
# A Python op's own function, which eager calls run directly: the dispatcher's round trip to a
# Python kernel (and torch's compile-disable wrapper around it) costs more host time than the rest
# of a small call.
_EAGER_IMPL = {}
# csr_stats: the op finds the row statistics of CSR labels itself (without it the loss hands them
# down as row_stats, with by_batch's maximum in aux[1]).
ALL_FEATURES = frozenset({"asymmetric", "per_class", "csr", "csr_stats", "row_stats", "check_labels"})


def features(op, device_type=None) -> frozenset:
    """The optional parts of the kernel contract ``op`` implements on ``device_type`` tensors
    (None: on every device); ALL_FEATURES names them."""
    table = _FEATURES.get(op, {})
    if device_type is None:
        return frozenset.intersection(*table.values()) if table else frozenset()
    return table.get(device_type, table.get(None, frozenset()))


def _setup_context(ctx, inputs, output):
    _, grad = output
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(grad)  # the buffer is an implementation detail, not a differentiable output
    ctx.set_materialize_grads(False)  # the unused grad output would otherwise get an N x C zeros buffer
    ctx.has_grad = inputs[_NEED_GRAD]
    ctx.n_inputs = len(inputs)


def _backward(ctx, grad_loss, _grad_of_grad):
    if not ctx.has_grad:
        raise RuntimeError("dbl_kernels: the loss was computed without a gradient buffer "
                           "(logits did not require grad when the loss ran)")
    if grad_loss is None:
        return (None,) * ctx.n_inputs
    if torch.is_grad_enabled() and is_eager(grad_loss):
        raise RuntimeError(
            "dbl_kernels: a traced or scripted fused loss gives first derivatives only (backward with "
            "create_graph=True asks for second ones); call the loss eagerly or use backend='reference'.")
    (grad,) = ctx.saved_tensors
    return (grad * grad_loss,) + (None,) * (ctx.n_inputs - 1)


def register(op, device_scale=None, features=ALL_FEATURES, eager_impl=None):
    """Attach the shared fake kernel and autograd formula to a fused op (C++ or Triton).

    ``eager_impl``: the function behind a Python op, called directly by eager calls (same
    arguments and results as ``op``); tracing always records ``op``.

    ``device_scale(grad, grad_output)``: the backend's own in-place scale of a CUDA gradient by a
    one-element ``grad_output``, read on the device (a no-op when it is 1.0); None: torch's mul_.
    ``features``: the optional parts of the contract the op implements (calls needing others run
    the reference): a set for every device, or ``{device_type: set}`` where the devices' kernels differ.
    """
    table = dict(features) if isinstance(features, dict) else {None: features}
    for names in table.values():
        unknown = set(names) - ALL_FEATURES
        if unknown:
            raise ValueError(f"unknown contract features {sorted(unknown)}; known: {sorted(ALL_FEATURES)}")
    _DEVICE_SCALE[op] = device_scale
    if eager_impl is not None:
        _EAGER_IMPL[op] = eager_impl
    _FEATURES[op] = {device: frozenset(names) for device, names in table.items()}
    torch.library.register_fake(op)(fake_fused)
    torch.library.register_autograd(op, _backward, setup_context=_setup_context)
