/* pbw_painter.h: Paint by Word as a library: load the models once, then edit regions of GAN
 * images ("paint here: a rustic bed") or make whole images from words, with progress reports
 * and cancellation. `pbw edit`, `pbw generate` and the web studio are thin layers over this.
 *
 *     pbw_painter_config cfg = {.gan = "church.pt", .clip = "clip-vit-base-patch32",
 *                               .lpips_backbone = "alexnet-owt-7be5be79.pth"};
 *     pbw_painter *p; pbw_err err;
 *     if (pbw_painter_new(&p, &cfg, &err)) { puts(err.msg); return 1; }
 *     int S = pbw_painter_image_size(p);
 *     float *mask = malloc(S * S * sizeof *mask);
 *     pbw_mask_load("mask.png", S, S, mask, &err);            // pbw_loss.h
 *     pbw_paint_request rq;
 *     pbw_paint_request_default(&rq);                          // DESIGN.md section 2 defaults
 *     rq.seed = 30; rq.text = "a rustic bed"; rq.mask = mask;
 *     volatile sig_atomic_t cancel = 0;                        // set it anywhere to stop
 *     pbw_paint_result res;
 *     if (pbw_painter_edit(p, &rq, on_progress, user, &cancel, &res, &err)) ...;
 *     ... res.image (3,S,S) in [-1,1]; pbw_paint_to_rgb8 makes bytes of it ...
 *     pbw_paint_result_free(&res);
 *     pbw_painter_free(p);
 *
 * The method (DESIGN.md section 2, the reference's StyleganMaskedPainter and StyleganPainter):
 *   - start: z from the seed bank (row rq.seed of numpy's RandomState(1), pbw_rng.h) or rq.z;
 *     w0 = truncate(mapping(z), truncation); the original image G(w0);
 *   - the optimized variable: w (edit default; one w broadcast to every layer) or z
 *     (generation default; through the mapping network);
 *   - edit, latent masking (default): the image is the masked-style synthesis of
 *     pbw_stylegan2.h with the mask and w0; output masking (the paper's ablation):
 *     mask * G(w) + (1 - mask) * G(w0);
 *   - loss: pbw_loss.h's objective (CLIP over crops, loss mode, reconstruction outside the
 *     mask; generation: CLIP of the whole image only);
 *   - optimizers: cma+adam (default: rq.cma_generations generations of CMA-ES, population
 *     rq.population, sigma0 0.5, then rq.adam_steps Adam steps with the one-cycle schedule from
 *     the kept CMA point), cma alone (result: the kept point), adam alone (from the start).
 *     CMA evaluates its population in batches, forward passes only.
 *   - every CMA generation draws one crop set shared by its whole population; every Adam step
 *     draws a new one; all from one MT19937 seeded with rq.rng_seed, which also seeds CMA-ES.
 *     The same models, request, machine and thread count give the same bytes.
 *
 * Result: as the reference returns it, the final latent (cma: the kept point; adam: the latent
 * after the last step) and its image. When the run is cancelled, the lowest-loss latent evaluated
 * so far and its image, with res.cancelled set. res.before and res.after are the losses of the
 * original and the result with one extra crop set (drawn from rq.rng_seed + 1), so they compare.
 *
 * Threads: a painter runs one request at a time (it owns the working contexts); models are
 * only read. Progress callbacks run on the painting thread between steps. The cancel flag is
 * read before every step (and between CMA batches).
 *
 * Ownership: pbw_painter_new loads and owns the models; pbw_painter_wrap borrows models the
 * caller keeps. pbw_paint_result's arrays are malloc'd; pbw_paint_result_free releases them.
 */
#ifndef PBW_PAINTER_H
#define PBW_PAINTER_H

#include <signal.h>
#include <stdint.h>

#include "core/pbw_common.h"
#include "models/pbw_clip.h"
#include "models/pbw_lpips.h"
#include "models/pbw_stylegan2.h"
#include "models/pbw_tokenizer.h"
#include "paint/pbw_loss.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pbw_painter pbw_painter;

