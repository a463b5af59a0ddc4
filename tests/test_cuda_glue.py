"""The CUDA kernel without a GPU.

* The torch side (csrc/dbl_cuda_glue.cpp) compiles here: a CPU-only torch ships the c10/ATen CUDA
  headers, the CUDA toolkit ships cuda_runtime_api.h, and the one header torch generates at build
  time for CUDA wheels (cuda_cmake_macros.h, only macros) is stubbed.
* The kernel itself runs on the CPU through dbl::_cuda_emulate: the same launch plan
  (csrc/dbl_plan.h) and block program (csrc/dbl_block.h) as the GPU, block after block, with the
  MUFU instructions (ex2/lg2/rcp.approx) replaced by exact stand-ins, or by stand-ins off by their
  documented worst case in one direction (err = +1 / -1). Checked against the reference on every
  configuration, shape class (packed rows, chunked and tiled wide rows, statistics pass), label
  dtype, stride and weight.
* Its machine code for sm_90: the instruction budget of the main paths, read from the SASS.
"""
import itertools
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import ops
from dbl_kernels._spec import make_aux

from conftest import cuda_emulate
from test_cpp_backend import FOCALS, NTRS, REWEIGHTS, TOL, _inputs, _nvcc, _stats, cpp_ops, needs_ext, rel_err

ROOT = Path(__file__).resolve().parents[1]


def _static_check():
    """benchmarks/static_check.py, whose cuobjdump finder the SASS checks here share."""
    import importlib.util
    import sys

    if "dbl_static_check" not in sys.modules:  # its dataclasses need the module registered
        spec = importlib.util.spec_from_file_location("dbl_static_check", ROOT / "benchmarks" / "static_check.py")
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["dbl_static_check"]


PATH_GENERIC, PATH_DB_FOCAL, PATH_CB_FOCAL, PATH_BCE = range(4)  # csrc/dbl_plan.h KernelPath
DB_FOCAL = dict()  # the authors' COCO config: rebalance, focal gamma=2, NTR, mean
CB_FOCAL = dict(reweight="CB", cb_mode="average_w", logit_reg=False)
BCE = dict(reweight=None, focal=False, logit_reg=False)


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


# ------------------------------------------------------------------------------------------------
# The kernel, emulated on the CPU.
# ------------------------------------------------------------------------------------------------
def _emulate(c, cfg, z, y, weight=None, err=0, need_grad=True, avg_factor=None, aux_batch=None, max_blocks=0):
    """(loss, grad, plan) of the CUDA kernel run on the CPU, with the arguments the loss module
    gives the cuda backend (a mean over labels that may hold -1 divides by a count made in torch).
    max_blocks: the grid of the emulated device (0: the plan's cap of 4096 blocks)."""
    mod = dk.DistributionBalancedLoss(_stats(c), backend="reference", **cfg)
    aux = make_aux(z, y, mod.config, mod.spec, mod.class_freq, mod.stats.train_num, avg_factor)
    if aux_batch is not None:  # the kernels find the by_batch maximum themselves: aux[1] is unused
        aux = aux.clone()
        aux[1] = aux_batch
    params = mod._params(torch.float64 if z.dtype == torch.float64 else torch.float32)
    w = None if weight is None else weight.expand(z.shape)
    loss, grad, plan = cuda_emulate(*ops.op_args(z, y, w, params, aux, mod.spec, need_grad), err, max_blocks)
    return loss, grad, plan.tolist()


def _reference(c, cfg, z, y, weight=None, avg_factor=None):
    mod = dk.DistributionBalancedLoss(_stats(c), backend="reference", **cfg)
    z = z.detach().clone().requires_grad_()
    loss = mod(z, y, weight, avg_factor=avg_factor)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), z.grad


