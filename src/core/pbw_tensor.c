/* pbw_tensor.c: tensors, the context (arenas, scratch, sticky errors) and the gradient tape. */
#include "pbw_tensor.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Tensors outside the activation arena whose grad we set: their grad pointer must be cleared
 * on reset, since the buffer lives in the arena. */
typedef struct grad_owner {
    pbw_tensor *t;
    struct grad_owner *next;
} grad_owner;

struct pbw_ctx {
    pbw_device dev;
    pbw_arena act;
    pbw_node *tape;
    grad_owner *grads;
    int grad_enabled;
    int failed;
    char msg[512];
    void *scratch[PBW_SCRATCH_SLOTS];
    size_t scratch_size[PBW_SCRATCH_SLOTS];
};

pbw_ctx *pbw_ctx_new(pbw_device dev, pbw_err *err) {
    if (dev != PBW_DEV_CPU) {
        pbw_err_set(err, "device %d is not supported by this build", (int)dev);
        return NULL;
    }
    pbw_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        pbw_err_set(err, "out of memory creating a context");
        return NULL;
    }
    ctx->dev = dev;
    ctx->grad_enabled = 1;
    pbw_arena_init(&ctx->act, (size_t)16 << 20);
    return ctx;
}

void pbw_ctx_free(pbw_ctx *ctx) {
    if (!ctx) return;
    pbw_ctx_reset(ctx);
    pbw_arena_free(&ctx->act);
    for (int i = 0; i < PBW_SCRATCH_SLOTS; i++) free(ctx->scratch[i]);
    free(ctx);
}

void pbw_ctx_reset(pbw_ctx *ctx) {
    for (grad_owner *g = ctx->grads; g; g = g->next) g->t->grad = NULL;
    ctx->grads = NULL;
    ctx->tape = NULL;
    ctx->failed = 0;
    ctx->msg[0] = 0;
    pbw_arena_reset(&ctx->act);
}

int pbw_ctx_set_grad(pbw_ctx *ctx, int enabled) {
    int old = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return old;
}

pbw_device pbw_ctx_device(const pbw_ctx *ctx) { return ctx->dev; }
int pbw_ctx_failed(const pbw_ctx *ctx) { return ctx->failed; }
const char *pbw_ctx_error(const pbw_ctx *ctx) { return ctx->failed ? ctx->msg : ""; }
size_t pbw_ctx_mem_used(const pbw_ctx *ctx) { return ctx->act.used; }
size_t pbw_ctx_mem_peak(const pbw_ctx *ctx) { return ctx->act.peak; }
pbw_arena *pbw_ctx_arena(pbw_ctx *ctx) { return &ctx->act; }

void *pbw_ctx_fail(pbw_ctx *ctx, const char *fmt, ...) {
    if (!ctx->failed) { /* keep the first error: later ones are usually its consequences */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->msg, sizeof ctx->msg, fmt, ap);
        va_end(ap);
        ctx->failed = 1;
    }
    return NULL;
}

int pbw_ctx_check(const pbw_ctx *ctx, pbw_err *err) {
    if (!ctx->failed) return 0;
    return pbw_err_set(err, "%s", ctx->msg);
}

void *pbw_ctx_scratch(pbw_ctx *ctx, int slot, size_t bytes) {
    PBW_ASSERT(slot >= 0 && slot < PBW_SCRATCH_SLOTS);
    if (bytes > ctx->scratch_size[slot]) {
        free(ctx->scratch[slot]);
        size_t sz = (bytes + 63) / 64 * 64;
        ctx->scratch[slot] = aligned_alloc(64, sz);
        ctx->scratch_size[slot] = ctx->scratch[slot] ? sz : 0;
        if (!ctx->scratch[slot]) return pbw_ctx_fail(ctx, "out of memory (%zu bytes of scratch)", bytes);
    }
    return ctx->scratch[slot];
}

int pbw_shape_set(pbw_tensor *t, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > PBW_MAX_DIMS) return -1;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] && n > INT64_MAX / 8 / shape[i]) return -1; /* bytes must fit in int64 */
        n *= shape[i];
        t->shape[i] = shape[i];
    }
    for (int i = ndim; i < PBW_MAX_DIMS; i++) t->shape[i] = 1;
    t->ndim = ndim;
    t->numel = n;
    return 0;
}

int pbw_shape_equal(const pbw_tensor *a, const pbw_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

const char *pbw_shape_str(const pbw_tensor *t, char *buf, size_t len) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "(");
    for (int i = 0; i < t->ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ",%lld" : "%lld", (long long)t->shape[i]);
    if (o < len) snprintf(buf + o, len - o, ")");
    return buf;
}

