/* test_ops.c: forward (against plain loops written here) and backward (against central finite
 * differences, gradcheck.h) of the elementwise, reduction, shape, linear-algebra, norm, softmax,
 * attention and embedding ops.
 *
 * Forward tolerances: float32 ops compared with double references; 1e-5 relative + 1e-6
 * absolute covers the rounding of sums of up to a few hundred terms. Backward tolerances: the
 * gradcheck defaults (see gradcheck.h) unless a test states otherwise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "gradcheck.h"
#include "pbw_test.h"

#define FWD_ATOL 1e-6
#define FWD_RTOL 1e-5

static pbw_ctx *new_ctx(void) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    PBW_ASSERT(ctx);
    return ctx;
}

static pbw_tensor *rand_tensor(pbw_ctx *ctx, int nd, const int64_t *shape, uint64_t seed,
                               float lo, float hi) {
    pbw_tensor *t = pbw_tensor_new(ctx, nd, shape);
    gc_fill(t->data, t->numel, seed, lo, hi);
    return t;
}

/* ---------------- unary ---------------- */

typedef struct {
    int which;
} un_user;

static pbw_tensor *un_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    switch (((un_user *)u)->which) {
    case 0: return pbw_relu(ctx, in[0]);
    case 1: return pbw_leaky_relu(ctx, in[0], 0.2f);
    case 2: return pbw_gelu(ctx, in[0]);
    case 3: return pbw_quick_gelu(ctx, in[0]);
    case 4: return pbw_sigmoid(ctx, in[0]);
    case 5: return pbw_tanh(ctx, in[0]);
    case 6: return pbw_sqrt(ctx, pbw_add_scalar(ctx, pbw_abs(ctx, in[0]), 0.5f));
    case 7: return pbw_rsqrt(ctx, pbw_add_scalar(ctx, pbw_abs(ctx, in[0]), 0.5f));
    case 8: return pbw_exp(ctx, in[0]);
    case 9: return pbw_abs(ctx, in[0]);
    case 10: return pbw_square(ctx, in[0]);
    case 11: return pbw_clamp(ctx, in[0], -0.5f, 0.7f);
    case 12: return pbw_affine(ctx, in[0], -1.5f, 0.25f);
    }
    return NULL;
}

static double un_ref(int which, double x) {
    switch (which) {
    case 0: return x > 0 ? x : 0;
    case 1: return x > 0 ? x : 0.2 * x;
    case 2: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case 3: return x / (1 + exp(-1.702 * x));
    case 4: return 1 / (1 + exp(-x));
    case 5: return tanh(x);
    case 6: return sqrt(fabs(x) + 0.5);
    case 7: return 1 / sqrt(fabs(x) + 0.5);
    case 8: return exp(x);
    case 9: return fabs(x);
    case 10: return x * x;
    case 11: return x < -0.5 ? -0.5 : (x > 0.7 ? 0.7 : x);
    case 12: return -1.5 * x + 0.25;
    }
    return 0;
}

PBW_TEST(ops_unary) {
    const char *names[] = {"relu", "leaky_relu", "gelu", "quick_gelu", "sigmoid", "tanh", "sqrt",
                           "rsqrt", "exp", "abs", "square", "clamp", "affine"};
    int64_t n = 200;
    float *x = gc_rand(n, 1, -3.0f, 3.0f);
    /* keep inputs 0.05 away from the kinks (0 for relu/abs, -0.5/0.7 for clamp) so that central
     * differences with eps 1e-2 never straddle one */
    for (int64_t i = 0; i < n; i++) {
        if (fabsf(x[i]) < 0.05f) x[i] += 0.1f;
        if (fabsf(x[i] + 0.5f) < 0.05f) x[i] += 0.1f;
        if (fabsf(x[i] - 0.7f) < 0.05f) x[i] += 0.1f;
    }
    for (int w = 0; w < 13; w++) {
        un_user u = {w};
        pbw_ctx *ctx = new_ctx();
        pbw_tensor *t = pbw_tensor_wrap(ctx, x, 1, (int64_t[]){n});
        pbw_tensor *y = un_fn(ctx, &t, &u);
        CHECK_MSG(y != NULL, "%s failed: %s", names[w], pbw_ctx_error(ctx));
        if (y) {
            float *ref = malloc(n * sizeof(float));
            for (int64_t i = 0; i < n; i++) ref[i] = (float)un_ref(w, x[i]);
            CHECK_MSG(gc_compare(names[w], y->data, ref, n, FWD_ATOL, FWD_RTOL) == 0, "%s forward", names[w]);
            free(ref);
        }
        pbw_ctx_free(ctx);
        gc_input in = {1, {n}, x, 1};
        CHECK_MSG(gc_check(names[w], un_fn, &u, 1, &in, (gc_opts){0}) == 0, "%s backward", names[w]);
    }
    free(x);
}

/* ---------------- binary with broadcasting ---------------- */

typedef struct {
    int op;
} bin_user;

static pbw_tensor *bin_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    switch (((bin_user *)u)->op) {
    case 0: return pbw_add(ctx, in[0], in[1]);
    case 1: return pbw_sub(ctx, in[0], in[1]);
    case 2: return pbw_mul(ctx, in[0], in[1]);
    case 3: return pbw_div(ctx, in[0], in[1]);
    }
    return NULL;
}

PBW_TEST(ops_binary_broadcast) {
    /* pairs of shapes that broadcast in different ways */
    struct {
        int na;
        int64_t a[5];
        int nb;
        int64_t b[5];
    } cases[] = {
        {3, {2, 3, 4}, 3, {2, 3, 4}},       {4, {2, 3, 4, 5}, 1, {5}},
        {4, {2, 3, 4, 5}, 4, {1, 3, 1, 1}}, {4, {2, 1, 4, 5}, 4, {2, 3, 1, 5}},
        {2, {3, 1}, 3, {2, 1, 4}},          {5, {2, 2, 3, 2, 3}, 5, {2, 1, 3, 1, 1}},
        {1, {1}, 3, {3, 4, 5}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int op = 0; op < 4; op++) {
            pbw_ctx *ctx = new_ctx();
            pbw_tensor *a = rand_tensor(ctx, cases[c].na, cases[c].a, 10 + c, -2, 2);
            pbw_tensor *b = rand_tensor(ctx, cases[c].nb, cases[c].b, 20 + c, 0.5f, 2);
            bin_user u = {op};
            pbw_tensor *in[2] = {a, b};
            pbw_tensor *y = bin_fn(ctx, in, &u);
            CHECK_MSG(y != NULL, "case %zu op %d: %s", c, op, pbw_ctx_error(ctx));
            if (!y) { pbw_ctx_free(ctx); continue; }
            /* reference: walk the output index, map to a and b by broadcasting rules */
            int nd = y->ndim, bad = 0;
            for (int64_t i = 0; i < y->numel; i++) {
                int64_t idx[5], r = i;
                for (int d = nd - 1; d >= 0; d--) { idx[d] = r % y->shape[d]; r /= y->shape[d]; }
                int64_t ia = 0, ib = 0;
                for (int d = 0; d < a->ndim; d++) ia = ia * a->shape[d] + (a->shape[d] == 1 ? 0 : idx[d + nd - a->ndim]);
                for (int d = 0; d < b->ndim; d++) ib = ib * b->shape[d] + (b->shape[d] == 1 ? 0 : idx[d + nd - b->ndim]);
                double av = a->data[ia], bv = b->data[ib];
                double ref = op == 0 ? av + bv : op == 1 ? av - bv : op == 2 ? av * bv : av / bv;
                if (fabs(y->data[i] - ref) > FWD_ATOL + FWD_RTOL * fabs(ref)) bad++;
            }
            CHECK_MSG(bad == 0, "case %zu op %d: %d wrong elements", c, op, bad);
            gc_input gin[2] = {{a->ndim, {0}, a->data, 1}, {b->ndim, {0}, b->data, 1}};
            memcpy(gin[0].shape, a->shape, sizeof a->shape);
            memcpy(gin[1].shape, b->shape, sizeof b->shape);
            CHECK_MSG(gc_check("binary", bin_fn, &u, 2, gin, (gc_opts){0}) == 0, "case %zu op %d backward", c, op);
            pbw_ctx_free(ctx);
        }
    }
}

PBW_TEST(ops_binary_bad_shapes) {
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *a = pbw_tensor_zeros(ctx, 2, (int64_t[]){2, 3});
    pbw_tensor *b = pbw_tensor_zeros(ctx, 2, (int64_t[]){3, 3});
    CHECK(pbw_add(ctx, a, b) == NULL);
    CHECK(pbw_ctx_failed(ctx));
    CHECK(strstr(pbw_ctx_error(ctx), "(2,3)") != NULL);
    CHECK(pbw_mul(ctx, a, a) == NULL); /* sticky: later ops return NULL too */
    pbw_ctx_reset(ctx);
    CHECK(!pbw_ctx_failed(ctx));
    CHECK(pbw_relu(ctx, NULL) == NULL);
    pbw_ctx_free(ctx);
}

/* ---------------- reductions ---------------- */

typedef struct {
    int naxes, axes[4], keep, mean;
} red_user;

static pbw_tensor *red_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    red_user *r = u;
    return r->mean ? pbw_mean(ctx, in[0], r->naxes, r->axes, r->keep)
                   : pbw_sum(ctx, in[0], r->naxes, r->axes, r->keep);
}

