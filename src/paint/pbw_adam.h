/* pbw_adam.h: Adam driven by the one-cycle learning-rate schedule, the gradient optimizer of
 * the painting loop (DESIGN.md section 2: 100 steps, max lr 0.01).
 *
 *     pbw_adam_opts o;
 *     pbw_adam_opts_default(&o, 100);     // one-cycle over 100 steps, the painting defaults
 *     pbw_adam adam; pbw_err err;
 *     if (pbw_adam_init(&adam, n, &o, &err)) { puts(err.msg); return 1; }
 *     for (int t = 0; t < 100; t++) {
 *         loss_and_grad(w, g);                 // g = dloss/dw at w, (n) floats
 *         if (pbw_adam_step(&adam, w, g, &err)) ...;   // updates w in place
 *     }
 *     pbw_adam_free(&adam);
 *
 * Semantics are those of PyTorch 1.13's torch.optim.Adam (amsgrad off, weight decay 0 unless
 * set, eps 1e-8 added after the bias-corrected square root) stepped once per iteration, followed
 * by torch.optim.lr_scheduler.OneCycleLR.step(): step t (0-based) uses the lr and beta1 that
 * OneCycleLR computes for step_num = t. With cycle_momentum, beta1 follows the momentum
 * schedule and, as in PyTorch, the bias correction of step t uses that step's beta1
 * (1 - beta1_t^(t+1)). The moment buffers are float32 like PyTorch's, updated with the same
 * roundings as its AVX2 CPU kernels, so the trajectory matches PyTorch's bit for bit
 * (tests/test_optim.c; see pbw_adam.c).
 *
 * Not here: AMSGrad, AdamW's decoupled decay, per-parameter groups.
 * Ownership: pbw_adam_init allocates the moment buffers, pbw_adam_free releases them.
 */
#ifndef PBW_ADAM_H
#define PBW_ADAM_H

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* torch.optim.lr_scheduler.OneCycleLR's arguments. */
typedef struct pbw_onecycle {
    int total_steps;         /* > 0 */
    double max_lr;           /* 0.01 for painting */
    double pct_start;        /* 0.3: share of the cycle spent warming up */
    int anneal_cos;          /* 1: cosine annealing (default), 0: linear */
    int cycle_momentum;      /* 1: beta1 cycles between max_momentum and base_momentum */
    double base_momentum;    /* 0.85 */
    double max_momentum;     /* 0.95 */
    double div_factor;       /* 25: initial_lr = max_lr / div_factor */
    double final_div_factor; /* 1e4: min_lr = initial_lr / final_div_factor */
    int three_phase;         /* 0 */
} pbw_onecycle;

/* PyTorch's defaults with the given max_lr and total_steps. */
void pbw_onecycle_default(pbw_onecycle *s, double max_lr, int total_steps);

/* lr and beta1 (momentum) for step_num in [0, total_steps]; fails (like PyTorch) beyond, or on
 * inconsistent settings. beta1 is left untouched when cycle_momentum is 0. */
int pbw_onecycle_at(const pbw_onecycle *s, int step_num, double *lr, double *beta1, pbw_err *err);

typedef struct pbw_adam_opts {
    double lr;           /* used when use_schedule is 0 */
    double beta1, beta2; /* (0.9, 0.999); beta1 is replaced by the schedule's when it cycles */
    double eps;          /* 1e-8 */
    double weight_decay; /* 0: L2 added to the gradient, as torch.optim.Adam */
    int use_schedule;    /* 1: lr (and beta1) from the one-cycle schedule */
    pbw_onecycle schedule;
} pbw_adam_opts;

/* Painting defaults: one-cycle with max_lr 0.01 over total_steps, PyTorch's other defaults. */
void pbw_adam_opts_default(pbw_adam_opts *o, int total_steps);

typedef struct pbw_adam {
    int n;
    pbw_adam_opts opts;
    float *m;    /* (n) first moment, float32 as PyTorch's exp_avg */
    float *v;    /* (n) second moment, exp_avg_sq */
    long t;      /* steps taken */
    double lr;   /* lr used by the last step */
    double beta1; /* beta1 used by the last step */
} pbw_adam;

int pbw_adam_init(pbw_adam *a, int n, const pbw_adam_opts *opts, pbw_err *err);
void pbw_adam_free(pbw_adam *a);

/* One step: param (n) -= lr_t * mhat / (sqrt(vhat) + eps) from grad (n). Fails when the
 * schedule is exhausted (more than total_steps + 1 steps, as PyTorch's scheduler raises). */
int pbw_adam_step(pbw_adam *a, float *param /* (n) */, const float *grad /* (n) */,
                  pbw_err *err);

/* One step's coefficients, as the update rounds them (float32), and the lr and beta1 behind
 * them. The update of element i, with m, v its moments (pbw_adam_apply, and the same roundings
 * on a GPU, pbw_cuda_adam_queued):
 *   g = fmaf(wd, p, g) (where wd != 0);  m = fmaf(omb1, g, m * b1);  v = fmaf(omb2 * g, g, v * b2);
 *   p = p + (neg_step * m) / (sqrtf(v) / bc2 + eps). */
typedef struct pbw_adam_coef {
    float b1, omb1, b2, omb2, bc2, eps, neg_step, wd;
    double lr, beta1;
} pbw_adam_coef;
enum { PBW_ADAM_COEFS = 8 }; /* the floats of pbw_adam_coef, b1 .. wd, in that order */

/* The coefficients of the next step (step a->t + 1), without taking it. 0, or -1 (err set) when
 * the schedule is exhausted. */
int pbw_adam_coef_next(const pbw_adam *a, pbw_adam_coef *c, pbw_err *err);
/* Counts a step taken with c elsewhere (on a GPU): t, lr and beta1 as pbw_adam_step leaves them. */
void pbw_adam_advance(pbw_adam *a, const pbw_adam_coef *c);
/* The update with c of n parameters and their moments m, v, in place. */
void pbw_adam_apply(const pbw_adam_coef *c, int n, float *param, const float *grad, float *m,
                    float *v);

#ifdef __cplusplus
}
#endif
#endif
