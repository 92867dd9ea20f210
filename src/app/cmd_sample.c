/* cmd_sample.c: `pbw sample` renders StyleGAN2 images from the z rows of an .npy file, and the
 * rendering shared with `pbw seeds` (app_sg2_render): batching, progress, the PNG grid and the
 * float32 .npy of the raw generator output. Both outputs are written atomically. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app/pbw_app.h"
#include "core/pbw_ops.h"
#include "core/pbw_rng.h"
#include "formats/pbw_image.h"
#include "formats/pbw_npy.h"
#include "models/pbw_stylegan2.h"

#define MAX_IMAGES 100000

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void help(FILE *f) {
    fprintf(f,
            "usage: pbw sample --gan CKPT --z Z.npy --out OUT.png [--truncation T]\n"
            "                  [--noise fixed|random] [--seed S] [--cols C] [--save-npy OUT.npy]\n\n"
            "Renders one StyleGAN2 image per row of Z and writes them as a grid.\n\n"
            "  --gan CKPT         rosinality checkpoint: torch .pt (zip or legacy) or safetensors\n"
            "                     with g_ema.* (and latent_avg) tensors\n"
            "  --z Z.npy          float (N,S) or (S) latents z, S the checkpoint's style size (512)\n"
            "  --out OUT.png      the images in a grid, row-major (an 8-bit PNG; [-1,1] -> [0,255])\n"
            "  --truncation T     pull w toward latent_avg: w = avg + T (w - avg) (default 1: off).\n"
            "                     A checkpoint without latent_avg gets it estimated from 4096 z\n"
            "  --noise fixed      use the checkpoint's noise buffers (default: deterministic)\n"
            "  --noise random     draw fresh noise for every image (seeded by --seed)\n"
            "  --seed S           seed of the random noise (default: from the clock, printed)\n"
            "  --cols C           images per grid row (default: about sqrt(N); N for a strip)\n"
            "  --save-npy OUT.npy also write the raw images as float32 (N,3,H,W) in [-1,1]\n");
}

void app_sg2_job_init(app_sg2_job *job, const char *cmd) {
    memset(job, 0, sizeof *job);
    job->cmd = cmd;
    job->truncation = 1.0f;
}

/* Image i of a (N,3,S,S) batch into cell i of the grid. torchvision's save_image mapping:
 * clamp to [-1,1], then x * 127.5 + 127.5 rounded. */
static void put_cell(pbw_image *im, const float *img, int S, int cell, int cols) {
    int cx = (cell % cols) * S, cy = (cell / cols) * S;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float v = img[((int64_t)c * S + y) * S + x];
                v = v < -1 ? -1 : (v > 1 ? 1 : v);
                if (v != v) v = 0; /* NaN: mid gray rather than garbage */
                im->data[(((int64_t)cy + y) * im->w + cx + x) * 3 + c] =
                    (uint8_t)lrintf(v * 127.5f + 127.5f);
            }
}

