// CPU kernels: scatter (mutant predictions into their (seq, pos, base) slots of the ISM output)
// and fill_reference (reference prediction into every reference-base slot).
#include <cstring>

#include "kernels.h"
#include "omp_util.h"

namespace basewise {

BW_CLONES static void bf16_row_to_f32(float* __restrict o, const BF16* __restrict v, int64_t n) {
  for (int64_t s = 0; s < n; ++s) o[s] = Conv<BF16>::load(v + s);
}
static void f16_row_to_f32(float* __restrict o, const F16* __restrict v, int64_t n) {
  for (int64_t s = 0; s < n; ++s) o[s] = Conv<F16>::load(v + s);
}
static inline void copy_to_f32(float* o, const float* v, int64_t n) {
  std::memcpy(o, v, sizeof(float) * n);
}
static inline void copy_to_f32(float* o, const BF16* v, int64_t n) { bf16_row_to_f32(o, v, n); }
static inline void copy_to_f32(float* o, const F16* v, int64_t n) { f16_row_to_f32(o, v, n); }

template <typename T>
static void scatter_cpu_t(const ScatterArgs& a) {
  const T* values = static_cast<const T*>(a.values);
  const int64_t S = a.S;
  BW_PARALLEL_FOR(a.nthreads, a.M * S)
  for (int64_t m = 0; m < a.M; ++m) {
    const int64_t seq = a.mutants[3 * m], p = a.mutants[3 * m + 1] - a.start,
                  base = a.mutants[3 * m + 2];
    if (seq < 0 || seq >= a.B || p < 0 || p >= a.P || base < 0 || base > 3) continue;
    copy_to_f32(a.out + ((seq * a.P + p) * 4 + base) * S, values + m * S, S);
  }
}

void scatter_cpu(const ScatterArgs& a) {
  if (a.M <= 0 || a.S <= 0 || a.B <= 0 || a.P <= 0) return;
  if (a.dtype == kFloat32)
    scatter_cpu_t<float>(a);
  else if (a.dtype == kFloat16)
    scatter_cpu_t<F16>(a);
  else
    scatter_cpu_t<BF16>(a);
}

template <typename T>
static void fill_reference_cpu_t(const FillReferenceArgs& a) {
  const T* rp = static_cast<const T*>(a.ref_preds);
  const int64_t S = a.S;
  BW_PARALLEL_FOR(a.nthreads, a.B * a.P * S)
  for (int64_t bp = 0; bp < a.B * a.P; ++bp) {
    const int64_t b = bp / a.P, p = bp % a.P;
    const int64_t pos = a.start + p;
    if (pos < 0 || pos >= a.L) continue;
    const uint8_t r = a.ref[b * a.L + pos];
    if (r > 3) continue;  // N: no reference-base slot
    copy_to_f32(a.out + (bp * 4 + r) * S, rp + b * S, S);
  }
}

void fill_reference_cpu(const FillReferenceArgs& a) {
  if (a.B <= 0 || a.P <= 0 || a.S <= 0) return;
  if (a.dtype == kFloat32)
    fill_reference_cpu_t<float>(a);
  else if (a.dtype == kFloat16)
    fill_reference_cpu_t<F16>(a);
  else
    fill_reference_cpu_t<BF16>(a);
}

}  // namespace basewise
