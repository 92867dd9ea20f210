/* pbw_ops_linalg.c: matmul and linear (front-ends over the batched GEMM kernel: OpenBLAS on the
 * CPU, cuBLAS on CUDA). */
#include <string.h>

#include "cpu/pbw_cpu.h"
#include "pbw_ops_internal.h"

typedef struct {
    int ta, tb;
    int64_t M, N, K, batch;
    int64_t stride_b; /* 0 when b is shared by every batch item */
} matmul_saved;

static void matmul_backward(pbw_ctx *ctx, pbw_node *n) {
    const matmul_saved *s = n->saved;
    pbw_tensor *a = n->in[0], *b = n->in[1];
    /* written whole where node->writes says so (beta 0 while still unset), else added */
    float ba = 1.0f, bb = 1.0f;
    float *ga = (n->writes & 1u) ? pbw_grad_out(ctx, a, &ba) : pbw_grad(ctx, a);
    float *gb = (n->writes & 2u) ? pbw_grad_out(ctx, b, &bb) : pbw_grad(ctx, b);
    const float *gc = n->out->grad; /* (batch,M,N) */
    int64_t M = s->M, N = s->N, K = s->K, bs = s->batch;
    int64_t sa = M * K, sc = M * N;
    /* stored shapes: a is (M,K) or (K,M) when ta; b is (K,N) or (N,K) when tb */
    int64_t lda = s->ta ? M : K, ldb = s->tb ? K : N;
    if (ga) {
        if (!s->ta) /* gA (M,K) = gC op(B)^T */
            PBW_KERNEL(ctx, gemm_batched, 0, !s->tb, M, K, N, 1, gc, N, sc, b->data, ldb,
                       s->stride_b, ba, ga, K, sa, bs);
        else /* gA (K,M) = op(B) gC^T */
            PBW_KERNEL(ctx, gemm_batched, s->tb, 1, K, M, N, 1, b->data, ldb, s->stride_b, gc, N,
                       sc, ba, ga, M, sa, bs);
    }
    if (gb) {
        /* shared b: the batch items' contributions add into one matrix, one gemm each */
        int64_t sgb = s->stride_b;
        if (!s->tb) /* gB (K,N) = op(A)^T gC */
            PBW_KERNEL(ctx, gemm_batched, !s->ta, 0, K, N, M, 1, a->data, lda, sa, gc, N, sc, bb,
                       gb, N, sgb, bs);
        else /* gB (N,K) = gC^T op(A) */
            PBW_KERNEL(ctx, gemm_batched, 1, s->ta, N, K, M, 1, gc, N, sc, a->data, lda, sa, bb, gb,
                       K, sgb, bs);
    }
}

