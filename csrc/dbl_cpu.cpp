// CPU kernel of dbl::fused: one pass over each row for its statistics, one for loss and gradient.
//
// Work is cut into fixed units (a few rows, or one column tile of a very wide row) whose loss
// partial sums are added in unit order, so the loss does not depend on the thread count. Each
// unit converts a chunk of columns to the compute dtype in a small buffer (labels and logits are
// read in whatever dtype they come) and runs the element math over it in a loop that the compiler
// vectorises (dbl_cpu_loops.h: compiled for baseline x86-64, AVX2+FMA and AVX-512, picked at run
// time).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <limits>
#include <vector>

#include "dbl_cpu_loops.h"
#include "dbl_math.h"
#include "dbl_ops.h"

namespace dbl {
namespace {

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
  const T* params;  // kTableRows x C
  Spec<T> spec;
  bool asymmetric;
  AslConsts<T> asl;
  bool check_labels;  // MODE_CHECK_LABELS: scan each chunk's labels as it is read
  // Given row statistics (2 x N: [0] the statistic A, [1] the count B, over all classes of a wider
  // problem) and the batch-max reciprocal aux[1]; null: the kernel's own statistics pass.
  const T* row_stats;
  T given_inv_batch;
  // CSR labels (y then unused): each row's stored columns col[crow[i]..crow[i+1]) (ascending) and
  // their values (each 1 or -1) in T; every other entry is a negative. Null: dense labels.
  const int64_t* crow;
  const int64_t* col;
  const T* vals;
  int reduction;  // RED_NONE, or a sum (per_class runs as RED_NONE into a buffer, then column sums)
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
      : p_(p),
        k_(elem_consts(p.spec, grad_scale)),
        loops_(loops_for<T>(isa, p.spec, p.asymmetric, p.need_grad, p.zt, p.yt)) {
    const Spec<T>& s = p.spec;
    stat_kind_ = row_stat_kind(s.reweight);
    stat_tbl_ = p.params + row_stat_param(s.reweight) * p.C;
    tw_ = p.params + weight_param(s.reweight) * p.C;
    bias_ = p.params + P_BIAS * p.C;
    pos_w_ = p.params + P_POS_W * p.C;
    check_ = p.check_labels && !p.crow ? loops_.invalid : nullptr;  // CSR values: checked up front
    // (every form but the asymmetric one, which has a single body: plain BCE's gradient too is
    // -/+ u for labels in {0, 1}, sigmoid(x) - y+ otherwise)
    soft_possible_ = !p.asymmetric && at::isFloatingType(p.yt);
    // by_batch over a constant or class-vector weight: the batch max is known without the rows;
    // with given row statistics it is the caller's (aux[1], over the whole problem)
    inv_batch_ = p.row_stats ? p.given_inv_batch : s.reweight == RW_CLASS ? T(1) / s.w_max : T(1);
    std::fill(ones_, ones_ + kChunk, T(1));
  }

  // Whether a label failed the MODE_CHECK_LABELS scan of run().
  bool labels_invalid() const { return invalid_.load(); }

