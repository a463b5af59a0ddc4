"""The Triton kernels: row statistics, per-element weights, the fused loss + gradient tile loop with
its in-kernel reduction, the statistics pre-pass, and the gradient scale.

Every option is a ``tl.constexpr``, so unused terms compile away. The terms mirror
``reference.py`` (``rebalance_weight``, ``cb_weight``, ``normalize``, ``negative_tolerant``,
``bce``, ``focal``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._spec import (BIAS, CLASS_W, FREQ, INV_FREQ, NORM_BATCH, NORM_INSTANCE, REWEIGHT_CB_AVG_N,
                     REWEIGHT_CB_AVG_W, REWEIGHT_CB_MIN_N, REWEIGHT_CLASS, REWEIGHT_REBALANCE)
from ._access import _col, _columns, _is_pos, _ld, _load_labels, _pick_add, _tile_labels
from ._math import (INTERPRET, _LOG2E, _asl_element, _bce_focal_bits, _bce_focal_soft, _bf16_f32, _expm1,
                    _label_sigma, _label_sigma_w, _sigmoid_bits)

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
# The launcher's kernel table (``launcher.kernel_table``): the first 4 rows of class_params, a fifth,
# -map_beta * S / n_j (the rebalance sigmoid's per-class slope: one FMA before its ex2), a sixth,
# ASL's POS_W, then the scalar options (OPTIONS, host float64 values) for fp64 kernels.
ROW_REB_SLOPE = 4
ROW_POS_W = 5
TABLE_ROWS = 6
_ROW_REB_SLOPE = tl.constexpr(ROW_REB_SLOPE)
_ROW_POS_W = tl.constexpr(ROW_POS_W)
_TABLE_ROWS = tl.constexpr(TABLE_ROWS)
# The scalar options, derived on the host in float64 (S: see _math): map_alpha, map_beta *
# map_gamma * S, -map_beta * S * w_max, w_max, lambda * S, 1 / lambda, gamma, gamma / S, scale / S,
# log(cb_beta), and the asymmetric form's gamma_neg, clip and target map t = y+ keep + shift.
OPTIONS = ("alpha", "reb_c", "reb_slope_max", "w_max", "sig_neg", "inv_neg", "gamma", "gamma_s", "coef_s",
           "cb_log_beta", "gamma_neg", "clip", "keep", "shift")
# ASYM (a constexpr): 0 the DB form; else ASYM_ON plus ASYM_CLIP (clip > 0) and ASYM_FOCUS_GRAD.
ASYM_ON, ASYM_CLIP, ASYM_FOCUS_GRAD = 1, 2, 4
_INTERPRETED = tl.constexpr(INTERPRET)

# STATS: where the row statistics come from.
# STATS_GIVEN: contract v2's ``row_stats`` (2 x N), and by_batch's 1 / max in aux[1].
STATS_NONE, STATS_INLINE, STATS_BUFFER, STATS_GIVEN = 0, 1, 2, 3
_STATS_INLINE = tl.constexpr(STATS_INLINE)
_STATS_BUFFER = tl.constexpr(STATS_BUFFER)
_STATS_GIVEN = tl.constexpr(STATS_GIVEN)
# The reweight modes whose weights need row statistics.
STATS_MODES = (REWEIGHT_REBALANCE, REWEIGHT_CB_AVG_W, REWEIGHT_CB_AVG_N, REWEIGHT_CB_MIN_N)
# The column loop's statistics run over tiles this many loss tiles wide (half the loop overhead),
# except where they keep two accumulators (CB average_w / average_n: sum and count), which at twice
# the width take 64 registers a thread on 16-warp tiles and spill.
STATS_WIDE_MODES = (REWEIGHT_REBALANCE, REWEIGHT_CB_MIN_N)


def stats_width(reweight):
    return 2 if reweight in STATS_WIDE_MODES else 1


# sync buffer (int64): [ticket counter of the in-kernel reduction, spare]
SYNC_SLOTS = 2
# the batch-max weight as an order-preserving int64 key (atomic max), before any row: the minimum
KEY_MIN = -(2 ** 63)
SUM_BLOCK = tl.constexpr(1024)  # the last program adds the partials this many at a time


@triton.jit
def _f32(x):
    """An fp32 kernel argument (a plain Python float under the interpreter) as an fp32 scalar."""
    if _INTERPRETED:
        return tl.full([], x, tl.float32)
    else:
        return x


@triton.jit
def _options(cp_ptr, C, alpha, reb_c, reb_slope_max, w_max, sig_neg, inv_neg, gamma, gamma_s, coef_s, cb_log_beta,
             gamma_neg, clip, keep, shift):
    """The scalar options (OPTIONS) in the compute dtype. fp32 kernels take their fp32 arguments,
    which instructions read straight from the constant bank (no register held through the row
    loop); fp64 kernels read the float64 values at the end of the class table."""
    if cp_ptr.dtype.element_ty == tl.float64:
        o = cp_ptr + _TABLE_ROWS * C
        return (tl.load(o), tl.load(o + 1), tl.load(o + 2), tl.load(o + 3), tl.load(o + 4), tl.load(o + 5),
                tl.load(o + 6), tl.load(o + 7), tl.load(o + 8), tl.load(o + 9), tl.load(o + 10), tl.load(o + 11),
                tl.load(o + 12), tl.load(o + 13))
    else:
        return (_f32(alpha), _f32(reb_c), _f32(reb_slope_max), _f32(w_max), _f32(sig_neg), _f32(inv_neg),
                _f32(gamma), _f32(gamma_s), _f32(coef_s), _f32(cb_log_beta), _f32(gamma_neg), _f32(clip),
                _f32(keep), _f32(shift))


# ---------------------------------------------------------------------------------------------
# Row statistics: (A, B) per row, sums over the row (a max for min_n), accumulated per lane and
# reduced across the lanes once per row (``_reduce_stats``).
#   rebalance: A = sum_j y+ / n_j (the repeat rate r_i)
#   CB average_w: A = sum y+ cb_j, B = sum y+;  average_n: A = sum y+ n_j, B = sum y+
#   CB min_n: A = B = max over positives of cb_j (cb is decreasing in n, so this is cb(min n))
# ---------------------------------------------------------------------------------------------
@triton.jit
def _accumulate_stats(A, B, pos, cp_ptr, C, cols, cmask, REWEIGHT: tl.constexpr, HARD_LABELS: tl.constexpr,
                      HAS_UNKNOWN: tl.constexpr, MASK_C: tl.constexpr):
    if REWEIGHT == _REBALANCE:
        A = _pick_add(A, pos, _col(cp_ptr, _ROW_INV, C, cols, 0, cmask, MASK_C, A.shape[0]), HARD_LABELS, HAS_UNKNOWN)
    elif REWEIGHT == _CB_MIN_N:
        cw = _col(cp_ptr, _ROW_CLASS_W, C, cols, 0, cmask, MASK_C, A.shape[0])
        if HARD_LABELS:
            A = tl.maximum(A, tl.where(_is_pos(pos, HAS_UNKNOWN), cw, 0.0))
        else:
            A = tl.maximum(A, tl.where(pos > 0.0, cw, 0.0))
    else:
        if REWEIGHT == _CB_AVG_N:
            v = _col(cp_ptr, _ROW_FREQ, C, cols, 0, cmask, MASK_C, A.shape[0])
        else:
            v = _col(cp_ptr, _ROW_CLASS_W, C, cols, 0, cmask, MASK_C, A.shape[0])
        A = _pick_add(A, pos, v, HARD_LABELS, HAS_UNKNOWN)
        B = _pick_add(B, pos, tl.full(B.shape, 1.0, B.dtype), HARD_LABELS, HAS_UNKNOWN)
    return A, B


@triton.jit
def _reduce_stats(A, B, REWEIGHT: tl.constexpr):
    if REWEIGHT == _CB_MIN_N:
        a = tl.max(A, axis=1)
        return a, a
    else:
        return tl.sum(A, axis=1), tl.sum(B, axis=1)


@triton.jit
def _stats_pass(y_rows, cp_ptr, C, c_begin, c_end, CDT: tl.constexpr, REWEIGHT: tl.constexpr,
                HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_C: tl.constexpr, C_TILES: tl.constexpr, VEC: tl.constexpr):
    """Row statistics over columns [c_begin, c_end) of rows ``y_rows`` (all in bounds): labels only;
    full tiles unmasked (C_TILES > 0: exactly that many, unrolled), then the tail."""
    A = tl.zeros([BLOCK_N, BLOCK_C], dtype=CDT)
    B = tl.zeros([BLOCK_N, BLOCK_C], dtype=CDT)
    if C_TILES > 0:
        for c in tl.static_range(C_TILES):
            cols = _columns(c * BLOCK_C, BLOCK_C, VEC)
            pos, known = _load_labels(y_rows + cols, None, CDT, HARD_LABELS, HAS_UNKNOWN)
            A, B = _accumulate_stats(A, B, pos, cp_ptr, C, cols, None, REWEIGHT, HARD_LABELS, HAS_UNKNOWN, False)
    else:
        ALIGN: tl.constexpr = BLOCK_C if BLOCK_C < 16 else 16
        c_full = c_begin + (c_end - c_begin) // BLOCK_C * BLOCK_C
        for c0 in range(c_begin, c_full, BLOCK_C):
            cols = _columns(tl.multiple_of(c0, ALIGN), BLOCK_C, VEC)
            pos, known = _load_labels(y_rows + cols, None, CDT, HARD_LABELS, HAS_UNKNOWN)
            A, B = _accumulate_stats(A, B, pos, cp_ptr, C, cols, None, REWEIGHT, HARD_LABELS, HAS_UNKNOWN, False)
        if c_full < c_end:
            cols = _columns(c_full, BLOCK_C, VEC)
            cmask = cols < c_end
            pos, known = _load_labels(y_rows + cols, cmask, CDT, HARD_LABELS, HAS_UNKNOWN)
            A, B = _accumulate_stats(A, B, pos, cp_ptr, C, cols, cmask, REWEIGHT, HARD_LABELS, HAS_UNKNOWN, True)
    return _reduce_stats(A, B, REWEIGHT)


@triton.jit
def _row_recip(a):
    """1 / a for a >= 0 (inf at 0). fp32: Newton's iteration from the bit-trick guess (relative
    error 1/8, squared each step; 4 steps reach rounding), so the rows add no MUFU instruction to
    the elements' five."""
    if a.dtype == tl.float64:
        return 1.0 / a
    else:
        x = (0x7EF311C3 - a.to(tl.int32, bitcast=True)).to(tl.float32, bitcast=True)
        for _ in tl.static_range(4):
            x = x * (2.0 - a * x)
        return tl.where(a > 0.0, x, float("inf"))


