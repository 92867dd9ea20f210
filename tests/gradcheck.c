/* gradcheck.c: finite-difference gradient checks for ops (see gradcheck.h). */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"

void gc_fill(float *x, int64_t n, uint64_t seed, float lo, float hi) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        double u = (double)(s >> 11) / 9007199254740992.0;
        x[i] = (float)(lo + (hi - lo) * u);
    }
}

float *gc_rand(int64_t n, uint64_t seed, float lo, float hi) {
    float *x = malloc((size_t)(n ? n : 1) * sizeof(float));
    gc_fill(x, n, seed, lo, hi);
    return x;
}

double gc_max_diff(const float *a, const float *b, int64_t n, double *ref_max) {
    double d = 0, r = 0;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (isnan(e)) nan = 1;
        else if (e > d) d = e;
        if (fabs((double)b[i]) > r) r = fabs((double)b[i]);
    }
    if (ref_max) *ref_max = r;
    return nan ? NAN : d;
}

int gc_compare(const char *what, const float *a, const float *b, int64_t n, double atol,
               double rtol) {
    int bad = 0;
    double worst = -1;
    int64_t wi = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double lim = atol + rtol * fabs((double)b[i]);
        if (!(d <= lim)) bad++;
        double score = d / lim;
        if (!(score <= worst)) { worst = score; wi = i; }
        if (isnan(d)) { worst = INFINITY; wi = i; }
    }
    if (bad)
        fprintf(stderr, "  %s: %d of %lld out of tolerance; worst at %lld: %.9g vs %.9g\n", what,
                bad, (long long)n, (long long)wi, a[wi], b[wi]);
    return bad;
}

/* Evaluates L = sum R*out in double with gradients off. */
static int eval_loss(pbw_ctx *ctx, gc_fn f, void *user, int nin, pbw_tensor **t, const float *R,
                     int64_t nout, double *L) {
    pbw_ctx_reset(ctx);
    int old = pbw_ctx_set_grad(ctx, 0);
    pbw_tensor *out = f(ctx, t, user);
    pbw_ctx_set_grad(ctx, old);
    if (!out || pbw_ctx_failed(ctx) || out->numel != nout) return -1;
    double s = 0;
    for (int64_t i = 0; i < nout; i++) s += (double)R[i] * (double)out->data[i];
    *L = s;
    (void)nin;
    return 0;
}

int gc_check(const char *name, gc_fn f, void *user, int nin, gc_input *in, gc_opts o) {
    if (o.eps == 0) o.eps = 1e-2;
    if (o.atol == 0) o.atol = 2e-3;
    if (o.rtol == 0) o.rtol = 1e-2;
    if (o.max_checks == 0) o.max_checks = 48;
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_arena keep;
    pbw_arena_init(&keep, 1 << 16);
    pbw_tensor *t[8];
    for (int i = 0; i < nin; i++) {
        t[i] = pbw_tensor_new_in(&keep, in[i].ndim, in[i].shape, &err);
        memcpy(t[i]->data, in[i].data, (size_t)t[i]->numel * sizeof(float));
        t[i]->requires_grad = in[i].grad;
    }
    int bad = 0;
    pbw_tensor *out = f(ctx, t, user);
    if (!out || pbw_ctx_failed(ctx)) {
        fprintf(stderr, "  %s: forward failed: %s\n", name, pbw_ctx_error(ctx));
        bad = -1;
        goto done;
    }
    int64_t nout = out->numel;
    float *R = gc_rand(nout, 12345, -1.0f, 1.0f);
    if (pbw_backward(ctx, out, R, &err) != 0) {
        fprintf(stderr, "  %s: backward failed: %s\n", name, err.msg);
        free(R);
        bad = -1;
        goto done;
    }
    float *ana[8] = {0};
    for (int i = 0; i < nin; i++) {
        if (!in[i].grad) continue;
        ana[i] = calloc((size_t)t[i]->numel, sizeof(float));
        if (t[i]->grad) memcpy(ana[i], t[i]->grad, (size_t)t[i]->numel * sizeof(float));
    }
    double worst = 0;
    for (int i = 0; i < nin; i++) {
        if (!in[i].grad) continue;
        int64_t n = t[i]->numel;
        int64_t step = n <= o.max_checks ? 1 : n / o.max_checks;
        for (int64_t j = 0; j < n; j += step) {
            int64_t k = step == 1 ? j : (j + (j * 7919) % step) % n; /* jitter the sampled index */
            float x0 = t[i]->data[k];
            double Lp, Lm;
            t[i]->data[k] = (float)(x0 + o.eps);
            int ok = eval_loss(ctx, f, user, nin, t, R, nout, &Lp);
            t[i]->data[k] = (float)(x0 - o.eps);
            ok |= eval_loss(ctx, f, user, nin, t, R, nout, &Lm);
            t[i]->data[k] = x0;
            if (ok) {
                fprintf(stderr, "  %s: forward failed during finite differences: %s\n", name,
                        pbw_ctx_error(ctx));
                bad = -1;
                break;
            }
            /* perturbing x by +-eps in float may land on a slightly different value */
            double num = (Lp - Lm) / (double)((float)(x0 + o.eps) - (float)(x0 - o.eps));
            double d = fabs(num - ana[i][k]);
            double lim = o.atol + o.rtol * fabs(num);
            if (d / lim > worst) worst = d / lim;
            if (!(d <= lim)) {
                if (bad < 5)
                    fprintf(stderr, "  %s: input %d elem %lld: analytic %.6g numeric %.6g\n",
                            name, i, (long long)k, ana[i][k], num);
                bad++;
            }
        }
        if (bad < 0) break;
    }
    for (int i = 0; i < nin; i++) free(ana[i]);
    free(R);
    if (bad > 0) fprintf(stderr, "  %s: worst |diff|/tolerance = %.3g\n", name, worst);
done:
    pbw_ctx_free(ctx);
    pbw_arena_free(&keep);
    return bad;
}
