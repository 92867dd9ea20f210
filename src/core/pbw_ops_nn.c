/* pbw_ops_nn.c: layer norm, batch norm (inference statistics), LPIPS's weighted layer term,
 * softmax, a ViT's class token and positions, the cosine of rows, attention, embedding. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu/pbw_cpu.h"
#include "pbw_ops_internal.h"

/* n floats that a backward reads (mean, rstd, attention weights): memory of the context's device
 * (the kernels write them there), living until reset. NULL, the context failed, when out of
 * memory. */
static float *saved_floats(pbw_ctx *ctx, int64_t n) {
    size_t bytes = (size_t)n * sizeof(float) + 1;
    if (pbw_on_cuda(ctx)) return pbw_ctx_alloc(ctx, bytes);
    return pbw_arena_alloc(pbw_ctx_arena(ctx), bytes);
}

/* ---- layer norm ---- */

typedef struct {
    float *mean, *rstd; /* (R) */
} ln_saved;

static void layer_norm_backward(pbw_ctx *ctx, pbw_node *n) {
    const ln_saved *s = n->saved;
    pbw_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2];
    int64_t D = x->shape[x->ndim - 1], R = x->numel / D;
    float *gx = pbw_grad(ctx, x), *gw = pbw_grad(ctx, w), *gb = pbw_grad(ctx, b);
#ifdef PBW_HAVE_CUDA
    /* the last to add to x's gradient, which a product reads in bf16 (a residual stream's sum
     * made by linear_add): its bf16 copy written in the same pass */
    const int copy = gx && x->grad_half_copy_wanted && x->grad_last == n && pbw_on_cuda(ctx);
    void *h = copy ? pbw_ctx_alloc_opt(ctx, (size_t)x->numel * 2 + 16) : NULL; /* that copy */
    /* the output's gradient in bf16 alone (grad_half_wanted: the product after wrote it so) */
    if (n->out->grad_half) {
        if (gx && !gw && !gb &&
            pbw_cuda_layer_norm_backward_gyh(x->data, w ? w->data : NULL, s->mean, s->rstd,
                                             n->out->grad_half, gx, h, R, D) == 0) {
            if (h) x->grad_half_copy = h;
            return;
        }
        if (pbw_grad_sync(ctx, n->out)) return;
    }
    if (h && pbw_cuda_layer_norm_backward_copy(x->data, w ? w->data : NULL, s->mean, s->rstd,
                                               n->out->grad, gx, h, gw, gb, R, D) == 0) {
        x->grad_half_copy = h;
        return;
    }
#endif
    PBW_KERNEL(ctx, layer_norm_backward, x->data, w ? w->data : NULL, s->mean, s->rstd,
               n->out->grad, gx, gw, gb, R, D);
}

pbw_tensor *pbw_layer_norm(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b, float eps) {
    /* a half_only x (a residual stream kept in the half type) is read as it is where the
     * output is half_only too; else its fp32 values are written first */
    if (pbw_op_begin_half(ctx, "layer_norm", 1, &x)) return NULL;
    int64_t D = x->shape[x->ndim - 1];
    if ((w && (pbw_op_begin(ctx, "layer_norm", 1, &w) || w->numel != D)) ||
        (b && (pbw_op_begin(ctx, "layer_norm", 1, &b) || b->numel != D))) {
        char sx[64];
        return pbw_ctx_fail(ctx, "layer_norm: weight or bias size differs from the last dim of %s",
                            pbw_shape_str(x, sx, sizeof sx));
    }
    int64_t R = D ? x->numel / D : 0;
    pbw_tensor *y = pbw_tensor_new(ctx, x->ndim, x->shape);
    float *mean = saved_floats(ctx, R), *rstd = saved_floats(ctx, R);
    if (!y || !mean || !rstd) return pbw_ctx_fail(ctx, "layer_norm: out of memory");
    pbw_tensor *in[3] = {x, w, b};
#ifdef PBW_HAVE_CUDA
    if (x->half_only && pbw_half_out(ctx, in, 3)) {
        if (!pbw_tensor_half_alloc(ctx, y, 1)) return NULL;
        if (pbw_cuda_layer_norm_forward_hx(x->half, w ? w->data : NULL, b ? b->data : NULL,
                                           y->half, mean, rstd, R, D, eps) == 0)
            return y; /* no gradient: nothing to record */
        pbw_tensor_half_drop(y);
    }
#endif
    if (pbw_tensor_sync_f32(ctx, x)) return NULL;
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx) && pbw_cuda_half_gemm()) { /* products follow: a half copy too, or
                                                      * the half values alone */
        /* (with gradients too: the backward reads x, not y) */
        const int only = pbw_needs_grad(ctx, in, 3) ? pbw_half_out_grad(ctx)
                                                    : pbw_half_out(ctx, in, 3);
        if (!pbw_tensor_half_alloc(ctx, y, only)) return NULL;
        pbw_cuda_layer_norm_forward_half(x->data, w ? w->data : NULL, b ? b->data : NULL,
                                         only ? NULL : y->data, y->half, mean, rstd, R, D, eps);
    } else
