#!/usr/bin/env python
"""Host time per call of the ``cpu`` backend against torch's BCE-with-logits, on the same tensors.

    python benchmarks/host_time.py [--shapes 1x80,256x80] [--rounds 40] [--calls 200] [--threads 1] [--out DIR]

At training batch sizes the loss is host-bound: what it costs is Python, dispatch and autograd
around a small kernel. This measures forward + ``loss.backward()`` as a training step runs it
(``x.grad = None; loss = fn(x, y); loss.backward()`` on a leaf x) for

  dbl             DistributionBalancedLoss.from_preset("coco-mlt", backend="cpu"): the authors'
                  COCO config, default options (labels checked on the CPU)
  dbl_unchecked   the same with validate_labels=False
  bce             F.binary_cross_entropy_with_logits(x, y, reduction="mean")

on fp32 logits and one float label tensor shared by all three (rows of the real COCO-MLT labels).
The three alternate in rounds of ``--calls`` back-to-back calls, the order rotating each round,
so a change in machine load hits them alike. Reported: the median over rounds of the µs per call,
and the ratio to bce (of the medians, and the median of the per-round ratios).

One torch thread by default: at these sizes no kernel gains from a second, and torch's
log_sigmoid_forward (inside BCE-with-logits) opens an OpenMP parallel region even for 80 elements,
which on a shared machine stalls for milliseconds whenever a thread is descheduled: that would
time the machine's load, not the call. ``--threads 0`` keeps torch's own choice.

Writes host_time.json and host_time.md into DIR (default ./dbl_bench/<date>-cpu-host, untracked).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench_data  # noqa: E402
from harness import envinfo, report, timing  # noqa: E402

import dbl_kernels as dk  # noqa: E402

VARIANTS = ("dbl", "dbl_unchecked", "bce")


def shapes_arg(text):
    """'1x80,256x80' -> [(1, 80), (256, 80)]; C must be 80, the COCO config's class count."""
    shapes = []
    for item in text.split(","):
        try:
            n, c = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes NxC pairs such as 1x80,256x80, got {item!r}") from None
        if n < 1 or c != 80:
            raise argparse.ArgumentTypeError(f"N must be >= 1 and C = 80 (the COCO config), got {item!r}")
        shapes.append((n, c))
    return shapes


def losses():
    def module(**kw):
        return dk.DistributionBalancedLoss.from_preset("coco-mlt", backend="cpu", **kw)
    return {"dbl": module(), "dbl_unchecked": module(validate_labels=False),
            "bce": lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="mean")}


def training_step(fn, x, y):
    def step():
        x.grad = None
        loss = fn(x, y)
        loss.backward()
    return step


def check_agreement(fns, x, y):
    """The cpu backend against the reference on these tensors: a fast wrong loss is no result."""
    reference = dk.DistributionBalancedLoss.from_preset("coco-mlt", backend="reference")
    xr = x.detach().clone().requires_grad_(True)
    ref_loss = reference(xr, y)
    ref_loss.backward()
    for name in ("dbl", "dbl_unchecked"):
        xf = x.detach().clone().requires_grad_(True)
        loss = fns[name](xf, y)
        loss.backward()
        err = max(float((loss - ref_loss).abs().detach() / ref_loss.abs().detach()),
                  float((xf.grad - xr.grad).abs().max() / xr.grad.abs().max()))
        if not err <= 1e-5:
            raise SystemExit(f"{name} deviates from the reference by {err:.3g} at {tuple(x.shape)}")


def measure_shape(n, c, args, fns):
    gen = torch.Generator().manual_seed(args.seed)
    y = bench_data.make_labels(n, c, gen).float()
    x = bench_data.make_logits(n, c, torch.float32, "cpu", gen).requires_grad_(True)
    check_agreement(fns, x, y)
    steps = {name: training_step(fns[name], x, y) for name in VARIANTS}
    timing.interleaved(steps, rounds=2, calls=args.calls)  # warm-up: allocator, caches, first-call paths
    rounds = timing.interleaved(steps, rounds=args.rounds, calls=args.calls)
    med = {name: statistics.median(v) for name, v in rounds.items()}
    paired = {name: statistics.median(a / b for a, b in zip(rounds[name], rounds["bce"]))
              for name in VARIANTS if name != "bce"}
    return dict(N=n, C=c, us_per_call=med, p20_p80_us={name: timing.percentiles(v)[1:] for name, v in rounds.items()},
                ratio_vs_bce={name: med[name] / med["bce"] for name in VARIANTS if name != "bce"},
                median_round_ratio_vs_bce=paired, rounds_us=rounds)


def render(result):
    lines = [f"# Host time per call: cpu backend vs BCE-with-logits ({result['date']})", "",
             f"{result['cpu']}, {result['threads']} torch thread(s), torch {result['torch']}, "
             f"dbl_kernels {result['dbl_kernels']} (git {result['git']}); load average {result['load_before']} "
             f"before, {result['load_after']} after. Forward + `loss.backward()`, fp32 logits, float labels "
             f"(the same tensors for all), authors' COCO config; {result['rounds']} interleaved rounds of "
             f"{result['calls']} calls; median µs per call (20-80 percentile of the rounds).", "",
             "| N × C | dbl µs | dbl_unchecked µs | bce µs | dbl / bce | dbl_unchecked / bce | "
             "per-round dbl / bce |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result["shapes"]:
        us, q = s["us_per_call"], s["p20_p80_us"]
        cells = [f"{s['N']:,} × {s['C']}"] + [f"{report.fmt(us[v])} ({report.fmt(q[v][0])}-{report.fmt(q[v][1])})"
                                              for v in VARIANTS]
        cells += [report.fmt(s["ratio_vs_bce"]["dbl"]), report.fmt(s["ratio_vs_bce"]["dbl_unchecked"]),
                  report.fmt(s["median_round_ratio_vs_bce"]["dbl"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "`dbl`: default options (labels checked on the CPU); `dbl_unchecked`: validate_labels=False. "
              "Target: dbl / bce ≤ 1.5. On a shared machine the load average above says how contended the "
              "rounds were; interleaving spreads that over all three alike.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=shapes_arg, default="1x80,256x80", help="comma list of NxC (C = 80)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--calls", type=int, default=200, help="back-to-back calls per variant per round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default ./dbl_bench/<date>-cpu-host)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        p.error("--rounds and --calls must be at least 1")
    if "cpu" not in dk.available_backends():
        p.error(f"the cpu backend is not built here (available: {dk.available_backends()}); "
                "build the extension: pip install --no-build-isolation -e .")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path.cwd() / "dbl_bench" / f"{envinfo.today()}-cpu-host"
    result = dict(date=envinfo.today(), git=envinfo.git_commit(), cpu=envinfo.cpu_name(), cpu_count=os.cpu_count(),
                  threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                  dbl_kernels=dk.__version__, rounds=args.rounds, calls=args.calls,
                  load_before=envinfo.load_average())
    fns = losses()
    result["shapes"] = [measure_shape(n, c, args, fns) for n, c in args.shapes]
    result["load_after"] = envinfo.load_average()
    out.mkdir(parents=True, exist_ok=True)
    report.write_text(out / "host_time.json", json.dumps(result, indent=1) + "\n")
    text = render(result)
    report.write_text(out / "host_time.md", text)
    print(text)
    print(f"wrote {out}/host_time.json, host_time.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
