#!/usr/bin/env python
"""The README's performance section and docs/performance.md, generated from committed results.

    python benchmarks/readme_tables.py            # rewrite both from benchmarks/results/*/results.json
    python benchmarks/readme_tables.py --check    # exit 1 if either is out of date

Takes the newest CPU and the newest GPU result folder (by date in the records, then folder name),
writes a compact forward+backward table of each, with device, versions, date and the plot, between
``<!-- perf:start -->`` and ``<!-- perf:end -->`` in README.md, and the full tables of every
committed folder into docs/performance.md. Numbers are never typed by hand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import report  # noqa: E402  (neither torch nor dbl_kernels: tables render anywhere)

START, END = "<!-- perf:start -->", "<!-- perf:end -->"
MAX_ROWS = 12


def find_results(results_dir):
    """[(folder, records, meta)] of every results.json under results_dir, oldest first."""
    found = []
    paths = sorted(Path(results_dir).glob("*/results.json")) + sorted(Path(results_dir).glob("*/*/results.json"))
    for path in paths:
        try:
            records, meta = report.load_results(path)
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if records:
            found.append((path.parent, records, meta))
    found.sort(key=lambda item: (item[2].get("date") or "", str(item[0])))
    return found


def latest_by_device(found):
    latest = {}
    for folder, records, meta in found:
        kind = "gpu" if meta.get("device") == "cuda" else "cpu"
        latest[kind] = (folder, records, meta)
    return latest


def compact_rows(records):
    """Forward+backward rows, uint8 labels, the main logits dtype (bf16 where measured), one per
    shape (a named suite preferred over quick), ordered by C then N, at most MAX_ROWS spread
    over the shapes."""
    rows = [r for r in records if r["mode"] == "fwd+bwd" and r["labels_dtype"] == "uint8"]
    dtypes = {r["logits_dtype"] for r in rows}
    main = "bf16" if "bf16" in dtypes else "fp32"
    table = {}
    for key, by_backend in report.pivot([r for r in rows if r["logits_dtype"] == main]).items():
        suite, C, _, _, N, _ = key
        if (N, C) not in table or table[(N, C)][0] == "quick":
            table[(N, C)] = (suite, by_backend)
    shapes = sorted(table, key=lambda nc: (nc[1], nc[0]))
    if len(shapes) > MAX_ROWS:
        step = (len(shapes) - 1) / (MAX_ROWS - 1)
        shapes = [shapes[round(i * step)] for i in range(MAX_ROWS)]
    return main, [(N, C, table[(N, C)][1]) for N, C in shapes]


def compact_table(records):
    main, rows = compact_rows(records)
    backends = report.backends_in(records)
    host = report.has_field(records, "host_ratio_vs_bce")
    head = (["N × C"] + [f"{b} ms" for b in backends] + ["best", "× eager", "× compile", "roofline"]
            + (["host × bce"] if host else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for N, C, by_backend in rows:
        cells = [f"{N:,} × {C:,}"]
        for b in backends:
            r = by_backend.get(b)
            cells.append(report.fmt(r.get("median_ms")) if r and r.get("median_ms") else "–")
        best = report.best_fused(by_backend.values())
        if best is None:
            cells += ["–"] * (len(head) - len(cells))
        else:
            cells += [best["backend"], report.fmt(best.get("speedup_vs_eager")),
                      report.fmt(best.get("speedup_vs_compile")), report.fmt(best.get("roofline_fraction"), 2)]
            cells += [report.fmt(best.get("host_ratio_vs_bce"))] if host else []
        lines.append("| " + " | ".join(cells) + " |")
    return main, "\n".join(lines)


def heading(kind, meta):
    return (f"{kind.upper()}: {meta.get('device_name')}, torch {meta.get('torch')}, triton {meta.get('triton')}, "
            f"{meta.get('date')}")


def time_note(records):
    """Results with the time split say which time the roofline uses; older ones render as before."""
    if report.has_field(records, "device_us"):
        return " (user-visible); roofline from the device time (CUDA-graph replay)"
    if report.has_field(records, "host_us"):
        return "; host × bce = host time per call over BCE-with-logits"
    return ""


def device_section(kind, folder, records, meta, link_prefix, level="###"):
    main, table = compact_table(records)
    rel = f"{link_prefix}{folder.relative_to(ROOT).as_posix()}" if folder.is_relative_to(ROOT) else str(folder)
    fused = [b for b in report.backends_in(records) if b not in report.BASELINES]
    threads = f" with {meta['torch_threads']} torch thread(s)" if kind == "cpu" and meta.get("torch_threads") else ""
    lines = [f"{level} {heading(kind, meta)}", "",
             f"Forward + backward, {main} logits, uint8 labels, authors' COCO-MLT loss config; median ms per call"
             f"{threads}{time_note(records)}. "
             f"Copy bandwidth {report.fmt(meta.get('copy_gbytes_per_s'))} GB/s; roofline = (logits + labels + "
             f"gradient bytes) / time / copy bandwidth. `backend=\"auto\"` runs **{meta.get('auto_backend')}** here. "
             f"Full table: [{rel}/summary.md]({rel}/summary.md).", ""]
    if not fused:
        lines += ["No fused backend was built for this run: only the baselines were measured.", ""]
    lines += [table, "", f"![throughput on {meta.get('device_name')}]({rel}/throughput.png)", ""]
    return "\n".join(lines)


def readme_block(latest):
    parts = ["## Performance", "",
             "Generated by `python benchmarks/readme_tables.py` from the newest committed results in "
             "[`benchmarks/results/`](benchmarks/results/); method, every shape and dtype in "
             "[docs/performance.md](docs/performance.md). Re-run on your machine, in the environment "
             "`bash scripts/test.sh` sets up, with `.venv/bin/python benchmarks/run.py --suite coco` "
             "(results go to `./dbl_bench/`; host time per call against torch's BCE: "
             "`.venv/bin/python benchmarks/host_time.py`; GPU: `bash benchmarks/device_check.sh`).", ""]
    for kind in ("gpu", "cpu"):
        if kind in latest:
            parts.append(device_section(kind, *latest[kind], link_prefix=""))
        else:
            parts += [f"### {kind.upper()}", "", f"No {kind.upper()} result committed yet.", ""]
    return "\n".join(parts).rstrip() + "\n"


METHOD = """## Method

