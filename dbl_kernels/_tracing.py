"""Whether a call runs eagerly or under a tracer / torch.func transform: the predicates every layer
consults to pick the direct kernel path or the traceable op. Imports only torch."""
from __future__ import annotations

import torch
from torch.autograd import forward_ad


def is_eager(tensor) -> bool:
    """True for a real tensor outside any tracing (torch.compile, make_fx, export): then kernels may be
    launched directly, skipping the custom-op and wrap_triton machinery that tracing needs (hundreds
    of microseconds of host time per call on a GPU machine). torch.jit.trace records ops, so it gets
    the op too (a Python autograd.Function cannot be saved in a traced module); torch.func transforms
    wrap tensors that have no data pointer."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not torch._C._are_functorch_transforms_active()
            and type(tensor) in (torch.Tensor, torch.nn.Parameter) and torch._C._len_torch_dispatch_stack() == 0)


def transformed(*tensors) -> bool:
    """Whether a torch.func transform is active, or one of tensors carries a forward-mode tangent."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return True
    return forward_ad._current_level >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)
