// Per-element math of the Distribution-Balanced loss, shared by the CPU kernel (g++) and the
// CUDA kernel (nvcc), so the CPU tests exercise the arithmetic the GPU runs.
//
// The fp32 elementary functions (exp, expm1, log, log1p) are our own branch-free polynomials
// instead of libm: g++ vectorises them without -ffast-math (a libm call blocks vectorisation), and
// the GPU evaluates the very same formulas. Measured against fp64 libm on every 7th fp32 input of
// the ranges the loss uses (with and without FMA contraction): at most 1.73 ulp; exp flushes
// results below 2^-125 to 0, as FTZ hardware would. tests/test_cpp_backend.py re-checks 1M points
// per function. fp64 uses the platform's libm, so gradcheck sees the reference's precision.
//
// Mirrors dbl_kernels/_spec.py; names follow dbl_kernels/reference.py.
#pragma once

#include <cstdint>
#include <cstring>
#include <cmath>

#if defined(__CUDACC__)
#define DBL_HD __host__ __device__ __forceinline__
#else
#define DBL_HD inline __attribute__((always_inline))
#endif

namespace dbl {

// Codes shared with dbl_kernels/_spec.py.
enum Reweight { RW_NONE = 0, RW_REBALANCE = 1, RW_CLASS = 2, RW_CB_AVG_W = 3, RW_CB_AVG_N = 4, RW_CB_MIN_N = 5 };
enum Norm { NORM_NONE = 0, NORM_INSTANCE = 1, NORM_BATCH = 2 };
// RED_MEAN_COUNTED (CPU op only): a mean over the labels != -1 that the op counts itself.
enum Reduction { RED_NONE = 0, RED_SUM = 1, RED_MEAN = 2, RED_MEAN_COUNTED = 3 };
// Rows of the class_params table.
enum ParamRow { P_INV_FREQ = 0, P_CLASS_W = 1, P_FREQ = 2, P_BIAS = 3 };

// How the focal modulation is evaluated; gamma == 0 is plain BCE (the balance factor sits in scale).
// FOCAL_RUNTIME reads the kind from Spec::focal (one code path with uniform branches, for the GPU).
enum Focal { FOCAL_OFF = 0, FOCAL_SQUARE = 1, FOCAL_POW = 2, FOCAL_RUNTIME = 3 };
// Binary labels let 1 - p_t come from the sigmoid directly; soft labels need expm1(-l).
enum Labels { LABELS_BINARY = 0, LABELS_SOFT = 1, LABELS_PER_ELEMENT = 2 };

DBL_HD int32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

DBL_HD float bits_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

namespace detail {
// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer in the low mantissa bits.
constexpr float kRoundMagic = 12582912.0f;
constexpr float kLog2e = 1.44269502f;
// ln 2 split so that n * kLn2Hi is exact for |n| < 2^12 (Cody-Waite reduction).
constexpr float kLn2Hi = 0.693115234375f;
constexpr float kLn2Lo = 3.19461833e-05f;
constexpr float kSqrt2m1 = 0.41421356f;

// (e^r - 1 - r) / r^2 on |r| <= ln2 / 2 (relative-error fit; our own coefficients).
// Estrin's scheme: a shorter dependency chain than Horner's, which the CPU loop is bound by.
DBL_HD float expm1_tail(float r) {
  const float r2 = r * r;
  const float p01 = 0.16666576f * r + 0.5f;
  const float p23 = 0.0083631752f * r + 0.041666374f;
  return (0.0013941098f * r2 + p23) * r2 + p01;
}

// log1p(x) on sqrt(1/2) - 1 <= x <= sqrt(2) - 1: x - x^2/2 + x^3 Q(x).
DBL_HD float log1p_core(float x) {
  const float x2 = x * x;
  const float x4 = x2 * x2;
  const float q01 = -0.25000280f * x + 0.33333325f;
  const float q23 = -0.16643485f * x + 0.20001879f;
  const float q45 = -0.12943470f * x + 0.14190257f;
  const float q67 = -0.083050467f * x + 0.12798765f;
  const float q = (q67 * x2 + q45) * x4 + (q23 * x2 + q01);
  return x + (x2 * (x * q) - 0.5f * x2);
}

// Round x * log2(e) to an integer n (as float and as int) and reduce: x = n ln2 + r, |r| <= ln2/2.
DBL_HD float reduce_ln2(float x, float& n, int32_t& ni) {
  const float t = x * kLog2e + kRoundMagic;
  n = t - kRoundMagic;
  ni = float_bits(t) - float_bits(kRoundMagic);
  return (x - n * kLn2Hi) - n * kLn2Lo;
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Elementary functions. fp32: polynomials above; fp64: libm.
// ---------------------------------------------------------------------------------------------
namespace detail {
// 2^(n-1) * 2 (1 + expm1(r)) for the reduced argument of exp; shifting the exponent as unsigned
// keeps garbage in, garbage out defined for NaN input (whose NaN then propagates through p).
DBL_HD float exp_scale(float xc) {
  float n;
  int32_t ni;
  const float r = reduce_ln2(xc, n, ni);
  const float p = 1.0f + (r + r * r * expm1_tail(r));
  return (p + p) * bits_float(static_cast<int32_t>(static_cast<uint32_t>(ni + 126) << 23));
}
constexpr float kExpUnder = -86.6433f;  // below: 2^(n-1) would be subnormal; results flush to 0
}  // namespace detail

DBL_HD float fexp(float x) {
  // Clamps written so a NaN compares false and stays NaN (one max/min instruction each): large x
  // overflows to inf, results below 2^-125 flush to 0 (as under FTZ).
  float xc = x < detail::kExpUnder ? detail::kExpUnder : x;
  xc = xc > 88.7228394f ? 88.7228394f : xc;
  const float y = detail::exp_scale(xc);
  return x < detail::kExpUnder ? 0.0f : y;
}

// exp(x) for x <= 0 (or NaN): the case of exp(-|x|) and of the focal power u^gamma, without the
// overflow clamp.
DBL_HD float fexp_nonpos(float x) {
  const float y = detail::exp_scale(x < detail::kExpUnder ? detail::kExpUnder : x);
  return x < detail::kExpUnder ? 0.0f : y;
}

// e^x - 1, accurate near 0 (needed for 1 - p_t = -expm1(-l) with soft labels).
DBL_HD float fexpm1(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n;
  int32_t ni;
  const float r = detail::reduce_ln2(xc, n, ni);
  const float pm1 = r + r * r * detail::expm1_tail(r);
  const float s = bits_float((ni + 127) << 23);
  return s * pm1 + (s - 1.0f);
}

// log1p(e) for 0 <= e <= 1: the softplus term of the stable BCE, log(1 + exp(-|x|)).
DBL_HD float flog1p01(float e) {
  // Above sqrt(2) - 1, log1p(e) = ln2 + log1p((e - 1) / 2) keeps the argument inside the fit.
  const bool big = e > detail::kSqrt2m1;
  const float x = big ? (e - 1.0f) * 0.5f : e;
  const float k = big ? 1.0f : 0.0f;
  return (k * detail::kLn2Lo + detail::log1p_core(x)) + k * detail::kLn2Hi;
}

// log(v) for v > 0 (v = 1 - p_t in the focal power); log(0) is handled by the caller.
DBL_HD float flog(float v) {
  const bool tiny = v < 1.17549435e-38f;  // subnormal: scale into the normal range first
  const float vs = tiny ? v * 8388608.0f : v;
  const int32_t bits = float_bits(vs);
  int32_t k = ((bits >> 23) & 0xff) - 127;
  float m = bits_float((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  const bool hi = m > 1.41421356f;
  m = hi ? m * 0.5f : m;
  k = hi ? k + 1 : k;
  const float kf = static_cast<float>(k) - (tiny ? 23.0f : 0.0f);
  return (kf * detail::kLn2Lo + detail::log1p_core(m - 1.0f)) + kf * detail::kLn2Hi;
}

#if defined(__CUDA_ARCH__)
DBL_HD double fexp(double x) { return ::exp(x); }
DBL_HD double fexp_nonpos(double x) { return ::exp(x); }
DBL_HD double fexpm1(double x) { return ::expm1(x); }
DBL_HD double flog1p01(double e) { return ::log1p(e); }
DBL_HD double flog(double v) { return ::log(v); }
#else
DBL_HD double fexp(double x) { return std::exp(x); }
DBL_HD double fexp_nonpos(double x) { return std::exp(x); }
DBL_HD double fexpm1(double x) { return std::expm1(x); }
DBL_HD double flog1p01(double e) { return std::log1p(e); }
DBL_HD double flog(double v) { return std::log(v); }
#endif

template <class T> DBL_HD T sigmoid(T t) { return T(1) / (T(1) + fexp(-t)); }

// ---------------------------------------------------------------------------------------------
// Per-call constants (KernelSpec of _spec.py, plus the device scalars of aux read by the kernel).
// ---------------------------------------------------------------------------------------------
template <class T>
struct Spec {
  int reweight;      // Reweight
  int weight_norm;   // Norm
  T logit_reg;       // 1 or 0 (a float flag keeps the element loop free of control flow)
  int focal;         // Focal
  T map_alpha, map_beta, map_gamma, cb_log_beta;
  T lam, inv_lam;    // NTR negative scale and its reciprocal
  T gamma;           // focal exponent
  T scale;           // balance_param * loss_weight (focal) or loss_weight
  T w_max;           // by_instance closed form (see _spec.kernel_spec)
  T grad_scale;      // aux[0]: 1 / count for mean, else 1 (applied to the gradient)
  T inv_batch_max;   // aux[1]: 1 / batch-max weight (by_batch), else 1
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
                         double scale, double w_max, T grad_scale, T inv_batch_max) {
  Spec<T> sp{};
  sp.reweight = reweight;
  sp.weight_norm = weight_norm;
  sp.logit_reg = logit_reg ? T(1) : T(0);
  sp.focal = focal_kind<T>(focal, static_cast<T>(gamma));
  sp.map_alpha = static_cast<T>(map_alpha);
  sp.map_beta = static_cast<T>(map_beta);
  sp.map_gamma = static_cast<T>(map_gamma);
  sp.cb_log_beta = static_cast<T>(cb_log_beta);
  sp.lam = static_cast<T>(neg_scale);
  sp.inv_lam = static_cast<T>(1.0 / neg_scale);
  sp.gamma = static_cast<T>(gamma);
  sp.scale = static_cast<T>(scale);
  sp.w_max = static_cast<T>(w_max);
  sp.grad_scale = grad_scale;
  sp.inv_batch_max = inv_batch_max;
  return sp;
}

// Which row statistic a reweight mode needs: none, sums (count and sum of y+ * table row), or
// the largest per-class CB weight over the row's positives (CB is decreasing in n, so that is
// the CB weight of the rarest positive class, computed in float64 on the host).
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

// The class_params row that the row sum runs over.
DBL_HD int row_stat_param(int reweight) {
  return reweight == RW_REBALANCE ? P_INV_FREQ : (reweight == RW_CB_AVG_N ? P_FREQ : P_CLASS_W);
}

// Class-balanced weight (1 - beta) / (1 - beta^n) = expm1(log beta) / expm1(n log beta), for the
// CB average_n row mode. log beta comes from the host in double: as beta -> 1, 1 - beta in the
// compute precision would lose digits (1e-4 relative in fp32 at beta = 0.9999).
template <class T> DBL_HD T cb_weight(T n, T log_beta) { return fexpm1(log_beta) / fexpm1(n * log_beta); }

// Rebalance weight before normalisation: alpha + sigmoid(beta * ((1/n_j) / r_i - gamma)), with
// 1 / r_i precomputed per row (r_i = 0, a row without positives, gives inf and weight alpha + 1).
template <class T> DBL_HD T rebalance_raw(T inv_freq, T inv_r, const Spec<T>& s) {
  return s.map_alpha + sigmoid(s.map_beta * (inv_freq * inv_r - s.map_gamma));
}

// Per-row weight: w_ij = (rebalance ? rebalance_raw(inv_j, r) * norm : a * class_w_j + b).
template <class T>
struct RowWeight {
  T inv_r; // rebalance: 1 / sum_j y+_ij / n_j
  T norm;  // rebalance: 1 / row max (by_instance), aux[1] (by_batch) or 1
  T a, b;  // other modes: linear in the per-class weight
};

// count = sum_j y+_ij; stat = sum_j y+_ij * table_j (STAT_SUM) or max_{y+_ij > 0} cb_j (STAT_MAX).
template <class T>
DBL_HD RowWeight<T> row_weight(T count, T stat, const Spec<T>& s) {
  RowWeight<T> w;
  w.inv_r = T(1);
  w.norm = T(1);
  w.a = T(0);
  w.b = T(1);
  const T batch = s.weight_norm == NORM_BATCH ? s.inv_batch_max : T(1);
  if (s.reweight == RW_REBALANCE) {
    w.inv_r = T(1) / stat;
    // The raw weight is monotone in 1/n_j, so the row max sits at the extreme 1/n_j (w_max).
    w.norm = s.weight_norm == NORM_INSTANCE ? T(1) / rebalance_raw(s.w_max, w.inv_r, s) : batch;
    return w;
  }
  const bool row_mode = s.reweight == RW_CB_AVG_W || s.reweight == RW_CB_AVG_N || s.reweight == RW_CB_MIN_N;
  if (row_mode && count > T(0)) {
    T row;
    if (s.reweight == RW_CB_AVG_W) row = stat / count;
    else if (s.reweight == RW_CB_AVG_N) row = cb_weight(stat / count, s.cb_log_beta);
    else row = stat;
    w.b = s.weight_norm == NORM_INSTANCE ? row / row : row * batch;  // a constant row: max is itself
    return w;
  }
  if (s.reweight == RW_NONE) {
    w.b = batch;  // ones: by_instance divides by 1
    return w;
  }
  // Per-class weights (inv, sqrt_inv, CB by_class, and CB rows without any positive).
  w.a = s.weight_norm == NORM_INSTANCE ? T(1) / s.w_max : batch;
  w.b = T(0);
  return w;
}

// ---------------------------------------------------------------------------------------------
// One element: loss and d loss / d logit (see _spec.py).
//   z logit, y label (-1 unknown), bias NTR bias b_j, w re-balancing weight (normalised),
//   f = weight_ij * known_ij. Returns the loss (before the reduction scale). With GRAD and
//   want_grad (a run-time switch for the GPU's single code path), grad gets d loss / d z with
//   aux[0] applied; otherwise the gradient work is skipped.
// ---------------------------------------------------------------------------------------------
template <class T, int FOCAL, int LABELS, bool GRAD>
DBL_HD T element(T z, T y, T bias, T w, T f, const Spec<T>& s, T& grad, bool want_grad = true) {
  const int focal = FOCAL == FOCAL_RUNTIME ? s.focal : FOCAL;
  want_grad = GRAD && want_grad;
  const T yp = y > T(0) ? y : T(0);
  // NTR: shift by the prior, scale negatives' logits by lambda and their weight by 1/lambda.
  const T yn = T(1) - yp;
  const T sc_ntr = yp + s.lam * yn;
  const bool ntr = s.logit_reg != T(0);
  const T x = ntr ? (z + bias) * sc_ntr : z;
  const T sc = ntr ? sc_ntr : T(1);
  const T wq = ntr ? w * (yp + yn * s.inv_lam) : w;
  const T ax = x < T(0) ? -x : x;
  const T e = fexp_nonpos(-ax);                                    // exp(-|x|) in (0, 1]
  const T l = (x > T(0) ? x : T(0)) - x * yp + flog1p01(e);  // stable BCE-with-logits
  const T coef = s.scale * wq * f;
  const T inv = T(1) / (T(1) + e);
  const T q = e * inv;  // sigmoid(-|x|)
  if (focal == FOCAL_OFF) {
    if (want_grad) grad = coef * s.grad_scale * ((x >= T(0) ? inv : q) - yp) * sc;
    return coef * l;
  }
  bool soft = LABELS == LABELS_SOFT;
  if (LABELS == LABELS_PER_ELEMENT) soft = yp != T(0) && yp != T(1);
  // u = 1 - p_t with p_t = exp(-l). For y+ in {0, 1}, p_t is sigmoid(x) or sigmoid(-x): exact from e.
  const T u_hi = yp != T(0) ? q : inv;  // x >= 0
  const T u_lo = yp != T(0) ? inv : q;
  T u = x >= T(0) ? u_hi : u_lo;
  T pt = x >= T(0) ? u_lo : u_hi;
  if (LABELS != LABELS_BINARY && soft) {
    u = -fexpm1(-l);
    pt = T(1) - u;
  }
  const T mod = focal == FOCAL_SQUARE ? u * u : (u > T(0) ? fexp_nonpos(s.gamma * flog(u > T(0) ? u : T(1))) : T(0));
  if (want_grad) {
    // d/dx [u^g l] = (sigmoid(x) - y+) u^g (1 + g p_t l / u). For y+ in {0, 1}, sigmoid(x) - y+ = -/+ u,
    // so it is +/- u^g (u + g p_t l): no division, finite as u -> 0. Soft labels: l / u -> 1 at u = 0.
    T dfocal;
    if (LABELS != LABELS_SOFT && !soft) {
      const T m = yp != T(0) ? -mod : mod;
      dfocal = m * (u + s.gamma * pt * l);
    } else {
      const T uu = u > T(0) ? u : T(1);
      const T ratio = u > T(0) ? l / uu : T(1);
      dfocal = ((x >= T(0) ? inv : q) - yp) * mod * (T(1) + s.gamma * pt * ratio);
    }
    grad = coef * s.grad_scale * dfocal * sc;
  }
  return coef * mod * l;
}

}  // namespace dbl
