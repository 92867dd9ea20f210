/* pbw_painter.c: the painting loop (CMA-ES, then Adam) over StyleGAN2 latents with the objective
 * of pbw_loss.h; see pbw_painter.h for the method and the contracts.
 *
 * Three contexts: `cctx` per request holds the constants (w0, the original image, the text
 * embedding, masks, LPIPS features of the original); the painter's `ctx` holds one step's
 * activations and tape and is reset after every step or CMA batch; `scratch` runs CLIP on a
 * chunk of crops at a time in CMA's forward-only passes, so memory stays bounded however large
 * the population and crop count are. */
#include "paint/pbw_painter.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/pbw_rng.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_paint.h"
#endif
#include "paint/pbw_adam.h"
#include "paint/pbw_cma.h"

struct pbw_painter {
    pbw_stylegan2 *g;
    const pbw_clip *clip;
    pbw_tokenizer *tok;
    const pbw_lpips *lpips;
    /* owned by pbw_painter_new, NULL for a wrapped painter */
    pbw_stylegan2 *own_g;
    pbw_clip *own_clip;
    pbw_tokenizer *own_tok;
    pbw_lpips *own_lpips;
    pbw_ctx *ctx;
    pbw_ctx *scratch;
    pbw_device dev; /* where the models' weights and every context live */
};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ------------------------------------------------------------------------------------------ */
/* construction                                                                                */

static int make_contexts(pbw_painter *p, pbw_err *err) {
    p->ctx = pbw_ctx_new(p->dev, err);
    if (!p->ctx) return -1;
    p->scratch = pbw_ctx_new(p->dev, err);
    if (!p->scratch) return -1;
    pbw_ctx_set_grad(p->scratch, 0);
    return 0;
}

int pbw_painter_wrap(pbw_painter **out, pbw_stylegan2 *g, const pbw_clip *clip,
                     pbw_tokenizer *tok, const pbw_lpips *lpips, pbw_err *err) {
    *out = NULL;
    if (!g || !clip) return pbw_err_set(err, "painter: a generator and a CLIP model are required");
    pbw_painter *p = calloc(1, sizeof *p);
    if (!p) return pbw_err_set(err, "painter: out of memory");
    p->g = g;
    p->clip = clip;
    p->dev = g->input ? g->input->device : PBW_DEV_CPU; /* the models' device */
    p->tok = tok;
    p->lpips = lpips;
    if (make_contexts(p, err)) {
        pbw_painter_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

/* The tokenizer next to a CLIP checkpoint, if any: "" when there is none. */
static void find_vocab(const char *clip, char *buf, size_t len) {
    buf[0] = 0;
    if (!is_dir(clip)) return;
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/vocab.json", clip);
    snprintf(b, sizeof b, "%s/merges.txt", clip);
    if (is_file(a) && is_file(b)) {
        snprintf(buf, len, "%s", clip);
        return;
    }
    snprintf(a, sizeof a, "%s/bpe_simple_vocab_16e6.txt.gz", clip);
    if (is_file(a)) snprintf(buf, len, "%s", a);
}

/* LPIPS heads beside the backbone: alex.pth, v0.1/alex.pth; "" when none. */
static void find_heads(const char *backbone, char *buf, size_t len) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", backbone);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    const char *cands[] = {"alex.pth", "v0.1/alex.pth", "lpips/v0.1/alex.pth"};
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++) {
        int k = snprintf(buf, len, "%s/%s", dir, cands[i]);
        if (k > 0 && (size_t)k < len && is_file(buf)) return;
    }
    buf[0] = 0;
}

int pbw_painter_new(pbw_painter **out, const pbw_painter_config *cfg, pbw_err *err) {
    *out = NULL;
    if (!cfg || !cfg->gan || !cfg->clip)
        return pbw_err_set(err, "painter: a StyleGAN2 checkpoint and a CLIP model are required");
    pbw_painter *p = calloc(1, sizeof *p);
    if (!p) return pbw_err_set(err, "painter: out of memory");
    if (pbw_sg2_load(cfg->gan, &p->own_g, err)) {
        pbw_err_prefix(err, "generator %s: ", cfg->gan);
        goto fail;
    }
    if (pbw_clip_load(cfg->clip, &p->own_clip, err)) {
        pbw_err_prefix(err, "CLIP %s: ", cfg->clip);
        goto fail;
    }
    char vocab[4096];
    if (cfg->vocab) snprintf(vocab, sizeof vocab, "%s", cfg->vocab);
    else find_vocab(cfg->clip, vocab, sizeof vocab);
    if (vocab[0]) {
        p->own_tok = pbw_tokenizer_load(vocab, err);
        if (!p->own_tok) {
            pbw_err_prefix(err, "vocabulary: ");
            goto fail;
        }
    }
    if (cfg->lpips_backbone) {
        char heads[4096];
        if (cfg->lpips_heads) snprintf(heads, sizeof heads, "%s", cfg->lpips_heads);
        else find_heads(cfg->lpips_backbone, heads, sizeof heads);
        /* no heads file found: the backbone file may be a whole LPIPS state dict */
        if (pbw_lpips_load(cfg->lpips_backbone, heads[0] ? heads : NULL, &p->own_lpips, err)) {
            if (!heads[0])
                pbw_err_prefix(err, "LPIPS (no heads file alex.pth or v0.1/alex.pth beside %s; "
                               "name it explicitly): ", cfg->lpips_backbone);
            else
                pbw_err_prefix(err, "LPIPS: ");
            goto fail;
        }
    }
    p->g = p->own_g;
    p->clip = p->own_clip;
    p->tok = p->own_tok;
    p->lpips = p->own_lpips;
    p->dev = cfg->device;
    if (make_contexts(p, err)) goto fail;
    if (pbw_sg2_to_device(p->own_g, p->ctx, err) || pbw_clip_to_device(p->own_clip, p->ctx, err) ||
        (p->own_lpips && pbw_lpips_to_device(p->own_lpips, p->ctx, err))) {
        pbw_err_prefix(err, "moving the models to %s: ", pbw_device_name(p->dev));
        goto fail;
    }
    *out = p;
    return 0;
fail:
    pbw_painter_free(p);
    return -1;
}

void pbw_painter_free(pbw_painter *p) {
    if (!p) return;
    pbw_ctx_free(p->ctx);
    pbw_ctx_free(p->scratch);
    pbw_sg2_free(p->own_g);
    pbw_clip_free(p->own_clip);
    pbw_tokenizer_free(p->own_tok);
    pbw_lpips_free(p->own_lpips);
    free(p);
}

int pbw_painter_image_size(const pbw_painter *p) { return p->g->size; }
int pbw_painter_style_dim(const pbw_painter *p) { return p->g->style_dim; }
int pbw_painter_has_lpips(const pbw_painter *p) { return p->lpips != NULL; }
int pbw_painter_has_tokenizer(const pbw_painter *p) { return p->tok != NULL; }
const pbw_stylegan2 *pbw_painter_gan(const pbw_painter *p) { return p->g; }

/* ------------------------------------------------------------------------------------------ */
/* requests                                                                                    */

static const char *const optim_names[] = {"cma+adam", "cma", "adam"};

int pbw_optim_parse(const char *s, pbw_optim *out) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, optim_names[i])) {
            *out = (pbw_optim)i;
            return 0;
        }
    return -1;
}

const char *pbw_optim_name(pbw_optim o) { return (unsigned)o < 3 ? optim_names[o] : "?"; }

int pbw_mask_mode_parse(const char *s, pbw_mask_mode *out) {
    if (!strcmp(s, "latent")) *out = PBW_MASK_LATENT;
    else if (!strcmp(s, "output")) *out = PBW_MASK_OUTPUT;
    else return -1;
    return 0;
}

void pbw_paint_request_default(pbw_paint_request *rq) {
    memset(rq, 0, sizeof *rq);
    rq->truncation = 1.0f;
    rq->optim = PBW_OPTIM_CMA_ADAM;
    rq->cma_generations = 20;
    rq->population = 50;
    rq->sigma0 = 0.5;
    rq->adam_steps = 100;
    rq->lr = 0.01;
    rq->crops = 32;
    rq->loss_mode = PBW_LOSS_PASTE_BLANK;
    rq->mask_mode = PBW_MASK_LATENT;
    rq->var = PBW_VAR_DEFAULT;
    rq->recon_weight = 5.0f;
    rq->lpips_weight = 10.0f;
    rq->rng_seed = 1;
    rq->clip_chunk = 0;
}

void pbw_paint_result_free(pbw_paint_result *r) {
    if (!r) return;
    free(r->image);
    free(r->original);
    free(r->latent);
    memset(r, 0, sizeof *r);
}

