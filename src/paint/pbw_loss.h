/* pbw_loss.h: the painting objective of Paint by Word (DESIGN.md section 2): the CLIP loss over
 * random crops, the loss modes that decide what CLIP sees, and the reconstruction loss that keeps
 * the unpainted part of the picture. Masks from image files are here too.
 *
 *     pbw_objective o;                         // constants of one edit, see pbw_objective_init
 *     pbw_objective_init(&o, clip, lpips, target, H, W);
 *     pbw_objective_set_mask(&o, cctx, mask, orig, &err);      // edit; skip for generation
 *     pbw_rng rng; pbw_rng_seed(&rng, 1);
 *     pbw_crop crops[2 * 32];
 *     pbw_objective_draw_crops(&o, &rng, crops);             // one set (two for blank+full)
 *     pbw_loss_parts parts;
 *     pbw_objective_eval(ctx, &o, img, crops, &parts);       // img (B,3,H,W) in [-1,1]
 *     pbw_backward(ctx, parts.total, NULL, &err);            // B = 1: d total / d latent
 *
 * The CLIP loss (the reference's CLIPLoss with reduction 'none'): for each crop (y, x, side) of
 * the view v (B,3,S,S), c = clamp(resize_bicubic((v[:, :, y:y+side, x:x+side] + 1) / 2, R), 0, 1)
 * normalized with CLIP's mean and std; loss_b = mean over crops of 100 (1 - cos(Ci(c_b), t)).
 * Every image of a batch gets the same crops (the reference draws one set per call on the whole
 * population). Crop sides are uniform integers in [int(0.7 S), int(0.98 S)), offsets uniform in
 * [0, S - side) on each axis, drawn from pbw's MT19937 (pbw_rng.h), so a seed fixes them.
 * n_crops = 0 feeds the whole view as one crop (the reference's rule when the image is no larger
 * than CLIP's input; pbw always crops unless asked not to, because the reference's CLIPLoss
 * compares against a fixed 256 px side and so crops for every model it paints with).
 *
 * Loss modes (what the view is):
 *   PBW_LOSS_PASTE_BLANK  mask * image (outside the mask 0, mid-gray): the default;
 *   PBW_LOSS_PASTE_ORIG   orig * (1 - mask) + image * mask;
 *   PBW_LOSS_ZOOM         the square box around the mask (side max(box, 128) clipped to the
 *                         image, centered as the reference's square_bounding_box), resized to R
 *                         with bilinear interpolation (align_corners false); crops are then
 *                         drawn on that R x R view. (The reference crops its zoomed 224 px view
 *                         with a 256 px rule, so its crops can run off the view and come out
 *                         stretched; pbw keeps them square and inside.)
 *   PBW_LOSS_BLANK_FULL   (loss(mask * image) + loss(image)) / 2, each with its own crops.
 * Without a mask (generation) every mode sees the whole image.
 *
 * Reconstruction (the reference's ProjectionLoss with weight k = 1 - mask, (1,1,H,W)):
 *   l1_b    = sum_{c,y,x} |x_b - orig| k / sum_{y,x} k    (the channel sum is the reference's)
 *   lpips_b = sum_{y,x} LPIPS_spatial(x_b, orig) k / sum_{y,x} k
 *   total_b = clip_b + recon_weight * (l1_b + lpips_weight * lpips_b)       (5 and 10)
 * skipped (total = clip) when k is zero everywhere or recon_weight is 0; the LPIPS term is
 * absent when no LPIPS model is given (the caller decides whether that is allowed).
 *
 * Ownership: the objective borrows its models and tensors; tensors set by
 * pbw_objective_set_mask live in the context passed there, which must outlive the objective
 * and not be reset while it is used. Loss outputs live in the evaluating context.
 */
#ifndef PBW_LOSS_H
#define PBW_LOSS_H

#include <stdint.h>

#include "core/pbw_ops.h"
#include "core/pbw_rng.h"
#include "formats/pbw_image.h"
#include "models/pbw_clip.h"
#include "models/pbw_lpips.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------- crops ---------- */

typedef struct pbw_crop {
    int y, x, side; /* rows y..y+side-1, columns x..x+side-1 */
} pbw_crop;

/* Draws n crops of a square image of side S (S >= 2): side uniform in [int(0.7 S),
 * int(0.98 S)) (int(0.7 S) when that range is empty, at least 1), then y, then x uniform in
 * [0, S - side) (0 when empty), as torch.randint's exclusive upper bounds in the reference.
 * The draws are (side, y, x) per crop in order, each lo + floor(uniform * (hi - lo)). */
