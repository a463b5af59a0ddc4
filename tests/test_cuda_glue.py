"""The torch side of the CUDA kernel (csrc/dbl_cuda_glue.cpp) compiles here too: a CPU-only torch
ships the c10/ATen CUDA headers, the CUDA toolkit ships cuda_runtime_api.h, and the one header
torch generates at build time for CUDA wheels (cuda_cmake_macros.h, only macros) is stubbed."""
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cuda_include():
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parents[1]))
    candidates += sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))
    for base in candidates:
        if base and (Path(base) / "include" / "cuda_runtime_api.h").exists():
            return Path(base) / "include"
    return None


def test_cuda_glue_compiles_against_torch_headers(tmp_path):
    cxx, cuda_inc = shutil.which("g++") or shutil.which("c++"), _cuda_include()
    if cxx is None or cuda_inc is None:
        pytest.skip("needs a C++ compiler and the CUDA toolkit headers")
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    torch_inc = Path(torch.__file__).parent / "include"
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-w", "-DDBL_WITH_CUDA", f"-I{ROOT / 'csrc'}", f"-I{tmp_path}",
           f"-I{torch_inc}", f"-I{torch_inc / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{cuda_inc}",
           f"-I{sysconfig.get_paths()['include']}", str(ROOT / "csrc" / "dbl_cuda_glue.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
