// The transcendental functions of the per-element math (dbl_math.h) and their policies, shared by
// the CPU kernel (g++), the CUDA kernel (nvcc) and its CPU emulation (dbl_emulate.cpp).
//
// The transcendentals go through a policy class Fn (ex2 = 2^x, lg2 = log2, rcp = 1/x, plus log1p on
// [0, 1]):
//   * CpuFns: our own branch-free fp32 polynomials (g++ vectorises them without -ffast-math, which a
//     libm call would block); at most 1.73 ulp against fp64 libm (tests re-check 1M points each).
//   * GpuFns (device): the MUFU instructions ex2/lg2/rcp.approx.ftz.f32 (one instruction each), and
//     a log1p built around lg2 (DeviceFormula), since lg2.approx is only accurate in absolute terms
//     near 1. EmuFns: the very same formulas with exact stand-ins for the three instructions, or
//     stand-ins perturbed by their documented worst-case error, for the CPU emulation.
//   * Fn::Row: the policy of the per-row math (on the device DeviceRowFns: no MUFU).
//   * fp64 uses libm everywhere, so gradcheck sees the reference's precision.
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

// The bits of a float as an integer and back (memcpy: nvcc and g++ both make it a plain move).
template <class To, class From>
DBL_HD To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}
DBL_HD int32_t float_bits(float f) { return bits_as<int32_t>(f); }
DBL_HD float bits_float(int32_t i) { return bits_as<float>(i); }

