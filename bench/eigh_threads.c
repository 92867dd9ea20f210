/* eigh_threads.c: CMA-ES's eigensolve (LAPACKE_dsyevd, n = 512 at 256 px StyleGAN2's w) on 1 to
 * N OpenBLAS threads: whether a many-core host should give it more than the one thread pbw_cma.c
 * uses (one thread keeps samples independent of the thread count; a GPU edit leaves the cores
 * idle while the solve runs).
 *   cc -O2 -Isrc -I/usr/include/x86_64-linux-gnu/openblas-pthread bench/eigh_threads.c \
 *      -lopenblas -llapacke -o build/eigh_threads && build/eigh_threads [n] [reps]
 */
#include <cblas.h>
#include <lapacke.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 512, reps = argc > 2 ? atoi(argv[2]) : 5;
    double *G = malloc(sizeof(double) * n * n), *C = malloc(sizeof(double) * n * n);
    double *A = malloc(sizeof(double) * n * n), *ev = malloc(sizeof(double) * n);
    srand(1);
    for (int i = 0; i < n * n; i++) G[i] = rand() / (double)RAND_MAX - 0.5;
    /* C = G G^T / n + I: symmetric positive definite, like a covariance */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0 / n, G, n, G, n, 0.0, C, n);
    for (int i = 0; i < n; i++) C[i * n + i] += 1.0;
    int maxt = openblas_get_num_threads();
    printf("n %d, %d reps, up to %d threads\n", n, reps, maxt);
    double first = 0;
    for (int t = 1; t <= maxt; t *= 2) {
        openblas_set_num_threads(t);
        double best = 1e9;
        for (int r = 0; r < reps; r++) {
            memcpy(A, C, sizeof(double) * n * n);
            double t0 = bench_now();
            if (LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, A, n, ev)) return 1;
            double dt = bench_now() - t0;
            if (dt < best) best = dt;
        }
        if (t == 1) first = ev[0];
        printf("threads %2d: %.2f ms (best of %d); smallest eigenvalue %.12g (1 thread: %.12g)\n",
               t, 1e3 * best, reps, ev[0], first);
    }
    return 0;
}