typedef struct pbw_painter_config {
    const char *gan;            /* rosinality StyleGAN2 checkpoint (required) */
    const char *clip;           /* CLIP directory or weights file (required) */
    const char *vocab;          /* tokenizer vocabulary (pbw_tokenizer.h); NULL: vocab.json +
                                   merges.txt or bpe_simple_vocab_16e6.txt.gz in the CLIP
                                   directory, else none (texts must then come as ids) */
    const char *lpips_backbone; /* torchvision alexnet-owt-*.pth; NULL: no LPIPS */
    const char *lpips_heads;    /* LPIPS v0.1 alex.pth; NULL: alex.pth or v0.1/alex.pth beside
                                   the backbone, or in the backbone file itself */
    pbw_device device;          /* where to run (PBW_DEV_CPU by default; PBW_DEV_CUDA needs
                                   pbw_device_init first, else device 0) */
} pbw_painter_config;

int pbw_painter_new(pbw_painter **out, const pbw_painter_config *cfg, pbw_err *err);
/* A painter over models the caller loaded and keeps (tok and lpips may be NULL). g is not const:
 * a request with truncation < 1 on a model without latent_avg stores the estimate in it. */
int pbw_painter_wrap(pbw_painter **out, pbw_stylegan2 *g, const pbw_clip *clip,
                     pbw_tokenizer *tok, const pbw_lpips *lpips, pbw_err *err);
void pbw_painter_free(pbw_painter *p);

int pbw_painter_image_size(const pbw_painter *p);
int pbw_painter_style_dim(const pbw_painter *p);
int pbw_painter_has_lpips(const pbw_painter *p);
int pbw_painter_has_tokenizer(const pbw_painter *p);
const pbw_stylegan2 *pbw_painter_gan(const pbw_painter *p);

typedef enum pbw_optim { PBW_OPTIM_CMA_ADAM = 0, PBW_OPTIM_CMA, PBW_OPTIM_ADAM } pbw_optim;
typedef enum pbw_mask_mode { PBW_MASK_LATENT = 0, PBW_MASK_OUTPUT } pbw_mask_mode;
typedef enum pbw_paint_var { PBW_VAR_DEFAULT = 0, PBW_VAR_W, PBW_VAR_Z } pbw_paint_var;

/* "cma+adam", "cma", "adam"; "latent", "output"; "w", "z". -1 for an unknown name. */
int pbw_optim_parse(const char *s, pbw_optim *out);
int pbw_mask_mode_parse(const char *s, pbw_mask_mode *out);
const char *pbw_optim_name(pbw_optim o);

typedef struct pbw_paint_request {
    /* the start image */
    const float *z;        /* (style_dim) start z, or NULL: seed-bank row `seed` */
    int64_t seed;          /* 0 */
    float truncation;      /* 1: off (latent_avg is estimated when the model has none) */
    /* the words: text (needs the painter's tokenizer) or ids (start and end tokens included) */
    const char *text;
    const int32_t *ids;
    int n_ids;
    /* where (edit only): image_size^2 values in [0,1], 1 = paint here (pbw_mask_load) */
    const float *mask;
    /* how */
    pbw_optim optim;         /* cma+adam */
    int cma_generations;     /* 20 */
    int population;          /* 50 */
    double sigma0;           /* 0.5 */
    int adam_steps;          /* 100 */
    double lr;               /* 0.01: one-cycle max lr */
    int crops;               /* 32; 0: the whole view */
    pbw_loss_mode loss_mode; /* paste_onto_blank */
    pbw_mask_mode mask_mode; /* latent */
    pbw_paint_var var;       /* default: w for edit, z for generation */
    float recon_weight;      /* 5 */
    float lpips_weight;      /* 10 */
    int allow_no_lpips;      /* 0: an edit without a loaded LPIPS is refused */
    int demod_mixed;         /* 0: the reference's demodulation with the original style */
    int unmasked_torgb;      /* 0: every modulation masked (DESIGN.md); 1: ToRGB unmasked, as
                                Bau's sequential StyleGAN2 in the reference (pbw_stylegan2.h) */
    uint32_t rng_seed;       /* 1: crops and CMA-ES */
    int cma_batch;           /* candidates per forward pass; 0: by image size */
    int clip_chunk;          /* crops per CLIP forward in CMA's forward-only passes (0: 32 on
                                the CPU; on a GPU a generator batch's crops, 256 to 512) */
    int no_progress_images;  /* 0: every progress report carries its image; 1: none does
                                (image NULL), so that a GPU does not read an image back at
                                every step (768 KiB at 256 px) for nobody to look at */
} pbw_paint_request;