`python benchmarks/run.py --device cpu|cuda --suite quick|coco|openimages|xmc|targets|perf|all` measures \
every backend `dbl_kernels.available_backends()` lists for the device, plus three baselines measured in \
the same run: `eager` (the pure-PyTorch reference backend), `compile` (`torch.compile` of a function \
calling it) and `bce` (torch's `binary_cross_entropy_with_logits(x, y_float, reduction="mean")`, a \
different and cheaper loss: the yardstick for host time). Each shape runs forward only (`fwd`, under \
`torch.no_grad()`) and forward + backward (`fwd+bwd`) as a training step runs it: \
`x.grad = None; loss = fn(x, y); loss.backward()` on a leaf `x`.

Three times per row, because a call's cost is split between the host (Python, dispatch, autograd, \
launches) and the device, and at small shapes the host dominates:

| field | what | how |
| --- | --- | --- |
| `median_ms` (user-visible) | what a training loop sees | GPU: rounds of back-to-back calls between two CUDA events, per call, so a call that keeps the GPU waiting on the host is charged for it; CPU: wall clock around each call |
| `host_us` | the host's cost of one call | back-to-back calls, the clock read when the last call returns, one sync per round; on the CPU the wall time per call with warm caches. Every row has it |
| `device_us` (GPU) | the GPU's own time | `step` captured K times (K = 2..64, about 10 ms of work) in a `torch.cuda.CUDAGraph` after a warm-up on a side stream, on static inputs; the graph replayed between two CUDA events, divided by K. A backend that cannot be captured records why in `device_timing` and has no device time |

`host_ratio_vs_bce` = `host_us` / the `bce` row's `host_us` at the same shape and mode; \
`benchmarks/host_time.py` measures the CPU figure with the three interleaved in one process \
(1 × 80 and 256 × 80; results in `benchmarks/results/*-cpu-host/`). On a shared CPU, compare host times \
with one torch thread (`--threads 1`, host_time.py's default): torch's BCE-with-logits opens an OpenMP \
parallel region even for 80 elements, which stalls for milliseconds whenever a thread is descheduled.

