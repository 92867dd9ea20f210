/* pbw_ops.h: every tensor op the models use, each with a forward and a backward.
 *
 * Each op checks its arguments, allocates its output in the context's activation arena, runs
 * the kernel of the tensors' device (src/cpu today; src/cuda behind the same calls) and, when an
 * input needs a gradient, records its backward on the tape. Shapes in comments are row-major;
 * images are (N,C,H,W). Any op given a NULL tensor returns NULL (errors are sticky in the
 * context, see pbw_tensor.h). Ops never modify their inputs.
 *
 * Where an op mirrors a PyTorch function, it matches its numerics and conventions (noted per op),
 * because models are checked against PyTorch references.
 */
#ifndef PBW_OPS_H
#define PBW_OPS_H

#include "pbw_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------- linear algebra ---------- */

/* a (...,M,K) @ b (...,K,N) -> (...,M,N). trans_a / trans_b take a as (...,K,M) / b as
 * (...,N,K). Batch dims of a and b must be equal, or b may be 2-D (shared by every batch). */
pbw_tensor *pbw_matmul(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b, int trans_a, int trans_b);
/* x (...,in) @ w(out,in)^T + b(out) -> (...,out), as torch.nn.functional.linear. b may be NULL. */
pbw_tensor *pbw_linear(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b);
/* One input through n maps: y[k] = linear(x, w[k], b[k]) for k < n (b NULL, or b[k] NULL: no
 * bias), the same values as n calls of pbw_linear. Where x is one row (1,I) on a GPU under the
 * half precisions and the maps are constants, the n products run as one kernel and x's gradient
 * from all of them as two (StyleGAN2's styles: one latent through every layer's affine map);
 * elsewhere it is pbw_linear n times. y[] gets the n outputs; 0, or -1 with ctx failed. */
int pbw_linear_multi(pbw_ctx *ctx, pbw_tensor *x, int n, pbw_tensor *const *w,
                     pbw_tensor *const *b, pbw_tensor **y);
/* 1 where pbw_linear_multi would run these as one kernel, 0 where it is pbw_linear n times. */
int pbw_linear_multi_fused(pbw_ctx *ctx, const pbw_tensor *x, int n, pbw_tensor *const *w,
                           pbw_tensor *const *b);
/* r + linear(x, w, b), r of the output's shape: a residual connection in one op (one cuBLASLt
 * product on the GPU, r read as its C). */
pbw_tensor *pbw_linear_add(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                           pbw_tensor *r);
/* The same, written over r when nothing can need r's old values (no gradient recorded for
 * this op, an empty tape): returns r then, else a new tensor as pbw_linear_add. For a residual
 * stream whose old values the caller drops (CLIP's blocks without gradients: no new tensor, so
 * a block's temporaries are freed without moving its output). r must be the caller's own
 * activation, never a weight or a tensor still to be read. */
pbw_tensor *pbw_linear_add_into(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                                pbw_tensor *r);
/* pbw_quick_gelu(pbw_linear(x, w, b)), CLIP's first MLP product and its activation: the two ops
 * (their gradients), or without gradients under half activations on CUDA one fused product
 * with QuickGELU in its epilogue (pbw_cuda_linear_quick_gelu), whose sums are not rounded to
 * the half type before the activation. */
pbw_tensor *pbw_linear_quick_gelu(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b);
/* pbw_linear(pbw_layer_norm(x, ln_w, ln_b, eps), w, b), with quick_gelu its
 * pbw_linear_quick_gelu: the two ops, save on a GPU in bf16/fp16 with half activations and no
 * gradient, where one fused product reads x as it is, with the layer norm's affine folded into
 * a centred copy of w, and scales each row by its 1/std in the epilogue
 * (pbw_cuda_layer_norm_linear): the layer norm's output is never written. */
pbw_tensor *pbw_layer_norm_linear(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *ln_w, pbw_tensor *ln_b,
                                  float eps, pbw_tensor *w, pbw_tensor *b, int quick_gelu);

/* ---------- convolution and resampling (src/cpu/pbw_cpu_conv.c, pbw_cpu_resample.c) ---------- */

typedef struct pbw_conv_params {
    int stride_h, stride_w;   /* 0 means 1 */
    int pad_h, pad_w;
    int dil_h, dil_w;         /* 0 means 1 */
    int groups;               /* 0 means 1 */
    int out_pad_h, out_pad_w; /* transposed convolution only */
} pbw_conv_params;

/* x (N,C,H,W), w (O,C/groups,KH,KW), b (O) or NULL -> (N,O,OH,OW); as F.conv2d. */
pbw_tensor *pbw_conv2d(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                       pbw_conv_params p);
/* x (N,C,H,W), w (C,O/groups,KH,KW), b (O) or NULL -> (N,O,OH,OW) with
 * OH = (H-1)*stride - 2*pad + dil*(KH-1) + out_pad + 1; as F.conv_transpose2d. */
pbw_tensor *pbw_conv_transpose2d(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b,
                                 pbw_conv_params p);
