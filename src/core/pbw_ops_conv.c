/* pbw_ops_conv.c: the convolution ops of pbw_ops.h (pbw_conv2d, pbw_conv_transpose2d):
 * argument checks, output allocation, device dispatch and the tape. The arithmetic is in
 * src/cpu/pbw_cpu_conv.c.
 *
 * A transposed convolution is the adjoint of a convolution with the same weight: if conv maps
 * (N,Cout,OH,OW) -> (N,Cin,H,W) with weight (Cin,Cout/G,KH,KW), then conv_transpose2d maps
 * (N,Cin,H,W) -> (N,Cout,OH,OW) with that weight. So its forward is the convolution's
 * backward-data kernel, its input gradient is the convolution's forward and its weight
 * gradient is the convolution's weight gradient with the roles of input and output swapped.
 * On CUDA the same kernels are cuDNN's (src/cuda/pbw_cuda_conv.cu), behind PBW_KERNEL.
 */
#include <limits.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "core/pbw_ops_internal.h"
#include "cpu/pbw_cpu_conv.h"

typedef struct conv_saved {
    pbw_cpu_conv_geom g; /* for a transposed convolution: the geometry of its adjoint conv */
} conv_saved;

/* Fills *v with p (0 meaning `dflt`); fails the context when negative or too large. */
static int param_or(pbw_ctx *ctx, const char *op, const char *name, int p, int dflt, int min,
                    int *v) {
    int r = p == 0 ? dflt : p;
    if (r < min || r > (1 << 20)) {
        pbw_ctx_fail(ctx, "%s: %s = %d is out of range (need >= %d)", op, name, p, min);
        return -1;
    }
    *v = r;
    return 0;
}

/* Rank and size checks (pbw_op_begin has checked dtype and device). */
static int check_dims(pbw_ctx *ctx, const char *op, const char *name, const pbw_tensor *t,
                      int ndim) {
    char s[96];
    if (t->ndim != ndim)
        return pbw_ctx_fail(ctx, "%s: %s %s must have %d dims", op, name,
                            pbw_shape_str(t, s, sizeof s), ndim),
               -1;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > INT_MAX / 4)
            return pbw_ctx_fail(ctx, "%s: %s %s is too large", op, name,
                                pbw_shape_str(t, s, sizeof s)),
                   -1;
    return 0;
}

/* Parameters shared by both ops; fills the strides, pads, dilations and groups of g. */
static int conv_params(pbw_ctx *ctx, const char *op, pbw_conv_params p, pbw_cpu_conv_geom *g) {
    if (param_or(ctx, op, "stride_h", p.stride_h, 1, 1, &g->sh) ||
        param_or(ctx, op, "stride_w", p.stride_w, 1, 1, &g->sw) ||
        param_or(ctx, op, "dil_h", p.dil_h, 1, 1, &g->dh) ||
        param_or(ctx, op, "dil_w", p.dil_w, 1, 1, &g->dw) ||
        param_or(ctx, op, "groups", p.groups, 1, 1, &g->G) ||
        param_or(ctx, op, "pad_h", p.pad_h, 0, 0, &g->ph) ||
        param_or(ctx, op, "pad_w", p.pad_w, 0, 0, &g->pw))
        return -1;
    return 0;
}

static int check_bias(pbw_ctx *ctx, const char *op, const pbw_tensor *b, int64_t O) {
    char s[96];
    if (!b) return 0;
    if (check_dims(ctx, op, "b", b, 1)) return -1;
    if (b->shape[0] != O)
        return pbw_ctx_fail(ctx, "%s: bias %s must have %lld elements (output channels)", op,
                            pbw_shape_str(b, s, sizeof s), (long long)O),
               -1;
    return 0;
}

/* Scratch of the conv kernels for g on the context's device (none on CUDA: cuDNN's
 * workspace is the runtime's). The context has failed when out of memory. */
static float *conv_scratch(pbw_ctx *ctx, const pbw_cpu_conv_geom *g) {
    size_t n = PBW_KERNEL(ctx, conv2d_scratch_floats, g);
    return n ? pbw_ctx_scratch(ctx, 0, n * sizeof(float)) : NULL;
}

/* ---------- conv2d ---------- */