pbw_tensor *pbw_matmul(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b, int trans_a, int trans_b) {
    pbw_tensor *in[2] = {a, b};
    if (pbw_op_begin(ctx, "matmul", 2, in)) return NULL;
    char sa_[64], sb_[64];
    if (a->ndim < 2 || b->ndim < 2)
        return pbw_ctx_fail(ctx, "matmul: operands must have rank >= 2, got %s and %s",
                            pbw_shape_str(a, sa_, sizeof sa_), pbw_shape_str(b, sb_, sizeof sb_));
    int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int64_t br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    int64_t M = trans_a ? ac : ar, K = trans_a ? ar : ac;
    int64_t Kb = trans_b ? bc : br, N = trans_b ? br : bc;
    int64_t batch = (ar * ac != 0 ? a->numel / (ar * ac) : 0);
    int shared_b = b->ndim == 2;
    int batch_ok = shared_b || b->ndim == a->ndim;
    for (int d = 0; batch_ok && !shared_b && d < a->ndim - 2; d++)
        batch_ok = a->shape[d] == b->shape[d];
    if (K != Kb || !batch_ok)
        return pbw_ctx_fail(ctx, "matmul: shapes %s%s and %s%s do not multiply",
                            pbw_shape_str(a, sa_, sizeof sa_), trans_a ? "^T" : "",
                            pbw_shape_str(b, sb_, sizeof sb_), trans_b ? "^T" : "");
    int64_t oshape[PBW_MAX_DIMS];
    memcpy(oshape, a->shape, sizeof oshape);
    oshape[a->ndim - 2] = M;
    oshape[a->ndim - 1] = N;
    pbw_tensor *c = pbw_tensor_new(ctx, a->ndim, oshape);
    if (!c) return NULL;
    matmul_saved s = {trans_a, trans_b, M, N, K, batch, shared_b ? 0 : K * N};
    if (shared_b && !trans_a) { /* one tall product: (batch*M,K) @ op(B) */
        s.M = M * batch;
        s.batch = 1;
    }
    int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
    PBW_KERNEL(ctx, gemm_batched, trans_a, trans_b, s.M, N, K, 1, a->data, lda, s.M * K, b->data,
               ldb, s.stride_b, 0, c->data, N, s.M * N, s.batch);
    if (pbw_needs_grad(ctx, in, 2)) {
        pbw_node *n = pbw_tape_push(ctx, "matmul", matmul_backward, c, in, 2, sizeof s);
        if (!n) return NULL;
        memcpy(n->saved, &s, sizeof s);
        /* a's gradient is one product's output, item by item; b's too unless the items share b
         * and add into it one product each (node->writes: no zeroing pass where still unset).
         * ToRGB's product of a generator block's output: 62 MB an Adam step at 256 px that
         * were zeroed first and then read back as the products added to them. */
        n->writes = 1u | (s.stride_b != 0 || s.batch == 1 ? 2u : 0u);
    }
    return c;
}

/* in: x, w, b (may be NULL), r (linear_add's residual; may be NULL) */
static void linear_backward(pbw_ctx *ctx, pbw_node *n) {
    pbw_tensor *x = n->in[0], *w = n->in[1], *b = n->nin > 2 ? n->in[2] : NULL;
    pbw_tensor *r = n->nin > 3 ? n->in[3] : NULL;
    int64_t O = w->shape[0], I = w->shape[1], R = x->numel / I;
    const float *gy = n->out->grad; /* (R,O) */
    /* x's and r's gradients are written whole (node->writes): beta 0 when still unset */
    float bx = 1.0f, br = 1.0f;
    float *gx = pbw_grad_out(ctx, x, &bx), *gw = pbw_grad(ctx, w);
    float *gb = b ? pbw_grad(ctx, b) : NULL;
    /* r's gradient is gy itself: r takes gy's buffer when still unset (pbw_grad_pass) */
    float *gr = r && !pbw_grad_pass(ctx, r, n->out) ? pbw_grad_out(ctx, r, &br) : NULL;
#ifdef PBW_HAVE_CUDA
    /* x's gradient in bf16 alone where the op that made x reads it so (grad_half_wanted:
     * QuickGELU's backward) and the product below writes it whole */
    void *gxh = gx ? pbw_grad_half_room(ctx, x, bx) : NULL;
    /* gy written in bf16 alone by its producer (grad_half_wanted): the product reads it (gy's
     * fp32 values are then never written: nothing below reads them with gx done and no gw,
     * gb or gr) */
    if (n->out->grad_half) {
        if (gx && !gw && !gb && !gr &&
            pbw_cuda_linear_backward_half_gy(n->out->grad_half, w->data, gx, bx, gxh, R, O, I) ==
                0)
            gx = NULL;
        else if (pbw_grad_sync(ctx, n->out))
            return;
    }
    /* a bf16 copy of gy written beside it by the op that completed it: the product reads
     * that (r's gradient below, in fp32) */
    if (gx && n->out->grad_half_copy &&
        pbw_cuda_linear_backward_half_gy(n->out->grad_half_copy, w->data, gx, bx, gxh, R, O, I) ==
            0)
        gx = NULL;
    /* bf16 operands for gx (and gr gets gy in the same pass) where the precision allows */
    if (gx && pbw_on_cuda(ctx) &&
        pbw_cuda_linear_backward_half(gy, w->data, gx, bx, gxh, gr, br, R, O, I) == 0)
        gx = gr = NULL;
    if (!gx && gxh) x->grad_half = gxh;
#endif
    if (gr) {
        int64_t shape[5] = {1, 1, 1, 1, R * O}, st[5] = {0, 0, 0, 0, 1};
        if (br != 0.0f) PBW_KERNEL(ctx, accumulate, shape, gy, st, gr, st, 1.0f);
        else PBW_KERNEL(ctx, copy_strided, shape, gy, st, gr, st);
    }
#ifdef PBW_HAVE_CUDA
    /* one row (a latent's styles) under the half precisions: a matrix-vector kernel */
    if (gx && R == 1 && pbw_on_cuda(ctx) &&
        pbw_cuda_rowvec_backward(gy, w->data, gx, bx, O, I) == 0)
        gx = NULL;
#endif
    if (gx)
        PBW_KERNEL(ctx, gemm_batched, 0, 0, R, I, O, 1, gy, O, 0, w->data, I, 0, bx, gx, I, 0, 1);
    if (gw)
        PBW_KERNEL(ctx, gemm_batched, 1, 0, O, I, R, 1, gy, O, 0, x->data, I, 0, 1, gw, I, 0, 1);
    if (gb) {
#ifdef PBW_HAVE_CUDA
        if (pbw_on_cuda(ctx)) {
            pbw_cuda_bias_rows_backward(gy, gb, R, O);
            return;
        }
#endif
        int64_t shape[5] = {1, 1, 1, R, O}, sy[5] = {0, 0, 0, O, 1}, sb[5] = {0, 0, 0, 0, 1};
        pbw_cpu_accumulate(shape, gy, sy, gb, sb, 1.0f);
    }
}

