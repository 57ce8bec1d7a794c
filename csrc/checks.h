// Shared boundary checks and small helpers for the basewise native core.
//
// The native module never links libtorch: every op receives raw data pointers, sizes and (on
// CUDA) a stream handle from python/basewise/ops.py. The Python wrappers validate shapes, dtypes,
// devices and value ranges first; the checks here are the second line of defence, so that a bad
// call can never crash the process or write out of bounds. Structural problems (null pointers,
// negative sizes, an unknown dtype code) raise std::invalid_argument, which pybind11 turns into
// Python's ValueError. Bad *values* inside index tensors (a sequence, position or base out of
// range) are not errors at this level: the kernels skip (or zero-fill) such rows instead, because
// finding them on the GPU would need a device-to-host synchronisation.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define BW_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define BW_HD inline __attribute__((always_inline))
#else
#define BW_HD inline
#endif

namespace basewise {

// Element types of float tensors crossing the boundary (codes shared with ops.py).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Kinds of compare_ (codes shared with ops.py).
enum CompareKind : int { kSubtract = 0, kDivide = 1, kLog2FC = 2 };

[[noreturn]] inline void fail(const std::string& arg, const std::string& what) {
  throw std::invalid_argument("basewise._C: argument '" + arg + "' " + what);
}

inline void check_nonneg(const char* arg, int64_t v) {
  if (v < 0) fail(arg, "must be >= 0, got " + std::to_string(v));
}

inline void check_positive(const char* arg, int64_t v) {
  if (v <= 0) fail(arg, "must be > 0, got " + std::to_string(v));
}

// A data pointer may be null only when the tensor holds no elements.
inline void check_ptr(const char* arg, std::uintptr_t p, int64_t numel) {
  if (numel > 0 && p == 0) fail(arg, "is a null pointer for a non-empty tensor");
}

inline void check_dtype(const char* arg, int dtype) {
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16)
    fail(arg, "has unknown dtype code " + std::to_string(dtype) +
                  " (expected 0=float32, 1=float16, 2=bfloat16)");
}

inline void check_kind(int kind) {
  if (kind != kSubtract && kind != kDivide && kind != kLog2FC)
    fail("kind", "has unknown code " + std::to_string(kind) +
                     " (expected 0=subtract, 1=divide, 2=log2FC)");
}

// Product of sizes, refusing overflow of int64 (sizes come from Python ints).
inline int64_t checked_mul(const char* arg, int64_t a, int64_t b) {
  if (a < 0 || b < 0) fail(arg, "has a negative size");
  if (a != 0 && b > INT64_MAX / a) fail(arg, "is too large (size overflows int64)");
  return a * b;
}

inline int elem_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

inline int clamp_threads(int64_t nthreads) {
  if (nthreads < 1) return 1;
  if (nthreads > 1024) return 1024;
  return static_cast<int>(nthreads);
}

// ---------------------------------------------------------------------------------------------
// Float conversions usable on host and device, bit-exact with torch's round-to-nearest-even.

BW_HD uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

BW_HD float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

BW_HD float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

BW_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // nan
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

BW_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24 is exact in float32
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return f32_from_bits(sign | f32_bits(v));
  }
  if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

