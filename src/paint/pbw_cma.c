/* pbw_cma.c: CMA-ES with active covariance update (see pbw_cma.h for the contract).
 *
 * Notation follows Hansen's tutorial (arXiv:1604.00772): mean m, step size sigma, covariance
 * C = B diag(D^2) B^T, evolution paths pc (for C) and ps (for sigma), samples
 * x_k = m + sigma * y_k with y_k = B (D .* z_k), z_k ~ N(0, I). The constants are pycma's
 * defaults (cma 3.x/4.x: options_parameters.CMAParameters, interfaces...parameters,
 * recombination_weights.RecombinationWeights, sigma_adaptation.CMAAdaptSigmaCSA); where pycma
 * and the tutorial differ slightly, the comment at the constant says which one we follow.
 *
 * The O(lambda n^2) sampling and covariance update are BLAS products (n = 512, lambda = 50:
 * 13 M multiply-adds each). The covariance update is left pending by tell() when no
 * eigendecomposition follows it (pbw_cma_settle applies it, and draws the next generation's
 * normals and directions, while the caller evaluates the generation), so the work between a
 * generation's losses and the next candidates is O(n^2). The O(n^3) eigensolve goes to LAPACK
 * (or the caller's solver) and runs only every eigen_gap iterations.
 */
#include "pbw_cma.h"

#include <float.h>
#include <lapacke.h>
#if __has_include(<cblas.h>)
#include <cblas.h> /* OpenBLAS: openblas_set_num_threads */
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- generator: xoshiro256** seeded through splitmix64; normals by Marsaglia's polar method */

