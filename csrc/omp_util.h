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
