// OpenMP helpers: the thread count is always passed in explicitly (from torch.get_num_threads()),
// so the ops never change a global OpenMP setting.
#pragma once
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#define BW_PRAGMA(x) _Pragma(#x)
// Parallel for over [0, n) with `nt` threads, serial when the work is small.
#define BW_PARALLEL_FOR(nt, work) BW_PRAGMA(omp parallel for num_threads(nt) schedule(static) if ((work) > 32768 && (nt) > 1))
#else
#define BW_PARALLEL_FOR(nt, work)
#endif

// Function multiversioning for the vectorisable inner loops: an AVX2 and an AVX-512 clone next to
// the baseline one, picked once at load time (GCC/Clang on x86-64 with glibc ifunc support).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(BASEWISE_NO_CLONES)
#define BW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BW_CLONES
#endif
