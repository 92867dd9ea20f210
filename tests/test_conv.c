/* test_conv.c: pbw_conv2d and pbw_conv_transpose2d against direct loops written here (double
 * accumulation), against PyTorch outputs (tests/fixtures/ops, tools/make_op_fixtures.py), and
 * their backward against central finite differences.
 *
 * Tolerances:
 *  - forward vs the double-precision loops: |d| <= 1e-5 * sqrt(K) + 1e-5 |ref|, K = C/G*KH*KW
 *    terms per output. Inputs are U(-1,1), so a float32 sum of K products has a rounding error
 *    of about sqrt(K) * 2^-24 * sqrt(K)/3 (a random walk of steps ~ |partial sum| * 2^-24); for
 *    the largest K here (9216) that is ~2e-4, the bound is 1e-3. A wrong tap, pad or group
 *    changes an output by O(1).
 *  - forward vs PyTorch (randn inputs, K <= 30): 2e-5 + 1e-5 |ref|: both sides are float32
 *    with different summation orders (oneDNN vs OpenBLAS), a few ulps of outputs of size ~5.
 *  - backward: gc_check's defaults (atol 2e-3, rtol 1e-2, eps 1e-2). Convolution is linear in
 *    each input, so central differences have no truncation error; only float32 rounding of the
 *    loss (~1e-7 * sqrt(numel) / eps ~ 1e-4) remains, well inside.
 * Every case runs under several pbw_cpu_conv_tune settings (threaded or not, automatic or forced
 * narrow/wide tiles) so that every tiling and work split runs; `make test` uses 2 threads, and
 * the file passes with OMP_NUM_THREADS=1 and 3 as well.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "cpu/pbw_cpu_conv.h"
#include "formats/pbw_npy.h"
#include "gradcheck.h"
#include "pbw_test.h"

typedef struct conv_case {
    int N, C, H, W, O, KH, KW;
    int sh, sw, ph, pw, dh, dw, G;
    int bias;
    int oph, opw; /* transposed only */
} conv_case;

static pbw_conv_params params_of(const conv_case *c) {
    pbw_conv_params p = {c->sh, c->sw, c->ph, c->pw, c->dh, c->dw, c->G, c->oph, c->opw};
    return p;
}

static int out_size(int in, int k, int s, int p, int d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }
static int outT_size(int in, int k, int s, int p, int d, int op) {
    return (in - 1) * s - 2 * p + d * (k - 1) + op + 1;
}

/* F.conv2d by its definition. */
static void ref_conv2d(float *out, const float *x, const float *w, const float *b,
                       const conv_case *c, int OH, int OW) {
    int Cg = c->C / c->G, Og = c->O / c->G;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->O; o++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    double s = b ? b[o] : 0.0;
                    int grp = o / Og;
                    for (int ci = 0; ci < Cg; ci++)
                        for (int kh = 0; kh < c->KH; kh++)
                            for (int kw = 0; kw < c->KW; kw++) {
                                int ih = oh * c->sh - c->ph + kh * c->dh;
                                int iw = ow * c->sw - c->pw + kw * c->dw;
                                if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                                int cin = grp * Cg + ci;
                                s += (double)x[(((int64_t)n * c->C + cin) * c->H + ih) * c->W + iw] *
                                     w[(((int64_t)o * Cg + ci) * c->KH + kh) * c->KW + kw];
                            }
                    out[(((int64_t)n * c->O + o) * OH + oh) * OW + ow] = (float)s;
                }
}

/* F.conv_transpose2d by its definition: every input pixel scatters w-weighted copies. Here C is
 * the input channel count and O the output's; w is (C, O/G, KH, KW). */
static void ref_conv_transpose2d(float *out, const float *x, const float *w, const float *b,
                                 const conv_case *c, int OH, int OW) {
    int Cg = c->C / c->G, Og = c->O / c->G;
    int64_t n_out = (int64_t)c->N * c->O * OH * OW;
    double *acc = calloc((size_t)n_out, sizeof(double));
    for (int n = 0; n < c->N; n++)
        for (int ci = 0; ci < c->C; ci++)
            for (int ih = 0; ih < c->H; ih++)
                for (int iw = 0; iw < c->W; iw++) {
                    double v = x[(((int64_t)n * c->C + ci) * c->H + ih) * c->W + iw];
                    int grp = ci / Cg;
                    for (int oo = 0; oo < Og; oo++)
                        for (int kh = 0; kh < c->KH; kh++)
                            for (int kw = 0; kw < c->KW; kw++) {
                                int oh = ih * c->sh - c->ph + kh * c->dh;
                                int ow = iw * c->sw - c->pw + kw * c->dw;
                                if (oh < 0 || oh >= OH || ow < 0 || ow >= OW) continue;
                                int o = grp * Og + oo;
                                acc[(((int64_t)n * c->O + o) * OH + oh) * OW + ow] +=
                                    v * w[(((int64_t)ci * Og + oo) * c->KH + kh) * c->KW + kw];
                            }
                }
    for (int64_t i = 0; i < n_out; i++) {
        int o = (int)(i / ((int64_t)OH * OW) % c->O);
        out[i] = (float)(acc[i] + (b ? b[o] : 0.0));
    }
    free(acc);
}

