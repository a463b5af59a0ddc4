"""The Triton kernels: row statistics, per-element weights, the fused loss + gradient tile loop,
and the small helpers (column-chunk statistics, partial-sum reduction, gradient scale).

Every option is a ``tl.constexpr``, so unused terms compile away. The terms mirror
``reference.py`` (``rebalance_weight``, ``cb_weight``, ``negative_tolerant``, ``bce``, ``focal``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._spec import (BIAS, CLASS_W, FREQ, INV_FREQ, NORM_BATCH, NORM_INSTANCE, REWEIGHT_CB_AVG_N,
                     REWEIGHT_CB_AVG_W, REWEIGHT_CB_MIN_N, REWEIGHT_CLASS, REWEIGHT_REBALANCE)
from ._math import (_POW_NONE, _bce_focal_hard, _bce_focal_soft, _expm1, _log, _rebalance_sigmoid)

# Kernel-visible constants (Triton only reads globals that are constexpr).
_REBALANCE = tl.constexpr(REWEIGHT_REBALANCE)
_CLASS = tl.constexpr(REWEIGHT_CLASS)
_CB_AVG_W = tl.constexpr(REWEIGHT_CB_AVG_W)
_CB_AVG_N = tl.constexpr(REWEIGHT_CB_AVG_N)
_CB_MIN_N = tl.constexpr(REWEIGHT_CB_MIN_N)
_NORM_INSTANCE = tl.constexpr(NORM_INSTANCE)
_NORM_BATCH = tl.constexpr(NORM_BATCH)
_ROW_INV = tl.constexpr(INV_FREQ)
_ROW_CLASS_W = tl.constexpr(CLASS_W)
_ROW_FREQ = tl.constexpr(FREQ)
_ROW_BIAS = tl.constexpr(BIAS)

# STATS: where the row statistics come from.
STATS_NONE, STATS_INLINE, STATS_BUFFER = 0, 1, 2
_STATS_INLINE = tl.constexpr(STATS_INLINE)
_STATS_BUFFER = tl.constexpr(STATS_BUFFER)
# The reweight modes whose weights need row statistics.
STATS_MODES = (REWEIGHT_REBALANCE, REWEIGHT_CB_AVG_W, REWEIGHT_CB_AVG_N, REWEIGHT_CB_MIN_N)


# ---------------------------------------------------------------------------------------------
# Labels. Integer labels are exactly 1 / 0 / -1 (validated by the loss), so they stay integers:
# "positive" and "known" are compares, never a float conversion. Float labels may be soft.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_labels(ptrs, mask, CDT: tl.constexpr, HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr):
    """(positive mass y+, valid): y+ a bool tile for hard labels, max(y, 0) for soft ones; valid =
    in bounds and known (y != -1)."""
    raw = tl.load(ptrs, mask=mask, other=0)
    if HARD_LABELS:
        if HAS_UNKNOWN:  # signed integers
            pos = raw > 0
            valid = mask & (raw >= 0)
        else:  # bool / uint8: compare against 0, never a signed 1-bit "> 0"
            pos = raw != 0
            valid = mask
    else:
        y = raw.to(CDT)
        pos = tl.maximum(y, 0.0)
        if HAS_UNKNOWN:
            valid = mask & (y != -1.0)
        else:
            valid = mask
    return pos, valid


@triton.jit
def _pick(pos, value, HARD_LABELS: tl.constexpr):
    """y+ * value (value broadcast over rows)."""
    if HARD_LABELS:
        return tl.where(pos, value, 0.0)
    else:
        return pos * value


# ---------------------------------------------------------------------------------------------
# Row statistics: (A, B) per row, sums over the row (a max for min_n).
#   rebalance: A = sum_j y+ / n_j (the repeat rate r_i)
#   CB average_w: A = sum y+ cb_j, B = sum y+;  average_n: A = sum y+ n_j, B = sum y+
#   CB min_n: A = B = max over positives of cb_j (cb is decreasing in n, so this is cb(min n))
# ---------------------------------------------------------------------------------------------
@triton.jit
def _accumulate_stats(A, B, pos, cols, cmask, cp_ptr, C, REWEIGHT: tl.constexpr, HARD_LABELS: tl.constexpr):
    CDT = A.dtype
    if REWEIGHT == _REBALANCE:
        inv = tl.load(cp_ptr + _ROW_INV * C + cols, mask=cmask, other=0.0)
        A += tl.sum(_pick(pos, inv[None, :], HARD_LABELS), axis=1)
    elif REWEIGHT == _CB_MIN_N:
        cw = tl.load(cp_ptr + _ROW_CLASS_W * C + cols, mask=cmask, other=0.0)
        if HARD_LABELS:
            a = tl.where(pos, cw[None, :], 0.0)
        else:
            a = tl.where(pos > 0.0, cw[None, :], 0.0)
        A = tl.maximum(A, tl.max(a, axis=1))
        B = A
    else:
        if REWEIGHT == _CB_AVG_N:
            v = tl.load(cp_ptr + _ROW_FREQ * C + cols, mask=cmask, other=0.0)
        else:
            v = tl.load(cp_ptr + _ROW_CLASS_W * C + cols, mask=cmask, other=0.0)
        A += tl.sum(_pick(pos, v[None, :], HARD_LABELS), axis=1)
        if HARD_LABELS:
            B += tl.sum(pos.to(CDT), axis=1)
        else:
            B += tl.sum(pos, axis=1)
    return A, B


@triton.jit
def _row_weight(A, B, aux_ptr, coef, map_alpha, map_beta, map_gamma, cb_log_beta, w_max,
                REWEIGHT: tl.constexpr, NORM: tl.constexpr):
    """Per-row terms, as [BLOCK_N, 1] columns or scalars: (row value, row has a positive, wa, wb).

    The scaled weight of an element is w * wa, or sigmoid(.) * wa + wb for rebalance (wb = wa *
    alpha): wa folds the loss scale and aux[0] (``coef``) and the normaliser (by_instance: 1 / row
    max, the W_MAX closed form; by_batch: aux[1]). Row value: 1 / r_i (rebalance), the row's CB
    weight (CB row modes, used where the row has a positive).
    """
    if REWEIGHT == _REBALANCE:
        row = 1.0 / A  # inf for a row without positives: every weight is then alpha + 1
        has_pos = A > 0.0
        if NORM == _NORM_INSTANCE:
            # the row max sits at the extreme 1/n_j, W_MAX (sigmoid is monotone in 1/n_j)
            wa = (coef / (_rebalance_sigmoid(w_max, row, map_beta, map_gamma) + map_alpha))[:, None]
        elif NORM == _NORM_BATCH:
            wa = coef * tl.load(aux_ptr + 1)
        else:
            wa = coef
    elif REWEIGHT == _CB_AVG_W or REWEIGHT == _CB_AVG_N or REWEIGHT == _CB_MIN_N:
        has_pos = B > 0.0
        if REWEIGHT == _CB_AVG_W:
            row = A / B
        elif REWEIGHT == _CB_AVG_N:
            # cb(mean n) = (1 - beta) / (1 - beta^m) = expm1(log beta) / expm1(m log beta): log beta
            # comes from the host in float64, so neither difference loses digits as beta -> 1
            row = _expm1(tl.zeros_like(A) + cb_log_beta) / _expm1((A / B) * cb_log_beta)
        else:
            row = A
        if NORM == _NORM_INSTANCE:
            wa = (coef / tl.where(has_pos, row, w_max))[:, None]
        elif NORM == _NORM_BATCH:
            wa = coef * tl.load(aux_ptr + 1)
        else:
            wa = coef
    else:
        row = A
        has_pos = A > 0.0
        if NORM == _NORM_INSTANCE:
            wa = coef / w_max
        elif NORM == _NORM_BATCH:
            wa = coef * tl.load(aux_ptr + 1)
        else:
            wa = coef
    return row[:, None], has_pos[:, None], wa, wa * map_alpha


# ---------------------------------------------------------------------------------------------
# The per-element terms (names as in reference.py).
# ---------------------------------------------------------------------------------------------
@triton.jit
def _reweight(cols, cmask, cp_ptr, C, row, has_pos, wa, wb, map_beta, map_gamma, REWEIGHT: tl.constexpr):
    """reweight * normalize * loss scale (* aux[0]): the element's scaled weight."""
    if REWEIGHT == _REBALANCE:  # rebalance_weight: alpha + sigmoid(beta (inv_j / r_i - gamma))
        inv = tl.load(cp_ptr + _ROW_INV * C + cols, mask=cmask, other=0.0)
        w = tl.fma(_rebalance_sigmoid(inv[None, :], row, map_beta, map_gamma), wa, wb)
    elif REWEIGHT == _CLASS:  # inverse_weight / cb_weight by_class: the class vector
        w = tl.load(cp_ptr + _ROW_CLASS_W * C + cols, mask=cmask, other=0.0)[None, :] * wa
    elif REWEIGHT == _CB_AVG_W or REWEIGHT == _CB_AVG_N or REWEIGHT == _CB_MIN_N:  # cb_weight per row
        cw = tl.load(cp_ptr + _ROW_CLASS_W * C + cols, mask=cmask, other=0.0)
        w = tl.where(has_pos, row, cw[None, :]) * wa
    else:
        w = wa
    return w



