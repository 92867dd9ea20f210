/* cmd_edit.c: `pbw edit` (paint a masked region of a StyleGAN2 image toward words) and the
 * option parsing, progress, history and log shared with `pbw generate` (cmd_generate.c). Both
 * drive the library painter (src/paint/pbw_painter.h). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/pbw_app.h"
#include "core/pbw_tensor.h"
#include "formats/pbw_file.h"
#include "formats/pbw_gif.h"
#include "formats/pbw_image.h"
#include "formats/pbw_npy.h"
#include "paint/pbw_painter.h"

static void help(FILE *f, int edit) {
    const char *c = edit ? "edit" : "generate";
    fprintf(f,
            "usage: pbw %s --gan CKPT --clip DIR (--seed K | --z Z.npy)%s\n"
            "                 (--text T | --ids N,N,...) --out OUT.png [options]\n\n",
            c, edit ? " --mask M.png" : "");
    if (edit)
        fprintf(f,
                "Paints the masked region of a StyleGAN2 image so that CLIP matches it to the words,\n"
                "and keeps the rest (Paint by Word: CMA-ES, then Adam on one w with the mask applied\n"
                "to every layer's style; CLIP loss over random crops plus L1 + LPIPS outside the mask).\n\n");
    else
        fprintf(f,
                "Makes a whole StyleGAN2 image match the words: the painting loop on z (or w) with no\n"
                "mask and no reconstruction loss.\n\n");
    fprintf(f,
            "models\n"
            "  --gan CKPT            rosinality StyleGAN2 checkpoint (.pt or .safetensors)\n"
            "  --clip DIR            CLIP model: Hugging Face directory or OpenAI/open_clip weights\n"
            "  --vocab PATH          tokenizer vocabulary (HF dir with vocab.json + merges.txt, or\n"
            "                        bpe_simple_vocab_16e6.txt.gz); default: found in the CLIP dir\n");
    if (edit)
        fprintf(f,
                "  --lpips-backbone PATH torchvision's AlexNet (alexnet-owt-7be5be79.pth): LPIPS of the\n"
                "                        reconstruction loss. Without it the edit is refused unless\n"
                "  --no-lpips            is given (the reconstruction loss is then L1 only)\n"
                "  --lpips-heads PATH    LPIPS v0.1 heads alex.pth (default: alex.pth or v0.1/alex.pth\n"
                "                        beside the backbone)\n");
    fprintf(f,
            "the picture and the words\n"
            "  --seed K              start from seed-bank row K (numpy RandomState(1) rows, as the\n"
            "                        reference's notebooks number them)\n"
            "  --z Z.npy             or from this z: float32, style-size values (one row)\n"
            "  --truncation T        w = avg + T (w - avg), T in (0,1] (default 1: off)\n"
            "  --text T              the words\n"
            "  --ids N,N,...         or their CLIP token ids, start and end tokens included\n");
    if (edit)
        fprintf(f,
                "  --mask M.png          where to paint: PNG/JPEG of any size, white (or opaque where\n"
                "                        the file has transparency) = paint here; resized to the image\n");
    fprintf(f,
            "optimization (defaults: the reference's)\n"
            "  --optim O             cma+adam (default), cma or adam\n"
            "  --cma-generations N   CMA-ES generations (20)\n"
            "  --population N        CMA-ES population (50)\n"
            "  --sigma0 S            CMA-ES initial step size (0.5)\n"
            "  --steps N             Adam steps (100), one-cycle schedule\n"
            "  --lr L                Adam's peak learning rate (0.01)\n"
            "  --crops N             random crops per CLIP evaluation (32; 0: whole image)\n"
            "  --latent w|z          the optimized latent (%s)\n"
            "  --rng-seed N          seed of the crops and of CMA-ES (1): same inputs and seeds give\n"
            "                        the same output bytes\n"
            "  --cma-batch N         CMA candidates per forward pass (default: by image size, 14\n"
            "                        at 256 px on a GPU; fewer take less GPU memory)\n",
            edit ? "w" : "z");
    if (edit)
        fprintf(f,
                "  --loss-mode M         what CLIP sees: paste_onto_blank (default; outside the mask\n"
                "                        gray), paste_onto_orig, zoom (box around the mask), blank+full\n"
                "  --mask-mode M         latent (default: masked styles) or output (mask * G(w) +\n"
                "                        (1 - mask) * G(w0), the paper's ablation)\n"
                "  --demod M             orig (default, the reference's) or mixed demodulation\n"
                "  --unmasked-torgb      leave ToRGB layers unmasked, as the reference's sequential\n"
                "                        StyleGAN2 does (default: every modulation masked)\n"
                "  --recon-weight X      weight of the reconstruction loss (5)\n"
                "  --lpips-weight X      weight of LPIPS inside it (10)\n");
    fprintf(f,
            "outputs (all written atomically)\n"
            "  --out OUT.png         the result\n"
            "  --history H.gif       animation of every CMA generation's best and every Adam step\n"
            "  --log L.csv           every step's losses\n"
            "  --save-latent L.npy   the result's latent (float32, (1,style size))\n"
            "  --save-npy X.npy      original and result as float32 (2,3,H,W) in [-1,1]\n"
            "  --device D            cpu (default), cuda, cuda:N, or auto (a GPU when one works)\n"
            "  --precision P         GPU matrix math: bf16 (default on the GPU), fp16, tf32 or fp32;\n"
            "                        storage, latent, optimizer and loss stay fp32\n"
            "  --quiet               no progress lines\n\n"
            "A progress line per step goes to stderr. Ctrl-C stops after the current step and\n"
            "writes the best result so far (exit status 130); a second Ctrl-C ends at once.\n"
            "PBW_PROFILE=1 prints the time per op and step at the end (the steps after the last\n"
            "phase's first, a warm-up); on a GPU the device is waited for at every op. PBW_PROFILE=gpu\n"
            "prints instead each op's device time from CUPTI (libcupti on the library path) with\n"
            "no waiting, the GPU's busy time against the wall time, and the top kernels.\n"
            "PBW_TIMELINE=1 prints a line per stage (set-up, each generation's ask, evaluation\n"
            "and tell, each Adam step's pass, read-back and update) with its time; =sync waits\n"
            "for the GPU at each line, so that a stage's GPU work lands in it.\n");
}

typedef struct paint_args {
    int edit;
    const char *device, *precision;
    pbw_painter_config cfg;
    const char *z_path, *mask_path, *out, *history, *log, *save_latent, *save_npy, *ids_str;
    int seed_given, no_lpips, quiet;
    pbw_paint_request rq;
} paint_args;

static int parse_ids(const char *cmd, const char *s, int32_t *ids, int max, int *n) {
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX || *n == max) {
            fprintf(stderr, "pbw %s: bad --ids '%s' (at most %d non-negative integers separated "
                            "by commas)\n", cmd, s, max);
            return -1;
        }
        ids[(*n)++] = (int32_t)v;
        p = end;
    }
    if (*n < 2) {
        fprintf(stderr, "pbw %s: --ids '%s' needs the start and end tokens at least\n", cmd, s);
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, paint_args *a) {
    const char *cmd = a->edit ? "edit" : "generate";
    pbw_paint_request *rq = &a->rq;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = NULL;
        long n;
        double x;
        if (!strcmp(o, "--no-lpips") && a->edit) {
            a->no_lpips = 1;
            continue;
        }
        if (!strcmp(o, "--unmasked-torgb") && a->edit) {
            rq->unmasked_torgb = 1;
            continue;
        }
        if (!strcmp(o, "--quiet")) {
            a->quiet = 1;
            continue;
        }
        if (o[0] != '-' || o[1] != '-') {
            fprintf(stderr, "pbw %s: unexpected argument '%s' (see pbw %s --help)\n", cmd, o, cmd);
            return -1;
        }
        static const char *const edit_only[] = {"--mask", "--loss-mode", "--mask-mode", "--demod",
                                                "--recon-weight", "--lpips-weight",
                                                "--lpips-backbone", "--lpips-heads",
                                                "--no-lpips", "--unmasked-torgb", NULL};
        for (int k = 0; edit_only[k] && !a->edit; k++)
            if (!strcmp(o, edit_only[k])) {
                fprintf(stderr, "pbw generate: %s is an option of pbw edit\n", o);
                return -1;
            }
        if (!(v = app_value(cmd, argc, argv, &i))) return -1;
        if (!strcmp(o, "--gan")) a->cfg.gan = v;
        else if (!strcmp(o, "--clip")) a->cfg.clip = v;
        else if (!strcmp(o, "--vocab")) a->cfg.vocab = v;
        else if (!strcmp(o, "--lpips-backbone")) a->cfg.lpips_backbone = v;
        else if (!strcmp(o, "--lpips-heads")) a->cfg.lpips_heads = v;
        else if (!strcmp(o, "--z")) a->z_path = v;
        else if (!strcmp(o, "--mask")) a->mask_path = v;
        else if (!strcmp(o, "--out")) a->out = v;
        else if (!strcmp(o, "--history")) a->history = v;
        else if (!strcmp(o, "--log")) a->log = v;
        else if (!strcmp(o, "--save-latent")) a->save_latent = v;
        else if (!strcmp(o, "--save-npy")) a->save_npy = v;
        else if (!strcmp(o, "--text")) rq->text = v;
        else if (!strcmp(o, "--ids")) a->ids_str = v;
        else if (!strcmp(o, "--seed")) {
            if (app_parse_int(cmd, o, v, 0, 1L << 40, &n)) return -1;
            rq->seed = n;
            a->seed_given = 1;
        } else if (!strcmp(o, "--truncation")) {
            if (app_parse_float(cmd, o, v, &x)) return -1;
            if (!(x > 0 && x <= 1)) {
                fprintf(stderr, "pbw %s: --truncation %s must be in (0, 1]\n", cmd, v);
                return -1;
            }
            rq->truncation = (float)x;
        } else if (!strcmp(o, "--optim")) {
            if (pbw_optim_parse(v, &rq->optim)) {
                fprintf(stderr, "pbw %s: --optim '%s': cma+adam, cma or adam\n", cmd, v);
                return -1;
            }
        } else if (!strcmp(o, "--cma-generations")) {
            if (app_parse_int(cmd, o, v, 0, 100000, &n)) return -1;
            rq->cma_generations = (int)n;
        } else if (!strcmp(o, "--population")) {
            if (app_parse_int(cmd, o, v, 2, 100000, &n)) return -1;
            rq->population = (int)n;
        } else if (!strcmp(o, "--sigma0")) {
            if (app_parse_float(cmd, o, v, &x)) return -1;
            if (!(x > 0)) {
                fprintf(stderr, "pbw %s: --sigma0 %s must be > 0\n", cmd, v);
                return -1;
            }
            rq->sigma0 = x;
        } else if (!strcmp(o, "--steps")) {
            if (app_parse_int(cmd, o, v, 0, 1000000, &n)) return -1;
            rq->adam_steps = (int)n;
        } else if (!strcmp(o, "--lr")) {
            if (app_parse_float(cmd, o, v, &x)) return -1;
            if (!(x > 0)) {
                fprintf(stderr, "pbw %s: --lr %s must be > 0\n", cmd, v);
                return -1;
            }
            rq->lr = x;
        } else if (!strcmp(o, "--crops")) {
            if (app_parse_int(cmd, o, v, 0, PBW_MAX_CROPS, &n)) return -1;
            rq->crops = (int)n;
        } else if (!strcmp(o, "--latent")) {
            if (!strcmp(v, "w")) rq->var = PBW_VAR_W;
            else if (!strcmp(v, "z")) rq->var = PBW_VAR_Z;
            else {
                fprintf(stderr, "pbw %s: --latent '%s': w or z\n", cmd, v);
                return -1;
            }
        } else if (!strcmp(o, "--rng-seed")) {
            if (app_parse_int(cmd, o, v, 0, 4294967295L, &n)) return -1;
            rq->rng_seed = (uint32_t)n;
        } else if (!strcmp(o, "--cma-batch")) {
            if (app_parse_int(cmd, o, v, 1, 100000, &n)) return -1;
            rq->cma_batch = (int)n;
        } else if (!strcmp(o, "--loss-mode")) {
            if (pbw_loss_mode_parse(v, &rq->loss_mode)) {
                fprintf(stderr, "pbw %s: --loss-mode '%s': paste_onto_blank, paste_onto_orig, "
                                "zoom or blank+full\n", cmd, v);
                return -1;
            }
        } else if (!strcmp(o, "--mask-mode")) {
            if (pbw_mask_mode_parse(v, &rq->mask_mode)) {
                fprintf(stderr, "pbw %s: --mask-mode '%s': latent or output\n", cmd, v);
                return -1;
            }
        } else if (!strcmp(o, "--demod")) {
            if (!strcmp(v, "orig")) rq->demod_mixed = 0;
            else if (!strcmp(v, "mixed")) rq->demod_mixed = 1;
            else {
                fprintf(stderr, "pbw %s: --demod '%s': orig or mixed\n", cmd, v);
                return -1;
            }
        } else if (!strcmp(o, "--recon-weight") || !strcmp(o, "--lpips-weight")) {
            if (app_parse_float(cmd, o, v, &x)) return -1;
            if (!(x >= 0)) {
                fprintf(stderr, "pbw %s: %s %s must be >= 0\n", cmd, o, v);
                return -1;
            }
            if (!strcmp(o, "--recon-weight")) rq->recon_weight = (float)x;
            else rq->lpips_weight = (float)x;
        } else if (!strcmp(o, "--device")) {
            a->device = v;
        } else if (!strcmp(o, "--precision")) {
            a->precision = v;
        } else {
            fprintf(stderr, "pbw %s: unknown option %s (see pbw %s --help)\n", cmd, o, cmd);
            return -1;
        }
    }
    const char *missing = !a->cfg.gan ? "--gan CKPT" : !a->cfg.clip ? "--clip DIR"
                        : !a->out ? "--out OUT.png" : (a->edit && !a->mask_path) ? "--mask M.png"
                        : NULL;
    if (missing) {
        fprintf(stderr, "pbw %s: %s is required (see pbw %s --help)\n", cmd, missing, cmd);
        return -1;
    }
    if (a->seed_given == !!a->z_path) {
        fprintf(stderr, "pbw %s: give exactly one of --seed K and --z Z.npy\n", cmd);
        return -1;
    }
    if (!rq->text == !a->ids_str) {
        fprintf(stderr, "pbw %s: give exactly one of --text T and --ids N,N,...\n", cmd);
        return -1;
    }
    if (a->history) {
        size_t l = strlen(a->history);
        if (l < 4 || strcasecmp(a->history + l - 4, ".gif")) {
            fprintf(stderr, "pbw %s: --history %s: only animated GIF (.gif) is written by this "
                            "build\n", cmd, a->history);
            return -1;
        }
    }
    if (a->no_lpips) a->cfg.lpips_backbone = NULL;
    rq->allow_no_lpips = a->no_lpips;
    pbw_device dev;
    if (app_device(cmd, a->device, a->precision, a->quiet, &dev)) return -1;
    a->cfg.device = dev;
    return 0;
}

/* ---------- progress, history, log ---------- */