static pbw_tensor *rand_tensor(pbw_ctx *ctx, int ndim, const int64_t *shape, uint64_t seed) {
    pbw_tensor *t = pbw_tensor_new(ctx, ndim, shape);
    if (t) gc_fill(t->data, t->numel, seed, -1.0f, 1.0f);
    return t;
}

static const conv_case CONV_CASES[] = {
    /* N  C   H   W   O  KH KW sh sw ph pw dh dw G bias */
    {2, 8, 5, 7, 6, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1},      /* 1x1: straight to GEMM */
    {2, 8, 5, 7, 6, 1, 1, 1, 1, 0, 0, 1, 1, 2, 0},      /* 1x1 grouped */
    {1, 4, 7, 7, 3, 1, 1, 2, 2, 0, 0, 1, 1, 1, 1},      /* 1x1 strided: im2col path */
    {1, 4, 6, 6, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0},      /* 1x1 padded */
    {2, 3, 8, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},      /* 3x3 same */
    {1, 4, 9, 8, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1},      /* stride 2 */
    {3, 2, 11, 10, 4, 3, 2, 3, 3, 0, 1, 1, 1, 1, 0},    /* stride 3, odd sizes */
    {1, 3, 10, 10, 4, 3, 3, 1, 1, 2, 2, 2, 2, 1, 0},    /* dilation 2 */
    {1, 2, 5, 9, 3, 2, 4, 1, 2, 0, 3, 2, 1, 1, 1},      /* mixed per-axis params */
    {2, 8, 6, 7, 8, 3, 3, 1, 1, 1, 1, 1, 1, 4, 1},      /* groups 4 */
    {2, 6, 6, 5, 4, 3, 3, 2, 1, 1, 0, 1, 1, 2, 1},      /* groups 2, strided */
    {2, 5, 7, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 5, 1},      /* depthwise */
    {1, 3, 7, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 3, 0},      /* depthwise, multiplier 2 */
    {5, 6, 3, 4, 6, 3, 3, 1, 1, 1, 1, 1, 1, 3, 1},      /* batch of small maps, grouped */
    {1, 3, 31, 31, 4, 11, 11, 4, 4, 2, 2, 1, 1, 1, 1},  /* AlexNet conv1 shape, small */
    {3, 3, 64, 64, 8, 32, 32, 32, 32, 0, 0, 1, 1, 1, 0}, /* CLIP patch embedding, small */
    {1, 1, 1, 1, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1},      /* 1x1 image */
    {2, 3, 4, 4, 2, 5, 5, 1, 1, 2, 2, 1, 1, 1, 0},      /* kernel larger than the input */
};
#define N_CONV_CASES (int)(sizeof CONV_CASES / sizeof CONV_CASES[0])

/* {tile columns, min multiply-adds for threads} for pbw_cpu_conv_tune: the default, then
 * threaded with automatic tiles (rows split on one buffer for small maps), then threaded with
 * forced narrow tiles (partial rows), odd tiles and wide tiles spanning samples. */
static const int64_t TUNE[][2] = {{0, 0}, {0, 1}, {5, 1}, {7, 1}, {1000, 1}};
#define N_TUNE (int)(sizeof TUNE / sizeof TUNE[0])

