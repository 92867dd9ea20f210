/* test_resample.c: pbw_upfirdn2d, pbw_resize and pbw_gaussian_blur against direct definitions
 * written here, against PyTorch (tests/fixtures/ops from tools/make_op_fixtures.py), and their
 * backward against central finite differences.
 *
 * Tolerances:
 *  - resize vs PyTorch: nearest must be exact (it copies). Bilinear and bicubic: 2e-6 absolute
 *    on values in [-0.5, 0.5] (bicubic overshoots a little). We build the same float index and
 *    weight tables as PyTorch 1.13 (bit for bit, see resize_axis) and sum in the same order,
 *    but PyTorch's vectorized AVX2 loops fuse some multiply-adds of the final sum where we
 *    round each step, so the last bits differ: measured max 6.9e-7 (bicubic 7x9 -> 224),
 *    <= 1.2e-7 elsewhere. A wrong tap or weight is off by >= 1e-3; rounding the source
 *    coordinate to float before taking its fraction (an easy mistake) is off by ~1e-5.
 *  - upfirdn2d and blur vs the double-precision definitions: 1e-5 + 1e-5 |ref| (sums of <= 16
 *    or <= 49 float32 products of unit-scale values). vs PyTorch (randn inputs): 2e-5 + 1e-5 |ref|.
 *  - backward: gc_check defaults (atol 2e-3, rtol 1e-2, eps 1e-2): all three ops are linear in
 *    x, so central differences are exact up to float32 rounding of the loss.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "formats/pbw_npy.h"
#include "gradcheck.h"
#include "pbw_test.h"

/* The input generator shared with tools/make_op_fixtures.py (exact in float32 on both sides). */
static void ramp(float *x, int64_t n, uint32_t seed) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = (uint32_t)i * 2654435761u + seed * 40503u;
        x[i] = (float)((double)k / 4294967296.0 - 0.5);
    }
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
    return a.data;
}

/* ---------- resize ---------- */

typedef struct resize_case {
    const char *name;
    int64_t shape[4];
    uint32_t seed;
    int oh, ow;
} resize_case;

/* Must match RESIZE in tools/make_op_fixtures.py. */
static const resize_case RESIZE_CASES[] = {
    {"up7x9", {1, 1, 7, 9}, 1, 224, 224},
    {"down224", {1, 1, 224, 224}, 2, 13, 17},
    {"crop256", {1, 1, 256, 256}, 3, 224, 224},
    {"mixed", {2, 3, 5, 6}, 4, 10, 7},
    {"twice", {1, 2, 5, 6}, 5, 10, 12},
    {"same", {1, 2, 5, 6}, 6, 5, 6},
};
static const char *MODE_NAMES[] = {"nearest", "bilinear", "bicubic"};

PBW_TEST(resize_torch) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    for (int i = 0; i < (int)(sizeof RESIZE_CASES / sizeof RESIZE_CASES[0]); i++) {
        const resize_case *c = &RESIZE_CASES[i];
        pbw_tensor *x = pbw_tensor_new(ctx, 4, c->shape);
        ramp(x->data, x->numel, c->seed);
        if (!strcmp(c->name, "crop256")) { /* rows 17.., cols 40.., side 204 */
            pbw_tensor *cr = pbw_tensor_new(ctx, 4, (int64_t[]){1, 1, 204, 204});
            for (int y = 0; y < 204; y++)
                memcpy(cr->data + y * 204, x->data + (17 + y) * 256 + 40, 204 * sizeof(float));
            x = cr;
        }
        for (int m = 0; m < 3; m++) {
            char nm[64];
            snprintf(nm, sizeof nm, "resize_%s_%s", c->name, MODE_NAMES[m]);
            pbw_tensor *y = pbw_resize(ctx, x, c->oh, c->ow, (pbw_resize_mode)m);
            CHECK_MSG(y != NULL, "%s: %s", nm, pbw_ctx_error(ctx));
            if (!y) continue;
            CHECK(y->shape[0] == x->shape[0] && y->shape[1] == x->shape[1] &&
                  y->shape[2] == c->oh && y->shape[3] == c->ow);
            float *ref = load_fixture(nm, y->numel);
            CHECK(ref != NULL);
            if (!ref) continue;
            double atol = m == PBW_RESIZE_NEAREST ? 0.0 : 2e-6;
            CHECK_MSG(gc_compare(nm, y->data, ref, y->numel, atol, 0.0) == 0, "%s", nm);
            free(ref);
        }
        pbw_ctx_reset(ctx);
    }
    pbw_ctx_free(ctx);
}