@triton.jit
def _row_value(A, B, cb_log_beta, REWEIGHT: tl.constexpr):
    """(row value, row has a positive): 1 / r_i (rebalance; inf without positives), the row's CB
    weight (CB row modes, used where the row has a positive)."""
    if REWEIGHT == _REBALANCE:
        return _row_recip(A), A > 0.0
    elif REWEIGHT == _CB_AVG_W:
        return A / B, B > 0.0
    elif REWEIGHT == _CB_AVG_N:
        # cb(mean n) = (1 - beta) / (1 - beta^m) = expm1(log beta) / expm1(m log beta): log beta
        # comes from the host in float64, so neither difference loses digits as beta -> 1
        return _expm1(tl.zeros_like(A) + cb_log_beta) / _expm1((A / B) * cb_log_beta), B > 0.0
    elif REWEIGHT == _CB_MIN_N:
        return A, B > 0.0
    else:
        return A, A > 0.0


@triton.jit
def _row_max_weight(row, has_pos, map_alpha, reb_c, reb_slope_max, w_max, REWEIGHT: tl.constexpr):
    """The largest re-weighting of a row over its C columns (reference.normalize's amax).
    Rebalance: at the extreme 1/n_j (sigmoid is monotone in it), W_MAX; CB row modes: the row
    weight, or the largest class weight W_MAX for a row without positives; class vector: W_MAX."""
    if REWEIGHT == _REBALANCE:
        return _sigmoid_bits(reb_slope_max * row + reb_c) + map_alpha
    elif REWEIGHT == _CB_AVG_W or REWEIGHT == _CB_AVG_N or REWEIGHT == _CB_MIN_N:
        return tl.where(has_pos, row, w_max)
    elif REWEIGHT == _CLASS:
        return tl.zeros_like(row) + w_max
    else:
        return tl.zeros_like(row) + 1.0