PBW_TEST(ops_reduce) {
    int64_t shape[4] = {2, 3, 4, 5};
    red_user cases[] = {{1, {3}, 0, 0}, {1, {0}, 1, 1}, {2, {1, -1}, 0, 1}, {2, {2, 3}, 1, 0},
                        {4, {0, 1, 2, 3}, 0, 1}, {1, {-3}, 1, 0}};
    float *x = gc_rand(120, 7, -1, 1);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        pbw_ctx *ctx = new_ctx();
        pbw_tensor *t = pbw_tensor_wrap(ctx, x, 4, shape);
        pbw_tensor *y = red_fn(ctx, &t, &cases[c]);
        CHECK(y != NULL);
        if (!y) { pbw_ctx_free(ctx); continue; }
        int red[4] = {0};
        for (int i = 0; i < cases[c].naxes; i++) red[(cases[c].axes[i] + 4) % 4] = 1;
        double *ref = calloc(120, sizeof(double));
        int64_t cnt = 1;
        for (int d = 0; d < 4; d++) if (red[d]) cnt *= shape[d];
        for (int64_t i = 0; i < 120; i++) {
            int64_t idx[4], r = i;
            for (int d = 3; d >= 0; d--) { idx[d] = r % shape[d]; r /= shape[d]; }
            int64_t o = 0;
            for (int d = 0; d < 4; d++) if (!red[d]) o = o * shape[d] + idx[d];
            ref[o] += x[i] / (cases[c].mean ? (double)cnt : 1.0);
        }
        int bad = 0;
        for (int64_t i = 0; i < y->numel; i++) if (fabs(y->data[i] - ref[i]) > 1e-5) bad++;
        CHECK_MSG(bad == 0, "reduce case %zu: %d wrong", c, bad);
        CHECK(y->numel == 120 / cnt);
        if (cases[c].keep) CHECK(y->ndim == 4);
        free(ref);
        gc_input in = {4, {2, 3, 4, 5}, x, 1};
        CHECK_MSG(gc_check("reduce", red_fn, &cases[c], 1, &in, (gc_opts){0}) == 0, "reduce case %zu backward", c);
        pbw_ctx_free(ctx);
    }
    free(x);
}

/* ---------------- shape ops ---------------- */

static pbw_tensor *permute_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_permute(ctx, in[0], (const int *)u);
}
static pbw_tensor *reshape_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    /* reshape then a nonlinear op so the check sees the mapping of positions */
    pbw_tensor *r = pbw_reshape(ctx, in[0], 2, (int64_t[]){-1, 6});
    return pbw_mul(ctx, r, pbw_slice(ctx, r, 1, 0, 1, 1));
}
typedef struct { int axis; int64_t start, end, step; } slice_user;
static pbw_tensor *slice_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    slice_user *s = u;
    return pbw_slice(ctx, in[0], s->axis, s->start, s->end, s->step);
}
static pbw_tensor *pad_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_pad(ctx, in[0], (const int64_t *)u, 0.5f);
}
static pbw_tensor *concat_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_concat(ctx, 3, in, *(int *)u);
}

PBW_TEST(ops_permute) {
    int64_t shape[4] = {2, 3, 4, 5};
    int perm[4] = {2, 0, 3, 1};
    float *x = gc_rand(120, 3, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *t = pbw_tensor_wrap(ctx, x, 4, shape);
    pbw_tensor *y = pbw_permute(ctx, t, perm);
    CHECK(y && y->shape[0] == 4 && y->shape[1] == 2 && y->shape[2] == 5 && y->shape[3] == 3);
    int bad = 0;
    for (int a = 0; a < 2; a++) for (int b = 0; b < 3; b++) for (int c = 0; c < 4; c++) for (int d = 0; d < 5; d++)
        if (y->data[((c * 2 + a) * 5 + d) * 3 + b] != x[((a * 3 + b) * 4 + c) * 5 + d]) bad++;
    CHECK(bad == 0);
    CHECK(pbw_permute(ctx, t, (int[]){0, 0, 1, 2}) == NULL); /* not a permutation */
    pbw_ctx_free(ctx);
    gc_input in = {4, {2, 3, 4, 5}, x, 1};
    CHECK(gc_check("permute", permute_fn, perm, 1, &in, (gc_opts){0}) == 0);
    gc_input in2 = {3, {2, 3, 4}, x, 1};
    CHECK(gc_check("reshape", reshape_fn, NULL, 1, &in2, (gc_opts){0}) == 0);
    free(x);
}

PBW_TEST(ops_slice_pad_concat) {
    float *x = gc_rand(60, 4, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *t = pbw_tensor_wrap(ctx, x, 3, (int64_t[]){3, 4, 5});
    /* slice x[:, 1:4:2, :] */
    pbw_tensor *s = pbw_slice(ctx, t, 1, 1, 4, 2);
    CHECK(s && s->shape[1] == 2);
    int bad = 0;
    for (int a = 0; a < 3; a++) for (int b = 0; b < 2; b++) for (int c = 0; c < 5; c++)
        if (s->data[(a * 2 + b) * 5 + c] != x[(a * 4 + 1 + 2 * b) * 5 + c]) bad++;
    CHECK(bad == 0);
    /* negative indices as in Python: x[..., -3:-1] */
    pbw_tensor *s2 = pbw_slice(ctx, t, -1, -3, -1, 1);
    CHECK(s2 && s2->shape[2] == 2 && s2->data[0] == x[2]);
    /* pad (1,0) on dim 1 and crop (-1,2) on dim 2 */
    int64_t pads[6] = {0, 0, 1, 0, -1, 2};
    pbw_tensor *p = pbw_pad(ctx, t, pads, 0.5f);
    CHECK(p && p->shape[0] == 3 && p->shape[1] == 5 && p->shape[2] == 6);
    bad = 0;
    for (int a = 0; a < 3; a++) for (int b = 0; b < 5; b++) for (int c = 0; c < 6; c++) {
        int xb = b - 1, xc = c + 1;
        float ref = (xb >= 0 && xc < 5) ? x[(a * 4 + xb) * 5 + xc] : 0.5f;
        if (p->data[(a * 5 + b) * 6 + c] != ref) bad++;
    }
    CHECK(bad == 0);
    /* concat of three along axis 1 */
    pbw_tensor *parts[3] = {t, s, t};
    pbw_tensor *c3 = pbw_concat(ctx, 3, parts, 1);
    CHECK(c3 && c3->shape[1] == 10);
    CHECK(c3 && c3->data[(0 * 10 + 4) * 5 + 0] == s->data[0]);
    CHECK(c3 && c3->data[(2 * 10 + 9) * 5 + 4] == x[(2 * 4 + 3) * 5 + 4]);
    pbw_ctx_free(ctx);

    slice_user su = {1, 1, 4, 2};
    gc_input in = {3, {3, 4, 5}, x, 1};
    CHECK(gc_check("slice", slice_fn, &su, 1, &in, (gc_opts){0}) == 0);
    CHECK(gc_check("pad", pad_fn, pads, 1, &in, (gc_opts){0}) == 0);
    int axis = 2;
    float *y = gc_rand(60, 5, -1, 1), *z = gc_rand(60, 6, -1, 1);
    gc_input cin[3] = {{3, {3, 4, 5}, x, 1}, {3, {3, 4, 5}, y, 0}, {3, {3, 4, 5}, z, 1}};
    CHECK(gc_check("concat", concat_fn, &axis, 3, cin, (gc_opts){0}) == 0);
    free(x); free(y); free(z);
}

/* ---------------- matmul and linear ---------------- */

typedef struct { int ta, tb; } mm_user;
static pbw_tensor *mm_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    mm_user *m = u;
    return pbw_matmul(ctx, in[0], in[1], m->ta, m->tb);
}

PBW_TEST(ops_matmul) {
    int64_t B = 2, M = 3, K = 4, N = 5;
    for (int shared = 0; shared < 2; shared++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                float *a = gc_rand(B * M * K, 30 + ta, -1, 1), *b = gc_rand(B * K * N, 40 + tb, -1, 1);
                pbw_ctx *ctx = new_ctx();
                int64_t ash[3] = {B, ta ? K : M, ta ? M : K};
                int64_t bsh[3] = {B, tb ? N : K, tb ? K : N};
                pbw_tensor *ta_ = pbw_tensor_wrap(ctx, a, 3, ash);
                pbw_tensor *tb_ = shared ? pbw_tensor_wrap(ctx, b, 2, bsh + 1) : pbw_tensor_wrap(ctx, b, 3, bsh);
                pbw_tensor *c = pbw_matmul(ctx, ta_, tb_, ta, tb);
                CHECK_MSG(c != NULL, "%s", pbw_ctx_error(ctx));
                int bad = 0;
                for (int64_t bb = 0; c && bb < B; bb++)
                    for (int64_t i = 0; i < M; i++)
                        for (int64_t j = 0; j < N; j++) {
                            double s = 0;
                            for (int64_t k = 0; k < K; k++) {
                                double av = ta ? a[bb * M * K + k * M + i] : a[bb * M * K + i * K + k];
                                int64_t bo = shared ? 0 : bb * K * N;
                                double bv = tb ? b[bo + j * K + k] : b[bo + k * N + j];
                                s += av * bv;
                            }
                            if (fabs(c->data[(bb * M + i) * N + j] - s) > 1e-5) bad++;
                        }
                CHECK_MSG(bad == 0, "matmul shared=%d ta=%d tb=%d: %d wrong", shared, ta, tb, bad);
                mm_user u = {ta, tb};
                gc_input in[2] = {{3, {ash[0], ash[1], ash[2]}, a, 1},
                                  {shared ? 2 : 3, {0}, b, 1}};
                if (shared) { in[1].shape[0] = bsh[1]; in[1].shape[1] = bsh[2]; }
                else memcpy(in[1].shape, bsh, sizeof bsh);
                CHECK_MSG(gc_check("matmul", mm_fn, &u, 2, in, (gc_opts){0}) == 0,
                          "matmul shared=%d ta=%d tb=%d backward", shared, ta, tb);
                pbw_ctx_free(ctx);
                free(a); free(b);
            }
}

static pbw_tensor *linear_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_linear(ctx, in[0], in[1], u ? in[2] : NULL);
}

