/* pbw_ops_resample.c: the resampling ops of pbw_ops.h (pbw_upfirdn2d, pbw_resize,
 * pbw_gaussian_blur): argument checks, output allocation, device dispatch and the tape. The
 * arithmetic is in src/cpu/pbw_cpu_resample.c. None of these ops has weights that learn: only
 * the image input gets a gradient.
 * On CUDA the kernels are src/cuda/pbw_cuda_resample.cu, behind PBW_KERNEL (the blur branches:
 * its taps are uploaded and its scratch holds every plane).
 */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "core/pbw_ops_internal.h"
#include "cpu/pbw_cpu_conv.h"

/* Largest side we accept for an image or a kernel: far above any real use, and small enough
 * that every index product fits the kernels' int64 arithmetic with room to spare. */
#define MAX_SIDE (1 << 20)

static int check_image(pbw_ctx *ctx, const char *op, const pbw_tensor *x) {
    char s[96];
    if (x->ndim != 4 || x->shape[2] < 1 || x->shape[3] < 1 || x->shape[2] > MAX_SIDE ||
        x->shape[3] > MAX_SIDE)
        return pbw_ctx_fail(ctx, "%s: x %s must be (N,C,H,W) with 1 <= H, W <= %d", op,
                            pbw_shape_str(x, s, sizeof s), MAX_SIDE),
               -1;
    return 0;
}

/* ---------- upfirdn2d ---------- */

/* Index tables on the CPU; none on CUDA (the kernels compute indices). */
static int *upfirdn_scratch(pbw_ctx *ctx, const pbw_cpu_upfirdn_geom *g) {
    size_t n = PBW_KERNEL(ctx, upfirdn2d_scratch_ints, g);
    return n ? pbw_ctx_scratch(ctx, 0, n * sizeof(int)) : NULL;
}

static void upfirdn2d_backward(pbw_ctx *ctx, pbw_node *nd) {
    const pbw_cpu_upfirdn_geom *g = nd->saved;
    pbw_tensor *x = nd->in[0], *k = nd->in[1];
    float *gx = pbw_grad(ctx, x);
    if (!gx) return;
    int *scratch = upfirdn_scratch(ctx, g);
    if (pbw_ctx_failed(ctx)) return;
    /* on CUDA k->data is device memory, which the CUDA kernel reads */
    PBW_KERNEL(ctx, upfirdn2d_backward, gx, nd->out->grad, k->data, g, scratch);
}

pbw_tensor *pbw_upfirdn2d(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *k, int up, int down,
                          int pad_x0, int pad_x1, int pad_y0, int pad_y1) {
    static const char *op = "upfirdn2d";
    pbw_tensor *ins[2] = {x, k};
    if (pbw_op_begin(ctx, op, 2, ins)) return NULL;
    char sx[96], sk[96];
    if (check_image(ctx, op, x)) return NULL;
    pbw_shape_str(x, sx, sizeof sx);
    pbw_shape_str(k, sk, sizeof sk);
    if (k->ndim != 2 || k->shape[0] < 1 || k->shape[1] < 1 ||
        k->shape[0] > 1024 || k->shape[1] > 1024)
        return pbw_ctx_fail(ctx, "%s: kernel %s must be (KH,KW) with sides in 1..1024",
                            op, sk);
    if (up < 1 || down < 1 || up > 64 || down > 64)
        return pbw_ctx_fail(ctx, "%s: up = %d and down = %d must be in 1..64", op, up, down);
    const int lim = MAX_SIDE;
    if (pad_x0 < -lim || pad_x0 > lim || pad_x1 < -lim || pad_x1 > lim || pad_y0 < -lim ||
        pad_y0 > lim || pad_y1 < -lim || pad_y1 > lim)
        return pbw_ctx_fail(ctx, "%s: pads (%d,%d,%d,%d) out of range", op, pad_x0, pad_x1,
                            pad_y0, pad_y1);
    pbw_cpu_upfirdn_geom g;
    memset(&g, 0, sizeof g);
    g.planes = x->shape[0] * x->shape[1];
    g.H = (int)x->shape[2];
    g.W = (int)x->shape[3];
    g.KH = (int)k->shape[0];
    g.KW = (int)k->shape[1];
    g.up = up;
    g.down = down;
    g.px0 = pad_x0;
    g.px1 = pad_x1;
    g.py0 = pad_y0;
    g.py1 = pad_y1;
    int64_t eh = (int64_t)g.H * up + pad_y0 + pad_y1 - g.KH;
    int64_t ew = (int64_t)g.W * up + pad_x0 + pad_x1 - g.KW;
    if (eh < 0 || ew < 0)
        return pbw_ctx_fail(ctx, "%s: x %s upsampled by %d and padded (%d,%d,%d,%d) is smaller "
                            "than the kernel %s", op, sx, up, pad_x0, pad_x1, pad_y0, pad_y1, sk);
    g.OH = (int)(eh / down + 1);
    g.OW = (int)(ew / down + 1);
    if (k->requires_grad && pbw_needs_grad(ctx, ins, 2))
        return pbw_ctx_fail(ctx, "%s: the FIR kernel %s cannot take a gradient", op, sk);

    pbw_tensor *out = pbw_tensor_new(ctx, 4, (int64_t[]){x->shape[0], x->shape[1], g.OH, g.OW});
    if (!out) return NULL;
    int *scratch = upfirdn_scratch(ctx, &g);
    if (pbw_ctx_failed(ctx)) return NULL;
    PBW_KERNEL(ctx, upfirdn2d_forward, out->data, x->data, k->data, &g, scratch);
    if (pbw_needs_grad(ctx, ins, 2)) {
        pbw_node *nd = pbw_tape_push(ctx, op, upfirdn2d_backward, out, ins, 2, sizeof g);
        if (!nd) return NULL;
        memcpy(nd->saved, &g, sizeof g);
    }
    return out;
}

