"""Results on disk and the tables made from them.

Imports neither torch nor dbl_kernels (matplotlib only inside plot_throughput), so committed
results re-render on a machine that has neither; a test checks this in a subprocess.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from .cases import (BASELINES, CONFIG, DEFAULT_LOSS, DYNAMIC_BELOW, FIELDS, MODES, SPEEDUP_BASELINES, TARGET_ELEMENTS,
                    TARGETS)

DASH = "–"


# ------------------------------------------------------------------------------------------------
# Derived fields
# ------------------------------------------------------------------------------------------------
def meta_record(meta):
    return {k: meta.get(k) for k in ("device", "device_name", "torch", "triton", "date", "copy_gbytes_per_s",
                                     "cpu_count")}


def throughput(r):
    """elements/s from the user-visible time; GB/s and the roofline fraction from the device time
    where there is one (the GPU's own speed), else from the user-visible time."""
    median = r["median_ms"]
    basis_ms = r["device_us"] * 1e-3 if r.get("device_us") else median
    gbytes = r["bytes_moved"] / (basis_ms * 1e-3) / 1e9
    copy = r.get("copy_gbytes_per_s")
    return dict(elements_per_s=r["N"] * r["C"] / (median * 1e-3), gbytes_per_s=gbytes,
                roofline_fraction=gbytes / copy if copy else None,
                roofline_basis="device" if r.get("device_us") else "user")


def loss_of(r):
    """The record's loss; records from before the loss axis are db-focal."""
    return r.get("loss") or DEFAULT_LOSS


def losses_in(records):
    """The losses of the records, DEFAULT_LOSS first, then in order of appearance."""
    seen = list(dict.fromkeys(loss_of(r) for r in records))
    return sorted(seen, key=lambda loss: loss != DEFAULT_LOSS)


def _shape_key(r):
    return (r["suite"], r["N"], r["C"], r["logits_dtype"], r["labels_dtype"], r["mode"], loss_of(r))


def add_speedups(records):
    """speedup_vs_eager / _compile (user-visible time), device_speedup_vs_compile (device time)
    and host_ratio_vs_bce (host time) against the baselines at the same shape, mode and loss."""
    base = {}
    for r in records:
        if r["backend"] in BASELINES:
            base[(_shape_key(r), r["backend"])] = r
    for r in records:
        key = _shape_key(r)

        def ratio(baseline, field, invert=False):
            ref = base.get((key, baseline), {}).get(field)
            mine = r.get(field)
            if not ref or not mine:
                return None
            return ref / mine if invert else mine / ref
        for name in SPEEDUP_BASELINES:
            r[f"speedup_vs_{name}"] = ratio(name, "median_ms", invert=True)
        r["device_speedup_vs_compile"] = ratio("compile", "device_us", invert=True)
        r["host_ratio_vs_bce"] = ratio("bce", "host_us")


# ------------------------------------------------------------------------------------------------
# Formatting and pivots
# ------------------------------------------------------------------------------------------------
def fmt(value, digits=3):
    """Three significant digits (digits), '–' for a missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = math.floor(math.log10(abs(value)))
        return f"{value:.{max(0, digits - 1 - magnitude)}f}"
    return str(value)


def fmt_bytes(n):
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def case_key(r):
    return (r["suite"], r["C"], r["logits_dtype"], r["labels_dtype"], r["N"], r["mode"])


def best_fused(rows):
    fused = [r for r in rows if r["backend"] not in BASELINES and r.get("median_ms")]
    return min(fused, key=lambda r: r["median_ms"]) if fused else None


def best_row(rows):
    """The fastest fused backend, else the fastest of whatever was measured."""
    return best_fused(rows) or min((r for r in rows if r.get("median_ms")), key=lambda r: r["median_ms"],
                                   default=None)


def pivot(records, loss=None):
    """{case key: {backend: record}} in the order cases appear, over the records of one loss:
    ``loss``, or by default the main one (DEFAULT_LOSS where measured, else the first)."""
    losses = losses_in(records)
    loss = loss or (losses[0] if losses else DEFAULT_LOSS)
    table = {}
    for r in records:
        if loss_of(r) == loss:
            table.setdefault(case_key(r), {})[r["backend"]] = r
    return table


def backends_in(records):
    seen = list(dict.fromkeys(r["backend"] for r in records))
    return [b for b in BASELINES if b in seen] + [b for b in seen if b not in BASELINES]


def has_field(records, name):
    """Whether any record has a value for a field added after the first results were committed."""
    return any(r.get(name) is not None for r in records)


def _md_table(head, rows, align="---"):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + f"{align}|" * len(head)]
                     + ["| " + " | ".join(cells) + " |" for cells in rows])


# A fused backend's time marked so ran the reference: the kernels do not compute that loss yet.
REFERENCE_MARK = "†"


def time_cell(r):
    if r is None:
        return ""
    if r.get("median_ms") is not None:
        return fmt(r["median_ms"]) + (REFERENCE_MARK if r.get("fused_kernel") is False else "")
    return "skipped" if "skipped" in (r.get("status") or "") else "error"


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def summary_table(records, backends, loss=None):
    """A markdown table of one loss's cases (see pivot): one row per case, one time column per
    backend, then the fastest fused backend's throughput, roofline fraction and speedups (and its
    device and host time, and host time against BCE, where the run measured them)."""
    extra = [(name, label) for name, label in (("device_us", "device µs"), ("host_us", "host µs"),
                                               ("host_ratio_vs_bce", "host × bce"))
             if has_field(records, name)]
    head = (["suite", "N", "C", "logits", "labels", "mode"] + [f"{b} ms" for b in backends]
            + ["best", "GB/s", "roofline", "× eager", "× compile", "peak mem"] + [label for _, label in extra])
    rows = []
    for key, by_backend in pivot(records, loss).items():
        suite, C, ldt, labdt, N, mode = key
        cells = [suite, str(N), str(C), ldt, labdt, mode] + [time_cell(by_backend.get(b)) for b in backends]
        best = best_row(by_backend.values())
        if best is None:
            cells += [DASH] * (6 + len(extra))
        else:
            cells += [best["backend"], fmt(best["gbytes_per_s"]), fmt(best["roofline_fraction"], 2),
                      fmt(best.get("speedup_vs_eager")), fmt(best.get("speedup_vs_compile")),
                      fmt_bytes(best.get("peak_mem_bytes"))] + [fmt(best.get(name)) for name, _ in extra]
        rows.append(cells)
    return _md_table(head, rows)


def time_split_table(records, loss=None):
    """Per fwd+bwd case of one loss (see pivot) and backend: user-visible ms, device µs, host µs,
    host × bce and how the device time was obtained; empty for results from before these were
    measured."""
    if not has_field(records, "host_us"):
        return ""
    head = ["N", "C", "logits", "labels", "backend", "user ms", "device µs", "host µs", "host × bce", "roofline",
            "device timing"]
    rows = []
    for (suite, C, ldt, labdt, N, mode), by_backend in pivot(records, loss).items():
        if mode != "fwd+bwd":
            continue
        for b in backends_in(list(by_backend.values())):
            r = by_backend[b]
            rows.append([str(N), str(C), ldt, labdt, b, time_cell(r), fmt(r.get("device_us")), fmt(r.get("host_us")),
                         fmt(r.get("host_ratio_vs_bce")), fmt(r.get("roofline_fraction"), 2),
                         (r.get("device_timing") or "") + (f"; autotune {r['autotune_config']}"
                                                           if r.get("autotune_config") else "")])
    return _md_table(head, rows) if rows else ""


def targets_rows(records, auto_name):
    """Per qualifying case (fwd+bwd, bf16 logits, uint8 labels, N*C >= 2^26): each fused
    backend against the targets, and whether "auto" picks the fastest. DB-focal's alone: the
    targets are the DB kernels'."""
    rows = []
    for key, by_backend in pivot(records, DEFAULT_LOSS).items():
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
                             device_speedup_vs_compile=r.get("device_speedup_vs_compile"),
                             auto=auto_name, fastest=fastest["backend"] if fastest else None,
                             auto_is_fastest=bool(fastest) and fastest["backend"] == auto_name))
    return rows


