/* cmd_smoke.c: `pbw smoke` runs a small optimization end to end: it recovers an image from
 * blurred convolutional features of a target by gradient descent (Adam on the pixels), through
 * the same tape, ops and PNG writer the painter uses, and prints the loss as it falls. It is the
 * quick-start demo until the shapes-world models ship. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app/pbw_app.h"
#include "core/pbw_ops.h"
#include "formats/pbw_image.h"

static void help(FILE *f) {
    fprintf(f, "usage: pbw smoke [--steps N] [--size S] [--out OUT.png]\n\n"
               "Starts from noise and optimizes the pixels of an S x S image (default 64) with Adam\n"
               "so that its blurred 3x3-convolution features match those of a drawn target (a\n"
               "disc and a bar); prints the loss every few steps and writes target | result.\n\n"
               "  --steps N   optimization steps (default 150)\n"
               "  --out PATH  PNG to write (default smoke.png)\n");
}

static void draw_target(float *img, int S) { /* (3,S,S) in [-1,1] */
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            float dx = (float)x - 0.4f * S, dy = (float)y - 0.45f * S;
            int disc = dx * dx + dy * dy < 0.07f * S * S;
            int bar = x > 0.65f * S && x < 0.8f * S && y > 0.15f * S && y < 0.85f * S;
            float rgb[3] = {-0.6f, -0.4f, 0.2f}; /* blue-gray background */
            if (disc) rgb[0] = 0.9f, rgb[1] = 0.7f, rgb[2] = -0.8f;
            if (bar) rgb[0] = -0.8f, rgb[1] = 0.6f, rgb[2] = -0.2f;
            for (int c = 0; c < 3; c++) img[(c * S + y) * S + x] = rgb[c];
        }
}

static pbw_tensor *features(pbw_ctx *ctx, pbw_tensor *img, pbw_tensor *w) {
    pbw_conv_params p = {.pad_h = 1, .pad_w = 1};
    pbw_tensor *f = pbw_leaky_relu(ctx, pbw_conv2d(ctx, img, w, NULL, p), 0.2f);
    return pbw_gaussian_blur(ctx, f, 1.0f, 5);
}

int cmd_smoke(int argc, char **argv) {
    long steps = 150, S = 64;
    const char *out = "smoke.png";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            help(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--steps")) {
            const char *v = app_value("smoke", argc, argv, &i);
            if (!v || app_parse_int("smoke", "--steps", v, 1, 100000, &steps)) return 2;
        } else if (!strcmp(argv[i], "--size")) {
            const char *v = app_value("smoke", argc, argv, &i);
            if (!v || app_parse_int("smoke", "--size", v, 8, 1024, &S)) return 2;
        } else if (!strcmp(argv[i], "--out")) {
            if (!(out = app_value("smoke", argc, argv, &i))) return 2;
        } else {
            fprintf(stderr, "pbw smoke: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    if (!ctx) {
        fprintf(stderr, "pbw smoke: %s\n", err.msg);
        return 1;
    }
    pbw_arena keep;
    pbw_arena_init(&keep, 1 << 20);
    int64_t ish[4] = {1, 3, S, S}, wsh[4] = {8, 3, 3, 3};
    pbw_tensor *target = pbw_tensor_new_in(&keep, 4, ish, &err);
    pbw_tensor *x = pbw_tensor_new_in(&keep, 4, ish, &err);
    pbw_tensor *w = pbw_tensor_new_in(&keep, 4, wsh, &err);
    float *m = calloc((size_t)x->numel, sizeof(float)), *v = calloc((size_t)x->numel, sizeof(float));
    if (!target || !x || !w || !m || !v) {
        fprintf(stderr, "pbw smoke: out of memory\n");
        return 1;
    }
    draw_target(target->data, (int)S);
    uint64_t s = 88172645463325252ull;
    for (int64_t i = 0; i < w->numel + x->numel; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        float u = (float)((s >> 40) / 16777216.0) * 2 - 1;
        if (i < w->numel) w->data[i] = u * 0.4f;
        else x->data[i - w->numel] = u * 0.1f;
    }
    x->requires_grad = 1;
    /* the target's features are constants: compute them once, outside any step arena */
    pbw_ctx_set_grad(ctx, 0);
    pbw_tensor *ft0 = features(ctx, target, w);
    pbw_tensor *ft = ft0 ? pbw_tensor_new_in(&keep, ft0->ndim, ft0->shape, &err) : NULL;
    if (!ft) {
        fprintf(stderr, "pbw smoke: %s\n", pbw_ctx_error(ctx));
        return 1;
    }
    memcpy(ft->data, ft0->data, (size_t)ft->numel * sizeof(float));
    pbw_ctx_reset(ctx);
    pbw_ctx_set_grad(ctx, 1);
    const float lr = 0.05f, b1 = 0.9f, b2 = 0.999f;
    float first = 0, last = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long step = 1; step <= steps; step++) {
        pbw_tensor *d = pbw_sub(ctx, features(ctx, pbw_clamp(ctx, x, -1, 1), w), ft);
        pbw_tensor *loss = pbw_mean_all(ctx, pbw_square(ctx, d));
        if (pbw_backward(ctx, loss, NULL, &err) != 0) {
            fprintf(stderr, "pbw smoke: step %ld: %s\n", step, err.msg);
            return 1;
        }
        last = loss->data[0];
        if (step == 1) first = last;
        float c1 = 1 - powf(b1, (float)step), c2 = 1 - powf(b2, (float)step);
        for (int64_t i = 0; i < x->numel; i++) {
            float g = x->grad[i];
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            x->data[i] -= lr * (m[i] / c1) / (sqrtf(v[i] / c2) + 1e-8f);
        }
        if (step == 1 || step % 25 == 0 || step == steps) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
            printf("step %4ld/%ld  loss %.6f  (%.1f steps/s)\n", step, steps, last, step / sec);
            fflush(stdout);
        }
        pbw_ctx_reset(ctx);
    }
    /* target | result side by side */
    pbw_image im = {(int)(2 * S), (int)S, 3, malloc((size_t)(2 * S * S * 3))};
    for (int y = 0; y < S; y++)
        for (int xx = 0; xx < 2 * S; xx++)
            for (int c = 0; c < 3; c++) {
                const float *src = xx < S ? target->data : x->data;
                float val = src[(c * S + y) * S + (xx % S)];
                val = val < -1 ? -1 : (val > 1 ? 1 : val);
                im.data[(y * 2 * S + xx) * 3 + c] = (uint8_t)lrintf((val + 1) * 127.5f);
            }
    int rc = pbw_image_write_png(out, &im, &err);
    if (rc) fprintf(stderr, "pbw smoke: %s\n", err.msg);
    else printf("loss %.6f -> %.6f (%.1f%% of the start); wrote %s (target | result)\n", first, last,
                100.0 * last / first, out);
    free(im.data);
    free(m);
    free(v);
    pbw_ctx_free(ctx);
    pbw_arena_free(&keep);
    if (!rc && !(last < 0.5f * first)) {
        fprintf(stderr, "pbw smoke: the loss did not fall by half: something is wrong\n");
        return 1;
    }
    return rc ? 1 : 0;
}
