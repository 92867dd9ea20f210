/* bench_ops.c: times pbw_conv2d / pbw_conv_transpose2d and pbw_matmul, forward and forward +
 * backward, on the shapes the models run (CLIP ViT-B/32, StyleGAN2 at 256 px, LPIPS AlexNet).
 *
 *   build/bench_ops            one TSV line per measurement:
 *                              op <TAB> name <TAB> pass <TAB> ms <TAB> GFLOP/s <TAB> % of peak
 *   build/bench_ops --shapes   the shape list, one line each, for bench/bench_ops_torch.py
 *   build/bench_ops --peak     the peak used for "% of peak" and how it was found
 *
 * Passes: "fwd" the forward alone; "fwd+dx" forward and the input gradient (what painting
 * needs: weights take no gradient); "fwd+dx+dw" forward and every gradient (training).
 * Each pass runs through the op API and the tape (pbw_backward), as the models will, and
 * reports the median of several runs after a warm-up. Threads: whatever OMP_NUM_THREADS /
 * OPENBLAS_NUM_THREADS say (bench/run.sh sets 2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "core/pbw_ops.h"
#include "cpu/pbw_cpu_conv.h"

typedef struct conv_shape {
    const char *name;
    int N, C, H, W, O, K, stride, pad, groups, transposed;
} conv_shape;

/* StyleGAN2 (rosinality, 256 px, channel multiplier 2): 3x3 convs at every resolution, the
 * modulated conv as a grouped conv over a batch of 4 (groups = batch), ToRGB 1x1, and the
 * transposed 3x3 stride-2 convs of the upsampling layers. LPIPS AlexNet runs on 256 px. */
static const conv_shape CONVS[] = {
    {"clip_patch32_b32", 32, 3, 224, 224, 768, 32, 32, 0, 1, 0},
    {"sg2_conv512_4", 1, 512, 4, 4, 512, 3, 1, 1, 1, 0},
    {"sg2_conv512_8", 1, 512, 8, 8, 512, 3, 1, 1, 1, 0},
    {"sg2_conv512_16", 1, 512, 16, 16, 512, 3, 1, 1, 1, 0},
    {"sg2_conv512_32", 1, 512, 32, 32, 512, 3, 1, 1, 1, 0},
    {"sg2_conv512_64", 1, 512, 64, 64, 512, 3, 1, 1, 1, 0},
    {"sg2_conv256_128", 1, 256, 128, 128, 256, 3, 1, 1, 1, 0},
    {"sg2_conv128_256", 1, 128, 256, 256, 128, 3, 1, 1, 1, 0},
    {"sg2_modconv512_16_g4", 1, 4 * 512, 16, 16, 4 * 512, 3, 1, 1, 4, 0},
    {"sg2_torgb128_256", 1, 128, 256, 256, 3, 1, 1, 0, 1, 0},
    {"sg2_up512_16to33", 1, 512, 16, 16, 512, 3, 2, 0, 1, 1},
    {"sg2_up512to256_64to129", 1, 512, 64, 64, 256, 3, 2, 0, 1, 1},
    {"sg2_up256to128_128to257", 1, 256, 128, 128, 128, 3, 2, 0, 1, 1},
    {"alex1_11x11s4", 1, 3, 256, 256, 64, 11, 4, 2, 1, 0},
    {"alex2_5x5", 1, 64, 31, 31, 192, 5, 1, 2, 1, 0},
    {"alex3_3x3", 1, 192, 15, 15, 384, 3, 1, 1, 1, 0},
    {"alex4_3x3", 1, 384, 15, 15, 256, 3, 1, 1, 1, 0},
    {"alex5_3x3", 1, 256, 15, 15, 256, 3, 1, 1, 1, 0},
};

typedef struct mm_shape {
    const char *name;
    int M, K, N;
} mm_shape;

/* CLIP ViT-B/32 on 32 crops: 32 * 50 tokens through the attention and MLP projections. */
static const mm_shape MMS[] = {
    {"clip_qkv_1600x768x2304", 1600, 768, 2304},
    {"clip_fc1_1600x768x3072", 1600, 768, 3072},
    {"clip_fc2_1600x3072x768", 1600, 3072, 768},
};

#define N_CONVS (int)(sizeof CONVS / sizeof CONVS[0])
#define N_MMS (int)(sizeof MMS / sizeof MMS[0])

/* BENCH_CLOCK=cpu times with the process's CPU time instead of the wall clock: steadier on a
 * shared machine for single-threaded comparisons (and meaningless for threaded ones). */
