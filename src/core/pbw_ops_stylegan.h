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

/* ---------- convolution with a frozen weight ----------
 *
 * StyleGAN2's styled convolutions never need a weight gradient, so their weights are packed
 * once for the CPU kernel (src/cpu/pbw_cpu_sgconv.c) in the two layouts the forward pass and
 * the input gradient read, on the plan's first CPU call (a model that runs on the GPU never
 * packs: loading the 256 px generator spent a third of its CPU time and 270 MB packing):
 *
 *     pbw_sg_conv_plan *pl = pbw_sg_conv_prepare(&model_arena, w, 0, &err);  // w (O,C,k,k)
 *     y = pbw_sg_conv(ctx, x, pl);     // F.conv2d(x, w, padding=k//2)
 *     pl = pbw_sg_conv_prepare(&model_arena, w, 1, &err);
 *     y = pbw_sg_conv(ctx, x, pl);     // F.conv_transpose2d(x, w.transpose(0,1), stride=2)
 *
 * The plan lives in the arena given (the model's), and so do the packed copies made later. The
 * CPU reads only its packed copies; the GPU (cuDNN, which wants the natural layout) reads w
 * itself through the plan's `weight` pointer, so w must outlive the plan and be on the
 * context's device when the op runs (a model moves its weights with pbw_arena_to_device, which
 * keeps the tensor and swaps its data pointer). A plan whose weight is on the GPU at its first
 * CPU call cannot pack and fails that call. Gradients reach x only: the weight is a constant
 * of the op. Not thread-safe: a plan's first CPU call writes the plan's packs. */
/* The CPU kernel's packed weights, made on the plan's first CPU call. */
struct pbw_sg_conv_cpu {
    pbw_arena *arena;      /* where the packs go: the plan's */
    int packed;            /* 1 once made */
    float *fwd[4];         /* packed forward weight; transposed: one per output phase */
    float *bwd;            /* packed weight of the input gradient (C, O*k*k) */
    float *wino_fwd;       /* 3x3 stride 1: Winograd F(2x2,3x3) weights of the forward ... */
    float *wino_bwd;       /* ... and of the input gradient (then fwd[0], bwd are NULL) */
};

typedef struct pbw_sg_conv_plan {
    int transposed;        /* 0: stride 1, padding k/2; 1: transposed, stride 2, no padding */
    int C, O, k;           /* input channels, output channels, kernel side (odd) */
    int direct;            /* 3x3 stride 1 by the direct kernel, not Winograd */
    int phase_kh[2], phase_kw[2]; /* transposed: taps of phase a (rows) / b (columns) */
    struct pbw_sg_conv_cpu *cpu; /* the CPU kernel's weights (see above) */
    const pbw_tensor *weight; /* w itself (O,C,k,k): its data is read at call time on CUDA */
    /* CUDA caches made on the first GPU call (again if w's data moves or the precision
     * changes), freed with the plan's arena (pbw_ops_stylegan.c): w.transpose(0,1) for a
     * transposed plan, and w in bf16/fp16 for the reduced precisions. */
    struct pbw_sg_conv_gpu *gpu;
} pbw_sg_conv_plan;

/* w (O,C,k,k) float32, k odd. For transposed = 1 the transposed convolution maps C channels to
 * O, i.e. it is conv_transpose2d with weight w.transpose(0,1) (rosinality's upsampling conv).
 * NULL (err set) on a bad shape or out of memory. */
pbw_sg_conv_plan *pbw_sg_conv_prepare(pbw_arena *a, const pbw_tensor *w, int transposed,
                                      pbw_err *err);
/* Same, choosing the algorithm: 3x3 stride-1 convolutions use Winograd F(2x2,3x3) (2.25x
 * fewer multiplies, the rounding of a direct convolution) unless `direct` is set. */
pbw_sg_conv_plan *pbw_sg_conv_prepare_ex(pbw_arena *a, const pbw_tensor *w, int transposed,
                                         int direct, pbw_err *err);
/* x (N,C,H,W) -> (N,O,H,W), or (N,O,2H+k-2,2W+k-2) when transposed. */
pbw_tensor *pbw_sg_conv(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_conv_plan *pl);
/* pbw_sg_conv(pbw_sg_modulate(x, s, s0, m), pl) in one op: without gradients on a GPU whose
 * convolutions run on half copies, the style scales x as the copy is made (no modulated x in
 * memory); otherwise exactly the two ops (recorded for the backward). */
pbw_tensor *pbw_sg_modconv(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                           pbw_tensor *m, const pbw_sg_conv_plan *pl);
/* pbw_sg_bias_act(pbw_sg_modconv(x, s, s0, m, pl), d, noise, bias, noise_weight, slope, gain)
 * in one op: without gradients on a GPU whose convolutions run on half copies, the activation
 * is applied as the convolution's output is copied back (its unactivated output is never
 * written); otherwise exactly the two ops. s NULL (then s0 and m NULL): x is already
 * modulated (pbw_sg_blur_act_mod's output), and pbw_sg_conv takes it as it is. */
