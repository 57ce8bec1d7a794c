// CUDA kernel: compare_ in place (IEEE division and basewise's log2_cr; built with -fmad=false
// and without fast-math, so x / 0 and log2 of non-positive ratios give inf / nan like numpy).
#include "cuda_util.cuh"

namespace basewise {

__global__ void compare_kernel(CompareArgs a) {
  const int64_t S = a.S;
  BW_GRID_STRIDE(i, a.B * a.Q * S) {
    const int64_t b = i / (a.Q * S), s = i % S;
    const float x = a.preds[i], r = a.ref[b * S + s];
    float y;
    if (a.kind == kSubtract)
      y = __fsub_rn(x, r);
    else if (a.kind == kDivide)
      y = __fdiv_rn(x, r);
    else
      y = log2_cr(__fdiv_rn(x, r));  // same code as the CPU: identical bits
    a.preds[i] = y;
  }
}

void compare_cuda(const CompareArgs& a, int device, std::uintptr_t stream) {
  if (a.B <= 0 || a.Q <= 0 || a.S <= 0) return;
  cuda_use_device(device);
  compare_kernel<<<blocks_for(a.B * a.Q * a.S), kThreads, 0, as_stream(stream)>>>(a);
  cuda_check(cudaGetLastError(), "compare_");
}

}  // namespace basewise
