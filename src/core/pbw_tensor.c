/* pbw_tensor.c: tensors, the context (arenas, scratch, sticky errors), the gradient tape and
 * its lanes. */
#include "pbw_tensor.h"

#include "pbw_ops.h" /* pbw_reshape: a side lane's handles */

#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_elementwise.h"
_Static_assert(PBW_LANES == PBW_CUDA_LANES, "a context's scratch sets match the GPU's lanes");
#endif

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
    pbw_arena act;  /* host: tensor headers, tape nodes, saved parameters; CPU tensor data */
    pbw_arena dact; /* CUDA contexts: tensor data, gradients, op temporaries */
    pbw_node *tape;
    grad_owner *grads;
    int grad_enabled;
    int half_acts; /* pbw_ctx_set_half_activations */
    size_t grad_unset_bytes; /* the last backward's gradients left unset (pbw_grad_out) */
    int failed;
    char msg[512];
    int lane_open;  /* a fork (pbw_lane_fork) not joined yet */
    int lane_taped; /* the open fork records its marks on the tape */
    /* scratch slots, one set a GPU lane (pbw_lane_fork): work on two lanes may run at once */
    void *scratch[PBW_LANES][PBW_SCRATCH_SLOTS];
    size_t scratch_size[PBW_LANES][PBW_SCRATCH_SLOTS];
};

/* --- devices --- */

const char *pbw_device_name(pbw_device dev) { return dev == PBW_DEV_CUDA ? "cuda" : "cpu"; }

int pbw_device_init(pbw_device dev, int index, pbw_err *err) {
    if (dev == PBW_DEV_CPU) return 0;
#ifdef PBW_HAVE_CUDA
    return pbw_cuda_init(index, err);
#else
    (void)index;
    return pbw_err_set(err, "this build of pbw has no CUDA support (rebuild with nvcc on PATH)");
#endif
}

int pbw_device_parse(const char *s, pbw_device *dev, int *index, char *why, size_t why_len,
                     pbw_err *err) {
    char dummy[8];
    if (!why) {
        why = dummy;
        why_len = sizeof dummy;
    }
    why[0] = 0;
    *index = 0;
    if (!s || !strcmp(s, "cpu")) {
        *dev = PBW_DEV_CPU;
        snprintf(why, why_len, "cpu (asked for)");
        return 0;
    }
    if (!strncmp(s, "cuda", 4) && (s[4] == 0 || s[4] == ':')) {
        if (s[4] == ':') {
            char *end;
            long v = strtol(s + 5, &end, 10);
            if (s[5] == 0 || *end || v < 0 || v > 64)
                return pbw_err_set(err, "--device: bad CUDA device index in '%s'", s);
            *index = (int)v;
        }
        *dev = PBW_DEV_CUDA;
#ifdef PBW_HAVE_CUDA
        int n = pbw_cuda_device_count();
        if (*index >= n)
            return pbw_err_set(err, "--device %s: this machine has %d CUDA device%s", s, n,
                               n == 1 ? "" : "s");
        snprintf(why, why_len, "cuda:%d (asked for)", *index);
        return 0;
#else
        return pbw_err_set(err, "--device %s: this build of pbw has no CUDA support", s);
#endif
    }
    if (!strcmp(s, "auto")) {
        *dev = PBW_DEV_CPU;
#ifdef PBW_HAVE_CUDA
        int n = pbw_cuda_device_count();
        if (n == 0) {
            snprintf(why, why_len, "cpu (no CUDA device found)");
            return 0;
        }
        pbw_err e = {0};
        if (pbw_cuda_selftest(0, &e) != 0) {
            snprintf(why, why_len, "cpu (cuda:0 failed its self-test: %s)", e.msg);
            return 0;
        }
        char desc[160];
        if (pbw_cuda_describe(0, desc, sizeof desc, &e) != 0) snprintf(desc, sizeof desc, "?");
        *dev = PBW_DEV_CUDA;
        snprintf(why, why_len, "cuda:0, %s", desc);
#else
        snprintf(why, why_len, "cpu (built without CUDA)");
#endif
        return 0;
    }
    return pbw_err_set(err, "--device: '%s' is not auto, cpu, cuda or cuda:N", s);
}

pbw_ctx *pbw_ctx_new(pbw_device dev, pbw_err *err) {
    if (dev != PBW_DEV_CPU && dev != PBW_DEV_CUDA) {
        pbw_err_set(err, "device %d is not supported", (int)dev);
        return NULL;
    }
#ifdef PBW_HAVE_CUDA
    if (dev == PBW_DEV_CUDA && pbw_cuda_current() < 0 && pbw_cuda_init(0, err) != 0) return NULL;
#else
    if (dev == PBW_DEV_CUDA) {
        pbw_err_set(err, "this build of pbw has no CUDA support");
        return NULL;
    }
#endif
    pbw_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        pbw_err_set(err, "out of memory creating a context");
        return NULL;
    }
    ctx->dev = dev;
    ctx->grad_enabled = 1;
    pbw_arena_init(&ctx->act, (size_t)16 << 20);
#ifdef PBW_HAVE_CUDA
    if (dev == PBW_DEV_CUDA) {
        /* PBW_CUDA_ARENA_MIB: the first chunk's size (default 256 MiB; tests make it small to
         * have a pass grow it) */
        const char *e = getenv("PBW_CUDA_ARENA_MIB");
        long mib = e && *e ? strtol(e, NULL, 10) : 256;
        pbw_arena_init_with(&ctx->dact, (size_t)(mib > 0 ? mib : 1) << 20, pbw_cuda_malloc,
                            pbw_cuda_free);
    }
#endif
    return ctx;
}

void pbw_ctx_free(pbw_ctx *ctx) {
    if (!ctx) return;
    pbw_ctx_reset(ctx);
    pbw_arena_free(&ctx->act);
    if (ctx->dev == PBW_DEV_CUDA) {
#ifdef PBW_HAVE_CUDA
        pbw_arena_free(&ctx->dact); /* pbw_cuda_free waits for queued kernels */
        for (int l = 0; l < PBW_LANES; l++)
            for (int i = 0; i < PBW_SCRATCH_SLOTS; i++) pbw_cuda_free(ctx->scratch[l][i]);
#endif
    } else {
        for (int i = 0; i < PBW_SCRATCH_SLOTS; i++) free(ctx->scratch[0][i]);
    }
    free(ctx);
}