PBW_TEST(ops_linear) {
    int64_t R0 = 2, R1 = 3, I = 7, O = 5;
    float *x = gc_rand(R0 * R1 * I, 50, -1, 1), *w = gc_rand(O * I, 51, -1, 1), *b = gc_rand(O, 52, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 3, (int64_t[]){R0, R1, I});
    pbw_tensor *tw = pbw_tensor_wrap(ctx, w, 2, (int64_t[]){O, I});
    pbw_tensor *tb = pbw_tensor_wrap(ctx, b, 1, (int64_t[]){O});
    pbw_tensor *y = pbw_linear(ctx, tx, tw, tb);
    CHECK(y && y->ndim == 3 && y->shape[2] == O);
    int bad = 0;
    for (int64_t r = 0; y && r < R0 * R1; r++)
        for (int64_t o = 0; o < O; o++) {
            double s = b[o];
            for (int64_t i = 0; i < I; i++) s += (double)x[r * I + i] * w[o * I + i];
            if (fabs(y->data[r * O + o] - s) > 1e-5) bad++;
        }
    CHECK(bad == 0);
    CHECK(pbw_linear(ctx, tw, tx, NULL) == NULL);
    pbw_ctx_free(ctx);
    gc_input in[3] = {{3, {R0, R1, I}, x, 1}, {2, {O, I}, w, 1}, {1, {O}, b, 1}};
    CHECK(gc_check("linear", linear_fn, (void *)1, 3, in, (gc_opts){0}) == 0);
    CHECK(gc_check("linear_nobias", linear_fn, NULL, 2, in, (gc_opts){0}) == 0);
    free(x); free(w); free(b);
}

static pbw_tensor *linear_quick_gelu_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_linear_quick_gelu(ctx, in[0], in[1], in[2]);
}

/* linear_quick_gelu = quick_gelu(linear) on the CPU: the same values to the bit (the same two
 * ops), and their gradients for x, w and b. (On CUDA the fused kernel is checked by
 * cuda_half_activations.) */
PBW_TEST(ops_linear_quick_gelu) {
    int64_t R = 6, I = 7, O = 5;
    float *x = gc_rand(R * I, 61, -2, 2), *w = gc_rand(O * I, 62, -1, 1);
    float *b = gc_rand(O, 63, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 2, (int64_t[]){R, I});
    pbw_tensor *tw = pbw_tensor_wrap(ctx, w, 2, (int64_t[]){O, I});
    pbw_tensor *tb = pbw_tensor_wrap(ctx, b, 1, (int64_t[]){O});
    pbw_tensor *y = pbw_linear_quick_gelu(ctx, tx, tw, tb);
    pbw_tensor *ref = pbw_quick_gelu(ctx, pbw_linear(ctx, tx, tw, tb));
    CHECK(y && ref && y->ndim == 2 && y->shape[1] == O);
    CHECK(y && ref && memcmp(y->data, ref->data, (size_t)y->numel * sizeof(float)) == 0);
    /* a weight that does not fit is refused with the product's message */
    CHECK(pbw_linear_quick_gelu(ctx, tw, tx, tb) == NULL && strstr(pbw_ctx_error(ctx), "fit"));
    /* so is a 0-d input (it has no last dimension to read) */
    pbw_ctx_reset(ctx);
    tw = pbw_tensor_wrap(ctx, w, 2, (int64_t[]){O, I});
    tb = pbw_tensor_wrap(ctx, b, 1, (int64_t[]){O});
    pbw_tensor *t0 = pbw_tensor_wrap(ctx, x, 0, NULL);
    CHECK(t0 && pbw_linear_quick_gelu(ctx, t0, tw, tb) == NULL &&
          strstr(pbw_ctx_error(ctx), "fit"));
    pbw_ctx_free(ctx);
    gc_input in[3] = {{2, {R, I}, x, 1}, {2, {O, I}, w, 1}, {1, {O}, b, 1}};
    CHECK(gc_check("linear_quick_gelu", linear_quick_gelu_fn, NULL, 3, in, (gc_opts){0}) == 0);
    free(x); free(w); free(b);
}

static pbw_tensor *layer_norm_linear_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_layer_norm_linear(ctx, in[0], in[1], in[2], 1e-5f, in[3], in[4], u != NULL);
}

/* layer_norm_linear = linear(layer_norm) (or linear_quick_gelu(layer_norm)) on the CPU: the same
 * values to the bit (the same ops), and gradients for x, the norm's gain and shift, w and b.
 * (The fused CUDA path is checked by cuda_layer_norm_linear.) */
PBW_TEST(ops_layer_norm_linear) {
    int64_t R = 5, I = 8, O = 6;
    float *x = gc_rand(R * I, 71, -2, 2), *g = gc_rand(I, 72, 0.5f, 1.5f);
    float *be = gc_rand(I, 73, -1, 1), *w = gc_rand(O * I, 74, -1, 1), *b = gc_rand(O, 75, -1, 1);
    for (int quick = 0; quick < 2; quick++) {
        pbw_ctx *ctx = new_ctx();
        pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 2, (int64_t[]){R, I});
        pbw_tensor *tg = pbw_tensor_wrap(ctx, g, 1, (int64_t[]){I});
        pbw_tensor *tbe = pbw_tensor_wrap(ctx, be, 1, (int64_t[]){I});
        pbw_tensor *tw = pbw_tensor_wrap(ctx, w, 2, (int64_t[]){O, I});
        pbw_tensor *tb = pbw_tensor_wrap(ctx, b, 1, (int64_t[]){O});
        pbw_tensor *y = pbw_layer_norm_linear(ctx, tx, tg, tbe, 1e-5f, tw, tb, quick);
        pbw_tensor *h = pbw_linear(ctx, pbw_layer_norm(ctx, tx, tg, tbe, 1e-5f), tw, tb);
        pbw_tensor *ref = quick ? pbw_quick_gelu(ctx, h) : h;
        CHECK(y && ref && y->ndim == 2 && y->shape[0] == R && y->shape[1] == O);
        CHECK(y && ref && memcmp(y->data, ref->data, (size_t)y->numel * sizeof(float)) == 0);
        /* a weight that does not fit the input is refused with the product's message */
        CHECK(pbw_layer_norm_linear(ctx, tx, tg, tbe, 1e-5f, tx, tb, quick) == NULL &&
              strstr(pbw_ctx_error(ctx), "fit"));
        /* so is a gain of another width, with the layer norm's */
        pbw_ctx_reset(ctx);
        tx = pbw_tensor_wrap(ctx, x, 2, (int64_t[]){R, I});
        tg = pbw_tensor_wrap(ctx, g, 1, (int64_t[]){I - 1});
        tw = pbw_tensor_wrap(ctx, w, 2, (int64_t[]){O, I});
        CHECK(pbw_layer_norm_linear(ctx, tx, tg, NULL, 1e-5f, tw, NULL, quick) == NULL &&
              strstr(pbw_ctx_error(ctx), "layer_norm"));
        pbw_ctx_free(ctx);
        gc_input in[5] = {{2, {R, I}, x, 1},
                          {1, {I}, g, 1},
                          {1, {I}, be, 1},
                          {2, {O, I}, w, 1},
                          {1, {O}, b, 1}};
        CHECK(gc_check(quick ? "layer_norm_linear quick_gelu" : "layer_norm_linear",
                       layer_norm_linear_fn, quick ? (void *)1 : NULL, 5, in, (gc_opts){0}) == 0);
    }
    free(x), free(g), free(be), free(w), free(b);
}

static pbw_tensor *linear_add_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_linear_add(ctx, in[0], in[1], u ? in[3] : NULL, in[2]);
}

/* linear_add = add(linear): the same values (one fused op), and gradients for x, w, b and the
 * residual. */
PBW_TEST(ops_linear_add) {
    int64_t R0 = 2, R1 = 3, I = 7, O = 5;
    float *x = gc_rand(R0 * R1 * I, 53, -1, 1), *w = gc_rand(O * I, 54, -1, 1);
    float *r = gc_rand(R0 * R1 * O, 55, -1, 1), *b = gc_rand(O, 56, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 3, (int64_t[]){R0, R1, I});
    pbw_tensor *tw = pbw_tensor_wrap(ctx, w, 2, (int64_t[]){O, I});
    pbw_tensor *tr = pbw_tensor_wrap(ctx, r, 3, (int64_t[]){R0, R1, O});
    pbw_tensor *tb = pbw_tensor_wrap(ctx, b, 1, (int64_t[]){O});
    pbw_tensor *y = pbw_linear_add(ctx, tx, tw, tb, tr);
    pbw_tensor *ref = pbw_add(ctx, pbw_linear(ctx, tx, tw, tb), tr);
    CHECK(y && ref && y->ndim == 3 && y->shape[2] == O);
    double e = 0;
    for (int64_t i = 0; y && ref && i < y->numel; i++) e = fmax(e, fabs(y->data[i] - ref->data[i]));
    CHECK(e <= 1e-6); /* the same sums; the residual added last in both */
    /* a residual of another shape and a missing one are refused with a message */
    CHECK(pbw_linear_add(ctx, tx, tw, tb, tx) == NULL && strstr(pbw_ctx_error(ctx), "residual"));
    pbw_ctx_reset(ctx);
    CHECK(pbw_linear_add(ctx, tx, tw, tb, NULL) == NULL && strstr(pbw_ctx_error(ctx), "residual"));
    pbw_ctx_free(ctx);
    gc_input in[4] = {{3, {R0, R1, I}, x, 1}, {2, {O, I}, w, 1}, {3, {R0, R1, O}, r, 1},
                      {1, {O}, b, 1}};
    CHECK(gc_check("linear_add", linear_add_fn, (void *)1, 4, in, (gc_opts){0}) == 0);
    CHECK(gc_check("linear_add_nobias", linear_add_fn, NULL, 3, in, (gc_opts){0}) == 0);
    free(x); free(w); free(r); free(b);
}

