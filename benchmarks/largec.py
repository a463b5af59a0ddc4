#!/usr/bin/env python
"""Large label spaces: the dense path (logits materialised, then the loss) against the fused
classifier (``linear_distribution_balanced_loss``, chunks of classes), forward + backward.

    python benchmarks/largec.py [--device cpu|cuda] [--n 512] [--hidden 768]
                                [--classes 10000,100000,1000000] [--dtype fp32|bf16|fp16]
                                [--backend auto] [--chunk-size K] [--repeats 3] [--out DIR]

Both paths get the same hidden (N x H), classifier weight (C x H) and bias, the authors' COCO-MLT
loss options and long-tailed labels (a few positives per row, about 1% unknown); the dense path
takes them as an N x C uint8 matrix (what it needs), the fused classifier as CSR. Each path runs
in its own fresh process, so neither sees the other's allocator state.

Peak extra memory: what the forward + backward allocates above its inputs, less the gradients it
returns (hidden.grad, weight.grad, bias.grad: both paths must produce them). On the CPU it is
the process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
before the call) above the resident set before it, with glibc told to return every block of
64 KiB or more to the system when freed (``MALLOC_MMAP_THRESHOLD_``) so the resident set follows
the live tensors; on CUDA ``torch.cuda.max_memory_allocated`` above the allocated bytes before.
Time: the median of ``--repeats`` calls after one warm-up call.

Writes largec.json, summary.md and memory.png (peak extra memory against C; matplotlib) into
DIR (default ``./dbl_bench/<date>-<device>-largec/``) and prints the summary.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import envinfo  # noqa: E402

PATHS = ("dense", "fused")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_MMAP_THRESHOLD = str(64 << 10)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--n", type=int, default=512, help="batch rows N")
    p.add_argument("--hidden", type=int, default=768, help="features H")
    p.add_argument("--classes", default="10000,100000,1000000", help="comma list of C")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="hidden, weight and logits")
    p.add_argument("--backend", default="auto", help="the loss backend of both paths")
    p.add_argument("--chunk-size", type=int, default=None, help="the fused classifier's (default: its own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--child", choices=PATHS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-c", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# One measurement, in a fresh process.
# ---------------------------------------------------------------------------------------------
def _status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


class _CpuPeak:
    def start(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        self.before = _status_bytes("VmRSS")

    def extra(self):
        return _status_bytes("VmHWM") - self.before


class _CudaPeak:
    def __init__(self, torch, device):
        self.torch, self.device = torch, device

    def start(self):
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.reset_peak_memory_stats(self.device)
        self.before = self.torch.cuda.memory_allocated(self.device)

    def extra(self):
        self.torch.cuda.synchronize(self.device)
        return self.torch.cuda.max_memory_allocated(self.device) - self.before


def make_inputs(torch, n_rows, n_hidden, n_classes, dtype, device, seed):
    """hidden, weight, bias (leaves), CSR labels, class counts: generated in place (no temporaries
    that would raise the high-water mark before the measurement)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.empty(n_rows, n_hidden, dtype=dtype).normal_(generator=g).to(device).requires_grad_()
    weight = torch.empty(n_classes, n_hidden, dtype=dtype).normal_(0, n_hidden ** -0.5, generator=g)
    weight = weight.to(device).requires_grad_()
    bias = torch.zeros(n_classes, dtype=dtype, device=device, requires_grad=True)
    # Long tail: class j drawn with probability ~ 1 / (j + 10); 1 to 8 labels per row.
    p = 1.0 / (torch.arange(n_classes, dtype=torch.float64) + 10.0)
    per_row = torch.randint(1, 9, (n_rows,), generator=g)
    cols = [torch.multinomial(p, int(k), replacement=False, generator=g).sort().values for k in per_row]
    values = [torch.where(torch.rand(len(c), generator=g) < 0.01, -1.0, 1.0) for c in cols]
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(per_row, 0)
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        labels = torch.sparse_csr_tensor(crow, torch.cat(cols), torch.cat(values), (n_rows, n_classes),
                                         check_invariants=True)
    counts = torch.bincount(torch.cat(cols), minlength=n_classes).double() * 20 + 1
    return hidden, weight, bias, labels.to(device), counts.numpy()


