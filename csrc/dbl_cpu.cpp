// CPU kernel of dbl::fused: one pass over each row for its statistics, one for loss and gradient.
//
// Work is cut into fixed units (a few rows, or one column tile of a very wide row) whose loss
// partial sums are added in unit order, so the loss does not depend on the thread count. Each
// unit converts a chunk of columns to the compute dtype in a small buffer (labels and logits are
// read in whatever dtype they come) and runs the element math over it in a loop that the compiler
// vectorises; that loop is compiled for baseline x86-64, AVX2+FMA and AVX-512 and picked at run
// time, so no instruction the CPU lacks is ever executed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <vector>

#include "dbl_math.h"
#include "dbl_ops.h"

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

// Loss and gradient of k elements; with `sum`, returns the chunk's loss sum (loss is then scratch).
// tw is 1/n_j (rebalance) or the per-class weight; w is weight_ij (ones when there is none). NTR is
// always on: without it the bias row is 0 and lambda 1, which leave logits and weights unchanged.
template <class T, bool REBAL, int FOCAL, int LABELS, bool GRAD>
DBL_INLINE double math_body(int64_t k, const T* __restrict z, const T* __restrict y, const T* __restrict w,
                            const T* __restrict bias, const T* __restrict tw, const RowConst<T>& rc,
                            const ElemConsts<T>& kc, T* __restrict loss, T* __restrict grad, bool sum) {
  const ElemConsts<T> c = kc;  // local copies: provably not aliased by the outputs
  const RowConst<T> r = rc;
  for (int64_t j = 0; j < k; ++j) {
    const T yp = y[j] > T(0) ? y[j] : T(0);
    const T f = (y[j] != T(-1) ? T(1) : T(0)) * w[j];  // unknown labels: no loss, no gradient
    T g = T(0);
    loss[j] = element<T, CpuFns, REBAL ? WF_REBAL : WF_LINEAR, FOCAL, LABELS, true, GRAD>(z[j], yp, yp != T(0), f,
                                                                                          tw[j], bias[j], r, c, g);
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

template <class D, class S>
DBL_INLINE void convert_body(int64_t k, const S* __restrict src, D* __restrict dst) {
  for (int64_t j = 0; j < k; ++j) dst[j] = static_cast<D>(src[j]);
}

#define DBL_MATH_PARAMS                                                                                   \
  int64_t k, const T *__restrict z, const T *__restrict y, const T *__restrict w, const T *__restrict bias, \
      const T *__restrict tw, const RowConst<T> &rw, const ElemConsts<T> &s, T *__restrict loss, T *__restrict grad, bool sum

#define DBL_DEFINE_ISA(NS, ATTR)                                                                     \
  namespace NS {                                                                                     \
  template <class T, bool REBAL, int FOCAL, int LABELS, bool GRAD>                                   \
  ATTR double math(DBL_MATH_PARAMS) {                                                                \
    return math_body<T, REBAL, FOCAL, LABELS, GRAD>(k, z, y, w, bias, tw, rw, s, loss, grad, sum);   \
  }                                                                                                  \
  template <class T, int KIND>                                                                       \
  ATTR void stats(int64_t k, const T* y, const T* tbl, T* b0, T* b1, double& count, double& stat) {  \
    stats_body<T, KIND>(k, y, tbl, b0, b1, count, stat);                                             \
  }                                                                                                  \
  template <class T>                                                                                 \
  ATTR bool soft(int64_t k, const T* y) { return soft_body<T>(k, y); }                               \
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

// The loop functions of one ISA, picked once per call.
template <class T>
struct Loops {
  MathFn<T> math_binary, math_soft;
  StatsFn<T> stats_sum, stats_max, stats_sum_no_count;
  SoftFn<T> soft;
  ConvertFn grad_out;  // T -> logits dtype (null when it is T)
  ConvertFn z_in, y_in;  // input dtype -> T (null when already T)
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
Loops<T> make_loops(const Spec<T>& s, bool need_grad, at::ScalarType zt, at::ScalarType yt) {
  Loops<T> f;
  const bool rebal = s.reweight == RW_REBALANCE;
  f.math_binary = pick_math<T, L>(rebal, s.focal, LABELS_BINARY, need_grad);
  f.math_soft = pick_math<T, L>(rebal, s.focal, LABELS_SOFT, need_grad);
  f.stats_sum = L::stats_sum();
  f.stats_max = L::stats_max();
  f.stats_sum_no_count = L::stats_sum_no_count();
  f.soft = L::soft();
  f.grad_out = from_compute<T, L>(zt);
  f.z_in = to_compute<T, L>(zt);
  f.y_in = to_compute<T, L>(yt);
  return f;
}

template <class T>
Loops<T> loops_for(int isa, const Spec<T>& s, bool need_grad, at::ScalarType zt, at::ScalarType yt) {
#ifdef DBL_HAVE_X86_CLONES
  if (std::is_same<T, float>::value) {  // fp64 calls libm, which does not vectorise anyway
    if (isa == ISA_AVX512) return make_loops<T, IsaLoops<T, Avx512Tag>>(s, need_grad, zt, yt);
    if (isa == ISA_AVX2) return make_loops<T, IsaLoops<T, Avx2Tag>>(s, need_grad, zt, yt);
  }
#endif
  (void)isa;
  return make_loops<T, IsaLoops<T, BaselineTag>>(s, need_grad, zt, yt);
}

// ---------------------------------------------------------------------------------------------
// The kernel.
// ---------------------------------------------------------------------------------------------
template <class T>
struct Problem {
  const char* z;
  at::ScalarType zt;
  int64_t ldz;  // row strides in elements
  const char* y;
  at::ScalarType yt;
  int64_t ldy;
  const T* w;
  int64_t ws0, ws1;
  const T* params;  // 4 x C
  Spec<T> spec;
  int reduction;
  bool need_grad;
  T* loss;     // N x C for reduction "none"
  char* grad;  // N x C in the logits' dtype
  int64_t N, C;
  size_t zsize, ysize;
};

// Per-task buffers: one chunk of each converted input and of the outputs, plus a whole row of
// converted labels (read by the statistics and again by the element pass).
template <class T>
struct Scratch {
  explicit Scratch(int64_t row_cols) : yrow(static_cast<size_t>(row_cols)) {}
  std::vector<T> yrow;
  alignas(64) T y[kChunk];
  alignas(64) T z[kChunk];
  alignas(64) T w[kChunk];
  alignas(64) T loss[kChunk];
  alignas(64) T grad[kChunk];
};

// Rows per task of a one-pass scan over C-wide label rows: serial below kSerialElems in all.
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, kSerialElems / std::max<int64_t>(C, 1)); }

template <class T>
class Runner {
 public:
  Runner(const Problem<T>& p, T grad_scale, int isa)
      : p_(p), k_(elem_consts(p.spec, grad_scale)), loops_(loops_for<T>(isa, p.spec, p.need_grad, p.zt, p.yt)) {
    const Spec<T>& s = p.spec;
    stat_kind_ = row_stat_kind(s.reweight);
    stat_tbl_ = p.params + row_stat_param(s.reweight) * p.C;
    tw_ = p.params + weight_param(s.reweight) * p.C;
    bias_ = p.params + P_BIAS * p.C;
    soft_possible_ = (s.focal != FOCAL_OFF || s.ntr) && at::isFloatingType(p.yt);
    // by_batch over a constant or class-vector weight: the batch max is known without the rows
    inv_batch_ = s.reweight == RW_CLASS ? T(1) / s.w_max : T(1);
    std::fill(ones_, ones_ + kChunk, T(1));
  }

  // Returns the unscaled loss sum (0 for reduction "none").
  double run() {
    const int64_t N = p_.N, C = p_.C;
    if (N == 0 || C == 0) return 0.0;
    std::vector<double> partial;
    std::vector<RowConst<T>> rows;
    // Wide rows, and by_batch (which needs the max weight of every row before any element), take
    // the statistics of all rows first.
    if (C > kTileCols || batch_max_needs_rows(p_.spec.reweight, p_.spec.weight_norm)) rows = all_rows();
    if (C <= kTileCols) {
      const int64_t per_unit = std::max<int64_t>(1, std::min<int64_t>(N, kUnitElems / C));
      const int64_t units = (N + per_unit - 1) / per_unit;
      partial.assign(units, 0.0);
      const int64_t grain = std::max<int64_t>(1, kSerialElems / (per_unit * C));
      at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
        Scratch<T> sc(loops_.y_in ? C : 0);
        for (int64_t u = u0; u < u1; ++u) {
          double total = 0;
          for (int64_t i = u * per_unit; i < std::min(N, (u + 1) * per_unit); ++i) {
            const T* y = labels(i, 0, C, sc.yrow.data());  // converted once for both passes
            total += segment(i, 0, C, y, rows.empty() ? row_const_of(i, y, &sc) : rows[i], sc);
          }
          partial[u] = total;
        }
      });
    } else {  // wide rows: column tiles as independent units
      const int64_t tiles = (C + kTileCols - 1) / kTileCols;
      partial.assign(N * tiles, 0.0);
      at::parallel_for(0, N * tiles, 1, [&](int64_t u0, int64_t u1) {
        Scratch<T> sc(0);
        for (int64_t u = u0; u < u1; ++u) {
          const int64_t i = u / tiles, c0 = (u % tiles) * kTileCols;
          partial[u] = segment(i, c0, std::min(C, c0 + kTileCols), nullptr, rows[i], sc);
        }
      });
    }
    double total = 0;
    for (double v : partial) total += v;  // unit order: independent of the thread count
    return total;
  }

 private:
  const char* zrow(int64_t i) const { return p_.z + i * p_.ldz * static_cast<int64_t>(p_.zsize); }
  const char* yrow(int64_t i) const { return p_.y + i * p_.ldy * static_cast<int64_t>(p_.ysize); }

  // Labels of row i, columns [c0, c0 + k), as T: the row itself when it already is T, else dst.
  const T* labels(int64_t i, int64_t c0, int64_t k, T* dst) const {
    const char* src = yrow(i) + c0 * static_cast<int64_t>(p_.ysize);
    if (!loops_.y_in) return reinterpret_cast<const T*>(src);
    loops_.y_in(k, src, dst);
    return dst;
  }

  // (count, stat) of row i; y holds the row's labels as T, or is null (then they are converted
  // chunk by chunk into sc).
  void row_stats(int64_t i, const T* y, Scratch<T>* sc, T& count_out, T& stat_out) const {
    double count = 0, stat = 0;
    if (stat_kind_ != STAT_NONE) {
      const StatsFn<T> fn = stat_kind_ == STAT_MAX ? loops_.stats_max
                            : p_.spec.reweight == RW_REBALANCE ? loops_.stats_sum_no_count : loops_.stats_sum;
      for (int64_t c = 0; c < p_.C; c += kChunk) {  // fp32 lanes, flushed to double every chunk
        const int64_t k = std::min(kChunk, p_.C - c);
        const T* yc = y ? y + c : labels(i, c, k, sc->y);
        fn(k, yc, stat_tbl_ + c, sc->loss, sc->grad, count, stat);
      }
    }
    count_out = static_cast<T>(count);
    stat_out = static_cast<T>(stat);
  }

  RowConst<T> row_const_of(int64_t i, const T* y, Scratch<T>* sc) const {
    T count, stat;
    row_stats(i, y, sc, count, stat);
    return row_const<CpuFns>(count, stat, inv_batch_, p_.spec, k_);
  }

  // The row constants of every row; for by_batch, first the batch max weight (a max: the same
  // whatever the split over threads).
  std::vector<RowConst<T>> all_rows() {
    const int64_t N = p_.N;
    std::vector<T> count(N), stat(N);
    at::parallel_for(0, N, row_grain(p_.C), [&](int64_t i0, int64_t i1) {
      Scratch<T> sc(0);
      for (int64_t i = i0; i < i1; ++i) row_stats(i, nullptr, &sc, count[i], stat[i]);
    });
    if (batch_max_needs_rows(p_.spec.reweight, p_.spec.weight_norm)) {
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t i = 0; i < N; ++i) mx = std::max(mx, row_max_weight<CpuFns>(count[i], stat[i], p_.spec, k_));
      inv_batch_ = T(1) / mx;
    }
    std::vector<RowConst<T>> rows(N);
    for (int64_t i = 0; i < N; ++i) rows[i] = row_const<CpuFns>(count[i], stat[i], inv_batch_, p_.spec, k_);
    return rows;
  }

  // weight_ij for a chunk: the row itself (unit stride), a filled or gathered buffer, or ones.
  const T* weights(int64_t i, int64_t c0, int64_t k, T* buf) const {
    if (p_.w == nullptr) return ones_;
    const T* row = p_.w + i * p_.ws0;
    if (p_.ws1 == 1) return row + c0;
    for (int64_t j = 0; j < k; ++j) buf[j] = row[(c0 + j) * p_.ws1];
    return buf;
  }

  // Loss and gradient over columns [c0, c1) of row i; y: the segment's labels as T, or null.
  double segment(int64_t i, int64_t c0, int64_t c1, const T* yseg, const RowConst<T>& rc, Scratch<T>& sc) const {
    double total = 0;
    const bool sum = p_.reduction != RED_NONE;
    for (int64_t c = c0; c < c1; c += kChunk) {
      const int64_t k = std::min(kChunk, c1 - c);
      const T* y = yseg ? yseg + (c - c0) : labels(i, c, k, sc.y);
      const char* zsrc = zrow(i) + c * static_cast<int64_t>(p_.zsize);
      const T* z = reinterpret_cast<const T*>(zsrc);
      if (loops_.z_in) {
        loops_.z_in(k, zsrc, sc.z);
        z = sc.z;
      }
      const int64_t off = i * p_.C + c;
      T* loss = sum ? sc.loss : p_.loss + off;
      T* grad = p_.need_grad && !loops_.grad_out ? reinterpret_cast<T*>(p_.grad) + off : sc.grad;
      const MathFn<T> fn = soft_possible_ && loops_.soft(k, y) ? loops_.math_soft : loops_.math_binary;
      total += fn(k, z, y, weights(i, c, k, sc.w), bias_ + c, tw_ + c, rc, k_, loss, grad, sum);
      if (p_.need_grad && loops_.grad_out) loops_.grad_out(k, sc.grad, p_.grad + off * static_cast<int64_t>(p_.zsize));
    }
    return total;
  }

  const Problem<T>& p_;
  ElemConsts<T> k_;
  Loops<T> loops_;
  int stat_kind_;
  const T* stat_tbl_;
  const T* tw_;
  const T* bias_;
  bool soft_possible_;
  T inv_batch_;
  alignas(64) T ones_[kChunk];
};

