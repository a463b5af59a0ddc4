// The asymmetric (ASL) element form of the fused loss, MODE_ASYMMETRIC: part of dbl_math.h (which
// includes it at its end), shared like it by the CPU kernel, the CUDA generic kernel and the CPU
// emulation of the CUDA kernel.
#pragma once

#include "dbl_math.h"

namespace dbl {

// ---------------------------------------------------------------------------------------------
// The asymmetric (ASL) element form, MODE_ASYMMETRIC (mirrors reference._asl_terms and
// _asl_derivative; formulas in _spec.py / notes contract_v2): with p = sigmoid(x), q = 1 - p and
// p_m = max(p - clip, 0), the element loss is -A B^g with
//   A = pw t log p + (1 - t) log(1 - p_m),  B = t q + (1 - t) p_m,  g = gamma t + gamma_neg (1 - t).
// ---------------------------------------------------------------------------------------------
template <class T>
struct AslConsts {
  T gamma_pos, gamma_neg;  // the focusing exponents of positives and negatives
  T clip;                  // the negatives' probability margin
  T keep, shift;           // target t = y+ keep + shift (label smoothing s: keep = 1 - s, shift = s / 2)
  bool focus_grad;         // whether the gradient flows through the focusing weight B^g
};

template <class T>
inline AslConsts<T> asl_consts(double gamma_pos, double gamma_neg, double clip, double smoothing, bool focus_grad) {
  AslConsts<T> c{};
  c.gamma_pos = static_cast<T>(gamma_pos);
  c.gamma_neg = static_cast<T>(gamma_neg);
  c.clip = static_cast<T>(clip);
  c.keep = static_cast<T>(1.0 - smoothing);
  c.shift = static_cast<T>(0.5 * smoothing);
  c.focus_grad = focus_grad;
  return c;
}

// A, B and their derivatives in x.
template <class T>
struct AslTerms {
  T a, b, da, db;
};

template <class Fn, class T>
DBL_HD AslTerms<T> asl_terms(T x, T t, T pw, T clip) {
  constexpr T ln2 = static_cast<T>(0.6931471805599453);
  const T e = Fn::exp_neg(dabs(x));  // exp(-|x|)
  const T w1 = T(1) + e;
  const T inv = Fn::rcp(w1);         // sigmoid(|x|)
  const T small = e * inv;           // sigmoid(-|x|)
  const bool xpos = x >= T(0);
  // p and q = 1 - p, each accurate where the other is near 1
  const T p = xpos ? inv : small;
  const T q = xpos ? small : inv;
  const T s = p * q;                 // dp/dx
  const T sp = Fn::log1p01(e, w1, inv);  // softplus(-|x|)
  const T log_p = -((xpos ? T(0) : -x) + sp);  // -softplus(-x)
  T p_m, log_q, dlog_q, dp_m;
  if (clip > T(0)) {
    // 1 - p_m = q + clip where p > clip: its log without cancellation in 1 - p_m
    const bool shifted = p > clip;
    const T qc = q + clip;
    p_m = shifted ? p - clip : T(0);
    log_q = shifted ? ln2 * Fn::lg2(qc) : T(0);
    dlog_q = shifted ? -s * Fn::rcp(qc) : T(0);
    dp_m = shifted ? s : T(0);
  } else {
    p_m = p;
    log_q = -((xpos ? x : T(0)) + sp);  // -softplus(x)
    dlog_q = -p;
    dp_m = s;
  }
  AslTerms<T> r;
  r.a = pw * t * log_p + (T(1) - t) * log_q;
  r.b = t * q + (T(1) - t) * p_m;
  r.da = pw * t * q + (T(1) - t) * dlog_q;
  r.db = (T(1) - t) * dp_m - t * s;
  return r;
}

// The focusing weight B^g: 1 for g == 0 (as torch.pow(0, 0)), 0 at B == 0 otherwise.
template <class Fn, class T>
DBL_HD T asl_focus(T b, T g) {
  if (g == T(0)) return T(1);
  const T bg = b > T(0) ? Fn::ex2(g * Fn::lg2(b > T(0) ? b : T(1))) : T(0);
  if (!Fn::kApproxPow) return bg;
  const T b2 = b * b;  // ASL's and DB's usual exponents, exactly
  return g == T(1) ? b : g == T(2) ? b2 : g == T(4) ? b2 * b2 : bg;
}

// d/dx of -A B^g given the focusing weight bg = B^g, finite for every g >= 0: -B^g (dA + g (A/B) dB),
// or -B^g dA with the weight held constant. A/B -> -(pw t + 1 - t) where B == 0 (hard labels at
// saturation: log p / (1 - p) -> -1 and log(1 - p_m) / p_m -> -1).
template <class Fn, class T>
DBL_HD T asl_derivative(const AslTerms<T>& m, T bg, T g, T t, T pw, bool focus_grad) {
  T d = m.da;
  if (focus_grad) {
    const T ratio = m.b > T(0) ? m.a * Fn::rcp(m.b > T(0) ? m.b : T(1)) : -(pw * t + (T(1) - t));
    d += g * ratio * m.db;
  }
  return -bg * d;
}

// One element of the asymmetric form: the counterpart of element() (same arguments, plus pw the
// POS_W entry and the ASL constants). The NTR factors come from y+ (soft allowed), the ASL target
// from the smoothed y+. Returns the loss times aux[0]; with GRAD, grad gets d loss / d z.
template <class T, class Fn, int WFORM, bool NTR, bool GRAD>
DBL_HD T element_asl(T z, T yp, T f, T tw, T bias, T pw, const RowConst<T>& r, const ElemConsts<T>& k,
                     const AslConsts<T>& ac, T& grad) {
  const int wform = WFORM == WF_RUNTIME ? k.wform : WFORM;
  T x = z, lw = T(1), gf = T(1);
  if (NTR) {
    const T sc = yp + k.lam * (T(1) - yp);
    lw = yp + (T(1) - yp) * k.inv_lam;
    gf = sc * lw;
    x = (z + bias) * sc;
  }
  const T w = elem_weight<Fn>(wform, tw, r, k) * f;
  const T t = yp * ac.keep + ac.shift;
  const AslTerms<T> m = asl_terms<Fn>(x, t, pw, ac.clip);
  const T g = ac.gamma_pos * t + ac.gamma_neg * (T(1) - t);
  const T bg = asl_focus<Fn>(m.b, g);
  if (GRAD) grad = w * gf * asl_derivative<Fn>(m, bg, g, t, pw, ac.focus_grad);
  return -(w * lw) * bg * m.a;
}

}  // namespace dbl
