/* pbw_cuda_paint.h: CUDA kernels of the painter's own ops (src/paint/pbw_loss.c): CLIP's crops;
 * and the Adam update of the painter's queued steps (src/paint/pbw_painter.c).
 *
 * crops: n squares (y, x, side) as int triples in device memory; each is cut from every image
 * of x (B,3,H,W) in [-1,1], mapped to [0,1], resized to R x R (bicubic, PyTorch's conventions:
 * align_corners=False, a = -0.75, taps clamped to the border), clamped to [0,1] and normalized
 * with mean/std -> out (B*n,3,R,R) (unit u = b*n + k), or with P > 0 (a divisor of R) cut
 * into P x P patches: (B*n, (R/P)^2, 3*P*P), each patch's vector channel-major then row, column
 * (CLIP's patch embedding's input). out_half (NULL, or instead of out): the values rounded to
 * the precision's half type. pass (B*n*3*R*R bytes, laid out as out, may be NULL) records where
 * the clamp let the gradient through. Backward (gy and pass in the forward's layout)
 * accumulates into gx. */
#ifndef PBW_CUDA_PAINT_H
#define PBW_CUDA_PAINT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pbw_cuda_norm3 {
    float mean[3], std[3];
} pbw_cuda_norm3;

void pbw_cuda_clip_crops_forward(const float *x, int64_t B, int64_t H, int64_t W,
                                 const int *crops, int n, int R, int P, pbw_cuda_norm3 norm,
                                 float *out, void *out_half, uint8_t *pass);
/* gx (B,3,H,W) += the crops' gradient. scratch: device memory of
 * pbw_cuda_clip_crops_backward_scratch_floats floats, where each crop's gradient is formed
 * whole before one pass adds the crops', pixel by pixel, in a fixed order (the same bits every
 * run; crops a few at a time where all of them would pass 256 MiB); NULL takes a kernel of
 * atomics instead (the sums' order varies from run to run), as do the shapes whose size is 0
 * (the kernel's tables do not fit in shared memory, or one crop alone would pass 256 MiB). */
size_t pbw_cuda_clip_crops_backward_scratch_floats(int64_t B, int64_t H, int64_t W, int n, int R);
void pbw_cuda_clip_crops_backward(const float *gy, const uint8_t *pass, int64_t B, int64_t H,
                                  int64_t W, const int *crops, int n, int R, int P,
                                  pbw_cuda_norm3 norm, float *gx, float *scratch);

/* One Adam step of the painter's queued steps, its index k read from *counter (device memory):
 * writes ring slot k % slots (mapped host memory, 8 + n floats: k as an int, the loss values
 * *val[0..3] (0 where NULL), three unused, then param before the update), updates param, m and
 * v (n each, device memory) in place with coefficients coef[8k .. 8k + 7] (pbw_adam_coef's
 * floats, PBW_ADAM_COEFS) and grad, with pbw_adam_apply's roundings, then sets *counter to
 * k + 1. Recorded in the step's CUDA graph, so that steps run back to back without the host. */
void pbw_cuda_adam_queued(int n, float *param, float *m, float *v, const float *grad,
                          const float *coef, const float *const val[4], int *counter, float *ring,
                          int slots);

#ifdef __cplusplus
}
#endif
#endif