enum { LANE_FORK = 1, LANE_MAIN, LANE_JOIN }; /* lane marks (see "lanes" below) */
static void lane_act(pbw_ctx *ctx, int mark, int backward);

void pbw_ctx_reset(pbw_ctx *ctx) {
    /* a fork left open (a pass that failed): the main lane waits for the side lane before the
     * memory is reused */
    if (ctx->lane_open) lane_act(ctx, LANE_JOIN, 0);
    for (grad_owner *g = ctx->grads; g; g = g->next) {
        g->t->grad = NULL;
        g->t->grad_unset = 0;
        g->t->grad_half = NULL;
        g->t->grad_half_copy = NULL;
        g->t->grad_parts = NULL; /* records in the activation arena, reset below */
        g->t->grad_addend = NULL;
        g->t->n_grad_adds = 0;
    }
    ctx->grads = NULL;
    ctx->tape = NULL;
    ctx->failed = 0;
    ctx->msg[0] = 0;
    pbw_arena_reset(&ctx->act);
#ifdef PBW_HAVE_CUDA
    if (ctx->dev == PBW_DEV_CUDA) {
        /* kernels still queued may read the memory being recycled; the stream is in order, so
         * later kernels writing it run after them (chunks freed go through pbw_cuda_free,
         * which waits) */
        pbw_arena_reset(&ctx->dact);
        pbw_cuda_clear_error();
    }
#endif
    ctx->lane_open = ctx->lane_taped = 0;
}

int pbw_ctx_reset_keeps_device_memory(const pbw_ctx *ctx) {
#ifdef PBW_HAVE_CUDA
    if (ctx->dev == PBW_DEV_CUDA) return pbw_arena_reset_keeps(&ctx->dact);
#endif
    (void)ctx;
    return 1;
}

int pbw_ctx_set_grad(pbw_ctx *ctx, int enabled) {
    int old = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return old;
}

int pbw_ctx_set_half_activations(pbw_ctx *ctx, int on) {
    int old = ctx->half_acts;
    ctx->half_acts = on;
    return old;
}

int pbw_ctx_half_activations(const pbw_ctx *ctx) { return ctx->half_acts; }

int pbw_tensor_sync_f32(pbw_ctx *ctx, pbw_tensor *t) {
    if (ctx->failed) return -1;
    if (!t || !t->half_only) return 0;
#ifdef PBW_HAVE_CUDA
    if (t->device == PBW_DEV_CUDA && t->half && t->data && t->half_nhwc) {
        pbw_cuda_nhwc_half_to_f32(t->half, t->data, (int)t->shape[0], (int)t->shape[1],
                                  t->shape[2] * t->shape[3]);
        t->half = NULL; /* no op but the NHWC ones reads that layout */
        t->half_only = t->half_nhwc = 0;
        return 0;
    }
    if (t->device == PBW_DEV_CUDA && t->half && t->data) {
        pbw_cuda_half_to_f32(t->half, t->data, t->numel);
        t->half_only = 0;
        return 0;
    }
#endif
    pbw_ctx_fail(ctx, "a half-precision activation without its buffers");
    return -1;
}

pbw_device pbw_ctx_device(const pbw_ctx *ctx) { return ctx->dev; }
int pbw_ctx_failed(const pbw_ctx *ctx) { return ctx->failed; }
const char *pbw_ctx_error(const pbw_ctx *ctx) { return ctx->failed ? ctx->msg : ""; }
size_t pbw_ctx_mem_used(const pbw_ctx *ctx) {
    return ctx->dev == PBW_DEV_CUDA ? ctx->dact.used : ctx->act.used;
}
size_t pbw_ctx_grad_unset_bytes(const pbw_ctx *ctx) { return ctx->grad_unset_bytes; }

size_t pbw_ctx_mem_peak(const pbw_ctx *ctx) {
    return ctx->dev == PBW_DEV_CUDA ? ctx->dact.peak : ctx->act.peak;
}
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
#ifdef PBW_HAVE_CUDA
    if (!ctx->failed && ctx->dev == PBW_DEV_CUDA && pbw_cuda_error())
        pbw_ctx_fail((pbw_ctx *)ctx, "cuda: %s", pbw_cuda_error());
#endif
    if (!ctx->failed) return 0;
    return pbw_err_set(err, "%s", ctx->msg);
}

void *pbw_ctx_alloc_opt(pbw_ctx *ctx, size_t bytes) {
    if (ctx->failed) return NULL;
    return pbw_arena_alloc(ctx->dev == PBW_DEV_CUDA ? &ctx->dact : &ctx->act, bytes);
}

void *pbw_ctx_alloc(pbw_ctx *ctx, size_t bytes) {
    void *p = pbw_ctx_alloc_opt(ctx, bytes);
    if (!p && !ctx->failed)
        return pbw_ctx_fail(ctx, "out of %s memory (%zu bytes)", pbw_device_name(ctx->dev), bytes);
    return p;
}

/* Zeroes bytes of the context's memory at p (device memory on CUDA); 0, or -1 with the context
 * failed. */
static int ctx_zero(pbw_ctx *ctx, void *p, size_t bytes) {
    if (!bytes) return 0;
#ifdef PBW_HAVE_CUDA
    if (ctx->dev == PBW_DEV_CUDA) {
        if (!pbw_cuda_memset0(p, bytes)) return 0;
        pbw_ctx_fail(ctx, "cuda: %s", pbw_cuda_error());
        return -1;
    }
#endif
    memset(p, 0, bytes);
    return 0;
}

/* Copies bytes between host and the context's memory (dir 0: host to ctx, 1: ctx to host,
 * 2: ctx to ctx). */
