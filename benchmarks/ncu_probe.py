#!/usr/bin/env python
"""One training step of a fused backend for the hardware profiler, and the reading of its report.

    ncu --clock-control none --profile-from-start off -k regex:fused_kernel --csv --page raw \\
        --log-file ncu_triton.csv --metrics ... python benchmarks/ncu_probe.py --backend triton
    python benchmarks/ncu_probe.py --summarize ncu_triton.csv --elements 83886080

The step (bf16 logits, uint8 labels, the authors' COCO config, forward + ``loss.backward()``) runs
a few times first so that compiling and autotuning stay outside the profiled range; only the last
step is between cudaProfilerStart/Stop. ``--summarize`` turns the raw CSV into per-element figures
(SASS thread instructions, MUFU, DRAM bytes) to set against static_check's model.
"""
import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# What ncu reads per kernel (--metrics); the summary divides the counters by the element count.
METRICS = ("gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,smsp__thread_inst_executed.sum,"
           "smsp__inst_executed.sum,smsp__inst_executed_pipe_xu.sum")
# The sections add throughput, issue-slot use, occupancy and the warp-stall breakdown.
SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "SchedulerStats", "ComputeWorkloadAnalysis")


def run_step(backend, n, c, warmup):
    import torch

    import bench_data
    import dbl_kernels as dk

    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    y = bench_data.make_labels(n, c, gen).to(device)
    x = bench_data.make_logits(n, c, torch.bfloat16, "cpu", gen).to(device).requires_grad_(True)
    loss_fn = dk.DistributionBalancedLoss(bench_data.stats_for(c), backend=backend, validate_labels=False).to(device)

    def step():
        x.grad = None
        loss_fn(x, y).backward()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"ncu_probe: {backend} {n} x {c} bf16/uint8, elements {n * c}")


def _number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def summarize(path, elements):
    """Per kernel of a `--csv --page raw` report: time, DRAM bytes and instructions per element."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu prefixes its own messages with ==
    rows = list(csv.reader(lines))
    if len(rows) < 3:
        return f"{path}: no kernel in the report"
    header, data = rows[0], rows[2:]  # rows[1] holds the units
    units = dict(zip(header, rows[1]))
    out = []
    for row in data:
        r = dict(zip(header, row))
        get = lambda name: _number(r.get(name, ""))  # noqa: E731
        line = [f"kernel {r.get('Kernel Name', '?')[:60]}"]
        t = get("gpu__time_duration.sum")
        if t is not None:
            line.append(f"time {t} {units.get('gpu__time_duration.sum', '')}")
        for name, label, scale in (("smsp__thread_inst_executed.sum", "SASS thread instr/elem", 1),
                                   ("smsp__inst_executed.sum", "warp instr/elem x 32", 32),
                                   ("smsp__inst_executed_pipe_xu.sum", "XU (MUFU) warp instr/elem x 32", 32),
                                   ("dram__bytes_read.sum", "DRAM read B/elem", 1),
                                   ("dram__bytes_write.sum", "DRAM write B/elem", 1)):
            v = get(name)
            if v is not None:
                unit = units.get(name, "")
                v *= {"Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}.get(unit, 1)
                line.append(f"{label} {v * scale / elements:.2f}")
        for name in header:
            if name.startswith("launch__") or "pct_of_peak" in name or ("stalled" in name and _number(
                    r.get(name, "")) not in (None, 0.0)):
                line.append(f"{name} {r.get(name)}")
        out.append("\n  ".join(line))
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="triton")
    p.add_argument("--n", type=int, default=1048576)
    p.add_argument("--c", type=int, default=80)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--summarize", default=None, help="a raw-page CSV written by ncu")
    p.add_argument("--elements", type=int, default=None, help="N*C of the profiled step (--summarize)")
    p.add_argument("--ncu-args", action="store_true", help="print the --metrics/--section arguments for ncu")
    args = p.parse_args(argv)
    if args.ncu_args:
        print(" ".join(["--metrics", METRICS] + [f"--section {s}" for s in SECTIONS]))
        return 0
    if args.summarize:
        print(summarize(args.summarize, args.elements or args.n * args.c))
        return 0
    run_step(args.backend, args.n, args.c, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
