// CUDA kernel of dbl::fused. No torch headers: the torch glue lives in dbl_cuda_glue.cpp, so this
// file compiles with nvcc alone (tests compile-check it for sm_80 and sm_90 on machines whose
// torch has no CUDA).
//
// One work item is a row (narrow rows) or a column tile of a row (wide rows). A group of G threads
// owns an item: it reduces the row statistics over the labels across the group with warp shuffles
// (wide rows: a separate kernel computes them first), then reads logits and labels again (from
// L1/L2) with 16-byte loads and computes loss and gradient per element. Each block writes one
// partial loss sum; a one-block kernel adds the partials in a fixed order, so the loss is
// bit-identical from run to run. All indexing is 64-bit; everything runs on the caller's stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "dbl_cuda.h"
#include "dbl_math.h"

namespace dbl {
namespace cuda {
namespace {

constexpr int kThreads = 256;       // threads per block of the main and statistics kernels
constexpr int kFinalThreads = 1024; // the fixed-order final sum
constexpr int kVecsPerThread = 8;   // 16-byte vectors per thread per item (sets the narrow/wide split)
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Storage <-> compute conversions.
// ---------------------------------------------------------------------------------------------
template <class T, class S>
struct Convert {
  static __device__ __forceinline__ T in(S v) { return static_cast<T>(v); }
};
template <class T>
struct Convert<T, __half> {
  static __device__ __forceinline__ T in(__half v) { return static_cast<T>(__half2float(v)); }
};
template <class T>
struct Convert<T, __nv_bfloat16> {
  static __device__ __forceinline__ T in(__nv_bfloat16 v) { return static_cast<T>(__bfloat162float(v)); }
};

template <class S, class T>
__device__ __forceinline__ S store_as(T v) { return static_cast<S>(v); }
template <>
__device__ __forceinline__ __half store_as<__half, float>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }
// torch builds with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__: no implicit casts.
template <>
__device__ __forceinline__ __half store_as<__half, double>(double v) { return __double2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16, double>(double v) { return __double2bfloat16(v); }

// V consecutive elements moved as one (16-byte for the logits; labels follow the same V).
template <class S, int V>
struct alignas(sizeof(S) * V) Pack {
  S v[V];
};

// ---------------------------------------------------------------------------------------------
// Kernel arguments.
// ---------------------------------------------------------------------------------------------
enum StatsMode { STATS_NONE = 0, STATS_IN_GROUP = 1, STATS_PRECOMPUTED = 2 };

template <class T>
struct Args {
  const void* z;
  int64_t ldz;
  const void* y;
  int64_t ldy;
  int y_dtype;
  int y_size;
  const T* w;
  int64_t ws0, ws1;
  const T* params;
  const T* aux;
  T* loss;
  void* grad;
  double* partial;          // one per block (sum / mean)
  const double* row_stats;  // (count, stat) per row, STATS_PRECOMPUTED
  int64_t N, C;
  Spec<T> spec;
  int group;                // threads per item: a power of two <= 32, or kThreads
  int64_t tile_cols;        // columns per item
  int64_t ntiles;           // items per row
  int64_t items_per_block;
  int stats_mode;
  bool vec;                 // aligned: Pack loads and stores
  bool need_grad;
  int reduction;
};

// Labels are read in their own dtype (no conversion copy); the dtype is a run-time switch around
// the loads only, so the math is compiled once per logits dtype. Columns at or past col_end read
// as unknown labels (-1), which contribute nothing.
template <class S, class T, int V>
__device__ __forceinline__ void load_labels_as(const void* row, int64_t c, int64_t col_end, bool vec, T (&out)[V]) {
  const S* p = static_cast<const S*>(row) + c;
  if (vec && c + V <= col_end) {
    const Pack<S, V> pk = *reinterpret_cast<const Pack<S, V>*>(p);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = Convert<T, S>::in(pk.v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = c + e < col_end ? Convert<T, S>::in(p[e]) : T(-1);
  }
}

template <class T, int V>
__device__ __forceinline__ void load_labels(int dtype, const void* row, int64_t c, int64_t col_end, bool vec,
                                            T (&out)[V]) {
  switch (dtype) {
    case kU8: load_labels_as<uint8_t, T, V>(row, c, col_end, vec, out); break;
    case kI8: load_labels_as<int8_t, T, V>(row, c, col_end, vec, out); break;
    case kI16: load_labels_as<int16_t, T, V>(row, c, col_end, vec, out); break;
    case kI32: load_labels_as<int32_t, T, V>(row, c, col_end, vec, out); break;
    case kI64: load_labels_as<int64_t, T, V>(row, c, col_end, vec, out); break;
    case kF16: load_labels_as<__half, T, V>(row, c, col_end, vec, out); break;
    case kBF16: load_labels_as<__nv_bfloat16, T, V>(row, c, col_end, vec, out); break;
    case kF32: load_labels_as<float, T, V>(row, c, col_end, vec, out); break;
    default: load_labels_as<double, T, V>(row, c, col_end, vec, out); break;
  }
}

template <class S, class T>
__device__ __forceinline__ T label_at(const void* row, int64_t c) {
  return Convert<T, S>::in(static_cast<const S*>(row)[c]);
}

// Block-wide sum in a fixed pattern (shuffle tree per warp, then warps in order); thread 0 gets it.
template <int THREADS>
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double warp_sums[THREADS / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFullMask, v, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0) {
    for (int i = 0; i < THREADS / 32; ++i) total += warp_sums[i];
  }
  return total;
}

__device__ __forceinline__ double block_max(double v) {
  __shared__ double warp_maxs[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_down_sync(kFullMask, v, off));
  if (threadIdx.x % 32 == 0) warp_maxs[threadIdx.x / 32] = v;
  __syncthreads();
  double m = v;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kThreads / 32; ++i) m = fmax(m, warp_maxs[i]);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// The main kernel.
// ---------------------------------------------------------------------------------------------
template <class Z, class T>
// 3 blocks of 256 per SM cap registers at 85 per thread: enough for fp32 math, not for fp64 (whose
// pow spilled 24 bytes at that cap), which gets 2 blocks and up to 128 registers instead.
__global__ void __launch_bounds__(kThreads, sizeof(T) == 8 ? 2 : 3) fused_kernel(Args<T> a) {
  constexpr int V = 16 / sizeof(Z);  // elements per 16-byte logits load
  Spec<T> sp = a.spec;
  sp.grad_scale = a.aux[0];
  sp.inv_batch_max = a.aux[1];
  const bool rebal = sp.reweight == RW_REBALANCE;
  const int stat_kind = row_stat_kind(sp.reweight);
  const T* tbl = a.params + static_cast<int64_t>(row_stat_param(sp.reweight)) * a.C;
  const T* tw = a.params + static_cast<int64_t>(rebal ? P_INV_FREQ : P_CLASS_W) * a.C;
  const T* bias = a.params + static_cast<int64_t>(P_BIAS) * a.C;

  const int G = a.group;
  const int lane = threadIdx.x % G;
  const int ngroups = kThreads / G;
  const int64_t stride = static_cast<int64_t>(G) * V;  // columns a group covers per step
  const int64_t first = static_cast<int64_t>(blockIdx.x) * a.items_per_block;
  const int64_t items = a.N * a.ntiles;
  const int64_t last = first + a.items_per_block < items ? first + a.items_per_block : items;
  const int64_t rounds = (a.items_per_block + ngroups - 1) / ngroups;  // equal for all threads
  double acc = 0;

  for (int64_t k = 0; k < rounds; ++k) {
    const int64_t item = first + threadIdx.x / G + k * ngroups;
    const bool active = item < last;  // the same for the whole group
    const int64_t row = active ? item / a.ntiles : 0;
    const int64_t col0 = active ? (item % a.ntiles) * a.tile_cols : 0;
    const int64_t col_end = !active ? 0 : (col0 + a.tile_cols < a.C ? col0 + a.tile_cols : a.C);
    const Z* zrow = static_cast<const Z*>(a.z) + row * a.ldz;
    const void* yrow = static_cast<const char*>(a.y) + row * a.ldy * a.y_size;

    // Row statistics: a first pass over the labels (the second pass reads them from L1/L2).
    T count = T(0), stat = T(0);
    if (a.stats_mode == STATS_IN_GROUP) {
      for (int64_t c = col0 + static_cast<int64_t>(lane) * V; c < col_end; c += stride) {
        T yv[V];
        load_labels<T, V>(a.y_dtype, yrow, c, col_end, a.vec, yv);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const T yp = yv[e] > T(0) ? yv[e] : T(0);
          if (yp > T(0)) {  // only real columns can hold a positive
            const T t = tbl[c + e];
            count += yp;
            stat = stat_kind == STAT_MAX ? (t > stat ? t : stat) : stat + yp * t;
          }
        }
      }
      // Butterfly within the group: every lane ends with the same, order-fixed totals.
      for (int off = G / 2; off > 0; off >>= 1) {
        count += __shfl_xor_sync(kFullMask, count, off);
        const T other = __shfl_xor_sync(kFullMask, stat, off);
        stat = stat_kind == STAT_MAX ? (other > stat ? other : stat) : stat + other;
      }
    } else if (a.stats_mode == STATS_PRECOMPUTED && active) {
      count = static_cast<T>(a.row_stats[2 * row]);
      stat = static_cast<T>(a.row_stats[2 * row + 1]);
    }
    if (!active) continue;
    const RowWeight<T> rw = row_weight<T>(count, stat, sp);

    T* lrow = a.loss + row * a.C;
    Z* grow = static_cast<Z*>(a.grad) + row * a.C;
    const T* wrow = a.w ? a.w + row * a.ws0 : nullptr;
    for (int64_t c = col0 + static_cast<int64_t>(lane) * V; c < col_end; c += stride) {
      const bool full = a.vec && c + V <= col_end;
      T zv[V], yv[V];
      if (full) {
        const Pack<Z, V> pz = *reinterpret_cast<const Pack<Z, V>*>(zrow + c);
#pragma unroll
        for (int e = 0; e < V; ++e) zv[e] = Convert<T, Z>::in(pz.v[e]);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) zv[e] = c + e < col_end ? Convert<T, Z>::in(zrow[c + e]) : T(0);
      }
      load_labels<T, V>(a.y_dtype, yrow, c, col_end, a.vec, yv);
      T lv[V], gv[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        lv[e] = T(0);
        gv[e] = T(0);
        const int64_t j = c + e;
        if (j < col_end) {
          const T wr = rebal ? rebalance_raw(tw[j], rw.inv_r, sp) * rw.norm : rw.a * tw[j] + rw.b;
          const T f = (yv[e] != T(-1) ? T(1) : T(0)) * (wrow ? wrow[j * a.ws1] : T(1));
          lv[e] = element<T, FOCAL_RUNTIME, LABELS_PER_ELEMENT, true>(zv[e], yv[e], bias[j], wr, f, sp, gv[e],
                                                                      a.need_grad);
          acc += static_cast<double>(lv[e]);
        }
      }
      if (full) {
        if (a.need_grad) {
          Pack<Z, V> pg;
#pragma unroll
          for (int e = 0; e < V; ++e) pg.v[e] = store_as<Z>(gv[e]);
          *reinterpret_cast<Pack<Z, V>*>(grow + c) = pg;
        }
        if (a.reduction == RED_NONE) {
          Pack<T, V> pl;
#pragma unroll
          for (int e = 0; e < V; ++e) pl.v[e] = lv[e];
          *reinterpret_cast<Pack<T, V>*>(lrow + c) = pl;
        }
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          if (c + e < col_end) {
            if (a.need_grad) grow[c + e] = store_as<Z>(gv[e]);
            if (a.reduction == RED_NONE) lrow[c + e] = lv[e];
          }
        }
      }
    }
  }
  if (a.reduction != RED_NONE) {
    const double total = block_sum<kThreads>(acc);
    if (threadIdx.x == 0) a.partial[blockIdx.x] = total;
  }
}