#endif
        PBW_KERNEL(ctx, layer_norm_forward, x->data, w ? w->data : NULL, b ? b->data : NULL,
                   y->data, mean, rstd, R, D, eps);
    if (pbw_needs_grad(ctx, in, 3)) {
        pbw_node *n = pbw_tape_push(ctx, "layer_norm", layer_norm_backward, y, in, 3, sizeof(ln_saved));
        if (!n) return NULL;
        *(ln_saved *)n->saved = (ln_saved){mean, rstd};
        n->reads_grad_half = 1;
#ifdef PBW_HAVE_CUDA
        /* y held as halves alone for the product after it, whose input gradient may then come
         * in bf16 alone too where the backward takes it (x's gradient only: w's and b's sums
         * read fp32 values) */
        y->grad_half_wanted = y->half_only && !(w && w->requires_grad) &&
                              !(b && b->requires_grad) &&
                              pbw_cuda_layer_norm_backward_gyh_ok(D) && pbw_cuda_half_gx();
#endif
    }
    return y;
}

/* ---- batch norm with given statistics ---- */

typedef struct {
    float *rstd; /* (C) */
} bn_saved;

static void batch_norm_backward(pbw_ctx *ctx, pbw_node *n) {
    const bn_saved *s = n->saved;
    pbw_tensor *x = n->in[0], *mean = n->in[1], *w = n->in[2], *b = n->in[3];
    int64_t N = x->shape[0], C = x->shape[1], S = N * C != 0 ? x->numel / (N * C) : 0;
    float *gx = pbw_grad(ctx, x), *gw = pbw_grad(ctx, w), *gb = pbw_grad(ctx, b);
    PBW_KERNEL(ctx, batch_norm_backward, x->data, mean->data, s->rstd, w ? w->data : NULL,
               n->out->grad, gx, gw, gb, N, C, S);
}