static pbw_tensor *tensor_alloc(pbw_arena *a, int ndim, const int64_t *shape, int with_data,
                                const char **why) {
    pbw_tensor tmp;
    memset(&tmp, 0, sizeof tmp);
    if (pbw_shape_set(&tmp, ndim, shape) != 0) {
        *why = "bad shape";
        return NULL;
    }
    pbw_tensor *t = pbw_arena_alloc(a, sizeof *t);
    if (!t) {
        *why = "out of memory";
        return NULL;
    }
    *t = tmp;
    t->dtype = PBW_F32;
    if (with_data) {
        t->data = pbw_arena_alloc(a, (size_t)t->numel * sizeof(float));
        if (!t->data) {
            *why = "out of memory";
            return NULL;
        }
    }
    return t;
}

pbw_tensor *pbw_tensor_new(pbw_ctx *ctx, int ndim, const int64_t *shape) {
    if (ctx->failed) return NULL;
    const char *why = NULL;
    pbw_tensor *t = tensor_alloc(&ctx->act, ndim, shape, 1, &why);
    if (!t) return pbw_ctx_fail(ctx, "cannot make a tensor of rank %d: %s", ndim, why);
    t->device = ctx->dev;
    return t;
}

pbw_tensor *pbw_tensor_zeros(pbw_ctx *ctx, int ndim, const int64_t *shape) {
    pbw_tensor *t = pbw_tensor_new(ctx, ndim, shape);
    if (t) memset(t->data, 0, (size_t)t->numel * sizeof(float));
    return t;
}

pbw_tensor *pbw_tensor_new_in(pbw_arena *a, int ndim, const int64_t *shape, pbw_err *err) {
    const char *why = NULL;
    pbw_tensor *t = tensor_alloc(a, ndim, shape, 1, &why);
    if (!t) pbw_err_set(err, "cannot make a tensor of rank %d: %s", ndim, why);
    return t;
}

pbw_tensor *pbw_tensor_wrap(pbw_ctx *ctx, float *data, int ndim, const int64_t *shape) {
    if (ctx->failed) return NULL;
    const char *why = NULL;
    pbw_tensor *t = tensor_alloc(&ctx->act, ndim, shape, 0, &why);
    if (!t) return pbw_ctx_fail(ctx, "cannot wrap a tensor of rank %d: %s", ndim, why);
    t->data = data;
    t->device = ctx->dev;
    return t;
}

pbw_tensor *pbw_tensor_copy(pbw_ctx *ctx, const pbw_tensor *x) {
    if (!x) return NULL;
    pbw_tensor *t = pbw_tensor_new(ctx, x->ndim, x->shape);
    if (t) memcpy(t->data, x->data, (size_t)x->numel * sizeof(float));
    return t;
}

pbw_tensor *pbw_tensor_to_f32(pbw_ctx *ctx, pbw_tensor *x) {
    if (!x) return NULL;
    if (x->dtype == PBW_F32) return x;
    pbw_tensor *t = pbw_tensor_new(ctx, x->ndim, x->shape);
    if (!t) return NULL;
    if (pbw_convert_to_f32(x->dtype, x->raw, (size_t)x->numel, t->data) != 0)
        return pbw_ctx_fail(ctx, "cannot convert %s to float32", pbw_dtype_name(x->dtype));
    return t;
}

/* --- profiler (PBW_PROFILE=1): time per op name, forward and backward ---
 * Forward time of an op is the time since the previous tape event, so it is exact only when
 * every op records (a pass whose input needs a gradient); backward time is per node. Global
 * and unsynchronized: for benchmarks, one context at a time. */
#define PROF_MAX 128
typedef struct prof_entry {
    const char *op;
    int backward;
    double sec;
    long calls;
} prof_entry;
static prof_entry g_prof[PROF_MAX];
static int g_nprof, g_prof_on = -1;
static double g_prof_last;

static double prof_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int pbw_profile_enabled(void) {
    if (g_prof_on < 0) {
        const char *e = getenv("PBW_PROFILE");
        g_prof_on = e && *e && strcmp(e, "0") != 0;
    }
    return g_prof_on;
}

void pbw_profile_mark(void) { g_prof_last = prof_now(); }

