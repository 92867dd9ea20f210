/* pbw_stylegan2.h: the StyleGAN2 generator of rosinality's stylegan2-pytorch, in C.
 *
 * Module for module as rosinality's model.py defines it (struct names follow its classes):
 * the mapping network (PixelNorm, n_mlp EqualLinear layers with fused leaky ReLU, lr_mul 0.01),
 * ConstantInput, StyledConv (ModulatedConv2d with demodulation, upsampling by a stride-2
 * transposed convolution and the [1,3,3,1] blur; NoiseInjection; FusedLeakyReLU with bias,
 * slope 0.2, gain sqrt(2)), ToRGB (modulated 1x1 convolution without demodulation, bias, the
 * upsampled skip), and truncation toward latent_avg. Size (4..1024), channel widths, style
 * size and mapping depth are read from the checkpoint's shapes.
 *
 *     pbw_stylegan2 *g;  pbw_err err;
 *     if (pbw_sg2_load("church.pt", &g, &err)) { puts(err.msg); return 1; }
 *     pbw_tensor *z = ...;                                      // (N, g->style_dim)
 *     pbw_tensor *img = pbw_sg2_from_z(ctx, g, z, 0.7f, NULL);  // (N,3,size,size), ~[-1,1]
 *     ...
 *     pbw_sg2_free(g);
 *
 * Latents: from z (mapping, then truncation), from w (N,S) (one w broadcast to every layer) or
 * from W+ (N, n_latent, S). Gradients flow from the image to whichever of z, w, W+ has
 * requires_grad set; weights never ask for one, so no weight gradient is ever computed.
 *
 * Masked styles (DESIGN.md section 2, the Paint by Word method): with opts->mask and the
 * original latents opts->lat0, every modulation (convolutions and ToRGB) uses the per-pixel
 * style s(w) * m + s(w0) * (1 - m), m being the mask at the resolution of that layer's input
 * feature map (pbw_sg2_mask_init). Why this is the reference's modulated convolution, exactly:
 * the reference modulates the weight, W'[o,c,k] = scale W[o,c,k] s[c], and convolves x with it.
 * Convolution is linear, so conv(x, W') = conv(x * s, scale W) when s is constant over the
 * image; pbw always computes the right-hand side (the style multiplies the input channels, the
 * weight stays shared) and then multiplies output channel o by the demodulation coefficient
 * d[o] = rsqrt(sum_c s[c]^2 sum_k (scale W[o,c,k])^2 + 1e-8), which is the reference's
 * rsqrt(sum_{c,k} W'[o,c,k]^2 + 1e-8) regrouped. With a mask, s varies per pixel and only the
 * right-hand side is defined: that is Bau's sequential StyleGAN2 (the reference painter), which
 * multiplies the feature map by the mixed style and demodulates with the ORIGINAL style s(w0),
 * kept here as the default. opts->demod_mixed instead demodulates every output pixel with the
 * mixed style there: d[o,p] = rsqrt(sum_c Wsq[o,c] smix[c,p]^2 + 1e-8), smix taken with the mask
 * at the layer's output resolution, applied after the blur of an upsampling layer. With every
 * layer's mask all ones it gives the unmasked generator at w, whereas the default gives the
 * unmasked image only where w == w0. (A mask of ones at image size is not all ones at every
 * layer: the zero-padded blur of sides > 16 darkens its border, as in the reference.)
 *
 * One deliberate difference from Bau's sequential StyleGAN2: there, ToRGB keeps rosinality's
 * fused modulation and is NOT masked; DESIGN.md and issue 4 mask every modulation, ToRGB
 * included, and so does pbw by default (opts->unmasked_torgb gives the reference's choice).
 *
 * Ownership: the model owns its weights (one arena) until pbw_sg2_free. Tensors returned by
 * the forward functions live in the context's activation arena. Forward functions return NULL
 * on error with the message in the context (pbw_ctx_error).
 */
#ifndef PBW_STYLEGAN2_H
#define PBW_STYLEGAN2_H