pbw_tensor *pbw_batch_norm(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *mean, pbw_tensor *var,
                           pbw_tensor *w, pbw_tensor *b, float eps) {
    pbw_tensor *req[3] = {x, mean, var};
    if (pbw_op_begin(ctx, "batch_norm", 3, req)) return NULL;
    if (x->ndim < 2) return pbw_ctx_fail(ctx, "batch_norm: input must be (N,C,...)");
    int64_t N = x->shape[0], C = x->shape[1], S = N * C != 0 ? x->numel / (N * C) : 0;
    if (mean->numel != C || var->numel != C || (w && w->numel != C) || (b && b->numel != C)) {
        char sx[64];
        return pbw_ctx_fail(ctx, "batch_norm: statistics or affine sizes differ from C=%lld of %s",
                            (long long)C, pbw_shape_str(x, sx, sizeof sx));
    }
    pbw_tensor *opt[2] = {w, b};
    for (int i = 0; i < 2; i++)
        if (opt[i] && pbw_op_begin(ctx, "batch_norm", 1, &opt[i])) return NULL;
    pbw_tensor *y = pbw_tensor_new(ctx, x->ndim, x->shape);
    float *rstd = saved_floats(ctx, C);
    if (!y || !rstd) return pbw_ctx_fail(ctx, "batch_norm: out of memory");
    if (pbw_on_cuda(ctx)) { /* var is device memory */
#ifdef PBW_HAVE_CUDA
        pbw_cuda_batch_norm_rstd(var->data, rstd, C, eps);
#endif
    } else {
        for (int64_t c = 0; c < C; c++) rstd[c] = 1.0f / sqrtf(var->data[c] + eps);
    }
    PBW_KERNEL(ctx, batch_norm_forward, x->data, mean->data, rstd, w ? w->data : NULL,
               b ? b->data : NULL, y->data, N, C, S);
    /* statistics are constants: only x, w and b can receive gradients */
    pbw_tensor *in[4] = {x, mean, w, b};
    pbw_tensor *gin[3] = {x, w, b};
    if (pbw_needs_grad(ctx, gin, 3)) {
        pbw_node *n = pbw_tape_push(ctx, "batch_norm", batch_norm_backward, y, in, 4, sizeof(bn_saved));
        if (!n) return NULL;
        ((bn_saved *)n->saved)->rstd = rstd;
    }
    return y;
}

/* ---- LPIPS's weighted layer term ---- */

typedef struct {
    float eps;
} lpips_layer_saved;

static void lpips_layer_backward(pbw_ctx *ctx, pbw_node *n) {
    pbw_tensor *f = n->in[0], *ref = n->in[1], *w = n->in[2], *k = n->in[3];
    float *gf = pbw_grad(ctx, f);
    if (!gf) return;
    const int64_t N = f->shape[0], C = f->shape[1], S = f->shape[2] * f->shape[3];
    PBW_KERNEL(ctx, lpips_layer_backward, f->data, ref->data, w->data, k->data, n->out->grad, gf,
               N, ref->shape[0], C, S, ((const lpips_layer_saved *)n->saved)->eps);
}

pbw_tensor *pbw_lpips_layer(pbw_ctx *ctx, pbw_tensor *f, pbw_tensor *ref, pbw_tensor *w,
                            pbw_tensor *k, float eps) {
    pbw_tensor *in[4] = {f, ref, w, k};
    if (pbw_op_begin(ctx, "lpips_layer", 4, in)) return NULL;
    char sf[64], sr[64];
    pbw_shape_str(f, sf, sizeof sf);
    pbw_shape_str(ref, sr, sizeof sr);
    if (f->ndim != 4 || ref->ndim != 4 || ref->shape[1] != f->shape[1] ||
        ref->shape[2] != f->shape[2] || ref->shape[3] != f->shape[3] ||
        (ref->shape[0] != 1 && ref->shape[0] != f->shape[0]) || w->numel != f->shape[1] ||
        k->numel != f->shape[2] * f->shape[3] || f->shape[0] < 1)
        return pbw_ctx_fail(ctx, "lpips_layer: f %s and ref %s must be (N,C,h,w) and (N or "
                            "1,C,h,w), with C weights and h*w weights of positions (%lld, %lld)",
                            sf, sr, (long long)w->numel, (long long)k->numel);
    if (ref->requires_grad || w->requires_grad || k->requires_grad)
        return pbw_ctx_fail(ctx, "lpips_layer: ref, w and k are constants (no gradients)");
    const int64_t N = f->shape[0], C = f->shape[1], S = f->shape[2] * f->shape[3];
    pbw_tensor *out = pbw_tensor_new(ctx, 1, (int64_t[]){N});
    const size_t sc = PBW_KERNEL(ctx, lpips_layer_scratch_floats, N, S);
    float *scratch = sc ? pbw_ctx_alloc(ctx, sc * sizeof(float)) : NULL;
    if (!out || (sc && !scratch)) return pbw_ctx_fail(ctx, "lpips_layer: out of memory");
    PBW_KERNEL(ctx, lpips_layer_forward, f->data, ref->data, w->data, k->data, out->data, N,
               ref->shape[0], C, S, eps, scratch);
    if (pbw_needs_grad(ctx, &f, 1)) {
        pbw_node *n = pbw_tape_push(ctx, "lpips_layer", lpips_layer_backward, out, in, 4,
                                    sizeof(lpips_layer_saved));
        if (!n) return NULL;
        ((lpips_layer_saved *)n->saved)->eps = eps;
    }
    return out;
}