/* linear_add_into: without gradients it writes r + linear(x, w, b) over r and returns r (the
 * same values as linear_add up to the order of the two adds: 1e-6); when r itself is x, when
 * a gradient is recorded, or when the tape holds an op that may need r, it returns a new tensor
 * and leaves r alone (the gradients are then linear_add's). */
static pbw_tensor *linear_add_into_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    /* a copy of r to write over: the finite differences reuse the inputs */
    return pbw_linear_add_into(ctx, in[0], in[1], in[3], pbw_add_scalar(ctx, in[2], 0.0f));
}

PBW_TEST(ops_linear_add_into) {
    int64_t R = 6, I = 7, O = 5;
    float *x = gc_rand(R * I, 57, -1, 1), *w = gc_rand(O * I, 58, -1, 1);
    float *r = gc_rand(R * O, 59, -1, 1), *b = gc_rand(O, 60, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 2, (int64_t[]){R, I});
    pbw_tensor *tw = pbw_tensor_wrap(ctx, w, 2, (int64_t[]){O, I});
    pbw_tensor *tb = pbw_tensor_wrap(ctx, b, 1, (int64_t[]){O});
    pbw_tensor *ref = pbw_linear_add(ctx, tx, tw, tb, pbw_tensor_wrap(ctx, r, 2, (int64_t[]){R, O}));
    for (int has_b = 0; has_b < 2; has_b++) {
        pbw_tensor *tr = pbw_tensor_from_host(ctx, r, 2, (int64_t[]){R, O}); /* a copy of r */
        pbw_tensor *nob = has_b ? NULL : pbw_linear_add(ctx, tx, tw, NULL, tr);
        pbw_tensor *y = pbw_linear_add_into(ctx, tx, tw, has_b ? tb : NULL, tr);
        CHECK(y == tr); /* written over r */
        const pbw_tensor *want = has_b ? ref : nob;
        double e = 0;
        for (int64_t i = 0; y && want && i < y->numel; i++)
            e = fmax(e, fabs(y->data[i] - want->data[i]));
        CHECK(y && want && e <= 1e-6);
    }
    /* r aliasing x, or overlapping it (x a view of r's storage one row on): a new tensor */
    pbw_tensor *sq = pbw_tensor_from_host(ctx, r, 2, (int64_t[]){R, O});
    pbw_tensor *sw = pbw_tensor_from_host(ctx, w, 2, (int64_t[]){O, O});
    CHECK(pbw_linear_add_into(ctx, sq, sw, NULL, sq) != sq);
    pbw_tensor *part = pbw_tensor_wrap(ctx, sq->data + O, 2, (int64_t[]){R - 1, O});
    pbw_tensor *rpart = pbw_tensor_wrap(ctx, sq->data, 2, (int64_t[]){R - 1, O});
    CHECK(pbw_linear_add_into(ctx, part, sw, NULL, rpart) != rpart);
    /* an op on the tape may need r: a new tensor, r unchanged */
    pbw_tensor *lx = pbw_tensor_from_host(ctx, x, 2, (int64_t[]){R, I});
    lx->requires_grad = 1;
    pbw_tensor *tr = pbw_tensor_from_host(ctx, r, 2, (int64_t[]){R, O});
    pbw_tensor *m = pbw_mul(ctx, pbw_linear(ctx, lx, tw, NULL), tr); /* saves tr for backward */
    pbw_tensor *y = pbw_linear_add_into(ctx, tx, tw, tb, tr);
    CHECK(m && y && y != tr && tr->data[0] == r[0] && tr->data[R * O - 1] == r[R * O - 1]);
    pbw_ctx_free(ctx);
    gc_input in[4] = {{2, {R, I}, x, 1}, {2, {O, I}, w, 1}, {2, {R, O}, r, 1}, {1, {O}, b, 1}};
    CHECK(gc_check("linear_add_into", linear_add_into_fn, NULL, 4, in, (gc_opts){0}) == 0);
    free(x); free(w); free(r); free(b);
}

/* Only the inputs that ask for a gradient get one: weights stay without (painting's rule). */
PBW_TEST(ops_no_weight_grad) {
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *x = rand_tensor(ctx, 2, (int64_t[]){4, 8}, 60, -1, 1);
    pbw_tensor *w = rand_tensor(ctx, 2, (int64_t[]){3, 8}, 61, -1, 1);
    x->requires_grad = 1;
    pbw_tensor *loss = pbw_sum_all(ctx, pbw_square(ctx, pbw_linear(ctx, x, w, NULL)));
    pbw_err err;
    CHECK(pbw_backward(ctx, loss, NULL, &err) == 0);
    CHECK(x->grad != NULL);
    CHECK(w->grad == NULL);
    /* with grad disabled nothing is recorded and backward refuses */
    pbw_ctx_reset(ctx);
    pbw_ctx_set_grad(ctx, 0);
    pbw_tensor *x2 = rand_tensor(ctx, 1, (int64_t[]){3}, 62, -1, 1);
    x2->requires_grad = 1;
    pbw_tensor *l2 = pbw_sum_all(ctx, x2);
    CHECK(l2 && !l2->requires_grad);
    CHECK(pbw_backward(ctx, l2, NULL, &err) != 0);
    pbw_ctx_free(ctx);
}

/* Gradients left unset (not zeroed) for their first producer to write (pbw_grad_out): a tensor
 * whose first producer in backward order writes, one whose first producer adds (then the buffer
 * is zeroed), and a node that takes the same tensor twice. Values against finite differences;
 * the unset bytes against what the rule says. */
static pbw_tensor *two_writers_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    (void)u; /* x -> tanh (its first producer, writes) and sigmoid (adds) */
    return pbw_add(ctx, pbw_sigmoid(ctx, in[0]), pbw_tanh(ctx, in[0]));
}
static pbw_tensor *adder_first_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    (void)u; /* x -> sigmoid, then mul (its first producer, adds): x's gradient is zeroed */
    pbw_tensor *s = pbw_sigmoid(ctx, in[0]);
    return pbw_add(ctx, s, pbw_mul(ctx, in[0], in[1]));
}
static pbw_tensor *same_twice_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    (void)u; /* x as the product's input and as its residual */
    return pbw_linear_add(ctx, in[0], in[1], NULL, in[0]);
}

static pbw_tensor *matmul_writes_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    (void)u; /* a (2,R,C) @ b (2,C,C): both written whole; a^T @ w, w (R,C) shared by the two
              * items: w's gradient adds up one product an item (not written), a's written by
              * the first of its two producers in backward order */
    pbw_tensor *p = pbw_tanh(ctx, pbw_matmul(ctx, in[0], in[1], 0, 0));
    pbw_tensor *q = pbw_sigmoid(ctx, pbw_matmul(ctx, in[0], in[2], 1, 0));
    return pbw_add(ctx, pbw_sum_all(ctx, p), pbw_sum_all(ctx, q));
}

