/* test_cuda_conv.c: the convolution, resampling and StyleGAN2 ops on CUDA against the CPU
 * (cuda_parity.h): conv2d, conv_transpose2d, upfirdn2d, resize, gaussian blur, sg_modulate,
 * sg_bias_act, sg_conv and sg_blur, forward and every input gradient, at the shapes the models
 * use (CLIP's 32x32 patch conv, AlexNet's 11x11 stride-4 stem of LPIPS, StyleGAN2's 3x3 and
 * transposed convs, its [1,3,3,1] FIR filters, 256->224 bicubic) and at odd sizes.
 *
 * Convolutions run at the default CUDA precision, plain fp32 (cuDNN with FMA math, no TF32),
 * except in cuda_conv_half and cuda_sg_conv_half (bf16 and fp16, then back to fp32).
 * Tolerances are errors relative to each tensor's largest value:
 *   1e-4  cuDNN convolutions against the CPU's im2col + sgemm (or its Winograd F(2x2,3x3) for
 *         sg_conv). Both are fp32, but cuDNN's heuristics may pick Winograd, FFT or implicit
 *         GEMM algorithms whose intermediate roundings differ from a direct sum: Winograd and
 *         FFT transforms add errors of a few ulps of the transformed values, which are larger
 *         than the outputs. Sums reach 3072 terms (CLIP's patch conv) and weight gradients
 *         4096 positions x batch. Measured errors stay around 1e-6..1e-5; 1e-4 leaves margin
 *         while any indexing bug gives O(1).
 *   1e-5  the resampling and StyleGAN2 kernels: the same sums in the CPU's order, differing by
 *         fused multiply-adds (nvcc contracts a*b+c; the CPU's ISO C build does not) and, in
 *         the backwards, by summing each input's gradient in a register before adding it to
 *         dx; pixel reductions run in double on both sides.
 *   1e-2  cuda_conv_half and cuda_sg_conv_half: conv2d, conv_transpose2d and sg_conv under
 *         PBW_PREC_BF16 and PBW_PREC_FP16, whose forward and backward-data directions run on
 *         bf16 / fp16 NHWC staged copies (pbw_cuda_conv.cu) against the CPU's fp32. Each
 *         operand is rounded to bf16 (unit roundoff u = 2^-9 = 2.0e-3; fp16 2^-12), products
 *         are summed in fp32, and the output is rounded to bf16 once more. A sum of K terms
 *         with random signs then errs by about 1.6e-3 * sqrt(sum of squared terms), i.e.
 *         ~1.6e-3 of the outputs' standard deviation, which the maximum over 1e4..1e5 outputs
 *         brings to ~2e-3 of the largest output; the output's own rounding adds up to 2e-3
 *         (u of the largest). Expected worst ~3e-3..5e-3; 1e-2 leaves 2x margin, while a
 *         layout or indexing bug in the staging (NCHW <-> NHWC, KCRS -> KRSC, accumulate)
 *         gives O(1). The weight gradients (backward-filter, not staged) run with tensor-op
 *         conversion, within the same bound.
 * Each case prints its worst error. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "core/pbw_ops_stylegan.h"
#include "cuda_parity.h"
#include "gradcheck.h"
#include "core/pbw_rng.h"
#include "paint/pbw_loss.h"
#include "pbw_test.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_conv.h"
#endif
#include <stdlib.h>

#define TOL_CONV 1e-4 /* cuDNN algorithms vs im2col/Winograd, see above */
#define TOL_EW 1e-5   /* same sums in the same order, FMA contraction only */
#define TOL_HALF 1e-2 /* bf16/fp16 operands and output, see above */

/* ---------- conv2d ---------- */

typedef struct {
    pbw_conv_params p;
    int bias;
} conv_arg;

static pbw_tensor *conv_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const conv_arg *a = arg;
    return pbw_conv2d(ctx, in[0], in[1], a->bias ? in[2] : NULL, a->p);
}

typedef struct {
    const char *name;
    int n, c, h, w, o, kh, kw;
    pbw_conv_params p;
    int bias;
} conv_case;

static pbw_tensor *convt_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const conv_arg *a = arg;
    return pbw_conv_transpose2d(ctx, in[0], in[1], a->bias ? in[2] : NULL, a->p);
}

/* Parity of each case of conv2d (transposed 0: w is (o, c/G, kh, kw)) or conv_transpose2d
 * (transposed 1: c = input channels, o = output channels, w is (c, o/G, kh, kw)), with the
 * bias when the case has one; tag (a precision's name, or "") goes into each line. Returns
 * the number of cases over tol. */
static int conv_cases(const conv_case *cases, size_t n, int transposed, const char *tag,
                      double tol) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const conv_case *c = &cases[i];
        int G = c->p.groups ? c->p.groups : 1;
        conv_arg arg = {c->p, c->bias};
        parity_input in[] = {{4, {c->n, c->c, c->h, c->w}, 1},
                             {4, {transposed ? c->c : c->o, (transposed ? c->o : c->c) / G,
                                  c->kh, c->kw}, 1},
                             {1, {c->o}, 1}};
        char name[96];
        snprintf(name, sizeof name, "%s%s%s %s", transposed ? "conv_transpose2d" : "conv2d",
                 tag[0] ? " " : "", tag, c->name);
        bad += parity_check(name, transposed ? convt_fn : conv_fn, &arg, c->bias ? 3 : 2, in,
                            tol) != 0;
    }
    return bad;
}

PBW_TEST(cuda_conv2d) {
    static const conv_case cases[] = {
        {"3x3 pad 1", 2, 16, 17, 19, 24, 3, 3, {.pad_h = 1, .pad_w = 1}, 0},
        {"1x1", 2, 32, 8, 8, 16, 1, 1, {0}, 0},
        {"3x3 stride 2", 2, 8, 15, 15, 12, 3, 3, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}, 0},
        {"groups 4", 2, 8, 9, 9, 12, 3, 3, {.pad_h = 1, .pad_w = 1, .groups = 4}, 1},
        {"depthwise", 1, 16, 10, 10, 16, 3, 3, {.pad_h = 1, .pad_w = 1, .groups = 16}, 0},
        {"dilation 2", 2, 6, 13, 11, 5, 3, 3, {.pad_h = 2, .pad_w = 2, .dil_h = 2, .dil_w = 2}, 0},
        {"bias, 5x3 kernel", 3, 5, 12, 9, 7, 5, 3, {.pad_h = 2, .pad_w = 1}, 1},
        {"AlexNet 11x11/4 pad 2", 1, 3, 224, 224, 64, 11, 11,
         {.stride_h = 4, .stride_w = 4, .pad_h = 2, .pad_w = 2}, 1},
        {"CLIP 32x32/32 patches", 1, 3, 224, 224, 768, 32, 32, {.stride_h = 32, .stride_w = 32}, 0},
        {"StyleGAN2 512ch 4x4", 1, 512, 4, 4, 512, 3, 3, {.pad_h = 1, .pad_w = 1}, 1},
    };
    CHECK(conv_cases(cases, sizeof cases / sizeof cases[0], 0, "", TOL_CONV) == 0);
}

/* ---------- conv_transpose2d ---------- */

PBW_TEST(cuda_conv_transpose2d) {
    static const conv_case cases[] = {
        /* in conv_case terms: c = input channels, o = output channels; w is (c, o/G, k, k) */
        {"3x3 stride 2", 2, 8, 9, 9, 6, 3, 3, {.stride_h = 2, .stride_w = 2}, 0},
        {"3x3/2 pad 1 out_pad 1", 2, 8, 9, 7, 6, 3, 3,
         {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .out_pad_h = 1, .out_pad_w = 1}, 1},
        {"4x4/2 pad 1 groups 2", 1, 8, 8, 8, 4, 4, 4,
         {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .groups = 2}, 1},
        {"3x3 stride 1", 1, 5, 6, 6, 7, 3, 3, {.pad_h = 1, .pad_w = 1}, 0},
    };
    CHECK(conv_cases(cases, sizeof cases / sizeof cases[0], 1, "", TOL_CONV) == 0);
}

/* ---------- upfirdn2d ---------- */

typedef struct {
    int up, down, px0, px1, py0, py1;
    float gain; /* the kernel is [1,3,3,1] (x) [1,3,3,1] / 64 * gain */
    int k1d;    /* 1: a (1,4) kernel instead */
} fir_arg;

static pbw_tensor *fir_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const fir_arg *a = arg;
    static const float t[4] = {1, 3, 3, 1};
    float k[16];
    for (int i = 0; i < 16; i++) k[i] = t[i / 4] * t[i % 4] / 64.0f * a->gain;
    if (a->k1d)
        for (int i = 0; i < 4; i++) k[i] = t[i] / 8.0f + 0.01f * (float)i; /* asymmetric */
    /* on a CUDA context the kernel tensor is device memory, read by the CUDA kernel */
    pbw_tensor *kt = pbw_tensor_from_host(ctx, k, 2, a->k1d ? (int64_t[]){1, 4} : (int64_t[]){4, 4});
    return pbw_upfirdn2d(ctx, in[0], kt, a->up, a->down, a->px0, a->px1, a->py0, a->py1);
}

PBW_TEST(cuda_upfirdn2d) {
    static const struct {
        const char *name;
        int n, c, h, w;
        fir_arg a;
    } cases[] = {
        /* StyleGAN2's Upsample(factor 2): pad ((p+1)/2 + 1, p/2) with p = 2, gain 4 */
        {"up 2 (StyleGAN2 Upsample)", 2, 3, 8, 8, {2, 1, 2, 1, 2, 1, 4.0f, 0}},
        {"up 2 odd sides", 1, 4, 7, 9, {2, 1, 2, 1, 2, 1, 4.0f, 0}},
        /* Downsample(factor 2): pad (1, 1) */
        {"down 2 (StyleGAN2 Downsample)", 2, 3, 16, 16, {1, 2, 1, 1, 1, 1, 1.0f, 0}},
        {"down 2 odd sides", 1, 2, 15, 13, {1, 2, 1, 1, 1, 1, 1.0f, 0}},
        /* the Blur after a transposed conv: up = down = 1, pad (1, 1) */
        {"blur pad 1,1", 2, 5, 17, 17, {1, 1, 1, 1, 1, 1, 4.0f, 0}},
        {"up 2 down 3, crop", 1, 2, 11, 10, {2, 3, -1, 2, 0, -1, 1.0f, 0}},
        {"1x4 kernel, asymmetric", 1, 3, 9, 12, {1, 1, 2, 1, 0, 0, 1.0f, 1}},
        {"up 2, 64 channels 32x32", 1, 64, 32, 32, {2, 1, 2, 1, 2, 1, 4.0f, 0}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parity_input in[] = {{4, {cases[i].n, cases[i].c, cases[i].h, cases[i].w}, 1}};
        char name[80];
        snprintf(name, sizeof name, "upfirdn2d %s", cases[i].name);
        CHECK(parity_check(name, fir_fn, (void *)&cases[i].a, 1, in, TOL_EW) == 0);
    }
}

/* ---------- resize ---------- */

typedef struct {
    int oh, ow;
    pbw_resize_mode mode;
} resize_arg;

static pbw_tensor *resize_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const resize_arg *a = arg;
    return pbw_resize(ctx, in[0], a->oh, a->ow, a->mode);
}

PBW_TEST(cuda_resize) {
    static const char *modes[3] = {"nearest", "bilinear", "bicubic"};
    static const struct {
        int h, w, oh, ow;
    } sizes[] = {
        {7, 9, 14, 18},  /* x2 up (nearest's o >> 1 path) */
        {5, 6, 13, 11},  /* up by odd ratios */
        {16, 19, 7, 8},  /* down */
        {9, 9, 9, 9},    /* identity */
        {4, 4, 37, 3},   /* strong up on one axis, down on the other */
    };
    for (int m = 0; m < 3; m++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            resize_arg arg = {sizes[i].oh, sizes[i].ow, (pbw_resize_mode)m};
            parity_input in[] = {{4, {2, 3, sizes[i].h, sizes[i].w}, 1}};
            char name[80];
            snprintf(name, sizeof name, "resize %s %dx%d->%dx%d", modes[m], sizes[i].h,
                     sizes[i].w, sizes[i].oh, sizes[i].ow);
            CHECK(parity_check(name, resize_fn, &arg, 1, in, TOL_EW) == 0);
        }
    /* CLIP's preprocessing of a StyleGAN2 image */
    resize_arg clip = {224, 224, PBW_RESIZE_BICUBIC};
    parity_input in[] = {{4, {1, 3, 256, 256}, 1}};
    CHECK(parity_check("resize bicubic 256->224", resize_fn, &clip, 1, in, TOL_EW) == 0);
    resize_arg bil = {224, 224, PBW_RESIZE_BILINEAR};
    CHECK(parity_check("resize bilinear 256->224", resize_fn, &bil, 1, in, TOL_EW) == 0);
}

/* ---------- gaussian blur ---------- */

typedef struct {
    float sigma;
    int ksize;
} gblur_arg;

static pbw_tensor *gblur_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const gblur_arg *a = arg;
    return pbw_gaussian_blur(ctx, in[0], a->sigma, a->ksize);
}