/* ---- softmax ---- */

static void softmax_backward(pbw_ctx *ctx, pbw_node *n) {
    float *gx = pbw_grad(ctx, n->in[0]);
    if (!gx) return;
    int64_t D = n->out->shape[n->out->ndim - 1];
    PBW_KERNEL(ctx, softmax_backward, n->out->data, n->out->grad, gx, n->out->numel / D, D);
}

pbw_tensor *pbw_softmax(pbw_ctx *ctx, pbw_tensor *x) {
    if (pbw_op_begin(ctx, "softmax", 1, &x)) return NULL;
    int64_t D = x->shape[x->ndim - 1];
    pbw_tensor *y = pbw_tensor_new(ctx, x->ndim, x->shape);
    if (!y) return NULL;
    if (D > 0) PBW_KERNEL(ctx, softmax_forward, x->data, y->data, x->numel / D, D);
    if (pbw_needs_grad(ctx, &x, 1) && !pbw_tape_push(ctx, "softmax", softmax_backward, y, &x, 1, 0))
        return NULL;
    return y;
}

/* ---- a ViT's class token and position embedding ---- */

static void class_position_backward(pbw_ctx *ctx, pbw_node *n) {
    pbw_tensor *x = n->in[0];
    float beta; /* x's gradient: y's rows after the first, whole (n->writes) */
    float *gx = pbw_grad_out(ctx, x, &beta);
    if (!gx) return;
    PBW_KERNEL(ctx, class_position_backward, n->out->grad, gx, x->shape[0], n->out->shape[1],
               x->shape[2], beta != 0.0f);
}

pbw_tensor *pbw_class_position(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *cls, pbw_tensor *pos) {
    pbw_tensor *in[3] = {x, cls, pos};
    if (pbw_op_begin(ctx, "class_position", 3, in)) return NULL;
    char sx[64], sp[64];
    if (x->ndim != 3 || cls->numel != x->shape[2] || pos->ndim != 2 ||
        pos->shape[0] != x->shape[1] + 1 || pos->shape[1] != x->shape[2])
        return pbw_ctx_fail(ctx, "class_position: x %s, class token of %lld and positions %s "
                            "must be (B,P,W), W and (P+1,W)", pbw_shape_str(x, sx, sizeof sx),
                            (long long)cls->numel, pbw_shape_str(pos, sp, sizeof sp));
    if (cls->requires_grad || pos->requires_grad)
        return pbw_ctx_fail(ctx, "class_position: the class token and positions are constants");
    const int64_t B = x->shape[0], T = x->shape[1] + 1, W = x->shape[2];
    pbw_tensor *y = pbw_tensor_new(ctx, 3, (int64_t[]){B, T, W});
    if (!y) return NULL;
    PBW_KERNEL(ctx, class_position_forward, x->data, cls->data, pos->data, y->data, B, T, W);
    if (pbw_needs_grad(ctx, &x, 1)) {
        pbw_node *n = pbw_tape_push(ctx, "class_position", class_position_backward, y, in, 3, 0);
        if (!n) return NULL;
        n->writes = 1u;
    }
    return y;
}

/* ---- cosine of rows ---- */

typedef struct {
    float *norms; /* (N,2): 1/|a_r|, 1/|b_r| */
} cosine_saved;