typedef struct {
    uint64_t s[4];
    int have_spare;
    double spare;
} cma_rng;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(cma_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

static void rng_seed(cma_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
    r->have_spare = 0;
    r->spare = 0;
}

/* Uniform in [-1, 1) with 53 random bits. */
static double rng_sym(cma_rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-52 - 1.0; }

static double rng_normal(cma_rng *r) {
    if (r->have_spare) {
        r->have_spare = 0;
        return r->spare;
    }
    double u, v, s;
    do {
        u = rng_sym(r);
        v = rng_sym(r);
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    double f = sqrt(-2.0 * log(s) / s);
    r->spare = v * f;
    r->have_spare = 1;
    return u * f;
}

/* ---- state */

struct pbw_cma {
    int n, lam, mu;
    int active;
    double mueff, cc, cs, c1, cmu, damps, chin, sum_w, eigen_gap;
    double tolfun, tolx, tolcond;
    long maxiter;

    double *w;     /* (lam) weights, best first */
    double *mean;  /* (n) */
    double *mold;  /* (n) */
    double *pc;    /* (n) */
    double *ps;    /* (n) */
    double *C;     /* (n, n) symmetric, both triangles kept */
    double *B;     /* (n, n) column j = eigenvector j */
    double *D;     /* (n) sqrt of eigenvalues */
    double *Xd;    /* (lam, n) the samples of the last ask, double */
    float *Xf;     /* (lam, n) the same rounded to float, as handed out */
    double *Y;     /* (lam, n) (x - mold) / sigma of the last tell, ranked (the pending update's) */
    double *Yw;    /* (lam, n) scratch of the products */
    double *Zn;    /* (lam, n) the next ask's standard normals (z_ready) */
    double *BDz;   /* (lam, n) their directions B (D .* z) (bdz_ready, with B of bdz_stamp) */
    double *tmp;   /* (3n) scratch */
    double *wr;    /* (lam) scratch: learning-rate-scaled weights */
    double *eigA;  /* (n, n) scratch for the eigensolver */
    double *eigv;  /* (n) scratch: eigenvalues */
    double *mnorm; /* (lam) |C^{-1/2} y| of each sample of iteration mnorm_iter, in ask's order */
    long mnorm_iter; /* -1: none (settle() makes them while the GPU evaluates) */
    int *idx;      /* (lam) ranking */
    double sigma;
    int asked;
    int pending;        /* tell's covariance update not applied yet (pend_decay, pc, Y) */
    double pend_decay;
    int z_ready, bdz_ready;
    long eig_count, bdz_stamp; /* decompositions so far; the one BDz was made with */
    long iter, last_eigen;
    int eig_deferred; /* the last iteration's decomposition, left for an ask() that may follow */
    int (*eigh)(int n, const double *C, double *B, double *w); /* opts->eigh */
    cma_rng rng;

    double best_f;
    float *best_x; /* (n) */
    float *kept;   /* (n) */

    double *hist;  /* ring of the best value of each recent iteration */
    int hist_len, hist_count, hist_pos;
    double last_range; /* max - min of the last generation's values */
    int stop;
};

void pbw_cma_opts_default(pbw_cma_opts *o) {
    memset(o, 0, sizeof *o);
    o->lambda = 50;
    o->sigma0 = 0.5;
    o->seed = 1;
    o->active = 1;
    o->tolfun = 1e-11;
    o->tolx = 1e-11;
    o->maxiter = 0;
    o->tolcond = 1e14;
}

/* Weights and learning rates from n and lambda (pycma's defaults). */
static void set_params(pbw_cma *c) {
    int n = c->n, lam = c->lam;
    double N = n;
    double *w = c->w;
    for (int i = 0; i < lam; i++) w[i] = log((lam + 1) / 2.0) - log(i + 1.0);
    int mu = 0;
    double spos = 0, sneg = 0;
    for (int i = 0; i < lam; i++) {
        if (w[i] > 0) {
            mu++;
            spos += w[i];
        } else {
            sneg += w[i];
        }
    }
    double sq = 0;
    for (int i = 0; i < mu; i++) {
        w[i] /= spos;
        sq += w[i] * w[i];
    }
    c->mu = mu;
    c->mueff = 1.0 / sq;
    double mueff = c->mueff;
    /* negative part first normalized to sum -1, as RecombinationWeights.__init__ */
    double mueff_minus = 0;
    if (sneg < 0) {
        double s = 0, s2 = 0;
        for (int i = mu; i < lam; i++) {
            w[i] /= -sneg;
            s += w[i];
            s2 += w[i] * w[i];
        }
        mueff_minus = s * s / s2;
    }

    /* c1 carries pycma's min(1, lambda/6) factor; cmu pycma's 1/4 offset in the numerator
     * (the tutorial's Table 1 has mueff - 2 + 1/mueff). */
    c->c1 = fmin(1.0, lam / 6.0) * 2.0 / ((N + 1.3) * (N + 1.3) + mueff);
    c->cmu = fmin(1.0 - c->c1, 2.0 * (0.25 + mueff - 2.0 + 1.0 / mueff) /
                                   ((N + 2.0) * (N + 2.0) + mueff));
    c->cc = (4.0 + mueff / N) / (N + 4.0 + 2.0 * mueff / N);
    /* pycma's cs (the tutorial has n + mueff + 5 in the denominator), capped at 1/2 */
    c->cs = fmin(0.5, (mueff + 2.0) / (N + mueff + 3.0));
    c->damps = 1.0 + 2.0 * fmax(0.0, sqrt((mueff - 1.0) / (N + 1.0)) - 1.0) + c->cs;
    c->chin = sqrt(N) * (1.0 - 1.0 / (4.0 * N) + 1.0 / (21.0 * N * N));

    /* Negative weights (finalize_negative_weights): the sum of |w^-| is set to 1 + c1/cmu, so
     * that c1 + cmu * sum(w) = 0 (no decay of C); then limited so that C stays positive
     * definite when the negative vectors have squared Mahalanobis length n; then limited by
     * 1 + 2 mueff^- / (mueff + 2). With the default population only the first applies. */
    if (c->active && sneg < 0 && c->cmu > 0) {
        double target = 1.0 + c->c1 / c->cmu;
        target = fmin(target, (1.0 - c->c1 - c->cmu) / c->cmu / N);
        target = fmin(target, 1.0 + 2.0 * mueff_minus / (mueff + 2.0));
        for (int i = mu; i < lam; i++) w[i] *= target;
    } else {
        for (int i = mu; i < lam; i++) w[i] = 0;
    }
    double sw = 0;
    for (int i = 0; i < lam; i++) sw += w[i];
    c->sum_w = sw;
    /* pycma's lazy_update_gap, in iterations */
    c->eigen_gap = 1.0 / (c->c1 + c->cmu + 1e-23) / N / 10.0;
}

void pbw_cma_free(pbw_cma *c) {
    if (!c) return;
    free(c->w);
    free(c->mean);
    free(c->mold);
    free(c->pc);
    free(c->ps);
    free(c->C);
    free(c->B);
    free(c->D);
    free(c->Xd);
    free(c->Xf);
    free(c->Y);
    free(c->Yw);
    free(c->Zn);
    free(c->BDz);
    free(c->tmp);
    free(c->wr);
    free(c->eigA);
    free(c->eigv);
    free(c->mnorm);
    free(c->idx);
    free(c->best_x);
    free(c->kept);
    free(c->hist);
    free(c);
}

int pbw_cma_new(pbw_cma **out, int n, const float *x0, const pbw_cma_opts *opts, pbw_err *err) {
    *out = NULL;
    if (n < 1) return pbw_err_set(err, "cma: dimension must be >= 1, got %d", n);
    if (n > 65536) return pbw_err_set(err, "cma: dimension %d too large for a full covariance", n);
    if (!x0) return pbw_err_set(err, "cma: x0 is NULL");
    if (!opts) return pbw_err_set(err, "cma: opts is NULL");
    if (!(opts->sigma0 > 0) || !isfinite(opts->sigma0))
        return pbw_err_set(err, "cma: sigma0 must be a positive number, got %g", opts->sigma0);
    if (opts->lambda < 0 || opts->lambda == 1 || opts->lambda > 1000000)
        return pbw_err_set(err, "cma: population size must be 0 (default) or in [2, 1e6], got %d",
                           opts->lambda);
    for (int i = 0; i < n; i++)
        if (!isfinite(x0[i])) return pbw_err_set(err, "cma: x0[%d] is not finite", i);

    pbw_cma *c = calloc(1, sizeof *c);
    if (!c) return pbw_err_set(err, "cma: out of memory");
    c->n = n;
    c->lam = opts->lambda ? opts->lambda : 4 + (int)floor(3.0 * log((double)n));
    c->active = opts->active != 0;
    c->tolfun = opts->tolfun;
    c->eigh = opts->eigh;
    c->tolx = opts->tolx;
    c->tolcond = opts->tolcond > 0 ? opts->tolcond : 1e14;
    c->sigma = opts->sigma0;
    int lam = c->lam;
    size_t nn = (size_t)n * (size_t)n, ln = (size_t)lam * (size_t)n;
    c->w = calloc((size_t)lam, sizeof *c->w);
    c->mean = calloc((size_t)n, sizeof *c->mean);
    c->mold = calloc((size_t)n, sizeof *c->mold);
    c->pc = calloc((size_t)n, sizeof *c->pc);
    c->ps = calloc((size_t)n, sizeof *c->ps);
    c->C = calloc(nn, sizeof *c->C);
    c->B = calloc(nn, sizeof *c->B);
    c->D = calloc((size_t)n, sizeof *c->D);
    c->Xd = calloc(ln, sizeof *c->Xd);
    c->Xf = calloc(ln, sizeof *c->Xf);
    c->Y = calloc(ln, sizeof *c->Y);
    c->Yw = calloc(ln, sizeof *c->Yw);
    c->Zn = calloc(ln, sizeof *c->Zn);
    c->BDz = calloc(ln, sizeof *c->BDz);
    c->tmp = calloc(3 * (size_t)n, sizeof *c->tmp);
    c->wr = calloc((size_t)lam, sizeof *c->wr);
    c->eigA = calloc(nn, sizeof *c->eigA);
    c->eigv = calloc((size_t)n, sizeof *c->eigv);
    c->mnorm = calloc((size_t)lam, sizeof *c->mnorm);
    c->mnorm_iter = -1;
    c->idx = calloc((size_t)lam, sizeof *c->idx);
    c->best_x = calloc((size_t)n, sizeof *c->best_x);
    c->kept = calloc((size_t)n, sizeof *c->kept);
    c->hist_len = 10 + (int)ceil(30.0 * n / lam);
    c->hist = calloc((size_t)c->hist_len, sizeof *c->hist);
    if (!c->w || !c->mean || !c->mold || !c->pc || !c->ps || !c->C || !c->B || !c->D || !c->Xd ||
        !c->Xf || !c->Y || !c->Yw || !c->Zn || !c->BDz || !c->tmp || !c->wr || !c->eigA ||
        !c->eigv || !c->mnorm || !c->idx || !c->best_x || !c->kept || !c->hist) {
        pbw_cma_free(c);
        return pbw_err_set(err, "cma: out of memory for n=%d, lambda=%d", n, lam);
    }
    set_params(c);
    c->maxiter = opts->maxiter > 0
                     ? opts->maxiter
                     : 100 + (long)floor(150.0 * (n + 3.0) * (n + 3.0) / sqrt((double)lam));
    for (int i = 0; i < n; i++) {
        c->mean[i] = x0[i];
        c->best_x[i] = x0[i];
        c->kept[i] = x0[i];
        c->C[(size_t)i * n + i] = 1.0;
        c->B[(size_t)i * n + i] = 1.0;
        c->D[i] = 1.0;
    }
    c->best_f = INFINITY;
    rng_seed(&c->rng, opts->seed);
    *out = c;
    return 0;
}

int pbw_cma_dim(const pbw_cma *c) { return c->n; }
int pbw_cma_lambda(const pbw_cma *c) { return c->lam; }
int pbw_cma_mu(const pbw_cma *c) { return c->mu; }
const double *pbw_cma_mean(const pbw_cma *c) { return c->mean; }
double pbw_cma_sigma(const pbw_cma *c) { return c->sigma; }
double pbw_cma_best_f(const pbw_cma *c) { return c->best_f; }
const float *pbw_cma_best_x(const pbw_cma *c) { return c->best_x; }
const float *pbw_cma_kept(const pbw_cma *c) { return c->kept; }
long pbw_cma_iterations(const pbw_cma *c) { return c->iter; }
long pbw_cma_evaluations(const pbw_cma *c) { return c->iter * c->lam; }
const double *pbw_cma_weights(const pbw_cma *c) { return c->w; }

double pbw_cma_condition(const pbw_cma *c) {
    double lo = c->D[0], hi = c->D[0];
    for (int i = 1; i < c->n; i++) {
        lo = fmin(lo, c->D[i]);
        hi = fmax(hi, c->D[i]);
    }
    return (hi / lo) * (hi / lo);
}

void pbw_cma_get_params(const pbw_cma *c, pbw_cma_params *p) {
    double sneg = 0;
    for (int i = c->mu; i < c->lam; i++) sneg += c->w[i];
    p->lambda = c->lam;
    p->mu = c->mu;
    p->mueff = c->mueff;
    p->cc = c->cc;
    p->cs = c->cs;
    p->c1 = c->c1;
    p->cmu = c->cmu;
    p->damps = c->damps;
    p->chin = c->chin;
    p->sum_neg = sneg;
    p->eigen_gap = c->eigen_gap;
}

/* The next lambda standard normals, in the order ask() has always drawn them. */
static void draw_normals(pbw_cma *c) {
    const size_t ln = (size_t)c->lam * c->n;
    for (size_t i = 0; i < ln; i++) c->Zn[i] = rng_normal(&c->rng);
    c->z_ready = 1;
}

/* BDz = rows B (D .* z_k): all lambda directions in one product (13 M multiply-adds for
 * n = 512, lambda = 50). The same bits from run to run at one OpenBLAS thread count; not
 * across thread counts: a row's sums depend on its place in a thread's block (2 threads
 * against 1: ~900 of 25,600 values differ in their last bits; docs/cuda.md, Determinism). */
static void directions(pbw_cma *c) {
    const int n = c->n;
    double *DZ = c->Yw;
    for (int k = 0; k < c->lam; k++)
        for (int j = 0; j < n; j++) DZ[(size_t)k * n + j] = c->D[j] * c->Zn[(size_t)k * n + j];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->lam, n, n, 1.0, DZ, n, c->B, n, 0.0,
                c->BDz, n);
    c->bdz_ready = 1;
    c->bdz_stamp = c->eig_count;
}

static int eigen_due(const pbw_cma *c, long iter) {
    return (double)(iter - c->last_eigen) >= c->eigen_gap;
}

static void decompose_now(pbw_cma *c);

void pbw_cma_ask(pbw_cma *c, float *X) {
    int n = c->n;
    if (c->eig_deferred) decompose_now(c);
    if (!c->z_ready) draw_normals(c);
    if (!c->bdz_ready || c->bdz_stamp != c->eig_count) directions(c);
    c->z_ready = c->bdz_ready = 0; /* a second ask draws a fresh population */
    for (int k = 0; k < c->lam; k++) {
        double *x = c->Xd + (size_t)k * n;
        const double *y = c->BDz + (size_t)k * n;
        for (int i = 0; i < n; i++) x[i] = c->mean[i] + c->sigma * y[i];
        float *xf = c->Xf + (size_t)k * n;
        for (int i = 0; i < n; i++) xf[i] = (float)x[i];
        if (X) memcpy(X + (size_t)k * n, xf, (size_t)n * sizeof *X);
    }
    c->asked = 1;
}

/* out = C^{-1/2} v = B diag(1/D) B^T v, with the decomposition of the last eigen update: two
 * products with B (n = 512: 2 MB read twice, in every tell, while the GPU waits), each output
 * element summed by one thread (like directions(), the same bits at one thread count). */
static void inv_sqrt_c(const pbw_cma *c, const double *v, double *out, double *scratch) {
    int n = c->n;
    cblas_dgemv(CblasRowMajor, CblasTrans, n, n, 1.0, c->B, n, v, 1, 0.0, scratch, 1); /* B^T v */
    for (int j = 0; j < n; j++) scratch[j] /= c->D[j];
    cblas_dgemv(CblasRowMajor, CblasNoTrans, n, n, 1.0, c->B, n, scratch, 1, 0.0, out, 1);
}

/* LAPACK's dsyevd on one BLAS thread. Threaded BLAS inside an n <= 512 eigensolve costs more
 * in hand-offs than it gains, and badly so when the cores are shared: measured on this 2-core
 * machine under load, n = 30 took 0.09 ms on one thread and 310 ms on two; n = 512, 117 vs
 * 455 ms. One thread also keeps the decomposition, hence the samples, independent of the
 * thread count. The setting is OpenBLAS's process-wide one, restored right after. */
static lapack_int eigh_single_thread(int n, double *A /* (n,n) in: C, out: B */,
                                     double *ev /* (n) */) {
#ifdef OPENBLAS_VERSION
    int nt = openblas_get_num_threads();
    if (nt != 1) openblas_set_num_threads(1);
#endif
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, A, n, ev);
#ifdef OPENBLAS_VERSION
    if (nt != 1) openblas_set_num_threads(nt);
#endif
    return info;
}