static void conv2d_backward(pbw_ctx *ctx, pbw_node *nd) {
    const conv_saved *sv = nd->saved;
    pbw_tensor *x = nd->in[0], *w = nd->in[1], *b = nd->nin > 2 ? nd->in[2] : NULL;
    const float *dout = nd->out->grad;
    float *gx = pbw_grad(ctx, x), *gw = pbw_grad(ctx, w), *gb = pbw_grad(ctx, b);
    if (pbw_ctx_failed(ctx)) return;
    float *scratch = NULL;
    if (gx || gw) {
        scratch = conv_scratch(ctx, &sv->g);
        if (pbw_ctx_failed(ctx)) return;
    }
    if (gx) PBW_KERNEL(ctx, conv2d_backward_data, gx, dout, w->data, &sv->g, scratch);
    if (gw) PBW_KERNEL(ctx, conv2d_backward_weight, gw, dout, x->data, &sv->g, scratch);
    if (gb)
        PBW_KERNEL(ctx, conv2d_backward_bias, gb, dout, sv->g.N, sv->g.O,
                   (int64_t)sv->g.OH * sv->g.OW);
}

pbw_tensor *pbw_conv2d(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                       pbw_conv_params p) {
    static const char *op = "conv2d";
    pbw_tensor *ins[3] = {x, w, b};
    int nin = b ? 3 : 2;
    if (pbw_op_begin(ctx, op, nin, ins)) return NULL;
    char sx[96], sw[96];
    pbw_cpu_conv_geom g;
    memset(&g, 0, sizeof g);
    if (check_dims(ctx, op, "x", x, 4) || check_dims(ctx, op, "w", w, 4) ||
        conv_params(ctx, op, p, &g))
        return NULL;
    pbw_shape_str(x, sx, sizeof sx);
    pbw_shape_str(w, sw, sizeof sw);
    g.N = (int)x->shape[0];
    g.C = (int)x->shape[1];
    g.H = (int)x->shape[2];
    g.W = (int)x->shape[3];
    g.O = (int)w->shape[0];
    g.KH = (int)w->shape[2];
    g.KW = (int)w->shape[3];
    if (g.C % g.G || g.O % g.G || w->shape[1] != g.C / g.G || g.C == 0 || g.KH == 0 || g.KW == 0)
        return pbw_ctx_fail(ctx, "%s: x %s and w %s do not match with groups = %d (need w as "
                            "(O, C/groups, KH, KW), C and O divisible by groups)",
                            op, sx, sw, g.G);
    if (check_bias(ctx, op, b, g.O)) return NULL;
    int64_t eh = (int64_t)g.H + 2 * g.ph - (int64_t)g.dh * (g.KH - 1) - 1;
    int64_t ew = (int64_t)g.W + 2 * g.pw - (int64_t)g.dw * (g.KW - 1) - 1;
    if (eh < 0 || ew < 0)
        return pbw_ctx_fail(ctx, "%s: input %s is smaller than the dilated kernel of w %s "
                            "(pad %d,%d, dilation %d,%d)", op, sx, sw, g.ph, g.pw, g.dh, g.dw);
    g.OH = (int)(eh / g.sh + 1);
    g.OW = (int)(ew / g.sw + 1);

    pbw_tensor *out = pbw_tensor_new(ctx, 4, (int64_t[]){g.N, g.O, g.OH, g.OW});
    if (!out) return NULL;
    float *scratch = conv_scratch(ctx, &g);
    if (pbw_ctx_failed(ctx)) return NULL;
    PBW_KERNEL(ctx, conv2d_forward, out->data, x->data, w->data, b ? b->data : NULL, &g, 0, scratch);
    if (pbw_needs_grad(ctx, ins, nin)) {
        pbw_node *nd = pbw_tape_push(ctx, op, conv2d_backward, out, ins, nin, sizeof(conv_saved));
        if (!nd) return NULL;
        memcpy(nd->saved, &(conv_saved){g}, sizeof(conv_saved));
    }
    return out;
}

/* ---------- conv_transpose2d ---------- */

static void conv_transpose2d_backward(pbw_ctx *ctx, pbw_node *nd) {
    const conv_saved *sv = nd->saved; /* adjoint conv: input = our output, output = our input */
    pbw_tensor *x = nd->in[0], *w = nd->in[1], *b = nd->nin > 2 ? nd->in[2] : NULL;
    const float *dout = nd->out->grad;
    float *gx = pbw_grad(ctx, x), *gw = pbw_grad(ctx, w), *gb = pbw_grad(ctx, b);
    if (pbw_ctx_failed(ctx)) return;
    float *scratch = NULL;
    if (gx || gw) {
        scratch = conv_scratch(ctx, &sv->g);
        if (pbw_ctx_failed(ctx)) return;
    }
    if (gx) PBW_KERNEL(ctx, conv2d_forward, gx, dout, w->data, NULL, &sv->g, 1, scratch);
    if (gw) PBW_KERNEL(ctx, conv2d_backward_weight, gw, x->data, dout, &sv->g, scratch);
    if (gb)
        PBW_KERNEL(ctx, conv2d_backward_bias, gb, dout, sv->g.N, sv->g.C,
                   (int64_t)sv->g.H * sv->g.W);
}

