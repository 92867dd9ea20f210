// eigh_split.cu: CMA-ES's eigensolve (n = 512, eigenvectors wanted) split between the GPU and
// the host, against cuSOLVER's Dsyevd whole, the question being whether the stretch of a
// decomposing generation during which the GPU idles can be shortened. The split: the GPU
// reduces C to tridiagonal form (Dsytrd), the host solves the tridiagonal problem (LAPACK's
// dstedc or dstemr, on 1 or 8 OpenBLAS threads), and the GPU applies the reduction's
// reflectors to its eigenvectors (Dormtr). Each variant's wall time (the host's clock around
// the whole, waiting for the GPU at its end, as pbw_cuda_eigh waits) is the median of 15 runs
// on a fresh copy of a covariance-like matrix (identity plus a rank-60 part, then scaled by
// powers of ten along the diagonal, as late in a CMA-ES run), with the reconstruction
// |V diag(w) V^T - C| / |C| and orthogonality |V^T V - I| of its result. Also cuSOLVER's
// generic Xsyevd. Standalone (needs LAPACKE and OpenBLAS with their headers: Debian's
// liblapacke-dev and libopenblas-dev):
//   nvcc -O3 -arch=sm_90 bench/eigh_split.cu -lcusolver -lcublas -llapacke -lopenblas -o build/eigh_split
//   build/eigh_split [n]
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <lapacke.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_cuda_check.cuh"

extern "C" void openblas_set_num_threads(int);

