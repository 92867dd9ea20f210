/* pbw_cpu_threads.h: OpenMP's team size and thread number, 1 and 0 in a build without OpenMP.
 * CPU kernels size per-thread scratch with pbw_cpu_max_threads and index it with
 * pbw_cpu_thread_id inside a parallel region. */
#ifndef PBW_CPU_THREADS_H
#define PBW_CPU_THREADS_H

#ifdef _OPENMP
#include <omp.h>
#endif

static inline int pbw_cpu_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int pbw_cpu_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

#endif