// float32 -> float16, round to nearest even, overflow to inf, nan kept quiet. The rounding is
// done by the FPU: adding a power of two that puts the half's last mantissa bit at float's
// bit 13 rounds exactly once (the sources are compiled with -ffp-contract=off).
BW_HD uint16_t f32_to_f16(float f) {
  const uint32_t w = f32_bits(f);
  const uint32_t sign = (w >> 16) & 0x8000u;
  const uint32_t absw = w & 0x7fffffffu;
  if (absw > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // nan
  if (absw >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65536: inf
  if (absw < 0x38800000u) {
    // result is a float16 subnormal (or zero): its quantum is 2^-24; adding 0.5 moves the
    // quantum to float32's last place so the FPU rounds to nearest even.
    const float a = f32_from_bits(absw) + 0.5f;
    return static_cast<uint16_t>(sign | (f32_bits(a) - 0x3f000000u));
  }
  // normal: round the 23-bit mantissa to 10 bits, ties to even; carry may bump the exponent.
  uint32_t m = absw + 0xfffu + ((absw >> 13) & 1u);
  m -= 0x38000000u;  // rebias exponent 127 -> 15
  return static_cast<uint16_t>(sign | (m >> 13));
}

// The saturation-mutagenesis rows (b, pos, base) of one position, in gReLU's base order A, C, G,
// T, skipping the reference base rb (all four where rb is N). Returns the pointer past the rows.
BW_HD int64_t* write_substitutions(int64_t* o, int64_t b, int64_t pos, uint8_t rb) {
  for (int64_t base = 0; base < 4; ++base) {
    if (base == rb) continue;
    o[0] = b;
    o[1] = pos;
    o[2] = base;
    o += 3;
  }
  return o;
}

// log2 of a float32, correctly rounded except in astronomically rare near-ties: the mantissa's
// logarithm is evaluated in double precision (atanh series, relative error < 1e-15) and rounded
// once to float. Branch-free, so the CPU loop vectorises, and the same code runs on CUDA, so CPU
// and GPU results are bit-identical. Special values as IEEE/numpy: log2(+-0) = -inf,
// log2(x < 0) = nan, log2(nan) = nan, log2(+inf) = +inf.
BW_HD float log2_cr(float x) {
  const uint32_t u = f32_bits(x);
  const bool sub = u < 0x00800000u;                // +0 or positive subnormal
  const float xs = x * (sub ? 8388608.0f : 1.0f);  // scale subnormals by 2^23
  const uint32_t us = f32_bits(xs);
  int32_t e = static_cast<int32_t>((us >> 23) & 0xffu) - 127 - (sub ? 23 : 0);
  const float mf = f32_from_bits((us & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = mf > 1.41421356f;
  const double m = static_cast<double>(mf) * (big ? 0.5 : 1.0);  // [sqrt(1/2), sqrt(2))
  e += static_cast<int32_t>(big);
  const double s = (m - 1.0) / (m + 1.0);  // |s| <= 0.1716
  const double s2 = s * s;
  // 2 / ((2k + 1) ln 2) for k = 0..8
  double p = 0.16972882833987804;  // k = 8
  p = p * s2 + 0.19235933878519512;
  p = p * s2 + 0.2219530832136867;
  p = p * s2 + 0.2623081892525388;
  p = p * s2 + 0.3205988979753252;
  p = p * s2 + 0.41219858311113244;
  p = p * s2 + 0.5770780163555853;
  p = p * s2 + 0.9617966939259757;
  p = p * s2 + 2.8853900817779268;
  float r = static_cast<float>(static_cast<double>(e) + s * p);
  const uint32_t ax = u & 0x7fffffffu;
  r = (ax == 0u) ? -__builtin_huge_valf() : r;                    // +-0
  r = (u == 0x7f800000u) ? x : r;                                  // +inf
  const bool neg_or_nan = ((u >> 31) != 0u) & (ax != 0u);
  r = (neg_or_nan | (ax > 0x7f800000u)) ? __builtin_nanf("") : r;  // < 0, nan
  return r;
}

template <typename T>
struct Conv;
template <>
struct Conv<float> {
  static BW_HD float load(const float* p) { return *p; }
  static BW_HD void store(float* p, float v) { *p = v; }
};

struct F16 {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};
template <>
struct Conv<F16> {
  static BW_HD float load(const F16* p) { return f16_to_f32(p->bits); }
  static BW_HD void store(F16* p, float v) { p->bits = f32_to_f16(v); }
};
template <>
struct Conv<BF16> {
  static BW_HD float load(const BF16* p) { return bf16_to_f32(p->bits); }
  static BW_HD void store(BF16* p, float v) { p->bits = f32_to_bf16(v); }
};

// Bit pattern of 1.0 in each dtype, for one-hot writes.
inline uint32_t one_bits(int dtype) {
  return dtype == kFloat32 ? 0x3f800000u : (dtype == kFloat16 ? 0x3c00u : 0x3f80u);
}

}  // namespace basewise