typedef struct resize_args {
    int oh, ow, mode;
} resize_args;

static pbw_tensor *resize_fn(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    const resize_args *a = user;
    return pbw_resize(ctx, in[0], a->oh, a->ow, (pbw_resize_mode)a->mode);
}

PBW_TEST(resize_backward) {
    static const struct {
        int64_t shape[4];
        int oh, ow;
    } cases[] = {
        {{2, 3, 5, 6}, 10, 7},  /* up in y, slightly up in x */
        {{1, 2, 9, 11}, 4, 5},  /* down, non-integer ratios */
        {{1, 1, 4, 4}, 4, 4},   /* same size */
        {{1, 1, 3, 4}, 8, 9},   /* up from a tiny map: bicubic clamps at both borders */
        {{1, 1, 2, 3}, 4, 6},   /* exactly twice */
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        for (int m = 0; m < 3; m++) {
            gc_input in = {4, {0}, NULL, 1};
            memcpy(in.shape, cases[i].shape, sizeof cases[i].shape);
            int64_t n = in.shape[0] * in.shape[1] * in.shape[2] * in.shape[3];
            in.data = gc_rand(n, 5 + i, -1, 1);
            resize_args a = {cases[i].oh, cases[i].ow, m};
            CHECK_MSG(gc_check(MODE_NAMES[m], resize_fn, &a, 1, &in, (gc_opts){0}) == 0,
                      "case %d mode %s", i, MODE_NAMES[m]);
            free(in.data);
        }
}

PBW_TEST(resize_errors) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_zeros(ctx, 3, (int64_t[]){1, 4, 4});
    CHECK(pbw_resize(ctx, x, 8, 8, PBW_RESIZE_BILINEAR) == NULL);
    CHECK(strstr(pbw_ctx_error(ctx), "resize") && strstr(pbw_ctx_error(ctx), "(1,4,4)"));
    pbw_ctx_reset(ctx);
    x = pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 1, 4, 4});
    CHECK(pbw_resize(ctx, x, 0, 8, PBW_RESIZE_BILINEAR) == NULL);
    pbw_ctx_reset(ctx);
    CHECK(pbw_resize(ctx, x, 8, 8, (pbw_resize_mode)7) == NULL);
    pbw_ctx_free(ctx);
}

/* ---------- upfirdn2d ---------- */

typedef struct upfirdn_case {
    int64_t shape[4];
    int up, down, px0, px1, py0, py1;
    float kscale;
} upfirdn_case;

/* The [1,3,3,1] outer product, normalized, as StyleGAN2's make_kernel builds it. */
static void stylegan_kernel(float *k, float scale) {
    const float k1[4] = {1, 3, 3, 1};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) k[i * 4 + j] = k1[i] * k1[j] / 64.0f * scale;
}

/* The definition: insert up-1 zeros after every sample, pad (negative crops), convolve (flip
 * the kernel), keep every down-th sample. Built literally, in double. */