/* Whether the float data of a and b share any byte (a view of one inside the other too). */
static int overlaps(const pbw_tensor *a, const pbw_tensor *b) {
    const char *pa = (const char *)a->data, *pb = (const char *)b->data;
    return pa < pb + (size_t)b->numel * sizeof(float) && pb < pa + (size_t)a->numel * sizeof(float);
}

/* Whether x (..., I) fits the weight w (O, I) and its bias b (O values, or NULL); then the
 * output's shape (x's, its last dimension O) in oshape and the product's rows in *R. */
static int linear_fits(const pbw_tensor *x, const pbw_tensor *w, const pbw_tensor *b,
                       int64_t oshape[PBW_MAX_DIMS], int64_t *R) {
    if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1] ||
        (b && b->numel != w->shape[0]))
        return 0;
    memcpy(oshape, x->shape, sizeof(int64_t) * PBW_MAX_DIMS);
    oshape[x->ndim - 1] = w->shape[0];
    *R = x->numel / (w->shape[1] ? w->shape[1] : 1);
    return 1;
}

/* y = x W^T (+ b) (+ r). x may be half_only (half activations): the product reads its half
 * values; y is then half_only too when no residual is added. into: y is r itself (r += ...)
 * when nothing can need r's old values: no gradient for this op and an empty tape (an op
 * recorded earlier may have saved r for its backward) and r shares no memory with x; else a
 * new tensor as without it. Under half activations r += ... then runs on r's half values (a
 * residual stream kept in the half type: r half_only after it, read so by the next add and
 * by layer norm) when r has them. */
