"""Backend discovery and dispatch.

``"reference"`` (pure PyTorch) always works. The fused backends plug in here:
  * ``"cpu"`` / ``"cuda"``: the C++ extension ``dbl_kernels._C`` (``csrc/``), when built;
  * ``"triton"``: ``dbl_kernels.triton_kernel`` on CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``; importing the package never needs triton.

``"auto"`` (overridable with the environment variable ``DBL_BACKEND``) picks, by device:
CUDA: triton, then cuda, then reference; CPU: cpu, then reference.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger("dbl_kernels")

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
_BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root"


@functools.lru_cache(maxsize=None)
def _cpp():
    """The compiled extension module, or None (with the reason logged once)."""
    try:
        from . import _C  # noqa: F401  (registers torch.ops.dbl.fused on import)
        from . import cpp_ops

        return cpp_ops
    except ImportError as exc:
        log.info("dbl_kernels: C++ extension not available (%s); %s", exc, _BUILD_HINT)
        return None


@functools.lru_cache(maxsize=None)
def _triton():
    try:
        from . import triton_kernel

        return triton_kernel if triton_kernel.usable() else None
    except ImportError as exc:
        log.info("dbl_kernels: triton backend not available (%s)", exc)
        return None


def _triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_backend(name):
    """Whether backend ``name`` is built and usable here (see available_backends)."""
    if name == "reference":
        return True
    if name == "cpu":
        return _cpp() is not None and _cpp().has_cpu()
    if name == "cuda":
        return _cpp() is not None and _cpp().has_cuda() and torch.cuda.is_available()
    if name == "triton":
        return _triton() is not None and (torch.cuda.is_available() or _triton_interpreted())
    return False


def available_backends():
    """Names of the backends that can run here, e.g. ``['reference', 'cpu']``."""
    return [name for name in BACKENDS[1:] if has_backend(name)]


def _supports(name, device_type):
    if name == "reference":
        return True
    if name == "cpu":
        return device_type == "cpu"
    if name == "cuda":
        return device_type == "cuda"
    if name == "triton":
        return device_type == "cuda" or (device_type == "cpu" and _triton_interpreted())
    return False


_AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}


@functools.lru_cache(maxsize=None)
def _auto(device_type):
    for name in _AUTO_ORDER.get(device_type, ("reference",)):
        if has_backend(name) and _supports(name, device_type):
            log.info("dbl_kernels: backend 'auto' uses %r on %s", name, device_type)
            return name
    return "reference"


def check_backend_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; choose one of {list(BACKENDS)}")


def resolve(backend, device_type):
    """The concrete backend for tensors on ``device_type``; a clear error if it cannot run there."""
    check_backend_name(backend)
    if backend == "auto":
        backend = os.environ.get("DBL_BACKEND", "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"environment variable DBL_BACKEND={backend!r} is not one of {list(BACKENDS)}")
        if backend == "auto":
            return _auto(device_type)
    if not has_backend(backend):
        hint = _BUILD_HINT if backend in ("cpu", "cuda") else "install triton and use a CUDA device"
        raise ValueError(f"backend={backend!r} is not available here (available: {available_backends()}); {hint}")
    if not _supports(backend, device_type):
        raise ValueError(f"backend={backend!r} cannot run on {device_type} tensors; use backend='auto'")
    return backend


def fused_op(backend):
    """The registered op ``(op_args...) -> (loss, grad)`` of a fused backend."""
    if backend == "triton":
        return _triton().fused
    return _cpp().fused

