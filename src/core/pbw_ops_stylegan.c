/* pbw_ops_stylegan.c: front-ends of the StyleGAN2 ops (pbw_ops_stylegan.h): argument checks,
 * output allocation, device dispatch and the tape. Kernels: src/cpu/pbw_cpu_stylegan.c and
 * pbw_cpu_sgconv.c; on CUDA src/cuda/pbw_cuda_stylegan.cu, pbw_cuda_resample.cu (blur) and
 * pbw_cuda_conv.cu (sg_conv through cuDNN, reading the plan's weight tensor). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops_internal.h"
#include "core/pbw_ops_stylegan.h"
#include "cpu/pbw_cpu_stylegan.h"

/* A (rows, cols) tensor whose rows are N or 1: returns the row stride (cols or 0), or -1. */
static int64_t row_stride(const pbw_tensor *t, int64_t N, int64_t cols) {
    if (t->ndim != 2 || t->shape[1] != cols || (t->shape[0] != N && t->shape[0] != 1)) return -1;
    return t->shape[0] == 1 && N != 1 ? 0 : cols;
}

/* A (N|1, 1, H, W) map: returns the batch stride (H*W or 0), or -1. */
static int64_t map_stride(const pbw_tensor *t, const pbw_tensor *x) {
    if (t->ndim != 4 || t->shape[1] != 1 || t->shape[2] != x->shape[2] ||
        t->shape[3] != x->shape[3] || (t->shape[0] != x->shape[0] && t->shape[0] != 1))
        return -1;
    return t->shape[0] == 1 && x->shape[0] != 1 ? 0 : t->shape[2] * t->shape[3];
}

/* ---------- modulate ---------- */

static void modulate_backward(pbw_ctx *ctx, pbw_node *nd) {
    const pbw_cpu_sg_mod_geom *g = nd->saved;
    pbw_tensor *x = nd->in[0], *s = nd->in[1], *s0 = nd->nin > 2 ? nd->in[2] : NULL,
               *m = nd->nin > 3 ? nd->in[3] : NULL;
    float bx; /* x's gradient is written whole (nd->writes) */
    float *gx = pbw_grad_out(ctx, x, &bx), *gs = pbw_grad(ctx, s), *gs0 = pbw_grad(ctx, s0),
          *gm = pbw_grad(ctx, m);
    if (pbw_ctx_failed(ctx)) return;
    PBW_KERNEL(ctx, sg_modulate_backward, nd->out->grad, x->data, s->data, s0 ? s0->data : NULL,
                                 m ? m->data : NULL, g, gx, gs, gs0, gm, bx != 0.0f);
}

/* Checks pbw_sg_modulate's arguments and fills its geometry; -1 with the context failed. */
static int mod_geom(pbw_ctx *ctx, const char *op, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                    pbw_tensor *m, pbw_cpu_sg_mod_geom *gp, int reads_nhwc) {
    pbw_tensor *ins[4] = {x, s, s0, m};
    int (*begin)(pbw_ctx *, const char *, int, pbw_tensor *const *) =
        reads_nhwc ? pbw_op_begin_nhwc : pbw_op_begin;
    if (begin(ctx, op, 2, ins)) return -1;
    if ((s0 == NULL) != (m == NULL)) {
        pbw_ctx_fail(ctx, "%s: s0 and m go together (both or neither)", op);
        return -1;
    }
    if (m && begin(ctx, op, 4, ins)) return -1;
    char sx[96];
    pbw_shape_str(x, sx, sizeof sx);
    pbw_cpu_sg_mod_geom g;
    memset(&g, 0, sizeof g);
    if (x->ndim != 4) {
        pbw_ctx_fail(ctx, "%s: x %s must be (N,C,H,W)", op, sx);
        return -1;
    }
    g.N = (int)x->shape[0];
    g.C = (int)x->shape[1];
    g.P = x->shape[2] * x->shape[3];
    g.s_nstride = row_stride(s, x->shape[0], x->shape[1]);
    const char *what = NULL, *want = "(N,C) or (1,C)";
    const pbw_tensor *culprit = s;
    if (g.s_nstride < 0) {
        what = "style";
    } else if (m) {
        g.s0_nstride = row_stride(s0, x->shape[0], x->shape[1]);
        g.m_nstride = map_stride(m, x);
        if (g.s0_nstride < 0) what = "style s0", culprit = s0;
        else if (g.m_nstride < 0) what = "mask", culprit = m, want = "(N,1,H,W) or (1,1,H,W)";
    }
    if (what) {
        char sc[96];
        pbw_ctx_fail(ctx, "%s: %s %s must be %s for x %s", op, what,
                     pbw_shape_str(culprit, sc, sizeof sc), want, sx);
        return -1;
    }
    *gp = g;
    return 0;
}

pbw_tensor *pbw_sg_modulate(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                            pbw_tensor *m) {
    static const char *op = "sg_modulate";
    pbw_tensor *ins[4] = {x, s, s0, m};
    int nin = m ? 4 : 2;
    pbw_cpu_sg_mod_geom g;
    if (mod_geom(ctx, op, x, s, s0, m, &g, 0)) return NULL;
    pbw_tensor *out = pbw_tensor_new(ctx, 4, x->shape);
    if (!out) return NULL;
    PBW_KERNEL(ctx, sg_modulate_forward, out->data, x->data, s->data, s0 ? s0->data : NULL,
               m ? m->data : NULL, &g);
    if (pbw_needs_grad(ctx, ins, nin)) {
        pbw_node *nd = pbw_tape_push(ctx, op, modulate_backward, out, ins, nin, sizeof g);
        if (!nd) return NULL;
        memcpy(nd->saved, &g, sizeof g);
        nd->writes = 1u; /* x's gradient, elementwise */
    }
    return out;
}

/* ---------- demodulation + noise + bias + leaky ReLU ---------- */

static void bias_act_backward(pbw_ctx *ctx, pbw_node *nd) {
    const pbw_cpu_sg_act_geom *g = nd->saved;
    /* inputs are recorded in a fixed order with NULLs kept, so slots are stable */
    pbw_tensor *y = nd->in[0], *d = nd->in[1], *noise = nd->in[2], *bias = nd->in[3];
    float by; /* y's gradient is written whole (nd->writes) */
    float *gy = pbw_grad_out(ctx, y, &by), *gd = pbw_grad(ctx, d), *gn = pbw_grad(ctx, noise),
          *gb = pbw_grad(ctx, bias);
    if (pbw_ctx_failed(ctx)) return;
    PBW_KERNEL(ctx, sg_bias_act_backward, nd->out->grad, y->data, d ? d->data : NULL,
                                 noise ? noise->data : NULL, bias ? bias->data : NULL, g, gy, gd,
                                 gn, gb, by != 0.0f);
}

/* The geometry of sg_bias_act on y (its shape alone is read) with d, noise and bias, each
 * begun as an input of op; 0, or -1 with the context failed. */
static int act_geom(pbw_ctx *ctx, const char *op, const pbw_tensor *y, pbw_tensor *d,
                    pbw_tensor *noise, pbw_tensor *bias, float noise_weight, float slope,
                    float gain, pbw_cpu_sg_act_geom *g) {
    pbw_tensor *ins[3] = {d, noise, bias};
    for (int i = 0; i < 3; i++)
        if (ins[i] && pbw_op_begin(ctx, op, 1, ins + i)) return -1;
    char sy[96], st[96];
    pbw_shape_str(y, sy, sizeof sy);
    if (y->ndim != 4) return pbw_ctx_fail(ctx, "%s: y %s must be (N,O,H,W)", op, sy), -1;
    memset(g, 0, sizeof *g);
    g->N = (int)y->shape[0];
    g->O = (int)y->shape[1];
    g->P = y->shape[2] * y->shape[3];
    g->noise_weight = noise_weight;
    g->slope = slope;
    g->gain = gain;
    if (d && d->ndim == 4) {
        if (!pbw_shape_equal(d, y))
            return pbw_ctx_fail(ctx, "%s: per-pixel d %s must have the shape of y %s", op,
                                pbw_shape_str(d, st, sizeof st), sy), -1;
        g->d_mode = 2;
    } else if (d) {
        g->d_nstride = row_stride(d, y->shape[0], y->shape[1]);
        if (g->d_nstride < 0)
            return pbw_ctx_fail(ctx, "%s: d %s must be (N,O), (1,O) or (N,O,H,W) for y %s", op,
                                pbw_shape_str(d, st, sizeof st), sy), -1;
        g->d_mode = 1;
    }
    if (noise) {
        g->noise_nstride = map_stride(noise, y);
        if (g->noise_nstride < 0)
            return pbw_ctx_fail(ctx, "%s: noise %s must be (N,1,H,W) or (1,1,H,W) for y %s", op,
                                pbw_shape_str(noise, st, sizeof st), sy), -1;
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != y->shape[1]))
        return pbw_ctx_fail(ctx, "%s: bias %s must be (O) for y %s", op,
                            pbw_shape_str(bias, st, sizeof st), sy), -1;
    return 0;
}

