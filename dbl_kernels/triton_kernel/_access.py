"""Memory access of the Triton kernels: unmasked-or-masked loads, the label tiles (dense or CSR)
and their tests, column index tiles and class-table columns in the tile's own layout."""
from __future__ import annotations

import triton
import triton.language as tl

from ._math import _label_add


@triton.jit
def _ld(ptrs, mask):
    """tl.load, unmasked when ``mask`` is None (no zero-fill of the registers first)."""
    if mask is None:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=mask, other=0)


# ---------------------------------------------------------------------------------------------
# Labels. Integer labels are exactly 1 / 0 / -1 (validated by the loss), so they stay integers:
# "positive" and "known" are compares, never a float conversion. Float labels may be soft.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_labels(ptrs, mask, CDT: tl.constexpr, HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr):
    """(y+, known): for bool / uint8 labels y+ is the label byte itself (positive iff != 0; the
    ``_label_*`` helpers test it), for signed ones a bool tile; for float labels max(y, 0).
    known = y != -1 where the labels may hold -1."""
    return _labels_of(_ld(ptrs, mask), CDT, HARD_LABELS, HAS_UNKNOWN)


@triton.jit
def _labels_of(raw, CDT: tl.constexpr, HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr):
    if HARD_LABELS:
        if HAS_UNKNOWN:  # signed integers
            return raw > 0, raw >= 0
        else:
            return raw, raw == raw
    else:
        y = raw.to(CDT)
        return tl.maximum(y, 0.0), y != -1.0


@triton.jit
def _csr_values(v_rows, crow_ptr, col_ptr, rows64, cols):
    """The stored values at (rows64, cols) of CSR labels, 0 where none is stored: a lower-bound
    search of each column in its row's sorted column indices, all lanes in step (as many rounds
    as the longest row needs). ``v_rows``: the values pointer, broadcast over the rows."""
    start = tl.load(crow_ptr + rows64)
    end = tl.load(crow_ptr + rows64 + 1)
    c = cols.to(tl.int64)
    lo = start + c * 0
    hi = end + c * 0
    while tl.max(tl.max(hi - lo, axis=1), axis=0) > 0:
        active = lo < hi
        mid = (lo + hi) >> 1
        right = active & (tl.load(col_ptr + mid, mask=active, other=0) < c)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & (right == 0), mid, hi)
    inside = lo < end
    hit = inside & (tl.load(col_ptr + lo, mask=inside, other=-1) == c)
    return tl.load(v_rows + lo, mask=hit, other=0)


@triton.jit
def _tile_labels(y_rows, cols, mask, csr, CDT: tl.constexpr, HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr,
                 CSR: tl.constexpr):
    """_load_labels of dense labels (``y_rows``: the rows' label pointers) or of CSR ones (``y_rows``:
    the values pointer; ``csr`` = (crow_ptr, col_ptr, rows64))."""
    if CSR:
        return _labels_of(_csr_values(y_rows, csr[0], csr[1], csr[2], cols), CDT, HARD_LABELS, HAS_UNKNOWN)
    else:
        return _load_labels(y_rows + cols, mask, CDT, HARD_LABELS, HAS_UNKNOWN)


@triton.jit
def _is_pos(pos, HAS_UNKNOWN: tl.constexpr):
    """The bool tile of hard labels (``pos`` from _load_labels)."""
    if HAS_UNKNOWN:
        return pos
    else:
        return pos != 0


@triton.jit
def _pick_add(acc, pos, value, HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr):
    """acc + y+ * value (value broadcast over rows)."""
    if HARD_LABELS:
        if HAS_UNKNOWN:
            return acc + tl.where(pos, value, 0.0)
        else:
            return _label_add(acc, pos, value)
    else:
        return acc + pos * value


@triton.jit
def _columns(c0, BLOCK_C: tl.constexpr, VEC: tl.constexpr):
    """[1, BLOCK_C] column indices from c0, contiguous in runs of VEC only as far as the compiler
    knows: every access of the tile then takes the layout of VEC consecutive columns per thread
    (one 128-bit load of logits), with no shared-memory layout conversions between labels,
    logits, class table and gradient."""
    return c0 + tl.max_contiguous(tl.arange(0, BLOCK_C), VEC if VEC < BLOCK_C else BLOCK_C)[None, :]


@triton.jit
def _col(cp_ptr, ROW: tl.constexpr, C, cols, SHIFT: tl.constexpr, cmask, MASK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """One class-table row at ``cols`` + SHIFT (see kernels._tile), loaded as the whole [BLOCK_N, BLOCK_C] tile (each thread
    reads its own columns): a [1, BLOCK_C] load would get a layout of its own and a shared-memory
    conversion into the tile's on every use."""
    ptrs = tl.broadcast_to(cp_ptr + ROW * C + cols + SHIFT, (BLOCK_N, cols.shape[1]))
    if MASK_C:
        return tl.load(ptrs, mask=tl.broadcast_to(cmask, (BLOCK_N, cols.shape[1])), other=0.0)
    else:
        return tl.load(ptrs)
