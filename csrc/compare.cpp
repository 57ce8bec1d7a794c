// CPU kernel: compare_ (in place) of mutant predictions against the reference prediction, with
// gReLU's float32 formulas and no epsilon: subtract = x - r, divide = x / r, log2FC = log2(x / r).
#include <cmath>

#include "kernels.h"
#include "omp_util.h"

namespace basewise {

BW_CLONES static void sub_row(float* __restrict x, const float* __restrict r, int64_t S) {
  for (int64_t s = 0; s < S; ++s) x[s] = x[s] - r[s];
}
BW_CLONES static void div_row(float* __restrict x, const float* __restrict r, int64_t S) {
  for (int64_t s = 0; s < S; ++s) x[s] = x[s] / r[s];
}
BW_CLONES static void log2fc_row(float* __restrict x, const float* __restrict r, int64_t S) {
  for (int64_t s = 0; s < S; ++s) x[s] = log2_cr(x[s] / r[s]);
}

void compare_cpu(const CompareArgs& a) {
  if (a.B <= 0 || a.Q <= 0 || a.S <= 0) return;
  const int64_t rows = a.B * a.Q;
  const int64_t S = a.S;
  const int kind = a.kind;
  BW_PARALLEL_FOR(a.nthreads, rows * S * (kind == kLog2FC ? 8 : 1))
  for (int64_t row = 0; row < rows; ++row) {
    float* __restrict x = a.preds + row * S;
    const float* __restrict r = a.ref + (row / a.Q) * S;
    if (kind == kSubtract)
      sub_row(x, r, S);
    else if (kind == kDivide)
      div_row(x, r, S);
    else
      log2fc_row(x, r, S);
  }
}

}  // namespace basewise
