// Torch-side argument handling shared by the CPU and CUDA implementations of dbl::fused.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "dbl_math.h"

namespace dbl {

// The op's options, unpacked from its int[] modes and float[] scalars (contract v2: the orders of
// dbl_kernels/_spec.py MODE_* and SCALARS).
enum ModeIndex {
  M_REWEIGHT = 0, M_NORM, M_LOGIT_REG, M_FOCAL, M_REDUCTION, M_CHECK_LABELS, M_ASYMMETRIC, M_FOCUS_GRAD, kNumModes
};
enum ScalarIndex {
  S_MAP_ALPHA = 0, S_MAP_BETA, S_MAP_GAMMA, S_CB_LOG_BETA, S_NEG_SCALE, S_GAMMA, S_GAMMA_NEG, S_CLIP, S_SMOOTHING,
  S_SCALE, S_W_MAX, kNumScalars
};

struct OpScalars {
  int64_t reweight_mode, weight_norm;
  bool logit_reg, focal;
  int64_t reduction;
  bool check_labels, asymmetric, focus_grad;
  double map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, gamma_neg, clip, smoothing, scale, w_max;
  bool need_grad;
};

inline OpScalars unpack_options(at::IntArrayRef modes, at::ArrayRef<double> scalars, bool need_grad) {
  TORCH_CHECK_VALUE(modes.size() == kNumModes, "dbl::fused: modes must hold ", static_cast<int>(kNumModes),
                    " ints (dbl_kernels/_spec.py MODE_*), got ", modes.size());
  TORCH_CHECK_VALUE(scalars.size() == kNumScalars, "dbl::fused: scalars must hold ", static_cast<int>(kNumScalars),
                    " floats (dbl_kernels/_spec.py SCALARS), got ", scalars.size());
  OpScalars s{};
  s.reweight_mode = modes[M_REWEIGHT];
  s.weight_norm = modes[M_NORM];
  s.logit_reg = modes[M_LOGIT_REG] != 0;
  s.focal = modes[M_FOCAL] != 0;
  s.reduction = modes[M_REDUCTION];
  s.check_labels = modes[M_CHECK_LABELS] != 0;
  s.asymmetric = modes[M_ASYMMETRIC] != 0;
  s.focus_grad = modes[M_FOCUS_GRAD] != 0;
  s.map_alpha = scalars[S_MAP_ALPHA];
  s.map_beta = scalars[S_MAP_BETA];
  s.map_gamma = scalars[S_MAP_GAMMA];
  s.cb_log_beta = scalars[S_CB_LOG_BETA];
  s.neg_scale = scalars[S_NEG_SCALE];
  s.gamma = scalars[S_GAMMA];
  s.gamma_neg = scalars[S_GAMMA_NEG];
  s.clip = scalars[S_CLIP];
  s.smoothing = scalars[S_SMOOTHING];
  s.scale = scalars[S_SCALE];
  s.w_max = scalars[S_W_MAX];
  s.need_grad = need_grad;
  return s;
}

// The optional parts of the contract an implementation has (dbl_kernels/ops.py ALL_FEATURES); a
// call needing one it lacks is refused by prepare() (Python routes such calls to the reference).
enum Feature { F_ASYMMETRIC = 1, F_PER_CLASS = 2, F_CSR = 4, F_ROW_STATS = 8, F_CHECK_LABELS = 16 };

// Inputs normalised for the kernels: unit column stride for logits and labels, weight in the
// compute dtype with its (possibly zero) strides, contiguous class table, aux and row statistics,
// fresh outputs (loss: N x C, a C-vector for per_class, or a scalar).
struct Prepared {
  at::Tensor logits, labels, weight, params, aux, row_stats, loss, grad;
  at::Tensor crow, col;  // CSR labels (labels: the stored values), or undefined
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

inline Prepared prepare(const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& crow,
                        const std::optional<at::Tensor>& col, const std::optional<at::Tensor>& weight,
                        const at::Tensor& class_params, const at::Tensor& aux,
                        const std::optional<at::Tensor>& row_stats, const OpScalars& s, int features) {
  const bool csr = crow.has_value() || col.has_value();
  TORCH_CHECK(!csr || (features & F_CSR), "dbl::fused: CSR labels (crow_indices, col_indices) are not "
              "implemented by this kernel; pass dense labels");
  TORCH_CHECK(!row_stats.has_value() || (features & F_ROW_STATS), "dbl::fused: row_stats are not implemented by "
              "this kernel; pass row_stats=None");
  TORCH_CHECK(!s.check_labels || (features & F_CHECK_LABELS), "dbl::fused: check_labels (modes[5]) is "
              "implemented by the CPU op only; check the labels before the call");
  TORCH_CHECK(!s.asymmetric || (features & F_ASYMMETRIC), "dbl::fused: the asymmetric form (modes[6]) is not "
              "implemented by this kernel");
  TORCH_CHECK(s.reduction != RED_PER_CLASS || (features & F_PER_CLASS), "dbl::fused: reduction per_class is not "
              "implemented by this kernel");
  TORCH_CHECK(logits.dim() == 2, "dbl::fused: logits must be N x C, got ", logits.sizes());
  TORCH_CHECK(csr || labels.sizes() == logits.sizes(), "dbl::fused: labels ", labels.sizes(), " must match logits ",
              logits.sizes());
  const auto zt = logits.scalar_type();
  TORCH_CHECK(zt == at::kHalf || zt == at::kBFloat16 || zt == at::kFloat || zt == at::kDouble,
              "dbl::fused: logits must be float16, bfloat16, float32 or float64, got ", zt);
  TORCH_CHECK(is_label_dtype(labels.scalar_type()), "dbl::fused: unsupported labels dtype ", labels.scalar_type());
  TORCH_CHECK(labels.device() == logits.device() && class_params.device() == logits.device() &&
                  aux.device() == logits.device(),
              "dbl::fused: logits, labels, class_params and aux must be on one device");
  TORCH_CHECK_VALUE(s.reweight_mode >= RW_NONE && s.reweight_mode <= RW_CB_MIN_N, "dbl::fused: bad reweight_mode ",
                    s.reweight_mode);
  TORCH_CHECK_VALUE(s.weight_norm >= NORM_NONE && s.weight_norm <= NORM_BATCH, "dbl::fused: bad weight_norm ",
                    s.weight_norm);
  TORCH_CHECK_VALUE(s.reduction >= RED_NONE && s.reduction <= RED_PER_CLASS, "dbl::fused: bad reduction ",
                    s.reduction);
  TORCH_CHECK_VALUE(s.gamma >= 0, "dbl::fused: gamma must be >= 0, got ", s.gamma);
  TORCH_CHECK_VALUE(s.neg_scale > 0, "dbl::fused: neg_scale must be > 0, got ", s.neg_scale);
  if (s.asymmetric) {
    TORCH_CHECK_VALUE(s.gamma_neg >= 0, "dbl::fused: gamma_neg must be >= 0, got ", s.gamma_neg);
    TORCH_CHECK_VALUE(s.clip >= 0 && s.clip < 1, "dbl::fused: clip must lie in [0, 1), got ", s.clip);
    TORCH_CHECK_VALUE(s.smoothing >= 0 && s.smoothing < 1, "dbl::fused: smoothing must lie in [0, 1), got ",
                      s.smoothing);
  }

  Prepared p;
  p.N = logits.size(0);
  p.C = logits.size(1);
  p.compute = zt == at::kDouble ? at::kDouble : at::kFloat;
  p.logits = unit_column_stride(logits);
  p.labels = csr ? labels : unit_column_stride(labels);
  if (csr) {
    TORCH_CHECK_VALUE(crow.has_value() && col.has_value(), "dbl::fused: CSR labels need both crow_indices and "
                      "col_indices");
    const int64_t nnz = labels.numel();
    TORCH_CHECK_VALUE(labels.dim() == 1 && crow->dim() == 1 && crow->numel() == p.N + 1 && col->dim() == 1 &&
                          col->numel() == nnz,
                      "dbl::fused: CSR labels must be the nnz stored values (1-D), crow_indices (N + 1 = ", p.N + 1,
                      ") and col_indices (nnz = ", nnz, "), got ", labels.sizes(), ", ", crow->sizes(), ", ",
                      col->sizes());
    TORCH_CHECK_TYPE(crow->scalar_type() == at::kLong && col->scalar_type() == at::kLong,
                     "dbl::fused: crow_indices and col_indices must be int64");
    TORCH_CHECK(crow->device() == logits.device() && col->device() == logits.device(),
                "dbl::fused: crow_indices and col_indices must be on the logits' device");
    p.crow = crow->contiguous();
    p.col = col->contiguous();
    if (p.crow.device().is_cpu()) {  // the kernel trusts them: no read outside the row's entries
      const int64_t* r = p.crow.data_ptr<int64_t>();
      bool ok = r[0] == 0 && r[p.N] == nnz;
      for (int64_t i = 0; ok && i < p.N; ++i) ok = r[i] <= r[i + 1];
      TORCH_CHECK_VALUE(ok, "dbl::fused: malformed crow_indices (they must start at 0, never decrease and end at "
                        "the number of stored values)");
    }
  }
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->device() == logits.device(), "dbl::fused: weight must be on the logits' device");
    TORCH_CHECK(weight->dim() <= 2, "dbl::fused: weight must broadcast to N x C, got ", weight->sizes());
    at::Tensor w = weight->expand({p.N, p.C});
    p.weight = cast_keep_broadcast(w, p.compute);
  }
  TORCH_CHECK(class_params.dim() == 2 && class_params.size(0) == kTableRows && class_params.size(1) == p.C,
              "dbl::fused: class_params must be ", static_cast<int>(kTableRows), " x C (C = ", p.C, "), got ",
              class_params.sizes());
  p.params = class_params.to(p.compute).contiguous();
  TORCH_CHECK(aux.numel() == 2, "dbl::fused: aux must have 2 elements, got ", aux.numel());
  p.aux = aux.to(p.compute).contiguous();
  if (row_stats.has_value()) {
    TORCH_CHECK(row_stats->device() == logits.device() && row_stats->dim() == 2 && row_stats->size(0) == 2 &&
                    row_stats->size(1) == p.N,
                "dbl::fused: row_stats must be 2 x N (N = ", p.N, ") on the logits' device, got ", row_stats->sizes());
    p.row_stats = row_stats->to(p.compute).contiguous();
  }
  const auto opts = logits.options();
  const auto copts = opts.dtype(p.compute);
  p.loss = s.reduction == RED_NONE ? at::empty({p.N, p.C}, copts)
           : s.reduction == RED_PER_CLASS ? at::empty({p.C}, copts) : at::empty({}, copts);
  p.grad = s.need_grad ? at::empty({p.N, p.C}, opts) : at::empty({0}, opts);
  return p;
}

template <class T>
Spec<T> make_spec(const OpScalars& s) {
  return make_spec<T>(static_cast<int>(s.reweight_mode), static_cast<int>(s.weight_norm), s.logit_reg, s.focal,
                      s.map_alpha, s.map_beta, s.map_gamma, s.cb_log_beta, s.neg_scale, s.gamma, s.scale, s.w_max);
}

}  // namespace dbl
