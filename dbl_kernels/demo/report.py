"""Summaries of a demo run: the printed table, results.json and the two plots."""
from __future__ import annotations

import json

import numpy as np

from .metrics import HEAD_MIN, SPLITS, TAIL_MAX, class_splits, split_map


def mean_std(values):
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


def summarize(runs):
    """{sampler: {loss: {split: (mean, std)}}} over the seeds, from the per-run records."""
    summary = {}
    for run in runs:
        summary.setdefault(run["sampler"], {}).setdefault(run["loss"], []).append(run["map"])
    return {sampler: {loss: {s: mean_std([m[s] for m in maps]) for s in SPLITS} for loss, maps in by_loss.items()}
            for sampler, by_loss in summary.items()}


def split_sizes(class_counts):
    return {name: len(idx) for name, idx in class_splits(class_counts).items()}


def table(summary, num_seeds, epochs, class_counts):
    sizes = split_sizes(class_counts)
    lines = [
        f"mAP (%) on the balanced test set, mean ± std over {num_seeds} seed(s), {epochs} epochs each",
        f"classes by training positives: head > {HEAD_MIN} ({sizes['head']}), medium ({sizes['medium']}), "
        f"tail < {TAIL_MAX} ({sizes['tail']}); total = all {sizes['total']}",
        "",
        (f"{'sampler':<12} {'loss':<9} " + " ".join(f"{s:^12}" for s in SPLITS)).rstrip(),
    ]
    for sampler, by_loss in summary.items():
        for loss, stats in by_loss.items():
            cells = " ".join(f"{m:5.1f} ± {sd:<4.1f}" if np.isfinite(m) else f"{'n/a':>12}"
                             for m, sd in (stats[s] for s in SPLITS))
            lines.append(f"{sampler:<12} {loss:<9} {cells}".rstrip())
    return "\n".join(lines)


def comparisons(losses):
    """The (first, second) loss pairs of the paired table: DB-focal against every other loss, and
    DB-ASL against ASL (what DB's re-balancing and NTR add to asymmetric focusing)."""
    pairs = [("DB-focal", other) for other in losses if other != "DB-focal"] if "DB-focal" in losses else []
    if "DB-ASL" in losses and "ASL" in losses:
        pairs.append(("DB-ASL", "ASL"))
    return pairs


def paired_gains(runs, pairs, splits=("total", "tail")):
    """{first: {sampler: {second: {split: (mean difference, seeds where first is higher, seeds)}}}}
    for each (first, second) pair.

    Differences are taken per seed (same data, initial weights and batches), which removes the
    seed-to-seed spread that dominates the std in the table (e.g. which digit happens to be rare).
    """
    maps = {(r["sampler"], r["loss"], r["seed"]): r["map"] for r in runs}
    samplers = list(dict.fromkeys(r["sampler"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    gains = {}
    for first, second in pairs:
        for sampler in samplers:
            both = [(maps[(sampler, first, s)], maps[(sampler, second, s)]) for s in seeds
                    if (sampler, first, s) in maps and (sampler, second, s) in maps]
            if not both:
                continue
            cells = {}
            for split in splits:
                d = np.array([a[split] - b[split] for a, b in both])
                cells[split] = (float(np.mean(d)), int(np.sum(d > 0)), len(d))
            gains.setdefault(first, {}).setdefault(sampler, {})[second] = cells
    return gains


def gains_table(gains, splits=("total", "tail")):
    lines = ["Paired by seed: the first loss minus the second, mean difference in mAP points "
             "(seeds where the first is higher)", "",
             (f"{'sampler':<12} {'loss':<9} {'minus':<9} " + " ".join(f"{s:^13}" for s in splits)).rstrip()]
    samplers = list(dict.fromkeys(sampler for by_sampler in gains.values() for sampler in by_sampler))
    for sampler in samplers:
        for first, by_sampler in gains.items():
            for second, cells in by_sampler.get(sampler, {}).items():
                text = " ".join(f"{m:+6.1f} ({w}/{n})".rjust(13) for m, w, n in (cells[s] for s in splits))
                lines.append(f"{sampler:<12} {first:<9} {second:<9} {text}")
    return "\n".join(lines)


def by_frequency_rank(runs, sampler, loss):
    """Training positives and mean per-class AP (%) by frequency rank, averaged over seeds."""
    counts, aps = [], []
    for run in runs:
        if run["sampler"] == sampler and run["loss"] == loss:
            order = np.argsort(-np.asarray(run["class_counts"]), kind="stable")
            counts.append(np.asarray(run["class_counts"])[order])
            aps.append(100.0 * np.asarray(run["per_class_ap"])[order])
    return np.mean(counts, axis=0), np.mean(aps, axis=0)


def plot_per_class(runs, samplers, losses, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(samplers), 3.6), layout="constrained")
    axes = fig.subplots(1, len(samplers), squeeze=False, sharey=True)[0]
    for ax, sampler in zip(axes, samplers):
        for loss in losses:
            counts, ap = by_frequency_rank(runs, sampler, loss)
            # the asymmetric-focusing losses dashed, so DB-focal / DB-ASL and focal / ASL pair up
            ax.plot(counts, ap, marker="o", markersize=4, label=loss, linestyle="--" if "ASL" in loss else "-")
        ax.set_xscale("log")
        for edge in (TAIL_MAX, HEAD_MIN):
            ax.axvline(edge, color="0.6", linestyle=":", linewidth=1)
        ax.set_title(f"{sampler} sampling", fontsize=10)
        ax.set_xlabel("training positives of the class (log)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test AP (%), mean over seeds")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Per-class AP against training frequency (dotted: tail < 20 | medium | head > 100)", fontsize=10)
    fig.savefig(path, dpi=90)


def plot_splits(summary, samplers, losses, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(samplers), 3.4), layout="constrained")
    axes = fig.subplots(1, len(samplers), squeeze=False, sharey=True)[0]
    width = 0.8 / len(losses)
    x = np.arange(len(SPLITS))
    for ax, sampler in zip(axes, samplers):
        for i, loss in enumerate(losses):
            means, stds = zip(*(summary[sampler][loss][s] for s in SPLITS))
            ax.bar(x + (i - (len(losses) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=loss)
        ax.set_xticks(x, SPLITS)
        ax.set_title(f"{sampler} sampling", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mAP (%), mean ± std over seeds")
    axes[0].set_ylim(0, 112 if len(losses) <= 4 else 122)
    axes[-1].legend(fontsize=8, loc="upper center", ncol=min(len(losses), 3), handlelength=1, columnspacing=1)
    fig.savefig(path, dpi=90)


def write_json(path, **fields):
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, np.ndarray):
            return plain(value.tolist())
        if isinstance(value, (np.floating, float)):
            return None if not np.isfinite(value) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        return value

    path.write_text(json.dumps(plain(fields), indent=1) + "\n")


def run_record(seed, sampler, loss, class_counts, ap):
    return {"seed": seed, "sampler": sampler, "loss": loss, "class_counts": np.asarray(class_counts),
            "per_class_ap": np.asarray(ap), "map": split_map(ap, class_splits(class_counts))}