// Row statistics of wide rows: one block per row, (count, stat) as double.
template <class S, class T>
__device__ __forceinline__ void row_stats_loop(const void* yrow, const T* tbl, int stat_kind, int64_t C, double& count,
                                               double& stat) {
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const T yv = label_at<S, T>(yrow, c);
    const T yp = yv > T(0) ? yv : T(0);
    if (yp > T(0)) {
      count += static_cast<double>(yp);
      stat = stat_kind == STAT_MAX ? fmax(stat, static_cast<double>(tbl[c])) : stat + static_cast<double>(yp * tbl[c]);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const void* y, int y_dtype, int y_size, int64_t ldy,
                                                             const T* tbl, int stat_kind, int64_t C, double* out) {
  const int64_t row = blockIdx.x;
  const void* yrow = static_cast<const char*>(y) + row * ldy * y_size;
  double count = 0, stat = 0.0;
  switch (y_dtype) {
    case kU8: row_stats_loop<uint8_t, T>(yrow, tbl, stat_kind, C, count, stat); break;
    case kI8: row_stats_loop<int8_t, T>(yrow, tbl, stat_kind, C, count, stat); break;
    case kI16: row_stats_loop<int16_t, T>(yrow, tbl, stat_kind, C, count, stat); break;
    case kI32: row_stats_loop<int32_t, T>(yrow, tbl, stat_kind, C, count, stat); break;
    case kI64: row_stats_loop<int64_t, T>(yrow, tbl, stat_kind, C, count, stat); break;
    case kF16: row_stats_loop<__half, T>(yrow, tbl, stat_kind, C, count, stat); break;
    case kBF16: row_stats_loop<__nv_bfloat16, T>(yrow, tbl, stat_kind, C, count, stat); break;
    case kF32: row_stats_loop<float, T>(yrow, tbl, stat_kind, C, count, stat); break;
    default: row_stats_loop<double, T>(yrow, tbl, stat_kind, C, count, stat); break;
  }
  const double total = block_sum<kThreads>(count);
  __syncthreads();
  const double s = stat_kind == STAT_MAX ? block_max(stat) : block_sum<kThreads>(stat);
  if (threadIdx.x == 0) {
    out[2 * row] = total;
    out[2 * row + 1] = s;
  }
}

// loss = (sum of the block partials, in index order per thread and a fixed tree) * aux[0].
template <class T>
__global__ void __launch_bounds__(kFinalThreads) final_sum_kernel(const double* partial, int64_t n, const T* aux, T* out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kFinalThreads) s += partial[i];
  const double total = block_sum<kFinalThreads>(s);
  if (threadIdx.x == 0) *out = static_cast<T>(total * static_cast<double>(aux[0]));
}