static void cosine_backward(pbw_ctx *ctx, pbw_node *n) {
    pbw_tensor *a = n->in[0], *b = n->in[1];
    float *ga = pbw_grad(ctx, a), *gb = pbw_grad(ctx, b);
    if (!ga && !gb) return;
    const int64_t N = a->shape[0], E = a->shape[1];
    PBW_KERNEL(ctx, cosine_backward, a->data, b->data, b->shape[0] == N ? E : 0, n->out->data,
               ((const cosine_saved *)n->saved)->norms, n->out->grad, ga, gb, N, E);
}

pbw_tensor *pbw_cosine(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b) {
    pbw_tensor *in[2] = {a, b};
    if (pbw_op_begin(ctx, "cosine", 2, in)) return NULL;
    if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[1] ||
        (b->shape[0] != a->shape[0] && b->shape[0] != 1)) {
        char sa[64], sb[64];
        return pbw_ctx_fail(ctx, "cosine: shapes %s and %s must be (N,E) and (N or 1,E)",
                            pbw_shape_str(a, sa, sizeof sa), pbw_shape_str(b, sb, sizeof sb));
    }
    const int64_t N = a->shape[0], E = a->shape[1];
    pbw_tensor *y = pbw_tensor_new(ctx, 1, (int64_t[]){N});
    float *norms = saved_floats(ctx, 2 * N);
    if (!y || !norms) return pbw_ctx_fail(ctx, "cosine: out of memory");
    if (N > 0)
        PBW_KERNEL(ctx, cosine_forward, a->data, b->data, b->shape[0] == N ? E : 0, y->data, norms,
                   N, E);
    if (pbw_needs_grad(ctx, in, 2)) {
        pbw_node *n = pbw_tape_push(ctx, "cosine", cosine_backward, y, in, 2, sizeof(cosine_saved));
        if (!n) return NULL;
        ((cosine_saved *)n->saved)->norms = norms;
    }
    return y;
}

/* ---- attention ---- */

typedef struct {
    pbw_attn_geom g;
    float *p; /* (B*H,T,S) attention weights */
} attn_saved;

static float *attn_scratch(pbw_ctx *ctx, const pbw_attn_geom *g) {
    return pbw_ctx_scratch(ctx, 0, PBW_KERNEL(ctx, attention_scratch_floats, g) * sizeof(float) + 64);
}

static void attention_backward(pbw_ctx *ctx, pbw_node *n) {
    const attn_saved *s = n->saved;
    float *gq = pbw_grad(ctx, n->in[0]), *gk = pbw_grad(ctx, n->in[1]), *gv = pbw_grad(ctx, n->in[2]);
    if (!gq && !gk && !gv) return;
    float *scratch = attn_scratch(ctx, &s->g);
    if (!scratch) return;
    PBW_KERNEL(ctx, attention_bwd, &s->g, n->in[0]->data, n->in[1]->data, n->in[2]->data, s->p,
               n->out->grad, gq, gk, gv, scratch);
}

pbw_tensor *pbw_attention(pbw_ctx *ctx, pbw_tensor *q, pbw_tensor *k, pbw_tensor *v, int causal,
                          float scale) {
    pbw_tensor *in[3] = {q, k, v};
    if (pbw_op_begin(ctx, "attention", 3, in)) return NULL;
    char sq[64], sk[64], sv[64];
    if (q->ndim != 4 || !pbw_shape_equal(k, v) || k->ndim != 4 || q->shape[0] != k->shape[0] ||
        q->shape[1] != k->shape[1] || q->shape[3] != k->shape[3])
        return pbw_ctx_fail(ctx, "attention: q %s, k %s, v %s must be (B,H,T,D), (B,H,S,D), (B,H,S,D)",
                            pbw_shape_str(q, sq, sizeof sq), pbw_shape_str(k, sk, sizeof sk),
                            pbw_shape_str(v, sv, sizeof sv));
    attn_saved s;
    memset(&s, 0, sizeof s);
    int64_t B = q->shape[0], H = q->shape[1], T = q->shape[2], S = k->shape[2], D = q->shape[3];
    s.g = (pbw_attn_geom){B, H, T, S, D, {H * T * D, T * D, D}, {H * S * D, S * D, D},
                          {H * S * D, S * D, D}, {H * T * D, T * D, D},
                          scale > 0 ? scale : 1.0f / sqrtf((float)D), causal};
    pbw_tensor *o = pbw_tensor_new(ctx, 4, q->shape);
    s.p = saved_floats(ctx, B * H * T * S);
    float *scratch = attn_scratch(ctx, &s.g);
    if (!o || !s.p || !scratch) return pbw_ctx_fail(ctx, "attention: out of memory");
    PBW_KERNEL(ctx, attention_fwd, &s.g, q->data, k->data, v->data, s.p, o->data, scratch);
    if (pbw_needs_grad(ctx, in, 3)) {
        pbw_node *n = pbw_tape_push(ctx, "attention", attention_backward, o, in, 3, sizeof s);
        if (!n) return NULL;
        memcpy(n->saved, &s, sizeof s);
    }
    return o;
}

