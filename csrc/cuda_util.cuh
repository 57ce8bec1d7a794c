// Shared CUDA launch helpers (included by the *_cuda.cu files only).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace basewise {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("basewise CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
}

// Make `device` current for this thread's runtime (torch already made it current under
// torch.cuda.device(device); this only matters if the static runtime disagrees).
inline void cuda_use_device(int device) {
  int cur = -1;
  cuda_check(cudaGetDevice(&cur), "cudaGetDevice");
  if (cur != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
}

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items.
inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 8)));
}

#define BW_GRID_STRIDE(i, n)                                                        \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

}  // namespace basewise