// Number of labels != -1, the denominator of RED_MEAN_COUNTED. Integer partial counts, so the sum
// is exact whatever the split over threads. bool and uint8 labels cannot hold -1.
int64_t count_known(const Prepared& pr) {
  const at::Tensor& y = pr.labels;  // unit column stride
  const int64_t N = pr.N, C = pr.C, ld = y.stride(0);
  if (y.scalar_type() == at::kBool || y.scalar_type() == at::kByte) return N * C;
  int64_t unknown = 0;
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "dbl_count_known", [&] {
    const scalar_t* base = y.data_ptr<scalar_t>();
    const scalar_t minus_one = static_cast<scalar_t>(-1);
    unknown = at::parallel_reduce(
        0, N, row_grain(C), int64_t(0),
        [&](int64_t i0, int64_t i1, int64_t acc) {
          for (int64_t i = i0; i < i1; ++i) {
            const scalar_t* row = base + i * ld;
            int64_t c = 0;
            for (int64_t j = 0; j < C; ++j) c += row[j] == minus_one;
            acc += c;
          }
          return acc;
        },
        std::plus<int64_t>());
  });
  return N * C - unknown;
}

template <class T>
void run_cpu(Prepared& pr, const OpScalars& s) {
  // aux[1] (the batch max of by_batch) is not read: the kernel finds it itself.
  T aux[1] = {pr.aux.data_ptr<T>()[0]};
  // At least 1: a batch whose labels are all unknown gives loss 0 and gradient 0 (as the reference).
  if (s.reduction == RED_MEAN_COUNTED) aux[0] = T(1) / static_cast<T>(std::max<int64_t>(count_known(pr), 1));
  Problem<T> p;
  p.z = static_cast<const char*>(pr.logits.data_ptr());
  p.zt = pr.logits.scalar_type();
  p.ldz = pr.logits.stride(0);
  p.zsize = pr.logits.element_size();
  p.y = static_cast<const char*>(pr.labels.data_ptr());
  p.yt = pr.labels.scalar_type();
  p.ldy = pr.labels.stride(0);
  p.ysize = pr.labels.element_size();
  p.w = pr.weight.defined() ? pr.weight.data_ptr<T>() : nullptr;
  p.ws0 = pr.weight.defined() ? pr.weight.stride(0) : 0;
  p.ws1 = pr.weight.defined() ? pr.weight.stride(1) : 0;
  p.params = pr.params.data_ptr<T>();
  p.spec = make_spec<T>(s);
  p.reduction = static_cast<int>(s.reduction);
  p.need_grad = s.need_grad;
  p.loss = s.reduction == RED_NONE ? pr.loss.data_ptr<T>() : nullptr;
  p.grad = s.need_grad ? static_cast<char*>(pr.grad.data_ptr()) : nullptr;
  p.N = pr.N;
  p.C = pr.C;
  const int isa = std::is_same<T, float>::value ? g_isa.load() : ISA_BASELINE;
  const double total = Runner<T>(p, aux[0], isa).run();
  if (s.reduction != RED_NONE) *pr.loss.data_ptr<T>() = static_cast<T>(total);  // aux[0] is in the element losses
}

