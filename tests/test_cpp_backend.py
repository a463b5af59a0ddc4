"""The C++ backend (csrc/): the CPU kernel, and the CUDA kernel where it is built and a GPU is present.

Everything is checked against the reference (and the authors' golden values); the CUDA sources are
also compile-checked with nvcc for sm_80 and sm_90 whether or not a GPU is here.
"""
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dbl_kernels as dk
from dbl_kernels import ops
from dbl_kernels._spec import make_aux

from conftest import GOLDEN_CASES, golden_case, needs_backend, rel_err

try:
    from dbl_kernels import cpp_ops
except ImportError as exc:  # not built: everything but the nvcc check is skipped
    cpp_ops, _MISSING = None, f"C++ extension not built ({exc}); run `pip install --no-build-isolation -e .`"
else:
    _MISSING = ""

ROOT = Path(__file__).resolve().parents[1]
needs_ext = needs_backend("cpu", cpp_ops is not None, _MISSING)
DEVICES = ["cpu"] + (["cuda"] if cpp_ops is not None and cpp_ops.has_cuda() and torch.cuda.is_available() else [])
TOL = 1e-5  # fp32, relative (loss) and relative by norm (gradient), as for the golden values

REWEIGHTS = [dict(reweight="rebalance"), dict(reweight="CB", cb_mode="by_class"),
             dict(reweight="CB", cb_mode="average_w"), dict(reweight="CB", cb_mode="average_n"),
             dict(reweight="CB", cb_mode="min_n"), dict(reweight="inv"), dict(reweight="sqrt_inv"),
             dict(reweight=None)]
NTRS = [dict(logit_reg=False), dict(logit_reg=True, ntr_bias="official"), dict(logit_reg=True, ntr_bias="paper")]
FOCALS = [dict(focal=False), dict(focal=True, gamma=0.0), dict(focal=True, gamma=0.5), dict(focal=True, gamma=2.0)]


def _stats(c):
    """Long-tailed statistics for c classes (distinct n_j from 1 to ~T/2)."""
    if c == 20:
        return dk.ClassStats.preset("voc-mlt")
    train_num = 5000.0
    counts = np.maximum(np.round(0.5 * train_num * np.arange(1, c + 1, dtype=np.float64) ** -0.8), 1.0)
    return dk.ClassStats.from_counts(np.random.default_rng(c).permutation(counts), train_num=train_num)


def _pair(device, c=20, **cfg):
    """(fused loss on device, reference loss) with the same statistics and config."""
    stats = _stats(c)
    return (dk.DistributionBalancedLoss(stats, backend=device, **cfg),
            dk.DistributionBalancedLoss(stats, backend="reference", **cfg))


def _inputs(n=12, c=20, seed=0, device="cpu", partial=True, soft=False, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * scale
    y = (torch.rand(n, c, generator=g) < 0.25).float()
    if n > 2:
        y[1] = 0  # a row without positives: the CB row modes fall back to the class weight
        y[2, : min(c, 3)] = 1
    if partial:
        y[torch.rand(n, c, generator=g) < 0.1] = -1
    if soft:
        mask = (torch.rand(n, c, generator=g) < 0.3) & (y != -1)
        y[mask] = torch.rand(n, c, generator=g)[mask]
    return z.to(device), y.to(device)


def _run(loss_fn, z, y, weight=None, grad_output=None, **kwargs):
    z = z.detach().requires_grad_()  # keeps the strides (clone() would make z contiguous)
    loss = loss_fn(z, y, weight, **kwargs)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output)
    return loss.detach(), z.grad


def _assert_close(ours, ref, tol=TOL):
    (lo, go), (lr, gr) = ours, ref
    assert lo.shape == lr.shape and lo.dtype == lr.dtype and go.dtype == gr.dtype
    assert rel_err(lo.cpu(), lr.cpu()) <= tol, f"loss {lo} vs reference {lr}"
    assert rel_err(go.cpu(), gr.cpu()) <= tol, "gradient differs from the reference"
    assert torch.isfinite(go).all()


