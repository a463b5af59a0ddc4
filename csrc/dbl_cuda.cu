// CUDA kernel of dbl::fused. No torch headers: the torch glue lives in dbl_cuda_glue.cpp, so this
// file compiles with nvcc alone (tests compile-check it for sm_80 and sm_90 on machines whose
// torch has no CUDA).
//
// The kernel body is the block program of dbl_block.h (shared with the CPU emulation that tests
// run); the launch plan is dbl_plan.h. One launch computes loss, gradient and the final sum (the
// last block adds the block partials in a fixed order); a statistics pass runs first only for
// by_batch and for few very wide rows. Everything runs on the caller's stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "dbl_block.h"
#include "dbl_cuda.h"

namespace dbl {
namespace cuda {
namespace {

struct DeviceExec {
  // The thread index is re-read for every step: predicates derived from it would otherwise be
  // kept (in registers) from the kernel's start to its end.
  template <class F>
  __device__ __forceinline__ void each(F&& f) {
    int t;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
    f(t);
  }
  __device__ __forceinline__ void sync() { __syncthreads(); }
  __device__ __forceinline__ void fence() { __threadfence(); }
  __device__ __forceinline__ uint32_t ticket(uint32_t* p) { return atomicAdd(p, 1u); }
  __device__ __forceinline__ void atomic_max(unsigned long long* p, unsigned long long v) { atomicMax(p, v); }
  __device__ __forceinline__ double load_cg(const double* p) { return __ldcg(p); }
};

// 3 blocks of 256 per SM cap registers at 80 per thread (no spills: checked by -Xptxas -v in the
// tests and benchmarks/static_check.py); fp64 gets 2 blocks. The grid is the blocks that fit at once.
template <class Z, int V, class P, class T>
__global__ void __launch_bounds__(kThreads, blocks_per_sm(sizeof(T) == 8)) fused_kernel(const KArgs<T> a) {
  __shared__ Shared<T> sh;
  DeviceExec ex;
  Block<Z, V, P, GpuFns, T, DeviceExec> b{ex, a, sh, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(gridDim.x)};
  b.run();
}

template <class G, class S>
__global__ void scale_grad_kernel(G* grad, int64_t n, const S* grad_output) {
  using C = typename std::conditional<sizeof(S) == 8 || sizeof(G) == 8, double, float>::type;
  const S s = *grad_output;
  if (s == S(1)) return;  // decided on the device: no host sync for the common loss.backward()
  const C sc = static_cast<C>(s);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    store_one(grad + i, load_one<C>(grad + i) * sc);
}

template <class T>
__global__ void column_sum_kernel(const T* loss, int64_t N, int64_t C, T* out) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < C;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[j] = column_sum(loss, N, C, j);  // neighbouring threads read neighbouring columns: coalesced
}

// Enqueues the passes of one instantiation.
struct Launcher {
  const FusedLaunch& a;
  const Plan& p;
  cudaStream_t s;
  template <class Z, int V, class P, class T>
  void run() const {
    if (p.stats_pass) {
      const KArgs<T> k = make_args<T>(a, p, PASS_STATS);
      fused_kernel<Z, V, P, T><<<static_cast<unsigned>(k.g.blocks), kThreads, 0, s>>>(k);
    }
    const KArgs<T> k = make_args<T>(a, p, PASS_MAIN);
    fused_kernel<Z, V, P, T><<<static_cast<unsigned>(k.g.blocks), kThreads, 0, s>>>(k);
  }
};

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

// Blocks of one instantiation that fit an SM at once (registers, shared memory), asked once per
// instantiation (every device here is taken to be one architecture; the launch bounds guarantee
// blocks_per_sm, the generic and fp64 kernels often fit more).
struct Occupancy {
  int* n;
  template <class Z, int V, class P, class T>
  void run() const {
    static const int fit = [] {
      int k = 0;
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k, fused_kernel<Z, V, P, T>, kThreads, 0) != cudaSuccess) {
        k = 0;
        (void)cudaGetLastError();  // not a launch error: fall back to the launch bounds' figure
      }
      return k > 0 ? k : blocks_per_sm(sizeof(T) == 8);
    }();
    *n = fit;
  }
};

}  // namespace

// The SM count is read once per device (an attribute query is no stream work: fine under graph
// capture).
int64_t resident_blocks(const FusedLaunch& a) {
  constexpr int kDevices = 64;
  static std::atomic<int> sms[kDevices] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kDevices) {  // the plan's kMaxBlocks then
    (void)cudaGetLastError();
    return 0;
  }
  int n = sms[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
      (void)cudaGetLastError();
      return 0;
    }
    sms[dev].store(n, std::memory_order_relaxed);
  }
  int per_sm = 0;  // of the instantiation the plan picks (the grid does not change which)
  dispatch(a, make_plan(a), Occupancy{&per_sm});
  return static_cast<int64_t>(n) * per_sm;
}

size_t fused_workspace_bytes(const FusedLaunch& a) { return make_plan(a).ws_bytes; }

int fused_launches(const FusedLaunch& a) {
  if (a.N == 0 || a.C == 0) return 0;
  return make_plan(a).stats_pass ? 2 : 1;
}

int fused(const FusedLaunch& a, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (a.N == 0 || a.C == 0) {  // no element: a sum of nothing
    if (a.reduction != RED_NONE) cudaMemsetAsync(a.loss, 0, a.z_dtype == kF64 ? 8 : 4, s);
    return static_cast<int>(cudaGetLastError());
  }
  const Plan p = make_plan(a);
  dispatch(a, p, Launcher{a, p, s});
  return static_cast<int>(cudaGetLastError());
}

int column_sums(const void* loss, int dtype, int64_t N, int64_t C, void* out, void* stream) {
  if (C == 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t blocks = (C + kThreads - 1) / kThreads < 65536 ? (C + kThreads - 1) / kThreads : 65536;
  if (dtype == kF64)
    column_sum_kernel<double><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(static_cast<const double*>(loss), N,
                                                                                 C, static_cast<double*>(out));
  else
    column_sum_kernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(static_cast<const float*>(loss), N,
                                                                                C, static_cast<float*>(out));
  return static_cast<int>(cudaGetLastError());
}

int scale_grad(void* grad, int grad_dtype, int64_t n, const void* grad_output, int go_dtype, void* stream) {
  if (n == 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (grad_dtype) {
    case kF16: launch_scale<f16_t>(grad, n, grad_output, go_dtype, s); break;
    case kBF16: launch_scale<bf16_t>(grad, n, grad_output, go_dtype, s); break;
    case kF32: launch_scale<float>(grad, n, grad_output, go_dtype, s); break;
    default: launch_scale<double>(grad, n, grad_output, go_dtype, s); break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace dbl
