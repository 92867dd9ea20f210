/* pbw_cuda_elementwise.h: CUDA kernels of the unary and broadcasting binary ops, strided copies
 * and accumulations (reductions, shape ops), max pooling.
 *
 * Each function mirrors its CPU twin (src/cpu/pbw_cpu.h, src/cpu/pbw_cpu_pool.h; same name
 * after pbw_cpu_) argument for argument: float pointers are device memory, the 5-D shape and
 * stride arrays and the pooling geometry are host memory (read before the call returns). Work
 * is enqueued on the backend's stream (pbw_cuda.h); nothing here synchronizes. Backward kernels
 * and pbw_cuda_accumulate ADD into their outputs, as on the CPU.
 *
 * Determinism: the kernels give the same bits run after run. Reductions (accumulate with zero
 * output strides, gradients of broadcast operands) gather: one destination element is summed by
 * one thread group in a fixed order, never by atomics. The one exception is the max-pooling
 * backward for windows that overlap more than 16-fold (kernel much larger than stride, no model
 * here), which scatters with atomicAdd.
 */
#ifndef PBW_CUDA_ELEMENTWISE_H
#define PBW_CUDA_ELEMENTWISE_H

#include <stddef.h>
#include <stdint.h>

/* the op enums and the pooling geometry are shared with the CPU kernels (plain C types) */
#include "cpu/pbw_cpu.h"
#include "cpu/pbw_cpu_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

void pbw_cuda_unary_forward(pbw_unary_op op, float p0, float p1, const float *x, float *y,
                            int64_t n);
/* QuickGELU forward that also writes yh (n, the precision's half type: a product's operand), y
 * (fp32) unless NULL; 0, or -1 when these sizes or pointers take no vector path (y, if any, is
 * written, yh is not). */
int pbw_cuda_unary_forward_half(pbw_unary_op op, float p0, float p1, const float *x, float *y,
                                void *yh, int64_t n); /* x, y (n) */
/* Half in, half out (the precision's half type, n values each; half activations): QuickGELU
 * and GELU computed in float. 0, or -1 (nothing launched) for other ops, n not a multiple of 8
 * or pointers not 16-byte aligned. */
int pbw_cuda_unary_half(pbw_unary_op op, float p0, float p1, const void *xh, void *yh, int64_t n);
/* y (n floats) = the half values h (the precision's half type). */
void pbw_cuda_half_to_f32(const void *h, float *y, int64_t n);
/* pbw_cuda_copy_strided from values of the precision's half type (a half_only tensor). */
void pbw_cuda_copy_strided_half(const int64_t *shape, const void *xh, const int64_t *sx,
                                float *y, const int64_t *sy);
/* gx += dy/dx * gy (x, y, gy, gx all (n)); add 0: gx = dy/dx * gy (gx not read) */
void pbw_cuda_unary_backward(pbw_unary_op op, float p0, float p1, const float *x,
                             const float *y, const float *gy, float *gx, int64_t n, int add);
/* QuickGELU's gradient written whole (add 0) into gxh alone, n values of the precision's half
 * type: the rounding of what pbw_cuda_unary_backward writes (pbw_tensor.grad_half). 0, or -1
 * (nothing launched) for other ops, n not a multiple of 4 or pointers not aligned. */
int pbw_cuda_unary_backward_half(pbw_unary_op op, float p0, float p1, const float *x,
                                 const float *y, const float *gy, void *gxh, int64_t n);
/* The same from x held as the precision's halves alone (xh), with the hardware's approximate
 * exponential and division (a few float32 ulps, below the half type's rounding) unless
 * pbw_cuda_half_gx() is 0, then the rounding of the fp32 chain's values. */
int pbw_cuda_unary_backward_half_hx(pbw_unary_op op, float p0, float p1, const void *xh,
                                    const float *gy, void *gxh, int64_t n);
/* The same from the output's gradient held as the precision's halves too (gyh: the product
 * after QuickGELU wrote it so, pbw_tensor.grad_half), with the approximate arithmetic. */
int pbw_cuda_unary_backward_half_hh(pbw_unary_op op, float p0, float p1, const void *xh,
                                    const void *gyh, void *gxh, int64_t n);
/* Gradients written that way so far (tests): from an fp32 gy; from a half gyh. */
long pbw_cuda_unary_backward_half_calls(void);
long pbw_cuda_unary_backward_half_hh_calls(void);


/* y[i*sy] = a[i*sa] op b[i*sb] over the 5-D index space `shape` */
void pbw_cuda_binary_forward(pbw_binary_op op, const int64_t *shape, const float *a,
                             const int64_t *sa, const float *b, const int64_t *sb, float *y,
                             const int64_t *sy);
/* ga[i*sa] += d(a op b)/da * gy[i*sy], gb likewise; ga or gb may be NULL. Zero strides in
 * sa/sb (broadcast operands) sum over those axes. */
void pbw_cuda_binary_backward(pbw_binary_op op, const int64_t *shape, const float *a,
                              const int64_t *sa, const float *b, const int64_t *sb,
                              const float *gy, const int64_t *sy, float *ga, float *gb);
/* y[i*sy] += s * x[i*sx] over shape (zero strides in sy reduce, in sx broadcast) */
void pbw_cuda_accumulate(const int64_t *shape, const float *x, const int64_t *sx, float *y,
                         const int64_t *sy, float s);
/* y[i] += x[0][i], then += x[1][i], ... (contiguous, count floats): n (<= PBW_CUDA_ACCUM_MAX)
 * accumulates of one source each in one kernel, the same additions in the same order. */
#define PBW_CUDA_ACCUM_MAX 8
void pbw_cuda_accumulate_many(float *y, const float *const *x, int n, int64_t count);
/* y[i*sy] = x[i*sx] over shape */
void pbw_cuda_copy_strided(const int64_t *shape, const float *x, const int64_t *sx, float *y,
                           const int64_t *sy);

/* max pooling; idx (may be NULL) receives the winner's offset y*W + x in its plane */
void pbw_cuda_max_pool2d_forward(float *out,     // (planes,OH,OW)
                                 int32_t *idx,   // (planes,OH,OW) or NULL
                                 const float *x, // (planes,H,W)
                                 const pbw_cpu_pool_geom *g);
/* dx[plane, idx] += dout for every output */
void pbw_cuda_max_pool2d_backward(float *dx,          // (planes,H,W), accumulated
                                  const float *dout,  // (planes,OH,OW)
                                  const int32_t *idx, // (planes,OH,OW), from the forward
                                  const pbw_cpu_pool_geom *g);

#ifdef __cplusplus
}
#endif
#endif