/* ---- attention on packed q, k, v ---- */

typedef struct {
    pbw_attn_geom g;
    float *p;    /* (B*H,Tq,T) */
    int half_in; /* qkv read as its halves alone (pbw_half_out_grad) */
} attn_qkv_saved;

/* With every query (T = S) the backward writes all of qkv's gradient (node->writes): q's T
 * rows, k's and v's S. Unset, it is written where the GPU's tiled kernel runs, else zeroed
 * first (the CPU's kernels add). */
static void attention_qkv_backward(pbw_ctx *ctx, pbw_node *n) {
    const attn_qkv_saved *s = n->saved;
    float beta = 1.0f;
    float *g = n->writes ? pbw_grad_out(ctx, n->in[0], &beta) : pbw_grad(ctx, n->in[0]);
    if (!g) return;
    int64_t W = s->g.H * s->g.D;
#ifdef PBW_HAVE_CUDA
    if (s->half_in) { /* the halves the forward read, or their fp32 values written now */
        const uint16_t *h = n->in[0]->half;
        /* written whole for a product that reads it in bf16 (grad_half_wanted): that copy
         * alone */
        uint16_t *gh = pbw_grad_half_room(ctx, n->in[0], beta);
        if (gh && pbw_cuda_attention_bwd_write_hh(&s->g, h, h + W, h + 2 * W, s->p,
                                                  n->out->grad, gh, gh + W, gh + 2 * W) == 0) {
            n->in[0]->grad_half = gh;
            return;
        }
        if (beta == 0.0f && pbw_cuda_attention_bwd_write_h(&s->g, h, h + W, h + 2 * W, s->p,
                                                           n->out->grad, g, g + W, g + 2 * W) == 0)
            return;
        /* not written whole (the class token's query alone): added, from the same halves */
        if (beta != 0.0f && pbw_cuda_attention_bwd_add_h(&s->g, h, h + W, h + 2 * W, s->p,
                                                         n->out->grad, g, g + W, g + 2 * W) == 0)
            return;
        if (pbw_tensor_sync_f32(ctx, n->in[0])) return;
    }
#endif
    const float *x = n->in[0]->data;
#ifdef PBW_HAVE_CUDA
    if (beta == 0.0f && pbw_on_cuda(ctx) &&
        pbw_cuda_attention_bwd_write(&s->g, x, x + W, x + 2 * W, s->p, n->out->grad, g, g + W,
                                     g + 2 * W) == 0)
        return;
#endif
    if (beta == 0.0f && pbw_grad_zero(ctx, n->in[0])) return;
    float *scratch = attn_scratch(ctx, &s->g);
    if (!scratch) return;
    PBW_KERNEL(ctx, attention_bwd, &s->g, x, x + W, x + 2 * W, s->p, n->out->grad, g, g + W,
               g + 2 * W, scratch);
}

