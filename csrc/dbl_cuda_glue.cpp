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
#include "dbl_ops.h"

namespace dbl {
namespace {

int cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBool: case at::kByte: return cuda::kU8;
    case at::kChar: return cuda::kI8;
    case at::kShort: return cuda::kI16;
    case at::kInt: return cuda::kI32;
    case at::kLong: return cuda::kI64;
    case at::kHalf: return cuda::kF16;
    case at::kBFloat16: return cuda::kBF16;
    case at::kFloat: return cuda::kF32;
    case at::kDouble: return cuda::kF64;
    default: TORCH_CHECK(false, "dbl::fused: unsupported dtype ", t);
  }
}

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
                                              const std::optional<at::Tensor>& weight, const at::Tensor& class_params,
                                              const at::Tensor& aux, int64_t reweight_mode, int64_t weight_norm,
                                              bool logit_reg, bool focal, int64_t reduction, double map_alpha,
                                              double map_beta, double map_gamma, double cb_log_beta, double neg_scale,
                                              double gamma, double scale, double w_max, bool need_grad) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const OpScalars s{reweight_mode, weight_norm, logit_reg, focal, reduction, map_alpha, map_beta, map_gamma,
                    cb_log_beta, neg_scale, gamma, scale, w_max, need_grad};
  TORCH_CHECK(reduction != RED_MEAN_COUNTED, "dbl::fused: reduction 3 (a mean counted by the op) is CPU-only; "
              "pass reduction 2 with aux[0] = 1 / count");
  Prepared p = prepare(logits, labels, weight, class_params, aux, s);
  cuda::FusedLaunch a{};
  a.logits = p.logits.data_ptr();
  a.z_dtype = cuda_dtype(p.logits.scalar_type());
  a.ldz = p.N > 1 ? p.logits.stride(0) : p.C;  // a single row's stride is arbitrary; C keeps it aligned
  a.labels = p.labels.data_ptr();
  a.y_dtype = cuda_dtype(p.labels.scalar_type());
  a.ldy = p.N > 1 ? p.labels.stride(0) : p.C;
  a.weight = p.weight.defined() ? p.weight.data_ptr() : nullptr;
  a.ws0 = p.weight.defined() ? p.weight.stride(0) : 0;
  a.ws1 = p.weight.defined() ? p.weight.stride(1) : 0;
  a.params = p.params.data_ptr();
  a.aux = p.aux.data_ptr();
  a.loss = p.loss.data_ptr();
  a.grad = need_grad ? p.grad.data_ptr() : nullptr;
  a.N = p.N;
  a.C = p.C;
  a.reweight = static_cast<int>(reweight_mode);
  a.weight_norm = static_cast<int>(weight_norm);
  a.reduction = static_cast<int>(reduction);
  a.logit_reg = logit_reg;
  a.focal = focal;
  a.need_grad = need_grad;
  a.map_alpha = map_alpha;
  a.map_beta = map_beta;
  a.map_gamma = map_gamma;
  a.cb_log_beta = cb_log_beta;
  a.neg_scale = neg_scale;
  a.gamma = gamma;
  a.scale = scale;
  a.w_max = w_max;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor workspace = workspace_for(logits, cuda::fused_workspace_bytes(a), stream);
  a.workspace = workspace.data_ptr();
  const int err = cuda::fused(a, stream);
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
  const int err = cuda::scale_grad(grad.data_ptr(), cuda_dtype(grad.scalar_type()), grad.numel(), go.data_ptr(),
                                   cuda_dtype(go.scalar_type()), c10::cuda::getCurrentCUDAStream().stream());
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