PBW_TEST(cuda_gaussian_blur) {
    static const struct {
        int n, c, h, w;
        gblur_arg a;
    } cases[] = {
        {2, 3, 20, 17, {1.5f, 7}},
        {1, 3, 64, 64, {5.0f, 31}},
        {1, 2, 8, 6, {3.0f, 21}}, /* kernel wider than the image */
        {1, 1, 5, 5, {0.5f, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parity_input in[] = {{4, {cases[i].n, cases[i].c, cases[i].h, cases[i].w}, 1}};
        char name[80];
        snprintf(name, sizeof name, "gaussian_blur sigma %.1f k %d", (double)cases[i].a.sigma,
                 cases[i].a.ksize);
        CHECK(parity_check(name, gblur_fn, (void *)&cases[i].a, 1, in, TOL_EW) == 0);
    }
}

/* ---------- sg_modulate ---------- */

static pbw_tensor *mod_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    return arg ? pbw_sg_modulate(ctx, in[0], in[1], in[2], in[3])
               : pbw_sg_modulate(ctx, in[0], in[1], NULL, NULL);
}

PBW_TEST(cuda_sg_modulate) {
    static const struct {
        int n, c, h, w;
        int sn, s0n, mn; /* rows of s, s0, m: n or 1 */
        int masked;
    } cases[] = {
        {2, 64, 16, 16, 2, 0, 0, 0},    /* per-sample styles */
        {2, 64, 16, 16, 1, 0, 0, 0},    /* a style shared by the batch */
        {1, 512, 4, 4, 1, 0, 0, 0},     /* StyleGAN2's 4x4 layer */
        {2, 8, 96, 96, 2, 0, 0, 0},     /* several reduction chunks per plane */
        {2, 32, 16, 16, 2, 2, 2, 1},    /* masked, all per sample */
        {3, 16, 12, 10, 1, 3, 1, 1},    /* masked, s and m shared, s0 per sample */
        {2, 8, 96, 96, 2, 1, 2, 1},     /* masked, several chunks */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = cases[i].n, c = cases[i].c, h = cases[i].h, w = cases[i].w;
        /* styles around 1 as the affine layers give; the mask in [0,1] */
        parity_input in[] = {{4, {n, c, h, w}, 1},
                             {2, {cases[i].sn, c}, 1, 0.5f, 1.5f},
                             {2, {cases[i].s0n, c}, 1, 0.5f, 1.5f},
                             {4, {cases[i].mn, 1, h, w}, 1, 0.0f, 1.0f}};
        char name[80];
        snprintf(name, sizeof name, "sg_modulate %s (%d,%d,%d,%d) s%d", cases[i].masked ? "masked" : "plain",
                 n, c, h, w, cases[i].sn);
        CHECK(parity_check(name, mod_fn, cases[i].masked ? (void *)1 : NULL,
                           cases[i].masked ? 4 : 2, in, TOL_EW) == 0);
    }
}

/* ---------- sg_bias_act ---------- */

typedef struct {
    int d, noise, bias; /* which inputs are given (d: 0 none, 1 per channel, 2 per pixel) */
} act_arg;

static pbw_tensor *act_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const act_arg *a = arg;
    int k = 1;
    pbw_tensor *d = a->d ? in[k++] : NULL;
    pbw_tensor *noise = a->noise ? in[k++] : NULL;
    pbw_tensor *bias = a->bias ? in[k++] : NULL;
    return pbw_sg_bias_act(ctx, in[0], d, noise, bias, 0.7f, 0.2f, 1.41421356f);
}

PBW_TEST(cuda_sg_bias_act) {
    static const struct {
        int n, o, h, w;
        act_arg a;
        int dn, nn; /* rows of d (per channel) and noise: n or 1 */
    } cases[] = {
        {2, 64, 16, 16, {1, 1, 1}, 2, 2},  /* the styled conv: d (N,O), noise (N,1,H,W), bias */
        {2, 64, 16, 16, {1, 1, 1}, 1, 1},  /* d and noise shared by the batch */
        {2, 32, 8, 8, {2, 1, 1}, 0, 2},    /* per-pixel d (the masked model) */
        {1, 512, 4, 4, {1, 1, 1}, 1, 1},   /* the 4x4 layer */
        {2, 3, 96, 96, {0, 0, 1}, 0, 0},   /* ToRGB: bias only, several chunks */
        {3, 5, 70, 70, {1, 0, 0}, 3, 0},   /* d only, several chunks */
        {2, 4, 7, 9, {0, 1, 0}, 0, 1},     /* noise only */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = cases[i].n, o = cases[i].o, h = cases[i].h, w = cases[i].w, k = 0;
        parity_input in[4];
        memset(in, 0, sizeof in);
        in[k++] = (parity_input){4, {n, o, h, w}, 1};
        if (cases[i].a.d == 1) in[k++] = (parity_input){2, {cases[i].dn, o}, 1, 0.2f, 1.5f};
        if (cases[i].a.d == 2) in[k++] = (parity_input){4, {n, o, h, w}, 1, 0.2f, 1.5f};
        if (cases[i].a.noise) in[k++] = (parity_input){4, {cases[i].nn, 1, h, w}, 1};
        if (cases[i].a.bias) in[k++] = (parity_input){1, {o}, 1};
        char name[80];
        snprintf(name, sizeof name, "sg_bias_act (%d,%d,%d,%d) d%d n%d b%d", n, o, h, w,
                 cases[i].a.d, cases[i].a.noise, cases[i].a.bias);
        CHECK(parity_check(name, act_fn, (void *)&cases[i].a, k, in, TOL_EW) == 0);
    }
}

/* ---------- sg_conv ---------- */

/* One weight, two plans: `cpu` from a weight that stays on the host, `gpu` from a copy in an
 * arena moved to the CUDA device on first use (as a model does after loading). */
typedef struct {
    pbw_sg_conv_plan *cpu, *gpu;
    pbw_arena *gpu_arena;
    int moved;
} sgconv_arg;

/* The plan for ctx's device (the GPU's weight moved on first use), or NULL with ctx failed. */
static const pbw_sg_conv_plan *plan_for(pbw_ctx *ctx, sgconv_arg *a) {
    if (pbw_ctx_device(ctx) == PBW_DEV_CPU) return a->cpu;
    if (!a->moved) {
        pbw_err err = {{0}};
        if (pbw_arena_to_device(a->gpu_arena, ctx, &err))
            return pbw_ctx_fail(ctx, "moving the weight: %s", err.msg);
        a->moved = 1;
    }
    return a->gpu;
}

static pbw_tensor *sgconv_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const pbw_sg_conv_plan *pl = plan_for(ctx, arg);
    return pl ? pbw_sg_conv(ctx, in[0], pl) : NULL;
}

typedef struct {
    int n, c, h, w, o, k, transposed;
} sgconv_case;

#ifdef PBW_HAVE_CUDA
/* a's CPU and GPU plans of one (O,C,k,k) weight of fixed values, in arenas ca and ga
 * (initialized here: free both). 0, or -1 on failure. */
static int fixed_plans(sgconv_arg *a, pbw_arena *ca, pbw_arena *ga, int O, int C, int k,
                       int transposed) {
    pbw_err err = {{0}};
    pbw_arena_init(ca, 1 << 16);
    pbw_arena_init(ga, 1 << 16);
    const int64_t ws[4] = {O, C, k, k};
    pbw_tensor *wc = pbw_tensor_new_in(ca, 4, ws, &err), *wg = pbw_tensor_new_in(ga, 4, ws, &err);
    if (!wc || !wg) return -1;
    for (int64_t j = 0; j < wc->numel; j++)
        wc->data[j] = wg->data[j] = (float)((j * 37) % 101 - 50) / 1200.0f;
    *a = (sgconv_arg){pbw_sg_conv_prepare(ca, wc, transposed, &err),
                      pbw_sg_conv_prepare(ga, wg, transposed, &err), ga, 0};
    return a->cpu && a->gpu ? 0 : -1;
}
#endif

/* Each case's CPU and GPU plans from one random weight; returns the failures. */
static int sgconv_cases(const sgconv_case *cases, size_t ncases, const char *tag, double tol) {
    int bad = 0;
    for (size_t i = 0; i < ncases; i++) {
        int c = cases[i].c, o = cases[i].o, k = cases[i].k;
        pbw_err err = {{0}};
        pbw_arena ca, ga;
        pbw_arena_init(&ca, 1 << 16);
        pbw_arena_init(&ga, 1 << 16);
        int64_t ws[4] = {o, c, k, k};
        pbw_tensor *wc = pbw_tensor_new_in(&ca, 4, ws, &err);
        pbw_tensor *wg = pbw_tensor_new_in(&ga, 4, ws, &err);
        if (!wc || !wg) {
            fprintf(stderr, "  sg_conv weights: %s\n", err.msg);
            bad++;
            pbw_arena_free(&ga);
            pbw_arena_free(&ca);
            continue;
        }
        /* uniform(-1,1) / sqrt(fan-in): outputs of unit scale, as the model's weight scale
         * gives (an LCG: the weights are not parity inputs) */
        uint32_t st = 12345u + (uint32_t)i;
        const float sc = 2.0f / sqrtf((float)(c * k * k));
        for (int64_t j = 0; j < wc->numel; j++) {
            st = st * 1664525u + 1013904223u;
            wc->data[j] = wg->data[j] = ((float)(st >> 8) / 16777216.0f - 0.5f) * sc;
        }
        sgconv_arg arg = {pbw_sg_conv_prepare(&ca, wc, cases[i].transposed, &err),
                          pbw_sg_conv_prepare(&ga, wg, cases[i].transposed, &err), &ga, 0};
        if (arg.cpu && arg.gpu) {
            parity_input in[] = {{4, {cases[i].n, c, cases[i].h, cases[i].w}, 1}};
            char name[96];
            snprintf(name, sizeof name, "sg_conv%s%s %dx%d C=%d O=%d k=%d", tag,
                     cases[i].transposed ? " transposed" : "", cases[i].h, cases[i].w, c, o, k);
            bad += parity_check(name, sgconv_fn, &arg, 1, in, tol) != 0;
            /* the GPU's plan never packed the CPU kernel's weights; the CPU's did on its first
             * call; a CPU call with the GPU's plan fails, naming why */
            pbw_ctx *cpu = pbw_ctx_new(PBW_DEV_CPU, &err);
            pbw_tensor *x = cpu ? pbw_tensor_zeros(cpu, 4, (int64_t[]){1, c, 4, 4}) : NULL;
            const int refused = x && !pbw_sg_conv(cpu, x, arg.gpu) &&
                                strstr(pbw_ctx_error(cpu), "on the GPU");
            if (arg.gpu->cpu->packed || !arg.cpu->cpu->packed || !refused) {
                fprintf(stderr, "  %s: packed on the GPU %d, on the CPU %d; CPU call refused %d\n",
                        name, arg.gpu->cpu->packed, arg.cpu->cpu->packed, refused);
                bad++;
            }
            pbw_ctx_free(cpu);
        } else {
            fprintf(stderr, "  sg_conv plans: %s\n", err.msg);
            bad++;
        }
        pbw_arena_free(&ga);
        pbw_arena_free(&ca);
    }
    return bad;
}

PBW_TEST(cuda_sg_conv) {
    static const sgconv_case cases[] = {
        {2, 64, 16, 16, 64, 3, 0},
        {2, 64, 16, 16, 64, 3, 1},
        {1, 128, 8, 8, 64, 3, 0},
        {1, 128, 8, 8, 64, 3, 1},
        {1, 16, 9, 7, 8, 1, 0},  /* ToRGB-like 1x1 */
        {1, 8, 5, 6, 4, 5, 1},   /* odd sides, 5x5 transposed */
    };
    CHECK(sgconv_cases(cases, sizeof cases / sizeof cases[0], "", TOL_CONV) == 0);
}

/* ---------- half-precision staging (PBW_PREC_BF16 / PBW_PREC_FP16) ---------- */

/* conv2d (forward staged; backward-data staged; weight gradient float32 NCHW) and
 * conv_transpose2d (forward = staged backward-data accumulating into zeros; its input
 * gradient = staged forward with accumulate) in bf16 and fp16, against the CPU's fp32. */
PBW_TEST(cuda_conv_half) {
#ifdef PBW_HAVE_CUDA
    static const conv_case cases[] = {
        {"3x3 pad 1, bias", 2, 16, 17, 19, 24, 3, 3, {.pad_h = 1, .pad_w = 1}, 1},
        {"3x3 stride 2", 2, 16, 15, 15, 32, 3, 3, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}, 0},
        {"1x1", 2, 32, 8, 8, 16, 1, 1, {0}, 0},
        {"groups 2 (16 a group)", 1, 32, 9, 9, 32, 3, 3, {.pad_h = 1, .pad_w = 1, .groups = 2}, 0},
        {"StyleGAN2 128ch 32x32", 2, 128, 32, 32, 128, 3, 3, {.pad_h = 1, .pad_w = 1}, 1},
        {"RGB stem (float32 path)", 1, 3, 32, 32, 16, 3, 3, {.pad_h = 1, .pad_w = 1}, 1},
    };
    static const conv_case tcases[] = {
        /* c = input channels, o = output channels; w is (c, o/G, k, k) */
        {"3x3 stride 2", 2, 16, 9, 9, 8, 3, 3, {.stride_h = 2, .stride_w = 2}, 0},
        {"3x3/2 pad 1 out_pad 1", 2, 16, 9, 7, 24, 3, 3,
         {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .out_pad_h = 1, .out_pad_w = 1}, 1},
    };
    static const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP16};
    for (int pi = 0; pi < 2; pi++) {
        pbw_cuda_set_precision(precs[pi]);
        const char *pn = pbw_precision_name(precs[pi]);
        CHECK(conv_cases(cases, sizeof cases / sizeof cases[0], 0, pn, TOL_HALF) == 0);
        CHECK(conv_cases(tcases, sizeof tcases / sizeof tcases[0], 1, pn, TOL_HALF) == 0);
    }
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

#ifdef PBW_HAVE_CUDA
/* A path of the staged convolutions that the switch `env` forces (=1) wherever it applies: the
 * cases and the transposed cases in bf16 and fp16 against the CPU's fp32, its runs counted by
 * calls() (at least min_ran a precision); then with the switch at 0 the first case again, and
 * the path may not run. The switch is put back as it was. */
static void forced_path_cases(const char *env, long (*calls)(void), const char *what, long min_ran,
                              const conv_case *cases, size_t n, const conv_case *tcases,
                              size_t nt) {
    static const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP16};
    char *saved;
    pbw_test_env_set(env, "1", &saved);
    for (int pi = 0; pi < 2; pi++) {
        pbw_cuda_set_precision(precs[pi]);
        const char *pn = pbw_precision_name(precs[pi]);
        pbw_cuda_conv_forget();
        const long before = calls();
        CHECK(conv_cases(cases, n, 0, pn, TOL_HALF) == 0);
        CHECK(conv_cases(tcases, nt, 1, pn, TOL_HALF) == 0);
        const long ran = calls() - before;
        printf("  %s: %ld %s\n", pn, ran, what);
        CHECK(ran >= min_ran);
    }
    setenv(env, "0", 1);
    pbw_cuda_set_precision(PBW_PREC_BF16);
    pbw_cuda_conv_forget();
    const long before = calls();
    CHECK(conv_cases(cases, 1, 0, "bf16 (switched off)", TOL_HALF) == 0);
    CHECK(calls() == before);
    pbw_test_env_restore(env, saved);
    pbw_cuda_conv_forget();
    pbw_cuda_set_precision(PBW_PREC_FP32);
}
#endif

/* Staged forwards as im2col and one cuBLAS product (PBW_CONV_GEMM=1 forces the path that
 * measuring picks for small outputs), in bf16 and fp16 against the CPU's fp32: padding,
 * stride, dilation, a 1x1, StyleGAN2's 4x4 layer; the transposed case's input gradient is a
 * staged forward accumulating. The products must have run; with PBW_CONV_GEMM=0 none may. */
