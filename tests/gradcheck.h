/* gradcheck.h: checks an op's backward against central finite differences, and compares arrays.
 *
 * The checked function builds an output from its inputs with pbw ops. The scalar checked is
 * L = sum_i R_i * out_i with fixed random R, accumulated in double; the analytic gradient comes
 * from pbw_backward seeded with R, the numeric one from (L(x+eps) - L(x-eps)) / 2eps per input
 * element (up to max_checks elements per input, spread over the tensor).
 *
 * Tolerance: |analytic - numeric| <= atol + rtol * |numeric|. With float32 forward passes and
 * eps = 1e-2 the rounding error of L is about 1e-7 * sqrt(numel) * |L| / eps and the truncation
 * error O(eps^2): the defaults atol = 2e-3, rtol = 1e-2 sit well above both for outputs of size
 * O(1) and below any real bug (a wrong term shifts the gradient by O(1)).
 */
#ifndef PBW_GRADCHECK_H
#define PBW_GRADCHECK_H

#include <stdint.h>

#include "core/pbw_tensor.h"

typedef pbw_tensor *(*gc_fn)(pbw_ctx *ctx, pbw_tensor **in, void *user);

typedef struct gc_input {
    int ndim;
    int64_t shape[PBW_MAX_DIMS];
    float *data;   /* caller-owned values */
    int grad;      /* check the gradient of this input */
} gc_input;

typedef struct gc_opts {
    double eps, atol, rtol;
    int max_checks; /* per input; 0 means 48 */
} gc_opts;

/* Runs the check; prints the worst difference; returns the number of elements out of
 * tolerance (0 is a pass), or -1 when the function failed. */
int gc_check(const char *name, gc_fn f, void *user, int nin, gc_input *in, gc_opts o);

/* Deterministic uniform values in [lo, hi) from a seed (xorshift). */
void gc_fill(float *x, int64_t n, uint64_t seed, float lo, float hi);
float *gc_rand(int64_t n, uint64_t seed, float lo, float hi); /* malloc'd */

/* max |a-b| over n; NaN when any difference is NaN, so that every comparison with the result
 * fails. *ref_max (may be NULL) gets max |b|. */
double gc_max_diff(const float *a, const float *b, int64_t n, double *ref_max);

/* max |a-b| <= atol + rtol*|b| over n; prints the worst element; returns the count out of
 * tolerance. */
int gc_compare(const char *what, const float *a, const float *b, int64_t n, double atol,
               double rtol);

#endif