int app_sg2_render(const app_sg2_job *job, const float *z, int64_t n, int zdim) {
    const char *cmd = job->cmd;
    pbw_err err = {{0}};
    double t0 = now_s();
    float *bank = NULL; /* z == NULL: seed bank rows job->bank_first .. + n - 1 */
    if (n < 1 || n > MAX_IMAGES) {
        fprintf(stderr, "pbw %s: %lld images requested (1..%d)\n", cmd, (long long)n, MAX_IMAGES);
        return 2;
    }
    pbw_stylegan2 *g;
    if (pbw_sg2_load(job->gan, &g, &err)) {
        fprintf(stderr, "pbw %s: --gan: %s\n", cmd, err.msg);
        return 1;
    }
    int rc = 1;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    float *all = NULL;
    pbw_image im = {0};
    if (!ctx) {
        fprintf(stderr, "pbw %s: %s\n", cmd, err.msg);
        goto out;
    }
    if (!z) {
        zdim = g->style_dim;
        bank = malloc((size_t)(n * zdim) * sizeof(float));
        if (!bank || pbw_seedbank_z(job->bank_first, n, zdim, bank)) {
            fprintf(stderr, "pbw %s: no seed bank for style size %d (out of memory or odd)\n", cmd,
                    zdim);
            goto out;
        }
        z = bank;
    }
    if (zdim != g->style_dim) {
        fprintf(stderr, "pbw %s: the latents have %d values per row but %s takes z of %d\n", cmd,
                zdim, job->gan, g->style_dim);
        rc = 2;
        goto out;
    }
    if (job->truncation < 1.0f && !g->latent_avg) {
        fprintf(stderr, "pbw %s: %s has no latent_avg; estimating it from 4096 z (seed 0)\n", cmd,
                job->gan);
        if (pbw_sg2_mean_latent(ctx, g, 4096, 0, &err)) {
            fprintf(stderr, "pbw %s: %s\n", cmd, err.msg);
            goto out;
        }
    }
    const int S = g->size;
    int cols = job->cols > 0 ? job->cols : (int)ceil(sqrt((double)n));
    if (cols > n) cols = (int)n;
    int rows = (int)((n + cols - 1) / cols);
    if ((int64_t)cols * S > PBW_IMAGE_MAX_SIDE || (int64_t)rows * S > PBW_IMAGE_MAX_SIDE) {
        fprintf(stderr, "pbw %s: a %dx%d grid of %d px images is too large for one PNG; use "
                "--cols or fewer images\n", cmd, cols, rows, S);
        rc = 2;
        goto out;
    }
    const int64_t per = (int64_t)3 * S * S;
    all = malloc((size_t)(n * per) * sizeof(float));
    im.w = cols * S, im.h = rows * S, im.c = 3;
    im.data = calloc((size_t)im.w * im.h, 3);
    if (!all || !im.data) {
        fprintf(stderr, "pbw %s: out of memory for %lld images\n", cmd, (long long)n);
        goto out;
    }
    pbw_rng rng;
    pbw_rng_seed(&rng, job->seed);
    pbw_sg2_opts opts = {.noise = job->noise_random ? PBW_SG2_NOISE_RANDOM : PBW_SG2_NOISE_FIXED,
                         .rng = &rng};
    /* batch so that a batch holds about four 256 px images' worth of activations */
    int64_t batch = ((int64_t)4 << 16) / ((int64_t)S * S);
    if (batch < 1) batch = 1;
    if (batch > 16) batch = 16;
    int progress = n > batch || S >= 512;
    pbw_ctx_set_grad(ctx, 0);
    for (int64_t i = 0; i < n; i += batch) {
        int64_t b = n - i < batch ? n - i : batch;
        pbw_tensor *zt = pbw_tensor_wrap(ctx, (float *)z + i * zdim, 2, (int64_t[]){b, zdim});
        pbw_tensor *img = pbw_sg2_from_z(ctx, g, zt, job->truncation, &opts);
        if (!img) {
            fprintf(stderr, "pbw %s: %s\n", cmd, pbw_ctx_error(ctx));
            goto out;
        }
        memcpy(all + i * per, img->data, (size_t)(b * per) * sizeof(float));
        for (int64_t k = 0; k < b; k++) put_cell(&im, all + (i + k) * per, S, (int)(i + k), cols);
        pbw_ctx_reset(ctx);
        if (progress)
            fprintf(stderr, "pbw %s: %lld/%lld images (%.1f s)\n", cmd, (long long)(i + b),
                    (long long)n, now_s() - t0);
    }
    if (job->npy &&
        pbw_npy_write(job->npy, all, 4, (int64_t[]){n, 3, S, S}, &err)) {
        fprintf(stderr, "pbw %s: --save-npy: %s\n", cmd, err.msg);
        goto out;
    }
    if (pbw_image_write_png(job->out, &im, &err)) {
        fprintf(stderr, "pbw %s: --out: %s\n", cmd, err.msg);
        goto out;
    }
    fprintf(stderr, "pbw %s: wrote %s (%lld image%s of %dx%d, %d per row)%s%s in %.1f s\n", cmd,
            job->out, (long long)n, n == 1 ? "" : "s", S, S, cols, job->npy ? " and " : "",
            job->npy ? job->npy : "", now_s() - t0);
    rc = 0;
out:
    free(bank);
    free(all);
    free(im.data);
    pbw_ctx_free(ctx);
    pbw_sg2_free(g);
    return rc;
}