#include "core/pbw_ops_stylegan.h"
#include "core/pbw_rng.h"
#include "core/pbw_tensor.h"
#include "formats/pbw_records.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_SG2_MAX_LOG 10                                  /* 1024 px */
#define PBW_SG2_MAX_MLP 32
#define PBW_SG2_MAX_NOISES (2 * (PBW_SG2_MAX_LOG - 2) + 1)  /* num_layers at 1024 px: 17 */
#define PBW_SG2_MAX_LATENT (2 * PBW_SG2_MAX_LOG - 2)        /* n_latent at 1024 px: 18 */

/* EqualLinear with its equalized-learning-rate factors folded in at load time. */
typedef struct pbw_sg2_equal_linear {
    pbw_tensor *weight; /* (out,in): checkpoint weight * lr_mul / sqrt(in) */
    pbw_tensor *bias;   /* (out): checkpoint bias * lr_mul */
} pbw_sg2_equal_linear;

typedef struct pbw_sg2_modulated_conv2d {
    int in_channel, out_channel, kernel_size;
    int upsample, demodulate;
    pbw_sg2_equal_linear modulation; /* style_dim -> in_channel, bias init 1 */
    pbw_tensor *weight;       /* (O,C,k,k): checkpoint weight[0] / sqrt(C k^2) */
    pbw_sg_conv_plan *plan;   /* the weight packed for pbw_sg_conv (k > 1: styled convs) */
    pbw_tensor *wsq;          /* (O,C): sum over taps of weight^2 (demodulation) */
    pbw_tensor *blur_kernel;  /* (K,K) Blur after the transposed convolution (upsample) */
    int blur_pad0, blur_pad1;
    pbw_sg_fir blur;          /* the same factored for pbw_sg_blur (blur.K 0: not separable) */
} pbw_sg2_modulated_conv2d;

typedef struct pbw_sg2_styled_conv {
    pbw_sg2_modulated_conv2d conv;
    float noise_weight;         /* NoiseInjection.weight */
    pbw_tensor *activate_bias;  /* (O): FusedLeakyReLU.bias */
} pbw_sg2_styled_conv;

typedef struct pbw_sg2_to_rgb {
    pbw_sg2_modulated_conv2d conv;  /* 1x1, 3 outputs, no demodulation */
    pbw_tensor *bias;               /* (1,3,1,1) */
    pbw_tensor *upsample_kernel;    /* (K,K) Upsample of the skip; NULL for to_rgb1 */
    int up_pad0, up_pad1;
} pbw_sg2_to_rgb;

typedef struct pbw_stylegan2 {
    int size, log_size;           /* size = 2^log_size */
    int style_dim, n_mlp;
    int num_layers;               /* noise inputs: 2 * (log_size - 2) + 1 */
    int n_latent;                 /* latents of W+: 2 * log_size - 2 */
    int channels[PBW_SG2_MAX_LOG + 1]; /* feature channels at side 2^i, i = 2..log_size */
    pbw_sg2_equal_linear style[PBW_SG2_MAX_MLP]; /* mapping layers style.1 .. style.n_mlp */
    pbw_tensor *input;            /* (1,C,4,4) ConstantInput */
    pbw_sg2_styled_conv conv1;
    pbw_sg2_to_rgb to_rgb1;
    pbw_sg2_styled_conv convs[2 * (PBW_SG2_MAX_LOG - 2)];
    pbw_sg2_to_rgb to_rgbs[PBW_SG2_MAX_LOG - 2];
    pbw_tensor *noises[PBW_SG2_MAX_NOISES]; /* (1,1,s,s) fixed noise buffers noises.noise_i */
    pbw_tensor *latent_avg;       /* (1,style_dim), or NULL when the checkpoint has none */
    pbw_arena arena;              /* every weight above */
} pbw_stylegan2;

/* ---------- loading ---------- */

