"""Backend discovery and dispatch.

``"reference"`` (pure PyTorch) always works. The fused backends plug in here:
  * ``"cpu"`` / ``"cuda"``: the C++ extension ``dbl_kernels._C`` (``csrc/``), when built;
  * ``"triton"``: ``dbl_kernels.triton_kernel`` on CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``; importing the package never needs triton.

``"auto"`` (overridable with the environment variable ``DBL_BACKEND``) picks, by device:
CUDA: triton, then cuda, then reference; CPU: cpu, then reference. When it has to fall back to the
reference because a fused backend is not built, it warns once (``UserWarning``) with the command
that builds it; ``backend="reference"`` chooses the reference explicitly, without a warning.

Resolution runs once per (backend, device type, DBL_BACKEND) and is a constant to torch.compile
(``assume_constant_result``): the imports, logging and warnings it needs never enter a traced graph.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch

log = logging.getLogger("dbl_kernels")

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
BUILD_COMMAND = "pip install --no-build-isolation -e ."
_BUILD_HINT = f"build it with `{BUILD_COMMAND}` from the repository root (torch installed first)"

_MISSING = object()
_LOADED = {}  # "cpp" / "triton" -> the backend module, or None (with the reason in _WHY)
_WHY = {}


def _load(name):
    module = _LOADED.get(name, _MISSING)
    if module is _MISSING:
        try:
            if name == "cpp":
                from . import _C  # noqa: F401  (registers torch.ops.dbl.fused on import)
                from . import cpp_ops as module
            else:
                from . import triton_kernel as module

                if not module.usable():
                    module = None
                    _WHY[name] = "no CUDA device (and TRITON_INTERPRET is not 1)"
        except ImportError as exc:
            module = None
            _WHY[name] = str(exc)
            log.info("dbl_kernels: %s backend not available (%s)", name, exc)
        _LOADED[name] = module
    return module


def _triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_backend(name):
    """Whether backend ``name`` is built and usable here (see available_backends)."""
    if name == "reference":
        return True
    if name == "cpu":
        return _load("cpp") is not None and _load("cpp").has_cpu()
    if name == "cuda":
        return _load("cpp") is not None and _load("cpp").has_cuda() and torch.cuda.is_available()
    if name == "triton":
        return _load("triton") is not None and (torch.cuda.is_available() or _triton_interpreted())
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


def _auto(device_type):
    for name in _AUTO_ORDER.get(device_type, ("reference",)):
        if has_backend(name) and _supports(name, device_type):
            log.info("dbl_kernels: backend 'auto' uses %r on %s", name, device_type)
            if name == "reference" and device_type in _AUTO_ORDER:
                _warn_slow_path(device_type)
            return name
    return "reference"


def _warn_slow_path(device_type):
    if device_type == "cpu":
        missing = f"the C++ extension dbl_kernels._C is not built ({_WHY.get('cpp', 'not found')})"
        fix = f"build it with `{BUILD_COMMAND}` from the repository root, with torch installed first"
    else:
        missing = (f"neither triton ({_WHY.get('triton', 'not found')}) nor the CUDA build of the C++ "
                   f"extension ({_WHY.get('cpp', 'built without CUDA')}) is available")
        fix = f"`pip install triton`, or build the extension on a machine with nvcc: `{BUILD_COMMAND}`"
    warnings.warn(f"dbl_kernels: backend='auto' runs the pure-PyTorch reference on {device_type} tensors, "
                  f"about 10x slower than the fused kernel, because {missing}. To fix: {fix}. "
                  "Pass backend='reference' to choose the reference explicitly.", UserWarning, stacklevel=2)


def check_backend_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; choose one of {list(BACKENDS)}")


_RESOLVED = {}


@torch.compiler.assume_constant_result
def resolve(backend, device_type):
    """The concrete backend for tensors on ``device_type``; a clear error if it cannot run there."""
    key = (backend, device_type, os.environ.get("DBL_BACKEND"))
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = _resolve(backend, device_type)
    return name


def _resolve(backend, device_type):
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


def cpu_threads():
    """How many threads one call of the ``cpu`` backend really runs on: ``torch.get_num_threads()``
    where the extension was built with OpenMP, else 1. Loads the extension."""
    if _load("cpp") is None:
        raise RuntimeError(f"the C++ extension is not built ({_WHY.get('cpp')}); {_BUILD_HINT}")
    return int(torch.ops.dbl._cpu_parallel_threads())


def fused_op(backend):
    """The registered op ``(op_args...) -> (loss, grad)`` of a fused backend."""
    return _load("triton" if backend == "triton" else "cpp").fused