# The batch max as an int64 key whose signed order is the float order (atomic max is then exact and
# order-independent); the map is its own inverse.
@triton.jit
def _float_key(x):
    if x.dtype == tl.float64:
        bits = x.to(tl.int64, bitcast=True)
        return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    else:
        bits = x.to(tl.int32, bitcast=True)
        return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _key_float(key, CDT: tl.constexpr):
    if CDT == tl.float64:
        return (key ^ ((key >> 63) & 0x7FFFFFFFFFFFFFFF)).to(tl.float64, bitcast=True)
    else:
        bits = key.to(tl.int32)
        return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


# ---------------------------------------------------------------------------------------------
# One tile: loss (accumulated per lane) and gradient (stored). Grouped arguments:
#   P = (z_ptr, y_rows, wt_ptr, cp_ptr, out_ptr, grad_ptr, rows64, rmask, C, stride_z, stride_wn,
#        stride_wc, csr): where; rows64 clamped into [0, N) (loads need no row mask), rmask for
#        stores; csr = (crow_ptr, col_ptr, rows64) of CSR labels
#   R = (row, has_pos, rw, wa, wb): per-row weight terms, already over S, zero on rows past N
#   S = (reb_c, sig_neg, inv_neg, gamma, gamma_s, gamma_neg, clip, keep, shift): scalar options in
#       the compute dtype
#   F = (REWEIGHT, LOGIT_REG, POW, REDUCE_NONE, HAS_GRADIENTS, HAS_WEIGHT, HARD_LABELS, HAS_UNKNOWN, ASYM,
#       CSR): the constexpr flags (the compute dtype is the class table's)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _tile(acc, lab, cols, SHIFT: tl.constexpr, c_end, MASK_C: tl.constexpr, P, R, S, F):
    """Columns ``cols`` + SHIFT ([1, BLOCK_C]; masked by c_end iff MASK_C) of the tile's rows: the
    constant SHIFT is added to each address last, where it folds into the load's or store's offset
    (added to ``cols`` it costs each access its own 64-bit address); ``lab`` its
    (y+, known) from _load_labels, or None to load them. The element's weight over S: sigmoid * wa
    + wb (rebalance), ``rw`` where the row has a positive else cb_j * wa (CB row modes), cb_j * wa
    (class vector) or wa."""
    z_ptr, y_rows, wt_ptr, cp_ptr, out_ptr, grad_ptr, rows64, rmask, C, stride_z, stride_wn, stride_wc, csr = P
    row, has_pos, rw, wa, wb = R
    reb_c, sig_neg, inv_neg, gamma, gamma_s, gamma_neg, clip, keep, shift = S
    # (indexing keeps the flags constexpr where unpacking would not; F is passed inline for the same reason)
    REWEIGHT: tl.constexpr = F[0]
    LOGIT_REG: tl.constexpr = F[1]
    POW: tl.constexpr = F[2]
    REDUCE_NONE: tl.constexpr = F[3]
    HAS_GRADIENTS: tl.constexpr = F[4]
    HAS_WEIGHT: tl.constexpr = F[5]
    HARD_LABELS: tl.constexpr = F[6]
    HAS_UNKNOWN: tl.constexpr = F[7]
    ASYM: tl.constexpr = F[8]
    CSR: tl.constexpr = F[9]
    CDT: tl.constexpr = cp_ptr.dtype.element_ty
    BLOCK_N: tl.constexpr = rows64.shape[0]
    cmask = cols + SHIFT < c_end
    if MASK_C:
        lmask = cmask
        mask = rmask & cmask
    else:
        lmask = None
        mask = rmask
    if lab is None:
        if CSR:
            pos, known = _tile_labels(y_rows, cols + SHIFT, lmask, csr, CDT, HARD_LABELS, HAS_UNKNOWN, CSR)
        else:
            pos, known = _load_labels(y_rows + cols + SHIFT, lmask, CDT, HARD_LABELS, HAS_UNKNOWN)
    else:
        pos, known = lab
    z = _ld(z_ptr + rows64 * stride_z + cols + SHIFT, lmask)
    if z.dtype == tl.bfloat16:
        z = _bf16_f32(z)
    else:
        z = z.to(CDT)
    # w: the element's re-weighting * normalisation * loss scale * aux[0], over S
    if REWEIGHT == _REBALANCE:  # alpha + sigmoid(beta (1/n_j / r_i - gamma)), the sigmoid in base 2
        w = _sigmoid_bits(_col(cp_ptr, _ROW_REB_SLOPE, C, cols, SHIFT, cmask, MASK_C, BLOCK_N) * row + reb_c) * wa + wb
    elif REWEIGHT == _CLASS:
        w = _col(cp_ptr, _ROW_CLASS_W, C, cols, SHIFT, cmask, MASK_C, BLOCK_N) * wa
    elif REWEIGHT == _CB_AVG_W or REWEIGHT == _CB_AVG_N or REWEIGHT == _CB_MIN_N:
        w = tl.where(has_pos, rw, _col(cp_ptr, _ROW_CLASS_W, C, cols, SHIFT, cmask, MASK_C, BLOCK_N) * wa)
    else:
        w = tl.broadcast_to(wa, z.shape)
    if HAS_WEIGHT:
        wt = _ld(wt_ptr + rows64 * stride_wn + (cols + SHIFT).to(tl.int64) * stride_wc, lmask)
        w = w * wt.to(CDT)
    if LOGIT_REG:
        z = z + _col(cp_ptr, _ROW_BIAS, C, cols, SHIFT, cmask, MASK_C, BLOCK_N)
    if ASYM > 0:
        # natural units; NTR from y+ (soft allowed), ASL's target from the smoothed y+
        unit = _LOG2E if CDT == tl.float32 else 1.0
        yp = _is_pos(pos, HAS_UNKNOWN).to(CDT) if HARD_LABELS else pos
        w = w * unit
        if LOGIT_REG:
            sc = yp + (1.0 - yp) * (sig_neg / unit)
            w = w * (yp + (1.0 - yp) * inv_neg)
            z = z * sc
        loss, d = _asl_element(z, yp * keep + shift, _col(cp_ptr, _ROW_POS_W, C, cols, SHIFT, cmask, MASK_C, BLOCK_N),
                               gamma, gamma_neg, clip, ASYM % 4 >= 2, ASYM >= 4, HAS_GRADIENTS)  # ASYM_CLIP, _FOCUS_GRAD
        loss = w * loss
        g = w * d
        if LOGIT_REG:
            g = g * sc
    elif HARD_LABELS:
        # xs = S x pushed the wrong way: -S x on positives, S lambda x on negatives (NTR scales the
        # negatives' logits by lambda and their weight by 1 / lambda); d/dz = -w dl/dx on
        # positives, w dl/dx on negatives: (w / S) times the same factor as xs.
        s_pos = tl.full(z.shape, -_LOG2E if CDT == tl.float32 else -1.0, CDT)
        s_neg = tl.broadcast_to(sig_neg, z.shape)
        if HAS_UNKNOWN:
            s = tl.where(pos, s_pos, s_neg)
            if LOGIT_REG:
                w = tl.where(pos, w, w * inv_neg)
        elif LOGIT_REG:
            s, w = _label_sigma_w(pos, s_pos, s_neg, w, tl.broadcast_to(inv_neg, z.shape))
        else:
            s = _label_sigma(pos, s_pos, s_neg)
        m, l, t = _bce_focal_bits(z * s, gamma, gamma_s, POW, HAS_GRADIENTS)
        mw = m * w
        loss = mw * l
        g = (mw * s) * t
    else:
        # soft labels, natural units: x = z s with s = y+ + lambda (1 - y+), weight w (y+ + (1 - y+) / lambda)
        unit = _LOG2E if CDT == tl.float32 else 1.0
        if LOGIT_REG:
            s = pos + (1.0 - pos) * (sig_neg / unit)
            w = w * (unit * (pos + (1.0 - pos) * inv_neg))
            loss, d = _bce_focal_soft(z * s, pos, gamma, POW, HAS_GRADIENTS)
            g = d * w * s
        else:
            w = w * unit
            loss, d = _bce_focal_soft(z, pos, gamma, POW, HAS_GRADIENTS)
            g = d * w
        loss = w * loss
    if HAS_UNKNOWN:
        loss = tl.where(known, loss, 0.0)
        g = tl.where(known, g, 0.0)
    out_offs = rows64 * C + cols
    if REDUCE_NONE:
        tl.store(out_ptr + out_offs + SHIFT, loss, mask=mask)
    else:
        if MASK_C:
            loss = tl.where(cmask, loss, 0.0)
        acc += loss
    if HAS_GRADIENTS:
        tl.store(grad_ptr + out_offs + SHIFT, g.to(grad_ptr.dtype.element_ty), mask=mask)
    return acc


