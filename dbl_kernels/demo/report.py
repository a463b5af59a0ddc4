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


def paired_gains(runs, reference="DB-focal", splits=("total", "tail")):
    """{sampler: {loss: {split: (mean difference, seeds where reference is higher, seeds)}}}.

    Differences are taken per seed (same data, initial weights and batches), which removes the
    seed-to-seed spread that dominates the std in the table (e.g. which digit happens to be rare).
    """
    maps = {(r["sampler"], r["loss"], r["seed"]): r["map"] for r in runs}
    diffs = {}
    for (sampler, loss, seed), other in maps.items():
        ref = maps.get((sampler, reference, seed))
        if loss != reference and ref is not None:
            per_split = diffs.setdefault(sampler, {}).setdefault(loss, {split: [] for split in splits})
            for split in splits:
                per_split[split].append(ref[split] - other[split])
    return {sampler: {loss: {split: (float(np.mean(d)), int(np.sum(np.asarray(d) > 0)), len(d))
                             for split, d in per_split.items()}
                      for loss, per_split in by_loss.items()}
            for sampler, by_loss in diffs.items()}


def gains_table(gains, reference="DB-focal", splits=("total", "tail")):
    lines = [f"{reference} minus each loss, paired by seed: mean difference in mAP points "
             f"(seeds where {reference} is higher)", "",
             (f"{'sampler':<12} {'vs':<9} " + " ".join(f"{s:^13}" for s in splits)).rstrip()]
    for sampler, by_loss in gains.items():
        for loss, cells in by_loss.items():
            text = " ".join(f"{m:+6.1f} ({w}/{n})".rjust(13) for m, w, n in (cells[s] for s in splits))
            lines.append(f"{sampler:<12} {loss:<9} {text}")
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
            ax.plot(counts, ap, marker="o", markersize=4, label=loss)
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
    axes[0].set_ylim(0, 112)
    axes[-1].legend(fontsize=8, loc="upper center", ncol=len(losses), handlelength=1, columnspacing=1)
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
