"""Mean average precision, per class and by head / medium / tail split (numpy only)."""
from __future__ import annotations

import numpy as np

# The paper's split of COCO-MLT classes by training positives: head > 100, tail < 20.
HEAD_MIN = 100
TAIL_MAX = 20
SPLITS = ("total", "head", "medium", "tail")


def average_precision(scores, labels):
    """Area under the precision-recall curve as the step sum  sum_k (R_k - R_{k-1}) P_k.

    Thresholds are the distinct scores, so tied scores enter as one step (the definition of
    ``sklearn.metrics.average_precision_score``). NaN when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0
    num_pos = int(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # The last position of every run of equal scores closes one threshold.
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(labels)[ends]
    precision = true_pos / (ends + 1)
    recall_step = np.diff(np.r_[0, true_pos]) / num_pos
    return float(np.sum(recall_step * precision))


def per_class_ap(scores, labels):
    """AP of every column of an N x C score matrix against N x C {0, 1} labels."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    return np.array([average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])])


def class_splits(train_counts, head_min=HEAD_MIN, tail_max=TAIL_MAX):
    """Class indices per split: head (> head_min training positives), tail (< tail_max), medium."""
    counts = np.asarray(train_counts)
    head = np.flatnonzero(counts > head_min)
    tail = np.flatnonzero(counts < tail_max)
    medium = np.flatnonzero((counts >= tail_max) & (counts <= head_min))
    return {"total": np.arange(counts.size), "head": head, "medium": medium, "tail": tail}


def split_map(ap, splits):
    """mAP (in %) over each split's classes; classes without test positives are left out."""
    ap = np.asarray(ap, dtype=np.float64)
    return {name: float(100.0 * np.nanmean(ap[idx])) if idx.size and np.isfinite(ap[idx]).any() else float("nan")
            for name, idx in splits.items()}
