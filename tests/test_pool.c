/* test_pool.c: pbw_max_pool2d against a direct loop written here (values and winning
 * elements), its backward against central finite differences, and its argument checks.
 *
 * Tolerances: the forward is a selection, so values must be equal bit for bit. The backward
 * uses gc_check with eps 1e-2 on inputs that are a shuffled ladder of values 0.05 apart: no
 * two elements come within 2*eps of each other, so every window keeps its winner under the
 * perturbation, max pooling is linear there and central differences are exact up to float32
 * rounding of the loss (~1e-7 * sqrt(numel) / eps ~ 1e-4); gc_check's atol 2e-3 / rtol 1e-2
 * sit far above that and far below a misrouted gradient (which moves an element by O(1)).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "gradcheck.h"
#include "pbw_test.h"

typedef struct pool_case {
    int N, C, H, W, k, s, p; /* s = 0: stride = kernel */
} pool_case;

/* F.max_pool2d by its definition: the max over the in-bounds part of each window, first
 * winner in row-major order. */
static void ref_max_pool(const float *x, const pool_case *c, int OH, int OW, float *out,
                         int64_t *arg) {
    int s = c->s ? c->s : c->k;
    for (int n = 0; n < c->N * c->C; n++)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                float m = -INFINITY;
                int64_t best = -1;
                for (int ky = 0; ky < c->k; ky++)
                    for (int kx = 0; kx < c->k; kx++) {
                        int y = oy * s - c->p + ky, xx = ox * s - c->p + kx;
                        if (y < 0 || y >= c->H || xx < 0 || xx >= c->W) continue;
                        int64_t i = ((int64_t)n * c->H + y) * c->W + xx;
                        if (best < 0 || x[i] > m) m = x[i], best = i;
                    }
                int64_t o = ((int64_t)n * OH + oy) * OW + ox;
                out[o] = m;
                arg[o] = best;
            }
}

/* Values 0.05 apart in a seeded random order, centred on 0. */
static float *ladder(int64_t n, uint64_t seed) {
    float *x = malloc((size_t)n * sizeof(float));
    int64_t *perm = malloc((size_t)n * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = n - 1; i > 0; i--) {
        st ^= st << 13, st ^= st >> 7, st ^= st << 17;
        int64_t j = (int64_t)(st % (uint64_t)(i + 1));
        int64_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int64_t i = 0; i < n; i++) x[i] = 0.05f * (float)(perm[i] - n / 2);
    free(perm);
    return x;
}

static const pool_case cases[] = {
    {2, 3, 15, 15, 3, 2, 0}, /* AlexNet's pools (15 -> 7) */
    {1, 2, 7, 9, 3, 2, 0},   /* non-square, 7x9 -> 3x4 */
    {2, 2, 8, 6, 2, 0, 0},   /* stride defaults to the kernel */
    {1, 3, 6, 7, 3, 1, 1},   /* padded, overlapping */
    {1, 1, 9, 10, 5, 3, 2},  /* padding at the limit kernel/2 */
    {1, 1, 1, 1, 1, 1, 0},   /* 1x1 identity */
};

static pbw_tensor *pool_fn(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    const pool_case *c = user;
    return pbw_max_pool2d(ctx, in[0], c->k, c->s, c->p);
}

PBW_TEST(pool_forward_matches_loop) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const pool_case *c = &cases[ci];
        int s = c->s ? c->s : c->k;
        int OH = (c->H + 2 * c->p - c->k) / s + 1, OW = (c->W + 2 * c->p - c->k) / s + 1;
        int64_t n = (int64_t)c->N * c->C * c->H * c->W, no = (int64_t)c->N * c->C * OH * OW;
        float *x = gc_rand(n, 100 + ci, -2, 2); /* distinct with probability ~1 */
        float *ref = malloc((size_t)no * sizeof(float));
        int64_t *arg = malloc((size_t)no * sizeof(int64_t));
        ref_max_pool(x, c, OH, OW, ref, arg);
        pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 4, (int64_t[]){c->N, c->C, c->H, c->W});
        tx->requires_grad = 1;
        pbw_tensor *y = pbw_max_pool2d(ctx, tx, c->k, c->s, c->p);
        CHECK_MSG(y, "case %zu: %s", ci, pbw_ctx_error(ctx));
        if (y) {
            CHECK(y->shape[0] == c->N && y->shape[1] == c->C && y->shape[2] == OH &&
                  y->shape[3] == OW);
            int bad = 0;
            for (int64_t i = 0; i < no; i++) bad += y->data[i] != ref[i];
            CHECK_MSG(bad == 0, "case %zu: %d outputs differ from the loop", ci, bad);
            /* the gradient of sum(out * (o+1)) lands on exactly the loop's winners */
            float *seed = malloc((size_t)no * sizeof(float));
            float *want = calloc((size_t)n, sizeof(float));
            for (int64_t i = 0; i < no; i++) seed[i] = (float)(i + 1), want[arg[i]] += seed[i];
            CHECK(pbw_backward(ctx, y, seed, &err) == 0);
            bad = 0;
            for (int64_t i = 0; tx->grad && i < n; i++) bad += tx->grad[i] != want[i];
            CHECK_MSG(tx->grad && bad == 0, "case %zu: %d gradient elements misrouted", ci, bad);
            free(seed);
            free(want);
        }
        pbw_ctx_reset(ctx);
        free(x);
        free(ref);
        free(arg);
    }
    pbw_ctx_free(ctx);
}

