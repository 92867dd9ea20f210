// bench_cuda_check.cuh: CK(call) for the standalone CUDA benchmarks (bench/*.cu): a CUDA,
// cuBLAS or cuBLASLt call whose status is not 0 prints the call, file and line, and exits.
#ifndef PBW_BENCH_CUDA_CHECK_CUH
#define PBW_BENCH_CUDA_CHECK_CUH

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                                  \
    do {                                                                                       \
        auto e_ = (x);                                                                         \
        if ((int)e_ != 0) {                                                                    \
            fprintf(stderr, "%s:%d: %s -> %d\n", __FILE__, __LINE__, #x, (int)e_);            \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

#endif
