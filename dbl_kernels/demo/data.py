"""A long-tailed multi-label data set composed from scikit-learn's bundled digit images.

Each image is a 16 x 16 canvas of four 8 x 8 slots; one to three slots hold a handwritten digit
(from ``sklearn.datasets.load_digits``, shipped with scikit-learn, so nothing is downloaded),
the rest are blank. The labels are the set of digits shown: 10 classes, multi-hot.

The training set follows a long tail: by default the 10 class frequencies are COCO-MLT's
(Wu et al.'s benchmark, the package's ``coco-mlt`` preset) sorted and taken at 10 evenly spaced
ranks, 1128 down to 6 positives, so the paper's head / medium / tail thresholds (> 100, < 20)
apply unchanged. Which digit gets which frequency is drawn from the seed. Label sets co-occur the way
they do in COCO: images of rare classes usually also show frequent ones, never the other way
round, which is what the Distribution-Balanced loss's re-balanced weights are about.

The test set is balanced (every class about equally often) and drawn from *held-out* source
digits: the source images are split per digit before anything is composed, so no source image
appears in both sets.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 10
SLOTS = 4  # 2 x 2 grid
DIGIT = 8  # side of a source image in pixels
SIDE = 2 * DIGIT
# P(0, 1, 2 extra digits) next to the digit an image is made for: 1.8 digits per image on average.
PARTNER_PROBS = (0.4, 0.4, 0.2)


def coco_mlt_profile(num_classes=NUM_CLASSES):
    """COCO-MLT's class frequencies, sorted descending, at ``num_classes`` evenly spaced ranks."""
    from ..stats import ClassStats

    freq = np.sort(ClassStats.preset("coco-mlt").class_freq)[::-1]
    ranks = np.linspace(0, freq.size - 1, num_classes).round().astype(np.int64)
    return freq[ranks].astype(np.int64)