std::tuple<at::Tensor, at::Tensor> fused_cpu(const at::Tensor& logits, const at::Tensor& labels,
                                             const std::optional<at::Tensor>& weight, const at::Tensor& class_params,
                                             const at::Tensor& aux, int64_t reweight_mode, int64_t weight_norm,
                                             bool logit_reg, bool focal, int64_t reduction, double map_alpha,
                                             double map_beta, double map_gamma, double cb_log_beta, double neg_scale,
                                             double gamma, double scale, double w_max, bool need_grad) {
  const OpScalars s{reweight_mode, weight_norm, logit_reg, focal, reduction, map_alpha, map_beta, map_gamma,
                    cb_log_beta, neg_scale, gamma, scale, w_max, need_grad};
  Prepared p = prepare(logits, labels, weight, class_params, aux, s);
  if (p.compute == at::kDouble) run_cpu<double>(p, s);
  else run_cpu<float>(p, s);
  return {p.loss, p.grad};
}

// Whether any CPU label lies strictly in (-1, 0), the one invalid value of float labels that a
// min/max check misses: one pass in the labels' own precision (torch needs three). kLanes flags,
// element-wise in the lane, so the loop vectorises.
bool labels_between(const at::Tensor& labels_in) {
  TORCH_CHECK(labels_in.device().is_cpu() && labels_in.dim() == 2 && at::isFloatingType(labels_in.scalar_type()),
              "dbl::_labels_between takes 2-D CPU float labels");
  const at::Tensor y = unit_column_stride(labels_in);
  const int64_t N = y.size(0), C = y.size(1), ld = y.stride(0);
  int64_t rows = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "dbl_labels_between", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // double for double labels, float otherwise
    const scalar_t* base = y.data_ptr<scalar_t>();
    rows = at::parallel_reduce(
        0, N, row_grain(C), int64_t(0),
        [&](int64_t i0, int64_t i1, int64_t acc) {
          for (int64_t i = i0; i < i1; ++i) {
            const scalar_t* row = base + i * ld;
            acc_t flag[kLanes] = {}, v[kLanes];
            const auto update = [&] {
              for (int l = 0; l < kLanes; ++l) flag[l] = (v[l] > acc_t(-1) && v[l] < acc_t(0)) ? acc_t(1) : flag[l];
            };
            int64_t j0 = 0;
            for (; j0 + kLanes <= C; j0 += kLanes) {
              for (int l = 0; l < kLanes; ++l) v[l] = static_cast<acc_t>(row[j0 + l]);
              update();
            }
            if (j0 < C) {  // the tail, padded with a value of the row
              for (int l = 0; l < kLanes; ++l) v[l] = static_cast<acc_t>(row[j0 + (j0 + l < C ? l : 0)]);
              update();
            }
            acc_t any = 0;
            for (int l = 0; l < kLanes; ++l) any = std::max(any, flag[l]);
            acc += any > acc_t(0);
          }
          return acc;
        },
        std::plus<int64_t>());
  });
  return rows > 0;
}

