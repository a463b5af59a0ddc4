// The CUDA kernel run on the CPU, for tests on machines without a GPU: dbl::_cuda_emulate takes
// the arguments of dbl::fused (CPU tensors) and runs the CUDA launch plan (dbl_plan.h) through the
// CUDA block program (dbl_block.h), block after block and, within a step, thread after thread.
// The MUFU instructions get exact stand-ins, or stand-ins off by their documented worst case in
// one direction (err = +1 / -1), so tests also check that the GPU's approximations keep every
// result within tolerance. Not a fast path: an oracle for indexing, reductions, the final sum and
// the device formulas.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <memory>
#include <vector>

#include "dbl_block.h"
#include "dbl_ops.h"

namespace dbl {
namespace {

using namespace cuda;

struct HostExec {
  template <class F>
  void each(F&& f) {
    for (int t = 0; t < kThreads; ++t) f(t);
  }
  void sync() {}
  void fence() {}
  uint32_t ticket(uint32_t* p) { return (*p)++; }
  void atomic_max(unsigned long long* p, unsigned long long v) {
    if (v > *p) *p = v;
  }
  double load_cg(const double* p) { return *p; }
};

// The workspace persists across calls, as the CUDA glue's does: each launch must leave it zeroed.
std::vector<char>& workspace() {
  static std::vector<char> ws;
  return ws;
}

template <int ERR>
struct Emulator {
  const FusedLaunch& a;
  const Plan& p;
  template <class Z, int V, class P, class T>
  void run() const {
    auto sh = std::make_unique<Shared<T>>();
    HostExec ex;
    for (int pass : {PASS_STATS, PASS_MAIN}) {
      if (pass == PASS_STATS && !p.stats_pass) continue;
      const KArgs<T> k = make_args<T>(a, p, pass);
      for (int64_t b = 0; b < k.g.blocks; ++b) {
        Block<Z, V, P, EmuFns<ERR>, T, HostExec> blk{ex, k, *sh, b, k.g.blocks};
        blk.run();
      }
    }
  }
};

int y_dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kBool: case at::kByte: return kU8;
    case at::kChar: return kI8;
    case at::kShort: return kI16;
    case at::kInt: return kI32;
    case at::kLong: return kI64;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    case at::kFloat: return kF32;
    default: return kF64;
  }
}

bool workspace_at_rest(const Plan& p) {
  const std::vector<char>& ws = workspace();
  uint32_t ticket;
  unsigned long long key;
  std::memcpy(&ticket, ws.data(), sizeof ticket);
  std::memcpy(&key, ws.data() + p.off_bmax, sizeof key);
  return ticket == 0 && key == 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_emulate(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& weight,
    const at::Tensor& class_params, const at::Tensor& aux, int64_t reweight_mode, int64_t weight_norm, bool logit_reg,
    bool focal, int64_t reduction, double map_alpha, double map_beta, double map_gamma, double cb_log_beta,
    double neg_scale, double gamma, double scale, double w_max, bool need_grad, int64_t err) {
  TORCH_CHECK(logits.device().is_cpu(), "dbl::_cuda_emulate runs on CPU tensors");
  TORCH_CHECK(reduction != RED_MEAN_COUNTED, "dbl::_cuda_emulate: reduction 3 is CPU-only, as on the GPU");
  TORCH_CHECK(err >= -1 && err <= 1, "dbl::_cuda_emulate: err must be -1, 0 or 1");
  const OpScalars s{reweight_mode, weight_norm, logit_reg, focal, reduction, map_alpha, map_beta, map_gamma,
                    cb_log_beta, neg_scale, gamma, scale, w_max, need_grad};
  Prepared pr = prepare(logits, labels, weight, class_params, aux, s);
  FusedLaunch a{};
  a.logits = pr.logits.data_ptr();
  a.z_dtype = pr.logits.scalar_type() == at::kDouble ? kF64
              : pr.logits.scalar_type() == at::kHalf ? kF16
              : pr.logits.scalar_type() == at::kBFloat16 ? kBF16 : kF32;
  a.ldz = pr.N > 1 ? pr.logits.stride(0) : pr.C;
  a.labels = pr.labels.data_ptr();
  a.y_dtype = y_dtype_code(pr.labels.scalar_type());
  a.ldy = pr.N > 1 ? pr.labels.stride(0) : pr.C;
  a.weight = pr.weight.defined() ? pr.weight.data_ptr() : nullptr;
  a.ws0 = pr.weight.defined() ? pr.weight.stride(0) : 0;
  a.ws1 = pr.weight.defined() ? pr.weight.stride(1) : 0;
  a.params = pr.params.data_ptr();
  a.aux = pr.aux.data_ptr();
  a.loss = pr.loss.data_ptr();
  a.grad = need_grad ? pr.grad.data_ptr() : nullptr;
  a.N = pr.N;
  a.C = pr.C;
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
  const Plan p = make_plan(a);
  std::vector<char>& ws = workspace();
  if (ws.size() < p.ws_bytes + 16) ws.resize(p.ws_bytes + 16, 0);  // zeroed once, then reused
  TORCH_CHECK(workspace_at_rest(p), "dbl::_cuda_emulate: a previous launch left the workspace dirty");
  a.workspace = ws.data();
  if (a.N == 0 || a.C == 0) {
    if (reduction != RED_NONE) pr.loss.zero_();
  } else if (err == 0) {
    dispatch(a, p, Emulator<0>{a, p});
  } else if (err > 0) {
    dispatch(a, p, Emulator<1>{a, p});
  } else {
    dispatch(a, p, Emulator<-1>{a, p});
  }
  TORCH_CHECK(workspace_at_rest(p), "dbl::_cuda_emulate: the launch did not reset its ticket and batch-max key");
  const Geometry& g = p.main_geo;
  const at::Tensor info = at::tensor({static_cast<int64_t>(p.path), static_cast<int64_t>(p.V),
                                      static_cast<int64_t>(p.stats_pass), static_cast<int64_t>(g.stats), g.rows,
                                      static_cast<int64_t>(g.rounds), g.chunks, g.tiles, g.items, g.blocks,
                                      static_cast<int64_t>(g.G)},
                                     at::kLong);
  return {pr.loss, pr.grad, info};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dbl, m) {
  m.def(
      "_cuda_emulate(Tensor logits, Tensor labels, Tensor? weight, Tensor class_params, Tensor aux, "
      "int reweight_mode, int weight_norm, bool logit_reg, bool focal, int reduction, float map_alpha, "
      "float map_beta, float map_gamma, float cb_log_beta, float neg_scale, float gamma, float scale, float w_max, "
      "bool need_grad, int err) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dbl, CPU, m) { m.impl("_cuda_emulate", &cuda_emulate); }

}  // namespace dbl
