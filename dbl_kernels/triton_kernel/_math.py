"""The per-element math of the Triton kernels: transcendentals and the BCE / focal terms.

Diff these against ``reference.py`` (``bce``, ``focal_bce``) and ``csrc/dbl_math.h``: the same
terms, in the forms each backend evaluates fastest.

Units. fp32 works in base 2: the hardware has ex2 / lg2 (one MUFU op each), not exp / log, so
logits enter scaled by S = log2(e) and losses leave in bits (S * nats); the kernels fold 1 / S
into the weights. fp64 keeps S = 1 and the exact library functions. ``unit_scale`` gives S for a
compute dtype.
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

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)
# exp(xs) is taken of min(xs, _XS_MAX): 1 / (1 + e^xs) then stays a normal number (fp32: 2^-125,
# one binade clear of the approximate reciprocal's flush to zero), so u = e^xs / (1 + e^xs) = 1
# exactly there, and the loss takes xs itself beyond.
_XS_MAX32 = tl.constexpr(125.0)
_XS_MAX64 = tl.constexpr(700.0)
# fp32 log1p(E) (in bits) below _SMALL_E: E (c0 + c1 E + c2 E^2), the minimax fit of relative error
# (1.8e-6 with fp32 rounding) on [0, 1/16]; above, lg2(1 + E), whose absolute error (MUFU.LG2 2^-22
# near 1, plus rounding 1 + E) stays below 3.7e-6 relative where log1p(E) >= log1p(1/16).
_SMALL_E = tl.constexpr(0.0625)
_L1P_C0 = tl.constexpr(1.442692518234253)
_L1P_C1 = tl.constexpr(-0.7206119894981384)
_L1P_C2 = tl.constexpr(0.44893747568130493)


def unit_scale(dtype):
    """S of the module docstring for a compute dtype (host side)."""
    return 1.0 if dtype == torch.float64 else LOG2E


# ---------------------------------------------------------------------------------------------
# Transcendental functions. fp32 uses the hardware's approximate ex2 / lg2 / reciprocal with
# flush-to-zero (one MUFU instruction each, no range fix-ups around it); fp64 the exact library
# functions. The interpreter has no libdevice or inline PTX: there the same formulas run on numpy's
# functions (exact ones for fp64, float32 ones for fp32), so CPU runs check every formula.
# ---------------------------------------------------------------------------------------------
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
    def _fast_rcp(x):
        return 1.0 / x

    @triton.jit
    def _fast_ex2(x):
        return tl.exp2(x)

    @triton.jit
    def _fast_lg2(x):
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

    if torch.version.hip is None:
        # MUFU.RCP / EX2 / LG2 alone. Relative error ~1 ulp (rcp), ~2 ulp (ex2); lg2 absolute 2^-22
        # near 1. Flushing subnormals to zero is harmless here: callers keep results normal or
        # want 0 there.
        @triton.jit
        def _fast_rcp(x):
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)

        @triton.jit
        def _fast_ex2(x):
            return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)

        @triton.jit
        def _fast_lg2(x):
            return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)
    else:  # ROCm: no PTX
        @triton.jit
        def _fast_rcp(x):
            return 1.0 / x

        @triton.jit
        def _fast_ex2(x):
            return tl.exp2(x)

        @triton.jit
        def _fast_lg2(x):
            return tl.log2(x)


# Hard labels as bytes (bool / uint8: positive iff != 0). PTX tests a byte of the packed label
# word straight into a predicate (one LOP3 per element, where extracting the byte first takes two
# instructions), and the predicate then selects or guards the element's arithmetic.
def _byte_test(word, k):
    return f"and.b32 t, {word}, {0xff << (8 * k)};\nsetp.ne.u32 p, t, 0;\n"


def _asm_sigma_w():
    """4 elements: $0-3 = pos ? s_pos : s_neg, $4-7 = pos ? w : w * inv  (inputs: $8 labels,
    $9-12 s_pos, $13-16 s_neg, $17-20 w tied to $4-7, $21-24 inv): one guarded multiply in place."""
    body = "".join(_byte_test("$8", k) + f"selp.b32 ${k}, ${9 + k}, ${13 + k}, p;\n"
                   f"@!p mul.f32 ${4 + k}, ${4 + k}, ${21 + k};\n" for k in range(4))
    return "{\n.reg .pred p;\n.reg .b32 t;\n" + body + "}"


def _asm_sigma():
    """4 elements: $0-3 = pos ? s_pos : s_neg (inputs: $4 labels, $5-8 s_pos, $9-12 s_neg)."""
    body = "".join(_byte_test("$4", k) + f"selp.b32 ${k}, ${5 + k}, ${9 + k}, p;\n" for k in range(4))
    return "{\n.reg .pred p;\n.reg .b32 t;\n" + body + "}"


def _asm_add_pos():
    """4 elements: $0-3 = acc + (pos ? v : 0) (inputs: $4 labels, $5-8 acc tied to $0-3, $9-12 v):
    one guarded add in place."""
    body = "".join(_byte_test("$4", k) + f"@p add.f32 ${k}, ${k}, ${9 + k};\n" for k in range(4))
    return "{\n.reg .pred p;\n.reg .b32 t;\n" + body + "}"


_ASM_SIGMA_W = tl.constexpr(_asm_sigma_w())
_ASM_SIGMA = tl.constexpr(_asm_sigma())
_ASM_ADD_POS = tl.constexpr(_asm_add_pos())
_NATIVE_LABELS = tl.constexpr(not INTERPRET and torch.version.hip is None)


@triton.jit
def _label_sigma_w(raw, s_pos, s_neg, w, inv):
    """(pos ? s_pos : s_neg, pos ? w : w * inv) for label bytes ``raw`` (pos: raw != 0)."""
    if _NATIVE_LABELS and w.dtype == tl.float32:
        return tl.inline_asm_elementwise(_ASM_SIGMA_W, "=r,=r,=r,=r,=r,=r,=r,=r," + "r," * 9 + "4,5,6,7,r,r,r,r",
                                         [raw, s_pos, s_neg, w, inv], dtype=(tl.float32, tl.float32),
                                         is_pure=True, pack=4)
    else:
        pos = raw != 0
        return tl.where(pos, s_pos, s_neg), tl.where(pos, w, w * inv)


@triton.jit
def _label_sigma(raw, s_pos, s_neg):
    """pos ? s_pos : s_neg for label bytes ``raw``."""
    if _NATIVE_LABELS and s_pos.dtype == tl.float32:
        return tl.inline_asm_elementwise(_ASM_SIGMA, "=r,=r,=r,=r," + "r," * 8 + "r", [raw, s_pos, s_neg],
                                         dtype=tl.float32, is_pure=True, pack=4)
    else:
        return tl.where(raw != 0, s_pos, s_neg)


@triton.jit
def _label_add(acc, raw, v):
    """acc + (pos ? v : 0) for label bytes ``raw``."""
    if _NATIVE_LABELS and acc.dtype == tl.float32:
        return tl.inline_asm_elementwise(_ASM_ADD_POS, "=r,=r,=r,=r,r,0,1,2,3,r,r,r,r",
                                         [raw, acc, tl.broadcast_to(v, acc.shape)],
                                         dtype=tl.float32, is_pure=True, pack=4)
    else:
        return acc + tl.where(raw != 0, v, 0.0)


@triton.jit
def _bf16_f32(z):
    """bf16 -> fp32 as one shift or mask per element (the generic conversion spends two on odd ones)."""
    if _NATIVE_LABELS:
        return tl.inline_asm_elementwise("shl.b32 $0, $2, 16;\nand.b32 $1, $2, 0xffff0000;", "=r,=r,r", [z],
                                         dtype=tl.float32, is_pure=True, pack=2)
    else:
        return z.to(tl.float32)


@triton.jit
def _rcp(x):
    """1 / x (fp32: approximate, for |x| normal or inf)."""
    if x.dtype == tl.float64:
        return 1.0 / x
    else:
        return _fast_rcp(x)


@triton.jit
def _ex(x):
    """e^(x / S): 2^x in fp32, e^x in fp64."""
    if x.dtype == tl.float64:
        return _exp(x)
    else:
        return _fast_ex2(x)


@triton.jit
def _pow(u, g):
    """u^g for u in [0, 1], g > 0 (0 at u = 0)."""
    if u.dtype == tl.float64:
        pos = u > 0.0
        return tl.where(pos, _exp(g * _log(tl.where(pos, u, 1.0))), 0.0)
    else:
        return _fast_ex2(g * _fast_lg2(u))  # lg2(0) = -inf, ex2(-inf) = 0


@triton.jit
def _exp_neg(a):
    """exp(-a) for a >= 0 (natural units)."""
    if a.dtype == tl.float64:
        return _exp(-a)
    else:
        return _fast_ex2(a * -_LOG2E)


@triton.jit
def _log1p_unit(e):
    """log1p(e) for e in [0, 1], natural units (the soft-label path)."""
    if e.dtype == tl.float64:
        return _log1p(e)
    else:
        return _log1p_bits(e, 1.0 + e) * _LN2


@triton.jit
def _log1p_bits(e, q):
    """S * log1p(e) for e >= 0 (q = 1 + e, rounded): a polynomial below _SMALL_E, lg2(q) above."""
    if e.dtype == tl.float64:
        return _log1p(e)
    else:
        p = e * _L1P_C2 + _L1P_C1
        p = e * p + _L1P_C0
        return tl.where(e < _SMALL_E, e * p, _fast_lg2(q))


@triton.jit
def _sigmoid_bits(t):
    """1 / (1 + e^(t / S)) (the rebalance weight's sigmoid, argument pre-scaled by -S)."""
    return _rcp(1.0 + _ex(t))


@triton.jit
def _focal_power(u, gamma, POW: tl.constexpr):
    if POW == _POW_ONE:
        return u
    elif POW == _POW_TWO:
        return u * u
    else:
        return _pow(u, gamma)


@triton.jit
def _bce_focal_bits(xs, gamma, gamma_s, POW: tl.constexpr, HAS_GRADIENTS: tl.constexpr):
    """BCE + focal for labels in {0, 1}, from xs = S x for a negative, -S x for a positive (the
    logit pushed the wrong way): (m, l, t) with element loss m * l (S units) and d loss / d (xs / S)
    = m * t (natural units).

    E = e^(xs / S), p_t = 1 / (1 + E), u = 1 - p_t = E p_t (exact in relative terms at both ends:
    no 1 - p_t), l = S log1p(E) (= xs beyond the clamp of E). Focal: m = u^g and t = u + g p_t l,
    whose product, the gradient, needs no division by u and stays finite at saturation for every
    g >= 0; ``gamma_s`` is g / S (the gradient is in natural units). Plain BCE: m = 1, t = u.
    """
    # min / max that keep a NaN logit NaN (the plain ones return the other operand)
    if xs.dtype == tl.float64:
        E = _exp(tl.minimum(xs, _XS_MAX64, propagate_nan=tl.PropagateNan.ALL))
    else:
        E = _fast_ex2(tl.minimum(xs, _XS_MAX32, propagate_nan=tl.PropagateNan.ALL))
    q = 1.0 + E
    l = tl.maximum(_log1p_bits(E, q), xs, propagate_nan=tl.PropagateNan.ALL)
    p_t = _rcp(q)
    u = E * p_t
    if POW == _POW_NONE:
        return 1.0, l, u
    elif HAS_GRADIENTS:
        return _focal_power(u, gamma, POW), l, u + gamma_s * (p_t * l)
    else:
        return _focal_power(u, gamma, POW), l, u


@triton.jit
def _bce_focal_soft(x, pos, gamma, POW: tl.constexpr, HAS_GRADIENTS: tl.constexpr):
    """BCE + focal for soft labels, natural units: the closed form of reference._FocalBCE (l/u := 1
    at u == 0)."""
    e = _exp_neg(tl.abs(x))
    l = tl.maximum(x, 0.0) - x * pos + _log1p_unit(e)
    r = _rcp(1.0 + e)
    xpos = x >= 0.0
    sig = tl.where(xpos, r, e * r)
    # sigmoid(x) - y+ = (1 - y+) sigmoid(x) - y+ sigmoid(-x): at y+ = 1 no 1 - sigmoid(x), which
    # cancels to rounding as p_t -> 1 (float labels holding 0 / 1 take this path)
    dsig = (1.0 - pos) * sig - pos * tl.where(xpos, e * r, r)
    if POW == _POW_NONE:
        loss = l
        d = dsig
    else:
        u = -_expm1(-l)
        m = _focal_power(u, gamma, POW)
        loss = m * l
        if HAS_GRADIENTS:
            p_t = 1.0 - u
            ratio = tl.where(u > 0.0, l / tl.where(u > 0.0, u, 1.0), 1.0)
            d = dsig * m * (1.0 + gamma * p_t * ratio)
        else:
            d = dsig
    return loss, d


@triton.jit
def _ln(x):
    """log(x) for x > 0, natural units (fp32: lg2 * ln 2)."""
    if x.dtype == tl.float64:
        return _log(x)
    else:
        return _fast_lg2(x) * _LN2


@triton.jit
def _asl_element(x, t, pw, gpos, gneg, clip, CLIP: tl.constexpr, FOCUS_GRAD: tl.constexpr,
                 HAS_GRADIENTS: tl.constexpr):
    """The asymmetric (ASL) element form, natural units (mirrors reference._asl_terms and
    _asl_derivative, and csrc/dbl_asl.h): with p = sigmoid(x), q = 1 - p, p_m = max(p - clip, 0),
    the loss is -A B^g with A = pw t log p + (1 - t) log(1 - p_m), B = t q + (1 - t) p_m and
    g = gpos t + gneg (1 - t). Returns (loss, d loss / dx), the derivative finite for every g >= 0
    (A / B -> -(pw t + 1 - t) where B == 0). CLIP: clip > 0 (then 1 - p_m = q + clip)."""
    e = _exp_neg(tl.abs(x))
    w1 = 1.0 + e
    inv = _rcp(w1)
    small = e * inv
    xpos = x >= 0.0
    p = tl.where(xpos, inv, small)
    q = tl.where(xpos, small, inv)
    s = p * q
    sp = _log1p_unit(e)  # softplus(-|x|)
    log_p = -(tl.where(xpos, 0.0, -x) + sp)
    if CLIP:
        shifted = p > clip
        qc = q + clip
        p_m = tl.where(shifted, p - clip, 0.0)
        log_q = tl.where(shifted, _ln(qc), 0.0)
        dlog_q = tl.where(shifted, -s * _rcp(qc), 0.0)
        dp_m = tl.where(shifted, s, 0.0)
    else:
        p_m = p
        log_q = -(tl.where(xpos, x, 0.0) + sp)
        dlog_q = -p
        dp_m = s
    a = pw * t * log_p + (1.0 - t) * log_q
    b = t * q + (1.0 - t) * p_m
    g = gpos * t + gneg * (1.0 - t)
    bpos = b > 0.0
    bg = tl.where(g == 0.0, 1.0, tl.where(bpos, _pow(tl.where(bpos, b, 1.0), g), 0.0))
    if b.dtype == tl.float32:
        # fp32 pow is ex2(g lg2 b): lg2's relative error times g |lg2 b| (~1e-5 for b ~ 2^-24);
        # ASL's and DB's usual exponents as products instead (csrc/dbl_asl.h asl_focus)
        b2 = b * b
        bg = tl.where(g == 1.0, b, tl.where(g == 2.0, b2, tl.where(g == 4.0, b2 * b2, bg)))
    loss = -a * bg
    if HAS_GRADIENTS:
        d = pw * t * q + (1.0 - t) * dlog_q
        if FOCUS_GRAD:
            # B below the smallest normal number is at the limit (and 1 / B would overflow)
            if b.dtype == tl.float64:
                normal = b >= 2.2250738585072014e-308
            else:
                normal = b >= 1.1754943508222875e-38
            ratio = tl.where(normal, a * _rcp(tl.where(normal, b, 1.0)), -(pw * t + (1.0 - t)))
            d = d + g * ratio * ((1.0 - t) * dp_m - t * s)
        return loss, -bg * d
    else:
        return loss, loss