@triton.jit
def _loss_tile(pos, valid, z_ptr, wt_ptr, cp_ptr, out_ptr, grad_ptr, rows64, rmask, cols, cmask, C,
               stride_z, stride_wn, stride_wc, row, has_pos, wa, wb,
               map_beta, map_gamma, neg_scale, inv_neg_scale, gamma,
               REWEIGHT: tl.constexpr, LOGIT_REG: tl.constexpr, POW: tl.constexpr,
               REDUCE_NONE: tl.constexpr, HAS_GRADIENTS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
               HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr):
    """Loss (returned, zero where masked or unknown) and gradient (stored) of one tile."""
    CDT = cp_ptr.dtype.element_ty
    mask = rmask[:, None] & cmask[None, :]
    z = tl.load(z_ptr + rows64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(CDT)
    w = _reweight(cols, cmask, cp_ptr, C, row, has_pos, wa, wb, map_beta, map_gamma, REWEIGHT)
    if HAS_WEIGHT:
        wt = tl.load(wt_ptr + rows64[:, None] * stride_wn + cols[None, :].to(tl.int64) * stride_wc,
                     mask=mask, other=0.0)
        w = w * wt.to(CDT)
    if HARD_LABELS:
        # xs = -x on positives, x on negatives; d/dz = -+ w' * dL/dx * lambda = -+ w * dL/dxs
        if LOGIT_REG:  # negative_tolerant: x = (z + b) lambda, w' = w / lambda on negatives
            b = tl.load(cp_ptr + _ROW_BIAS * C + cols, mask=cmask, other=0.0)
            xs = (z + b[None, :]) * tl.where(pos, -1.0, neg_scale)
            loss_w = tl.where(pos, w, w * inv_neg_scale)
        else:
            xs = tl.where(pos, -z, z)
            loss_w = w
        loss, d = _bce_focal_hard(xs, pos, gamma, POW, HAS_GRADIENTS)
        g = tl.where(pos, -w, w) * d
    else:
        if LOGIT_REG:  # negative_tolerant
            b = tl.load(cp_ptr + _ROW_BIAS * C + cols, mask=cmask, other=0.0)
            s = pos + neg_scale * (1.0 - pos)
            x = (z + b[None, :]) * s
            loss_w = w * (pos + (1.0 - pos) / neg_scale)
        else:
            x = z
            loss_w = w
        loss, dx = _bce_focal_soft(x, pos, gamma, POW, HAS_GRADIENTS)
        g = loss_w * dx
        if LOGIT_REG:
            g = g * s
    loss = tl.where(valid, loss_w * loss, 0.0)
    out_offs = rows64[:, None] * C + cols[None, :]
    if REDUCE_NONE:
        tl.store(out_ptr + out_offs, loss, mask=mask)
    if HAS_GRADIENTS:
        if HAS_UNKNOWN or not HARD_LABELS:  # else valid is the store mask itself
            g = tl.where(valid, g, 0.0)
        tl.store(grad_ptr + out_offs, g.to(grad_ptr.dtype.element_ty), mask=mask)
    return loss


@triton.jit
def _fused_kernel(z_ptr, y_ptr, wt_ptr, cp_ptr, aux_ptr, stats_ptr, out_ptr, grad_ptr,
                  N, C, stride_z, stride_y, stride_wn, stride_wc, chunk, split, n_slot_rows,
                  map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max,
                  REWEIGHT: tl.constexpr, NORM: tl.constexpr, LOGIT_REG: tl.constexpr, POW: tl.constexpr,
                  REDUCE_NONE: tl.constexpr, HAS_GRADIENTS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                  HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr, STATS: tl.constexpr,
                  ONE_TILE: tl.constexpr, MIN_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
                  TILE_ELEMS: tl.constexpr):
    """Rows [pid0 * BLOCK_N, +BLOCK_N) x columns [pid1 * chunk, +chunk): loss and gradient.

    out_ptr: the N x C loss ("none") or the partial sums (already times aux[0]), one slot per
    MIN_ROWS rows and column chunk (a program with more rows fills its extra slots with zeros, so
    the slot count does not depend on the autotuned tile).
    """
    BLOCK_N: tl.constexpr = (TILE_ELEMS + BLOCK_C - 1) // BLOCK_C
    CDT = cp_ptr.dtype.element_ty
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_r * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    y_rows = y_ptr + rows64[:, None] * stride_y
    coef = scale * tl.load(aux_ptr)  # the reduction scale rides on every element's weight
    inv_neg_scale = 1.0 / neg_scale
    A = tl.zeros([BLOCK_N], dtype=CDT)
    B = tl.zeros([BLOCK_N], dtype=CDT)
    if ONE_TILE:
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        pos, valid = _load_labels(y_rows + cols[None, :], rmask[:, None] & cmask[None, :], CDT,
                                  HARD_LABELS, HAS_UNKNOWN)
        if STATS == _STATS_INLINE:
            A, B = _accumulate_stats(A, B, pos, cols, cmask, cp_ptr, C, REWEIGHT, HARD_LABELS)
        row, has_pos, wa, wb = _row_weight(A, B, aux_ptr, coef, map_alpha, map_beta, map_gamma, cb_log_beta, w_max,
                                           REWEIGHT, NORM)
        acc = _loss_tile(pos, valid, z_ptr, wt_ptr, cp_ptr, out_ptr, grad_ptr, rows64, rmask, cols, cmask, C,
                         stride_z, stride_wn, stride_wc, row, has_pos, wa, wb,
                         map_beta, map_gamma, neg_scale, inv_neg_scale, gamma,
                         REWEIGHT, LOGIT_REG, POW, REDUCE_NONE, HAS_GRADIENTS, HAS_WEIGHT, HARD_LABELS,
                         HAS_UNKNOWN)
    else:
        if STATS == _STATS_INLINE:  # first pass over the whole row: labels only
            for c0 in range(0, C, BLOCK_C):
                cols = tl.multiple_of(c0, 16) + tl.arange(0, BLOCK_C)
                cmask = cols < C
                pos, valid = _load_labels(y_rows + cols[None, :], rmask[:, None] & cmask[None, :], CDT,
                                          HARD_LABELS, HAS_UNKNOWN)
                A, B = _accumulate_stats(A, B, pos, cols, cmask, cp_ptr, C, REWEIGHT, HARD_LABELS)
        elif STATS == _STATS_BUFFER:  # partial statistics of the column chunks, added in chunk order
            for s in range(0, split):
                a = tl.load(stats_ptr + s * N + rows, mask=rmask, other=0.0)
                b = tl.load(stats_ptr + (split + s) * N + rows, mask=rmask, other=0.0)
                if REWEIGHT == _CB_MIN_N:
                    A = tl.maximum(A, a)
                else:
                    A += a
                    B += b
            if REWEIGHT == _CB_MIN_N:
                B = A
        row, has_pos, wa, wb = _row_weight(A, B, aux_ptr, coef, map_alpha, map_beta, map_gamma, cb_log_beta, w_max,
                                           REWEIGHT, NORM)
        c_begin = pid_s * chunk
        c_end = tl.minimum(c_begin + chunk, C)
        acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=CDT)
        for c0 in range(c_begin, c_end, BLOCK_C):
            cols = tl.multiple_of(c0, 16) + tl.arange(0, BLOCK_C)
            cmask = cols < c_end
            pos, valid = _load_labels(y_rows + cols[None, :], rmask[:, None] & cmask[None, :], CDT,
                                      HARD_LABELS, HAS_UNKNOWN)
            tile = _loss_tile(pos, valid, z_ptr, wt_ptr, cp_ptr, out_ptr, grad_ptr, rows64, rmask, cols, cmask, C,
                              stride_z, stride_wn, stride_wc, row, has_pos, wa, wb,
                              map_beta, map_gamma, neg_scale, inv_neg_scale, gamma,
                              REWEIGHT, LOGIT_REG, POW, REDUCE_NONE, HAS_GRADIENTS, HAS_WEIGHT, HARD_LABELS,
                              HAS_UNKNOWN)
            if not REDUCE_NONE:
                acc += tile
    if not REDUCE_NONE:
        part = tl.sum(tl.sum(acc, axis=1), axis=0)
        RATIO: tl.constexpr = BLOCK_N // MIN_ROWS
        k = tl.arange(0, RATIO)
        slot_row = pid_r * RATIO + k
        tl.store(out_ptr + pid_s * n_slot_rows + slot_row, tl.where(k == 0, part, 0.0),
                 mask=slot_row < n_slot_rows)