PBW_TEST(cuda_conv_gemm) {
#ifdef PBW_HAVE_CUDA
    static const conv_case cases[] = {
        {"4x4 pad 1 (StyleGAN2's first layer)", 2, 64, 4, 4, 32, 3, 3, {.pad_h = 1, .pad_w = 1}, 1},
        {"3x3 stride 2 pad 1", 2, 16, 9, 7, 24, 3, 3, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}, 0},
        {"3x3 dilation 2 pad 2", 1, 24, 8, 8, 16, 3, 3, {.pad_h = 2, .pad_w = 2, .dil_h = 2, .dil_w = 2}, 1},
        {"1x1", 3, 32, 5, 6, 16, 1, 1, {0}, 0},
    };
    static const conv_case tcases[] = {
        {"3x3 stride 2", 2, 16, 5, 5, 8, 3, 3, {.stride_h = 2, .stride_w = 2}, 0},
    };
    /* each case's forward at least once */
    forced_path_cases("PBW_CONV_GEMM", pbw_cuda_conv_gemm_calls, "im2col products", 5, cases,
                      sizeof cases / sizeof cases[0], tcases, sizeof tcases / sizeof tcases[0]);
#endif
}

/* Staged convolutions as plans of cuDNN's backend API (PBW_CUDNN_BACKEND=1 forces the first
 * engine config that builds, where measuring keeps the fastest when it beats the legacy
 * algorithms): forward and backward-data (each case's input gradient; the transposed cases'
 * forward), in bf16 and fp16 against the CPU's fp32. The plans must have run; with
 * PBW_CUDNN_BACKEND=0 none may. */
PBW_TEST(cuda_conv_backend) {
#ifdef PBW_HAVE_CUDA
    static const conv_case cases[] = {
        {"3x3 pad 1", 2, 16, 17, 19, 24, 3, 3, {.pad_h = 1, .pad_w = 1}, 1},
        {"3x3 stride 2 pad 1", 2, 16, 9, 7, 24, 3, 3, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}, 0},
        {"3x3 dilation 2 pad 2", 1, 24, 8, 8, 16, 3, 3, {.pad_h = 2, .pad_w = 2, .dil_h = 2, .dil_w = 2}, 1},
        {"1x1", 3, 32, 5, 6, 16, 1, 1, {0}, 0},
        {"StyleGAN2 128ch 32x32", 2, 128, 32, 32, 128, 3, 3, {.pad_h = 1, .pad_w = 1}, 1},
    };
    static const conv_case tcases[] = {
        {"3x3 stride 2", 2, 16, 9, 9, 8, 3, 3, {.stride_h = 2, .stride_w = 2}, 0},
        {"3x3/2 pad 1 out_pad 1", 2, 16, 9, 7, 24, 3, 3,
         {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .out_pad_h = 1, .out_pad_w = 1}, 1},
    };
    /* forced picks are written to the cache file as measured ones: a folder of the test's */
    char dir[] = "/tmp/pbw_backend_conv_XXXXXX";
    char *saved_dir;
    CHECK(pbw_test_cache_dir_begin(dir, &saved_dir) == 0);
    /* each case's forward and input gradient at least once */
    forced_path_cases("PBW_CUDNN_BACKEND", pbw_cuda_conv_backend_calls, "backend plans ran", 14,
                      cases, sizeof cases / sizeof cases[0], tcases,
                      sizeof tcases / sizeof tcases[0]);
    CHECK(pbw_test_cache_dir_end(dir, saved_dir) == 0);
#endif
}

/* sg_conv plain (forward staged, input gradient staged backward-data accumulating) and
 * transposed (forward staged backward-data, input gradient staged forward accumulating), with
 * the plan's cached half KRSC weight; the last case is not staged (4 output channels). */
PBW_TEST(cuda_sg_conv_half) {
#ifdef PBW_HAVE_CUDA
    static const sgconv_case cases[] = {
        {2, 64, 16, 16, 64, 3, 0},
        {2, 64, 16, 16, 64, 3, 1},
        {1, 128, 8, 8, 64, 3, 1},
        {2, 128, 32, 32, 128, 3, 0}, /* StyleGAN2's 128-channel layers, smaller side */
        {1, 16, 9, 7, 8, 1, 0},      /* 1x1 */
        {1, 8, 5, 6, 4, 5, 1},       /* odd sides, 5x5 transposed, O = 4: float32 path */
    };
    pbw_cuda_set_precision(PBW_PREC_BF16);
    CHECK(sgconv_cases(cases, sizeof cases / sizeof cases[0], " bf16", TOL_HALF) == 0);
    pbw_cuda_set_precision(PBW_PREC_FP16);
    CHECK(sgconv_cases(cases, sizeof cases / sizeof cases[0], " fp16", TOL_HALF) == 0);
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

#ifdef PBW_HAVE_CUDA
/* 1 when a and b, tensors of ctx, hold the same values bit for bit (a fused op against the ops
 * it stands for). */
/* a's values are b's, bit for bit (rounded = 0), or b's rounded to bf16 (rounded = 1) */
static int same_bits_as(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b, int rounded) {
    if (!a || !b || a->numel != b->numel) return 0;
    float *ha = malloc((size_t)a->numel * sizeof(float)), *hb = malloc((size_t)b->numel * sizeof(float));
    int same = ha && hb && pbw_tensor_read(ctx, a, ha) == 0 && pbw_tensor_read(ctx, b, hb) == 0;
    for (int64_t i = 0; same && rounded && i < b->numel; i++)
        hb[i] = pbw_bf16_to_f32(pbw_f32_to_bf16(hb[i]));
    same = same && memcmp(ha, hb, (size_t)a->numel * sizeof(float)) == 0;
    free(ha), free(hb);
    return same;
}

static int same_bits(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b) {
    return same_bits_as(ctx, a, b, 0);
}

/* The bit-for-bit checks' setting: a CUDA context in bf16 (*ctx) and the plan of an (O,C,3,3)
 * weight of fixed values, moved to the GPU in ga; NULL (checked) on failure. Free with
 * bf16_plan_end. */
static pbw_sg_conv_plan *bf16_plan(pbw_ctx **ctx, pbw_arena *ga, int O, int C, int transposed) {
    pbw_err err = {{0}};
    pbw_cuda_set_precision(PBW_PREC_BF16);
    *ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
    pbw_arena_init(ga, 1 << 16);
    pbw_tensor *w = pbw_tensor_new_in(ga, 4, (int64_t[]){O, C, 3, 3}, &err);
    if (!*ctx || !w) return NULL;
    for (int64_t j = 0; j < w->numel; j++) w->data[j] = (float)((j * 37) % 101 - 50) / 1200.0f;
    pbw_sg_conv_plan *pl = pbw_sg_conv_prepare(ga, w, transposed, &err);
    return pl && pbw_arena_to_device(ga, *ctx, &err) == 0 ? pl : NULL;
}

static void bf16_plan_end(pbw_ctx *ctx, pbw_arena *ga) {
    pbw_ctx_free(ctx);
    pbw_arena_free(ga);
    pbw_cuda_set_precision(PBW_PREC_FP32);
}
#endif

/* conv2d's bias, added as the staged output is copied back (no pass of its own): the same
 * bits as the convolution without a bias followed by the bias added (pbw_add, broadcast), in
 * bf16, on the transpose's 16-byte path (P % 4 == 0) and its scalar one (P = 17 x 19). */
PBW_TEST(cuda_conv_bias_fused) {
#ifdef PBW_HAVE_CUDA
    static const struct {
        int n, c, h, w, o;
    } cases[] = {{2, 64, 16, 16, 32}, {2, 16, 17, 19, 24}};
    pbw_err err = {{0}};
    pbw_cuda_set_precision(PBW_PREC_BF16);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
    CHECK(ctx != NULL);
    for (size_t i = 0; ctx && i < sizeof cases / sizeof cases[0]; i++) {
        const int N = cases[i].n, C = cases[i].c, H = cases[i].h, W = cases[i].w, O = cases[i].o;
        const int64_t nx = (int64_t)N * C * H * W, nw = (int64_t)O * C * 9;
        float *h = malloc((size_t)(nx + nw + O) * sizeof(float));
        for (int64_t j = 0; j < nx + nw + O; j++) h[j] = (float)((j * 29) % 97 - 48) / 96.0f;
        pbw_tensor *x = pbw_tensor_from_host(ctx, h, 4, (int64_t[]){N, C, H, W});
        pbw_tensor *w = pbw_tensor_from_host(ctx, h + nx, 4, (int64_t[]){O, C, 3, 3});
        pbw_tensor *b = pbw_tensor_from_host(ctx, h + nx + nw, 1, (int64_t[]){O});
        const pbw_conv_params cp = {.pad_h = 1, .pad_w = 1};
        pbw_tensor *fused = pbw_conv2d(ctx, x, w, b, cp);
        pbw_tensor *apart = pbw_add(ctx, pbw_conv2d(ctx, x, w, NULL, cp),
                                    pbw_reshape(ctx, b, 4, (int64_t[]){1, O, 1, 1}));
        CHECK_MSG(fused && apart, "%s", pbw_ctx_error(ctx));
        if (fused && apart) {
            const int same = same_bits(ctx, fused, apart);
            printf("  conv2d bias (%d,%d,%d,%d) -> %d: fused %s the convolution then the add\n",
                   N, C, H, W, O, same ? "equals" : "differs from");
            CHECK(same);
        }
        free(h);
        pbw_ctx_reset(ctx);
    }
    pbw_ctx_free(ctx);
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

/* ---------- sg_modconv: the style applied as the input is staged ---------- */

/* pbw_sg_modconv, or with act pbw_sg_modconv_act (noise weight 0.7, the slope given) */
typedef struct {
    sgconv_arg conv;
    int act, masked;
    float slope;
} modconv_arg;

#ifdef PBW_HAVE_CUDA
/* in: x, s, s0, m, d (N,O), noise (N,1,OH,OW), bias (O): s0 and m read when masked, the last
 * three with the activation (so x and s alone, or x, s, s0, m, suffice without them) */
static pbw_tensor *modconv_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    modconv_arg *a = arg;
    const pbw_sg_conv_plan *pl = plan_for(ctx, &a->conv);
    if (!pl) return NULL;
    pbw_tensor *s0 = a->masked ? in[2] : NULL, *m = a->masked ? in[3] : NULL;
    if (!a->act) return pbw_sg_modconv(ctx, in[0], in[1], s0, m, pl);
    return pbw_sg_modconv_act(ctx, in[0], in[1], s0, m, pl, in[4], in[5], in[6], 0.7f, a->slope,
                              sqrtf(2.0f));
}
#endif

/* Without gradients (the CMA path) the GPU scales x while staging it; with them it runs
 * pbw_sg_modulate and pbw_sg_conv. Both against the CPU in fp32 (TOL_HALF in bf16, TOL_CONV in
 * fp32, where nothing is staged), plain and transposed, per-sample and masked styles. The
 * staged scale is pbw_sg_modulate's arithmetic, so on the GPU the fused forward also equals the
 * two ops exactly (checked bit for bit in bf16). */
PBW_TEST(cuda_sg_modconv) {
#ifdef PBW_HAVE_CUDA
    static const sgconv_case cases[] = {{2, 64, 16, 16, 64, 3, 0}, {2, 64, 8, 8, 32, 3, 1}};
    const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP32};
    for (int pi = 0; pi < 2; pi++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            for (int masked = 0; masked < 2; masked++)
                for (int grad = 0; grad < 2; grad++) {
                    const sgconv_case *c = &cases[i];
                    pbw_err err = {{0}};
                    pbw_arena ca, ga;
                    pbw_arena_init(&ca, 1 << 16);
                    pbw_arena_init(&ga, 1 << 16);
                    int64_t ws[4] = {c->o, c->c, c->k, c->k};
                    pbw_tensor *wc = pbw_tensor_new_in(&ca, 4, ws, &err);
                    pbw_tensor *wg = pbw_tensor_new_in(&ga, 4, ws, &err);
                    CHECK(wc && wg);
                    if (!wc || !wg) continue;
                    uint32_t st = 777u + (uint32_t)i;
                    const float sc = 2.0f / sqrtf((float)(c->c * c->k * c->k));
                    for (int64_t j = 0; j < wc->numel; j++) {
                        st = st * 1664525u + 1013904223u;
                        wc->data[j] = wg->data[j] = ((float)(st >> 8) / 16777216.0f - 0.5f) * sc;
                    }
                    modconv_arg arg = {{pbw_sg_conv_prepare(&ca, wc, c->transposed, &err),
                                        pbw_sg_conv_prepare(&ga, wg, c->transposed, &err), &ga, 0},
                                       0, masked, 0.0f};
                    parity_input in[] = {{4, {c->n, c->c, c->h, c->w}, grad},
                                         {2, {c->n, c->c}, grad, 0.5f, 1.5f},
                                         {2, {1, c->c}, grad, 0.5f, 1.5f},
                                         {4, {c->n, 1, c->h, c->w}, grad, 0.0f, 1.0f}};
                    char name[96];
                    snprintf(name, sizeof name, "sg_modconv %s%s%s%s", pbw_precision_name(precs[pi]),
                             c->transposed ? " transposed" : "", masked ? " masked" : "",
                             grad ? " +grad" : "");
                    pbw_cuda_set_precision(precs[pi]);
                    CHECK(arg.conv.cpu && arg.conv.gpu &&
                          parity_check(name, modconv_fn, &arg, masked ? 4 : 2, in,
                                       pi == 0 ? TOL_HALF : TOL_CONV) == 0);
                    pbw_cuda_set_precision(PBW_PREC_FP32);
                    pbw_arena_free(&ga);
                    pbw_arena_free(&ca);
                }
    /* fused = the two ops, bit for bit, on the GPU in bf16 (no gradients); with NHWC halves
     * (pbw_cuda_nhwc) the fused output stays so, activated there from the same convolution
     * output with the same arithmetic: the two ops' values rounded to bf16, bit for bit */
    pbw_ctx *ctx;
    pbw_arena ga;
    pbw_sg_conv_plan *pl = bf16_plan(&ctx, &ga, 64, 64, 1);
    CHECK(pl != NULL);
    if (pl) {
        float *hx = malloc(2 * 64 * 8 * 8 * sizeof(float)), *hs = malloc(2 * 64 * sizeof(float));
        float *hm = malloc(2 * 8 * 8 * sizeof(float));
        for (int j = 0; j < 2 * 64 * 64; j++) hx[j] = (float)((j * 29) % 97 - 48) / 48.0f;
        for (int j = 0; j < 2 * 64; j++) hs[j] = 0.5f + (float)(j % 13) / 13.0f;
        for (int j = 0; j < 2 * 8 * 8; j++) hm[j] = (float)(j % 5) / 4.0f;
        pbw_tensor *x = pbw_tensor_from_host(ctx, hx, 4, (int64_t[]){2, 64, 8, 8});
        pbw_tensor *s = pbw_tensor_from_host(ctx, hs, 2, (int64_t[]){2, 64});
        pbw_tensor *s0 = pbw_tensor_from_host(ctx, hs + 64, 2, (int64_t[]){1, 64});
        pbw_tensor *m = pbw_tensor_from_host(ctx, hm, 4, (int64_t[]){2, 1, 8, 8});
        pbw_tensor *a = pbw_sg_modconv(ctx, x, s, s0, m, pl);
        pbw_tensor *b = pbw_sg_conv(ctx, pbw_sg_modulate(ctx, x, s, s0, m), pl);
        CHECK(same_bits(ctx, a, b));
        free(hx), free(hs), free(hm);
    }
    bf16_plan_end(ctx, &ga);
#endif
}

/* ---------- sg_modconv_act: the activation applied as the output is copied back ---------- */

typedef struct {
    sgconv_arg conv;
    float slope;
} modconv_act_arg;

#ifdef PBW_HAVE_CUDA
/* in: x, s, d (per channel (N,O) or per pixel (N,O,H,W)), noise (N,1,H,W), bias (O) */
static pbw_tensor *modconv_act_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    modconv_act_arg *a = arg;
    const pbw_sg_conv_plan *pl = plan_for(ctx, &a->conv);
    return pl ? pbw_sg_modconv_act(ctx, in[0], in[1], NULL, NULL, pl, in[2], in[3], in[4], 0.7f,
                                   a->slope, sqrtf(2.0f))
              : NULL;
}
#endif