static int check_conv_case(const conv_case *c, int transposed, const int64_t *tune) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    int OH, OW;
    int64_t ws[4];
    if (transposed) {
        OH = outT_size(c->H, c->KH, c->sh, c->ph, c->dh, c->oph);
        OW = outT_size(c->W, c->KW, c->sw, c->pw, c->dw, c->opw);
        ws[0] = c->C, ws[1] = c->O / c->G;
    } else {
        OH = out_size(c->H, c->KH, c->sh, c->ph, c->dh);
        OW = out_size(c->W, c->KW, c->sw, c->pw, c->dw);
        ws[0] = c->O, ws[1] = c->C / c->G;
    }
    ws[2] = c->KH, ws[3] = c->KW;
    pbw_tensor *x = rand_tensor(ctx, 4, (int64_t[]){c->N, c->C, c->H, c->W}, 1);
    pbw_tensor *w = rand_tensor(ctx, 4, ws, 2);
    pbw_tensor *b = c->bias ? rand_tensor(ctx, 1, (int64_t[]){c->O}, 3) : NULL;
    pbw_cpu_conv_tune(tune[0], tune[1]);
    pbw_tensor *y = transposed ? pbw_conv_transpose2d(ctx, x, w, b, params_of(c))
                               : pbw_conv2d(ctx, x, w, b, params_of(c));
    pbw_cpu_conv_tune(0, 0);
    int bad = 0;
    if (!y) {
        fprintf(stderr, "  conv failed: %s\n", pbw_ctx_error(ctx));
        bad = 1;
    } else if (y->ndim != 4 || y->shape[0] != c->N || y->shape[1] != c->O || y->shape[2] != OH ||
               y->shape[3] != OW) {
        char s[96];
        fprintf(stderr, "  wrong output shape %s, want (%d,%d,%d,%d)\n",
                pbw_shape_str(y, s, sizeof s), c->N, c->O, OH, OW);
        bad = 1;
    } else {
        float *ref = malloc((size_t)y->numel * sizeof(float));
        if (transposed) ref_conv_transpose2d(ref, x->data, w->data, b ? b->data : NULL, c, OH, OW);
        else ref_conv2d(ref, x->data, w->data, b ? b->data : NULL, c, OH, OW);
        int K = transposed ? (c->O / c->G) * c->KH * c->KW : (c->C / c->G) * c->KH * c->KW;
        bad = gc_compare(transposed ? "conv_transpose2d" : "conv2d", y->data, ref, y->numel,
                         1e-5 * sqrt((double)K), 1e-5);
        free(ref);
    }
    if (bad)
        fprintf(stderr, "  case N%d C%d %dx%d O%d k%dx%d s%d,%d p%d,%d d%d,%d g%d b%d op%d,%d tile %lld\n",
                c->N, c->C, c->H, c->W, c->O, c->KH, c->KW, c->sh, c->sw, c->ph, c->pw, c->dh,
                c->dw, c->G, c->bias, c->oph, c->opw, (long long)tune[0]);
    pbw_ctx_free(ctx);
    return bad;
}

PBW_TEST(conv2d_forward_cases) {
    for (int i = 0; i < N_CONV_CASES; i++)
        for (int t = 0; t < N_TUNE; t++)
            CHECK_MSG(check_conv_case(&CONV_CASES[i], 0, TUNE[t]) == 0, "case %d tune %d", i, t);
}

/* Large enough that automatic tiling splits one sample into tiles narrower than a row (K = 9216
 * columns of 128 positions against rows of 140). */
PBW_TEST(conv2d_forward_large_tiles) {
    conv_case c = {1, 1024, 3, 140, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(check_conv_case(&c, 0, TUNE[0]) == 0);
    conv_case d = {2, 64, 48, 48, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0}; /* several rows per tile */
    CHECK(check_conv_case(&d, 0, TUNE[0]) == 0);
}

static float *load_fixture(const char *name, int64_t numel) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/ops/%s.npy", name);
    pbw_npy a;
    pbw_err err = {{0}};
    if (pbw_npy_read(path, &a, &err) != 0) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    if (numel >= 0 && a.numel != numel) {
        fprintf(stderr, "  %s has %lld values, want %lld\n", path, (long long)a.numel,
                (long long)numel);
        pbw_npy_free(&a);
        return NULL;
    }
    return a.data; /* malloc'd: the caller frees */
}