/* Eigendecomposition of C into B, D. On a non-positive eigenvalue (round-off after many
 * updates), adds the smallest previous eigenvalue to the diagonal and retries, as pycma does.
 * Returns 0, or -1 when that does not help. */
static int decompose(pbw_cma *c) {
    int n = c->n;
    size_t nn = (size_t)n * n;
    for (int attempt = 0; attempt < 4; attempt++) {
        /* C's upper triangle alone holds C (apply_update); the solvers read only that one
         * (row-major 'U'), so the lower one is left as it is */
        double *A = c->eigA, *ev = c->eigv;
        lapack_int info = 1;
        if (c->eigh && c->eigh(n, c->C, A, ev) == 0) info = 0;
        else { /* LAPACK decomposes in place (over a half-done A where the solver failed) */
            memcpy(A, c->C, nn * sizeof *A);
            info = eigh_single_thread(n, A, ev);
        }
        int ok = info == 0;
        for (int i = 0; ok && i < n; i++) ok = ev[i] > 0 && isfinite(ev[i]);
        if (ok) {
            c->eig_count++;
            c->eigA = c->B; /* the eigenvectors become B; the old B is the next scratch */
            c->B = A;
            for (int i = 0; i < n; i++) c->D[i] = sqrt(ev[i]);
            return 0;
        }
        double dmin = c->D[0];
        for (int i = 1; i < n; i++) dmin = fmin(dmin, c->D[i]);
        for (int i = 0; i < n; i++) c->C[(size_t)i * n + i] += dmin * dmin;
    }
    return -1;
}

