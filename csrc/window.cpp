// CPU kernels for the incremental ISM engine: gather_windows, splice_windows and conv_delta.
#include <algorithm>
#include <cstring>

#include "kernels.h"
#include "omp_util.h"

namespace basewise {

// Columns j in [0, W) with 0 <= off + j < Lx are [lo, hi).
static inline void inside(int64_t off, int64_t W, int64_t Lx, int64_t& lo, int64_t& hi) {
  lo = std::min(W, std::max<int64_t>(0, -off));
  hi = std::max(lo, std::min(W, Lx - off));
}

void gather_windows_cpu(const GatherArgs& a) {
  if (a.M <= 0 || a.C <= 0 || a.W <= 0) return;
  const char* x = static_cast<const char*>(a.x);
  char* out = static_cast<char*>(a.out);
  const int64_t e = a.elem;
  BW_PARALLEL_FOR(a.nthreads, a.M * a.C * a.W)
  for (int64_t m = 0; m < a.M; ++m) {
    char* o = out + m * a.C * a.W * e;
    const int64_t seq = a.seq_idx[m];
    if (seq < 0 || seq >= a.B) {
      std::memset(o, 0, a.C * a.W * e);
      continue;
    }
    int64_t lo, hi;
    inside(a.offset[m], a.W, a.Lx, lo, hi);
    for (int64_t c = 0; c < a.C; ++c) {
      char* oc = o + c * a.W * e;
      const char* xc = x + ((seq * a.C + c) * a.Lx + a.offset[m]) * e;
      if (lo > 0) std::memset(oc, 0, lo * e);
      if (hi > lo) std::memcpy(oc + lo * e, xc + lo * e, (hi - lo) * e);
      if (hi < a.W) std::memset(oc + hi * e, 0, (a.W - hi) * e);
    }
  }
}

void splice_windows_cpu(const SpliceArgs& a) {
  if (a.M <= 0 || a.C <= 0 || a.Lx <= 0) return;
  const char* x = static_cast<const char*>(a.x);
  const char* win = static_cast<const char*>(a.windows);
  char* out = static_cast<char*>(a.out);
  const int64_t e = a.elem;
  BW_PARALLEL_FOR(a.nthreads, a.M * a.C * a.Lx)
  for (int64_t m = 0; m < a.M; ++m) {
    char* o = out + m * a.C * a.Lx * e;
    const int64_t seq = a.seq_idx[m];
    if (seq < 0 || seq >= a.B) {
      std::memset(o, 0, a.C * a.Lx * e);
      continue;
    }
    const int64_t off = a.offset[m];
    int64_t lo = 0, hi = 0;
    if (a.W > 0) inside(off, a.W, a.Lx, lo, hi);
    for (int64_t c = 0; c < a.C; ++c) {
      char* oc = o + c * a.Lx * e;
      const char* xc = x + (seq * a.C + c) * a.Lx * e;
      if (hi > lo) {
        // x before the window, the window, x after it
        const int64_t w0 = off + lo, w1 = off + hi;  // sequence columns [w0, w1)
        std::memcpy(oc, xc, w0 * e);
        std::memcpy(oc + w0 * e, win + ((m * a.C + c) * a.W + lo) * e, (hi - lo) * e);
        std::memcpy(oc + w1 * e, xc + w1 * e, (a.Lx - w1) * e);
      } else {
        std::memcpy(oc, xc, a.Lx * e);
      }
    }
  }
}

template <typename T>
static void conv_delta_cpu_t(const ConvDeltaArgs& a) {
  T* pre = static_cast<T*>(a.pre);
  const int64_t K = a.K, W = a.W, Cout = a.Cout;
  BW_PARALLEL_FOR(a.nthreads, a.M * Cout * K)
  for (int64_t m = 0; m < a.M; ++m) {
    const int64_t seq = a.mutants[3 * m], pos = a.mutants[3 * m + 1], base = a.mutants[3 * m + 2];
    if (seq < 0 || seq >= a.B || pos < 0 || pos >= a.L || base < 0 || base > 3) continue;
    const uint8_t old = a.ref[seq * a.L + pos];
    T* pm = pre + m * Cout * W;
    for (int64_t t = 0; t < K; ++t) {
      const int64_t num = pos + a.padding - t * a.dilation;
      if (num % a.stride != 0) continue;
      const int64_t j = num / a.stride - a.out_offset[m];
      if (j < 0 || j >= W) continue;
      for (int64_t co = 0; co < Cout; ++co) {
        const float* w = a.weight + co * 4 * K + t;
        const float d = w[base * K] - (old < 4 ? w[old * K] : 0.0f);
        T* p = pm + co * W + j;
        Conv<T>::store(p, Conv<T>::load(p) + d);
      }
    }
  }
}

void conv_delta_cpu(const ConvDeltaArgs& a) {
  if (a.M <= 0 || a.Cout <= 0 || a.W <= 0 || a.K <= 0) return;
  if (a.stride <= 0 || a.dilation <= 0) return;
  if (a.dtype == kFloat32)
    conv_delta_cpu_t<float>(a);
  else if (a.dtype == kFloat16)
    conv_delta_cpu_t<F16>(a);
  else
    conv_delta_cpu_t<BF16>(a);
}

}  // namespace basewise