static void ref_upfirdn(float *out, const float *x, const float *k, int KH, int KW,
                        const upfirdn_case *c, int OH, int OW) {
    int64_t planes = c->shape[0] * c->shape[1];
    int H = (int)c->shape[2], W = (int)c->shape[3];
    int UH = H * c->up + c->py0 + c->py1, UW = W * c->up + c->px0 + c->px1;
    double *u = malloc((size_t)UH * UW * sizeof(double));
    for (int64_t p = 0; p < planes; p++) {
        for (int i = 0; i < UH * UW; i++) u[i] = 0;
        for (int iy = 0; iy < H; iy++)
            for (int ix = 0; ix < W; ix++) {
                int uy = iy * c->up + c->py0, ux = ix * c->up + c->px0;
                if (uy >= 0 && uy < UH && ux >= 0 && ux < UW)
                    u[uy * UW + ux] = x[(p * H + iy) * W + ix];
            }
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                double s = 0;
                for (int a = 0; a < KH; a++)
                    for (int b = 0; b < KW; b++)
                        s += u[(oy * c->down + a) * UW + ox * c->down + b] *
                             k[(KH - 1 - a) * KW + (KW - 1 - b)];
                out[(p * OH + oy) * OW + ox] = (float)s;
            }
    }
    free(u);
}

/* upfirdn1..4 match UPFIRDN in tools/make_op_fixtures.py; the rest are extra direct checks. */
static const upfirdn_case UPFIRDN_CASES[] = {
    {{1, 2, 6, 5}, 2, 1, 2, 1, 2, 1, 4.0f},   /* StyleGAN2 Upsample */
    {{2, 1, 8, 9}, 1, 2, 1, 1, 1, 1, 1.0f},   /* Downsample */
    {{1, 2, 9, 9}, 1, 1, 1, 1, 1, 1, 4.0f},   /* Blur after the transposed conv */
    {{1, 1, 7, 8}, 2, 3, -1, 2, 3, -2, 1.0f}, /* crop + up + down */
    {{2, 3, 5, 4}, 3, 1, 0, 0, 0, 0, 1.0f},   /* up 3, no pad */
    {{1, 1, 16, 16}, 1, 4, 2, 2, 2, 2, 1.0f}, /* down 4 */
    {{1, 2, 6, 6}, 2, 2, -2, -2, 1, 0, 2.0f}, /* up and down by 2, crop in x */
};

static int check_upfirdn(const upfirdn_case *c, const char *fixture) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_new(ctx, 4, c->shape);
    pbw_tensor *k = pbw_tensor_new(ctx, 2, (int64_t[]){4, 4});
    stylegan_kernel(k->data, c->kscale);
    float *fx = NULL, *fy = NULL;
    int bad = 0;
    if (fixture) {
        char nm[64];
        snprintf(nm, sizeof nm, "%s_x", fixture);
        fx = load_fixture(nm, x->numel);
        snprintf(nm, sizeof nm, "%s_y", fixture);
        fy = load_fixture(nm, -1);
        if (!fx || !fy) bad = 1;
        else memcpy(x->data, fx, (size_t)x->numel * sizeof(float));
    } else {
        gc_fill(x->data, x->numel, 9, -1, 1);
    }
    pbw_tensor *y = bad ? NULL : pbw_upfirdn2d(ctx, x, k, c->up, c->down, c->px0, c->px1, c->py0, c->py1);
    if (!bad && !y) {
        fprintf(stderr, "  upfirdn2d: %s\n", pbw_ctx_error(ctx));
        bad = 1;
    }
    if (!bad) {
        int OH = (int)((c->shape[2] * c->up + c->py0 + c->py1 - 4) / c->down + 1);
        int OW = (int)((c->shape[3] * c->up + c->px0 + c->px1 - 4) / c->down + 1);
        if (y->shape[2] != OH || y->shape[3] != OW) {
            fprintf(stderr, "  upfirdn2d: output %lldx%lld, want %dx%d\n", (long long)y->shape[2],
                    (long long)y->shape[3], OH, OW);
            bad = 1;
        } else {
            float *ref = malloc((size_t)y->numel * sizeof(float));
            ref_upfirdn(ref, x->data, k->data, 4, 4, c, OH, OW);
            bad = gc_compare("upfirdn2d vs definition", y->data, ref, y->numel, 1e-5, 1e-5);
            if (fy) bad += gc_compare("upfirdn2d vs torch", y->data, fy, y->numel, 2e-5, 1e-5);
            free(ref);
        }
    }
    free(fx), free(fy);
    pbw_ctx_free(ctx);
    return bad;
}

