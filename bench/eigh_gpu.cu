// eigh_gpu.cu: cuSOLVER's symmetric eigensolvers at CMA-ES's size (n = 512, eigenvectors
// wanted) on a covariance-like matrix (identity plus a rank-60 part), the question being whether
// anything beats the Dsyevd that pbw_cuda_eigh runs every other generation: Dsyevd, Ssyevd,
// Dsyevj and Ssyevj, each the median of 12 runs on a fresh copy, timed with events around the
// solver call alone (no copies). Standalone:
//   nvcc -O3 -arch=sm_90 bench/eigh_gpu.cu -lcusolver -o build/eigh_gpu
//   build/eigh_gpu [n]
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_cuda_check.cuh"

template <typename T>
static cusolverStatus_t buffer_size(cusolverDnHandle_t h, bool jacobi, int n, T *a, T *w,
                                    int *lwork, syevjInfo_t p) {
    const cusolverEigMode_t v = CUSOLVER_EIG_MODE_VECTOR;
    const cublasFillMode_t lo = CUBLAS_FILL_MODE_LOWER;
    if constexpr (sizeof(T) == 8)
        return jacobi ? cusolverDnDsyevj_bufferSize(h, v, lo, n, a, n, w, lwork, p)
                      : cusolverDnDsyevd_bufferSize(h, v, lo, n, a, n, w, lwork);
    else
        return jacobi ? cusolverDnSsyevj_bufferSize(h, v, lo, n, a, n, w, lwork, p)
                      : cusolverDnSsyevd_bufferSize(h, v, lo, n, a, n, w, lwork);
}

template <typename T>
static cusolverStatus_t solve(cusolverDnHandle_t h, bool jacobi, int n, T *a, T *w, T *work,
                              int lwork, int *info, syevjInfo_t p) {
    const cusolverEigMode_t v = CUSOLVER_EIG_MODE_VECTOR;
    const cublasFillMode_t lo = CUBLAS_FILL_MODE_LOWER;
    if constexpr (sizeof(T) == 8)
        return jacobi ? cusolverDnDsyevj(h, v, lo, n, a, n, w, work, lwork, info, p)
                      : cusolverDnDsyevd(h, v, lo, n, a, n, w, work, lwork, info);
    else
        return jacobi ? cusolverDnSsyevj(h, v, lo, n, a, n, w, work, lwork, info, p)
                      : cusolverDnSsyevd(h, v, lo, n, a, n, w, work, lwork, info);
}

// Median milliseconds of the solver on C (n x n, symmetric), T's precision.
template <typename T> static double median_ms(int n, const std::vector<double> &C, bool jacobi) {
    cusolverDnHandle_t h;
    CK(cusolverDnCreate(&h));
    syevjInfo_t p;
    CK(cusolverDnCreateSyevjInfo(&p));
    T *a, *w, *work;
    int *info, lwork = 0;
    CK(cudaMalloc(&a, sizeof(T) * n * n));
    CK(cudaMalloc(&w, sizeof(T) * n));
    CK(cudaMalloc(&info, sizeof(int)));
    CK(buffer_size<T>(h, jacobi, n, a, w, &lwork, p));
    CK(cudaMalloc(&work, sizeof(T) * (lwork > 0 ? lwork : 1)));
    const std::vector<T> host(C.begin(), C.end());
    const double ms = bench_median_ms(
        [&] { CK(solve<T>(h, jacobi, n, a, w, work, lwork, info, p)); }, 0, 12,
        [&] { CK(cudaMemcpy(a, host.data(), sizeof(T) * n * n, cudaMemcpyHostToDevice)); });
    int hinfo = 0;
    CK(cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost));
    if (hinfo != 0) fprintf(stderr, "solver info %d\n", hinfo);
    CK(cudaFree(a));
    CK(cudaFree(w));
    CK(cudaFree(work));
    CK(cudaFree(info));
    CK(cusolverDnDestroySyevjInfo(p));
    CK(cusolverDnDestroy(h));
    return ms;
}

int main(int argc, char **argv) {
    const int n = argc > 1 ? atoi(argv[1]) : 512, r = 60;
    if (n < 2) return 1;
    std::vector<double> G((size_t)n * r), C((size_t)n * n);
    srand(3);
    for (double &g : G) g = rand() / (double)RAND_MAX - 0.5;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < r; k++) s += G[(size_t)i * r + k] * G[(size_t)j * r + k];
            C[(size_t)i * n + j] = 0.02 * s + (i == j ? 1.0 : 0.0);
        }
    printf("n %d: Dsyevd %.3f ms, Ssyevd %.3f ms, Dsyevj %.3f ms, Ssyevj %.3f ms\n", n,
           median_ms<double>(n, C, false), median_ms<float>(n, C, false),
           median_ms<double>(n, C, true), median_ms<float>(n, C, true));
    return 0;
}