template <class G, class S>
__global__ void scale_grad_kernel(G* grad, int64_t n, const S* grad_output) {
  using C = typename std::conditional<sizeof(S) == 8 || sizeof(G) == 8, double, float>::type;
  const S s = *grad_output;
  if (s == S(1)) return;  // decided on the device: no host sync for the common loss.backward()
  const C sc = static_cast<C>(s);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    grad[i] = store_as<G>(Convert<C, G>::in(grad[i]) * sc);
}

// ---------------------------------------------------------------------------------------------
// Host side: the launch plan (a function of the shapes, dtypes and alignment only).
// ---------------------------------------------------------------------------------------------
int dtype_size(int d) {
  switch (d) {
    case kU8: case kI8: return 1;
    case kI16: case kF16: case kBF16: return 2;
    case kI32: case kF32: return 4;
    default: return 8;
  }
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0; }

struct Plan {
  int group, stats_mode;
  bool vec;
  int64_t tile_cols, ntiles, items_per_block, blocks;
  size_t partial_bytes, stats_bytes;
};

Plan make_plan(const FusedLaunch& a) {
  Plan p{};
  const int zs = dtype_size(a.z_dtype), ys = dtype_size(a.y_dtype);
  const int ts = a.z_dtype == kF64 ? 8 : 4;
  const int V = 16 / zs;
  p.vec = a.C % V == 0 && a.ldz % V == 0 && a.ldy % V == 0 && aligned(a.logits, 16) && aligned(a.labels, V * ys) &&
          aligned(a.grad, 16) && aligned(a.loss, static_cast<int64_t>(V) * ts);
  const int64_t slots = (a.C + V - 1) / V;  // 16-byte vectors per row
  const bool needs_stats = row_stat_kind(a.reweight) != STAT_NONE;
  if (slots <= 32 * kVecsPerThread) {  // narrow rows: a group of <= 32 threads per row, many rows per block
    int g = 1;
    while (g < 32 && g < slots) g *= 2;
    p.group = g;
    p.tile_cols = a.C;
    p.ntiles = 1;
    p.items_per_block = kThreads / g;
    p.stats_mode = needs_stats ? STATS_IN_GROUP : STATS_NONE;
  } else {  // wide rows: a block per column tile, statistics from a first kernel
    p.group = kThreads;
    p.tile_cols = static_cast<int64_t>(kThreads) * kVecsPerThread * V;
    p.ntiles = (a.C + p.tile_cols - 1) / p.tile_cols;
    p.items_per_block = 1;
    p.stats_mode = needs_stats ? STATS_PRECOMPUTED : STATS_NONE;
  }
  const int64_t items = a.N * p.ntiles;
  p.blocks = (items + p.items_per_block - 1) / p.items_per_block;
  p.partial_bytes = a.reduction != RED_NONE ? static_cast<size_t>(p.blocks) * sizeof(double) : 0;
  p.partial_bytes = (p.partial_bytes + 15) / 16 * 16;
  p.stats_bytes = p.stats_mode == STATS_PRECOMPUTED ? static_cast<size_t>(a.N) * 2 * sizeof(double) : 0;
  return p;
}