static pbw_tensor *linear(pbw_ctx *ctx, const char *op, pbw_tensor *x, pbw_tensor *w,
                          pbw_tensor *b, pbw_tensor *r, int into) {
    pbw_tensor *in[4] = {x, w, b, r};
    if (pbw_op_begin_half(ctx, op, 1, &x) || pbw_op_begin(ctx, op, 1, &w) ||
        (b && pbw_op_begin(ctx, op, 1, &b)) ||
        (r && (into ? pbw_op_begin_half : pbw_op_begin)(ctx, op, 1, &r)))
        return NULL;
    char sx[64], sw[64];
    int64_t oshape[PBW_MAX_DIMS], R;
    if (!linear_fits(x, w, b, oshape, &R))
        return pbw_ctx_fail(ctx, "%s: input %s does not fit weight %s%s", op,
                            pbw_shape_str(x, sx, sizeof sx), pbw_shape_str(w, sw, sizeof sw),
                            b ? " and its bias" : "");
    const int64_t O = w->shape[0], I = w->shape[1];
    if (r && (r->ndim != x->ndim || memcmp(r->shape, oshape, sizeof(int64_t) * (size_t)x->ndim)))
        return pbw_ctx_fail(ctx, "%s: the residual %s differs from the output's shape", op,
                            pbw_shape_str(r, sx, sizeof sx));
    const int nin = r ? 4 : b ? 3 : 2;
    /* the weight's gradient reads x's fp32 values, which a half_only x has not written */
    if (x->half_only && pbw_needs_grad(ctx, &w, 1) && pbw_tensor_sync_f32(ctx, x)) return NULL;
    pbw_tensor *y = NULL;
    if (into && !overlaps(r, x) && !pbw_needs_grad(ctx, in, nin) && !pbw_ctx_mark_get(ctx).tape) {
        y = r;
#ifdef PBW_HAVE_CUDA
        if (x->half && r->half && !r->half_nhwc && pbw_half_out(ctx, in, nin) &&
            pbw_cuda_linear_lt(NULL, x->half, w->data, b ? b->data : NULL, NULL, NULL, r->half,
                               r->half, R, O, I) == 0) {
            r->half_only = 1; /* its fp32 values are stale now */
            return r;
        }
#endif
        if (pbw_tensor_sync_f32(ctx, r)) return NULL;
        r->half = NULL; /* r's values change: a half copy would be stale */
        r->half_nhwc = 0;
    } else if ((r && pbw_tensor_sync_f32(ctx, r)) || !(y = pbw_tensor_new(ctx, x->ndim, oshape)))
        return NULL;
    int done = 0;
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx)) { /* one product with the bias (and residual) in its epilogue */
        const float *bd = b ? b->data : NULL, *rd = r ? r->data : NULL;
        const int grad = pbw_needs_grad(ctx, in, nin);
        /* half activations: half out, with gradients too (the backward reads x, not y) */
        if (x->half && !r && (grad ? pbw_half_out_grad(ctx) : pbw_half_out(ctx, in, nin))) {
            if (!pbw_tensor_half_alloc(ctx, y, 1)) return NULL;
            done = pbw_cuda_linear_lt(NULL, x->half, w->data, bd, NULL, NULL, y->half, NULL, R, O,
                                      I) == 0;
            if (done && !grad) return y; /* no gradient: nothing to record */
            if (!done) pbw_tensor_half_drop(y);
        }
        /* a half_only x serves when the weight has a half copy; else its fp32 values */
        if (!done)
            done = pbw_cuda_linear_lt(x->half_only ? NULL : x->data, x->half, w->data, bd, rd,
                                      y->data, NULL, NULL, R, O, I) == 0;
        if (!done && x->half_only) {
            if (pbw_tensor_sync_f32(ctx, x)) return NULL;
            done = pbw_cuda_linear_lt(x->data, x->half, w->data, bd, rd, y->data, NULL, NULL, R,
                                      O, I) == 0;
        }
    }