/* StyleGAN2's upfirdn2d: upsample by zero insertion (up), pad (negative pads crop), correlate
 * every channel with the 2-D FIR kernel k (KH,KW) flipped as in the reference (i.e. true
 * convolution), then keep every `down`-th sample. x (N,C,H,W) ->
 * (N,C,(H*up+pad_y0+pad_y1-KH)/down+1, (W*up+pad_x0+pad_x1-KW)/down+1). k needs no gradient. */
pbw_tensor *pbw_upfirdn2d(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *k, int up, int down,
                          int pad_x0, int pad_x1, int pad_y0, int pad_y1);

typedef enum pbw_resize_mode {
    PBW_RESIZE_NEAREST = 0, /* F.interpolate mode='nearest' (floor of dst*scale) */
    PBW_RESIZE_BILINEAR,    /* mode='bilinear', align_corners=False */
    PBW_RESIZE_BICUBIC      /* mode='bicubic', align_corners=False, a=-0.75, border clamped */
} pbw_resize_mode;
/* x (N,C,H,W) -> (N,C,out_h,out_w); scale = in/out per axis, as F.interpolate(size=...). */
pbw_tensor *pbw_resize(pbw_ctx *ctx, pbw_tensor *x, int out_h, int out_w, pbw_resize_mode mode);
/* Separable normalized Gaussian of `sigma` and odd size `ksize`, zero padding, same size out. */
pbw_tensor *pbw_gaussian_blur(pbw_ctx *ctx, pbw_tensor *x, float sigma, int ksize);
/* Max pooling (src/cpu/pbw_cpu_pool.c), as F.max_pool2d(x, kernel, stride, padding) with
 * dilation 1 and ceil_mode=False: square kernel x kernel windows, stride 0 meaning `kernel`,
 * padding in 0..kernel/2 that never wins. x (N,C,H,W) -> (N,C,OH,OW) with
 * OH = (H + 2*padding - kernel)/stride + 1 (floor). Ties go to the first element in row-major
 * window order; the gradient goes to the winning element. */
pbw_tensor *pbw_max_pool2d(pbw_ctx *ctx, pbw_tensor *x, int kernel, int stride, int padding);

/* ---------- elementwise (broadcasting like NumPy: trailing dims aligned, size-1 stretched) --- */

pbw_tensor *pbw_add(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b);
pbw_tensor *pbw_sub(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b);
pbw_tensor *pbw_mul(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b);
pbw_tensor *pbw_div(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b);
/* x * s + t with scalars s, t */
pbw_tensor *pbw_affine(pbw_ctx *ctx, pbw_tensor *x, float s, float t);
pbw_tensor *pbw_scale(pbw_ctx *ctx, pbw_tensor *x, float s);
pbw_tensor *pbw_add_scalar(pbw_ctx *ctx, pbw_tensor *x, float t);

pbw_tensor *pbw_relu(pbw_ctx *ctx, pbw_tensor *x);
pbw_tensor *pbw_leaky_relu(pbw_ctx *ctx, pbw_tensor *x, float slope);
pbw_tensor *pbw_gelu(pbw_ctx *ctx, pbw_tensor *x);       /* exact (erf), as nn.GELU() */
pbw_tensor *pbw_quick_gelu(pbw_ctx *ctx, pbw_tensor *x); /* x * sigmoid(1.702 x), CLIP's */
pbw_tensor *pbw_sigmoid(pbw_ctx *ctx, pbw_tensor *x);
pbw_tensor *pbw_tanh(pbw_ctx *ctx, pbw_tensor *x);
pbw_tensor *pbw_sqrt(pbw_ctx *ctx, pbw_tensor *x);
pbw_tensor *pbw_rsqrt(pbw_ctx *ctx, pbw_tensor *x);
pbw_tensor *pbw_exp(pbw_ctx *ctx, pbw_tensor *x);
pbw_tensor *pbw_abs(pbw_ctx *ctx, pbw_tensor *x);          /* gradient sign(x), 0 at 0 */
pbw_tensor *pbw_square(pbw_ctx *ctx, pbw_tensor *x);
/* Gradient passes where lo <= x <= hi, as torch.clamp. */
pbw_tensor *pbw_clamp(pbw_ctx *ctx, pbw_tensor *x, float lo, float hi);

/* ---------- reductions ---------- */

/* Sum / mean over the axes listed (negative counts from the end); keepdim as in PyTorch. */
pbw_tensor *pbw_sum(pbw_ctx *ctx, pbw_tensor *x, int naxes, const int *axes, int keepdim);
pbw_tensor *pbw_mean(pbw_ctx *ctx, pbw_tensor *x, int naxes, const int *axes, int keepdim);
/* Sum / mean of every element -> shape (1). */
pbw_tensor *pbw_sum_all(pbw_ctx *ctx, pbw_tensor *x);
pbw_tensor *pbw_mean_all(pbw_ctx *ctx, pbw_tensor *x);

/* ---------- shape ---------- */