static volatile sig_atomic_t g_stop = 0;

static void on_sigint(int sig) {
    (void)sig;
    g_stop = 1;
    static const char msg[] = "\npbw: stopping after this step (Ctrl-C again to quit now)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    signal(SIGINT, SIG_DFL);
}

typedef struct sink {
    const char *cmd;
    int quiet;
    pbw_gif *gif;
    pbw_file_tmp log;
    int have_log;
    uint8_t *rgb;
    int failed;
    pbw_err err;
    int prof_steps; /* steps in the PBW_PROFILE table */
} sink;

static void on_progress(const pbw_paint_progress *pr, void *user) {
    sink *s = user;
    if (pbw_profile_enabled()) {
        /* the first step of a phase is a warm-up (cuDNN's algorithm search, allocations):
         * the table covers the steps after it */
        if (pr->phase_step == 1) {
            pbw_profile_clear();
            s->prof_steps = 0;
        } else {
            s->prof_steps++;
        }
    }
    const char *ph = pr->phase == PBW_PHASE_CMA ? "cma" : "adam";
    if (!s->quiet) {
        double eta = pr->step_seconds * (pr->steps - pr->step);
        fprintf(stderr, "%-4s %3d/%-3d [%3d/%d] loss %.4f (clip %.4f l1 %.4f lpips %.4f) best %.4f",
                ph, pr->phase_step, pr->phase_steps, pr->step, pr->steps, pr->loss.total,
                pr->loss.clip, pr->loss.l1, pr->loss.lpips, pr->best);
        if (pr->phase == PBW_PHASE_CMA) fprintf(stderr, " mean %.4f sigma %.4g", pr->gen_mean, pr->sigma);
        else fprintf(stderr, " lr %.3g", pr->lr);
        fprintf(stderr, " | %.2f s/step, %.0f s left\n", pr->step_seconds, eta);
    }
    if (s->failed) return;
    if (s->gif) {
        pbw_paint_to_rgb8(pr->image, pr->size, pr->size, s->rgb);
        if (pbw_gif_add(s->gif, s->rgb, &s->err)) s->failed = 1;
    }
    if (s->have_log &&
        fprintf(s->log.fp, "%d,%s,%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.4f,%.4f,%.4f\n",
                pr->step, ph, pr->phase_step, pr->loss.total, pr->loss.clip, pr->loss.l1,
                pr->loss.lpips, pr->best, pr->phase == PBW_PHASE_CMA ? pr->gen_mean : pr->loss.total,
                pr->sigma, pr->lr, pr->beta1, pr->step_seconds, pr->step_cpu_seconds,
                pr->elapsed) < 0) {
        pbw_err_set(&s->err, "%s: write failed", s->log.path);
        s->failed = 1;
    }
}

