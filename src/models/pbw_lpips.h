/* pbw_lpips.h: LPIPS, the learned perceptual distance of Zhang et al. 2018, with the AlexNet
 * trunk and the v0.1 linear heads, as richzhang/PerceptualSimilarity's
 * `lpips.LPIPS(net='alex', version='0.1')` computes it, with gradients to the images. Paint by
 * Word uses it to keep the unpainted part of a picture: DESIGN.md section 2.
 *
 *     pbw_lpips *lp; pbw_err err;
 *     if (pbw_lpips_load("alexnet-owt-7be5be79.pth", "lpips/v0.1/alex.pth", &lp, &err))
 *         { puts(err.msg); return 1; }
 *     pbw_tensor *x = ...;      // (N,3,H,W) in [-1,1], requires_grad = 1 (the new image)
 *     pbw_tensor *x0 = ...;     // (N,3,H,W) or (1,3,H,W): the original, no gradient
 *     pbw_tensor *map = pbw_lpips_forward(ctx, lp, x, x0, 1);         // (N,1,H,W)
 *     pbw_tensor *w = ...;      // (1,1,H,W) or (N,1,H,W): 1 - mask
 *     pbw_tensor *d = pbw_lpips_weighted(ctx, map, w);               // (N)
 *     ... pbw_backward: x->grad holds the gradient; no weight gets one ...
 *     pbw_lpips_free(lp);
 *
 * The computation, per input pair (x, y):
 *   - ScalingLayer: (x - shift) / scale per channel, shift (-.030,-.088,-.188),
 *     scale (.458,.448,.450);
 *   - torchvision's AlexNet `features` up to the last ReLU, cut after each ReLU: conv1 11x11
 *     stride 4 pad 2 -> relu1 | maxpool 3/2, conv2 5x5 pad 2 -> relu2 | maxpool 3/2,
 *     conv3 3x3 pad 1 -> relu3 | conv4 -> relu4 | conv5 -> relu5;
 *   - per layer k: unit vectors over channels f / (sqrt(sum_c f^2) + 1e-10) (lpips's
 *     normalize_tensor, eps added after the sqrt), squared difference, the 1x1 convolution of
 *     head k (one output channel, no bias; the head's Dropout is identity in eval);
 *   - spatial = 0: each layer's map averaged over its positions -> (N,1,1,1);
 *     spatial = 1: each layer's map resized to the input's HxW (bilinear, align_corners=False,
 *     as lpips >= 0.1.4's `upsample` with size=) -> (N,1,H,W);
 *   - summed over the five layers in order.
 * The spatial map's mean is close to, not equal to, the non-spatial value (bilinear
 * upsampling does not preserve means at the borders); the two are separate outputs, as in
 * lpips. Inputs must be at least 35x35 (AlexNet's second pool needs a 3x3 map).
 *
 * Checkpoints (read with pbw_load_checkpoint: torch zip or legacy files, or safetensors):
 *   - trunk: torchvision's alexnet-owt-*.pth state dict (features.{0,3,6,8,10}.weight/.bias;
 *     classifier.* is ignored), or a whole lpips.LPIPS state dict
 *     (net.slice1.0.*, net.slice2.3.*, net.slice3.6.*, net.slice4.8.*, net.slice5.10.*);
 *   - heads: lin0.model.1.weight .. lin4.model.1.weight, shapes (1,64,1,1), (1,192,1,1),
 *     (1,384,1,1), (1,256,1,1), (1,256,1,1): lpips's weights/v0.1/alex.pth. heads_path may be
 *     NULL when the trunk file holds them too (a whole LPIPS state dict).
 * fp16/bf16 weights are converted to float32 on load. Every missing or misshapen tensor is
 * reported by name.
 *
 * Gradients: the weights never ask for gradients, so backward reaches only the images (those
 * with requires_grad). Where a feature vector is all zero (every channel cut by its ReLU) the
 * normalization's gradient is 0/0 as in PyTorch; the ReLU behind it zeroes it, as PyTorch's
 * does, so the image gradient stays finite.
 *
 * Ownership: pbw_lpips_load allocates the model (weights in its own arena); pbw_lpips_free
 * releases it. Forward functions allocate in the context's activation arena and return NULL
 * with the context failed (pbw_ctx_error) on a bad input. A model may be shared by threads
 * that use different contexts: forward passes only read it.
 */
#ifndef PBW_LPIPS_H
#define PBW_LPIPS_H

#include "core/pbw_ops.h"
#include "formats/pbw_records.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_LPIPS_LAYERS 5

typedef struct pbw_lpips {
    pbw_tensor *conv_w[PBW_LPIPS_LAYERS]; /* features.{0,3,6,8,10}.weight (O,C,K,K) */
    pbw_tensor *conv_b[PBW_LPIPS_LAYERS]; /* features.{0,3,6,8,10}.bias (O) */
    pbw_tensor *lin_w[PBW_LPIPS_LAYERS];  /* lin{k}.model.1.weight (1,C_k,1,1) */
    pbw_tensor *shift, *scale;            /* ScalingLayer, (1,3,1,1) */
    pbw_arena arena;                      /* owns every tensor above */
} pbw_lpips;