PBW_TEST(upfirdn2d_forward) {
    static const char *fixtures[] = {"upfirdn1", "upfirdn2", "upfirdn3", "upfirdn4"};
    for (int i = 0; i < (int)(sizeof UPFIRDN_CASES / sizeof UPFIRDN_CASES[0]); i++)
        CHECK_MSG(check_upfirdn(&UPFIRDN_CASES[i], i < 4 ? fixtures[i] : NULL) == 0, "case %d", i);
}

/* The fixture's kernel is the same [1,3,3,1] kernel: checks stylegan_kernel above. */
PBW_TEST(upfirdn2d_kernel_fixture) {
    float k[16];
    stylegan_kernel(k, 1.0f);
    float *ref = load_fixture("upfirdn_k", 16);
    CHECK(ref && gc_compare("kernel", k, ref, 16, 0, 0) == 0);
    free(ref);
}

static pbw_tensor *upfirdn_fn(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    const upfirdn_case *c = user;
    return pbw_upfirdn2d(ctx, in[0], in[1], c->up, c->down, c->px0, c->px1, c->py0, c->py1);
}

PBW_TEST(upfirdn2d_backward) {
    float k[16];
    for (int i = 0; i < (int)(sizeof UPFIRDN_CASES / sizeof UPFIRDN_CASES[0]); i++) {
        const upfirdn_case *c = &UPFIRDN_CASES[i];
        /* an asymmetric kernel, so that a missing flip in the backward would show */
        for (int j = 0; j < 16; j++) k[j] = 0.05f * (float)(j + 1) * c->kscale;
        gc_input in[2] = {{4, {0}, NULL, 1}, {2, {4, 4}, k, 0}};
        memcpy(in[0].shape, c->shape, sizeof c->shape);
        in[0].data = gc_rand(c->shape[0] * c->shape[1] * c->shape[2] * c->shape[3], 3, -1, 1);
        CHECK_MSG(gc_check("upfirdn2d", upfirdn_fn, (void *)c, 2, in, (gc_opts){0}) == 0,
                  "case %d", i);
        free(in[0].data);
    }
}

PBW_TEST(upfirdn2d_errors) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 1, 3, 3});
    pbw_tensor *k = pbw_tensor_zeros(ctx, 2, (int64_t[]){4, 4});
    CHECK(pbw_upfirdn2d(ctx, x, k, 1, 1, 0, 0, 0, 0) == NULL); /* 3x3 input, 4x4 kernel */
    CHECK(strstr(pbw_ctx_error(ctx), "upfirdn2d") != NULL);
    pbw_ctx_reset(ctx);
    CHECK(pbw_upfirdn2d(ctx, x, k, 2, 1, 0, 0, 0, 0) != NULL);
    CHECK(pbw_upfirdn2d(ctx, x, k, 0, 1, 0, 0, 0, 0) == NULL);
    pbw_ctx_reset(ctx);
    k->requires_grad = 1; /* the FIR kernel is a constant */
    CHECK(pbw_upfirdn2d(ctx, x, k, 2, 1, 0, 0, 0, 0) == NULL);
    pbw_ctx_free(ctx);
}

/* ---------- gaussian blur ---------- */