/* Runs the op on fixture inputs <name>_x/_w/_b and compares with <name>_y. */
static int check_conv_fixture(const char *name, const conv_case *c, int transposed) {
    char nm[64];
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    int64_t ws[4] = {transposed ? c->C : c->O, transposed ? c->O / c->G : c->C / c->G, c->KH, c->KW};
    pbw_tensor *x = pbw_tensor_new(ctx, 4, (int64_t[]){c->N, c->C, c->H, c->W});
    pbw_tensor *w = pbw_tensor_new(ctx, 4, ws);
    pbw_tensor *b = c->bias ? pbw_tensor_new(ctx, 1, (int64_t[]){c->O}) : NULL;
    int bad = 1;
    snprintf(nm, sizeof nm, "%s_x", name);
    float *fx = load_fixture(nm, x->numel);
    snprintf(nm, sizeof nm, "%s_w", name);
    float *fw = load_fixture(nm, w->numel);
    snprintf(nm, sizeof nm, "%s_b", name);
    float *fb = b ? load_fixture(nm, b->numel) : NULL;
    snprintf(nm, sizeof nm, "%s_y", name);
    float *fy = load_fixture(nm, -1);
    if (fx && fw && fy && (!b || fb)) {
        memcpy(x->data, fx, (size_t)x->numel * sizeof(float));
        memcpy(w->data, fw, (size_t)w->numel * sizeof(float));
        if (b) memcpy(b->data, fb, (size_t)b->numel * sizeof(float));
        pbw_tensor *y = transposed ? pbw_conv_transpose2d(ctx, x, w, b, params_of(c))
                                   : pbw_conv2d(ctx, x, w, b, params_of(c));
        if (!y) fprintf(stderr, "  %s: %s\n", name, pbw_ctx_error(ctx));
        else bad = gc_compare(name, y->data, fy, y->numel, 2e-5, 1e-5);
    }
    free(fx), free(fw), free(fb), free(fy);
    pbw_ctx_free(ctx);
    return bad;
}

PBW_TEST(conv2d_forward_torch) {
    conv_case c = {2, 6, 9, 11, 4, 3, 5, 2, 1, 1, 2, 1, 2, 2, 1};
    CHECK(check_conv_fixture("conv1", &c, 0) == 0);
}

static const conv_case CONVT_CASES[] = {
    /* N  C  H  W  O  KH KW sh sw ph pw dh dw G bias oph opw */
    {2, 4, 5, 6, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1},  /* the usual upsampling conv */
    {1, 4, 4, 5, 4, 3, 2, 3, 2, 2, 0, 2, 1, 2, 0, 2, 1},  /* groups, dilation, out pad */
    {1, 6, 4, 4, 8, 3, 3, 2, 2, 0, 0, 1, 1, 2, 0, 0, 0},  /* StyleGAN2 modulated up-conv */
    {2, 3, 3, 4, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0},  /* 1x1 */
    {1, 2, 5, 5, 3, 4, 4, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0},  /* even kernel */
    {3, 4, 3, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 1, 0, 0},  /* depthwise */
    {1, 2, 4, 3, 2, 3, 3, 1, 1, 2, 0, 3, 2, 1, 1, 2, 1},  /* out pad < dilation, >= stride */
};
#define N_CONVT_CASES (int)(sizeof CONVT_CASES / sizeof CONVT_CASES[0])

PBW_TEST(conv_transpose2d_forward_cases) {
    for (int i = 0; i < N_CONVT_CASES; i++)
        for (int t = 0; t < N_TUNE; t++)
            CHECK_MSG(check_conv_case(&CONVT_CASES[i], 1, TUNE[t]) == 0, "case %d tune %d", i, t);
}

PBW_TEST(conv_transpose2d_forward_torch) {
    CHECK(check_conv_fixture("convt1", &CONVT_CASES[0], 1) == 0);
    CHECK(check_conv_fixture("convt2", &CONVT_CASES[1], 1) == 0);
    CHECK(check_conv_fixture("convt3", &CONVT_CASES[2], 1) == 0);
}

/* ---------- backward ---------- */

typedef struct gc_conv {
    const conv_case *c;
    int transposed;
} gc_conv;

static pbw_tensor *conv_fn(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    const gc_conv *u = user;
    pbw_tensor *b = u->c->bias ? in[2] : NULL;
    return u->transposed ? pbw_conv_transpose2d(ctx, in[0], in[1], b, params_of(u->c))
                         : pbw_conv2d(ctx, in[0], in[1], b, params_of(u->c));
}