void pbw_crops_draw(pbw_rng *rng, int S, int n, pbw_crop *out);

/* CLIP's input for crops of x (B,3,S,S) in [-1,1]: (B*n,3,R,R), image-major (row b*n + k is
 * crop k of image b), mapped to [0,1], bicubic-resized to R, clamped and normalized.
 * n = 0 (crops may be NULL): the whole image, (B,3,R,R). Fails on a crop outside the image. */
pbw_tensor *pbw_clip_crops(pbw_ctx *ctx, pbw_tensor *x, const pbw_crop *crops, int n, int R);
/* pbw_clip_patches(pbw_clip_crops(x, crops, n, R), P): the crops cut into P x P patches for
 * CLIP's patch embedding, (B*n, (R/P)^2, 3*P*P) (P divides R). On a GPU the crops are written
 * in that layout directly (one pass instead of three), and without gradients in bf16/fp16 as
 * the half copy the patch embedding's product reads; elsewhere the ops it stands for. */
pbw_tensor *pbw_clip_crops_patches(pbw_ctx *ctx, pbw_tensor *x, const pbw_crop *crops, int n,
                                   int R, int P);

/* Per image mean over crops of 100 (1 - cos(Ci(crop), target)): x (B,3,S,S), target (1,E)
 * -> (B). With gradients when x needs them. */
pbw_tensor *pbw_clip_crop_loss(pbw_ctx *ctx, const pbw_clip *clip, pbw_tensor *x,
                               pbw_tensor *target, const pbw_crop *crops, int n);

/* The same values, forward only, in bounded memory: CLIP runs on at most `chunk` crops at a time
 * in `scratch` (grad disabled there; reset after each chunk; it must not hold x or target).
 * out: (B) doubles. Returns 0, or -1 with err set. */
int pbw_clip_crop_loss_values(pbw_ctx *scratch, const pbw_clip *clip, const pbw_tensor *x,
                              pbw_tensor *target, const pbw_crop *crops, int n, int chunk,
                              double *out, pbw_err *err);

/* ---------- masks ---------- */

/* A mask for an H x W image from an image file's pixels: where the image has alpha that is not
 * all opaque, the alpha channel; otherwise the gray value (PIL's convert('L'): 0.299 R +
 * 0.587 G + 0.114 B in its fixed point). Resized to W x H with PIL's BILINEAR filter (a triangle widened by the scale when
 * shrinking, 8-bit fixed point, horizontal pass first: what the reference's
 * PIL.Image.resize(size, BILINEAR) does), then divided by 255. out: H*W floats in [0,1]. */
int pbw_mask_from_image(const pbw_image *im, int H, int W, float *out, pbw_err *err);
/* Reads a PNG or JPEG file and calls pbw_mask_from_image; the message names the file. */
int pbw_mask_load(const char *path, int H, int W, float *out, pbw_err *err);
/* Number of mask values > 0. */
int64_t pbw_mask_count(const float *mask, int64_t n);
/* The reference's square_bounding_box: the box of the values > 0 (the whole image when there
 * are none) grown to a square of side max(height, width, min_size), clipped to the image, moved
 * inside it. box = {y0, y1, x0, x1} (end exclusive). */
void pbw_mask_square_box(const float *mask, int H, int W, int min_size, int box[4]);

/* ---------- the objective ---------- */

typedef enum pbw_loss_mode {
    PBW_LOSS_PASTE_BLANK = 0,
    PBW_LOSS_PASTE_ORIG,
    PBW_LOSS_ZOOM,
    PBW_LOSS_BLANK_FULL
} pbw_loss_mode;

/* "paste_onto_blank", "paste_onto_orig", "zoom", "blank+full" (also the reference's
 * "paste_onto_blank_full_orig"). Returns -1 for an unknown name. */
int pbw_loss_mode_parse(const char *s, pbw_loss_mode *out);
const char *pbw_loss_mode_name(pbw_loss_mode m);

#define PBW_MAX_CROPS 1024

