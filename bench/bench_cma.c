/* bench_cma.c: the CMA-ES work between one generation's losses and the next generation's
 * candidates (tell, then ask), the part of a generation the GPU waits for, at the painter's size
 * (n 512, lambda 50, 20 generations on a quadratic), with and without pbw_cma_settle between ask
 * and tell (the painter calls it while the GPU evaluates a generation). The eigensolve every
 * other generation is timed apart and left out of both (on a GPU the painter runs it through
 * cuSOLVER).
 *
 *   build/bench_cma [generations]    per mode, the median milliseconds of the generations whose
 *                                    tell decomposes C and of those whose tell does not
 */
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "paint/pbw_cma.h"

static double g_eigh_s; /* the eigensolves' time in the current measurement */

/* LAPACK in place on a copy, the copy counted with the solve: the GPU's solver reads C itself */
static int timed_eigh(int n, const double *C, double *B, double *w) {
    double t = bench_now();
    memcpy(B, C, (size_t)n * n * sizeof *B);
    int rc = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, B, n, w) != 0;
    g_eigh_s += bench_now() - t;
    return rc ? -1 : 0;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    if (n == 0) return NAN;
    qsort(v, n, sizeof *v, cmp_d);
    return v[n / 2];
}

/* Median milliseconds of tell + ask (eigensolves excluded) over the generations without (ms[0])
 * and with (ms[1]) a decomposition, and of settle. */
static int run(int settle, int gens, double ms[2], double *settle_ms) {
    const int n = 512;
    float *x0 = calloc(n, sizeof *x0);
    pbw_cma_opts o;
    pbw_cma_opts_default(&o);
    o.eigh = timed_eigh;
    pbw_cma *c = NULL;
    pbw_err err;
    if (!x0 || pbw_cma_new(&c, n, x0, &o, &err)) return -1;
    const int lam = pbw_cma_lambda(c);
    float *X = malloc((size_t)lam * n * sizeof *X);
    double *f = malloc((size_t)lam * sizeof *f), *crit[2] = {calloc(gens, sizeof(double)),
                                                            calloc(gens, sizeof(double))};
    double *st = calloc(gens, sizeof *st);
    int nc[2] = {0, 0};
    pbw_cma_ask(c, X);
    for (int g = 0; g < gens; g++) {
        double t0 = bench_now();
        if (settle) pbw_cma_settle(c); /* what overlaps the GPU's evaluation */
        st[g] = bench_now() - t0;
        for (int k = 0; k < lam; k++) {
            double s = 0;
            for (int i = 0; i < n; i++) s += (1.0 + i % 7) * X[(size_t)k * n + i] * X[(size_t)k * n + i];
            f[k] = s;
        }
        g_eigh_s = 0;
        t0 = bench_now();
        if (pbw_cma_tell(c, X, f, &err)) return -1;
        pbw_cma_ask(c, X);
        const double t = bench_now() - t0 - g_eigh_s;
        const int dec = g_eigh_s > 0;
        crit[dec][nc[dec]++] = t;
    }
    ms[0] = 1e3 * median(crit[0], nc[0]);
    ms[1] = 1e3 * median(crit[1], nc[1]);
    *settle_ms = 1e3 * median(st, gens);
    pbw_cma_free(c);
    free(x0), free(X), free(f), free(crit[0]), free(crit[1]), free(st);
    return 0;
}

int main(int argc, char **argv) {
    const int gens = argc > 1 ? atoi(argv[1]) : 20;
    if (gens < 3) {
        fprintf(stderr, "bench_cma: at least 3 generations\n");
        return 2;
    }
    double a[2], b[2], sa, sb;
    printf("n 512, lambda 50, %d generations; tell + ask in ms (median), eigensolves left out:\n",
           gens);
    for (int round = 0; round < 2; round++) { /* the two modes alternate, twice */
        if (run(0, gens, a, &sa) || run(1, gens, b, &sb)) {
            fprintf(stderr, "bench_cma: CMA-ES failed\n");
            return 1;
        }
        printf("  without settle: %.2f (no decomposition) / %.2f (decomposition); with settle "
               "between: %.2f / %.2f, settle itself %.2f (overlapped in the painter)\n",
               a[0], a[1], b[0], b[1], sb);
    }
    return 0;
}
