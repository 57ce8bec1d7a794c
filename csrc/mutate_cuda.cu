// CUDA kernels: enumerate and mutate (full and windowed).
#include "cuda_util.cuh"

namespace basewise {

// One thread per (b, p): writes its 3 (4 at N) rows starting at row_offsets[b * P + p].
__global__ void enumerate_kernel(EnumerateArgs a) {
  const int64_t P = a.end - a.start;
  BW_GRID_STRIDE(i, a.B * P) {
    const int64_t b = i / P, pos = a.start + i % P;
    write_substitutions(a.out + 3 * a.row_offsets[i], b, pos, a.ref[b * a.L + pos]);
  }
}

void enumerate_cuda(const EnumerateArgs& a, int device, std::uintptr_t stream) {
  if (a.start < 0 || a.end > a.L || a.end <= a.start || a.B <= 0) return;
  cuda_use_device(device);
  const int64_t n = a.B * (a.end - a.start);
  enumerate_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(a);
  cuda_check(cudaGetLastError(), "enumerate");
}

// One thread per output element (m, c, j).
template <typename T>
__global__ void mutate_kernel(MutateArgs a, T one) {
  T* out = static_cast<T*>(a.out);
  const int64_t W = a.W;
  BW_GRID_STRIDE(i, a.M * 4 * W) {
    const int64_t m = i / (4 * W);
    const int64_t c = (i / W) % 4;
    const int64_t j = i % W;
    const int64_t seq = a.mutants[3 * m], pos = a.mutants[3 * m + 1], base = a.mutants[3 * m + 2];
    T v = T(0);
    if (seq >= 0 && seq < a.B && pos >= 0 && pos < a.L && base >= 0 && base < 4) {
      const int64_t l = (a.offset ? a.offset[m] : 0) + j;
      if (l == pos)
        v = (c == base) ? one : T(0);
      else if (l >= 0 && l < a.L)
        v = (a.ref[seq * a.L + l] == c) ? one : T(0);
    }
    out[i] = v;
  }
}

void mutate_cuda(const MutateArgs& a, int device, std::uintptr_t stream) {
  if (a.M <= 0 || a.W <= 0) return;
  cuda_use_device(device);
  const int64_t n = a.M * 4 * a.W;
  if (a.dtype == kFloat32)
    mutate_kernel<uint32_t><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(a, one_bits(a.dtype));
  else
    mutate_kernel<uint16_t><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
        a, static_cast<uint16_t>(one_bits(a.dtype)));
  cuda_check(cudaGetLastError(), "mutate");
}

}  // namespace basewise