def _check_emulated(c, cfg, z, y, weight=None, errs=(1, -1), tol=TOL, path=None, **kw):
    ref = _reference(c, cfg, z.float() if z.dtype != torch.float64 else z, y.float() if y.dtype != torch.float64
                     else y, None if weight is None else weight.float(), kw.get("avg_factor"))
    plan = None
    # a 16-bit gradient: within the error of the reference's own gradient rounded to 16 bits
    tol_grad = tol if z.dtype in (torch.float32, torch.float64) else max(
        tol, 1.5 * rel_err(ref[1].to(z.dtype).to(ref[1].dtype), ref[1]))
    for err in errs:
        loss, grad, plan = _emulate(c, cfg, z, y, weight, err=err, **kw)
        assert loss.dtype == ref[0].dtype and grad.dtype == z.dtype and grad.shape == z.shape
        assert torch.isfinite(grad).all()
        assert rel_err(loss, ref[0]) <= tol, (cfg, err, plan, float(rel_err(loss, ref[0])))
        assert rel_err(grad.to(ref[1].dtype), ref[1]) <= tol_grad, (cfg, err, plan, rel_err(grad.to(ref[1].dtype), ref[1]))
    if path is not None:
        assert plan[0] == path, (cfg, plan)
    return plan


@needs_ext
@pytest.mark.parametrize("reweight", REWEIGHTS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_emulated_kernel_every_configuration(reweight):
    # uint8 labels take a main path where the configuration has one, float labels with unknowns the
    # generic kernel; both with the MUFU error model at its worst in either direction.
    z, yf = _inputs(12, 24)
    yu = yf.clamp(min=0).to(torch.uint8)
    for norm, ntr, focal, reduction in itertools.product((None, "by_instance", "by_batch"), NTRS, FOCALS,
                                                         ("mean", "sum", "none")):
        cfg = dict(reweight, weight_norm=norm, reduction=reduction, **ntr, **focal)
        for y in (yu, yf):
            _check_emulated(24, cfg, z, y)


@needs_ext
def test_emulated_main_paths_are_taken():
    z, yf = _inputs(64, 80)
    y = yf.clamp(min=0).to(torch.uint8)
    for cfg, path in ((DB_FOCAL, PATH_DB_FOCAL), (CB_FOCAL, PATH_CB_FOCAL), (BCE, PATH_BCE),
                      (dict(reweight="CB", cb_mode="min_n", logit_reg=False), PATH_CB_FOCAL),
                      (dict(reweight="inv", focal=False, logit_reg=False, reduction="sum"), PATH_BCE)):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for yy in (y, y.bool()):
                plan = _check_emulated(80, cfg, z.to(dtype), yy, path=path)
                assert plan[2] == 0, plan  # one launch: no statistics pass
    # what falls back to the generic kernel: float labels, fp64 logits, unaligned views, C % 8 != 0
    for zz, yy, c in ((z, yf, 80), (z.double(), y, 80), (z[:, 1:73], y[:, 1:73], 72), (z[:, :20], y[:, :20], 20)):
        _check_emulated(c, DB_FOCAL, zz, yy, path=PATH_GENERIC)


@needs_ext
@pytest.mark.parametrize("c", [1, 3, 8, 20, 80, 1000, 4096, 4099])
def test_emulated_shapes(c):
    for n in (1, 7, 64, 513):
        z, yf = _inputs(n, c, seed=n + c)
        y = yf.clamp(min=0).to(torch.uint8)
        for cfg in (DB_FOCAL, CB_FOCAL, BCE, dict(reweight="CB", cb_mode="min_n", weight_norm="by_instance",
                                                   reduction="sum")):
            _check_emulated(c, cfg, z.to(torch.bfloat16).float(), y, errs=(1,))
        _check_emulated(c, dict(weight_norm="by_batch", reduction="none"), z, yf, errs=(-1,))


def confident_batch(n, c, mag, seed=3):
    """Logits on their label's side by about ``mag``, uint8 labels: the loss sits in elements
    whose p_t is near 1."""
    z, yf = _inputs(n, c, seed=seed)
    y = yf.clamp(min=0).to(torch.uint8)
    return torch.where(y.bool(), mag, -mag) + 0.1 * z, y


@needs_ext
@pytest.mark.parametrize("mag", [3.0, 5.0, 10.0, 17.0])
def test_emulated_confident_batches(mag):
    # l = -ln p_t must stay exact in relative terms as p_t -> 1: -ln2 lg2(p_t) with lg2.approx
    # (2^-22 absolute) was 4e-5 off at mag 5 and 0.6% at mag 10; the fp64 oracle, not fp32
    zz, y = confident_batch(64, 80, mag)
    asl = dict(gamma_neg=4.0, clip=0.05)  # DB-ASL, and ASL on its own: the generic kernel
    for cfg, path in ((DB_FOCAL, PATH_DB_FOCAL), (CB_FOCAL, PATH_CB_FOCAL), (BCE, PATH_BCE),
                      (asl, PATH_GENERIC), (dict(asl, gamma=1.0, reweight=None, logit_reg=False), PATH_GENERIC)):
        ref = _reference(80, cfg, zz.double(), y.double())
        # uint8 labels: the main paths; float labels: the generic kernel (labels read per element)
        for labels, want in ((y, path), (y.float(), PATH_GENERIC)):
            for err in (1, -1):
                loss, grad, plan = _emulate(80, cfg, zz, labels, err=err)
                assert plan[0] == want
                assert rel_err(loss, ref[0]) <= TOL and rel_err(grad, ref[1]) <= TOL, (cfg, want, err)


@needs_ext
@pytest.mark.parametrize("norm", ["by_instance", "by_batch"])
def test_emulated_row_weights_far_out(norm):
    # A negative map_beta (supported) puts the rebalance sigmoid's argument at the row's extreme
    # near 127 bits: 1 + 2^a ~ 2^127 reaches the device's per-row reciprocal (no MUFU there), whose
    # bit-trick guess turned NaN above 2^126 before it was capped
    counts = np.array([1000.0, 985.0, 980.0, 500.0, 300.0, 120.0, 60.0, 30.0])
    stats = dk.ClassStats.from_counts(counts, train_num=5000.0)
    cfg = dict(map_beta=-100.0, map_gamma=0.1, weight_norm=norm)
    z, _ = _inputs(8, 8, seed=5)
    y = torch.zeros(8, 8, dtype=torch.uint8)
    y[torch.arange(8), torch.tensor([1, 2, 1, 2, 0, 3, 1, 2])] = 1  # one positive a row, mostly n = 985 / 980
    mod = dk.DistributionBalancedLoss(stats, backend="reference", **cfg)
    aux = make_aux(z, y, mod.config, mod.spec, mod.class_freq, mod.stats.train_num, None)
    loss, grad, plan = cuda_emulate(*ops.op_args(z, y, None, mod._params(torch.float32), aux, mod.spec, True), 1, 0)
    assert plan.tolist()[0] == PATH_DB_FOCAL
    leaf = z.double().requires_grad_()
    ref = mod(leaf, y.double())
    ref.backward()
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert rel_err(loss, ref.detach()) <= TOL and rel_err(grad, leaf.grad) <= TOL


@needs_ext
@pytest.mark.parametrize("max_blocks", [1, 3, 7])
def test_emulated_resident_grid(max_blocks):
    # On a GPU the grid is the blocks resident at once (SMs x blocks per SM), so each block loops
    # over many items: packed rows, chunked rows, tiles after a statistics pass, the statistics pass
    # itself, and the last block's sum over few partials.
    cases = [(600, 80, DB_FOCAL), (600, 80, CB_FOCAL), (600, 80, BCE), (40, 4096, DB_FOCAL),
             (3, 20000, DB_FOCAL), (520, 2100, dict(reweight="CB", cb_mode="min_n", weight_norm="by_batch")),
             (600, 80, dict(weight_norm="by_batch", reduction="none"))]
    for n, c, cfg in cases:
        z, yf = _inputs(n, c, seed=n + c)
        y = yf.clamp(min=0).to(torch.uint8) if "by_batch" not in str(cfg) else yf
        plan = _check_emulated(c, cfg, z, y, errs=(1,), max_blocks=max_blocks)
        items, blocks = plan[8], plan[9]
        assert blocks == min(items, max_blocks), (n, c, cfg, plan)
        assert items > blocks or max_blocks == 7, (n, c, cfg, plan)  # 3 x 20,000: 6 tiles


@needs_ext
def test_emulated_wide_rows_chunks_tiles_and_statistics_pass():
    # Rows wider than one chunk (2048 vectors): few rows are tiles after a statistics pass (two
    # launches), 512 rows or more are chunked items with the statistics in the block (one launch).
    z, yf = _inputs(3, 20000, seed=1)
    y = yf.clamp(min=0).to(torch.uint8)
    plan = _check_emulated(20000, DB_FOCAL, z, y, path=PATH_DB_FOCAL)
    assert plan[2] == 1 and plan[7] > 1, plan  # statistics pass, then tiles
    plan = _check_emulated(20000, BCE, z, y, path=PATH_BCE)
    assert plan[2] == 0 and plan[7] > 1, plan  # nothing to gather: tiles in one launch
    z, yf = _inputs(520, 2100, seed=2)  # generic kernel: one element per slot, so 2100 is wide
    plan = _check_emulated(2100, dict(reweight="CB", cb_mode="average_n"), z, yf, path=PATH_GENERIC)
    assert plan[2] == 0 and plan[6] > 1, plan  # chunked rows, one launch
    plan = _check_emulated(2100, dict(reweight="CB", cb_mode="min_n", weight_norm="by_batch"), z, yf,
                           path=PATH_GENERIC)
    assert plan[2] == 1, plan


@needs_ext
def test_emulated_label_dtypes_strides_and_weights():
    z, yf = _inputs(9, 40)
    for dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                  torch.bfloat16, torch.float32, torch.float64):
        y = yf.to(dtype) if dtype.is_signed or dtype.is_floating_point else yf.clamp(min=0).to(dtype)
        _check_emulated(40, dict(reweight="CB", cb_mode="min_n"), z, y, errs=(1,))
    wide_z = torch.randn(9, 56)
    wide_z[:, :40] = z
    wide_y = torch.zeros(9, 56, dtype=torch.uint8)
    wide_y[:, :40] = yf.clamp(min=0).to(torch.uint8)
    for zz, yy in ((wide_z[:, :40], wide_y[:, :40]), (z[:1].expand(9, 40), wide_y[:1, :40].expand(9, 40)),
                   (z.t().contiguous().t(), wide_y[:, :40].t().contiguous().t())):
        for cfg in (DB_FOCAL, dict(CB_FOCAL, reduction="none")):
            _check_emulated(40, cfg, zz, yy)
    w = torch.rand(9, 80)
    for weight in (w[:, ::2], torch.rand(40), torch.rand(9, 1), torch.tensor(0.7)):
        _check_emulated(40, DB_FOCAL, z, wide_y[:, :40], weight)
        _check_emulated(40, dict(BCE, reduction="none"), z, yf, weight)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_half_precision_within_reference_error(dtype):
    z, yf = _inputs(64, 80, scale=4.0)
    y = yf.clamp(min=0).to(torch.uint8)
    z = z.to(dtype)
    for cfg in (DB_FOCAL, CB_FOCAL, BCE):
        exact = _reference(80, cfg, z.double(), y.double())
        base = _reference(80, cfg, z, y.float())  # fp32 math, gradient rounded to the logits' dtype
        for err in (1, -1):
            loss, grad, _ = _emulate(80, cfg, z, y, err=err)
            # (the worst-case MUFU model alone moves the loss by about 1e-6)
            for got, want, ref in ((loss, exact[0], base[0]), (grad, exact[1], base[1])):
                assert rel_err(got.double(), want) <= max(1.5 * rel_err(ref.double(), want), 2e-6)