#ifdef PBW_HAVE_CUDA
/* pbw_sg_modconv_act = pbw_sg_bias_act of pbw_sg_modconv, bit for bit, on the GPU in bf16 (no
 * gradients), its output as fp32 and as NHWC halves, for five variants of d, noise, bias and
 * mask. */
static void modconv_act_bits(int N, int C, int H, int W, int O) {
    pbw_ctx *ctx;
    pbw_arena ga;
    pbw_sg_conv_plan *pl = bf16_plan(&ctx, &ga, O, C, 0);
    CHECK(pl != NULL);
    if (pl) {
        const int64_t nx = (int64_t)N * C * H * W, np = (int64_t)N * O * H * W;
        float *h = malloc((size_t)(nx + np + 4 * N * H * W + 4 * C) * sizeof(float));
        for (int64_t j = 0; j < nx + np + 4 * N * H * W + 4 * C; j++)
            h[j] = (float)((j * 29) % 97 - 48) / 48.0f;
        pbw_tensor *x = pbw_tensor_from_host(ctx, h, 4, (int64_t[]){N, C, H, W});
        pbw_tensor *dp = pbw_tensor_from_host(ctx, h + nx, 4, (int64_t[]){N, O, H, W});
        pbw_tensor *nz = pbw_tensor_from_host(ctx, h + nx + np, 4, (int64_t[]){N, 1, H, W});
        pbw_tensor *nz1 = pbw_tensor_from_host(ctx, h + nx + np, 4, (int64_t[]){1, 1, H, W});
        pbw_tensor *m = pbw_tensor_from_host(ctx, h + nx + np + N * H * W, 4,
                                             (int64_t[]){N, 1, H, W});
        pbw_tensor *s = pbw_affine(ctx, pbw_tensor_from_host(ctx, h, 2, (int64_t[]){N, C}), 0.5f, 1.0f);
        pbw_tensor *s0 = pbw_affine(ctx, pbw_tensor_from_host(ctx, h + C, 2, (int64_t[]){1, C}), 0.5f, 1.0f);
        pbw_tensor *dc = pbw_affine(ctx, pbw_tensor_from_host(ctx, h + 3 * C, 2, (int64_t[]){N, O}), 0.5f, 1.0f);
        pbw_tensor *bias = pbw_tensor_from_host(ctx, h + 2 * C, 1, (int64_t[]){O});
        pbw_tensor *mm = pbw_affine(ctx, pbw_abs(ctx, m), 1.0f, 0.0f); /* in [0, 1] */
        struct { pbw_tensor *d, *noise, *bias, *m; } v[5] = {
            {dc, nz, bias, NULL}, {dp, nz1, bias, NULL}, {NULL, NULL, NULL, NULL},
            {dc, nz, NULL, mm}, {dp, NULL, bias, mm}};
        const long before = pbw_cuda_sg_postact_calls();
        for (int nhwc = 0; nhwc < 2; nhwc++) {
            if (!nhwc) setenv("PBW_CUDA_NHWC", "0", 1);
            for (int k = 0; k < 5; k++) {
                pbw_tensor *s0k = v[k].m ? s0 : NULL;
                pbw_tensor *a = pbw_sg_modconv_act(ctx, x, s, s0k, v[k].m, pl, v[k].d,
                                                   v[k].noise, v[k].bias, 0.7f, 0.2f, sqrtf(2.0f));
                CHECK(a && a->half_nhwc == nhwc);
                pbw_tensor *b = pbw_sg_bias_act(ctx, pbw_sg_modconv(ctx, x, s, s0k, v[k].m, pl),
                                                v[k].d, v[k].noise, v[k].bias, 0.7f, 0.2f,
                                                sqrtf(2.0f));
                CHECK_MSG(same_bits_as(ctx, a, b, nhwc), "variant %d%s: %s", k,
                          nhwc ? " (NHWC halves)" : "", pbw_ctx_error(ctx));
            }
            unsetenv("PBW_CUDA_NHWC");
        }
        CHECK(pbw_cuda_sg_postact_calls() - before == 10); /* each variant fused */
        free(h);
    }
    bf16_plan_end(ctx, &ga);
}
#endif

/* Without gradients on staged convolutions (bf16) the GPU applies StyleGAN2's bias and
 * activation as the output is copied back; with them, or in fp32, it runs pbw_sg_modconv and
 * pbw_sg_bias_act. Against the CPU in fp32 (TOL_HALF in bf16, TOL_CONV in fp32), per-channel
 * and per-pixel demodulation. With gradients the slope is 1: a bf16 forward moves
 * pre-activations near 0 across the leaky ReLU's kink, where the gradient jumps from 0.2 to 1
 * (cuda_sg_bias_act covers the slope in fp32, where both sides take the same branch). The
 * copy back uses pbw_sg_bias_act's arithmetic, so on the GPU the fused op also equals the two
 * ops exactly (bit for bit in bf16, with and without the mask, noise and bias). */
PBW_TEST(cuda_sg_modconv_act) {
#ifdef PBW_HAVE_CUDA
    const int N = 2, C = 64, H = 16, W = 16, O = 32;
    const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP32};
    for (int pi = 0; pi < 2; pi++)
        for (int per_pixel = 0; per_pixel < 2; per_pixel++)
            for (int grad = 0; grad < 2; grad++) {
                pbw_arena ca, ga;
                modconv_act_arg arg = {{0}, grad ? 1.0f : 0.2f};
                const int planned = fixed_plans(&arg.conv, &ca, &ga, O, C, 3, 0) == 0;
                parity_input in[] = {{4, {N, C, H, W}, grad},
                                     {2, {N, C}, grad, 0.5f, 1.5f},
                                     {per_pixel ? 4 : 2, {N, O, H, W}, grad, 0.5f, 1.5f},
                                     {4, {N, 1, H, W}, grad},
                                     {1, {O}, grad}};
                char name[96];
                snprintf(name, sizeof name, "sg_modconv_act %s, d per %s%s",
                         pbw_precision_name(precs[pi]), per_pixel ? "pixel" : "channel",
                         grad ? " +grad" : "");
                pbw_cuda_set_precision(precs[pi]);
                const long before = pbw_cuda_sg_postact_calls();
                CHECK(planned && parity_check(name, modconv_act_fn, &arg, 5, in,
                                   pi == 0 ? TOL_HALF : TOL_CONV) == 0);
                /* fused exactly when staged (bf16) and without gradients */
                CHECK(pbw_cuda_sg_postact_calls() - before == (pi == 0 && !grad));
                pbw_cuda_set_precision(PBW_PREC_FP32);
                pbw_arena_free(&ga);
                pbw_arena_free(&ca);
            }
    /* the second shape's O / 8 = 5 channel groups do not divide a block: its NHWC outputs take
     * the map kernel that prepares every element, not the one that walks pixels */
    modconv_act_bits(N, C, H, W, O);
    modconv_act_bits(N, 24, H, W, 40);
#endif
}

/* ---------- sg_modconv(_act) with gradients: one op ---------- */

#ifdef PBW_HAVE_CUDA
/* parity_run on the GPU in precision prec with the generator's fused ops with gradients (fused
 * 1) or the ops apart (PBW_CUDA_MODCONV_GRAD=0). */
static int gpu_grads(const char *name, parity_fn f, void *arg, int nin, const parity_input *in,
                     pbw_precision prec, int fused, parity_outputs *o) {
    pbw_cuda_set_precision(prec);
    if (!fused) setenv("PBW_CUDA_MODCONV_GRAD", "0", 1);
    const int rc = parity_run(PBW_DEV_CUDA, f, arg, nin, in, name, o);
    unsetenv("PBW_CUDA_MODCONV_GRAD");
    pbw_cuda_set_precision(PBW_PREC_FP32);
    return rc;
}

/* gpu_grads fused and apart: the output and the first input's gradient bit for bit, the
 * others' within tol of their largest (tol 0: bit for bit too). Returns the failures. */
static int fused_vs_apart(const char *name, parity_fn f, void *arg, int nin,
                          const parity_input *in, pbw_precision prec, double tol) {
    parity_outputs a = {0}, b = {0};
    int fails = 0;
    if (gpu_grads(name, f, arg, nin, in, prec, 1, &a) ||
        gpu_grads(name, f, arg, nin, in, prec, 0, &b)) {
        fails++;
    } else {
        for (int k = 0; k <= nin; k++) { /* k 0: the output; k: input k - 1's gradient */
            const float *va = k ? a.g[k - 1] : a.y, *vb = k ? b.g[k - 1] : b.y;
            const int64_t na = k ? a.ng[k - 1] : a.ny, nb = k ? b.ng[k - 1] : b.ny;
            if (!va && !vb) continue;
            if (!va || !vb || na != nb) {
                fails++;
                continue;
            }
            double scale, d = gc_max_diff(va, vb, na, &scale);
            char what[32];
            if (k) snprintf(what, sizeof what, "in[%d]'s gradient", k - 1);
            printf("  %-44s fused vs apart: %s max abs diff %.2e (of %.2e)\n", name,
                   k ? what : "output", d, scale);
            if (k < 2 || tol == 0) fails += memcmp(va, vb, (size_t)na * sizeof(float)) != 0;
            else fails += !(d <= tol * scale);
        }
    }
    parity_outputs_free(&a);
    parity_outputs_free(&b);
    return fails;
}
#endif

/* With gradients that reach only x and the styles (the Adam step's: the mask, demodulation,
 * noise and bias are constants), a staged convolution's modulation, convolution and activation
 * run as one op (pbw_cuda_modconv_grad): its backward stages the activation's gradient and
 * copies back the modulation's. Against the CPU in fp32 (TOL_HALF; slope 1 as in
 * cuda_sg_modconv_act: bf16 moves pre-activations across the kink), plain and transposed,
 * with and without the activation and the mask. On the GPU in bf16 (slope 0.2), against the
 * ops apart (PBW_CUDA_MODCONV_GRAD=0): the output and x's gradient bit for bit (the same
 * roundings and the same convolution algorithm), the styles' gradients within 1e-5 of their
 * largest (their pixel sums, in double, are added in another order). */
PBW_TEST(cuda_sg_modconv_grad) {
#ifdef PBW_HAVE_CUDA
    static const sgconv_case cases[] = {{2, 64, 16, 16, 32, 3, 0}, {2, 64, 8, 8, 32, 3, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int act = 0; act < 2; act++)
            for (int masked = 0; masked < 2; masked++) {
                const sgconv_case *c = &cases[i];
                const int64_t oh = c->transposed ? 2 * (c->h - 1) + c->k : c->h;
                const int64_t ow = c->transposed ? 2 * (c->w - 1) + c->k : c->w;
                pbw_arena ca, ga;
                modconv_arg arg = {{0}, act, masked, 1.0f};
                const int planned = fixed_plans(&arg.conv, &ca, &ga, c->o, c->c, c->k,
                                                c->transposed) == 0;
                CHECK(planned);
                if (!planned) {
                    pbw_arena_free(&ga);
                    pbw_arena_free(&ca);
                    continue;
                }
                const parity_input in[7] = {{4, {c->n, c->c, c->h, c->w}, 1},
                                            {2, {c->n, c->c}, 1, 0.5f, 1.5f},
                                            {2, {1, c->c}, masked, 0.5f, 1.5f},
                                            {4, {c->n, 1, c->h, c->w}, 0, 0.0f, 1.0f},
                                            {2, {c->n, c->o}, 0, 0.5f, 1.5f},
                                            {4, {c->n, 1, oh, ow}, 0},
                                            {1, {c->o}, 0}};
                char name[96];
                snprintf(name, sizeof name, "sg_modconv%s +grad bf16%s%s", act ? "_act" : "",
                         c->transposed ? " transposed" : "", masked ? " masked" : "");
                pbw_cuda_set_precision(PBW_PREC_BF16);
                const long before = pbw_cuda_sg_modconv_backward_calls();
                CHECK(parity_check(name, modconv_fn, &arg, 7, in, TOL_HALF) == 0);
                CHECK_MSG(pbw_cuda_sg_modconv_backward_calls() - before == 1, "%s: not fused",
                          name);
                pbw_cuda_set_precision(PBW_PREC_FP32);
                arg.slope = 0.2f;
                CHECK_MSG(fused_vs_apart(name, modconv_fn, &arg, 7, in, PBW_PREC_BF16,
                                         1e-5) == 0, "%s: fused and apart differ", name);
                pbw_arena_free(&ga);
                pbw_arena_free(&ca);
            }
#endif
}

/* ---------- sg_blur ---------- */

static pbw_tensor *sgblur_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    return pbw_sg_blur(ctx, in[0], (const pbw_sg_fir *)arg);
}

