"""The functions under test and the run that measures them into records."""
from __future__ import annotations

import gc
import math
import time

import torch
import torch.nn.functional as F

import bench_data
import dbl_kernels

from . import report
from .cases import (BASELINES, DEFAULT_LOSS, DYNAMIC_BELOW, LOSS_CONFIGS, bytes_moved, input_bytes, n_input_sets,
                    order_cases, suite_cases)
from .envinfo import fused_backends
from .timing import Timer, peak_memory, sync

LOGIT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
LABEL_DTYPES = {"uint8": torch.uint8, "bool": torch.bool, "float": torch.float32}


def bce(logits, labels):
    """The yardstick: torch's own fused BCE, the cheapest multi-label loss a user could call."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="mean")


def asl_formula(logits, labels, gamma_neg=4.0, gamma_pos=1.0, clip=0.05, eps=1e-8):
    """The Asymmetric Loss as Ridnik et al. (ICCV 2021) define it, in plain PyTorch ops: what a
    training script runs without this package, and the baseline of the asl rows.

    p = sigmoid(x); a negative's probability is shifted down by the margin, p_m = max(p - clip, 0),
    so its likelihood is 1 - p_m = min(1 - p + clip, 1); p_t = p for a positive, 1 - p_m for a
    negative; the loss is -(1 - p_t)^(gamma_pos y + gamma_neg (1 - y)) (y log p + (1 - y) log(1 - p_m))
    with both logs clamped at eps, summed; the gradient flows through the focusing weight too.
    Half-precision logits are computed in fp32, as autocast runs log and pow.
    """
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    y = labels.to(x.dtype)
    p = torch.sigmoid(x)
    q = (1 - p + clip).clamp(max=1) if clip else 1 - p
    log_likelihood = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))
    p_t = y * p + (1 - y) * q
    focus = torch.pow(1 - p_t, gamma_pos * y + gamma_neg * (1 - y))
    return -(log_likelihood * focus).sum()


def compute_dtype(logits_dtype):
    """The dtype the baselines' formulas compute in (fp32 for half logits): the labels the asl
    baselines are given, converted once beforehand like bce's."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


def runs_fused(module):
    """Whether the fused backends compute ``module``'s configuration in their kernels (False: the
    call runs the reference; today the asymmetric options do), None where that cannot be read.
    The package keeps this private; a report should not die of it."""
    try:
        from dbl_kernels.loss import _fused_supports

        return bool(_fused_supports(module.config, module._reference_inputs()[2]))
    except Exception:
        return None


class Functions:
    """Loss callables per backend; torch.compile graphs rebuilt per compile key."""

    def __init__(self, device, compile_shapes, static_from=DYNAMIC_BELOW):
        self.device = device
        self.compile_shapes = compile_shapes
        self.static_from = static_from
        self._modules = {}
        self._compiled_key = None
        self._compiled = None
        cfg = torch._dynamo.config
        # One code object serves every graph; a silent fallback to eager at the recompile limit
        # would pass eager numbers off as compiled ones.
        for name, value in (("recompile_limit", 64), ("cache_size_limit", 64),
                            ("fail_on_recompile_limit_hit", True), ("fail_on_cache_limit_hit", True)):
            if hasattr(cfg, name):
                setattr(cfg, name, value)

    def module(self, backend, C, loss=DEFAULT_LOSS):
        key = (backend, C, loss)
        if key not in self._modules:
            if loss == "asl":  # Alibaba-MIIL's keywords and defaults: gamma_neg 4, gamma_pos 1, clip 0.05, sum
                module = dbl_kernels.AsymmetricLoss(backend=backend, validate_labels=False)
            else:
                module = dbl_kernels.DistributionBalancedLoss(bench_data.stats_for(C), backend=backend,
                                                              validate_labels=False)
            self._modules[key] = module.to(self.device)
        return self._modules[key]

    def baseline(self, case):
        """What eager and compile run: the reference backend for db-focal, the formula for asl."""
        return asl_formula if case.loss == "asl" else self.module("reference", case.C)

    def dynamic(self, case):
        if self.compile_shapes == "auto":
            return case.N * case.C < self.static_from
        return self.compile_shapes == "dynamic"

    def get(self, backend, case):
        if backend == "bce":
            return bce
        if backend == "eager":
            return self.baseline(case)
        if backend != "compile":
            return self.module(backend, case.C, case.loss)
        key = (case.group, None if self.dynamic(case) else case.N)
        if key != self._compiled_key:
            torch._dynamo.reset()
            reference = self.baseline(case)

            def loss_fn(logits, labels):
                return reference(logits, labels)

            self._compiled = torch.compile(loss_fn, dynamic=False if key[1] is not None else None)
            self._compiled_key = key
        return self._compiled