pbw_tensor *pbw_sg_bias_act(pbw_ctx *ctx, pbw_tensor *y, pbw_tensor *d, pbw_tensor *noise,
                            pbw_tensor *bias, float noise_weight, float slope, float gain) {
    static const char *op = "sg_bias_act";
    pbw_tensor *ins[4] = {y, d, noise, bias};
    pbw_cpu_sg_act_geom g;
    if (pbw_op_begin(ctx, op, 1, ins) ||
        act_geom(ctx, op, y, d, noise, bias, noise_weight, slope, gain, &g))
        return NULL;
    pbw_tensor *out = pbw_tensor_new(ctx, 4, y->shape);
    if (!out) return NULL;
    PBW_KERNEL(ctx, sg_bias_act_forward, out->data, y->data, d ? d->data : NULL,
               noise ? noise->data : NULL, bias ? bias->data : NULL, &g);
    if (pbw_needs_grad(ctx, ins, 4)) {
        pbw_node *nd = pbw_tape_push(ctx, op, bias_act_backward, out, ins, 4, sizeof g);
        if (!nd) return NULL;
        memcpy(nd->saved, &g, sizeof g);
        nd->writes = 1u; /* y's gradient, elementwise */
    }
    return out;
}

/* ---------- convolution with a frozen weight ---------- */

/* CUDA: copies of the weight in the layouts cuDNN reads, made once per plan rather than per
 * call (the weight is a constant of the op), in device memory of their own (pbw_cuda_malloc)
 * freed by a hook on the arena that holds the plan.
 *   wt  transposed plans: cuDNN runs the transposed convolution as the adjoint of a strided
 *       one, whose filter is w.transpose(0,1) (float32, used by every precision's fallback).
 *   wh  while the precision stages convolutions (bf16/fp16, pbw_cuda_conv_staged): the bf16 or
 *       fp16 KRSC copy of cuDNN's filter (w, or wt when transposed); keyed by w's pointer and
 *       the precision, so switching precision remakes it.
 * Both are keyed by w's data pointer, so moving the weights (pbw_arena_to_device) remakes them;
 * rewriting w's values in place does not (the plan packs the CPU's copies once too). */
struct pbw_sg_conv_gpu {
    pbw_arena *arena;     /* the plan's */
    float *wt;            /* (C,O,k,k) device floats, or NULL before the first GPU call */
    const float *src;     /* the w->data wt was made from */
    void *wh;             /* half KRSC device copy, or NULL */
    const float *wh_src;  /* the w->data wh was made from */
    int wh_prec;          /* the pbw_precision it was made for */
    int hooked;           /* the arena frees wt and wh */
};

/* Taps of output phase a of a stride-2 transposed convolution with a k-tap kernel: kernel
 * indices a, a+2, ... */
static int phase_taps(int k, int a) { return (k - a + 1) / 2; }

pbw_sg_conv_plan *pbw_sg_conv_prepare(pbw_arena *a, const pbw_tensor *w, int transposed,
                                      pbw_err *err) {
    return pbw_sg_conv_prepare_ex(a, w, transposed, 0, err);
}

pbw_sg_conv_plan *pbw_sg_conv_prepare_ex(pbw_arena *a, const pbw_tensor *w, int transposed,
                                         int direct, pbw_err *err) {
    char sw[96];
    if (!w || w->dtype != PBW_F32 || w->ndim != 4 || w->shape[2] != w->shape[3] ||
        w->shape[2] % 2 == 0 || w->shape[2] > 15 || w->shape[0] < 1 || w->shape[1] < 1 ||
        w->shape[0] > 65536 || w->shape[1] > 65536) {
        pbw_err_set(err, "sg_conv: weight %s must be float32 (O,C,k,k) with k odd <= 15",
                    w ? pbw_shape_str(w, sw, sizeof sw) : "NULL");
        return NULL;
    }
    pbw_sg_conv_plan *pl = pbw_arena_calloc(a, sizeof *pl);
    if (pl) pl->cpu = pbw_arena_calloc(a, sizeof *pl->cpu);
    if (!pl || !pl->cpu) {
        pbw_err_set(err, "sg_conv: out of memory");
        return NULL;
    }
    pl->transposed = transposed;
    pl->C = (int)w->shape[1], pl->O = (int)w->shape[0], pl->k = (int)w->shape[2];
    pl->direct = direct;
    pl->weight = w;
    pl->cpu->arena = a;
    for (int p = 0; p < 2; p++) pl->phase_kh[p] = pl->phase_kw[p] = phase_taps(pl->k, p);
#ifdef PBW_HAVE_CUDA
    /* room for the GPU's copies of the weight, made on first use */
    pl->gpu = pbw_arena_calloc(a, sizeof *pl->gpu);
    if (!pl->gpu) {
        pbw_err_set(err, "sg_conv: out of memory");
        return NULL;
    }
    pl->gpu->arena = a;
#endif
    return pl;
}

/* The plan's CPU packs, made on its first CPU call (see pbw_ops_stylegan.h); NULL with the
 * context failed. */
static const struct pbw_sg_conv_cpu *cpu_packs(pbw_ctx *ctx, const pbw_sg_conv_plan *pl) {
    struct pbw_sg_conv_cpu *pk = pl->cpu;
    if (pk->packed) return pk;
    const pbw_tensor *w = pl->weight;
    if (!w || w->device != PBW_DEV_CPU || !w->data)
        return pbw_ctx_fail(ctx, "sg_conv: the plan's weight is on the GPU: the CPU kernel's "
                            "weights cannot be packed from it");
    const int O = pl->O, C = pl->C, k = pl->k;
    const int64_t kk = (int64_t)k * k;
    pbw_arena *a = pk->arena;
    /* staging for one rearranged weight before packing */
    float *tmp = malloc((size_t)O * C * kk * sizeof(float));
    if (!tmp)
        return pbw_ctx_fail(ctx, "sg_conv: out of memory packing a (%d,%d,%d,%d) weight", O, C,
                            k, k);
    const float *wd = w->data;
#define PACK(dst, rows, K)                                                                     \
    do {                                                                                       \
        (dst) = pbw_arena_alloc(a, (pbw_cpu_sgconv_packed_floats((rows), (K)) + 1) * 4);    \
        if (!(dst)) {                                                                          \
            free(tmp);                                                                         \
            return pbw_ctx_fail(ctx, "sg_conv: out of memory packing a weight");              \
        }                                                                                      \
        pbw_cpu_sgconv_pack_weight((dst), tmp, (rows), (K));                                   \
    } while (0)
    if (!pl->transposed && k == 3 && !pl->direct) {
        /* Winograd: the forward from w, the input gradient from w flipped and transposed */
        pk->wino_fwd = pbw_arena_alloc(a, pbw_cpu_sgconv_wino_packed_floats(O, C) * 4);
        pk->wino_bwd = pbw_arena_alloc(a, pbw_cpu_sgconv_wino_packed_floats(C, O) * 4);
        if (!pk->wino_fwd || !pk->wino_bwd) {
            free(tmp);
            return pbw_ctx_fail(ctx, "sg_conv: out of memory packing a weight");
        }
        pbw_cpu_sgconv_wino_pack(pk->wino_fwd, wd, O, C);
        for (int c = 0; c < C; c++)
            for (int o = 0; o < O; o++)
                for (int t = 0; t < kk; t++)
                    tmp[((int64_t)c * O + o) * kk + t] = wd[((int64_t)o * C + c) * kk + (kk - 1 - t)];
        pbw_cpu_sgconv_wino_pack(pk->wino_bwd, tmp, C, O);
    } else if (!pl->transposed) {
        /* forward: w as (O, C*k*k) */
        memcpy(tmp, wd, (size_t)O * C * kk * sizeof(float));
        PACK(pk->fwd[0], O, (int64_t)C * kk);
        /* input gradient: conv of dy with w'[c][o][y][x] = w[o][c][k-1-y][k-1-x], same padding */
        for (int c = 0; c < C; c++)
            for (int o = 0; o < O; o++)
                for (int t = 0; t < kk; t++)
                    tmp[((int64_t)c * O + o) * kk + t] = wd[((int64_t)o * C + c) * kk + (kk - 1 - t)];
        PACK(pk->bwd, C, (int64_t)O * kk);
    } else {
        /* forward phase (a,b): a correlation with taps ty -> ky = a + 2*(Ta-1-ty) (rows),
         * likewise columns, over the input with top/left padding Ta-1 / Tb-1 */
        for (int ab = 0; ab < 4; ab++) {
            int pa = ab / 2, pb = ab % 2, Ta = pl->phase_kh[pa], Tb = pl->phase_kw[pb];
            for (int o = 0; o < O; o++)
                for (int c = 0; c < C; c++)
                    for (int ty = 0; ty < Ta; ty++)
                        for (int tx = 0; tx < Tb; tx++) {
                            int ky = pa + 2 * (Ta - 1 - ty), kx = pb + 2 * (Tb - 1 - tx);
                            tmp[(((int64_t)o * C + c) * Ta + ty) * Tb + tx] =
                                wd[((int64_t)o * C + c) * kk + ky * k + kx];
                        }
            PACK(pk->fwd[ab], O, (int64_t)C * Ta * Tb);
        }
        /* input gradient: dx[c] = sum_o corr(dy[o], w[o][c]) with stride 2: weight (C, O*k*k) */
        for (int c = 0; c < C; c++)
            for (int o = 0; o < O; o++)
                memcpy(tmp + ((int64_t)c * O + o) * kk, wd + ((int64_t)o * C + c) * kk,
                       (size_t)kk * sizeof(float));
        PACK(pk->bwd, C, (int64_t)O * kk);
    }
#undef PACK
    free(tmp);
    pk->packed = 1;
    return pk;
}

