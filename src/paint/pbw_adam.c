/* pbw_adam.c: Adam + one-cycle schedule, step for step as PyTorch 1.13 (see pbw_adam.h).
 *
 * Float32 arithmetic follows PyTorch's CPU kernels as they run on x86-64 with AVX2 (the
 * vectorized path every tensor of 8 or more floats takes): scalars are rounded to float before
 * they meet a tensor; mul_ is one rounding; add_(b, alpha) and addcmul_(b, c, value) are fused
 * multiply-adds, fma(alpha, b, a) and fma(value * b, c, a); addcdiv_(b, c, value) is
 * a + (value * b) / c with three roundings. fmaf() gives the fused result on every machine (in
 * hardware with FMA, in software without), so the trajectory is bit-identical to PyTorch's
 * there: tests/test_optim.c finds zero difference over the fixtures' 150 steps. Unfused
 * arithmetic would drift by ~1e-6 relative over 100 steps. */
#include "pbw_adam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void pbw_onecycle_default(pbw_onecycle *s, double max_lr, int total_steps) {
    memset(s, 0, sizeof *s);
    s->total_steps = total_steps;
    s->max_lr = max_lr;
    s->pct_start = 0.3;
    s->anneal_cos = 1;
    s->cycle_momentum = 1;
    s->base_momentum = 0.85;
    s->max_momentum = 0.95;
    s->div_factor = 25.0;
    s->final_div_factor = 1e4;
    s->three_phase = 0;
}

static double anneal(int cos_anneal, double start, double end, double pct) {
    if (cos_anneal) return end + (start - end) / 2.0 * (cos(M_PI * pct) + 1.0);
    return (end - start) * pct + start;
}

int pbw_onecycle_at(const pbw_onecycle *s, int step_num, double *lr, double *beta1, pbw_err *err) {
    if (s->total_steps <= 0)
        return pbw_err_set(err, "one-cycle: total_steps must be positive, got %d", s->total_steps);
    if (!(s->pct_start >= 0 && s->pct_start <= 1))
        return pbw_err_set(err, "one-cycle: pct_start must lie in [0, 1], got %g", s->pct_start);
    if (!(s->div_factor > 0) || !(s->final_div_factor > 0))
        return pbw_err_set(err, "one-cycle: div_factor and final_div_factor must be positive");
    if (step_num < 0 || step_num > s->total_steps)
        return pbw_err_set(err, "one-cycle: step %d is outside the schedule of %d steps",
                           step_num, s->total_steps);
    double initial_lr = s->max_lr / s->div_factor;
    double min_lr = initial_lr / s->final_div_factor;
    double T = s->total_steps, p = s->pct_start;
    /* phases as PyTorch lists them: end step, lr from/to, momentum from/to */
    double end[3], lr0[3], lr1[3], m0[3], m1[3];
    int nph;
    if (s->three_phase) {
        nph = 3;
        end[0] = p * T - 1, lr0[0] = initial_lr, lr1[0] = s->max_lr;
        m0[0] = s->max_momentum, m1[0] = s->base_momentum;
        end[1] = 2 * p * T - 2, lr0[1] = s->max_lr, lr1[1] = initial_lr;
        m0[1] = s->base_momentum, m1[1] = s->max_momentum;
        end[2] = T - 1, lr0[2] = initial_lr, lr1[2] = min_lr;
        m0[2] = s->max_momentum, m1[2] = s->max_momentum;
    } else {
        nph = 2;
        end[0] = p * T - 1, lr0[0] = initial_lr, lr1[0] = s->max_lr;
        m0[0] = s->max_momentum, m1[0] = s->base_momentum;
        end[1] = T - 1, lr0[1] = s->max_lr, lr1[1] = min_lr;
        m0[1] = s->base_momentum, m1[1] = s->max_momentum;
    }
    double start = 0;
    for (int i = 0; i < nph; i++) {
        if (step_num <= end[i] || i == nph - 1) {
            /* PyTorch divides by (end - start) unguarded: a zero-length phase (e.g. total_steps
             * 1) raises ZeroDivisionError there; we report it. */
            if (end[i] - start == 0)
                return pbw_err_set(err, "one-cycle: phase %d has zero length (total_steps %d, "
                                        "pct_start %g)", i, s->total_steps, s->pct_start);
            double pct = (step_num - start) / (end[i] - start);
            *lr = anneal(s->anneal_cos, lr0[i], lr1[i], pct);
            if (s->cycle_momentum) *beta1 = anneal(s->anneal_cos, m0[i], m1[i], pct);
            return 0;
        }
        start = end[i];
    }
    return pbw_err_set(err, "one-cycle: no phase for step %d", step_num); /* unreachable */
}