PBW_TEST(ops_grad_first_writer) {
    const int64_t R = 5, C = 6;
    float *x = gc_rand(R * C, 71, -1, 1), *e = gc_rand(R * C, 72, -1, 1), *w = gc_rand(C * C, 73, -1, 1);
    gc_input one[1] = {{2, {R, C}, x, 1}};
    CHECK(gc_check("tanh writes, sigmoid adds", two_writers_fn, NULL, 1, one, (gc_opts){0}) == 0);
    gc_input two[2] = {{2, {R, C}, x, 1}, {2, {R, C}, e, 1}};
    CHECK(gc_check("mul adds first", adder_first_fn, NULL, 2, two, (gc_opts){0}) == 0);
    gc_input lin[2] = {{2, {R, C}, x, 1}, {2, {C, C}, w, 1}};
    CHECK(gc_check("x twice in linear_add", same_twice_fn, NULL, 2, lin, (gc_opts){0}) == 0);
    /* which gradients were left unset: x (tanh writes it), and sigmoid's and tanh's outputs
     * (add's operands of its output's shape take or copy its gradient); in the second function
     * sigmoid's output and mul's (add's operands) but not x (mul adds x's first) or e (a leaf of
     * mul alone) */
    pbw_ctx *ctx = new_ctx();
    pbw_err err;
    pbw_tensor *tx = pbw_tensor_from_host(ctx, x, 2, (int64_t[]){R, C});
    pbw_tensor *te = pbw_tensor_from_host(ctx, e, 2, (int64_t[]){R, C});
    tx->requires_grad = te->requires_grad = 1;
    CHECK(pbw_backward(ctx, pbw_sum_all(ctx, two_writers_fn(ctx, (pbw_tensor *[]){tx}, NULL)),
                       NULL, &err) == 0);
    const size_t one_grad = (size_t)((R * C * 4 + 63) / 64 * 64);
    printf("  tanh writes x: %zu bytes unset\n", pbw_ctx_grad_unset_bytes(ctx));
    CHECK(pbw_ctx_grad_unset_bytes(ctx) == 3 * one_grad);
    pbw_ctx_reset(ctx);
    tx = pbw_tensor_from_host(ctx, x, 2, (int64_t[]){R, C});
    te = pbw_tensor_from_host(ctx, e, 2, (int64_t[]){R, C});
    tx->requires_grad = te->requires_grad = 1;
    CHECK(pbw_backward(ctx, pbw_sum_all(ctx, adder_first_fn(ctx, (pbw_tensor *[]){tx, te}, NULL)),
                       NULL, &err) == 0);
    CHECK(pbw_ctx_grad_unset_bytes(ctx) == 2 * one_grad);
    /* matmul writes a's gradient and b's where b is not shared by the batch's items: values
     * against finite differences; then the same backward again after a reset, whose unset
     * buffers hold the first run's gradients: the same gradients, bit for bit */
    float *ma = gc_rand(2 * R * C, 74, -1, 1), *mb = gc_rand(2 * C * C, 75, -1, 1);
    float *mw = gc_rand(R * C, 76, -1, 1);
    gc_input mm[3] = {{3, {2, R, C}, ma, 1}, {3, {2, C, C}, mb, 1}, {2, {R, C}, mw, 1}};
    CHECK(gc_check("matmul writes a and an unshared b", matmul_writes_fn, NULL, 3, mm,
                   (gc_opts){0}) == 0);
    float *first[3] = {NULL, NULL, NULL};
    for (int run = 0; run < 2; run++) {
        pbw_ctx_reset(ctx);
        pbw_tensor *ts[3] = {pbw_tensor_from_host(ctx, ma, 3, (int64_t[]){2, R, C}),
                             pbw_tensor_from_host(ctx, mb, 3, (int64_t[]){2, C, C}),
                             pbw_tensor_from_host(ctx, mw, 2, (int64_t[]){R, C})};
        for (int i = 0; i < 3; i++) ts[i]->requires_grad = 1;
        CHECK(pbw_backward(ctx, matmul_writes_fn(ctx, ts, NULL), NULL, &err) == 0);
        if (run == 0) {
            /* a (its first producer writes it) and b unset; w zeroed */
            printf("  matmul: %zu bytes unset\n", pbw_ctx_grad_unset_bytes(ctx));
            CHECK(pbw_ctx_grad_unset_bytes(ctx) >= 2 * (size_t)((2 * R * C * 4 + 63) / 64 * 64));
        }
        for (int i = 0; i < 3; i++) {
            const float *g = pbw_grad_host(ctx, ts[i]);
            CHECK(g != NULL);
            if (!g) continue;
            if (run == 0) {
                first[i] = malloc((size_t)ts[i]->numel * sizeof(float));
                memcpy(first[i], g, (size_t)ts[i]->numel * sizeof(float));
            } else {
                CHECK(memcmp(first[i], g, (size_t)ts[i]->numel * sizeof(float)) == 0);
            }
        }
    }
    for (int i = 0; i < 3; i++) free(first[i]);
    free(ma), free(mb), free(mw);
    pbw_ctx_free(ctx);
    free(x); free(e); free(w);
}

/* Gradients passed through unchanged (pbw_grad_pass): a reshape's input, an add's operands and
 * a sub's first, linear_add's residual take their output's gradient buffer when it is their
 * first producer, instead of a copy. The buffer is shared where the rule says, and every
 * gradient is the same as with the sharing off (PBW_GRAD_ALIAS=0), and as finite differences. */
static pbw_tensor *pass_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    (void)u; /* x -> reshape -> (add with e) -> sub tanh(x) -> linear_add residual; e broadcast */
    const int64_t C = in[0]->shape[1];
    pbw_tensor *r = pbw_reshape(ctx, in[0], 2, (int64_t[]){in[0]->numel / C, C});
    pbw_tensor *s = pbw_sub(ctx, pbw_add(ctx, r, in[1]), pbw_tanh(ctx, in[0]));
    return pbw_linear_add(ctx, pbw_sigmoid(ctx, s), in[2], NULL, s);
}

static pbw_tensor *one_taker_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    (void)u; /* both of add's operands unset when it runs backward; a has another consumer
              * (exp) whose backward runs after add's: had both taken add's buffer, exp's
              * share of a's gradient would land in b's too */
    pbw_tensor *a = pbw_tanh(ctx, in[0]), *b = pbw_sigmoid(ctx, in[1]);
    pbw_tensor *c = pbw_exp(ctx, a);
    pbw_tensor *s = pbw_add(ctx, a, b);
    return pbw_add(ctx, pbw_sum_all(ctx, pbw_square(ctx, s)), pbw_sum_all(ctx, c));
}

PBW_TEST(ops_grad_pass_through) {
    const int64_t R = 4, C = 5;
    float *x = gc_rand(R * C, 81, -1, 1), *e = gc_rand(C, 82, -1, 1), *w = gc_rand(C * C, 83, -1, 1);
    gc_input in[3] = {{2, {R, C}, x, 1}, {1, {C}, e, 1}, {2, {C, C}, w, 1}};
    CHECK(gc_check("reshape, add, sub, linear_add pass gradients", pass_fn, NULL, 3, in,
                   (gc_opts){0}) == 0);
    float *x2 = gc_rand(R * C, 84, -1, 1);
    gc_input two[2] = {{2, {R, C}, x, 1}, {2, {R, C}, x2, 1}};
    CHECK(gc_check("one of add's operands takes its buffer", one_taker_fn, NULL, 2, two,
                   (gc_opts){0}) == 0);
    free(x2);
    /* y = reshape(x): x's only producer, so x's gradient is y's buffer */
    pbw_ctx *ctx = new_ctx();
    pbw_err err;
    pbw_tensor *tx = pbw_tensor_from_host(ctx, x, 2, (int64_t[]){R, C});
    tx->requires_grad = 1;
    pbw_tensor *y = pbw_reshape(ctx, tx, 1, (int64_t[]){R * C});
    pbw_tensor *t = pbw_tanh(ctx, y);
    CHECK(pbw_backward(ctx, pbw_sum_all(ctx, t), NULL, &err) == 0);
    CHECK(tx->grad && tx->grad == y->grad);
    /* the whole chain, sharing on and off: the same gradients, bit for bit */
    float *g[2][3];
    for (int off = 0; off < 2; off++) {
        if (off) setenv("PBW_GRAD_ALIAS", "0", 1);
        pbw_ctx_reset(ctx);
        pbw_tensor *ts[3] = {pbw_tensor_from_host(ctx, x, 2, (int64_t[]){R, C}),
                             pbw_tensor_from_host(ctx, e, 1, (int64_t[]){C}),
                             pbw_tensor_from_host(ctx, w, 2, (int64_t[]){C, C})};
        for (int i = 0; i < 3; i++) ts[i]->requires_grad = 1;
        CHECK(pbw_backward(ctx, pbw_sum_all(ctx, pbw_square(ctx, pass_fn(ctx, ts, NULL))), NULL,
                           &err) == 0);
        for (int i = 0; i < 3; i++) {
            g[off][i] = malloc((size_t)ts[i]->numel * sizeof(float));
            memcpy(g[off][i], ts[i]->grad, (size_t)ts[i]->numel * sizeof(float));
        }
        unsetenv("PBW_GRAD_ALIAS");
    }
    CHECK(memcmp(g[0][0], g[1][0], R * C * sizeof(float)) == 0);
    CHECK(memcmp(g[0][1], g[1][1], C * sizeof(float)) == 0);
    CHECK(memcmp(g[0][2], g[1][2], C * C * sizeof(float)) == 0);
    for (int off = 0; off < 2; off++)
        for (int i = 0; i < 3; i++) free(g[off][i]);
    pbw_ctx_free(ctx);
    free(x); free(e); free(w);
}

/* ---------------- norms, softmax, attention, embedding ---------------- */

static pbw_tensor *ln_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_layer_norm(ctx, in[0], in[1], in[2], 1e-5f);
}

PBW_TEST(ops_layer_norm) {
    int64_t R = 6, D = 16;
    float *x = gc_rand(R * D, 70, -2, 2), *w = gc_rand(D, 71, 0.5f, 1.5f), *b = gc_rand(D, 72, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *in[3] = {pbw_tensor_wrap(ctx, x, 2, (int64_t[]){R, D}), pbw_tensor_wrap(ctx, w, 1, &D),
                         pbw_tensor_wrap(ctx, b, 1, &D)};
    pbw_tensor *y = ln_fn(ctx, in, NULL);
    int bad = 0;
    for (int64_t r = 0; y && r < R; r++) {
        double m = 0, v = 0;
        for (int64_t i = 0; i < D; i++) m += x[r * D + i];
        m /= D;
        for (int64_t i = 0; i < D; i++) v += (x[r * D + i] - m) * (x[r * D + i] - m);
        v /= D;
        for (int64_t i = 0; i < D; i++) {
            double ref = (x[r * D + i] - m) / sqrt(v + 1e-5) * w[i] + b[i];
            if (fabs(y->data[r * D + i] - ref) > 1e-5) bad++;
        }
    }
    CHECK(y && bad == 0);
    pbw_ctx_free(ctx);
    gc_input gin[3] = {{2, {R, D}, x, 1}, {1, {D}, w, 1}, {1, {D}, b, 1}};
    CHECK(gc_check("layer_norm", ln_fn, NULL, 3, gin, (gc_opts){0}) == 0);
    free(x); free(w); free(b);
}

static pbw_tensor *bn_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_batch_norm(ctx, in[0], in[1], in[2], in[3], in[4], 1e-4f);
}

