/* pbw_ops_elementwise.c: unary and broadcasting binary ops (front-ends; kernels in
 * src/cpu/pbw_cpu_elementwise.c and src/cuda/pbw_cuda_elementwise.cu, chosen by PBW_KERNEL).
 * Also the helpers of pbw_ops_internal.h (argument checks, 5-D shapes and strides). */
#include <string.h>

#include "cpu/pbw_cpu.h"
#include "pbw_ops_internal.h"

static int op_begin(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts, int sync);

/* mode: SYNC_ALL, or READS_HALF (half copies in row-major layout: NHWC ones are synced), or
 * READS_NHWC (NHWC half copies: other half-only tensors are synced) */
enum { SYNC_ALL = 0, READS_HALF = 1, READS_NHWC = 2 };

int pbw_op_begin(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts) {
    return op_begin(ctx, op, n, ts, SYNC_ALL);
}

int pbw_op_begin_half(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts) {
    return op_begin(ctx, op, n, ts, READS_HALF);
}

int pbw_op_begin_nhwc(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts) {
    return op_begin(ctx, op, n, ts, READS_NHWC);
}

/* Half activations asked for on a CUDA context that keeps them (pbw_half_out's terms but the
 * gradient). */
static int half_acts_on(pbw_ctx *ctx) {
#ifdef PBW_HAVE_CUDA
    return pbw_ctx_half_activations(ctx) && pbw_on_cuda(ctx) && pbw_cuda_half_acts();
#else
    (void)ctx;
    return 0;
#endif
}

int pbw_half_out(pbw_ctx *ctx, pbw_tensor *const *in, int n) {
    return half_acts_on(ctx) && !pbw_needs_grad(ctx, in, n);
}

int pbw_half_out_grad(pbw_ctx *ctx) {
#ifdef PBW_HAVE_CUDA
    return half_acts_on(ctx) && pbw_cuda_half_acts_grad();
#else
    (void)ctx;
    return 0;
#endif
}

void *pbw_tensor_half_alloc(pbw_ctx *ctx, pbw_tensor *t, int only) {
    t->half = pbw_ctx_alloc(ctx, (size_t)t->numel * 2 + 16);
    t->half_only = t->half && only;
    return t->half;
}

void pbw_tensor_half_drop(pbw_tensor *t) {
    t->half = NULL;
    t->half_only = t->half_nhwc = 0;
}

void *pbw_grad_half_room(pbw_ctx *ctx, const pbw_tensor *t, float beta) {
    return beta == 0.0f && t->grad_half_wanted ? pbw_ctx_alloc_opt(ctx, (size_t)t->numel * 2 + 16)
                                               : NULL;
}

static int op_begin(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts, int mode) {
    if (pbw_ctx_failed(ctx)) return -1;
    if (pbw_profile_enabled()) pbw_profile_op(op);
    for (int i = 0; i < n; i++) {
        if (!ts[i]) {
            pbw_ctx_fail(ctx, "%s: input %d is NULL", op, i);
            return -1;
        }
        if (ts[i]->dtype != PBW_F32) {
            pbw_ctx_fail(ctx, "%s: input %d is %s; convert weights with pbw_tensor_to_f32", op, i,
                         pbw_dtype_name(ts[i]->dtype));
            return -1;
        }
        if (ts[i]->device != pbw_ctx_device(ctx)) {
            pbw_ctx_fail(ctx, "%s: input %d is on another device than the context", op, i);
            return -1;
        }
        const int keep = mode == READS_HALF ? !ts[i]->half_nhwc
                                            : mode == READS_NHWC && ts[i]->half_nhwc;
        if (ts[i]->half_only && !keep && pbw_tensor_sync_f32(ctx, ts[i])) return -1;
    }
    return 0;
}

void pbw_shape5(const pbw_tensor *t, int64_t *s5) {
    int off = 5 - t->ndim;
    for (int d = 0; d < 5; d++) s5[d] = d < off ? 1 : t->shape[d - off];
}

void pbw_dense_strides5(const int64_t *shape5, int64_t *st) {
    int64_t s = 1;
    for (int d = 4; d >= 0; d--) {
        st[d] = s;
        s *= shape5[d];
    }
}

