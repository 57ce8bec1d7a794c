// pybind11 bindings of the basewise native core (module basewise._C).
//
// Each op takes integer data pointers (tensor.data_ptr()), sizes, a device index (-1 = CPU) and a
// CUDA stream handle (ignored on CPU). No libtorch: python/basewise/ops.py owns the tensors,
// registers the torch custom ops and validates inputs first; the checks here refuse structural
// nonsense (negative sizes, null pointers, unknown codes) with ValueError.
#include <pybind11/pybind11.h>

#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels.h"

namespace py = pybind11;
using std::uintptr_t;

namespace basewise {
namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

#ifdef BASEWISE_WITH_CUDA
#define BW_DISPATCH(name, args, device, stream) \
  do {                                          \
    if ((device) < 0)                           \
      name##_cpu(args);                         \
    else                                        \
      name##_cuda(args, device, stream);        \
  } while (0)
#else
#define BW_DISPATCH(name, args, device, stream)                                                 \
  do {                                                                                          \
    if ((device) < 0)                                                                           \
      name##_cpu(args);                                                                         \
    else                                                                                        \
      fail("device", "is a CUDA device, but basewise._C was built without CUDA kernels"); \
  } while (0)
#endif

int64_t enumerate_count(uintptr_t ref, int64_t B, int64_t L, int64_t start, int64_t end) {
  check_nonneg("B", B);
  check_nonneg("L", L);
  check_ptr("ref", ref, checked_mul("ref", B, L));
  if (start < 0 || end > L || start > end)
    fail("start/end", "must satisfy 0 <= start <= end <= L");
  return enumerate_count_cpu(ptr<const uint8_t>(ref), B, L, start, end);
}

void enumerate_(int device, uintptr_t stream, uintptr_t ref, int64_t B, int64_t L, int64_t start,
                int64_t end, uintptr_t row_offsets, uintptr_t out, int nthreads) {
  check_nonneg("B", B);
  check_nonneg("L", L);
  if (start < 0 || end > L || start > end)
    fail("start/end", "must satisfy 0 <= start <= end <= L");
  const int64_t n = checked_mul("ref", B, end - start);
  check_ptr("ref", ref, n);
  check_ptr("out", out, n);
  if (device >= 0) check_ptr("row_offsets", row_offsets, n);
  EnumerateArgs a{ptr<const uint8_t>(ref), B, L, start, end, ptr<const int64_t>(row_offsets),
                  ptr<int64_t>(out), clamp_threads(nthreads)};
  BW_DISPATCH(enumerate, a, device, stream);
}

void mutate(int device, uintptr_t stream, uintptr_t ref, int64_t B, int64_t L, uintptr_t mutants,
            int64_t M, uintptr_t offset, int64_t W, uintptr_t out, int dtype, int nthreads) {
  check_nonneg("B", B);
  check_nonneg("L", L);
  check_nonneg("mutants", M);
  check_nonneg("width", W);
  check_dtype("dtype", dtype);
  check_ptr("ref", ref, checked_mul("ref", B, L));
  check_ptr("mutants", mutants, M);
  check_ptr("out", out, checked_mul("out", checked_mul("out", M, 4), W));
  if (offset == 0 && W != L) fail("width", "must equal L when no offset is given");
  MutateArgs a{ptr<const uint8_t>(ref), B, L, ptr<const int64_t>(mutants), M,
               ptr<const int64_t>(offset), W, ptr<void>(out), dtype, clamp_threads(nthreads)};
  BW_DISPATCH(mutate, a, device, stream);
}

void compare(int device, uintptr_t stream, uintptr_t preds, uintptr_t ref, int64_t B, int64_t Q,
             int64_t S, int kind, int nthreads) {
  check_nonneg("B", B);
  check_nonneg("Q", Q);
  check_nonneg("S", S);
  check_kind(kind);
  check_ptr("preds", preds, checked_mul("preds", checked_mul("preds", B, Q), S));
  check_ptr("ref", ref, checked_mul("ref", B, S));
  CompareArgs a{ptr<float>(preds), ptr<const float>(ref), B, Q, S, kind, clamp_threads(nthreads)};
  BW_DISPATCH(compare, a, device, stream);
}

void scatter(int device, uintptr_t stream, uintptr_t out, uintptr_t values, uintptr_t mutants,
             int64_t B, int64_t P, int64_t S, int64_t M, int64_t start, int dtype, int nthreads) {
  check_nonneg("B", B);
  check_nonneg("P", P);
  check_nonneg("S", S);
  check_nonneg("mutants", M);
  check_dtype("values", dtype);
  check_ptr("out", out, checked_mul("out", checked_mul("out", B, P), 4 * S));
  check_ptr("values", values, checked_mul("values", M, S));
  check_ptr("mutants", mutants, M);
  ScatterArgs a{ptr<float>(out), ptr<const void>(values), ptr<const int64_t>(mutants), B, P, S, M,
                start, dtype, clamp_threads(nthreads)};
  BW_DISPATCH(scatter, a, device, stream);
}

void fill_reference(int device, uintptr_t stream, uintptr_t out, uintptr_t ref_preds,
                    uintptr_t ref, int64_t B, int64_t P, int64_t S, int64_t L, int64_t start,
                    int dtype, int nthreads) {
  check_nonneg("B", B);
  check_nonneg("P", P);
  check_nonneg("S", S);
  check_nonneg("L", L);
  check_dtype("ref_preds", dtype);
  check_ptr("out", out, checked_mul("out", checked_mul("out", B, P), 4 * S));
  check_ptr("ref_preds", ref_preds, checked_mul("ref_preds", B, S));
  check_ptr("ref", ref, checked_mul("ref", B, L));
  FillReferenceArgs a{ptr<float>(out), ptr<const void>(ref_preds), ptr<const uint8_t>(ref), B, P,
                      S, L, start, dtype, clamp_threads(nthreads)};
  BW_DISPATCH(fill_reference, a, device, stream);
}

// Checks shared by gather_windows and splice_windows: sizes, element size, x (B, C, Lx) and the
// per-window seq_idx/offset (M,).
void check_window_inputs(uintptr_t x, uintptr_t seq_idx, uintptr_t offset, int64_t B,
                         int64_t C, int64_t Lx, int64_t M, int64_t W, int elem) {
  for (auto [n, v] : {std::pair<const char*, int64_t>{"B", B}, {"C", C}, {"Lx", Lx}, {"M", M},
                      {"width", W}})
    check_nonneg(n, v);
  if (elem != 2 && elem != 4) fail("x", "must have 2- or 4-byte elements");
  check_ptr("x", x, checked_mul("x", checked_mul("x", B, C), Lx));
  check_ptr("seq_idx", seq_idx, M);
  check_ptr("offset", offset, M);
}

void gather_windows(int device, uintptr_t stream, uintptr_t x, uintptr_t seq_idx,
                    uintptr_t offset, uintptr_t out, int64_t B, int64_t C, int64_t Lx, int64_t M,
                    int64_t W, int elem, int nthreads) {
  check_window_inputs(x, seq_idx, offset, B, C, Lx, M, W, elem);
  check_ptr("out", out, checked_mul("out", checked_mul("out", M, C), W));
  GatherArgs a{ptr<const void>(x), ptr<const int64_t>(seq_idx), ptr<const int64_t>(offset),
               ptr<void>(out), B, C, Lx, M, W, elem, clamp_threads(nthreads)};
  BW_DISPATCH(gather_windows, a, device, stream);
}

void splice_windows(int device, uintptr_t stream, uintptr_t x, uintptr_t seq_idx,
                    uintptr_t offset, uintptr_t windows, uintptr_t out, int64_t B, int64_t C,
                    int64_t Lx, int64_t M, int64_t W, int elem, int nthreads) {
  check_window_inputs(x, seq_idx, offset, B, C, Lx, M, W, elem);
  check_ptr("windows", windows, checked_mul("windows", checked_mul("windows", M, C), W));
  check_ptr("out", out, checked_mul("out", checked_mul("out", M, C), Lx));
  SpliceArgs a{ptr<const void>(x),       ptr<const int64_t>(seq_idx), ptr<const int64_t>(offset),
               ptr<const void>(windows), ptr<void>(out),              B, C, Lx, M, W, elem,
               clamp_threads(nthreads)};
  BW_DISPATCH(splice_windows, a, device, stream);
}

void conv_delta(int device, uintptr_t stream, uintptr_t pre, uintptr_t weight, uintptr_t mutants,
                uintptr_t ref, uintptr_t out_offset, int64_t M, int64_t Cout, int64_t W, int64_t K,
                int64_t B, int64_t L, int64_t stride, int64_t padding, int64_t dilation, int dtype,
                int nthreads) {
  for (auto [n, v] : {std::pair<const char*, int64_t>{"M", M}, {"Cout", Cout}, {"W", W}, {"K", K},
                      {"B", B}, {"L", L}, {"padding", padding}})
    check_nonneg(n, v);
  check_positive("stride", stride);
  check_positive("dilation", dilation);
  check_dtype("pre", dtype);
  check_ptr("pre", pre, checked_mul("pre", checked_mul("pre", M, Cout), W));
  check_ptr("weight", weight, checked_mul("weight", checked_mul("weight", Cout, 4), K));
  check_ptr("mutants", mutants, M);
  check_ptr("ref", ref, checked_mul("ref", B, L));
  check_ptr("out_offset", out_offset, M);
  ConvDeltaArgs a{ptr<void>(pre),   ptr<const float>(weight), ptr<const int64_t>(mutants),
                  ptr<const uint8_t>(ref), ptr<const int64_t>(out_offset), M, Cout, W, K, B, L,
                  stride,          padding, dilation, dtype, clamp_threads(nthreads)};
  BW_DISPATCH(conv_delta, a, device, stream);
}

py::dict build_info() {
  py::dict d;
#ifdef BASEWISE_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(BASEWISE_CUDA_ARCHS);
  d["cuda_compiler_version"] = std::string(BASEWISE_CUDA_COMPILER_VERSION);
  d["cuda_runtime_version"] = cuda_runtime_version();
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string("");
  d["cuda_compiler_version"] = std::string("");
  d["cuda_runtime_version"] = 0;
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = static_cast<int>(_OPENMP);
#else
  d["openmp"] = false;
  d["openmp_version"] = 0;
#endif
  d["cxx_compiler"] = std::string(BASEWISE_CXX_COMPILER);
  d["build_type"] = std::string(BASEWISE_BUILD_TYPE);
  return d;
}

// Ask the kernel to back the 2 MiB-aligned interior of a freshly allocated CPU buffer with
// transparent huge pages (before it is first written). Large fresh outputs otherwise spend more
// time in 4 KiB page faults than in the kernels' writes. Only that buffer's pages are affected;
// returns false where unsupported or refused (then nothing changed).
bool advise_hugepages(uintptr_t p, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(1) << 21;
  if (p == 0 || nbytes < int64_t(2 * huge)) return false;
  const uintptr_t a = (p + huge - 1) & ~(huge - 1);
  const uintptr_t e = (p + static_cast<uintptr_t>(nbytes)) & ~(huge - 1);
  if (e <= a) return false;
  return madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE) == 0;
#else
  (void)p;
  (void)nbytes;
  return false;
#endif
}