- Labels as in real data: rows of the COCO-MLT training label matrix for C = 80; sparse rows with a \
Zipf-like class frequency (and matching class statistics) for Open Images (C = 9,605) and extreme \
multi-label spaces (C = 131,072 and 1,048,576).
- Calls: warm-up, then many calls (at least 0.1 s on GPU, 0.2 s on CPU); median and 20/80 percentiles. \
Several input sets rotate. CPU: the last-level cache is flushed before calls whose inputs would fit in it. \
GPU: no L2 flush (inside a loop or a graph it would be timed with the call); the large shapes are many \
times the L2, and small ones stay L2-resident as the logits a classifier layer has just written would.
- Roofline: the device copy bandwidth is measured in the same run (a large device copy, bytes read + \
written); `roofline_fraction` = (logits + labels + gradient bytes) / time / that bandwidth, with the \
device time where there is one (`roofline_basis`), else the user-visible time. Speedups \
(`speedup_vs_eager`, `speedup_vs_compile`) compare user-visible times; `device_speedup_vs_compile` \
device times.
- Triton: `autotune_config` holds the configuration Triton's autotuner chose for the case (read from \
the autotuner's cache; the package does not expose it, so it is null where that cannot be read).
- Peak memory: bytes allocated during one call beyond the inputs (outputs and gradient included); GPU \
from `torch.cuda.max_memory_allocated`, CPU from the profiler's allocation events.
- Every backend's loss and gradient are compared with eager's on the first input set \
(`max_rel_err` in results.json; none for `bce`, another loss).
- torch.compile runs in its default mode; below 2^22 elements one graph per C and dtypes serves every \
batch size (batch dimension dynamic), above it one static graph per shape.
- Results committed before these fields existed (no `host_us`) were timed differently: GPU with CUDA \
events around each call and the L2 flushed before each, forward + backward with \
`torch.autograd.grad`; their tables show user-visible time only.

Targets (GPU, forward + backward, bf16 logits + uint8 labels, N·C ≥ 2^26): ≥ 85% of copy bandwidth, \
≥ 3× `torch.compile`, ≥ 25× eager (see the `targets` suite)."""


def performance_doc(found, latest):
    parts = [
        "# Performance", "",
        "<!-- generated by benchmarks/readme_tables.py from benchmarks/results/*/results.json; do not edit -->", "",
        METHOD, "",
    ]
    for kind in ("gpu", "cpu"):
        if kind not in latest:
            parts += [f"## {kind.upper()}", "", f"No {kind.upper()} result committed yet.", ""]
            continue
        folder, records, meta = latest[kind]
        parts.append(device_section(kind, folder, records, meta, link_prefix="../", level="##"))
        parts += ["### All measurements", "", report.summary_table(records, report.backends_in(records)), ""]
        split = report.time_split_table(records)
        if split:
            parts += ["### User-visible, device and host time", "", split, ""]
        targets = report.targets_table(records, meta.get("auto_backend"))
        if targets:
            parts += ["### Targets", "", targets, ""]
    if found:
        parts += ["## Committed result folders", ""]
        for folder, records, meta in reversed(found):
            rel = folder.relative_to(ROOT).as_posix() if folder.is_relative_to(ROOT) else str(folder)
            parts.append(f"- [{folder.name}](../{rel}/summary.md): {meta.get('device_name')}, "
                         f"{meta.get('date')}, {len(records)} runs")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def replace_block(text, block):
    """text with everything between the markers replaced by block; None if the markers are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[:start + len(START)] + "\n" + block + text[end:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if an output is out of date")
    args = p.parse_args(argv)
    found = find_results(args.results)
    latest = latest_by_device(found)
    stale = []
    doc_path, readme_path = Path(args.doc), Path(args.readme)
    doc = performance_doc(found, latest)
    if not doc_path.exists() or doc_path.read_text() != doc:
        stale.append(str(doc_path))
        if not args.check:
            doc_path.parent.mkdir(parents=True, exist_ok=True)
            doc_path.write_text(doc)
    if readme_path.exists():
        text = readme_path.read_text()
        new = replace_block(text, readme_block(latest))
        if new is None:
            print(f"{readme_path}: no {START} ... {END} markers; README left as it is", file=sys.stderr)
        elif new != text:
            stale.append(str(readme_path))
            if not args.check:
                readme_path.write_text(new)
    if args.check:
        if stale:
            print("out of date: " + ", ".join(stale) + " (run python benchmarks/readme_tables.py)")
            return 1
        return 0
    print("updated: " + (", ".join(stale) if stale else "nothing (already up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