static int ctx_copy(pbw_ctx *ctx, void *dst, const void *src, size_t bytes, int dir) {
    if (!bytes) return 0;
#ifdef PBW_HAVE_CUDA
    if (ctx->dev == PBW_DEV_CUDA) {
        int rc = dir == 0 ? pbw_cuda_h2d(dst, src, bytes)
                 : dir == 1 ? pbw_cuda_d2h(dst, src, bytes)
                            : pbw_cuda_d2d(dst, src, bytes);
        if (rc) {
            pbw_ctx_fail(ctx, "cuda: %s", pbw_cuda_error() ? pbw_cuda_error() : "copy failed");
            return -1;
        }
        return 0;
    }
#endif
    (void)dir;
    memcpy(dst, src, bytes);
    return 0;
}

pbw_ctx_mark pbw_ctx_mark_get(pbw_ctx *ctx) {
    pbw_ctx_mark m;
    m.host = pbw_arena_mark_get(&ctx->act);
    m.dev = pbw_arena_mark_get(&ctx->dact);
    m.tape = ctx->tape;
    return m;
}

/* A kept tensor's new header and place (pbw_ctx_release): fp32 data, or an NHWC half copy
 * (half_only) when nhwc; returns where its bytes go, NULL with the context failed. */
static void *kept_new(pbw_ctx *ctx, pbw_tensor **t, int ndim, const int64_t *shape, int nhwc) {
    *t = pbw_tensor_new(ctx, ndim, shape);
    if (!*t || (nhwc && !pbw_tensor_half_alloc(ctx, *t, 1))) return NULL;
    (*t)->half_nhwc = nhwc;
    return nhwc ? (*t)->half : (void *)(*t)->data;
}

#define RELEASE_MAX 8
int pbw_ctx_release(pbw_ctx *ctx, pbw_ctx_mark m, int n, pbw_tensor **keep) {
    if (ctx->failed) return -1;
    if (ctx->tape != m.tape) return 0; /* a backward will need what was made */
    if (n < 0 || n > RELEASE_MAX) {
        pbw_ctx_fail(ctx, "release: %d tensors to keep (at most %d)", n, RELEASE_MAX);
        return -1;
    }
    const int cuda = ctx->dev == PBW_DEV_CUDA;
    pbw_arena *da = cuda ? &ctx->dact : &ctx->act;
    const int direct = cuda && pbw_arena_mark_get(da).chunk == m.dev.chunk;
    /* the copies below move fp32 data, or NHWC halves as they are: on both paths, so that a
     * pass whose memory grew (the staged path) leaves the next ops the same inputs, hence the
     * same allocations, as a later repeat of it in memory that holds (the direct path) */
    int nhwc[RELEASE_MAX];
    for (int i = 0; i < n; i++) {
        if (!keep[i]) return -1;
        nhwc[i] = cuda && keep[i]->half_nhwc && keep[i]->half_only;
        if (!nhwc[i] && pbw_tensor_sync_f32(ctx, keep[i])) return -1;
    }
    int ndim[RELEASE_MAX];
    int64_t shape[RELEASE_MAX][PBW_MAX_DIMS];
    void *old[RELEASE_MAX];
    size_t off[RELEASE_MAX], bytes[RELEASE_MAX], total = 0;
    for (int i = 0; i < n; i++) {
        ndim[i] = keep[i]->ndim;
        memcpy(shape[i], keep[i]->shape, sizeof shape[i]);
        old[i] = nhwc[i] ? keep[i]->half : (void *)keep[i]->data;
        bytes[i] = (size_t)keep[i]->numel * (nhwc[i] ? 2 : sizeof(float));
        off[i] = total;
        total += (bytes[i] + 63) / 64 * 64;
    }
    if (direct) {
        /* Device data and host headers live apart, and no device chunk was made since the
         * mark (a release would free it, kept data included): release both, place the kept
         * tensors at the mark and copy each once, old place to new, when no new place overlaps
         * an old one (the usual case: a block's output was made last, far above the mark).
         * Nothing has overwritten the old places yet, and the stream runs the copies before any
         * later kernel. Overlaps go through the scratch stage. */
        unsigned char *stage = NULL;
        int overlap = 0;
        if (pbw_arena_release(da, m.dev) < 0 || pbw_arena_release(&ctx->act, m.host) < 0) {
            pbw_ctx_fail(ctx, "release: the mark is older than the last reset");
            return -1;
        }
        void *dst[RELEASE_MAX];
        for (int i = 0; i < n; i++)
            if (!(dst[i] = kept_new(ctx, &keep[i], ndim[i], shape[i], nhwc[i]))) return -1;
        for (int i = 0; i < n && !overlap; i++)
            for (int j = 0; j < n && !overlap; j++) {
                const char *a = (const char *)dst[i], *b = (const char *)old[j];
                overlap = (a != b || i != j) && a < b + bytes[j] && b < a + bytes[i];
            }
        if (overlap) {
            stage = total ? pbw_ctx_scratch(ctx, 7, total) : NULL;
            if (total && !stage) return -1;
            for (int i = 0; i < n; i++)
                if (ctx_copy(ctx, stage + off[i], old[i], bytes[i], 2)) return -1;
        }
        for (int i = 0; i < n; i++) {
            const void *src = overlap ? (const void *)(stage + off[i]) : (const void *)old[i];
            if (src != dst[i] && ctx_copy(ctx, dst[i], src, bytes[i], 2)) return -1;
        }
        return 0;
    }
    /* the kept data goes through scratch slot 7: old and new places may overlap (on the CPU
     * the new headers come from the same arena as the data) */
    unsigned char *stage = total ? pbw_ctx_scratch(ctx, 7, total) : NULL;
    if (total && !stage) return -1;
    for (int i = 0; i < n; i++)
        if (ctx_copy(ctx, stage + off[i], old[i], bytes[i], 2)) return -1;
    if (pbw_arena_release(da, cuda ? m.dev : m.host) < 0) {
        pbw_ctx_fail(ctx, "release: the mark is older than the last reset");
        return -1;
    }
    if (cuda && pbw_arena_release(&ctx->act, m.host) < 0) {
        pbw_ctx_fail(ctx, "release: the mark is older than the last reset");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        void *dst = kept_new(ctx, &keep[i], ndim[i], shape[i], nhwc[i]);
        if (!dst || ctx_copy(ctx, dst, stage + off[i], bytes[i], 2)) return -1;
    }
    return 0;
}