def targets_table(records, auto_name):
    rows = targets_rows(records, auto_name)
    if not rows:
        return ""
    device = any(r["device_speedup_vs_compile"] is not None for r in rows)
    head = (["N", "C", "backend", "roofline (≥0.85)", "× compile (≥3)"] + (["× compile, device"] if device else [])
            + ["× eager (≥25)", "auto picks", "fastest"])
    lines = []
    for r in rows:
        def mark(name, digits):
            return f"{fmt(r[name], digits)} {'✓' if r['checks'][name] else '✗'}"
        lines.append([str(r["N"]), str(r["C"]), r["backend"], mark("roofline_fraction", 2),
                      mark("speedup_vs_compile", 3)] + ([fmt(r["device_speedup_vs_compile"])] if device else [])
                     + [mark("speedup_vs_eager", 3), r["auto"],
                        f"{r['fastest']}{' (auto)' if r['auto_is_fastest'] else ''}"])
    return _md_table(head, lines)


TIMES_OLD = ("- times: median of many calls (20/80 percentiles in results.json), input sets rotated, caches flushed "
             "between calls on small shapes; GB/s counts logits + labels read and the gradient written once; "
             "roofline = GB/s / copy bandwidth; peak mem = bytes allocated during one call beyond the inputs")
TIMES_SPLIT = ("- times: `ms` columns are user-visible (GPU: CUDA events around rounds of back-to-back calls; CPU: "
               "wall clock per call, caches flushed on small shapes), medians with 20/80 percentiles in "
               "results.json; device µs from CUDA-graph replay; host µs = host wall time per call of "
               "back-to-back calls; GB/s (logits + labels read, gradient written once) and roofline = GB/s / "
               "copy bandwidth use the device time where measured; peak mem = bytes allocated during one call "
               "beyond the inputs")