static int load_z(const char *cmd, const char *path, int D, float **z) {
    pbw_npy arr;
    pbw_err err;
    if (pbw_npy_read(path, &arr, &err)) {
        fprintf(stderr, "pbw %s: --z %s\n", cmd, err.msg);
        return -1;
    }
    if (arr.numel != D || arr.ndim > 2) {
        fprintf(stderr, "pbw %s: --z %s holds %lld values; the generator takes one z of %d "
                        "(shape (%d) or (1,%d))\n", cmd, path, (long long)arr.numel, D, D, D);
        pbw_npy_free(&arr);
        return -1;
    }
    *z = arr.data; /* ours now */
    return 0;
}

static void print_loss(const char *what, const pbw_loss_values *v) {
    fprintf(stderr, "  %-7s loss %.4f = clip %.4f + recon (l1 %.4f, lpips %.4f)\n", what, v->total,
            v->clip, v->l1, v->lpips);
}

int app_paint_main(int argc, char **argv, int edit) {
    const char *cmd = edit ? "edit" : "generate";
    if (app_wants_help(argc, argv)) {
        help(stdout, edit);
        return 0;
    }
    paint_args a;
    memset(&a, 0, sizeof a);
    a.edit = edit;
    pbw_paint_request_default(&a.rq);
    if (parse_args(argc, argv, &a)) return 2;

    int32_t ids[PBW_CLIP_CONTEXT];
    int n_ids = 0;
    if (a.ids_str) {
        if (parse_ids(cmd, a.ids_str, ids, PBW_CLIP_CONTEXT, &n_ids)) return 2;
        a.rq.ids = ids;
        a.rq.n_ids = n_ids;
    }
    pbw_err err = {{0}};
    pbw_painter *p = NULL;
    float *z = NULL, *mask = NULL;
    uint8_t *rgb = NULL;
    sink s;
    memset(&s, 0, sizeof s);
    s.cmd = cmd;
    s.quiet = a.quiet;
    pbw_paint_result res;
    memset(&res, 0, sizeof res);
    int rc = 1;

    fprintf(stderr, "pbw %s: loading models\n", cmd);
    if (pbw_painter_new(&p, &a.cfg, &err)) {
        fprintf(stderr, "pbw %s: %s\n", cmd, err.msg);
        return 1;
    }
    const int S = pbw_painter_image_size(p), D = pbw_painter_style_dim(p);
    if (edit && !a.no_lpips && !pbw_painter_has_lpips(p)) {
        fprintf(stderr, "pbw %s: no LPIPS: the reconstruction loss needs torchvision's AlexNet "
                        "weights (alexnet-owt-7be5be79.pth; tools/download_weights.sh fetches it); "
                        "give --lpips-backbone PATH, or --no-lpips to keep the outside with L1 "
                        "only\n", cmd);
        goto out;
    }
    if (a.rq.text && !pbw_painter_has_tokenizer(p)) {
        fprintf(stderr, "pbw %s: --text needs a tokenizer: %s has no vocab.json/merges.txt or "
                        "bpe_simple_vocab_16e6.txt.gz; give --vocab PATH or --ids\n", cmd, a.cfg.clip);
        goto out;
    }
    if (a.z_path) {
        if (load_z(cmd, a.z_path, D, &z)) goto out;
        a.rq.z = z;
    }
    if (edit) {
        mask = malloc((size_t)S * S * sizeof *mask);
        if (!mask) {
            fprintf(stderr, "pbw %s: out of memory\n", cmd);
            goto out;
        }
        if (pbw_mask_load(a.mask_path, S, S, mask, &err)) {
            fprintf(stderr, "pbw %s: --mask %s\n", cmd, err.msg);
            goto out;
        }
        int64_t on = pbw_mask_count(mask, (int64_t)S * S);
        if (on == 0) {
            fprintf(stderr, "pbw %s: --mask %s is empty at %dx%d (no pixel above 0): nothing to "
                            "paint\n", cmd, a.mask_path, S, S);
            rc = 2;
            goto out;
        }
        a.rq.mask = mask;
        fprintf(stderr, "pbw %s: mask covers %.1f%% of the %dx%d image\n", cmd,
                100.0 * (double)on / ((double)S * S), S, S);
    }
    s.rgb = rgb = malloc((size_t)S * S * 3);
    if (!rgb) {
        fprintf(stderr, "pbw %s: out of memory\n", cmd);
        goto out;
    }
    a.rq.no_progress_images = !a.history; /* only the animation looks at the steps' images */
    if (a.history && pbw_gif_open(&s.gif, a.history, S, S, 10, &err)) {
        fprintf(stderr, "pbw %s: --history %s\n", cmd, err.msg);
        goto out;
    }
    if (a.log) {
        if (pbw_file_tmp_open(&s.log, a.log, &err)) {
            fprintf(stderr, "pbw %s: --log %s\n", cmd, err.msg);
            goto out;
        }
        s.have_log = 1;
        fprintf(s.log.fp, "step,phase,phase_step,loss,clip,l1,lpips,best,mean,sigma,lr,beta1,"
                          "seconds,cpu_seconds,elapsed\n");
    }

    fprintf(stderr, "pbw %s: %s, %d CMA generations of %d, %d Adam steps, %d crops%s%s\n", cmd,
            pbw_optim_name(a.rq.optim), a.rq.optim == PBW_OPTIM_ADAM ? 0 : a.rq.cma_generations,
            a.rq.population, a.rq.optim == PBW_OPTIM_CMA ? 0 : a.rq.adam_steps, a.rq.crops,
            edit ? ", loss mode " : "", edit ? pbw_loss_mode_name(a.rq.loss_mode) : "");
    g_stop = 0;
    void (*old)(int) = signal(SIGINT, on_sigint);
    int prc = edit ? pbw_painter_edit(p, &a.rq, on_progress, &s, &g_stop, &res, &err)
                   : pbw_painter_generate(p, &a.rq, on_progress, &s, &g_stop, &res, &err);
    signal(SIGINT, old);
    if (prc) {
        fprintf(stderr, "pbw %s: %s\n", cmd, err.msg);
        goto out;
    }
    if (s.failed) {
        fprintf(stderr, "pbw %s: %s\n", cmd, s.err.msg);
        goto out;
    }

    /* outputs */
    pbw_image im = {.w = S, .h = S, .c = 3, .data = rgb};
    pbw_paint_to_rgb8(res.image, S, S, rgb);
    if (pbw_image_write_png(a.out, &im, &err)) {
        fprintf(stderr, "pbw %s: --out %s\n", cmd, err.msg);
        goto out;
    }
    if (a.save_latent &&
        pbw_npy_write(a.save_latent, res.latent, 2, (int64_t[]){1, res.latent_dim}, &err)) {
        fprintf(stderr, "pbw %s: --save-latent %s\n", cmd, err.msg);
        goto out;
    }
    if (a.save_npy) {
        float *both = malloc((size_t)6 * S * S * sizeof *both);
        if (!both) {
            fprintf(stderr, "pbw %s: out of memory\n", cmd);
            goto out;
        }
        memcpy(both, res.original, (size_t)3 * S * S * sizeof *both);
        memcpy(both + (size_t)3 * S * S, res.image, (size_t)3 * S * S * sizeof *both);
        int wrc = pbw_npy_write(a.save_npy, both, 4, (int64_t[]){2, 3, S, S}, &err);
        free(both);
        if (wrc) {
            fprintf(stderr, "pbw %s: --save-npy %s\n", cmd, err.msg);
            goto out;
        }
    }
    if (s.gif) {
        int frames = pbw_gif_frames(s.gif);
        pbw_gif *g = s.gif;
        s.gif = NULL;
        if (pbw_gif_close(g, &err)) {
            fprintf(stderr, "pbw %s: --history %s\n", cmd, err.msg);
            goto out;
        }
        fprintf(stderr, "pbw %s: wrote %s (%d frames)\n", cmd, a.history, frames);
    }
    if (s.have_log) {
        s.have_log = 0;
        if (pbw_file_tmp_commit(&s.log, &err)) {
            fprintf(stderr, "pbw %s: --log %s\n", cmd, err.msg);
            goto out;
        }
    }
    fprintf(stderr, "pbw %s: %s after %d of %d steps in %.1f s; wrote %s\n", cmd,
            res.cancelled ? "interrupted" : "done", res.steps_done, res.steps, res.seconds, a.out);
    if (pbw_profile_enabled() && s.prof_steps > 0) {
        fprintf(stderr, "pbw %s: time per op and step (PBW_PROFILE=1), over %d steps after the "
                        "last phase's first:\n", cmd, s.prof_steps);
        pbw_profile_report(stderr, 1.0 / s.prof_steps);
    }
    print_loss("before", &res.before);
    print_loss("after", &res.after);
    if (edit) {
        double mx = 0, sum = 0;
        int64_t cnt = 0;
        for (int64_t i = 0; i < (int64_t)S * S; i++) {
            if (mask[i] > 0) continue;
            for (int c = 0; c < 3; c++) {
                double d = fabs((double)res.image[c * S * S + i] - res.original[c * S * S + i]);
                if (d > mx) mx = d;
                sum += d;
            }
            cnt++;
        }
        if (cnt)
            fprintf(stderr, "  outside the mask: mean |change| %.4g, max %.4g (of a [-1,1] range)\n",
                    sum / (3.0 * cnt), mx);
    }
    rc = res.cancelled ? 130 : 0;
out:
    if (s.gif) pbw_gif_abort(s.gif);
    if (s.have_log) pbw_file_tmp_abort(&s.log);
    pbw_paint_result_free(&res);
    pbw_painter_free(p);
    free(z);
    free(mask);
    free(rgb);
    return rc;
}

int cmd_edit(int argc, char **argv) { return app_paint_main(argc, argv, 1); }