static void ref_blur(float *out, const float *x, int64_t planes, int H, int W, float sigma, int ks) {
    double k[64], s = 0;
    for (int i = 0; i < ks; i++) {
        double d = (i - ks / 2) / (double)sigma;
        k[i] = exp(-0.5 * d * d);
        s += k[i];
    }
    for (int p = 0; p < planes; p++)
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++) {
                double acc = 0;
                for (int a = 0; a < ks; a++)
                    for (int b = 0; b < ks; b++) {
                        int iy = y + a - ks / 2, ix = xx + b - ks / 2;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        acc += k[a] * k[b] / (s * s) * x[((int64_t)p * H + iy) * W + ix];
                    }
                out[((int64_t)p * H + y) * W + xx] = (float)acc;
            }
}

PBW_TEST(gaussian_blur_forward) {
    static const struct {
        int64_t shape[4];
        float sigma;
        int ks;
        const char *fixture;
    } cases[] = {
        {{1, 1, 32, 32}, 2.0f, 3, "blur1"},  /* the mask blur at a 32 px layer */
        {{2, 1, 20, 24}, 1.5f, 5, "blur2"},
        {{1, 2, 9, 7}, 4.0f, 7, NULL},
        {{1, 1, 5, 6}, 3.0f, 9, NULL},       /* kernel wider than the image */
        {{2, 3, 4, 4}, 1.0f, 1, NULL},       /* ksize 1 copies */
    };
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        pbw_tensor *x = pbw_tensor_new(ctx, 4, cases[i].shape);
        float *fx = NULL, *fy = NULL;
        if (cases[i].fixture) {
            char nm[64];
            snprintf(nm, sizeof nm, "%s_x", cases[i].fixture);
            fx = load_fixture(nm, x->numel);
            snprintf(nm, sizeof nm, "%s_y", cases[i].fixture);
            fy = load_fixture(nm, x->numel);
            CHECK(fx && fy);
            if (fx) memcpy(x->data, fx, (size_t)x->numel * sizeof(float));
        } else {
            gc_fill(x->data, x->numel, 4, -1, 1);
        }
        pbw_tensor *y = pbw_gaussian_blur(ctx, x, cases[i].sigma, cases[i].ks);
        CHECK_MSG(y != NULL, "%s", pbw_ctx_error(ctx));
        if (y) {
            float *ref = malloc((size_t)x->numel * sizeof(float));
            ref_blur(ref, x->data, x->shape[0] * x->shape[1], (int)x->shape[2], (int)x->shape[3],
                     cases[i].sigma, cases[i].ks);
            CHECK_MSG(gc_compare("blur vs definition", y->data, ref, y->numel, 1e-5, 1e-5) == 0,
                      "case %d", i);
            if (fy) CHECK(gc_compare("blur vs torch", y->data, fy, y->numel, 2e-5, 1e-5) == 0);
            free(ref);
        }
        free(fx), free(fy);
        pbw_ctx_reset(ctx);
    }
    pbw_ctx_free(ctx);
}

typedef struct blur_args {
    float sigma;
    int ks;
} blur_args;

static pbw_tensor *blur_fn(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    const blur_args *a = user;
    return pbw_gaussian_blur(ctx, in[0], a->sigma, a->ks);
}

PBW_TEST(gaussian_blur_backward) {
    blur_args a[] = {{2.0f, 3}, {1.5f, 5}, {3.0f, 9}};
    for (int i = 0; i < 3; i++) {
        gc_input in = {4, {2, 1, 6, 7}, NULL, 1};
        in.data = gc_rand(84, 8, -1, 1);
        CHECK_MSG(gc_check("gaussian_blur", blur_fn, &a[i], 1, &in, (gc_opts){0}) == 0, "case %d", i);
        free(in.data);
    }
}

PBW_TEST(gaussian_blur_errors) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 1, 3, 3});
    CHECK(pbw_gaussian_blur(ctx, x, 1.0f, 4) == NULL);
    CHECK(strstr(pbw_ctx_error(ctx), "gaussian_blur") != NULL);
    pbw_ctx_reset(ctx);
    CHECK(pbw_gaussian_blur(ctx, x, 0.0f, 3) == NULL);
    pbw_ctx_free(ctx);
}
