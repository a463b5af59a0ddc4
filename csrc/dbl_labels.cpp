// Label-value check of CPU labels in one pass: integers must be 0, 1 or -1 (unknown), floats lie in
// [0, 1] or are -1. Returns 0 (valid, no -1), 1 (valid, some -1) or 2 (invalid: the caller then
// finds the offending range with torch, for its error message). One dispatcher call instead of
// torch's aminmax plus host reads: the check is most of the host time of a small loss call.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

namespace dbl {
namespace {

constexpr int kLanes = 32;              // flags kept per lane, so the loop vectorises
constexpr int64_t kSerialElems = 32768; // below this, one thread

struct Flags {
  bool bad = false, unknown = false;
};

// Flags of n values; the arithmetic runs in acc_t (float for half/bfloat16, the type itself else).
template <class S>
Flags scan(const S* v, int64_t n) {
  using acc_t = at::opmath_type<S>;
  acc_t bad[kLanes] = {}, unk[kLanes] = {};
  const auto step = [&](int l, acc_t x) {
    if constexpr (std::is_floating_point<acc_t>::value) {
      // !(x >= -1 && x <= 1) also catches NaN; (-1, 0) is the gap only a float can fall into
      const bool b = !(x >= acc_t(-1) && x <= acc_t(1)) || (x > acc_t(-1) && x < acc_t(0));
      bad[l] = b ? acc_t(1) : bad[l];
    } else if constexpr (std::is_signed<acc_t>::value) {
      bad[l] |= static_cast<acc_t>((x < acc_t(-1)) | (x > acc_t(1)));
    } else {
      bad[l] |= static_cast<acc_t>(x > acc_t(1));
    }
    unk[l] = x == acc_t(-1) ? acc_t(1) : unk[l];
  };
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) step(l, static_cast<acc_t>(v[j + l]));
  for (int l = 0; j + l < n; ++l) step(l, static_cast<acc_t>(v[j + l]));
  Flags f;
  for (int l = 0; l < kLanes; ++l) {
    f.bad |= bad[l] != acc_t(0);
    f.unknown |= unk[l] != acc_t(0);
  }
  return f;
}

int64_t check_labels(const at::Tensor& labels_in) {
  TORCH_CHECK(labels_in.device().is_cpu(), "dbl::_check_labels takes CPU labels");
  if (labels_in.numel() == 0 || labels_in.scalar_type() == at::kBool) return 0;
  const at::Tensor y = labels_in.dim() == 2 && labels_in.stride(1) == 1 ? labels_in : labels_in.contiguous().view({1, -1});
  const int64_t rows = y.size(0), cols = y.size(1), ld = y.stride(0);
  int64_t code = 0;  // bit 0: some -1, bit 1: invalid; an OR is exact in any split
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "dbl_check_labels", [&] {
    const scalar_t* base = y.data_ptr<scalar_t>();
    code = at::parallel_reduce(
        0, rows, std::max<int64_t>(1, kSerialElems / std::max<int64_t>(cols, 1)), int64_t(0),
        [&](int64_t i0, int64_t i1, int64_t acc) {
          for (int64_t i = i0; i < i1; ++i) {
            const Flags f = scan(base + i * ld, cols);
            acc |= (f.unknown ? 1 : 0) | (f.bad ? 2 : 0);
          }
          return acc;
        },
        [](int64_t a, int64_t b) { return a | b; });
  });
  return code & 2 ? 2 : code;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dbl, m) {
  m.def("_check_labels(Tensor labels) -> int");
}

TORCH_LIBRARY_IMPL(dbl, CPU, m) {
  m.impl("_check_labels", &check_labels);
}

}  // namespace dbl
