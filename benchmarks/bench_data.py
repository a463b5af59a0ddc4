"""Label data for the benchmarks, drawn like real data.

* C = 80: rows of the real COCO-MLT training label matrix (``tests/data/coco_mlt_train_labels.npz``,
  1909 x 80, shipped with the tests because the shared data folder is not part of the repository), sampled
  with replacement, with the COCO-MLT class statistics.
* Large C (Open Images, extreme multi-label): sparse rows whose classes follow a Zipf-like long
  tail, with class statistics that match the sampling frequencies, so the re-balancing weights
  see the spread of n_j they would see in training.

Everything is generated on the CPU from a seeded ``torch.Generator`` and is reproducible.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"  # shipped with the tests
COCO_LABELS = DATA_DIR / "coco_mlt_train_labels.npz"


@dataclass(frozen=True)
class Family:
    """A label space: how many classes, how many positives a row has, how long the tail is."""

    name: str
    num_classes: int
    train_num: int          # T, the training-set size the statistics describe
    mean_positives: float   # average positives per row
    zipf: float             # exponent of the class-frequency tail


# Open Images V6 has 9,605 trainable classes over 1.74M training images; XMC label spaces
# (Amazon-670K, Wiki-500K style) have a handful of positives among up to millions of classes.
OPENIMAGES = Family("openimages", 9605, 1_743_042, 8.0, 1.0)


def xmc_family(num_classes):
    return Family(f"xmc{num_classes}", num_classes, 2 * num_classes, 5.0, 0.9)


def family_for(num_classes):
    if num_classes == 80:
        return Family("coco", 80, 1909, 4.36, 0.0)
    if num_classes == OPENIMAGES.num_classes:
        return OPENIMAGES
    return xmc_family(num_classes)


@functools.lru_cache(maxsize=1)
def coco_label_matrix():
    """The 1909 x 80 uint8 multi-hot labels of the COCO-MLT training set."""
    with np.load(COCO_LABELS) as data:
        return torch.from_numpy(np.ascontiguousarray(data["labels"], dtype=np.uint8))


def coco_labels(n, generator):
    rows = torch.randint(0, coco_label_matrix().shape[0], (n,), generator=generator)
    return coco_label_matrix()[rows]


@functools.lru_cache(maxsize=8)
def class_probabilities(family: Family):
    """Per-class positive probability p_j (sum = mean positives per row), classes in a fixed
    random order so frequent classes are not all at the start of a row."""
    rank = np.arange(1, family.num_classes + 1, dtype=np.float64)
    p = rank ** -family.zipf
    p *= family.mean_positives / p.sum()
    # A class positive in half the rows is already a very common class; the floor keeps every
    # class present in the statistics (the loss needs 0 < n_j < T).
    p = np.clip(p, 1.5 / family.train_num, 0.5)
    perm = np.random.default_rng(family.num_classes).permutation(family.num_classes)
    return p[perm]


@functools.lru_cache(maxsize=8)
def family_stats(family: Family):
    from dbl_kernels import ClassStats

    if family.name == "coco":
        return ClassStats.preset("coco-mlt")
    counts = np.maximum(np.round(class_probabilities(family) * family.train_num), 1.0)
    return ClassStats.from_counts(counts, train_num=family.train_num)


def long_tail_labels(n, family: Family, generator):
    """An n x C uint8 multi-hot matrix: each row's number of positives is Poisson(mean), its
    classes drawn (with replacement, duplicates merged) from the long-tailed p_j."""
    c = family.num_classes
    labels = torch.zeros(n, c, dtype=torch.uint8)
    if n == 0:
        return labels
    p = torch.from_numpy(class_probabilities(family))
    per_row = torch.poisson(torch.full((n,), family.mean_positives, dtype=torch.float64), generator=generator)
    per_row = per_row.to(torch.int64).clamp(min=1)
    total = int(per_row.sum())
    classes = torch.multinomial(p.to(torch.float32), total, replacement=True, generator=generator)
    rows = torch.repeat_interleave(torch.arange(n), per_row)
    labels[rows, classes] = 1
    return labels


def make_labels(n, num_classes, generator):
    """uint8 labels for an n x num_classes batch of the matching family."""
    family = family_for(num_classes)
    if family.name == "coco":
        return coco_labels(n, generator)
    return long_tail_labels(n, family, generator)


def stats_for(num_classes):
    return family_stats(family_for(num_classes))


def make_logits(n, num_classes, dtype, device, generator):
    """Logits spread like a trained classifier's: mostly confident negatives, never all zeros."""
    x = torch.randn(n, num_classes, generator=generator, device=device, dtype=torch.float32)
    return x.mul_(2.5).sub_(2.0).to(dtype)


def tail_summary(num_classes):
    """(min n_j, max n_j, mean positives per row) of a family, for reports."""
    stats = stats_for(num_classes)
    freq = stats.class_freq
    return float(freq.min()), float(freq.max()), float(freq.sum() / stats.train_num)