#endif
    if (!done && y == r) { /* in place: r += x W^T, then the bias */
        PBW_KERNEL(ctx, gemm_batched, 0, 1, R, O, I, 1, x->data, I, 0, w->data, I, 0, 1.0f,
                   y->data, O, 0, 1);
        if (b) {
            int64_t shape[5] = {1, 1, 1, R, O}, sb[5] = {0, 0, 0, 0, 1}, sy[5] = {0, 0, 0, O, 1};
            PBW_KERNEL(ctx, accumulate, shape, b->data, sb, y->data, sy, 1.0f);
        }
    } else if (!done) { /* start from the bias (or zero), add x W^T, then the residual */
        if (b) {
#ifdef PBW_HAVE_CUDA
            if (pbw_on_cuda(ctx)) pbw_cuda_bias_rows_forward(b->data, y->data, R, O);
            else
#endif
#pragma omp parallel for schedule(static) if (R * O > 32768)
                for (int64_t i = 0; i < R; i++)
                    memcpy(y->data + i * O, b->data, (size_t)O * sizeof(float));
        }
        PBW_KERNEL(ctx, gemm_batched, 0, 1, R, O, I, 1, x->data, I, 0, w->data, I, 0,
                   b ? 1.0f : 0.0f, y->data, O, 0, 1);
        if (r) {
            int64_t shape[5] = {1, 1, 1, 1, R * O}, st[5] = {0, 0, 0, 0, 1};
            PBW_KERNEL(ctx, accumulate, shape, r->data, st, y->data, st, 1.0f);
        }
    }
    if (pbw_needs_grad(ctx, in, nin)) {
        pbw_node *n = pbw_tape_push(ctx, op, linear_backward, y, in, nin, 0);
        if (!n) return NULL;
        n->writes = 1u | 8u; /* x's gradient (a product) and r's (a copy of the output's) */
        n->reads_grad_half = 1;
#ifdef PBW_HAVE_CUDA
        /* where the input gradient will be a product of bf16 operands and y's gradient feeds
         * nothing else, y's gradient may come in bf16 alone (pbw_tensor.grad_half) */
        const int half_gy = pbw_on_cuda(ctx) && x->requires_grad && !w->requires_grad &&
                            !(b && b->requires_grad) && !pbw_env_zero("PBW_CUDA_HALF_GRAD") &&
                            pbw_cuda_linear_backward_half_ok(w->data, R, O, I);
        y->grad_half_wanted = half_gy && !r;
        /* with a residual, y's gradient is r's too (in fp32): a bf16 copy beside it, written
         * by the op that completes it (a layer norm's backward: pbw_tensor.grad_half_copy) */
        y->grad_half_copy_wanted = half_gy;
#endif
    }
    return y;
}

pbw_tensor *pbw_linear(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b) {
    return linear(ctx, "linear", x, w, b, NULL, 0);
}

pbw_tensor *pbw_linear_add(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                           pbw_tensor *r) {
    if (!r && !pbw_ctx_failed(ctx)) return pbw_ctx_fail(ctx, "linear_add: the residual is NULL");
    return linear(ctx, "linear_add", x, w, b, r, 0);
}

pbw_tensor *pbw_linear_add_into(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                                pbw_tensor *r) {
    if (!r && !pbw_ctx_failed(ctx)) return pbw_ctx_fail(ctx, "linear_add: the residual is NULL");
    return linear(ctx, "linear_add", x, w, b, r, 1);
}

/* ---- one row through n maps (pbw_linear_multi) ---- */

#ifdef PBW_HAVE_CUDA
typedef struct {
    int n;
    pbw_tensor *x, **w, **y; /* (1,I); n weights (O_k,I); their outputs */
} multi_group;

typedef struct {
    multi_group *g;
    int k; /* this node's output: g->y[k] */
} multi_saved;

/* The first of the group's nodes the backward reaches (the last recorded whose output has a
 * gradient; pbw_backward passes over the others' nodes) runs every map's input gradient: each
 * node's output gradient is final by then, since the n nodes were recorded together before
 * anything that reads their outputs. Decided from the gradients alone, so a second backward
 * over the same tape runs it again. */
static void linear_multi_backward(pbw_ctx *ctx, pbw_node *nd) {
    const multi_saved *sv = nd->saved;
    multi_group *g = sv->g;
    for (int k = sv->k + 1; k < g->n; k++)
        if (g->y[k]->grad) return; /* that node ran the group */
    const float *gy[PBW_CUDA_ROWVEC_MULTI], *w[PBW_CUDA_ROWVEC_MULTI];
    int64_t O[PBW_CUDA_ROWVEC_MULTI];
    /* the partial sums its consumers left (grad_parts_ok), every output's in one kernel */
    if (pbw_grad_sync_many(ctx, g->n, g->y)) return;
    for (int k = 0; k < g->n; k++) {
        pbw_tensor *y = g->y[k];
        /* as pbw_backward prepares a node's output gradient: unreached or unset adds nothing */
        gy[k] = y->grad && !y->grad_unset ? y->grad : NULL;
        w[k] = g->w[k]->data;
        O[k] = g->w[k]->shape[0];
    }
    const int64_t I = g->x->shape[1];
    float beta = 1.0f;
    float *gx = pbw_grad_out(ctx, g->x, &beta);
    float *scratch = gx ? pbw_ctx_alloc(ctx, (size_t)(g->n * I) * sizeof(float) + 16) : NULL;
    if (gx && (!scratch ||
               pbw_cuda_rowvec_multi_backward(g->n, gy, w, O, gx, beta, I, scratch) != 0))
        pbw_ctx_fail(ctx, "linear_multi: the input gradient could not be enqueued");
}
#endif