void *pbw_ctx_upload(pbw_ctx *ctx, const void *src, size_t bytes) {
    void *p = pbw_ctx_alloc(ctx, bytes ? bytes : 1);
    if (!p || ctx_copy(ctx, p, src, bytes, 0)) return NULL;
    return p;
}

static void *scratch_get(pbw_ctx *ctx, int slot, size_t bytes, int fail) {
    PBW_ASSERT(slot >= 0 && slot < PBW_SCRATCH_SLOTS);
    int lane = 0;
#ifdef PBW_HAVE_CUDA
    if (ctx->dev == PBW_DEV_CUDA) lane = pbw_cuda_lane();
#endif
    void **p = &ctx->scratch[lane][slot];
    size_t *size = &ctx->scratch_size[lane][slot];
    if (bytes > *size) {
        size_t sz = (bytes + 63) / 64 * 64;
#ifdef PBW_HAVE_CUDA
        if (ctx->dev == PBW_DEV_CUDA) {
            pbw_cuda_free(*p); /* waits for kernels still using it */
            *p = pbw_cuda_malloc(sz);
            *size = *p ? sz : 0;
            if (!*p && fail)
                return pbw_ctx_fail(ctx, "out of GPU memory (%zu bytes of scratch)", bytes);
            return *p;
        }
#endif
        free(*p);
        *p = aligned_alloc(64, sz);
        *size = *p ? sz : 0;
        if (!*p && fail) return pbw_ctx_fail(ctx, "out of memory (%zu bytes of scratch)", bytes);
    }
    return *p;
}

void *pbw_ctx_scratch(pbw_ctx *ctx, int slot, size_t bytes) {
    return scratch_get(ctx, slot, bytes, 1);
}

