/* pbw_ops_pool.c: pbw_max_pool2d of pbw_ops.h: argument checks, output allocation, device
 * dispatch and the tape. The arithmetic is in src/cpu/pbw_cpu_pool.c and
 * src/cuda/pbw_cuda_elementwise.cu.
 *
 * The forward records which input element won each window only when a backward will run (the
 * index map is the op's saved state: int32 per output, in activation memory of the context's
 * device), so a pass without gradients costs nothing extra.
 */
#include <limits.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "core/pbw_ops_internal.h"
#include "cpu/pbw_cpu_pool.h"

typedef struct pool_saved {
    pbw_cpu_pool_geom g;
    int32_t *idx; /* (planes,OH,OW): winner's offset in its plane */
} pool_saved;

static void max_pool2d_backward(pbw_ctx *ctx, pbw_node *nd) {
    const pool_saved *sv = nd->saved;
    float *gx = pbw_grad(ctx, nd->in[0]);
    if (!gx) return;
    PBW_KERNEL(ctx, max_pool2d_backward, gx, nd->out->grad, sv->idx, &sv->g);
}

pbw_tensor *pbw_max_pool2d(pbw_ctx *ctx, pbw_tensor *x, int kernel, int stride, int padding) {
    static const char *op = "max_pool2d";
    if (pbw_op_begin(ctx, op, 1, &x)) return NULL;
    char sx[96];
    pbw_shape_str(x, sx, sizeof sx);
    if (x->ndim != 4 || x->shape[2] < 1 || x->shape[3] < 1 || x->shape[2] > INT_MAX / 4 ||
        x->shape[3] > INT_MAX / 4 || x->shape[2] * x->shape[3] > INT32_MAX)
        return pbw_ctx_fail(ctx, "%s: x %s must be (N,C,H,W) with H, W >= 1 and H*W < 2^31",
                            op, sx);
    if (stride == 0) stride = kernel; /* F.max_pool2d's stride=None */
    if (kernel < 1 || kernel > 4096 || stride < 1 || stride > 4096)
        return pbw_ctx_fail(ctx, "%s: kernel = %d and stride = %d must be in 1..4096", op,
                            kernel, stride);
    if (padding < 0 || padding > kernel / 2)
        return pbw_ctx_fail(ctx, "%s: padding = %d must be in 0..kernel/2 = %d", op, padding,
                            kernel / 2);
    pbw_cpu_pool_geom g;
    memset(&g, 0, sizeof g);
    g.planes = x->shape[0] * x->shape[1];
    g.H = (int)x->shape[2];
    g.W = (int)x->shape[3];
    g.KH = g.KW = kernel;
    g.sh = g.sw = stride;
    g.ph = g.pw = padding;
    int64_t eh = (int64_t)g.H + 2 * padding - kernel, ew = (int64_t)g.W + 2 * padding - kernel;
    if (eh < 0 || ew < 0)
        return pbw_ctx_fail(ctx, "%s: input %s is smaller than the %dx%d window (padding %d)",
                            op, sx, kernel, kernel, padding);
    g.OH = (int)(eh / stride + 1); /* floor: ceil_mode = False */
    g.OW = (int)(ew / stride + 1);

    pbw_tensor *out = pbw_tensor_new(ctx, 4, (int64_t[]){x->shape[0], x->shape[1], g.OH, g.OW});
    if (!out) return NULL;
    int32_t *idx = NULL;
    int grad = pbw_needs_grad(ctx, &x, 1);
    if (grad) {
        size_t bytes = (size_t)out->numel * sizeof(int32_t) + 1;
        /* the kernel writes the map: device memory on CUDA (pbw_ctx_alloc fails the context
         * itself when out of memory) */
        idx = pbw_on_cuda(ctx) ? pbw_ctx_alloc(ctx, bytes) : pbw_arena_alloc(pbw_ctx_arena(ctx), bytes);
        if (!idx) return pbw_ctx_fail(ctx, "%s: out of memory for the index map of %s", op, sx);
    }
    PBW_KERNEL(ctx, max_pool2d_forward, out->data, idx, x->data, &g);
    if (grad) {
        pbw_node *nd = pbw_tape_push(ctx, op, max_pool2d_backward, out, &x, 1, sizeof(pool_saved));
        if (!nd) return NULL;
        memcpy(nd->saved, &(pool_saved){g, idx}, sizeof(pool_saved));
    }
    return out;
}