/* The decomposition an iteration's tell() asks for (or left for the next ask() or settle()
 * after the last iteration), of the covariance as that tell() left it. */
static void decompose_now(pbw_cma *c) {
    c->eig_deferred = 0;
    if (decompose(c)) c->stop |= PBW_CMA_STOP_NUMERIC;
    c->last_eigen = c->iter;
}

/* Ranking: ascending f, NaN last, ties by index so that the order is deterministic. */
static int ranks_before(const double *f, int u, int v) {
    double fu = f[u], fv = f[v];
    int nu = isnan(fu), nv = isnan(fv);
    if (nu != nv) return nv;
    if (!nu && fu != fv) return fu < fv;
    return u < v;
}

static void rank_by(const double *f, int *idx, int lam) {
    for (int k = 0; k < lam; k++) idx[k] = k;
    for (int k = 1; k < lam; k++) { /* insertion sort: stable, and lambda is ~50 */
        int v = idx[k], m = k;
        while (m > 0 && ranks_before(f, v, idx[m - 1])) {
            idx[m] = idx[m - 1];
            m--;
        }
        idx[m] = v;
    }
}

/* |diag(1/D) v| for v = B^T y: the Mahalanobis length of y under the B, D it was drawn with. */
static double mahalanobis(const pbw_cma *c, const double *v) {
    double nrm = 0;
    for (int i = 0; i < c->n; i++) nrm += (v[i] / c->D[i]) * (v[i] / c->D[i]);
    return sqrt(nrm);
}

