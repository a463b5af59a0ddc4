"""The per-element math of the Triton kernels: transcendentals and the BCE / focal terms.

Diff these against ``reference.py`` (``bce``, ``focal_bce``) and ``csrc/dbl_math.h``: the same
terms, in the forms each backend evaluates fastest.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except Exception as exc:  # a broken install is as unusable as a missing one, and must not break the package
    raise ImportError(f"triton is not importable: {exc!r}") from exc

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# POW: the focal exponent, specialised because u^2 and u^1 need no transcendental.
POW_NONE, POW_ONE, POW_TWO, POW_ANY = 0, 1, 2, 3
_POW_NONE = tl.constexpr(POW_NONE)
_POW_ONE = tl.constexpr(POW_ONE)
_POW_TWO = tl.constexpr(POW_TWO)


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

if INTERPRET:
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

