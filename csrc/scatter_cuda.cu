// CUDA kernels: scatter and fill_reference.
#include "cuda_util.cuh"

namespace basewise {

template <typename T>
__global__ void scatter_kernel(ScatterArgs a) {
  const T* values = static_cast<const T*>(a.values);
  const int64_t S = a.S;
  BW_GRID_STRIDE(i, a.M * S) {
    const int64_t m = i / S, s = i % S;
    const int64_t seq = a.mutants[3 * m], p = a.mutants[3 * m + 1] - a.start,
                  base = a.mutants[3 * m + 2];
    if (seq < 0 || seq >= a.B || p < 0 || p >= a.P || base < 0 || base > 3) continue;
    a.out[((seq * a.P + p) * 4 + base) * S + s] = Conv<T>::load(values + i);
  }
}

void scatter_cuda(const ScatterArgs& a, int device, std::uintptr_t stream) {
  if (a.M <= 0 || a.S <= 0 || a.B <= 0 || a.P <= 0) return;
  cuda_use_device(device);
  const unsigned int g = blocks_for(a.M * a.S);
  cudaStream_t s = as_stream(stream);
  if (a.dtype == kFloat32)
    scatter_kernel<float><<<g, kThreads, 0, s>>>(a);
  else if (a.dtype == kFloat16)
    scatter_kernel<F16><<<g, kThreads, 0, s>>>(a);
  else
    scatter_kernel<BF16><<<g, kThreads, 0, s>>>(a);
  cuda_check(cudaGetLastError(), "scatter_");
}

template <typename T>
__global__ void fill_reference_kernel(FillReferenceArgs a) {
  const T* rp = static_cast<const T*>(a.ref_preds);
  const int64_t S = a.S;
  BW_GRID_STRIDE(i, a.B * a.P * S) {
    const int64_t bp = i / S, s = i % S;
    const int64_t b = bp / a.P, pos = a.start + bp % a.P;
    if (pos < 0 || pos >= a.L) continue;
    const uint8_t r = a.ref[b * a.L + pos];
    if (r > 3) continue;
    a.out[(bp * 4 + r) * S + s] = Conv<T>::load(rp + b * S + s);
  }
}

void fill_reference_cuda(const FillReferenceArgs& a, int device, std::uintptr_t stream) {
  if (a.B <= 0 || a.P <= 0 || a.S <= 0) return;
  cuda_use_device(device);
  const unsigned int g = blocks_for(a.B * a.P * a.S);
  cudaStream_t s = as_stream(stream);
  if (a.dtype == kFloat32)
    fill_reference_kernel<float><<<g, kThreads, 0, s>>>(a);
  else if (a.dtype == kFloat16)
    fill_reference_kernel<F16><<<g, kThreads, 0, s>>>(a);
  else
    fill_reference_kernel<BF16><<<g, kThreads, 0, s>>>(a);
  cuda_check(cudaGetLastError(), "fill_reference_");
}

}  // namespace basewise