int pbw_linear_multi_fused(pbw_ctx *ctx, const pbw_tensor *x, int n, pbw_tensor *const *w,
                           pbw_tensor *const *b) {
#ifdef PBW_HAVE_CUDA
    if (pbw_ctx_failed(ctx) || !x || !w || !pbw_on_cuda(ctx) || n < 1 ||
        n > PBW_CUDA_ROWVEC_MULTI || x->ndim != 2 || x->shape[0] != 1 || x->half_only ||
        x->device != PBW_DEV_CUDA)
        return 0;
    int64_t O[PBW_CUDA_ROWVEC_MULTI];
    for (int k = 0; k < n; k++) {
        const pbw_tensor *bk = b ? b[k] : NULL;
        if (!w[k] || w[k]->ndim != 2 || w[k]->shape[1] != x->shape[1] || w[k]->requires_grad ||
            w[k]->device != PBW_DEV_CUDA || w[k]->half_only ||
            (bk && (bk->numel != w[k]->shape[0] || bk->requires_grad ||
                    bk->device != PBW_DEV_CUDA || bk->half_only)))
            return 0;
        O[k] = w[k]->shape[0];
    }
    return pbw_cuda_rowvec_multi_ok(n, O, x->shape[1]);
#else
    (void)ctx, (void)x, (void)n, (void)w, (void)b;
    return 0;
#endif
}

int pbw_linear_multi(pbw_ctx *ctx, pbw_tensor *x, int n, pbw_tensor *const *w,
                     pbw_tensor *const *b, pbw_tensor **y) {
    for (int k = 0; k < n; k++) y[k] = NULL;
    if (pbw_ctx_failed(ctx)) return -1;
    if (!x || n < 1 || !w) {
        pbw_ctx_fail(ctx, "linear_multi: no input or no maps");
        return -1;
    }
#ifdef PBW_HAVE_CUDA
    if (pbw_linear_multi_fused(ctx, x, n, w, b)) { /* one kernel forward, two backward */
        const float *wd[PBW_CUDA_ROWVEC_MULTI], *bd[PBW_CUDA_ROWVEC_MULTI];
        float *yd[PBW_CUDA_ROWVEC_MULTI];
        int64_t O[PBW_CUDA_ROWVEC_MULTI];
        for (int k = 0; k < n; k++) {
            wd[k] = w[k]->data;
            bd[k] = b && b[k] ? b[k]->data : NULL;
            O[k] = w[k]->shape[0];
            if (!(y[k] = pbw_tensor_new(ctx, 2, (int64_t[]){1, O[k]}))) return -1;
            yd[k] = y[k]->data;
        }
        if (pbw_cuda_rowvec_multi_forward(n, x->data, wd, bd, yd, O, x->shape[1])) {
            pbw_ctx_fail(ctx, "linear_multi: the products could not be enqueued");
            return -1;
        }
        pbw_tensor *in[3] = {x, NULL, NULL};
        if (!pbw_needs_grad(ctx, in, 1)) return 0;
        multi_group *g = pbw_arena_alloc(pbw_ctx_arena(ctx), sizeof *g);
        pbw_tensor **ws = pbw_arena_alloc(pbw_ctx_arena(ctx), 2 * (size_t)n * sizeof *ws);
        if (!g || !ws) {
            pbw_ctx_fail(ctx, "linear_multi: out of memory");
            return -1;
        }
        *g = (multi_group){n, x, ws, ws + n};
        for (int k = 0; k < n; k++) {
            ws[k] = w[k];
            ws[n + k] = y[k];
            y[k]->grad_parts_ok = 1; /* finished together by linear_multi_backward */
            in[1] = w[k];
            in[2] = b ? b[k] : NULL;
            pbw_node *nd = pbw_tape_push(ctx, "linear_multi", linear_multi_backward, y[k], in,
                                         in[2] ? 3 : 2, sizeof(multi_saved));
            if (!nd) return -1;
            *(multi_saved *)nd->saved = (multi_saved){g, k};
            nd->writes = 1u; /* the first node reached writes x's gradient (pbw_grad_out) */
        }
        return 0;
    }
#endif
    for (int k = 0; k < n; k++)
        if (!(y[k] = pbw_linear(ctx, x, w[k], b ? b[k] : NULL))) return -1;
    return 0;
}

