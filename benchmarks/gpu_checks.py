#!/usr/bin/env python
"""Correctness checks of the fused backends on a GPU (issue 7), one command each:

    python benchmarks/gpu_checks.py all [--json FILE] [--md FILE] [--budget-s S]
        configs      every fused backend against the reference on the configuration grid
        big          N*C > 2^31 (bf16 65,537 x 32,768), forward+backward of each fused backend
        determinism  bit-identical loss and gradient over repeated calls
        v2           ASL, DB-ASL, reduction per_class and CSR labels against the reference
        compile      torch.compile(fullgraph=True) and mode="reduce-overhead" of a training step
    python benchmarks/gpu_checks.py configs,big,...   some of them
    python benchmarks/gpu_checks.py sanitize     a small run of the "cuda" backend, for
                                                 `compute-sanitizer --tool memcheck`
    python benchmarks/gpu_checks.py targets RESULTS_JSON   the targets table of a benchmark run

Runs on the CPU too (device "cpu" and its fused backends), which is how its logic is tested
where there is no GPU. Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import report  # noqa: E402  (also makes a checkout's dbl_kernels importable)
from harness.envinfo import device_name  # noqa: E402
from harness.envinfo import fused_backends as device_backends  # noqa: E402
from harness.measure import LABEL_DTYPES, LOGIT_DTYPES  # noqa: E402
from harness.timing import Timer, sync  # noqa: E402

import torch  # noqa: E402

import bench_data  # noqa: E402
import dbl_kernels  # noqa: E402
from dbl_kernels import DistributionBalancedLoss  # noqa: E402

# ------------------------------------------------------------------------------------------------
# The configuration grid
# ------------------------------------------------------------------------------------------------
REWEIGHTS = [dict(reweight="rebalance"), dict(reweight="CB", cb_mode="by_class"),
             dict(reweight="CB", cb_mode="average_w"), dict(reweight="CB", cb_mode="average_n"),
             dict(reweight="CB", cb_mode="min_n"), dict(reweight="inv"), dict(reweight="sqrt_inv"),
             dict(reweight=None)]
AXES = dict(weight_norm=[None, "by_instance", "by_batch"], focal=[True, False], logit_reg=[True, False],
            reduction=["mean", "sum", "none"])
# Scalars away from the defaults: a non-integer focal exponent, gamma 0, the paper's NTR bias,
# the authors' VOC map parameters, a loss weight.
SCALAR_VARIANTS = [dict(gamma=0.5), dict(gamma=0.0), dict(ntr_bias="paper"), dict(neg_scale=5.0, init_bias=0.1),
                   dict(map_alpha=0.1, map_beta=10.0, map_gamma=0.3), dict(loss_weight=0.7, balance_param=1.5),
                   dict(map_beta=-2.0), dict(cb_beta=0.999, reweight="CB", cb_mode="average_n")]


def config_grid():
    """Every configuration: the default first, then one option changed at a time, then the
    rest of the full product in a fixed shuffled order (so a budget cut still samples widely)."""
    default = {}
    ofat = [dict(r) for r in REWEIGHTS[1:]]
    ofat += [{k: v} for k, values in AXES.items() for v in values[1:]]
    ofat += [dict(v) for v in SCALAR_VARIANTS]
    full = [dict(r, **dict(zip(AXES, values))) for r in REWEIGHTS for values in itertools.product(*AXES.values())]
    random.Random(7).shuffle(full)
    out, seen = [], set()
    for cfg in [default] + ofat + full:
        key = json.dumps(cfg, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out, 1 + len(ofat)


# (logits dtype, labels kind, N, C): labels kinds beyond the plain dtypes carry -1 (unknown)
# entries and soft labels; C=1000 and 70,001 are long-tailed label spaces, the odd C tests tails.
INPUTS = [("fp32", "uint8", 37, 80), ("bf16", "bool", 64, 80), ("fp16", "float_soft_unknown", 33, 80),
          ("fp64", "int8_unknown", 17, 80), ("fp32", "float", 9, 1000), ("bf16", "uint8", 3, 70001)]
TOLERANCE = {"fp64": 1e-9, "fp32": 1e-4, "fp16": 2e-3, "bf16": 1.5e-2}


def make_case_inputs(ldt, kind, n, c, device, seed):
    gen = torch.Generator().manual_seed(seed)
    y = bench_data.make_labels(n, c, gen)
    y[0] = 0  # a row without positives: the CB averages' fallback, r_i = 0 for rebalance
    if kind == "bool":
        y = y.bool()
    elif kind == "float":
        y = y.float()
    elif kind == "float_soft_unknown":
        y = y.float()
        r = torch.rand(n, c, generator=gen)
        y = torch.where(r < 0.1, -1.0, torch.where(r > 0.95, torch.rand(n, c, generator=gen), y))
    elif kind == "int8_unknown":
        y = torch.where(torch.rand(n, c, generator=gen) < 0.1, -1, y.to(torch.int8)).to(torch.int8)
    x = bench_data.make_logits(n, c, LOGIT_DTYPES[ldt], "cpu", gen)
    weight = None
    if seed % 3 == 1:  # a broadcast per-class weight
        weight = torch.rand(1, c, generator=gen) + 0.5
    elif seed % 3 == 2:  # a full per-element weight
        weight = torch.rand(n, c, generator=gen)
    return x.to(device), y.to(device), None if weight is None else weight.to(device)


def _error(exc):
    """An exception in one line for the reports: its type and the first line of its message."""
    first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}"


def rel(a, b):
    """max |a - b| / max |b| with one rounding step of b's dtype forgiven per element (fp16
    gradients of a mean over many elements are subnormal, where one step is a large relative
    error); inf when a has a NaN/inf that b lacks."""
    info = torch.finfo(b.dtype) if b.dtype.is_floating_point else None
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    if bool((torch.isfinite(a) != torch.isfinite(b)).any()):
        return math.inf
    finite = torch.isfinite(b)
    excess = (a - b).abs()
    if info is not None:
        excess = (excess - (info.eps * b.abs() + info.tiny * info.eps)).clamp(min=0)
    diff = float(excess[finite].max()) if bool(finite.any()) else 0.0
    scale = float(b[finite].abs().max()) if bool(finite.any()) else 0.0
    return diff / scale if scale else diff


def compare_one(backend, cfg, inputs, stats, device, check_nograd):
    x, y, weight = inputs
    ref = DistributionBalancedLoss(stats, backend="reference", validate_labels=False, **cfg).to(device)
    fused = DistributionBalancedLoss(stats, backend=backend, validate_labels=False, **cfg).to(device)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    lr, lf = ref(xr, y, weight), fused(xf, y, weight)
    go = (torch.rand(lr.shape, device=device, dtype=lr.dtype) + 0.5) if lr.dim() else torch.tensor(
        0.75, device=device, dtype=lr.dtype)
    (gr,) = torch.autograd.grad(lr, xr, go)
    (gf,) = torch.autograd.grad(lf, xf, go)
    err = max(rel(lf, lr), rel(gf, gr))
    problems = []
    if lf.dtype != lr.dtype or gf.dtype != x.dtype:
        problems.append(f"dtypes loss {lf.dtype} grad {gf.dtype}")
    if check_nograd:
        with torch.no_grad():
            err = max(err, rel(fused(x, y, weight), lr))
    return err, problems


def check_configs(device, backends, budget_s, log=print):
    """Each fused backend against the reference: the default and one-option-changed configs on
    every input kind, the rest of the grid on one input kind each (rotating)."""
    configs, n_core = config_grid()
    started = time.monotonic()
    results, failures, done = [], [], 0
    stats_cache = {}
    for i, cfg in enumerate(configs):
        if i and budget_s and time.monotonic() - started > budget_s:
            break  # the default config always runs
        kinds = INPUTS if i < n_core else [INPUTS[i % len(INPUTS)]]
        for j, (ldt, kind, n, c) in enumerate(kinds):
            if c not in stats_cache:
                stats_cache[c] = bench_data.stats_for(c)
            seed = 1000 * i + j
            inputs = make_case_inputs(ldt, kind, n, c, device, seed)
            for backend in backends:
                try:
                    err, problems = compare_one(backend, cfg, inputs, stats_cache[c], device, i < n_core)
                except Exception as exc:
                    err, problems = math.inf, [_error(exc)]
                ok = err <= TOLERANCE[ldt] and not problems
                entry = dict(backend=backend, config=cfg, logits=ldt, labels=kind, N=n, C=c, rel_err=err,
                             weight=["none", "per-class", "per-element"][seed % 3], ok=ok, problems=problems)
                results.append(entry)
                if not ok:
                    failures.append(entry)
                    if len(failures) <= 10:
                        log(f"FAIL configs {backend} {cfg} {ldt}/{kind} {n}x{c}: err {err:.3g} {problems}")
        done = i + 1
    worst = {}
    for r in results:
        worst[(r["backend"], r["logits"])] = max(worst.get((r["backend"], r["logits"]), 0.0), r["rel_err"])
    return dict(name="configs", ok=not failures and bool(results), configs_checked=done, configs_total=len(configs),
                runs=len(results), failures=failures[:50], n_failures=len(failures),
                worst={f"{b}/{d}": e for (b, d), e in worst.items()}, seconds=time.monotonic() - started)


# ------------------------------------------------------------------------------------------------
# N*C > 2^31
# ------------------------------------------------------------------------------------------------
def big_inputs(n, c, device, seed=0, chunk=4096):
    """bf16 logits and uint8 long-tailed labels, filled in row chunks to bound the temporaries."""
    gen = torch.Generator(device=device).manual_seed(seed)
    p = torch.from_numpy(bench_data.class_probabilities(bench_data.family_for(c))).to(device, torch.float32)
    x = torch.empty(n, c, dtype=torch.bfloat16, device=device)
    y = torch.empty(n, c, dtype=torch.uint8, device=device)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x[a:b] = bench_data.make_logits(b - a, c, torch.bfloat16, device, gen)
        y[a:b] = (torch.rand(b - a, c, generator=gen, device=device) < p).to(torch.uint8)
    return x, y


def train_step(fn, leaf, y):
    """Forward + backward as a training step runs it."""
    leaf.grad = None
    fn(leaf, y).backward()
    return leaf.grad


def check_big(device, backends, n=65537, c=32768, rows=None, log=print):
    """Forward+backward of each fused backend on an N x C batch with more than 2^31 elements:
    the summed loss against a row-chunked reference, the gradient of a few rows (the last ones
    sit past element 2^31) against the reference computed on those rows, and the mean."""
    started = time.monotonic()
    stats = bench_data.stats_for(c)
    x, y = big_inputs(n, c, device)
    rows = rows or [0, 1, n // 2, n - 2, n - 1]
    ref = DistributionBalancedLoss(stats, backend="reference", reduction="sum", validate_labels=False).to(device)
    with torch.no_grad():
        chunk = max(1, (1 << 26) // c)
        total = sum(float(ref(x[a:a + chunk], y[a:a + chunk]).double()) for a in range(0, n, chunk))
    xr = x[rows].clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ref(xr, y[rows]), xr)
    out = dict(name="big", N=n, C=c, elements=n * c, over_2_31=n * c > 2**31, rows=rows, backends={})
    for backend in backends:
        entry = {}
        try:
            fused = DistributionBalancedLoss(stats, backend=backend, reduction="sum", validate_labels=False).to(device)
            mean = DistributionBalancedLoss(stats, backend=backend, validate_labels=False).to(device)
            leaf = x.detach().requires_grad_(True)
            sync(device)
            t0 = time.perf_counter()
            loss = fused(leaf, y)
            (grad,) = torch.autograd.grad(loss, leaf)
            sync(device)
            entry["first_call_ms"] = (time.perf_counter() - t0) * 1e3
            entry["loss_rel_err"] = abs(float(loss.detach()) - total) / abs(total)
            entry["grad_rel_err"] = rel(grad[rows], g_ref)
            entry["grad_finite"] = bool(torch.isfinite(grad[rows]).all())
            del grad, loss
            with torch.no_grad():
                entry["mean_rel_err"] = abs(float(mean(x, y)) * (n * c) - total) / abs(total)
            times = Timer(device, min_time=0.05, min_reps=3, max_reps=10, warmup=1)(
                lambda _: train_step(fused, leaf, y), 1, 0, flush=False)
            entry["median_ms"] = float(sorted(times)[len(times) // 2])
            entry["gbytes_per_s"] = n * c * 5 / (entry["median_ms"] * 1e-3) / 1e9
            entry["ok"] = (entry["loss_rel_err"] < 1e-4 and entry["mean_rel_err"] < 1e-4
                           and entry["grad_rel_err"] <= TOLERANCE["bf16"] and entry["grad_finite"])
        except Exception as exc:
            entry.update(ok=False, error=_error(exc))
        if not entry["ok"]:
            log(f"FAIL big {backend}: {entry}")
        out["backends"][backend] = entry
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["ok"] = bool(backends) and all(e["ok"] for e in out["backends"].values())
    out["seconds"] = time.monotonic() - started
    return out


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------
DETERMINISM_SHAPES = [(65536, 80, "bf16", "uint8"), (256, 131072, "fp32", "uint8"), (2048, 9605, "bf16", "float")]


def bits(t):
    t = t.detach().contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def check_determinism(device, backends, shapes=None, repeats=3, log=print):
    started = time.monotonic()
    results = []
    for n, c, ldt, labdt in shapes or DETERMINISM_SHAPES:
        gen = torch.Generator().manual_seed(n + c)
        y = bench_data.make_labels(n, c, gen).to(device).to(LABEL_DTYPES[labdt])
        x = bench_data.make_logits(n, c, LOGIT_DTYPES[ldt], "cpu", gen).to(device)
        for backend in backends:
            for reduction in ("mean", "none"):
                try:
                    mod = DistributionBalancedLoss(bench_data.stats_for(c), backend=backend, reduction=reduction,
                                                   validate_labels=False).to(device)
                    outs = []
                    for _ in range(repeats):
                        leaf = x.detach().requires_grad_(True)
                        loss = mod(leaf, y)
                        (grad,) = torch.autograd.grad(loss, leaf, torch.ones_like(loss))
                        outs.append((bits(loss), bits(grad)))
                    same = all(torch.equal(o[0], outs[0][0]) and torch.equal(o[1], outs[0][1]) for o in outs[1:])
                    entry = dict(backend=backend, N=n, C=c, logits=ldt, labels=labdt, reduction=reduction, ok=same)
                except Exception as exc:
                    entry = dict(backend=backend, N=n, C=c, logits=ldt, labels=labdt, reduction=reduction, ok=False,
                                 error=f"{type(exc).__name__}: {str(exc)[:200]}")
                if not entry["ok"]:
                    log(f"FAIL determinism {entry}")
                results.append(entry)
    return dict(name="determinism", ok=bool(results) and all(r["ok"] for r in results), runs=results,
                seconds=time.monotonic() - started)


# ------------------------------------------------------------------------------------------------
# Contract v2 on the device: the asymmetric form, per_class, CSR labels
# ------------------------------------------------------------------------------------------------
V2_CASES = [("ASL", lambda stats, b, r: dbl_kernels.AsymmetricLoss(gamma_pos=1.0, gamma_neg=4.0, clip=0.05,
                                                                   backend=b, reduction=r), "mean", False),
            ("DB-ASL", lambda stats, b, r: DistributionBalancedLoss(stats, gamma_neg=4.0, clip=0.05, backend=b,
                                                                    reduction=r), "mean", False),
            ("per_class", lambda stats, b, r: DistributionBalancedLoss(stats, backend=b, reduction=r),
             "per_class", False),
            ("CSR", lambda stats, b, r: DistributionBalancedLoss(stats, backend=b, reduction=r), "mean", True),
            ("CSR by_batch", lambda stats, b, r: DistributionBalancedLoss(stats, weight_norm="by_batch", backend=b,
                                                                          reduction=r), "sum", True)]


def check_v2(device, backends, shapes=((257, 80), (33, 9605)), log=print):
    """Each v2 feature on each fused backend against the reference (fp32 logits, within 1e-5;
    a fallback to the reference warns, and counts as a failure here)."""
    import warnings

    started = time.monotonic()
    results = []
    for (n, c), (name, make, reduction, csr) in itertools.product(shapes, V2_CASES):
        stats = bench_data.stats_for(c)
        gen = torch.Generator().manual_seed(n * c)
        dense = bench_data.make_labels(n, c, gen).to(device)
        x = bench_data.make_logits(n, c, torch.float32, "cpu", gen).to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: sparse CSR is beta
            y = dense.to_sparse_csr() if csr else dense
        xr = x.clone().requires_grad_(True)
        want = make(stats, "reference", reduction).to(device)(xr, dense)
        go = torch.rand(want.shape, device=device) + 0.5 if want.dim() else torch.tensor(0.75, device=device)
        (want_grad,) = torch.autograd.grad(want, xr, go)
        for backend in backends:
            entry = dict(case=name, backend=backend, N=n, C=c)
            try:
                xf = x.clone().requires_grad_(True)
                with warnings.catch_warnings():
                    warnings.filterwarnings("error", message="dbl_kernels")
                    got = make(stats, backend, reduction).to(device)(xf, y)
                (got_grad,) = torch.autograd.grad(got, xf, go)
                entry["rel_err"] = max(rel(got, want), rel(got_grad, want_grad))
                entry["ok"] = entry["rel_err"] <= 1e-5
            except Exception as exc:
                entry.update(ok=False, error=_error(exc))
            if not entry["ok"]:
                log(f"FAIL v2 {entry}")
            results.append(entry)
    return dict(name="v2", ok=bool(results) and all(r["ok"] for r in results), runs=results,
                seconds=time.monotonic() - started)


# ------------------------------------------------------------------------------------------------
# torch.compile of a training step
# ------------------------------------------------------------------------------------------------
def check_compile(device, backends, n=256, c=80, steps=4, log=print):
    """A linear classifier + the loss, compiled with fullgraph=True and with mode="reduce-overhead"
    (CUDA graphs on a GPU), against eager on fresh inputs every step: loss and weight gradient."""
    started = time.monotonic()
    results = []
    for backend, mode in itertools.product(backends, ("fullgraph", "reduce-overhead")):
        entry = dict(backend=backend, mode=mode)
        try:
            torch._dynamo.reset()
            gen = torch.Generator().manual_seed(c)
            model = torch.nn.Linear(64, c).to(device)
            loss_fn = DistributionBalancedLoss(bench_data.stats_for(c), backend=backend,
                                               validate_labels=False).to(device)

            def forward(feat, y):
                return loss_fn(model(feat), y)

            compiled = torch.compile(forward, fullgraph=True, mode=None if mode == "fullgraph" else mode)
            worst = 0.0
            for _ in range(steps):
                feat = torch.randn(n, 64, generator=gen).to(device)
                y = bench_data.make_labels(n, c, gen).to(device)
                model.zero_grad(set_to_none=True)
                want = forward(feat, y)
                want.backward()
                want_grad = model.weight.grad.clone()
                model.zero_grad(set_to_none=True)
                got = compiled(feat, y)
                got.backward()
                worst = max(worst, rel(got, want), rel(model.weight.grad, want_grad))
            entry.update(worst_rel_err=worst, ok=worst < 1e-5)
        except Exception as exc:
            entry.update(ok=False, error=_error(exc))
        if not entry["ok"]:
            log(f"FAIL compile {entry}")
        results.append(entry)
    torch._dynamo.reset()
    return dict(name="compile", ok=bool(results) and all(r["ok"] for r in results), runs=results,
                seconds=time.monotonic() - started)


# ------------------------------------------------------------------------------------------------
# A small run for compute-sanitizer
# ------------------------------------------------------------------------------------------------
def sanitize_run(device, backend="cuda", small=False):
    """Odd shapes, every logits/labels kind, both reductions, with and without gradient; the
    sanitizer reports out-of-bounds or uninitialised accesses of the kernels it watches. ``small``:
    two shapes and one kind (racecheck is slow)."""
    runs = 0
    shapes = [(7, 80), (3, 9605)] if small else [(7, 80), (33, 9605), (3, 70001)]
    kinds = [("fp32", "uint8"), ("bf16", "float_soft_unknown"), ("fp16", "bool")][:1 if small else 3]
    for (n, c), (ldt, kind), reduction in itertools.product(shapes, kinds, ["mean", "none"]):
        x, y, weight = make_case_inputs(ldt, kind, n, c, device, runs)
        mod = DistributionBalancedLoss(bench_data.stats_for(c), backend=backend, reduction=reduction,
                                       weight_norm="by_instance" if runs % 2 else None,
                                       validate_labels=False).to(device)
        leaf = x.requires_grad_(True)
        loss = mod(leaf, y, weight)
        torch.autograd.grad(loss, leaf, torch.ones_like(loss))
        with torch.no_grad():
            mod(x.detach(), y, weight)
        runs += 1
    sync(device)
    return runs


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------
def render(results, device):
    lines = [f"## GPU checks on {device_name(device)}", "",
             "| check | result | details |", "|---|---|---|"]
    for r in results:
        mark = "pass" if r.get("ok") else "FAIL"
        if r["name"] == "configs":
            worst = ", ".join(f"{k} {v:.2g}" for k, v in sorted(r["worst"].items()))
            detail = (f"{r['configs_checked']}/{r['configs_total']} configs, {r['runs']} runs, "
                      f"{r['n_failures']} failures; worst rel err {worst}")
        elif r["name"] == "big":
            per = []
            for b, e in r["backends"].items():
                if "error" in e:
                    per.append(f"{b}: {e['error']}")
                else:
                    per.append(f"{b}: loss err {e['loss_rel_err']:.2g}, mean err {e['mean_rel_err']:.2g}, "
                               f"grad err {e['grad_rel_err']:.2g}, {e['median_ms']:.2f} ms, "
                               f"{e['gbytes_per_s']:.0f} GB/s")
            detail = f"{r['N']}x{r['C']} bf16/uint8 ({r['elements']:,} elements): " + "; ".join(per)
        elif r["name"] == "determinism":
            bad = [f"{x['backend']} {x['N']}x{x['C']} {x['reduction']}" for x in r["runs"] if not x["ok"]]
            detail = f"{len(r['runs'])} runs x 3 repeats bit-identical" + (f"; differ: {', '.join(bad)}" if bad else "")
        elif r["name"] == "v2":
            bad = [f"{x['backend']} {x['case']} {x['N']}x{x['C']}: {x.get('error') or '%.2g' % x['rel_err']}"
                   for x in r["runs"] if not x["ok"]]
            worst = max((x.get("rel_err", 0.0) for x in r["runs"]), default=0.0)
            detail = f"{len(r['runs'])} runs (ASL, DB-ASL, per_class, CSR), worst rel err {worst:.2g}" + (
                f"; failed: {'; '.join(bad[:8])}" if bad else "")
        elif r["name"] == "compile":
            detail = "; ".join(f"{x['backend']} {x['mode']}: " + (x["error"] if "error" in x else
                                                                   f"rel err {x['worst_rel_err']:.2g}")
                               for x in r["runs"])
        else:
            detail = r.get("detail", "")
        if "error" in r:
            detail = r["error"]
        lines.append(f"| {r['name']} | {mark} | {detail} |")
    return "\n".join(lines) + "\n"


def fused_backends(device, names=None):
    """The fused backends that run on device; "reference" only when asked for by name (it checks
    the harness itself)."""
    available = device_backends(device)
    if names is None:
        return available
    return [b for b in names if b in available or b == "reference"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", help="all, sanitize, targets, or a comma list of configs, big, determinism, v2, compile")
    p.add_argument("results", nargs="?", help="results.json of a benchmark run (targets)")
    p.add_argument("--device", default=None)
    p.add_argument("--backends", default=None, help="comma list of fused backends (default: all available)")
    p.add_argument("--budget-s", type=float, default=30.0, help="time for the configuration grid")
    p.add_argument("--big-shape", default="65537x32768")
    p.add_argument("--small", action="store_true", help="sanitize: a shorter run (for racecheck)")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    if args.command == "targets":
        records, meta = report.load_results(args.results)
        table = report.targets_table(records, meta.get("auto_backend"))
        print(table or "no benchmark rows with bf16 logits, uint8 labels, forward+backward and N*C >= 2^26")
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backends = fused_backends(device, args.backends.split(",") if args.backends else None)
    if args.command == "sanitize":
        if "cuda" not in backends:
            print("sanitize: no 'cuda' backend here; nothing to check")
            return 0
        print(f"sanitize: {sanitize_run(device, small=args.small)} runs of the cuda backend finished")
        return 0
    if not backends:
        print(f"no fused backend available on {device} (available: {dbl_kernels.available_backends()})")
    n, c = (int(v) for v in args.big_shape.lower().split("x"))
    steps = {"configs": lambda: check_configs(device, backends, args.budget_s),
             "big": lambda: check_big(device, backends, n, c),
             "determinism": lambda: check_determinism(device, backends),
             "v2": lambda: check_v2(device, backends),
             "compile": lambda: check_compile(device, backends)}
    names = list(steps) if args.command == "all" else args.command.split(",")
    unknown = [name for name in names if name not in steps]
    if unknown:
        p.error(f"unknown check {', '.join(unknown)}: choose all, sanitize, targets or from {', '.join(steps)}")
    results = []
    for name in names:
        try:
            results.append(steps[name]())
        except Exception as exc:
            results.append(dict(name=name, ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"{name}: {'pass' if results[-1].get('ok') else 'FAIL'}", flush=True)
        # after every check: a timeout in the next one still leaves these
        text = render(results, device)
        if args.json:
            report.write_text(args.json, json.dumps(dict(device=device_name(device), backends=backends,
                                                         results=results), indent=1, default=str) + "\n")
        if args.md:
            report.write_text(args.md, text)
    print(text)
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
