#!/usr/bin/env python
"""Throughput and memory of every available dbl_kernels backend against eager and torch.compile.

    python benchmarks/run.py [--device cpu|cuda] [--suite quick|coco|openimages|xmc|targets|all] [--out DIR]

Suites (comma-separated lists work, e.g. ``--suite targets,coco``):
  quick       a few small shapes (under a minute on two CPU cores)
  coco        C = 80, N 256 .. 65,536, rows of the real COCO-MLT label matrix
  openimages  C = 9,605, N 256 .. 4,096, long-tailed sparse labels
  xmc         C = 131,072 and 1,048,576, N 16 .. 256, long-tailed sparse labels
  targets     one shape per label space with N*C >= 2^26, forward+backward only
  all         coco + openimages + xmc

Backends: ``eager`` (the reference backend, eager mode), ``compile`` (``torch.compile`` of a function
calling the reference backend) and every fused backend ``dbl_kernels.available_backends()`` lists
for the device ("triton" is skipped on the CPU: the interpreter is not a benchmark). All are measured
in the same run, through the public API, with the authors' COCO-MLT loss config.

Writes results.json (a list of records), results.csv, summary.md and throughput.png into DIR
(default ``benchmarks/results/<date>-<device>/``) and prints the summary table.
``--report DIR`` re-renders those files from DIR/results.json without measuring.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:
    import dbl_kernels
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(HERE.parent))
    import dbl_kernels

import numpy as np
import torch

import bench_data

# ------------------------------------------------------------------------------------------------
# What is measured
# ------------------------------------------------------------------------------------------------
FIELDS = ["suite", "backend", "device", "device_name", "torch", "triton", "date", "N", "C", "elements",
          "logits_dtype", "labels_dtype", "config", "mode", "median_ms", "p20_ms", "p80_ms", "reps",
          "input_sets", "elements_per_s", "bytes_moved", "gbytes_per_s", "copy_gbytes_per_s",
          "roofline_fraction", "peak_mem_bytes", "speedup_vs_eager", "speedup_vs_compile",
          "first_call_s", "max_rel_err", "compile_shapes", "cpu_count", "status"]

LOGIT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
LABEL_DTYPES = {"uint8": torch.uint8, "bool": torch.bool, "float": torch.float32}
MODES = ("fwd", "fwd+bwd")
BASELINES = ("eager", "compile")
CONFIG = "coco-mlt"  # the authors' DB-focal config: the loss defaults
TARGET_ELEMENTS = 1 << 26
# Issue targets for forward+backward, bf16 logits + uint8 labels, N*C >= 2^26.
TARGETS = {"roofline_fraction": 0.85, "speedup_vs_compile": 3.0, "speedup_vs_eager": 25.0}
# Below this many elements torch.compile gets one graph per (C, dtypes, mode) with the batch
# dimension dynamic (--compile-shapes auto); at and above it one static graph per shape.
DYNAMIC_BELOW = 1 << 22


@dataclass(frozen=True)
class Case:
    suite: str
    N: int
    C: int
    logits_dtype: str
    labels_dtype: str
    mode: str

    @property
    def group(self):
        """Cases that can share a torch.compile graph when the batch dimension is dynamic."""
        return (self.C, self.logits_dtype, self.labels_dtype)

    @property
    def inputs_key(self):
        return (self.N, self.C, self.logits_dtype, self.labels_dtype)


def _sweep(suite, C, Ns, pivot, dtypes, extra_labels, modes=MODES):
    """N sweep with uint8 labels for every logits dtype; the other label dtypes at one N, with the
    main (last) logits dtype."""
    shapes = [(n, dt, "uint8") for dt in dtypes for n in Ns]
    shapes += [(pivot, dtypes[-1], lab) for lab in extra_labels]
    return [Case(suite, n, C, dt, lab, mode) for n, dt, lab in shapes for mode in modes]


def suite_cases(name, logit_dtypes):
    extras = ("bool", "float")
    if name == "quick":
        return (_sweep("quick", 80, [256, 4096], 256, logit_dtypes, extras)
                + _sweep("quick", 9605, [64], 64, logit_dtypes, ()))
    if name == "smoke":  # for the test suite: one tiny shape
        return _sweep("smoke", 80, [16], 16, logit_dtypes, ())
    if name == "coco":
        return _sweep("coco", 80, [256, 1024, 4096, 16384, 65536], 4096, logit_dtypes, extras)
    if name == "openimages":
        return _sweep("openimages", 9605, [256, 1024, 4096], 1024, logit_dtypes, extras)
    if name == "xmc":
        return (_sweep("xmc", 131072, [16, 64, 256], 64, logit_dtypes, ("bool",))
                + _sweep("xmc", 1048576, [16, 64, 256], 64, logit_dtypes, ()))
    if name == "targets":
        shapes = [(1 << 20, 80), (8192, 9605), (512, 131072), (128, 1048576)]
        return [Case("targets", n, c, logit_dtypes[-1], "uint8", "fwd+bwd") for n, c in shapes]
    if name == "all":
        return [c for s in ("coco", "openimages", "xmc") for c in suite_cases(s, logit_dtypes)]
    raise ValueError(f"unknown suite {name!r}; choose quick, coco, openimages, xmc, targets or all")


def order_cases(cases):
    """Keep the suites' order; within a suite run a compile group's shapes back to back so one
    torch.compile graph serves them. A shape listed twice runs once, under the first named suite
    that has it (quick only when no other suite does)."""
    suites = list(dict.fromkeys(c.suite for c in cases))
    owner = {}
    for suite in sorted(suites, key=lambda s: s == "quick"):
        for c in cases:
            if c.suite == suite:
                owner.setdefault((c.inputs_key, c.mode), suite)
    out, seen = [], set()
    for suite in suites:
        mine = []
        for c in cases:
            key = (c.inputs_key, c.mode)
            if c.suite == suite and owner[key] == suite and key not in seen:
                seen.add(key)
                mine.append(c)
        for group in dict.fromkeys(c.group for c in mine):
            out += sorted((c for c in mine if c.group == group), key=lambda c: (c.N, MODES.index(c.mode)))
    return out


def bytes_moved(case):
    """The fewest bytes a kernel must move: logits and labels read once, the gradient written once."""
    elements = case.N * case.C
    logit_bytes = torch.empty((), dtype=LOGIT_DTYPES[case.logits_dtype]).element_size()
    label_bytes = torch.empty((), dtype=LABEL_DTYPES[case.labels_dtype]).element_size()
    grad = logit_bytes if case.mode == "fwd+bwd" else 0
    return elements * (logit_bytes + label_bytes + grad)


# ------------------------------------------------------------------------------------------------
# The machine
# ------------------------------------------------------------------------------------------------
def triton_version():
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:
        return None


def cpu_name():
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cpus)"


def short_name(device):
    """Folder-name form of the device: 'h100-80gb-hbm3', 'cpu-amd-epyc'."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu " + cpu_name()
    name = re.sub(r"\b(nvidia|geforce|processor|\d+-core)\b", " ", name.lower())
    name = re.sub(r"\(r\)|\(tm\)|@.*$", " ", name)
    return "-".join(re.findall(r"[a-z0-9]+", name))[:40] or device.type