def make_inputs(case, n_sets, device, seed):
    cpu_gen = torch.Generator().manual_seed(seed)
    dev_gen = cpu_gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        labels = bench_data.make_labels(case.N, case.C, cpu_gen).to(device)
        labels = labels.to(LABEL_DTYPES[case.labels_dtype])
        logits = bench_data.make_logits(case.N, case.C, LOGIT_DTYPES[case.logits_dtype], device, dev_gen)
        sets.append((logits, labels))
    return sets


class Step:
    """step(i): one call on input set i, as a user runs it: the loss under no_grad (fwd), or
    ``x.grad = None; loss = fn(x, y); loss.backward()`` on a leaf x (fwd+bwd), returning the loss
    and x.grad. ``float_labels`` gives fn the labels as floats, converted once beforehand: True in
    the logits' dtype (BCE-with-logits takes no integer targets), or the dtype given."""

    def __init__(self, fn, mode, sets, dynamic=False, float_labels=False):
        self.fn = fn
        self.grad = mode == "fwd+bwd"
        self.pairs = [(x.detach().requires_grad_(self.grad), _as_float_labels(y, x.dtype, float_labels))
                      for x, y in sets]
        if dynamic:  # marks live on the tensor objects the compiled function receives
            for x, y in self.pairs:
                torch._dynamo.maybe_mark_dynamic(x, 0)
                torch._dynamo.maybe_mark_dynamic(y, 0)

    def __call__(self, i):
        x, y = self.pairs[i]
        if not self.grad:
            with torch.no_grad():
                return self.fn(x, y)
        x.grad = None
        loss = self.fn(x, y)
        loss.backward()
        return loss.detach(), x.grad

    def clear(self):
        """Drop the gradients the leaves hold (before a peak-memory call, after a CUDA graph)."""
        for x, _ in self.pairs:
            x.grad = None


def _as_float_labels(labels, logits_dtype, float_labels):
    if float_labels is False:
        return labels
    return labels.to(logits_dtype if float_labels is True else float_labels)


def label_form(case, backend):
    """The labels' form for Step: bce and the asl formula get float labels made beforehand (the
    originals take float targets); the package's losses take the labels as they are."""
    if backend == "bce":
        return True
    if case.loss == "asl" and backend in ("eager", "compile"):
        return compute_dtype(LOGIT_DTYPES[case.logits_dtype])
    return False


def rel_err(out, ref):
    """Largest relative deviation from the eager result: |loss - ref| / |ref| and
    max |grad - ref| / max |ref|."""
    def one(a, b):
        a, b = a.detach().double(), b.detach().double()
        if not bool(torch.isfinite(a).all()):
            return math.inf
        scale = float(b.abs().max()) if b.numel() else 0.0
        return float((a - b).abs().max()) / scale if scale else float((a - b).abs().max())
    if isinstance(out, tuple):
        return max(one(a, b) for a, b in zip(out, ref))
    return one(out, ref)


def autotune_snapshot():
    """{(autotuner id, key): config} over every live Triton autotuner, or None when that cannot
    be read. The package keeps its autotuners private; Triton's ``Autotuner.cache`` (key ->
    chosen config) is read through the garbage collector instead."""
    try:
        from triton.runtime.autotuner import Autotuner
    except Exception:
        return None
    found = {}
    for obj in gc.get_objects():
        # type(), not isinstance: isinstance reads __class__, which some lazy module proxies warn on
        if issubclass(type(obj), Autotuner) and isinstance(getattr(obj, "cache", None), dict):
            for key, config in obj.cache.items():
                found[(id(obj), key)] = str(config)
    return found