LOSS_NOTES = {
    "db-focal": f"{CONFIG} defaults (rebalance + focal + NTR, mean)",
    "asl": ("Ridnik et al.'s defaults (gamma_neg 4, gamma_pos 1, clip 0.05, summed): the fused `AsymmetricLoss` "
            "against the paper's formula in PyTorch ops, eager (`eager`) and under torch.compile (`compile`)"),
}


def _loss_sections(records, loss, split):
    """The summary table and time split of one loss other than the main one."""
    mine = [r for r in records if loss_of(r) == loss]
    parts = ["", f"## {loss}: {LOSS_NOTES.get(loss, loss)}", "", summary_table(mine, backends_in(mine), loss)]
    if split:
        parts += ["", f"### Time split (forward + backward), {loss}", "", time_split_table(mine, loss)]
    return parts


def render_summary(records, meta):
    """summary.md. Results from before host and device time were measured render as they did;
    a run of several losses gets one table per loss, the main one (db-focal) first."""
    split = has_field(records, "host_us")
    losses = losses_in(records) or [DEFAULT_LOSS]
    main = [r for r in records if loss_of(r) == losses[0]]
    backends = backends_in(main)
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
        f"{fmt(meta.get('copy_gbytes_per_s'))} GB/s (bytes read + written)"
        + (f"; load average {meta['cpu_load']} at the start" if meta.get("cpu_load") is not None else ""),
        f"- backends available: {', '.join(meta.get('available_backends') or [])}; `backend=\"auto\"` runs "
        f"**{meta.get('auto_backend')}** here",
        f"- suites: {meta.get('suites')}; loss config: "
        + (LOSS_NOTES.get(losses[0], losses[0]) if len(losses) == 1 else "one section per loss below")
        + f"; labels validation off; torch.compile: default mode, {meta.get('compile_shapes')} shapes "
        f"(auto: batch dimension dynamic below {meta.get('static_from') or DYNAMIC_BELOW:,} elements, "
        "one static graph per shape above)",
        TIMES_SPLIT if split else TIMES_OLD,
        f"- largest deviation from eager over all runs: {fmt(worst)} (relative; bf16 gradients round to 2^-8)",
    ]
    if any(r.get("fused_kernel") is False for r in records):
        parts.append(f"- {REFERENCE_MARK}: this fused backend ran the package's reference for the loss (its "
                     "kernels do not compute these options yet), so the time is not a kernel figure")
    if len(losses) > 1:
        parts += ["", f"## {losses[0]}: {LOSS_NOTES.get(losses[0], losses[0])}"]
    parts += ["", summary_table(main, backends, losses[0])]
    if split:
        parts += ["", "## Time split (forward + backward)", "", time_split_table(main, losses[0])]
    targets = targets_table(records, meta.get("auto_backend"))
    if targets:
        parts += ["", "## Targets (forward+backward, bf16 logits, uint8 labels, N·C ≥ 2^26)", "", targets]
    for loss in losses[1:]:
        parts += _loss_sections(records, loss, split)
    if skipped:
        parts += ["", f"{skipped} runs were skipped: the time budget ran out."]
    if errors:
        parts += ["", "## Errors", ""] + [
            f"- {r['backend']} {r['N']}x{r['C']} {r['logits_dtype']}/{r['labels_dtype']} {r['mode']}"
            f"{'' if loss_of(r) == DEFAULT_LOSS else ' ' + loss_of(r)}: {r['status']}"
            for r in errors]
    return "\n".join(parts) + "\n"


