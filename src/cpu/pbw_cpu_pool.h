/* pbw_cpu_pool.h: CPU kernels of max pooling (pbw_max_pool2d in pbw_ops.h), on raw float32
 * pointers.
 *
 * Like the other CPU kernels they check nothing (src/core/pbw_ops_pool.c validates the
 * geometry) and allocate nothing. The forward kernel can record, for every output, which input
 * element won (its offset inside its (H,W) plane); the backward kernel routes each output
 * gradient to that element and ADDS into dx.
 */
#ifndef PBW_CPU_POOL_H
#define PBW_CPU_POOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* `planes` = N*C independent (H,W) planes, a (KH,KW) window moved by (sh,sw) over the plane
 * padded by (ph,pw) on each side; OH = (H + 2*ph - KH)/sh + 1, likewise OW. Every window must
 * hold at least one real element (pads smaller than the kernel: the op asks pad <= kernel/2,
 * as PyTorch does). */
typedef struct pbw_cpu_pool_geom {
    int64_t planes;
    int H, W;
    int KH, KW;
    int sh, sw;
    int ph, pw;
    int OH, OW;
} pbw_cpu_pool_geom;

/* out = the maximum of each window; padding never wins. Ties go to the first element in
 * row-major window order and a NaN in a window makes its output NaN, as PyTorch's CPU kernel
 * does (same comparison: v > max || isnan(v)). idx (may be NULL) receives the winner's offset y*W + x in its plane. */
void pbw_cpu_max_pool2d_forward(float *out,       // (planes,OH,OW)
                                int32_t *idx,     // (planes,OH,OW) or NULL
                                const float *x,   // (planes,H,W)
                                const pbw_cpu_pool_geom *g);

/* dx[plane, idx] += dout for every output. */
void pbw_cpu_max_pool2d_backward(float *dx,            // (planes,H,W), accumulated
                                 const float *dout,    // (planes,OH,OW)
                                 const int32_t *idx,   // (planes,OH,OW), from the forward
                                 const pbw_cpu_pool_geom *g);

#ifdef __cplusplus
}
#endif
#endif