void *pbw_ctx_scratch_opt(pbw_ctx *ctx, int slot, size_t bytes) {
    return scratch_get(ctx, slot, bytes, 0);
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

static pbw_tensor *tensor_alloc(pbw_arena *a, pbw_arena *data_arena, int ndim,
                                const int64_t *shape, int with_data, const char **why) {
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
        t->data = pbw_arena_alloc(data_arena, (size_t)t->numel * sizeof(float));
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
    pbw_tensor *t = tensor_alloc(&ctx->act, ctx->dev == PBW_DEV_CUDA ? &ctx->dact : &ctx->act,
                                 ndim, shape, 1, &why);
    if (!t) return pbw_ctx_fail(ctx, "cannot make a tensor of rank %d: %s", ndim, why);
    t->device = ctx->dev;
    return t;
}

pbw_tensor *pbw_tensor_zeros(pbw_ctx *ctx, int ndim, const int64_t *shape) {
    pbw_tensor *t = pbw_tensor_new(ctx, ndim, shape);
    return t && ctx_zero(ctx, t->data, (size_t)t->numel * sizeof(float)) == 0 ? t : NULL;
}

pbw_tensor *pbw_tensor_new_in(pbw_arena *a, int ndim, const int64_t *shape, pbw_err *err) {
    const char *why = NULL;
    pbw_tensor *t = tensor_alloc(a, a, ndim, shape, 1, &why);
    if (!t) {
        pbw_err_set(err, "cannot make a tensor of rank %d: %s", ndim, why);
        return NULL;
    }
    t->arena_next = a->tensors;
    a->tensors = t;
    return t;
}

pbw_tensor *pbw_tensor_wrap(pbw_ctx *ctx, float *data, int ndim, const int64_t *shape) {
    if (ctx->failed) return NULL;
    const char *why = NULL;
    pbw_tensor *t = tensor_alloc(&ctx->act, &ctx->act, ndim, shape, 0, &why);
    if (!t) return pbw_ctx_fail(ctx, "cannot wrap a tensor of rank %d: %s", ndim, why);
    t->data = data;
    t->device = ctx->dev;
    return t;
}

pbw_tensor *pbw_tensor_copy(pbw_ctx *ctx, const pbw_tensor *x) {
    if (!x) return NULL;
    if (x->device != ctx->dev) return pbw_ctx_fail(ctx, "copy: tensor is on another device");
    if (pbw_tensor_sync_f32(ctx, (pbw_tensor *)x)) return NULL; /* same values, fp32 too */
    pbw_tensor *t = pbw_tensor_new(ctx, x->ndim, x->shape);
    if (t && ctx_copy(ctx, t->data, x->data, (size_t)x->numel * sizeof(float), 2)) return NULL;
    return t;
}

pbw_tensor *pbw_tensor_to_f32(pbw_ctx *ctx, pbw_tensor *x) {
    if (!x) return NULL;
    if (x->dtype == PBW_F32) return x;
    float *tmp = pbw_arena_alloc(&ctx->act, (size_t)x->numel * sizeof(float) + 1);
    if (!tmp) return pbw_ctx_fail(ctx, "out of memory converting %s", pbw_dtype_name(x->dtype));
    if (pbw_convert_to_f32(x->dtype, x->raw, (size_t)x->numel, tmp) != 0)
        return pbw_ctx_fail(ctx, "cannot convert %s to float32", pbw_dtype_name(x->dtype));
    if (ctx->dev == PBW_DEV_CPU) return pbw_tensor_wrap(ctx, tmp, x->ndim, x->shape);
    return pbw_tensor_from_host(ctx, tmp, x->ndim, x->shape);
}

pbw_tensor *pbw_tensor_from_host(pbw_ctx *ctx, const float *src, int ndim, const int64_t *shape) {
    pbw_tensor *t = pbw_tensor_new(ctx, ndim, shape);
    if (t && ctx_copy(ctx, t->data, src, (size_t)t->numel * sizeof(float), 0)) return NULL;
    return t;
}

int pbw_tensor_read(pbw_ctx *ctx, const pbw_tensor *t, float *dst) {
    if (ctx->failed) return -1;
    if (t->device != ctx->dev) {
        pbw_ctx_fail(ctx, "read: tensor is on another device than the context");
        return -1;
    }
    if (pbw_tensor_sync_f32(ctx, (pbw_tensor *)t)) return -1; /* same values, fp32 too */
    return ctx_copy(ctx, dst, t->data, (size_t)t->numel * sizeof(float), 1);
}

int pbw_tensor_write(pbw_ctx *ctx, pbw_tensor *t, const float *src) {
    if (ctx->failed) return -1;
    if (t->device != ctx->dev) {
        pbw_ctx_fail(ctx, "write: tensor is on another device than the context");
        return -1;
    }
    t->half = NULL; /* a half copy would hold the old values */
    t->half_only = t->half_nhwc = 0;
    return ctx_copy(ctx, t->data, src, (size_t)t->numel * sizeof(float), 0);
}

static const float *host_view(pbw_ctx *ctx, const pbw_tensor *t, const float *p) {
    if (ctx->failed || !p) return NULL;
    if (t->device == PBW_DEV_CPU) return p;
    float *h = pbw_arena_alloc(&ctx->act, (size_t)t->numel * sizeof(float) + 1);
    if (!h) return pbw_ctx_fail(ctx, "out of memory reading a tensor back");
    if (ctx_copy(ctx, h, p, (size_t)t->numel * sizeof(float), 1)) return NULL;
    return h;
}

const float *pbw_tensor_host(pbw_ctx *ctx, const pbw_tensor *t) {
    if (pbw_tensor_sync_f32(ctx, (pbw_tensor *)t)) return NULL; /* same values, fp32 too */
    return host_view(ctx, t, t->data);
}
const float *pbw_grad_host(pbw_ctx *ctx, const pbw_tensor *t) {
    /* a gradient still in its half copy alone, or with shares or partial sums left to add:
     * its values, written into grad first (nothing to do without any) */
    if (pbw_grad_sync(ctx, (pbw_tensor *)t)) return NULL;
    return host_view(ctx, t, t->grad);
}

int pbw_arena_to_device(pbw_arena *a, pbw_ctx *ctx, pbw_err *err) {
    if (ctx->dev == PBW_DEV_CPU) return 0;
#ifdef PBW_HAVE_CUDA
    size_t total = 0;
    for (pbw_tensor *t = a->tensors; t; t = t->arena_next)
        if (t->dtype == PBW_F32 && t->data && t->device == PBW_DEV_CPU)
            total += ((size_t)t->numel * sizeof(float) + 255) / 256 * 256;
    if (!total) return 0;
    unsigned char *block = pbw_cuda_malloc(total);
    if (!block) return pbw_err_set(err, "out of GPU memory moving %zu bytes of weights", total);
    pbw_cuda_weights_block(block, total); /* constants: products may cache half copies */
    if (pbw_arena_on_free(a, pbw_cuda_free, block)) {
        pbw_cuda_free(block);
        return pbw_err_set(err, "out of memory");
    }
    size_t off = 0;
    for (pbw_tensor *t = a->tensors; t; t = t->arena_next) {
        if (!(t->dtype == PBW_F32 && t->data && t->device == PBW_DEV_CPU)) continue;
        size_t bytes = (size_t)t->numel * sizeof(float);
        if (pbw_cuda_h2d(block + off, t->data, bytes))
            return pbw_err_set(err, "cuda: %s", pbw_cuda_error());
        t->data = (float *)(block + off);
        t->device = PBW_DEV_CUDA;
        off += (bytes + 255) / 256 * 256;
    }
    return pbw_cuda_sync(err);
#else
    return pbw_err_set(err, "this build of pbw has no CUDA support");
#endif
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
#ifdef PBW_HAVE_CUDA
static int g_prof_gpu; /* PBW_PROFILE=gpu with CUPTI tracing on */
#endif
static double g_prof_last;

static double prof_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int pbw_profile_enabled(void) {
    if (g_prof_on < 0) {
        g_prof_on = pbw_env_set("PBW_PROFILE");
#ifdef PBW_HAVE_CUDA
        /* gpu: device time per op from CUPTI; host times below are then launch costs */
        const char *e = getenv("PBW_PROFILE");
        if (g_prof_on && !strcmp(e, "gpu")) g_prof_gpu = pbw_cuda_trace_on();
#endif
    }
    return g_prof_on;
}

/* The op whose forward is running (since g_prof_last): its time is booked when the next op
 * begins or at a mark. On a CUDA context the device is synchronized first, so the time is the
 * op's own (profiling runs slower, but the shares are right). */
static const char *g_prof_op;
static void prof_add(const char *op, int backward, double sec);

static void prof_sync(void) {
#ifdef PBW_HAVE_CUDA
    if (!g_prof_gpu && pbw_cuda_current() >= 0) pbw_cuda_sync(NULL);
#endif
}

static void prof_trace(const char *op, int backward) {
#ifdef PBW_HAVE_CUDA
    if (g_prof_gpu) pbw_cuda_trace_op(op, backward);
#else
    (void)op;
    (void)backward;
#endif
}

void pbw_profile_mark(void) {
    prof_trace(NULL, 0);
    prof_sync();
    g_prof_last = prof_now();
    g_prof_op = NULL;
}

void pbw_profile_op(const char *op) {
    prof_sync();
    double t = prof_now();
    if (g_prof_op) prof_add(g_prof_op, 0, t - g_prof_last);
    g_prof_op = op;
    g_prof_last = t;
    prof_trace(op, 0);
}

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

void pbw_profile_clear(void) {
    pbw_profile_mark();
    g_nprof = 0;
#ifdef PBW_HAVE_CUDA
    if (g_prof_gpu) pbw_cuda_trace_clear();
#endif
}

void pbw_profile_report(FILE *f, double scale) {
    pbw_profile_mark();
    double total = 0;
    for (int i = 0; i < g_nprof; i++) total += g_prof[i].sec;
    qsort(g_prof, (size_t)g_nprof, sizeof g_prof[0], prof_cmp);
#ifdef PBW_HAVE_CUDA
    if (g_prof_gpu) {
        pbw_cuda_trace_report(f, scale);
        fprintf(f, "host time per op and step (launch and bookkeeping costs; the device is not "
                   "waited for):\n");
    }
#endif
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
    return n;
}

/* --- lanes --- */

/* What a lane mark does in the forward (backward 0), or in the backward, where the tape runs
 * in reverse: a join's mark lets lane 1 start on the gradients lane 0 has made (lane 0 goes
 * on), the switch back to lane 0 becomes the switch to lane 1, and the fork's mark makes lane 0
 * wait for lane 1's gradients. */
static void lane_act(pbw_ctx *ctx, int mark, int backward) {
#ifdef PBW_HAVE_CUDA
    int rc = 0;
    if (mark == LANE_MAIN) {
        pbw_cuda_lane_set(backward ? 1 : 0);
    } else if ((mark == LANE_FORK) != backward) { /* fork forward, or join backward */
        rc = pbw_cuda_lane_wait(1, 0);
        if (!backward && rc > 0) pbw_cuda_lane_set(1);
    } else { /* join forward, fork backward */
        rc = pbw_cuda_lane_wait(0, 1);
        pbw_cuda_lane_set(0);
    }
    if (rc < 0) pbw_ctx_fail(ctx, "cuda: %s", pbw_cuda_error() ? pbw_cuda_error() : "lanes");
#else
    (void)ctx, (void)mark, (void)backward;
#endif
}

static int lanes_used(const pbw_ctx *ctx) {
#ifdef PBW_HAVE_CUDA
    return ctx->dev == PBW_DEV_CUDA && pbw_cuda_lanes_on();
#else
    (void)ctx;
    return 0;
#endif
}

static void lane_mark(pbw_ctx *ctx, int mark) {
    lane_act(ctx, mark, 0);
    if (!ctx->lane_taped) return;
    pbw_node *n = pbw_arena_calloc(&ctx->act, sizeof *n);
    if (!n) {
        pbw_ctx_fail(ctx, "out of memory recording a lane mark");
        return;
    }
    n->op = "lane";
    n->lane_mark = mark;
    n->prev = ctx->tape;
    ctx->tape = n;
}

int pbw_lane_fork(pbw_ctx *ctx, int n, pbw_tensor **t) {
    if (ctx->failed || !lanes_used(ctx)) return 0;
#ifdef PBW_HAVE_CUDA
    if (pbw_cuda_lane() != 0) {
        pbw_ctx_fail(ctx, "lanes: a fork from the side lane");
        return -1;
    }
#endif
    /* a recorded pass marks its lanes when a gradient may flow through them; a pass with an
     * empty tape records no mark (releases between its blocks look for new nodes). A fork
     * before the join (the side lane goes on after more main-lane work) keeps the first's
     * choice: the marks of one join come all or none. */
    if (!ctx->lane_open) ctx->lane_taped = ctx->grad_enabled && ctx->tape != NULL;
    for (int i = 0; i < n; i++) /* the side lane's own handles: their gradients add up apart */
        if (t[i] && !(t[i] = pbw_reshape(ctx, t[i], t[i]->ndim, t[i]->shape))) return -1;
    lane_mark(ctx, LANE_FORK);
    ctx->lane_open = 1;
    return ctx->failed ? -1 : 1;
}

void pbw_lane_main(pbw_ctx *ctx) {
    if (ctx->lane_open) lane_mark(ctx, LANE_MAIN);
}

void pbw_lane_join(pbw_ctx *ctx) {
    if (!ctx->lane_open) return;
    lane_mark(ctx, LANE_JOIN);
    ctx->lane_open = ctx->lane_taped = 0;
}

/* Lists t, whose grad was just set, for pbw_ctx_reset to clear; -1 when out of memory. */
static int own_grad(pbw_ctx *ctx, pbw_tensor *t) {
    grad_owner *g = pbw_arena_alloc(&ctx->act, sizeof *g);
    if (!g) return -1;
    g->t = t;
    g->next = ctx->grads;
    ctx->grads = g;
    return 0;
}

/* Zeroes t's unset gradient (its first producer did not write it). 0, or -1 with ctx failed. */
static int grad_set_zero(pbw_ctx *ctx, pbw_tensor *t) {
    if (!t->grad_unset) return 0;
    t->grad_unset = 0;
    return ctx_zero(ctx, t->grad, (size_t)t->numel * sizeof(float));
}

/* --- partial sums left for a gradient (pbw_tensor.grad_parts) --- */

struct pbw_grad_parts {
#ifdef PBW_HAVE_CUDA
    pbw_cuda_style_parts p;
#endif
    struct pbw_grad_parts *next;
};

#ifdef PBW_HAVE_CUDA
int pbw_grad_parts_add(pbw_ctx *ctx, pbw_tensor *t, const pbw_cuda_style_parts *p) {
    struct pbw_grad_parts *g = pbw_arena_alloc(&ctx->act, sizeof *g);
    if (!g) {
        pbw_ctx_fail(ctx, "out of memory recording partial sums of a gradient");
        return -1;
    }
    g->p = *p;
    g->next = t->grad_parts;
    t->grad_parts = g;
    return 0;
}
#endif

/* grad written from its half copy (grad_half), where it has one */
static int grad_half_sync(pbw_ctx *ctx, pbw_tensor *t) {
    if (!t || !t->grad_half) return 0;
#ifdef PBW_HAVE_CUDA
    if (t->device == PBW_DEV_CUDA && t->grad) {
        pbw_cuda_half_to_f32(t->grad_half, t->grad, t->numel);
        t->grad_half = NULL;
        return 0;
    }
#endif
    pbw_ctx_fail(ctx, "a half-precision gradient without its buffers");
    return -1;
}

/* grad += src[0], then += src[1], ... (n of them) in one kernel: the additions a handle's
 * backward would each have made */
static int grad_add_sources(pbw_ctx *ctx, pbw_tensor *t, const float *const *src, int n) {
    if (n < 1) return 0;
#ifdef PBW_HAVE_CUDA
    if (t->device == PBW_DEV_CUDA && t->grad) {
        pbw_cuda_accumulate_many(t->grad, src, n, t->numel);
        return 0;
    }
#else
    (void)src;
#endif
    pbw_ctx_fail(ctx, "a gradient's addends without its buffers");
    return -1;
}

/* grad += grad_addend, where one is left */
static int grad_addend_sync(pbw_ctx *ctx, pbw_tensor *t) {
    if (!t || !t->grad_addend) return 0;
    const float *a = t->grad_addend;
    t->grad_addend = NULL;
    return grad_add_sources(ctx, t, &a, 1);
}

static long g_defers;
long pbw_grad_defers(void) { return g_defers; }

int pbw_grad_defer(pbw_ctx *ctx, pbw_tensor *t, const pbw_tensor *out) {
    (void)ctx;
    if (!t || !(t->grad_addend_ok || t->grad_leaf) || !t->requires_grad || !t->grad ||
        t->grad_unset || t->grad_addend || t->grad_half || !out->grad || out->grad_half ||
        out->grad_addend || out->n_grad_adds || out->grad_parts || t->numel != out->numel ||
        t->device != PBW_DEV_CUDA || out->device != PBW_DEV_CUDA ||
        (t->grad_leaf && t->n_grad_adds == PBW_GRAD_ADDS) || pbw_env_zero("PBW_GRAD_ADDEND"))
        return 0;
    /* out's consumers have all run: nothing writes its buffer again */
    if (t->grad_leaf) t->grad_adds[t->n_grad_adds++] = out->grad;
    else t->grad_addend = out->grad;
    t->grad_half_copy = NULL; /* the values change */
    g_defers++;
    return 1;
}

/* grad += each of grad_adds in order, in one kernel */
static int grad_adds_sync(pbw_ctx *ctx, pbw_tensor *t) {
    if (!t || !t->n_grad_adds) return 0;
    const int n = t->n_grad_adds;
    t->n_grad_adds = 0;
    return grad_add_sources(ctx, t, t->grad_adds, n);
}

/* pbw_grad_sync, leaving the addend where keep_addend (its reader adds it itself) */
static int grad_sync_opt(pbw_ctx *ctx, pbw_tensor *t, int keep_addend) {
    if (keep_addend && t && t->grad_addend) {
        const float *a = t->grad_addend;
        t->grad_addend = NULL;
        const int rc = pbw_grad_sync(ctx, t);
        t->grad_addend = a;
        return rc;
    }
    return pbw_grad_sync(ctx, t);
}

int pbw_grad_sync_many(pbw_ctx *ctx, int n, pbw_tensor *const *t) {
    for (int i = 0; i < n; i++)
        if (grad_half_sync(ctx, t[i]) || grad_addend_sync(ctx, t[i]) || grad_adds_sync(ctx, t[i]))
            return -1;
#ifdef PBW_HAVE_CUDA
    pbw_cuda_style_parts jobs[PBW_CUDA_STYLE_PARTS_MAX];
    int nj = 0;
    for (int i = 0; i < n; i++) {
        for (struct pbw_grad_parts *g = t[i] ? t[i]->grad_parts : NULL; g; g = g->next) {
            if (nj == PBW_CUDA_STYLE_PARTS_MAX) {
                pbw_cuda_style_parts_finish(nj, jobs);
                nj = 0;
            }
            jobs[nj++] = g->p;
        }
        if (t[i]) t[i]->grad_parts = NULL;
    }
    if (nj) pbw_cuda_style_parts_finish(nj, jobs);
#endif
    return 0;
}

int pbw_grad_sync(pbw_ctx *ctx, pbw_tensor *t) { return pbw_grad_sync_many(ctx, 1, &t); }

float *pbw_grad_out(pbw_ctx *ctx, pbw_tensor *t, float *beta) {
    *beta = 1.0f;
    if (!t || !t->requires_grad) return NULL;
    if (pbw_grad_sync(ctx, t)) return NULL; /* more is added to the values of the half copy */
    t->grad_half_copy = NULL;                /* the values change */
    if (t->grad && t->grad_unset) {
        t->grad_unset = 0;
        *beta = 0.0f;
        return t->grad;
    }
    return pbw_grad(ctx, t);
}

int pbw_grad_pass(pbw_ctx *ctx, pbw_tensor *t, const pbw_tensor *out) {
    (void)ctx;
    if (!t || !t->requires_grad || !t->grad || !t->grad_unset || !out->grad || out->grad_half ||
        t->numel != out->numel || t->device != out->device || pbw_env_zero("PBW_GRAD_ALIAS"))
        return 0;
    t->grad = out->grad; /* t's own unset buffer stays unused until the context's reset */
    t->grad_unset = 0;
    return 1;
}

int pbw_grad_zero(pbw_ctx *ctx, pbw_tensor *t) {
    if (!t || !t->grad) return 0;
    t->grad_unset = 0;
    return ctx_zero(ctx, t->grad, (size_t)t->numel * sizeof(float));
}

float *pbw_grad(pbw_ctx *ctx, pbw_tensor *t) {
    if (!t || !t->requires_grad) return NULL;
    if (pbw_grad_sync(ctx, t)) return NULL;
    t->grad_half_copy = NULL; /* the caller adds to the values */
    if (t->grad) return grad_set_zero(ctx, t) ? NULL : t->grad;
    if (t->device != ctx->dev) return pbw_ctx_fail(ctx, "gradient of a tensor on another device");
    size_t bytes = (size_t)t->numel * sizeof(float);
    t->grad = pbw_arena_alloc(ctx->dev == PBW_DEV_CUDA ? &ctx->dact : &ctx->act, bytes);
    if (t->grad && ctx_zero(ctx, t->grad, bytes)) return NULL;
    if (!t->grad || own_grad(ctx, t)) return pbw_ctx_fail(ctx, "out of memory for a gradient");
    return t->grad;
}

/* The gradient buffers of every tensor the backward will reach from the loss, in one block:
 * first those to be zeroed, with one memset (on a GPU one launch instead of one per tensor,
 * ~300 an Adam step), then those left unset because the first backward to reach them writes
 * them whole (node->writes; most of CLIP's activations: products and QuickGELU), which saves
 * zeroing them and reading the zeros back. The same tensors get gradients as when each is made
 * on first use by pbw_grad. */
static void alloc_reached_grads(pbw_ctx *ctx) {
    static float pending; /* marks a tensor listed, before its buffer exists */
    size_t part[2] = {0, 0}, count = 0; /* bytes: zeroed, unset */
    const int may_unset = !pbw_env_zero("PBW_GRAD_UNSET"); /* 0: zero every gradient (tests) */
    /* the leaves: inputs no recorded op made */
    for (pbw_node *n = ctx->tape; n; n = n->prev)
        for (int i = 0; i < n->nin; i++)
            if (n->in[i]) n->in[i]->grad_leaf = 1;
    for (pbw_node *n = ctx->tape; n; n = n->prev)
        if (n->out) n->out->grad_leaf = 0;
    for (pbw_node *n = ctx->tape; n; n = n->prev) {
        if (!n->out || !n->out->grad) continue; /* a lane mark, or not reached */
        for (int i = 0; i < n->nin; i++) {
            pbw_tensor *t = n->in[i];
            if (t && t->requires_grad) t->grad_last = n; /* the last one seen is the last run */
            if (!t || !t->requires_grad || t->grad || t->device != ctx->dev) continue;
            /* backward runs the tape from the end: n is t's first producer; it may write t's
             * gradient when it declared so and t is not another of its inputs too */
            int w = may_unset && ((n->writes >> i) & 1u);
            for (int j = 0; j < n->nin && w; j++) w = j == i || n->in[j] != t;
            t->grad = &pending;
            t->grad_unset = w;
            part[w] += ((size_t)t->numel * sizeof(float) + 63) / 64 * 64;
            count++;
        }
    }
    ctx->grad_unset_bytes = part[1];
    if (!count) return;
    unsigned char *block =
        pbw_arena_alloc(ctx->dev == PBW_DEV_CUDA ? &ctx->dact : &ctx->act, part[0] + part[1]);
    if (block && ctx_zero(ctx, block, part[0])) block = NULL;
    if (!block) ctx->grad_unset_bytes = 0; /* each made zeroed by pbw_grad */
    size_t off[2] = {0, part[0]};
    for (pbw_node *n = ctx->tape; n; n = n->prev)
        for (int i = 0; i < n->nin; i++) {
            pbw_tensor *t = n->in[i];
            if (!t || t->grad != &pending) continue;
            const int w = t->grad_unset;
            t->grad = block ? (float *)(block + off[w]) : NULL;
            if (!t->grad || own_grad(ctx, t)) { /* NULL: made by pbw_grad */
                t->grad = NULL;
                t->grad_unset = 0;
            }
            off[w] += ((size_t)t->numel * sizeof(float) + 63) / 64 * 64;
        }
}

int pbw_backward(pbw_ctx *ctx, pbw_tensor *loss, const float *seed, pbw_err *err) {
    if (!loss) return pbw_ctx_check(ctx, err) ? -1 : pbw_err_set(err, "backward of a NULL tensor");
    if (pbw_ctx_check(ctx, err)) return -1;
    if (!loss->requires_grad)
        return pbw_err_set(err, "backward: the loss does not depend on any tensor that requires a gradient");
    pbw_lane_join(ctx); /* a fork left open: its mark then starts the backward (no-op if none) */
    float *g = pbw_grad(ctx, loss);
    if (!g) return pbw_ctx_check(ctx, err);
    if (ctx->dev == PBW_DEV_CUDA && !seed) {
#ifdef PBW_HAVE_CUDA
        /* ones added in place: one kernel, where an uploaded seed takes a copy and an add */
        pbw_cuda_unary_forward(PBW_UN_AFFINE, 1.0f, 1.0f, g, g, loss->numel);
#endif
    } else if (ctx->dev == PBW_DEV_CUDA) {
#ifdef PBW_HAVE_CUDA
        /* the seed is added, as on the CPU (the loss may already hold a gradient) */
        float *d = pbw_ctx_upload(ctx, seed, (size_t)loss->numel * sizeof(float));
        if (!d) return pbw_ctx_check(ctx, err);
        const int64_t shape[5] = {1, 1, 1, 1, loss->numel}, st[5] = {0, 0, 0, 0, 1};
        pbw_cuda_accumulate(shape, d, st, g, st, 1.0f);
#endif
    } else {
        for (int64_t i = 0; i < loss->numel; i++) g[i] += seed ? seed[i] : 1.0f;
    }
    alloc_reached_grads(ctx);
    for (pbw_node *n = ctx->tape; n; n = n->prev) {
        if (n->lane_mark) {
            lane_act(ctx, n->lane_mark, 1);
            continue;
        }
        if (!n->out->grad) continue; /* nothing downstream of this op reached the loss */
        if (grad_set_zero(ctx, n->out)) break; /* unset: its consumers added nothing */
        if (!n->reads_grad_half && grad_sync_opt(ctx, n->out, n->reads_grad_addend)) break;
        double t0 = 0;
        if (pbw_profile_enabled()) {
            pbw_profile_mark(); /* books the last forward op */
            t0 = prof_now();
            prof_trace(n->op, 1);
        }
        n->backward(ctx, n);
        if (t0 > 0) {
            prof_sync();
            prof_add(n->op, 1, prof_now() - t0);
        }
        if (ctx->failed) return pbw_ctx_check(ctx, err);
    }
    for (grad_owner *o = ctx->grads; o && !ctx->failed; o = o->next) {
        grad_set_zero(ctx, o->t);
        if (o->t->n_grad_adds) grad_adds_sync(ctx, o->t); /* a leaf's gradient whole */
    }
    return pbw_ctx_check(ctx, err);
}