typedef struct sgconv_saved {
    const pbw_sg_conv_plan *pl;
    int H, W;         /* input side */
    const float *wt;  /* CUDA, transposed: the plan's w.transpose(0,1), device memory */
} sgconv_saved;

#ifdef PBW_HAVE_CUDA
static void sgconv_gpu_free(void *p) {
    struct pbw_sg_conv_gpu *g = p;
    if (!g->wt && !g->wh) return;
    pbw_cuda_free(g->wt);
    pbw_cuda_free(g->wh);
    g->wt = NULL;
    g->src = NULL;
    g->wh = NULL;
    g->wh_src = NULL;
}

/* The arena hook that frees the plan's device copies, set once; -1 with ctx failed. */
static int sgconv_gpu_hook(pbw_ctx *ctx, struct pbw_sg_conv_gpu *g) {
    if (g->hooked) return 0;
    if (pbw_arena_on_free(g->arena, sgconv_gpu_free, g)) {
        pbw_ctx_fail(ctx, "sg_conv: out of memory");
        return -1;
    }
    g->hooked = 1;
    return 0;
}

/* *wh = the plan's half KRSC weight in the current precision, made (enqueued) when missing or
 * stale, or NULL when the precision does not stage convolutions. 0, or -1 with ctx failed. */
static int sgconv_gpu_wh(pbw_ctx *ctx, const pbw_sg_conv_plan *pl, const void **wh) {
    struct pbw_sg_conv_gpu *g = pl->gpu;
    *wh = NULL;
    if (!pbw_cuda_conv_staged()) return 0;
    if (!g) {
        pbw_ctx_fail(ctx, "sg_conv: the plan has no room for the GPU's weight");
        return -1;
    }
    const int prec = (int)pbw_cuda_precision();
    if (g->wh && g->wh_src == pl->weight->data && g->wh_prec == prec) {
        *wh = g->wh;
        return 0;
    }
    if (sgconv_gpu_hook(ctx, g)) return -1;
    if (!g->wh) { /* bf16 and fp16 are both 2 bytes: a precision switch reuses it */
        g->wh = pbw_cuda_malloc(pbw_cuda_sg_conv_half_weight_bytes(pl->O, pl->C, pl->k));
        if (!g->wh) {
            pbw_ctx_fail(ctx, "sg_conv: out of GPU memory for a (%d,%d,%d,%d) weight", pl->O,
                         pl->C, pl->k, pl->k);
            return -1;
        }
    }
    /* stream order: kernels queued earlier read the old contents first */
    pbw_cuda_sg_conv_half_weight(g->wh, pl->weight->data, pl->O, pl->C, pl->k, pl->transposed);
    g->wh_src = pl->weight->data;
    g->wh_prec = prec;
    *wh = g->wh;
    return 0;
}

/* The plan's w.transpose(0,1) on the device, made (enqueued) when missing or stale. */
static const float *sgconv_gpu_wt(pbw_ctx *ctx, const pbw_sg_conv_plan *pl) {
    struct pbw_sg_conv_gpu *g = pl->gpu;
    if (!g) return pbw_ctx_fail(ctx, "sg_conv: the plan has no room for the GPU's weight");
    if (g->wt && g->src == pl->weight->data) return g->wt;
    if (sgconv_gpu_hook(ctx, g)) return NULL;
    if (!g->wt) {
        g->wt = pbw_cuda_malloc((size_t)pl->O * pl->C * pl->k * pl->k * sizeof(float));
        if (!g->wt)
            return pbw_ctx_fail(ctx, "sg_conv: out of GPU memory for a (%d,%d,%d,%d) weight",
                                pl->C, pl->O, pl->k, pl->k);
    }
    pbw_cuda_sg_conv_transpose_weight(g->wt, pl->weight->data, pl->O, pl->C, pl->k);
    g->src = pl->weight->data;
    return g->wt;
}
#endif

/* Runs one packed correlation; the scratch comes from the context. */
static int run_sgconv(pbw_ctx *ctx, float *out, const float *x, const float *wpack,
                      const pbw_cpu_sgconv_geom *g, int N, int accumulate) {
    int nt = pbw_cpu_sgconv_threads();
    float *scratch = pbw_ctx_scratch(ctx, 1, pbw_cpu_sgconv_scratch_floats(g, nt) * sizeof(float));
    if (!scratch) return -1;
    pbw_cpu_sgconv_forward(out, x, wpack, g, N, accumulate, scratch, nt);
    return 0;
}

static pbw_cpu_sgconv_geom plain_geom(int C, int H, int W, int O, int kh, int kw, int OH, int OW,
                                      int s, int ph, int pw) {
    pbw_cpu_sgconv_geom g = {C, H, W, O, kh, kw, OH, OW, s, s, ph, pw, (int64_t)OH * OW, OW, 1, 0, 0};
    return g;
}

static void sgconv_backward(pbw_ctx *ctx, pbw_node *nd) {
    const sgconv_saved *sv = nd->saved;
    const pbw_sg_conv_plan *pl = sv->pl;
    pbw_tensor *x = nd->in[0], *y = nd->out;
    float bx; /* x's gradient is written whole (nd->writes) */
    float *gx = pbw_grad_out(ctx, x, &bx);
    if (!gx) return;
    const int N = (int)x->shape[0], OH = (int)y->shape[2], OW = (int)y->shape[3];
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx)) {
        /* looked up again rather than saved: the precision may have changed since the forward */
        const void *wh;
        if (sgconv_gpu_wh(ctx, pl, &wh)) return;
        pbw_cuda_sg_conv_backward(gx, y->grad, pl->weight->data, sv->wt, wh, N, pl->C, sv->H,
                                  sv->W, pl->O, pl->k, pl->transposed, bx);
        return;
    }
