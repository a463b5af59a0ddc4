// The CUDA kernel's launch arguments (dbl_plan.h FusedLaunch) from the torch op's prepared inputs:
// shared by the CUDA glue (dbl_cuda_glue.cpp) and the CPU emulation (dbl_emulate.cpp), so both
// launch the same plan from the same arguments.
#pragma once

#include <ATen/ATen.h>

#include "dbl_ops.h"
#include "dbl_plan.h"

namespace dbl {

inline int launch_dtype(at::ScalarType t) {
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

// The contract features of the CUDA op (dbl_cuda_glue.cpp), which its CPU emulation mirrors.
constexpr int kCudaFeatures = F_ASYMMETRIC | F_PER_CLASS | F_ROW_STATS | F_CSR;

// Given row statistics (contract: 2 x N, [0] the statistic A, [1] the count B) as the kernel reads
// a statistics pass's: N x 2 (count, statistic). Undefined when none were given.
inline at::Tensor kernel_row_stats(const Prepared& p) {
  if (!p.row_stats.defined()) return at::Tensor();
  return at::stack({p.row_stats[1], p.row_stats[0]}, 1).contiguous();
}

// `rows`: kernel_row_stats(p). `loss` is where the kernel writes: p.loss, or an N x C buffer for per_class (then the kernel
// runs reduction "none" and the column sums follow).
inline cuda::FusedLaunch launch_args(const Prepared& p, const OpScalars& s, const at::Tensor& rows, void* loss) {
  cuda::FusedLaunch a{};
  a.logits = p.logits.data_ptr();
  a.z_dtype = launch_dtype(p.logits.scalar_type());
  a.ldz = p.N > 1 ? p.logits.stride(0) : p.C;  // a single row's stride is arbitrary; C keeps it aligned
  a.labels = p.labels.data_ptr();
  a.y_dtype = launch_dtype(p.labels.scalar_type());
  const bool csr = p.crow.defined();
  a.ldy = csr ? 0 : p.N > 1 ? p.labels.stride(0) : p.C;
  a.crow = csr ? p.crow.data_ptr<int64_t>() : nullptr;
  a.col = csr ? p.col.data_ptr<int64_t>() : nullptr;
  TORCH_CHECK_VALUE(!csr || rows.defined() || row_stat_kind(static_cast<int>(s.reweight_mode)) == STAT_NONE,
                    "dbl::fused: CSR labels on the CUDA kernel need row_stats (2 x N) for a row-dependent "
                    "re-weighting: it reads no statistics from CSR");
  a.weight = p.weight.defined() ? p.weight.data_ptr() : nullptr;
  a.ws0 = p.weight.defined() ? p.weight.stride(0) : 0;
  a.ws1 = p.weight.defined() ? p.weight.stride(1) : 0;
  a.params = p.params.data_ptr();
  a.aux = p.aux.data_ptr();
  a.loss = loss;
  a.grad = s.need_grad ? p.grad.data_ptr() : nullptr;
  a.N = p.N;
  a.C = p.C;
  a.reweight = static_cast<int>(s.reweight_mode);
  a.weight_norm = static_cast<int>(s.weight_norm);
  a.reduction = static_cast<int>(s.reduction == RED_PER_CLASS ? RED_NONE : s.reduction);
  a.logit_reg = s.logit_reg;
  a.focal = s.focal;
  a.need_grad = s.need_grad;
  a.map_alpha = s.map_alpha;
  a.map_beta = s.map_beta;
  a.map_gamma = s.map_gamma;
  a.cb_log_beta = s.cb_log_beta;
  a.neg_scale = s.neg_scale;
  a.gamma = s.gamma;
  a.scale = s.scale;
  a.w_max = s.w_max;
  a.asymmetric = s.asymmetric;
  a.focus_grad = s.focus_grad;
  a.gamma_neg = s.gamma_neg;
  a.clip = s.clip;
  a.smoothing = s.smoothing;
  a.row_stats = rows.defined() ? rows.data_ptr() : nullptr;
  return a;
}

}  // namespace dbl