static double now_s(void) {
    static int clk = -1;
    if (clk < 0) {
        const char *e = getenv("BENCH_CLOCK");
        clk = e && !strcmp(e, "cpu") ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC;
    }
    return bench_clock(clk);
}

/* Clock of one core: a chain of dependent integer adds retires one add per cycle, so cycles =
 * adds. Unrolled 16 times so that the loop branch does not limit the rate. */
static double measure_ghz(void) {
    const long iters = 25000000L;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        long n = iters, x = 0;
        double t0 = now_s();
        __asm__ volatile("1:\n\t"
                         "add $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\t"
                         "add $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\t"
                         "add $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\t"
                         "add $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\tadd $1, %1\n\t"
                         "dec %0\n\tjnz 1b"
                         : "+r"(n), "+r"(x));
        double ghz = 16.0 * (double)iters / (now_s() - t0) / 1e9;
        if (ghz > best) best = ghz;
    }
    return best;
}

static double cpuinfo_ghz(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
    char line[256];
    double mhz = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "cpu MHz", 7)) {
            char *c = strchr(line, ':');
            if (c) mhz = atof(c + 1);
            break;
        }
    fclose(f);
    return mhz / 1e3;
}

static int n_threads(void) {
    const char *e = getenv("OMP_NUM_THREADS");
    return e && atoi(e) > 0 ? atoi(e) : 1;
}

static double g_peak; /* GFLOP/s */

/* Peak = threads x clock x 32. The clock is the larger of the measured one and the one
 * /proc/cpuinfo reports: on a busy machine the measurement only sees our share of a core. */
static void set_peak(int print) {
    double ghz = measure_ghz(), info = cpuinfo_ghz();
    int nt = n_threads();
    double use = ghz > info ? ghz : info;
    /* AVX2 with two 256-bit FMA pipes: 2 * 8 lanes * 2 flops = 32 fp32 flops per cycle */
    g_peak = nt * use * 32.0;
    if (print)
        printf("peak %.1f GFLOP/s = %d threads x %.2f GHz x 32 fp32 FLOP/cycle (AVX2, 2 FMA pipes); "
               "clock: %s (measured with a dependent-add chain: %.2f GHz; /proc/cpuinfo "
               "\"cpu MHz\": %.2f GHz)\n",
               g_peak, nt, use, ghz > info ? "measured" : "/proc/cpuinfo", ghz, info);
}

typedef pbw_tensor *(*run_fn)(pbw_ctx *ctx, pbw_tensor **in, const void *shape);

static pbw_tensor *run_conv(pbw_ctx *ctx, pbw_tensor **in, const void *shape) {
    const conv_shape *s = shape;
    pbw_conv_params p = {.stride_h = s->stride, .stride_w = s->stride, .pad_h = s->pad,
                         .pad_w = s->pad, .groups = s->groups};
    return s->transposed ? pbw_conv_transpose2d(ctx, in[0], in[1], NULL, p)
                         : pbw_conv2d(ctx, in[0], in[1], NULL, p);
}

static pbw_tensor *run_mm(pbw_ctx *ctx, pbw_tensor **in, const void *shape) {
    (void)shape;
    return pbw_matmul(ctx, in[0], in[1], 0, 0);
}

/* Median seconds of one pass: 0 forward, 1 forward + dx, 2 forward + dx + dw. */
static double time_pass(pbw_ctx *ctx, pbw_tensor **in, run_fn f, const void *shape, int pass,
                        float **seed, size_t *seed_cap) {
    double t[64];
    int reps = 0;
    double total = 0;
    in[0]->requires_grad = pass >= 1;
    in[1]->requires_grad = pass >= 2;
    pbw_ctx_reset(ctx);
    pbw_tensor *y0 = f(ctx, in, shape); /* untimed: sizes the gradient seed */
    if (y0 && (size_t)y0->numel > *seed_cap) {
        free(*seed);
        *seed_cap = (size_t)y0->numel;
        *seed = malloc(*seed_cap * sizeof(float));
        for (size_t k = 0; k < *seed_cap; k++) (*seed)[k] = 1e-3f * (float)(k % 7);
    }
    for (int i = -2; reps < 64 && (reps < 5 || total < 1.0); i++) {
        pbw_ctx_reset(ctx);
        double t0 = now_s();
        pbw_tensor *y = f(ctx, in, shape);
        if (!y) {
            fprintf(stderr, "bench: %s\n", pbw_ctx_error(ctx));
            exit(1);
        }
        if (pass >= 1) {
            pbw_err err;
            if (pbw_backward(ctx, y, *seed, &err) != 0) {
                fprintf(stderr, "bench: backward: %s\n", err.msg);
                exit(1);
            }
        }
        double dt = now_s() - t0;
        if (i >= 0) {
            t[reps++] = dt;
            total += dt;
        }
    }
    qsort(t, (size_t)reps, sizeof t[0], bench_cmp_double);
    return t[reps / 2];
}

