/* bench_clip.c: times CLIP's image tower (pbw_clip_encode_image) as the painting loop runs it:
 * a batch of crops at the model's size, forward alone and forward + backward to the pixels of
 * sum_i (1 - cos(image_i, text)), weights frozen.
 *
 *   build/bench_clip --model DIR [--batch 32] [--reps 3] [--profile]
 *
 * Prints one TSV line per pass: "pbw <TAB> pass <TAB> batch <TAB> median ms <TAB> GFLOP/s
 * <TAB> % of peak <TAB> mean CPU ms" (CPU time of all threads: on a shared machine it shows the
 * work done apart from time spent waiting for a core), then (--profile, or PBW_PROFILE=1) the time per op of the fwd+dx pass.
 * FLOPs count the multiply-adds of the GEMMs, the patch convolution and attention (2 per
 * multiply-add); the backward to the input counts the same GEMMs again, and attention twice.
 * Peak: threads x GHz (from /proc/cpuinfo) x 32 fp32 FLOP per cycle (two 8-wide FMA units).
 * bench/run_clip.sh runs it against bench/bench_clip_torch.py.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_util.h"
#include "core/pbw_ops.h"
#include "models/pbw_clip.h"

/* Forward FLOPs of the image tower for batch B. */
static double vit_flops(const pbw_clip_config *c, int B) {
    double W = c->vision.width, M = c->vision.mlp, g = c->image_size / c->patch_size;
    double T = g * g + 1, P = c->patch_size, L = c->vision.layers;
    double conv = 2.0 * B * g * g * W * c->channels * P * P;
    double gemm = 2.0 * B * T * (3 * W * W + W * W + 2 * W * M);
    double attn = 2.0 * 2.0 * B * T * T * W;
    return conv + L * (gemm + attn) + 2.0 * B * W * c->embed_dim;
}

static double vit_attn_flops(const pbw_clip_config *c, int B) {
    double W = c->vision.width, g = c->image_size / c->patch_size, T = g * g + 1;
    return c->vision.layers * 2.0 * 2.0 * B * T * T * W;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int batch = 32, reps = 3, profile = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--profile")) profile = 1;
        else {
            fprintf(stderr, "usage: bench_clip --model DIR [--batch 32] [--reps 3] [--profile]\n");
            return 2;
        }
    }
    if (!model || batch < 1 || reps < 1) {
        fprintf(stderr, "bench_clip: --model DIR is required (batch and reps >= 1)\n");
        return 2;
    }
    if (profile) setenv("PBW_PROFILE", "1", 1);
    pbw_err err;
    pbw_clip *m;
    if (pbw_clip_load(model, &m, &err)) {
        fprintf(stderr, "bench_clip: %s\n", err.msg);
        return 1;
    }
    const pbw_clip_config *c = &m->cfg;
    int64_t S = c->image_size, E = c->embed_dim;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    size_t npx = (size_t)batch * (size_t)c->channels * (size_t)(S * S);
    float *px = malloc(npx * sizeof(float)), *target = malloc((size_t)E * sizeof(float));
    srand(1);
    for (size_t i = 0; i < npx; i++) px[i] = (float)rand() / RAND_MAX * 4 - 2;
    for (int64_t i = 0; i < E; i++) target[i] = (float)rand() / RAND_MAX - 0.5f;

    double peak = omp_get_max_threads() * bench_cpu_ghz() * 32.0;
    double ffwd = vit_flops(c, batch), fbwd = 2 * ffwd + vit_attn_flops(c, batch);
    for (int pass = 0; pass < 2; pass++) {
        /* two warm-up runs: the first grows the activation arena in chunks, the reset after it
         * merges them into one new block whose pages the second run faults in */
        const int warm = 2;
        double *t = malloc((size_t)(reps + warm) * sizeof(double)), cpu = 0;
        for (int r = 0; r < reps + warm; r++) {
            pbw_ctx_reset(ctx);
            if (r == warm && pbw_profile_enabled()) { /* drop the warm-up runs' times */
                FILE *devnull = fopen("/dev/null", "w");
                if (devnull) {
                    pbw_profile_report(devnull, 1);
                    fclose(devnull);
                }
            }
            double t0 = bench_now(), c0 = bench_cpu_time();
            pbw_profile_mark();
            pbw_tensor *x = pbw_tensor_wrap(ctx, px, 4, (int64_t[]){batch, c->channels, S, S});
            x->requires_grad = pass == 1;
            pbw_tensor *img = pbw_clip_encode_image(ctx, m, x);
            if (pass == 1) {
                pbw_tensor *tt = pbw_tensor_wrap(ctx, target, 2, (int64_t[]){1, E});
                pbw_tensor *loss = pbw_sum_all(ctx, pbw_affine(ctx, pbw_cosine(ctx, img, tt), -1, 1));
                if (pbw_backward(ctx, loss, NULL, &err)) {
                    fprintf(stderr, "bench_clip: %s\n", err.msg);
                    return 1;
                }
            } else if (pbw_ctx_check(ctx, &err)) {
                fprintf(stderr, "bench_clip: %s\n", err.msg);
                return 1;
            }
            t[r] = bench_now() - t0;
            if (r >= warm) cpu += bench_cpu_time() - c0;
        }
        qsort(t + warm, (size_t)reps, sizeof(double), bench_cmp_double);
        double med = t[warm + reps / 2], fl = pass ? fbwd : ffwd;
        printf("pbw\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\n", pass ? "fwd+dx" : "fwd", batch,
               med * 1e3, fl / med / 1e9, 100 * fl / med / 1e9 / peak, cpu / reps * 1e3);
        fflush(stdout);
        free(t);
    }
    if (pbw_profile_enabled()) {
        fprintf(stderr, "per-op time of one fwd+dx pass (mean of %d), peak %.1f GFLOP/s, "
                        "activation memory peak %.0f MB:\n",
                reps, peak, pbw_ctx_mem_peak(ctx) / 1e6);
        pbw_profile_report(stderr, 1.0 / reps);
    }
    pbw_ctx_free(ctx);
    pbw_clip_free(m);
    free(px);
    free(target);
    return 0;
}