// Test hooks: choose the vector ISA (clamped to what the CPU has; returns the one now in use), and
// evaluate the fp32 elementary functions of dbl_math.h elementwise.
int64_t cpu_isa(int64_t isa) {
  if (isa >= 0) g_isa.store(static_cast<int>(std::min<int64_t>(isa, kBestIsa)));
  return g_isa.load();
}

// How many threads one parallel region of this extension really runs on (1 when it was built
// without OpenMP: at::parallel_for is header code and then runs serially).
int64_t cpu_parallel_threads() {
  std::vector<char> seen(static_cast<size_t>(at::get_num_threads()), 0);  // a slot per thread id
  at::parallel_for(0, static_cast<int64_t>(seen.size()), 1, [&](int64_t, int64_t) {
    seen[static_cast<size_t>(at::get_thread_num()) % seen.size()] = 1;
  });
  return std::count(seen.begin(), seen.end(), 1);
}

bool cpu_built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

at::Tensor cpu_math(const at::Tensor& x, int64_t fn) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "dbl::_cpu_math takes a CPU float32 tensor");
  at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const float* a = in.data_ptr<float>();
  float* b = out.data_ptr<float>();
  const int64_t n = in.numel();
  switch (fn) {
    case 0: for (int64_t i = 0; i < n; ++i) b[i] = fexp(a[i]); break;
    case 1: for (int64_t i = 0; i < n; ++i) b[i] = fexpm1(a[i]); break;
    case 2: for (int64_t i = 0; i < n; ++i) b[i] = flog1p01(a[i]); break;
    case 3: for (int64_t i = 0; i < n; ++i) b[i] = flog(a[i]); break;
    case 4: for (int64_t i = 0; i < n; ++i) b[i] = fexp2(a[i]); break;
    case 5: for (int64_t i = 0; i < n; ++i) b[i] = flog2(a[i]); break;
    default:
      TORCH_CHECK(false, "dbl::_cpu_math: fn must be 0 (exp), 1 (expm1), 2 (log1p on [0,1]), 3 (log), 4 (exp2) or 5 (log2)");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dbl, m) {
  m.def("_cpu_isa(int isa) -> int", &cpu_isa);
  m.def("_cpu_math(Tensor x, int fn) -> Tensor");
  m.def("_cpu_parallel_threads() -> int", &cpu_parallel_threads);
  m.def("_cpu_built_with_openmp() -> bool", &cpu_built_with_openmp);
  m.def("_labels_between(Tensor labels) -> bool", &labels_between);
}

TORCH_LIBRARY_IMPL(dbl, CPU, m) {
  m.impl("fused", &fused_cpu);
  m.impl("_cpu_math", &cpu_math);
}

}  // namespace dbl