static void fill(pbw_tensor *t, unsigned seed) {
    for (int64_t i = 0; i < t->numel; i++) {
        seed = seed * 1664525u + 1013904223u;
        t->data[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
}

static void report(const char *op, const char *name, const char *pass, double s, double flops) {
    double gf = flops / s / 1e9;
    printf("%s\t%s\t%s\t%.3f\t%.1f\t%.1f\n", op, name, pass, s * 1e3, gf, 100.0 * gf / g_peak);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--shapes")) {
        for (int i = 0; i < N_CONVS; i++) {
            const conv_shape *s = &CONVS[i];
            printf("conv %s %d %d %d %d %d %d %d %d %d %d\n", s->name, s->N, s->C, s->H, s->W, s->O,
                   s->K, s->stride, s->pad, s->groups, s->transposed);
        }
        for (int i = 0; i < N_MMS; i++) printf("matmul %s %d %d %d\n", MMS[i].name, MMS[i].M, MMS[i].K, MMS[i].N);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--peak")) {
        set_peak(1);
        return 0;
    }
    const char *filter = argc > 1 ? argv[1] : NULL;
    if (getenv("BENCH_TILE")) pbw_cpu_conv_tune(atoll(getenv("BENCH_TILE")), 0); /* tuning */
    set_peak(0);
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_arena keep;
    pbw_arena_init(&keep, 1 << 20);
    float *seed = NULL;
    size_t seed_cap = 0;
    static const char *PASS[3] = {"fwd", "fwd+dx", "fwd+dx+dw"};
    for (int i = 0; i < N_CONVS; i++) {
        const conv_shape *s = &CONVS[i];
        if (filter && !strstr(s->name, filter)) continue;
        int64_t xs[4] = {s->N, s->C, s->H, s->W};
        int64_t ws[4] = {s->transposed ? s->C : s->O, (s->transposed ? s->O : s->C) / s->groups, s->K, s->K};
        pbw_tensor *in[2] = {pbw_tensor_new_in(&keep, 4, xs, &err), pbw_tensor_new_in(&keep, 4, ws, &err)};
        fill(in[0], 1), fill(in[1], 2);
        /* flops of the forward: 2 per multiply-add; each backward GEMM costs the same */
        int64_t oh, ow;
        if (s->transposed) {
            oh = (int64_t)(s->H - 1) * s->stride - 2 * s->pad + s->K;
            ow = (int64_t)(s->W - 1) * s->stride - 2 * s->pad + s->K;
        } else {
            oh = (s->H + 2 * s->pad - s->K) / s->stride + 1;
            ow = (s->W + 2 * s->pad - s->K) / s->stride + 1;
        }
        double macs = s->transposed
                          ? (double)s->N * s->C * s->H * s->W * (s->O / s->groups) * s->K * s->K
                          : (double)s->N * s->O * oh * ow * (s->C / s->groups) * s->K * s->K;
        for (int p = 0; p < 3; p++)
            report("conv", s->name, PASS[p], time_pass(ctx, in, run_conv, s, p, &seed, &seed_cap),
                   2.0 * macs * (p + 1));
        pbw_ctx_reset(ctx); /* drops the gradient links into `keep` before it is reused */
        pbw_arena_reset(&keep);
    }
    for (int i = 0; i < N_MMS; i++) {
        const mm_shape *s = &MMS[i];
        if (filter && !strstr(s->name, filter)) continue;
        pbw_tensor *in[2] = {pbw_tensor_new_in(&keep, 2, (int64_t[]){s->M, s->K}, &err),
                             pbw_tensor_new_in(&keep, 2, (int64_t[]){s->K, s->N}, &err)};
        fill(in[0], 3), fill(in[1], 4);
        double macs = (double)s->M * s->K * s->N;
        for (int p = 0; p < 3; p++)
            report("matmul", s->name, PASS[p], time_pass(ctx, in, run_mm, s, p, &seed, &seed_cap),
                   2.0 * macs * (p + 1));
        pbw_ctx_reset(ctx); /* drops the gradient links into `keep` before it is reused */
        pbw_arena_reset(&keep);
    }
    free(seed);
    pbw_arena_free(&keep);
    pbw_ctx_free(ctx);
    return 0;
}