void pbw_strides5(const pbw_tensor *t, const int64_t *shape5, int64_t *st) {
    int64_t own[5];
    pbw_shape5(t, own);
    pbw_dense_strides5(own, st);
    for (int d = 0; d < 5; d++)
        if (own[d] == 1 && shape5[d] != 1) st[d] = 0;
}

int pbw_axis(int axis, int ndim) {
    if (axis < 0) axis += ndim;
    return axis >= 0 && axis < ndim ? axis : -1;
}

/* ---- unary ---- */

typedef struct {
    pbw_unary_op op;
    float p0, p1;
} unary_saved;

static void unary_backward(pbw_ctx *ctx, pbw_node *n) {
    const unary_saved *s = n->saved;
    float beta;
    pbw_tensor *x = n->in[0];
    float *gx = pbw_grad_out(ctx, x, &beta);
    if (!gx) return;
#ifdef PBW_HAVE_CUDA
    /* x's gradient in bf16 alone where a path below writes it so (the room asked for once:
     * NULL unless the product that reads it wants that copy, grad_half_wanted) */
    const int quick = s->op == PBW_UN_QUICK_GELU && x->numel % 4 == 0 && pbw_on_cuda(ctx);
    void *h = x->half_only || quick ? pbw_grad_half_room(ctx, x, beta) : NULL;
    /* the output's gradient in bf16 alone (grad_half_wanted: the product after QuickGELU
     * wrote it so): read as it is where x's halves and x's gradient in bf16 are taken too */
    if (n->out->grad_half) {
        if (h && x->half_only &&
            pbw_cuda_unary_backward_half_hh(s->op, s->p0, s->p1, x->half, n->out->grad_half, h,
                                            x->numel) == 0) {
            x->grad_half = h;
            return;
        }
        if (pbw_grad_sync(ctx, n->out)) return;
    }
    if (x->half_only) { /* the forward read x's halves alone (pbw_half_out_grad) */
        if (h && pbw_cuda_unary_backward_half_hx(s->op, s->p0, s->p1, x->half, n->out->grad, h,
                                                 x->numel) == 0) {
            x->grad_half = h;
            return;
        }
        if (pbw_tensor_sync_f32(ctx, x)) return; /* else x's fp32 values, written now */
    }
    /* written whole for a product that reads it in bf16 (grad_half_wanted): that copy alone */
    if (quick && h &&
        pbw_cuda_unary_backward_half(s->op, s->p0, s->p1, x->data, n->out->data, n->out->grad,
                                     h, x->numel) == 0) {
        x->grad_half = h;
        return;
    }
#endif
    PBW_KERNEL(ctx, unary_backward, s->op, s->p0, s->p1, x->data, n->out->data, n->out->grad, gx,
               n->out->numel, beta != 0.0f);
}

static pbw_tensor *unary(pbw_ctx *ctx, const char *name, pbw_tensor *x, pbw_unary_op op, float p0,
                         float p1) {
    const int half_in = op == PBW_UN_QUICK_GELU || op == PBW_UN_GELU; /* pbw_cuda_unary_half */
    if ((half_in ? pbw_op_begin_half : pbw_op_begin)(ctx, name, 1, &x)) return NULL;
    pbw_tensor *y = pbw_tensor_new(ctx, x->ndim, x->shape);
    if (!y) return NULL;
    const int grad = pbw_needs_grad(ctx, &x, 1);
    int done = 0;
#ifdef PBW_HAVE_CUDA
    if (x->half_only) { /* half activations: half in, half out when the kernel takes it; with
                         * gradients QuickGELU alone, whose backward reads x's halves then */
        if (grad ? op == PBW_UN_QUICK_GELU && pbw_half_out_grad(ctx) : pbw_half_out(ctx, &x, 1)) {
            if (!pbw_tensor_half_alloc(ctx, y, 1)) return NULL;
            done = pbw_cuda_unary_half(op, p0, p1, x->half, y->half, x->numel) == 0;
            if (done && !grad) return y;
            if (!done) pbw_tensor_half_drop(y);
            /* where its backward writes x's gradient in bf16 alone (the product that made x
             * reads it so), it takes y's in bf16 too: the product after may write it so */
            y->grad_half_wanted = done && x->grad_half_wanted && pbw_cuda_half_gx();
        }
        if (!done && pbw_tensor_sync_f32(ctx, x)) return NULL;
    }
    /* QuickGELU feeds CLIP's second MLP product: a half copy too when products read one, or
     * the half values alone (its backward reads x, not y) */
    if (!done && op == PBW_UN_QUICK_GELU && pbw_on_cuda(ctx) && pbw_cuda_half_gemm()) {
        const int only = pbw_half_out_grad(ctx);
        if (!pbw_tensor_half_alloc(ctx, y, only)) return NULL;
        done = pbw_cuda_unary_forward_half(op, p0, p1, x->data, only ? NULL : y->data, y->half,
                                           x->numel) == 0;
        if (!done) { /* no vector path for these sizes (y's fp32 values written unless only) */
            pbw_tensor_half_drop(y);
            done = !only;
        }
    }
#endif
    if (!done) PBW_KERNEL(ctx, unary_forward, op, p0, p1, x->data, y->data, x->numel);
    if (grad) {
        pbw_node *n = pbw_tape_push(ctx, name, unary_backward, y, &x, 1, sizeof(unary_saved));
        if (!n) return NULL;
        *(unary_saved *)n->saved = (unary_saved){op, p0, p1};
        n->writes = 1u; /* every element of x's gradient */
        n->reads_grad_half = 1;
    }
    return y;
}

