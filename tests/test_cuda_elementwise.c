/* test_cuda_elementwise.c: the CUDA kernels of the elementwise, reduction, shape and max-pooling
 * ops against the CPU ones (cuda_parity.h): output and every input gradient, on the shapes the
 * models use (CLIP ViT-B/32 tokens (1,50,768), text (1,77,512), StyleGAN2 feature maps 512
 * channels at 4..64 px and 128 channels at 256 px, AlexNet's (64,55,55) pooling in LPIPS) and
 * on odd sizes that leave ragged blocks.
 *
 * Tolerances (max |cuda - cpu| / max |cpu| per tensor), one reason each:
 *   TOL_MATH 1e-5: unary ops through CUDA's erff/tanhf/expf/sqrtf (within 2 ulp of glibc's)
 *                  and nvcc's fused multiply-adds (the CPU build does not contract): a few ulp
 *                  of the tensor's scale, 1e-5 leaves a decade of margin;
 *   TOL_SUM  1e-5: sums in a different order (the GPU gathers in double over a tree, the CPU
 *                  adds double row sums in float): fp32 rounding of the result, ~1e-6;
 *   TOL_LONG_SUM 5e-5: the gradient of a (128,1,1) factor over (1,128,256,256): the CPU adds
 *                  65536 products per channel one by one in float, measured 6e-6..8e-6 from a
 *                  double reference (the GPU's double gather is within 1e-7 of it);
 *   TOL_EXACT 0:   data movement (copies, gradient routing without sums) and selections
 *                  (max pooling: the same winner, and the backward adds the same values in the
 *                  CPU's order): the bits must be equal.
 */
#include <stdint.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "cuda_parity.h"
#include "pbw_test.h"

#define TOL_MATH 1e-5
#define TOL_SUM 1e-5
#define TOL_LONG_SUM 5e-5
#define TOL_EXACT 0.0

/* ---------------- unary ---------------- */

typedef pbw_tensor *(*unary_call)(pbw_ctx *ctx, pbw_tensor *x);
typedef struct unary_arg { /* ISO C has no function pointer to void * conversion */
    unary_call fn;
} unary_arg;

static pbw_tensor *f_unary(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    return ((const unary_arg *)arg)->fn(ctx, in[0]);
}

static pbw_tensor *u_relu(pbw_ctx *c, pbw_tensor *x) { return pbw_relu(c, x); }
static pbw_tensor *u_leaky(pbw_ctx *c, pbw_tensor *x) { return pbw_leaky_relu(c, x, 0.2f); }
static pbw_tensor *u_gelu(pbw_ctx *c, pbw_tensor *x) { return pbw_gelu(c, x); }
static pbw_tensor *u_qgelu(pbw_ctx *c, pbw_tensor *x) { return pbw_quick_gelu(c, x); }
static pbw_tensor *u_sigmoid(pbw_ctx *c, pbw_tensor *x) { return pbw_sigmoid(c, x); }
static pbw_tensor *u_tanh(pbw_ctx *c, pbw_tensor *x) { return pbw_tanh(c, x); }
static pbw_tensor *u_sqrt(pbw_ctx *c, pbw_tensor *x) { return pbw_sqrt(c, x); }
static pbw_tensor *u_rsqrt(pbw_ctx *c, pbw_tensor *x) { return pbw_rsqrt(c, x); }
static pbw_tensor *u_exp(pbw_ctx *c, pbw_tensor *x) { return pbw_exp(c, x); }
static pbw_tensor *u_abs(pbw_ctx *c, pbw_tensor *x) { return pbw_abs(c, x); }
static pbw_tensor *u_square(pbw_ctx *c, pbw_tensor *x) { return pbw_square(c, x); }
static pbw_tensor *u_clamp(pbw_ctx *c, pbw_tensor *x) { return pbw_clamp(c, x, -0.5f, 0.7f); }
static pbw_tensor *u_affine(pbw_ctx *c, pbw_tensor *x) { return pbw_affine(c, x, -1.5f, 0.25f); }
static pbw_tensor *u_scale(pbw_ctx *c, pbw_tensor *x) { return pbw_scale(c, x, 0.125f); }
static pbw_tensor *u_add_scalar(pbw_ctx *c, pbw_tensor *x) { return pbw_add_scalar(c, x, -3.0f); }

