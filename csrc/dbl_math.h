// Per-element math of the Distribution-Balanced loss, shared by the CPU kernel (g++), the CUDA kernel
// (nvcc) and the CPU emulation of the CUDA kernel (dbl_emulate.cpp), so that CPU tests exercise the
// formulas the GPU runs. The transcendentals and their policies (Fn): dbl_fns.h.
//
// Mirrors dbl_kernels/_spec.py; names follow dbl_kernels/reference.py.
#pragma once

#include <cstdint>
#include <cstring>
#include <cmath>

#include "dbl_fns.h"

namespace dbl {

// Codes shared with dbl_kernels/_spec.py.
enum Reweight { RW_NONE = 0, RW_REBALANCE = 1, RW_CLASS = 2, RW_CB_AVG_W = 3, RW_CB_AVG_N = 4, RW_CB_MIN_N = 5 };
enum Norm { NORM_NONE = 0, NORM_INSTANCE = 1, NORM_BATCH = 2 };
// RED_MEAN_COUNTED (CPU op only): a mean over the labels != -1 that the op counts itself;
// RED_PER_CLASS: the C-vector of column sums.
enum Reduction { RED_NONE = 0, RED_SUM = 1, RED_MEAN = 2, RED_MEAN_COUNTED = 3, RED_PER_CLASS = 4 };
// per_class: the sum of column j of an N x C row-major loss, rows in order, in fp64 (a fixed order,
// the same on every thread count; what the CPU op and the CUDA column-sum kernel compute).
template <class T>
DBL_HD T column_sum(const T* loss, int64_t N, int64_t C, int64_t j) {
  double s = 0.0;
  for (int64_t i = 0; i < N; ++i) s += static_cast<double>(loss[i * C + j]);
  return static_cast<T>(s);
}
// Rows of the class_params table (P_POS_W: ASL's weight of the positive log term).
enum ParamRow { P_INV_FREQ = 0, P_CLASS_W = 1, P_FREQ = 2, P_BIAS = 3, P_POS_W = 4, kTableRows = 5 };

// How the focal modulation is evaluated; gamma == 0 is plain BCE (the balance factor sits in scale).
// FOCAL_RUNTIME reads the kind from ElemConsts::focal (uniform branches, for the generic GPU kernel).
enum Focal { FOCAL_OFF = 0, FOCAL_SQUARE = 1, FOCAL_POW = 2, FOCAL_RUNTIME = 3 };
// BINARY: y+ in {0, 1} (unknown labels are masked by the caller through f), so 1 - p_t comes from
// the sigmoid directly; SOFT: y+ anywhere in [0, 1], 1 - p_t = -expm1(-l); PER_ELEMENT: decided
// for each element.
enum Labels { LABELS_BINARY = 0, LABELS_SOFT = 1, LABELS_PER_ELEMENT = 2 };
// Form of the re-balancing weight: LINEAR u * table_j + v (class vector, CB rows, none), REBAL the
// rebalance sigmoid, RUNTIME read from ElemConsts::wform.
enum WeightForm { WF_LINEAR = 0, WF_REBAL = 1, WF_RUNTIME = 2 };

// ---------------------------------------------------------------------------------------------
// Per-call constants (KernelSpec of _spec.py, plus the device scalars read by the kernels).
// ---------------------------------------------------------------------------------------------
template <class T>
struct Spec {
  int reweight;      // Reweight
  int weight_norm;   // Norm
  int focal;         // Focal (OFF, SQUARE or POW)
  bool ntr;
  T map_alpha, map_beta, map_gamma, cb_log_beta;
  T lam, inv_lam;    // NTR negative scale and its reciprocal (1 without NTR)
  T gamma;           // focal exponent
  T scale;           // balance_param * loss_weight (focal) or loss_weight
  T w_max;           // by_instance closed form (see _spec.kernel_spec)
};

template <class T>
DBL_HD int focal_kind(bool focal, T gamma) {
  if (!focal || gamma == T(0)) return FOCAL_OFF;
  return gamma == T(2) ? FOCAL_SQUARE : FOCAL_POW;
}

// The Spec of one launch from the op's scalar arguments (shared by the CPU and CUDA glue).
template <class T>
inline Spec<T> make_spec(int reweight, int weight_norm, bool logit_reg, bool focal, double map_alpha,
                         double map_beta, double map_gamma, double cb_log_beta, double neg_scale, double gamma,
                         double scale, double w_max) {
  Spec<T> sp{};
  sp.reweight = reweight;
  sp.weight_norm = weight_norm;
  sp.focal = focal_kind<T>(focal, static_cast<T>(gamma));
  sp.ntr = logit_reg;
  sp.map_alpha = static_cast<T>(map_alpha);
  sp.map_beta = static_cast<T>(map_beta);
  sp.map_gamma = static_cast<T>(map_gamma);
  sp.cb_log_beta = static_cast<T>(cb_log_beta);
  const double lam = logit_reg ? neg_scale : 1.0;
  sp.lam = static_cast<T>(lam);
  sp.inv_lam = static_cast<T>(1.0 / lam);
  sp.gamma = static_cast<T>(gamma);
  sp.scale = static_cast<T>(scale);
  sp.w_max = static_cast<T>(w_max);
  return sp;
}

// What the element function needs besides the row: folded once per launch.
template <class T>
struct ElemConsts {
  T alpha;       // rebalance: map_alpha
  T c0;          // rebalance: beta * log2(e) * map_gamma (the sigmoid is evaluated in base 2)
  T lam, inv_lam;
  T gamma;
  T gs;          // reduction scale aux[0] (1 / count for a mean): folded into the row constants
  int focal;     // for FOCAL_RUNTIME
  int wform;     // for WF_RUNTIME
};

template <class T>
inline ElemConsts<T> elem_consts(const Spec<T>& s, T grad_scale) {
  ElemConsts<T> k{};
  k.alpha = s.map_alpha;
  k.c0 = static_cast<T>(static_cast<double>(s.map_beta) * 1.4426950408889634 * static_cast<double>(s.map_gamma));
  k.lam = s.lam;
  k.inv_lam = s.inv_lam;
  k.gamma = s.gamma;
  k.gs = grad_scale;
  k.focal = s.focal;
  k.wform = s.reweight == RW_REBALANCE ? WF_REBAL : WF_LINEAR;
  return k;
}

// ---------------------------------------------------------------------------------------------
// Row weights.
// ---------------------------------------------------------------------------------------------
// Which row statistic a reweight mode needs: none, sums (count and sum of y+ * table row), or the
// largest per-class CB weight over the row's positives (CB is decreasing in n, so that is the CB
// weight of the rarest positive class, computed in float64 on the host).
enum RowStatKind { STAT_NONE = 0, STAT_SUM = 1, STAT_MAX = 2 };

DBL_HD int row_stat_kind(int reweight) {
  switch (reweight) {
    case RW_REBALANCE:
    case RW_CB_AVG_W:
    case RW_CB_AVG_N: return STAT_SUM;
    case RW_CB_MIN_N: return STAT_MAX;
    default: return STAT_NONE;
  }
}

// The class_params row that the row statistic runs over.
DBL_HD int row_stat_param(int reweight) {
  return reweight == RW_REBALANCE ? P_INV_FREQ : (reweight == RW_CB_AVG_N ? P_FREQ : P_CLASS_W);
}

// The class_params row of the per-element weight table.
DBL_HD int weight_param(int reweight) { return reweight == RW_REBALANCE ? P_INV_FREQ : P_CLASS_W; }

// Whether weight_norm="by_batch" needs the statistics of every row first (else its batch max is
// known on the host: 1 for no re-weighting, w_max for a class vector).
DBL_HD bool batch_max_needs_rows(int reweight, int weight_norm) {
  return weight_norm == NORM_BATCH && row_stat_kind(reweight) != STAT_NONE;
}

// Rebalance weight before normalisation: alpha + sigmoid(beta * (q / r - gamma)) for q = 1/n_j, as
// alpha + 1 / (1 + 2^(u q + c0)) with u = -beta log2(e) / r (r = 0, a row without positives,
// gives u = -inf and weight alpha + 1).
template <class Fn, class T>
DBL_HD T rebalance_raw(T q, T u, const ElemConsts<T>& k) {
  return k.alpha + Fn::rcp(T(1) + Fn::ex2(u * q + k.c0));
}

// Divisions in the per-row math go through Fn::rcp: on the device (DeviceRowFns) a Newton
// reciprocal, no MUFU instruction and no IEEE division's slow-path call.
template <class Fn, class T> DBL_HD T rebalance_u(T stat, const Spec<T>& s) {
  return static_cast<T>(-1.4426950408889634) * s.map_beta * Fn::rcp(stat);
}

// Class-balanced weight (1 - beta) / (1 - beta^n) = expm1(log beta) / expm1(n log beta), for the
// CB average_n row mode. log beta comes from the host in double: as beta -> 1, 1 - beta in the
// compute precision would lose digits (1e-4 relative in fp32 at beta = 0.9999).
template <class Fn, class T> DBL_HD T cb_weight(T n, T log_beta) {
  return Fn::expm1(log_beta) * Fn::rcp(Fn::expm1(n * log_beta));
}

// The CB row-mode weight of a row with count > 0 positives.
template <class Fn, class T> DBL_HD T cb_row(T count, T stat, const Spec<T>& s) {
  if (s.reweight == RW_CB_AVG_W) return stat * Fn::rcp(count);
  if (s.reweight == RW_CB_AVG_N) return cb_weight<Fn>(stat * Fn::rcp(count), s.cb_log_beta);
  return stat;  // min_n: the CB weight of the rarest positive class
}

// The largest (unnormalised) weight in a row: what by_instance divides by, and what by_batch takes
// the maximum of over the rows. The rebalance weight is monotone in 1/n_j, so its row max sits at
// the extreme 1/n_j (w_max); a CB row is constant; a class vector peaks at w_max.
template <class Fn, class T>
DBL_HD T row_max_weight(T count, T stat, const Spec<T>& s, const ElemConsts<T>& k) {
  switch (s.reweight) {
    case RW_REBALANCE: return rebalance_raw<Fn>(s.w_max, rebalance_u<Fn>(stat, s), k);
    case RW_CB_AVG_W:
    case RW_CB_AVG_N:
    case RW_CB_MIN_N: return count > T(0) ? cb_row<Fn>(count, stat, s) : s.w_max;
    case RW_CLASS: return s.w_max;
    default: return T(1);
  }
}

// Per-row constants of the element weight, with the loss scale and the reduction scale aux[0]
// folded in (so element losses come out already scaled, and gradients need no further factor):
//   REBAL:  w_ij = 1 / (1 + 2^(u q_j + c0)) * v + av    (av = alpha * v)
//   LINEAR: w_ij = u * table_j + v
template <class T>
struct alignas(4 * sizeof(T)) RowConst {
  T u, v, av, unused;  // 16 bytes (fp32): one shared-memory load
};

// The element weight from its row's constants, those scaled by c (one multiply a row: a vector's
// elements share them): 1 / (1 + 2^(u q_j + c0)) v + av (rebalance), u t_j + v otherwise.
template <class Fn, class T>
DBL_HD T elem_weight(int wform, T tw, const RowConst<T>& r, const ElemConsts<T>& k, T c = T(1)) {
  return wform == WF_REBAL ? Fn::rcp(T(1) + Fn::ex2(r.u * tw + k.c0)) * (r.v * c) + r.av * c
                           : (r.u * c) * tw + r.v * c;
}

// count = sum_j y+_ij; stat = sum_j y+_ij * table_j (STAT_SUM) or max_{y+_ij > 0} cb_j (STAT_MAX);
// inv_batch: 1 / the batch max weight (by_batch only).
template <class Fn, int WFORM = WF_RUNTIME, class T>
DBL_HD RowConst<T> row_const(T count, T stat, T inv_batch, const Spec<T>& s, const ElemConsts<T>& k) {
  const bool inst = s.weight_norm == NORM_INSTANCE;
  const T batch = s.weight_norm == NORM_BATCH ? inv_batch : T(1);
  const T scale = s.scale * k.gs;
  RowConst<T> r;
  r.av = T(0);
  r.unused = T(0);
  if (WFORM == WF_REBAL || (WFORM == WF_RUNTIME && s.reweight == RW_REBALANCE)) {  // a path of one form: its branch
    r.u = rebalance_u<Fn>(stat, s);
    r.v = scale * (inst ? Fn::rcp(rebalance_raw<Fn>(s.w_max, r.u, k)) : batch);
    r.av = s.map_alpha * r.v;
    return r;
  }
  const bool row_mode = row_stat_kind(s.reweight) != STAT_NONE;
  if (row_mode && count > T(0)) {
    const T row = cb_row<Fn>(count, stat, s);
    r.u = T(0);
    r.v = scale * (inst ? row * Fn::rcp(row) : row * batch);  // a constant row: its max is itself
    return r;
  }
  if (s.reweight == RW_NONE) {
    r.u = T(0);
    r.v = scale * batch;  // ones: by_instance divides by 1
    return r;
  }
  // Per-class weights (inv, sqrt_inv, CB by_class, and CB rows without any positive).
  r.u = scale * (inst ? Fn::rcp(s.w_max) : batch);
  r.v = T(0);
  return r;
}

DBL_HD float dabs(float x) { return ::fabsf(x); }
DBL_HD double dabs(double x) { return ::fabs(x); }

// ---------------------------------------------------------------------------------------------
// The device's binary focal (gamma = 2) element, for element() below, in base-2 units. The label
// is used up front: x' = the logit pushed the wrong way, in bits (-(z + b) log2(e) on a positive,
// lam (z + b) log2(e) on a negative under NTR), and the loss weight carries NTR's 1 / lam and ln 2;
// then with u = sigmoid(x') = 1 - p_t and L = softplus(x') / ln 2: loss = W u^2 L and
// d loss / d z = W u^2 (u + 2 ln2 p_t L) s_x, s_x = dx'/dz (W's ln 2 and s_x's log2(e) cancel).
// Nothing after the first steps waits on the label (kept to the end, the eight labels of a vector
// overflow the predicate registers). E = 2^x' (x' capped at 125, NaN kept: E finite, p_t normal),
// p_t = 1 / (1 + E), u = E p_t: exact in relative terms at both ends, with no select on the sign
// of x'. L = E P(E) below E = 1/16, where lg2(1 + E) would carry lg2.approx's absolute error
// (2^-22) and 1 + E's rounding as ~2^-22 / E relative; lg2(1 + E) above (3.7e-6 relative at
// worst); x' itself past the cap (there p_t stays 2^-125, the gradient's p_t L off by 2^-125 x',
// below 1e-5 for |x'| < 1e32; an infinite logit on the wrong side gives an infinite gradient).
// Five MUFU with the rebalance sigmoid's two.
// ---------------------------------------------------------------------------------------------
template <class T, class Fn, int WFORM, bool NTR, bool GRAD>
DBL_HD T element_focal2_device(T z, bool pos, T f, T tw, T bias, const RowConst<T>& r, const ElemConsts<T>& k,
                               T& grad) {
  constexpr T log2e = static_cast<T>(1.4426950408889634), ln2 = static_cast<T>(0.6931471805599453);
  const T sx = pos ? -log2e : (NTR ? k.lam * log2e : log2e);
  const T lw = NTR ? (pos ? ln2 : k.inv_lam * ln2) : T(1);
  const T c = NTR ? T(1) : ln2;
  const T xb = (NTR ? z + bias : z) * sx;
  const T w = elem_weight<Fn>(WFORM, tw, r, k, c) * (f * lw);
  const T E = Fn::ex2(xb > T(125) ? T(125) : xb);  // (a NaN compares false and stays)
  const T q = T(1) + E;
  const T pt = Fn::rcp(q);
  const T u = E * pt;
  const T small = E * detail::log1p_small_bits(E);
  const T L = fmaxf(E < T(0.0625) ? small : Fn::lg2(q), xb);
  const T wm = w * (u * u);
  if (GRAD) grad = wm * (u + (T(2) * ln2) * pt * L) * sx;
  return wm * L;
}

// ---------------------------------------------------------------------------------------------
// One element: loss and d loss / d logit (see _spec.py).
//   z logit, yp = max(y, 0), pos = yp != 0, f = weight_ij * known_ij, tw the weight table entry (1/n_j for
//   rebalance, else the class weight), bias the NTR bias b_j, r the row's constants. Returns the
//   loss times aux[0]; with GRAD, grad gets d loss / d z times aux[0].
// ---------------------------------------------------------------------------------------------
template <class T, class Fn, int WFORM, int FOCAL, int LABELS, bool NTR, bool GRAD>
DBL_HD T element(T z, T yp, bool pos, T f, T tw, T bias, const RowConst<T>& r, const ElemConsts<T>& k, T& grad) {
  const int wform = WFORM == WF_RUNTIME ? k.wform : WFORM;
  const int focal = FOCAL == FOCAL_RUNTIME ? k.focal : FOCAL;
  constexpr bool binary = LABELS == LABELS_BINARY;
  if constexpr (Fn::kDevice && sizeof(T) == 4 && FOCAL == FOCAL_SQUARE && binary && WFORM != WF_RUNTIME)
    return element_focal2_device<T, Fn, WFORM, NTR, GRAD>(z, pos, f, tw, bias, r, k, grad);
  const T eb = wform == WF_REBAL ? Fn::ex2(r.u * tw + k.c0) : T(0);  // the rebalance sigmoid is 1 / (1 + eb)
  // NTR: x = (z + b) s with s = y+ + lam (1 - y+); the loss weight gets the factor
  // lw = y+ + (1 - y+) / lam, d loss / d z the factor gf = s lw (1 for y+ in {0, 1}).
  T x = z, lw = T(1), gf = T(1);
  if (NTR) {
    T sc;
    if (binary) {
      sc = pos ? T(1) : k.lam;
      lw = pos ? T(1) : k.inv_lam;
    } else {
      sc = yp + k.lam * (T(1) - yp);
      lw = yp + (T(1) - yp) * k.inv_lam;
      gf = sc * lw;
    }
    x = (z + bias) * sc;
  }
  const T ax = dabs(x);
  const T e = Fn::exp_neg(ax);         // exp(-|x|) in (0, 1]
  const T w1 = T(1) + e;
  T inv, sig_rb;                       // sigmoid(|x|), the rebalance sigmoid
  if (Fn::kOneDivision && sizeof(T) == 4 && wform == WF_REBAL) {
    // One division for both (a CPU's divider is its slowest unit): 1/a = b / (ab). eb is capped
    // so that ab stays finite; the sigmoid it loses is below 2^-100.
    const T b = T(1) + (eb < T(1e30f) ? eb : T(1e30f));
    const T rab = Fn::rcp(w1 * b);
    inv = b * rab;
    sig_rb = w1 * rab;
  } else {
    inv = Fn::rcp(w1);
    sig_rb = wform == WF_REBAL ? Fn::rcp(T(1) + eb) : T(0);
  }
  // elem_weight's formula, its sigmoid from the division above (on the CPU one for two)
  const T w = (wform == WF_REBAL ? sig_rb * r.v + r.av : r.u * tw + r.v) * f;
  const T q = e * inv;                 // sigmoid(-|x|)
  const bool xpos = x >= T(0);
  const T relu = xpos ? x : T(0);
  // Whether x is on its label's side of 0 (y+ in {0, 1}). (g++ vectorises a comparison of the
  // margin, not an equality of two comparisons; at x = 0 both choices give the same values)
  const bool correct = Fn::kDevice ? xpos == pos : (pos ? x : -x) >= T(0);
  const bool hard = binary || yp == T(0) || yp == T(1);  // this label in {0, 1}
  if (focal == FOCAL_OFF) {
    if (GRAD) {
      // sigmoid(x) - y+: for y+ in {0, 1} it is -/+ u with u = 1 - p_t, the sigmoid on the correct
      // side (no 1 - p_t, which would cancel to p_t's rounding as p_t -> 1)
      const T u = correct ? q : inv;
      grad = w * gf * (hard ? (pos ? -u : u) : (xpos ? inv : q) - yp);
    }
    return w * lw * ((relu - x * yp) + Fn::log1p01(e, w1, inv));  // stable BCE-with-logits
  }
  // u = 1 - p_t with p_t = exp(-l). For y+ in {0, 1}, p_t is sigmoid(x) or sigmoid(-x): on the
  // correct side of 0, p_t = sigmoid(|x|) and u = sigmoid(-|x|), else the other way round.
  T u = correct ? q : inv;
  T pt = correct ? inv : q;
  const T l = (relu - x * yp) + Fn::log1p01(e, w1, inv);
  const bool soft = LABELS == LABELS_SOFT || (LABELS == LABELS_PER_ELEMENT && !hard);
  if (!binary && soft) {
    u = -Fn::expm1(-l);
    pt = T(1) - u;
  }
  const T gamma = focal == FOCAL_SQUARE ? T(2) : k.gamma;
  const T mod = focal == FOCAL_SQUARE ? u * u : (u > T(0) ? Fn::ex2(gamma * Fn::lg2(u > T(0) ? u : T(1))) : T(0));
  const T wm = w * mod;
  if (GRAD) {
    // d/dx [u^g l] = (sigmoid(x) - y+) u^g (1 + g p_t l / u). For y+ in {0, 1}, sigmoid(x) - y+ = -/+ u,
    // so it is +/- u^g (u + g p_t l): no division, finite as u -> 0. Soft: l / u -> 1 at u = 0.
    if (binary || !soft) {
      const T d = u + gamma * pt * l;
      grad = wm * gf * (pos ? -d : d);
    } else {
      const T ratio = u > T(0) ? l * Fn::rcp(u > T(0) ? u : T(1)) : T(1);
      grad = wm * gf * ((xpos ? inv : q) - yp) * (T(1) + gamma * pt * ratio);
    }
  }
  return wm * lw * l;
}

}  // namespace dbl

#include "dbl_asl.h"  // the asymmetric element form, built on the functions above