@triton.jit
def _main_pass(acc, c_begin, c_end, P, R, S, F, BLOCK_C: tl.constexpr, VEC: tl.constexpr,
               C_TILES: tl.constexpr, EVEN_C: tl.constexpr):
    """Every column tile of the row tile in [c_begin, c_end): C_TILES > 0: exactly that many from 0,
    unrolled (constant offsets, no masks); else a loop over the full tiles, then the masked tail,
    which EVEN_C (tuning.even_c: 1, every chunk a multiple of BLOCK_C; 2, of 2 BLOCK_C, the loop then
    taking two tiles an iteration) compiles away."""
    if C_TILES > 0:
        for c in tl.static_range(C_TILES):
            acc = _tile(acc, None, _columns(c * BLOCK_C, BLOCK_C, VEC), 0, c_end, False, P, R, S, F)
    else:
        ALIGN: tl.constexpr = BLOCK_C if BLOCK_C < 16 else 16
        if EVEN_C:
            c_full = c_end
        else:
            c_full = c_begin + (c_end - c_begin) // BLOCK_C * BLOCK_C
        if EVEN_C == 2:
            # two tiles an iteration: the second's addresses are the first's plus a constant, and
            # the loop's own instructions run half as often
            for c0 in range(c_begin, c_full, 2 * BLOCK_C):
                cols = _columns(tl.multiple_of(c0, ALIGN), BLOCK_C, VEC)
                acc = _tile(acc, None, cols, 0, c_end, False, P, R, S, F)
                acc = _tile(acc, None, cols, BLOCK_C, c_end, False, P, R, S, F)
        else:
            for c0 in range(c_begin, c_full, BLOCK_C):
                acc = _tile(acc, None, _columns(tl.multiple_of(c0, ALIGN), BLOCK_C, VEC), 0, c_end, False, P, R, S, F)
        if not EVEN_C:
            if c_full < c_end:
                acc = _tile(acc, None, _columns(c_full, BLOCK_C, VEC), 0, c_end, True, P, R, S, F)
    return acc