/* mnorm[k] = the Mahalanobis length of row k of Yt (lam,n), the samples in ask()'s order: one
 * product for all lambda of them. settle() and a tell() without it both come here with the same
 * rows in the same places: a GEMM's sums for a row can depend on the rows beside it (OpenBLAS's
 * Haswell kernels take a block's last M % 4 rows another way), so a product over the ranked
 * worst alone gave other bits than settle()'s. Yw is the scratch. */
static void mnorms_of(pbw_cma *c, const double *Yt) {
    const int n = c->n, lam = c->lam;
    double *Z = c->Yw;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, lam, n, n, 1.0, Yt, n, c->B, n, 0.0,
                Z, n);
    for (int k = 0; k < lam; k++) c->mnorm[k] = mahalanobis(c, Z + (size_t)k * n);
}

/* The Mahalanobis lengths of the asked samples, for the negative weights of their update, made
 * ahead (apply_update makes the same ones itself where settle() did not), so that the tell that
 * decomposes C is left only the rank updates.
 * BDz and Yw serve as scratch: ask() consumed the one, directions() refills both after. */
static void make_mnorms(pbw_cma *c) {
    const int n = c->n, lam = c->lam;
    const long it = c->iter + 1; /* the samples' iteration once told */
    if (!c->active || lam <= c->mu || !c->asked || c->mnorm_iter == it) return;
    double *Yt = c->BDz;
    for (int k = 0; k < lam; k++)
        for (int i = 0; i < n; i++)
            Yt[(size_t)k * n + i] = (c->Xd[(size_t)k * n + i] - c->mean[i]) / c->sigma;
    mnorms_of(c, Yt);
    c->mnorm_iter = it;
}