PBW_TEST(ops_batch_norm) {
    int64_t N = 2, C = 3, S = 10;
    float *x = gc_rand(N * C * S, 80, -2, 2), *mean = gc_rand(C, 81, -0.5f, 0.5f),
          *var = gc_rand(C, 82, 0.5f, 2), *w = gc_rand(C, 83, 0.5f, 1.5f), *b = gc_rand(C, 84, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *in[5] = {pbw_tensor_wrap(ctx, x, 4, (int64_t[]){N, C, 2, 5}),
                         pbw_tensor_wrap(ctx, mean, 1, &C), pbw_tensor_wrap(ctx, var, 1, &C),
                         pbw_tensor_wrap(ctx, w, 1, &C), pbw_tensor_wrap(ctx, b, 1, &C)};
    pbw_tensor *y = bn_fn(ctx, in, NULL);
    int bad = 0;
    for (int64_t n = 0; y && n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t s = 0; s < S; s++) {
                int64_t i = (n * C + c) * S + s;
                double ref = (x[i] - mean[c]) / sqrt(var[c] + 1e-4) * w[c] + b[c];
                if (fabs(y->data[i] - ref) > 1e-5) bad++;
            }
    CHECK(y && bad == 0);
    pbw_ctx_free(ctx);
    gc_input gin[5] = {{4, {N, C, 2, 5}, x, 1}, {1, {C}, mean, 0}, {1, {C}, var, 0},
                       {1, {C}, w, 1}, {1, {C}, b, 1}};
    CHECK(gc_check("batch_norm", bn_fn, NULL, 5, gin, (gc_opts){0}) == 0);
    free(x); free(mean); free(var); free(w); free(b);
}

static pbw_tensor *lpl_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_lpips_layer(ctx, in[0], in[1], in[2], in[3], 1e-10f);
}

/* LPIPS's weighted layer term against the formula in double, with one position's vector all
 * zero (its normalized vector is 0, as lpips's eps makes it), for a reference of batch 1 and
 * of batch N; the gradient to f by finite differences away from the zero vector (where the
 * normalization has no derivative). */
PBW_TEST(ops_lpips_layer) {
    const int64_t N = 2, C = 5, h = 3, w = 4, S = h * w;
    for (int nr = 1; nr <= N; nr += N - 1) {
        float *f = gc_rand(N * C * S, 95, 0.0f, 2.0f), *ref = gc_rand(nr * C * S, 96, -0.5f, 0.5f);
        float *wt = gc_rand(C, 97, 0.0f, 1.0f), *k = gc_rand(S, 98, 0.0f, 1.0f);
        for (int64_t c = 0; c < C; c++) f[c * S + 5] = 0.0f; /* image 0, position 5 */
        pbw_ctx *ctx = new_ctx();
        pbw_tensor *in[4] = {pbw_tensor_wrap(ctx, f, 4, (int64_t[]){N, C, h, w}),
                             pbw_tensor_wrap(ctx, ref, 4, (int64_t[]){nr, C, h, w}),
                             pbw_tensor_wrap(ctx, wt, 4, (int64_t[]){1, C, 1, 1}),
                             pbw_tensor_wrap(ctx, k, 2, (int64_t[]){h, w})};
        pbw_tensor *y = lpl_fn(ctx, in, NULL);
        CHECK_MSG(y && y->numel == N, "%s", pbw_ctx_error(ctx));
        for (int64_t n = 0; y && n < N; n++) {
            double e = 0;
            for (int64_t s = 0; s < S; s++) {
                double ss = 0, r = 0;
                for (int64_t c = 0; c < C; c++) ss += (double)f[(n * C + c) * S + s] * f[(n * C + c) * S + s];
                for (int64_t c = 0; c < C; c++) {
                    const double d = f[(n * C + c) * S + s] / (sqrt(ss) + 1e-10) -
                                     ref[((n % nr) * C + c) * S + s];
                    r += wt[c] * d * d;
                }
                e += k[s] * r;
            }
            CHECK_MSG(fabs(y->data[n] - e) <= 1e-5 * fabs(e), "ref batch %d, image %lld: %.7g vs %.7g",
                      nr, (long long)n, y->data[n], e);
        }
        /* bad shapes and constant inputs that ask for gradients are refused */
        CHECK(!pbw_lpips_layer(ctx, in[0], in[1], in[3], in[3], 1e-10f));
        pbw_ctx_free(ctx);
        f[5] = 0.5f; /* a nonzero vector at position 5 for the finite differences */
        gc_input gin[4] = {{4, {N, C, h, w}, f, 1}, {4, {nr, C, h, w}, ref, 0},
                           {4, {1, C, 1, 1}, wt, 0}, {2, {h, w}, k, 0}};
        CHECK(gc_check("lpips_layer", lpl_fn, NULL, 4, gin, (gc_opts){0}) == 0);
        free(f), free(ref), free(wt), free(k);
    }
}

static pbw_tensor *softmax_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) { return pbw_softmax(ctx, in[0]); }

PBW_TEST(ops_softmax) {
    float *x = gc_rand(4 * 9, 90, -4, 4);
    x[3] = 80.0f; /* large logits must not overflow */
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *t = pbw_tensor_wrap(ctx, x, 2, (int64_t[]){4, 9});
    pbw_tensor *y = pbw_softmax(ctx, t);
    int bad = 0;
    for (int r = 0; y && r < 4; r++) {
        double mx = -1e30, s = 0;
        for (int i = 0; i < 9; i++) mx = fmax(mx, x[r * 9 + i]);
        for (int i = 0; i < 9; i++) s += exp(x[r * 9 + i] - mx);
        for (int i = 0; i < 9; i++)
            if (fabs(y->data[r * 9 + i] - exp(x[r * 9 + i] - mx) / s) > 1e-6) bad++;
    }
    CHECK(y && bad == 0);
    pbw_ctx_free(ctx);
    x[3] = 1.0f;
    gc_input in = {2, {4, 9}, x, 1};
    CHECK(gc_check("softmax", softmax_fn, NULL, 1, &in, (gc_opts){0}) == 0);
    free(x);
}

static pbw_tensor *linear_multi_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    pbw_tensor *w[2] = {in[1], in[3]}, *b[2] = {in[2], NULL}, *y[2];
    if (pbw_linear_multi(ctx, in[0], 2, w, b, y)) return NULL;
    return pbw_concat(ctx, 2, y, 1);
}

/* On the CPU pbw_linear_multi is pbw_linear once a map: the same values, and gradients for x
 * and the maps (the one-kernel path is cuda_linear_multi's). */
PBW_TEST(ops_linear_multi) {
    pbw_ctx *ctx = new_ctx();
    float *x = gc_rand(7, 1, -1, 1), *w1 = gc_rand(5 * 7, 2, -1, 1), *b1 = gc_rand(5, 3, -1, 1),
          *w2 = gc_rand(3 * 7, 4, -1, 1);
    pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 2, (int64_t[]){1, 7});
    pbw_tensor *w[2] = {pbw_tensor_wrap(ctx, w1, 2, (int64_t[]){5, 7}),
                        pbw_tensor_wrap(ctx, w2, 2, (int64_t[]){3, 7})};
    pbw_tensor *b[2] = {pbw_tensor_wrap(ctx, b1, 1, (int64_t[]){5}), NULL}, *y[2];
    CHECK(pbw_linear_multi_fused(ctx, tx, 2, w, b) == 0);
    CHECK(pbw_linear_multi(ctx, tx, 2, w, b, y) == 0);
    for (int k = 0; k < 2 && y[0] && y[1]; k++) {
        pbw_tensor *one = pbw_linear(ctx, tx, w[k], b[k]);
        CHECK(one && memcmp(one->data, y[k]->data, (size_t)one->numel * sizeof(float)) == 0);
    }
    CHECK(pbw_linear_multi(ctx, tx, 0, w, b, y) == -1);
    pbw_ctx_free(ctx);
    gc_input in[4] = {{2, {1, 7}, x, 1}, {2, {5, 7}, w1, 1}, {1, {5}, b1, 1}, {2, {3, 7}, w2, 1}};
    CHECK(gc_check("linear_multi", linear_multi_fn, NULL, 4, in, (gc_opts){0}) == 0);
    free(x), free(w1), free(b1), free(w2);
}

static pbw_tensor *class_position_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    pbw_tensor **c = u; /* the class token and positions */
    return pbw_class_position(ctx, in[0], c[0], c[1]);
}

/* The same values as zeros + cls, concat and add (single fp32 additions); x's gradient by
 * finite differences; shapes that do not fit, and a class token that would take a gradient,
 * fail with a message. */
PBW_TEST(ops_class_position) {
    pbw_ctx *ctx = new_ctx();
    const int64_t B = 2, P = 3, W = 5;
    float *x = gc_rand(B * P * W, 81, -1, 1), *c = gc_rand(W, 82, -1, 1),
          *p = gc_rand((P + 1) * W, 83, -1, 1);
    pbw_tensor *tx = pbw_tensor_wrap(ctx, x, 3, (int64_t[]){B, P, W});
    pbw_tensor *tc = pbw_tensor_wrap(ctx, c, 1, (int64_t[]){W});
    pbw_tensor *tp = pbw_tensor_wrap(ctx, p, 2, (int64_t[]){P + 1, W});
    pbw_tensor *y = pbw_class_position(ctx, tx, tc, tp);
    pbw_tensor *cls = pbw_add(ctx, pbw_tensor_zeros(ctx, 3, (int64_t[]){B, 1, W}), tc);
    pbw_tensor *parts[2] = {cls, tx};
    pbw_tensor *ref = pbw_add(ctx, pbw_concat(ctx, 2, parts, 1), tp);
    CHECK(y && ref && y->numel == ref->numel &&
          memcmp(y->data, ref->data, (size_t)y->numel * sizeof(float)) == 0);
    CHECK(pbw_class_position(ctx, tx, tc, tx) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "(P+1,W)") != NULL, "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    tx = pbw_tensor_wrap(ctx, x, 3, (int64_t[]){B, P, W});
    tc = pbw_tensor_wrap(ctx, c, 1, (int64_t[]){W});
    tp = pbw_tensor_wrap(ctx, p, 2, (int64_t[]){P + 1, W});
    tc->requires_grad = 1;
    CHECK(pbw_class_position(ctx, tx, tc, tp) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "constants") != NULL, "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    /* the constants live in ctx2 (gc_check makes its own contexts for x) */
    pbw_ctx *ctx2 = new_ctx();
    pbw_tensor *consts[2] = {pbw_tensor_wrap(ctx2, c, 1, (int64_t[]){W}),
                             pbw_tensor_wrap(ctx2, p, 2, (int64_t[]){P + 1, W})};
    gc_input in = {3, {B, P, W}, x, 1};
    CHECK(gc_check("class_position", class_position_fn, consts, 1, &in, (gc_opts){0}) == 0);
    pbw_ctx_free(ctx2);
    pbw_ctx_free(ctx);
    free(x), free(c), free(p);
}

