/* test_optim.c: the painting optimizers, CMA-ES (src/paint/pbw_cma.c) and Adam with the
 * one-cycle schedule (src/paint/pbw_adam.c).
 *
 * CMA-ES: strategy constants against pycma's, evaluation counts on sphere, ellipsoid and
 * Rosenbrock against pycma's counts, reproducibility by seed, the kept-point rule, errors.
 * Adam: the trajectories (lr, beta1, parameters) of torch.optim.Adam + OneCycleLR written by
 * tools/reference/adam_onecycle.py (torch 1.13) into tests/fixtures/optim/.
 *
 * Where the reference counts come from. A published table of CMA-ES evaluation counts for
 * exactly these set-ups (start point, sigma0, target 1e-8, default population, active CMA) was
 * not found; the tutorial (Hansen, arXiv:1604.00772) gives the algorithm and constants but no
 * table. So the reference is pycma itself, the implementation the paint-by-word reference
 * calls: `pip install cma` (cma 4.5.0, numpy 2.4) into python3, then
 *
 *     es = cma.CMAEvolutionStrategy(n * [x0], sigma0,
 *                                   {'seed': s, 'ftarget': 1e-8, 'verbose': -9})
 *     es.optimize(f);  es.result.evaluations            # for s = 1..11, median below
 *
 * with f from cma.ff (sphere; elli = sum 1e6^(i/(n-1)) x_i^2, condition 1e6; rosen =
 * sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2), all with pycma's defaults (active CMA, CSA; for
 * n < 300 pycma 4.5 still uses CSA, as pycma 3.x did for every n). The medians over 11 seeds:
 *
 *     function    n  x0   sigma0 lambda  pycma median   pbw median (11 seeds, this code)
 *     sphere     10  1    1      10       1370          1350
 *     sphere     30  1    1      14       3766          3738
 *     sphere    100  1    1      17      11016         10846
 *     elli       10  1    1      10       4060          3940
 *     elli       30  1    1      14      27076         27384
 *     rosen      10  0.1  0.3    10       4880          5020
 *     rosen      30  0.1  0.3    14      34314         34860 (1 of 11 runs ends in the
 *                                                local minimum near f = 3.99, as CMA-ES runs
 *                                                on Rosenbrock sometimes do)
 *
 * One published figure fits these set-ups: pycma's documentation of cma.fmin runs Rosenbrock in
 * 10-D from 0.1 with sigma0 0.3 and asserts fewer than 8000 evaluations to f < 1e-12 (with its
 * option CMA_diagonal=100); our Rosenbrock 10-D count to 1e-8 is also checked against that.
 *
 * Pass criterion (issue 5): the median count of our runs (odd number of seeds, different
 * seeds from pycma's since the generators differ) is at most 1.5x pycma's median. Run-to-run
 * spread is about +-10% (table above), so 1.5x leaves room for noise but catches a broken
 * mechanism: measured on the ellipsoid (10-D, 30-D), dropping the rank-mu update costs 2.0x and
 * dropping step-size adaptation 3.3x to 5.7x. Dropping the active (negative) update costs only
 * 1.3x to 1.4x, so optim_cma_ellipsoid also runs with active=0 and requires the active runs to
 * be clearly faster. A run counts evaluations up to and including the first generation whose
 * best sample has f < 1e-8, evaluated on the float32 samples ask() hands out.
 */
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "paint/pbw_adam.h"
#include "paint/pbw_cma.h"
#include "pbw_test.h"

/* ------------------------------------------------------------------ CMA-ES: test functions */

