// CPU kernels: enumerate (saturation-mutagenesis triples) and mutate (one-hot mutant batches).
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "omp_util.h"

namespace basewise {

static inline bool is_n(uint8_t r) { return r > 3; }

int64_t enumerate_count_cpu(const uint8_t* ref, int64_t B, int64_t L, int64_t start, int64_t end) {
  if (start < 0 || end > L || end <= start || B <= 0) return 0;
  const int64_t P = end - start;
  int64_t n_count = 0;
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* r = ref + b * L + start;
    int64_t c = 0;
    for (int64_t p = 0; p < P; ++p) c += is_n(r[p]);
    n_count += c;
  }
  return 3 * B * P + n_count;
}

void enumerate_cpu(const EnumerateArgs& a) {
  if (a.start < 0 || a.end > a.L || a.end <= a.start || a.B <= 0) return;
  const int64_t P = a.end - a.start;
  // First output row of each sequence: 3 rows per position plus one more per N before it.
  std::vector<int64_t> first(a.B + 1, 0);
  for (int64_t b = 0; b < a.B; ++b) {
    const uint8_t* r = a.ref + b * a.L + a.start;
    int64_t c = 0;
    for (int64_t p = 0; p < P; ++p) c += is_n(r[p]);
    first[b + 1] = first[b] + 3 * P + c;
  }
  BW_PARALLEL_FOR(a.nthreads, a.B * P * 12)
  for (int64_t b = 0; b < a.B; ++b) {
    const uint8_t* r = a.ref + b * a.L;
    int64_t* o = a.out + 3 * first[b];
    for (int64_t pos = a.start; pos < a.end; ++pos) o = write_substitutions(o, b, pos, r[pos]);
  }
}

// One-hot row of channel c for reference bases r[lo, hi) written to o[lo - start, hi - start).
// The select loop vectorises (uint8 compare widened to the element size).
BW_CLONES static void onehot_channel32(uint32_t* __restrict o, const uint8_t* __restrict r,
                                       int64_t n, uint8_t c, uint32_t one) {
  for (int64_t j = 0; j < n; ++j) o[j] = (r[j] == c) ? one : 0u;
}
BW_CLONES static void onehot_channel16(uint16_t* __restrict o, const uint8_t* __restrict r,
                                       int64_t n, uint8_t c, uint16_t one) {
  for (int64_t j = 0; j < n; ++j) o[j] = (r[j] == c) ? one : uint16_t(0);
}
static inline void onehot_channel(uint32_t* o, const uint8_t* r, int64_t n, uint8_t c, uint32_t one) {
  onehot_channel32(o, r, n, c, one);
}
static inline void onehot_channel(uint16_t* o, const uint8_t* r, int64_t n, uint8_t c, uint16_t one) {
  onehot_channel16(o, r, n, c, one);
}

template <typename T>
static void mutate_cpu_t(const MutateArgs& a) {
  const T one = static_cast<T>(one_bits(a.dtype));
  T* out = static_cast<T*>(a.out);
  const int64_t W = a.W, L = a.L;
  // When the mutants outnumber the sequences, encode each reference once (B x 4 x L, cache
  // resident for typical batches) and copy its rows: a plain memcpy per row runs at store
  // bandwidth. Otherwise build each row with the compare-and-select loop.
  const bool use_table = a.B > 0 && L > 0 && a.M >= 4 * a.B && a.B * 4 * L <= (int64_t(16) << 20);
  std::vector<T> table;
  if (use_table) {
    table.resize(static_cast<size_t>(a.B * 4 * L));
    BW_PARALLEL_FOR(a.nthreads, a.B * 4 * L)
    for (int64_t bc = 0; bc < a.B * 4; ++bc)
      onehot_channel(table.data() + bc * L, a.ref + (bc / 4) * L, L, static_cast<uint8_t>(bc % 4), one);
  }
  BW_PARALLEL_FOR(a.nthreads, a.M * 4 * W)
  for (int64_t m = 0; m < a.M; ++m) {
    T* o = out + m * 4 * W;
    const int64_t seq = a.mutants[3 * m], pos = a.mutants[3 * m + 1], base = a.mutants[3 * m + 2];
    const bool valid = seq >= 0 && seq < a.B && pos >= 0 && pos < L && base >= 0 && base < 4;
    if (!valid) {
      std::memset(o, 0, sizeof(T) * 4 * W);
      continue;
    }
    const int64_t off = a.offset ? a.offset[m] : 0;
    // columns j with 0 <= off + j < L
    const int64_t lo = std::min(W, std::max<int64_t>(0, -off));
    const int64_t hi = std::max(lo, std::min(W, L - off));
    const uint8_t* r = a.ref + seq * L;
    if (use_table && off == 0 && W == L) {
      std::memcpy(o, table.data() + seq * 4 * L, sizeof(T) * 4 * L);  // the whole (4, L) block
      for (int c = 0; c < 4; ++c) o[c * W + pos] = (c == base) ? one : T(0);
      continue;
    }
    for (int c = 0; c < 4; ++c) {
      T* oc = o + c * W;
      if (lo > 0) std::memset(oc, 0, sizeof(T) * lo);
      if (use_table)
        std::memcpy(oc + lo, table.data() + (seq * 4 + c) * L + off + lo, sizeof(T) * (hi - lo));
      else
        onehot_channel(oc + lo, r + off + lo, hi - lo, static_cast<uint8_t>(c), one);
      if (hi < W) std::memset(oc + hi, 0, sizeof(T) * (W - hi));
    }
    const int64_t j = pos - off;
    if (j >= 0 && j < W) {
      for (int c = 0; c < 4; ++c) o[c * W + j] = (c == base) ? one : T(0);
    }
  }
}

void mutate_cpu(const MutateArgs& a) {
  if (a.M <= 0 || a.W <= 0) return;
  if (a.dtype == kFloat32)
    mutate_cpu_t<uint32_t>(a);
  else
    mutate_cpu_t<uint16_t>(a);
}

}  // namespace basewise
