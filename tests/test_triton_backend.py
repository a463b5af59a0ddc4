"""The Triton backend against the reference and the authors' golden values.

Runs on CUDA tensors, or on CPU tensors through the interpreter when TRITON_INTERPRET=1 is set
before triton is imported (shapes stay small: the interpreter is slow).
"""
import itertools
import os

import numpy as np
import pytest
import torch

from conftest import GOLDEN_CASES, backend_missing, golden_case, rel_err

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not _INTERPRET and not torch.cuda.is_available():
    backend_missing("triton", "the triton backend needs CUDA or TRITON_INTERPRET=1")
try:
    import triton  # noqa: F401
except ImportError as exc:
    backend_missing("triton", f"triton is not importable ({exc})")

from dbl_kernels import ClassStats, DistributionBalancedLoss, ResampleLoss, ops  # noqa: E402
from dbl_kernels import triton_kernel as tk  # noqa: E402
from dbl_kernels._spec import class_params, kernel_spec, make_aux  # noqa: E402

if not tk.usable():
    backend_missing("triton", "triton backend not usable here")

# the interpreter evaluates masked lanes too (1/0, exp overflow): numpy warns, results are selected away
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DEV = "cpu" if _INTERPRET else "cuda"
COCO = ClassStats.preset("coco-mlt")
TOL = 1e-5


@pytest.fixture(autouse=True)
def _fixed_tiles(request):
    """On a GPU, one tile per specialisation instead of autotuning each of the hundreds of
    configurations below (test_autotuned_paths covers the autotuner)."""
    if _INTERPRET or "autotuned" in request.node.name:
        yield
    else:
        with tk._force_tiles(row_tile_elems=1024, loop_block_c=1024):
            yield


def _stats(num_classes, seed=0):
    rng = np.random.default_rng(seed)
    return ClassStats(rng.integers(1, 900, num_classes).astype(float), train_num=1000.0)