/* Checks the gradients of x, w and b (those flagged) for one case. */
static int gradcheck_conv(const char *name, const conv_case *c, int transposed, int gx, int gw,
                          int gb) {
    int64_t xs[4] = {c->N, c->C, c->H, c->W};
    int64_t ws[4] = {transposed ? c->C : c->O, transposed ? c->O / c->G : c->C / c->G, c->KH, c->KW};
    gc_input in[3];
    memset(in, 0, sizeof in);
    in[0].ndim = 4, memcpy(in[0].shape, xs, sizeof xs), in[0].grad = gx;
    in[1].ndim = 4, memcpy(in[1].shape, ws, sizeof ws), in[1].grad = gw;
    in[2].ndim = 1, in[2].shape[0] = c->O, in[2].grad = gb;
    int nin = c->bias ? 3 : 2;
    for (int i = 0; i < nin; i++) {
        int64_t n = 1;
        for (int d = 0; d < in[i].ndim; d++) n *= in[i].shape[d];
        in[i].data = gc_rand(n, 10 + i, -1.0f, 1.0f);
    }
    gc_conv u = {c, transposed};
    int r = gc_check(name, conv_fn, &u, nin, in, (gc_opts){0});
    for (int i = 0; i < nin; i++) free(in[i].data);
    return r;
}

/* Gradient checks under the default tuning, threaded with automatic tiles, and threaded with
 * narrow forced tiles, so that every work split of the three kernels is checked. */
static const int64_t GC_TUNE[][2] = {{0, 0}, {0, 1}, {5, 1}};