static void prof_add(const char *op, int backward, double sec) {
    int i = 0;
    while (i < g_nprof && (g_prof[i].backward != backward || strcmp(g_prof[i].op, op))) i++;
    if (i == g_nprof) {
        if (g_nprof == PROF_MAX) return;
        g_prof[g_nprof++] = (prof_entry){op, backward, 0, 0};
    }
    g_prof[i].sec += sec;
    g_prof[i].calls++;
}

static int prof_cmp(const void *a, const void *b) {
    double x = ((const prof_entry *)a)->sec, y = ((const prof_entry *)b)->sec;
    return (x < y) - (x > y);
}

void pbw_profile_report(FILE *f, double scale) {
    double total = 0;
    for (int i = 0; i < g_nprof; i++) total += g_prof[i].sec;
    qsort(g_prof, (size_t)g_nprof, sizeof g_prof[0], prof_cmp);
    fprintf(f, "%-24s %-9s %10s %8s %6s\n", "op", "pass", "ms", "calls", "%");
    for (int i = 0; i < g_nprof; i++)
        fprintf(f, "%-24s %-9s %10.2f %8.0f %6.1f\n", g_prof[i].op,
                g_prof[i].backward ? "backward" : "forward", 1e3 * g_prof[i].sec * scale,
                (double)g_prof[i].calls * scale, total > 0 ? 100 * g_prof[i].sec / total : 0);
    fprintf(f, "%-24s %-9s %10.2f\n", "total", "", 1e3 * total * scale);
    g_nprof = 0;
}

int pbw_needs_grad(pbw_ctx *ctx, pbw_tensor *const *in, int nin) {
    if (!ctx->grad_enabled) return 0;
    for (int i = 0; i < nin; i++)
        if (in[i] && in[i]->requires_grad) return 1;
    return 0;
}

pbw_node *pbw_tape_push(pbw_ctx *ctx, const char *op, pbw_backward_fn fn, pbw_tensor *out,
                        pbw_tensor *const *in, int nin, size_t saved_bytes) {
    PBW_ASSERT(nin <= PBW_NODE_MAX_IN);
    pbw_node *n = pbw_arena_calloc(&ctx->act, sizeof *n);
    if (!n) return pbw_ctx_fail(ctx, "out of memory recording %s", op);
    if (saved_bytes) {
        n->saved = pbw_arena_calloc(&ctx->act, saved_bytes);
        if (!n->saved) return pbw_ctx_fail(ctx, "out of memory recording %s", op);
    }
    n->backward = fn;
    n->op = op;
    n->out = out;
    n->nin = nin;
    for (int i = 0; i < nin; i++) n->in[i] = in[i];
    n->prev = ctx->tape;
    ctx->tape = n;
    out->requires_grad = 1;
    if (pbw_profile_enabled()) {
        double t = prof_now();
        prof_add(op, 0, t - g_prof_last);
        g_prof_last = t;
    }
    return n;
}

float *pbw_grad(pbw_ctx *ctx, pbw_tensor *t) {
    if (!t || !t->requires_grad) return NULL;
    if (t->grad) return t->grad;
    t->grad = pbw_arena_calloc(&ctx->act, (size_t)t->numel * sizeof(float));
    if (!t->grad) return pbw_ctx_fail(ctx, "out of memory for a gradient");
    grad_owner *g = pbw_arena_alloc(&ctx->act, sizeof *g);
    if (!g) return pbw_ctx_fail(ctx, "out of memory for a gradient");
    g->t = t;
    g->next = ctx->grads;
    ctx->grads = g;
    return t->grad;
}

int pbw_backward(pbw_ctx *ctx, pbw_tensor *loss, const float *seed, pbw_err *err) {
    if (!loss) return pbw_ctx_check(ctx, err) ? -1 : pbw_err_set(err, "backward of a NULL tensor");
    if (pbw_ctx_check(ctx, err)) return -1;
    if (!loss->requires_grad)
        return pbw_err_set(err, "backward: the loss does not depend on any tensor that requires a gradient");
    float *g = pbw_grad(ctx, loss);
    if (!g) return pbw_ctx_check(ctx, err);
    for (int64_t i = 0; i < loss->numel; i++) g[i] += seed ? seed[i] : 1.0f;
    for (pbw_node *n = ctx->tape; n; n = n->prev) {
        if (!n->out->grad) continue; /* nothing downstream of this op reached the loss */
        double t0 = pbw_profile_enabled() ? prof_now() : 0;
        n->backward(ctx, n);
        if (t0 > 0) prof_add(n->op, 1, prof_now() - t0);
        if (ctx->failed) return pbw_ctx_check(ctx, err);
    }
    return 0;
}