def _inputs(n, c, labels="uint8", seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    hard = torch.rand(n, c, generator=g) < 0.15
    hard[0] = False  # a row without positives: r_i = 0 (rebalance) and the CB fallback
    if labels == "soft":
        y = torch.where(hard, torch.rand(n, c, generator=g), torch.rand(n, c, generator=g) * 0.2)
        y[0, :] = 0.0
        y[torch.rand(n, c, generator=g) < 0.1] = -1.0
    elif labels == "partial":
        y = hard.to(torch.int8)
        y[torch.rand(n, c, generator=g) < 0.2] = -1
    else:
        y = hard.to(getattr(torch, labels))
    return z.to(DEV), y.to(DEV)


def _run(backend, stats, z, y, weight=None, grad_output=None, dtype=torch.float32, **cfg):
    """(loss, d loss / d logits) through the public API, on a fresh leaf."""
    leaf = z.detach().to(dtype).requires_grad_(True)
    loss = DistributionBalancedLoss(stats, backend=backend, **cfg)(leaf, y, weight)
    go = torch.ones_like(loss) if grad_output is None else grad_output
    (grad,) = torch.autograd.grad(loss, leaf, go)
    return loss.detach(), grad


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().clamp_min(1e-30)
    return max(float((a - b).norm() / b.norm().clamp_min(1e-30)), float((a - b).abs().max() / scale))


def _check(stats, z, y, weight=None, tol=TOL, **cfg):
    lt, gt = _run("triton", stats, z, y, weight, **cfg)
    lr, gr = _run("reference", stats, z, y, weight, **cfg)
    assert lt.dtype == lr.dtype and lt.shape == lr.shape
    assert gt.dtype == gr.dtype and gt.shape == gr.shape
    assert torch.isfinite(lt).all() and torch.isfinite(gt).all()
    assert _rel(lt, lr) <= tol, f"loss {cfg}: {_rel(lt, lr):.3g}"
    assert _rel(gt, gr) <= tol, f"grad {cfg}: {_rel(gt, gr):.3g}"
    return lt, gt


REWEIGHTS = [dict(reweight="rebalance"), dict(reweight="CB", cb_mode="by_class"),
             dict(reweight="CB", cb_mode="average_w"), dict(reweight="CB", cb_mode="average_n"),
             dict(reweight="CB", cb_mode="min_n"), dict(reweight="inv"), dict(reweight="sqrt_inv"),
             dict(reweight=None)]
NORMS = [None, "by_instance", "by_batch"]
NTRS = [dict(logit_reg=False), dict(logit_reg=True, ntr_bias="official"),
        dict(logit_reg=True, ntr_bias="paper", neg_scale=5.0, init_bias=0.1)]
# every focal setting, reduction and label kind, spread over the sub-runs of each case
SUBRUNS = [(dict(focal=False), "mean", "uint8", False), (dict(focal=True, gamma=0.0), "sum", "partial", True),
           (dict(focal=True, gamma=0.5), "none", "soft", False), (dict(focal=True, gamma=2.0), "mean", "partial", True),
           (dict(focal=True, gamma=2.0), "none", "bool", False)]


def _case_id(rw, norm, ntr):
    return "-".join([str(rw.get("cb_mode", rw["reweight"])), str(norm), ntr.get("ntr_bias", "nontr")])


@pytest.mark.parametrize("rw,norm,ntr", [pytest.param(*p, id=_case_id(*p))
                                         for p in itertools.product(REWEIGHTS, NORMS, NTRS)])
def test_configurations(rw, norm, ntr):
    for i, (focal, reduction, labels, use_weight) in enumerate(SUBRUNS):
        z, y = _inputs(12, 80, labels, seed=i)
        weight = torch.rand(12, 80, device=DEV) + 0.5 if use_weight else None
        _check(COCO, z, y, weight, weight_norm=norm, reduction=reduction, **rw, **ntr, **focal)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_focal_and_reductions(gamma, reduction):
    z, y = _inputs(10, 80, "partial", seed=3)
    _check(COCO, z, y, reduction=reduction, gamma=gamma)


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda c: c["name"])
def test_golden(case, golden_arrays):
    kwargs, (freq, neg), logits, labels, want_loss, want_grad = golden_case(case, golden_arrays)
    logits = logits.to(DEV).requires_grad_(True)
    loss = ResampleLoss(class_freq=freq, neg_class_freq=neg, backend="triton", **kwargs)(logits, labels.to(DEV))
    loss.backward()
    assert abs(float(loss.detach()) - want_loss) <= TOL * abs(want_loss)
    assert rel_err(logits.grad.cpu(), want_grad) <= TOL


@pytest.mark.parametrize("num_classes", [1, 3, 80, 257])
def test_class_counts(num_classes):
    stats = _stats(num_classes, seed=num_classes)
    for cfg, labels in [(dict(), "uint8"), (dict(reweight="CB", cb_mode="average_n", weight_norm="by_instance",
                                                 reduction="none"), "partial"),
                        (dict(reweight="CB", cb_mode="min_n", gamma=0.5, reduction="sum"), "soft")]:
        z, y = _inputs(9, num_classes, labels, seed=1)
        _check(stats, z, y, **cfg)


