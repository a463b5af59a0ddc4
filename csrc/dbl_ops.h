// Torch-side argument handling shared by the CPU and CUDA implementations of dbl::fused.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "dbl_math.h"

namespace dbl {

// The op's scalar arguments, in schema order (see dbl_kernels/ops.py OP_ARG_NAMES).
struct OpScalars {
  int64_t reweight_mode, weight_norm;
  bool logit_reg, focal;
  int64_t reduction;
  double map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max;
  bool need_grad;
};

// Inputs normalised for the kernels: unit column stride for logits and labels, weight in the
// compute dtype with its (possibly zero) strides, contiguous class table and aux, fresh outputs.
struct Prepared {
  at::Tensor logits, labels, weight, params, aux, loss, grad;
  at::ScalarType compute;
  int64_t N, C;
};

inline bool is_label_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBool: case at::kByte: case at::kChar: case at::kShort: case at::kInt: case at::kLong:
    case at::kHalf: case at::kBFloat16: case at::kFloat: case at::kDouble: return true;
    default: return false;
  }
}

// Unit stride along the classes; the row stride may be anything (a copy only when needed, never
// a write into the caller's tensor).
inline at::Tensor unit_column_stride(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

// Cast without materialising broadcast dimensions: an expanded (C,) weight stays C elements.
inline at::Tensor cast_keep_broadcast(const at::Tensor& w, at::ScalarType dtype) {
  if (w.scalar_type() == dtype) return w;
  at::Tensor base = w;
  for (int64_t d = 0; d < w.dim(); ++d) {
    if (w.stride(d) == 0 && w.size(d) > 1) base = base.narrow(d, 0, 1);
  }
  return base.to(dtype).expand(w.sizes());
}

inline Prepared prepare(const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& weight,
                        const at::Tensor& class_params, const at::Tensor& aux, const OpScalars& s) {
  TORCH_CHECK(logits.dim() == 2, "dbl::fused: logits must be N x C, got ", logits.sizes());
  TORCH_CHECK(labels.sizes() == logits.sizes(), "dbl::fused: labels ", labels.sizes(), " must match logits ",
              logits.sizes());
  const auto zt = logits.scalar_type();
  TORCH_CHECK(zt == at::kHalf || zt == at::kBFloat16 || zt == at::kFloat || zt == at::kDouble,
              "dbl::fused: logits must be float16, bfloat16, float32 or float64, got ", zt);
  TORCH_CHECK(is_label_dtype(labels.scalar_type()), "dbl::fused: unsupported labels dtype ", labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device() && class_params.device() == logits.device() &&
                  aux.device() == logits.device(),
              "dbl::fused: logits, labels, class_params and aux must be on one device");
  TORCH_CHECK(s.reweight_mode >= RW_NONE && s.reweight_mode <= RW_CB_MIN_N, "dbl::fused: bad reweight_mode ",
              s.reweight_mode);
  TORCH_CHECK(s.weight_norm >= NORM_NONE && s.weight_norm <= NORM_BATCH, "dbl::fused: bad weight_norm ",
              s.weight_norm);
  TORCH_CHECK(s.reduction >= RED_NONE && s.reduction <= RED_MEAN_COUNTED, "dbl::fused: bad reduction ", s.reduction);
  TORCH_CHECK(s.gamma >= 0, "dbl::fused: gamma must be >= 0, got ", s.gamma);
  TORCH_CHECK(s.neg_scale > 0, "dbl::fused: neg_scale must be > 0, got ", s.neg_scale);

  Prepared p;
  p.N = logits.size(0);
  p.C = logits.size(1);
  p.compute = zt == at::kDouble ? at::kDouble : at::kFloat;
  p.logits = unit_column_stride(logits);
  p.labels = unit_column_stride(labels);
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->device() == logits.device(), "dbl::fused: weight must be on the logits' device");
    TORCH_CHECK(weight->dim() <= 2, "dbl::fused: weight must broadcast to N x C, got ", weight->sizes());
    at::Tensor w = weight->expand({p.N, p.C});
    p.weight = cast_keep_broadcast(w, p.compute);
  }
  TORCH_CHECK(class_params.dim() == 2 && class_params.size(0) == 4 && class_params.size(1) == p.C,
              "dbl::fused: class_params must be 4 x C, got ", class_params.sizes());
  p.params = class_params.to(p.compute).contiguous();
  TORCH_CHECK(aux.numel() == 2, "dbl::fused: aux must have 2 elements, got ", aux.numel());
  p.aux = aux.to(p.compute).contiguous();
  const auto opts = logits.options();
  p.loss = s.reduction == RED_NONE ? at::empty({p.N, p.C}, opts.dtype(p.compute)) : at::empty({}, opts.dtype(p.compute));
  p.grad = s.need_grad ? at::empty({p.N, p.C}, opts) : at::empty({0}, opts);
  return p;
}

template <class T>
Spec<T> make_spec(const OpScalars& s) {
  return make_spec<T>(static_cast<int>(s.reweight_mode), static_cast<int>(s.weight_norm), s.logit_reg, s.focal,
                      s.map_alpha, s.map_beta, s.map_gamma, s.cb_log_beta, s.neg_scale, s.gamma, s.scale, s.w_max);
}

}  // namespace dbl
