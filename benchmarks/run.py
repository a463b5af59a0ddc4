#!/usr/bin/env python
"""Throughput and memory of every available dbl_kernels backend against eager, torch.compile and BCE.

    python benchmarks/run.py [--device cpu|cuda] [--suite quick|coco|openimages|xmc|targets|perf|asl|all]
                             [--losses db-focal,asl] [--out DIR]

Suites (comma-separated lists work, e.g. ``--suite targets,coco``):
  quick       a few small shapes (under a minute on two CPU cores)
  coco        C = 80, N 256 .. 65,536, rows of the real COCO-MLT label matrix
  openimages  C = 9,605, N 256 .. 4,096, long-tailed sparse labels
  xmc         C = 131,072 and 1,048,576, N 16 .. 256, long-tailed sparse labels
  targets     one shape per label space with N*C >= 2^26, forward+backward only
  perf        three targets shapes and 256 x 80, forward+backward (device_check.sh's first pass)
  asl         C = 80 (N 256 .. 65,536) and 9,605 (N 64, 1,024), forward+backward, for db-focal and asl
  all         coco + openimages + xmc

Losses (``--losses``, a comma list; default: db-focal, and both for the asl suite):
  db-focal    DistributionBalancedLoss with the authors' COCO-MLT config; eager = its reference backend
  asl         AsymmetricLoss at Ridnik et al.'s defaults (gamma_neg 4, gamma_pos 1, clip 0.05, summed);
              eager and compile run the paper's formula in PyTorch ops (harness/measure.py:
              asl_formula), given float labels made beforehand. Until the kernels compute asymmetric
              focusing the fused backends run the reference for it (marked in the tables)

Backends: ``eager`` (the reference backend, eager mode), ``compile`` (``torch.compile`` of a function
calling the reference backend), ``bce`` (torch's binary_cross_entropy_with_logits, the host-time
yardstick) and every fused backend ``dbl_kernels.available_backends()`` lists for the device
("triton" is skipped on the CPU: the interpreter is not a benchmark). All are measured in the same
run, through the public API, with the authors' COCO-MLT loss config (or ASL's). Each row has the
user-visible time, the host time per call and, on CUDA, the device time from CUDA-graph replay
(docs/performance.md explains the three).

Writes results.json (a list of records), results.csv, summary.md and throughput.png into DIR
(default ``./dbl_bench/<date>-<device>/``, untracked; commit results with an explicit
``--out benchmarks/results/...``) and prints the summary table.
``--report DIR`` re-renders those files from DIR/results.json without measuring (no torch needed).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import report  # noqa: E402
from harness.cases import BASELINES, DYNAMIC_BELOW, LABEL_DTYPES, LOGIT_DTYPES, LOSSES, MODES, SUITES  # noqa: E402

FUSED = ("cpu", "cuda", "triton")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--suite", default="quick", help=f"{', '.join(SUITES)} (comma list)")
    p.add_argument("--losses", default=None,
                   help=f"comma list out of {', '.join(LOSSES)}: measure every suite's shapes with each "
                        "(default: db-focal; the asl suite both)")
    p.add_argument("--out", default=None, help="output folder (default ./dbl_bench/<date>-<device>)")
    p.add_argument("--backends", default="all",
                   help="comma list out of eager, compile, bce and the fused backends (default all)")
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
    p.add_argument("--no-device-time", action="store_true",
                   help="CUDA: skip the CUDA-graph device time (rows keep user-visible and host time)")
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
    if args.report is not None:
        return args, p
    args.logit_dtypes = _choices(p, "--logits-dtypes", args.logits_dtypes, LOGIT_DTYPES)
    args.label_dtypes = _choices(p, "--labels-dtypes", args.labels_dtypes, LABEL_DTYPES)
    args.modes = _choices(p, "--modes", args.modes, MODES)
    args.backends = _choices(p, "--backends", args.backends, ("all",) + BASELINES + FUSED)
    args.losses = _choices(p, "--losses", args.losses, LOSSES)
    _choices(p, "--suite", args.suite.replace(" ", ""), SUITES + ("smoke",))
    return args, p


def _choices(parser, flag, value, allowed):
    """A comma list checked against allowed (None stays None: the device picks the default)."""
    if value is None:
        return None
    items = value.split(",")
    for item in items:
        if item not in allowed:
            parser.error(f"{flag}: unknown value {item!r}; choose from {', '.join(allowed)}")
    return items


def _device_defaults(args, parser):
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device; use --device cpu")
    cuda = device.type == "cuda"
    args.device = device
    args.logit_dtypes = args.logit_dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    args.min_time = args.min_time if args.min_time is not None else (0.1 if cuda else 0.2)
    args.min_reps = args.min_reps if args.min_reps is not None else 10
    args.max_reps = args.max_reps if args.max_reps is not None else (300 if cuda else 50)
    if args.threads:
        torch.set_num_threads(args.threads)
    from harness.envinfo import fused_backends

    missing = [b for b in args.backends if b in FUSED and b not in fused_backends(device)]
    if missing:
        print(f"--backends: {', '.join(missing)} not available on {device.type} here; measuring the rest",
              file=sys.stderr)
    return device


class _NoBar:
    """Stands in for tqdm with --no-progress where tqdm is not installed (the GPU image)."""

    def __init__(self, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def _progress(disabled):
    try:
        from tqdm import tqdm
    except ImportError:
        if not disabled:
            raise SystemExit("run.py shows its progress with tqdm: pip install tqdm, or pass --no-progress")
        return _NoBar
    return lambda **kw: tqdm(dynamic_ncols=True, disable=disabled, **kw)


def main(argv=None):
    args, parser = parse_args(argv)
    if args.report:
        records, meta = report.load_results(args.report)
        report.write_outputs(records, meta, args.report, plot=not args.no_plot)
        print(report.short_table(records, meta) if args.short else report.render_summary(records, meta))
        return 0
    from harness import envinfo, measure, timing

    device = _device_defaults(args, parser)
    meta = envinfo.collect_meta(device, args)
    if args.out is None:
        args.out = str(envinfo.default_out(device))
    meta["copy_gbytes_per_s"] = timing.copy_bandwidth(device)
    signal.signal(signal.SIGTERM, _interrupt)
    records = []
    try:
        records = measure.measure(args, device, meta, _progress(args.no_progress))
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured", file=sys.stderr)
        records = _partial(args)
    report.add_speedups(records)
    report.write_outputs(records, meta, args.out, plot=not args.no_plot)
    print(report.short_table(records, meta) if args.short else report.render_summary(records, meta))
    print(f"\nwrote {args.out}/results.json, results.csv, summary.md"
          + ("" if args.no_plot else ", throughput.png"))
    return 0


def _interrupt(signum, frame):
    """`timeout` sends SIGTERM: end like Ctrl-C, so the outputs get what was measured so far."""
    raise KeyboardInterrupt


def _partial(args):
    try:
        records, _ = report.load_results(args.out)
        return records
    except Exception:
        return []


if __name__ == "__main__":
    sys.exit(main())