template <class T>
Spec<T> host_spec(const FusedLaunch& a) {
  // grad scale and batch max are read from aux on the device
  return make_spec<T>(a.reweight, a.weight_norm, a.logit_reg, a.focal, a.map_alpha, a.map_beta, a.map_gamma,
                      a.cb_log_beta, a.neg_scale, a.gamma, a.scale, a.w_max, T(1), T(1));
}

template <class T>
int launch(const FusedLaunch& a, cudaStream_t stream) {
  const Plan p = make_plan(a);
  char* ws = static_cast<char*>(a.workspace);
  Args<T> args{};
  args.z = a.logits;
  args.ldz = a.ldz;
  args.y = a.labels;
  args.ldy = a.ldy;
  args.y_dtype = a.y_dtype;
  args.y_size = dtype_size(a.y_dtype);
  args.w = static_cast<const T*>(a.weight);
  args.ws0 = a.ws0;
  args.ws1 = a.ws1;
  args.params = static_cast<const T*>(a.params);
  args.aux = static_cast<const T*>(a.aux);
  args.loss = static_cast<T*>(a.loss);
  args.grad = a.grad;
  args.partial = reinterpret_cast<double*>(ws);
  args.row_stats = reinterpret_cast<const double*>(ws + p.partial_bytes);
  args.N = a.N;
  args.C = a.C;
  args.spec = host_spec<T>(a);
  args.group = p.group;
  args.tile_cols = p.tile_cols;
  args.ntiles = p.ntiles;
  args.items_per_block = p.items_per_block;
  args.stats_mode = p.stats_mode;
  args.vec = p.vec;
  args.need_grad = a.need_grad;
  args.reduction = a.reduction;

  if (a.N > 0 && a.C > 0) {
    if (p.stats_mode == STATS_PRECOMPUTED) {
      const T* tbl = args.params + static_cast<int64_t>(row_stat_param(a.reweight)) * a.C;
      row_stats_kernel<T><<<static_cast<unsigned>(a.N), kThreads, 0, stream>>>(
          a.labels, a.y_dtype, args.y_size, a.ldy, tbl, row_stat_kind(a.reweight), a.C,
          reinterpret_cast<double*>(ws + p.partial_bytes));
    }
    const unsigned blocks = static_cast<unsigned>(p.blocks);
    if constexpr (std::is_same<T, double>::value) {
      fused_kernel<double, T><<<blocks, kThreads, 0, stream>>>(args);
    } else {
      if (a.z_dtype == kF16) fused_kernel<__half, T><<<blocks, kThreads, 0, stream>>>(args);
      else if (a.z_dtype == kBF16) fused_kernel<__nv_bfloat16, T><<<blocks, kThreads, 0, stream>>>(args);
      else fused_kernel<float, T><<<blocks, kThreads, 0, stream>>>(args);
    }
  }
  if (a.reduction != RED_NONE) {
    const int64_t n = a.N > 0 && a.C > 0 ? p.blocks : 0;
    final_sum_kernel<T><<<1, kFinalThreads, 0, stream>>>(args.partial, n, args.aux, args.loss);
  }
  return static_cast<int>(cudaGetLastError());
}

