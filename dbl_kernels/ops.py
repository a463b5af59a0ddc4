"""Autograd and fake-tensor glue shared by every fused kernel op.

Each fused op returns ``(loss, grad)``: the forward already computed d loss / d logits, because the
Jacobian is diagonal (every weight depends on labels only). Backward only multiplies that buffer by
``grad_output``, in place; ``scale_grad_`` reads ``grad_output`` on the device and does nothing
when it is exactly 1.0 (a plain ``loss.backward()``), so no second pass over the gradient.
"""
from __future__ import annotations

import functools

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
_NEED_GRAD = OP_ARG_NAMES.index("need_grad")


def op_args(logits, labels, weight, class_params, aux, spec, need_grad):
    return (logits, labels, weight, class_params, aux, spec.reweight_mode, spec.weight_norm,
            spec.logit_reg, spec.focal, spec.reduction, spec.map_alpha, spec.map_beta, spec.map_gamma,
            spec.cb_log_beta, spec.neg_scale, spec.gamma, spec.scale, spec.w_max, need_grad)


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


# The device-side gradient scale of each registered op, handed down by its backend (register):
# op name -> fn(grad, grad_output) that scales a CUDA gradient in place and returns at once,
# on the device, when grad_output is 1.0.
_DEVICE_SCALE = {}


@torch.library.custom_op("dbl::scale_grad_", mutates_args=("grad",))
def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, op_name: str = "") -> None:
    """grad *= grad_output, skipped on the device when grad_output is a scalar 1.0 (with the
    scale kernel of the backend that registered op ``op_name``)."""
    _scale_grad(grad, grad_output, _DEVICE_SCALE.get(op_name))


def _scale_grad(grad, grad_output, device_scale):
    if grad_output.numel() == 1 and grad.is_cuda and device_scale is not None:
        device_scale(grad, grad_output)
        return
    if grad_output.numel() == 1 and grad_output.device.type == "cpu":
        if grad_output.reshape(()).tolist() == 1.0:  # a CPU scalar: no device to wait for
            return
    grad.mul_(grad_output)


@scale_grad_.register_fake
def _(grad, grad_output, op_name=""):
    return None


def _setup_context(ctx, inputs, output):
    _, grad = output
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(grad)  # the buffer is an implementation detail, not a differentiable output
    ctx.set_materialize_grads(False)  # the unused grad output would otherwise get an N x C zeros buffer
    ctx.has_grad = inputs[_NEED_GRAD]
    ctx.n_inputs = len(inputs)
    ctx.used = False


def _backward(op_name, ctx, grad_loss, _grad_of_grad):
    if not ctx.has_grad:
        raise RuntimeError("dbl_kernels: the loss was computed without a gradient buffer "
                           "(logits did not require grad when the loss ran)")
    if grad_loss is None:
        return (None,) * ctx.n_inputs
    return (_scaled_grad(ctx, grad_loss, op_name),) + (None,) * (ctx.n_inputs - 1)


def _scaled_grad(ctx, grad_loss, op_name):
    """The saved gradient buffer times grad_loss, in place (first derivatives, one backward only)."""
    if ctx.used:
        raise RuntimeError(
            "dbl_kernels: this loss was already back-propagated. The fused backends keep one "
            "gradient buffer and scale it in place, so backward through the same loss twice "
            "(retain_graph=True) is not supported; recompute the loss, or use backend='reference'.")
    if torch.is_grad_enabled() and is_eager(grad_loss):
        raise RuntimeError(
            "dbl_kernels: the fused backends give first derivatives only (backward with "
            "create_graph=True asks for second ones); use backend='reference' for double backward.")
    ctx.used = True
    (grad,) = ctx.saved_tensors
    if is_eager(grad):
        _scale_grad(grad, grad_loss, _DEVICE_SCALE.get(op_name))
    else:
        scale_grad_(grad, grad_loss, op_name)
    return grad


class _EagerFused(torch.autograd.Function):
    """The same autograd formula as ``register`` gives the op, for eager calls that need a gradient:
    a plain autograd.Function around the op's kernel (dispatched below autograd) costs a fraction
    of the custom op's Python autograd wrapper (about 65 against 140 us per forward + backward on
    a small CPU problem), which is most of a call at COCO batch sizes. Traced code keeps the op."""

    @staticmethod
    def forward(ctx, op, *args):
        with torch._C._AutoDispatchBelowAutograd():
            loss, grad = op(*args)
        ctx.save_for_backward(grad)
        ctx.used = False
        ctx.op_name = _OP_NAMES.get(op, "")
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return (None, _scaled_grad(ctx, grad_loss, ctx.op_name)) + (None,) * (len(OP_ARG_NAMES) - 1)


def call(op, args):
    """The loss from a fused op: through the eager fast path where it applies, else the op."""
    logits = args[0]
    if is_eager(logits):
        if not args[_NEED_GRAD]:
            with torch._C._AutoDispatchBelowAutograd():  # nothing to differentiate: the kernel alone
                return op(*args)[0]
        return _EagerFused.apply(op, *args)
    return op(*args)[0]


_OP_NAMES = {}


def register(op, device_scale=None):
    """Attach the shared fake kernel and autograd formula to a fused op (C++ or Triton).

    ``device_scale(grad, grad_output)``: the backend's own in-place scale of a CUDA gradient by a
    one-element ``grad_output``, read on the device (a no-op when it is 1.0); None: torch's mul_.
    """
    name = op.name() if isinstance(op, torch._ops.OpOverload) else op._qualname
    _OP_NAMES[op] = name
    _DEVICE_SCALE[name] = device_scale
    torch.library.register_fake(op)(fake_fused)
    torch.library.register_autograd(op, functools.partial(_backward, name), setup_context=_setup_context)