static pbw_tensor *cosine_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_cosine(ctx, in[0], in[1]);
}

PBW_TEST(ops_cosine) {
    pbw_err err;
    pbw_ctx *ctx = new_ctx();
    float av[9] = {1, 2, 3, -1, 0.5f, 2, 0, 0, 0}, bv[3] = {0.5f, -1, 2};
    pbw_tensor *a = pbw_tensor_wrap(ctx, av, 2, (int64_t[]){3, 3});
    pbw_tensor *b = pbw_tensor_wrap(ctx, bv, 2, (int64_t[]){1, 3});
    a->requires_grad = 1;
    pbw_tensor *c = pbw_cosine(ctx, a, b);
    CHECK(c && c->numel == 3);
    if (!c) return;
    for (int r = 0; r < 2; r++) {
        const float *x = av + 3 * r;
        double d = 0, na = 0, nb = 0;
        for (int i = 0; i < 3; i++) d += x[i] * bv[i], na += x[i] * x[i], nb += bv[i] * bv[i];
        CHECK_NEAR(c->data[r], d / sqrt(na * nb), 1e-6);
    }
    CHECK(c->data[2] == 0.0f); /* a zero row: 0, not NaN */
    /* d cos / d a = b/(|a||b|) - cos * a/|a|^2 */
    CHECK(pbw_backward(ctx, pbw_sum_all(ctx, c), NULL, &err) == 0);
    for (int r = 0; r < 2; r++) {
        const float *x = av + 3 * r;
        double na = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]), nb = sqrt(0.25 + 1 + 4);
        for (int i = 0; i < 3; i++)
            CHECK_NEAR(a->grad[3 * r + i], bv[i] / (na * nb) - c->data[r] * x[i] / (na * na), 1e-6);
    }
    CHECK(isfinite(a->grad[6]) && isfinite(a->grad[7]) && isfinite(a->grad[8]));
    pbw_ctx_reset(ctx);
    a = pbw_tensor_wrap(ctx, av, 2, (int64_t[]){3, 3});
    CHECK(pbw_cosine(ctx, a, pbw_tensor_wrap(ctx, bv, 2, (int64_t[]){3, 1})) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "(N or 1,E)") != NULL, "%s", pbw_ctx_error(ctx));
    pbw_ctx_free(ctx);
    /* both gradients, b one row for all (its gradient a sum over rows) and a row each; rows of
     * 40 span a warp's loop on a GPU */
    float *x = gc_rand(5 * 40, 71, -1, 1), *y1 = gc_rand(40, 72, -1, 1), *y5 = gc_rand(5 * 40, 73, -1, 1);
    gc_input one[2] = {{2, {5, 40}, x, 1}, {2, {1, 40}, y1, 1}};
    CHECK(gc_check("cosine, b one row", cosine_fn, NULL, 2, one, (gc_opts){0}) == 0);
    gc_input each[2] = {{2, {5, 40}, x, 1}, {2, {5, 40}, y5, 1}};
    CHECK(gc_check("cosine, b a row each", cosine_fn, NULL, 2, each, (gc_opts){0}) == 0);
    free(x), free(y1), free(y5);
}

static pbw_tensor *attn_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_attention(ctx, in[0], in[1], in[2], *(int *)u, 0);
}

PBW_TEST(ops_attention) {
    int64_t B = 2, H = 2, T = 5, S = 5, D = 4;
    for (int causal = 0; causal < 2; causal++) {
        /* inputs in [-2,2] make the softmax far from uniform, so that q and k gradients are
         * O(0.1) rather than O(1e-3) and a wrong term cannot hide under the tolerance */
        float *q = gc_rand(B * H * T * D, 100, -2, 2), *k = gc_rand(B * H * S * D, 101, -2, 2),
              *v = gc_rand(B * H * S * D, 102, -2, 2);
        pbw_ctx *ctx = new_ctx();
        pbw_tensor *in[3] = {pbw_tensor_wrap(ctx, q, 4, (int64_t[]){B, H, T, D}),
                             pbw_tensor_wrap(ctx, k, 4, (int64_t[]){B, H, S, D}),
                             pbw_tensor_wrap(ctx, v, 4, (int64_t[]){B, H, S, D})};
        pbw_tensor *o = attn_fn(ctx, in, &causal);
        CHECK(o != NULL);
        int bad = 0;
        for (int64_t h = 0; o && h < B * H; h++)
            for (int64_t t = 0; t < T; t++) {
                double sc[16], mx = -1e30, sum = 0;
                for (int64_t s = 0; s < S; s++) {
                    double d = 0;
                    for (int64_t j = 0; j < D; j++) d += (double)q[(h * T + t) * D + j] * k[(h * S + s) * D + j];
                    sc[s] = (causal && s > t) ? -INFINITY : d / sqrt((double)D);
                    mx = fmax(mx, sc[s]);
                }
                for (int64_t s = 0; s < S; s++) { sc[s] = exp(sc[s] - mx); sum += sc[s]; }
                for (int64_t j = 0; j < D; j++) {
                    double ref = 0;
                    for (int64_t s = 0; s < S; s++) ref += sc[s] / sum * v[(h * S + s) * D + j];
                    if (fabs(o->data[(h * T + t) * D + j] - ref) > 1e-5) bad++;
                }
            }
        CHECK_MSG(bad == 0, "attention causal=%d: %d wrong", causal, bad);
        pbw_ctx_free(ctx);
        gc_input gin[3] = {{4, {B, H, T, D}, q, 1}, {4, {B, H, S, D}, k, 1}, {4, {B, H, S, D}, v, 1}};
        /* atol 5e-4: the loss has 80 terms of size O(1); its float rounding over 2*eps is ~1e-4 */
        CHECK_MSG(gc_check("attention", attn_fn, &causal, 3, gin, (gc_opts){.atol = 5e-4}) == 0, "attention causal=%d backward", causal);
        free(q); free(k); free(v);
    }
}

static pbw_tensor *emb_fn(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    return pbw_embedding(ctx, in[0], (const int32_t *)u, 2, (int64_t[]){2, 3});
}

PBW_TEST(ops_embedding) {
    int32_t ids[6] = {3, 0, 3, 9, 1, 1};
    float *table = gc_rand(10 * 4, 110, -1, 1);
    pbw_ctx *ctx = new_ctx();
    pbw_tensor *t = pbw_tensor_wrap(ctx, table, 2, (int64_t[]){10, 4});
    pbw_tensor *y = emb_fn(ctx, &t, ids);
    CHECK(y && y->ndim == 3 && y->shape[2] == 4);
    int bad = 0;
    for (int i = 0; y && i < 6; i++)
        for (int d = 0; d < 4; d++) if (y->data[i * 4 + d] != table[ids[i] * 4 + d]) bad++;
    CHECK(bad == 0);
    int32_t badids[2] = {0, 10};
    CHECK(pbw_embedding(ctx, t, badids, 1, (int64_t[]){2}) == NULL);
    CHECK(strstr(pbw_ctx_error(ctx), "outside") != NULL);
    pbw_ctx_free(ctx);
    gc_input in = {2, {10, 4}, table, 1};
    CHECK(gc_check("embedding", emb_fn, ids, 1, &in, (gc_opts){0}) == 0);
    free(table);
}

