// The CUDA kernel run on the CPU, for tests on machines without a GPU: dbl::_cuda_emulate takes
// the arguments of dbl::fused (CPU tensors) and runs the CUDA launch plan (dbl_plan.h) through the
// CUDA block program (dbl_block.h), block after block and, within a step, thread after thread.
// The MUFU instructions get exact stand-ins, or stand-ins off by their documented worst case in
// one direction (err = +1 / -1), so tests also check that the GPU's approximations keep every
// result within tolerance. Not a fast path: an oracle for indexing, reductions, the final sum and
// the device formulas.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <memory>
#include <vector>

#include "dbl_block.h"
#include "dbl_launch.h"

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

bool workspace_at_rest(const Plan& p) {
  const std::vector<char>& ws = workspace();
  uint32_t ticket;
  unsigned long long key;
  std::memcpy(&ticket, ws.data(), sizeof ticket);
  std::memcpy(&key, ws.data() + p.off_bmax, sizeof key);
  return ticket == 0 && key == 0;
}


std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_emulate(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& crow_indices,
    const std::optional<at::Tensor>& col_indices, const std::optional<at::Tensor>& weight,
    const at::Tensor& class_params, const at::Tensor& aux, const std::optional<at::Tensor>& row_stats,
    at::IntArrayRef modes, at::ArrayRef<double> scalars, bool need_grad, int64_t err, int64_t max_blocks) {
  TORCH_CHECK(logits.device().is_cpu(), "dbl::_cuda_emulate runs on CPU tensors");
  TORCH_CHECK(err >= -1 && err <= 1, "dbl::_cuda_emulate: err must be -1, 0 or 1");
  TORCH_CHECK(max_blocks >= 0, "dbl::_cuda_emulate: max_blocks must be >= 0 (0: the plan's kMaxBlocks)");
  const OpScalars s = unpack_options(modes, scalars, need_grad);
  TORCH_CHECK(s.reduction != RED_MEAN_COUNTED, "dbl::_cuda_emulate: reduction 3 is CPU-only, as on the GPU");
  Prepared pr = prepare(logits, labels, crow_indices, col_indices, weight, class_params, aux, row_stats, s,
                        kCudaFeatures);
  // per_class: the element losses ("none") into a buffer, then the column sums, as on the GPU
  const bool per_class = s.reduction == RED_PER_CLASS;
  const at::Tensor elems = per_class ? at::empty({pr.N, pr.C}, pr.loss.options()) : pr.loss;
  const at::Tensor rows = kernel_row_stats(pr);
  FusedLaunch a = launch_args(pr, s, rows, elems.data_ptr());
  a.max_blocks = max_blocks;  // the grid of an emulated device (dbl_cuda.cu: SMs x blocks per SM)
  const int64_t reduction = s.reduction;
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
  if (per_class) {
    AT_DISPATCH_FLOATING_TYPES(pr.loss.scalar_type(), "dbl_emulate_column_sums", [&] {
      for (int64_t j = 0; j < pr.C; ++j) pr.loss.data_ptr<scalar_t>()[j] = column_sum(elems.data_ptr<scalar_t>(), pr.N, pr.C, j);
    });
  }
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
      "_cuda_emulate(Tensor logits, Tensor labels, Tensor? crow_indices, Tensor? col_indices, Tensor? weight, "
      "Tensor class_params, Tensor aux, Tensor? row_stats, int[] modes, float[] scalars, bool need_grad, int err, "
      "int max_blocks=0) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dbl, CPU, m) { m.impl("_cuda_emulate", &cuda_emulate); }

}  // namespace dbl