def child(args):
    import torch

    import dbl_kernels

    device = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    hidden, weight, bias, labels, counts = make_inputs(torch, args.n, args.hidden, args.child_c, dtype, device,
                                                       args.seed)
    stats = dbl_kernels.ClassStats(counts, train_num=float(counts.sum()) / 4)
    if args.child == "dense":
        dense = labels.to_dense().to(torch.int8)  # 1, 0 and -1 (unknown) in one byte each
        labels = None
        loss_fn = dbl_kernels.DistributionBalancedLoss(stats, backend=args.backend).to(device)

        def step():
            return loss_fn(torch.nn.functional.linear(hidden, weight, bias), dense)
    else:
        def step():
            return dbl_kernels.linear_distribution_balanced_loss(hidden, weight, labels, stats, bias,
                                                                 chunk_size=args.chunk_size, backend=args.backend)
    leaves = (hidden, weight, bias)

    def call():
        for t in leaves:
            t.grad = None
        loss = step()
        loss.backward()
        return loss

    peak = _CpuPeak() if device.type == "cpu" else _CudaPeak(torch, device)
    call()  # warm-up: thread pools, kernels, the autotuner
    for t in leaves:
        t.grad = None
    peak.start()
    loss = call()
    out_bytes = sum(t.grad.numel() * t.grad.element_size() for t in leaves)
    extra = peak.extra() - out_bytes
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    record = dict(path=args.child, C=args.child_c, N=args.n, H=args.hidden, dtype=args.dtype,
                  backend=args.backend, chunk_size=args.chunk_size, peak_extra_bytes=int(extra),
                  grad_bytes=int(out_bytes), time_s=statistics.median(times), times_s=times,
                  loss=float(loss), grad_sums=[float(t.grad.double().sum()) for t in leaves])
    print("RESULT " + json.dumps(record))


def run_child(args, path, n_classes):
    cmd = [sys.executable, __file__, "--child", path, "--child-c", str(n_classes), "--device", args.device,
           "--n", str(args.n), "--hidden", str(args.hidden), "--dtype", args.dtype, "--backend", args.backend,
           "--repeats", str(args.repeats), "--seed", str(args.seed)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=_MMAP_THRESHOLD)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(path=path, C=n_classes, error=" | ".join(tail) or f"exit {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------
# The run and its report.
# ---------------------------------------------------------------------------------------------
def pairs(records):
    """{C: {path: record}} of the records without errors."""
    out = {}
    for r in records:
        if "error" not in r:
            out.setdefault(r["C"], {})[r["path"]] = r
    return out


def summary(meta, records):
    lines = [f"# largec: dense path vs fused classifier, forward + backward ({meta['device_name']}, "
             f"torch {meta['torch']}, {meta['date']}, commit {meta['git']})", "",
             f"N = {meta['N']}, H = {meta['H']}, {meta['dtype']}, backend {meta['backend']}, "
             f"{meta['torch_threads']} threads; peak extra memory excludes the returned gradients.", "",
             "| C | dense MiB | fused MiB | memory ratio | dense s | fused s | time ratio | max rel. diff |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c, by in sorted(pairs(records).items()):
        if set(by) != set(PATHS):
            continue
        d, f = by["dense"], by["fused"]
        diff = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip([d["loss"], *d["grad_sums"]],
                                                                   [f["loss"], *f["grad_sums"]]))
        lines.append(f"| {c:,} | {d['peak_extra_bytes'] / 2**20:.1f} | {f['peak_extra_bytes'] / 2**20:.1f} | "
                     f"{f['peak_extra_bytes'] / max(d['peak_extra_bytes'], 1):.3f} | {d['time_s']:.3f} | "
                     f"{f['time_s']:.3f} | {f['time_s'] / d['time_s']:.3f} | {diff:.1e} |")
    for r in records:
        if "error" in r:
            lines.append(f"\n{r['path']} at C = {r['C']:,} failed: {r['error']}")
    return "\n".join(lines) + "\n"


def plot(records, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in PATHS:
        rows = sorted((c, by[name]["peak_extra_bytes"] / 2**20) for c, by in pairs(records).items()
                      if name in by and by[name]["peak_extra_bytes"] > 0)  # a log axis (tiny runs measure 0)
        if rows:
            ax.plot(*zip(*rows), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="classes C", ylabel="peak extra memory (MiB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    import torch

    device = torch.device(args.device)
    classes = [int(c) for c in args.classes.split(",") if c]
    meta = dict(device=device.type, device_name=envinfo.device_name(device), torch=torch.__version__,
                triton=envinfo.triton_version(), git=envinfo.git_commit(), date=envinfo.today(),
                torch_threads=torch.get_num_threads(), cpu_load=envinfo.load_average(), N=args.n, H=args.hidden,
                dtype=args.dtype, backend=args.backend, chunk_size=args.chunk_size, classes=classes)
    records = []
    for n_classes in classes:
        for path in PATHS:
            records.append(run_child(args, path, n_classes))
            print(json.dumps(records[-1]), flush=True)
    out = Path(args.out) if args.out else envinfo.default_out(device).with_name(envinfo.default_out(device).name + "-largec")
    out.mkdir(parents=True, exist_ok=True)
    (out / "largec.json").write_text(json.dumps(dict(meta=meta, records=records), indent=1) + "\n")
    text = summary(meta, records)
    (out / "summary.md").write_text(text)
    plot(records, out / "memory.png")
    print(text)
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