/* Each unary op on an odd 4-D shape (ragged last block), CLIP's token tensor and a StyleGAN2
 * feature map, inputs uniform in [lo, hi). */
static void unary_case(const char *name, unary_call fn, float lo, float hi) {
    parity_input shapes[3] = {
        {4, {2, 3, 17, 19}, 1, lo, hi},
        {3, {1, 50, 768}, 1, lo, hi},
        {4, {1, 512, 32, 32}, 1, lo, hi},
    };
    unary_arg arg = {fn};
    for (int i = 0; i < 3; i++) CHECK(parity_check(name, f_unary, &arg, 1, &shapes[i], TOL_MATH) == 0);
}

PBW_TEST(cuda_relu) { unary_case("relu", u_relu, -1, 1); }
PBW_TEST(cuda_leaky_relu) { unary_case("leaky_relu", u_leaky, -1, 1); }
/* the tails of erf and of the Gaussian factor in its gradient */
PBW_TEST(cuda_gelu) { unary_case("gelu", u_gelu, -5, 5); }
PBW_TEST(cuda_quick_gelu) { unary_case("quick_gelu", u_qgelu, -5, 5); }
/* wide enough to reach the saturated ends */
PBW_TEST(cuda_sigmoid) { unary_case("sigmoid", u_sigmoid, -12, 12); }
PBW_TEST(cuda_tanh) { unary_case("tanh", u_tanh, -4, 4); }
/* positive inputs away from 0, where sqrt's gradient 0.5/y is bounded */
PBW_TEST(cuda_sqrt) { unary_case("sqrt", u_sqrt, 0.05f, 4); }
PBW_TEST(cuda_rsqrt) { unary_case("rsqrt", u_rsqrt, 0.05f, 4); }
PBW_TEST(cuda_exp) { unary_case("exp", u_exp, -4, 4); }
PBW_TEST(cuda_abs) { unary_case("abs", u_abs, -1, 1); }
PBW_TEST(cuda_square) { unary_case("square", u_square, -2, 2); }
/* about half the inputs outside [-0.5, 0.7]: both gradient branches */
PBW_TEST(cuda_clamp) { unary_case("clamp", u_clamp, -1.5f, 1.5f); }
PBW_TEST(cuda_affine) {
    unary_case("affine", u_affine, -1, 1);
    unary_case("scale", u_scale, -1, 1);
    unary_case("add_scalar", u_add_scalar, -1, 1);
}

/* relu, leaky relu, abs and clamp at their kinks (inputs exactly 0, a clamp to [0, 0]), where
 * the gradient conventions (relu 0, leaky relu the slope, abs 0, clamp passes) must match. */
static pbw_tensor *f_kinks(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    pbw_tensor *q = pbw_scale(ctx, in[0], 0.0f); /* exact zeros that keep the gradient link */
    pbw_tensor *r = pbw_relu(ctx, q), *a = pbw_abs(ctx, q), *c = pbw_clamp(ctx, q, 0.0f, 0.0f);
    pbw_tensor *l = pbw_leaky_relu(ctx, q, 0.3f);
    return pbw_add(ctx, pbw_add(ctx, r, a), pbw_add(ctx, c, l));
}

PBW_TEST(cuda_unary_kinks) {
    parity_input in = {2, {7, 33}, 1};
    CHECK(parity_check("relu/abs/clamp at 0", f_kinks, NULL, 1, &in, TOL_MATH) == 0);
}

/* ---------------- binary with broadcasting ---------------- */

typedef struct bin_case {
    int op; /* 0 add, 1 sub, 2 mul, 3 div */
} bin_case;

static pbw_tensor *f_binary(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    switch (((const bin_case *)arg)->op) {
    case 0: return pbw_add(ctx, in[0], in[1]);
    case 1: return pbw_sub(ctx, in[0], in[1]);
    case 2: return pbw_mul(ctx, in[0], in[1]);
    default: return pbw_div(ctx, in[0], in[1]);
    }
}