typedef struct pbw_objective {
    const pbw_clip *clip;
    const pbw_lpips *lpips;   /* NULL: no LPIPS term */
    pbw_tensor *target;       /* (1,E) the text embedding */
    int H, W;                 /* image size (square today) */
    int R;                    /* CLIP's input size */
    pbw_loss_mode mode;
    int n_crops;              /* per crop set; 0: the whole view (default 32) */
    int clip_chunk;           /* crops per CLIP forward in the forward-only path (default 32) */
    float recon_weight;       /* 5 */
    float lpips_weight;       /* 10 */
    /* set by pbw_objective_set_mask (all NULL / 0 for generation) */
    pbw_tensor *mask;         /* (1,1,H,W) */
    pbw_tensor *keep;         /* (1,1,H,W) 1 - mask */
    double keep_sum;          /* sum of keep; 0: no reconstruction term */
    pbw_tensor *orig;         /* (1,3,H,W) */
    pbw_tensor *orig_feats[PBW_LPIPS_LAYERS]; /* LPIPS features of orig (with lpips) */
    pbw_tensor *lpips_kw[PBW_LPIPS_LAYERS];   /* pbw_lpips_keep_weights of keep (with lpips) */
    int box[4];               /* zoom box */
} pbw_objective;

/* The defaults above, no mask. target (1,E) must outlive the objective. */
void pbw_objective_init(pbw_objective *o, const pbw_clip *clip, const pbw_lpips *lpips,
                        pbw_tensor *target, int H, int W);
/* Sets the mask (H*W floats in [0,1]) and the original image (1,3,H,W) (copied into cctx,
 * LPIPS features of orig computed there): cctx must not be reset while the objective is used. */
int pbw_objective_set_mask(pbw_objective *o, pbw_ctx *cctx, const float *mask,
                           const pbw_tensor *orig, pbw_err *err);
/* Crop sets per evaluation (2 for blank+full with a mask, else 1) and the side of the view
 * they are drawn on. */
int pbw_objective_crop_sets(const pbw_objective *o);
int pbw_objective_view_side(const pbw_objective *o);
/* Draws pbw_objective_crop_sets(o) * n_crops crops for one evaluation. */
void pbw_objective_draw_crops(const pbw_objective *o, pbw_rng *rng, pbw_crop *crops);

typedef struct pbw_loss_parts {
    pbw_tensor *total; /* (B) */
    pbw_tensor *clip;  /* (B) */
    pbw_tensor *l1;    /* (B), NULL when there is no reconstruction term */
    pbw_tensor *lpips; /* (B), NULL without reconstruction or without LPIPS */
} pbw_loss_parts;

/* The view CLIP sees for img (B,3,H,W): which = 0 the mode's view, 1 the full image (the second
 * half of blank+full). */
pbw_tensor *pbw_objective_view(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img,
                               int which);
/* The loss of img (B,3,H,W) with the given crops, as taped ops. Returns 0, or -1 with the
 * context failed. */
int pbw_objective_eval(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img,
                       const pbw_crop *crops, pbw_loss_parts *out);

/* Plain values of the parts, (B) doubles each (l1, lpips 0 when absent). */
typedef struct pbw_loss_values {
    double total, clip, l1, lpips;
} pbw_loss_values;

/* Forward only, with CLIP in chunks in `scratch` (see pbw_clip_crop_loss_values): img lives in
 * ctx (grad must be off there or img needs none). out: B values. */
int pbw_objective_values(pbw_ctx *ctx, pbw_ctx *scratch, const pbw_objective *o,
                         pbw_tensor *img, const pbw_crop *crops, pbw_loss_values *out,
                         pbw_err *err);

/* The same values queued on the GPU with nothing read back: per image, CLIP's loss into
 * clip (B floats), and with a reconstruction term L1 into l1 and LPIPS into lpips (B floats
 * each; lpips untouched without LPIPS), device memory that outlives ctx's and scratch's resets;
 * pbw_objective_combine turns them into values once read. So the batches of a CMA-ES
 * generation follow each other on the GPU with one read-back at the end. Returns 0 when
 * queued, 1 when this objective takes the other path (a CPU context, two crop sets, or chunks
 * smaller than an image's crops), -1 on error. */
int pbw_objective_values_queue(pbw_ctx *ctx, pbw_ctx *scratch, const pbw_objective *o,
                               pbw_tensor *img, const pbw_crop *crops, float *clip, float *l1,
                               float *lpips, pbw_err *err);
/* Whether pbw_objective_values_queue takes this objective (1) or returns 1 (0). */
int pbw_objective_can_queue(const pbw_objective *o, pbw_device dev);
/* One image's values from its terms, as pbw_objective_values computes them. */
void pbw_objective_combine(const pbw_objective *o, double clip, double l1, double lpips,
                           pbw_loss_values *v);

#ifdef __cplusplus
}
#endif
#endif
