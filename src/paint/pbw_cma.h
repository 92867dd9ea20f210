/* pbw_cma.h: CMA-ES (covariance matrix adaptation evolution strategy), the derivative-free
 * optimizer of the painting loop. It needs forward passes only and asks for whole batches.
 *
 *     pbw_cma_opts o;
 *     pbw_cma_opts_default(&o);          // painting defaults: lambda 50, sigma0 0.5, seed 1
 *     pbw_cma *cma; pbw_err err;
 *     if (pbw_cma_new(&cma, n, w0, &o, &err)) { puts(err.msg); return 1; }
 *     int lam = pbw_cma_lambda(cma);
 *     float *X = malloc(lam * n * sizeof *X);          // (lambda, n)
 *     double *f = malloc(lam * sizeof *f);              // (lambda)
 *     for (int g = 0; g < 20 && !pbw_cma_stop(cma); g++) {
 *         pbw_cma_ask(cma, X);                          // lambda candidates, one per row
 *         for (int k = 0; k < lam; k++) f[k] = loss(X + k * n);   // or one batched forward
 *         if (pbw_cma_tell(cma, X, f, &err)) ...;
 *     }
 *     const float *w = pbw_cma_kept(cma);               // the reference's result (see below)
 *     pbw_cma_free(cma);
 *
 * The algorithm is the (mu/mu_w, lambda)-CMA-ES of Hansen's tutorial ("The CMA Evolution
 * Strategy: A Tutorial", arXiv:1604.00772) with the default constants of pycma, which the
 * reference implementation calls with CMA_active=True:
 *   - positive recombination weights ln((lambda+1)/2) - ln(i), mu = number of positive ones;
 *   - cumulative step-size adaptation (CSA) with damping, the log step change clipped to +-1
 *     (pycma 3.x, which the reference used in 2021, applies CSA in every dimension; pycma 4.x
 *     switches to two-point adaptation from n = 300 on, which we do not follow);
 *   - rank-one + rank-mu covariance update, with active CMA: the worse half of the samples
 *     gets negative weights, scaled as pycma's RecombinationWeights.finalize_negative_weights
 *     (zero decay, then the mueff and positive-definiteness limits), and each of those samples
 *     is rescaled to squared Mahalanobis length n before it enters the update;
 *   - eigendecomposition of C with LAPACK (dsyevd), lazily every 1/(c1+cmu)/n/10 iterations;
 *     the covariance update itself waits until pbw_cma_settle(), the next tell() or that
 *     decomposition needs it.
 * All internal state is double precision. Not implemented: bounds, restarts, mirrored
 * sampling, noise handling, the separable (diagonal) variant.
 *
 * Reproducibility: samples come from pbw's own generator (xoshiro256** seeded with splitmix64
 * of the seed, normals by the polar method), never from the C library, so the same seed and
 * the same tell() values give the same samples on the same machine. The samples are not those
 * of pycma (numpy's generator); matching them bit for bit is not a goal.
 *
 * Samples and losses: ask() writes float32 rows (what a network eats). tell() takes those rows
 * and their losses. When a row is exactly the float32 rounding of what ask() produced, tell()
 * uses the double sample it kept (so the algorithm is not limited by float32 resolution when
 * sigma gets tiny); a row the caller changed is used as given. NaN losses rank last.
 *
 * Kept point (the reference's rule for painting): it starts at x0 and, each time a
 * generation's best loss beats the best loss seen so far (the first generation always does),
 * becomes 0.5 * kept + 0.5 * that generation's best sample, computed in float32 as the
 * reference does with torch tensors. pbw_cma_kept() returns it.
 *
 * Ownership: pbw_cma_new allocates; pbw_cma_free releases (NULL is fine). Pointers returned by
 * the accessors belong to the pbw_cma and stay valid until the next tell() or free().
 * Failure: functions returning int return 0 on success, -1 with a message in err.
 */
#ifndef PBW_CMA_H
#define PBW_CMA_H

#include <stdint.h>

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pbw_cma_opts {
    int lambda;       /* population size; 0: the library default 4 + floor(3 ln n) */
    double sigma0;    /* initial step size (> 0) */
    uint64_t seed;    /* generator seed; every value, 0 included, is a fixed seed */
    int active;       /* 1: active CMA (negative weights, pycma's default); 0: positive only */
    double tolfun;    /* stop when the best values of the last 10 + ceil(30 n / lambda)
                         iterations and all values of the last one lie within tolfun (1e-11) */
    double tolx;      /* stop when sigma * max(sqrt(C_ii), |pc_i|) < tolx for all i (1e-11) */
    long maxiter;     /* stop after this many iterations; 0: 100 + 150 (n+3)^2 / sqrt(lambda).
                         An eigendecomposition due at the last one waits for an ask() or
                         settle() (none may follow): until then pbw_cma_condition, and the
                         condition and numeric stops, are of the decomposition before it */
    double tolcond;   /* stop when the condition number of C exceeds this (1e14) */
    /* The eigendecomposition of C, when not LAPACK's dsyevd on one thread (NULL): C (n,n)
     * row-major, only its upper triangle read and left as it is; eigenvector j into column j of
     * B (another buffer), eigenvalues ascending into w, as LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V',
     * 'U', ...) gives them in place. Returns 0, or -1 and LAPACK is used for that update. The
     * painter passes pbw_cuda_eigh on a GPU. */
    int (*eigh)(int n, const double *C, double *B, double *w);
} pbw_cma_opts;