pbw_tensor *pbw_conv_transpose2d(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                                 pbw_conv_params p) {
    static const char *op = "conv_transpose2d";
    pbw_tensor *ins[3] = {x, w, b};
    int nin = b ? 3 : 2;
    if (pbw_op_begin(ctx, op, nin, ins)) return NULL;
    char sx[96], sw[96];
    pbw_cpu_conv_geom g; /* of the adjoint convolution */
    memset(&g, 0, sizeof g);
    if (check_dims(ctx, op, "x", x, 4) || check_dims(ctx, op, "w", w, 4) ||
        conv_params(ctx, op, p, &g))
        return NULL;
    int oph, opw;
    if (param_or(ctx, op, "out_pad_h", p.out_pad_h, 0, 0, &oph) ||
        param_or(ctx, op, "out_pad_w", p.out_pad_w, 0, 0, &opw))
        return NULL;
    if ((oph >= g.sh && oph >= g.dh) || (opw >= g.sw && opw >= g.dw))
        return pbw_ctx_fail(ctx, "%s: output padding (%d,%d) must be smaller than the stride "
                            "(%d,%d) or the dilation (%d,%d)", op, oph, opw, g.sh, g.sw, g.dh, g.dw);
    pbw_shape_str(x, sx, sizeof sx);
    pbw_shape_str(w, sw, sizeof sw);
    g.N = (int)x->shape[0];
    g.O = (int)x->shape[1]; /* the adjoint conv's output channels are our input channels */
    g.OH = (int)x->shape[2];
    g.OW = (int)x->shape[3];
    g.KH = (int)w->shape[2];
    g.KW = (int)w->shape[3];
    int64_t cout = w->shape[1] * g.G;
    if (g.O % g.G || w->shape[0] != g.O || g.O == 0 || cout == 0 || cout > INT_MAX / 4 ||
        g.KH == 0 || g.KW == 0)
        return pbw_ctx_fail(ctx, "%s: x %s and w %s do not match with groups = %d (need w as "
                            "(C, O/groups, KH, KW), C divisible by groups)", op, sx, sw, g.G);
    g.C = (int)cout;
    if (check_bias(ctx, op, b, g.C)) return NULL;
    int64_t oh = (int64_t)(g.OH - 1) * g.sh - 2 * g.ph + (int64_t)g.dh * (g.KH - 1) + oph + 1;
    int64_t ow = (int64_t)(g.OW - 1) * g.sw - 2 * g.pw + (int64_t)g.dw * (g.KW - 1) + opw + 1;
    if (oh < 1 || ow < 1 || oh > INT_MAX / 4 || ow > INT_MAX / 4)
        return pbw_ctx_fail(ctx, "%s: x %s, w %s with stride (%d,%d), pad (%d,%d) give an "
                            "output of %lldx%lld", op, sx, sw, g.sh, g.sw, g.ph, g.pw,
                            (long long)oh, (long long)ow);
    g.H = (int)oh;
    g.W = (int)ow;

    /* zeroed: the backward-data kernels accumulate */
    pbw_tensor *out = pbw_tensor_zeros(ctx, 4, (int64_t[]){g.N, g.C, g.H, g.W});
    if (!out) return NULL;
    float *scratch = conv_scratch(ctx, &g);
    if (pbw_ctx_failed(ctx)) return NULL;
    PBW_KERNEL(ctx, conv2d_backward_data, out->data, x->data, w->data, &g, scratch);
    if (b) PBW_KERNEL(ctx, conv2d_add_bias, out->data, b->data, g.N, g.C, (int64_t)g.H * g.W);
    if (pbw_needs_grad(ctx, ins, nin)) {
        pbw_node *nd = pbw_tape_push(ctx, op, conv_transpose2d_backward, out, ins, nin,
                                     sizeof(conv_saved));
        if (!nd) return NULL;
        memcpy(nd->saved, &(conv_saved){g}, sizeof(conv_saved));
    }
    return out;
}