/* Channels of the five compared layers: 64, 192, 384, 256, 256. */
extern const int pbw_lpips_channels[PBW_LPIPS_LAYERS];

/* Loads the trunk from `trunk_path` and the heads from `heads_path` (NULL: from the trunk's
 * file). See the top of this file for the names. */
int pbw_lpips_load(const char *trunk_path, const char *heads_path, pbw_lpips **out,
                   pbw_err *err);
/* Same from records already loaded (heads may be the same pointer as trunk). */
int pbw_lpips_from_records(const pbw_records *trunk, const pbw_records *heads, pbw_lpips **out,
                           pbw_err *err);
void pbw_lpips_free(pbw_lpips *m);
/* Moves the weights to the context's device (module.to(device)); no-op on the CPU. */
int pbw_lpips_to_device(pbw_lpips *m, pbw_ctx *ctx, pbw_err *err);

/* LPIPS between x0 (N,3,H,W) and x1 (N,3,H,W) or (1,3,H,W) (broadcast to every image of x0,
 * as the painting loss compares a batch of candidates with one original), inputs in [-1,1].
 * spatial = 1: the map (N,1,H,W); spatial = 0: the distances (N,1,1,1). */
pbw_tensor *pbw_lpips_forward(pbw_ctx *ctx, const pbw_lpips *m, pbw_tensor *x0, pbw_tensor *x1,
                              int spatial);

/* The five unit-normalized feature maps of x (N,3,H,W): feats[k] (N,C_k,h_k,w_k), the
 * trunk's outputs after normalize_tensor. Returns 0, or -1 with the context failed.
 * For callers that compare many images with one reference: compute the reference's features
 * once in a context that is not reset (they need no gradient, so nothing of them is taped)
 * and pass them to pbw_lpips_compare in the per-step context. */
int pbw_lpips_features(pbw_ctx *ctx, const pbw_lpips *m, pbw_tensor *x,
                       pbw_tensor *feats[PBW_LPIPS_LAYERS]);
/* LPIPS from features of pbw_lpips_features (f1's batch may be 1); H, W: the map's size
 * (the input's) when spatial. */
pbw_tensor *pbw_lpips_compare(pbw_ctx *ctx, const pbw_lpips *m,
                              pbw_tensor *const f0[PBW_LPIPS_LAYERS],
                              pbw_tensor *const f1[PBW_LPIPS_LAYERS], int spatial, int64_t H,
                              int64_t W);

/* Paint by Word's masked LPIPS in one pass per layer: per image
 *   sum_p keep(p) map(p) / keep_sum,   map = the spatial LPIPS map of x against the reference
 * (pbw_lpips_compare's, spatial), as pbw_lpips_weighted_sums of that map gives it, without the
 * map: bilinear upsampling is linear, so sum_p keep(p) resize(r_k)(p) = sum_q kw_k(q) r_k(q)
 * with kw_k = resize^T keep, and each layer's term is one pbw_lpips_layer. The sums run in
 * another order (equal up to float rounding). ref: pbw_lpips_features of the reference (batch 1
 * or N); kw: pbw_lpips_keep_weights for the same keep map; keep_sum > 0 its sum. x (N,3,H,W)
 * -> (N), with gradients to x. */
pbw_tensor *pbw_lpips_keep(pbw_ctx *ctx, const pbw_lpips *m, pbw_tensor *x,
                           pbw_tensor *const ref[PBW_LPIPS_LAYERS],
                           pbw_tensor *const kw[PBW_LPIPS_LAYERS], double keep_sum);
/* The weights of pbw_lpips_keep for a keep map (host floats (H,W), the reference's image size)
 * and the reference's features ref: kw[k] (h_k,w_k) = the bilinear resize's adjoint applied to
 * keep, made in ctx (a context that is not reset, beside ref); layers of one size share one
 * tensor. 0, or -1 with ctx failed. */
int pbw_lpips_keep_weights(pbw_ctx *ctx, const float *keep, int H, int W,
                           pbw_tensor *const ref[PBW_LPIPS_LAYERS],
                           pbw_tensor *kw[PBW_LPIPS_LAYERS]);

/* Paint by Word's weighting of a spatial LPIPS map (paintbyword/losses.py, PerceptualLoss):
 * per image sum(map * weight) / sum(weight) over (C,H,W). map (N,1,H,W); weight (N,1,H,W) or
 * (1,1,H,W), nonnegative, a constant (1 - mask in the painting loss). Returns (N). Where
 * weight is all zero the reference returns 0 (the term is skipped); so does this (zeros, no
 * gradient). */
pbw_tensor *pbw_lpips_weighted(pbw_ctx *ctx, pbw_tensor *map, pbw_tensor *weight);
/* The same with the weight's per-image sums given (weight->shape[0] of them), as the caller
 * computed them when it made the weight: no read-back from the device, so a step stays free of
 * synchronization (CUDA graphs). */
pbw_tensor *pbw_lpips_weighted_sums(pbw_ctx *ctx, pbw_tensor *map, pbw_tensor *weight,
                                    const double *sums);

#ifdef __cplusplus
}
#endif
#endif
