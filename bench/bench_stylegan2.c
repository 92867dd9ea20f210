/* bench_stylegan2.c: times pbw's StyleGAN2 as the painting loop runs it: one image from one w
 * (broadcast to every layer, fixed noise), forward alone and forward + backward to w of
 * sum(r * image), weights frozen.
 *
 *   build/bench_stylegan2 --gan CKPT [--reps 3] [--profile]
 *
 * Prints one TSV line per pass: "pbw <TAB> pass <TAB> batch <TAB> median ms <TAB> GFLOP/s
 * <TAB> % of peak <TAB> mean CPU ms" (CPU time of all threads: on a shared machine it shows
 * the work done apart from time spent waiting for a core), then (--profile, or PBW_PROFILE=1)
 * the time per op of the fwd+dw pass. FLOPs count the convolutions' multiply-adds (2 each) as
 * a direct convolution does them; the backward to w counts them once more (input gradients
 * only). Peak: threads x GHz (from /proc/cpuinfo) x 32 fp32 FLOP per cycle (two 8-wide FMA
 * units). bench/run_stylegan2.sh runs it against tools/reference/stylegan2.py bench.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_util.h"
#include "core/pbw_ops.h"
#include "core/pbw_rng.h"
#include "models/pbw_stylegan2.h"

/* Multiply-adds x 2 of the styled convolutions and ToRGBs of one image. */
static double sg2_flops(const pbw_stylegan2 *g) {
    double f = 0, k2 = (double)g->conv1.conv.kernel_size * g->conv1.conv.kernel_size;
    f += 2.0 * k2 * g->channels[2] * g->channels[2] * 16 + 2.0 * 3 * g->channels[2] * 16;
    for (int b = 0; b < g->log_size - 2; b++) {
        double cin = g->channels[2 + b], c = g->channels[3 + b], side = 4 << b;
        f += 2.0 * k2 * cin * c * side * side;           /* transposed: per input pixel */
        f += 2.0 * k2 * c * c * (2 * side) * (2 * side); /* 3x3 at the new side */
        f += 2.0 * 3 * c * (2 * side) * (2 * side);      /* ToRGB */
    }
    return f;
}

int main(int argc, char **argv) {
    const char *gan = NULL;
    int reps = 3, profile = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gan") && i + 1 < argc) gan = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--profile")) profile = 1;
        else {
            fprintf(stderr, "usage: bench_stylegan2 --gan CKPT [--reps 3] [--profile]\n");
            return 2;
        }
    }
    if (!gan || reps < 1) {
        fprintf(stderr, "bench_stylegan2: --gan CKPT is required (reps >= 1)\n");
        return 2;
    }
    if (profile) setenv("PBW_PROFILE", "1", 1);
    pbw_err err;
    pbw_stylegan2 *g;
    if (pbw_sg2_load(gan, &g, &err)) {
        fprintf(stderr, "bench_stylegan2: %s\n", err.msg);
        return 1;
    }
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    const int S = g->size;
    /* the same kind of inputs as the reference's bench: w near latent_avg, r ~ N(0,1) */
    pbw_rng rng;
    pbw_rng_seed(&rng, 5);
    float *w0 = malloc((size_t)g->style_dim * sizeof(float));
    float *r = malloc((size_t)3 * S * S * sizeof(float));
    pbw_rng_normal_f32(&rng, w0, g->style_dim);
    for (int i = 0; i < g->style_dim; i++)
        w0[i] = 0.5f * w0[i] + (g->latent_avg ? g->latent_avg->data[i] : 0.0f);
    pbw_rng_normal_f32(&rng, r, (int64_t)3 * S * S);
    pbw_arena keep;
    pbw_arena_init(&keep, 1 << 16);
    pbw_tensor *w = pbw_tensor_new_in(&keep, 2, (int64_t[]){1, g->style_dim}, &err);
    memcpy(w->data, w0, (size_t)g->style_dim * sizeof(float));

    double peak = omp_get_max_threads() * bench_cpu_ghz() * 32.0;
    double ffwd = sg2_flops(g), fbwd = 2 * ffwd;
    for (int pass = 0; pass < 2; pass++) {
        double *t = malloc((size_t)(reps + 1) * sizeof(double)), cpu = 0;
        for (int k = 0; k <= reps; k++) { /* run 0 warms the arena and the scratch */
            pbw_ctx_reset(ctx);
            if (k == 1 && pbw_profile_enabled()) { /* drop the warm-up run's times */
                FILE *devnull = fopen("/dev/null", "w");
                if (devnull) {
                    pbw_profile_report(devnull, 1);
                    fclose(devnull);
                }
            }
            double t0 = bench_now(), c0 = bench_cpu_time();
            pbw_profile_mark();
            w->requires_grad = pass == 1;
            pbw_ctx_set_grad(ctx, pass == 1);
            pbw_tensor *img = pbw_sg2_from_w(ctx, g, w, NULL);
            if (pass == 1) {
                if (!img || pbw_backward(ctx, img, r, &err)) {
                    fprintf(stderr, "bench_stylegan2: %s\n", img ? err.msg : pbw_ctx_error(ctx));
                    return 1;
                }
            } else if (pbw_ctx_check(ctx, &err)) {
                fprintf(stderr, "bench_stylegan2: %s\n", err.msg);
                return 1;
            }
            t[k] = bench_now() - t0;
            if (k) cpu += bench_cpu_time() - c0;
        }
        qsort(t + 1, (size_t)reps, sizeof(double), bench_cmp_double);
        double med = t[1 + reps / 2], fl = pass ? fbwd : ffwd;
        printf("pbw\t%s\t1\t%.1f\t%.1f\t%.1f\t%.1f\n", pass ? "fwd+dw" : "fwd", med * 1e3,
               fl / med / 1e9, 100 * fl / med / 1e9 / peak, cpu / reps * 1e3);
        fflush(stdout);
        free(t);
    }
    if (pbw_profile_enabled()) {
        fprintf(stderr, "per-op time of one fwd+dw pass (mean of %d), %.1f GFLOP, peak %.1f "
                        "GFLOP/s, activation memory peak %.0f MB:\n",
                reps, fbwd / 1e9, peak, pbw_ctx_mem_peak(ctx) / 1e6);
        pbw_profile_report(stderr, 1.0 / reps);
    }
    pbw_ctx_free(ctx);
    pbw_arena_free(&keep);
    pbw_sg2_free(g);
    free(w0);
    free(r);
    return 0;
}
