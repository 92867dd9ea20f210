/* pbw_ops_stylegan.c: front-ends of the StyleGAN2 ops (pbw_ops_stylegan.h): argument checks,
 * output allocation, device dispatch and the tape. Kernels: src/cpu/pbw_cpu_stylegan.c. */
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
    float *gx = pbw_grad(ctx, x), *gs = pbw_grad(ctx, s), *gs0 = pbw_grad(ctx, s0),
          *gm = pbw_grad(ctx, m);
    if (pbw_ctx_failed(ctx)) return;
    pbw_cpu_sg_modulate_backward(nd->out->grad, x->data, s->data, s0 ? s0->data : NULL,
                                 m ? m->data : NULL, g, gx, gs, gs0, gm);
}

pbw_tensor *pbw_sg_modulate(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                            pbw_tensor *m) {
    static const char *op = "sg_modulate";
    pbw_tensor *ins[4] = {x, s, s0, m};
    int nin = m ? 4 : 2;
    if (pbw_op_begin(ctx, op, 2, ins)) return NULL;
    if ((s0 == NULL) != (m == NULL))
        return pbw_ctx_fail(ctx, "%s: s0 and m go together (both or neither)", op);
    if (m && pbw_op_begin(ctx, op, 4, ins)) return NULL;
    char sx[96], ss[96];
    pbw_shape_str(x, sx, sizeof sx);
    pbw_shape_str(s, ss, sizeof ss);
    if (x->ndim != 4)
        return pbw_ctx_fail(ctx, "%s: x %s must be (N,C,H,W)", op, sx);
    pbw_cpu_sg_mod_geom g;
    memset(&g, 0, sizeof g);
    g.N = (int)x->shape[0];
    g.C = (int)x->shape[1];
    g.P = x->shape[2] * x->shape[3];
    g.s_nstride = row_stride(s, x->shape[0], x->shape[1]);
    if (g.s_nstride < 0)
        return pbw_ctx_fail(ctx, "%s: style %s must be (N,C) or (1,C) for x %s", op, ss, sx);
    if (m) {
        char sm[96];
        g.s0_nstride = row_stride(s0, x->shape[0], x->shape[1]);
        if (g.s0_nstride < 0)
            return pbw_ctx_fail(ctx, "%s: style s0 %s must be (N,C) or (1,C) for x %s", op,
                                pbw_shape_str(s0, sm, sizeof sm), sx);
        g.m_nstride = map_stride(m, x);
        if (g.m_nstride < 0)
            return pbw_ctx_fail(ctx, "%s: mask %s must be (N,1,H,W) or (1,1,H,W) for x %s", op,
                                pbw_shape_str(m, sm, sizeof sm), sx);
    }
    pbw_tensor *out = pbw_tensor_new(ctx, 4, x->shape);
    if (!out) return NULL;
    if (x->device != PBW_DEV_CPU) return pbw_ctx_fail(ctx, "%s: no kernel for this device", op);
    pbw_cpu_sg_modulate_forward(out->data, x->data, s->data, s0 ? s0->data : NULL,
                                m ? m->data : NULL, &g);
    if (pbw_needs_grad(ctx, ins, nin)) {
        pbw_node *nd = pbw_tape_push(ctx, op, modulate_backward, out, ins, nin, sizeof g);
        if (!nd) return NULL;
        memcpy(nd->saved, &g, sizeof g);
    }
    return out;
}

/* ---------- demodulation + noise + bias + leaky ReLU ---------- */

static void bias_act_backward(pbw_ctx *ctx, pbw_node *nd) {
    const pbw_cpu_sg_act_geom *g = nd->saved;
    /* inputs are recorded in a fixed order with NULLs kept, so slots are stable */
    pbw_tensor *y = nd->in[0], *d = nd->in[1], *noise = nd->in[2], *bias = nd->in[3];
    float *gy = pbw_grad(ctx, y), *gd = pbw_grad(ctx, d), *gn = pbw_grad(ctx, noise),
          *gb = pbw_grad(ctx, bias);
    if (pbw_ctx_failed(ctx)) return;
    pbw_cpu_sg_bias_act_backward(nd->out->grad, y->data, d ? d->data : NULL,
                                 noise ? noise->data : NULL, bias ? bias->data : NULL, g, gy, gd,
                                 gn, gb);
}

pbw_tensor *pbw_sg_bias_act(pbw_ctx *ctx, pbw_tensor *y, pbw_tensor *d, pbw_tensor *noise,
                            pbw_tensor *bias, float noise_weight, float slope, float gain) {
    static const char *op = "sg_bias_act";
    pbw_tensor *ins[4] = {y, d, noise, bias};
    if (pbw_op_begin(ctx, op, 1, ins)) return NULL;
    for (int i = 1; i < 4; i++)
        if (ins[i] && pbw_op_begin(ctx, op, 1, ins + i)) return NULL;
    char sy[96], st[96];
    pbw_shape_str(y, sy, sizeof sy);
    if (y->ndim != 4) return pbw_ctx_fail(ctx, "%s: y %s must be (N,O,H,W)", op, sy);
    pbw_cpu_sg_act_geom g;
    memset(&g, 0, sizeof g);
    g.N = (int)y->shape[0];
    g.O = (int)y->shape[1];
    g.P = y->shape[2] * y->shape[3];
    g.noise_weight = noise_weight;
    g.slope = slope;
    g.gain = gain;
    if (d) {
        if (d->ndim == 4) {
            if (!pbw_shape_equal(d, y))
                return pbw_ctx_fail(ctx, "%s: per-pixel d %s must have the shape of y %s", op,
                                    pbw_shape_str(d, st, sizeof st), sy);
            g.d_mode = 2;
        } else {
            g.d_nstride = row_stride(d, y->shape[0], y->shape[1]);
            if (g.d_nstride < 0)
                return pbw_ctx_fail(ctx, "%s: d %s must be (N,O), (1,O) or (N,O,H,W) for y %s",
                                    op, pbw_shape_str(d, st, sizeof st), sy);
            g.d_mode = 1;
        }
    }
    if (noise) {
        g.noise_nstride = map_stride(noise, y);
        if (g.noise_nstride < 0)
            return pbw_ctx_fail(ctx, "%s: noise %s must be (N,1,H,W) or (1,1,H,W) for y %s", op,
                                pbw_shape_str(noise, st, sizeof st), sy);
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != y->shape[1]))
        return pbw_ctx_fail(ctx, "%s: bias %s must be (O) for y %s", op,
                            pbw_shape_str(bias, st, sizeof st), sy);
    pbw_tensor *out = pbw_tensor_new(ctx, 4, y->shape);
    if (!out) return NULL;
    if (y->device != PBW_DEV_CPU) return pbw_ctx_fail(ctx, "%s: no kernel for this device", op);
    pbw_cpu_sg_bias_act_forward(out->data, y->data, d ? d->data : NULL,
                                noise ? noise->data : NULL, bias ? bias->data : NULL, &g);
    if (pbw_needs_grad(ctx, ins, 4)) {
        pbw_node *nd = pbw_tape_push(ctx, op, bias_act_backward, out, ins, 4, sizeof g);
        if (!nd) return NULL;
        memcpy(nd->saved, &g, sizeof g);
    }
    return out;
}