#endif
    const struct pbw_sg_conv_cpu *pk = cpu_packs(ctx, pl);
    if (!pk) return;
    if (bx == 0.0f) memset(gx, 0, (size_t)x->numel * sizeof *gx); /* the CPU kernels add */
    if (pk->wino_bwd) {
        int nt = pbw_cpu_sgconv_threads();
        float *s = pbw_ctx_scratch(ctx, 1, pbw_cpu_sgconv_wino_scratch_floats(pl->O, pl->C, OW, nt) * 4);
        if (s)
            pbw_cpu_sgconv_wino_forward(gx, y->grad, pk->wino_bwd, pl->O, OH, OW, pl->C, N, 1, s,
                                        nt);
        return;
    }
    pbw_cpu_sgconv_geom g;
    if (!pl->transposed)
        g = plain_geom(pl->O, OH, OW, pl->C, pl->k, pl->k, sv->H, sv->W, 1, pl->k / 2, pl->k / 2);
    else
        g = plain_geom(pl->O, OH, OW, pl->C, pl->k, pl->k, sv->H, sv->W, 2, 0, 0);
    run_sgconv(ctx, gx, y->grad, pk->bwd, &g, N, 1);
}

/* sg_conv's shape checks and its output (N,O,OH,OW); NULL with the context failed. */
static pbw_tensor *sgconv_out(pbw_ctx *ctx, const char *op, const pbw_tensor *x,
                              const pbw_sg_conv_plan *pl) {
    char sx[96];
    if (!pl) return pbw_ctx_fail(ctx, "%s: no plan", op);
    if (x->ndim != 4 || x->shape[1] != pl->C || x->shape[2] < 1 || x->shape[3] < 1 ||
        x->shape[2] > (1 << 16) || x->shape[3] > (1 << 16))
        return pbw_ctx_fail(ctx, "%s: x %s must be (N,%d,H,W)", op,
                            pbw_shape_str(x, sx, sizeof sx), pl->C);
    const int64_t H = x->shape[2], W = x->shape[3], k = pl->k;
    return pbw_tensor_new(ctx, 4, (int64_t[]){x->shape[0], pl->O,
                                              pl->transposed ? 2 * (H - 1) + k : H,
                                              pl->transposed ? 2 * (W - 1) + k : W});
}

#ifdef PBW_HAVE_CUDA
/* The plan's weights on the GPU: *wt, for a transposed plan the weight in the adjoint
 * convolution's layout (else NULL), and *wh, the half KRSC copy while the precision stages
 * convolutions (else NULL). -1 with the context failed. */
static int sgconv_gpu_weights(pbw_ctx *ctx, const char *op, const pbw_sg_conv_plan *pl,
                              const float **wt, const void **wh) {
    *wt = NULL;
    if (!pl->weight || pl->weight->device != PBW_DEV_CUDA || !pl->weight->data) {
        pbw_ctx_fail(ctx, "%s: the plan's weight is not on the GPU (move the model's weights "
                     "with pbw_arena_to_device)", op);
        return -1;
    }
    if (pl->transposed && !(*wt = sgconv_gpu_wt(ctx, pl))) return -1;
    return sgconv_gpu_wh(ctx, pl, wh);
}
#endif

pbw_tensor *pbw_sg_conv(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_conv_plan *pl) {
    static const char *op = "sg_conv";
    if (pbw_op_begin(ctx, op, 1, &x)) return NULL;
    pbw_tensor *out = sgconv_out(ctx, op, x, pl);
    if (!out) return NULL;
    const int N = (int)x->shape[0], H = (int)x->shape[2], W = (int)x->shape[3];
    const int OH = (int)out->shape[2], OW = (int)out->shape[3], k = pl->k;
    const float *wt = NULL; /* CUDA, transposed: the weight in the adjoint convolution's layout */
    const struct pbw_sg_conv_cpu *pk = NULL;
    if (pbw_on_cuda(ctx)) {
#ifdef PBW_HAVE_CUDA
        const void *wh;
        if (sgconv_gpu_weights(ctx, op, pl, &wt, &wh)) return NULL;
        pbw_cuda_sg_conv_forward(out->data, x->data, pl->weight->data, wt, wh, N, pl->C, H, W,
                                 pl->O, k, pl->transposed);
#endif
    } else if (!(pk = cpu_packs(ctx, pl))) {
        return NULL;
    } else if (pk->wino_fwd) {
        int nt = pbw_cpu_sgconv_threads();
        float *s = pbw_ctx_scratch(ctx, 1, pbw_cpu_sgconv_wino_scratch_floats(pl->C, pl->O, W, nt) * 4);
        if (!s) return NULL;
        pbw_cpu_sgconv_wino_forward(out->data, x->data, pk->wino_fwd, pl->C, H, W, pl->O, N, 0, s,
                                    nt);
    } else if (!pl->transposed) {
        pbw_cpu_sgconv_geom g = plain_geom(pl->C, H, W, pl->O, k, k, H, W, 1, k / 2, k / 2);
        if (run_sgconv(ctx, out->data, x->data, pk->fwd[0], &g, N, 0)) return NULL;
    } else {
        for (int ab = 0; ab < 4; ab++) {
            int pa = ab / 2, pb = ab % 2, Ta = pl->phase_kh[pa], Tb = pl->phase_kw[pb];
            /* outputs 2m+pa for m < Ma: Ma = (OH - 1 - pa)/2 + 1 */
            int Ma = (OH - 1 - pa) / 2 + 1, Mb = (OW - 1 - pb) / 2 + 1;
            pbw_cpu_sgconv_geom g = plain_geom(pl->C, H, W, pl->O, Ta, Tb, Ma, Mb, 1, Ta - 1,
                                               Tb - 1);
            g.out_cstride = (int64_t)OH * OW;
            g.out_rstride = OW;
            g.out_step = 2;
            g.out_y0 = pa;
            g.out_x0 = pb;
            if (run_sgconv(ctx, out->data, x->data, pk->fwd[ab], &g, N, 0)) return NULL;
        }
    }
    if (pbw_needs_grad(ctx, &x, 1)) {
        pbw_node *nd = pbw_tape_push(ctx, op, sgconv_backward, out, &x, 1, sizeof(sgconv_saved));
        if (!nd) return NULL;
        *(sgconv_saved *)nd->saved = (sgconv_saved){pl, H, W, wt};
        nd->writes = 1u; /* x's gradient: the whole adjoint convolution */
    }
    return out;
}

/* sg_bias_act's inputs, for the ops that apply it as they write. */
typedef struct act_args {
    pbw_tensor *d, *noise, *bias;
    float noise_weight, slope, gain;
} act_args;

#ifdef PBW_HAVE_CUDA
/* The GPU's form of act applied to out (act_geom's checks); 0, or -1 with the context failed. */
static int postact_of(pbw_ctx *ctx, const char *op, const pbw_tensor *out, const act_args *act,
                      pbw_cuda_postact *pa) {
    if (act_geom(ctx, op, out, act->d, act->noise, act->bias, act->noise_weight, act->slope,
                 act->gain, &pa->g))
        return -1;
    pa->d = act->d ? act->d->data : NULL;
    pa->noise = act->noise ? act->noise->data : NULL;
    pa->bias = act->bias ? act->bias->data : NULL;
    return 0;
}

/* The GPU's form of pbw_sg_modulate's style s, s0, m of geometry g (mod_geom's). */
static pbw_cuda_premod premod_make(pbw_tensor *s, pbw_tensor *s0, pbw_tensor *m,
                                   const pbw_cpu_sg_mod_geom *g) {
    return (pbw_cuda_premod){s->data, s0 ? s0->data : NULL, m ? m->data : NULL,
                             g->s_nstride, g->s0_nstride, g->m_nstride};
}

/* The GPU's form of pbw_sg_modulate's style (s, s0, m; mod_geom's checks, x's shape read as
 * NHWC halves where so held): *pm zeroed (no scale) when s is NULL. 0, or -1 with the context
 * failed. */
static int premod_of(pbw_ctx *ctx, const char *op, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                     pbw_tensor *m, pbw_cuda_premod *pm) {
    memset(pm, 0, sizeof *pm);
    if (!s) return 0;
    pbw_cpu_sg_mod_geom g;
    if (mod_geom(ctx, op, x, s, s0, m, &g, 1)) return -1;
    *pm = premod_make(s, s0, m, &g);
    return 0;
}
#endif