/* Broadcast patterns of the models: same shape; a bias (C,1,1) over (N,C,H,W) (StyleGAN2 at 512
 * channels and at 128 channels, 256 px); an (N,1,H,W) mask; a scalar-like (1); a (D) vector over
 * CLIP tokens; a row over columns; both operands broadcast ((N,1,H,W) * (1,C,1,1)); lower rank
 * against higher rank on the left. b's range keeps division well conditioned. */
static void binary_cases(const char *name, int op) {
    bin_case bc = {op};
    float blo = op == 3 ? 0.5f : -1, bhi = op == 3 ? 2.0f : 1;
    struct {
        parity_input in[2];
        double tol;
    } cases[] = {
        {{{4, {2, 3, 17, 19}, 1}, {4, {2, 3, 17, 19}, 1, blo, bhi}}, TOL_SUM},
        {{{4, {2, 512, 8, 8}, 1}, {3, {512, 1, 1}, 1, blo, bhi}}, TOL_SUM},
        {{{4, {1, 128, 256, 256}, 1}, {3, {128, 1, 1}, 1, blo, bhi}}, TOL_LONG_SUM},
        {{{4, {2, 64, 33, 31}, 1}, {4, {2, 1, 33, 31}, 1, blo, bhi}}, TOL_SUM},
        {{{4, {2, 5, 16, 16}, 1}, {1, {1}, 1, blo, bhi}}, TOL_SUM},
        {{{3, {1, 50, 768}, 1}, {1, {768}, 1, blo, bhi}}, TOL_SUM},
        {{{2, {77, 512}, 1}, {2, {77, 1}, 1, blo, bhi}}, TOL_SUM},
        {{{4, {2, 1, 12, 10}, 1}, {4, {1, 24, 1, 1}, 1, blo, bhi}}, TOL_SUM},
        {{{1, {13}, 1}, {3, {4, 3, 13}, 1, blo, bhi}}, TOL_SUM},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(parity_check(name, f_binary, &bc, 2, cases[i].in, cases[i].tol) == 0);
    /* only one operand asks for a gradient */
    parity_input one[2] = {{4, {2, 8, 5, 7}, 0}, {3, {8, 1, 1}, 1, blo, bhi}};
    CHECK(parity_check(name, f_binary, &bc, 2, one, TOL_SUM) == 0);
}

PBW_TEST(cuda_add) { binary_cases("add", 0); }
PBW_TEST(cuda_sub) { binary_cases("sub", 1); }
PBW_TEST(cuda_mul) { binary_cases("mul", 2); }
PBW_TEST(cuda_div) { binary_cases("div", 3); }

/* x * x and x + x: both gradients land in one buffer, each pass adding to the other's. */
static pbw_tensor *f_self(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_add(ctx, pbw_mul(ctx, in[0], in[0]), pbw_div(ctx, in[0], in[1]));
}

PBW_TEST(cuda_binary_same_input) {
    parity_input in[2] = {{3, {3, 20, 21}, 1}, {2, {1, 21}, 1, 0.5f, 2.0f}};
    CHECK(parity_check("x*x + x/b", f_self, NULL, 2, in, TOL_SUM) == 0);
}

/* ---------------- reductions ---------------- */

typedef struct red_case {
    int mean, keepdim, naxes, axes[5];
    int all; /* sum_all / mean_all */
} red_case;

static pbw_tensor *f_reduce(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const red_case *r = arg;
    if (r->all) return r->mean ? pbw_mean_all(ctx, in[0]) : pbw_sum_all(ctx, in[0]);
    return r->mean ? pbw_mean(ctx, in[0], r->naxes, r->axes, r->keepdim)
                   : pbw_sum(ctx, in[0], r->naxes, r->axes, r->keepdim);
}

/* Axes chosen to reach each path of the CUDA reduction: the innermost dim reduced (a warp per
 * output: LPIPS's spatial mean, a sum over the last dim), the innermost dim kept (outputs across
 * a warp: sums over tokens, over channels), reduced dims on both sides of a kept one, few
 * outputs over many inputs (the reduction split over blocks with partial sums), and the
 * degenerate ones (a size-1 axis, no axes). */
static void reduce_cases(const char *name, int mean) {
    struct {
        parity_input in;
        red_case r;
    } cases[] = {
        {{4, {1, 512, 64, 64}, 1}, {mean, 1, 2, {2, 3}}},
        {{4, {2, 64, 55, 55}, 1}, {mean, 0, 2, {-2, -1}}},
        {{3, {1, 50, 768}, 1}, {mean, 0, 1, {-1}}},
        {{3, {1, 50, 768}, 1}, {mean, 1, 1, {1}}},
        {{2, {77, 512}, 1}, {mean, 0, 1, {0}}},
        {{4, {2, 64, 32, 32}, 1}, {mean, 1, 1, {1}}},
        {{4, {4, 8, 16, 33}, 1}, {mean, 0, 2, {0, 2}}},
        {{5, {3, 4, 5, 6, 7}, 1}, {mean, 1, 3, {0, 2, 4}}},
        {{4, {3, 1, 7, 5}, 1}, {mean, 0, 1, {1}}},
        {{3, {3, 7, 5}, 1}, {mean, 0, 0, {0}}},
        {{1, {1000003}, 1}, {mean, 0, 1, {0}}},
        {{4, {14, 3, 128, 128}, 1}, {mean, 0, 3, {1, 2, 3}}}, /* an L1 term's per-image sums */
        {{4, {2, 64, 55, 55}, 1}, {mean, 0, 0, {0}, 1}},
        {{3, {1, 50, 768}, 1}, {mean, 0, 0, {0}, 1}},
        {{2, {3, 5}, 1}, {mean, 0, 0, {0}, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(parity_check(name, f_reduce, &cases[i].r, 1, &cases[i].in, TOL_SUM) == 0);
}

PBW_TEST(cuda_sum) { reduce_cases("sum", 0); }
PBW_TEST(cuda_mean) { reduce_cases("mean", 1); }

/* ---------------- shape ops ---------------- */

static pbw_tensor *f_reshape(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    /* the reshape's own backward (gx += gy) runs when its output is the graph's output; the
     * second reshape feeds an op so its gradient arrives through another backward */
    pbw_tensor *a = pbw_reshape(ctx, in[0], 3, (int64_t[]){1, 50, -1});
    pbw_tensor *b = pbw_reshape(ctx, pbw_square(ctx, in[0]), 2, (int64_t[]){50, 768});
    return pbw_add(ctx, a, pbw_reshape(ctx, b, 3, (int64_t[]){1, 50, 768}));
}

static pbw_tensor *f_reshape_only(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_reshape(ctx, in[0], 2, (int64_t[]){-1, 19});
}

PBW_TEST(cuda_reshape) {
    parity_input a = {2, {50, 768}, 1};
    CHECK(parity_check("reshape (chain)", f_reshape, NULL, 1, &a, TOL_MATH) == 0);
    parity_input b = {4, {2, 3, 17, 19}, 1};
    CHECK(parity_check("reshape", f_reshape_only, NULL, 1, &b, TOL_EXACT) == 0);
}

typedef struct perm_case {
    int perm[5];
} perm_case;

static pbw_tensor *f_permute(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    return pbw_permute(ctx, in[0], ((const perm_case *)arg)->perm);
}

/* attention's head split (B,T,H,D) -> (B,H,T,D), NCHW <-> NHWC, a transpose, a 5-D shuffle */
PBW_TEST(cuda_permute) {
    struct {
        parity_input in;
        perm_case p;
    } cases[] = {
        {{4, {1, 50, 12, 64}, 1}, {{0, 2, 1, 3}}},
        {{4, {2, 64, 17, 19}, 1}, {{0, 2, 3, 1}}},
        {{4, {2, 17, 19, 64}, 1}, {{0, 3, 1, 2}}},
        {{2, {77, 512}, 1}, {{1, 0}}},
        {{5, {2, 3, 4, 5, 6}, 1}, {{4, 2, 0, 3, 1}}},
        {{3, {1, 1, 9}, 1}, {{2, 0, 1}}},
        /* CLIP's patch cut, 224 px in 32 px patches: rows of 32 and 1024 floats (float4 copies) */
        {{4, {2 * 3 * 7, 32, 7, 32}, 1}, {{0, 2, 1, 3}}},
        {{4, {2, 3, 49, 1024}, 1}, {{0, 2, 1, 3}}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(parity_check("permute", f_permute, &cases[i].p, 1, &cases[i].in, TOL_EXACT) == 0);
}

typedef struct slice_case {
    int axis;
    int64_t start, end, step;
} slice_case;

static pbw_tensor *f_slice(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const slice_case *s = arg;
    return pbw_slice(ctx, in[0], s->axis, s->start, s->end, s->step);
}

/* CLIP's class token (x[:, 0]), the patch tokens (x[:, 1:]), steps on the last and a middle
 * axis, negative start/end, an end past the size. */
PBW_TEST(cuda_slice) {
    struct {
        parity_input in;
        slice_case s;
    } cases[] = {
        {{3, {1, 50, 768}, 1}, {1, 0, 1, 1}},
        {{3, {1, 50, 768}, 1}, {1, 1, 50, 1}},
        {{4, {2, 3, 17, 19}, 1}, {-1, 1, 19, 2}},
        {{4, {2, 3, 17, 19}, 1}, {2, -10, -1, 3}},
        {{4, {2, 64, 33, 31}, 1}, {1, -40, 1000, 5}},
        {{2, {77, 512}, 1}, {0, -1, 77, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(parity_check("slice", f_slice, &cases[i].s, 1, &cases[i].in, TOL_EXACT) == 0);
}

typedef struct concat_case {
    int n, axis;
} concat_case;

static pbw_tensor *f_concat(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const concat_case *c = arg;
    return pbw_concat(ctx, c->n, in, c->axis);
}

/* CLIP's [class token; patches] along tokens, channels of feature maps, the last axis, and six
 * inputs (more than a tape node holds: the backward reads them from its saved list), one of
 * which asks for no gradient. */
PBW_TEST(cuda_concat) {
    concat_case c1 = {2, 1};
    parity_input a[2] = {{3, {1, 1, 768}, 1}, {3, {1, 49, 768}, 1}};
    CHECK(parity_check("concat tokens", f_concat, &c1, 2, a, TOL_EXACT) == 0);
    concat_case c2 = {3, 1};
    parity_input b[3] = {{4, {2, 64, 17, 19}, 1}, {4, {2, 3, 17, 19}, 1}, {4, {2, 128, 17, 19}, 1}};
    CHECK(parity_check("concat channels", f_concat, &c2, 3, b, TOL_EXACT) == 0);
    concat_case c3 = {6, -1};
    parity_input c[6] = {{2, {7, 1}, 1}, {2, {7, 5}, 0}, {2, {7, 33}, 1},
                         {2, {7, 2}, 1}, {2, {7, 1}, 1}, {2, {7, 8}, 1}};
    CHECK(parity_check("concat 6 inputs", f_concat, &c3, 6, c, TOL_EXACT) == 0);
}

typedef struct pad_case {
    int64_t pads[10];
    float value;
} pad_case;

static pbw_tensor *f_pad(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const pad_case *p = arg;
    return pbw_pad(ctx, in[0], p->pads, p->value);
}

/* zero padding of a feature map, a nonzero fill value, negative pads (crops) mixed with
 * positive ones, a dim cropped away and padded back (nothing of x is copied; its gradient
 * is zero). */
PBW_TEST(cuda_pad) {
    struct {
        parity_input in;
        pad_case p;
    } cases[] = {
        {{4, {2, 64, 17, 19}, 1}, {{0, 0, 0, 0, 1, 1, 1, 1}, 0.0f}},
        {{4, {2, 3, 17, 19}, 1}, {{0, 0, 1, 2, 3, 0, 0, 5}, -0.75f}},
        {{4, {2, 3, 17, 19}, 1}, {{0, 0, 0, 0, -2, 3, 4, -5}, 0.5f}},
        {{3, {1, 50, 768}, 1}, {{0, 0, -1, 0, 0, 0}, 0.0f}},
        {{2, {5, 6}, 1}, {{-5, 1, 0, 0}, 2.0f}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(parity_check("pad", f_pad, &cases[i].p, 1, &cases[i].in, TOL_EXACT) == 0);
}

/* ---------------- max pooling ---------------- */

typedef struct mp_case {
    int k, s, p;
} mp_case;

static pbw_tensor *f_pool(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const mp_case *m = arg;
    return pbw_max_pool2d(ctx, in[0], m->k, m->s, m->p);
}

/* AlexNet's 3x3 stride 2 in LPIPS at 224 px ((64,55,55), (192,27,27), (256,13,13)), 2x2
 * stride 2, padding, a stride larger than the kernel, and a wide window with stride 1 (the
 * backward's atomic scatter path, used when a pixel lies in many windows). Uniform inputs make
 * ties improbable; the backward is exact because a pixel's wins are added in the CPU's order,
 * except on the scatter path (atomics: tolerance TOL_SUM). */
PBW_TEST(cuda_max_pool2d) {
    struct {
        parity_input in;
        mp_case m;
        double tol;
    } cases[] = {
        {{4, {1, 64, 55, 55}, 1}, {3, 2, 0}, TOL_EXACT},
        {{4, {2, 192, 27, 27}, 1}, {3, 2, 0}, TOL_EXACT},
        {{4, {2, 256, 13, 13}, 1}, {3, 2, 0}, TOL_EXACT},
        {{4, {2, 3, 16, 17}, 1}, {2, 0, 0}, TOL_EXACT},
        {{4, {2, 5, 17, 19}, 1}, {3, 1, 1}, TOL_EXACT},
        {{4, {1, 4, 20, 21}, 1}, {2, 3, 1}, TOL_EXACT},
        {{4, {1, 3, 40, 37}, 1}, {9, 1, 4}, TOL_SUM},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(parity_check("max_pool2d", f_pool, &cases[i].m, 1, &cases[i].in, cases[i].tol) == 0);
}

/* max pooling of a tensor with many equal values (a relu output): ties must go to the same
 * element as on the CPU (first in window order), so even here the result is exact. */
static pbw_tensor *f_pool_ties(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_max_pool2d(ctx, pbw_relu(ctx, in[0]), 3, 2, 1);
}

PBW_TEST(cuda_max_pool2d_ties) {
    parity_input in = {4, {2, 8, 15, 15}, 1, -3, 1};
    CHECK(parity_check("max_pool2d ties", f_pool_ties, NULL, 1, &in, TOL_EXACT) == 0);
}

/* ---------------- gradients that accumulate ---------------- */

/* x feeds four ops whose backwards all add into x's gradient (unary, binary with and without
 * broadcast, a reduction's broadcast back, a slice's scatter): every backward kernel must add,
 * not overwrite. */
static pbw_tensor *f_accum(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    pbw_tensor *x = in[0], *w = in[1];
    pbw_tensor *a = pbw_gelu(ctx, x);
    pbw_tensor *b = pbw_mul(ctx, x, w);
    pbw_tensor *c = pbw_mean(ctx, x, 1, (int[]){1}, 1);
    pbw_tensor *d = pbw_pad(ctx, pbw_slice(ctx, x, 2, 1, 8, 1), (int64_t[]){0, 0, 0, 0, 1, 0, 0, 0}, 0.0f);
    return pbw_add(ctx, pbw_add(ctx, a, b), pbw_add(ctx, c, d));
}

PBW_TEST(cuda_accumulating_grads) {
    parity_input in[2] = {{4, {2, 16, 8, 9}, 1}, {3, {16, 1, 9}, 1}};
    CHECK(parity_check("x used four times", f_accum, NULL, 2, in, TOL_SUM) == 0);
}