PBW_TEST(conv2d_backward) {
    static const conv_case cases[] = {
        {2, 3, 6, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},  /* 3x3 same, bias; dx split by sample */
        {1, 4, 9, 8, 4, 3, 3, 2, 2, 1, 2, 2, 1, 2, 1},  /* stride, dilation, groups */
        {2, 4, 3, 5, 6, 1, 1, 1, 1, 0, 0, 1, 1, 2, 1},  /* 1x1 grouped (direct GEMM) */
        {3, 3, 16, 16, 4, 8, 8, 8, 8, 0, 0, 1, 1, 1, 0}, /* patch embedding */
        {4, 4, 3, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 0},  /* depthwise, small maps, batch */
        {1, 2, 7, 5, 3, 3, 2, 3, 2, 0, 1, 1, 2, 1, 1},  /* stride 3, odd */
        {1, 3, 5, 6, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0}, /* few in, many out: dW split by rows */
        {1, 6, 4, 5, 3, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0},  /* 1x1, one sample: dx split by channel */
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        for (int t = 0; t < 3; t++) {
            pbw_cpu_conv_tune(GC_TUNE[t][0], GC_TUNE[t][1]);
            CHECK_MSG(gradcheck_conv("conv2d", &cases[i], 0, 1, 1, cases[i].bias) == 0,
                      "case %d tune %d", i, t);
            pbw_cpu_conv_tune(0, 0);
        }
}

PBW_TEST(conv_transpose2d_backward) {
    for (int i = 0; i < N_CONVT_CASES; i++)
        for (int t = 0; t < 3; t++) {
            pbw_cpu_conv_tune(GC_TUNE[t][0], GC_TUNE[t][1]);
            CHECK_MSG(gradcheck_conv("conv_transpose2d", &CONVT_CASES[i], 1, 1, 1,
                                     CONVT_CASES[i].bias) == 0, "case %d tune %d", i, t);
            pbw_cpu_conv_tune(0, 0);
        }
}

/* Painting asks for the latent's gradient only: weights that need no gradient get none. */
PBW_TEST(conv2d_input_grad_only) {
    conv_case c = {2, 3, 6, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(gradcheck_conv("conv2d dx only", &c, 0, 1, 0, 0) == 0);
    CHECK(gradcheck_conv("conv_transpose2d dx only", &CONVT_CASES[0], 1, 1, 0, 0) == 0);
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = rand_tensor(ctx, 4, (int64_t[]){1, 3, 5, 5}, 1);
    pbw_tensor *w = rand_tensor(ctx, 4, (int64_t[]){2, 3, 3, 3}, 2);
    pbw_tensor *b = rand_tensor(ctx, 1, (int64_t[]){2}, 3);
    x->requires_grad = 1;
    pbw_tensor *y = pbw_conv2d(ctx, x, w, b, (pbw_conv_params){.pad_h = 1, .pad_w = 1});
    CHECK(pbw_backward(ctx, y, NULL, &err) == 0);
    CHECK(x->grad != NULL);
    CHECK(w->grad == NULL && b->grad == NULL);
    /* no input needs a gradient: nothing is recorded */
    x->requires_grad = 0;
    pbw_tensor *z = pbw_conv2d(ctx, x, w, b, (pbw_conv_params){0});
    CHECK(z && !z->requires_grad);
    pbw_ctx_free(ctx);
}

/* Gradients add up when one tensor feeds two convolutions. */
static pbw_tensor *twice_fn(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    (void)user;
    pbw_conv_params p = {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1};
    pbw_tensor *a = pbw_conv2d(ctx, in[0], in[1], NULL, p);
    pbw_tensor *b = pbw_conv2d(ctx, in[0], in[1], NULL, p);
    pbw_tensor *c = pbw_conv_transpose2d(ctx, pbw_add(ctx, a, b), in[2], NULL, p);
    return pbw_conv_transpose2d(ctx, c, in[2], NULL, (pbw_conv_params){0});
}

PBW_TEST(conv2d_grads_accumulate) {
    gc_input in[3] = {{4, {1, 2, 6, 6}, NULL, 1}, {4, {3, 2, 3, 3}, NULL, 1}, {4, {3, 3, 3, 3}, NULL, 1}};
    in[0].data = gc_rand(72, 1, -1, 1);
    in[1].data = gc_rand(54, 2, -1, 1);
    in[2].data = gc_rand(81, 3, -1, 1);
    CHECK(gc_check("conv twice", twice_fn, NULL, 3, in, (gc_opts){0}) == 0);
    for (int i = 0; i < 3; i++) free(in[i].data);
}

PBW_TEST(conv2d_errors) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    /* tensors live in the activation arena: make them again after every reset */
#define X() rand_tensor(ctx, 4, (int64_t[]){1, 4, 5, 5}, 1)
#define W(o, c, k) rand_tensor(ctx, 4, (int64_t[]){o, c, k, k}, 2)
    CHECK(pbw_conv2d(ctx, X(), W(2, 3, 3), NULL, (pbw_conv_params){0}) == NULL);
    CHECK(pbw_ctx_failed(ctx) && strstr(pbw_ctx_error(ctx), "conv2d") &&
          strstr(pbw_ctx_error(ctx), "(1,4,5,5)") && strstr(pbw_ctx_error(ctx), "(2,3,3,3)"));
    pbw_ctx_reset(ctx);
    CHECK(pbw_conv2d(ctx, X(), W(2, 2, 3), NULL, (pbw_conv_params){.groups = 2}) != NULL);
    CHECK(pbw_conv2d(ctx, X(), W(2, 2, 3), NULL, (pbw_conv_params){.groups = 3}) == NULL);
    pbw_ctx_reset(ctx);
    pbw_tensor *b = rand_tensor(ctx, 1, (int64_t[]){3}, 3);
    CHECK(pbw_conv2d(ctx, X(), W(2, 2, 3), b, (pbw_conv_params){.groups = 2}) == NULL);
    CHECK(strstr(pbw_ctx_error(ctx), "bias") != NULL);
    pbw_ctx_reset(ctx);
    CHECK(pbw_conv2d(ctx, X(), W(2, 4, 7), NULL, (pbw_conv_params){0}) == NULL); /* 7x7 > 5x5 */
    CHECK(strstr(pbw_ctx_error(ctx), "smaller") != NULL);
    pbw_ctx_reset(ctx);
    CHECK(pbw_conv2d(ctx, X(), W(2, 4, 3), NULL, (pbw_conv_params){.stride_h = -1}) == NULL);
    CHECK(strstr(pbw_ctx_error(ctx), "stride_h") != NULL);
    pbw_ctx_reset(ctx);
    /* transposed: output padding must be below stride or dilation */
    CHECK(pbw_conv_transpose2d(ctx, X(), W(4, 2, 3), NULL,
                               (pbw_conv_params){.stride_h = 2, .stride_w = 2, .out_pad_h = 1}) != NULL);
    CHECK(pbw_conv_transpose2d(ctx, X(), W(4, 2, 3), NULL,
                               (pbw_conv_params){.stride_h = 2, .stride_w = 2, .out_pad_h = 2}) == NULL);
    CHECK(strstr(pbw_ctx_error(ctx), "conv_transpose2d") != NULL);
    pbw_ctx_reset(ctx);
    CHECK(pbw_conv_transpose2d(ctx, X(), W(3, 2, 3), NULL, (pbw_conv_params){0}) == NULL);
    pbw_ctx_reset(ctx);
    /* a NULL input (an earlier failure) gives NULL */
    CHECK(pbw_conv2d(ctx, NULL, W(2, 4, 3), NULL, (pbw_conv_params){0}) == NULL);
#undef X
#undef W
    pbw_ctx_free(ctx);
}