int device_count() {
#ifdef BASEWISE_WITH_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

std::string kernel_problem(int device) {
#ifdef BASEWISE_WITH_CUDA
  return cuda_kernel_problem(device);
#else
  (void)device;
  return "basewise was built without CUDA kernels (no nvcc at build time)";
#endif
}

}  // namespace
}  // namespace basewise

PYBIND11_MODULE(_C, m) {
  using namespace basewise;
  m.doc() = "basewise native core: CPU (OpenMP) and CUDA kernels on raw pointers; see basewise.ops";
  m.def("enumerate_count", &enumerate_count, "Number of saturation-mutagenesis triples (CPU).");
  m.def("enumerate", &enumerate_, "Write saturation-mutagenesis triples (M, 3).");
  m.def("mutate", &mutate, "Write one-hot single-base mutants (M, 4, W).");
  m.def("compare", &compare, "In-place compare of predictions against the reference.");
  m.def("scatter", &scatter, "Write mutant predictions into their ISM output slots.");
  m.def("fill_reference", &fill_reference, "Write the reference prediction into its slots.");
  m.def("gather_windows", &gather_windows, "Windows of activations, zero outside.");
  m.def("splice_windows", &splice_windows, "Activations with windows spliced in.");
  m.def("conv_delta", &conv_delta, "In-place Conv1d pre-activation update for mutants.");
  m.def("build_info", &build_info, "What was compiled in.");
  m.def("advise_hugepages", &advise_hugepages,
        "madvise(MADV_HUGEPAGE) the aligned interior of a fresh CPU buffer (Linux).");
  m.def("cuda_kernel_problem", &kernel_problem,
        "'' when the CUDA kernels can run on this device index, else why not (no image for its "
        "architecture, driver too old, built without CUDA).");
  m.def("device_count", &device_count, "CUDA devices seen by the native runtime (0 without CUDA).");
}