void pbw_paint_request_default(pbw_paint_request *rq);

typedef enum pbw_paint_phase { PBW_PHASE_CMA = 0, PBW_PHASE_ADAM = 1 } pbw_paint_phase;

typedef struct pbw_paint_progress {
    int step, steps;            /* 1-based step over the whole run, and the run's total */
    pbw_paint_phase phase;
    int phase_step, phase_steps;
    pbw_loss_values loss;       /* CMA: the generation's best candidate; Adam: this step's
                                   latent (before its update) */
    double gen_mean;            /* CMA: mean total loss of the population */
    double best;                /* lowest total loss seen so far in the run */
    double sigma;               /* CMA: step size after this generation */
    double lr, beta1;           /* Adam: this step's */
    double step_seconds;        /* wall time of this step */
    double step_cpu_seconds;    /* CPU time of the process (all threads) during this step */
    double elapsed;             /* since the start of the request */
    const float *image;         /* (3,size,size) in [-1,1], this step's image (CMA: the
                                   generation's best); valid during the call; NULL when the
                                   request's no_progress_images is set */
    int size;
} pbw_paint_progress;

typedef void (*pbw_paint_progress_fn)(const pbw_paint_progress *pr, void *user);

typedef struct pbw_paint_result {
    int size;               /* image side */
    int latent_dim;
    pbw_paint_var var;      /* what latent holds: w or z */
    float *image;           /* (3,size,size) in [-1,1] */
    float *original;        /* (3,size,size) the start image */
    float *latent;          /* (latent_dim) */
    pbw_loss_values before; /* the original's loss (extra crop set) */
    pbw_loss_values after;  /* the result's loss (same crops) */
    int steps, steps_done;
    int cancelled;
    double seconds;
} pbw_paint_result;

void pbw_paint_result_free(pbw_paint_result *r);

/* Paints rq->mask of the start image toward rq's words. Fails (nothing allocated in res) on a
 * bad request: no mask, a mask that is empty (nothing > 0), no words, no LPIPS without
 * allow_no_lpips, an image too small for LPIPS (35 px). progress and cancel may be NULL. */
int pbw_painter_edit(pbw_painter *p, const pbw_paint_request *rq, pbw_paint_progress_fn progress,
                     void *user, const volatile sig_atomic_t *cancel, pbw_paint_result *res,
                     pbw_err *err);
/* Makes a whole image match rq's words: the same loop on z (or w) with no mask and no
 * reconstruction (rq->mask must be NULL). */
int pbw_painter_generate(pbw_painter *p, const pbw_paint_request *rq,
                         pbw_paint_progress_fn progress, void *user,
                         const volatile sig_atomic_t *cancel, pbw_paint_result *res,
                         pbw_err *err);

/* (3,H,W) floats in [-1,1] -> H*W*3 interleaved bytes: clamp, x * 127.5 + 127.5 rounded (as
 * pbw sample writes images); NaN becomes mid-gray. */
void pbw_paint_to_rgb8(const float *img, int H, int W, uint8_t *rgb);

#ifdef __cplusplus
}
#endif
#endif