void pbw_paint_to_rgb8(const float *img, int H, int W, uint8_t *rgb) {
    const int64_t P = (int64_t)H * W;
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < P; i++) {
            float v = img[c * P + i];
            if (v != v) v = 0;
            v = v < -1 ? -1 : (v > 1 ? 1 : v);
            rgb[i * 3 + c] = (uint8_t)lrintf(v * 127.5f + 127.5f);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* one run                                                                                     */

typedef struct run {
    pbw_painter *p;
    const pbw_paint_request *rq;
    int edit;
    pbw_paint_var var;
    int D, S;
    int64_t per;                /* 3*S*S */
    pbw_ctx *cctx;              /* constants of this request */
    pbw_tensor *w0;             /* (1,D) */
    pbw_tensor *lat0[PBW_SG2_MAX_LATENT];
    pbw_sg2_fixed fixed; /* the latent mask's constants of lat0 (made with mk) */
    pbw_sg2_mask mk;
    int have_mk;
    pbw_tensor *orig;           /* (1,3,S,S) */
    pbw_tensor *orig_keep;      /* output masking: orig * (1 - mask) */
    pbw_objective obj;
    pbw_rng rng;
    float *start;               /* (D) */
    float *best_lat;            /* (D) lowest total evaluated so far */
    double best;
    int have_best;
    float *frame;               /* (per) the image handed to progress */
    pbw_paint_progress_fn progress;
    void *user;
    const volatile sig_atomic_t *cancel;
    double t0;
    double t_mark; /* the last timeline mark */
    int timeline;  /* PBW_TIMELINE, read as the request begins: 0 off, 1 on, 2 sync */
    int prof_phase, prof_n; /* PBW_CUDA_PROFILE_RANGE: 1 cma or 2 adam, and which (0: none) */
    int step, steps;
    int adam_next;    /* an Adam phase follows the CMA-ES phase */
    void *adam_plan;  /* CUDA: the Adam phase's queued pass, recorded during the last generation */
} run;

static int cancelled(const run *r) { return r->cancel && *r->cancel; }

/* PBW_TIMELINE=1: one line on stderr per stage of a request (the set-up's parts, each CMA-ES
 * generation's ask, queue, settle, read-back and tell, each Adam step's pass, read-back and
 * update, the result), with the time since the request began and since the mark before: where
 * a request waits on the host. PBW_TIMELINE=sync first waits for the GPU at each mark, so
 * that a stage's GPU work lands in it (the marks then serialize host and device). */
static int timeline_mode(void) {
    const char *e = getenv("PBW_TIMELINE");
    if (!e || !*e || !strcmp(e, "0")) return 0;
    return strcmp(e, "sync") ? 1 : 2;
}

/* PBW_CUDA_PROFILE_RANGE=cma:N or adam:N (N >= 2 for adam): the CUDA profiler collects over
 * that CMA-ES generation's or Adam step's GPU work alone (cudaProfilerStart after the
 * generation's ask or the step before's update, cudaProfilerStop once its values are read
 * back), for a profiler started with collection off (bench/ncu_sweep.sh). */
static void profile_range_mode(run *r) {
    const char *e = getenv("PBW_CUDA_PROFILE_RANGE");
    int n = 0;
    r->prof_phase = r->prof_n = 0;
    if (!e || r->p->dev != PBW_DEV_CUDA) return;
    if (sscanf(e, "cma:%d", &n) == 1 && n >= 1) r->prof_phase = 1;
    else if (sscanf(e, "adam:%d", &n) == 1 && n >= 2) r->prof_phase = 2;
    else fprintf(stderr, "pbw: PBW_CUDA_PROFILE_RANGE=%s is not cma:N or adam:N (N >= 2); "
                 "ignored\n", e);
    r->prof_n = r->prof_phase ? n : 0;
}

/* Starts or stops the profiler at the marks profile_range_mode names. */
static void profile_range(run *r, const char *what, int n) {
#ifdef PBW_HAVE_CUDA
    const int cma = r->prof_phase == 1, adam = r->prof_phase == 2;
    if ((cma && n == r->prof_n && !strcmp(what, "cma: asked")) ||
        (adam && n == r->prof_n - 1 && !strcmp(what, "adam: updated")))
        pbw_cuda_profiler(1);
    else if ((cma && n == r->prof_n && !strcmp(what, "cma: evaluated, values read back")) ||
             (adam && n == r->prof_n && !strcmp(what, "adam: read back")))
        pbw_cuda_profiler(0);
#else
    (void)r, (void)what, (void)n;
#endif
}

static void mark(run *r, const char *what, int n) {
    if (r->prof_phase) profile_range(r, what, n);
    if (!r->timeline) return;
#ifdef PBW_HAVE_CUDA
    if (r->timeline == 2 && r->p->dev == PBW_DEV_CUDA && !pbw_cuda_capturing())
        pbw_cuda_sync(NULL);
#endif
    const double t = now_s();
    fprintf(stderr, "timeline: %10.3f ms  +%8.3f  %s", 1e3 * (t - r->t0), 1e3 * (t - r->t_mark),
            what);
    if (n > 0) fprintf(stderr, " %d", n);
    fputc('\n', stderr);
    r->t_mark = t;
}

/* The W latents (B,style) of latents (B,D) as the request takes them. */
static pbw_tensor *latent_w(pbw_ctx *ctx, const run *r, pbw_tensor *lat) {
    if (r->var != PBW_VAR_Z) return lat;
    const pbw_stylegan2 *g = r->p->g;
    return pbw_sg2_truncate(ctx, g, pbw_sg2_mapping(ctx, g, lat), r->rq->truncation);
}

/* The generator's options for this request (fixed noise; the latent mask of an edit). */
static pbw_sg2_opts synth_opts(const run *r) {
    pbw_sg2_opts o = {.noise = PBW_SG2_NOISE_FIXED};
    if (r->edit && r->rq->mask_mode == PBW_MASK_LATENT) {
        o.mask = &r->mk;
        o.lat0 = r->lat0;
        o.demod_mixed = r->rq->demod_mixed;
        o.unmasked_torgb = r->rq->unmasked_torgb;
        o.fixed = r->have_mk ? &r->fixed : NULL; /* entries NULL until made: computed */
    }
    return o;
}

/* The generator's image as the request paints it (output masking: the original outside). */
static pbw_tensor *paint_out(pbw_ctx *ctx, const run *r, pbw_tensor *img) {
    if (img && r->edit && r->rq->mask_mode == PBW_MASK_OUTPUT)
        img = pbw_add(ctx, pbw_mul(ctx, img, r->obj.mask), r->orig_keep);
    return img;
}

/* latent (B,D) -> image (B,3,S,S) as the request paints it. */
static pbw_tensor *render(pbw_ctx *ctx, run *r, pbw_tensor *lat) {
    const pbw_stylegan2 *g = r->p->g;
    pbw_tensor *w = latent_w(ctx, r, lat);
    if (!w) return NULL;
    pbw_tensor *la[PBW_SG2_MAX_LATENT];
    for (int i = 0; i < g->n_latent; i++) la[i] = w;
    pbw_sg2_opts o = synth_opts(r);
    return paint_out(ctx, r, pbw_sg2_synthesis(ctx, g, la, &o));
}

/* A CMA-ES generation's candidates, rendered in batches of bsz. The generator's first blocks
 * run once for the whole population (pop_begin): those whose output for lam images is no
 * larger than the last block's for a batch (at 256 px: the blocks up to 64x64 for 50
 * candidates in batches of 14 on a GPU, up to 32x32 in batches of 12), where a batch's
 * products are too small to keep a GPU busy. The rest runs per batch (pop_rows), each batch's
 * temporaries freed back to the population's first blocks. PBW_CMA_HEAD=0 renders every batch
 * whole (a measurement switch). */
typedef struct pop_render {
    int blocks;           /* upsampling blocks run for the whole population; 0: none */
    pbw_tensor *w;        /* (lam,style) the population's W latents */
    pbw_sg2_partial head; /* their first blocks */
    pbw_ctx_mark mark;    /* where each batch frees back to */
} pop_render;

static int head_blocks(const pbw_stylegan2 *g, int lam, int bsz) {
    if (lam <= bsz || pbw_env_zero("PBW_CMA_HEAD")) return 0;
    return pbw_sg2_shared_blocks(g, lam, bsz);
}

/* Runs the first blocks of a generation of lam candidates (rows of X) in ctx, reset first;
 * without shared blocks nothing (each batch resets ctx). 0, or -1 with ctx failed. */
static int pop_begin(pbw_ctx *ctx, const run *r, const float *X, int lam, int bsz,
                     pop_render *pr) {
    const pbw_stylegan2 *g = r->p->g;
    memset(pr, 0, sizeof *pr);
    pr->blocks = head_blocks(g, lam, bsz);
    if (!pr->blocks) return 0;
    pbw_ctx_reset(ctx);
    pr->w = latent_w(ctx, r, pbw_tensor_from_host(ctx, X, 2, (int64_t[]){lam, r->D}));
    if (!pr->w) return -1;
    pbw_tensor *la[PBW_SG2_MAX_LATENT];
    for (int i = 0; i < g->n_latent; i++) la[i] = pr->w;
    pbw_sg2_opts o = synth_opts(r);
    if (pbw_sg2_synthesis_begin(ctx, g, la, &o, pr->blocks, &pr->head)) return -1;
    pr->mark = pbw_ctx_mark_get(ctx);
    return 0;
}

/* The images (b,3,S,S) of candidates [i, i+b), after the previous batch's memory is freed. */
static pbw_tensor *pop_rows(pbw_ctx *ctx, run *r, pop_render *pr, const float *X, int i,
                            int b) {
    const pbw_stylegan2 *g = r->p->g;
    if (!pr->blocks) {
        pbw_ctx_reset(ctx);
        return render(ctx, r, pbw_tensor_from_host(ctx, X + (int64_t)i * r->D, 2,
                                                   (int64_t[]){b, r->D}));
    }
    if (pbw_ctx_release(ctx, pr->mark, 0, NULL)) return NULL;
    pbw_tensor *w = pbw_slice(ctx, pr->w, 0, i, i + b, 1);
    pbw_sg2_partial q;
    if (!w || pbw_sg2_partial_rows(ctx, &pr->head, i, b, &q)) return NULL;
    pbw_tensor *la[PBW_SG2_MAX_LATENT];
    for (int k = 0; k < g->n_latent; k++) la[k] = w;
    pbw_sg2_opts o = synth_opts(r);
    return paint_out(ctx, r, pbw_sg2_synthesis_finish(ctx, g, la, &o, &q));
}

static void note_best(run *r, const float *lat, double total) {
    if (!r->have_best || total < r->best) {
        r->best = total;
        r->have_best = 1;
        memcpy(r->best_lat, lat, (size_t)r->D * sizeof(float));
    }
}

static int ctx_err(pbw_ctx *ctx, pbw_err *err, const char *what) {
    if (pbw_ctx_check(ctx, err)) return pbw_err_prefix(err, "%s: ", what);
    return pbw_err_set(err, "%s failed", what);
}

/* Constants: start latent, w0, original image, text target, masks, objective. */
/* The generator's mask at every layer's size (pbw_sg2_mask_init: ~2.6 ms of the host at 256 px,
 * area resizes and Gaussian blurs in double) made on a thread of its own while the set-up's
 * first stages (the text's embedding, the mapping, the original's render, the objective's mask)
 * wait for the GPU or compute apart; mask_wait joins it where the mask is needed. */
typedef struct mask_job {
    pbw_sg2_mask *mk;
    const pbw_stylegan2 *g;
    const float *mask;
    int S, rc, started;
    pthread_t th;
    pbw_err err;
} mask_job;

static void *mask_job_run(void *arg) {
    mask_job *j = arg;
    j->rc = pbw_sg2_mask_init(j->mk, j->g, j->mask, j->S, j->S, &j->err);
    return NULL;
}

/* The mask made (on the job's thread, or here where none could start): 0, or -1 with err set. */
static int mask_wait(mask_job *j, pbw_err *err) {
    if (j->started) {
        pthread_join(j->th, NULL);
        j->started = 0;
    } else if (j->rc > 0) { /* not started: made here */
        j->rc = pbw_sg2_mask_init(j->mk, j->g, j->mask, j->S, j->S, &j->err);
    }
    if (j->rc) {
        if (err) *err = j->err;
        return -1;
    }
    return 0;
}

static int setup_stages(run *r, const float *mask, mask_job *mj, pbw_err *err);

static int setup(run *r, const float *mask, pbw_err *err) {
    mask_job mj = {.mk = &r->mk, .g = r->p->g, .mask = mask, .S = r->S, .rc = 1};
    const int latent_mask = r->edit && r->rq->mask_mode == PBW_MASK_LATENT;
    if (latent_mask) mj.started = pthread_create(&mj.th, NULL, mask_job_run, &mj) == 0;
    int rc = setup_stages(r, mask, latent_mask ? &mj : NULL, err);
    if (latent_mask && !r->have_mk) { /* the stages stopped before taking the mask */
        if (mask_wait(&mj, NULL) == 0) pbw_sg2_mask_free(&r->mk);
    }
    return rc;
}

static int setup_stages(run *r, const float *mask, mask_job *mj, pbw_err *err) {
    pbw_painter *p = r->p;
    const pbw_paint_request *rq = r->rq;
    pbw_stylegan2 *g = p->g;
    const int D = r->D, S = r->S;
    pbw_ctx *c = r->cctx;
    pbw_ctx_set_grad(c, 0);

    /* words */
    const int C = p->clip->cfg.context_length;
    int32_t *ids = calloc((size_t)C, sizeof *ids);
    if (!ids) return pbw_err_set(err, "out of memory");
    int64_t T = 0;
    if (rq->ids) {
        if (rq->n_ids < 2 || rq->n_ids > C) {
            free(ids);
            return pbw_err_set(err, "%d token ids given; the model takes 2 to %d (start and end "
                               "tokens included)", rq->n_ids, C);
        }
        memcpy(ids, rq->ids, (size_t)rq->n_ids * sizeof *ids);
        T = rq->n_ids;
    } else {
        if (!rq->text) {
            free(ids);
            return pbw_err_set(err, "no words: give a text or token ids");
        }
        if (!p->tok) {
            free(ids);
            return pbw_err_set(err, "no tokenizer: the CLIP directory has no vocab.json/merges.txt "
                               "or bpe_simple_vocab_16e6.txt.gz; name a vocabulary");
        }
        size_t n;
        if (pbw_tokenize(p->tok, rq->text, strlen(rq->text), ids, (size_t)C, C, &n, err)) {
            free(ids);
            return pbw_err_prefix(err, "text: ");
        }
        T = (int64_t)n;
    }
    for (int64_t i = 0; i < T; i++)
        if (ids[i] < 0 || ids[i] >= p->clip->cfg.vocab_size) {
            int bad = ids[i];
            free(ids);
            return pbw_err_set(err, "token id %d is outside the CLIP model's vocabulary of %d",
                               bad, p->clip->cfg.vocab_size);
        }
    pbw_tensor *target = pbw_clip_encode_text(c, p->clip, ids, 1, T);
    free(ids);
    if (!target) return ctx_err(c, err, "text embedding");
    mark(r, "set-up: text embedded", 0);

    /* start */
    float *z0 = malloc((size_t)D * sizeof *z0);
    if (!z0) return pbw_err_set(err, "out of memory");
    if (rq->z) {
        memcpy(z0, rq->z, (size_t)D * sizeof *z0);
    } else if (rq->seed < 0 || pbw_seedbank_z(rq->seed, 1, D, z0)) {
        free(z0);
        return pbw_err_set(err, "no seed-bank row %lld for a style size of %d", (long long)rq->seed,
                           D);
    }
    if (rq->truncation < 1.0f && !g->latent_avg &&
        pbw_sg2_mean_latent(p->ctx, g, 4096, 0, err)) {
        free(z0);
        return pbw_err_prefix(err, "estimating latent_avg for truncation: ");
    }
    pbw_tensor *zt = pbw_tensor_from_host(c, z0, 2, (int64_t[]){1, D});
    r->w0 = pbw_sg2_truncate(c, g, pbw_sg2_mapping(c, g, zt), rq->truncation);
    const float *w0h = r->w0 ? pbw_tensor_host(c, r->w0) : NULL;
    if (!w0h) {
        free(z0);
        return ctx_err(c, err, "mapping");
    }
    mark(r, "set-up: mapped and read back", 0);
    memcpy(r->start, r->var == PBW_VAR_Z ? z0 : w0h, (size_t)D * sizeof(float));
    free(z0);
    for (int i = 0; i < g->n_latent; i++) r->lat0[i] = r->w0;
    r->orig = pbw_sg2_from_w(c, g, r->w0, NULL);
    if (!r->orig) return ctx_err(c, err, "generator");
    mark(r, "set-up: original rendered", 0);

    /* objective */
    pbw_objective *o = &r->obj;
    const pbw_lpips *lp = rq->lpips_weight != 0 ? p->lpips : NULL;
    pbw_objective_init(o, p->clip, lp, target, S, S);
    o->mode = rq->loss_mode;
    o->n_crops = rq->crops;
    /* crops per CLIP pass when only values are needed: 256 on a GPU (ViT-B/32 without
     * gradients frees each block's temporaries: about 5 MB a crop; CMA-ES raises it to a whole
     * generator batch's crops), 32 on the CPU */
    o->clip_chunk = rq->clip_chunk > 0 ? rq->clip_chunk : (p->dev == PBW_DEV_CUDA ? 256 : 32);
    o->recon_weight = rq->recon_weight;
    o->lpips_weight = rq->lpips_weight;
    if (r->edit) {
        if (pbw_objective_set_mask(o, c, mask, r->orig, err)) return -1;
        mark(r, "set-up: objective's mask (LPIPS of the original, keep weights)", 0);
        if (rq->mask_mode == PBW_MASK_LATENT) {
            if (mask_wait(mj, err)) return -1;
            r->have_mk = 1;
            mark(r, "set-up: generator's mask at every layer's size", 0);
            if (pbw_sg2_mask_to_device(&r->mk, c, err)) return -1;
            /* lat0's styles and demodulation, once for every pass of the edit */
            pbw_sg2_opts so = synth_opts(r);
            if (pbw_sg2_fixed_make(c, g, &so, &r->fixed)) return ctx_err(c, err, "generator");
            mark(r, "set-up: constant styles", 0);
        } else {
            r->orig_keep = pbw_mul(c, r->orig, o->keep);
            if (!r->orig_keep) return ctx_err(c, err, "output mask");
        }
    }
    return 0;
}

static void report(run *r, pbw_paint_phase phase, int phase_step, int phase_steps,
                   const pbw_loss_values *v, double gen_mean, double sigma, double lr,
                   double beta1, double t_step, double cpu_step) {
    if (!r->progress) return;
    pbw_paint_progress pr = {0};
    pr.step = r->step;
    pr.steps = r->steps;
    pr.phase = phase;
    pr.phase_step = phase_step;
    pr.phase_steps = phase_steps;
    pr.loss = *v;
    pr.gen_mean = gen_mean;
    pr.best = r->best;
    pr.sigma = sigma;
    pr.lr = lr;
    pr.beta1 = beta1;
    pr.step_seconds = t_step;
    pr.step_cpu_seconds = cpu_step;
    pr.elapsed = now_s() - r->t0;
    pr.image = r->rq->no_progress_images ? NULL : r->frame;
    pr.size = r->S;
    r->progress(&pr, r->user);
}

/* Room for one pbw_objective_draw_crops: every crop set's crops (at least one each). */
static int crops_per_draw(const pbw_objective *o) {
    return pbw_objective_crop_sets(o) * (o->n_crops > 0 ? o->n_crops : 1);
}

#ifdef PBW_HAVE_CUDA
/* Queues one CMA-ES generation on the GPU: every batch of the lam candidates in X (rows of D)
 * rendered and scored with the given crops, its values into dvals (clip, l1, lpips: three rows
 * of lam) and its images into dframes, with nothing read back. 0, or -1 with err set. */
static int queue_generation(run *r, pbw_ctx *ctx, const float *X, int lam, int bsz,
                            const pbw_crop *crops, float *dvals, float *dframes, pbw_err *err) {
    pop_render pr;
    if (pop_begin(ctx, r, X, lam, bsz, &pr)) return ctx_err(ctx, err, "generator");
    for (int i = 0; i < lam; i += bsz) {
        if (i > 0 && !pbw_cuda_capturing() && cancelled(r)) return 0; /* the caller sees it */
        int b = lam - i < bsz ? lam - i : bsz;
        pbw_tensor *img = pop_rows(ctx, r, &pr, X, i, b);
        if (!img || pbw_ctx_failed(ctx)) return ctx_err(ctx, err, "generator");
        int q = pbw_objective_values_queue(ctx, r->p->scratch, &r->obj, img, crops, dvals + i,
                                           dvals + lam + i, dvals + 2 * lam + i, err);
        if (q) return q < 0 ? -1 : pbw_err_set(err, "objective: cannot be queued");
        if (pbw_cuda_d2d(dframes + (int64_t)i * r->per, img->data,
                         (size_t)b * r->per * sizeof(float)))
            return pbw_err_set(err, "cuda: %s", pbw_cuda_error());
    }
    return 0;
}

/* After a failed recording of step `step` of `pass`, the recordings left to try: one fewer
 * when it was refused because memory had to grow (the pass, run directly, leaves it grown; a
 * repeat may then record), else none. why: the refusal, or NULL when recording could not
 * begin. PBW_VERBOSE says so on stderr. */
static int recording_failed(const char *pass, int step, const char *why, int tries) {
    tries = why && pbw_cuda_capture_grew() ? tries - 1 : 0;
    if (pbw_env_set("PBW_VERBOSE"))
        fprintf(stderr, "pbw: %s %d runs without a CUDA graph (%s)%s\n", pass, step,
                why ? why : "recording could not begin",
                tries ? "; recording again on the next" : "");
    return tries;
}

/* Queues a pass into ctx's memory (recorded when a capture is open). */
typedef int (*pass_fn)(void *arg, pbw_err *err);

/* A fixed-shape pass replayed from a CUDA graph (the CMA-ES generation, the Adam step): the
 * pass (named for messages, queued by fn(arg), the host ranges in[] read again at each launch),
 * its recording (NULL until made), the recordings left to try, whether it has been launched,
 * and the passes to run directly before the next try (after a recording refused during the
 * first pass: the pass after it runs directly, growing what the refusal wanted, as a pass whose
 * own recording was refused does). */
typedef struct pass_graph {
    const char *name;
    pass_fn fn;
    void *arg;
    const void *in[2];
    size_t in_bytes[2];
    pbw_cuda_graph *g;
    int tries, launched, rest;
} pass_graph;

/* Records pg's pass, for step `step`, in pg->g without running it. 0 when recorded; -1 when not
 * (pg->tries updated, nothing queued). */
static int record_pass(pass_graph *pg, int step) {
    if (pbw_cuda_capture_begin()) {
        pg->tries = recording_failed(pg->name, step, NULL, pg->tries);
        return -1;
    }
    for (int i = 0; i < 2; i++) /* before anything is uploaded */
        pbw_cuda_graph_input(pg->in[i], pg->in_bytes[i]);
    pbw_err cerr = {0};
    int prc = pg->fn(pg->arg, &cerr);
    char why[160];
    pg->g = pbw_cuda_capture_end(why, sizeof why);
    pg->launched = 0;
    if (pg->g && !prc) return 0;
    pg->tries = recording_failed(pg->name, step, why[0] ? why : cerr.msg, pg->tries);
    pbw_cuda_graph_free(pg->g);
    pg->g = NULL;
    pbw_cuda_clear_error();
    return -1;
}

/* The pass after `step` recorded while the GPU runs `step`, just queued, into the memory that
 * one uses (after a reset that keeps it: recording runs nothing, the results read back after
 * are that pass's, and the graph's launches come after it in stream order). Not where `step`
 * grew that memory: the reset would free it, results and all (the next pass records itself,
 * record_due). A refusal lets the next pass run directly first. `what`: the timeline mark,
 * numbered by the pass it ran in. */
static void record_next(run *r, pbw_ctx *ctx, pass_graph *pg, const char *what, int step) {
    if (!pbw_ctx_reset_keeps_device_memory(ctx)) return;
    pbw_ctx_reset(ctx);
    if (record_pass(pg, step + 1) == 0)
        mark(r, what, step);
    else
        pg->rest = 1;
}

/* Before pass `step` (from the second on), where no graph was recorded yet and recordings are
 * left: records it, or lets it run directly once after a refusal during the first. what: the
 * timeline mark, or NULL for none. */
static void record_due(run *r, pbw_ctx *ctx, pass_graph *pg, const char *what, int step) {
    if (pg->g || !pg->tries || step < 2) return;
    if (pg->rest) {
        pg->rest--;
        return;
    }
    pbw_ctx_reset(ctx);
    if (record_pass(pg, step) == 0 && what) mark(r, what, step);
}

/* Launches pg's recording for step `step`: 0; 1 when its first launch failed (the recording
 * given up: the caller runs the pass directly); -1 when a later one failed (err set). */
static int launch_pass(pass_graph *pg, int step, pbw_err *err) {
    if (pbw_cuda_graph_launch(pg->g) == 0) {
        pg->launched = 1;
        return 0;
    }
    if (pg->launched) return pbw_err_set(err, "%s: %s", pg->name, pbw_cuda_error());
    pg->tries = recording_failed(pg->name, step, "launch failed", pg->tries);
    pbw_cuda_graph_free(pg->g);
    pg->g = NULL;
    pbw_cuda_clear_error();
    return 1;
}

/* One CMA-ES generation's pass for its pass_graph. */
typedef struct gen_pass {
    run *r;
    pbw_ctx *ctx;
    const float *X;
    int lam, bsz;
    const pbw_crop *crops;
    float *dvals, *dframes;
} gen_pass;

static int gen_pass_fn(void *arg, pbw_err *err) {
    gen_pass *a = arg;
    return queue_generation(a->r, a->ctx, a->X, a->lam, a->bsz, a->crops, a->dvals, a->dframes,
                            err);
}

/* The queued generation, replayed from a CUDA graph from the second on: the first runs
 * directly (a warm-up: algorithm searches, memory growth, weight caches), and the second's
 * graph is recorded while the GPU runs it (phase_cma), with X and the crops as inputs read
 * again at each launch. Where that recording fails it is tried here (once more on a later
 * generation when memory had to grow: the refused pass, run directly, leaves it grown); where
 * recording fails, or PBW_CUDA_GRAPHS=0, every generation is queued directly. */
static int run_generation(run *r, int gen, pass_graph *pg, pbw_err *err) {
    gen_pass *gp = pg->arg;
    record_due(r, gp->ctx, pg, NULL, gen + 1);
    if (pg->g) {
        int lrc = launch_pass(pg, gen + 1, err);
        if (lrc <= 0) return lrc;
    }
    return pg->fn(pg->arg, err);
}
#endif

#ifdef PBW_HAVE_CUDA
/* The Adam phase's queued pass recorded ahead (below, after the Adam phase's helpers). */
typedef struct adam_plan adam_plan;
static adam_plan *adam_plan_record(run *r, pbw_ctx *ctx);
#endif

/* CMA-ES phase: `var` (D) in: the start; out: the kept point. Returns 0, -1 on error. */
static int phase_cma(run *r, float *var, pbw_err *err) {
    const pbw_paint_request *rq = r->rq;
    const int D = r->D;
    pbw_ctx *ctx = r->p->ctx;
    pbw_cma_opts co;
    pbw_cma_opts_default(&co);
    co.lambda = rq->population;
    co.sigma0 = rq->sigma0;
    co.seed = rq->rng_seed;
    /* the last generation's tell then leaves out the eigensolve no ask would use (~6 ms on a
     * GPU where the generation decomposes, as the default's 20th does) */
    co.maxiter = rq->cma_generations;
#ifdef PBW_HAVE_CUDA
    /* the eigensolve every other generation: cuSOLVER on the GPU (8x faster than one core for
     * n = 512; the GPU is idle then), LAPACK where that is unavailable */
    if (r->p->dev == PBW_DEV_CUDA) co.eigh = pbw_cuda_eigh;
#endif
    pbw_cma *cma = NULL;
    if (pbw_cma_new(&cma, D, var, &co, err)) return pbw_err_prefix(err, "CMA-ES: ");
    const int lam = pbw_cma_lambda(cma);
    /* candidates per generator pass: a few on the CPU, more on a GPU, where each batch's crops
     * then go through CLIP in one pass (unless clip_chunk says otherwise). H100, 256 px, CMA
     * generation (bench_edit, 8 generations, two runs each) and the default edit's peak
     * memory, batch (passes of 50): 10 (5) 57.0 ms 6.54 GiB; 12 (5) 56.8-56.9 ms 7.29 GiB;
     * 13 (4) 56.2-57.0 ms 6.93 GiB; 14 (4) 55.2-56.0 ms 7.25 GiB; 15 (4) 55.8-56.5 ms
     * 7.57 GiB; 16 (4) 55.4-55.6 ms 8.02 GiB; 17 (3) 55.2-55.5 ms 8.24 GiB. 14 is as fast as
     * the larger batches at the memory of 12, well below the reference implementation's
     * 8.7-9.0 GiB (from 14 on, pop_begin also renders the 64x64 block for all 50). */
    const int64_t budget = r->p->dev == PBW_DEV_CUDA ? (int64_t)14 << 16 : (int64_t)2 << 16;
    int bsz = rq->cma_batch > 0 ? rq->cma_batch : (int)(budget / ((int64_t)r->S * r->S));
    if (bsz < 1) bsz = 1;
    if (bsz > lam) bsz = lam;
    const int ncrops = crops_per_draw(&r->obj);
    /* at most 512 crops a CLIP pass (~2.5 GB of ViT-B/32's temporaries), however large a
     * --cma-batch asks for */
    if (rq->clip_chunk <= 0 && r->p->dev == PBW_DEV_CUDA && bsz * ncrops > r->obj.clip_chunk)
        r->obj.clip_chunk = bsz * ncrops < 512 ? bsz * ncrops : 512;
    float *X = malloc((size_t)lam * D * sizeof *X);
    double *f = malloc((size_t)lam * sizeof *f);
    pbw_loss_values *vals = malloc((size_t)lam * sizeof *vals);
    pbw_crop *crops = malloc((size_t)ncrops * sizeof *crops);
    int rc = 0;
    if (!X || !f || !vals || !crops) {
        rc = pbw_err_set(err, "out of memory");
        goto out;
    }
    int prev = pbw_ctx_set_grad(ctx, 0);
    /* On a GPU the batches of a generation are queued back to back: each batch's values and
     * images go to device memory of this request, read once after the last batch
     * (PBW_CUDA_PIPELINE=0: each batch read back before the next, as on the CPU). */
    float *dvals = NULL, *hvals = NULL;
#ifdef PBW_HAVE_CUDA
    float *dframes = NULL;
    if (pbw_objective_can_queue(&r->obj, r->p->dev) && !pbw_env_zero("PBW_CUDA_PIPELINE")) {
        dvals = pbw_cuda_malloc((size_t)3 * lam * sizeof(float));
        dframes = pbw_cuda_malloc((size_t)lam * r->per * sizeof(float));
        hvals = malloc((size_t)3 * lam * sizeof(float));
        if (!dvals || !dframes || !hvals) { /* no room: batch by batch */
            pbw_cuda_free(dvals);
            pbw_cuda_free(dframes);
            free(hvals);
            dvals = dframes = hvals = NULL;
        }
    }
    gen_pass gp = {r, ctx, X, lam, bsz, crops, dvals, dframes};
    pass_graph pg = {.name = "CMA-ES generation",
                     .fn = gen_pass_fn,
                     .arg = &gp,
                     .in = {X, crops},
                     .in_bytes = {(size_t)lam * D * sizeof *X, (size_t)ncrops * sizeof *crops},
                     .tries = pbw_env_zero("PBW_CUDA_GRAPHS") ? 0 : 2}; /* recordings to try */
#endif
    for (int gen = 0; gen < rq->cma_generations && !cancelled(r); gen++) {
        double t = now_s(), c0 = cpu_s();
        pbw_cma_ask(cma, X);
        pbw_objective_draw_crops(&r->obj, &r->rng, crops);
        mark(r, "cma: asked", gen + 1);
        int gbest = -1;
#ifdef PBW_HAVE_CUDA
        /* queued: values and images stay on the GPU until the generation ends */
        if (dvals && !cancelled(r)) {
            rc = run_generation(r, gen, &pg, err);
            mark(r, "cma: queued on the GPU", gen + 1);
            /* the second generation's graph recorded while the GPU runs the first */
            if (!rc && gen == 0 && pg.tries && rq->cma_generations > 1 && !cancelled(r))
                record_next(r, ctx, &pg, "cma: next recorded", gen + 1);
            /* the Adam phase's queued pass recorded while the GPU runs the last generation
             * from its graph (which is not launched again) */
            if (!rc && pg.g && gen == rq->cma_generations - 1 && r->adam_next && !cancelled(r) &&
                (r->adam_plan = adam_plan_record(r, ctx)) != NULL)
                mark(r, "cma: Adam's pass recorded", gen + 1);
        }
#endif
        /* the strategy's own work for the next generation, while the GPU runs this one */
        pbw_cma_settle(cma);
        mark(r, "cma: settled", gen + 1);
        pop_render pr;
        if (!dvals && !rc && pop_begin(ctx, r, X, lam, bsz, &pr))
            rc = ctx_err(ctx, err, "generator");
        for (int i = 0; i < lam && !rc && !dvals; i += bsz) {
            if (cancelled(r)) break;
            int b = lam - i < bsz ? lam - i : bsz;
            pbw_tensor *img = pop_rows(ctx, r, &pr, X, i, b);
            if (!img || pbw_ctx_failed(ctx)) {
                rc = ctx_err(ctx, err, "generator");
                break;
            }
            if (pbw_objective_values(ctx, r->p->scratch, &r->obj, img, crops, vals + i, err)) {
                rc = -1;
                break;
            }
            int kbest = -1;
            for (int k = 0; k < b; k++)
                if (gbest < 0 || vals[i + k].total < vals[gbest].total) {
                    gbest = i + k;
                    kbest = k;
                }
            /* this batch holds the generation's best so far: keep its frame for the report
             * (only that image comes back from a GPU) */
            if (kbest >= 0 && !rq->no_progress_images) {
                pbw_tensor *best = pbw_slice(ctx, img, 0, kbest, kbest + 1, 1);
                if (!best || pbw_tensor_read(ctx, best, r->frame)) {
                    rc = ctx_err(ctx, err, "reading the image back");
                    break;
                }
            }
        }
#ifdef PBW_HAVE_CUDA
        if (dvals && !rc && !cancelled(r)) { /* the generation's one read-back */
            if (pbw_cuda_d2h(hvals, dvals, (size_t)3 * lam * sizeof(float)))
                rc = pbw_err_set(err, "reading the values back: %s", pbw_cuda_error());
            for (int k = 0; k < lam && !rc; k++) {
                pbw_objective_combine(&r->obj, hvals[k], hvals[lam + k], hvals[2 * lam + k],
                                      &vals[k]);
                if (gbest < 0 || vals[k].total < vals[gbest].total) gbest = k;
            }
            if (!rc && !rq->no_progress_images &&
                pbw_cuda_d2h(r->frame, dframes + (int64_t)gbest * r->per,
                             (size_t)r->per * sizeof(float)))
                rc = pbw_err_set(err, "reading the image back: %s", pbw_cuda_error());
        }
        /* a graph replays into ctx's memory: a reset merging chunks would free it */
        const int replays = pg.g != NULL;
#else
        const int replays = 0;
#endif
        if (!replays) pbw_ctx_reset(ctx);
        if (rc || cancelled(r)) break; /* a partly evaluated generation is not told */
        double mean = 0;
        for (int k = 0; k < lam; k++) {
            f[k] = vals[k].total;
            mean += f[k] / lam;
            note_best(r, X + (int64_t)k * D, f[k]);
        }
        mark(r, "cma: evaluated, values read back", gen + 1);
        if (pbw_cma_tell(cma, X, f, err)) {
            rc = pbw_err_prefix(err, "CMA-ES: ");
            break;
        }
        mark(r, "cma: told", gen + 1);
        r->step++;
        report(r, PBW_PHASE_CMA, gen + 1, rq->cma_generations, &vals[gbest], mean,
               pbw_cma_sigma(cma), 0, 0, now_s() - t, cpu_s() - c0);
        if (pbw_cma_stop(cma)) break;
    }
    pbw_ctx_set_grad(ctx, prev);
    free(hvals);
#ifdef PBW_HAVE_CUDA
    pbw_cuda_graph_free(pg.g); /* before the memory it replays into */
    pbw_cuda_free(dvals);
    pbw_cuda_free(dframes);
    if (dvals) mark(r, "cma: released", rq->cma_generations); /* the GPU's buffers and graph */
#endif
    if (!rc) memcpy(var, pbw_cma_kept(cma), (size_t)D * sizeof *var);
out:
    pbw_cma_free(cma);
    free(X);
    free(f);
    free(vals);
    free(crops);
    return rc;
}

/* Where one Adam step's results live (host memory on the CPU, device memory on CUDA). */
typedef struct step_out {
    const float *total, *clip, *l1, *lpips, *grad, *img;
} step_out;

/* One Adam step's forward and backward in ctx: the latent lat (1, D), the given crops. */
static int adam_pass_on(run *r, pbw_ctx *ctx, pbw_tensor *lat, const pbw_crop *crops,
                        step_out *so, pbw_err *err) {
    if (!lat) return ctx_err(ctx, err, "Adam step");
    lat->requires_grad = 1;
    pbw_tensor *img = render(ctx, r, lat);
    pbw_loss_parts parts;
    if (!img || pbw_objective_eval(ctx, &r->obj, img, crops, &parts)) return ctx_err(ctx, err, "loss");
    if (pbw_backward(ctx, parts.total, NULL, err)) return pbw_err_prefix(err, "backward: ");
    if (!lat->grad) return pbw_err_set(err, "the loss does not depend on the latent");
    so->total = parts.total->data;
    so->clip = parts.clip->data;
    so->l1 = parts.l1 ? parts.l1->data : NULL;
    so->lpips = parts.lpips ? parts.lpips->data : NULL;
    so->grad = lat->grad;
    so->img = img->data;
    return 0;
}

/* adam_pass_on with the latent from var (host). */
static int adam_pass(run *r, pbw_ctx *ctx, const float *var, const pbw_crop *crops,
                     step_out *so, pbw_err *err) {
    return adam_pass_on(r, ctx, pbw_tensor_from_host(ctx, var, 2, (int64_t[]){1, r->D}), crops,
                        so, err);
}

#ifdef PBW_HAVE_CUDA
/* Adam steps queued on the GPU. The step's graph ends with the update (pbw_cuda_adam_queued):
 * the latent, its moments and a step counter stay on the GPU, each step's loss values and the
 * latent it evaluated go to a ring of slots in mapped host memory, and the steps are launched
 * ADAM_QUEUE ahead of the host, which reports each as its mark is passed. What the host's turn
 * between steps cost (reading back, updating, launching: ~23 us of idle GPU a step in an H200's
 * timeline) goes. Each
 * step's crops are drawn ahead in the order the steps draw them one by one, and each launch
 * reads its own from pinned memory (pbw_cuda_graph_launch_from); the coefficients of every step
 * are made ahead by the host's optimizer (pbw_adam_coef_next), so the update's bits are those
 * of pbw_adam_step. Only where no step's image is wanted (the reports carry none). */
enum { ADAM_QUEUE = 4, ADAM_QUEUE_MAX = 100000 }; /* in flight; steps (their crops are pinned) */
typedef struct adam_queue {
    int D, steps, ncrops; /* steps: those queued (all of the phase's, or all but the first) */
    float *var, *m, *v, *coef; /* device: the latent, its moments, steps x PBW_ADAM_COEFS */
    int *counter;              /* device: the next queued step's index */
    float *ring;               /* mapped host: ADAM_QUEUE slots of 8 + D floats */
    pbw_crop *crops;           /* pinned host: steps x ncrops */
    pbw_adam_coef *coefs;      /* host: each queued step's */
    pbw_cuda_mark *mark[ADAM_QUEUE];
} adam_queue;

static void adam_queue_free(adam_queue *q) {
    pbw_cuda_free(q->var);
    pbw_cuda_free(q->m);
    pbw_cuda_free(q->v);
    pbw_cuda_free(q->coef);
    pbw_cuda_free(q->counter);
    pbw_cuda_host_free(q->ring);
    pbw_cuda_host_free(q->crops);
    free(q->coefs);
    for (int i = 0; i < ADAM_QUEUE; i++) pbw_cuda_mark_free(q->mark[i]);
    memset(q, 0, sizeof *q);
}

/* 0 with q ready for `steps` queued steps, -1 (nothing held) where memory is short. */
static int adam_queue_init(adam_queue *q, int D, int steps, int ncrops) {
    memset(q, 0, sizeof *q);
    q->D = D;
    q->steps = steps;
    q->ncrops = ncrops;
    const size_t vb = (size_t)D * sizeof(float);
    q->var = pbw_cuda_malloc(vb);
    q->m = pbw_cuda_malloc(vb);
    q->v = pbw_cuda_malloc(vb);
    q->coef = pbw_cuda_malloc((size_t)steps * PBW_ADAM_COEFS * sizeof(float));
    q->counter = pbw_cuda_malloc(sizeof(int));
    q->ring = pbw_cuda_host_alloc((size_t)ADAM_QUEUE * (8 + D) * sizeof(float));
    q->crops = pbw_cuda_host_alloc((size_t)steps * ncrops * sizeof(pbw_crop));
    q->coefs = malloc((size_t)steps * sizeof *q->coefs);
    int ok = q->var && q->m && q->v && q->coef && q->counter && q->ring && q->crops && q->coefs;
    for (int i = 0; i < ADAM_QUEUE; i++) ok = ok && (q->mark[i] = pbw_cuda_mark_new()) != NULL;
    if (!ok) {
        adam_queue_free(q);
        pbw_cuda_clear_error();
        return -1;
    }
    return 0;
}

/* One Adam step's pass for its pass_graph: the latent from var, or with a queue from the
 * queue's latent on the GPU, followed by the queued update. */
typedef struct adam_arg {
    run *r;
    pbw_ctx *ctx;
    const float *var;
    const pbw_crop *crops;
    step_out *so;
    adam_queue *q;
} adam_arg;

static int adam_pass_fn(void *arg, pbw_err *err) {
    adam_arg *a = arg;
    adam_queue *q = a->q;
    if (!q) return adam_pass(a->r, a->ctx, a->var, a->crops, a->so, err);
    pbw_tensor *lat = pbw_tensor_wrap(a->ctx, q->var, 2, (int64_t[]){1, q->D});
    if (adam_pass_on(a->r, a->ctx, lat, a->crops, a->so, err)) return -1;
    const float *const val[4] = {a->so->total, a->so->clip, a->so->l1, a->so->lpips};
    pbw_cuda_adam_queued(q->D, q->var, q->m, q->v, a->so->grad, q->coef, val, q->counter,
                         q->ring, ADAM_QUEUE);
    return pbw_ctx_failed(a->ctx) || pbw_cuda_error() ? ctx_err(a->ctx, err, "Adam update") : 0;
}

/* The Adam phase's steps after the adam->t already taken on the host (none where the pass was
 * recorded ahead, adam_plan_record; else the first), from pg's recording of the queued pass:
 * var and the moments go up, every step left is queued. var out: the latent after the last
 * step. 0, or -1 with err set. */
static int adam_queue_run(run *r, adam_queue *q, pass_graph *pg, pbw_adam *adam, float *var,
                          pbw_err *err) {
    const int D = q->D, n = q->steps, first = (int)adam->t; /* steps taken before */
    const size_t vb = (size_t)D * sizeof(float);
    pbw_adam ahead = *adam; /* counts the coefficients made ahead (its buffers are not used) */
    for (int k = 0; k < n; k++) {
        if (pbw_adam_coef_next(&ahead, &q->coefs[k], err)) return pbw_err_prefix(err, "Adam: ");
        pbw_adam_advance(&ahead, &q->coefs[k]);
    }
    float *coef = malloc((size_t)n * PBW_ADAM_COEFS * sizeof *coef);
    if (!coef) return pbw_err_set(err, "out of memory");
    for (int k = 0; k < n; k++) {
        const pbw_adam_coef *c = &q->coefs[k];
        const float f[PBW_ADAM_COEFS] = {c->b1, c->omb1, c->b2, c->omb2,
                                         c->bc2, c->eps, c->neg_step, c->wd};
        memcpy(coef + (size_t)k * PBW_ADAM_COEFS, f, sizeof f);
    }
    const int zero = 0;
    int rc = pbw_cuda_h2d(q->coef, coef, (size_t)n * PBW_ADAM_COEFS * sizeof *coef) ||
             pbw_cuda_h2d(q->var, var, vb) || pbw_cuda_h2d(q->m, adam->m, vb) ||
             pbw_cuda_h2d(q->v, adam->v, vb) || pbw_cuda_h2d(q->counter, &zero, sizeof zero);
    free(coef);
    if (rc) return pbw_err_set(err, "Adam: %s", pbw_cuda_error());
    for (int k = 0; k < n; k++) /* as the steps one by one would draw them */
        pbw_objective_draw_crops(&r->obj, &r->rng, q->crops + (size_t)k * q->ncrops);
    int launched = 0, done = 0;
    double t_prev = now_s(), c_prev = cpu_s();
    while (done < n) {
        while (launched < n && launched - done < ADAM_QUEUE && !cancelled(r)) {
            const void *src[1] = {q->crops + (size_t)launched * q->ncrops};
            if (pbw_cuda_graph_launch_from(pg->g, 1, src) ||
                pbw_cuda_mark_record(q->mark[launched % ADAM_QUEUE]))
                rc = pbw_err_set(err, "%s: %s", pg->name, pbw_cuda_error());
            if (rc) break;
            launched++;
        }
        if (rc || done == launched) break; /* failed, or cancelled with nothing in flight */
        if (done == 0) mark(r, "adam: queued ahead", first + 1);
        if (pbw_cuda_mark_wait(q->mark[done % ADAM_QUEUE])) {
            rc = pbw_err_set(err, "%s: %s", pg->name, pbw_cuda_error());
            break;
        }
        const float *slot = q->ring + (size_t)(done % ADAM_QUEUE) * (8 + D);
        int k;
        memcpy(&k, slot, sizeof k);
        if (k != done) {
            rc = pbw_err_set(err, "%s: step %d's results found in step %d's slot", pg->name,
                             first + 1 + k, first + 1 + done);
            break;
        }
        const pbw_loss_values v = {slot[1], slot[2], slot[3], slot[4]};
        note_best(r, slot + 8, v.total);
        pbw_adam_advance(adam, &q->coefs[done]);
        done++;
        mark(r, "adam: queued step done", first + done);
        r->step++;
        const double t = now_s(), c = cpu_s();
        report(r, PBW_PHASE_ADAM, first + done, first + n, &v, v.total, 0, adam->lr,
               adam->beta1, t - t_prev, c - c_prev);
        t_prev = t;
        c_prev = c;
    }
    /* the latent after the steps run (all of them unless cancelled or failed) */
    if (pbw_cuda_sync(rc ? NULL : err) && !rc) rc = -1;
    if (!rc && pbw_cuda_d2h(var, q->var, vb)) rc = pbw_err_set(err, "Adam: %s", pbw_cuda_error());
    return rc;
}

/* Whether the Adam phase's steps may be queued (adam_queue): a GPU with graphs, a queue's worth
 * of steps, no step's image wanted, not under PBW_PROFILE (its tables are per step), and not
 * switched off (PBW_CUDA_ADAM_QUEUE=0). */
static int adam_queue_wanted(const run *r, int n) {
    return r->p->dev == PBW_DEV_CUDA && !pbw_env_zero("PBW_CUDA_GRAPHS") && n >= 2 &&
           n <= ADAM_QUEUE_MAX && r->rq->no_progress_images && !pbw_profile_enabled() &&
           !pbw_env_zero("PBW_CUDA_ADAM_QUEUE");
}

/* The Adam phase's queued pass recorded ahead of the phase, with what it reads and writes. */
struct adam_plan {
    adam_queue q;
    step_out so;
    adam_arg aa;
    pass_graph pg;
    pbw_crop *crops; /* the recording's host range of crops (each launch reads its own) */
};

static void adam_plan_free(adam_plan *a) {
    if (!a) return;
    pbw_cuda_graph_free(a->pg.g);
    adam_queue_free(&a->q);
    free(a->crops);
    free(a);
}

/* During the last CMA-ES generation, while the GPU evaluates it: the Adam phase's queued pass
 * (all n steps then come from its graph, the first too) recorded into ctx's memory after a
 * reset that keeps it (as record_next: recording runs nothing, and the generation's graph is
 * not launched again). Where the pass needs something it has not made yet (a first edit's
 * algorithm searches, memory to grow, a weight's half copy), the recording is refused and
 * the Adam phase begins as it would have (its first step run directly). NULL then. */
static adam_plan *adam_plan_record(run *r, pbw_ctx *ctx) {
    const int n = r->rq->adam_steps, ncrops = crops_per_draw(&r->obj);
    if (!adam_queue_wanted(r, n) || !pbw_ctx_reset_keeps_device_memory(ctx)) return NULL;
    adam_plan *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->crops = calloc((size_t)ncrops, sizeof *a->crops);
    if (!a->crops || adam_queue_init(&a->q, r->D, n, ncrops)) {
        free(a->crops);
        free(a);
        return NULL;
    }
    a->aa = (adam_arg){r, ctx, NULL, a->crops, &a->so, &a->q};
    a->pg = (pass_graph){.name = "Adam step",
                         .fn = adam_pass_fn,
                         .arg = &a->aa,
                         .in = {a->crops, NULL},
                         .in_bytes = {(size_t)ncrops * sizeof *a->crops, 0},
                         .tries = 1};
    pbw_rng any;
    pbw_rng_seed(&any, 1);
    pbw_objective_draw_crops(&r->obj, &any, a->crops); /* valid crops: each launch reads its own */
    pbw_ctx_reset(ctx);
    const int prev = pbw_ctx_set_grad(ctx, 1);
    const int ok = record_pass(&a->pg, 1) == 0 && pbw_cuda_graph_inputs_found(a->pg.g);
    pbw_ctx_set_grad(ctx, prev);
    if (!ok) {
        adam_plan_free(a);
        pbw_cuda_clear_error();
        return NULL;
    }
    return a;
}
#endif

/* Copies n (at most 8) results of a step to the host (count[i] floats each; 0: none) with one
 * wait for a GPU, where each read-back apart waits for it again. 0, or -1 with err set (from
 * the GPU's error, not the context's: a recording refused before it may have failed that). */
static int fetch_many(const run *r, int n, float *const *dst, const float *const *src,
                      const int64_t *count, pbw_err *err) {
    if (n > 8) return pbw_err_set(err, "reading the step back: %d results", n);
    if (r->p->dev == PBW_DEV_CUDA) {
#ifdef PBW_HAVE_CUDA
        size_t bytes[8];
        void *vd[8];
        const void *vs[8];
        for (int i = 0; i < n; i++) {
            bytes[i] = (size_t)count[i] * sizeof(float);
            vd[i] = dst[i];
            vs[i] = src[i];
        }
        if (pbw_cuda_d2h_gather(n, vd, vs, bytes))
            return pbw_err_set(err, "reading the step back: %s", pbw_cuda_error());
        return 0;
#else
        return pbw_err_set(err, "reading the step back: this build has no CUDA");
#endif
    }
    for (int i = 0; i < n; i++)
        if (count[i]) memcpy(dst[i], src[i], (size_t)count[i] * sizeof(float));
    return 0;
}

/* Adam phase on `var` (D), in place. On CUDA the second step is recorded in a CUDA graph while
 * the GPU runs the first (a warm-up: algorithm searches, memory growth, weight caches), and the
 * later steps replay it (PBW_CUDA_GRAPHS=0 turns that off); where recording fails the steps run
 * directly. */
static int phase_adam(run *r, float *var, pbw_err *err) {
    const pbw_paint_request *rq = r->rq;
    const int D = r->D, n = rq->adam_steps;
    pbw_ctx *ctx = r->p->ctx;
    pbw_adam_opts ao;
    pbw_adam_opts_default(&ao, n);
    pbw_onecycle_default(&ao.schedule, rq->lr, n);
    pbw_adam adam;
    if (pbw_adam_init(&adam, D, &ao, err)) return pbw_err_prefix(err, "Adam: ");
    const int ncrops = crops_per_draw(&r->obj);
    pbw_crop *crops = malloc((size_t)ncrops * sizeof *crops);
    float *grad = malloc((size_t)D * sizeof *grad);
    int rc = crops && grad ? 0 : pbw_err_set(err, "out of memory");
    int prev = pbw_ctx_set_grad(ctx, 1);
    int queued_all = 0; /* every step ran from the pass recorded ahead (adam_plan_record) */
#ifdef PBW_HAVE_CUDA
    /* recordings to try: as the CMA-ES generations (run_generation), a second one when the
     * first was refused because memory had to grow */
    const int graphs = r->p->dev == PBW_DEV_CUDA && !pbw_env_zero("PBW_CUDA_GRAPHS");
    step_out gso = {0};
    adam_arg aa = {r, ctx, var, crops, &gso, NULL};
    pass_graph pg = {.name = "Adam step",
                     .fn = adam_pass_fn,
                     .arg = &aa,
                     .in = {var, crops},
                     .in_bytes = {(size_t)D * sizeof *var, (size_t)ncrops * sizeof *crops},
                     .tries = graphs ? 2 : 0};
    /* every step queued on the GPU (adam_queue) where the pass was recorded during the last
     * CMA-ES generation (adam_plan_record); else steps 2 .. n where their recording succeeds
     * while step 1 runs. PBW_CUDA_ADAM_QUEUE=0 keeps the host's turn between steps (and
     * adam_queue_wanted says where else the queue is not used). */
    adam_queue q = {0};
    adam_plan *plan = r->adam_plan;
    r->adam_plan = NULL;
    if (!rc && plan) { /* recorded during the last generation: every step queued */
        rc = adam_queue_run(r, &plan->q, &plan->pg, &adam, var, err);
        queued_all = 1;
    }
    adam_plan_free(plan);
    if (!rc && !queued_all && n >= 3 && adam_queue_wanted(r, n) &&
        adam_queue_init(&q, D, n - 1, ncrops) == 0) {
        aa.q = &q;
        pg.in[0] = crops; /* the latent stays on the GPU: the crops alone are inputs */
        pg.in_bytes[0] = (size_t)ncrops * sizeof *crops;
        pg.in[1] = NULL;
        pg.in_bytes[1] = 0;
    }
#endif
    for (int t = 0; t < n && !rc && !queued_all && !cancelled(r); t++) {
        double t0 = now_s(), c0 = cpu_s();
        pbw_profile_mark(); /* PBW_PROFILE: time of this step only */
        pbw_objective_draw_crops(&r->obj, &r->rng, crops);
        step_out so = {0};
        int direct = 1;
#ifdef PBW_HAVE_CUDA
        record_due(r, ctx, &pg, "adam: pass recorded", t + 1); /* not recorded during step 1 */
        if (pg.g) {
            int lrc = launch_pass(&pg, t + 1, err);
            if (lrc < 0) {
                rc = -1;
                break;
            }
            if (lrc == 0) {
                so = gso;
                direct = 0;
                mark(r, "adam: graph launched", t + 1);
            }
        }
#endif
        if (direct) {
            pbw_ctx_reset(ctx);
            if (adam_pass(r, ctx, var, crops, &so, err)) {
                rc = -1;
                break;
            }
            mark(r, "adam: pass queued", t + 1);
#ifdef PBW_HAVE_CUDA
            /* step 2's graph recorded while the GPU runs this step */
            if (t == 0 && pg.tries && n > 1) record_next(r, ctx, &pg, "adam: next recorded", 1);
#endif
        }
        float th = 0, ch = 0, l1h = 0, lph = 0;
        float *const dst[6] = {&th, &ch, &l1h, &lph, grad, r->frame};
        const float *const src[6] = {so.total, so.clip, so.l1, so.lpips, so.grad, so.img};
        const int64_t cnt[6] = {1, 1, so.l1 ? 1 : 0, so.lpips ? 1 : 0, D,
                                rq->no_progress_images ? 0 : r->per};
        if (fetch_many(r, 6, dst, src, cnt, err)) {
            rc = -1;
            break;
        }
        mark(r, "adam: read back", t + 1);
        pbw_loss_values v = {th, ch, l1h, lph};
        note_best(r, var, v.total);
        if (pbw_adam_step(&adam, var, grad, err)) {
            rc = pbw_err_prefix(err, "Adam: ");
            break;
        }
        mark(r, "adam: updated", t + 1);
        r->step++;
        report(r, PBW_PHASE_ADAM, t + 1, n, &v, v.total, 0, adam.lr, adam.beta1, now_s() - t0,
               cpu_s() - c0);
#ifdef PBW_HAVE_CUDA
        if (aa.q && pg.g && pbw_cuda_graph_inputs_found(pg.g)) { /* the rest queued */
            if (!cancelled(r)) rc = adam_queue_run(r, &q, &pg, &adam, var, err);
            break;
        }
        if (aa.q && pg.g) { /* recorded, but its inputs cannot be redirected: recorded again */
            pbw_cuda_graph_free(pg.g);
            pg.g = NULL;
        }
        if (aa.q) { /* not recorded: the steps one by one, the latent read from var */
            aa.q = NULL;
            pg.in[0] = var;
            pg.in_bytes[0] = (size_t)D * sizeof *var;
            pg.in[1] = crops;
            pg.in_bytes[1] = (size_t)ncrops * sizeof *crops;
        }
#endif
    }
#ifdef PBW_HAVE_CUDA
    pbw_cuda_graph_free(pg.g);
    adam_queue_free(&q);
#endif
    pbw_ctx_reset(ctx);
    pbw_ctx_set_grad(ctx, prev);
    pbw_adam_free(&adam);
    free(crops);
    free(grad);
    return rc;
}

/* Loss values of one image (1,3,S,S) with the evaluation crops. */
static int eval_image(run *r, pbw_tensor *img, const pbw_crop *crops, pbw_loss_values *v,
                      pbw_err *err) {
    return pbw_objective_values(r->p->ctx, r->p->scratch, &r->obj, img, crops, v, err);
}

static int paint(pbw_painter *p, const pbw_paint_request *rq, int edit,
                 pbw_paint_progress_fn progress, void *user, const volatile sig_atomic_t *cancel,
                 pbw_paint_result *res, pbw_err *err) {
    memset(res, 0, sizeof *res);
    if (!p || !rq) return pbw_err_set(err, "painter: no request");
    const int S = p->g->size, D = p->g->style_dim;
    /* request checks, before any work */
    if (edit && !rq->mask) return pbw_err_set(err, "edit: no mask (where to paint)");
    if (!edit && rq->mask) return pbw_err_set(err, "generate: takes no mask (use edit)");
    if (edit && pbw_mask_count(rq->mask, (int64_t)S * S) == 0)
        return pbw_err_set(err, "the mask is empty (no pixel above 0): nothing to paint");
    if (rq->population < 2 && rq->optim != PBW_OPTIM_ADAM)
        return pbw_err_set(err, "population %d: CMA-ES needs at least 2", rq->population);
    if (rq->cma_generations < 0 || rq->adam_steps < 0 || rq->crops < 0 ||
        rq->crops > PBW_MAX_CROPS || !(rq->sigma0 > 0) || !(rq->lr > 0))
        return pbw_err_set(err, "bad request: generations %d, Adam steps %d, crops %d (0..%d), "
                           "sigma0 %g and lr %g (> 0)", rq->cma_generations, rq->adam_steps,
                           rq->crops, PBW_MAX_CROPS, rq->sigma0, rq->lr);
    if (!(rq->truncation > 0 && rq->truncation <= 1))
        return pbw_err_set(err, "truncation %g must be in (0, 1]", rq->truncation);
    if ((unsigned)rq->loss_mode > PBW_LOSS_BLANK_FULL || (unsigned)rq->optim > PBW_OPTIM_ADAM ||
        (unsigned)rq->mask_mode > PBW_MASK_OUTPUT || (unsigned)rq->var > PBW_VAR_Z)
        return pbw_err_set(err, "bad request: unknown loss mode, optimizer, mask mode or variable");
    double keep = 0; /* sum of 1 - mask: 0 when nothing lies outside the mask */
    for (int64_t i = 0; edit && i < (int64_t)S * S; i++)
        keep += 1.0 - (rq->mask[i] < 0 ? 0 : (rq->mask[i] > 1 ? 1 : rq->mask[i]));
    int needs_lpips = edit && rq->recon_weight != 0 && rq->lpips_weight != 0 && keep > 0;
    if (needs_lpips && !p->lpips && !rq->allow_no_lpips)
        return pbw_err_set(err, "LPIPS is not loaded: the reconstruction loss needs torchvision's "
                           "AlexNet (alexnet-owt-7be5be79.pth) and the LPIPS v0.1 heads; give "
                           "them, or allow the edit without LPIPS (L1 only)");
    if (needs_lpips && p->lpips && S < 35)
        return pbw_err_set(err, "LPIPS needs images of at least 35 px; this generator makes %d px "
                           "(allow the edit without LPIPS)", S);

    run r;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.rq = rq;
    r.edit = edit;
    r.var = rq->var != PBW_VAR_DEFAULT ? rq->var : (edit ? PBW_VAR_W : PBW_VAR_Z);
    r.D = D;
    r.S = S;
    r.per = (int64_t)3 * S * S;
    r.progress = progress;
    r.user = user;
    r.cancel = cancel;
    r.t0 = r.t_mark = now_s();
    r.timeline = timeline_mode();
    profile_range_mode(&r);
    int do_cma = rq->optim != PBW_OPTIM_ADAM, do_adam = rq->optim != PBW_OPTIM_CMA;
    r.steps = (do_cma ? rq->cma_generations : 0) + (do_adam ? rq->adam_steps : 0);
    pbw_rng_seed(&r.rng, rq->rng_seed);
    r.start = malloc((size_t)D * sizeof(float));
    r.best_lat = malloc((size_t)D * sizeof(float));
    r.frame = malloc((size_t)r.per * sizeof(float));
    float *var = malloc((size_t)D * sizeof(float));
    pbw_crop *ecrops = NULL;
    int rc = -1;
    if (!r.start || !r.best_lat || !r.frame || !var) {
        pbw_err_set(err, "out of memory");
        goto out;
    }
    r.cctx = pbw_ctx_new(p->dev, err);
    if (!r.cctx || setup(&r, rq->mask, err)) goto out;
    pbw_ctx_reset(p->ctx);
    pbw_ctx_reset(p->scratch);

    /* the evaluation crops of before/after */
    const int nsets = pbw_objective_crop_sets(&r.obj);
    ecrops = malloc((size_t)(nsets * (rq->crops > 0 ? rq->crops : 1)) * sizeof *ecrops);
    if (!ecrops) {
        pbw_err_set(err, "out of memory");
        goto out;
    }
    pbw_rng erng;
    pbw_rng_seed(&erng, rq->rng_seed + 1u);
    pbw_objective_draw_crops(&r.obj, &erng, ecrops);
    int prev = pbw_ctx_set_grad(p->ctx, 0);
    int erc = eval_image(&r, r.orig, ecrops, &res->before, err);
    pbw_ctx_reset(p->ctx);
    pbw_ctx_set_grad(p->ctx, prev);
    if (erc) goto out;
    mark(&r, "set-up: before's evaluation", 0);

    memcpy(var, r.start, (size_t)D * sizeof *var);
    r.adam_next = do_adam && rq->adam_steps > 0;
    if (do_cma && rq->cma_generations > 0 && phase_cma(&r, var, err)) goto out;
    if (do_adam && rq->adam_steps > 0 && !cancelled(&r) && phase_adam(&r, var, err)) goto out;

    res->cancelled = cancelled(&r) ? 1 : 0;
    if (res->cancelled && r.have_best) memcpy(var, r.best_lat, (size_t)D * sizeof *var);

    /* the result */
    res->size = S;
    res->latent_dim = D;
    res->var = r.var;
    res->steps = r.steps;
    res->steps_done = r.step;
    res->image = malloc((size_t)r.per * sizeof(float));
    res->original = malloc((size_t)r.per * sizeof(float));
    res->latent = malloc((size_t)D * sizeof(float));
    if (!res->image || !res->original || !res->latent) {
        pbw_err_set(err, "out of memory");
        goto out;
    }
    memcpy(res->latent, var, (size_t)D * sizeof(float));
    if (pbw_tensor_read(r.cctx, r.orig, res->original)) {
        ctx_err(r.cctx, err, "reading the original back");
        goto out;
    }
    prev = pbw_ctx_set_grad(p->ctx, 0);
    pbw_ctx_reset(p->ctx);
    pbw_tensor *lat = pbw_tensor_from_host(p->ctx, var, 2, (int64_t[]){1, D});
    pbw_tensor *img = render(p->ctx, &r, lat);
    if (!img || pbw_ctx_failed(p->ctx) || pbw_tensor_read(p->ctx, img, res->image)) {
        ctx_err(p->ctx, err, "generator");
        pbw_ctx_set_grad(p->ctx, prev);
        goto out;
    }
    erc = eval_image(&r, img, ecrops, &res->after, err);
    pbw_ctx_reset(p->ctx);
    pbw_ctx_set_grad(p->ctx, prev);
    if (erc) goto out;
    mark(&r, "result: rendered, read back, after's evaluation", 0);
    res->seconds = now_s() - r.t0;
    rc = 0;
out:
#ifdef PBW_HAVE_CUDA
    adam_plan_free(r.adam_plan); /* where the Adam phase did not take it */
#endif
    if (rc) pbw_paint_result_free(res);
    if (r.have_mk) pbw_sg2_mask_free(&r.mk);
    if (p->ctx) pbw_ctx_reset(p->ctx);
    if (p->scratch) pbw_ctx_reset(p->scratch);
    pbw_ctx_free(r.cctx);
    free(r.start);
    free(r.best_lat);
    free(r.frame);
    free(var);
    free(ecrops);
    return rc;
}

int pbw_painter_edit(pbw_painter *p, const pbw_paint_request *rq, pbw_paint_progress_fn progress,
                     void *user, const volatile sig_atomic_t *cancel, pbw_paint_result *res,
                     pbw_err *err) {
    return paint(p, rq, 1, progress, user, cancel, res, err);
}

int pbw_painter_generate(pbw_painter *p, const pbw_paint_request *rq,
                         pbw_paint_progress_fn progress, void *user,
                         const volatile sig_atomic_t *cancel, pbw_paint_result *res,
                         pbw_err *err) {
    return paint(p, rq, 0, progress, user, cancel, res, err);
}