def test_noncontiguous_inputs():
    z, y = _inputs(12, 80, "partial", seed=5)
    wide = torch.randn(12, 100, device=DEV)
    wide[:, 7:87] = z.float()
    z_view = wide[:, 7:87]                                   # row stride 100 (kept: already float32)
    y_wide = torch.zeros(12, 96, dtype=y.dtype, device=DEV)
    y_wide[:, 16:] = y
    y_view = y_wide[:, 16:]                                  # row stride 96
    y_t = y.t().contiguous().t()                             # column stride 12 (the loss copies it)
    assert z_view.stride() == (100, 1) and y_view.stride() == (96, 1) and y_t.stride(1) != 1
    for labels in (y_view, y_t):
        for weight in [torch.rand(80, device=DEV) + 0.5,         # per class: row stride 0
                       torch.rand(12, 1, device=DEV) + 0.5,      # per row: column stride 0
                       (torch.rand(80, 12, device=DEV) + 0.5).t()]:  # transposed
            for reduction in ["mean", "none"]:
                _check(COCO, z_view, labels, weight, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                   torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_label_dtypes(dtype):
    z, y = _inputs(8, 80, "uint8", seed=2)
    lt, gt = _run("triton", COCO, z, y.to(dtype))
    lr, gr = _run("reference", COCO, z, y)
    assert _rel(lt, lr) <= TOL and _rel(gt, gr) <= TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits(dtype):
    z, y = _inputs(8, 80, "partial", seed=4)
    z = z.to(dtype)
    lt, gt = _run("triton", COCO, z, y, dtype=dtype)
    lr, gr = _run("reference", COCO, z, y, dtype=dtype)
    assert lt.dtype == torch.float32 and gt.dtype == dtype
    assert _rel(lt, lr) <= TOL
    # both round the same fp32 gradient to half precision: at most one unit in the last place apart
    ulp = 2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7
    assert ((gt.double() - gr.double()).abs() <= ulp * gr.double().abs() + 1e-30).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grad_output_not_one(reduction):
    z, y = _inputs(10, 80, "partial", seed=6)
    shape = (10, 80) if reduction == "none" else ()
    go = (torch.rand(shape, device=DEV, dtype=torch.float64) * 3 - 1).float() if reduction == "none" else \
        torch.tensor(3.7, device=DEV)
    lt, gt = _run("triton", COCO, z, y, grad_output=go, reduction=reduction)
    lr, gr = _run("reference", COCO, z, y, grad_output=go, reduction=reduction)
    assert _rel(lt, lr) <= TOL and _rel(gt, gr) <= TOL


@pytest.mark.parametrize("grad_dtype,go_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                 (torch.float64, torch.float64)])
def test_scale_grad_kernel(grad_dtype, go_dtype):
    grad = torch.randn(3, 5000, device=DEV).to(grad_dtype)
    before = grad.clone()
    tk.scale_grad(grad, torch.ones((), device=DEV, dtype=go_dtype))
    assert torch.equal(grad, before)
    tk.scale_grad(grad, torch.full((1,), 3.7, device=DEV, dtype=go_dtype))
    want = (before.to(go_dtype) * 3.7).to(grad_dtype)
    if _INTERPRET and grad_dtype == torch.bfloat16:  # the interpreter truncates fp32 -> bf16 (GPUs round)
        assert ((grad.double() - want.double()).abs() <= 2.0 ** -7 * want.double().abs()).all()
    else:
        assert torch.equal(grad, want)


def _numeric_check(stats, z, y, directions=3, h=1e-6, **cfg):
    """fp64 gradient check by central differences (a fresh forward per evaluation: the fused ops
    back-propagate each loss once, so torch.autograd.gradcheck's repeated backward does not apply)."""
    g = torch.Generator().manual_seed(0)
    for k in range(directions):
        dz = torch.randn(z.shape, generator=g, dtype=torch.float64).to(DEV)
        v = torch.randn(z.shape if cfg.get("reduction") == "none" else (), generator=g,
                        dtype=torch.float64).to(DEV)
        _, grad = _run("triton", stats, z, y, grad_output=v, dtype=torch.float64, **cfg)
        plus, _ = _run("triton", stats, z + h * dz, y, dtype=torch.float64, **cfg)
        minus, _ = _run("triton", stats, z - h * dz, y, dtype=torch.float64, **cfg)
        numeric = float(((plus - minus) * v).sum() / (2 * h))
        analytic = float((grad.detach() * dz).sum())
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (cfg, k, numeric, analytic)


@pytest.mark.parametrize("cfg,labels", [
    (dict(), "partial"), (dict(gamma=0.5, weight_norm="by_instance", reduction="none"), "soft"),
    (dict(reweight="CB", cb_mode="average_n", weight_norm="by_batch", reduction="sum"), "partial"),
    (dict(reweight="CB", cb_mode="min_n", ntr_bias="paper", gamma=1.0), "soft")])
def test_fp64_gradcheck(cfg, labels):
    stats = _stats(6, seed=11)
    z, y = _inputs(5, 6, labels, seed=8, scale=2.0)
    lt, gt = _run("triton", stats, z, y, dtype=torch.float64, **cfg)
    lr, gr = _run("reference", stats, z, y, dtype=torch.float64, **cfg)
    assert lt.dtype == torch.float64 and gt.dtype == torch.float64
    # the options reach the kernel in float64 (in the interpreter and on a GPU alike)
    assert _rel(lt, lr) <= 1e-12 and _rel(gt, gr) <= 1e-12
    _numeric_check(stats, z, y, **cfg)


def test_no_input_mutation():
    z, y = _inputs(12, 80, "partial", seed=9)
    z = z.float().requires_grad_(True)
    weight = torch.rand(12, 80, device=DEV)
    saved = [t.detach().clone() for t in (z, y, weight)]
    versions = [t._version for t in (z, y, weight)]
    loss_fn = DistributionBalancedLoss(COCO, backend="triton")
    table = loss_fn.class_params.clone()
    loss_fn(z, y, weight).backward()
    for t, s, v in zip((z, y, weight), saved, versions):
        assert torch.equal(t.detach(), s) and t._version == v
    assert torch.equal(loss_fn.class_params, table)


def test_deterministic():
    stats = _stats(257, seed=3)
    z, y = _inputs(24, 257, "partial", seed=10)
    first = _run("triton", stats, z, y)
    for _ in range(2):
        again = _run("triton", stats, z, y)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    with tk._force_tiles(one_tile_max_c=0, loop_block_c=32, split=3, chunk_align=32, stats_block_c=32):
        a, b = _run("triton", stats, z, y), _run("triton", stats, z, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_no_gradient_buffer_without_grad():
    z, y = _inputs(6, 80, "uint8", seed=12)
    z = z.float()
    loss_fn = DistributionBalancedLoss(COCO, backend="triton")
    spec = kernel_spec(class_params(COCO.class_freq, COCO.train_num, loss_fn.config), loss_fn.config)
    aux = make_aux(z, y, loss_fn.config, spec, loss_fn.class_freq, COCO.train_num)
    params = loss_fn.class_params.float().to(DEV)
    loss, grad = tk.fused(*ops.op_args(z, y, None, params, aux, spec, False))
    assert grad.numel() == 0
    loss_g, grad_g = tk.fused(*ops.op_args(z, y, None, params, aux, spec, True))
    assert torch.equal(loss, loss_g) and grad_g.shape == z.shape
    with torch.no_grad():
        assert torch.equal(loss_fn(z.requires_grad_(True), y), loss)


@pytest.mark.parametrize("labels", ["uint8", "soft"])
def test_saturated_focal_gradients_finite(labels):
    z, y = _inputs(6, 80, labels, seed=13)
    z = torch.sign(z) * 60.0
    z[1] = 1e4 * torch.sign(z[1])
    for gamma in (0.5, 2.0):
        for logit_reg in (False, True):
            lt, gt = _check(COCO, z, y, gamma=gamma, logit_reg=logit_reg, reduction="sum")
            assert torch.isfinite(gt).all() and torch.isfinite(lt).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    z, y = _inputs(1, 80, "uint8")
    lt, gt = _run("triton", COCO, z[:0], y[:0], reduction=reduction)
    lr, gr = _run("reference", COCO, z[:0], y[:0], reduction=reduction)
    assert lt.shape == lr.shape and gt.shape == gr.shape
    assert torch.equal(lt.isnan(), lr.isnan()) and torch.equal(lt.nan_to_num(), lr.nan_to_num())


def test_opcheck():
    z, y = _inputs(6, 80, "partial", seed=17)
    z = z.float()
    loss_fn = DistributionBalancedLoss(COCO, backend="triton", reduction="none", weight_norm="by_batch")
    aux = make_aux(z, y, loss_fn.config, loss_fn.spec, loss_fn.class_freq, COCO.train_num)
    params = loss_fn.class_params.float().to(DEV)
    # the interpreter launches kernels eagerly, outside the fake/functional tracing the AOT checks use
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    inference_utils = dict(test_utils=utils) if _INTERPRET else {}  # on a GPU: every check
    for weight in (None, torch.rand(80, device=DEV).expand(6, 80)):
        torch.library.opcheck(tk.fused, ops.op_args(z, y, weight, params, aux, loss_fn.spec, False),
                              **inference_utils)
        torch.library.opcheck(tk.fused, ops.op_args(z.clone().requires_grad_(), y, weight, params, aux,
                                                    loss_fn.spec, True), test_utils=utils)


@pytest.mark.skipif(_INTERPRET, reason="autotuning runs on a GPU only")
@pytest.mark.parametrize("num_classes", [80, 100, 20000])
def test_autotuned_paths(num_classes):
    stats = _stats(num_classes, seed=num_classes)
    z, y = _inputs(64, num_classes, "uint8", seed=15)
    for cfg in (dict(), dict(reweight="CB", cb_mode="average_n", reduction="none")):
        _check(stats, z.to(torch.bfloat16), y, tol=1e-2, dtype=torch.bfloat16, **cfg)
        _check(stats, z, y, **cfg)
    _check(stats, z, y, tol=1e-12, dtype=torch.float64)  # fp64 had no tile config to autotune (H100 run 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_shape_has_tile_configs(dtype):
    """The autotune set is never empty (triton.autotune would then launch one config without the
    tile constexprs), and each config keeps to the per-thread and per-block limits of its dtype."""
    from dbl_kernels.triton_kernel import tuning

    for light in (16, 8, 4):
        for n_cols in (1, 7, 16, 80, 100, 1000, tuning.one_tile_max_c(dtype)):
            configs = tuning.row_configs(n_cols, dtype, True, light) + tuning.row_configs(n_cols, dtype, False, light)
            assert configs, (dtype, light, n_cols)
            for meta, warps in configs:
                assert 4 <= warps <= tuning.max_warps(dtype)
                assert meta["BLOCK_N"] * meta["BLOCK_C"] <= warps * 32 * min(tuning.per_thread(dtype), light)
        assert tuning.loop_configs(dtype, light)


@pytest.mark.skipif(not _INTERPRET, reason="the interpreter runs the autotune set's first config")
@pytest.mark.parametrize("num_classes", [80, 100])
def test_fp64_autotune_config_against_the_reference(num_classes):
    """The fp64 narrow-row config the autotuner gets on a GPU (16 rows x 16 columns unrolled at
    C = 80; at C = 100 the column loop with its masked tail), run by the interpreter: within fp64
    rounding of the reference, with and without a weight tensor."""
    from dbl_kernels.triton_kernel import tuning

    stats = _stats(num_classes, seed=7)
    z, y = _inputs(37, num_classes, "partial", seed=32)
    weight = torch.rand(37, num_classes, dtype=torch.float64) + 0.5
    with tk._force_tiles(row_tile_elems=None):
        assert tuning.tiles.row_tile_elems is None
        for w, cfg in ((None, dict()), (weight, dict(reweight="CB", cb_mode="average_n", reduction="none"))):
            _check(stats, z, y, w, tol=1e-12, dtype=torch.float64, **cfg)


def test_tile_plans_are_cached_per_tiles():
    """The tile plan of a shape is built once (it costs more host time than a launch); forced test
    tiles get plans of their own."""
    from dbl_kernels.triton_kernel import launcher, tuning

    z, y = _inputs(8, 80, "uint8", seed=30)
    loss_fn = DistributionBalancedLoss(COCO, backend="triton", validate_labels=False)
    loss_fn(z.float().to(DEV), y.to(DEV))
    before = launcher._plan.cache_info()
    loss_fn(z.float().to(DEV), y.to(DEV))
    after = launcher._plan.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    with tk._force_tiles(row_tile_elems=128):
        plan = launcher._plan(80, torch.float32, True, 16, tuning.tiles)
        assert plan.meta == dict(BLOCK_N=8, BLOCK_C=16) and plan.configs is None


def test_eager_calls_skip_the_dispatcher():
    """Eager calls run the op's function directly (the dispatcher's trip to a Python kernel cost
    more host time than the rest of a COCO-sized call); the result is the op's to the bit."""
    from torch.profiler import profile

    z, y = _inputs(16, 80, "uint8", seed=31)
    loss_fn = DistributionBalancedLoss(COCO, backend="triton", validate_labels=False)
    leaf = z.float().to(DEV).requires_grad_(True)
    loss_fn(leaf, y.to(DEV)).backward()
    with profile() as prof:
        leaf.grad = None
        loss = loss_fn(leaf, y.to(DEV))
        loss.backward()
    assert not [e.name for e in prof.events() if e.name.startswith("dbl::fused")]
    params = loss_fn.class_params.float().to(DEV)
    aux = make_aux(leaf, y.to(DEV), loss_fn.config, loss_fn.spec, loss_fn.class_freq, COCO.train_num)
    want, want_grad = tk.fused(*ops.op_args(leaf.detach(), y.to(DEV), None, params, aux, loss_fn.spec, True))
    assert torch.equal(loss.detach(), want) and torch.equal(leaf.grad, want_grad)


@pytest.mark.skipif(_INTERPRET, reason="the interpreter runs kernels eagerly, so torch.compile cannot trace them")
def test_torch_compile():
    z, y = _inputs(32, 80, "uint8", seed=16)
    z = z.float().requires_grad_(True)
    loss_fn = DistributionBalancedLoss(COCO, backend="triton")
    params = loss_fn.class_params.float().to(DEV)
    aux = make_aux(z, y, loss_fn.config, loss_fn.spec, loss_fn.class_freq, COCO.train_num)

    def f(z, y, aux):
        return tk.fused(*ops.op_args(z, y, None, params, aux, loss_fn.spec, True))[0]

    want = f(z, y, aux)
    (want_grad,) = torch.autograd.grad(want * 3.0, z)
    got = torch.compile(f, fullgraph=True)(z, y, aux)
    (got_grad,) = torch.autograd.grad(got * 3.0, z)
    assert _rel(got, want) <= TOL and _rel(got_grad, want_grad) <= TOL


# ---------------------------------------------------------------------------------------------
# Host path: launches and allocations per call.
# ---------------------------------------------------------------------------------------------
def _allocations(prof):
    """Tensors allocated inside a profiled region: ops that allocated memory themselves."""
    return [(e.name, e.self_cpu_memory_usage or getattr(e, "self_device_memory_usage", 0)) for e in prof.events()
            if e.name != "[memory]" and ((e.self_cpu_memory_usage or 0) > 0
                                         or (getattr(e, "self_device_memory_usage", 0) or 0) > 0)]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_launches_and_allocations(monkeypatch, reduction):
    """Steady state of an eager forward + backward (a mean whose count the host knows): one launch of
    the fused kernel (the partial sums reduced inside it) plus, on CUDA, the device-side gradient
    scale; two allocations, the gradient and the loss (workspace, class table and compiled kernels
    are cached)."""
    from torch.profiler import ProfilerActivity, profile

    from dbl_kernels.triton_kernel import launcher

    z, y = _inputs(16, 80, "uint8", seed=21)
    loss_fn = DistributionBalancedLoss(COCO, backend="triton", reduction=reduction, validate_labels=False)
    launched = []
    real_launch = launcher.launch
    monkeypatch.setattr(launcher, "launch", lambda kernel, *a, **k: (launched.append(kernel.__name__),
                                                                      real_launch(kernel, *a, **k))[1])
    results = []
    for _ in range(3):
        launched.clear()
        leaf = z.detach().float().requires_grad_(True)
        go = torch.ones((), device=DEV)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
        with profile(activities=activities, profile_memory=True) as prof:
            loss = loss_fn(leaf, y)
            loss.backward(go)
        results.append((loss.detach().clone(), leaf.grad.clone()))
    assert launched == ["_fused_kernel"] + (["_scale_kernel"] if DEV == "cuda" else [])
    sizes = sorted(size for _, size in _allocations(prof))
    assert len(sizes) == 2 and sizes[1] == z.numel() * 4, _allocations(prof)  # the loss, the fp32 gradient
    for loss, grad in results[1:]:  # and every call's result is the same to the bit
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
    lr, gr = _run("reference", COCO, z, y, reduction=reduction)
    assert _rel(results[0][0], lr) <= TOL and _rel(results[0][1], gr) <= TOL


def test_workspace_reused_and_reset():
    """The partial-sum workspace is one buffer per device (and stream) across calls, its ticket
    counter back at 0 after each call, on every path that reduces."""
    from dbl_kernels.triton_kernel import launcher

    z, y = _inputs(37, 80, "partial", seed=22)
    _check(COCO, z, y)
    buffers = {k: (ws.partials.data_ptr(), ws.sync.data_ptr()) for k, ws in launcher._WORKSPACES.items()}
    with tk._force_tiles(row_tile_elems=64, row_block_c=16, programs=3):
        _check(COCO, z, y, reduction="sum")
    _check(COCO, z, y, reweight="CB", weight_norm="by_batch")
    for key, ws in launcher._WORKSPACES.items():
        assert int(ws.sync[0]) == 0
        if key in buffers:
            assert (ws.partials.data_ptr(), ws.sync.data_ptr()) == buffers[key]


# ---------------------------------------------------------------------------------------------
# weight_norm="by_batch": the batch max of the re-weighting, made in the kernels' statistics pass.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rw", REWEIGHTS, ids=lambda rw: str(rw.get("cb_mode", rw["reweight"])))
def test_by_batch_in_kernel(rw):
    """The kernels ignore aux[1] (make_aux's torch pass): the batch max is theirs, over every N x C
    entry of the re-weighting (unknown labels included), with hard, partial and soft labels and on
    the one-tile, narrow-tile, column-loop and split paths."""
    stats = _stats(80, seed=23)
    tiles = [dict(), dict(row_tile_elems=64, row_block_c=16, programs=2),
             dict(one_tile_max_c=0, loop_block_c=32, loop_tile_elems=64, split=2, chunk_align=32, stats_block_c=32)]
    for i, (labels, force) in enumerate(zip(["uint8", "partial", "soft"], tiles)):
        z, y = _inputs(19, 80, labels, seed=30 + i)
        with tk._force_tiles(**force):
            _check(stats, z, y, weight_norm="by_batch", reduction=["mean", "sum", "none"][i], **rw)


def test_by_batch_ignores_aux():
    """aux[1] is not read: a wrong value there changes nothing."""
    z, y = _inputs(12, 80, "partial", seed=24)
    z = z.float()
    for rw in (dict(reweight="rebalance"), dict(reweight="CB", cb_mode="min_n"), dict(reweight="inv")):
        loss_fn = DistributionBalancedLoss(COCO, backend="triton", weight_norm="by_batch", **rw)
        aux = make_aux(z, y, loss_fn.config, loss_fn.spec, loss_fn.class_freq, COCO.train_num)
        params = loss_fn.class_params.float().to(DEV)
        want = tk.fused(*ops.op_args(z, y, None, params, aux, loss_fn.spec, True))
        bad = aux.clone()
        bad[1] = 123.0
        got = tk.fused(*ops.op_args(z, y, None, params, bad, loss_fn.spec, True))
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_by_batch_negative_weights():
    """A map_alpha below -1 makes every rebalance weight negative: the batch max is then the
    negative weight closest to 0 (the max key's order is the float order, sign included)."""
    z, y = _inputs(9, 80, "partial", seed=25)
    _check(COCO, z, y, weight_norm="by_batch", map_alpha=-1.5)


# ---------------------------------------------------------------------------------------------
# fp64: options at the logits' precision.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rw,norm,ntr", [pytest.param(*p, id=_case_id(*p))
                                         for p in itertools.product(REWEIGHTS, NORMS, NTRS[1:])])
def test_fp64_matches_reference(rw, norm, ntr):
    """fp64 logits: scalar options arrive in float64 and exact library functions run, so the loss
    and gradient match the fp64 reference to 1e-12 (sums in another order stay ~1e-15 apart)."""
    stats = _stats(80, seed=26)
    for i, (focal, reduction, labels, use_weight) in enumerate(SUBRUNS[:3]):
        z, y = _inputs(7, 80, labels, seed=40 + i)
        weight = (torch.rand(7, 80, device=DEV, dtype=torch.float64) + 0.5) if use_weight else None
        _check(stats, z, y, weight, tol=1e-12, dtype=torch.float64, weight_norm=norm, reduction=reduction,
               **rw, **ntr, **focal)


@pytest.mark.skipif(_INTERPRET, reason="compiled kernels exist on a GPU only")
def test_direct_launch_after_first_call(monkeypatch):
    """After its first call a specialisation launches its compiled kernel directly: neither the
    JIT's argument binding nor the autotuner runs again."""
    z, y = _inputs(64, 80, "uint8", seed=27)
    loss_fn = DistributionBalancedLoss(COCO, backend="triton", validate_labels=False)
    leaf = z.float().requires_grad_(True)
    loss_fn(leaf, y).backward()
    from triton.runtime import Autotuner, JITFunction

    calls = []
    monkeypatch.setattr(JITFunction, "run", lambda self, *a, **k: calls.append(self) or pytest.fail("JIT run"))
    monkeypatch.setattr(Autotuner, "run", lambda self, *a, **k: calls.append(self) or pytest.fail("autotuner"))
    leaf = z.float().requires_grad_(True)
    loss_fn(leaf, y).backward()
    assert not calls


@pytest.mark.skipif(_INTERPRET, reason="CUDA graphs need a GPU")
def test_cuda_graph_capture():
    """A captured forward + backward replays to the eager result (the graph gets its own workspace,
    whose counter each replay leaves at 0)."""
    z, y = _inputs(48, 80, "uint8", seed=28)
    loss_fn = DistributionBalancedLoss(COCO, backend="triton", validate_labels=False)
    static_z = z.float().clone().requires_grad_(True)
    want_loss, want_grad = _run("triton", COCO, z, y, validate_labels=False)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on the capture stream: compile, autotune, cache
        for _ in range(2):
            static_z.grad = None
            loss_fn(static_z, y).backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_z.grad = None
    with torch.cuda.graph(graph):
        static_loss = loss_fn(static_z, y)
        static_loss.backward()
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_loss, want_loss) and torch.equal(static_z.grad, want_grad)


@pytest.mark.parametrize("cfg", [dict(), dict(reweight="CB", logit_reg=False), dict(reweight=None, focal=False)],
                         ids=["db", "cb", "bce"])
def test_nan_logit_propagates(cfg):
    """A NaN logit gives a NaN loss and a NaN gradient there, as in the reference (the clamp of the
    exponent must not turn it into a finite number); the other elements keep finite gradients (the
    weights depend on labels only)."""
    z, y = _inputs(6, 80, "uint8", seed=29)
    z[2, 7] = float("nan")
    for reduction in ("sum", "none"):
        lt, gt = _run("triton", COCO, z, y, reduction=reduction, **cfg)
        lr, gr = _run("reference", COCO, z, y, reduction=reduction, **cfg)
        assert torch.equal(lt.isnan(), lr.isnan()) and lt.isnan().any()
        assert gt[2, 7].isnan() and gr[2, 7].isnan()
        others = torch.ones_like(gt, dtype=torch.bool)
        others[2, 7] = False
        assert torch.isfinite(gt[others]).all()
