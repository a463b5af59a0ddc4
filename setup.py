"""Build: ``pip install --no-build-isolation -e .`` (torch must be installed first).

Builds the C++ extension ``dbl_kernels._C`` (CPU kernel), with the CUDA kernel too when torch has
CUDA and nvcc is found (``USE_CUDA=0`` skips it). Without torch at build time this stops with an
error that says how to install; ``DBL_NO_EXTENSION=1`` installs pure Python (reference + Triton).
``DBL_NO_EMULATE=1`` leaves out the CPU emulation of the CUDA kernel (``dbl::_cuda_emulate``, for tests
on machines without a GPU; its tests then skip): what benchmarks/device_check.sh builds on a GPU.
"""
import glob
import os
import subprocess
import sys

from setuptools import find_packages, setup

ext_modules, cmdclass = [], {}


def _torch_loads_libgomp():
    """Whether torch's CPU library loads the OpenMP runtime under the name g++ links (libgomp.so.1)."""
    if not sys.platform.startswith("linux"):
        return False
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        out = subprocess.run(["ldd", os.path.join(lib, "libtorch_cpu.so")], capture_output=True, text=True,
                             check=False).stdout
    except OSError:
        return os.path.exists(os.path.join(lib, "libgomp.so.1"))
    return any(line.split()[:2] == ["libgomp.so.1", "=>"] for line in out.splitlines() if line.strip())

NO_EXTENSION = os.environ.get("DBL_NO_EXTENSION", "0") == "1"


def _cuda_archs():
    """sm_80 + sm_90 machine code and sm_90 PTX for newer GPUs, unless TORCH_CUDA_ARCH_LIST names
    the targets (torch then derives the flags: e.g. "9.0" builds for one GPU in a third of the time)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []
    return ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
            "-gencode=arch=compute_90,code=compute_90"]


def _missing_torch_message(exc):
    return f"""
dbl_kernels: torch is not importable while setup.py runs ({exc}), so its C++ kernel cannot be built.
pip builds in an isolated environment by default (build isolation), which hides the torch you
installed. Install torch (and the build tools) first, then install without build isolation:

    pip install torch setuptools wheel
    pip install --no-build-isolation -e ".[demo]"

(`bash scripts/demo.sh` does both in .venv.) For a pure-Python install without the kernel, where
backend="auto" runs the much slower reference, set DBL_NO_EXTENSION=1:

    DBL_NO_EXTENSION=1 pip install -e ".[demo]"
"""


try:
    import torch
    from torch.utils import cpp_extension
except ImportError as exc:
    # Failing here, not installing pure Python, is deliberate: a silent fallback leaves users
    # on the reference without knowing. Not a build requirement on torch either: pip would put a
    # different (multi-GB, CUDA) torch into the isolated build and the kernel's ABI would not match.
    if not NO_EXTENSION:
        sys.exit(_missing_torch_message(exc))
    torch = None

if torch is not None and not NO_EXTENSION:
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if os.environ.get("DBL_NO_EMULATE", "0") == "1":  # the CUDA kernel's CPU emulation (tests only):
        sources.remove(os.path.join("csrc", "dbl_emulate.cpp"))  # the slowest object (~140 s on a GPU host)
    headers = sorted(glob.glob(os.path.join("csrc", "*.h")))  # rebuild when the shared math changes
    use_cuda = (os.environ.get("USE_CUDA", "1") != "0" and torch.version.cuda is not None
                and cpp_extension.CUDA_HOME is not None)
    # No -ffast-math and no -march: the vector ISA is chosen at run time (csrc/dbl_cpu.cpp).
    # -fno-trapping-math lets g++ if-convert (hence vectorise) the element loop; results are unchanged.
    cxx = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math"]
    link = []
    # at::parallel_for is header code: without the compiler's OpenMP flag it silently runs on one
    # thread. -fopenmp links g++'s libgomp.so.1, which is right only where torch loads that same
    # library (its Linux wheels do); a second OpenMP runtime would ignore torch.set_num_threads.
    if torch.backends.openmp.is_available() and _torch_loads_libgomp():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    define_macros = [("Py_LIMITED_API", "0x030A0000")]  # = torch's own define (python_requires >= 3.10)
    if sources:
        if use_cuda:
            sources += sorted(glob.glob(os.path.join("csrc", "*.cu")))
            ext = cpp_extension.CUDAExtension(
                "dbl_kernels._C", sources, depends=headers, include_dirs=[os.path.join(here, "csrc")],
                define_macros=define_macros + [("DBL_WITH_CUDA", "1")],
                extra_link_args=link, extra_compile_args={"cxx": cxx, "nvcc": [
                    "-O3", "-std=c++17", "--threads=0",  # no --use_fast_math: the GPU runs the CPU's exact math
                    *_cuda_archs()]},
                py_limited_api=True)
        else:
            ext = cpp_extension.CppExtension(
                "dbl_kernels._C", sources, depends=headers, include_dirs=[os.path.join(here, "csrc")],
                define_macros=define_macros, extra_compile_args={"cxx": cxx}, extra_link_args=link, py_limited_api=True)
        ext_modules = [ext]
        cmdclass = {"build_ext": cpp_extension.BuildExtension}

setup(
    name="dbl_kernels",
    version="0.1.0",
    description="Fused, exact Distribution-Balanced loss (Wu et al., ECCV 2020) for PyTorch",
    packages=find_packages(include=["dbl_kernels", "dbl_kernels.*"]),
    package_data={"dbl_kernels": ["presets/*.npz", "data/*.npz"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton"],
        "demo": ["scikit-learn", "matplotlib", "tqdm"],
        "test": ["pytest", "pytest-benchmark", "scikit-learn", "matplotlib", "tqdm"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