def short_table(records, meta):
    """A few lines for a terminal: per case, the fastest backend and its speedups."""
    lines = [f"{meta['device_name']} | torch {meta['torch']} | triton {meta['triton']} | {meta['date']} | "
             f"copy {fmt(meta.get('copy_gbytes_per_s'))} GB/s | auto={meta.get('auto_backend')}",
             f"{'suite':10} {'N':>8} {'C':>8} {'dtypes':12} {'mode':8} {'best':8} {'ms':>8} {'dev µs':>8} "
             f"{'host µs':>8} {'xbce':>5} {'roof':>5} {'xeager':>7} {'xcomp':>6}"]
    losses = losses_in(records)
    for loss in losses:
        for (suite, C, ldt, labdt, N, mode), rows in pivot(records, loss).items():
            suite = suite if len(losses) == 1 else f"{suite}/{loss}"
            head = f"{suite:10} {N:>8} {C:>8} {ldt + '/' + labdt:12} {mode:8}"
            best = best_row(rows.values())
            if best is None:
                status = next(iter(rows.values())).get("status") or ""
                lines.append(f"{head} {'-':8} {status[:40]}")
                continue
            lines.append(f"{head} {best['backend']:8} {fmt(best['median_ms']):>8} {fmt(best.get('device_us')):>8} "
                         f"{fmt(best.get('host_us')):>8} {fmt(best.get('host_ratio_vs_bce'), 2):>5} "
                         f"{fmt(best['roofline_fraction'], 2):>5} {fmt(best.get('speedup_vs_eager')):>7} "
                         f"{fmt(best.get('speedup_vs_compile')):>6}")
    return "\n".join(lines)


def plot_throughput(records, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    losses = losses_in(records)
    ok = [r for r in records if r.get("elements_per_s") and loss_of(r) == (losses[0] if losses else DEFAULT_LOSS)]
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
    handles = [Line2D([], [], color=colors[b], linestyle="--" if b in BASELINES else "-", label=b) for b in backends]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="none", label=f"C={C:,}") for C, m in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), frameon=False, fontsize=9)
    title = f"dbl_kernels throughput: {meta['device_name']}, torch {meta['torch']}, {meta['date']}"
    if len(losses) > 1:
        title += f" ({losses[0]}; the other losses in summary.md)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def write_outputs(records, meta, out, plot=True):
    """results.json (the run's metadata rides on the first record under "meta"), results.csv,
    summary.md and, unless plot=False, throughput.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = [dict({k: r.get(k) for k in FIELDS}, **{"meta": meta} if i == 0 else {}) for i, r in enumerate(records)]
    write_text(out / "results.json", json.dumps(payload, indent=1, default=_json_default) + "\n")
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: r.get(k) for k in FIELDS})
    write_text(out / "results.csv", rows.getvalue())
    write_text(out / "summary.md", render_summary(records, meta))
    if plot:
        plot_throughput(records, meta, out / "throughput.png")


def write_text(path, text):
    """Write-then-rename: a run stopped mid-write (timeout) never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(value):
    if hasattr(value, "item"):  # numpy and torch scalars, without importing either
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def load_results(path):
    """(records, meta) from a results.json written by this harness, old or new: fields added
    later are simply absent from old records."""
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