pbw_tensor *pbw_affine(pbw_ctx *ctx, pbw_tensor *x, float s, float t) {
    return unary(ctx, "affine", x, PBW_UN_AFFINE, s, t);
}
pbw_tensor *pbw_scale(pbw_ctx *ctx, pbw_tensor *x, float s) { return pbw_affine(ctx, x, s, 0); }
pbw_tensor *pbw_add_scalar(pbw_ctx *ctx, pbw_tensor *x, float t) {
    return pbw_affine(ctx, x, 1, t);
}
pbw_tensor *pbw_relu(pbw_ctx *ctx, pbw_tensor *x) { return unary(ctx, "relu", x, PBW_UN_RELU, 0, 0); }
pbw_tensor *pbw_leaky_relu(pbw_ctx *ctx, pbw_tensor *x, float slope) {
    return unary(ctx, "leaky_relu", x, PBW_UN_LEAKY_RELU, slope, 0);
}
pbw_tensor *pbw_gelu(pbw_ctx *ctx, pbw_tensor *x) { return unary(ctx, "gelu", x, PBW_UN_GELU, 0, 0); }
pbw_tensor *pbw_quick_gelu(pbw_ctx *ctx, pbw_tensor *x) {
    return unary(ctx, "quick_gelu", x, PBW_UN_QUICK_GELU, 0, 0);
}
pbw_tensor *pbw_sigmoid(pbw_ctx *ctx, pbw_tensor *x) {
    return unary(ctx, "sigmoid", x, PBW_UN_SIGMOID, 0, 0);
}
pbw_tensor *pbw_tanh(pbw_ctx *ctx, pbw_tensor *x) { return unary(ctx, "tanh", x, PBW_UN_TANH, 0, 0); }
pbw_tensor *pbw_sqrt(pbw_ctx *ctx, pbw_tensor *x) { return unary(ctx, "sqrt", x, PBW_UN_SQRT, 0, 0); }
pbw_tensor *pbw_rsqrt(pbw_ctx *ctx, pbw_tensor *x) {
    return unary(ctx, "rsqrt", x, PBW_UN_RSQRT, 0, 0);
}
pbw_tensor *pbw_exp(pbw_ctx *ctx, pbw_tensor *x) { return unary(ctx, "exp", x, PBW_UN_EXP, 0, 0); }
pbw_tensor *pbw_abs(pbw_ctx *ctx, pbw_tensor *x) { return unary(ctx, "abs", x, PBW_UN_ABS, 0, 0); }
pbw_tensor *pbw_square(pbw_ctx *ctx, pbw_tensor *x) {
    return unary(ctx, "square", x, PBW_UN_SQUARE, 0, 0);
}
pbw_tensor *pbw_clamp(pbw_ctx *ctx, pbw_tensor *x, float lo, float hi) {
    if (x && !(lo <= hi)) return pbw_ctx_fail(ctx, "clamp: lo %g > hi %g", lo, hi);
    return unary(ctx, "clamp", x, PBW_UN_CLAMP, lo, hi);
}

/* ---- binary with broadcasting ---- */

typedef struct {
    pbw_binary_op op;
    int64_t shape[5];
} binary_saved;