def cache_bytes(device):
    """Last-level cache size: input sets are rotated (and flushed) so a small shape is not
    timed out of a cache it would not sit in during training."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20) or (50 << 20))
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        return int(text.rstrip("KM")) * scale
    return 32 << 20


def auto_backend(device):
    """Which concrete backend ``backend="auto"`` runs on this device."""
    try:
        from dbl_kernels import backends

        return backends.resolve("auto", device.type)
    except Exception as exc:  # the resolver is internal; a report should not die of it
        return f"unknown ({exc})"


def fused_backends(device):
    names = []
    for name in dbl_kernels.available_backends():
        if name == "reference":
            continue  # measured as "eager"
        if device.type == "cpu" and name != "cpu":
            continue  # "triton" on the CPU is the interpreter; "cuda" needs a GPU
        if device.type == "cuda" and name == "cpu":
            continue
        names.append(name)
    return names


def git_commit():
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Median and 20/80 percentiles of one call, in ms.

    CUDA: events around each call, the L2 flushed before each (as triton.testing.do_bench does).
    CPU: a wall clock around each call (CPU ops return when done), the last-level cache flushed
    before calls whose inputs fit in it. Input sets rotate in both cases.
    """

    def __init__(self, device, min_time, min_reps, max_reps, warmup=2):
        self.device = device
        self.min_time = min_time
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.warmup = warmup
        self.cache = cache_bytes(device)
        self._flush_buf = None

    def _flush(self):
        if self._flush_buf is None:
            self._flush_buf = torch.empty(2 * self.cache, dtype=torch.uint8, device=self.device)
        self._flush_buf.fill_(1)

    def _reps(self, per_call_s):
        wanted = math.ceil(self.min_time / max(per_call_s, 1e-7))
        return int(min(self.max_reps, max(self.min_reps, wanted)))

    def __call__(self, step, n_sets, set_bytes, flush=True):
        for i in range(self.warmup):
            step(i % n_sets)
        sync(self.device)
        flush = flush and (self.device.type == "cuda" or n_sets * set_bytes < 2 * self.cache)
        t0 = time.perf_counter()
        out = step(0)
        sync(self.device)
        del out
        reps = self._reps(time.perf_counter() - t0)
        if self.device.type == "cuda":
            return self._time_cuda(step, n_sets, reps, flush)
        times = []
        for r in range(reps):
            if flush:
                self._flush()
            start = time.perf_counter()
            out = step(r % n_sets)
            times.append((time.perf_counter() - start) * 1e3)
            del out
        return times

    def _time_cuda(self, step, n_sets, reps, flush):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        outs = None
        for r, (start, end) in enumerate(events):
            if flush:
                self._flush()
            start.record()
            outs = step(r % n_sets)
            end.record()
        del outs
        torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in events]


