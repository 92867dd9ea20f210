/* pbw_ops_stylegan.h: fused ops for StyleGAN2's styled convolutions, with forward and backward.
 *
 * A modulated convolution (rosinality's ModulatedConv2d) is written in pbw as
 *
 *     conv(x * s, scale * W) * d        d[n,o] = rsqrt(sum_{c,k} (scale W[o,c,k] s[n,c])^2 + 1e-8)
 *
 * which equals the reference's per-sample modulated weight (the style multiplies the input
 * channels instead of the weight's input columns; convolution is linear in both). These ops
 * are the two elementwise halves around the convolution, each one pass over the feature map
 * instead of four or five broadcasting ops, and each with the gradient of every input:
 *
 *     xs  = pbw_sg_modulate(ctx, x, s, NULL, NULL);                // x * s per channel
 *     xs  = pbw_sg_modulate(ctx, x, s, s0, m);                     // masked: per-pixel style
 *     y   = pbw_conv2d(ctx, xs, w, NULL, p);
 *     out = pbw_sg_bias_act(ctx, y, d, noise, bias, nw, 0.2f, sqrtf(2));
 *
 * Shapes are checked and broadcast only as listed; errors fail the context (pbw_tensor.h).
 */
#ifndef PBW_OPS_STYLEGAN_H
#define PBW_OPS_STYLEGAN_H

#include "pbw_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* x (N,C,H,W) times a style per channel, or per channel and pixel when masked:
 *   m == NULL:  out[n,c,p] = x[n,c,p] * s[n,c]
 *   m != NULL:  out[n,c,p] = x[n,c,p] * (s[n,c] * m[n,p] + s0[n,c] * (1 - m[n,p]))
 * s and s0 are (N,C) or (1,C) (shared by the batch); m is (N,1,H,W) or (1,1,H,W). s0 must be
 * given exactly when m is. Gradients reach x, s, s0 and m. */
pbw_tensor *pbw_sg_modulate(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                            pbw_tensor *m);

/* StyleGAN2's demodulation, noise injection and fused leaky ReLU in one pass:
 *   pre = y * d + noise_weight * noise + bias[o]
 *   out = gain * (pre > 0 ? pre : slope * pre)
 * y (N,O,H,W). d (N,O) or (1,O) per channel, or (N,O,H,W) per pixel, or NULL (1). noise
 * (N,1,H,W) or (1,1,H,W) or NULL (0). bias (O) or NULL (0). The sum is formed in that order,
 * as the reference adds the noise before the activation's bias. Gradients reach y, d, noise
 * and bias. */
pbw_tensor *pbw_sg_bias_act(pbw_ctx *ctx, pbw_tensor *y, pbw_tensor *d, pbw_tensor *noise,
                            pbw_tensor *bias, float noise_weight, float slope, float gain);

#ifdef __cplusplus
}
#endif
#endif