static double f_sphere(const float *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

static double f_elli(const float *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += pow(1e6, (double)i / (n - 1)) * (double)x[i] * x[i];
    return s;
}

static double f_rosen(const float *x, int n) {
    double s = 0;
    for (int i = 0; i < n - 1; i++) {
        double a = (double)x[i + 1] - (double)x[i] * x[i], b = 1.0 - x[i];
        s += 100.0 * a * a + b * b;
    }
    return s;
}

typedef double (*test_fn)(const float *, int);

/* Evaluations until the best sample has f < 1e-8, or -1 if the run stopped or spent
 * max_evals first. */
static long cma_run_opt(test_fn fn, int n, float x0, double sigma0, uint64_t seed,
                        long max_evals, int active) {
    pbw_cma_opts o;
    pbw_cma_opts_default(&o);
    o.active = active;
    o.lambda = 0; /* the library default 4 + floor(3 ln n), as pycma's */
    o.sigma0 = sigma0;
    o.seed = seed;
    float *x = malloc((size_t)n * sizeof *x);
    for (int i = 0; i < n; i++) x[i] = x0;
    pbw_cma *c = NULL;
    pbw_err err;
    if (pbw_cma_new(&c, n, x, &o, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        free(x);
        return -1;
    }
    int lam = pbw_cma_lambda(c);
    float *X = malloc((size_t)lam * n * sizeof *X);
    double *f = malloc((size_t)lam * sizeof *f);
    long got = -1;
    while (!pbw_cma_stop(c) && pbw_cma_evaluations(c) < max_evals) {
        pbw_cma_ask(c, X);
        for (int k = 0; k < lam; k++) f[k] = fn(X + (size_t)k * n, n);
        if (pbw_cma_tell(c, X, f, &err)) {
            fprintf(stderr, "  %s\n", err.msg);
            break;
        }
        if (pbw_cma_best_f(c) < 1e-8) {
            got = pbw_cma_evaluations(c);
            break;
        }
    }
    pbw_cma_free(c);
    free(X);
    free(f);
    free(x);
    return got;
}

static long cma_run(test_fn fn, int n, float x0, double sigma0, uint64_t seed, long max_evals) {
    return cma_run_opt(fn, n, x0, sigma0, seed, max_evals, 1);
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* Median over seeds 1..nseeds (odd); failures count as larger than any success. */
static void check_counts(const char *name, test_fn fn, int n, float x0, double sigma0,
                         int nseeds, long pycma_median) {
    long ev[16];
    PBW_ASSERT(nseeds <= 16 && nseeds % 2 == 1);
    for (int s = 0; s < nseeds; s++) {
        ev[s] = cma_run(fn, n, x0, sigma0, (uint64_t)(s + 1), 10 * pycma_median);
        if (ev[s] < 0) ev[s] = 1000 * pycma_median;
    }
    qsort(ev, (size_t)nseeds, sizeof *ev, cmp_long);
    long med = ev[nseeds / 2];
    printf("  %-6s n=%-3d median %6ld evals (runs %ld..%ld), pycma %6ld, ratio %.2f\n", name, n,
           med, ev[0], ev[nseeds - 1], pycma_median, (double)med / pycma_median);
    CHECK_MSG(med <= 1.5 * pycma_median, "%s n=%d: median %ld > 1.5 x pycma's %ld", name, n, med,
              pycma_median);
}

PBW_TEST(optim_cma_sphere) {
    check_counts("sphere", f_sphere, 10, 1.0f, 1.0, 5, 1370);
    check_counts("sphere", f_sphere, 30, 1.0f, 1.0, 5, 3766);
    check_counts("sphere", f_sphere, 100, 1.0f, 1.0, 3, 11016);
}

PBW_TEST(optim_cma_ellipsoid) {
    check_counts("elli", f_elli, 10, 1.0f, 1.0, 5, 4060);
    check_counts("elli", f_elli, 30, 1.0f, 1.0, 3, 27076);
    /* the active update must pay: measured medians 3890 (active) vs 5280 (positive weights
     * only), ratio 0.74; require below 0.9 */
    long on[5], off[5];
    for (int s = 0; s < 5; s++) {
        on[s] = cma_run_opt(f_elli, 10, 1.0f, 1.0, (uint64_t)(s + 1), 40600, 1);
        off[s] = cma_run_opt(f_elli, 10, 1.0f, 1.0, (uint64_t)(s + 1), 40600, 0);
        if (on[s] < 0) on[s] = 40600;
        if (off[s] < 0) off[s] = 40600;
    }
    qsort(on, 5, sizeof *on, cmp_long);
    qsort(off, 5, sizeof *off, cmp_long);
    printf("  elli   n=10  active %ld vs positive-only %ld evals, ratio %.2f\n", on[2], off[2],
           (double)on[2] / off[2]);
    CHECK_MSG(on[2] < 0.9 * off[2], "active CMA (%ld evals) not faster than without (%ld)", on[2],
              off[2]);
}

PBW_TEST(optim_cma_rosenbrock) {
    check_counts("rosen", f_rosen, 10, 0.1f, 0.3, 5, 4880);
    check_counts("rosen", f_rosen, 30, 0.1f, 0.3, 3, 34314);
    /* pycma's documented bound for 10-D (see the file comment) */
    long ev[5];
    for (int s = 0; s < 5; s++) {
        ev[s] = cma_run(f_rosen, 10, 0.1f, 0.3, (uint64_t)(s + 101), 8000);
        if (ev[s] < 0) ev[s] = 8000;
    }
    qsort(ev, 5, sizeof *ev, cmp_long);
    CHECK_MSG(ev[2] < 8000, "rosen 10-D median %ld not below pycma's documented 8000", ev[2]);
}

/* Constants against pycma 4.5.0's (es.sp.weights, es.sm.parameters(), es.adapt_sigma with
 * CSA, es.sm.lazy_update_gap), printed with 17 digits. Tolerance 1e-12 relative: both are the
 * same closed formulas in double, evaluated in a possibly different order. */
PBW_TEST(optim_cma_constants_match_pycma) {
    struct {
        int n, lambda;
        int lam, mu;
        double mueff, c1, cmu, cc, cs, damps, sumneg, w0, wlast, gap;
    } ref[] = {
        {10, 0, 10, 5, 3.1672992814107017, 0.015283824524751714, 0.02355177665041747,
         0.29499038303562225, 0.31961425291063339, 1.3196142529106334, -1.648945714440647,
         0.45627264690340597, -0.54974991769738535, 0.2574956920299673},
        {512, 50, 50, 25, 13.951320940285154, 7.59039665277753e-06, 9.2903379902929185e-05,
         0.0078039212804306467, 0.030156500813589882, 1.0301565008135898, -1.0817020506757495,
         0.14103680841433661, -0.076611215872315772, 1.9435283128376852},
    };
    for (size_t r = 0; r < sizeof ref / sizeof ref[0]; r++) {
        int n = ref[r].n;
        float *x = calloc((size_t)n, sizeof *x);
        pbw_cma_opts o;
        pbw_cma_opts_default(&o);
        o.lambda = ref[r].lambda;
        pbw_cma *c = NULL;
        pbw_err err;
        CHECK(pbw_cma_new(&c, n, x, &o, &err) == 0);
        free(x);
        if (!c) continue;
        pbw_cma_params p;
        pbw_cma_get_params(c, &p);
        const double *w = pbw_cma_weights(c);
        CHECK(p.lambda == ref[r].lam);
        CHECK(p.mu == ref[r].mu);
#define REL(a, b) CHECK_NEAR((a), (b), 1e-12 * fabs(b))
        REL(p.mueff, ref[r].mueff);
        REL(p.c1, ref[r].c1);
        REL(p.cmu, ref[r].cmu);
        REL(p.cc, ref[r].cc);
        REL(p.cs, ref[r].cs);
        REL(p.damps, ref[r].damps);
        REL(p.sum_neg, ref[r].sumneg);
        REL(w[0], ref[r].w0);
        REL(w[p.lambda - 1], ref[r].wlast);
        REL(p.eigen_gap, ref[r].gap);
#undef REL
        /* zero decay of C by construction of the negative weights: c1 + cmu * sum(w) = 0 */
        double sw = 0;
        for (int i = 0; i < p.lambda; i++) sw += w[i];
        CHECK_NEAR(p.c1 + p.cmu * sw, 0.0, 1e-15);
        pbw_cma_free(c);
    }
    /* library default population 4 + floor(3 ln n) */
    int ns[] = {2, 10, 30, 100, 512}, lams[] = {6, 10, 14, 17, 22};
    for (int i = 0; i < 5; i++) {
        float *x = calloc((size_t)ns[i], sizeof *x);
        pbw_cma_opts o;
        pbw_cma_opts_default(&o);
        o.lambda = 0;
        pbw_cma *c = NULL;
        pbw_err err;
        CHECK(pbw_cma_new(&c, ns[i], x, &o, &err) == 0);
        if (c) CHECK_MSG(pbw_cma_lambda(c) == lams[i], "n=%d: lambda %d", ns[i], pbw_cma_lambda(c));
        pbw_cma_free(c);
        free(x);
    }
    /* painting defaults */
    pbw_cma_opts o;
    pbw_cma_opts_default(&o);
    CHECK(o.lambda == 50 && o.sigma0 == 0.5 && o.seed == 1 && o.active == 1);
}

/* Runs g generations on the ellipsoid and writes every sample into out (g * lambda * n).
 * settle: 0 never calls pbw_cma_settle; 1 between ask and tell (as the painter); 2 twice
 * there and once more after each tell; 3 as 1 and 4 as 0, with row t % lambda of generation
 * t moved before it is evaluated and told (a caller's repair: not the sample settle saw).
 * lambda 0: the library default. */
/* A strategy on the n-dimensional ellipsoid's start point (x_i = 0.3 i); NULL on failure. */
static pbw_cma *ellipsoid_cma(int n, const pbw_cma_opts *o) {
    float *x = calloc((size_t)n, sizeof *x);
    pbw_cma *c = NULL;
    pbw_err err;
    if (x) {
        for (int i = 0; i < n; i++) x[i] = 0.3f * (float)i;
        if (pbw_cma_new(&c, n, x, o, &err)) c = NULL;
    }
    free(x); /* the strategy keeps its own copy */
    return c;
}

static void sample_run_opt(uint64_t seed, int n, int g, int lambda, int settle, float *out,
                           int *lam_out) {
    pbw_cma_opts o;
    pbw_cma_opts_default(&o);
    o.lambda = lambda;
    o.seed = seed;
    pbw_cma *c = ellipsoid_cma(n, &o);
    pbw_err err;
    if (!c) return;
    int lam = pbw_cma_lambda(c);
    *lam_out = lam;
    double *f = malloc((size_t)lam * sizeof *f);
    for (int t = 0; t < g; t++) {
        float *X = out + (size_t)t * lam * n;
        pbw_cma_ask(c, X);
        const int calls = settle == 3 ? 1 : settle == 4 ? 0 : settle;
        for (int s = 0; s < calls; s++) pbw_cma_settle(c);
        if (settle >= 3)
            for (int i = 0; i < n; i++) X[(size_t)(t % lam) * n + i] *= 1.5f;
        for (int k = 0; k < lam; k++) f[k] = f_elli(X + (size_t)k * n, n);
        pbw_cma_tell(c, X, f, &err);
        if (settle == 2) pbw_cma_settle(c);
    }
    pbw_cma_free(c);
    free(f);
}

static void sample_run(uint64_t seed, int n, int g, float *out, int *lam_out) {
    sample_run_opt(seed, n, g, 0, 0, out, lam_out);
}

/* pbw_cma_settle moves work, never changes it: the same samples bit for bit whether and when
 * it is called, at a small size (eigendecompositions every few generations) and at the
 * painter's (n 512, lambda 50: one every other generation, negative weights; settle measures
 * the samples' Mahalanobis lengths for those weights ahead of tell). A row the caller moves
 * before tell is told as moved with or without settle (against a run that moves it unsettled). */
PBW_TEST(optim_cma_settle_same_samples) {
    const int ns[2] = {12, 512}, gs[2] = {40, 7}, lams[2] = {0, 50};
    for (int t = 0; t < 2; t++) {
        size_t total = (size_t)gs[t] * (lams[t] ? lams[t] : 64) * ns[t];
        float *ref = calloc(total, sizeof *ref), *got = calloc(total, sizeof *got);
        int lam = 0;
        sample_run_opt(3, ns[t], gs[t], lams[t], 0, ref, &lam);
        CHECK(lam > 0);
        size_t used = (size_t)gs[t] * lam * ns[t];
        for (int mode = 1; mode <= 2; mode++) {
            memset(got, 0, total * sizeof *got);
            sample_run_opt(3, ns[t], gs[t], lams[t], mode, got, &lam);
            size_t diff = 0;
            for (size_t i = 0; i < used; i++) diff += ref[i] != got[i];
            printf("  n=%d lambda=%d, %d generations, settle mode %d: %zu of %zu values differ\n",
                   ns[t], lam, gs[t], mode, diff, used);
            CHECK(diff == 0);
        }
        /* moved rows: the reference moves them too, without settle */
        sample_run_opt(3, ns[t], gs[t], lams[t], 4, ref, &lam);
        sample_run_opt(3, ns[t], gs[t], lams[t], 3, got, &lam);
        size_t diff = 0;
        for (size_t i = 0; i < used; i++) diff += ref[i] != got[i];
        printf("  n=%d lambda=%d, rows moved before tell, settled vs not: %zu of %zu values differ\n",
               ns[t], lam, diff, used);
        CHECK(diff == 0);
        free(ref);
        free(got);
    }
}

/* Eigensolves counted, with the iteration each came after (a caller's solver: LAPACK's). */
static int eig_calls, eig_iter_now, eig_iters[64];
static int counting_eigh(int n, const double *C, double *B, double *w) {
    if (eig_calls < 64) eig_iters[eig_calls] = eig_iter_now;
    eig_calls++;
    for (int i = 0; i < n; i++) /* C's upper triangle, mirrored */
        for (int j = 0; j < n; j++)
            B[(size_t)i * n + j] = i < j ? C[(size_t)i * n + j] : C[(size_t)j * n + i];
    return LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, B, n, w) == 0 ? 0 : -1;
}

/* g generations of the ellipsoid in n dimensions with maxiter (0: the default), the solver
 * counted; then, where next, settle() (when settle) and one more ask past the g-th tell. Every
 * sample into out. */
static void counted_run(int n, int g, long maxiter, int next, int settle, float *out,
                        int *lam_out) {
    pbw_cma_opts o;
    pbw_cma_opts_default(&o);
    o.lambda = 0;
    o.seed = 5;
    o.maxiter = maxiter;
    o.eigh = counting_eigh;
    eig_calls = 0;
    eig_iter_now = 0;
    pbw_cma *c = ellipsoid_cma(n, &o);
    pbw_err err;
    if (!c) return;
    const int lam = pbw_cma_lambda(c);
    *lam_out = lam;
    double f[64];
    for (int t = 0; t < g; t++) {
        float *X = out + (size_t)t * lam * n;
        pbw_cma_ask(c, X);
        for (int k = 0; k < lam; k++) f[k] = f_elli(X + (size_t)k * n, n);
        eig_iter_now = t + 1;
        pbw_cma_tell(c, X, f, &err);
    }
    if (settle) pbw_cma_settle(c);
    if (next) pbw_cma_ask(c, out + (size_t)g * lam * n);
    pbw_cma_free(c);
}

/* The decomposition due at the last iteration (maxiter) is left out of that tell, where no ask
 * would use it (the painter's last generation: ~6 ms of a GPU edit), and made by an ask (or a
 * settle) that follows anyway: that ask draws the same samples, bit for bit, as a run without
 * maxiter. Where no decomposition is due at maxiter, maxiter changes nothing. n 12 decomposes
 * at every iteration; n 100 (pycma's gap 1.14 iterations) at every other. */
PBW_TEST(optim_cma_last_decomposition_deferred) {
    const int ns[2] = {12, 100};
    for (int c = 0; c < 2; c++) {
        const int n = ns[c], g = 12;
        float *ref = calloc((size_t)(g + 1) * 64 * n, sizeof *ref);
        float *got = calloc((size_t)(g + 1) * 64 * n, sizeof *got);
        int lam = 0;
        counted_run(n, g, 0, 0, 0, ref, &lam);
        /* the last iteration up to g with a decomposition, and the last one without */
        int due = 0, not_due = 0;
        for (int t = 2; t <= g; t++) {
            int has = 0;
            for (int k = 0; k < eig_calls && k < 64; k++) has |= eig_iters[k] == t;
            if (has) due = t;
            else not_due = t;
        }
        CHECK(lam > 0 && due >= 2);
        const int last[2] = {due, not_due};
        for (int which = 0; which < 2; which++) {
            const int m = last[which];
            if (m < 2) continue; /* n 12: none without */
            counted_run(n, m, 0, 0, 0, ref, &lam);
            const int plain = eig_calls;
            counted_run(n, m, m, 0, 0, got, &lam);
            const int deferred = eig_calls;
            printf("  n=%d lambda=%d, maxiter %d (%s): %d solves without maxiter, %d with\n", n,
                   lam, m, which ? "none due" : "one due", plain, deferred);
            CHECK(deferred == plain - (which ? 0 : 1));
            /* an ask after the last tell (with or without settle first) decomposes first */
            counted_run(n, m, 0, 1, 0, ref, &lam);
            const size_t at = (size_t)m * lam * n, len = (size_t)lam * n * sizeof(float);
            for (int settle = 0; settle < 2; settle++) {
                memset(got + at, 0, len);
                counted_run(n, m, m, 1, settle, got, &lam);
                CHECK(eig_calls == plain);
                CHECK(memcmp(ref + at, got + at, len) == 0);
            }
        }
        if (c == 1) CHECK(not_due >= 2); /* n 100 does not decompose every iteration */
        free(ref);
        free(got);
    }
}

PBW_TEST(optim_cma_reproducible_by_seed) {
    /* n = 12, 40 generations: long enough for several eigendecompositions to feed back */
    int n = 12, g = 40, lam = 0;
    size_t total = (size_t)g * 64 * n;
    float *a = calloc(total, sizeof *a), *b = calloc(total, sizeof *b), *d = calloc(total, sizeof *d);
    sample_run(7, n, g, a, &lam);
    sample_run(7, n, g, b, &lam);
    sample_run(8, n, g, d, &lam);
    size_t used = (size_t)g * lam * n;
    CHECK(lam > 0);
    CHECK_MSG(memcmp(a, b, used * sizeof *a) == 0, "same seed gave different samples");
    size_t same = 0;
    for (size_t i = 0; i < (size_t)lam * n; i++) same += a[i] == d[i];
    CHECK_MSG(same == 0, "seeds 7 and 8 share %zu of %d first-generation values", same, lam * n);
    /* the generator's normals look normal: first generation of seed 7 with sigma 0.5 around
     * x0, so (x - x0) / 0.5 ~ N(0, 1); mean within 5 standard errors, variance within 20% */
    double s = 0, s2 = 0;
    int cnt = 0;
    for (int t = 0; t < 1; t++)
        for (int k = 0; k < lam; k++)
            for (int i = 0; i < n; i++) {
                double z = (a[(size_t)k * n + i] - 0.3 * i) / 0.5;
                s += z;
                s2 += z * z;
                cnt++;
            }
    CHECK_NEAR(s / cnt, 0.0, 5.0 / sqrt(cnt));
    CHECK_NEAR(s2 / cnt, 1.0, 0.2 * 1.0 + 5.0 * sqrt(2.0 / cnt));
    free(a);
    free(b);
    free(d);
}

/* The kept point and tell()'s use of the rows, with losses chosen by hand. */
PBW_TEST(optim_cma_kept_point_rule) {
    int n = 3;
    float x0[3] = {1.0f, -2.0f, 0.25f};
    pbw_cma_opts o;
    pbw_cma_opts_default(&o);
    o.lambda = 4;
    pbw_cma *c = NULL;
    pbw_err err;
    CHECK(pbw_cma_new(&c, n, x0, &o, &err) == 0);
    if (!c) return;
    CHECK(pbw_cma_tell(c, NULL, (double[]){1, 2, 3, 4}, &err) != 0); /* no ask yet */
    CHECK(memcmp(pbw_cma_kept(c), x0, sizeof x0) == 0);
    CHECK(isinf(pbw_cma_best_f(c)));

    float X[12], expect[3];
    memcpy(expect, x0, sizeof x0);
    /* generation 1: the first always improves; the best is row 1 */
    pbw_cma_ask(c, X);
    CHECK(pbw_cma_tell(c, X, (double[]){3, 1, 2, 4}, &err) == 0);
    for (int i = 0; i < n; i++) expect[i] = expect[i] * 0.5f + 0.5f * X[n + i];
    CHECK(memcmp(pbw_cma_kept(c), expect, sizeof expect) == 0);
    CHECK(memcmp(pbw_cma_best_x(c), X + n, sizeof expect) == 0);
    CHECK(pbw_cma_best_f(c) == 1);
    /* generation 2: nothing beats 1 (a tie does not count): kept stays */
    pbw_cma_ask(c, X);
    CHECK(pbw_cma_tell(c, X, (double[]){5, 1, NAN, 7}, &err) == 0);
    CHECK(memcmp(pbw_cma_kept(c), expect, sizeof expect) == 0);
    CHECK(pbw_cma_best_f(c) == 1);
    /* generation 3: row 3 wins with 0.5; NaN ranks last and never wins */
    pbw_cma_ask(c, X);
    CHECK(pbw_cma_tell(c, X, (double[]){NAN, 0.75, 2, 0.5}, &err) == 0);
    for (int i = 0; i < n; i++) expect[i] = expect[i] * 0.5f + 0.5f * X[3 * n + i];
    CHECK(memcmp(pbw_cma_kept(c), expect, sizeof expect) == 0);
    CHECK(pbw_cma_best_f(c) == 0.5);
    CHECK(pbw_cma_iterations(c) == 3 && pbw_cma_evaluations(c) == 12);

    /* rows the caller changed are used as given: the new mean is w1 x_best + w2 x_second
     * (rows left alone enter with their double-precision sample, so both are changed here) */
    pbw_cma_ask(c, X);
    for (int i = 0; i < n; i++) X[2 * n + i] = 10.0f + (float)i;
    for (int i = 0; i < n; i++) X[3 * n + i] = -0.5f * (float)i;
    const double *w = pbw_cma_weights(c);
    CHECK(pbw_cma_mu(c) == 2);
    CHECK(pbw_cma_tell(c, X, (double[]){9, 8, 0.1, 0.2}, &err) == 0);
    for (int i = 0; i < n; i++)
        CHECK_NEAR(pbw_cma_mean(c)[i], w[0] * X[2 * n + i] + w[1] * X[3 * n + i], 1e-12);
    CHECK(pbw_cma_tell(c, X, (double[]){1, 2, 3, 4}, &err) != 0); /* one tell per ask */
    pbw_cma_ask(c, X);
    X[5] = INFINITY;
    CHECK(pbw_cma_tell(c, X, (double[]){1, 2, 3, 4}, &err) != 0);
    CHECK(strstr(err.msg, "not finite") != NULL);
    pbw_cma_free(c);

    /* argument errors */
    pbw_cma_opts_default(&o);
    CHECK(pbw_cma_new(&c, 0, x0, &o, &err) != 0 && c == NULL);
    o.sigma0 = 0;
    CHECK(pbw_cma_new(&c, 3, x0, &o, &err) != 0 && strstr(err.msg, "sigma0"));
    pbw_cma_opts_default(&o);
    o.lambda = 1;
    CHECK(pbw_cma_new(&c, 3, x0, &o, &err) != 0);
    pbw_cma_free(NULL);
}

/* Termination helpers: tolx/tolfun end a converged run; maxiter ends a long one. */
PBW_TEST(optim_cma_termination) {
    int n = 5;
    float x0[5] = {1, 1, 1, 1, 1};
    pbw_cma_opts o;
    pbw_cma_opts_default(&o);
    o.lambda = 0;
    o.sigma0 = 1;
    pbw_cma *c = NULL;
    pbw_err err;
    CHECK(pbw_cma_new(&c, n, x0, &o, &err) == 0);
    if (!c) return;
    int lam = pbw_cma_lambda(c);
    float X[64 * 5];
    double f[64];
    while (!pbw_cma_stop(c)) {
        pbw_cma_ask(c, X);
        for (int k = 0; k < lam; k++) f[k] = f_sphere(X + k * n, n);
        CHECK(pbw_cma_tell(c, X, f, &err) == 0);
    }
    int why = pbw_cma_stop(c);
    CHECK_MSG(why & (PBW_CMA_STOP_TOLFUN | PBW_CMA_STOP_TOLX), "stopped on %s",
              pbw_cma_stop_name(why));
    CHECK(pbw_cma_best_f(c) < 1e-11);
    pbw_cma_free(c);

    o.maxiter = 3;
    CHECK(pbw_cma_new(&c, n, x0, &o, &err) == 0);
    if (!c) return;
    for (int t = 0; t < 3; t++) {
        CHECK(pbw_cma_stop(c) == 0);
        pbw_cma_ask(c, X);
        for (int k = 0; k < lam; k++) f[k] = f_sphere(X + k * n, n);
        pbw_cma_tell(c, X, f, &err);
    }
    CHECK(pbw_cma_stop(c) == PBW_CMA_STOP_MAXITER);
    CHECK(strcmp(pbw_cma_stop_name(pbw_cma_stop(c)), "maxiter") == 0);
    pbw_cma_free(c);
}

/* ------------------------------------------------------------------ Adam + one-cycle */

typedef struct {
    int n, steps, three_phase;
    double max_lr, pct_start, weight_decay;
    char anneal[16];
    float *a, *c, *p0;
    double *lr, *beta1; /* (steps) */
    float *p;           /* (steps, n) parameters after each step */
} adam_fixture;

static void adam_fixture_free(adam_fixture *fx) {
    free(fx->a);
    free(fx->c);
    free(fx->p0);
    free(fx->lr);
    free(fx->beta1);
    free(fx->p);
}

static int read_floats(FILE *fh, float *out, int n) {
    for (int i = 0; i < n; i++)
        if (fscanf(fh, "%f", &out[i]) != 1) return -1;
    return 0;
}

static int adam_fixture_read(const char *path, adam_fixture *fx) {
    memset(fx, 0, sizeof *fx);
    FILE *fh = fopen(path, "r");
    if (!fh) {
        fprintf(stderr, "  cannot open %s (run /usr/bin/python3 tools/reference/adam_onecycle.py)\n",
                path);
        return -1;
    }
    int c = fgetc(fh);
    while (c == '#') { /* comment lines */
        while (c != '\n' && c != EOF) c = fgetc(fh);
        c = fgetc(fh);
    }
    ungetc(c, fh);
    int ok = fscanf(fh, " n %d steps %d config %lf %lf %15s %d %lf", &fx->n, &fx->steps,
                    &fx->max_lr, &fx->pct_start, fx->anneal, &fx->three_phase,
                    &fx->weight_decay) == 7 &&
             fx->n > 0 && fx->n < 4096 && fx->steps > 0 && fx->steps < 100000;
    if (ok) {
        fx->a = malloc((size_t)fx->n * sizeof *fx->a);
        fx->c = malloc((size_t)fx->n * sizeof *fx->c);
        fx->p0 = malloc((size_t)fx->n * sizeof *fx->p0);
        fx->lr = malloc((size_t)fx->steps * sizeof *fx->lr);
        fx->beta1 = malloc((size_t)fx->steps * sizeof *fx->beta1);
        fx->p = malloc((size_t)fx->steps * fx->n * sizeof *fx->p);
        ok = fx->a && fx->c && fx->p0 && fx->lr && fx->beta1 && fx->p;
    }
    ok = ok && fscanf(fh, " a") == 0 && read_floats(fh, fx->a, fx->n) == 0;
    ok = ok && fscanf(fh, " c") == 0 && read_floats(fh, fx->c, fx->n) == 0;
    ok = ok && fscanf(fh, " p0") == 0 && read_floats(fh, fx->p0, fx->n) == 0;
    for (int t = 0; ok && t < fx->steps; t++) {
        int step;
        ok = fscanf(fh, "%d %lf %lf", &step, &fx->lr[t], &fx->beta1[t]) == 3 && step == t + 1 &&
             read_floats(fh, fx->p + (size_t)t * fx->n, fx->n) == 0;
    }
    fclose(fh);
    if (!ok) {
        fprintf(stderr, "  %s: malformed fixture\n", path);
        adam_fixture_free(fx);
        return -1;
    }
    return 0;
}

/* Runs our Adam on the fixture's quadratic and compares every step.
 *   lr, beta1: 1e-12 relative. Same double formulas as PyTorch's Python; only cos() and the
 *     order of a few operations could differ (a few ulp). Measured: 0.
 *   parameters: 1e-6 relative to max(|p|, 1e-2) (issue 5's bound). We reproduce the roundings
 *     of PyTorch's AVX2 kernels, FMAs included, and measure 0 here; the bound leaves room for
 *     a PyTorch build whose kernels do not fuse (measured 2.2e-6 worst when we do not fuse, so
 *     fusing matters). The 1e-2 floor keeps parameters that cross zero from turning absolute
 *     float32 noise (~1e-9) into a large relative error. The worst difference is printed. */
static void check_adam_fixture(const char *path) {
    adam_fixture fx;
    if (adam_fixture_read(path, &fx)) {
        CHECK_MSG(0, "fixture %s unreadable", path);
        return;
    }
    pbw_adam_opts o;
    pbw_adam_opts_default(&o, fx.steps);
    o.weight_decay = fx.weight_decay;
    o.schedule.max_lr = fx.max_lr;
    o.schedule.pct_start = fx.pct_start;
    o.schedule.anneal_cos = strcmp(fx.anneal, "cos") == 0;
    o.schedule.three_phase = fx.three_phase;
    pbw_adam adam;
    pbw_err err;
    CHECK(pbw_adam_init(&adam, fx.n, &o, &err) == 0);
    float *p = malloc((size_t)fx.n * sizeof *p), *g = malloc((size_t)fx.n * sizeof *g);
    memcpy(p, fx.p0, (size_t)fx.n * sizeof *p);
    double worst_p = 0, worst_lr = 0;
    int worst_step = 0;
    for (int t = 0; t < fx.steps; t++) {
        for (int i = 0; i < fx.n; i++) g[i] = fx.a[i] * (p[i] - fx.c[i]);
        if (pbw_adam_step(&adam, p, g, &err)) {
            CHECK_MSG(0, "step %d: %s", t + 1, err.msg);
            break;
        }
        double dl = fabs(adam.lr - fx.lr[t]) / fx.lr[t];
        double db = fabs(adam.beta1 - fx.beta1[t]) / fx.beta1[t];
        worst_lr = fmax(worst_lr, fmax(dl, db));
        for (int i = 0; i < fx.n; i++) {
            double ref = fx.p[(size_t)t * fx.n + i];
            double d = fabs(p[i] - ref) / fmax(fabs(ref), 1e-2);
            if (d > worst_p) worst_p = d, worst_step = t + 1;
        }
    }
    printf("  %s: worst relative difference: params %.3g (step %d), lr/beta1 %.3g\n", path,
           worst_p, worst_step, worst_lr);
    CHECK_MSG(worst_p <= 1e-6, "parameters differ from PyTorch by %.3g relative", worst_p);
    CHECK_MSG(worst_lr <= 1e-12, "lr/beta1 differ from PyTorch by %.3g relative", worst_lr);
    /* PyTorch's scheduler allows one more step (at step_num == total_steps), then raises */
    CHECK(pbw_adam_step(&adam, p, g, &err) == 0);
    CHECK(pbw_adam_step(&adam, p, g, &err) != 0);
    pbw_adam_free(&adam);
    free(p);
    free(g);
    adam_fixture_free(&fx);
}

PBW_TEST(optim_adam_onecycle_matches_torch) {
    check_adam_fixture("tests/fixtures/optim/adam_onecycle_default.txt");
    check_adam_fixture("tests/fixtures/optim/adam_onecycle_variants.txt");
}

/* The schedule's landmarks, from OneCycleLR's formulas worked by hand for 100 steps:
 * phase 1 ends at step 0.3 * 100 - 1 = 29 (lr max_lr, beta1 base 0.85); the last step 99 has
 * min_lr = 0.01 / 25 / 1e4 = 4e-8 and beta1 back at 0.95. */
PBW_TEST(optim_onecycle_landmarks) {
    pbw_onecycle s;
    pbw_onecycle_default(&s, 0.01, 100);
    pbw_err err;
    double lr = 0, b1 = 0;
    CHECK(pbw_onecycle_at(&s, 0, &lr, &b1, &err) == 0);
    CHECK_NEAR(lr, 0.01 / 25, 1e-18);
    CHECK_NEAR(b1, 0.95, 1e-15);
    CHECK(pbw_onecycle_at(&s, 29, &lr, &b1, &err) == 0);
    CHECK_NEAR(lr, 0.01, 1e-15); /* end_step is 29.000000000000004: pct a hair under 1 */
    CHECK_NEAR(b1, 0.85, 1e-15);
    CHECK(pbw_onecycle_at(&s, 99, &lr, &b1, &err) == 0);
    CHECK_NEAR(lr, 4e-8, 1e-20);
    CHECK_NEAR(b1, 0.95, 1e-15);
    CHECK(pbw_onecycle_at(&s, 100, &lr, &b1, &err) == 0);
    CHECK(pbw_onecycle_at(&s, 101, &lr, &b1, &err) != 0);
    CHECK(pbw_onecycle_at(&s, -1, &lr, &b1, &err) != 0);
    /* one step: phase 1 ends at 0.3 - 1 < 0, so step 0 lies at the end of phase 2 (min_lr) */
    pbw_onecycle_default(&s, 0.01, 1);
    CHECK(pbw_onecycle_at(&s, 0, &lr, &b1, &err) == 0);
    CHECK_NEAR(lr, 4e-8, 1e-20);
    /* pct_start 1 with one step: phase 1 spans [0, 0], where PyTorch divides 0 by 0 */
    s.pct_start = 1.0;
    CHECK(pbw_onecycle_at(&s, 0, &lr, &b1, &err) != 0 && strstr(err.msg, "zero length"));
    pbw_adam_opts o;
    pbw_adam_opts_default(&o, 100);
    CHECK(o.schedule.max_lr == 0.01 && o.schedule.pct_start == 0.3 && o.eps == 1e-8 &&
          o.schedule.div_factor == 25 && o.schedule.final_div_factor == 1e4 &&
          o.schedule.base_momentum == 0.85 && o.schedule.max_momentum == 0.95 &&
          o.schedule.anneal_cos && o.schedule.cycle_momentum && !o.schedule.three_phase);
    pbw_adam a;
    CHECK(pbw_adam_init(&a, 0, &o, &err) != 0);
    o.schedule.total_steps = 0;
    CHECK(pbw_adam_init(&a, 4, &o, &err) != 0);
}