pbw_tensor *pbw_attention_qkv(pbw_ctx *ctx, pbw_tensor *qkv, int heads, int64_t n_queries,
                              int causal, float scale) {
    if (pbw_op_begin_half(ctx, "attention_qkv", 1, &qkv)) return NULL;
    char sq[64];
    if (qkv->ndim != 3 || heads < 1 || qkv->shape[2] % (3 * (int64_t)heads) ||
        n_queries < 1 || n_queries > qkv->shape[1])
        return pbw_ctx_fail(ctx, "attention_qkv: qkv %s must be (B,T,3*heads*D) with %d heads and "
                            "1 <= n_queries (%lld) <= T",
                            pbw_shape_str(qkv, sq, sizeof sq), heads, (long long)n_queries);
    int64_t B = qkv->shape[0], T = qkv->shape[1], W = qkv->shape[2] / 3, D = W / heads;
    attn_qkv_saved s;
    memset(&s, 0, sizeof s);
    pbw_attn_geom *g = &s.g;
    g->B = B;
    g->H = heads;
    g->T = n_queries;
    g->S = T;
    g->D = D;
    for (int i = 0; i < 3; i++) { /* q, k, v rows are 3W apart; head h starts at column h*D */
        int64_t *st = i == 0 ? g->q : i == 1 ? g->k : g->v;
        st[0] = T * 3 * W;
        st[1] = D;
        st[2] = 3 * W;
    }
    g->o[0] = n_queries * W;
    g->o[1] = D;
    g->o[2] = W;
    g->scale = scale > 0 ? scale : 1.0f / sqrtf((float)D);
    g->causal = causal;
    pbw_tensor *o = pbw_tensor_new(ctx, 3, (int64_t[]){B, n_queries, W});
    if (!o) return NULL;
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx) && qkv->half_only && pbw_half_out(ctx, &qkv, 1)) {
        /* half activations: half out, no weights kept */
        const uint16_t *h = qkv->half;
        if (!pbw_tensor_half_alloc(ctx, o, 1)) return NULL;
        if (pbw_cuda_attention_fwd_nograd(g, h, h + W, h + 2 * W, NULL, o->half, 1) == 0)
            return o;
        pbw_tensor_half_drop(o);
    }
#endif
    s.p = saved_floats(ctx, B * heads * n_queries * T);
    float *scratch = attn_scratch(ctx, g);
    if (!s.p || !scratch) return pbw_ctx_fail(ctx, "attention_qkv: out of memory");
    int done = 0;
#ifdef PBW_HAVE_CUDA
    /* with gradients, qkv held as halves alone (a product's half output, pbw_half_out_grad):
     * the tensor-core forward reads them, as the backward will (s.half_in) */
    if (pbw_on_cuda(ctx) && qkv->half_only && !qkv->half_nhwc && pbw_needs_grad(ctx, &qkv, 1) &&
        pbw_half_out_grad(ctx)) {
        const uint16_t *h = qkv->half;
        if (!pbw_tensor_half_alloc(ctx, o, 1)) return NULL;
        done = s.half_in =
            pbw_cuda_attention_fwd_keep_h(g, h, h + W, h + 2 * W, s.p, NULL, o->half) == 0;
        if (!done) pbw_tensor_half_drop(o);
    }
#endif
    if (!done && pbw_tensor_sync_f32(ctx, qkv)) return NULL;
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx) && !pbw_needs_grad(ctx, &qkv, 1)) { /* the weights are not kept */
        pbw_cuda_attention_fwd_nograd(g, qkv->data, qkv->data + W, qkv->data + 2 * W, s.p,
                                      o->data, 0);
        return o;
    }
    /* tensor cores where products run on halves: o in fp32 and a half copy for the product
     * that follows, or the half values alone (the backward reads the weights s.p, not o) */
    if (!done && pbw_on_cuda(ctx) && pbw_cuda_half_gemm()) {
        const int only = pbw_half_out_grad(ctx);
        if (!pbw_tensor_half_alloc(ctx, o, only)) return NULL;
        done = pbw_cuda_attention_fwd_keep(g, qkv->data, qkv->data + W, qkv->data + 2 * W, s.p,
                                           only ? NULL : o->data, o->half) == 0;
        if (!done) pbw_tensor_half_drop(o);
    }