def copy_bandwidth(device):
    """Device copy bandwidth in GB/s (bytes read + bytes written), median of many copies."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        nbytes = int(min(1 << 30, free // 4))
    else:
        nbytes = 256 << 20
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = Timer(device, min_time=0.2, min_reps=10, max_reps=50)
    times = timer(lambda _: dst.copy_(src), 1, 2 * nbytes, flush=False)  # far larger than any cache
    del src, dst
    return 2 * nbytes / (float(np.median(times)) * 1e-3) / 1e9


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints a line to fd 2 at every profiler start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(step, device):
    """Peak bytes allocated during one call beyond what was allocated before it (the inputs),
    the outputs and gradient included. CPU: from the profiler's allocation events; None if
    they are not available."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = step(0)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    try:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = step(0)
            del out
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        current = peak = 0
        for e in events:
            current += e.nbytes()
            peak = max(peak, current)
        return int(peak) if events else None
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------
# The functions under test
# ------------------------------------------------------------------------------------------------
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

    def module(self, backend, C):
        key = (backend, C)
        if key not in self._modules:
            self._modules[key] = dbl_kernels.DistributionBalancedLoss(
                bench_data.stats_for(C), backend=backend, validate_labels=False).to(self.device)
        return self._modules[key]

    def dynamic(self, case):
        if self.compile_shapes == "auto":
            return case.N * case.C < self.static_from
        return self.compile_shapes == "dynamic"

    def get(self, backend, case):
        if backend == "eager":
            return self.module("reference", case.C)
        if backend != "compile":
            return self.module(backend, case.C)
        key = (case.group, None if self.dynamic(case) else case.N)
        if key != self._compiled_key:
            torch._dynamo.reset()
            reference = self.module("reference", case.C)

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


