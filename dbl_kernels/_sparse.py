"""Sparse labels: an N x C ``torch.sparse_csr_tensor`` whose stored values are 1 (positive) or -1
(unknown); every entry not stored is a negative. For label spaces of thousands to millions of
classes, where a dense label matrix is mostly zeros. Imports only torch.
"""
from __future__ import annotations

import torch


def is_csr(labels) -> bool:
    return isinstance(labels, torch.Tensor) and labels.layout == torch.sparse_csr


def check_csr(labels: torch.Tensor, shape, validate: bool) -> None:
    """Raise a clear error on malformed CSR labels. The structure (shape, index dtypes) is checked
    always; the index and value contents, which need a host read, when ``validate``."""
    if labels.dim() != 2 or tuple(labels.shape) != tuple(shape):
        raise ValueError(f"sparse labels must have the logits' shape {tuple(shape)}, got {tuple(labels.shape)}")
    crow, col, values = labels.crow_indices(), labels.col_indices(), labels.values()
    if values.is_complex() or values.dim() != 1:
        raise TypeError(f"sparse labels must hold real scalar values, got {values.dtype} of shape {tuple(values.shape)}")
    if not validate or values.numel() == 0:
        return
    n_rows, n_cols = shape
    counts = crow.diff()
    if crow[0] != 0 or bool((counts < 0).any()) or crow[-1] != values.numel():
        raise ValueError("sparse labels have malformed crow_indices (they must start at 0, never decrease and end "
                         "at the number of stored values)")
    lo, hi = int(col.min()), int(col.max())
    if lo < 0 or hi >= n_cols:
        raise ValueError(f"sparse labels store column index {lo if lo < 0 else hi}, outside [0, {n_cols}): the "
                         f"label space has C = {n_cols} classes")
    rows = torch.repeat_interleave(torch.arange(n_rows, device=col.device), counts)
    same_row = rows[1:] == rows[:-1]
    if bool((same_row & (col[1:] <= col[:-1])).any()):
        raise ValueError("sparse labels must have each row's column indices sorted and without duplicates; build "
                         "them with torch.sparse_csr_tensor from sorted unique ids (or call .to_sparse_csr() on a "
                         "dense matrix)")
    bad = (values != 1) & (values != -1)
    if bool(bad.any()):
        found = values[bad][0].item()
        raise ValueError(f"sparse labels must store 1 (positive) or -1 (unknown), found {found:g}; entries not "
                         "stored are the negatives")


def to_dense(labels: torch.Tensor, dtype=None) -> torch.Tensor:
    """The dense N x C labels (0 where nothing is stored)."""
    dense = labels.to_dense()
    return dense if dtype is None else dense.to(dtype)


def column_slice(labels: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """Columns [c0, c1) of CSR labels, as CSR (the stored entries of each row stay in order)."""
    crow, col, values = labels.crow_indices(), labels.col_indices(), labels.values()
    n_rows = labels.shape[0]
    rows = torch.repeat_interleave(torch.arange(n_rows, device=col.device), crow.diff())
    keep = (col >= c0) & (col < c1)
    counts = torch.bincount(rows[keep], minlength=n_rows)
    new_crow = torch.cat([crow.new_zeros(1), counts.cumsum(0).to(crow.dtype)])
    return torch.sparse_csr_tensor(new_crow, col[keep] - c0, values[keep], size=(n_rows, c1 - c0))


def row_sums(labels: torch.Tensor, per_value: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """The per-row sum (or max, at least 0) of ``per_value`` (one number per stored entry), N x 1,
    in a fixed order per row (segment reductions: no atomics)."""
    offsets = labels.crow_indices().to(torch.int64)
    out = torch.segment_reduce(per_value, reduce, offsets=offsets, unsafe=True, initial=0)
    return out.reshape(-1, 1)


def known_count(labels: torch.Tensor) -> torch.Tensor:
    """The entries that are not unknown: N * C minus the stored -1s (a device tensor)."""
    n_rows, n_cols = labels.shape
    return n_rows * n_cols - (labels.values() == -1).sum()


def select_rows(labels: torch.Tensor, rows) -> torch.Tensor:
    """The CSR labels of ``rows`` (indices, in their order), as CSR: a batch of a CSR label matrix
    (torch has no ``index_select`` for CSR tensors)."""
    crow, col, values = labels.crow_indices(), labels.col_indices(), labels.values()
    rows = torch.as_tensor(rows, dtype=torch.int64, device=crow.device)
    starts, counts = crow[rows], crow[rows + 1] - crow[rows]
    new_crow = torch.cat([crow.new_zeros(1), counts.cumsum(0).to(crow.dtype)])
    # the position of every kept entry: its row's start plus its offset within the row
    offsets = torch.arange(int(new_crow[-1]), device=crow.device) - torch.repeat_interleave(new_crow[:-1], counts)
    index = torch.repeat_interleave(starts, counts) + offsets
    return torch.sparse_csr_tensor(new_crow, col[index], values[index], size=(rows.numel(), labels.shape[1]))