def _check(device, cfg, z, y, weight=None, c=20, tol=TOL, **kwargs):
    ours, ref = _pair(device, c=c, **cfg)
    _assert_close(_run(ours, z, y, weight, **kwargs), _run(ref, z.cpu(), y.cpu(),
                                                           None if weight is None else weight.cpu(), **{
                                                               k: (v.cpu() if torch.is_tensor(v) else v)
                                                               for k, v in kwargs.items()}), tol)


# ------------------------------------------------------------------------------------------------
# Every configuration, golden values, shapes.
# ------------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reweight", REWEIGHTS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_every_configuration_matches_reference(device, reweight):
    z, y = _inputs(device=device)
    for norm, ntr, focal, reduction in itertools.product((None, "by_instance", "by_batch"), NTRS, FOCALS,
                                                         ("mean", "sum", "none")):
        cfg = dict(reweight, weight_norm=norm, reduction=reduction, **ntr, **focal)
        try:
            _check(device, cfg, z, y)
        except AssertionError as err:
            raise AssertionError(f"config {cfg}: {err}") from None


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reweight", REWEIGHTS, ids=lambda r: "-".join(str(v) for v in r.values()))
def test_soft_and_partial_labels(device, reweight):
    z, y = _inputs(device=device, soft=True)
    for focal in FOCALS:
        _check(device, dict(reweight, **focal), z, y)
        _check(device, dict(reweight, weight_norm="by_instance", reduction="none", **focal), z, y)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c["name"] for c in GOLDEN_CASES])
def test_golden_matches_authors_resample_loss(device, case, golden_arrays):
    kwargs, (freq, neg), logits, labels, loss_ref, grad_ref = golden_case(case, golden_arrays)
    loss_fn = dk.ResampleLoss(class_freq=freq, neg_class_freq=neg, backend=device, **kwargs)
    z = logits.to(device).requires_grad_()
    loss = loss_fn(z, labels.to(device))
    loss.backward()
    assert abs(loss.item() - loss_ref) / abs(loss_ref) <= TOL
    assert rel_err(z.grad.cpu(), grad_ref) <= TOL


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", [1, 3, 80, 1000, 4099])
def test_shapes(device, c):
    for n in (1, 7, 64, 513):
        z, y = _inputs(n, c, seed=n + c, device=device)
        for cfg in (dict(), dict(reweight="CB", cb_mode="min_n", weight_norm="by_instance", reduction="sum")):
            _check(device, cfg, z, y, c=c)


@needs_ext
def test_wide_rows_use_column_tiles():
    """Rows wider than one tile (32768 columns on the CPU): statistics first, then tiles."""
    z, y = _inputs(3, 40000, seed=5)
    for cfg in (dict(), dict(reweight="CB", cb_mode="min_n"), dict(reweight="CB", cb_mode="average_n",
                                                                   reduction="none"), dict(reweight="inv")):
        _check("cpu", cfg, z, y, c=40000)


@needs_ext
def test_empty_batch():
    ours, ref = _pair("cpu")
    z, y = torch.zeros(0, 20, requires_grad=True), torch.zeros(0, 20)
    for reduction in ("mean", "sum", "none"):
        a, b = ours(z, y, reduction=reduction), ref(z, y, reduction=reduction)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# Inputs: strides, label dtypes, weights.
