"""Row terms of the loss from the labels alone, dense or CSR: the row statistics of the
re-weighting, the row and batch maxima of its normalisation, the mean's count. Shared by the
chunked classifier and by the loss where a kernel takes them as ``row_stats`` (contract v2).
"""
from __future__ import annotations

import torch

from . import _sparse, reference


COLUMN_CHUNK_BYTES = 64 << 20  # the dense label tiles of column_chunks: at most this much at a time


def column_chunks(shape, budget=COLUMN_CHUNK_BYTES):
    """[(c0, c1)]: the columns of an N x C problem in chunks whose N x chunk fp32 tile fits ``budget``."""
    n_rows, n_cols = shape
    step = max(1, budget // (4 * max(n_rows, 1)))
    return [(c0, min(c0 + step, n_cols)) for c0 in range(0, n_cols, step)]


class ChunkedLabels:
    """The labels (dense N x C or CSR) seen one column chunk at a time, as dense compute-dtype tiles."""

    def __init__(self, labels, dtype):
        self.labels, self.dtype, self.csr = labels, dtype, _sparse.is_csr(labels)

    def chunk(self, c0, c1):
        if self.csr:
            return _sparse.to_dense(_sparse.column_slice(self.labels, c0, c1), self.dtype)
        return self.labels[:, c0:c1].to(self.dtype)


def row_terms(labels, chunks, class_freq, train_num, cfg):
    """(stats, row_max, batch_max, known count) over all classes, from the labels alone."""
    if labels.csr and cfg.weight_norm is None:  # straight from the stored entries: no dense tile
        return sparse_row_terms(labels, class_freq, cfg) + (None, None, _sparse.known_count(labels.labels))
    max_mode = reference.row_statistic_is_max(cfg)
    stats = None
    if reference.needs_row_statistics(cfg):
        total = count = None
        for c0, c1 in chunks:
            a, b = reference.row_statistics(labels.chunk(c0, c1), class_freq[c0:c1], cfg)
            total = a if total is None else (torch.maximum(total, a) if max_mode else total + a)
            count = b if count is None else count + b
        stats = (total, count)
    row_max = batch_max = None
    if cfg.weight_norm is not None:
        for c0, c1 in chunks:
            w = reference.reweight(labels.chunk(c0, c1), class_freq[c0:c1], train_num, cfg, stats)
            m = w.amax(dim=1, keepdim=True)
            row_max = m if row_max is None else torch.maximum(row_max, m)
        batch_max = row_max.amax() if row_max.numel() else None
    known = sum(reference.known(labels.chunk(c0, c1)).sum() for c0, c1 in chunks)
    return stats, row_max, batch_max, known


def sparse_row_terms(labels, class_freq, cfg):
    """(stats,) of reference.row_statistics from CSR labels: each row's sum (or max) of the terms of
    its stored positives, in stored order."""
    if not reference.needs_row_statistics(cfg):
        return (None,)
    csr = labels.labels
    positive = csr.values() == 1
    terms = reference.row_statistic_terms(class_freq, cfg).to(labels.dtype)[csr.col_indices()]
    zero = terms.new_zeros(())
    total = _sparse.row_sums(csr, torch.where(positive, terms, zero),
                             "max" if reference.row_statistic_is_max(cfg) else "sum")
    return ((total, _sparse.row_sums(csr, positive.to(labels.dtype))),)


def kernel_row_stats(rows, cfg, dtype):
    """(row_stats, inv_batch) of contract v2 from ``rows`` = (stats, row_max, batch_max): the 2 x N
    statistics (None where the weights need none) and 1 / the batch max (None unless by_batch)."""
    stats, _, batch_max = rows
    row_stats = None if stats is None else torch.cat([stats[0].t(), stats[1].t()]).to(dtype).contiguous()
    inv_batch = 1.0 / batch_max if cfg.weight_norm == "by_batch" and batch_max is not None else None
    return row_stats, inv_batch