#ifdef PBW_HAVE_CUDA
/* What the fused op with gradients (modconv_grad) keeps for its backward. */
typedef struct modconv_saved {
    const pbw_sg_conv_plan *pl;
    int H, W;               /* input side */
    const float *wt;        /* transposed: the plan's w.transpose(0,1), device memory */
    pbw_cpu_sg_mod_geom mg; /* the style's geometry (s non-NULL) */
    pbw_cuda_premod pm;     /* the forward's style (pm.s NULL: none) */
    pbw_cuda_postact pa;    /* the forward's activation (pa.g.N 0: none); its d, noise and bias
                             * are constants, not the node's inputs (x, s, s0, m) */
} modconv_saved;

/* The fused op's backward (pbw_cuda_sg_modconv_backward); where the convolution no longer runs
 * staged, the separate ops' backwards on scratch: the activation's gradient from out's sign,
 * the convolution's adjoint, the modulation's backward. */
static void modconv_backward(pbw_ctx *ctx, pbw_node *nd) {
    const modconv_saved *sv = nd->saved;
    const pbw_sg_conv_plan *pl = sv->pl;
    pbw_tensor *x = nd->in[0], *s = nd->in[1], *s0 = nd->in[2], *m = nd->in[3], *y = nd->out;
    float bx; /* x's gradient is written whole (nd->writes) */
    float *gx = pbw_grad_out(ctx, x, &bx), *gs = pbw_grad(ctx, s), *gs0 = pbw_grad(ctx, s0);
    const void *wh;
    if (pbw_ctx_failed(ctx) || sgconv_gpu_wh(ctx, pl, &wh)) return;
    const int N = (int)x->shape[0], act = sv->pa.g.N != 0;
    /* the style's sums over pixels left as partials for the op that made it to finish with
     * others' in one kernel (pbw_linear_multi: the styles made ahead), where it does so */
    const int64_t nparts = s && gs && s->grad_parts_ok && !gs0 && pbw_cuda_style_parts_on()
                               ? pbw_cuda_sg_modconv_parts(N, pl->C, sv->H, sv->W)
                               : 0;
    double *parts = nparts ? pbw_ctx_alloc_opt(ctx, (size_t)nparts * sizeof(double)) : NULL;
    /* a share of y's gradient left to add (a side lane's handle, pbw_grad_defer): added as
     * the gradient is staged; it stays recorded, so a later read of y's gradient adds it too */
    const float *gadd = act ? y->grad_addend : NULL;
    const pbw_cuda_modconv_bwd_args a = {y->grad,  y->data, x->data, gadd, s ? &sv->pm : NULL,
                                         act ? &sv->pa : NULL, gx, gs, gs0, bx, parts};
    if (pbw_cuda_sg_modconv_backward(&a, pl->weight->data, sv->wt, wh, N, pl->C, sv->H, sv->W,
                                     pl->O, pl->k, pl->transposed) == 0) {
        if (parts) {
            const pbw_cuda_style_parts p = {gs, parts, N, pl->C,
                                            (int)(nparts / ((int64_t)N * pl->C)),
                                            sv->pm.s_nstride};
            pbw_grad_parts_add(ctx, s, &p);
        }
        return;
    }
    if (pbw_grad_sync(ctx, y)) return; /* the addend, where one is left */
    float *gy = y->grad, *gxm = gx;
    if (act) {
        if (!(gy = pbw_ctx_scratch(ctx, 0, (size_t)y->numel * sizeof(float)))) return;
        pbw_cuda_sg_act_grad_from_out(gy, y->grad, y->data, &sv->pa);
    }
    if (s && !(gxm = pbw_ctx_scratch(ctx, 1, (size_t)x->numel * sizeof(float)))) return;
    if (gxm)
        pbw_cuda_sg_conv_backward(gxm, gy, pl->weight->data, sv->wt, wh, N, pl->C, sv->H, sv->W,
                                  pl->O, pl->k, pl->transposed, s ? 0.0f : bx);
    if (s)
        pbw_cuda_sg_modulate_backward(gxm, x->data, s->data, s0 ? s0->data : NULL,
                                      m ? m->data : NULL, &sv->mg, gx, gs, m ? gs0 : NULL, NULL,
                                      bx != 0.0f);
}

/* pbw_sg_modconv(_act) with gradients on a GPU that stages convolutions, as one op (see
 * pbw_cuda_modconv_grad): where only x and the styles take gradients, its forward is the
 * no-gradient path's on fp32 NCHW tensors and its backward modconv_backward. NULL without
 * failing where it does not apply (the caller then runs the ops apart). */
static pbw_tensor *modconv_grad(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                                pbw_tensor *m, const pbw_sg_conv_plan *pl, const act_args *act) {
    static const char *op = "sg_modconv";
    pbw_tensor *ins[7] = {x, s, s0, m, act ? act->d : NULL, act ? act->noise : NULL,
                          act ? act->bias : NULL};
    /* the sign of out stands for the pre-activation's in the backward: slope and gain > 0 */
    if (!pbw_cuda_modconv_grad() || pbw_needs_grad(ctx, ins + 3, 4) ||
        (act && !(act->slope > 0 && act->gain > 0)))
        return NULL;
    modconv_saved sv;
    memset(&sv, 0, sizeof sv);
    if (s ? mod_geom(ctx, op, x, s, s0, m, &sv.mg, 0) : pbw_op_begin(ctx, op, 1, &x)) return NULL;
    pbw_tensor *out = sgconv_out(ctx, op, x, pl);
    const void *wh;
    if (!out || sgconv_gpu_weights(ctx, op, pl, &sv.wt, &wh) ||
        (act && postact_of(ctx, op, out, act, &sv.pa)))
        return NULL;
    if (s) sv.pm = premod_make(s, s0, m, &sv.mg);
    if (pbw_cuda_sg_conv_forward_mod(out->data, x->data, s ? &sv.pm : NULL, act ? &sv.pa : NULL,
                                     pl->weight->data, sv.wt, wh, (int)x->shape[0], pl->C,
                                     (int)x->shape[2], (int)x->shape[3], pl->O, pl->k,
                                     pl->transposed, NULL, NULL))
        return NULL; /* not staged */
    sv.pl = pl;
    sv.H = (int)x->shape[2];
    sv.W = (int)x->shape[3];
    pbw_node *nd = pbw_tape_push(ctx, op, modconv_backward, out, ins, 4, sizeof sv);
    if (!nd) return NULL;
    memcpy(nd->saved, &sv, sizeof sv);
    nd->writes = 1u; /* x's gradient: the whole adjoint convolution, scaled */
    /* the activation's gradient staged from out's plus a share left to add (pbw_grad_defer) */
    out->grad_addend_ok = nd->reads_grad_addend = act != NULL;
    return out;
}
#endif

/* pbw_sg_modconv, then act (NULL: none). Without gradients on staged convolutions the style
 * scales x as it is staged (no modulated copy of x) and act is applied as the output is copied
 * back (no unactivated output); otherwise the ops it stands for. */
static pbw_tensor *modconv(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                           pbw_tensor *m, const pbw_sg_conv_plan *pl, const act_args *act) {
#ifdef PBW_HAVE_CUDA
    static const char *op = "sg_modconv";
    pbw_tensor *ins[7] = {x, s, s0, m, act ? act->d : NULL, act ? act->noise : NULL,
                          act ? act->bias : NULL};
    const int fused = pbw_on_cuda(ctx) && pbw_cuda_conv_staged() && pbw_cuda_modconv();
    if (fused && pbw_needs_grad(ctx, ins, 7)) {
        pbw_tensor *out = modconv_grad(ctx, x, s, s0, m, pl, act);
        if (out || pbw_ctx_failed(ctx)) return out;
    } else if (fused) {
        pbw_cuda_premod pm;
        if ((!s && pbw_op_begin_nhwc(ctx, op, 1, &x)) || premod_of(ctx, op, x, s, s0, m, &pm))
            return NULL;
        pbw_tensor *out = sgconv_out(ctx, op, x, pl);
        const float *wt;
        const void *wh;
        pbw_cuda_postact pa;
        if (!out || sgconv_gpu_weights(ctx, op, pl, &wt, &wh) ||
            (act && postact_of(ctx, op, out, act, &pa)))
            return NULL;
        /* NHWC halves (pbw_cuda_nhwc): an input held so is staged as it is, and the output
         * stays so, activated there when act is given; an upsampling convolution's only
         * without act (the blur after it activates) */
        const int nhwc_out = (act ? !pl->transposed : pl->transposed) && pbw_cuda_nhwc();
        if (nhwc_out && !pbw_tensor_half_alloc(ctx, out, 1)) return NULL;
        out->half_nhwc = nhwc_out;
        if (pbw_cuda_sg_conv_forward_mod(out->data, x->data, s ? &pm : NULL, act ? &pa : NULL,
                                         pl->weight->data, wt, wh, (int)x->shape[0], pl->C,
                                         (int)x->shape[2], (int)x->shape[3], pl->O, pl->k,
                                         pl->transposed, x->half_nhwc ? x->half : NULL,
                                         nhwc_out ? out->half : NULL) == 0)
            return out;
        /* not staged: the ops apart, on fp32 values (their pbw_op_begin writes x's) */
    }
#endif
    pbw_tensor *y = pbw_sg_conv(ctx, s ? pbw_sg_modulate(ctx, x, s, s0, m) : x, pl);
    return act ? pbw_sg_bias_act(ctx, y, act->d, act->noise, act->bias, act->noise_weight,
                                 act->slope, act->gain)
               : y;
}