# ------------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    z, y = _inputs(9, 20, device=device)
    wide_z = torch.randn(9, 40, device=device)
    wide_z[:, :20] = z
    wide_y = torch.zeros(18, 20, device=device)
    wide_y[::2] = y
    variants = {
        "row stride > C": (wide_z[:, :20], wide_y[::2]),
        "transposed": (z.t().contiguous().t(), y.t().contiguous().t()),
        "expanded rows": (z[:1].expand(9, 20), y[:1].expand(9, 20)),
    }
    for name, (zz, yy) in variants.items():
        assert not zz.is_contiguous()
        for cfg in (dict(), dict(reduction="none", reweight="CB", cb_mode="average_w")):
            _check(device, cfg, zz, yy)
    w = torch.rand(9, 40, device=device)
    for weight in (w[:, ::2], w[:, :20].t().contiguous().t(), torch.rand(20, device=device),
                   torch.rand(9, 1, device=device), torch.tensor(0.7, device=device),
                   torch.rand(20, device=device, dtype=torch.float64)):
        _check(device, dict(), z, y, weight)
        _check(device, dict(reduction="none", focal=False), z, y, weight)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                   torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_label_dtypes(device, dtype):
    z, y = _inputs(16, 80, device=device, partial=dtype.is_signed or dtype.is_floating_point)
    y = y.to(dtype)
    for cfg in (dict(), dict(reweight="CB", cb_mode="min_n", reduction="none")):
        ours, ref = _pair(device, c=80, **cfg)
        _assert_close(_run(ours, z, y), _run(ref, z.cpu(), y.cpu().float()))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_avg_factor(device):
    z, y = _inputs(device=device)
    _check(device, dict(), z, y, avg_factor=37.0)


# ------------------------------------------------------------------------------------------------
# Autograd: grad_output, larger graphs, gradcheck, opcheck, torch.compile.
# ------------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_grad_output_is_applied(device):
    z, y = _inputs(device=device)
    for reduction in ("mean", "sum"):
        go = torch.tensor(3.7, device=device)
        _check(device, dict(reduction=reduction), z, y, grad_output=go)
    go = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(device)
    _check(device, dict(reduction="none"), z, y, grad_output=go)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_loss_inside_a_larger_graph(device):
    z0, y = _inputs(device=device)
    grads = []
    for loss_fn in _pair(device):
        z = z0.detach().clone().requires_grad_()  # on device: the modules stay where they were built
        other = (z.sin() ** 2).sum()
        total = loss_fn(z, y) * 2 + other
        total.backward()
        grads.append((total.detach().cpu(), z.grad.cpu()))
    _assert_close(*grads)


class _Recompute(torch.autograd.Function):
    """The fused loss with a backward that re-runs it: gradcheck differentiates one graph several
    times, which the fused op (one gradient buffer, scaled in place) does not allow."""

    @staticmethod
    def forward(ctx, z, loss_fn, y, weight):
        ctx.save_for_backward(z)
        ctx.args = (loss_fn, y, weight)
        with torch.no_grad():
            return loss_fn(z, y, weight)

    @staticmethod
    def backward(ctx, grad_output):
        (z,) = ctx.saved_tensors
        loss_fn, y, weight = ctx.args
        with torch.enable_grad():
            zz = z.detach().requires_grad_()
            (g,) = torch.autograd.grad(loss_fn(zz, y, weight), zz, grad_output)
        return g, None, None, None


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", [dict(), dict(gamma=0.5), dict(reweight="CB", cb_mode="min_n", weight_norm="by_instance"),
                                 dict(reduction="none", reweight="sqrt_inv", weight_norm="by_batch"),
                                 dict(focal=False, logit_reg=False, reweight="inv", reduction="sum")],
                         ids=["default", "gamma0.5", "cb-min_n", "none", "plain"])