int pbw_grad_pass_to(pbw_ctx *ctx, pbw_tensor *t, pbw_node *n, const int64_t *shape,
                     const int64_t *sy, const int64_t *st, int may_take) {
    if (may_take && pbw_grad_pass(ctx, t, n->out)) return 1;
    float beta;
    float *g = pbw_grad_out(ctx, t, &beta);
    if (!g) return 0;
    if (beta == 0.0f) PBW_KERNEL(ctx, copy_strided, shape, n->out->grad, sy, g, st);
    else PBW_KERNEL(ctx, accumulate, shape, n->out->grad, sy, g, st, 1.0f);
    return 0;
}

/* An add's operands of the output's shape, and a sub's first, get the output's gradient
 * unchanged (node->writes): the first of them still unset takes the output's gradient buffer
 * itself (at most one may: both would then add into it), the other is copied (pbw_grad_pass_to). */
static void binary_backward(pbw_ctx *ctx, pbw_node *n) {
    const binary_saved *s = n->saved;
    pbw_tensor *a = n->in[0], *b = n->in[1];
    int64_t sa[5], sb[5], sy[5];
    pbw_strides5(a, s->shape, sa);
    pbw_strides5(b, s->shape, sb);
    pbw_dense_strides5(s->shape, sy);
    int taken = 0;
    if (n->writes & 1u) taken = pbw_grad_pass_to(ctx, a, n, s->shape, sy, sa, 1);
    if (n->writes & 2u) pbw_grad_pass_to(ctx, b, n, s->shape, sy, sb, !taken);
    float *ga = (n->writes & 1u) ? NULL : pbw_grad(ctx, a);
    float *gb = (n->writes & 2u) ? NULL : pbw_grad(ctx, b);
    if (!ga && !gb) return;
    PBW_KERNEL(ctx, binary_backward, s->op, s->shape, a->data, sa, b->data, sb, n->out->grad, sy,
               ga, gb);
}

static pbw_tensor *binary(pbw_ctx *ctx, const char *name, pbw_tensor *a, pbw_tensor *b,
                          pbw_binary_op op) {
    pbw_tensor *in[2] = {a, b};
    if (pbw_op_begin(ctx, name, 2, in)) return NULL;
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t s5a[5], s5b[5], s5[5];
    pbw_shape5(a, s5a);
    pbw_shape5(b, s5b);
    for (int d = 0; d < 5; d++) {
        if (s5a[d] != s5b[d] && s5a[d] != 1 && s5b[d] != 1) {
            char sa_[64], sb_[64];
            return pbw_ctx_fail(ctx, "%s: shapes %s and %s do not broadcast", name,
                                pbw_shape_str(a, sa_, sizeof sa_), pbw_shape_str(b, sb_, sizeof sb_));
        }
        s5[d] = s5a[d] == 1 ? s5b[d] : s5a[d];
    }
    pbw_tensor *y = pbw_tensor_new(ctx, nd, s5 + 5 - nd);
    if (!y) return NULL;
    int64_t sa[5], sb[5], sy[5];
    pbw_strides5(a, s5, sa);
    pbw_strides5(b, s5, sb);
    pbw_dense_strides5(s5, sy);
    PBW_KERNEL(ctx, binary_forward, op, s5, a->data, sa, b->data, sb, y->data, sy);
    if (pbw_needs_grad(ctx, in, 2)) {
        pbw_node *n = pbw_tape_push(ctx, name, binary_backward, y, in, 2, sizeof(binary_saved));
        if (!n) return NULL;
        binary_saved *s = n->saved;
        s->op = op;
        memcpy(s->shape, s5, sizeof s5);
        /* operands whose gradient is the output's, whole (binary_backward) */
        if (op == PBW_BIN_ADD || op == PBW_BIN_SUB) n->writes |= a->numel == y->numel ? 1u : 0u;
        if (op == PBW_BIN_ADD) n->writes |= b->numel == y->numel ? 2u : 0u;
    }
    return y;
}

pbw_tensor *pbw_add(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b) {
    return binary(ctx, "add", a, b, PBW_BIN_ADD);
}
pbw_tensor *pbw_sub(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b) {
    return binary(ctx, "sub", a, b, PBW_BIN_SUB);
}
pbw_tensor *pbw_mul(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b) {
    return binary(ctx, "mul", a, b, PBW_BIN_MUL);
}
pbw_tensor *pbw_div(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b) {
    return binary(ctx, "div", a, b, PBW_BIN_DIV);
}