@functools.lru_cache(maxsize=1)
def load_source_digits():
    """``(images, targets)`` of scikit-learn's 1797 digits: float32 in [0, 1], int64 labels (read-only)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the demo's data set needs scikit-learn: pip install scikit-learn matplotlib tqdm") from exc
    digits = load_digits()
    images, targets = (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


@dataclass
class MultiDigitData:
    """Composed images, their labels and where every pixel came from.

    ``*_slots[i, s]`` is the index into ``source_images`` shown in slot ``s`` of image ``i``
    (slot s covers rows 8*(s//2).., columns 8*(s%2)..), or -1 for a blank slot.
    """

    train_images: np.ndarray  # (N, 16, 16) float32
    train_labels: np.ndarray  # (N, 10) uint8
    train_slots: np.ndarray  # (N, 4) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    test_slots: np.ndarray
    class_counts: np.ndarray  # (10,) the requested positives per class in the training set
    source_images: np.ndarray  # (M, 8, 8) float32
    source_targets: np.ndarray  # (M,) int64
    train_sources: np.ndarray  # indices of the source images the training set may use
    test_sources: np.ndarray  # ... and the disjoint ones the test set uses


def _split_sources(targets, test_fraction, rng):
    train, test = [], []
    for digit in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(targets == digit))
        cut = int(round(len(idx) * test_fraction))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return [np.sort(np.concatenate(part)) for part in (train, test)]


def long_tailed_label_sets(class_counts, rng, partner_probs=PARTNER_PROBS):
    """Label sets whose per-class totals equal ``class_counts`` exactly.

    Classes are visited rarest first; every image made for a class also gets 0-2 partner classes,
    drawn (in proportion to their unspent counts) from the classes more frequent than it. The most
    frequent classes spend what is left on images of their own.
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    remaining = counts.copy()
    order = np.argsort(counts, kind="stable")
    sets = []
    for pos, cls in enumerate(order):
        more_frequent = order[pos + 1:]
        while remaining[cls] > 0:
            remaining[cls] -= 1
            members = [int(cls)]
            pool = more_frequent[remaining[more_frequent] > 0]
            extra = min(int(rng.choice(len(partner_probs), p=partner_probs)), pool.size)
            if extra:
                weights = remaining[pool] / remaining[pool].sum()
                for partner in rng.choice(pool, size=extra, replace=False, p=weights):
                    remaining[partner] -= 1
                    members.append(int(partner))
            sets.append(members)
    return [sets[i] for i in rng.permutation(len(sets))]


def balanced_label_sets(num_images, rng, partner_probs=PARTNER_PROBS):
    """Label sets with the training set's number of digits per image, classes drawn uniformly."""
    sizes = 1 + rng.choice(len(partner_probs), size=num_images, p=partner_probs)
    return [rng.choice(NUM_CLASSES, size=int(k), replace=False).tolist() for k in sizes]


def _compose(label_sets, pool, source_targets, rng):
    """Slot table for the label sets, every digit drawn from ``pool``.

    Per digit, the pool's images are dealt out in shuffled rounds, so a class with n positives
    uses min(n, pool size) distinct source images.
    """
    decks = {d: pool[source_targets[pool] == d] for d in range(NUM_CLASSES)}
    dealt = {d: 0 for d in range(NUM_CLASSES)}
    orders = {d: rng.permutation(decks[d]) for d in range(NUM_CLASSES)}
    slots = np.full((len(label_sets), SLOTS), -1, dtype=np.int64)
    for i, members in enumerate(label_sets):
        where = rng.choice(SLOTS, size=len(members), replace=False)
        for slot, digit in zip(where, members):
            if dealt[digit] == len(orders[digit]):
                orders[digit], dealt[digit] = rng.permutation(decks[digit]), 0
            slots[i, slot] = orders[digit][dealt[digit]]
            dealt[digit] += 1
    return slots


def render(slots, source_images):
    """Noise-free canvases for a slot table."""
    images = np.zeros((len(slots), SIDE, SIDE), dtype=np.float32)
    for s in range(SLOTS):
        row, col = DIGIT * (s // 2), DIGIT * (s % 2)
        used = slots[:, s] >= 0
        images[used, row:row + DIGIT, col:col + DIGIT] = source_images[slots[used, s]]
    return images


def labels_of(slots, source_targets):
    labels = np.zeros((len(slots), NUM_CLASSES), dtype=np.uint8)
    rows, cols = np.nonzero(slots >= 0)
    labels[rows, source_targets[slots[rows, cols]]] = 1
    return labels


def build_dataset(seed=0, class_counts=None, num_test=1000, noise=0.15, test_fraction=0.5, digits=None):
    """The demo's train and test sets for one seed.

    ``class_counts``: positives per class (digit) in the training set; by default COCO-MLT's
    profile (:func:`coco_mlt_profile`) assigned to the digits in a seed-dependent order.
    ``noise``: std of the Gaussian pixel noise (images are clipped to [0, 1]); 0 for clean images.
    ``digits``: ``(images, targets)`` to compose from instead of scikit-learn's.
    """
    rng = np.random.default_rng(seed)
    source_images, source_targets = load_source_digits() if digits is None else digits
    if class_counts is None:
        class_counts = coco_mlt_profile()[rng.permutation(NUM_CLASSES)]
    class_counts = np.asarray(class_counts, dtype=np.int64)
    if class_counts.shape != (NUM_CLASSES,) or np.any(class_counts < 1):
        raise ValueError(f"class_counts must be {NUM_CLASSES} positive counts, got {class_counts}")
    train_sources, test_sources = _split_sources(source_targets, test_fraction, rng)
    train_slots = _compose(long_tailed_label_sets(class_counts, rng), train_sources, source_targets, rng)
    test_slots = _compose(balanced_label_sets(num_test, rng), test_sources, source_targets, rng)

    def noisy(slots):
        images = render(slots, source_images)
        if noise:
            images = np.clip(images + rng.normal(0.0, noise, images.shape).astype(np.float32), 0.0, 1.0)
        return images

    return MultiDigitData(
        train_images=noisy(train_slots), train_labels=labels_of(train_slots, source_targets),
        train_slots=train_slots, test_images=noisy(test_slots),
        test_labels=labels_of(test_slots, source_targets), test_slots=test_slots,
        class_counts=class_counts, source_images=source_images, source_targets=source_targets,
        train_sources=train_sources, test_sources=test_sources)
