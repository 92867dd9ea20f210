/* cuda_parity.c: CPU-versus-CUDA comparison of a graph of ops (see cuda_parity.h). */
#include "cuda_parity.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_rng.h"
#include "gradcheck.h"

/* max |b - a| / max |a| over n values (NaN when any difference is NaN) */
static double rel_err(const float *a, const float *b, int64_t n) {
    double scale, diff = gc_max_diff(b, a, n, &scale);
    return diff / (scale > 0 ? scale : 1);
}

/* f on dev from host_in, its backward seeded with the output gradient that seed_rng (a copy)
 * draws: uniform(-1,1), as many as the output has. */
static int run_on(pbw_device dev, parity_fn f, void *arg, int nin, const parity_input *in,
                  float *const *host_in, const pbw_rng *seed_rng, parity_outputs *o,
                  const char *name) {
    pbw_err err = {0};
    pbw_ctx *ctx = pbw_ctx_new(dev, &err);
    if (!ctx) {
        fprintf(stderr, "  %s: %s\n", name, err.msg);
        return -1;
    }
    pbw_tensor *t[8];
    int any_grad = 0;
    for (int i = 0; i < nin; i++) {
        t[i] = pbw_tensor_from_host(ctx, host_in[i], in[i].ndim, in[i].shape);
        if (t[i]) t[i]->requires_grad = in[i].requires_grad;
        any_grad |= in[i].requires_grad;
    }
    pbw_tensor *y = f(ctx, t, arg);
    int rc = -1;
    if (!y || pbw_ctx_check(ctx, &err)) {
        fprintf(stderr, "  %s on %s: %s\n", name, pbw_device_name(dev), pbw_ctx_failed(ctx) ? pbw_ctx_error(ctx) : "no output");
        goto done;
    }
    o->ny = y->numel;
    o->y = malloc((size_t)y->numel * sizeof(float) + 1);
    if (!o->y || pbw_tensor_read(ctx, y, o->y)) goto done;
    if (any_grad && y->requires_grad) {
        float *seed = y->numel > 1 ? malloc((size_t)y->numel * sizeof(float)) : NULL;
        pbw_rng r = *seed_rng;
        for (int64_t k = 0; seed && k < y->numel; k++)
            seed[k] = (float)(2 * pbw_rng_uniform(&r) - 1);
        const int brc = (y->numel > 1 && !seed) || pbw_backward(ctx, y, seed, &err);
        free(seed);
        if (brc) {
            fprintf(stderr, "  %s backward on %s: %s\n", name, pbw_device_name(dev), err.msg);
            goto done;
        }
        for (int i = 0; i < nin; i++) {
            if (!in[i].requires_grad || !t[i]->grad) continue;
            o->ng[i] = t[i]->numel;
            o->g[i] = malloc((size_t)t[i]->numel * sizeof(float) + 1);
            const float *h = pbw_grad_host(ctx, t[i]);
            if (!o->g[i] || !h) goto done;
            memcpy(o->g[i], h, (size_t)t[i]->numel * sizeof(float));
        }
    }
    rc = pbw_ctx_check(ctx, &err);
    if (rc) fprintf(stderr, "  %s on %s: %s\n", name, pbw_device_name(dev), err.msg);
done:
    pbw_ctx_free(ctx);
    return rc;
}

void parity_outputs_free(parity_outputs *o) {
    free(o->y);
    for (int i = 0; i < 8; i++) free(o->g[i]);
    memset(o, 0, sizeof *o);
}

/* The inputs of every run (host_in[i], uniform in in[i]'s range) from one fixed seed, and in
 * *seed_rng the generator's state after them, from which run_on draws the output gradient. */
static void draw(int nin, const parity_input *in, float **host_in, pbw_rng *seed_rng) {
    pbw_rng_seed(seed_rng, 1234);
    for (int i = 0; i < nin; i++) {
        int64_t n = 1;
        for (int d = 0; d < in[i].ndim; d++) n *= in[i].shape[d];
        host_in[i] = malloc((size_t)n * sizeof(float) + 1);
        float lo = in[i].lo, hi = in[i].hi;
        if (lo == 0 && hi == 0) {
            lo = -1;
            hi = 1;
        }
        for (int64_t k = 0; k < n; k++) host_in[i][k] = lo + (hi - lo) * (float)pbw_rng_uniform(seed_rng);
    }
}

int parity_run(pbw_device dev, parity_fn f, void *arg, int nin, const parity_input *in,
               const char *name, parity_outputs *o) {
    memset(o, 0, sizeof *o);
    if (nin > 8) return -1;
    float *host_in[8] = {0};
    pbw_rng seed;
    draw(nin, in, host_in, &seed);
    const int rc = run_on(dev, f, arg, nin, in, host_in, &seed, o, name);
    for (int i = 0; i < nin; i++) free(host_in[i]);
    return rc;
}

int parity_check(const char *name, parity_fn f, void *arg, int nin, const parity_input *in,
                 double tol) {
    if (nin > 8) return 1;
    float *host_in[8] = {0};
    pbw_rng seed;
    draw(nin, in, host_in, &seed);
    parity_outputs a = {0}, b = {0};
    int bad = 0;
    if (run_on(PBW_DEV_CPU, f, arg, nin, in, host_in, &seed, &a, name) ||
        run_on(PBW_DEV_CUDA, f, arg, nin, in, host_in, &seed, &b, name)) {
        bad = 1;
        goto done;
    }
    if (a.ny != b.ny) {
        fprintf(stderr, "  %s: output sizes differ (%lld vs %lld)\n", name, (long long)a.ny, (long long)b.ny);
        bad = 1;
        goto done;
    }
    double e = rel_err(a.y, b.y, a.ny);
    printf("  %-28s output      rel err %.2e (tol %.0e)%s\n", name, e, tol, e <= tol ? "" : "  FAIL");
    bad += !(e <= tol);
    for (int i = 0; i < nin; i++) {
        if (!in[i].requires_grad) continue;
        if (!a.g[i] || !b.g[i]) {
            if (a.g[i] || b.g[i]) {
                fprintf(stderr, "  %s: gradient of input %d reached only one device\n", name, i);
                bad++;
            }
            continue;
        }
        double eg = rel_err(a.g[i], b.g[i], a.ng[i]);
        printf("  %-28s grad in[%d]  rel err %.2e (tol %.0e)%s\n", name, i, eg, tol,
               eg <= tol ? "" : "  FAIL");
        bad += !(eg <= tol);
    }
done:
    parity_outputs_free(&a);
    parity_outputs_free(&b);
    for (int i = 0; i < nin; i++) free(host_in[i]);
    return bad;
}