def autotune_choice(before, after, C):
    """The configs the autotuners hold for C (the first key entry of the package's kernels) after
    a case: 'tuned here: ...' if this case added them, else 'cached: ...'; None if unreadable."""
    if before is None or after is None:
        return None
    new = sorted({cfg for k, cfg in after.items() if k not in before})
    if new:
        return "tuned here: " + " | ".join(new)
    cached = sorted({cfg for (_, key), cfg in after.items()
                     if isinstance(key, tuple) and key and key[0] == C})
    return ("cached: " + " | ".join(cached)) if cached else None


def measure(args, device, meta, progress):
    losses = getattr(args, "losses", None)
    cases = order_cases([c for s in args.suite.split(",") for c in suite_cases(s.strip(), args.logit_dtypes, losses)])
    cases = [c for c in cases if c.labels_dtype in args.label_dtypes and c.mode in args.modes
             and c.logits_dtype in args.logit_dtypes]
    backends = [b for b in list(BASELINES) + fused_backends(device) if b in args.backends or args.backends == ["all"]]
    timer = Timer(device, args.min_time, args.min_reps, args.max_reps)
    funcs = Functions(device, args.compile_shapes, args.static_from)
    if device.type == "cuda":
        mem_cap = torch.cuda.get_device_properties(device).total_memory // 6
    else:
        mem_cap = 2 << 30
    records, started = [], time.monotonic()
    inputs_key, sets = None, None
    bar = progress(total=len(cases) * len(backends), desc="benchmark", unit="run")
    for case in cases:
        base = dict(report.meta_record(meta), suite=case.suite, N=case.N, C=case.C, elements=case.N * case.C,
                    logits_dtype=case.logits_dtype, labels_dtype=case.labels_dtype, config=LOSS_CONFIGS[case.loss],
                    mode=case.mode, bytes_moved=bytes_moved(case), loss=case.loss)
        if args.budget_s and time.monotonic() - started > args.budget_s:
            records += [dict(base, backend=b, status="skipped: time budget") for b in backends]
            bar.update(len(backends))
            continue
        set_bytes = input_bytes(case)
        if case.inputs_key != inputs_key:
            sets = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            sets = make_inputs(case, n_input_sets(set_bytes, timer.cache, mem_cap), device, args.seed)
            inputs_key = case.inputs_key
        try:
            reference = Step(funcs.get("eager", case), case.mode, sets[:1], float_labels=label_form(case, "eager"))(0)
        except Exception:  # eager itself failed (out of memory): its record will say so
            reference = None
        for backend in backends:
            bar.set_postfix_str(f"{case.suite} {case.N}x{case.C} {case.logits_dtype}/{case.labels_dtype} "
                                f"{case.mode} {backend}")
            records.append(run_one(case, backend, funcs, sets, set_bytes, timer, device, reference, base,
                                   device_time=not args.no_device_time))
            bar.update(1)
        del reference
        report.add_speedups(records)
        if args.out:
            report.write_outputs(records, meta, args.out, plot=False)
    bar.close()
    return records


def run_one(case, backend, funcs, sets, set_bytes, timer, device, reference, base, device_time=True):
    record = dict(base, backend=backend)
    dynamic = backend == "compile" and funcs.dynamic(case)
    record["compile_shapes"] = ("dynamic" if dynamic else "static") if backend == "compile" else None
    tuners = backend == "triton" and device.type == "cuda"
    before = autotune_snapshot() if tuners else None
    step = None
    try:
        fn = funcs.get(backend, case)
        step = Step(fn, case.mode, sets, dynamic, float_labels=label_form(case, backend))
        if backend not in BASELINES:
            record["fused_kernel"] = runs_fused(fn)
        start = time.perf_counter()
        out = step(0)
        sync(device)
        record["first_call_s"] = round(time.perf_counter() - start, 4)
        # bce is another loss: nothing to compare with the reference
        if reference is not None and backend != "bce":
            record["max_rel_err"] = rel_err(out, reference)
        del out
        timed = timer.measure(step, len(sets), set_bytes, device_time=device_time, clear=step.clear)
        if tuners:
            record["autotune_config"] = autotune_choice(before, autotune_snapshot(), case.C)
        record.update(timed, input_sets=len(sets))
        record.update(report.throughput(record))
        step.clear()
        record["peak_mem_bytes"] = peak_memory(step, device)
        record["status"] = "ok"
    except Exception as exc:  # one broken backend or an OOM must not sink the whole run
        record["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    finally:
        if step is not None:
            step.clear()
    return record