/* fp16 / bf16 storage: conversion round trips and known values */
PBW_TEST(core_half_conversion) {
    CHECK(pbw_f16_to_f32(0x3c00) == 1.0f);
    CHECK(pbw_f16_to_f32(0xc000) == -2.0f);
    CHECK(pbw_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(pbw_f16_to_f32(0x0001) == 5.9604644775390625e-08f);
    CHECK(isinf(pbw_f16_to_f32(0x7c00)));
    CHECK(isnan(pbw_f16_to_f32(0x7e00)));
    CHECK(pbw_f32_to_f16(1.0f) == 0x3c00);
    CHECK(pbw_f32_to_f16(65520.0f) == 0x7c00); /* rounds to inf */
    CHECK(pbw_f32_to_f16(5.9604644775390625e-08f) == 0x0001);
    CHECK(pbw_f32_to_f16(1.00048828125f) == 0x3c00); /* halfway, rounds to even */
    CHECK(pbw_f32_to_f16(1.00146484375f) == 0x3c02); /* halfway, rounds to even (up) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t hh = (uint16_t)h;
        if ((hh & 0x7c00) == 0x7c00 && (hh & 0x3ff)) continue; /* nan payloads */
        if (pbw_f32_to_f16(pbw_f16_to_f32(hh)) != hh) bad++;
    }
    CHECK_MSG(bad == 0, "%d fp16 values do not round trip", bad);
    CHECK(pbw_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(pbw_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(pbw_f32_to_bf16(1.00390625f) == 0x3f80);   /* halfway: even */
    CHECK(pbw_f32_to_bf16(1.01171875f) == 0x3f82);   /* halfway: even (up) */
    /* a bf16 weight tensor converts for the CPU ops */
    pbw_ctx *ctx = new_ctx();
    uint16_t raw[3] = {0x3f80, 0xc000, 0x0000};
    pbw_tensor *w = pbw_tensor_wrap(ctx, NULL, 1, (int64_t[]){3});
    w->dtype = PBW_BF16;
    w->raw = raw;
    CHECK(pbw_relu(ctx, w) == NULL); /* ops refuse non-float32 */
    pbw_ctx_reset(ctx);
    w = pbw_tensor_wrap(ctx, NULL, 1, (int64_t[]){3});
    w->dtype = PBW_BF16;
    w->raw = raw;
    pbw_tensor *f = pbw_tensor_to_f32(ctx, w);
    CHECK(f && f->data[0] == 1.0f && f->data[1] == -2.0f && f->data[2] == 0.0f);
    pbw_ctx_free(ctx);
}

PBW_TEST(core_arena) {
    pbw_arena a;
    pbw_arena_init(&a, 4096);
    void *p[100];
    for (int i = 0; i < 100; i++) {
        p[i] = pbw_arena_alloc(&a, 1000 + i);
        CHECK(p[i] && ((uintptr_t)p[i] % 64) == 0);
        memset(p[i], i, 1000 + i);
    }
    for (int i = 0; i < 100; i++) CHECK(((unsigned char *)p[i])[999] == i); /* no overlap */
    size_t peak = a.peak;
    CHECK(!pbw_arena_reset_keeps(&a)); /* several chunks: a reset replaces them */
    pbw_arena_reset(&a);
    CHECK(a.used == 0 && pbw_arena_chunks(&a) == 1); /* merged into one chunk */
    CHECK(pbw_arena_reset_keeps(&a));
    for (int i = 0; i < 100; i++) p[i] = pbw_arena_alloc(&a, 1000 + i);
    CHECK(pbw_arena_chunks(&a) == 1); /* the same work fits without a new chunk */
    CHECK(a.peak == peak);
    /* and a reset that keeps the chunk hands the same blocks out again */
    CHECK(pbw_arena_reset_keeps(&a));
    pbw_arena_reset(&a);
    int same = 1;
    for (int i = 0; i < 100; i++) same &= pbw_arena_alloc(&a, 1000 + i) == p[i];
    CHECK(same);
    pbw_arena_free(&a);
}

/* A block that outgrows the chunk and is then released (pbw_ctx_release after a generator
 * block) leaves the arena with its first small chunk; the reset that follows grows that chunk
 * to the peak, so the next repeat of the work neither makes nor frees a chunk (on a GPU, a
 * free while a CUDA graph is recorded would refuse the recording). */
PBW_TEST(core_arena_release_then_reset) {
    pbw_arena a;
    pbw_arena_init(&a, 4096);
    for (int round = 0; round < 3; round++) {
        CHECK(pbw_arena_alloc(&a, 1000) != NULL);
        pbw_arena_mark m = pbw_arena_mark_get(&a);
        for (int i = 0; i < 20; i++) CHECK(pbw_arena_alloc(&a, 3000) != NULL); /* > one chunk */
        int freed = pbw_arena_release(&a, m);
        /* the first round needed new chunks; after its reset the work fits in one */
        CHECK(round == 0 ? freed > 0 : freed == 0);
        CHECK(pbw_arena_chunks(&a) == 1 && a.used == 1024);
        pbw_arena_reset(&a);
        CHECK(pbw_arena_chunks(&a) == 1 && a.used == 0);
    }
    CHECK(a.peak == 1024 + 20 * 3008);
    pbw_arena_free(&a);
}

/* A large chunk that is just short grows the arena by half of what it holds, not by a copy of
 * itself twice as large (a GPU edit's Adam step after its CMA-ES generations had held three
 * times the need that way); a long first step still makes few chunks. */
PBW_TEST(core_arena_growth_bound) {
    pbw_arena a;
    pbw_arena_init(&a, 4096);
    CHECK(pbw_arena_alloc(&a, 1 << 20) != NULL);
    pbw_arena_reset(&a);
    CHECK(pbw_arena_held(&a) == 1 << 20 && pbw_arena_chunks(&a) == 1);
    CHECK(pbw_arena_alloc(&a, 1 << 20) != NULL && pbw_arena_alloc(&a, 1000) != NULL);
    CHECK(pbw_arena_chunks(&a) == 2 && pbw_arena_held(&a) == (1 << 20) + (1 << 19));
    pbw_arena_free(&a);
    pbw_arena_init(&a, 4096);
    for (int i = 0; i < 1000; i++) CHECK(pbw_arena_alloc(&a, 10000) != NULL); /* ~10 MB */
    printf("  1000 blocks of 10000 bytes: %d chunks holding %zu bytes for %zu used\n",
           pbw_arena_chunks(&a), pbw_arena_held(&a), a.used);
    CHECK(pbw_arena_chunks(&a) <= 20);
    CHECK(pbw_arena_held(&a) <= a.used + a.used / 2 + 10048);
    pbw_arena_free(&a);
}

/* --device parsing on any machine: bad names are refused with a message; auto always answers. */
PBW_TEST(device_parse_any_machine) {
    pbw_device dev;
    int idx;
    pbw_err err = {0};
    char why[160];
    CHECK(pbw_device_parse("cpu", &dev, &idx, why, sizeof why, &err) == 0 && dev == PBW_DEV_CPU);
    CHECK(pbw_device_parse("auto", &dev, &idx, why, sizeof why, &err) == 0 && why[0]);
    CHECK(pbw_device_parse("gpu", &dev, &idx, why, sizeof why, &err) != 0 && strstr(err.msg, "gpu"));
    CHECK(pbw_device_parse("cuda:x", &dev, &idx, why, sizeof why, &err) != 0);
}

/* pbw_ctx_release frees a finished block's temporaries in a pass without gradients, keeping
 * the block's outputs (values unchanged), and does nothing once the tape holds a node. */
PBW_TEST(ctx_release_block) {
    pbw_err err = {0};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    float h[64];
    for (int i = 0; i < 64; i++) h[i] = (float)i - 20.0f;
    pbw_tensor *x = pbw_tensor_from_host(ctx, h, 2, (int64_t[]){8, 8});
    size_t before = pbw_ctx_mem_used(ctx);
    pbw_ctx_mark m = pbw_ctx_mark_get(ctx);
    pbw_tensor *a = pbw_relu(ctx, x), *b = pbw_tanh(ctx, pbw_scale(ctx, x, 0.1f));
    for (int k = 0; k < 20; k++) a = pbw_add(ctx, a, b); /* temporaries to free */
    float want_a[64], want_b[64];
    CHECK(pbw_tensor_read(ctx, a, want_a) == 0 && pbw_tensor_read(ctx, b, want_b) == 0);
    size_t during = pbw_ctx_mem_used(ctx);
    pbw_tensor *keep[2] = {a, b};
    CHECK(pbw_ctx_release(ctx, m, 2, keep) == 0);
    size_t after = pbw_ctx_mem_used(ctx);
    CHECK(after < during && after <= before + 2 * (64 * 4 + 64) + 2 * 256);
    float got[64];
    CHECK(pbw_tensor_read(ctx, keep[0], got) == 0 && !memcmp(got, want_a, sizeof got));
    CHECK(pbw_tensor_read(ctx, keep[1], got) == 0 && !memcmp(got, want_b, sizeof got));
    /* with a node on the tape, nothing is freed */
    x->requires_grad = 1;
    m = pbw_ctx_mark_get(ctx);
    pbw_tensor *y = pbw_square(ctx, x);
    size_t used = pbw_ctx_mem_used(ctx);
    pbw_tensor *k1[1] = {y};
    CHECK(pbw_ctx_release(ctx, m, 1, k1) == 0 && k1[0] == y && pbw_ctx_mem_used(ctx) == used);
    pbw_ctx_free(ctx);
}

/* Lanes (pbw_lane_fork) on the CPU: nothing forks (0, the tensor handed back unchanged) and
 * the ops run in order, so the pass's gradient is the analytic one: loss = sum((2x+.5)^2) +
 * sum(k (2x+.5)), d/dx = 4 (2x+.5) + 2k. The GPU's two lanes are checked against one lane in
 * cuda_lanes and cuda_lanes_edit. */
PBW_TEST(lanes_cpu) {
    pbw_ctx *ctx = new_ctx();
    const int64_t shape[2] = {3, 5};
    pbw_tensor *x = rand_tensor(ctx, 2, shape, 21, -1, 1), *k = rand_tensor(ctx, 2, shape, 22, -1, 1);
    x->requires_grad = 1;
    pbw_tensor *t = pbw_affine(ctx, x, 2.0f, 0.5f), *side = t;
    CHECK(pbw_lane_fork(ctx, 1, &side) == 0 && side == t);
    pbw_tensor *a = pbw_sum(ctx, pbw_square(ctx, side), 0, NULL, 0);
    pbw_lane_main(ctx);
    pbw_tensor *b = pbw_sum(ctx, pbw_mul(ctx, t, k), 0, NULL, 0);
    pbw_lane_join(ctx);
    pbw_err err = {0};
    CHECK(pbw_backward(ctx, pbw_add(ctx, a, b), NULL, &err) == 0);
    double worst = 0;
    for (int64_t i = 0; i < x->numel && x->grad; i++) {
        double want = 4.0 * (2.0 * x->data[i] + 0.5) + 2.0 * k->data[i];
        double d = fabs(x->grad[i] - want);
        if (d > worst) worst = d;
    }
    CHECK(x->grad != NULL && worst <= FWD_ATOL + FWD_RTOL * 6);
    pbw_ctx_free(ctx);
}