template <class G>
void launch_scale(void* grad, int64_t n, const void* go, int go_dtype, cudaStream_t stream) {
  const int64_t blocks = (n + kThreads - 1) / kThreads < 65536 ? (n + kThreads - 1) / kThreads : 65536;
  if (go_dtype == kF64)
    scale_grad_kernel<G, double><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<G*>(grad), n, static_cast<const double*>(go));
  else
    scale_grad_kernel<G, float><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<G*>(grad), n, static_cast<const float*>(go));
}

}  // namespace

size_t fused_workspace_bytes(const FusedLaunch& a) {
  const Plan p = make_plan(a);
  return p.partial_bytes + p.stats_bytes;
}

int fused(const FusedLaunch& a, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return a.z_dtype == kF64 ? launch<double>(a, s) : launch<float>(a, s);
}

int scale_grad(void* grad, int grad_dtype, int64_t n, const void* grad_output, int go_dtype, void* stream) {
  if (n == 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (grad_dtype) {
    case kF16: launch_scale<__half>(grad, n, grad_output, go_dtype, s); break;
    case kBF16: launch_scale<__nv_bfloat16>(grad, n, grad_output, go_dtype, s); break;
    case kF32: launch_scale<float>(grad, n, grad_output, go_dtype, s); break;
    default: launch_scale<double>(grad, n, grad_output, go_dtype, s); break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace dbl