/* The covariance update tell() left pending: decay, rank one (pc), rank mu with negative
 * weights on Mahalanobis-normalized vectors, from the ranked Y of that tell and the B, D its
 * samples were drawn with. Only C's upper triangle is kept (decompose() mirrors it). */
static void apply_update(pbw_cma *c) {
    const int n = c->n, lam = c->lam, mu = c->mu;
    double *wr = c->wr, *Z = c->Yw;
    /* the negative weights' samples at squared Mahalanobis length n: |C^{-1/2} y| is the
     * length of diag(1/D) B^T y (B is orthogonal), one product for all of them */
    const int nneg = c->active ? lam - mu : 0;
    if (nneg > 0 && c->mnorm_iter != c->iter) { /* not made by settle(), for these samples */
        double *Yt = c->BDz; /* the ranked rows back in ask()'s order, as settle() has them */
        for (int r = 0; r < lam; r++)
            memcpy(Yt + (size_t)c->idx[r] * n, c->Y + (size_t)r * n, (size_t)n * sizeof *Yt);
        mnorms_of(c, Yt);
        c->mnorm_iter = c->iter;
        c->bdz_ready = 0; /* BDz was the scratch: directions() makes them again */
    }
    for (int r = 0; r < lam; r++) {
        double wv = c->w[r];
        if (wv < 0 && r >= mu && nneg > 0) {
            const double nrm = c->mnorm[c->idx[r]];
            wv *= n / ((nrm + 1e-9) * (nrm + 1e-9));
        }
        wr[r] = c->cmu * wv;
    }
    /* C = decay C + c1 pc pc^T + sum_{w > 0} wr y y^T (one rank-(mu+1) update), then
     * - sum_{w < 0} |wr| y y^T (one rank-(lambda-mu) update): rows scaled by sqrt(|weight|) */
    int kp = 0;
    for (int r = 0; r < lam; r++) {
        if (!(wr[r] > 0)) continue;
        double s = sqrt(wr[r]);
        for (int i = 0; i < n; i++) Z[(size_t)kp * n + i] = s * c->Y[(size_t)r * n + i];
        kp++;
    }
    const double s1 = sqrt(c->c1);
    for (int i = 0; i < n; i++) Z[(size_t)kp * n + i] = s1 * c->pc[i];
    kp++;
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, kp, 1.0, Z, n, c->pend_decay, c->C, n);
    int km = 0;
    for (int r = 0; r < lam; r++) {
        if (!(wr[r] < 0)) continue;
        double s = sqrt(-wr[r]);
        for (int i = 0; i < n; i++) Z[(size_t)km * n + i] = s * c->Y[(size_t)r * n + i];
        km++;
    }
    if (km) cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, km, -1.0, Z, n, 1.0, c->C, n);
    c->pending = 0;
}