pbw_tensor *pbw_sg_modconv(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                           pbw_tensor *m, const pbw_sg_conv_plan *pl) {
    return modconv(ctx, x, s, s0, m, pl, NULL);
}

pbw_tensor *pbw_sg_modconv_act(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                               pbw_tensor *m, const pbw_sg_conv_plan *pl, pbw_tensor *d,
                               pbw_tensor *noise, pbw_tensor *bias, float noise_weight,
                               float slope, float gain) {
    const act_args act = {d, noise, bias, noise_weight, slope, gain};
    return modconv(ctx, x, s, s0, m, pl, &act);
}

/* ---------- a 1x1 convolution with a weight per sample ---------- */

/* x (N,C,H,W) and w (N,O,C) as op takes them (O even with a mask); 0, or -1 with the context
 * failed. */
static int pointwise_check(pbw_ctx *ctx, const char *op, pbw_tensor *x, pbw_tensor *w, int masked) {
    if (pbw_ctx_failed(ctx)) return -1;
    if (!x || !w) return pbw_ctx_fail(ctx, "%s: input %d is NULL", op, x ? 1 : 0), -1;
    char sx[96], sw[96];
    if (x->ndim != 4 || w->ndim != 3 || w->shape[0] != x->shape[0] ||
        w->shape[2] != x->shape[1] || (masked && w->shape[1] % 2))
        return pbw_ctx_fail(ctx, "%s: x %s and w %s must be (N,C,H,W) and (N,O,C)%s", op,
                            pbw_shape_str(x, sx, sizeof sx), pbw_shape_str(w, sw, sizeof sw),
                            masked ? ", O even with a mask" : ""),
               -1;
    return 0;
}

/* The GPU's kernel on x held as NHWC halves, without gradients: y (N,O,H,W), O = w's rows, or
 * half of them blended by m (pbw_cuda_sg_pointwise_nhwc); NULL (nothing failed) where it does
 * not apply or does not take the shape, for the caller's ops. ins: x, w, then m and bias where
 * given. */
static pbw_tensor *pointwise_nhwc(pbw_ctx *ctx, const char *op, pbw_tensor *const *ins, int nin,
                                  pbw_tensor *m, pbw_tensor *bias) {
#ifdef PBW_HAVE_CUDA
    pbw_tensor *x = ins[0], *w = ins[1];
    const int64_t N = x->shape[0], H = x->shape[2], W = x->shape[3];
    if (!x->half_nhwc || !pbw_on_cuda(ctx) || pbw_needs_grad(ctx, ins, nin) || N > 65535)
        return NULL;
    if (pbw_op_begin_nhwc(ctx, op, nin, ins)) return NULL;
    pbw_tensor *out = pbw_tensor_new(ctx, 4, (int64_t[]){N, m ? w->shape[1] / 2 : w->shape[1], H, W});
    if (!out) return NULL;
    if (pbw_cuda_sg_pointwise_nhwc(out->data, x->half, w->data, (int)N, (int)x->shape[1], H * W,
                                   (int)w->shape[1], m ? m->data : NULL,
                                   m && m->shape[0] == N ? H * W : 0,
                                   bias ? bias->data : NULL) == 0)
        return out;
#else
    (void)ctx, (void)op, (void)ins, (void)nin, (void)m, (void)bias;
#endif
    return NULL;
}

pbw_tensor *pbw_sg_pointwise(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w) {
    static const char *op = "sg_pointwise";
    if (pointwise_check(ctx, op, x, w, 0)) return NULL;
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t O = w->shape[1];
    pbw_tensor *ins[2] = {x, w};
    pbw_tensor *out = pointwise_nhwc(ctx, op, ins, 2, NULL, NULL);
    if (out || pbw_ctx_failed(ctx)) return out;
    /* otherwise the product on fp32 values */
    pbw_tensor *y = pbw_matmul(ctx, w, pbw_reshape(ctx, x, 3, (int64_t[]){N, C, H * W}), 0, 0);
    return pbw_reshape(ctx, y, 4, (int64_t[]){N, O, H, W});
}

/* pbw_sg_pointwise_blend's operands as it takes them; 0, or -1 with the context failed. */
static int blend_check(pbw_ctx *ctx, const char *op, pbw_tensor *x, pbw_tensor *w, pbw_tensor *m,
                       pbw_tensor *bias) {
    if (pointwise_check(ctx, op, x, w, m != NULL)) return -1;
    char sm[96];
    const int64_t N = x->shape[0], H = x->shape[2], W = x->shape[3];
    const int64_t O = m ? w->shape[1] / 2 : w->shape[1];
    if (m && (m->ndim != 4 || m->shape[1] != 1 || m->shape[2] != H || m->shape[3] != W ||
              (m->shape[0] != 1 && m->shape[0] != N)))
        return pbw_ctx_fail(ctx, "%s: mask %s must be (N or 1,1,%lld,%lld)", op,
                            pbw_shape_str(m, sm, sizeof sm), (long long)H, (long long)W),
               -1;
    if (bias && bias->numel != O)
        return pbw_ctx_fail(ctx, "%s: bias %s must have %lld elements", op,
                            pbw_shape_str(bias, sm, sizeof sm), (long long)O),
               -1;
    return 0;
}

pbw_tensor *pbw_sg_pointwise_blend(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *m,
                                   pbw_tensor *bias) {
    static const char *op = "sg_pointwise_blend";
    if (blend_check(ctx, op, x, w, m, bias)) return NULL;
    const int64_t O = m ? w->shape[1] / 2 : w->shape[1];
    pbw_tensor *ins[4] = {x, w, m, bias};
    int nin = 2;
    if (m) ins[nin++] = m;
    if (bias) ins[nin++] = bias;
    pbw_tensor *out = pointwise_nhwc(ctx, op, ins, nin, m, bias);
    if (out || pbw_ctx_failed(ctx)) return out;
    /* otherwise the ops it stands for */
    pbw_tensor *y = pbw_sg_pointwise(ctx, x, w);
    if (m) {
        pbw_tensor *y1 = pbw_slice(ctx, y, 1, 0, O, 1), *y0 = pbw_slice(ctx, y, 1, O, 2 * O, 1);
        y = pbw_add(ctx, y0, pbw_mul(ctx, m, pbw_sub(ctx, y1, y0)));
    }
    return bias ? pbw_add(ctx, y, pbw_reshape(ctx, bias, 4, (int64_t[]){1, O, 1, 1})) : y;
}

/* The GPU's fused form of pbw_sg_conv_act_rgb (see there): the convolution's output left as
 * NHWC halves before its activation, which ToRGB's kernel applies as it reads them. NULL
 * without failing where it does not apply. */
