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

from ._spec import REDUCTION_NONE
from ._tracing import is_eager
from .reference import compute_dtype

# Argument positions shared by every fused op's schema (see _spec.py):
# (logits, labels, weight, class_params, aux, reweight_mode, weight_norm, logit_reg, focal, reduction,
#  map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max, need_grad)
OP_ARG_NAMES = ("logits", "labels", "weight", "class_params", "aux", "reweight_mode", "weight_norm",
                "logit_reg", "focal", "reduction", "map_alpha", "map_beta", "map_gamma", "cb_log_beta",
                "neg_scale", "gamma", "scale", "w_max", "need_grad")
_N_TENSORS = OP_ARG_NAMES.index("reweight_mode")  # the leading tensor arguments
_NEED_GRAD = OP_ARG_NAMES.index("need_grad")


def op_args(logits, labels, weight, class_params, aux, spec, need_grad, reduction=None):
    """The op's arguments; ``reduction`` (a code) overrides the spec's."""
    return (logits, labels, weight, class_params, aux, spec.reweight_mode, spec.weight_norm,
            spec.logit_reg, spec.focal, spec.reduction if reduction is None else reduction, spec.map_alpha,
            spec.map_beta, spec.map_gamma, spec.cb_log_beta, spec.neg_scale, spec.gamma, spec.scale, spec.w_max,
            need_grad)


def fake_fused(logits, labels, weight, class_params, aux, reweight_mode, weight_norm, logit_reg, focal,
               reduction, map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max,
               need_grad):
    """Shapes and dtypes only: what torch.compile traces."""
    dtype = compute_dtype(logits)
    loss = (logits.new_empty(logits.shape, dtype=dtype) if reduction == REDUCTION_NONE
            else logits.new_empty((), dtype=dtype))
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
    sizes. The inputs are saved by reference (no copies) for a second or differentiable backward."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        # plan = (op, device_scale, reference_loss, scalar args): one argument, because apply()
        # inspects every argument it gets (about 0.3 us each)
        op, ctx.device_scale, ctx.reference_loss, ctx.scalars = plan
        with torch._C._AutoDispatchBelowAutograd():
            loss, grad = op(*tensors, *ctx.scalars)
        ctx.grad = grad  # handed out (and dropped) by the first backward: not a saved tensor, it is scaled in place
        ctx.save_for_backward(*tensors)
        ctx.op = op
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            grad = _reference_backward(ctx, grad_loss)
        elif ctx.grad is not None:  # the common case: the forward's buffer, scaled in place
            grad, ctx.grad = ctx.grad, None  # no reference left behind: autograd may adopt it as x.grad
            _scale_in_place(grad, grad_loss, ctx.device_scale)
        else:  # a second backward through the same loss: recompute, one fused pass
            with torch._C._AutoDispatchBelowAutograd():
                _, grad = ctx.op(*ctx.saved_tensors, *ctx.scalars)
            _scale_in_place(grad, grad_loss, ctx.device_scale)
        return None, grad, None, None, None, None


def _reference_backward(ctx, grad_loss):
    """d loss / d logits as a differentiable function of the logits and grad_loss, from the
    reference's formula (the fused kernels give first derivatives only)."""
    if ctx.reference_loss is None:
        raise RuntimeError("dbl_kernels: this fused call has no differentiable backward "
                           "(create_graph=True); use backend='reference'")
    logits = ctx.saved_tensors[0]
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
        if not scalars[-1]:  # need_grad
            with torch._C._AutoDispatchBelowAutograd():  # nothing to differentiate: the kernel alone
                return op(*tensors, *scalars)[0]
        return _EagerFused.apply((op, _DEVICE_SCALE.get(op), reference_loss, scalars), *tensors)
    return op(*tensors, *scalars)[0]


# The device-side gradient scale of each registered op, handed down by its backend (register).
_DEVICE_SCALE = {}


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


def register(op, device_scale=None):
    """Attach the shared fake kernel and autograd formula to a fused op (C++ or Triton).

    ``device_scale(grad, grad_output)``: the backend's own in-place scale of a CUDA gradient by a
    one-element ``grad_output``, read on the device (a no-op when it is 1.0); None: torch's mul_.
    """
    _DEVICE_SCALE[op] = device_scale
    torch.library.register_fake(op)(fake_fused)
    torch.library.register_autograd(op, _backward, setup_context=_setup_context)