/* Loads g_ema (and latent_avg when present) from a rosinality checkpoint: torch zip or legacy
 * .pt, or safetensors with the same names ("g_ema.conv1.conv.weight", ..., "latent_avg").
 * Other entries (d, g, optimizer states, args) are ignored. Fails naming the tensor when one
 * is missing or its shape disagrees with the architecture the others imply, and when the file
 * has no g_ema at all. *out is NULL on failure. */
int pbw_sg2_load(const char *path, pbw_stylegan2 **out, pbw_err *err);
/* Same from records already loaded (names under `prefix`, "g_ema." for checkpoints; the
 * latent_avg record is looked up without a prefix). The model copies what it needs. */
int pbw_sg2_from_records(const pbw_records *recs, const char *prefix, pbw_stylegan2 **out,
                         pbw_err *err);
void pbw_sg2_free(pbw_stylegan2 *g);
/* Moves the weights to the context's device (module.to(device)); no-op on the CPU. After it
 * the model runs only on contexts of that device. */
int pbw_sg2_to_device(pbw_stylegan2 *g, pbw_ctx *ctx, pbw_err *err);
/* Estimates latent_avg as the mean of mapping(z) over n draws of z from a generator seeded
 * with `seed` (what rosinality's generate.py does when a checkpoint has none) and stores it in
 * the model. Uses ctx for the work and resets it. */
int pbw_sg2_mean_latent(pbw_ctx *ctx, pbw_stylegan2 *g, int n, uint32_t seed, pbw_err *err);

/* ---------- masks for masked styles ---------- */

typedef struct pbw_sg2_mask {
    int log_size;
    pbw_tensor *m[PBW_SG2_MAX_LOG + 1]; /* (1,1,2^i,2^i) for i = 2..log_size */
    pbw_arena arena;
} pbw_sg2_mask;

/* Prepares the per-resolution masks of a generator from an (h,w) mask in [0,1] (row-major;
 * any size, usually the image's): area average to every side 4..size (as adaptive average
 * pooling), then for sides > 16 a normalized Gaussian blur of sigma = side/16 and size
 * 2*int(sigma)-1 with zero padding (DESIGN.md section 2). Computed in double, stored float. */
int pbw_sg2_mask_init(pbw_sg2_mask *mk, const pbw_stylegan2 *g, const float *mask, int h, int w,
                      pbw_err *err);
void pbw_sg2_mask_free(pbw_sg2_mask *mk);
/* Moves the mask pyramid to the context's device; no-op on the CPU. */
int pbw_sg2_mask_to_device(pbw_sg2_mask *mk, pbw_ctx *ctx, pbw_err *err);

/* ---------- forward ---------- */

typedef enum pbw_sg2_noise {
    PBW_SG2_NOISE_FIXED = 0, /* the checkpoint's noises.noise_i, shared by the batch (default) */
    PBW_SG2_NOISE_RANDOM,    /* fresh N(0,1) noise per sample and layer, from opts->rng */
    PBW_SG2_NOISE_NONE       /* no noise */
} pbw_sg2_noise;

/* The constants of a masked synthesis (pbw_sg2_fixed_make): each layer's style of the original
 * latents, s0 = A lat0 + b, and each convolution's demodulation with it, made once for an edit
 * instead of on every pass (an Adam step would otherwise repeat ~70 small kernels of them). conv_*
 * and rgb_* are indexed by the layer's latent index; NULL where a layer has none. */
typedef struct pbw_sg2_fixed {
    pbw_tensor *conv_s0[PBW_SG2_MAX_LATENT], *conv_d0[PBW_SG2_MAX_LATENT];
    pbw_tensor *rgb_s0[PBW_SG2_MAX_LATENT];
} pbw_sg2_fixed;

typedef struct pbw_sg2_opts {
    pbw_sg2_noise noise;
    pbw_rng *rng;               /* PBW_SG2_NOISE_RANDOM */
    const pbw_sg2_mask *mask;   /* masked styles when non-NULL ... */
    pbw_tensor *const *lat0;    /* ... with the original latents: n_latent tensors (N|1, S) */
    int demod_mixed;            /* masked: demodulate with the mixed style (see above) */
    int unmasked_torgb;         /* masked: ToRGB layers use s(w) everywhere, as Bau's
                                 * sequential StyleGAN2 does (default 0: masked too) */
    const pbw_sg2_fixed *fixed; /* masked: the constants of these lat0, or NULL (computed) */
} pbw_sg2_opts;