static pbw_tensor *conv_act_rgb_gpu(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_conv_plan *pl,
                                    const act_args *act, pbw_tensor *w, pbw_tensor *m,
                                    pbw_tensor *rgb_bias, pbw_tensor **rgb) {
#ifdef PBW_HAVE_CUDA
    static const char *op = "sg_conv_act_rgb";
    pbw_tensor *ins[7] = {x, w, act->d, act->noise, act->bias, m, rgb_bias};
    if (!pbw_on_cuda(ctx) || !pbw_cuda_conv_staged() || !pbw_cuda_modconv() || !pbw_cuda_nhwc() ||
        pl->transposed || !x->half_nhwc || pbw_needs_grad(ctx, ins, 7) ||
        pbw_env_zero("PBW_CUDA_ACT_RGB"))
        return NULL;
    int nin = 2;
    for (int i = 2; i < 7; i++)
        if (ins[i]) ins[nin++] = ins[i];
    if (pbw_op_begin_nhwc(ctx, op, nin, ins)) return NULL;
    pbw_tensor *out = sgconv_out(ctx, op, x, pl);
    const float *wt;
    const void *wh;
    pbw_cuda_postact pa;
    if (!out || blend_check(ctx, op, out, w, m, rgb_bias) ||
        sgconv_gpu_weights(ctx, op, pl, &wt, &wh) || postact_of(ctx, op, out, act, &pa))
        return NULL;
    const int N = (int)out->shape[0], H = (int)out->shape[2], W = (int)out->shape[3];
    const int O = (int)w->shape[1];
    if (!pbw_cuda_sg_pointwise_act_ok(N, pl->O, (int64_t)H * W, O, NULL, m ? m->data : NULL, &pa))
        return NULL;
    if (!pbw_tensor_half_alloc(ctx, out, 1)) return NULL;
    out->half_nhwc = 1;
    if (pbw_cuda_sg_conv_forward_mod(out->data, x->data, NULL, NULL, pl->weight->data, wt, wh,
                                     N, pl->C, (int)x->shape[2], (int)x->shape[3], pl->O, pl->k,
                                     0, x->half, out->half))
        return NULL; /* not staged: the ops apart */
    pbw_tensor *y = pbw_tensor_new(ctx, 4, (int64_t[]){N, m ? O / 2 : O, H, W});
    if (!y) return NULL;
    if (pbw_cuda_sg_pointwise_nhwc_act(y->data, out->half, &pa, w->data, N, pl->O,
                                       (int64_t)H * W, O, m ? m->data : NULL,
                                       m && m->shape[0] == N ? (int64_t)H * W : 0,
                                       rgb_bias ? rgb_bias->data : NULL))
        return pbw_ctx_fail(ctx, "%s: ToRGB's kernel refused its operands", op);
    *rgb = y;
    return out;
#else
    (void)ctx, (void)x, (void)pl, (void)act, (void)w, (void)m, (void)rgb_bias, (void)rgb;
    return NULL;
#endif
}

pbw_tensor *pbw_sg_conv_act_rgb(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_conv_plan *pl,
                                pbw_tensor *d, pbw_tensor *noise, pbw_tensor *bias,
                                float noise_weight, float slope, float gain, pbw_tensor *w,
                                pbw_tensor *m, pbw_tensor *rgb_bias, pbw_tensor **rgb) {
    *rgb = NULL;
    if (pbw_ctx_failed(ctx)) return NULL;
    if (!x) return pbw_ctx_fail(ctx, "sg_conv_act_rgb: input 0 is NULL");
    const act_args act = {d, noise, bias, noise_weight, slope, gain};
    pbw_tensor *out = conv_act_rgb_gpu(ctx, x, pl, &act, w, m, rgb_bias, rgb);
    if (out || pbw_ctx_failed(ctx)) return out;
    /* otherwise the two ops */
    out = pbw_sg_modconv_act(ctx, x, NULL, NULL, NULL, pl, d, noise, bias, noise_weight, slope,
                             gain);
    *rgb = pbw_sg_pointwise_blend(ctx, out, w, m, rgb_bias);
    return *rgb ? out : NULL;
}

/* ---------- separable blur ---------- */

int pbw_sg_fir_init(pbw_sg_fir *f, const pbw_tensor *k, int pad0, int pad1) {
    memset(f, 0, sizeof *f);
    if (!k || k->ndim != 2 || k->shape[0] != k->shape[1] || k->shape[0] < 1 || k->shape[0] > 16)
        return -1;
    const int K = (int)k->shape[0];
    const float *d = k->data;
    float host[256];
#ifdef PBW_HAVE_CUDA
    if (k->device == PBW_DEV_CUDA) { /* no context here: copy the K*K taps directly */
        if (!k->data || pbw_cuda_d2h(host, k->data, (size_t)K * K * sizeof(float))) return -1;
        d = host;
    }
#else
    (void)host;
#endif
    /* row and column sums factor an outer product exactly in real arithmetic */
    double tot = 0, rs[16] = {0}, cs[16] = {0}, mx = 0;
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++) {
            rs[i] += d[i * K + j], cs[j] += d[i * K + j], tot += d[i * K + j];
            if (fabs(d[i * K + j]) > mx) mx = fabs(d[i * K + j]);
        }
    if (tot == 0) return -1;
    for (int i = 0; i < K; i++) f->kv[i] = (float)(rs[i] / tot), f->kh[i] = (float)cs[i];
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++)
            if (fabs((double)f->kv[i] * f->kh[j] - d[i * K + j]) > 1e-6 * mx) return -1;
    f->K = K;
    f->pad0 = pad0;
    f->pad1 = pad1;
    return 0;
}

typedef struct blur_saved {
    pbw_sg_fir f; /* a copy: the caller's struct need not outlive the backward */
} blur_saved;

static void blur_backward(pbw_ctx *ctx, pbw_node *nd) {
    const pbw_sg_fir *f = &((const blur_saved *)nd->saved)->f;
    pbw_tensor *x = nd->in[0], *y = nd->out;
    float bx; /* x's gradient is written whole (nd->writes) */
    float *gx = pbw_grad_out(ctx, x, &bx);
    if (!gx) return;
    const int H = (int)x->shape[2], W = (int)x->shape[3], OH = (int)y->shape[2],
              OW = (int)y->shape[3];
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx)) { /* the taps go by value into the kernel's parameters */
        pbw_cuda_sg_blur_backward(gx, y->grad, x->shape[0] * x->shape[1], H, W, OH, OW, f->kv,
                                  f->kh, f->K, f->pad0, NULL, 0, bx != 0.0f);
        return;
    }
#endif
    if (bx == 0.0f) memset(gx, 0, (size_t)x->numel * sizeof *gx); /* the CPU kernels add */
    int nt = pbw_cpu_sgconv_threads();
    float *s = pbw_ctx_scratch(ctx, 2, pbw_cpu_sg_blur_scratch_floats(H, W, OH, OW, nt) * 4);
    if (!s) return;
    pbw_cpu_sg_blur_backward(gx, y->grad, x->shape[0] * x->shape[1], H, W, OH, OW, f->kv, f->kh,
                             f->K, f->pad0, s, nt);
}

/* sg_blur's output for x (its argument checks), or NULL with the context failed. */
static pbw_tensor *blur_out(pbw_ctx *ctx, const char *op, pbw_tensor *x, const pbw_sg_fir *f) {
    char sx[96];
    if (!f || f->K < 1) return pbw_ctx_fail(ctx, "%s: no kernel", op);
    if (x->ndim != 4 || x->shape[2] > (1 << 16) || x->shape[3] > (1 << 16))
        return pbw_ctx_fail(ctx, "%s: x %s must be (N,C,H,W)", op, pbw_shape_str(x, sx, sizeof sx));
    const int H = (int)x->shape[2], W = (int)x->shape[3];
    const int OH = H + f->pad0 + f->pad1 - f->K + 1, OW = W + f->pad0 + f->pad1 - f->K + 1;
    if (OH < 1 || OW < 1 || f->pad0 < 0 || f->pad1 < 0)
        return pbw_ctx_fail(ctx, "%s: x %s is too small for a %d-tap kernel with pads %d,%d", op,
                            pbw_shape_str(x, sx, sizeof sx), f->K, f->pad0, f->pad1);
    if (f->K > 16) return pbw_ctx_fail(ctx, "%s: %d taps (at most 16)", op, f->K);
    return pbw_tensor_new(ctx, 4, (int64_t[]){x->shape[0], x->shape[1], OH, OW});
}

