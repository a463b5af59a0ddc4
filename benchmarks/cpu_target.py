"""The CPU performance target of the C++ kernel, measured in one run: forward + backward of the
DB-focal loss (the authors' COCO config) on fp32 logits, uint8 labels, N=4096, C=1000, for the
eager reference, ``torch.compile(reference)`` and the ``cpu`` backend.

    python benchmarks/cpu_target.py [--threads 2] [--rounds 7] [--json out.json]

The three are timed in interleaved rounds (each round: every backend once for ``--reps`` calls,
in rotating order), so a change in machine load hits them alike; the figure is the median over
rounds of the mean time per call. Each call rotates over input sets larger than the last-level
cache, so no backend is timed on data another left in cache. A call is a training step's:
``x.grad = None; loss = fn(x, y); loss.backward()``. Prints the figures; ``--json`` also writes them.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data  # noqa: E402
from harness import envinfo, timing  # noqa: E402

import dbl_kernels as dk  # noqa: E402


def make_sets(n, c, n_sets, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(bench_data.make_logits(n, c, torch.float32, "cpu", gen).requires_grad_(True),
             bench_data.make_labels(n, c, gen)) for _ in range(n_sets)]


def fwd_bwd(fn, sets):
    state = {"i": 0}

    def step():
        x, y = sets[state["i"] % len(sets)]
        state["i"] += 1
        x.grad = None
        loss = fn(x, y)
        loss.backward()
        return loss, x.grad
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--c", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=10, help="calls per backend per round")
    parser.add_argument("--sets", type=int, default=4, help="input sets rotated over")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    stats = bench_data.stats_for(args.c)
    reference = dk.DistributionBalancedLoss(stats, backend="reference", validate_labels=False)
    fused = dk.DistributionBalancedLoss(stats, backend="cpu", validate_labels=False)
    compiled = torch.compile(lambda x, y: reference(x, y), dynamic=False)
    sets = make_sets(args.n, args.c, args.sets)
    steps = {"eager": fwd_bwd(reference, sets), "compile": fwd_bwd(compiled, sets), "cpu": fwd_bwd(fused, sets)}

    # Agreement first (and warm-up: compilation, allocator, page faults).
    x, y = sets[0]
    outs = {}
    for name, fn in (("eager", reference), ("compile", compiled), ("cpu", fused)):
        for _ in range(3):
            steps[name]()
        x.grad = None
        loss = fn(x, y)
        loss.backward()
        outs[name] = (loss.detach(), x.grad)
    ref_loss, ref_grad = outs["eager"]
    for name in ("compile", "cpu"):
        loss, grad = outs[name]
        err = max(float((loss - ref_loss).abs() / ref_loss.abs()),
                  float((grad - ref_grad).norm() / ref_grad.norm()))
        if not err <= 1e-5:
            raise SystemExit(f"{name} deviates from the eager reference by {err:.3g}")

    names = list(steps)
    times = {name: [us * 1e-3 for us in v] for name, v in timing.interleaved(steps, args.rounds, args.reps).items()}
    med = {name: statistics.median(v) for name, v in times.items()}
    result = {
        "case": {"N": args.n, "C": args.c, "logits": "fp32", "labels": "uint8", "mode": "fwd+bwd",
                 "config": "coco-mlt DB-focal (rebalance, NTR, focal gamma=2)"},
        "date": envinfo.today(), "git": envinfo.git_commit(),
        "threads": torch.get_num_threads(), "rounds": args.rounds, "reps": args.reps,
        "torch": torch.__version__, "python": platform.python_version(), "cpu": envinfo.cpu_name(),
        "ms": med, "all_ms": times,
        "cpu_x_eager": med["eager"] / med["cpu"], "cpu_x_compile": med["compile"] / med["cpu"],
    }
    print(f"{args.n}x{args.c} fp32 fwd+bwd, {result['threads']} threads, median of {args.rounds} rounds:")
    for name in names:
        print(f"  {name:8s} {med[name]:8.2f} ms   (rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"  cpu backend: {result['cpu_x_eager']:.2f}x eager, {result['cpu_x_compile']:.2f}x compile "
          f"(targets: 20x and 5x, issue 14; 10x and 3x before)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