/* The constants of a masked synthesis with opts (mask and lat0 set) into *out, made on ctx (they
 * live as long as its activations; ctx records no gradients for them). 0, or -1 with ctx
 * failed. */
int pbw_sg2_fixed_make(pbw_ctx *ctx, const pbw_stylegan2 *g, const pbw_sg2_opts *opts,
                       pbw_sg2_fixed *out);

/* z (N,S) -> w (N,S): PixelNorm, then the mapping layers. */
pbw_tensor *pbw_sg2_mapping(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *z);
/* latent_avg + psi * (w - latent_avg); w itself when psi >= 1. Fails when psi < 1 and the model
 * has no latent_avg. w may be (N,S) or (N,n_latent,S). */
pbw_tensor *pbw_sg2_truncate(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *w, float psi);
/* The synthesis network from one latent per layer: lat[i] (N,S) for i < n_latent (the same
 * tensor may be passed several times). opts may be NULL (fixed noise, no mask). Returns the
 * image (N,3,size,size). */
pbw_tensor *pbw_sg2_synthesis(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *const *lat,
                              const pbw_sg2_opts *opts);
/* The synthesis in two parts, so that the first blocks can run once for many samples and
 * the rest in smaller batches (CMA-ES's population: the low-resolution blocks keep a GPU
 * mostly idle at a batch's size). pbw_sg2_synthesis_begin runs the 4x4 layers and the first
 * `blocks` upsampling blocks (0..log_size-2) into p: the features x (NULL after the last
 * block) and the RGB skip (the image after the last block). pbw_sg2_partial_rows takes rows
 * [i, i+n) of p; pbw_sg2_synthesis_finish runs the remaining blocks for latents with as many
 * rows as p and returns the image. With fixed or no noise, begin then finish (on any rows)
 * gives pbw_sg2_synthesis's values; random noise is drawn in the order the layers run.
 * 0 / the image, or -1 / NULL with ctx failed. */
typedef struct pbw_sg2_partial {
    pbw_tensor *x, *skip;
    int next_block; /* upsampling blocks done */
} pbw_sg2_partial;
/* How many upsampling blocks to run for n_all samples at once before batches of n_batch:
 * those whose output (n_all x side^2 x channels) is no larger than the last block's for a
 * batch, never the last block itself (0 when none qualifies). */
int pbw_sg2_shared_blocks(const pbw_stylegan2 *g, int64_t n_all, int64_t n_batch);
int pbw_sg2_synthesis_begin(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *const *lat,
                            const pbw_sg2_opts *opts, int blocks, pbw_sg2_partial *p);
int pbw_sg2_partial_rows(pbw_ctx *ctx, const pbw_sg2_partial *p, int64_t i, int64_t n,
                         pbw_sg2_partial *out);
pbw_tensor *pbw_sg2_synthesis_finish(pbw_ctx *ctx, const pbw_stylegan2 *g,
                                     pbw_tensor *const *lat, const pbw_sg2_opts *opts,
                                     const pbw_sg2_partial *p);
/* Convenience entry points. */
pbw_tensor *pbw_sg2_from_z(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *z, float psi,
                           const pbw_sg2_opts *opts);
pbw_tensor *pbw_sg2_from_w(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *w,
                           const pbw_sg2_opts *opts);                        /* w (N,S) */
pbw_tensor *pbw_sg2_from_wplus(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *wplus,
                               const pbw_sg2_opts *opts);                    /* (N,n_latent,S) */
/* Splits W+ (N,n_latent,S) into n_latent tensors (N,S) (slices that pass gradients back). */
int pbw_sg2_split_wplus(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *wplus,
                        pbw_tensor **lat);

#ifdef __cplusplus
}
#endif
#endif