def make_step(fn, mode, sets, dynamic):
    """step(i): one call on input set i: the loss under no_grad (fwd), or the loss and
    d loss / d logits (fwd+bwd)."""
    grad = mode == "fwd+bwd"
    pairs = [(x.detach().requires_grad_(grad), y) for x, y in sets]
    if dynamic:  # marks live on the tensor objects the compiled function receives
        for x, y in pairs:
            torch._dynamo.maybe_mark_dynamic(x, 0)
            torch._dynamo.maybe_mark_dynamic(y, 0)
    if not grad:
        def step(i):
            x, y = pairs[i]
            with torch.no_grad():
                return fn(x, y)
    else:
        def step(i):
            x, y = pairs[i]
            loss = fn(x, y)
            (g,) = torch.autograd.grad(loss, x)
            return loss, g
    return step


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


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def n_input_sets(set_bytes, cache, mem_cap):
    """Enough input sets to overflow the cache twice over, 2 to 8 of them, within mem_cap bytes."""
    set_bytes = max(set_bytes, 1)
    if 2 * set_bytes > mem_cap:
        return 1
    return int(max(2, min(8, math.ceil(2 * cache / set_bytes), mem_cap // set_bytes)))


def measure(args, device, meta, progress):
    cases = order_cases([c for s in args.suite.split(",") for c in suite_cases(s.strip(), args.logit_dtypes)])
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
        base = dict(meta_record(meta), suite=case.suite, N=case.N, C=case.C, elements=case.N * case.C,
                    logits_dtype=case.logits_dtype, labels_dtype=case.labels_dtype, config=CONFIG,
                    mode=case.mode, bytes_moved=bytes_moved(case))
        over = args.budget_s and time.monotonic() - started > args.budget_s
        if over:
            records += [dict(base, backend=b, status="skipped: time budget") for b in backends]
            bar.update(len(backends))
            continue
        set_bytes = bytes_moved(Case(case.suite, case.N, case.C, case.logits_dtype, case.labels_dtype, "fwd"))
        if case.inputs_key != inputs_key:
            sets = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            n_sets = n_input_sets(set_bytes, timer.cache, mem_cap)
            sets = make_inputs(case, n_sets, device, args.seed)
            inputs_key = case.inputs_key
        try:
            reference = make_step(funcs.get("eager", case), case.mode, sets[:1], False)(0)
        except Exception:  # eager itself failed (out of memory): its record will say so
            reference = None
        for backend in backends:
            bar.set_postfix_str(f"{case.suite} {case.N}x{case.C} {case.logits_dtype}/{case.labels_dtype} "
                                f"{case.mode} {backend}")
            records.append(run_one(case, backend, funcs, sets, set_bytes, timer, device, reference, base))
            bar.update(1)
        del reference
        add_speedups(records)
        if args.out:
            write_outputs(records, meta, args.out, plot=False)
    bar.close()
    return records


def run_one(case, backend, funcs, sets, set_bytes, timer, device, reference, base):
    record = dict(base, backend=backend)
    dynamic = backend == "compile" and funcs.dynamic(case)
    record["compile_shapes"] = ("dynamic" if dynamic else "static") if backend == "compile" else None
    try:
        fn = funcs.get(backend, case)
        step = make_step(fn, case.mode, sets, dynamic)
        start = time.perf_counter()
        out = step(0)
        sync(device)
        record["first_call_s"] = round(time.perf_counter() - start, 4)
        record["max_rel_err"] = rel_err(out, reference) if reference is not None else None
        del out
        times = timer(step, len(sets), set_bytes)
        median = float(np.median(times))
        record.update(
            median_ms=median, p20_ms=float(np.percentile(times, 20)), p80_ms=float(np.percentile(times, 80)),
            reps=len(times), input_sets=len(sets), elements_per_s=case.N * case.C / (median * 1e-3),
            gbytes_per_s=record["bytes_moved"] / (median * 1e-3) / 1e9)
        record["roofline_fraction"] = record["gbytes_per_s"] / record["copy_gbytes_per_s"]
        record["peak_mem_bytes"] = peak_memory(step, device)
        record["status"] = "ok"
    except Exception as exc:  # one broken backend or an OOM must not sink the whole run
        record["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def add_speedups(records):
    def key(r):
        return (r["suite"], r["N"], r["C"], r["logits_dtype"], r["labels_dtype"], r["mode"])
    base = {}
    for r in records:
        if r["backend"] in BASELINES and r.get("median_ms"):
            base[(key(r), r["backend"])] = r["median_ms"]
    for r in records:
        for name in BASELINES:
            ref = base.get((key(r), name))
            r[f"speedup_vs_{name}"] = ref / r["median_ms"] if ref and r.get("median_ms") else None


def meta_record(meta):
    return {k: meta[k] for k in ("device", "device_name", "torch", "triton", "date", "copy_gbytes_per_s",
                                 "cpu_count")}


def collect_meta(device, args):
    return dict(
        device=device.type, device_name=device_name(device), short_name=short_name(device),
        torch=torch.__version__, triton=triton_version(), cuda=torch.version.cuda,
        python=platform.python_version(), dbl_kernels=getattr(dbl_kernels, "__version__", None),
        git=git_commit(), date=datetime.date.today().isoformat(), cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(), available_backends=dbl_kernels.available_backends(),
        auto_backend=auto_backend(device), copy_gbytes_per_s=None, suites=args.suite,
        compile_shapes=args.compile_shapes, static_from=args.static_from, cache_bytes=cache_bytes(device))


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------
def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = math.floor(math.log10(abs(value)))
        return f"{value:.{max(0, digits - 1 - magnitude)}f}"
    return str(value)


def _bytes(n):
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _case_key(r):
    return (r["suite"], r["C"], r["logits_dtype"], r["labels_dtype"], r["N"], r["mode"])


def best_fused(rows):
    fused = [r for r in rows if r["backend"] not in BASELINES and r.get("median_ms")]
    return min(fused, key=lambda r: r["median_ms"]) if fused else None


def pivot(records):
    """{case key: {backend: record}} in the order cases appear."""
    table = {}
    for r in records:
        table.setdefault(_case_key(r), {})[r["backend"]] = r
    return table


def summary_table(records, backends):
    """A markdown table: one row per case, one time column per backend, then the fastest fused
    backend's throughput, roofline fraction and speedups."""
    head = (["suite", "N", "C", "logits", "labels", "mode"] + [f"{b} ms" for b in backends]
            + ["best", "GB/s", "roofline", "× eager", "× compile", "peak mem"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rows in pivot(records).items():
        suite, C, ldt, labdt, N, mode = key
        cells = [suite, str(N), str(C), ldt, labdt, mode]
        for b in backends:
            r = rows.get(b)
            if r is None:
                cells.append("")
            elif r.get("median_ms") is not None:
                cells.append(_fmt(r["median_ms"]))
            else:
                cells.append("skipped" if "skipped" in (r.get("status") or "") else "error")
        best = best_fused(rows.values()) or min(
            (r for r in rows.values() if r.get("median_ms")), key=lambda r: r["median_ms"], default=None)
        if best is None:
            cells += ["–"] * 6
        else:
            cells += [best["backend"], _fmt(best["gbytes_per_s"]), _fmt(best["roofline_fraction"], 2),
                      _fmt(best.get("speedup_vs_eager")), _fmt(best.get("speedup_vs_compile")),
                      _bytes(best.get("peak_mem_bytes"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_rows(records, auto_name):
    """Per qualifying case (fwd+bwd, bf16 logits, uint8 labels, N*C >= 2^26): each fused
    backend against the targets, and whether "auto" picks the fastest."""
    rows = []
    for key, by_backend in pivot(records).items():
        suite, C, ldt, labdt, N, mode = key
        if mode != "fwd+bwd" or ldt != "bf16" or labdt != "uint8" or N * C < TARGET_ELEMENTS:
            continue
        fastest = best_fused(by_backend.values())
        for r in by_backend.values():
            if r["backend"] in BASELINES:
                continue
            ok = r.get("median_ms") is not None
            checks = {k: ok and (r.get(k) or 0) >= v for k, v in TARGETS.items()}
            rows.append(dict(N=N, C=C, backend=r["backend"], status=r.get("status"),
                             roofline_fraction=r.get("roofline_fraction"),
                             speedup_vs_compile=r.get("speedup_vs_compile"),
                             speedup_vs_eager=r.get("speedup_vs_eager"), checks=checks,
                             auto=auto_name, fastest=fastest["backend"] if fastest else None,
                             auto_is_fastest=bool(fastest) and fastest["backend"] == auto_name))
    return rows


def targets_table(records, auto_name):
    rows = targets_rows(records, auto_name)
    if not rows:
        return ""
    head = ["N", "C", "backend", "roofline (≥0.85)", "× compile (≥3)", "× eager (≥25)", "auto picks", "fastest"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def mark(name, digits):
            return f"{_fmt(r[name], digits)} {'✓' if r['checks'][name] else '✗'}"
        lines.append("| " + " | ".join([
            str(r["N"]), str(r["C"]), r["backend"], mark("roofline_fraction", 2), mark("speedup_vs_compile", 3),
            mark("speedup_vs_eager", 3), r["auto"], f"{r['fastest']}{' (auto)' if r['auto_is_fastest'] else ''}"])
            + " |")
    return "\n".join(lines)


def backends_in(records):
    seen = list(dict.fromkeys(r["backend"] for r in records))
    return [b for b in BASELINES if b in seen] + [b for b in seen if b not in BASELINES]


def render_summary(records, meta):
    backends = backends_in(records)
    errors = [r for r in records if (r.get("status") or "").startswith("error")]
    skipped = sum(1 for r in records if (r.get("status") or "").startswith("skipped"))
    worst = max((r["max_rel_err"] for r in records if r.get("max_rel_err") is not None), default=None)
    parts = [
        f"# dbl_kernels benchmark: {meta['device_name']}",
        "",
        f"- date {meta['date']}, device `{meta['device']}`, torch {meta['torch']}, triton {meta['triton']}, "
        f"CUDA {meta.get('cuda')}, Python {meta.get('python')}, dbl_kernels {meta.get('dbl_kernels')}"
        f" (git {meta.get('git')})",
        f"- {meta['cpu_count']} CPUs, {meta.get('torch_threads')} torch threads; measured copy bandwidth "
        f"{_fmt(meta.get('copy_gbytes_per_s'))} GB/s (bytes read + written)",
        f"- backends available: {', '.join(meta.get('available_backends') or [])}; `backend=\"auto\"` runs "
        f"**{meta.get('auto_backend')}** here",
        f"- suites: {meta.get('suites')}; loss config: {CONFIG} defaults (rebalance + focal + NTR, mean); "
        f"labels validation off; torch.compile: default mode, {meta.get('compile_shapes')} shapes "
        f"(auto: batch dimension dynamic below {meta.get('static_from') or DYNAMIC_BELOW:,} elements, "
        "one static graph per shape above)",
        "- times: median of many calls (20/80 percentiles in results.json), input sets rotated, caches flushed "
        "between calls on small shapes; GB/s counts logits + labels read and the gradient written once; "
        "roofline = GB/s / copy bandwidth; peak mem = bytes allocated during one call beyond the inputs",
        f"- largest deviation from eager over all runs: {_fmt(worst)} (relative; bf16 gradients round to 2^-8)",
        "",
        summary_table(records, backends),
    ]
    targets = targets_table(records, meta.get("auto_backend"))
    if targets:
        parts += ["", "## Targets (forward+backward, bf16 logits, uint8 labels, N·C ≥ 2^26)", "", targets]
    if skipped:
        parts += ["", f"{skipped} runs were skipped: the time budget ran out."]
    if errors:
        parts += ["", "## Errors", ""] + [
            f"- {r['backend']} {r['N']}x{r['C']} {r['logits_dtype']}/{r['labels_dtype']} {r['mode']}: {r['status']}"
            for r in errors]
    return "\n".join(parts) + "\n"


def short_table(records, meta):
    """A few lines for a terminal: per case, the fastest backend and its speedups."""
    lines = [f"{meta['device_name']} | torch {meta['torch']} | triton {meta['triton']} | {meta['date']} | "
             f"copy {_fmt(meta.get('copy_gbytes_per_s'))} GB/s | auto={meta.get('auto_backend')}",
             f"{'suite':10} {'N':>8} {'C':>8} {'dtypes':12} {'mode':8} {'best':8} {'ms':>8} {'roof':>5} "
             f"{'xeager':>7} {'xcomp':>6}"]
    for key, rows in pivot(records).items():
        suite, C, ldt, labdt, N, mode = key
        best = best_fused(rows.values()) or min(
            (r for r in rows.values() if r.get("median_ms")), key=lambda r: r["median_ms"], default=None)
        if best is None:
            status = next(iter(rows.values())).get("status") or ""
            lines.append(f"{suite:10} {N:>8} {C:>8} {ldt + '/' + labdt:12} {mode:8} {'-':8} {status[:40]}")
            continue
        lines.append(f"{suite:10} {N:>8} {C:>8} {ldt + '/' + labdt:12} {mode:8} {best['backend']:8} "
                     f"{_fmt(best['median_ms']):>8} {_fmt(best['roofline_fraction'], 2):>5} "
                     f"{_fmt(best.get('speedup_vs_eager')):>7} {_fmt(best.get('speedup_vs_compile')):>6}")
    return "\n".join(lines)


def plot_throughput(records, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ok = [r for r in records if r.get("elements_per_s")]
    if not ok:
        return False
    labels_dtype = "uint8" if any(r["labels_dtype"] == "uint8" for r in ok) else ok[0]["labels_dtype"]
    ok = [r for r in ok if r["labels_dtype"] == labels_dtype]
    dtypes = list(dict.fromkeys(r["logits_dtype"] for r in ok))
    modes = [m for m in MODES if any(r["mode"] == m for r in ok)]
    backends = backends_in(ok)
    colors = dict(zip(backends, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    markers = dict(zip(sorted({r["C"] for r in ok}), "os^Dv<>p"))
    fig, axes = plt.subplots(len(dtypes), len(modes), figsize=(6.2 * len(modes), 4.4 * len(dtypes)),
                             squeeze=False, sharex=True, sharey=True)
    for i, dt in enumerate(dtypes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for b in backends:
                for C, marker in markers.items():
                    pts = sorted((r["elements"], r["elements_per_s"]) for r in ok
                                 if r["backend"] == b and r["C"] == C and r["logits_dtype"] == dt
                                 and r["mode"] == mode)
                    if pts:
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, marker=marker, color=colors[b], linestyle="--" if b in BASELINES else "-",
                                linewidth=1.4, markersize=5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{mode}, {dt} logits, {labels_dtype} labels", fontsize=10)
            if i == len(dtypes) - 1:
                ax.set_xlabel("elements N·C")
            if j == 0:
                ax.set_ylabel("elements / s")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[b], linestyle="--" if b in BASELINES else "-", label=b) for b in backends]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="none", label=f"C={C:,}") for C, m in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), frameon=False, fontsize=9)
    fig.suptitle(f"dbl_kernels throughput: {meta['device_name']}, torch {meta['torch']}, {meta['date']}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    plt.close(fig)
    return True


def write_outputs(records, meta, out, plot=True):
    """results.json (the run's metadata rides on the first record under "meta"), results.csv,
    summary.md and, unless plot=False, throughput.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = [dict({k: r.get(k) for k in FIELDS}, **{"meta": meta} if i == 0 else {}) for i, r in enumerate(records)]
    _write(out / "results.json", json.dumps(payload, indent=1, default=_json_default) + "\n")
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: r.get(k) for k in FIELDS})
    _write(out / "results.csv", rows.getvalue())
    _write(out / "summary.md", render_summary(records, meta))
    if plot:
        plot_throughput(records, meta, out / "throughput.png")


def _write(path, text):
    """Write-then-rename: a run stopped mid-write (timeout) never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


def load_results(path):
    """(records, meta) from a results.json written by this program."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    records = json.loads(path.read_text())
    meta = next((r.pop("meta") for r in records if r.get("meta")), None)
    for r in records:
        r.pop("meta", None)
    if meta is None:  # a results.json trimmed by hand: rebuild what the reports need
        first = records[0] if records else {}
        meta = {k: first.get(k) for k in ("device", "device_name", "torch", "triton", "date", "cpu_count",
                                          "copy_gbytes_per_s")}
    return records, meta


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--suite", default="quick", help="quick, coco, openimages, xmc, targets, all (comma list)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<date>-<device>)")
    p.add_argument("--backends", default="all",
                   help="comma list out of eager, compile and the fused backends (default all)")
    p.add_argument("--logits-dtypes", default=None, help="comma list; default fp32 on cpu, fp32,bf16 on cuda")
    p.add_argument("--labels-dtypes", default="uint8,bool,float")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--compile-shapes", choices=("auto", "static", "dynamic"), default="auto",
                   help="torch.compile graphs: one per shape (static), one per C and dtypes with the batch "
                        "dimension dynamic, or static from --static-from elements up (auto)")
    p.add_argument("--static-from", type=int, default=DYNAMIC_BELOW,
                   help=f"with --compile-shapes auto: static graphs from this many elements (default {DYNAMIC_BELOW})")
    p.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per run (default "
                                                                  "0.2 cpu, 0.1 cuda)")
    p.add_argument("--min-reps", type=int, default=None)
    p.add_argument("--max-reps", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds; the rest is recorded as skipped")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, all cores); on a shared machine 1 "
                        "keeps other processes from stalling a parallel region")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="re-render summary.md / throughput.png from DIR/results.json; measure nothing")
    p.add_argument("--short", action="store_true", help="print the short table instead of the full one")
    args = p.parse_args(argv)
    if args.report is None:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA device")
        args.device = device
        args.logit_dtypes = (args.logits_dtypes or ("fp32" if device.type == "cpu" else "fp32,bf16")).split(",")
        for dt in args.logit_dtypes:
            if dt not in LOGIT_DTYPES:
                p.error(f"unknown logits dtype {dt!r}; choose from {list(LOGIT_DTYPES)}")
        args.label_dtypes = args.labels_dtypes.split(",")
        for dt in args.label_dtypes:
            if dt not in LABEL_DTYPES:
                p.error(f"unknown labels dtype {dt!r}; choose from {list(LABEL_DTYPES)}")
        args.modes = args.modes.split(",")
        if not set(args.modes) <= set(MODES):
            p.error(f"--modes takes {list(MODES)}")
        args.backends = args.backends.split(",")
        cuda = device.type == "cuda"
        args.min_time = args.min_time if args.min_time is not None else (0.1 if cuda else 0.2)
        args.min_reps = args.min_reps if args.min_reps is not None else 10
        args.max_reps = args.max_reps if args.max_reps is not None else (300 if cuda else 50)
    return args


def _progress(disabled):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if disabled or tqdm is None:
        class Quiet:
            def __init__(self, *a, **k):
                pass

            def update(self, n=1):
                pass

            def set_postfix_str(self, s):
                pass

            def close(self):
                pass
        return Quiet
    return lambda **kw: tqdm(dynamic_ncols=True, **kw)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        records, meta = load_results(args.report)
        write_outputs(records, meta, args.report, plot=not args.no_plot)
        print(short_table(records, meta) if args.short else render_summary(records, meta))
        return 0
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = collect_meta(device, args)
    if args.out is None:
        args.out = str(HERE / "results" / f"{meta['date']}-{meta['short_name']}")
    progress = _progress(args.no_progress)
    meta["copy_gbytes_per_s"] = copy_bandwidth(device)
    signal.signal(signal.SIGTERM, _interrupt)
    records = []
    try:
        records = measure(args, device, meta, progress)
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured", file=sys.stderr)
        records = _partial(args)
    add_speedups(records)
    write_outputs(records, meta, args.out, plot=not args.no_plot)
    print(short_table(records, meta) if args.short else render_summary(records, meta))
    print(f"\nwrote {args.out}/results.json, results.csv, summary.md"
          + ("" if args.no_plot else ", throughput.png"))
    return 0


def _interrupt(signum, frame):
    """`timeout` sends SIGTERM: end like Ctrl-C, so the outputs get what was measured so far."""
    raise KeyboardInterrupt


def _partial(args):
    try:
        records, _ = load_results(args.out)
        return records
    except Exception:
        return []


if __name__ == "__main__":
    sys.exit(main())