PBW_TEST(cuda_sg_blur) {
    static const float t[4] = {1, 3, 3, 1};
    static const struct {
        int n, c, h, w, p0, p1;
    } cases[] = {
        {2, 3, 16, 16, 2, 1},   /* after the upsampling conv */
        {1, 64, 33, 33, 1, 1},  /* before the downsampling conv, odd side */
        {1, 5, 9, 7, 0, 0},     /* valid only */
        {2, 2, 6, 11, 3, 2},    /* wide pads */
        {1, 8, 67, 67, 2, 1},   /* output 66 x 66: the 32 x 64 tiles of the fast path */
    };
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_arena_init(&a, 1 << 12);
    pbw_tensor *k = pbw_tensor_new_in(&a, 2, (int64_t[]){4, 4}, &err);
    CHECK(k != NULL);
    if (!k) return;
    for (int i = 0; i < 16; i++) k->data[i] = t[i / 4] * t[i % 4] / 64.0f * 4.0f;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pbw_sg_fir f;
        CHECK(pbw_sg_fir_init(&f, k, cases[i].p0, cases[i].p1) == 0);
        parity_input in[] = {{4, {cases[i].n, cases[i].c, cases[i].h, cases[i].w}, 1}};
        char name[80];
        snprintf(name, sizeof name, "sg_blur (%d,%d,%d,%d) pad %d,%d", cases[i].n, cases[i].c,
                 cases[i].h, cases[i].w, cases[i].p0, cases[i].p1);
        CHECK(parity_check(name, sgblur_fn, &f, 1, in, TOL_EW) == 0);
    }
    pbw_arena_free(&a);
}

/* ---------- sg_blur_act: the activation applied as the blur writes ---------- */

#ifdef PBW_HAVE_CUDA
typedef struct {
    pbw_sg_fir f;
    float slope;
} blur_act_arg;

/* in: x, d (N,C), noise (N,1,OH,OW), bias (C) */
static pbw_tensor *sgblur_act_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const blur_act_arg *a = arg;
    return pbw_sg_blur_act(ctx, in[0], &a->f, in[1], in[2], in[3], 0.7f, a->slope, sqrtf(2.0f));
}
#endif

/* Without gradients the GPU's blur applies StyleGAN2's bias and activation as it writes (the
 * tiled K = 4 kernels and the generic one); with them it runs pbw_sg_blur and pbw_sg_bias_act.
 * Against the CPU (TOL_EW: the same fp32 sums; with gradients the slope is 1, as in
 * cuda_sg_modconv_act), and on the GPU fused = the two ops, bit for bit. */
PBW_TEST(cuda_sg_blur_act) {
#ifdef PBW_HAVE_CUDA
    static const float t4[4] = {1, 3, 3, 1}, t3[3] = {1, 2, 1};
    static const struct {
        int n, c, h, w, p0, p1, k;
    } cases[] = {
        {2, 8, 33, 33, 1, 1, 4},  /* StyleGAN2's after an upsampling conv: 32 x 32 tiles */
        {2, 4, 67, 67, 1, 1, 4},  /* 32 x 64 tiles */
        {2, 16, 9, 9, 1, 1, 4},   /* 16 x 16 tiles */
        {1, 5, 12, 10, 1, 1, 3},  /* the generic kernel */
    };
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_arena_init(&a, 1 << 12);
    pbw_tensor *k4 = pbw_tensor_new_in(&a, 2, (int64_t[]){4, 4}, &err);
    pbw_tensor *k3 = pbw_tensor_new_in(&a, 2, (int64_t[]){3, 3}, &err);
    CHECK(k4 && k3);
    if (!k4 || !k3) return;
    for (int i = 0; i < 16; i++) k4->data[i] = t4[i / 4] * t4[i % 4] / 64.0f * 4.0f;
    for (int i = 0; i < 9; i++) k3->data[i] = t3[i / 3] * t3[i % 3] / 16.0f;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
    CHECK(ctx != NULL);
    for (size_t i = 0; ctx && i < sizeof cases / sizeof cases[0]; i++) {
        const int n = cases[i].n, c = cases[i].c;
        const int oh = cases[i].h + cases[i].p0 + cases[i].p1 - cases[i].k + 1;
        const int ow = cases[i].w + cases[i].p0 + cases[i].p1 - cases[i].k + 1;
        blur_act_arg arg;
        CHECK(pbw_sg_fir_init(&arg.f, cases[i].k == 4 ? k4 : k3, cases[i].p0, cases[i].p1) == 0);
        /* grad 0: none; 1: every input's; 2: x's alone (the Adam step's) */
        for (int grad = 0; grad < 3; grad++) {
            const int all = grad == 1;
            arg.slope = grad ? 1.0f : 0.2f;
            parity_input in[] = {{4, {n, c, cases[i].h, cases[i].w}, grad != 0},
                                 {2, {n, c}, all, 0.5f, 1.5f},
                                 {4, {n, 1, oh, ow}, all},
                                 {1, {c}, all}};
            char name[80];
            snprintf(name, sizeof name, "sg_blur_act (%d,%d,%d,%d) K=%d%s", n, c, cases[i].h,
                     cases[i].w, cases[i].k, grad == 1 ? " +grad" : grad ? " +grad x" : "");
            const long before = pbw_cuda_sg_blur_postact_calls();
            const long bwd = pbw_cuda_sg_blur_act_backward_calls();
            CHECK(parity_check(name, sgblur_act_fn, &arg, 4, in, TOL_EW) == 0);
            /* fused without gradients and with x's alone; the backward in one kernel for K = 4 */
            CHECK(pbw_cuda_sg_blur_postact_calls() - before == !all);
            CHECK(pbw_cuda_sg_blur_act_backward_calls() - bwd == (grad == 2 && cases[i].k == 4));
            if (grad == 2) { /* against the two ops on the GPU, the leaky ReLU's slope kept */
                arg.slope = 0.2f;
                CHECK_MSG(fused_vs_apart(name, sgblur_act_fn, &arg, 4, in, PBW_PREC_FP32, 0) == 0,
                          "%s: fused and apart differ", name);
            }
        }
        /* fused = the two ops on the GPU, bit for bit */
        const int64_t nx = (int64_t)n * c * cases[i].h * cases[i].w, no = (int64_t)n * oh * ow;
        float *h = malloc((size_t)(nx + no + n * c + c) * sizeof(float));
        for (int64_t j = 0; j < nx + no + n * c + c; j++) h[j] = (float)((j * 29) % 97 - 48) / 48.0f;
        pbw_tensor *x = pbw_tensor_from_host(ctx, h, 4, (int64_t[]){n, c, cases[i].h, cases[i].w});
        pbw_tensor *nz = pbw_tensor_from_host(ctx, h + nx, 4, (int64_t[]){n, 1, oh, ow});
        pbw_tensor *d = pbw_tensor_from_host(ctx, h + nx + no, 2, (int64_t[]){n, c});
        pbw_tensor *b = pbw_tensor_from_host(ctx, h + nx + no + n * c, 1, (int64_t[]){c});
        const long before = pbw_cuda_sg_blur_postact_calls();
        pbw_tensor *fa = pbw_sg_blur_act(ctx, x, &arg.f, d, nz, b, 0.7f, 0.2f, sqrtf(2.0f));
        CHECK(pbw_cuda_sg_blur_postact_calls() - before == 1); /* fused */
        pbw_tensor *fb = pbw_sg_bias_act(ctx, pbw_sg_blur(ctx, x, &arg.f), d, nz, b, 0.7f, 0.2f,
                                         sqrtf(2.0f));
        CHECK_MSG(same_bits(ctx, fa, fb), "case %zu: %s", i, pbw_ctx_error(ctx));
        free(h);
        pbw_ctx_reset(ctx);
    }
    pbw_ctx_free(ctx);
    pbw_arena_free(&a);
#endif
}

/* ---------- NHWC halves between the generator's convolutions, blur and ToRGB
 * (pbw_cuda_nhwc) ----------
 * A block's chain as the generator runs it without gradients: an upsampling modulated
 * convolution, the blur with the activation, a modulated convolution with the activation, the
 * block's end (pbw_ctx_release keeping that output), then ToRGB's per-sample 1x1 product
 * (pbw_sg_pointwise, 6 outputs as masked ToRGB has), per sample and masked. With NHWC halves
 * on, every output but ToRGB's stays NHWC halves (checked before anything reads them: never
 * written to fp32, the release included, on its direct and its staged path) and the ops read
 * them so; off, the same ops on fp32
 * NCHW. Sizes: 64 -> 32 -> 48 channels (the blur's 32 fill half of its tiles' 64; ToRGB's 48
 * are 6 lanes of 8 channels), 8 -> 17 -> 16 pixels (2 x 2 tiles). The two differ by the
 * rounding of the blur's and the convolution's activated outputs to bf16 (NCHW keeps them in
 * fp32 until the next staging rounds them after the style scale): a few bf16 units (2^-8
 * relative) at most; the bound is 1e-2 of the largest value, as the other bf16 comparisons.
 * The outputs read back (written from their NHWC halves) against the fp32 ones: the blur's
 * 2^-8 relative (bf16's rounding; bound 4e-3), the others 1e-2. */
#ifdef PBW_HAVE_CUDA
typedef struct {
    float *y[3]; /* the blur's, the convolution's and ToRGB's outputs read back (malloc'd) */
    int64_t n[3];
} nhwc_chain_out;

static int read_out(pbw_ctx *ctx, pbw_tensor *t, float **h, int64_t *n) {
    *n = t ? t->numel : 0;
    *h = t ? malloc((size_t)t->numel * sizeof(float)) : NULL;
    return *h && pbw_tensor_read(ctx, t, *h) == 0 ? 0 : -1;
}

static int nhwc_chain(pbw_ctx *ctx, const pbw_sg_conv_plan *up, const pbw_sg_conv_plan *pl,
                      const pbw_sg_fir *f, const float *h, int masked, int fused,
                      nhwc_chain_out *o, int *kept) {
    const int N = 2, C = up->C, O = up->O, O2 = pl->O, H = 8, S = 16;
    int64_t off = 0;
    const pbw_ctx_mark mark = pbw_ctx_mark_get(ctx);
#define TAKE(nd, ...) pbw_tensor_from_host(ctx, h + (off += 4096) - 4096, nd, (int64_t[]){__VA_ARGS__})
    pbw_tensor *x = TAKE(4, N, C, H, H);
    pbw_tensor *s = pbw_affine(ctx, TAKE(2, N, C), 0.5f, 1.0f);
    pbw_tensor *s0 = masked ? pbw_affine(ctx, TAKE(2, 1, C), 0.5f, 1.0f) : NULL;
    pbw_tensor *m = masked ? pbw_abs(ctx, TAKE(4, N, 1, H, H)) : NULL;
    pbw_tensor *d = pbw_affine(ctx, TAKE(2, N, O), 0.5f, 1.0f);
    pbw_tensor *nz = TAKE(4, N, 1, S, S);
    pbw_tensor *b = TAKE(1, O);
    pbw_tensor *s2 = pbw_affine(ctx, TAKE(2, N, O), 0.5f, 1.0f);
    pbw_tensor *s02 = masked ? pbw_affine(ctx, TAKE(2, 1, O), 0.5f, 1.0f) : NULL;
    pbw_tensor *m2 = masked ? pbw_abs(ctx, TAKE(4, N, 1, S, S)) : NULL;
    pbw_tensor *d2 = pbw_affine(ctx, TAKE(2, N, O2), 0.5f, 1.0f);
    pbw_tensor *b2 = TAKE(1, O2);
    pbw_tensor *y0 = pbw_sg_modconv(ctx, x, s, s0, m, up);
    /* fused: the blur writes its output scaled by the next style, which then does not scale
     * it again (the generator's blocks) */
    pbw_tensor *y1 = fused ? pbw_sg_blur_act_mod(ctx, y0, f, d, nz, b, 0.7f, 0.2f, sqrtf(2.0f),
                                                 s2, s02, m2)
                           : pbw_sg_blur_act(ctx, y0, f, d, nz, b, 0.7f, 0.2f, sqrtf(2.0f));
    *kept = y0 && y1 && y0->half_nhwc && y1->half_nhwc;
    pbw_tensor *y2 = fused ? pbw_sg_modconv_act(ctx, y1, NULL, NULL, NULL, pl, d2, nz, b2, 0.7f,
                                                0.2f, sqrtf(2.0f))
                           : pbw_sg_modconv_act(ctx, y1, s2, s02, m2, pl, d2, nz, b2, 0.7f, 0.2f,
                                                sqrtf(2.0f));
    *kept = *kept && y1->half_nhwc && y2 && y2->half_nhwc; /* y1 staged as it was */
    if (read_out(ctx, y1, &o->y[0], &o->n[0])) return -1;
    pbw_tensor *keep[1] = {y2};
    if (pbw_ctx_release(ctx, mark, 1, keep)) return -1;
    y2 = keep[0];
    *kept = *kept && y2->half_nhwc;
    pbw_tensor *wr = TAKE(3, N, 6, O2);
#undef TAKE
    pbw_tensor *y3 = pbw_sg_pointwise(ctx, y2, wr);
    *kept = *kept && y2->half_nhwc;
    return read_out(ctx, y2, &o->y[1], &o->n[1]) || read_out(ctx, y3, &o->y[2], &o->n[2]) ? -1
                                                                                           : 0;
}

static double max_rel(const float *a, int64_t na, const float *b, int64_t nb) {
    if (!a || !b || na != nb) return INFINITY;
    double e = 0, mx = 0;
    for (int64_t i = 0; i < na; i++) mx = fmax(mx, fabs(b[i]));
    for (int64_t i = 0; i < na; i++) e = fmax(e, fabs(a[i] - b[i]) / mx);
    return mx > 0 ? e : INFINITY;
}
#endif

