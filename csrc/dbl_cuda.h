// Plain C++ interface between the torch glue (dbl_cuda_glue.cpp) and the CUDA kernels
// (dbl_cuda.cu). No torch and no CUDA headers here, so the .cu compiles with nvcc alone.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dbl {
namespace cuda {

// Storage types the kernels read directly (bool shares kU8: one byte, 0 or 1).
enum DType { kU8 = 0, kI8, kI16, kI32, kI64, kF16, kBF16, kF32, kF64 };

struct FusedLaunch {
  const void* logits;  // N x C, unit column stride, row stride ldz (elements)
  int z_dtype;         // kF16, kBF16, kF32 or kF64; the compute dtype is kF64 for kF64, else kF32
  int64_t ldz;
  const void* labels;  // N x C, unit column stride, row stride ldy
  int y_dtype;
  int64_t ldy;
  const void* weight;  // N x C in the compute dtype with strides (ws0, ws1), or null
  int64_t ws0, ws1;
  const void* params;  // 4 x C class table, compute dtype
  const void* aux;     // [reduction scale, 1 / batch max], compute dtype, on the device
  void* loss;          // N x C (reduction none) or a scalar, compute dtype
  void* grad;          // N x C contiguous, logits' dtype (when need_grad)
  void* workspace;     // workspace_bytes() bytes, 16-byte aligned
  int64_t N, C;
  int reweight, weight_norm, reduction;
  bool logit_reg, focal, need_grad;
  double map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max;
};

// Bytes of device scratch the launch needs (partial sums, row statistics of wide rows).
size_t fused_workspace_bytes(const FusedLaunch& a);

// Enqueues the fused kernels on `stream` (a cudaStream_t). Returns a cudaError_t value.
int fused(const FusedLaunch& a, void* stream);

// grad *= grad_output[0] on the device, skipped by the kernel itself when grad_output[0] == 1.
// grad: n contiguous elements of grad_dtype (kF16, kBF16, kF32, kF64); grad_output: kF32 or kF64.
int scale_grad(void* grad, int grad_dtype, int64_t n, const void* grad_output, int go_dtype, void* stream);

}  // namespace cuda
}  // namespace dbl