pbw_tensor *pbw_sg_blur(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f) {
    static const char *op = "sg_blur";
    if (pbw_op_begin(ctx, op, 1, &x)) return NULL;
    pbw_tensor *out = blur_out(ctx, op, x, f);
    if (!out) return NULL;
    const int H = (int)x->shape[2], W = (int)x->shape[3];
    const int OH = (int)out->shape[2], OW = (int)out->shape[3];
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx)) {
        pbw_cuda_sg_blur_forward(out->data, x->data, x->shape[0] * x->shape[1], H, W, OH, OW,
                                 f->kv, f->kh, f->K, f->pad0, NULL, 0);
    } else
#endif
    {
        int nt = pbw_cpu_sgconv_threads();
        float *s = pbw_ctx_scratch(ctx, 2, pbw_cpu_sg_blur_scratch_floats(H, W, OH, OW, nt) * 4);
        if (!s) return NULL;
        pbw_cpu_sg_blur_forward(out->data, x->data, x->shape[0] * x->shape[1], H, W, OH, OW,
                                f->kv, f->kh, f->K, f->pad0, s, nt);
    }
    if (pbw_needs_grad(ctx, &x, 1)) {
        pbw_node *nd = pbw_tape_push(ctx, op, blur_backward, out, &x, 1, sizeof(blur_saved));
        if (!nd) return NULL;
        ((blur_saved *)nd->saved)->f = *f;
        nd->writes = 1u; /* x's gradient: the whole adjoint blur */
    }
    return out;
}

#ifdef PBW_HAVE_CUDA
/* What the blur and its activation as one op with gradients (blur_act_grad) keep. */
typedef struct blur_act_saved {
    pbw_sg_fir f;
    pbw_cuda_postact pa; /* the forward's activation: its d, noise and bias are constants (the
                          * node's input is x alone) */
} blur_act_saved;

/* blur_act_grad's backward: the blur's adjoint of the pre-activation's gradient, formed as the
 * blur loads the output's (pbw_cuda_sg_blur_act_backward), or on scratch first where it cannot. */
static void blur_act_backward(pbw_ctx *ctx, pbw_node *nd) {
    const blur_act_saved *sv = nd->saved;
    const pbw_sg_fir *f = &sv->f;
    pbw_tensor *x = nd->in[0], *y = nd->out;
    float bx; /* x's gradient is written whole (nd->writes) */
    float *gx = pbw_grad_out(ctx, x, &bx);
    if (!gx) return;
    const pbw_cuda_postact *pa = &sv->pa;
    const int64_t planes = x->shape[0] * x->shape[1];
    const int H = (int)x->shape[2], W = (int)x->shape[3], OH = (int)y->shape[2],
              OW = (int)y->shape[3];
    if (pbw_cuda_sg_blur_act_backward(gx, y->grad, y->data, planes, H, W, OH, OW, f->kv, f->kh,
                                      f->K, f->pad0, pa, bx != 0.0f) == 0)
        return;
    float *gy = pbw_ctx_scratch(ctx, 0, (size_t)y->numel * sizeof(float));
    if (!gy) return;
    pbw_cuda_sg_act_grad_from_out(gy, y->grad, y->data, pa);
    pbw_cuda_sg_blur_backward(gx, gy, planes, H, W, OH, OW, f->kv, f->kh, f->K, f->pad0, NULL, 0,
                              bx != 0.0f);
}

/* pbw_sg_blur_act with gradients on a GPU, as one op (pbw_cuda_modconv_grad): where x alone
 * takes a gradient (d, noise and bias are constants, as in the Adam step), the forward blurs
 * and activates in one pass and the backward is blur_act_backward. NULL without failing where
 * it does not apply (the caller then runs the two ops). */
static pbw_tensor *blur_act_grad(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f,
                                 const act_args *act) {
    static const char *op = "sg_blur";
    pbw_tensor *consts[3] = {act->d, act->noise, act->bias};
    if (!pbw_cuda_modconv_grad() || pbw_needs_grad(ctx, consts, 3) ||
        !(act->slope > 0 && act->gain > 0))
        return NULL;
    if (pbw_op_begin(ctx, op, 1, &x)) return NULL;
    pbw_tensor *out = blur_out(ctx, op, x, f);
    pbw_cuda_postact pa;
    if (!out || postact_of(ctx, op, out, act, &pa)) return NULL;
    pbw_cuda_sg_blur_act_forward(out->data, x->data, x->shape[0] * x->shape[1], (int)x->shape[2],
                                 (int)x->shape[3], (int)out->shape[2], (int)out->shape[3], f->kv,
                                 f->kh, f->K, f->pad0, &pa);
    pbw_node *nd = pbw_tape_push(ctx, op, blur_act_backward, out, &x, 1, sizeof(blur_act_saved));
    if (!nd) return NULL;
    *(blur_act_saved *)nd->saved = (blur_act_saved){*f, pa};
    nd->writes = 1u; /* x's gradient: the whole adjoint blur */
    return out;
}
#endif

/* pbw_sg_blur_act, then (s non-NULL) pbw_sg_modulate by s, s0, m: see pbw_sg_blur_act_mod. */
static pbw_tensor *blur_act(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f, const act_args *act,
                            pbw_tensor *s, pbw_tensor *s0, pbw_tensor *m) {
#ifdef PBW_HAVE_CUDA
    /* without gradients on a GPU: the activation is applied as the blur writes its output */
    static const char *op = "sg_blur";
    pbw_tensor *ins[7] = {x, act->d, act->noise, act->bias, s, s0, m};
    if (pbw_on_cuda(ctx) && !s && pbw_needs_grad(ctx, ins, 7)) {
        pbw_tensor *out = blur_act_grad(ctx, x, f, act);
        if (out || pbw_ctx_failed(ctx)) return out;
    } else if (pbw_on_cuda(ctx) && pbw_cuda_modconv() && !pbw_needs_grad(ctx, ins, 7)) {
        if (pbw_op_begin_nhwc(ctx, op, 1, &x)) return NULL;
        pbw_tensor *out = blur_out(ctx, op, x, f);
        pbw_cuda_postact pa;
        if (!out || postact_of(ctx, op, out, act, &pa)) return NULL;
        if (x->half_nhwc) { /* NHWC halves in (an upsampling convolution's), NHWC halves out */
            pbw_cuda_premod pm;
            if (premod_of(ctx, op, out, s, s0, m, &pm)) return NULL;
            if (!pbw_tensor_half_alloc(ctx, out, 1)) return NULL;
            out->half_nhwc = 1;
            if (pbw_cuda_sg_blur_act_nhwc(out->half, x->half, (int)x->shape[0], (int)x->shape[1],
                                          (int)x->shape[2], (int)x->shape[3], (int)out->shape[2],
                                          (int)out->shape[3], f->kv, f->kh, f->K, f->pad0, &pa,
                                          s ? &pm : NULL) == 0)
                return out;
            pbw_tensor_half_drop(out);
            if (pbw_tensor_sync_f32(ctx, x)) return NULL;
        }
        pbw_cuda_sg_blur_act_forward(out->data, x->data, x->shape[0] * x->shape[1],
                                     (int)x->shape[2], (int)x->shape[3], (int)out->shape[2],
                                     (int)out->shape[3], f->kv, f->kh, f->K, f->pad0, &pa);
        return s ? pbw_sg_modulate(ctx, out, s, s0, m) : out;
    }
#endif
    pbw_tensor *y = pbw_sg_bias_act(ctx, pbw_sg_blur(ctx, x, f), act->d, act->noise, act->bias,
                                    act->noise_weight, act->slope, act->gain);
    return s ? pbw_sg_modulate(ctx, y, s, s0, m) : y;
}

pbw_tensor *pbw_sg_blur_act(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f, pbw_tensor *d,
                            pbw_tensor *noise, pbw_tensor *bias, float noise_weight, float slope,
                            float gain) {
    const act_args act = {d, noise, bias, noise_weight, slope, gain};
    return blur_act(ctx, x, f, &act, NULL, NULL, NULL);
}

pbw_tensor *pbw_sg_blur_act_mod(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f, pbw_tensor *d,
                                pbw_tensor *noise, pbw_tensor *bias, float noise_weight,
                                float slope, float gain, pbw_tensor *s, pbw_tensor *s0,
                                pbw_tensor *m) {
    if (!s) return pbw_ctx_fail(ctx, "sg_blur_act_mod: no style");
    const act_args act = {d, noise, bias, noise_weight, slope, gain};
    return blur_act(ctx, x, f, &act, s, s0, m);
}
