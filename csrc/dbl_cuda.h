// Plain C++ interface between the torch glue (dbl_cuda_glue.cpp) and the CUDA kernels
// (dbl_cuda.cu). No torch and no CUDA headers here, so the .cu compiles with nvcc alone.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dbl_plan.h"

namespace dbl {
namespace cuda {

// The grid of a launch on the current device: its SMs x the blocks of the instantiation the launch
// runs that fit an SM at once, or 0 where the device cannot say (the plan's kMaxBlocks then). Set
// FusedLaunch::max_blocks to it before the calls below.
int64_t resident_blocks(const FusedLaunch& a);

// Bytes of device workspace a launch needs (ticket, batch-max key, block partials, row statistics).
// The workspace must be zero the first time it is used; every launch leaves it so (its last block
// resets the ticket and the key), so it can be reused by later launches on the same stream.
size_t fused_workspace_bytes(const FusedLaunch& a);

// How many kernels fused() enqueues for these arguments (1, or 2 with a statistics pass first).
int fused_launches(const FusedLaunch& a);

// Enqueues the fused kernel(s) on `stream` (a cudaStream_t). Returns a cudaError_t value.
int fused(const FusedLaunch& a, void* stream);

// per_class: out[j] = the sum of column j of the N x C loss (dbl_math.h column_sum: rows in order,
// in fp64), one thread per column. dtype: kF32 or kF64 (the compute dtype).
int column_sums(const void* loss, int dtype, int64_t N, int64_t C, void* out, void* stream);

// grad *= grad_output[0] on the device, skipped by the kernel itself when grad_output[0] == 1.
// grad: n contiguous elements of grad_dtype (kF16, kBF16, kF32, kF64); grad_output: kF32 or kF64.
int scale_grad(void* grad, int grad_dtype, int64_t n, const void* grad_output, int go_dtype, void* stream);

}  // namespace cuda
}  // namespace dbl
