// bench_cuda_check.cuh: for the standalone CUDA benchmarks (bench/*.cu): CK(call), a CUDA,
// cuBLAS, cuBLASLt or cuSOLVER call whose status is not 0 prints the call, file and line, and
// exits; bench_median_ms, the median time of a piece of GPU work.
#ifndef PBW_BENCH_CUDA_CHECK_CUH
#define PBW_BENCH_CUDA_CHECK_CUH

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                  \
    do {                                                                                       \
        auto e_ = (x);                                                                         \
        if ((int)e_ != 0) {                                                                    \
            fprintf(stderr, "%s:%d: %s -> %d\n", __FILE__, __LINE__, #x, (int)e_);            \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

// The median milliseconds of `reps` runs of run() after `warm` untimed ones, each timed alone
// between events on the default stream; before() runs ahead of each, untimed (a fresh input).
template <typename Run, typename Before>
float bench_median_ms(Run run, int warm, int reps, Before before) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < warm; i++) before(), run();
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        before();
        CK(cudaEventRecord(e0));
        run();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}
template <typename Run> float bench_median_ms(Run run, int warm, int reps) {
    return bench_median_ms(run, warm, reps, [] {});
}

#endif