/* ---------- resize ---------- */

static void resize_backward(pbw_ctx *ctx, pbw_node *nd) {
    const int *mode = nd->saved;
    pbw_tensor *x = nd->in[0], *y = nd->out;
    float *gx = pbw_grad(ctx, x);
    if (!gx) return;
    int H = (int)x->shape[2], W = (int)x->shape[3], OH = (int)y->shape[2], OW = (int)y->shape[3];
    void *scratch =
        pbw_ctx_scratch(ctx, 0, PBW_KERNEL(ctx, resize_scratch_bytes, *mode, H, W, OH, OW));
    if (!scratch) return;
    PBW_KERNEL(ctx, resize_backward, gx, y->grad, x->shape[0] * x->shape[1], H, W, OH, OW, *mode,
               scratch);
}

pbw_tensor *pbw_resize(pbw_ctx *ctx, pbw_tensor *x, int out_h, int out_w, pbw_resize_mode mode) {
    static const char *op = "resize";
    if (pbw_op_begin(ctx, op, 1, &x)) return NULL;
    if (check_image(ctx, op, x)) return NULL;
    if (mode != PBW_RESIZE_NEAREST && mode != PBW_RESIZE_BILINEAR && mode != PBW_RESIZE_BICUBIC)
        return pbw_ctx_fail(ctx, "%s: unknown mode %d", op, (int)mode);
    if (out_h < 1 || out_w < 1 || out_h > MAX_SIDE || out_w > MAX_SIDE)
        return pbw_ctx_fail(ctx, "%s: output size %dx%d must be in 1..%d", op, out_h, out_w,
                            MAX_SIDE);
    int H = (int)x->shape[2], W = (int)x->shape[3];
    pbw_tensor *out = pbw_tensor_new(ctx, 4, (int64_t[]){x->shape[0], x->shape[1], out_h, out_w});
    if (!out) return NULL;
    void *scratch = pbw_ctx_scratch(
        ctx, 0, PBW_KERNEL(ctx, resize_scratch_bytes, (int)mode, H, W, out_h, out_w));
    if (!scratch) return NULL;
    PBW_KERNEL(ctx, resize_forward, out->data, x->data, x->shape[0] * x->shape[1], H, W, out_h,
               out_w, (int)mode, scratch);
    if (pbw_needs_grad(ctx, &x, 1)) {
        pbw_node *nd = pbw_tape_push(ctx, op, resize_backward, out, &x, 1, sizeof(int));
        if (!nd) return NULL;
        *(int *)nd->saved = (int)mode;
    }
    return out;
}

/* ---------- gaussian blur ---------- */

typedef struct blur_saved {
    float sigma;
    int ksize;
} blur_saved;