pbw_tensor *pbw_sg_modconv_act(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *s, pbw_tensor *s0,
                               pbw_tensor *m, const pbw_sg_conv_plan *pl, pbw_tensor *d,
                               pbw_tensor *noise, pbw_tensor *bias, float noise_weight,
                               float slope, float gain);
/* A 1x1 convolution with a weight per sample (StyleGAN2's ToRGB, whose weight the style
 * scales): x (N,C,H,W), w (N,O,C) -> y (N,O,H,W), y[n,o] = sum_c w[n,o,c] x[n,c]. The batched
 * product pbw_matmul(w, x as (N,C,H*W)) it stands for (recorded for the backward), except
 * without gradients on a GPU where x is held as NHWC halves (pbw_cuda_nhwc), which it reads as
 * they are. */
pbw_tensor *pbw_sg_pointwise(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w);
/* ToRGB's product with its masked blend and bias: with m (N|1,1,H,W), w (N,2O,C) holds the
 * edit's weights in rows 0..O-1 and the original style's in O..2O-1, and
 *   y = y0 + m (y1 - y0) + bias,   y1, y0 = pbw_sg_pointwise's outputs 0..O-1 and O..2O-1;
 * without m, w (N,O,C) and y = pbw_sg_pointwise(x, w) + bias. bias (O elements) may be NULL.
 * The ops it stands for (pbw_sg_pointwise, two slices, sub, mul, add, add) are what it runs,
 * and records, on the CPU or with gradients; without gradients on a GPU where x is NHWC
 * halves, one kernel writes y after the products, with those ops' roundings. */
pbw_tensor *pbw_sg_pointwise_blend(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *m,
                                   pbw_tensor *bias);
/* A block's last convolution and its ToRGB together: returns out = pbw_sg_modconv_act(x, NULL,
 * NULL, NULL, pl, d, noise, bias, noise_weight, slope, gain) (x already modulated) and sets
 * *rgb = pbw_sg_pointwise_blend(out, w, m, rgb_bias). Those two ops are what it runs, and
 * records, on the CPU or with gradients; without gradients on a GPU where x is NHWC bf16 halves
 * and the shapes suit ToRGB's tensor-core kernel, the convolution leaves its output
 * unactivated and that kernel activates each value as it reads it, writing it back (the same
 * bits as the two ops). NULL (and *rgb NULL) on failure. */
pbw_tensor *pbw_sg_conv_act_rgb(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_conv_plan *pl,
                                pbw_tensor *d, pbw_tensor *noise, pbw_tensor *bias,
                                float noise_weight, float slope, float gain, pbw_tensor *w,
                                pbw_tensor *m, pbw_tensor *rgb_bias, pbw_tensor **rgb);

/* ---------- separable blur ----------
 *
 * StyleGAN2's Blur (upfirdn2d with up = down = 1) for kernels that are outer products, as
 * make_kernel's always are: pbw_sg_fir_init factors a (K,K) kernel, and pbw_sg_blur applies it
 * as a row pass and a column pass (2K instead of K^2 multiply-adds per output). */
typedef struct pbw_sg_fir {
    int K;             /* taps, <= 16 */
    float kv[16], kh[16]; /* the kernel is kv[i] * kh[j] */
    int pad0, pad1;    /* on both axes */
} pbw_sg_fir;

/* 0 when k (K,K) is kv (x) kh up to 1e-6 relative (then *f is filled), -1 otherwise. k may be
 * on the GPU (its taps are then copied to the host). */
int pbw_sg_fir_init(pbw_sg_fir *f, const pbw_tensor *k, int pad0, int pad1);
/* upfirdn2d(x, k, up=1, down=1, pad=(pad0,pad1)): x (N,C,H,W) ->
 * (N,C,H+pad0+pad1-K+1, W+pad0+pad1-K+1). Gradient reaches x. */
pbw_tensor *pbw_sg_blur(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f);
/* pbw_sg_bias_act(pbw_sg_blur(x, f), d, noise, bias, noise_weight, slope, gain) in one op:
 * without gradients on a GPU the activation is applied as the blur writes (its unactivated
 * output is never written); otherwise exactly the two ops. */
pbw_tensor *pbw_sg_blur_act(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f, pbw_tensor *d,
                            pbw_tensor *noise, pbw_tensor *bias, float noise_weight, float slope,
                            float gain);
/* pbw_sg_modulate(pbw_sg_blur_act(x, f, d, noise, bias, ...), s, s0, m) in one op: an upsampling
 * convolution's output (blurred and activated) scaled by the next convolution's style, which
 * then runs as pbw_sg_modconv_act with s NULL. Without gradients on a GPU where x is NHWC
 * halves, the blur writes the scaled values (with the two ops' roundings: the activation
 * rounded to the half type, then scaled, then rounded), so nothing else reads or writes the
 * unscaled output; otherwise exactly the ops. s is required; s0 and m as pbw_sg_modulate. */
pbw_tensor *pbw_sg_blur_act_mod(pbw_ctx *ctx, pbw_tensor *x, const pbw_sg_fir *f, pbw_tensor *d,
                                pbw_tensor *noise, pbw_tensor *bias, float noise_weight,
                                float slope, float gain, pbw_tensor *s, pbw_tensor *s0,
                                pbw_tensor *m);

#ifdef __cplusplus
}
#endif
#endif