#endif
    if (!done)
        PBW_KERNEL(ctx, attention_fwd, g, qkv->data, qkv->data + W, qkv->data + 2 * W, s.p,
                   o->data, scratch);
    if (pbw_needs_grad(ctx, &qkv, 1)) {
        pbw_node *n = pbw_tape_push(ctx, "attention_qkv", attention_qkv_backward, o, &qkv, 1, sizeof s);
        if (!n) return NULL;
        memcpy(n->saved, &s, sizeof s);
        if (n_queries == T) n->writes = 1u; /* qkv's gradient, whole */
    }
    return o;
}

/* ---- embedding ---- */

typedef struct {
    int32_t *ids; /* (n), device memory on CUDA */
    int64_t n;
} emb_saved;

static void embedding_backward(pbw_ctx *ctx, pbw_node *n) {
    const emb_saved *s = n->saved;
    float *gt = pbw_grad(ctx, n->in[0]);
    if (!gt) return;
    int64_t D = n->in[0]->shape[1];
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx)) { /* atomics where ids repeat: see pbw_cuda_embedding_backward */
        pbw_cuda_embedding_backward(n->out->grad, s->ids, gt, s->n, D);
        return;
    }
#endif
    for (int64_t i = 0; i < s->n; i++) { /* serial: ids may repeat */
        float *row = gt + (int64_t)s->ids[i] * D;
        const float *g = n->out->grad + i * D;
        for (int64_t d = 0; d < D; d++) row[d] += g[d];
    }
}

pbw_tensor *pbw_embedding(pbw_ctx *ctx, pbw_tensor *table, const int32_t *ids, int ids_ndim,
                          const int64_t *ids_shape) {
    if (pbw_op_begin(ctx, "embedding", 1, &table)) return NULL;
    if (table->ndim != 2) return pbw_ctx_fail(ctx, "embedding: table must be (V,D)");
    if (ids_ndim < 1 || ids_ndim >= PBW_MAX_DIMS) return pbw_ctx_fail(ctx, "embedding: ids rank %d", ids_ndim);
    int64_t V = table->shape[0], D = table->shape[1], n = 1, oshape[PBW_MAX_DIMS];
    for (int i = 0; i < ids_ndim; i++) {
        n *= ids_shape[i];
        oshape[i] = ids_shape[i];
    }
    oshape[ids_ndim] = D;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return pbw_ctx_fail(ctx, "embedding: id %d at position %lld is outside [0,%lld)",
                                (int)ids[i], (long long)i, (long long)V);
    pbw_tensor *y = pbw_tensor_new(ctx, ids_ndim + 1, oshape);
    if (!y) return NULL;
    int32_t *dev_ids = NULL; /* the ids in device memory, for the gather and the backward */
    if (pbw_on_cuda(ctx)) {
#ifdef PBW_HAVE_CUDA
        dev_ids = pbw_ctx_upload(ctx, ids, (size_t)n * sizeof(int32_t));
        if (!dev_ids) return pbw_ctx_fail(ctx, "embedding: out of memory");
        pbw_cuda_embedding_forward(table->data, dev_ids, y->data, n, D);
#endif
    } else {
        for (int64_t i = 0; i < n; i++)
            memcpy(y->data + i * D, table->data + (int64_t)ids[i] * D, (size_t)D * sizeof(float));
    }
    if (pbw_needs_grad(ctx, &table, 1)) {
        pbw_node *nd = pbw_tape_push(ctx, "embedding", embedding_backward, y, &table, 1, sizeof(emb_saved));
        int32_t *copy = dev_ids;
        if (!copy) {
            copy = pbw_arena_alloc(pbw_ctx_arena(ctx), (size_t)n * sizeof(int32_t) + 1);
            if (copy) memcpy(copy, ids, (size_t)n * sizeof(int32_t));
        }
        if (!nd || !copy) return pbw_ctx_fail(ctx, "embedding: out of memory");
        *(emb_saved *)nd->saved = (emb_saved){copy, n};
    }
    return y;
}