namespace {
struct gpu {
    cusolverDnHandle_t h;
    cublasHandle_t b;
    cusolverDnParams_t params;
    int n;
    double *a, *w, *d, *e, *tau, *work, *z;
    int *info;
    int lwork;
    void *xwork;
    size_t xwork_bytes;
    std::vector<char> xhost;
};

double now_ms() {
    return std::chrono::duration<double, std::milli>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// |V diag(w) V^T - C| / |C| and |V^T V - I| (max norms), V column-major (column j: vector j)
void check(int n, const std::vector<double> &C, const std::vector<double> &V,
           const std::vector<double> &w, double *rec, double *orth) {
    double cmax = 0, er = 0, eo = 0;
    for (double c : C) cmax = std::fmax(cmax, std::fabs(c));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double r = 0, o = 0;
            for (int k = 0; k < n; k++) {
                r += V[(size_t)k * n + i] * w[k] * V[(size_t)k * n + j];
                o += V[(size_t)i * n + k] * V[(size_t)j * n + k];
            }
            er = std::fmax(er, std::fabs(r - C[(size_t)i * n + j]) / cmax);
            eo = std::fmax(eo, std::fabs(o - (i == j)));
        }
    *rec = er;
    *orth = eo;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// variant 0: Dsyevd; 1: Xsyevd; 2: split with dstedc; 3: split with dstemr. Fills V, w.
// Stage times (ms) where split: sytrd (with d, e back), host, upload + ormtr.
void run(gpu &g, int variant, const std::vector<double> &C, std::vector<double> &V,
         std::vector<double> &w, double st[3]) {
    const int n = g.n;
    CK(cudaMemcpy(g.a, C.data(), sizeof(double) * n * n, cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize());
    const double t0 = now_ms();
    if (variant == 0) {
        CK(cusolverDnDsyevd(g.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, g.a, n, g.w,
                            g.work, g.lwork, g.info));
        CK(cudaMemcpy(w.data(), g.w, sizeof(double) * n, cudaMemcpyDeviceToHost));
        st[0] = now_ms() - t0;
        st[1] = st[2] = 0;
    } else if (variant == 1) {
        CK(cusolverDnXsyevd(g.h, g.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n,
                            CUDA_R_64F, g.a, n, CUDA_R_64F, g.w, CUDA_R_64F, g.xwork,
                            g.xwork_bytes, g.xhost.data(), g.xhost.size(), g.info));
        CK(cudaMemcpy(w.data(), g.w, sizeof(double) * n, cudaMemcpyDeviceToHost));
        st[0] = now_ms() - t0;
        st[1] = st[2] = 0;
    } else {
        CK(cusolverDnDsytrd(g.h, CUBLAS_FILL_MODE_LOWER, n, g.a, n, g.d, g.e, g.tau, g.work,
                            g.lwork, g.info));
        std::vector<double> d(n), e(n), Z((size_t)n * n);
        CK(cudaMemcpy(d.data(), g.d, sizeof(double) * n, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(e.data(), g.e, sizeof(double) * (n - 1), cudaMemcpyDeviceToHost));
        const double t1 = now_ms();
        if (variant == 2) {
            CK(LAPACKE_dstedc(LAPACK_COL_MAJOR, 'I', n, d.data(), e.data(), Z.data(), n));
        } else {
            lapack_int m = 0, tryrac = 1;
            std::vector<lapack_int> supp(2 * n);
            e.push_back(0);
            CK(LAPACKE_dstemr(LAPACK_COL_MAJOR, 'V', 'A', n, d.data(), e.data(), 0, 0, 0, 0, &m,
                              w.data(), Z.data(), n, n, supp.data(), &tryrac));
            d.assign(w.begin(), w.end());
        }
        for (int i = 0; i < n; i++) w[i] = d[i];
        const double t2 = now_ms();
        CK(cudaMemcpy(g.z, Z.data(), sizeof(double) * n * n, cudaMemcpyHostToDevice));
        CK(cusolverDnDormtr(g.h, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, n, g.a,
                            n, g.tau, g.z, n, g.work, g.lwork, g.info));
        CK(cudaMemcpy(g.a, g.z, sizeof(double) * n * n, cudaMemcpyDeviceToDevice));
        CK(cudaDeviceSynchronize());
        const double t3 = now_ms();
        st[0] = t1 - t0;
        st[1] = t2 - t1;
        st[2] = t3 - t2;
    }
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(V.data(), g.a, sizeof(double) * n * n, cudaMemcpyDeviceToHost));
    int info = 0;
    CK(cudaMemcpy(&info, g.info, sizeof info, cudaMemcpyDeviceToHost));
    if (info) fprintf(stderr, "variant %d: info %d\n", variant, info);
}
} // namespace

int main(int argc, char **argv) {
    const int n = argc > 1 ? atoi(argv[1]) : 512, r = 60;
    if (n < 2) return 1;
    std::vector<double> G((size_t)n * r), C((size_t)n * n);
    srand(3);
    for (double &x : G) x = rand() / (double)RAND_MAX - 0.5;
    std::vector<double> s(n);
    for (int i = 0; i < n; i++) s[i] = std::pow(10.0, 2.0 * i / n); // condition ~1e4
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double a = 0;
            for (int k = 0; k < r; k++) a += G[(size_t)i * r + k] * G[(size_t)j * r + k];
            C[(size_t)i * n + j] = s[i] * s[j] * (0.02 * a + (i == j ? 1.0 : 0.0));
        }
    gpu g{};
    g.n = n;
    CK(cusolverDnCreate(&g.h));
    CK(cublasCreate(&g.b));
    CK(cusolverDnCreateParams(&g.params));
    CK(cudaMalloc(&g.a, sizeof(double) * n * n));
    CK(cudaMalloc(&g.z, sizeof(double) * n * n));
    CK(cudaMalloc(&g.w, sizeof(double) * n));
    CK(cudaMalloc(&g.d, sizeof(double) * n));
    CK(cudaMalloc(&g.e, sizeof(double) * n));
    CK(cudaMalloc(&g.tau, sizeof(double) * n));
    CK(cudaMalloc(&g.info, sizeof(int)));
    int l1 = 0, l2 = 0, l3 = 0;
    CK(cusolverDnDsyevd_bufferSize(g.h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, g.a,
                                   n, g.w, &l1));
    CK(cusolverDnDsytrd_bufferSize(g.h, CUBLAS_FILL_MODE_LOWER, n, g.a, n, g.d, g.e, g.tau, &l2));
    CK(cusolverDnDormtr_bufferSize(g.h, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n,
                                   n, g.a, n, g.tau, g.z, n, &l3));
    g.lwork = std::max(l1, std::max(l2, l3));
    CK(cudaMalloc(&g.work, sizeof(double) * g.lwork));
    size_t xd = 0, xh = 0;
    CK(cusolverDnXsyevd_bufferSize(g.h, g.params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                   n, CUDA_R_64F, g.a, n, CUDA_R_64F, g.w, CUDA_R_64F, &xd, &xh));
    g.xwork_bytes = xd;
    CK(cudaMalloc(&g.xwork, xd > 0 ? xd : 1));
    g.xhost.resize(xh > 0 ? xh : 1);
    const char *names[4] = {"Dsyevd", "Xsyevd", "split, dstedc", "split, dstemr"};
    std::vector<double> V((size_t)n * n), w(n);
    for (int threads : {1, 8}) {
        openblas_set_num_threads(threads);
        for (int v = 0; v < 4; v++) {
            if (v < 2 && threads > 1) continue; // no host BLAS in the GPU's solvers
            std::vector<double> tot, a, b, c;
            for (int rep = 0; rep < 18; rep++) {
                double st[3];
                run(g, v, C, V, w, st);
                if (rep < 3) continue;
                tot.push_back(st[0] + st[1] + st[2]);
                a.push_back(st[0]);
                b.push_back(st[1]);
                c.push_back(st[2]);
            }
            double rec, orth;
            check(n, C, V, w, &rec, &orth);
            printf("n %d, %-14s (%d host threads): %.3f ms (GPU reduction and d, e back %.3f, "
                   "host %.3f, up and back-transform %.3f); reconstruction %.1e, orthogonality "
                   "%.1e\n",
                   n, names[v], threads, median(tot), median(a), median(b), median(c), rec, orth);
        }
    }
    return 0;
}
