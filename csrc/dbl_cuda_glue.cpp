// Torch glue of the CUDA kernel: argument checks, allocation (through the caching allocator, on the
// logits' device), the current stream, and the kernel's reused workspace. Built only with
// -DDBL_WITH_CUDA (setup.py).
//
// Per call: the gradient and the loss are the only allocations, and the kernel is one launch (two
// for by_batch over row-dependent weights and for few very wide rows needing row statistics).
#ifdef DBL_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that one needs cuBLAS/cuSPARSE headers
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "dbl_cuda.h"
#include "dbl_launch.h"

namespace dbl {
namespace {

// The kernel's workspace (ticket, batch-max key, block partials, row statistics), kept per device
// and stream and reused: the kernel leaves it zeroed, so only a new or grown one needs a memset.
// Per stream, because launches on one stream run in order while two streams could run the
// kernel at once. Under CUDA-graph capture a workspace of the graph's own is allocated (from the
// capture's private pool) and zeroed by a captured memset, so replays neither share the eager
// workspace nor depend on its state.
at::Tensor workspace_for(const at::Tensor& like, size_t bytes, cudaStream_t stream) {
  bytes = std::max<size_t>(bytes, 16);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TORCH_CHECK(cudaStreamIsCapturing(stream, &capture) == cudaSuccess, "dbl::fused: cudaStreamIsCapturing failed");
  const auto fresh = [&] {
    at::Tensor ws = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
    TORCH_CHECK(cudaMemsetAsync(ws.data_ptr(), 0, bytes, stream) == cudaSuccess, "dbl::fused: workspace memset failed");
    return ws;
  };
  if (capture != cudaStreamCaptureStatusNone) return fresh();
  // Never destroyed: freeing device memory at static destruction could outlive the CUDA context.
  static auto* cache = new std::map<std::pair<int, cudaStream_t>, at::Tensor>();
  static std::mutex mutex;
  const std::lock_guard<std::mutex> lock(mutex);
  if (cache->size() > 64) cache->clear();  // many short-lived streams; freeing is stream-ordered
  at::Tensor& ws = (*cache)[{static_cast<int>(like.get_device()), stream}];
  if (!ws.defined() || static_cast<size_t>(ws.numel()) < bytes) ws = fresh();
  return ws;
}


std::tuple<at::Tensor, at::Tensor> fused_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                              const std::optional<at::Tensor>& crow_indices,
                                              const std::optional<at::Tensor>& col_indices,
                                              const std::optional<at::Tensor>& weight, const at::Tensor& class_params,
                                              const at::Tensor& aux, const std::optional<at::Tensor>& row_stats,
                                              at::IntArrayRef modes, at::ArrayRef<double> scalars, bool need_grad) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const OpScalars s = unpack_options(modes, scalars, need_grad);
  TORCH_CHECK(s.reduction != RED_MEAN_COUNTED, "dbl::fused: reduction 3 (a mean counted by the op) is CPU-only; "
              "pass reduction 2 with aux[0] = 1 / count");
  Prepared p = prepare(logits, labels, crow_indices, col_indices, weight, class_params, aux, row_stats, s,
                       kCudaFeatures);
  // per_class: the kernel writes the element losses ("none") into a buffer, then its column sums
  const bool per_class = s.reduction == RED_PER_CLASS;
  const at::Tensor elems = per_class ? at::empty({p.N, p.C}, p.loss.options()) : p.loss;
  const at::Tensor rows = kernel_row_stats(p);
  cuda::FusedLaunch a = launch_args(p, s, rows, elems.data_ptr());
  a.max_blocks = cuda::resident_blocks(a);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor workspace = workspace_for(logits, cuda::fused_workspace_bytes(a), stream);
  a.workspace = workspace.data_ptr();
  int err = cuda::fused(a, stream);
  if (err == 0 && per_class)
    err = cuda::column_sums(elems.data_ptr(), launch_dtype(p.compute), p.N, p.C, p.loss.data_ptr(), stream);
  TORCH_CHECK(err == 0, "dbl::fused: CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
  return {p.loss, p.grad};
}

// grad *= grad_output, in place; for a one-element grad_output the kernel reads it on the device
// and returns at once when it is 1.0 (no host sync).
void scale_grad_cuda(at::Tensor& grad, const at::Tensor& grad_output) {
  TORCH_CHECK(grad.is_cuda(), "dbl::scale_grad_cuda_: grad must be a CUDA tensor");
  if (grad_output.numel() != 1 || !grad.is_contiguous()) {
    grad.mul_(grad_output);
    return;
  }
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor go = grad_output;
  if (go.scalar_type() != at::kFloat && go.scalar_type() != at::kDouble) go = go.to(at::kFloat);
  if (go.device() != grad.device()) go = go.to(grad.device(), /*non_blocking=*/true);
  const int err = cuda::scale_grad(grad.data_ptr(), launch_dtype(grad.scalar_type()), grad.numel(), go.data_ptr(),
                                   launch_dtype(go.scalar_type()), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "dbl::scale_grad_cuda_: CUDA kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace

TORCH_LIBRARY_IMPL(dbl, CUDA, m) {
  m.impl("fused", &fused_cuda);
  m.impl("scale_grad_cuda_", &scale_grad_cuda);
}

}  // namespace dbl

#endif  // DBL_WITH_CUDA