/* Painting defaults (DESIGN.md section 2): lambda 50, sigma0 0.5, seed 1, active 1, and
 * pycma's termination defaults. For the library default population set lambda = 0. */
void pbw_cma_opts_default(pbw_cma_opts *o);

typedef struct pbw_cma pbw_cma;

/* Reasons pbw_cma_stop() reports, as bits. */
enum {
    PBW_CMA_STOP_TOLFUN = 1,
    PBW_CMA_STOP_TOLX = 2,
    PBW_CMA_STOP_MAXITER = 4,
    PBW_CMA_STOP_CONDITION = 8,
    PBW_CMA_STOP_NUMERIC = 16 /* C lost positive definiteness beyond repair, or sigma not finite */
};

/* Starts a search in n dimensions (n >= 1) around x0 (n floats, copied). */
int pbw_cma_new(pbw_cma **out, int n, const float *x0, const pbw_cma_opts *opts, pbw_err *err);
void pbw_cma_free(pbw_cma *cma);

int pbw_cma_dim(const pbw_cma *cma);
int pbw_cma_lambda(const pbw_cma *cma);
int pbw_cma_mu(const pbw_cma *cma);

/* Draws lambda new candidates into X (lambda, n), row k = m + sigma * B D z_k. Calling ask()
 * twice without tell() draws a fresh population (the first one is forgotten). */
void pbw_cma_ask(pbw_cma *cma, float *X /* (lambda, n) */);

/* Updates the distribution from the candidates X (lambda, n) of the last ask() and their
 * losses f (lambda), lower is better. X may be NULL: then the asked samples are used. Fails
 * if no ask() preceded it. */
int pbw_cma_tell(pbw_cma *cma, const float *X /* (lambda, n) or NULL */,
                 const double *f /* (lambda) */, pbw_err *err);

/* Optional, between tell() and the next tell(): applies the covariance update the last tell()
 * left pending and draws the next generation's normals (and their directions when the next
 * ask() will use the current decomposition). ask() and tell() do whatever of this is still
 * undone, with the same results, so a caller calls it only to do that work while something
 * else runs, e.g. after queueing the generation on a GPU and before reading its losses back:
 * then the work between the losses and the next candidates is O(n^2). */
void pbw_cma_settle(pbw_cma *cma);

/* Nonzero (PBW_CMA_STOP_* bits) when a termination criterion holds. tolx reads the covariance
 * as of the last applied update (one generation behind when tell() left one pending). */
int pbw_cma_stop(const pbw_cma *cma);
/* "tolfun", "tolx", "maxiter", "condition", "numeric" for the lowest set bit, "" for 0. */
const char *pbw_cma_stop_name(int reasons);

const double *pbw_cma_mean(const pbw_cma *cma);  /* (n) distribution mean */
double pbw_cma_sigma(const pbw_cma *cma);        /* current overall step size */
double pbw_cma_best_f(const pbw_cma *cma);       /* best loss told so far (+inf before) */
const float *pbw_cma_best_x(const pbw_cma *cma); /* (n) its sample (x0 before any tell) */
const float *pbw_cma_kept(const pbw_cma *cma);   /* (n) the kept point (rule above) */
long pbw_cma_iterations(const pbw_cma *cma);     /* tell() calls so far */
long pbw_cma_evaluations(const pbw_cma *cma);    /* iterations * lambda */
double pbw_cma_condition(const pbw_cma *cma);    /* condition number of C (at last eigen) */

/* The strategy constants, for tests and logs. */
typedef struct pbw_cma_params {
    int lambda, mu;
    double mueff, cc, cs, c1, cmu, damps, chin;
    double sum_neg; /* sum of the negative weights (<= 0) */
    double eigen_gap; /* iterations between eigendecompositions */
} pbw_cma_params;
void pbw_cma_get_params(const pbw_cma *cma, pbw_cma_params *p);
/* (lambda) recombination weights, sorted best first; positive ones sum to 1. */
const double *pbw_cma_weights(const pbw_cma *cma);

#ifdef __cplusplus
}
#endif
#endif