PBW_TEST(cuda_sg_nhwc_chain) {
#ifdef PBW_HAVE_CUDA
    static const float t4[4] = {1, 3, 3, 1};
    const int C = 64, O = 32, O2 = 48;
    pbw_err err = {{0}};
    pbw_cuda_set_precision(PBW_PREC_BF16);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
    /* a chunk of device memory the chains fit in, made before their marks (the release's
     * direct path; a fresh context below takes its staged path) */
    if (ctx) pbw_tensor_zeros(ctx, 1, (int64_t[]){4 << 20}), pbw_ctx_reset(ctx);
    pbw_arena ga;
    pbw_arena_init(&ga, 1 << 16);
    pbw_tensor *wu = pbw_tensor_new_in(&ga, 4, (int64_t[]){O, C, 3, 3}, &err);
    pbw_tensor *wp = pbw_tensor_new_in(&ga, 4, (int64_t[]){O2, O, 3, 3}, &err);
    pbw_tensor *k4 = pbw_tensor_new_in(&ga, 2, (int64_t[]){4, 4}, &err);
    CHECK(ctx && wu && wp && k4);
    if (!ctx || !wu || !wp || !k4) return;
    for (int64_t j = 0; j < wu->numel; j++) wu->data[j] = (float)((j * 37) % 101 - 50) / 1200.0f;
    for (int64_t j = 0; j < wp->numel; j++) wp->data[j] = (float)((j * 41) % 103 - 51) / 900.0f;
    for (int i = 0; i < 16; i++) k4->data[i] = t4[i / 4] * t4[i % 4] / 16.0f;
    pbw_sg_fir fir;
    CHECK(pbw_sg_fir_init(&fir, k4, 1, 1) == 0);
    pbw_sg_conv_plan *up = pbw_sg_conv_prepare(&ga, wu, 1, &err);
    pbw_sg_conv_plan *pl = pbw_sg_conv_prepare(&ga, wp, 0, &err);
    CHECK(up && pl && pbw_arena_to_device(&ga, ctx, &err) == 0);
    float *h = malloc(16 * 4096 * sizeof(float));
    for (int64_t j = 0; j < 16 * 4096; j++) h[j] = (float)((j * 29) % 97 - 48) / 48.0f;
    for (int masked = 0; up && pl && masked < 2; masked++) {
        nhwc_chain_out on = {{0}}, off = {{0}};
        int kept_on = 0, kept_off = 0;
        const long before = pbw_cuda_sg_blur_nhwc_calls(), acts = pbw_cuda_sg_postact_calls();
        CHECK_MSG(nhwc_chain(ctx, up, pl, &fir, h, masked, 0, &on, &kept_on) == 0, "%s",
                  pbw_ctx_error(ctx));
        const long calls = pbw_cuda_sg_blur_nhwc_calls() - before,
                   act_calls = pbw_cuda_sg_postact_calls() - acts;
        setenv("PBW_CUDA_NHWC", "0", 1);
        CHECK_MSG(nhwc_chain(ctx, up, pl, &fir, h, masked, 0, &off, &kept_off) == 0, "%s",
                  pbw_ctx_error(ctx));
        unsetenv("PBW_CUDA_NHWC");
        /* the blur scaling for the next convolution: the chain's convolution and ToRGB, bit for
         * bit (the scale applies to the rounded activation, as the staging did), on NHWC and
         * on fp32 values */
        for (int nhwc = 1; nhwc >= 0; nhwc--) {
            nhwc_chain_out fu = {{0}};
            int kept_fu = 0;
            if (!nhwc) setenv("PBW_CUDA_NHWC", "0", 1);
            CHECK_MSG(nhwc_chain(ctx, up, pl, &fir, h, masked, 1, &fu, &kept_fu) == 0, "%s",
                      pbw_ctx_error(ctx));
            unsetenv("PBW_CUDA_NHWC");
            const nhwc_chain_out *ref = nhwc ? &on : &off;
            for (int k = 1; k < 3; k++)
                CHECK_MSG(fu.n[k] == ref->n[k] && fu.y[k] && ref->y[k] &&
                              !memcmp(fu.y[k], ref->y[k], (size_t)fu.n[k] * sizeof(float)),
                          "%s, fused blur and scale, %s: output %d differs",
                          masked ? "masked" : "per sample", nhwc ? "NHWC" : "fp32", k);
            CHECK(kept_fu == nhwc);
            for (int k = 0; k < 3; k++) free(fu.y[k]);
        }
        /* memory that grows after the mark (a fresh context): the release stages the kept
         * output through scratch and keeps it NHWC all the same, so the ops after it take the
         * inputs, hence the memory, of a repeat in memory that holds (the first of a pass's
         * repeats is what a CUDA graph of the later ones is sized on) */
        pbw_ctx *fresh = pbw_ctx_new(PBW_DEV_CUDA, &err);
        nhwc_chain_out st = {{0}};
        int kept_st = 0;
        CHECK_MSG(fresh && nhwc_chain(fresh, up, pl, &fir, h, masked, 0, &st, &kept_st) == 0,
                  "%s", fresh ? pbw_ctx_error(fresh) : err.msg);
        CHECK(kept_st);
        for (int k = 0; k < 3; k++)
            CHECK_MSG(st.n[k] == on.n[k] && st.y[k] && on.y[k] &&
                          !memcmp(st.y[k], on.y[k], (size_t)st.n[k] * sizeof(float)),
                      "%s, staged release: output %d differs", masked ? "masked" : "per sample",
                      k);
        for (int k = 0; k < 3; k++) free(st.y[k]);
        pbw_ctx_free(fresh);
        double e[3];
        for (int k = 0; k < 3; k++) e[k] = max_rel(on.y[k], on.n[k], off.y[k], off.n[k]);
        printf("  %s: NHWC halves kept %d (off: %d), NHWC blurs %ld, activated convolutions "
               "%ld; rel diff of the blur's output %.2e (tol 4e-3), the convolution's %.2e, "
               "ToRGB's %.2e (tol 1e-2)\n",
               masked ? "masked" : "per sample", kept_on, kept_off, calls, act_calls, e[0], e[1],
               e[2]);
        CHECK(kept_on && !kept_off && calls == 1 && act_calls == 1);
        CHECK(e[0] <= 4e-3 && e[1] <= 1e-2 && e[2] <= 1e-2);
        for (int k = 0; k < 3; k++) free(on.y[k]), free(off.y[k]);
        pbw_ctx_reset(ctx);
    }
    free(h);
    pbw_ctx_free(ctx);
    pbw_arena_free(&ga);
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

#ifdef PBW_HAVE_CUDA
/* The ToRGB tests' setting: bf16_plan's context and (C,C,3,3) plan; host values h of a fixed
 * pattern: N C H W, then 2 N H W, then 2 N O C, then `extra` floats for the test's own; x, the
 * first N C H W through pbw_sg_modconv_act (the first N C as its style): NHWC halves, as a
 * block's convolution leaves them; ToRGB's masks from the next 2 N H W values, one a sample
 * (mN, (N,1,H,W)) and one for the batch (m1, (1,1,H,W)), both |h|; its per-sample weights from
 * the 2 N O C after them, with the original style's rows (w2, (N,2O,C)) and without (w1,
 * (N,O,C)); `rest`, the test's own values. 0, or -1 (checked); torgb_end frees it either way. */
typedef struct torgb_case {
    pbw_ctx *ctx;
    pbw_arena ga;
    pbw_sg_conv_plan *pl;
    float *h;
    const float *rest;
    pbw_tensor *x, *mN, *m1, *w2, *w1;
} torgb_case;

static int torgb_begin(torgb_case *t, int N, int C, int H, int W, int O, int64_t extra) {
    const int64_t nx = (int64_t)N * C * H * W, nm = 2 * (int64_t)N * H * W;
    const int64_t nw = 2 * (int64_t)N * O * C, nh = nx + nm + nw + extra;
    t->pl = bf16_plan(&t->ctx, &t->ga, C, C, 0);
    t->h = malloc((size_t)nh * sizeof(float));
    t->x = NULL;
    CHECK(t->pl && t->h);
    if (!t->pl || !t->h) return -1;
    for (int64_t j = 0; j < nh; j++) t->h[j] = (float)((j * 31) % 89 - 44) / 44.0f;
    pbw_ctx *ctx = t->ctx;
    const float *hm = t->h + nx, *hw = hm + nm;
    t->rest = hw + nw;
    pbw_tensor *x0 = pbw_tensor_from_host(ctx, t->h, 4, (int64_t[]){N, C, H, W});
    pbw_tensor *s = pbw_affine(ctx, pbw_tensor_from_host(ctx, t->h, 2, (int64_t[]){N, C}), 0.5f, 1.0f);
    t->x = pbw_sg_modconv_act(ctx, x0, s, NULL, NULL, t->pl, NULL, NULL, NULL, 0.0f, 0.2f,
                              sqrtf(2.0f));
    t->mN = pbw_abs(ctx, pbw_tensor_from_host(ctx, hm, 4, (int64_t[]){N, 1, H, W}));
    t->m1 = pbw_abs(ctx, pbw_tensor_from_host(ctx, hm, 4, (int64_t[]){1, 1, H, W}));
    t->w2 = pbw_tensor_from_host(ctx, hw, 3, (int64_t[]){N, 2 * O, C});
    t->w1 = pbw_tensor_from_host(ctx, hw, 3, (int64_t[]){N, O, C});
    const int ok = t->x && t->x->half_nhwc && t->mN && t->m1 && t->w2 && t->w1;
    CHECK_MSG(ok, "%s", pbw_ctx_error(ctx));
    return ok ? 0 : -1;
}

static void torgb_end(torgb_case *t) {
    free(t->h);
    bf16_plan_end(t->ctx, &t->ga);
}
#endif

/* ---------- ToRGB's blend and bias after the product (pbw_sg_pointwise_blend) ----------
 * On NHWC halves without gradients the kernel writes y0 + m (y1 - y0) + bias after the
 * products: bit for bit the ops it stands for (pbw_sg_pointwise, slices, sub, mul, add, add on
 * the same GPU), masked with one mask for the batch and one per sample, and unmasked, with and
 * without a bias. The CPU op against the same ops is in stylegan2_op_pointwise_blend. */
PBW_TEST(cuda_sg_pointwise_blend) {
#ifdef PBW_HAVE_CUDA
    const int N = 2, C = 64, H = 16, W = 16, O = 3;
    torgb_case t;
    if (torgb_begin(&t, N, C, H, W, O, O) == 0) {
        pbw_ctx *ctx = t.ctx;
        pbw_tensor *x = t.x;
        pbw_tensor *b = pbw_tensor_from_host(ctx, t.rest, 4, (int64_t[]){1, O, 1, 1});
        struct { pbw_tensor *w, *m, *b; } v[4] = {{t.w2, t.mN, b}, {t.w2, t.m1, NULL},
                                                   {t.w1, NULL, b}, {t.w2, t.m1, b}};
        for (int k = 0; x && k < 4; k++) {
            pbw_tensor *a = pbw_sg_pointwise_blend(ctx, x, v[k].w, v[k].m, v[k].b);
            pbw_tensor *y = pbw_sg_pointwise(ctx, x, v[k].w);
            if (v[k].m) {
                pbw_tensor *y1 = pbw_slice(ctx, y, 1, 0, O, 1), *y0 = pbw_slice(ctx, y, 1, O, 2 * O, 1);
                y = pbw_add(ctx, y0, pbw_mul(ctx, v[k].m, pbw_sub(ctx, y1, y0)));
            }
            if (v[k].b) y = pbw_add(ctx, y, v[k].b);
            CHECK_MSG(a && a->shape[1] == O && same_bits(ctx, a, y), "variant %d: %s", k,
                      pbw_ctx_error(ctx));
        }
    }
    torgb_end(&t);
#endif
}

/* ---------- A block's last convolution with its ToRGB (pbw_sg_conv_act_rgb) ----------
 * Without gradients on NHWC bf16 halves ToRGB's tensor-core kernel activates the convolution's
 * output as it reads it: the features and the image must be the two ops' (pbw_sg_modconv_act,
 * then pbw_sg_pointwise_blend) bit for bit, masked (one mask for the batch, one per sample) and
 * not, with and without noise and biases; the fused kernel's count says it ran. */
PBW_TEST(cuda_sg_conv_act_rgb) {
#ifdef PBW_HAVE_CUDA
    const int N = 2, C = 64, H = 16, W = 16, O = 3;
    torgb_case t;
    if (torgb_begin(&t, N, C, H, W, O, 2 * N * H * W + 3 * C + O) == 0) {
        pbw_ctx *ctx = t.ctx;
        pbw_tensor *x = t.x;
        const pbw_sg_conv_plan *pl = t.pl;
        const float *hn = t.rest, *hb = hn + 2 * N * H * W; /* noise; d, bias, ToRGB's bias */
        pbw_tensor *nz = pbw_tensor_from_host(ctx, hn, 4, (int64_t[]){N, 1, H, W});
        pbw_tensor *d = pbw_affine(ctx, pbw_abs(ctx, pbw_tensor_from_host(ctx, hb, 2, (int64_t[]){N, C})), 1.0f, 0.5f);
        pbw_tensor *b = pbw_tensor_from_host(ctx, hb + 2 * C, 1, (int64_t[]){C});
        pbw_tensor *rb = pbw_tensor_from_host(ctx, hb + 3 * C, 4, (int64_t[]){1, O, 1, 1});
        struct { pbw_tensor *w, *m, *rb, *noise, *bias; } v[4] = {
            {t.w2, t.mN, rb, nz, b}, {t.w2, t.m1, NULL, NULL, b}, {t.w1, NULL, rb, nz, NULL},
            {t.w1, NULL, NULL, NULL, NULL}};
        for (int k = 0; x && k < 4; k++) {
            const long fused0 = pbw_cuda_sg_pointwise_act_calls();
            pbw_tensor *rgb = NULL;
            pbw_tensor *a = pbw_sg_conv_act_rgb(ctx, x, pl, d, v[k].noise, v[k].bias, 0.7f, 0.2f,
                                                sqrtf(2.0f), v[k].w, v[k].m, v[k].rb, &rgb);
            CHECK_MSG(a && rgb && a->half_nhwc, "variant %d: %s", k, pbw_ctx_error(ctx));
            CHECK(pbw_cuda_sg_pointwise_act_calls() == fused0 + 1);
            pbw_tensor *e = pbw_sg_modconv_act(ctx, x, NULL, NULL, NULL, pl, d, v[k].noise,
                                               v[k].bias, 0.7f, 0.2f, sqrtf(2.0f));
            pbw_tensor *erg = pbw_sg_pointwise_blend(ctx, e, v[k].w, v[k].m, v[k].rb);
            CHECK_MSG(same_bits(ctx, a, e), "variant %d features: %s", k, pbw_ctx_error(ctx));
            CHECK_MSG(same_bits(ctx, rgb, erg), "variant %d image: %s", k, pbw_ctx_error(ctx));
        }
    }
    torgb_end(&t);
#endif
}

/* A batch slice of NHWC halves (the generator's activations without gradients, as a CMA
 * generation slices its batches from the blocks rendered once for the population): a view of
 * the rows' halves, held the same way, whose values read back are the rows' bit for bit. */
PBW_TEST(cuda_slice_nhwc_rows) {
#ifdef PBW_HAVE_CUDA
    const int N = 3, C = 64, H = 16, W = 16;
    const int64_t per = (int64_t)C * H * W, nx = N * per;
    pbw_ctx *ctx;
    pbw_arena ga;
    pbw_sg_conv_plan *pl = bf16_plan(&ctx, &ga, C, C, 0);
    CHECK(pl != NULL);
    if (pl) {
        float *h = malloc((size_t)nx * sizeof(float)), *xs = malloc((size_t)nx * sizeof(float));
        float *ys = malloc((size_t)(2 * per) * sizeof(float));
        for (int64_t j = 0; j < nx; j++) h[j] = (float)((j * 29) % 83 - 41) / 41.0f;
        pbw_tensor *x0 = pbw_tensor_from_host(ctx, h, 4, (int64_t[]){N, C, H, W});
        pbw_tensor *s = pbw_affine(ctx, pbw_tensor_from_host(ctx, h, 2, (int64_t[]){N, C}), 0.5f, 1.0f);
        pbw_tensor *x = pbw_sg_modconv_act(ctx, x0, s, NULL, NULL, pl, NULL, NULL, NULL, 0.0f, 0.2f,
                                           sqrtf(2.0f));
        CHECK(x && x->half_nhwc && x->half_only);
        pbw_tensor *y = x ? pbw_slice(ctx, x, 0, 1, 3, 1) : NULL;
        CHECK_MSG(y && y->half_nhwc && y->half_only && y->shape[0] == 2 &&
                      y->half == (const uint16_t *)x->half + per,
                  "%s", pbw_ctx_error(ctx));
        /* y first: reading x writes its fp32 values and drops its half copy */
        CHECK(y && pbw_tensor_read(ctx, y, ys) == 0 && pbw_tensor_read(ctx, x, xs) == 0 &&
              memcmp(ys, xs + per, (size_t)(2 * per) * sizeof(float)) == 0);
        free(h), free(xs), free(ys);
    }
    bf16_plan_end(ctx, &ga);
#endif
}

/* ---------- the blur on NHWC halves (pbw_cuda_sg_blur_act_nhwc) ----------
 * The kernel alone on bf16 values written on the host, against double sums of the same
 * (rounded) values with zero padding, then StyleGAN2's activation in double: 8 channels a thread
 * (C = 16, 24, 512) and 2 (C = 6), result heights that are and are not whole strips, pads 1 and
 * 2, with and without the activation (d per channel or per pixel, noise per sample or shared,
 * bias). The kernel sums in fp32 and rounds the result to bf16 once: the bound is 2^-8 of the
 * result (bf16 keeps 8 significant bits, so rounding to nearest moves a value by at most 2^-8
 * of itself) plus 1e-5 of the magnitudes summed (fp32 sums of 16 terms and the activation's 3
 * steps). */
#ifdef PBW_HAVE_CUDA
typedef struct { int n, c, h, w, oh, ow, p0, act, shared_noise, dpix; } blur_case;

static double blur_ref(const float *xf, const float *t, const blur_case *k, int n, int oy, int ox,
                       int c, double *mag) {
    double s = 0;
    *mag = 0;
    for (int jv = 0; jv < 4; jv++)
        for (int jh = 0; jh < 4; jh++) {
            const int sy = oy + jv - k->p0, sx = ox + jh - k->p0;
            if (sy < 0 || sy >= k->h || sx < 0 || sx >= k->w) continue;
            /* taps flipped: a true convolution (symmetric here all the same) */
            const double v = (double)t[3 - jv] * t[3 - jh] *
                             xf[(((int64_t)n * k->h + sy) * k->w + sx) * k->c + c];
            s += v, *mag += fabs(v);
        }
    return s;
}
#endif

PBW_TEST(cuda_sg_blur_nhwc) {
#ifdef PBW_HAVE_CUDA
    static const float t[4] = {0.125f, 0.375f, 0.375f, 0.125f};
    static const blur_case cases[] = {
        {2, 16, 17, 17, 16, 16, 1, 1, 0, 0}, {1, 6, 9, 7, 9, 7, 2, 0, 0, 0},
        {3, 24, 20, 20, 19, 19, 1, 1, 1, 0}, {1, 512, 9, 9, 8, 8, 1, 1, 0, 0},
        {1, 8, 40, 3, 39, 2, 1, 0, 0, 0},
        /* d per pixel (the masked model's mixed demodulation), 8 and 2 channels a thread */
        {2, 16, 17, 17, 16, 16, 1, 1, 0, 1}, {1, 6, 9, 7, 9, 7, 2, 1, 1, 1}};
    const float nw = 0.7f, slope = 0.2f, gain = sqrtf(2.0f);
    pbw_cuda_set_precision(PBW_PREC_BF16);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const blur_case *k = &cases[i];
        const int64_t nx = (int64_t)k->n * k->h * k->w * k->c,
                      P = (int64_t)k->oh * k->ow, ny = (int64_t)k->n * P * k->c;
        uint16_t *xh = malloc((size_t)nx * 2), *yh = malloc((size_t)ny * 2);
        const int64_t nd = (int64_t)k->n * k->c * (k->dpix ? P : 1); /* (N,O) or (N,O,P) */
        float *xf = malloc((size_t)nx * 4), *d = malloc((size_t)nd * 4);
        float *noise = malloc((size_t)k->n * P * 4), *bias = malloc((size_t)k->c * 4);
        for (int64_t j = 0; j < nx; j++) {
            xh[j] = pbw_f32_to_bf16((float)((j * 37 + (int64_t)i) % 127 - 63) / 32.0f);
            xf[j] = pbw_bf16_to_f32(xh[j]);
        }
        for (int64_t j = 0; j < nd; j++) d[j] = 0.5f + (float)(j % 11) / 10.0f;
        for (int64_t j = 0; j < k->n * P; j++) noise[j] = (float)((j * 13) % 23 - 11) / 7.0f;
        for (int j = 0; j < k->c; j++) bias[j] = (float)(j % 7 - 3) / 5.0f;
        void *dx = pbw_cuda_malloc((size_t)nx * 2), *dy = pbw_cuda_malloc((size_t)ny * 2);
        float *dd = pbw_cuda_malloc((size_t)nd * 4);
        float *dn = pbw_cuda_malloc((size_t)k->n * P * 4), *db = pbw_cuda_malloc((size_t)k->c * 4);
        CHECK(dx && dy && dd && dn && db && pbw_cuda_h2d(dx, xh, (size_t)nx * 2) == 0 &&
              pbw_cuda_h2d(dd, d, (size_t)nd * 4) == 0 &&
              pbw_cuda_h2d(dn, noise, (size_t)k->n * P * 4) == 0 &&
              pbw_cuda_h2d(db, bias, (size_t)k->c * 4) == 0);
        pbw_cuda_postact pa = {dd, dn, db,
                               {k->n, k->c, P, k->dpix ? 2 : 1, k->dpix ? 0 : k->c,
                                k->shared_noise ? 0 : P, nw, slope, gain}};
        CHECK(pbw_cuda_sg_blur_act_nhwc(dy, dx, k->n, k->c, k->h, k->w, k->oh, k->ow, t, t, 4,
                                        k->p0, k->act ? &pa : NULL, NULL) == 0);
        CHECK(pbw_cuda_d2h(yh, dy, (size_t)ny * 2) == 0);
        double worst = 0;
        for (int n = 0; n < k->n; n++)
            for (int oy = 0; oy < k->oh; oy++)
                for (int ox = 0; ox < k->ow; ox++)
                    for (int c = 0; c < k->c; c++) {
                        double mag, r = blur_ref(xf, t, k, n, oy, ox, c, &mag);
                        if (k->act) {
                            const int64_t p = (int64_t)oy * k->ow + ox;
                            const double nz = noise[(k->shared_noise ? 0 : n * P) + p];
                            const double dv = k->dpix ? d[((int64_t)n * k->c + c) * P + p]
                                                      : d[n * k->c + c];
                            r = r * dv + nw * nz + bias[c];
                            mag = mag * dv + fabs(nw * nz) + fabs(bias[c]);
                            r = gain * (r > 0 ? r : slope * r);
                            mag *= gain;
                        }
                        const double y = pbw_bf16_to_f32(yh[(((int64_t)n * k->oh + oy) * k->ow +
                                                             ox) * k->c + c]);
                        worst = fmax(worst, fabs(y - r) / (fabs(r) / 256.0 + 1e-5 * mag + 1e-30));
                    }
        printf("  blur (%d,%d,%d,%d) -> %dx%d pad %d%s: worst error %.3f of the bound\n", k->n,
               k->h, k->w, k->c, k->oh, k->ow, k->p0,
               k->act ? (k->dpix ? ", activated, d per pixel" : ", activated") : "", worst);
        CHECK(worst <= 1.0);
        pbw_cuda_free(dx), pbw_cuda_free(dy), pbw_cuda_free(dd), pbw_cuda_free(dn),
            pbw_cuda_free(db);
        free(xh), free(yh), free(xf), free(d), free(noise), free(bias);
    }
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

/* ---------- ToRGB's product on NHWC halves (pbw_cuda_sg_pointwise_nhwc) ----------
 * The kernel alone on bf16 values written on the host, against double sums of the same
 * (rounded) values: rows of 16-byte chunks below, across and above a batch of loads (C/8 = 1,
 * 6, 17, 64), 1 to 8 outputs (3, RGB, has a kernel of its own), pixel counts below, across and
 * above a block's. The kernel sums in fp32 in another order: the bound is 1e-5 of the sum of the
 * products' magnitudes (at most 512 fp32 additions of 2^-24 relative rounding each, 3e-5 in
 * the worst case, ~1e-6 typically). Shapes it does not take are refused (-1). Channel counts
 * that are multiples of 32 run on tensor cores (their weights as three bf16 terms, to fp32's
 * precision), under the same bound: 1 to 8 outputs, pixels within and across 16-pixel tiles;
 * each case runs on both kernels (PBW_CUDA_TORGB_MMA=0 the other), and the tensor cores' count
 * says which ran. */
PBW_TEST(cuda_sg_pointwise_nhwc) {
#ifdef PBW_HAVE_CUDA
    static const struct { int n, c, o; int64_t p; } cases[] = {
        {1, 8, 3, 37},  {2, 48, 6, 300}, {3, 136, 8, 1},    {2, 512, 3, 70},   {1, 16, 1, 1000},
        {2, 128, 6, 1000}, {1, 256, 8, 33}, {3, 64, 3, 4097}, {2, 32, 1, 15},
        /* a CMA generation's 16x16 ToRGB (a tile a warp) and a 128 px batch's (four a warp) */
        {50, 512, 3, 256}, {14, 128, 3, 16384}};
    pbw_cuda_set_precision(PBW_PREC_BF16);
    for (size_t k = 0; k < 2 * (sizeof cases / sizeof cases[0]); k++) {
        const size_t i = k / 2; /* each case with the tensor cores, then without */
        const int mma = k % 2 == 0;
        setenv("PBW_CUDA_TORGB_MMA", mma ? "1" : "0", 1);
        const long calls0 = pbw_cuda_sg_pointwise_mma_calls();
        const int N = cases[i].n, C = cases[i].c, O = cases[i].o;
        const int64_t P = cases[i].p, nx = (int64_t)N * P * C, nw = (int64_t)N * O * C,
                      ny = (int64_t)N * O * P;
        uint16_t *xh = malloc((size_t)nx * 2);
        float *xf = malloc((size_t)nx * 4), *w = malloc((size_t)nw * 4), *y = malloc((size_t)ny * 4);
        for (int64_t j = 0; j < nx; j++) { /* (N,P,C) */
            xh[j] = pbw_f32_to_bf16((float)((j * 31 + (int64_t)i) % 113 - 56) / 40.0f);
            xf[j] = pbw_bf16_to_f32(xh[j]);
        }
        for (int64_t j = 0; j < nw; j++) w[j] = (float)((j * 17) % 89 - 44) / 60.0f;
        void *dx = pbw_cuda_malloc((size_t)nx * 2 + 16);
        float *dw = pbw_cuda_malloc((size_t)nw * 4), *dy = pbw_cuda_malloc((size_t)ny * 4);
        CHECK(dx && dw && dy && pbw_cuda_h2d(dx, xh, (size_t)nx * 2) == 0 &&
              pbw_cuda_h2d(dw, w, (size_t)nw * 4) == 0);
        CHECK(pbw_cuda_sg_pointwise_nhwc(dy, dx, dw, N, C, P, O, NULL, 0, NULL) == 0);
        CHECK(pbw_cuda_d2h(y, dy, (size_t)ny * 4) == 0);
        double worst = 0;
        for (int n = 0; n < N; n++)
            for (int o = 0; o < O; o++)
                for (int64_t p = 0; p < P; p++) {
                    double r = 0, mag = 0;
                    for (int c = 0; c < C; c++) {
                        const double t = (double)w[((int64_t)n * O + o) * C + c] *
                                         xf[((int64_t)n * P + p) * C + c];
                        r += t, mag += fabs(t);
                    }
                    worst = fmax(worst, fabs(y[((int64_t)n * O + o) * P + p] - r) / mag);
                }
        const int ran_mma = pbw_cuda_sg_pointwise_mma_calls() > calls0;
        printf("  N %d C %d O %d P %lld%s: max error %.2e of the products' magnitude (tol 1e-5)\n",
               N, C, O, (long long)P, ran_mma ? " (tensor cores)" : "", worst);
        CHECK(worst <= 1e-5);
        CHECK(ran_mma == (mma && C % 32 == 0));
        /* refused: C not a multiple of 8, more than 8 outputs, a misaligned x */
        CHECK(pbw_cuda_sg_pointwise_nhwc(dy, dx, dw, N, C + 4, 1, O, NULL, 0, NULL) == -1);
        CHECK(pbw_cuda_sg_pointwise_nhwc(dy, dx, dw, 1, C, 1, 9, NULL, 0, NULL) == -1);
        CHECK(pbw_cuda_sg_pointwise_nhwc(dy, (char *)dx + 2, dw, 1, C, 1, O, NULL, 0, NULL) == -1);
        pbw_cuda_free(dx), pbw_cuda_free(dw), pbw_cuda_free(dy);
        free(xh), free(xf), free(w), free(y);
    }
    unsetenv("PBW_CUDA_TORGB_MMA");
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

/* ---------- CLIP's crops (pbw_clip_crops: bicubic crop + resize, clamp, normalize) ----------
 * Crops of every kind: the whole image, sides below R (upsampling), above R (downsampling),
 * equal to R (a plain copy), at the borders. Inputs stay in (-0.7, 0.7): with the bicubic
 * kernel's overshoot (< 15% of the range) no value reaches the clamp's corners, where a last-bit
 * difference could flip a pixel's clamp and its gradient. Tolerance 1e-5 (TOL_EW): the same
 * taps (pbw_cuda_resample.cuh, bit-equal to the CPU's) in the same order; the backward sums
 * each crop's share in another order than the CPU. The GPU's backward must also give the same
 * bits from run to run: 32 overlapping crops of an Adam step, twice. */
typedef struct crops_arg {
    const pbw_crop *crops;
    int n, R, P; /* P > 0: cut into patches (pbw_clip_crops_patches) */
} crops_arg;

static pbw_tensor *crops_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const crops_arg *c = arg;
    return c->P ? pbw_clip_crops_patches(ctx, in[0], c->crops, c->n, c->R, c->P)
                : pbw_clip_crops(ctx, in[0], c->crops, c->n, c->R);
}

PBW_TEST(cuda_clip_crops) {
    static const pbw_crop small[] = {{0, 0, 64}, {3, 5, 20}, {10, 0, 32}, {0, 17, 47},
                                     {40, 40, 24}, {1, 1, 61}, {0, 0, 33}};
    static const pbw_crop big[] = {{0, 0, 256}, {16, 40, 200}, {0, 0, 224}, {100, 3, 150},
                                   {30, 31, 225}};
    const crops_arg a = {small, 7, 32, 0}, b = {big, 5, 224, 0};
    parity_input ina[] = {{4, {2, 3, 64, 64}, 1, -0.7f, 0.7f}};
    parity_input inb[] = {{4, {1, 3, 256, 256}, 1, -0.7f, 0.7f}};
    CHECK(parity_check("clip_crops 2x(3,64,64) -> 7 crops of 32", crops_fn, (void *)&a, 1, ina,
                       TOL_EW) == 0);
    CHECK(parity_check("clip_crops (3,256,256) -> 5 crops of 224", crops_fn, (void *)&b, 1, inb,
                       TOL_EW) == 0);
    /* cut into patches: the GPU writes (and reads back the gradient in) the patch layout in the
     * crops kernels, the CPU cuts them with pbw_clip_patches' permutes */
    const crops_arg ap = {small, 7, 32, 8}, bp = {big, 5, 224, 32};
    CHECK(parity_check("clip_crops_patches 2x(3,64,64) -> 7 crops of 32, patches of 8", crops_fn,
                       (void *)&ap, 1, ina, TOL_EW) == 0);
    CHECK(parity_check("clip_crops_patches (3,256,256) -> 5 crops of 224, patches of 32",
                       crops_fn, (void *)&bp, 1, inb, TOL_EW) == 0);
    /* from 1024 px the backward's slices of 24 crops would pass its scratch's bound, so it takes
     * the crops in two passes (21, then 3) */
    static const pbw_crop huge[] = {{0, 0, 1024}, {16, 40, 900}, {0, 0, 224}, {100, 3, 150},
                                    {30, 31, 225}, {800, 700, 224}, {512, 0, 512}, {1, 2, 1000},
                                    {7, 9, 300},   {600, 600, 400}, {0, 800, 224}, {3, 3, 111},
                                    {44, 55, 666}, {200, 100, 800}, {900, 900, 124}, {5, 5, 5},
                                    {10, 20, 700}, {300, 300, 300}, {0, 0, 1023}, {1, 1, 1023},
                                    {333, 444, 555}, {50, 60, 70}, {64, 64, 896}, {2, 0, 448}};
    const crops_arg hp = {huge, 24, 224, 32};
    parity_input inh[] = {{4, {1, 3, 1024, 1024}, 1, -0.7f, 0.7f}};
    CHECK(parity_check("clip_crops_patches (3,1024,1024) -> 24 crops of 224, patches of 32",
                       crops_fn, (void *)&hp, 1, inh, TOL_EW) == 0);
#ifdef PBW_HAVE_CUDA
    /* in bf16 the patches are written as bf16 halves alone, with or without a gradient: the
     * fp32 values (of the same kernel, writing fp32 under PBW_CUDA_HALF_ACTS_GRAD=0 where a
     * gradient is wanted) rounded to bf16, bit for bit */
    pbw_err err = {{0}};
    pbw_cuda_set_precision(PBW_PREC_BF16);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
    CHECK(ctx != NULL);
    if (ctx) {
        const int64_t nx = 2 * 3 * 64 * 64;
        float *h = malloc((size_t)nx * sizeof(float));
        for (int64_t j = 0; j < nx; j++) h[j] = (float)((j * 29) % 97 - 48) / 70.0f;
        pbw_tensor *x = pbw_tensor_from_host(ctx, h, 4, (int64_t[]){2, 3, 64, 64});
        pbw_tensor *half = pbw_clip_crops_patches(ctx, x, small, 7, 32, 8);
        CHECK(half && half->half_only && half->half);
        pbw_tensor *xg = pbw_tensor_from_host(ctx, h, 4, (int64_t[]){2, 3, 64, 64});
        xg->requires_grad = 1;
        pbw_tensor *hg = pbw_clip_crops_patches(ctx, xg, small, 7, 32, 8);
        CHECK(hg && hg->half_only && hg->half);
        char *saved;
        pbw_test_env_set("PBW_CUDA_HALF_ACTS_GRAD", "0", &saved);
        pbw_tensor *full = pbw_clip_crops_patches(ctx, xg, small, 7, 32, 8);
        pbw_test_env_restore("PBW_CUDA_HALF_ACTS_GRAD", saved);
        CHECK(full && !full->half);
        CHECK_MSG(same_bits_as(ctx, half, full, 1), "%s", pbw_ctx_error(ctx));
        CHECK_MSG(same_bits_as(ctx, hg, full, 1), "%s", pbw_ctx_error(ctx));
        free(h);
        pbw_ctx_free(ctx);
    }
    pbw_cuda_set_precision(PBW_PREC_FP32);
    /* 32 overlapping crops of 224 from 256 px (every side from 112 to 256, at the borders too),
     * into patches of 32 as CLIP reads them: the image's gradient twice, the same bits */
    pbw_crop many[32];
    for (int k = 0; k < 32; k++) {
        const int sd = 112 + (k * 37) % 145, room = 256 - sd;
        many[k] = (pbw_crop){(k * 53) % (room + 1), (k * 29) % (room + 1), sd};
    }
    float *g[2];
    const int64_t ng = 3 * 256 * 256;
    for (int run = 0; run < 2; run++) {
        g[run] = calloc((size_t)ng, sizeof(float));
        ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
        float *h = malloc((size_t)ng * sizeof(float));
        for (int64_t j = 0; j < ng; j++) h[j] = (float)((j * 31) % 89 - 44) / 70.0f;
        pbw_tensor *x = ctx ? pbw_tensor_from_host(ctx, h, 4, (int64_t[]){1, 3, 256, 256}) : NULL;
        if (x) x->requires_grad = 1;
        pbw_tensor *y = x ? pbw_clip_crops_patches(ctx, x, many, 32, 224, 32) : NULL;
        float *seed = malloc((size_t)(32 * 3 * 224 * 224) * sizeof(float));
        for (int64_t j = 0; j < 32 * 3 * 224 * 224; j++) seed[j] = (float)((j * 7) % 13 - 6) / 6.0f;
        CHECK_MSG(y && pbw_backward(ctx, y, seed, &err) == 0 &&
                      pbw_cuda_d2h(g[run], x->grad, (size_t)ng * sizeof(float)) == 0,
                  "%s %s", ctx ? pbw_ctx_error(ctx) : "", err.msg);
        free(seed), free(h);
        pbw_ctx_free(ctx);
    }
    double mx = 0;
    for (int64_t j = 0; j < ng; j++) mx = fmax(mx, fabs(g[0][j]));
    printf("  32 crops of 224 from 256 px, backward twice: %s (largest |gx| %.3g)\n",
           memcmp(g[0], g[1], (size_t)ng * sizeof(float)) ? "different bits" : "same bits", mx);
    CHECK(mx > 0 && !memcmp(g[0], g[1], (size_t)ng * sizeof(float)));
    free(g[0]), free(g[1]);
#endif
}

/* ---------- cuDNN algorithm choices kept on disk ----------
 * A convolution's forward and both backward directions measured in a first "process" write
 * the cache file; after pbw_cuda_conv_forget (what a new process starts from) the same
 * convolutions take every choice from the file, measure nothing, and give the same bytes (the
 * same algorithms on the same data). Under fp32 (direct NCHW, measured as asked) and bf16
 * (staged NHWC); fp32 by default takes cuDNN's heuristics, reads no file, and repeats. */
#ifdef PBW_HAVE_CUDA
static int conv_once(pbw_precision prec, float *out, float *gx, size_t n_out, size_t n_x) {
    pbw_err err = {{0}};
    pbw_cuda_set_precision(prec);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
    if (!ctx) return -1;
    static float xh[2 * 16 * 20 * 20], wh[32 * 16 * 3 * 3];
    pbw_rng rng;
    pbw_rng_seed(&rng, 5);
    for (size_t i = 0; i < sizeof xh / sizeof *xh; i++) xh[i] = (float)pbw_rng_uniform(&rng) - 0.5f;
    for (size_t i = 0; i < sizeof wh / sizeof *wh; i++) wh[i] = (float)pbw_rng_uniform(&rng) - 0.5f;
    pbw_tensor *x = pbw_tensor_from_host(ctx, xh, 4, (int64_t[]){2, 16, 20, 20});
    pbw_tensor *w = pbw_tensor_from_host(ctx, wh, 4, (int64_t[]){32, 16, 3, 3});
    x->requires_grad = w->requires_grad = 1;
    pbw_conv_params cp = {0};
    cp.pad_h = cp.pad_w = 1;
    pbw_tensor *y = pbw_conv2d(ctx, x, w, NULL, cp);
    int rc = !y || pbw_backward(ctx, pbw_square(ctx, y), NULL, &err) ||
             pbw_tensor_read(ctx, y, out) || pbw_cuda_d2h(gx, x->grad, n_x * sizeof *gx);
    (void)n_out;
    pbw_ctx_free(ctx);
    pbw_cuda_set_precision(PBW_PREC_FP32);
    return rc ? -1 : 0;
}

#endif

/* A backend plan's choice read back by a new "process": the first runs with
 * PBW_CUDNN_BACKEND=1 (its forward and backward-data configs written as measured picks are),
 * the second as by default, which takes both from the file (the plans made from the same
 * engine configs, nothing measured) and gives the same bytes. */
PBW_TEST(cuda_conv_backend_choice_cache) {
#ifdef PBW_HAVE_CUDA
    char dir[] = "/tmp/pbw_backend_choice_XXXXXX";
    char *saved_dir, *saved;
    CHECK(pbw_test_cache_dir_begin(dir, &saved_dir) == 0);
    pbw_test_env_set("PBW_CUDNN_BACKEND", "1", &saved);
    static float y1[2 * 32 * 400], y2[2 * 32 * 400], g1[2 * 16 * 400], g2[2 * 16 * 400];
    pbw_cuda_conv_forget();
    const long calls0 = pbw_cuda_conv_backend_calls();
    CHECK(conv_once(PBW_PREC_BF16, y1, g1, 2 * 32 * 400, 2 * 16 * 400) == 0);
    const long first = pbw_cuda_conv_forget(), calls1 = pbw_cuda_conv_backend_calls();
    unsetenv("PBW_CUDNN_BACKEND");
    CHECK(conv_once(PBW_PREC_BF16, y2, g2, 2 * 32 * 400, 2 * 16 * 400) == 0);
    const long second = pbw_cuda_conv_forget(), calls2 = pbw_cuda_conv_backend_calls();
    printf("  backend plans run %ld then %ld; choices from the file %ld then %ld\n",
           calls1 - calls0, calls2 - calls1, first, second);
    CHECK(calls1 - calls0 >= 2 && calls2 - calls1 >= 2);
    CHECK(first == 0 && second == 2); /* forward and backward-data (backward-filter measured) */
    CHECK(!memcmp(y1, y2, sizeof y1) && !memcmp(g1, g2, sizeof g1));
    pbw_test_env_restore("PBW_CUDNN_BACKEND", saved);
    CHECK(pbw_test_cache_dir_end(dir, saved_dir) == 0);
#endif
}

PBW_TEST(cuda_conv_algo_cache) {
#ifdef PBW_HAVE_CUDA
    char dir[] = "/tmp/pbw_cudnn_cache_XXXXXX";
    char *saved_dir;
    CHECK(pbw_test_cache_dir_begin(dir, &saved_dir) == 0);
    static float y1[2 * 32 * 400], y2[2 * 32 * 400], g1[2 * 16 * 400], g2[2 * 16 * 400];
    /* fp32 measured (PBW_CUDNN_HEURISTIC=0), bf16, then fp32 as it runs by default: chosen by
     * the heuristics, nothing read from the file, and the same bytes all the same */
    const pbw_precision precs[3] = {PBW_PREC_FP32, PBW_PREC_BF16, PBW_PREC_FP32};
    pbw_cuda_conv_forget();
    for (int k = 0; k < 3; k++) {
        if (k == 0) setenv("PBW_CUDNN_HEURISTIC", "0", 1);
        CHECK(conv_once(precs[k], y1, g1, 2 * 32 * 400, 2 * 16 * 400) == 0);
        long first = pbw_cuda_conv_forget();
        CHECK(conv_once(precs[k], y2, g2, 2 * 32 * 400, 2 * 16 * 400) == 0);
        long second = pbw_cuda_conv_forget();
        unsetenv("PBW_CUDNN_HEURISTIC");
        printf("  %s%s: choices from the file: %ld in the first process, %ld in the second\n",
               pbw_precision_name(precs[k]), k == 0 ? " (measured)" : "", first, second);
        /* forward, backward-data, backward-filter */
        CHECK(first == 0 && second == (k < 2 ? 3 : 0));
        CHECK(!memcmp(y1, y2, sizeof y1) && !memcmp(g1, g2, sizeof g1));
    }
    CHECK(pbw_test_cache_dir_end(dir, saved_dir) == 0);
#endif
}