PBW_TEST(pool_backward_finite_differences) {
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const pool_case *c = &cases[ci];
        gc_input in = {4, {c->N, c->C, c->H, c->W}, NULL, 1};
        in.data = ladder((int64_t)c->N * c->C * c->H * c->W, 7 + ci);
        char name[64];
        snprintf(name, sizeof name, "max_pool2d case %zu", ci);
        CHECK(gc_check(name, pool_fn, (void *)c, 1, &in, (gc_opts){0}) == 0);
        free(in.data);
    }
}

/* Ties go to the first element of the window (row-major), -inf inputs are kept, NaN wins. */
PBW_TEST(pool_ties_and_specials) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    float x[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 4, (int64_t[]){1, 1, 4, 4});
    tx->requires_grad = 1;
    pbw_tensor *y = pbw_max_pool2d(ctx, tx, 3, 1, 0); /* 2x2 outputs, windows at (0..1, 0..1) */
    CHECK(y && pbw_backward(ctx, y, NULL, &err) == 0);
    if (y && tx->grad) {
        const float want[16] = {1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = 0; i < 16; i++) CHECK_NEAR(tx->grad[i], want[i], 0);
    }
    pbw_ctx_reset(ctx);

    float z[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    y = pbw_max_pool2d(ctx, pbw_tensor_wrap(ctx, z, 4, (int64_t[]){1, 1, 2, 2}), 2, 2, 1);
    CHECK(y && y->numel == 4);
    for (int i = 0; y && i < 4; i++) CHECK(isinf(y->data[i]) && y->data[i] < 0);
    pbw_ctx_reset(ctx);

    float w[4] = {1, NAN, 3, 2};
    y = pbw_max_pool2d(ctx, pbw_tensor_wrap(ctx, w, 4, (int64_t[]){1, 1, 2, 2}), 2, 2, 0);
    CHECK(y && isnan(y->data[0]));
    pbw_ctx_free(ctx);
}

PBW_TEST(pool_no_tape_without_grad) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    float x[36];
    gc_fill(x, 36, 3, -1, 1);
    pbw_tensor *y = pbw_max_pool2d(ctx, pbw_tensor_wrap(ctx, x, 4, (int64_t[]){1, 1, 6, 6}), 3, 2, 1);
    CHECK(y && !y->requires_grad);
    pbw_ctx_free(ctx);
}

PBW_TEST(pool_rejects_bad_arguments) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    float x[16] = {0};
    struct { int nd, k, s, p; const char *msg; } bad[] = {
        {4, 3, 2, 2, "padding"},    /* pad > kernel/2 */
        {4, 0, 1, 0, "kernel"},     /* empty window */
        {4, 3, -1, 0, "stride"},
        {4, 5, 1, 0, "smaller"},    /* 4x4 input, 5x5 window */
        {3, 2, 2, 0, "(N,C,H,W)"},  /* not an image */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t shape[4] = {1, 1, 4, 4};
        pbw_tensor *t = bad[i].nd == 4 ? pbw_tensor_wrap(ctx, x, 4, shape)
                                       : pbw_tensor_wrap(ctx, x, 3, shape + 1);
        pbw_tensor *y = pbw_max_pool2d(ctx, t, bad[i].k, bad[i].s, bad[i].p);
        CHECK(!y && pbw_ctx_failed(ctx));
        CHECK_MSG(strstr(pbw_ctx_error(ctx), bad[i].msg), "case %zu: '%s' lacks '%s'", i,
                  pbw_ctx_error(ctx), bad[i].msg);
        pbw_ctx_reset(ctx);
    }
    CHECK(pbw_max_pool2d(ctx, NULL, 3, 2, 0) == NULL);
    pbw_ctx_free(ctx);
}
