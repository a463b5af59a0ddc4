"""Triton backend: the fused Distribution-Balanced loss and its gradient in one pass over the logits.

Same contract as the C++/CUDA op (see ``_spec.py``): ``fused(*ops.op_args(...)) -> (loss, grad)``;
the gradient is finished in the forward (the Jacobian is diagonal), backward only scales it by
``grad_output`` with :func:`scale_grad`, which reads ``grad_output`` on the device.

Kernel layout (one kernel, ``_fused_kernel``, specialised by constexprs)
  * rows regime, ``C <= ONE_TILE_MAX_C``: a program owns ``BLOCK_N`` whole rows, either as one
    tile of next_pow2(C) columns (row statistics from the label tile in registers) or, where that
    pads C by more than 10% (C = 80), as 16/32-wide column tiles with a labels-only statistics
    pass first; the autotuner picks.
  * large ``C``: one row per program, columns looped: the statistics pass first, then loss and
    gradient. When there are too few rows to fill the GPU the columns are also split over
    ``split`` programs, and ``_stats_kernel`` first writes each chunk's partial row statistics,
    which every program adds in chunk order.
  * reductions: every program writes its partial sum (already times aux[0]); ``_sum_kernel``
    adds them in index order. No float atomics anywhere: results are bit-reproducible.
The terms mirror ``reference.py`` (``rebalance_weight``, ``cb_weight``, ``negative_tolerant``,
``bce``, ``focal``); every option is a ``tl.constexpr`` so unused terms compile away.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except Exception as exc:  # a broken install is as unusable as a missing one, and must not break the package
    raise ImportError(f"triton is not importable: {exc!r}") from exc

from . import ops
from .reference import compute_dtype
from ._spec import (BIAS, CLASS_W, FREQ, INV_FREQ, NORM_BATCH, NORM_INSTANCE, REDUCTION_MEAN, REDUCTION_NONE,
                    REDUCTION_SUM, REWEIGHT_CB_AVG_N, REWEIGHT_CB_AVG_W, REWEIGHT_CB_MIN_N, REWEIGHT_CLASS, REWEIGHT_REBALANCE)

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

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
# POW: the focal exponent, specialised because u^2 and u^1 need no transcendental.
POW_NONE, POW_ONE, POW_TWO, POW_ANY = 0, 1, 2, 3
_POW_NONE = tl.constexpr(POW_NONE)
_POW_ONE = tl.constexpr(POW_ONE)
_POW_TWO = tl.constexpr(POW_TWO)

_STATS_MODES = (REWEIGHT_REBALANCE, REWEIGHT_CB_AVG_W, REWEIGHT_CB_AVG_N, REWEIGHT_CB_MIN_N)
_CHUNK_ALIGN = 4096  # column-split chunks are multiples of every loop BLOCK_C, so tiles stay 16-aligned


def usable():
    """True when the kernels can run here: a CUDA device, or CPU tensors under TRITON_INTERPRET=1."""
    return _INTERPRET or torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Transcendental functions. The kernel is compute-bound on these, so fp32 uses the hardware's
# approximate ex2 / lg2 / reciprocal where their error (<= 2^-22 relative) stays far below the
# 1e-5 contract, and short polynomials where accuracy needs them (log1p near 0). fp64 (gradcheck)
# takes the exact library functions. The interpreter has no libdevice: there the exact functions
# are Kahan's formulas in float64 and the fast ones the same formulas as on the GPU, so CPU runs
# also check the approximations' logic.
# ---------------------------------------------------------------------------------------------
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)

if _INTERPRET:
    @triton.jit
    def _exp(x):
        return tl.exp(x)

    @triton.jit
    def _log(x):
        return tl.log(x)

    @triton.jit
    def _log1p(x):
        xd = x.to(tl.float64)
        u = 1.0 + xd
        exact = u == 1.0
        return tl.where(exact, xd, tl.log(u) * (xd / tl.where(exact, 1.0, u - 1.0))).to(x.dtype)

    @triton.jit
    def _expm1(x):
        xd = x.to(tl.float64)
        u = tl.exp(xd)
        um1 = u - 1.0
        tiny = um1 == 0.0
        sat = um1 == -1.0
        log_u = tl.log(tl.where(tiny | sat, 2.0, u))
        r = tl.where(tiny, xd, tl.where(sat, -1.0, um1 * (xd / log_u)))
        return r.to(x.dtype)

    @triton.jit
    def _pow(u, g):
        ud = u.to(tl.float64)
        pos = ud > 0.0
        r = tl.exp2(g * tl.log2(tl.where(pos, ud, 1.0)))
        return tl.where(pos, r, 0.0).to(u.dtype)

    @triton.jit
    def _fast_rcp(x):
        return 1.0 / x

    @triton.jit
    def _fast_log2(x):
        return tl.log2(x)
else:
    @triton.jit
    def _exp(x):
        return libdevice.exp(x)

    @triton.jit
    def _log(x):
        return libdevice.log(x)

    @triton.jit
    def _log1p(x):
        return libdevice.log1p(x)

    @triton.jit
    def _expm1(x):
        return libdevice.expm1(x)

    @triton.jit
    def _pow(u, g):
        return libdevice.pow(u, g.to(u.dtype))  # libdevice wants both operands in one type

    if torch.version.hip is None:
        @triton.jit
        def _fast_rcp(x):
            # MUFU.RCP alone (1 ulp); fast_dividef adds a canonicalising add. Callers keep x in [1, inf].
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)

        @triton.jit
        def _fast_log2(x):
            return libdevice.fast_log2f(x)  # MUFU.LG2: absolute error ~2^-22 on [1, 2]
    else:  # ROCm: no PTX
        @triton.jit
        def _fast_rcp(x):
            return 1.0 / x

        @triton.jit
        def _fast_log2(x):
            return tl.log2(x)


@triton.jit
def _rcp(x):
    """1 / x for x >= 1 (or inf)."""
    if x.dtype == tl.float64:
        return 1.0 / x
    else:
        return _fast_rcp(x)


@triton.jit
def _exp_neg(a):
    """exp(-a) for a >= 0. fp32: ex2 of the rounded a*log2(e), relative error ~a * 2^-23, i.e.
    below 1e-5 wherever the result is a normal float (a < 88)."""
    if a.dtype == tl.float64:
        return _exp(-a)
    else:
        return tl.exp2(a * -_LOG2E)


@triton.jit
def _log1p_unit(e):
    """log1p(e) for e in [0, 1]. fp32: Taylor below 1/8 (truncation < 6e-8 relative), else
    lg2(1 + e) (relative error < 2e-6 there, where log1p(e) > 0.117)."""
    if e.dtype == tl.float64:
        return _log1p(e)
    else:
        p = 1.0 / 7.0
        p = 1.0 / 6.0 - e * p
        p = 0.2 - e * p
        p = 0.25 - e * p
        p = 1.0 / 3.0 - e * p
        p = 0.5 - e * p
        p = e - e * (e * p)
        return tl.where(e < 0.125, p, _fast_log2(1.0 + e) * _LN2)


@triton.jit
def _rebalance_sigmoid(inv, row, map_beta, map_gamma):
    """sigmoid(beta (inv * row - gamma)) (row = 1 / r_i). fp32: exp(-beta (q - gamma)) =
    2^(k * row + c) with k = -beta log2(e) inv, so per element one FMA, one ex2 and one reciprocal
    (their errors stay ~1e-7 on the weight)."""
    if row.dtype == tl.float64:
        return 1.0 / (1.0 + _exp(-(map_beta * (inv * row - map_gamma))))
    else:
        k = inv * (map_beta * -_LOG2E)
        return _rcp(1.0 + tl.exp2(k * row + map_beta * map_gamma * _LOG2E))


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
def _row_weight(A, B, aux_ptr, coef, map_alpha, map_beta, map_gamma, cb_beta, w_max,
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
            # cb(mean n) = (1 - beta) / (1 - beta^m), with 1 - beta^m = -expm1(m log beta) kept exact
            log_beta = _log(tl.zeros_like(A) + cb_beta)
            row = (1.0 - cb_beta) / -_expm1((A / B) * log_beta)
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
def _focal_power(u, gamma, POW: tl.constexpr):
    if POW == _POW_ONE:
        return u
    elif POW == _POW_TWO:
        return u * u
    else:
        return _pow(u, gamma)


@triton.jit
def _bce_focal_hard(xs, is_pos, gamma, POW: tl.constexpr, HAS_GRADIENTS: tl.constexpr):
    """bce + focal for labels in {0, 1}, given xs = x for a negative, -x for a positive (the
    logit pushed the wrong way): (element loss, d loss / d xs).

    l = log1p(exp(-|x|)) + max(xs, 0), u = 1 - p_t = sigmoid(xs), p_t = sigmoid(-xs) and
    d l / d xs = u, so the focal gradient u^g (u + g p_t l) needs no division by u and stays
    finite at saturation for every g >= 0.
    """
    e = _exp_neg(tl.abs(xs))
    r = _rcp(1.0 + e)
    l = _log1p_unit(e) + tl.maximum(xs, 0.0)
    wrong = xs >= 0.0
    er = e * r
    u = tl.where(wrong, r, er)
    if POW == _POW_NONE:
        loss = l
        d = u
    else:
        m = _focal_power(u, gamma, POW)
        loss = m * l
        if HAS_GRADIENTS:
            p_t = tl.where(wrong, er, r)
            d = m * (u + gamma * (p_t * l))
        else:
            d = u
    return loss, d


@triton.jit
def _bce_focal_soft(x, pos, gamma, POW: tl.constexpr, HAS_GRADIENTS: tl.constexpr):
    """bce + focal for soft labels, the closed form of reference._FocalBCE (l/u := 1 at u == 0)."""
    e = _exp_neg(tl.abs(x))
    l = tl.maximum(x, 0.0) - x * pos + _log1p_unit(e)
    r = _rcp(1.0 + e)
    sig = tl.where(x >= 0.0, r, e * r)
    if POW == _POW_NONE:
        loss = l
        d = sig - pos
    else:
        u = -_expm1(-l)
        m = _focal_power(u, gamma, POW)
        loss = m * l
        if HAS_GRADIENTS:
            p_t = 1.0 - u
            ratio = tl.where(u > 0.0, l / tl.where(u > 0.0, u, 1.0), 1.0)
            d = (sig - pos) * m * (1.0 + gamma * p_t * ratio)
        else:
            d = sig - pos
    return loss, d


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
                  map_alpha, map_beta, map_gamma, cb_beta, neg_scale, gamma, scale, w_max,
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
        row, has_pos, wa, wb = _row_weight(A, B, aux_ptr, coef, map_alpha, map_beta, map_gamma, cb_beta, w_max,
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
        row, has_pos, wa, wb = _row_weight(A, B, aux_ptr, coef, map_alpha, map_beta, map_gamma, cb_beta, w_max,
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


# ---------------------------------------------------------------------------------------------
# Tile choices: a small autotune set on GPU, fixed tiles in the interpreter.
# ---------------------------------------------------------------------------------------------
ONE_TILE_MAX_C = 4096
# Rows regime (C <= ONE_TILE_MAX_C), as (TILE_ELEMS, num_warps): one tile of next_pow2(C) columns
# and TILE_ELEMS / next_pow2(C) rows. 8-16 elements per thread: 8 take ~40 registers, 16 ~100
# (bf16/uint8 DB-focal, sm_90); more would cut occupancy or spill.
_ROW_CONFIGS = ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (8192, 16))
# ... and (BLOCK_C, TILE_ELEMS, num_warps): narrow column loops, for C that next_pow2 pads by
# more than 10% (C = 80 would leave 3/8 of the lanes idle; compute, not memory, is the limit).
_NARROW_CONFIGS = ((16, 1024, 4), (16, 2048, 8), (32, 1024, 4), (32, 2048, 8))
# Large C, as (BLOCK_C, num_warps): one row per program, columns looped (and split, for few rows).
_LOOP_CONFIGS = ((1024, 4), (2048, 8), (4096, 8), (4096, 16))
_SUM_BLOCK = 1024
_SCALE_BLOCK = 4096
_STATS_BLOCK_C = 2048
_STATS_WARPS = 8
_ROW_KEY = ["C", "REWEIGHT", "POW", "HAS_GRADIENTS", "REDUCE_NONE"]


def _per_thread(dtype):
    """Elements per thread the tiles may give without spilling (fp64 math takes ~4x the registers)."""
    return 2 if dtype == torch.float64 else 16


def _one_tile_max_c(dtype):
    return min(_tiles.one_tile_max_c, 16 * 32 * _per_thread(dtype))


def _row_configs(block_c, narrow, per_thread=16):
    """[(constexprs, num_warps)] of the rows regime for next_pow2(C) == block_c."""
    if block_c < 16:  # rows of one element: a pointer per element, and ptxas spilled at 4 per thread (sm_80, by_instance)
        per_thread = min(per_thread, 2)
    configs = {}
    for t, w in _ROW_CONFIGS:
        t = max(t, block_c)
        w = min(16, max(w, t // (32 * per_thread)))
        if t <= 16 * 32 * per_thread:
            configs[(True, block_c, t, w)] = None
    if narrow:
        for b, t, w in _NARROW_CONFIGS:
            if b < block_c and t <= w * 32 * per_thread:
                configs[(False, b, t, w)] = None
    return [(dict(ONE_TILE=o, BLOCK_C=b, TILE_ELEMS=t), w) for o, b, t, w in configs]


def _loop_configs(per_thread=16):
    configs = {}
    for b, w in _LOOP_CONFIGS:
        w = max(w, b // (32 * per_thread))
        if w <= 16:
            configs[(b, w)] = None
    return [(dict(ONE_TILE=False, BLOCK_C=b, TILE_ELEMS=b), w) for b, w in configs]


def _needs_narrow(n_cols):
    return n_cols >= 32 and triton.next_power_of_2(n_cols) * 0.9 > n_cols


def _min_rows(configs):
    return min(c["TILE_ELEMS"] // c["BLOCK_C"] for c, _ in configs)


def _autotuned(configs):
    return triton.autotune([triton.Config(c, num_warps=w) for c, w in configs], key=_ROW_KEY)(_fused_kernel)


@functools.lru_cache(maxsize=None)
def _row_autotuner(block_c, narrow, per_thread):
    configs = _row_configs(block_c, narrow, per_thread)
    return _autotuned(configs), _min_rows(configs)


@functools.lru_cache(maxsize=None)
def _loop_autotuner(per_thread):
    return _autotuned(_loop_configs(per_thread))


@dataclasses.dataclass
class _Tiles:
    """Fixed tiles instead of autotuning (always in the interpreter); tests shrink them to reach
    the column loop, the split and the slot layout on tiny inputs."""
    one_tile_max_c: int = ONE_TILE_MAX_C
    row_tile_elems: Optional[int] = 1024 if _INTERPRET else None   # None: autotuned
    row_block_c: Optional[int] = None                              # rows regime: None one tile, else a narrow loop
    slot_tile_elems: Optional[int] = None                          # smallest tile the partial slots allow for
    loop_block_c: Optional[int] = 512 if _INTERPRET else None      # None: autotuned
    loop_tile_elems: Optional[int] = None                          # default: one row per program
    stats_block_c: int = 512 if _INTERPRET else _STATS_BLOCK_C
    split: Optional[int] = None                                    # None: from the SM count
    chunk_align: int = _CHUNK_ALIGN


_tiles = _Tiles()


@contextlib.contextmanager
def _force_tiles(**changes):
    """Test hook: run with other tile choices (e.g. one_tile_max_c=0, loop_block_c=16, split=2)."""
    global _tiles
    saved = _tiles
    _tiles = dataclasses.replace(saved, **changes)
    try:
        yield
    finally:
        _tiles = saved


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device):
    if device.type != "cuda":
        return 1
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _pow_mode(focal, gamma):
    if not focal or gamma == 0.0:
        return POW_NONE
    return {1.0: POW_ONE, 2.0: POW_TWO}.get(float(gamma), POW_ANY)


def _labels_kind(dtype):
    """(HARD_LABELS, HAS_UNKNOWN): integer labels are exactly 0/1/-1; only signed ones hold -1."""
    return not dtype.is_floating_point, dtype.is_floating_point or dtype.is_signed


try:
    _wrap = torch.library.wrap_triton
except AttributeError:  # torch < 2.6: a plain custom op, kernels launched directly
    _wrap = None


def _launch(kernel, tensor):
    """wrap_triton only while tracing: in eager it would cost ~0.2 ms of host time per launch."""
    return _wrap(kernel) if _wrap is not None and not ops.is_eager(tensor) else kernel


def _fused(logits: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor], class_params: torch.Tensor,
           aux: torch.Tensor, reweight_mode: int, weight_norm: int, logit_reg: bool, focal: bool, reduction: int,
           map_alpha: float, map_beta: float, map_gamma: float, cb_beta: float, neg_scale: float, gamma: float,
           scale: float, w_max: float, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if reduction not in (REDUCTION_NONE, REDUCTION_SUM, REDUCTION_MEAN):
        raise ValueError(f"dbl::fused_triton: reduction must be 0, 1 or 2 (3, a mean counted by the op, is "
                         f"the CPU op's), got {reduction}")
    n_rows, n_cols = logits.shape
    dtype = compute_dtype(logits)
    device = logits.device
    reduce_none = reduction == REDUCTION_NONE
    grad = (torch.empty((n_rows, n_cols), dtype=logits.dtype, device=device) if need_grad
            else logits.new_empty((0,)))
    if n_rows == 0 or n_cols == 0:
        if reduce_none:
            return torch.empty((n_rows, n_cols), dtype=dtype, device=device), grad
        return aux[0] * 0, grad  # sum: 0; mean: 0 * (1/0 or nan) = nan, as the reference
    if n_cols > 1 and logits.stride(1) != 1:
        logits = logits.contiguous()
    if n_cols > 1 and labels.stride(1) != 1:
        labels = labels.contiguous()
    if weight is None:
        wt, stride_wn, stride_wc = class_params, 0, 0
    else:
        wt = weight.expand(n_rows, n_cols)
        stride_wn, stride_wc = wt.stride()
    hard, has_unknown = _labels_kind(labels.dtype)
    needs_stats = reweight_mode in _STATS_MODES
    tiles = _tiles
    rows_regime = n_cols <= _one_tile_max_c(logits.dtype)
    consts = dict(REWEIGHT=reweight_mode, NORM=weight_norm, LOGIT_REG=bool(logit_reg),
                  POW=_pow_mode(focal, gamma), REDUCE_NONE=reduce_none, HAS_GRADIENTS=bool(need_grad),
                  HAS_WEIGHT=weight is not None, HARD_LABELS=hard, HAS_UNKNOWN=has_unknown,
                  STATS=STATS_INLINE if needs_stats else STATS_NONE)
    split, chunk = 1, n_cols
    if rows_regime:
        block_c = triton.next_power_of_2(n_cols)
        if tiles.row_tile_elems is None:
            kernel, min_rows = _row_autotuner(block_c, _needs_narrow(n_cols), _per_thread(logits.dtype))
            meta = {}
        else:
            one = tiles.row_block_c is None
            meta = dict(ONE_TILE=one, BLOCK_C=block_c if one else tiles.row_block_c,
                        TILE_ELEMS=max(tiles.row_tile_elems, block_c if one else tiles.row_block_c))
            kernel = _fused_kernel
            min_rows = _min_rows([(dict(meta, TILE_ELEMS=min(meta["TILE_ELEMS"], tiles.slot_tile_elems or
                                                             meta["TILE_ELEMS"])), 0)])
    else:
        if tiles.loop_block_c is None:
            kernel, meta, min_rows = _loop_autotuner(_per_thread(logits.dtype)), {}, 1
        else:
            tile_elems = tiles.loop_tile_elems or tiles.loop_block_c
            kernel = _fused_kernel
            meta = dict(ONE_TILE=False, BLOCK_C=tiles.loop_block_c, TILE_ELEMS=tile_elems)
            min_rows = tile_elems // tiles.loop_block_c
        split = tiles.split or max(1, min(-(-_target_programs(device) // -(-n_rows // min_rows)),
                                          -(-n_cols // tiles.chunk_align)))
        chunk = -(-n_cols // split)
        chunk = -(-chunk // tiles.chunk_align) * tiles.chunk_align
        split = -(-n_cols // chunk)
        if needs_stats and split > 1:
            consts["STATS"] = STATS_BUFFER
    n_slot_rows = -(-n_rows // min_rows)
    if reduce_none:
        out = torch.empty((n_rows, n_cols), dtype=dtype, device=device)
    else:
        out = torch.empty((split * n_slot_rows,), dtype=dtype, device=device)
    stats = aux
    if consts["STATS"] == STATS_BUFFER:
        stats = torch.empty((2, split, n_rows), dtype=dtype, device=device)
        _launch(_stats_kernel, logits)[(n_rows, split)](
            labels, class_params, stats, n_rows, n_cols, labels.stride(0), chunk, split,
            REWEIGHT=reweight_mode, HARD_LABELS=hard, HAS_UNKNOWN=has_unknown, BLOCK_C=tiles.stats_block_c,
            num_warps=_STATS_WARPS)

    def grid(meta):
        rows = -(-meta["TILE_ELEMS"] // meta["BLOCK_C"])
        return (triton.cdiv(n_rows, rows), split)

    if kernel is _fused_kernel:  # fixed tiles: enough warps for <= 16 (fp64: 8) elements per thread
        meta["num_warps"] = min(16, max(4, meta["TILE_ELEMS"] // (32 * _per_thread(logits.dtype))))
    _launch(kernel, logits)[grid](
        logits, labels, wt, class_params, aux, stats, out, grad,
        n_rows, n_cols, logits.stride(0), labels.stride(0), stride_wn, stride_wc, chunk, split, n_slot_rows,
        map_alpha, map_beta, map_gamma, cb_beta, neg_scale, gamma, scale, w_max,
        MIN_ROWS=min_rows, **consts, **meta)
    if reduce_none:
        return out, grad
    loss = torch.empty((), dtype=dtype, device=device)
    _launch(_sum_kernel, logits)[(1,)](out, out.numel(), loss, BLOCK=128 if _INTERPRET else _SUM_BLOCK)
    return loss, grad


if _wrap is not None:
    fused = torch.library.triton_op("dbl::fused_triton", _fused, mutates_args=())
else:
    fused = torch.library.custom_op("dbl::fused_triton", _fused, mutates_args=())
ops.register(fused)


def scale_grad(grad, grad_output):
    """In place ``grad *= grad_output`` for a 1-element ``grad_output``, read on the device: no host
    sync, and when it is exactly 1.0 the kernel returns before touching ``grad``."""
    if (grad_output.numel() != 1 or grad_output.device != grad.device or not grad.is_contiguous()
            or grad.numel() == 0):
        grad.mul_(grad_output)
        return
    n = grad.numel()
    blocks = triton.cdiv(n, _SCALE_BLOCK)
    programs = min(blocks, _target_programs(grad.device) * 2) if grad.is_cuda else min(blocks, 4)
    iters = triton.cdiv(blocks, programs)
    _scale_kernel[(programs,)](grad, grad_output, n, iters, BLOCK=_SCALE_BLOCK)


# ---------------------------------------------------------------------------------------------
# Every launchable specialisation, for ahead-of-time compilation checks.
# ---------------------------------------------------------------------------------------------
_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64",
        torch.bool: "*i1", torch.uint8: "*u8", torch.int8: "*i8", torch.int16: "*i16", torch.int32: "*i32",
        torch.int64: "*i64"}
LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LABEL_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                torch.float16, torch.bfloat16, torch.float32, torch.float64)
WEIGHT_DTYPES = (None,) + LOGIT_DTYPES
# The constexpr axes of _fused_kernel besides dtypes and tiles, and the DB-focal default (COCO).
_AXES = dict(REWEIGHT=tuple(range(6)), NORM=(0, 1, 2), LOGIT_REG=(False, True),
             POW=(POW_NONE, POW_ONE, POW_TWO, POW_ANY), REDUCE_NONE=(False, True), HAS_GRADIENTS=(False, True))
_MAIN = dict(REWEIGHT=REWEIGHT_REBALANCE, NORM=0, LOGIT_REG=True, POW=POW_TWO, REDUCE_NONE=False,
             HAS_GRADIENTS=True)
_INTS = ("N", "C", "stride_z", "stride_y", "stride_wn", "stride_wc", "chunk", "split", "n_slot_rows")
_FLOATS = ("map_alpha", "map_beta", "map_gamma", "cb_beta", "neg_scale", "gamma", "scale", "w_max")
_ALIGNED = ("C", "stride_z", "stride_y", "chunk")  # what the runtime sees for C % 16 == 0, contiguous rows


def _short(dtype):
    return str(dtype).replace("torch.", "") if dtype is not None else "noweight"


def _spec_dict(fn, name, types, constexprs, num_warps, main_path=False, aligned=()):
    """One variant as ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target, options)``
    takes it; attrs: 16-divisibility of pointers (torch allocations are 16-byte aligned) and of
    ``aligned`` integers."""
    names = fn.arg_names
    signature = {n: ("constexpr" if n in constexprs else types[n]) for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n in types and n not in constexprs and (types[n].startswith("*") or n in aligned)}
    return dict(kernel=fn.__name__, name=name, fn=fn, signature=signature, constexprs=dict(constexprs), attrs=attrs,
                options=dict(num_warps=num_warps, num_stages=3), main_path=main_path)


def _fused_variants(zd, yd, wd, axes, block_cs, all_configs, main_path):
    cd = torch.float64 if zd == torch.float64 else torch.float32
    types = dict(z_ptr=_PTR[zd], y_ptr=_PTR[yd], wt_ptr=_PTR[wd or cd], cp_ptr=_PTR[cd], aux_ptr=_PTR[cd],
                 stats_ptr=_PTR[cd], out_ptr=_PTR[cd], grad_ptr=_PTR[zd],
                 **{n: "i32" for n in _INTS}, **{n: "fp32" for n in _FLOATS})
    hard, unknown = _labels_kind(yd)
    base = dict(axes, HAS_WEIGHT=wd is not None, HARD_LABELS=hard, HAS_UNKNOWN=unknown)
    needs = axes["REWEIGHT"] in _STATS_MODES
    tag = (f"{_short(zd)}-{_short(yd)}-{_short(wd)}-rw{axes['REWEIGHT']}-norm{axes['NORM']}"
           f"-ntr{int(axes['LOGIT_REG'])}-pow{axes['POW']}-{'none' if axes['REDUCE_NONE'] else 'sum'}"
           f"-grad{int(axes['HAS_GRADIENTS'])}")
    for bc in block_cs:
        configs = _row_configs(bc, True, _per_thread(zd))
        for c, w in (configs if all_configs else configs[:1]):
            ce = dict(base, STATS=STATS_INLINE if needs else STATS_NONE, MIN_ROWS=_min_rows(configs), **c)
            if bc == 1:  # a contiguous N x 1 input: the runtime specialises these integers to 1
                ce.update(C=1, stride_z=1, stride_y=1)
            kind = "onetile" if c["ONE_TILE"] else "narrow"
            yield _spec_dict(_fused_kernel, f"rows-{tag}-C{bc}-{kind}{c['BLOCK_C']}-T{c['TILE_ELEMS']}-w{w}",
                             types, ce, w, main_path, _ALIGNED)
    for st in ((STATS_INLINE, STATS_BUFFER) if needs else (STATS_NONE,)):
        configs = _loop_configs(_per_thread(zd))
        for c, w in (configs if all_configs else configs[:1]):
            ce = dict(base, STATS=st, MIN_ROWS=1, **c)
            yield _spec_dict(_fused_kernel, f"loop-{tag}-stats{st}-B{c['BLOCK_C']}-w{w}", types, ce, w, main_path,
                             _ALIGNED)


def specialisations(quick=False, exhaustive=False):
    """Yield every launchable kernel variant as a dict: kernel, name, fn, signature, constexprs,
    attrs, options (num_warps, num_stages), main_path.

    * ``quick``: the main paths only (DB-focal, bf16/fp32 logits, uint8 labels), every autotune
      config; plus the helper kernels.
    * default: those, and a covering set: every value of every constexpr axis and every dtype
      appears in some variant (one tile config each). About 200 variants.
    * ``exhaustive``: the full product of dtypes x axes x tile configs (millions: for counting or
      sampling, not for compiling them all).
    Rows-regime variants are listed for next_pow2(C) = 128 (C = 80, the COCO case; 16/32-wide
    narrow tiles included) and, outside ``quick``, 1 and the widest one tile (4096; fp64 1024).
    """
    names = list(_AXES)
    if exhaustive:
        for zd, yd, wd in itertools.product(LOGIT_DTYPES, LABEL_DTYPES, WEIGHT_DTYPES):
            for values in itertools.product(*_AXES.values()):
                yield from _fused_variants(zd, yd, wd, dict(zip(names, values)), (1, 128, _one_tile_max_c(zd)), True,
                                       False)
    else:
        for zd in (torch.bfloat16, torch.float32):
            yield from _fused_variants(zd, torch.uint8, None, _MAIN, (128,), True, True)
        if not quick:
            covering = [(zd, torch.uint8, None, _MAIN) for zd in LOGIT_DTYPES if zd not in (torch.bfloat16, torch.float32)]
            covering += [(torch.bfloat16, yd, None, _MAIN) for yd in LABEL_DTYPES if yd != torch.uint8]
            covering += [(torch.bfloat16, torch.uint8, wd, _MAIN) for wd in WEIGHT_DTYPES if wd is not None]
            for name, values in _AXES.items():
                for v in values:
                    if v != _MAIN[name]:
                        covering.append((torch.bfloat16, torch.uint8, None, dict(_MAIN, **{name: v})))
                        if name == "REWEIGHT":  # the CB / class modes with soft and partial labels, fp64 too
                            covering.append((torch.float64, torch.float32, torch.float64, dict(_MAIN, **{name: v})))
            for zd, yd, wd, axes in covering:
                yield from _fused_variants(zd, yd, wd, axes, (1, 128, _one_tile_max_c(zd)), False, False)
    for yd, cd in itertools.product(LABEL_DTYPES if not quick else (torch.uint8,), (torch.float32, torch.float64)):
        for rw in (_STATS_MODES if not quick else (REWEIGHT_REBALANCE,)):
            hard, unknown = _labels_kind(yd)
            types = dict(y_ptr=_PTR[yd], cp_ptr=_PTR[cd], stats_ptr=_PTR[cd], N="i32", C="i32", stride_y="i32",
                         chunk="i32", split="i32")
            ce = dict(REWEIGHT=rw, HARD_LABELS=hard, HAS_UNKNOWN=unknown, BLOCK_C=_STATS_BLOCK_C)
            yield _spec_dict(_stats_kernel, f"stats-{_short(yd)}-{_short(cd)}-rw{rw}", types, ce, _STATS_WARPS,
                             aligned=("C", "stride_y", "chunk"))
    for cd in (torch.float32, torch.float64):
        yield _spec_dict(_sum_kernel, f"sum-{_short(cd)}", dict(part_ptr=_PTR[cd], n="i32", loss_ptr=_PTR[cd]),
                         dict(BLOCK=_SUM_BLOCK), 4)
    for zd in LOGIT_DTYPES:
        cd = torch.float64 if zd == torch.float64 else torch.float32
        yield _spec_dict(_scale_kernel, f"scale-{_short(zd)}", dict(g_ptr=_PTR[zd], go_ptr=_PTR[cd], n="i64",
                                                                     iters="i32"), dict(BLOCK=_SCALE_BLOCK), 4,
                         aligned=("n",))