@needs_ext
def test_emulated_saturated_logits_keep_gradients_finite():
    z, yf = _inputs(8, 24, partial=False)
    y = yf.to(torch.uint8)
    z = z.sign() * torch.tensor([20.0, 64.5, 100.0, 1e4, 1e30, 87.0]).repeat(4)
    for cfg in (DB_FOCAL, CB_FOCAL, BCE, dict(gamma=0.5), dict(DB_FOCAL, reduction="none")):
        _check_emulated(24, cfg, z, y)
        _check_emulated(24, cfg, z, yf)


@needs_ext
def test_emulated_results_are_bit_identical_and_the_workspace_is_reset():
    # The emulation keeps its workspace across calls (as the CUDA glue does) and raises if a launch
    # leaves the ticket or the batch-max key set; results depend on the plan only.
    z, yf = _inputs(600, 80, soft=True)
    y = yf.clamp(min=0).to(torch.uint8)
    for cfg, yy in ((DB_FOCAL, y), (dict(weight_norm="by_batch"), yf), (dict(CB_FOCAL, reduction="sum"), y)):
        first = _emulate(80, cfg, z, yy)
        again = _emulate(80, cfg, z, yy)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


# ------------------------------------------------------------------------------------------------
# by_batch: the batch maximum comes from the kernels (CPU and CUDA), not from aux[1].
# ------------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("reweight", REWEIGHTS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_by_batch_is_computed_in_the_kernels(reweight):
    cfg = dict(reweight, weight_norm="by_batch")
    threads = torch.get_num_threads()
    try:
        for c, n in ((80, 37), (40000, 3)):
            for soft in (False, True):
                z, y = _inputs(n, c, seed=c, soft=soft)
                ref = _reference(c, cfg, z, y)
                results = []
                for n_threads in (1, 2, 3):
                    torch.set_num_threads(n_threads)
                    mod = dk.DistributionBalancedLoss(_stats(c), backend="cpu", **cfg)
                    zz = z.clone().requires_grad_()
                    loss = mod(zz, y)
                    loss.backward()
                    results.append((loss.detach(), zz.grad))
                    assert rel_err(loss.detach(), ref[0]) <= TOL and rel_err(zz.grad, ref[1]) <= TOL, (c, soft)
                assert all(torch.equal(r[0], results[0][0]) and torch.equal(r[1], results[0][1]) for r in results)
                if c <= 4096:
                    _check_emulated(c, cfg, z, y, aux_batch=123.0)
    finally:
        torch.set_num_threads(threads)