@triton.jit
def _stats_kernel(y_ptr, cp_ptr, stats_ptr, N, C, stride_y, chunk, split,
                  REWEIGHT: tl.constexpr, HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """Row statistics of one row over one column chunk: stats[0 | 1, chunk, row]."""
    rows = tl.program_id(0) + tl.arange(0, 1)
    pid_s = tl.program_id(1)
    y_rows = y_ptr + rows.to(tl.int64)[:, None] * stride_y
    CDT = stats_ptr.dtype.element_ty
    A = tl.zeros([1], dtype=CDT)
    B = tl.zeros([1], dtype=CDT)
    c_begin = pid_s * chunk
    c_end = tl.minimum(c_begin + chunk, C)
    for c0 in range(c_begin, c_end, BLOCK_C):
        cols = tl.multiple_of(c0, 16) + tl.arange(0, BLOCK_C)
        cmask = cols < c_end
        pos, valid = _load_labels(y_rows + cols[None, :], cmask[None, :], CDT, HARD_LABELS, HAS_UNKNOWN)
        A, B = _accumulate_stats(A, B, pos, cols, cmask, cp_ptr, C, REWEIGHT, HARD_LABELS)
    tl.store(stats_ptr + pid_s * N + rows, A)
    tl.store(stats_ptr + (split + pid_s) * N + rows, B)


@triton.jit
def _sum_kernel(part_ptr, n, loss_ptr, BLOCK: tl.constexpr):
    """loss = sum(partials), added in index order by one program (bit-reproducible)."""
    acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    for i in range(0, n, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + offs, mask=offs < n, other=0.0)
    tl.store(loss_ptr, tl.sum(acc, axis=0))


@triton.jit
def _scale_kernel(g_ptr, go_ptr, n, iters, BLOCK: tl.constexpr):
    """g *= go for a 1-element go; nothing (not even a read of g) when go is exactly 1."""
    go = tl.load(go_ptr)
    if go != 1.0:
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        for i in range(0, iters):
            offs = (pid + i * nprog).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            m = offs < n
            g = tl.load(g_ptr + offs, mask=m, other=0.0)
            tl.store(g_ptr + offs, (g.to(go.dtype) * go).to(g_ptr.dtype.element_ty), mask=m)