  // Returns the unscaled loss sum (0 for reduction "none").
  double run() {
    const int64_t N = p_.N, C = p_.C;
    if (N == 0 || C == 0) return 0.0;
    std::vector<double> partial;
    std::vector<RowConst<T>> rows;
    // Wide rows, and by_batch (which needs the max weight of every row before any element), take
    // the statistics of all rows first.
    if (p_.row_stats) rows = given_rows();
    else if (C > kTileCols || batch_max_needs_rows(p_.spec.reweight, p_.spec.weight_norm)) rows = all_rows();
    if (C <= kTileCols) {
      const int64_t per_unit = std::max<int64_t>(1, std::min<int64_t>(N, kUnitElems / C));
      const int64_t units = (N + per_unit - 1) / per_unit;
      partial.assign(units, 0.0);
      const int64_t grain = std::max<int64_t>(1, kSerialElems / (per_unit * C));
      at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
        Scratch<T> sc(loops_.y_in || p_.crow ? C : 0);
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

  // Labels of row i, columns [c0, c0 + k), as T: the row itself when it already is T, else dst
  // (CSR: zeros and the row's stored entries in the range, a row scratch, never an N x C tensor).
  const T* labels(int64_t i, int64_t c0, int64_t k, T* dst) const {
    if (p_.crow) {
      std::fill(dst, dst + k, T(0));
      const int64_t* end = p_.col + p_.crow[i + 1];
      for (const int64_t* e = std::lower_bound(p_.col + p_.crow[i], end, c0); e < end && *e < c0 + k; ++e)
        if (*e >= c0) dst[*e - c0] = p_.vals[e - p_.col];  // (a test only unsorted columns need: no stray write)
      return dst;
    }
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

  // The row constants from the given statistics (A = row_stats[0], B = row_stats[1] = the count).
  std::vector<RowConst<T>> given_rows() const {
    std::vector<RowConst<T>> rows(p_.N);
    for (int64_t i = 0; i < p_.N; ++i)
      rows[i] = row_const<CpuFns>(p_.row_stats[p_.N + i], p_.row_stats[i], inv_batch_, p_.spec, k_);
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
      if (check_ && check_(k, yrow(i) + c * static_cast<int64_t>(p_.ysize))) invalid_.store(true, std::memory_order_relaxed);
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
      total += fn(k, z, y, weights(i, c, k, sc.w), bias_ + c, tw_ + c, pos_w_ + c, rc, k_, p_.asl, loss, grad, sum);
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
  const T* pos_w_;
  CheckFn check_;
  mutable std::atomic<bool> invalid_{false};  // some label failed check_ (any thread may set it)
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

// The ValueError of an invalid label, with the messages of dbl_kernels/_labels.py (the range is
// found only now, on the error path).
[[noreturn]] void raise_label_error(const at::Tensor& labels) {
  const auto range = at::aminmax(labels.scalar_type() == at::kBool ? labels.to(at::kByte) : labels);
  const double lo = std::get<0>(range).item<double>(), hi = std::get<1>(range).item<double>();
  char found[96];  // Python's {:g}, whose NaN is "nan" whatever its sign
  std::snprintf(found, sizeof found, "found values in [%g, %g]", std::isnan(lo) ? NAN : lo, std::isnan(hi) ? NAN : hi);
  TORCH_CHECK_VALUE(at::isFloatingType(labels.scalar_type()), "integer labels must be 0, 1 or -1 (unknown); ", found);
  TORCH_CHECK_VALUE(lo >= -1 && hi <= 1, "float labels must lie in [0, 1] or be -1 (unknown); ", found);
  TORCH_CHECK_VALUE(false, "float labels must lie in [0, 1] or be -1 (unknown); found negative values other than -1");
}

// MODE_CHECK_LABELS on CSR labels: every stored value is 1 or -1 (the message of _sparse.check_csr).
void check_csr_values(const at::Tensor& vals) {
  const at::Tensor bad = (vals != 1) & (vals != -1);
  if (!bad.any().item<bool>()) return;
  char found[64];
  const double v = vals.masked_select(bad)[0].item<double>();
  std::snprintf(found, sizeof found, "%g", std::isnan(v) ? NAN : v);
  TORCH_CHECK_VALUE(false, "sparse labels must store 1 (positive) or -1 (unknown), found ", found,
                    "; entries not stored are the negatives");
}

// per_class: out[j] = column_sum(loss, j) (dbl_math.h: rows in order, in fp64), computed a block of
// columns at a time along the rows (the loss is row-major); a column's order never depends on the
// threads.
template <class T>
void column_sums(const T* loss, int64_t N, int64_t C, T* out) {
  constexpr int64_t kCols = 64;
  at::parallel_for(0, (C + kCols - 1) / kCols, std::max<int64_t>(1, kSerialElems / std::max<int64_t>(N * kCols, 1)),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       const int64_t c0 = b * kCols, k = std::min(kCols, C - c0);
                       double acc[kCols] = {};
                       for (int64_t i = 0; i < N; ++i)
                         for (int64_t j = 0; j < k; ++j) acc[j] += static_cast<double>(loss[i * C + c0 + j]);
                       for (int64_t j = 0; j < k; ++j) out[c0 + j] = static_cast<T>(acc[j]);
                     }
                   });
}

template <class T>
void run_cpu(Prepared& pr, const OpScalars& s) {
  // aux[1] (the batch max of by_batch) is read only with row_stats: else the kernel finds it itself.
  T aux[1] = {pr.aux.data_ptr<T>()[0]};
  // At least 1: a batch whose labels are all unknown gives loss 0 and gradient 0 (as the reference).
  const bool csr = pr.crow.defined();
  const at::Tensor vals = csr ? pr.labels.to(pr.compute).contiguous() : at::Tensor();  // nnz values, as T
  if (csr && s.check_labels) check_csr_values(vals);
  if (s.reduction == RED_MEAN_COUNTED) {
    const int64_t known = csr ? pr.N * pr.C - (vals == -1).sum().item<int64_t>() : count_known(pr);
    aux[0] = T(1) / static_cast<T>(std::max<int64_t>(known, 1));
  }
  Problem<T> p;
  p.z = static_cast<const char*>(pr.logits.data_ptr());
  p.zt = pr.logits.scalar_type();
  p.ldz = pr.logits.stride(0);
  p.zsize = pr.logits.element_size();
  p.y = static_cast<const char*>(pr.labels.data_ptr());
  p.yt = csr ? pr.compute : pr.labels.scalar_type();  // CSR: rows of T built from the values
  p.ldy = csr ? 0 : pr.labels.stride(0);
  p.ysize = pr.labels.element_size();
  p.w = pr.weight.defined() ? pr.weight.data_ptr<T>() : nullptr;
  p.ws0 = pr.weight.defined() ? pr.weight.stride(0) : 0;
  p.ws1 = pr.weight.defined() ? pr.weight.stride(1) : 0;
  p.params = pr.params.data_ptr<T>();
  p.spec = make_spec<T>(s);
  p.asymmetric = s.asymmetric;
  p.asl = asl_consts<T>(s.gamma, s.gamma_neg, s.clip, s.smoothing, s.focus_grad);
  // per_class: the element losses into a buffer, then its column sums
  const bool per_class = s.reduction == RED_PER_CLASS;
  const at::Tensor elems = per_class ? at::empty({pr.N, pr.C}, pr.loss.options()) : pr.loss;
  p.reduction = static_cast<int>(per_class ? RED_NONE : s.reduction);
  p.need_grad = s.need_grad;
  p.loss = p.reduction == RED_NONE ? elems.data_ptr<T>() : nullptr;
  p.grad = s.need_grad ? static_cast<char*>(pr.grad.data_ptr()) : nullptr;
  p.N = pr.N;
  p.C = pr.C;
  p.check_labels = s.check_labels;
  p.row_stats = pr.row_stats.defined() ? pr.row_stats.data_ptr<T>() : nullptr;
  p.given_inv_batch = pr.aux.data_ptr<T>()[1];
  p.crow = csr ? pr.crow.data_ptr<int64_t>() : nullptr;
  p.col = csr ? pr.col.data_ptr<int64_t>() : nullptr;
  p.vals = csr ? vals.data_ptr<T>() : nullptr;
  const int isa = std::is_same<T, float>::value ? g_isa.load() : ISA_BASELINE;
  Runner<T> runner(p, aux[0], isa);
  const double total = runner.run();
  if (runner.labels_invalid()) raise_label_error(pr.labels);
  if (per_class) column_sums<T>(elems.data_ptr<T>(), pr.N, pr.C, pr.loss.data_ptr<T>());
  else if (s.reduction != RED_NONE) *pr.loss.data_ptr<T>() = static_cast<T>(total);  // aux[0] is in the element losses
}

// The contract features the CPU op implements (dbl_kernels/cpp_ops.py declares the same).
constexpr int kCpuFeatures = F_ASYMMETRIC | F_PER_CLASS | F_CHECK_LABELS | F_ROW_STATS | F_CSR;

std::tuple<at::Tensor, at::Tensor> fused_cpu(const at::Tensor& logits, const at::Tensor& labels,
                                             const std::optional<at::Tensor>& crow_indices,
                                             const std::optional<at::Tensor>& col_indices,
                                             const std::optional<at::Tensor>& weight, const at::Tensor& class_params,
                                             const at::Tensor& aux, const std::optional<at::Tensor>& row_stats,
                                             at::IntArrayRef modes, at::ArrayRef<double> scalars, bool need_grad) {
  const OpScalars s = unpack_options(modes, scalars, need_grad);
  Prepared p = prepare(logits, labels, crow_indices, col_indices, weight, class_params, aux, row_stats, s,
                       kCpuFeatures);
  if (p.compute == at::kDouble) run_cpu<double>(p, s);
  else run_cpu<float>(p, s);
  return {p.loss, p.grad};
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
}

TORCH_LIBRARY_IMPL(dbl, CPU, m) {
  m.impl("fused", &fused_cpu);
  m.impl("_cpu_math", &cpu_math);
}

}  // namespace dbl