namespace detail {
// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer in the low mantissa bits.
constexpr float kRoundMagic = 12582912.0f;
constexpr float kLog2e = 1.44269502f;
constexpr float kLn2 = 0.693147182f;
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

// 2^(n-1) * 2 (1 + expm1(r)): shifting the exponent as unsigned keeps garbage in, garbage out
// defined for NaN input (whose NaN then propagates through p).
DBL_HD float scale_pow2(float r, int32_t ni) {
  const float p = 1.0f + (r + r * r * expm1_tail(r));
  return (p + p) * bits_float(static_cast<int32_t>(static_cast<uint32_t>(ni + 126) << 23));
}
constexpr float kExpUnder = -86.6433f;  // below: 2^(n-1) would be subnormal; results flush to 0

// (log1p(e) / e - 1) / e on [0, 1/8] (relative-error fit of log1p; our own coefficients): with it,
// e + e^2 P(e) is log1p(e) within 1e-7 relative there, where lg2.approx is not (see DeviceFormula).
DBL_HD float log1p_small_tail(float e) {
  return ((0.15588874f * e - 0.24544357f) * e + 0.33313555f) * e - 0.49999696f;
}
constexpr float kLog1pSmall = 0.125f;
// log1p(e) / (e ln 2) on [0, 1/16]: degree 2, fitted for relative error (1.8e-6 in fp32 steps; the
// Triton kernels' _log1p_bits holds the same fit).
DBL_HD float log1p_small_bits(float e) {
  return (0.44893747568130493f * e - 0.7206119894981384f) * e + 1.442692518234253f;
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// fp32 elementary functions (polynomials; used by CpuFns, the exact stand-ins and per-row math).
// ---------------------------------------------------------------------------------------------
DBL_HD float fexp(float x) {
  // Clamps written so a NaN compares false and stays NaN (one max/min instruction each): large x
  // overflows to inf, results below 2^-125 flush to 0 (as under FTZ).
  float xc = x < detail::kExpUnder ? detail::kExpUnder : x;
  xc = xc > 88.7228394f ? 88.7228394f : xc;
  float n;
  int32_t ni;
  const float r = detail::reduce_ln2(xc, n, ni);  // (sets ni: not in the same call's argument list)
  const float y = detail::scale_pow2(r, ni);
  return x < detail::kExpUnder ? 0.0f : y;
}

// 2^x; results below 2^-125 flush to 0, above 2^128 are inf.
DBL_HD float fexp2(float x) {
  float xc = x < -125.0f ? -125.0f : x;
  xc = xc > 128.0f ? 128.0f : xc;
  const float t = xc + detail::kRoundMagic;
  const float n = t - detail::kRoundMagic;
  const int32_t ni = float_bits(t) - float_bits(detail::kRoundMagic);
  const float y = detail::scale_pow2((xc - n) * detail::kLn2, ni);  // |xc - n| <= 1/2, exact
  return x < -125.0f ? 0.0f : y;
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

namespace detail {
// v = 2^k * (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)); subnormal v is scaled into range first.
DBL_HD float split_log(float v, float& kf) {
  const bool tiny = v < 1.17549435e-38f;
  const float vs = tiny ? v * 8388608.0f : v;
  const int32_t bits = float_bits(vs);
  int32_t k = ((bits >> 23) & 0xff) - 127;
  float m = bits_float((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  const bool hi = m > 1.41421356f;
  m = hi ? m * 0.5f : m;
  k = hi ? k + 1 : k;
  kf = static_cast<float>(k) - (tiny ? 23.0f : 0.0f);
  return m - 1.0f;
}
}  // namespace detail

// log(v) for v > 0 (log(0) is the caller's business).
DBL_HD float flog(float v) {
  float kf;
  const float f = detail::split_log(v, kf);
  return (kf * detail::kLn2Lo + detail::log1p_core(f)) + kf * detail::kLn2Hi;
}

// log2(v) for v > 0.
DBL_HD float flog2(float v) {
  float kf;
  const float f = detail::split_log(v, kf);
  return kf + detail::log1p_core(f) * detail::kLog2e;
}

// 1 / x with no MUFU instruction (the device's per-row math, see DeviceRowFns): Newton's iteration
// from the bit-trick guess (relative error 1/8, squared each step: 4 steps reach rounding). |x|
// is capped at 2^126 first (beyond, the guess's bits would turn negative: NaN), where 1 / x is
// below the smallest normal number and the result 0; +-inf at +-0, NaN kept.
DBL_HD float frcp(float x) {
  const float m = ::fabsf(x);
  const float big = 8.50705917e37f;  // 2^126
  float r = bits_float(0x7EF311C3 - float_bits(m > big ? big : m));  // (a NaN compares false and stays)
  for (int i = 0; i < 4; ++i) r = r * (2.0f - m * r);
  r = m == 0.0f ? INFINITY : (m > big ? 0.0f : r);
  return ::copysignf(r, x);
}

// ---------------------------------------------------------------------------------------------
// Function policies. Row: the policy of the per-row and per-launch math (row statistics to row
// constants), which runs a few times per row.
// ---------------------------------------------------------------------------------------------
// fp64 (every policy): libm.
struct F64Fns {
  static DBL_HD double ex2(double x) { return ::exp2(x); }
  static DBL_HD double lg2(double x) { return ::log2(x); }
  static DBL_HD double rcp(double x) { return 1.0 / x; }
  static DBL_HD double exp_neg(double a) { return ::exp(-a); }
  static DBL_HD double log1p01(double e, double, double) { return ::log1p(e); }
  static DBL_HD double expm1(double x) { return ::expm1(x); }
};

// A policy: its fp32 functions (Float) beside the fp64 ones, and Float's constants.
template <class Float>
struct WithF64 : Float, F64Fns {
  using Float::ex2, F64Fns::ex2;
  using Float::lg2, F64Fns::lg2;
  using Float::rcp, F64Fns::rcp;
  using Float::exp_neg, F64Fns::exp_neg;
  using Float::log1p01, F64Fns::log1p01;
  using Float::expm1, F64Fns::expm1;
};

// CPU kernel: exact polynomials; l from log1p(e) directly.
struct CpuFloat {
  static constexpr bool kDevice = false;
  static constexpr bool kOneDivision = true;
  static constexpr bool kApproxPow = false;
  using Row = WithF64<CpuFloat>;
  static DBL_HD float ex2(float x) { return fexp2(x); }
  static DBL_HD float lg2(float v) { return flog2(v); }
  static DBL_HD float rcp(float x) { return 1.0f / x; }
  // exp(-a), a >= 0: no overflow clamp, and below 2^-125 the result stays 2^-125 instead of
  // flushing to 0 (its effect on l and the gradient is below their rounding).
  static DBL_HD float exp_neg(float a) {
    float x = -a * detail::kLog2e;
    x = x < -125.0f ? -125.0f : x;
    const float t = x + detail::kRoundMagic;
    const float n = t - detail::kRoundMagic;
    return detail::scale_pow2((x - n) * detail::kLn2, float_bits(t) - float_bits(detail::kRoundMagic));
  }
  static DBL_HD float log1p01(float e, float, float) { return flog1p01(e); }
  static DBL_HD float expm1(float x) { return fexpm1(x); }
};
using CpuFns = WithF64<CpuFloat>;

// The device's per-row math: CpuFns' polynomials and a Newton reciprocal, no MUFU instruction, so
// the main paths' MUFU budget (5 an element) is all the elements'.
struct DeviceRowFloat : CpuFloat {
  using Row = WithF64<DeviceRowFloat>;
  static DBL_HD float rcp(float x) { return frcp(x); }
};
using DeviceRowFns = WithF64<DeviceRowFloat>;

// The device's formulas over three primitives I::ex2, I::lg2, I::rcp (fp32). lg2.approx has an
// absolute error of up to 2^-22 near 1, so log1p(e) = ln 2 lg2(1 + e) (with the rounding of 1 + e
// compensated: c = e - ((1 + e) - 1) is exact) serves e >= 1/8 only, where log1p(e) >= 0.117 and
// the error is <= 1.5e-6 relative; below, a polynomial. kDevice: the binary gamma = 2 path has a
// form of its own (element_focal2_device). Rows: DeviceRowFns.
template <class I>
struct DeviceFloat {
  static constexpr bool kDevice = true;
  static constexpr bool kOneDivision = false;
  // pow as ex2(g lg2(b)) carries lg2's relative error times g |lg2 b| (~1e-5 for b ~ 2^-24):
  // integer exponents are products instead
  static constexpr bool kApproxPow = true;
  using Row = DeviceRowFns;
  static DBL_HD float ex2(float x) { return I::ex2(x); }
  static DBL_HD float lg2(float v) { return I::lg2(v); }
  static DBL_HD float rcp(float x) { return I::rcp(x); }
  static DBL_HD float exp_neg(float a) { return I::ex2(-a * detail::kLog2e); }
  static DBL_HD float log1p01(float e, float w1, float inv) {
    const float small = e + e * e * detail::log1p_small_tail(e);
    const float big = I::lg2(w1) * detail::kLn2 + (e - (w1 - 1.0f)) * inv;
    return e < detail::kLog1pSmall ? small : big;
  }
  static DBL_HD float expm1(float x) { return fexpm1(x); }
};
template <class I>
using DeviceFormula = WithF64<DeviceFloat<I>>;

#if defined(__CUDACC__)
struct MufuIntrinsics {
  static __device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
  static __device__ __forceinline__ float lg2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
  static __device__ __forceinline__ float rcp(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
};
using GpuFns = DeviceFormula<MufuIntrinsics>;
#endif
#if !defined(__CUDA_ARCH__)
// Host stand-ins for the three MUFU instructions: exact (ERR = 0), or off by their worst case in
// one direction (ERR = +1 / -1): ex2 2^-21 relative, lg2 2^-22 absolute on [1/2, 2] and 2^-21
// relative elsewhere, rcp 2^-22 relative (the PTX ISA's bounds, rounded up).
template <int ERR>
struct ModelIntrinsics {
  static constexpr float kRel21 = 4.76837158e-07f, kRel22 = 2.38418579e-07f;
  static float ex2(float x) { return fexp2(x) * (1.0f + ERR * kRel21); }
  static float lg2(float v) {
    const float r = flog2(v);
    return (v >= 0.5f && v <= 2.0f) ? r + ERR * kRel22 : r * (1.0f + ERR * kRel21);
  }
  static float rcp(float x) { return (1.0f / x) * (1.0f + ERR * kRel22); }
};
template <int ERR>
using EmuFns = DeviceFormula<ModelIntrinsics<ERR>>;
#endif

}  // namespace dbl