void pbw_cma_settle(pbw_cma *c) {
    if (c->eig_deferred) decompose_now(c);
    if (c->pending) apply_update(c);
    if (!c->bdz_ready) make_mnorms(c);
    if (!c->z_ready) draw_normals(c);
    /* the directions too, unless the tell() before the next ask() will decompose C anew */
    if (!c->bdz_ready && !(c->asked && eigen_due(c, c->iter + 1))) directions(c);
}

int pbw_cma_tell(pbw_cma *c, const float *X, const double *f, pbw_err *err) {
    if (!c->asked) return pbw_err_set(err, "cma: tell() without a preceding ask()");
    if (!f) return pbw_err_set(err, "cma: tell() needs the losses");
    int n = c->n, lam = c->lam, mu = c->mu;

    /* the samples: kept doubles unless the caller changed a row (checked before any change) */
    for (int k = 0; X && k < lam; k++)
        for (int i = 0; i < n; i++)
            if (!isfinite(X[(size_t)k * n + i]))
                return pbw_err_set(err, "cma: tell() row %d, element %d is not finite", k, i);
    for (int k = 0; X && k < lam; k++) {
        const float *xr = X + (size_t)k * n;
        if (memcmp(xr, c->Xf + (size_t)k * n, (size_t)n * sizeof *xr) != 0) {
            c->mnorm_iter = -1; /* not the samples settle() measured */
            for (int i = 0; i < n; i++) c->Xd[(size_t)k * n + i] = xr[i];
            memcpy(c->Xf + (size_t)k * n, xr, (size_t)n * sizeof *xr);
        }
    }
    if (c->pending) apply_update(c); /* the previous generation's, before Y is overwritten */
    c->asked = 0;
    c->iter++;
    rank_by(f, c->idx, lam);
    const int *idx = c->idx;

    /* best so far and the reference's kept point */
    double fbest = f[idx[0]];
    if (fbest < c->best_f) {
        const float *xb = c->Xf + (size_t)idx[0] * n;
        c->best_f = fbest;
        memcpy(c->best_x, xb, (size_t)n * sizeof *xb);
        for (int i = 0; i < n; i++) c->kept[i] = c->kept[i] * 0.5f + 0.5f * xb[i];
    }

    /* new mean */
    memcpy(c->mold, c->mean, (size_t)n * sizeof *c->mean);
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int r = 0; r < mu; r++) s += c->w[r] * c->Xd[(size_t)idx[r] * n + i];
        c->mean[i] = s;
    }
    double sigma = c->sigma;
    for (int r = 0; r < lam; r++) {
        const double *x = c->Xd + (size_t)idx[r] * n;
        double *y = c->Y + (size_t)r * n;
        for (int i = 0; i < n; i++) y[i] = (x[i] - c->mold[i]) / sigma;
    }

    /* step-size path, with C^{-1/2} of the distribution the samples came from */
    double *dm = c->tmp, *scratch = c->tmp + n, *iso = c->tmp + 2 * (size_t)n;
    for (int i = 0; i < n; i++) dm[i] = (c->mean[i] - c->mold[i]) / sigma;
    inv_sqrt_c(c, dm, iso, scratch);
    double ks = sqrt(c->cs * (2.0 - c->cs) * c->mueff), ps2 = 0;
    for (int i = 0; i < n; i++) {
        c->ps[i] = (1.0 - c->cs) * c->ps[i] + ks * iso[i];
        ps2 += c->ps[i] * c->ps[i];
    }
    /* pycma's hsig: squared length against 1 + 4/(n+1), corrected for the path's start at 0 */
    double corr = 1.0 - pow(1.0 - c->cs, 2.0 * (double)c->iter);
    int hsig = ps2 / corr / n - 1.0 < 1.0 + 4.0 / (n + 1.0);

    double kc = sqrt(c->cc * (2.0 - c->cc) * c->mueff);
    for (int i = 0; i < n; i++) c->pc[i] = (1.0 - c->cc) * c->pc[i] + (hsig ? kc * dm[i] : 0.0);

    /* covariance: left pending (applied by settle(), the next tell() or right here when a
     * decomposition is due) */
    double c1a = c->c1 * (1.0 - (1.0 - hsig) * c->cc * (2.0 - c->cc));
    c->pend_decay = 1.0 - c1a - c->cmu * c->sum_w;
    c->pending = 1;

    /* step size (CSA), the log change clipped to +-1 as pycma */
    double s = c->cs / c->damps * (sqrt(ps2) / c->chin - 1.0);
    s = fmax(-1.0, fmin(1.0, s));
    c->sigma *= exp(s);
    if (!isfinite(c->sigma) || c->sigma <= 0) c->stop |= PBW_CMA_STOP_NUMERIC;

    if (eigen_due(c, c->iter)) {
        apply_update(c);
        if (c->iter >= c->maxiter)
            c->eig_deferred = 1; /* the run is over: the O(n^3) solve only if an ask() follows */
        else
            decompose_now(c);
    }

    /* termination */
    c->hist[c->hist_pos] = fbest;
    c->hist_pos = (c->hist_pos + 1) % c->hist_len;
    if (c->hist_count < c->hist_len) c->hist_count++;
    double worst = f[idx[lam - 1]];
    c->last_range = isnan(worst) ? INFINITY : worst - fbest;
    if (c->hist_count >= 10 && c->last_range < c->tolfun) {
        double lo = c->hist[0], hi = c->hist[0];
        for (int i = 1; i < c->hist_count; i++) {
            lo = fmin(lo, c->hist[i]);
            hi = fmax(hi, c->hist[i]);
        }
        if (hi - lo < c->tolfun) c->stop |= PBW_CMA_STOP_TOLFUN;
    }
    int small = 1;
    for (int i = 0; i < n && small; i++) {
        double sd = sqrt(c->C[(size_t)i * n + i]);
        small = c->sigma * fmax(sd, fabs(c->pc[i])) < c->tolx;
    }
    if (small) c->stop |= PBW_CMA_STOP_TOLX;
    if (c->iter >= c->maxiter) c->stop |= PBW_CMA_STOP_MAXITER;
    if (pbw_cma_condition(c) > c->tolcond) c->stop |= PBW_CMA_STOP_CONDITION;
    return 0;
}

int pbw_cma_stop(const pbw_cma *c) { return c->stop; }

const char *pbw_cma_stop_name(int r) {
    if (r & PBW_CMA_STOP_TOLFUN) return "tolfun";
    if (r & PBW_CMA_STOP_TOLX) return "tolx";
    if (r & PBW_CMA_STOP_MAXITER) return "maxiter";
    if (r & PBW_CMA_STOP_CONDITION) return "condition";
    if (r & PBW_CMA_STOP_NUMERIC) return "numeric";
    return "";
}
