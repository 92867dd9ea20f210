// pbw_cuda_linalg.cu: the symmetric eigendecomposition of CMA-ES's covariance on the GPU
// (cuSOLVER's syevd in double; libcusolver is opened at run time, so pbw needs it only where
// this is used). On an H200, n = 512 took 4.7 ms against 38.6 ms for LAPACK's dsyevd on one core
// of its host (and 28.5 ms on eight): during a GPU edit the eigensolve every other CMA-ES
// generation was the largest stretch with the GPU idle.
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstdio>

#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_internal.cuh"

namespace {
struct solver_api {
    cusolverStatus_t (*create)(cusolverDnHandle_t *);
    cusolverStatus_t (*set_stream)(cusolverDnHandle_t, cudaStream_t);
    cusolverStatus_t (*buffer_size)(cusolverDnHandle_t, cusolverEigMode_t, cublasFillMode_t, int,
                                    const double *, int, const double *, int *);
    cusolverStatus_t (*syevd)(cusolverDnHandle_t, cusolverEigMode_t, cublasFillMode_t, int,
                              double *, int, double *, double *, int, int *);
};
solver_api g_api;
cusolverDnHandle_t g_handle;
int g_state; // 0 untried, 1 ready, -1 unavailable
double *g_a, *g_t, *g_w, *g_work;
int *g_info;
int g_n, g_lwork;

bool ready() {
    if (g_state) return g_state > 0;
    g_state = -1;
    if (pbw_cuda_current() < 0) return false;
    static const char *const names[] = {"libcusolver.so.12", "libcusolver.so.11",
                                        "libcusolver.so"};
    void *h = pbw_dlopen_first(names, 3);
    if (!h) return false;
    if (!pbw_dlsym(h, "cusolverDnCreate", g_api.create) ||
        !pbw_dlsym(h, "cusolverDnSetStream", g_api.set_stream) ||
        !pbw_dlsym(h, "cusolverDnDsyevd_bufferSize", g_api.buffer_size) ||
        !pbw_dlsym(h, "cusolverDnDsyevd", g_api.syevd))
        return false;
    if (g_api.create(&g_handle) != CUSOLVER_STATUS_SUCCESS) return false;
    g_api.set_stream(g_handle, pbw_stream());
    g_state = 1;
    return true;
}

void release_buffers() {
    pbw_cuda_free(g_a);
    pbw_cuda_free(g_t);
    pbw_cuda_free(g_w);
    pbw_cuda_free(g_work);
    pbw_cuda_free(g_info);
    g_a = g_t = g_w = g_work = nullptr;
    g_info = nullptr;
    g_n = g_lwork = 0;
}
} // namespace

extern "C" int pbw_cuda_eigh_available(void) { return ready() ? 1 : 0; }

extern "C" int pbw_cuda_eigh(int n, const double *C, double *B, double *w) {
    if (n < 1 || !ready() || pbw_cuda_capturing()) return -1;
    // A symmetric matrix is its own transpose: row-major C is the column-major matrix cuSOLVER
    // reads; its row-major upper triangle is the column-major lower one.
    const cublasFillMode_t uplo = CUBLAS_FILL_MODE_LOWER;
    const cusolverEigMode_t job = CUSOLVER_EIG_MODE_VECTOR;
    if (n != g_n) {
        release_buffers();
        g_a = (double *)pbw_cuda_malloc((size_t)n * n * sizeof(double));
        g_t = (double *)pbw_cuda_malloc((size_t)n * n * sizeof(double));
        g_w = (double *)pbw_cuda_malloc((size_t)n * sizeof(double));
        g_info = (int *)pbw_cuda_malloc(sizeof(int));
        int lwork = 0;
        if (!g_a || !g_t || !g_w || !g_info ||
            g_api.buffer_size(g_handle, job, uplo, n, g_a, n, g_w, &lwork) !=
                CUSOLVER_STATUS_SUCCESS ||
            !(g_work = (double *)pbw_cuda_malloc((size_t)(lwork > 0 ? lwork : 1) * sizeof(double)))) {
            release_buffers();
            return -1;
        }
        g_n = n;
        g_lwork = lwork;
    }
    int info = -1;
    if (pbw_cuda_h2d(g_a, C, (size_t)n * n * sizeof(double)) ||
        g_api.syevd(g_handle, job, uplo, n, g_a, n, g_w, g_work, g_lwork, g_info) !=
            CUSOLVER_STATUS_SUCCESS ||
        pbw_cuda_d2h(&info, g_info, sizeof info) || info != 0)
        return -1;
    // column j of the column-major result is eigenvector j: B[i][j] (row-major) = V[j*n + i],
    // transposed on the GPU by cuBLAS (on the host, a strided pass over 2 MB at n = 512):
    // t = 1 V^T + 0 V, column-major
    const double one = 1.0, zero = 0.0;
    if (cublasDgeam(pbw_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, n, n, &one, g_a, n, &zero, g_a, n,
                    g_t, n) != CUBLAS_STATUS_SUCCESS ||
        pbw_cuda_error() || pbw_cuda_d2h(B, g_t, (size_t)n * n * sizeof(double)) ||
        pbw_cuda_d2h(w, g_w, (size_t)n * sizeof(double)))
        return -1;
    return 0;
}