@needs_ext
def test_cpu_op_ignores_aux_batch_max():
    z, y = _inputs(16, 80, soft=True)
    mod = dk.DistributionBalancedLoss(_stats(80), backend="cpu", weight_norm="by_batch", reweight="CB",
                                      cb_mode="average_n")
    params = mod._params(torch.float32)
    outs = []
    for inv_batch in (1.0, 123.0):
        aux = torch.tensor([1.0 / z.numel(), inv_batch])
        outs.append(cpp_ops.fused(*ops.op_args(z, y, None, params, aux, mod.spec, True)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_slot_division_by_multiplication_is_exact():
    # csrc/dbl_plan.h slot_magic: s // vpr == (s * ceil(2^24 / vpr)) >> 24 for every slot s of a
    # packed item (s < 2048) and row width vpr <= 1024 in vectors.
    s = np.arange(2048, dtype=np.int64)[:, None]
    vpr = np.arange(1, 1025, dtype=np.int64)[None, :]
    magic = -((-(1 << 24)) // vpr)
    assert np.array_equal((s * magic) >> 24, s // vpr)


def test_block_division_by_multiplication_is_exact():
    # csrc/dbl_plan.h tile_magic: a block's first item b // tiles == (b * (2^40 // tiles + 1)) >> 40
    # for every block b of the grid (< kMaxBlocks = 4096) and tiles up to 2^28
    b = np.arange(4096, dtype=np.int64)[:, None]
    tiles = np.concatenate([np.arange(1, 4097), np.unique(np.geomspace(4097, 1 << 28, 400).astype(np.int64))])
    magic = (1 << 40) // tiles + 1
    assert np.array_equal((b * magic[None, :]) >> 40, b // tiles[None, :])


@needs_ext
def test_model_geometry_matches_the_plan():
    # benchmarks/kernel_models.py mirrors dbl_plan.h's geometry of the vector paths: rows per item
    # (cut so that a packed item's slots fill whole warps), rounds, items, blocks and threads per row
    model = _static_check().cuda_geometry
    for n, c in ((7, 80), (600, 80), (4096, 80), (513, 1000), (64, 24), (40, 4096), (9, 8192)):
        z, yf = _inputs(n, c, seed=n)
        _, _, plan = _emulate(c, DB_FOCAL, z, yf.clamp(min=0).to(torch.uint8), max_blocks=2 * 3)
        g = model(n, c, sms=2)
        assert plan[4:] == [g["rows"], g["rounds"], g["chunks"], 1, g["items"], g["blocks"], g["G"]], (n, c, plan, g)
        align = 32 // np.gcd(g["vpr"], 32)  # rows cut to whole warps where that loses <= 1/8 of them
        assert g["rows"] * g["vpr"] % 32 == 0 or g["rows"] < align or (g["rows"] % align) * 8 > g["rows"], (n, c, g)


# ------------------------------------------------------------------------------------------------
# The machine code (sm_90): the main paths' instruction budget, read from the SASS.
# ------------------------------------------------------------------------------------------------
def _loops(instructions):
    """Innermost loops (backward branches with no loop inside) as lists of instruction texts."""
    spans = []
    for addr, text in instructions:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) <= addr:
            spans.append((int(m.group(1), 16), addr))
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    return [[t for a, t in instructions if lo <= a <= hi and not t.startswith("NOP")] for lo, hi in inner]


def test_main_paths_fit_the_sass_budget(tmp_path):
    """sm_90, per element of the main paths' steady state (packed or chunked rows): the element
    loop (one vector of 8 per trip) plus the row-statistics loop, at most 46 instructions, at most
    5 MUFU; no spills; 16-byte logits loads and gradient stores. (The budget, 48, also counts the
    per-item work, which static_check's model puts at 6-7 per element at the targets.)"""
    static_check = _static_check()
    nvcc, tool = _nvcc(), static_check.cuobjdump()
    if nvcc is None or tool is None:
        pytest.skip("needs nvcc and cuobjdump")
    flags = static_check.TORCH_NVCC_FLAGS  # torch's, as the extension build passes them
    cubin = tmp_path / "k.cubin"
    proc = subprocess.run([nvcc, "-cubin", "-arch=sm_90", "-O3", "-std=c++17", *flags, "-I", str(ROOT / "csrc"),
                           "-Xptxas", "-v", str(ROOT / "csrc" / "dbl_cuda.cu"), "-o", str(cubin)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spills = re.findall(r"(\d+) bytes spill stores", proc.stdout + proc.stderr)
    assert spills and not any(int(n) for n in spills), "a kernel spills registers"
    sass = subprocess.run([tool, "--dump-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    seen = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name = block.split()[0]
        m = re.search(r"fused_kernel.*?PathOptsILi(\d)ELi(\d)ELi0ELb([01])ELb([01])", name)
        if not m or "Li8E" not in name:
            continue
        ins = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", block)]
        loops = _loops(ins)
        # the element loops store 16-byte vectors (gradient, or loss for reduction "none"); the
        # smaller one is the loop without weight_ij (the other loads it)
        element = min((lp for lp in loops if any("STG.E.128" in t for t in lp)), key=len)
        stats = [lp for lp in loops if any("LDG.E.64" in t for t in lp) and any("STS" in t for t in lp)
                 and not any("MUFU" in t for t in lp)]
        per_element = (len(element) + max((len(lp) for lp in stats), default=0)) / 8
        n_mufu = sum("MUFU" in t for t in element) / 8
        key = (m.group(1), m.group(2), m.group(4), "bf16" if "bf16" in name else "f16" if "f16" in name else "f32")
        seen[key] = per_element
        assert per_element <= 46 and n_mufu <= 5, (key, per_element, n_mufu)
        assert any("LDG.E.128" in t for t in element) and any("STG.E.128" in t for t in element), key
    assert len(seen) == 18, sorted(seen)  # 3 paths x 3 logits dtypes x (with, without gradient)
