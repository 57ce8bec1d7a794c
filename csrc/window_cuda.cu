// CUDA kernels: gather_windows, splice_windows, conv_delta.
#include "cuda_util.cuh"

namespace basewise {

template <typename T>
__global__ void gather_kernel(GatherArgs a) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t W = a.W, C = a.C;
  BW_GRID_STRIDE(i, a.M * C * W) {
    const int64_t m = i / (C * W), c = (i / W) % C, j = i % W;
    const int64_t seq = a.seq_idx[m], l = a.offset[m] + j;
    T v = T(0);
    if (seq >= 0 && seq < a.B && l >= 0 && l < a.Lx) v = x[(seq * C + c) * a.Lx + l];
    out[i] = v;
  }
}

template <typename T>
__global__ void splice_kernel(SpliceArgs a) {
  const T* x = static_cast<const T*>(a.x);
  const T* win = static_cast<const T*>(a.windows);
  T* out = static_cast<T*>(a.out);
  const int64_t Lx = a.Lx, C = a.C;
  BW_GRID_STRIDE(i, a.M * C * Lx) {
    const int64_t m = i / (C * Lx), c = (i / Lx) % C, l = i % Lx;
    const int64_t seq = a.seq_idx[m], j = l - a.offset[m];
    T v = T(0);
    if (seq >= 0 && seq < a.B) {
      if (j >= 0 && j < a.W)
        v = win[(m * C + c) * a.W + j];
      else
        v = x[(seq * C + c) * Lx + l];
    }
    out[i] = v;
  }
}

void gather_windows_cuda(const GatherArgs& a, int device, std::uintptr_t stream) {
  if (a.M <= 0 || a.C <= 0 || a.W <= 0) return;
  cuda_use_device(device);
  const unsigned int g = blocks_for(a.M * a.C * a.W);
  if (a.elem == 4)
    gather_kernel<uint32_t><<<g, kThreads, 0, as_stream(stream)>>>(a);
  else
    gather_kernel<uint16_t><<<g, kThreads, 0, as_stream(stream)>>>(a);
  cuda_check(cudaGetLastError(), "gather_windows");
}

void splice_windows_cuda(const SpliceArgs& a, int device, std::uintptr_t stream) {
  if (a.M <= 0 || a.C <= 0 || a.Lx <= 0) return;
  cuda_use_device(device);
  const unsigned int g = blocks_for(a.M * a.C * a.Lx);
  if (a.elem == 4)
    splice_kernel<uint32_t><<<g, kThreads, 0, as_stream(stream)>>>(a);
  else
    splice_kernel<uint16_t><<<g, kThreads, 0, as_stream(stream)>>>(a);
  cuda_check(cudaGetLastError(), "splice_windows");
}

// One thread per (m, co, t): each tap of a mutant hits a distinct output column, so no two
// threads update the same element.
template <typename T>
__global__ void conv_delta_kernel(ConvDeltaArgs a) {
  T* pre = static_cast<T*>(a.pre);
  const int64_t K = a.K, Cout = a.Cout, W = a.W;
  BW_GRID_STRIDE(i, a.M * Cout * K) {
    const int64_t m = i / (Cout * K), co = (i / K) % Cout, t = i % K;
    const int64_t seq = a.mutants[3 * m], pos = a.mutants[3 * m + 1], base = a.mutants[3 * m + 2];
    if (seq < 0 || seq >= a.B || pos < 0 || pos >= a.L || base < 0 || base > 3) continue;
    const int64_t num = pos + a.padding - t * a.dilation;
    if (num % a.stride != 0) continue;
    const int64_t j = num / a.stride - a.out_offset[m];
    if (j < 0 || j >= W) continue;
    const uint8_t old = a.ref[seq * a.L + pos];
    const float* w = a.weight + co * 4 * K + t;
    const float d = __fsub_rn(w[base * K], old < 4 ? w[old * K] : 0.0f);
    T* p = pre + (m * Cout + co) * W + j;
    Conv<T>::store(p, __fadd_rn(Conv<T>::load(p), d));
  }
}

void conv_delta_cuda(const ConvDeltaArgs& a, int device, std::uintptr_t stream) {
  if (a.M <= 0 || a.Cout <= 0 || a.W <= 0 || a.K <= 0) return;
  if (a.stride <= 0 || a.dilation <= 0) return;
  cuda_use_device(device);
  const unsigned int g = blocks_for(a.M * a.Cout * a.K);
  cudaStream_t s = as_stream(stream);
  if (a.dtype == kFloat32)
    conv_delta_kernel<float><<<g, kThreads, 0, s>>>(a);
  else if (a.dtype == kFloat16)
    conv_delta_kernel<F16><<<g, kThreads, 0, s>>>(a);
  else
    conv_delta_kernel<BF16><<<g, kThreads, 0, s>>>(a);
  cuda_check(cudaGetLastError(), "conv_delta_");
}

}  // namespace basewise
