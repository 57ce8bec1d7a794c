// Argument structs and entry points of the basewise kernels (CPU in *.cpp, CUDA in *_cuda.cu).
//
// Every struct holds raw pointers into contiguous row-major buffers plus their sizes. Index
// tensors (mutants, offsets, sequence indices) are int64; reference sequences are uint8 base
// indices (0-3 = A, C, G, T; 4 = N; any other value is treated as N). Kernels never trust index
// values: a row whose sequence, position or base is out of range is skipped (scatter, conv_delta,
// fill_reference) or written as zeros (mutate, gather_windows, splice_windows).
#pragma once

#include <cstdint>
#include <string>

#include "checks.h"

namespace basewise {

struct EnumerateArgs {
  const uint8_t* ref;          // (B, L)
  int64_t B, L, start, end;    // positions [start, end), 0 <= start <= end <= L
  const int64_t* row_offsets;  // (B * P) first output row of each (b, p); CUDA only
  int64_t* out;                // (M, 3) rows (seq, pos, base)
  int nthreads;
};

struct MutateArgs {
  const uint8_t* ref;      // (B, L)
  int64_t B, L;
  const int64_t* mutants;  // (M, 3)
  int64_t M;
  const int64_t* offset;   // (M,) window start per mutant, or nullptr for the full sequence
  int64_t W;               // output width: L for the full form
  void* out;               // (M, 4, W) of dtype
  int dtype;
  int nthreads;
};

struct CompareArgs {
  float* preds;      // (B, Q, S) with Q = P * 4
  const float* ref;  // (B, S)
  int64_t B, Q, S;
  int kind;
  int nthreads;
};

struct ScatterArgs {
  float* out;              // (B, P, 4, S)
  const void* values;      // (M, S) of dtype
  const int64_t* mutants;  // (M, 3)
  int64_t B, P, S, M, start;
  int dtype;
  int nthreads;
};

struct FillReferenceArgs {
  float* out;             // (B, P, 4, S)
  const void* ref_preds;  // (B, S) of dtype
  const uint8_t* ref;     // (B, L)
  int64_t B, P, S, L, start;
  int dtype;
  int nthreads;
};

struct GatherArgs {
  const void* x;            // (B, C, Lx)
  const int64_t* seq_idx;   // (M,)
  const int64_t* offset;    // (M,)
  void* out;                // (M, C, W)
  int64_t B, C, Lx, M, W;
  int elem;                 // bytes per element: 2 or 4
  int nthreads;
};

struct SpliceArgs {
  const void* x;            // (B, C, Lx)
  const int64_t* seq_idx;   // (M,)
  const int64_t* offset;    // (M,)
  const void* windows;      // (M, C, W)
  void* out;                // (M, C, Lx)
  int64_t B, C, Lx, M, W;
  int elem;
  int nthreads;
};

struct ConvDeltaArgs {
  void* pre;                  // (M, Cout, W) of dtype
  const float* weight;        // (Cout, 4, K)
  const int64_t* mutants;     // (M, 3)
  const uint8_t* ref;         // (B, L)
  const int64_t* out_offset;  // (M,)
  int64_t M, Cout, W, K, B, L, stride, padding, dilation;
  int dtype;
  int nthreads;
};

// CPU (OpenMP) implementations.
int64_t enumerate_count_cpu(const uint8_t* ref, int64_t B, int64_t L, int64_t start, int64_t end);
void enumerate_cpu(const EnumerateArgs& a);
void mutate_cpu(const MutateArgs& a);
void compare_cpu(const CompareArgs& a);
void scatter_cpu(const ScatterArgs& a);
void fill_reference_cpu(const FillReferenceArgs& a);
void gather_windows_cpu(const GatherArgs& a);
void splice_windows_cpu(const SpliceArgs& a);
void conv_delta_cpu(const ConvDeltaArgs& a);

#ifdef BASEWISE_WITH_CUDA
// CUDA implementations: launched asynchronously on `stream` (a cudaStream_t) of device `device`.
void enumerate_cuda(const EnumerateArgs& a, int device, std::uintptr_t stream);
void mutate_cuda(const MutateArgs& a, int device, std::uintptr_t stream);
void compare_cuda(const CompareArgs& a, int device, std::uintptr_t stream);
void scatter_cuda(const ScatterArgs& a, int device, std::uintptr_t stream);
void fill_reference_cuda(const FillReferenceArgs& a, int device, std::uintptr_t stream);
void gather_windows_cuda(const GatherArgs& a, int device, std::uintptr_t stream);
void splice_windows_cuda(const SpliceArgs& a, int device, std::uintptr_t stream);
void conv_delta_cuda(const ConvDeltaArgs& a, int device, std::uintptr_t stream);
int cuda_runtime_version();
int cuda_device_count();
// "" when the kernels can run on `device`, else why not (no image for its architecture, a driver
// too old for the runtime, ...). Restores the calling thread's current device.
std::string cuda_kernel_problem(int device);
#endif

}  // namespace basewise