def test_gradcheck_fp64(device, cfg):
    loss_fn = dk.DistributionBalancedLoss(_stats(20), backend=device, **cfg)
    z, y = _inputs(5, 20, device=device, soft=True, scale=2.0)
    z = z.double().requires_grad_()
    weight = torch.rand(20, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda t: _Recompute.apply(t, loss_fn, y, weight), (z,), eps=1e-6, atol=1e-7)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    loss_fn = dk.DistributionBalancedLoss(_stats(20), backend=device, reduction="none", weight_norm="by_batch")
    z, y = _inputs(6, 20, device=device)
    aux = make_aux(z, y, loss_fn.config, loss_fn.spec, loss_fn.class_freq, loss_fn.stats.train_num)
    params = loss_fn._params(torch.float32, device)
    for weight in (None, torch.rand(20, device=device).expand(6, 20)):
        # Inference (no gradient buffer): every check, the AOT dispatch ones included.
        torch.library.opcheck(cpp_ops.fused, ops.op_args(z, y, weight, params, aux, loss_fn.spec, False))
        # With a gradient: the AOT checks make the op's gradient output a graph output, which its
        # own backward then scales in place; the loss module discards that output (see test_compile).
        torch.library.opcheck(cpp_ops.fused,
                              ops.op_args(z.clone().requires_grad_(), y, weight, params, aux, loss_fn.spec, True),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_ext
@pytest.mark.parametrize("cfg", [dict(), dict(reduction="none", reweight="CB", cb_mode="min_n", gamma=0.5)])
def test_compile_fullgraph_equals_eager(cfg):
    torch._dynamo.reset()
    loss_fn = dk.DistributionBalancedLoss(_stats(20), backend="cpu", validate_labels=False, **cfg)
    compiled = torch.compile(loss_fn, fullgraph=True)
    z, y = _inputs()
    weight = torch.rand(20)
    go = torch.rand(z.shape) if cfg.get("reduction") == "none" else torch.tensor(1.3)
    eager = _run(loss_fn, z, y, weight, go)
    for _ in range(2):  # the second call runs the cached graph
        got = _run(compiled, z, y, weight, go)
        assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])


# ------------------------------------------------------------------------------------------------
# Dtypes and numerics.
# ------------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_reference_error(device, dtype):
    z, y = _inputs(64, 80, device=device, scale=4.0)
    z = z.to(dtype)
    for cfg in (dict(), dict(reduction="none", gamma=0.5, reweight="CB", cb_mode="average_n")):
        ours, ref = _pair(device, c=80, **cfg)
        exact = _run(ref, z.cpu().double(), y.cpu())
        got, base = _run(ours, z, y), _run(ref, z.cpu(), y.cpu())
        assert got[0].dtype == base[0].dtype == torch.float32 and got[1].dtype == dtype
        for i in (0, 1):
            err, ref_err = rel_err(got[i].cpu(), exact[i]), rel_err(base[i], exact[i])
            assert err <= max(1.5 * ref_err, 1e-6), (i, err, ref_err)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_saturated_logits_keep_gradients_finite(device):
    z, y = _inputs(8, 20, device=device, partial=False)
    z = z.sign() * torch.tensor([20.0, 100.0, 1e4, 1e30], device=device).repeat(5)[:20]
    for gamma in (0.5, 2.0, 0.1):
        for cfg in (dict(gamma=gamma), dict(gamma=gamma, logit_reg=False, reduction="none")):
            ours, ref = _pair(device, **cfg)
            loss, grad = _run(ours, z, y)
            assert torch.isfinite(grad).all() and torch.isfinite(loss).all()
            _assert_close((loss, grad), _run(ref, z.cpu(), y.cpu()))


@needs_ext
def test_every_cpu_vector_isa_matches_reference():
    """Baseline x86-64, AVX2 and AVX-512 builds of the loop (whichever this CPU can run)."""
    best = torch.ops.dbl._cpu_isa(-1)
    z, y = _inputs(64, 300, soft=True)
    try:
        for isa in range(best + 1):
            assert torch.ops.dbl._cpu_isa(isa) == isa
            for cfg in (dict(), dict(gamma=0.5, reduction="none"), dict(reweight="CB", cb_mode="min_n")):
                _check("cpu", cfg, z, y, c=300)
    finally:
        torch.ops.dbl._cpu_isa(best)