/* k[i] = exp(-(i - r)^2 / (2 sigma^2)) normalized to sum 1, r = ksize/2: torchvision's
 * _get_gaussian_kernel1d (computed here in double, then rounded). */
static double gauss_tap(int i, int ksize, float sigma) {
    double d = (double)(i - ksize / 2) / sigma;
    return exp(-0.5 * d * d);
}

static void gaussian_kernel(float *k, int ksize, float sigma) {
    double s = 0;
    for (int i = 0; i < ksize; i++) s += gauss_tap(i, ksize, sigma);
    for (int i = 0; i < ksize; i++) k[i] = (float)(gauss_tap(i, ksize, sigma) / s);
}

/* out (= or += with accumulate) the blur of x (planes of HxW) on the context's device. The
 * taps are computed on the host; on CUDA they are uploaded (activation memory, a few floats)
 * and the row pass of every plane is kept in scratch. Returns -1 with the context failed. */
static int blur_run(pbw_ctx *ctx, float *out, const float *x, int64_t planes, int H, int W,
                    float sigma, int ksize, int accumulate) {
#ifdef PBW_HAVE_CUDA
    if (pbw_on_cuda(ctx)) {
        float *hk = pbw_arena_alloc(pbw_ctx_arena(ctx), (size_t)ksize * sizeof(float));
        if (!hk) return pbw_ctx_fail(ctx, "gaussian_blur: out of memory"), -1;
        gaussian_kernel(hk, ksize, sigma);
        float *k = pbw_ctx_upload(ctx, hk, (size_t)ksize * sizeof(float));
        float *tmp = pbw_ctx_scratch(
            ctx, 0, pbw_cuda_sep_filter2d_scratch_floats_planes(planes, H, W) * sizeof(float));
        if (!k || !tmp) return -1;
        pbw_cuda_sep_filter2d(out, x, planes, H, W, k, ksize, accumulate, tmp);
        return 0;
    }
#endif
    float *k = pbw_ctx_scratch(ctx, 1, (size_t)ksize * sizeof(float));
    float *tmp = pbw_ctx_scratch(ctx, 0, pbw_cpu_sep_filter2d_scratch_floats(H, W) * sizeof(float));
    if (!k || !tmp) return -1;
    gaussian_kernel(k, ksize, sigma);
    pbw_cpu_sep_filter2d(out, x, planes, H, W, k, ksize, accumulate, tmp);
    return 0;
}

static void gaussian_blur_backward(pbw_ctx *ctx, pbw_node *nd) {
    const blur_saved *sv = nd->saved;
    pbw_tensor *x = nd->in[0];
    float *gx = pbw_grad(ctx, x);
    if (!gx) return;
    /* the symmetric zero-padded blur is its own adjoint */
    blur_run(ctx, gx, nd->out->grad, x->shape[0] * x->shape[1], (int)x->shape[2],
             (int)x->shape[3], sv->sigma, sv->ksize, 1);
}

pbw_tensor *pbw_gaussian_blur(pbw_ctx *ctx, pbw_tensor *x, float sigma, int ksize) {
    static const char *op = "gaussian_blur";
    if (pbw_op_begin(ctx, op, 1, &x)) return NULL;
    if (check_image(ctx, op, x)) return NULL;
    if (!(sigma > 0) || !isfinite(sigma))
        return pbw_ctx_fail(ctx, "%s: sigma = %g must be positive", op, (double)sigma);
    if (ksize < 1 || ksize % 2 == 0 || ksize > 4095)
        return pbw_ctx_fail(ctx, "%s: kernel size %d must be odd and in 1..4095", op, ksize);
    int H = (int)x->shape[2], W = (int)x->shape[3];
    pbw_tensor *out = pbw_tensor_new(ctx, x->ndim, x->shape);
    if (!out) return NULL;
    if (blur_run(ctx, out->data, x->data, x->shape[0] * x->shape[1], H, W, sigma, ksize, 0))
        return NULL;
    if (pbw_needs_grad(ctx, &x, 1)) {
        pbw_node *nd = pbw_tape_push(ctx, op, gaussian_blur_backward, out, &x, 1, sizeof(blur_saved));
        if (!nd) return NULL;
        memcpy(nd->saved, &(blur_saved){sigma, ksize}, sizeof(blur_saved));
    }
    return out;
}