void pbw_adam_opts_default(pbw_adam_opts *o, int total_steps) {
    memset(o, 0, sizeof *o);
    o->lr = 0.01;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->weight_decay = 0;
    o->use_schedule = 1;
    pbw_onecycle_default(&o->schedule, 0.01, total_steps);
}

int pbw_adam_init(pbw_adam *a, int n, const pbw_adam_opts *opts, pbw_err *err) {
    memset(a, 0, sizeof *a);
    if (n < 1) return pbw_err_set(err, "adam: parameter count must be >= 1, got %d", n);
    if (!(opts->beta1 >= 0 && opts->beta1 < 1) || !(opts->beta2 >= 0 && opts->beta2 < 1))
        return pbw_err_set(err, "adam: betas must lie in [0, 1), got (%g, %g)", opts->beta1,
                           opts->beta2);
    if (!(opts->eps >= 0)) return pbw_err_set(err, "adam: eps must be >= 0, got %g", opts->eps);
    if (opts->use_schedule) {
        double lr, b1 = opts->beta1;
        if (pbw_onecycle_at(&opts->schedule, 0, &lr, &b1, err))
            return pbw_err_prefix(err, "adam: ");
    } else if (!(opts->lr >= 0)) {
        return pbw_err_set(err, "adam: lr must be >= 0, got %g", opts->lr);
    }
    a->m = calloc((size_t)n, sizeof *a->m);
    a->v = calloc((size_t)n, sizeof *a->v);
    if (!a->m || !a->v) {
        pbw_adam_free(a);
        return pbw_err_set(err, "adam: out of memory for %d parameters", n);
    }
    a->n = n;
    a->opts = *opts;
    a->beta1 = opts->beta1;
    a->lr = opts->lr;
    return 0;
}

void pbw_adam_free(pbw_adam *a) {
    free(a->m);
    free(a->v);
    a->m = a->v = NULL;
}

int pbw_adam_coef_next(const pbw_adam *a, pbw_adam_coef *c, pbw_err *err) {
    const pbw_adam_opts *o = &a->opts;
    double lr = o->lr, beta1 = o->beta1, beta2 = o->beta2;
    if (o->use_schedule && pbw_onecycle_at(&o->schedule, (int)a->t, &lr, &beta1, err))
        return pbw_err_prefix(err, "adam step %ld: ", a->t + 1);
    double step = (double)(a->t + 1);
    double step_size = lr / (1.0 - pow(beta1, step));
    double bc2_sqrt = sqrt(1.0 - pow(beta2, step));
    c->lr = lr;
    c->beta1 = beta1;
    c->b1 = (float)beta1;
    c->omb1 = (float)(1.0 - beta1);
    c->b2 = (float)beta2;
    c->omb2 = (float)(1.0 - beta2);
    c->bc2 = (float)bc2_sqrt;
    c->eps = (float)o->eps;
    c->neg_step = (float)(-step_size);
    c->wd = (float)o->weight_decay;
    return 0;
}

void pbw_adam_advance(pbw_adam *a, const pbw_adam_coef *c) {
    a->t++;
    a->lr = c->lr;
    a->beta1 = c->beta1;
}

void pbw_adam_apply(const pbw_adam_coef *c, int n, float *param, const float *grad, float *m,
                    float *v) {
    for (int i = 0; i < n; i++) {
        float g = grad[i];
        if (c->wd != 0) g = fmaf(c->wd, param[i], g);    /* grad.add(param, alpha=wd) */
        float mi = fmaf(c->omb1, g, m[i] * c->b1);       /* mul_(b1).add_(g, 1 - b1) */
        float vi = fmaf(c->omb2 * g, g, v[i] * c->b2);   /* mul_(b2).addcmul_(g, g, 1 - b2) */
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / c->bc2 + c->eps;
        param[i] = param[i] + (c->neg_step * mi) / denom;
    }
}

int pbw_adam_step(pbw_adam *a, float *param, const float *grad, pbw_err *err) {
    pbw_adam_coef c;
    if (pbw_adam_coef_next(a, &c, err)) return -1;
    pbw_adam_advance(a, &c);
    pbw_adam_apply(&c, a->n, param, grad, a->m, a->v);
    return 0;
}