def _ulp_error(got, exact):
    exact32 = exact.astype(np.float32)
    spacing = np.spacing(np.abs(exact32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


@needs_ext
def test_elementary_functions_within_two_ulp():
    """The fp32 polynomials of dbl_math.h on 1M points of each range the loss uses (offline, every
    7th fp32 input of these ranges gave at most 1.73 ulp)."""
    rng = np.random.default_rng(0)
    cases = {
        0: (np.concatenate([rng.uniform(-86.6, 88.7, 500_000), -np.exp(rng.uniform(-30, 4.4, 500_000))]), np.exp),
        1: (np.concatenate([rng.uniform(-87, 1, 500_000), -np.exp(rng.uniform(-30, 4.4, 500_000))]), np.expm1),
        2: (np.concatenate([rng.uniform(0, 1, 500_000), np.exp(rng.uniform(-80, 0, 500_000))]), np.log1p),
        3: (np.concatenate([rng.uniform(1e-6, 1, 500_000), np.exp(rng.uniform(-100, 0, 500_000))]), np.log),
        # exp2 and log2: the CPU's exact stand-ins for the GPU's ex2/lg2.approx (see dbl_math.h)
        4: (np.concatenate([rng.uniform(-125, 128, 500_000), -np.exp(rng.uniform(-30, 4.8, 500_000))]), np.exp2),
        5: (np.concatenate([rng.uniform(1e-6, 2, 500_000), np.exp(rng.uniform(-86, 0, 500_000))]), np.log2),
    }
    for fn, (x, ref) in cases.items():
        x32 = x.astype(np.float32)
        got = torch.ops.dbl._cpu_math(torch.from_numpy(x32), fn).numpy()
        exact = ref(x32.astype(np.float64))
        # log2 is the log1p fit times log2(e): one more rounding (2.2 ulp at most, near sqrt(2))
        assert _ulp_error(got, exact).max() <= (2.5 if fn == 5 else 2.0), fn
    special = torch.ops.dbl._cpu_math(torch.tensor([-np.inf, np.inf, np.nan, -200.0]), 0)
    assert special[0] == 0 and special[1] == np.inf and special[2].isnan() and special[3] == 0


# ------------------------------------------------------------------------------------------------
# Side effects, memory, determinism.
# ------------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_inputs_are_not_mutated(device):
    loss_fn = dk.DistributionBalancedLoss(_stats(20), backend=device)
    z, y = _inputs(device=device)
    z.requires_grad_()
    w = torch.rand(20, device=device)
    before = [(t, t.detach().clone(), t._version) for t in (z, y, w, loss_fn.class_params, loss_fn.class_freq)]
    loss_fn(z, y, w).backward()
    loss_fn(z, y, w, reduction="none").backward(torch.full((12, 20), 2.0, device=device))
    for t, copy, version in before:
        assert torch.equal(t.detach(), copy) and t._version == version


@needs_ext
def test_no_gradient_buffer_without_grad(monkeypatch):
    seen = []
    real = cpp_ops.fused

    def spy(*args):
        loss, grad = real(*args)
        seen.append((args[ops.OP_ARG_NAMES.index("need_grad")], grad.numel()))
        return loss, grad

    monkeypatch.setattr(cpp_ops, "fused", spy)
    loss_fn = dk.DistributionBalancedLoss(_stats(20), backend="cpu")
    z, y = _inputs()
    with torch.no_grad():
        loss_fn(z.requires_grad_(), y)
    loss_fn(z.detach(), y)
    loss_fn(z.detach().requires_grad_(), y)
    assert seen == [(False, 0), (False, 0), (True, z.numel())]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_across_runs_and_thread_counts(device):
    z, y = _inputs(513, 1000, device=device, soft=True)
    results = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2, 2, 1):
            torch.set_num_threads(n_threads)
            for cfg in (dict(), dict(reweight="CB", cb_mode="average_n", reduction="sum")):
                loss_fn = dk.DistributionBalancedLoss(_stats(1000), backend=device, **cfg)
                results.append(_run(loss_fn, z, y))
    finally:
        torch.set_num_threads(threads)
    for i, (loss, grad) in enumerate(results):
        first = results[i % 2]
        assert torch.equal(loss, first[0]) and torch.equal(grad, first[1])


# ------------------------------------------------------------------------------------------------
# The CPU element loop really vectorises (a branch or a libm call in dbl_math.h would stop it).
# ------------------------------------------------------------------------------------------------
def test_cpu_element_loop_vectorises(tmp_path):
    import platform
    import sysconfig

    from torch.utils import cpp_extension

    cxx = shutil.which("g++")
    if cxx is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs g++ on x86-64 (the -fopt-info report is g++'s)")
    src = ROOT / "csrc" / "dbl_cpu.cpp"
    loops = ROOT / "csrc" / "dbl_cpu_loops.h"  # the loop bodies, compiled as part of dbl_cpu.cpp
    lines = loops.read_text().splitlines()
    loop = next(i for i, line in enumerate(lines) if "const T f = (y[j] != T(-1)" in line) - 1  # 0-based: the for is 2 lines above
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    # The flags of setup.py, plus the vectoriser's report.
    cmd = [cxx, "-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-fPIC", *includes,
           f"-I{ROOT / 'csrc'}", "-c", str(src), "-o", str(tmp_path / "dbl_cpu.o"), "-fopt-info-vec-optimized"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = [l for l in out.stderr.splitlines() if f"dbl_cpu_loops.h:{loop}:" in l and "loop vectorized" in l]
    # 24 fp32 variants of the loop (reweight x focal x labels x grad), each in three ISA builds.
    for width in ("64 byte", "32 byte", "16 byte"):
        assert sum(width in l for l in report) >= 24, (width, report)


# ------------------------------------------------------------------------------------------------
# The CUDA sources build with nvcc alone (no torch headers), for sm_80 and sm_90.
# ------------------------------------------------------------------------------------------------
def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else None


def test_cuda_sources_compile_with_nvcc(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME): the CUDA sources were not compile-checked")
    sources = sorted((ROOT / "csrc").glob("*.cu"))
    assert sources, "no CUDA sources under csrc/"
    for src in sources:
        included = re.findall(r'#include\s+[<"]([^>"]+)[>"]', src.read_text())
        assert not any(h.split("/")[0] in ("torch", "ATen", "c10") for h in included), (src, included)
    # the flags torch's CUDAExtension adds: no implicit half/bfloat16 conversions or operators
    torch_flags = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                   "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]
    jobs = [subprocess.Popen([nvcc, "-c", "-std=c++17", "-O3", *torch_flags, f"-arch={arch}", "-I", str(ROOT / "csrc"), str(src),
                              "-Xptxas", "-v", "-o", str(tmp_path / f"{src.stem}_{arch}.o")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for src in sources for arch in ("sm_80", "sm_90")]
    for job in jobs:
        out, _ = job.communicate(timeout=900)
        assert job.returncode == 0, out
        assert "warning" not in out.lower(), out
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", out)]
        assert spills and not any(spills), "a kernel spills registers"  # ptxas -v, every kernel


def _torch_loads_libgomp():
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not sys.platform.startswith("linux") or shutil.which("ldd") is None or not lib.exists():
        return False
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=False).stdout
    return any(line.split()[:2] == ["libgomp.so.1", "=>"] for line in out.splitlines() if line.strip())


@needs_ext
def test_cpu_kernel_runs_on_torch_threads():
    # at::parallel_for is header code: an extension built without OpenMP runs it on one thread,
    # silently ignoring torch.set_num_threads. setup.py adds it where torch loads g++'s libgomp.
    if _torch_loads_libgomp():
        assert torch.ops.dbl._cpu_built_with_openmp()
    if not torch.ops.dbl._cpu_built_with_openmp():
        pytest.skip("extension built without OpenMP (torch here does not load libgomp.so.1)")
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.ops.dbl._cpu_parallel_threads() == n
    finally:
        torch.set_num_threads(threads)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64,
                                   torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("validate", [False, None])
def test_cpu_op_counts_known_labels_itself(dtype, validate):
    # A mean over partial labels: the CPU op counts the labels != -1 in its own pass; no torch
    # counting pass (ne + sum over N x C) runs before it.
    z, y = _inputs(64, 80, partial=True)
    y = y.to(dtype)
    assert bool((y == -1).any())
    stats = _stats(80)
    loss_fn = dk.DistributionBalancedLoss(stats, backend="cpu", validate_labels=validate)
    ref_fn = dk.DistributionBalancedLoss(stats, backend="reference", validate_labels=validate)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss, grad = _run(loss_fn, z, y)
    if validate is False:  # (the label check itself compares values)
        names = {e.key for e in prof.key_averages()}
        assert not names & {"aten::ne", "aten::eq", "aten::sum", "aten::count_nonzero"}, names
    _assert_close((loss, grad), _run(ref_fn, z, y))


@needs_ext
def test_cpu_op_mean_over_no_known_label_is_zero_like_reference():
    z, y = _inputs(7, 80)
    y = torch.full_like(y, -1.0)
    for backend in ("cpu", "reference"):
        loss, grad = _run(dk.DistributionBalancedLoss(_stats(80), backend=backend), z, y)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


@needs_ext
@pytest.mark.parametrize("avg_factor", [-3.0, -1.0, 2.5])
def test_cpu_avg_factor_of_any_sign_matches_reference(avg_factor):
    # avg_factor divides the summed loss as given; no value of it means "count the labels".
    z, y = _inputs(16, 80)
    stats = _stats(80)
    ours = _run(dk.DistributionBalancedLoss(stats, backend="cpu"), z, y, avg_factor=avg_factor)
    _assert_close(ours, _run(dk.DistributionBalancedLoss(stats, backend="reference"), z, y, avg_factor=avg_factor))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int64, torch.bfloat16, torch.float32])
def test_op_counted_mean_counts_per_label_dtype(dtype):
    # reduction 3 at the op: the mean over labels != -1 counted by the CPU op (bool/uint8: all).
    from dbl_kernels import ops
    from dbl_kernels._spec import MODE_REDUCTION, REDUCTION_MEAN, REDUCTION_MEAN_COUNTED, counted_spec

    z, y = _inputs(9, 80, partial=dtype not in (torch.bool, torch.uint8))
    y = y.to(dtype)
    loss_fn = dk.DistributionBalancedLoss(_stats(80), backend="cpu")
    params = loss_fn._params(torch.float32)
    known = (y != -1).sum() if dtype not in (torch.bool, torch.uint8) else torch.tensor(y.numel())
    plain = ops.op_args(z, y, None, params, torch.stack([1.0 / known.float(), torch.tensor(1.0)]),
                        loss_fn.spec, True)
    counted = ops.op_args(z, y, None, params, torch.tensor([123.0, 1.0]), counted_spec(loss_fn.spec), True)
    modes = ops.OP_ARG_NAMES.index("modes")
    assert plain[modes][MODE_REDUCTION] == REDUCTION_MEAN and counted[modes][MODE_REDUCTION] == REDUCTION_MEAN_COUNTED
    (l1, g1), (l2, g2) = cpp_ops.fused(*plain), cpp_ops.fused(*counted)  # aux[0] = 123 is ignored
    assert torch.equal(l1, l2) and torch.equal(g1, g2)


@needs_ext
def test_jit_trace_of_the_loss_saves_and_reloads(tmp_path):
    z, y = _inputs(8, 80)
    loss_fn = dk.DistributionBalancedLoss(_stats(80), backend="cpu")
    traced = torch.jit.trace(lambda t: loss_fn(t, y), (z.clone().requires_grad_(),), check_trace=False)
    path = tmp_path / "loss.pt"
    torch.jit.save(traced, str(path))
    reloaded = torch.jit.load(str(path))
    torch.testing.assert_close(reloaded(z), loss_fn(z, y))