@triton.jit
def _fused_kernel(z_ptr, y_ptr, crow_ptr, col_ptr, wt_ptr, cp_ptr, aux_ptr, stats_ptr, bmax_ptr, part_ptr, sync_ptr,
                  out_ptr, grad_ptr, N, C, stride_z, stride_y, stride_wn, stride_wc, chunk, stats_split,
                  alpha, reb_c, reb_slope_max, w_max, sig_neg, inv_neg, gamma, gamma_s, coef_s, cb_log_beta,
                  gamma_neg, clip, keep, shift,
                  REWEIGHT: tl.constexpr, NORM: tl.constexpr, LOGIT_REG: tl.constexpr, POW: tl.constexpr,
                  REDUCE_NONE: tl.constexpr, HAS_GRADIENTS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                  HARD_LABELS: tl.constexpr, HAS_UNKNOWN: tl.constexpr, STATS: tl.constexpr, ASYM: tl.constexpr,
                  CSR: tl.constexpr, EVEN_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                  ONE_TILE: tl.constexpr, C_TILES: tl.constexpr):
    """Row tiles pid0, pid0 + grid0, ... of BLOCK_N rows x columns [pid1 * chunk, +chunk): loss and
    gradient.

    The scalar options: see OPTIONS and _options. ``out_ptr``: the
    N x C loss ("none") or the 0-d sum. The sum: every program stores its partial (already times
    aux[0]) in ``part_ptr``, then takes a ticket; the last one adds the partials in index order,
    writes the loss and resets the counter for the next call (deterministic, no float atomics).
    ``stats_ptr``: row statistics from ``_stats_kernel`` (STATS_BUFFER: [A | B] x stats_split x N);
    ``bmax_ptr``: its batch-max weight key (by_batch); STATS_GIVEN: ``row_stats`` (A | B) x N, and
    aux[1] = 1 / the batch max. ONE_TILE: the whole row is one tile (BLOCK_C >= C), whose labels
    serve the statistics too. EVEN_C: every column chunk is a multiple of BLOCK_C (1, no masked
    tail) or of 2 BLOCK_C (2, tiles in pairs); see tuning.even_c.
    CSR: ``y_ptr`` holds the stored values (stride_y 0), with ``crow_ptr`` / ``col_ptr``; ASYM: the
    asymmetric element form (ASYM_*).
    """
    CDT = cp_ptr.dtype.element_ty
    if y_ptr.dtype.element_ty == tl.int1:  # bool labels as their bytes
        y_ptr = y_ptr.to(tl.pointer_type(tl.uint8), bitcast=True)
    VEC: tl.constexpr = 128 // z_ptr.dtype.element_ty.primitive_bitwidth  # logits per 128-bit load
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_prog_r = tl.num_programs(0)
    o = _options(cp_ptr, C, alpha, reb_c, reb_slope_max, w_max, sig_neg, inv_neg, gamma, gamma_s, coef_s,
                 cb_log_beta, gamma_neg, clip, keep, shift)
    coef = o[8] * tl.load(aux_ptr)  # the reduction scale and 1/S ride on every weight
    if NORM == _NORM_BATCH:
        if STATS == _STATS_GIVEN:
            coef = coef * tl.load(aux_ptr + 1)
        elif STATS == _STATS_BUFFER:
            coef = coef / _key_float(tl.load(bmax_ptr), CDT)
        else:  # the class vector's or the unit weight's max: known on the host
            coef = coef / _row_max_weight(coef, coef > 0, o[0], o[1], o[2], o[3], REWEIGHT)
    c_begin = pid_s * chunk
    c_end = tl.minimum(c_begin + chunk, C)
    # the loss: per lane within a row tile, then per VEC lanes across tiles (a per-lane accumulator
    # live through the persistent loop would hold BLOCK_N * BLOCK_C / threads registers all along)
    VA: tl.constexpr = VEC if VEC < BLOCK_C else BLOCK_C  # the lanes a thread holds side by side
    acc_rows = tl.zeros([BLOCK_N, BLOCK_C // VA], dtype=CDT)
    for t in range(pid_r, tl.cdiv(N, BLOCK_N), n_prog_r):
        acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=CDT)
        rows = t * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask1 = rows < N
        rows64 = tl.minimum(rows, N - 1).to(tl.int64)[:, None]  # rows past N re-read row N - 1
        y_rows = y_ptr + rows64 * stride_y
        csr = (crow_ptr, col_ptr, rows64)
        P = (z_ptr, y_rows, wt_ptr, cp_ptr, out_ptr, grad_ptr, rows64, rmask1[:, None], C, stride_z, stride_wn,
             stride_wc, csr)
        if ONE_TILE:
            cols = _columns(0, BLOCK_C, VEC)
            lab = _tile_labels(y_rows, cols, cols < C, csr, CDT, HARD_LABELS, HAS_UNKNOWN, CSR)
        if STATS == _STATS_INLINE:
            if ONE_TILE:
                A = tl.zeros([BLOCK_N, BLOCK_C], dtype=CDT)
                A, B = _accumulate_stats(A, A, lab[0], cp_ptr, C, cols, cols < C, REWEIGHT, HARD_LABELS,
                                         HAS_UNKNOWN, True)
                A, B = _reduce_stats(A, B, REWEIGHT)
            elif C_TILES > 0:
                A, B = _stats_pass(y_rows, cp_ptr, C, 0, C, CDT, REWEIGHT, HARD_LABELS, HAS_UNKNOWN, BLOCK_N,
                                   BLOCK_C, C_TILES, VEC)
            else:  # labels only: 16 labels per load, stats_width() loss tiles at a time
                SW: tl.constexpr = 2 * BLOCK_C if REWEIGHT == _REBALANCE or REWEIGHT == _CB_MIN_N else BLOCK_C
                A, B = _stats_pass(y_rows, cp_ptr, C, 0, C, CDT, REWEIGHT, HARD_LABELS, HAS_UNKNOWN, BLOCK_N, SW,
                                   0, 16)
        elif STATS == _STATS_BUFFER or STATS == _STATS_GIVEN:  # partials of the column chunks, in chunk order
            A = tl.zeros([BLOCK_N], dtype=CDT)
            B = tl.zeros([BLOCK_N], dtype=CDT)
            for s in range(0, stats_split):
                a = tl.load(stats_ptr + s * N + rows, mask=rmask1, other=0.0)
                b = tl.load(stats_ptr + (stats_split + s) * N + rows, mask=rmask1, other=0.0)
                if REWEIGHT == _CB_MIN_N:
                    A = tl.maximum(A, a)
                    B = A
                else:
                    A += a
                    B += b
        else:
            A = tl.zeros([BLOCK_N], dtype=CDT)
            B = A
        # the options again inside the loop: fp64 reloads them per row tile instead of holding 20
        # registers through it (fp32: the same kernel arguments, no instruction)
        o = _options(cp_ptr, C, alpha, reb_c, reb_slope_max, w_max, sig_neg, inv_neg, gamma, gamma_s, coef_s,
                     cb_log_beta, gamma_neg, clip, keep, shift)
        row, has_pos = _row_value(A, B, o[9], REWEIGHT)
        if NORM == _NORM_INSTANCE:
            wa = coef / _row_max_weight(row, has_pos, o[0], o[1], o[2], o[3], REWEIGHT)
        else:
            wa = tl.zeros_like(A) + coef
        wa = tl.where(rmask1, wa, 0.0)  # rows past N weigh nothing: no mask on their losses
        wb = wa * o[0] if REWEIGHT == _REBALANCE else wa
        R = (row[:, None], has_pos[:, None], (row * wa)[:, None], wa[:, None], wb[:, None])
        S = (o[1], o[4], o[5], o[6], o[7], o[10], o[11], o[12], o[13])
        if ONE_TILE:
            acc = _tile(acc, lab, cols, 0, C, True, P, R, S,
                        (REWEIGHT, LOGIT_REG, POW, REDUCE_NONE, HAS_GRADIENTS, HAS_WEIGHT, HARD_LABELS, HAS_UNKNOWN,
                         ASYM, CSR))
        else:
            acc = _main_pass(acc, c_begin, c_end, P, R, S,
                             (REWEIGHT, LOGIT_REG, POW, REDUCE_NONE, HAS_GRADIENTS, HAS_WEIGHT, HARD_LABELS,
                              HAS_UNKNOWN, ASYM, CSR), BLOCK_C, VEC, C_TILES, EVEN_C)
        if not REDUCE_NONE:  # each thread adds its own VEC lanes: no data leaves the thread
            acc_rows += tl.sum(tl.reshape(acc, [BLOCK_N, BLOCK_C // VA, VA]), axis=2)
    if not REDUCE_NONE:
        n_prog = n_prog_r * tl.num_programs(1)
        tl.store(part_ptr + pid_s * n_prog_r + pid_r, tl.sum(tl.sum(acc_rows, axis=1), axis=0))
        tl.debug_barrier()  # every thread's store before the ticket (the atomic releases them)
        ticket = tl.atomic_add(sync_ptr, 1)
        if ticket == n_prog - 1:  # the last program: every partial is visible (acquire)
            total = tl.zeros([SUM_BLOCK], dtype=CDT)
            for i in range(0, n_prog, SUM_BLOCK):
                offs = i + tl.arange(0, SUM_BLOCK)
                total += tl.load(part_ptr + offs, mask=offs < n_prog, other=0.0, volatile=True)
            tl.store(out_ptr, tl.sum(total, axis=0))
            tl.atomic_xchg(sync_ptr, 0)  # ready for the next call on this stream


@triton.jit
def _stats_kernel(y_ptr, cp_ptr, stats_ptr, bmax_ptr, N, C, stride_y, chunk,
                  alpha, reb_c, reb_slope_max, w_max, sig_neg, inv_neg, gamma, gamma_s, coef_s, cb_log_beta,
                  gamma_neg, clip, keep, shift,
                  REWEIGHT: tl.constexpr, BATCH_MAX: tl.constexpr, HARD_LABELS: tl.constexpr,
                  HAS_UNKNOWN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row statistics of BLOCK_N rows over one column chunk: stats[0 | 1, chunk, row]. BATCH_MAX
    (one chunk per row): also the batch max of the re-weighting, an atomic max of int64 keys at
    ``bmax_ptr`` (set to KEY_MIN by the launcher)."""
    CDT = stats_ptr.dtype.element_ty
    if y_ptr.dtype.element_ty == tl.int1:  # bool labels as their bytes
        y_ptr = y_ptr.to(tl.pointer_type(tl.uint8), bitcast=True)
    pid_s = tl.program_id(1)
    n_split = tl.num_programs(1)
    c_begin = pid_s * chunk
    c_end = tl.minimum(c_begin + chunk, C)
    best = tl.full([BLOCK_N], float("-inf"), CDT)
    for t in range(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.num_programs(0)):
        rows = t * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask1 = rows < N
        y_rows = y_ptr + tl.minimum(rows, N - 1).to(tl.int64)[:, None] * stride_y
        A, B = _stats_pass(y_rows, cp_ptr, C, c_begin, c_end, CDT, REWEIGHT, HARD_LABELS, HAS_UNKNOWN, BLOCK_N,
                           BLOCK_C, 0, 8)
        tl.store(stats_ptr + pid_s * N + rows, A, mask=rmask1)
        tl.store(stats_ptr + (n_split + pid_s) * N + rows, B, mask=rmask1)
        if BATCH_MAX:
            o = _options(cp_ptr, C, alpha, reb_c, reb_slope_max, w_max, sig_neg, inv_neg, gamma, gamma_s, coef_s,
                         cb_log_beta, gamma_neg, clip, keep, shift)
            row, has_pos = _row_value(A, B, o[9], REWEIGHT)
            m = _row_max_weight(row, has_pos, o[0], o[1], o[2], o[3], REWEIGHT)
            best = tl.maximum(best, tl.where(rmask1, m, float("-inf")))
    if BATCH_MAX:
        tl.atomic_max(bmax_ptr, _float_key(tl.max(best, axis=0)))


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