/* Same data, new shape (one dim may be -1). Shares the buffer; gradient is its own. */
pbw_tensor *pbw_reshape(pbw_ctx *ctx, pbw_tensor *x, int ndim, const int64_t *shape);
/* out.shape[i] = x.shape[perm[i]] (torch.permute), copied contiguous. */
pbw_tensor *pbw_permute(pbw_ctx *ctx, pbw_tensor *x, const int *perm);
/* x[..., start:end:step, ...] along axis; negative start/end count from the end (Python). */
pbw_tensor *pbw_slice(pbw_ctx *ctx, pbw_tensor *x, int axis, int64_t start, int64_t end,
                      int64_t step);
/* Concatenation of n tensors along axis (all other dims equal). */
pbw_tensor *pbw_concat(pbw_ctx *ctx, int n, pbw_tensor *const *xs, int axis);
/* Constant padding: pads[2*i], pads[2*i+1] are the amounts before/after dim i (ndim pairs;
 * negative crops). */
pbw_tensor *pbw_pad(pbw_ctx *ctx, pbw_tensor *x, const int64_t *pads, float value);

/* ---------- normalization, softmax, attention, embedding ---------- */

/* Over the last dim, as F.layer_norm(x, (D,), w, b, eps); w, b (D) may be NULL. */
pbw_tensor *pbw_layer_norm(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *w, pbw_tensor *b, float eps);
/* Inference batch norm over dim 1 with given statistics: (x - mean) / sqrt(var + eps) * w + b;
 * mean, var (C) are constants; w, b (C) may be NULL. x (N,C,...). */
pbw_tensor *pbw_batch_norm(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *mean, pbw_tensor *var,
                           pbw_tensor *w, pbw_tensor *b, float eps);
/* LPIPS's term of one layer, summed over positions with a weight map: f (N,C,h,w), ref (N or
 * 1,C,h,w), w with C elements (the layer's 1x1 head), k with h*w (the weight map) ->
 * (N): sum_q k[q] sum_c w[c] (f[n,c,q] / (|f[n,:,q]| + eps) - ref[.,c,q])^2, |.| the norm over
 * channels. lpips's normalize_tensor, squared difference and head, then a weighted sum over the
 * positions, in one pass (pbw_lpips_keep sums a spatial map's masked mean this way). ref, w and
 * k are constants (they must not require gradients); the gradient goes to f. */
pbw_tensor *pbw_lpips_layer(pbw_ctx *ctx, pbw_tensor *f, pbw_tensor *ref, pbw_tensor *w,
                            pbw_tensor *k, float eps);
/* Softmax over the last dim. */
pbw_tensor *pbw_softmax(pbw_ctx *ctx, pbw_tensor *x);
/* A ViT's tokens: x (B,P,W) (the patches' embeddings) with the class token cls (W) put before
 * each item's rows and the position embedding pos (P+1,W) added: (B,P+1,W), row 0 cls + pos[0],
 * row t x[t-1] + pos[t] (the same sums as concat and add). cls and pos are constants; x's
 * gradient flows. One pass each way, where zeros, adds and a concat took five kernels. */
pbw_tensor *pbw_class_position(pbw_ctx *ctx, pbw_tensor *x, pbw_tensor *cls, pbw_tensor *pos);
/* Cosine similarity of rows: a (N,E), b (N,E) or (1,E) (one row for all) -> (N):
 * a_r . b_r / (sqrt(|a_r|^2 + 1e-30) sqrt(|b_r|^2 + 1e-30)), the sums in double (the tiny term
 * only keeps a zero row from giving inf; it is below float resolution for any real embedding).
 * One op, where the products, sums, norms and their gradients as separate ops would be ~30
 * small kernels on a GPU. */
pbw_tensor *pbw_cosine(pbw_ctx *ctx, pbw_tensor *a, pbw_tensor *b);
/* Scaled dot-product attention: q (B,H,T,D), k and v (B,H,S,D) -> (B,H,T,D).
 * softmax(q k^T * scale [+ causal mask: key j > query i is excluded]) v. scale <= 0 means
 * 1/sqrt(D). As F.scaled_dot_product_attention. */
pbw_tensor *pbw_attention(pbw_ctx *ctx, pbw_tensor *q, pbw_tensor *k, pbw_tensor *v, int causal,
                          float scale);
/* Multi-head self-attention on packed projections (nn.MultiheadAttention's in_proj layout, as
 * CLIP runs it): qkv (B,T,3W) holds q, k and v side by side, each W = heads*D wide with head h
 * in columns h*D .. h*D+D-1 of its part -> (B,Tq,W), the heads' outputs side by side, for the
 * first Tq = n_queries positions (T for all; fewer when only some outputs are used, e.g. a
 * class token). The same as splitting, permuting to (B,H,T,D), pbw_attention and merging the
 * heads back, without the copies. scale <= 0 means 1/sqrt(D). */
pbw_tensor *pbw_attention_qkv(pbw_ctx *ctx, pbw_tensor *qkv, int heads, int64_t n_queries,
                              int causal, float scale);
/* table (V,D), ids with shape ids_shape (ids_ndim dims) -> (ids_shape..., D). An id outside
 * [0,V) fails the context. */
pbw_tensor *pbw_embedding(pbw_ctx *ctx, pbw_tensor *table, const int32_t *ids, int ids_ndim,
                          const int64_t *ids_shape);

#ifdef __cplusplus
}
#endif
#endif
