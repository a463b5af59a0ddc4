"""The C++/CUDA extension's ops: ``dbl::fused`` (CPU, and CUDA when built with it).

Importing this module registers the shared fake kernel and autograd formula (ops.register) on
``torch.ops.dbl.fused``; backends.py imports it only when ``dbl_kernels._C`` is importable.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (static registration of the dbl::fused schema and kernels)
from . import ops

# Plain bools, decided once: backends.py consults them inside code that torch.compile traces.
_HAS_CUDA = hasattr(torch.ops.dbl, "scale_grad_cuda_")  # registered only by a CUDA build


def has_cpu() -> bool:
    return True  # the CPU kernel is always part of the extension


def has_cuda() -> bool:
    """Whether the extension was compiled with its CUDA kernel (says nothing about a GPU here)."""
    return _HAS_CUDA


def scale_grad(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    """``grad *= grad_output`` in place on the GPU; a no-op decided on the device when it is 1.0."""
    torch.ops.dbl.scale_grad_cuda_(grad, grad_output)


fused = torch.ops.dbl.fused.default
# The optional parts of the contract the C++ kernels implement (csrc: kCpuFeatures, kCudaFeatures);
# calls needing any other run the reference (loss._fused_supports).
FEATURES = {"cpu": frozenset({"asymmetric", "per_class", "row_stats", "check_labels", "csr", "csr_stats"}),
            "cuda": frozenset({"asymmetric", "per_class", "row_stats", "csr"})}
ops.register(fused, device_scale=scale_grad if _HAS_CUDA else None, features=FEATURES)