/* Options both commands take; returns 1 when argv[*i] was one of them, -1 on a bad value. */
int app_sg2_option(app_sg2_job *job, int argc, char **argv, int *i) {
    const char *o = argv[*i], *v;
    const char *cmd = job->cmd;
    if (!strcmp(o, "--gan") || !strcmp(o, "--out") || !strcmp(o, "--save-npy")) {
        if (!(v = app_value(cmd, argc, argv, i))) return -1;
        if (!strcmp(o, "--gan")) job->gan = v;
        else if (!strcmp(o, "--out")) job->out = v;
        else job->npy = v;
        return 1;
    }
    if (!strcmp(o, "--truncation")) {
        double t;
        if (!(v = app_value(cmd, argc, argv, i)) || app_parse_float(cmd, o, v, &t)) return -1;
        if (t < 0 || t > 1) {
            fprintf(stderr, "pbw %s: --truncation %s must be in [0, 1]\n", cmd, v);
            return -1;
        }
        job->truncation = (float)t;
        return 1;
    }
    if (!strcmp(o, "--noise")) {
        if (!(v = app_value(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "fixed")) job->noise_random = 0;
        else if (!strcmp(v, "random")) job->noise_random = 1;
        else {
            fprintf(stderr, "pbw %s: --noise must be fixed or random, not '%s'\n", cmd, v);
            return -1;
        }
        return 1;
    }
    if (!strcmp(o, "--seed") || !strcmp(o, "--cols")) {
        long x;
        if (!(v = app_value(cmd, argc, argv, i)) ||
            app_parse_int(cmd, o, v, o[2] == 's' ? 0 : 1, o[2] == 's' ? 4294967295L : 65536, &x))
            return -1;
        if (o[2] == 's') job->seed = (uint32_t)x, job->seed_given = 1;
        else job->cols = (int)x;
        return 1;
    }
    return 0;
}

/* Checks the required options and settles the noise seed. */
int app_sg2_finish(app_sg2_job *job) {
    if (!job->gan || !job->out) {
        fprintf(stderr, "pbw %s: --gan and --out are required (pbw %s --help)\n", job->cmd,
                job->cmd);
        return -1;
    }
    if (job->noise_random && !job->seed_given) {
        job->seed = (uint32_t)time(NULL) ^ (uint32_t)clock();
        fprintf(stderr, "pbw %s: random noise with --seed %u\n", job->cmd, job->seed);
    }
    return 0;
}

int cmd_sample(int argc, char **argv) {
    app_sg2_job job;
    app_sg2_job_init(&job, "sample");
    const char *zpath = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            help(stdout);
            return 0;
        }
        int r = app_sg2_option(&job, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(argv[i], "--z")) {
            if (!(zpath = app_value("sample", argc, argv, &i))) return 2;
        } else {
            fprintf(stderr, "pbw sample: unknown argument '%s' (pbw sample --help)\n", argv[i]);
            return 2;
        }
    }
    if (!zpath) {
        fprintf(stderr, "pbw sample: --z is required (pbw sample --help)\n");
        return 2;
    }
    if (app_sg2_finish(&job)) return 2;
    pbw_npy z;
    pbw_err err = {{0}};
    if (pbw_npy_read(zpath, &z, &err)) {
        fprintf(stderr, "pbw sample: --z: %s\n", err.msg);
        return 1;
    }
    int rc;
    if (z.ndim != 1 && z.ndim != 2) {
        fprintf(stderr, "pbw sample: --z %s must be (N,S) or (S), has %d dimensions\n", zpath,
                z.ndim);
        rc = 2;
    } else {
        int64_t n = z.ndim == 2 ? z.shape[0] : 1, dim = z.shape[z.ndim - 1];
        int finite = 1;
        for (int64_t i = 0; i < z.numel; i++) finite &= isfinite(z.data[i]) != 0;
        if (!finite) {
            fprintf(stderr, "pbw sample: --z %s holds NaN or infinite values\n", zpath);
            rc = 2;
        } else if (dim > 1 << 20) {
            fprintf(stderr, "pbw sample: --z %s rows of %lld values are too long\n", zpath,
                    (long long)dim);
            rc = 2;
        } else {
            rc = app_sg2_render(&job, z.data, n, (int)dim);
        }
    }
    pbw_npy_free(&z);
    return rc;
}