pbw_tensor *pbw_linear_quick_gelu(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b) {
#ifdef PBW_HAVE_CUDA
    pbw_tensor *in[3] = {x, w, b};
    int64_t oshape[PBW_MAX_DIMS], R;
    if (x && w && b && pbw_on_cuda(ctx) && x->half_only && linear_fits(x, w, b, oshape, &R) &&
        pbw_half_out(ctx, in, 3)) {
        if (pbw_op_begin_half(ctx, "linear_quick_gelu", 1, &x) ||
            pbw_op_begin(ctx, "linear_quick_gelu", 2, in + 1))
            return NULL;
        const int64_t O = w->shape[0], I = w->shape[1];
        pbw_tensor *y = pbw_tensor_new(ctx, x->ndim, oshape);
        if (!y || !pbw_tensor_half_alloc(ctx, y, 1)) return NULL;
        /* x stays half_only unless it was held as NHWC halves (pbw_op_begin_half wrote it) */
        if (x->half_only &&
            pbw_cuda_linear_quick_gelu(x->half, w->data, b->data, y->half, R, O, I) == 0)
            return y; /* no gradient: nothing to record */
        /* not taken: y's memory stays with the context until its next release */
    }
#endif
    return pbw_quick_gelu(ctx, pbw_linear(ctx, x, w, b));
}

pbw_tensor *pbw_layer_norm_linear(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *ln_w, pbw_tensor *ln_b,
                                  float eps, pbw_tensor *w, pbw_tensor *b, int quick_gelu) {
#ifdef PBW_HAVE_CUDA
    pbw_tensor *in[5] = {x, ln_w, ln_b, w, b};
    int64_t oshape[PBW_MAX_DIMS], R;
    /* x's half values serve: half_only (a residual stream kept in the half type) or a half
     * copy beside its fp32 values (CLIP's ln_pre output) */
    if (x && ln_w && ln_b && w && b && pbw_on_cuda(ctx) && x->half &&
        linear_fits(x, w, b, oshape, &R) && ln_w->numel == w->shape[1] &&
        ln_b->numel == w->shape[1] && pbw_half_out(ctx, in, 5)) {
        const char *op = "layer_norm_linear";
        if (pbw_op_begin_half(ctx, op, 1, &x) || pbw_op_begin(ctx, op, 4, in + 1)) return NULL;
        const int64_t O = w->shape[0], I = w->shape[1];
        pbw_tensor *y = pbw_tensor_new(ctx, x->ndim, oshape);
        pbw_tensor *st = pbw_tensor_new(ctx, 1, (int64_t[]){R}); /* the rows' 1/std */
        if (!y || !st || !pbw_tensor_half_alloc(ctx, y, 1)) return NULL;
        /* unless x was held as NHWC halves (pbw_op_begin_half wrote its fp32 values) */
        if (x->half && !x->half_nhwc &&
            pbw_cuda_layer_norm_linear(x->half, ln_w->data, ln_b->data, eps, w->data, b->data,
                                       y->half, st->data, R, O, I, quick_gelu) == 0)
            return y; /* no gradient: nothing to record */
        /* not taken: y's memory stays with the context until its next release */
    }
#endif
    pbw_tensor *h = pbw_layer_norm(ctx, x, ln_w, ln_b, eps);
    return quick_gelu ? pbw_linear_quick_gelu(ctx, h, w, b) : pbw_linear(ctx, h, w, b);
}
