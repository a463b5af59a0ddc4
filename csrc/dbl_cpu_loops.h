// The CPU kernel's vectorised loops (element math, row statistics, label scans, dtype conversions)
// and their per-ISA dispatch; included by dbl_cpu.cpp alone (its anonymous namespace is that file's).
//
// Each loop body is compiled for baseline x86-64, AVX2+FMA and AVX-512 and picked at run time, so
// no instruction the CPU lacks is ever executed.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "dbl_math.h"

namespace dbl {
namespace {
constexpr int64_t kChunk = 256;         // columns converted and processed at a time (fits L1)
constexpr int kLanes = 16;              // a chunk sum ends as 16 partial sums, added in double
constexpr int64_t kTileCols = 32768;    // rows wider than this are split into column tiles
constexpr int64_t kUnitElems = 16384;   // target elements per work unit
constexpr int64_t kSerialElems = 8192;  // below this, one thread (a parallel region costs more)

enum Isa { ISA_BASELINE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

int detect_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
#endif
  return ISA_BASELINE;
}

const int kBestIsa = detect_isa();
std::atomic<int> g_isa{kBestIsa};

// ---------------------------------------------------------------------------------------------
// Loop bodies. Each is compiled once per ISA (the wrappers below): always_inline makes the body
// take the target of its wrapper, so the same source becomes SSE2, AVX2+FMA and AVX-512 code.
// ---------------------------------------------------------------------------------------------
#define DBL_INLINE inline __attribute__((always_inline))

// Sums of a chunk in kLanes double accumulators: element j of the chunk goes to lane j % kLanes,
// in order, and the lanes are folded pairwise. Integer-free and fixed: the same additions in the
// same order on every ISA and thread count (the lane loop is plain element-wise code, so SSE2,
// AVX2 and AVX-512 all run it as the same per-lane double additions), with double precision for
// the running sums and no padding of short chunks (COCO rows are 80 wide).
DBL_INLINE double fold_lanes(const double* __restrict lanes) {
  static_assert(kLanes == 16, "the fold below is written out for 16 lanes");
  double h[8];  // spelt out, so the partial sums stay in registers
  for (int l = 0; l < 8; ++l) h[l] = lanes[l] + lanes[l + 8];
  const double q0 = h[0] + h[4], q1 = h[1] + h[5], q2 = h[2] + h[6], q3 = h[3] + h[7];
  return (q0 + q2) + (q1 + q3);
}

template <class T>
DBL_INLINE void add_lanes(int64_t k, const T* __restrict v, double* __restrict lanes) {
  int64_t j = 0;
  for (; j + kLanes <= k; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(v[j + l]);
  for (int l = 0; j + l < k; ++l) lanes[l] += static_cast<double>(v[j + l]);
}

template <class T>
DBL_INLINE double lane_sum(int64_t k, const T* __restrict v) {
  double lanes[kLanes] = {};
  add_lanes(k, v, lanes);
  return fold_lanes(lanes);
}

// The asymmetric element form (element_asl) as a FOCAL code of the CPU loops: one instantiation,
// any labels.
constexpr int kFocalAsl = 100;

// Loss and gradient of k elements; with `sum`, returns the chunk's loss sum (loss is then scratch).
// tw is 1/n_j (rebalance) or the per-class weight; w is weight_ij (ones when there is none); pw the
// POS_W row (asymmetric form only). NTR is always on: without it the bias row is 0 and lambda 1,
// which leave logits and weights unchanged.
template <class T, bool REBAL, int FOCAL, int LABELS, bool GRAD>
DBL_INLINE double math_body(int64_t k, const T* __restrict z, const T* __restrict y, const T* __restrict w,
                            const T* __restrict bias, const T* __restrict tw, const T* __restrict pw,
                            const RowConst<T>& rc, const ElemConsts<T>& kc, const AslConsts<T>& ac,
                            T* __restrict loss, T* __restrict grad, bool sum) {
  const ElemConsts<T> c = kc;  // local copies: provably not aliased by the outputs
  const RowConst<T> r = rc;
  const AslConsts<T> a = ac;
  for (int64_t j = 0; j < k; ++j) {
    const T yp = y[j] > T(0) ? y[j] : T(0);
    const T f = (y[j] != T(-1) ? T(1) : T(0)) * w[j];  // unknown labels: no loss, no gradient
    T g = T(0);
    if constexpr (FOCAL == kFocalAsl) {
      loss[j] = element_asl<T, CpuFns, REBAL ? WF_REBAL : WF_LINEAR, true, GRAD>(z[j], yp, f, tw[j], bias[j], pw[j],
                                                                                 r, c, a, g);
    } else {
      loss[j] = element<T, CpuFns, REBAL ? WF_REBAL : WF_LINEAR, FOCAL, LABELS, true, GRAD>(z[j], yp, yp != T(0), f,
                                                                                            tw[j], bias[j], r, c, g);
    }
    if (GRAD) grad[j] = g;
  }
  return sum ? lane_sum(k, loss) : 0.0;
}

// Row statistics of k labels: count += sum y+, stat += sum y+ tbl (STAT_SUM) or
// stat = max(stat, max over y+ > 0 of tbl) (STAT_MAX); kStatSumNoCount is STAT_SUM for rebalance,
// whose weight needs no count. b0 and b1 are kChunk-slot scratch buffers.
constexpr int kStatSumNoCount = 100;

template <class T, int KIND>
DBL_INLINE void stats_body(int64_t k, const T* __restrict y, const T* __restrict tbl, T* __restrict b0,
                           T* __restrict b1, double& count, double& stat) {
  T mx = T(0);  // the table values (CB weights) are positive
  for (int64_t j = 0; j < k; ++j) {
    const T yp = y[j] > T(0) ? y[j] : T(0);
    b0[j] = yp;
    if (KIND == STAT_MAX) {
      const T v = yp > T(0) ? tbl[j] : T(0);
      mx = v > mx ? v : mx;  // a max is exact in any order
    } else {
      b1[j] = yp * tbl[j];
    }
  }
  if (KIND != kStatSumNoCount) count += lane_sum(k, b0);
  if (KIND == STAT_MAX) stat = std::max(stat, static_cast<double>(mx));
  else stat += lane_sum(k, b1);
}

// Labels of a chunk: 1 if any is outside {-1, 0, 1} (then 1 - p_t needs expm1).
template <class T>
DBL_INLINE bool soft_body(int64_t k, const T* __restrict y) {
  int soft = 0;
  for (int64_t j = 0; j < k; ++j) soft |= (y[j] != T(0)) & (y[j] != T(1)) & (y[j] != T(-1));
  return soft != 0;
}

// MODE_CHECK_LABELS: whether any of k labels (in their own dtype, so that no conversion hides a
// value) is invalid: integers outside {-1, 0, 1}, floats outside [0, 1] other than -1 (NaN too).
// Flags kept element-wise, so the loop vectorises; bool labels are always valid (not scanned).
template <class S>
DBL_INLINE bool invalid_body(int64_t k, const S* __restrict v) {
  using A = at::opmath_type<S>;  // float for half / bfloat16, the type itself otherwise
  int bad = 0;
  for (int64_t j = 0; j < k; ++j) {
    const A x = static_cast<A>(v[j]);
    if constexpr (std::is_floating_point<A>::value) bad |= static_cast<int>(!(x >= A(0) && x <= A(1))) & (x != A(-1));
    else if constexpr (std::is_signed<A>::value) bad |= static_cast<int>(x < A(-1)) | static_cast<int>(x > A(1));
    else bad |= static_cast<int>(x > A(1));
  }
  return bad != 0;
}

template <class D, class S>
DBL_INLINE void convert_body(int64_t k, const S* __restrict src, D* __restrict dst) {
  for (int64_t j = 0; j < k; ++j) dst[j] = static_cast<D>(src[j]);
}

#define DBL_MATH_PARAMS                                                                                   \
  int64_t k, const T *__restrict z, const T *__restrict y, const T *__restrict w, const T *__restrict bias, \
      const T *__restrict tw, const T *__restrict pw, const RowConst<T> &rw, const ElemConsts<T> &s,        \
      const AslConsts<T> &ac, T *__restrict loss, T *__restrict grad, bool sum

#define DBL_DEFINE_ISA(NS, ATTR)                                                                     \
  namespace NS {                                                                                     \
  template <class T, bool REBAL, int FOCAL, int LABELS, bool GRAD>                                   \
  ATTR double math(DBL_MATH_PARAMS) {                                                                \
    return math_body<T, REBAL, FOCAL, LABELS, GRAD>(k, z, y, w, bias, tw, pw, rw, s, ac, loss, grad, sum); \
  }                                                                                                  \
  template <class T, int KIND>                                                                       \
  ATTR void stats(int64_t k, const T* y, const T* tbl, T* b0, T* b1, double& count, double& stat) {  \
    stats_body<T, KIND>(k, y, tbl, b0, b1, count, stat);                                             \
  }                                                                                                  \
  template <class T>                                                                                 \
  ATTR bool soft(int64_t k, const T* y) { return soft_body<T>(k, y); }                               \
  template <class S>                                                                                 \
  ATTR bool invalid(int64_t k, const void* y) { return invalid_body<S>(k, static_cast<const S*>(y)); } \
  template <class D, class S>                                                                        \
  ATTR void convert(int64_t k, const void* src, void* dst) {                                         \
    convert_body<D, S>(k, static_cast<const S*>(src), static_cast<D*>(dst));                        \
  }                                                                                                  \
  }

DBL_DEFINE_ISA(isa_baseline, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DBL_HAVE_X86_CLONES 1
#if defined(__clang__)
#define DBL_AVX512_TARGET "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,f16c"
#else
#define DBL_AVX512_TARGET "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,f16c,prefer-vector-width=512"
#endif
DBL_DEFINE_ISA(isa_avx2, __attribute__((target("avx2,fma,f16c"))))
DBL_DEFINE_ISA(isa_avx512, __attribute__((target(DBL_AVX512_TARGET))))
#endif

template <class T>
using MathFn = double (*)(DBL_MATH_PARAMS);
template <class T>
using StatsFn = void (*)(int64_t, const T*, const T*, T*, T*, double&, double&);
template <class T>
using SoftFn = bool (*)(int64_t, const T*);
using ConvertFn = void (*)(int64_t, const void*, void*);
using CheckFn = bool (*)(int64_t, const void*);

// The loop functions of one ISA, picked once per call.
template <class T>
struct Loops {
  MathFn<T> math_binary, math_soft;
  StatsFn<T> stats_sum, stats_max, stats_sum_no_count;
  SoftFn<T> soft;
  ConvertFn grad_out;  // T -> logits dtype (null when it is T)
  ConvertFn z_in, y_in;  // input dtype -> T (null when already T)
  CheckFn invalid;       // the label check in the labels' dtype (null for bool labels)
};

template <class T, class NS_TAG>
struct IsaLoops;

#define DBL_ISA_LOOPS(TAG, NS)                                                                            \
  struct TAG {};                                                                                          \
  template <class T>                                                                                      \
  struct IsaLoops<T, TAG> {                                                                               \
    template <bool REBAL, int FOCAL, int LABELS, bool GRAD>                                               \
    static MathFn<T> math() {                                                                             \
      return &NS::math<T, REBAL, FOCAL, LABELS, GRAD>;                                                    \
    }                                                                                                     \
    static StatsFn<T> stats_sum() { return &NS::stats<T, STAT_SUM>; }                                     \
    static StatsFn<T> stats_max() { return &NS::stats<T, STAT_MAX>; }                                     \
    static StatsFn<T> stats_sum_no_count() { return &NS::stats<T, kStatSumNoCount>; }                     \
    static SoftFn<T> soft() { return &NS::soft<T>; }                                                      \
    template <class S>                                                                                    \
    static ConvertFn to_compute() { return &NS::convert<T, S>; }                                          \
    template <class S>                                                                                    \
    static CheckFn check() { return &NS::invalid<S>; }                                                    \
    template <class D>                                                                                    \
    static ConvertFn from_compute() { return &NS::convert<D, T>; }                                        \
  };

DBL_ISA_LOOPS(BaselineTag, isa_baseline)
#ifdef DBL_HAVE_X86_CLONES
DBL_ISA_LOOPS(Avx2Tag, isa_avx2)
DBL_ISA_LOOPS(Avx512Tag, isa_avx512)
#endif

template <class T, class L, bool REBAL, bool GRAD>
MathFn<T> pick_focal(int focal, int labels) {
  switch (focal) {
    case FOCAL_SQUARE:
      return labels == LABELS_SOFT ? L::template math<REBAL, FOCAL_SQUARE, LABELS_SOFT, GRAD>()
                                   : L::template math<REBAL, FOCAL_SQUARE, LABELS_BINARY, GRAD>();
    case FOCAL_POW:
      return labels == LABELS_SOFT ? L::template math<REBAL, FOCAL_POW, LABELS_SOFT, GRAD>()
                                   : L::template math<REBAL, FOCAL_POW, LABELS_BINARY, GRAD>();
    default:  // no p_t; soft labels still change the NTR factors
      return labels == LABELS_SOFT ? L::template math<REBAL, FOCAL_OFF, LABELS_SOFT, GRAD>()
                                   : L::template math<REBAL, FOCAL_OFF, LABELS_BINARY, GRAD>();
  }
}

template <class T, class L>
MathFn<T> pick_math(bool rebal, int focal, int labels, bool grad) {
  if (focal == kFocalAsl) {  // labels of any kind
    if (rebal) return grad ? L::template math<true, kFocalAsl, LABELS_SOFT, true>()
                           : L::template math<true, kFocalAsl, LABELS_SOFT, false>();
    return grad ? L::template math<false, kFocalAsl, LABELS_SOFT, true>()
                : L::template math<false, kFocalAsl, LABELS_SOFT, false>();
  }
  if (rebal) return grad ? pick_focal<T, L, true, true>(focal, labels) : pick_focal<T, L, true, false>(focal, labels);
  return grad ? pick_focal<T, L, false, true>(focal, labels) : pick_focal<T, L, false, false>(focal, labels);
}

template <class T, class L>
ConvertFn to_compute(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return std::is_same<T, float>::value ? nullptr : L::template to_compute<float>();
    case at::kDouble: return std::is_same<T, double>::value ? nullptr : L::template to_compute<double>();
    case at::kHalf: return L::template to_compute<at::Half>();
    case at::kBFloat16: return L::template to_compute<at::BFloat16>();
    case at::kBool: return L::template to_compute<bool>();
    case at::kByte: return L::template to_compute<uint8_t>();
    case at::kChar: return L::template to_compute<int8_t>();
    case at::kShort: return L::template to_compute<int16_t>();
    case at::kInt: return L::template to_compute<int32_t>();
    case at::kLong: return L::template to_compute<int64_t>();
    default: TORCH_CHECK(false, "dbl::fused: unsupported dtype ", dtype);
  }
}

template <class T, class L>
CheckFn label_check(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBool: return nullptr;
    case at::kFloat: return L::template check<float>();
    case at::kDouble: return L::template check<double>();
    case at::kHalf: return L::template check<at::Half>();
    case at::kBFloat16: return L::template check<at::BFloat16>();
    case at::kByte: return L::template check<uint8_t>();
    case at::kChar: return L::template check<int8_t>();
    case at::kShort: return L::template check<int16_t>();
    case at::kInt: return L::template check<int32_t>();
    case at::kLong: return L::template check<int64_t>();
    default: TORCH_CHECK(false, "dbl::fused: unsupported labels dtype ", dtype);
  }
}

template <class T, class L>
ConvertFn from_compute(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return std::is_same<T, float>::value ? nullptr : L::template from_compute<float>();
    case at::kDouble: return std::is_same<T, double>::value ? nullptr : L::template from_compute<double>();
    case at::kHalf: return L::template from_compute<at::Half>();
    case at::kBFloat16: return L::template from_compute<at::BFloat16>();
    default: TORCH_CHECK(false, "dbl::fused: unsupported logits dtype ", dtype);
  }
}

template <class T, class L>
Loops<T> make_loops(const Spec<T>& s, bool asymmetric, bool need_grad, at::ScalarType zt, at::ScalarType yt) {
  Loops<T> f;
  const bool rebal = s.reweight == RW_REBALANCE;
  const int focal = asymmetric ? kFocalAsl : s.focal;
  f.math_binary = pick_math<T, L>(rebal, focal, LABELS_BINARY, need_grad);
  f.math_soft = pick_math<T, L>(rebal, focal, LABELS_SOFT, need_grad);
  f.stats_sum = L::stats_sum();
  f.stats_max = L::stats_max();
  f.stats_sum_no_count = L::stats_sum_no_count();
  f.soft = L::soft();
  f.grad_out = from_compute<T, L>(zt);
  f.z_in = to_compute<T, L>(zt);
  f.y_in = to_compute<T, L>(yt);
  f.invalid = label_check<T, L>(yt);
  return f;
}

template <class T>
Loops<T> loops_for(int isa, const Spec<T>& s, bool asymmetric, bool need_grad, at::ScalarType zt,
                   at::ScalarType yt) {
#ifdef DBL_HAVE_X86_CLONES
  if (std::is_same<T, float>::value) {  // fp64 calls libm, which does not vectorise anyway
    if (isa == ISA_AVX512) return make_loops<T, IsaLoops<T, Avx512Tag>>(s, asymmetric, need_grad, zt, yt);
    if (isa == ISA_AVX2) return make_loops<T, IsaLoops<T, Avx2Tag>>(s, asymmetric, need_grad, zt, yt);
  }
#endif
  (void)isa;
  return make_loops<T, IsaLoops<T, BaselineTag>>(s, asymmetric, need_grad, zt, yt);
}

}  // namespace
}  // namespace dbl
